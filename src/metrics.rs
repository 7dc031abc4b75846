//! What `GET /metrics` serves: the daemon's counters, gauges and histograms in the
//! Prometheus text format (0.0.4), kept and encoded by the `prometheus` crate.
//!
//! One registry per process ([`METRICS`]), as a daemon is one process: the parts record
//! into it where things happen (the reconciler when a run's end is recorded, the store's
//! writer per commit, the API per request, the WebSocket per connection and subscription);
//! what is a state rather than an event (clusters by state, actions waiting, the change
//! feed's lag) is set by the API's scrape handler from the store and the reconciler's
//! published figures, just before encoding (`api/metrics.rs`).
//!
//! The reconcile metrics map onto controller-runtime's: `kindler_reconcile_total{action,
//! result}` ~ `controller_runtime_reconcile_total{controller,result}`,
//! `kindler_reconcile_errors_total` ~ `controller_runtime_reconcile_errors_total`,
//! `kindler_reconcile_time_seconds` ~ `controller_runtime_reconcile_time_seconds`, with
//! `action` where controller-runtime has `controller`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::model::{Action, RunOutcome};

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Buckets for scripts: a probe takes a second, a create minutes.
const RUN_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
/// Buckets for requests and store writes: sub-millisecond to seconds.
const FAST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// Buckets for the jobs a commit carries.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub struct Metrics {
    registry: Registry,
    pub reconcile_total: IntCounterVec,
    pub reconcile_errors_total: IntCounterVec,
    pub reconcile_time_seconds: HistogramVec,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub websocket_connections: IntGauge,
    pub websocket_subscriptions: IntGauge,
    pub store_write_seconds: Histogram,
    pub store_commit_seconds: Histogram,
    pub store_commit_jobs: Histogram,
    // Set at scrape time.
    pub clusters: IntGaugeVec,
    pub clusters_backoff: IntGauge,
    pub clusters_failing: IntGauge,
    pub actions_running: IntGauge,
    pub actions_waiting: IntGauge,
    pub actions_waiting_oldest_seconds: prometheus::Gauge,
    pub change_feed_behind: IntGauge,
    pub change_feed_lag_seconds: prometheus::Gauge,
    pub reconciler_heartbeat_age_seconds: prometheus::Gauge,
    pub health_problems: IntGaugeVec,
    // Set by the agent each time it looks at the fleet's hosts (fleet.rs).
    pub fleet_host_reachable: IntGaugeVec,
    pub fleet_host_clusters: IntGaugeVec,
    // Published by the reconciler, read at scrape time.
    waiting: AtomicI64,
    /// Since when (ms since the epoch) the oldest due cluster waits for a slot; 0: none.
    waiting_since_ms: AtomicI64,
    /// The change counter's value the reconciler has read up to; -1 before the first read.
    feed_cursor: AtomicI64,
    /// When (ms since the epoch) the reconciler last read the change feed.
    feed_read_ms: AtomicI64,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric")
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("a valid metric")
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("a valid metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("a valid metric")
}

