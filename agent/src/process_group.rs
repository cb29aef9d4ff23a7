//! The end of a job's process group: wait for the leader to exit, or for a
//! timeout, the job's deadline or a cancel, and always leave the group empty
//! (SIGTERM to the whole group, one grace, then SIGKILL to what is left).

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::Instant;

use crate::model::KillReason;
use crate::runner::JobCancel;

/// Why a step stopped before its process exited by itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kill {
    TaskTimeout,
    Deadline,
    Cancel(KillReason),
}

/// How a step's process ended: its status (if it could be read) and what
/// killed it, if anything did.
pub(crate) struct StepExit {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) kill: Option<Kill>,
}

/// Waits for the leader to exit or for a reason to kill the group, and always leaves
/// the group empty. `deadline_first`: `timeout_at` is the job's deadline, not the
/// task's timeout.
pub(crate) async fn supervise(
    child: &mut Child,
    pgid: Pid,
    timeout_at: Instant,
    deadline_first: bool,
    grace: Duration,
    cancel: &JobCancel,
) -> StepExit {
    let kill = tokio::select! {
        status = child.wait() => {
            // Background processes the task left behind must not outlive the job.
            if killpg(pgid, None).is_ok() {
                terminate_group(pgid, grace).await;
            }
            return StepExit { status: status.ok(), kill: None };
        }
        () = tokio::time::sleep_until(timeout_at) => {
            if deadline_first { Kill::Deadline } else { Kill::TaskTimeout }
        }
        r = cancel.cancelled() => Kill::Cancel(r),
    };
    let _ = killpg(pgid, Signal::SIGTERM);
    // One grace from this SIGTERM for the whole group, leader included (not a
    // second one for what the leader leaves behind).
    let until = Instant::now() + grace;
    let status = tokio::time::timeout_at(until, child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    kill_group_at(pgid, until).await;
    let status = match status {
        Some(s) => Some(s),
        None => child.wait().await.ok(),
    };
    StepExit {
        status,
        kill: Some(kill),
    }
}

/// SIGTERM to the group, wait up to `grace` for it to empty, then SIGKILL.
async fn terminate_group(pgid: Pid, grace: Duration) {
    let _ = killpg(pgid, Signal::SIGTERM);
    kill_group_at(pgid, Instant::now() + grace).await;
}

/// Waits until `until` for the group to empty, then SIGKILL to what is left.
async fn kill_group_at(pgid: Pid, until: Instant) {
    while killpg(pgid, None).is_ok() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
}
