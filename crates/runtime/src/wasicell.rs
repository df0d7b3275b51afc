//! The wasi tier behind the [`Cells`] trait: a task whose manifest says `tier: wasi` gets a
//! [`WasiCell`], whose commands are the manifest's WebAssembly modules run by `warren-wasi`
//! over a namespace the host serves itself.
//!
//! The cell's namespace is built from the same [`CellSpec`] the process tier turns into mounts:
//!
//! - `/workspace`: a copy-on-write view ([`CowFs`]) of the project whose changes land in the
//!   task's layer (`<state>/changes/<id>/upper`, what `diff`, `apply` and `discard` read), or
//!   the directory itself read-only or read-write; the task's path grants become a
//!   [`ScopedFs`] — Landlock's rules, applied by the host;
//! - every bind mount (`/task`, `/task/result.json`, `/logs`, `/cap/http`, `/skills`, a
//!   manifest's mounts): the host path as a [`DirFs`], reached only beneath itself, read-only
//!   unless the mount is writable;
//! - `/tmp`: memory, capped at the spec's `/tmp` size.
//!
//! A command is `[module path, args…]`, and only the modules the spec lists run: anything
//! else (`/bin/sh`) is "not found", so a tool that needs host programs fails instead of running
//! something else. File tools do not run commands here: [`Cell::read_file`] and
//! [`Cell::write_file`] act on the namespace directly. Removals in a copy-on-write workspace
//! are recorded in the layer after every command, so a crash loses none.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use warren_cell::spec::{CowLayer, Workspace, WorkspaceMode};
use warren_cell::{
    Cell, CellError, CellSpec, ExecOutcome, ExecSpec, ExitInfo, FailureCode, OutputSink, Tier, cow,
};
use warren_ns::cow::CowFs;
use warren_ns::dir::DirFs;
use warren_ns::mem::MemFs;
use warren_ns::scope::{Grant, ScopedFs};
use warren_ns::{Entry, FileService, Handle, MountTable, NsError, NsPath, OpenMode, Stat};
use warren_protocol::mount::MountKind;
use warren_wasi::{Invocation, Limits, Runtime, RuntimeConfig, Status};

use crate::cells::Cells;

/// The largest file a module may write (and copy up from the workspace).
pub const MAX_FILE: u64 = 1 << 30;
/// The most stdin a command gets.
const MAX_STDIN: u64 = 64 << 20;
/// Where the wasi tier mounts the workspace.
const WORKSPACE: &str = "/workspace";

fn refused(reason: impl Into<String>) -> CellError {
    CellError::Refused {
        step: "wasi".into(),
        reason: reason.into(),
    }
}

/// Record a copy-on-write view's removals in its layer as whiteouts (what `diff` and `apply`
/// read). A removal below a removed directory is covered by the directory's own. Returns the
/// removals that could not be recorded.
pub fn record_removals(layer: &CowLayer, view: &CowFs) -> Vec<String> {
    let removed = view.changes().removed;
    let mut errors = Vec::new();
    for r in &removed {
        let covered = removed
            .iter()
            .any(|other| other != r && r.starts_with(&format!("{}/", other.trim_end_matches('/'))));
        if covered {
            continue;
        }
        let rel = Path::new(r.trim_start_matches('/'));
        if let Err(e) = cow::record_removal(layer, rel) {
            errors.push(format!(
                "the removal of {} was not kept: {e}",
                rel.display()
            ));
        }
    }
    errors
}

/// A copy-on-write workspace view and the layer its changes land in.
pub type CowView = (CowLayer, Arc<CowFs>);

/// The project `host` as a workspace service: read-only, read-write, or a copy-on-write view
/// whose changes land in the layer of cell `id` under `state_dir` (created, with its meta, so
/// `warren diff/apply/discard` read it like the process tier's).
pub fn workspace(
    host: &Path,
    mode: WorkspaceMode,
    state_dir: &Path,
    id: &str,
) -> Result<(Arc<dyn FileService>, Option<CowView>), String> {
    let open = |writable: bool| -> Result<DirFs, String> {
        let d = warren_fsx::Dir::open(host)
            .map_err(|e| format!("workspace {}: {e}", host.display()))?;
        Ok(DirFs::new(d, writable, MAX_FILE))
    };
    Ok(match mode {
        WorkspaceMode::ReadOnly => (Arc::new(open(false)?), None),
        WorkspaceMode::ReadWrite => (Arc::new(open(true)?), None),
        WorkspaceMode::Cow => {
            let l = CowLayer::at(state_dir, id);
            std::fs::create_dir_all(&l.upper).map_err(|e| format!("{}: {e}", l.upper.display()))?;
            cow::write_meta(&l, host).map_err(|e| e.to_string())?;
            let upper = warren_fsx::Dir::open(&l.upper)
                .map_err(|e| format!("{}: {e}", l.upper.display()))?;
            let view = Arc::new(CowFs::new(
                Arc::new(open(false)?),
                Arc::new(DirFs::new(upper, true, MAX_FILE)),
                MAX_FILE,
            ));
            (Arc::clone(&view) as Arc<dyn FileService>, Some((l, view)))
        }
    })
}

