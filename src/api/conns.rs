//! The connections the API holds, and who makes room when there are too many.
//!
//! A client must always get through: 1,000 idle keep-alive connections, or 1,000
//! slowloris ones that send a header byte now and then, must not make a new client wait.
//! So kindler never stops accepting: when it holds [`MAX_CONNECTIONS`], the connection
//! idle the longest (no request in flight: a keep-alive connection between requests, or
//! one still sending its headers) is closed to make room; WebSocket connections count too,
//! and the oldest one goes when no HTTP connection is idle. A client that reconnects only
//! pushes out another idle one; requests in flight are never cut.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

/// Connections held at once (each is a file descriptor; kindler raises its soft limit at
/// start, see `systemd::raise_fd_limit`). Beyond it, the longest-idle one is closed.
pub const MAX_CONNECTIONS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    WebSocket,
}

struct Entry {
    kind: Kind,
    state: Arc<State>,
    evict: CancellationToken,
}

/// What a connection's task updates as it goes.
#[derive(Default)]
struct State {
    /// Requests being answered (0: idle).
    busy: AtomicUsize,
    /// Requests seen.
    requests: AtomicU64,
    /// When it last began or ended a request or message, in ms since `Connections::origin`.
    last_active_ms: AtomicU64,
}

pub struct Connections {
    origin: Instant,
    inner: Mutex<Inner>,
    max: usize,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            origin: Instant::now(),
            inner: Mutex::new(Inner::default()),
            max: max.max(1),
        })
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Takes a new connection in, closing the longest-idle one first when all places are
    /// taken. The connection leaves when the returned [`Held`] is dropped.
    pub fn admit(self: &Arc<Self>, kind: Kind) -> Held {
        let state = Arc::new(State::default());
        state.last_active_ms.store(self.now_ms(), Ordering::Relaxed);
        let evict = CancellationToken::new();
        let mut inner = self.inner.lock().unwrap();
        if inner.entries.len() >= self.max {
            if let Some(victim) = longest_idle(&inner.entries) {
                if let Some(entry) = inner.entries.remove(&victim) {
                    entry.evict.cancel();
                }
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.entries.insert(
            id,
            Entry {
                kind,
                state: state.clone(),
                evict: evict.clone(),
            },
        );
        Held {
            id,
            conns: self.clone(),
            state,
            evict,
        }
    }

    /// Connections held now: (HTTP, WebSocket).
    pub fn count(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        let ws = inner
            .entries
            .values()
            .filter(|e| e.kind == Kind::WebSocket)
            .count();
        (inner.entries.len() - ws, ws)
    }
}

/// The one to close: the HTTP connection idle the longest, else the oldest WebSocket.
fn longest_idle(entries: &HashMap<u64, Entry>) -> Option<u64> {
    let idle_http = entries
        .iter()
        .filter(|(_, e)| e.kind == Kind::Http && e.state.busy.load(Ordering::Relaxed) == 0)
        .min_by_key(|(_, e)| e.state.last_active_ms.load(Ordering::Relaxed));
    let oldest_ws = || {
        entries
            .iter()
            .filter(|(_, e)| e.kind == Kind::WebSocket)
            .min_by_key(|(_, e)| e.state.last_active_ms.load(Ordering::Relaxed))
    };
    idle_http.or_else(oldest_ws).map(|(id, _)| *id)
}

/// A connection's place; dropping it gives the place back.
pub struct Held {
    id: u64,
    conns: Arc<Connections>,
    state: Arc<State>,
    /// Cancelled when the connection is closed to make room.
    pub evict: CancellationToken,
}

impl Held {
    /// A request (or WebSocket message) begins: the connection is busy.
    pub fn begin(&self) -> Busy {
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        self.state.busy.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Busy {
            state: self.state.clone(),
            conns: self.conns.clone(),
        }
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Activity without a request (a WebSocket message): the connection is not idle.
    pub fn touch(&self) {
        let now = self.conns.now_ms();
        self.state.last_active_ms.store(now, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.conns.inner.lock().unwrap().entries.remove(&self.id);
    }
}

/// A request in flight; the connection is idle again once it is dropped.
pub struct Busy {
    state: Arc<State>,
    conns: Arc<Connections>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.busy.fetch_sub(1, Ordering::Relaxed);
        let now = self.conns.now_ms();
        self.state.last_active_ms.store(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_longest_idle_connection_makes_room() {
        let conns = Connections::new(3);
        let a = conns.admit(Kind::Http);
        let b = conns.admit(Kind::Http);
        let ws = conns.admit(Kind::WebSocket);
        let _busy = a.begin(); // a request in flight: never cut
        std::thread::sleep(std::time::Duration::from_millis(5));
        b.touch();
        let c = conns.admit(Kind::Http);
        assert!(!a.evict.is_cancelled(), "busy");
        assert!(
            b.evict.is_cancelled(),
            "the idle HTTP connection goes first"
        );
        assert!(!ws.evict.is_cancelled());
        assert_eq!(conns.count(), (2, 1));
        // No idle HTTP connection left (c is new but idle): c goes next, then the WebSocket.
        let _c_busy = c.begin();
        let d = conns.admit(Kind::Http);
        assert!(ws.evict.is_cancelled(), "then the oldest WebSocket");
        drop(d);
        assert_eq!(conns.count(), (2, 0));
    }
}
