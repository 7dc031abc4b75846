//! The API and the reconciler in-process, on 127.0.0.1:0, with a fake action runner and
//! a paused clock (tokio's test-util), the way tokio's mini-redis tests its server: the
//! rules of dispatch, cancellation and backoff, without processes, and with backoffs of
//! minutes passing at once (and exactly). The black-box tests through the real binary are
//! in the other files.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use kindler::app::App;
use kindler::clock::Clock;
use kindler::config::{Loader, Settings};
use kindler::live::LiveRun;
use kindler::model::Action;
use kindler::reconciler::action::{Finished, Plan};
use kindler::reconciler::{Mode, Reconciler, Runner};
use kindler::runner::{Ending, Exit};
use kindler::store::Store;
use kindler::systemd::Listener;

const SEC: Duration = Duration::from_secs(1);

/// How the fake carries out one action.
#[derive(Debug, Clone, Copy)]
enum Behave {
    Succeed,
    Fail,
    /// Runs until it is cancelled.
    Hang,
}

/// One call of the fake: which action of which cluster, and when (on tokio's clock).
#[derive(Debug, Clone)]
struct Call {
    cluster: String,
    action: Action,
    at: Instant,
}

/// A fake runner: actions succeed unless told otherwise (per cluster and action, in order),
/// and every call is recorded, with how many actions ran at once.
#[derive(Default)]
struct Fake {
    script: Mutex<HashMap<(String, Action), VecDeque<Behave>>>,
    calls: Mutex<Vec<Call>>,
    running: Mutex<(usize, usize)>, // now, most at once
    cancelled: Mutex<Vec<String>>,
}

impl Fake {
    /// How the next `action`s of `cluster` behave. Keyed by action too: a hang meant for a
    /// create that never started must not be taken by the delete that follows it.
    fn will(&self, cluster: &str, action: Action, behaviours: &[Behave]) {
        self.script.lock().unwrap().insert(
            (cluster.into(), action),
            behaviours.iter().copied().collect(),
        );
    }

    fn calls(&self, cluster: &str, action: Action) -> Vec<Instant> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|c| c.cluster == cluster && c.action == action)
            .map(|c| c.at)
            .collect()
    }
}

/// The reconciler's handle on the fake (the test keeps another).
struct FakeRunner(Arc<Fake>);

impl Runner for FakeRunner {
    fn run(
        &self,
        plan: Plan,
        _settings: Arc<Settings>,
        cancel: CancellationToken,
        live: LiveRun,
    ) -> Pin<Box<dyn Future<Output = Finished> + Send>> {
        let fake = self.0.clone();
        let cluster = plan.record.spec.name.to_string();
        fake.calls.lock().unwrap().push(Call {
            cluster: cluster.clone(),
            action: plan.action,
            at: Instant::now(),
        });
        let behave = fake
            .script
            .lock()
            .unwrap()
            .get_mut(&(cluster.clone(), plan.action))
            .and_then(VecDeque::pop_front)
            .unwrap_or(Behave::Succeed);
        Box::pin(async move {
            {
                let mut r = fake.running.lock().unwrap();
                r.0 += 1;
                r.1 = r.1.max(r.0);
            }
            live.line(&format!("{} of {cluster}: {behave:?}", plan.action));
            let ending = match behave {
                Behave::Succeed => Ending::Exited(Exit::Code(0)),
                Behave::Fail => Ending::Exited(Exit::Code(3)),
                Behave::Hang => {
                    cancel.cancelled().await;
                    fake.cancelled.lock().unwrap().push(cluster.clone());
                    Ending::Cancelled(Some(Exit::Signal(15)))
                }
            };
            fake.running.lock().unwrap().0 -= 1;
            Finished {
                ending,
                step: plan.action,
                duration: Duration::from_millis(1),
                ended_at: std::time::SystemTime::now(),
                tail: live.tail.lock().unwrap().lines(),
                probe: None,
                leftovers: 0,
                killed: 0,
                pgid: None,
            }
        })
    }
}

/// The daemon's two halves on a fresh store, serving 127.0.0.1:0.
struct World {
    _dir: tempfile::TempDir,
    port: u16,
    fake: Arc<Fake>,
    stop: CancellationToken,
}

impl World {
    async fn start(flags: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("kindler.db");
        let mut all = vec!["--database", db.to_str().unwrap(), "--log-level", "error"];
        all.extend_from_slice(flags);
        let settings = Loader::from_flags(&all).expect("settings");
        let (store, _) = Store::open(&db).expect("store");
        let app = App::with_clock(store, settings, Clock::following_tokio());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = Arc::new(Fake::default());
        let stop = app.shutdown.clone();
        tokio::spawn(kindler::api::serve(
            app.clone(),
            vec![Listener::Tcp(listener)],
            stop.clone(),
        ));
        let runner: Arc<dyn Runner> = Arc::new(FakeRunner(fake.clone()));
        let reconciler = Reconciler::with_runner(app.clone(), Mode::Daemon, runner);
        tokio::spawn(reconciler.run(stop.clone()));
        World {
            _dir: dir,
            port,
            fake,
            stop,
        }
    }

