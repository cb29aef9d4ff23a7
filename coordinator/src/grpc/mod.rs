//! The gRPC edge of the coordinator: thin trait impls that validate protobuf
//! into domain types, call [`crate::api::Coordinator`] or the scheduler
//! handle, and map domain errors to `Status` in one place ([`status`]).

pub mod agent_api;
pub mod control_api;
mod convert;

use crate::error::CoordinatorError;

/// Metadata key carrying the stable error code on every error `Status`.
pub const ERROR_CODE_KEY: &str = "baton-code";

/// The one mapping from domain errors to gRPC statuses.
pub fn status(e: CoordinatorError) -> tonic::Status {
    use tonic::Code;
    let code = match &e {
        CoordinatorError::Package(_)
        | CoordinatorError::InvalidRequest(_)
        | CoordinatorError::Config(_) => Code::InvalidArgument,
        CoordinatorError::ExecutionNotFound(_) => Code::NotFound,
        CoordinatorError::AgentNotRegistered(_) => Code::FailedPrecondition,
        CoordinatorError::StoreConflict(_) => Code::Aborted,
        CoordinatorError::ShuttingDown | CoordinatorError::Transport(_) => Code::Unavailable,
        CoordinatorError::Store(_) | CoordinatorError::Io(_) => Code::Internal,
    };
    let mut s = tonic::Status::new(code, e.to_string());
    if let Ok(v) = e.code().parse() {
        s.metadata_mut().insert(ERROR_CODE_KEY, v);
    }
    s
}
