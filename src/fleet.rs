//! A host among many: the agent's lease on its host name, and watching the other hosts'.
//!
//! With a PostgreSQL store the agent takes its host's lease before it acts (a second
//! agent started with the same host name waits here, and health and the journal say for
//! whom), renews it every third of its TTL, and gives it up at a clean stop. An agent that
//! finds its lease taken over (it was paused or cut off past its TTL) stops: its writes
//! would be refused by the fence anyway, and systemd starts it again, to wait. With SQLite
//! the file lock plays the lease's part and all of this is a no-op.
//!
//! Every renewal also looks at the other hosts: one whose lease ran out is reported once
//! (journal, health's `unreachable_hosts`), its clusters show `host_reachable: false`, and
//! `/metrics` has `kindler_fleet_host_reachable{host}` (0) for as long as it lasts.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::AppRef;
use crate::health::Cause;
use crate::log::{ids, Event, Priority};
use crate::store::LeaseAttempt;

/// Retries while the database cannot be reached: the first after this, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Takes the host's lease, then keeps it until `shutdown`. `Err` says the lease was lost
/// to another agent (the daemon then stops, and exits with an error).
pub async fn hold_lease(app: AppRef, shutdown: CancellationToken) -> Result<(), String> {
    if !app.store.is_fleet() {
        return Ok(());
    }
    if !acquire(&app, &shutdown).await {
        return Ok(());
    }
    renew_until(&app, &shutdown).await
}

/// Waits for the lease and takes it; false when the daemon stops first.
async fn acquire(app: &AppRef, shutdown: &CancellationToken) -> bool {
    let host = app.settings().host.clone();
    let mut retry = RETRY_FIRST;
    loop {
        let ttl = app.settings().lease_ttl;
        let wait = match app.store.acquire_lease(ttl).await {
            Ok(LeaseAttempt::Acquired { fence }) => {
                app.health.resolve(Cause::Lease);
                Event::new(
                    Priority::Notice,
                    format!(
                        "holding the lease of host {host} (fence {fence}); acting on its clusters"
                    ),
                )
                .id(ids::LEASE_ACQUIRED)
                .field("HOST", &host)
                .field("FENCE", fence)
                .emit();
                return true;
            }
            Ok(LeaseAttempt::HeldBy { agent, expires_in }) => {
                app.health.report(
                    Cause::Lease,
                    format!(
                        "host {host} is held by another kindler agent ({agent}); this one waits \
                         for its lease, which runs out in {} unless that agent renews it",
                        humantime::format_duration(Duration::from_millis(
                            expires_in.as_millis() as u64
                        ))
                    ),
                );
                retry = RETRY_FIRST;
                (expires_in + Duration::from_millis(50)).min(ttl / 3)
            }
            Err(e) => {
                app.health.report(
                    Cause::Lease,
                    format!("cannot take the lease of host {host}: {e}; retrying"),
                );
                retry = (retry * 2).min(RETRY_MAX);
                retry
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Renews the lease every third of its TTL until `shutdown`, and looks at the other hosts.
async fn renew_until(app: &AppRef, shutdown: &CancellationToken) -> Result<(), String> {
    let host = app.settings().host.clone();
    let mut seen = BTreeMap::new();
    loop {
        let ttl = app.settings().lease_ttl;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        match app.store.renew_lease(ttl).await {
            Ok(true) => app.health.resolve(Cause::Lease),
            Ok(false) => {
                let why = format!(
                    "the lease of host {host} was taken over by another kindler agent (this one \
                     was paused or cut off longer than lease_ttl, {}): it stops acting on the \
                     host's clusters and exits",
                    humantime::format_duration(ttl)
                );
                Event::new(Priority::Error, why.clone())
                    .id(ids::LEASE_LOST)
                    .field("HOST", &host)
                    .emit();
                shutdown.cancel();
                return Err(why);
            }
            Err(e) => app.health.report(
                Cause::Lease,
                format!("cannot renew the lease of host {host}: {e}; retrying"),
            ),
        }
        watch_hosts(app, &mut seen).await;
    }
}

/// Reports hosts whose lease ran out or came back, once each time.
async fn watch_hosts(app: &AppRef, seen: &mut BTreeMap<String, bool>) {
    let Ok(hosts) = app.store.hosts().await else {
        return;
    };
    let mut changed = false;
    for h in &hosts {
        let metrics = &crate::metrics::METRICS;
        metrics
            .fleet_host_reachable
            .with_label_values(&[h.name.as_str()])
            .set(i64::from(h.reachable));
        metrics
            .fleet_host_clusters
            .with_label_values(&[h.name.as_str()])
            .set(h.clusters);
        let before = seen.insert(h.name.clone(), h.reachable);
        if before == Some(h.reachable) {
            continue;
        }
        changed = true;
        if before.is_none() && h.reachable {
            continue;
        }
        let (priority, id, text) = if h.reachable {
            (
                Priority::Notice,
                ids::HOST_BACK,
                format!(
                    "host {} is back: its agent acts on its clusters again",
                    h.name
                ),
            )
        } else {
            (
                Priority::Warning,
                ids::HOST_UNREACHABLE,
                format!(
                    "host {} is unreachable: its agent's lease ran out; nobody acts on its {} \
                     clusters until it is back (local clusters cannot move)",
                    h.name, h.clusters
                ),
            )
        };
        Event::new(priority, text)
            .id(id)
            .field("HOST", &h.name)
            .emit();
    }
    if changed {
        let unreachable = hosts
            .iter()
            .filter(|h| !h.reachable)
            .map(|h| (h.name.clone(), h.clusters))
            .collect();
        app.health.set_unreachable_hosts(unreachable);
        // Cached answers show each cluster's host_reachable: they are stale now.
        app.store.touch();
    }
}
