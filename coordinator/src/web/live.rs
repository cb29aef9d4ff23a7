//! The dashboard's live updates, as server-sent event streams: an
//! execution's summary as it changes, the fleet and the executions list
//! when they change, and a child's logs as its agent writes them.
//!
//! Every stream checks, at least every [`RECHECK`], that its session still
//! stands and that its token still authenticates (a logout or a revoked
//! token ends the stream), sends a comment line every [`KEEPALIVE`] so that a
//! dead connection is noticed, and ends when the term that serves it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto as pb;
use bytes::Bytes;
use tokio_stream::StreamExt;

use super::json;
use super::reply::{Events, event};
use crate::access::Access;
use crate::api::Watched;
use crate::auth::{Credential, Principal};
use crate::grpc::child_output::{ChildOutputs, Target};

/// How often a stream checks its session and token.
pub const RECHECK: Duration = Duration::from_secs(10);
/// A comment line at least this often.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Summaries of an execution sent at most this often.
const SUMMARY_EVERY: Duration = Duration::from_millis(250);
/// How often the fleet and the executions list are looked at.
const POLL_FLEET: Duration = Duration::from_secs(1);
const POLL_EXECUTIONS: Duration = Duration::from_secs(2);
/// Log bytes sent in one event at most (a chunk may be larger).
const LOG_EVENT_BYTES: usize = 32 * 1024;

/// Whether the caller may still listen: its session is open and its token
/// authenticates as the same principal.
pub struct Standing {
    pub access: Access,
    pub who: Principal,
    /// Looks the session's token up again (`None`: the session ended).
    pub token: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    pub checked: Instant,
}

impl Standing {
    /// Checks again when [`RECHECK`] has passed; `false` ends the stream.
    async fn holds(&mut self) -> bool {
        if self.checked.elapsed() < RECHECK {
            return true;
        }
        self.checked = Instant::now();
        let Some(token) = (self.token)() else {
            return false;
        };
        matches!(
            self.access
                .authenticate(&Credential::Bearer(Some(token)), "DashboardEvents")
                .await,
            Ok(p) if p.name == self.who.name
        )
    }
}

fn keepalive() -> Bytes {
    Bytes::from_static(b": keepalive\n\n")
}

/// An execution's summaries (`summary`), then `end` once it has ended.
pub fn execution(mut standing: Standing, watched: Watched) -> Events {
    Box::pin(async_stream(move |tx| async move {
        let mut rx = match watched {
            Watched::Ended(s) => {
                let data = json::summary(&s).to_string();
                let _ = tx.send(event("summary", &data)).await;
                let _ = tx.send(event("end", &data)).await;
                return;
            }
            Watched::Live(rx) => rx,
        };
        let mut last_sent = Instant::now() - SUMMARY_EVERY;
        loop {
            let s = rx.borrow_and_update().clone();
            if !s.execution_id.is_empty() {
                let data = json::summary(&s).to_string();
                let ended = matches!(s.state.as_str(), "succeeded" | "failed" | "cancelled");
                if tx.send(event("summary", &data)).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
                if ended {
                    let _ = tx.send(event("end", &data)).await;
                    return;
                }
            }
            // At most one summary per SUMMARY_EVERY: wait out the rest.
            let rest = SUMMARY_EVERY.saturating_sub(last_sent.elapsed());
            tokio::time::sleep(rest).await;
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The term ended (or the execution left memory
                        // ended): the page reconnects and reads the record.
                        return;
                    }
                }
                () = tokio::time::sleep(KEEPALIVE) => {
                    if tx.send(keepalive()).await.is_err() {
                        return;
                    }
                }
            }
            if !standing.holds().await {
                return;
            }
        }
    }))
}

