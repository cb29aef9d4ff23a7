//! Scheduler tests of placement policies, admission and fairness: executions
//! share the fleet, caps hold, slots are counted per child, failing agents are
//! quarantined, and starts past the pending-children bound are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::{AgentReport, DispatchId, JobStatus, ReportBody};

use super::tests::{finished, settle};
use super::*;
use crate::placement::{PlacementPolicy, Strategy};
use crate::prepare::{Plan, plan_bundle};

const PARENT: &str = "name='p'\n[parameters.n]\ntype='int'\ndefault=4\n[tasks.fan]\nforeach={range={start=1,end='${params.n}'}}\nchild='c.toml'\nparallelism=1000\nparams={shard='${item}'}\n";
const CHILD: &str = "name='c'\n[parameters.shard]\ntype='int'\n[tasks.run]\nexec=['true']\n";

fn reg(s: &mut Scheduler, name: &str, slots: u32, labels: &[(&str, &str)], now: Now) {
    s.register(
        Registration {
            name: name.into(),
            address: format!("{name}:1"),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            slots,
            version: "t".into(),
            boot_id: "boot".into(),
            outbox_id: format!("ob-{name}"),
            cert_fingerprint: String::new(),
            weight: 1,
        },
        now,
    )
    .unwrap();
}

fn plan(n: u32) -> (BTreeMap<String, String>, BTreeMap<String, String>, Plan) {
    let files: BTreeMap<String, String> = [
        ("p.toml".into(), PARENT.into()),
        ("c.toml".into(), CHILD.into()),
    ]
    .into();
    let params: BTreeMap<String, String> = [("n".into(), n.to_string())].into();
    let plan = plan_bundle("p.toml", &files, &params).unwrap();
    (files, params, plan)
}

fn start_as(
    s: &mut Scheduler,
    id: &str,
    n: u32,
    placement: PlacementPolicy,
) -> Result<String, crate::error::CoordinatorError> {
    let (files, params, plan) = plan(n);
    s.admit(&plan)?;
    let mut rec = super::tests::running_record(id, files, params, &plan);
    rec.placement = placement;
    Ok(s.start(rec, plan, Now::read()))
}

fn state(s: &Scheduler, id: &str) -> String {
    s.execution_view(id)
        .map(|v| v.summary.state)
        .unwrap_or_default()
}

/// Accepts every dispatch and reports it finished with `status(agent)`;
/// returns the dispatches made.
struct Fleet {
    seqs: BTreeMap<String, u64>,
}

impl Fleet {
    fn round(
        &mut self,
        s: &mut Scheduler,
        now: Now,
        status: impl Fn(&str) -> JobStatus,
    ) -> Vec<(String, DispatchId)> {
        let d = settle(s, now);
        for (agent, child, attempt, id) in &d {
            s.dispatch_result(*child, agent, *attempt, DispatchOutcome::Accepted, now);
            let seq = self.seqs.entry(agent.clone()).or_default();
            *seq += 1;
            s.agent_event(agent, finished(*seq, id, status(agent)), now);
        }
        d.into_iter().map(|(a, _, _, id)| (a, id)).collect()
    }
}

#[test]
fn a_small_execution_after_a_huge_fanout_finishes_long_before_it() {
    let now = Now::read();
    let mut s = Scheduler::new(SchedulerConfig::default(), 1);
    reg(&mut s, "a", 2, &[], now);
    reg(&mut s, "b", 2, &[], now);
    start_as(&mut s, "big", 100_000, PlacementPolicy::default()).unwrap();
    let mut fleet = Fleet {
        seqs: BTreeMap::new(),
    };
    // The big one has the fleet to itself for a while.
    for _ in 0..10 {
        fleet.round(&mut s, now, |_| JobStatus::Succeeded);
    }
    start_as(&mut s, "small", 20, PlacementPolicy::default()).unwrap();
    let mut dispatched: BTreeMap<String, u64> = BTreeMap::new();
    let mut rounds = 0;
    while state(&s, "small") != "succeeded" {
        rounds += 1;
        assert!(rounds < 100, "the small execution never finished");
        for (_, id) in fleet.round(&mut s, now, |_| JobStatus::Succeeded) {
            *dispatched.entry(id.execution_id.to_string()).or_default() += 1;
        }
    }
    let (big, small) = (dispatched["big"], dispatched["small"]);
    assert_eq!(small, 20);
    // Turns alternate between the two: the big one gets about as many
    // dispatches as the small one needed, not the 100,000 it has queued.
    assert!(big <= small + 4, "big got {big} dispatches meanwhile");
    assert_eq!(state(&s, "big"), "running");
}

