//! Resource limits through cgroups, v2 where the host offers the controllers, v1 otherwise.
//!
//! Every write goes through [`CgroupFs`], so the exact files and values Warren writes for each
//! hierarchy are unit-tested against a recording fake; the real implementation is a handful of
//! `std::fs` calls. The cell's supervisor joins the init to the groups and removes them when
//! the cell dies; [`CellCgroups::remove`] is the host's fallback if the supervisor was killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::CellError;
use crate::mountinfo::{CgroupLayout, cgroup_layout};

/// Limits enforced by cgroups. `None` means "not limited".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupLimits {
    /// Memory in bytes; swap is disabled for the cell.
    pub memory_bytes: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u64>,
    /// CPU quota in cores (1.5 = one and a half cores).
    pub cpus: Option<f64>,
}

impl CgroupLimits {
    /// Whether any limit is requested.
    pub fn any(&self) -> bool {
        self.memory_bytes.is_some() || self.pids.is_some() || self.cpus.is_some()
    }
}

/// The filesystem operations cgroup management needs: the OS seam.
pub trait CgroupFs: Send + Sync {
    /// `mkdir -p`.
    fn create_dir(&self, path: &Path) -> std::io::Result<()>;
    /// Write a control file.
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()>;
    /// Read a control file.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
    /// `rmdir`.
    fn remove_dir(&self, path: &Path) -> std::io::Result<()>;
}

/// The real cgroup filesystem.
pub struct RealFs;

impl CgroupFs for RealFs {
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        std::fs::write(path, value)
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }
}

/// A fake that records every operation, for tests.
#[derive(Default)]
pub struct RecordingFs {
    /// Operations in order, e.g. `"write /x/memory.max 1024"`.
    pub ops: Mutex<Vec<String>>,
    /// Files that "exist" and their contents.
    pub files: Mutex<BTreeMap<PathBuf, String>>,
}

impl CgroupFs for RecordingFs {
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        self.log(format!("mkdir {}", path.display()));
        Ok(())
    }
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        self.log(format!("write {} {value}", path.display()));
        Ok(())
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
    fn exists(&self, path: &Path) -> bool {
        self.files
            .lock()
            .map(|f| f.contains_key(path))
            .unwrap_or(false)
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        self.log(format!("rmdir {}", path.display()));
        Ok(())
    }
}

impl RecordingFs {
    fn log(&self, s: String) {
        if let Ok(mut ops) = self.ops.lock() {
            ops.push(s);
        }
    }
}

/// Which hierarchy a cell's limits live in.
#[derive(Clone, Debug, PartialEq)]
pub enum Hierarchy {
    /// Unified hierarchy: one directory.
    V2 {
        /// Parent group under which cells are created (controllers enabled in it).
        parent: PathBuf,
    },
    /// Legacy hierarchies: one mount per controller.
    V1 {
        /// controller name -> mount directory.
        mounts: BTreeMap<String, PathBuf>,
    },
}

impl Hierarchy {
    /// Choose the hierarchy on this host: v2 when it offers memory, pids and cpu; else v1 when
    /// those controllers are mounted; else `None`. `WARREN_CGROUP_PARENT` overrides the v2
    /// parent (for hosts that delegate a v2 subtree to an ordinary user).
    pub fn detect() -> Option<Hierarchy> {
        let want = ["memory", "pids", "cpu"];
        let v2 = |mount: &Path, ctrls: &[String]| {
            want.iter()
                .all(|w| ctrls.iter().any(|c| c == w))
                .then(|| Hierarchy::V2 {
                    parent: std::env::var_os("WARREN_CGROUP_PARENT")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| mount.join("warren")),
                })
        };
        let v1 = |mounts: &BTreeMap<String, PathBuf>| {
            want.iter()
                .all(|w| mounts.contains_key(*w))
                .then(|| Hierarchy::V1 {
                    mounts: mounts.clone(),
                })
        };
        match cgroup_layout() {
            CgroupLayout::V2 { mount, controllers } => v2(&mount, &controllers),
            CgroupLayout::V1 { mounts } => v1(&mounts),
            CgroupLayout::Hybrid {
                v2_mount,
                v2_controllers,
                v1: mounts,
            } => v2(&v2_mount, &v2_controllers).or_else(|| v1(&mounts)),
            CgroupLayout::None => None,
        }
    }

    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Hierarchy::V2 { .. } => "cgroup v2",
            Hierarchy::V1 { .. } => "cgroup v1",
        }
    }
}

