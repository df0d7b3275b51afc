//! Cell lifecycle: the authenticated channel, session persistence, concurrency, and complete
//! teardown (no process, cgroup, mount or directory left behind).

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

use warren_cell::cgroup::CgroupLimits;
use warren_cell::{Cell, Workspace, WorkspaceMode};
use warren_protocol::guest::{ClientFrame, Decoder, FailureCode, Request, Response, ServerFrame};
use warren_testkit::fault::Fault;
use warren_testkit::{
    TempDir, require_cgroup_limits, require_process_tier, run, spec_with_probe, start,
};

use super::{JAIL, PROBE};

#[test]
fn wrong_secret_rejected_right_secret_accepted() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let cell = start(&spec_with_probe(state.path(), PROBE), JAIL);
    let (mut conn, mut dec) = cell.connect_with_secret(&[0x41; 32]).unwrap();
    let mut buf = Vec::new();
    ClientFrame::Request(Request::Ping).encode(&mut buf);
    let _ = conn.write_all(&buf);
    let mut all = Vec::new();
    let _ = conn.read_to_end(&mut all);
    dec.push(&all);
    match dec.next_server().unwrap() {
        Some(ServerFrame::Done(Response::Failed { code, .. })) => {
            assert_eq!(code, FailureCode::Unauthenticated)
        }
        other => panic!("a wrong secret was not rejected: {other:?}"),
    }
    assert!(dec.next_server().unwrap().is_none(), "data after rejection");
    // Garbage instead of a hello is rejected too, and the cell keeps serving.
    let (mut conn, _) = cell.connect_with_secret(&[0; 32]).unwrap();
    let _ = conn.write_all(&[0xff; 64]);
    cell.ping().unwrap();
    let _ = Decoder::default();
}

#[test]
fn cwd_env_and_files_persist_between_commands() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let cell = start(&spec_with_probe(state.path(), PROBE), JAIL);
    run(
        &cell,
        &[
            "/bin/sh",
            "-c",
            "mkdir -p /tmp/a/b && echo kept > /tmp/a/b/f",
        ],
        None,
    );
    cell.chdir("/tmp/a/b").unwrap();
    cell.set_env(vec![("GREETING".into(), Some("hello".into()))])
        .unwrap();
    let (o, out) = run(
        &cell,
        &["/bin/sh", "-c", "pwd; cat f; echo $GREETING"],
        None,
    );
    assert_eq!(o.exit.code, Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/tmp/a/b\nkept\nhello\n"
    );
    assert!(cell.chdir("/nonexistent").is_err());
}

#[test]
fn concurrent_execs_in_one_cell() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let cell = start(&spec_with_probe(state.path(), PROBE), JAIL);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let cell = &cell;
                s.spawn(move || {
                    let (o, out) = run(
                        cell,
                        &["/bin/sh", "-c", &format!("sleep 0.05; echo {i}")],
                        None,
                    );
                    (
                        o.exit.code,
                        String::from_utf8_lossy(&out.stdout).into_owned(),
                    )
                })
            })
            .collect();
        for (i, h) in hs.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), (Some(0), format!("{i}\n")));
        }
    });
}

#[test]
fn stdin_streams_and_output_cap_is_marked() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let cell = start(&spec_with_probe(state.path(), PROBE), JAIL);
    let spec = warren_cell::ExecSpec {
        argv: vec!["/bin/cat".into()],
        max_output_bytes: 1 << 20,
        ..Default::default()
    };
    let mut out = warren_cell::Collect::default();
    let input: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(b"from stdin".to_vec()));
    let o = cell.exec(&spec, Some(input), &mut out).unwrap();
    assert_eq!(
        (o.exit.code, out.stdout.as_slice()),
        (Some(0), &b"from stdin"[..])
    );

    let spec = warren_cell::ExecSpec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "head -c 100000 /dev/zero".into(),
        ],
        max_output_bytes: 1000,
        ..Default::default()
    };
    let mut out = warren_cell::Collect::default();
    let o = cell.exec(&spec, None, &mut out).unwrap();
    assert_eq!(out.stdout.len(), 1000);
    assert_eq!(o.exit.stdout_bytes, 100_000);
    assert!(o.stdout_truncated && !o.stderr_truncated);
}

