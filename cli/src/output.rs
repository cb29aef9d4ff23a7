//! How results are shown: human text by default, one JSON object with
//! `--output json`, and a progress line while waiting (a bar on a terminal,
//! plain lines at a bounded rate otherwise).
//!
//! Every result goes through [`outln!`] / [`out!`] ([`write_stdout`]), never
//! `println!` (the crate denies `clippy::print_stdout`): `println!` panics
//! when the reader of a pipe has gone (`baton exec list | head -3`), while
//! these stop writing quietly, as Unix tools do, and the command ends with
//! its own exit code.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_proto as pb;
use serde_json::{Value, json};

/// The reader of stdout went away: nothing more is written.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// Another write error (a full disk): `main` reports it once at the end.
static STDOUT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Writes a result to stdout. A closed pipe ends the output quietly; any
/// other error is kept for [`stdout_error`] and ends the output too.
pub fn write_stdout(args: fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let mut first = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Whether stdout can no longer be written (its reader went away): a
/// command that would print for ever (`exec watch`) stops.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// A write error of stdout other than a closed pipe, if there was one.
pub fn stdout_error() -> Option<String> {
    if !stdout_closed()
        && let Err(e) = std::io::stdout().lock().flush()
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Some(e.to_string());
    }
    STDOUT_ERROR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// `println!` for results, through [`write_stdout`].
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// `print!` for results, through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// `eprintln!` for notes and progress: a closed stderr is ignored instead of
/// a panic.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
pub(crate) use errln;

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
            "cancelled": s.cancelled,
            "pending": s.pending,
            "running": s.running,
        },
        "waiting": s.waiting,
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
        let done = done(s) as f64;
        v["children_per_s"] = json!(if w > 0.0 {
            (done / w * 10.0).round() / 10.0
        } else {
            0.0
        });
    }
    v
}

/// Children that have ended, whatever their end.
pub fn done(s: &pb::ExecutionSummary) -> u64 {
    s.succeeded + s.failed + s.cancelled
}

/// The counts of a summary in one phrase, with why children wait:
/// `3 succeeded, 0 failed, 1 running, 4 pending (waiting for capacity: …)`.
pub fn counts_phrase(s: &pb::ExecutionSummary) -> String {
    let mut out = format!("{} succeeded, {} failed", s.succeeded, s.failed);
    if s.cancelled > 0 {
        out += &format!(", {} cancelled", s.cancelled);
    }
    out += &format!(", {} running, {} pending", s.running, s.pending);
    if !s.waiting.is_empty() && s.state == "running" {
        out += &format!(" ({})", s.waiting);
    }
    out
}

/// A human summary of an execution.
pub fn summary_human(s: &pb::ExecutionSummary, wall_s: Option<f64>) -> String {
    let mut out = format!(
        "execution {}  package {}  status {}\nchildren: {} total, {}",
        s.execution_id,
        s.package,
        s.state,
        s.total,
        counts_phrase(s)
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
        let done = done(s) as f64;
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

/// How often plain progress lines may be printed (the last state is always
/// printed): a fan-out of 10,000 children changes many times a second.
pub const LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Where plain progress lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// None (a bar on a terminal, else nothing: `run --wait`, `exec wait`).
    Off,
    /// To stderr (`run --follow`: stdout keeps the result alone).
    Stderr,
    /// To stdout: they are the output (`exec watch`).
    Stdout,
}

/// Shows progress while waiting: a bar on a terminal (unless lines go to
/// stdout), plain lines at most once per [`LINE_INTERVAL`] otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: Lines,
    json: bool,
    /// The last line printed, and one not printed yet (rate limit).
    last_line: String,
    held: Option<String>,
    last_at: Option<Instant>,
}

impl Progress {
    pub fn new(lines: Lines) -> Self {
        Self::with_format(lines, false)
    }

