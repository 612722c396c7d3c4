//! The Prometheus text format as the services serve it, and what the view
//! computes from two scrapes of it: rates of counters and quantiles of
//! histograms over the time between them. Pure, unit-tested.

use std::collections::BTreeMap;

/// One sample: a series (name and labels) and its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every sample of a scrape; comments and lines that do not parse are
/// skipped (a view shows what it can).
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|line| !line.starts_with('#')).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    // `series value [timestamp]`; a label value may hold spaces.
    let line = line.trim();
    let end = line.rfind('}').map_or_else(|| line.find(' ').unwrap_or(line.len()), |brace| brace + 1);
    let (series, rest) = line.split_at(end);
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        value => value.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `a="x",b="y"` (values may hold escaped quotes and commas).
fn labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.trim_start_matches(',').to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// Two scrapes of one side, `seconds` apart: what happened in between.
pub(crate) struct Window<'a> {
    pub(crate) before: &'a [Sample],
    pub(crate) now: &'a [Sample],
    pub(crate) seconds: f64,
}

impl Window<'_> {
    /// Per second, the increase of the counter `name` summed over the
    /// series whose labels match `filter`.
    pub(crate) fn rate(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        // Series by series, as PromQL: a counter that went down was reset
        // (its process restarted) and counts from zero.
        let increase: f64 = self
            .now
            .iter()
            .filter(|s| s.name == name && matches(s, filter))
            .map(|now| {
                let before = self.before.iter().find(|b| b.name == now.name && b.labels == now.labels);
                match before {
                    Some(before) if before.value <= now.value => now.value - before.value,
                    _ => now.value,
                }
            })
            .sum();
        if self.seconds > 0.0 { increase / self.seconds } else { 0.0 }
    }

    /// The `q` quantile of the histogram `name` (`<name>_bucket` series)
    /// over the window, among series matching `filter`; `None` without
    /// observations. Linear within a bucket, as PromQL's
    /// `histogram_quantile`.
    pub(crate) fn quantile(&self, q: f64, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        let bucket = format!("{name}_bucket");
        let buckets = |samples: &[Sample]| -> BTreeMap<Bound, f64> {
            let mut sums = BTreeMap::new();
            for sample in samples.iter().filter(|s| s.name == bucket && matches(s, filter)) {
                let le = match sample.label("le") {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().unwrap_or(f64::INFINITY),
                };
                *sums.entry(Bound(le)).or_insert(0.0) += sample.value;
            }
            sums
        };
        let (before, now) = (buckets(self.before), buckets(self.now));
        // A total that went down: the process restarted, its histogram
        // started again from zero.
        let total = |buckets: &BTreeMap<Bound, f64>| buckets.values().copied().fold(0.0, f64::max);
        let reset = total(&now) < total(&before);
        let mut highest = 0.0_f64;
        let cumulative: Vec<(f64, f64)> = now
            .iter()
            .map(|(le, count)| {
                let delta = if reset { *count } else { count - before.get(le).copied().unwrap_or(0.0) };
                // Buckets are cumulative: never below the one before.
                highest = highest.max(delta);
                (le.0, highest)
            })
            .collect();
        let total = cumulative.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &cumulative {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let share = if count > lower.1 { (rank - lower.1) / (count - lower.1) } else { 1.0 };
                return Some(lower.0 + (le - lower.0) * share);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }

    /// The largest value of the gauge `name` now, if any series has it.
    pub(crate) fn max(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        self.now.iter().filter(|s| s.name == name && matches(s, filter)).map(|s| s.value).reduce(f64::max)
    }

    /// The values of label `label` on series of `name`, sorted.
    pub(crate) fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .now
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.label(label).to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        values.sort();
        values.dedup();
        values
    }
}

fn matches(sample: &Sample, filter: &[(&str, &str)]) -> bool {
    filter.iter().all(|(name, value)| sample.label(name) == *value)
}

/// A bucket's upper bound, ordered (buckets are finite numbers or +Inf).
#[derive(Debug, Clone, Copy)]
struct Bound(f64);