#[test]
fn missing_command_and_bad_cwd_are_reported() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let cell = start(&spec_with_probe(state.path(), PROBE), JAIL);
    let (o, _) = run(&cell, &["no-such-command"], None);
    assert_eq!(o.failure.map(|f| f.0), Some(FailureCode::NotFound));
    let spec = warren_cell::ExecSpec {
        argv: vec!["/bin/true".into()],
        cwd: Some("/nope".into()),
        max_output_bytes: 10,
        ..Default::default()
    };
    let o = cell
        .exec(&spec, None, &mut warren_cell::Collect::default())
        .unwrap();
    assert_eq!(o.failure.map(|f| f.0), Some(FailureCode::BadCwd));
}

fn pid_ns_of(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

fn processes_in_ns(ns: u64) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .is_ok_and(|l| l.to_string_lossy() == format!("pid:[{ns}]"))
        })
        .collect()
}

#[test]
fn killing_the_cell_leaves_nothing_behind() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let ws = TempDir::new("ws");
    warren_testkit::give_to_nobody(ws.path());
    let mut spec = spec_with_probe(state.path(), PROBE);
    spec.workspace = Some(Workspace {
        host: ws.path().to_path_buf(),
        mode: WorkspaceMode::ReadWrite,
    });
    let limits = require_cgroup_limits();
    if limits {
        spec.limits.cgroup = CgroupLimits {
            memory_bytes: Some(256 << 20),
            pids: Some(100),
            cpus: Some(1.0),
        };
    }
    let mut cell = start(&spec, JAIL);
    // Daemons that try to outlive their command, including one that double-forks and setsids.
    run(
        &cell,
        &[
            "/bin/sh",
            "-c",
            "sleep 1000 & (setsid sleep 1000 &) ; echo started",
        ],
        None,
    );
    let init = cell.info().init_pid;
    let ns = pid_ns_of(init).expect("init's pid namespace");
    let mnt = std::fs::read_link(format!("/proc/{init}/ns/mnt")).unwrap();
    assert!(
        processes_in_ns(ns).len() >= 3,
        "expected init and two sleepers"
    );
    let cgroups = cell.cgroups().map(|c| c.dirs.clone()).unwrap_or_default();
    assert_eq!(cgroups.is_empty(), !limits);
    for d in &cgroups {
        assert!(d.exists());
    }

    cell.kill();
    assert!(
        processes_in_ns(ns).is_empty(),
        "processes survived the cell"
    );
    for d in &cgroups {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
    // No process anywhere still holds the cell's mount namespace, so its mounts are gone.
    let holders = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("ns/mnt")).is_ok_and(|l| l == mnt))
        .count();
    assert_eq!(holders, 0, "the cell's mount namespace is still alive");
    // A non-cow cell creates no files on the host.
    assert_eq!(
        std::fs::read_dir(state.path()).unwrap().count(),
        0,
        "state dir not empty"
    );
}

/// The test jail, with one mechanism taken away when asked.
fn jail_with(fault: Option<Fault>) -> warren_cell::JailProgram {
    warren_cell::JailProgram {
        program: JAIL.into(),
        args: fault.map(Fault::flag).into_iter().collect(),
        fork_server: false,
    }
}

/// Start `spec`, which must be refused; returns (step, reason).
fn refused(
    spec: &warren_cell::CellSpec,
    jail: &warren_cell::JailProgram,
    what: &str,
) -> (String, String) {
    match warren_cell::ProcessCell::start(spec, jail) {
        Ok(cell) => panic!("the cell started {what}: {:?}", cell.info()),
        Err(warren_cell::CellError::Refused { step, reason }) => {
            eprintln!("{what}: refused at {step:?}: {reason}");
            (step, reason)
        }
        Err(e) => panic!("{what}: not a refusal naming a step: {e}"),
    }
}

