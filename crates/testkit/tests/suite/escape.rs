//! The escape suite: a probe inside a real cell tries to get out; every attempt must fail.
//!
//! Each test starts its own cell (they run in parallel) with the probe bind-mounted read-only.
//! Host-side fixtures — a secret file outside every mount, listening sockets, a victim process —
//! give the probe real targets. Positive controls at the end show the harness can tell an
//! allowed action from a blocked one, so a passing suite is not vacuous.

use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use warren_cell::cgroup::CgroupLimits;
use warren_cell::{CellSpec, Workspace, WorkspaceMode};
use warren_testkit::{
    PROBE_IN_CELL, TempDir, assert_blocked, probe, require_cgroup_limits, require_process_tier,
    run, spec_with_probe, start,
};

use super::{JAIL, PROBE};

struct Env {
    _state: TempDir,
    host: TempDir,
    spec: CellSpec,
}

/// A state dir, a host dir holding a planted secret, and a spec with the probe.
fn env() -> Option<Env> {
    if !require_process_tier() {
        return None;
    }
    let state = TempDir::new("state");
    let host = TempDir::new("host");
    std::fs::write(host.path().join("secret.txt"), "TOP-SECRET-HOST-DATA").unwrap();
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        host.path().join("secret.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let spec = spec_with_probe(state.path(), PROBE);
    Some(Env {
        _state: state,
        host,
        spec,
    })
}

fn secret_path(e: &Env) -> String {
    e.host.path().join("secret.txt").display().to_string()
}

macro_rules! blocked {
    ($name:ident, [$($arg:expr),+ $(,)?]) => {
        #[test]
        fn $name() {
            let Some(e) = env() else { return };
            let cell = start(&e.spec, JAIL);
            assert_blocked(&cell, &[$($arg),+]);
        }
    };
}

// --- Files outside the namespace -----------------------------------------------------------

blocked!(shadow_file_absent, ["read-file", "/etc/shadow"]);
blocked!(gshadow_file_absent, ["read-file", "/etc/gshadow"]);
blocked!(sys_not_mounted, ["read-file", "/sys/kernel/notes"]);
blocked!(kcore_unreadable, ["read-file", "/proc/kcore"]);

#[test]
fn host_file_outside_mounts() {
    let Some(e) = env() else { return };
    let cell = start(&e.spec, JAIL);
    assert_blocked(&cell, &["read-file", &secret_path(&e)]);
}

#[test]
fn dotdot_traversal_out_of_workspace() {
    let Some(mut e) = env() else { return };
    let ws = TempDir::new("ws");
    warren_testkit::give_to_nobody(ws.path());
    e.spec.workspace = Some(Workspace {
        host: ws.path().to_path_buf(),
        mode: WorkspaceMode::ReadWrite,
    });
    let cell = start(&e.spec, JAIL);
    let path = format!("/workspace/../../../../..{}", secret_path(&e));
    assert_blocked(&cell, &["read-file", &path]);
    assert_blocked(
        &cell,
        &[
            "list-dir",
            &format!("/workspace/../../..{}", e.host.path().display()),
        ],
    );
}

#[test]
fn planted_symlink_out_of_workspace() {
    let Some(mut e) = env() else { return };
    let ws = TempDir::new("ws");
    std::os::unix::fs::symlink(secret_path(&e), ws.path().join("escape")).unwrap();
    std::os::unix::fs::symlink(e.host.path(), ws.path().join("escape-dir")).unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/shadow", ws.path().join("shadow")).unwrap();
    e.spec.workspace = Some(Workspace {
        host: ws.path().to_path_buf(),
        mode: WorkspaceMode::Cow,
    });
    let cell = start(&e.spec, JAIL);
    assert_blocked(&cell, &["read-file", "/workspace/escape"]);
    assert_blocked(&cell, &["read-file", "/workspace/escape-dir/secret.txt"]);
    assert_blocked(&cell, &["read-file", "/workspace/shadow"]);
}

#[test]
fn proc_root_tricks() {
    let Some(e) = env() else { return };
    let cell = start(&e.spec, JAIL);
    assert_blocked(
        &cell,
        &["read-file", &format!("/proc/1/root{}", secret_path(&e))],
    );
    assert_blocked(
        &cell,
        &[
            "read-file",
            &format!("/proc/self/root/../../..{}", secret_path(&e)),
        ],
    );
    assert_blocked(&cell, &["list-dir", "/proc/1/root/"]);
    assert_blocked(&cell, &["read-file", "/proc/1/environ"]);
}

#[test]
fn proc_sys_and_sysrq_not_writable() {
    let Some(e) = env() else { return };
    let cell = start(&e.spec, JAIL);
    assert_blocked(&cell, &["write-file", "/proc/sys/kernel/hostname"]);
    assert_blocked(&cell, &["write-file", "/proc/sys/vm/drop_caches"]);
    assert_blocked(&cell, &["write-file", "/proc/sysrq-trigger"]);
    assert_blocked(&cell, &["write-file", "/proc/self/oom_score_adj"]);
}

blocked!(write_usr, ["write-file", "/usr/bin/warren-pwned"]);
blocked!(write_etc_passwd, ["write-file", "/etc/passwd"]);
blocked!(write_cell_root, ["mkdir", "/pwned"]);
blocked!(write_dev, ["write-file", "/dev/pwned"]);

#[test]
fn write_readonly_workspace() {
    let Some(mut e) = env() else { return };
    let ws = TempDir::new("ws");
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    e.spec.workspace = Some(Workspace {
        host: ws.path().to_path_buf(),
        mode: WorkspaceMode::ReadOnly,
    });
    let cell = start(&e.spec, JAIL);
    assert_blocked(&cell, &["write-file", "/workspace/x"]);
    assert!(!ws.path().join("x").exists());
}

// --- Network and IPC -------------------------------------------------------------------------

#[test]
fn host_unix_socket() {
    let Some(e) = env() else { return };
    let sock = e.host.path().join("host.sock");
    let _l = UnixListener::bind(&sock).unwrap();
    let cell = start(&e.spec, JAIL);
    assert_blocked(&cell, &["unix-connect", &sock.display().to_string()]);
}

#[test]
fn host_abstract_socket() {
    let Some(e) = env() else { return };
    use std::os::linux::net::SocketAddrExt;
    let name = format!("warren-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _l = UnixListener::bind_addr(&addr).unwrap();
    let cell = start(&e.spec, JAIL);
    assert_blocked(&cell, &["abstract-connect", &name]);
}

/// The host's own address on its default route, found without sending anything (a UDP
/// socket's `connect` only picks the route).
fn host_address() -> Option<std::net::IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("203.0.113.7:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// A port nothing on the host listens on (as of now).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn host_tcp_listener() {
    let Some(e) = env() else { return };
    // Listening on every host address: the cell's 127.0.0.1 is its own, and the host's
    // address is not routable from a namespace whose only interface is `lo`.
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let cell = start(&e.spec, JAIL);
    assert_blocked(&cell, &["tcp-connect", &format!("127.0.0.1:{port}")]);
    match host_address() {
        Some(ip) => {
            let r = assert_blocked(&cell, &["tcp-connect", &format!("{ip}:{port}")]);
            assert!(
                r.json["detail"].as_str().unwrap().contains("unreachable"),
                "{}",
                r.json
            );
        }
        None => eprintln!("this host has no route off loopback; only 127.0.0.1 was tried"),
    }
    l.set_nonblocking(true).unwrap();
    assert!(
        l.accept().is_err(),
        "the host listener accepted a connection"
    );
}

#[test]
fn tcp_bind_works_inside_the_cell_and_stays_there() {
    let Some(e) = env() else { return };
    let port = free_port();
    let cell = start(&e.spec, JAIL);
    // Documented behaviour: a cell may listen and connect on its own loopback (local servers
    // and their tests); the network namespace, not Landlock, keeps it in.
    let r = probe(&cell, &["tcp-bind", &port.to_string()]);
    assert_eq!(
        r.outcome, "escaped",
        "binding in the cell failed: {}",
        r.json
    );
    let (o, _) = run(
        &cell,
        &[
            "/bin/sh",
            "-c",
            &format!(
                "{} tcp-serve {port} 30000 >/dev/null 2>&1 &",
                warren_testkit::PROBE_IN_CELL
            ),
        ],
        None,
    );
    assert_eq!(o.exit.code, Some(0), "{o:?}");
    let inside = (0..200).any(|_| {
        let ok = probe(&cell, &["tcp-connect", &format!("127.0.0.1:{port}")]).outcome == "escaped";
        if !ok {
            std::thread::sleep(Duration::from_millis(20));
        }
        ok
    });
    assert!(
        inside,
        "the cell's own listener was not reachable inside the cell"
    );
    // The host's 127.0.0.1 is another namespace's: the cell's listener is not there.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "the cell's listener is reachable from the host"
    );
    if let Some(ip) = host_address() {
        let addr = std::net::SocketAddr::new(ip, port);
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "the cell's listener is reachable on the host's address"
        );
    }
}

