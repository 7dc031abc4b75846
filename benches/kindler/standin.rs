//! What the daemon runs as every command when this executable is started with BENCH_STANDIN.
//!
//! On start it sends "ACTION CLUSTER PID EPOCH_NS" (CLOCK_REALTIME) to the datagram socket
//! BENCH_STANDIN_SOCKET, if set. Its mode is the file BENCH_STANDIN_DIR/ACTION-CLUSTER if
//! that exists, else BENCH_STANDIN_ACTION (BENCH_STANDIN_CREATE, ...), else BENCH_STANDIN:
//!   ok              exit 0 at once           fail          exit 3 at once
//!   sleep:MS        exit 0 after MS ms       hang          sleep (SIGTERM ends it)
//!   stubborn        like hang, ignores SIGTERM
//!   lines:BYTES     print BYTES in 64-byte lines, exit 0
//!   longline:BYTES  print BYTES without a newline, exit 0
//! `hang` and `stubborn` give up after five minutes, so nothing is left behind for long.
//!
//! The driver receives the reports with [`Records`].

use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use kindler::testkit::{now_ns, poll, Datagrams};

use crate::Res;

const HANG_MAX: Duration = Duration::from_secs(300);

pub fn main() -> ! {
    let start = now_ns();
    let action = std::env::var("KINDLER_ACTION").unwrap_or_else(|_| "unknown".into());
    let cluster = std::env::var("KINDLER_CLUSTER").unwrap_or_else(|_| "unknown".into());
    if let Some(sock) = std::env::var_os("BENCH_STANDIN_SOCKET") {
        if let Ok(s) = UnixDatagram::unbound() {
            let msg = format!("{action} {cluster} {} {start}", std::process::id());
            let _ = s.send_to(msg.as_bytes(), sock);
        }
    }
    let mode = mode(&action, &cluster);
    std::process::exit(behave(mode.trim()))
}

fn mode(action: &str, cluster: &str) -> String {
    if let Some(dir) = std::env::var_os("BENCH_STANDIN_DIR") {
        let file = Path::new(&dir).join(format!("{action}-{cluster}"));
        if let Ok(m) = std::fs::read_to_string(file) {
            return m;
        }
    }
    std::env::var(format!("BENCH_STANDIN_{}", action.to_uppercase()))
        .or_else(|_| std::env::var("BENCH_STANDIN"))
        .unwrap_or_else(|_| "ok".into())
}

fn behave(mode: &str) -> i32 {
    let (name, arg) = mode.split_once(':').unwrap_or((mode, ""));
    let number = || arg.parse::<u64>().unwrap_or(0);
    match name {
        "ok" => 0,
        "fail" => 3,
        "sleep" => {
            std::thread::sleep(Duration::from_millis(number()));
            0
        }
        "hang" => {
            std::thread::sleep(HANG_MAX);
            0
        }
        "stubborn" => {
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            std::thread::sleep(HANG_MAX);
            0
        }
        "lines" => flood(number(), true),
        "longline" => flood(number(), false),
        _ => {
            eprintln!("unknown stand-in mode {mode:?}");
            64
        }
    }
}

fn flood(total: u64, lines: bool) -> i32 {
    let mut chunk = Vec::with_capacity(1 << 20);
    let mut i = 0u64;
    while chunk.len() < 1 << 20 {
        if lines {
            let mut line = format!("output line {i:08} ");
            line.extend(std::iter::repeat_n('.', 63 - line.len()));
            line.push('\n');
            chunk.extend_from_slice(line.as_bytes());
            i += 1;
        } else {
            chunk.push(b'x');
        }
    }
    // Straight to fd 1: std's stdout is line-buffered.
    let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if out.write_all(&chunk[..n]).is_err() {
            return 1;
        }
        left -= n as u64;
    }
    0
}

/// A stand-in's report of its start.
#[derive(Debug, Clone)]
pub struct Rec {
    pub action: String,
    pub cluster: String,
    pub pid: i32,
    /// When it started, CLOCK_REALTIME in ns.
    pub ns: u128,
}

/// The datagram socket the stand-ins report to (BENCH_STANDIN_SOCKET).
pub struct Records(Datagrams);

impl Records {
    pub fn bind(dir: &Path) -> Res<Records> {
        let path = dir.join("standin.sock");
        Datagrams::bind(path.clone())
            .map(Records)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn path_str(&self) -> &str {
        self.0.path.to_str().expect("a UTF-8 path")
    }

    /// The reports so far.
    fn all(&self) -> Vec<Rec> {
        self.0
            .all()
            .into_iter()
            .filter_map(|(_, text)| {
                let f: Vec<&str> = text.split(' ').collect();
                (f.len() == 4).then(|| Rec {
                    action: f[0].into(),
                    cluster: f[1].into(),
                    pid: f[2].parse().unwrap_or(0),
                    ns: f[3].parse().unwrap_or(0),
                })
            })
            .collect()
    }

    /// Waits until `n` reports satisfy `pred`; returns them.
    pub fn wait(&self, pred: impl Fn(&Rec) -> bool, n: usize, timeout: Duration) -> Res<Vec<Rec>> {
        let mut found = Vec::new();
        let enough = poll(timeout, Duration::from_millis(5), || {
            found = self.all().into_iter().filter(|r| pred(r)).collect();
            (found.len() >= n).then_some(())
        });
        match enough {
            Some(()) => Ok(found),
            None => Err(format!(
                "{} of {n} expected script starts after {timeout:?}",
                found.len()
            )),
        }
    }
}
