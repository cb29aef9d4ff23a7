//! The gRPC edge of the coordinator: thin trait impls that validate protobuf
//! into domain types, call [`crate::api::Coordinator`] or the scheduler
//! handle, and map domain errors to `Status` in one place ([`status`]).

pub mod agent_api;
mod caller;
mod catalog_api;
mod catalog_children;
pub mod child_output;
pub mod control_api;
mod control_state;
mod convert;
mod error_status;
mod fetch;
pub mod source;

pub use caller::credential;
pub use error_status::{ERROR_CODE_KEY, RETRY_AFTER_KEY, status};