#[test]
fn egress_cell_reaches_only_its_forwarder() {
    let Some(mut e) = env() else { return };
    // A stand-in for the host's egress proxy: a unix socket that counts connections.
    let dir = TempDir::new("egress");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("proxy.sock");
    let proxy = UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        for c in proxy.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(c);
        }
    });
    let host = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host.local_addr().unwrap().port();
    e.spec.egress = Some(sock.clone());
    let cell = start(&e.spec, JAIL);
    // Control: the forwarder on 127.0.0.1:3128 reaches the proxy.
    let r = probe(&cell, &["tcp-connect", "127.0.0.1:3128"]);
    assert_eq!(r.outcome, "escaped", "{}", r.json);
    let reached = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    assert!(reached, "the forwarder did not reach the proxy's socket");
    // Everything else stays unreachable: the host's loopback port, the host's address, and
    // any other address.
    assert_blocked(&cell, &["tcp-connect", &format!("127.0.0.1:{port}")]);
    if let Some(ip) = host_address() {
        assert_blocked(&cell, &["tcp-connect", &format!("{ip}:{port}")]);
    }
    assert_blocked(&cell, &["tcp-connect", "203.0.113.7:443"]);
    assert_blocked(&cell, &["udp-send", "203.0.113.7:53"]);
    host.set_nonblocking(true).unwrap();
    assert!(
        host.accept().is_err(),
        "the host listener accepted a connection"
    );
}