#[test]
fn execution_cap_and_slots_per_child_hold() {
    let now = Now::read();
    let mut s = Scheduler::new(SchedulerConfig::default(), 1);
    reg(&mut s, "a", 8, &[], now);
    let capped = PlacementPolicy {
        max_in_flight: 3,
        ..Default::default()
    };
    start_as(&mut s, "e1", 10, capped).unwrap();
    assert_eq!(settle(&mut s, now).len(), 3, "the execution's cap");
    let wide = PlacementPolicy {
        slots_per_child: 2,
        ..Default::default()
    };
    start_as(&mut s, "e2", 10, wide).unwrap();
    // 8 slots: 3 taken by e1, 5 left: two children of 2 slots fit.
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(
        s.agent_views(now.instant)[0].in_flight,
        7,
        "in-flight counts slots"
    );
}

/// A package's `slots = N` on a task counts for that task's children; its
/// other tasks take the run's `--slots-per-child`.
#[test]
fn a_task_that_asks_for_slots_gets_them() {
    let now = Now::read();
    let parent = "name='p'\n\
        [tasks.wide]\nforeach={items=['1','2','3']}\nchild='c.toml'\nparams={shard='${item}'}\nslots=2\n\
        [tasks.narrow]\nforeach={items=['1','2','3']}\nchild='c.toml'\nparams={shard='${item}'}\n";
    let files: BTreeMap<String, String> = [
        ("p.toml".into(), parent.into()),
        ("c.toml".into(), CHILD.into()),
    ]
    .into();
    // 5 slots: narrow children first (task order), then what fits of wide.
    for (run_slots, wide, narrow, used) in [(1, 1, 3, 5), (3, 1, 1, 5)] {
        let mut s = Scheduler::new(SchedulerConfig::default(), 1);
        reg(&mut s, "a", 5, &[], now);
        let plan = plan_bundle("p.toml", &files, &BTreeMap::new()).unwrap();
        let mut rec = super::tests::running_record("e1", files.clone(), BTreeMap::new(), &plan);
        rec.placement = PlacementPolicy {
            slots_per_child: run_slots,
            ..Default::default()
        };
        s.start(rec, plan, Now::read());
        let d = settle(&mut s, now);
        let count = |t: &str| d.iter().filter(|x| x.3.task_path == t).count();
        assert_eq!(
            (count("wide"), count("narrow")),
            (wide, narrow),
            "run slots {run_slots}: {d:?}"
        );
        assert_eq!(s.agent_views(now.instant)[0].in_flight, used, "in slots");
    }
}

#[test]
fn require_pin_round_robin_and_spread_reach_the_agents() {
    let now = Now::read();
    let mut s = Scheduler::new(SchedulerConfig::default(), 1);
    reg(&mut s, "a1", 4, &[("zone", "a")], now);
    reg(&mut s, "a2", 4, &[("zone", "a")], now);
    reg(&mut s, "b1", 4, &[("zone", "b")], now);
    let zone_b = PlacementPolicy {
        require: [("zone".to_string(), "b".to_string())].into(),
        ..Default::default()
    };
    start_as(&mut s, "e1", 6, zone_b).unwrap();
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 4);
    assert!(d.iter().all(|x| x.0 == "b1"));
    let waiting = s.execution_view("e1").unwrap().waiting;
    assert!(
        waiting
            .iter()
            .any(|w| w.contains("all agents with zone=b are busy")),
        "{waiting:?}"
    );
    let spread = PlacementPolicy {
        strategy: Some(Strategy::Spread("zone".into())),
        ..Default::default()
    };
    start_as(&mut s, "e2", 4, spread).unwrap();
    let d = settle(&mut s, now);
    // Zone b is full: spread is a preference, so all four go to zone a.
    assert_eq!(d.len(), 4);
    assert!(d.iter().all(|x| x.0.starts_with('a')));
    let pinned = PlacementPolicy {
        pin: vec!["a2".into()],
        strategy: Some(Strategy::RoundRobin),
        ..Default::default()
    };
    start_as(&mut s, "e3", 2, pinned).unwrap();
    let d = settle(&mut s, now);
    assert!(d.iter().all(|x| x.0 == "a2"), "{d:?}");
}

