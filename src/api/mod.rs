//! The HTTP API: the WebUI's contract, served over every socket kindler has.
//!
//! Handlers only read the store or declare desired state and ring the reconciler's bell;
//! none of them waits for a script.

mod create;
mod response;
mod routes;
mod tasks;
mod views;
mod ws;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::AppRef;
use crate::log;
use crate::systemd::Listener;

/// A client that has not sent its request headers by then is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests in flight may take to finish once a stop began.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once. Beyond it kindler stops accepting, and new clients wait in
/// the listen backlog rather than using up the process's file descriptors (1024 under
/// systemd's default soft limit) that scripts' pipes and the store need too.
const MAX_CONNECTIONS: usize = 512;

pub use routes::health;

/// Serves until `shutdown`, then stops accepting, lets requests in flight finish and
/// returns. Listeners are closed on return; a socket systemd passed stays open in
/// systemd, so clients of a restarting daemon wait instead of being refused.
pub async fn serve(app: AppRef, listeners: Vec<Listener>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut loops = Vec::new();
    let mut owned_paths = Vec::new();
    for listener in listeners {
        let (app, shutdown, connections) = (app.clone(), shutdown.clone(), connections.clone());
        let slots = slots.clone();
        match listener {
            Listener::Tcp(std_listener) => match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => loops.push(tokio::spawn(async move {
                    loop {
                        let Some(slot) = free_slot(&slots, &shutdown).await else {
                            break;
                        };
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            accepted = l.accept() => match accepted {
                                Ok((stream, _)) => {
                                    let _ = stream.set_nodelay(true);
                                    connection(&connections, &app, &shutdown, stream, slot);
                                }
                                Err(e) => accept_failed(e).await,
                            }
                        }
                    }
                })),
                Err(e) => log::error(&format!("cannot use TCP listener: {e}")),
            },
            Listener::Unix { listener, owned } => {
                owned_paths.extend(owned);
                match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => loops.push(tokio::spawn(async move {
                        loop {
                            let Some(slot) = free_slot(&slots, &shutdown).await else { break };
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                accepted = l.accept() => match accepted {
                                    Ok((stream, _)) => connection(&connections, &app, &shutdown, stream, slot),
                                    Err(e) => accept_failed(e).await,
                                }
                            }
                        }
                    })),
                    Err(e) => log::error(&format!("cannot use unix listener: {e}")),
                }
            }
        }
    }
    for l in loops {
        let _ = l.await;
    }
    for path in owned_paths {
        let _ = std::fs::remove_file(path);
    }
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        log::warn("some HTTP requests did not finish in time and were dropped");
    }
}

/// Waits for room for one more connection; `None` once a stop began.
async fn free_slot(
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        slot = slots.clone().acquire_owned() => slot.ok(),
    }
}

/// Too many open files and the like: wait a little instead of spinning.
async fn accept_failed(e: std::io::Error) {
    log::warn(&format!("accepting a connection failed: {e}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn connection<T>(
    connections: &TaskTracker,
    app: &AppRef,
    shutdown: &CancellationToken,
    io: T,
    slot: OwnedSemaphorePermit,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (app, shutdown) = (app.clone(), shutdown.clone());
    connections.spawn(async move {
        let _slot = slot; // held until the connection ends
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(routes::handle(app, req).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = shutdown.cancelled() => {
                // Finishes the request in flight, then closes; idle connections close now.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    });
}
