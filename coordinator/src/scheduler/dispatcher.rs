//! The dispatcher's own state, and its choice of where a task's next child
//! goes. What the pump keeps between calls lives here with private fields:
//! the order executions take their turn in, the capacity generation (bumped
//! whenever room may have appeared, which ends a child's soft exclusions),
//! the agents that answered "at capacity" with how long they get nothing
//! new, and placement's memory per task (round-robin cursor, spread
//! counts).
//!
//! [`Dispatcher::choose`] only decides: it reads the execution and returns a
//! [`Choice`]; the scheduler applies it (takes the child off its queue, moves
//! it by its one transition, notes the dispatch in the journal). The
//! dispatcher's timers are their own part (`timers.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use super::exec::Exec;
use super::model::ChildRef;
use crate::placement::{AgentView, Placement, PlacementRequest, Strategy, could_take, place};

/// What placement remembers per task between children: the round-robin
/// cursor and, for spread, how many children went to each label value.
#[derive(Debug, Default)]
struct PlaceMemory {
    cursor: Option<String>,
    spread: BTreeMap<String, u64>,
}

/// Where a task's next child goes, decided by [`Dispatcher::choose`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Send the child to this agent.
    Agent(ChildRef, String),
    /// The coordinator runs the child as a sub-execution (nested fan-out).
    SubExecution(ChildRef),
    /// Every agent that could take the child has refused it for good: it fails.
    RefusedByAll(ChildRef),
    /// No agent has room for the child now (`reason` says why); `plain`: it
    /// has no placement history, so it stands for its siblings of the same kind.
    NoRoom {
        child: ChildRef,
        reason: String,
        plain: bool,
    },
    /// Nothing to send from this task now (its execution's state or caps).
    Wait,
}

/// The dispatcher's state between pumps (in memory only).
#[derive(Debug, Default)]
pub(crate) struct Dispatcher {
    /// The order in which executions take their turn in the pump (rotated
    /// by one at each pump, new executions last).
    turns: VecDeque<u64>,
    /// Bumped whenever capacity may have appeared; clears soft exclusions.
    generation: u64,
    /// Agents that answered "at capacity", and until when they get no new
    /// dispatch (cut short by any event that frees a slot).
    full_until: HashMap<String, Instant>,
    /// Per task (execution slot, task index).
    /// Per execution slot, per task: forgotten with the execution in one step,
    /// whatever the number of executions and tasks in memory.
    memory: HashMap<u64, HashMap<u16, PlaceMemory>>,
}

impl Dispatcher {
    /// A new execution takes its turn last.
    pub(crate) fn add_execution(&mut self, slot: u64) {
        self.turns.push_back(slot);
    }

    /// Forgets an execution that left memory.
    pub(crate) fn forget_execution(&mut self, slot: u64) {
        self.turns.retain(|s| *s != slot);
        self.memory.remove(&slot);
    }

    /// The executions in the order they take their turn in this pump; the
    /// next pump starts one further (so that each is first in turn).
    pub(crate) fn take_turns(&mut self) -> Vec<u64> {
        let order = self.turns.iter().copied().collect();
        self.turns.rotate_left(usize::from(!self.turns.is_empty()));
        order
    }

    /// Room may have appeared (a child ended, an agent came, a state changed).
    pub(crate) fn capacity_changed(&mut self) {
        self.generation += 1;
    }

    /// The current capacity generation (a soft exclusion holds within one).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// `agent` answered "at capacity": no new dispatch until `until`.
    pub(crate) fn agent_full(&mut self, agent: &str, until: Instant) {
        self.full_until.insert(agent.to_string(), until);
    }

    /// `agent` has room again; returns whether it was marked full.
    pub(crate) fn agent_not_full(&mut self, agent: &str) -> bool {
        self.full_until.remove(agent).is_some()
    }

    /// Whether `agent` answered "at capacity" too recently to be sent more.
    pub(crate) fn is_full(&self, agent: &str, now: Instant) -> bool {
        self.full_until.get(agent).is_some_and(|&t| now < t)
    }

    /// Forgets an agent that was removed.
    pub(crate) fn forget_agent(&mut self, agent: &str) {
        self.full_until.remove(agent);
    }

