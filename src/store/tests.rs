//! Both tables' mappings against a real SQLite file, with the values other programs write
//! with the `sqlite3` command in every column; and the store's errors.

use rusqlite::Connection;

use super::clusters::{self, ClusterRecord, Parsed};
use super::runs::{self, RunRecord};
use super::time::Timestamp;
use super::{Store, StoreError};
use crate::model::{Action, ActualState, ArgocdStatus, DesiredState, PortainerStatus, RunOutcome};

/// A store on a file in a temporary directory, and a connection of "another program".
struct Db {
    _dir: tempfile::TempDir,
    store: Store,
    raw: Connection,
    rows: usize,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kindler.db");
        let (store, _) = Store::open(&path).unwrap();
        let raw = Connection::open(&path).unwrap();
        Db {
            _dir: dir,
            store,
            raw,
            rows: 0,
        }
    }

    fn insert(&mut self, table: &str, row: &[(&str, String)]) -> i64 {
        let columns: Vec<&str> = row.iter().map(|(c, _)| *c).collect();
        let values: Vec<&str> = row.iter().map(|(_, v)| v.as_str()).collect();
        self.raw
            .execute_batch(&format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                columns.join(", "),
                values.join(", ")
            ))
            .unwrap_or_else(|e| panic!("{table} {row:?}: {e}"));
        self.rows += 1;
        self.raw.last_insert_rowid()
    }

    /// A row of `clusters` with `value` (SQL) in `column`, read back.
    fn cluster(&mut self, column: &str, value: &str) -> Parsed {
        let mut row = vec![
            ("name", format!("'c{}'", self.rows)),
            ("provider", "'k3d'".to_owned()),
        ];
        set(&mut row, column, value);
        let id = self.insert("clusters", &row);
        self.store
            .sqlite()
            .unwrap()
            .read_blocking(|c| clusters::by_id(c, id))
            .unwrap()
            .expect("the row is there")
    }

    fn valid(&mut self, column: &str, value: &str) -> ClusterRecord {
        self.cluster(column, value)
            .unwrap_or_else(|e| panic!("{column} = {value}: {e}"))
    }

    fn reason(&mut self, column: &str, value: &str) -> String {
        match self.cluster(column, value) {
            Ok(c) => panic!("{column} = {value} was read: {c:?}"),
            Err(invalid) => invalid.reason,
        }
    }

    /// A row of `reconcile_runs` with `value` in `column`, read back as the history reads it.
    fn run(&mut self, column: &str, value: &str) -> RunRecord {
        let n = self.rows + 1;
        let mut row = run_row(n, &format!("r{n}"));
        set(&mut row, column, value);
        self.insert("reconcile_runs", &row);
        self.store
            .sqlite()
            .unwrap()
            .read_blocking(|c| match column {
                "cluster_name" => runs::latest_for_cluster(c, n as i64, &Action::ALL),
                _ => Ok(runs::recent_for_name(c, &format!("r{n}"), 10)?.pop()),
            })
            .unwrap()
            .expect("the run is there")
    }
}

/// A run row as kindler writes it, of cluster `id` named `name`.
fn run_row(id: usize, name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("cluster_id", id.to_string()),
        ("cluster_name", format!("'{name}'")),
        ("action", "'create'".to_owned()),
        ("generation", "1".to_owned()),
        ("attempt", "1".to_owned()),
        ("started_at", "'2026-11-26 10:00:00.000'".to_owned()),
    ]
}

fn set<'a>(row: &mut Vec<(&'a str, String)>, column: &'a str, value: &str) {
    match row.iter_mut().find(|(c, _)| *c == column) {
        Some(slot) => slot.1 = value.to_owned(),
        None => row.push((column, value.to_owned())),
    }
}

fn not_a(column: &str, shown: &str, what: &str) -> String {
    format!("{column} holds {shown}, which is not {what}")
}

