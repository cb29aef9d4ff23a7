//! A checkpoint of an [`Engine`] as plain data (strings, enums, maps), so that
//! a driver can persist it (JSON, its store) and restore the run later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Engine, EngineError, TaskRun, TaskState};
use crate::model::Package;
use crate::param_values::ParamValues;

/// One task in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    pub state: TaskState,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

/// The state of a run: every task's state, attempts and outputs. Parameters
/// are not in it (they may be sensitive): the driver keeps them and binds
/// them again on restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// The package's name, checked on restore.
    pub package: String,
    pub cancelled: bool,
    pub tasks: BTreeMap<String, TaskSnapshot>,
}

impl Engine {
    /// The run's state as plain data.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            package: self.package.name.clone(),
            cancelled: self.cancelled,
            tasks: self
                .runs
                .iter()
                .map(|(name, run)| {
                    let snap = TaskSnapshot {
                        state: run.state,
                        attempts: run.attempts,
                        reason: run.reason.clone(),
                        outputs: self.outputs.get(name).cloned().unwrap_or_default(),
                    };
                    (name.clone(), snap)
                })
                .collect(),
        }
    }

    /// An engine in the state of `snapshot`, which must name exactly the
    /// package's tasks. Decisions that follow from it are applied at once
    /// (they are deterministic, so nothing changes for a consistent snapshot).
    pub fn restore(
        package: &Package,
        params: ParamValues,
        snapshot: &EngineSnapshot,
    ) -> Result<Engine, EngineError> {
        if snapshot.package != package.name {
            return Err(EngineError::Snapshot(format!(
                "it is of package '{}', not '{}'",
                snapshot.package, package.name
            )));
        }
        let mut engine = Engine::new(package, params);
        if let Some(extra) = snapshot
            .tasks
            .keys()
            .find(|t| !package.tasks.contains_key(*t))
        {
            return Err(EngineError::Snapshot(format!("unknown task '{extra}'")));
        }
        if let Some(missing) = package
            .tasks
            .keys()
            .find(|t| !snapshot.tasks.contains_key(*t))
        {
            return Err(EngineError::Snapshot(format!(
                "task '{missing}' is missing"
            )));
        }
        engine.outputs.clear();
        for (name, snap) in &snapshot.tasks {
            engine.runs.insert(
                name.clone(),
                TaskRun {
                    state: snap.state,
                    attempts: snap.attempts,
                    reason: snap.reason.clone(),
                },
            );
            if snap.state.is_terminal() {
                engine.outputs.insert(name.clone(), snap.outputs.clone());
            }
        }
        engine.cancelled = snapshot.cancelled;
        engine.rebuild();
        engine.settle();
        Ok(engine)
    }
}
