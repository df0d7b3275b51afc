//! Integration tests of the store: the same suite against SQLite (real files) and PostgreSQL
//! (a real server: `warren_testkit::pg`), plus what only one backend has.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use warren_store::postgres::PgStore;
use warren_store::sqlite::{SCHEMA_VERSION, SqliteStore};
use warren_store::{
    Checkpoint, CheckpointKind, NewTask, Store, StoreChange, StoreError, TaskFilter, TaskState,
};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "warren-store-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

/// One test's database, on one backend. [`Db::open`] gives a new handle each time: another
/// connection to the same file, or another node on the same PostgreSQL database.
enum Db {
    Sqlite(Dir),
    Postgres(String),
}

impl Db {
    fn sqlite(name: &str) -> Option<Db> {
        Some(Db::Sqlite(dir(name)))
    }

    fn postgres(name: &str) -> Option<Db> {
        warren_testkit::pg::fresh_database(name).map(Db::Postgres)
    }

    fn open(&self) -> Arc<dyn Store> {
        match self {
            Db::Sqlite(d) => Arc::new(SqliteStore::open(&d.0.join("w.db")).unwrap()),
            Db::Postgres(url) => Arc::new(PgStore::connect(url).unwrap()),
        }
    }
}

/// `both!(name, …)`: each `fn name(db: &Db)` runs once per backend (`name::sqlite`,
/// `name::postgres`).
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                if let Some(db) = super::Db::sqlite(stringify!($name)) {
                    super::$name(&db);
                }
            }
            #[test]
            fn postgres() {
                if let Some(db) = super::Db::postgres(stringify!($name)) {
                    super::$name(&db);
                }
            }
        }
    )*};
}

both!(
    data_and_migrations_survive_reopening,
    agents_are_versioned,
    claims_follow_priority_then_submission_order,
    concurrent_workers_never_double_claim,
    the_lifecycle_is_enforced_and_recorded_as_events,
    expired_leases_are_recovered_with_their_checkpoints,
    a_restarted_worker_releases_its_own_leases_at_once,
    checkpoints_are_gapless_and_never_written_twice,
    events_resume_from_an_id_and_artifacts_round_trip,
    events_written_concurrently_reach_a_tailing_reader_once_each_in_order,
    the_audit_chain_stays_one_chain_under_concurrent_writers,
    plans_are_revised_one_revision_at_a_time,
    approval_rules_are_kept_once,
);

fn task(id: &str, priority: i32) -> NewTask {
    NewTask {
        id: id.into(),
        agent: "coder".into(),
        agent_version: 1,
        goal: format!("goal {id}"),
        priority,
        ..NewTask::default()
    }
}

fn data_and_migrations_survive_reopening(db: &Db) {
    {
        let s = db.open();
        s.put_agent("coder", "name: coder\n").unwrap();
        s.submit(task("t1", 0)).unwrap();
        s.checkpoint(&Checkpoint {
            task: "t1".into(),
            seq: 0,
            kind: CheckpointKind::ModelTurn,
            payload: json!({"text": "hi"}),
        })
        .unwrap();
        // Dropped without any shutdown step, as a killed process would leave it.
    }
    // Opening again runs the migrations again: they are idempotent.
    let s = db.open();
    assert_eq!(s.get_task("t1").unwrap().state, TaskState::Queued);
    assert_eq!(s.checkpoints("t1").unwrap().len(), 1);
    assert_eq!(s.get_agent("coder", None).unwrap().version, 1);
    match db {
        Db::Sqlite(d) => {
            let s = SqliteStore::open(&d.0.join("w.db")).unwrap();
            assert_eq!(s.journal_mode().unwrap(), "wal");
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        }
        Db::Postgres(url) => {
            let s = PgStore::connect(url).unwrap();
            assert_eq!(
                s.schema_version().unwrap(),
                warren_store::postgres::SCHEMA_VERSION
            );
        }
    }
}

