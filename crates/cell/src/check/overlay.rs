//! Overlayfs: mounted as root, and inside a user namespace (how copy-on-write
//! workspaces are built), over scratch directories that are removed again.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::harness::{
    DROP_STEPS, NOBODY, StepError, ck, describe, drop_to_nobody, run_in_child, write_fd_and_close,
    write_path,
};
use super::report::{Feature, feature};

/// Scratch directories for an overlay mount test; removed on drop.
struct OverlayDirs {
    base: PathBuf,
    merged: CString,
    probe_file: CString,
    mount_data: CString,
}

static SCRATCH_COUNTER: AtomicU32 = AtomicU32::new(0);

impl OverlayDirs {
    /// Creates `<tmp>/warren-check-<pid>-<nanos>-<n>/{lower,upper,work,merged}`,
    /// owned by `owner` (uid = gid) if given.
    fn create(owner: Option<u32>) -> Result<Self, String> {
        use std::os::unix::fs::DirBuilderExt;
        let tmp = std::env::temp_dir();
        let mut base = None;
        for _ in 0..8 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
            let candidate = tmp.join(format!(
                "warren-check-{}-{nanos:08x}-{n}",
                std::process::id()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
                Ok(()) => {
                    base = Some(candidate);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot create scratch dir in {}: {e}",
                        tmp.display()
                    ));
                }
            }
        }
        let base = base.ok_or_else(|| format!("cannot create scratch dir in {}", tmp.display()))?;
        // From here on, dropping `dirs` cleans up.
        let mut dirs = OverlayDirs {
            base: base.clone(),
            merged: CString::default(),
            probe_file: CString::default(),
            mount_data: CString::default(),
        };
        let sub = |name: &str| base.join(name);
        for name in ["lower", "upper", "work", "merged"] {
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(sub(name))
                .map_err(|e| format!("cannot create {}: {e}", sub(name).display()))?;
        }
        if let Some(id) = owner {
            for p in [
                base.clone(),
                sub("lower"),
                sub("upper"),
                sub("work"),
                sub("merged"),
            ] {
                std::os::unix::fs::chown(&p, Some(id), Some(id))
                    .map_err(|e| format!("cannot chown {}: {e}", p.display()))?;
            }
        }
        let bytes = |p: PathBuf| p.as_os_str().as_bytes().to_vec();
        for p in [sub("lower"), sub("upper"), sub("work")] {
            if p.as_os_str()
                .as_bytes()
                .iter()
                .any(|b| matches!(b, b',' | b':' | b'\\'))
            {
                return Err(format!(
                    "scratch path {} contains ',', ':' or '\\'; overlay options cannot express it",
                    p.display()
                ));
            }
        }
        let mut data = b"lowerdir=".to_vec();
        data.extend(bytes(sub("lower")));
        data.extend(b",upperdir=");
        data.extend(bytes(sub("upper")));
        data.extend(b",workdir=");
        data.extend(bytes(sub("work")));
        let nul = |e: std::ffi::NulError| format!("scratch path contains NUL: {e}");
        dirs.mount_data = CString::new(data).map_err(nul)?;
        dirs.merged = CString::new(bytes(sub("merged"))).map_err(nul)?;
        dirs.probe_file = CString::new(bytes(sub("merged").join("probe"))).map_err(nul)?;
        Ok(dirs)
    }

    /// `mount("overlay", merged, "overlay", 0, data)` + create and write a
    /// file in `merged`; steps `first..=first + 2`. Safe to call after fork.
    fn mount_and_write(&self, first: u8) -> Result<(), StepError> {
        // SAFETY: all pointers are valid NUL-terminated strings owned by self.
        ck(first, unsafe {
            libc::mount(
                c"overlay".as_ptr(),
                self.merged.as_ptr(),
                c"overlay".as_ptr(),
                0,
                self.mount_data.as_ptr().cast(),
            )
        })?;
        // SAFETY: probe_file is a valid NUL-terminated path.
        let fd = unsafe {
            libc::open(
                self.probe_file.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        ck(first + 1, fd)?;
        ck(first + 2, write_fd_and_close(fd, b"warren\n"))
    }
}

impl Drop for OverlayDirs {
    fn drop(&mut self) {
        remove_tree(&self.base);
    }
}

/// Removes a directory tree, first making every directory in it accessible
/// (overlayfs leaves a mode-000 `work/work` behind). Errors are ignored.
fn remove_tree(path: &Path) {
    fn open_up(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&entry.path());
                }
            }
        }
    }
    open_up(path);
    let _ = std::fs::remove_dir_all(path);
}

