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
        }
    }

    /// Whether the same operation may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::CoordinatorUnreachable(_)
            | AgentError::Transport(_)
            | AgentError::Io { .. }
            | AgentError::ShuttingDown => true,
            AgentError::ConfigInvalid(_)
            | AgentError::InvalidRequest(_)
            | AgentError::Store(_)
            | AgentError::EnrolmentRefused(_) => false,
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

/// The one place where a domain error becomes a gRPC status.
impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        let msg = format!("{}: {e}", e.code());
        match e {
            AgentError::InvalidRequest(_) | AgentError::ConfigInvalid(_) => {
                tonic::Status::invalid_argument(msg)
            }
            AgentError::EnrolmentRefused(_) => tonic::Status::permission_denied(msg),
            AgentError::ShuttingDown | AgentError::CoordinatorUnreachable(_) => {
                tonic::Status::unavailable(msg)
            }
            AgentError::Store(_) | AgentError::Transport(_) | AgentError::Io { .. } => {
                tonic::Status::internal(msg)
            }
        }
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
