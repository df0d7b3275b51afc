//! `/proc/self/mountinfo`, read for the cgroup hierarchies: which are mounted,
//! where, and with which controllers.
//!
//! Production code depends on this: the cell's resource limits
//! ([`crate::cgroup`]) ask [`cgroup_layout`] where the memory, pids and cpu
//! controllers live. The diagnostics of `warren check` ([`crate::check`])
//! read the same mounts to explain, per controller, what a cell would get.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Which cgroup hierarchies are mounted on this host.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum CgroupLayout {
    /// Unified (v2) hierarchy only.
    V2 {
        /// Mount point of the cgroup2 filesystem.
        mount: PathBuf,
        /// Controllers listed in the root's `cgroup.controllers`.
        controllers: Vec<String>,
    },
    /// Legacy (v1) hierarchies only.
    V1 {
        /// Controller name → mount directory of its hierarchy.
        mounts: BTreeMap<String, PathBuf>,
    },
    /// Both a cgroup2 mount and v1 controller hierarchies.
    Hybrid {
        /// Mount point of the cgroup2 filesystem.
        v2_mount: PathBuf,
        /// Controllers listed in the v2 root's `cgroup.controllers`.
        v2_controllers: Vec<String>,
        /// Controller name → mount directory of its v1 hierarchy.
        v1: BTreeMap<String, PathBuf>,
    },
    /// No cgroup filesystem is mounted.
    None,
}

/// Controllers a cgroup v1 hierarchy can carry (other super options such as
/// `rw`, `xattr`, `name=systemd`, `release_agent=...` are not controllers).
const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// One cgroup filesystem mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CgroupMount {
    /// Where it is mounted.
    pub(crate) mount_point: PathBuf,
    /// Root of the mount within its hierarchy (field 4 of mountinfo).
    pub(crate) root: String,
    /// `cgroup2` (true) or `cgroup` (false).
    pub(crate) v2: bool,
    /// v1: controllers from the super options (empty for v2).
    pub(crate) controllers: Vec<String>,
    /// v1: the raw super options.
    pub(crate) options: String,
}

/// Decodes mountinfo's octal escapes (`\040` = space, ...).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parses the cgroup / cgroup2 entries of a `/proc/self/mountinfo` text.
pub(crate) fn parse_cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let fstype = fields.get(sep + 1).copied().unwrap_or_default();
        let options = fields.get(sep + 3).copied().unwrap_or_default();
        let v2 = match fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if v2 {
            Vec::new()
        } else {
            options
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o))
                .map(str::to_string)
                .collect()
        };
        mounts.push(CgroupMount {
            mount_point: unescape(mount_point),
            root: unescape(root).to_string_lossy().into_owned(),
            v2,
            controllers,
            options: options.to_string(),
        });
    }
    mounts
}

/// Builds the layout from parsed mounts and the v2 root's controllers. The
/// first mount of each hierarchy wins (later ones are usually bind mounts).
fn layout_from_mounts(mounts: &[CgroupMount], v2_controllers: Vec<String>) -> CgroupLayout {
    let v2 = mounts.iter().find(|m| m.v2);
    let mut v1 = BTreeMap::new();
    for m in mounts.iter().filter(|m| !m.v2) {
        for c in &m.controllers {
            v1.entry(c.clone()).or_insert_with(|| m.mount_point.clone());
        }
    }
    match (v2, v1.is_empty()) {
        (Some(m), true) => CgroupLayout::V2 {
            mount: m.mount_point.clone(),
            controllers: v2_controllers,
        },
        (Some(m), false) => CgroupLayout::Hybrid {
            v2_mount: m.mount_point.clone(),
            v2_controllers,
            v1,
        },
        (None, false) => CgroupLayout::V1 { mounts: v1 },
        (None, true) => CgroupLayout::None,
    }
}