/// Make every mount in the (new) mount namespace private: step `step`.
fn make_root_private(step: u8) -> Result<(), StepError> {
    // SAFETY: valid string pointers / nulls as mount(2) permits for a
    // propagation change.
    ck(step, unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
}

fn overlay_listed() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

pub(super) fn probe_overlayfs(euid: u32) -> Feature {
    let listed = overlay_listed();
    let listed_text = if listed {
        "\"overlay\" listed in /proc/filesystems"
    } else {
        "\"overlay\" not listed in /proc/filesystems (the module may still load on demand)"
    };
    if euid != 0 {
        return feature(
            "overlayfs",
            listed,
            format!("{listed_text}; mount not tested (not root)"),
            "grep overlay /proc/filesystems",
        );
    }
    let how = "grep overlay /proc/filesystems; fork + unshare(CLONE_NEWNS) + mount(\"/\", MS_REC|MS_PRIVATE) \
               + mount overlay over scratch dirs in $TMPDIR + write a file in merged";
    let dirs = match OverlayDirs::create(None) {
        Ok(d) => d,
        Err(e) => return feature("overlayfs", false, format!("{listed_text}; {e}"), how),
    };
    let outcome = run_in_child(|| {
        // SAFETY: unshare only affects the (forked) calling process.
        ck(0, unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
        make_root_private(1)?;
        dirs.mount_and_write(2)
    });
    drop(dirs);
    let steps = [
        "unshare(CLONE_NEWNS)",
        "mount(\"/\", MS_REC|MS_PRIVATE)",
        "mount(overlay)",
        "open(merged/probe, O_CREAT)",
        "write(merged/probe)",
    ];
    let (ok, why) = describe(&outcome, &steps);
    let detail = if ok {
        format!("{listed_text}; overlay mount and write into merged work as root")
    } else {
        format!("{listed_text}; {why}")
    };
    feature("overlayfs", ok, detail, how)
}

pub(super) fn probe_overlayfs_userns(euid: u32) -> Feature {
    let root = euid == 0;
    // SAFETY: getegid has no preconditions and cannot fail.
    let egid = unsafe { libc::getegid() };
    let (uid, gid) = if root { (NOBODY, NOBODY) } else { (euid, egid) };
    let how = format!(
        "fork{} + unshare(CLONE_NEWUSER|CLONE_NEWNS) + write deny to /proc/self/setgroups, \
         \"0 {uid} 1\" to uid_map, \"0 {gid} 1\" to gid_map + mount overlay over scratch dirs in $TMPDIR \
         + write a file in merged",
        if root {
            " + drop to uid/gid 65534 (scratch dirs chowned to it) + prctl(PR_SET_DUMPABLE, 1)"
        } else {
            ""
        }
    );
    let dirs = match OverlayDirs::create(root.then_some(NOBODY)) {
        Ok(d) => d,
        Err(e) => return feature("overlayfs.user_namespace", false, e, how),
    };
    let uid_map = format!("0 {uid} 1");
    let gid_map = format!("0 {gid} 1");
    let outcome = run_in_child(|| {
        if root {
            drop_to_nobody()?;
        }
        // SAFETY: unshare only affects the (forked) calling process.
        ck(4, unsafe {
            libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)
        })?;
        ck(5, write_path(c"/proc/self/setgroups", b"deny"))?;
        ck(6, write_path(c"/proc/self/uid_map", uid_map.as_bytes()))?;
        ck(7, write_path(c"/proc/self/gid_map", gid_map.as_bytes()))?;
        make_root_private(8)?;
        dirs.mount_and_write(9)
    });
    drop(dirs);
    let steps = [
        DROP_STEPS[0],
        DROP_STEPS[1],
        DROP_STEPS[2],
        DROP_STEPS[3],
        "unshare(CLONE_NEWUSER|CLONE_NEWNS)",
        "write /proc/self/setgroups",
        "write /proc/self/uid_map",
        "write /proc/self/gid_map",
        "mount(\"/\", MS_REC|MS_PRIVATE)",
        "mount(overlay)",
        "open(merged/probe, O_CREAT)",
        "write(merged/probe)",
    ];
    let (ok, why) = describe(&outcome, &steps);
    let detail = if ok {
        format!("overlay mount and write into merged work inside a user namespace (as uid {uid})")
    } else {
        format!("as uid {uid}: {why}")
    };
    feature("overlayfs.user_namespace", ok, detail, how)
}
