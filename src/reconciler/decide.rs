//! The state machine: what to do about one cluster, given what was declared and what was
//! last observed. Pure: no I/O, so every transition is covered by the unit tests below.
//!
//! | desired   | actual                                  | action                    |
//! |-----------|-----------------------------------------|---------------------------|
//! | absent    | anything                                | delete, then drop the row |
//! | present   | running                                 | probe, every resync       |
//! | present   | stopped, starting, stopping             | start                     |
//! | present   | failed after a stop, or after < 2 starts | start                    |
//! | present   | failed after 2 starts in a row          | create (containers gone?) |
//! | present   | unknown, creating, deleting, failed     | create                    |
//! | stopped   | stopped                                 | nothing                   |
//! | stopped   | running, starting, stopping, failed stop/start | stop               |
//! | stopped   | unknown, creating, deleting, failed create | create (then stop)     |
//!
//! A transitional state (`creating`, ...) found while no action runs means the daemon
//! stopped in the middle of that action; the table redoes it. A failure waits for its
//! backoff (`next_attempt_at`) first.

use std::time::{Duration, SystemTime};

use crate::model::{Action, ActualState as A, DesiredState as D};
use crate::store::clusters::ClusterRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run this action now.
    Act(Action),
    /// Nothing to do before this time.
    At(SystemTime),
    /// Converged; nothing to do until the declaration changes.
    Idle,
}

/// How strictly timers are honoured: the daemon waits for backoff and resync; a one-off
/// `reconcile --once` pass acts on everything at once.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub resync: Duration,
    pub honour_timers: bool,
}

/// After this many failed starts in a row kindler creates the cluster instead: its
/// containers may be gone (removed while it was stopped), and a create script copes with a
/// cluster that exists (the default one starts it).
pub const STARTS_BEFORE_CREATE: u32 = 2;

pub fn decide(c: &ClusterRecord, now: SystemTime, policy: Policy) -> Decision {
    if policy.honour_timers {
        if let Some(due) = c.next_attempt_at.map(SystemTime::from) {
            if due > now {
                return Decision::At(due);
            }
        }
    }
    let after_power_action = matches!(c.last_action, Some(Action::Start | Action::Stop));
    let starts_failed = c.last_action == Some(Action::Start) && c.attempts >= STARTS_BEFORE_CREATE;
    let action = match (c.desired, c.actual) {
        (D::Absent, _) => Action::Delete,
        (D::Present, A::Running) => return resync(c, now, policy),
        (D::Present, A::Stopped | A::Starting | A::Stopping) => Action::Start,
        (D::Present, A::Failed) if starts_failed => Action::Create,
        (D::Present, A::Failed) if after_power_action => Action::Start,
        (D::Present, A::Unknown | A::Creating | A::Deleting | A::Failed) => Action::Create,
        (D::Stopped, A::Stopped) => return Decision::Idle,
        (D::Stopped, A::Running | A::Starting | A::Stopping) => Action::Stop,
        (D::Stopped, A::Failed) if after_power_action => Action::Stop,
        (D::Stopped, A::Unknown | A::Creating | A::Deleting | A::Failed) => Action::Create,
    };
    Decision::Act(action)
}

