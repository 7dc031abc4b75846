//! Timestamps: a [`Timestamp`] is a point in time in UTC, parsed once when a row is read
//! and rendered once where it is shown.
//!
//! The store keeps them as UTC text in SQLite's own format (`2026-11-26 10:00:00.123`), so
//! they sort as text, compare with the `CURRENT_TIMESTAMP` values older tools write, and
//! work with SQLite's date functions; the API shows ISO 8601 (`2026-11-26T10:00:00.123Z`).

use std::fmt;
use std::time::SystemTime;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use rusqlite::types::{ToSql, ToSqlOutput};

/// A point in time, as the store and the API know it. Bound as an SQL parameter it is the
/// stored text form; `Display` is the ISO form the API shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

/// Unix seconds from 1970 up to the end of year 9999: the range [`Timestamp::from_unix_seconds`]
/// takes for a time (beyond it a number is milliseconds, microseconds or nonsense).
const UNIX_SECONDS_BEFORE_10000: f64 = 253_402_300_800.0;

impl Timestamp {
    pub fn now() -> Timestamp {
        SystemTime::now().into()
    }

    /// Reads a timestamp written as text: SQLite's form with or without fractions
    /// (`2026-11-26 10:00:00`, `2026-11-26 10:00:00.123`), or ISO 8601 with `T` and a
    /// trailing `Z`. `None` for text that is no such time.
    pub fn parse(text: &str) -> Option<Timestamp> {
        let text = text.trim();
        let text = text.strip_suffix('Z').unwrap_or(text);
        if let Some(t) = parse_fixed(text.as_bytes()) {
            return Some(Timestamp(t.and_utc()));
        }
        // Shapes the fixed reader does not take (one-digit fields, say), as chrono reads them.
        let spaced = text.replace('T', " ");
        let naive = NaiveDateTime::parse_from_str(&spaced, "%Y-%m-%d %H:%M:%S%.f").ok()?;
        Some(Timestamp(naive.and_utc()))
    }

    /// Unix seconds, as `strftime('%s')` writes them; `None` for a number that is not a
    /// time between 1970 and 9999 (milliseconds, say, a negative number, or 1e300).
    pub fn from_unix_seconds(seconds: f64) -> Option<Timestamp> {
        if !(0.0..UNIX_SECONDS_BEFORE_10000).contains(&seconds) {
            return None;
        }
        let whole = seconds.trunc();
        let nanos = ((seconds - whole) * 1e9) as u32;
        DateTime::<Utc>::from_timestamp(whole as i64, nanos).map(Timestamp)
    }

    /// The stored text form, `2026-11-26 10:00:00.123` (what SQL parameters get).
    pub fn text(self) -> String {
        self.render(' ', "")
    }

    /// ISO 8601 in UTC with milliseconds, `2026-11-26T10:00:00.123Z` (what the API shows).
    pub fn iso(self) -> String {
        self.render('T', "Z")
    }

    /// Written out field by field: the API renders every timestamp of every cluster it
    /// lists, and a format string is interpreted anew at each call.
    fn render(self, separator: char, suffix: &str) -> String {
        let (d, t) = (self.0.date_naive(), self.0.time());
        // A leap second keeps its nanoseconds above 10^9; it is shown as :59.999.
        let millis = (t.nanosecond() / 1_000_000).min(999);
        format!(
            "{:04}-{:02}-{:02}{separator}{:02}:{:02}:{:02}.{millis:03}{suffix}",
            d.year(),
            d.month(),
            d.day(),
            t.hour(),
            t.minute(),
            t.second(),
        )
    }
}

