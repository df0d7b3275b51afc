//! The task runner: one claimed task, from its manifest to its end.
//!
//! Both the daemon's scheduler and `warren run` call [`Engine::run_claimed`]
//! (`engine.rs`), which calls [`Engine::drive`] here:
//!
//! 1. **load**: the manifest (the version the task was submitted with, or `warren run`'s);
//!    refuse to resume past the attempt bound;
//! 2. **prepare**: provider and model, capabilities (manifest ∩ policy), the cell spec with
//!    Landlock scopes, the egress proxy and `/cap/http` when the task may reach the network,
//!    the task directories (`/task`, `/logs`), the cell (through [`crate::cells::Cells`]);
//! 3. **assemble**: the agent with the store's checkpoints as its journal, the gate (audit,
//!    approvals, budgets), memory tools and reflections when granted;
//! 4. **run** until the agent ends, a stop request (cancel, shutdown, lease lost, signal) or
//!    the timeout — a stop terminates the cell so a command in flight ends too;
//! 5. **finish**: the result and diff artifacts, the task directory's status, memory.
//!
//! Agent events become task events here ([`Engine::observe`]): streamed text coalesced per
//! stretch, everything else one event each.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use warren_agent::{Agent, AgentConfig, AgentError, AgentEvent, Outcome, Report};
use warren_cell::{Cell, CellSpec, Workspace, WorkspaceMode, cow};
use warren_config::manifest::{Manifest, McpTransport};
use warren_llm::Provider;
use warren_protocol::api::{AuditKind, EventKind};
use warren_protocol::mount::{Mount, MountKind};
use warren_store::{TaskRecord, TaskState};

use crate::capabilities::{Capabilities, Layer};
use crate::engine::{Engine, Running, Stop, lock, parse_manifest};
use crate::gate::{Approvals, TaskGate};
use crate::journal::StoreJournal;
use crate::taskdir::TaskDirs;

/// How the reason of a task stopped by its timeout starts (`timed out after 30m0s (the
/// agent's timeout)`): `warren run` exits with the timeout's code for it.
pub const TIMED_OUT: &str = "timed out after";

/// Where a task's skills are in its cell (read-only).
pub const SKILLS_MOUNT: &str = "/skills";

