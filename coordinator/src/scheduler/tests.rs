//! Scheduler unit tests: the child job state machine driven by hand, and a
//! property test that drives it with random agent behaviour.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::{
    AgentReport, DispatchId, JobFinished, JobStarted, JobStatus, RejectCode, ReportBody,
};
use proptest::prelude::*;

use super::*;
use crate::prepare::plan_bundle;
use crate::records::{ExecutionRecord, ExecutionState, Phase};

const PARENT: &str = "name='p'\n[parameters.n]\ntype='int'\ndefault=4\n[tasks.fan]\nforeach={range={start=1,end='${params.n}'}}\nchild='c.toml'\nparallelism=100\nparams={shard='${item}'}\nretry={attempts=2,lost_attempts=2}\n";
const CHILD: &str = "name='c'\n[parameters.shard]\ntype='int'\n[tasks.run]\nexec=['true']\n";

pub(super) fn sched() -> Scheduler {
    Scheduler::new(SchedulerConfig::default(), 1)
}

pub(super) fn reg(s: &mut Scheduler, name: &str, slots: u32, boot: &str, now: Now) {
    s.register(
        Registration {
            name: name.into(),
            address: format!("{name}:1"),
            labels: BTreeMap::new(),
            slots,
            version: "t".into(),
            boot_id: boot.into(),
            outbox_id: format!("ob-{name}"),
            cert_fingerprint: format!("fp-{name}"),
            weight: 1,
        },
        now,
    )
    .unwrap();
}

pub(super) fn start(s: &mut Scheduler, n: u32) -> String {
    let files: BTreeMap<String, String> = [
        ("p.toml".into(), PARENT.into()),
        ("c.toml".into(), CHILD.into()),
    ]
    .into();
    let params: BTreeMap<String, String> = [("n".into(), n.to_string())].into();
    let plan = plan_bundle("p.toml", &files, &params).unwrap();
    let rec = running_record("e1", files, params, &plan);
    s.start(rec, plan, Now::read())
}

/// A running execution's record for `plan`, as `StartExecution` writes it
/// (root `p.toml`, no catalog, default placement).
pub(super) fn running_record(
    id: &str,
    files: BTreeMap<String, String>,
    params: BTreeMap<String, String>,
    plan: &crate::prepare::Plan,
) -> ExecutionRecord {
    ExecutionRecord {
        folder: String::new(),
        id: id.into(),
        package: plan.package.clone(),
        root: "p.toml".into(),
        files,
        file_hashes: Default::default(),
        bundle_hash: String::new(),
        texts: None,
        params,
        state: ExecutionState::Running,
        current_task: 0,
        created_unix_ms: 0,
        finished_unix_ms: 0,
        reason: String::new(),
        stale_events: 0,
        cancel_requested: false,
        final_counts: None,
        catalog: None,
        resumes: 0,
        task_states: Default::default(),
        parent: None,
        rows_outcomes: Default::default(),
        trace: None,
        placement: Default::default(),
    }
}

/// The revision of the next commit: increasing over the whole test run, as
/// a store's revisions are (never the same twice, never going back).
pub(super) fn next_revision() -> crate::store::Revision {
    use std::sync::atomic::{AtomicU64, Ordering};
    static REVISION: AtomicU64 = AtomicU64::new(1);
    REVISION.fetch_add(1, Ordering::Relaxed)
}

/// Makes everything durable as the task does: flushes, commits under a new
/// revision, and returns the operations written.
pub(super) fn commit(s: &mut Scheduler) -> Vec<crate::store::Op> {
    let (ops, written) = s.flush();
    s.committed(written, next_revision());
    ops
}

/// Commits everything (as the task would) and returns the dispatches.
pub(super) fn settle(s: &mut Scheduler, now: Now) -> Vec<(String, ChildRef, u32, DispatchId)> {
    s.pump(now);
    commit(s);
    s.take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Dispatch {
                agent,
                child,
                attempt,
                spec,
                ..
            } => Some((agent, child, attempt, spec.dispatch_id.clone())),
            _ => None,
        })
        .collect()
}

struct Seqs(BTreeMap<String, u64>);
impl Seqs {
    fn next(&mut self, agent: &str) -> u64 {
        let n = self.0.entry(agent.to_string()).or_default();
        *n += 1;
        *n
    }
}

