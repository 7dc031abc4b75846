//! The PostgreSQL backend: one database that several agents share, one agent per host.
//!
//! Statements go through a pool of at most [`POOL_SIZE`] connections (deadpool), and one
//! more connection LISTENs for changes (`listen.rs`): at most four per agent. The schema
//! is `migrations/postgres/`; rows are read through the same mappings as SQLite's
//! (`rows.rs`).
//!
//! Every agent serves the whole fleet's API; it acts only on its own host's clusters: the
//! reconciler's reads (schedule, feed, unfinished runs, summary) are of its host, and its
//! writes of an action's progress or end (`begin_run`, `record_end`, `mark_interrupted`)
//! are fenced: they lock the host's lease row and go ahead only while its fence number is
//! the one this agent acquired (see `lease.rs` and DESIGN.md).

pub mod connect;
pub mod lease;
mod listen;
mod migrate;
mod rows;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::clusters::{self, ClusterRecord, FleetHost, Parsed, RowUpdate, ScheduleRow, Summary};
use super::migrate::Migration;
use super::ports::{self, PortBook, Refusal};
use super::row::RowReader;
use super::runs::{self, NewRun, RunRecord, Unfinished};
use super::{Created, Epoch, NewCluster, Recorded, RunEnding, StoreError, StoreResult, TaskLookup};
use crate::model::{Action, ActualState, ClusterName, ClusterSpec, DesiredState, PortRange};

/// Pooled connections per agent; with the listener's, four.
pub const POOL_SIZE: usize = 3;
/// How long a statement waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How often the feed is read even without a notification (the safety net).
const FEED_RESYNC: Duration = Duration::from_secs(2);
/// Creates take this transaction-level advisory lock: placement and ports are decided by
/// one create at a time, as SQLite's single writer does.
const CREATE_LOCK: i64 = 0x6b696e646c6572 + 1;

/// The columns of a cluster row, with its host's liveness.
const COLUMNS: &str = "c.id, c.name, c.host, c.provider, c.subnet, c.node_port, c.pf_port, \
     c.http_port, c.https_port, c.register_portainer, c.haproxy_route, c.register_argocd, \
     c.desired_state, c.actual_state, c.created_at, c.updated_at, c.last_reconciled_at, \
     c.last_transition_at, c.next_attempt_at, c.reconcile_error, c.generation, \
     c.observed_generation, c.attempts, c.last_action, c.nodes_ready, c.nodes_total, \
     c.portainer_status, c.argocd_status, COALESCE(h.expires_at > now(), false) AS host_reachable";