fn float_gauge(name: &str, help: &str) -> prometheus::Gauge {
    prometheus::Gauge::new(name, help).expect("a valid metric")
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            reconcile_total: counter_vec(
                "kindler_reconcile_total",
                "Actions (runs of a script) ended, by action and result (success, error, \
                 cancelled, interrupted); controller-runtime's reconcile_total",
                &["action", "result"],
            ),
            reconcile_errors_total: counter_vec(
                "kindler_reconcile_errors_total",
                "Actions that failed or timed out, by action; controller-runtime's \
                 reconcile_errors_total",
                &["action"],
            ),
            reconcile_time_seconds: histogram_vec(
                "kindler_reconcile_time_seconds",
                "How long actions ran, by action; controller-runtime's reconcile_time_seconds",
                &["action"],
                RUN_BUCKETS,
            ),
            http_requests_total: counter_vec(
                "kindler_http_requests_total",
                "HTTP requests answered, by route, method and status code",
                &["route", "method", "code"],
            ),
            http_request_duration_seconds: histogram_vec(
                "kindler_http_request_duration_seconds",
                "Time to answer an HTTP request, by route",
                &["route"],
                FAST_BUCKETS,
            ),
            websocket_connections: gauge(
                "kindler_websocket_connections",
                "WebSocket connections open on /ws/tasks",
            ),
            websocket_subscriptions: gauge(
                "kindler_websocket_subscriptions",
                "Task subscriptions held by WebSocket connections",
            ),
            store_write_seconds: histogram(
                "kindler_store_write_seconds",
                "Time from a write's submission to its commit (queueing included)",
                FAST_BUCKETS,
            ),
            store_commit_seconds: histogram(
                "kindler_store_commit_seconds",
                "Time one group commit takes",
                FAST_BUCKETS,
            ),
            store_commit_jobs: histogram(
                "kindler_store_commit_jobs",
                "Writes committed together in one transaction (group commit)",
                GROUP_BUCKETS,
            ),
            clusters: IntGaugeVec::new(
                Opts::new(
                    "kindler_clusters",
                    "Clusters by declared (desired_state) and observed (actual_state) state",
                ),
                &["desired_state", "actual_state"],
            )
            .expect("a valid metric"),
            clusters_backoff: gauge(
                "kindler_clusters_backoff",
                "Clusters waiting in backoff for their next attempt after a failure",
            ),
            clusters_failing: gauge(
                "kindler_clusters_failing",
                "Clusters whose last attempt failed (kindler retries them)",
            ),
            actions_running: gauge("kindler_actions_running", "Actions (scripts) running now"),
            actions_waiting: gauge(
                "kindler_actions_waiting",
                "Clusters due for an action that wait for a free slot (max_concurrent_actions)",
            ),
            actions_waiting_oldest_seconds: float_gauge(
                "kindler_actions_waiting_oldest_seconds",
                "How long the longest-waiting due cluster has waited for a slot; 0 when none waits",
            ),
            change_feed_behind: gauge(
                "kindler_change_feed_behind",
                "Declarations committed that the reconciler has not read yet",
            ),
            change_feed_lag_seconds: float_gauge(
                "kindler_change_feed_lag_seconds",
                "How long unread declarations have waited at most (since the feed was last \
                 read); 0 when none is unread",
            ),
            reconciler_heartbeat_age_seconds: float_gauge(
                "kindler_reconciler_heartbeat_age_seconds",
                "Time since the reconciler loop last turned (it turns at least every \
                 poll_interval)",
            ),
            health_problems: IntGaugeVec::new(
                Opts::new(
                    "kindler_health_problems",
                    "Reasons kindler cannot act on declarations, by cause (1 while active); \
                     see GET /api/health",
                ),
                &["cause"],
            )
            .expect("a valid metric"),
            fleet_host_reachable: IntGaugeVec::new(
                Opts::new(
                    "kindler_fleet_host_reachable",
                    "Hosts of a fleet sharing PostgreSQL: 1 while the host's agent holds its \
                     lease, 0 once it ran out (nobody acts on the host's clusters then)",
                ),
                &["host"],
            )
            .expect("a valid metric"),
            fleet_host_clusters: IntGaugeVec::new(
                Opts::new(
                    "kindler_fleet_host_clusters",
                    "Clusters on each host of a fleet",
                ),
                &["host"],
            )
            .expect("a valid metric"),
            waiting: AtomicI64::new(0),
            waiting_since_ms: AtomicI64::new(0),
            feed_cursor: AtomicI64::new(-1),
            feed_read_ms: AtomicI64::new(0),
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let r = &self.registry;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.reconcile_total.clone()),
            Box::new(self.reconcile_errors_total.clone()),
            Box::new(self.reconcile_time_seconds.clone()),
            Box::new(self.http_requests_total.clone()),
            Box::new(self.http_request_duration_seconds.clone()),
            Box::new(self.websocket_connections.clone()),
            Box::new(self.websocket_subscriptions.clone()),
            Box::new(self.store_write_seconds.clone()),
            Box::new(self.store_commit_seconds.clone()),
            Box::new(self.store_commit_jobs.clone()),
            Box::new(self.clusters.clone()),
            Box::new(self.clusters_backoff.clone()),
            Box::new(self.clusters_failing.clone()),
            Box::new(self.actions_running.clone()),
            Box::new(self.actions_waiting.clone()),
            Box::new(self.actions_waiting_oldest_seconds.clone()),
            Box::new(self.change_feed_behind.clone()),
            Box::new(self.change_feed_lag_seconds.clone()),
            Box::new(self.reconciler_heartbeat_age_seconds.clone()),
            Box::new(self.health_problems.clone()),
            Box::new(self.fleet_host_reachable.clone()),
            Box::new(self.fleet_host_clusters.clone()),
        ];
        for c in collectors {
            r.register(c).expect("metric names are unique");
        }
        let build = IntGaugeVec::new(
            Opts::new(
                "kindler_build_info",
                "The running kindler's version (the value is always 1)",
            ),
            &["version"],
        )
        .expect("a valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build)).expect("unique");
        // process_resident_memory_bytes, process_open_fds, process_start_time_seconds, ...
        let process = prometheus::process_collector::ProcessCollector::for_self();
        r.register(Box::new(process)).expect("unique");
        // Every series with a fixed label set is there from the start, at 0, so that a
        // rate() over the first failure sees it move.
        for action in Action::ALL {
            for result in ["success", "error", "cancelled", "interrupted"] {
                self.reconcile_total
                    .with_label_values(&[action.as_str(), result]);
            }
            self.reconcile_errors_total
                .with_label_values(&[action.as_str()]);
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        // Writing to a Vec cannot fail; the encoder refuses only malformed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }

    /// A run's end was recorded.
    pub fn reconcile_ended(&self, action: Action, outcome: RunOutcome, took: Duration) {
        let result = match outcome {
            RunOutcome::Succeeded => "success",
            RunOutcome::Failed | RunOutcome::TimedOut => "error",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Interrupted | RunOutcome::Running => "interrupted",
        };
        self.reconcile_total
            .with_label_values(&[action.as_str(), result])
            .inc();
        if result == "error" {
            self.reconcile_errors_total
                .with_label_values(&[action.as_str()])
                .inc();
        }
        self.reconcile_time_seconds
            .with_label_values(&[action.as_str()])
            .observe(took.as_secs_f64());
    }

    /// An HTTP request was answered.
    pub fn http_request(&self, route: &str, method: &str, code: hyper::StatusCode, took: Duration) {
        self.http_requests_total
            .with_label_values(&[route, method, code.as_str()])
            .inc();
        self.http_request_duration_seconds
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// The reconciler's queue after a dispatch: how many due clusters wait for a slot, and
    /// since when the oldest of them is due.
    pub fn set_waiting(&self, count: usize, oldest_due: Option<SystemTime>) {
        self.waiting.store(count as i64, Ordering::Relaxed);
        let ms = oldest_due.map_or(0, |t| millis(t).max(1));
        self.waiting_since_ms.store(ms, Ordering::Relaxed);
    }

    /// Due clusters waiting for a slot, and how long the oldest has waited, as of `now`.
    pub fn waiting(&self, now: SystemTime) -> (i64, f64) {
        let count = self.waiting.load(Ordering::Relaxed);
        let since = self.waiting_since_ms.load(Ordering::Relaxed);
        let age = if count > 0 && since > 0 {
            ((millis(now) - since).max(0) as f64) / 1000.0
        } else {
            0.0
        };
        (count, age)
    }

    /// The reconciler read the change feed up to `cursor`.
    pub fn feed_read(&self, cursor: i64) {
        self.feed_cursor.store(cursor, Ordering::Relaxed);
        self.feed_read_ms
            .store(millis(SystemTime::now()), Ordering::Relaxed);
    }

    /// Changes not read yet, given the counter's value, and since when at most they wait.
    pub fn feed_lag(&self, counter: i64, now: SystemTime) -> (i64, f64) {
        let cursor = self.feed_cursor.load(Ordering::Relaxed);
        if cursor < 0 {
            return (0, 0.0);
        }
        let behind = (counter - cursor).max(0);
        let lag = if behind > 0 {
            ((millis(now) - self.feed_read_ms.load(Ordering::Relaxed)).max(0) as f64) / 1000.0
        } else {
            0.0
        };
        (behind, lag)
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The route a request path belongs to, as the `route` label names it: names and task ids
/// become `{name}` and `{id}`, so that the label has a handful of values whatever clients ask.
pub fn route_label(path: &str) -> &'static str {
    let path = path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match segments.as_slice() {
        ["api", "health"] => "/api/health",
        ["api", "status"] => "/api/status",
        ["api", "config"] => "/api/config",
        ["api", "clusters"] => "/api/clusters",
        ["api", "clusters", _] => "/api/clusters/{name}",
        ["api", "clusters", _, "status"] => "/api/clusters/{name}/status",
        ["api", "clusters", _, "history"] => "/api/clusters/{name}/history",
        ["api", "clusters", _, "start"] => "/api/clusters/{name}/start",
        ["api", "clusters", _, "stop"] => "/api/clusters/{name}/stop",
        ["api", "clusters", _, "forget"] => "/api/clusters/{name}/forget",
        ["api", "tasks", _] => "/api/tasks/{id}",
        ["ws", "tasks"] => "/ws/tasks",
        ["metrics"] => "/metrics",
        _ => "other",
    }
}

/// The method as the `method` label names it (anything unusual is "other").
pub fn method_label(method: &hyper::Method) -> &'static str {
    match *method {
        hyper::Method::GET => "GET",
        hyper::Method::HEAD => "HEAD",
        hyper::Method::POST => "POST",
        hyper::Method::DELETE => "DELETE",
        hyper::Method::PUT => "PUT",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_few_labels() {
        assert_eq!(route_label("/api/clusters/dev"), "/api/clusters/{name}");
        assert_eq!(route_label("/api/clusters/dev/"), "/api/clusters/{name}");
        assert_eq!(route_label("/api/tasks/reconcile-dev"), "/api/tasks/{id}");
        assert_eq!(route_label("/metrics"), "/metrics");
        assert_eq!(route_label("/etc/passwd"), "other");
        assert_eq!(route_label("/"), "other");
    }

    #[test]
    fn the_text_format_has_every_family() {
        METRICS.reconcile_ended(Action::Create, RunOutcome::Failed, Duration::from_millis(3));
        let text = String::from_utf8(METRICS.encode()).unwrap();
        for name in [
            "kindler_reconcile_total{action=\"create\",result=\"error\"}",
            "kindler_reconcile_errors_total{action=\"create\"}",
            "kindler_reconcile_time_seconds_bucket",
            "kindler_build_info{version=",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
