//! Noticing what was declared: the change feed (rows declared since the last look), rows
//! other programs wrote (the store's `data_version`), a full rescan now and then, and the
//! store's health (its file, its writes).

use std::time::Duration;

use tokio::time::Instant;

use super::{machine, CancelReason, Found, Mode, Reconciler};
use crate::health::Cause;
use crate::log::{self, ids, Event, Priority};
use crate::model::{ActualState, DesiredState};
use crate::systemd;

/// How often old history is pruned.
pub(super) const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);
/// In a fleet, how often running runs' new output is shared with the other agents.
const OUTPUT_SHARE_EVERY: Duration = Duration::from_secs(1);

impl Reconciler {
    /// Puts every cluster on the schedule: running ones at their next resync, the rest now
    /// (a cluster already due earlier stays so). At start-up, then once per resync interval;
    /// retried by the poll until it succeeds (the store may be locked at start-up).
    pub(super) async fn load_all(&mut self) {
        let loaded = self.app.store.schedule().await;
        self.app
            .health
            .track(Cause::StoreReads, &loaded, "cannot load the clusters");
        let Ok((cursor, rows)) = loaded else { return };
        // The feed starts where the first load stands. A rescan leaves the cursor alone:
        // a declaration it sees is still read from the feed, where running actions it no
        // longer serves are cancelled.
        if !self.loaded {
            self.cursor = cursor;
        }
        self.loaded = true;
        let resync = self.app.settings().resync_interval;
        let now = Instant::now();
        self.next_rescan = now + resync;
        for row in rows {
            let converged = self.mode == Mode::Daemon
                && row.actual == ActualState::Running
                && row.desired == Some(DesiredState::Present);
            let due = match row.last_reconciled_at.map(std::time::SystemTime::from) {
                Some(last) if converged => self.app.clock.instant_at(last + resync),
                _ => now,
            };
            self.schedule.soon(row.id, due);
        }
        self.repair_change_numbers().await;
    }

    /// In a fleet, puts the output the running runs printed since the last time where the
    /// other agents' APIs read it, at most every [`OUTPUT_SHARE_EVERY`].
    async fn share_output(&mut self) {
        if !self.app.store.is_fleet() || Instant::now() < self.next_output_share {
            return;
        }
        self.next_output_share = Instant::now() + OUTPUT_SHARE_EVERY;
        for (run_id, lines) in self.app.runs.unshared_output(&mut self.shared_output) {
            if let Err(e) = self.app.store.share_output(run_id, &lines).await {
                // Shown once it ends; the next share sends it again.
                self.shared_output.remove(&run_id);
                log::debug(&format!("cannot share the output of run {run_id}: {e}"));
            }
        }
    }

    /// Reads the change feed (rows declared since the cursor) and the clusters the API
    /// nudged, and puts them on the schedule.
    pub(super) async fn sync_changes(&mut self) {
        let now = Instant::now();
        let mut touched = self.app.take_nudged();
        let cursor = self.cursor;
        let changed = self.app.store.changed_since(cursor).await;
        self.app
            .health
            .track(Cause::ChangeFeed, &changed, "cannot read new declarations");
        self.feed_stale = changed.is_err();
        if let Ok((top, ids)) = changed {
            self.cursor = self.cursor.max(top);
            crate::metrics::METRICS.feed_read(self.cursor);
            touched.extend(ids);
        }
        let mut recheck = Vec::new();
        for id in touched {
            self.schedule.soon(id, now);
            if self.schedule.running(id).is_some() {
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
            Found::Row(record) => Some(record.desired),
            Found::Invalid(_) | Found::Gone => None,
            // Unknown is not "changed": the action carries on.
            Found::Unknown => return,
        };
        let Some(running) = self.schedule.running(id) else {
            return;
        };
        if machine::keeps_running(running.action, desired) {
            return;
        }
        *running.reason.lock().unwrap() = Some(CancelReason::Redeclared(desired));
        running.cancel.cancel();
    }

    pub(super) async fn poll(&mut self) {
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
        self.share_output().await;
        if self.status_dirty {
            self.status_dirty = false;
            if let Ok(summary) = self.app.store.summary().await {
                let line = systemd::status_line(&summary, self.app.clock.now());
                self.app.health.set_summary(line);
            }
        }
        if Instant::now() >= self.next_maintenance {
            self.next_maintenance = Instant::now() + MAINTENANCE_EVERY;
            let max_age = settings.history_max_age;
            if let Err(e) = self.app.store.prune_old(max_age).await {
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
        let Ok(odd) = self.app.store.odd_change_numbers().await else {
            return;
        };
        for (id, name, value) in odd {
            let repaired = self.app.store.renumber(id).await;
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
            let result = app.store.probe_write().await;
            app.note_write(&result, "writing to the database");
        }));
    }
}
