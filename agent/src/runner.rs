//! Runs one child job's processes: each task attempt as a process in its own
//! process group.
//!
//! [`crate::plan`] turns a child package and its bound parameters into a [`JobPlan`];
//! [`crate::job_dag`] drives the package's tasks through the engine (which task
//! starts when, retries, skips, the job's outcome) and calls `run_attempt` for each
//! process, several at once for independent tasks. This module owns the processes:
//! spawn without a shell, capture stdout/stderr (all tasks into the job's two log
//! files, capped at [`LOG_BYTES_MAX`], tail kept for the finished event), enforce the
//! task timeout and the job deadline, end the whole process group (SIGTERM, grace,
//! SIGKILL; `process_group.rs`) on timeout or cancel — every running task's
//! group at once, so one grace for the whole job — and keep `$BATON_ROWS`
//! ([`crate::rows`]) after success.
//! Reading logs and rows back for clients is [`crate::logs`] and [`crate::rows`].
//!
//! Each task gets its own `$BATON_OUTPUT` file (`output.<task>`); `$BATON_ROWS` is
//! one file for the whole job, which every task appends to.
//!
//! Parameter values reach the child only through argv and the environment; the runner
//! never logs argv or environment values (parameters may be sensitive), and masks the
//! sensitive ones in everything it keeps from the job ([`crate::mask`]).
//!
//! A job with a run-as user ([`crate::run_as`]) runs its processes with that user's uid
//! and gid (std drops the supplementary groups when root sets the uid), in a clean
//! environment (the agent's own variables are not passed on, except `PATH`, `LANG`,
//! `LANGUAGE`, `TZ` and `LC_*`) with `HOME`, `USER` and `LOGNAME` of that user. Its
//! scratch directory belongs to that user; the files the agent reads back from it
//! (`$BATON_OUTPUT`, `$BATON_ROWS`) are opened without following symbolic links and
//! only if they are regular files owned by that user, so a job cannot make the agent
//! read a file it could not read itself.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use baton_package::{Package, ParamValues, TaskKind};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::{Mutex, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use crate::job_dir::reachable_by;
use crate::job_dir::{DirPool, prepare_dir};
pub(crate) use crate::job_files::open_job_file;
pub use crate::job_files::parse_outputs;
use crate::job_files::{Capture, pump};
use crate::leftovers::Leftovers;
use crate::mask::Masker;
use crate::model::{DispatchKey, FinishStatus, KillReason, fs_component};
use crate::process_group::{Kill, StepExit, supervise};
use crate::run_as::RunAsUser;

/// Most bytes of stdout (and of stderr) written to the job's log files.
pub const LOG_BYTES_MAX: u64 = 1 << 20;
/// How long to wait for stdout/stderr to close after the process group is gone
/// (a process that left the group with `setsid` could hold them open forever).
const PIPE_DRAIN_MAX: Duration = Duration::from_secs(2);

/// A process to run, fully interpolated.
#[derive(Clone)]
pub struct ExecStep {
    pub task: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
    pub timeout: Duration,
}

/// Hand-written: argv and env may hold sensitive parameter values.
impl std::fmt::Debug for ExecStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecStep")
            .field("task", &self.task)
            .field("program", &self.argv.first())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Everything needed to run one job.
#[derive(Clone)]
pub struct JobPlan {
    pub dispatch: DispatchKey,
    /// The child package; its tasks are interpolated when they become ready.
    pub package: Arc<Package>,
    /// Its bound parameters.
    pub params: ParamValues,
    /// Timeout of a task without `timeout_s`.
    pub default_task_timeout: Duration,
    /// Job-wide environment (`BATON_PARAM_*`, `TRACEPARENT`, ...), before each task's own.
    pub env: Vec<(String, String)>,
    /// Wall-clock budget of the whole job.
    pub deadline: Option<Duration>,
    /// The user the processes run as (approved by admission); `None`: the agent's.
    pub run_as: Option<RunAsUser>,
    /// The job's sensitive parameter values, masked in logs, tails, outputs, reasons.
    pub masker: Masker,
}

/// Agent-wide runner settings.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// `data_dir/jobs`.
    pub scratch_root: PathBuf,
    pub kill_grace: Duration,
    pub output_tail_bytes: usize,
    /// The record of the process groups running now ([`crate::leftovers`]).
    pub leftovers: Arc<Leftovers>,
    /// Empty scratch directories for reuse ([`crate::job_dir`]).
    pub dirs: Arc<DirPool>,
}

