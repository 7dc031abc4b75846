//! When each cluster is next due for a look: a time-ordered queue with one entry per
//! cluster.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Schedule {
    by_time: BTreeSet<(Instant, i64)>,
    by_id: HashMap<i64, Instant>,
}

impl Schedule {
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

    /// The earliest cluster due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<i64> {
        let &(at, id) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.pop_first();
        self.by_id.remove(&id);
        Some(id)
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keeps_one_entry_per_cluster_in_time_order() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.set(1, t0 + Duration::from_secs(10));
        s.set(2, t0);
        s.soon(1, t0 + Duration::from_secs(20)); // later: ignored
        s.soon(1, t0 + Duration::from_secs(1)); // earlier: taken
        assert_eq!(s.pop_due(t0), Some(2));
        assert_eq!(s.pop_due(t0), None);
        assert_eq!(s.next_due(), Some(t0 + Duration::from_secs(1)));
        s.set(1, t0 + Duration::from_secs(5)); // replace
        assert_eq!(s.pop_due(t0 + Duration::from_secs(4)), None);
        assert_eq!(s.pop_due(t0 + Duration::from_secs(5)), Some(1));
        assert!(s.is_empty());
    }
}
