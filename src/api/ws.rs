//! `GET /ws/tasks`: task updates pushed to the WebUI over a WebSocket.
//!
//! The client subscribes to task ids (`{"type":"subscribe","task_id":"…"}`), unsubscribes,
//! and pings every 30 s. The server sends `{"type":"task_update","task": TaskStatus}` when
//! a subscribed task is first seen and whenever it changes after that. Task status is
//! derived from the store (see `tasks.rs`), so the connection looks every
//! [`LOOK_EVERY`] while it has subscriptions.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::response::{json, Reply};
use super::tasks;
use crate::app::AppRef;
use crate::log;

const LOOK_EVERY: Duration = Duration::from_millis(500);
/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: usize = 256;
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

/// Answers the upgrade request and serves the socket in a task of its own.
pub fn upgrade(app: AppRef, mut req: Request<Incoming>) -> Reply {
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
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(limits()),
                )
                .await;
                serve(app, ws).await;
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

async fn serve<S>(app: AppRef, mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Task id -> the last update sent for it (None: nothing sent yet).
    let mut subscribed: HashMap<String, Option<String>> = HashMap::new();
    let mut ticker = tokio::time::interval(LOOK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = handle(&text, &mut subscribed) {
                        if ws.send(Message::text(reply)).await.is_err() {
                            return;
                        }
                    }
                    if push_changes(&app, &mut ws, &mut subscribed).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // pings are answered by the library; binary is ignored
            },
            _ = ticker.tick(), if !subscribed.is_empty() => {
                if push_changes(&app, &mut ws, &mut subscribed).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Applies a client message; returns an immediate reply, if any.
fn handle(text: &str, subscribed: &mut HashMap<String, Option<String>>) -> Option<String> {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(ClientMessage::Subscribe { task_id }) if task_id.len() > MAX_TASK_ID => Some(error(
            &format!("task_id is longer than {MAX_TASK_ID} bytes; no such task exists"),
        )),
        Ok(ClientMessage::Subscribe { task_id }) => {
            if subscribed.len() < MAX_SUBSCRIPTIONS {
                subscribed.entry(task_id).or_insert(None);
                None
            } else {
                Some(error(&format!(
                    "at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
                )))
            }
        }
        Ok(ClientMessage::Unsubscribe { task_id }) => {
            subscribed.remove(&task_id);
            None
        }
        Ok(ClientMessage::Ping) => Some(serde_json::json!({"type": "pong"}).to_string()),
        Err(e) => Some(error(&format!("cannot read message: {e}"))),
    }
}

fn error(message: &str) -> String {
    serde_json::json!({"type": "error", "message": message}).to_string()
}

/// Sends an update for every subscribed task whose status changed since the last one.
async fn push_changes<S>(
    app: &AppRef,
    ws: &mut WebSocketStream<S>,
    subscribed: &mut HashMap<String, Option<String>>,
) -> Result<(), ()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ids: Vec<String> = subscribed.keys().cloned().collect();
    let found = app
        .store
        .read(move |conn| {
            ids.into_iter()
                .map(|id| Ok((tasks::facts(conn, &id)?, id)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| log::warn(&format!("WebSocket task lookup failed: {e}")))?;
    let statuses = found.into_iter().map(|(facts, id)| {
        let status = facts.map(|f| tasks::describe(&id, &f, &super::routes::activity(app, &f)));
        (id, status)
    });
    for (id, status) in statuses {
        let Some(status) = status else { continue };
        let update = serde_json::json!({"type": "task_update", "task": status}).to_string();
        let last = subscribed.get_mut(&id).ok_or(())?;
        if last.as_deref() != Some(update.as_str()) {
            ws.send(Message::text(update.clone()))
                .await
                .map_err(|_| ())?;
            *last = Some(update);
        }
    }
    Ok(())
}
