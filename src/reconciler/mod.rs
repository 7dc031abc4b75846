//! The reconciler: one loop that makes observed state match declared state.
//!
//! It is level-triggered: whatever woke it (an API write, a row another program wrote, a
//! finished action, a timer), it looks at the clusters that are due and asks [`decide`]
//! what to do. At most one action runs per cluster and at most `max_concurrent_actions` in
//! all. Each action runs in its own task; the loop only starts them, cancels them and
//! records how they ended, so it never waits on a script.

pub mod action;
pub mod backoff;
pub mod decide;
mod outcome;
pub mod probe;
mod schedule;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::{AppRef, Heartbeat, LiveRun};
use crate::config::Settings;
use crate::health::{Cause, IgnoredRow};
use crate::log::{self, ids, Event, Priority};
use crate::model::{Action, ActualState, DesiredState, RunOutcome};
use crate::output::Tail;
use crate::procs::{self, Target};
use crate::store::clusters::{self, ClusterRecord};
use crate::store::{runs, time, StoreResult};
use crate::systemd;

use action::{Finished, Plan};
use decide::{decide, Decision, Policy};
use outcome::{cluster_event, log_end, record_end, EndRecord, Verdict};
use schedule::Schedule;

/// How often old history is pruned.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
/// Retries of recording a run's end: the first after this, doubling up to the maximum.
const END_RETRY_FIRST: Duration = Duration::from_millis(200);
const END_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a stop keeps trying to record ends that could not be recorded; what is left is
/// found by the next start (the run has no end, so it is redone).
const END_RETRY_AT_STOP: Duration = Duration::from_secs(3);

/// Whether the reconciler runs for good or makes one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Daemon,
    /// `kindler reconcile --once`: every cluster gets at most one action, timers ignored.
    OnePass,
}

/// Why a running action was cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CancelReason {
    /// The declared state moved away from what the action works toward.
    Redeclared(Option<DesiredState>),
    /// The daemon is stopping.
    Shutdown,
}

struct Running {
    action: Action,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<CancelReason>>>,
}

struct Done {
    plan: Plan,
    finished: Finished,
    reason: Option<CancelReason>,
}

/// A finished run whose end is not recorded yet: recording is retried until it succeeds
/// (the store may be locked by another program for a while). Until then the cluster counts
/// as busy, so its action is not started again.
struct PendingEnd {
    done: Done,
    verdict: Verdict,
    tries: u32,
    next_try: Instant,
}

/// What a pass of `reconcile --once` did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassReport {
    pub succeeded: usize,
    pub failed: usize,
}

pub struct Reconciler {
    app: AppRef,
    mode: Mode,
    schedule: Schedule,
    running: HashMap<i64, Running>,
    /// Ends of finished runs still to be recorded, by cluster id.
    pending: HashMap<i64, PendingEnd>,
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
    /// Clusters acted on in this pass (one-pass mode).
    visited: HashSet<i64>,
    report: PassReport,
}

