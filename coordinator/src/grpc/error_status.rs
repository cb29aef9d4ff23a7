//! The one mapping from domain errors to gRPC statuses, and the metadata keys
//! that carry an error's stable code and a retry delay.

use crate::error::CoordinatorError;

/// Metadata key carrying the stable error code on every error `Status`.
pub const ERROR_CODE_KEY: &str = "baton-code";
/// Metadata key of the seconds to wait before retrying (on COORDINATOR_BUSY).
pub const RETRY_AFTER_KEY: &str = "retry-after";
/// Metadata key of the leader's URL on NOT_LEADER (absent while none leads).
pub const LEADER_KEY: &str = "baton-leader";

/// The gRPC code of a domain error (the web dashboard maps it on to HTTP).
pub fn status_code(e: &CoordinatorError) -> tonic::Code {
    use tonic::Code;
    match e {
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
        CoordinatorError::ShuttingDown
        | CoordinatorError::Transport(_)
        | CoordinatorError::StoreUnavailable(_)
        | CoordinatorError::NotLeader { .. }
        | CoordinatorError::LeadershipLost(_) => Code::Unavailable,
        CoordinatorError::StoreFenced(_) => Code::FailedPrecondition,
        CoordinatorError::StoreBatchTooLarge(_) => Code::Internal,
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
        CoordinatorError::BundleFileTooLarge { .. } => Code::InvalidArgument,
    }
}

/// The one mapping from domain errors to gRPC statuses.
pub fn status(e: CoordinatorError) -> tonic::Status {
    let code = status_code(&e);
    let retry_after = match &e {
        CoordinatorError::Busy { retry_after_s, .. }
        | CoordinatorError::RenewTooSoon { retry_after_s, .. } => Some(*retry_after_s),
        _ => None,
    };
    let leader = match &e {
        CoordinatorError::NotLeader { leader } => leader.clone(),
        _ => None,
    };
    let mut s = tonic::Status::new(code, e.to_string());
    if let Some(url) = leader
        && let Ok(v) = url.parse()
    {
        s.metadata_mut().insert(LEADER_KEY, v);
    }
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
