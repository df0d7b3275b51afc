//! The daemon's core: tasks from the store, through the scheduler, into cells.
//!
//! [`Daemon`] owns the store, the [`Scheduler`] and the running tasks. Its scheduling loop
//! claims the next task whenever a slot frees up; each claimed task runs as one tokio task:
//!
//! 1. load the agent manifest *version* the task was submitted with;
//! 2. start a cell named after the task, with the task's copy-on-write layer (a resumed task
//!    gets its layer back exactly as the crash left it);
//! 3. run the agent with the task's checkpoints as its journal: recorded model turns are not
//!    asked again, recorded tool results are not run again;
//! 4. store the result and the diff as artifacts and move the task to its final state.
//!
//! A lease ticker renews every running task's lease; a task whose lease was lost (another
//! worker recovered it) is stopped. A restarted daemon (same worker name) first requeues the
//! tasks it held, so they resume at once. Where resuming is impossible (manifest gone,
//! workspace gone, too many attempts, unreadable journal) the task becomes `interrupted` with
//! the reason, and can be retried.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use warren_agent::{Agent, AgentConfig, AgentError, AgentEvent, Outcome, Report};
use warren_cell::{Cell, CellSpec, JailProgram, ProcessCell, Workspace, WorkspaceMode, cow};
use warren_config::Loaded;
use warren_config::manifest::Manifest;
use warren_llm::Provider;
use warren_protocol::mount::{Mount, MountKind};
use warren_store::{NewTask, Store, StoreError, TaskFilter, TaskRecord, TaskState};

use crate::gate::{Approvals, Auditor, Decision, Desk, PendingView, Redactor, TaskGate};
use crate::journal::StoreJournal;
use crate::capabilities::{Capabilities, Layer};
use crate::scheduler::{Limits, SchedError, Scheduler};
use crate::taskdir::TaskDirs;

/// How the daemon runs.
pub struct Options {
    /// Cells' layers, task directories, the database.
    pub state_dir: PathBuf,
    /// This daemon's name on leases (stable across restarts, so it resumes its own tasks).
    pub worker: String,
    /// Concurrency and queue limits.
    pub limits: Limits,
    /// Lease length; renewed every third of it.
    pub lease: Duration,
    /// How cells are started.
    pub jail: JailProgram,
    /// Configuration (providers, models, agent defaults).
    pub loaded: Loaded,
    /// The environment providers read their keys and URLs from.
    pub env: HashMap<String, String>,
    /// A task claimed this many times without finishing is interrupted instead of resumed.
    pub max_attempts: u32,
    /// The operator's bound on every agent's capabilities.
    pub policy: crate::capabilities::PolicyFile,
    /// A paused task with no decision this long is denied.
    pub approval_timeout: Duration,
    /// Memory for agents that list memory tools (none: those tools are refused).
    pub memory: Option<crate::memory_tools::Memory>,
    /// Keep model prompts in the audit log (off: model, tokens and latency only).
    pub audit_prompts: bool,
    /// Test hook of the egress proxy: answer these names from here, not DNS.
    pub egress_resolve: HashMap<String, Vec<std::net::IpAddr>>,
    /// Test hook of the egress proxy: dial here instead of the (checked) resolved address.
    pub egress_dial: HashMap<std::net::IpAddr, std::net::SocketAddr>,
}

/// Why a running task is being stopped.
#[derive(Clone, Debug)]
enum Stop {
    /// A person cancelled it.
    Cancel(String),
    /// The daemon is shutting down: requeue for resume.
    Shutdown,
    /// Another worker took the task over.
    LeaseLost,
}

struct Running {
    stop: watch::Sender<Option<Stop>>,
    cell: Mutex<Option<Arc<ProcessCell>>>,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// Tasks accepted.
    pub submitted: AtomicU64,
    /// Submissions refused because the queue was full.
    pub rejected: AtomicU64,
    /// Tasks resumed from checkpoints (claimed with steps already recorded).
    pub resumed: AtomicU64,
    /// Cells started.
    pub cells_started: AtomicU64,
    /// Tasks that ended, by final state.
    pub finished: Mutex<HashMap<&'static str, u64>>,
    /// Model turns taken.
    pub model_turns: AtomicU64,
    /// Tool calls made.
    pub tool_calls: AtomicU64,
}

/// Errors of daemon operations, mapped to HTTP statuses by the API.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Input was invalid.
    #[error("{0}")]
    Invalid(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The queue is full.
    #[error("{0}")]
    QueueFull(String),
    /// The daemon is shutting down.
    #[error("the daemon is shutting down")]
    Unavailable,
    /// Storage failed.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for DaemonError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => DaemonError::NotFound(e.to_string()),
            StoreError::InvalidTransition { .. } | StoreError::Exists { .. } => {
                DaemonError::Conflict(e.to_string())
            }
            other => DaemonError::Internal(other.to_string()),
        }
    }
}

/// A task submission.
#[derive(Clone, Debug, Default)]
pub struct Submission {
    /// Agent name.
    pub agent: String,
    /// What to achieve.
    pub goal: String,
    /// Higher runs first.
    pub priority: i32,
    /// Host project directory (copy-on-write in the cell), if any.
    pub workspace: Option<String>,
}

