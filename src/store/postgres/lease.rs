//! Host leases: one row per host in `hosts`. An agent acquires its host's lease when the
//! row is free (never held, expired by the database's clock, or released at a stop),
//! which takes the next fence number, and renews it well within its TTL. A lease held by
//! another agent is waited for. Expiry is judged by the database's clock only, so the
//! hosts' clocks need not agree.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Postgres;
use crate::store::{HostInfo, LeaseAttempt, StoreResult};

impl Postgres {
    /// Takes the host's lease when it is free; on success this agent's writes carry its
    /// fence number from now on.
    pub async fn acquire_lease(&self, ttl: Duration) -> StoreResult<LeaseAttempt> {
        let inner = &self.inner;
        let client = self.client().await?;
        let acquired = client
            .query_opt(
                "INSERT INTO hosts (name, agent, fence, acquired_at, expires_at)
                 VALUES ($1, $2, 1, now(), now() + $3::float8 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE
                    SET agent = EXCLUDED.agent, fence = hosts.fence + 1,
                        acquired_at = now(), expires_at = EXCLUDED.expires_at
                  WHERE hosts.expires_at <= now()
                 RETURNING fence",
                &[&inner.host, &inner.agent, &millis(ttl)],
            )
            .await?;
        if let Some(row) = acquired {
            let fence: i64 = row.get(0);
            inner.fence.store(fence, Ordering::Release);
            inner.held.send_replace(true);
            inner.epoch.bump();
            return Ok(LeaseAttempt::Acquired { fence });
        }
        let holder = client
            .query_one(
                "SELECT agent, GREATEST(EXTRACT(EPOCH FROM expires_at - now()), 0)::float8
                   FROM hosts WHERE name = $1",
                &[&inner.host],
            )
            .await?;
        Ok(LeaseAttempt::HeldBy {
            agent: holder.get(0),
            expires_in: Duration::from_secs_f64(holder.get::<_, f64>(1)),
        })
    }

    /// Extends the lease; false when this agent no longer holds it (another took over).
    /// A lease that expired while the database could not be reached is still this agent's
    /// as long as nobody took it: its fence number did not change.
    pub async fn renew_lease(&self, ttl: Duration) -> StoreResult<bool> {
        let inner = &self.inner;
        let fence = inner.fence.load(Ordering::Acquire);
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE hosts SET expires_at = now() + $4::float8 * interval '1 millisecond'
                  WHERE name = $1 AND agent = $2 AND fence = $3",
                &[&inner.host, &inner.agent, &fence, &millis(ttl)],
            )
            .await?;
        if n == 0 {
            inner.fence.store(0, Ordering::Release);
            inner.held.send_replace(false);
        }
        Ok(n > 0)
    }

    /// Gives the lease up at a clean stop, so that a successor need not wait for its TTL.
    pub async fn release_lease(&self) -> StoreResult<()> {
        let inner = &self.inner;
        let fence = inner.fence.swap(0, Ordering::AcqRel);
        inner.held.send_replace(false);
        self.client()
            .await?
            .execute(
                "UPDATE hosts SET expires_at = now() WHERE name = $1 AND agent = $2 AND fence = $3",
                &[&inner.host, &inner.agent, &fence],
            )
            .await?;
        Ok(())
    }

    /// Resolves once this agent holds its host's lease.
    pub async fn until_lease_held(&self) {
        let mut held = self.inner.held.subscribe();
        let _ = held.wait_for(|held| *held).await;
    }

    /// Every host of the fleet: whether its agent holds its lease, and its clusters.
    pub async fn hosts(&self) -> StoreResult<Vec<HostInfo>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT h.name, h.expires_at > now(), h.agent, h.fence, h.expires_at,
                        (SELECT COUNT(*) FROM clusters c WHERE c.host = h.name)
                   FROM hosts h ORDER BY h.name",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| HostInfo {
                name: r.get(0),
                reachable: r.get(1),
                agent: r.get(2),
                fence: r.get(3),
                lease_expires_at: Some(r.get::<_, DateTime<Utc>>(4).into()),
                clusters: r.get(5),
            })
            .collect())
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
