//! One attempt of a task: wait out a retry's delay (the job's cancel and deadline
//! cut it short), start the task's process through [`super::process`] with the
//! job's and the task's environment, and judge how it exited (`Ended`: what
//! the DAG retries, what fails the job, what stops it).
//!
//! `Processes` is what every process of one job shares: its scratch directory,
//! environment, user, the captures of its stdout and stderr, cancel, deadline,
//! and the `started` signal of its first process. The job run makes it; the DAG
//! runs each attempt against it, several at once for independent tasks.
//!
//! Each task gets its own `$BATON_OUTPUT` file (`output.<task>`); `$BATON_ROWS` is
//! one file for the whole job, which every task appends to.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, oneshot};
use tokio::time::Instant;

use super::cancel::JobCancel;
use super::capture::Capture;
use super::layout::{ROWS_FILE, STDERR_LOG, STDOUT_LOG, output_file};
use super::leftovers::Leftovers;
use super::plan::{ExecStep, JobPlan};
use super::process::{self, Kill, StepExit};
use crate::mask::Masker;
use crate::model::KillReason;
use crate::run_as::RunAsUser;

/// How one attempt of a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    Succeeded,
    /// Exit code, signal, spawn failure or the task's own timeout: retried by the
    /// task's policy. `timed_out`: the task's timeout killed it.
    Failed {
        reason: String,
        timed_out: bool,
    },
    /// The job's deadline killed it (or came during its retry delay).
    Deadline,
    /// The job was cancelled.
    Cancelled(KillReason),
}

impl Ended {
    /// For logs: the reason may quote argv (sensitive values), the kind never does.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Ended::Succeeded => "succeeded",
            Ended::Failed {
                timed_out: true, ..
            } => "timed_out",
            Ended::Failed { .. } => "failed",
            Ended::Deadline => "deadline",
            Ended::Cancelled(_) => "cancelled",
        }
    }
}

/// One attempt's end: how, and the exit code (-1 when none: not started, a signal).
#[derive(Debug, Clone)]
pub(crate) struct AttemptEnd {
    pub ended: Ended,
    pub exit_code: i32,
}

/// What every process of one job shares: its directory, environment, user, the
/// captures of its stdout and stderr, cancel, deadline, and the `started` signal
/// of its first process.
pub(crate) struct Processes {
    pub(crate) dir: PathBuf,
    env: Vec<(String, String)>,
    pub(crate) run_as: Option<RunAsUser>,
    kill_grace: Duration,
    leftovers: Arc<Leftovers>,
    cancel: JobCancel,
    deadline_at: Option<Instant>,
    masker: Masker,
    out: Mutex<Capture>,
    err: Mutex<Capture>,
    started: std::sync::Mutex<Option<oneshot::Sender<u32>>>,
}

/// Agent-wide settings of a job's processes.
pub(crate) struct ProcessSettings {
    pub kill_grace: Duration,
    pub leftovers: Arc<Leftovers>,
    /// Bytes of stdout (and of stderr) kept for the finished event.
    pub output_tail_bytes: usize,
}

impl Processes {
    /// The processes of `plan` in its scratch directory `dir`; the pid of the
    /// first one that starts goes to `started`.
    pub(crate) fn new(
        plan: &JobPlan,
        dir: &Path,
        settings: ProcessSettings,
        cancel: &JobCancel,
        deadline_at: Option<Instant>,
        started: oneshot::Sender<u32>,
    ) -> Processes {
        let tail_max = settings.output_tail_bytes;
        Processes {
            env: job_env(plan, dir),
            out: Mutex::new(Capture::new(dir.join(STDOUT_LOG), tail_max)),
            err: Mutex::new(Capture::new(dir.join(STDERR_LOG), tail_max)),
            dir: dir.to_path_buf(),
            run_as: plan.run_as.clone(),
            kill_grace: settings.kill_grace,
            leftovers: settings.leftovers,
            cancel: cancel.clone(),
            deadline_at,
            masker: plan.masker.clone(),
            started: std::sync::Mutex::new(Some(started)),
        }
    }

    /// Once every process has ended: closes the log files and returns the tails
    /// of stdout and stderr.
    pub(crate) async fn finish(&self) -> (String, String) {
        let mut out = self.out.lock().await;
        out.finish().await;
        let stdout_tail = out.tail();
        let mut err = self.err.lock().await;
        err.finish().await;
        (stdout_tail, err.tail())
    }
}

