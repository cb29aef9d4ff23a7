//! The process layer: starts one command as the leader of a process group of its
//! own — argv without a shell, the environment, working directory and user it is
//! given, stdin closed — gives it the job's log files as stdout and stderr when
//! nothing needs masking, or feeds its pipes to the job's captures otherwise
//! ([`super::capture`]), supervises the group (the task's timeout, the job's
//! deadline, a cancel) and reports how it exited. Whatever happens, the group is
//! left empty: when the leader exits, what it left behind gets SIGTERM, one grace
//! and SIGKILL; on a timeout, the deadline or a cancel the whole group gets the
//! same, the leader included. Every running group is recorded
//! ([`super::leftovers`]) so that none outlives the agent.
//!
//! Nothing above this module spawns a process or signals a group: the attempt
//! ([`super::attempt`]) says what to start and judges the `StepExit`.
//!
//! What reaches the process's environment: the agent's own (minus every
//! `BATON_*` variable of the agent's, its credentials among them), or, for a
//! run-as user, a clean one (only `PATH`, `LANG`, `LANGUAGE`, `TZ` and `LC_*`
//! are passed on) with `HOME`, `USER` and `LOGNAME` of that user; then the
//! variables given, in their order. The process runs with the user's uid and gid
//! (std drops the supplementary groups when root sets the uid). Argv and
//! environment values are never logged (parameters may be sensitive).

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::cancel::JobCancel;
use super::capture::{Capture, hold_to_cap, pump};
use super::leftovers::Leftovers;
use crate::mask::Masker;
use crate::model::KillReason;
use crate::run_as::RunAsUser;

/// How long to wait for stdout/stderr to close after the process group is gone
/// (a process that left the group with `setsid` could hold them open forever).
const PIPE_DRAIN_MAX: Duration = Duration::from_secs(2);

/// What to start.
pub(crate) struct Spawn<'a> {
    /// The task it runs and its attempt, for reasons and logs.
    pub task: &'a str,
    pub attempt: u32,
    pub argv: &'a [String],
    /// Set in this order, after the agent's own variables were removed (a later
    /// one wins).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory.
    pub dir: &'a Path,
    /// The user it runs as; `None`: the agent's.
    pub run_as: Option<&'a RunAsUser>,
}

/// When to end the group before the leader exits by itself.
pub(crate) struct Limits<'a> {
    /// The task's timeout, from the moment the process started.
    pub timeout: Duration,
    /// The job's deadline, if it has one.
    pub deadline_at: Option<Instant>,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    pub cancel: &'a JobCancel,
}

/// Where stdout and stderr go (the job's captures, shared by its processes),
/// masked on the way.
pub(crate) struct Output<'a> {
    pub out: &'a Mutex<Capture>,
    pub err: &'a Mutex<Capture>,
    pub masker: &'a Masker,
    /// The process gets the log files themselves as stdout and stderr (nothing
    /// to mask): no pipes. Pipes all the same if a file cannot be opened.
    pub straight: bool,
}

/// Starts `spawn`, calls `started` with its pid as soon as it runs, and waits
/// until its group is empty and its pipes are drained (or given up on). `Err` is
/// a spawn failure, already a reason.
pub(crate) async fn run(
    spawn: Spawn<'_>,
    limits: Limits<'_>,
    output: Output<'_>,
    leftovers: &Leftovers,
    started: impl FnOnce(u32),
) -> Result<StepExit, String> {
    let (task, attempt) = (spawn.task, spawn.attempt);
    let Some(program) = spawn.argv.first() else {
        return Err(format!("task {task}: empty argv"));
    };
    let mut cmd = Command::new(program);
    if let Some(user) = spawn.run_as {
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
    cmd.args(&spawn.argv[1..])
        .envs(spawn.env)
        .current_dir(spawn.dir)
        .process_group(0)
        .kill_on_drop(false)
        .stdin(Stdio::null());
    let files = if output.straight {
        let out = output.out.lock().await.child_file();
        let err = output.err.lock().await.child_file();
        match (out, err) {
            (Ok(out), Ok(err)) => Some((out, err)),
            (Err(e), _) | (_, Err(e)) => {
                warn!(%task, error = %e, "cannot open the job's log files for the process; through pipes");
                None
            }
        }
    } else {
        None
    };
    let straight = files.is_some();
    match files {
        Some((out, err)) => cmd.stdout(out).stderr(err),
        None => cmd.stdout(Stdio::piped()).stderr(Stdio::piped()),
    };
    let before = crate::group_record::boot_ticks();
    let mut child = cmd.spawn().map_err(|e| {
        let user = spawn
            .run_as
            .map(|u| format!(" as run_as user {:?}", u.name))
            .unwrap_or_default();
        format!("task {task}: cannot start {program:?}{user}: {e}")
    })?;
    let pid = child.id().unwrap_or(0);
    debug!(%task, attempt, pid, "task process started");
    leftovers.record_spawned(pid, before);
    started(pid);
    let pgid = Pid::from_raw(pid as i32);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let timeout_at = {
        let t = Instant::now() + limits.timeout;
        limits.deadline_at.map_or(t, |d| d.min(t))
    };
    let deadline_first = limits
        .deadline_at
        .is_some_and(|d| d <= Instant::now() + limits.timeout);

    let waiter = async {
        // `supervise` always leaves the group empty: then its record can go.
        let exit = supervise(
            &mut child,
            pgid,
            timeout_at,
            deadline_first,
            limits.grace,
            limits.cancel,
        )
        .await;
        leftovers.forget(pid);
        exit
    };
    let readers = async {
        if straight {
            hold_to_cap(output.out, output.err).await;
        } else {
            tokio::join!(
                pump(stdout, output.out, output.masker),
                pump(stderr, output.err, output.masker)
            );
        }
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
    if !straight
        && !readers_done
        && tokio::time::timeout(PIPE_DRAIN_MAX, &mut readers)
            .await
            .is_err()
    {
        warn!(%task, "output pipes still open after the process group ended");
    }
    Ok(exit)
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
async fn supervise(
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