const FROM: &str = "clusters c LEFT JOIN hosts h ON h.name = c.host";

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The URL without a password, for messages.
    shown: String,
    /// This agent's host and its identity in the lease.
    host: String,
    agent: String,
    /// The fence number of the lease this agent holds; 0 while it holds none.
    fence: AtomicI64,
    held: tokio::sync::watch::Sender<bool>,
    epoch: Arc<Epoch>,
    /// Rung when this host's feed moved (a notification).
    feed: Arc<Notify>,
    link: Arc<listen::Link>,
    last_resync: Mutex<Instant>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Postgres {
    /// Connects, brings the schema up to date (under an advisory lock) and starts the
    /// listener. `password` comes from a file or a credential.
    pub async fn open(
        url: &str,
        password: Option<String>,
        host: &str,
        epoch: Arc<Epoch>,
    ) -> StoreResult<(Postgres, Vec<Migration>)> {
        let mut target = connect::parse(url).map_err(StoreError::Config)?;
        if let Some(password) = password {
            target.config.password(password);
        }
        let tls = connect::tls_connector(&target).map_err(StoreError::Config)?;
        let manager = Manager::from_config(
            target.config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(connect::CONNECT_TIMEOUT * 2))
            .recycle_timeout(Some(connect::CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Config(format!("cannot build the connection pool: {e}")))?;
        let mut client = pool.get().await?;
        let applied = migrate::run(&mut client).await?;
        drop(client);
        let feed = Arc::new(Notify::new());
        let link = Arc::new(listen::Link::default());
        let stop = CancellationToken::new();
        tokio::spawn(listen::run(
            target,
            tls,
            listen::Bells {
                host: host.to_owned(),
                epoch: epoch.clone(),
                feed: feed.clone(),
                link: link.clone(),
            },
            stop.clone(),
        ));
        let store = Postgres {
            inner: Arc::new(Inner {
                pool,
                shown: connect::redact(url),
                host: host.to_owned(),
                agent: agent_id(host),
                fence: AtomicI64::new(0),
                held: tokio::sync::watch::Sender::new(false),
                epoch,
                feed,
                link,
                last_resync: Mutex::new(Instant::now()),
                stop,
            }),
        };
        Ok((store, applied))
    }

    pub fn describe(&self) -> String {
        self.inner.shown.clone()
    }

    pub fn host(&self) -> &str {
        &self.inner.host
    }

    async fn client(&self) -> StoreResult<Object> {
        Ok(self.inner.pool.get().await?)
    }

    /// A pooled connection for a transaction of the store's own (`copy.rs`).
    pub(in crate::store) async fn pooled(&self) -> StoreResult<Object> {
        self.client().await
    }

    /// Begins a transaction on a pooled connection (see [`Tx`]).
    async fn begin(&self) -> StoreResult<Tx> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await?;
        Ok(Tx {
            client: Some(client),
        })
    }

    /// Commits `tx`; the epoch moves.
    async fn commit(&self, mut tx: Tx) -> StoreResult<()> {
        if let Some(client) = tx.client.take() {
            client.batch_execute("COMMIT").await?;
        }
        self.inner.epoch.bump();
        Ok(())
    }

    /// Fails unless this agent holds its host's lease (the row is locked until the
    /// transaction ends, so that no takeover lands in between).
    async fn fenced(&self, tx: &Client) -> StoreResult<()> {
        let held = self.inner.fence.load(Ordering::Acquire);
        let current: Option<i64> = tx
            .query_opt(
                "SELECT fence FROM hosts WHERE name = $1 FOR SHARE",
                &[&self.inner.host],
            )
            .await?
            .map(|r| r.get(0));
        if held == 0 || current != Some(held) {
            return Err(StoreError::Fenced {
                host: self.inner.host.clone(),
                held,
                current,
            });
        }
        Ok(())
    }

    /// There is no file to check; the database's reachability is health's business.
    pub fn check_file(&self) -> StoreResult<()> {
        Ok(())
    }

    /// True when the feed should be read although no notification came: after the
    /// listener (re)connected, and every [`FEED_RESYNC`] as a safety net.
    pub async fn external_change(&self) -> StoreResult<bool> {
        if let Some(why) = self.inner.link.down() {
            return Err(StoreError::Unreachable(why));
        }
        let mut last = self.inner.last_resync.lock().unwrap();
        let due = last.elapsed() >= FEED_RESYNC;
        if due {
            *last = Instant::now();
        }
        Ok(self.inner.link.take_reconnected() || due)
    }

    /// Resolves when this host's feed moved (a notification came).
    pub async fn feed_moved(&self) {
        self.inner.feed.notified().await
    }

    // The operations of `Store` (see there).

    pub async fn ping(&self) -> StoreResult<()> {
        self.client().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    pub async fn probe_write(&self) -> StoreResult<()> {
        self.ping().await
    }

    pub async fn list(&self) -> StoreResult<Vec<Parsed>> {
        let sql = format!("SELECT {COLUMNS} FROM {FROM} ORDER BY c.created_at DESC, c.id DESC");
        let rows = self.client().await?.query(&sql, &[]).await?;
        rows::read_all(&rows, fleet_cluster)
    }

    pub async fn by_stored_name(&self, name: &str) -> StoreResult<Option<Parsed>> {
        let client = self.client().await?;
        cluster_where(&client, "c.name = $1", &[&name]).await
    }

    pub async fn by_id(&self, id: i64) -> StoreResult<Option<Parsed>> {
        let client = self.client().await?;
        cluster_where(&client, "c.id = $1", &[&id]).await
    }

    pub async fn history(
        &self,
        name: &ClusterName,
        limit: u32,
    ) -> StoreResult<(Option<Parsed>, Vec<RunRecord>)> {
        let client = self.client().await?;
        let row = cluster_where(&client, "c.name = $1", &[&name.as_str()]).await?;
        let sql = format!(
            "SELECT {} FROM reconcile_runs WHERE cluster_name = $1 ORDER BY id DESC LIMIT $2",
            runs::COLUMNS
        );
        let found = client
            .query(&sql, &[&name.as_str(), &i64::from(limit)])
            .await?;
        Ok((row, rows::read_all(&found, runs::run)?))
    }

    pub async fn task_lookups(
        &self,
        wanted: Vec<(ClusterName, Action)>,
    ) -> StoreResult<Vec<TaskLookup>> {
        let client = self.client().await?;
        let mut found = Vec::with_capacity(wanted.len());
        for (name, action) in wanted {
            let row = match cluster_where(&client, "c.name = $1", &[&name.as_str()]).await? {
                Some(Ok(row)) => Some(row),
                _ => None,
            };
            let (own, latest) = match &row {
                Some(r) => (
                    latest_run(&client, "cluster_id", &r.id, &[action]).await?,
                    latest_run(&client, "cluster_id", &r.id, &Action::ALL).await?,
                ),
                None => (
                    latest_run(&client, "cluster_name", &name.as_str(), &[action]).await?,
                    None,
                ),
            };
            found.push(TaskLookup { row, own, latest });
        }
        Ok(found)
    }

    pub async fn create_cluster(&self, new: NewCluster) -> StoreResult<Result<Created, Refusal>> {
        let tx = self.begin().await?;
        let created = create(&tx, new).await?;
        self.commit(tx).await?;
        Ok(created)
    }

    pub async fn declare(&self, name: &ClusterName, desired: DesiredState) -> StoreResult<bool> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE clusters SET desired_state = $2, next_attempt_at = NULL,
                        change_seq = next_change_seq()
                  WHERE name = $1",
                &[&name.as_str(), &desired.as_str()],
            )
            .await?;
        self.inner.epoch.bump();
        Ok(n > 0)
    }

    /// A running run's output so far, in its history row; other agents hear of it (their
    /// cached answers move) but their reconcilers are not woken. Fenced: it records the
    /// action's progress.
    pub async fn share_output(&self, run_id: i64, tail: &str) -> StoreResult<()> {
        let tx = self.begin().await?;
        self.fenced(&tx).await?;
        tx.execute(
            "UPDATE reconcile_runs SET output_tail = $2
              WHERE id = $1 AND host = $3 AND ended_at IS NULL",
            &[&run_id, &tail, &self.inner.host],
        )
        .await?;
        // The payload is no host name: no agent's reconciler takes it for its feed.
        let bell = format!("output:{}", self.inner.host);
        tx.query("SELECT pg_notify('kindler_changes', $1)", &[&bell])
            .await?;
        self.commit(tx).await
    }

    pub async fn forget(&self, name: &str) -> StoreResult<Option<i64>> {
        let row = self
            .client()
            .await?
            .query_opt(
                "DELETE FROM clusters WHERE name = $1 RETURNING id",
                &[&name],
            )
            .await?;
        self.inner.epoch.bump();
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn begin_run(&self, run: NewRun) -> StoreResult<i64> {
        let tx = self.begin().await?;
        self.fenced(&tx).await?;
        let run_id = begin_run(&tx, &self.inner.host, &run).await?;
        self.commit(tx).await?;
        Ok(run_id)
    }

    pub async fn record_end<D>(&self, ending: RunEnding, decide: D) -> StoreResult<Recorded>
    where
        D: FnOnce(&ClusterRecord) -> RowUpdate + Send + 'static,
    {
        let tx = self.begin().await?;
        self.fenced(&tx).await?;
        let recorded = record_end(&tx, ending, decide).await?;
        self.commit(tx).await?;
        Ok(recorded)
    }

    pub async fn mark_interrupted(
        &self,
        run_id: i64,
        note: String,
        cluster: Option<(i64, ActualState)>,
    ) -> StoreResult<()> {
        let tx = self.begin().await?;
        self.fenced(&tx).await?;
        tx.execute(
            "UPDATE reconcile_runs
                SET outcome = 'interrupted', ended_at = now(), error = $2,
                    duration_ms = (EXTRACT(EPOCH FROM now() - started_at) * 1000)::bigint
              WHERE id = $1",
            &[&run_id, &note],
        )
        .await?;
        if let Some((id, in_progress)) = cluster {
            mark_cluster_interrupted(&tx, id, in_progress, &note).await?;
        }
        self.commit(tx).await
    }

    pub async fn schedule(&self) -> StoreResult<(i64, Vec<ScheduleRow>)> {
        let client = self.client().await?;
        // The counter first: the rows read after it hold at least what it counts.
        let top = counter(&client).await?;
        let rows = client
            .query(
                "SELECT id, actual_state, desired_state, last_reconciled_at
                   FROM clusters WHERE host = $1",
                &[&self.inner.host],
            )
            .await?;
        Ok((top, rows::read_all(&rows, clusters::schedule_row)?))
    }

    pub async fn changed_since(&self, cursor: i64) -> StoreResult<(i64, Vec<i64>)> {
        let client = self.client().await?;
        let top = counter(&client).await?;
        let ids = client
            .query(
                "SELECT id FROM clusters
                  WHERE host = $1 AND change_seq > $2 AND change_seq <= $3
                  ORDER BY change_seq",
                &[&self.inner.host, &cursor, &top],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok((top, ids))
    }

    pub async fn odd_change_numbers(&self) -> StoreResult<Vec<(i64, String, String)>> {
        let client = self.client().await?;
        let top = counter(&client).await?;
        let rows = client
            .query(
                "SELECT id, name, change_seq::text FROM clusters
                  WHERE host = $1 AND (change_seq > $2 OR change_seq <= 0)",
                &[&self.inner.host, &top],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    pub async fn renumber(&self, id: i64) -> StoreResult<()> {
        self.client()
            .await?
            .execute(
                "UPDATE clusters SET change_seq = next_change_seq() WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(())
    }

    pub async fn summary(&self) -> StoreResult<Summary> {
        let client = self.client().await?;
        let counts = client
            .query(
                "SELECT actual_state, COUNT(*) FROM clusters WHERE host = $1 GROUP BY 1",
                &[&self.inner.host],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, Option<String>>(0), r.get::<_, i64>(1)))
            .collect();
        let next = client
            .query_opt(
                "SELECT name, next_attempt_at FROM clusters
                  WHERE host = $1 AND next_attempt_at IS NOT NULL
                  ORDER BY next_attempt_at LIMIT 1",
                &[&self.inner.host],
            )
            .await?;
        let next_retry = match next {
            Some(row) => Some(rows::read(&row, |r| {
                (
                    r.text("name").unwrap_or_default(),
                    r.timestamp("next_attempt_at").ok().flatten(),
                )
            })?),
            None => None,
        };
        Ok(Summary::of(counts, next_retry))
    }

    pub async fn state_counts(&self) -> StoreResult<crate::store::clusters::StateCounts> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT desired_state, actual_state, COUNT(*),
                        SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END)
                   FROM clusters WHERE host = $1 GROUP BY 1, 2",
                &[&self.inner.host],
            )
            .await?;
        Ok(crate::store::clusters::StateCounts::of(rows.iter().map(
            |r| {
                (
                    r.get::<_, Option<String>>(0),
                    r.get::<_, Option<String>>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, Option<i64>>(3),
                )
            },
        )))
    }

    pub async fn in_backoff(&self, now: crate::store::time::Timestamp) -> StoreResult<i64> {
        let now: DateTime<Utc> = utc(now.into());
        Ok(self
            .client()
            .await?
            .query_one(
                "SELECT COUNT(*) FROM clusters
                  WHERE host = $1 AND next_attempt_at IS NOT NULL AND next_attempt_at > $2",
                &[&self.inner.host, &now],
            )
            .await?
            .get(0))
    }

    pub async fn change_counter(&self) -> StoreResult<i64> {
        counter(&*self.client().await?).await
    }

    pub async fn unfinished_runs(&self) -> StoreResult<Vec<Unfinished>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, cluster_id, cluster_name, action, process_tag
                   FROM reconcile_runs WHERE host = $1 AND ended_at IS NULL ORDER BY id",
                &[&self.inner.host],
            )
            .await?;
        rows::read_all(&rows, runs::unfinished_run)
    }

    pub async fn prune_old(&self, max_age: Duration) -> StoreResult<usize> {
        let cutoff = utc(SystemTime::now() - max_age);
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM reconcile_runs
                  WHERE host = $1 AND ended_at IS NOT NULL AND ended_at < $2",
                &[&self.inner.host, &cutoff],
            )
            .await?;
        Ok(n as usize)
    }
}

