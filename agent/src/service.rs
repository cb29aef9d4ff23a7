//! The tonic `AgentService` edge: convert and validate, call the supervisor, map.
//!
//! No admission logic and no process handling here (see [`crate::supervisor`]).

use std::pin::Pin;
use std::sync::Arc;

use baton_proto as pb;
use baton_proto::START_JOBS_MAX;
use baton_proto::agent_service_server::AgentService;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::admission::Rejection;
use crate::error::AgentError;
use crate::jobs::JobState;
use crate::logs::{self, LogRequest};
use crate::model::{DispatchKey, StartJob};
use crate::supervisor::{Launch, Supervisor};

/// `AgentService` over a [`Supervisor`].
pub struct AgentGrpc {
    supervisor: Arc<Supervisor>,
    /// Log and row streams open now (at most [`logs::STREAMS_MAX`]).
    streams: Arc<Semaphore>,
}

impl AgentGrpc {
    pub fn new(supervisor: Arc<Supervisor>) -> AgentGrpc {
        AgentGrpc {
            supervisor,
            streams: Arc::new(Semaphore::new(logs::STREAMS_MAX)),
        }
    }

    fn stream_permit(&self) -> Result<OwnedSemaphorePermit, AgentError> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            AgentError::Busy(format!(
                "{} log and row streams are open on this agent; try again later",
                logs::STREAMS_MAX
            ))
        })
    }
}

type Outgoing<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A channel of the reader task as a response stream that holds `permit` until it ends.
fn outgoing<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<logs::Sent<T>>,
    permit: OwnedSemaphorePermit,
) -> Outgoing<T> {
    let s = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
        let _held = &permit;
        item.map_err(Status::from)
    });
    Box::pin(s)
}

fn accepted() -> pb::StartJobResponse {
    pb::StartJobResponse {
        outcome: Some(pb::start_job_response::Outcome::Accepted(pb::Accepted {})),
    }
}

fn unauthorized(reason: String) -> pb::StartJobResponse {
    rejected(Rejection::new(pb::RejectCode::Unauthorized, reason))
}

fn rejected(r: Rejection) -> pb::StartJobResponse {
    pb::StartJobResponse {
        outcome: Some(pb::start_job_response::Outcome::Rejected(pb::Rejected {
            code: r.code as i32,
            reason: r.reason,
        })),
    }
}

impl AgentGrpc {
    /// Decides one StartJob of the coordinator (already authenticated); the
    /// runner of an accepted job starts before this returns.
    fn decide(&self, request: pb::StartJobRequest) -> pb::StartJobResponse {
        let (answer, launch) = self.decide_deferred(request);
        if let Some(l) = launch {
            l.start();
        }
        answer
    }

    /// Decides one StartJob and hands back, for an accepted new job, what
    /// starts its runner: a batch's answer does not wait for plans and tasks.
    fn decide_deferred(
        &self,
        request: pb::StartJobRequest,
    ) -> (pb::StartJobResponse, Option<Launch>) {
        let job = match StartJob::try_from(request) {
            Ok(job) => job,
            Err(e) => {
                let reason = match e {
                    AgentError::InvalidRequest(m) => m,
                    other => other.to_string(),
                };
                info!(code = "INVALID_REQUEST", %reason, "job rejected");
                return (
                    rejected(Rejection::new(pb::RejectCode::InvalidRequest, reason)),
                    None,
                );
            }
        };
        let id = job.dispatch.clone();
        match self.supervisor.decide(job) {
            Ok(launch) => {
                debug!(dispatch = %id, "job accepted");
                (accepted(), launch)
            }
            Err(r) => {
                info!(dispatch = %id, code = r.code_str(), "job rejected");
                (rejected(r), None)
            }
        }
    }
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    async fn start_job(
        &self,
        request: Request<pb::StartJobRequest>,
    ) -> Result<Response<pb::StartJobResponse>, Status> {
        if let Err(reason) = from_coordinator(&request) {
            info!(code = "UNAUTHORIZED", %reason, "job rejected");
            return Ok(Response::new(unauthorized(reason)));
        }
        Ok(Response::new(self.decide(request.into_inner())))
    }