/// One file of a host directory as a service whose root is that file (a bind mount of a file,
/// like `/task/result.json`).
struct OneFile {
    dir: DirFs,
    name: NsPath,
}

impl OneFile {
    fn path(&self, path: &NsPath) -> warren_ns::Result<&NsPath> {
        if path.is_root() {
            Ok(&self.name)
        } else {
            Err(NsError::NotADirectory(path.to_string()))
        }
    }
}

impl FileService for OneFile {
    fn stat(&self, path: &NsPath) -> warren_ns::Result<Stat> {
        self.dir.stat(self.path(path)?)
    }
    fn list(&self, path: &NsPath) -> warren_ns::Result<Vec<Entry>> {
        Err(NsError::NotADirectory(path.to_string()))
    }
    fn open(&self, path: &NsPath, mode: OpenMode) -> warren_ns::Result<Box<dyn Handle>> {
        self.dir.open(self.path(path)?, mode)
    }
}

/// A host path of a bind mount as a service: a directory as [`DirFs`], a regular file as
/// [`OneFile`]. Anything else is refused. The path comes from the host's own spec.
fn bind_service(source: &Path, writable: bool) -> Result<Arc<dyn FileService>, CellError> {
    let meta = std::fs::symlink_metadata(source)
        .map_err(|e| refused(format!("mount source {}: {e}", source.display())))?;
    let open = |d: &Path| {
        warren_fsx::Dir::open(d).map_err(|e| refused(format!("mount source {}: {e}", d.display())))
    };
    if meta.is_dir() {
        return Ok(Arc::new(DirFs::new(open(source)?, writable, MAX_FILE)));
    }
    let (Some(parent), Some(name)) = (source.parent(), source.file_name()) else {
        return Err(refused(format!(
            "mount source {}: no parent",
            source.display()
        )));
    };
    if !meta.is_file() {
        return Err(refused(format!(
            "mount source {}: not a directory or regular file",
            source.display()
        )));
    }
    let name = NsPath::parse(&format!("/{}", name.to_string_lossy()))
        .map_err(|e| refused(e.to_string()))?;
    Ok(Arc::new(OneFile {
        dir: DirFs::new(open(parent)?, writable, MAX_FILE),
        name,
    }))
}

/// Starts [`WasiCell`]s; one engine (pooling allocator, compiled-module cache) for all.
pub struct WasiCells {
    config: RuntimeConfig,
    runtime: OnceLock<Result<Arc<Runtime>, String>>,
    running: Arc<AtomicUsize>,
}

impl WasiCells {
    /// A tier whose compiled modules are cached in `cache_dir`.
    pub fn new(cache_dir: Option<PathBuf>) -> Self {
        WasiCells {
            config: RuntimeConfig {
                cache_dir,
                ..RuntimeConfig::default()
            },
            runtime: OnceLock::new(),
            running: Arc::default(),
        }
    }

    /// Modules running now, in every cell of this tier.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// The engine, made on first use (its pool reserves address space only then).
    fn runtime(&self) -> Result<Arc<Runtime>, CellError> {
        self.runtime
            .get_or_init(|| {
                Runtime::new(self.config.clone())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(refused)
    }
}

impl Cells for WasiCells {
    fn tier(&self) -> &'static str {
        "wasi"
    }

    fn start(&self, spec: &CellSpec) -> Result<Arc<dyn Cell>, CellError> {
        let cell = WasiCell::start(spec, self.runtime()?, Arc::clone(&self.running))?;
        Ok(Arc::new(cell))
    }
}

/// The process tier and the wasi tier behind one [`Cells`]: a spec goes to its tier.
pub struct TieredCells {
    /// The process tier (or a fake, in tests).
    pub process: Arc<dyn Cells>,
    /// The wasi tier.
    pub wasi: Arc<WasiCells>,
}

impl Cells for TieredCells {
    fn tier(&self) -> &'static str {
        self.process.tier()
    }

    fn start(&self, spec: &CellSpec) -> Result<Arc<dyn Cell>, CellError> {
        match spec.tier {
            Tier::Process => self.process.start(spec),
            Tier::Wasi => self.wasi.start(spec),
        }
    }
}

struct Session {
    env: Vec<(String, String)>,
    cwd: String,
}

