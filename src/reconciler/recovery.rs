//! Start-up: ending what a dead daemon left behind (runs without an end, and their
//! processes), so that their actions are redone cleanly.

use super::Reconciler;
use crate::log::{self, ids, Event, Priority};
use crate::model::Action;
use crate::procs::Target;

impl Reconciler {
    /// Ends what a previous daemon left behind: runs that never recorded an end (it was
    /// killed), and the processes of those runs that are still alive.
    pub(super) async fn recover(&mut self) {
        let unfinished = match self.app.store.unfinished_runs().await {
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
            let in_progress = run.action.and_then(Action::in_progress_state);
            // Only a cluster still in that action's state is redone; one that got further
            // since (its end was recorded by a later run) keeps its state.
            let cluster = run.cluster_id.zip(in_progress);
            let res = self.app.store.mark_interrupted(run.id, note, cluster).await;
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
}
