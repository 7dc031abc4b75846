//! The benchmarked daemons: their settings, their folders, and their API as the
//! measurements call it.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kindler::testkit::{self, Connection, Daemon, Notifications, Response};

use crate::store::ports;
use crate::Res;

pub const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The daemon under test: the release build of this tree, or BENCH_KINDLER_BIN (another
/// build, to compare).
pub fn bin() -> String {
    std::env::var("BENCH_KINDLER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kindler").to_owned())
}

/// What every measurement gets.
pub struct Ctx {
    pub quick: bool,
    root: PathBuf,
    /// This executable, which is also the stand-in script.
    exe: PathBuf,
    /// Clock ticks a second, the unit of /proc's CPU times.
    pub tck: f64,
    seq: std::cell::Cell<u32>,
}

impl Ctx {
    pub fn new(quick: bool, root: &Path) -> Ctx {
        Ctx {
            quick,
            root: root.to_owned(),
            exe: std::env::current_exe().expect("the bench's own path"),
            // SAFETY: sysconf only reads a value.
            tck: unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64,
            seq: std::cell::Cell::new(0),
        }
    }

    /// A new folder for one daemon's world.
    pub fn dir(&self, name: &str) -> Res<PathBuf> {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        let dir = self.root.join(format!("{n:03}-{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The settings every benchmarked daemon runs with: defaults, except that every
    /// command is the stand-in and logs go to stderr. `db` is a file or a postgres:// URL.
    pub fn base_args(&self, db: impl AsRef<OsStr>) -> Vec<String> {
        let exe = self.exe.to_str().expect("a UTF-8 path").to_owned();
        let mut args: Vec<String> = ["serve", "--config", "/dev/null", "--database"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(db.as_ref().to_str().expect("a UTF-8 path").to_owned());
        for c in ["create", "delete", "start", "stop", "probe"] {
            args.push(format!("--{c}-command"));
            args.push(exe.clone());
        }
        // This executable is the stand-in: it learns its part from BENCH_STANDIN* variables,
        // which kindler passes to scripts only when told to.
        for a in [
            "--log-target",
            "stderr",
            "--log-level",
            "info",
            "--script-env-pass",
            "BENCH_STANDIN*",
        ] {
            args.push(a.to_owned());
        }
        args
    }

    /// Starts a daemon on a socket passed as fd 3 and waits for its READY=1. `extra`
    /// flags come after the base settings; `env` is for the stand-in scripts.
    pub fn daemon(
        &self,
        dir: &Path,
        db: impl AsRef<OsStr>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Res<Bench> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let notify = Notifications::try_bind(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cmd = Command::new(bin());
        cmd.args(self.base_args(db)).args(extra);
        testkit::clean_env(&mut cmd, &["BENCH_"]);
        cmd.env("BENCH_STANDIN", "ok")
            .envs(env.iter().copied())
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut daemon = Daemon::spawn(cmd, &listener, dir.join("daemon.log"))
            .map_err(|e| format!("{}: {e}", bin()))?;
        // A clean stop when dropped, so that the daemon ends the scripts it runs.
        daemon.drop_grace = Some(Duration::from_secs(20));
        let ready = daemon.wait_notified_ready(&notify, Duration::from_secs(30))?;
        Ok(Bench {
            ready_after: ready.duration_since(daemon.spawned),
            daemon,
            _listener: listener,
        })
    }
}

/// A benchmarked daemon.
pub struct Bench {
    daemon: Daemon,
    /// From spawn to the READY=1 datagram.
    pub ready_after: Duration,
    /// The API socket; the daemon has its own copy as fd 3.
    _listener: TcpListener,
}

impl Deref for Bench {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl DerefMut for Bench {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

/// The body of a declaration of the i-th cluster (unique host ports).
pub fn cluster_body(name: &str, i: usize) -> String {
    let (pf, http, https) = ports(i);
    format!(
        r#"{{"name":"{name}","provider":"k3d","pf_port":{pf},"http_port":{http},"https_port":{https}}}"#
    )
}

/// Declares the i-th cluster, on a new connection.
pub fn declare(port: u16, name: &str, i: usize) -> Res<()> {
    let r = call(
        &mut connect(port)?,
        "POST",
        "/api/clusters",
        Some(&cluster_body(name, i)),
    )?;
    if r.status != 202 {
        return Err(format!("POST {name}: {r:?}"));
    }
    Ok(())
}

/// A keep-alive connection to the API.
pub fn connect(port: u16) -> Res<Connection> {
    Connection::open(port).map_err(|e| format!("connect: {e}"))
}

pub fn call(c: &mut Connection, method: &str, path: &str, body: Option<&str>) -> Res<Response> {
    c.call(method, path, body)
        .map_err(|e| format!("{method} {path}: {e}"))
}

/// One request on a new (keep-alive) connection: the time it takes runs from the connect
/// to the end of the answer.
pub fn http_once(port: u16, method: &str, path: &str) -> Res<Response> {
    call(&mut connect(port)?, method, path, None)
}

/// The full path of `program`, from PATH.
pub fn which_path(program: &str) -> Res<String> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|f| f.is_file())
        })
        .map(|f| f.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{program} is not in PATH"))
}

/// An error naming the package to install when `program` is not in PATH.
pub fn which(program: &str, install: &str) -> Res<()> {
    which_path(program)
        .map(drop)
        .map_err(|_| format!("{program} is not installed ({install})"))
}
