//! `kindler ls`, `get`, `create`, `delete`, `start`, `stop`, `logs`, `history` and `status`:
//! the daemon's API from a terminal.
//!
//! Every command is a client of the API the daemon serves (`client.rs`), over the unix
//! socket or TCP. Exit statuses: 0 done; 1 kindler refused the request, or the action
//! failed (`--wait`); 2 a usage error (a bad name is one, caught before anything is sent);
//! 3 kindler cannot be reached, or `--wait` timed out.

pub mod client;
mod follow;
pub mod manpages;
pub mod show;
mod views;

use std::io::Write;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::model::ClusterName;
use client::{Answer, Client, ClientError, Target};
use show::Style;
use views::{cluster_table, describe, runs_table, status_text};

/// Exit statuses of the client commands.
pub mod exit {
    pub const OK: i32 = 0;
    /// kindler refused the request, or the action failed.
    pub const FAILED: i32 = 1;
    /// A usage error: a bad argument, caught before anything is sent.
    pub const USAGE: i32 = 2;
    /// kindler cannot be reached, or `--wait` ran out of time.
    pub const UNREACHABLE: i32 = 3;
}

/// Where to reach kindler; every client command has it.
#[derive(Debug, Clone, Args)]
pub struct ServerArg {
    /// Where kindler's API is: http://HOST:PORT or unix:/PATH/TO/SOCKET. Default: the unix
    /// socket /run/kindler/api.sock when it exists and can be opened, else
    /// http://127.0.0.1:8765
    #[arg(long, env = "KINDLER_SERVER", value_name = "URL")]
    pub server: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    Text,
    /// The API's JSON objects (indented on a terminal, as the API sent them otherwise).
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Keep the table up to date, redrawing it when something changes (Ctrl-C ends).
    #[arg(short, long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The cluster.
    pub name: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// How `--wait` waits.
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Follow the action live (its script's output, then the outcome) and exit 0 once the
    /// cluster is as declared, 1 when an attempt failed (kindler itself keeps retrying), 3
    /// on timeout.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 3); kindler carries on regardless.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration, requires = "wait")]
    pub timeout: Duration,
    /// With --wait: do not stop at a failed attempt, wait through kindler's retries until
    /// the cluster is as declared or --timeout passes.
    #[arg(long, requires = "wait")]
    pub keep_waiting: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    K3d,
    Kind,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The cluster's name: lowercase letters, digits and '-', at most 63.
    pub name: String,
    /// The tool that runs the cluster.
    #[arg(long, value_enum)]
    pub provider: Provider,
    /// The NodePort inside the cluster that --pf-port forwards to (default 30080).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1024..))]
    pub node_port: Option<u16>,
    /// Host port forwarded to the NodePort (default 19000, or the next free port of
    /// pf_port_range when another cluster has it).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1024..))]
    pub pf_port: Option<u16>,
    /// Host port that reaches the cluster's port 80 (default 18080, or the next free one).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1024..))]
    pub http_port: Option<u16>,
    /// Host port that reaches the cluster's port 443 (default 18443, or the next free one).
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1024..))]
    pub https_port: Option<u16>,
    /// The cluster's docker network, an IPv4 CIDR like 10.42.0.0/16 (k3d).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Do not register the cluster with Portainer (the create script gets --no-register-portainer).
    #[arg(long)]
    pub no_portainer: bool,
    /// Do not add an HAProxy route (--no-haproxy-route).
    #[arg(long)]
    pub no_haproxy: bool,
    /// Do not register the cluster with Argo CD (--no-register-argocd).
    #[arg(long)]
    pub no_argocd: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct NameWaitArgs {
    /// The cluster.
    pub name: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The cluster.
    pub name: String,
    /// The run to show (its number in `kindler history`); default: the latest.
    #[arg(long, value_name = "ID")]
    pub run: Option<i64>,
    /// Follow a run in progress until it ends.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// The cluster.
    pub name: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// A client command, as parsed.
#[derive(Debug, Clone)]
pub enum Request {
    List(ListArgs),
    Get(GetArgs),
    Create(CreateArgs),
    Delete(NameWaitArgs),
    Start(NameWaitArgs),
    Stop(NameWaitArgs),
    Logs(LogsArgs),
    History(HistoryArgs),
    Status(StatusArgs),
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (a duration like 90s, 5m or 1h30m)"))
        .and_then(|d| {
            if d.is_zero() {
                Err("it must be longer than 0".into())
            } else {
                Ok(d)
            }
        })
}

/// A failure of a command, with its exit status.
pub struct Failure {
    pub status: i32,
    pub message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure {
            status: exit::UNREACHABLE,
            message: e.to_string(),
        }
    }
}

fn refused(answer: &Answer) -> Failure {
    Failure {
        status: exit::FAILED,
        message: answer.detail(),
    }
}

fn usage(message: String) -> Failure {
    Failure {
        status: exit::USAGE,
        message,
    }
}

