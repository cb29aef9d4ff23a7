//! Tests of the outbox: numbering across reopen, acknowledgement, lazy events,
//! concurrent appends.

use super::*;
use baton_proto::{DispatchId, JobProgress};
use std::time::Duration;

fn body(n: u32) -> agent_event::Body {
    agent_event::Body::Progress(JobProgress {
        dispatch_id: Some(DispatchId {
            execution_id: "e".into(),
            task_path: "t".into(),
            item_index: n,
            attempt: 1,
        }),
        message: format!("m{n}"),
    })
}

fn item(e: &AgentEvent) -> u32 {
    match &e.body {
        Some(agent_event::Body::Progress(p)) => p.dispatch_id.as_ref().unwrap().item_index,
        other => panic!("unexpected {other:?}"),
    }
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

#[tokio::test]
async fn append_reopen_keeps_order_and_numbering() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent.redb");
        let id;
        {
            let ob = Outbox::open(&path).unwrap();
            id = ob.outbox_id().to_string();
            assert_eq!(ob.append(body(1)).await.unwrap(), 1);
            assert_eq!(ob.append(body(2)).await.unwrap(), 2);
            assert_eq!(ob.append(body(3)).await.unwrap(), 3);
            assert_eq!(*ob.subscribe().borrow(), 3);
        }
        let ob = Outbox::open(&path).unwrap();
        assert_eq!(ob.outbox_id(), id, "outbox id is per data dir");
        let events = ob.unacked_from(0);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(events.iter().map(item).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(events.iter().all(|e| e.at_unix_ms > 0));
        assert_eq!(ob.unacked_from(2).len(), 1);
        assert_eq!(ob.append(body(4)).await.unwrap(), 4);
    })
    .await;
}

#[tokio::test]
async fn ack_deletes_and_survives_reopen() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        {
            let ob = Outbox::open(&path).unwrap();
            for n in 1..=5 {
                ob.append(body(n)).await.unwrap();
            }
            ob.ack(3).await.unwrap();
            assert_eq!(
                ob.unacked_from(0).iter().map(|e| e.seq).collect::<Vec<_>>(),
                [4, 5]
            );
            ob.ack(2).await.unwrap(); // older ack: no-op
            ob.ack(100).await.unwrap(); // beyond the end: clamps
            assert_eq!(ob.unacked_len(), 0);
        }
        let ob = Outbox::open(&path).unwrap();
        assert_eq!(ob.unacked_len(), 0);
        assert_eq!(
            ob.append(body(6)).await.unwrap(),
            6,
            "numbering continues after ack"
        );
    })
    .await;
}

#[tokio::test]
async fn a_lazy_event_is_durable_with_the_next_durable_commit_and_in_order() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let ob = Outbox::open(&path).unwrap();
        let lazy = ob.enqueue_lazy(body(1)).await.unwrap();
        // The durable append after it carries it: both are sent, in order.
        assert_eq!(ob.append(body(2)).await.unwrap(), 2);
        assert_eq!(lazy.await.unwrap(), 1);
        let events = ob.unacked_from(0);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(events.iter().map(item).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(*ob.subscribe().borrow(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_lazy_event_alone_becomes_durable_within_lazy_max() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        {
            let ob = Outbox::open(&path).unwrap();
            let mut durable = ob.subscribe();
            let begin = std::time::Instant::now();
            let lazy = ob.enqueue_lazy(body(7)).await.unwrap();
            assert_eq!(lazy.await.unwrap(), 1);
            assert!(begin.elapsed() < LAZY_MAX + Duration::from_secs(2));
            durable.wait_for(|s| *s == 1).await.unwrap();
            assert_eq!(ob.unacked_len(), 1);
            // One more, dropped at once: closing makes it durable too.
            let _queued = ob.enqueue_lazy(body(8)).await.unwrap();
        }
        let ob = Outbox::open(&path).unwrap();
        let events = ob.unacked_from(0);
        assert_eq!(events.iter().map(item).collect::<Vec<_>>(), [7, 8]);
        assert_eq!(ob.append(body(9)).await.unwrap(), 3);
    })
    .await;
}

#[tokio::test]
async fn an_ack_with_lazy_events_pending_keeps_them() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let ob = Outbox::open(&path).unwrap();
        ob.append(body(1)).await.unwrap();
        let lazy = ob.enqueue_lazy(body(2)).await.unwrap();
        // An acknowledgement past what was sent deletes only what was sent.
        ob.ack(5).await.unwrap();
        assert_eq!(lazy.await.unwrap(), 2);
        assert_eq!(
            ob.unacked_from(0).iter().map(|e| e.seq).collect::<Vec<_>>(),
            [2]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_durable_and_unique() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let n = 300u32;
        {
            let ob = Arc::new(Outbox::open(&path).unwrap());
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..n {
                let ob = ob.clone();
                tasks.spawn(async move { (i, ob.append(body(i)).await.unwrap()) });
            }
            let mut seqs: Vec<u64> = tasks.join_all().await.into_iter().map(|(_, s)| s).collect();
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=u64::from(n)).collect::<Vec<_>>());
        }
        let ob = Outbox::open(&path).unwrap();
        let events = ob.unacked_from(0);
        assert_eq!(events.len(), n as usize);
        let mut items: Vec<u32> = events.iter().map(item).collect();
        items.sort_unstable();
        assert_eq!(items, (0..n).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_of_lazy_events_still_flushes_within_lazy_max() {
    use std::sync::atomic::{AtomicBool, Ordering};
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let ob = Arc::new(Outbox::open(&dir.path().join("agent.redb")).unwrap());
        let first = ob.enqueue_lazy(body(0)).await.unwrap();
        // Lazy events keep the writer's queue full until the first one is
        // durable (or for far longer than LAZY_MAX): its timer never finds the
        // queue empty. How soon it comes is a benchmark's business; that it
        // comes while the stream goes on is this test's.
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = {
            let (ob, stop) = (ob.clone(), stop.clone());
            tokio::spawn(async move {
                let begin = std::time::Instant::now();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    if begin.elapsed() > LAZY_MAX * 500 {
                        return (n, false);
                    }
                    n += 1;
                    drop(ob.enqueue_lazy(body(n)).await.unwrap());
                }
                (n, true)
            })
        };
        let seq = tokio::time::timeout(LAZY_MAX * 250, first)
            .await
            .expect("the first lazy event waited for the stream to end")
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(seq, 1);
        let (n, streaming) = feeder.await.unwrap();
        assert!(
            streaming,
            "the stream ended before the first lazy event was durable"
        );
        assert!(n > 1);
    })
    .await;
}

#[tokio::test]
async fn a_new_outbox_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let _ob = Outbox::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    })
    .await;
}
