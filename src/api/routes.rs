//! Routing and handlers.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Body;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, EXPECT};
use hyper::{Method, Request, StatusCode};
use std::sync::Arc;

use super::create;
use super::guard::{self, Via};
use super::response::{json, json_bytes, render, ApiError, FieldError, Reply};
use super::tasks::{self, TaskKind};
use super::views::{
    ClusterInfo, ClusterStatus, ConfigView, Health, ProblemView, RunView, TaskCreate, TaskState,
    UnreachableHostView,
};
use super::Server;
use crate::app::AppRef;
use crate::log::{ids, Event, Priority};
use crate::metrics::{self, METRICS};
use crate::model::{ClusterName, DesiredState};
use crate::store::clusters::{ClusterRecord, InvalidRow};
use crate::store::ports::Refusal;
use crate::store::time::Timestamp;
use crate::store::{StoreError, StoreResult};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest time a client may take to send its request body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Of a body its handler leaves unread (one too large, a refused request's), what is read
/// and thrown away before the answer, and for how long (see `discard_unread_body`).
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);
/// Runs shown by the history endpoint.
const HISTORY_LIMIT: u32 = 50;
/// A reconciler that has not turned for this long (plus two poll intervals) is stuck.
const STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn handle(server: Arc<Server>, via: Via, mut req: Request<Incoming>) -> Reply {
    let (started, method) = (
        std::time::Instant::now(),
        metrics::method_label(req.method()),
    );
    let route_label = metrics::route_label(req.uri().path());
    let reply = match route(&server, via, &mut req).await {
        Ok(reply) => reply,
        Err(e) => e.reply(),
    };
    if reply.status() != StatusCode::SWITCHING_PROTOCOLS {
        discard_unread_body(&mut req).await;
    }
    METRICS.http_request(route_label, method, reply.status(), started.elapsed());
    reply
}

async fn route(server: &Server, via: Via, req: &mut Request<Incoming>) -> Result<Reply, ApiError> {
    let app = &server.app;
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    // HEAD is GET without the body (hyper leaves the body out), as monitors expect.
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    let websocket = segments == ["ws", "tasks"];
    guard::check(
        req,
        via,
        guard::is_change(&method, websocket),
        &app.settings(),
    )?;
    match segments.as_slice() {
        ["api", "health"] => {
            only(&method, &Method::GET, "GET")?;
            health_reply(app).await
        }
        ["api", "status"] => {
            only(&method, &Method::GET, "GET")?;
            super::status::status(server).await
        }
        ["metrics"] => {
            only(&method, &Method::GET, "GET")?;
            super::status::metrics(server).await
        }
        ["api", "config"] => {
            only(&method, &Method::GET, "GET")?;
            Ok(json(StatusCode::OK, &ConfigView::from(&*app.settings())))
        }
        ["api", "clusters"] => match method {
            Method::GET => list(server).await,
            Method::POST => create(app, req).await,
            _ => Err(ApiError::MethodNotAllowed("GET, POST")),
        },
        ["api", "clusters", name] => match method {
            Method::GET => get(server, name).await,
            Method::DELETE => delete(app, name).await,
            _ => Err(ApiError::MethodNotAllowed("GET, DELETE")),
        },
        ["api", "clusters", name, "status"] => {
            only(&method, &Method::GET, "GET")?;
            let name = path_name(name)?;
            match app.store.by_name(&name).await? {
                Some(Ok(record)) => Ok(json(StatusCode::OK, &ClusterStatus::from(&record))),
                Some(Err(invalid)) => Ok(json(StatusCode::OK, &ClusterStatus::invalid(&invalid))),
                None => Err(ApiError::NotFound(format!("Cluster {name} not found"))),
            }
        }
        ["api", "clusters", name, "history"] => {
            only(&method, &Method::GET, "GET")?;
            history(app, path_name(name)?).await
        }
        ["api", "clusters", name, "start"] => {
            only(&method, &Method::POST, "POST")?;
            power(app, path_name(name)?, TaskKind::Start).await
        }
        ["api", "clusters", name, "stop"] => {
            only(&method, &Method::POST, "POST")?;
            power(app, path_name(name)?, TaskKind::Stop).await
        }
        ["api", "clusters", name, "forget"] => {
            only(&method, &Method::POST, "POST")?;
            forget(app, decode(name)).await
        }
        ["api", "tasks", id] => {
            only(&method, &Method::GET, "GET")?;
            task(app, decode(id)).await
        }
        ["ws", "tasks"] => {
            only(&method, &Method::GET, "GET")?;
            Ok(super::ws::upgrade(
                app.clone(),
                &server.connections,
                &server.conns,
                &server.stop,
                req,
            ))
        }
        _ => Err(ApiError::NotFound("Not Found".into())),
    }
}

