//! The coordinator's role, leader or standby, switched for the process's
//! lifetime behind one gRPC server ([`crate::grpc::role_switch`]).
//!
//! - `leader`: what a leader has for one term (a fenced store, the scheduler
//!   rebuilt with the term's epoch, retention, auth, the API and its gRPC
//!   services), built when a term begins and dropped when it ends.
//! - `cycle`: campaign, lead, lose the term, stand by, campaign again; never
//!   exit but for a shutdown or a fatal error.

mod cycle;
mod leader;

pub(crate) use cycle::{Roles, run};
pub(crate) use leader::{AgentService, ControlService, Process};

#[cfg(test)]
mod tests;
