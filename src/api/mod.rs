//! The HTTP API: the WebUI's contract, served over every socket kindler has.
//!
//! Handlers only read the store or declare desired state and ring the reconciler's bell;
//! none of them waits for a script.

mod cache;
pub mod conns;
mod create;
pub mod guard;
mod response;
mod routes;
mod status;
mod tasks;
mod views;
mod ws;

use cache::ResponseCache;
use conns::{Connections, Kind, MAX_CONNECTIONS};
use guard::Via;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::AppRef;
use crate::log;
use crate::systemd::Listener;

/// A client that has not sent its request headers by then is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may take to finish once a stop began.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection accepted just before a stop may take to send its first request:
/// a client that connected has a right to its answer (the connections not accepted yet
/// wait in the socket, which systemd keeps open, for the next kindler).
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);
/// How long a WebSocket client gets to take its close frame at a stop.
const CLOSE_FRAME_TIMEOUT: Duration = Duration::from_secs(1);

pub use routes::health;

/// Serves until `shutdown`, then stops accepting, lets requests in flight finish and
/// returns. Listeners are closed on return; a socket systemd passed stays open in
/// systemd, so clients of a restarting daemon wait instead of being refused.
pub async fn serve(app: AppRef, listeners: Vec<Listener>, shutdown: CancellationToken) {
    // Every connection and WebSocket runs in a task of this tracker, so that none is left
    // running when the daemon returns (a task still running while the runtime shuts down
    // would panic at its next use of the runtime).
    let connections = TaskTracker::new();
    // Cancelled when the drain time is over: what still runs is dropped.
    let hard_stop = CancellationToken::new();
    let server = Arc::new(Server {
        conns: Connections::new(MAX_CONNECTIONS),
        app,
        responses: ResponseCache::default(),
        scrapes: Default::default(),
        connections: connections.clone(),
        stop: Stop {
            graceful: shutdown.clone(),
            hard: hard_stop.clone(),
        },
    });
    let mut loops = Vec::new();
    let mut owned_paths = Vec::new();
    for listener in listeners {
        let (server, shutdown) = (server.clone(), shutdown.clone());
        match listener {
            Listener::Tcp(std_listener) => match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => loops.push(tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            accepted = l.accept() => match accepted {
                                Ok((stream, _)) => {
                                    let _ = stream.set_nodelay(true);
                                    let via = match stream.local_addr() {
                                        Ok(a) => Via::Tcp { ip: a.ip(), port: a.port() },
                                        Err(_) => continue,
                                    };
                                    connection(&server, via, stream);
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
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                accepted = l.accept() => match accepted {
                                    Ok((stream, _)) => connection(&server, Via::Unix, stream),
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
        hard_stop.cancel();
        connections.wait().await;
    }
}

/// What every connection shares: the daemon's parts, the answers cache, the tracker its
/// tasks run in, and the stop.
pub struct Server {
    pub app: AppRef,
    /// The connections held, and who makes room when there are too many.
    conns: Arc<Connections>,
    responses: ResponseCache,
    scrapes: status::Scrapes,
    connections: TaskTracker,
    stop: Stop,
}

/// The two ends of a connection's life at a stop.
#[derive(Clone)]
pub struct Stop {
    /// A stop began: finish the request in flight, then close.
    pub graceful: CancellationToken,
    /// The drain time is over: close now.
    pub hard: CancellationToken,
}

/// Too many open files and the like: wait a little instead of spinning.
async fn accept_failed(e: std::io::Error) {
    log::warn(&format!("accepting a connection failed: {e}"));
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn connection<T>(server: &Arc<Server>, via: Via, io: T)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Admitted before its task runs, so that a flood of connections is counted at once.
    let held = Arc::new(server.conns.admit(Kind::Http));
    let server = server.clone();
    server.connections.clone().spawn(async move {
        let stop = server.stop.clone();
        let first_request = Arc::new(Notify::new());
        let service = {
            let (held, first_request) = (held.clone(), first_request.clone());
            service_fn(move |req| {
                let server = server.clone();
                let busy = held.begin();
                if held.requests() == 1 {
                    first_request.notify_one();
                }
                async move {
                    let reply = routes::handle(server, via, req).await;
                    drop(busy);
                    Ok::<_, Infallible>(reply)
                }
            })
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            // A client may shut its side down once its request is sent. Without this, hyper
            // takes the end of its stream, noticed while the handler awaits the store, for
            // a client gone: it closes without an answer and drops the handler, which may
            // have committed a declaration already but not yet rung the reconciler's bell
            // (it then waited for the next rescan, up to resync_interval). With it, a
            // handler runs to its answer, and only the write of the answer can fail.
            // (Found by tests/fuzz.rs; an end of stream amid the head or body still ends
            // the connection.)
            .half_close(true)
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            // Closed to make room for a new client: it was idle the longest.
            _ = held.evict.cancelled() => return,
            _ = stop.graceful.cancelled() => {}
        }
        // Accepted, but its request has not arrived yet: it gets a moment to send it.
        if held.requests() == 0 {
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = first_request.notified() => {}
                _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
            }
        }
        // Finishes the request in flight, then closes; an idle connection closes now.
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = stop.hard.cancelled() => {}
        }
    });
}