#[test]
fn names_and_providers_are_what_they_are_or_the_row_is_reported() {
    let mut db = Db::new();
    assert_eq!(db.valid("name", "42").spec.name.as_str(), "42");
    assert_eq!(db.valid("name", "x'6465'").spec.name.as_str(), "de");
    assert!(db.reason("name", "'bad name'").contains("' '"));
    assert!(db.reason("name", "''").contains("empty"));
    assert_eq!(
        db.reason("provider", "'docker'"),
        "provider \"docker\" is not one of: kind, k3d"
    );
    assert!(db.reason("provider", "1").starts_with("provider \"1\""));
    assert_eq!(db.valid("subnet", "''").spec.cluster_subnet, None);
    assert_eq!(
        db.valid("subnet", "'10.42.0.0/16'")
            .spec
            .cluster_subnet
            .as_deref(),
        Some("10.42.0.0/16")
    );
    // Held to the API's rule: a subnet reaches every script.
    for bad in ["10", "'not-a-subnet'", "X'00ff'", "'10.0.0.0/16; rm -rf /'"] {
        assert!(
            db.reason("subnet", bad).contains("is not an IPv4 CIDR"),
            "{bad}"
        );
    }
}

#[test]
fn ports_are_ports_or_the_default_or_the_row_is_reported() {
    let mut db = Db::new();
    let port = |c: &ClusterRecord, column: &str| match column {
        "node_port" => c.spec.node_port,
        "pf_port" => c.spec.pf_port,
        "http_port" => c.spec.http_port,
        _ => c.spec.https_port,
    };
    for (column, default) in [
        ("node_port", 30080),
        ("pf_port", 19000),
        ("http_port", 18080),
        ("https_port", 18443),
    ] {
        // An unset shell variable writes '', which means the default, as NULL does.
        for unset in ["NULL", "''", "' '"] {
            assert_eq!(port(&db.valid(column, unset), column), default, "{unset}");
        }
        for given in ["19400", "' 19400 '", "19400.0", "'19400'"] {
            assert_eq!(port(&db.valid(column, given), column), 19400, "{given}");
        }
        for (bad, shown) in [
            ("'abc'", "'abc'"),
            ("0", "0"),
            ("-5", "-5"),
            ("70000", "70000"),
            ("19400.5", "19400.5"),
            ("1e300", "1e300"),
            ("x'00'", "x'00' (a blob of 1 byte)"),
        ] {
            assert_eq!(
                db.reason(column, bad),
                not_a(column, shown, "a port (1–65535)")
            );
        }
    }
}

#[test]
fn flags_read_numbers_and_words() {
    let mut db = Db::new();
    let flag = |c: &ClusterRecord, column: &str| match column {
        "register_portainer" => c.spec.register_portainer,
        "haproxy_route" => c.spec.haproxy_route,
        _ => c.spec.register_argocd,
    };
    for column in ["register_portainer", "haproxy_route", "register_argocd"] {
        for (value, want) in [
            ("0", false),
            ("1", true),
            ("2", true),
            ("'false'", false),
            ("'True'", true),
            ("''", true),
        ] {
            assert_eq!(flag(&db.valid(column, value), column), want, "{value}");
        }
        for (bad, shown) in [("'yes'", "'yes'"), ("0.5", "0.5"), ("x'01'", "x'01'")] {
            assert!(
                db.reason(column, bad)
                    .starts_with(&format!("{column} holds {shown}")),
                "{bad}"
            );
        }
    }
}

#[test]
fn states_and_last_action_tolerate_what_they_do_not_know() {
    let mut db = Db::new();
    for unset in ["NULL", "''"] {
        assert_eq!(
            db.valid("desired_state", unset).desired,
            DesiredState::Present
        );
    }
    assert_eq!(
        db.valid("desired_state", "'stopped'").desired,
        DesiredState::Stopped
    );
    assert_eq!(
        db.reason("desired_state", "'gone'"),
        "desired_state \"gone\" is not one of: present, stopped, absent"
    );
    assert!(db.reason("desired_state", "1").starts_with("desired_state"));
    for odd in ["'weird'", "NULL", "5", "x'00'"] {
        assert_eq!(
            db.valid("actual_state", odd).actual,
            ActualState::Unknown,
            "{odd}"
        );
    }
    assert_eq!(
        db.valid("actual_state", "'running'").actual,
        ActualState::Running
    );
    assert_eq!(
        db.valid("last_action", "'stop'").last_action,
        Some(Action::Stop)
    );
    for odd in ["'rebuild'", "3", "x'00'"] {
        assert_eq!(db.valid("last_action", odd).last_action, None, "{odd}");
    }
}

