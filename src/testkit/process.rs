//! Processes, through /proc (parsed by [`crate::procs`]) and signals.

use std::ops::{Deref, DerefMut};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use crate::procs;

/// Is `pid` alive? A zombie is dead for our purposes.
pub fn alive(pid: i32) -> bool {
    procs::stat(pid).is_some_and(|s| s.is_live())
}

/// Live processes whose environment holds `var` (`NAME=value`), with that environment:
/// what a test's stand-in scripts started, found by the folder they were told of.
pub fn processes_with_env(var: &str) -> Vec<(i32, Vec<Vec<u8>>)> {
    procs::live_processes()
        .filter_map(|(pid, _)| {
            let env = procs::environ(pid);
            env.iter()
                .any(|v| v == var.as_bytes())
                .then_some((pid, env))
        })
        .collect()
}

/// Raises this process's soft limit on open files to the hard one (at most 16,384), for
/// tests and benchmarks that hold thousands of sockets.
pub fn room_for_sockets() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(16_384), hard);
    }
}

/// utime + stime of the whole process (all its threads, living and ended), in clock ticks.
pub fn cpu_ticks(pid: i32) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let bad = || format!("/proc/{pid}/stat: no utime and stime in {text:?}");
    // The fields start at field 3; utime and stime are fields 14 and 15.
    let mut f = procs::stat_fields(&text).ok_or_else(bad)?.skip(14 - 3);
    let mut next = || f.next().and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
    Ok(next()? + next()?)
}

/// The resident set size (VmRSS) in kB.
pub fn rss_kb(pid: i32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects on this process.
    unsafe { libc::kill(pid, sig) };
}

/// Waits for `child` to exit, looking every 0.5 ms (fine enough to time a stop); `None`
/// when it did not within `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    super::poll(timeout, Duration::from_micros(500), || {
        child.try_wait().ok().flatten()
    })
}

/// A child process that is killed when dropped unless it has exited, also when an
/// assertion or a benchmark fails first (a daemon left running would hold its socket and
/// files, and burn a little CPU, for the rest of the run).
pub struct Guarded(pub Child);

impl Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
