//! Drives a child package's tasks through the engine ([`baton_package::Engine`]).
//!
//! The engine decides (which tasks are ready, skips, `when`, groups, the
//! package's outcome); this loop does what it decides: every ready task becomes a
//! [`Step`] at that moment ([`super::plan::step`]: interpolated with the outputs
//! of the tasks that ended), and a process step runs as one attempt
//! ([`super::attempt`]) in a task of its own, so that independent tasks run
//! at once (at most [`PARALLEL_TASKS_MAX`] per job; the rest wait their turn,
//! still ready). When an attempt ends:
//!
//! - a failure (exit code, signal, the task's timeout, a spawn failure) is tried
//!   again while the task's `retry` policy allows, after the engine's
//!   `retry_delay` (backoff with jitter, seeded by the dispatch and the task);
//! - otherwise the task's `$BATON_OUTPUT` (`output.<task>`) is read and given to
//!   the engine with the outcome; the job's outputs are the union of its tasks'
//!   (a later task wins on the same key, `OUTPUTS_MAX` keys at most).
//!
//! Cancelling the job or reaching its deadline cancels the engine (nothing more
//! starts) while the running processes end their groups themselves (they watch
//! the same cancel and deadline); the loop waits for them all, then reports.
//!
//! The job's status follows the engine's outcome: succeeded, failed (timed out
//! when the failure that failed it was a task's timeout), cancelled; timed out
//! when the deadline stopped it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use baton_package::{Engine, PackageOutcome, TaskOutcome, TaskState};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::attempt::{AttemptEnd, Ended, Processes, run_attempt};
use super::cancel::{JobCancel, cancel_reason};
use super::files::{OUTPUTS_MAX, read_outputs};
use super::layout::output_file;
use super::plan::{self, ExecStep, JobPlan, Step};
use crate::model::{FinishStatus, KillReason};

/// Most tasks of one job running at once (the job holds one slot of the agent).
pub const PARALLEL_TASKS_MAX: usize = 32;

/// How the tasks ended, for the job's report.
#[derive(Debug, Clone)]
pub(crate) struct DagEnd {
    pub status: FinishStatus,
    pub reason: String,
    pub exit_code: i32,
    /// The union of the tasks' outputs (unmasked).
    pub outputs: BTreeMap<String, String>,
}

/// Why the run stopped before the engine finished by itself.
#[derive(Debug, Clone)]
enum Stop {
    Cancel(KillReason),
    /// The deadline; the task it killed, if any.
    Deadline(Option<String>),
}

/// A task's last failure: its reason, exit code, and whether its timeout did it.
#[derive(Debug, Clone)]
struct Failure {
    task: String,
    reason: String,
    exit_code: i32,
    timed_out: bool,
}

struct Driver<'a> {
    plan: &'a JobPlan,
    procs: Option<Arc<Processes>>,
    engine: Engine,
    running: JoinSet<(String, AttemptEnd)>,
    /// Task of each running attempt, for an attempt that panicked.
    by_id: HashMap<tokio::task::Id, String>,
    /// The step of each running task (a retry runs it again).
    steps: HashMap<String, ExecStep>,
    stop: Option<Stop>,
    /// Failures in the order they were final.
    failures: Vec<Failure>,
    outputs: BTreeMap<String, String>,
}