/// Reads a cluster row with its host (selected with [`COLUMNS`]).
fn fleet_cluster(r: &RowReader) -> Parsed {
    let mut parsed = clusters::cluster(r);
    if let Ok(record) = &mut parsed {
        record.host = Some(FleetHost {
            name: r.text("host").unwrap_or_default(),
            reachable: r.flag("host_reachable").ok().flatten().unwrap_or(false),
        });
    }
    parsed
}

async fn cluster_where(
    client: &Client,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> StoreResult<Option<Parsed>> {
    let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE {filter}");
    match client.query_opt(&sql, params).await? {
        Some(row) => Ok(Some(rows::read(&row, fleet_cluster)?)),
        None => Ok(None),
    }
}

/// The newest run of one of `actions` whose `column` is `key`.
async fn latest_run(
    client: &Client,
    column: &str,
    key: &(dyn ToSql + Sync),
    actions: &[Action],
) -> StoreResult<Option<RunRecord>> {
    let actions: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
    let sql = format!(
        "SELECT {} FROM reconcile_runs WHERE {column} = $1 AND action = ANY($2)
          ORDER BY id DESC LIMIT 1",
        runs::COLUMNS
    );
    match client.query_opt(&sql, &[key, &actions]).await? {
        Some(row) => Ok(Some(rows::read(&row, runs::run)?)),
        None => Ok(None),
    }
}

async fn counter(client: &Client) -> StoreResult<i64> {
    Ok(client
        .query_one("SELECT value FROM change_counter", &[])
        .await?
        .get(0))
}

fn utc(t: SystemTime) -> DateTime<Utc> {
    t.into()
}

/// An identity for this agent's process, shown to a second agent that waits for the lease.
fn agent_id(host: &str) -> String {
    format!(
        "{host}/{}/pid {}/{}",
        super::local_host_name(),
        std::process::id(),
        crate::procs::new_tag()
    )
}

/// A transaction on a pooled connection, begun with `BEGIN`. Dropped without a commit
/// (an error on the way), it is rolled back before the connection goes back to the pool.
struct Tx {
    client: Option<Object>,
}

impl std::ops::Deref for Tx {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("a transaction in progress")
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            tokio::spawn(async move {
                if client.batch_execute("ROLLBACK").await.is_err() {
                    // A connection that cannot roll back is not given to anyone else.
                    let _ = Object::take(client);
                }
            });
        }
    }
}

