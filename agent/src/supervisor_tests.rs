//! Supervisor tests: real outbox, real processes.

use super::*;
use crate::model::PackageSource;
use baton_proto::{AgentEvent, JobStatus, RejectCode};

fn package(script: &str) -> String {
    format!(
        "name = 'child'\n[parameters.n]\ntype = 'int'\ndefault = 1\n[parameters.secret]\ntype = 'string'\nsensitive = true\ndefault = ''\n[tasks.a]\nexec = ['sh', '-c', {script:?}]\n"
    )
}

fn job(item: u32, text: &str) -> StartJob {
    StartJob {
        dispatch: DispatchKey {
            execution_id: "e".into(),
            task_path: "fan".into(),
            item_index: item,
            attempt: 1,
        },
        package: PackageSource {
            name: "child".into(),
            content_hash: baton_package::content_hash(text),
            content: Some(text.into()),
        },
        parameters: [("n".to_string(), "3".to_string())].into(),
        epoch: Epoch(1),
        deadline: None,
        traceparent: None,
        tracestate: None,
        folder: "/".into(),
    }
}

fn setup(dir: &std::path::Path, slots: u32) -> (Arc<Supervisor>, Arc<Outbox>) {
    let config = AgentConfig {
        slots,
        data_dir: dir.to_path_buf(),
        kill_grace_ms: 300,
        ..AgentConfig::default()
    };
    let outbox = Arc::new(Outbox::open(&dir.join("agent.redb")).unwrap());
    (Supervisor::new(&config, outbox.clone()), outbox)
}

/// Waits until the outbox holds `n` events.
async fn events(outbox: &Outbox, n: usize) -> Vec<AgentEvent> {
    let mut rx = outbox.subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let evs = outbox.unacked_from(0);
            if evs.len() >= n {
                return evs;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("events did not arrive")
}

fn finished(e: &AgentEvent) -> &JobFinished {
    match &e.body {
        Some(Body::Finished(f)) => f,
        other => panic!("expected finished, got {other:?}"),
    }
}

#[tokio::test]
async fn accepted_job_emits_started_then_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, outbox) = setup(dir.path(), 2);
    let text = package("echo n=$BATON_PARAM_N >> $BATON_OUTPUT");
    sup.start_job(job(1, &text)).unwrap();
    let evs = events(&outbox, 2).await;
    let Some(Body::Started(s)) = &evs[0].body else {
        panic!("{evs:?}")
    };
    assert!(s.pid > 0);
    let f = finished(&evs[1]);
    assert_eq!(f.status, JobStatus::Succeeded as i32);
    assert_eq!(f.outputs.get("n").map(String::as_str), Some("3"));
    assert_eq!(f.dispatch_id, Some(job(1, &text).dispatch.to_proto()));
    // The slot is free again and GetJob knows the result.
    assert!(matches!(
        sup.job_state(&job(1, &text).dispatch),
        JobState::Finished { exit_code: 0, .. }
    ));
    assert_eq!(sup.load().running, 0);
}

#[tokio::test]
async fn same_dispatch_twice_starts_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, outbox) = setup(dir.path(), 1);
    let text = package("sleep 0.3");
    sup.start_job(job(1, &text)).unwrap();
    sup.start_job(job(1, &text)).unwrap();
    assert_eq!(sup.jobs_spawned(), 1);
    // A different dispatch is refused: the one slot is taken.
    let r = sup.start_job(job(2, &text)).unwrap_err();
    assert_eq!(r.code, RejectCode::AtCapacity);
    assert_eq!(r.reason, "1 of 1 slots busy");
    let evs = events(&outbox, 2).await;
    assert_eq!(evs.len(), 2);
    // Still accepted (not started) after it finished.
    sup.start_job(job(1, &text)).unwrap();
    assert_eq!(sup.jobs_spawned(), 1);
}

#[tokio::test]
async fn cancel_stops_the_job_and_draining_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, outbox) = setup(dir.path(), 4);
    let text = package("sleep 30");
    let key = job(1, &text).dispatch;
    sup.start_job(job(1, &text)).unwrap();
    assert_eq!(sup.job_state(&key), JobState::Running);
    events(&outbox, 1).await; // started
    assert!(sup.cancel_job(&key));
    let evs = events(&outbox, 2).await;
    assert_eq!(finished(&evs[1]).status, JobStatus::Cancelled as i32);
    assert!(!sup.cancel_job(&key));

    sup.begin_drain();
    let r = sup.start_job(job(2, &text)).unwrap_err();
    assert_eq!(r.code, RejectCode::Draining);
    assert!(sup.load().draining);
}

