//! Every transport decision of the coordinator in one place: how its gRPC
//! server is built and how it dials agents.
//!
//! Secure by default: mutual TLS with Baton's own CA ([`crate::pki`]). The
//! coordinator presents `coordinator.baton`; a client certificate of the same
//! CA is verified when presented, and each service decides what a caller
//! without one may do (only enrolment and API-token calls get anywhere). When
//! it dials agent NAME it verifies `NAME.agent.baton`, whatever the address.
//! Certificates renew while running ([`crate::live_tls`]). Plaintext exists
//! only as [`Security::Insecure`], which the CLI allows only with `--insecure`
//! on a loopback address; such a coordinator registers and dials only agents
//! whose address is loopback ([`baton_proto::plaintext`]).

use std::sync::Arc;
use std::time::Duration;

use baton_proto::agent_service_client::AgentServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};

use crate::error::CoordinatorError;
use crate::live_tls::LiveTls;
use crate::pki;

/// How connections are protected.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS with this node's (renewing) identity and trust root.
    Tls(Arc<LiveTls>),
    /// Plaintext (`--insecure`, loopback only).
    Insecure,
}

impl Security {
    fn scheme(&self) -> &'static str {
        match self {
            Security::Tls(_) => "https",
            Security::Insecure => "http",
        }
    }
}

fn transport_err(e: impl std::fmt::Display) -> CoordinatorError {
    CoordinatorError::Transport(e.to_string())
}

/// The server builder with Baton's settings (TLS is in the incoming stream,
/// [`baton_proto::tls::incoming`], so that certificates can renew).
pub fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
}

/// Plaintext goes to loopback only. Names were resolved and checked when the
/// agent registered (`Register` refuses a non-loopback address without TLS);
/// here an address written as a non-loopback IP is refused outright.
fn refuse_plaintext_literal(address: &str) -> Result<(), CoordinatorError> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    match baton_proto::plaintext::ip_literal(host) {
        Some(ip) if !baton_proto::plaintext::is_loopback_ip(ip) => {
            Err(CoordinatorError::PlaintextNotLoopback(format!(
                "refusing to dial agent address {address} in plaintext (--insecure): {ip} is not a \
                 loopback address; serve mutual TLS to reach agents on other machines"
            )))
        }
        _ => Ok(()),
    }
}

/// Dials agents: one lazily connecting client per agent.
#[derive(Debug, Clone)]
pub struct AgentDialer {
    security: Security,
}

impl AgentDialer {
    pub fn new(security: Security) -> Self {
        AgentDialer { security }
    }

    /// Changes when the coordinator's certificate renews: clients built
    /// before hold the old one and should be rebuilt.
    pub fn generation(&self) -> u64 {
        match &self.security {
            Security::Tls(live) => live.material().0,
            Security::Insecure => 0,
        }
    }

    /// A client for agent `name` at `address` (`host:port`); with TLS the
    /// agent must prove it is `name`.
    pub fn client(
        &self,
        name: &str,
        address: &str,
    ) -> Result<AgentServiceClient<Channel>, CoordinatorError> {
        if matches!(self.security, Security::Insecure) {
            refuse_plaintext_literal(address)?;
        }
        let url = format!("{}://{address}", self.security.scheme());
        let mut endpoint = Endpoint::from_shared(url)
            .map_err(|e| {
                CoordinatorError::Transport(format!("bad agent address '{address}': {e}"))
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Security::Tls(live) = &self.security {
            let (_, m) = live.material();
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&m.ca_pem))
                .identity(Identity::from_pem(&m.cert_pem, &m.key_pem))
                .domain_name(pki::Identity::Agent(name.to_string()).dns_name());
            endpoint = endpoint.tls_config(tls).map_err(transport_err)?;
        }
        Ok(AgentServiceClient::new(endpoint.connect_lazy()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insecure_coordinator_dials_only_loopback_agents() {
        let dialer = AgentDialer::new(Security::Insecure);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        assert!(dialer.client("a1", "127.0.0.1:7401").is_ok());
        assert!(dialer.client("a1", "[::1]:7401").is_ok());
        let e = dialer.client("a1", "10.0.0.7:7401").unwrap_err();
        assert_eq!(e.code(), "PLAINTEXT_NOT_LOOPBACK");
        assert!(e.to_string().contains("10.0.0.7"), "{e}");
        let e = dialer.client("a1", "[2001:db8::1]:7401").unwrap_err();
        assert_eq!(e.code(), "PLAINTEXT_NOT_LOOPBACK");
    }
}
