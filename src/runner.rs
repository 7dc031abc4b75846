//! Running one command of an action: in its own process group, with an argument vector
//! (never a shell), a clean environment, output read line by line with bounded memory, a
//! timeout, and cancellation that ends the whole group (SIGTERM, grace, SIGKILL).
//!
//! The group leader is not reaped until its group has been dealt with: while it is a
//! zombie its pid (and so the group id) cannot be reused, so signalling the group can
//! never hit an unrelated process.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use crate::output::LineSplitter;
use crate::procs::{Target, TAG_VAR};

/// How long output is still read after the command exited, for lines still in the pipe.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// What to run.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// The command's whole environment (see `reconciler::action::environment`).
    pub env: Vec<(OsString, OsString)>,
    /// Inherited by every process of the run as `KINDLER_PROCESS_TAG`.
    pub tag: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub grace: Duration,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => match nix::sys::signal::Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The command exited by itself.
    Exited(Exit),
    /// The timeout passed and the group was ended.
    TimedOut(Option<Exit>),
    /// The run was cancelled and the group was ended.
    Cancelled(Option<Exit>),
    /// The command could not be started.
    SpawnFailed(String),
}

impl Ending {
    pub fn exit(&self) -> Option<Exit> {
        match self {
            Ending::Exited(e) => Some(*e),
            Ending::TimedOut(e) | Ending::Cancelled(e) => *e,
            Ending::SpawnFailed(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub ending: Ending,
    /// Processes that outlived the command (background children) and were ended.
    pub leftovers: usize,
    /// Processes that ignored SIGTERM for the whole grace period.
    pub killed: usize,
}

/// Runs `inv` to its end. `on_spawn` gets the process group id once the process exists;
/// `on_line` gets every output line (stdout and stderr, interleaved as written).
pub async fn run(
    inv: &Invocation,
    limits: Limits,
    cancel: &CancellationToken,
    on_spawn: impl FnOnce(i32),
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Report {
    // posix_spawn suspends the calling thread until the child has exec'd (about a
    // millisecond); the worker's other tasks move on meanwhile.
    let spawned = match tokio::task::block_in_place(|| spawn(inv)) {
        Ok(s) => s,
        Err(e) => {
            return Report {
                ending: Ending::SpawnFailed(format!("cannot run {:?}: {e}", inv.program)),
                leftovers: 0,
                killed: 0,
            }
        }
    };
    let Spawned { pid, exit, reader } = spawned;
    on_spawn(pid);
    let target = Target::of_group(pid, inv.tag.clone());
    let mut out = Output::new(reader, on_line);
    let deadline = tokio::time::Instant::now() + limits.timeout;

    enum Why {
        Exited,
        TimedOut,
        Cancelled,
    }
    let why = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Why::Cancelled,
            _ = tokio::time::sleep_until(deadline) => break Why::TimedOut,
            _ = exit.wait() => break Why::Exited,
            _ = out.read_some(), if !out.eof => {}
        }
    };

    let (status, leftovers, killed) = match why {
        Why::Exited => {
            out.pump_for(DRAIN_AFTER_EXIT).await;
            // Reaping first makes an empty group cheap to recognise: without its leader the
            // group id exists only while a process still belongs to it, and while one does,
            // the id cannot be handed to anybody else.
            let status = reap(pid);
            let (mut leftovers, mut killed) = (0, 0);
            // Background children the script left behind (still in its group, or holding
            // its output open from elsewhere) are part of the action. A process that left
            // both (its own session, its output elsewhere) was daemonized on purpose and is
            // left alone: looking for it by tag after every action would read every
            // process's environment (see DESIGN.md).
            if group_exists(pid) || !out.eof {
                leftovers = target.live().len();
                if leftovers > 0 {
                    killed = out.pump_while(target.terminate(limits.grace)).await;
                }
            }
            (status, leftovers, killed)
        }
        Why::TimedOut | Why::Cancelled => {
            let killed = out.pump_while(target.terminate(limits.grace)).await;
            out.pump_while(exit.wait()).await;
            (reap(pid), 0, killed)
        }
    };
    out.pump_for(DRAIN_AFTER_EXIT).await;
    out.finish();
    let ending = match why {
        Why::Exited => Ending::Exited(status.unwrap_or(Exit::Code(-1))),
        Why::TimedOut => Ending::TimedOut(status),
        Why::Cancelled => Ending::Cancelled(status),
    };
    Report {
        ending,
        leftovers,
        killed,
    }
}

struct Spawned {
    pid: i32,
    exit: ExitWatch,
    reader: pipe::Receiver,
}

fn spawn(inv: &Invocation) -> io::Result<Spawned> {
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let write_end2 = write_end.try_clone()?;
    let mut cmd = Command::new(&inv.program);
    cmd.args(&inv.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_end2))
        .process_group(0);
    // The whole environment is the invocation's: nothing of the daemon's leaks in.
    cmd.env_clear();
    cmd.envs(inv.env.iter().map(|(k, v)| (k, v)));
    cmd.env(TAG_VAR, &inv.tag);
    let child = cmd.spawn()?;
    // The write ends live in `cmd`; drop them so the pipe ends when the script's side does.
    drop(cmd);
    let pid = child.id() as i32;
    // `child` is not waited through std: the exit is watched and reaped below.
    std::mem::forget(child);
    let reader = pipe::Receiver::from_owned_fd(read_end)?;
    Ok(Spawned {
        pid,
        exit: ExitWatch::new(pid),
        reader,
    })
}

/// Does any process still belong to process group `pgid`?
fn group_exists(pgid: i32) -> bool {
    !matches!(
        nix::sys::signal::killpg(Pid::from_raw(pgid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Reaps the group leader and reads its status.
fn reap(pid: i32) -> Option<Exit> {
    match waitpid(Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, code)) => Some(Exit::Code(code)),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(Exit::Signal(sig as i32)),
        _ => None,
    }
}

/// Waits for a child's exit without reaping it: a pidfd becomes readable when the process
/// ends; kernels without pidfd get a poll of `waitid(WNOWAIT)`.
enum ExitWatch {
    PidFd(AsyncFd<OwnedFd>),
    Poll(i32),
}

impl ExitWatch {
    fn new(pid: i32) -> Self {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: the descriptor was just created and is owned by nobody else.
            let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // SAFETY: an OwnedFd keeps returning the same open descriptor until dropped.
            let registered =
                unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) };
            if let Ok(afd) = registered {
                return ExitWatch::PidFd(afd);
            }
        }
        ExitWatch::Poll(pid)
    }

