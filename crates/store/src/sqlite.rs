//! The embedded store: one SQLite file in WAL mode.
//!
//! Durability: WAL with `synchronous=NORMAL` survives any crash of the process (a SIGKILLed
//! daemon loses no committed transaction); a power loss may lose the last few. Every
//! read-modify-write runs in a `BEGIN IMMEDIATE` transaction, so several processes sharing the
//! file (a daemon and a CLI, or several workers) never double-claim a task or skip a step.
//! Schema changes are numbered migrations tracked in `PRAGMA user_version`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::audit::AuditRecord;
use crate::now_ms;
use crate::{
    AgentRecord, ApprovalRule, Checkpoint, CheckpointKind, EventRecord, Lineage, NewTask,
    PlanRecord, Store, StoreError, TaskFilter, TaskKind, TaskRecord, TaskState,
};

/// Numbered schema migrations; `MIGRATIONS[i]` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE agents (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    agent_version INTEGER NOT NULL,
    goal TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until_ms INTEGER,
    reason TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX tasks_queue ON tasks (state, priority DESC, created_ms);
CREATE INDEX tasks_agent ON tasks (agent, created_ms);
CREATE TABLE checkpoints (
    task TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (task, seq)
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX events_task ON events (task, id);
CREATE TABLE artifacts (
    task TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (task, name)
);
"#,
    r#"
ALTER TABLE tasks ADD COLUMN workspace TEXT;
"#,
    r#"
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    task TEXT,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_task ON audit (task, seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE approval_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    tool TEXT NOT NULL,
    pattern TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (agent, tool, pattern)
);
"#,
    r#"
ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent';
ALTER TABLE tasks ADD COLUMN parent TEXT;
ALTER TABLE tasks ADD COLUMN step TEXT;
ALTER TABLE tasks ADD COLUMN step_key TEXT;
ALTER TABLE tasks ADD COLUMN bounds TEXT;
CREATE INDEX tasks_parent ON tasks (parent, created_ms);
CREATE TABLE plans (
    task TEXT PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    revision INTEGER NOT NULL,
    spec TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// A store in one SQLite file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

const TASK_COLUMNS: &str = "id, agent, agent_version, goal, priority, state, attempts, lease_owner, lease_until_ms, reason, created_ms, updated_ms, workspace, kind, parent, step, step_key, bounds";

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRecord> {
    let state: String = r.get(5)?;
    Ok(TaskRecord {
        id: r.get(0)?,
        agent: r.get(1)?,
        agent_version: r.get(2)?,
        goal: r.get(3)?,
        priority: r.get(4)?,
        state: TaskState::parse(&state).unwrap_or(TaskState::Interrupted),
        attempts: r.get(6)?,
        lease_owner: r.get(7)?,
        lease_until_ms: r.get(8)?,
        reason: r.get(9)?,
        created_ms: r.get(10)?,
        updated_ms: r.get(11)?,
        workspace: r.get(12)?,
        lineage: Lineage {
            kind: TaskKind::parse(&r.get::<_, String>(13)?),
            parent: r.get(14)?,
            step: r.get(15)?,
            step_key: r.get(16)?,
            bounds: r.get(17)?,
        },
    })
}

fn rule_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalRule> {
    Ok(ApprovalRule {
        id: r.get(0)?,
        agent: r.get(1)?,
        tool: r.get(2)?,
        pattern: r.get(3)?,
        created_ms: r.get(4)?,
    })
}

impl SqliteStore {
    /// Open (creating if needed) and migrate the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(db)?;
        if mode != "wal" {
            return Err(StoreError::Db(format!(
                "could not enable WAL mode (got {mode})"
            )));
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(db)?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            let current: u32 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(db)?;
            if current > SCHEMA_VERSION {
                return Err(StoreError::Db(format!(
                    "the store is at schema version {current}, newer than this build ({SCHEMA_VERSION}); upgrade Warren"
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                tx.execute_batch(sql).map_err(db)?;
                tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                    .map_err(db)?;
            }
            Ok(())
        })
    }

    /// The next queued task (of one agent, or of any), claimed for `worker` under a lease.
    fn claim_where(
        &self,
        agent: Option<&str>,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<TaskRecord>, StoreError> {
        self.write(|tx| {
            let next: Option<String> = tx
                .query_row(
                    "SELECT id FROM tasks WHERE state = 'queued' AND (?1 IS NULL OR agent = ?1) \
                     ORDER BY priority DESC, created_ms, rowid LIMIT 1",
                    [agent],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let Some(id) = next else { return Ok(None) };
            claim_tx(tx, &id, worker, lease).map(Some)
        })
    }

    /// Running tasks matching `cond` (with `?1` bound to `arg`) back to `queued`, so they resume
    /// from their checkpoints. Returns their ids.
    fn requeue_running(
        &self,
        cond: &str,
        arg: &dyn rusqlite::ToSql,
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.write(|tx| {
            let ids: Vec<String> = {
                let mut st = tx
                    .prepare(&format!(
                        "SELECT id FROM tasks WHERE state IN ('running', 'awaiting_approval') AND {cond} ORDER BY rowid"
                    ))
                    .map_err(db)?;
                let rows = st.query_map([arg], |r| r.get(0)).map_err(db)?;
                rows.collect::<Result<_, _>>().map_err(db)?
            };
            for id in &ids {
                tx.execute(
                    "UPDATE tasks SET state = 'queued', lease_owner = NULL, lease_until_ms = NULL, \
                     reason = ?3, updated_ms = ?2 WHERE id = ?1",
                    params![id, now_ms(), reason],
                )
                .map_err(db)?;
                event_tx(
                    tx,
                    Some(id),
                    "task.state",
                    &serde_json::json!({"to": "queued", "reason": reason}),
                )?;
            }
            Ok(ids)
        })
    }

    /// Run `f` in one `BEGIN IMMEDIATE` transaction (the write lock, taken up front, so no
    /// other process can interleave); commit if it succeeds, roll back if it fails.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let out = f(&tx)?;
        tx.commit().map_err(db)?;
        Ok(out)
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db)
    }

    /// The journal mode of the open file (`wal`).
    pub fn journal_mode(&self) -> Result<String, StoreError> {
        self.lock()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(db)
    }
}

fn event_tx(
    tx: &rusqlite::Transaction<'_>,
    task: Option<&str>,
    kind: &str,
    payload: &serde_json::Value,
) -> Result<i64, StoreError> {
    tx.execute(
        "INSERT INTO events (task, kind, payload, at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![task, kind, payload.to_string(), now_ms()],
    )
    .map_err(db)?;
    Ok(tx.last_insert_rowid())
}

/// Move queued task `id` to running under `worker`'s lease, with its `task.state` event.
fn claim_tx(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    worker: &str,
    lease: Duration,
) -> Result<TaskRecord, StoreError> {
    let now = now_ms();
    tx.execute(
        "UPDATE tasks SET state = 'running', attempts = attempts + 1, lease_owner = ?2, lease_until_ms = ?3, updated_ms = ?4 WHERE id = ?1",
        params![id, worker, now + lease.as_millis() as i64, now],
    )
    .map_err(db)?;
    event_tx(
        tx,
        Some(id),
        "task.state",
        &serde_json::json!({"from": "queued", "to": "running", "worker": worker}),
    )?;
    tx.query_row(
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
        [id],
        task_row,
    )
    .map_err(db)
}

/// Insert a queued task, with its `task.state` event.
fn insert_tx(tx: &rusqlite::Transaction<'_>, t: &NewTask) -> Result<TaskRecord, StoreError> {
    let now = now_ms();
    let inserted = tx.execute(
        "INSERT INTO tasks (id, agent, agent_version, goal, priority, state, created_ms, updated_ms, workspace, \
         kind, parent, step, step_key, bounds) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            t.id,
            t.agent,
            t.agent_version,
            t.goal,
            t.priority,
            now,
            t.workspace,
            t.lineage.kind.as_str(),
            t.lineage.parent,
            t.lineage.step,
            t.lineage.step_key,
            t.lineage.bounds
        ],
    );
    match inserted {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(StoreError::Exists {
                what: "task",
                id: t.id.clone(),
            });
        }
        r => r.map_err(db)?,
    };
    event_tx(
        tx,
        Some(&t.id),
        "task.state",
        &serde_json::json!({"to": "queued"}),
    )?;
    tx.query_row(
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
        [&t.id],
        task_row,
    )
    .map_err(db)
}

impl Store for SqliteStore {
    fn put_agent(&self, name: &str, manifest: &str) -> Result<AgentRecord, StoreError> {
        self.write(|tx| {
            // Past every version a task still names, even of a removed agent: a retried task
            // pinned to "v1" must never run a different manifest deployed later as v1.
            let version: u32 = tx
                .query_row(
                    "SELECT COALESCE(MAX(v), 0) + 1 FROM ( \
                       SELECT MAX(version) AS v FROM agents WHERE name = ?1 \
                       UNION ALL SELECT MAX(agent_version) FROM tasks WHERE agent = ?1)",
                    [name],
                    |r| r.get(0),
                )
                .map_err(db)?;
            let created_ms = now_ms();
            tx.execute(
                "INSERT INTO agents (name, version, manifest, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![name, version, manifest, created_ms],
            )
            .map_err(db)?;
            event_tx(
                tx,
                None,
                "agent.deployed",
                &serde_json::json!({"name": name, "version": version}),
            )?;
            Ok(AgentRecord {
                name: name.into(),
                version,
                manifest: manifest.into(),
                created_ms,
            })
        })
    }

    fn get_agent(&self, name: &str, version: Option<u32>) -> Result<AgentRecord, StoreError> {
        let conn = self.lock();
        let row = |r: &rusqlite::Row<'_>| {
            Ok(AgentRecord {
                name: r.get(0)?,
                version: r.get(1)?,
                manifest: r.get(2)?,
                created_ms: r.get(3)?,
            })
        };
        let found = match version {
            Some(v) => conn
                .query_row("SELECT name, version, manifest, created_ms FROM agents WHERE name = ?1 AND version = ?2", params![name, v], row)
                .optional(),
            None => conn
                .query_row(
                    "SELECT name, version, manifest, created_ms FROM agents WHERE name = ?1 ORDER BY version DESC LIMIT 1",
                    [name],
                    row,
                )
                .optional(),
        }
        .map_err(db)?;
        found.ok_or_else(|| StoreError::NotFound {
            what: "agent",
            id: name.into(),
        })
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare(
                "SELECT name, version, manifest, created_ms FROM agents a \
                 WHERE version = (SELECT MAX(version) FROM agents b WHERE b.name = a.name) ORDER BY name",
            )
            .map_err(db)?;
        let rows = st
            .query_map([], |r| {
                Ok(AgentRecord {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    manifest: r.get(2)?,
                    created_ms: r.get(3)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn delete_agent(&self, name: &str) -> Result<(), StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM agents WHERE name = ?1", [name])
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "agent",
                id: name.into(),
            });
        }
        Ok(())
    }

    fn submit(&self, t: NewTask) -> Result<TaskRecord, StoreError> {
        self.write(|tx| insert_tx(tx, &t))
    }

    fn submit_claimed(
        &self,
        t: NewTask,
        worker: &str,
        lease: Duration,
    ) -> Result<TaskRecord, StoreError> {
        self.write(|tx| {
            insert_tx(tx, &t)?;
            claim_tx(tx, &t.id, worker, lease)
        })
    }

    fn get_task(&self, id: &str) -> Result<TaskRecord, StoreError> {
        self.lock()
            .query_row(
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                [id],
                task_row,
            )
            .optional()
            .map_err(db)?
            .ok_or_else(|| StoreError::NotFound {
                what: "task",
                id: id.into(),
            })
    }

    fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        let conn = self.lock();
        if let Some(parent) = &f.parent {
            let mut st = conn
                .prepare(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE parent = ?1 \
                     ORDER BY created_ms, rowid LIMIT ?2"
                ))
                .map_err(db)?;
            let rows = st
                .query_map(params![parent, f.limit.unwrap_or(10_000)], task_row)
                .map_err(db)?;
            return rows.collect::<Result<_, _>>().map_err(db);
        }
        let mut st = conn
            .prepare(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR agent = ?2) \
                 ORDER BY created_ms DESC, rowid DESC LIMIT ?3"
            ))
            .map_err(db)?;
        let rows = st
            .query_map(
                params![
                    f.state.map(TaskState::as_str),
                    f.agent,
                    f.limit.unwrap_or(1000)
                ],
                task_row,
            )
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn count(&self, state: TaskState) -> Result<u64, StoreError> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE state = ?1",
                [state.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(db)
    }

    fn claim(&self, worker: &str, lease: Duration) -> Result<Option<TaskRecord>, StoreError> {
        self.claim_where(None, worker, lease)
    }

    fn claim_agent(
        &self,
        agent: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<TaskRecord>, StoreError> {
        self.claim_where(Some(agent), worker, lease)
    }

    fn queued_agents(&self) -> Result<Vec<(String, i32, i64)>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare("SELECT agent, MAX(priority), MIN(created_ms) FROM tasks WHERE state = 'queued' GROUP BY agent ORDER BY agent")
            .map_err(db)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn renew(&self, id: &str, worker: &str, lease: Duration) -> Result<(), StoreError> {
        let n = self
            .lock()
            .execute(
                "UPDATE tasks SET lease_until_ms = ?3 WHERE id = ?1 AND state IN ('running', 'awaiting_approval') AND lease_owner = ?2",
                params![id, worker, now_ms() + lease.as_millis() as i64],
            )
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::LeaseLost {
                id: id.into(),
                worker: worker.into(),
            });
        }
        Ok(())
    }

    fn transition(
        &self,
        id: &str,
        to: TaskState,
        reason: Option<&str>,
    ) -> Result<TaskRecord, StoreError> {
        self.write(|tx| {
            let from: Option<String> = tx
                .query_row("SELECT state FROM tasks WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(db)?;
            let from = from.ok_or_else(|| StoreError::NotFound {
                what: "task",
                id: id.into(),
            })?;
            let from = TaskState::parse(&from).unwrap_or(TaskState::Interrupted);
            if !from.can_move_to(to) {
                return Err(StoreError::InvalidTransition {
                    id: id.into(),
                    from,
                    to,
                });
            }
            let keep_lease = to == TaskState::Running || to == TaskState::AwaitingApproval;
            // A retry (a finished task queued again) starts a new count of attempts: the
            // bound on attempts is per run, or an interrupted task could never run again.
            let retry = from.is_terminal() && to == TaskState::Queued;
            tx.execute(
                "UPDATE tasks SET state = ?2, reason = ?3, updated_ms = ?4, \
                 lease_owner = CASE WHEN ?5 THEN lease_owner ELSE NULL END, \
                 lease_until_ms = CASE WHEN ?5 THEN lease_until_ms ELSE NULL END, \
                 attempts = CASE WHEN ?6 THEN 0 ELSE attempts END WHERE id = ?1",
                params![id, to.as_str(), reason, now_ms(), keep_lease, retry],
            )
            .map_err(db)?;
            event_tx(
                tx,
                Some(id),
                "task.state",
                &serde_json::json!({"from": from.as_str(), "to": to.as_str(), "reason": reason}),
            )?;
            let rec = tx
                .query_row(
                    &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                    [id],
                    task_row,
                )
                .map_err(db)?;
            Ok(rec)
        })
    }

    fn recover_expired(&self) -> Result<Vec<String>, StoreError> {
        self.requeue_running(
            "lease_until_ms < ?1",
            &now_ms(),
            crate::REASON_LEASE_EXPIRED,
        )
    }

    fn release_worker(&self, worker: &str) -> Result<Vec<String>, StoreError> {
        self.requeue_running("lease_owner = ?1", &worker, crate::REASON_WORKER_RESTARTED)
    }

    fn audit_append(
        &self,
        task: Option<&str>,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<AuditRecord, StoreError> {
        let data = data.to_string();
        self.write(|tx| {
            let (last, prev): (i64, String) = tx
                .query_row(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?
                .unwrap_or((0, crate::audit::GENESIS.to_owned()));
            let seq = last as u64 + 1;
            let at_ms = now_ms();
            let hash = crate::audit::chain_hash(&prev, seq, at_ms, task, kind, &data);
            tx.execute(
                "INSERT INTO audit (seq, at_ms, task, kind, data, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![seq as i64, at_ms, task, kind, data, prev, hash],
            )
            .map_err(db)?;
            Ok(AuditRecord {
                seq,
                at_ms,
                task: task.map(str::to_owned),
                kind: kind.to_owned(),
                data: data.clone(),
                prev,
                hash,
            })
        })
    }

    fn audit_records(
        &self,
        after: u64,
        task: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT seq, at_ms, task, kind, data, prev, hash FROM audit \
                 WHERE seq > ?1 AND (?2 IS NULL OR task = ?2) ORDER BY seq LIMIT ?3",
            )
            .map_err(db)?;
        let rows = st
            .query_map(params![after as i64, task, limit], |r| {
                Ok(AuditRecord {
                    seq: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get(1)?,
                    task: r.get(2)?,
                    kind: r.get(3)?,
                    data: r.get(4)?,
                    prev: r.get(5)?,
                    hash: r.get(6)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn add_approval_rule(
        &self,
        agent: &str,
        tool: &str,
        pattern: &str,
    ) -> Result<ApprovalRule, StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO approval_rules (agent, tool, pattern, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![agent, tool, pattern, now_ms()],
            )
            .map_err(db)?;
            tx.query_row(
                "SELECT id, agent, tool, pattern, created_ms FROM approval_rules WHERE agent = ?1 AND tool = ?2 AND pattern = ?3",
                params![agent, tool, pattern],
                rule_row,
            )
            .map_err(db)
        })
    }

    fn approval_rules(&self, agent: Option<&str>) -> Result<Vec<ApprovalRule>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached(
                "SELECT id, agent, tool, pattern, created_ms FROM approval_rules WHERE ?1 IS NULL OR agent = ?1 ORDER BY id",
            )
            .map_err(db)?;
        let rows = st.query_map([agent], rule_row).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn remove_approval_rule(&self, id: i64) -> Result<(), StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM approval_rules WHERE id = ?1", [id])
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "approval rule",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    fn clear_progress(&self, task: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute("DELETE FROM checkpoints WHERE task = ?1", [task])
                .map_err(db)?;
            tx.execute("DELETE FROM artifacts WHERE task = ?1", [task])
                .map_err(db)?;
            tx.execute("DELETE FROM plans WHERE task = ?1", [task])
                .map_err(db)?;
            Ok(())
        })
    }

    fn checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        self.write(|tx| {
            let exists: bool = tx
                .query_row(
                    "SELECT EXISTS(SELECT 1 FROM tasks WHERE id = ?1)",
                    [&cp.task],
                    |r| r.get(0),
                )
                .map_err(db)?;
            if !exists {
                return Err(StoreError::NotFound {
                    what: "task",
                    id: cp.task.clone(),
                });
            }
            let expected = tx
                .query_row(
                    "SELECT COALESCE(MAX(seq) + 1, 0) FROM checkpoints WHERE task = ?1",
                    [&cp.task],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db)?
                .max(0) as u64;
            crate::check_checkpoint_seq(cp, expected)?;
            tx.execute(
                "INSERT INTO checkpoints (task, seq, kind, payload) VALUES (?1, ?2, ?3, ?4)",
                params![
                    cp.task,
                    cp.seq as i64,
                    cp.kind.as_str(),
                    cp.payload.to_string()
                ],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn checkpoints(&self, task: &str) -> Result<Vec<Checkpoint>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare(
                "SELECT task, seq, kind, payload FROM checkpoints WHERE task = ?1 ORDER BY seq",
            )
            .map_err(db)?;
        let rows = st
            .query_map([task], |r| {
                let kind: String = r.get(2)?;
                let payload: String = r.get(3)?;
                Ok(Checkpoint {
                    task: r.get(0)?,
                    seq: r.get::<_, i64>(1)?.max(0) as u64,
                    kind: CheckpointKind::parse(&kind),
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn append_event(
        &self,
        task: Option<&str>,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        self.write(|tx| {
            let id = event_tx(tx, task, kind, payload)?;
            Ok(id)
        })
    }

    fn events_since(
        &self,
        task: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.lock();
        let mut st = conn
            .prepare("SELECT id, task, kind, payload, at_ms FROM events WHERE id > ?1 AND (?2 IS NULL OR task = ?2) ORDER BY id LIMIT ?3")
            .map_err(db)?;
        let rows = st
            .query_map(params![after, task, limit], |r| {
                let payload: String = r.get(3)?;
                Ok(EventRecord {
                    id: r.get(0)?,
                    task: r.get(1)?,
                    kind: r.get(2)?,
                    payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    at_ms: r.get(4)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn put_plan(&self, task: &str, revision: u32, spec: &str) -> Result<PlanRecord, StoreError> {
        self.write(|tx| {
            let current: Option<u32> = tx
                .query_row("SELECT revision FROM plans WHERE task = ?1", [task], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(db)?;
            let now = now_ms();
            match (current, revision) {
                (None, 0) => tx
                    .execute(
                        "INSERT INTO plans (task, revision, spec, updated_ms) VALUES (?1, 0, ?2, ?3)",
                        params![task, spec, now],
                    )
                    .map_err(db)?,
                (Some(c), r) if r == c + 1 => tx
                    .execute(
                        "UPDATE plans SET revision = ?2, spec = ?3, updated_ms = ?4 WHERE task = ?1",
                        params![task, r, spec, now],
                    )
                    .map_err(db)?,
                _ => {
                    return Err(StoreError::Exists {
                        what: "plan revision",
                        id: format!("{task}@{revision}"),
                    });
                }
            };
            Ok(PlanRecord {
                task: task.to_owned(),
                revision,
                spec: spec.to_owned(),
                updated_ms: now,
            })
        })
    }

    fn get_plan(&self, task: &str) -> Result<Option<PlanRecord>, StoreError> {
        self.lock()
            .query_row(
                "SELECT task, revision, spec, updated_ms FROM plans WHERE task = ?1",
                [task],
                |r| {
                    Ok(PlanRecord {
                        task: r.get(0)?,
                        revision: r.get(1)?,
                        spec: r.get(2)?,
                        updated_ms: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    fn put_artifact(&self, task: &str, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO artifacts (task, name, data) VALUES (?1, ?2, ?3)",
                params![task, name, data],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::NotFound {
                        what: "task",
                        id: task.into(),
                    }
                }
                e => db(e),
            })
            .map(drop)
    }

    fn get_artifact(&self, task: &str, name: &str) -> Result<Vec<u8>, StoreError> {
        self.lock()
            .query_row(
                "SELECT data FROM artifacts WHERE task = ?1 AND name = ?2",
                params![task, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?
            .ok_or_else(|| StoreError::NotFound {
                what: "artifact",
                id: format!("{task}/{name}"),
            })
    }
}
