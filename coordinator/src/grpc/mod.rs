//! The gRPC edge of the coordinator: the tonic services. Each call is decoded
//! and validated into domain types (the agent protocol's in
//! `agent_convert.rs`, which the loop's calls to agents use too), authorized for its caller (`auth`) and
//! audited; executions go through [`crate::api::Coordinator`] and the
//! scheduler's loop, while enrolment, renewal, revocation and the catalog
//! write the store through the modules that own those records
//! (`auth::identity`, `auth::tokens`, `catalog`). Domain errors map to
//! `Status` in one place ([`status`]).

pub mod agent_api;
pub(crate) mod agent_convert;
mod caller;
mod catalog_api;
mod catalog_children;
pub mod child_output;
pub mod control_api;
mod control_state;
mod convert;
pub(crate) mod error_status;
mod fetch;
pub mod role_switch;
pub mod source;

pub use caller::credential;
pub use error_status::{ERROR_CODE_KEY, RETRY_AFTER_KEY, status};
