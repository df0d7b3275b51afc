//! Cgroups: for v2 and v1, whether the memory, pids and cpu controllers are
//! there and whether this process may create child groups of its own cgroup.
//! Which hierarchies are mounted where comes from [`crate::mountinfo`].

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::report::{Feature, feature};
use crate::mountinfo::{CgroupMount, read_cgroup_mounts, read_controllers};

/// One line of `/proc/self/cgroup`: (controllers, path). The v2 line has
/// hierarchy id 0 and no controllers.
#[derive(Debug, Clone, PartialEq)]
struct ProcCgroup {
    v2: bool,
    controllers: Vec<String>,
    path: String,
}

fn parse_proc_cgroup(text: &str) -> Vec<ProcCgroup> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?;
            let ctrls = parts.next()?;
            let path = parts.next()?;
            Some(ProcCgroup {
                v2: id == "0" && ctrls.is_empty(),
                controllers: ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The directory of our own cgroup `own_path` inside `mount`, if it is
/// visible there.
fn own_cgroup_dir(mount: &CgroupMount, own_path: &str) -> Option<PathBuf> {
    if own_path.split('/').any(|c| c == "..") {
        return None;
    }
    let root = mount.root.trim_end_matches('/');
    let rel = if root.is_empty() {
        own_path
    } else if own_path == root {
        ""
    } else {
        own_path.strip_prefix(root).filter(|r| r.starts_with('/'))?
    };
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        Some(mount.mount_point.clone())
    } else {
        Some(mount.mount_point.join(rel))
    }
}

/// Whether `dir` is a directory we may create entries in (`access(W_OK)`).
fn dir_writable(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid NUL-terminated path.
    dir.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
}

fn writable_text(dir: &Path) -> String {
    format!(
        "{} ({})",
        dir.display(),
        if dir_writable(dir) {
            "writable"
        } else {
            "not writable"
        }
    )
}

pub(super) fn probe_cgroups() -> Vec<Feature> {
    let mounts = read_cgroup_mounts();
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map(|s| parse_proc_cgroup(&s))
        .unwrap_or_default();
    let mut out = probe_cgroup_v2(&mounts, &own);
    out.extend(probe_cgroup_v1(&mounts, &own));
    out
}

fn probe_cgroup_v2(mounts: &[CgroupMount], own: &[ProcCgroup]) -> Vec<Feature> {
    let ctrl_how = |c: &str, mount: &str| {
        format!(
            "\"{c}\" in {mount}/cgroup.controllers (root and own cgroup) + access(own cgroup dir, W_OK) \
             from /proc/self/cgroup \"0::\""
        )
    };
    let Some(m) = mounts.iter().find(|m| m.v2) else {
        let mut out = vec![feature(
            "cgroup.v2",
            false,
            "no cgroup2 mount in /proc/self/mountinfo",
            "look for fstype cgroup2 in /proc/self/mountinfo",
        )];
        for c in ["memory", "pids", "cpu"] {
            out.push(feature(
                &format!("cgroup.v2.{c}"),
                false,
                "cgroup v2 not mounted",
                ctrl_how(c, "<cgroup2 mount>"),
            ));
        }
        return out;
    };
    let mount_str = m.mount_point.display().to_string();
    let root_ctrls = read_controllers(&m.mount_point.join("cgroup.controllers"));
    let root_subtree = read_controllers(&m.mount_point.join("cgroup.subtree_control"));
    let own_path = own.iter().find(|p| p.v2).map(|p| p.path.clone());
    let own_dir = own_path.as_deref().and_then(|p| own_cgroup_dir(m, p));
    let own_ctrls = own_dir
        .as_ref()
        .map(|d| read_controllers(&d.join("cgroup.controllers")))
        .unwrap_or_default();
    let writable = own_dir.as_deref().is_some_and(dir_writable);
    let list = |v: &[String]| {
        if v.is_empty() {
            "(none)".to_string()
        } else {
            v.join(" ")
        }
    };
    let own_text = match (&own_path, &own_dir) {
        (Some(p), Some(d)) => format!("own cgroup {p} at {}", writable_text(d)),
        (Some(p), None) => format!("own cgroup {p} not visible under {mount_str}"),
        (None, _) => "no \"0::\" line in /proc/self/cgroup".to_string(),
    };
    let mut out = vec![feature(
        "cgroup.v2",
        true,
        format!(
            "cgroup2 at {mount_str}; controllers: {}; subtree_control: {}; {own_text}",
            list(&root_ctrls),
            list(&root_subtree)
        ),
        format!(
            "fstype cgroup2 in /proc/self/mountinfo; {mount_str}/cgroup.controllers and \
             cgroup.subtree_control; /proc/self/cgroup \"0::\" line; access(W_OK)"
        ),
    )];
    for c in ["memory", "pids", "cpu"] {
        let in_root = root_ctrls.iter().any(|x| x == c);
        let in_own = own_ctrls.iter().any(|x| x == c);
        let (ok, detail) = if !in_root {
            (
                false,
                format!("\"{c}\" not in {mount_str}/cgroup.controllers"),
            )
        } else if own_dir.is_none() {
            (
                false,
                format!("\"{c}\" enabled at the root, but {own_text}"),
            )
        } else if !in_own {
            (
                false,
                format!("\"{c}\" enabled at the root but not delegated to our cgroup; {own_text}"),
            )
        } else if !writable {
            (
                false,
                format!("\"{c}\" available but cannot create child groups: {own_text}"),
            )
        } else {
            (
                true,
                format!("\"{c}\" available; child groups can be created: {own_text}"),
            )
        };
        out.push(feature(
            &format!("cgroup.v2.{c}"),
            ok,
            detail,
            ctrl_how(c, &mount_str),
        ));
    }
    out
}

fn probe_cgroup_v1(mounts: &[CgroupMount], own: &[ProcCgroup]) -> Vec<Feature> {
    let v1: Vec<&CgroupMount> = mounts.iter().filter(|m| !m.v2).collect();
    let summary = v1
        .iter()
        .map(|m| format!("{} [{}]", m.mount_point.display(), m.options))
        .collect::<Vec<_>>()
        .join(", ");
    let any = v1.iter().any(|m| !m.controllers.is_empty());
    let mut out = vec![feature(
        "cgroup.v1",
        any,
        if v1.is_empty() {
            "no cgroup (v1) mounts in /proc/self/mountinfo".to_string()
        } else {
            summary
        },
        "fstype cgroup in /proc/self/mountinfo, controllers from the super options",
    )];
    for c in ["memory", "pids", "cpu"] {
        let how = format!(
            "\"{c}\" in a cgroup v1 mount's options in /proc/self/mountinfo + own path from \
             /proc/self/cgroup + access(W_OK)"
        );
        let Some(m) = v1.iter().find(|m| m.controllers.iter().any(|x| x == c)) else {
            out.push(feature(
                &format!("cgroup.v1.{c}"),
                false,
                "not mounted",
                how,
            ));
            continue;
        };
        let own_path = own
            .iter()
            .find(|p| !p.v2 && p.controllers.iter().any(|x| x == c))
            .map(|p| p.path.clone());
        let own_dir = own_path.as_deref().and_then(|p| own_cgroup_dir(m, p));
        let mount = m.mount_point.display();
        let (ok, detail) = match (&own_path, &own_dir) {
            (Some(p), Some(d)) => (
                dir_writable(d),
                format!("mounted at {mount}; own cgroup {p} at {}", writable_text(d)),
            ),
            (Some(p), None) => (
                false,
                format!("mounted at {mount}; own cgroup {p} not visible there"),
            ),
            (None, _) => (
                false,
                format!("mounted at {mount}; no \"{c}\" line in /proc/self/cgroup"),
            ),
        };
        out.push(feature(&format!("cgroup.v1.{c}"), ok, detail, how));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::mountinfo::parse_cgroup_mounts;

    #[test]
    fn check_own_cgroup_dir_honours_the_mount_root() {
        let mounts = parse_cgroup_mounts(crate::mountinfo::tests::PURE_V1);
        let mem = mounts.iter().find(|m| m.controllers == ["memory"]).unwrap();
        assert_eq!(
            own_cgroup_dir(mem, "/docker/abc/sub"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/sub"))
        );
        assert_eq!(own_cgroup_dir(mem, "/docker/abcdef"), None);
        assert_eq!(
            own_cgroup_dir(mem, "/docker/abc"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
    }

    #[test]
    fn check_proc_cgroup() {
        let parsed =
            parse_proc_cgroup("4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/user.slice\n");
        assert_eq!(parsed.len(), 3);
        assert!(!parsed[0].v2);
        assert_eq!(parsed[1].controllers, ["cpu", "cpuacct"]);
        assert!(parsed[2].v2);
        assert_eq!(parsed[2].path, "/user.slice");
    }
}
