//! The WASI tier: tools compiled to WebAssembly, run on wasmtime inside the host process, their
//! whole world a namespace ([`warren_ns::MountTable`]) served *live*.
//!
//! # Why our own WASI host
//!
//! `wasmtime-wasi` serves files from host directories through `cap-std`; it has no trait for a
//! virtual filesystem. OANIX worked around that by copying a namespace into a temporary
//! directory before a run and back out after it — so a write to `/cap/http/request` could never
//! be answered while the module waited, and a crash lost every change. Warren implements the
//! `wasi_snapshot_preview1` interface itself ([`abi`]): every `path_open`, `fd_read` and
//! `fd_write` goes straight to the [`warren_ns::FileService`] mounted there. `/workspace` is the
//! same copy-on-write layer the process tier writes, `/tmp` is memory with a cap, `/cap/http`
//! answers a request on the read that follows the write. Preview 1 is what Rust's
//! `wasm32-wasip1`, wasi-sdk's C and most other toolchains emit; its 46 functions are small,
//! and each one here is bounds-checked against the guest's memory before it touches anything.
//!
//! # Limits
//!
//! - **Time**: epoch interruption. A ticker thread advances the engine's epoch every
//!   [`TICK`]; a run's deadline is its timeout in ticks, so a `loop {}` traps within one tick
//!   of its timeout. Host calls that wait (`poll_oneoff`) wait at most until the deadline.
//! - **Memory and tables**: a [`wasmtime::ResourceLimiter`] per run. Growth past the limit
//!   traps and the run is reported as [`Status::MemoryLimit`] (like an OOM kill), never a
//!   silent `-1` that a module might ignore.
//! - **Output**: stdout and stderr are passed through up to a cap each; the rest is dropped
//!   and the truncation reported, as in the process tier.
//! - **No ambient authority**: no host environment (only what the caller passes), no sockets,
//!   and the clocks and randomness only when [`Policy`] allows them (else `ENOTCAPABLE`).
//!
//! # Speed
//!
//! The pooling allocator keeps instance slots warm; a module is compiled once per content hash
//! (in memory, and as a precompiled `.cwasm` in a cache directory across processes) and its
//! imports are resolved once into an [`wasmtime::InstancePre`], so a run's instantiation is a
//! slot reuse and a memory image copy-on-write mapping.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod abi;
pub mod probe;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};

use warren_ns::MountTable;

/// How often the engine's epoch advances: the granularity of deadlines.
pub const TICK: Duration = Duration::from_millis(5);
/// The most memory any run may be given (the pool reserves address space for it per slot).
pub const MAX_MEMORY: u64 = 4 << 30;
/// The largest module accepted, in bytes.
pub const MAX_MODULE: u64 = 256 << 20;

/// Failures to set up or load (a run's own failures are in [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum WasiError {
    /// The engine could not be configured.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The module is not valid WebAssembly (or WAT), or imports what this host does not have.
    #[error("module: {0}")]
    Module(String),
    /// Reading the module or the cache failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// What a run may use of the host beyond its namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `clock_time_get` and `clock_res_get` answer (else `ENOTCAPABLE`); `poll_oneoff`
    /// timers work either way (a sleep does not tell the time).
    pub clock: bool,
    /// `random_get` answers from the host's CSPRNG (else `ENOTCAPABLE`).
    pub random: bool,
}

/// Bounds of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory, in bytes (all memories together).
    pub memory: u64,
    /// Table elements (all tables together).
    pub table_elements: u64,
    /// Wall-clock bound of the run.
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept; the rest is dropped and reported.
    pub output: u64,
    /// Open file descriptors.
    pub fds: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 256 << 20,
            table_elements: 100_000,
            timeout: Duration::from_secs(60),
            output: 1 << 20,
            fds: 256,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// `proc_exit(code)`, or `_start` returned (0).
    Exited(i32),
    /// The deadline passed (the epoch interrupt, or a host wait reaching it).
    TimedOut,
    /// Memory or table growth past the limit (reported like an OOM kill).
    MemoryLimit(String),
    /// Any other trap: its message.
    Trapped(String),
    /// Stopped from outside ([`Invocation::cancel`]).
    Terminated,
}

impl Status {
    /// The exit code Warren reports for it, as for the process tier's commands: the code,
    /// 124 for a timeout, 123 for the memory limit (Warren's out-of-memory code), 137 when
    /// terminated (as for SIGKILL), 134 for any other trap (as for SIGABRT).
    pub fn code(&self) -> i32 {
        match self {
            Status::Exited(c) => *c,
            Status::TimedOut => 124,
            Status::MemoryLimit(_) => 123,
            Status::Trapped(_) => 134,
            Status::Terminated => 137,
        }
    }
}

/// Where a run's output goes as it is written.
pub trait Sink: Send {
    /// Bytes written to fd 1 (within the cap).
    fn stdout(&mut self, _b: &[u8]) {}
    /// Bytes written to fd 2 (within the cap).
    fn stderr(&mut self, _b: &[u8]) {}
}