pub(super) fn finished(seq: u64, id: &DispatchId, status: JobStatus) -> AgentReport {
    AgentReport {
        seq,
        at_unix_ms: 1,
        body: Some(ReportBody::Finished(JobFinished {
            dispatch_id: Some(id.clone()),
            status,
            exit_code: if status == JobStatus::Succeeded { 0 } else { 1 },
            ..Default::default()
        })),
    }
}

pub(super) fn summary(s: &Scheduler) -> Summary {
    s.execution_view("e1")
        .map(|v| v.summary)
        .unwrap_or_default()
}

#[test]
fn fanout_succeeds_and_spreads() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", now);
    reg(&mut s, "b", 2, "b1", now);
    start(&mut s, 4);
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 4, "4 slots free, 4 children");
    assert_eq!(d.iter().filter(|x| x.0 == "a").count(), 2);
    let mut seqs = Seqs(BTreeMap::new());
    for (agent, child, attempt, id) in &d {
        s.dispatch_result(*child, agent, *attempt, DispatchOutcome::Accepted, now);
        let seq = seqs.next(agent);
        s.agent_event(agent, finished(seq, id, JobStatus::Succeeded), now);
    }
    let (_, written) = s.flush();
    // Before commit the execution is still in memory and succeeded.
    assert_eq!(s.execution_view("e1").unwrap().summary.state, "succeeded");
    s.committed(written, next_revision());
    assert!(
        s.execution_view("e1").is_none(),
        "ended executions leave memory"
    );
    let acks: Vec<_> = s
        .take_effects()
        .into_iter()
        .filter(|e| matches!(e, Effect::Ack { .. }))
        .collect();
    assert_eq!(acks.len(), 2, "one cumulative ack per agent");
}

#[test]
fn terminal_state_is_recorded_once_and_repeats_are_counted() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 4, "b1", now);
    start(&mut s, 2);
    let d = settle(&mut s, now);
    let (agent, _, _, id) = &d[0];
    s.agent_event(agent, finished(1, id, JobStatus::Succeeded), now);
    // The same event again (same seq): a duplicate.
    s.agent_event(agent, finished(1, id, JobStatus::Failed), now);
    assert_eq!(s.stats.duplicate_events, 1);
    // A new event about the same, finished attempt: stale.
    s.agent_event(agent, finished(2, id, JobStatus::Failed), now);
    assert_eq!(s.stats.stale_events, 1);
    let sum = summary(&s);
    assert_eq!((sum.succeeded, sum.failed, sum.stale_events), (1, 0, 1));
}

#[test]
fn lost_agent_children_rerun_elsewhere_with_new_attempt() {
    let t0 = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", t0);
    reg(&mut s, "b", 2, "b1", t0);
    start(&mut s, 4);
    let d = settle(&mut s, t0);
    let on_a: Vec<_> = d.iter().filter(|x| x.0 == "a").cloned().collect();
    let on_b: Vec<_> = d.iter().filter(|x| x.0 == "b").cloned().collect();
    // b keeps heartbeating and finishes its work; a goes silent.
    let t1 = t0 + Duration::from_secs(3);
    let mut seqs = Seqs(BTreeMap::new());
    for (agent, _, _, id) in &on_b {
        let seq = seqs.next(agent);
        s.agent_event(agent, finished(seq, id, JobStatus::Succeeded), t1);
    }
    let t2 = t0 + Duration::from_secs(6);
    s.agent_event(
        "b",
        AgentReport {
            seq: 0,
            at_unix_ms: 0,
            body: Some(ReportBody::Heartbeat(Default::default())),
        },
        t2,
    );
    s.tick(t2);
    assert_eq!(s.stats.agents_lost, 1);
    let redo = settle(&mut s, t2);
    assert_eq!(redo.len(), 2);
    for (agent, _, attempt, _) in &redo {
        assert_eq!(agent, "b");
        assert_eq!(*attempt, 2);
    }
    // A late report from a about attempt 1 is stale.
    let (_, _, _, old) = &on_a[0];
    s.agent_event("a", finished(1, old, JobStatus::Succeeded), t2);
    assert_eq!(s.stats.stale_events, 1);
    for (agent, _, _, id) in &redo {
        let seq = seqs.next(agent);
        s.agent_event(agent, finished(seq, id, JobStatus::Succeeded), t2);
    }
    let v = s.execution_view("e1").unwrap();
    assert_eq!(v.summary.succeeded, 4);
    assert_eq!(v.summary.lost_attempts, 2);
    let rerun = v.children.iter().find(|c| c.attempt == 2).unwrap();
    assert_eq!(rerun.attempt_agents, ["a", "b"]);
}

