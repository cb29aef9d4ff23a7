//! W3C trace contexts as plain values: parse and print a `traceparent`
//! (`00-<trace id>-<span id>-<flags>`), and derive the span ids of an
//! execution's tasks and child attempts from the execution's own span id.
//!
//! Derived ids need no storage: the scheduler fills a dispatch's
//! `traceparent` with the attempt's id, and the span exporter
//! (`traces.rs`) later emits the attempt's span under that same id. A leaf
//! with no OpenTelemetry types, so the scheduler can use it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An execution's place in a trace, kept in its record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecTrace {
    /// The execution span's own context (`00-<trace>-<span>-01`).
    pub traceparent: String,
    /// The span it was started under (the caller's request span), as 16 hex
    /// digits; empty for a root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent_span: String,
    /// The caller's W3C `tracestate`, passed on to every dispatch.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
    /// When this span started, if not when the execution was created (a
    /// resumed execution's span starts at the resume).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started_unix_ms: u64,
}

/// Most bytes of a `tracestate` passed on to dispatches (and so to agents,
/// which refuse a longer one, and to child processes).
pub const TRACESTATE_BYTES_MAX: usize = 512;

/// `tracestate` cut to [`TRACESTATE_BYTES_MAX`] by dropping whole entries
/// from the end (W3C: the right-most entries are the first to go).
pub fn bounded_tracestate(state: &str) -> String {
    let mut out = String::new();
    for entry in state.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let sep = usize::from(!out.is_empty());
        if out.len() + sep + entry.len() > TRACESTATE_BYTES_MAX {
            break;
        }
        if sep == 1 {
            out.push(',');
        }
        out.push_str(entry);
    }
    out
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ExecTrace {
    /// The trace of an execution whose span is `span`, started under the
    /// span `parent` (if any), with the caller's `tracestate`.
    pub fn new(span: TraceContext, parent: Option<TraceContext>, tracestate: &str) -> ExecTrace {
        ExecTrace {
            traceparent: span.traceparent(),
            parent_span: parent.map(|p| p.span_hex()).unwrap_or_default(),
            tracestate: bounded_tracestate(tracestate),
            started_unix_ms: 0,
        }
    }

    /// The trace of the `resumes`-th re-run of this execution (`baton exec
    /// resume`), from `unix_ms`: a new execution span under this one, so
    /// that its tasks and attempts get spans of their own.
    pub fn resumed(&self, resumes: u32, unix_ms: u64) -> Option<ExecTrace> {
        let parent = self.span()?;
        let span = parent.derive("resume", &[u64::from(resumes)]);
        Some(ExecTrace {
            started_unix_ms: unix_ms,
            ..ExecTrace::new(span, Some(parent), &self.tracestate)
        })
    }

    /// The execution span's context (`None` if the record holds a bad one).
    pub fn span(&self) -> Option<TraceContext> {
        TraceContext::parse(&self.traceparent)
    }

    /// The trace of a sub-execution `id` run as one attempt of a child of
    /// this execution: its span sits under that attempt's span.
    pub fn nested(&self, task: u16, child: u32, attempt: u32, id: &str) -> Option<ExecTrace> {
        let parent = self.span()?.attempt(task, child, attempt);
        let span = TraceContext::execution(parent.trace_id, id, parent.sampled);
        Some(ExecTrace::new(span, Some(parent), &self.tracestate))
    }
}

