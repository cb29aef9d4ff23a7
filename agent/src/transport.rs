//! All transport setup of the agent: its gRPC server and its channel to the coordinator.
//!
//! Kept in one module because TLS (rustls, mTLS) is added here next; nothing else in
//! the crate builds a server or an endpoint.

use std::future::Future;
use std::time::Duration;

use baton_proto::agent_service_server::AgentServiceServer;
use baton_proto::coordinator_service_client::CoordinatorServiceClient;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint, Server};

use crate::error::AgentError;
use crate::service::AgentGrpc;

/// Connect timeout towards the coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive: a silent coordinator is noticed within about 20 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on concurrent RPCs per connection from the coordinator.
const SERVER_CONCURRENCY_PER_CONN: usize = 256;

/// Serves `AgentService` on `listener` until `shutdown` resolves.
pub async fn serve(
    service: AgentGrpc,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    Server::builder()
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(SERVER_CONCURRENCY_PER_CONN)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(AgentServiceServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| AgentError::Transport(e.to_string()))
}

/// Connects to the coordinator at `url` (`http://host:port`).
pub async fn connect_coordinator(
    url: &str,
) -> Result<CoordinatorServiceClient<Channel>, AgentError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| AgentError::ConfigInvalid(format!("coordinator_url {url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| AgentError::CoordinatorUnreachable(format!("connecting to {url}: {e}")))?;
    Ok(CoordinatorServiceClient::new(channel))
}
