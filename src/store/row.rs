//! Reading a row by column name, whatever SQLite type each value has.
//!
//! Other programs write kindler's tables with the `sqlite3` command, and SQLite keeps
//! whatever type they wrote: `pf_port = ''`, `created_at = strftime('%s')`, a blob, 1e300.
//! The getters here read what such a value means, or say why it cannot be read (naming the
//! column and the value); each table's mapping decides what an unreadable value makes of
//! the row. No value makes the query fail: only a column the query does not have (a
//! mistake in kindler's own SQL) does.

use std::cell::RefCell;
use std::fmt;

use rusqlite::types::ValueRef;
use rusqlite::Row;

use super::time::Timestamp;

/// A row's values by column name, as SQLite's types (NULL, integer, real, text, blob). A
/// PostgreSQL row is read through the same getters (`postgres/rows.rs`), so both stores
/// make the same of a value.
pub trait Values {
    fn value(&self, column: &'static str) -> rusqlite::Result<ValueRef<'_>>;
    /// The position of `column`, for errors.
    fn index(&self, column: &'static str) -> usize;
}

impl Values for Row<'_> {
    fn value(&self, column: &'static str) -> rusqlite::Result<ValueRef<'_>> {
        self.get_ref(column)
    }

    fn index(&self, column: &'static str) -> usize {
        self.as_ref().column_index(column).unwrap_or_default()
    }
}

/// Reads one row with `map`, which gets the row's values by column name.
pub fn read<T>(row: &dyn Values, map: impl FnOnce(&RowReader) -> T) -> rusqlite::Result<T> {
    let reader = RowReader {
        row,
        failed: RefCell::new(None),
    };
    let value = map(&reader);
    match reader.failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(value),
    }
}

/// A row, read by column name (see [`read`]).
pub struct RowReader<'a> {
    row: &'a dyn Values,
    /// The first error that is kindler's own (a column the query lacks, a row id that is
    /// no integer): it fails the query, as a mistake in the SQL should.
    failed: RefCell<Option<rusqlite::Error>>,
}

/// A value kindler cannot read as what its column holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub column: &'static str,
    /// The value as SQL writes it: `'abc'`, `1e300`, `x'00ff'`, `NULL`.
    pub value: String,
    /// What the column should hold: "an integer", "a time", …
    pub expected: &'static str,
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} holds {}, which is not {}",
            self.column, self.value, self.expected
        )
    }
}

