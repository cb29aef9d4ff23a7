//! The audit trail: every refused call and every change of who may do what.
//!
//! Each entry is one tracing event on target `baton::audit` and one JSON line
//! appended to `DATA_DIR/audit.log` (who, what, which folder, the outcome).
//! Entries never hold secrets: tokens appear by id, parameters not at all.
//!
//! Bounded: refusals are aggregated per source ([`super::refusals`]: the first of
//! a kind in full, then one summary line per window with the count and the
//! source address), and the file rotates by size ([`super::audit_file`],
//! `--audit-max-bytes`, `--audit-keep`). The gRPC edge runs each call inside
//! [`with_source`] so that a refusal knows its caller's address.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::audit_file::{Limits, RotatingFile};
use super::refusals::{Key, Refusals, STRING_MAX, Summary};

/// Marks a string of a refusal cut at [`STRING_MAX`] bytes.
pub const TRUNCATED: &str = "…[truncated]";

/// `s` cut to at most [`STRING_MAX`] bytes (at a character boundary) and
/// marked, so that what a caller claims cannot make a refusal's key, audit
/// line or WARN large.
pub fn cap(s: &str) -> std::borrow::Cow<'_, str> {
    if s.len() <= STRING_MAX {
        return s.into();
    }
    let mut end = STRING_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &s[..end]).into()
}

tokio::task_local! {
    static SOURCE: Option<IpAddr>;
}

/// Runs `f` with `source` as the caller's address of every refusal it audits.
pub async fn with_source<F: std::future::Future>(source: Option<IpAddr>, f: F) -> F::Output {
    SOURCE.scope(source, f).await
}

/// The caller's address of the call being served, if known.
pub fn current_source() -> Option<IpAddr> {
    SOURCE.try_with(|s| *s).ok().flatten()
}

/// One audit entry.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub unix_ms: u64,
    /// The principal, or how an unauthenticated caller presented itself.
    pub who: &'a str,
    /// The call (`StartExecution`, `Enroll`, …).
    pub call: &'a str,
    /// The folder the call concerned ("" when none).
    pub folder: &'a str,
    /// `denied` or `allowed`.
    pub outcome: &'a str,
    /// The stable error code of a refusal, or what was changed.
    pub detail: &'a str,
    /// The caller's address (refusals, when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A summary: this many more refusals like this one, within `window_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_s: Option<u64>,
}

/// Where audit entries go.
#[derive(Debug, Default)]
pub struct Audit {
    file: Option<Mutex<RotatingFile>>,
    refusals: Mutex<Refusals>,
}

impl Audit {
    /// An audit trail appending to `dir/audit.log` (created 0600), default limits.
    pub fn open(dir: &Path) -> std::io::Result<Audit> {
        Audit::open_with(dir, Limits::default())
    }

    /// An audit trail appending to `dir/audit.log`, rotated at `limits`.
    pub fn open_with(dir: &Path, limits: Limits) -> std::io::Result<Audit> {
        let file = RotatingFile::open(&dir.join("audit.log"), limits)?;
        Ok(Audit {
            file: Some(Mutex::new(file)),
            refusals: Mutex::default(),
        })
    }

    fn write(&self, e: &Entry<'_>) {
        let source = e.source.as_deref().unwrap_or("");
        if let Some(n) = e.repeated {
            let from = if source.is_empty() {
                "other sources"
            } else {
                source
            };
            let secs = e.window_s.unwrap_or(0);
            tracing::warn!(target: "baton::audit", who = e.who, call = e.call, code = e.detail, source, repeated = n, "{n} more refusals from {from} in the last {secs} s");
        } else if e.outcome == "denied" {
            tracing::warn!(target: "baton::audit", who = e.who, call = e.call, folder = e.folder, code = e.detail, source, "denied");
        } else {
            tracing::info!(target: "baton::audit", who = e.who, call = e.call, folder = e.folder, change = e.detail, "allowed");
        }
        if let Some(f) = &self.file
            && let Ok(mut line) = serde_json::to_vec(e)
        {
            line.push(b'\n');
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(err) = f.append(&line) {
                tracing::error!(error = %err, "cannot write the audit log");
            }
        }
    }

    /// A refused call: recorded in full if it is the first of its kind from its
    /// source within the window, otherwise counted for a summary. Each string is
    /// capped ([`cap`]).
    pub fn denied(&self, who: &str, call: &str, folder: &str, code: &str) {
        self.denied_from(current_source(), who, call, folder, code);
    }

