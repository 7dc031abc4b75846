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

/// Unix seconds (as `strftime('%s')` writes them) in the stored text form; `None` for a
/// number that is not a time between 1970 and 9999 (milliseconds, say, or 1e300).
pub fn text_of_unix_seconds(seconds: f64) -> Option<String> {
    if !(0.0..253_402_300_800.0).contains(&seconds) {
        return None;
    }
    let whole = seconds.trunc();
    let nanos = ((seconds - whole) * 1e9) as u32;
    let t = DateTime::<Utc>::from_timestamp(whole as i64, nanos)?;
    Some(t.format(FORMAT).to_string())
}

/// Reads a stored timestamp, with or without fractions, `T` or a trailing `Z`.
pub fn parse(s: &str) -> Option<SystemTime> {
    let s = s.trim().trim_end_matches('Z').replace('T', " ");
    let naive = NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Some(naive.and_utc().into())
}

/// A stored timestamp as the API shows it: ISO 8601 in UTC (`2026-11-26T10:00:00.123Z`).
/// Text that is not a timestamp is passed through as it is.
///
/// The API converts every timestamp of every cluster it lists, so the two forms the store
/// holds (kindler's, with milliseconds, and `CURRENT_TIMESTAMP`'s, without) are rewritten
/// as text; anything else goes through the full parser.
pub fn iso(s: &str) -> String {
    if let Some(fast) = iso_of_stored_form(s) {
        return fast;
    }
    match parse(s) {
        Some(t) => DateTime::<Utc>::from(t)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string(),
        None => s.to_owned(),
    }
}

/// `YYYY-MM-DD HH:MM:SS[.mmm]` (digits where digits belong) to ISO 8601, without parsing.
fn iso_of_stored_form(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| b[range].iter().all(u8::is_ascii_digit);
    let shape = (b.len() == 19 || (b.len() == 23 && b[19] == b'.' && digits(20..23)))
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b' '
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut out = String::with_capacity(24);
    out.push_str(&s[..10]);
    out.push('T');
    out.push_str(&s[11..]);
    if b.len() == 19 {
        out.push_str(".000");
    }
    out.push('Z');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_within_reason_only() {
        assert_eq!(
            text_of_unix_seconds(1_764_129_600.5).as_deref(),
            Some("2025-11-26 04:00:00.500")
        );
        for nonsense in [1e300, -1.0, 1_764_129_600_000_000.0, f64::NAN] {
            assert_eq!(text_of_unix_seconds(nonsense), None, "{nonsense}");
        }
    }

    #[test]
    fn stored_text_round_trips_and_reads_legacy_values() {
        let t = parse("2026-11-26 10:00:00.250").unwrap();
        assert_eq!(text(t), "2026-11-26 10:00:00.250");
        assert_eq!(iso("2026-11-26 10:00:00"), "2026-11-26T10:00:00.000Z");
        assert_eq!(iso("not a time"), "not a time");
        assert_eq!(iso("2026-11-26 10:00:00.250"), "2026-11-26T10:00:00.250Z");
        assert_eq!(iso("2026-11-26T10:00:00.25Z"), "2026-11-26T10:00:00.250Z");
        assert_eq!(iso("2026-11-26 1x:00:00"), "2026-11-26 1x:00:00");
        assert!(parse("2026-11-26T10:00:00Z").is_some());
    }
}
