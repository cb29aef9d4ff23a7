//! The execution half of the scheduler: creating and restoring executions, and
//! the bookkeeping around each child's state (`child.rs`): the one place a
//! child moves ([`Scheduler::set_state`]), retries, loss and the fencing of
//! reports. The flow from task to task is in `flow.rs`, dispatch in `dispatch.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use tracing::{debug, info, warn};

use super::child::{COORDINATOR, Child, ChildState, End, Step};
use super::exec::{Exec, TaskRun};
use super::model::{ChildRef, Effect, TraceEvent};
use super::state::Scheduler;
use crate::clock::Now;
use crate::domain::{DispatchId, JobFinished, JobStarted, JobStatus};
use crate::prepare::Plan;

/// Most bytes of a child's outputs (names and values) and of its reason: its
/// record must fit in one commit of a replicated store (etcd: 1.5 MiB by
/// default, and JSON may escape a byte into six). A child that reports more
/// fails with `CHILD_OUTPUTS_TOO_LARGE` in its reason, its outputs dropped.
pub const MAX_CHILD_OUTPUT_BYTES: usize = 128 * 1024;
/// Most bytes of a child's reason kept (cut on a character boundary).
pub const MAX_CHILD_REASON_BYTES: usize = 8 * 1024;
use crate::records::{ChildRecord, ExecutionRecord, Phase};

fn phase_idx(p: Phase) -> usize {
    p as usize
}

impl Scheduler {
    /// Adds a new execution; the tasks the engine makes ready at once get
    /// their children (`pending`, attempt 1), the others when they start.
    pub fn start(&mut self, rec: ExecutionRecord, plan: Plan, now: Now) -> String {
        self.at(now);
        self.start_execution(rec, plan)
    }

    /// [`Scheduler::start`] at the time of the input being handled (a
    /// sub-execution starts within its parent child's input).
    pub(super) fn start_execution(&mut self, rec: ExecutionRecord, plan: Plan) -> String {
        let children = plan.tasks.iter().map(|_| Vec::new()).collect();
        let id = rec.id.clone();
        info!(execution = %id, package = %rec.package, "execution started");
        let slot = self.insert_exec(rec, None, plan, children);
        self.journal.exec(slot);
        self.advance(slot);
        id
    }

    /// Rebuilds an execution from the store after a restart.
    pub(crate) fn restore_execution(
        &mut self,
        rec: ExecutionRecord,
        version: u64,
        plan: Plan,
        stored: Vec<(ChildRecord, u64)>,
        now: Now,
    ) {
        let now = self.at(now);
        let mut by_task: HashMap<String, Vec<(ChildRecord, Option<u64>)>> = HashMap::new();
        for (c, v) in stored {
            by_task
                .entry(c.task.to_string())
                .or_default()
                .push((c, Some(v)));
        }
        let children = plan
            .tasks
            .iter()
            .map(|t| {
                let mut v = by_task.remove(&t.name).unwrap_or_default();
                v.sort_by_key(|(c, _)| c.index);
                v
            })
            .collect();
        let cancel_requested = rec.cancel_requested;
        let slot = self.insert_exec(rec, Some(version), plan, children);
        // Children on agents: the agents own them until they report or are lost.
        let mut on_agent = Vec::new();
        let Some(e) = self.execs.get(slot) else {
            return;
        };
        // (A child that runs as a sub-execution has none: its sub-execution
        // is restored as a running execution of its own.)
        for (t, task) in e.tasks.iter().enumerate() {
            for (i, c) in task.children.iter().enumerate() {
                if let Some(agent) = c.state().agent() {
                    let cref = ChildRef {
                        exec: slot,
                        task: t as u16,
                        child: i as u32,
                    };
                    let dispatching = matches!(c.state(), ChildState::Dispatching { .. });
                    on_agent.push((cref, agent.clone(), dispatching));
                }
            }
        }
        for (cref, agent, dispatching) in on_agent {
            match self.registry.get_mut(agent.as_str()) {
                Some(a) => {
                    a.hold(cref);
                    if dispatching {
                        // Outcome unknown: ask again (idempotent on the agent).
                        self.timers.resend_at(now, cref);
                    }
                }
                None => self.child_lost(
                    cref,
                    agent.as_str(),
                    "agent unknown after coordinator restart",
                ),
            }
        }
        if cancel_requested {
            self.cancel_children(slot);
        } else {
            self.restop_cancelled_children(slot);
        }
        self.advance(slot);
    }

