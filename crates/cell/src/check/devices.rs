//! Devices: fuse, KVM (with the CPU's virtualization flag) and vsock.

use std::ffi::CStr;
use std::path::Path;

use super::harness::{errno_text, last_errno};
use super::report::{Feature, feature};

/// `open(path, flags | O_CLOEXEC)`; the fd or the errno.
fn open_dev(path: &CStr, flags: libc::c_int) -> Result<libc::c_int, i32> {
    // SAFETY: path is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 { Err(last_errno()) } else { Ok(fd) }
}

fn close_fd(fd: libc::c_int) {
    // SAFETY: fd was opened by us and is closed exactly once.
    unsafe { libc::close(fd) };
}

pub(super) fn probe_fuse() -> Feature {
    let how = "/dev/fuse exists + open(/dev/fuse, O_RDWR)";
    if !Path::new("/dev/fuse").exists() {
        return feature("fuse", false, "no /dev/fuse", how);
    }
    match open_dev(c"/dev/fuse", libc::O_RDWR) {
        Ok(fd) => {
            close_fd(fd);
            feature("fuse", true, "/dev/fuse opens read-write", how)
        }
        Err(e) => feature(
            "fuse",
            false,
            format!(
                "/dev/fuse exists but open(O_RDWR) failed: {}",
                errno_text(e)
            ),
            how,
        ),
    }
}

/// `KVM_GET_API_VERSION = _IO(0xAE, 0x00)`.
const KVM_GET_API_VERSION: libc::Ioctl = 0xAE00;
/// `KVM_CREATE_VM = _IO(0xAE, 0x01)`.
const KVM_CREATE_VM: libc::Ioctl = 0xAE01;
/// The only KVM API version ever released.
const KVM_API_VERSION: libc::c_int = 12;

/// Which hardware virtualization flag `/proc/cpuinfo` shows, if any.
fn cpu_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':').map(|(_, v)| v));
    for line in flags {
        for flag in line.split_whitespace() {
            match flag {
                "vmx" => return Some("vmx"),
                "svm" => return Some("svm"),
                _ => {}
            }
        }
    }
    None
}

pub(super) fn probe_kvm() -> Feature {
    let how = "open(/dev/kvm, O_RDWR) + ioctl KVM_GET_API_VERSION (0xAE00) == 12 + ioctl KVM_CREATE_VM \
               (0xAE01) + vmx/svm in /proc/cpuinfo flags";
    let virt = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| cpu_virt_flag(&s));
    let cpu_text = match virt {
        Some(f) => format!("CPU has {f}"),
        None => "CPU has no vmx/svm".to_string(),
    };
    if !Path::new("/dev/kvm").exists() {
        return feature("kvm", false, format!("no /dev/kvm; {cpu_text}"), how);
    }
    let fd = match open_dev(c"/dev/kvm", libc::O_RDWR) {
        Ok(fd) => fd,
        Err(e) => {
            return feature(
                "kvm",
                false,
                format!(
                    "/dev/kvm exists but open(O_RDWR) failed: {}; {cpu_text}",
                    errno_text(e)
                ),
                how,
            );
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and touches no memory.
    let api = unsafe { libc::ioctl(fd, KVM_GET_API_VERSION, 0) };
    if api != KVM_API_VERSION {
        let why = if api < 0 {
            format!("KVM_GET_API_VERSION failed: {}", errno_text(last_errno()))
        } else {
            format!("KVM_GET_API_VERSION returned {api}, expected {KVM_API_VERSION}")
        };
        close_fd(fd);
        return feature(
            "kvm",
            false,
            format!("/dev/kvm opens, but {why}; {cpu_text}"),
            how,
        );
    }
    // SAFETY: KVM_CREATE_VM with machine type 0 returns a new fd or -1.
    let vm = unsafe { libc::ioctl(fd, KVM_CREATE_VM, 0) };
    let vm_errno = last_errno();
    close_fd(fd);
    if vm < 0 {
        return feature(
            "kvm",
            false,
            format!(
                "/dev/kvm opens, API {api}, but KVM_CREATE_VM failed: {}; {cpu_text}",
                errno_text(vm_errno)
            ),
            how,
        );
    }
    close_fd(vm);
    match virt {
        Some(f) => feature(
            "kvm",
            true,
            format!("/dev/kvm opens, API {api}, KVM_CREATE_VM works, CPU has {f}"),
            how,
        ),
        None => feature(
            "kvm",
            false,
            format!(
                "/dev/kvm opens, API {api}, KVM_CREATE_VM works, but CPU has no vmx/svm: \
                 PVM-only host, stock guest kernels will not boot"
            ),
            how,
        ),
    }
}

/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID`.
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::Ioctl = 0x7b9;
/// `VMADDR_CID_ANY`: no local CID.
const VMADDR_CID_ANY: u32 = u32::MAX;

pub(super) fn probe_vsock() -> Feature {
    let how = "/dev/vsock exists + socket(AF_VSOCK, SOCK_STREAM, 0) + ioctl(/dev/vsock, \
               IOCTL_VM_SOCKETS_GET_LOCAL_CID)";
    let confine = "network namespaces do not confine vsock, so cells deny AF_VSOCK with seccomp";
    let dev = Path::new("/dev/vsock").exists();
    // SAFETY: socket with integer arguments; the fd is closed below.
    let sock = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    let sock_text = if sock < 0 {
        format!("socket(AF_VSOCK) failed: {}", errno_text(last_errno()))
    } else {
        close_fd(sock);
        "socket(AF_VSOCK) works".to_string()
    };
    let cid_text = if dev {
        match open_dev(c"/dev/vsock", libc::O_RDONLY) {
            Ok(fd) => {
                let mut cid: u32 = VMADDR_CID_ANY;
                // SAFETY: the ioctl writes one u32 to &mut cid.
                let r = unsafe {
                    libc::ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &mut cid as *mut u32)
                };
                let errno = last_errno();
                close_fd(fd);
                if r < 0 {
                    format!("local CID unknown: {}", errno_text(errno))
                } else if cid == VMADDR_CID_ANY {
                    "no local CID".to_string()
                } else {
                    format!("local CID {cid}")
                }
            }
            Err(e) => format!("open(/dev/vsock) failed: {}", errno_text(e)),
        }
    } else {
        "no /dev/vsock".to_string()
    };
    feature(
        "vsock",
        sock >= 0,
        format!("{sock_text}; {cid_text}; {confine}"),
        how,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn check_cpu_virt_flag() {
        assert_eq!(cpu_virt_flag("flags\t\t: fpu vme vmx sse\n"), Some("vmx"));
        assert_eq!(cpu_virt_flag("flags\t\t: fpu svm\n"), Some("svm"));
        assert_eq!(cpu_virt_flag("flags\t\t: fpu vmxnotreally\n"), None);
    }
}
