//! Roles end to end, in-process: a coordinator served over loopback on a
//! fake store, a fake agent that registers over gRPC, accepts dispatches
//! (refusing an epoch lower than the highest it has seen, as the real agent
//! does), reports completions from an outbox it resends after a reconnect.
//! A term lost mid-run (another takes the epoch; an agent answers
//! `STALE_EPOCH`) makes the coordinator stop, drop its state and lead again
//! with a higher epoch, the execution finishing with each child recorded
//! once; a standby sharing the store answers `NOT_LEADER` with the leader's
//! URL and takes over when the leader goes; a store unavailable for a moment
//! ends a term but not the process, a backend failure stops it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_proto as pb;
use pb::agent_service_server::{AgentService, AgentServiceServer};
use pb::control_service_client::ControlServiceClient;
use pb::coordinator_service_client::CoordinatorServiceClient;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::leadership::embedded::{EmbeddedLeadership, take_epoch};
use crate::leadership::{Leadership, Term};
use crate::records::{
    ChildRecord, EPOCH_KEY, ExecutionRecord, ExecutionState, children_prefix, execution_key,
};
use crate::scheduler_task::fixtures::{files, params};
use crate::store::fake::FakeStore;
use crate::store::{BoxFuture, Op, StoreError};

/// Longest wait for anything in these tests.
const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `f` holds, failing the test after [`DEADLINE`].
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the fake agent saw and holds.
#[derive(Default)]
struct AgentState {
    /// Highest coordinator epoch seen (registrations and dispatches).
    highest_epoch: u64,
    /// Registrations answered.
    registrations: usize,
    /// Dispatches accepted, by (execution, task, index, attempt): the epoch.
    accepted: HashMap<(String, String, u32, u32), u64>,
    /// Epochs of dispatches refused as stale.
    stale: Vec<u64>,
    /// Jobs accepted and not reported yet.
    running: Vec<pb::DispatchId>,
    /// Durable events, seq from 1.
    outbox: Vec<pb::AgentEvent>,
}

/// A fake agent: its `AgentService` and the loop that talks to the coordinator.
#[derive(Clone, Default)]
struct FakeAgent {
    state: Arc<Mutex<AgentState>>,
    /// Jobs it may still finish (the test opens it wider).
    allowance: Arc<AtomicUsize>,
    /// Woken when a job arrives or the allowance grows.
    wake: Arc<Notify>,
}