/// Reads a whitespace-separated controller list (`cgroup.controllers`,
/// `cgroup.subtree_control`); empty if unreadable.
pub(crate) fn read_controllers(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The cgroup mounts of this process's mount namespace (none if mountinfo is unreadable).
pub(crate) fn read_cgroup_mounts() -> Vec<CgroupMount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| parse_cgroup_mounts(&s))
        .unwrap_or_default()
}

/// The cgroup hierarchies mounted on this host (from `/proc/self/mountinfo`
/// and the v2 root's `cgroup.controllers`).
pub fn cgroup_layout() -> CgroupLayout {
    let mounts = read_cgroup_mounts();
    let v2_controllers = mounts
        .iter()
        .find(|m| m.v2)
        .map(|m| read_controllers(&m.mount_point.join("cgroup.controllers")))
        .unwrap_or_default();
    layout_from_mounts(&mounts, v2_controllers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;

    /// The cgroup lines of this development machine's mountinfo (hybrid).
    const HYBRID: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A typical systemd pure-v2 host.
    const PURE_V2: &str = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
27 22 0:24 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
";

    /// An older systemd v1 host with co-mounted controllers and no unified.
    pub(crate) const PURE_V1: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 /docker/abc /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
";

    fn paths(pairs: &[(&str, &str)]) -> BTreeMap<String, PathBuf> {
        pairs
            .iter()
            .map(|(c, p)| ((*c).to_string(), PathBuf::from(p)))
            .collect()
    }

    #[test]
    fn mountinfo_hybrid() {
        let mounts = parse_cgroup_mounts(HYBRID);
        assert_eq!(mounts.len(), 10);
        let layout = layout_from_mounts(&mounts, vec!["hugetlb".to_string()]);
        let base = "/sys/fs/cgroup";
        let v1: Vec<(&str, String)> = [
            "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids",
        ]
        .iter()
        .map(|c| (*c, format!("{base}/{c}")))
        .collect();
        let v1: Vec<(&str, &str)> = v1.iter().map(|(c, p)| (*c, p.as_str())).collect();
        assert_eq!(
            layout,
            CgroupLayout::Hybrid {
                v2_mount: PathBuf::from("/sys/fs/cgroup/unified"),
                v2_controllers: vec!["hugetlb".to_string()],
                v1: paths(&v1),
            }
        );
        // name=systemd carries no controller.
        let systemd = mounts
            .iter()
            .find(|m| m.mount_point == Path::new("/sys/fs/cgroup/systemd"))
            .unwrap();
        assert!(systemd.controllers.is_empty());
        assert!(!systemd.v2);
    }

    #[test]
    fn mountinfo_pure_v2() {
        let mounts = parse_cgroup_mounts(PURE_V2);
        assert_eq!(mounts.len(), 1);
        assert!(mounts[0].v2);
        let ctrls: Vec<String> = ["cpuset", "cpu", "io", "memory", "pids"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            layout_from_mounts(&mounts, ctrls.clone()),
            CgroupLayout::V2 {
                mount: PathBuf::from("/sys/fs/cgroup"),
                controllers: ctrls,
            }
        );
    }

    #[test]
    fn mountinfo_pure_v1_and_none() {
        let mounts = parse_cgroup_mounts(PURE_V1);
        assert_eq!(
            layout_from_mounts(&mounts, Vec::new()),
            CgroupLayout::V1 {
                mounts: paths(&[
                    ("cpu", "/sys/fs/cgroup/cpu,cpuacct"),
                    ("cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
                    ("memory", "/sys/fs/cgroup/memory"),
                ]),
            }
        );
        assert_eq!(
            layout_from_mounts(&parse_cgroup_mounts(""), Vec::new()),
            CgroupLayout::None
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b\\c"), PathBuf::from(r"/a b\\c"));
        let mounts = parse_cgroup_mounts(
            "40 31 0:37 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,pids\n",
        );
        assert_eq!(
            mounts[0].mount_point,
            Path::new("/sys/fs/cgroup/with space")
        );
        assert_eq!(mounts[0].controllers, ["pids"]);
    }
}