fn agents_are_versioned(db: &Db) {
    let s = db.open();
    assert_eq!(s.put_agent("coder", "v1").unwrap().version, 1);
    assert_eq!(s.put_agent("coder", "v2").unwrap().version, 2);
    s.put_agent("reviewer", "r1").unwrap();
    assert_eq!(s.get_agent("coder", None).unwrap().manifest, "v2");
    assert_eq!(s.get_agent("coder", Some(1)).unwrap().manifest, "v1");
    let names: Vec<_> = s
        .list_agents()
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.version))
        .collect();
    assert_eq!(names, vec![("coder".into(), 2), ("reviewer".into(), 1)]);
    s.delete_agent("coder").unwrap();
    assert!(matches!(
        s.get_agent("coder", None),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete_agent("coder"),
        Err(StoreError::NotFound { .. })
    ));
}

fn claims_follow_priority_then_submission_order(db: &Db) {
    let s = db.open();
    for (id, p) in [("low1", 0), ("high", 10), ("low2", 0), ("mid", 5)] {
        s.submit(task(id, p)).unwrap();
    }
    assert!(matches!(
        s.submit(task("mid", 1)),
        Err(StoreError::Exists { .. })
    ));
    let order: Vec<String> =
        std::iter::from_fn(|| s.claim("w", Duration::from_secs(60)).unwrap().map(|t| t.id))
            .collect();
    assert_eq!(order, ["high", "mid", "low1", "low2"]);
    let t = s.get_task("high").unwrap();
    assert_eq!(
        (t.state, t.attempts, t.lease_owner.as_deref()),
        (TaskState::Running, 1, Some("w"))
    );
    assert_eq!(s.count(TaskState::Running).unwrap(), 4);
    assert!(s.claim("w", Duration::from_secs(1)).unwrap().is_none());
}

