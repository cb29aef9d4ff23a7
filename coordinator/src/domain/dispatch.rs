//! What the coordinator asks of an agent and what it answers: the spec of a
//! dispatch (everything a `StartJob` carries, trace context included), the
//! spec of a cancellation, and how a dispatch ended (an agent's reject code
//! among them).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::ids::DispatchId;

/// A package as it travels to an agent: a name, the hex SHA-256 of its
/// content and, when small, the content itself (empty: the agent fetches it
/// by hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    pub name: String,
    pub content_hash: String,
    /// Shared with the plan; copied only when the request is encoded.
    pub content: Arc<[u8]>,
}

/// One attempt of one child, as it is sent to an agent (`StartJob`); the
/// same spec, same dispatch id, on every resend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchSpec {
    pub dispatch_id: DispatchId,
    pub package: PackageRef,
    pub parameters: BTreeMap<String, String>,
    /// Fencing epoch of the dispatching coordinator.
    pub coordinator_epoch: u64,
    /// Wall-clock budget of the whole job in milliseconds; 0 means the agent's default.
    pub deadline_ms: u64,
    /// W3C trace context of the dispatch (the attempt's span), passed to the
    /// child as TRACEPARENT; empty when the execution is not traced.
    pub traceparent: String,
    /// W3C trace state that goes with `traceparent`, passed to the child as TRACESTATE.
    pub tracestate: String,
    /// Catalog folder of the execution ("/" for the root), for per-folder
    /// agent policy such as run-as users.
    pub folder: String,
}

/// Asks an agent to stop one attempt (`CancelJob`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelSpec {
    pub dispatch_id: DispatchId,
    pub reason: String,
}

/// Why an agent refused a dispatch. The numbers are the protocol's (the
/// rejection metrics are indexed by them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum RejectCode {
    /// No code, or one this coordinator does not know.
    Unspecified = 0,
    AtCapacity = 1,
    Draining = 2,
    UnknownPackage = 3,
    InvalidRequest = 4,
    StaleEpoch = 5,
    Unauthorized = 6,
    /// The job asks to run as an OS user this agent may not use for its folder.
    RunAsDenied = 7,
}

impl RejectCode {
    /// The protocol's name of the code (`REJECT_CODE_AT_CAPACITY`), as
    /// children's reasons and traces show it.
    pub fn as_str_name(self) -> &'static str {
        match self {
            RejectCode::Unspecified => "REJECT_CODE_UNSPECIFIED",
            RejectCode::AtCapacity => "REJECT_CODE_AT_CAPACITY",
            RejectCode::Draining => "REJECT_CODE_DRAINING",
            RejectCode::UnknownPackage => "REJECT_CODE_UNKNOWN_PACKAGE",
            RejectCode::InvalidRequest => "REJECT_CODE_INVALID_REQUEST",
            RejectCode::StaleEpoch => "REJECT_CODE_STALE_EPOCH",
            RejectCode::Unauthorized => "REJECT_CODE_UNAUTHORIZED",
            RejectCode::RunAsDenied => "REJECT_CODE_RUN_AS_DENIED",
        }
    }
}

/// How a StartJob call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DispatchOutcome {
    Accepted,
    Rejected {
        code: RejectCode,
        reason: String,
    },
    /// No answer (connection refused, timeout): the agent may or may not have the job.
    Unknown(String),
    /// The agent's registered address is served by another agent (its
    /// certificate names another): the job was not started, and sending it
    /// there again never will be.
    WrongAgent(String),
}
