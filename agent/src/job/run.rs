//! Runs one child job to its end and makes its report.
//!
//! [`super::plan`] turned the child package and its bound parameters into a
//! [`JobPlan`]; this module prepares the job's scratch directory
//! ([`super::layout`]: fresh, or an empty one from the pool; none when no task
//! starts a process), hands the package's tasks to the DAG ([`super::dag`]: which
//! task starts when, retries, skips, the job's outcome; each process through
//! [`super::attempt`] and [`super::process`]), then collects what the job left:
//! the tails of its stdout and stderr, its outputs (masked), its rows when it
//! succeeded ([`super::files::keep_rows`]), removes its raw files and gives an
//! empty directory back to the pool. Reading logs and rows back for clients is
//! [`crate::logs`] and [`crate::rows`].
//!
//! Parameter values reach the child only through argv and the environment; the
//! run never logs argv or environment values (parameters may be sensitive), and
//! masks the sensitive ones in everything it keeps from the job ([`crate::mask`]).
//!
//! A job with a run-as user ([`crate::run_as`]) runs its processes with that
//! user's uid and gid in a clean environment ([`super::process`]). Its scratch
//! directory belongs to that user; the files the agent reads back from it
//! (`$BATON_OUTPUT`, `$BATON_ROWS`) are opened without following symbolic links
//! and only if they are regular files owned by that user, so a job cannot make the
//! agent read a file it could not read itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baton_package::{Package, TaskKind};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::warn;

use super::attempt::{ProcessSettings, Processes};
use super::cancel::JobCancel;
use super::files::{keep_rows, remove_raw_files};
use super::layout::{DirPool, prepare_dir, scratch_dir};
use super::leftovers::Leftovers;
use super::plan::JobPlan;
use crate::model::FinishStatus;

/// Agent-wide runner settings.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// `data_dir/jobs`.
    pub scratch_root: PathBuf,
    pub kill_grace: Duration,
    pub output_tail_bytes: usize,
    /// The record of the process groups running now ([`super::leftovers`]).
    pub leftovers: Arc<Leftovers>,
    /// Empty scratch directories for reuse ([`super::layout`]).
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

/// Runs the plan to the end: the package's tasks through the engine
/// ([`super::dag`]), each process as [`super::attempt`] runs it. Sends the pid of
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
        let shared = ProcessSettings {
            kill_grace: settings.kill_grace,
            leftovers: settings.leftovers.clone(),
            output_tail_bytes: settings.output_tail_bytes,
        };
        Some(Arc::new(Processes::new(
            plan,
            &dir,
            shared,
            cancel,
            deadline_at,
            started,
        )))
    } else {
        None
    };
    let end = super::dag::drive(plan, procs.clone(), cancel, deadline_at).await;
    (report.status, report.reason, report.exit_code) = (end.status, end.reason, end.exit_code);
    if let Some(procs) = &procs {
        (report.stdout_tail, report.stderr_tail) = procs.finish().await;
    }
    // A directory the job left empty (most short jobs: nothing printed, no
    // output or rows) goes back to the pool at once, in one trip to a blocking
    // thread: there is nothing in it to keep or remove.
    let pooled = procs.is_some() && plan.run_as.is_none() && give_back(settings, &dir).await;
    if report.status == FinishStatus::Succeeded {
        report.outputs = end
            .outputs
            .into_iter()
            .map(|(k, v)| (plan.masker.mask_str(&k), plan.masker.mask_str(&v)))
            .collect();
        if procs.is_some() && !pooled {
            let owner = plan.run_as.as_ref().map(|u| u.uid);
            let kept = keep_rows(&dir, owner, &plan.masker).await;
            if kept.truncated {
                warn!(dispatch = %plan.dispatch, rows = kept.rows, "rows not all kept (a row over 1 MiB, or past the 64 MiB cap)");
            }
            report.row_count = kept.rows;
        }
    }
    if procs.is_some() && !pooled {
        // The raw `$BATON_OUTPUT`/`$BATON_ROWS` files hold values unmasked: gone
        // once read (rows were kept masked above, or not at all).
        remove_raw_files(&dir).await;
    }
    report.left_nothing = pooled
        || (procs.is_some()
            && plan.run_as.is_none()
            // Last: after the outputs and rows were read from the directory
            // (and the raw files removed, which may have emptied it).
            && give_back(settings, &dir).await);
    report.reason = plan.masker.mask_str(&report.reason);
    report.duration_ms = begin.elapsed().as_millis() as u64;
    report
}

/// Gives the job directory `dir` back to the pool if it is empty (see
/// [`DirPool`]); true when it went.
async fn give_back(settings: &RunnerSettings, dir: &std::path::Path) -> bool {
    let (pool, d) = (settings.dirs.clone(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || pool.give_back(&d))
        .await
        .unwrap_or(false)
}

/// Whether any task of the package starts a process.
fn needs_processes(package: &Package) -> bool {
    package
        .tasks
        .values()
        .any(|t| matches!(t.kind, TaskKind::Exec(_) | TaskKind::Script(_)))
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
