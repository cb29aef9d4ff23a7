//! `CoordinatorService`: agent enrolment and renewal, registration, and the
//! completion stream.

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
    pub(crate) auth: crate::auth::Auth,
    /// The CA and certificate lifetime; `None` without TLS (no enrolment then).
    pub(crate) tls: Option<std::sync::Arc<crate::live_tls::LiveTls>>,
}

impl AgentApi {
    fn live_tls(&self, call: &str) -> Result<&crate::live_tls::LiveTls, Status> {
        self.tls.as_deref().ok_or_else(|| {
            status(CoordinatorError::InvalidRequest(format!(
                "{call} needs TLS; this coordinator runs --insecure"
            )))
        })
    }

    /// Records a certificate issued to `name` (so that revoking the agent
    /// revokes it too) and forgets the expired ones.
    async fn record_issued(
        &self,
        name: &str,
        issued: &crate::pki::Issued,
    ) -> Result<(), CoordinatorError> {
        use crate::store::{Op, Precondition};
        let store = self.auth.store();
        let prefix = crate::records::issued_prefix(name);
        let now = crate::auth::now_s();
        let mut ops: Vec<Op> = store
            .range(&prefix)
            .await?
            .into_iter()
            .filter(|kv| serde_json::from_slice::<u64>(&kv.value).is_ok_and(|t| t <= now))
            .map(|kv| Op::Delete {
                key: kv.key,
                pre: Precondition::Any,
            })
            .collect();
        let fp = baton_proto::tls::certs_from_pem(&issued.cert_pem)
            .map(|c| baton_proto::tls::sha256_hex(&c[0]))
            .map_err(|e| CoordinatorError::Transport(e.to_string()))?;
        ops.push(Op::Put {
            key: format!("{prefix}{fp}"),
            value: issued.not_after.max(0).to_string().into_bytes(),
            pre: Precondition::Any,
        });
        store.commit(ops).await?;
        Ok(())
    }

    /// Signs `csr_pem` as agent `name` off the runtime threads (nothing recorded yet).
    async fn issue(&self, csr_pem: String, name: &str) -> Result<crate::pki::Issued, Status> {
        let live = self.live_tls("signing")?;
        let ttl = live.cert_ttl();
        let tls = self.tls.clone();
        let who = crate::pki::Identity::Agent(name.to_string());
        tokio::task::spawn_blocking(move || {
            let live = tls
                .as_deref()
                .ok_or(crate::pki::PkiError::BadCsr("no TLS".into()))?;
            live.authority().sign_csr(&csr_pem, &who, ttl)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| {
            let mut s = Status::invalid_argument(e.to_string());
            if let Ok(v) = e.code().parse() {
                s.metadata_mut().insert(super::ERROR_CODE_KEY, v);
            }
            s
        })
    }

    /// Records `issued` for `name` and answers with it.
    async fn hand_out(
        &self,
        name: &str,
        issued: crate::pki::Issued,
    ) -> Result<pb::CertificateResponse, Status> {
        self.record_issued(name, &issued).await.map_err(status)?;
        let ca_pem = self.live_tls("signing")?.authority().ca_pem().to_string();
        Ok(pb::CertificateResponse {
            cert_pem: issued.cert_pem,
            ca_pem,
            not_after_unix_s: u64::try_from(issued.not_after).unwrap_or(0),
        })
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Largest weight honoured; a larger one is capped (an agent cannot claim the fleet).
const MAX_WEIGHT: u32 = 100;

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
            weight: r.weight.clamp(1, MAX_WEIGHT),
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
        let cred = super::credential(&request);
        let mut reg = Registration::try_from(request.into_inner()).map_err(status)?;
        reg.cert_fingerprint = super::fingerprint(&cred);
        super::check_agent(&self.auth.audit, &cred, &reg.name, "Register")?;
        let resp = self.handle.register(reg).await.map_err(status)?;
        Ok(Response::new(resp))
    }

    type ReportEventsStream = AckStream;

    async fn report_events(
        &self,
        request: Request<Streaming<pb::AgentEvent>>,
    ) -> Result<Response<Self::ReportEventsStream>, Status> {
        let cred = super::credential(&request);
        let fingerprint = super::fingerprint(&cred);
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
        super::check_agent(&self.auth.audit, &cred, &agent, "ReportEvents")?;
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

    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        self.live_tls("Enroll")?;
        let r = request.into_inner();
        if !valid_name(&r.name) || r.name.contains(['_', '.']) {
            return Err(status(CoordinatorError::InvalidRequest(
                "agent name must be 1-63 letters, digits and '-' (it becomes a DNS label)".into(),
            )));
        }
        let audit = &self.auth.audit;
        // The request is checked and signed before the token is burned: a bad
        // request does not cost the operator a token.
        let issued = self.issue(r.csr_pem, &r.name).await?;
        let now = crate::auth::now_s();
        match crate::auth::tokens::consume_enrolment(self.auth.store(), &r.token, &r.name, now)
            .await
        {
            Ok(id) => {
                let resp = self.hand_out(&r.name, issued).await?;
                audit.changed(
                    &r.name,
                    "Enroll",
                    "",
                    &format!("agent enrolled with token {id}"),
                );
                info!(agent = %r.name, token = %id, "agent enrolled");
                Ok(Response::new(resp))
            }
            Err(e) => {
                audit.denied(&format!("agent {}", r.name), "Enroll", "", e.code());
                Err(status(e))
            }
        }
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        self.live_tls("Renew")?;
        let cred = super::credential(&request);
        let crate::auth::Credential::Certificate {
            peer: baton_proto::identity::Peer::Agent(name),
            fingerprint,
        } = &cred
        else {
            let who = match &cred {
                crate::auth::Credential::Certificate { peer, .. } => peer.to_string(),
                _ => "anonymous".to_string(),
            };
            self.auth
                .audit
                .denied(&who, "Renew", "", "PERMISSION_DENIED");
            return Err(status(CoordinatorError::PermissionDenied(
                "Renew is for agents, with their current certificate".into(),
            )));
        };
        let revoked = self
            .auth
            .store()
            .get(&crate::records::revoked_key(fingerprint))
            .await
            .map_err(|e| status(e.into()))?;
        if revoked.is_some() {
            self.auth
                .audit
                .denied(&format!("agent {name}"), "Renew", "", "CERT_REVOKED");
            return Err(status(CoordinatorError::CertRevoked(format!(
                "the certificate of agent '{name}' was revoked; it cannot be renewed"
            ))));
        }
        let issued = self.issue(request.into_inner().csr_pem, name).await?;
        let resp = self.hand_out(name, issued).await?;
        debug!(agent = %name, "agent certificate renewed");
        Ok(Response::new(resp))
    }

    async fn fetch_package(
        &self,
        request: Request<pb::FetchPackageRequest>,
    ) -> Result<Response<pb::FetchPackageResponse>, Status> {
        let cred = super::credential(&request);
        super::fetch::fetch_package(&self.auth, &cred, request.into_inner()).await
    }
}
