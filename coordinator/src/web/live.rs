//! The dashboard's live updates, as server-sent event streams: an
//! execution's summary as it changes, the fleet and the executions list
//! when they change, and a child's logs as its agent writes them.
//!
//! Every stream checks, at least every [`RECHECK`], that its session still
//! stands, that its token still authenticates and that its principal may
//! still read what it shows (a logout, a revoked token or a revoked grant
//! ends the stream), sends a comment line every [`KEEPALIVE`] so that a dead
//! connection is noticed, stops its work as soon as the connection is gone,
//! holds one of its session's few stream places ([`super::session::MAX_STREAMS`])
//! and ends when the term that serves it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto as pb;
use bytes::Bytes;
use tokio_stream::StreamExt;

use super::json;
use super::reply::{Events, event};
use crate::access::Access;
use crate::api::Watched;
use crate::auth::{Credential, Permission, Principal};
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

/// Whether the caller may still listen: its session is open, its token
/// authenticates as the same principal, and that principal may still read
/// the folder of what the stream shows.
pub struct Standing {
    pub access: Access,
    pub who: Principal,
    /// Looks the session's token up again (`None`: the session ended).
    pub token: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    /// The folder whose `read` the stream needs (an execution's); `None`: a
    /// listing, filtered at each read.
    pub folder: Option<String>,
    pub checked: Instant,
    /// Gives the session's stream place back when the stream ends.
    pub _slot: Option<Box<dyn Send + Sync>>,
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
        let same = matches!(
            self.access
                .authenticate(&Credential::Bearer(Some(token)), "DashboardEvents")
                .await,
            Ok(p) if p.name == self.who.name
        );
        match &self.folder {
            Some(folder) if same => self
                .access
                .auth()
                .require(&self.who, Permission::Read, folder, "DashboardEvents")
                .await
                .is_ok(),
            _ => same,
        }
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
                () = tx.closed() => return,
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
                Err(e) if matches!(e.status.as_u16(), 401 | 403) => {
                    let data = serde_json::json!({"code": e.code, "message": e.message});
                    let _ = tx.send(event("error", &data.to_string())).await;
                    return;
                }
                // A store or a term that does not answer now: the page keeps
                // what it shows, and the next poll tries again.
                Err(_) => {}
            }
            if quiet_since.elapsed() >= KEEPALIVE {
                if tx.send(keepalive()).await.is_err() {
                    return;
                }
                quiet_since = Instant::now();
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = tx.closed() => return,
            }
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
        // Bytes of a character cut at the end of a chunk, per stream.
        let (mut carry_out, mut carry_err) = (Vec::new(), Vec::new());
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
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
                    let (stream, carry) = if chunk.stream == pb::LogStream::Stderr as i32 {
                        ("stderr", &mut carry_err)
                    } else {
                        ("stdout", &mut carry_out)
                    };
                    let text = utf8_text(carry, &chunk.data);
                    for part in text_parts(&text, LOG_EVENT_BYTES) {
                        let data = serde_json::json!({
                            "stream": stream,
                            "text": part,
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

/// The text of `data` after the bytes `carry` held back from the chunk
/// before; the bytes of a character cut at the end are held back in turn
/// (at most 3), and invalid bytes become U+FFFD.
fn utf8_text(carry: &mut Vec<u8>, data: &[u8]) -> String {
    carry.extend_from_slice(data);
    let cut = match std::str::from_utf8(carry) {
        Ok(_) => carry.len(),
        // An incomplete character at the very end: keep it for the next chunk.
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => {
            // Invalid bytes somewhere: hold back only an incomplete tail.
            let tail = (1..=3.min(carry.len()))
                .find(|&n| {
                    let t = &carry[carry.len() - n..];
                    matches!(std::str::from_utf8(t), Err(e) if e.error_len().is_none() && e.valid_up_to() == 0)
                })
                .unwrap_or(0);
            carry.len() - tail
        }
    };
    let text = String::from_utf8_lossy(&carry[..cut]).into_owned();
    carry.drain(..cut);
    text
}

/// `text` in parts of at most `max` bytes, cut at character boundaries.
fn text_parts(text: &str, max: usize) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (part, after) = rest.split_at(end.max(1).min(rest.len()));
        parts.push(part);
        rest = after;
    }
    parts
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

#[cfg(test)]
mod tests {
    use super::{text_parts, utf8_text};

    #[test]
    fn a_character_cut_between_chunks_arrives_whole() {
        let mut carry = Vec::new();
        let bytes = "é–x".as_bytes();
        assert_eq!(utf8_text(&mut carry, &bytes[..1]), "");
        assert_eq!(utf8_text(&mut carry, &bytes[1..3]), "é");
        assert_eq!(utf8_text(&mut carry, &bytes[3..]), "–x");
        assert!(carry.is_empty());
        // Invalid bytes are replaced, not held back.
        assert_eq!(utf8_text(&mut carry, b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn parts_are_cut_at_character_boundaries() {
        let text = "aé".repeat(10);
        for part in text_parts(&text, 4) {
            assert!(part.len() <= 4);
        }
        assert_eq!(text_parts(&text, 4).concat(), text);
    }
}