#[test]
fn udp_packet_out() {
    let Some(e) = env() else { return };
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let cell = start(&e.spec, JAIL);
    // 127.0.0.1 is the cell's own loopback: the datagram may be sent, into the cell's
    // namespace only (what matters is that the host never sees it, below).
    let own = probe(&cell, &["udp-send", &format!("127.0.0.1:{port}")]);
    eprintln!("udp to the cell's own loopback: {}", own.json);
    if let Some(ip) = host_address() {
        assert_blocked(&cell, &["udp-send", &format!("{ip}:{port}")]);
    }
    assert_blocked(&cell, &["udp-send", "203.0.113.7:53"]);
    let mut buf = [0u8; 64];
    assert!(
        sock.recv(&mut buf).is_err(),
        "the host received a UDP packet from the cell"
    );
}

blocked!(dns_lookup, ["dns", "example.com"]);
blocked!(raw_and_packet_sockets, ["raw-socket"]);
blocked!(vsock_socket, ["vsock"]);
blocked!(netlink_audit_socket, ["netlink-audit"]);

// --- Processes and kernel interfaces ------------------------------------------------------------

blocked!(ptrace_sibling, ["ptrace-sibling"]);
blocked!(process_vm_readv_sibling, ["process-vm-readv"]);
blocked!(mount_anything, ["mount"]);
blocked!(unshare_to_regain_capabilities, ["unshare"]);
blocked!(setns_into_namespaces, ["setns"]);
blocked!(chroot_and_pivot_root, ["chroot"]);
blocked!(io_uring, ["io-uring"]);
blocked!(bpf, ["bpf"]);
blocked!(keyctl, ["keyctl"]);
blocked!(perf_event_open, ["perf-event"]);
blocked!(userfaultfd, ["userfaultfd"]);
blocked!(sethostname, ["sethostname"]);
blocked!(tiocsti_injection, ["tiocsti"]);
blocked!(kernel_modules, ["module"]);
blocked!(kexec_and_reboot, ["kexec-reboot"]);
blocked!(set_clock, ["clock"]);
blocked!(swap_acct_syslog, ["swap-acct"]);
blocked!(io_ports, ["iopl"]);
blocked!(open_by_handle, ["open-by-handle"]);
#[test]
fn x32_system_calls() {
    let Some(e) = env() else { return };
    let cell = start(&e.spec, JAIL);
    let r = assert_blocked(&cell, &["x32-syscall"]);
    // The control: the native call works.
    assert!(r.json["native_getpid"].as_i64().unwrap() > 0, "{}", r.json);
    // Refused by the cell's own filter (EPERM), not merely absent from this kernel (ENOSYS):
    // the answer does not depend on CONFIG_X86_X32_ABI.
    if cfg!(target_arch = "x86_64") {
        let detail = r.json["detail"].as_str().unwrap();
        assert_eq!(detail.matches("(os error 1)").count(), 2, "{detail}");
    }
}
blocked!(dev_kvm, ["open-device", "/dev/kvm"]);
blocked!(dev_vsock, ["open-device", "/dev/vsock"]);
blocked!(block_device_node, ["open-device", "/dev/vda"]);
blocked!(mknod_block_device, ["mknod-block", "/tmp/blk"]);

