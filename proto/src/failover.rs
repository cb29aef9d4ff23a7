//! Following the leader across a list of coordinator URLs.
//!
//! Several coordinators may serve one cluster: one leads, and standbys answer every
//! call with `UNAVAILABLE`, metadata `baton-code: NOT_LEADER` and — unless an election
//! is under way — `baton-leader: <the leader's URL>`. [`Follow`] is a gRPC channel (a
//! tower `Service`, so every generated client runs over it) that takes a *list* of
//! coordinator URLs ([`parse_urls`]: `https://c1:7400,https://c2:7400`) and finds the
//! leader itself:
//!
//! - a call answered `NOT_LEADER` with a hint is sent again to the hinted URL (even one
//!   not in the list: the caller's dialer applies the same checks to it — Baton's CA
//!   and name for `https://`, loopback only for `http://` — and a hint of another
//!   scheme than the list's is ignored); without a hint, to the next URL of the list;
//! - a URL that cannot be connected to (refused, unreachable, TLS handshake refused:
//!   the request never left) → the next URL;
//! - once every URL of a round was tried and at least one answered as a standby, the
//!   channel waits ([`Policy`]: 200 ms doubling to 2 s) and starts a new round, up to
//!   [`Policy::wait`] in all; then the call fails with `UNAVAILABLE` and
//!   `baton-code: NO_LEADER` ([`NO_LEADER`]). A round in which no URL answered at all
//!   ends at once with the last connection error, as with a single URL before.
//!
//! Which calls may be sent twice ([`call_kind`]): `NOT_LEADER` means the standby did
//! nothing, and a failed connection means the request never left, so after those every
//! call moves on. A call that was sent and then lost its connection (or got another
//! `UNAVAILABLE`) has an unknown outcome: only [`CallKind::Idempotent`] calls (reads,
//! `Register`, `SetAgentState`) are then sent elsewhere; [`CallKind::Once`] calls
//! (`StartExecution`, `CancelExecution`, `Enroll`, …) return the error. Client-streaming
//! calls (`ReportEvents`) are never re-sent here: they go to the current URL and the
//! caller reconnects.
//!
//! The URL that last answered as leader is remembered per process and per list
//! ([`remembered`]), so later connections try it first.
//!
//! A Rust client over a cluster (the dialer holds the TLS settings; the CLI's and
//! the agent's verify Baton's CA and the name `coordinator.baton`):
//!
//! ```no_run
//! use std::sync::Arc;
//! use baton_proto::control_service_client::ControlServiceClient;
//! use baton_proto::failover::{parse_urls, DialFuture, Dialer, Follow, Policy};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let urls = parse_urls("http://127.0.0.1:7400,http://127.0.0.1:7410")?;
//! let dial: Dialer = Arc::new(|url: String| {
//!     Box::pin(async move {
//!         // Plaintext only to loopback, also for a leader a standby names.
//!         let url = baton_proto::plaintext::loopback_url(&url).await?;
//!         let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
//!         Ok(channel)
//!     }) as DialFuture
//! });
//! let follow = Follow::new(urls, dial, Policy::default())?
//!     .on_event(|step| eprintln!("{step}"));
//! let mut client = ControlServiceClient::new(follow);
//! let who = client.who_am_i(baton_proto::WhoAmIRequest::default()).await?;
//! # let _ = who;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{Bytes, Service};
use tonic::transport::Channel;

/// Metadata key of the stable error code on every error status of a coordinator.
pub const CODE_KEY: &str = "baton-code";
/// Metadata key of the leader's URL on a `NOT_LEADER` status.
pub const LEADER_KEY: &str = "baton-leader";
/// The code of a standby's answer.
pub const NOT_LEADER: &str = "NOT_LEADER";
/// The code of a call that found no leader among the URLs within [`Policy::wait`].
pub const NO_LEADER: &str = "NO_LEADER";