#[tokio::test]
async fn stop_all_jobs_cancels_and_waits_for_events() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, outbox) = setup(dir.path(), 4);
    let text = package("sleep 30");
    for i in 0..3 {
        sup.start_job(job(i, &text)).unwrap();
    }
    events(&outbox, 3).await; // three started
    sup.begin_drain();
    assert!(sup.stop_all_jobs(Duration::from_secs(10)).await);
    let evs = outbox.unacked_from(0);
    let done: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::Finished(f)) => Some(f.status),
            _ => None,
        })
        .collect();
    assert_eq!(done, vec![JobStatus::Cancelled as i32; 3]);
}

#[tokio::test]
async fn stale_epoch_and_bad_package_are_rejected_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, _outbox) = setup(dir.path(), 4);
    let text = package("true");
    sup.observe_epoch(Epoch(5));
    let r = sup.start_job(job(1, &text)).unwrap_err();
    assert_eq!(r.code, RejectCode::StaleEpoch);
    let mut j = job(1, &text);
    j.epoch = Epoch(5);
    j.parameters.insert("secret".into(), "hunter2".into());
    j.parameters.insert("nope".into(), "hunter3".into());
    let r = sup.start_job(j).unwrap_err();
    assert_eq!(r.code, RejectCode::InvalidRequest);
    assert!(!r.reason.contains("hunter"), "{}", r.reason);
    assert_eq!(sup.jobs_spawned(), 0);
}

fn run_as_package(user: &str, script: &str) -> String {
    format!("name = 'child'\nrun_as = '{user}'\n[tasks.a]\nexec = ['sh', '-c', {script:?}]\n")
}

#[tokio::test]
async fn run_as_is_checked_at_every_start_and_refusals_are_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, _outbox) = setup(dir.path(), 4);
    let text = run_as_package("nobody", "true");
    let mut j = job(1, &text);
    j.parameters.clear();
    for _ in 0..2 {
        let r = sup.start_job(j.clone()).unwrap_err();
        assert_eq!(r.code, RejectCode::RunAsDenied);
        assert!(
            r.reason.contains("not allowed on this agent"),
            "{}",
            r.reason
        );
    }
    assert_eq!(sup.jobs_spawned(), 0);
}

#[tokio::test]
async fn allowed_run_as_job_runs_as_that_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("allowed_run_as_job_runs_as_that_user: skipped, not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = AgentConfig {
        slots: 2,
        data_dir: dir.path().to_path_buf(),
        kill_grace_ms: 300,
        allow_run_as: vec!["nobody:/etl".parse().unwrap()],
        ..AgentConfig::default()
    };
    let outbox = Arc::new(Outbox::open(&dir.path().join("agent.redb")).unwrap());
    let sup = Supervisor::new(&config, outbox.clone());
    let text = run_as_package("nobody", "echo uid=$(id -u) >> $BATON_OUTPUT");
    let mut j = job(1, &text);
    j.parameters.clear();
    j.folder = "/etlx".into();
    let r = sup.start_job(j.clone()).unwrap_err();
    assert_eq!(r.code, RejectCode::RunAsDenied);
    assert!(r.reason.contains("nobody for /etl"), "{}", r.reason);
    j.folder = "/etl/daily".into();
    sup.start_job(j).unwrap();
    let evs = events(&outbox, 2).await;
    let f = finished(&evs[1]);
    assert_eq!(f.status, JobStatus::Succeeded as i32, "{f:?}");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_eq!(
        f.outputs.get("uid").map(String::as_str),
        Some(nobody.uid.to_string().as_str())
    );
}

