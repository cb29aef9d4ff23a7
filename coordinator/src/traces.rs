//! The coordinator's spans, exported through the process's OpenTelemetry
//! tracer provider (installed by the `baton` command when an OTLP endpoint
//! is configured; without one, no execution gets a trace context and
//! nothing here runs).
//!
//! One trace per execution. Its spans are made from the scheduler's
//! [`TraceEvent`]s, after the batch that caused them is durable, with the
//! times the scheduler read:
//!
//! - `baton.execution`: from the start of the execution to its end, under
//!   the caller's request span (`baton.start_execution`, itself under the
//!   CLI's or the caller's `traceparent`);
//! - `baton.task`: one per task that made children, under the execution,
//!   from its first child's dispatch to its last child's end;
//! - `baton.child`: one per child attempt (attribute `baton.attempt`; a
//!   retry or a re-run after an agent was lost is a new attempt, a new
//!   span), under its task, with an event per state (dispatching to an
//!   agent, accepted, running, back to pending) and the completion recorded;
//! - `baton.dispatch`: each StartJob call for an attempt, with its answer
//!   (`accepted`, `rejected` and why, or no answer), under the attempt;
//! - `baton.store.commit`: each store commit that wrote records of the
//!   execution, under it.
//!
//! The span ids of executions, tasks and attempts are derived
//! ([`crate::trace_context`]) so that the scheduler can put an attempt's
//! context in its dispatch before the span exists; [`Ids`] is the id
//! generator that lets a span be made under an id chosen here. The agent's
//! `baton.job` span joins the dispatch's context, and the child process gets
//! it as `TRACEPARENT`.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::records::Phase;
use crate::scheduler::{DispatchOutcome, TraceEvent};
use crate::trace_context::{ExecTrace, TraceContext};

/// The instrumentation scope of the coordinator's spans.
const SCOPE: &str = "baton-coordinator";

thread_local! {
    /// The ids the next span made on this thread gets (see [`Ids`]).
    static NEXT_IDS: Cell<Option<([u8; 16], [u8; 8])>> = const { Cell::new(None) };
}

/// The tracer provider's id generator: random ids, except for a span made
/// by this module under ids it chose (an execution's, a task's, an
/// attempt's). Install it with `SdkTracerProvider::builder().with_id_generator(Ids::default())`.
#[derive(Debug, Default)]
pub struct Ids(RandomIdGenerator);

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.with(Cell::get) {
            Some((trace, _)) => TraceId::from_bytes(trace),
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match NEXT_IDS.with(Cell::get) {
            Some((_, span)) => SpanId::from_bytes(span),
            None => self.0.new_span_id(),
        }
    }
}

/// Most events kept on one attempt's span.
const EVENTS_PER_ATTEMPT_MAX: usize = 128;
/// Most bytes of a reason put on a span.
const REASON_BYTES_MAX: usize = 512;

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
    s
}

/// The span of a gRPC call that may start an execution, under the caller's
/// `traceparent` / `tracestate` metadata when it sent them.
pub fn request_span(name: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    let span = tracing::info_span!("baton.request", otel.name = name, rpc.method = name);
    if let Some(parent) = metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
    {
        let state = metadata
            .get("tracestate")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let _ = span.set_parent(Context::new().with_remote_span_context(remote(parent, state)));
    }
    span
}

/// The trace context of a new execution `id`, under the current span (the
/// request's); `None` when no span is exported (no OTLP endpoint).
pub fn exec_trace(id: &str) -> Option<ExecTrace> {
    let current = tracing::Span::current();
    if current.is_none() {
        return None;
    }
    let cx = current.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let parent = TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    };
    let span = TraceContext::execution(parent.trace_id, id, parent.sampled);
    Some(ExecTrace::new(
        span,
        Some(parent),
        &sc.trace_state().header(),
    ))
}

fn remote(c: TraceContext, state: TraceState) -> SpanContext {
    let flags = if c.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(
        TraceId::from_bytes(c.trace_id),
        SpanId::from_bytes(c.span_id),
        flags,
        true,
        state,
    )
}

fn time(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}

/// One span, made now with the times and ids given.
struct Made {
    name: &'static str,
    id: TraceContext,
    /// The parent span's id (same trace); `None` for a root.
    parent: Option<[u8; 8]>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    events: Vec<(SystemTime, String, Vec<KeyValue>)>,
    status: Status,
}

