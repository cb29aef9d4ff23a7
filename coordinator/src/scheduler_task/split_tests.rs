//! Flushes larger than the store's limits, committed in chunks: the order
//! of the chunks (acknowledgements last), and what a crash between two
//! chunks leaves — recovery and the agent's resent events end with every
//! child recorded exactly once.

use std::collections::BTreeMap;

use crate::domain::{AgentReport, DispatchId, JobFinished, JobStatus, ReportBody};

use crate::clock::Now;
use crate::keys::{CHILD_PREFIX, SEQ_PREFIX, child_key, execution_key, seq_key};
use crate::records::{ChildRecord, ExecutionRecord, ExecutionState, Phase, SeqRecord};
use crate::scheduler::{Effect, Scheduler, SchedulerConfig};
use crate::scheduler_task::fixtures::{execution, registration};
use crate::secrets::SealingKey;
use crate::store::fake::FakeStore;
use crate::store::split::commit_in_chunks;
use crate::store::{Limits, Op, Store};

const CHILDREN: u32 = 500;

fn limits() -> Limits {
    Limits {
        max_ops_per_commit: Some(128),
        max_bytes_per_commit: Some(1536 * 1024),
    }
}

/// Flushes `s` and commits it in chunks, as the loop does; returns the
/// effects released (only after the last chunk) and how many commits it took.
async fn flush(s: &mut Scheduler, store: &FakeStore) -> (Vec<Effect>, usize) {
    s.pump(Now::read());
    let (ops, written) = s.flush();
    let chunks = commit_in_chunks(store, ops).await.unwrap();
    s.committed_chunks(written, &chunks);
    (s.take_effects(), chunks.commits())
}

fn dispatch_ids(effects: &[Effect]) -> Vec<DispatchId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch { spec, .. } => Some(spec.dispatch_id.clone()),
            _ => None,
        })
        .collect()
}

fn finished(seq: u64, id: &DispatchId) -> AgentReport {
    AgentReport {
        seq,
        at_unix_ms: 1,
        body: Some(ReportBody::Finished(JobFinished {
            dispatch_id: Some(id.clone()),
            status: JobStatus::Succeeded,
            ..Default::default()
        })),
    }
}

/// Execution `e1` of the fan-out fixture with 500 children, all allowed to
/// run at once.
fn wide_execution() -> (ExecutionRecord, crate::prepare::Plan) {
    let (mut rec, _) = execution("e1", CHILDREN);
    let root = rec.files["p.toml"].replace("parallelism=100", "parallelism=1000");
    rec.files.insert("p.toml".into(), root);
    let plan = crate::prepare::plan_bundle("p.toml", &rec.files, &rec.params).unwrap();
    (rec, plan)
}

/// A scheduler with agent `a1` (room for every child) and a running
/// execution `e1` of 500 children, all dispatched and durable.
async fn dispatched(store: &FakeStore) -> (Scheduler, Vec<DispatchId>) {
    let mut s = Scheduler::new(SchedulerConfig::default(), 1);
    let now = Now::read();
    s.register(registration("a1", CHILDREN), now).unwrap();
    s.open_stream("a1", "boot-a1", "fp-a1", now).unwrap();
    let (rec, plan) = wide_execution();
    s.start(rec, plan, now);
    let (effects, commits) = flush(&mut s, store).await;
    assert!(commits >= 4, "501 operations in chunks of 128: {commits}");
    let ids = dispatch_ids(&effects);
    assert_eq!(ids.len(), CHILDREN as usize);
    (s, ids)
}

/// The child keys written with a terminal phase, counted over every commit.
fn terminal_writes(store: &FakeStore) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for c in store.applied() {
        for op in c.ops {
            if let Op::Put { key, value, .. } = op
                && key.starts_with(CHILD_PREFIX)
                && serde_json::from_slice::<ChildRecord>(&value)
                    .is_ok_and(|r| r.phase.is_terminal())
            {
                *seen.entry(key).or_default() += 1;
            }
        }
    }
    seen
}

#[tokio::test]
async fn a_large_flush_is_chunked_with_the_acknowledgements_in_the_last_chunk() {
    let store = FakeStore::new();
    store.set_limits(limits());
    let (mut s, ids) = dispatched(&store).await;
    let before = store.applied().len();
    for (i, id) in ids.iter().enumerate() {
        s.agent_event("a1", finished(i as u64 + 1, id), Now::read());
    }
    let (effects, commits) = flush(&mut s, &store).await;
    assert!(
        commits >= 4,
        "500 children and more in chunks of 128: {commits}"
    );
    let applied = store.applied();
    let chunks = &applied[before..];
    assert_eq!(chunks.len(), commits);
    for (i, c) in chunks.iter().enumerate() {
        assert!(c.ops.len() <= 128);
        let seqs = c.keys().filter(|k| k.starts_with(SEQ_PREFIX)).count();
        let last = i + 1 == chunks.len();
        assert_eq!(
            seqs,
            usize::from(last),
            "the sequence record is in the last chunk only"
        );
    }
    // The acknowledgement is released, after the last chunk.
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Ack { agent, seq } if agent == "a1" && *seq == 500))
    );
    let rec: ExecutionRecord =
        serde_json::from_slice(&store.value(&execution_key("e1")).unwrap()).unwrap();
    assert_eq!(rec.state, ExecutionState::Succeeded);
}