fn concurrent_workers_never_double_claim(db: &Db) {
    let setup = db.open();
    for i in 0..200 {
        setup.submit(task(&format!("t{i:03}"), i % 3)).unwrap();
    }
    // Four workers, each with its own connection (as separate processes or nodes would have).
    let claimed: Vec<Vec<String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|w| {
                sc.spawn(move || {
                    let s = db.open();
                    std::iter::from_fn(|| {
                        s.claim(&format!("w{w}"), Duration::from_secs(60))
                            .unwrap()
                            .map(|t| t.id)
                    })
                    .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all: Vec<&String> = claimed.iter().flatten().collect();
    let unique: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), 200, "every task claimed");
    assert_eq!(unique.len(), 200, "no task claimed twice");
}

fn the_lifecycle_is_enforced_and_recorded_as_events(db: &Db) {
    let s = db.open();
    s.submit(task("t", 0)).unwrap();
    assert!(matches!(
        s.transition("t", TaskState::Succeeded, None),
        Err(StoreError::InvalidTransition {
            from: TaskState::Queued,
            ..
        })
    ));
    s.claim("w", Duration::from_secs(60)).unwrap();
    s.transition(
        "t",
        TaskState::AwaitingApproval,
        Some("shell needs approval"),
    )
    .unwrap();
    s.transition("t", TaskState::Running, Some("approved"))
        .unwrap();
    let done = s.transition("t", TaskState::Succeeded, None).unwrap();
    assert_eq!(done.lease_owner, None, "a finished task holds no lease");
    assert!(matches!(
        s.transition("t", TaskState::Queued, None),
        Err(StoreError::InvalidTransition { .. })
    ));
    let states: Vec<String> = s
        .events_since(Some("t"), 0, 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "task.state")
        .map(|e| e.payload["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states,
        [
            "queued",
            "running",
            "awaiting_approval",
            "running",
            "succeeded"
        ]
    );
    // Retry after a failure is a recorded move back to the queue.
    s.submit(task("u", 0)).unwrap();
    s.claim("w", Duration::from_secs(60)).unwrap();
    s.transition("u", TaskState::Failed, Some("model error"))
        .unwrap();
    assert_eq!(
        s.transition("u", TaskState::Queued, Some("retry"))
            .unwrap()
            .reason
            .as_deref(),
        Some("retry")
    );
    assert_eq!(
        s.list_tasks(&TaskFilter {
            state: Some(TaskState::Queued),
            ..Default::default()
        })
        .unwrap()
        .len(),
        1
    );
}

fn expired_leases_are_recovered_with_their_checkpoints(db: &Db) {
    let s = db.open();
    s.submit(task("t", 0)).unwrap();
    s.submit(task("u", 0)).unwrap();
    s.claim("dead-worker", Duration::from_millis(1)).unwrap();
    s.claim("live-worker", Duration::from_secs(60)).unwrap();
    s.checkpoint(&Checkpoint {
        task: "t".into(),
        seq: 0,
        kind: CheckpointKind::ModelTurn,
        payload: json!({"turn": 1}),
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(
        s.renew("t", "someone-else", Duration::from_secs(1)),
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(s.recover_expired().unwrap(), ["t"]);
    let t = s.get_task("t").unwrap();
    assert_eq!(
        (t.state, t.attempts, t.lease_owner),
        (TaskState::Queued, 1, None)
    );
    assert_eq!(
        s.checkpoints("t").unwrap().len(),
        1,
        "checkpoints are kept for the resume"
    );
    assert_eq!(
        s.get_task("u").unwrap().state,
        TaskState::Running,
        "a live lease is left alone"
    );
    s.renew("u", "live-worker", Duration::from_secs(60))
        .unwrap();
    let again = s
        .claim("new-worker", Duration::from_secs(60))
        .unwrap()
        .unwrap();
    assert_eq!((again.id.as_str(), again.attempts), ("t", 2));
}

fn a_restarted_worker_releases_its_own_leases_at_once(db: &Db) {
    let s = db.open();
    let mut t = task("mine", 0);
    t.workspace = Some("/srv/project".into());
    s.submit(t).unwrap();
    s.submit(task("theirs", 0)).unwrap();
    s.claim_agent("coder", "node-a", Duration::from_secs(600))
        .unwrap();
    s.claim_agent("coder", "node-b", Duration::from_secs(600))
        .unwrap();
    assert_eq!(s.release_worker("node-a").unwrap(), ["mine"]);
    let t = s.get_task("mine").unwrap();
    assert_eq!(t.state, TaskState::Queued);
    assert_eq!(t.workspace.as_deref(), Some("/srv/project"));
    assert!(t.reason.unwrap_or_default().contains("restarted"));
    assert_eq!(s.get_task("theirs").unwrap().state, TaskState::Running);
    assert!(s.release_worker("node-a").unwrap().is_empty());
}

fn checkpoints_are_gapless_and_never_written_twice(db: &Db) {
    let s = db.open();
    s.submit(task("t", 0)).unwrap();
    let cp = |seq: u64, kind| Checkpoint {
        task: "t".into(),
        seq,
        kind,
        payload: json!({"seq": seq}),
    };
    s.checkpoint(&cp(0, CheckpointKind::ModelTurn)).unwrap();
    s.checkpoint(&cp(1, CheckpointKind::ToolResult)).unwrap();
    assert!(matches!(
        s.checkpoint(&cp(1, CheckpointKind::ToolResult)),
        Err(StoreError::DuplicateCheckpoint { seq: 1, .. })
    ));
    assert!(matches!(
        s.checkpoint(&cp(5, CheckpointKind::ModelTurn)),
        Err(StoreError::CheckpointGap { expected: 2, .. })
    ));
    assert!(matches!(
        s.checkpoint(&Checkpoint {
            task: "nope".into(),
            seq: 0,
            kind: CheckpointKind::ModelTurn,
            payload: json!(null)
        }),
        Err(StoreError::NotFound { .. })
    ));
    let got = s.checkpoints("t").unwrap();
    assert_eq!(
        got.iter().map(|c| (c.seq, c.kind)).collect::<Vec<_>>(),
        [
            (0, CheckpointKind::ModelTurn),
            (1, CheckpointKind::ToolResult)
        ]
    );
    assert_eq!(got[1].payload, json!({"seq": 1}));
    s.put_artifact("t", "result", b"{}").unwrap();
    s.clear_progress("t").unwrap();
    assert!(s.checkpoints("t").unwrap().is_empty());
    assert!(s.get_artifact("t", "result").is_err());
    s.checkpoint(&cp(0, CheckpointKind::ModelTurn)).unwrap();
}

fn events_resume_from_an_id_and_artifacts_round_trip(db: &Db) {
    let s = db.open();
    s.submit(task("t", 0)).unwrap();
    let first = s
        .append_event(Some("t"), "tool.call", &json!({"name": "shell"}))
        .unwrap();
    let second = s.append_event(None, "daemon.started", &json!({})).unwrap();
    assert!(second > first);
    let after: Vec<i64> = s
        .events_since(None, first, 10)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(after, [second]);
    assert_eq!(
        s.events_since(Some("t"), 0, 10).unwrap().len(),
        2,
        "queued + tool.call"
    );
    assert_eq!(s.events_since(None, 0, 1).unwrap().len(), 1, "limit");
    s.put_artifact("t", "diff", b"--- a\n+++ b\n").unwrap();
    s.put_artifact("t", "diff", b"replaced").unwrap();
    assert_eq!(s.get_artifact("t", "diff").unwrap(), b"replaced");
    assert!(matches!(
        s.get_artifact("t", "result"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.put_artifact("missing", "x", b""),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn the_sqlite_audit_log_is_append_only_and_verify_finds_every_kind_of_tampering() {
    use warren_store::audit::GENESIS;
    let d = dir("audit");
    let path = d.0.join("w.db");
    let fresh = |name: &str| {
        let p = d.0.join(name);
        let _ = std::fs::remove_file(&p);
        let s = SqliteStore::open(&p).unwrap();
        for i in 0..6 {
            s.audit_append(Some("t"), "tool.call", &json!({"i": i}))
                .unwrap();
        }
        s.audit_append(None, "daemon.start", &json!({})).unwrap();
        (s, p)
    };
    let s = SqliteStore::open(&path).unwrap();
    let first = s
        .audit_append(Some("t"), "task.submitted", &json!({"goal": "g"}))
        .unwrap();
    assert_eq!((first.seq, first.prev.as_str()), (1, GENESIS));
    let second = s.audit_append(None, "daemon.start", &json!({})).unwrap();
    assert_eq!(second.prev, first.hash);
    let r = s.audit_verify().unwrap();
    assert!(r.problems.is_empty());
    assert_eq!((r.records, r.head), (2, second.hash.clone()));
    assert_eq!(s.audit_records(0, Some("t"), 10).unwrap().len(), 1);

    // The store refuses to change or remove records.
    let raw = rusqlite::Connection::open(&path).unwrap();
    let e = raw
        .execute("UPDATE audit SET data = '{}' WHERE seq = 1", [])
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert!(raw.execute("DELETE FROM audit WHERE seq = 1", []).is_err());

    // Someone who edits the file directly (dropping the triggers) is caught by verify.
    let tamper = |name: &str, sql: &str| {
        let (s, p) = fresh(name);
        let raw = rusqlite::Connection::open(&p).unwrap();
        raw.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        raw.execute_batch(sql).unwrap();
        let r = s.audit_verify().unwrap();
        assert!(!r.problems.is_empty(), "{name}: not detected");
        r
    };
    let m = tamper(
        "modified.db",
        "UPDATE audit SET data = '{\"i\":99}' WHERE seq = 3;",
    );
    assert_eq!(m.problems.len(), 1);
    assert!(m.problems[0].what.contains("modified"), "{m:?}");
    let del = tamper("deleted.db", "DELETE FROM audit WHERE seq = 3;");
    assert!(del.problems.iter().any(|p| p.seq == 4), "{del:?}");
    // Deleted and renumbered to hide the gap.
    tamper(
        "renumbered.db",
        "DELETE FROM audit WHERE seq = 3; UPDATE audit SET seq = seq - 1 WHERE seq > 3;",
    );
    // A record inserted (with a correct-looking hash of its own) between two others.
    tamper(
        "inserted.db",
        "UPDATE audit SET seq = seq + 1000 WHERE seq >= 4; UPDATE audit SET seq = seq - 999 WHERE seq >= 1000; \
         INSERT INTO audit SELECT 4, at_ms, task, kind, '{\"i\":42}', prev, hash FROM audit WHERE seq = 3;",
    );
    tamper(
        "reordered.db",
        "UPDATE audit SET seq = 100 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 100;",
    );
    // The tail: a chain cannot show its own truncation, but the reported head changes.
    let (s, p) = fresh("truncated.db");
    let head = s.audit_verify().unwrap().head;
    let raw = rusqlite::Connection::open(&p).unwrap();
    raw.execute_batch("DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = 7;")
        .unwrap();
    let r = s.audit_verify().unwrap();
    assert!(r.problems.is_empty());
    assert_ne!(r.head, head, "compare the head with a copy kept elsewhere");
}

fn events_written_concurrently_reach_a_tailing_reader_once_each_in_order(db: &Db) {
    // Four writers (their own connections) append while a reader tails by id, as an event
    // stream does. An id that became visible before a smaller one would make the reader skip
    // the smaller one for ever.
    const WRITERS: usize = 4;
    const EACH: usize = 150;
    let setup = db.open();
    setup.submit(task("t", 0)).unwrap();
    let start = setup.events_since(None, 0, 10_000).unwrap().len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let seen = std::thread::scope(|sc| {
        for w in 0..WRITERS {
            let done = &done;
            sc.spawn(move || {
                let s = db.open();
                for i in 0..EACH {
                    s.append_event(Some("t"), "tool.call", &json!({"w": w, "i": i}))
                        .unwrap();
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let reader = sc.spawn(|| {
            let s = db.open();
            let mut after = 0;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst) == WRITERS;
                let batch = s.events_since(None, after, 37).unwrap();
                if batch.is_empty() && finished {
                    return seen;
                }
                for e in batch {
                    after = e.id;
                    seen.push(e);
                }
            }
        });
        reader.join().unwrap()
    });
    let ids: Vec<i64> = seen.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend");
    let mine: HashSet<(i64, i64)> = seen
        .iter()
        .filter(|e| e.kind == "tool.call")
        .map(|e| {
            (
                e.payload["w"].as_i64().unwrap(),
                e.payload["i"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mine.len(),
        WRITERS * EACH,
        "every event reached the tailing reader (it saw {} of {}, {} before)",
        mine.len(),
        WRITERS * EACH,
        start
    );
}

fn the_audit_chain_stays_one_chain_under_concurrent_writers(db: &Db) {
    // Three "nodes", two threads each, appending at once: one chain, no gap, no fork.
    std::thread::scope(|sc| {
        for node in 0..3 {
            sc.spawn(move || {
                let s = db.open();
                std::thread::scope(|sc| {
                    for t in 0..2 {
                        let s = &s;
                        sc.spawn(move || {
                            for i in 0..40 {
                                s.audit_append(
                                    Some("t"),
                                    "tool.call",
                                    &json!({"node": node, "thread": t, "i": i}),
                                )
                                .unwrap();
                            }
                        });
                    }
                });
            });
        }
    });
    let s = db.open();
    let r = s.audit_verify().unwrap();
    assert!(r.problems.is_empty(), "{r:?}");
    assert_eq!(r.records, 240);
    let all = s.audit_records(0, None, 1000).unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=240).collect::<Vec<u64>>()
    );
}

fn plans_are_revised_one_revision_at_a_time(db: &Db) {
    let s = db.open();
    s.submit(task("p", 0)).unwrap();
    assert!(s.get_plan("p").unwrap().is_none());
    assert!(matches!(
        s.put_plan("p", 1, "{}"),
        Err(StoreError::Exists { .. })
    ));
    s.put_plan("p", 0, r#"{"steps": []}"#).unwrap();
    assert!(matches!(
        s.put_plan("p", 0, "{}"),
        Err(StoreError::Exists { .. })
    ));
    let r = s.put_plan("p", 1, r#"{"steps": [1]}"#).unwrap();
    assert_eq!(r.revision, 1);
    let got = s.get_plan("p").unwrap().unwrap();
    assert_eq!((got.revision, got.spec.as_str()), (1, r#"{"steps": [1]}"#));
    // Two writers racing for revision 2: exactly one wins.
    let wins = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                sc.spawn(move || {
                    db.open()
                        .put_plan("p", 2, &format!("{{\"by\": {i}}}"))
                        .is_ok()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count()
    });
    assert_eq!(wins, 1);
    // Children of a task, oldest first.
    let mut child = task("c1", 0);
    child.lineage.parent = Some("p".into());
    child.lineage.step = Some("build".into());
    s.submit(child).unwrap();
    let kids = s
        .list_tasks(&TaskFilter {
            parent: Some("p".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(kids.len(), 1);
    assert_eq!(kids[0].lineage.step.as_deref(), Some("build"));
}

fn approval_rules_are_kept_once(db: &Db) {
    let s = db.open();
    let a = s
        .add_approval_rule("coder", "shell", "cargo test*")
        .unwrap();
    let b = s
        .add_approval_rule("coder", "shell", "cargo test*")
        .unwrap();
    assert_eq!(a.id, b.id, "the same rule twice is one rule");
    s.add_approval_rule("reviewer", "shell", "ls*").unwrap();
    assert_eq!(s.approval_rules(Some("coder")).unwrap().len(), 1);
    assert_eq!(s.approval_rules(None).unwrap().len(), 2);
    s.remove_approval_rule(a.id).unwrap();
    assert!(matches!(
        s.remove_approval_rule(a.id),
        Err(StoreError::NotFound { .. })
    ));
}

/// Run SQL on the test database directly (as someone with the database's password would).
fn pg_raw(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.batch_execute(&sql).await.map_err(|e| {
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned())
            })
        })
    })
    .join()
    .unwrap()
}

#[test]
fn the_postgres_audit_log_is_append_only_and_verify_finds_tampering() {
    let Some(Db::Postgres(url)) = Db::postgres("audit") else {
        return;
    };
    let s = PgStore::connect(&url).unwrap();
    for i in 0..6 {
        s.audit_append(Some("t"), "tool.call", &json!({"i": i}))
            .unwrap();
    }
    for sql in [
        "UPDATE audit SET data = '{}' WHERE seq = 1",
        "DELETE FROM audit WHERE seq = 1",
        "TRUNCATE audit",
    ] {
        let e = pg_raw(&url, sql).unwrap_err();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    // Someone who drops the triggers is caught by verify.
    pg_raw(
        &url,
        "ALTER TABLE audit DISABLE TRIGGER USER; UPDATE audit SET data = '{\"i\":99}' WHERE seq = 3;",
    )
    .unwrap();
    let r = s.audit_verify().unwrap();
    assert_eq!(r.problems.len(), 1, "{r:?}");
    assert!(r.problems[0].what.contains("modified"), "{r:?}");
}

#[test]
fn postgres_nodes_wake_each_other_through_notify() {
    let Some(db) = Db::postgres("notify") else {
        return;
    };
    let (a, b) = (db.open(), db.open());
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    a.on_change(Arc::new(move |c| {
        let _ = tx.lock().unwrap().send(c);
    }));
    // The first calls come when the listener is up (something may have changed before).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {
        assert!(std::time::Instant::now() < deadline);
    }
    b.submit(task("t", 0)).unwrap();
    let mut got = Vec::new();
    while let Ok(c) = rx.recv_timeout(Duration::from_secs(5)) {
        got.push(c);
        if got.contains(&StoreChange::Queue) && got.contains(&StoreChange::Events) {
            break;
        }
    }
    assert!(got.contains(&StoreChange::Queue), "{got:?}");
    assert!(got.contains(&StoreChange::Events), "{got:?}");
    // An event alone (no queue change) wakes streams only.
    while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
    b.append_event(Some("t"), "tool.call", &json!({})).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        StoreChange::Events
    );
}

#[test]
fn a_bad_postgres_address_is_a_clear_error() {
    let e = PgStore::connect("postgres://nobody@127.0.0.1:1/none")
        .err()
        .unwrap();
    assert!(e.to_string().contains("connecting to PostgreSQL"), "{e}");
    let e = PgStore::connect("postgres://[oops").err().unwrap();
    assert!(e.to_string().contains("connection string"), "{e}");
    assert_eq!(
        warren_store::redact_password("postgres://u:secret@db.example/warren"),
        "postgres://u:***@db.example/warren"
    );
}

#[test]
fn a_postgres_store_reconnects_when_the_server_ends_its_connections() {
    let Some(Db::Postgres(url)) = Db::postgres("reconnect") else {
        return;
    };
    let s = PgStore::connect(&url).unwrap();
    s.submit(task("t", 0)).unwrap();
    let (base, db) = url.rsplit_once('/').unwrap();
    // What a server restart or an idle timeout does to every connection of the store.
    let kill = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    );
    for round in 0..3 {
        warren_testkit::pg::run_sql(&format!("{base}/postgres"), &kill).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Every call after it goes through: idle pooled connections are found closed and
        // opened again before a request is written to them.
        for _ in 0..8 {
            assert_eq!(s.get_task("t").unwrap().id, "t", "round {round}");
        }
        s.append_event(Some("t"), "tool.call", &json!({"round": round}))
            .unwrap();
    }
    assert_eq!(
        s.events_since(Some("t"), 0, 100)
            .unwrap()
            .iter()
            .filter(|e| e.kind == "tool.call")
            .count(),
        3
    );
}