/// The given-up attempts' CancelJob calls, as (agent, dispatch id).
fn superseded_cancels(s: &mut Scheduler) -> Vec<(String, DispatchId)> {
    s.take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Cancel { agent, spec, .. } => Some((agent, spec.dispatch_id)),
            _ => None,
        })
        .collect()
}

fn heartbeat() -> AgentReport {
    AgentReport {
        seq: 0,
        at_unix_ms: 0,
        body: Some(ReportBody::Heartbeat(Default::default())),
    }
}

#[test]
fn an_agent_back_from_lost_is_asked_to_stop_the_attempts_given_up_meanwhile() {
    let t0 = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", t0);
    reg(&mut s, "b", 2, "b1", t0);
    start(&mut s, 4);
    let d = settle(&mut s, t0);
    let on_a: Vec<DispatchId> = d
        .iter()
        .filter(|x| x.0 == "a")
        .map(|x| x.3.clone())
        .collect();
    assert_eq!(on_a.len(), 2);
    // b stays alive, a goes silent past its lease: its two attempts are given up.
    let t1 = t0 + Duration::from_secs(6);
    s.agent_event("b", heartbeat(), t1);
    s.tick(t1);
    assert!(s.registry.get("a").unwrap().lost);
    commit(&mut s);
    assert!(
        superseded_cancels(&mut s).is_empty(),
        "nothing is sent to an agent while it is lost"
    );
    // a comes back, its old processes still running: they are stopped, by
    // their own attempt's dispatch id, once.
    s.agent_event("a", heartbeat(), t1);
    commit(&mut s);
    let mut cancels = superseded_cancels(&mut s);
    cancels.sort_by_key(|(_, id)| id.item_index);
    let mut expected: Vec<_> = on_a
        .iter()
        .map(|id| ("a".to_string(), id.clone()))
        .collect();
    expected.sort_by_key(|(_, id)| id.item_index);
    assert_eq!(cancels, expected);
    assert!(cancels.iter().all(|(_, id)| id.attempt == 1));
    s.agent_event("a", heartbeat(), t1);
    commit(&mut s);
    assert!(superseded_cancels(&mut s).is_empty(), "asked once");
}

#[test]
fn an_agent_that_restarted_while_lost_is_asked_to_stop_nothing() {
    let t0 = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", t0);
    start(&mut s, 2);
    let d = settle(&mut s, t0);
    assert_eq!(d.len(), 2);
    let t1 = t0 + Duration::from_secs(6);
    s.tick(t1);
    assert!(s.registry.get("a").unwrap().lost);
    commit(&mut s);
    s.take_effects();
    // A new boot: what it ran before died with it.
    reg(&mut s, "a", 2, "b2", t1);
    commit(&mut s);
    assert!(superseded_cancels(&mut s).is_empty());
}

#[test]
fn no_capacity_waits_with_a_reason_then_runs() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    start(&mut s, 3);
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 1);
    let v = s.execution_view("e1").unwrap();
    assert_eq!(v.summary.pending, 2);
    assert!(
        v.waiting.iter().any(|w| w.contains("waiting for capacity")),
        "{:?}",
        v.waiting
    );
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Succeeded), now);
    assert_eq!(settle(&mut s, now).len(), 1, "a freed slot is used at once");
}

#[test]
fn rejection_tries_the_next_agent_without_a_new_attempt() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    reg(&mut s, "b", 1, "b1", now);
    start(&mut s, 1);
    let d = settle(&mut s, now);
    let (agent, child, attempt, _) = d[0].clone();
    s.dispatch_result(
        child,
        &agent,
        attempt,
        DispatchOutcome::Rejected {
            code: RejectCode::AtCapacity,
            reason: "full".into(),
        },
        now,
    );
    let d2 = settle(&mut s, now);
    assert_eq!(d2.len(), 1);
    assert_ne!(d2[0].0, agent);
    assert_eq!(d2[0].2, 1, "a rejection starts nothing: same attempt");
}

