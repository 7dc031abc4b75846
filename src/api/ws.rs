//! `GET /ws/tasks`: task updates pushed to the WebUI over a WebSocket.
//!
//! The client subscribes to task ids (`{"type":"subscribe","task_id":"…"}`), unsubscribes,
//! and pings every 30 s. The server sends `{"type":"task_update","task": TaskStatus}` when
//! a subscribed task is first seen and whenever it changes after that. Task status is
//! derived from the store and the runs in progress (see `tasks.rs`); a connection looks
//! again only when one of them changed (a commit, a script's output line, health), at most
//! once per [`LOOK_EVERY`], so idle subscriptions cost nothing.
//!
//! A script's output reaches its running tasks sooner, every [`LIVE_EVERY`] at most: what
//! the store said of the task is kept from the last look, and only the output (memory) is
//! read again, unless a run began or ended meanwhile (then the store is read again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use tokio_util::task::TaskTracker;

use super::conns::{Connections, Held, Kind};
use super::response::{json, Reply};
use super::tasks;
use super::views::TaskState;
use super::Stop;
use crate::app::AppRef;
use crate::log;
use crate::metrics::METRICS;
use crate::store::StoreError;

const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How often new output lines of a running task are pushed at most (`kindler create
/// --wait` shows them as they come).
const LIVE_EVERY: Duration = Duration::from_millis(20);
/// Subscriptions one connection may hold (the WebUI holds one per task it started).
const MAX_SUBSCRIPTIONS: usize = 64;
/// Largest client message: a subscription is well under 200 bytes. (The library's own
/// default, 64 MiB, would let a few connections make the daemon hold gigabytes.)
const MAX_MESSAGE: usize = 64 * 1024;
/// A connection's read buffer, allocated and zeroed when it first reads; it grows as a
/// message needs. (The library's default, 128 KiB, kept 128 KiB resident for every
/// WebSocket, 130 MiB at the connection limit, for messages of under 200 bytes: found by
/// tests/fuzz.rs.)
const READ_BUFFER: usize = 4 * 1024;
/// Longest task id worth looking up: `reconcile-delete-` and a 63-character name.
const MAX_TASK_ID: usize = 128;
/// After a close frame sent for a broken message, a pause this long in what the client
/// sends means it has stopped sending (see [`refuse`]).
const LINGER_PAUSE: Duration = Duration::from_millis(200);

fn limits() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .read_buffer_size(READ_BUFFER)
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Subscribe { task_id: String },
    Unsubscribe { task_id: String },
    Ping,
}

