//! End-to-end tests: `run()` against a fake, in-process coordinator
//! (registration, Hello first, in-order delivery, and resend after the stream
//! drops), and a running job's log followed through `StreamLogs`' reader (the job
//! run and the log stream, two layers apart, together).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto as pb;
use baton_proto::agent_event::Body;
use baton_proto::agent_service_client::AgentServiceClient;
use baton_proto::coordinator_service_server::{CoordinatorService, CoordinatorServiceServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;

use crate::logs::tests::collect;
use tonic::{Request, Response, Status};

use crate::{AgentConfig, run};

#[derive(Default)]
struct FakeState {
    registrations: Vec<pb::RegisterRequest>,
    /// (stream number, event) in arrival order; heartbeats left out.
    events: Vec<(u32, pb::AgentEvent)>,
    heartbeats: u32,
    streams: u32,
    acked: u64,
    ack_enabled: bool,
    kill: CancellationToken,
    /// A standby: every call is answered NOT_LEADER, with this leader hint.
    standby: Option<Option<String>>,
    /// Calls answered NOT_LEADER.
    refused: u32,
    /// The epoch registrations are answered with (0: 3).
    epoch: u64,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<FakeState>>);

#[tonic::async_trait]
impl CoordinatorService for Fake {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.refuse_if_standby()?;
        let mut st = self.0.lock().unwrap();
        st.registrations.push(request.into_inner());
        Ok(Response::new(pb::RegisterResponse {
            agent_id: "agent-1".into(),
            heartbeat_interval_ms: 100,
            lease_ttl_ms: 1_000,
            coordinator_epoch: if st.epoch == 0 { 3 } else { st.epoch },
            acked_seq: st.acked,
        }))
    }

    async fn enroll(
        &self,
        _request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        Err(Status::unimplemented("the fake coordinator does not enrol"))
    }

    async fn renew(
        &self,
        _request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        Err(Status::unimplemented("the fake coordinator does not renew"))
    }

    async fn fetch_package(
        &self,
        _request: Request<pb::FetchPackageRequest>,
    ) -> Result<Response<pb::FetchPackageResponse>, Status> {
        Err(Status::unimplemented("the fake coordinator has no catalog"))
    }

    type ReportEventsStream = ReceiverStream<Result<pb::EventAck, Status>>;

    async fn report_events(
        &self,
        request: Request<tonic::Streaming<pb::AgentEvent>>,
    ) -> Result<Response<Self::ReportEventsStream>, Status> {
        self.refuse_if_standby()?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let (stream_no, kill) = {
            let mut st = self.0.lock().unwrap();
            st.streams += 1;
            st.kill = CancellationToken::new();
            (st.streams, st.kill.clone())
        };
        let state = self.0.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = kill.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("fake coordinator going away"))).await;
                        return;
                    }
                    msg = inbound.message() => {
                        let Ok(Some(ev)) = msg else { return };
                        let ack = {
                            let mut st = state.lock().unwrap();
                            if matches!(ev.body, Some(Body::Heartbeat(_))) {
                                st.heartbeats += 1;
                                None
                            } else {
                                let seq = ev.seq;
                                st.events.push((stream_no, ev));
                                if st.ack_enabled && seq > 0 {
                                    st.acked = st.acked.max(seq);
                                    Some(st.acked)
                                } else {
                                    None
                                }
                            }
                        };
                        if let Some(acked_seq) = ack {
                            let _ = tx.send(Ok(pb::EventAck { acked_seq })).await;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Fake {
    /// What a standby coordinator answers to every call.
    fn refuse_if_standby(&self) -> Result<(), Status> {
        let mut st = self.0.lock().unwrap();
        let Some(hint) = st.standby.clone() else {
            return Ok(());
        };
        st.refused += 1;
        let mut s = Status::unavailable("this coordinator is a standby");
        s.metadata_mut()
            .insert("baton-code", "NOT_LEADER".parse().unwrap());
        if let Some(url) = hint {
            s.metadata_mut()
                .insert("baton-leader", url.parse().unwrap());
        }
        Err(s)
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// Durable (seq > 0) events of one stream, as (seq, kind).
    fn stream(&self, n: u32) -> Vec<(u64, &'static str)> {
        self.with(|st| {
            st.events
                .iter()
                .filter(|(s, _)| *s == n)
                .map(|(_, e)| (e.seq, kind(e)))
                .collect()
        })
    }

    async fn wait_until(&self, what: &str, f: impl Fn(&FakeState) -> bool) {
        let ok = tokio::time::timeout(Duration::from_secs(20), async {
            while !self.with(|st| f(st)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if ok.is_err() {
            let seen: Vec<(u32, u64, &str)> = self.with(|st| {
                st.events
                    .iter()
                    .map(|(s, e)| (*s, e.seq, kind(e)))
                    .collect()
            });
            let (acked, streams) = self.with(|st| (st.acked, st.streams));
            panic!("timed out waiting for {what}; acked {acked}, streams {streams}, seen {seen:?}");
        }
    }
}

fn kind(e: &pb::AgentEvent) -> &'static str {
    match &e.body {
        Some(Body::Hello(_)) => "hello",
        Some(Body::Heartbeat(_)) => "heartbeat",
        Some(Body::Started(_)) => "started",
        Some(Body::Progress(_)) => "progress",
        Some(Body::Finished(_)) => "finished",
        None => "none",
    }
}

const CHILD: &str = "name = 'child'\n[tasks.a]\nexec = ['sh', '-c', 'echo hi']\n";

fn start(item: u32) -> pb::StartJobRequest {
    pb::StartJobRequest {
        dispatch_id: Some(pb::DispatchId {
            execution_id: "exec-1".into(),
            task_path: "fan".into(),
            item_index: item,
            attempt: 1,
        }),
        package: Some(pb::PackageRef {
            name: "child".into(),
            content_hash: baton_package::content_hash(CHILD),
            content: CHILD.as_bytes().to_vec(),
        }),
        parameters: Default::default(),
        coordinator_epoch: 3,
        deadline_ms: 0,
        traceparent: String::new(),
        tracestate: String::new(),
        folder: String::new(),
    }
}

fn is_accepted(r: &pb::StartJobResponse) -> bool {
    matches!(
        r.outcome,
        Some(pb::start_job_response::Outcome::Accepted(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_streams_in_order_and_resends_unacked_after_reconnect() {
    tokio::time::timeout(Duration::from_secs(60), scenario())
        .await
        .expect("scenario timed out");
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.with(|st| st.ack_enabled = true);
    let coord_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coord_addr = coord_listener.local_addr().unwrap();
    let coord_stop = CancellationToken::new();
    let coord = {
        let stop = coord_stop.clone();
        let svc = CoordinatorServiceServer::new(fake.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(coord_listener), async move {
                    stop.cancelled().await
                }),
        )
    };

    let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = agent_listener.local_addr().unwrap();
    let config = AgentConfig {
        name: "test-agent".into(),
        coordinator_url: format!("http://{coord_addr}"),
        advertise_addr: agent_addr.to_string(),
        slots: 4,
        labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        data_dir: dir.path().join("data"),
        kill_grace_ms: 300,
        ..AgentConfig::default()
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(config, agent_listener, shutdown.clone()));

    fake.wait_until("registration and hello", |st| {
        !st.registrations.is_empty() && !st.events.is_empty()
    })
    .await;
    let reg = fake.with(|st| st.registrations[0].clone());
    assert_eq!(reg.name, "test-agent");
    assert_eq!(reg.address, agent_addr.to_string());
    assert_eq!(reg.slots, 4);
    assert_eq!(reg.labels.get("zone").map(String::as_str), Some("a"));
    assert!(!reg.boot_id.is_empty() && !reg.outbox_id.is_empty());
    let first = fake.with(|st| st.events[0].1.clone());
    let Some(Body::Hello(hello)) = &first.body else {
        panic!("first event {first:?}")
    };
    assert_eq!((first.seq, hello.agent_id.as_str()), (0, "agent-1"));
    assert_eq!(hello.boot_id, reg.boot_id);

    // Phase 1: a job whose events are acknowledged.
    let mut client = AgentServiceClient::connect(format!("http://{agent_addr}"))
        .await
        .unwrap();
    assert!(is_accepted(
        &client.start_job(start(1)).await.unwrap().into_inner()
    ));
    fake.wait_until("job 1 acknowledged", |st| st.acked >= 2)
        .await;

    // Phase 2: the coordinator stops acknowledging, a job finishes, the stream drops.
    fake.with(|st| st.ack_enabled = false);
    assert!(is_accepted(
        &client.start_job(start(2)).await.unwrap().into_inner()
    ));
    // A stale epoch is refused.
    let mut stale = start(3);
    stale.coordinator_epoch = 2;
    let resp = client.start_job(stale).await.unwrap().into_inner();
    let Some(pb::start_job_response::Outcome::Rejected(r)) = resp.outcome else {
        panic!()
    };
    assert_eq!(r.code, pb::RejectCode::StaleEpoch as i32);
    fake.wait_until("job 2 events", |st| {
        st.events.iter().any(|(_, e)| e.seq == 4)
    })
    .await;
    fake.wait_until("heartbeats", |st| st.heartbeats >= 2).await;
    assert_eq!(
        fake.stream(1),
        [
            (0, "hello"),
            (1, "started"),
            (2, "finished"),
            (3, "started"),
            (4, "finished")
        ]
    );
    fake.with(|st| st.ack_enabled = true);
    fake.with(|st| st.kill.cancel());

    // Phase 3: the agent registers again and resends exactly the unacknowledged events.
    fake.wait_until("second stream", |st| {
        st.events.iter().any(|(s, e)| *s == 2 && e.seq == 4)
    })
    .await;
    assert_eq!(fake.with(|st| st.registrations.len()), 2);
    assert_eq!(
        fake.stream(2),
        [(0, "hello"), (3, "started"), (4, "finished")]
    );
    fake.wait_until("resent events acknowledged", |st| st.acked >= 4)
        .await;

    // GetJob knows the finished job.
    let got = client
        .get_job(pb::GetJobRequest {
            dispatch_id: start(2).dispatch_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, pb::AgentJobState::Finished as i32);
    assert_eq!(got.status, pb::JobStatus::Succeeded as i32);

    shutdown.cancel();
    agent.await.unwrap().unwrap();
    coord_stop.cancel();
    let _ = coord.await;
}

fn start_sleep(item: u32) -> pb::StartJobRequest {
    const SLEEP: &str = "name = 'sleep'\n[tasks.a]\nexec = ['sleep', '30']\n";
    let mut req = start(item);
    req.package = Some(pb::PackageRef {
        name: "sleep".into(),
        content_hash: baton_package::content_hash(SLEEP),
        content: SLEEP.as_bytes().to_vec(),
    });
    req
}

fn answer(r: &pb::StartJobResponse) -> String {
    match &r.outcome {
        Some(pb::start_job_response::Outcome::Accepted(_)) => "accepted".into(),
        Some(pb::start_job_response::Outcome::Rejected(r)) => {
            pb::RejectCode::try_from(r.code).map_or("?".into(), |c| c.as_str_name().to_string())
        }
        None => "none".into(),
    }
}

/// `StartJobs` decides every job as `StartJob` would, in order, in one call:
/// capacity counts the jobs accepted earlier in the same call, a repeated
/// dispatch is accepted once, a bad job is rejected alone; a call over the
/// limit starts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_jobs_decides_each_job_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    fake.with(|st| st.ack_enabled = true);
    let coord_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coord_addr = coord_listener.local_addr().unwrap();
    let svc = CoordinatorServiceServer::new(fake.clone());
    let coord = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(coord_listener)),
    );
    let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = agent_listener.local_addr().unwrap();
    let config = AgentConfig {
        name: "batch-agent".into(),
        coordinator_url: format!("http://{coord_addr}"),
        advertise_addr: agent_addr.to_string(),
        slots: 2,
        data_dir: dir.path().join("data"),
        kill_grace_ms: 100,
        ..AgentConfig::default()
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(config, agent_listener, shutdown.clone()));
    fake.wait_until("registration", |st| !st.registrations.is_empty())
        .await;
    let mut client = AgentServiceClient::connect(format!("http://{agent_addr}"))
        .await
        .unwrap();

    let mut no_id = start_sleep(11);
    no_id.dispatch_id = None;
    let jobs = vec![
        start_sleep(10),
        no_id,
        start_sleep(10),
        start_sleep(12),
        start_sleep(13),
    ];
    let got = client
        .start_jobs(pb::StartJobsRequest { jobs })
        .await
        .unwrap()
        .into_inner();
    let answers: Vec<String> = got.results.iter().map(answer).collect();
    assert_eq!(
        answers,
        [
            "accepted",
            "REJECT_CODE_INVALID_REQUEST",
            "accepted",
            "accepted",
            "REJECT_CODE_AT_CAPACITY"
        ]
    );
    fake.wait_until("two jobs started", |st| {
        st.events
            .iter()
            .filter(|(_, e)| kind(e) == "started")
            .count()
            == 2
    })
    .await;

    let too_many = vec![start_sleep(20); pb::START_JOBS_MAX + 1];
    let err = client
        .start_jobs(pb::StartJobsRequest { jobs: too_many })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    shutdown.cancel();
    agent.await.unwrap().unwrap();
    coord.abort();
    let started = fake.with(|st| {
        st.events
            .iter()
            .filter(|(_, e)| kind(e) == "started")
            .count()
    });
    assert_eq!(started, 2, "nothing more started after the refused call");
}

#[tokio::test]
async fn a_running_job_s_output_is_seen_before_it_ends() {
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::job::cancel::JobCancel;
    use crate::job::plan::JobPlan;
    use crate::job::run::{RunnerSettings, run_job};
    use crate::jobs::JobState;
    use crate::logs::{LogRequest, Which, stream_logs};
    use crate::model::{DispatchKey, FinishStatus};
    let key = || DispatchKey {
        execution_id: "e1".into(),
        task_path: "fan".into(),
        item_index: 2,
        attempt: 1,
    };
    let finished = || JobState::Finished {
        status: FinishStatus::Succeeded,
        exit_code: 0,
    };
    let root = tempfile::tempdir().unwrap();
    let settings = RunnerSettings::new(root.path().join("jobs"), Duration::from_millis(500), 64);
    let package = baton_package::Package::parse(
        "lines.toml",
        "name = 'lines'\n[tasks.t]\nscript = 'for i in 1 2 3 4; do echo line $i; sleep 0.3; done'\ntimeout_s = 30\n",
    )
    .unwrap();
    let plan = JobPlan {
        dispatch: key(),
        package: Arc::new(package),
        params: Default::default(),
        default_task_timeout: Duration::from_secs(30),
        env: Vec::new(),
        deadline: None,
        run_as: None,
        masker: crate::mask::Masker::default(),
    };
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let job = tokio::spawn(async move {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let r = run_job(&plan, &settings, &JobCancel::new(), tx).await;
        d.store(true, Ordering::SeqCst);
        r
    });
    let d = done.clone();
    let state = move || {
        if d.load(Ordering::SeqCst) {
            finished()
        } else {
            JobState::Running
        }
    };
    let mut rx = stream_logs(
        &root.path().join("jobs"),
        LogRequest {
            key: key(),
            which: Which::Both,
            follow: true,
            stdout_offset: 0,
            stderr_offset: 0,
        },
        false,
        state,
    )
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.data.starts_with(b"line 1\n"));
    assert!(
        !done.load(Ordering::SeqCst),
        "the first line came only after the job ended: the log is not flushed as it comes"
    );
    let (out, _, _, e) = tokio::time::timeout(Duration::from_secs(10), collect(rx))
        .await
        .expect("the stream ends with the job");
    assert!(e.is_none());
    let mut all = first.data;
    all.extend(out);
    assert_eq!(all, b"line 1\nline 2\nline 3\nline 4\n");
    assert!(job.await.unwrap().status == FinishStatus::Succeeded);
}

/// Serves `fake` on a loopback port until the token is cancelled.
async fn serve_fake(fake: &Fake) -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let svc = CoordinatorServiceServer::new(fake.clone());
    let until = stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                until.cancelled().await
            }),
    );
    (addr, stop)
}

/// A job that runs until `gate` exists.
fn start_gated(item: u32, gate: &std::path::Path) -> pb::StartJobRequest {
    let text = format!(
        "name = 'gated'\n[tasks.a]\nexec = ['sh', '-c', 'while [ ! -f {} ]; do sleep 0.05; done']\n",
        gate.display()
    );
    let mut req = start(item);
    req.package = Some(pb::PackageRef {
        name: "gated".into(),
        content_hash: baton_package::content_hash(&text),
        content: text.into_bytes(),
    });
    req
}

/// Two coordinators, A leading and B a standby naming A; the agent is given B
/// first. It registers with A through B's hint; then A steps down (its stream
/// drops, it names B) while a job runs: the job goes on, the agent registers with
/// B, resends the unacknowledged `started` and then the `finished`, refuses a
/// dispatch of A's older epoch, and keeps B's epoch across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_keeps_jobs_running_and_resends_to_the_new_leader() {
    tokio::time::timeout(Duration::from_secs(60), failover_scenario())
        .await
        .expect("failover scenario timed out");
}

