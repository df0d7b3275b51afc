//! The store for several nodes: one PostgreSQL database shared by every daemon.
//!
//! The same [`Store`] contract as [`crate::sqlite`], kept under concurrent writers on other
//! machines:
//!
//! - **Claims** lock the next queued row with `FOR UPDATE SKIP LOCKED`: two nodes never take
//!   the same task, and neither waits for the other's pick. Leases are the same
//!   `lease_until_ms` as SQLite's; any node recovers an expired one (`recover_expired`).
//! - **Event ids follow commit order.** A sequence hands out ids at insert, not at commit, so
//!   with two writers id 8 can become visible before id 7, and a stream that read "after 8"
//!   would never see 7. Every transaction that records an event takes one transaction-scoped
//!   advisory lock just before its first event insert and holds it to commit; the lock is
//!   the last one any transaction takes, so it cannot deadlock with row locks.
//! - **The audit chain** is extended under its own advisory lock (read the head, hash, insert):
//!   one chain, whatever the number of nodes writing to it.
//! - **Wake-ups.** A transaction that queues a task runs `NOTIFY warren_queue`, one that records
//!   an event `NOTIFY warren_events`; every node `LISTEN`s on a connection of its own and
//!   calls the callbacks given to [`Store::on_change`], so a task submitted to one node starts
//!   on an idle other within a scheduling quantum, and event streams on any node follow tasks
//!   running on any other.
//! - **Migrations** are numbered like SQLite's, tracked in `warren_schema`, and applied in one
//!   transaction under an advisory lock (several nodes starting at once migrate once).
//!
//! The driver is `tokio-postgres`. Store calls are synchronous (the trait is, like rusqlite's
//! API), so the connections live on a runtime thread of their own and each call waits for its
//! futures with a plain executor — usable from inside or outside tokio. Connections that drop
//! (a restarted server) are re-opened on next use. No TLS: reach the server over a unix socket
//! or a trusted network (a TLS connector is a small addition when needed).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use std::cell::RefCell;
use std::collections::HashMap;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error as PgError, GenericClient, Row, Statement, Transaction};

use crate::pgwire::{self, Link, drive};

use crate::audit::AuditRecord;
use crate::now_ms;
use crate::{
    AgentRecord, ApprovalRule, Checkpoint, CheckpointKind, EventRecord, Lineage, NewTask,
    PlanRecord, Store, StoreChange, StoreError, TaskFilter, TaskKind, TaskRecord, TaskState,
};

/// Numbered schema migrations; `MIGRATIONS[i]` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE agents (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE tasks (
    seq BIGSERIAL NOT NULL,
    id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    agent_version INTEGER NOT NULL,
    goal TEXT NOT NULL,
    priority INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until_ms BIGINT,
    reason TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    workspace TEXT,
    kind TEXT NOT NULL DEFAULT 'agent',
    parent TEXT,
    step TEXT,
    step_key TEXT,
    bounds TEXT
);
CREATE INDEX tasks_queue ON tasks (priority DESC, created_ms, seq) WHERE state = 'queued';
CREATE INDEX tasks_state ON tasks (state, created_ms);
CREATE INDEX tasks_agent ON tasks (agent, created_ms);
CREATE INDEX tasks_parent ON tasks (parent, created_ms);
CREATE INDEX tasks_lease ON tasks (lease_until_ms) WHERE state IN ('running', 'awaiting_approval');
CREATE TABLE checkpoints (
    task TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (task, seq)
);
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    task TEXT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX events_task ON events (task, id);
CREATE TABLE artifacts (
    task TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (task, name)
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    task TEXT,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_task ON audit (task, seq);
CREATE FUNCTION warren_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION warren_audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION warren_audit_append_only();
CREATE TABLE approval_rules (
    id BIGSERIAL PRIMARY KEY,
    agent TEXT NOT NULL,
    tool TEXT NOT NULL,
    pattern TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (agent, tool, pattern)
);
CREATE TABLE plans (
    task TEXT PRIMARY KEY REFERENCES tasks(id) ON DELETE CASCADE,
    revision INTEGER NOT NULL,
    spec TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
"#];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Advisory lock keys (one namespace: the first 8 bytes of "warren" + a role).
const LOCK_MIGRATE: i64 = 0x5741_5252_454e_0001;
const LOCK_EVENTS: i64 = 0x5741_5252_454e_0002;
const LOCK_AUDIT: i64 = 0x5741_5252_454e_0003;
const LOCK_AGENTS: i64 = 0x5741_5252_454e_0004;

/// Notification channels.
const CHANNEL_QUEUE: &str = "warren_queue";
const CHANNEL_EVENTS: &str = "warren_events";

/// Connections per store (per node): enough for the scheduler, the running tasks' checkpoints
/// and the API at once; each is a server process, so not more.
const POOL: usize = 4;

type Watcher = Arc<dyn Fn(StoreChange) + Send + Sync>;

/// A store in a PostgreSQL database.
pub struct PgStore {
    config: tokio_postgres::Config,
    /// Ends the listening thread when the store is dropped.
    stop: Arc<AtomicBool>,
    pool: Vec<Mutex<Pooled>>,
    next: AtomicUsize,
    watchers: Arc<Mutex<Vec<Watcher>>>,
    listening: Mutex<bool>,
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Db(format!("{} ({})", d.message(), d.code().code())),
        None => StoreError::Db(e.to_string()),
    }
}

fn is(e: &tokio_postgres::Error, state: &SqlState) -> bool {
    e.code() == Some(state)
}

/// `in_tx!(self, |tx| { … })`: run the body in one transaction of a pooled connection; commit
/// if it returns `Ok`, roll back (the transaction dropped) if it fails.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:block) => {{
        let mut guard = $store.conn()?;
        let pooled = &mut *guard;
        let Link {
            client,
            conn,
            fd,
            write_blocked,
        } = &mut pooled.link;
        let stmts = &pooled.stmts;
        drive(conn, *fd, write_blocked, async {
            let raw = client.transaction().await.map_err(pg)?;
            let $tx = Db { c: &raw, stmts };
            let out: Result<_, StoreError> = async { $body }.await;
            // Ended here, on the server, before the call returns: an idle connection must not
            // keep a transaction (and its row locks) open until its next use.
            match out {
                Ok(v) => {
                    raw.commit().await.map_err(pg)?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = raw.rollback().await;
                    Err(e)
                }
            }
        })
    }};
}