#[test]
fn timestamps_are_read_once_and_what_is_no_time_is_none() {
    let mut db = Db::new();
    let time = |c: &ClusterRecord, column: &str| match column {
        "created_at" => c.created_at,
        "updated_at" => c.updated_at,
        "last_reconciled_at" => c.last_reconciled_at,
        "last_transition_at" => c.last_transition_at,
        _ => c.next_attempt_at,
    };
    for column in [
        "created_at",
        "updated_at",
        "last_reconciled_at",
        "last_transition_at",
        "next_attempt_at",
    ] {
        for (value, want) in [
            ("'2026-11-26 10:00:00'", "2026-11-26T10:00:00.000Z"),
            ("'2026-11-26 10:00:00.123'", "2026-11-26T10:00:00.123Z"),
            ("'2026-11-26T10:00:00.5Z'", "2026-11-26T10:00:00.500Z"),
            ("1764129600", "2025-11-26T04:00:00.000Z"),
            ("'1764129600'", "2025-11-26T04:00:00.000Z"),
            ("1764129600.25", "2025-11-26T04:00:00.250Z"),
        ] {
            let c = db.valid(column, value);
            assert_eq!(time(&c, column).map(Timestamp::iso).as_deref(), Some(want));
        }
        for odd in [
            "'soon'",
            "1e300",
            "-1",
            "1764129600000000",
            "x'00'",
            "''",
            "NULL",
        ] {
            assert_eq!(time(&db.valid(column, odd), column), None, "{odd}");
        }
    }
}

#[test]
fn numbers_kindler_needs_make_the_row_reported_and_the_others_unknown() {
    let mut db = Db::new();
    for column in ["generation", "observed_generation", "attempts"] {
        for (bad, shown) in [
            ("'abc'", "'abc'"),
            ("2.5", "2.5"),
            ("1e300", "1e300"),
            ("''", "''"),
            ("x'00'", "x'00' (a blob of 1 byte)"),
        ] {
            assert_eq!(db.reason(column, bad), not_a(column, shown, "an integer"));
        }
    }
    assert_eq!(db.valid("generation", "'7'").generation, 7);
    assert_eq!(
        db.valid("observed_generation", "7.0").observed_generation,
        7
    );
    assert_eq!(db.valid("attempts", "-3").attempts, 0);
    assert_eq!(db.valid("attempts", "10000000000").attempts, u32::MAX - 1);
    for column in ["nodes_ready", "nodes_total"] {
        let nodes = |c: ClusterRecord| (c.nodes_ready, c.nodes_total);
        for odd in ["'abc'", "1e300", "x'00'", "2.5", "NULL"] {
            assert_eq!(nodes(db.valid(column, odd)), (None, None), "{odd}");
        }
        let c = db.valid(column, "3");
        assert_eq!(
            [c.nodes_ready, c.nodes_total].iter().flatten().sum::<i64>(),
            3
        );
    }
    assert_eq!(
        db.valid("reconcile_error", "7").reconcile_error.as_deref(),
        Some("7")
    );
    assert_eq!(
        db.valid("reconcile_error", "x'6f6b'")
            .reconcile_error
            .as_deref(),
        Some("ok")
    );
    let add_ons = |db: &mut Db, column: &str, value: &str| db.valid(column, value).add_ons;
    assert_eq!(
        add_ons(&mut db, "portainer_status", "'online'").portainer,
        PortainerStatus::Online
    );
    assert_eq!(
        add_ons(&mut db, "argocd_status", "'healthy'").argocd,
        ArgocdStatus::Healthy
    );
    for odd in ["5", "x'00'", "'sideways'"] {
        let a = add_ons(&mut db, "portainer_status", odd);
        assert_eq!(a.portainer, PortainerStatus::Unknown, "{odd}");
        let a = add_ons(&mut db, "argocd_status", odd);
        assert_eq!(a.argocd, ArgocdStatus::Unknown, "{odd}");
    }
}

