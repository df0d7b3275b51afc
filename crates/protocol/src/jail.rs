//! What the host tells a cell's supervisor, and what the cell reports back.
//!
//! The host writes one [`JailConfig`] as JSON on the supervisor's stdin and closes it; the
//! supervisor (and later the cell's init) answer with exactly one [`StartReport`] on the
//! status pipe: either "ready, with these mechanisms applied" or "refused, because ...".

use serde::{Deserialize, Serialize};

use crate::mount::MountSpec;

/// The uid and gid every command runs as inside a cell.
pub const CELL_UID: u32 = 1000;
/// See [`CELL_UID`].
pub const CELL_GID: u32 = 1000;

/// Resource limits applied by the supervisor (cgroups) and the init (rlimits).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimits {
    /// `RLIMIT_NOFILE`: open files per process.
    pub nofile: u64,
    /// `RLIMIT_FSIZE`: largest file a process may write, in bytes.
    pub fsize: u64,
}

/// One cgroup (v1 hierarchy or v2 group) the supervisor places the cell's init into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlacement {
    /// Absolute host path of the cgroup directory (already created and configured by the host).
    pub dir: String,
}

/// Present the source of one mount through an idmapped mount: files owned on disk by
/// `disk_uid`/`disk_gid` appear owned by the cell user, and files the cell creates are owned by
/// them on disk. Used when root runs a cell on a tree owned by root: the cell never runs as host
/// root, yet can edit that tree as its owner would. Only root can create idmapped mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// Cell path of the mount (a `bind` or `cow` mount in the spec).
    pub target: String,
    /// On-disk owner uid shown as the cell user.
    pub disk_uid: u32,
    /// On-disk owner gid shown as the cell group.
    pub disk_gid: u32,
}

/// Everything a supervisor needs to build a cell. Produced by `warren-cell`, consumed by
/// `warren-jail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailConfig {
    /// Cell identifier (also the hostname suffix).
    pub cell_id: String,
    /// Name of the abstract unix socket the init listens on (without the leading NUL).
    pub socket_name: String,
    /// Hex-encoded 32-byte secret every client must present first.
    pub secret_hex: String,
    /// Host uid the cell's [`CELL_UID`] maps to. Never 0.
    pub host_uid: u32,
    /// Host gid the cell's [`CELL_GID`] maps to. Never 0.
    pub host_gid: u32,
    /// Hostname inside the cell's UTS namespace.
    pub hostname: String,
    /// The namespace to build.
    pub mounts: MountSpec,
    /// Environment every command starts with (the allowlist; nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Initial working directory inside the cell.
    pub cwd: String,
    /// Per-process limits.
    pub rlimits: Rlimits,
    /// cgroups to join (empty when the cell runs without cgroup limits).
    pub cgroups: Vec<CgroupPlacement>,
    /// Pid of the host process that owns the cell: the supervisor exits if it is gone.
    pub owner_pid: i32,
    /// A mount whose source is presented through an idmapped mount.
    #[serde(default)]
    pub idmap: Option<IdMap>,
    /// Fail to start unless Landlock is available (the default; tests of the fail-closed path
    /// and `warren check` use this).
    pub require_landlock: bool,
    /// Network egress through the host's proxy, when the task's policy allows destinations.
    #[serde(default)]
    pub egress: Option<Egress>,
}

/// How a cell reaches the host's egress proxy: the init listens on `127.0.0.1:port` inside
/// the cell's network namespace (loopback only; there is no other interface) and forwards
/// each connection to the proxy's unix socket, bind-mounted at `socket`. Commands may connect
/// to that one TCP port (Landlock) and nowhere else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Port on the cell's loopback.
    pub port: u16,
    /// The proxy's socket, as a path in the cell.
    pub socket: String,
}

/// Which Landlock features the init applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockReport {
    /// ABI version offered by the kernel.
    pub kernel_abi: u32,
    /// ABI version whose rights were requested and applied (min of kernel and what we know).
    pub applied_abi: u32,
    /// Filesystem rules enforced.
    pub filesystem: bool,
    /// TCP bind/connect restricted by Landlock. Always false now: loopback TCP inside the
    /// cell is allowed and the cell's network namespace (only `lo`) is the boundary.
    pub tcp: bool,
    /// Signals and abstract unix sockets scoped to the cell.
    pub scoped: bool,
}

/// The cell's one message on the status pipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StartReport {
    /// The cell is up and serving exec requests.
    Ready {
        /// Host pid of the cell's init (pid 1 inside).
        init_pid: i32,
        /// What Landlock enforces.
        landlock: LandlockReport,
        /// Number of syscall rules in the seccomp filter.
        seccomp_rules: usize,
    },
    /// The cell refused to start; nothing ran.
    Refused {
        /// The step that failed, e.g. `"landlock"`, `"mount /workspace"`.
        step: String,
        /// Human-readable reason naming the missing mechanism.
        reason: String,
    },
}

/// The descriptor number of the status pipe in the supervisor's process.
pub const STATUS_FD: i32 = 3;
