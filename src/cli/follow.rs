//! Following a task over `/ws/tasks`: `--wait` and `logs -f`.
//!
//! `--wait` and kindler's retries: kindler retries a failed action until it succeeds, so
//! its task stays `pending` with `error` set after a failure. `--wait` stops at the first
//! failed attempt of *this* declaration (a run newer than those recorded before it was
//! sent) and exits 1 with the error, saying that kindler keeps retrying; `--keep-waiting`
//! reports each failed attempt and waits on, until the cluster is as declared (0) or
//! `--timeout` passes (3).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::client::Client;
use super::show::{self, Style};
use super::{exit, fetch, Failure, LogsArgs, Verb};

/// The newest run recorded for `name` (0: none yet, or no such cluster).
pub async fn newest_run(client: &Client, name: &str) -> Result<i64, Failure> {
    let answer = client.get(&format!("/api/clusters/{name}/history")).await?;
    if !answer.status.is_success() {
        return Ok(0);
    }
    let runs = answer.json()?;
    Ok(runs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["run_id"].as_i64())
        .max()
        .unwrap_or(0))
}

/// What `--wait` waits for.
pub struct Waiting<'a> {
    pub name: &'a str,
    pub task_id: &'a str,
    pub verb: Verb,
    pub baseline: i64,
    pub deadline: Instant,
    pub timeout: Duration,
    pub keep_waiting: bool,
    pub started: Instant,
}

/// The progress line on a terminal (a spinner, the step, the time so far), or plain lines.
struct Progress {
    terminal: bool,
    style: Style,
    started: Instant,
    message: String,
    frame: usize,
    drawn: bool,
}

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Progress {
    fn new(started: Instant) -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            style: Style::stderr(),
            started,
            message: String::new(),
            frame: 0,
            drawn: false,
        }
    }

    /// The current step; a plain line when it changes, off a terminal.
    fn set(&mut self, message: &str) {
        if message == self.message {
            return;
        }
        message.clone_into(&mut self.message);
        if self.terminal {
            self.draw();
        } else {
            eprintln!("... {message}");
        }
    }

    fn draw(&mut self) {
        if !self.terminal || self.message.is_empty() {
            return;
        }
        self.frame = (self.frame + 1) % SPINNER.len();
        let elapsed = format!("{:.1}s", self.started.elapsed().as_secs_f64());
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{} {} {}",
            self.style.yellow(SPINNER[self.frame]),
            self.message,
            self.style.dim(&elapsed)
        );
        let _ = err.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }

    /// A line of the script's output, on stdout.
    fn output(&mut self, line: &str) {
        self.clear();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        drop(out);
        self.draw();
    }
}

/// The strings of a JSON array (a task's `logs`, a run's `output_tail`).
fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect()
}

/// A task update's output lines.
fn task_lines(task: &Value) -> Vec<String> {
    strings(&task["logs"])
}

/// Follows the declaration's task until it is done, failed (see the module's doc) or out
/// of time; returns the exit status.
pub async fn wait(client: &Client, w: Waiting<'_>) -> Result<i32, Failure> {
    let mut progress = Progress::new(w.started);
    let mut shown: Vec<String> = Vec::new();
    let mut reported = w.baseline;
    let deadline = tokio::time::Instant::from_std(w.deadline);
    let subscribe = json!({"type": "subscribe", "task_id": w.task_id}).to_string();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    'connect: loop {
        let mut ws = match tokio::time::timeout_at(deadline, client.websocket()).await {
            Err(_) => return Ok(timed_out(&mut progress, &w)),
            Ok(Ok(ws)) => ws,
            // kindler restarting (an upgrade, say): its socket takes us again shortly.
            Ok(Err(_)) => {
                progress.set("kindler cannot be reached; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => continue 'connect,
                    _ = tokio::time::sleep_until(deadline) => return Ok(timed_out(&mut progress, &w)),
                }
            }
        };
        if ws.send(Message::text(subscribe.clone())).await.is_err() {
            continue 'connect;
        }
        loop {
            tokio::select! {
                message = ws.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        let Ok(update) = serde_json::from_str::<Value>(&text) else { continue };
                        if update["type"] != "task_update" {
                            continue;
                        }
                        let task = &update["task"];
                        let lines = task_lines(task);
                        for line in show::new_lines(&shown, &lines) {
                            progress.output(line);
                        }
                        shown = lines;
                        if let Some(status) = settle(client, &w, task, &mut progress, &mut reported).await? {
                            return Ok(status);
                        }
                    }
                    Some(Ok(_)) => {}
                    // kindler stopped (a restart): connect again and subscribe anew.
                    Some(Err(_)) | None => continue 'connect,
                },
                _ = tick.tick() => progress.draw(),
                _ = tokio::time::sleep_until(deadline) => return Ok(timed_out(&mut progress, &w)),
            }
        }
    }
}