#[test]
fn signal_host_process() {
    let Some(e) = env() else { return };
    let mut victim = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let cell = start(&e.spec, JAIL);
    assert_blocked(&cell, &["kill", &victim.id().to_string()]);
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the host process was killed from the cell"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
}

// --- Identity ----------------------------------------------------------------------------------

blocked!(no_capabilities_nnp_seccomp, ["caps"]);
blocked!(no_inherited_host_fds, ["fds"]);

#[test]
fn host_environment_secret_not_visible() {
    let Some(e) = env() else { return };
    // Start the supervisor itself with a secret in its environment (as if the host process had
    // one): neither the commands nor the cell's pid 1 may expose it.
    let program = warren_cell::JailProgram {
        program: "/usr/bin/env".into(),
        args: vec![
            "WARREN_TEST_SECRET=sk-planted-0123456789".into(),
            JAIL.into(),
        ],
        fork_server: false,
    };
    let cell = warren_cell::ProcessCell::start(&e.spec, &program).unwrap();
    assert_blocked(&cell, &["env-absent", "WARREN_TEST_SECRET"]);
    let (_, out) = run(
        &cell,
        &["/bin/sh", "-c", "env; cat /proc/*/environ 2>/dev/null"],
        None,
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("sk-planted"),
        "secret visible in the cell"
    );
}

