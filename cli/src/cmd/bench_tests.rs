//! Unit tests of `baton bench`: flags, agent slots, the lower bound.

use std::collections::BTreeMap;

use super::*;

fn args(w: Workload) -> BenchArgs {
    BenchArgs {
        workload: w,
        store: BenchStore::Embedded,
        leader_lease_s: 5,
        agents: 4,
        children: 1000,
        slots: 4,
        queue: 0,
        lease_ttl_ms: 3000,
        coordinator_cpus: None,
        agent_cpus: None,
        keep: false,
        output: Format::Json,
    }
}

#[test]
fn lower_bound_is_the_larger_of_spread_work_and_longest_child() {
    // 10 s of work on 4 slots: 2.5 s; the longest child is 1 s.
    assert_eq!(lower_bound_s(&[1000; 10], 4), 2.5);
    // One long child dominates: 9 s alone.
    assert_eq!(lower_bound_s(&[9000, 100, 100], 4), 9.0);
    assert_eq!(lower_bound_s(&[], 4), 0.0);
    assert_eq!(lower_bound_s(&[500, 500], 0), 1.0, "0 slots counts as 1");
}

#[test]
fn work_spreads_within_the_documented_ranges() {
    let mixed: Vec<u32> = (0..1000).map(|i| work_ms(Workload::Mixed, i)).collect();
    assert!(mixed.iter().all(|w| (50..=500).contains(w)));
    assert!(mixed.iter().any(|&w| w < 100) && mixed.iter().any(|&w| w > 450));
    let loss: Vec<u32> = (0..1000).map(|i| work_ms(Workload::AgentLoss, i)).collect();
    assert!(loss.iter().all(|w| (300..=1000).contains(w)));
    assert_eq!(work_ms(Workload::Noop, 7), 0);
}

#[test]
fn mixed_agents_have_different_sizes() {
    assert_eq!(agent_slots(Workload::Mixed, 5, 4), [1, 2, 4, 8, 1]);
    assert_eq!(agent_slots(Workload::Mixed, 2, 1), [1, 1]);
    assert_eq!(agent_slots(Workload::Proc, 3, 4), [4, 4, 4]);
}

#[test]
fn generated_packages_parse_and_expand_to_n_children() {
    for w in [
        Workload::Noop,
        Workload::Proc,
        Workload::Mixed,
        Workload::AgentLoss,
    ] {
        let (parent, child) = packages(w, 37);
        let files: BTreeMap<String, String> = [
            ("parent.toml".to_string(), parent),
            ("child.toml".to_string(), child),
        ]
        .into();
        let plan = baton_coordinator::prepare::plan_bundle("parent.toml", &files, &BTreeMap::new())
            .unwrap_or_else(|e| panic!("{w:?}: {e}"));
        assert_eq!(plan.tasks[0].items.len(), 37, "{w:?}");
    }
}

#[test]
fn flags_are_validated() {
    assert!(validate(&args(Workload::Noop)).is_ok());
    let pinned = BenchArgs {
        coordinator_cpus: Some("0".into()),
        agent_cpus: Some("1,2-3".into()),
        ..args(Workload::Proc)
    };
    assert!(validate(&pinned).is_ok());
    let bad = [
        BenchArgs {
            agents: 0,
            ..args(Workload::Noop)
        },
        BenchArgs {
            children: 0,
            ..args(Workload::Proc)
        },
        BenchArgs {
            slots: 0,
            ..args(Workload::Mixed)
        },
        BenchArgs {
            lease_ttl_ms: 10,
            ..args(Workload::Noop)
        },
        BenchArgs {
            queue: SLOTS_MAX + 1,
            ..args(Workload::Noop)
        },
        BenchArgs {
            agents: 1,
            ..args(Workload::AgentLoss)
        },
        BenchArgs {
            coordinator_cpus: Some("0-".into()),
            ..args(Workload::Noop)
        },
        BenchArgs {
            agent_cpus: Some("one".into()),
            ..args(Workload::Proc)
        },
    ];
    for a in bad {
        let e = validate(&a).unwrap_err();
        assert_eq!((e.code.as_str(), e.exit), ("USAGE", 2), "{a:?}");
    }
}
