//! Wall-clock time as kindler's decisions see it.
//!
//! Backoffs and resyncs are stored as wall-clock times (so that they survive a restart and
//! other tools can read them), and the loop sleeps on tokio's clock. The daemon reads the
//! system's clock; a test pauses tokio's clock and lets wall time follow it, so that a
//! backoff of minutes passes at once and exactly.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's clock.
    System,
    /// Wall time that moves with tokio's clock from `wall` at `at`.
    FollowsTokio { wall: SystemTime, at: Instant },
}

impl Clock {
    /// Wall time that follows tokio's clock from now on (for tests with a paused clock).
    pub fn following_tokio() -> Clock {
        Clock::FollowsTokio {
            wall: SystemTime::now(),
            at: Instant::now(),
        }
    }

    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::FollowsTokio { wall, at } => *wall + at.elapsed(),
        }
    }

    /// The tokio instant at which wall time `t` arrives (now, if it has passed).
    pub fn instant_at(&self, t: SystemTime) -> Instant {
        let wait = t.duration_since(self.now()).unwrap_or(Duration::ZERO);
        Instant::now() + wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_time_follows_a_paused_tokio_clock() {
        let clock = Clock::following_tokio();
        let t0 = clock.now();
        let due = t0 + Duration::from_secs(300);
        let at = clock.instant_at(due);
        tokio::time::sleep_until(at).await;
        assert_eq!(clock.now(), due);
        assert_eq!(clock.instant_at(t0), Instant::now(), "a past time is now");
    }
}