#[test]
fn no_odd_cluster_row_fails_a_query() {
    let mut db = Db::new();
    for (column, value) in [
        ("pf_port", "'abc'"),
        ("pf_port", "1e300"),
        ("node_port", "x'00'"),
        ("generation", "'abc'"),
        ("desired_state", "7"),
        ("actual_state", "x'00'"),
        ("last_reconciled_at", "'soon'"),
        ("next_attempt_at", "'soon'"),
        ("register_argocd", "'yes'"),
    ] {
        let _ = db.cluster(column, value);
    }
    db.valid("pf_port", "19400");
    // The insert trigger numbers a new row whatever it was given; an update does not.
    db.raw
        .execute_batch("UPDATE clusters SET change_seq = 'abc' WHERE name = 'c0'")
        .unwrap();
    let rows = db.rows;
    let read = db.store.sqlite().unwrap().read_blocking(|c| {
        Ok((
            clusters::list(c)?,
            clusters::schedule_rows(c)?,
            clusters::summary(c)?,
            clusters::odd_change_numbers(c)?,
            clusters::port_holder(c, 19400, false)?,
            clusters::ports_in_use(c, 19000, 19999)?,
        ))
    });
    let (list, schedule, summary, odd, holder, in_use) = read.unwrap();
    assert_eq!(list.len(), rows);
    assert_eq!(list.iter().filter(|p| p.is_ok()).count(), 4, "{list:#?}");
    assert_eq!(schedule.len(), rows);
    assert_eq!(
        summary.by_state.iter().map(|s| s.1).sum::<i64>(),
        rows as i64
    );
    // The earliest retry is no time: it is due now.
    assert_eq!(summary.next_retry, Some(("c7".into(), None)));
    assert_eq!(odd.len(), 1);
    assert_eq!(odd[0].2, "abc");
    assert_eq!(holder.map(|h| h.1), Some("pf_port"));
    assert_eq!(in_use, [19400]);
}

#[test]
fn run_rows_with_odd_values_in_every_column() {
    let mut db = Db::new();
    assert_eq!(db.run("cluster_id", "7").cluster_id, Some(7));
    for odd in ["'abc'", "1e300", "x'00'"] {
        assert_eq!(db.run("cluster_id", odd).cluster_id, None, "{odd}");
    }
    assert_eq!(db.run("cluster_name", "42").cluster_name, "42");
    assert_eq!(db.run("action", "'stop'").action, Action::Stop);
    for odd in ["'rebuild'", "3", "x'00'"] {
        assert_eq!(db.run("action", odd).action, Action::Probe, "{odd}");
    }
    assert_eq!(db.run("generation", "7").generation, Some(7));
    assert_eq!(db.run("attempt", "3").attempt, Some(3));
    for odd in ["'abc'", "2.5", "1e300", "x'00'"] {
        assert_eq!(db.run("generation", odd).generation, None, "{odd}");
        assert_eq!(db.run("attempt", odd).attempt, None, "{odd}");
    }
    for odd in ["-1", "5000000000"] {
        assert_eq!(db.run("attempt", odd).attempt, None, "{odd}");
    }
    assert_eq!(db.run("outcome", "'failed'").outcome, RunOutcome::Failed);
    for odd in ["'exploded'", "7", "x'00'"] {
        assert_eq!(
            db.run("outcome", odd).outcome,
            RunOutcome::Interrupted,
            "{odd}"
        );
    }
    for column in ["started_at", "ended_at"] {
        let time = |r: RunRecord| {
            if column == "started_at" {
                r.started_at
            } else {
                r.ended_at
            }
        };
        let r = db.run(column, "1764129600");
        assert_eq!(
            time(r).map(Timestamp::iso).as_deref(),
            Some("2025-11-26T04:00:00.000Z")
        );
        for odd in ["'soon'", "1e300", "-1", "x'00'"] {
            assert_eq!(time(db.run(column, odd)), None, "{odd}");
        }
    }
    let r = db.run("ended_at", "'2026-11-26 10:00:05.5'");
    assert_eq!(
        r.last_moved().map(Timestamp::iso).as_deref(),
        Some("2026-11-26T10:00:05.500Z")
    );
    assert_eq!(db.run("duration_ms", "250").duration_ms, Some(250));
    for odd in ["'abc'", "1.5", "1e300", "x'00'"] {
        assert_eq!(db.run("duration_ms", odd).duration_ms, None, "{odd}");
    }
    assert_eq!(db.run("exit_code", "69").exit_code, Some(69));
    assert_eq!(db.run("signal", "15").signal, Some(15));
    for odd in ["'TERM'", "4294967296", "1e300", "x'00'"] {
        assert_eq!(db.run("exit_code", odd).exit_code, None, "{odd}");
        assert_eq!(db.run("signal", odd).signal, None, "{odd}");
    }
    assert_eq!(db.run("error", "5").error.as_deref(), Some("5"));
    assert_eq!(db.run("error", "x'6f6b'").error.as_deref(), Some("ok"));
    assert_eq!(db.run("output_tail", "5").output_tail, ["5"]);
    assert_eq!(
        db.run("output_tail", "'a' || char(10) || 'b'").output_tail,
        ["a", "b"]
    );
    assert_eq!(db.run("output_tail", "x'6869'").output_tail, ["hi"]);
}

