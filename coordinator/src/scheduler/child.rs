//! One child job in memory, and the one function that changes its state.
//!
//! A child's state is a [`ChildState`]: the variants in which it occupies an
//! agent carry that agent and the attempt, so "running on no agent" cannot be
//! written down, and a child that runs as a sub-execution of the coordinator
//! (nested fan-out) is its own variant instead of a pseudo-agent. States
//! change only through [`ChildState::next`], which refuses every step out of
//! an ended state — in release builds too: the caller counts the refusal and
//! leaves the child as it was.
//!
//! The stored [`ChildRecord`] keeps the state as a phase, an agent name and
//! an attempt number (the format earlier releases wrote). [`Child`] keeps
//! those three fields of its record as the image of its state, rewritten by
//! every transition: the record is what is written to the store and shown,
//! the state is what the scheduler decides on.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Instant;

use crate::domain::{AgentId, DispatchId, ExecutionId};
use crate::records::{ChildRecord, Phase};

/// The agent name a child that runs as a sub-execution has in its stored
/// record (the record format predates [`ChildState::SubExecution`]).
pub const COORDINATOR: &str = "@coordinator";

/// How an ended child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    /// Its agent was lost more often than its retry policy allows.
    Lost,
}

impl End {
    pub fn phase(self) -> Phase {
        match self {
            End::Succeeded => Phase::Succeeded,
            End::Failed => Phase::Failed,
            End::Cancelled => Phase::Cancelled,
            End::TimedOut => Phase::TimedOut,
            End::Lost => Phase::Lost,
        }
    }
}

/// Where a child is: what the coordinator wants of it and what it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildState {
    /// Waits for an agent (in its task's queue, or for a retry's backoff).
    Pending { attempt: u32 },
    /// Sent to `agent`; whether it took the job is not known yet.
    Dispatching { agent: AgentId, attempt: u32 },
    /// `agent` took the job; it has not reported it started.
    Accepted { agent: AgentId, attempt: u32 },
    /// Runs on `agent`.
    Running { agent: AgentId, attempt: u32 },
    /// Runs as a sub-execution of the coordinator (its package fans out).
    SubExecution { attempt: u32 },
    /// Ended: never left.
    Ended { end: End, attempt: u32 },
}

/// What happens to a child: the input of [`ChildState::next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A pending child is sent to an agent.
    Dispatch(AgentId),
    /// A pending child starts as a sub-execution.
    RunHere,
    /// Its agent answered that it took the job.
    Accept,
    /// Its agent reported that it started.
    Start,
    /// Back to the queue under the same attempt (an agent refused it).
    Requeue,
    /// Back to pending under the next attempt (it failed or its agent was lost).
    Retry,
    /// It ended.
    End(End),
}

/// A step [`ChildState::next`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The child has ended: an ended child never changes again.
    Ended { end: End, step: Step },
    /// The step makes no sense from this state (a bug if it ever happens).
    Invalid { from: Phase, step: Step },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Ended { end, step } => {
                write!(
                    f,
                    "{step:?} refused: the child ended {}",
                    end.phase().as_str()
                )
            }
            Refused::Invalid { from, step } => {
                write!(f, "{step:?} refused in phase {}", from.as_str())
            }
        }
    }
}

impl ChildState {
    /// The state a stored record says, with the record's agent.
    pub fn from_record(rec: &ChildRecord) -> ChildState {
        let attempt = rec.attempt;
        let here = rec.agent.as_deref() == Some(COORDINATOR);
        let on = |make: fn(AgentId, u32) -> ChildState| match rec.agent.as_deref() {
            Some(COORDINATOR) => ChildState::SubExecution { attempt },
            Some(agent) if !agent.is_empty() => make(AgentId::new(agent), attempt),
            // A record on an agent that names none (never written by this
            // coordinator): nobody runs it, so it waits to be placed again.
            _ => ChildState::Pending { attempt },
        };
        match rec.phase {
            Phase::Pending => ChildState::Pending { attempt },
            Phase::Dispatching => on(|agent, attempt| ChildState::Dispatching { agent, attempt }),
            Phase::Accepted => on(|agent, attempt| ChildState::Accepted { agent, attempt }),
            Phase::Running if here => ChildState::SubExecution { attempt },
            Phase::Running => on(|agent, attempt| ChildState::Running { agent, attempt }),
            Phase::Succeeded => ChildState::ended(End::Succeeded, attempt),
            Phase::Failed => ChildState::ended(End::Failed, attempt),
            Phase::Cancelled => ChildState::ended(End::Cancelled, attempt),
            Phase::TimedOut => ChildState::ended(End::TimedOut, attempt),
            Phase::Lost => ChildState::ended(End::Lost, attempt),
        }
    }

