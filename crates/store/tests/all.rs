//! Integration tests of the SQLite store on real files.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use warren_store::sqlite::{SCHEMA_VERSION, SqliteStore};
use warren_store::{Checkpoint, CheckpointKind, NewTask, Store, StoreError, TaskFilter, TaskState};

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

#[test]
fn wal_migrations_and_data_survive_reopening() {
    let d = dir("reopen");
    let path = d.0.join("warren.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.journal_mode().unwrap(), "wal");
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
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
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.schema_version().unwrap(),
        SCHEMA_VERSION,
        "migrations are idempotent"
    );
    assert_eq!(s.get_task("t1").unwrap().state, TaskState::Queued);
    assert_eq!(s.checkpoints("t1").unwrap().len(), 1);
    assert_eq!(s.get_agent("coder", None).unwrap().version, 1);
}

#[test]
fn agents_are_versioned() {
    let d = dir("agents");
    let s = SqliteStore::open(&d.0.join("w.db")).unwrap();
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

#[test]
fn claims_follow_priority_then_submission_order() {
    let d = dir("order");
    let s = SqliteStore::open(&d.0.join("w.db")).unwrap();
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

#[test]
fn concurrent_workers_on_one_file_never_double_claim() {
    let d = dir("concurrent");
    let path = d.0.join("w.db");
    let setup = SqliteStore::open(&path).unwrap();
    for i in 0..200 {
        setup.submit(task(&format!("t{i:03}"), i % 3)).unwrap();
    }
    // Four workers, each with its own connection (as separate processes would have).
    let claimed: Vec<Vec<String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|w| {
                let path = path.clone();
                sc.spawn(move || {
                    let s = SqliteStore::open(&path).unwrap();
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

#[test]
fn the_lifecycle_is_enforced_and_recorded_as_events() {
    let d = dir("lifecycle");
    let s = SqliteStore::open(&d.0.join("w.db")).unwrap();
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

#[test]
fn expired_leases_are_recovered_with_their_checkpoints() {
    let d = dir("leases");
    let s = SqliteStore::open(&d.0.join("w.db")).unwrap();
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

#[test]
fn a_restarted_worker_releases_its_own_leases_at_once() {
    let d = dir("release");
    let s = SqliteStore::open(&d.0.join("w.db")).unwrap();
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

#[test]
fn checkpoints_are_gapless_and_never_written_twice() {
    let d = dir("checkpoints");
    let s = SqliteStore::open(&d.0.join("w.db")).unwrap();
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

#[test]
fn events_resume_from_an_id_and_artifacts_round_trip() {
    let d = dir("events");
    let s = Arc::new(SqliteStore::open(&d.0.join("w.db")).unwrap());
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
fn the_audit_log_is_append_only_and_verify_finds_every_kind_of_tampering() {
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
