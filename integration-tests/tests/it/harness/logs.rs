//! Waiting on what a node logs, instead of sleeping.
//!
//! A test that must know the system moved past a point (a dispatch, a loss, a
//! refusal, the end of an agent's event stream) waits for the line the daemon
//! logs there. It takes a [`LogMark`] — the current end of a node's `stderr.log`
//! — *before* it acts, then waits for the first (or Nth) line after the mark that
//! contains every given piece: a line from before the action can never satisfy
//! the wait, and "the Nth occurrence from now on" needs no bookkeeping. Every
//! wait has a deadline; a failed wait names the node, the pieces and the lines
//! seen after the mark.
//!
//! A "nothing happened" assertion waits for a positive line instead: one that
//! proves the system went past the point where the unwanted thing would have
//! happened (the next retry, the end of a stream), then asserts.
//!
//! Some of those lines are logged at `debug`: [`log_level_with`] builds the
//! `BATON_LOG` of a node that shows them without making the whole node verbose.
//!
//! Only lines ending in a newline count, so a line being written is never read
//! half. ANSI colour codes are removed before matching (nodes run with
//! `NO_COLOR`, but a `BATON_BIN` could ignore it).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a wait reads the log again.
const POLL: Duration = Duration::from_millis(20);
/// Lines of context a failed wait prints.
const TAIL_LINES: usize = 40;

/// What an agent logs when a session with the coordinator (registration, then
/// the event stream) fails, the first time after it was up or started: a
/// refusal that stops it (revoked), or a failure it retries (unreachable,
/// refused for now, the stream ended). After a start, the first such line is
/// the answer to its first registration. For [`LogMark::wait_for_any`].
pub const AGENT_SESSION_FAILED: &[&[&str]] = &[
    &["the coordinator will not take this agent"],
    &["coordinator unreachable; will retry"],
];

/// Every debug line of the agent crate: for [`log_level_with`]. Crate-wide on
/// purpose: a line a test waits for still shows when a refactor moves it to
/// another module (the directive names a target, and a module path is one).
pub const AGENT_DEBUG: &[(&str, &str)] = &[("baton_agent", "debug")];
/// Every debug line of the coordinator crate (see [`AGENT_DEBUG`]).
pub const COORDINATOR_DEBUG: &[(&str, &str)] = &[("baton_coordinator", "debug")];

/// Level of the processes' logs: `BATON_LOG` of the test run, else `info`.
pub fn log_level() -> String {
    std::env::var("BATON_LOG").unwrap_or_else(|_| "info".to_owned())
}

/// `BATON_LOG` of the test run (default `info`) with `TARGET=LEVEL` directives
/// added, e.g. `log_level_with(AGENT_DEBUG)`.
pub fn log_level_with(targets: &[(&str, &str)]) -> String {
    let mut filter = log_level();
    for (target, level) in targets {
        filter.push_str(&format!(",{target}={level}"));
    }
    filter
}

/// A position in a node's log: the waits look only at what comes after it.
#[derive(Debug, Clone)]
pub struct LogMark {
    node: String,
    path: PathBuf,
    offset: u64,
}

impl LogMark {
    /// The current end of `path` (the log of `node`); a file not yet created
    /// counts as empty.
    pub fn at_end(node: &str, path: &Path) -> LogMark {
        LogMark {
            node: node.to_owned(),
            path: path.to_owned(),
            offset: fs::metadata(path).map_or(0, |m| m.len()),
        }
    }

    /// The start of `path`: every line the node ever logged there.
    pub fn at_start(node: &str, path: &Path) -> LogMark {
        LogMark {
            node: node.to_owned(),
            path: path.to_owned(),
            offset: 0,
        }
    }

