//! The audit trail: every refused call and every change of who may do what.
//!
//! Each entry is one tracing event on target `baton::audit` and one JSON line
//! appended to `DATA_DIR/audit.log` (who, what, which folder, the outcome).
//! Entries never hold secrets: tokens appear by id, parameters not at all.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

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
}

/// Where audit entries go.
#[derive(Debug, Default)]
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
}

impl Audit {
    /// An audit trail appending to `dir/audit.log` (created 0600).
    pub fn open(dir: &Path) -> std::io::Result<Audit> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.join("audit.log"))?;
        Ok(Audit {
            file: Some(Mutex::new(file)),
        })
    }

    fn write(&self, e: &Entry<'_>) {
        if e.outcome == "denied" {
            tracing::warn!(target: "baton::audit", who = e.who, call = e.call, folder = e.folder, code = e.detail, "denied");
        } else {
            tracing::info!(target: "baton::audit", who = e.who, call = e.call, folder = e.folder, change = e.detail, "allowed");
        }
        if let Some(f) = &self.file
            && let Ok(mut line) = serde_json::to_vec(e)
        {
            line.push(b'\n');
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(err) = f.write_all(&line) {
                tracing::error!(error = %err, "cannot write the audit log");
            }
        }
    }

    /// A refused call.
    pub fn denied(&self, who: &str, call: &str, folder: &str, code: &str) {
        self.write(&Entry {
            unix_ms: now_ms(),
            who,
            call,
            folder,
            outcome: "denied",
            detail: code,
        });
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
}