/// A cell of the wasi tier.
pub struct WasiCell {
    id: String,
    runtime: Arc<Runtime>,
    ns: Arc<MountTable>,
    modules: Vec<PathBuf>,
    memory: u64,
    max_output: u64,
    layer: Option<CowView>,
    session: Mutex<Session>,
    cancel: Arc<AtomicBool>,
    running: Arc<AtomicUsize>,
}

/// Counts a module run while it lasts.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WasiCell {
    /// Build the namespace `spec` describes and a cell over it, counting its runs in
    /// `running`.
    pub fn start(
        spec: &CellSpec,
        runtime: Arc<Runtime>,
        running: Arc<AtomicUsize>,
    ) -> Result<WasiCell, CellError> {
        let id = spec
            .id
            .clone()
            .unwrap_or_else(warren_cell::process::new_cell_id);
        let mut ns = MountTable::new();
        let mount = |ns: &mut MountTable, at: &str, svc: Arc<dyn FileService>| {
            ns.mount(at, svc)
                .map_err(|e| refused(format!("mount {at}: {e}")))
        };
        mount(&mut ns, "/tmp", Arc::new(MemFs::new(spec.limits.tmp_bytes)))?;
        let mut layer = None;
        if let Some(Workspace { host, mode }) = &spec.workspace {
            let (svc, cow) = workspace(host, *mode, &spec.state_dir, &id).map_err(refused)?;
            layer = cow;
            mount(&mut ns, WORKSPACE, scoped(WORKSPACE, svc, &spec.scopes))?;
        }
        for m in &spec.extra_mounts {
            match &m.kind {
                MountKind::Bind { source, readonly } => {
                    let svc = bind_service(Path::new(source), !readonly)?;
                    mount(&mut ns, &m.target, scoped(&m.target, svc, &spec.scopes))?;
                }
                MountKind::Tmpfs { size_bytes, .. } => {
                    mount(&mut ns, &m.target, Arc::new(MemFs::new(*size_bytes)))?;
                }
                other => {
                    return Err(refused(format!(
                        "mount {}: the wasi tier serves directories, files and memory, not {other:?}",
                        m.target
                    )));
                }
            }
        }
        let cwd = if spec.workspace.is_some() {
            WORKSPACE
        } else {
            "/"
        };
        Ok(WasiCell {
            id,
            runtime,
            ns: Arc::new(ns),
            modules: spec.wasm_modules.clone(),
            memory: spec
                .limits
                .cgroup
                .memory_bytes
                .unwrap_or(Limits::default().memory),
            max_output: spec.limits.max_output_bytes,
            layer,
            session: Mutex::new(Session {
                env: spec.env.clone(),
                cwd: cwd.into(),
            }),
            cancel: Arc::new(AtomicBool::new(false)),
            running,
        })
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `path` made absolute against the session's directory, parsed as the namespace does.
    fn absolute(&self, path: &str) -> Result<String, String> {
        let joined = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{path}", self.session().cwd)
        };
        NsPath::parse(&joined)
            .map(|p| p.to_string())
            .map_err(|e| e.to_string())
    }

    /// Keep the view's removals in the layer (after every command and file write).
    fn keep_removals(&self) {
        if let Some((layer, view)) = &self.layer {
            for e in record_removals(layer, view) {
                tracing::warn!("cell {}: {e}", self.id);
            }
        }
    }

    fn failed(code: FailureCode, why: String) -> ExecOutcome {
        ExecOutcome {
            failure: Some((code, why)),
            ..ExecOutcome::default()
        }
    }
}

/// `svc` mounted at `target`, narrowed to the scopes beneath `target` if there are any.
fn scoped(
    target: &str,
    svc: Arc<dyn FileService>,
    scopes: &[warren_protocol::mount::Scope],
) -> Arc<dyn FileService> {
    let Ok(base) = NsPath::parse(target) else {
        return svc;
    };
    let grants: Vec<Grant> = scopes
        .iter()
        .filter_map(|s| {
            let p = NsPath::parse(&s.path).ok()?;
            Some(Grant {
                path: p.strip_prefix(&base)?,
                write: s.write,
            })
        })
        .collect();
    if grants.is_empty() {
        svc
    } else {
        Arc::new(ScopedFs::new(svc, grants))
    }
}

impl Cell for WasiCell {
    fn id(&self) -> &str {
        &self.id
    }

    fn tier(&self) -> Tier {
        Tier::Wasi
    }