/// Splits a comma-separated list of coordinator URLs (spaces around commas are
/// ignored, a repeated URL is kept once). Every URL must be `http://` or `https://`,
/// all of the same scheme; a single URL is returned as it was given.
pub fn parse_urls(list: &str) -> Result<Vec<String>, String> {
    let mut urls: Vec<String> = Vec::new();
    for part in list.split(',') {
        let url = part.trim();
        if url.is_empty() {
            return Err(format!(
                "coordinator URL list '{list}' has an empty entry; separate URLs with one comma \
                 (https://c1:7400,https://c2:7400)"
            ));
        }
        if scheme(url).is_none() {
            return Err(format!(
                "coordinator URL '{url}' must start with https:// or http://"
            ));
        }
        let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("coordinator URL '{url}' has no host"));
        }
        if !urls.iter().any(|u| u == url) {
            urls.push(url.to_string());
        }
    }
    let first = urls.first().and_then(|u| scheme(u));
    if urls.iter().any(|u| scheme(u) != first) {
        return Err(format!(
            "coordinator URL list '{list}' mixes https:// and http://; a cluster speaks one of them"
        ));
    }
    Ok(urls)
}

/// `"https"` or `"http"` (case-insensitive), or `None`.
fn scheme(url: &str) -> Option<&'static str> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") {
        Some("https")
    } else if lower.starts_with("http://") {
        Some("http")
    } else {
        None
    }
}

/// Whether a call may be sent again after an unknown outcome (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Sending it twice does no more than sending it once: retried after any failure.
    Idempotent,
    /// Retried only after `NOT_LEADER` or a connection that failed before sending.
    Once,
    /// The request is a stream: never re-sent by [`Follow`].
    ClientStream,
}

/// Every method of `ControlService` and `CoordinatorService`, with its kind.
const CALLS: &[(&str, CallKind)] = {
    use CallKind::{ClientStream as S, Idempotent as I, Once as O};
    &[
        ("ControlService/StartExecution", O),
        ("ControlService/WatchExecution", I),
        ("ControlService/GetExecution", I),
        ("ControlService/ListAgents", I),
        ("ControlService/CancelExecution", O),
        ("ControlService/CancelChild", O),
        ("ControlService/ResumeExecution", O),
        ("ControlService/StreamLogs", I),
        ("ControlService/StreamRows", I),
        ("ControlService/ListExecutions", I),
        ("ControlService/SetAgentState", I),
        ("ControlService/CreateToken", O),
        ("ControlService/ListTokens", I),
        ("ControlService/RevokeToken", O),
        ("ControlService/GrantRole", O),
        ("ControlService/RevokeRole", O),
        ("ControlService/ListRoles", I),
        ("ControlService/WhoAmI", I),
        ("ControlService/RevokeCertificate", O),
        ("ControlService/CreateFolder", O),
        ("ControlService/ListFolders", I),
        ("ControlService/RenameFolder", O),
        ("ControlService/DeleteFolder", O),
        ("ControlService/DeployPackage", O),
        ("ControlService/ListPackages", I),
        ("ControlService/GetPackage", I),
        ("ControlService/MovePackage", O),
        ("ControlService/DeletePackage", O),
        ("CoordinatorService/Register", I),
        ("CoordinatorService/ReportEvents", S),
        ("CoordinatorService/Enroll", O),
        ("CoordinatorService/Renew", O),
        ("CoordinatorService/FetchPackage", I),
    ]
};

/// The kind of the call at gRPC `path` (`/baton.v1.ControlService/GetExecution`);
/// a method this table does not know is [`CallKind::Once`].
pub fn call_kind(path: &str) -> CallKind {
    let method = path.trim_start_matches('/');
    let method = method.strip_prefix("baton.v1.").unwrap_or(method);
    CALLS
        .iter()
        .find(|(m, _)| *m == method)
        .map_or(CallKind::Once, |(_, k)| *k)
}

/// How long and how often a call looks for the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The longest a call spends looking for a leader (waits between rounds included).
    pub wait: Duration,
    /// The first wait between two rounds; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            wait: Duration::from_secs(30),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// What a [`Follow`] tells its owner while it looks for the leader (the CLI prints