    async fn start_jobs(
        &self,
        request: Request<pb::StartJobsRequest>,
    ) -> Result<Response<pb::StartJobsResponse>, Status> {
        let auth = from_coordinator(&request);
        let jobs = request.into_inner().jobs;
        if jobs.len() > START_JOBS_MAX {
            return Err(Status::invalid_argument(format!(
                "{} jobs in one StartJobs call; at most {START_JOBS_MAX}",
                jobs.len()
            )));
        }
        let results = match auth {
            Err(reason) => {
                info!(code = "UNAUTHORIZED", %reason, jobs = jobs.len(), "jobs rejected");
                jobs.iter().map(|_| unauthorized(reason.clone())).collect()
            }
            Ok(()) => {
                // Every job of the batch is decided (admission, the job
                // table) before the answer; their plans and runner tasks are
                // made after it, so the answer does not wait for them.
                let mut launches = Vec::new();
                let results = jobs
                    .into_iter()
                    .map(|job| {
                        let (answer, launch) = self.decide_deferred(job);
                        launches.extend(launch);
                        answer
                    })
                    .collect();
                if !launches.is_empty() {
                    tokio::spawn(async move {
                        for l in launches {
                            l.start();
                        }
                    });
                }
                results
            }
        };
        Ok(Response::new(pb::StartJobsResponse { results }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        from_coordinator(&request).map_err(Status::permission_denied)?;
        let key = DispatchKey::from_field(request.into_inner().dispatch_id, "dispatch_id")?;
        let was_running = self.supervisor.cancel_job(&key);
        Ok(Response::new(pb::CancelJobResponse { was_running }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        from_coordinator(&request).map_err(Status::permission_denied)?;
        let key = DispatchKey::from_field(request.into_inner().dispatch_id, "dispatch_id")?;
        let resp = match self.supervisor.job_state(&key) {
            JobState::Unknown => pb::GetJobResponse {
                state: pb::AgentJobState::Unknown as i32,
                status: pb::JobStatus::Unspecified as i32,
                exit_code: -1,
            },
            JobState::Running => pb::GetJobResponse {
                state: pb::AgentJobState::Running as i32,
                status: pb::JobStatus::Unspecified as i32,
                exit_code: -1,
            },
            JobState::Finished { status, exit_code } => pb::GetJobResponse {
                state: pb::AgentJobState::Finished as i32,
                status: status.to_proto() as i32,
                exit_code,
            },
        };
        Ok(Response::new(resp))
    }

    type StreamLogsStream = Outgoing<pb::LogChunk>;

    async fn stream_logs(
        &self,
        request: Request<pb::StreamJobLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        from_coordinator(&request).map_err(Status::permission_denied)?;
        let req = LogRequest::try_from(request.into_inner())?;
        let permit = self.stream_permit()?;
        let supervisor = self.supervisor.clone();
        let key = req.key.clone();
        debug!(dispatch = %key, follow = req.follow, "log stream opened");
        let left_nothing = self.supervisor.left_nothing(&key);
        let rx = logs::stream_logs(
            self.supervisor.scratch_root(),
            req,
            left_nothing,
            move || supervisor.job_state(&key),
        )?;
        Ok(Response::new(outgoing(rx, permit)))
    }

    type StreamRowsStream = Outgoing<pb::RowBatch>;

    async fn stream_rows(
        &self,
        request: Request<pb::StreamJobRowsRequest>,
    ) -> Result<Response<Self::StreamRowsStream>, Status> {
        from_coordinator(&request).map_err(Status::permission_denied)?;
        let key = DispatchKey::from_field(request.into_inner().dispatch_id, "dispatch_id")?;
        let permit = self.stream_permit()?;
        let state = self.supervisor.job_state(&key);
        let left_nothing = self.supervisor.left_nothing(&key);
        let rx =
            crate::rows::stream_rows(self.supervisor.scratch_root(), &key, state, left_nothing)?;
        Ok(Response::new(outgoing(rx, permit)))
    }
}

/// Only the coordinator's certificate may control jobs on an agent. Without TLS
/// (`--insecure`, loopback only) there is no identity to check.
fn from_coordinator<T>(request: &Request<T>) -> Result<(), String> {
    use baton_proto::identity::{Peer, classify};
    let Some(certs) = request.peer_certs() else {
        return Ok(());
    };
    match certs.first().map(|leaf| classify(leaf)) {
        Some(Peer::Coordinator) => Ok(()),
        Some(other) => {
            tracing::warn!(peer = %other, "agent call refused: only the coordinator may control jobs");
            Err(format!(
                "{other} may not control jobs on this agent; only the coordinator may"
            ))
        }
        None => Err("no client certificate".to_string()),
    }
}