/// Refuses any method but `want`.
fn only(method: &Method, want: &Method, allow: &'static str) -> Result<(), ApiError> {
    if method == want {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(allow))
    }
}

/// A cluster name from the path: percent-decoded, then held to the same rules as a body.
fn path_name(raw: &str) -> Result<ClusterName, ApiError> {
    let text = decode(raw);
    ClusterName::parse(&text).map_err(|e| {
        ApiError::Invalid(vec![FieldError {
            loc: vec!["path".into(), "name".into()],
            msg: e.to_string(),
            kind: "string_pattern_mismatch",
        }])
    })
}

/// Percent-decoding of a path segment (invalid escapes are kept as written).
fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Can the API read the store? (The watchdog asks this too.)
pub async fn health(app: &AppRef) -> Result<(), String> {
    app.store.ping().await.map_err(|e| e.to_string())
}

/// 200 while declarations are acted on; 503 with every reason why not.
async fn health_reply(app: &AppRef) -> Result<Reply, ApiError> {
    let mut problems: Vec<ProblemView> = app.health.problems().iter().map(Into::into).collect();
    let now = Timestamp::now().iso();
    if let Err(e) = health(app).await {
        problems.push(ProblemView {
            cause: "store_reads",
            message: format!("the store cannot be read: {e}"),
            since: now.clone(),
        });
    }
    if let Some(stall) = reconciler_stall(app) {
        problems.push(ProblemView {
            cause: "reconciler",
            message: stall,
            since: now,
        });
    }
    let ignored_rows = app
        .health
        .ignored_rows()
        .into_iter()
        .map(Into::into)
        .collect();
    let unreachable_hosts = app
        .health
        .unreachable_hosts()
        .into_iter()
        .map(|(host, clusters)| UnreachableHostView {
            message: format!(
                "host {host} is unreachable (its agent's lease ran out): nobody acts on its \
                 {clusters} clusters until it is back"
            ),
            host,
            clusters,
        })
        .collect();
    let healthy = problems.is_empty();
    let body = Health {
        status: if healthy { "healthy" } else { "degraded" },
        service: "kindler",
        version: env!("CARGO_PKG_VERSION"),
        detail: (!healthy).then(|| {
            let reasons: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
            reasons.join("; ")
        }),
        problems,
        ignored_rows,
        unreachable_hosts,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(status, &body))
}

/// The reconciler loop turns at least once per poll interval, and a turn waits at most for
/// the store's busy timeout; one that has not turned for much longer is stuck.
pub(super) fn reconciler_stall(app: &AppRef) -> Option<String> {
    let age = app.heartbeat.age();
    let limit = STALL_AFTER + app.settings().poll_interval * 2;
    (age > limit).then(|| {
        format!(
            "the reconciler has not turned for {}",
            humantime::format_duration(std::time::Duration::from_secs(age.as_secs()))
        )
    })
}

/// Serves a read-only answer from the response cache while the store is unchanged.
async fn cached<F>(server: &Server, key: String, render_fresh: F) -> Result<Reply, ApiError>
where
    F: std::future::Future<Output = Result<Bytes, ApiError>>,
{
    // The epoch is read before the store: a change that lands meanwhile moves it again,
    // so a stale body is never kept as current.
    let epoch = server.app.store.epoch();
    if let Some(body) = server.responses.get(&key, epoch) {
        return Ok(json_bytes(StatusCode::OK, body));
    }
    let body = render_fresh.await?;
    server.responses.put(key, epoch, body.clone());
    Ok(json_bytes(StatusCode::OK, body))
}