/// The cgroups of one cell.
pub struct CellCgroups {
    fs: Box<dyn CgroupFs>,
    hierarchy: Hierarchy,
    /// Directories created for this cell (one for v2, one per controller for v1).
    pub dirs: Vec<PathBuf>,
    /// Where the out-of-memory kill counter lives.
    oom_file: Option<PathBuf>,
}

fn refused(step: &str, path: &Path, e: std::io::Error) -> CellError {
    CellError::Refused {
        step: step.into(),
        reason: format!(
            "{}: {e} (cgroup limits need a writable cgroup hierarchy; run as root or delegate a cgroup v2 subtree)",
            path.display()
        ),
    }
}

impl CellCgroups {
    /// Create and configure the cell's cgroups. Fails closed: any limit that cannot be written
    /// refuses the cell.
    pub fn create(
        fs: Box<dyn CgroupFs>,
        hierarchy: Hierarchy,
        cell_id: &str,
        limits: &CgroupLimits,
    ) -> Result<Self, CellError> {
        let mut me = CellCgroups {
            fs,
            hierarchy: hierarchy.clone(),
            dirs: Vec::new(),
            oom_file: None,
        };
        match &hierarchy {
            Hierarchy::V2 { parent } => {
                let root = parent.parent().unwrap_or(parent);
                // Enable the controllers from the hierarchy root down to our parent.
                let ctl = "+memory +pids +cpu";
                let _ = me.fs.write(&root.join("cgroup.subtree_control"), ctl);
                me.fs
                    .create_dir(parent)
                    .map_err(|e| refused("cgroup", parent, e))?;
                me.fs
                    .write(&parent.join("cgroup.subtree_control"), ctl)
                    .map_err(|e| refused("cgroup controllers", parent, e))?;
                let dir = parent.join(cell_id);
                me.fs
                    .create_dir(&dir)
                    .map_err(|e| refused("cgroup", &dir, e))?;
                me.dirs.push(dir.clone());
                if let Some(m) = limits.memory_bytes {
                    me.set(&dir, "memory.max", &m.to_string(), "cgroup memory")?;
                    let swap = dir.join("memory.swap.max");
                    if me.fs.exists(&swap) {
                        me.set(&dir, "memory.swap.max", "0", "cgroup memory")?;
                    }
                }
                if let Some(p) = limits.pids {
                    me.set(&dir, "pids.max", &p.to_string(), "cgroup pids")?;
                }
                if let Some(c) = limits.cpus {
                    let quota = (c * 100_000.0).round().max(1000.0) as u64;
                    me.set(&dir, "cpu.max", &format!("{quota} 100000"), "cgroup cpu")?;
                }
                me.oom_file = Some(dir.join("memory.events"));
            }
            Hierarchy::V1 { mounts } => {
                // One group per controller hierarchy; always memory and pids (so usage is
                // accounted and the OOM counter exists), cpu only when limited.
                for ctrl in ["memory", "pids", "cpu"] {
                    let Some(mount) = mounts.get(ctrl) else {
                        continue;
                    };
                    if ctrl == "cpu" && limits.cpus.is_none() {
                        continue;
                    }
                    let dir = mount.join("warren").join(cell_id);
                    me.fs
                        .create_dir(&dir)
                        .map_err(|e| refused("cgroup", &dir, e))?;
                    me.dirs.push(dir.clone());
                    match ctrl {
                        "memory" => {
                            if let Some(m) = limits.memory_bytes {
                                me.set(
                                    &dir,
                                    "memory.limit_in_bytes",
                                    &m.to_string(),
                                    "cgroup memory",
                                )?;
                                if me.fs.exists(&dir.join("memory.memsw.limit_in_bytes")) {
                                    me.set(
                                        &dir,
                                        "memory.memsw.limit_in_bytes",
                                        &m.to_string(),
                                        "cgroup memory",
                                    )?;
                                }
                            }
                            me.oom_file = Some(dir.join("memory.oom_control"));
                        }
                        "pids" => {
                            if let Some(p) = limits.pids {
                                me.set(&dir, "pids.max", &p.to_string(), "cgroup pids")?;
                            }
                        }
                        _ => {
                            if let Some(c) = limits.cpus {
                                let quota = (c * 100_000.0).round().max(1000.0) as u64;
                                me.set(&dir, "cpu.cfs_period_us", "100000", "cgroup cpu")?;
                                me.set(&dir, "cpu.cfs_quota_us", &quota.to_string(), "cgroup cpu")?;
                            }
                        }
                    }
                }
            }
        }
        Ok(me)
    }

