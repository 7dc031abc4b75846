//! The store's operations against both backends: a real SQLite file and a real PostgreSQL
//! server (an unprivileged instance in a temporary directory, see `testkit::postgres`).
//! Each test runs the same steps on each; what only PostgreSQL has (hosts, leases,
//! fencing, placement) is tested there alone.

use std::time::{Duration, SystemTime};

use kindler::config::PortRange;
use kindler::model::{
    Action, ActualState, ClusterName, ClusterSpec, DesiredState, Provider, RunOutcome,
};
use kindler::store::clusters::{ActionResult, RowUpdate};
use kindler::store::ports::{Ranges, Refusal};
use kindler::store::runs::{NewRun, RunEnd};
use kindler::store::{LeaseAttempt, NewCluster, RunEnding, Store, StoreError};
use kindler::testkit::postgres;

const TTL: Duration = Duration::from_secs(30);

/// A store of each kind, with the lease of host `a` held.
async fn stores() -> (tempfile::TempDir, Vec<(&'static str, Store)>) {
    let dir = tempfile::tempdir().unwrap();
    let (sqlite, _) = Store::open_sqlite(&dir.path().join("k.db"), "a").unwrap();
    let pg = pg_store("a", &postgres::shared().create_db()).await;
    assert_eq!(
        pg.acquire_lease(TTL).await.unwrap(),
        LeaseAttempt::Acquired { fence: 1 }
    );
    (dir, vec![("sqlite", sqlite), ("postgres", pg)])
}

async fn pg_store(host: &str, db: &str) -> Store {
    let url = postgres::shared().url(db);
    Store::open_postgres(&url, None, host).await.unwrap().0
}

fn spec(name: &str, pf: u16) -> ClusterSpec {
    ClusterSpec {
        name: ClusterName::parse(name).unwrap(),
        provider: Provider::K3d,
        node_port: 30080,
        pf_port: pf,
        http_port: pf + 1000,
        https_port: pf + 2000,
        cluster_subnet: None,
        register_portainer: true,
        haproxy_route: false,
        register_argocd: true,
    }
}

fn new_cluster(name: &str, pf: u16, host: Option<&str>) -> NewCluster {
    let range = |first| PortRange {
        first,
        last: first + 99,
    };
    NewCluster {
        spec: spec(name, pf),
        omitted: Vec::new(),
        ranges: Ranges {
            pf: range(19500),
            http: range(20500),
            https: range(21500),
        },
        host: host.map(str::to_owned),
    }
}

fn run(id: i64, name: &str, action: Action) -> NewRun {
    NewRun {
        cluster_id: id,
        cluster_name: name.into(),
        action,
        generation: 1,
        attempt: 1,
        started_at: SystemTime::now(),
        process_tag: format!("tag-{name}"),
    }
}

fn ending(run_id: i64, cluster_id: i64, action: Action) -> RunEnding {
    RunEnding {
        run_id,
        cluster_id,
        action,
        keep: 10,
        end: RunEnd {
            outcome: RunOutcome::Succeeded,
            ended_at: SystemTime::now(),
            duration: Duration::from_millis(12),
            exit_code: Some(0),
            signal: None,
            error: None,
            output_tail: vec!["one".into(), "two".into()],
            pgid: Some(4242),
        },
    }
}

fn settle(actual: ActualState, generation: i64) -> RowUpdate {
    RowUpdate::Settle(ActionResult {
        actual,
        error: None,
        attempts: 0,
        next_attempt_at: None,
        observed_generation: generation,
        probe: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_created_declared_run_and_forgotten_alike_on_both() {
    let (_dir, stores) = stores().await;
    for (kind, store) in stores {
        let created = store
            .create_cluster(new_cluster("dev", 19000, None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(created.host, "a", "{kind}");
        let again = store
            .create_cluster(new_cluster("dev", 19005, None))
            .await
            .unwrap();
        assert_eq!(again.unwrap_err(), Refusal::Exists, "{kind}");
        let taken = store
            .create_cluster(new_cluster("uat", 19000, None))
            .await
            .unwrap();
        assert!(
            matches!(taken, Err(Refusal::PortTaken { port: 19000, ref holder, .. }) if holder == "dev"),
            "{kind}: {taken:?}"
        );

        let (cursor, rows) = store.schedule().await.unwrap();
        assert_eq!(rows.len(), 1, "{kind}");
        let dev = ClusterName::parse("dev").unwrap();
        assert!(
            store.declare(&dev, DesiredState::Stopped).await.unwrap(),
            "{kind}"
        );
        let (top, ids) = store.changed_since(cursor).await.unwrap();
        assert_eq!((top > cursor, ids), (true, vec![created.id]), "{kind}");
        let record = store.by_name(&dev).await.unwrap().unwrap().unwrap();
        assert_eq!(
            (record.desired, record.generation, record.host.unwrap().name),
            (DesiredState::Stopped, 2, "a".to_owned()),
            "{kind}: the declaration bumped the generation"
        );

        let run_id = store
            .begin_run(run(created.id, "dev", Action::Stop))
            .await
            .unwrap();
        assert_eq!(store.unfinished_runs().await.unwrap().len(), 1, "{kind}");
        let recorded = store
            .record_end(ending(run_id, created.id, Action::Stop), |current| {
                assert_eq!(current.actual, ActualState::Stopping);
                settle(ActualState::Stopped, current.generation)
            })
            .await
            .unwrap();
        assert_eq!(
            recorded.before,
            Some((DesiredState::Stopped, ActualState::Stopping)),
            "{kind}"
        );
        assert!(store.unfinished_runs().await.unwrap().is_empty(), "{kind}");
        let (_, history) = store.history(&dev, 10).await.unwrap();
        assert_eq!(history.len(), 1, "{kind}");
        assert_eq!(
            (
                history[0].outcome,
                history[0].output_tail.clone(),
                history[0].exit_code
            ),
            (
                RunOutcome::Succeeded,
                vec!["one".to_owned(), "two".to_owned()],
                Some(0)
            ),
            "{kind}"
        );
        let summary = store.summary().await.unwrap();
        assert_eq!(summary.by_state, vec![(ActualState::Stopped, 1)], "{kind}");
        let lookups = store
            .task_lookups(vec![(dev.clone(), Action::Stop)])
            .await
            .unwrap();
        assert_eq!(
            lookups[0].own.as_ref().map(|r| r.id),
            Some(run_id),
            "{kind}"
        );

        assert_eq!(
            store.forget("dev").await.unwrap(),
            Some(created.id),
            "{kind}"
        );
        assert!(store.by_name(&dev).await.unwrap().is_none(), "{kind}");
        assert!(store.list().await.unwrap().is_empty(), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_ends_removes_the_row_and_an_interrupted_run_is_marked() {
    let (_dir, stores) = stores().await;
    for (kind, store) in stores {
        let c = store
            .create_cluster(new_cluster("gone", 19010, None))
            .await
            .unwrap()
            .unwrap();
        let run_id = store
            .begin_run(run(c.id, "gone", Action::Create))
            .await
            .unwrap();
        store
            .mark_interrupted(
                run_id,
                "interrupted".into(),
                Some((c.id, ActualState::Creating)),
            )
            .await
            .unwrap();
        let row = store.by_id(c.id).await.unwrap().unwrap().unwrap();
        assert_eq!(
            row.reconcile_error.as_deref(),
            Some("interrupted"),
            "{kind}"
        );
        let name = ClusterName::parse("gone").unwrap();
        store.declare(&name, DesiredState::Absent).await.unwrap();
        let run_id = store
            .begin_run(run(c.id, "gone", Action::Delete))
            .await
            .unwrap();
        let recorded = store
            .record_end(ending(run_id, c.id, Action::Delete), |_| RowUpdate::Remove)
            .await
            .unwrap();
        assert!(recorded.removed, "{kind}");
        assert!(store.by_id(c.id).await.unwrap().is_none(), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_places_on_the_least_loaded_live_host_with_ports_per_host() {
    let db = postgres::shared().create_db();
    let (a, b) = (pg_store("a", &db).await, pg_store("b", &db).await);
    for s in [&a, &b] {
        assert!(matches!(
            s.acquire_lease(TTL).await.unwrap(),
            LeaseAttempt::Acquired { .. }
        ));
    }
    let first = a
        .create_cluster(new_cluster("one", 19000, None))
        .await
        .unwrap()
        .unwrap();
    let second = a
        .create_cluster(new_cluster("two", 19000, None))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first.host, second.host, "the fewest clusters first");
    assert_eq!(
        second.spec.pf_port, 19000,
        "host ports are unique per host, not across the fleet"
    );
    let named = b
        .create_cluster(new_cluster("three", 19000, Some(&first.host)))
        .await
        .unwrap();
    assert!(matches!(named, Err(Refusal::PortTaken { .. })), "{named:?}");
    let unknown = b
        .create_cluster(new_cluster("four", 19020, Some("zz")))
        .await
        .unwrap();
    assert!(
        matches!(unknown, Err(Refusal::UnknownHost { .. })),
        "{unknown:?}"
    );
    // Each agent schedules only its own host's clusters; the list is the fleet's.
    assert_eq!(a.schedule().await.unwrap().1.len(), 1);
    assert_eq!(b.schedule().await.unwrap().1.len(), 1);
    assert_eq!(a.list().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fences_an_agent_whose_lease_was_taken_over() {
    let db = postgres::shared().create_db();
    let short = Duration::from_millis(300);
    let old = pg_store("h", &db).await;
    assert_eq!(
        old.acquire_lease(short).await.unwrap(),
        LeaseAttempt::Acquired { fence: 1 }
    );
    let c = old
        .create_cluster(new_cluster("dev", 19000, None))
        .await
        .unwrap()
        .unwrap();
    let run_id = old
        .begin_run(run(c.id, "dev", Action::Create))
        .await
        .unwrap();

    let new = pg_store("h", &db).await;
    match new.acquire_lease(short).await.unwrap() {
        LeaseAttempt::HeldBy { agent, .. } => assert!(agent.starts_with("h/"), "{agent}"),
        other => panic!("a held lease was taken: {other:?}"),
    }
    // Past the TTL (the old agent was paused), the successor takes over.
    let fence = kindler::testkit::poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let attempt = futures_block(new.acquire_lease(TTL)).unwrap();
        match attempt {
            LeaseAttempt::Acquired { fence } => Some(fence),
            LeaseAttempt::HeldBy { .. } => None,
        }
    })
    .expect("the lease expires");
    assert_eq!(fence, 2);
    let refused = old
        .record_end(ending(run_id, c.id, Action::Create), |_| {
            settle(ActualState::Running, 1)
        })
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Fenced {
                held: 1,
                current: Some(2),
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(
        !old.renew_lease(TTL).await.unwrap(),
        "the old agent learns it lost the lease"
    );
    // The successor records the run's end.
    new.record_end(ending(run_id, c.id, Action::Create), |_| {
        settle(ActualState::Running, 1)
    })
    .await
    .unwrap();
}

/// Runs a future to its end on a runtime of its own (inside a blocking poll).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}