/// What a task update means for the wait: an exit status, or `None` to wait on.
async fn settle(
    client: &Client,
    w: &Waiting<'_>,
    task: &Value,
    progress: &mut Progress,
    reported: &mut i64,
) -> Result<Option<i32>, Failure> {
    let message = task["message"].as_str().unwrap_or("");
    let out = Style::stdout();
    let err = Style::stderr();
    match task["status"].as_str() {
        Some("completed") => {
            progress.clear();
            println!(
                "{} Cluster {} {} ({:.1}s)",
                out.green("✓"),
                w.name,
                w.verb.done(),
                w.started.elapsed().as_secs_f64()
            );
            Ok(Some(exit::OK))
        }
        Some("failed") => {
            progress.clear();
            eprintln!("{} {message}", err.red("✗"));
            Ok(Some(exit::FAILED))
        }
        // A failed attempt shows as pending with its error until the retry starts; a retry
        // that starts at once may hide that, so a new run is checked for failures too.
        Some(status @ ("pending" | "running"))
            if (status == "pending" && !task["error"].is_null())
                || (status == "running" && message != progress.message) =>
        {
            // A failure recorded since this declaration was sent, not an older one's.
            let Some(run) = failed_since(client, w.name, *reported).await? else {
                progress.set(message);
                return Ok(None);
            };
            *reported = run["run_id"].as_i64().unwrap_or(*reported);
            let error = run["error"]
                .as_str()
                .or(task["error"].as_str())
                .unwrap_or("failed");
            let action = run["action"].as_str().unwrap_or(w.verb.infinitive());
            progress.clear();
            // The error's first line; its output lines were shown as they came.
            eprintln!(
                "{} The {action} of {} failed: {}",
                err.red("✗"),
                w.name,
                error.lines().next().unwrap_or("").trim_end()
            );
            eprintln!("  {message}");
            if w.keep_waiting {
                progress.set(message);
                return Ok(None);
            }
            eprintln!(
                "  kindler keeps retrying by itself. Follow it with `kindler logs {} -f` or \
                 `kindler get {}`; --keep-waiting waits through the retries.",
                w.name, w.name
            );
            Ok(Some(exit::FAILED))
        }
        _ => {
            progress.set(message);
            Ok(None)
        }
    }
}

/// The newest run of `name` after run `after` that failed, if any.
async fn failed_since(client: &Client, name: &str, after: i64) -> Result<Option<Value>, Failure> {
    let answer = client.get(&format!("/api/clusters/{name}/history")).await?;
    if !answer.status.is_success() {
        return Ok(None);
    }
    let runs = answer.json()?;
    Ok(runs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["run_id"].as_i64().unwrap_or(0) > after)
        .find(|r| matches!(r["outcome"].as_str(), Some("failed" | "timed_out")))
        .cloned())
}

fn timed_out(progress: &mut Progress, w: &Waiting<'_>) -> i32 {
    progress.clear();
    let err = Style::stderr();
    eprintln!(
        "{} timed out after {} waiting for cluster {} to be {}; kindler carries on \
         (kindler get {})",
        err.red("kindler:"),
        humantime::format_duration(w.timeout),
        w.name,
        w.verb.done(),
        w.name
    );
    exit::UNREACHABLE
}

/// The task that follows what the cluster is declared to be now.
fn task_in_force(cluster: &Value, name: &str) -> String {
    match cluster["desired_state"].as_str() {
        Some("stopped") => format!("reconcile-stop-{name}"),
        Some("absent") => format!("reconcile-delete-{name}"),
        _ => format!("reconcile-{name}"),
    }
}

fn run_lines(run: &Value) -> Vec<String> {
    strings(&run["output_tail"])
}

/// `kindler logs NAME [--run ID] [-f]`.
pub async fn logs(client: &Client, a: LogsArgs) -> Result<i32, Failure> {
    let name = &a.name;
    let history = fetch(client, &format!("/api/clusters/{name}/history")).await?;
    let runs: Vec<&Value> = history
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    let run = match a.run {
        Some(id) => runs.iter().find(|r| r["run_id"].as_i64() == Some(id)),
        None => runs.first(),
    };
    let Some(run) = run else {
        return Err(Failure {
            status: exit::FAILED,
            message: match a.run {
                Some(id) => format!(
                    "cluster {name} has no run {id} in its history (kindler history {name} lists them)"
                ),
                None => format!("cluster {name} has no runs yet"),
            },
        });
    };
    let run_id = run["run_id"].as_i64().unwrap_or(0);
    let header = |run: &Value| {
        Style::stderr().dim(&format!(
            "run {} ({} of {}, {})",
            run["run_id"],
            run["action"].as_str().unwrap_or("?"),
            name,
            run["outcome"].as_str().unwrap_or("?")
        ))
    };
    eprintln!("{}", header(run));
    if run["outcome"] != "running" {
        for line in run_lines(run) {
            println!("{line}");
        }
        return Ok(exit::OK);
    }
    // In progress: its output so far is the running task's.
    let cluster = fetch(client, &format!("/api/clusters/{name}")).await?;
    let task_id = task_in_force(&cluster, name);
    let mut shown: Vec<String> = Vec::new();
    let task = fetch(client, &format!("/api/tasks/{task_id}"))
        .await
        .unwrap_or(Value::Null);
    if task["status"] == "running" {
        shown = task_lines(&task);
        for line in &shown {
            println!("{line}");
        }
    }
    if !a.follow {
        return Ok(exit::OK);
    }
    let _ = std::io::stdout().flush();
    let mut ws = client.websocket().await?;
    let subscribe = json!({"type": "subscribe", "task_id": task_id}).to_string();
    let _ = ws.send(Message::text(subscribe)).await;
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(update) = serde_json::from_str::<Value>(&text) else { continue };
                    if update["task"]["status"] == "running" {
                        let lines = task_lines(&update["task"]);
                        for line in show::new_lines(&shown, &lines) {
                            println!("{line}");
                        }
                        let _ = std::io::stdout().flush();
                        shown = lines;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    // kindler went away; what it recorded is shown below, if it can be read.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            },
            _ = poll.tick() => {
                // The run's end, with its last lines, is in the history.
                let history = fetch(client, &format!("/api/clusters/{name}/history")).await?;
                let ended = history
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["run_id"].as_i64() == Some(run_id) && r["outcome"] != "running")
                    .cloned();
                if let Some(run) = ended {
                    for line in show::new_lines(&shown, &run_lines(&run)) {
                        println!("{line}");
                    }
                    eprintln!("{}", header(&run));
                    return Ok(exit::OK);
                }
            }
        }
    }
}
