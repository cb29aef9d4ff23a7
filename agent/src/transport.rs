//! All transport setup of the agent: its gRPC server and its channel to the coordinator.
//!
//! Secure by default: with [`TlsPem`] the agent serves `AgentService` under mutual
//! TLS — it presents `NAME.agent.baton` and accepts only clients holding a
//! certificate of the same CA — and verifies that the coordinator it dials is
//! `coordinator.baton`. Without it (the CLI's `--insecure`, loopback only) both
//! sides are plaintext, and [`refuse_plaintext_beyond_loopback`] keeps it on
//! this machine: the coordinator URL and the advertised address must be loopback.
//! Nothing else in the crate builds a server or an endpoint (but enrolment,
//! [`crate::enrol`], which has no certificate yet). The server is generic over the
//! service it serves ([`crate::service`] is above this module, not below it).
//!
//! The certificate renews while the agent runs ([`crate::renew`]): [`LiveTls`]
//! ([`crate::tls`]) holds the current one; the server presents it from the next
//! handshake on, and every new connection to the coordinator uses it.
//!
//! The coordinator URL may be a comma-separated list (every coordinator of a highly
//! available cluster): [`connect_coordinator`] then returns a client over a
//! [`baton_proto::failover::Follow`] channel, which sends `Register`, `Renew` and
//! `FetchPackage` on to the leader a standby names (checked with the same CA and
//! name) or to the next URL, and starts from the leader this process last found.
//! Every URL of the list is checked like a single one (https:// with TLS, loopback
//! for plaintext).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton_proto::agent_service_server::{AgentService, AgentServiceServer};
use baton_proto::coordinator_service_client::CoordinatorServiceClient;
use baton_proto::failover::{DialFuture, Dialer, Follow, Policy};
use baton_proto::tls::ClientAuth;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};

use crate::error::AgentError;
/// The PEM material of the agent's TLS directory (defined in [`crate::tls`];
/// named here too, where the CLI loads it).
pub use crate::tls::TlsPem;
use crate::tls::{COORDINATOR_NAME, LiveTls, tls_err};

/// Connect timeout towards the coordinator.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keep-alive: a silent coordinator is noticed within about 20 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on concurrent RPCs per connection from the coordinator.
const SERVER_CONCURRENCY_PER_CONN: usize = 256;
/// How long one call looks for the leader among several coordinators; the
/// reporter then backs off and registers again.
const FAILOVER_WAIT: Duration = Duration::from_secs(10);

/// A client of `CoordinatorService` over the coordinator URL list.
pub type CoordinatorClient = CoordinatorServiceClient<Follow>;

/// The URLs of a coordinator URL (list), see [`baton_proto::failover::parse_urls`].
pub fn coordinator_urls(list: &str) -> Result<Vec<String>, AgentError> {
    baton_proto::failover::parse_urls(list)
        .map_err(|e| AgentError::ConfigInvalid(format!("coordinator_url: {e}")))
}

