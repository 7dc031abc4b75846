//! The change feed's bell across hosts: one connection LISTENs on `kindler_changes` (the
//! clusters' triggers NOTIFY the host whose cluster changed). A notification moves the
//! store's epoch (every agent's cached API answers) and, for this agent's own host, rings
//! the reconciler. The connection is kept outside the pool; when it breaks it is made again
//! with backoff, and the reconciler reads the whole feed after each reconnection, since
//! notifications sent meanwhile are lost. A periodic read of the feed is the safety net.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::connect::Target;
use crate::store::Epoch;

/// Reconnection waits: the first after this, doubling up to the maximum.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The listener's state, shared with the store.
#[derive(Default)]
pub struct Link {
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// Why the last connection attempt failed, while the listener is not connected.
    down: Option<String>,
    /// Connected anew since the reconciler last asked: notifications may have been lost.
    reconnected: bool,
}

impl Link {
    /// `Some(why)` while the listener cannot reach the database.
    pub fn down(&self) -> Option<String> {
        self.state.lock().unwrap().down.clone()
    }

    /// True once after each (re)connection.
    pub fn take_reconnected(&self) -> bool {
        std::mem::take(&mut self.state.lock().unwrap().reconnected)
    }

    fn set(&self, down: Option<String>) {
        let mut state = self.state.lock().unwrap();
        if down.is_none() {
            state.reconnected = true;
        }
        state.down = down;
    }
}

/// What a notification reaches.
pub struct Bells {
    pub host: String,
    pub epoch: Arc<Epoch>,
    pub feed: Arc<Notify>,
    pub link: Arc<Link>,
}

/// Listens until `stop`, reconnecting with backoff.
pub async fn run(
    target: Target,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    bells: Bells,
    stop: CancellationToken,
) {
    let mut wait = RETRY_FIRST;
    loop {
        let listened = tokio::select! {
            _ = stop.cancelled() => return,
            r = listen_once(&target, tls.clone(), &bells) => r,
        };
        let why = match listened {
            Ok(()) => "the connection to the database was closed".to_owned(),
            Err(e) => e,
        };
        bells.link.set(Some(why));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
        if bells.link.down().is_none() {
            wait = RETRY_FIRST;
        }
    }
}

/// One connection: LISTEN, then ring the bells for each notification until it breaks.
async fn listen_once(
    target: &Target,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    bells: &Bells,
) -> Result<(), String> {
    let (client, mut connection) = target
        .config
        .connect(tls)
        .await
        .map_err(|e| format!("the database cannot be reached: {e}"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_owned());
                }
                Ok(_) => {}
                Err(e) => return Err(format!("the connection to the database broke: {e}")),
            }
        }
        Ok(())
    });
    let listening = client.batch_execute("LISTEN kindler_changes").await;
    if let Err(e) = listening {
        driver.abort();
        return Err(format!("LISTEN failed: {e}"));
    }
    bells.link.set(None);
    // What changed while nobody listened is read from the feed.
    bells.feed.notify_one();
    bells.epoch.bump();
    while let Some(host) = rx.recv().await {
        bells.epoch.bump();
        if host == bells.host {
            bells.feed.notify_one();
        }
    }
    drop(client);
    driver
        .await
        .unwrap_or_else(|e| Err(format!("the listener stopped: {e}")))
}
