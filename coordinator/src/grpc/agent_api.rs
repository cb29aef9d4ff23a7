//! `CoordinatorService`: agent enrolment and renewal, registration, and the
//! completion stream.

use std::pin::Pin;

use baton_proto as pb;
use pb::coordinator_service_server::CoordinatorService;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::error_status::status;
use crate::auth::Credential;
use crate::domain::Registration;
use crate::error::CoordinatorError;
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
                s.metadata_mut()
                    .insert(super::error_status::ERROR_CODE_KEY, v);
            }
            s
        })
    }

    /// The answer carrying a certificate already recorded.
    fn answer(&self, issued: crate::pki::Issued) -> Result<pb::CertificateResponse, Status> {
        let ca_pem = self.live_tls("signing")?.authority().ca_pem().to_string();
        Ok(pb::CertificateResponse {
            cert_pem: issued.cert_pem,
            ca_pem,
            not_after_unix_s: u64::try_from(issued.not_after).unwrap_or(0),
        })
    }

    /// An audited refusal of an agent call.
    fn refuse(&self, who: &str, call: &str, e: CoordinatorError) -> Status {
        self.auth.audit.denied(who, call, "", e.code());
        status(e)
    }

    /// The caller must be agent `agent`'s certificate (or plaintext), neither
    /// revoked nor of a revoked identity ([`crate::auth::identity::check_certificate`]);
    /// returns its identity record. Refusals are audited.
    async fn check_caller(
        &self,
        cred: &Credential,
        agent: &str,
        call: &str,
    ) -> Result<Option<crate::auth::identity::AgentIdentity>, Status> {
        super::caller::check_agent(&self.auth.audit, cred, agent, call)?;
        if matches!(cred, Credential::Plaintext) {
            return Ok(None);
        }
        crate::auth::identity::check_certificate(
            self.auth.store(),
            agent,
            &super::caller::fingerprint(cred),
        )
        .await
        .map_err(|e| self.refuse(&format!("agent {agent}"), call, e))
    }
}

/// Hex SHA-256 of the first certificate of `cert_pem`.
fn pem_fingerprint(cert_pem: &str) -> Result<String, Status> {
    baton_proto::tls::certs_from_pem(cert_pem)
        .map(|c| baton_proto::tls::sha256_hex(&c[0]))
        .map_err(|e| status(CoordinatorError::Transport(e.to_string())))
}

/// Validity `(not_before, not_after)` of the caller's certificate.
fn peer_validity<T>(request: &Request<T>) -> Option<(i64, i64)> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    baton_proto::identity::validity(certs.first()?)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The address an agent registered without TLS is dialled at: this coordinator
/// would send jobs (and their parameters) there in clear, so only on this
/// machine. The name is resolved once, here, and the loopback address checked
/// is the one kept, so that a DNS answer changing later cannot redirect it.
async fn plaintext_address(address: &str) -> Result<String, CoordinatorError> {
    baton_proto::plaintext::loopback_addr(address)
        .await
        .map(|a| a.to_string())
        .map_err(|e| CoordinatorError::PlaintextNotLoopback(e.to_string()))
}