/// it on stderr, agents log it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `url` answered `NOT_LEADER`; `next` is tried now (`hinted`: it is the
    /// leader that `url` named).
    Standby {
        url: String,
        next: String,
        hinted: bool,
    },
    /// `url` could not be reached (or, for an idempotent call, broke); `next` is tried now.
    Unreachable {
        url: String,
        next: String,
        error: String,
    },
    /// No URL answered as leader in a round: waiting `delay` before the next one.
    Waiting { delay: Duration },
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Standby {
                url,
                next,
                hinted: true,
            } => write!(
                f,
                "coordinator {url} is a standby; trying the leader it names, {next}…"
            ),
            Event::Standby { url, next, .. } => {
                write!(f, "coordinator {url} is a standby; trying {next}…")
            }
            Event::Unreachable { url, next, error } => {
                // The first line says what happened; hints are for the final error.
                let what = error.lines().next().unwrap_or_default();
                let what = what
                    .strip_prefix(&format!("cannot reach the coordinator at {url}: "))
                    .unwrap_or(what);
                write!(
                    f,
                    "coordinator {url} is unreachable ({what}); trying {next}…"
                )
            }
            Event::Waiting { delay } => write!(
                f,
                "no coordinator answered as leader (an election may be under way); trying again in {} ms…",
                delay.as_millis()
            ),
        }
    }
}

/// Any error, as tonic's channels and services return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// Connects to one URL: the caller's TLS and plaintext rules live here.
pub type DialFuture = Pin<Box<dyn Future<Output = Result<Channel, BoxError>> + Send>>;
/// A [`DialFuture`] maker.
pub type Dialer = Arc<dyn Fn(String) -> DialFuture + Send + Sync>;
type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

/// The last leader of each URL list, for this process.
static LEADERS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

fn list_key(urls: &[String]) -> String {
    urls.join(",")
}

/// The URL that last answered as leader for the list `urls` in this process.
pub fn remembered(urls: &[String]) -> Option<String> {
    let leaders = LEADERS.lock().unwrap_or_else(|p| p.into_inner());
    leaders.as_ref()?.get(&list_key(urls)).cloned()
}

fn remember(urls: &[String], leader: &str) {
    let mut leaders = LEADERS.lock().unwrap_or_else(|p| p.into_inner());
    leaders
        .get_or_insert_with(HashMap::new)
        .insert(list_key(urls), leader.to_string());
}

/// A gRPC channel over a list of coordinator URLs that follows the leader (see the
/// module doc). Cheap to clone; clones share their connections.
#[derive(Clone)]
pub struct Follow {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("urls", &self.shared.urls)
            .field("current", &self.shared.current())
            .finish()
    }
}

struct Shared {
    urls: Vec<String>,
    dial: Dialer,
    policy: Policy,
    listener: Option<Listener>,
    channels: Mutex<HashMap<String, Channel>>,
    current: Mutex<String>,
}

impl Follow {
    /// A channel over `urls` (at least one; see [`parse_urls`]) that connects with `dial`.
    /// It starts with the leader this process last found for the same list, if any.
    pub fn new(urls: Vec<String>, dial: Dialer, policy: Policy) -> Result<Follow, String> {
        let first = urls
            .first()
            .cloned()
            .ok_or_else(|| "no coordinator URL".to_string())?;
        let current = remembered(&urls).unwrap_or(first);
        Ok(Follow {
            shared: Arc::new(Shared {
                urls,
                dial,
                policy,
                listener: None,
                channels: Mutex::new(HashMap::new()),
                current: Mutex::new(current),
            }),
        })
    }

