//! Test harness: runs the real `kindler` binary against a real SQLite file, with the API
//! socket passed the way systemd passes it (LISTEN_FDS), and the stand-in script
//! (tests/fixtures/standin.sh) as every command. Waits are for conditions, with deadlines.
#![allow(dead_code)]

mod activation;
mod notify;
mod process;
pub use activation::pass_socket;
pub use notify::Notifications;
pub use process::alive;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_kindler");

pub fn standin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/standin.sh")
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One test's world: a folder with the database and the stand-in's records, and the API
/// socket, which outlives daemon restarts as systemd's socket would.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub listener: TcpListener,
    pub port: u16,
}

pub struct Response {
    pub status: u16,
    pub text: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
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
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("KINDLER_") || k.starts_with("LISTEN_") || k.starts_with("WATCHDOG_") {
                cmd.env_remove(k);
            }
        }
        // No /etc/kindler/kindler.toml of the machine; a test's --config wins over this.
        cmd.env("KINDLER_CONFIG", "/dev/null");
        cmd
    }

    /// Starts a daemon serving on this env's socket, passed as fd 3 like systemd does.
    pub fn start(&self, extra: &[&str]) -> Daemon {
        let cmd = self.command(extra);
        self.spawn(cmd)
    }

    pub fn spawn(&self, mut cmd: Command) -> Daemon {
        let log = self.dir.path().join(format!("daemon-{}.log", now_ns()));
        cmd.stderr(std::fs::File::create(&log).unwrap());
        pass_socket(&mut cmd, &self.listener);
        let child = cmd.spawn().expect("start kindler");
        let daemon = Daemon {
            child,
            log,
            port: self.port,
        };
        daemon.wait_ready();
        daemon
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

/// A running daemon; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn wait_ready(&self) {
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "the daemon to answer /api/health",
            || {
                let r =
                    try_request(port, "GET", "/api/health", None, Duration::from_secs(2)).ok()?;
                (r.status == 200).then_some(())
            },
        );
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the daemon to exit; None when it did not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
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

/// A child process that is killed when the test ends, also when an assertion fails first
/// (a daemon left running would hold its socket and files, and burn a little CPU, for the
/// rest of the suite).
pub struct Guarded(pub Child);

impl std::ops::Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
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

/// Waits until `path` contains `needle`; on timeout, the error is the file's text.
pub fn wait_for_file_text(path: &Path, needle: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(text);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub fn request(port: u16, method: &str, path: &str, body: Option<&str>) -> Response {
    try_request(port, method, path, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A plain HTTP/1.1 request on a new connection.
pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body.unwrap_or("").as_bytes());
    send_raw(port, &raw, timeout)
}

/// Sends bytes as they are (for malformed requests) and reads the response.
pub fn send_raw(port: u16, raw: &[u8], timeout: Duration) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // A server may answer (413) before reading everything; a failed write is fine then.
    let _ = stream.write_all(raw);
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> std::io::Result<Response> {
    let text = String::from_utf8_lossy(buf);
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response: {text:?}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(Response {
        status,
        text: body.to_owned(),
    })
}

impl Notifications {
    pub fn bind(dir: &Path) -> Notifications {
        Notifications::try_bind(dir).expect("bind notify socket")
    }

    /// Waits for a message line satisfying `pred`, received at or after index `from`
    /// of `assignments()`; returns its index.
    pub fn await_line(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> usize {
        eventually(timeout, what, || {
            self.assignments()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, l))| pred(l))
                .map(|(i, _)| i)
        })
    }
}

/// Raises this test process's open-files limit, for tests that hold thousands of sockets.
pub fn room_for_sockets() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(16_384);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// A free TCP port on loopback (bound and released; fine for tests that need a port number).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A request over a unix socket.
pub fn unix_request(path: &Path, method: &str, uri: &str) -> std::io::Result<Response> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    parse_response(&buf)
}
