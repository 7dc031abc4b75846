//! What the integration tests (`tests/`) and the benchmarks (`benches/kindler/`) share to
//! drive a real kindler: a daemon started on a socket passed the way systemd passes it,
//! a small HTTP client, systemd's NOTIFY_SOCKET played by a datagram socket, and a look
//! at processes through /proc. Not part of kindler's interface (hidden from its docs).
//!
//! It lives in the library so that tests and benches link it as any user of the crate
//! does (compiled once, no `#[path]`), and so that it reads /proc with [`crate::procs`]'
//! own parser.

mod daemon;
mod http;
mod notify;
pub mod postgres;
mod process;

pub use daemon::{clean_env, free_port, pass_socket, Daemon};
pub use http::{request, send_raw, try_request, unix_request, Connection, Response};
pub use notify::{Datagrams, Notifications};
pub use process::{
    alive, cpu_ticks, processes_with_env, room_for_sockets, rss_kb, signal, wait_exit, Guarded,
};

use std::time::{Duration, Instant};

/// Calls `f` every `every` until it returns `Some` (at least once), for at most `timeout`;
/// `None` when time ran out.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// [`poll`] for a check that can fail: the first error ends the wait.
pub fn try_poll<T, E>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    poll(timeout, every, || f().transpose()).transpose()
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn eventually<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, Duration::from_millis(20), f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// CLOCK_REALTIME in nanoseconds since the epoch (comparable across processes).
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}
