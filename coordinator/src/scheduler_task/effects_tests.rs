//! Dispatch batching against a fake agent on loopback: the dispatches of one
//! batch to one agent go in one `StartJobs` call, answers map to their children
//! in order, and an agent that does not serve `StartJobs` (an earlier release)
//! gets one `StartJob` per child from then on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baton_proto as pb;
use pb::agent_service_server::{AgentService, AgentServiceServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::Io;
use super::perform_all;
use crate::domain::{DispatchId, DispatchOutcome, DispatchSpec, PackageRef, RejectCode};
use crate::scheduler::{ChildRef, Effect};
use crate::scheduler_task::msg::Msg;
use crate::transport::{AgentDialer, Security};

/// Accepts even items and rejects odd ones; `StartJobs` only when `batches`.
#[derive(Clone, Default)]
struct FakeAgent {
    batches: bool,
    single_calls: Arc<AtomicUsize>,
    batch_calls: Arc<AtomicUsize>,
}

fn answer(req: &pb::StartJobRequest) -> pb::StartJobResponse {
    let item = req.dispatch_id.as_ref().map_or(0, |d| d.item_index);
    let outcome = if item.is_multiple_of(2) {
        pb::start_job_response::Outcome::Accepted(pb::Accepted {})
    } else {
        pb::start_job_response::Outcome::Rejected(pb::Rejected {
            code: pb::RejectCode::AtCapacity as i32,
            reason: format!("item {item} is odd"),
        })
    };
    pb::StartJobResponse {
        outcome: Some(outcome),
    }
}

type NoStream<T> = tokio_stream::Empty<Result<T, Status>>;

#[tonic::async_trait]
impl AgentService for FakeAgent {
    async fn start_job(
        &self,
        request: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::StartJobResponse>, Status> {
        self.single_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(answer(request.get_ref())))
    }

    async fn start_jobs(
        &self,
        request: Request<pb::StartJobsRequest>,
    ) -> Result<Response<pb::StartJobsResponse>, Status> {
        if !self.batches {
            return Err(Status::unimplemented("StartJobs"));
        }
        self.batch_calls.fetch_add(1, Ordering::SeqCst);
        let results = request.get_ref().jobs.iter().map(answer).collect();
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

async fn serve(fake: FakeAgent) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn dispatch(address: &str, item: u32) -> Effect {
    Effect::Dispatch {
        agent: "a1".into(),
        address: address.into(),
        child: ChildRef {
            exec: 1,
            task: 0,
            child: item,
        },
        attempt: 1,
        spec: Box::new(DispatchSpec {
            dispatch_id: DispatchId {
                execution_id: "e".into(),
                task_path: "t".into(),
                item_index: item,
                attempt: 1,
            },
            package: PackageRef {
                name: String::new(),
                content_hash: String::new(),
                content: Arc::from([]),
            },
            parameters: Default::default(),
            coordinator_epoch: 0,
            deadline_ms: 0,
            traceparent: String::new(),
            tracestate: String::new(),
            folder: String::new(),
        }),
    }
}

/// The `Dispatched` outcomes of `n` children, by child index.
async fn outcomes(rx: &mut mpsc::Receiver<Msg>, n: usize) -> HashMap<u32, DispatchOutcome> {
    let mut got = HashMap::new();
    while got.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("every dispatch is answered")
            .expect("channel open");
        if let Msg::Dispatched { child, outcome, .. } = msg {
            got.insert(child.child, outcome);
        }
    }
    got
}

fn io() -> (Io, mpsc::Receiver<Msg>) {
    let (tx, rx) = mpsc::channel(64);
    (Io::new(tx, AgentDialer::new(Security::Insecure)), rx)
}

fn accepted_items(got: &HashMap<u32, DispatchOutcome>) -> Vec<u32> {
    let mut items: Vec<u32> = got
        .iter()
        .filter(|(_, o)| **o == DispatchOutcome::Accepted)
        .map(|(i, _)| *i)
        .collect();
    items.sort_unstable();
    items
}

#[tokio::test]
async fn one_batch_call_per_agent_with_answers_in_order() {
    let fake = FakeAgent {
        batches: true,
        ..FakeAgent::default()
    };
    let address = serve(fake.clone()).await;
    let (mut io, mut rx) = io();
    perform_all(&mut io, (0..6).map(|i| dispatch(&address, i)).collect());
    let got = outcomes(&mut rx, 6).await;
    assert_eq!(accepted_items(&got), [0, 2, 4]);
    assert!(matches!(
        &got[&3],
        DispatchOutcome::Rejected { code: RejectCode::AtCapacity, reason } if reason == "item 3 is odd"
    ));
    assert_eq!(fake.batch_calls.load(Ordering::SeqCst), 1);
    assert_eq!(fake.single_calls.load(Ordering::SeqCst), 0);

    // A lone dispatch is a plain StartJob.
    perform_all(&mut io, vec![dispatch(&address, 8)]);
    let got = outcomes(&mut rx, 1).await;
    assert_eq!(accepted_items(&got), [8]);
    assert_eq!(fake.single_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_agent_without_start_jobs_gets_one_call_per_child() {
    let fake = FakeAgent::default();
    let address = serve(fake.clone()).await;
    let (mut io, mut rx) = io();
    perform_all(&mut io, (0..4).map(|i| dispatch(&address, i)).collect());
    // The first batch is refused as a whole: its outcome is unknown, so the
    // scheduler sends those dispatches again (same ids) after its retry delay.
    let got = outcomes(&mut rx, 4).await;
    assert!(
        got.values()
            .all(|o| matches!(o, DispatchOutcome::Unknown(_))),
        "{got:?}"
    );
    perform_all(&mut io, (0..4).map(|i| dispatch(&address, i)).collect());
    let got = outcomes(&mut rx, 4).await;
    assert_eq!(accepted_items(&got), [0, 2]);
    assert_eq!(fake.single_calls.load(Ordering::SeqCst), 4);
}