async fn list(server: &Server) -> Result<Reply, ApiError> {
    cached(server, "list".into(), async {
        let rows = server.app.store.list().await?;
        let views: Vec<ClusterInfo> = rows
            .iter()
            .map(|row| match row {
                Ok(record) => record.into(),
                Err(invalid) => invalid.into(),
            })
            .collect();
        Ok(render(&views))
    })
    .await
}

async fn find(app: &AppRef, name: ClusterName) -> Result<ClusterRecord, ApiError> {
    match app.store.by_name(&name).await? {
        Some(Ok(record)) => Ok(record),
        Some(Err(invalid)) => Err(cannot_act(&invalid)),
        None => Err(ApiError::NotFound(format!("Cluster {name} not found"))),
    }
}

/// Refuses an action on a row kindler cannot act on, saying how to get rid of it.
fn cannot_act(invalid: &InvalidRow) -> ApiError {
    ApiError::Conflict(format!(
        "kindler cannot act on cluster row {:?}: {}; correct it with sqlite3, or remove it \
         with POST /api/clusters/{}/forget",
        invalid.name, invalid.reason, invalid.name
    ))
}

/// One cluster, also a row kindler cannot act on (listed as `invalid`), by the name as
/// stored; a name that breaks the rules and names no stored row is refused with 422.
async fn get(server: &Server, raw: &str) -> Result<Reply, ApiError> {
    let name = path_name(raw);
    let lookup = decode(raw);
    cached(server, format!("cluster/{lookup}"), async {
        let found = server.app.store.by_stored_name(&lookup).await?;
        match (found, name) {
            (Some(Ok(record)), _) => Ok(render(&ClusterInfo::from(&record))),
            (Some(Err(invalid)), _) => Ok(render(&ClusterInfo::from(&invalid))),
            (None, Ok(name)) => Err(ApiError::NotFound(format!("Cluster {name} not found"))),
            (None, Err(refused)) => Err(refused),
        }
    })
    .await
}

async fn history(app: &AppRef, name: ClusterName) -> Result<Reply, ApiError> {
    let found = app.store.history(&name, HISTORY_LIMIT).await?;
    match found {
        (None, runs) if runs.is_empty() => {
            Err(ApiError::NotFound(format!("Cluster {name} not found")))
        }
        (_, runs) => {
            let views: Vec<RunView> = runs.iter().map(RunView::from).collect();
            Ok(json(StatusCode::OK, &views))
        }
    }
}

fn header(req: &Request<Incoming>, name: HeaderName) -> Option<&str> {
    req.headers()
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
}

/// A client that asked `Expect: 100-continue` sends its body only once told to.
fn waits_to_send(req: &Request<Incoming>) -> bool {
    header(req, EXPECT).is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// Reads a request body of at most [`MAX_BODY`] bytes, within [`BODY_TIMEOUT`]. A body
/// too large is refused (413) as soon as that is known; what is left of it is drained
/// before the answer goes out (see [`discard_unread_body`]).
async fn read_body(req: &mut Request<Incoming>) -> Result<Bytes, ApiError> {
    let declared = header(req, CONTENT_LENGTH).and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::TooLarge(MAX_BODY));
    }
    let body = req.body_mut();
    let mut kept = Vec::new();
    // A client that stops sending half-way does not hold the connection for ever.
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::Timeout(BODY_TIMEOUT)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::Invalid(vec![FieldError {
                    loc: vec!["body".into()],
                    msg: format!("the request body could not be read: {e}"),
                    kind: "body_error",
                }]))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if kept.len() + data.len() > MAX_BODY {
            return Err(ApiError::TooLarge(MAX_BODY));
        }
        kept.extend_from_slice(&data);
    }
    Ok(Bytes::from(kept))
}

