//! The values that cross the scheduler's edge and its parts: a child's
//! address in memory and the effects it asks the loop to perform (how a
//! dispatch ended is the domain's [`crate::domain::DispatchOutcome`]). A
//! leaf: it imports nothing of the scheduler.

use crate::domain::{CancelSpec, DispatchId, DispatchSpec};

/// A child job in memory: (execution slot, task index, child index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildRef {
    pub exec: u64,
    pub task: u16,
    pub child: u32,
}

/// Something to do once the current batch of changes is durable.
#[derive(Debug)]
pub enum Effect {
    /// Send StartJob to an agent.
    Dispatch {
        agent: String,
        address: String,
        child: ChildRef,
        attempt: u32,
        spec: Box<DispatchSpec>,
    },
    /// Ask an agent to stop a child (cancellation).
    Cancel {
        agent: String,
        address: String,
        spec: CancelSpec,
    },
    /// Acknowledge an agent's events up to `seq` (cumulative).
    Ack { agent: String, seq: u64 },
    /// Close an agent's completion stream so that it reconnects and resends.
    ResetStream { agent: String },
    /// Read the rows a task's children kept on their agents (for a
    /// `foreach = { rows = … }`), then report them with `rows_fetched`.
    FetchRows {
        execution_id: String,
        task: String,
        /// (agent, address, the child's dispatch id), in child order.
        sources: Vec<(String, String, DispatchId)>,
    },
    /// Something a trace shows (only for executions with a trace context;
    /// the loop's span exporter turns these into spans).
    Trace(TraceEvent),
}

/// What the span exporter (`traces.rs`) is told, as plain values: the
/// execution's span context (a W3C `traceparent`), and times in Unix
/// milliseconds read by the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceEvent {
    /// A child changed state: opens, annotates or ends its attempt's span.
    Child {
        /// The execution's [`crate::trace_context::ExecTrace`] `traceparent`.
        exec: String,
        execution_id: String,
        task: u16,
        task_name: String,
        child: u32,
        /// The attempt of the state it left, and of the one it is in.
        old_attempt: u32,
        attempt: u32,
        old_phase: crate::records::Phase,
        phase: crate::records::Phase,
        agent: Option<String>,
        reason: String,
        unix_ms: u64,
    },
    /// An execution ended: its span, and those of its tasks, end.
    Execution {
        trace: crate::trace_context::ExecTrace,
        execution_id: String,
        package: String,
        state: &'static str,
        reason: String,
        started_unix_ms: u64,
        ended_unix_ms: u64,
    },
    /// A store commit that wrote records of these executions (their span
    /// contexts) began at `unix_ms`; it is durable when this is performed.
    Commit {
        execs: Vec<String>,
        records: usize,
        unix_ms: u64,
    },
}
