//! What an agent reports on its completion stream: an [`AgentReport`] (its
//! sequence number, when the agent recorded it, and what it says), and the
//! terminal status of a job.

use std::collections::BTreeMap;

use super::ids::DispatchId;

/// One event of an agent's completion stream.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentReport {
    /// Per-outbox sequence number, from 1; 0 for Hello and Heartbeat, which
    /// are not durable.
    pub seq: u64,
    /// Unix milliseconds at which the agent recorded the event.
    pub at_unix_ms: u64,
    /// What it says; `None` when the event carried nothing (it still shows
    /// the agent alive).
    pub body: Option<ReportBody>,
}

/// What an event says.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportBody {
    Hello(Hello),
    Heartbeat(Heartbeat),
    Started(JobStarted),
    Progress(JobProgress),
    Finished(JobFinished),
}

/// Opens a completion stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub agent_id: String,
    pub boot_id: String,
}

/// The agent's capacity and load, as it sees them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Heartbeat {
    pub slots: u32,
    pub running: u32,
    /// As sent: the scheduler decides what a value that is not a finite
    /// non-negative number means.
    pub load1: f64,
    pub draining: bool,
}

/// A job's process started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStarted {
    /// `None` when the event named no job (it fences nothing).
    pub dispatch_id: Option<DispatchId>,
    pub pid: u32,
}

/// A job said something while running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProgress {
    pub dispatch_id: Option<DispatchId>,
    pub message: String,
}

/// A job ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobFinished {
    /// `None` when the event named no job (it fences nothing).
    pub dispatch_id: Option<DispatchId>,
    pub status: JobStatus,
    pub exit_code: i32,
    pub outputs: BTreeMap<String, String>,
    pub row_count: u64,
    pub reason: String,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub duration_ms: u64,
}

/// Terminal status of a child job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum JobStatus {
    /// No status, or one this coordinator does not know: the child failed.
    #[default]
    Unspecified,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}
