//! systemd's NOTIFY_SOCKET, played by a unix datagram socket bound here: every message the
//! daemon sends is kept with the time it arrived. Shared by the test harness and the
//! benchmarks (benches/kindler.rs includes this file by path).
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Notifications {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Notifications {
    /// Binds `notify.sock` in `dir` and collects what arrives on a thread of its own.
    pub fn try_bind(dir: &Path) -> std::io::Result<Notifications> {
        let path = dir.join("notify.sock");
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
        Ok(Notifications { path, messages })
    }

    pub fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
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
}