#[test]
fn setuid_binaries_gain_nothing() {
    let Some(mut e) = env() else { return };
    if !warren_testkit::require_root("planting a setuid-root binary") {
        return;
    }
    let ws = TempDir::new("ws");
    let suid = ws.path().join("probe-suid");
    std::fs::copy(PROBE, &suid).unwrap();
    std::os::unix::fs::chown(&suid, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    e.spec.workspace = Some(Workspace {
        host: ws.path().to_path_buf(),
        mode: WorkspaceMode::ReadOnly,
    });
    let cell = start(&e.spec, JAIL);
    let r = assert_blocked(&cell, &["setuid-exec", "/workspace/probe-suid"]);
    assert_eq!(
        r.json["child"]["Uid"][1], 1000,
        "effective uid changed: {}",
        r.json
    );
}

// --- Resource limits -------------------------------------------------------------------------

#[test]
fn fork_bomb_stopped_by_pids_limit() {
    let Some(mut e) = env() else { return };
    if !require_cgroup_limits() {
        return;
    }
    e.spec.limits.cgroup = CgroupLimits {
        pids: Some(64),
        ..Default::default()
    };
    let cell = start(&e.spec, JAIL);
    let r = assert_blocked(&cell, &["fork-bomb", "64"]);
    assert!(r.json["forked"].as_u64().unwrap() < 64, "{}", r.json);
    // The cell still works afterwards.
    let (o, out) = run(&cell, &["/bin/echo", "alive"], None);
    assert_eq!(
        (o.exit.code, out.stdout.as_slice()),
        (Some(0), &b"alive\n"[..])
    );
}

#[test]
fn memory_hog_killed_and_reported_oom() {
    let Some(mut e) = env() else { return };
    if !require_cgroup_limits() {
        return;
    }
    e.spec.limits.cgroup = CgroupLimits {
        memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    let cell = start(&e.spec, JAIL);
    let (o, out) = run(
        &cell,
        &[warren_testkit::PROBE_IN_CELL, "memory-hog", "1024"],
        Some(60_000),
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("escaped"),
        "allocated 1 GiB under a 64 MiB limit"
    );
    assert_eq!(o.exit.signal, Some(libc::SIGKILL), "{o:?}");
    assert!(o.oom_killed, "OOM kill not reported: {o:?}");
    // The victim is always a command, never the cell's init: the cell survives, every time,
    // even when the hog sits inside a pipeline and the OOM killer runs more than once.
    for _ in 0..5 {
        let (o, _) = run(
            &cell,
            &["/bin/sh", "-c", "head -c 512m /dev/zero | tail > /dev/null"],
            Some(60_000),
        );
        assert!(o.oom_killed && o.exit.code != Some(0), "{o:?}");
    }
    let (o, out) = run(
        &cell,
        &[
            "/bin/cat",
            "/proc/1/oom_score_adj",
            "/proc/self/oom_score_adj",
        ],
        None,
    );
    assert_eq!(
        (o.exit.code, String::from_utf8_lossy(&out.stdout).as_ref()),
        (Some(0), "0\n1000\n")
    );
}

#[test]
fn spinner_killed_at_timeout() {
    let Some(e) = env() else { return };
    let cell = start(&e.spec, JAIL);
    let t = std::time::Instant::now();
    let (o, _) = run(&cell, &[warren_testkit::PROBE_IN_CELL, "spin"], Some(300));
    assert!(
        o.exit.timed_out && o.exit.signal == Some(libc::SIGKILL),
        "{o:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn disk_fill_stopped_by_tmpfs_size() {
    let Some(mut e) = env() else { return };
    e.spec.limits.tmp_bytes = 8 << 20;
    let cell = start(&e.spec, JAIL);
    let r = assert_blocked(
        &cell,
        &["disk-fill", "/tmp/fill", &(8u64 << 20).to_string()],
    );
    assert!(r.json["written"].as_u64().unwrap() <= 9 << 20);
}

// --- Positive controls: the harness does see allowed actions ------------------------------------

#[test]
fn controls_allowed_actions_are_reported_as_such() {
    let Some(mut e) = env() else { return };
    let ws = TempDir::new("ws");
    e.spec.workspace = Some(Workspace {
        host: ws.path().to_path_buf(),
        mode: WorkspaceMode::Cow,
    });
    // A host file mounted read-only: readable in the cell, not writable.
    let ro = TempDir::new("ro");
    std::fs::write(ro.path().join("kept"), "original").unwrap();
    std::fs::set_permissions(ro.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    e.spec.extra_mounts.push(warren_protocol::mount::Mount {
        target: "/ro".into(),
        kind: warren_protocol::mount::MountKind::Bind {
            source: ro.path().display().to_string(),
            readonly: true,
        },
    });
    let cell = start(&e.spec, JAIL);
    for args in [
        &["write-file", "/tmp/ok"][..],
        &["write-file", "/workspace/ok"],
        &["read-file", "/etc/passwd"],
        &["read-file", "/usr/bin/env"],
        &["list-dir", "/workspace"],
    ] {
        let r = probe(&cell, args);
        assert_eq!(
            r.outcome, "escaped",
            "an allowed action was reported as blocked: {args:?} {}",
            r.json
        );
    }
    // What the probe reported as done really happened: its writes are there to read back (one
    // byte, "x"), in the cell only (the workspace is copy-on-write), and it read every byte.
    let (_, out) = run(&cell, &["/bin/cat", "/tmp/ok", "/workspace/ok"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "xx");
    assert!(
        !ws.path().join("ok").exists(),
        "a cow write reached the host"
    );
    let r = probe(&cell, &["read-file", "/ro/kept"]);
    assert_eq!(
        (r.outcome.as_str(), r.json["bytes"].as_u64()),
        ("escaped", Some(8)),
        "{}",
        r.json
    );
    let r = probe(&cell, &["read-file", PROBE_IN_CELL]);
    assert_eq!(
        r.json["bytes"].as_u64(),
        Some(std::fs::metadata(PROBE).unwrap().len()),
        "{}",
        r.json
    );
    // And what it reported as blocked really did not happen: the read-only file is intact,
    // seen from the host and from the cell.
    assert_blocked(&cell, &["write-file", "/ro/kept"]);
    assert_blocked(&cell, &["write-file", "/ro/new"]);
    assert_eq!(
        std::fs::read_to_string(ro.path().join("kept")).unwrap(),
        "original"
    );
    assert!(!ro.path().join("new").exists());
    let (_, out) = run(&cell, &["/bin/cat", "/ro/kept"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "original");
    let r = probe(&cell, &["whoami"]);
    assert_eq!(r.outcome, "info");
    drop(cell);
}

#[test]
fn no_controlling_terminal_of_the_host() {
    let Some(e) = env() else { return };
    let cell = start(&e.spec, JAIL);
    // /dev/tty exists, but opening it must not reach any terminal of the host.
    assert_blocked(&cell, &["open-device", "/dev/tty"]);
    // Neither the commands nor the cell's pid 1 have a controlling terminal (field 7, tty_nr).
    for who in ["self", "1"] {
        let (_, out) = run(&cell, &["/bin/cat", &format!("/proc/{who}/stat")], None);
        let stat = String::from_utf8_lossy(&out.stdout);
        let after = stat.rsplit(')').next().unwrap_or_default();
        let tty_nr: i64 = after.split_whitespace().nth(4).unwrap().parse().unwrap();
        assert_eq!(tty_nr, 0, "/proc/{who} has a controlling terminal: {stat}");
    }
}

#[test]
fn other_commands_and_init_memory_unreadable() {
    let Some(e) = env() else { return };
    let cell = start(&e.spec, JAIL);
    // A long-lived command left running in the cell by an earlier request.
    let (_, out) = run(
        &cell,
        &["/bin/sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"],
        None,
    );
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(pid.parse::<u32>().is_ok(), "{pid:?}");
    for path in [
        format!("/proc/{pid}/mem"),
        format!("/proc/{pid}/environ"),
        "/proc/1/mem".into(),
    ] {
        let r = assert_blocked(&cell, &["read-file", &path]);
        // Refused at open (the ptrace-mode access check), not merely an unreadable offset.
        assert!(
            r.json["detail"].as_str().unwrap().starts_with("open:"),
            "{}",
            r.json
        );
    }
}

#[test]
fn the_init_stays_non_dumpable_while_commands_run() {
    let Some(e) = env() else { return };
    let cell = start(&e.spec, JAIL);
    // Each command raises its own dumpable flag between clone and exec, while it still shares
    // the init's memory; the init must be non-dumpable again afterwards: its /proc entries
    // belong to the unmapped root (the overflow id here), never to the cell's user.
    for _ in 0..3 {
        let (o, out) = run(
            &cell,
            &[
                "/bin/sh",
                "-c",
                "stat -c %u /proc/1/mem /proc/1/environ /proc/1/fd",
            ],
            None,
        );
        assert_eq!(o.exit.code, Some(0), "{o:?}");
        let owners = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            owners.lines().count() == 3 && owners.lines().all(|u| u != "1000"),
            "the init is dumpable: its /proc entries belong to the cell user: {owners}"
        );
    }
}

#[test]
fn idmapped_root_workspace_widens_nothing() {
    let Some(mut e) = env() else { return };
    if !warren_testkit::require_root("idmapped workspaces are made for root only") {
        return;
    }
    let ws = TempDir::new("rootws");
    std::fs::write(ws.path().join("root-file"), "r").unwrap();
    std::fs::write(ws.path().join("other-user-secret"), "s").unwrap();
    std::os::unix::fs::chown(ws.path().join("other-user-secret"), Some(1234), Some(1234)).unwrap();
    std::fs::set_permissions(
        ws.path().join("other-user-secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let suid = ws.path().join("probe-suid");
    std::fs::copy(PROBE, &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Disk uid 0 is never mapped read-write: a cell could leave setuid-root files behind.
    e.spec.workspace = Some(Workspace {
        host: ws.path().to_path_buf(),
        mode: WorkspaceMode::ReadWrite,
    });
    let program = warren_cell::JailProgram {
        program: JAIL.into(),
        args: vec![],
        fork_server: false,
    };
    let refused = warren_cell::ProcessCell::start(&e.spec, &program);
    assert!(
        matches!(&refused, Err(warren_cell::CellError::Spec(m)) if m.contains("owned by root")),
        "a read-write root-owned workspace started: {:?}",
        refused.err()
    );
    {
        e.spec.workspace = Some(Workspace {
            host: ws.path().to_path_buf(),
            mode: WorkspaceMode::Cow,
        });
        let cell = start(&e.spec, JAIL);
        // Still an unprivileged host uid, never host root.
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", cell.info().init_pid)).unwrap();
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_owned();
        assert!(
            uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
            "{uid_line}"
        );
        // Files of other owners keep their protection; setuid still gains nothing.
        assert_blocked(&cell, &["read-file", "/workspace/other-user-secret"]);
        let r = assert_blocked(&cell, &["setuid-exec", "/workspace/probe-suid"]);
        assert_eq!(r.json["child"]["Uid"][1], 1000, "{}", r.json);
        // Positive control: the root-owned file is the cell's to edit.
        assert_eq!(
            probe(&cell, &["write-file", "/workspace/root-file"]).outcome,
            "escaped"
        );
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(ws.path().join("root-file"))
            .unwrap()
            .uid(),
        0
    );
}