impl FakeAgent {
    fn state(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allow(&self, n: usize) {
        self.allowance.fetch_add(n, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn answer(&self, req: &pb::StartJobRequest) -> pb::StartJobResponse {
        use pb::start_job_response::Outcome;
        let mut st = self.state();
        let epoch = req.coordinator_epoch;
        let outcome = if epoch < st.highest_epoch {
            st.stale.push(epoch);
            Outcome::Rejected(pb::Rejected {
                code: pb::RejectCode::StaleEpoch as i32,
                reason: format!("epoch {epoch} < {}", st.highest_epoch),
            })
        } else {
            st.highest_epoch = epoch;
            let id = req.dispatch_id.clone().unwrap_or_default();
            let key = (
                id.execution_id.clone(),
                id.task_path.clone(),
                id.item_index,
                id.attempt,
            );
            // The same dispatch again (its outcome was unknown): nothing new.
            if let std::collections::hash_map::Entry::Vacant(v) = st.accepted.entry(key) {
                v.insert(epoch);
                st.running.push(id);
                self.wake.notify_one();
            }
            Outcome::Accepted(pb::Accepted {})
        };
        pb::StartJobResponse {
            outcome: Some(outcome),
        }
    }

    /// Moves finished jobs (within the allowance) into the outbox; returns
    /// the new events.
    fn finish_jobs(&self) -> Vec<pb::AgentEvent> {
        let mut st = self.state();
        let mut out = Vec::new();
        while !st.running.is_empty()
            && self
                .allowance
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_sub(1))
                .is_ok()
        {
            let id = st.running.remove(0);
            let ev = pb::AgentEvent {
                seq: st.outbox.len() as u64 + 1,
                at_unix_ms: 1,
                body: Some(pb::agent_event::Body::Finished(pb::JobFinished {
                    dispatch_id: Some(id),
                    status: pb::JobStatus::Succeeded as i32,
                    ..Default::default()
                })),
            };
            st.outbox.push(ev.clone());
            out.push(ev);
        }
        out
    }

    /// Serves `AgentService` on loopback; returns its address.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(self.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    /// Registers with `url` and reports over a completion stream; after the
    /// stream ends (the term is over) it registers again and resends what
    /// was not acknowledged. Runs until `stop`.
    async fn run(self, url: String, address: String, stop: CancellationToken) {
        let boot_id = "boot-1".to_string();
        while !stop.is_cancelled() {
            let Ok(mut client) = CoordinatorServiceClient::connect(url.clone()).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let registered = client
                .register(pb::RegisterRequest {
                    name: "a1".into(),
                    address: address.clone(),
                    slots: 2,
                    version: "t".into(),
                    boot_id: boot_id.clone(),
                    outbox_id: "ob-1".into(),
                    ..Default::default()
                })
                .await;
            let Ok(reg) = registered else {
                // A standby, or a leader still loading: try again.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let reg = reg.into_inner();
            let resend: Vec<pb::AgentEvent> = {
                let mut st = self.state();
                st.highest_epoch = st.highest_epoch.max(reg.coordinator_epoch);
                st.registrations += 1;
                st.outbox
                    .iter()
                    .filter(|e| e.seq > reg.acked_seq)
                    .cloned()
                    .collect()
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let hello = pb::AgentEvent {
                body: Some(pb::agent_event::Body::Hello(pb::Hello {
                    agent_id: "a1".into(),
                    boot_id: boot_id.clone(),
                })),
                ..Default::default()
            };
            let _ = tx.send(hello);
            for ev in resend {
                let _ = tx.send(ev);
            }
            let Ok(acks) = client.report_events(UnboundedReceiverStream::new(rx)).await else {
                continue;
            };
            let mut acks = acks.into_inner();
            let mut heartbeat = tokio::time::interval(Duration::from_millis(100));
            loop {
                let running = self.state().running.len() as u32;
                tokio::select! {
                    () = stop.cancelled() => return,
                    ack = acks.message() => match ack {
                        Ok(Some(_)) => {}
                        _ => break, // the term is over: register again
                    },
                    _ = heartbeat.tick() => {
                        let hb = pb::AgentEvent {
                            body: Some(pb::agent_event::Body::Heartbeat(pb::Heartbeat {
                                slots: 2,
                                running,
                                ..Default::default()
                            })),
                            ..Default::default()
                        };
                        if tx.send(hb).is_err() {
                            break;
                        }
                    }
                    () = self.wake.notified() => {
                        for ev in self.finish_jobs() {
                            let _ = tx.send(ev);
                        }
                    }
                }
            }
        }
    }
}

type NoStream<T> = tokio_stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl AgentService for FakeAgent {
    async fn start_job(
        &self,
        request: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::StartJobResponse>, Status> {
        Ok(Response::new(self.answer(request.get_ref())))
    }

    async fn start_jobs(
        &self,
        request: Request<pb::StartJobsRequest>,
    ) -> Result<Response<pb::StartJobsResponse>, Status> {
        let results = request
            .get_ref()
            .jobs
            .iter()
            .map(|j| self.answer(j))
            .collect();
        Ok(Response::new(pb::StartJobsResponse { results }))
    }

    async fn cancel_job(
        &self,
        _: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_job(
        &self,
        _: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type StreamLogsStream = NoStream<pb::LogChunk>;

    async fn stream_logs(
        &self,
        _: Request<pb::StreamJobLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type StreamRowsStream = NoStream<pb::RowBatch>;

    async fn stream_rows(
        &self,
        _: Request<pb::StreamJobRowsRequest>,
    ) -> Result<Response<Self::StreamRowsStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// A coordinator serving on loopback over `store`; stopped on drop.
struct Node {
    running: crate::Running,
    url: String,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn node(
    store: &Arc<FakeStore>,
    leadership: Arc<dyn Leadership>,
    key_from: Option<&std::path::Path>,
    wait_to_lead: bool,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    if let Some(from) = key_from {
        // A second coordinator gets the first one's sealing key.
        let key = crate::secrets::KEY_FILE;
        std::fs::copy(from.join(key), dir.path().join(key)).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = crate::CoordinatorConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let running = crate::serve(
        config,
        store.clone(),
        leadership,
        listener,
        shutdown.clone(),
        wait_to_lead,
    )
    .await
    .unwrap();
    Node {
        running,
        url,
        shutdown,
        _dir: dir,
    }
}

/// Starts the fake agent against `url`; returns it and what stops its loop.
async fn agent(url: &str, highest_epoch: u64) -> (FakeAgent, CancellationToken) {
    let agent = FakeAgent::default();
    agent.state().highest_epoch = highest_epoch;
    let address = agent.serve().await;
    let stop = CancellationToken::new();
    tokio::spawn(agent.clone().run(url.to_string(), address, stop.clone()));
    (agent, stop)
}

fn stored_execution(store: &FakeStore, id: &str) -> Option<ExecutionRecord> {
    store
        .value(&execution_key(id))
        .and_then(|v| serde_json::from_slice(&v).ok())
}

fn stored_epoch(store: &FakeStore) -> Option<u64> {
    store
        .value(EPOCH_KEY)
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
}

/// Per child key of execution `id`, how many commits wrote it terminal.
fn terminal_writes(store: &FakeStore, id: &str) -> BTreeMap<String, usize> {
    let prefix = children_prefix(id);
    let mut counts = BTreeMap::new();
    for commit in store.applied() {
        for op in &commit.ops {
            if let Op::Put { key, value, .. } = op
                && key.starts_with(&prefix)
                && serde_json::from_slice::<ChildRecord>(value).is_ok_and(|c| c.phase.is_terminal())
            {
                *counts.entry(key.clone()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// The execution ended succeeded, each of its `n` children recorded terminal once.
async fn finishes_with_each_child_once(store: &FakeStore, id: &str, n: usize) {
    until("the execution to succeed", || {
        stored_execution(store, id).is_some_and(|r| r.state.is_terminal())
    })
    .await;
    let rec = stored_execution(store, id).unwrap();
    assert_eq!(rec.state, ExecutionState::Succeeded, "{}", rec.reason);
    let writes = terminal_writes(store, id);
    assert_eq!(writes.len(), n, "{writes:?}");
    assert!(
        writes.values().all(|&w| w == 1),
        "each child is recorded terminal once: {writes:?}"
    );
}

#[tokio::test]
async fn a_term_lost_mid_run_stops_dispatching_reloads_and_leads_again_with_a_higher_epoch() {
    let store = FakeStore::new();
    let a = node(
        &store,
        Arc::new(EmbeddedLeadership::new(store.clone())),
        None,
        true,
    )
    .await;
    assert_eq!(stored_epoch(&store), Some(1));
    let (fake, agent_stop) = agent(&a.url, 0).await;
    fake.allow(3);
    let first = a.running.coordinator().expect("it leads at once");
    until("the agent to register", || fake.state().registrations == 1).await;
    let id = first
        .start("p.toml".into(), files(), params(8), "/".into())
        .await
        .unwrap();
    // Three children finish, two more run: both slots are full.
    until("five dispatches, three reported", || {
        let st = fake.state();
        st.accepted.len() == 5 && st.running.len() == 2
    })
    .await;

    // Another coordinator takes the epoch: this term is over.
    let intruder = take_epoch(store.as_ref()).await.unwrap();
    assert_eq!(intruder.epoch, 2);
    // Nothing of the old term lands after that: the next commit applied is
    // the epoch of this coordinator's next term.
    let at = store
        .applied()
        .iter()
        .position(|c| c.revision == intruder.fence_revision)
        .unwrap();
    tokio::time::timeout(DEADLINE, store.wait_applied(at + 2))
        .await
        .expect("a new term begins");
    let next: Vec<String> = store.applied()[at + 1].keys().map(str::to_string).collect();
    assert_eq!(next, [EPOCH_KEY]);
    assert_eq!(stored_epoch(&store), Some(3));
    let second = a.running.leading().await.unwrap();
    assert!(
        first.view(&id).await.is_err(),
        "the first term's state is gone"
    );
    fake.allow(100);
    finishes_with_each_child_once(&store, &id, 8).await;
    {
        let st = fake.state();
        assert_eq!(st.highest_epoch, 3);
        let mut by_epoch = BTreeMap::new();
        for e in st.accepted.values() {
            *by_epoch.entry(*e).or_insert(0) += 1;
        }
        assert_eq!(
            by_epoch,
            BTreeMap::from([(1, 5), (3, 3)]),
            "five children went out in the first term (none after it ended), \
             the last three in the third"
        );
    }
    assert!(second.view(&id).await.is_ok(), "the new term answers");
    assert!(!a.running.task.is_finished(), "the process did not exit");
    agent_stop.cancel();
}

#[tokio::test]
async fn an_agent_answering_stale_epoch_ends_the_term_and_the_next_one_dispatches() {
    let store = FakeStore::new();
    let a = node(
        &store,
        Arc::new(EmbeddedLeadership::new(store.clone())),
        None,
        true,
    )
    .await;
    // The agent has seen epoch 2 (from a coordinator that led after this one).
    let (fake, agent_stop) = agent(&a.url, 2).await;
    fake.allow(100);
    let first = a.running.coordinator().unwrap();
    until("the agent to register", || fake.state().registrations == 1).await;
    let id = first
        .start("p.toml".into(), files(), params(4), "/".into())
        .await
        .unwrap();
    until("a term of epoch 2", || stored_epoch(&store) == Some(2)).await;
    finishes_with_each_child_once(&store, &id, 4).await;
    {
        let st = fake.state();
        assert!(!st.stale.is_empty() && st.stale.iter().all(|&e| e == 1));
        assert!(
            st.accepted.values().all(|&e| e == 2),
            "every accepted dispatch is of the new term: {:?}",
            st.accepted
        );
    }
    assert!(!a.running.task.is_finished(), "the process did not exit");
    agent_stop.cancel();
}

/// One leader at a time among the coordinators of this process (an election
/// as etcd's, without etcd): the epoch is taken on the store as the
/// embedded leadership does.
struct OneAtATime {
    store: Arc<FakeStore>,
    holder: Mutex<Option<String>>,
    freed: Notify,
}

impl OneAtATime {
    fn holder(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.holder.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A coordinator's view of [`OneAtATime`].
struct Candidate(Arc<OneAtATime>);

impl Leadership for Candidate {
    fn campaign<'a>(&'a self, advertise: &'a str) -> BoxFuture<'a, Result<Term, StoreError>> {
        Box::pin(async move {
            loop {
                let freed = self.0.freed.notified();
                {
                    let mut holder = self.0.holder();
                    if holder.is_none() {
                        *holder = Some(advertise.to_string());
                        break;
                    }
                }
                freed.await;
            }
            take_epoch(self.0.store.as_ref()).await
        })
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let holder = self.0.holder().clone();
        Box::pin(async move { Ok(holder) })
    }

    fn resign<'a>(&'a self, term: &'a Term) -> BoxFuture<'a, Result<(), StoreError>> {
        term.lost.cancel();
        *self.0.holder() = None;
        self.0.freed.notify_waiters();
        Box::pin(async { Ok(()) })
    }
}

/// A `ControlService` call to `url`, refused or not.
async fn list_agents(url: &str) -> Result<(), Status> {
    let mut client = ControlServiceClient::connect(url.to_string())
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    client
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .map(|_| ())
}

fn not_leader_hint(s: &Status) -> Option<Option<String>> {
    let md = |k: &str| {
        s.metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    (md(crate::grpc::ERROR_CODE_KEY).as_deref() == Some("NOT_LEADER")).then(|| md("baton-leader"))
}

#[tokio::test]
async fn a_standby_answers_not_leader_with_the_leaders_url_and_takes_over_when_it_goes() {
    let store = FakeStore::new();
    let election = Arc::new(OneAtATime {
        store: store.clone(),
        holder: Mutex::new(None),
        freed: Notify::new(),
    });
    let mut a = node(&store, Arc::new(Candidate(election.clone())), None, true).await;
    let id = a
        .running
        .coordinator()
        .unwrap()
        .start("p.toml".into(), files(), params(3), "/".into())
        .await
        .unwrap();
    let b = node(
        &store,
        Arc::new(Candidate(election.clone())),
        Some(a._dir.path()),
        false,
    )
    .await;
    assert!(b.running.coordinator().is_none(), "b stands by");
    // Every call to the standby is refused with the leader's URL (once it
    // has learnt it).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = list_agents(&b.url).await.unwrap_err();
        let hint = not_leader_hint(&s).unwrap_or_else(|| panic!("NOT_LEADER expected: {s:?}"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        if hint.as_deref() == Some(a.url.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "no leader hint: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The leader answers (whatever it answers, it is not NOT_LEADER).
    if let Err(s) = list_agents(&a.url).await {
        assert!(not_leader_hint(&s).is_none(), "{s:?}");
    }

    // The leader goes: the standby leads with a later epoch and the running
    // execution, reloaded from the store.
    a.shutdown.cancel();
    let b_leads = tokio::time::timeout(DEADLINE, b.running.leading())
        .await
        .expect("the standby takes over")
        .unwrap();
    assert_eq!(stored_epoch(&store), Some(2));
    let view = b_leads.view(&id).await.unwrap();
    assert_eq!(view.summary.state, "running");
    if let Err(s) = list_agents(&b.url).await {
        assert!(not_leader_hint(&s).is_none(), "{s:?}");
    }
    tokio::time::timeout(DEADLINE, &mut a.running.task)
        .await
        .expect("the old leader stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_store_unavailable_for_a_moment_ends_the_term_but_not_the_process() {
    let store = FakeStore::new();
    let a = node(
        &store,
        Arc::new(EmbeddedLeadership::new(store.clone())),
        None,
        true,
    )
    .await;
    // The start's blobs are written first (one commit), then its execution
    // by the scheduler: that commit finds no quorum.
    store.faults_after_commits(1);
    store.unavailable_next_commits(1);
    let first = a.running.coordinator().unwrap();
    let err = first
        .start("p.toml".into(), files(), params(2), "/".into())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "SHUTTING_DOWN", "{err}");
    let second = tokio::time::timeout(DEADLINE, async {
        loop {
            if stored_epoch(&store) == Some(2)
                && let Some(c) = a.running.coordinator()
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("it leads again");
    second
        .start("p.toml".into(), files(), params(2), "/".into())
        .await
        .unwrap();
    assert!(!a.running.task.is_finished(), "the process did not exit");
}

#[tokio::test]
async fn a_backend_failure_stops_the_process() {
    let store = FakeStore::new();
    let mut a = node(
        &store,
        Arc::new(EmbeddedLeadership::new(store.clone())),
        None,
        true,
    )
    .await;
    store.faults_after_commits(1);
    store.fail_next_commits(1);
    let c = a.running.coordinator().unwrap();
    assert!(
        c.start("p.toml".into(), files(), params(2), "/".into())
            .await
            .is_err()
    );
    let ended = tokio::time::timeout(DEADLINE, &mut a.running.task)
        .await
        .expect("the process stops")
        .unwrap();
    let err = ended.unwrap_err();
    assert_eq!(err.code(), "STORE_FAILED", "{err}");
    assert!(a.running.coordinator().is_none());
}