/// A job that leaves nothing gives its directory back and the next job runs in
/// it; a job that leaves a file keeps its directory.
#[tokio::test]
async fn a_job_that_leaves_nothing_gives_its_directory_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, outbox) = setup(dir.path(), 2);
    let silent = package("true");
    sup.start_job(job(1, &silent)).unwrap();
    events(&outbox, 2).await;
    let first = job(1, &silent).dispatch;
    let first_dir = scratch_dir(sup.scratch_root(), &first);
    assert!(sup.left_nothing(&first));
    assert!(!first_dir.exists(), "given back to the pool");
    assert_eq!(sup.settings.dirs.pooled(), 1);

    let talkative = package("echo hello");
    sup.start_job(job(2, &talkative)).unwrap();
    events(&outbox, 4).await;
    let second = job(2, &talkative).dispatch;
    assert_eq!(sup.settings.dirs.pooled(), 0, "taken from the pool");
    assert!(!sup.left_nothing(&second));
    let log = scratch_dir(sup.scratch_root(), &second).join(crate::job::layout::STDOUT_LOG);
    assert_eq!(std::fs::read_to_string(log).unwrap(), "hello\n");
}

/// `--queue`: jobs beyond the slots are accepted and wait, in order, for a
/// slot; the queue has a bound; a queued job that is cancelled ends without
/// starting a process.
#[tokio::test]
async fn queued_jobs_wait_for_a_slot_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        slots: 1,
        queue: 2,
        data_dir: dir.path().to_path_buf(),
        kill_grace_ms: 300,
        ..AgentConfig::default()
    };
    let outbox = Arc::new(Outbox::open(&dir.path().join("agent.redb")).unwrap());
    let sup = Supervisor::new(&config, outbox.clone());
    let text = package("sleep 0.3");
    for i in 1..=3 {
        sup.start_job(job(i, &text)).unwrap();
    }
    let full = sup.start_job(job(4, &text)).unwrap_err();
    assert_eq!(full.code, RejectCode::AtCapacity);
    assert!(
        sup.cancel_job(&job(3, &text).dispatch),
        "a queued job can be cancelled"
    );
    let evs = events(&outbox, 5).await;
    let order: Vec<(&str, u32)> = evs
        .iter()
        .map(|e| match &e.body {
            Some(Body::Started(s)) => ("started", s.dispatch_id.as_ref().unwrap().item_index),
            Some(Body::Finished(f)) => ("finished", f.dispatch_id.as_ref().unwrap().item_index),
            other => panic!("{other:?}"),
        })
        .collect();
    // Job 3 ends without starting (cancelled in the queue); 1 then 2 run one
    // after the other on the one slot.
    type Seen<'a> = Vec<(&'a str, u32)>;
    let (three, others): (Seen, Seen) = order.into_iter().partition(|(_, i)| *i == 3);
    assert_eq!(three, [("finished", 3)], "{evs:?}");
    assert_eq!(
        others,
        [
            ("started", 1),
            ("finished", 1),
            ("started", 2),
            ("finished", 2)
        ],
        "{evs:?}"
    );
    let cancelled = evs
        .iter()
        .find(|e| matches!(&e.body, Some(Body::Finished(f)) if f.dispatch_id.as_ref().unwrap().item_index == 3))
        .map(finished)
        .unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled as i32);
    assert!(
        cancelled.reason.contains("queued"),
        "{:?}",
        cancelled.reason
    );
    assert_eq!(sup.load().running, 0);
}

/// A dispatch the agent runs is the same job again even after admission's
/// memory of accepted ids has let it go (a restarted coordinator re-sends
/// every child it last saw dispatched): accepted, nothing new started.
#[tokio::test]
async fn a_running_dispatch_sent_again_starts_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let (sup, outbox) = setup(dir.path(), 2);
    let text = package("sleep 0.5");
    sup.start_job(job(1, &text)).unwrap();
    events(&outbox, 1).await;
    // Forget the accepted ids, as a busy agent does after 100,000 others.
    sup.state.lock().unwrap().admission = Admission::new(2);
    sup.start_job(job(1, &text)).unwrap();
    assert_eq!(sup.load().running, 1);
    assert_eq!(sup.jobs_spawned(), 1);
    let evs = events(&outbox, 2).await;
    assert!(matches!(evs[1].body, Some(Body::Finished(_))), "{evs:?}");
    // Finished and still remembered: the same again.
    sup.state.lock().unwrap().admission = Admission::new(2);
    sup.start_job(job(1, &text)).unwrap();
    assert_eq!(sup.jobs_spawned(), 1);
}

/// Jobs whose package came by hash only and must be fetched first.
mod fetch {
    use std::time::Duration;

    use baton_proto::{AgentEvent, JobStatus, agent_event::Body};

    use super::*;
    use crate::config::AgentConfig;
    use crate::model::{Epoch, PackageSource};
    use crate::outbox::Outbox;

