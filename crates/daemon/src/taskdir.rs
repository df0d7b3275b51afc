//! The host side of a task's namespace: `<state>/tasks/<id>/task` is `/task` in the cell (spec
//! and status read-only, `result.json` writable) and `<state>/tasks/<id>/logs` is `/logs`
//! (written by the host, read-only in the cell).

use std::io::Write;
use std::path::{Path, PathBuf};

use warren_protocol::mount::{Mount, MountKind};

/// A task's directories on the host.
#[derive(Clone, Debug)]
pub struct TaskDirs {
    /// `/task` in the cell.
    pub task: PathBuf,
    /// `/logs` in the cell.
    pub logs: PathBuf,
}

impl TaskDirs {
    /// The directories of task `id` under `state`, without creating anything.
    pub fn at(state: &Path, id: &str) -> Self {
        let root = state.join("tasks").join(id);
        TaskDirs {
            task: root.join("task"),
            logs: root.join("logs"),
        }
    }

    /// Create (or, for a resumed task, reuse) the directories; `owner` is the cell's host
    /// identity, which may write `result.json`. An existing result and logs are kept.
    pub fn create(
        state: &Path,
        id: &str,
        spec: &serde_json::Value,
        owner: (u32, u32),
    ) -> std::io::Result<Self> {
        let dirs = Self::at(state, id);
        std::fs::create_dir_all(&dirs.task)?;
        std::fs::create_dir_all(&dirs.logs)?;
        std::fs::write(
            dirs.task.join("spec.json"),
            serde_json::to_vec_pretty(spec).unwrap_or_default(),
        )?;
        std::fs::write(dirs.task.join("status"), "running\n")?;
        let result = dirs.task.join("result.json");
        if !result.exists() {
            std::fs::write(&result, "")?;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&result, Some(owner.0), Some(owner.1))?;
        }
        Ok(dirs)
    }

    /// The mounts that give the cell `/task`, `/task/result.json` and `/logs`.
    pub fn mounts(&self) -> Vec<Mount> {
        let bind = |target: &str, source: &Path, readonly: bool| Mount {
            target: target.into(),
            kind: MountKind::Bind {
                source: source.display().to_string(),
                readonly,
            },
        };
        vec![
            bind("/task", &self.task, true),
            bind("/task/result.json", &self.task.join("result.json"), false),
            bind("/logs", &self.logs, true),
        ]
    }

    /// Write `/task/status` (in place: the cell's bind mount keeps pointing at this inode).
    pub fn set_status(&self, status: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.task.join("status"))
        {
            let _ = writeln!(f, "{status}");
        }
    }
}