/// `YYYY-MM-DD HH:MM:SS[.f…]` (or `T` between date and time), digits where digits belong:
/// the forms kindler and `CURRENT_TIMESTAMP` write, read without a format string.
fn parse_fixed(b: &[u8]) -> Option<NaiveDateTime> {
    if b.len() < 19 || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let nanos = match &b[19..] {
        [] => 0,
        [b'.', fraction @ ..]
            if !fraction.is_empty() && fraction.iter().all(u8::is_ascii_digit) =>
        {
            // Nanoseconds are the first nine digits; further ones are below chrono's precision.
            let digits = &fraction[..fraction.len().min(9)];
            let n = number(20..20 + digits.len())?;
            n * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?;
    let time =
        NaiveTime::from_hms_nano_opt(number(11..13)?, number(14..16)?, number(17..19)?, nanos)?;
    Some(date.and_time(time))
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.iso())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        Timestamp(t.into())
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        t.0.into()
    }
}

impl ToSql for Timestamp {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(text: &str) -> Option<String> {
        Timestamp::parse(text).map(Timestamp::iso)
    }

    #[test]
    fn the_stored_forms_are_read() {
        // kindler's own form, CURRENT_TIMESTAMP's, strftime('%f')'s, ISO with T and Z.
        for (text, want) in [
            ("2026-11-26 10:00:00.250", "2026-11-26T10:00:00.250Z"),
            ("2026-11-26 10:00:00", "2026-11-26T10:00:00.000Z"),
            ("2026-11-26T10:00:00.25Z", "2026-11-26T10:00:00.250Z"),
            ("2026-11-26T10:00:00Z", "2026-11-26T10:00:00.000Z"),
            (
                " 2026-11-26 10:00:00.123456789123 ",
                "2026-11-26T10:00:00.123Z",
            ),
        ] {
            assert_eq!(iso(text).as_deref(), Some(want), "{text:?}");
        }
        // One-digit fields, as chrono reads them.
        assert_eq!(iso("2026-1-6 9:00:00").unwrap(), "2026-01-06T09:00:00.000Z");
        let micro = Timestamp::parse("2026-11-26 10:00:00.000001").unwrap();
        assert!(micro > Timestamp::parse("2026-11-26 10:00:00").unwrap());
    }

    #[test]
    fn text_that_is_no_time_is_none() {
        for nonsense in [
            "",
            "not a time",
            "2026-11-26 1x:00:00",
            "2026-13-01 10:00:00",
            "2026-02-30 10:00:00",
            "2026-11-26 24:00:00",
            "2026-11-26 10:00:00.",
            "2026-11-26 10:00:00.12a",
            "2026-11-26",
            "1764129600",
        ] {
            assert_eq!(Timestamp::parse(nonsense), None, "{nonsense:?}");
        }
    }

    #[test]
    fn the_text_form_round_trips() {
        let t = Timestamp::parse("2026-11-26 10:00:00.250").unwrap();
        assert_eq!(t.text(), "2026-11-26 10:00:00.250");
        assert_eq!(Timestamp::parse(&t.text()), Some(t));
        assert_eq!(t.to_string(), "2026-11-26T10:00:00.250Z");
        let now = Timestamp::now();
        let back = Timestamp::parse(&now.text()).unwrap();
        let apart = SystemTime::from(now).duration_since(back.into()).unwrap();
        assert!(apart.as_millis() < 1, "milliseconds are kept: {apart:?}");
    }

    #[test]
    fn unix_seconds_within_reason_only() {
        let t = Timestamp::from_unix_seconds(1_764_129_600.5).unwrap();
        assert_eq!(t.text(), "2025-11-26 04:00:00.500");
        assert_eq!(
            Timestamp::from_unix_seconds(0.0).unwrap().text(),
            "1970-01-01 00:00:00.000"
        );
        for nonsense in [
            1e300,
            -1.0,
            1_764_129_600_000_000.0,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(Timestamp::from_unix_seconds(nonsense), None, "{nonsense}");
        }
    }

    #[test]
    fn system_time_converts_both_ways() {
        let now = SystemTime::now();
        assert_eq!(SystemTime::from(Timestamp::from(now)), now);
    }
}
