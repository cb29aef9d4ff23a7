//! Every transport decision of the coordinator in one place: how its gRPC
//! server is built and how it dials agents.
//!
//! Secure by default: mutual TLS with Baton's own CA ([`crate::pki`]). The
//! coordinator presents `coordinator.baton` and requires a client certificate
//! from the same CA; when it dials agent NAME it verifies `NAME.agent.baton`,
//! whatever the address. Plaintext exists only as [`Security::Insecure`], which
//! the CLI allows only with `--insecure` on a loopback address.

use std::time::Duration;

use baton_proto::agent_service_client::AgentServiceClient;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};

use crate::error::CoordinatorError;
use crate::pki::{self, TlsMaterial};

/// How connections are protected.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS with this node's identity and trust root.
    Tls(TlsMaterial),
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

/// The server builder with Baton's settings.
pub fn server(security: &Security) -> Result<Server, CoordinatorError> {
    let builder = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    match security {
        Security::Insecure => Ok(builder),
        Security::Tls(m) => {
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(&m.cert_pem, &m.key_pem))
                .client_ca_root(Certificate::from_pem(&m.ca_pem));
            builder.tls_config(tls).map_err(transport_err)
        }
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

    /// A client for agent `name` at `address` (`host:port`); with TLS the
    /// agent must prove it is `name`.
    pub fn client(
        &self,
        name: &str,
        address: &str,
    ) -> Result<AgentServiceClient<Channel>, CoordinatorError> {
        let url = format!("{}://{address}", self.security.scheme());
        let mut endpoint = Endpoint::from_shared(url)
            .map_err(|e| {
                CoordinatorError::Transport(format!("bad agent address '{address}': {e}"))
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Security::Tls(m) = &self.security {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&m.ca_pem))
                .identity(Identity::from_pem(&m.cert_pem, &m.key_pem))
                .domain_name(pki::Identity::Agent(name.to_string()).dns_name());
            endpoint = endpoint.tls_config(tls).map_err(transport_err)?;
        }
        Ok(AgentServiceClient::new(endpoint.connect_lazy()))
    }
}
