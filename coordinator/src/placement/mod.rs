//! Placement: which agent gets a child job. A pure function; see `README.md` beside
//! this file for the problem statement and the properties it guarantees.

use std::collections::BTreeSet;

/// What placement needs to know about one agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    pub name: String,
    pub slots: u32,
    /// Jobs the coordinator has dispatched to the agent and not seen finish.
    pub in_flight: u32,
    pub load1: f64,
    /// Registered, alive, not draining, not known to be full.
    pub ready: bool,
}

/// One child job to place.
#[derive(Debug, Clone, Default)]
pub struct PlacementRequest<'a> {
    /// The agent the previous attempt failed or was lost on (soft avoidance).
    pub avoid: Option<&'a str>,
    /// Agents that rejected this job in the current dispatch round (hard exclusion).
    pub exclude: Option<&'a BTreeSet<String>>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Agent(String),
    NoCapacity(String),
}

/// Least-loaded score; field order is priority order, smaller is better.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Score<'a> {
    avoided: bool,
    used_permille: u64,
    load_milli: u64,
    name: &'a str,
}

/// Chooses an agent for one job (least-loaded strategy).
pub fn place(agents: &[AgentView], req: &PlacementRequest<'_>) -> Placement {
    let best = agents
        .iter()
        .filter(|a| a.ready && a.in_flight < a.slots)
        .filter(|a| req.exclude.is_none_or(|ex| !ex.contains(&a.name)))
        .map(|a| Score {
            avoided: req.avoid == Some(a.name.as_str()),
            used_permille: u64::from(a.in_flight) * 1000 / u64::from(a.slots.max(1)),
            load_milli: if a.load1.is_finite() && a.load1 > 0.0 {
                (a.load1 * 1000.0) as u64
            } else {
                0
            },
            name: &a.name,
        })
        .min();
    match best {
        Some(score) => Placement::Agent(score.name.to_string()),
        None => Placement::NoCapacity(no_capacity_reason(agents, req)),
    }
}

fn no_capacity_reason(agents: &[AgentView], req: &PlacementRequest<'_>) -> String {
    if agents.is_empty() {
        return "waiting for capacity: no agent registered".to_string();
    }
    let ready = agents.iter().filter(|a| a.ready).count();
    if ready == 0 {
        return format!(
            "waiting for capacity: none of {} agents is ready",
            agents.len()
        );
    }
    let excluded = req.exclude.map_or(0, BTreeSet::len);
    let (busy, slots): (u32, u32) = agents.iter().filter(|a| a.ready).fold((0, 0), |(b, s), a| {
        (b + a.in_flight.min(a.slots), s + a.slots)
    });
    if excluded > 0 {
        format!(
            "waiting for capacity: {busy} of {slots} slots busy, {excluded} agents refused this job"
        )
    } else {
        format!("waiting for capacity: {busy} of {slots} slots busy on {ready} ready agents")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agent(name: &str, slots: u32, in_flight: u32) -> AgentView {
        AgentView {
            name: name.into(),
            slots,
            in_flight,
            load1: 0.0,
            ready: true,
        }
    }

    #[test]
    fn picks_least_used_then_load_then_name() {
        let mut a = agent("a", 4, 2);
        let b = agent("b", 8, 2);
        assert_eq!(
            place(&[a.clone(), b.clone()], &Default::default()),
            Placement::Agent("b".into())
        );
        a.in_flight = 1; // 25 % vs 25 %: equal use, equal load → name
        assert_eq!(
            place(&[b.clone(), a.clone()], &Default::default()),
            Placement::Agent("a".into())
        );
        a.load1 = 3.0;
        assert_eq!(
            place(&[a, b], &Default::default()),
            Placement::Agent("b".into())
        );
    }

    #[test]
    fn avoidance_is_soft_and_exclusion_is_hard() {
        let agents = [agent("a", 2, 0), agent("b", 2, 1)];
        let req = PlacementRequest {
            avoid: Some("a"),
            exclude: None,
        };
        assert_eq!(place(&agents, &req), Placement::Agent("b".into()));
        let only = [agent("a", 2, 0)];
        assert_eq!(place(&only, &req), Placement::Agent("a".into()));
        let ex: BTreeSet<String> = ["a".to_string()].into();
        let req = PlacementRequest {
            avoid: None,
            exclude: Some(&ex),
        };
        assert!(matches!(place(&only, &req), Placement::NoCapacity(r) if r.contains("refused")));
    }

    #[test]
    fn reasons_name_the_situation() {
        assert!(
            matches!(place(&[], &Default::default()), Placement::NoCapacity(r) if r.contains("no agent"))
        );
        let full = [agent("a", 2, 2)];
        assert!(
            matches!(place(&full, &Default::default()), Placement::NoCapacity(r) if r.contains("2 of 2 slots busy"))
        );
    }

    fn arb_agents() -> impl Strategy<Value = Vec<AgentView>> {
        prop::collection::vec((1u32..8, 0u32..10, 0u32..400, any::<bool>()), 0..8).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (slots, used, load, ready))| AgentView {
                    name: format!("agent-{i}"),
                    slots,
                    in_flight: used.min(slots + 1),
                    load1: f64::from(load) / 100.0,
                    ready,
                })
                .collect()
        })
    }

    proptest! {
        /// Capacity and completeness: placing until NoCapacity never overfills an agent,
        /// and stops only when every ready agent is full.
        #[test]
        fn capacity_and_completeness(mut agents in arb_agents()) {
            let initial: Vec<u32> = agents.iter().map(|a| a.in_flight).collect();
            for _ in 0..200 {
                match place(&agents, &Default::default()) {
                    Placement::Agent(name) => {
                        let a = agents.iter_mut().find(|a| a.name == name).unwrap();
                        prop_assert!(a.ready);
                        prop_assert!(a.in_flight < a.slots, "placed on a full agent");
                        a.in_flight += 1;
                    }
                    Placement::NoCapacity(reason) => {
                        prop_assert!(!reason.is_empty());
                        prop_assert!(agents.iter().all(|a| !a.ready || a.in_flight >= a.slots));
                        break;
                    }
                }
            }
            for (a, before) in agents.iter().zip(initial) {
                prop_assert!(a.in_flight <= a.slots.max(before));
            }
        }

        /// Determinism: the answer does not depend on the order of the snapshot.
        #[test]
        fn deterministic_under_permutation(agents in arb_agents(), rot in 0usize..8) {
            let first = place(&agents, &Default::default());
            let mut rotated = agents.clone();
            if !rotated.is_empty() {
                let k = rot % rotated.len();
                rotated.rotate_left(k);
            }
            prop_assert_eq!(first.clone(), place(&rotated, &Default::default()));
            prop_assert_eq!(first, place(&agents, &Default::default()));
        }

        /// Balance: on equal, idle agents, in-flight counts never differ by more than one.
        #[test]
        fn balanced_on_equal_agents(n in 1usize..6, slots in 1u32..10, jobs in 0u32..60) {
            let mut agents: Vec<AgentView> = (0..n).map(|i| agent(&format!("a{i}"), slots, 0)).collect();
            for _ in 0..jobs {
                if let Placement::Agent(name) = place(&agents, &Default::default()) {
                    agents.iter_mut().find(|a| a.name == name).unwrap().in_flight += 1;
                }
            }
            let max = agents.iter().map(|a| a.in_flight).max().unwrap();
            let min = agents.iter().map(|a| a.in_flight).min().unwrap();
            prop_assert!(max - min <= 1);
        }
    }
}