/// A running cluster is probed once per resync period.
fn resync(c: &ClusterRecord, now: SystemTime, policy: Policy) -> Decision {
    if !policy.honour_timers {
        return Decision::Act(Action::Probe);
    }
    match c.last_reconciled_at.map(SystemTime::from) {
        Some(last) if last + policy.resync > now => Decision::At(last + policy.resync),
        _ => Decision::Act(Action::Probe),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterName, ClusterSpec, Provider};

    fn record(desired: D, actual: A, last_action: Option<Action>) -> ClusterRecord {
        ClusterRecord {
            id: 1,
            spec: ClusterSpec {
                name: ClusterName::parse("dev").unwrap(),
                provider: Provider::K3d,
                node_port: 30080,
                pf_port: 19001,
                http_port: 18090,
                https_port: 18443,
                cluster_subnet: None,
                register_portainer: true,
                haproxy_route: true,
                register_argocd: true,
            },
            desired,
            actual,
            created_at: None,
            updated_at: None,
            last_reconciled_at: None,
            last_transition_at: None,
            next_attempt_at: None,
            reconcile_error: None,
            generation: 1,
            observed_generation: 0,
            attempts: 0,
            last_action,
            nodes_ready: None,
            nodes_total: None,
            add_ons: crate::model::AddOnStatus::UNKNOWN,
        }
    }

    const DAEMON: Policy = Policy {
        resync: Duration::from_secs(300),
        honour_timers: true,
    };

    fn act(desired: D, actual: A, last: Option<Action>) -> Decision {
        decide(&record(desired, actual, last), SystemTime::now(), DAEMON)
    }

    #[test]
    fn the_table_holds() {
        use Action::*;
        let cases = [
            (D::Present, A::Unknown, None, Decision::Act(Create)),
            (D::Present, A::Creating, Some(Create), Decision::Act(Create)),
            (D::Present, A::Failed, Some(Create), Decision::Act(Create)),
            (D::Present, A::Failed, Some(Probe), Decision::Act(Create)),
            (D::Present, A::Failed, Some(Start), Decision::Act(Start)),
            (D::Present, A::Stopped, Some(Stop), Decision::Act(Start)),
            (D::Present, A::Stopping, Some(Stop), Decision::Act(Start)),
            (D::Present, A::Deleting, Some(Delete), Decision::Act(Create)),
            (D::Present, A::Running, None, Decision::Act(Probe)),
            (D::Absent, A::Running, None, Decision::Act(Delete)),
            (D::Absent, A::Unknown, None, Decision::Act(Delete)),
            (D::Absent, A::Creating, Some(Create), Decision::Act(Delete)),
            (D::Stopped, A::Running, None, Decision::Act(Stop)),
            (D::Stopped, A::Stopped, Some(Stop), Decision::Idle),
            (D::Stopped, A::Failed, Some(Stop), Decision::Act(Stop)),
            (D::Stopped, A::Unknown, None, Decision::Act(Create)),
        ];
        for (desired, actual, last, want) in cases {
            assert_eq!(
                act(desired, actual, last),
                want,
                "{desired} {actual} {last:?}"
            );
        }
    }

    #[test]
    fn failed_starts_fall_back_to_create() {
        let mut c = record(D::Present, A::Failed, Some(Action::Start));
        c.attempts = 1;
        assert_eq!(
            decide(&c, SystemTime::now(), DAEMON),
            Decision::Act(Action::Start)
        );
        c.attempts = STARTS_BEFORE_CREATE;
        assert_eq!(
            decide(&c, SystemTime::now(), DAEMON),
            Decision::Act(Action::Create)
        );
        // A stopped cluster whose stops fail keeps being stopped, not created.
        let mut c = record(D::Stopped, A::Failed, Some(Action::Stop));
        c.attempts = 5;
        assert_eq!(
            decide(&c, SystemTime::now(), DAEMON),
            Decision::Act(Action::Stop)
        );
    }

    #[test]
    fn running_clusters_are_probed_once_per_resync() {
        let now = SystemTime::now();
        let mut c = record(D::Present, A::Running, Some(Action::Create));
        c.last_reconciled_at = Some((now - Duration::from_secs(10)).into());
        match decide(&c, now, DAEMON) {
            Decision::At(t) => assert!(t > now && t <= now + DAEMON.resync),
            other => panic!("expected a wait, got {other:?}"),
        }
        c.last_reconciled_at = Some((now - Duration::from_secs(301)).into());
        assert_eq!(decide(&c, now, DAEMON), Decision::Act(Action::Probe));
    }

    #[test]
    fn backoff_is_honoured_by_the_daemon_but_not_by_a_one_off_pass() {
        let now = SystemTime::now();
        let mut c = record(D::Present, A::Failed, Some(Action::Create));
        c.next_attempt_at = Some((now + Duration::from_secs(60)).into());
        assert!(matches!(decide(&c, now, DAEMON), Decision::At(_)));
        let once = Policy {
            honour_timers: false,
            ..DAEMON
        };
        assert_eq!(decide(&c, now, once), Decision::Act(Action::Create));
    }
}
