//! The service's Prometheus metrics: counters and histograms kept in
//! memory by the parts that do the work (ingest, pipeline, delivery, HTTP),
//! rendered in the text exposition format (version 0.0.4) by `/metrics`
//! together with gauges read at scrape time (queues, disk space).
//!
//! Names follow the Prometheus conventions: a `vigie_` prefix, base units
//! (seconds, bytes), `_total` on counters. Labels carry no patient data.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (bucket, bound) in self.counts.iter_mut().zip(BUCKETS) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// A metric family's samples by label set (`name="value",…`).
type Family<T> = BTreeMap<String, T>;

#[derive(Debug, Default)]
struct Inner {
    counters: BTreeMap<&'static str, (&'static str, Family<u64>)>,
    histograms: BTreeMap<&'static str, (&'static str, Family<Histogram>)>,
    gauges: BTreeMap<&'static str, (&'static str, Family<f64>)>,
}

/// The registry of one running service.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Label set text from pairs; values are escaped as the format requires.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Add one to counter `name` (documented by `help`) with `labels`.
    pub fn inc(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) {
        self.add(name, help, labels, 1);
    }

    /// Add `n` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], n: u64) {
        let key = self::labels(labels);
        self.with(|m| {
            *m.counters
                .entry(name)
                .or_insert_with(|| (help, Family::new()))
                .1
                .entry(key)
                .or_default() += n;
        });
    }

    /// Record a duration in a histogram.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        seconds: f64,
    ) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let key = self::labels(labels);
        self.with(|m| {
            m.histograms
                .entry(name)
                .or_insert_with(|| (help, Family::new()))
                .1
                .entry(key)
                .or_default()
                .observe(seconds);
        });
    }

    /// Set a gauge that changes with the service's own state (e.g. a model
    /// loaded).
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        let key = self::labels(labels);
        self.with(|m| {
            m.gauges
                .entry(name)
                .or_insert_with(|| (help, Family::new()))
                .1
                .insert(key, value);
        });
    }

    /// The exposition text: the registry's families, then `scraped`
    /// gauges (name, help, label set text, value) read at scrape time.
    pub fn render(&self, scraped: &[(&'static str, &'static str, String, f64)]) -> String {
        let mut out = String::new();
        self.with(|m| {
            for (name, (help, family)) in &m.counters {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (labels, value) in family {
                    let _ = writeln!(out, "{name}{} {value}", braces(labels));
                }
            }
            for (name, (help, family)) in &m.histograms {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
                for (labels, h) in family {
                    let sep = if labels.is_empty() { "" } else { "," };
                    for (count, bound) in h.counts.iter().zip(BUCKETS) {
                        let _ =
                            writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
                    }
                    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
                    let _ = writeln!(out, "{name}_sum{} {}", braces(labels), h.sum);
                    let _ = writeln!(out, "{name}_count{} {}", braces(labels), h.count);
                }
            }
            for (name, (help, family)) in &m.gauges {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                for (labels, value) in family {
                    let _ = writeln!(out, "{name}{} {value}", braces(labels));
                }
            }
        });
        let mut last = "";
        for (name, help, labels, value) in scraped {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", braces(labels));
        }
        out
    }
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.inc("vigie_x_total", "Xs.", &[("reason", "a \"b\"")]);
        m.inc("vigie_x_total", "Xs.", &[("reason", "a \"b\"")]);
        m.observe("vigie_d_seconds", "Ds.", &[("stage", "s")], 0.003);
        m.observe("vigie_d_seconds", "Ds.", &[("stage", "s")], 2.0);
        let text = m.render(&[("vigie_g", "G.", labels(&[("state", "p")]), 3.0)]);
        assert!(
            text.contains(
                "# TYPE vigie_x_total counter\nvigie_x_total{reason=\"a \\\"b\\\"\"} 2\n"
            )
        );
        assert!(text.contains("vigie_d_seconds_bucket{stage=\"s\",le=\"0.0025\"} 0\n"));
        assert!(text.contains("vigie_d_seconds_bucket{stage=\"s\",le=\"0.005\"} 1\n"));
        assert!(text.contains("vigie_d_seconds_bucket{stage=\"s\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("vigie_d_seconds_sum{stage=\"s\"} 2.003\n"));
        assert!(text.contains("# TYPE vigie_g gauge\nvigie_g{state=\"p\"} 3\n"));
    }
}