/// A task's running egress proxy; stopped when dropped.
struct EgressProxy {
    socket: PathBuf,
    cap_dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
    cap: tokio::task::JoinHandle<()>,
    /// The same proxy on a loopback port, for the host-side clients of the task's HTTP MCP
    /// servers (`http://127.0.0.1:PORT`), when it has any.
    tcp: Option<(String, tokio::task::JoinHandle<()>)>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cap.abort();
        if let Some((_, t)) = &self.tcp {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// How a task's run ended, before it is recorded.
pub(crate) enum End {
    /// In a final state, for this reason.
    Final(TaskState, String),
    /// Back to the queue (the daemon stops; the task resumes from its checkpoints).
    Requeue(String),
    /// Another worker has it: record nothing.
    Abandon,
}

/// What a prepared task runs with.
struct Prepared {
    provider: Arc<dyn Provider>,
    model: String,
    caps: Capabilities,
    cell: Arc<dyn Cell>,
    dirs: TaskDirs,
    reader: warren_memory::access::Reader,
    skills: Vec<warren_skills::Skill>,
    mcp: Vec<Arc<warren_mcp_client::Session>>,
    mcp_cells: Vec<Arc<dyn Cell>>,
    _proxy: Option<EgressProxy>,
    /// `/cap/ws` and `/cap/nostr`, served live over FUSE (detached when the task ends).
    _caps: Vec<warren_nsfuse::Mounted>,
}

impl Engine {
    /// Run one claimed task to its end (or until stopped).
    pub(crate) async fn drive(
        &self,
        task: &TaskRecord,
        manifest: Option<Manifest>,
        run: &Running,
        mut stop: watch::Receiver<Option<Stop>>,
        mut watch: Option<&mut (dyn FnMut(&AgentEvent) + Send)>,
    ) -> (End, Option<Report>) {
        let id = &task.id;
        let manifest = match manifest {
            Some(m) => m,
            None => match self.load(task) {
                Ok(m) => m,
                Err(end) => return (end, None),
            },
        };
        if task.lineage.kind == warren_store::TaskKind::Plan {
            return (self.drive_plan(task, &manifest, run, stop).await, None);
        }
        let mut p = match self.prepare(task, &manifest).await {
            Ok(p) => p,
            Err(end) => return (end, None),
        };
        *lock(&run.cell) = Some(Arc::clone(&p.cell));
        // Stopped while the cell started?
        let early = stop.borrow().clone();
        if let Some(s) = early {
            close_mcp(std::mem::take(&mut p.mcp), std::mem::take(&mut p.mcp_cells)).await;
            drop_cell(p.cell, &run.cell).await;
            return (self.stopped(id, s, &p.dirs), None);
        }
        let mut config = self.agent_config(task, &manifest, p.model.clone());
        // Small local models behind OpenAI-compatible servers write calls as text.
        config.text_tool_calls = p.provider.name() == "openai";
        if !p.skills.is_empty() {
            config.system_prompt.push_str("\n\n");
            config
                .system_prompt
                .push_str(&warren_skills::catalog(&p.skills, SKILLS_MOUNT));
        }
        let wall = config.max_wall;
        let (agent, goal, memory) = self.assemble(task, &manifest, &p, config).await;
        let mut text = String::new();
        let mut observe = |e: &AgentEvent| {
            if let Some(w) = watch.as_deref_mut() {
                w(e);
            }
            self.observe(id, e, &mut text);
        };
        let outcome = tokio::select! {
            // A stop request that has arrived wins over an agent that ends in the same poll.
            biased;
            s = wait_stop(&mut stop) => Err(Some(s)),
            r = agent.run(&goal, &mut observe) => Ok(r),
            () = tokio::time::sleep(wall) => Err(None),
        };
        self.flush_text(id, &mut text);
        if outcome.is_err() {
            // A command may still run in the cell (its blocking thread holds the cell): stop it.
            p.cell.terminate();
        }
        drop(agent);
        let layer = p.cell.cow_layer().cloned();
        drop_cell(Arc::clone(&p.cell), &run.cell).await;
        close_mcp(std::mem::take(&mut p.mcp), std::mem::take(&mut p.mcp_cells)).await;
        let dirs = &p.dirs;
        match outcome {
            Err(Some(s)) => (self.stopped(id, s, dirs), None),
            Err(None) => {
                dirs.set_status("failed");
                (
                    End::Final(
                        TaskState::Failed,
                        format!("{TIMED_OUT} {wall:?} (the agent's timeout)"),
                    ),
                    None,
                )
            }
            Ok(Err(AgentError::Journal(e))) => {
                dirs.set_status("interrupted");
                (
                    End::Final(TaskState::Interrupted, format!("its journal failed: {e}")),
                    None,
                )
            }
            Ok(Err(e)) => {
                dirs.set_status("failed");
                (End::Final(TaskState::Failed, e.to_string()), None)
            }
            Ok(Ok(report)) => {
                let end = self.completed(task, &report, layer, dirs).await;
                if let Some(m) = &memory {
                    self.remember(m, task, &report, &p.provider, &p.model).await;
                }
                (end, Some(report))
            }
        }
    }

    /// The manifest version a queued task was submitted with; refuses to resume past the
    /// attempt bound or without it.
    fn load(&self, task: &TaskRecord) -> Result<Manifest, End> {
        let interrupted = |why: String| End::Final(TaskState::Interrupted, why);
        if task.attempts > self.opts.max_attempts {
            return Err(interrupted(format!(
                "claimed {} times without finishing (at most {}); retry it to try again",
                task.attempts, self.opts.max_attempts
            )));
        }
        if task.agent_version == 0 {
            return Err(interrupted(format!(
                "started by `warren run`, which stopped before it finished; its changes are kept (`warren diff {}`)",
                task.id
            )));
        }
        self.store
            .get_agent(&task.agent, Some(task.agent_version))
            .map_err(|e| e.to_string())
            .and_then(|a| {
                parse_manifest(
                    Path::new(&format!("agent {} v{}", a.name, a.version)),
                    &a.manifest,
                )
                .map_err(|e| e.to_string())
            })
            .map_err(|e| interrupted(format!("cannot load its agent: {e}")))
    }

    /// Everything the task runs with, up to a started cell.
    async fn prepare(&self, task: &TaskRecord, manifest: &Manifest) -> Result<Prepared, End> {
        let id = &task.id;
        let steps = self.store.checkpoints(id).map(|c| c.len()).unwrap_or(0);
        if steps > 0 {
            self.metrics.resumed.fetch_add(1, Ordering::Relaxed);
            self.event(
                id,
                EventKind::TaskResumed,
                json!({"checkpoints": steps, "attempt": task.attempts}),
            );
        }
        let (provider, model) = self
            .provider(manifest)
            .map_err(|e| End::Final(TaskState::Failed, format!("model provider: {e}")))?;
        let caps = self.task_caps(task, manifest);
        let mut spec = self
            .cell_spec(task, manifest)
            .map_err(|e| End::Final(TaskState::Interrupted, e.to_string()))?;
        if caps.restricts_paths() {
            spec.scopes = caps.scopes();
        }
        // Network: only through this task's proxy, only to what both manifest and policy allow.
        let http_mcp = manifest
            .mcp_servers
            .iter()
            .any(|m| matches!(m.transport, McpTransport::Http { .. }));
        let proxy = self
            .start_egress(id, &caps.network(), &spec, http_mcp)
            .map_err(|e| End::Final(TaskState::Failed, format!("egress proxy: {e}")))?;
        if let Some(p) = &proxy {
            spec.egress = Some(p.socket.clone());
            spec.extra_mounts.push(Mount {
                target: "/cap/http".into(),
                kind: MountKind::Bind {
                    source: p.cap_dir.display().to_string(),
                    readonly: false,
                },
            });
        }
        let (cap_mounts, live_caps) = self
            .live_caps(task, manifest, &caps, &spec)
            .map_err(|e| End::Final(TaskState::Failed, format!("capability files: {e}")))?;
        spec.extra_mounts.extend(cap_mounts);
        let skills = self.skills(id, manifest).await?;
        if !skills.is_empty() {
            spec.extra_mounts.push(Mount {
                target: SKILLS_MOUNT.into(),
                kind: MountKind::Bind {
                    source: self.skills_dir(id).display().to_string(),
                    readonly: true,
                },
            });
        }
        self.audit.record(
            Some(id),
            AuditKind::TaskStarted.as_str(),
            &json!({"attempt": task.attempts, "worker": self.opts.worker, "checkpoints": steps,
                    "capabilities": {"scopes": spec.scopes, "network": caps.network()},
                    "skills": skills.iter().map(|s| &s.name).collect::<Vec<_>>()}),
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
        let dirs = TaskDirs::create(self.opts.work_dir(), id, &task_spec, identity)
            .map_err(|e| End::Final(TaskState::Failed, format!("task directory: {e}")))?;
        spec.extra_mounts.splice(0..0, dirs.mounts());
        self.write_inputs(task, &dirs)
            .map_err(|e| End::Final(TaskState::Failed, format!("its inputs: {e}")))?;
        // A resumed task's predecessor cell (same id, killed with its daemon) may hold its
        // overlay or cgroup for a moment longer: retry its start a few times.
        let tries = if task.attempts > 1 { 8 } else { 1 };
        let server_spec = self.mcp_server_spec(task, manifest, &spec);
        let cell = self
            .start_cell(spec, tries)
            .await
            .map_err(|e| End::Final(TaskState::Failed, format!("cell: {e}")))?;
        self.metrics.cells_started.fetch_add(1, Ordering::Relaxed);
        let http_proxy = proxy
            .as_ref()
            .and_then(|p| p.tcp.as_ref())
            .map(|(u, _)| u.clone());
        let (mcp, mcp_cells) = match server_spec {
            Ok(server_spec) => {
                self.start_mcp(id, manifest, &server_spec, http_proxy.as_deref())
                    .await
            }
            Err(e) => Err(e.to_string()),
        }
        .map_err(|e| End::Final(TaskState::Failed, e))?;
        Ok(Prepared {
            provider,
            model,
            caps,
            cell,
            dirs,
            reader,
            skills,
            mcp,
            mcp_cells,
            _proxy: proxy,
            _caps: live_caps,
        })
    }

    /// A plan step's inputs as files under its `/task/inputs/<step>/` (the task directory is
    /// read-only in the cell): each producing task's result and diff, from the store.
    fn write_inputs(&self, task: &TaskRecord, dirs: &TaskDirs) -> std::io::Result<()> {
        let Some(b) = crate::plan::Bounds::of(task) else {
            return Ok(());
        };
        for (step, producer) in &b.inputs {
            // Step ids were validated with the plan; checked again where one becomes a path.
            if !crate::plan::valid_id(step) {
                continue;
            }
            let dir = dirs.task.join("inputs").join(step);
            std::fs::create_dir_all(&dir)?;
            for (artifact, file) in [("result", "result.json"), ("diff", "diff.patch")] {
                let data = self
                    .store
                    .get_artifact(producer, artifact)
                    .unwrap_or_default();
                std::fs::write(dir.join(file), data)?;
            }
        }
        Ok(())
    }

    /// The namespace of a task's stdio MCP servers: the task's own rules (its mounts, path
    /// scopes and egress proxy) with the workspace read-only — a server's changes would
    /// bypass review — and none of the task's directories (`/task`, `/logs`, `/cap/http`,
    /// `/skills`).
    fn mcp_server_spec(
        &self,
        task: &TaskRecord,
        manifest: &Manifest,
        task_spec: &CellSpec,
    ) -> Result<CellSpec, WorkspaceGone> {
        let mut s = self.cell_spec(task, manifest)?;
        s.id = None;
        // A server is a program: it runs in a process cell whatever the agent's tier.
        s.tier = warren_cell::Tier::Process;
        if let Some(w) = &mut s.workspace {
            w.mode = WorkspaceMode::ReadOnly;
        }
        s.scopes = task_spec.scopes.clone();
        s.egress = task_spec.egress.clone();
        Ok(s)
    }

    /// Start the manifest's MCP servers, each stdio server in a cell of its own. The first
    /// that fails fails the task (the servers started are stopped), naming it and why.
    async fn start_mcp(
        &self,
        id: &str,
        manifest: &Manifest,
        spec: &CellSpec,
        http_proxy: Option<&str>,
    ) -> Result<(Vec<Arc<warren_mcp_client::Session>>, Vec<Arc<dyn Cell>>), String> {
        let (mut sessions, mut cells) = (Vec::new(), Vec::new());
        for decl in &manifest.mcp_servers {
            let started = match &decl.transport {
                McpTransport::Stdio { .. } => match self.start_cell(spec.clone(), 1).await {
                    Ok(cell) => {
                        self.metrics.cells_started.fetch_add(1, Ordering::Relaxed);
                        cells.push(Arc::clone(&cell));
                        warren_mcp_client::Session::start_stdio(decl, Arc::clone(&cell))
                            .await
                            .map(|s| (s, json!({"cell": cell.id()})))
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(format!("MCP server {}: its cell: {e}", decl.name)),
                },
                McpTransport::Http { url } => {
                    warren_mcp_client::Session::start_http(decl, url, http_proxy, &self.opts.env)
                        .await
                        .map(|s| (s, json!({"url": url, "through": "the task's egress proxy"})))
                        .map_err(|e| e.to_string())
                }
            };
            match started {
                Ok((session, mut record)) => {
                    record["server"] = json!(decl.name);
                    record["tools"] = json!(
                        session
                            .tools()
                            .iter()
                            .map(|t| &t.spec.name)
                            .collect::<Vec<_>>()
                    );
                    self.audit.record(Some(id), "mcp.server_started", &record);
                    sessions.push(Arc::new(session));
                }
                Err(e) => {
                    self.audit.record(
                        Some(id),
                        "mcp.server_failed",
                        &json!({"server": decl.name, "error": e}),
                    );
                    close_mcp(sessions, cells).await;
                    return Err(e);
                }
            }
        }
        Ok((sessions, cells))
    }

    fn skills_dir(&self, id: &str) -> PathBuf {
        self.opts.work_dir().join("tasks").join(id).join("skills")
    }

    /// The skills the manifest names, from the engine's skill folders, copied into the task's
    /// directory (mounted read-only at [`SKILLS_MOUNT`]). A named skill that is missing or
    /// invalid fails the task, naming it.
    async fn skills(
        &self,
        id: &str,
        manifest: &Manifest,
    ) -> Result<Vec<warren_skills::Skill>, End> {
        if manifest.skills.is_empty() {
            return Ok(Vec::new());
        }
        let (roots, wanted, dest) = (
            self.opts.skills.clone(),
            manifest.skills.clone(),
            self.skills_dir(id),
        );
        let copied = tokio::task::spawn_blocking(move || {
            let skills = warren_skills::select(&roots, &wanted).map_err(|e| e.to_string())?;
            // A resumed task copies again: the folder is Warren's own (the cell only ever
            // had it read-only), so nothing in it is trusted or kept.
            match std::fs::remove_dir_all(&dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", dest.display())),
            }
            for s in &skills {
                warren_skills::snapshot(s, &dest).map_err(|e| e.to_string())?;
            }
            Ok(skills)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        copied.map_err(|e| End::Final(TaskState::Failed, format!("skills: {e}")))
    }

    /// The agent for a prepared task, its goal (with reflections), and the memory it may use.
    async fn assemble(
        &self,
        task: &TaskRecord,
        manifest: &Manifest,
        p: &Prepared,
        config: AgentConfig,
    ) -> (Agent, String, Option<crate::memory_tools::Memory>) {
        let id = &task.id;
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
                let indexed = tokio::task::spawn_blocking(move || {
                    warren_memory::index::index(
                        &m2.db,
                        std::path::Path::new(&ws2),
                        m2.embedder.as_deref(),
                        &mut |_| {},
                    )
                })
                .await;
                match indexed {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("task {id}: indexing its workspace: {e}"),
                    Err(e) => tracing::warn!("task {id}: indexing its workspace: {e}"),
                }
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
        let mut config = config;
        let mut host: Vec<Arc<dyn warren_agent::tools::HostTools>> = Vec::new();
        let mut annotated = std::collections::HashMap::new();
        if !p.mcp.is_empty() {
            let tools = warren_mcp_client::McpTools::new(p.mcp.clone(), config.context_window);
            if tools.searching()
                && let Some(allowed) = &mut config.tools
            {
                allowed.push(warren_mcp_client::SEARCH_TOOL.into());
            }
            if self.opts.mcp_annotation_approval {
                for t in tools.all() {
                    if let Some(why) = &t.approval {
                        annotated.insert(t.spec.name.clone(), why.clone());
                    }
                }
            }
            host.push(Arc::new(tools));
        }
        let gate = TaskGate::new(id.clone(), p.caps.clone(), self.audit.clone())
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
                annotated,
            });
        let agent = Agent::new(
            Arc::clone(&p.provider),
            Arc::clone(&p.cell),
            config,
            Arc::new(gate),
            Some(p.dirs.logs.clone()),
        )
        .with_journal(Arc::new(StoreJournal::new(
            Arc::clone(&self.store),
            id.clone(),
        )));
        if let Some(m) = &memory {
            host.insert(
                0,
                Arc::new(crate::memory_tools::MemoryTools {
                    memory: m.clone(),
                    agent: task.agent.clone(),
                    workspace: task.workspace.clone(),
                    task: id.clone(),
                    granted: granted.clone(),
                    caps: p.caps.clone(),
                    reader: p.reader,
                }),
            );
        }
        if !manifest.modules.is_empty() {
            host.push(Arc::new(crate::wasmtools::WasmTools {
                cell: Arc::clone(&p.cell),
                modules: manifest.modules.clone(),
            }));
        }
        if manifest
            .tools
            .iter()
            .any(|t| t == crate::delegate::DELEGATE)
        {
            host.push(Arc::new(crate::delegate::Delegate {
                engine: self.me.clone(),
                task: task.clone(),
                caps: p.caps.clone(),
                budget_tokens: manifest.budget_tokens,
                runtime: tokio::runtime::Handle::current(),
            }));
        }
        let agent = if manifest.validate.is_empty() {
            agent
        } else {
            agent.with_finish_check(Arc::new(crate::validate::Validation {
                engine: self.me.clone(),
                task: id.clone(),
                validators: manifest.validate.clone(),
                max: manifest.validations.max(1),
                cell: Arc::clone(&p.cell),
                provider: Arc::clone(&p.provider),
                model: p.model.clone(),
                runtime: tokio::runtime::Handle::current(),
                failed: Mutex::new(crate::validate::failed_so_far(&*self.store, id)),
            }))
        };
        let agent = match host.len() {
            0 => agent,
            1 => agent.with_host_tools(host.remove(0)),
            _ => agent.with_host_tools(Arc::new(warren_agent::tools::Chain(host))),
        };
        (agent, goal, memory)
    }

    /// Start the task's egress proxy on a unix socket in its task directory (owned by the
    /// cell's identity, mode 0600), if its capabilities allow any destination.
    fn start_egress(
        &self,
        id: &str,
        network: &[String],
        spec: &CellSpec,
        tcp: bool,
    ) -> Result<Option<EgressProxy>, String> {
        if network.is_empty() {
            return Ok(None);
        }
        let policy = warren_egress::Policy::parse(network).map_err(|e| e.to_string())?;
        let mut config = warren_egress::Config::new(policy);
        config.resolve_override = self.opts.egress_resolve.clone();
        config.dial_override = self.opts.egress_dial.clone();
        let dir = self.opts.work_dir().join("tasks").join(id).join("net");
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
        let cap_dir = self.opts.work_dir().join("tasks").join(id).join("cap-http");
        crate::caphttp::prepare(&cap_dir, (uid, gid))
            .map_err(|e| format!("{}: {e}", cap_dir.display()))?;
        let cap = crate::caphttp::serve(
            cap_dir.clone(),
            (uid, gid),
            Arc::clone(&config),
            Arc::clone(&audit) as Arc<dyn warren_egress::Audit>,
        );
        let tcp = if tcp {
            let listener = {
                let _rt = tokio::runtime::Handle::current().enter();
                let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?
            };
            let url = format!(
                "http://{}",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            let served = tokio::spawn(warren_egress::serve_tcp(
                listener,
                Arc::clone(&config),
                Arc::clone(&audit) as Arc<dyn warren_egress::Audit>,
            ));
            Some((url, served))
        } else {
            None
        };
        let task = tokio::spawn(warren_egress::serve_unix(listener, config, audit));
        Ok(Some(EgressProxy {
            socket,
            cap_dir,
            task,
            cap,
            tcp,
        }))
    }

    /// `/cap/ws` (when the task may reach the network) and `/cap/nostr` (when its manifest
    /// asks for it), served live from the host over FUSE and bind-mounted into the cell —
    /// the same services a WebAssembly module reaches through the host's own calls. Without
    /// FUSE here (not root, no `/dev/fuse`) they are left out, and the audit says why.
    fn live_caps(
        &self,
        task: &TaskRecord,
        manifest: &Manifest,
        caps: &Capabilities,
        spec: &CellSpec,
    ) -> Result<(Vec<Mount>, Vec<warren_nsfuse::Mounted>), String> {
        let id = &task.id;
        let network = caps.network();
        let mut wanted = Vec::new();
        if !network.is_empty() {
            wanted.push("/cap/ws");
        }
        let nostr = manifest.nostr.as_ref().filter(|_| caps.allows_nostr());
        if manifest.nostr.is_some() && nostr.is_none() {
            self.audit.record(
                Some(id),
                "cap.refused",
                &json!({"cap": "/cap/nostr", "reason": "the operator's policy forbids it (nostr = false)"}),
            );
        }
        if nostr.is_some() {
            wanted.push("/cap/nostr");
        }
        if wanted.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if let Err(why) = warren_nsfuse::available() {
            self.audit.record(
                Some(id),
                "cap.unavailable",
                &json!({"caps": wanted, "reason": why}),
            );
            return Ok((Vec::new(), Vec::new()));
        }
        let policy = warren_egress::Policy::parse(&network).map_err(|e| e.to_string())?;
        let mut config = warren_egress::Config::new(policy);
        config.resolve_override = self.opts.egress_resolve.clone();
        config.dial_override = self.opts.egress_dial.clone();
        let config = Arc::new(config);
        let audit: Arc<dyn warren_egress::Audit> = Arc::new(crate::gate::EgressAudit {
            task: id.to_owned(),
            audit: self.audit.clone(),
        });
        let owner = warren_cell::spec::resolve_identity(spec);
        let base = self.opts.work_dir().join("tasks").join(id);
        let (mut mounts, mut served) = (Vec::new(), Vec::new());
        let mut serve = |name: &str, target: &str, svc: Arc<dyn warren_ns::FileService>| {
            let at = base.join(name);
            let m = warren_nsfuse::mount(&at, svc, owner)
                .map_err(|e| format!("{target} at {}: {e}", at.display()))?;
            mounts.push(Mount {
                target: target.into(),
                kind: MountKind::Bind {
                    source: at.display().to_string(),
                    readonly: false,
                },
            });
            served.push(m);
            Ok::<(), String>(())
        };
        if !network.is_empty() {
            let ws = crate::capws::WsFs::new(Arc::clone(&config), Arc::clone(&audit))
                .map_err(|e| e.to_string())?;
            serve("cap-ws", "/cap/ws", Arc::new(ws))?;
        }
        if let Some(n) = nostr {
            // One key per agent, kept on the host; the cell never sees it.
            let key = self
                .opts
                .state_dir
                .join("nostr")
                .join(format!("{}.key", task.agent));
            let identity = crate::capnostr::Identity::load_or_create(&key)?;
            let (auditor, task_id) = (self.audit.clone(), id.to_owned());
            let grant = crate::capnostr::NostrGrant {
                relays: n.relays.clone(),
                kinds: n.kinds.clone(),
                on_sign: Some(crate::capnostr::SignHook(Arc::new(move |e| {
                    auditor.record(
                        Some(&task_id),
                        "nostr.signed",
                        &json!({"id": e.id, "kind": e.kind, "pubkey": e.pubkey}),
                    );
                }))),
            };
            let svc = crate::capnostr::service(Arc::new(identity), grant, config, audit)
                .map_err(|e| e.to_string())?;
            serve("cap-nostr", "/cap/nostr", Arc::new(svc))?;
        }
        Ok((mounts, served))
    }

    async fn start_cell(&self, spec: CellSpec, tries: u32) -> Result<Arc<dyn Cell>, String> {
        let mut last = String::new();
        for attempt in 0..tries {
            if attempt > 0 {
                let ms = (50u64 << attempt).min(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let (s, cells) = (spec.clone(), Arc::clone(&self.opts.cells));
            match tokio::task::spawn_blocking(move || cells.start(&s)).await {
                Ok(Ok(c)) => return Ok(c),
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
                self.audit.record(
                    Some(id),
                    AuditKind::TaskCancelled.as_str(),
                    &json!({"reason": reason}),
                );
                dirs.set_status("cancelled");
                self.event(id, EventKind::TaskCancelled, json!({"reason": reason}));
                End::Final(TaskState::Cancelled, reason)
            }
            Stop::Signal(sig) => {
                dirs.set_status("interrupted");
                End::Final(
                    TaskState::Interrupted,
                    format!("interrupted by signal {sig}; the cell was stopped"),
                )
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
                    EventKind::TaskArtifactFailed,
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

    fn cell_spec(&self, task: &TaskRecord, m: &Manifest) -> Result<CellSpec, WorkspaceGone> {
        let mut spec = CellSpec::new(self.opts.work_dir());
        if self.opts.work_dir.is_some() {
            // The node's own state (database, socket, token) is masked or refused like the
            // work directory.
            spec.private_dirs.push(self.opts.state_dir.clone());
        }
        spec.id = Some(task.id.clone());
        spec.workspace = match &task.workspace {
            Some(ws) => {
                let host = PathBuf::from(ws);
                if !host.is_dir() {
                    return Err(WorkspaceGone { path: host });
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
        if m.tier == "wasi" {
            spec.tier = warren_cell::Tier::Wasi;
            spec.wasm_modules = m.modules.iter().map(|w| PathBuf::from(&w.path)).collect();
        }
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

    /// A task's capabilities: its manifest ∩ the operator's policy ∩ every layer it inherited
    /// (a plan's step, a delegated child).
    pub(crate) fn task_caps(&self, task: &TaskRecord, m: &Manifest) -> Capabilities {
        let mut caps = Capabilities::new(Layer::from_manifest(m), self.opts.policy.clone());
        if let Some(b) = crate::plan::Bounds::of(task) {
            for l in &b.layers {
                caps = caps.narrow(Layer::from_spec(l));
            }
        }
        caps
    }

    /// The agent's configuration: the manifest's limits over the configuration's defaults,
    /// catalog prices, the tool allowlist, the task's network destinations.
    fn agent_config(&self, task: &TaskRecord, m: &Manifest, model: String) -> AgentConfig {
        let prices = crate::provider::catalog(&self.opts.loaded).lookup(&model);
        let cfg = &self.opts.loaded.config;
        let context_window = crate::provider::context_window(&self.opts.loaded, &model);
        let timeout = m
            .timeout
            .or(cfg.agent.timeout)
            .unwrap_or(Duration::from_secs(30 * 60));
        let mut config = AgentConfig {
            model,
            context_window,
            max_turns: self.opts.max_turns.or(cfg.agent.max_turns).unwrap_or(30),
            max_wall: timeout,
            budget_tokens: m.budget_tokens.or(cfg.agent.budget_tokens),
            budget_usd: m.budget_usd,
            max_nudges: cfg.agent.nudges.unwrap_or(1),
            prices: Some(prices),
            tools: Some(m.tools.clone()),
            // The same effective destinations the task's egress proxy gets (prepare).
            network: self.task_caps(task, m).network(),
            ..AgentConfig::default()
        };
        if let Some(b) = crate::plan::Bounds::of(task) {
            // A child spends at most its bound. (It is offered its manifest's tools; the gate
            // refuses those its inherited layers do not grant, and says why.)
            if let Some(t) = b.budget_tokens {
                config.budget_tokens = Some(config.budget_tokens.map_or(t, |own| own.min(t)));
            }
        }
        config.system_prompt = match &m.system_prompt {
            Some(p) => p.clone(),
            None if m.tier == "wasi" => format!(
                "{}\n\nThis task runs in the wasi tier: there is no shell. Your programs are the \
                 WebAssembly tools you are offered; each sees /workspace, /task, /logs and /tmp.",
                warren_agent::system_prompt(&config.network)
            ),
            None => warren_agent::system_prompt(&config.network),
        };
        config
    }

    fn flush_text(&self, id: &str, text: &mut String) {
        if !text.is_empty() {
            self.event(
                id,
                EventKind::AgentText,
                json!({"text": std::mem::take(text)}),
            );
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
        let kind = EventKind::parse(&format!(
            "agent.{}",
            payload["event"].as_str().unwrap_or("event")
        ));
        // What the loop did on its own initiative is audited, not only evented: a nudge, and
        // calls taken from a model's text (each such call is audited again as a tool call).
        if matches!(
            e,
            AgentEvent::Nudged { .. } | AgentEvent::TextToolCalls { .. }
        ) {
            self.audit.record(Some(id), kind.as_str(), &payload);
        }
        self.event(id, kind, payload);
    }
}

/// A task's workspace directory is gone (removed or renamed since the task was submitted).
#[derive(Debug, thiserror::Error)]
#[error("its workspace {} no longer exists", path.display())]
pub(crate) struct WorkspaceGone {
    path: PathBuf,
}

/// Limits for a diff the daemon computes: `within` from now, the default sizes.
pub(crate) fn diff_limits(within: Duration) -> cow::DiffOptions {
    cow::DiffOptions {
        deadline: Some(Instant::now() + within),
        ..cow::DiffOptions::default()
    }
}

pub(crate) async fn wait_stop(rx: &mut watch::Receiver<Option<Stop>>) -> Stop {
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

/// Stop a task's MCP servers and release their cells off the async threads.
async fn close_mcp(sessions: Vec<Arc<warren_mcp_client::Session>>, cells: Vec<Arc<dyn Cell>>) {
    for c in &cells {
        c.terminate();
    }
    for s in sessions {
        if let Ok(s) = Arc::try_unwrap(s) {
            s.close().await;
        }
    }
    if !cells.is_empty() {
        let _ = tokio::task::spawn_blocking(move || drop(cells)).await;
    }
}

/// Release a cell off the async threads (teardown waits for the supervisor).
async fn drop_cell(cell: Arc<dyn Cell>, slot: &Mutex<Option<Arc<dyn Cell>>>) {
    lock(slot).take();
    let _ = tokio::task::spawn_blocking(move || drop(cell)).await;
}
