//! Metric families with labels and their text rendering.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

/// Request latency buckets, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

type Labels = Vec<String>;

struct Meta {
    name: String,
    help: String,
    labels: Vec<String>,
}

enum Kind {
    Counter(Mutex<BTreeMap<Labels, u64>>),
    Gauge(Mutex<BTreeMap<Labels, f64>>),
    Histogram {
        buckets: Vec<f64>,
        series: Mutex<BTreeMap<Labels, HistSeries>>,
    },
}

#[derive(Clone, Default)]
struct HistSeries {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

struct Family {
    meta: Meta,
    kind: Kind,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(family: &Family, values: &[&str]) -> Labels {
    // A wrong label count is a programming error; pad or cut instead of
    // panicking in a request path.
    (0..family.meta.labels.len())
        .map(|i| values.get(i).copied().unwrap_or("").to_string())
        .collect()
}

/// All metrics of a process.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Arc<Family>>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, name: &str, help: &str, labels: &[&str], kind: Kind) -> Arc<Family> {
        let f = Arc::new(Family {
            meta: Meta {
                name: name.to_string(),
                help: help.to_string(),
                labels: labels.iter().map(|s| s.to_string()).collect(),
            },
            kind,
        });
        lock(&self.families).push(f.clone());
        f
    }

    /// A counter family with these label names.
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> Counter {
        Counter(self.add(name, help, labels, Kind::Counter(Mutex::default())))
    }

    /// A gauge family with these label names.
    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> Gauge {
        Gauge(self.add(name, help, labels, Kind::Gauge(Mutex::default())))
    }

    /// A histogram family with these label names and bucket upper bounds.
    pub fn histogram(&self, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> Histogram {
        Histogram(self.add(
            name,
            help,
            labels,
            Kind::Histogram {
                buckets: buckets.to_vec(),
                series: Mutex::default(),
            },
        ))
    }

    /// Every metric in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let families: Vec<Arc<Family>> = lock(&self.families).clone();
        let mut out = String::new();
        for f in families {
            let m = &f.meta;
            let kind = match f.kind {
                Kind::Counter(_) => "counter",
                Kind::Gauge(_) => "gauge",
                Kind::Histogram { .. } => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", m.name, escape_help(&m.help));
            let _ = writeln!(out, "# TYPE {} {kind}", m.name);
            match &f.kind {
                Kind::Counter(s) => {
                    for (l, v) in lock(s).iter() {
                        let _ = writeln!(out, "{}{} {v}", m.name, labels(&m.labels, l, None));
                    }
                }
                Kind::Gauge(s) => {
                    for (l, v) in lock(s).iter() {
                        let _ = writeln!(
                            out,
                            "{}{} {}",
                            m.name,
                            labels(&m.labels, l, None),
                            float(*v)
                        );
                    }
                }
                Kind::Histogram { buckets, series } => {
                    for (l, h) in lock(series).iter() {
                        let mut cum = 0;
                        for (i, b) in buckets.iter().enumerate() {
                            cum += h.counts.get(i).copied().unwrap_or(0);
                            let le = float(*b);
                            let _ = writeln!(
                                out,
                                "{}_bucket{} {cum}",
                                m.name,
                                labels(&m.labels, l, Some(&le))
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {}",
                            m.name,
                            labels(&m.labels, l, Some("+Inf")),
                            h.count
                        );
                        let ls = labels(&m.labels, l, None);
                        let _ = writeln!(out, "{}_sum{ls} {}", m.name, float(h.sum));
                        let _ = writeln!(out, "{}_count{ls} {}", m.name, h.count);
                    }
                }
            }
        }
        out
    }
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(names: &[String], values: &[String], le: Option<&str>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape_value(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A monotonically increasing count.
#[derive(Clone)]
pub struct Counter(Arc<Family>);

impl Counter {
    /// Adds `n` to the series with these label values.
    pub fn add(&self, values: &[&str], n: u64) {
        if let Kind::Counter(s) = &self.0.kind {
            *lock(s).entry(key(&self.0, values)).or_insert(0) += n;
        }
    }
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1)
    }
    /// Current value (0 when the series does not exist yet).
    pub fn get(&self, values: &[&str]) -> u64 {
        match &self.0.kind {
            Kind::Counter(s) => lock(s).get(&key(&self.0, values)).copied().unwrap_or(0),
            _ => 0,
        }
    }
}

/// A value that goes up and down.
#[derive(Clone)]
pub struct Gauge(Arc<Family>);

impl Gauge {
    pub fn set(&self, values: &[&str], v: f64) {
        if let Kind::Gauge(s) = &self.0.kind {
            lock(s).insert(key(&self.0, values), v);
        }
    }
    /// Replaces every series at once (e.g. node counts by state).
    pub fn set_all(&self, series: &[(&[&str], f64)]) {
        if let Kind::Gauge(s) = &self.0.kind {
            let mut map = lock(s);
            map.clear();
            for (values, v) in series {
                map.insert(key(&self.0, values), *v);
            }
        }
    }
}

/// A distribution of observations in buckets.
#[derive(Clone)]
pub struct Histogram(Arc<Family>);

impl Histogram {
    pub fn observe(&self, values: &[&str], v: f64) {
        if let Kind::Histogram { buckets, series } = &self.0.kind {
            let mut map = lock(series);
            let h = map.entry(key(&self.0, values)).or_default();
            if h.counts.len() != buckets.len() {
                h.counts = vec![0; buckets.len()];
            }
            if let Some(i) = buckets.iter().position(|b| v <= *b) {
                h.counts[i] += 1;
            }
            h.sum += v;
            h.count += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let r = Registry::new();
        let c = r.counter("tessera_x_requests_total", "Requests.", &["op", "status"]);
        c.inc(&["GetObject", "200"]);
        c.add(&["GetObject", "200"], 2);
        c.inc(&["Put\"x", "500"]);
        let g = r.gauge("tessera_x_used_bytes", "Used.", &[]);
        g.set(&[], 1.5);
        let h = r.histogram("tessera_x_seconds", "Latency.", &["op"], &[0.1, 1.0]);
        h.observe(&["a"], 0.05);
        h.observe(&["a"], 0.5);
        h.observe(&["a"], 5.0);
        let text = r.render();
        assert!(text.contains("# TYPE tessera_x_requests_total counter\n"));
        assert!(text.contains("tessera_x_requests_total{op=\"GetObject\",status=\"200\"} 3\n"));
        assert!(text.contains("op=\"Put\\\"x\""));
        assert!(text.contains("tessera_x_used_bytes 1.5\n"));
        assert!(text.contains("tessera_x_seconds_bucket{op=\"a\",le=\"0.1\"} 1\n"));
        assert!(text.contains("tessera_x_seconds_bucket{op=\"a\",le=\"1\"} 2\n"));
        assert!(text.contains("tessera_x_seconds_bucket{op=\"a\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("tessera_x_seconds_count{op=\"a\"} 3\n"));
        assert_eq!(c.get(&["GetObject", "200"]), 3);
    }
}
