//! The task around [`Scheduler`]: the only place where the scheduler's
//! decisions meet IO. Its promise: **nothing leaves before it is durable** —
//! a reply to a caller, a dispatch to an agent, an acknowledgement of an
//! agent's events, are all performed only once the batch of changes that
//! caused them is committed to the store.
//!
//! Who does what:
//! - `msg`: the messages the task receives, each with its reply channel.
//! - `handle`: [`SchedulerHandle`], the cheap cloneable edge the API and the
//!   gRPC services call; it only sends messages and awaits replies.
//! - `run`: the loop — receives messages and ticks, drives the scheduler,
//!   commits each batch in one transaction (group commit), and only then
//!   releases the batch's replies and effects. What leaves goes through its
//!   `Performer` trait: `effects::Io` here, a recorder in its tests.
//! - `effects`: performs a committed batch's effects (StartJob(s) and
//!   CancelJob calls, acknowledgements on completion streams, row fetches)
//!   outside the scheduler; answers come back as messages.
//! - `fixtures` (tests only): a fan-out package, its execution record and an
//!   agent's registration, shared by the tests of the loop, recovery and the API.
//!
//! The scheduler holds the logic; these files hold the IO.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::CoordinatorError;
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::transport;

mod effects;
mod handle;
mod msg;
mod run;

pub use handle::SchedulerHandle;
pub use msg::AgentListing;

/// Capacity of the scheduler's inbox; senders wait when it is full (backpressure).
pub const INBOX_CAPACITY: usize = 65_536;

/// Spawns the scheduler task; returns its handle and join handle.
pub fn spawn(
    sched: Scheduler,
    store: Arc<dyn Store>,
    dialer: transport::AgentDialer,
    shutdown: CancellationToken,
) -> (
    SchedulerHandle,
    tokio::task::JoinHandle<Result<(), CoordinatorError>>,
) {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    let io = effects::Io::new(tx.clone(), dialer);
    let join = tokio::spawn(run::run(sched, store, rx, io, shutdown));
    (SchedulerHandle::new(tx), join)
}

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod split_tests;