impl RunnerSettings {
    /// Settings for jobs under `scratch_root` (reap what an earlier boot left
    /// there first: this starts a new record of running groups).
    pub fn new(scratch_root: PathBuf, kill_grace: Duration, output_tail_bytes: usize) -> Self {
        RunnerSettings {
            leftovers: Arc::new(Leftovers::new(&scratch_root)),
            dirs: Arc::new(DirPool::new(&scratch_root)),
            scratch_root,
            kill_grace,
            output_tail_bytes,
        }
    }
}

/// What the finished event reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    pub status: FinishStatus,
    /// 0 when the job succeeded; when it failed, the exit code of the process of
    /// the task whose failure failed it; -1 if none (not started, killed by a
    /// signal, cancelled).
    pub exit_code: i32,
    /// The union of the tasks' outputs (a later task wins on the same key), when
    /// the job succeeded.
    pub outputs: BTreeMap<String, String>,
    pub row_count: u64,
    pub reason: String,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub duration_ms: u64,
    /// The job left no file: its empty directory went back to the pool.
    pub left_nothing: bool,
}

/// Cancel handle of a running job: a token plus the first reason given.
#[derive(Clone, Default)]
pub struct JobCancel {
    token: CancellationToken,
    reason: Arc<OnceLock<KillReason>>,
}

impl JobCancel {
    pub fn new() -> JobCancel {
        JobCancel::default()
    }

