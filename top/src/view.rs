//! The screen: one pane per side, side by side when the terminal is wide
//! enough, else one above the other. Plain text and ANSI colours only.

use std::time::Instant;

use crate::Side;

const PANE: usize = 50;
const RED: &str = "\x1b[1;37;41m";
const RESET: &str = "\x1b[0m";

/// The whole screen for `sides` (write, read, projection).
pub(crate) fn render(sides: &[Side; 3], width: usize, now: Instant) -> String {
    let [write, read, projection] = sides;
    let panes = [
        pane(write, now, |w| requests(w, "command", "cqrs_command_total", "cqrs_command_duration")),
        pane(read, now, |w| requests(w, "query", "cqrs_query_total", "cqrs_query_duration")),
        pane(projection, now, projections),
    ];
    let mut screen = String::from("cqrs-top  (every second; Ctrl-C quits)\n\n");
    if width >= 3 * (PANE + 2) {
        let height = panes.iter().map(Vec::len).max().unwrap_or(0);
        for row in 0..height {
            for pane in &panes {
                let line = pane.get(row).map_or("", String::as_str);
                screen.push_str(&pad(line, PANE + 2));
            }
            screen.push('\n');
        }
    } else {
        for pane in &panes {
            for line in pane {
                screen.push_str(line);
                screen.push('\n');
            }
            screen.push('\n');
        }
    }
    screen
}

/// A pane: the side's title, then its lines, or why there are none.
fn pane(side: &Side, now: Instant, lines: impl Fn(&crate::metrics::Window<'_>) -> Vec<String>) -> Vec<String> {
    let mut pane = vec![format!("== {} side ", side.name.to_uppercase()) + &"=".repeat(PANE - 10 - side.name.len())];
    if let Some(since) = side.unreachable_since {
        let seconds = (now - since).as_secs();
        pane.push(format!("{RED}{}: UNREACHABLE for {seconds} s{RESET}", side.name));
        pane.push(shorten(&side.error));
        return pane;
    }
    match side.window() {
        Some(window) => pane.extend(lines(&window)),
        None => pane.push("(measuring…)".to_owned()),
    }
    pane
}

/// Per type: calls/s, error ratio, p50 and p99 in ms.
fn requests(window: &crate::metrics::Window<'_>, kind: &str, counter: &str, histogram: &str) -> Vec<String> {
    let label = format!("{kind}_type");
    let status = format!("{kind}_status");
    let mut lines = vec![format!("{:<20} {:>8} {:>6} {:>6} {:>6}", format!("{kind} type"), "/s", "err%", "p50", "p99")];
    let types = window.label_values(counter, &label);
    if types.is_empty() {
        lines.push(format!("no {kind}s yet"));
    }
    for kind_type in types {
        let filter = [(label.as_str(), kind_type.as_str())];
        let rate = window.rate(counter, &filter);
        let errors = window.rate(counter, &[(label.as_str(), kind_type.as_str()), (status.as_str(), "error")]);
        let ratio = if rate > 0.0 { 100.0 * errors / rate } else { 0.0 };
        let quantile = |q| window.quantile(q, histogram, &filter).map_or("-".to_owned(), |ms| format!("{ms:.1}"));
        lines.push(format!(
            "{:<20} {:>8.1} {:>6.1} {:>6} {:>6}",
            shorten_to(&kind_type, 20),
            rate,
            ratio,
            quantile(0.5),
            quantile(0.99)
        ));
    }
    lines
}

/// Per projection: events/s and lag p99; then staleness, pending events,
/// dead letters and a running rebuild.
fn projections(window: &crate::metrics::Window<'_>) -> Vec<String> {
    let mut lines = vec![format!("{:<20} {:>10} {:>14}", "projection", "events/s", "lag p99 ms")];
    for projection in window.label_values("cqrs_projection_events_total", "projection_name") {
        let filter = [("projection_name", projection.as_str())];
        let rate = window.rate("cqrs_projection_events_total", &filter);
        let lag = window.quantile(0.99, "cqrs_projection_lag", &filter).map_or("-".to_owned(), |ms| format!("{ms:.0}"));
        lines.push(format!("{:<20} {:>10.1} {:>14}", shorten_to(&projection, 20), rate, lag));
    }
    let staleness = window.max("cqrs_projection_staleness", &[]);
    let stale = staleness.is_some_and(|ms| ms > 60_000.0);
    let staleness = staleness.map_or("-".to_owned(), |ms| format!("{:.1} s", ms / 1000.0));
    lines.push(String::new());
    let staleness = format!("staleness {staleness}");
    lines.push(if stale { format!("{RED}{staleness} (STALLED){RESET}") } else { staleness });
    let pending = window.max("cqrs_projection_pending", &[]).map_or("-".to_owned(), |n| format!("{n:.0}"));
    lines.push(format!("pending events {pending}"));
    let dead = window.max("cqrs_projection_dead_letters_total", &[]).unwrap_or(0.0);
    let dead = format!("dead letters {dead:.0}");
    lines.push(if dead != "dead letters 0" { format!("{RED}{dead}{RESET}") } else { dead });
    if let (Some(position), Some(target)) =
        (window.max("cqrs_projection_replay_position", &[]), window.max("cqrs_projection_replay_target", &[]))
        && target > 0.0
    {
        lines.push(format!("rebuild {position:.0}/{target:.0} ({:.0} %)", 100.0 * position / target));
    }
    lines
}

/// Pads `line` to `width` visible columns (ANSI escapes take none).
fn pad(line: &str, width: usize) -> String {
    let visible = strip_ansi(line).chars().count();
    format!("{line}{}", " ".repeat(width.saturating_sub(visible)))
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn shorten(text: &str) -> String {
    shorten_to(text, PANE)
}

fn shorten_to(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    text.chars().take(width.saturating_sub(1)).chain(['…']).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_take_no_room() {
        assert_eq!(pad(&format!("{RED}x{RESET}"), 3), format!("{RED}x{RESET}  "));
        assert_eq!(shorten_to("abcdef", 4), "abc…");
    }
}
