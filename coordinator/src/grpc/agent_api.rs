//! `CoordinatorService`: agent registration and the completion stream.

use std::pin::Pin;

use baton_proto as pb;
use pb::coordinator_service_server::CoordinatorService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::status;
use crate::error::CoordinatorError;
use crate::scheduler::Registration;
use crate::scheduler_task::SchedulerHandle;

/// Most slots one agent may declare.
pub const MAX_SLOTS: u32 = 10_000;

pub struct AgentApi {
    pub(crate) handle: SchedulerHandle,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl TryFrom<pb::RegisterRequest> for Registration {
    type Error = CoordinatorError;
    fn try_from(r: pb::RegisterRequest) -> Result<Self, Self::Error> {
        let bad = |m: &str| CoordinatorError::InvalidRequest(m.to_string());
        if !valid_name(&r.name) {
            return Err(bad(
                "agent name must be 1-128 characters of letters, digits, '-', '_', '.'",
            ));
        }
        if r.address.is_empty() || !r.address.contains(':') || r.address.len() > 256 {
            return Err(bad("address must be host:port"));
        }
        if r.slots == 0 || r.slots > MAX_SLOTS {
            return Err(CoordinatorError::InvalidRequest(format!(
                "slots must be 1..={MAX_SLOTS}"
            )));
        }
        if r.boot_id.is_empty() || r.outbox_id.is_empty() {
            return Err(bad("boot_id and outbox_id are required"));
        }
        if r.labels.len() > 64 {
            return Err(bad("at most 64 labels"));
        }
        Ok(Registration {
            name: r.name,
            address: r.address,
            labels: r.labels.into_iter().collect(),
            slots: r.slots,
            version: r.version,
            boot_id: r.boot_id,
            outbox_id: r.outbox_id,
            cert_fingerprint: String::new(),
        })
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<pb::EventAck, Status>> + Send>>;

#[tonic::async_trait]
impl CoordinatorService for AgentApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let peer = super::peer(&request);
        let fingerprint = super::peer_fingerprint(&request);
        let mut reg = Registration::try_from(request.into_inner()).map_err(status)?;
        reg.cert_fingerprint = fingerprint;
        super::check_agent(peer.as_ref(), &reg.name, "Register")?;
        let resp = self.handle.register(reg).await.map_err(status)?;
        Ok(Response::new(resp))
    }

    type ReportEventsStream = AckStream;

    async fn report_events(
        &self,
        request: Request<Streaming<pb::AgentEvent>>,
    ) -> Result<Response<Self::ReportEventsStream>, Status> {
        let peer = super::peer(&request);
        let fingerprint = super::peer_fingerprint(&request);
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the completion stream ended before Hello"))?;
        let Some(pb::agent_event::Body::Hello(hello)) = first.body else {
            return Err(status(CoordinatorError::InvalidRequest(
                "the first event of a completion stream must be Hello".into(),
            )));
        };
        let agent = hello.agent_id;
        super::check_agent(peer.as_ref(), &agent, "ReportEvents")?;
        let (acks, rx) = tokio::sync::watch::channel(0u64);
        self.handle
            .open_stream(agent.clone(), hello.boot_id, fingerprint, acks)
            .await
            .map_err(status)?;
        info!(%agent, "completion stream open");
        let handle = self.handle.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(ev)) => {
                        if handle.event(agent.clone(), ev).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(%agent, error = %e, "completion stream broke");
                        break;
                    }
                }
            }
            debug!(%agent, "completion stream closed");
        });
        let out = tokio_stream::wrappers::WatchStream::from_changes(rx)
            .map(|acked_seq| Ok(pb::EventAck { acked_seq }));
        Ok(Response::new(Box::pin(out)))
    }
}
