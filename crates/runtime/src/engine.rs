//! The engine: tasks from the store, through the scheduler, into cells.
//!
//! [`Engine`] owns the store, the [`Scheduler`] and the running tasks. Its scheduling loop
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
use warren_agent::{AgentEvent, Report};
use warren_cell::{Cell, cow};
use warren_config::Loaded;
use warren_config::manifest::Manifest;
use warren_llm::Provider;
use warren_protocol::api::{AuditKind, ErrorCode, EventKind, SubmitTask, TaskView};
use warren_store::{NewTask, Store, StoreChange, StoreError, TaskRecord, TaskState};

use crate::action::{Action, ActionError, Answer, Caller, Control, Op, Query};
use crate::capabilities::Layer;
use crate::cells::Cells;
use crate::gate::{Auditor, Decision, Desk, PendingView, Redactor};
use crate::runner::End;
use crate::scheduler::{Limits, SchedError, Scheduler};

/// How the engine runs.
pub struct Options {
    /// This node's own state: its token, and (by default) the work directory.
    pub state_dir: PathBuf,
    /// Where task directories and cells' copy-on-write layers live, when not in `state_dir`.
    /// Nodes sharing a PostgreSQL store share this directory too (a network filesystem), so a
    /// task resumed on another node finds the workspace changes it made before.
    pub work_dir: Option<PathBuf>,
    /// This daemon's name on leases (stable across restarts, so it resumes its own tasks).
    pub worker: String,
    /// Concurrency and queue limits.
    pub limits: Limits,
    /// Lease length; renewed every third of it.
    pub lease: Duration,
    /// How cells are started (the process tier, or a fake in tests).
    pub cells: Arc<dyn Cells>,
    /// Use this provider and model for every task instead of building them from the
    /// configuration (`warren run --replay/--record`).
    pub provider: Option<(Arc<dyn Provider>, String)>,
    /// Configuration (providers, models, agent defaults).
    pub loaded: Loaded,
    /// The environment providers read their keys and URLs from.
    pub env: HashMap<String, String>,
    /// A task claimed this many times without finishing is interrupted instead of resumed.
    pub max_attempts: u32,
    /// The operator's bound on every agent's capabilities (a policy file's layer; for
    /// `warren run`, the person at the terminal: unrestricted).
    pub policy: Layer,
    /// At most this many model turns per task (default: the configuration's, else 30).
    pub max_turns: Option<u32>,
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
    /// Folders of Agent Skills, in precedence order (`warren_skills::roots`, the used ones):
    /// where the skills a manifest names are found.
    pub skills: Vec<PathBuf>,
    /// MCP tools wait for a person when their server's annotations call them destructive or
    /// do not mark them read-only or non-destructive (the operator's policy can turn this off:
    /// `[capabilities] mcp_approval = "listed"`).
    pub mcp_annotation_approval: bool,
    /// Bounds on plans and delegation (the policy's `[plans]`).
    pub plans: crate::plan::PlanLimits,
}

/// Why a running task is being stopped.
#[derive(Clone, Debug)]
pub enum Stop {
    /// A person cancelled it.
    Cancel(String),
    /// The daemon is shutting down: requeue for resume.
    Shutdown,
    /// Another worker took the task over.
    LeaseLost,
    /// `warren run` got this signal: stop, keep the changes.
    Signal(i32),
}

