//! `GET /ws/tasks`: task updates pushed to the WebUI over a WebSocket.
//!
//! The client subscribes to task ids (`{"type":"subscribe","task_id":"…"}`), unsubscribes,
//! and pings every 30 s. The server sends `{"type":"task_update","task": TaskStatus}` when
//! a subscribed task is first seen and whenever it changes after that. Task status is
//! derived from the store and the runs in progress (see `tasks.rs`); a connection looks
//! again only when one of them changed (a commit, a script's output line, health), at most
//! once per [`LOOK_EVERY`], so idle subscriptions cost nothing.

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
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use tokio_util::task::TaskTracker;

use super::conns::{Connections, Held, Kind};
use super::response::{json, Reply};
use super::tasks;
use super::Stop;
use crate::app::AppRef;
use crate::log;
use crate::store::StoreError;

const LOOK_EVERY: Duration = Duration::from_millis(500);
/// Subscriptions one connection may hold (the WebUI holds one per task it started).
const MAX_SUBSCRIPTIONS: usize = 64;
/// Largest client message: a subscription is well under 200 bytes. (The library's own
/// default, 64 MiB, would let a few connections make the daemon hold gigabytes.)
const MAX_MESSAGE: usize = 64 * 1024;
/// Longest task id worth looking up: `reconcile-delete-` and a 63-character name.
const MAX_TASK_ID: usize = 128;

fn limits() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
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
    mut req: Request<Incoming>,
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
    let upgrade = hyper::upgrade::on(&mut req);
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
}

/// Which subscriptions a change may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dirty {
    None,
    /// Output of a running script: only tasks that are running show it.
    Running,
    /// The store or health: any task.
    All,
}

async fn serve<S>(app: AppRef, stop: &Stop, held: &Held, mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut subscribed: HashMap<String, Sent> = HashMap::new();
    // Nothing is looked up while nothing changes: the connection sleeps until the store
    // commits, a running script prints, or health changes, then looks at most once per
    // LOOK_EVERY.
    let mut store = app.store.watch();
    let mut live = app.runs.watch();
    let mut health = app.health.watch();
    let mut dirty = Dirty::None;
    let mut next_look = Instant::now();
    loop {
        let watching = !subscribed.is_empty();
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
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // pings are answered by the library; binary is ignored
            },
            Ok(()) = store.changed(), if watching => dirty = Dirty::All,
            Ok(()) = health.changed(), if watching => dirty = Dirty::All,
            Ok(()) = live.changed(), if watching => dirty = dirty.max(Dirty::Running),
            _ = tokio::time::sleep_until(next_look.into()), if watching && dirty != Dirty::None => {
                let ids = subscribed
                    .iter()
                    .filter(|(_, sent)| dirty == Dirty::All || sent.running)
                    .map(|(id, _)| id.clone())
                    .collect();
                dirty = Dirty::None;
                next_look = Instant::now() + LOOK_EVERY;
                if let Err(e) = push(&app, &mut ws, &mut subscribed, ids).await {
                    return e.note();
                }
            }
        }
    }
}

/// Applies a client message; returns an immediate reply, if any, and the task id of a new
/// subscription.
fn handle(text: &str, subscribed: &mut HashMap<String, Sent>) -> (Option<String>, Option<String>) {
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
            subscribed.insert(task_id.clone(), Sent::default());
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
    subscribed: &mut HashMap<String, Sent>,
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
        let status = tasks::describe(&id, &facts, &super::routes::activity(app, &facts));
        let running = status.status == "running";
        let update = serde_json::json!({"type": "task_update", "task": status}).to_string();
        let Some(sent) = subscribed.get_mut(&id) else {
            continue;
        };
        sent.running = running;
        if sent.update.as_deref() != Some(update.as_str()) {
            ws.send(Message::text(update.clone())).await?;
            sent.update = Some(update);
        }
    }
    Ok(())
}
