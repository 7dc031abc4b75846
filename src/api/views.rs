//! The JSON shapes of the contract (and kindler's additions, which only add fields).

use std::borrow::Cow;

use serde::Serialize;

use crate::config::Settings;
use crate::health::{IgnoredRow, Problem};
use crate::model::{ActualState, AddOnStatus};
use crate::store::clusters::{ClusterRecord, InvalidRow};
use crate::store::runs::RunRecord;
use crate::store::time::Timestamp;

fn iso(t: Option<Timestamp>) -> Option<String> {
    t.map(Timestamp::iso)
}

/// A cluster as the API shows it: the contract's `ClusterInfo` and kindler's additions.
#[derive(Serialize)]
pub struct ClusterInfo<'a> {
    pub name: &'a str,
    pub provider: &'static str,
    pub node_port: u16,
    pub pf_port: u16,
    pub http_port: u16,
    pub https_port: u16,
    pub cluster_subnet: Option<&'a str>,
    pub register_portainer: bool,
    pub haproxy_route: bool,
    pub register_argocd: bool,
    pub status: &'static str,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub desired_state: &'static str,
    pub actual_state: &'static str,
    pub last_reconciled_at: Option<String>,
    pub reconcile_error: Option<Cow<'a, str>>,
    // kindler's additions
    pub generation: i64,
    pub observed_generation: i64,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_transition_at: Option<String>,
    pub last_action: Option<&'static str>,
    /// The host the cluster lives on; false `host_reachable` says its agent's lease ran
    /// out: nobody acts on the cluster until it is back.
    pub host: &'a str,
    pub host_reachable: bool,
    /// Set on a row kindler cannot act on (another program wrote it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
}

impl<'a> From<&'a ClusterRecord> for ClusterInfo<'a> {
    fn from(c: &'a ClusterRecord) -> Self {
        let s = &c.spec;
        ClusterInfo {
            name: s.name.as_str(),
            provider: s.provider.as_str(),
            node_port: s.node_port,
            pf_port: s.pf_port,
            http_port: s.http_port,
            https_port: s.https_port,
            cluster_subnet: s.cluster_subnet.as_deref(),
            register_portainer: s.register_portainer,
            haproxy_route: s.haproxy_route,
            register_argocd: s.register_argocd,
            status: c.actual.as_str(),
            created_at: iso(c.created_at),
            updated_at: iso(c.updated_at),
            desired_state: c.desired.as_str(),
            actual_state: c.actual.as_str(),
            last_reconciled_at: iso(c.last_reconciled_at),
            reconcile_error: c.reconcile_error.as_deref().map(Cow::Borrowed),
            generation: c.generation,
            observed_generation: c.observed_generation,
            attempts: c.attempts,
            next_attempt_at: iso(c.next_attempt_at),
            last_transition_at: iso(c.last_transition_at),
            last_action: c.last_action.map(|a| a.as_str()),
            host: c.host.as_ref().map_or("", |h| h.name.as_str()),
            host_reachable: c.host.as_ref().is_none_or(|h| h.reachable),
            invalid: false,
        }
    }
}

/// A row kindler cannot act on, with the contract's fields so that the WebUI can list it:
/// its name, the status `invalid`, and in `reconcile_error` why and what to do; what cannot
/// be read is zero or empty.
impl<'a> From<&'a InvalidRow> for ClusterInfo<'a> {
    fn from(r: &'a InvalidRow) -> Self {
        ClusterInfo {
            name: &r.name,
            provider: "",
            node_port: 0,
            pf_port: 0,
            http_port: 0,
            https_port: 0,
            cluster_subnet: None,
            register_portainer: false,
            haproxy_route: false,
            register_argocd: false,
            status: "invalid",
            created_at: None,
            updated_at: None,
            desired_state: "unknown",
            actual_state: "invalid",
            last_reconciled_at: None,
            reconcile_error: Some(Cow::Owned(format!(
                "kindler cannot act on this row: {}. Correct it with sqlite3, or remove it with \
                 POST /api/clusters/{}/forget",
                r.reason, r.name
            ))),
            generation: 0,
            observed_generation: 0,
            attempts: 0,
            next_attempt_at: None,
            last_transition_at: None,
            last_action: None,
            host: "",
            host_reachable: true,
            invalid: true,
        }
    }
}

#[derive(Serialize)]
pub struct ClusterStatus<'a> {
    pub name: &'a str,
    pub status: &'static str,
    pub nodes_ready: i64,
    pub nodes_total: i64,
    pub portainer_status: &'static str,
    pub argocd_status: &'static str,
    pub error_message: Option<&'a str>,
}

impl<'a> ClusterStatus<'a> {
    /// A row kindler cannot act on: status `invalid`, and why.
    pub fn invalid(r: &'a InvalidRow) -> Self {
        ClusterStatus {
            name: &r.name,
            status: "invalid",
            nodes_ready: 0,
            nodes_total: 0,
            portainer_status: "unknown",
            argocd_status: "unknown",
            error_message: Some(&r.reason),
        }
    }
}