/// Reads and throws away what is left of a request body its handler did not read — a
/// body too large (413), or one sent with a request refused or answered without it
/// (415, 403, 404, 405, 422, an action that takes no body) — up to [`DRAIN_LIMIT`] bytes
/// and for at most [`DRAIN_TIME`], before the answer goes out, as nginx's lingering close
/// does: a client that writes its whole body before it reads (Python's urllib, some
/// browsers) would otherwise get a connection reset instead of the answer, since closing a
/// socket with unread data resets it. (Found for refusals by tests/fuzz.rs; the 413 had it
/// already.) A client that asked `Expect: 100-continue` has sent nothing yet and is
/// answered at once.
async fn discard_unread_body(req: &mut Request<Incoming>) {
    if req.body().is_end_stream() || waits_to_send(req) {
        return;
    }
    let until = tokio::time::Instant::now() + DRAIN_TIME;
    let mut drained = 0usize;
    while drained <= DRAIN_LIMIT {
        match tokio::time::timeout_at(until, req.body_mut().frame()).await {
            Ok(Some(Ok(frame))) => drained += frame.data_ref().map_or(0, |d| d.len()),
            Ok(Some(Err(e))) => {
                crate::log::debug(&format!("draining an unread request body: {e}"));
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
}

async fn create(app: &AppRef, req: &mut Request<Incoming>) -> Result<Reply, ApiError> {
    let body = read_body(req).await?;
    let request = create::parse(&body).map_err(ApiError::Invalid)?;
    let name = request.spec.name.clone();
    let new = request.into_new_cluster(&app.settings());
    let stored = heard(
        app,
        |app| async move { app.store.create_cluster(new).await },
    )
    .await;
    app.note_write(&stored, "storing a declaration");
    let created = match stored? {
        Ok(created) => created,
        Err(refusal) if refusal.is_invalid_request() => {
            return Err(ApiError::Invalid(vec![FieldError::body(
                "host",
                "value_error",
                refusal.message(&name),
            )]))
        }
        Err(refusal @ Refusal::NoLiveHost) => {
            return Err(ApiError::Unavailable(refusal.message(&name)))
        }
        Err(refusal) => return Err(ApiError::Conflict(refusal.message(&name))),
    };
    let (spec, reassigned, host) = (created.spec, created.reassigned, created.host);
    let mut message = format!("Cluster {name} declared; kindler is creating it on host {host}");
    for r in &reassigned {
        message.push_str(&format!(
            "; {} {} was taken, {} assigned",
            r.field, r.from, r.to
        ));
    }
    Event::new(
        Priority::Info,
        format!("cluster {name} declared present ({})", spec.provider),
    )
    .id(ids::CLUSTER_DECLARED)
    .field("CLUSTER", &name)
    .field("PROVIDER", spec.provider)
    .field("DESIRED_STATE", DesiredState::Present)
    .field("HOST", &host)
    .emit();
    Ok(json(
        StatusCode::ACCEPTED,
        &TaskCreate {
            task_id: TaskKind::Create.id(&name),
            status: TaskState::Pending,
            message,
            host: Some(host),
        },
    ))
}

async fn delete(app: &AppRef, raw: &str) -> Result<Reply, ApiError> {
    let name = match path_name(raw) {
        Ok(name) => name,
        // A stored row another program named so: nothing can be run for it.
        Err(refused) => {
            return match app.store.by_stored_name(&decode(raw)).await? {
                Some(Err(invalid)) => Err(cannot_act(&invalid)),
                _ => Err(refused),
            };
        }
    };
    if let Some(Err(invalid)) = app.store.by_name(&name).await? {
        return Err(cannot_act(&invalid));
    }
    if app
        .settings()
        .protected_clusters
        .iter()
        .any(|p| p == name.as_str())
    {
        return Err(ApiError::Forbidden(format!(
            "Cluster {name} is protected and cannot be deleted"
        )));
    }
    declare(app, &name, DesiredState::Absent).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &TaskCreate {
            task_id: TaskKind::Delete.id(&name),
            status: TaskState::Pending,
            message: format!("Cluster {name} declared absent; kindler is deleting it"),
            host: None,
        },
    ))
}

/// Removes a cluster from the store without running its delete command: the way out for a
/// cluster whose delete can never succeed (its tools are gone), and for a row another
/// program wrote that kindler cannot act on (so the name is not held to the naming rules).
/// A running action of it is cancelled; its history is kept.
async fn forget(app: &AppRef, name: String) -> Result<Reply, ApiError> {
    if app.settings().protected_clusters.contains(&name) {
        return Err(ApiError::Forbidden(format!(
            "Cluster {name} is protected and cannot be forgotten"
        )));
    }
    let key = name.clone();
    let removed = heard(app, |app| async move {
        let removed = app.store.forget(&key).await;
        if let Ok(Some(id)) = removed {
            app.nudge(id);
        }
        removed
    })
    .await;
    app.note_write(&removed, "forgetting a cluster");
    if removed?.is_none() {
        return Err(ApiError::NotFound(format!("Cluster {name} not found")));
    }
    Event::new(
        Priority::Warning,
        format!(
            "cluster {name} forgotten: removed from the store without running its delete command; \
             whatever exists of it on the host is left as it is"
        ),
    )
    .id(ids::CLUSTER_FORGOTTEN)
    .field("CLUSTER", &name)
    .emit();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "name": name,
            "status": "forgotten",
            "message": format!(
                "Cluster {name} forgotten: kindler removed it from its store without running \
                 its delete command; whatever exists of it on the host is left as it is"
            ),
        }),
    ))
}