    fn insert_exec(
        &mut self,
        rec: ExecutionRecord,
        version: Option<u64>,
        mut plan: Plan,
        children: Vec<Vec<(ChildRecord, Option<u64>)>>,
    ) -> u64 {
        let mut phase_counts = [0u64; 9];
        let mut lost_attempts = 0;
        let mut per_agent: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut tasks = Vec::with_capacity(plan.tasks.len());
        let mut task_index = HashMap::new();
        let mut pending = Vec::new();
        for (t, children) in plan.tasks.iter().zip(children) {
            task_index.insert(t.name.clone(), tasks.len() as u16);
            let mut run = TaskRun::new(children.len());
            for (rec, version) in children {
                // The state the record stands for, and the record as its image.
                let mut child = Child::new(rec);
                child.version = version;
                let rec = &child.rec;
                phase_counts[phase_idx(rec.phase)] += 1;
                lost_attempts += u64::from(rec.lost);
                if rec.phase == Phase::Pending {
                    pending.push((tasks.len(), rec.index));
                }
                if rec.phase.is_on_agent() {
                    run.in_flight += 1;
                }
                if rec.phase.is_terminal() {
                    run.terminal += 1;
                    let agent = rec.agent.as_deref().unwrap_or_default().to_string();
                    let e = per_agent.entry(agent).or_default();
                    if rec.phase == Phase::Succeeded {
                        e.0 += 1;
                    } else {
                        run.failed += 1;
                        e.1 += 1;
                    }
                }
                run.children.push(child);
            }
            tasks.push(run);
        }
        let (summary, _) = tokio::sync::watch::channel(super::summary::Summary::default());
        let mut kinds: BTreeMap<(BTreeMap<String, String>, u32), u32> = BTreeMap::new();
        let place_keys: Vec<u32> = plan
            .tasks
            .iter()
            .map(|t| {
                let slots = match t.slots {
                    0 => rec.placement.slots(),
                    n => n,
                };
                let next = kinds.len() as u32;
                *kinds.entry((t.require.clone(), slots)).or_insert(next)
            })
            .collect();
        let watch = super::task_watch::TaskWatch::new(place_keys);
        let mut exec = Exec {
            rec,
            version,
            engine: match plan.engine.take() {
                Some(engine) => *engine,
                None => baton_package::Engine::new(&plan.parent, plan.params.clone()),
            },
            plan,
            tasks,
            task_index,
            phase_counts,
            lost_attempts,
            per_agent,
            summary,
            touched: true,
            watch,
        };
        for (ti, ci) in pending {
            exec.enqueue(ti, ci, false);
        }
        let slot = self.execs.insert(exec);
        self.dispatcher.add_execution(slot);
        slot
    }

    /// The one place a child changes state: takes `step` through
    /// [`Child::step`] and keeps counters, agent slots and the dirty set in
    /// step with it. A step the state refuses (out of an ended state, in
    /// release builds too) changes nothing and is counted in
    /// `stats.refused_steps`. Returns whether the step was taken.
    pub(crate) fn set_state(&mut self, cref: ChildRef, step: Step) -> bool {
        let Some(e) = self.execs.get_mut(cref.exec) else {
            return false;
        };
        let task = &mut e.tasks[cref.task as usize];
        let c = &mut task.children[cref.child as usize];
        let left = match c.step(step) {
            Ok(left) => left,
            Err(refused) => {
                self.stats.refused_steps += 1;
                warn!(child = ?cref, %refused, "a child's state change was refused");
                return false;
            }
        };
        let (old, new) = (left.phase(), c.state().phase());
        if old.is_on_agent() {
            task.in_flight -= 1;
            if let Some(a) = left.agent().and_then(|a| self.registry.get_mut(a.as_str())) {
                a.release(cref);
            }
        }
        if new.is_on_agent() {
            task.in_flight += 1;
            if let Some(a) = c
                .state()
                .agent()
                .and_then(|a| self.registry.get_mut(a.as_str()))
            {
                a.hold(cref);
            }
        }
        if new.is_terminal() {
            self.stats.children_ended[phase_idx(new)] += 1;
            e.watch.may_end(cref.task as usize);
            task.terminal += 1;
            c.rec.finished_unix_ms = self.unix_ms;
            let counts = e
                .per_agent
                .entry(c.rec.agent.as_deref().unwrap_or_default().to_string())
                .or_default();
            if new == Phase::Succeeded {
                counts.0 += 1;
            } else {
                task.failed += 1;
                counts.1 += 1;
            }
        }
        e.phase_counts[phase_idx(old)] -= 1;
        e.phase_counts[phase_idx(new)] += 1;
        if new != Phase::Pending {
            // Why it waited is over (placement, or no answer to a dispatch).
            c.waiting_reason.clear();
        }
        if let Some(t) = &e.rec.trace {
            let agent = c.state().agent().or(left.agent());
            self.journal.effect(Effect::Trace(TraceEvent::Child {
                exec: t.traceparent.clone(),
                execution_id: e.rec.id.clone(),
                task: cref.task,
                task_name: e.plan.tasks[cref.task as usize].name.clone(),
                child: cref.child,
                old_attempt: left.attempt(),
                attempt: c.state().attempt(),
                old_phase: old,
                phase: new,
                agent: agent.map(|a| a.as_str().to_string()),
                reason: c.rec.reason.clone(),
                unix_ms: self.unix_ms,
            }));
        }
        e.touched = true;
        self.journal.child(cref);
        true
    }

