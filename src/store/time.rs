//! Timestamps as the store keeps them: UTC text in SQLite's own format
//! (`2026-11-26 10:00:00.123`), so they sort as text, compare with the `CURRENT_TIMESTAMP`
//! values older tools write, and work with SQLite's date functions.

use std::time::SystemTime;

use chrono::{DateTime, NaiveDateTime, Utc};

const FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

pub fn now_text() -> String {
    text(SystemTime::now())
}

pub fn text(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).format(FORMAT).to_string()
}

/// Reads a stored timestamp, with or without fractions, `T` or a trailing `Z`.
pub fn parse(s: &str) -> Option<SystemTime> {
    let s = s.trim().trim_end_matches('Z').replace('T', " ");
    let naive = NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Some(naive.and_utc().into())
}

/// A stored timestamp as the API shows it: ISO 8601 in UTC (`2026-11-26T10:00:00.123Z`).
/// Text that is not a timestamp is passed through as it is.
pub fn iso(s: &str) -> String {
    match parse(s) {
        Some(t) => DateTime::<Utc>::from(t)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_round_trips_and_reads_legacy_values() {
        let t = parse("2026-11-26 10:00:00.250").unwrap();
        assert_eq!(text(t), "2026-11-26 10:00:00.250");
        assert_eq!(iso("2026-11-26 10:00:00"), "2026-11-26T10:00:00.000Z");
        assert_eq!(iso("not a time"), "not a time");
        assert!(parse("2026-11-26T10:00:00Z").is_some());
    }
}