    fn exec(
        &self,
        spec: &ExecSpec,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, CellError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(refused("the cell was terminated"));
        }
        let Some(first) = spec.argv.first() else {
            return Ok(Self::failed(
                FailureCode::BadRequest,
                "empty command".into(),
            ));
        };
        let module = Path::new(first);
        if !self.modules.iter().any(|m| m == module) {
            return Ok(Self::failed(
                FailureCode::NotFound,
                format!(
                    "{first}: not found (the wasi tier runs only its manifest's WebAssembly modules)"
                ),
            ));
        }
        let program = match self.runtime.load_file(module) {
            Ok(p) => p,
            Err(e) => return Ok(Self::failed(FailureCode::NotExecutable, e.to_string())),
        };
        let mut input = Vec::new();
        if let Some(r) = stdin {
            r.take(MAX_STDIN)
                .read_to_end(&mut input)
                .map_err(|e| refused(format!("stdin: {e}")))?;
        }
        let (mut env, cwd) = {
            let s = self.session();
            (s.env.clone(), s.cwd.clone())
        };
        env.extend(spec.env.iter().cloned());
        env.push(("PWD".into(), spec.cwd.clone().unwrap_or(cwd)));
        let mut args = spec.argv.clone();
        args[0] = module
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let defaults = Limits::default();
        let mut inv = Invocation::new(args, Arc::clone(&self.ns));
        inv.env = env;
        inv.stdin = input;
        inv.limits = Limits {
            memory: self.memory,
            timeout: Duration::from_millis(spec.timeout_ms.unwrap_or(24 * 3600 * 1000)),
            output: spec.max_output_bytes.min(self.max_output).max(1),
            ..defaults
        };
        inv.cancel = Some(Arc::clone(&self.cancel));
        self.running.fetch_add(1, Ordering::Relaxed);
        let counted = Running(&self.running);
        let outcome = self.runtime.run(&program, inv);
        drop(counted);
        self.keep_removals();
        sink.stdout(&outcome.stdout);
        sink.stderr(&outcome.stderr);
        if let Status::Trapped(m) | Status::MemoryLimit(m) = &outcome.status {
            sink.stderr(format!("\nwarren: {m}\n").as_bytes());
        }
        let code = outcome.status.code();
        Ok(ExecOutcome {
            exit: ExitInfo {
                code: Some(code),
                signal: None,
                timed_out: outcome.status == Status::TimedOut,
                stdout_bytes: outcome.stdout.len() as u64 + outcome.stdout_dropped,
                stderr_bytes: outcome.stderr.len() as u64 + outcome.stderr_dropped,
                duration_us: outcome.elapsed.as_micros() as u64,
            },
            oom_killed: matches!(outcome.status, Status::MemoryLimit(_)),
            disk_exceeded: false,
            stdout_truncated: outcome.stdout_dropped > 0,
            stderr_truncated: outcome.stderr_dropped > 0,
            failure: None,
        })
    }

    fn set_env(&self, vars: Vec<(String, Option<String>)>) -> Result<(), CellError> {
        let mut s = self.session();
        for (k, v) in vars {
            s.env.retain(|(name, _)| name != &k);
            if let Some(v) = v {
                s.env.push((k, v));
            }
        }
        Ok(())
    }

    fn chdir(&self, path: &str) -> Result<(), CellError> {
        let abs = self.absolute(path).map_err(refused)?;
        match self.ns.stat(&abs) {
            Ok(s) if s.kind == warren_ns::Kind::Dir => {
                self.session().cwd = abs;
                Ok(())
            }
            Ok(_) => Err(refused(format!("{abs}: not a directory"))),
            Err(e) => Err(refused(e.to_string())),
        }
    }

    fn max_output_bytes(&self) -> u64 {
        self.max_output
    }

    fn kill(&mut self) {
        self.terminate();
    }

    fn terminate(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn cow_layer(&self) -> Option<&CowLayer> {
        self.layer.as_ref().map(|(l, _)| l)
    }

    fn read_file(&self, path: &str, max: u64) -> Option<Result<Vec<u8>, String>> {
        Some(
            self.absolute(path)
                .and_then(|p| self.ns.read(&p, max).map_err(|e| e.to_string())),
        )
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Option<Result<(), String>> {
        let written = self.absolute(path).and_then(|p| {
            // `mkdir -p` of its directory, then the file.
            let parsed = NsPath::parse(&p).map_err(|e| e.to_string())?;
            let mut dir = NsPath::root();
            for part in parsed.parent().parts() {
                dir = dir.child(part).map_err(|e| e.to_string())?;
                let d = dir.to_string();
                match self.ns.stat(&d) {
                    Ok(s) if s.kind == warren_ns::Kind::Dir => {}
                    Ok(_) => return Err(NsError::NotADirectory(d).to_string()),
                    Err(NsError::NotFound(_)) => self.ns.mkdir(&d).map_err(|e| e.to_string())?,
                    Err(e) => return Err(e.to_string()),
                }
            }
            self.ns.write(&p, data).map_err(|e| e.to_string())
        });
        self.keep_removals();
        Some(written)
    }
}
