//! Retry delays: exponential per cluster, with jitter so that clusters that failed
//! together do not all retry in the same instant.

use std::time::Duration;

/// The delay before retry number `attempts` (1 after the first failure):
/// `initial * 2^(attempts-1)`, capped at `max`, then spread by up to ±20 %.
pub fn delay(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp).min(max);
    let spread = base.as_secs_f64() * 0.2 * (2.0 * unit_random() - 1.0);
    Duration::from_secs_f64((base.as_secs_f64() + spread).max(0.0)).min(max)
}

/// A number in [0, 1); quality is irrelevant here, only spread.
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_and_stops_at_the_cap() {
        let (initial, max) = (Duration::from_secs(5), Duration::from_secs(300));
        for (attempt, base) in [(1u32, 5.0), (2, 10.0), (3, 20.0), (7, 300.0), (40, 300.0)] {
            for _ in 0..50 {
                let d = delay(attempt, initial, max).as_secs_f64();
                assert!(
                    d >= base * 0.8 - 1e-9 && d <= (base * 1.2).min(300.0) + 1e-9,
                    "{attempt}: {d}"
                );
            }
        }
    }
}