impl Reconciler {
    pub fn new(app: AppRef, mode: Mode) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Reconciler {
            app,
            mode,
            schedule: Schedule::default(),
            running: HashMap::new(),
            pending: HashMap::new(),
            cursor: 0,
            feed_stale: false,
            loaded: false,
            write_probe: None,
            done_tx,
            done_rx,
            next_poll: Instant::now(),
            next_maintenance: Instant::now() + MAINTENANCE_EVERY,
            next_rescan: Instant::now(),
            status_dirty: true,
            visited: HashSet::new(),
            report: PassReport::default(),
        }
    }

    /// Runs until `shutdown`, then cancels the running actions and records them.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let app = self.app.clone();
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
                Some(done) = self.done_rx.recv() => self.finish(done).await,
                _ = tokio::time::sleep_until(wake_at.into()) => {}
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
            if self.running.is_empty() && self.schedule.is_empty() && self.pending.is_empty() {
                break;
            }
            // The timer matters when an action could not be started (a busy store): it
            // is rescheduled, and nothing else would wake the pass.
            let retry_at = [self.next_due_with_a_free_slot(), self.next_end_retry()]
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
        [self.next_due_with_a_free_slot(), self.next_end_retry()]
            .into_iter()
            .flatten()
            .fold(self.next_poll, Instant::min)
    }

    fn next_end_retry(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.next_try).min()
    }

    /// When the next scheduled cluster is due, if an action could start for it then.
    fn next_due_with_a_free_slot(&self) -> Option<Instant> {
        let free = self.running.len() < self.app.settings().max_concurrent_actions;
        free.then(|| self.schedule.next_due()).flatten()
    }

    /// Ends what a previous daemon left behind: runs that never recorded an end (it was
    /// killed), and the processes of those runs that are still alive.
    async fn recover(&mut self) {
        let unfinished = match self.app.store.read(runs::unfinished).await {
            Ok(u) => u,
            Err(e) => return log::error(&format!("cannot read unfinished runs: {e}")),
        };
        let grace = self.app.settings().kill_grace;
        let endings = unfinished.iter().map(|run| async move {
            match &run.process_tag {
                Some(tag) => {
                    let target = Target::of_tag(tag.clone());
                    let found = target.live().len();
                    target.terminate(grace).await;
                    found
                }
                None => 0,
            }
        });
        let ended = futures_util::future::join_all(endings).await;
        for (run, orphans) in unfinished.into_iter().zip(ended) {
            let action = run.action.map(|a| a.as_str()).unwrap_or("action");
            let note = format!(
                "{action} was interrupted: kindler stopped while it ran (killed or crashed); it is redone now"
            );
            let cluster_note = note.clone();
            let in_progress = run.action.and_then(Action::in_progress_state);
            let res = self
                .app
                .store
                .write(move |tx| {
                    runs::mark_interrupted(tx, run.id, &note)?;
                    // Only a cluster still in that action's state is redone; one that got
                    // further since (its end was recorded by a later run) keeps its state.
                    if let (Some(state), Some(cluster_id)) = (in_progress, run.cluster_id) {
                        clusters::mark_interrupted(tx, cluster_id, state, &cluster_note)?;
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = res {
                log::error(&format!("cannot record run {} as interrupted: {e}", run.id));
            }
            Event::new(
                Priority::Warning,
                format!(
                    "{action} of cluster {} (run {}) was interrupted by a previous stop of kindler; it will be redone",
                    run.cluster_name, run.id
                ),
            )
            .id(ids::ACTION_INTERRUPTED)
            .field("CLUSTER", &run.cluster_name)
            .field("ACTION", action)
            .field("RUN_ID", run.id)
            .emit();
            if orphans > 0 {
                Event::new(
                    Priority::Warning,
                    format!(
                        "ended {orphans} leftover processes of run {} ({action} of {})",
                        run.id, run.cluster_name
                    ),
                )
                .id(ids::ORPHANS_ENDED)
                .field("CLUSTER", &run.cluster_name)
                .field("RUN_ID", run.id)
                .emit();
            }
        }
    }

    /// Puts every cluster on the schedule: running ones at their next resync, the rest now
    /// (a cluster already due earlier stays so). At start-up, then once per resync interval;
    /// retried by the poll until it succeeds (the store may be locked at start-up).
    async fn load_all(&mut self) {
        let loaded = self
            .app
            .store
            .read(|conn| {
                Ok((
                    clusters::change_counter(conn)?,
                    clusters::schedule_rows(conn)?,
                ))
            })
            .await;
        self.app
            .health
            .track(Cause::StoreReads, &loaded, "cannot load the clusters");
        let Ok((cursor, rows)) = loaded else { return };
        self.loaded = true;
        self.cursor = self.cursor.max(cursor);
        let resync = self.app.settings().resync_interval;
        let now = Instant::now();
        self.next_rescan = now + resync;
        for row in rows {
            let converged = self.mode == Mode::Daemon
                && row.actual == ActualState::Running
                && row.desired.as_deref().unwrap_or("present") == "present";
            let due = match row.last_reconciled_at.as_deref().and_then(time::parse) {
                Some(last) if converged => instant_at(last + resync),
                _ => now,
            };
            self.schedule.soon(row.id, due);
        }
        self.repair_change_numbers().await;
    }

    /// Reads the change feed (rows declared since the cursor) and the clusters the API
    /// nudged, and puts them on the schedule.
    async fn sync_changes(&mut self) {
        let now = Instant::now();
        let mut touched = self.app.take_nudged();
        let cursor = self.cursor;
        let changed = self
            .app
            .store
            .read(move |c| clusters::changed_since(c, cursor))
            .await;
        self.app
            .health
            .track(Cause::ChangeFeed, &changed, "cannot read new declarations");
        self.feed_stale = changed.is_err();
        if let Ok((top, ids)) = changed {
            self.cursor = self.cursor.max(top);
            touched.extend(ids);
        }
        let mut recheck = Vec::new();
        for id in touched {
            self.schedule.soon(id, now);
            if self.running.contains_key(&id) {
                recheck.push(id);
            }
        }
        for id in recheck {
            self.cancel_if_redeclared(id).await;
        }
    }

    /// Cancels a running action that no longer moves the cluster toward its declaration.
    async fn cancel_if_redeclared(&mut self, id: i64) {
        let desired = match self.load(id).await {
            Ok(Some(Ok(rec))) => Some(rec.desired),
            Ok(Some(Err(_)) | None) => None,
            // Unknown is not "changed": the action carries on.
            Err(()) => return,
        };
        let Some(running) = self.running.get(&id) else {
            return;
        };
        if desired.is_some_and(|d| running.action.serves(d)) {
            return;
        }
        *running.reason.lock().unwrap() = Some(CancelReason::Redeclared(desired));
        running.cancel.cancel();
    }

    async fn poll(&mut self) {
        let settings = self.app.settings();
        self.next_poll = Instant::now() + settings.poll_interval;
        let file = self.app.store.check_file();
        match &file {
            Ok(()) => self.app.health.resolve(Cause::DatabaseFile),
            Err(e) => self.app.health.report(Cause::DatabaseFile, e.to_string()),
        }
        if !self.loaded || Instant::now() >= self.next_rescan {
            self.load_all().await;
        }
        match self.app.store.external_change().await {
            Ok(true) => {
                self.sync_changes().await;
                self.look_again_at_ignored_rows();
                self.repair_change_numbers().await;
            }
            Ok(false) if self.feed_stale => self.sync_changes().await,
            Ok(false) => {}
            Err(e) => self.app.health.report(
                Cause::ChangeFeed,
                format!("cannot check the database for declarations by other programs: {e}"),
            ),
        }
        if self.app.health.is_active(Cause::StoreWrites) {
            self.probe_writes();
        }
        if self.status_dirty {
            self.status_dirty = false;
            if let Ok(summary) = self.app.store.read(clusters::summary).await {
                let line = systemd::status_line(&summary, SystemTime::now());
                self.app.health.set_summary(line);
            }
        }
        if Instant::now() >= self.next_maintenance {
            self.next_maintenance = Instant::now() + MAINTENANCE_EVERY;
            let max_age = settings.history_max_age;
            if let Err(e) = self
                .app
                .store
                .write(move |tx| runs::prune_old(tx, max_age))
                .await
            {
                log::warn(&format!("cannot prune old history: {e}"));
            }
        }
    }

    /// Rows kindler could not act on may have been corrected by the program that wrote them.
    fn look_again_at_ignored_rows(&mut self) {
        let now = Instant::now();
        for id in self.app.health.ignored_ids() {
            self.schedule.soon(id, now);
        }
    }

    /// Gives rows whose change number another program wrote a number of kindler's, so that
    /// their later declarations are seen in order; each is reported in the journal.
    async fn repair_change_numbers(&mut self) {
        let Ok(odd) = self.app.store.read(clusters::odd_change_numbers).await else {
            return;
        };
        for (id, name, value) in odd {
            let repaired = self
                .app
                .store
                .write(move |tx| clusters::renumber(tx, id))
                .await;
            if repaired.is_ok() {
                // The row may carry a declaration written together with the odd number,
                // which the feed did not show: look at it now, not at the next rescan.
                self.schedule.soon(id, Instant::now());
                Event::new(
                    Priority::Warning,
                    format!(
                        "row {id} ({name:?}): its change_seq held {value:?}, which kindler did \
                         not hand out (another program wrote it); kindler renumbered the row"
                    ),
                )
                .id(ids::ROW_RENUMBERED)
                .field("CLUSTER", &name)
                .emit();
            }
        }
    }

    /// While writes fail, tries an empty write now and then (off the loop: it may wait for
    /// the busy timeout), so that health recovers even when nobody declares anything.
    fn probe_writes(&mut self) {
        if self.write_probe.as_ref().is_some_and(|p| !p.is_finished()) {
            return;
        }
        let app = self.app.clone();
        self.write_probe = Some(tokio::spawn(async move {
            let result = app.store.write(|_| Ok(())).await;
            app.note_write(&result, "writing to the database");
        }));
    }

    /// A cluster's row: `Ok(None)` when it is gone, `Err` when the store could not say.
    async fn load(&self, id: i64) -> Result<Option<clusters::Parsed>, ()> {
        let row = self.app.store.read(move |c| clusters::by_id(c, id)).await;
        self.app
            .health
            .track(Cause::StoreReads, &row, "cannot read the clusters");
        row.map_err(|_| ())
    }

    /// Starts actions for due clusters while there is room.
    async fn dispatch(&mut self) {
        let settings = self.app.settings();
        let policy = self.policy(&settings);
        while self.running.len() < settings.max_concurrent_actions {
            let Some(id) = self.schedule.pop_due(Instant::now()) else {
                break;
            };
            // A busy cluster is looked at again when its action ends (and is recorded).
            if self.running.contains_key(&id)
                || self.pending.contains_key(&id)
                || self.visited.contains(&id)
            {
                continue;
            }
            let record = match self.load(id).await {
                Ok(None) => {
                    self.app.health.unignore_row(id);
                    continue;
                }
                // The store could not be read (busy, or briefly unavailable): look again
                // soon rather than forget the cluster until it changes.
                Err(()) => {
                    self.schedule
                        .set(id, Instant::now() + settings.poll_interval);
                    continue;
                }
                Ok(Some(Err(invalid))) => {
                    let row = IgnoredRow {
                        id,
                        name: invalid.name.clone(),
                        reason: invalid.reason.clone(),
                    };
                    if self.app.health.ignore_row(row) {
                        Event::new(Priority::Warning, invalid.to_string())
                            .id(ids::ROW_IGNORED)
                            .field("CLUSTER", &invalid.name)
                            .emit();
                    }
                    continue;
                }
                Ok(Some(Ok(record))) => record,
            };
            self.app.health.unignore_row(id);
            match decide(&record, SystemTime::now(), policy) {
                Decision::Act(action) => self.start(record, action, settings.clone()).await,
                Decision::At(t) => self.schedule.set(id, instant_at(t)),
                Decision::Idle => {}
            }
        }
    }

    async fn start(&mut self, record: ClusterRecord, action: Action, settings: Arc<Settings>) {
        // Saturating: attempts is read from the store, where another program may have
        // written any number (u32::MAX + 1 panicked here and ended the reconciler).
        let attempt = record.attempts.saturating_add(1);
        let tag = procs::new_tag();
        let (id, generation, name) = (record.id, record.generation, record.spec.name.to_string());
        let started_at = SystemTime::now();
        let run_tag = tag.clone();
        let begun = self
            .app
            .store
            .write(move |tx| {
                let run_id = runs::insert(
                    tx,
                    &runs::NewRun {
                        cluster_id: id,
                        cluster_name: &name,
                        action,
                        generation,
                        attempt,
                        started_at,
                        process_tag: &run_tag,
                    },
                )?;
                clusters::begin_action(tx, id, action)?;
                Ok(run_id)
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

        let live = LiveRun {
            tail: Arc::new(Mutex::new(Tail::new(settings.output_tail_lines))),
            target: Arc::new(Mutex::new(None)),
            changed: self.app.live_changed.clone(),
        };
        self.app.live.lock().unwrap().insert(run_id, live.clone());
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        self.running.insert(
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
        tokio::spawn(async move {
            let finished = action::execute(plan.clone(), settings, cancel, live).await;
            let reason = reason.lock().unwrap().take();
            let _ = done_tx.send(Done {
                plan,
                finished,
                reason,
            });
        });
    }

    /// Records how an action ended and decides when to look at the cluster again.
    async fn finish(&mut self, done: Done) {
        let id = done.plan.record.id;
        self.running.remove(&id);
        self.status_dirty = true;
        let verdict = Verdict::of(
            &done.plan,
            &done.finished,
            done.reason.as_ref(),
            &self.app.settings(),
        );
        self.pending.insert(
            id,
            PendingEnd {
                done,
                verdict,
                tries: 0,
                next_try: Instant::now(),
            },
        );
        self.record_end_of(id).await;
    }

    /// Records the ends whose retry is due.
    async fn record_due_ends(&mut self) {
        let now = Instant::now();
        let due: Vec<i64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next_try <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.record_end_of(id).await;
        }
    }

    /// Records how a run ended (its history row, and what it does to the cluster's row), or
    /// keeps it for a retry when the store does not take the write.
    async fn record_end_of(&mut self, id: i64) {
        let Some(mut pending) = self.pending.remove(&id) else {
            return;
        };
        let recorded = self.write_end(&pending).await;
        self.app
            .note_write(&recorded, "recording the end of an action");
        let (plan, finished) = (&pending.done.plan, &pending.done.finished);
        match recorded {
            Ok(end) => {
                self.app.live.lock().unwrap().remove(&plan.run_id);
                log_end(plan, finished, &pending.verdict, &end);
                match self.mode {
                    Mode::Daemon => self.schedule.soon(id, Instant::now()),
                    Mode::OnePass => match pending.verdict.outcome {
                        RunOutcome::Succeeded => self.report.succeeded += 1,
                        _ => self.report.failed += 1,
                    },
                }
            }
            Err(e) => {
                pending.tries += 1;
                let wait = END_RETRY_FIRST
                    .saturating_mul(1 << pending.tries.min(10))
                    .min(END_RETRY_MAX);
                pending.next_try = Instant::now() + wait;
                self.app.health.report(
                    Cause::RunEnds,
                    format!(
                        "the end of run {} ({} of {}) cannot be recorded: {e}; kindler keeps trying",
                        plan.run_id, plan.action, plan.record.spec.name
                    ),
                );
                self.pending.insert(id, pending);
            }
        }
        if self.pending.is_empty() {
            self.app.health.resolve(Cause::RunEnds);
        }
    }

    async fn write_end(&self, pending: &PendingEnd) -> StoreResult<EndRecord> {
        let settings = self.app.settings();
        let keep = settings.history_per_cluster;
        let backoff = (settings.backoff_initial, settings.backoff_max);
        let plan = pending.done.plan.clone();
        let finished = pending.done.finished.clone();
        let verdict = pending.verdict.clone();
        self.app
            .store
            .write(move |tx| record_end(tx, &plan, &finished, &verdict, keep, backoff))
            .await
    }

    /// Cancels every running action (the daemon is stopping), waits for them to end and
    /// records their ends (for a while, if the store does not take them at once).
    async fn stop_all(&mut self) {
        if !self.running.is_empty() {
            let grace = self.app.settings().kill_grace;
            // Tell systemd the stop may take a scripts' grace period longer than usual.
            systemd::extend_timeout(grace + END_RETRY_AT_STOP + Duration::from_secs(5));
            for running in self.running.values() {
                *running.reason.lock().unwrap() = Some(CancelReason::Shutdown);
                running.cancel.cancel();
            }
        }
        while !self.running.is_empty() {
            match self.done_rx.recv().await {
                Some(done) => self.finish(done).await,
                None => break,
            }
        }
        let give_up = Instant::now() + END_RETRY_AT_STOP;
        while let Some(next) = self.next_end_retry() {
            if next > give_up {
                break;
            }
            tokio::time::sleep_until(next.into()).await;
            self.record_due_ends().await;
        }
        if !self.pending.is_empty() {
            log::error(&format!(
                "stopping with {} runs whose end could not be recorded; the next start redoes them",
                self.pending.len()
            ));
        }
    }
}

/// Sleeps until `at`, or for ever when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The `Instant` at which wall-clock time `t` arrives (now, if it has passed).
fn instant_at(t: SystemTime) -> Instant {
    Instant::now()
        + t.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
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