/// Runs one attempt of a task after `delay` (a retry's backoff; the job's cancel
/// and deadline cut the wait short).
pub(crate) async fn run_attempt(
    exec: &ExecStep,
    attempt: u32,
    delay: Duration,
    procs: &Processes,
) -> AttemptEnd {
    let not_run = |ended| AttemptEnd {
        ended,
        exit_code: -1,
    };
    if !delay.is_zero() {
        let deadline = async {
            match procs.deadline_at {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            r = procs.cancel.cancelled() => return not_run(Ended::Cancelled(r)),
            () = deadline => return not_run(Ended::Deadline),
        }
    }
    if let Some(r) = procs.cancel.reason_if_cancelled() {
        return not_run(Ended::Cancelled(r));
    }
    if procs.deadline_at.is_some_and(|d| Instant::now() >= d) {
        return not_run(Ended::Deadline);
    }
    match run_step(exec, attempt, procs).await {
        Err(reason) => not_run(Ended::Failed {
            reason,
            timed_out: false,
        }),
        Ok(exit) => AttemptEnd {
            exit_code: exit.status.and_then(|s| s.code()).unwrap_or(-1),
            ended: judge(exec, &exit),
        },
    }
}

/// Starts one attempt of a task and waits for it; `Err` is a spawn failure
/// (already a reason).
async fn run_step(exec: &ExecStep, attempt: u32, ctx: &Processes) -> Result<StepExit, String> {
    let mut env: Vec<(OsString, OsString)> =
        ctx.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    env.push(("BATON_TASK".into(), exec.task.clone().into()));
    env.push(("BATON_TASK_ATTEMPT".into(), attempt.to_string().into()));
    env.push((
        "BATON_OUTPUT".into(),
        output_file(&ctx.dir, &exec.task).into(),
    ));
    env.extend(exec.env.iter().map(|(k, v)| (k.into(), v.into())));
    let spawn = process::Spawn {
        task: &exec.task,
        attempt,
        argv: &exec.argv,
        env,
        dir: exec.workdir.as_deref().unwrap_or(&ctx.dir),
        run_as: ctx.run_as.as_ref(),
    };
    let limits = process::Limits {
        timeout: exec.timeout,
        deadline_at: ctx.deadline_at,
        grace: ctx.kill_grace,
        cancel: &ctx.cancel,
    };
    let output = process::Output {
        out: &ctx.out,
        err: &ctx.err,
        masker: &ctx.masker,
        // Nothing to mask, in the agent's own directory: the process writes
        // its logs itself (`super::capture`).
        straight: ctx.masker.is_empty() && ctx.run_as.is_none(),
    };
    process::run(spawn, limits, output, &ctx.leftovers, |pid| {
        let first = ctx.started.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = first {
            let _ = tx.send(pid);
        }
    })
    .await
}

fn judge(exec: &ExecStep, exit: &StepExit) -> Ended {
    let task = &exec.task;
    let failed = |reason: String| Ended::Failed {
        reason,
        timed_out: false,
    };
    match exit.kill {
        Some(Kill::TaskTimeout) => Ended::Failed {
            reason: format!(
                "task {task} timed out after {} s",
                exec.timeout.as_secs_f64()
            ),
            timed_out: true,
        },
        Some(Kill::Deadline) => Ended::Deadline,
        Some(Kill::Cancel(r)) => Ended::Cancelled(r),
        None => match exit.status {
            Some(s) if s.success() => Ended::Succeeded,
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => failed(format!("task {task} exited with code {code}")),
                (None, Some(sig)) => failed(format!("task {task} killed by signal {sig}")),
                (None, None) => failed(format!("task {task} ended")),
            },
            None => failed(format!("task {task}: lost track of the process")),
        },
    }
}

/// The job-wide variables every process of the job gets (before its task's own).
fn job_env(plan: &JobPlan, dir: &Path) -> Vec<(String, String)> {
    let mut env = plan.env.clone();
    let k = &plan.dispatch;
    env.push(("BATON_ROWS".into(), path_str(&dir.join(ROWS_FILE))));
    env.push(("BATON_EXECUTION_ID".into(), k.execution_id.clone()));
    env.push(("BATON_ATTEMPT".into(), k.attempt.to_string()));
    env.push(("BATON_ITEM_INDEX".into(), k.item_index.to_string()));
    env
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
