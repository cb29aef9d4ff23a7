//! What the scheduler holds now, for the metrics endpoint: children of
//! running executions by phase, agents by state with their slots, the epoch.
//! Read by the scheduler task when asked for a metrics snapshot (about once
//! a second by `crate::prometheus`), in time linear in executions and agents,
//! never in children (each execution keeps its counts by phase).

use super::agents::AgentState;
use super::state::Scheduler;
use crate::metrics::Gauges;

/// Every agent state, in the order the metrics list them.
const STATES: [AgentState; 8] = [
    AgentState::Ready,
    AgentState::Unknown,
    AgentState::Quarantined,
    AgentState::Cordoned,
    AgentState::Draining,
    AgentState::Drained,
    AgentState::Lost,
    AgentState::Revoked,
];

impl Scheduler {
    /// The scheduler's gauges (see the module doc).
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            epoch: self.epoch,
            ..Gauges::default()
        };
        for (_, e) in self.execs.iter() {
            g.executions_running += 1;
            for (sum, n) in g.children.iter_mut().zip(e.phase_counts.iter()) {
                *sum += n;
            }
        }
        g.agents = STATES.iter().map(|s| (s.as_str(), 0, 0, 0)).collect();
        for a in self.agent_list() {
            if let Some(row) = g.agents.iter_mut().find(|r| r.0 == a.state.as_str()) {
                row.1 += 1;
                row.2 += u64::from(a.rec.slots);
                row.3 += u64::from(a.running);
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::{JobStatus, RejectCode};

    use super::super::tests::{finished, reg, sched, settle, start};
    use crate::clock::Now;
    use crate::metrics::{PHASES, REJECT_REASONS};
    use crate::scheduler::DispatchOutcome;

    fn phase(g: &crate::metrics::Gauges, name: &str) -> u64 {
        let i = PHASES.iter().position(|p| *p == name).unwrap();
        g.children[i]
    }

    #[test]
    fn children_by_phase_agents_by_state_and_counters_follow_the_children() {
        let t0 = Now::read();
        let mut s = sched();
        reg(&mut s, "a", 4, "b1", t0);
        start(&mut s, 3);
        let d = settle(&mut s, t0);
        assert_eq!(d.len(), 3);
        let g = s.gauges();
        assert_eq!(g.executions_running, 1);
        assert_eq!(phase(&g, "dispatching"), 3);
        let (agent, child, attempt, id) = &d[0];
        s.dispatch_result(*child, agent, *attempt, DispatchOutcome::Accepted, t0);
        s.dispatch_result(d[1].1, &d[1].0, d[1].2, DispatchOutcome::Accepted, t0);
        s.agent_event(agent, finished(1, id, JobStatus::Succeeded), t0);
        s.dispatch_result(
            d[2].1,
            &d[2].0,
            d[2].2,
            DispatchOutcome::Rejected {
                code: RejectCode::AtCapacity,
                reason: "full".into(),
            },
            t0,
        );
        let g = s.gauges();
        assert_eq!(phase(&g, "succeeded"), 1);
        assert_eq!(phase(&g, "accepted"), 1);
        assert_eq!(phase(&g, "pending"), 1);
        assert_eq!(g.children.iter().sum::<u64>(), 3);
        let ready = g.agents.iter().find(|r| r.0 == "ready").unwrap();
        assert_eq!((ready.1, ready.2, ready.3), (1, 4, 1), "{:?}", g.agents);
        assert_eq!(g.agents.len(), 8);
        assert_eq!(s.stats.children_ended[4], 1);
        let at_capacity = REJECT_REASONS
            .iter()
            .position(|r| *r == "at_capacity")
            .unwrap();
        assert_eq!(s.stats.rejections_by_reason[at_capacity], 1);
    }
}