#[tokio::test]
async fn a_crash_between_chunks_is_recovered_and_resent_events_record_each_child_once() {
    let store = FakeStore::new();
    store.set_limits(limits());
    let (mut s, ids) = dispatched(&store).await;
    for (i, id) in ids.iter().enumerate() {
        s.agent_event("a1", finished(i as u64 + 1, id), Now::read());
    }
    s.pump(Now::read());
    let (ops, _written) = s.flush();
    // The first chunk applies, the second fails: the process "crashes" here.
    store.hold_commits();
    let before = store.commits_started();
    let commit = {
        let store = store.clone();
        tokio::spawn(async move { commit_in_chunks(store.as_ref(), ops).await })
    };
    store.wait_commits_started(before + 1).await;
    store.fail_next_commits(1);
    store.release_commits();
    assert!(commit.await.unwrap().is_err());
    drop(s);
    let partial = terminal_writes(&store).len();
    assert!(
        partial > 0 && partial < CHILDREN as usize,
        "some children ended in the first chunk: {partial}"
    );
    let acked = store
        .value(&seq_key("a1"))
        .and_then(|v| serde_json::from_slice::<SeqRecord>(&v).ok())
        .map_or(0, |s| s.applied_seq);
    assert_eq!(acked, 0, "nothing was acknowledged");

    // Restart: recovery, then the agent comes back and resends every event
    // after the last one acknowledged (none).
    let key = SealingKey::from_bytes(&[7; 32]).unwrap();
    let mut s = crate::recovery::load(store.as_ref(), SchedulerConfig::default(), &key, 2)
        .await
        .unwrap();
    let now = Now::read();
    let resp = s.register(registration("a1", CHILDREN), now).unwrap();
    assert_eq!(resp.acked_seq, 0);
    s.open_stream("a1", "boot-a1", "fp-a1", now).unwrap();
    for (i, id) in ids.iter().enumerate() {
        s.agent_event("a1", finished(i as u64 + 1, id), Now::read());
    }
    let (effects, _) = flush(&mut s, &store).await;
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Ack { agent, seq } if agent == "a1" && *seq == 500))
    );

    let writes = terminal_writes(&store);
    assert_eq!(writes.len(), CHILDREN as usize, "every child ended");
    assert!(
        writes.values().all(|&n| n == 1),
        "no child recorded twice: {:?}",
        writes
            .iter()
            .filter(|(_, n)| **n > 1)
            .take(3)
            .collect::<Vec<_>>()
    );
    for i in 0..CHILDREN {
        let c: ChildRecord =
            serde_json::from_slice(&store.value(&child_key("e1", "fan", i)).unwrap()).unwrap();
        assert_eq!((c.phase, c.attempt), (Phase::Succeeded, 1), "child {i}");
    }
    let seq: SeqRecord = serde_json::from_slice(&store.value(&seq_key("a1")).unwrap()).unwrap();
    assert_eq!(seq.applied_seq, 500);
    let rec: ExecutionRecord =
        serde_json::from_slice(&store.value(&execution_key("e1")).unwrap()).unwrap();
    assert_eq!(rec.state, ExecutionState::Succeeded);
}

#[tokio::test]
async fn children_cut_short_by_a_crash_while_a_task_starts_are_made_after_recovery() {
    let store = FakeStore::new();
    store.set_limits(limits());
    let mut s = Scheduler::new(SchedulerConfig::default(), 1);
    let (rec, plan) = execution("e1", CHILDREN);
    s.start(rec, plan, Now::read());
    let (ops, _written) = s.flush();
    // The execution and the first children land; the rest never do.
    store.hold_commits();
    let before = store.commits_started();
    let commit = {
        let store = store.clone();
        tokio::spawn(async move { commit_in_chunks(store.as_ref(), ops).await })
    };
    store.wait_commits_started(before + 1).await;
    store.fail_next_commits(1);
    store.release_commits();
    assert!(commit.await.unwrap().is_err());
    let stored = store
        .range(&crate::keys::children_prefix("e1"))
        .await
        .unwrap();
    assert!(!stored.is_empty() && stored.len() < CHILDREN as usize);

    let key = SealingKey::from_bytes(&[7; 32]).unwrap();
    let mut s = crate::recovery::load(store.as_ref(), SchedulerConfig::default(), &key, 2)
        .await
        .unwrap();
    flush(&mut s, &store).await;
    let children = store
        .range(&crate::keys::children_prefix("e1"))
        .await
        .unwrap();
    assert_eq!(
        children.len(),
        CHILDREN as usize,
        "the missing children were made"
    );
    let view = s.execution_view("e1").unwrap();
    assert_eq!(view.summary.total, u64::from(CHILDREN));
}
