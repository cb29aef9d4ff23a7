//! The `/metrics` endpoint of `baton coordinator` and `baton agent`
//! (`--metrics-listen ADDR --metrics-token-file FILE`): Prometheus text over
//! plain HTTP/1.1, with the rules of every other surface.
//!
//! - **Loopback only.** The listener is plaintext, so an address that is not
//!   loopback is refused at start (`METRICS_NOT_LOOPBACK`), as `--insecure`
//!   is. A Prometheus on another host scrapes through something it trusts on
//!   this one (an agent-mode Prometheus, an SSH tunnel, a TLS proxy).
//! - **Authenticated.** Every request must carry `Authorization: Bearer
//!   TOKEN`, the token read once from `--metrics-token-file` (Prometheus:
//!   `authorization: { credentials_file: … }`). The file must not be readable
//!   by others and must hold at least [`TOKEN_MIN`] characters. Anything else
//!   gets `401` before any other work, compared in constant time.
//! - **Bounded.** At most [`MAX_CONNECTIONS`] connections at once (one more
//!   is closed at once), [`HEADER_TIMEOUT`] to send the request head, at most
//!   [`MAX_HEADERS`] headers in a [`MAX_BUF`]-byte buffer, a connection lives
//!   at most [`CONNECTION_LIFETIME`]. Only `GET /metrics` (and `HEAD`) is
//!   served; a scrape reads numbers the daemon already keeps (the
//!   coordinator's are published into its registry once a second) and never
//!   waits for the scheduler.
//! - **Audited.** Each refusal is counted (`baton_metrics_requests_refused_total`)
//!   and handed to `on_refused` (the coordinator writes it to its audit,
//!   aggregated per source); without one, a WARN at most every
//!   [`WARN_EVERY`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton_proto::exposition::{CONTENT_TYPE, Kind, Text};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::CliError;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Time to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept (Prometheus reconnects).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Read buffer of a connection (hyper's smallest).
pub const MAX_BUF: usize = 8192;
pub const MAX_HEADERS: usize = 32;
/// Shortest token accepted in the token file.
pub const TOKEN_MIN: usize = 16;
/// Longest token file read.
const TOKEN_MAX: u64 = 4096;
/// Warnings about refusals, when nobody audits them, at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a request was refused: the `reason` label and the audit code.
const REFUSALS: [(&str, &str); 3] = [
    ("missing_credentials", "METRICS_UNAUTHENTICATED"),
    ("invalid_credentials", "METRICS_UNAUTHENTICATED"),
    ("too_many_connections", "METRICS_BUSY"),
];