/// A JSON snapshot sent at once and whenever it changes, polled every `every`.
fn polled<F, Fut>(mut standing: Standing, name: &'static str, every: Duration, read: F) -> Events
where
    F: Fn(Access, Principal) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<String, super::reply::ApiError>> + Send,
{
    Box::pin(async_stream(move |tx| async move {
        let mut last = String::new();
        let mut quiet_since = Instant::now();
        loop {
            match read(standing.access.clone(), standing.who.clone()).await {
                Ok(data) if data != last => {
                    if tx.send(event(name, &data)).await.is_err() {
                        return;
                    }
                    last = data;
                    quiet_since = Instant::now();
                }
                Ok(_) => {}
                Err(e) => {
                    let data = serde_json::json!({"code": e.code, "message": e.message});
                    let _ = tx.send(event("error", &data.to_string())).await;
                    return;
                }
            }
            if quiet_since.elapsed() >= KEEPALIVE {
                if tx.send(keepalive()).await.is_err() {
                    return;
                }
                quiet_since = Instant::now();
            }
            tokio::time::sleep(every).await;
            if !standing.holds().await {
                return;
            }
        }
    }))
}

/// The fleet (`agents`), on change.
pub fn fleet(standing: Standing) -> Events {
    polled(standing, "agents", POLL_FLEET, |access, who| async move {
        let agents = access.agents(&who, "DashboardFleet").await?;
        Ok(json::agents(&agents).to_string())
    })
}

/// The executions list for a filter (`executions`), on change.
pub fn executions(standing: Standing, state: String, package: String, folder: String) -> Events {
    polled(
        standing,
        "executions",
        POLL_EXECUTIONS,
        move |access, who| {
            let (state, package, folder) = (state.clone(), package.clone(), folder.clone());
            async move {
                let (list, next) = access.list(&who, &state, &package, &folder, 50, "").await?;
                Ok(json::summaries(&list, &next).to_string())
            }
        },
    )
}

/// A child's logs (`log` events with `{"stream", "text"}`), following while
/// it runs; `end` once they are complete, `error` if the agent cannot give them.
pub fn logs(mut standing: Standing, outputs: ChildOutputs, target: Target) -> Events {
    Box::pin(async_stream(move |tx| async move {
        let req = pb::StreamJobLogsRequest {
            dispatch_id: None,
            stream: pb::LogStream::Both as i32,
            follow: true,
            stdout_offset: 0,
            stderr_offset: 0,
        };
        let mut chunks = match outputs.logs(&target, req).await {
            Ok(s) => s,
            Err(e) => {
                let data = serde_json::json!({"code": e.code(), "message": e.to_string()});
                let _ = tx.send(event("error", &data.to_string())).await;
                return;
            }
        };
        loop {
            let next = tokio::select! {
                n = chunks.next() => n,
                () = tokio::time::sleep(KEEPALIVE) => {
                    if tx.send(keepalive()).await.is_err() || !standing.holds().await {
                        return;
                    }
                    continue;
                }
            };
            match next {
                None => {
                    let _ = tx.send(event("end", "{}")).await;
                    return;
                }
                Some(Ok(chunk)) => {
                    let stream = if chunk.stream == pb::LogStream::Stderr as i32 {
                        "stderr"
                    } else {
                        "stdout"
                    };
                    for part in chunk.data.chunks(LOG_EVENT_BYTES) {
                        let data = serde_json::json!({
                            "stream": stream,
                            "text": String::from_utf8_lossy(part),
                        });
                        if tx.send(event("log", &data.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Err(status)) => {
                    let code = status
                        .metadata()
                        .get(crate::grpc::error_status::ERROR_CODE_KEY)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("AGENT_UNREACHABLE")
                        .to_string();
                    let data = serde_json::json!({"code": code, "message": status.message()});
                    let _ = tx.send(event("error", &data.to_string())).await;
                    return;
                }
            }
            if !standing.holds().await {
                return;
            }
        }
    }))
}

/// A stream fed by a task: `body` sends into a small channel and ends when
/// the receiver (the connection) is gone.
fn async_stream<F, Fut>(body: F) -> impl tokio_stream::Stream<Item = Bytes> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