async fn power(app: &AppRef, name: ClusterName, kind: TaskKind) -> Result<Reply, ApiError> {
    let record = find(app, name.clone()).await?;
    if record.desired == DesiredState::Absent {
        return Err(ApiError::Conflict(format!(
            "Cluster {name} is being deleted"
        )));
    }
    let (desired, verb) = match kind {
        TaskKind::Stop => (DesiredState::Stopped, "stopping"),
        _ => (DesiredState::Present, "starting"),
    };
    declare(app, &name, desired).await?;
    Ok(json(
        StatusCode::ACCEPTED,
        &TaskCreate {
            task_id: kind.id(&name),
            status: TaskState::Pending,
            message: format!("Cluster {name} declared {desired}; kindler is {verb} it"),
            host: None,
        },
    ))
}

/// Runs a write the reconciler must hear of and rings its bell once it is committed, in a
/// task of its own: a client that goes away mid-request makes hyper drop its handler, and
/// one dropped between the commit and the bell left a declaration stored but unheard until
/// the next rescan (found by tests/fuzz.rs).
async fn heard<T, F, Fut>(app: &AppRef, write: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce(AppRef) -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>> + Send + 'static,
{
    let rung = app.clone();
    let write = write(app.clone());
    let task = tokio::spawn(async move {
        let result = write.await;
        if result.is_ok() {
            rung.wake.notify_one();
        }
        result
    });
    task.await.unwrap_or(Err(StoreError::WriterGone))
}

/// Stores a new desired state and wakes the reconciler.
async fn declare(app: &AppRef, name: &ClusterName, desired: DesiredState) -> Result<(), ApiError> {
    let key = name.clone();
    let found = heard(
        app,
        |app| async move { app.store.declare(&key, desired).await },
    )
    .await;
    app.note_write(&found, "storing a declaration");
    let found = found?;
    if !found {
        return Err(ApiError::NotFound(format!("Cluster {name} not found")));
    }
    Event::new(Priority::Info, format!("cluster {name} declared {desired}"))
        .id(ids::CLUSTER_DECLARED)
        .field("CLUSTER", name)
        .field("DESIRED_STATE", desired)
        .emit();
    Ok(())
}

async fn task(app: &AppRef, id: String) -> Result<Reply, ApiError> {
    match tasks::facts(&app.store, &id).await? {
        Some(facts) => Ok(json(
            StatusCode::OK,
            &tasks::describe(&id, &facts, &activity(app, &facts)),
        )),
        None => Err(ApiError::NotFound(format!("Task {id} not found"))),
    }
}

/// What the reconciler is doing now, for a task's answer.
pub fn activity(app: &AppRef, facts: &tasks::Facts) -> tasks::Activity {
    let problems = app.health.problems();
    let settings = app.settings();
    tasks::Activity {
        now: app.clock.now(),
        running: app.runs.count(),
        capacity: settings.max_concurrent_actions,
        policy: crate::reconciler::machine::Policy {
            resync: settings.resync_interval,
            honour_timers: true,
        },
        degraded: (!problems.is_empty()).then(|| {
            let reasons: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
            reasons.join("; ")
        }),
        live_lines: facts.running_run().and_then(|id| app.runs.lines(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(decode("a%2Fb"), "a/b");
        assert_eq!(decode("%20x"), " x");
        assert_eq!(decode("bad%zz"), "bad%zz");
        assert_eq!(decode("end%2"), "end%2");
        assert_eq!(decode("%aé"), "%aé");
    }
}
