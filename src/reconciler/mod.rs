//! The reconciler: one loop that makes observed state match declared state.
//!
//! It is level-triggered: whatever woke it (an API write, a row another program wrote, a
//! finished action, a timer), it looks at the clusters that are due and asks the state
//! machine ([`machine`]) what to do. Which clusters may start an action when is the
//! schedule's ([`schedule`]): at most one action per cluster, at most
//! `max_concurrent_actions` in all. Each action runs in its own task through a [`Runner`]
//! (the real one runs scripts); the loop only starts them, cancels them and records how
//! they ended, so it never waits on a script.
//!
//! The loop's parts: [`recovery`] (what a dead daemon left), [`watch`] (noticing what was
//! declared: the change feed, other programs' writes, health), [`ends`] (recording how runs
//! ended, retried until it works) and this file (the loop, starting actions, stopping).

pub mod action;
pub mod backoff;
mod ends;
pub mod machine;
mod outcome;
pub mod probe;
mod recovery;
pub mod schedule;
mod watch;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::{AppRef, Heartbeat};
use crate::config::Settings;
use crate::health::IgnoredRow;
use crate::log::{self, ids, Event, Priority};
use crate::model::Action;
use crate::procs;
use crate::store::clusters::{ClusterRecord, InvalidRow};
use crate::store::runs;
use crate::systemd;

use action::{Finished, Plan};
pub use action::{Runner, Scripts};
use ends::PendingEnd;
use machine::{look, CancelReason, Decision, Policy};
use outcome::cluster_event;
use schedule::Schedule;

/// How often, at most, the clusters waiting for a free slot are counted for the metrics.
const WAITING_COUNT_EVERY: Duration = Duration::from_millis(250);

/// Whether the reconciler runs for good or makes one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Daemon,
    /// `kindler reconcile --once`: every cluster gets at most one action, timers ignored.
    OnePass,
}

/// A running action, as the loop holds it.
struct Running {
    action: Action,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<CancelReason>>>,
}

/// A run that ended, as its task reports it to the loop.
struct Done {
    plan: Plan,
    finished: Finished,
    reason: Option<CancelReason>,
}

/// What a pass of `reconcile --once` did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassReport {
    pub succeeded: usize,
    pub failed: usize,
}

/// A cluster's row as the loop finds it.
enum Found {
    Row(Box<ClusterRecord>),
    /// Another program wrote values kindler cannot act on.
    Invalid(InvalidRow),
    Gone,
    /// The store could not say.
    Unknown,
}

pub struct Reconciler {
    app: AppRef,
    mode: Mode,
    runner: Arc<dyn Runner>,
    schedule: Schedule<Running>,
    /// Ends of finished runs still to be recorded, by cluster id.
    pending: std::collections::HashMap<i64, PendingEnd>,
    /// The change counter's value at the last read of the feed: read from here on.
    cursor: i64,
    /// The feed could not be read when it was last asked; the next poll reads it.
    feed_stale: bool,
    /// Every cluster is on the schedule (the start-up load succeeded).
    loaded: bool,
    /// A write that tells when a failing store takes writes again.
    write_probe: Option<tokio::task::JoinHandle<()>>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    next_poll: Instant,
    next_maintenance: Instant,
    /// When every row is read again: a safety net under the change feed, for rows other
    /// programs change in ways the feed cannot see.
    next_rescan: Instant,
    status_dirty: bool,
    /// When the clusters waiting for a slot may next be counted (see `publish_waiting`).
    next_waiting_count: Instant,
    /// Output lines of the running runs already shared with the fleet, and when next.
    shared_output: std::collections::HashMap<i64, u64>,
    next_output_share: Instant,
    /// Clusters acted on in this pass (one-pass mode).
    visited: HashSet<i64>,
    report: PassReport,
}

impl Reconciler {
    /// A reconciler that runs the configured scripts.
    pub fn new(app: AppRef, mode: Mode) -> Self {
        Reconciler::with_runner(app, mode, Arc::new(Scripts))
    }

    /// A reconciler that carries actions out with `runner` (tests use a fake one).
    pub fn with_runner(app: AppRef, mode: Mode, runner: Arc<dyn Runner>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let cap = app.settings().max_concurrent_actions;
        Reconciler {
            app,
            mode,
            runner,
            schedule: Schedule::new(cap),
            pending: Default::default(),
            cursor: 0,
            feed_stale: false,
            loaded: false,
            write_probe: None,
            done_tx,
            done_rx,
            next_poll: Instant::now(),
            next_maintenance: Instant::now() + watch::MAINTENANCE_EVERY,
            next_rescan: Instant::now(),
            status_dirty: true,
            next_waiting_count: Instant::now(),
            shared_output: Default::default(),
            next_output_share: Instant::now(),
            visited: HashSet::new(),
            report: PassReport::default(),
        }
    }

