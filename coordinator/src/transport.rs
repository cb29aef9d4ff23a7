//! Every transport decision of the coordinator in one place: how its gRPC
//! server is built and how it dials agents. TLS (issue: secure by default)
//! plugs in here and nowhere else.

use std::time::Duration;

use baton_proto::agent_service_client::AgentServiceClient;
use tonic::transport::{Channel, Endpoint, Server};

use crate::error::CoordinatorError;

/// A lazily connecting client for an agent at `address` (`host:port`).
pub fn agent_client(address: &str) -> Result<AgentServiceClient<Channel>, CoordinatorError> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| CoordinatorError::Transport(format!("bad agent address '{address}': {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(AgentServiceClient::new(endpoint.connect_lazy()))
}

/// The server builder with Baton's settings.
pub fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
}