    /// The complete lines written after the mark, without colour codes.
    pub fn lines(&self) -> Vec<String> {
        let bytes = fs::read(&self.path).unwrap_or_default();
        let start = usize::try_from(self.offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let after = &bytes[start..];
        // Only up to the last newline: a line still being written is not read.
        let complete = match after.iter().rposition(|b| *b == b'\n') {
            Some(i) => &after[..=i],
            None => &[][..],
        };
        strip_ansi(&String::from_utf8_lossy(complete))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Lines after the mark that contain every one of `pieces`.
    pub fn matching(&self, pieces: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| pieces.iter().all(|p| l.contains(p)))
            .collect()
    }

    /// How many lines after the mark contain every one of `pieces`.
    pub fn count(&self, pieces: &[&str]) -> usize {
        self.matching(pieces).len()
    }

    /// Waits for the first line after the mark that contains every one of
    /// `pieces`; returns it. Panics after `timeout` with what was logged.
    pub fn wait_for(&self, pieces: &[&str], timeout: Duration) -> String {
        self.wait_for_nth(pieces, 1, timeout)
    }

    /// Waits until `n` lines after the mark contain every one of `pieces`;
    /// returns the `n`th. Panics after `timeout` with what was logged.
    pub fn wait_for_nth(&self, pieces: &[&str], n: usize, timeout: Duration) -> String {
        assert!(n >= 1, "wait for at least one line");
        self.wait_for_any_nth(&[pieces], n, timeout)
    }

    /// Waits for the first line after the mark that matches one of
    /// `alternatives` (each a list of pieces that must all be in the line).
    pub fn wait_for_any(&self, alternatives: &[&[&str]], timeout: Duration) -> String {
        self.wait_for_any_nth(alternatives, 1, timeout)
    }

    fn wait_for_any_nth(&self, alternatives: &[&[&str]], n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines();
            let mut found = lines.iter().filter(|l| {
                alternatives
                    .iter()
                    .any(|pieces| pieces.iter().all(|p| l.contains(p)))
            });
            if let Some(line) = found.nth(n - 1) {
                return line.clone();
            }
            if Instant::now() >= deadline {
                let seen = lines.iter().filter(|l| {
                    alternatives
                        .iter()
                        .any(|pieces| pieces.iter().all(|p| l.contains(p)))
                });
                panic!(
                    "{}: no line #{n} matching {alternatives:?} within {timeout:?} \
                     ({} matching so far)\n--- {} after the mark (last {TAIL_LINES} lines) ---\n{}",
                    self.node,
                    seen.count(),
                    self.path.display(),
                    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The value of field `key` in a log line (`key=value`, up to the next space),
/// e.g. `field(line, "dispatch")`.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(key)?.strip_prefix('='))
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case a process colours its logs.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The whole stderr of a node, ANSI-stripped (for tests that look for a log line).
pub fn read_log(path: &Path) -> String {
    strip_ansi(&String::from_utf8_lossy(
        &fs::read(path).unwrap_or_default(),
    ))
}

#[test]
fn strip_ansi_removes_colour_codes() {
    assert_eq!(
        strip_ansi("\u{1b}[31mERROR\u{1b}[0m x"),
        "ERROR x".to_owned()
    );
}

#[test]
fn field_reads_a_key_value_token() {
    let line = "2026-01-01T00:00:00Z DEBUG job finished dispatch=e1/fan[3]#1 status=Succeeded";
    assert_eq!(field(line, "dispatch"), Some("e1/fan[3]#1"));
    assert_eq!(field(line, "status"), Some("Succeeded"));
    assert_eq!(field(line, "stat"), None);
    assert_eq!(field(line, "agent"), None);
}

#[test]
fn a_mark_sees_only_complete_lines_written_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stderr.log");
    fs::write(&path, "old match\n").expect("write");
    let mark = LogMark::at_end("n", &path);
    assert_eq!(mark.count(&["match"]), 0, "a line before the mark");
    fs::write(&path, "old match\nnew match one\nnew match tw").expect("write");
    assert_eq!(mark.matching(&["match"]), ["new match one"]);
    fs::write(&path, "old match\nnew match one\nnew match two\n").expect("write");
    assert_eq!(
        mark.wait_for_nth(&["new", "match"], 2, Duration::from_secs(1)),
        "new match two"
    );
    assert_eq!(
        LogMark::at_start("n", &path).count(&["match"]),
        3,
        "from the start"
    );
    assert_eq!(
        mark.wait_for_any(&[&["absent"], &["two"]], Duration::from_secs(1)),
        "new match two"
    );
}

#[test]
#[should_panic(expected = "no line #1 matching")]
fn a_wait_for_a_line_that_never_comes_fails_at_its_deadline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stderr.log");
    fs::write(&path, "something else\n").expect("write");
    LogMark::at_start("n", &path).wait_for(&["never"], Duration::from_millis(100));
}
