//! The dispatch half of the execution logic: the pump that places pending
//! children on agents (fairly across executions, within each foreach's
//! parallelism and each execution's in-flight cap) by applying the
//! dispatcher's choices (`dispatcher.rs`), the StartJob requests, and what
//! each answer of an agent means.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, warn};

use super::child::{ChildState, End, Step};
use super::dispatcher::Choice;
use super::model::{ChildRef, Effect};
use super::state::Scheduler;
use crate::clock::Now;
use crate::domain::{AgentId, DispatchOutcome, DispatchSpec, PackageRef, RejectCode};
use baton_package::Scope;

use crate::prepare::{Work, child_params};

/// Where a child goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// To this agent.
    Agent(String),
    /// Nowhere: the coordinator runs it as a sub-execution (nested fan-out).
    SubExecution,
}

/// What the pump does with one task's next child.
enum Next {
    /// Send this child there.
    Go(ChildRef, Target),
    /// No agent has room for a child with no placement history.
    Full,
    /// Nothing to send from this task now (its caps, a refusal, admission).
    Wait,
}

impl Scheduler {
    /// Dispatches as many pending children as placement and the caps allow,
    /// taking one child per execution in turn so that executions share the fleet.
    pub fn pump(&mut self, now: Now) {
        let now = self.at(now);
        self.retry_parked_rows();
        let mut views = self.agent_views(now);
        let order = self.dispatcher.take_turns();
        let mut blocked = vec![false; order.len()];
        let mut full = vec![std::collections::BTreeSet::new(); order.len()];
        loop {
            let mut progressed = false;
            for (i, &slot) in order.iter().enumerate() {
                if blocked[i] {
                    continue;
                }
                match self.next_for(slot, &views, &mut full[i]) {
                    Some((cref, target)) => {
                        let slots = self
                            .execs
                            .get(slot)
                            .map_or(1, |e| e.slots_of(cref.task as usize));
                        if let Target::Agent(agent) = &target
                            && let Some(v) = views.iter_mut().find(|v| v.name == *agent)
                        {
                            v.in_flight = v.in_flight.saturating_add(slots);
                        }
                        self.dispatch_to(cref, target, now);
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

    /// The next child of an execution and where it goes, or `None` if it
    /// must wait. `full`: the kinds of task (labels and slots asked) that
    /// found no room in this pump round (room only shrinks within a round).
    fn next_for(
        &mut self,
        slot: u64,
        views: &[crate::placement::AgentView],
        full: &mut std::collections::BTreeSet<u32>,
    ) -> Option<(ChildRef, Target)> {
        let e = self.execs.get(slot)?;
        if e.rec.state.is_terminal() || e.rec.cancel_requested || e.at_in_flight_cap() {
            return None;
        }
        // Tasks the engine started (in task order within a kind) with a child
        // waiting and room under their parallelism: independent tasks run at
        // once, and one whose children find no agent (a label nobody has
        // free) does not hold up the others. Only tasks with a child queued
        // are looked at, and once a child with no placement history of its
        // own finds no room, the other tasks of its kind are not (a child
        // with a history can go only where such a child could): the work per
        // event does not grow with the number of tasks.
        for kind in e.watch.queued_kinds() {
            if full.contains(&kind) {
                continue;
            }
            let mut cursor = None;
            loop {
                let e = self.execs.get_mut(slot)?;
                let Some(ti) = e.watch.next_queued(kind, cursor) else {
                    break;
                };
                cursor = Some(ti);
                self.stats.task_checks += 1;
                let run = &e.tasks[ti];
                if !run.is_open() || !run.has_queued() {
                    e.watch.unqueue(ti);
                    continue;
                }
                if run.in_flight >= e.plan.tasks[ti].parallelism {
                    continue;
                }
                let plain = self.front_is_plain(slot, ti);
                match self.next_in_task(slot, ti, views) {
                    Next::Go(cref, target) => return Some((cref, target)),
                    Next::Full if plain => {
                        full.insert(kind);
                        break;
                    }
                    Next::Full | Next::Wait => {}
                }
            }
        }
        None
    }

    /// The task's next child goes to an agent and has no placement history
    /// (no agent to avoid or excluded): it finds room exactly where its
    /// siblings of the same kind do. (A child run as a sub-execution needs
    /// no agent: never skipped for want of room.)
    fn front_is_plain(&self, slot: u64, ti: usize) -> bool {
        self.execs.get(slot).is_some_and(|e| {
            let run = &e.tasks[ti];
            !run.package.as_ref().is_some_and(|p| p.fans_out)
                && run
                    .next_queued()
                    .is_some_and(|ci| run.children[ci as usize].detours.is_none())
        })
    }

    /// The next child of one task of an execution and where it goes: the
    /// dispatcher chooses, the scheduler applies its choice.
    fn next_in_task(
        &mut self,
        slot: u64,
        ti: usize,
        views: &[crate::placement::AgentView],
    ) -> Next {
        if self.nested_waits_for_room(slot, ti) {
            return Next::Wait;
        }
        let Some(e) = self.execs.get(slot) else {
            return Next::Wait;
        };
        let registry = &self.registry;
        let choice =
            self.dispatcher
                .choose(e, slot, ti, views, &self.config.default_strategy, |name| {
                    registry.get(name).is_some_and(|a| registry.is_revoked(a))
                });
        match choice {
            Choice::Wait => Next::Wait,
            Choice::SubExecution(cref) => {
                self.take_from_queue(cref);
                Next::Go(cref, Target::SubExecution)
            }
            Choice::Agent(cref, agent) => {
                self.take_from_queue(cref);
                Next::Go(cref, Target::Agent(agent))
            }
            Choice::RefusedByAll(cref) => {
                self.take_from_queue(cref);
                if let Some(c) = self.child_mut(cref) {
                    c.rec.reason = format!("refused by every ready agent: {}", c.rec.reason);
                }
                self.set_state(cref, Step::End(End::Failed));
                self.advance(slot);
                Next::Wait
            }
            Choice::NoRoom {
                child,
                reason,
                plain,
            } => {
                if let Some(e) = self.execs.get_mut(slot)
                    && let Some(c) = e
                        .tasks
                        .get_mut(ti)
                        .and_then(|t| t.children.get_mut(child.child as usize))
                    && c.waiting_reason != reason
                {
                    c.waiting_reason = reason;
                    // Watchers show why children wait ([`super::view`]).
                    e.touched = true;
                }
                if plain { Next::Full } else { Next::Wait }
            }
        }
    }

    /// Takes the child the dispatcher chose off the front of its task's queue.
    fn take_from_queue(&mut self, cref: ChildRef) {
        if let Some(run) = self
            .execs
            .get_mut(cref.exec)
            .and_then(|e| e.tasks.get_mut(cref.task as usize))
        {
            let front = run.take_next_queued();
            debug_assert_eq!(
                front,
                Some(cref.child),
                "the dispatcher chose the queue's front"
            );
        }
    }

    /// The next child of the task is a sub-execution that waits for room
    /// (admission) and there is still none: the task waits.
    fn nested_waits_for_room(&mut self, slot: u64, ti: usize) -> bool {
        if self.parked_nested.is_empty() {
            return false;
        }
        let Some(ci) = self.execs.get(slot).and_then(|e| e.tasks[ti].next_queued()) else {
            return false;
        };
        let cref = ChildRef {
            exec: slot,
            task: ti as u16,
            child: ci,
        };
        match self.parked_nested.get(&cref) {
            Some(&adding) => matches!(self.room_for(adding), super::admission::Room::Wait(_)),
            None => false,
        }
    }

    /// The parameters of a child: a foreach's templates bound to its item and
    /// the outputs so far; those rendered when a single-child task started.
    pub(crate) fn child_parameters(
        &self,
        cref: ChildRef,
    ) -> Result<BTreeMap<String, String>, String> {
        let e = self.execs.get(cref.exec).ok_or("execution gone")?;
        let planned = &e.plan.tasks[cref.task as usize];
        let run = &e.tasks[cref.task as usize];
        let c = &run.children[cref.child as usize];
        Ok(match &planned.work {
            Work::Foreach { fe, .. } => {
                let scope = Scope {
                    params: &e.plan.params,
                    item: Some(&c.rec.item),
                    outputs: e.engine.outputs(),
                    states: e.engine.state_names(),
                };
                child_params(fe, &scope).map_err(|err| err.to_string())?
            }
            _ => run.params.clone(),
        })
    }

    /// The StartJob spec of a child's current attempt (same dispatch id on every resend).
    fn start_spec(&self, cref: ChildRef) -> Result<DispatchSpec, String> {
        let e = self.execs.get(cref.exec).ok_or("execution gone")?;
        let run = &e.tasks[cref.task as usize];
        let c = &run.children[cref.child as usize];
        let package = run
            .package
            .as_ref()
            .ok_or("the task has not started (no package)")?;
        let params = self
            .child_parameters(cref)
            .map_err(|err| format!("cannot bind child parameters: {err}"))?;
        Ok(DispatchSpec {
            dispatch_id: c.dispatch_id(&e.rec.id),
            package: PackageRef {
                name: package.name.clone(),
                content_hash: package.hash.clone(),
                // Catalog packages go by hash: the agent fetches and caches them.
                content: if package.inline {
                    package.content.clone()
                } else {
                    Arc::from([])
                },
            },
            parameters: params,
            coordinator_epoch: self.epoch,
            deadline_ms: e.plan.tasks[cref.task as usize]
                .timeout_s
                .map_or(0, |s| s.saturating_mul(1000)),
            // The attempt's span (an id derived from the execution's), which
            // the agent's span of the job joins.
            traceparent: e.rec.trace.as_ref().map_or_else(String::new, |t| {
                t.span().map_or_else(String::new, |s| {
                    s.attempt(cref.task, cref.child, c.state().attempt())
                        .traceparent()
                })
            }),
            tracestate: e
                .rec
                .trace
                .as_ref()
                .map_or_else(String::new, |t| t.tracestate.clone()),
            folder: e.rec.folder().to_string(),
        })
    }

    fn dispatch_to(&mut self, cref: ChildRef, target: Target, now: Instant) {
        let agent = match target {
            Target::Agent(agent) => agent,
            Target::SubExecution => {
                self.start_nested(cref);
                return;
            }
        };
        let spec = match self.start_spec(cref) {
            Ok(r) => r,
            Err(reason) => {
                if let Some(c) = self.child_mut(cref) {
                    c.rec.reason = reason;
                }
                self.set_state(cref, Step::End(End::Failed));
                self.advance(cref.exec);
                return;
            }
        };
        let Some(c) = self.child_mut(cref) else {
            return;
        };
        if c.rec.attempt_agents.len() < c.rec.attempt as usize {
            c.rec.attempt_agents.push(agent.as_str().into());
        } else if let Some(last) = c.rec.attempt_agents.last_mut() {
            *last = agent.as_str().into();
        }
        c.waiting_reason.clear();
        c.dispatched_at = Some(now);
        let attempt = c.state().attempt();
        if !self.set_state(cref, Step::Dispatch(AgentId::new(agent.as_str()))) {
            return;
        }
        let address = self
            .registry
            .get(&agent)
            .map(|a| a.rec.address.clone())
            .unwrap_or_default();
        self.stats.dispatches += 1;
        self.journal.effect(Effect::Dispatch {
            agent,
            address,
            child: cref,
            attempt,
            spec: Box::new(spec),
        });
    }

    /// Sends a dispatch again after an unknown outcome (same dispatch id).
    pub(crate) fn resend_dispatch(&mut self, cref: ChildRef, now: Instant) {
        let Some((agent, address)) = self.dispatch_target(cref) else {
            return;
        };
        if self.cancelling(cref) {
            // Never start what was cancelled: stop it in case it did start.
            self.request_stop(cref);
            self.set_state(cref, Step::End(End::Cancelled));
            self.advance(cref.exec);
            return;
        }
        if !self.registry.get(&agent).is_some_and(|a| a.seen) {
            // Not heard from since our restart: wait for it (or for its lease to expire).
            self.timers
                .resend_at(now + self.config.dispatch_retry, cref);
            return;
        }
        let Ok(spec) = self.start_spec(cref) else {
            // Its task has not been started again yet (a restart replays the
            // engine; a rows foreach waits for its rows): ask again later.
            self.timers
                .resend_at(now + self.config.dispatch_retry, cref);
            return;
        };
        let attempt = spec.dispatch_id.attempt;
        self.journal.effect(Effect::Dispatch {
            agent,
            address,
            child: cref,
            attempt,
            spec: Box::new(spec),
        });
    }

    /// The answer (or silence) of an agent to a StartJob.
    pub fn dispatch_result(
        &mut self,
        cref: ChildRef,
        agent: &str,
        attempt: u32,
        outcome: DispatchOutcome,
        now: Now,
    ) {
        let now = self.at(now);
        let current = self.child(cref).is_some_and(|c| {
            matches!(c.state(), ChildState::Dispatching { agent: a, attempt: n }
                if a.as_str() == agent && *n == attempt)
        });
        if !current {
            return; // already reported, lost, or re-dispatched: nothing to do
        }
        if self.cancelling(cref) {
            match outcome {
                // It started after the cancel was sent (or the cancel overtook it): stop it again.
                DispatchOutcome::Accepted => {
                    self.set_state(cref, Step::Accept);
                    self.request_stop(cref);
                }
                // Nothing runs, or if it does, the CancelJob already sent ends it
                // and its report will be stale.
                DispatchOutcome::Rejected { .. }
                | DispatchOutcome::Unknown(_)
                | DispatchOutcome::WrongAgent(_) => {
                    if let Some(c) = self.child_mut(cref) {
                        c.rec.reason = "cancelled while the child was being dispatched".to_string();
                    }
                    self.set_state(cref, Step::End(End::Cancelled));
                    self.advance(cref.exec);
                }
            }
            return;
        }
        match outcome {
            DispatchOutcome::Accepted => self.set_state_unsaved(cref, Step::Accept),
            DispatchOutcome::Unknown(err) => {
                self.stats.dispatches_unanswered += 1;
                debug!(agent, %err, "dispatch outcome unknown; will ask again");
                // Shown while it waits in `dispatching` (not stored).
                if let Some(c) = self.child_mut(cref) {
                    c.waiting_reason = format!("no answer from {agent} yet, asking again: {err}");
                }
                self.timers
                    .resend_at(now + self.config.dispatch_retry, cref);
            }
            DispatchOutcome::WrongAgent(err) => {
                let address = self
                    .registry
                    .get(agent)
                    .map(|a| a.rec.address.clone())
                    .unwrap_or_default();
                warn!(agent, %address, error = %err, "an agent's registered address is served by another agent; it gets no jobs there");
                self.stats.rejections += 1;
                self.stats.rejections_by_reason[crate::metrics::WRONG_AGENT] += 1;
                let Some(c) = self.child_mut(cref) else {
                    return;
                };
                // Refused for good by that agent: the next one is tried, and
                // if none is left (a pin) the child fails with this reason.
                c.rec.reason = format!(
                    "{agent}'s registered address {address} is served by another agent \
                     (its certificate is not {agent}'s): {err}"
                );
                c.detours_mut().hard_rejected.insert(agent.to_string());
                self.requeue(cref, true, Step::Requeue);
            }
            DispatchOutcome::Rejected { code, reason } => {
                self.stats.rejections += 1;
                self.stats.rejections_by_reason
                    [crate::metrics::reject_reason_index(code as i32)] += 1;
                use RejectCode as R;
                if let Some(a) = self.registry.get_mut(agent) {
                    match code {
                        R::AtCapacity => self
                            .dispatcher
                            .agent_full(agent, now + self.config.full_backoff),
                        R::Draining => a.draining = true,
                        _ => {}
                    }
                }
                if code == R::StaleEpoch {
                    // Another coordinator led after this one: this term is
                    // over. Nothing changes here (its state is dropped and
                    // the next term reloads the store); the loop stops.
                    warn!(
                        agent,
                        epoch = self.epoch,
                        "agent has seen a later coordinator epoch; this term is over"
                    );
                    self.deposed = Some(format!(
                        "agent {agent} refused a dispatch of epoch {} as STALE_EPOCH: {reason}",
                        self.epoch
                    ));
                    return;
                }
                let generation = self.dispatcher.generation();
                let Some(c) = self.child_mut(cref) else {
                    return;
                };
                c.rec.reason = format!("{agent} rejected ({}): {reason}", code.as_str_name());
                match code {
                    R::AtCapacity | R::Draining | R::StaleEpoch => {
                        // Excluded until capacity changes again (a new generation).
                        let d = c.detours_mut();
                        if d.excluded_gen != generation {
                            d.soft_excluded.clear();
                            d.excluded_gen = generation;
                        }
                        d.soft_excluded.insert(agent.to_string());
                        self.requeue(cref, true, Step::Requeue);
                    }
                    R::UnknownPackage | R::Unauthorized | R::RunAsDenied => {
                        c.detours_mut().hard_rejected.insert(agent.to_string());
                        self.requeue(cref, true, Step::Requeue);
                    }
                    R::InvalidRequest | R::Unspecified => {
                        self.set_state(cref, Step::End(End::Failed));
                        self.advance(cref.exec);
                    }
                }
            }
        }
    }
}
