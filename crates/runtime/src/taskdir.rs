//! The host side of a task's namespace: `<state>/tasks/<id>/task` is `/task` in the cell (spec
//! and status read-only, `result.json` writable) and `<state>/tasks/<id>/logs` is `/logs`
//! (written by the host, read-only in the cell).

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
    ///
    /// Everything below `<state>/tasks/<id>` goes through a [`warren_fsx::Dir`] handle: no
    /// link is followed, files are replaced atomically, `result.json` (the one file the cell
    /// writes) is created exclusively and chowned through its descriptor.
    pub fn create(
        state: &Path,
        id: &str,
        spec: &serde_json::Value,
        owner: (u32, u32),
    ) -> std::io::Result<Self> {
        let dirs = Self::at(state, id);
        let root = warren_fsx::Dir::create_trusted(state.join("tasks").join(id), 0o755)
            .map_err(std::io::Error::other)?;
        let task = root
            .ensure_dir("task", 0o755)
            .map_err(std::io::Error::other)?;
        root.ensure_dir("logs", 0o755)
            .map_err(std::io::Error::other)?;
        let spec = serde_json::to_vec_pretty(spec).unwrap_or_default();
        task.write("spec.json", &spec, 0o644, None)
            .map_err(std::io::Error::other)?;
        task.write("status", b"running\n", 0o644, None)
            .map_err(std::io::Error::other)?;
        // SAFETY: geteuid has no preconditions.
        let root_caller = unsafe { libc::geteuid() } == 0;
        match task.stat("result.json").map_err(std::io::Error::other)? {
            Some(s) if s.kind == warren_fsx::Kind::File => {}
            other => {
                if other.is_some() {
                    task.remove_all("result.json")
                        .map_err(std::io::Error::other)?;
                }
                task.write("result.json", b"", 0o644, None)
                    .map_err(std::io::Error::other)?;
            }
        }
        if root_caller {
            task.set_mode_owner("result.json", 0o644, Some(owner))
                .map_err(std::io::Error::other)?;
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

    /// Write `/task/status` (replaced atomically; `/task` is a directory bind, so the cell sees
    /// the new file).
    pub fn set_status(&self, status: &str) {
        if let Ok(d) = warren_fsx::Dir::open(&self.task) {
            let _ = d.write("status", format!("{status}\n").as_bytes(), 0o644, None);
        }
    }
}