    /// A phase change that need not be durable on its own: the child's
    /// record is written with its next durable change. Used for `accepted`
    /// and `running` (with the pid and start time): a record left at
    /// `dispatching` makes a restarted coordinator send the same dispatch id
    /// again, which the agent answers idempotently, and the child's
    /// `finished` report follows as before. Writing them would buy nothing
    /// for two of every three writes of a child.
    pub(super) fn set_state_unsaved(&mut self, cref: ChildRef, step: Step) {
        let was_dirty = self.journal.child_is_dirty(cref);
        self.set_state(cref, step);
        if !was_dirty {
            self.journal.forget_child(cref);
        }
    }

    pub(super) fn child(&self, cref: ChildRef) -> Option<&Child> {
        self.execs.child(cref)
    }

    pub(super) fn child_mut(&mut self, cref: ChildRef) -> Option<&mut Child> {
        self.execs.child_mut(cref)
    }

    /// Puts a child back in its task's queue (front: it was next in line)
    /// by `step`: [`Step::Requeue`] under the same attempt, [`Step::Retry`]
    /// under the next.
    pub(super) fn requeue(&mut self, cref: ChildRef, front: bool, step: Step) {
        if !self.set_state(cref, step) {
            return;
        }
        if let Some(e) = self.execs.get_mut(cref.exec) {
            e.enqueue(cref.task as usize, cref.child, front);
        }
    }

    /// Finds the child a report is about, if the report is for its current attempt on `agent`.
    fn fenced(&mut self, agent: &str, id: Option<&DispatchId>) -> Option<ChildRef> {
        let id = id?;
        let found = self
            .execs
            .slot_of(id.execution_id.as_str())
            .and_then(|slot| {
                let e = self.execs.get(slot)?;
                let t = *e.task_index.get(&id.task_path)?;
                let c = e.tasks[t as usize].children.get(id.item_index as usize)?;
                let ok = c.state().attempt() == id.attempt
                    && c.state().agent().is_some_and(|a| a.as_str() == agent);
                ok.then_some(ChildRef {
                    exec: slot,
                    task: t,
                    child: id.item_index,
                })
            });
        if found.is_none() {
            self.stats.stale_events += 1;
            let mut foreign = false;
            if let Some(slot) = self.execs.slot_of(id.execution_id.as_str())
                && let Some(e) = self.execs.get_mut(slot)
            {
                e.rec.stale_events += 1;
                e.touched = true;
                self.journal.exec(slot);
                // A late report from an agent that once held the child is normal
                // after a loss; a report from an agent that never did is not.
                foreign = e
                    .task_index
                    .get(&id.task_path)
                    .and_then(|t| e.tasks[*t as usize].children.get(id.item_index as usize))
                    .is_some_and(|c| !c.rec.attempt_agents.iter().any(|a| a == agent));
            }
            if foreign {
                warn!(agent, dispatch = %id, "report about a job never dispatched to this agent refused");
            } else {
                debug!(agent, dispatch = %id, "stale report ignored");
            }
        }
        found
    }

    pub(crate) fn child_started(&mut self, agent: &str, s: JobStarted, at_ms: u64) {
        let Some(cref) = self.fenced(agent, s.dispatch_id.as_ref()) else {
            return;
        };
        if let Some(c) = self.child_mut(cref) {
            c.rec.started_unix_ms = at_ms;
            c.rec.pid = s.pid;
            if c.rec.phase != Phase::Running {
                self.set_state_unsaved(cref, Step::Start);
            }
        }
    }