    /// Calls `f` with every [`Event`] (set before the first call).
    pub fn on_event(mut self, f: impl Fn(&Event) + Send + Sync + 'static) -> Follow {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.listener = Some(Arc::new(f));
        }
        self
    }

    /// The URLs, as given.
    pub fn urls(&self) -> &[String] {
        &self.shared.urls
    }

    /// The URL calls go to first.
    pub fn current(&self) -> String {
        self.shared.current()
    }

    /// Connects now: to the current URL, else to each other URL of the list in turn,
    /// until one connects (which says nothing of who leads: calls find out). On
    /// failure, every URL tried with its error, in order.
    pub async fn connect(&self) -> Result<(), Vec<(String, BoxError)>> {
        let s = &self.shared;
        let first = s.current();
        let mut order = vec![first.clone()];
        order.extend(s.urls.iter().filter(|u| **u != first).cloned());
        let mut errors: Vec<(String, BoxError)> = Vec::new();
        for (i, url) in order.iter().enumerate() {
            match s.channel(url).await {
                Ok(_) => {
                    s.set_current(url);
                    return Ok(());
                }
                Err(e) => {
                    if let Some(next) = order.get(i + 1) {
                        s.emit(Event::Unreachable {
                            url: url.clone(),
                            next: next.clone(),
                            error: e.to_string(),
                        });
                    }
                    errors.push((url.clone(), e));
                }
            }
        }
        Err(errors)
    }
}

/// What one attempt at one URL came to.
enum Attempt {
    /// An answer to hand to the caller.
    Done(http::Response<Body>),
    /// A standby's answer, with the leader it names.
    NotLeader(Option<String>),
    /// Another `UNAVAILABLE` answer (shutting down, store unavailable).
    Unavailable(http::Response<Body>),
    /// The connection failed before the request was sent.
    NotSent(BoxError),
    /// The request may have been sent: outcome unknown.
    Broken(BoxError),
}

/// What to return if no URL leads.
enum Last {
    Response(http::Response<Body>),
    Error(BoxError),
}

