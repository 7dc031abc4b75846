//! `GET /metrics` (Prometheus) and `GET /api/status` (what `kindler status` shows): the
//! daemon's state in numbers.
//!
//! Both need the clusters counted by state. That is one pass over the table (about 2-3 ms
//! for 10,000 rows on the benchmark machine, more under load: bench/cli.sh), so the count
//! is kept until the store's epoch moves (a commit, or another program's write noticed).
//! A scrape does not wait for a new count: it serves the one kept and has it counted again
//! in the background (at most once a second), so its answer may be one scrape behind.
//! `/api/status`, asked by a person, waits for a current count. Between changes a scrape
//! reads nothing but the index of pending retries and the change counter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::response::{json, ApiError, Reply};
use super::views::ProblemView;
use super::Server;
use crate::app::AppRef;
use crate::metrics::METRICS;
use crate::store::clusters::StateCounts;
use crate::store::time::Timestamp;

/// What scrapes share: the counts by state at a store epoch, whether they are being counted
/// again, and a turn at the gauges.
#[derive(Default)]
pub struct Scrapes {
    counts: Arc<Mutex<Option<(u64, StateCounts)>>>,
    counting: Arc<AtomicBool>,
    /// When the last count in the background began: at most one per [`RECOUNT_EVERY`].
    recounted: Mutex<Option<std::time::Instant>>,
    turn: Mutex<()>,
}

/// Scrapes have the clusters counted again in the background at most this often.
const RECOUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What one look at the store gives a scrape.
struct Figures {
    counts: StateCounts,
    backoff: i64,
    counter: i64,
}

/// How current the counts by state must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counts {
    /// As of now: counted again if the store changed.
    Current,
    /// The last ones kept will do; counted again in the background if the store changed.
    Kept,
}

async fn figures(server: &Server, want: Counts) -> Result<Figures, ApiError> {
    let (app, cache) = (&server.app, &server.scrapes);
    // Read before the store: a change landing meanwhile moves it again (see `cached`).
    let epoch = app.store.epoch();
    let kept = cache.counts.lock().unwrap().clone();
    let kept = match kept {
        Some((at, counts)) if at == epoch => Some(counts),
        Some((_, counts)) if want == Counts::Kept => {
            recount(server, epoch);
            Some(counts)
        }
        _ => None,
    };
    let now = Timestamp::now();
    let fresh = kept.is_none();
    let counts = match kept {
        Some(k) => k,
        None => app.store.state_counts().await?,
    };
    let backoff = app.store.in_backoff(now).await?;
    let counter = app.store.change_counter().await?;
    if fresh {
        *cache.counts.lock().unwrap() = Some((epoch, counts.clone()));
    }
    Ok(Figures {
        counts,
        backoff,
        counter,
    })
}

