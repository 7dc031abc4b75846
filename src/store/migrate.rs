//! Schema migrations: the SQL files in `migrations/`, applied in order at start-up inside
//! one transaction, and recorded in the `schema_migrations` table of the file itself.
//!
//! A database left behind by the old Python backend has a `clusters` table but no record
//! of migrations. It is adopted: the first migration's `CREATE TABLE IF NOT EXISTS`
//! statements leave its tables alone, the state columns that older files lack are added,
//! and from then on it is upgraded like any other file. No row is rewritten or dropped.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::time::Timestamp;
use super::{StoreError, StoreResult};

/// A migration that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
}

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "legacy_schema",
        include_str!("../../migrations/0001_legacy_schema.sql"),
    ),
    (
        2,
        "reconciler_state",
        include_str!("../../migrations/0002_reconciler_state.sql"),
    ),
    (
        3,
        "leaner_writes",
        include_str!("../../migrations/0003_leaner_writes.sql"),
    ),
    (
        4,
        "add_on_status",
        include_str!("../../migrations/0004_add_on_status.sql"),
    ),
    (
        5,
        "monotonic_change_feed",
        include_str!("../../migrations/0005_monotonic_change_feed.sql"),
    ),
    (
        6,
        "change_counter",
        include_str!("../../migrations/0006_change_counter.sql"),
    ),
];

/// The columns of the old `clusters` table that can be added when a file lacks them, with
/// their types as the old backend declared them. The oldest files lack the five state
/// columns; a file some tool built by hand may lack others.
const LEGACY_OPTIONAL_COLUMNS: &[(&str, &str)] = &[
    ("subnet", "TEXT"),
    ("node_port", "INTEGER"),
    ("pf_port", "INTEGER"),
    ("http_port", "INTEGER"),
    ("https_port", "INTEGER"),
    ("server_ip", "TEXT"),
    ("created_at", "TIMESTAMP"),
    ("updated_at", "TIMESTAMP"),
    ("status", "TEXT DEFAULT 'unknown'"),
    ("desired_state", "TEXT DEFAULT 'present'"),
    ("actual_state", "TEXT DEFAULT 'unknown'"),
    ("last_reconciled_at", "TIMESTAMP"),
    ("reconcile_error", "TEXT"),
];

pub fn run(conn: &mut Connection) -> StoreResult<Vec<Migration>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TIMESTAMP NOT NULL
         )",
    )?;
    let mut current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations",
        [],
        |r| r.get("version"),
    )?;
    let newest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > newest {
        return Err(StoreError::NewerSchema {
            found: current,
            known: newest,
        });
    }
    let mut applied = Vec::new();
    if current == 0 && table_exists(&tx, "clusters")? {
        adopt_legacy(&tx)?;
        current = 1;
        applied.push(Migration {
            version: 1,
            name: "legacy_schema (adopted the existing tables)",
        });
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migration {
                version,
                name,
                source,
            })?;
        record(&tx, version, name)?;
        applied.push(Migration { version, name });
    }
    tx.commit()?;
    Ok(applied)
}

fn adopt_legacy(tx: &Transaction) -> StoreResult<()> {
    let (version, name, sql) = MIGRATIONS[0];
    let failed = |source| StoreError::Migration {
        version,
        name,
        source,
    };
    // Creates whatever legacy table is missing (an old file may have only `clusters`).
    tx.execute_batch(sql).map_err(failed)?;
    let present = columns(tx, "clusters")?;
    // Without these kindler cannot tell one cluster from another: refuse, untouched.
    for required in ["id", "name", "provider"] {
        if !present.iter().any(|c| c == required) {
            return Err(StoreError::NotAdoptable {
                missing: required,
                columns: present,
            });
        }
    }
    for (column, decl) in LEGACY_OPTIONAL_COLUMNS {
        if !present.iter().any(|c| c == column) {
            tx.execute_batch(&format!("ALTER TABLE clusters ADD COLUMN {column} {decl}"))
                .map_err(failed)?;
        }
    }
    record(tx, 1, "legacy_schema (adopted)")
}

fn record(tx: &Transaction, version: i64, name: &str) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
        rusqlite::params![version, name, Timestamp::now()],
    )?;
    Ok(())
}

fn table_exists(tx: &Transaction, table: &str) -> StoreResult<bool> {
    Ok(tx.query_row(
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get::<_, i64>("n"),
    )? > 0)
}

fn columns(tx: &Transaction, table: &str) -> StoreResult<Vec<String>> {
    let mut stmt = tx.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>("name"))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names)
}
