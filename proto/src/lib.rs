//! The `baton.v1` protocol, generated from `proto/baton/v1/*.proto` at build time.
//!
//! Three services: `AgentService` (served by agents), `CoordinatorService` (served by
//! the coordinator for agents: registration and the completion stream) and
//! `ControlService` (served by the coordinator for the CLI and SDKs). The
//! coordinator and the agent meet only through this crate.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Generated messages and service stubs of package `baton.v1`.
pub mod v1 {
    tonic::include_proto!("baton.v1");
}

pub mod exposition;
pub mod failover;
pub mod identity;
pub mod plaintext;
pub mod tls;

pub use v1::*;

/// Most jobs in one `AgentService.StartJobs` call (agents refuse more).
pub const START_JOBS_MAX: usize = 1024;

impl std::fmt::Display for v1::DispatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}[{}]#{}",
            self.execution_id, self.task_path, self.item_index, self.attempt
        )
    }
}
