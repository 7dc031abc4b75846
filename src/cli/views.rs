//! What the commands print: the API's JSON made into tables and lines for people.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::client::{ClientError, Target};
use super::show::{self, Style, Table};
use super::Failure;

/// The fields of a cluster the table shows, read straight from the API's answer.
#[derive(serde::Deserialize)]
struct Row<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    provider: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    desired_state: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    actual_state: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    created_at: Option<std::borrow::Cow<'a, str>>,
    pf_port: Option<u64>,
    http_port: Option<u64>,
    https_port: Option<u64>,
    #[serde(borrow)]
    reconcile_error: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    next_attempt_at: Option<std::borrow::Cow<'a, str>>,
    attempts: Option<u64>,
}

/// NAME, PROVIDER, DESIRED, ACTUAL, AGE, PORTS, NEXT RETRY / LAST ERROR; sorted by name.
pub fn cluster_table(body: &[u8], style: Style, now: SystemTime) -> Result<String, Failure> {
    let mut rows: Vec<Row> = serde_json::from_slice(body).map_err(|e| {
        Failure::from(ClientError::Protocol(format!(
            "the list of clusters cannot be read: {e}"
        )))
    })?;
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    if rows.is_empty() {
        return Ok(
            "No clusters declared. Declare one with: kindler create NAME --provider k3d\n".into(),
        );
    }
    let mut table = Table::new(
        &[
            "NAME",
            "PROVIDER",
            "DESIRED",
            "ACTUAL",
            "AGE",
            "PORTS (PF/HTTP/HTTPS)",
            "NEXT RETRY / LAST ERROR",
        ],
        style,
    );
    let port = |p: Option<u64>| p.map_or("-".into(), |p| p.to_string());
    for c in rows {
        let retry = c
            .next_attempt_at
            .as_deref()
            .and_then(show::parse_iso)
            .filter(|at| *at > now && c.attempts.unwrap_or(0) > 0)
            .map(|at| show::until_time(at, now));
        let error = c.reconcile_error.as_deref().map(|e| show::shorten(e, 60));
        let last = match (retry, error) {
            (Some(r), Some(e)) => format!("{}: {e}", style.yellow(&format!("retry {r}"))),
            (Some(r), None) => style.yellow(&format!("retry {r}")),
            (None, Some(e)) if c.actual_state == "failed" => style.red(&e),
            (None, Some(e)) => e,
            (None, None) => String::new(),
        };
        let age = c
            .created_at
            .as_deref()
            .and_then(show::parse_iso)
            .map_or("-".into(), |t| {
                show::short_duration(now.duration_since(t).unwrap_or_default())
            });
        table.row(vec![
            c.name.into_owned(),
            c.provider.into_owned(),
            c.desired_state.into_owned(),
            style.state(&c.actual_state),
            age,
            format!(
                "{}/{}/{}",
                port(c.pf_port),
                port(c.http_port),
                port(c.https_port)
            ),
            last,
        ]);
    }
    Ok(table.render())
}

/// Every field of a cluster, its last runs and, if it failed, why.
pub fn describe(c: &Value, status: &Value, runs: &Value, style: Style, now: SystemTime) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{:<20} {v}\n", format!("{k}:")));
    let s = |k: &str| match &c[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let when = |k: &str| match show::parse_time(&c[k]) {
        Some(_) => format!("{} ({} ago)", s(k), show::age(&c[k], now)),
        None => "-".into(),
    };
    let yes_no = |k: &str| {
        if c[k].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
        .to_owned()
    };
    line("Name", style.bold(&s("name")));
    line("Provider", s("provider"));
    line("Desired state", s("desired_state"));
    line("Actual state", style.state(&s("actual_state")));
    if status.is_object() && c["actual_state"] == "running" {
        line(
            "Nodes ready",
            format!("{}/{}", status["nodes_ready"], status["nodes_total"]),
        );
        line(
            "Portainer",
            status["portainer_status"].as_str().unwrap_or("-").into(),
        );
        line(
            "Argo CD",
            status["argocd_status"].as_str().unwrap_or("-").into(),
        );
    }
    for (label, key) in [
        ("Node port", "node_port"),
        ("Port-forward port", "pf_port"),
        ("HTTP port", "http_port"),
        ("HTTPS port", "https_port"),
        ("Subnet", "cluster_subnet"),
    ] {
        line(label, s(key));
    }
    for (label, key) in [
        ("Register Portainer", "register_portainer"),
        ("HAProxy route", "haproxy_route"),
        ("Register Argo CD", "register_argocd"),
    ] {
        line(label, yes_no(key));
    }
    for (label, key) in [
        ("Created", "created_at"),
        ("Updated", "updated_at"),
        ("Last reconciled", "last_reconciled_at"),
        ("Last transition", "last_transition_at"),
    ] {
        line(label, when(key));
    }
    line("Last action", s("last_action"));
    line(
        "Generation",
        format!(
            "{} (acted on: {})",
            s("generation"),
            s("observed_generation")
        ),
    );
    line("Failed attempts", s("attempts"));
    line(
        "Next attempt",
        match show::until(&c["next_attempt_at"], now) {
            Some(u) => format!("{} ({u})", s("next_attempt_at")),
            None => "-".into(),
        },
    );
    let runs: Vec<&Value> = runs
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    if let Some(error) = c["reconcile_error"].as_str() {
        out.push('\n');
        out.push_str(&style.red(&why_failed(c, &runs, now)));
        out.push('\n');
        out.push_str("  ");
        out.push_str(&error.trim_end().replace('\n', "\n  "));
        out.push('\n');
    }
    if !runs.is_empty() {
        out.push_str("\nLast runs (kindler history NAME for all, kindler logs NAME --run ID for one's output):\n");
        out.push_str(&runs_table(&runs[..runs.len().min(5)], style, now));
    }
    out
}

