//! The SQLite backend, kindler's embedded default: one file on the host.
//!
//! One writer connection (SQLite allows one writer at a time anyway), on a thread of its
//! own that commits waiting writes together (`writer.rs`), and a few reader connections;
//! WAL lets the readers go on while the writer commits. Reads run inside
//! `block_in_place`, so a slow disk never stalls the threads that serve HTTP. Each
//! operation of [`super::Store`] is one read or one write job here, running the statements
//! of `clusters.rs` and `runs.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction};

use super::clusters::{self, Parsed, RowUpdate, ScheduleRow, Summary};
use super::identity::Identity;
use super::migrate::{self, Migration};
use super::ports::{self, PortBook};
use super::runs::{self, NewRun, RunRecord, Unfinished};
use super::time::Timestamp;
use super::{
    writer, Created, Epoch, NewCluster, Recorded, RunEnding, StoreError, StoreResult, TaskLookup,
};
use crate::model::{Action, ActualState, ClusterName, DesiredState, PortRange};

/// How long a statement waits for another writer (a `sqlite3` user, say) before failing.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections kept open for reuse; a read beyond them opens a connection of its own
/// and closes it afterwards.
const READERS: usize = 4;

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: writer::Writer,
    readers: Mutex<Vec<Connection>>,
    /// Last `PRAGMA data_version` seen on the writer connection (see `external_change`).
    data_version: Mutex<i64>,
    epoch: Arc<Epoch>,
    /// The files kindler opened, to notice when they are removed or replaced.
    identity: Arc<Identity>,
    /// The host name the clusters are shown with (one host has the whole file).
    host: String,
}