/// A sink that keeps nothing beyond the [`Outcome`]'s copies.
pub struct Quiet;
impl Sink for Quiet {}

/// One run's inputs.
pub struct Invocation {
    /// `argv`, including `argv[0]`.
    pub args: Vec<String>,
    /// The environment, exactly (nothing of the host's is added).
    pub env: Vec<(String, String)>,
    /// The namespace: preopened as `/` (fd 3).
    pub ns: Arc<MountTable>,
    /// What fd 0 reads.
    pub stdin: Vec<u8>,
    /// Bounds.
    pub limits: Limits,
    /// Ambient capabilities.
    pub policy: Policy,
    /// Live output (also kept in the outcome).
    pub sink: Box<dyn Sink>,
    /// Set from any thread to stop the run: it stops within one epoch tick while the module
    /// computes, or when a host call it is waiting in returns.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Invocation {
    /// `args` in `ns` with default limits, no clock or randomness, no stdin.
    pub fn new(args: Vec<String>, ns: Arc<MountTable>) -> Self {
        Invocation {
            args,
            env: Vec::new(),
            ns,
            stdin: Vec::new(),
            limits: Limits::default(),
            policy: Policy::default(),
            sink: Box::new(Quiet),
            cancel: None,
        }
    }
}

/// One run's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// Stdout, up to the cap.
    pub stdout: Vec<u8>,
    /// Stderr, up to the cap.
    pub stderr: Vec<u8>,
    /// Stdout bytes dropped past the cap.
    pub stdout_dropped: u64,
    /// Stderr bytes dropped past the cap.
    pub stderr_dropped: u64,
    /// Time to instantiate (from the prepared module to a callable instance).
    pub instantiate: Duration,
    /// Time from the start of the run to its end.
    pub elapsed: Duration,
}

/// A module compiled and linked against this host, ready to instantiate.
pub struct Program {
    pre: InstancePre<abi::Ctx>,
    /// The SHA-256 of the module's bytes, hex.
    pub hash: String,
}

/// Why a run stopped early, carried through wasmtime as the error of a host call or limiter.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Stop {
    #[error("exit {0}")]
    Exit(i32),
    #[error("deadline reached")]
    Deadline,
    #[error("terminated")]
    Terminated,
    #[error("{0}")]
    Limit(String),
}

/// The per-run limiter.
pub(crate) struct Limiter {
    memory: u64,
    table_elements: u64,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory {
            return Err(wasmtime::Error::new(Stop::Limit(format!(
                "memory limit: growing to {desired} bytes, the limit is {}",
                self.memory
            ))));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.table_elements {
            return Err(wasmtime::Error::new(Stop::Limit(format!(
                "table limit: growing to {desired} elements, the limit is {}",
                self.table_elements
            ))));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        4
    }
    fn memories(&self) -> usize {
        1
    }
}

/// The engine, its linker, the module cache and the epoch ticker. One per process is enough;
/// it is shared by concurrent runs.
pub struct Runtime {
    engine: Engine,
    linker: Linker<abi::Ctx>,
    programs: Mutex<HashMap<String, Arc<Program>>>,
    cache_dir: Option<PathBuf>,
    engine_tag: String,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

/// How to build a [`Runtime`].
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where precompiled modules are kept across processes (none: memory only). Host-only
    /// state: it must never be reachable from a cell, since loading a `.cwasm` runs its code.
    pub cache_dir: Option<PathBuf>,
    /// Instances that may run at once (pool slots).
    pub slots: u32,
    /// The most memory one run may be given.
    pub max_memory: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            slots: 16,
            max_memory: MAX_MEMORY,
        }
    }
}

