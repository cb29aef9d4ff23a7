//! Unit and property tests of placement: every property of `README.md`,
//! checked for every strategy.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::Strategy;
use super::*;
use proptest::strategy::Strategy as _;

fn agent(name: &str, slots: u32, in_flight: u32) -> AgentView {
    AgentView {
        name: name.into(),
        slots,
        in_flight,
        load1: 0.0,
        ready: true,
        not_ready: String::new(),
        labels: BTreeMap::new(),
        weight: 1,
    }
}

fn with_label(mut a: AgentView, k: &str, v: &str) -> AgentView {
    a.labels.insert(k.into(), v.into());
    a
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn reason(p: Placement) -> String {
    match p {
        Placement::NoCapacity(r) => r,
        Placement::Agent(a) => panic!("expected no capacity, got {a}"),
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
        ..Default::default()
    };
    assert_eq!(place(&agents, &req), Placement::Agent("b".into()));
    let only = [agent("a", 2, 0)];
    assert_eq!(place(&only, &req), Placement::Agent("a".into()));
    let ex: BTreeSet<String> = ["a".to_string()].into();
    let req = PlacementRequest {
        exclude: Some(&ex),
        ..Default::default()
    };
    assert!(reason(place(&only, &req)).contains("refused"));
}

#[test]
fn reasons_name_the_situation() {
    assert!(reason(place(&[], &Default::default())).contains("no agent"));
    let full = [agent("a", 2, 2)];
    assert!(reason(place(&full, &Default::default())).contains("2 of 2 slots busy"));
    let agents = [
        with_label(agent("a", 1, 1), "zone", "eu"),
        with_label(agent("b", 4, 0), "zone", "us"),
    ];
    let eu = labels(&[("zone", "eu")]);
    let ap = labels(&[("zone", "ap")]);
    let req = |require| PlacementRequest {
        require,
        ..Default::default()
    };
    assert_eq!(
        reason(place(&agents, &req(&ap))),
        "waiting for capacity: no agent has zone=ap"
    );
    assert!(
        reason(place(&agents, &req(&eu))).contains("all agents with zone=eu are busy"),
        "{}",
        reason(place(&agents, &req(&eu)))
    );
    let pin = ["ghost".to_string()];
    let r = reason(place(
        &agents,
        &PlacementRequest {
            pin: &pin,
            ..Default::default()
        },
    ));
    assert!(r.contains("none of the pinned agents (ghost)"), "{r}");
    let big = PlacementRequest {
        slots: 8,
        ..Default::default()
    };
    assert!(reason(place(&agents, &big)).contains("no agent has 8 slots (the largest has 4)"));
    let mut q = with_label(agent("q", 4, 0), "zone", "ap");
    q.ready = false;
    q.not_ready = "quarantined: 5 failures".into();
    let r = reason(place(&[q], &req(&ap)));
    assert!(r.contains("not ready (q: quarantined"), "{r}");
}

#[test]
fn slots_per_child_count_in_slots() {
    let agents = [agent("a", 4, 3), agent("b", 4, 2)];
    let req = PlacementRequest {
        slots: 2,
        ..Default::default()
    };
    assert_eq!(place(&agents, &req), Placement::Agent("b".into()));
    let agents = [agent("a", 4, 3), agent("b", 4, 3)];
    assert!(reason(place(&agents, &req)).contains("this child needs 2"));
}

#[test]
fn weight_two_gets_twice_the_share() {
    let mut heavy = agent("heavy", 30, 0);
    heavy.weight = 2;
    let mut agents = [heavy, agent("light", 30, 0)];
    for _ in 0..30 {
        let Placement::Agent(name) = place(&agents, &Default::default()) else {
            panic!("room left");
        };
        agents
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap()
            .in_flight += 1;
    }
    assert_eq!((agents[0].in_flight, agents[1].in_flight), (20, 10));
}

#[test]
fn round_robin_follows_the_cursor_and_wraps() {
    let agents = [agent("c", 2, 1), agent("a", 2, 0), agent("b", 2, 0)];
    let rr = Strategy::RoundRobin;
    let at = |cursor| PlacementRequest {
        strategy: &rr,
        cursor,
        ..Default::default()
    };
    assert_eq!(place(&agents, &at(None)), Placement::Agent("a".into()));
    assert_eq!(place(&agents, &at(Some("a"))), Placement::Agent("b".into()));
    assert_eq!(place(&agents, &at(Some("b"))), Placement::Agent("c".into()));
    assert_eq!(place(&agents, &at(Some("c"))), Placement::Agent("a".into()));
    // A full agent is skipped; a vanished cursor still orders by name.
    let agents = [agent("a", 1, 1), agent("b", 2, 0)];
    assert_eq!(
        place(&agents, &at(Some("zz"))),
        Placement::Agent("b".into())
    );
}

#[test]
fn spread_picks_the_least_used_label_value() {
    let agents = [
        with_label(agent("a1", 4, 0), "zone", "a"),
        with_label(agent("a2", 4, 0), "zone", "a"),
        with_label(agent("b1", 4, 3), "zone", "b"),
    ];
    let spread = Strategy::Spread("zone".into());
    let counts: BTreeMap<String, u64> = [("a".to_string(), 2), ("b".to_string(), 1)].into();
    let req = PlacementRequest {
        strategy: &spread,
        spread_counts: Some(&counts),
        ..Default::default()
    };
    // Zone b has had fewer children: it gets this one, even though busier.
    assert_eq!(place(&agents, &req), Placement::Agent("b1".into()));
}

fn arb_agents() -> impl proptest::strategy::Strategy<Value = Vec<AgentView>> {
    prop::collection::vec(
        (
            1u32..8,
            0u32..10,
            0u32..400,
            any::<bool>(),
            0usize..3,
            1u32..4,
        ),
        0..8,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (slots, used, load, ready, zone, weight))| {
                let mut a = agent(&format!("agent-{i}"), slots, used.min(slots + 1));
                a.load1 = f64::from(load) / 100.0;
                a.ready = ready;
                a.weight = weight;
                if zone > 0 {
                    a.labels.insert("zone".into(), format!("z{zone}"));
                }
                a
            })
            .collect()
    })
}