    /// Runs until `shutdown`, then cancels the running actions and records them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let app = self.app.clone();
        // In a fleet, nothing is done about the host's clusters before its lease is held
        // (another agent may still act on them).
        let held = async {
            tokio::select! {
                _ = app.store.until_lease_held() => true,
                _ = shutdown.cancelled() => false,
            }
        };
        if !beating(&app.heartbeat, held).await {
            return;
        }
        beating(&app.heartbeat, self.recover()).await;
        self.load_all().await;
        loop {
            self.app.heartbeat.beat();
            fault::maybe_wedge().await;
            // A stop that has begun starts nothing new, whatever else woke the loop.
            if shutdown.is_cancelled() {
                break;
            }
            self.record_due_ends().await;
            self.dispatch().await;
            let wake_at = self.next_wake();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.app.wake.notified() => self.sync_changes().await,
                _ = app.store.feed_moved() => self.sync_changes().await,
                Some(done) = self.done_rx.recv() => self.finish(done).await,
                _ = tokio::time::sleep_until(wake_at) => {}
            }
            if Instant::now() >= self.next_poll {
                self.poll().await;
            }
        }
        self.stop_all().await;
    }

    /// One pass over the store; returns when every action it started has ended.
    pub async fn run_once(mut self, shutdown: CancellationToken) -> PassReport {
        self.recover().await;
        self.load_all().await;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            self.record_due_ends().await;
            self.dispatch().await;
            if self.schedule.is_idle() {
                break;
            }
            // The timer matters when an action could not be started (a busy store): it
            // is rescheduled, and nothing else would wake the pass.
            let retry_at = [self.schedule.next_wake(), self.next_end_retry()]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(done) = self.done_rx.recv() => self.finish(done).await,
                _ = sleep_until_some(retry_at) => {}
            }
        }
        self.stop_all().await;
        self.report
    }

    fn policy(&self, settings: &Settings) -> Policy {
        Policy {
            resync: settings.resync_interval,
            honour_timers: self.mode == Mode::Daemon,
        }
    }

    /// The next time the loop must look even if nothing wakes it.
    fn next_wake(&self) -> Instant {
        [self.schedule.next_wake(), self.next_end_retry()]
            .into_iter()
            .flatten()
            .fold(self.next_poll, Instant::min)
    }

    /// A cluster's row, and what it means to the loop.
    async fn load(&self, id: i64) -> Found {
        let row = self.app.store.by_id(id).await;
        self.app.health.track(
            crate::health::Cause::StoreReads,
            &row,
            "cannot read the clusters",
        );
        match row {
            Ok(Some(Ok(record))) => Found::Row(Box::new(record)),
            Ok(Some(Err(invalid))) => Found::Invalid(invalid),
            Ok(None) => Found::Gone,
            Err(_) => Found::Unknown,
        }
    }

    /// Starts actions for due clusters while there is room.
    async fn dispatch(&mut self) {
        let settings = self.app.settings();
        let policy = self.policy(&settings);
        self.schedule.set_cap(settings.max_concurrent_actions);
        while let Some(id) = self.schedule.next(Instant::now()) {
            if self.visited.contains(&id) {
                continue;
            }
            let record = match self.load(id).await {
                // Another host's cluster (moved there meanwhile): its agent acts on it.
                Found::Row(record) if !self.owns(&record, &settings) => continue,
                Found::Row(record) => record,
                Found::Gone => {
                    self.app.health.unignore_row(id);
                    continue;
                }
                // The store could not be read (busy, or briefly unavailable): look again
                // soon rather than forget the cluster until it changes.
                Found::Unknown => {
                    self.schedule
                        .set(id, Instant::now() + settings.poll_interval);
                    continue;
                }
                Found::Invalid(invalid) => {
                    self.ignore(invalid);
                    continue;
                }
            };
            self.app.health.unignore_row(id);
            match look(&record, self.app.clock.now(), policy) {
                Decision::Act(action) => self.start(*record, action, settings.clone()).await,
                Decision::At(t) => self.schedule.set(id, self.app.clock.instant_at(t)),
                Decision::Idle => {}
            }
        }
        self.publish_waiting();
    }

    /// Tells the metrics how many due clusters wait for a slot, and since when. Counting
    /// them is linear in the queue, which a flood of declarations makes thousands long, and
    /// this runs after every dispatch: while every slot is taken the count is made at most
    /// every [`WAITING_COUNT_EVERY`] (a scrape sees it that stale at most).
    fn publish_waiting(&mut self) {
        let now = Instant::now();
        if self.schedule.is_full() {
            if now < self.next_waiting_count {
                return;
            }
            self.next_waiting_count = now + WAITING_COUNT_EVERY;
        }
        let (count, oldest) = self.schedule.waiting(now);
        let since = oldest.map(|at| std::time::SystemTime::now() - (now - at));
        crate::metrics::METRICS.set_waiting(count, since);
    }

    /// The cluster lives on this agent's host.
    fn owns(&self, record: &ClusterRecord, settings: &Settings) -> bool {
        record.host.as_ref().is_none_or(|h| h.name == settings.host)
    }

    /// A row kindler cannot act on: reported once, listed by health until it is readable.
    fn ignore(&self, invalid: InvalidRow) {
        let row = IgnoredRow {
            id: invalid.id,
            name: invalid.name.clone(),
            reason: invalid.reason.clone(),
        };
        if self.app.health.ignore_row(row) {
            Event::new(Priority::Warning, invalid.to_string())
                .id(ids::ROW_IGNORED)
                .field("CLUSTER", &invalid.name)
                .emit();
        }
    }

    /// Records that `action` begins for the cluster (its run row, with the process tag,
    /// before any process exists), then runs it in a task of its own.
    async fn start(&mut self, record: ClusterRecord, action: Action, settings: Arc<Settings>) {
        // Saturating: attempts is read from the store, where another program may have
        // written any number (u32::MAX + 1 panicked here and ended the reconciler).
        let attempt = record.attempts.saturating_add(1);
        let tag = procs::new_tag();
        let (id, generation, name) = (record.id, record.generation, record.spec.name.to_string());
        let begun = self
            .app
            .store
            .begin_run(runs::NewRun {
                cluster_id: id,
                cluster_name: name,
                action,
                generation,
                attempt,
                started_at: self.app.clock.now(),
                process_tag: tag.clone(),
            })
            .await;
        self.app.note_write(&begun, "starting an action");
        let run_id = match begun {
            Ok(run_id) => run_id,
            Err(e) => {
                log::debug(&format!(
                    "cannot start {action} of {}: {e}",
                    record.spec.name
                ));
                self.schedule
                    .set(id, Instant::now() + settings.backoff_initial);
                return;
            }
        };
        if self.mode == Mode::OnePass {
            self.visited.insert(id);
        }
        self.status_dirty |= action != Action::Probe;
        let level = if action == Action::Probe {
            Priority::Debug
        } else {
            Priority::Info
        };
        cluster_event(
            level,
            ids::RECONCILE_STARTED,
            &record,
            action,
            run_id,
            attempt,
        )
        .message_text(format!(
            "{action} of cluster {} started (attempt {attempt})",
            record.spec.name
        ))
        .emit();

        let live = self.app.runs.add(run_id, settings.output_tail_lines);
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        self.schedule.start(
            id,
            Running {
                action,
                cancel: cancel.clone(),
                reason: reason.clone(),
            },
        );
        let plan = Plan {
            run_id,
            record,
            action,
            attempt,
            tag,
        };
        let done_tx = self.done_tx.clone();
        let work = self.runner.run(plan.clone(), settings, cancel, live);
        tokio::spawn(async move {
            let finished = work.await;
            let reason = reason.lock().unwrap().take();
            let _ = done_tx.send(Done {
                plan,
                finished,
                reason,
            });
        });
    }

    /// Cancels every running action (the daemon is stopping), waits for them to end and
    /// records their ends (for a while, if the store does not take them at once).
    async fn stop_all(&mut self) {
        if self.schedule.running_count() > 0 {
            let grace = self.app.settings().kill_grace;
            // Tell systemd the stop may take a scripts' grace period longer than usual.
            systemd::extend_timeout(grace + ends::RETRY_AT_STOP + Duration::from_secs(5));
            for running in self.schedule.running_handles() {
                *running.reason.lock().unwrap() = Some(CancelReason::Shutdown);
                running.cancel.cancel();
            }
        }
        while self.schedule.running_count() > 0 {
            match self.done_rx.recv().await {
                Some(done) => self.finish(done).await,
                None => break,
            }
        }
        self.record_ends_before_stopping().await;
        if let Some(probe) = self.write_probe.take() {
            probe.abort();
            let _ = probe.await;
        }
    }
}

/// Sleeps until `at`, or for ever when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A fault switch for the watchdog test, compiled into debug (test) builds only: while
/// the file named by KINDLER_TEST_WEDGE_FILE exists, the loop hangs as a deadlock would.
mod fault {
    #[cfg(debug_assertions)]
    pub async fn maybe_wedge() {
        if let Some(path) = std::env::var_os("KINDLER_TEST_WEDGE_FILE") {
            if std::path::Path::new(&path).exists() {
                crate::log::warn("test fault: the reconciler loop is wedged on purpose");
                std::future::pending::<()>().await;
            }
        }
    }

    #[cfg(not(debug_assertions))]
    pub async fn maybe_wedge() {}
}

/// Runs `work` while keeping the loop's heartbeat going. Ending a dead daemon's leftovers
/// waits out `kill_grace` before the loop first turns; that is progress, and the watchdog
/// must not restart the daemon for it (which would then wait again, and again).
async fn beating<F: std::future::Future>(heartbeat: &Heartbeat, work: F) -> F::Output {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => heartbeat.beat(),
        }
    }
}