#[test]
fn odd_run_rows_fail_neither_the_history_nor_the_recovery() {
    let mut db = Db::new();
    for (column, value) in [
        ("cluster_id", "'abc'"),
        ("generation", "'abc'"),
        ("attempt", "1e300"),
        ("started_at", "'soon'"),
        ("exit_code", "x'00'"),
        ("process_tag", "5"),
        ("process_tag", "''"),
        ("outcome", "'exploded'"),
    ] {
        let mut row = run_row(1, "dev");
        set(&mut row, column, value);
        db.insert("reconcile_runs", &row);
    }
    let (history, latest, unfinished) = db
        .store
        .sqlite()
        .unwrap()
        .read_blocking(|c| {
            Ok((
                runs::recent_for_name(c, "dev", 100)?,
                runs::latest_for_name(c, "dev", &[Action::Create])?,
                runs::unfinished(c)?,
            ))
        })
        .unwrap();
    assert_eq!(history.len(), 8);
    assert_eq!(latest.map(|r| r.outcome), Some(RunOutcome::Interrupted));
    assert_eq!(unfinished.len(), 8);
    assert_eq!(unfinished[0].cluster_id, None);
    assert_eq!(unfinished[1].cluster_id, Some(1));
    assert_eq!(unfinished[5].process_tag.as_deref(), Some("5"));
    assert_eq!(
        unfinished[6].process_tag, None,
        "an empty tag names no process"
    );
    // Recovery marks such runs interrupted.
    let tx = db.raw.transaction().unwrap();
    for run in &unfinished {
        runs::mark_interrupted(&tx, run.id, "interrupted").unwrap();
    }
    tx.commit().unwrap();
    let left = db
        .store
        .sqlite()
        .unwrap()
        .read_blocking(runs::unfinished)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn errors_say_what_failed_and_keep_their_cause() {
    use rusqlite::ffi;
    use std::error::Error;
    let sqlite =
        |code| StoreError::from(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None));
    assert_eq!(
        sqlite(ffi::SQLITE_BUSY).to_string(),
        "the database is locked by another program (kindler waited 5s)"
    );
    assert!(sqlite(ffi::SQLITE_FULL)
        .to_string()
        .starts_with("the disk is full"));
    assert!(sqlite(ffi::SQLITE_FULL).source().is_some());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                             applied_at TIMESTAMP NOT NULL);
             INSERT INTO schema_migrations VALUES (99, 'future', '2030-01-01');",
        )
        .unwrap();
    let e = Store::open(&path).err().expect("refused");
    assert!(
        matches!(e, StoreError::NewerSchema { found: 99, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("newer than this kindler knows"),
        "{e}"
    );

    let path = dir.path().join("foreign.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE clusters (id INTEGER PRIMARY KEY, title TEXT)")
        .unwrap();
    let e = Store::open(&path).err().expect("refused");
    assert!(
        matches!(
            e,
            StoreError::NotAdoptable {
                missing: "name",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("(columns: id, title)"), "{e}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let e = Store::open(&file.join("kindler.db"))
        .err()
        .expect("refused");
    assert!(
        matches!(
            e,
            StoreError::Io {
                doing: "create",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.source().is_some());
}
