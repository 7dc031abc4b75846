//! systemd integration: sockets passed by socket activation, the fallback bind, and
//! sd_notify messages (readiness, status, watchdog, stop and reload).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sd_notify::NotifyState;

use crate::log;
use crate::store::clusters::Summary;

/// A socket the API serves on.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    /// A unix socket; `owned` is the path kindler created and removes on exit.
    Unix {
        listener: UnixListener,
        owned: Option<PathBuf>,
    },
}

impl Listener {
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("http://{a}"),
                Err(_) => "tcp socket".into(),
            },
            Listener::Unix { listener, .. } => match listener.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix socket".into(),
                },
                Err(_) => "unix socket".into(),
            },
        }
    }
}

/// Takes the sockets systemd passed (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES) and removes
/// those variables, so no child inherits them. Must run before any thread is started:
/// changing the environment is only sound while the process has one thread.
///
/// Sockets named `http` (the TCP listener of kindler.socket) and `api` (the unix listener
/// of kindler-api.socket), or not named at all, are served, each as the kind of socket it
/// is; sockets with other names are logged and left alone.
pub fn take_activated_sockets() -> io::Result<Vec<Listener>> {
    let names: Option<Vec<String>> = std::env::var("LISTEN_FDNAMES")
        .ok()
        .map(|n| n.split(':').map(str::to_owned).collect());
    // listenfd checks LISTEN_PID and removes LISTEN_PID and LISTEN_FDS.
    let mut fds = listenfd::ListenFd::from_env();
    std::env::remove_var("LISTEN_FDNAMES");
    let mut listeners = Vec::new();
    for idx in 0..fds.len() {
        let name = names
            .as_ref()
            .and_then(|n| n.get(idx).cloned())
            .unwrap_or_else(|| "unknown".into());
        if !matches!(name.as_str(), "http" | "api" | "unknown" | "") {
            log::warn(&format!(
                "ignoring passed socket {idx} named {name:?}: kindler serves sockets named \"http\" and \"api\""
            ));
            continue;
        }
        let listener = match fds.take_tcp_listener(idx) {
            Ok(tcp) => tcp.map(Listener::Tcp),
            Err(_) => fds
                .take_unix_listener(idx)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("passed socket {idx} ({name}): {e}"))
                })?
                .map(|listener| Listener::Unix {
                    listener,
                    owned: None,
                }),
        };
        if let Some(l) = listener {
            set_nonblocking(&l)?;
            listeners.push(l);
        }
    }
    Ok(listeners)
}

/// Binds the configured addresses (used when systemd passed no socket).
pub fn bind(tcp: Option<SocketAddr>, unix: Option<&Path>) -> io::Result<Vec<Listener>> {
    let mut listeners = Vec::new();
    if let Some(addr) = tcp {
        let l = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        listeners.push(Listener::Tcp(l));
    }
    if let Some(path) = unix {
        listeners.push(bind_unix(path)?);
    }
    for l in &listeners {
        set_nonblocking(l)?;
    }
    Ok(listeners)
}

fn bind_unix(path: &Path) -> io::Result<Listener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        // A socket file left by a process that is gone.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(Listener::Unix {
        listener,
        owned: Some(path.to_owned()),
    })
}

fn set_nonblocking(l: &Listener) -> io::Result<()> {
    match l {
        Listener::Tcp(t) => t.set_nonblocking(true),
        Listener::Unix { listener, .. } => listener.set_nonblocking(true),
    }
}

/// Raises the soft limit on open files to the hard one (at most 65,536): each connection
/// and each script's output pipe is a file descriptor, and systemd's default soft limit
/// of 1,024 would be met by a flood of connections (see `api::conns`). Returns the limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    let want = hard.min(65_536);
    if soft < want && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() {
        return want;
    }
    soft
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug(&format!("sd_notify failed: {e}"));
    }
}

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: ending running actions"),
    ]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// Asks systemd for more time to stop (only has an effect while stopping).
pub fn extend_timeout(by: Duration) {
    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
    notify(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

/// The watchdog interval systemd asked for (WATCHDOG_USEC), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// The one-line summary shown by `systemctl status kindler`.
pub fn status_line(summary: &Summary, now: SystemTime) -> String {
    let total: i64 = summary.by_state.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return "no clusters declared".into();
    }
    let parts: Vec<String> = summary
        .by_state
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let noun = if total == 1 { "cluster" } else { "clusters" };
    let mut line = format!("{total} {noun}: {}", parts.join(", "));
    if let Some((name, at)) = &summary.next_retry {
        let wait = at
            .and_then(|t| SystemTime::from(t).duration_since(now).ok())
            .map(|d| {
                humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
            })
            .unwrap_or_else(|| "now".into());
        line.push_str(&format!("; next retry: {name} in {wait}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ActualState;

    #[test]
    fn status_line_reads_well() {
        let now = SystemTime::now();
        let summary = Summary {
            by_state: vec![
                (ActualState::Running, 2),
                (ActualState::Creating, 1),
                (ActualState::Failed, 1),
            ],
            next_retry: Some(("dev".into(), Some((now + Duration::from_secs(42)).into()))),
        };
        let line = status_line(&summary, now);
        assert!(
            line.starts_with("4 clusters: 2 running, 1 creating, 1 failed; next retry: dev in 4"),
            "{line}"
        );
        assert_eq!(
            status_line(&Summary::default(), now),
            "no clusters declared"
        );
    }
}
