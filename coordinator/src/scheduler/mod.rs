//! The scheduler: every decision of the coordinator, as a plain struct.
//!
//! Callers feed it inputs — registrations, agent reports, dispatch outcomes,
//! ticks, start requests, as the coordinator's own types ([`crate::domain`],
//! never protobuf messages) — each with the time the loop read ([`Now`]), and it
//! answers with state changes to persist (`Scheduler::flush`) and effects to
//! perform once they are durable ([`Effect`]). It does no IO and reads no
//! clock, so its logic is unit-tested directly; `scheduler_task.rs` owns the
//! loop around it.
//!
//! It is composed of parts with private state, and routes between them: the
//! registry of agents and revoked certificates (`registry.rs`), the table of
//! running executions by slot and by id (`exec_table.rs`), each child's
//! state and its one transition function (`child.rs`), the flow of a parent
//! package (`flow.rs`), the dispatcher's state and choices, and its timers
//! (`dispatcher.rs`, `timers.rs`; the pump that applies them in
//! `dispatch.rs`) and the journal of records to write and effects to perform
//! (`journal.rs`). `docs/ARCHITECTURE.md` (*The scheduler*) follows a child
//! through them.
//!
//! Intent versus observed: a child's state says what the coordinator wants
//! (attempt N on agent X, [`ChildState::Dispatching`]) and what it has learnt
//! (accepted, running, ended). Reports are fenced by (agent, attempt):
//! anything else is stale, ignored and counted.
//!
//! Layers, top down: this file declares the modules and re-exports the
//! public surface; the `impl Scheduler` blocks sit one file per topic
//! (`agents.rs`, `executions.rs`, `dispatch.rs`, `flow.rs`, ...), above
//! `state.rs` (the struct and its tunables), above the parts, which import
//! nothing of the scheduler but other parts (`exec_table.rs` holds the
//! `Exec` of `exec.rs`).

mod admission;
mod agents;
mod cancel;
mod child;
mod dispatch;
mod dispatcher;
mod exec;
mod exec_table;
mod executions;
pub(crate) mod flow;
mod gauges;
mod journal;
mod model;
mod nested;
mod persist;
mod quarantine;
mod registry;
mod resume;
mod rows;
mod state;
mod summary;
mod task_watch;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_admission;
#[cfg(test)]
mod tests_cancel_child;
#[cfg(test)]
mod tests_fairness;
#[cfg(test)]
mod tests_flow;
#[cfg(test)]
mod tests_ops;
#[cfg(test)]
mod tests_trace;
mod timers;
mod trace_commit;
mod view;

pub use crate::clock::Now;
pub use crate::metrics::Stats;

/// The domain types ([`crate::domain`]) it takes and returns, named here too
/// (the fuzz target decodes a `Registration` by this path).
pub use crate::domain::{
    AgentId, AgentReport, DispatchId, DispatchOutcome, ExecutionId, RegisterAnswer, Registration,
};
pub use agents::{AdminAction, AgentState, AgentSummary};
pub use cancel::{CancelOutcome, CancelState, ChildCancelState};
pub use child::{COORDINATOR, ChildState, End, Refused, Step};
pub use model::{ChildRef, Effect, TraceEvent};
pub(crate) use persist::Written;
pub use quarantine::QuarantineConfig;
pub use resume::refusal as resume_refusal;
pub use state::{DEFAULT_MAX_PENDING_CHILDREN, Scheduler, SchedulerConfig};
pub use summary::{
    ChildrenPage, ExecutionView, Summary, TaskCounts, count_task, pick_children,
    summary_from_record, tally, view_from_records,
};
