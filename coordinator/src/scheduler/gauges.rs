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