/// "Why" in plain words: what failed, how often, and what kindler does next.
fn why_failed(c: &Value, runs: &[&Value], now: SystemTime) -> String {
    let failed = runs
        .iter()
        .find(|r| matches!(r["outcome"].as_str(), Some("failed" | "timed_out")));
    let mut text = match failed {
        Some(r) => {
            let action = r["action"].as_str().unwrap_or("action");
            match (
                r["outcome"].as_str(),
                r["exit_code"].as_i64(),
                r["signal"].as_i64(),
            ) {
                (Some("timed_out"), _, _) => {
                    format!("Why: the {action} script ran too long and was ended")
                }
                (_, Some(code), _) => {
                    format!("Why: the {action} script exited with status {code}")
                }
                (_, _, Some(sig)) => format!("Why: the {action} script was killed by signal {sig}"),
                _ => format!("Why: the {action} failed"),
            }
        }
        None => "Why: the last attempt failed".into(),
    };
    let attempts = c["attempts"].as_u64().unwrap_or(0);
    if attempts > 1 {
        text.push_str(&format!(" ({attempts} failures in a row)"));
    }
    match show::until(&c["next_attempt_at"], now) {
        Some(u) if attempts > 0 => text.push_str(&format!("; kindler retries {u}")),
        _ if attempts > 0 => text.push_str("; kindler retries as soon as it can"),
        _ => {}
    }
    text.push(':');
    text
}

/// One run a line: RUN, ACTION, OUTCOME, EXIT, DURATION, STARTED, and the error.
pub fn runs_table(runs: &[&Value], style: Style, now: SystemTime) -> String {
    let mut table = Table::new(
        &[
            "RUN", "ACTION", "OUTCOME", "EXIT", "DURATION", "STARTED", "ERROR",
        ],
        style,
    );
    for r in runs {
        let outcome = r["outcome"].as_str().unwrap_or("-");
        let painted = match outcome {
            "succeeded" => style.green(outcome),
            "failed" | "timed_out" => style.red(outcome),
            "running" => style.yellow(outcome),
            _ => style.dim(outcome),
        };
        let exit = match (r["exit_code"].as_i64(), r["signal"].as_i64()) {
            (Some(code), _) => code.to_string(),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "-".into(),
        };
        table.row(vec![
            r["run_id"].to_string(),
            r["action"].as_str().unwrap_or("-").into(),
            painted,
            exit,
            r["duration_ms"]
                .as_i64()
                .map_or("-".into(), show::run_duration),
            match show::parse_time(&r["started_at"]) {
                Some(_) => format!("{} ago", show::age(&r["started_at"], now)),
                None => "-".into(),
            },
            r["error"]
                .as_str()
                .map(|e| show::shorten(e, 50))
                .unwrap_or_default(),
        ]);
    }
    table.render()
}

pub fn status_text(s: &Value, via: &Target, style: Style) -> String {
    let mut out = String::new();
    let health = match s["status"].as_str() {
        Some("healthy") => style.green("healthy"),
        Some(other) => style.red(other),
        None => "-".into(),
    };
    let uptime = show::short_duration(Duration::from_secs(
        s["uptime_seconds"].as_u64().unwrap_or(0),
    ));
    out.push_str(&format!(
        "{} {} (pid {}), up {uptime}: {health}\n",
        style.bold("kindler"),
        s["version"].as_str().unwrap_or("?"),
        s["pid"]
    ));
    for p in s["problems"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} {}: {} (since {})\n",
            style.red("problem"),
            p["cause"].as_str().unwrap_or("?"),
            p["message"].as_str().unwrap_or(""),
            p["since"].as_str().unwrap_or("?")
        ));
    }
    let mut line = |k: &str, v: String| out.push_str(&format!("{:<12} {v}\n", format!("{k}:")));
    line("Status", s["status_line"].as_str().unwrap_or("").into());
    line("Database", s["database"].as_str().unwrap_or("-").into());
    line(
        "Config",
        s["config_file"].as_str().unwrap_or("(none)").into(),
    );
    let sockets: Vec<&str> = s["sockets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    line("Sockets", sockets.join(", "));
    line("Reached at", via.to_string());
    let c = &s["clusters"];
    let by = |k: &str| -> String {
        c[k].as_object()
            .map(|m| {
                m.iter()
                    .map(|(state, n)| format!("{n} {}", style.state(state)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let total = c["total"].as_i64().unwrap_or(0);
    line(
        "Clusters",
        if total == 0 {
            "none declared".into()
        } else {
            format!(
                "{total}: {} (declared: {})",
                by("by_actual_state"),
                by("by_desired_state")
            )
        },
    );
    if c["failing"].as_i64().unwrap_or(0) > 0 {
        line(
            "Failing",
            format!(
                "{} (of them {} waiting in backoff)",
                c["failing"], c["in_backoff"]
            ),
        );
    }
    let now = SystemTime::now();
    line(
        "Next retry",
        match &s["next_retry"] {
            Value::Object(r) => format!(
                "{} {}",
                r.get("name").and_then(|n| n.as_str()).unwrap_or("?"),
                r.get("at")
                    .and_then(|at| show::until(at, now))
                    .unwrap_or_else(|| "now".into())
            ),
            _ => "none".into(),
        },
    );
    let act = &s["actions"];
    line(
        "Actions",
        format!(
            "{} running (at most {}), {} waiting for a slot",
            act["running"], act["max_concurrent"], act["waiting_for_a_slot"]
        ),
    );
    out
}
