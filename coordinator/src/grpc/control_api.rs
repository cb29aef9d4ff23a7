//! `ControlService`: what the CLI and SDKs call.

use std::pin::Pin;

use baton_proto as pb;
use pb::control_service_server::ControlService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{convert, status};
use crate::api::{Coordinator, Watched};
use crate::error::CoordinatorError;

pub struct ControlApi {
    pub(crate) coordinator: Coordinator,
}

type SummaryStream = Pin<Box<dyn Stream<Item = Result<pb::ExecutionSummary, Status>> + Send>>;

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn start_execution(
        &self,
        request: Request<pb::StartExecutionRequest>,
    ) -> Result<Response<pb::StartExecutionResponse>, Status> {
        let r = request.into_inner();
        let bundle = r.bundle.ok_or_else(|| {
            status(CoordinatorError::InvalidRequest(
                "bundle is required".into(),
            ))
        })?;
        let id = self
            .coordinator
            .start(
                bundle.root,
                bundle.files.into_iter().collect(),
                r.parameters.into_iter().collect(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::StartExecutionResponse {
            execution_id: id,
        }))
    }

    type WatchExecutionStream = SummaryStream;

    async fn watch_execution(
        &self,
        request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        let id = request.into_inner().execution_id;
        let out: SummaryStream = match self.coordinator.watch(&id).await.map_err(status)? {
            Watched::Live(rx) => {
                // Ends with the last summary when the execution ends.
                let s = tokio_stream::wrappers::WatchStream::new(rx)
                    .filter(|s| !s.execution_id.is_empty())
                    .map(|s| Ok(convert::summary(&s)));
                Box::pin(s)
            }
            Watched::Ended(s) => Box::pin(tokio_stream::once(Ok(convert::summary(&s)))),
        };
        Ok(Response::new(out))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::ExecutionDetail>, Status> {
        let id = request.into_inner().execution_id;
        let view = self.coordinator.view(&id).await.map_err(status)?;
        Ok(Response::new(convert::detail(view)))
    }

    async fn cancel_execution(
        &self,
        request: Request<pb::CancelExecutionRequest>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        let r = request.into_inner();
        if r.reason.len() > 1024 {
            return Err(status(CoordinatorError::InvalidRequest(
                "reason is longer than 1024 bytes".into(),
            )));
        }
        let state = self
            .coordinator
            .cancel(&r.execution_id, &r.reason)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CancelExecutionResponse { state }))
    }

    async fn list_executions(
        &self,
        request: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        let r = request.into_inner();
        let (list, next) = self
            .coordinator
            .list(&r.state, &r.package, r.limit as usize, &r.page_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListExecutionsResponse {
            executions: list.iter().map(convert::summary).collect(),
            next_page_token: next,
        }))
    }

    async fn set_agent_state(
        &self,
        request: Request<pb::SetAgentStateRequest>,
    ) -> Result<Response<pb::AgentInfo>, Status> {
        let r = request.into_inner();
        let agent = self
            .coordinator
            .set_agent(&r.name, &r.action)
            .await
            .map_err(status)?;
        Ok(Response::new(convert::agent(agent)))
    }

    async fn list_agents(
        &self,
        _request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let agents = self.coordinator.agents().await.map_err(status)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: agents.into_iter().map(convert::agent).collect(),
        }))
    }
}