pub(crate) struct Running {
    pub(crate) stop: watch::Sender<Option<Stop>>,
    pub(crate) cell: Mutex<Option<Arc<dyn Cell>>>,
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

/// The engine: one per daemon, or one per `warren run`.
pub struct Engine {
    pub(crate) opts: Options,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) sched: Mutex<Scheduler<dyn Store>>,
    pub(crate) wake: Notify,
    /// Itself, for work that outlives a borrow (a `delegate` call runs its child here).
    pub(crate) me: std::sync::Weak<Engine>,
    pub(crate) running: Mutex<HashMap<String, Arc<Running>>>,
    providers: Mutex<HashMap<warren_config::ProviderName, Arc<dyn Provider>>>,
    pub(crate) changed: watch::Sender<u64>,
    pub(crate) audit: Auditor,
    pub(crate) desk: Arc<Desk>,
    stopping: AtomicBool,
    started: Instant,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh task id: `t` and 12 hex digits (also the name of its cell and layer).
pub fn new_task_id() -> String {
    let mut id = warren_cell::process::new_cell_id();
    id.replace_range(0..1, "t");
    id
}

impl Options {
    /// An engine's options for tests and benchmarks: worker `w1`, a 5 s lease, default
    /// limits, no policy restrictions, `cells` and `model` (named `m`), the configuration
    /// defaults of `state_dir`. Change fields after, as a test needs.
    pub fn for_tests(
        state_dir: &Path,
        cells: Arc<dyn Cells>,
        model: Arc<dyn Provider>,
    ) -> Result<Options, warren_config::ConfigError> {
        Ok(Options {
            state_dir: state_dir.to_owned(),
            work_dir: None,
            worker: "w1".into(),
            limits: Limits::default(),
            lease: Duration::from_secs(5),
            cells,
            provider: Some((model, "m".into())),
            loaded: warren_config::load(state_dir, None, &[])?,
            env: HashMap::new(),
            max_attempts: 3,
            policy: Layer::unrestricted("test"),
            max_turns: None,
            approval_timeout: Duration::from_secs(60),
            memory: None,
            audit_prompts: false,
            egress_resolve: HashMap::new(),
            egress_dial: HashMap::new(),
            skills: Vec::new(),
            mcp_annotation_approval: true,
            plans: Default::default(),
        })
    }

    /// Task directories' and copy-on-write layers' root: `work_dir`, else `state_dir`.
    pub fn work_dir(&self) -> &Path {
        self.work_dir.as_deref().unwrap_or(&self.state_dir)
    }
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
        .chain([crate::delegate::DELEGATE.to_owned()])
        .collect()
}

/// Parse a stored or submitted manifest (errors name the origin, line and column).
pub fn parse_manifest(
    origin: &Path,
    text: &str,
) -> Result<Manifest, warren_config::manifest::ManifestError> {
    let names = tool_names();
    let known: Vec<&str> = names.iter().map(String::as_str).collect();
    warren_config::manifest::parse(origin, text, &known)
}

/// Idle this long (blocking threads linger 10 s), the daemon returns freed memory.
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(12);

/// The shortest interval between two scheduling passes.
const SCHEDULING_QUANTUM: Duration = Duration::from_millis(10);

impl Engine {
    /// The folders of Agent Skills tasks get theirs from ([`Options::skills`]).
    pub fn skill_roots(&self) -> &[PathBuf] {
        &self.opts.skills
    }
}

impl Engine {
    /// The daemon's engine over `store`. Requeues the tasks this worker held when it last
    /// stopped.
    pub fn new(store: Arc<dyn Store>, opts: Options) -> Result<Arc<Self>, StoreError> {
        let released = store.release_worker(&opts.worker)?;
        if !released.is_empty() {
            tracing::info!(
                "resuming {} task(s) this worker held: {}",
                released.len(),
                released.join(" ")
            );
        }
        let engine = Self::build(store, opts);
        // Other nodes sharing the store: a task they queue wakes the scheduler, an event they
        // record wakes the streams (stores that cannot tell are polled).
        let weak = Arc::downgrade(&engine);
        engine.store.on_change(Arc::new(move |change| {
            if let Some(e) = weak.upgrade() {
                e.touch();
                if change == StoreChange::Queue {
                    e.wake.notify_one();
                }
            }
        }));
        engine.audit.record(
            None,
            AuditKind::DaemonStart.as_str(),
            &json!({"worker": engine.opts.worker, "pid": std::process::id(), "resumed": released}),
        );
        Ok(engine)
    }

    /// An engine for one task run in this process (`warren run`): no scheduling loop, no
    /// daemon records; the task is recorded, journalled and audited like a daemon's.
    pub fn local(store: Arc<dyn Store>, opts: Options) -> Arc<Self> {
        Self::build(store, opts)
    }

