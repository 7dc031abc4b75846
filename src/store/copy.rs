//! `kindler migrate --to postgres://…`: a host's SQLite database (its clusters and their
//! history) copied into a PostgreSQL database that a fleet shares.
//!
//! The copy is one PostgreSQL transaction: all of it lands, or none. It is refused, with
//! nothing written, when the copy could not be faithful:
//! - a row of the file cannot be read (kindler would not act on it either): fix or forget
//!   it first, so that no cluster is silently left behind;
//! - the target already holds clusters of the same host (a second copy of one file) or of
//!   the same names (names are unique across a fleet).
//!
//! Every cluster keeps its declared and observed state, generations, attempts and times,
//! so the agent that starts on the new database carries on where the SQLite daemon left
//! off instead of creating everything again. Clusters get new ids (other hosts' clusters
//! already have theirs); runs follow their cluster's, and runs of clusters that no longer
//! exist keep their name with cluster id 0. A run the file holds without an end (its
//! daemon died) keeps its process tag, so the new agent's recovery reaps what it left.

use std::collections::HashMap;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use rusqlite::Connection;

use super::clusters::ClusterRecord;
use super::postgres::Postgres;
use super::row::{self, RowReader};
use super::runs::{self, RunRecord};
use super::time::Timestamp;
use super::{Sqlite, StoreError, StoreResult};

/// What was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub clusters: usize,
    pub runs: usize,
}

/// Why the copy was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{} row(s) of the SQLite database cannot be read, so they would be left behind: \
         {}; correct them with sqlite3, or remove them (start kindler on the file and \
         POST /api/clusters/NAME/forget), then copy again",
        .0.len(),
        .0.join("; ")
    )]
    Unreadable(Vec<String>),
    #[error(
        "the PostgreSQL database already holds {count} cluster(s) of host {host}: it was \
         copied there before, or an agent of that host already runs on it; nothing was copied"
    )]
    HostTaken { host: String, count: i64 },
    #[error(
        "the PostgreSQL database already has clusters named {}: names are unique across a \
         fleet; forget or rename them on one side, then copy again",
        .0.join(", ")
    )]
    NamesTaken(Vec<String>),
}

/// A run with what recovery needs of it besides what the history shows.
struct CopiedRun {
    record: RunRecord,
    pgid: Option<i32>,
    process_tag: Option<String>,
}

/// Copies every cluster and run of `from` into `to`, as host `host`'s.
pub async fn sqlite_to_postgres(
    from: &Sqlite,
    to: &Postgres,
    host: &str,
) -> Result<Copied, CopyError> {
    let (clusters, bad) = split(from.list().await?);
    if !bad.is_empty() {
        return Err(CopyError::Unreadable(bad));
    }
    let history = from.read(all_runs).await?;
    let mut client = to.pooled().await?;
    let tx = client.transaction().await.map_err(StoreError::from)?;
    let count: i64 = tx
        .query_one("SELECT count(*) FROM clusters WHERE host = $1", &[&host])
        .await
        .map_err(StoreError::from)?
        .get(0);
    if count > 0 {
        return Err(CopyError::HostTaken {
            host: host.to_owned(),
            count,
        });
    }
    let names: Vec<&str> = clusters.iter().map(|c| c.spec.name.as_str()).collect();
    let taken: Vec<String> = tx
        .query(
            "SELECT name FROM clusters WHERE name = ANY($1) ORDER BY name",
            &[&names],
        )
        .await
        .map_err(StoreError::from)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !taken.is_empty() {
        return Err(CopyError::NamesTaken(taken));
    }
    let mut ids = HashMap::new();
    for c in &clusters {
        ids.insert(c.id, insert_cluster(&tx, c, host).await?);
    }
    for run in &history {
        let cluster_id = run
            .record
            .cluster_id
            .and_then(|old| ids.get(&old).copied())
            .unwrap_or(0);
        insert_run(&tx, run, cluster_id, host).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Copied {
        clusters: clusters.len(),
        runs: history.len(),
    })
}

