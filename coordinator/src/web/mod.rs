//! The web dashboard (`baton coordinator --dashboard-listen ADDR`): pages of
//! the fleet, the executions, one execution live and the catalog, served by
//! the coordinator itself over HTTPS (HTTP/2, or HTTP/1.1 for a client that
//! does not offer it).
//!
//! - **TLS.** The dashboard's certificate is issued at start by Baton's CA
//!   (the coordinator holds it) for the names given with `--dashboard-name`
//!   (DNS names or IP addresses a browser uses; never a Baton identity such
//!   as `coordinator.baton`), for server authentication only, and renewed at two thirds of its
//!   lifetime without a restart ([`cert`]). A browser trusts Baton's CA once.
//! - **Login** with an API token (`baton token create --kind api`), which
//!   opens a session held in an HttpOnly, Secure, SameSite=Strict cookie
//!   ([`session`]); the token is authenticated again on every request.
//! - **Authorization** through the same access layer as the gRPC API
//!   ([`crate::access`]): the same folder permissions, deny by default,
//!   refusals audited per source.
//! - **Bounded.** At most [`MAX_CONNECTIONS`] connections, [`MAX_PER_SOURCE`]
//!   of one address (one more is closed at once), [`HANDSHAKE_TIMEOUT`] for TLS and [`HEADER_TIMEOUT`]
//!   for a request's head, request bodies of at most 8 KiB
//!   bytes, listings and children paged. A request without a session reads
//!   nothing from the store and writes nothing but its aggregated refusal.
//! - **No build step.** The page, its script and its style are embedded in
//!   the binary ([`assets`]); they fetch nothing from anywhere else (the
//!   content security policy says so to the browser).
//! - **Leader only.** A standby answers `503 NOT_LEADER`.

pub mod assets;
pub mod cert;
mod json;
mod live;
pub mod reply;
mod routes;
pub mod session;
mod state;

pub(crate) use state::Web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::CoordinatorError;
use crate::live_tls::LiveTls;

/// Connections served at once (pages keep one or two event streams open).
pub const MAX_CONNECTIONS: usize = 128;
/// Connections of one source address at once: one address cannot take every
/// place (a browser opens at most six per host).
pub const MAX_PER_SOURCE: usize = 32;
/// Time to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer of an HTTP/1.1 connection, and the most header bytes of an
/// HTTP/2 request.
const MAX_BUF: usize = 16 * 1024;
/// Requests (event streams included) open at once on one HTTP/2 connection.
const MAX_H2_STREAMS: u32 = 32;
/// An HTTP/2 connection whose peer does not answer a ping this long is closed.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Where and as what the dashboard is served.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub listen: SocketAddr,
    /// Names (DNS or IP) in the certificate besides `coordinator.baton`.
    pub names: Vec<String>,
}

/// Binds the dashboard's listener (so that a taken port fails the start).
pub async fn bind(config: &DashboardConfig) -> Result<TcpListener, CoordinatorError> {
    TcpListener::bind(config.listen).await.map_err(|e| {
        CoordinatorError::Config(format!(
            "--dashboard-listen {}: cannot listen: {e}",
            config.listen
        ))
    })
}

/// Serves the dashboard on `listener` until `shutdown`.
pub(crate) fn spawn(
    listener: TcpListener,
    config: DashboardConfig,
    tls: Arc<LiveTls>,
    web: Web,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let certificate = cert::DashboardCert::issue(tls, config.names.clone())?;
    let server_config = certificate.server_config()?;
    tokio::spawn(certificate.renew_loop(shutdown.clone()));
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
    let web = Arc::new(web);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        std::net::IpAddr,
        usize,
    >::new()));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, names = ?config.names, "dashboard serving at https://{addr}/");
    }
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "dashboard: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Some(source) = PerSource::enter(&per_source, peer.ip()) else {
                debug!(%peer, "dashboard: too many connections from this address; closed");
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "dashboard: too many connections; closed");
                continue;
            };
            let (acceptor, web, shutdown) = (acceptor.clone(), web.clone(), shutdown.clone());
            tokio::spawn(async move {
                let _permit = (permit, source);
                let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                else {
                    debug!(%peer, "dashboard: TLS handshake failed or timed out");
                    return;
                };
                let service = service_fn(move |req| {
                    let web = web.clone();
                    crate::auth::audit::with_source(Some(peer.ip()), async move {
                        Ok::<_, std::convert::Infallible>(routes::handle(web, req).await)
                    })
                });
                // HTTP/2 when the browser offers it (ALPN): its live streams
                // and requests share one connection, so several open pages
                // do not run into a browser's six connections per host.
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_BUF);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(MAX_H2_STREAMS)
                    .max_header_list_size(MAX_BUF as u32)
                    .keep_alive_interval(Some(H2_PING_EVERY))
                    .keep_alive_timeout(H2_PING_TIMEOUT);
                let conn = builder.serve_connection(TokioIo::new(tls), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            debug!(%peer, error = %e, "dashboard connection ended");
                        }
                    }
                    () = shutdown.cancelled() => {}
                }
            });
        }
    });
    Ok(())
}

/// One connection of a source address, counted while it lives.
struct PerSource {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl PerSource {
    /// Counts a connection of `ip`; `None` when it has [`MAX_PER_SOURCE`].
    fn enter(
        counts: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
    ) -> Option<PerSource> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(PerSource {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PerSource {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_a_bounded_number_of_connections() {
        let counts = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<PerSource> = (0..MAX_PER_SOURCE)
            .map(|_| PerSource::enter(&counts, ip).unwrap())
            .collect();
        assert!(PerSource::enter(&counts, ip).is_none());
        assert!(PerSource::enter(&counts, "10.0.0.2".parse().unwrap()).is_some());
        drop(held);
        assert!(
            counts.lock().unwrap().get(&ip).is_none(),
            "forgotten when none is left"
        );
        assert!(PerSource::enter(&counts, ip).is_some());
    }
}
