//! The host itself: the kernel release and whether bubblewrap is installed.

use std::ffi::CStr;

use super::report::{Feature, feature};

pub(super) fn probe_bubblewrap() -> Feature {
    use std::os::unix::fs::PermissionsExt;
    let how = "search $PATH for an executable named bwrap (not run); informational";
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("bwrap"))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    });
    match found {
        Some(p) => feature("bubblewrap", true, format!("found at {}", p.display()), how),
        None => feature("bubblewrap", false, "bwrap not found on PATH", how),
    }
}

pub(super) fn kernel_release() -> String {
    // SAFETY: utsname is plain data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uts is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
    }
    // SAFETY: uname NUL-terminates release within the array.
    unsafe { CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