    /// With `json`, each line is the summary object (`exec watch -o json`).
    pub fn with_format(lines: Lines, json: bool) -> Self {
        let bar = (lines != Lines::Stdout && std::io::stderr().is_terminal()).then(|| {
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
            lines,
            json,
            last_line: String::new(),
            held: None,
            last_at: None,
        }
    }

    /// Where its plain lines go.
    pub fn lines(&self) -> Lines {
        self.lines
    }

    /// The plain line of a summary.
    fn line(&self, s: &pb::ExecutionSummary) -> String {
        if self.json {
            return summary_json(s, None).to_string();
        }
        format!(
            "{} {}/{} done: {}",
            s.state,
            done(s),
            s.total,
            counts_phrase(s)
        )
    }

    pub fn update(&mut self, s: &pb::ExecutionSummary) {
        if let Some(bar) = &self.bar {
            bar.set_length(s.total);
            bar.set_position(done(s));
            bar.set_message(counts_phrase(s));
            return;
        }
        if self.lines == Lines::Off {
            return;
        }
        let line = self.line(s);
        if line == self.last_line {
            self.held = None;
            return;
        }
        self.held = Some(line);
        if self.last_at.is_none_or(|t| t.elapsed() >= LINE_INTERVAL) {
            self.flush();
        }
    }

    /// When a held line is due (`None`: nothing held).
    pub fn due(&self) -> Option<Instant> {
        self.held.as_ref()?;
        Some(
            self.last_at
                .map_or_else(Instant::now, |t| t + LINE_INTERVAL),
        )
    }

    /// Prints the held line, if any.
    pub fn flush(&mut self) {
        let Some(line) = self.held.take() else {
            return;
        };
        match self.lines {
            Lines::Stdout => outln!("{line}"),
            Lines::Stderr => errln!("{line}"),
            Lines::Off => {}
        }
        self.last_line = line;
        self.last_at = Some(Instant::now());
    }

    pub fn finish(mut self) {
        self.flush();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(done: u64, pending: u64) -> pb::ExecutionSummary {
        pb::ExecutionSummary {
            execution_id: "e1".into(),
            state: "running".into(),
            total: done + pending + 1,
            succeeded: done,
            cancelled: 1,
            pending,
            waiting: "waiting for capacity: every agent is full".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_counts_say_cancelled_apart_and_why_children_wait() {
        let s = summary(2, 3);
        assert_eq!(
            counts_phrase(&s),
            "2 succeeded, 0 failed, 1 cancelled, 0 running, 3 pending \
             (waiting for capacity: every agent is full)"
        );
        assert_eq!(done(&s), 3);
        let ended = pb::ExecutionSummary {
            state: "cancelled".into(),
            ..s
        };
        assert!(!counts_phrase(&ended).contains("waiting"), "not once ended");
        let v = summary_json(&ended, None);
        assert_eq!(v["children"]["cancelled"], 1);
        assert_eq!(v["children"]["failed"], 0);
    }

    #[test]
    fn plain_lines_are_rate_limited_and_the_last_one_is_kept() {
        let mut p = Progress::new(Lines::Stderr);
        assert!(p.bar.is_none() || std::io::stderr().is_terminal());
        if p.bar.is_some() {
            return; // a terminal: a bar, not lines
        }
        p.update(&summary(1, 3));
        assert_eq!(p.due(), None, "the first line goes out at once");
        assert!(p.last_line.starts_with("running 2/5 done: 1 succeeded"));
        p.update(&summary(2, 2));
        let due = p.due().expect("the next one waits for the interval");
        assert!(due > Instant::now());
        p.update(&summary(3, 1));
        p.flush();
        assert!(
            p.last_line.starts_with("running 4/5 done: 3 succeeded"),
            "the newest line wins: {}",
            p.last_line
        );
        p.update(&summary(3, 1));
        assert_eq!(p.due(), None, "an unchanged summary prints nothing");
    }

    #[test]
    fn json_lines_are_summary_objects() {
        let p = Progress::with_format(Lines::Stdout, true);
        let line = p.line(&summary(1, 1));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["execution_id"], "e1");
        assert_eq!(v["waiting"], "waiting for capacity: every agent is full");
    }
}