#[test]
fn invalid_request_rejection_fails_the_child() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    start(&mut s, 1);
    let d = settle(&mut s, now);
    s.dispatch_result(
        d[0].1,
        "a",
        1,
        DispatchOutcome::Rejected {
            code: RejectCode::InvalidRequest,
            reason: "bad".into(),
        },
        now,
    );
    assert_eq!(summary(&s).state, "failed");
}

#[test]
fn failed_child_is_retried_by_policy_then_fails_the_execution() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    start(&mut s, 1);
    let d = settle(&mut s, now);
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Failed), now);
    let d2 = settle(&mut s, now);
    assert_eq!(d2[0].2, 2, "retry = new attempt");
    s.agent_event("a", finished(2, &d2[0].3, JobStatus::Failed), now);
    let sum = summary(&s);
    assert_eq!((sum.state.as_str(), sum.failed), ("failed", 1));
}

#[test]
fn agent_restart_loses_its_children() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "boot-1", now);
    start(&mut s, 2);
    settle(&mut s, now);
    reg(&mut s, "a", 2, "boot-2", now);
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 2);
    assert!(d.iter().all(|x| x.2 == 2));
}

#[test]
fn a_report_about_another_agents_job_is_refused_and_counted() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    reg(&mut s, "b", 1, "b1", now);
    start(&mut s, 1);
    let d = settle(&mut s, now);
    let (owner, _, _, id) = d[0].clone();
    let other = if owner == "a" { "b" } else { "a" };
    s.agent_event(other, finished(1, &id, JobStatus::Succeeded), now);
    let sum = summary(&s);
    assert_eq!(
        (sum.succeeded, sum.stale_events),
        (0, 1),
        "the owner's job is unaffected"
    );
    s.agent_event(&owner, finished(1, &id, JobStatus::Succeeded), now);
    assert_eq!(summary(&s).succeeded, 1);
}

#[test]
fn sequence_gap_resets_the_stream() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", now);
    start(&mut s, 1);
    let d = settle(&mut s, now);
    s.agent_event("a", finished(5, &d[0].3, JobStatus::Succeeded), now);
    assert!(
        s.take_effects()
            .iter()
            .any(|e| matches!(e, Effect::ResetStream { .. }))
    );
    assert_eq!(summary(&s).succeeded, 0, "nothing applied past a gap");
}

#[derive(Debug, Clone)]
enum Op {
    Accept(usize),
    Reject(usize),
    Finish(usize, bool),
    Replay(usize),
    Lose(u8),
    Tick,
    Cancel,
    Start(usize),
    CancelChild(u32),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..64).prop_map(Op::Accept),
        (0usize..64).prop_map(Op::Reject),
        (0usize..64, any::<bool>()).prop_map(|(i, ok)| Op::Finish(i, ok)),
        (0usize..64).prop_map(Op::Replay),
        (0u8..3).prop_map(Op::Lose),
        Just(Op::Tick),
        Just(Op::Cancel),
        (0usize..64).prop_map(Op::Start),
        (0u32..8).prop_map(Op::CancelChild),
    ]
}

