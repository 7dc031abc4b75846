//! A kindler daemon on a socket passed the way systemd passes it.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::{poll, process, try_poll, try_request, Notifications};

/// A running daemon. Dropped while it runs, it is killed, or stopped with SIGTERM first
/// when `drop_grace` is set (so that it ends the scripts it runs); a test that panicked
/// gets the daemon's log printed.
pub struct Daemon {
    pub child: Child,
    /// Its stderr.
    pub log: PathBuf,
    /// The API socket's port.
    pub port: u16,
    /// Just before the spawn.
    pub spawned: Instant,
    /// Dropped while running: SIGTERM, and this long to exit before SIGKILL.
    pub drop_grace: Option<Duration>,
}

impl Daemon {
    /// Starts `cmd` with `listener` as its fd 3 (see [`pass_socket`]) and its stderr
    /// written to `log`. Does not wait for it to be ready.
    pub fn spawn(
        mut cmd: Command,
        listener: &TcpListener,
        log: PathBuf,
    ) -> std::io::Result<Daemon> {
        cmd.stderr(std::fs::File::create(&log)?);
        pass_socket(&mut cmd, listener);
        let spawned = Instant::now();
        let child = cmd.spawn()?;
        Ok(Daemon {
            child,
            log,
            port: listener.local_addr()?.port(),
            spawned,
            drop_grace: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        process::signal(self.pid(), sig);
    }

    /// Waits until `GET /api/health` answers 200.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        poll(timeout, Duration::from_millis(20), || {
            let r = try_request(
                self.port,
                "GET",
                "/api/health",
                None,
                Duration::from_secs(2),
            );
            (r.ok()?.status == 200).then_some(())
        })
        .ok_or_else(|| {
            format!("timed out after {timeout:?} waiting for the daemon to answer /api/health")
        })
    }

    /// Waits for the daemon to send `READY=1` to `notify` (its NOTIFY_SOCKET); returns
    /// when that arrived. An error, with the log's end, when it exits or time runs out.
    pub fn wait_notified_ready(
        &mut self,
        notify: &Notifications,
        timeout: Duration,
    ) -> Result<Instant, String> {
        let ready = try_poll(timeout, Duration::from_millis(1), || {
            if let Some(at) = notify.first("READY=1") {
                return Ok(Some(at));
            }
            match self.child.try_wait() {
                Ok(Some(status)) => Err(format!("kindler exited with {status} before READY=1")),
                _ => Ok(None),
            }
        });
        match ready {
            Ok(Some(at)) => Ok(at),
            Ok(None) => Err(format!("no READY=1 in {timeout:?}: {}", self.log_tail(15))),
            Err(e) => Err(format!("{e}: {}", self.log_tail(15))),
        }
    }

    /// Waits for the daemon to exit; None when it did not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        process::wait_exit(&mut self.child, timeout)
    }

    /// SIGTERM, then waits up to `timeout` for the exit (SIGKILL after that); returns how
    /// long the exit took.
    pub fn stop(&mut self, timeout: Duration) -> Result<(Duration, ExitStatus), String> {
        let t0 = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(timeout);
        let took = t0.elapsed();
        match status {
            Some(status) => Ok((took, status)),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(format!("kindler did not exit in {timeout:?} after SIGTERM"))
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let stopped = self
                .drop_grace
                .is_some_and(|grace| self.stop(grace).is_ok());
            if !stopped {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Makes `listener` the child's fd 3 and sets LISTEN_FDS/LISTEN_FDNAMES, as systemd does
/// (LISTEN_PID is left out: the child's pid is not known before the fork).
pub fn pass_socket(cmd: &mut Command, listener: &TcpListener) {
    let fd = listener.as_raw_fd();
    cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "http");
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) are made.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // Already fd 3: only the close-on-exec flag has to go.
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Keeps the variables that systemd or kindler would read (KINDLER_*, LISTEN_*,
/// WATCHDOG_*, NOTIFY_SOCKET, JOURNAL_STREAM), and those starting with one of `also`,
/// from reaching the child from this process's environment.
pub fn clean_env(cmd: &mut Command, also: &[&str]) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let private = ["KINDLER_", "LISTEN_", "WATCHDOG_"]
            .iter()
            .chain(also)
            .any(|p| k.starts_with(p));
        if private || k == "NOTIFY_SOCKET" || k == "JOURNAL_STREAM" {
            cmd.env_remove(k);
        }
    }
}

/// A free TCP port on loopback (bound and released; fine where a port number is needed).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