    fn ended(end: End, attempt: u32) -> ChildState {
        ChildState::Ended { end, attempt }
    }

    /// The phase it is stored and shown as.
    pub fn phase(&self) -> Phase {
        match self {
            ChildState::Pending { .. } => Phase::Pending,
            ChildState::Dispatching { .. } => Phase::Dispatching,
            ChildState::Accepted { .. } => Phase::Accepted,
            ChildState::Running { .. } | ChildState::SubExecution { .. } => Phase::Running,
            ChildState::Ended { end, .. } => end.phase(),
        }
    }

    /// The current attempt (for a pending child, the one it will run as).
    pub fn attempt(&self) -> u32 {
        match self {
            ChildState::Pending { attempt }
            | ChildState::Dispatching { attempt, .. }
            | ChildState::Accepted { attempt, .. }
            | ChildState::Running { attempt, .. }
            | ChildState::SubExecution { attempt }
            | ChildState::Ended { attempt, .. } => *attempt,
        }
    }

    /// The agent it occupies, if it is on one.
    pub fn agent(&self) -> Option<&AgentId> {
        match self {
            ChildState::Dispatching { agent, .. }
            | ChildState::Accepted { agent, .. }
            | ChildState::Running { agent, .. } => Some(agent),
            _ => None,
        }
    }

    /// On an agent or running as a sub-execution: something runs (or may).
    pub fn is_active(&self) -> bool {
        !matches!(self, ChildState::Pending { .. } | ChildState::Ended { .. })
    }

    pub fn is_ended(&self) -> bool {
        matches!(self, ChildState::Ended { .. })
    }

    /// The state after `step`, or why the step is refused. An ended state
    /// refuses every step.
    pub fn next(&self, step: Step) -> Result<ChildState, Refused> {
        use ChildState as S;
        let attempt = self.attempt();
        let invalid = |step| {
            Err(Refused::Invalid {
                from: self.phase(),
                step,
            })
        };
        match (self, step) {
            (S::Ended { end, .. }, step) => Err(Refused::Ended { end: *end, step }),
            (_, Step::End(end)) => Ok(S::Ended { end, attempt }),
            (S::Pending { .. }, Step::Dispatch(agent)) => Ok(S::Dispatching { agent, attempt }),
            (S::Pending { .. }, Step::RunHere) => Ok(S::SubExecution { attempt }),
            (S::Dispatching { agent, .. }, Step::Accept) => Ok(S::Accepted {
                agent: agent.clone(),
                attempt,
            }),
            (
                S::Dispatching { agent, .. } | S::Accepted { agent, .. } | S::Running { agent, .. },
                Step::Start,
            ) => Ok(S::Running {
                agent: agent.clone(),
                attempt,
            }),
            (S::Dispatching { .. } | S::Accepted { .. } | S::Running { .. }, Step::Requeue) => {
                Ok(S::Pending { attempt })
            }
            (
                S::Dispatching { .. }
                | S::Accepted { .. }
                | S::Running { .. }
                | S::SubExecution { .. },
                Step::Retry,
            ) => Ok(S::Pending {
                attempt: attempt.saturating_add(1),
            }),
            (_, step) => invalid(step),
        }
    }
}

/// A child job in memory.
pub(crate) struct Child {
    state: ChildState,
    /// Its record: what is stored and shown. Its `phase`, `agent` and
    /// `attempt` are the image of `state`, written by [`Child::step`] only
    /// (the agent stays that of the last attempt once the child leaves it).
    pub rec: ChildRecord,
    pub version: Option<crate::store::Revision>,
    /// Where it should or must not go, once an attempt failed or an agent
    /// refused it; `None` for most children (a million of them are in memory).
    pub detours: Option<Box<Detours>>,
    /// In-memory only: why a pending child waits.
    pub waiting_reason: String,
    /// In-memory only: when the current attempt was last dispatched (for the
    /// completion latency metric; `None` after a restart).
    pub dispatched_at: Option<Instant>,
}

