//! A job's place in its execution's trace: the `baton.job` span that joins
//! the dispatch's W3C `traceparent` (the coordinator's span of the child
//! attempt), and the `TRACEPARENT` the child process gets — that span's own
//! context when spans are exported, else the dispatch's as it came.
//!
//! A dispatch without a `traceparent` (the coordinator exports no traces)
//! gets no span at all: nothing is spent on jobs nobody traces.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::model::StartJob;

/// The span of one job, under the dispatch's trace context;
/// [`tracing::Span::none`] when the dispatch carries none.
pub fn span(job: &StartJob) -> tracing::Span {
    let Some(parent) = job
        .traceparent
        .as_deref()
        .and_then(|tp| remote_context(tp, job.tracestate.as_deref().unwrap_or_default()))
    else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        "baton.job",
        execution = %job.dispatch.execution_id,
        task = %job.dispatch.task_path,
        item = job.dispatch.item_index,
        attempt = job.dispatch.attempt,
        package = %job.package.name,
    );
    // Fails only when no OpenTelemetry layer is installed: the child then
    // gets the dispatch's context (see `child_traceparent`).
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    span
}

/// The `TRACEPARENT` for the job's process: `span`'s context when it is
/// exported, else `dispatch`'s (so the child still joins the trace).
pub fn child_traceparent(span: &tracing::Span, dispatch: Option<&str>) -> Option<String> {
    if !span.is_none() {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            return Some(format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            ));
        }
    }
    dispatch.map(str::to_string)
}

/// A remote span context from a version-00 `traceparent`, `None` if malformed.
fn remote_context(traceparent: &str, tracestate: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = tracestate.parse::<TraceState>().unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_dispatch_context_reads_and_bad_ones_do_not() {
        let sc = remote_context(TP, "k=v").unwrap();
        assert_eq!(
            format!("{}", sc.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{}", sc.span_id()), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_state().get("k"), Some("v"));
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(remote_context(bad, "").is_none(), "{bad}");
        }
    }

    #[test]
    fn without_an_exporter_the_child_gets_the_dispatch_context() {
        // No OpenTelemetry layer in unit tests: the span has no context of its own.
        let span = tracing::Span::none();
        assert_eq!(child_traceparent(&span, Some(TP)).as_deref(), Some(TP));
        assert_eq!(child_traceparent(&span, None), None);
    }
}