/// Runs the package of `plan` to its end. `procs` is `None` when no task of the
/// package starts a process (then there is no scratch directory).
pub(crate) async fn drive(
    plan: &JobPlan,
    procs: Option<Arc<Processes>>,
    cancel: &JobCancel,
    deadline_at: Option<Instant>,
) -> DagEnd {
    let mut d = Driver {
        plan,
        procs,
        engine: Engine::new(&plan.package, plan.params.clone()),
        running: JoinSet::new(),
        by_id: HashMap::new(),
        steps: HashMap::new(),
        stop: None,
        failures: Vec::new(),
        outputs: BTreeMap::new(),
    };
    loop {
        if d.stop.is_none() {
            if let Some(r) = cancel.reason_if_cancelled() {
                d.halt(Stop::Cancel(r));
            } else if deadline_at.is_some_and(|t| Instant::now() >= t) {
                d.halt(Stop::Deadline(None));
            } else {
                d.start_ready();
            }
        }
        if d.running.is_empty() {
            break;
        }
        let deadline = async {
            match deadline_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let stopping = d.stop.is_some();
        tokio::select! {
            joined = d.running.join_next_with_id() => match joined {
                Some(Ok((id, (task, end)))) => {
                    d.by_id.remove(&id);
                    d.attempt_ended(task, end).await;
                }
                Some(Err(e)) => {
                    let task = d.by_id.remove(&e.id());
                    warn!(dispatch = %plan.dispatch, task = ?task, error = %e, "task attempt panicked");
                    if let Some(task) = task {
                        let end = AttemptEnd {
                            ended: Ended::Failed {
                                reason: format!("task {task}: the agent lost track of it"),
                                timed_out: false,
                            },
                            exit_code: -1,
                        };
                        d.finish(task, end).await;
                    }
                }
                None => {}
            },
            r = cancel.cancelled(), if !stopping => d.halt(Stop::Cancel(r)),
            () = deadline, if !stopping => d.halt(Stop::Deadline(None)),
        }
    }
    d.end()
}

impl Driver<'_> {
    /// Starts every ready task (up to the cap); repeats while steps without a
    /// process (noop, fail) end at once and make more tasks ready.
    fn start_ready(&mut self) {
        loop {
            let mut ended_at_once = false;
            for task in self.engine.ready() {
                if self.running.len() >= PARALLEL_TASKS_MAX {
                    return;
                }
                if let Err(e) = self.engine.started(&task) {
                    warn!(dispatch = %self.plan.dispatch, %task, error = %e, "engine refused a start");
                    continue;
                }
                let Some(def) = self.engine.package().tasks.get(&task).cloned() else {
                    continue;
                };
                match plan::step(&self.engine, &def, self.plan.default_task_timeout) {
                    Step::Noop { .. } => {
                        self.report(&task, TaskOutcome::Succeeded, BTreeMap::new());
                        ended_at_once = true;
                    }
                    Step::Fail { reason, .. } => {
                        self.fail_at_once(&task, format!("task {task}: {reason}"));
                        ended_at_once = true;
                    }
                    Step::Exec(exec) => {
                        if self.procs.is_none() {
                            // Unreachable: a process task makes the run prepare them.
                            self.fail_at_once(&task, format!("task {task}: no scratch directory"));
                            ended_at_once = true;
                            continue;
                        }
                        self.spawn(exec, 1, Duration::ZERO);
                    }
                }
            }
            if !ended_at_once {
                return;
            }
        }
    }

    fn fail_at_once(&mut self, task: &str, reason: String) {
        self.failures.push(Failure {
            task: task.to_string(),
            reason: reason.clone(),
            exit_code: -1,
            timed_out: false,
        });
        if let Err(e) = self.engine.failed(task, reason) {
            warn!(dispatch = %self.plan.dispatch, %task, error = %e, "engine refused a failure");
        }
    }

    fn spawn(&mut self, exec: ExecStep, attempt: u32, delay: Duration) {
        let Some(procs) = self.procs.clone() else {
            return;
        };
        let task = exec.task.clone();
        self.steps.insert(task.clone(), exec.clone());
        let handle = self.running.spawn(async move {
            let end = run_attempt(&exec, attempt, delay, &procs).await;
            (exec.task, end)
        });
        self.by_id.insert(handle.id(), task);
    }

    /// An attempt ended: try again, or report the task's end.
    async fn attempt_ended(&mut self, task: String, end: AttemptEnd) {
        let attempt = self.engine.attempts(&task);
        debug!(dispatch = %self.plan.dispatch, %task, attempt, ended = end.ended.kind(), exit_code = end.exit_code, "task attempt ended");
        if let Ended::Failed { .. } = &end.ended
            && self.stop.is_none()
            && let Some(delay) = self.engine.retry_delay(&task, attempt, self.seed(&task))
            && let Some(exec) = self.steps.get(&task).cloned()
            && self.engine.started(&task).is_ok()
        {
            info!(
                dispatch = %self.plan.dispatch,
                %task,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "task attempt failed, trying again"
            );
            if let Some(procs) = &self.procs {
                // The next attempt writes its own outputs.
                let _ = tokio::fs::remove_file(output_file(&procs.dir, &task)).await;
            }
            self.spawn(exec, attempt + 1, delay);
            return;
        }
        self.finish(task, end).await;
    }

    /// Reports a task's last attempt to the engine, with the outputs it wrote.
    async fn finish(&mut self, task: String, end: AttemptEnd) {
        self.steps.remove(&task);
        let outputs = match &self.procs {
            Some(procs) => {
                let owner = procs.run_as.as_ref().map(|u| u.uid);
                let (outputs, malformed) =
                    read_outputs(&output_file(&procs.dir, &task), owner).await;
                if malformed > 0 {
                    warn!(dispatch = %self.plan.dispatch, %task, malformed, "ignored malformed lines in BATON_OUTPUT");
                }
                outputs
            }
            None => BTreeMap::new(),
        };
        let outcome = match end.ended {
            Ended::Succeeded => TaskOutcome::Succeeded,
            Ended::Failed { reason, timed_out } => {
                self.failures.push(Failure {
                    task: task.clone(),
                    reason,
                    exit_code: end.exit_code,
                    timed_out,
                });
                TaskOutcome::Failed
            }
            Ended::Deadline => {
                self.halt(Stop::Deadline(Some(task.clone())));
                TaskOutcome::Cancelled
            }
            Ended::Cancelled(r) => {
                self.halt(Stop::Cancel(r));
                TaskOutcome::Cancelled
            }
        };
        for (k, v) in &outputs {
            if self.outputs.len() < OUTPUTS_MAX || self.outputs.contains_key(k) {
                self.outputs.insert(k.clone(), v.clone());
            }
        }
        self.report(&task, outcome, outputs);
    }

    fn report(&mut self, task: &str, outcome: TaskOutcome, outputs: BTreeMap<String, String>) {
        if let Err(e) = self.engine.finished(task, outcome, outputs) {
            warn!(dispatch = %self.plan.dispatch, %task, error = %e, "engine refused a task's end");
        }
    }

    /// Stops starting tasks; the first reason wins (a deadline that names the
    /// task it killed refines one that did not).
    fn halt(&mut self, why: Stop) {
        match (&self.stop, &why) {
            (None, _) => {}
            (Some(Stop::Deadline(None)), Stop::Deadline(Some(_))) => {}
            _ => return,
        }
        if self.stop.is_none() {
            let running = self.engine.cancel();
            debug!(dispatch = %self.plan.dispatch, stop = ?why, running = running.len(), "job stopping");
        }
        self.stop = Some(why);
    }

    /// Jitter seed of a task's retries: the dispatch and the task, so that the
    /// children of one fan-out that fail together spread their retries.
    fn seed(&self, task: &str) -> u64 {
        // FNV-1a: stable across runs and platforms (std's hasher is not).
        let k = &self.plan.dispatch;
        let text = format!(
            "{}/{}/{}/{}/{task}",
            k.execution_id, k.task_path, k.item_index, k.attempt
        );
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Whether a failure of `task` fails the package: neither it nor a group
    /// around it has `continue_on_failure`.
    fn counts(&self, task: &str) -> bool {
        let pkg = self.engine.package();
        let mut name = Some(task);
        let mut depth = 0;
        while let Some(n) = name {
            if pkg.tasks.get(n).is_none_or(|t| t.continue_on_failure) {
                return false;
            }
            name = pkg.group_of(n);
            depth += 1;
            if depth > pkg.tasks.len() {
                break;
            }
        }
        true
    }

    fn end(self) -> DagEnd {
        let failed = |status, reason, exit_code| DagEnd {
            status,
            reason,
            exit_code,
            outputs: BTreeMap::new(),
        };
        match (&self.stop, self.engine.outcome()) {
            (Some(Stop::Cancel(r)), _) => {
                failed(FinishStatus::Cancelled, cancel_reason(*r).to_string(), -1)
            }
            (Some(Stop::Deadline(task)), _) => {
                let ms = self.plan.deadline.unwrap_or_default().as_millis();
                let reason = match task {
                    Some(t) => format!("job deadline of {ms} ms exceeded in task {t}"),
                    None => format!("job deadline of {ms} ms exceeded"),
                };
                failed(FinishStatus::TimedOut, reason, -1)
            }
            (None, Some(PackageOutcome::Succeeded)) => DagEnd {
                status: FinishStatus::Succeeded,
                reason: String::new(),
                exit_code: 0,
                outputs: self.outputs,
            },
            (None, Some(PackageOutcome::Cancelled)) => {
                failed(FinishStatus::Cancelled, "cancelled".to_string(), -1)
            }
            (None, Some(PackageOutcome::Failed)) => {
                if let Some(f) = self.failures.iter().find(|f| self.counts(&f.task)) {
                    let status = if f.timed_out {
                        FinishStatus::TimedOut
                    } else {
                        FinishStatus::Failed
                    };
                    return failed(status, f.reason.clone(), f.exit_code);
                }
                // A failure the engine decided itself (a `when` it could not evaluate).
                let pkg = self.engine.package();
                let reason = pkg
                    .task_order()
                    .iter()
                    .map(|t| t.name.as_str())
                    .find(|t| self.engine.state(t) == Ok(TaskState::Failed) && self.counts(t))
                    .map_or_else(
                        || "a task failed".to_string(),
                        |t| format!("task {t}: {}", self.engine.reason(t).unwrap_or("failed")),
                    );
                failed(FinishStatus::Failed, reason, -1)
            }
            (None, None) => {
                // The engine has nothing ready, nothing running and no outcome.
                warn!(dispatch = %self.plan.dispatch, "job ended with tasks neither run nor skipped");
                failed(
                    FinishStatus::Failed,
                    "tasks were left neither run nor skipped".to_string(),
                    -1,
                )
            }
        }
    }
}

#[cfg(test)]
#[path = "dag_tests.rs"]
mod tests;
