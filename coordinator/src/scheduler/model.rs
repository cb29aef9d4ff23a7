//! The values that cross the scheduler's edge and its parts: a child's
//! address in memory, the effects it asks the loop to perform, and how a
//! dispatch ended. A leaf: it imports nothing of the scheduler.

use baton_proto as pb;

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
        request: Box<pb::StartJobRequest>,
    },
    /// Ask an agent to stop a child (cancellation).
    Cancel {
        agent: String,
        address: String,
        request: pb::CancelJobRequest,
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
        sources: Vec<(String, String, pb::DispatchId)>,
    },
}

/// How a StartJob call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DispatchOutcome {
    Accepted,
    Rejected {
        code: pb::RejectCode,
        reason: String,
    },
    /// No answer (connection refused, timeout): the agent may or may not have the job.
    Unknown(String),
    /// The agent's registered address is served by another agent (its
    /// certificate names another): the job was not started, and sending it
    /// there again never will be.
    WrongAgent(String),
}