/// The daemon.
pub struct Daemon {
    opts: Options,
    store: Arc<dyn Store>,
    sched: Mutex<Scheduler<dyn Store>>,
    wake: Notify,
    running: Mutex<HashMap<String, Arc<Running>>>,
    providers: Mutex<HashMap<&'static str, Arc<dyn Provider>>>,
    changed: watch::Sender<u64>,
    audit: Auditor,
    desk: Arc<Desk>,
    stopping: AtomicBool,
    started: Instant,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh task id: `t` and 12 hex digits (also the name of its cell and layer).
pub fn new_task_id() -> String {
    let mut id = warren_cell::process::new_cell_id();
    id.replace_range(0..1, "t");
    id
}

/// Tool names the agent offers (what a manifest may list).
pub fn tool_names() -> Vec<String> {
    warren_agent::tools::specs()
        .into_iter()
        .map(|s| s.name)
        .chain(
            warren_agent::tools::MEMORY_TOOLS
                .iter()
                .map(|t| (*t).to_owned()),
        )
        .collect()
}

/// Parse a stored or submitted manifest.
pub fn parse_manifest(origin: &Path, text: &str) -> Result<Manifest, String> {
    let names = tool_names();
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    warren_config::manifest::parse(origin, text, &known).map_err(|e| e.to_string())
}

/// Idle this long (blocking threads linger 10 s), the daemon returns freed memory.
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(12);

/// The shortest interval between two scheduling passes.
const SCHEDULING_QUANTUM: Duration = Duration::from_millis(10);

/// A task's running egress proxy; stopped when dropped.
struct EgressProxy {
    socket: PathBuf,
    cap_dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
    cap: tokio::task::JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cap.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// How a task's run ended, before it is recorded.
enum End {
    Final(TaskState, String),
    Requeue(String),
    Abandon,
}

impl Daemon {
    /// A daemon over `store`. Requeues the tasks this worker held when it last stopped.
    pub fn new(store: Arc<dyn Store>, opts: Options) -> Result<Arc<Self>, StoreError> {
        let released = store.release_worker(&opts.worker)?;
        if !released.is_empty() {
            eprintln!(
                "warren daemon: resuming {} task(s) this worker held: {}",
                released.len(),
                released.join(" ")
            );
        }
        let mut redactor = Redactor::from_env(&opts.env);
        if let Ok(t) = std::fs::read_to_string(opts.state_dir.join("token")) {
            redactor.add(t.trim());
        }
        let audit = Auditor::new(Arc::clone(&store), Arc::new(redactor));
        audit.record(
            None,
            "daemon.start",
            &json!({"worker": opts.worker, "pid": std::process::id(), "resumed": released}),
        );
        let approval_timeout = opts.approval_timeout;
        let sched = Scheduler::new(
            Arc::clone(&store),
            opts.limits.clone(),
            opts.worker.clone(),
            opts.lease,
        );
        Ok(Arc::new(Daemon {
            opts,
            store,
            sched: Mutex::new(sched),
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            providers: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            audit,
            desk: Arc::new(Desk::new(approval_timeout)),
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            metrics: Metrics::default(),
        }))
    }

    /// The audit log writer.
    pub fn auditor(&self) -> &Auditor {
        &self.audit
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.opts.state_dir
    }

    /// Seconds since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Tasks running in this daemon now.
    pub fn running_count(&self) -> usize {
        lock(&self.running).len()
    }

    /// A receiver that changes whenever this daemon records something (streams wait on it).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn touch(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn event(&self, task: &str, kind: &str, payload: Value) {
        let text = self.audit.redactor().redact(&payload.to_string());
        let payload = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if let Err(e) = self.store.append_event(Some(task), kind, &payload) {
            eprintln!("warren daemon: task {task}: recording {kind}: {e}");
        }
        self.touch();
    }

    /// Deploy a manifest (validated) as the agent's next version.
    pub fn deploy(
        &self,
        origin: &Path,
        text: &str,
    ) -> Result<(warren_store::AgentRecord, Manifest), DaemonError> {
        let m = parse_manifest(origin, text).map_err(DaemonError::Invalid)?;
        let rec = self.store.put_agent(&m.name, text)?;
        self.audit.record(
            None,
            "agent.deployed",
            &json!({"name": rec.name, "version": rec.version}),
        );
        self.touch();
        Ok((rec, m))
    }