/// `on_conn!(self, |c| { … })`: run the body on a pooled connection, outside a transaction.
macro_rules! on_conn {
    ($store:expr, |$c:ident| $body:block) => {{
        let mut guard = $store.conn()?;
        let pooled = &mut *guard;
        let Link {
            client,
            conn,
            fd,
            write_blocked,
        } = &mut pooled.link;
        let stmts = &pooled.stmts;
        drive(conn, *fd, write_blocked, async {
            let $c = Db { c: &*client, stmts };
            let $c = &$c;
            let out: Result<_, StoreError> = async { $body }.await;
            out
        })
    }};
}

const TASK_COLUMNS: &str = "id, agent, agent_version, goal, priority, state, attempts, lease_owner, lease_until_ms, reason, created_ms, updated_ms, workspace, kind, parent, step, step_key, bounds";

fn task_row(r: &Row) -> TaskRecord {
    let state: String = r.get(5);
    let kind: String = r.get(13);
    TaskRecord {
        id: r.get(0),
        agent: r.get(1),
        agent_version: r.get::<_, i32>(2).max(0) as u32,
        goal: r.get(3),
        priority: r.get(4),
        state: TaskState::parse(&state).unwrap_or(TaskState::Interrupted),
        attempts: r.get::<_, i32>(6).max(0) as u32,
        lease_owner: r.get(7),
        lease_until_ms: r.get(8),
        reason: r.get(9),
        created_ms: r.get(10),
        updated_ms: r.get(11),
        workspace: r.get(12),
        lineage: Lineage {
            kind: TaskKind::parse(&kind),
            parent: r.get(14),
            step: r.get(15),
            step_key: r.get(16),
            bounds: r.get(17),
        },
    }
}

fn agent_row(r: &Row) -> AgentRecord {
    AgentRecord {
        name: r.get(0),
        version: r.get::<_, i32>(1).max(0) as u32,
        manifest: r.get(2),
        created_ms: r.get(3),
    }
}

fn rule_row(r: &Row) -> ApprovalRule {
    ApprovalRule {
        id: r.get(0),
        agent: r.get(1),
        tool: r.get(2),
        pattern: r.get(3),
        created_ms: r.get(4),
    }
}

