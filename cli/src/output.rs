//! How results are shown: human text by default, one JSON object with
//! `--output json`, and a progress line while waiting on a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use baton_proto as pb;
use serde_json::{Value, json};

/// `--output` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// The summary object of an execution (the contract of `run --wait` and `demo`).
pub fn summary_json(s: &pb::ExecutionSummary, wall_s: Option<f64>) -> Value {
    let per_agent: serde_json::Map<String, Value> = s
        .per_agent
        .iter()
        .map(|a| {
            (
                a.agent.clone(),
                json!({"succeeded": a.succeeded, "failed": a.failed}),
            )
        })
        .collect();
    let mut v = json!({
        "execution_id": s.execution_id,
        "package": s.package,
        "folder": if s.folder.is_empty() { "/" } else { s.folder.as_str() },
        "status": s.state,
        "children": {
            "total": s.total,
            "succeeded": s.succeeded,
            "failed": s.failed,
            "pending": s.pending,
            "running": s.running,
        },
        "per_agent": per_agent,
        "lost_attempts": s.lost_attempts,
        "stale_events": s.stale_events,
        "reason": s.reason,
        "resumes": s.resumes,
        "created_unix_ms": s.created_unix_ms,
        "finished_unix_ms": s.finished_unix_ms,
    });
    if !s.parent.is_empty() {
        v["parent"] = json!(s.parent);
    }
    if !s.catalog_path.is_empty() {
        v["catalog"] = json!({"path": s.catalog_path, "version": s.catalog_version});
    }
    if let Some(w) = wall_s {
        v["wall_s"] = json!((w * 1000.0).round() / 1000.0);
        let done = (s.succeeded + s.failed) as f64;
        v["children_per_s"] = json!(if w > 0.0 {
            (done / w * 10.0).round() / 10.0
        } else {
            0.0
        });
    }
    v
}

/// A human summary of an execution.
pub fn summary_human(s: &pb::ExecutionSummary, wall_s: Option<f64>) -> String {
    let mut out = format!(
        "execution {}  package {}  status {}\nchildren: {} total, {} succeeded, {} failed, {} running, {} pending",
        s.execution_id, s.package, s.state, s.total, s.succeeded, s.failed, s.running, s.pending
    );
    if !s.catalog_path.is_empty() {
        out += &format!(
            "\ncatalog: {} version {}",
            s.catalog_path, s.catalog_version
        );
    }
    if !s.parent.is_empty() {
        out += &format!("\nsub-execution of {} (nested fan-out)", s.parent);
    }
    if s.resumes > 0 {
        out += &format!("\nresumed {} time(s)", s.resumes);
    }
    if s.lost_attempts > 0 || s.stale_events > 0 {
        out += &format!(
            "\nre-runs after agent loss: {}, stale reports ignored: {}",
            s.lost_attempts, s.stale_events
        );
    }
    if let Some(w) = wall_s {
        let done = (s.succeeded + s.failed) as f64;
        out += &format!(
            "\nwall time {w:.2} s, {:.1} children/s",
            if w > 0.0 { done / w } else { 0.0 }
        );
    }
    if !s.per_agent.is_empty() {
        out += &format!("\n{:<24} {:>10} {:>8}", "AGENT", "SUCCEEDED", "FAILED");
        for a in &s.per_agent {
            out += &format!("\n{:<24} {:>10} {:>8}", a.agent, a.succeeded, a.failed);
        }
    }
    if !s.reason.is_empty() {
        out += &format!("\nreason: {}", s.reason);
    }
    out
}

/// Shows progress while waiting: a bar on a terminal, nothing otherwise
/// (unless `plain_lines`, used by `--follow`).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain_lines: bool,
    last_line: String,
}

impl Progress {
    pub fn new(plain_lines: bool) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            plain_lines,
            last_line: String::new(),
        }
    }

    pub fn update(&mut self, s: &pb::ExecutionSummary) {
        let msg = format!(
            "{} ok, {} failed, {} running, {} waiting",
            s.succeeded, s.failed, s.running, s.pending
        );
        if let Some(bar) = &self.bar {
            bar.set_length(s.total);
            bar.set_position(s.succeeded + s.failed);
            bar.set_message(msg);
        } else if self.plain_lines && msg != self.last_line {
            eprintln!("{}/{} done: {msg}", s.succeeded + s.failed, s.total);
            self.last_line = msg;
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The one JSON shape of every list command: `{"items": [...],
/// "next_page_token": null | "..."}` (a token when more pages exist: pass it
/// back with `--page-token`).
pub fn list_json(items: Vec<Value>, next_page_token: Option<&str>) -> Value {
    json!({
        "items": items,
        "next_page_token": next_page_token.filter(|t| !t.is_empty()),
    })
}

/// A time for people: RFC 3339 in UTC to the second (`2026-12-07T09:01:12Z`);
/// `-` for 0 (never). JSON carries the same times as unix milliseconds in
/// fields named `*_unix_ms`.
pub fn rfc3339(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".to_owned();
    }
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod list_and_time_tests {
    use super::*;

    #[test]
    fn every_list_has_one_envelope() {
        let v = list_json(vec![json!({"a": 1})], None);
        assert_eq!(v, json!({"items": [{"a": 1}], "next_page_token": null}));
        let v = list_json(vec![], Some(""));
        assert_eq!(
            v["next_page_token"],
            Value::Null,
            "empty token = no more pages"
        );
        let v = list_json(vec![], Some("abc"));
        assert_eq!(v["next_page_token"], "abc");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "-");
        assert_eq!(rfc3339(1), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_634_072_999), "2026-12-07T09:01:12Z");
        assert_eq!(rfc3339(4_102_444_800_000), "2100-01-01T00:00:00Z");
    }
}