/// Runs a client command; returns its exit status. Errors go to stderr, prefixed with
/// `kindler:`.
pub fn run(server: &ServerArg, request: Request) -> i32 {
    let result = (|| {
        // Names and addresses are checked before anything is sent.
        check_names(&request)?;
        let target = Target::choose(server.server.as_deref()).map_err(usage)?;
        let client = Client::new(target);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure {
                status: exit::FAILED,
                message: format!("cannot start: {e}"),
            })?;
        runtime.block_on(dispatch(&client, request))
    })();
    let _ = std::io::stdout().flush();
    match result {
        Ok(status) => status,
        Err(f) => {
            let style = Style::stderr();
            eprintln!("{} {}", style.red("kindler:"), f.message);
            f.status
        }
    }
}

/// The same check, and the same words, as the API's.
fn check_names(request: &Request) -> Result<(), Failure> {
    let name = match request {
        Request::Get(a) => &a.name,
        Request::Create(a) => &a.name,
        Request::Delete(a) | Request::Start(a) | Request::Stop(a) => &a.name,
        Request::Logs(a) => &a.name,
        Request::History(a) => &a.name,
        Request::List(_) | Request::Status(_) => return Ok(()),
    };
    ClusterName::parse(name)
        .map(|_| ())
        .map_err(|e| usage(format!("invalid cluster name {name:?}: {e}")))?;
    if let Request::Create(a) = request {
        if let Some(s) = &a.subnet {
            if !crate::model::is_ipv4_cidr(s) {
                return Err(usage(format!(
                    "--subnet: cluster_subnet {s:?} is not an IPv4 CIDR like 10.42.0.0/16"
                )));
            }
        }
    }
    Ok(())
}

async fn dispatch(client: &Client, request: Request) -> Result<i32, Failure> {
    match request {
        Request::List(a) => list(client, a).await,
        Request::Get(a) => get(client, a).await,
        Request::Create(a) => create(client, a).await,
        Request::Delete(a) => declare(client, Verb::Delete, a).await,
        Request::Start(a) => declare(client, Verb::Start, a).await,
        Request::Stop(a) => declare(client, Verb::Stop, a).await,
        Request::Logs(a) => follow::logs(client, a).await,
        Request::History(a) => history(client, a).await,
        Request::Status(a) => status(client, a).await,
    }
}

/// Reads an answer's body, or says why kindler refused.
async fn fetch_bytes(client: &Client, path: &str) -> Result<bytes::Bytes, Failure> {
    let answer = client.get(path).await?;
    if !answer.status.is_success() {
        return Err(refused(&answer));
    }
    Ok(answer.body)
}

/// Reads a JSON answer, or says why kindler refused.
async fn fetch(client: &Client, path: &str) -> Result<Value, Failure> {
    let answer = client.get(path).await?;
    if !answer.status.is_success() {
        return Err(refused(&answer));
    }
    Ok(answer.json()?)
}

fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    println!("{text}");
}

// --- ls -----------------------------------------------------------------------------