/// Places the cluster on a host, claims its ports there and inserts it.
async fn create(tx: &Client, new: NewCluster) -> StoreResult<Result<Created, Refusal>> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
        .await?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM clusters WHERE name = $1",
            &[&new.spec.name.as_str()],
        )
        .await?;
    if exists.is_some() {
        return Ok(Err(Refusal::Exists));
    }
    let candidates = match candidates(tx, new.host.as_deref()).await? {
        Ok(hosts) => hosts,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // The fewest clusters among hosts whose requested ports are free; else the least
    // loaded host where taken defaults could move; else the refusal of the least loaded.
    let mut fallback: Option<(String, Claimed)> = None;
    let mut chosen = None;
    for host in candidates {
        let mut book = HostPorts::of(tx, &host).await?;
        let mut spec = new.spec.clone();
        let claimed = ports::claim(&mut book, &mut spec, &new.omitted, &new.ranges)?;
        match claimed {
            Ok(reassigned) if reassigned.is_empty() => {
                chosen = Some((host, spec, reassigned));
                break;
            }
            Ok(reassigned) => {
                if !matches!(fallback, Some((_, Ok(_)))) {
                    fallback = Some((host, Ok((spec, reassigned))));
                }
            }
            Err(refusal) => {
                if fallback.is_none() {
                    fallback = Some((host, Err(refusal)));
                }
            }
        }
    }
    let (host, spec, reassigned) = match (chosen, fallback) {
        (Some(c), _) => c,
        (None, Some((host, Ok((spec, reassigned))))) => (host, spec, reassigned),
        (None, Some((_, Err(refusal)))) => return Ok(Err(refusal)),
        (None, None) => return Ok(Err(Refusal::NoLiveHost)),
    };
    let id: i64 = tx
        .query_one(
            "INSERT INTO clusters (name, host, provider, subnet, node_port, pf_port, http_port,
                                   https_port, register_portainer, haproxy_route,
                                   register_argocd, status, desired_state, actual_state,
                                   created_at, updated_at, last_transition_at, change_seq)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'unknown', 'present',
                     'unknown', now(), now(), now(), next_change_seq())
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
            ],
        )
        .await?
        .get(0);
    Ok(Ok(Created {
        id,
        spec,
        host,
        reassigned,
    }))
}

