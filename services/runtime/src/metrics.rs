//! A small Prometheus text-format registry: counters, gauges and
//! histograms by name and labels.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

type Key = (&'static str, Vec<(&'static str, String)>);

fn registry() -> &'static Mutex<BTreeMap<Key, f64>> {
    static R: OnceLock<Mutex<BTreeMap<Key, f64>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Adds `by` to a counter.
pub fn add(name: &'static str, labels: &[(&'static str, &str)], by: f64) {
    let key = (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    );
    if let Ok(mut r) = registry().lock() {
        *r.entry(key).or_insert(0.0) += by;
    }
}

pub fn inc(name: &'static str, labels: &[(&'static str, &str)]) {
    add(name, labels, 1.0);
}

/// Sets a gauge.
pub fn set(name: &'static str, labels: &[(&'static str, &str)], value: f64) {
    let key = (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    );
    if let Ok(mut r) = registry().lock() {
        r.insert(key, value);
    }
}

/// Upper bounds of histogram buckets, in seconds: a webhook's milliseconds
/// to a deploy's minutes.
pub const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Per-bucket counts (not cumulative), sum and count of one series.
#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

fn histograms() -> &'static Mutex<BTreeMap<Key, Histogram>> {
    static H: OnceLock<Mutex<BTreeMap<Key, Histogram>>> = OnceLock::new();
    H.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Records one observation (seconds) in a histogram.
pub fn observe(name: &'static str, labels: &[(&'static str, &str)], value: f64) {
    let key = (
        name,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    );
    if let Ok(mut h) = histograms().lock() {
        let h = h.entry(key).or_default();
        if let Some(i) = BUCKETS.iter().position(|le| value <= *le) {
            h.buckets[i] += 1;
        }
        h.sum += value;
        h.count += 1;
    }
}

fn write_labels(out: &mut String, labels: &[(&'static str, String)], le: Option<&str>) {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if !parts.is_empty() {
        let _ = write!(out, "{{{}}}", parts.join(","));
    }
}

/// The registry in Prometheus text exposition format.
pub fn render() -> String {
    let mut out = render_scalars();
    let Ok(h) = histograms().lock() else {
        return out;
    };
    let mut last = "";
    for ((name, labels), series) in h.iter() {
        if *name != last {
            let _ = writeln!(out, "# TYPE {name} histogram");
            last = name;
        }
        let mut cumulative = 0;
        for (le, n) in BUCKETS.iter().zip(series.buckets) {
            cumulative += n;
            let _ = write!(out, "{name}_bucket");
            write_labels(&mut out, labels, Some(&le.to_string()));
            let _ = writeln!(out, " {cumulative}");
        }
        let _ = write!(out, "{name}_bucket");
        write_labels(&mut out, labels, Some("+Inf"));
        let _ = writeln!(out, " {}", series.count);
        let _ = write!(out, "{name}_sum");
        write_labels(&mut out, labels, None);
        let _ = writeln!(out, " {}", series.sum);
        let _ = write!(out, "{name}_count");
        write_labels(&mut out, labels, None);
        let _ = writeln!(out, " {}", series.count);
    }
    out
}

fn render_scalars() -> String {
    let mut out = String::new();
    let Ok(r) = registry().lock() else {
        return out;
    };
    let mut last = "";
    for ((name, labels), value) in r.iter() {
        if *name != last {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            last = name;
        }
        let _ = write!(out, "{name}");
        write_labels(&mut out, labels, None);
        let _ = writeln!(out, " {value}");
    }
    out
}

/// A worker whose every event's handling is timed into
/// `gantry_step_duration_seconds{handler, outcome}` (the step it does:
/// package, image, deploy and readiness, API Manager, smoke; the conductor)
/// and traced as a span of the run ([`crate::traces`]).
pub struct Timed(pub std::sync::Arc<dyn gantry_store::consumer::Handler>);

#[async_trait::async_trait]
impl gantry_store::consumer::Handler for Timed {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn events(&self) -> &'static [gantry_proto::EventName] {
        self.0.events()
    }

    async fn handle(
        &self,
        event: &gantry_proto::CloudEvent,
    ) -> Result<Vec<gantry_store::NewEvents>, gantry_store::consumer::HandlerError> {
        use tracing::Instrument as _;
        // The event's handling is a span of the run's trace, continued from
        // the event's `traceparent`; what it records carries its own.
        let span = tracing::info_span!(
            "step",
            handler = self.0.name(),
            event = %event.ty,
            pipeline = %event.pipeline,
            run = event.runid.as_deref().unwrap_or_default(),
        );
        crate::traces::continue_trace(&span, event.traceparent.as_deref());
        let started = std::time::Instant::now();
        let mut result = self.0.handle(event).instrument(span.clone()).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        observe(
            "gantry_step_duration_seconds",
            &[("handler", self.0.name()), ("outcome", outcome)],
            started.elapsed().as_secs_f64(),
        );
        if let (Ok(batches), Some(traceparent)) = (
            &mut result,
            span.in_scope(crate::traces::current_traceparent),
        ) {
            for recorded in batches.iter_mut().flat_map(|b| b.events.iter_mut()) {
                recorded.traceparent = Some(traceparent.clone());
            }
        }
        result
    }

    async fn gave_up(
        &self,
        event: &gantry_proto::CloudEvent,
        error: &str,
    ) -> Result<Vec<gantry_store::NewEvents>, gantry_store::consumer::HandlerError> {
        self.0.gave_up(event, error).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_prometheus_text() {
        super::inc("gantry_test_total", &[("kind", "a\"b")]);
        super::set("gantry_test_gauge", &[], 3.0);
        let text = super::render();
        assert!(text.contains("# TYPE gantry_test_total counter"));
        assert!(text.contains("gantry_test_total{kind=\"a\\\"b\"} 1"));
        assert!(text.contains("gantry_test_gauge 3"));
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        super::observe("gantry_test_seconds", &[("step", "x")], 0.3);
        super::observe("gantry_test_seconds", &[("step", "x")], 7.0);
        super::observe("gantry_test_seconds", &[("step", "x")], 9_999.0);
        let text = super::render();
        assert!(
            text.contains("# TYPE gantry_test_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("gantry_test_seconds_bucket{step=\"x\",le=\"0.25\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("gantry_test_seconds_bucket{step=\"x\",le=\"0.5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gantry_test_seconds_bucket{step=\"x\",le=\"10\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("gantry_test_seconds_bucket{step=\"x\",le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("gantry_test_seconds_count{step=\"x\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("gantry_test_seconds_sum{step=\"x\"} 10006.3"),
            "{text}"
        );
    }
}
