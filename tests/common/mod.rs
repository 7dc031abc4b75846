//! Test harness: runs the real `kindler` binary against a real SQLite file, with the API
//! socket passed the way systemd passes it (LISTEN_FDS), and the stand-in script
//! (tests/fixtures/standin.sh) as every command. Waits are for conditions, with deadlines.
//! What the benchmarks use too (the daemon, HTTP, NOTIFY_SOCKET, /proc) is
//! `kindler::testkit`.
#![allow(dead_code, unused_imports)]

pub use kindler::testkit::{
    alive, eventually, now_ns, pass_socket, request, room_for_sockets, send_raw, try_request,
    unix_request, Daemon, Guarded, Notifications, Response,
};

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kindler::testkit;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_kindler");

pub fn standin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/standin.sh")
}

/// One test's world: a folder with the database and the stand-in's records, and the API
/// socket, which outlives daemon restarts as systemd's socket would.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub listener: TcpListener,
    pub port: u16,
}

/// A call of the stand-in, from its calls.log.
#[derive(Debug, Clone)]
pub struct Call {
    pub event: String,
    pub action: String,
    pub cluster: String,
    pub pid: i32,
    pub at_ns: u128,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("standin/mode")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        Env {
            dir,
            listener,
            port,
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("kindler.db")
    }

    pub fn standin_dir(&self) -> PathBuf {
        self.dir.path().join("standin")
    }

    /// Sets the stand-in's behaviour for `key` (`create`, `create-dev`, `probe`, ...).
    pub fn mode(&self, key: &str, mode: &str) {
        std::fs::write(self.standin_dir().join("mode").join(key), mode).unwrap();
    }

    pub fn clear_mode(&self, key: &str) {
        let _ = std::fs::remove_file(self.standin_dir().join("mode").join(key));
    }

