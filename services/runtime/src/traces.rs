//! OpenTelemetry traces (DESIGN.md 1.9): with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, every process exports its
//! spans over OTLP/HTTP, `http/protobuf` or, with
//! `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`, JSON.
//!
//! A run is one trace: starting it opens the root span and its first events
//! carry that span's W3C `traceparent`; each worker's handling of an event
//! is a span whose parent is the event's `traceparent`, and the events it
//! records carry its own. So the trace follows the run across processes and
//! NATS hops, because the trace context travels in the events themselves.
//! Without the variables nothing is exported and no event gets a
//! `traceparent`.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether the OpenTelemetry variables ask for traces.
pub fn wanted() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The tracing layer that exports spans, when [`wanted`]; `service` names
/// this process (`service.name`, unless `OTEL_SERVICE_NAME` says).
pub fn layer<S>(service: &str) -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !wanted() {
        return None;
    }
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
        .map(str::trim)
    {
        Ok("http/json") => Protocol::HttpJson,
        Ok("http/protobuf") | Err(_) => Protocol::HttpBinary,
        Ok(other) => {
            eprintln!("warning: OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported (http/protobuf or http/json); using http/protobuf");
            Protocol::HttpBinary
        }
    };
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_http_client(BlockingHttp::default())
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("warning: OTLP traces are off: {e}");
            return None;
        }
    };
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build();
    let tracer = provider.tracer("gantry");
    let _ = PROVIDER.set(provider);
    Some(Box::new(tracing_opentelemetry::layer().with_tracer(tracer)))
}

/// Exports what is left; call before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// The W3C `traceparent` of the current span, when traces are exported.
pub fn current_traceparent() -> Option<String> {
    PROVIDER.get()?;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Starts the trace of run `run_id`: a root span (a new trace, whatever
/// the request it came in on), whose `traceparent` the run's first events
/// carry. `None` when traces are off.
pub fn start_run_trace(pipeline: &str, run_id: &str) -> Option<String> {
    PROVIDER.get()?;
    let span = tracing::info_span!("run", pipeline = %pipeline, run = %run_id);
    let _ = span.set_parent(opentelemetry::Context::new());
    span.in_scope(current_traceparent)
}

/// Makes `span` a child of the span `traceparent` names (another
/// process's, carried by an event).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent.filter(|_| PROVIDER.get().is_some()) else {
        return;
    };
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

/// The OTLP exporter's HTTP client: the batch exporter sends from its own
/// thread, outside the async runtime, so a blocking client (made there on
/// first use) with Gantry's rustls.
#[derive(Debug, Default)]
struct BlockingHttp {
    client: OnceLock<reqwest::blocking::Client>,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for BlockingHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.get_or_init(|| {
            reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default()
        });
        let (parts, body) = request.into_parts();
        let mut outgoing = client
            .request(parts.method, parts.uri.to_string())
            .body(body.to_vec());
        for (name, value) in &parts.headers {
            outgoing = outgoing.header(name, value);
        }
        let answer = outgoing.send()?;
        let mut response = http::Response::builder().status(answer.status());
        for (name, value) in answer.headers() {
            response = response.header(name, value);
        }
        let bytes = answer.bytes()?;
        Ok(response.body(bytes)?)
    }
}