/// A spec with the ports claimed for it on one host, or why not.
type Claimed = Result<(ClusterSpec, Vec<ports::Reassigned>), Refusal>;

/// The hosts a create may go to, least loaded first: the one named (which must be
/// known), or every host whose agent holds its lease.
async fn candidates(tx: &Client, named: Option<&str>) -> StoreResult<Result<Vec<String>, Refusal>> {
    if let Some(host) = named {
        let known: Vec<String> = tx
            .query("SELECT name FROM hosts ORDER BY name", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !known.iter().any(|k| k == host) {
            return Ok(Err(Refusal::UnknownHost {
                host: host.to_owned(),
                known,
            }));
        }
        return Ok(Ok(vec![host.to_owned()]));
    }
    let live: Vec<String> = tx
        .query(
            "SELECT h.name FROM hosts h
               LEFT JOIN clusters c ON c.host = h.name AND c.desired_state <> 'absent'
              WHERE h.expires_at > now()
              GROUP BY h.name ORDER BY COUNT(c.id), h.name",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if live.is_empty() {
        return Ok(Err(Refusal::NoLiveHost));
    }
    Ok(Ok(live))
}

/// The host ports of one host's clusters that are not being deleted, read once.
struct HostPorts {
    /// (name, pf, http, https, node)
    clusters: Vec<(String, [Option<i32>; 4])>,
}

impl HostPorts {
    async fn of(tx: &Client, host: &str) -> StoreResult<HostPorts> {
        let rows = tx
            .query(
                "SELECT name, pf_port, http_port, https_port, node_port FROM clusters
                  WHERE host = $1 AND desired_state <> 'absent'",
                &[&host],
            )
            .await?;
        Ok(HostPorts {
            clusters: rows
                .iter()
                .map(|r| (r.get(0), [r.get(1), r.get(2), r.get(3), r.get(4)]))
                .collect(),
        })
    }
}

impl PortBook for HostPorts {
    fn holder(
        &mut self,
        port: u16,
        is_node_port: bool,
    ) -> StoreResult<Option<(String, &'static str)>> {
        const FIELDS: [&str; 4] = ["pf_port", "http_port", "https_port", "node_port"];
        let port = Some(i32::from(port));
        for (name, held) in &self.clusters {
            let fields = if is_node_port { &held[..3] } else { &held[..] };
            if let Some(i) = fields.iter().position(|p| *p == port) {
                return Ok(Some((name.clone(), FIELDS[i])));
            }
        }
        Ok(None)
    }

    fn in_use(&mut self, range: PortRange) -> StoreResult<Vec<u16>> {
        let within = i32::from(range.first)..=i32::from(range.last);
        Ok(self
            .clusters
            .iter()
            .flat_map(|(_, held)| held.iter().flatten())
            .filter(|p| within.contains(p))
            .map(|p| *p as u16)
            .collect())
    }
}

async fn begin_run(tx: &Client, host: &str, run: &NewRun) -> StoreResult<i64> {
    let run_id: i64 = tx
        .query_one(
            "INSERT INTO reconcile_runs (host, cluster_id, cluster_name, action, generation,
                                         attempt, started_at, process_tag)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &host,
                &run.cluster_id,
                &run.cluster_name,
                &run.action.as_str(),
                &run.generation,
                &i64::from(run.attempt),
                &utc(run.started_at),
                &run.process_tag,
            ],
        )
        .await?
        .get(0);
    let action = run.action.as_str();
    let n = match run.action.in_progress_state() {
        Some(state) => {
            tx.execute(
                "UPDATE clusters SET actual_state = $2, status = $2, last_action = $3,
                        last_transition_at = CASE WHEN actual_state = $2
                                                  THEN last_transition_at ELSE now() END
                  WHERE id = $1 AND host = $4",
                &[&run.cluster_id, &state.as_str(), &action, &host],
            )
            .await?
        }
        None => {
            tx.execute(
                "UPDATE clusters SET last_action = $2 WHERE id = $1 AND host = $3",
                &[&run.cluster_id, &action, &host],
            )
            .await?
        }
    };
    if n == 0 {
        return Err(StoreError::Config(format!(
            "cluster {} ({}) is not on host {host}: its run is not begun",
            run.cluster_name, run.cluster_id
        )));
    }
    Ok(run_id)
}