/// A child's placement history (in memory only).
#[derive(Debug, Default)]
pub(crate) struct Detours {
    /// Agent of the previous failed or lost attempt (placement avoids it).
    pub avoid: Option<String>,
    /// Agents that refused this child for lack of room; cleared when capacity changes.
    pub soft_excluded: BTreeSet<String>,
    pub excluded_gen: u64,
    /// Agents that refused this child for good (package, authorisation).
    pub hard_rejected: BTreeSet<String>,
}

impl Child {
    /// A child as its record says (a new one, or one read from the store).
    pub(crate) fn new(mut rec: ChildRecord) -> Child {
        let state = ChildState::from_record(&rec);
        stamp(&state, &mut rec);
        Child {
            state,
            rec,
            version: None,
            detours: None,
            waiting_reason: String::new(),
            dispatched_at: None,
        }
    }

    pub(crate) fn state(&self) -> &ChildState {
        &self.state
    }

    /// Takes `step`; on success returns the state it left.
    pub(crate) fn step(&mut self, step: Step) -> Result<ChildState, Refused> {
        let next = self.state.next(step)?;
        stamp(&next, &mut self.rec);
        Ok(std::mem::replace(&mut self.state, next))
    }

    /// The id of its current attempt, in execution `execution`.
    pub(crate) fn dispatch_id(&self, execution: &str) -> DispatchId {
        DispatchId {
            execution_id: ExecutionId::new(execution),
            task_path: self.rec.task.to_string(),
            item_index: self.rec.index,
            attempt: self.state.attempt(),
        }
    }

    /// Its placement history, made on first use.
    pub(crate) fn detours_mut(&mut self) -> &mut Detours {
        self.detours.get_or_insert_with(Default::default)
    }
}

