//! The gRPC edge of the coordinator: thin trait impls that validate protobuf
//! into domain types, call [`crate::api::Coordinator`] or the scheduler
//! handle, and map domain errors to `Status` in one place ([`status`]).

pub mod agent_api;
mod catalog_api;
mod catalog_children;
pub mod child_output;
pub mod control_api;
mod convert;
mod fetch;
pub mod source;

use crate::auth::Credential;
use crate::auth::audit::Audit;
use crate::error::CoordinatorError;
use baton_proto::identity::{Peer, classify};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// What the caller presented: no TLS at all, a verified certificate, or
/// (TLS without a certificate) maybe a bearer token.
pub fn credential<T>(request: &tonic::Request<T>) -> Credential {
    let Some(info) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
        return Credential::Plaintext;
    };
    match info.peer_certs().and_then(|c| c.first().cloned()) {
        Some(leaf) => Credential::Certificate {
            peer: classify(&leaf),
            fingerprint: baton_proto::tls::sha256_hex(&leaf),
        },
        None => Credential::Bearer(bearer(request.metadata())),
    }
}

/// The token of an `authorization: Bearer …` header.
fn bearer(md: &tonic::metadata::MetadataMap) -> Option<String> {
    let v = md.get("authorization")?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim().to_string())
}

/// Refuses an agent call whose caller is not agent `agent`'s certificate
/// (audited, aggregated per source like every refusal).
pub(crate) fn check_agent(
    audit: &Audit,
    cred: &Credential,
    agent: &str,
    what: &str,
) -> Result<(), tonic::Status> {
    match cred {
        Credential::Plaintext => Ok(()),
        Credential::Certificate {
            peer: Peer::Agent(n),
            ..
        } if n == agent => Ok(()),
        Credential::Certificate { peer, .. } => {
            let e = CoordinatorError::PermissionDenied(format!(
                "{what} as agent '{agent}' refused: the certificate is {peer}"
            ));
            audit.denied(&format!("{peer} (as agent {agent})"), what, "", e.code());
            Err(status(e))
        }
        Credential::Bearer(_) => {
            let e = CoordinatorError::Unauthenticated(format!(
                "{what} needs the agent's certificate; enrol first (baton agent --enroll TOKEN)"
            ));
            audit.denied(&format!("anonymous (as agent {agent})"), what, "", e.code());
            Err(status(e))
        }
    }
}

/// The certificate fingerprint of a credential (empty without one).
pub(crate) fn fingerprint(cred: &Credential) -> String {
    match cred {
        Credential::Certificate { fingerprint, .. } => fingerprint.clone(),
        _ => String::new(),
    }
}

/// Metadata key carrying the stable error code on every error `Status`.
pub const ERROR_CODE_KEY: &str = "baton-code";
/// Metadata key of the seconds to wait before retrying (on COORDINATOR_BUSY).
pub const RETRY_AFTER_KEY: &str = "retry-after";

/// The one mapping from domain errors to gRPC statuses.
pub fn status(e: CoordinatorError) -> tonic::Status {
    use tonic::Code;
    let code = match &e {
        CoordinatorError::Package(_)
        | CoordinatorError::InvalidRequest(_)
        | CoordinatorError::Config(_)
        | CoordinatorError::PlaintextNotLoopback(_) => Code::InvalidArgument,
        CoordinatorError::ExecutionNotFound(_) | CoordinatorError::AgentNotFound(_) => {
            Code::NotFound
        }
        CoordinatorError::AgentNotRegistered(_)
        | CoordinatorError::AgentAlive(_)
        | CoordinatorError::NotResumable { .. } => Code::FailedPrecondition,
        CoordinatorError::FolderNotFound(_)
        | CoordinatorError::PackageNotFound(_)
        | CoordinatorError::VersionNotFound { .. }
        | CoordinatorError::ContentNotFound(_) => Code::NotFound,
        CoordinatorError::FolderExists(_) | CoordinatorError::PackageExists(_) => {
            Code::AlreadyExists
        }
        CoordinatorError::FolderNotEmpty(_) | CoordinatorError::PackageInUse { .. } => {
            Code::FailedPrecondition
        }
        CoordinatorError::StoreConflict(_) => Code::Aborted,
        CoordinatorError::PermissionDenied(_)
        | CoordinatorError::TokenUsed(_)
        | CoordinatorError::CertRevoked(_)
        | CoordinatorError::LabelNotAllowed(_)
        | CoordinatorError::AgentRevoked(_) => Code::PermissionDenied,
        CoordinatorError::AgentNameTaken(_) => Code::AlreadyExists,
        CoordinatorError::RenewTooSoon { .. } => Code::ResourceExhausted,
        CoordinatorError::Unauthenticated(_)
        | CoordinatorError::TokenExpired(_)
        | CoordinatorError::TokenRevoked(_) => Code::Unauthenticated,
        CoordinatorError::ShuttingDown | CoordinatorError::Transport(_) => Code::Unavailable,
        CoordinatorError::Store(_) | CoordinatorError::Io(_) | CoordinatorError::Secret(_) => {
            Code::Internal
        }
        CoordinatorError::ChildNotFound(_) | CoordinatorError::OutputGone(_) => Code::NotFound,
        CoordinatorError::ChildNotStarted(_) | CoordinatorError::RowsUnavailable(_) => {
            Code::FailedPrecondition
        }
        CoordinatorError::AgentUnreachable(_) => Code::Unavailable,
        CoordinatorError::AgentBusy(_)
        | CoordinatorError::Busy { .. }
        | CoordinatorError::QuotaExceeded { .. } => Code::ResourceExhausted,
        CoordinatorError::TooLarge { .. } => Code::OutOfRange,
    };
    let retry_after = match &e {
        CoordinatorError::Busy { retry_after_s, .. }
        | CoordinatorError::RenewTooSoon { retry_after_s, .. } => Some(*retry_after_s),
        _ => None,
    };
    let mut s = tonic::Status::new(code, e.to_string());
    if let Ok(v) = e.code().parse() {
        s.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    if let Some(secs) = retry_after
        && let Ok(v) = secs.to_string().parse()
    {
        s.metadata_mut().insert(RETRY_AFTER_KEY, v);
    }
    s
}