    pub(crate) fn child_finished(&mut self, agent: &str, f: JobFinished, at_ms: u64, now: Instant) {
        if self.registry.get(agent).is_some() {
            self.dispatcher.agent_not_full(agent);
        }
        self.dispatcher.capacity_changed();
        let Some(cref) = self.fenced(agent, f.dispatch_id.as_ref()) else {
            return;
        };
        let status = f.status;
        self.note_child_end(agent, status, now);
        let mut completion_ms = None;
        if let Some(c) = self.child_mut(cref) {
            c.rec.rows = Some(f.row_count);
            if let Some(at) = c.dispatched_at.take() {
                completion_ms = Some(now.saturating_duration_since(at).as_millis() as u64);
            }
            if c.rec.started_unix_ms == 0 {
                c.rec.started_unix_ms = at_ms.saturating_sub(f.duration_ms);
            }
        }
        if let Some(ms) = completion_ms {
            self.latency.completion_ms.record(ms);
        }
        self.child_ended(
            cref,
            Some(agent),
            status,
            f.exit_code,
            f.outputs,
            f.reason,
            Some(now),
        );
    }

    /// A child's retry backoff is over: it takes its place in the queue again.
    pub(crate) fn retry_due(&mut self, cref: ChildRef) {
        let Some(e) = self.execs.get_mut(cref.exec) else {
            return;
        };
        let max = e.plan.tasks[cref.task as usize].max_failures;
        let task = &mut e.tasks[cref.task as usize];
        let Some(c) = task.children.get(cref.child as usize) else {
            return;
        };
        if c.rec.phase != Phase::Pending || e.rec.cancel_requested || c.rec.cancel_requested {
            return;
        }
        if max.keeps_going(u64::from(task.failed)) {
            e.enqueue(cref.task as usize, cref.child, false);
            return;
        }
        // Its foreach went past max_failures during the backoff: no new attempt.
        if let Some(c) = self.child_mut(cref) {
            c.rec.reason = format!(
                "not retried: task '{}' has more failed children than its max_failures",
                c.rec.task
            );
        }
        self.set_state(cref, Step::End(End::Cancelled));
        self.advance(cref.exec);
    }

