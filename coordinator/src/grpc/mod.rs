//! The gRPC edge of the coordinator: thin trait impls that validate protobuf
//! into domain types, call [`crate::api::Coordinator`] or the scheduler
//! handle, and map domain errors to `Status` in one place ([`status`]).

pub mod agent_api;
pub mod control_api;
mod convert;

use baton_proto::identity::{Peer, classify};
use tracing::warn;

use crate::error::CoordinatorError;

/// The identity proven by the caller's certificate; `None` without TLS
/// (`--insecure`), where identities cannot be checked.
pub fn peer<T>(request: &tonic::Request<T>) -> Option<Peer> {
    let certs = request.peer_certs()?;
    Some(certs.first().map_or(Peer::Unknown, |leaf| classify(leaf)))
}

/// Hex SHA-256 of the caller's certificate; empty without TLS.
pub fn peer_fingerprint<T>(request: &tonic::Request<T>) -> String {
    use sha2::{Digest, Sha256};
    let Some(certs) = request.peer_certs() else {
        return String::new();
    };
    certs.first().map_or_else(String::new, |leaf| {
        Sha256::digest(leaf.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

/// Guards `ControlService`: only client identities may call it — not agents, not
/// the coordinator's own certificate. Every refusal is an audit log line.
pub fn control_guard(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match peer(&request) {
        None | Some(Peer::Client(_)) => Ok(request),
        Some(other) => {
            warn!(peer = %other, "ControlService call refused: not a client identity");
            Err(status(CoordinatorError::PermissionDenied(format!(
                "{other} may not call ControlService; use a client identity (baton certs issue --client NAME)"
            ))))
        }
    }
}

/// Refuses an agent call whose certificate names another identity than `agent`.
pub(crate) fn check_agent(
    peer: Option<&Peer>,
    agent: &str,
    what: &str,
) -> Result<(), tonic::Status> {
    match peer {
        None => Ok(()),
        Some(Peer::Agent(n)) if n == agent => Ok(()),
        Some(other) => {
            warn!(peer = %other, claimed = agent, call = what, "refused: the certificate names another identity");
            Err(status(CoordinatorError::PermissionDenied(format!(
                "{what} as agent '{agent}' refused: the certificate is {other}"
            ))))
        }
    }
}

/// Metadata key carrying the stable error code on every error `Status`.
pub const ERROR_CODE_KEY: &str = "baton-code";

/// The one mapping from domain errors to gRPC statuses.
pub fn status(e: CoordinatorError) -> tonic::Status {
    use tonic::Code;
    let code = match &e {
        CoordinatorError::Package(_)
        | CoordinatorError::InvalidRequest(_)
        | CoordinatorError::Config(_) => Code::InvalidArgument,
        CoordinatorError::ExecutionNotFound(_) | CoordinatorError::AgentNotFound(_) => {
            Code::NotFound
        }
        CoordinatorError::AgentNotRegistered(_) => Code::FailedPrecondition,
        CoordinatorError::StoreConflict(_) => Code::Aborted,
        CoordinatorError::PermissionDenied(_) => Code::PermissionDenied,
        CoordinatorError::ShuttingDown | CoordinatorError::Transport(_) => Code::Unavailable,
        CoordinatorError::Store(_) | CoordinatorError::Io(_) => Code::Internal,
    };
    let mut s = tonic::Status::new(code, e.to_string());
    if let Ok(v) = e.code().parse() {
        s.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    s
}
