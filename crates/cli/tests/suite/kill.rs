//! SIGKILL of the host process that owns a cell leaves nothing behind.

use std::time::{Duration, Instant};

use warren_testkit::{TempDir, require_cgroup_limits, require_process_tier};

use super::WARREN;

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn sigkill_of_warren_kills_the_whole_cell_and_removes_its_cgroups() {
    if !require_process_tier() {
        return;
    }
    let limits = require_cgroup_limits();
    let s = TempDir::new("state");
    let mut args = vec!["exec"];
    if limits {
        args.extend(["--memory", "128M", "--pids", "50"]);
    }
    args.extend([
        "--",
        "sh",
        "-c",
        "sleep 1000 & (setsid sleep 1000 &); sleep 1000",
    ]);
    let mut warren = std::process::Command::new(WARREN)
        .args(&args)
        .env("WARREN_STATE_DIR", s.path())
        .spawn()
        .unwrap();

    // warren -> supervisor -> init -> sh -> sleepers
    let deadline = Instant::now() + Duration::from_secs(20);
    let (supervisor, init) = loop {
        assert!(Instant::now() < deadline, "cell did not come up");
        if let Some(&sup) = children(warren.id()).first()
            && let Some(&init) = children(sup).first()
            && !children(init).is_empty()
        {
            break (sup, init);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).unwrap();
    let cgroup_lines = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    let cgroup_dirs: Vec<std::path::PathBuf> = cgroup_lines
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            (path.contains("/warren/") && ["memory", "pids"].contains(&ctrl))
                .then(|| format!("/sys/fs/cgroup/{ctrl}{path}").into())
        })
        .collect();
    assert_eq!(
        !cgroup_dirs.is_empty(),
        limits && cgroup_lines.contains("pids:"),
        "{cgroup_lines}"
    );

    warren.kill().unwrap(); // SIGKILL
    warren.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let survivors: Vec<_> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|l| l == ns) && alive(*p)
            })
            .collect();
        let left = cgroup_dirs.iter().filter(|d| d.exists()).count();
        if survivors.is_empty() && !alive(supervisor) && left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: processes {survivors:?}, supervisor alive {}, cgroups {left}",
            alive(supervisor)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn interrupt_stops_the_cell_and_keeps_the_changes_for_review() {
    if !require_process_tier() {
        return;
    }
    let s = TempDir::new("state");
    let ws = TempDir::new("ws");
    let child = std::process::Command::new(WARREN)
        .args([
            "exec",
            "--workspace",
            ws.path().to_str().unwrap(),
            "--cow",
            "--",
            "sh",
            "-c",
            "echo work > made.txt; sleep 1000",
        ])
        .env("WARREN_STATE_DIR", s.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the command has written its file into the cell's upper layer.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let written = std::fs::read_dir(s.path().join("changes"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("upper/made.txt").exists());
        if written {
            break;
        }
        assert!(Instant::now() < deadline, "the command never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending SIGINT to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("A made.txt") && err.contains("kept as cell"),
        "{err}"
    );
    assert!(
        !ws.path().join("made.txt").exists(),
        "nothing reaches the workspace before apply"
    );
}