    /// The settings every test daemon runs with; `extra` flags come after and win.
    pub fn command(&self, extra: &[&str]) -> Command {
        let s = standin();
        let s = s.to_str().unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .args(["--database", self.db().to_str().unwrap()])
            .args([
                "--create-command",
                s,
                "--delete-command",
                s,
                "--start-command",
                s,
            ])
            .args(["--stop-command", s, "--probe-command", s])
            .args([
                "--kill-grace",
                "1s",
                "--backoff-initial",
                "200ms",
                "--backoff-max",
                "2s",
            ])
            // The stand-in finds its folder through the environment, which kindler passes on
            // only when told to.
            .args(["--script-env-pass", "STANDIN_DIR"])
            .args([
                "--poll-interval",
                "100ms",
                "--log-target",
                "stderr",
                "--log-level",
                "debug",
            ])
            .args(extra)
            .env("STANDIN_DIR", self.standin_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        testkit::clean_env(&mut cmd, &[]);
        // No /etc/kindler/kindler.toml of the machine; a test's --config wins over this.
        cmd.env("KINDLER_CONFIG", "/dev/null");
        cmd
    }

    /// Starts a daemon serving on this env's socket, passed as fd 3 like systemd does.
    pub fn start(&self, extra: &[&str]) -> Daemon {
        let cmd = self.command(extra);
        self.spawn(cmd)
    }

    pub fn spawn(&self, cmd: Command) -> Daemon {
        let log = self.dir.path().join(format!("daemon-{}.log", now_ns()));
        let daemon = Daemon::spawn(cmd, &self.listener, log).expect("start kindler");
        if let Err(e) = daemon.wait_healthy(Duration::from_secs(10)) {
            panic!("{e}");
        }
        daemon
    }

    /// Starts a daemon that binds a TCP port and a unix socket itself (no socket passed,
    /// as `kindler serve` outside systemd); returns once TCP answers, with both addresses.
    pub fn start_listening(&self, extra: &[&str]) -> Listening {
        let port = testkit::free_port().expect("a free port");
        let sock = self.dir.path().join("api.sock");
        let mut cmd = self.command(&[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--listen-unix",
            sock.to_str().unwrap(),
        ]);
        cmd.args(extra).stderr(Stdio::null());
        let daemon = Guarded(cmd.spawn().expect("start kindler"));
        eventually(Duration::from_secs(10), "the TCP listener", || {
            try_request(port, "GET", "/api/health", None, Duration::from_secs(1))
                .ok()
                .filter(|r| r.status == 200)
        });
        Listening { daemon, port, sock }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        request(self.port, method, path, body)
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &str) -> Response {
        self.request("POST", path, Some(body))
    }

    pub fn cluster(&self, name: &str) -> Option<Value> {
        let r = self.get(&format!("/api/clusters/{name}"));
        match r.status {
            200 => Some(r.json()),
            404 => None,
            _ => panic!("GET cluster {name}: {r:?}"),
        }
    }

    /// Waits until the cluster's actual_state is `state`; returns the cluster.
    pub fn await_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        let what = format!("cluster {name} to be {state}");
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            eventually(timeout, &what, || {
                let c = self.cluster(name)?;
                last = c.clone();
                (c["actual_state"] == state).then_some(c)
            })
        }));
        found.unwrap_or_else(|_| panic!("{what}: last seen {last}"))
    }

    pub fn await_gone(&self, name: &str, timeout: Duration) {
        eventually(timeout, &format!("cluster {name} to be removed"), || {
            self.cluster(name).is_none().then_some(())
        })
    }

    pub fn argv(&self, key: &str) -> Vec<String> {
        let text =
            std::fs::read_to_string(self.standin_dir().join("argv").join(key)).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    }

    pub fn script_env(&self, key: &str) -> HashMap<String, String> {
        let text =
            std::fs::read_to_string(self.standin_dir().join("env").join(key)).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        let text =
            std::fs::read_to_string(self.standin_dir().join("calls.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() == 5).then(|| Call {
                    event: f[0].into(),
                    action: f[1].into(),
                    cluster: f[2].into(),
                    pid: f[3].parse().unwrap_or(0),
                    at_ns: f[4].parse().unwrap_or(0),
                })
            })
            .collect()
    }

    pub fn starts(&self, action: &str, cluster: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.event == "start" && c.action == action && c.cluster == cluster)
            .collect()
    }

    /// Pids of every process the stand-in started for `key`, children included.
    pub fn pids(&self, key: &str) -> Vec<i32> {
        let text =
            std::fs::read_to_string(self.standin_dir().join("pids").join(key)).unwrap_or_default();
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Of the stand-in's processes for `key`, those still alive.
    pub fn alive(&self, key: &str) -> Vec<i32> {
        self.pids(key).into_iter().filter(|p| alive(*p)).collect()
    }

    pub fn sqlite(&self, sql: &str) -> String {
        let out = Command::new("sqlite3")
            .arg(self.db())
            .arg(sql)
            .output()
            .expect("the sqlite3 command (apt install sqlite3)");
        assert!(
            out.status.success(),
            "sqlite3 {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever a test left running (an orphan on purpose, say) goes with it.
        let dir = self.standin_dir().join("pids");
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// A daemon bound to its own TCP port and unix socket (see [`Env::start_listening`]).
pub struct Listening {
    pub daemon: Guarded,
    pub port: u16,
    pub sock: PathBuf,
}
/// Waits until `path` contains `needle`; on timeout, the error is the file's text.
pub fn wait_for_file_text(path: &Path, needle: &str, timeout: Duration) -> Result<(), String> {
    let mut text = String::new();
    testkit::poll(timeout, Duration::from_millis(20), || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.contains(needle).then_some(())
    })
    .ok_or(text)
}

/// A free TCP port on loopback (bound and released; fine for tests that need a port number).
pub fn free_port() -> u16 {
    testkit::free_port().expect("a free port on loopback")
}
