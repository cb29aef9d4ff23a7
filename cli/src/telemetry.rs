//! Logs and traces of the process: the `tracing` subscriber (log lines on
//! stderr, `--log-format text|json`), and, with `--otlp-endpoint URL` (or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), an OpenTelemetry layer that exports
//! Baton's spans over OTLP/gRPC under the service name of the command
//! (`baton-coordinator`, `baton-agent`, `baton-cli`).
//!
//! Without an endpoint no OpenTelemetry layer is installed: nothing is
//! recorded, no execution gets a trace context, and dispatches carry none.
//! With one, each log line also names the trace and span it belongs to.
//! [`Telemetry::shutdown`] flushes the spans still buffered at exit.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The installed exporter, if any: shut it down at exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// The W3C `traceparent` of the current span, when spans are exported.
pub fn current_traceparent() -> Option<String> {
    let span = tracing::Span::current();
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Installs the subscriber. `endpoint`: the OTLP/gRPC collector, or none;
/// must be called inside a Tokio runtime when there is one (the exporter's
/// connection lives on it).
pub fn init(
    default_filter: &str,
    format: LogFormat,
    endpoint: Option<&str>,
    service: &'static str,
) -> Result<Telemetry, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let provider = match endpoint.filter(|e| !e.trim().is_empty()) {
        Some(url) => Some(provider(url, service)?),
        None => None,
    };
    let cell = DispatchCell::default();
    let ids = provider.is_some().then(|| cell.clone());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let fmt_layer = match format {
        // Colour codes only for a person at a terminal (and not under
        // NO_COLOR): a log collector or a file gets plain text.
        LogFormat::Text => fmt
            .with_ansi(ansi)
            .event_format(WithIds {
                inner: tracing_subscriber::fmt::format()
                    .with_target(false)
                    .with_ansi(ansi),
                ids: ids.clone(),
                json: false,
            })
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .event_format(WithIds {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .with_target(false)
                    .with_current_span(true)
                    .with_span_list(false),
                ids: ids.clone(),
                json: true,
            })
            .boxed(),
    }
    .with_filter(filter);
    // Baton's own spans only (not the HTTP/2 stack's, nor the exporter's).
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("baton", tracing::Level::INFO),
            )
    });
    // Registered sees the subscriber once it is made, and nothing else (its
    // filter is off: it changes no callsite's interest). No `Option` layer:
    // a `None` one would not pass the subscriber on, and would turn the
    // callsites the log filter disables into ones asked about at each call.
    let registry = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(Registered(cell).with_filter(tracing_subscriber::filter::LevelFilter::OFF));
    let _ = match otel_layer {
        Some(otel) => registry.with(otel).try_init(),
        None => registry.try_init(),
    };
    Ok(Telemetry { provider })
}

fn provider(url: &str, service: &'static str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("cannot make the OTLP exporter for {url}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(baton_coordinator::traces::Ids::default())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still buffered and stops the exporter. Blocks: call it
    /// off the runtime's worker threads (`spawn_blocking`).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("warning: traces not all sent: {e}");
        }
    }
}

/// A log line's format with, when spans are exported, the ids of the trace
/// and span it was written in (`trace_id=… span_id=…` first in text; the
/// `trace_id` and `span_id` keys in JSON).
struct WithIds<F> {
    inner: F,
    /// The subscriber, to read the OpenTelemetry context of a line's span
    /// (`None`: spans are not exported, lines are as they were).
    ids: Option<DispatchCell>,
    json: bool,
}

/// The process's subscriber, once it is registered: a formatter cannot ask
/// for the current dispatcher while the dispatcher is calling it.
#[derive(Clone, Default)]
struct DispatchCell(std::sync::Arc<std::sync::OnceLock<tracing::dispatcher::WeakDispatch>>);

/// A layer that only fills a [`DispatchCell`] when the subscriber is made.
struct Registered(DispatchCell);

impl<S: tracing::Subscriber> Layer<S> for Registered {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.0.0.set(subscriber.downgrade());
    }
}

impl<S, N, F> FormatEvent<S, N> for WithIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = self.ids.as_ref().and_then(|cell| {
            let dispatch = cell.0.get()?.upgrade()?;
            let id = ctx.lookup_current()?.id();
            let cx = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
            let sc = cx.span().span_context().clone();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        });
        let Some((trace, span)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "trace_id={trace} span_id={span} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace}\",\"span_id\":\"{span}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The current span's trace and span ids, if it is exported.
    fn current_ids() -> Option<(String, String)> {
        let span = tracing::Span::current();
        if span.is_none() {
            return None;
        }
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid()
            .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
    }

    /// A log line's writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs one line inside an exported span with the format given; returns
    /// the line and the span's (trace id, span id).
    fn line_in_span(json: bool) -> (String, String, String) {
        let provider = SdkTracerProvider::builder().build();
        let buf = Buf::default();
        let writer = {
            let buf = buf.clone();
            move || buf.clone()
        };
        let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let cell = DispatchCell::default();
        let ids = |layer| {
            tracing_subscriber::registry().with(otel).with(layer).with(
                Registered(cell.clone()).with_filter(tracing_subscriber::filter::LevelFilter::OFF),
            )
        };
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false);
        let body = || {
            let span = tracing::info_span!("work");
            let _in = span.enter();
            tracing::info!(n = 1, "inside");
            current_ids().expect("the span is exported")
        };
        let (trace, span_id) = if json {
            tracing::subscriber::with_default(
                ids(fmt
                    .json()
                    .event_format(WithIds {
                        inner: tracing_subscriber::fmt::format()
                            .json()
                            .with_current_span(true)
                            .with_span_list(false),
                        ids: Some(cell.clone()),
                        json: true,
                    })
                    .boxed()),
                body,
            )
        } else {
            tracing::subscriber::with_default(
                ids(fmt
                    .event_format(WithIds {
                        inner: tracing_subscriber::fmt::format().with_ansi(false),
                        ids: Some(cell.clone()),
                        json: false,
                    })
                    .boxed()),
                body,
            )
        };
        let line = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (line, trace, span_id)
    }

    #[test]
    fn log_lines_in_an_exported_span_name_its_trace_and_span() {
        let (line, trace, span) = line_in_span(false);
        assert!(
            line.starts_with(&format!("trace_id={trace} span_id={span} ")),
            "{line}"
        );
        assert!(line.contains("inside"), "{line}");
        let (line, trace, span) = line_in_span(true);
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
        assert_eq!(v["trace_id"], trace.as_str(), "{line}");
        assert_eq!(v["span_id"], span.as_str(), "{line}");
        assert_eq!(v["fields"]["message"], "inside", "{line}");
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported() {
        let t = init("warn", LogFormat::Text, None, "baton-cli").unwrap();
        assert!(!t.exporting());
        assert_eq!(current_traceparent(), None);
        t.shutdown();
    }
}