fn emit(m: Made) {
    let tracer = opentelemetry::global::tracer(SCOPE);
    let parent_cx = match m.parent {
        Some(p) => Context::new().with_remote_span_context(remote(
            TraceContext { span_id: p, ..m.id },
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let builder = tracer
        .span_builder(m.name)
        .with_kind(SpanKind::Internal)
        .with_start_time(m.start)
        .with_attributes(m.attributes);
    NEXT_IDS.with(|n| n.set(Some((m.id.trace_id, m.id.span_id))));
    let mut span = builder.start_with_context(&tracer, &parent_cx);
    NEXT_IDS.with(|n| n.set(None));
    for (at, name, attrs) in m.events {
        span.add_event_with_timestamp(name, at, attrs);
    }
    span.set_status(m.status);
    span.end_with_timestamp(m.end);
}

/// The span of one StartJob call for an attempt (`traceparent`: the
/// attempt's, from the request); `None` when the request carries none.
pub fn dispatch_span(traceparent: &str, agent: &str) -> Option<opentelemetry::global::BoxedSpan> {
    let attempt = TraceContext::parse(traceparent)?;
    let tracer = opentelemetry::global::tracer(SCOPE);
    let cx = Context::new().with_remote_span_context(remote(attempt, TraceState::default()));
    Some(
        tracer
            .span_builder("baton.dispatch")
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("baton.agent", agent.to_string())])
            .start_with_context(&tracer, &cx),
    )
}

/// Ends a [`dispatch_span`] with the call's answer.
pub fn end_dispatch(mut span: opentelemetry::global::BoxedSpan, outcome: &DispatchOutcome) {
    let (answer, reason) = match outcome {
        DispatchOutcome::Accepted => ("accepted", String::new()),
        DispatchOutcome::Rejected { code, reason } => {
            ("rejected", format!("{}: {reason}", code.as_str_name()))
        }
        DispatchOutcome::Unknown(r) => ("no answer", r.clone()),
        DispatchOutcome::WrongAgent(r) => ("wrong agent", r.clone()),
    };
    span.set_attribute(KeyValue::new("baton.dispatch.outcome", answer));
    if !reason.is_empty() {
        span.set_attribute(KeyValue::new("baton.dispatch.reason", reason.clone()));
    }
    if !matches!(outcome, DispatchOutcome::Accepted) {
        span.set_status(Status::error(format!("{answer}: {reason}")));
    }
    span.end();
}

/// An attempt whose span is open (its end not seen yet).
struct OpenAttempt {
    attempt: u32,
    start_ms: u64,
    agent: Option<String>,
    events: Vec<(SystemTime, String, Vec<KeyValue>)>,
}

/// A task's span, as far as its children have shown it.
struct TaskTimes {
    name: String,
    first_ms: u64,
    last_ms: u64,
}

/// What is open of one execution's trace.
#[derive(Default)]
struct ExecSpans {
    execution_id: String,
    tasks: BTreeMap<u16, TaskTimes>,
    attempts: HashMap<(u16, u32), OpenAttempt>,
}

/// The span exporter's memory: for each traced execution running, its
/// tasks' times and its open attempts (empty when nothing is traced).
#[derive(Default)]
pub struct Traces {
    execs: HashMap<String, ExecSpans>,
}

impl Traces {
    /// Turns one event into spans (or into what a later span will hold).
    pub fn record(&mut self, event: TraceEvent) {
        match event {
            TraceEvent::Child {
                exec,
                execution_id,
                task,
                task_name,
                child,
                old_attempt,
                attempt,
                old_phase,
                phase,
                agent,
                reason,
                unix_ms,
            } => {
                let Some(ctx) = TraceContext::parse(&exec) else {
                    return;
                };
                let spans = self.execs.entry(exec).or_default();
                spans.execution_id = execution_id.clone();
                let key = (task, child);
                let ends = phase.is_terminal() || old_attempt != attempt;
                if ends
                    && let Some(open) = spans.attempts.remove(&key)
                    && open.attempt == old_attempt
                {
                    let status = match phase {
                        Phase::Succeeded if old_attempt == attempt => Status::Ok,
                        _ if old_attempt != attempt => {
                            Status::error(format!("attempt {old_attempt} ended: {reason}"))
                        }
                        p => Status::error(format!("{}: {reason}", p.as_str())),
                    };
                    let mut events = open.events;
                    events.push((
                        time(unix_ms),
                        "completion recorded".to_string(),
                        vec![KeyValue::new("baton.state", phase.as_str())],
                    ));
                    emit(Made {
                        name: "baton.child",
                        id: ctx.attempt(task, child, old_attempt),
                        parent: Some(ctx.task(task).span_id),
                        start: time(open.start_ms),
                        end: time(unix_ms),
                        attributes: attempt_attributes(
                            &execution_id,
                            &task_name,
                            child,
                            old_attempt,
                            open.agent.as_deref(),
                            // Ended by a retry (a failure, a timeout, a lost
                            // agent: the reason says which) or by the child's end.
                            if old_attempt != attempt {
                                "retried"
                            } else {
                                phase.as_str()
                            },
                        ),
                        events,
                        status,
                    });
                }
                if phase.is_on_agent() || (phase == Phase::Pending && old_phase.is_on_agent()) {
                    let open = spans.attempts.entry(key).or_insert_with(|| OpenAttempt {
                        attempt,
                        start_ms: unix_ms,
                        agent: None,
                        events: Vec::new(),
                    });
                    if agent.is_some() {
                        open.agent.clone_from(&agent);
                    }
                    let mut attrs = Vec::new();
                    if let Some(a) = agent {
                        attrs.push(KeyValue::new("baton.agent", a));
                    }
                    if !reason.is_empty() && phase == Phase::Pending {
                        attrs.push(KeyValue::new("baton.reason", cut(reason, REASON_BYTES_MAX)));
                    }
                    // A child turned away again and again keeps one attempt:
                    // its events are bounded (the SDK exports 128 per span).
                    if open.events.len() < EVENTS_PER_ATTEMPT_MAX {
                        open.events
                            .push((time(unix_ms), phase.as_str().to_string(), attrs));
                    }
                }
                let t = spans.tasks.entry(task).or_insert_with(|| TaskTimes {
                    name: task_name,
                    first_ms: unix_ms,
                    last_ms: unix_ms,
                });
                t.first_ms = t.first_ms.min(unix_ms);
                t.last_ms = t.last_ms.max(unix_ms);
            }
            TraceEvent::Execution {
                trace,
                execution_id,
                package,
                state,
                reason,
                started_unix_ms,
                ended_unix_ms,
            } => {
                let Some(ctx) = trace.span() else { return };
                let spans = self.execs.remove(&trace.traceparent).unwrap_or_default();
                // Attempts still open (their end was not seen): ended with it.
                for ((task, child), open) in spans.attempts {
                    let name = spans
                        .tasks
                        .get(&task)
                        .map(|t| t.name.clone())
                        .unwrap_or_default();
                    emit(Made {
                        name: "baton.child",
                        id: ctx.attempt(task, child, open.attempt),
                        parent: Some(ctx.task(task).span_id),
                        start: time(open.start_ms),
                        end: time(ended_unix_ms),
                        attributes: attempt_attributes(
                            &execution_id,
                            &name,
                            child,
                            open.attempt,
                            open.agent.as_deref(),
                            "unknown",
                        ),
                        events: open.events,
                        status: Status::error("its end was not seen"),
                    });
                }
                for (index, t) in spans.tasks {
                    emit(Made {
                        name: "baton.task",
                        id: ctx.task(index),
                        parent: Some(ctx.span_id),
                        start: time(t.first_ms),
                        end: time(t.last_ms),
                        attributes: vec![
                            KeyValue::new("baton.execution", execution_id.clone()),
                            KeyValue::new("baton.task", t.name),
                            KeyValue::new("baton.task.index", i64::from(index)),
                        ],
                        events: Vec::new(),
                        status: Status::Unset,
                    });
                }
                let parent = TraceContext::parse(&format!(
                    "00-{}-{}-01",
                    ctx.trace_hex(),
                    trace.parent_span
                ))
                .map(|p| p.span_id);
                emit(Made {
                    name: "baton.execution",
                    id: ctx,
                    parent,
                    start: time(started_unix_ms),
                    end: time(ended_unix_ms.max(started_unix_ms)),
                    attributes: vec![
                        KeyValue::new("baton.execution", execution_id),
                        KeyValue::new("baton.package", package),
                        KeyValue::new("baton.state", state),
                    ],
                    events: Vec::new(),
                    status: if state == "succeeded" {
                        Status::Ok
                    } else {
                        Status::error(format!("{state}: {reason}"))
                    },
                });
            }
            TraceEvent::Commit {
                execs,
                records,
                unix_ms,
            } => {
                let now = SystemTime::now();
                for exec in execs {
                    let Some(ctx) = TraceContext::parse(&exec) else {
                        continue;
                    };
                    let tracer = opentelemetry::global::tracer(SCOPE);
                    let cx =
                        Context::new().with_remote_span_context(remote(ctx, TraceState::default()));
                    let mut span = tracer
                        .span_builder("baton.store.commit")
                        .with_kind(SpanKind::Internal)
                        .with_start_time(time(unix_ms).min(now))
                        .with_attributes([KeyValue::new(
                            "baton.store.records",
                            i64::try_from(records).unwrap_or(i64::MAX),
                        )])
                        .start_with_context(&tracer, &cx);
                    span.end_with_timestamp(now);
                }
            }
        }
    }
}

fn attempt_attributes(
    execution_id: &str,
    task: &str,
    child: u32,
    attempt: u32,
    agent: Option<&str>,
    state: &'static str,
) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new("baton.execution", execution_id.to_string()),
        KeyValue::new("baton.task", task.to_string()),
        KeyValue::new("baton.item", i64::from(child)),
        KeyValue::new("baton.attempt", i64::from(attempt)),
        KeyValue::new("baton.state", state),
    ];
    if let Some(agent) = agent {
        a.push(KeyValue::new("baton.agent", agent.to_string()));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_unless_chosen_for_the_next_span() {
        let ids = Ids::default();
        assert_ne!(ids.new_span_id(), ids.new_span_id());
        NEXT_IDS.with(|n| n.set(Some(([7; 16], [9; 8]))));
        assert_eq!(ids.new_trace_id(), TraceId::from_bytes([7; 16]));
        assert_eq!(ids.new_span_id(), SpanId::from_bytes([9; 8]));
        NEXT_IDS.with(|n| n.set(None));
        assert_ne!(ids.new_span_id(), SpanId::from_bytes([9; 8]));
    }

    #[test]
    fn without_an_exporter_no_execution_gets_a_trace() {
        let span = tracing::info_span!("x");
        let _in = span.enter();
        assert_eq!(exec_trace("e1"), None);
    }
}
