//! The host-side attack suite: a real cell plants what it likes in its copy-on-write layer, then
//! the host does what it does with a layer (list, diff, apply, measure). Every attack here got
//! through before the host used `warren-fsx` handles; each must now fail, as root in CI.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use warren_cell::{CellSpec, Workspace, WorkspaceMode, cow};
use warren_testkit::{TempDir, require_process_tier, run, start};

use super::JAIL;

struct Setup {
    _state: TempDir,
    outside: TempDir,
    ws: TempDir,
    spec: CellSpec,
}

fn setup() -> Option<Setup> {
    if !require_process_tier() {
        return None;
    }
    let state = TempDir::new("host-state");
    let ws = TempDir::new("host-ws");
    let outside = TempDir::new("host-outside");
    std::fs::write(ws.path().join("a.txt"), "a0\n").unwrap();
    std::fs::write(outside.path().join("victim"), "TOP SECRET VICTIM\n").unwrap();
    for d in [ws.path(), outside.path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut spec = CellSpec::new(state.path());
    spec.workspace = Some(Workspace {
        host: ws.path().to_path_buf(),
        mode: WorkspaceMode::Cow,
    });
    Some(Setup {
        _state: state,
        outside,
        ws,
        spec,
    })
}

fn sh(cell: &warren_cell::ProcessCell, script: &str) -> (warren_cell::ExecOutcome, String) {
    let (o, out) = run(cell, &["/bin/sh", "-c", script], Some(120_000));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (o, text)
}

#[test]
fn a_hostile_layer_cannot_steer_diff_or_apply() {
    let Some(s) = setup() else { return };
    let victim = s.outside.path().join("victim");
    let victim_mode = std::fs::metadata(&victim).unwrap().mode();
    let cell = start(&s.spec, JAIL);
    let layer = cell.cow_layer().cloned().unwrap();
    // Everything the host used to follow, open or keep, planted from inside the cell. The
    // victim's host path means nothing in the cell, but the host used to resolve it.
    let script = format!(
        "set -e; cd /workspace
         ln -s {v} secret-link
         ln -s /dev/zero zero
         ln -s {o} dir-link
         ln -s {v} .a.txt.warren-apply
         ln -s {v} .a.txt.warren-orig
         mkfifo pipe
         echo '#!/bin/sh' > suid; chmod 6755 suid
         echo a1 > a.txt
         (mkdir -p .warren && echo 'base_url = \"http://attacker.test\"' > .warren/config.toml) 2>/dev/null || true
         echo planted",
        v = victim.display(),
        o = s.outside.path().display()
    );
    let (o, text) = sh(&cell, &script);
    assert_eq!(o.exit.code, Some(0), "{text}");
    drop(cell);

    let ws = s.ws.path();
    let start_t = Instant::now();
    let d = cow::diff_with(
        &layer,
        ws,
        &cow::DiffOptions {
            deadline: Some(Instant::now() + Duration::from_secs(30)),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(start_t.elapsed() < Duration::from_secs(20), "the diff hung");
    assert!(
        !d.contains("TOP SECRET"),
        "the diff read through a link:\n{d}"
    );
    assert!(d.contains(&format!("+{}", victim.display())), "{d}");
    assert!(d.contains("+/dev/zero"), "{d}");
    assert!(d.contains("b/dir-link\nnew file mode 120000"), "{d}");
    assert!(d.contains("refused b/pipe: a FIFO"), "{d}");
    assert!(
        d.contains("has setuid/setgid/sticky bits; applied as 0755"),
        "{d}"
    );

    let r = cow::apply(&layer, ws).unwrap();
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "TOP SECRET VICTIM\n"
    );
    assert_eq!(std::fs::metadata(&victim).unwrap().mode(), victim_mode);
    assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), "a1\n");
    assert!(!ws.join("pipe").exists());
    assert!(r.refused.iter().any(|(p, _)| p.ends_with("pipe")));
    assert_eq!(
        std::fs::metadata(ws.join("suid")).unwrap().mode() & 0o7777,
        0o755
    );
    assert!(
        !ws.join(".warren").exists(),
        "Warren's own config was applied"
    );
    // Links arrive as links, pointing where the cell said, followed by nothing of Warren's.
    assert!(
        std::fs::symlink_metadata(ws.join("secret-link"))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn the_disk_bound_stops_a_writer_and_the_cell_recovers() {
    let Some(mut s) = setup() else { return };
    let limit = 32 << 20;
    s.spec.limits.disk_bytes = Some(limit);
    s.spec.limits.tmp_bytes = 32 << 20;
    let cell = start(&s.spec, JAIL);
    let layer = cell.cow_layer().cloned().unwrap();
    // 60 files of 20 MiB each (1.2 GiB), each below RLIMIT_FSIZE: only the watcher stops it.
    let (o, text) = sh(
        &cell,
        "cd /workspace; i=0; while [ $i -lt 60 ]; do head -c 20971520 /dev/zero > f$i || exit 3; i=$((i+1)); done; echo wrote-all",
    );
    assert!(
        o.disk_exceeded,
        "not stopped at the disk limit: {:?} {text}",
        o.exit
    );
    assert!(!text.contains("wrote-all"), "{text}");
    let used = cow::usage(&layer).unwrap();
    eprintln!("upper layer after the writer was stopped: {used} bytes (limit {limit})");
    assert!(
        used < 400 << 20,
        "the upper layer grew to {used} bytes, limit {limit}"
    );
    // The cell lives on: freeing space works, and so does a small write afterwards.
    let (o, text) = sh(
        &cell,
        "rm -f /workspace/f*; echo ok > /workspace/small; cat /workspace/small",
    );
    assert_eq!((o.exit.code, text.as_str()), (Some(0), "ok\n"));
    assert!(!o.disk_exceeded);
    // One file alone cannot pass the limit either (RLIMIT_FSIZE).
    let (o, _) = sh(&cell, "head -c 67108864 /dev/zero > /workspace/one");
    assert_ne!(o.exit.code, Some(0));
    let one = std::fs::metadata(layer.upper.join("one"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(one <= limit, "{one}");
    drop(cell);
}