impl<'a> From<&'a ClusterRecord> for ClusterStatus<'a> {
    fn from(c: &'a ClusterRecord) -> Self {
        // kindler does not talk to Portainer or Argo CD itself; the probe may report them.
        // What it said (nodes too) holds while the cluster runs; stopped or failed, nobody
        // knows, and 0 nodes are ready.
        let (add_ons, nodes) = match c.actual {
            ActualState::Running => (c.add_ons, (c.nodes_ready, c.nodes_total)),
            _ => (AddOnStatus::UNKNOWN, (None, None)),
        };
        ClusterStatus {
            name: c.spec.name.as_str(),
            status: c.actual.as_str(),
            nodes_ready: nodes.0.unwrap_or(0),
            nodes_total: nodes.1.unwrap_or(0),
            portainer_status: add_ons.portainer.as_str(),
            argocd_status: add_ons.argocd.as_str(),
            error_message: c.reconcile_error.as_deref(),
        }
    }
}

#[derive(Serialize)]
pub struct TaskCreate {
    pub task_id: String,
    pub status: TaskState,
    pub message: String,
    /// The host a create went to (named by the client, or chosen by kindler).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A task's `status`, spelled as the WebUI reads it.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Pending,
    Running,
    Completed,
    Failed,
}

#[derive(Serialize, Debug, Clone)]
pub struct TaskStatus {
    pub task_id: String,
    pub status: TaskState,
    pub progress: u8,
    pub message: String,
    pub logs: Vec<String>,
    pub error: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub completed_at: Option<String>,
}

/// `GET /api/health`: `healthy` (200) while declarations are acted on, else `degraded`
/// (503) with each reason; `detail` joins them, as the contract's error answers have it.
#[derive(Serialize)]
pub struct Health {
    pub status: &'static str,
    pub service: &'static str,
    pub version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ProblemView>,
    /// Rows of the store kindler cannot act on (written by other programs); they do not
    /// keep kindler from acting on the others, so they do not make it unhealthy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_rows: Vec<IgnoredRowView>,
    /// Hosts of the fleet whose agent's lease ran out: nobody acts on their clusters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreachable_hosts: Vec<UnreachableHostView>,
}

#[derive(Serialize)]
pub struct UnreachableHostView {
    pub host: String,
    pub clusters: i64,
    pub message: String,
}

#[derive(Serialize)]
pub struct ProblemView {
    pub cause: &'static str,
    pub message: String,
    pub since: String,
}

impl From<&Problem> for ProblemView {
    fn from(p: &Problem) -> Self {
        ProblemView {
            cause: p.cause.as_str(),
            message: p.message.clone(),
            since: Timestamp::from(p.since).iso(),
        }
    }
}

#[derive(Serialize)]
pub struct IgnoredRowView {
    pub id: i64,
    pub name: String,
    pub reason: String,
}

impl From<IgnoredRow> for IgnoredRowView {
    fn from(r: IgnoredRow) -> Self {
        IgnoredRowView {
            id: r.id,
            name: r.name,
            reason: r.reason,
        }
    }
}

#[derive(Serialize)]
pub struct ConfigView<'a> {
    pub base_domain: &'a str,
    pub providers: [&'static str; 2],
    pub default_provider: &'static str,
    pub default_node_port: u16,
    pub default_pf_port_range: [u16; 2],
    pub default_http_port_range: [u16; 2],
    pub default_https_port_range: [u16; 2],
}

impl<'a> From<&'a Settings> for ConfigView<'a> {
    fn from(s: &'a Settings) -> Self {
        ConfigView {
            base_domain: &s.base_domain,
            providers: ["kind", "k3d"],
            default_provider: "k3d",
            default_node_port: crate::model::defaults::NODE_PORT,
            default_pf_port_range: [s.pf_port_range.first, s.pf_port_range.last],
            default_http_port_range: [s.http_port_range.first, s.http_port_range.last],
            default_https_port_range: [s.https_port_range.first, s.https_port_range.last],
        }
    }
}

/// A run of the history (`GET /api/clusters/{name}/history`).
#[derive(Serialize)]
pub struct RunView<'a> {
    pub run_id: i64,
    pub action: &'static str,
    pub outcome: &'static str,
    pub generation: Option<i64>,
    pub attempt: Option<u32>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<&'a str>,
    pub output_tail: &'a [String],
}

impl<'a> From<&'a RunRecord> for RunView<'a> {
    fn from(r: &'a RunRecord) -> Self {
        RunView {
            run_id: r.id,
            action: r.action.as_str(),
            outcome: r.outcome.as_str(),
            generation: r.generation,
            attempt: r.attempt,
            started_at: iso(r.started_at),
            ended_at: iso(r.ended_at),
            duration_ms: r.duration_ms,
            exit_code: r.exit_code,
            signal: r.signal,
            error: r.error.as_deref(),
            output_tail: &r.output_tail,
        }
    }
}