/// Serves `AgentService` (the gRPC service, [`crate::service`]) on `listener`
/// until `shutdown` resolves.
pub async fn serve(
    service: impl AgentService,
    listener: TcpListener,
    tls: Option<Arc<LiveTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let router = Server::builder()
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(SERVER_CONCURRENCY_PER_CONN)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(AgentServiceServer::new(service));
    let served = match &tls {
        Some(live) => {
            // Only certificates of Baton's CA get in; the service then takes
            // StartJob only from the coordinator's.
            let config = baton_proto::tls::server_config(
                &live.current().ca,
                live.server_cert(),
                ClientAuth::Required,
            )
            .map_err(tls_err)?;
            let incoming = baton_proto::tls::incoming(listener, config);
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
    };
    served.map_err(|e| AgentError::Transport(e.to_string()))
}

/// Refuses plaintext beyond this machine before anything is served or dialled:
/// without TLS, the coordinator URL and the address the coordinator is told to
/// dial must both be loopback ([`baton_proto::plaintext`]).
pub async fn refuse_plaintext_beyond_loopback(
    coordinator_url: &str,
    advertise: &str,
) -> Result<(), AgentError> {
    let refuse =
        |e: baton_proto::plaintext::PlaintextError| AgentError::PlaintextNotLoopback(e.to_string());
    for url in coordinator_urls(coordinator_url)? {
        if !url.to_ascii_lowercase().starts_with("http://") {
            return Err(AgentError::PlaintextNotLoopback(format!(
                "an agent without TLS (--insecure) speaks plaintext, so its coordinator URL must be \
                 http:// on a loopback address, not {url}; drop --insecure to use mutual TLS"
            )));
        }
        baton_proto::plaintext::loopback_url(&url)
            .await
            .map_err(refuse)?;
    }
    baton_proto::plaintext::loopback_addr(advertise)
        .await
        .map_err(|e| {
            AgentError::PlaintextNotLoopback(format!(
                "--advertise {advertise}: the coordinator would send jobs there in plaintext \
                 (--insecure): {}",
                e.reason
            ))
        })?;
    Ok(())
}

/// An agent with a TLS identity speaks only TLS. tonic dials an `http://` URL
/// in plaintext whatever TLS settings it was given, so such a URL would carry
/// the registration and every job event in clear: refused.
pub fn require_https(list: &str) -> Result<(), AgentError> {
    for url in coordinator_urls(list)? {
        if !url.to_ascii_lowercase().starts_with("https://") {
            return Err(AgentError::ConfigInvalid(format!(
                "coordinator URL {url} is not https://, but this agent speaks mutual TLS: use \
                 https://HOST:PORT (http:// is only for --insecure, on loopback)"
            )));
        }
    }
    Ok(())
}

/// What a failed connection to the coordinator means: a TLS failure says which
/// certificate was refused and by whom; a revoked certificate is [`AgentError::Revoked`].
pub fn connect_error(
    url: &str,
    tls: Option<&TlsPem>,
    err: &(dyn std::error::Error + 'static),
) -> AgentError {
    match baton_proto::tls::handshake_failure(err) {
        Some(failure) => explain_tls(url, tls, failure),
        None => AgentError::CoordinatorUnreachable(format!("connecting to {url}: {err}")),
    }
}

/// A call that broke without the coordinator's error code, over TLS: under
/// TLS 1.3 a refusal of this agent's certificate (another CA, expired,
/// revoked) reaches only the connection. Asks the coordinator once more with
/// the same identity (bounded, off the runtime threads) and explains what it
/// says; `None` if the handshake is fine.
pub async fn probe_refusal(url: &str, tls: &TlsPem) -> Option<AgentError> {
    let authority = url
        .get(8..)
        .filter(|_| url.to_ascii_lowercase().starts_with("https://"))?
        .split(['/', '?', '#'])
        .next()?
        .to_string();
    let pem = tls.clone();
    let failure = tokio::task::spawn_blocking(move || {
        baton_proto::tls::probe_handshake(
            &authority,
            COORDINATOR_NAME,
            &pem.ca,
            Some((&pem.cert, &pem.key)),
            Duration::from_secs(2),
        )
    })
    .await
    .ok()??;
    Some(explain_tls(url, Some(tls), failure))
}

/// An agent error that says which side refused which certificate.
fn explain_tls(
    url: &str,
    tls: Option<&TlsPem>,
    failure: baton_proto::tls::HandshakeFailure,
) -> AgentError {
    use baton_proto::tls::HandshakeFailure as F;
    let dir = tls.and_then(|t| t.dir.as_ref()).map_or_else(
        || "the agent's TLS directory".to_string(),
        |d| d.display().to_string(),
    );
    let what = match failure {
        F::OursRevoked => {
            return AgentError::Revoked(format!(
                "the coordinator at {url} refused this agent's certificate ({dir}/tls.pem) as revoked"
            ));
        }
        F::ServerUnknownIssuer => format!(
            "the coordinator's certificate is not signed by the CA in {dir}/ca.pem (unknown issuer): \
             this agent was enrolled with another CA"
        ),
        F::ServerWrongName(names) => format!(
            "the server is not a Baton coordinator: its certificate names {names:?}, not {COORDINATOR_NAME}"
        ),
        F::ServerExpired => {
            "the coordinator's certificate has expired or is not valid yet (clocks?)".to_string()
        }
        F::ServerCertificate(why) => format!("the coordinator's certificate was refused ({why})"),
        F::OursUnknownCa => format!(
            "the coordinator refused this agent's certificate {dir}/tls.pem: not signed by its CA"
        ),
        F::OursExpired => format!(
            "the coordinator refused this agent's certificate {dir}/tls.pem: expired or not valid yet"
        ),
        F::OursMissing => "the coordinator wants a client certificate and got none".to_string(),
        F::OursRefused(alert) => {
            format!("the coordinator refused this agent's certificate (TLS alert {alert})")
        }
        F::NotTls(detail) => format!(
            "the server does not speak TLS ({detail}); an --insecure coordinator wants http://"
        ),
    };
    AgentError::CoordinatorUnreachable(format!("TLS handshake with {url} failed: {what}"))
}

/// Connects to the coordinator at `url` (`https://host:port`, or `http://` without
/// TLS, which is dialled only on a loopback address), or to the first of a
/// comma-separated list that answers (the remembered leader first); calls then
/// follow the leader (see the module doc).
pub async fn connect_coordinator(
    url: &str,
    tls: Option<&TlsPem>,
) -> Result<CoordinatorClient, AgentError> {
    Ok(CoordinatorServiceClient::new(
        connect_follow(url, tls).await?,
    ))
}

/// The channel of [`connect_coordinator`], connected: it says which URL calls go to.
pub async fn connect_follow(url: &str, tls: Option<&TlsPem>) -> Result<Follow, AgentError> {
    let urls = coordinator_urls(url)?;
    if tls.is_some() {
        require_https(url)?;
    }
    let pem = tls.cloned();
    let dial: Dialer = Arc::new(move |url: String| {
        let pem = pem.clone();
        Box::pin(async move {
            // A connection error: tonic tells it as UNAVAILABLE with this message.
            dial_one(&url, pem.as_ref()).await.map_err(|e| {
                Box::new(tonic::ConnectError(Box::new(e))) as baton_proto::failover::BoxError
            })
        }) as DialFuture
    });
    let policy = Policy {
        wait: FAILOVER_WAIT,
        ..Policy::default()
    };
    let follow = Follow::new(urls, dial, policy)
        .map_err(AgentError::ConfigInvalid)?
        .on_event(|e| match e {
            baton_proto::failover::Event::Waiting { .. } => {
                tracing::debug!(step = %e, "looking for the leading coordinator");
            }
            _ => tracing::info!(step = %e, "looking for the leading coordinator"),
        });
    if let Err(mut errors) = follow.connect().await {
        // The first URL's error (a single URL's, as it was): TLS refusals and
        // plaintext refusals keep their codes.
        let (first, e) = errors.remove(0);
        let e = match e.downcast::<tonic::ConnectError>() {
            Ok(c) => c.0,
            Err(e) => e,
        };
        return Err(match e.downcast::<AgentError>() {
            Ok(agent) if errors.is_empty() => *agent,
            Ok(agent) => AgentError::CoordinatorUnreachable(format!(
                "no coordinator of {url} answers: {first}: {agent}; {}",
                errors
                    .iter()
                    .map(|(u, e)| format!("{u}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            Err(other) => {
                AgentError::CoordinatorUnreachable(format!("connecting to {first}: {other}"))
            }
        });
    }
    Ok(follow)
}

/// Connects to one coordinator URL (from the list, or named by a standby).
async fn dial_one(url: &str, tls: Option<&TlsPem>) -> Result<Channel, AgentError> {
    if tls.is_some() {
        require_https(url)?;
    }
    let dial = baton_proto::plaintext::loopback_url(url)
        .await
        .map_err(|e| AgentError::PlaintextNotLoopback(e.to_string()))?;
    let mut endpoint = Endpoint::from_shared(dial)
        .map_err(|e| AgentError::ConfigInvalid(format!("coordinator_url {url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(t) = tls {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&t.ca))
            .identity(Identity::from_pem(&t.cert, &t.key))
            .domain_name(COORDINATOR_NAME);
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| AgentError::Transport(format!("TLS setup: {e}")))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| connect_error(url, tls, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn plaintext_stays_on_this_machine() {
        rt().block_on(async {
            let ok = refuse_plaintext_beyond_loopback("http://localhost:7400", "127.0.0.1:7401");
            assert!(ok.await.is_ok());
            for (url, adv, why) in [
                ("http://10.0.0.5:7400", "127.0.0.1:7401", "10.0.0.5"),
                (
                    "http://127.0.0.1:7400",
                    "10.0.0.7:7401",
                    "--advertise 10.0.0.7:7401",
                ),
                (
                    "http://127.0.0.1:7400",
                    "[2001:db8::7]:7401",
                    "not a loopback",
                ),
                ("https://127.0.0.1:7400", "127.0.0.1:7401", "must be"),
            ] {
                let e = refuse_plaintext_beyond_loopback(url, adv)
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), "PLAINTEXT_NOT_LOOPBACK");
                assert!(e.fatal() && e.to_string().contains(why), "{e}");
            }
            // Dialling refuses too, before any connection.
            let e = connect_coordinator("http://10.255.255.1:1", None)
                .await
                .unwrap_err();
            assert_eq!(e.code(), "PLAINTEXT_NOT_LOOPBACK");
        });
    }

    #[test]
    fn an_agent_with_tls_never_dials_http() {
        assert!(require_https("https://10.0.0.5:7400").is_ok());
        let e = require_https("http://10.0.0.5:7400").unwrap_err();
        assert_eq!(e.code(), "AGENT_CONFIG_INVALID");
        assert!(e.to_string().contains("https://"), "{e}");
    }
}