    fn build(store: Arc<dyn Store>, opts: Options) -> Arc<Self> {
        let mut redactor = Redactor::from_env(&opts.env);
        if let Ok(t) = std::fs::read_to_string(opts.state_dir.join("token")) {
            redactor.add(t.trim());
        }
        let audit = Auditor::new(Arc::clone(&store), Arc::new(redactor));
        let approval_timeout = opts.approval_timeout;
        let sched = Scheduler::new(
            Arc::clone(&store),
            opts.limits.clone(),
            opts.worker.clone(),
            opts.lease,
        );
        Arc::new_cyclic(|me| Engine {
            me: me.clone(),
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
        })
    }

    /// Handle one operation for `caller`: authorize, act or read, audit, map errors to one
    /// [`ErrorCode`]. Every front end (HTTP API, CLI, MCP) goes through here.
    pub async fn handle(self: &Arc<Self>, caller: &Caller, op: Op) -> Result<Answer, ActionError> {
        crate::action::authorize(caller, &op)?;
        let control = Control {
            store: Arc::clone(&self.store),
            audit: self.audit.clone(),
        };
        // Blocking work (SQLite, diffs, canonicalizing paths) off the async threads.
        let (engine, caller2, op2) = (Arc::clone(self), caller.clone(), op.clone());
        let shared = tokio::task::spawn_blocking(move || {
            let diff = |id: &str| engine.diff(id);
            control.handle(&caller2, &op2, &diff)
        })
        .await
        .map_err(|e| ActionError::internal(e.to_string()))?;
        if let Some(r) = shared {
            if matches!(op, Op::Act(_)) && r.is_ok() {
                self.touch();
            }
            return r;
        }
        match op {
            Op::Act(Action::Submit(s)) => {
                let (engine, by) = (Arc::clone(self), caller.name.clone());
                let rec = tokio::task::spawn_blocking(move || engine.submit(s, &by))
                    .await
                    .map_err(|e| ActionError::internal(e.to_string()))??;
                Ok(Answer::Task(rec))
            }
            Op::Act(Action::Cancel { id, reason }) => {
                let reason = reason.unwrap_or_else(|| "cancelled by request".into());
                Ok(Answer::Task(self.cancel(&id, &reason, &caller.name).await?))
            }
            Op::Act(Action::Retry { id, fresh }) => {
                Ok(Answer::Task(self.retry(&id, fresh, &caller.name)?))
            }
            Op::Act(Action::Decide {
                id,
                approve,
                remember,
                reason,
            }) => {
                let reason = reason.unwrap_or_else(|| {
                    if approve {
                        String::new()
                    } else {
                        "denied by the operator".into()
                    }
                });
                let d = Decision {
                    approve,
                    remember: remember && approve,
                    reason,
                    by: caller.name.clone(),
                };
                Ok(Answer::Approval(self.decide(&id, d)?))
            }
            Op::Ask(Query::Approval { id }) => {
                if !warren_protocol::api::is_task_id(&id) {
                    return Err(ActionError::invalid(format!("{id:?} is not a task id")));
                }
                self.store.get_task(&id)?;
                self.desk.pending(&id).map(Answer::Approval).ok_or_else(|| {
                    ActionError::not_found(format!("task {id} is not waiting for approval"))
                })
            }
            // Handled by `Control` above.
            Op::Act(
                Action::Deploy { .. } | Action::RemoveAgent { .. } | Action::RemoveRule { .. },
            )
            | Op::Ask(_) => Err(ActionError::internal("unreachable: handled by Control")),
        }
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

    pub(crate) fn event(&self, task: &str, kind: EventKind, payload: Value) {
        let text = self.audit.redactor().redact(&payload.to_string());
        let payload = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if let Err(e) = self.store.append_event(Some(task), kind.as_str(), &payload) {
            tracing::warn!("task {task}: recording {kind}: {e}");
        }
        self.touch();
    }

    /// Queue a task.
    fn submit(&self, s: SubmitTask, by: &str) -> Result<TaskView, ActionError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ActionError::new(
                ErrorCode::Unavailable,
                "the daemon is shutting down",
            ));
        }
        let plan = s.plan;
        let mut task = self.new_task(s)?;
        if plan {
            task.lineage.kind = warren_store::TaskKind::Plan;
        }
        // Audited under the scheduler's lock, which its claims take too: a task's
        // `task.submitted` always precedes its `task.started`.
        let sched = lock(&self.sched);
        let rec = sched.submit(task).map_err(|e| match e {
            SchedError::QueueFull { .. } => {
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                ActionError::new(ErrorCode::QueueFull, e.to_string())
            }
            SchedError::Store(e) => e.into(),
        })?;
        self.audit_submitted(&rec, by);
        drop(sched);
        self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
        self.touch();
        self.wake.notify_one();
        Ok(crate::action::task_view(rec))
    }

    pub(crate) fn audit_submitted(&self, rec: &TaskRecord, by: &str) {
        self.audit.record(
            Some(&rec.id),
            AuditKind::TaskSubmitted.as_str(),
            &json!({"agent": rec.agent, "agent_version": rec.agent_version, "goal": rec.goal, "priority": rec.priority, "workspace": rec.workspace, "by": by}),
        );
    }

    /// A submission checked and resolved into a new task (the agent's latest version, the
    /// workspace's real path).
    fn new_task(&self, s: SubmitTask) -> Result<NewTask, ActionError> {
        let agent = self.store.get_agent(&s.agent, None).map_err(|e| match e {
            StoreError::NotFound { .. } => ActionError::not_found(format!(
                "agent {:?} is not deployed (deploy it with `warren agent deploy FILE`)",
                s.agent
            )),
            other => other.into(),
        })?;
        check_goal(&s.goal)?;
        let workspace = match s.workspace {
            None => None,
            Some(w) => Some(real_workspace(&w)?),
        };
        Ok(NewTask {
            id: new_task_id(),
            agent: agent.name,
            agent_version: agent.version,
            goal: s.goal,
            priority: s.priority,
            workspace,
            lineage: Default::default(),
        })
    }

    /// Cancel a task: a queued one at once; a running one has its cell killed, then is
    /// recorded as cancelled. Waits (up to 10 s) for a running task to stop. A task that
    /// reached its end before the cancellation took effect is a conflict, not a success.
    pub(crate) async fn cancel(
        &self,
        id: &str,
        reason: &str,
        by: &str,
    ) -> Result<TaskView, ActionError> {
        let r = self.cancel_one(id, reason, by).await?;
        // Cancel propagates: a plan's steps, a delegating task's children.
        self.cancel_children(id, &format!("its parent {id} was cancelled"))
            .await;
        Ok(r)
    }

    /// Cancel every unfinished child of `id` (and theirs).
    pub(crate) async fn cancel_children(&self, id: &str, reason: &str) {
        for c in crate::plan::children(&*self.store, id).unwrap_or_default() {
            if !c.state.is_terminal() {
                let _ = Box::pin(self.cancel(&c.id, reason, "warren")).await;
            }
        }
    }

    async fn cancel_one(&self, id: &str, reason: &str, by: &str) -> Result<TaskView, ActionError> {
        let t = self.store.get_task(id)?;
        let audit = |id: &str| {
            self.audit.record(
                Some(id),
                AuditKind::TaskCancelled.as_str(),
                &json!({"reason": reason, "by": by}),
            );
        };
        match t.state {
            TaskState::Queued => {
                let r = self
                    .store
                    .transition(id, TaskState::Cancelled, Some(reason))?;
                audit(id);
                self.finished_metric(TaskState::Cancelled);
                self.touch();
                Ok(crate::action::task_view(r))
            }
            TaskState::Running | TaskState::AwaitingApproval => {
                let run = lock(&self.running).get(id).cloned();
                let r = match run {
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
                        self.store.get_task(id)?
                    }
                    // Held by another worker (or a dead one): record it; that worker's lease
                    // renewal fails and it stops the task.
                    None => {
                        let r = self
                            .store
                            .transition(id, TaskState::Cancelled, Some(reason))?;
                        audit(id);
                        self.touch();
                        r
                    }
                };
                match r.state {
                    TaskState::Cancelled | TaskState::Running | TaskState::AwaitingApproval => {
                        Ok(crate::action::task_view(r))
                    }
                    other => Err(ActionError::conflict(format!(
                        "task {id} ended as {} before the cancellation took effect",
                        other.as_str()
                    ))),
                }
            }
            s => Err(ActionError::conflict(format!(
                "task {id} is already {}",
                s.as_str()
            ))),
        }
    }

    /// Queue a finished task again, with a fresh count of attempts. A task that was stopped
    /// before it finished (failed on an error, cancelled, interrupted) resumes from its
    /// checkpoints and its layer; one that reached an outcome, or any task with `fresh`,
    /// starts over.
    fn retry(&self, id: &str, fresh: bool, by: &str) -> Result<TaskView, ActionError> {
        let t = self.store.get_task(id)?;
        if !matches!(
            t.state,
            TaskState::Failed | TaskState::Cancelled | TaskState::Interrupted
        ) {
            return Err(ActionError::conflict(format!(
                "task {id} is {}; only failed, cancelled or interrupted tasks can be retried",
                t.state.as_str()
            )));
        }
        if t.agent_version == 0 {
            return Err(ActionError::conflict(format!(
                "task {id} was started by `warren run`; run it again there (its changes: `warren diff {id}`)"
            )));
        }
        let reached_outcome = self.store.get_artifact(id, "result").is_ok();
        let fresh = fresh || reached_outcome;
        if fresh {
            self.store.clear_progress(id)?;
            let layer = warren_cell::spec::CowLayer::at(self.opts.work_dir(), id);
            if let Err(e) = cow::discard(&layer) {
                return Err(ActionError::internal(format!(
                    "task {id}: discarding its changes to start over: {e}"
                )));
            }
        }
        let how = if fresh {
            "retried from the start"
        } else {
            "retried: resuming from checkpoints"
        };
        let r = self.store.transition(id, TaskState::Queued, Some(how))?;
        self.audit.record(
            Some(id),
            AuditKind::TaskRetried.as_str(),
            &json!({"fresh": fresh, "by": by}),
        );
        self.touch();
        self.wake.notify_one();
        Ok(crate::action::task_view(r))
    }

    /// A person's decision on a task waiting for approval.
    fn decide(&self, id: &str, d: Decision) -> Result<PendingView, ActionError> {
        if !warren_protocol::api::is_task_id(id) {
            return Err(ActionError::invalid(format!("{id:?} is not a task id")));
        }
        self.store.get_task(id)?;
        self.desk
            .decide(id, d)
            .map_err(|e| ActionError::conflict(e.to_string()))
    }

    /// What a task waits for, if anything.
    pub fn pending_approval(&self, id: &str) -> Option<PendingView> {
        self.desk.pending(id)
    }

    /// The unified diff of a task's workspace changes (empty when none).
    pub fn diff(&self, id: &str) -> Result<String, ActionError> {
        stored_diff(&*self.store, self.opts.work_dir(), id)
    }

    fn finished_metric(&self, s: TaskState) {
        *lock(&self.metrics.finished).entry(s.as_str()).or_default() += 1;
    }

    pub(crate) fn provider(
        &self,
        manifest: &Manifest,
    ) -> Result<(Arc<dyn Provider>, String), crate::provider::ProviderError> {
        if let Some((p, model)) = &self.opts.provider {
            return Ok((Arc::clone(p), model.clone()));
        }
        let env = |k: &str| self.opts.env.get(k).filter(|v| !v.is_empty()).cloned();
        let loaded = &self.opts.loaded;
        let kind = crate::provider::kind(manifest.provider.as_deref(), loaded, &env)?;
        let (config, default_model) = crate::provider::config(kind, loaded, &env);
        let model = manifest
            .model
            .clone()
            .or_else(|| loaded.config.agent.model.clone())
            .unwrap_or_else(|| default_model.to_owned());
        let mut cache = lock(&self.providers);
        if let Some(p) = cache.get(&kind) {
            return Ok((Arc::clone(p), model));
        }
        let p = warren_llm::build(config)
            .map_err(|source| crate::provider::ProviderError::Build { kind, source })?;
        cache.insert(kind, Arc::clone(&p));
        Ok((p, model))
    }

    /// Run the scheduling loop until [`Engine::shutdown`]: start tasks while slots are free,
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
                        tracing::info!("recovered {} task(s) whose worker stopped", ids.len());
                        self.touch();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("recovering expired leases: {e}"),
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
                        tracing::warn!("scheduling: {e}");
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
                Err(e) => tracing::warn!("renewing the lease of {id}: {e}"),
            }
        }
    }

    /// Stop accepting and starting tasks; stop running ones and requeue them, so the next
    /// start resumes them from their checkpoints. Returns once every task has stopped.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.audit.record(
            None,
            AuditKind::DaemonStop.as_str(),
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

    /// Whether [`Engine::shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    async fn run_task(self: Arc<Self>, task: TaskRecord) {
        let (tx, rx) = watch::channel(None);
        self.run_claimed(task, None, tx, rx, None).await;
    }

    /// Run a claimed task to its end and record the end: the runner's one entry point, for the
    /// scheduler's tasks and `warren run`'s alike. `manifest`: the manifest to run (`warren
    /// run`'s, built from its flags), else the task's agent version from the store. `watch`
    /// sees every agent event as it happens (a terminal view).
    pub(crate) async fn run_claimed(
        &self,
        task: TaskRecord,
        manifest: Option<Manifest>,
        tx: watch::Sender<Option<Stop>>,
        rx: watch::Receiver<Option<Stop>>,
        watch: Option<&mut (dyn FnMut(&AgentEvent) + Send)>,
    ) -> (TaskRecord, Option<Report>) {
        let id = task.id.clone();
        let run = Arc::new(Running {
            stop: tx,
            cell: Mutex::new(None),
        });
        lock(&self.running).insert(id.clone(), Arc::clone(&run));
        let (end, report) = self.drive(&task, manifest, &run, rx, watch).await;
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
            tracing::warn!("task {id}: recording its end: {e}");
        }
        let last = self.store.get_task(&id).unwrap_or(task);
        self.audit.record(
            Some(&id),
            AuditKind::TaskState.as_str(),
            &json!({"state": last.state.as_str(), "reason": last.reason, "attempt": last.attempts}),
        );
        lock(&self.running).remove(&id);
        self.desk.withdraw(&id);
        lock(&self.sched).finished(&id);
        self.touch();
        self.wake.notify_one();
        (last, report)
    }

    /// Run one task in this process (`warren run`): recorded in the store as queued and
    /// claimed by this process at once, then driven by the same runner as the daemon's tasks
    /// (same journal, events, audit, budgets). Its lease is renewed while it runs; if the
    /// process dies, a daemon finds the lease expired and marks the task interrupted.
    /// `stop` ends it early (a signal). Returns the task as it ended and the agent's report.
    pub async fn run_local(
        self: &Arc<Self>,
        submit: LocalTask,
        stop: (watch::Sender<Option<Stop>>, watch::Receiver<Option<Stop>>),
        watch: &mut (dyn FnMut(&AgentEvent) + Send),
    ) -> Result<(TaskRecord, Option<Report>), ActionError> {
        check_goal(&submit.goal)?;
        let workspace = match &submit.workspace {
            Some(w) => Some(real_workspace(w)?),
            None => None,
        };
        let task = self.store.submit_claimed(
            NewTask {
                id: submit.id,
                agent: submit.manifest.name.clone(),
                agent_version: 0,
                goal: submit.goal,
                priority: 0,
                workspace,
                lineage: Default::default(),
            },
            &self.opts.worker,
            self.opts.lease,
        )?;
        self.audit_submitted(&task, &submit.by);
        let renew = {
            let (store, id, worker, lease) = (
                Arc::clone(&self.store),
                task.id.clone(),
                self.opts.worker.clone(),
                self.opts.lease,
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    if let Err(e) = store.renew(&id, &worker, lease) {
                        tracing::warn!("task {id}: renewing its lease: {e}");
                    }
                }
            })
        };
        let (tx, rx) = stop;
        let ended = self
            .run_claimed(task, Some(submit.manifest), tx, rx, Some(watch))
            .await;
        renew.abort();
        Ok(ended)
    }

    /// Worker name on leases.
    pub fn worker(&self) -> &str {
        &self.opts.worker
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.opts.limits
    }

    /// Tasks queued (all workers), for `/health` and `/metrics`.
    pub fn queued_count(&self) -> Result<u64, ActionError> {
        Ok(self.store.count(TaskState::Queued)?)
    }

    /// At most `n` events after event `after`, oldest first: one task's (`task`), or every
    /// task's (`None`). What event streams read; unlike [`Query::Events`], a task that does not
    /// exist is no error (its events are none).
    pub fn events_since(
        &self,
        task: Option<&str>,
        after: i64,
        n: u32,
    ) -> Result<Vec<warren_protocol::api::EventView>, ActionError> {
        let events = self.store.events_since(task, after, n)?;
        Ok(events.into_iter().map(crate::action::event_view).collect())
    }

    /// A task's lifecycle state (`not_found` for an unknown task, `invalid_request` for
    /// something that cannot be a task id).
    pub fn task_state(&self, id: &str) -> Result<TaskState, ActionError> {
        if !warren_protocol::api::is_task_id(id) {
            return Err(ActionError::invalid(format!("{id:?} is not a task id")));
        }
        Ok(self.store.get_task(id)?.state)
    }
}