impl RowReader<'_> {
    fn value(&self, column: &'static str) -> ValueRef<'_> {
        match self.row.value(column) {
            Ok(v) => v,
            Err(e) => {
                self.fail(e);
                ValueRef::Null
            }
        }
    }

    fn fail(&self, e: rusqlite::Error) {
        self.failed.borrow_mut().get_or_insert(e);
    }

    /// Says that `column`'s value is not `expected`.
    pub fn unreadable(&self, column: &'static str, expected: &'static str) -> Unreadable {
        Unreadable {
            column,
            value: sql_literal(self.value(column)),
            expected,
        }
    }

    /// A row id (an `INTEGER PRIMARY KEY`, which SQLite keeps an integer whatever is
    /// written): anything else fails the query.
    pub fn key(&self, column: &'static str) -> i64 {
        match self.value(column) {
            ValueRef::Integer(i) => i,
            other => {
                let e = rusqlite::Error::InvalidColumnType(
                    self.row.index(column),
                    column.to_owned(),
                    other.data_type(),
                );
                self.fail(e);
                0
            }
        }
    }

    /// A text column; a number is written out, a blob read as UTF-8 (lossily).
    pub fn text(&self, column: &'static str) -> Option<String> {
        Some(match self.value(column) {
            ValueRef::Null => return None,
            ValueRef::Integer(i) => i.to_string(),
            ValueRef::Real(f) => f.to_string(),
            ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
        })
    }

    /// An integer column: an integer, a real without fractions, or text holding an
    /// integer. NULL and empty text (what an unset shell variable writes) are `None`.
    pub fn integer(&self, column: &'static str) -> Result<Option<i64>, Unreadable> {
        let read = match self.value(column) {
            ValueRef::Null => return Ok(None),
            ValueRef::Integer(i) => Some(i),
            // The range is a power of two below i64::MAX, exact as f64.
            ValueRef::Real(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Some(f as i64),
            ValueRef::Text(t) => match std::str::from_utf8(t).map(str::trim) {
                Ok("") => return Ok(None),
                Ok(t) => t.parse().ok(),
                Err(_) => None,
            },
            ValueRef::Real(_) | ValueRef::Blob(_) => None,
        };
        read.map(Some)
            .ok_or_else(|| self.unreadable(column, "an integer"))
    }

    /// [`RowReader::integer`] of a column that must hold one (NULL cannot be read).
    pub fn required_integer(&self, column: &'static str) -> Result<i64, Unreadable> {
        self.integer(column)?
            .ok_or_else(|| self.unreadable(column, "an integer"))
    }

    /// A boolean column: 0/1 as kindler writes it (any other integer is true), or
    /// `true`/`false` as a script might. NULL and empty text are `None`.
    pub fn flag(&self, column: &'static str) -> Result<Option<bool>, Unreadable> {
        let read = match self.value(column) {
            ValueRef::Null => return Ok(None),
            ValueRef::Integer(i) => Some(i != 0),
            ValueRef::Real(f) if f.fract() == 0.0 => Some(f != 0.0),
            ValueRef::Text(t) => match std::str::from_utf8(t).map(str::trim) {
                Ok("") => return Ok(None),
                Ok("0") => Some(false),
                Ok("1") => Some(true),
                Ok(t) if t.eq_ignore_ascii_case("false") => Some(false),
                Ok(t) if t.eq_ignore_ascii_case("true") => Some(true),
                _ => None,
            },
            ValueRef::Real(_) | ValueRef::Blob(_) => None,
        };
        read.map(Some)
            .ok_or_else(|| self.unreadable(column, "0, 1, true or false"))
    }

    /// A timestamp column: text in one of the forms [`Timestamp::parse`] reads, or Unix
    /// seconds as `strftime('%s')` writes them. NULL and empty text are `None`.
    pub fn timestamp(&self, column: &'static str) -> Result<Option<Timestamp>, Unreadable> {
        let read = match self.value(column) {
            ValueRef::Null => return Ok(None),
            ValueRef::Integer(i) => Timestamp::from_unix_seconds(i as f64),
            ValueRef::Real(f) => Timestamp::from_unix_seconds(f),
            ValueRef::Text(t) | ValueRef::Blob(t) => match String::from_utf8_lossy(t).trim() {
                "" => return Ok(None),
                t => Timestamp::parse(t),
            },
        };
        read.map(Some)
            .ok_or_else(|| self.unreadable(column, "a time"))
    }
}

/// A value as SQL writes it, cut short when long.
fn sql_literal(v: ValueRef) -> String {
    const TEXT: usize = 40;
    const BYTES: usize = 16;
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => {
            let t = String::from_utf8_lossy(t);
            let mut shown: String = t.chars().take(TEXT).collect();
            if shown.len() < t.len() {
                shown.push('…');
            }
            format!("'{}'", shown.replace('\'', "''"))
        }
        ValueRef::Blob(b) => {
            let hex: String = b.iter().take(BYTES).map(|c| format!("{c:02x}")).collect();
            let more = if b.len() > BYTES { "…" } else { "" };
            let unit = if b.len() == 1 { "byte" } else { "bytes" };
            format!("x'{hex}{more}' (a blob of {} {unit})", b.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// Reads the value `sql` (an SQL expression) with `get`, as the column `v`.
    fn with<T>(sql: &str, get: impl FnOnce(&RowReader) -> T) -> T {
        let conn = Connection::open_in_memory().unwrap();
        conn.query_row(&format!("SELECT {sql} AS v"), [], |r| read(r, get))
            .unwrap()
    }

    fn integer(sql: &str) -> Result<Option<i64>, String> {
        with(sql, |r| r.integer("v").map_err(|e| e.to_string()))
    }

    #[test]
    fn integers_of_every_type() {
        assert_eq!(integer("42"), Ok(Some(42)));
        assert_eq!(integer("-7"), Ok(Some(-7)));
        assert_eq!(integer("19400.0"), Ok(Some(19400)));
        assert_eq!(integer("' 19400 '"), Ok(Some(19400)));
        assert_eq!(integer("NULL"), Ok(None));
        assert_eq!(integer("''"), Ok(None));
        assert_eq!(integer("'  '"), Ok(None));
        let not = |v: &str| Err(format!("v holds {v}, which is not an integer"));
        assert_eq!(integer("'abc'"), not("'abc'"));
        assert_eq!(integer("1e300"), not("1e300"));
        assert_eq!(integer("-1e300"), not("-1e300"));
        assert_eq!(integer("19400.5"), not("19400.5"));
        assert_eq!(integer("x'00ff'"), not("x'00ff' (a blob of 2 bytes)"));
        assert_eq!(integer("'it''s'"), not("'it''s'"));
        assert_eq!(
            integer("'9223372036854775808'"),
            not("'9223372036854775808'")
        );
    }

    #[test]
    fn flags_of_every_type() {
        let flag = |sql: &str| with(sql, |r| r.flag("v").map_err(|e| e.to_string()));
        for (sql, want) in [
            ("0", Some(false)),
            ("1", Some(true)),
            ("2", Some(true)),
            ("-1", Some(true)),
            ("0.0", Some(false)),
            ("'0'", Some(false)),
            ("'1'", Some(true)),
            ("'false'", Some(false)),
            ("'TRUE'", Some(true)),
            ("' true '", Some(true)),
            ("NULL", None),
            ("''", None),
        ] {
            assert_eq!(flag(sql), Ok(want), "{sql}");
        }
        for (sql, shown) in [("'yes'", "'yes'"), ("0.5", "0.5"), ("x'01'", "x'01'")] {
            let e = flag(sql).unwrap_err();
            assert!(
                e.starts_with(&format!("v holds {shown}")) && e.ends_with("0, 1, true or false"),
                "{e}"
            );
        }
    }

    #[test]
    fn timestamps_of_every_type() {
        let time = |sql: &str| {
            with(sql, |r| {
                r.timestamp("v")
                    .map(|t| t.map(Timestamp::text))
                    .map_err(|e| e.to_string())
            })
        };
        let at = |text: &str| Ok(Some(text.to_owned()));
        assert_eq!(time("'2026-11-26 10:00:00'"), at("2026-11-26 10:00:00.000"));
        assert_eq!(
            time("'2026-11-26T10:00:00.5Z'"),
            at("2026-11-26 10:00:00.500")
        );
        assert_eq!(time("1764129600"), at("2025-11-26 04:00:00.000"));
        assert_eq!(time("1764129600.25"), at("2025-11-26 04:00:00.250"));
        assert_eq!(
            time("CAST('2026-11-26 10:00:00' AS BLOB)"),
            at("2026-11-26 10:00:00.000")
        );
        assert_eq!(time("NULL"), Ok(None));
        assert_eq!(time("''"), Ok(None));
        for (sql, shown) in [
            ("'soon'", "'soon'"),
            ("1e300", "1e300"),
            ("-1", "-1"),
            ("1764129600000000", "1764129600000000"),
            ("x'00'", "x'00' (a blob of 1 byte)"),
        ] {
            assert_eq!(
                time(sql),
                Err(format!("v holds {shown}, which is not a time")),
                "{sql}"
            );
        }
    }

    #[test]
    fn text_of_every_type() {
        let text = |sql: &str| with(sql, |r| r.text("v"));
        assert_eq!(text("'dev'").as_deref(), Some("dev"));
        assert_eq!(text("42").as_deref(), Some("42"));
        assert_eq!(text("0.5").as_deref(), Some("0.5"));
        assert_eq!(text("x'6465'").as_deref(), Some("de"));
        assert_eq!(text("x'ff'").as_deref(), Some("\u{fffd}"));
        assert_eq!(text("NULL"), None);
    }

    #[test]
    fn long_values_are_cut_short_in_messages() {
        let e = with("printf('%.100c', 'a')", |r| r.unreadable("v", "short"));
        assert_eq!(e.value, format!("'{}…'", "a".repeat(40)));
        let e = with("zeroblob(100)", |r| r.unreadable("v", "short"));
        assert_eq!(
            e.value,
            format!("x'{}…' (a blob of 100 bytes)", "00".repeat(16))
        );
    }

    #[test]
    fn a_column_the_query_lacks_or_a_key_that_is_no_integer_fails_the_query() {
        let conn = Connection::open_in_memory().unwrap();
        let lacks = conn.query_row("SELECT 1 AS v", [], |r| read(r, |r| r.text("w")));
        assert!(
            matches!(lacks, Err(rusqlite::Error::InvalidColumnName(ref c)) if c == "w"),
            "{lacks:?}"
        );
        let key = conn.query_row("SELECT 'x' AS id", [], |r| read(r, |r| r.key("id")));
        assert!(
            matches!(key, Err(rusqlite::Error::InvalidColumnType(..))),
            "{key:?}"
        );
        let key = conn.query_row("SELECT 7 AS id", [], |r| read(r, |r| r.key("id")));
        assert_eq!(key.unwrap(), 7);
    }
}