/// Answers the upgrade request and serves the socket in a task of its own (one of the
/// API's tracked tasks: a stop waits for it, and it ends with a close frame).
pub fn upgrade(
    app: AppRef,
    connections: &TaskTracker,
    conns: &Arc<Connections>,
    stop: &Stop,
    req: &mut Request<Incoming>,
) -> Reply {
    let wants_websocket = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .filter(|_| wants_websocket)
    else {
        return json(
            StatusCode::UPGRADE_REQUIRED,
            &serde_json::json!({"detail": "this endpoint speaks WebSocket only"}),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    let stop = stop.clone();
    // A WebSocket holds a place among the connections too (the HTTP one it came on leaves).
    let held = conns.admit(Kind::WebSocket);
    connections.spawn(async move {
        let upgraded = tokio::select! {
            upgraded = upgrade => upgraded,
            _ = stop.hard.cancelled() => return,
        };
        match upgraded {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(limits()),
                )
                .await;
                serve(app, &stop, &held, ws).await;
            }
            Err(e) => log::debug(&format!("WebSocket upgrade failed: {e}")),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// What a subscription last got: the update sent (None: nothing yet, the task is not
/// known) and whether it said "running" (its live output can change it).
#[derive(Default)]
struct Sent {
    update: Option<String>,
    running: bool,
    /// What the store said of the task at the last look, while it was running. Boxed: the
    /// facts are about a kilobyte, and 64 subscriptions of every held WebSocket would carry
    /// them inline (found by tests/fuzz.rs, which bounds the memory of a WebSocket).
    facts: Option<Box<tasks::Facts>>,
}

/// What changed since the last look.
#[derive(Debug, Default, Clone, Copy)]
struct Dirty {
    /// The store or health: any task may have changed; looked at every LOOK_EVERY at most.
    store: bool,
    /// Output of a running script: only tasks that are running show it; pushed every
    /// LIVE_EVERY at most, from the facts kept.
    output: bool,
}

async fn serve<S>(app: AppRef, stop: &Stop, held: &Held, mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _open = Counted::new(&METRICS.websocket_connections, 1);
    let mut subscribed = Subscriptions::default();
    // Nothing is looked up while nothing changes: the connection sleeps until the store
    // commits, a running script prints, or health changes, then looks at most once per
    // LOOK_EVERY.
    let mut store = app.store.watch();
    let mut live = app.runs.watch();
    let mut health = app.health.watch();
    let mut dirty = Dirty::default();
    let mut next_look = Instant::now();
    let mut next_live = Instant::now();
    // The runs in progress as of the last look at the store.
    let mut runs_seen = app.runs.generation();
    loop {
        let watching = !subscribed.is_empty();
        // A run that began or ended is looked at as soon as output would be (a failed
        // attempt is seen before its retry starts); other changes wait their look, and
        // output does not wait for them.
        let runs_moved = app.runs.generation() != runs_seen;
        let look_at = match (dirty.store && !runs_moved, dirty.output || runs_moved) {
            (true, true) => next_look.min(next_live),
            (true, false) => next_look,
            _ => next_live,
        };
        let pending = dirty.store || dirty.output || runs_moved;
        tokio::select! {
            biased;
            _ = stop.graceful.cancelled() => {
                // A close frame, sent without waiting long for a client that reads slowly.
                let frame = CloseFrame {
                    code: CloseCode::Away,
                    reason: "kindler is stopping".into(),
                };
                let _ = tokio::time::timeout(super::CLOSE_FRAME_TIMEOUT, ws.close(Some(frame))).await;
                return;
            }
            _ = held.evict.cancelled() => {
                let frame = CloseFrame {
                    code: CloseCode::Again,
                    reason: "kindler holds too many connections; this one was idle the longest".into(),
                };
                let _ = tokio::time::timeout(super::CLOSE_FRAME_TIMEOUT, ws.close(Some(frame))).await;
                return;
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    held.touch();
                    let (reply, new) = handle(&text, &mut subscribed);
                    if let Some(reply) = reply {
                        if ws.send(Message::text(reply)).await.is_err() {
                            return;
                        }
                    }
                    // A new subscription is answered at once, alone.
                    if let Some(id) = new {
                        if let Err(e) = push(&app, &mut ws, &mut subscribed, vec![id]).await {
                            return e.note();
                        }
                    }
                }
                // The client closes: the library has queued the close frame that answers
                // its own (RFC 6455, 5.5.1); it goes out before the connection ends.
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(super::CLOSE_FRAME_TIMEOUT, ws.flush()).await;
                    return;
                }
                None => return,
                Some(Err(e)) => return refuse(&mut ws, e).await,
                Some(Ok(_)) => {} // pings are answered by the library; binary is ignored
            },
            Ok(()) = store.changed(), if watching => dirty.store = true,
            Ok(()) = health.changed(), if watching => dirty.store = true,
            Ok(()) = live.changed(), if watching => dirty.output = true,
            _ = tokio::time::sleep_until(look_at.into()), if watching && pending => {
                let now = Instant::now();
                let runs_now = app.runs.generation();
                let look = (dirty.store && now >= next_look) || runs_now != runs_seen;
                if !look {
                    dirty.output = false;
                    next_live = now + LIVE_EVERY;
                    if let Err(e) = push_output(&app, &mut ws, &mut subscribed).await {
                        return e.note();
                    }
                    continue;
                }
                let ids = subscribed
                    .iter()
                    .filter(|(_, sent)| dirty.store || sent.running || runs_now != runs_seen)
                    .map(|(id, _)| id.clone())
                    .collect();
                dirty = Dirty::default();
                runs_seen = runs_now;
                next_look = now + LOOK_EVERY;
                next_live = now + LIVE_EVERY;
                if let Err(e) = push(&app, &mut ws, &mut subscribed, ids).await {
                    return e.note();
                }
            }
        }
    }
}

/// Ends a connection whose client broke the protocol with a close frame that says how
/// (RFC 6455, 7.1.7): a message over [`MAX_MESSAGE`] (1009), a text message that is no
/// UTF-8 (1007), a malformed frame (1002). What the client still sends (the rest of an
/// oversized message) is then read and dropped for a moment, up to a bound, so that the
/// close does not meet unread data and reset the connection before the client has read
/// the frame. (Found by tests/fuzz.rs: these connections were dropped without a frame, an
/// oversized message's with a reset.) A client that is gone (an I/O error, a close without
/// a frame) gets nothing.
async fn refuse<S>(ws: &mut WebSocketStream<S>, e: WsError)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (code, reason) = match &e {
        WsError::Capacity(_) => (CloseCode::Size, "a message over 64 KiB"),
        WsError::Utf8(_) => (CloseCode::Invalid, "a text message that is not UTF-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return,
        WsError::Protocol(_) => (CloseCode::Protocol, "a malformed frame"),
        _ => return,
    };
    log::debug(&format!("WebSocket client refused: {e}"));
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if tokio::time::timeout(super::CLOSE_FRAME_TIMEOUT, ws.close(Some(frame)))
        .await
        .is_err()
    {
        return;
    }
    let until = tokio::time::Instant::now() + super::CLOSE_FRAME_TIMEOUT;
    let mut buf = vec![0u8; 16 * 1024];
    let mut drained = 0;
    while drained < 16 * MAX_MESSAGE {
        // A pause in what the client sends ends it: it has read the frame and waits.
        let pause = tokio::time::Instant::now() + LINGER_PAUSE;
        match tokio::time::timeout_at(until.min(pause), ws.get_mut().read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// Applies a client message; returns an immediate reply, if any, and the task id of a new
/// subscription.
fn handle(text: &str, subscribed: &mut Subscriptions) -> (Option<String>, Option<String>) {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Subscribe { task_id }) if task_id.len() > MAX_TASK_ID => (
            Some(error(&format!(
                "task_id is longer than {MAX_TASK_ID} bytes; no such task exists"
            ))),
            None,
        ),
        Ok(ClientMessage::Subscribe { task_id }) if subscribed.contains_key(&task_id) => {
            (None, None)
        }
        Ok(ClientMessage::Subscribe { task_id }) if subscribed.len() < MAX_SUBSCRIPTIONS => {
            subscribed.insert(task_id.clone());
            (None, Some(task_id))
        }
        Ok(ClientMessage::Subscribe { .. }) => (
            Some(error(&format!(
                "at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
            ))),
            None,
        ),
        Ok(ClientMessage::Unsubscribe { task_id }) => {
            subscribed.remove(&task_id);
            (None, None)
        }
        Ok(ClientMessage::Ping) => (Some(serde_json::json!({"type": "pong"}).to_string()), None),
        Err(e) => (Some(error(&format!("cannot read message: {e}"))), None),
    }
}

fn error(message: &str) -> String {
    serde_json::json!({"type": "error", "message": message}).to_string()
}

/// Why updates could not be pushed; either ends the connection.
#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("WebSocket task lookup failed: {0}")]
    Lookup(#[from] StoreError),
    #[error("cannot send a task update: {0}")]
    Send(#[from] tokio_tungstenite::tungstenite::Error),
}

impl PushError {
    /// Logs why the connection ends: a lookup that failed (health reports the store's state;
    /// this is for debugging); a client that went away is nothing to report.
    fn note(self) {
        if let PushError::Lookup(_) = self {
            log::debug(&self.to_string());
        }
    }
}

/// Looks up the tasks `ids` and sends an update for each whose status changed since the
/// last one sent.
async fn push<S>(
    app: &AppRef,
    ws: &mut WebSocketStream<S>,
    subscribed: &mut Subscriptions,
    ids: Vec<String>,
) -> Result<(), PushError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if ids.is_empty() {
        return Ok(());
    }
    let found = tasks::facts_of_many(&app.store, ids).await?;
    for (facts, id) in found {
        let Some(facts) = facts else { continue };
        send_update(app, ws, subscribed, &id, facts).await?;
    }
    Ok(())
}

/// Sends the task's status if it changed since the last update sent; keeps the facts while
/// the task runs.
async fn send_update<S>(
    app: &AppRef,
    ws: &mut WebSocketStream<S>,
    subscribed: &mut Subscriptions,
    id: &str,
    facts: tasks::Facts,
) -> Result<(), PushError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let status = tasks::describe(id, &facts, &super::routes::activity(app, &facts));
    let running = status.status == TaskState::Running;
    let update = serde_json::json!({"type": "task_update", "task": status}).to_string();
    let Some(sent) = subscribed.map.get_mut(id) else {
        return Ok(());
    };
    sent.running = running;
    sent.facts = running.then(|| Box::new(facts));
    if sent.update.as_deref() != Some(update.as_str()) {
        ws.send(Message::text(update.clone())).await?;
        sent.update = Some(update);
    }
    Ok(())
}

/// New output of running tasks, from the facts kept at the last look (no store read).
async fn push_output<S>(
    app: &AppRef,
    ws: &mut WebSocketStream<S>,
    subscribed: &mut Subscriptions,
) -> Result<(), PushError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let running: Vec<(String, tasks::Facts)> = subscribed
        .map
        .iter()
        .filter_map(|(id, sent)| Some((id.clone(), *sent.facts.clone()?)))
        .collect();
    for (id, facts) in running {
        send_update(app, ws, subscribed, &id, facts).await?;
    }
    Ok(())
}

/// A gauge raised by `by` while this lives.
struct Counted {
    gauge: prometheus::IntGauge,
    by: i64,
}

impl Counted {
    fn new(gauge: &prometheus::IntGauge, by: i64) -> Counted {
        gauge.add(by);
        Counted {
            gauge: gauge.clone(),
            by,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.sub(self.by);
    }
}

/// A connection's subscriptions, counted in the metrics while they exist.
#[derive(Default)]
struct Subscriptions {
    map: HashMap<String, Sent>,
}

impl Subscriptions {
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn contains_key(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    fn insert(&mut self, id: String) {
        if self.map.insert(id, Sent::default()).is_none() {
            METRICS.websocket_subscriptions.inc();
        }
    }

    fn remove(&mut self, id: &str) {
        if self.map.remove(id).is_some() {
            METRICS.websocket_subscriptions.dec();
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &Sent)> {
        self.map.iter()
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        METRICS.websocket_subscriptions.sub(self.map.len() as i64);
    }
}