    async fn wait(&self) {
        match self {
            ExitWatch::PidFd(fd) => {
                // Readable stays readable once the process has exited.
                let _ = fd.readable().await.map(|mut g| g.retain_ready());
            }
            ExitWatch::Poll(pid) => loop {
                use nix::sys::wait::{waitid, Id, WaitPidFlag};
                let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
                match waitid(Id::Pid(Pid::from_raw(*pid)), flags) {
                    Ok(WaitStatus::StillAlive) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    _ => return,
                }
            },
        }
    }
}

/// The read side of a run's output pipe.
struct Output<'a> {
    reader: pipe::Receiver,
    buf: Box<[u8]>,
    lines: LineSplitter,
    on_line: &'a mut (dyn FnMut(&str) + Send),
    eof: bool,
}

impl<'a> Output<'a> {
    fn new(reader: pipe::Receiver, on_line: &'a mut (dyn FnMut(&str) + Send)) -> Self {
        Output {
            reader,
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            lines: LineSplitter::default(),
            on_line,
            eof: false,
        }
    }

    async fn read_some(&mut self) {
        match self.reader.read(&mut self.buf).await {
            Ok(0) | Err(_) => self.eof = true,
            Ok(n) => {
                let on_line = &mut *self.on_line;
                self.lines.feed(&self.buf[..n], |l| on_line(l));
            }
        }
    }

    /// Keeps reading output while `fut` runs; returns its result.
    async fn pump_while<F: Future>(&mut self, fut: F) -> F::Output {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                v = &mut fut => return v,
                _ = self.read_some(), if !self.eof => {}
            }
        }
    }

    /// Reads until the pipe ends or `limit` passes (a process that escaped the group may
    /// hold the pipe open forever).
    async fn pump_for(&mut self, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        while !self.eof {
            if tokio::time::timeout_at(until, self.read_some())
                .await
                .is_err()
            {
                break;
            }
        }
    }

    fn finish(&mut self) {
        let on_line = &mut *self.on_line;
        self.lines.finish(|l| on_line(l));
    }
}
