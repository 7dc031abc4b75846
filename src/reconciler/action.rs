//! Carrying out one action: the commands it consists of, their argument vectors and
//! environment, and what their output says.

use std::ffi::OsString;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::live::LiveRun;
use crate::log::{ids, Event, Priority};
use crate::model::{Action, ClusterSpec, ProbeReport};
use crate::procs::Target;
use crate::runner::{self, Ending, Invocation, Limits};
use crate::store::clusters::ClusterRecord;

/// Script output lines sent to the journal per run before the rate limit applies, and
/// the rate after that; every line still reaches the run's history tail.
const JOURNAL_BURST: f64 = 500.0;
const JOURNAL_LINES_PER_SEC: f64 = 100.0;

/// An action about to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub run_id: i64,
    pub record: ClusterRecord,
    pub action: Action,
    pub attempt: u32,
    pub tag: String,
}

/// How an action went.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The ending of the command that ended the action (the last one, or the one that failed).
    pub ending: Ending,
    /// The command that ended it: a create ends with its probe when the probe fails.
    pub step: Action,
    pub duration: Duration,
    pub ended_at: std::time::SystemTime,
    pub tail: Vec<String>,
    /// What the probe reported, when the action ran one.
    pub probe: Option<ProbeReport>,
    pub leftovers: usize,
    /// Processes that ignored SIGTERM for the whole grace period and got SIGKILL.
    pub killed: usize,
    /// The process group of the last command (kept in the history).
    pub pgid: Option<i32>,
}

/// Carries actions out: the reconciler's seam to the world. [`Scripts`] runs the
/// configured commands; tests of the loop give it a fake.
pub trait Runner: Send + Sync + 'static {
    /// Runs `plan` to its end (or until `cancel`), keeping its output in `live`.
    fn run(
        &self,
        plan: Plan,
        settings: Arc<Settings>,
        cancel: CancellationToken,
        live: LiveRun,
    ) -> Pin<Box<dyn Future<Output = Finished> + Send>>;
}

/// Runs each action's commands (see [`execute`]).
pub struct Scripts;

impl Runner for Scripts {
    fn run(
        &self,
        plan: Plan,
        settings: Arc<Settings>,
        cancel: CancellationToken,
        live: LiveRun,
    ) -> Pin<Box<dyn Future<Output = Finished> + Send>> {
        Box::pin(execute(plan, settings, cancel, live))
    }
}

/// The commands an action runs, in order; each must succeed for the next to run.
/// Creating and starting end with the probe, so "running" is verified, not assumed.
fn steps(action: Action) -> &'static [Action] {
    match action {
        Action::Create => &[Action::Create, Action::Probe],
        Action::Start => &[Action::Start, Action::Probe],
        Action::Stop => &[Action::Stop],
        Action::Delete => &[Action::Delete],
        Action::Probe => &[Action::Probe],
    }
}

pub async fn execute(
    plan: Plan,
    settings: Arc<Settings>,
    cancel: CancellationToken,
    live: LiveRun,
) -> Finished {
    let started = Instant::now();
    let deadline = started + settings.action_timeout;
    let mut journal = JournalTap::new(&plan);
    let mut last = None;
    let mut probe = None;
    let (mut leftovers, mut killed) = (0, 0);
    let mut pgid = None;
    for &step in steps(plan.action) {
        if cancel.is_cancelled() {
            // Cancelled between two commands: the next one is not even started.
            last = Some((Ending::Cancelled(None), step));
            break;
        }
        let inv = invocation(&settings, &plan, step);
        let limits = Limits {
            timeout: deadline.saturating_duration_since(Instant::now()),
            grace: settings.kill_grace,
        };
        let probe_lines = Arc::new(Mutex::new(Vec::new()));
        let mut on_line = {
            let live = live.clone();
            let probe_lines = probe_lines.clone();
            let journal = &mut journal;
            move |line: &str| {
                live.line(line);
                journal.line(line);
                if step == Action::Probe {
                    probe_lines.lock().unwrap().push(line.to_owned());
                }
            }
        };
        let on_spawn = |group: i32| {
            *live.target.lock().unwrap() = Some(Target::of_group(group, plan.tag.clone()));
            pgid = Some(group);
        };
        let report = runner::run(&inv, limits, &cancel, on_spawn, &mut on_line).await;
        *live.target.lock().unwrap() = None;
        leftovers += report.leftovers;
        killed += report.killed;
        if step == Action::Probe {
            probe = Some(ProbeReport::parse(&probe_lines.lock().unwrap()));
        }
        let ok = matches!(report.ending, Ending::Exited(e) if e.success());
        last = Some((report.ending, step));
        if !ok {
            break;
        }
    }
    journal.finish();
    let (ending, step) = last.expect("every action has at least one step");
    let tail = live.tail.lock().unwrap().lines();
    Finished {
        ending,
        step,
        duration: started.elapsed(),
        ended_at: std::time::SystemTime::now(),
        tail,
        probe,
        leftovers,
        killed,
        pgid,
    }
}

/// The argument vector and environment of one command of an action.
pub fn invocation(settings: &Settings, plan: &Plan, step: Action) -> Invocation {
    let command = settings.command(step);
    let spec = &plan.record.spec;
    let mut args: Vec<OsString> = command.args.iter().map(OsString::from).collect();
    args.extend(step_args(spec, step).into_iter().map(OsString::from));
    Invocation {
        program: command.program.clone().into_os_string(),
        args,
        env: environment(settings, plan, step),
        tag: plan.tag.clone(),
    }
}