impl Runtime {
    /// An engine with epoch interruption and the pooling allocator, and the WASI host linked.
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime, WasiError> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(cfg.slots)
            .total_memories(cfg.slots)
            .total_tables(cfg.slots * 4)
            .max_memories_per_module(1)
            .max_tables_per_module(4)
            .max_memory_size(cfg.max_memory.min(MAX_MEMORY) as usize)
            .table_elements(100_000)
            .total_component_instances(0);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .max_wasm_stack(1 << 20)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| WasiError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        abi::link(&mut linker).map_err(|e| WasiError::Engine(e.to_string()))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_tag = format!("{:016x}", h.finish());
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("wasi-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| WasiError::Engine(format!("epoch thread: {e}")))?
        };
        Ok(Runtime {
            engine,
            linker,
            programs: Mutex::new(HashMap::new()),
            cache_dir: cfg.cache_dir,
            engine_tag,
            stop,
            ticker: Some(ticker),
        })
    }

    /// Read a module file (binary or text), at most [`MAX_MODULE`] bytes, and [`load`] it.
    ///
    /// [`load`]: Runtime::load
    pub fn load_file(&self, path: &Path) -> Result<Arc<Program>, WasiError> {
        let io = |e| WasiError::Io(path.display().to_string(), e);
        let f = std::fs::File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(WasiError::Module(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        if meta.len() > MAX_MODULE {
            return Err(WasiError::Module(format!(
                "{} is larger than {MAX_MODULE} bytes",
                path.display()
            )));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_MODULE + 1), &mut bytes)
            .map_err(io)?;
        self.load(&bytes)
    }

    /// Compile (or find compiled) and link a module given as WebAssembly binary or text.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Program>, WasiError> {
        let hash = hex(&Sha256::digest(bytes));
        if let Some(p) = self.lock().get(&hash) {
            return Ok(p.clone());
        }
        let module = match self.cached(&hash) {
            Some(m) => m,
            None => self.compile(bytes, &hash)?,
        };
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| WasiError::Module(e.to_string()))?;
        let p = Arc::new(Program {
            pre,
            hash: hash.clone(),
        });
        self.lock().insert(hash, p.clone());
        Ok(p)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Program>>> {
        self.programs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache_path(&self, hash: &str) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{hash}-{}.cwasm", self.engine_tag)))
    }

    /// A precompiled module from the cache directory, if there is a sound one. The file starts
    /// with the SHA-256 of the rest, so a truncated or corrupted file is recompiled, not run.
    fn cached(&self, hash: &str) -> Option<Module> {
        let path = self.cache_path(hash)?;
        let bytes = std::fs::read(&path).ok()?;
        if bytes.len() < 32 || Sha256::digest(&bytes[32..]).as_slice() != &bytes[..32] {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // SAFETY: `deserialize` runs the file's machine code, so it must be a module this
        // engine's configuration compiled. The cache directory is host state that no cell can
        // reach (the caller's contract on `cache_dir`), the file was written by `compile`
        // below under a name carrying the engine's compatibility tag, and its digest was just
        // checked; wasmtime also checks the header's version and settings.
        unsafe { Module::deserialize(&self.engine, &bytes[32..]) }.ok()
    }

    fn compile(&self, bytes: &[u8], hash: &str) -> Result<Module, WasiError> {
        let module =
            Module::new(&self.engine, bytes).map_err(|e| WasiError::Module(format!("{e:#}")))?;
        if let Some(path) = self.cache_path(hash)
            && let Ok(ser) = module.serialize()
        {
            // Best effort: a cache that cannot be written only costs a compile next time.
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let written = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
                .and_then(|()| std::fs::File::create(&tmp))
                .and_then(|mut f| {
                    f.write_all(&Sha256::digest(&ser))?;
                    f.write_all(&ser)
                })
                .and_then(|()| std::fs::rename(&tmp, &path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
        Ok(module)
    }

    /// Run `program`'s `_start` with `inv`.
    pub fn run(&self, program: &Program, inv: Invocation) -> Outcome {
        let started = Instant::now();
        let deadline = started + inv.limits.timeout;
        let ctx = abi::Ctx::new(&inv, deadline);
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|c| &mut c.limiter);
        let ticks = inv.limits.timeout.as_nanos() / TICK.as_nanos() + 1;
        match inv.cancel.clone() {
            None => {
                store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
                store.epoch_deadline_trap();
            }
            Some(cancel) => {
                // Wake every tick to look at the flag; the deadline is checked the same way.
                store.set_epoch_deadline(1);
                store.epoch_deadline_callback(move |_| {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Stop::Terminated.into());
                    }
                    if Instant::now() >= deadline {
                        return Err(Stop::Deadline.into());
                    }
                    Ok(wasmtime::UpdateDeadline::Continue(1))
                });
            }
        }
        store.data_mut().sink = Some(inv.sink);
        let t0 = Instant::now();
        let instance = program.pre.instantiate(&mut store);
        let instantiate = t0.elapsed();
        let result = instance.and_then(|i| {
            let start = i.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call(&mut store, ())
        });
        let status = match result {
            Ok(()) => Status::Exited(0),
            Err(e) => classify(&e),
        };
        let ctx = store.into_data();
        Outcome {
            status,
            stdout: ctx.out[0].kept.clone(),
            stderr: ctx.out[1].kept.clone(),
            stdout_dropped: ctx.out[0].dropped,
            stderr_dropped: ctx.out[1].dropped,
            instantiate,
            elapsed: started.elapsed(),
        }
    }

    /// The engine (for benchmarks and tests that need it directly).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

fn classify(e: &wasmtime::Error) -> Status {
    if let Some(stop) = e.downcast_ref::<Stop>() {
        return match stop {
            Stop::Exit(c) => Status::Exited(*c),
            Stop::Deadline => Status::TimedOut,
            Stop::Terminated => Status::Terminated,
            Stop::Limit(m) => Status::MemoryLimit(m.clone()),
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Status::TimedOut,
        Some(t) => Status::Trapped(t.to_string()),
        None => Status::Trapped(format!("{e:#}")),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
