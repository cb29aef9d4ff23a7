//! Capacity: more parallelism than slots must queue, never overload.
//!
//! Two agents of two slots receive twelve ~0.8 s children with `parallelism = 50`.
//! While it runs, the test polls the coordinator and checks that children wait as
//! `pending` while others run (the fan-out is throttled by slots, not by the
//! package), that no agent ever holds more jobs than its slots (by `agents list` and by
//! the coordinator's own child records), and that an agent whose slots are full
//! answers a direct, well-formed `StartJob` with `Rejected{AT_CAPACITY}`: the agent is
//! the final judge of its capacity. At the end every child succeeded once.
//!
//! Also here, the other half of admission: a dispatch id sent twice is accepted twice
//! and starts one process (delivery is at least once; the agent makes it idempotent).

use std::time::{Duration, Instant};

use baton_proto::RejectCode;

use crate::harness::fixtures::child_toml;
use crate::harness::grpc::{Answer, answer, start_job, start_job_request};
use crate::harness::{Cluster, FanoutSpec, wait_until};

const AGENTS: [&str; 2] = ["a1", "a2"];
const SLOTS: u32 = 2;
const CHILDREN: usize = 12;
const CHILD_CMD: &str = "sleep 0.8";
/// Direct probes that may land in a gap between two dispatches before we give up.
const MAX_PROBES: u32 = 8;