/// `create_env.sh`'s interface for create; `-n NAME -p PROVIDER` for the rest.
fn step_args(spec: &ClusterSpec, step: Action) -> Vec<String> {
    let mut args = vec![
        "-n".to_owned(),
        spec.name.to_string(),
        "-p".to_owned(),
        spec.provider.to_string(),
    ];
    if step == Action::Create {
        let flag = |on: bool, name: &str| {
            if on {
                format!("--{name}")
            } else {
                format!("--no-{name}")
            }
        };
        args.extend([
            "--node-port".to_owned(),
            spec.node_port.to_string(),
            "--pf-port".to_owned(),
            spec.pf_port.to_string(),
            flag(spec.register_portainer, "register-portainer"),
            flag(spec.haproxy_route, "haproxy-route"),
            flag(spec.register_argocd, "register-argocd"),
        ]);
    }
    args
}

/// Variables of kindler's environment every script gets, when they are set: what any
/// program needs (the search path, home, locale, time zone, user, temporary directory) and
/// what docker, kubectl, k3d and kind read. A name ending in `*` stands for every variable
/// with that prefix. Everything else (tokens, passwords, `DATABASE_URL`, systemd's
/// `NOTIFY_SOCKET`, kindler's own `KINDLER_*` settings) stays out, unless the operator
/// names it in `script_env_pass`.
pub const SCRIPT_ENV_ALLOWED: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "KUBECONFIG",
    "KIND_EXPERIMENTAL_PROVIDER",
    "K3D_*",
];

/// Does `name` match one of `patterns` (exact, or a prefix ending in `*`)?
fn matches_any(name: &str, patterns: &[impl AsRef<str>]) -> bool {
    patterns.iter().any(|p| match p.as_ref().strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == p.as_ref(),
    })
}

/// A script's whole environment: the allowed variables of kindler's own and those the
/// configuration passes on, the fixed values it sets, then every field of the cluster as
/// `KINDLER_*` (for scripts that want more than the flags).
pub fn environment(settings: &Settings, plan: &Plan, step: Action) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let name = k.to_string_lossy();
            !name.starts_with("KINDLER_")
                && (matches_any(&name, SCRIPT_ENV_ALLOWED)
                    || matches_any(&name, &settings.script_env_pass))
        })
        .collect();
    for assignment in &settings.script_env_set {
        if let Some((name, value)) = assignment.split_once('=') {
            env.retain(|(k, _)| k != name);
            env.push((name.into(), value.into()));
        }
    }
    env.extend(
        cluster_fields(plan, step)
            .into_iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    env
}

/// Every field of the cluster as `KINDLER_*`.
fn cluster_fields(plan: &Plan, step: Action) -> Vec<(String, String)> {
    let spec = &plan.record.spec;
    let bit = |b: bool| if b { "1" } else { "0" }.to_owned();
    let mut env = vec![
        ("KINDLER_CLUSTER", spec.name.to_string()),
        ("KINDLER_PROVIDER", spec.provider.to_string()),
        ("KINDLER_CONTEXT", spec.provider.context(&spec.name)),
        ("KINDLER_NODE_PORT", spec.node_port.to_string()),
        ("KINDLER_PF_PORT", spec.pf_port.to_string()),
        ("KINDLER_HTTP_PORT", spec.http_port.to_string()),
        ("KINDLER_HTTPS_PORT", spec.https_port.to_string()),
        ("KINDLER_REGISTER_PORTAINER", bit(spec.register_portainer)),
        ("KINDLER_HAPROXY_ROUTE", bit(spec.haproxy_route)),
        ("KINDLER_REGISTER_ARGOCD", bit(spec.register_argocd)),
        ("KINDLER_ACTION", step.to_string()),
        ("KINDLER_RUN_ID", plan.run_id.to_string()),
        ("KINDLER_ATTEMPT", plan.attempt.to_string()),
        ("KINDLER_GENERATION", plan.record.generation.to_string()),
    ];
    if let Some(subnet) = &spec.cluster_subnet {
        env.push(("KINDLER_CLUSTER_SUBNET", subnet.clone()));
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Forwards a run's output lines to the journal, tagged with the cluster and run, with a
/// token bucket so that a script printing gigabytes does not flood it.
struct JournalTap {
    template: Event,
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
}

impl JournalTap {
    fn new(plan: &Plan) -> Self {
        let spec = &plan.record.spec;
        JournalTap {
            template: Event::new(Priority::Info, "")
                .id(ids::SCRIPT_OUTPUT)
                .field("CLUSTER", &spec.name)
                .field("PROVIDER", spec.provider)
                .field("ACTION", plan.action)
                .field("RUN_ID", plan.run_id),
            tokens: JOURNAL_BURST,
            refilled: Instant::now(),
            suppressed: 0,
        }
    }

    fn line(&mut self, line: &str) {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * JOURNAL_LINES_PER_SEC;
        self.tokens = (self.tokens + earned).min(JOURNAL_BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            return;
        }
        self.tokens -= 1.0;
        let mut event = self.template.clone();
        event.message = line.to_owned();
        event.emit();
    }

    fn finish(&mut self) {
        if self.suppressed > 0 {
            let mut event = self.template.clone();
            event.priority = Priority::Notice;
            event.message = format!(
                "{} output lines were not sent to the journal (rate limit); the last lines are in the run's history",
                self.suppressed
            );
            event.emit();
        }
    }
}