    /// A child's current attempt ended on `agent` (an agent's report), or
    /// with `None`, the sub-execution it ran as ended: retry it by policy, or record its
    /// terminal phase and move the execution on. With `now`, a retry waits
    /// for the task's backoff (`retry.backoff_s`, doubling, jittered).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn child_ended(
        &mut self,
        cref: ChildRef,
        agent: Option<&str>,
        status: JobStatus,
        exit_code: i32,
        outputs: BTreeMap<String, String>,
        reason: String,
        now: Option<Instant>,
    ) {
        if let Some(slot) = self.attempt_ended(cref, agent, status, exit_code, outputs, reason, now)
        {
            self.advance(slot);
        }
    }

    /// [`Scheduler::child_ended`] without moving the execution on: returns
    /// the execution to move on when the child ended for good.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attempt_ended(
        &mut self,
        cref: ChildRef,
        agent: Option<&str>,
        status: JobStatus,
        exit_code: i32,
        outputs: BTreeMap<String, String>,
        reason: String,
        now: Option<Instant>,
    ) -> Option<u64> {
        let (status, outputs, reason) = bound_outputs(status, outputs, reason);
        let e = self.execs.get_mut(cref.exec)?;
        let retry = e.plan.tasks[cref.task as usize].retry;
        let c = &mut e.tasks[cref.task as usize].children[cref.child as usize];
        c.rec.exit_code = Some(exit_code);
        c.rec.outputs = outputs;
        // A child cancelled alone keeps the reason it was cancelled for.
        if !(c.rec.cancel_requested && status == JobStatus::Cancelled) {
            c.rec.reason = reason;
        }
        let terminal = match status {
            JobStatus::Succeeded => End::Succeeded,
            JobStatus::Cancelled => End::Cancelled,
            JobStatus::TimedOut => End::TimedOut,
            JobStatus::Failed | JobStatus::Unspecified => End::Failed,
        };
        if matches!(terminal, End::Failed | End::TimedOut)
            && c.rec.failures + 1 < retry.attempts
            && !e.rec.cancel_requested
            && !c.rec.cancel_requested
        {
            c.rec.failures += 1;
            if let Some(agent) = agent {
                c.detours_mut().avoid = Some(agent.to_string());
            }
            // Jitter seeded by the child, so that siblings spread out.
            let seed = crate::scheduler::flow::child_seed(&e.rec.id, &c.rec.task, c.rec.index);
            let delay = retry
                .delay_after(c.rec.failures, seed)
                .filter(|d| !d.is_zero());
            info!(dispatch = ?cref, agent = agent.unwrap_or(COORDINATOR), attempt = c.rec.attempt + 1, delay_ms = delay.map_or(0, |d| d.as_millis() as u64), "child failed; retrying");
            match (delay, now) {
                (Some(d), Some(now)) => {
                    if self.set_state(cref, Step::Retry) {
                        self.timers.retry_at(now + d, cref);
                    }
                }
                _ => self.requeue(cref, false, Step::Retry),
            }
            return None;
        }
        if terminal != End::Succeeded {
            c.rec.failures += 1;
        }
        self.set_state(cref, Step::End(terminal));
        Some(cref.exec)
    }

    /// The child's agent is gone: retry it under a new attempt number, or give up.
    pub(crate) fn child_lost(&mut self, cref: ChildRef, agent: &str, why: &str) {
        let Some(e) = self.execs.get_mut(cref.exec) else {
            return;
        };
        let retry = e.plan.tasks[cref.task as usize].retry;
        e.lost_attempts += 1;
        let c = &mut e.tasks[cref.task as usize].children[cref.child as usize];
        if !c.state().is_active() {
            return;
        }
        c.rec.lost += 1;
        c.rec.reason = format!("attempt {} {why} on {agent}", c.rec.attempt);
        if e.rec.cancel_requested || c.rec.cancel_requested {
            self.set_state(cref, Step::End(End::Cancelled));
            self.advance(cref.exec);
        } else if c.rec.lost <= retry.lost_attempts {
            c.detours_mut().avoid = Some(agent.to_string());
            self.requeue(cref, true, Step::Retry);
        } else {
            self.set_state(cref, Step::End(End::Lost));
            self.advance(cref.exec);
        }
    }
}

/// A child's end as it may be recorded: outputs over
/// [`MAX_CHILD_OUTPUT_BYTES`] are dropped and the child fails with the
/// reason; a reason is cut to [`MAX_CHILD_REASON_BYTES`].
fn bound_outputs(
    status: JobStatus,
    outputs: BTreeMap<String, String>,
    mut reason: String,
) -> (JobStatus, BTreeMap<String, String>, String) {
    if reason.len() > MAX_CHILD_REASON_BYTES {
        let mut cut = MAX_CHILD_REASON_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str(" [cut]");
    }
    let bytes: usize = outputs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes <= MAX_CHILD_OUTPUT_BYTES {
        return (status, outputs, reason);
    }
    warn!(bytes, "a child reported outputs over the limit; it fails");
    let why = format!(
        "CHILD_OUTPUTS_TOO_LARGE: the child's outputs are {bytes} bytes; the limit is {MAX_CHILD_OUTPUT_BYTES} (write large results as rows, $BATON_ROWS)"
    );
    let reason = if reason.is_empty() {
        why
    } else {
        format!("{why}; {reason}")
    };
    (JobStatus::Failed, BTreeMap::new(), reason)
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn outputs_over_the_limit_fail_the_child_and_are_dropped() {
        let big: BTreeMap<String, String> =
            [("k".to_string(), "x".repeat(MAX_CHILD_OUTPUT_BYTES))].into();
        let (status, outputs, reason) = bound_outputs(JobStatus::Succeeded, big, String::new());
        assert_eq!(status, JobStatus::Failed);
        assert!(outputs.is_empty());
        assert!(reason.starts_with("CHILD_OUTPUTS_TOO_LARGE"), "{reason}");
        let small: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        let (status, outputs, _) =
            bound_outputs(JobStatus::Succeeded, small.clone(), String::new());
        assert_eq!((status, outputs), (JobStatus::Succeeded, small));
    }

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary() {
        let (_, _, reason) = bound_outputs(
            JobStatus::Failed,
            BTreeMap::new(),
            "é".repeat(MAX_CHILD_REASON_BYTES),
        );
        assert!(reason.len() <= MAX_CHILD_REASON_BYTES + " [cut]".len());
        assert!(reason.ends_with(" [cut]"));
    }
}
