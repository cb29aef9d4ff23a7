//! The loop's promise, against a store that holds and fails commits and a
//! performer that records what leaves: nothing — a reply, a dispatch, an
//! acknowledgement — leaves before the batch that caused it is durable; a
//! failed commit stops the loop, its callers get an error and none of its
//! effects is performed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::{AgentReport, JobProgress, ReportBody};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Performer, run};
use crate::error::CoordinatorError;
use crate::records::{
    ChildRecord, ExecutionRecord, ExecutionState, Phase, SeqRecord, agent_key, child_key,
    execution_key, seq_key,
};
use crate::scheduler::{Effect, Scheduler, SchedulerConfig};
use crate::scheduler_task::fixtures::{execution, registration};
use crate::scheduler_task::handle::SchedulerHandle;
use crate::store::fake::FakeStore;

/// How long a test watches for something that must not happen yet. Real
/// time (tokio's paused clock needs its `test-util` feature, which would
/// rebuild tokio and everything above it for every test build): what the
/// loop would send early leaves within microseconds, so this is ample.
const QUIET: Duration = Duration::from_millis(100);

/// One effect that left the loop, and whether the state that caused it was
/// in the store when it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Dispatch { durable: bool },
    Ack { durable: bool },
    Other,
}

/// A [`Performer`] that records, and checks the store as each effect leaves.
struct Recorder {
    store: Arc<FakeStore>,
    left: Arc<Mutex<Vec<Left>>>,
}

impl Recorder {
    fn check(&self, effect: &Effect) -> Left {
        match effect {
            Effect::Dispatch {
                agent,
                attempt,
                spec,
                ..
            } => {
                // The intent (attempt N on agent X) is in the store.
                let id = &spec.dispatch_id;
                let durable = self
                    .store
                    .value(&child_key(
                        id.execution_id.as_str(),
                        &id.task_path,
                        id.item_index,
                    ))
                    .and_then(|v| serde_json::from_slice::<ChildRecord>(&v).ok())
                    .is_some_and(|c| {
                        c.phase == Phase::Dispatching
                            && c.attempt == *attempt
                            && c.agent.as_deref() == Some(agent.as_str())
                    });
                Left::Dispatch { durable }
            }
            Effect::Ack { agent, seq } => {
                // The events acknowledged are applied in the store.
                let durable = self
                    .store
                    .value(&seq_key(agent))
                    .and_then(|v| serde_json::from_slice::<SeqRecord>(&v).ok())
                    .is_some_and(|s| s.applied_seq >= *seq);
                Left::Ack { durable }
            }
            _ => Left::Other,
        }
    }
}

impl Performer for Recorder {
    fn perform(&mut self, effects: Vec<Effect>) {
        let checked: Vec<Left> = effects.iter().map(|e| self.check(e)).collect();
        self.left
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(checked);
    }

    fn registered(&mut self, _: &str) {}

    fn stream_opened(&mut self, _: String, _: watch::Sender<u64>) {}
}

/// A running loop over a fake store, with a recording performer.
struct Loop {
    handle: SchedulerHandle,
    store: Arc<FakeStore>,
    left: Arc<Mutex<Vec<Left>>>,
    task: JoinHandle<Result<(), CoordinatorError>>,
}

impl Loop {
    /// Spawns the loop (the epoch is the leadership's: nothing to commit first).
    async fn start() -> Loop {
        let store = FakeStore::new();
        let left = Arc::default();
        let (tx, rx) = mpsc::channel(64);
        let out = Recorder {
            store: store.clone(),
            left: Arc::clone(&left),
        };
        let sched = Scheduler::new(SchedulerConfig::default(), 1);
        let task = tokio::spawn(run(sched, store.clone(), rx, out, CancellationToken::new()));
        Loop {
            handle: SchedulerHandle::new(tx),
            store,
            left,
            task,
        }
    }

