//! Datagram sockets bound here whose messages are kept: systemd's NOTIFY_SOCKET, played
//! by the test or bench, and the benches' stand-in scripts reporting their starts.

use std::ops::Deref;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A unix datagram socket; every message that arrives is kept, with its arrival time, by
/// a thread of its own.
pub struct Datagrams {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Datagrams {
    pub fn bind(path: PathBuf) -> std::io::Result<Datagrams> {
        let sock = UnixDatagram::bind(&path)?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        Ok(Datagrams { path, messages })
    }

    /// Every message so far, in order of arrival.
    pub fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }
}

/// systemd's NOTIFY_SOCKET: `notify.sock` in a folder, its messages read as the
/// `KEY=value` lines they carry.
pub struct Notifications(Datagrams);

impl Deref for Notifications {
    type Target = Datagrams;
    fn deref(&self) -> &Datagrams {
        &self.0
    }
}

impl Notifications {
    /// Binds `notify.sock` in `dir`.
    pub fn try_bind(dir: &Path) -> std::io::Result<Notifications> {
        Datagrams::bind(dir.join("notify.sock")).map(Notifications)
    }

    pub fn bind(dir: &Path) -> Notifications {
        Notifications::try_bind(dir).expect("bind notify socket")
    }

    /// Assignments (`KEY=value`) received, in order, with their arrival times.
    pub fn assignments(&self) -> Vec<(Instant, String)> {
        self.all()
            .into_iter()
            .flat_map(|(t, m)| m.lines().map(|l| (t, l.to_owned())).collect::<Vec<_>>())
            .collect()
    }

    pub fn count(&self, line: &str) -> usize {
        self.assignments().iter().filter(|(_, l)| l == line).count()
    }

    /// When `line` first arrived.
    pub fn first(&self, line: &str) -> Option<Instant> {
        self.assignments()
            .into_iter()
            .find(|(_, l)| l == line)
            .map(|(at, _)| at)
    }

    /// Waits for a line satisfying `pred`, received at or after index `from` of
    /// `assignments()`; returns its index. Panics after `timeout`, naming `what`.
    pub fn await_line(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> usize {
        super::eventually(timeout, what, || {
            self.assignments()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, l))| pred(l))
                .map(|(i, _)| i)
        })
    }
}
