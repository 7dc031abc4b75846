//! A real PostgreSQL server for tests and benchmarks: Debian's binaries, an unprivileged
//! instance in a temporary directory (run as the `postgres` user when kindler's tests run
//! as root), on a loopback port, with no system service. The server is a child process
//! that dies with the test process (PR_SET_PDEATHSIG), spawned from a thread that lives as
//! long as the process, so a test that ends does not take the shared server with it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::{free_port, poll};

/// A running (or stopped, for a while) PostgreSQL server.
pub struct PgServer {
    dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    fsync: bool,
    keeper: Mutex<mpsc::Sender<Order>>,
}

enum Order {
    Start(Command, mpsc::Sender<std::io::Result<()>>),
    Stop(mpsc::Sender<()>),
}

static SHARED: OnceLock<PgServer> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The server the tests of one process share (each test takes a database of its own).
pub fn shared() -> &'static PgServer {
    SHARED.get_or_init(|| PgServer::start(false).unwrap_or_else(|e| panic!("PostgreSQL: {e}")))
}

/// The directory of the newest installed PostgreSQL's programs.
fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (apt-get install postgresql)"))?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("postgres").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found
        .pop()
        .ok_or_else(|| "no PostgreSQL server installed (apt-get install postgresql)".into())
}

/// Runs `cmd` as the `postgres` user when this process is root (the server refuses root).
fn as_postgres(cmd: &mut Command) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or("there is no postgres user (apt-get install postgresql)")?;
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    Ok(())
}

fn give_to_postgres(path: &Path) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or("there is no postgres user")?;
        nix::unistd::chown(path, Some(user.uid), Some(user.gid))
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(())
}

impl PgServer {
    /// initdb and start a server; `fsync` off makes tests faster (nothing here must
    /// survive a power cut), on measures what a real setup does.
    pub fn start(fsync: bool) -> Result<PgServer, String> {
        use std::os::unix::fs::PermissionsExt;
        let bin = bin_dir()?;
        remove_dead_servers_folders();
        let dir = std::env::temp_dir().join(format!(
            "kindler-pg-{}-{}",
            std::process::id(),
            crate::procs::new_tag()
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let (data, sock) = (dir.join("data"), dir.join("sock"));
        for d in [&data, &sock] {
            std::fs::create_dir(d).map_err(|e| e.to_string())?;
            give_to_postgres(d)?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        as_postgres(&mut initdb)?;
        let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let (orders, queue) = mpsc::channel();
        // The keeper thread spawns the server and lives as long as the process: the server's
        // parent-death signal follows the thread that spawned it.
        std::thread::Builder::new()
            .name("postgres-keeper".into())
            .spawn(move || keep(queue))
            .map_err(|e| e.to_string())?;
        let server = PgServer {
            dir,
            port: free_port().map_err(|e| e.to_string())?,
            bin,
            data,
            sock,
            fsync,
            keeper: Mutex::new(orders),
        };
        server.resume()?;
        Ok(server)
    }

    /// Starts the server again after [`PgServer::stop`] (same data, same port).
    pub fn resume(&self) -> Result<(), String> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.sock)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=200",
            ])
            .args(["-c", if self.fsync { "fsync=on" } else { "fsync=off" }])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_postgres(&mut cmd)?;
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        let (reply, answer) = mpsc::channel();
        self.order(Order::Start(cmd, reply))?;
        answer
            .recv()
            .map_err(|_| "the keeper thread is gone".to_owned())?
            .map_err(|e| format!("postgres: {e}"))?;
        poll(Duration::from_secs(30), Duration::from_millis(50), || {
            self.psql("postgres", "SELECT 1").ok()
        })
        .map(|_| ())
        .ok_or_else(|| format!("PostgreSQL did not answer on port {}", self.port))
    }

    /// Stops the server (a fast shutdown: connections are closed) and waits for it.
    pub fn stop(&self) {
        let (reply, answer) = mpsc::channel();
        if self.order(Order::Stop(reply)).is_ok() {
            let _ = answer.recv();
        }
    }

    fn order(&self, order: Order) -> Result<(), String> {
        self.keeper
            .lock()
            .unwrap()
            .send(order)
            .map_err(|_| "the keeper thread is gone".into())
    }

    /// A new, empty database; returns its name.
    pub fn create_db(&self) -> String {
        let name = format!(
            "kindler_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE: {e}"));
        name
    }

    /// The URL kindler is given for database `db` (trust authentication: no password).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Runs `sql` with psql; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-d",
                db,
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shared server lives as long as its test process and is never dropped, so its folder
/// (40-60 MB) outlives it: folders of processes that are gone are removed before a new
/// server starts.
fn remove_dead_servers_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("kindler-pg-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if !super::alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The keeper thread: spawns and stops the server as ordered.
fn keep(orders: mpsc::Receiver<Order>) {
    let mut child: Option<Child> = None;
    for order in orders {
        match order {
            Order::Start(mut cmd, reply) => {
                let spawned = cmd.spawn().map(|c| child = Some(c));
                let _ = reply.send(spawned);
            }
            Order::Stop(reply) => {
                if let Some(mut c) = child.take() {
                    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
                    let _ = c.wait();
                }
                let _ = reply.send(());
            }
        }
    }
    if let Some(mut c) = child.take() {
        unsafe { libc::kill(c.id() as i32, libc::SIGQUIT) };
        let _ = c.wait();
    }
}