    /// Queue a task.
    pub fn submit(&self, s: Submission) -> Result<TaskRecord, DaemonError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(DaemonError::Unavailable);
        }
        if s.goal.trim().is_empty() {
            return Err(DaemonError::Invalid("goal: must not be empty".into()));
        }
        if s.goal.len() > 64 * 1024 {
            return Err(DaemonError::Invalid(
                "goal: longer than 64 KiB; put long material in the workspace".into(),
            ));
        }
        let agent = self.store.get_agent(&s.agent, None).map_err(|e| match e {
            StoreError::NotFound { .. } => DaemonError::NotFound(format!(
                "agent {:?} is not deployed (deploy it with `warren agent deploy FILE`)",
                s.agent
            )),
            other => other.into(),
        })?;
        let workspace = match s.workspace {
            None => None,
            Some(w) => {
                let p = Path::new(&w);
                if !p.is_absolute() {
                    return Err(DaemonError::Invalid(format!(
                        "workspace: {w:?} is not an absolute path"
                    )));
                }
                let real = std::fs::canonicalize(p)
                    .map_err(|e| DaemonError::Invalid(format!("workspace: {w}: {e}")))?;
                if !real.is_dir() {
                    return Err(DaemonError::Invalid(format!(
                        "workspace: {w} is not a directory"
                    )));
                }
                Some(real.display().to_string())
            }
        };
        let rec = lock(&self.sched)
            .submit(NewTask {
                id: new_task_id(),
                agent: agent.name,
                agent_version: agent.version,
                goal: s.goal,
                priority: s.priority,
                workspace,
            })
            .map_err(|e| match e {
                SchedError::QueueFull { .. } => {
                    self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    DaemonError::QueueFull(e.to_string())
                }
                SchedError::Store(e) => e.into(),
            })?;
        self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
        self.audit.record(
            Some(&rec.id),
            "task.submitted",
            &json!({"agent": rec.agent, "agent_version": rec.agent_version, "goal": rec.goal, "priority": rec.priority, "workspace": rec.workspace}),
        );
        self.touch();
        self.wake.notify_one();
        Ok(rec)
    }

    /// Cancel a task: a queued one at once; a running one has its cell killed, then is
    /// recorded as cancelled. Waits (up to 10 s) for a running task to stop.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<TaskRecord, DaemonError> {
        let t = self.store.get_task(id)?;
        match t.state {
            TaskState::Queued => {
                let r = self
                    .store
                    .transition(id, TaskState::Cancelled, Some(reason))?;
                self.audit
                    .record(Some(id), "task.cancelled", &json!({"reason": reason}));
                self.finished_metric(TaskState::Cancelled);
                self.touch();
                Ok(r)
            }
            TaskState::Running | TaskState::AwaitingApproval => {
                let run = lock(&self.running).get(id).cloned();
                match run {
                    Some(run) => {
                        let _ = run.stop.send(Some(Stop::Cancel(reason.to_owned())));
                        if let Some(cell) = lock(&run.cell).as_ref() {
                            cell.terminate();
                        }
                        let mut changes = self.changes();
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while lock(&self.running).contains_key(id) && Instant::now() < deadline {
                            let _ =
                                tokio::time::timeout(Duration::from_millis(100), changes.changed())
                                    .await;
                        }
                        Ok(self.store.get_task(id)?)
                    }
                    // Held by another worker (or a dead one): record it; that worker's lease
                    // renewal fails and it stops the task.
                    None => {
                        let r = self
                            .store
                            .transition(id, TaskState::Cancelled, Some(reason))?;
                        self.touch();
                        Ok(r)
                    }
                }
            }
            s => Err(DaemonError::Conflict(format!(
                "task {id} is already {}",
                s.as_str()
            ))),
        }
    }

    /// Queue a finished task again. A task that was stopped before it finished (failed on an
    /// error, cancelled, interrupted) resumes from its checkpoints and its layer; one that
    /// reached an outcome, or any task with `fresh`, starts over.
    pub fn retry(&self, id: &str, fresh: bool) -> Result<TaskRecord, DaemonError> {
        let t = self.store.get_task(id)?;
        if !matches!(
            t.state,
            TaskState::Failed | TaskState::Cancelled | TaskState::Interrupted
        ) {
            return Err(DaemonError::Conflict(format!(
                "task {id} is {}; only failed, cancelled or interrupted tasks can be retried",
                t.state.as_str()
            )));
        }
        let reached_outcome = self.store.get_artifact(id, "result").is_ok();
        let fresh = fresh || reached_outcome;
        if fresh {
            self.store.clear_progress(id)?;
            let layer = warren_cell::spec::CowLayer::at(&self.opts.state_dir, id);
            let _ = cow::discard(&layer);
        }
        let how = if fresh {
            "retried from the start"
        } else {
            "retried: resuming from checkpoints"
        };
        let r = self.store.transition(id, TaskState::Queued, Some(how))?;
        self.audit
            .record(Some(id), "task.retried", &json!({"fresh": fresh}));
        self.touch();
        self.wake.notify_one();
        Ok(r)
    }

    /// A person's decision on a task waiting for approval.
    pub fn decide(&self, id: &str, d: Decision) -> Result<PendingView, DaemonError> {
        self.store.get_task(id)?;
        self.desk.decide(id, d).map_err(DaemonError::Conflict)
    }

    /// What a task waits for, if anything.
    pub fn pending_approval(&self, id: &str) -> Option<PendingView> {
        self.desk.pending(id)
    }

    /// Tasks matching `filter`.
    pub fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, DaemonError> {
        Ok(self.store.list_tasks(filter)?)
    }

    /// The unified diff of a task's workspace changes (empty when none).
    pub fn diff(&self, id: &str) -> Result<String, DaemonError> {
        let t = self.store.get_task(id)?;
        if let Ok(d) = self.store.get_artifact(id, "diff") {
            return Ok(String::from_utf8_lossy(&d).into_owned());
        }
        let Some(ws) = t.workspace else {
            return Ok(String::new());
        };
        let layer = warren_cell::spec::CowLayer::at(&self.opts.state_dir, id);
        if !layer.upper.exists() {
            return Ok(String::new());
        }
        cow::diff_with(
            &layer,
            Path::new(&ws),
            &diff_limits(Duration::from_secs(10)),
        )
        .map_err(|e| DaemonError::Internal(e.to_string()))
    }

    fn finished_metric(&self, s: TaskState) {
        *lock(&self.metrics.finished).entry(s.as_str()).or_default() += 1;
    }

    fn provider(&self, manifest: &Manifest) -> Result<(Arc<dyn Provider>, String), String> {
        let env = |k: &str| self.opts.env.get(k).filter(|v| !v.is_empty()).cloned();
        let loaded = &self.opts.loaded;
        let kind = crate::provider::kind(manifest.provider.as_deref(), loaded, &env)?;
        let (config, default_model) = crate::provider::config(kind, loaded, &env)?;
        let model = manifest
            .model
            .clone()
            .or_else(|| loaded.config.agent.model.clone())
            .unwrap_or_else(|| default_model.to_owned());
        let mut cache = lock(&self.providers);
        if let Some(p) = cache.get(kind) {
            return Ok((Arc::clone(p), model));
        }
        let p = warren_llm::build(config).map_err(|e| e.to_string())?;
        cache.insert(kind, Arc::clone(&p));
        Ok((p, model))
    }

    /// Run the scheduling loop until [`Daemon::shutdown`]: start tasks while slots are free,
    /// renew leases, recover tasks whose worker died.
    pub async fn run(self: Arc<Self>) {
        let lease_tick = (self.opts.lease / 3).max(Duration::from_millis(50));
        let mut last_renew = Instant::now();
        let mut last_recover = Instant::now() - self.opts.lease;
        let mut idle_since: Option<Instant> = None;
        while !self.stopping.load(Ordering::SeqCst) {
            let pass = Instant::now();
            self.trim_when_idle(&mut idle_since);
            if last_recover.elapsed() >= self.opts.lease / 2 {
                last_recover = Instant::now();
                match self.store.recover_expired() {
                    Ok(ids) if !ids.is_empty() => {
                        eprintln!(
                            "warren daemon: recovered {} task(s) whose worker stopped",
                            ids.len()
                        );
                        self.touch();
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("warren daemon: recovering expired leases: {e}"),
                }
            }
            if last_renew.elapsed() >= lease_tick {
                last_renew = Instant::now();
                self.renew_leases();
            }
            loop {
                let next = lock(&self.sched).start_next();
                match next {
                    Ok(Some(task)) => {
                        self.touch();
                        let d = Arc::clone(&self);
                        tokio::spawn(d.run_task(task));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("warren daemon: scheduling: {e}");
                        break;
                    }
                }
            }
            let _ =
                tokio::time::timeout(lease_tick.min(Duration::from_secs(1)), self.wake.notified())
                    .await;
            // At most one pass per SCHEDULING_QUANTUM: a burst of submissions costs one look at
            // the queue, not one each.
            tokio::time::sleep_until((pass + SCHEDULING_QUANTUM).into()).await;
        }
    }

    /// Once the daemon has run nothing for a while (the blocking threads of the last tool calls
    /// have exited), hand the memory a burst of tasks used back to the system: glibc keeps
    /// freed pages otherwise, and a thousand tasks' worth would stay resident.
    fn trim_when_idle(&self, idle_since: &mut Option<Instant>) {
        if self.running_count() > 0 {
            *idle_since = None;
            return;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= IDLE_TRIM_AFTER {
            // Far in the future: trimmed once per idle stretch.
            *idle_since = Some(Instant::now() + Duration::from_secs(365 * 86_400));
            // SAFETY: malloc_trim has no preconditions.
            #[cfg(target_env = "gnu")]
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    fn renew_leases(&self) {
        let ids: Vec<(String, Arc<Running>)> = lock(&self.running)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        for (id, run) in ids {
            match self.store.renew(&id, &self.opts.worker, self.opts.lease) {
                Ok(()) => {}
                Err(StoreError::LeaseLost { .. }) => {
                    let _ = run.stop.send(Some(Stop::LeaseLost));
                    if let Some(c) = lock(&run.cell).as_ref() {
                        c.terminate();
                    }
                }
                Err(e) => eprintln!("warren daemon: renewing the lease of {id}: {e}"),
            }
        }
    }

    /// Stop accepting and starting tasks; stop running ones and requeue them, so the next
    /// start resumes them from their checkpoints. Returns once every task has stopped.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.audit.record(
            None,
            "daemon.stop",
            &json!({"running": self.running_count()}),
        );
        self.wake.notify_one();
        let runs: Vec<Arc<Running>> = lock(&self.running).values().cloned().collect();
        for run in &runs {
            let _ = run.stop.send(Some(Stop::Shutdown));
            if let Some(c) = lock(&run.cell).as_ref() {
                c.terminate();
            }
        }
        let mut changes = self.changes();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !lock(&self.running).is_empty() && Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
        }
    }

    /// Whether [`Daemon::shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    async fn run_task(self: Arc<Self>, task: TaskRecord) {
        let id = task.id.clone();
        let (tx, rx) = watch::channel(None);
        let run = Arc::new(Running {
            stop: tx,
            cell: Mutex::new(None),
        });
        lock(&self.running).insert(id.clone(), Arc::clone(&run));
        let end = self.drive(&task, &run, rx).await;
        let recorded = match end {
            End::Final(state, reason) => {
                let r = self.store.transition(&id, state, Some(&reason));
                if r.is_ok() {
                    self.finished_metric(state);
                }
                r.map(|_| ())
            }
            End::Requeue(reason) => self
                .store
                .transition(&id, TaskState::Queued, Some(&reason))
                .map(|_| ()),
            End::Abandon => Ok(()),
        };
        if let Err(e) = recorded {
            eprintln!("warren daemon: task {id}: recording its end: {e}");
        }
        if let Ok(t) = self.store.get_task(&id) {
            self.audit.record(
                Some(&id),
                "task.state",
                &json!({"state": t.state.as_str(), "reason": t.reason, "attempt": t.attempts}),
            );
        }
        lock(&self.running).remove(&id);
        self.desk.withdraw(&id);
        lock(&self.sched).finished(&id);
        self.touch();
        self.wake.notify_one();
    }

    /// Run one claimed task to its end (or until stopped).
    async fn drive(
        &self,
        task: &TaskRecord,
        run: &Running,
        mut stop: watch::Receiver<Option<Stop>>,
    ) -> End {
        let id = &task.id;
        let interrupted = |why: String| End::Final(TaskState::Interrupted, why);
        if task.attempts > self.opts.max_attempts {
            return interrupted(format!(
                "claimed {} times without finishing (at most {}); retry it to try again",
                task.attempts, self.opts.max_attempts
            ));
        }
        let manifest = match self
            .store
            .get_agent(&task.agent, Some(task.agent_version))
            .map_err(|e| e.to_string())
            .and_then(|a| {
                parse_manifest(
                    Path::new(&format!("agent {} v{}", a.name, a.version)),
                    &a.manifest,
                )
            }) {
            Ok(m) => m,
            Err(e) => return interrupted(format!("cannot load its agent: {e}")),
        };
        let steps = self.store.checkpoints(id).map(|c| c.len()).unwrap_or(0);
        if steps > 0 {
            self.metrics.resumed.fetch_add(1, Ordering::Relaxed);
            self.event(
                id,
                "task.resumed",
                json!({"checkpoints": steps, "attempt": task.attempts}),
            );
        }
        let (provider, model) = match self.provider(&manifest) {
            Ok(p) => p,
            Err(e) => return End::Final(TaskState::Failed, format!("model provider: {e}")),
        };
        let provider_for_reflection = Arc::clone(&provider);
        let caps = Capabilities::new(Layer::from_manifest(&manifest), self.opts.policy.layer());
        let mut spec = match self.cell_spec(task, &manifest) {
            Ok(s) => s,
            Err(e) => return interrupted(e),
        };
        if caps.restricts_paths() {
            spec.scopes = caps.scopes();
        }
        // Network: only through this task's proxy, only to what both manifest and policy allow.
        let _proxy = match self.start_egress(id, &caps.network(), &spec) {
            Ok(p) => p,
            Err(e) => return End::Final(TaskState::Failed, format!("egress proxy: {e}")),
        };
        if let Some(p) = &_proxy {
            spec.egress = Some(p.socket.clone());
            spec.extra_mounts.push(Mount {
                target: "/cap/http".into(),
                kind: MountKind::Bind {
                    source: p.cap_dir.display().to_string(),
                    readonly: false,
                },
            });
        }
        self.audit.record(
            Some(id),
            "task.started",
            &json!({"attempt": task.attempts, "worker": self.opts.worker, "checkpoints": steps,
                    "capabilities": {"scopes": spec.scopes, "network": caps.network()}}),
        );
        let identity = warren_cell::spec::resolve_identity(&spec);
        // What the cell's identity can read on the host (through its workspace's idmap, if
        // any): host tools answer from nothing else.
        let reader = warren_memory::access::Reader {
            uid: identity.0,
            gid: identity.1,
            idmap: warren_cell::spec::workspace_idmap(&spec, identity.0)
                .ok()
                .flatten()
                .map(|m| (m.disk_uid, m.disk_gid)),
        };
        let task_spec = json!({"id": id, "agent": task.agent, "goal": task.goal, "model": model});
        let dirs = match TaskDirs::create(&self.opts.state_dir, id, &task_spec, identity) {
            Ok(d) => d,
            Err(e) => return End::Final(TaskState::Failed, format!("task directory: {e}")),
        };
        spec.extra_mounts.splice(0..0, dirs.mounts());
        // A resumed task's predecessor cell (same id, killed with its daemon) may hold its
        // overlay or cgroup for a moment longer: retry its start a few times.
        let tries = if task.attempts > 1 { 8 } else { 1 };
        let cell = match self.start_cell(spec, tries).await {
            Ok(c) => c,
            Err(e) => return End::Final(TaskState::Failed, format!("cell: {e}")),
        };
        self.metrics.cells_started.fetch_add(1, Ordering::Relaxed);
        *lock(&run.cell) = Some(Arc::clone(&cell));
        // Stopped while the cell started?
        let early = stop.borrow().clone();
        if let Some(s) = early {
            drop_cell(cell, &run.cell).await;
            return self.stopped(id, s, &dirs);
        }
        let config = self.agent_config(&manifest, model.clone());
        let granted: Vec<String> = manifest
            .tools
            .iter()
            .filter(|t| warren_agent::tools::MEMORY_TOOLS.contains(&t.as_str()))
            .cloned()
            .collect();
        let memory = self.opts.memory.clone().filter(|_| !granted.is_empty());
        let mut goal = task.goal.clone();
        if let Some(m) = &memory {
            if let (Some(ws), true) = (&task.workspace, granted.iter().any(|g| g == "code_search"))
            {
                // Keep the index current (incremental: unchanged files cost a hash).
                let (m2, ws2) = (m.clone(), ws.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    warren_memory::index::index(
                        &m2.db,
                        std::path::Path::new(&ws2),
                        m2.embedder.as_deref(),
                        &mut |_| {},
                    )
                })
                .await;
            }
            if let Some(ws) = &task.workspace {
                let notes = m.reflections(ws, &task.goal, 3);
                if !notes.is_empty() {
                    goal.push_str("\n\nReflections from earlier tasks on this workspace:\n");
                    for n in notes {
                        goal.push_str(&format!("- {n}\n"));
                    }
                }
            }
        }
        let wall = config.max_wall;
        let agent = Agent::new(
            provider,
            Arc::clone(&cell) as Arc<dyn Cell>,
            config,
            Some(dirs.logs.clone()),
        )
        .with_journal(Arc::new(StoreJournal::new(
            Arc::clone(&self.store),
            id.clone(),
        )))
        .with_gate(Arc::new(
            TaskGate::new(id.clone(), caps.clone(), self.audit.clone())
                .with_audit_prompts(self.opts.audit_prompts)
                .with_approvals(Approvals {
                    desk: Arc::clone(&self.desk),
                    agent: task.agent.clone(),
                    required: Approvals::required_from(&manifest.approval_required),
                    pause_on_budget: manifest.pause_on_budget,
                    notify: {
                        let changed = self.changed.clone();
                        Arc::new(move || changed.send_modify(|n| *n += 1))
                    },
                }),
        ));
        let agent = match &memory {
            Some(m) => agent.with_host_tools(Arc::new(crate::memory_tools::MemoryTools {
                memory: m.clone(),
                agent: task.agent.clone(),
                workspace: task.workspace.clone(),
                task: id.clone(),
                granted: granted.clone(),
                caps,
                reader,
            })),
            None => agent,
        };
        let mut text = String::new();
        let mut observe = |e: &AgentEvent| self.observe(id, e, &mut text);
        let outcome = tokio::select! {
            r = agent.run(&goal, &mut observe) => Ok(r),
            s = wait_stop(&mut stop) => Err(Some(s)),
            () = tokio::time::sleep(wall) => Err(None),
        };
        self.flush_text(id, &mut text);
        if outcome.is_err() {
            // A command may still run in the cell (its blocking thread holds the cell): stop it.
            cell.terminate();
        }
        drop(agent);
        let layer = cell.cow_layer().cloned();
        drop_cell(cell, &run.cell).await;
        match outcome {
            Err(Some(s)) => self.stopped(id, s, &dirs),
            Err(None) => {
                dirs.set_status("failed");
                End::Final(
                    TaskState::Failed,
                    format!("timed out after {:?} (the agent's timeout)", wall),
                )
            }
            Ok(Err(AgentError::Journal(e))) => {
                dirs.set_status("interrupted");
                interrupted(format!("its journal failed: {e}"))
            }
            Ok(Err(e)) => {
                dirs.set_status("failed");
                End::Final(TaskState::Failed, e.to_string())
            }
            Ok(Ok(report)) => {
                let end = self.completed(task, &report, layer, &dirs).await;
                if let Some(m) = &memory {
                    self.remember(m, task, &report, &provider_for_reflection, &model)
                        .await;
                }
                end
            }
        }
    }

    /// Start the task's egress proxy on a unix socket in its task directory (owned by the
    /// cell's identity, mode 0600), if its capabilities allow any destination.
    fn start_egress(
        &self,
        id: &str,
        network: &[String],
        spec: &CellSpec,
    ) -> Result<Option<EgressProxy>, String> {
        if network.is_empty() {
            return Ok(None);
        }
        let policy = warren_egress::Policy::parse(network).map_err(|e| e.to_string())?;
        let mut config = warren_egress::Config::new(policy);
        config.resolve_override = self.opts.egress_resolve.clone();
        config.dial_override = self.opts.egress_dial.clone();
        let dir = self.opts.state_dir.join("tasks").join(id).join("net");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let socket = dir.join("proxy.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = {
            let _rt = tokio::runtime::Handle::current().enter();
            tokio::net::UnixListener::bind(&socket)
                .map_err(|e| format!("{}: {e}", socket.display()))?
        };
        let (uid, gid) = warren_cell::spec::resolve_identity(spec);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&socket, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        let audit = Arc::new(crate::gate::EgressAudit {
            task: id.to_owned(),
            audit: self.audit.clone(),
        });
        let config = Arc::new(config);
        let cap_dir = self.opts.state_dir.join("tasks").join(id).join("cap-http");
        crate::caphttp::prepare(&cap_dir, (uid, gid))
            .map_err(|e| format!("{}: {e}", cap_dir.display()))?;
        let cap = crate::caphttp::serve(
            cap_dir.clone(),
            (uid, gid),
            Arc::clone(&config),
            Arc::clone(&audit) as Arc<dyn warren_egress::Audit>,
        );
        let task = tokio::spawn(warren_egress::serve_unix(listener, config, audit));
        Ok(Some(EgressProxy {
            socket,
            cap_dir,
            task,
            cap,
        }))
    }

    async fn start_cell(&self, spec: CellSpec, tries: u32) -> Result<Arc<ProcessCell>, String> {
        let mut last = String::new();
        for attempt in 0..tries {
            if attempt > 0 {
                let ms = (50u64 << attempt).min(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let (s, jail) = (spec.clone(), self.opts.jail.clone());
            match tokio::task::spawn_blocking(move || ProcessCell::start(&s, &jail)).await {
                Ok(Ok(c)) => return Ok(Arc::new(c)),
                Ok(Err(e)) => last = e.to_string(),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }

    /// Store what the task did (an episode) and what it learned (a reflection by the model).
    async fn remember(
        &self,
        m: &crate::memory_tools::Memory,
        task: &TaskRecord,
        report: &Report,
        provider: &Arc<dyn Provider>,
        model: &str,
    ) {
        let outcome = match &report.outcome {
            Outcome::Finished(v) => format!(
                "{}: {}",
                if v["success"].as_bool().unwrap_or(true) {
                    "succeeded"
                } else {
                    "failed"
                },
                v["summary"].as_str().unwrap_or_default()
            ),
            Outcome::Stopped(r) => format!("stopped: {r}"),
        };
        let commands =
            crate::memory_tools::tool_calls(&self.store.checkpoints(&task.id).unwrap_or_default());
        let episode = format!(
            "Task {} by {}: {}\nOutcome: {outcome}\nSteps: {}",
            task.id,
            task.agent,
            task.goal,
            commands.join("; ")
        );
        let episode = self.audit.redactor().redact(&episode);
        m.note(
            "episode",
            &task.agent,
            task.workspace.as_deref(),
            &task.id,
            &episode,
        );
        let request = warren_llm::ChatRequest {
            model: model.to_owned(),
            system: "You write short reflections for an engineering agent's memory.".into(),
            messages: vec![warren_llm::Message::User {
                content: format!(
                    "{episode}\n\nIn at most three sentences: what worked, what failed, and what to remember next time on this project. Plain text."
                ),
            }],
            tools: Vec::new(),
            max_tokens: 300,
            temperature: None,
            stream: false,
        };
        let mut ignore = |_e: warren_llm::StreamEvent| {};
        if let Ok(r) = provider.chat(&request, &mut ignore).await {
            let text = self.audit.redactor().redact(r.text.trim());
            if !text.is_empty() {
                m.note(
                    "reflection",
                    &task.agent,
                    task.workspace.as_deref(),
                    &task.id,
                    &text,
                );
                self.audit.record(
                    Some(&task.id),
                    "memory.reflection",
                    &json!({"chars": text.len()}),
                );
            }
        }
    }

    fn stopped(&self, id: &str, s: Stop, dirs: &TaskDirs) -> End {
        match s {
            Stop::Cancel(reason) => {
                self.audit
                    .record(Some(id), "task.cancelled", &json!({"reason": reason}));
                dirs.set_status("cancelled");
                self.event(id, "task.cancelled", json!({"reason": reason}));
                End::Final(TaskState::Cancelled, reason)
            }
            Stop::Shutdown => {
                End::Requeue("the daemon shut down; resumes from its checkpoints".into())
            }
            Stop::LeaseLost => End::Abandon,
        }
    }

    async fn completed(
        &self,
        task: &TaskRecord,
        report: &Report,
        layer: Option<warren_cell::spec::CowLayer>,
        dirs: &TaskDirs,
    ) -> End {
        let (state, summary, value) = match &report.outcome {
            Outcome::Finished(v) => {
                let ok = v["success"].as_bool().unwrap_or(true);
                let state = if ok {
                    TaskState::Succeeded
                } else {
                    TaskState::Failed
                };
                let summary = v["summary"].as_str().unwrap_or_default().to_owned();
                (state, summary, v.clone())
            }
            Outcome::Stopped(reason) => {
                (TaskState::Failed, format!("stopped: {reason}"), Value::Null)
            }
        };
        let result = json!({
            "outcome": if matches!(report.outcome, Outcome::Finished(_)) { "finished" } else { "stopped" },
            "success": state == TaskState::Succeeded,
            "summary": summary,
            "result": value,
            "turns": report.turns,
            "usage": report.usage,
        });
        let diff = match (layer, task.workspace.clone()) {
            (Some(layer), Some(ws)) => {
                // Bounded in time and size: the layer is the cell's work, and a task's slot
                // is held until its diff is stored.
                let limits = diff_limits(Duration::from_secs(30));
                match tokio::task::spawn_blocking(move || {
                    cow::diff_with(&layer, Path::new(&ws), &limits)
                })
                .await
                {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => format!("warren: the diff could not be computed: {e}\n"),
                    Err(e) => format!("warren: the diff could not be computed: {e}\n"),
                }
            }
            _ => String::new(),
        };
        for (name, bytes) in [
            ("diff", diff.into_bytes()),
            ("result", result.to_string().into_bytes()),
        ] {
            if let Err(e) = self.store.put_artifact(&task.id, name, &bytes) {
                // Not fatal to the task, but never silent.
                self.event(
                    &task.id,
                    "task.artifact_failed",
                    json!({"artifact": name, "error": e.to_string()}),
                );
            }
        }
        dirs.set_status(state.as_str());
        let reason = if summary.is_empty() {
            state.as_str().to_owned()
        } else {
            summary
        };
        End::Final(state, reason)
    }

    fn cell_spec(&self, task: &TaskRecord, m: &Manifest) -> Result<CellSpec, String> {
        let mut spec = CellSpec::new(&self.opts.state_dir);
        spec.id = Some(task.id.clone());
        spec.workspace = match &task.workspace {
            Some(ws) => {
                let host = PathBuf::from(ws);
                if !host.is_dir() {
                    return Err(format!("its workspace {ws} no longer exists"));
                }
                let mode = match m.workspace.as_str() {
                    "ro" => WorkspaceMode::ReadOnly,
                    "rw" => WorkspaceMode::ReadWrite,
                    _ => WorkspaceMode::Cow,
                };
                Some(Workspace { host, mode })
            }
            None => None,
        };
        spec.limits.cgroup.memory_bytes = m.memory;
        if let Some(d) = m.disk {
            spec.limits.disk_bytes = Some(d);
        }
        spec.limits.cgroup.pids = m.pids;
        spec.limits.cgroup.cpus = m.cpus;
        for mount in &m.mounts {
            spec.extra_mounts.push(Mount {
                target: mount.target.clone(),
                kind: MountKind::Bind {
                    source: mount.source.clone(),
                    readonly: mount.mode != "rw",
                },
            });
        }
        Ok(spec)
    }

    fn agent_config(&self, m: &Manifest, model: String) -> AgentConfig {
        let prices = crate::provider::catalog(&self.opts.loaded).lookup(&model);
        let cfg = &self.opts.loaded.config;
        let context_window = crate::provider::context_window(&self.opts.loaded, &model);
        let timeout = m
            .timeout
            .or_else(|| {
                cfg.agent
                    .timeout
                    .as_deref()
                    .and_then(|t| warren_config::units::parse_duration(t).ok())
            })
            .unwrap_or(Duration::from_secs(30 * 60));
        let mut config = AgentConfig {
            model,
            context_window,
            max_turns: cfg.agent.max_turns.unwrap_or(30),
            max_wall: timeout,
            budget_tokens: m.budget_tokens.or(cfg.agent.budget_tokens),
            budget_usd: m.budget_usd,
            prices: Some(prices),
            tools: Some(m.tools.clone()),
            // The same effective destinations the task's egress proxy gets (run_task).
            network: Capabilities::new(Layer::from_manifest(m), self.opts.policy.layer()).network(),
            ..AgentConfig::default()
        };
        config.system_prompt = match &m.system_prompt {
            Some(p) => p.clone(),
            None => warren_agent::system_prompt(&config.network),
        };
        config
    }

    fn flush_text(&self, id: &str, text: &mut String) {
        if !text.is_empty() {
            self.event(id, "agent.text", json!({"text": std::mem::take(text)}));
        }
    }

    /// Agent events become task events; streamed text is coalesced into one event per stretch.
    fn observe(&self, id: &str, e: &AgentEvent, text: &mut String) {
        if let AgentEvent::Text { delta } = e {
            text.push_str(delta);
            return;
        }
        self.flush_text(id, text);
        match e {
            AgentEvent::Turn { .. } => {
                self.metrics.model_turns.fetch_add(1, Ordering::Relaxed);
            }
            AgentEvent::ToolCall { .. } => {
                self.metrics.tool_calls.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let payload = serde_json::to_value(e).unwrap_or_default();
        let kind = format!("agent.{}", payload["event"].as_str().unwrap_or("event"));
        self.event(id, &kind, payload);
    }

    /// Worker name on leases.
    pub fn worker(&self) -> &str {
        &self.opts.worker
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.opts.limits
    }
}

/// Limits for a diff the daemon computes: `within` from now, the default sizes.
fn diff_limits(within: Duration) -> cow::DiffOptions {
    cow::DiffOptions {
        deadline: Some(Instant::now() + within),
        ..cow::DiffOptions::default()
    }
}

async fn wait_stop(rx: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(s) = rx.borrow_and_update().clone() {
            return s;
        }
        if rx.changed().await.is_err() {
            // The sender lives as long as the task: never reached while it runs.
            std::future::pending::<()>().await;
        }
    }
}

/// Release a cell off the async threads (teardown waits for the supervisor).
async fn drop_cell(cell: Arc<ProcessCell>, slot: &Mutex<Option<Arc<ProcessCell>>>) {
    lock(slot).take();
    let _ = tokio::task::spawn_blocking(move || drop(cell)).await;
}