    fn left(&self) -> Vec<Left> {
        self.left.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn dispatches(&self) -> Vec<Left> {
        let mut d = self.left();
        d.retain(|l| matches!(l, Left::Dispatch { .. }));
        d
    }

    /// Waits until `n` effects matching `pick` have left.
    async fn wait_left(&self, n: usize, pick: fn(&Left) -> bool) -> Vec<Left> {
        for _ in 0..1000 {
            let mut got = self.left();
            got.retain(pick);
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "fewer than {n} such effects left the loop: {:?}",
            self.left()
        );
    }

    /// Holds commits from now on and returns how many were asked for so far.
    fn hold(&self) -> usize {
        self.store.hold_commits();
        self.store.commits_started()
    }

    /// Waits until the commit after `before` is asked for, then lets the loop
    /// run for a while: long enough for anything it would send early to have
    /// left (it would leave at once; the loop only waits for the commit now).
    async fn commit_waiting(&self, before: usize) {
        self.store.wait_commits_started(before + 1).await;
        tokio::time::sleep(QUIET).await;
    }

    fn record(&self, id: &str) -> Option<ExecutionRecord> {
        self.store
            .value(&execution_key(id))
            .and_then(|v| serde_json::from_slice(&v).ok())
    }
}

#[tokio::test]
async fn a_registration_is_answered_only_once_the_agent_record_is_durable() {
    let l = Loop::start().await;
    let before = l.hold();
    let handle = l.handle.clone();
    let registered = tokio::spawn(async move { handle.register(registration("a1", 4)).await });
    l.commit_waiting(before).await;
    assert!(!registered.is_finished(), "answered before the commit");
    assert!(l.store.value(&agent_key("a1")).is_none());

    l.store.release_commits();
    let resp = registered.await.unwrap().unwrap();
    assert_eq!(resp.agent_id, "a1");
    assert!(l.store.value(&agent_key("a1")).is_some());
}

#[tokio::test]
async fn a_start_is_answered_and_its_children_dispatched_only_once_durable() {
    let l = Loop::start().await;
    l.handle.register(registration("a1", 8)).await.unwrap();
    let before = l.hold();
    let (rec, plan) = execution("e1", 3);
    let handle = l.handle.clone();
    let started = tokio::spawn(async move { handle.start(rec, plan).await });
    l.commit_waiting(before).await;
    assert!(!started.is_finished(), "answered before the commit");
    assert_eq!(l.dispatches(), [], "dispatched before the commit");
    assert!(l.record("e1").is_none());

    l.store.release_commits();
    assert_eq!(started.await.unwrap().unwrap(), "e1");
    let answered = tokio::time::Instant::now();
    let durable = l.store.first_commit_of(&execution_key("e1")).unwrap();
    assert!(durable.at <= answered);
    let dispatched = l.wait_left(3, |e| matches!(e, Left::Dispatch { .. })).await;
    assert_eq!(
        dispatched,
        [Left::Dispatch { durable: true }; 3],
        "each dispatch leaves after its intent is in the store"
    );
}

#[tokio::test]
async fn a_cancel_is_answered_only_once_the_request_is_durable() {
    let l = Loop::start().await;
    // No agent: the children wait, pending; a cancel ends them at once.
    let (rec, plan) = execution("e1", 3);
    l.handle.start(rec, plan).await.unwrap();
    let before = l.hold();
    let handle = l.handle.clone();
    let cancelled = tokio::spawn(async move { handle.cancel("e1".into(), "enough".into()).await });
    l.commit_waiting(before).await;
    assert!(!cancelled.is_finished(), "answered before the commit");
    assert!(l.record("e1").is_some_and(|r| !r.cancel_requested));

    l.store.release_commits();
    let outcome = cancelled.await.unwrap().unwrap();
    assert_eq!(
        (
            outcome.state.as_str(),
            outcome.children_cancelled,
            outcome.already_ended
        ),
        ("cancelled", 3, false)
    );
    let rec = l.record("e1").unwrap();
    assert!(rec.cancel_requested);
    assert_eq!(rec.state, ExecutionState::Cancelled);
}

#[tokio::test]
async fn a_child_cancel_is_answered_only_once_the_request_is_durable() {
    let l = Loop::start().await;
    let (rec, plan) = execution("e1", 3);
    l.handle.start(rec, plan).await.unwrap();
    let before = l.hold();
    let handle = l.handle.clone();
    let cancelled = tokio::spawn(async move {
        handle
            .cancel_child("e1".into(), "fan".into(), 1, "not this one".into())
            .await
    });
    l.commit_waiting(before).await;
    assert!(!cancelled.is_finished(), "answered before the commit");

    l.store.release_commits();
    assert_eq!(cancelled.await.unwrap().unwrap().as_str(), "cancelled");
    let child: ChildRecord =
        serde_json::from_slice(&l.store.value(&child_key("e1", "fan", 1)).unwrap()).unwrap();
    assert_eq!(child.phase, Phase::Cancelled);
}

#[tokio::test]
async fn an_agent_event_is_acknowledged_only_once_it_is_durable() {
    let l = Loop::start().await;
    l.handle.register(registration("a1", 4)).await.unwrap();
    let (acks, _rx) = watch::channel(0);
    l.handle
        .open_stream("a1".into(), "boot-a1".into(), "fp-a1".into(), acks)
        .await
        .unwrap();
    let before = l.hold();
    let event = AgentReport {
        seq: 1,
        at_unix_ms: 1,
        body: Some(ReportBody::Progress(JobProgress {
            dispatch_id: None,
            message: "halfway".into(),
        })),
    };
    l.handle.event("a1".into(), event).await.unwrap();
    l.commit_waiting(before).await;
    assert!(
        !l.left().iter().any(|e| matches!(e, Left::Ack { .. })),
        "acknowledged before the commit: {:?}",
        l.left()
    );

    l.store.release_commits();
    let acked = l.wait_left(1, |e| matches!(e, Left::Ack { .. })).await;
    assert_eq!(acked, [Left::Ack { durable: true }]);
}

#[tokio::test]
async fn a_failed_commit_stops_the_loop_answers_an_error_and_performs_nothing_of_its_batch() {
    let mut l = Loop::start().await;
    l.handle.register(registration("a1", 8)).await.unwrap();
    l.store.fail_next_commits(1);
    let (rec, plan) = execution("e1", 3);
    let err = l.handle.start(rec, plan).await.unwrap_err();
    assert_eq!(err.code(), "SHUTTING_DOWN", "{err}");
    let stopped = (&mut l.task).await.unwrap().unwrap_err();
    assert_eq!(stopped.code(), "STORE_FAILED", "{stopped}");
    assert_eq!(l.dispatches(), [], "an effect of the failed batch left");
    assert!(l.record("e1").is_none());
    // Nothing is answered from memory that is ahead of the store.
    let err = l.handle.view("e1".into()).await.unwrap_err();
    assert_eq!(err.code(), "SHUTTING_DOWN");
}

#[tokio::test]
async fn through_the_real_performer_the_stream_sees_an_ack_only_once_durable() {
    let store = FakeStore::new();
    let (handle, _task) = crate::scheduler_task::spawn(
        Scheduler::new(SchedulerConfig::default(), 1),
        store.clone(),
        crate::transport::AgentDialer::new(crate::transport::Security::Insecure),
        CancellationToken::new(),
    );
    handle.register(registration("a1", 4)).await.unwrap();
    let (acks, mut acked) = watch::channel(0);
    handle
        .open_stream("a1".into(), "boot-a1".into(), "fp-a1".into(), acks)
        .await
        .unwrap();
    store.hold_commits();
    let before = store.commits_started();
    let event = AgentReport {
        seq: 1,
        at_unix_ms: 1,
        body: Some(ReportBody::Progress(JobProgress {
            dispatch_id: None,
            message: "halfway".into(),
        })),
    };
    handle.event("a1".into(), event).await.unwrap();
    store.wait_commits_started(before + 1).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(*acked.borrow(), 0, "acknowledged before the commit");

    store.release_commits();
    tokio::time::timeout(Duration::from_secs(10), acked.wait_for(|s| *s == 1))
        .await
        .expect("acknowledged once durable")
        .unwrap();
    let seq: SeqRecord = serde_json::from_slice(&store.value(&seq_key("a1")).unwrap()).unwrap();
    assert_eq!(seq.applied_seq, 1);
}

#[tokio::test]
async fn a_batch_over_the_store_limits_is_committed_in_chunks_and_released_after_the_last() {
    let l = Loop::start().await;
    l.handle.register(registration("a1", 300)).await.unwrap();
    l.store.set_limits(crate::store::Limits {
        max_ops_per_commit: Some(128),
        max_bytes_per_commit: Some(1536 * 1024),
    });
    let before = l.store.applied().len();
    let (mut rec, _) = execution("e1", 300);
    let root = rec.files["p.toml"].replace("parallelism=100", "parallelism=1000");
    rec.files.insert("p.toml".into(), root);
    let plan = crate::prepare::plan_bundle("p.toml", &rec.files, &rec.params).unwrap();
    assert_eq!(l.handle.start(rec, plan).await.unwrap(), "e1");
    let answered = tokio::time::Instant::now();
    let commits = l.store.applied()[before..].to_vec();
    assert!(
        commits.len() >= 3,
        "301 operations in chunks of 128: {}",
        commits.len()
    );
    assert!(commits.iter().all(|c| c.ops.len() <= 128));
    let last_child = l
        .store
        .first_commit_of(&child_key("e1", "fan", 299))
        .unwrap();
    assert!(last_child.at <= answered, "answered before the last chunk");
    let dispatched = l
        .wait_left(300, |e| matches!(e, Left::Dispatch { .. }))
        .await;
    assert_eq!(
        dispatched,
        [Left::Dispatch { durable: true }; 300],
        "every dispatch leaves after the last chunk is durable"
    );
}