    async fn request(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    async fn declare(&self, name: &str) {
        let body = format!(r#"{{"name":"{name}","provider":"k3d"}}"#);
        let (status, answer) = self.request("POST", "/api/clusters", &body).await;
        assert_eq!(status, 202, "{answer}");
    }

    async fn state(&self, name: &str) -> String {
        let (_, c) = self
            .request("GET", &format!("/api/clusters/{name}"), "")
            .await;
        c["actual_state"].as_str().unwrap_or("").to_owned()
    }

    /// Waits (on the paused clock: it advances whenever everything waits) until `name` is
    /// `state`, for at most `limit` of that clock.
    async fn until_state(&self, name: &str, state: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.state(name).await != state {
            assert!(
                Instant::now() < deadline,
                "{name} is {} after {limit:?}",
                self.state(name).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failures_back_off_exponentially_on_the_clock_that_is_paused() {
    let w = World::start(&["--backoff-initial", "1m", "--backoff-max", "10m"]).await;
    use Behave::*;
    w.fake
        .will("flaky", Action::Create, &[Fail, Fail, Fail, Succeed]);
    let t0 = Instant::now();
    w.declare("flaky").await;
    w.until_state("flaky", "running", 30 * 60 * SEC).await;
    let creates = w.fake.calls("flaky", Action::Create);
    assert_eq!(creates.len(), 4, "{creates:?}");
    // 1 min, 2 min, 4 min between attempts, each within its ±20 % jitter. (While the test
    // waits for the store's writer thread, the paused clock jumps to the loop's next
    // timer, a poll interval away: a few seconds of slack on top.)
    for (i, base) in [60.0, 120.0, 240.0].into_iter().enumerate() {
        let gap = (creates[i + 1] - creates[i]).as_secs_f64();
        assert!(
            gap >= base * 0.8 && gap <= base * 1.2 + 5.0,
            "gap {i}: {gap} s, expected {base} s ± 20 %"
        );
    }
    assert!(creates[0] - t0 < 5 * SEC, "the first attempt at once");
    let (_, c) = w.request("GET", "/api/clusters/flaky", "").await;
    assert_eq!(c["attempts"], 0, "success resets the backoff: {c}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn at_most_the_cap_runs_and_one_action_per_cluster() {
    let w = World::start(&["--max-concurrent-actions", "2"]).await;
    for i in 0..5 {
        let name = format!("c{i}");
        w.fake.will(&name, Action::Create, &[Behave::Hang]);
        w.declare(&name).await;
    }
    // Two creates hang: the other three wait for a slot, however long.
    tokio::time::sleep(10 * 60 * SEC).await;
    let started: usize = (0..5)
        .map(|i| w.fake.calls(&format!("c{i}"), Action::Create).len())
        .sum();
    assert_eq!(started, 2, "only two slots");
    let (_, task) = w.request("GET", "/api/tasks/reconcile-c4", "").await;
    assert_eq!(task["status"], "pending", "{task}");
    assert!(
        task["message"]
            .as_str()
            .unwrap()
            .contains("2 of 2 actions are running"),
        "the task says why it waits: {task}"
    );
    // Declared absent, a hanging create is cancelled: its slot goes to the next one.
    for name in ["c0", "c1"] {
        let (status, _) = w
            .request("DELETE", &format!("/api/clusters/{name}"), "")
            .await;
        assert_eq!(status, 202);
    }
    for name in ["c2", "c3"] {
        w.until_state(name, "creating", 60 * SEC).await;
    }
    // Then everything is declared absent: each create is cancelled or never starts, and
    // the deletes take the two slots in turn.
    for name in ["c2", "c3", "c4"] {
        let (status, _) = w
            .request("DELETE", &format!("/api/clusters/{name}"), "")
            .await;
        assert_eq!(status, 202);
    }
    for i in 0..5 {
        let name = format!("c{i}");
        let deadline = Instant::now() + 10 * 60 * SEC;
        loop {
            let (status, _) = w.request("GET", &format!("/api/clusters/{name}"), "").await;
            if status == 404 {
                break;
            }
            assert!(Instant::now() < deadline, "{name} was not deleted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            w.fake.calls(&name, Action::Create).len() <= 1,
            "{name}: one create at most"
        );
        assert_eq!(
            w.fake.calls(&name, Action::Delete).len(),
            1,
            "{name}: one delete"
        );
    }
    assert_eq!(
        w.fake.running.lock().unwrap().1,
        2,
        "never more than two at once"
    );
    // c4's create may have begun in a slot c2 or c3 left before c4 was declared absent.
    let mut cancelled = w.fake.cancelled.lock().unwrap().clone();
    cancelled.sort();
    cancelled.dedup();
    assert!(cancelled.starts_with(&["c0".into(), "c1".into(), "c2".into(), "c3".into()]));
    assert_eq!(
        cancelled.len(),
        w.fake.cancelled.lock().unwrap().len(),
        "each once"
    );
}