    const CHILD: &str =
        "name = 'child'\n[tasks.a]\nexec = ['sh', '-c', 'echo ok=1 >> $BATON_OUTPUT']\n";

    /// A dispatch of `CHILD` by hash only, as the coordinator sends catalog packages.
    fn by_hash(item: u32) -> StartJob {
        StartJob {
            dispatch: DispatchKey {
                execution_id: "e".into(),
                task_path: "fan".into(),
                item_index: item,
                attempt: 1,
            },
            package: PackageSource {
                name: "child".into(),
                content_hash: baton_package::content_hash(CHILD),
                content: None,
            },
            parameters: Default::default(),
            epoch: Epoch(1),
            deadline: None,
            traceparent: None,
            tracestate: None,
            folder: "/".into(),
        }
    }

    fn setup(dir: &std::path::Path) -> (Arc<Supervisor>, Arc<Outbox>) {
        let config = AgentConfig {
            slots: 2,
            data_dir: dir.to_path_buf(),
            kill_grace_ms: 300,
            ..AgentConfig::default()
        };
        let outbox = Arc::new(Outbox::open(&dir.join("agent.redb")).unwrap());
        (Supervisor::new(&config, outbox.clone()), outbox)
    }

    async fn events(outbox: &Outbox, n: usize) -> Vec<AgentEvent> {
        let mut rx = outbox.subscribe();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let evs = outbox.unacked_from(0);
                if evs.len() >= n {
                    return evs;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("events did not arrive")
    }

    fn last_finished(evs: &[AgentEvent]) -> &baton_proto::JobFinished {
        match evs.last().and_then(|e| e.body.as_ref()) {
            Some(Body::Finished(f)) => f,
            other => panic!("expected finished, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cached_package_runs_and_an_unfetchable_one_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, outbox) = setup(dir.path());
        // No source to fetch from: refused at once, nothing runs.
        let r = sup.start_job(by_hash(1)).unwrap_err();
        assert_eq!(r.code, RejectCode::UnknownPackage);
        assert_eq!(sup.load().running, 0);

        // In the cache: accepted and run like an inline package.
        let cache = dir.path().join("packages");
        std::fs::create_dir_all(&cache).unwrap();
        let hash = baton_package::content_hash(CHILD);
        std::fs::write(cache.join(format!("{hash}.toml")), CHILD).unwrap();
        sup.start_job(by_hash(2)).unwrap();
        let evs = events(&outbox, 2).await;
        let f = last_finished(&evs);
        assert_eq!(f.status, JobStatus::Succeeded as i32, "{}", f.reason);
        assert_eq!(f.outputs.get("ok").map(String::as_str), Some("1"));
    }

    #[tokio::test]
    async fn a_failed_fetch_fails_the_accepted_job_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, outbox) = setup(dir.path());
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead); // nobody listens there now
        sup.packages().set_source(url, None);
        // Accepted at once: the fetch happens after the answer.
        sup.start_job(by_hash(1)).unwrap();
        assert_eq!(
            sup.load().running,
            1,
            "the job holds its slot while fetching"
        );
        let evs = events(&outbox, 1).await;
        assert_eq!(evs.len(), 1, "no JobStarted: no process ran");
        let f = last_finished(&evs);
        assert_eq!(f.status, JobStatus::Failed as i32);
        assert!(f.reason.contains("could not be fetched"), "{}", f.reason);
        assert_eq!(sup.load().running, 0);
    }

    #[tokio::test]
    async fn a_job_cancelled_while_fetching_ends_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let (sup, outbox) = setup(dir.path());
        // Accepts connections (the kernel's backlog) but never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        sup.packages()
            .set_source(format!("http://{}", silent.local_addr().unwrap()), None);
        let job = by_hash(1);
        sup.start_job(job.clone()).unwrap();
        // The fetch is under way once it has connected.
        let listener = silent.try_clone().unwrap();
        let _conn = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::task::spawn_blocking(move || listener.accept()),
        )
        .await
        .expect("the fetch connects")
        .unwrap()
        .unwrap();
        assert!(sup.cancel_job(&job.dispatch));
        let evs = events(&outbox, 1).await;
        let f = last_finished(&evs);
        assert_eq!(f.status, JobStatus::Cancelled as i32);
        assert!(f.reason.contains("being fetched"), "{}", f.reason);
        drop(silent);
    }
}
