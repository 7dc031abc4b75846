//! The runs in progress, as others may see them: their output so far (the task endpoint
//! and the WebSocket show it) and their processes (a forced stop kills them). The
//! reconciler adds and removes runs; everyone else only looks, through [`LiveRuns`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::output::Tail;
use crate::procs::Target;

/// One run in progress: shared between the reconciler and the task that runs it.
#[derive(Clone)]
pub struct LiveRun {
    pub tail: Arc<Mutex<Tail>>,
    pub target: Arc<Mutex<Option<Target>>>,
    /// Output lines so far, to tell whether the tail moved since it was last shared.
    lines: Arc<AtomicU64>,
    changed: Arc<watch::Sender<()>>,
}

impl LiveRun {
    /// Keeps an output line (and tells watchers).
    pub fn line(&self, line: &str) {
        self.tail.lock().unwrap().push(line);
        self.lines.fetch_add(1, Ordering::Relaxed);
        self.changed.send_replace(());
    }
}

/// The runs in progress, by run id.
pub struct LiveRuns {
    runs: Mutex<HashMap<i64, LiveRun>>,
    /// Changes with every output line of any run in progress, and when a run begins or
    /// ends.
    changed: Arc<watch::Sender<()>>,
    /// Moves when a run begins or ends (see [`LiveRuns::generation`]).
    generation: AtomicU64,
}

impl Default for LiveRuns {
    fn default() -> Self {
        LiveRuns {
            runs: Mutex::new(HashMap::new()),
            changed: Arc::new(watch::Sender::new(())),
            generation: AtomicU64::new(0),
        }
    }
}

impl LiveRuns {
    /// A new run in progress, keeping its last `tail_lines` output lines.
    pub(crate) fn add(&self, run_id: i64, tail_lines: usize) -> LiveRun {
        let run = LiveRun {
            tail: Arc::new(Mutex::new(Tail::new(tail_lines))),
            target: Arc::new(Mutex::new(None)),
            lines: Arc::new(AtomicU64::new(0)),
            changed: self.changed.clone(),
        };
        self.runs.lock().unwrap().insert(run_id, run.clone());
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.changed.send_replace(());
        run
    }

    /// The run is over and recorded.
    pub(crate) fn remove(&self, run_id: i64) {
        self.runs.lock().unwrap().remove(&run_id);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.changed.send_replace(());
    }

    /// A number that moves whenever a run begins or ends (not with its output): what is
    /// known about which runs are in progress holds while it stays.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Output lines of a run in progress, if it is one.
    pub fn lines(&self, run_id: i64) -> Option<Vec<String>> {
        let runs = self.runs.lock().unwrap();
        runs.get(&run_id).map(|r| r.tail.lock().unwrap().lines())
    }

    /// The output of each run in progress that printed since `shared` last saw it (by run
    /// id: how many lines it had printed then), which is brought up to date; runs that
    /// ended are dropped from it.
    pub fn unshared_output(&self, shared: &mut HashMap<i64, u64>) -> Vec<(i64, Vec<String>)> {
        let runs = self.runs.lock().unwrap();
        shared.retain(|id, _| runs.contains_key(id));
        let mut moved = Vec::new();
        for (id, run) in runs.iter() {
            let lines = run.lines.load(Ordering::Relaxed);
            if shared.get(id).copied().unwrap_or(0) < lines {
                shared.insert(*id, lines);
                moved.push((*id, run.tail.lock().unwrap().lines()));
            }
        }
        moved
    }

    /// Runs in progress (including those whose end is being recorded).
    pub fn count(&self) -> usize {
        self.runs.lock().unwrap().len()
    }

    /// The processes of every run in progress (for the forced stop).
    pub fn targets(&self) -> Vec<Target> {
        let runs = self.runs.lock().unwrap();
        runs.values()
            .filter_map(|r| r.target.lock().unwrap().clone())
            .collect()
    }

    /// Changes with every output line of a run in progress, and when a run begins or ends.
    pub fn watch(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }
}
