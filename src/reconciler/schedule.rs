//! When each cluster is looked at, and which may start an action now. The rules, all here:
//!
//! - a cluster is looked at when it is due, never before, earliest first; one entry per
//!   cluster (a new due time replaces the old one, or, with [`Schedule::soon`], only an
//!   earlier one does);
//! - at most `cap` actions run at once: while every slot is taken nothing is taken from the
//!   queue, so what is due waits there in order;
//! - one action per cluster: a cluster is busy while its action runs and until its end is
//!   recorded; a busy cluster that comes due is dropped from the queue and looked at again
//!   once it is free ([`Schedule::recorded`]).
//!
//! Times are tokio's [`Instant`], so the rules are tested with a paused clock.

use std::collections::{BTreeSet, HashMap, HashSet};

use tokio::time::Instant;

/// The queue, the running actions (each with its handle `R`) and the ends being recorded.
#[derive(Debug)]
pub struct Schedule<R> {
    by_time: BTreeSet<(Instant, i64)>,
    by_id: HashMap<i64, Instant>,
    running: HashMap<i64, R>,
    recording: HashSet<i64>,
    cap: usize,
}

impl<R> Schedule<R> {
    pub fn new(cap: usize) -> Self {
        Schedule {
            by_time: BTreeSet::new(),
            by_id: HashMap::new(),
            running: HashMap::new(),
            recording: HashSet::new(),
            cap: cap.max(1),
        }
    }

    /// Follows a reload of `max_concurrent_actions`.
    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
    }

    /// Due at `at`, replacing any earlier plan.
    pub fn set(&mut self, id: i64, at: Instant) {
        if let Some(old) = self.by_id.insert(id, at) {
            self.by_time.remove(&(old, id));
        }
        self.by_time.insert((at, id));
    }

    /// Due at `at` or earlier, if it already was.
    pub fn soon(&mut self, id: i64, at: Instant) {
        match self.by_id.get(&id) {
            Some(old) if *old <= at => {}
            _ => self.set(id, at),
        }
    }

    /// The earliest cluster due at or before `now` that may start an action: a slot is free
    /// and the cluster is not busy. Busy clusters that came due are dropped on the way.
    pub fn next(&mut self, now: Instant) -> Option<i64> {
        while self.running.len() < self.cap {
            let &(at, id) = self.by_time.first()?;
            if at > now {
                return None;
            }
            self.by_time.pop_first();
            self.by_id.remove(&id);
            if !self.is_busy(id) {
                return Some(id);
            }
        }
        None
    }

    /// When [`next`](Self::next) may next return a cluster: the earliest due time, if a
    /// slot is free (an action ending frees one, and wakes the loop by itself).
    pub fn next_wake(&self) -> Option<Instant> {
        if self.running.len() >= self.cap {
            return None;
        }
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Every slot is taken.
    pub fn is_full(&self) -> bool {
        self.running.len() >= self.cap
    }

    /// Clusters due at `now` that wait because every slot is taken, and the due time of
    /// the one waiting longest. (With a free slot, `next` has taken every due cluster.)
    /// Linear in the clusters due.
    pub fn waiting(&self, now: Instant) -> (usize, Option<Instant>) {
        if !self.is_full() {
            return (0, None);
        }
        let due = self
            .by_time
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter(|(_, id)| !self.is_busy(*id));
        let mut count = 0;
        let mut oldest = None;
        for (at, _) in due {
            count += 1;
            oldest.get_or_insert(*at);
        }
        (count, oldest)
    }

    /// An action of cluster `id` started.
    pub fn start(&mut self, id: i64, handle: R) {
        self.running.insert(id, handle);
    }

    /// The action of `id` ended: its slot is free; the cluster stays busy until its end is
    /// recorded.
    pub fn end(&mut self, id: i64) -> Option<R> {
        let handle = self.running.remove(&id);
        self.recording.insert(id);
        handle
    }

    /// The end of `id`'s action is recorded: it is free, and looked at at `at`.
    pub fn recorded(&mut self, id: i64, at: Instant) {
        self.recording.remove(&id);
        self.soon(id, at);
    }

    pub fn is_busy(&self, id: i64) -> bool {
        self.running.contains_key(&id) || self.recording.contains(&id)
    }

    pub fn running(&self, id: i64) -> Option<&R> {
        self.running.get(&id)
    }

    pub fn running_handles(&self) -> impl Iterator<Item = &R> {
        self.running.values()
    }

    pub fn running_count(&self) -> usize {
        self.running.len()
    }

    /// Nothing queued, running or being recorded (a one-off pass is over).
    pub fn is_idle(&self) -> bool {
        self.by_id.is_empty() && self.running.is_empty() && self.recording.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn due_clusters_come_in_time_order_one_entry_each() {
        let t0 = Instant::now();
        let mut s: Schedule<()> = Schedule::new(3);
        s.set(1, t0 + 10 * SEC);
        s.set(2, t0);
        s.soon(1, t0 + 20 * SEC); // later: ignored
        s.soon(1, t0 + SEC); // earlier: taken
        assert_eq!(s.next(Instant::now()), Some(2));
        assert_eq!(s.next(Instant::now()), None);
        assert_eq!(s.next_wake(), Some(t0 + SEC));
        s.set(1, t0 + 5 * SEC); // replaces
        tokio::time::sleep_until(s.next_wake().unwrap()).await;
        assert_eq!(
            Instant::now() - t0,
            5 * SEC,
            "the loop sleeps until it is due"
        );
        assert_eq!(s.next(Instant::now()), Some(1));
        assert!(s.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_cap_actions_run_and_what_is_due_waits_in_order() {
        let now = Instant::now();
        let mut s: Schedule<&str> = Schedule::new(2);
        for id in 1..=4 {
            s.set(id, now + Duration::from_millis(id as u64));
        }
        tokio::time::advance(SEC).await;
        let a = s.next(Instant::now()).unwrap();
        s.start(a, "a");
        let b = s.next(Instant::now()).unwrap();
        s.start(b, "b");
        assert_eq!((a, b), (1, 2));
        assert_eq!(s.next(Instant::now()), None, "no slot is free");
        assert_eq!(
            s.next_wake(),
            None,
            "nothing to wake for until an action ends"
        );
        assert_eq!(s.end(1), Some("a"));
        assert_eq!(s.next_wake(), Some(now + Duration::from_millis(3)));
        assert_eq!(s.next(Instant::now()), Some(3), "the next in order");
        s.set_cap(1);
        assert_eq!(s.running_count(), 1);
        assert_eq!(s.next(Instant::now()), None, "a smaller cap after a reload");
    }

    #[tokio::test(start_paused = true)]
    async fn one_action_per_cluster_until_its_end_is_recorded() {
        let mut s: Schedule<()> = Schedule::new(3);
        s.set(7, Instant::now());
        assert_eq!(s.next(Instant::now()), Some(7));
        s.start(7, ());
        // Declared again while it runs: due, but busy, so dropped rather than started.
        s.soon(7, Instant::now());
        assert_eq!(s.next(Instant::now()), None);
        s.end(7);
        s.soon(7, Instant::now());
        assert!(s.is_busy(7), "its end is not recorded yet");
        assert_eq!(s.next(Instant::now()), None);
        assert!(!s.is_idle());
        tokio::time::advance(SEC).await;
        s.recorded(7, Instant::now());
        assert_eq!(s.next(Instant::now()), Some(7), "free and due again");
    }
}
