//! The agent's error type and its stable, symbolic error codes.
//!
//! Every variant has a code (`AGENT_*`, `COORDINATOR_UNREACHABLE`) that stays the same
//! across releases, so that logs, tests and `docs/errors.md` can name it, and knows
//! whether retrying the same operation later may succeed.
//!
//! Admission refusals of `StartJob` are *answers*, not errors: they travel as
//! `Rejected{code, reason}` (see [`crate::admission`]). Only a malformed request on the
//! other RPCs (`CancelJob`, `GetJob`) becomes a gRPC `invalid_argument` through
//! [`AgentError::InvalidRequest`].

use thiserror::Error;

/// Everything that can go wrong inside the agent.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The configuration does not make sense (empty name, zero slots, bad URL, ...).
    #[error("invalid agent configuration: {0}")]
    ConfigInvalid(String),
    /// A request from the coordinator is malformed; the message names the field.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The durable outbox (redb) failed to open, read or commit.
    #[error("agent store error: {0}")]
    Store(String),
    /// The coordinator could not be reached, refused registration or dropped the stream.
    #[error("coordinator unreachable: {0}")]
    CoordinatorUnreachable(String),
    /// The agent's own gRPC server failed.
    #[error("agent transport error: {0}")]
    Transport(String),
    /// A file-system operation of the agent failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The coordinator refused the enrolment token or the signing request.
    #[error("enrolment refused: {0}")]
    EnrolmentRefused(String),
    /// The agent is shutting down and no longer does this.
    #[error("agent is shutting down")]
    ShuttingDown,
    /// `StreamLogs`/`StreamRows` about a job this agent has no record or files of.
    #[error("{0}")]
    JobUnknown(String),
    /// The job is known but its log or rows files are gone (retention, or it ran
    /// no process).
    #[error("{0}")]
    OutputGone(String),
    /// Rows of a job that still runs or did not succeed.
    #[error("{0}")]
    RowsUnavailable(String),
    /// Too many log and row streams are open on this agent.
    #[error("{0}")]
    Busy(String),
    /// The coordinator says an operator revoked this agent: it stops for good
    /// instead of retrying (the CLI exits with its own code).
    #[error("this agent was revoked by the coordinator: {0}")]
    Revoked(String),
    /// Plaintext (`--insecure`) towards, or advertised at, an address that is
    /// not loopback: refused before any connection.
    #[error("{0}")]
    PlaintextNotLoopback(String),
    /// The coordinator refused this agent's registration for a reason no retry
    /// changes: a label its token does not allow (`AGENT_LABEL_NOT_ALLOWED`) or
    /// a name another agent holds (`AGENT_NAME_TAKEN`). The agent stops.
    #[error("the coordinator refused this agent's registration: {0}")]
    RegistrationRefused(String),
}

impl AgentError {
    /// The stable symbolic code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            AgentError::ConfigInvalid(_) => "AGENT_CONFIG_INVALID",
            AgentError::InvalidRequest(_) => "AGENT_INVALID_REQUEST",
            AgentError::Store(_) => "AGENT_STORE",
            AgentError::CoordinatorUnreachable(_) => "COORDINATOR_UNREACHABLE",
            AgentError::Transport(_) => "AGENT_TRANSPORT",
            AgentError::Io { .. } => "AGENT_IO",
            AgentError::ShuttingDown => "AGENT_SHUTTING_DOWN",
            AgentError::EnrolmentRefused(_) => "AGENT_ENROLMENT_REFUSED",
            AgentError::JobUnknown(_) => "AGENT_JOB_UNKNOWN",
            AgentError::OutputGone(_) => "AGENT_OUTPUT_GONE",
            AgentError::RowsUnavailable(_) => "AGENT_ROWS_UNAVAILABLE",
            AgentError::Busy(_) => "AGENT_BUSY",
            AgentError::Revoked(_) => "AGENT_REVOKED",
            AgentError::PlaintextNotLoopback(_) => "PLAINTEXT_NOT_LOOPBACK",
            AgentError::RegistrationRefused(_) => "AGENT_REGISTRATION_REFUSED",
        }
    }

    /// Whether the agent must stop: nothing it can retry will work
    /// (revoked, registration refused, or told to speak plaintext beyond this
    /// machine).
    pub fn fatal(&self) -> bool {
        matches!(
            self,
            AgentError::Revoked(_)
                | AgentError::PlaintextNotLoopback(_)
                | AgentError::RegistrationRefused(_)
        )
    }

    /// Whether the same operation may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::CoordinatorUnreachable(_)
            | AgentError::Transport(_)
            | AgentError::Io { .. }
            | AgentError::ShuttingDown
            | AgentError::Busy(_) => true,
            AgentError::JobUnknown(_)
            | AgentError::OutputGone(_)
            | AgentError::RowsUnavailable(_) => false,
            AgentError::ConfigInvalid(_)
            | AgentError::InvalidRequest(_)
            | AgentError::Store(_)
            | AgentError::EnrolmentRefused(_)
            | AgentError::Revoked(_)
            | AgentError::PlaintextNotLoopback(_)
            | AgentError::RegistrationRefused(_) => false,
        }
    }

    /// Builds an [`AgentError::Io`] with a short description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> AgentError {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<redb::Error> for AgentError {
    fn from(e: redb::Error) -> Self {
        AgentError::Store(e.to_string())
    }
}

/// Metadata key carrying the stable error code (as the coordinator's statuses do).
pub const ERROR_CODE_KEY: &str = "baton-code";

/// The one place where a domain error becomes a gRPC status.
impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        let code = e.code();
        let msg = format!("{code}: {e}");
        let mut status = match e {
            AgentError::InvalidRequest(_)
            | AgentError::ConfigInvalid(_)
            | AgentError::PlaintextNotLoopback(_) => tonic::Status::invalid_argument(msg),
            AgentError::EnrolmentRefused(_)
            | AgentError::Revoked(_)
            | AgentError::RegistrationRefused(_) => tonic::Status::permission_denied(msg),
            AgentError::ShuttingDown | AgentError::CoordinatorUnreachable(_) => {
                tonic::Status::unavailable(msg)
            }
            AgentError::Store(_) | AgentError::Transport(_) | AgentError::Io { .. } => {
                tonic::Status::internal(msg)
            }
            AgentError::JobUnknown(_) | AgentError::OutputGone(_) => tonic::Status::not_found(msg),
            AgentError::RowsUnavailable(_) => tonic::Status::failed_precondition(msg),
            AgentError::Busy(_) => tonic::Status::resource_exhausted(msg),
        };
        if let Ok(v) = code.parse() {
            status.metadata_mut().insert(ERROR_CODE_KEY, v);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_retryability_is_explicit() {
        assert_eq!(
            AgentError::ConfigInvalid("x".into()).code(),
            "AGENT_CONFIG_INVALID"
        );
        assert_eq!(AgentError::Store("x".into()).code(), "AGENT_STORE");
        let unreachable = AgentError::CoordinatorUnreachable("x".into());
        assert_eq!(unreachable.code(), "COORDINATOR_UNREACHABLE");
        assert!(unreachable.retryable());
        assert!(!AgentError::InvalidRequest("x".into()).retryable());
        let status: tonic::Status = AgentError::InvalidRequest("dispatch_id missing".into()).into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("AGENT_INVALID_REQUEST"));
    }
}