    /// [`Audit::denied`] for a refusal made outside a call (a TLS handshake),
    /// whose source is given.
    pub fn denied_from(
        &self,
        source: Option<IpAddr>,
        who: &str,
        call: &str,
        folder: &str,
        code: &str,
    ) {
        let (who, call, folder, code) = (&*cap(who), &*cap(call), &*cap(folder), &*cap(code));
        let key = Key {
            source,
            who: who.to_string(),
            call: call.to_string(),
            folder: folder.to_string(),
            code: code.to_string(),
        };
        let (record, done) = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .refuse(key, Instant::now());
        self.summarise(done);
        if record {
            self.write(&Entry {
                unix_ms: now_ms(),
                who,
                call,
                folder,
                outcome: "denied",
                detail: code,
                source: source.map(|s| s.to_string()),
                repeated: None,
                window_s: None,
            });
        }
    }

    /// Writes the summaries of the refusal windows that are over.
    pub fn flush(&self) {
        let done = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush(Instant::now());
        self.summarise(done);
    }

    /// Calls [`Audit::flush`] every second until `stop`, and once more then.
    pub async fn flush_every_second(
        self: std::sync::Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => self.flush(),
            }
        }
        self.flush();
    }

    fn summarise(&self, done: Vec<Summary>) {
        for s in done {
            let (who, call, folder, code, source) = match &s.key {
                Some(k) => (
                    k.who.as_str(),
                    k.call.as_str(),
                    k.folder.as_str(),
                    k.code.as_str(),
                    k.source,
                ),
                None => ("", "", "", "", None),
            };
            self.write(&Entry {
                unix_ms: now_ms(),
                who,
                call,
                folder,
                outcome: "denied",
                detail: code,
                source: source.map(|s| s.to_string()),
                repeated: Some(s.count),
                window_s: Some(s.window.as_secs()),
            });
        }
    }

    /// A change to permissions, tokens or the fleet.
    pub fn changed(&self, who: &str, call: &str, folder: &str, what: &str) {
        self.write(&Entry {
            unix_ms: now_ms(),
            who,
            call,
            folder,
            outcome: "allowed",
            detail: what,
            source: None,
            repeated: None,
            window_s: None,
        });
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_json_lines_in_a_private_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path()).unwrap();
        a.denied("bob", "StartExecution", "/etl", "PERMISSION_DENIED");
        a.changed("admin", "GrantRole", "/etl", "bob +execute");
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["who"], "bob");
        assert_eq!(lines[0]["outcome"], "denied");
        assert_eq!(lines[1]["detail"], "bob +execute");
        let mode = std::fs::metadata(dir.path().join("audit.log"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_burst_of_refusals_from_one_source_is_one_line_and_one_summary() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path()).unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        with_source(Some(ip), async {
            for _ in 0..1000 {
                a.denied("anonymous", "WhoAmI", "", "UNAUTHENTICATED");
            }
        })
        .await;
        let read = || -> Vec<serde_json::Value> {
            std::fs::read_to_string(dir.path().join("audit.log"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let lines = read();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["source"], "192.0.2.7");
        // The summary comes when the window is over.
        let early = a.refusals.lock().unwrap().flush(Instant::now());
        assert!(early.is_empty(), "the window is not over yet");
        let later = Instant::now() + crate::auth::refusals::WINDOW;
        let done = a.refusals.lock().unwrap().flush(later);
        a.summarise(done);
        let lines = read();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[1]["repeated"], 999);
        assert_eq!(lines[1]["source"], "192.0.2.7");
        assert_eq!(lines[1]["call"], "WhoAmI");
    }

    #[tokio::test]
    async fn a_huge_claimed_name_is_truncated_in_the_key_and_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path()).unwrap();
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        let huge = format!("anonymous (as agent {})", "é".repeat(1 << 20));
        with_source(Some(ip), async {
            a.denied(
                &huge,
                "ReportEvents",
                &"f".repeat(10_000),
                "UNAUTHENTICATED",
            );
            // Differing only past the cap: the same key, counted.
            a.denied(
                &format!("{huge}x"),
                "ReportEvents",
                &"f".repeat(10_001),
                "UNAUTHENTICATED",
            );
        })
        .await;
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "the second refusal was counted");
        assert!(text.len() < 1024, "{} bytes", text.len());
        let who = lines[0]["who"].as_str().unwrap();
        assert!(who.ends_with(TRUNCATED), "{who}");
        assert!(who.len() <= STRING_MAX + TRUNCATED.len());
        assert!(lines[0]["folder"].as_str().unwrap().ends_with(TRUNCATED));
        let r = a.refusals.lock().unwrap();
        assert_eq!(r.len(), 1, "one key: the strings differ only past the cap");
        assert!(cap("short") == "short");
    }
}
