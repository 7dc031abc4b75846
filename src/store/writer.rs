//! The writer connection, on a thread of its own, committing in groups.
//!
//! Every write of the daemon (an API declaration, the reconciler recording a run) is a job
//! sent to this thread. The thread takes all jobs waiting at that moment and runs them in
//! one transaction, each inside its own savepoint, then commits once and answers each job.
//! Under load this turns N commits into one (one log append, one lock round, no threads
//! parked on a mutex) and serves writers in arrival order; alone, a job commits by itself.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;

use super::identity::Identity;
use super::{Epoch, StoreError, StoreResult};

/// Most jobs committed together.
const MAX_GROUP: usize = 256;
/// Log pages (1 KiB each) after which a commit copies the log back into the database.
/// Small and frequent beats large and rare: a checkpoint's sync stalls the writes behind
/// it. On the benchmark machine the POST p99 with 1 and 32 connections was 2.4-2.9 and
/// 5.8-6.7 ms at 250 pages, 4.6-7.3 and 10.5-11.3 ms at SQLite's default of 1,000, and
/// 14-16 and 22-24 ms at 4,000 (BENCHMARKS.md, measurement 2).
const CHECKPOINT_PAGES: u32 = 250;

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    jobs: Sender<Job>,
}

enum Job {
    Write(Box<dyn GroupJob>),
    /// `PRAGMA data_version` of the writer connection (see `Store::external_change`).
    DataVersion(oneshot::Sender<StoreResult<i64>>),
}

/// A write that runs inside a group's transaction and is answered once the group ends.
trait GroupJob: Send {
    /// Runs the write; false when it failed (its savepoint is then rolled back).
    fn run(&mut self, tx: &Transaction) -> bool;
    /// Answers the caller: the write's own result if the group committed.
    fn answer(self: Box<Self>, group: &Result<(), GroupFailure>);
}

struct Typed<T, F> {
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> GroupJob for Typed<T, F>
where
    T: Send,
    F: FnOnce(&Transaction) -> StoreResult<T> + Send,
{
    fn run(&mut self, tx: &Transaction) -> bool {
        let result = match self.work.take() {
            Some(work) => work(tx),
            None => return false,
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, group: &Result<(), GroupFailure>) {
        let answer = match (self.result, group) {
            // The file is gone: whatever the write did is lost with it.
            (_, Err(GroupFailure::Replaced(what))) => Err(StoreError::FileReplaced(what.clone())),
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(GroupFailure::Commit(e))) => Err(StoreError::Sqlite(e.clone())),
            // Every job of a group that committed has run; this cannot happen.
            (None, Ok(())) => Err(StoreError::WriterGone),
        };
        let _ = self.reply.send(answer);
    }
}

/// Why a whole group failed.
#[derive(Debug, Clone)]
enum GroupFailure {
    /// The database file was removed or replaced (see `identity.rs`).
    Replaced(String),
    /// The transaction could not begin or commit (locked by another program, disk full).
    Commit(Arc<rusqlite::Error>),
}

impl Writer {
    /// Moves `conn` to a new thread that serves writes; `epoch` is bumped after each commit.
    /// `identity` is checked before and after each commit.
    pub fn start(
        conn: Connection,
        epoch: Arc<Epoch>,
        identity: Arc<Identity>,
    ) -> StoreResult<Writer> {
        conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
        let (jobs, queue) = channel();
        std::thread::Builder::new()
            .name("kindler-writer".into())
            .spawn(move || serve(conn, queue, &epoch, &identity))
            .map_err(StoreError::WriterStart)?;
        Ok(Writer { jobs })
    }

    /// Runs `work` in a write transaction (shared with other writes waiting at the time).
    pub async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> StoreResult<T> + Send + 'static,
    {
        let submitted = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        let job = Typed {
            work: Some(work),
            result: None,
            reply,
        };
        self.send(Job::Write(Box::new(job)))?;
        let answered = answer.await.map_err(|_| StoreError::WriterGone)?;
        crate::metrics::METRICS
            .store_write_seconds
            .observe(submitted.elapsed().as_secs_f64());
        answered
    }