fn arb_strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![
        Just(Strategy::LeastLoaded),
        Just(Strategy::RoundRobin),
        Just(Strategy::Spread("zone".into())),
    ]
}

/// An arbitrary request: strategy, optional zone constraint, optional pin
/// list, 1-3 slots, an avoided agent.
#[derive(Debug, Clone)]
struct Ask {
    strategy: Strategy,
    require: BTreeMap<String, String>,
    pin: Vec<String>,
    slots: u32,
    avoid: Option<String>,
}

fn arb_ask() -> impl proptest::strategy::Strategy<Value = Ask> {
    (
        arb_strategy(),
        0usize..4,
        prop::collection::vec(0usize..8, 0..3),
        1u32..4,
        prop::option::of(0usize..8),
    )
        .prop_map(|(strategy, zone, pin, slots, avoid)| Ask {
            strategy,
            require: if zone == 0 {
                BTreeMap::new()
            } else {
                labels(&[("zone", &format!("z{zone}"))])
            },
            pin: pin.into_iter().map(|i| format!("agent-{i}")).collect(),
            slots,
            avoid: avoid.map(|i| format!("agent-{i}")),
        })
}

/// Places jobs one after another as the scheduler does (raising in-flight
/// counts, moving the cursor, counting spread values) until no capacity.
fn fill(agents: &mut [AgentView], ask: &Ask, max: usize) -> (Vec<String>, Option<String>) {
    let mut cursor: Option<String> = None;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut placed = Vec::new();
    for _ in 0..max {
        let req = PlacementRequest {
            avoid: ask.avoid.as_deref(),
            exclude: None,
            strategy: &ask.strategy,
            require: &ask.require,
            pin: &ask.pin,
            slots: ask.slots,
            cursor: cursor.as_deref(),
            spread_counts: Some(&counts),
        };
        match place(agents, &req) {
            Placement::Agent(name) => {
                let a = agents.iter_mut().find(|a| a.name == name).unwrap();
                a.in_flight += ask.slots;
                if let Strategy::Spread(l) = &ask.strategy {
                    *counts
                        .entry(a.labels.get(l).cloned().unwrap_or_default())
                        .or_default() += 1;
                }
                cursor = Some(name.clone());
                placed.push(name);
            }
            Placement::NoCapacity(r) => return (placed, Some(r)),
        }
    }
    (placed, None)
}

fn request<'a>(ask: &'a Ask) -> PlacementRequest<'a> {
    PlacementRequest {
        avoid: ask.avoid.as_deref(),
        strategy: &ask.strategy,
        require: &ask.require,
        pin: &ask.pin,
        slots: ask.slots,
        ..Default::default()
    }
}