    fn set(&self, dir: &Path, file: &str, value: &str, step: &str) -> Result<(), CellError> {
        let p = dir.join(file);
        self.fs.write(&p, value).map_err(|e| refused(step, &p, e))
    }

    /// The hierarchy in use.
    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// How many times the kernel's OOM killer has killed a process in this cell.
    pub fn oom_kills(&self) -> u64 {
        let Some(f) = &self.oom_file else { return 0 };
        let text = self.fs.read(f).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Remove the groups (after every process in them is gone). Idempotent.
    pub fn remove(&self) {
        for d in self.dirs.iter().rev() {
            for _ in 0..100 {
                if !self.fs.exists(d) || self.fs.remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    struct Shared(Arc<RecordingFs>);
    impl CgroupFs for Shared {
        fn create_dir(&self, p: &Path) -> std::io::Result<()> {
            self.0.create_dir(p)
        }
        fn write(&self, p: &Path, v: &str) -> std::io::Result<()> {
            self.0.write(p, v)
        }
        fn read(&self, p: &Path) -> std::io::Result<String> {
            self.0.read(p)
        }
        fn exists(&self, p: &Path) -> bool {
            self.0.exists(p)
        }
        fn remove_dir(&self, p: &Path) -> std::io::Result<()> {
            self.0.remove_dir(p)
        }
    }

    fn limits() -> CgroupLimits {
        CgroupLimits {
            memory_bytes: Some(64 << 20),
            pids: Some(32),
            cpus: Some(0.5),
        }
    }

    #[test]
    fn v2_writes_limits_in_one_group() {
        let fs = Arc::new(RecordingFs::default());
        let h = Hierarchy::V2 {
            parent: "/cg/warren".into(),
        };
        let cg = CellCgroups::create(Box::new(Shared(fs.clone())), h, "c1", &limits()).unwrap();
        let ops = fs.ops.lock().unwrap().clone();
        assert!(
            ops.contains(&"write /cg/warren/c1/memory.max 67108864".to_string()),
            "{ops:?}"
        );
        assert!(ops.contains(&"write /cg/warren/c1/pids.max 32".to_string()));
        assert!(ops.contains(&"write /cg/warren/c1/cpu.max 50000 100000".to_string()));
        assert!(
            ops.contains(&"write /cg/warren/cgroup.subtree_control +memory +pids +cpu".to_string())
        );
        assert_eq!(cg.dirs, vec![PathBuf::from("/cg/warren/c1")]);
    }

    #[test]
    fn v1_writes_one_group_per_controller_and_disables_swap() {
        let fs = Arc::new(RecordingFs::default());
        fs.files.lock().unwrap().insert(
            "/m/warren/c1/memory.memsw.limit_in_bytes".into(),
            String::new(),
        );
        let mounts = [("memory", "/m"), ("pids", "/p"), ("cpu", "/c")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect();
        let cg = CellCgroups::create(
            Box::new(Shared(fs.clone())),
            Hierarchy::V1 { mounts },
            "c1",
            &limits(),
        )
        .unwrap();
        let ops = fs.ops.lock().unwrap().clone();
        for want in [
            "write /m/warren/c1/memory.limit_in_bytes 67108864",
            "write /m/warren/c1/memory.memsw.limit_in_bytes 67108864",
            "write /p/warren/c1/pids.max 32",
            "write /c/warren/c1/cpu.cfs_quota_us 50000",
        ] {
            assert!(ops.contains(&want.to_string()), "missing {want}: {ops:?}");
        }
        assert_eq!(cg.dirs.len(), 3);
    }

    #[test]
    fn oom_counter_parsed_from_both_formats() {
        let fs = Arc::new(RecordingFs::default());
        fs.files.lock().unwrap().insert(
            "/cg/warren/c1/memory.events".into(),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n".into(),
        );
        let cg = CellCgroups::create(
            Box::new(Shared(fs.clone())),
            Hierarchy::V2 {
                parent: "/cg/warren".into(),
            },
            "c1",
            &CgroupLimits::default(),
        )
        .unwrap();
        assert_eq!(cg.oom_kills(), 2);
    }
}