/// The agent name a completion stream claims, checked before anything (the
/// audit's refusal table among them) uses it: the rule of `Register`'s name.
fn check_agent_id(agent: &str) -> Result<(), CoordinatorError> {
    if valid_name(agent) {
        Ok(())
    } else {
        Err(CoordinatorError::InvalidRequest(
            "agent_id must be 1-128 characters of letters, digits, '-', '_', '.'".into(),
        ))
    }
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
        const CALL: &str = "Register";
        let cred = super::caller::credential(&request);
        let mut reg = Registration::try_from(request.into_inner()).map_err(status)?;
        reg.cert_fingerprint = super::caller::fingerprint(&cred);
        let identity = self.check_caller(&cred, &reg.name, CALL).await?;
        let who = format!("agent {}", reg.name);
        crate::auth::identity::check_labels(&reg.name, identity.as_ref(), &reg.labels)
            .map_err(|e| self.refuse(&who, CALL, e))?;
        if self.tls.is_none() {
            reg.address = plaintext_address(&reg.address).await.map_err(status)?;
        }
        let resp = self.handle.register(reg).await.map_err(|e| match e {
            CoordinatorError::PermissionDenied(_)
            | CoordinatorError::CertRevoked(_)
            | CoordinatorError::AgentRevoked(_) => self.refuse(&who, CALL, e),
            e => status(e),
        })?;
        Ok(Response::new(resp.into()))
    }

    type ReportEventsStream = AckStream;

    async fn report_events(
        &self,
        request: Request<Streaming<pb::AgentEvent>>,
    ) -> Result<Response<Self::ReportEventsStream>, Status> {
        let cred = super::caller::credential(&request);
        let fingerprint = super::caller::fingerprint(&cred);
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
        const CALL: &str = "ReportEvents";
        let agent = hello.agent_id;
        check_agent_id(&agent).map_err(status)?;
        self.check_caller(&cred, &agent, CALL).await?;
        let (acks, rx) = tokio::sync::watch::channel(0u64);
        self.handle
            .open_stream(agent.clone(), hello.boot_id, fingerprint, acks)
            .await
            .map_err(|e| match e {
                CoordinatorError::PermissionDenied(_)
                | CoordinatorError::CertRevoked(_)
                | CoordinatorError::AgentRevoked(_) => {
                    self.refuse(&format!("agent {agent}"), CALL, e)
                }
                e => status(e),
            })?;
        info!(%agent, "completion stream open");
        let handle = self.handle.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(ev)) => {
                        if handle.event(agent.clone(), ev.into()).await.is_err() {
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
        const CALL: &str = "Enroll";
        self.live_tls(CALL)?;
        let r = request.into_inner();
        if !valid_name(&r.name) || r.name.contains(['_', '.']) {
            return Err(status(CoordinatorError::InvalidRequest(
                "agent name must be 1-63 letters, digits and '-' (it becomes a DNS label)".into(),
            )));
        }
        let who = format!("agent {}", r.name);
        let store = self.auth.store();
        // The request is checked and signed before the token is burned: a bad
        // request does not cost the operator a token.
        let issued = self.issue(r.csr_pem, &r.name).await?;
        let fingerprint = pem_fingerprint(&issued.cert_pem)?;
        let now = crate::auth::now_s();
        let (token, rev) = crate::auth::tokens::check_enrolment(store, &r.token, &r.name, now)
            .await
            .map_err(|e| self.refuse(&who, CALL, e))?;
        let id = token.id.clone();
        let enrolment = crate::auth::identity::Enrolment {
            name: &r.name,
            token_id: &id,
            allowed_labels: token.labels.clone(),
            fingerprint: &fingerprint,
            not_after: issued.not_after,
            now_s: now,
        };
        // The name must be free; the token burns, the identity and its first
        // certificate are recorded, all in one commit.
        let mut ops = crate::auth::identity::enrolment_ops(store, &enrolment)
            .await
            .map_err(|e| self.refuse(&who, CALL, e))?;
        ops.push(crate::auth::tokens::burn_op(token, rev, now).map_err(status)?);
        match store.commit(ops).await {
            Ok(_) => {}
            Err(crate::store::StoreError::Conflict { .. }) => {
                // The token was used meanwhile, or the name taken.
                let e = match crate::auth::tokens::check_enrolment(store, &r.token, &r.name, now)
                    .await
                {
                    Err(e) => e,
                    Ok(_) => CoordinatorError::AgentNameTaken(r.name.clone()),
                };
                return Err(self.refuse(&who, CALL, e));
            }
            Err(e) => return Err(status(e.into())),
        }
        self.auth.audit.changed(
            &r.name,
            CALL,
            "",
            &format!("agent enrolled with token {id}"),
        );
        info!(agent = %r.name, token = %id, "agent enrolled");
        Ok(Response::new(self.answer(issued)?))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        const CALL: &str = "Renew";
        let live = self.live_tls(CALL)?;
        let cred = super::caller::credential(&request);
        let Credential::Certificate {
            peer: baton_proto::identity::Peer::Agent(name),
            fingerprint,
        } = &cred
        else {
            let who = match &cred {
                Credential::Certificate { peer, .. } => peer.to_string(),
                _ => "anonymous".to_string(),
            };
            return Err(self.refuse(
                &who,
                CALL,
                CoordinatorError::PermissionDenied(
                    "Renew is for agents, with their current certificate".into(),
                ),
            ));
        };
        let who = format!("agent {name}");
        let store = self.auth.store();
        crate::auth::identity::check_certificate(store, name, fingerprint)
            .await
            .map_err(|e| self.refuse(&who, CALL, e))?;
        // A certificate far from its end need not renew (agents renew at two
        // thirds of its lifetime).
        let now_s = i64::try_from(crate::auth::now_s()).unwrap_or(i64::MAX);
        if let Some((nb, na)) = peer_validity(&request)
            && na - now_s > (na - nb) / 2
        {
            return Err(self.refuse(
                &who,
                CALL,
                CoordinatorError::RenewTooSoon {
                    why: format!(
                        "the certificate of agent '{name}' has more than half of its lifetime left"
                    ),
                    retry_after_s: u64::try_from(na - now_s - (na - nb) / 2).unwrap_or(1),
                },
            ));
        }
        let interval_ms = crate::auth::identity::renew_interval_ms(
            u64::try_from(live.cert_ttl().as_millis()).unwrap_or(u64::MAX),
        );
        crate::auth::identity::may_renew(store, name, unix_ms(), interval_ms)
            .await
            .map_err(|e| self.refuse(&who, CALL, e))?;
        let issued = self.issue(request.into_inner().csr_pem, name).await?;
        let fp = pem_fingerprint(&issued.cert_pem)?;
        crate::auth::identity::record_renewal(
            store,
            name,
            &fp,
            issued.not_after,
            unix_ms(),
            interval_ms,
        )
        .await
        .map_err(|e| self.refuse(&who, CALL, e))?;
        debug!(agent = %name, "agent certificate renewed");
        Ok(Response::new(self.answer(issued)?))
    }

    async fn fetch_package(
        &self,
        request: Request<pb::FetchPackageRequest>,
    ) -> Result<Response<pb::FetchPackageResponse>, Status> {
        let cred = super::caller::credential(&request);
        super::fetch::fetch_package(&self.auth, &cred, request.into_inner()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_stream_claims_a_valid_agent_name() {
        assert!(check_agent_id("build-01.eu_west").is_ok());
        for bad in [
            "",
            "a b",
            "agent\n",
            "ä",
            &"a".repeat(129),
            &"x".repeat(32 << 20),
        ] {
            let e = check_agent_id(bad).unwrap_err();
            assert_eq!(
                e.code(),
                "INVALID_REQUEST",
                "{:?}",
                &bad[..bad.len().min(10)]
            );
            assert!(e.to_string().len() < 200, "the name is not echoed");
        }
    }

    #[tokio::test]
    async fn a_plaintext_registration_keeps_the_loopback_address_it_resolved() {
        let a = plaintext_address("localhost:7000").await.unwrap();
        let sa: std::net::SocketAddr = a.parse().expect("an address, not a name");
        assert!(sa.ip().is_loopback() && sa.port() == 7000, "{a}");
        assert_eq!(plaintext_address("[::1]:7").await.unwrap(), "[::1]:7");
        assert_eq!(
            plaintext_address("192.0.2.1:7").await.unwrap_err().code(),
            "PLAINTEXT_NOT_LOOPBACK"
        );
    }
}