impl Shared {
    fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_current(&self, url: &str) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = url.to_string();
    }

    fn emit(&self, event: Event) {
        if let Some(f) = &self.listener {
            f(&event);
        }
    }

    /// The connection to `url`: the one made before, or a new one.
    async fn channel(&self, url: &str) -> Result<Channel, BoxError> {
        let cached = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned();
        if let Some(ch) = cached {
            return Ok(ch);
        }
        let ch = (self.dial)(url.to_string()).await?;
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.to_string(), ch.clone());
        Ok(ch)
    }

    fn forget(&self, url: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(url);
    }

    /// A hint worth following: same scheme as the list, not tried in this round.
    fn usable_hint(&self, hint: Option<&str>, tried: &[String]) -> Option<String> {
        let hint = hint?.trim();
        let same =
            scheme(hint).is_some() && scheme(hint) == self.urls.first().and_then(|u| scheme(u));
        (same && !tried.iter().any(|t| t == hint)).then(|| hint.to_string())
    }

    /// The URL after `url` in the list (from the start for a URL not in it) not tried yet.
    fn next_in_list(&self, url: &str, tried: &[String]) -> Option<String> {
        let n = self.urls.len();
        let start = self.urls.iter().position(|u| u == url).map_or(0, |i| i + 1);
        (0..n)
            .map(|k| &self.urls[(start + k) % n])
            .find(|u| !tried.contains(u))
            .cloned()
    }

    async fn attempt(
        &self,
        url: &str,
        kind: CallKind,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Attempt {
        let mut ch = match self.channel(url).await {
            Ok(ch) => ch,
            Err(e) => return Attempt::NotSent(e),
        };
        let ready = std::future::poll_fn(|cx| Service::poll_ready(&mut ch, cx)).await;
        let sent = match ready {
            Ok(()) => ch.call(rebuild(parts, body)).await,
            Err(e) => Err(e),
        };
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                self.forget(url);
                return if connect_failed(&e) {
                    Attempt::NotSent(e.into())
                } else {
                    Attempt::Broken(e.into())
                };
            }
        };
        let h = resp.headers();
        let unavailable = h.get("grpc-status").is_some_and(|v| v == "14");
        let code = h.get(CODE_KEY).and_then(|v| v.to_str().ok());
        if unavailable && code == Some(NOT_LEADER) {
            let hint = h
                .get(LEADER_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Attempt::NotLeader(hint)
        } else if unavailable && kind == CallKind::Idempotent {
            Attempt::Unavailable(resp)
        } else {
            Attempt::Done(resp)
        }
    }

    async fn call(
        self: Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let kind = call_kind(req.uri().path());
        if kind == CallKind::ClientStream {
            let url = self.current();
            let mut ch = self.channel(&url).await?;
            std::future::poll_fn(|cx| Service::poll_ready(&mut ch, cx)).await?;
            return ch.call(req).await.map_err(|e| {
                self.forget(&url);
                e.into()
            });
        }
        let (parts, body) = req.into_parts();
        let body = body.collect().await?.to_bytes();
        let deadline = Instant::now() + self.policy.wait;
        let mut backoff = self.policy.backoff_min;
        let mut target = self.current();
        let mut tried: Vec<String> = Vec::new();
        let mut answered = false;
        let mut last_hint: Option<String> = None;
        let mut last: Option<Last> = None;
        loop {
            tried.push(target.clone());
            let (hint, standby) = match self.attempt(&target, kind, &parts, &body).await {
                Attempt::Done(resp) => {
                    self.set_current(&target);
                    remember(&self.urls, &target);
                    return Ok(resp);
                }
                Attempt::NotLeader(hint) => {
                    answered = true;
                    if hint.is_some() {
                        last_hint.clone_from(&hint);
                    }
                    (hint, true)
                }
                Attempt::Unavailable(resp) => {
                    last = Some(Last::Response(resp));
                    (None, false)
                }
                Attempt::NotSent(e) => {
                    last = Some(Last::Error(e));
                    (None, false)
                }
                Attempt::Broken(e) if kind == CallKind::Idempotent => {
                    last = Some(Last::Error(e));
                    (None, false)
                }
                Attempt::Broken(e) => return Err(e),
            };
            let hinted = self.usable_hint(hint.as_deref(), &tried);
            let next = hinted
                .clone()
                .or_else(|| self.next_in_list(&target, &tried));
            if let Some(next) = next {
                self.emit(if standby {
                    Event::Standby {
                        url: target.clone(),
                        next: next.clone(),
                        hinted: hinted.is_some(),
                    }
                } else {
                    Event::Unreachable {
                        url: target.clone(),
                        next: next.clone(),
                        error: match &last {
                            Some(Last::Error(e)) => e.to_string(),
                            _ => "unavailable".to_string(),
                        },
                    }
                });
                target = next;
                continue;
            }
            // Every URL of this round was tried.
            if !answered {
                return match last {
                    Some(Last::Response(resp)) => Ok(resp),
                    Some(Last::Error(e)) => Err(e),
                    None => Err(no_leader(&self.urls, self.policy.wait).into()),
                };
            }
            if Instant::now() + backoff > deadline {
                return Err(no_leader(&self.urls, self.policy.wait).into());
            }
            self.emit(Event::Waiting { delay: backoff });
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.policy.backoff_max);
            tried.clear();
            answered = false;
            target = self
                .usable_hint(last_hint.as_deref(), &tried)
                .unwrap_or_else(|| self.urls[0].clone());
        }
    }
}

/// The request again, for another URL (the origin is set by each URL's channel).
fn rebuild(parts: &http::request::Parts, body: &Bytes) -> http::Request<Body> {
    let mut req = http::Request::new(Body::new(Full::new(body.clone())));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

/// Whether the error happened while connecting, before the request was sent.
pub fn connect_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The status of a call that found no leader.
pub fn no_leader(urls: &[String], wait: Duration) -> tonic::Status {
    let mut s = tonic::Status::unavailable(format!(
        "no coordinator of {} answered as leader within {} s (an election may be under way, or \
         none of them can reach the store)",
        urls.join(", "),
        wait.as_secs()
    ));
    s.metadata_mut().insert(
        CODE_KEY,
        tonic::metadata::MetadataValue::from_static(NO_LEADER),
    );
    s
}

impl Service<http::Request<Body>> for Follow {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.shared.clone().call(req))
    }
}

#[cfg(test)]
#[path = "failover_tests.rs"]
mod tests;
