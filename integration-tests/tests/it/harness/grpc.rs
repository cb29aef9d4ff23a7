//! Direct gRPC calls to an agent's `AgentService`, the way the coordinator makes them.
//!
//! The admission edge (accept or reject before running) is a contract of its own;
//! these helpers let a test hit it with hand-made requests, bypassing the coordinator.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use std::path::PathBuf;

use baton_proto::agent_service_client::AgentServiceClient;
use baton_proto::start_job_response::Outcome;
use baton_proto::{DispatchId, PackageRef, RejectCode, StartJobRequest, StartJobResponse};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::fixtures::sha256_hex;

/// The coordinator epoch of a fresh single coordinator (see the brief: agents refuse
/// epochs older than the newest they have seen, and a fresh coordinator's is 1).
pub const FRESH_EPOCH: u64 = 1;

const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A well-formed request for `package_text` (content inline, correct hash).
pub fn start_job_request(execution_id: &str, package_text: &str) -> StartJobRequest {
    StartJobRequest {
        dispatch_id: Some(DispatchId {
            execution_id: execution_id.to_owned(),
            task_path: "fan".to_owned(),
            item_index: 0,
            attempt: 1,
        }),
        package: Some(PackageRef {
            name: "work".to_owned(),
            content_hash: sha256_hex(package_text.as_bytes()),
            content: package_text.as_bytes().to_vec(),
        }),
        parameters: HashMap::from([("shard".to_owned(), "probe".to_owned())]),
        coordinator_epoch: FRESH_EPOCH,
        deadline_ms: 0,
        traceparent: String::new(),
        tracestate: String::new(),
        folder: String::new(),
    }
}

/// How to reach an agent over mutual TLS: a client identity of the cluster's CA
/// (`ca.pem`, `tls.pem`, `tls.key`) and the agent's name, which its certificate proves.
pub struct AgentTls {
    pub client_dir: PathBuf,
    pub agent: String,
}

impl AgentTls {
    fn config(&self) -> Result<ClientTlsConfig, String> {
        let read = |f: &str| {
            std::fs::read_to_string(self.client_dir.join(f))
                .map_err(|e| format!("read {}: {e}", self.client_dir.join(f).display()))
        };
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")?))
            .identity(Identity::from_pem(read("tls.pem")?, read("tls.key")?))
            .domain_name(format!("{}.agent.baton", self.agent)))
    }
}

/// Calls `StartJob` on the agent at `addr` over mutual TLS, bounded in time.
pub fn start_job(
    tls: &AgentTls,
    addr: SocketAddr,
    req: StartJobRequest,
) -> Result<StartJobResponse, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = tls.config()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let call = async {
            let channel = Endpoint::from_shared(format!("https://{addr}"))
                .map_err(|e| e.to_string())?
                .tls_config(tls)
                .map_err(|e| format!("TLS setup: {e}"))?
                .connect()
                .await
                .map_err(|e| format!("connect to agent {addr}: {e}"))?;
            let mut client = AgentServiceClient::new(channel);
            client
                .start_job(req)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("StartJob returned status {:?}: {}", s.code(), s.message()))
        };
        tokio::time::timeout(RPC_TIMEOUT, call)
            .await
            .map_err(|_| format!("StartJob to {addr} took more than {RPC_TIMEOUT:?}"))?
    })
}

/// What an answer says, flattened for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Rejected {
        code: RejectCode,
        reason: String,
    },
    /// No outcome set, or a rejection code this build does not know.
    Malformed(String),
}

pub fn answer(resp: &StartJobResponse) -> Answer {
    match &resp.outcome {
        Some(Outcome::Accepted(_)) => Answer::Accepted,
        Some(Outcome::Rejected(r)) => match RejectCode::try_from(r.code) {
            Ok(code) => Answer::Rejected {
                code,
                reason: r.reason.clone(),
            },
            Err(_) => Answer::Malformed(format!("unknown reject code {}: {resp:?}", r.code)),
        },
        None => Answer::Malformed(format!("no outcome: {resp:?}")),
    }
}