/// Writes a state's image into a record: its phase and attempt, and the
/// agent it occupies (kept, once it leaves, as the agent of its last attempt).
fn stamp(state: &ChildState, rec: &mut ChildRecord) {
    rec.phase = state.phase();
    rec.attempt = state.attempt();
    match state {
        ChildState::SubExecution { .. } => rec.agent = Some(COORDINATOR.into()),
        s => {
            if let Some(agent) = s.agent()
                && rec.agent.as_deref() != Some(agent.as_str())
            {
                rec.agent = Some(agent.as_str().into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(phase: Phase, agent: Option<&str>) -> ChildRecord {
        ChildRecord {
            phase,
            attempt: 3,
            agent: agent.map(Into::into),
            ..crate::scheduler::flow::new_child(&"fan".into(), 0, "x".into())
        }
    }

    #[test]
    fn a_stored_record_reads_back_as_the_state_it_stands_for() {
        let a1 = || AgentId::new("a1");
        let cases = [
            (Phase::Pending, None, ChildState::Pending { attempt: 3 }),
            (
                Phase::Dispatching,
                Some("a1"),
                ChildState::Dispatching {
                    agent: a1(),
                    attempt: 3,
                },
            ),
            (
                Phase::Running,
                Some("a1"),
                ChildState::Running {
                    agent: a1(),
                    attempt: 3,
                },
            ),
            (
                Phase::Running,
                Some(COORDINATOR),
                ChildState::SubExecution { attempt: 3 },
            ),
            (
                Phase::Lost,
                Some("a1"),
                ChildState::Ended {
                    end: End::Lost,
                    attempt: 3,
                },
            ),
            // On an agent that it does not name: nobody runs it.
            (Phase::Running, None, ChildState::Pending { attempt: 3 }),
        ];
        for (phase, agent, want) in cases {
            let c = Child::new(record(phase, agent));
            assert_eq!(c.state(), &want, "{phase:?} on {agent:?}");
            assert_eq!(c.rec.phase, want.phase(), "the record is the state's image");
        }
    }

    #[test]
    fn the_record_keeps_the_last_agent_once_the_child_leaves_it() {
        let mut c = Child::new(record(Phase::Pending, None));
        c.step(Step::Dispatch(AgentId::new("a1"))).unwrap();
        assert_eq!(c.rec.agent.as_deref(), Some("a1"));
        c.step(Step::Retry).unwrap();
        assert_eq!(c.state(), &ChildState::Pending { attempt: 4 });
        assert_eq!((c.rec.phase, c.rec.attempt), (Phase::Pending, 4));
        assert_eq!(c.rec.agent.as_deref(), Some("a1"));
        c.step(Step::RunHere).unwrap();
        assert_eq!(c.rec.agent.as_deref(), Some(COORDINATOR));
        assert_eq!(c.rec.phase, Phase::Running);
    }

    #[test]
    fn an_ended_child_refuses_every_step() {
        let mut c = Child::new(record(Phase::Succeeded, Some("a1")));
        let before = c.rec.clone();
        for step in [
            Step::Dispatch(AgentId::new("a2")),
            Step::RunHere,
            Step::Accept,
            Step::Start,
            Step::Requeue,
            Step::Retry,
            Step::End(End::Failed),
        ] {
            assert!(
                matches!(
                    c.step(step),
                    Err(Refused::Ended {
                        end: End::Succeeded,
                        ..
                    })
                ),
                "refused in release builds too"
            );
        }
        assert_eq!(c.rec, before, "a refused step changes nothing");
    }

    /// The record's phase, agent and attempt are the state's image: no file
    /// of the scheduler writes them but through a step (`stamp`, here).
    #[test]
    fn only_a_step_writes_a_childs_phase_agent_or_attempt() {
        let files = [
            ("admission.rs", include_str!("admission.rs")),
            ("agents.rs", include_str!("agents.rs")),
            ("cancel.rs", include_str!("cancel.rs")),
            ("dispatch.rs", include_str!("dispatch.rs")),
            ("executions.rs", include_str!("executions.rs")),
            ("flow.rs", include_str!("flow.rs")),
            ("journal.rs", include_str!("journal.rs")),
            ("mod.rs", include_str!("mod.rs")),
            ("nested.rs", include_str!("nested.rs")),
            ("quarantine.rs", include_str!("quarantine.rs")),
            ("registry.rs", include_str!("registry.rs")),
            ("resume.rs", include_str!("resume.rs")),
            ("rows.rs", include_str!("rows.rs")),
            ("timers.rs", include_str!("timers.rs")),
            ("view.rs", include_str!("view.rs")),
        ];
        for (name, text) in files {
            for field in ["rec.phase", "rec.agent", "rec.attempt"] {
                for (at, _) in text.match_indices(field) {
                    let after = text[at + field.len()..].trim_start();
                    let writes = (after.starts_with('=') && !after.starts_with("=="))
                        || after.starts_with("+=");
                    assert!(!writes, "{name} writes `{field}`");
                }
            }
        }
    }

    fn any_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3u8).prop_map(|n| Step::Dispatch(AgentId::new(format!("a{n}")))),
            Just(Step::RunHere),
            Just(Step::Accept),
            Just(Step::Start),
            Just(Step::Requeue),
            Just(Step::Retry),
            prop_oneof![
                Just(End::Succeeded),
                Just(End::Failed),
                Just(End::Cancelled),
                Just(End::TimedOut),
                Just(End::Lost),
            ]
            .prop_map(Step::End),
        ]
    }

    proptest! {
        /// Whatever happens to a child, an ended child stays as it ended,
        /// the attempt never goes back, and the record says the state: a
        /// running phase always with the agent it runs on.
        #[test]
        fn random_steps_never_leave_an_end_nor_run_on_no_agent(
            steps in proptest::collection::vec(any_step(), 1..40)
        ) {
            let mut c = Child::new(record(Phase::Pending, None));
            let mut ended: Option<ChildRecord> = None;
            for step in steps {
                let attempt = c.state().attempt();
                let _ = c.step(step);
                prop_assert!(c.state().attempt() >= attempt);
                if let Some(rec) = &ended {
                    prop_assert_eq!(rec, &c.rec);
                }
                if c.state().is_ended() {
                    ended.get_or_insert_with(|| c.rec.clone());
                }
                prop_assert_eq!(c.rec.phase, c.state().phase());
                prop_assert_eq!(c.rec.attempt, c.state().attempt());
                if c.rec.phase.is_on_agent() {
                    let agent = c.rec.agent.clone().unwrap_or_default();
                    prop_assert!(!agent.is_empty());
                    match c.state() {
                        ChildState::SubExecution { .. } => prop_assert_eq!(agent, COORDINATOR),
                        s => prop_assert_eq!(Some(agent.as_str()), s.agent().map(AgentId::as_str)),
                    }
                }
            }
        }
    }
}
