//! The planning gate: every heavy parse or plan of a bundle a client sends
//! (start, resume, catalog deploy, the root of a start naming `catalog:`
//! children) runs on a blocking thread, at most [`PLANNING_MAX`] at once
//! across the coordinator.
//!
//! The permit moves into the blocking task and is released only when the
//! work there ends, not when the caller goes away: a client that starts and
//! disconnects in a loop cannot pile up plans beyond the limit (its planning
//! still stops at its next check of the caller, see
//! [`super::plan_bundle_until`]).
//!
//! The limit is global, not per principal: a user who sends big bundles
//! back to back holds up to all the permits, and everyone else's starts wait
//! (each plan is bounded by the 16 MiB bundle limit, so the wait is bounded).

use tokio::sync::Semaphore;

use crate::error::CoordinatorError;

/// Plans at once (each in a blocking task, CPU and memory in proportion to
/// its bundle of at most 16 MiB).
pub const PLANNING_MAX: usize = 2;
static PLANNING: Semaphore = Semaphore::const_new(PLANNING_MAX);

/// Runs `work` on a blocking thread once a planning permit is free; the
/// permit is held until `work` returns.
pub async fn run<T, F>(work: F) -> Result<T, CoordinatorError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run_in(&PLANNING, work).await
}

async fn run_in<T, F>(gate: &'static Semaphore, work: F) -> Result<T, CoordinatorError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let permit = gate
        .acquire()
        .await
        .map_err(|_| CoordinatorError::ShuttingDown)?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| CoordinatorError::Store(format!("planning task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_permit_is_held_until_the_work_ends_not_the_caller() {
        static GATE: Semaphore = Semaphore::const_new(1);
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let caller = tokio::spawn(run_in(&GATE, move || {
            let _ = started_tx.send(());
            let _ = wait.recv();
        }));
        started.await.unwrap();
        // The caller goes away while its work runs on.
        caller.abort();
        let _ = caller.await;
        assert_eq!(GATE.available_permits(), 0, "still planning: still held");
        let second = tokio::spawn(run_in(&GATE, || 7));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the next plan waits for the permit");
        release.send(()).unwrap();
        assert_eq!(second.await.unwrap().unwrap(), 7);
        assert_eq!(GATE.available_permits(), 1);
    }
}