async fn record_end<D>(tx: &Client, ending: RunEnding, decide: D) -> StoreResult<Recorded>
where
    D: FnOnce(&ClusterRecord) -> RowUpdate,
{
    let end = &ending.end;
    tx.execute(
        "UPDATE reconcile_runs SET outcome = $2, ended_at = $3, duration_ms = $4, exit_code = $5,
                signal = $6, error = $7, output_tail = $8, pgid = $9
          WHERE id = $1",
        &[
            &ending.run_id,
            &end.outcome.as_str(),
            &utc(end.ended_at),
            &(end.duration.as_millis() as i64),
            &end.exit_code,
            &end.signal,
            &end.error,
            &end.output_tail.join("\n"),
            &end.pgid,
        ],
    )
    .await?;
    tx.execute(
        "DELETE FROM reconcile_runs
          WHERE cluster_id = $1 AND action = $2 AND ended_at IS NOT NULL AND id NOT IN
                (SELECT id FROM reconcile_runs WHERE cluster_id = $1 AND action = $2
                  ORDER BY id DESC LIMIT $3)",
        &[
            &ending.cluster_id,
            &ending.action.as_str(),
            &i64::from(ending.keep),
        ],
    )
    .await?;
    // The row is locked until the commit: a declaration made meanwhile waits, so the
    // state machine decides on the row as it is written.
    let sql = format!("SELECT {COLUMNS} FROM {FROM} WHERE c.id = $1 FOR UPDATE OF c");
    let current = match tx.query_opt(&sql, &[&ending.cluster_id]).await? {
        Some(row) => match rows::read(&row, fleet_cluster)? {
            Ok(current) => current,
            Err(_) => return Ok(Recorded::default()),
        },
        None => return Ok(Recorded::default()),
    };
    let update = decide(&current);
    let removed = apply(tx, current.id, &update).await?;
    Ok(Recorded::of(&current, update, removed))
}

