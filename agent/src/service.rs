//! The tonic `AgentService` edge: convert and validate, call the supervisor, map.
//!
//! No admission logic and no process handling here (see [`crate::supervisor`]).

use std::sync::Arc;

use baton_proto as pb;
use baton_proto::agent_service_server::AgentService;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::admission::Rejection;
use crate::error::AgentError;
use crate::jobs::JobState;
use crate::model::{DispatchKey, StartJob};
use crate::supervisor::Supervisor;

/// `AgentService` over a [`Supervisor`].
pub struct AgentGrpc {
    supervisor: Arc<Supervisor>,
}

impl AgentGrpc {
    pub fn new(supervisor: Arc<Supervisor>) -> AgentGrpc {
        AgentGrpc { supervisor }
    }
}

fn accepted() -> pb::StartJobResponse {
    pb::StartJobResponse {
        outcome: Some(pb::start_job_response::Outcome::Accepted(pb::Accepted {})),
    }
}

fn rejected(r: Rejection) -> pb::StartJobResponse {
    pb::StartJobResponse {
        outcome: Some(pb::start_job_response::Outcome::Rejected(pb::Rejected {
            code: r.code as i32,
            reason: r.reason,
        })),
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
            return Ok(Response::new(rejected(Rejection::new(
                pb::RejectCode::Unauthorized,
                reason,
            ))));
        }
        let job = match StartJob::try_from(request.into_inner()) {
            Ok(job) => job,
            Err(e) => {
                let reason = match e {
                    AgentError::InvalidRequest(m) => m,
                    other => other.to_string(),
                };
                info!(code = "INVALID_REQUEST", %reason, "job rejected");
                return Ok(Response::new(rejected(Rejection::new(
                    pb::RejectCode::InvalidRequest,
                    reason,
                ))));
            }
        };
        let id = job.dispatch.clone();
        Ok(Response::new(match self.supervisor.start_job(job) {
            Ok(()) => {
                debug!(dispatch = %id, "job accepted");
                accepted()
            }
            Err(r) => {
                info!(dispatch = %id, code = r.code_str(), "job rejected");
                rejected(r)
            }
        }))
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
