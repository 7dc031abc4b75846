//! Finding and ending the processes of an action: by process group, and by the tag every
//! process of a run inherits in its environment (which also finds a process that left the
//! group with `setsid`, and lets a restarted daemon find what a dead one left behind).

use std::fs;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The environment variable that carries a run's tag into all its processes.
pub const TAG_VAR: &str = "KINDLER_PROCESS_TAG";

/// How often a group is looked at while waiting for it to end.
const POLL: Duration = Duration::from_millis(20);

/// A set of processes belonging to one run.
#[derive(Debug, Clone)]
pub struct Target {
    /// The run's process group, while its leader is not yet reaped (so the id cannot have
    /// been reused by an unrelated group).
    pub pgid: Option<i32>,
    pub tag: String,
}

impl Target {
    /// The processes of a running action: its process group, led by `leader`, and
    /// whatever carries its tag.
    pub fn of_group(leader: i32, tag: String) -> Self {
        Target {
            pgid: Some(leader),
            tag,
        }
    }

    /// The processes carrying `tag`, wherever they are (a dead daemon's leftovers).
    pub fn of_tag(tag: String) -> Self {
        Target { pgid: None, tag }
    }

    /// Live (non-zombie) processes of the target, not counting this daemon: its group,
    /// whatever carries its tag, and the members of the tagged processes' groups. The last
    /// finds a process that dropped the tag (`sudo`, `env -u`) but stayed in the group of
    /// a tagged one, as when a restarted daemon ends what a dead one left: it knows the
    /// tag, not the group. A group that holds a tagged process now is the run's (the id
    /// cannot be reused while that member lives); this daemon's own group never is.
    pub fn live(&self) -> Vec<i32> {
        let needle = format!("{TAG_VAR}={}", self.tag);
        let own_group = nix::unistd::getpgrp().as_raw();
        let all: Vec<(i32, i32, bool)> = live_processes()
            .map(|(pid, st)| (pid, st.pgrp, has_env(pid, needle.as_bytes())))
            .collect();
        let mut groups: Vec<i32> = all
            .iter()
            .filter(|(_, _, tagged)| *tagged)
            .map(|(_, pgrp, _)| *pgrp)
            .chain(self.pgid)
            .filter(|g| *g > 1 && *g != own_group)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        all.into_iter()
            .filter(|(_, pgrp, tagged)| *tagged || groups.binary_search(pgrp).is_ok())
            .map(|(pid, _, _)| pid)
            .collect()
    }

    /// Sends `sig` to the group and to every tagged process.
    pub fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.pgid {
            match killpg(Pid::from_raw(pgid), sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => crate::log::debug(&format!("killpg({pgid}, {sig}) failed: {e}")),
            }
        }
        for pid in self.live() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// Waits until no live process is left or `deadline` passes; true when none is left.
    pub async fn wait_gone(&self, deadline: Instant) -> bool {
        loop {
            if self.live().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, then SIGKILL for whatever is still there after `grace`.
    /// Returns how many processes had to be killed with SIGKILL.
    pub async fn terminate(&self, grace: Duration) -> usize {
        if self.live().is_empty() {
            return 0;
        }
        self.signal(Signal::SIGTERM);
        if self.wait_gone(Instant::now() + grace).await {
            return 0;
        }
        let stubborn = self.live().len();
        self.signal(Signal::SIGKILL);
        self.wait_gone(Instant::now() + Duration::from_secs(2))
            .await;
        stubborn
    }
}

/// What `/proc/PID/stat` says about a process.
pub(crate) struct ProcStat {
    pub state: char,
    pub pgrp: i32,
}

impl ProcStat {
    /// Not a zombie (exited, not reaped yet) nor dead.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

pub(crate) fn stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 3 is the state; pgrp is field 5.
    let mut fields = stat_fields(&text)?;
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcStat { state, pgrp })
}

/// The fields of a `/proc/PID/stat` text from field 3 (the state) on, as proc(5) numbers
/// them. The command name before them is in parentheses and may itself contain ") ", so
/// they start after the last ')'.
pub(crate) fn stat_fields(text: &str) -> Option<std::str::Split<'_, char>> {
    Some(text.get(text.rfind(')')? + 2..)?.split(' '))
}

/// Every live (non-zombie) process but this one, with what `/proc/PID/stat` says of it.
pub(crate) fn live_processes() -> impl Iterator<Item = (i32, ProcStat)> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(move |pid| *pid != me)
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .filter(|(_, st)| st.is_live())
}

/// A process's environment, variable by variable (`NAME=value`); empty when unreadable.
pub(crate) fn environ(pid: i32) -> Vec<Vec<u8>> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).map(<[u8]>::to_vec).collect())
        .unwrap_or_default()
}

fn has_env(pid: i32, needle: &[u8]) -> bool {
    match fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env.split(|b| *b == 0).any(|var| var == needle),
        Err(_) => false,
    }
}

/// A fresh random tag for a run.
pub fn new_tag() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{:016x}{:08x}",
        u64::from_ne_bytes(bytes) ^ nanos,
        std::process::id()
    )
}
