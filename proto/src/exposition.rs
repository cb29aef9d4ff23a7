//! The Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! The coordinator and the agent both serve `/metrics`; this is the one writer
//! of what they serve. A [`Text`] takes metric families in order: each starts
//! with its `# HELP` and `# TYPE` lines, then its samples. Label values are
//! escaped (`\\`, `"`, newline), as is help text (`\\`, newline); values print
//! as Prometheus parses them (`+Inf`, `-Inf`, `NaN`, integers without a
//! fraction). Histograms are given as cumulative counts at upper bounds; the
//! writer adds the `+Inf` bucket (equal to the count), `_sum` and `_count`.
//!
//! Names are checked in debug builds only: they are constants of the callers,
//! never input.

use std::fmt::Write;

/// The `Content-Type` of this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// An exposition being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

/// Whether `name` is a valid metric or label name (`[a-zA-Z_:][a-zA-Z0-9_:]*`;
/// label names may not hold `:`, which none of ours does).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes help text: backslash and newline.
fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A value as Prometheus parses it.
pub fn format_value(v: f64, out: &mut String) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name), "metric name {name}");
        let _ = write!(self.out, "# HELP {name} ");
        escape_help(help, &mut self.out);
        let _ = writeln!(self.out, "\n# TYPE {name} {}", kind.as_str());
        self
    }

    fn labels(&mut self, labels: &[(&str, &str)], extra: Option<(&str, &str)>) {
        if labels.is_empty() && extra.is_none() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().chain(extra.iter()).enumerate() {
            debug_assert!(valid_name(k) && !k.contains(':'), "label name {k}");
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_value(v, &mut self.out);
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// One sample of the current family (`name` is the family's, or for a
    /// histogram its `_bucket`, `_sum` or `_count`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.sample_with(name, labels, None, value)
    }

    fn sample_with(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, &str)>,
        value: f64,
    ) -> &mut Self {
        self.out.push_str(name);
        self.labels(labels, extra);
        self.out.push(' ');
        format_value(value, &mut self.out);
        self.out.push('\n');
        self
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// The samples of one histogram of the current family: `buckets` are
    /// (upper bound, samples at or below it) in increasing order of bound;
    /// the counts are made cumulative-safe (never below the one before) and
    /// the `+Inf` bucket is `count`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        let mut seen = 0u64;
        for &(bound, n) in buckets {
            debug_assert!(bound.is_finite());
            seen = n.max(seen).min(count);
            le.clear();
            format_value(bound, &mut le);
            self.sample_with(&bucket, labels, Some(("le", &le)), seen as f64);
        }
        self.sample_with(&bucket, labels, Some(("le", "+Inf")), count as f64);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count as f64)
    }

    /// Appends text written by another [`Text`] (the process metrics after a
    /// component's).
    pub fn append(&mut self, other: Text) -> &mut Self {
        self.out.push_str(&other.out);
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut t = Text::new();
        t.family("baton_x", Kind::Gauge, "a \\ help\nline").sample(
            "baton_x",
            &[("agent", "a\"b\\c\nd")],
            1.0,
        );
        let s = t.finish();
        assert_eq!(
            s,
            "# HELP baton_x a \\\\ help\\nline\n# TYPE baton_x gauge\nbaton_x{agent=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn values_print_as_prometheus_parses_them() {
        let f = |v: f64| {
            let mut s = String::new();
            format_value(v, &mut s);
            s
        };
        assert_eq!(f(3.0), "3");
        assert_eq!(f(-2.0), "-2");
        assert_eq!(f(0.25), "0.25");
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(1e20), "100000000000000000000");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_inf() {
        let mut t = Text::new();
        t.family("baton_h_seconds", Kind::Histogram, "h").histogram(
            "baton_h_seconds",
            &[("kind", "a")],
            // A count below the one before (never given by our callers) is raised.
            &[(0.001, 2), (0.01, 1), (0.1, 5)],
            0.5,
            7,
        );
        let s = t.finish();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines,
            [
                "# HELP baton_h_seconds h",
                "# TYPE baton_h_seconds histogram",
                "baton_h_seconds_bucket{kind=\"a\",le=\"0.001\"} 2",
                "baton_h_seconds_bucket{kind=\"a\",le=\"0.01\"} 2",
                "baton_h_seconds_bucket{kind=\"a\",le=\"0.1\"} 5",
                "baton_h_seconds_bucket{kind=\"a\",le=\"+Inf\"} 7",
                "baton_h_seconds_sum{kind=\"a\"} 0.5",
                "baton_h_seconds_count{kind=\"a\"} 7",
            ]
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("baton_children"));
        assert!(valid_name("_x:y"));
        assert!(!valid_name("9x"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
    }
}