/// Counts the clusters again in a task of its own (one at a time), keeping the result for
/// the scrapes to come.
fn recount(server: &Server, epoch: u64) {
    let cache = &server.scrapes;
    {
        let mut last = cache.recounted.lock().unwrap();
        if last.is_some_and(|at| at.elapsed() < RECOUNT_EVERY) {
            return;
        }
        if cache.counting.swap(true, Ordering::AcqRel) {
            return;
        }
        *last = Some(std::time::Instant::now());
    }
    let app: AppRef = server.app.clone();
    let (counts, counting) = (cache.counts.clone(), cache.counting.clone());
    // A task of the API's tracker: a stop waits for it.
    server.connections.spawn(async move {
        if let Ok(fresh) = app.store.state_counts().await {
            let mut kept = counts.lock().unwrap();
            // Another count may have landed meanwhile, for a later epoch.
            if !matches!(kept.as_ref(), Some((at, _)) if *at >= epoch) {
                *kept = Some((epoch, fresh));
            }
        }
        counting.store(false, Ordering::Release);
    });
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(server: &Server) -> Result<Reply, ApiError> {
    let app = &server.app;
    let f = figures(server, Counts::Kept).await?;
    let now = SystemTime::now();
    let m = &METRICS;
    let body = {
        // One scrape at a time sets the state gauges and encodes them, so that two scrapes
        // never interleave a reset with the other's values.
        let _one = server.scrapes.turn.lock().unwrap();
        m.clusters.reset();
        for (desired, actual, n, _) in &f.counts.groups {
            m.clusters
                .with_label_values(&[desired.as_str(), actual.as_str()])
                .set(*n);
        }
        m.clusters_backoff.set(f.backoff);
        m.clusters_failing.set(f.counts.failing());
        m.actions_running.set(app.runs.count() as i64);
        let (waiting, oldest) = m.waiting(now);
        m.actions_waiting.set(waiting);
        m.actions_waiting_oldest_seconds.set(oldest);
        let (behind, lag) = m.feed_lag(f.counter, now);
        m.change_feed_behind.set(behind);
        m.change_feed_lag_seconds.set(lag);
        m.reconciler_heartbeat_age_seconds
            .set(app.heartbeat.age().as_secs_f64());
        m.health_problems.reset();
        for p in app.health.problems() {
            m.health_problems
                .with_label_values(&[p.cause.as_str()])
                .set(1);
        }
        m.encode()
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

#[derive(Serialize)]
struct Status {
    service: &'static str,
    version: &'static str,
    status: &'static str,
    /// The STATUS line `systemctl status kindler` shows.
    status_line: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<ProblemView>,
    pid: u32,
    started_at: String,
    uptime_seconds: u64,
    database: String,
    config_file: Option<String>,
    sockets: Vec<String>,
    clusters: ClusterCounts,
    next_retry: Option<NextRetry>,
    actions: Actions,
}

#[derive(Serialize)]
struct ClusterCounts {
    total: i64,
    /// Only the states some cluster is in, in the order `systemctl status` lists them.
    by_actual_state: serde_json::Map<String, serde_json::Value>,
    by_desired_state: serde_json::Map<String, serde_json::Value>,
    failing: i64,
    in_backoff: i64,
}

#[derive(Serialize)]
struct NextRetry {
    name: String,
    at: Option<String>,
}

#[derive(Serialize)]
struct Actions {
    running: usize,
    max_concurrent: usize,
    waiting_for_a_slot: i64,
}

/// `GET /api/status`: what `kindler status` shows.
pub async fn status(server: &Server) -> Result<Reply, ApiError> {
    let app = &server.app;
    let f = figures(server, Counts::Current).await?;
    let summary = app.store.summary().await?;
    let settings = app.settings();
    let mut problems: Vec<ProblemView> = app.health.problems().iter().map(Into::into).collect();
    // As /api/health has it: a reconciler loop that stopped turning is a problem too.
    if let Some(stall) = super::routes::reconciler_stall(app) {
        problems.push(ProblemView {
            cause: "reconciler",
            message: stall,
            since: Timestamp::now().iso(),
        });
    }
    let mut by_actual = serde_json::Map::new();
    for (state, n) in &summary.by_state {
        by_actual.insert(state.as_str().into(), (*n).into());
    }
    let mut by_desired = serde_json::Map::new();
    for desired in [
        crate::model::DesiredState::Present,
        crate::model::DesiredState::Stopped,
        crate::model::DesiredState::Absent,
    ] {
        let n: i64 = f
            .counts
            .groups
            .iter()
            .filter(|g| g.0 == desired)
            .map(|g| g.2)
            .sum();
        if n > 0 {
            by_desired.insert(desired.as_str().into(), n.into());
        }
    }
    let body = Status {
        service: "kindler",
        version: env!("CARGO_PKG_VERSION"),
        status: if problems.is_empty() {
            "healthy"
        } else {
            "degraded"
        },
        status_line: app.health.status_line(),
        problems,
        pid: std::process::id(),
        started_at: Timestamp::from(app.started_at).iso(),
        uptime_seconds: app.started_at.elapsed().map_or(0, |d| d.as_secs()),
        database: app.store.describe(),
        config_file: settings
            .config_file
            .as_ref()
            .map(|p| p.display().to_string()),
        sockets: app.endpoints.get().cloned().unwrap_or_default(),
        clusters: ClusterCounts {
            total: f.counts.total(),
            by_actual_state: by_actual,
            by_desired_state: by_desired,
            failing: f.counts.failing(),
            in_backoff: f.backoff,
        },
        next_retry: summary.next_retry.map(|(name, at)| NextRetry {
            name,
            at: at.map(Timestamp::iso),
        }),
        actions: Actions {
            running: app.runs.count(),
            max_concurrent: settings.max_concurrent_actions,
            waiting_for_a_slot: METRICS.waiting(SystemTime::now()).0,
        },
    };
    Ok(json(StatusCode::OK, &body))
}
