//! PostgreSQL rows read through the same mappings as SQLite's (`store/row.rs`): each value
//! becomes the SQLite value it would be (integers, text, booleans as 0/1, times as the
//! stored text form), so both stores make the same of a row and refuse the same odd values
//! (a name `psql` wrote that is no name, say).

use chrono::{DateTime, Utc};
use rusqlite::types::{Value, ValueRef};
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use crate::store::row::{self, RowReader, Values};
use crate::store::time::Timestamp;
use crate::store::{StoreError, StoreResult};

/// A row's values, converted.
pub struct PgValues {
    columns: Vec<(String, Value)>,
}

impl PgValues {
    pub fn of(row: &Row) -> StoreResult<PgValues> {
        let mut columns = Vec::with_capacity(row.len());
        for (i, column) in row.columns().iter().enumerate() {
            let value = convert(row, i, column.type_())?;
            columns.push((column.name().to_owned(), value));
        }
        Ok(PgValues { columns })
    }
}

fn convert(row: &Row, i: usize, ty: &Type) -> StoreResult<Value> {
    let failed = |e: tokio_postgres::Error| StoreError::from(e);
    Ok(match *ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map_err(failed)?.into(),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map_err(failed)?.into(),
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map_err(failed)?.into(),
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map_err(failed)?.into(),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i).map_err(failed)?.into(),
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<DateTime<Utc>>>(i)
            .map_err(failed)?
            .map(|t| Timestamp::from(std::time::SystemTime::from(t)).text())
            .into(),
        _ => row.try_get::<_, Option<String>>(i).map_err(failed)?.into(),
    })
}

impl Values for PgValues {
    fn value(&self, column: &'static str) -> rusqlite::Result<ValueRef<'_>> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, v)| ValueRef::from(v))
            .ok_or_else(|| rusqlite::Error::InvalidColumnName(column.to_owned()))
    }

    fn index(&self, column: &'static str) -> usize {
        self.columns
            .iter()
            .position(|(name, _)| name == column)
            .unwrap_or_default()
    }
}

/// Reads `row` with `map` (one of the stores' mappings).
pub fn read<T>(row: &Row, map: impl FnOnce(&RowReader) -> T) -> StoreResult<T> {
    Ok(row::read(&PgValues::of(row)?, map)?)
}

/// Reads every row with `map`.
pub fn read_all<T>(rows: &[Row], map: impl Fn(&RowReader) -> T) -> StoreResult<Vec<T>> {
    rows.iter().map(|r| read(r, &map)).collect()
}