/// The readable clusters, and a description of each row that is not.
fn split(rows: Vec<super::clusters::Parsed>) -> (Vec<ClusterRecord>, Vec<String>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for row in rows {
        match row {
            Ok(c) => good.push(c),
            Err(invalid) => bad.push(invalid.to_string()),
        }
    }
    (good, bad)
}

/// Every run of the file, oldest first.
fn all_runs(conn: &Connection) -> StoreResult<Vec<CopiedRun>> {
    let sql = format!(
        "SELECT {}, pgid, process_tag FROM reconcile_runs ORDER BY id",
        runs::COLUMNS
    );
    let mut stmt = conn.prepare(&sql)?;
    let found = stmt
        .query_map([], |r| {
            row::read(r, |reader: &RowReader| CopiedRun {
                record: runs::run(reader),
                pgid: reader
                    .integer("pgid")
                    .ok()
                    .flatten()
                    .and_then(|p| p.try_into().ok()),
                process_tag: reader.text("process_tag").filter(|t| !t.is_empty()),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(found)
}

fn utc(t: Option<Timestamp>) -> Option<DateTime<Utc>> {
    t.map(|t| SystemTime::from(t).into())
}

async fn insert_cluster(
    tx: &tokio_postgres::Transaction<'_>,
    c: &ClusterRecord,
    host: &str,
) -> StoreResult<i64> {
    let spec = &c.spec;
    let row = tx
        .query_one(
            "INSERT INTO clusters (name, host, provider, subnet, node_port, pf_port, http_port,
                 https_port, register_portainer, haproxy_route, register_argocd, status,
                 desired_state, actual_state, created_at, updated_at, last_reconciled_at,
                 last_transition_at, next_attempt_at, reconcile_error, generation,
                 observed_generation, attempts, last_action, nodes_ready, nodes_total,
                 portainer_status, argocd_status, change_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $13, $12, $13,
                 COALESCE($14, now()), COALESCE($15, now()), $16, $17, $18, $19, $20, $21,
                 $22, $23, $24, $25, $26, $27, next_change_seq())
             RETURNING id",
            &[
                &spec.name.as_str(),
                &host,
                &spec.provider.as_str(),
                &spec.cluster_subnet,
                &i32::from(spec.node_port),
                &i32::from(spec.pf_port),
                &i32::from(spec.http_port),
                &i32::from(spec.https_port),
                &spec.register_portainer,
                &spec.haproxy_route,
                &spec.register_argocd,
                &c.desired.as_str(),
                &c.actual.as_str(),
                &utc(c.created_at),
                &utc(c.updated_at),
                &utc(c.last_reconciled_at),
                &utc(c.last_transition_at),
                &utc(c.next_attempt_at),
                &c.reconcile_error,
                &c.generation,
                &c.observed_generation,
                &i64::from(c.attempts),
                &c.last_action.map(|a| a.as_str()),
                &c.nodes_ready,
                &c.nodes_total,
                &c.add_ons.portainer.as_str(),
                &c.add_ons.argocd.as_str(),
            ],
        )
        .await?;
    Ok(row.get(0))
}

async fn insert_run(
    tx: &tokio_postgres::Transaction<'_>,
    run: &CopiedRun,
    cluster_id: i64,
    host: &str,
) -> StoreResult<()> {
    let r = &run.record;
    let tail = (!r.output_tail.is_empty()).then(|| r.output_tail.join("\n"));
    tx.execute(
        "INSERT INTO reconcile_runs (host, cluster_id, cluster_name, action, generation,
             attempt, outcome, started_at, ended_at, duration_ms, exit_code, signal, error,
             output_tail, pgid, process_tag)
         VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8, now()), $9, $10, $11, $12, $13,
             $14, $15, $16)",
        &[
            &host,
            &cluster_id,
            &r.cluster_name,
            &r.action.as_str(),
            &r.generation.unwrap_or(0),
            &r.attempt.map(i64::from).unwrap_or(0),
            &r.outcome.as_str(),
            &utc(r.started_at),
            &utc(r.ended_at),
            &r.duration_ms,
            &r.exit_code,
            &r.signal,
            &r.error,
            &tail,
            &run.pgid,
            &run.process_tag,
        ],
    )
    .await?;
    Ok(())
}
