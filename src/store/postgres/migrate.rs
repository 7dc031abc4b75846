//! Schema migrations on PostgreSQL: the SQL files in `migrations/postgres/`, applied in
//! order at start-up in one transaction and recorded in `schema_migrations`, as on SQLite.
//! Agents starting together take a session-wide advisory lock first: one migrates, the
//! others wait and then find nothing left to do.

use tokio_postgres::Client;

use crate::store::migrate::Migration;
use crate::store::{StoreError, StoreResult};

const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "fleet",
    include_str!("../../../migrations/postgres/0001_fleet.sql"),
)];

/// The advisory lock's key: "kindler" in ASCII, so that other users of the database can
/// tell whose it is.
const LOCK_KEY: i64 = 0x6b696e646c6572;

pub async fn run(client: &mut Client) -> StoreResult<Vec<Migration>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let applied = apply(client).await;
    // Released whatever happened; a connection that broke released it anyway.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    applied
}

async fn apply(client: &mut Client) -> StoreResult<Vec<Migration>> {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let newest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > newest {
        return Err(StoreError::NewerSchema {
            found: current,
            known: newest,
        });
    }
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Config(format!(
                "PostgreSQL migration {version:04}_{name} failed: {e}"
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await?;
        applied.push(Migration { version, name });
    }
    tx.commit().await?;
    Ok(applied)
}