impl PartialEq for Bound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP cqrs_command_total x
# TYPE cqrs_command_total counter
cqrs_command_total{command_type="DepositFunds",command_status="success",otel_scope_name="write-service"} 100
cqrs_command_total{command_type="DepositFunds",command_status="error",error_type="INVALID_ARGUMENT"} 0
cqrs_command_duration_bucket{command_type="DepositFunds",le="1"} 50
cqrs_command_duration_bucket{command_type="DepositFunds",le="10"} 100
cqrs_command_duration_bucket{command_type="DepositFunds",le="+Inf"} 100
cqrs_projection_staleness{cqrs_projection_partition="0"} 12
"#;

    const NOW: &str = r#"cqrs_command_total{command_type="DepositFunds",command_status="success",otel_scope_name="write-service"} 290
cqrs_command_total{command_type="DepositFunds",command_status="error",error_type="INVALID_ARGUMENT"} 10
cqrs_command_duration_bucket{command_type="DepositFunds",le="1"} 150
cqrs_command_duration_bucket{command_type="DepositFunds",le="10"} 300
cqrs_command_duration_bucket{command_type="DepositFunds",le="+Inf"} 300
cqrs_projection_staleness{cqrs_projection_partition="0"} 7
cqrs_projection_staleness{cqrs_projection_partition="1"} 40
"#;

    #[test]
    fn the_text_format_is_read_with_its_labels() {
        let samples = parse(r#"a_total{x="1",y="say \"hi\", then go"} 3.5"#);
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].name, "a_total");
        assert_eq!(samples[0].label("y"), "say \"hi\", then go");
        assert_eq!(samples[0].value, 3.5);
        assert_eq!(parse("plain 2\n# comment\nbroken")[0].value, 2.0);
        assert_eq!(parse(r#"b{le="+Inf"} +Inf"#)[0].value, f64::INFINITY);
        assert_eq!(parse(r#"c{x="a b"} 4 1733468000000"#)[0].value, 4.0);
        assert_eq!(parse("d 5 1733468000000")[0].value, 5.0);
    }

    #[test]
    fn rates_and_quantiles_cover_the_window_only() {
        let (before, now) = (parse(BEFORE), parse(NOW));
        let window = Window { before: &before, now: &now, seconds: 2.0 };
        assert_eq!(window.rate("cqrs_command_total", &[("command_type", "DepositFunds")]), 100.0);
        assert_eq!(window.rate("cqrs_command_total", &[("command_status", "error")]), 5.0);
        // In the window: 100 of 200 below 1 ms, the rest below 10 ms.
        assert_eq!(window.quantile(0.5, "cqrs_command_duration", &[]), Some(1.0));
        assert_eq!(window.quantile(0.99, "cqrs_command_duration", &[]), Some(1.0 + 9.0 * 0.98));
        assert_eq!(window.max("cqrs_projection_staleness", &[]), Some(40.0));
        assert_eq!(window.label_values("cqrs_command_total", "command_type"), ["DepositFunds"]);
    }

    #[test]
    fn one_series_reset_among_growing_ones_counts_from_zero() {
        let before = parse("t{a=\"1\"} 100\nt{a=\"2\"} 10");
        let now = parse("t{a=\"1\"} 150\nt{a=\"2\"} 4");
        let window = Window { before: &before, now: &now, seconds: 1.0 };
        assert_eq!(window.rate("t", &[]), 54.0);
        // A histogram whose process restarted: its buckets as they are now.
        let before = parse("h_bucket{le=\"1\"} 100\nh_bucket{le=\"10\"} 200\nh_bucket{le=\"+Inf\"} 200");
        let now = parse("h_bucket{le=\"1\"} 60\nh_bucket{le=\"10\"} 70\nh_bucket{le=\"+Inf\"} 70");
        let window = Window { before: &before, now: &now, seconds: 1.0 };
        assert_eq!(window.quantile(0.5, "h", &[]), Some(35.0 / 60.0));
    }

    #[test]
    fn a_restarted_process_and_an_idle_window_are_not_misread() {
        let (before, now) = (parse(NOW), parse(BEFORE));
        let window = Window { before: &before, now: &now, seconds: 1.0 };
        assert_eq!(window.rate("cqrs_command_total", &[("command_status", "success")]), 100.0);
        let same = Window { before: &before, now: &before, seconds: 1.0 };
        assert_eq!(same.quantile(0.99, "cqrs_command_duration", &[]), None);
        assert_eq!(same.rate("cqrs_command_total", &[]), 0.0);
    }
}