/// A task for [`Engine::run_local`].
pub struct LocalTask {
    /// Its id (also its cell's and layer's name).
    pub id: String,
    /// What to achieve.
    pub goal: String,
    /// The project directory (copy-on-write in the cell), if any.
    pub workspace: Option<String>,
    /// The manifest to run (agent name, model, tools, limits).
    pub manifest: Manifest,
    /// Who started it (audited).
    pub by: String,
}

fn check_goal(goal: &str) -> Result<(), ActionError> {
    if goal.trim().is_empty() {
        return Err(ActionError::invalid("goal: must not be empty"));
    }
    if goal.len() > warren_protocol::api::MAX_GOAL_BYTES {
        return Err(ActionError::invalid(
            "goal: longer than 64 KiB; put long material in the workspace",
        ));
    }
    Ok(())
}

/// A submitted workspace: absolute, resolved, a directory.
fn real_workspace(w: &str) -> Result<String, ActionError> {
    let p = Path::new(w);
    if !p.is_absolute() {
        return Err(ActionError::invalid(format!(
            "workspace: {w:?} is not an absolute path"
        )));
    }
    let real = std::fs::canonicalize(p)
        .map_err(|e| ActionError::invalid(format!("workspace: {w}: {e}")))?;
    if !real.is_dir() {
        return Err(ActionError::invalid(format!(
            "workspace: {w} is not a directory"
        )));
    }
    Ok(real.display().to_string())
}

/// A task's changes as a unified diff: the stored artifact once the task ended, else computed
/// from its layer (bounded to 10 s); empty when there are none.
pub fn stored_diff(store: &dyn Store, state_dir: &Path, id: &str) -> Result<String, ActionError> {
    let t = store.get_task(id)?;
    match store.get_artifact(id, "diff") {
        Ok(d) => return Ok(String::from_utf8_lossy(&d).into_owned()),
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(ws) = t.workspace else {
        return Ok(String::new());
    };
    let layer = warren_cell::spec::CowLayer::at(state_dir, id);
    if !layer.upper.exists() {
        return Ok(String::new());
    }
    cow::diff_with(
        &layer,
        Path::new(&ws),
        &crate::runner::diff_limits(Duration::from_secs(10)),
    )
    .map_err(|e| ActionError::internal(format!("task {id}: its diff: {e}")))
}