proptest! {
    /// Whatever agents do — accept, reject, finish, repeat old reports, vanish —
    /// counts add up, no agent is given more than its slots, a terminal child
    /// stays terminal, and every child ends with the execution.
    #[test]
    fn state_machine_invariants(ops in prop::collection::vec(arb_op(), 1..120)) {
        let t0 = Now::read();
        let mut now = t0;
        let mut s = sched();
        let names = ["a", "b", "c"];
        for n in names { reg(&mut s, n, 2, "b1", now); }
        start(&mut s, 8);
        let mut seqs = Seqs(BTreeMap::new());
        let mut sent: Vec<(String, ChildRef, u32, DispatchId)> = settle(&mut s, now);
        let mut finished_events: Vec<(String, DispatchId, bool)> = Vec::new();
        let mut terminal_seen: BTreeMap<(String, u32), Phase> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Accept(i) if !sent.is_empty() => {
                    let (a, c, at, _) = sent[i % sent.len()].clone();
                    s.dispatch_result(c, &a, at, DispatchOutcome::Accepted, now);
                }
                Op::Reject(i) if !sent.is_empty() => {
                    let (a, c, at, _) = sent[i % sent.len()].clone();
                    s.dispatch_result(c, &a, at, DispatchOutcome::Rejected { code: RejectCode::AtCapacity, reason: "x".into() }, now);
                }
                Op::Finish(i, ok) if !sent.is_empty() => {
                    let (a, _, _, id) = sent[i % sent.len()].clone();
                    let seq = seqs.next(&a);
                    let st = if ok { JobStatus::Succeeded } else { JobStatus::Failed };
                    s.agent_event(&a, finished(seq, &id, st), now);
                    finished_events.push((a, id, ok));
                }
                Op::Replay(i) if !finished_events.is_empty() => {
                    let (a, id, ok) = finished_events[i % finished_events.len()].clone();
                    let seq = seqs.next(&a);
                    let st = if ok { JobStatus::Succeeded } else { JobStatus::Failed };
                    s.agent_event(&a, finished(seq, &id, st), now);
                }
                Op::Lose(k) => {
                    // Everyone but agent k heartbeats; time passes beyond the lease.
                    now += Duration::from_secs(6);
                    for (j, n) in names.iter().enumerate() {
                        if j != k as usize {
                            reg(&mut s, n, 2, "b1", now);
                        }
                    }
                    s.tick(now);
                }
                Op::Tick => s.tick(now),
                Op::Cancel if s.execution_view("e1").is_some() => {
                    s.cancel("e1", "prop", Now::read()).unwrap();
                }
                Op::Start(i) if !sent.is_empty() => {
                    let (a, _, _, id) = sent[i % sent.len()].clone();
                    let seq = seqs.next(&a);
                    let started = AgentReport {
                        seq,
                        at_unix_ms: 1,
                        body: Some(ReportBody::Started(JobStarted {
                            dispatch_id: Some(id),
                            pid: 7,
                        })),
                    };
                    s.agent_event(&a, started, now);
                }
                Op::CancelChild(i) if s.execution_view("e1").is_some() => {
                    s.cancel_child("e1", "fan", i, "prop", now).unwrap();
                }
                _ => {}
            }
            s.pump(now);
            if let Some(v) = s.execution_view("e1") {
                let sum = &v.summary;
                prop_assert_eq!(sum.total, 8);
                prop_assert_eq!(
                    sum.pending + sum.running + sum.succeeded + sum.failed + sum.cancelled,
                    8
                );
                for c in &v.children {
                    let key = (c.task.to_string(), c.index);
                    if let Some(p) = terminal_seen.get(&key) {
                        prop_assert_eq!(*p, c.phase, "a terminal phase changed");
                    } else if c.phase.is_terminal() {
                        terminal_seen.insert(key, c.phase);
                    }
                }
            } else {
                prop_assert_eq!(terminal_seen.len(), 8, "execution ended before all children");
            }
            for a in s.registry.entries() {
                prop_assert!(a.held_count() as u32 <= a.rec.slots, "agent over its slots");
            }
            prop_assert_eq!(s.stats.refused_steps, 0, "the scheduler only takes legal steps");
            for (slot, e) in s.execs.iter() {
                for (ti, run) in e.tasks.iter().enumerate() {
                    for (ci, c) in run.children.iter().enumerate() {
                        let cref = ChildRef { exec: slot, task: ti as u16, child: ci as u32 };
                        prop_assert_eq!(c.rec.phase, c.state().phase(), "the record is the state");
                        if c.rec.phase.is_on_agent() {
                            // On an agent: that agent, which counts it.
                            let agent = c.state().agent();
                            prop_assert!(agent.is_some(), "{:?} runs on no agent", cref);
                            let held = agent
                                .and_then(|a| s.registry.get(a.as_str()))
                                .is_some_and(|a| a.holds(cref));
                            prop_assert!(held, "{:?} is not in its agent's slots", cref);
                        }
                    }
                }
            }
            sent.extend(settle(&mut s, now));
        }
    }
}

