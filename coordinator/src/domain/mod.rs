//! The coordinator's own vocabulary for agents and their jobs: ids
//! (`ids.rs`), registration (`registration.rs`), what is sent to an agent
//! and what it answers (`dispatch.rs`), and what it reports on its completion
//! stream (`report.rs`).
//!
//! The rule: **protobuf at the edges only.** The scheduler and its task take
//! and return these types; `baton-proto` messages are converted from and to
//! them where they cross the wire — in the gRPC services (`grpc/`) for what
//! agents send, and where the loop calls agents (`scheduler_task/effects.rs`),
//! both through `grpc/agent_convert.rs`. The fields are the protocol's, by
//! the same names, so every conversion is lossless; an enum value the
//! coordinator does not know becomes the `Unspecified` of its enum. This
//! module imports nothing of the crate.

mod dispatch;
mod ids;
mod registration;
mod report;

pub use dispatch::{CancelSpec, DispatchOutcome, DispatchSpec, PackageRef, RejectCode};
pub use ids::{AgentId, DispatchId, ExecutionId};
pub use registration::{RegisterAnswer, Registration};
pub use report::{
    AgentReport, Heartbeat, Hello, JobFinished, JobProgress, JobStarted, JobStatus, ReportBody,
};