/// A span's identity in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// Reads a version-00 `traceparent`; `None` for anything else, or for
    /// an all-zero trace or span id (invalid by the W3C specification).
    pub fn parse(traceparent: &str) -> Option<TraceContext> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?;
        let span_id: [u8; 8] = hex(span)?;
        let [flags]: [u8; 1] = hex(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            to_hex(&self.trace_id),
            to_hex(&self.span_id),
            u8::from(self.sampled)
        )
    }

    /// The span id as 16 hex digits.
    pub fn span_hex(&self) -> String {
        to_hex(&self.span_id)
    }

    /// The trace id as 32 hex digits.
    pub fn trace_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// A span of the same trace whose id is a hash of this span's id,
    /// `kind` and `parts`: the same inputs always give the same id.
    pub fn derive(&self, kind: &str, parts: &[u64]) -> TraceContext {
        let mut h = Sha256::new();
        h.update(self.trace_id);
        h.update(self.span_id);
        h.update(kind.as_bytes());
        for p in parts {
            h.update(p.to_le_bytes());
        }
        let digest = h.finalize();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&digest[..8]);
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        TraceContext { span_id, ..*self }
    }

    /// The span of task `task` of the execution whose span this is.
    pub fn task(&self, task: u16) -> TraceContext {
        self.derive("task", &[u64::from(task)])
    }

    /// The span of one attempt of one child (under its task's span).
    pub fn attempt(&self, task: u16, child: u32, attempt: u32) -> TraceContext {
        self.derive(
            "attempt",
            &[u64::from(task), u64::from(child), u64::from(attempt)],
        )
    }

    /// The span of an execution whose trace id is `trace_id`, named by its id.
    pub fn execution(trace_id: [u8; 16], execution_id: &str, sampled: bool) -> TraceContext {
        let mut h = Sha256::new();
        h.update(trace_id);
        h.update(b"execution");
        h.update(execution_id.as_bytes());
        let digest = h.finalize();
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&digest[..8]);
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        TraceContext {
            trace_id,
            span_id,
            sampled,
        }
    }
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_tracestate_loses_entries_from_the_end() {
        let long: Vec<String> = (0..40)
            .map(|i| format!("k{i}={}", "v".repeat(30)))
            .collect();
        let cut = bounded_tracestate(&long.join(","));
        assert!(cut.len() <= TRACESTATE_BYTES_MAX, "{}", cut.len());
        assert!(cut.starts_with("k0="));
        assert!(!cut.ends_with(','));
        assert_eq!(bounded_tracestate("a=1, b=2"), "a=1,b=2");
        assert_eq!(bounded_tracestate(&"x".repeat(600)), "");
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_reads_and_prints_back() {
        let c = TraceContext::parse(TP).unwrap();
        assert!(c.sampled);
        assert_eq!(c.traceparent(), TP);
        assert_eq!(c.span_hex(), "00f067aa0ba902b7");
    }

    #[test]
    fn malformed_or_zero_contexts_are_refused() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn derived_spans_are_stable_distinct_and_in_the_same_trace() {
        let e = TraceContext::parse(TP).unwrap();
        let a1 = e.attempt(0, 7, 1);
        assert_eq!(a1, e.attempt(0, 7, 1));
        assert_eq!(a1.trace_id, e.trace_id);
        let others = [
            e.attempt(0, 7, 2),
            e.attempt(0, 8, 1),
            e.attempt(1, 7, 1),
            e.task(0),
        ];
        for o in others {
            assert_ne!(o.span_id, a1.span_id);
        }
        assert_ne!(
            TraceContext::execution(e.trace_id, "a", true).span_id,
            TraceContext::execution(e.trace_id, "b", true).span_id
        );
    }

    #[test]
    fn a_resumed_execution_gets_a_new_span_under_the_first() {
        let t = ExecTrace::new(TraceContext::parse(TP).unwrap(), None, "k=v");
        let r = t.resumed(1, 42).unwrap();
        let (first, again) = (t.span().unwrap(), r.span().unwrap());
        assert_eq!(again.trace_id, first.trace_id);
        assert_ne!(again.span_id, first.span_id);
        assert_eq!(r.parent_span, first.span_hex());
        assert_eq!((r.tracestate.as_str(), r.started_unix_ms), ("k=v", 42));
        assert_ne!(t.resumed(2, 42).unwrap().traceparent, r.traceparent);
    }
}