/// `col = $n` when filtering by a value, else `$n::text IS NULL` (true, and keeps the
/// parameter typed): one statement text per case, because a prepared statement's generic plan
/// cannot drop `($n IS NULL OR col = $n)` and then never uses the column's index.
fn filter(col: &str, n: u8, by: bool) -> String {
    if by {
        format!("{col} = ${n}")
    } else {
        format!("${n}::text IS NULL")
    }
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Record an event in `tx`: takes the events lock (held to commit, so ids become visible in
/// order) and notifies the other nodes at commit.
async fn event_tx(
    tx: &Db<'_, Transaction<'_>>,
    task: Option<&str>,
    kind: &str,
    payload: &serde_json::Value,
) -> Result<i64, StoreError> {
    // One statement: the lock (before the id is drawn), the notification, the insert.
    let row = tx
        .query_one(
            "WITH l AS (SELECT pg_advisory_xact_lock($1::bigint)), \
                  n AS (SELECT pg_notify('warren_events', '')) \
             INSERT INTO events (task, kind, payload, at_ms) \
             SELECT $2::text, $3::text, $4::text, $5::bigint FROM l, n RETURNING id",
            &[&LOCK_EVENTS, &task, &kind, &payload.to_string(), &now_ms()],
        )
        .await
        .map_err(pg)?;
    Ok(row.get(0))
}

async fn notify_queue(tx: &Db<'_, Transaction<'_>>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify('warren_queue', '')", &[])
        .await
        .map_err(pg)
        .map(drop)
}

async fn get_task_in<C: GenericClient + Sync>(
    c: &Db<'_, C>,
    id: &str,
) -> Result<TaskRecord, StoreError> {
    c.query_opt(
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"),
        &[&id],
    )
    .await
    .map_err(pg)?
    .map(|r| task_row(&r))
    .ok_or_else(|| StoreError::NotFound {
        what: "task",
        id: id.into(),
    })
}

/// Move queued task `id` (locked by the caller) to running under `worker`'s lease.
async fn claim_tx(
    tx: &Db<'_, Transaction<'_>>,
    id: &str,
    worker: &str,
    lease: Duration,
) -> Result<TaskRecord, StoreError> {
    let now = now_ms();
    let row = tx
        .query_one(
            &format!(
                "UPDATE tasks SET state = 'running', attempts = attempts + 1, lease_owner = $2, \
                 lease_until_ms = $3, updated_ms = $4 WHERE id = $1 RETURNING {TASK_COLUMNS}"
            ),
            &[&id, &worker, &(now + lease_ms(lease)), &now],
        )
        .await
        .map_err(pg)?;
    event_tx(
        tx,
        Some(id),
        "task.state",
        &serde_json::json!({"from": "queued", "to": "running", "worker": worker}),
    )
    .await?;
    Ok(task_row(&row))
}

/// Insert a queued task, with its `task.state` event.
async fn insert_tx(tx: &Db<'_, Transaction<'_>>, t: &NewTask) -> Result<TaskRecord, StoreError> {
    let now = now_ms();
    let version = i32::try_from(t.agent_version).unwrap_or(i32::MAX);
    let inserted = tx
        .query_opt(
            &format!(
                "INSERT INTO tasks (id, agent, agent_version, goal, priority, state, created_ms, \
                 updated_ms, workspace, kind, parent, step, step_key, bounds) \
                 VALUES ($1, $2, $3, $4, $5, 'queued', $6, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (id) DO NOTHING RETURNING {TASK_COLUMNS}"
            ),
            &[
                &t.id,
                &t.agent,
                &version,
                &t.goal,
                &t.priority,
                &now,
                &t.workspace,
                &t.lineage.kind.as_str(),
                &t.lineage.parent,
                &t.lineage.step,
                &t.lineage.step_key,
                &t.lineage.bounds,
            ],
        )
        .await;
    // No row returned: the id was taken.
    let row = inserted.map_err(pg)?.ok_or_else(|| StoreError::Exists {
        what: "task",
        id: t.id.clone(),
    })?;
    notify_queue(tx).await?;
    event_tx(
        tx,
        Some(&t.id),
        "task.state",
        &serde_json::json!({"to": "queued"}),
    )
    .await?;
    Ok(task_row(&row))
}

impl PgStore {
    /// Connect to the database named by `config` (a `postgres://` URL or `key=value` pairs, as
    /// libpq takes them) and bring its schema to this build's version.
    pub fn connect(config: &str) -> Result<Self, StoreError> {
        let config = config
            .parse::<tokio_postgres::Config>()
            .map_err(|e| StoreError::Db(format!("the PostgreSQL connection string: {e}")))?;
        let pool = (0..POOL)
            .map(|_| open(&config).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let store = PgStore {
            config,
            stop: Arc::new(AtomicBool::new(false)),
            pool,
            next: AtomicUsize::new(0),
            watchers: Arc::new(Mutex::new(Vec::new())),
            listening: Mutex::new(false),
        };
        store.migrate()?;
        Ok(store)
    }

    /// A connection of the pool (re-opened if the server dropped it).
    fn conn(&self) -> Result<MutexGuard<'_, Pooled>, StoreError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // A free one if there is, else wait for ours.
        let mut guard = (0..POOL)
            .find_map(|i| self.pool[(start + i) % POOL].try_lock().ok())
            .unwrap_or_else(|| {
                self.pool[start % POOL]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            });
        if guard.link.broken() {
            *guard = open(&self.config)?;
        }
        Ok(guard)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        in_tx!(self, |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE])
                .await
                .map_err(pg)?;
            tx.batch_execute("CREATE TABLE IF NOT EXISTS warren_schema (version INTEGER NOT NULL)")
                .await
                .map_err(pg)?;
            let current: i32 = match tx
                .query_opt("SELECT version FROM warren_schema", &[])
                .await
                .map_err(pg)?
            {
                Some(r) => r.get(0),
                None => {
                    tx.execute("INSERT INTO warren_schema (version) VALUES (0)", &[])
                        .await
                        .map_err(pg)?;
                    0
                }
            };
            let current = current.max(0) as u32;
            if current > SCHEMA_VERSION {
                return Err(StoreError::Db(format!(
                    "the store is at schema version {current}, newer than this build ({SCHEMA_VERSION}); upgrade Warren"
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                tx.batch_execute(sql).await.map_err(pg)?;
                tx.execute("UPDATE warren_schema SET version = $1", &[&(i as i32 + 1)])
                    .await
                    .map_err(pg)?;
            }
            Ok(())
        })
    }

    /// The schema version of the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        on_conn!(self, |c| {
            let r = c
                .query_one("SELECT version FROM warren_schema", &[])
                .await
                .map_err(pg)?;
            Ok(r.get::<_, i32>(0).max(0) as u32)
        })
    }

    /// The next queued task (of one agent, or of any), claimed for `worker` under a lease.
    fn claim_where(
        &self,
        agent: Option<&str>,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let now = now_ms();
        in_tx!(self, |tx| {
            // One statement: pick the next queued row no other node holds, and take it.
            // (One text per case: with `($1 IS NULL OR agent = $1)` the generic plan sorted
            // every queued row on each claim, 3× slower.)
            let which = filter("agent", 1, agent.is_some());
            let row = tx
                .query_opt(
                    &format!(
                        "WITH next AS (SELECT id AS next_id FROM tasks \
                           WHERE state = 'queued' AND {which} \
                           ORDER BY priority DESC, created_ms, seq LIMIT 1 FOR UPDATE SKIP LOCKED) \
                         UPDATE tasks SET state = 'running', attempts = attempts + 1, \
                           lease_owner = $2, lease_until_ms = $3, updated_ms = $4 \
                         FROM next WHERE id = next.next_id RETURNING {TASK_COLUMNS}"
                    ),
                    &[&agent, &worker, &(now + lease_ms(lease)), &now],
                )
                .await
                .map_err(pg)?;
            let Some(row) = row else {
                return Ok(None);
            };
            let t = task_row(&row);
            event_tx(
                &tx,
                Some(&t.id),
                "task.state",
                &serde_json::json!({"from": "queued", "to": "running", "worker": worker}),
            )
            .await?;
            Ok(Some(t))
        })
    }

    /// Running tasks matching `cond` (with `$1` bound to `arg`) back to `queued`, so they resume
    /// from their checkpoints. Rows another node holds locked right now are left to it.
    fn requeue_running(
        &self,
        cond: &str,
        arg: &(dyn tokio_postgres::types::ToSql + Sync),
        reason: &str,
    ) -> Result<Vec<String>, StoreError> {
        in_tx!(self, |tx| {
            let rows = tx
                .query(
                    &format!(
                        "UPDATE tasks SET state = 'queued', lease_owner = NULL, lease_until_ms = NULL, \
                         reason = $2, updated_ms = $3 WHERE id IN ( \
                           SELECT id FROM tasks WHERE state IN ('running', 'awaiting_approval') \
                           AND {cond} ORDER BY seq FOR UPDATE SKIP LOCKED) \
                         RETURNING id, seq"
                    ),
                    &[arg, &reason, &now_ms()],
                )
                .await
                .map_err(pg)?;
            let mut ids: Vec<(i64, String)> = rows.iter().map(|r| (r.get(1), r.get(0))).collect();
            ids.sort();
            if !ids.is_empty() {
                notify_queue(&tx).await?;
            }
            for (_, id) in &ids {
                event_tx(
                    &tx,
                    Some(id),
                    "task.state",
                    &serde_json::json!({"to": "queued", "reason": reason}),
                )
                .await?;
            }
            Ok(ids.into_iter().map(|(_, id)| id).collect())
        })
    }

    /// Start the node's listening connection (once), on a thread of its own: notifications
    /// call the watchers. A lost connection is opened again, and the watchers called, since
    /// something may have changed meanwhile.
    fn listen(&self) {
        let mut started = self.listening.lock().unwrap_or_else(|p| p.into_inner());
        if *started {
            return;
        }
        *started = true;
        let config = self.config.clone();
        let watchers = Arc::clone(&self.watchers);
        let stop = Arc::clone(&self.stop);
        let call = move |change: StoreChange| {
            let ws: Vec<Watcher> = watchers.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for w in ws {
                w(change);
            }
        };
        let spawned = std::thread::Builder::new()
            .name("warren-pg-listen".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut link) = pgwire::connect(&config) {
                        let Link {
                            client,
                            conn,
                            fd,
                            write_blocked,
                        } = &mut link;
                        let listened = drive(
                            conn,
                            *fd,
                            write_blocked,
                            client.batch_execute(&format!(
                                "LISTEN {CHANNEL_QUEUE}; LISTEN {CHANNEL_EVENTS}"
                            )),
                        );
                        if listened.is_ok() {
                            call(StoreChange::Queue);
                            call(StoreChange::Events);
                            while !stop.load(Ordering::Relaxed) {
                                let Ok(channels) = link.notifications() else {
                                    break;
                                };
                                let queue = channels.iter().any(|c| c == CHANNEL_QUEUE);
                                if queue {
                                    call(StoreChange::Queue);
                                }
                                if channels.iter().any(|c| c != CHANNEL_QUEUE) || queue {
                                    call(StoreChange::Events);
                                }
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
        if spawned.is_err() {
            *started = false;
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A pooled connection and the statements prepared on it.
struct Pooled {
    link: Link,
    stmts: RefCell<HashMap<String, Statement>>,
}

impl Pooled {
    fn new(link: Link) -> Self {
        Pooled {
            link,
            stmts: RefCell::new(HashMap::new()),
        }
    }
}

/// Queries through a connection's statement cache: each SQL text is parsed once per
/// connection, then every call is one round trip (an unprepared query costs two).
struct Db<'a, C> {
    c: &'a C,
    stmts: &'a RefCell<HashMap<String, Statement>>,
}

impl<C: GenericClient + Sync> Db<'_, C> {
    async fn st(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let cached = self.stmts.borrow().get(sql).cloned();
        if let Some(s) = cached {
            return Ok(s);
        }
        let s = self.c.prepare(sql).await?;
        self.stmts.borrow_mut().insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    async fn query(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, PgError> {
        let s = self.st(sql).await?;
        self.c.query(&s, p).await
    }

    async fn query_one(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Row, PgError> {
        let s = self.st(sql).await?;
        self.c.query_one(&s, p).await
    }

    async fn query_opt(
        &self,
        sql: &str,
        p: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, PgError> {
        let s = self.st(sql).await?;
        self.c.query_opt(&s, p).await
    }

    async fn execute(&self, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<u64, PgError> {
        let s = self.st(sql).await?;
        self.c.execute(&s, p).await
    }

    async fn batch_execute(&self, sql: &str) -> Result<(), PgError> {
        self.c.batch_execute(sql).await
    }
}

/// Open a pooled connection.
fn open(config: &tokio_postgres::Config) -> Result<Pooled, StoreError> {
    pgwire::connect(config)
        .map(Pooled::new)
        .map_err(|e| StoreError::Db(format!("connecting to PostgreSQL: {e}")))
}

impl Store for PgStore {
    fn put_agent(&self, name: &str, manifest: &str) -> Result<AgentRecord, StoreError> {
        in_tx!(self, |tx| {
            // Versions of one name are numbered under a lock: two nodes deploying at once get
            // 3 and 4, not 3 twice.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&((LOCK_AGENTS & 0x7fff_ffff) as i32), &name],
            )
            .await
            .map_err(pg)?;
            // Past every version a task still names, even of a removed agent.
            let version: i32 = tx
                .query_one(
                    "SELECT COALESCE(GREATEST( \
                       (SELECT MAX(version) FROM agents WHERE name = $1), \
                       (SELECT MAX(agent_version) FROM tasks WHERE agent = $1)), 0) + 1",
                    &[&name],
                )
                .await
                .map_err(pg)?
                .get(0);
            let created_ms = now_ms();
            tx.execute(
                "INSERT INTO agents (name, version, manifest, created_ms) VALUES ($1, $2, $3, $4)",
                &[&name, &version, &manifest, &created_ms],
            )
            .await
            .map_err(pg)?;
            event_tx(
                &tx,
                None,
                "agent.deployed",
                &serde_json::json!({"name": name, "version": version}),
            )
            .await?;
            Ok(AgentRecord {
                name: name.into(),
                version: version.max(0) as u32,
                manifest: manifest.into(),
                created_ms,
            })
        })
    }

    fn get_agent(&self, name: &str, version: Option<u32>) -> Result<AgentRecord, StoreError> {
        let version = version.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
        let found = on_conn!(self, |c| {
            c.query_opt(
                &format!(
                    "SELECT name, version, manifest, created_ms FROM agents \
                     WHERE name = $1 AND {} ORDER BY version DESC LIMIT 1",
                    if version.is_some() {
                        "version = $2"
                    } else {
                        "$2::integer IS NULL"
                    }
                ),
                &[&name, &version],
            )
            .await
            .map_err(pg)
        })?;
        found
            .map(|r| agent_row(&r))
            .ok_or_else(|| StoreError::NotFound {
                what: "agent",
                id: name.into(),
            })
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        on_conn!(self, |c| {
            let rows = c
                .query(
                    "SELECT DISTINCT ON (name) name, version, manifest, created_ms FROM agents \
                     ORDER BY name, version DESC",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(agent_row).collect())
        })
    }

    fn delete_agent(&self, name: &str) -> Result<(), StoreError> {
        let n = on_conn!(self, |c| {
            c.execute("DELETE FROM agents WHERE name = $1", &[&name])
                .await
                .map_err(pg)
        })?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "agent",
                id: name.into(),
            });
        }
        Ok(())
    }

    fn submit(&self, t: NewTask) -> Result<TaskRecord, StoreError> {
        in_tx!(self, |tx| { insert_tx(&tx, &t).await })
    }

    fn submit_claimed(
        &self,
        t: NewTask,
        worker: &str,
        lease: Duration,
    ) -> Result<TaskRecord, StoreError> {
        in_tx!(self, |tx| {
            insert_tx(&tx, &t).await?;
            claim_tx(&tx, &t.id, worker, lease).await
        })
    }

    fn get_task(&self, id: &str) -> Result<TaskRecord, StoreError> {
        on_conn!(self, |c| { get_task_in(c, id).await })
    }

    fn list_tasks(&self, f: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
        on_conn!(self, |c| {
            let rows = if let Some(parent) = &f.parent {
                let limit = i64::from(f.limit.unwrap_or(10_000));
                c.query(
                    &format!(
                        "SELECT {TASK_COLUMNS} FROM tasks WHERE parent = $1 \
                         ORDER BY created_ms, seq LIMIT $2"
                    ),
                    &[parent, &limit],
                )
                .await
            } else {
                let limit = i64::from(f.limit.unwrap_or(1000));
                c.query(
                    &format!(
                        "SELECT {TASK_COLUMNS} FROM tasks WHERE {} AND {} \
                         ORDER BY created_ms DESC, seq DESC LIMIT $3",
                        filter("state", 1, f.state.is_some()),
                        filter("agent", 2, f.agent.is_some()),
                    ),
                    &[&f.state.map(TaskState::as_str), &f.agent, &limit],
                )
                .await
            }
            .map_err(pg)?;
            Ok(rows.iter().map(task_row).collect())
        })
    }

    fn count(&self, state: TaskState) -> Result<u64, StoreError> {
        on_conn!(self, |c| {
            let r = c
                .query_one(
                    "SELECT COUNT(*) FROM tasks WHERE state = $1",
                    &[&state.as_str()],
                )
                .await
                .map_err(pg)?;
            Ok(r.get::<_, i64>(0).max(0) as u64)
        })
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
        on_conn!(self, |c| {
            let rows = c
                .query(
                    "SELECT agent, MAX(priority), MIN(created_ms) FROM tasks WHERE state = 'queued' \
                     GROUP BY agent ORDER BY agent",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect())
        })
    }

    fn renew(&self, id: &str, worker: &str, lease: Duration) -> Result<(), StoreError> {
        let until = now_ms() + lease_ms(lease);
        let n = on_conn!(self, |c| {
            c.execute(
                "UPDATE tasks SET lease_until_ms = $3 WHERE id = $1 \
                 AND state IN ('running', 'awaiting_approval') AND lease_owner = $2",
                &[&id, &worker, &until],
            )
            .await
            .map_err(pg)
        })?;
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
        in_tx!(self, |tx| {
            let from: String = tx
                .query_opt("SELECT state FROM tasks WHERE id = $1 FOR UPDATE", &[&id])
                .await
                .map_err(pg)?
                .ok_or_else(|| StoreError::NotFound {
                    what: "task",
                    id: id.into(),
                })?
                .get(0);
            let from = TaskState::parse(&from).unwrap_or(TaskState::Interrupted);
            if !from.can_move_to(to) {
                return Err(StoreError::InvalidTransition {
                    id: id.into(),
                    from,
                    to,
                });
            }
            let keep_lease = to == TaskState::Running || to == TaskState::AwaitingApproval;
            // A retry starts a new count of attempts (see the SQLite store).
            let retry = from.is_terminal() && to == TaskState::Queued;
            let row = tx
                .query_one(
                    &format!(
                        "UPDATE tasks SET state = $2, reason = $3, updated_ms = $4, \
                         lease_owner = CASE WHEN $5 THEN lease_owner ELSE NULL END, \
                         lease_until_ms = CASE WHEN $5 THEN lease_until_ms ELSE NULL END, \
                         attempts = CASE WHEN $6 THEN 0 ELSE attempts END WHERE id = $1 \
                         RETURNING {TASK_COLUMNS}"
                    ),
                    &[&id, &to.as_str(), &reason, &now_ms(), &keep_lease, &retry],
                )
                .await
                .map_err(pg)?;
            if to == TaskState::Queued {
                notify_queue(&tx).await?;
            }
            event_tx(
                &tx,
                Some(id),
                "task.state",
                &serde_json::json!({"from": from.as_str(), "to": to.as_str(), "reason": reason}),
            )
            .await?;
            Ok(task_row(&row))
        })
    }

    fn recover_expired(&self) -> Result<Vec<String>, StoreError> {
        self.requeue_running(
            "lease_until_ms < $1",
            &now_ms(),
            crate::REASON_LEASE_EXPIRED,
        )
    }

    fn release_worker(&self, worker: &str) -> Result<Vec<String>, StoreError> {
        self.requeue_running("lease_owner = $1", &worker, crate::REASON_WORKER_RESTARTED)
    }

    fn checkpoint(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        in_tx!(self, |tx| {
            // The task's row lock orders checkpoints of one task across connections.
            let exists = tx
                .query_opt("SELECT 1 FROM tasks WHERE id = $1 FOR SHARE", &[&cp.task])
                .await
                .map_err(pg)?;
            if exists.is_none() {
                return Err(StoreError::NotFound {
                    what: "task",
                    id: cp.task.clone(),
                });
            }
            let expected = tx
                .query_one(
                    "SELECT COALESCE(MAX(seq) + 1, 0) FROM checkpoints WHERE task = $1",
                    &[&cp.task],
                )
                .await
                .map_err(pg)?
                .get::<_, i64>(0)
                .max(0) as u64;
            crate::check_checkpoint_seq(cp, expected)?;
            let inserted = tx
                .execute(
                    "INSERT INTO checkpoints (task, seq, kind, payload) VALUES ($1, $2, $3, $4)",
                    &[
                        &cp.task,
                        &(cp.seq as i64),
                        &cp.kind.as_str(),
                        &cp.payload.to_string(),
                    ],
                )
                .await;
            match inserted {
                // Written by another connection between our read and insert.
                Err(e) if is(&e, &SqlState::UNIQUE_VIOLATION) => {
                    Err(StoreError::DuplicateCheckpoint {
                        task: cp.task.clone(),
                        seq: cp.seq,
                    })
                }
                r => r.map(drop).map_err(pg),
            }
        })
    }

    fn checkpoints(&self, task: &str) -> Result<Vec<Checkpoint>, StoreError> {
        on_conn!(self, |c| {
            let rows = c
                .query(
                    "SELECT task, seq, kind, payload FROM checkpoints WHERE task = $1 ORDER BY seq",
                    &[&task],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let kind: String = r.get(2);
                    let payload: String = r.get(3);
                    Checkpoint {
                        task: r.get(0),
                        seq: r.get::<_, i64>(1).max(0) as u64,
                        kind: CheckpointKind::parse(&kind),
                        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                    }
                })
                .collect())
        })
    }

    fn add_approval_rule(
        &self,
        agent: &str,
        tool: &str,
        pattern: &str,
    ) -> Result<ApprovalRule, StoreError> {
        in_tx!(self, |tx| {
            tx.execute(
                "INSERT INTO approval_rules (agent, tool, pattern, created_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (agent, tool, pattern) DO NOTHING",
                &[&agent, &tool, &pattern, &now_ms()],
            )
            .await
            .map_err(pg)?;
            let r = tx
                .query_one(
                    "SELECT id, agent, tool, pattern, created_ms FROM approval_rules \
                     WHERE agent = $1 AND tool = $2 AND pattern = $3",
                    &[&agent, &tool, &pattern],
                )
                .await
                .map_err(pg)?;
            Ok(rule_row(&r))
        })
    }

    fn approval_rules(&self, agent: Option<&str>) -> Result<Vec<ApprovalRule>, StoreError> {
        on_conn!(self, |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT id, agent, tool, pattern, created_ms FROM approval_rules \
                         WHERE {} ORDER BY id",
                        filter("agent", 1, agent.is_some())
                    ),
                    &[&agent],
                )
                .await
                .map_err(pg)?;
            Ok(rows.iter().map(rule_row).collect())
        })
    }

    fn remove_approval_rule(&self, id: i64) -> Result<(), StoreError> {
        let n = on_conn!(self, |c| {
            c.execute("DELETE FROM approval_rules WHERE id = $1", &[&id])
                .await
                .map_err(pg)
        })?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "approval rule",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    fn clear_progress(&self, task: &str) -> Result<(), StoreError> {
        in_tx!(self, |tx| {
            for table in ["checkpoints", "artifacts", "plans"] {
                tx.execute(&format!("DELETE FROM {table} WHERE task = $1"), &[&task])
                    .await
                    .map_err(pg)?;
            }
            Ok(())
        })
    }

    fn append_event(
        &self,
        task: Option<&str>,
        kind: &str,
        payload: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        in_tx!(self, |tx| { event_tx(&tx, task, kind, payload).await })
    }

    fn events_since(
        &self,
        task: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        on_conn!(self, |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT id, task, kind, payload, at_ms FROM events \
                         WHERE id > $1 AND {} ORDER BY id LIMIT $3",
                        filter("task", 2, task.is_some())
                    ),
                    &[&after, &task, &i64::from(limit)],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let payload: String = r.get(3);
                    EventRecord {
                        id: r.get(0),
                        task: r.get(1),
                        kind: r.get(2),
                        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                        at_ms: r.get(4),
                    }
                })
                .collect())
        })
    }

    fn audit_append(
        &self,
        task: Option<&str>,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<AuditRecord, StoreError> {
        let data = data.to_string();
        in_tx!(self, |tx| {
            // One chain for every node: its head is read and extended under one lock.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_AUDIT])
                .await
                .map_err(pg)?;
            let (last, prev): (i64, String) = tx
                .query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[])
                .await
                .map_err(pg)?
                .map_or((0, crate::audit::GENESIS.to_owned()), |r| {
                    (r.get(0), r.get(1))
                });
            let seq = last as u64 + 1;
            let at_ms = now_ms();
            let hash = crate::audit::chain_hash(&prev, seq, at_ms, task, kind, &data);
            tx.execute(
                "INSERT INTO audit (seq, at_ms, task, kind, data, prev, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&(seq as i64), &at_ms, &task, &kind, &data, &prev, &hash],
            )
            .await
            .map_err(pg)?;
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
        on_conn!(self, |c| {
            let rows = c
                .query(
                    &format!(
                        "SELECT seq, at_ms, task, kind, data, prev, hash FROM audit \
                         WHERE seq > $1 AND {} ORDER BY seq LIMIT $3",
                        filter("task", 2, task.is_some())
                    ),
                    &[
                        &i64::try_from(after).unwrap_or(i64::MAX),
                        &task,
                        &i64::from(limit),
                    ],
                )
                .await
                .map_err(pg)?;
            Ok(rows
                .iter()
                .map(|r| AuditRecord {
                    seq: r.get::<_, i64>(0).max(0) as u64,
                    at_ms: r.get(1),
                    task: r.get(2),
                    kind: r.get(3),
                    data: r.get(4),
                    prev: r.get(5),
                    hash: r.get(6),
                })
                .collect())
        })
    }

    fn put_plan(&self, task: &str, revision: u32, spec: &str) -> Result<PlanRecord, StoreError> {
        let rev = i32::try_from(revision).unwrap_or(i32::MAX);
        in_tx!(self, |tx| {
            let current: Option<i32> = tx
                .query_opt(
                    "SELECT revision FROM plans WHERE task = $1 FOR UPDATE",
                    &[&task],
                )
                .await
                .map_err(pg)?
                .map(|r| r.get(0));
            let now = now_ms();
            let written = match (current, rev) {
                (None, 0) => {
                    tx.execute(
                        "INSERT INTO plans (task, revision, spec, updated_ms) VALUES ($1, 0, $2, $3) \
                         ON CONFLICT (task) DO NOTHING",
                        &[&task, &spec, &now],
                    )
                    .await
                }
                (Some(c), r) if r == c + 1 => {
                    tx.execute(
                        "UPDATE plans SET revision = $2, spec = $3, updated_ms = $4 WHERE task = $1",
                        &[&task, &r, &spec, &now],
                    )
                    .await
                }
                _ => Ok(0),
            };
            match written {
                Err(e) if is(&e, &SqlState::FOREIGN_KEY_VIOLATION) => {
                    return Err(StoreError::NotFound {
                        what: "task",
                        id: task.into(),
                    });
                }
                Err(e) => return Err(pg(e)),
                Ok(0) => {
                    return Err(StoreError::Exists {
                        what: "plan revision",
                        id: format!("{task}@{revision}"),
                    });
                }
                Ok(_) => {}
            }
            Ok(PlanRecord {
                task: task.to_owned(),
                revision,
                spec: spec.to_owned(),
                updated_ms: now,
            })
        })
    }

    fn get_plan(&self, task: &str) -> Result<Option<PlanRecord>, StoreError> {
        on_conn!(self, |c| {
            let r = c
                .query_opt(
                    "SELECT task, revision, spec, updated_ms FROM plans WHERE task = $1",
                    &[&task],
                )
                .await
                .map_err(pg)?;
            Ok(r.map(|r| PlanRecord {
                task: r.get(0),
                revision: r.get::<_, i32>(1).max(0) as u32,
                spec: r.get(2),
                updated_ms: r.get(3),
            }))
        })
    }

    fn put_artifact(&self, task: &str, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let written = on_conn!(self, |c| {
            Ok(c.execute(
                "INSERT INTO artifacts (task, name, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (task, name) DO UPDATE SET data = EXCLUDED.data",
                &[&task, &name, &data],
            )
            .await)
        })?;
        match written {
            Err(e) if is(&e, &SqlState::FOREIGN_KEY_VIOLATION) => Err(StoreError::NotFound {
                what: "task",
                id: task.into(),
            }),
            r => r.map(drop).map_err(pg),
        }
    }

    fn get_artifact(&self, task: &str, name: &str) -> Result<Vec<u8>, StoreError> {
        on_conn!(self, |c| {
            c.query_opt(
                "SELECT data FROM artifacts WHERE task = $1 AND name = $2",
                &[&task, &name],
            )
            .await
            .map_err(pg)?
            .map(|r| r.get::<_, Vec<u8>>(0))
            .ok_or_else(|| StoreError::NotFound {
                what: "artifact",
                id: format!("{task}/{name}"),
            })
        })
    }

    fn on_change(&self, wake: Arc<dyn Fn(StoreChange) + Send + Sync>) {
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(wake);
        self.listen();
    }
}