#[test]
fn completion_latency_runs_from_dispatch_to_finished_event() {
    let t0 = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 4, "b1", t0);
    start(&mut s, 2);
    let d = settle(&mut s, t0);
    assert_eq!(d.len(), 2);
    for (i, (agent, child, attempt, id)) in d.iter().enumerate() {
        s.dispatch_result(*child, agent, *attempt, DispatchOutcome::Accepted, t0);
        let at = t0 + Duration::from_millis(100 * (i as u64 + 1));
        s.agent_event(agent, finished(i as u64 + 1, id, JobStatus::Succeeded), at);
    }
    // A repeat of a finished event is not a second completion.
    s.agent_event("a", finished(3, &d[0].3, JobStatus::Succeeded), t0);
    let h = &s.latency.completion_ms;
    assert_eq!(h.count(), 2);
    // Within the histogram's bucket width (≤ 1/16 of the value).
    assert!((100..=103).contains(&h.quantile(0.5)), "{h:?}");
    assert_eq!(h.max(), 200);
    assert_eq!(s.stats.dispatches, 2);
}

/// Agent `agent` refuses `child` for good (run-as denied).
fn refuse_for_good(s: &mut Scheduler, agent: &str, child: ChildRef, attempt: u32, now: Now) {
    s.dispatch_result(
        child,
        agent,
        attempt,
        DispatchOutcome::Rejected {
            code: RejectCode::RunAsDenied,
            reason: "no such user".into(),
        },
        now,
    );
}

#[test]
fn a_child_refused_for_good_waits_for_an_agent_that_is_down() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    reg(&mut s, "b", 1, "b1", now);
    start(&mut s, 1);
    let d = settle(&mut s, now);
    let (first, child, attempt, _) = d[0].clone();
    let other = if first == "a" { "b" } else { "a" };
    // The only other agent that could take it is down for a while.
    s.set_admin(other, AdminAction::Cordon, Now::read())
        .unwrap();
    refuse_for_good(&mut s, &first, child, attempt, now);
    assert!(settle(&mut s, now).is_empty());
    assert_eq!(summary(&s).state, "running", "it waits for {other}");
    // It comes back, is asked, and refuses too: now the child fails.
    s.set_admin(other, AdminAction::Uncordon, Now::read())
        .unwrap();
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, other);
    refuse_for_good(&mut s, other, d[0].1, d[0].2, now);
    s.pump(now);
    assert_eq!(summary(&s).state, "failed");
}

#[test]
fn a_revoked_agent_does_not_hold_a_refused_child() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    reg(&mut s, "b", 1, "b1", now);
    start(&mut s, 1);
    let d = settle(&mut s, now);
    let (first, child, attempt, _) = d[0].clone();
    let other = if first == "a" { "b" } else { "a" };
    s.set_admin(other, AdminAction::Revoke, Now::read())
        .unwrap();
    refuse_for_good(&mut s, &first, child, attempt, now);
    s.pump(now);
    assert_eq!(summary(&s).state, "failed", "{other} never comes back");
}

/// The scheduler reads no clock: the times records show are the times its
/// inputs carried.
#[test]
fn records_show_the_time_the_inputs_carried() {
    let t0 = Now {
        instant: std::time::Instant::now(),
        unix_ms: 1_000_000,
    };
    let mut s = sched();
    reg(&mut s, "a", 4, "b1", t0);
    start(&mut s, 1);
    let d = settle(&mut s, t0);
    let later = t0 + Duration::from_secs(3);
    s.dispatch_result(d[0].1, "a", d[0].2, DispatchOutcome::Accepted, later);
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Succeeded), later);
    let v = s.execution_view("e1").unwrap();
    assert_eq!(v.children[0].finished_unix_ms, 1_003_000);
    let e = s.execs.by_id("e1").expect("e1 is in memory");
    assert_eq!(e.rec.state, ExecutionState::Succeeded);
    assert_eq!(e.rec.finished_unix_ms, 1_003_000);
}

/// An ended child never changes again, in release builds too: a step out of
/// its end is refused, counted, and leaves the child and its counters as
/// they were.
#[test]
fn a_step_out_of_an_ended_child_is_refused_and_counted() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 4, "b1", now);
    start(&mut s, 1);
    let d = settle(&mut s, now);
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Succeeded), now);
    let cref = d[0].1;
    let before = s.execution_view("e1").unwrap();
    assert!(!s.set_state(cref, Step::Dispatch(AgentId::new("a"))));
    assert!(!s.set_state(cref, Step::End(End::Failed)));
    assert_eq!(s.stats.refused_steps, 2);
    let after = s.execution_view("e1").unwrap();
    assert_eq!(after.children, before.children);
    assert_eq!(after.summary, before.summary);
    assert!(
        s.registry.get("a").unwrap().held_count() == 0,
        "no slot taken"
    );
}