    pub async fn data_version(&self) -> StoreResult<i64> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::DataVersion(reply))?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    fn send(&self, job: Job) -> StoreResult<()> {
        self.jobs.send(job).map_err(|_| StoreError::WriterGone)
    }
}

fn serve(mut conn: Connection, queue: Receiver<Job>, epoch: &Epoch, identity: &Identity) {
    let mut log_released = false;
    while let Ok(first) = queue.recv() {
        let mut group = Vec::new();
        for job in std::iter::once(first).chain(queue.try_iter().take(MAX_GROUP - 1)) {
            match job {
                Job::Write(w) => group.push(w),
                Job::DataVersion(reply) => {
                    let _ = reply.send(super::sqlite::data_version(&conn));
                }
            }
        }
        if group.is_empty() {
            // The reconciler asks for the data version every poll interval: the moment to
            // notice a file replaced while nobody writes.
            release_log_if_replaced(&conn, identity, &mut log_released);
            continue;
        }
        let began = std::time::Instant::now();
        let outcome = commit_where_found(&mut conn, &mut group, identity);
        if outcome.is_ok() {
            epoch.bump();
            let m = &crate::metrics::METRICS;
            m.store_commit_seconds
                .observe(began.elapsed().as_secs_f64());
            m.store_commit_jobs.observe(group.len() as f64);
        }
        if matches!(outcome, Err(GroupFailure::Replaced(_))) {
            // Before any refusal is answered.
            release_log_if_replaced(&conn, identity, &mut log_released);
        }
        for job in group {
            job.answer(&outcome);
        }
        if outcome.is_err() {
            // Writes that arrived while this group waited (for another program's lock, up
            // to the busy timeout) have waited as long: they get the same answer now
            // rather than a wait of their own.
            for job in queue.try_iter() {
                match job {
                    Job::Write(w) => w.answer(&outcome),
                    Job::DataVersion(reply) => {
                        let _ = reply.send(super::sqlite::data_version(&conn));
                    }
                }
            }
        }
    }
}

/// Once the database file at the path is not the one kindler has open (removed, or another
/// file moved there), empties kindler's write-ahead log into the file kindler has open.
///
/// The log's path did not change: after a crash of kindler, the next start (SQLite, when
/// it opens the file now at the path) would apply the log's pages to that other file. A
/// backup moved onto the path was so rolled forward to the replaced database's state, or
/// left corrupt. Emptied, the log is ignored. (A crash between the replacement and this,
/// at most a poll interval, is not covered.)
fn release_log_if_replaced(conn: &Connection, identity: &Identity, released: &mut bool) {
    if identity.check().is_ok() {
        // Put back (or never gone): a later replacement needs its own release.
        *released = false;
        return;
    }
    if *released {
        return;
    }
    // (busy, log pages, pages checkpointed); busy is 1 when a reader kept it from finishing.
    match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(0) => {
            *released = true;
            crate::log::warn(
                "the database file at the configured path is not the one kindler has open: \
                 kindler emptied its write-ahead log, so that no later start applies it to the \
                 file now at that path",
            );
        }
        Ok(_) => crate::log::debug("emptying the write-ahead log: busy; tried again"),
        Err(e) => crate::log::warn(&format!("cannot empty the write-ahead log: {e}")),
    }
}

/// Commits the group, unless the file at the database's path is not the one kindler has
/// open: then nothing is written, or (when it was replaced during the commit) nothing that
/// was written is acknowledged.
fn commit_where_found(
    conn: &mut Connection,
    group: &mut [Box<dyn GroupJob>],
    identity: &Identity,
) -> Result<(), GroupFailure> {
    identity.check().map_err(GroupFailure::Replaced)?;
    commit(conn, group).map_err(|e| GroupFailure::Commit(Arc::new(e)))?;
    identity.check().map_err(GroupFailure::Replaced)
}

fn commit(conn: &mut Connection, group: &mut [Box<dyn GroupJob>]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in group.iter_mut() {
        tx.execute_batch("SAVEPOINT job")?;
        if job.run(&tx) {
            tx.execute_batch("RELEASE job")?;
        } else {
            // A failed write leaves no trace; the others of the group still commit.
            tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
        }
    }
    tx.commit()
}
