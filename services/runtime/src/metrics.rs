//! A small Prometheus text-format registry: counters and gauges by name and labels.

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

/// The registry in Prometheus text exposition format.
pub fn render() -> String {
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
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let _ = write!(out, "{{{}}}", parts.join(","));
        }
        let _ = writeln!(out, " {value}");
    }
    out
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
}