async fn failover_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let a = Fake::default();
    let b = Fake::default();
    a.with(|st| st.ack_enabled = true);
    b.with(|st| st.ack_enabled = true);
    let (a_addr, a_stop) = serve_fake(&a).await;
    let (b_addr, b_stop) = serve_fake(&b).await;
    let (a_url, b_url) = (format!("http://{a_addr}"), format!("http://{b_addr}"));
    b.with(|st| st.standby = Some(Some(a_url.clone())));

    let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = agent_listener.local_addr().unwrap();
    let config = AgentConfig {
        name: "ha-agent".into(),
        coordinator_url: format!("{b_url},{a_url}"),
        advertise_addr: agent_addr.to_string(),
        slots: 4,
        data_dir: dir.path().join("data"),
        kill_grace_ms: 300,
        ..AgentConfig::default()
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(config.clone(), agent_listener, shutdown.clone()));

    // B's hint leads the agent to A.
    a.wait_until("registration with A", |st| {
        !st.registrations.is_empty() && !st.events.is_empty()
    })
    .await;
    assert!(b.with(|st| st.refused) >= 1 && b.with(|st| st.registrations.is_empty()));

    let mut client = AgentServiceClient::connect(format!("http://{agent_addr}"))
        .await
        .unwrap();
    assert!(is_accepted(
        &client.start_job(start(1)).await.unwrap().into_inner()
    ));
    a.wait_until("job 1 acknowledged by A", |st| st.acked >= 2)
        .await;

    // A stops acknowledging; a long job starts and its `started` stays unacknowledged.
    a.with(|st| st.ack_enabled = false);
    assert!(is_accepted(
        &client
            .start_job(start_gated(2, &gate))
            .await
            .unwrap()
            .into_inner()
    ));
    a.wait_until("job 2 started, at A", |st| {
        st.events.iter().any(|(_, e)| e.seq == 3)
    })
    .await;

    // Failover: A steps down and names B; B leads with a higher epoch and the
    // store's acknowledgements (up to 2).
    b.with(|st| {
        st.standby = None;
        st.epoch = 4;
        st.acked = 2;
    });
    a.with(|st| {
        st.standby = Some(Some(b_url.clone()));
        st.kill.cancel();
    });

    b.wait_until("the unacknowledged start resent to B", |st| {
        st.events.iter().any(|(_, e)| e.seq == 3)
    })
    .await;
    assert_eq!(b.with(|st| st.registrations.len()), 1);
    assert_eq!(
        b.stream(1),
        [(0, "hello"), (3, "started")],
        "only what A had not acknowledged"
    );
    // The job ran through the failover; it finishes now and B hears of it.
    std::fs::write(&gate, "").unwrap();
    b.wait_until("job 2 finished, at B", |st| st.acked >= 4)
        .await;
    assert_eq!(b.stream(1), [(0, "hello"), (3, "started"), (4, "finished")]);
    let got = client
        .get_job(pb::GetJobRequest {
            dispatch_id: start(2).dispatch_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, pb::JobStatus::Succeeded as i32);

    // A's epoch (3) is stale now.
    let resp = client.start_job(start(3)).await.unwrap().into_inner();
    let Some(pb::start_job_response::Outcome::Rejected(r)) = resp.outcome else {
        panic!("a dispatch of the deposed leader's epoch was accepted: {resp:?}")
    };
    assert_eq!(r.code, pb::RejectCode::StaleEpoch as i32);
    shutdown.cancel();
    agent.await.unwrap().unwrap();

    // Restarted, the agent still refuses epoch 3 before it registers anywhere.
    b.with(|st| st.standby = Some(None));
    a.with(|st| st.standby = Some(None));
    let agent_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent_addr = agent_listener.local_addr().unwrap();
    let config = AgentConfig {
        advertise_addr: agent_addr.to_string(),
        ..config
    };
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(config, agent_listener, shutdown.clone()));
    let mut client = loop {
        match AgentServiceClient::connect(format!("http://{agent_addr}")).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let resp = client.start_job(start(5)).await.unwrap().into_inner();
    let Some(pb::start_job_response::Outcome::Rejected(r)) = resp.outcome else {
        panic!("after a restart, a stale epoch was accepted: {resp:?}")
    };
    assert_eq!(r.code, pb::RejectCode::StaleEpoch as i32);
    shutdown.cancel();
    agent.await.unwrap().unwrap();
    a_stop.cancel();
    b_stop.cancel();
}