proptest! {
    /// Capacity (in slots), constraints and completeness, for every strategy:
    /// placing until NoCapacity never overfills an agent, never leaves the pin
    /// list or violates a label, and stops only when no eligible agent has room.
    #[test]
    fn capacity_constraints_completeness(mut agents in arb_agents(), ask in arb_ask()) {
        let initial: Vec<u32> = agents.iter().map(|a| a.in_flight).collect();
        let (placed, why) = fill(&mut agents, &ask, 200);
        for name in &placed {
            let a = agents.iter().find(|a| &a.name == name).unwrap();
            prop_assert!(a.ready);
            prop_assert!(ask.pin.is_empty() || ask.pin.contains(name), "left the pin list");
            prop_assert!(ask.require.iter().all(|(k, v)| a.labels.get(k) == Some(v)), "label violated");
        }
        for (a, before) in agents.iter().zip(initial) {
            if a.in_flight > before {
                prop_assert!(a.in_flight <= a.slots, "{} over capacity", a.name);
            }
        }
        let why = why.expect("capacity runs out within 200 jobs");
        prop_assert!(why.starts_with("waiting for capacity: "));
        let room = agents.iter().any(|a| {
            a.ready && allowed(a, &request(&ask)) && a.in_flight + ask.slots <= a.slots
        });
        prop_assert!(!room, "stopped with room left: {}", why);
    }

    /// Determinism: the same snapshot, in any order, gives the same answer.
    #[test]
    fn deterministic_under_permutation(agents in arb_agents(), ask in arb_ask(), rot in 0usize..8) {
        let req = request(&ask);
        let first = place(&agents, &req);
        let mut rotated = agents.clone();
        rotated.reverse();
        if !rotated.is_empty() {
            let k = rot % rotated.len();
            rotated.rotate_left(k);
        }
        prop_assert_eq!(first.clone(), place(&rotated, &req));
        prop_assert_eq!(first, place(&agents, &req));
    }

    /// Stability: making an agent that was not chosen busier (more load, more
    /// jobs) never changes the answer, nor does making the chosen one idler.
    #[test]
    fn stable_under_unrelated_load(agents in arb_agents(), ask in arb_ask(), pick in 0usize..8, extra in 0u32..300) {
        let req = request(&ask);
        let Placement::Agent(chosen) = place(&agents, &req) else { return Ok(()); };
        let mut changed = agents.clone();
        if changed.is_empty() { return Ok(()); }
        let k = pick % changed.len();
        let a = &mut changed[k];
        if a.name == chosen {
            a.load1 = (a.load1 - f64::from(extra) / 100.0).max(0.0);
        } else {
            a.load1 += f64::from(extra) / 100.0;
            a.in_flight += extra % 3;
        }
        prop_assert_eq!(place(&changed, &req), Placement::Agent(chosen));
    }

    /// Balance: on equal idle agents, least-loaded and round-robin keep in-flight
    /// counts within one of each other; spread keeps label values within one.
    #[test]
    fn balanced_on_equal_agents(n in 1usize..6, slots in 1u32..10, jobs in 0usize..60, strategy in arb_strategy()) {
        let mut agents: Vec<AgentView> = (0..n)
            .map(|i| with_label(agent(&format!("a{i}"), slots, 0), "zone", &format!("z{}", i % 2)))
            .collect();
        let ask = Ask { strategy: strategy.clone(), require: BTreeMap::new(), pin: vec![], slots: 1, avoid: None };
        let (placed, _) = fill(&mut agents, &ask, jobs);
        let spread = |key: &dyn Fn(&AgentView) -> String| {
            let mut per: BTreeMap<String, usize> = agents.iter().map(|a| (key(a), 0)).collect();
            for p in &placed {
                let a = agents.iter().find(|a| &a.name == p).unwrap();
                *per.get_mut(&key(a)).unwrap() += 1;
            }
            let max = per.values().max().copied().unwrap_or(0);
            let min = per.values().min().copied().unwrap_or(0);
            max - min
        };
        match strategy {
            Strategy::Spread(_) if n % 2 == 0 => prop_assert!(spread(&|a| a.labels["zone"].clone()) <= 1),
            Strategy::Spread(_) => {}
            _ => prop_assert!(spread(&|a| a.name.clone()) <= 1),
        }
    }

    /// Weights: with room everywhere, least-loaded fills agents in proportion
    /// to slots × weight (within one job).
    #[test]
    fn weights_share_in_proportion(w1 in 1u32..4, w2 in 1u32..4, jobs in 1u32..40) {
        let mut a = agent("a", 1000, 0);
        a.weight = w1;
        let mut b = agent("b", 1000, 0);
        b.weight = w2;
        let mut agents = [a, b];
        let ask = Ask { strategy: Strategy::LeastLoaded, require: BTreeMap::new(), pin: vec![], slots: 1, avoid: None };
        fill(&mut agents, &ask, jobs as usize);
        // in_flight_a / w1 and in_flight_b / w2 differ by at most one job's share.
        let (fa, fb) = (f64::from(agents[0].in_flight), f64::from(agents[1].in_flight));
        prop_assert!((fa / f64::from(w1) - fb / f64::from(w2)).abs() <= 1.0 + 1e-9);
    }
}