#[test]
fn fails_closed_naming_the_missing_mechanism() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let spec = spec_with_probe(state.path(), PROBE);
    assert!(spec.require_landlock, "cells require Landlock by default");

    // Positive control: the same spec through the same fault machinery (a seccomp filter
    // installed before the jail, denying an unrelated call) starts, runs a command, and is
    // confined: so each refusal below is the missing mechanism's doing, not the harness's.
    let cell = match warren_cell::ProcessCell::start(&spec, &jail_with(Some(Fault::Control))) {
        Ok(c) => c,
        Err(e) => panic!("the control cell did not start: {e}"),
    };
    let (o, out) = run(&cell, &["/bin/sh", "-c", "echo started"], None);
    assert_eq!(
        (o.exit.code, String::from_utf8_lossy(&out.stdout).as_ref()),
        (Some(0), "started\n")
    );
    assert!(cell.info().landlock.filesystem, "{:?}", cell.info());
    assert!(cell.info().seccomp_rules > 0, "{:?}", cell.info());
    warren_testkit::assert_blocked(&cell, &["caps"]);
    drop(cell);

    // Each mechanism taken away at the kernel seam: the start is refused, naming it.
    for fault in Fault::MECHANISMS {
        let what = format!("without {}", fault.name());
        let (step, reason) = refused(&spec, &jail_with(Some(fault)), &what);
        match fault {
            Fault::Landlock => {
                assert_eq!(step, "landlock", "{reason}");
                assert!(reason.contains("Landlock is not available"), "{reason}");
                // The kernel's answer at the seam reaches the refusal.
                assert!(reason.contains("Function not implemented"), "{reason}");
            }
            Fault::Seccomp => assert_eq!(step, "seccomp install", "{reason}"),
            Fault::Userns => {
                assert_eq!(step, "user namespace", "{reason}");
                assert!(
                    reason.contains("cannot create a user namespace"),
                    "{reason}"
                );
            }
            Fault::MountApi => {
                assert!(step.starts_with("mount "), "{step}: {reason}");
                assert!(reason.contains("fd-based mount API"), "{reason}");
            }
            Fault::Control => unreachable!(),
        }
    }

    // Landlock is the one mechanism a spec may waive; a cell started so says it has none,
    // and keeps the rest.
    let mut waived = spec.clone();
    waived.require_landlock = false;
    let cell = match warren_cell::ProcessCell::start(&waived, &jail_with(Some(Fault::Landlock))) {
        Ok(c) => c,
        Err(e) => panic!("a cell that waives Landlock did not start without it: {e}"),
    };
    assert!(!cell.info().landlock.filesystem, "{:?}", cell.info());
    assert_eq!(cell.info().landlock.kernel_abi, 0, "{:?}", cell.info());
    assert!(cell.info().seccomp_rules > 0, "{:?}", cell.info());
    warren_testkit::assert_blocked(&cell, &["caps"]);
}

