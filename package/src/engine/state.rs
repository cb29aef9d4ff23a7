//! The states and outcomes of a run and the engine's error: the types the
//! engine, its snapshot and its drivers share. A leaf of `engine/`.

/// The state of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Skipped => "skipped",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Running)
    }
}

/// How one run of a task ended, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    Succeeded,
    /// Failed after its last attempt (the driver retries before reporting).
    Failed,
    Cancelled,
}

/// How the whole package ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

/// A driver's request the engine cannot apply; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("unknown task '{0}'")]
    UnknownTask(String),
    #[error("task '{task}' cannot {action} while it is {state}")]
    Transition {
        task: String,
        action: &'static str,
        state: &'static str,
    },
    #[error("snapshot does not match the package: {0}")]
    Snapshot(String),
}

impl EngineError {
    /// The stable symbolic code (see `docs/errors.md`).
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::UnknownTask(_) | EngineError::Transition { .. } => "ENGINE_TRANSITION",
            EngineError::Snapshot(_) => "ENGINE_SNAPSHOT_INVALID",
        }
    }
}

/// What the engine knows about one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskRun {
    pub(crate) state: TaskState,
    pub(crate) attempts: u32,
    pub(crate) reason: Option<String>,
}

impl TaskRun {
    pub(super) fn new() -> TaskRun {
        TaskRun {
            state: TaskState::Pending,
            attempts: 0,
            reason: None,
        }
    }
}
