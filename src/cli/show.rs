//! How the commands print: colour only on a terminal and never with `NO_COLOR`, tables,
//! times in words.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Colours for one stream.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    /// Colour for stdout, when it is a terminal and `NO_COLOR` is unset (or empty, as
    /// no-color.org has it) and the terminal is not `dumb`.
    pub fn stdout() -> Style {
        Style {
            colour: std::io::stdout().is_terminal() && colour_allowed(),
        }
    }

    pub fn stderr() -> Style {
        Style {
            colour: std::io::stderr().is_terminal() && colour_allowed(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    pub fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }

    pub fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }

    /// A state in its colour: settled and well green, failed red, moving yellow.
    pub fn state(&self, state: &str) -> String {
        match state {
            "running" => self.green(state),
            "failed" => self.red(state),
            "creating" | "starting" | "stopping" | "deleting" => self.yellow(state),
            "stopped" | "unknown" => self.dim(state),
            _ => state.to_owned(),
        }
    }
}

fn colour_allowed() -> bool {
    let no_color = matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty());
    let dumb = matches!(std::env::var("TERM"), Ok(t) if t == "dumb");
    !no_color && !dumb
}

/// A table: a header and rows, columns padded to their widest cell. Cells may carry colour
/// codes; widths count what is visible.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str], style: Style) -> Table {
        Table {
            rows: vec![header.iter().map(|h| style.bold(h)).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(visible_len(cell));
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - visible_len(cell) + 3;
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Characters shown, leaving out ANSI colour codes.
fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut in_code = false;
    for c in s.chars() {
        match (in_code, c) {
            (false, '\x1b') => in_code = true,
            (true, 'm') => in_code = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// A duration the way `kubectl` shows ages: `45s`, `12m`, `3h5m`, `2d4h`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}", s / 60, nonzero(s % 60, "s")),
        3600..=86_399 => format!("{}h{}", s / 3600, nonzero(s % 3600 / 60, "m")),
        _ => format!("{}d{}", s / 86_400, nonzero(s % 86_400 / 3600, "h")),
    }
}

fn nonzero(n: u64, unit: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("{n}{unit}")
    }
}

/// Milliseconds as `850ms`, `12.3s`, `4m10s`.
pub fn run_duration(ms: i64) -> String {
    match ms {
        ..=999 => format!("{}ms", ms.max(0)),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => short_duration(Duration::from_millis(ms as u64)),
    }
}

/// An API time (ISO 8601, UTC).
pub fn parse_time(v: &Value) -> Option<SystemTime> {
    parse_iso(v.as_str()?)
}

/// ISO 8601 text as a time.
pub fn parse_iso(text: &str) -> Option<SystemTime> {
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let ms = t.timestamp_millis();
    if ms < 0 {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms as u64))
}

/// How long ago `v` was (`3m`), or `-`.
pub fn age(v: &Value, now: SystemTime) -> String {
    match parse_time(v) {
        Some(t) => short_duration(now.duration_since(t).unwrap_or_default()),
        None => "-".into(),
    }
}

/// `in 40s`, or `now`, for a time to come.
pub fn until(v: &Value, now: SystemTime) -> Option<String> {
    Some(until_time(parse_time(v)?, now))
}

pub fn until_time(t: SystemTime, now: SystemTime) -> String {
    match t.duration_since(now) {
        Ok(d) if d.as_secs() > 0 => format!("in {}", short_duration(d)),
        _ => "now".into(),
    }
}

/// The first line of `text`, at most `max` characters (with `…` when cut).
pub fn shorten(text: &str, max: usize) -> String {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let more_lines = text.trim().lines().count() > 1;
    if first.chars().count() > max {
        let cut: String = first.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else if more_lines {
        format!("{first} …")
    } else {
        first.to_owned()
    }
}

/// Lines of `new` that follow what `old` ended with: both are the last lines of the same
/// output, `new` taken later, so the longest end of `old` that begins `new` was seen.
pub fn new_lines<'a>(old: &[String], new: &'a [String]) -> &'a [String] {
    if old.is_empty() {
        return new;
    }
    for k in (1..=old.len().min(new.len())).rev() {
        if old[old.len() - k..] == new[..k] {
            return &new[k..];
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(short_duration(Duration::from_secs(45)), "45s");
        assert_eq!(short_duration(Duration::from_secs(720)), "12m");
        assert_eq!(short_duration(Duration::from_secs(730)), "12m10s");
        assert_eq!(short_duration(Duration::from_secs(3 * 3600 + 300)), "3h5m");
        assert_eq!(short_duration(Duration::from_secs(2 * 86_400)), "2d");
        assert_eq!(run_duration(850), "850ms");
        assert_eq!(run_duration(12_345), "12.3s");
    }

    #[test]
    fn a_table_pads_what_is_visible() {
        let style = Style { colour: true };
        let mut t = Table::new(&["NAME", "STATE"], style);
        t.row(vec!["dev".into(), style.state("running")]);
        t.row(vec!["a-long-name".into(), "failed".into()]);
        let plain: String = t.render().replace("\x1b[1m", "").replace("\x1b[32m", "");
        let plain = plain.replace("\x1b[0m", "");
        assert_eq!(
            plain,
            "NAME          STATE\ndev           running\na-long-name   failed\n"
        );
    }

    #[test]
    fn output_tails_are_followed_without_repeats() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(new_lines(&s(&["a", "b"]), &s(&["a", "b", "c"])), s(&["c"]));
        assert_eq!(
            new_lines(&s(&["a", "b", "c"]), &s(&["b", "c", "d"])),
            s(&["d"])
        );
        assert_eq!(new_lines(&s(&["x"]), &s(&["y", "z"])), s(&["y", "z"]));
        assert!(new_lines(&s(&["a", "b"]), &s(&["a", "b"])).is_empty());
    }

    #[test]
    fn errors_are_shortened_to_one_line() {
        assert_eq!(shorten("one\ntwo", 20), "one …");
        assert_eq!(shorten("abcdefghij", 5), "abcd…");
    }
}