/// The component's metrics, rendered at each scrape.
pub type Render = Arc<dyn Fn() -> Text + Send + Sync>;
/// Told of each refused request: the peer and the audit code.
pub type OnRefused = Arc<dyn Fn(IpAddr, &'static str) + Send + Sync>;

/// Reads the bearer token: the file must be private (no permission for
/// others) and hold at least [`TOKEN_MIN`] characters, surrounding white
/// space apart. The token is never logged.
pub fn read_token(path: &Path) -> Result<String, CliError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| {
        CliError::invalid(
            "METRICS_TOKEN_FILE",
            format!("--metrics-token-file {}: {why}", path.display()),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if meta.permissions().mode() & 0o007 != 0 {
        return Err(bad(format!(
            "readable by others (mode {:o}); chmod o-rwx it",
            meta.permissions().mode() & 0o777
        )));
    }
    let mut text = String::new();
    file.take(TOKEN_MAX)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.len() < TOKEN_MIN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(format!(
            "the token must be one word of at least {TOKEN_MIN} characters"
        )));
    }
    Ok(token.to_string())
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// What every connection shares.
struct Endpoint {
    token: String,
    component: &'static str,
    render: Render,
    on_refused: Option<OnRefused>,
    refused: [AtomicU64; REFUSALS.len()],
    /// When the last unaudited refusal was logged (ms since `started`).
    last_warn_ms: AtomicU64,
    started: Instant,
}

impl Endpoint {
    fn refuse(&self, kind: usize, peer: IpAddr) {
        self.refused[kind].fetch_add(1, Ordering::Relaxed);
        let (reason, code) = REFUSALS[kind];
        match &self.on_refused {
            Some(f) => f(peer, code),
            None => {
                let now = self.started.elapsed().as_millis() as u64;
                let last = self.last_warn_ms.load(Ordering::Relaxed);
                let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
                if due
                    && self
                        .last_warn_ms
                        .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    warn!(%peer, reason, code, "metrics request refused (more within 10 s are only counted)");
                } else {
                    debug!(%peer, reason, "metrics request refused");
                }
            }
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> Result<(), usize> {
        let Some(value) = req.headers().get(AUTHORIZATION) else {
            return Err(0);
        };
        let presented = value.as_bytes().strip_prefix(b"Bearer ").ok_or(1usize)?;
        if same(presented, self.token.as_bytes()) {
            Ok(())
        } else {
            Err(1)
        }
    }

    fn render(&self) -> String {
        let mut t = (self.render)();
        t.family(
            "baton_metrics_requests_refused_total",
            Kind::Counter,
            "Requests to this metrics endpoint refused, by reason.",
        );
        for ((reason, _), n) in REFUSALS.iter().zip(&self.refused) {
            t.sample(
                "baton_metrics_requests_refused_total",
                &[("reason", reason)],
                n.load(Ordering::Relaxed) as f64,
            );
        }
        t.family(
            "baton_build_info",
            Kind::Gauge,
            "Always 1: the version and component of this process.",
        )
        .sample(
            "baton_build_info",
            &[
                ("component", self.component),
                ("version", env!("CARGO_PKG_VERSION")),
            ],
            1.0,
        );
        t.append(crate::process_metrics::render());
        t.finish()
    }

    fn handle(&self, req: &Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
        if let Err(kind) = self.authorized(req) {
            self.refuse(kind, peer);
            return reply(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Bearer realm=\"baton metrics\"")
                .header(CONNECTION, "close")
                .body(Full::new(Bytes::from_static(b"unauthorized\n")))
                .unwrap_or_default();
        }
        if req.uri().path() != "/metrics" {
            return simple(StatusCode::NOT_FOUND, "only /metrics is served here\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(StatusCode::METHOD_NOT_ALLOWED)
                .header("allow", "GET, HEAD")
                .body(Full::new(Bytes::from_static(b"GET or HEAD only\n")))
                .unwrap_or_default();
        }
        let body = if req.method() == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(self.render())
        };
        Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE_HEADER, CONTENT_TYPE)
            .body(Full::new(body))
            .unwrap_or_default()
    }
}

fn reply(status: StatusCode) -> hyper::http::response::Builder {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE_HEADER, "text/plain; charset=utf-8")
}

fn simple(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    reply(status)
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .unwrap_or_default()
}