    /// Asks the job to end; the first reason wins.
    pub fn cancel(&self, reason: KillReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The reason, once cancelled.
    pub(crate) fn reason_if_cancelled(&self) -> Option<KillReason> {
        self.is_cancelled()
            .then(|| self.reason.get().copied().unwrap_or(KillReason::Cancelled))
    }

    pub(crate) async fn cancelled(&self) -> KillReason {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or(KillReason::Cancelled)
    }
}

/// The scratch directory of a job: `scratch_root/<execution_id>/<task_path>-<item>-<attempt>`.
pub fn scratch_dir(scratch_root: &Path, key: &DispatchKey) -> PathBuf {
    scratch_root
        .join(fs_component(&key.execution_id))
        .join(format!(
            "{}-{}-{}",
            fs_component(&key.task_path),
            key.item_index,
            key.attempt
        ))
}

/// File names inside the scratch directory.
/// `$BATON_OUTPUT` of task `T` is `output.T` ([`output_file`]).
pub const OUTPUT_FILE_PREFIX: &str = "output.";
pub const ROWS_FILE: &str = "rows.jsonl";
pub const STDOUT_LOG: &str = "stdout.log";
pub const STDERR_LOG: &str = "stderr.log";

/// The `$BATON_OUTPUT` file of `task` in the job directory `dir`.
pub fn output_file(dir: &Path, task: &str) -> PathBuf {
    dir.join(format!("{OUTPUT_FILE_PREFIX}{}", fs_component(task)))
}

/// Runs the plan to the end: the package's tasks through the engine
/// ([`crate::job_dag`]), each process as `run_attempt` runs it. Sends the pid of
/// the job's first process on `started` as soon as it runs (dropped unsent if no
/// process ever starts). Never panics on child failures: every failure becomes a
/// [`JobReport`].
pub async fn run_job(
    plan: &JobPlan,
    settings: &RunnerSettings,
    cancel: &JobCancel,
    started: oneshot::Sender<u32>,
) -> JobReport {
    let begin = Instant::now();
    let deadline_at = plan.deadline.map(|d| begin + d);
    let dir = scratch_dir(&settings.scratch_root, &plan.dispatch);
    let mut report = JobReport {
        status: FinishStatus::Succeeded,
        exit_code: -1,
        outputs: BTreeMap::new(),
        row_count: 0,
        reason: String::new(),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        duration_ms: 0,
        left_nothing: false,
    };
    // Without a process nothing can write logs, outputs or rows: no scratch
    // directory (this is what makes `noop` measure the orchestration alone).
    let procs = if needs_processes(&plan.package) {
        if let Err(reason) = prepare_dir(&dir, plan.run_as.as_ref(), &settings.dirs).await {
            report.status = FinishStatus::Failed;
            report.reason = plan.masker.mask_str(&reason);
            report.duration_ms = begin.elapsed().as_millis() as u64;
            return report;
        }
        let tail_max = settings.output_tail_bytes;
        Some(Arc::new(Processes {
            env: job_env(plan, &dir),
            out: Mutex::new(Capture::new(dir.join(STDOUT_LOG), tail_max)),
            err: Mutex::new(Capture::new(dir.join(STDERR_LOG), tail_max)),
            dir: dir.clone(),
            run_as: plan.run_as.clone(),
            settings: settings.clone(),
            cancel: cancel.clone(),
            deadline_at,
            masker: plan.masker.clone(),
            started: std::sync::Mutex::new(Some(started)),
        }))
    } else {
        None
    };
    let end = crate::job_dag::drive(plan, procs.clone(), cancel, deadline_at).await;
    (report.status, report.reason, report.exit_code) = (end.status, end.reason, end.exit_code);
    if let Some(procs) = &procs {
        let mut out = procs.out.lock().await;
        out.finish().await;
        report.stdout_tail = out.tail();
        let mut err = procs.err.lock().await;
        err.finish().await;
        report.stderr_tail = err.tail();
    }
    if report.status == FinishStatus::Succeeded {
        report.outputs = end
            .outputs
            .into_iter()
            .map(|(k, v)| (plan.masker.mask_str(&k), plan.masker.mask_str(&v)))
            .collect();
        if procs.is_some() {
            let owner = plan.run_as.as_ref().map(|u| u.uid);
            let kept = crate::rows::keep_rows(&dir, owner, &plan.masker).await;
            if kept.truncated {
                warn!(dispatch = %plan.dispatch, rows = kept.rows, "rows not all kept (a row over 1 MiB, or past the 64 MiB cap)");
            }
            report.row_count = kept.rows;
        }
    }
    if procs.is_some() {
        // The raw `$BATON_OUTPUT`/`$BATON_ROWS` files hold values unmasked: gone
        // once read (rows were kept masked above, or not at all).
        remove_raw_files(&dir).await;
    }
    if procs.is_some() && plan.run_as.is_none() {
        // Last: after the outputs and rows were read from the directory.
        let (pool, d) = (settings.dirs.clone(), dir.clone());
        report.left_nothing = tokio::task::spawn_blocking(move || pool.give_back(&d))
            .await
            .unwrap_or(false);
    }
    report.reason = plan.masker.mask_str(&report.reason);
    report.duration_ms = begin.elapsed().as_millis() as u64;
    report
}

/// Removes every raw `$BATON_OUTPUT` (`output.*`) and `$BATON_ROWS` file left in the
/// job directory `dir`: called when the job has ended and its rows were kept.
async fn remove_raw_files(dir: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    let mut raw = Vec::new();
    while let Ok(Some(e)) = entries.next_entry().await {
        if is_raw(&e.file_name().to_string_lossy()) {
            raw.push(e.path());
        }
    }
    for path in raw {
        crate::job_files::remove_raw(&path).await;
    }
}

/// Whether a file a job wrote is one of its raw `$BATON_OUTPUT`/`$BATON_ROWS` files.
fn is_raw(name: &str) -> bool {
    name.starts_with(OUTPUT_FILE_PREFIX) || name == ROWS_FILE
}

/// Removes the raw files that jobs of an earlier boot left under `jobs_root`
/// (`<execution>/<job>/`): a killed agent never read them, and those jobs run
/// again elsewhere. Called at start, before any job runs; returns how many went.
pub fn remove_raw_files_left(jobs_root: &Path) -> usize {
    let mut removed = 0;
    let dirs = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    };
    for execution in dirs(jobs_root) {
        for job in dirs(&execution) {
            for e in std::fs::read_dir(&job).into_iter().flatten().flatten() {
                if is_raw(&e.file_name().to_string_lossy())
                    && std::fs::remove_file(e.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
    }
    removed
}

/// Whether any task of the package starts a process.
fn needs_processes(package: &Package) -> bool {
    package
        .tasks
        .values()
        .any(|t| matches!(t.kind, TaskKind::Exec(_) | TaskKind::Script(_)))
}

pub(crate) fn cancel_reason(r: KillReason) -> &'static str {
    match r {
        KillReason::Cancelled => "cancelled by the coordinator",
        KillReason::Shutdown => "cancelled: agent shutting down",
    }
}

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

/// Variables of the agent's own environment that a run-as job still gets.
fn inherited_by_run_as(name: &str) -> bool {
    matches!(name, "PATH" | "LANG" | "LANGUAGE" | "TZ") || name.starts_with("LC_")
}

/// Variables of the agent's environment that hold its credentials: removed
/// from every job's environment (with every other `BATON_*` of the agent's, see
/// [`agent_baton_vars`]).
const AGENT_SECRET_VARS: [&str; 2] = ["BATON_ENROLL_TOKEN", "BATON_TOKEN"];

/// Every `BATON_*` variable of the agent's own environment, read once. None
/// reaches a job: besides the tokens, a shell that started the agent may have
/// exported the CLI's `BATON_TLS_DIR` (an admin identity) and
/// `BATON_COORDINATOR`, with which a job could act as that identity. A job's
/// own `BATON_*` (task, attempt, output, rows, …) are set after this removal.
fn agent_baton_vars() -> &'static [std::ffi::OsString] {
    static VARS: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();
    VARS.get_or_init(|| {
        std::env::vars_os()
            .map(|(k, _)| k)
            .filter(|k| k.as_encoded_bytes().starts_with(b"BATON_"))
            .collect()
    })
}

/// PATH of a run-as job when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What every process of one job shares: its directory, environment, user, the
/// captures of its stdout and stderr, cancel, deadline, and the `started` signal
/// of its first process.
pub(crate) struct Processes {
    pub(crate) dir: PathBuf,
    env: Vec<(String, String)>,
    pub(crate) run_as: Option<RunAsUser>,
    settings: RunnerSettings,
    cancel: JobCancel,
    deadline_at: Option<Instant>,
    masker: Masker,
    out: Mutex<Capture>,
    err: Mutex<Capture>,
    started: std::sync::Mutex<Option<oneshot::Sender<u32>>>,
}

/// Spawns one attempt of a task and waits for it; `Err` is a spawn failure
/// (already a reason).
async fn run_step(exec: &ExecStep, attempt: u32, ctx: &Processes) -> Result<StepExit, String> {
    let Some(program) = exec.argv.first() else {
        return Err(format!("task {}: empty argv", exec.task));
    };
    let mut cmd = Command::new(program);
    if let Some(user) = &ctx.run_as {
        cmd.env_clear();
        for (k, v) in std::env::vars_os() {
            if k.to_str().is_some_and(inherited_by_run_as) {
                cmd.env(k, v);
            }
        }
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", DEFAULT_PATH);
        }
        cmd.env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name)
            .uid(user.uid)
            .gid(user.gid);
    }
    // The agent's own secrets and settings never reach a job (a job without
    // run-as inherits the agent's environment): an enrolment token left in it
    // would let a job enrol a rogue agent under this name, a BATON_TLS_DIR act
    // as the identity it names.
    for secret in AGENT_SECRET_VARS {
        cmd.env_remove(secret);
    }
    for own in agent_baton_vars() {
        cmd.env_remove(own);
    }
    cmd.args(&exec.argv[1..])
        .envs(ctx.env.iter().map(|(k, v)| (k, v)))
        .env("BATON_TASK", &exec.task)
        .env("BATON_TASK_ATTEMPT", attempt.to_string())
        .env("BATON_OUTPUT", output_file(&ctx.dir, &exec.task))
        .envs(exec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(exec.workdir.as_deref().unwrap_or(&ctx.dir))
        .process_group(0)
        .kill_on_drop(false)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        let user = ctx
            .run_as
            .as_ref()
            .map(|u| format!(" as run_as user {:?}", u.name))
            .unwrap_or_default();
        format!("task {}: cannot start {program:?}{user}: {e}", exec.task)
    })?;
    let pid = child.id().unwrap_or(0);
    debug!(task = %exec.task, attempt, pid, "task process started");
    ctx.settings.leftovers.record(pid);
    let first = ctx.started.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(tx) = first {
        let _ = tx.send(pid);
    }
    let pgid = Pid::from_raw(pid as i32);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let timeout_at = {
        let t = Instant::now() + exec.timeout;
        ctx.deadline_at.map_or(t, |d| d.min(t))
    };
    let deadline_first = ctx
        .deadline_at
        .is_some_and(|d| d <= Instant::now() + exec.timeout);

    let waiter = async {
        // `supervise` always leaves the group empty: then its record can go.
        let exit = supervise(
            &mut child,
            pgid,
            timeout_at,
            deadline_first,
            ctx.settings.kill_grace,
            &ctx.cancel,
        )
        .await;
        ctx.settings.leftovers.forget(pid);
        exit
    };
    let readers = async {
        tokio::join!(
            pump(stdout, &ctx.out, &ctx.masker),
            pump(stderr, &ctx.err, &ctx.masker)
        );
    };
    tokio::pin!(waiter);
    tokio::pin!(readers);
    let mut readers_done = false;
    let exit = loop {
        tokio::select! {
            exit = &mut waiter => break exit,
            () = &mut readers, if !readers_done => readers_done = true,
        }
    };
    if !readers_done
        && tokio::time::timeout(PIPE_DRAIN_MAX, &mut readers)
            .await
            .is_err()
    {
        warn!(task = %exec.task, "output pipes still open after the process group ended");
    }
    Ok(exit)
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
