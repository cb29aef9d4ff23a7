//! The execution half of the scheduler: the child job state machine, the
//! dispatch pump and the progress of a parent package from task to task.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use baton_proto as pb;
use tracing::{debug, info, warn};

use super::{Child, ChildRef, DispatchOutcome, Effect, Exec, Scheduler, TaskRun};
use crate::placement::{Placement, PlacementRequest, place};
use crate::prepare::{Plan, child_params};
use crate::records::{ChildRecord, ExecutionRecord, ExecutionState, Phase, now_unix_ms};

fn phase_idx(p: Phase) -> usize {
    p as usize
}

impl Scheduler {
    /// Adds a new execution; every child starts `pending`, attempt 1.
    pub fn start(&mut self, rec: ExecutionRecord, plan: Plan) -> String {
        let children = plan
            .tasks
            .iter()
            .map(|t| {
                t.items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| ChildRecord {
                        task: t.name.clone(),
                        index: i as u32,
                        item: item.clone(),
                        phase: Phase::Pending,
                        attempt: 1,
                        agent: None,
                        attempt_agents: Vec::new(),
                        failures: 0,
                        lost: 0,
                        exit_code: None,
                        reason: String::new(),
                        outputs: BTreeMap::new(),
                        started_unix_ms: 0,
                        finished_unix_ms: 0,
                    })
                    .map(|r| (r, None))
                    .collect()
            })
            .collect();
        let id = rec.id.clone();
        let slot = self.insert_exec(rec, None, plan, children);
        self.dirty_execs.insert(slot);
        let e = &self.execs[&slot];
        for (t, task) in e.tasks.iter().enumerate() {
            for c in 0..task.children.len() {
                self.dirty_children.insert(ChildRef {
                    exec: slot,
                    task: t as u16,
                    child: c as u32,
                });
            }
        }
        info!(execution = %id, package = %self.execs[&slot].rec.package, "execution started");
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
        now: Instant,
    ) {
        let mut by_task: HashMap<String, Vec<(ChildRecord, Option<u64>)>> = HashMap::new();
        for (c, v) in stored {
            by_task
                .entry(c.task.clone())
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
        let slot = self.insert_exec(rec, Some(version), plan, children);
        // Children on agents: the agents own them until they report or are lost.
        let mut on_agent = Vec::new();
        let e = &self.execs[&slot];
        for (t, task) in e.tasks.iter().enumerate() {
            for (i, c) in task.children.iter().enumerate() {
                if c.rec.phase.is_on_agent() {
                    on_agent.push((
                        ChildRef {
                            exec: slot,
                            task: t as u16,
                            child: i as u32,
                        },
                        c.rec.clone(),
                    ));
                }
            }
        }
        for (cref, c) in on_agent {
            let agent = c.agent.clone().unwrap_or_default();
            match self.agents.get_mut(&agent) {
                Some(a) => {
                    a.active.insert(cref);
                    if c.phase == Phase::Dispatching {
                        // Outcome unknown: ask again (idempotent on the agent).
                        self.resend.push((now, cref));
                    }
                }
                None => self.child_lost(cref, &agent, "agent unknown after coordinator restart"),
            }
        }
        self.advance(slot);
    }

    fn insert_exec(
        &mut self,
        rec: ExecutionRecord,
        version: Option<u64>,
        plan: Plan,
        children: Vec<Vec<(ChildRecord, Option<u64>)>>,
    ) -> u64 {
        let slot = self.alloc_slot();
        let mut phase_counts = [0u64; 9];
        let mut lost_attempts = 0;
        let mut per_agent: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut tasks = Vec::with_capacity(plan.tasks.len());
        let mut task_index = HashMap::new();
        for (t, children) in plan.tasks.iter().zip(children) {
            task_index.insert(t.name.clone(), tasks.len() as u16);
            let mut run = TaskRun {
                children: Vec::with_capacity(children.len()),
                queue: VecDeque::new(),
                in_flight: 0,
                terminal: 0,
                failed: 0,
            };
            for (rec, version) in children {
                phase_counts[phase_idx(rec.phase)] += 1;
                lost_attempts += u64::from(rec.lost);
                if rec.phase == Phase::Pending {
                    run.queue.push_back(rec.index);
                }
                if rec.phase.is_on_agent() {
                    run.in_flight += 1;
                }
                if rec.phase.is_terminal() {
                    run.terminal += 1;
                    let agent = rec.agent.clone().unwrap_or_default();
                    let e = per_agent.entry(agent).or_default();
                    if rec.phase == Phase::Succeeded {
                        e.0 += 1;
                    } else {
                        run.failed += 1;
                        e.1 += 1;
                    }
                }
                run.children.push(Child {
                    rec,
                    version,
                    avoid: None,
                    soft_excluded: Default::default(),
                    excluded_gen: 0,
                    hard_rejected: Default::default(),
                    waiting_reason: String::new(),
                    dispatched_at: None,
                });
            }
            tasks.push(run);
        }
        let (summary, _) = tokio::sync::watch::channel(super::Summary::default());
        self.exec_ids.insert(rec.id.clone(), slot);
        self.exec_order.push_back(slot);
        self.execs.insert(
            slot,
            Exec {
                rec,
                version,
                plan,
                tasks,
                task_index,
                phase_counts,
                lost_attempts,
                per_agent,
                summary,
                touched: true,
            },
        );
        slot
    }

    /// The one place a child changes phase: keeps counters, agent slots and
    /// the dirty set in step.
    pub(crate) fn set_phase(&mut self, cref: ChildRef, new: Phase) {
        let Some(e) = self.execs.get_mut(&cref.exec) else {
            return;
        };
        let task = &mut e.tasks[cref.task as usize];
        let c = &mut task.children[cref.child as usize];
        let old = c.rec.phase;
        debug_assert!(!old.is_terminal(), "a terminal phase is never left");
        if old.is_on_agent() {
            task.in_flight -= 1;
            if let Some(a) = c.rec.agent.as_ref().and_then(|a| self.agents.get_mut(a)) {
                a.active.remove(&cref);
            }
        }
        if new.is_on_agent() {
            task.in_flight += 1;
            if let Some(a) = c.rec.agent.as_ref().and_then(|a| self.agents.get_mut(a)) {
                a.active.insert(cref);
            }
        }
        if new.is_terminal() {
            task.terminal += 1;
            c.rec.finished_unix_ms = now_unix_ms();
            let counts = e
                .per_agent
                .entry(c.rec.agent.clone().unwrap_or_default())
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
        c.rec.phase = new;
        e.touched = true;
        self.dirty_children.insert(cref);
    }

    fn child(&self, cref: ChildRef) -> Option<&Child> {
        self.execs
            .get(&cref.exec)
            .map(|e| &e.tasks[cref.task as usize].children[cref.child as usize])
    }

    fn child_mut(&mut self, cref: ChildRef) -> Option<&mut Child> {
        self.execs
            .get_mut(&cref.exec)
            .map(|e| &mut e.tasks[cref.task as usize].children[cref.child as usize])
    }

    /// Puts a child back in its task's queue (front: it was next in line).
    fn requeue(&mut self, cref: ChildRef, front: bool) {
        self.set_phase(cref, Phase::Pending);
        if let Some(e) = self.execs.get_mut(&cref.exec) {
            let q = &mut e.tasks[cref.task as usize].queue;
            if front {
                q.push_front(cref.child);
            } else {
                q.push_back(cref.child);
            }
        }
    }

    /// Dispatches as many pending children as placement and the caps allow,
    /// taking one child per execution in turn so that executions share the fleet.
    pub fn pump(&mut self, now: Instant) {
        let mut views = self.agent_views(now);
        let order: Vec<u64> = self.exec_order.iter().copied().collect();
        if let Some(first) = self.exec_order.pop_front() {
            self.exec_order.push_back(first);
        }
        let mut blocked = vec![false; order.len()];
        loop {
            let mut progressed = false;
            for (i, &slot) in order.iter().enumerate() {
                if blocked[i] {
                    continue;
                }
                match self.next_for(slot, &views, now) {
                    Some((cref, agent)) => {
                        if let Some(v) = views.iter_mut().find(|v| v.name == agent) {
                            v.in_flight += 1;
                        }
                        self.dispatch_to(cref, agent, now);
                        progressed = true;
                    }
                    None => blocked[i] = true,
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// The next child of an execution and where it goes, or `None` if it must wait.
    fn next_for(
        &mut self,
        slot: u64,
        views: &[crate::placement::AgentView],
        _now: Instant,
    ) -> Option<(ChildRef, String)> {
        let gen_now = self.capacity_gen;
        let e = self.execs.get_mut(&slot)?;
        if e.rec.state.is_terminal() || e.rec.current_task >= e.tasks.len() {
            return None;
        }
        let ti = e.rec.current_task;
        let parallelism = e.plan.tasks[ti].foreach.parallelism;
        let task = &mut e.tasks[ti];
        if task.in_flight >= parallelism {
            return None;
        }
        let &ci = task.queue.front()?;
        let c = &mut task.children[ci as usize];
        if c.excluded_gen != gen_now {
            c.soft_excluded.clear();
            c.excluded_gen = gen_now;
        }
        let mut exclude = c.soft_excluded.clone();
        exclude.extend(c.hard_rejected.iter().cloned());
        let req = PlacementRequest {
            avoid: c.avoid.as_deref(),
            exclude: Some(&exclude),
        };
        let cref = ChildRef {
            exec: slot,
            task: ti as u16,
            child: ci,
        };
        match place(views, &req) {
            Placement::Agent(agent) => {
                task.queue.pop_front();
                Some((cref, agent))
            }
            Placement::NoCapacity(reason) => {
                let ready: Vec<&str> = views
                    .iter()
                    .filter(|v| v.ready)
                    .map(|v| v.name.as_str())
                    .collect();
                let refused_by_all = !c.hard_rejected.is_empty()
                    && ready.iter().all(|a| c.hard_rejected.contains(*a));
                if refused_by_all {
                    task.queue.pop_front();
                    c.rec.reason = format!("refused by every ready agent: {}", c.rec.reason);
                    self.set_phase(cref, Phase::Failed);
                    self.advance(slot);
                } else {
                    c.waiting_reason = reason;
                }
                None
            }
        }
    }

    /// The StartJob request of a child's current attempt (same dispatch id on every resend).
    fn start_request(&self, cref: ChildRef) -> Result<pb::StartJobRequest, String> {
        let e = self.execs.get(&cref.exec).ok_or("execution gone")?;
        let planned = &e.plan.tasks[cref.task as usize];
        let c = &e.tasks[cref.task as usize].children[cref.child as usize];
        let params = child_params(&planned.foreach, &e.plan.params, &c.rec.item)
            .map_err(|err| format!("cannot bind child parameters: {err}"))?;
        Ok(pb::StartJobRequest {
            dispatch_id: Some(pb::DispatchId {
                execution_id: e.rec.id.clone(),
                task_path: c.rec.task.clone(),
                item_index: c.rec.index,
                attempt: c.rec.attempt,
            }),
            package: Some(pb::PackageRef {
                name: planned.child.name.clone(),
                content_hash: planned.child.hash.clone(),
                content: planned.child.content.to_vec(),
            }),
            parameters: params.into_iter().collect(),
            coordinator_epoch: self.epoch,
            deadline_ms: planned.timeout_s.map_or(0, |s| s.saturating_mul(1000)),
            traceparent: String::new(),
        })
    }

    fn dispatch_to(&mut self, cref: ChildRef, agent: String, now: Instant) {
        let request = match self.start_request(cref) {
            Ok(r) => r,
            Err(reason) => {
                if let Some(c) = self.child_mut(cref) {
                    c.rec.reason = reason;
                }
                self.set_phase(cref, Phase::Failed);
                self.advance(cref.exec);
                return;
            }
        };
        let Some(c) = self.child_mut(cref) else {
            return;
        };
        if c.rec.attempt_agents.len() < c.rec.attempt as usize {
            c.rec.attempt_agents.push(agent.clone());
        } else if let Some(last) = c.rec.attempt_agents.last_mut() {
            *last = agent.clone();
        }
        c.rec.agent = Some(agent.clone());
        c.waiting_reason.clear();
        c.dispatched_at = Some(now);
        let attempt = c.rec.attempt;
        self.set_phase(cref, Phase::Dispatching);
        let address = self
            .agents
            .get(&agent)
            .map(|a| a.rec.address.clone())
            .unwrap_or_default();
        self.stats.dispatches += 1;
        self.effects.push(Effect::Dispatch {
            agent,
            address,
            child: cref,
            attempt,
            request: Box::new(request),
        });
    }

    /// Sends a dispatch again after an unknown outcome (same dispatch id).
    pub(crate) fn resend_dispatch(&mut self, cref: ChildRef, now: Instant) {
        let Some((agent, address)) = self.dispatch_target(cref) else {
            return;
        };
        if !self.agents.get(&agent).is_some_and(|a| a.seen) {
            // Not heard from since our restart: wait for it (or for its lease to expire).
            self.resend.push((now + self.config.dispatch_retry, cref));
            return;
        }
        let Ok(request) = self.start_request(cref) else {
            return;
        };
        let attempt = request.dispatch_id.as_ref().map_or(0, |d| d.attempt);
        self.effects.push(Effect::Dispatch {
            agent,
            address,
            child: cref,
            attempt,
            request: Box::new(request),
        });
    }

    /// The answer (or silence) of an agent to a StartJob.
    pub fn dispatch_result(
        &mut self,
        cref: ChildRef,
        agent: &str,
        attempt: u32,
        outcome: DispatchOutcome,
        now: Instant,
    ) {
        let current = self.child(cref).is_some_and(|c| {
            c.rec.phase == Phase::Dispatching
                && c.rec.attempt == attempt
                && c.rec.agent.as_deref() == Some(agent)
        });
        if !current {
            return; // already reported, lost, or re-dispatched: nothing to do
        }
        match outcome {
            DispatchOutcome::Accepted => self.set_phase(cref, Phase::Accepted),
            DispatchOutcome::Unknown(err) => {
                debug!(agent, %err, "dispatch outcome unknown; will ask again");
                self.resend.push((now + self.config.dispatch_retry, cref));
            }
            DispatchOutcome::Rejected { code, reason } => {
                self.stats.rejections += 1;
                use pb::RejectCode as R;
                let full_backoff = self.config.full_backoff;
                if let Some(a) = self.agents.get_mut(agent) {
                    match code {
                        R::AtCapacity => a.full_until = Some(now + full_backoff),
                        R::Draining => a.draining = true,
                        _ => {}
                    }
                }
                if code == R::StaleEpoch {
                    warn!(
                        agent,
                        "agent has seen a newer coordinator epoch; is another coordinator running?"
                    );
                }
                let Some(c) = self.child_mut(cref) else {
                    return;
                };
                c.rec.reason = format!("{agent} rejected ({}): {reason}", code.as_str_name());
                match code {
                    R::AtCapacity | R::Draining | R::StaleEpoch => {
                        c.soft_excluded.insert(agent.to_string());
                        self.requeue(cref, true);
                    }
                    R::UnknownPackage | R::Unauthorized => {
                        c.hard_rejected.insert(agent.to_string());
                        self.requeue(cref, true);
                    }
                    R::InvalidRequest | R::Unspecified => {
                        self.set_phase(cref, Phase::Failed);
                        self.advance(cref.exec);
                    }
                }
            }
        }
    }

    /// Finds the child a report is about, if the report is for its current attempt on `agent`.
    fn fenced(&mut self, agent: &str, id: Option<&pb::DispatchId>) -> Option<ChildRef> {
        let id = id?;
        let found = self.exec_ids.get(&id.execution_id).and_then(|&slot| {
            let e = &self.execs[&slot];
            let t = *e.task_index.get(&id.task_path)?;
            let c = e.tasks[t as usize].children.get(id.item_index as usize)?;
            let ok = c.rec.attempt == id.attempt
                && c.rec.agent.as_deref() == Some(agent)
                && c.rec.phase.is_on_agent();
            ok.then_some(ChildRef {
                exec: slot,
                task: t,
                child: id.item_index,
            })
        });
        if found.is_none() {
            self.stats.stale_events += 1;
            if let Some(e) = self
                .exec_ids
                .get(&id.execution_id)
                .and_then(|s| self.execs.get_mut(s))
            {
                e.rec.stale_events += 1;
                e.touched = true;
            }
            debug!(agent, dispatch = %id, "stale report ignored");
        }
        found
    }

    pub(crate) fn child_started(&mut self, agent: &str, s: pb::JobStarted, at_ms: u64) {
        let Some(cref) = self.fenced(agent, s.dispatch_id.as_ref()) else {
            return;
        };
        if let Some(c) = self.child_mut(cref) {
            c.rec.started_unix_ms = at_ms;
            if c.rec.phase != Phase::Running {
                self.set_phase(cref, Phase::Running);
            }
        }
    }

    pub(crate) fn child_finished(
        &mut self,
        agent: &str,
        f: pb::JobFinished,
        at_ms: u64,
        now: Instant,
    ) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.full_until = None;
        }
        self.capacity_gen += 1;
        let Some(cref) = self.fenced(agent, f.dispatch_id.as_ref()) else {
            return;
        };
        let status = pb::JobStatus::try_from(f.status).unwrap_or(pb::JobStatus::Unspecified);
        let Some(e) = self.execs.get_mut(&cref.exec) else {
            return;
        };
        let retry = e.plan.tasks[cref.task as usize].foreach.retry;
        let c = &mut e.tasks[cref.task as usize].children[cref.child as usize];
        if let Some(at) = c.dispatched_at.take() {
            let ms = now.saturating_duration_since(at).as_millis();
            self.latency.completion_ms.record(ms as u64);
        }
        c.rec.exit_code = Some(f.exit_code);
        c.rec.outputs = f.outputs.into_iter().collect();
        c.rec.reason = f.reason;
        if c.rec.started_unix_ms == 0 {
            c.rec.started_unix_ms = at_ms.saturating_sub(f.duration_ms);
        }
        let terminal = match status {
            pb::JobStatus::Succeeded => Phase::Succeeded,
            pb::JobStatus::Cancelled => Phase::Cancelled,
            pb::JobStatus::TimedOut => Phase::TimedOut,
            pb::JobStatus::Failed | pb::JobStatus::Unspecified => Phase::Failed,
        };
        if matches!(terminal, Phase::Failed | Phase::TimedOut)
            && c.rec.failures + 1 < retry.attempts
        {
            c.rec.failures += 1;
            c.rec.attempt += 1;
            c.avoid = Some(agent.to_string());
            info!(dispatch = ?cref, agent, attempt = c.rec.attempt, "child failed; retrying");
            self.requeue(cref, false);
            return;
        }
        if terminal != Phase::Succeeded {
            c.rec.failures += 1;
        }
        self.set_phase(cref, terminal);
        self.advance(cref.exec);
    }

    /// The child's agent is gone: retry it under a new attempt number, or give up.
    pub(crate) fn child_lost(&mut self, cref: ChildRef, agent: &str, why: &str) {
        let Some(e) = self.execs.get_mut(&cref.exec) else {
            return;
        };
        let retry = e.plan.tasks[cref.task as usize].foreach.retry;
        e.lost_attempts += 1;
        let c = &mut e.tasks[cref.task as usize].children[cref.child as usize];
        if !c.rec.phase.is_on_agent() {
            return;
        }
        c.rec.lost += 1;
        c.rec.reason = format!("attempt {} {why} on {agent}", c.rec.attempt);
        if c.rec.lost <= retry.lost_attempts {
            c.rec.attempt += 1;
            c.avoid = Some(agent.to_string());
            self.requeue(cref, true);
        } else {
            self.set_phase(cref, Phase::Lost);
            self.advance(cref.exec);
        }
    }

    /// Moves an execution on when its current task is complete.
    pub(crate) fn advance(&mut self, slot: u64) {
        let Some(e) = self.execs.get_mut(&slot) else {
            return;
        };
        while !e.rec.state.is_terminal() {
            let ti = e.rec.current_task;
            if ti >= e.tasks.len() {
                e.rec.state = ExecutionState::Succeeded;
                break;
            }
            let task = &e.tasks[ti];
            if (task.terminal as usize) < task.children.len() {
                return;
            }
            if task.failed > 0 {
                e.rec.state = ExecutionState::Failed;
                e.rec.reason = format!(
                    "{} of {} children of task '{}' did not succeed",
                    task.failed,
                    task.children.len(),
                    e.plan.tasks[ti].name
                );
                break;
            }
            e.rec.current_task += 1;
            self.dirty_execs.insert(slot);
        }
        e.rec.finished_unix_ms = now_unix_ms();
        e.touched = true;
        self.dirty_execs.insert(slot);
        info!(execution = %e.rec.id, state = e.rec.state.as_str(), reason = %e.rec.reason, "execution finished");
    }
}