    /// Where the next child of task `ti` of execution `e` (in `slot`) goes,
    /// given the fleet as placement sees it (`views`), the coordinator's
    /// default strategy, and which agents' certificates are revoked (they
    /// never come back, so their refusal does not count). Changes only the
    /// task's placement memory, when it chooses an agent.
    pub(crate) fn choose(
        &mut self,
        e: &Exec,
        slot: u64,
        ti: usize,
        views: &[AgentView],
        default_strategy: &Strategy,
        revoked: impl Fn(&str) -> bool,
    ) -> Choice {
        if e.rec.state.is_terminal() || e.rec.cancel_requested || e.at_in_flight_cap() {
            return Choice::Wait;
        }
        let planned = &e.plan.tasks[ti];
        let task = &e.tasks[ti];
        if task.in_flight >= planned.parallelism {
            return Choice::Wait;
        }
        let Some(ci) = task.next_queued() else {
            return Choice::Wait;
        };
        let child = ChildRef {
            exec: slot,
            task: ti as u16,
            child: ci,
        };
        if task.package.as_ref().is_some_and(|p| p.fans_out) {
            // Nested fan-out: the coordinator runs it, no agent needed.
            return Choice::SubExecution(child);
        }
        let policy = &e.rec.placement;
        let strategy = policy.strategy.as_ref().unwrap_or(default_strategy);
        let merged;
        let require = if planned.require.is_empty() {
            &policy.require
        } else {
            let mut m = policy.require.clone();
            m.extend(planned.require.clone());
            merged = m;
            &merged
        };
        let detours = task.children[ci as usize].detours.as_deref();
        let mut exclude = BTreeSet::new();
        if let Some(d) = detours {
            // Soft exclusions of an older generation no longer hold (the
            // next refusal clears them, `Scheduler::dispatch_result`).
            if d.excluded_gen == self.generation {
                exclude.extend(d.soft_excluded.iter().cloned());
            }
            exclude.extend(d.hard_rejected.iter().cloned());
        }
        let memory = self
            .memory
            .entry(slot)
            .or_default()
            .entry(ti as u16)
            .or_default();
        let req = PlacementRequest {
            avoid: detours.and_then(|d| d.avoid.as_deref()),
            exclude: Some(&exclude),
            strategy,
            require,
            pin: &policy.pin,
            slots: e.slots_of(ti),
            cursor: memory.cursor.as_deref(),
            spread_counts: Some(&memory.spread),
        };
        match place(views, &req) {
            Placement::Agent(agent) => {
                if let Strategy::Spread(label) = strategy {
                    let value = views
                        .iter()
                        .find(|v| v.name == agent)
                        .and_then(|v| v.labels.get(label))
                        .cloned()
                        .unwrap_or_default();
                    *memory.spread.entry(value).or_default() += 1;
                }
                memory.cursor = Some(agent.clone());
                Choice::Agent(child, agent)
            }
            Placement::NoCapacity(reason) => {
                // Agents that refused it for good (package, authorisation,
                // run-as) will not change their mind: once every registered
                // agent that could take it (its labels, pin and slots) has,
                // ready now or not (one restarting or cordoned may come back
                // and take it), it fails with their reasons instead of waiting
                // for ever. Agents its constraints rule out, and agents whose
                // certificate was revoked (they never come back), do not count;
                // with none left that could take it, it waits.
                let refused_by_all = detours.is_some_and(|d| {
                    let mut candidates = views
                        .iter()
                        .filter(|v| could_take(v, &req))
                        .filter(|v| !revoked(&v.name))
                        .peekable();
                    candidates.peek().is_some()
                        && candidates.all(|v| d.hard_rejected.contains(&v.name))
                });
                if refused_by_all {
                    Choice::RefusedByAll(child)
                } else {
                    Choice::NoRoom {
                        child,
                        reason,
                        plain: detours.is_none(),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn turns_rotate_and_new_executions_come_last() {
        let mut d = Dispatcher::default();
        assert!(d.take_turns().is_empty());
        for slot in [1, 2, 3] {
            d.add_execution(slot);
        }
        assert_eq!(d.take_turns(), [1, 2, 3]);
        assert_eq!(d.take_turns(), [2, 3, 1]);
        d.add_execution(4);
        assert_eq!(d.take_turns(), [3, 1, 2, 4]);
        d.forget_execution(2);
        assert_eq!(d.take_turns(), [1, 4, 3]);
    }

    #[test]
    fn an_agent_at_capacity_is_full_until_its_backoff_ends_or_it_has_room() {
        let t0 = Instant::now();
        let mut d = Dispatcher::default();
        d.agent_full("a", t0 + Duration::from_secs(1));
        assert!(d.is_full("a", t0));
        assert!(!d.is_full("a", t0 + Duration::from_secs(1)));
        assert!(!d.is_full("b", t0));
        assert!(d.agent_not_full("a"));
        assert!(!d.agent_not_full("a"), "marked once");
        assert!(!d.is_full("a", t0));
        d.agent_full("b", t0 + Duration::from_secs(1));
        d.forget_agent("b");
        assert!(!d.is_full("b", t0));
    }
}