#[test]
fn capacity_queues_children_and_agent_rejects_past_its_slots() {
    let mut c = Cluster::new("capacity");
    c.start_coordinator();
    for name in AGENTS {
        c.start_agent(name, SLOTS);
    }
    c.agents_ready(AGENTS.len());
    let probe_target = AGENTS[0];
    let probe_addr = c.agent(probe_target).addr();

    let spec = FanoutSpec::new(CHILDREN as u32, CHILD_CMD).parallelism(50);
    let parent = c.write_fanout("capacity", &spec);
    let id = c.start_run(&parent, &[]);

    let mut saw_pending_while_running = false;
    let mut probes = 0u32;
    let mut probe_accepted = Vec::new();
    let mut at_capacity: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(40);
    let final_view = loop {
        let view = c.exec_show(&id);
        let pending = view.count_state("pending");
        let running = view.count_state("running");
        if pending > 0 && running > 0 {
            saw_pending_while_running = true;
        }
        for name in AGENTS {
            let occupying = view.occupying(name);
            assert!(
                occupying <= SLOTS as usize,
                "coordinator records {occupying} accepted/running children on {name} \
                 with {SLOTS} slots: {:#}",
                view.raw
            );
        }
        for a in c.agents_list() {
            assert!(
                a.running <= a.slots,
                "agents list shows {} running > {} slots on {}",
                a.running,
                a.slots,
                a.name
            );
        }
        // Probe the agent while the coordinator sees it full and has work waiting.
        if at_capacity.is_none()
            && probes < MAX_PROBES
            && pending > 0
            && view.occupying(probe_target) == SLOTS as usize
        {
            probes += 1;
            let req = start_job_request(
                &format!("it-capacity-probe-{probes}"),
                &child_toml(CHILD_CMD),
            );
            let resp = start_job(&c.agent_tls(probe_target), probe_addr, req)
                .unwrap_or_else(|e| panic!("probe: {e}"));
            match answer(&resp) {
                Answer::Rejected {
                    code: RejectCode::AtCapacity,
                    reason,
                } => at_capacity = Some(reason),
                // A slot freed between the poll and the probe: the probe job runs
                // (it is harmless); try again on a later poll.
                Answer::Accepted => probe_accepted.push(probes),
                other => panic!(
                    "StartJob to a full agent answered {other:?}, expected Rejected{{AT_CAPACITY}}"
                ),
            }
        }
        if view.is_terminal() {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "execution not finished within 40 s: {}",
            view.brief()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    c.note(&format!(
        "probes={probes} accepted={probe_accepted:?} at_capacity={at_capacity:?}"
    ));
    assert_eq!(final_view.status, "succeeded", "{:#}", final_view.raw);
    final_view.assert_all_succeeded_once(CHILDREN, &AGENTS);
    assert_eq!(final_view.summary_u64("/children/failed"), 0);
    // The records' own timestamps must agree: never more than SLOTS at once per agent.
    for name in AGENTS {
        match final_view.max_concurrency_on(name) {
            Some(n) => assert!(
                n <= SLOTS as usize,
                "child records show {n} children overlapping in time on {name} ({SLOTS} slots): {:#}",
                final_view.raw
            ),
            None => c.note(&format!(
                "no started/finished timestamps on {name}; overlap not checked"
            )),
        }
    }
    assert!(
        saw_pending_while_running,
        "never saw a child pending while others ran (parallelism 50 > 4 slots)"
    );
    let reason = at_capacity.unwrap_or_else(|| {
        panic!(
            "no AT_CAPACITY from a full agent in {probes} probes \
             (accepted probes: {probe_accepted:?})"
        )
    });
    assert!(
        !reason.trim().is_empty(),
        "AT_CAPACITY with an empty reason"
    );
    c.finish(&[]);
}

/// The same dispatch id sent twice is accepted twice and starts one process: the
/// child appends a line to a file, which must hold exactly one line afterwards.
///
/// No sleep decides it. The job holds its slot until a gate opens, on an agent of
/// two slots, and an agent takes a slot for a new job before it answers
/// `Accepted`: after the duplicate, a job of another dispatch id still gets the
/// second slot, and a third is refused `AT_CAPACITY` (the slots do count). Then
/// the gate opens and both jobs end; nothing else holds a slot to run in.
#[test]
fn start_job_is_idempotent_per_dispatch_id() {
    let mut c = Cluster::new("idempotent");
    c.start_coordinator();
    let addr = c.start_agent("a1", 2);
    c.agents_ready(1);
    let gate = c.root().join("gate");
    // A run notes its start and end in `marker`; it waits for the gate between
    // (bounded: 30 s).
    let gated = |marker: &std::path::Path| {
        let (m, g) = (marker.display(), gate.display());
        child_toml(&format!(
            "echo run >> '{m}'; i=0; while [ ! -e '{g}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo end >> '{m}'"
        ))
    };
    let marker = c.root().join("runs.txt");
    let req = start_job_request("it-idempotent", &gated(&marker));
    for n in 1..=2 {
        let resp = start_job(&c.agent_tls("a1"), addr, req.clone())
            .unwrap_or_else(|e| panic!("StartJob #{n}: {e}"));
        assert_eq!(answer(&resp), Answer::Accepted, "StartJob #{n}");
    }
    let other_marker = c.root().join("other-runs.txt");
    let other = start_job_request("it-idempotent-other", &gated(&other_marker));
    let resp = start_job(&c.agent_tls("a1"), addr, other)
        .unwrap_or_else(|e| panic!("StartJob of another id: {e}"));
    assert_eq!(
        answer(&resp),
        Answer::Accepted,
        "another dispatch id found no free slot: the duplicate took one"
    );
    let full = start_job_request(
        "it-idempotent-full",
        &gated(&c.root().join("full-runs.txt")),
    );
    let resp = start_job(&c.agent_tls("a1"), addr, full)
        .unwrap_or_else(|e| panic!("StartJob to a full agent: {e}"));
    assert!(
        matches!(
            answer(&resp),
            Answer::Rejected {
                code: RejectCode::AtCapacity,
                ..
            }
        ),
        "a third job on two slots: {:?}",
        answer(&resp)
    );

    std::fs::write(&gate, b"").expect("open the gate");
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let ended = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        lines(&marker).contains(&"end".to_owned())
            && lines(&other_marker).contains(&"end".to_owned())
    });
    assert!(
        ended,
        "the accepted jobs did not both run to their end: {:?} {:?}",
        lines(&marker),
        lines(&other_marker)
    );
    assert_eq!(
        lines(&marker),
        ["run", "end"],
        "one dispatch id sent twice started more than one process"
    );
    c.finish(&[]);
}