async fn list(client: &Client, a: ListArgs) -> Result<i32, Failure> {
    let style = Style::stdout();
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let render = |body: &[u8]| -> Result<String, Failure> {
        Ok(match a.output {
            // Indented for a person at a terminal; for a program (jq, a script), the API's
            // answer as it came, which is quicker with thousands of clusters.
            Format::Json if terminal => {
                let v: Value = serde_json::from_slice(body).map_err(|e| {
                    Failure::from(ClientError::Protocol(format!("the list is not JSON: {e}")))
                })?;
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
            }
            Format::Json => String::from_utf8_lossy(body).into_owned() + "\n",
            Format::Text => cluster_table(body, style, SystemTime::now())?,
        })
    };
    if !a.watch {
        let body = fetch_bytes(client, "/api/clusters").await?;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(render(&body)?.as_bytes());
        return Ok(exit::OK);
    }
    // Redraws when the list changes; on a terminal also every second, so that ages and
    // retry times stay current.
    let mut shown = String::new();
    let mut drawn_at = std::time::Instant::now();
    loop {
        let text = render(&fetch_bytes(client, "/api/clusters").await?)?;
        let stale = terminal && drawn_at.elapsed() >= Duration::from_secs(1);
        if text != shown || stale {
            let mut out = std::io::stdout().lock();
            if terminal {
                // Home and clear, then the table: a redraw in place.
                let _ = write!(out, "\x1b[H\x1b[2J");
            } else if !shown.is_empty() {
                let _ = writeln!(out);
            }
            let _ = write!(out, "{text}");
            let _ = out.flush();
            shown = text;
            drawn_at = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// --- get ----------------------------------------------------------------------------

async fn get(client: &Client, a: GetArgs) -> Result<i32, Failure> {
    let name = &a.name;
    let cluster = fetch(client, &format!("/api/clusters/{name}")).await?;
    if a.output == Format::Json {
        print_json(&cluster);
        return Ok(exit::OK);
    }
    let status = fetch(client, &format!("/api/clusters/{name}/status"))
        .await
        .unwrap_or(Value::Null);
    let runs = fetch(client, &format!("/api/clusters/{name}/history"))
        .await
        .unwrap_or(Value::Null);
    print!(
        "{}",
        describe(&cluster, &status, &runs, Style::stdout(), SystemTime::now())
    );
    Ok(exit::OK)
}

// --- history --------------------------------------------------------------------------

async fn history(client: &Client, a: HistoryArgs) -> Result<i32, Failure> {
    let runs = fetch(client, &format!("/api/clusters/{}/history", a.name)).await?;
    if a.output == Format::Json {
        print_json(&runs);
        return Ok(exit::OK);
    }
    let list: Vec<&Value> = runs
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    if list.is_empty() {
        println!("No runs recorded for {} yet.", a.name);
    } else {
        print!("{}", runs_table(&list, Style::stdout(), SystemTime::now()));
    }
    Ok(exit::OK)
}

// --- status ---------------------------------------------------------------------------

async fn status(client: &Client, a: StatusArgs) -> Result<i32, Failure> {
    let s = fetch(client, "/api/status").await?;
    let healthy = s["status"] == "healthy";
    if a.output == Format::Json {
        print_json(&s);
    } else {
        print!("{}", status_text(&s, &client.target, Style::stdout()));
    }
    Ok(if healthy { exit::OK } else { exit::FAILED })
}

// --- create, delete, start, stop ----------------------------------------------------

/// A declaration and the task that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Delete,
    Start,
    Stop,
}

impl Verb {
    fn task_id(self, name: &str) -> String {
        match self {
            Verb::Create => format!("reconcile-{name}"),
            Verb::Delete => format!("reconcile-delete-{name}"),
            Verb::Start => format!("reconcile-start-{name}"),
            Verb::Stop => format!("reconcile-stop-{name}"),
        }
    }

    fn request(self, name: &str) -> (Method, String) {
        match self {
            Verb::Create => (Method::POST, "/api/clusters".into()),
            Verb::Delete => (Method::DELETE, format!("/api/clusters/{name}")),
            Verb::Start => (Method::POST, format!("/api/clusters/{name}/start")),
            Verb::Stop => (Method::POST, format!("/api/clusters/{name}/stop")),
        }
    }

    /// "created", "deleted", ...
    fn done(self) -> &'static str {
        match self {
            Verb::Create => "created",
            Verb::Delete => "deleted",
            Verb::Start => "started",
            Verb::Stop => "stopped",
        }
    }

    fn infinitive(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Delete => "delete",
            Verb::Start => "start",
            Verb::Stop => "stop",
        }
    }
}

async fn create(client: &Client, a: CreateArgs) -> Result<i32, Failure> {
    let mut body = json!({
        "name": a.name,
        "provider": match a.provider { Provider::K3d => "k3d", Provider::Kind => "kind" },
        "register_portainer": !a.no_portainer,
        "haproxy_route": !a.no_haproxy,
        "register_argocd": !a.no_argocd,
    });
    for (key, value) in [
        ("node_port", a.node_port),
        ("pf_port", a.pf_port),
        ("http_port", a.http_port),
        ("https_port", a.https_port),
    ] {
        if let Some(p) = value {
            body[key] = json!(p);
        }
    }
    if let Some(s) = &a.subnet {
        body["cluster_subnet"] = json!(s);
    }
    send(client, Verb::Create, &a.name, Some(body), &a.wait).await
}

async fn declare(client: &Client, verb: Verb, a: NameWaitArgs) -> Result<i32, Failure> {
    send(client, verb, &a.name, None, &a.wait).await
}

/// Sends the declaration; with `--wait`, follows its task to the end.
async fn send(
    client: &Client,
    verb: Verb,
    name: &str,
    body: Option<Value>,
    wait: &WaitArgs,
) -> Result<i32, Failure> {
    let started = std::time::Instant::now();
    // The runs before this declaration: a failure among them is not this one's.
    let baseline = if wait.wait {
        follow::newest_run(client, name).await?
    } else {
        0
    };
    let (method, path) = verb.request(name);
    let answer = client.request(method, &path, body).await?;
    if answer.status != StatusCode::ACCEPTED && !answer.status.is_success() {
        return Err(refused(&answer));
    }
    let reply = answer.json()?;
    let message = reply["message"].as_str().unwrap_or("declared");
    if !wait.wait {
        println!("{message}");
        println!("Follow it with: kindler get {name}   (or run the command again with --wait)");
        return Ok(exit::OK);
    }
    eprintln!("{}", Style::stderr().dim(message));
    let task_id = reply["task_id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| verb.task_id(name));
    let outcome = follow::wait(
        client,
        follow::Waiting {
            name,
            task_id: &task_id,
            verb,
            baseline,
            deadline: started + wait.timeout,
            timeout: wait.timeout,
            keep_waiting: wait.keep_waiting,
            started,
        },
    )
    .await?;
    Ok(outcome)
}
