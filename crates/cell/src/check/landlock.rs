//! Landlock: the kernel's ABI version and the rights it provides.

use super::harness::errno_text;
use super::report::{Feature, feature};

/// Landlock ABI version of the running kernel, or `(0, errno)` if Landlock is
/// unsupported (`ENOSYS`: not built; `EOPNOTSUPP`: disabled at boot). The same query the cell's
/// init makes before it applies Landlock.
fn landlock_probe() -> (u32, Option<i32>) {
    match warren_jail::landlock_rules::query_abi() {
        Ok(abi) => (abi, None),
        Err(errno) => (0, Some(errno)),
    }
}

/// The running kernel's Landlock ABI version (0 if Landlock is unsupported).
pub fn landlock_abi() -> u32 {
    landlock_probe().0
}

/// Short names of the access rights / controls a Landlock ABI provides.
fn landlock_rights(abi: u32) -> Vec<&'static str> {
    [
        (1, "fs"),
        (2, "refer"),
        (3, "truncate"),
        (4, "tcp bind/connect"),
        (5, "ioctl on devices"),
        (6, "scope signal+abstract unix"),
        (7, "audit logging"),
        (8, "thread sync"),
    ]
    .iter()
    .filter(|(min, _)| abi >= *min)
    .map(|(_, name)| *name)
    .collect()
}

pub(super) fn probe_landlock() -> Vec<Feature> {
    let (abi, errno) = landlock_probe();
    let how = "syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)";
    let detail = if abi > 0 {
        format!("ABI {abi}: {}", landlock_rights(abi).join(", "))
    } else {
        match errno {
            Some(libc::ENOSYS) => "not supported by this kernel (ENOSYS)".to_string(),
            Some(libc::EOPNOTSUPP) => {
                "built but disabled (EOPNOTSUPP): add landlock to the lsm= boot parameter"
                    .to_string()
            }
            Some(e) => format!("unavailable: {}", errno_text(e)),
            None => "unavailable: ABI 0".to_string(),
        }
    };
    let derived = |name: &str, min: u32, what: &str| {
        feature(
            name,
            abi >= min,
            if abi >= min {
                format!("{what} (ABI {abi} >= {min})")
            } else {
                format!("{what} needs ABI >= {min}, have {abi}")
            },
            format!("derived from the Landlock ABI ({how})"),
        )
    };
    vec![
        feature("landlock", abi >= 1, detail, how),
        derived("landlock.filesystem", 1, "filesystem access rules"),
        derived("landlock.tcp", 4, "TCP bind/connect rules"),
        derived(
            "landlock.scope",
            6,
            "scoping of signals and abstract unix sockets",
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn check_landlock_rights_by_abi() {
        assert!(landlock_rights(0).is_empty());
        assert_eq!(landlock_rights(1), ["fs"]);
        assert_eq!(landlock_rights(3), ["fs", "refer", "truncate"]);
        assert_eq!(landlock_rights(4).last(), Some(&"tcp bind/connect"));
        assert_eq!(landlock_rights(6).len(), 6);
        assert_eq!(landlock_rights(6)[5], "scope signal+abstract unix");
        assert_eq!(landlock_rights(7).last(), Some(&"audit logging"));
        assert_eq!(landlock_rights(8).last(), Some(&"thread sync"));
        assert_eq!(landlock_rights(99).len(), 8);
    }
}