/// Binds `listen` (loopback only) and serves `/metrics` until `shutdown`;
/// returns the bound address. `component` names the process in
/// `baton_build_info`.
pub async fn serve(
    listen: &str,
    token_file: &Path,
    component: &'static str,
    render: Render,
    on_refused: Option<OnRefused>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, CliError> {
    let token = read_token(token_file)?;
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        CliError::other(
            "LISTEN_FAILED",
            format!("cannot listen on {listen} (--metrics-listen): {e}"),
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::other("LISTEN_FAILED", e.to_string()))?;
    if !addr.ip().is_loopback() {
        return Err(CliError::invalid(
            "METRICS_NOT_LOOPBACK",
            format!(
                "--metrics-listen {addr}: the metrics endpoint is plaintext HTTP and may listen \
                 only on a loopback address (127.0.0.1, ::1); scrape it from this host"
            ),
        ));
    }
    let endpoint = Arc::new(Endpoint {
        token,
        component,
        render,
        on_refused,
        refused: Default::default(),
        last_warn_ms: AtomicU64::new(0),
        started: Instant::now(),
    });
    tokio::spawn(accept_loop(listener, endpoint, shutdown));
    Ok(addr)
}

async fn accept_loop(listener: TcpListener, endpoint: Arc<Endpoint>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Closed at once: a flood costs an accept and a close.
            endpoint.refuse(2, peer.ip());
            drop(tcp);
            continue;
        };
        let endpoint = endpoint.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = endpoint.handle(&req, peer.ip());
                async move { Ok::<_, Infallible>(response) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_BUF)
                .max_headers(MAX_HEADERS)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                () = stop.cancelled() => {}
                r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {
                    if let Ok(Err(e)) = r {
                        debug!(%peer, error = %e, "metrics connection ended");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    fn token_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn token_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = token_file(dir.path(), "0123456789abcdef0123\n", 0o600);
        assert_eq!(read_token(&ok).unwrap(), "0123456789abcdef0123");
        let open = token_file(dir.path(), "0123456789abcdef0123", 0o644);
        assert!(
            read_token(&open)
                .unwrap_err()
                .message
                .contains("readable by others")
        );
        let short = token_file(dir.path(), "short", 0o600);
        assert!(read_token(&short).is_err());
        let two = token_file(dir.path(), "0123456789abcdef 0123", 0o600);
        assert!(read_token(&two).is_err());
        assert!(read_token(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    /// One HTTP/1.1 request on a fresh connection; the status line and body.
    fn get(addr: SocketAddr, request: &str) -> (String, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out.lines().next().unwrap_or_default().to_string();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_only_authenticated_get_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), "s3cret-token-for-tests", 0o600);
        let refused = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = refused.clone();
        let on_refused: OnRefused = Arc::new(move |ip, code| seen.lock().unwrap().push((ip, code)));
        let render: Render = Arc::new(|| {
            let mut t = Text::new();
            t.single("baton_test_value", Kind::Gauge, "a test", 42.0);
            t
        });
        let stop = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0",
            &path,
            "test",
            render,
            Some(on_refused),
            stop.clone(),
        )
        .await
        .unwrap();
        let result = tokio::task::spawn_blocking(move || {
            let auth = "Authorization: Bearer s3cret-token-for-tests\r\n";
            let ok = get(addr, &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"));
            let none = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let wrong = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n");
            let path = get(addr, &format!("GET /debug HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"));
            let post = get(addr, &format!("POST /metrics HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"));
            let again = get(addr, &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"));
            (ok, none, wrong, path, post, again)
        })
        .await
        .unwrap();
        let (ok, none, wrong, path, post, again) = result;
        assert!(ok.0.contains("200"), "{ok:?}");
        assert!(ok.1.contains("baton_test_value 42\n"), "{}", ok.1);
        assert!(ok.1.contains("process_cpu_seconds_total"), "{}", ok.1);
        assert!(none.0.contains("401"), "{none:?}");
        assert!(!none.1.contains("baton_"), "{none:?}");
        assert!(wrong.0.contains("401"), "{wrong:?}");
        assert!(path.0.contains("404"), "{path:?}");
        assert!(post.0.contains("405"), "{post:?}");
        assert!(
            again
                .1
                .contains("baton_metrics_requests_refused_total{reason=\"missing_credentials\"} 1"),
            "{}",
            again.1
        );
        assert!(
            again
                .1
                .contains("baton_metrics_requests_refused_total{reason=\"invalid_credentials\"} 1")
        );
        let refused = refused.lock().unwrap().clone();
        assert_eq!(refused.len(), 2);
        assert!(
            refused
                .iter()
                .all(|(ip, code)| ip.is_loopback() && *code == "METRICS_UNAUTHENTICATED")
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn non_loopback_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), "s3cret-token-for-tests", 0o600);
        let render: Render = Arc::new(Text::new);
        let err = serve(
            "0.0.0.0:0",
            &path,
            "test",
            render,
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.message.contains("loopback"), "{}", err.message);
    }
}