impl Sqlite {
    /// Opens (creating if needed) the database and brings its schema up to date.
    /// Returns the store and the migrations that were applied now.
    pub fn open(
        path: &Path,
        host: &str,
        epoch: Arc<Epoch>,
    ) -> StoreResult<(Sqlite, Vec<Migration>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                doing: "create",
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut writer = connect(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        // SQLite opens a file it may not write read-only, without a word; kindler would then
        // answer reads and fail every declaration.
        if writer.is_readonly("main")? {
            return Err(StoreError::ReadOnly);
        }
        // Small pages for a new file (an existing one keeps its own): rows are small and
        // are updated one at a time, and every changed page is written whole to the log.
        writer.pragma_update(None, "page_size", 1024)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        let applied = migrate::run(&mut writer)?;
        let version = data_version(&writer)?;
        let identity = Arc::new(Identity::of(path).map_err(|source| StoreError::Io {
            doing: "look at",
            path: path.to_owned(),
            source,
        })?);
        let store = Sqlite {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: writer::Writer::start(writer, epoch.clone(), identity.clone())?,
                readers: Mutex::new(Vec::new()),
                data_version: Mutex::new(version),
                epoch,
                identity,
                host: host.to_owned(),
            }),
        };
        Ok((store, applied))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a reader connection, off the async worker threads.
    pub async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let store = self.clone();
        blocking(move || store.read_blocking(f)).await
    }

    /// Runs `f` in a write transaction on the writer thread (see `writer.rs`): its changes
    /// are committed, or none of them is.
    pub async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> StoreResult<T> + Send + 'static,
    {
        self.inner.writer.write(f).await
    }

    pub fn read_blocking<T>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let pooled = self.inner.readers.lock().unwrap().pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                // A new connection opens whatever is at the path now: not a stranger's file.
                self.check_file()?;
                let c = connect(&self.inner.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                // Readers see little of the file at once; keep their caches small.
                c.pragma_update(None, "cache_size", -512)?;
                c
            }
        };
        let result = f(&conn);
        let mut readers = self.inner.readers.lock().unwrap();
        if readers.len() < READERS {
            readers.push(conn);
        }
        result
    }

    /// Is the file at the database's path still the one kindler has open?
    pub fn check_file(&self) -> StoreResult<()> {
        self.inner
            .identity
            .check()
            .map_err(StoreError::FileReplaced)
    }

    /// True when another program committed to the database since the last call.
    ///
    /// `PRAGMA data_version` changes only for commits made by *other* connections; all of
    /// kindler's own writes go through the connection asked here, so they do not count.
    pub async fn external_change(&self) -> StoreResult<bool> {
        let now = self.inner.writer.data_version().await?;
        let mut seen = self.inner.data_version.lock().unwrap();
        let changed = now != *seen;
        *seen = now;
        if changed {
            self.inner.epoch.bump();
        }
        Ok(changed)
    }

    // The operations of `Store` (see there).

    pub async fn ping(&self) -> StoreResult<()> {
        self.read(clusters::ping).await
    }

    pub async fn list(&self) -> StoreResult<Vec<Parsed>> {
        let rows = self.read(clusters::list).await?;
        Ok(rows.into_iter().map(|row| self.on_this_host(row)).collect())
    }

    pub async fn by_stored_name(&self, name: &str) -> StoreResult<Option<Parsed>> {
        let name = name.to_owned();
        let row = self
            .read(move |c| clusters::by_stored_name(c, &name))
            .await?;
        Ok(row.map(|row| self.on_this_host(row)))
    }

    pub async fn by_id(&self, id: i64) -> StoreResult<Option<Parsed>> {
        let row = self.read(move |c| clusters::by_id(c, id)).await?;
        Ok(row.map(|row| self.on_this_host(row)))
    }

    /// Every cluster of the file is on the host kindler runs on, which is reachable.
    fn on_this_host(&self, mut row: Parsed) -> Parsed {
        if let Ok(record) = &mut row {
            record.host = Some(clusters::FleetHost {
                name: self.inner.host.clone(),
                reachable: true,
            });
        }
        row
    }

    pub async fn history(
        &self,
        name: &ClusterName,
        limit: u32,
    ) -> StoreResult<(Option<Parsed>, Vec<RunRecord>)> {
        let name = name.clone();
        self.read(move |c| {
            Ok((
                clusters::by_name(c, &name)?,
                runs::recent_for_name(c, name.as_str(), limit)?,
            ))
        })
        .await
    }

    pub async fn task_lookups(
        &self,
        wanted: Vec<(ClusterName, Action)>,
    ) -> StoreResult<Vec<TaskLookup>> {
        self.read(move |c| {
            // One snapshot for the rows and their runs: a run's end and its row's change are
            // committed together, and read apart they could disagree (a failed run on a row
            // without its retry time, said "kindler retries now").
            let snapshot = c.unchecked_transaction()?;
            wanted
                .iter()
                .map(|(name, action)| task_lookup(&snapshot, name, *action))
                .collect()
        })
        .await
    }

    pub async fn create_cluster(
        &self,
        new: NewCluster,
    ) -> StoreResult<Result<Created, ports::Refusal>> {
        let host = self.inner.host.clone();
        self.write(move |tx| create(tx, new, host)).await
    }

    pub async fn declare(&self, name: &ClusterName, desired: DesiredState) -> StoreResult<bool> {
        let name = name.clone();
        self.write(move |tx| clusters::declare(tx, &name, desired))
            .await
    }

    pub async fn forget(&self, name: &str) -> StoreResult<Option<i64>> {
        let name = name.to_owned();
        self.write(move |tx| clusters::forget(tx, &name)).await
    }

    pub async fn begin_run(&self, run: NewRun) -> StoreResult<i64> {
        self.write(move |tx| {
            let run_id = runs::insert(tx, &run)?;
            clusters::begin_action(tx, run.cluster_id, run.action)?;
            Ok(run_id)
        })
        .await
    }

    pub async fn record_end<D>(&self, ending: RunEnding, decide: D) -> StoreResult<Recorded>
    where
        D: FnOnce(&clusters::ClusterRecord) -> RowUpdate + Send + 'static,
    {
        self.write(move |tx| {
            runs::finish(tx, ending.run_id, &ending.end)?;
            runs::prune_cluster(tx, ending.cluster_id, ending.action, ending.keep)?;
            let current = match clusters::by_id(tx, ending.cluster_id)? {
                Some(Ok(c)) => c,
                _ => return Ok(Recorded::default()),
            };
            let update = decide(&current);
            let removed = clusters::apply(tx, current.id, &update)?;
            Ok(Recorded::of(&current, update, removed))
        })
        .await
    }

    pub async fn mark_interrupted(
        &self,
        run_id: i64,
        note: String,
        cluster: Option<(i64, ActualState)>,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            runs::mark_interrupted(tx, run_id, &note)?;
            if let Some((id, in_progress)) = cluster {
                clusters::mark_interrupted(tx, id, in_progress, &note)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn schedule(&self) -> StoreResult<(i64, Vec<ScheduleRow>)> {
        self.read(|c| Ok((clusters::change_counter(c)?, clusters::schedule_rows(c)?)))
            .await
    }

    pub async fn changed_since(&self, cursor: i64) -> StoreResult<(i64, Vec<i64>)> {
        self.read(move |c| clusters::changed_since(c, cursor)).await
    }

    pub async fn odd_change_numbers(&self) -> StoreResult<Vec<(i64, String, String)>> {
        self.read(clusters::odd_change_numbers).await
    }

    pub async fn renumber(&self, id: i64) -> StoreResult<()> {
        self.write(move |tx| clusters::renumber(tx, id)).await
    }

    pub async fn summary(&self) -> StoreResult<Summary> {
        self.read(clusters::summary).await
    }

    pub async fn state_counts(&self) -> StoreResult<clusters::StateCounts> {
        self.read(clusters::state_counts).await
    }

    pub async fn in_backoff(&self, now: Timestamp) -> StoreResult<i64> {
        self.read(move |c| clusters::in_backoff(c, now)).await
    }

    pub async fn change_counter(&self) -> StoreResult<i64> {
        self.read(clusters::change_counter).await
    }

    pub async fn unfinished_runs(&self) -> StoreResult<Vec<Unfinished>> {
        self.read(runs::unfinished).await
    }

    pub async fn prune_old(&self, max_age: Duration) -> StoreResult<usize> {
        self.write(move |tx| runs::prune_old(tx, max_age)).await
    }

    pub async fn probe_write(&self) -> StoreResult<()> {
        self.write(|_| Ok(())).await
    }
}

/// The newest run of `action`, and of any action, for the cluster named `name`.
fn task_lookup(c: &Connection, name: &ClusterName, action: Action) -> StoreResult<TaskLookup> {
    let row = match clusters::by_name(c, name)? {
        Some(Ok(row)) => Some(row),
        _ => None,
    };
    let (own, latest) = match &row {
        Some(r) => (
            runs::latest_for_cluster(c, r.id, &[action])?,
            runs::latest_for_cluster(c, r.id, &Action::ALL)?,
        ),
        None => (runs::latest_for_name(c, name.as_str(), &[action])?, None),
    };
    Ok(TaskLookup { row, own, latest })
}

/// Inserts the cluster after checking its name and ports, in the writer's transaction.
fn create(
    tx: &Transaction,
    mut new: NewCluster,
    host: String,
) -> StoreResult<Result<Created, ports::Refusal>> {
    if let Some(named) = new.host.as_ref().filter(|h| **h != host) {
        return Ok(Err(ports::Refusal::UnknownHost {
            host: named.clone(),
            known: vec![host],
        }));
    }
    if clusters::by_name(tx, &new.spec.name)?.is_some() {
        return Ok(Err(ports::Refusal::Exists));
    }
    let claimed = ports::claim(&mut Book(tx), &mut new.spec, &new.omitted, &new.ranges)?;
    let reassigned = match claimed {
        Ok(reassigned) => reassigned,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let id = clusters::insert(tx, &new.spec)?;
    Ok(Ok(Created {
        id,
        spec: new.spec,
        host,
        reassigned,
    }))
}

/// The port questions, answered by indexed look-ups in the writer's transaction.
struct Book<'a, 'c>(&'a Transaction<'c>);

impl PortBook for Book<'_, '_> {
    fn holder(
        &mut self,
        port: u16,
        is_node_port: bool,
    ) -> StoreResult<Option<(String, &'static str)>> {
        clusters::port_holder(self.0, port, is_node_port)
    }

    fn in_use(&mut self, range: PortRange) -> StoreResult<Vec<u16>> {
        clusters::ports_in_use(self.0, range.first, range.last)
    }
}

fn connect(path: &Path, flags: OpenFlags) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL makes NORMAL durable against crashes of the process; only power loss can undo
    // the last commits.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

pub(super) fn data_version(conn: &Connection) -> StoreResult<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get("data_version"))?)
}

async fn blocking<T, F>(f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    // block_in_place needs the multi-threaded runtime (the daemon's). On a current-thread
    // runtime (tests with a paused clock) there is no other worker to hand tasks to: the
    // read simply runs here.
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