/// Carries a [`RowUpdate`] out; true when it removed the row.
async fn apply(tx: &Client, id: i64, update: &RowUpdate) -> StoreResult<bool> {
    match update {
        RowUpdate::Remove => Ok(tx
            .execute(
                "DELETE FROM clusters WHERE id = $1 AND desired_state = 'absent'",
                &[&id],
            )
            .await?
            > 0),
        RowUpdate::Settle(r) => {
            let nodes = r.probe.and_then(|p| p.nodes);
            tx.execute(
                "UPDATE clusters
                    SET actual_state = $2, status = $2, reconcile_error = $3, attempts = $4,
                        next_attempt_at = $5,
                        observed_generation = GREATEST(observed_generation, $6),
                        last_reconciled_at = now(),
                        last_transition_at = CASE WHEN actual_state = $2
                                                  THEN last_transition_at ELSE now() END,
                        nodes_ready = COALESCE($7, nodes_ready),
                        nodes_total = COALESCE($8, nodes_total),
                        portainer_status = COALESCE($9, portainer_status),
                        argocd_status = COALESCE($10, argocd_status),
                        updated_at = now()
                  WHERE id = $1",
                &[
                    &id,
                    &r.actual.as_str(),
                    &r.error,
                    &i64::from(r.attempts),
                    &r.next_attempt_at.map(|t| utc(t.into())),
                    &r.observed_generation,
                    &nodes.map(|n| n.0),
                    &nodes.map(|n| n.1),
                    &r.probe.map(|p| p.add_ons.portainer.as_str()),
                    &r.probe.map(|p| p.add_ons.argocd.as_str()),
                ],
            )
            .await?;
            Ok(false)
        }
        RowUpdate::Interrupted { in_progress, note } => {
            mark_cluster_interrupted(tx, id, *in_progress, note).await?;
            Ok(false)
        }
        RowUpdate::Keep => Ok(false),
    }
}

async fn mark_cluster_interrupted(
    tx: &Client,
    id: i64,
    in_progress: ActualState,
    note: &str,
) -> StoreResult<()> {
    tx.execute(
        "UPDATE clusters SET reconcile_error = $2, updated_at = now()
          WHERE id = $1 AND actual_state = $3",
        &[&id, &note, &in_progress.as_str()],
    )
    .await?;
    Ok(())
}