#[test]
fn a_missing_or_wrong_mount_source_is_refused_by_name() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let host = TempDir::new("host");
    let file = host.path().join("regular-file");
    std::fs::write(&file, "not a device").unwrap();
    let missing = host.path().join("does-not-exist");
    let (file, dir, missing) = (
        file.display().to_string(),
        host.path().display().to_string(),
        missing.display().to_string(),
    );
    use warren_protocol::mount::{Mount, MountKind};
    let cases = [
        (
            "/missing",
            MountKind::Bind {
                source: missing.clone(),
                readonly: true,
            },
            format!("source {missing}: No such file"),
        ),
        (
            "/dev/missing",
            MountKind::Device {
                source: missing.clone(),
            },
            format!("source {missing}: No such file"),
        ),
        (
            "/dev/file",
            MountKind::Device {
                source: file.clone(),
            },
            format!("{file} is not a character device"),
        ),
        (
            "/dev/dir",
            MountKind::Device {
                source: dir.clone(),
            },
            format!("{dir} is not a character device"),
        ),
    ];
    for (target, kind, want) in cases {
        let mut spec = spec_with_probe(state.path(), PROBE);
        spec.extra_mounts.push(Mount {
            target: target.into(),
            kind,
        });
        let (step, reason) = refused(
            &spec,
            &jail_with(None),
            &format!("with a bad source at {target}"),
        );
        assert_eq!(step, format!("mount {target}"), "{reason}");
        assert!(reason.contains(&want), "{reason} (wanted {want:?})");
    }
    // The same spec with a good source starts: the refusals above are the sources' doing.
    let mut spec = spec_with_probe(state.path(), PROBE);
    spec.extra_mounts.push(Mount {
        target: "/good".into(),
        kind: MountKind::Bind {
            source: dir.clone(),
            readonly: true,
        },
    });
    let cell = start(&spec, JAIL);
    let (_, out) = run(&cell, &["/bin/cat", "/good/regular-file"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not a device");
}

fn fork_server_jail() -> warren_cell::JailProgram {
    warren_cell::JailProgram {
        program: JAIL.into(),
        args: vec![],
        fork_server: true,
    }
}

#[test]
fn fork_server_cells_run_confined_and_tear_down_completely() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let spec = spec_with_probe(state.path(), PROBE);
    // Several cells through the same server, one after another and side by side.
    let mut cells: Vec<_> = (0..3)
        .map(|_| warren_cell::ProcessCell::start(&spec, &fork_server_jail()).unwrap())
        .collect();
    for cell in &cells {
        warren_testkit::assert_blocked(cell, &["caps"]);
        warren_testkit::assert_blocked(cell, &["fds"]);
        assert_eq!(
            warren_testkit::probe(cell, &["no-such-case"]).outcome,
            "error"
        );
    }
    let init = cells[0].info().init_pid;
    let ns = pid_ns_of(init).unwrap();
    run(&cells[0], &["/bin/sh", "-c", "sleep 1000 & echo"], None);
    for c in &mut cells {
        c.kill();
    }
    assert!(
        processes_in_ns(ns).is_empty(),
        "processes survived a fork-server cell"
    );
}

#[test]
fn killing_the_fork_server_takes_its_cells_down() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let spec = spec_with_probe(state.path(), PROBE);
    let cell = warren_cell::ProcessCell::start(&spec, &private_fork_server_jail()).unwrap();
    let init = cell.info().init_pid;
    let ns = pid_ns_of(init).unwrap();
    let supervisor = cell.info().supervisor_pid;
    let stat = std::fs::read_to_string(format!("/proc/{supervisor}/stat")).unwrap();
    let server: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        server,
        std::process::id() as i32,
        "the supervisor should be the server's child"
    );
    // SAFETY: killing the fork server this test started.
    unsafe { libc::kill(server, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_in_ns(ns).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "cell survived its fork server"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(cell);
    // The next cell gets a fresh server.
    let cell = warren_cell::ProcessCell::start(&spec, &private_fork_server_jail()).unwrap();
    cell.ping().unwrap();
}

/// A server of its own (servers are shared per program and arguments; the jail ignores the
/// extra argument), so killing it cannot disturb tests running in parallel.
fn private_fork_server_jail() -> warren_cell::JailProgram {
    warren_cell::JailProgram {
        program: JAIL.into(),
        args: vec!["--private-server-for-kill-test".into()],
        fork_server: true,
    }
}

/// A host with threads starts cells from whichever thread is at hand — `warren run` from a
/// tokio blocking thread, which exits after 10 s idle. The supervisor's parent-death signal
/// follows the *thread* that spawned it, so a cell must not die with that thread (it did:
/// every tool call after a slow model turn failed with "connection refused").
#[test]
fn a_cell_outlives_the_thread_that_started_it() {
    if !require_process_tier() {
        return;
    }
    let state = TempDir::new("state");
    let spec = spec_with_probe(state.path(), PROBE);
    let cell = std::thread::spawn(move || start(&spec, JAIL))
        .join()
        .unwrap();
    // The starting thread is gone; give a parent-death signal time to land.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (o, out) = run(&cell, &["/bin/echo", "still here"], Some(5_000));
    assert_eq!(o.exit.code, Some(0), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still here\n");
}