#[test]
fn spread_splits_evenly_when_there_is_room() {
    let now = Now::read();
    let mut s = Scheduler::new(SchedulerConfig::default(), 1);
    reg(&mut s, "a1", 8, &[("zone", "a")], now);
    reg(&mut s, "a2", 8, &[("zone", "a")], now);
    reg(&mut s, "b1", 8, &[("zone", "b")], now);
    let spread = PlacementPolicy {
        strategy: Some(Strategy::Spread("zone".into())),
        ..Default::default()
    };
    start_as(&mut s, "e1", 10, spread).unwrap();
    let d = settle(&mut s, now);
    let b = d.iter().filter(|x| x.0 == "b1").count();
    assert_eq!((d.len() - b, b), (5, 5));
}

#[test]
fn an_agent_that_fails_quickly_is_quarantined_then_forgiven() {
    let now = Now::read();
    let config = SchedulerConfig {
        quarantine: QuarantineConfig {
            failures: 3,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        },
        ..Default::default()
    };
    let mut s = Scheduler::new(config, 1);
    reg(&mut s, "bad", 1, &[], now);
    reg(&mut s, "good", 1, &[], now);
    start_as(&mut s, "e1", 40, PlacementPolicy::default()).unwrap();
    let mut fleet = Fleet {
        seqs: BTreeMap::new(),
    };
    let fail_on_bad = |a: &str| {
        if a == "bad" {
            JobStatus::Failed
        } else {
            JobStatus::Succeeded
        }
    };
    for _ in 0..4 {
        fleet.round(&mut s, now, fail_on_bad);
    }
    let listed = s.agent_list();
    let bad = listed.iter().find(|a| a.rec.name == "bad").unwrap();
    assert_eq!(bad.state, AgentState::Quarantined);
    assert!(
        bad.quarantine
            .as_ref()
            .unwrap()
            .0
            .contains("3 children failed")
    );
    // No new children while quarantined; the other agent carries on.
    for _ in 0..5 {
        let d = fleet.round(&mut s, now, fail_on_bad);
        assert!(d.iter().all(|x| x.0 == "good"), "{d:?}");
    }
    let later = now + Duration::from_secs(31);
    for agent in ["bad", "good"] {
        // Heartbeats keep their leases across the jump in time.
        let hb = AgentReport {
            seq: 0,
            at_unix_ms: 1,
            body: Some(ReportBody::Heartbeat(Default::default())),
        };
        s.agent_event(agent, hb, later);
    }
    s.tick(later);
    let listed = s.agent_list();
    assert_eq!(
        listed.iter().find(|a| a.rec.name == "bad").unwrap().state,
        AgentState::Ready
    );
    let d = settle(&mut s, later);
    assert!(d.iter().any(|x| x.0 == "bad"), "{d:?}");
}

#[test]
fn never_more_than_half_the_fleet_is_quarantined() {
    let now = Now::read();
    let config = SchedulerConfig {
        quarantine: QuarantineConfig {
            failures: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut s = Scheduler::new(config, 1);
    reg(&mut s, "a", 1, &[], now);
    reg(&mut s, "b", 1, &[], now);
    start_as(&mut s, "e1", 20, PlacementPolicy::default()).unwrap();
    let mut fleet = Fleet {
        seqs: BTreeMap::new(),
    };
    for _ in 0..6 {
        fleet.round(&mut s, now, |_| JobStatus::Failed);
    }
    let quarantined = s
        .agent_list()
        .iter()
        .filter(|a| a.state == AgentState::Quarantined)
        .count();
    assert_eq!(
        quarantined, 1,
        "a package failing everywhere keeps one agent"
    );
}

#[test]
fn starts_past_the_pending_bound_are_refused() {
    let now = Now::read();
    let config = SchedulerConfig {
        max_pending_children: 100,
        ..Default::default()
    };
    let mut s = Scheduler::new(config, 1);
    reg(&mut s, "a", 4, &[], now);
    let e = start_as(&mut s, "huge", 101, PlacementPolicy::default()).unwrap_err();
    assert_eq!(e.code(), "EXECUTION_TOO_LARGE");
    start_as(&mut s, "e1", 80, PlacementPolicy::default()).unwrap();
    let e = start_as(&mut s, "e2", 30, PlacementPolicy::default()).unwrap_err();
    assert_eq!(e.code(), "COORDINATOR_BUSY");
    assert!(e.retryable());
    assert!(e.to_string().contains("retry after 30 s"), "{e}");
    // As children finish, room comes back.
    let mut fleet = Fleet {
        seqs: BTreeMap::new(),
    };
    for _ in 0..3 {
        fleet.round(&mut s, now, |_| JobStatus::Succeeded);
    }
    assert_eq!(s.pending_children(), 80 - 12);
    start_as(&mut s, "e2", 30, PlacementPolicy::default()).unwrap();
}
