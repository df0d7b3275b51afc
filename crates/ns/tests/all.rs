//! The namespace primitives, attacked the way a cell would: paths that climb, names that hide
//! NULs, writes past caps and offsets past memory, removals under open handles.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use warren_ns::cow::CowFs;
use warren_ns::func::FuncFs;
use warren_ns::log::LogFs;
use warren_ns::map::MapFs;
use warren_ns::mem::MemFs;
use warren_ns::{FileService, Kind, MountTable, NsError, NsPath, OpenMode};

fn p(s: &str) -> NsPath {
    NsPath::parse(s).unwrap()
}

#[test]
fn paths_are_absolute_normalized_and_never_climb_above_the_root() {
    assert_eq!(p("/a/./b//c/").to_string(), "/a/b/c");
    assert_eq!(p("/a/b/../c").to_string(), "/a/c");
    assert_eq!(p("/../../etc/passwd").to_string(), "/etc/passwd");
    assert_eq!(p("/workspace/../../..").to_string(), "/");
    for bad in ["relative", "", "/a\0b"] {
        assert!(
            matches!(NsPath::parse(bad), Err(NsError::InvalidPath(_))),
            "{bad:?}"
        );
    }
    assert!(NsPath::parse(&format!("/{}", "x".repeat(256))).is_err());
    assert!(NsPath::parse(&format!("/{}", "a/".repeat(3000))).is_err());
    assert!(p("/workspace/x").starts_with(&p("/workspace")));
    assert!(!p("/workspace2/x").starts_with(&p("/workspace")));
    for bad in ["..", ".", "", "a/b", "a\0"] {
        assert!(NsPath::root().child(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn mounts_resolve_by_whole_components_longest_first() {
    let ws = Arc::new(MemFs::new(1 << 20));
    let ws2 = Arc::new(MemFs::new(1 << 20));
    let cap = Arc::new(MapFs::new().with("/README", "capabilities").unwrap());
    let http = Arc::new(
        FuncFs::new()
            .computed("status", || Ok(b"ok".to_vec()))
            .unwrap(),
    );
    let mut ns = MountTable::new();
    ns.mount("/workspace", ws.clone()).unwrap();
    ns.mount("/workspace2", ws2.clone()).unwrap();
    ns.mount("/cap", cap).unwrap();
    ns.mount("/cap/http", http).unwrap();
    ns.write("/workspace/a.txt", b"one").unwrap();
    ns.write("/workspace2/a.txt", b"two").unwrap();
    assert_eq!(ns.read("/workspace/a.txt", 100).unwrap(), b"one");
    assert_eq!(ns.read("/workspace2/a.txt", 100).unwrap(), b"two");
    // `..` is lexical within the namespace: it can reach another mount, never the host.
    assert_eq!(
        ns.read("/workspace/../workspace2/a.txt", 100).unwrap(),
        b"two"
    );
    assert!(matches!(
        ns.read("/workspace/../../etc/passwd", 100),
        Err(NsError::NotFound(_))
    ));
    assert_eq!(ns.read("/cap/http/status", 100).unwrap(), b"ok");
    assert_eq!(ns.read("/cap/README", 100).unwrap(), b"capabilities");
    // The root lists the mount points though nothing is mounted at `/`; `/cap` shows its own
    // file and the mount below it.
    let names =
        |dir: &str| -> Vec<String> { ns.list(dir).unwrap().into_iter().map(|e| e.name).collect() };
    assert_eq!(names("/"), ["cap", "workspace", "workspace2"]);
    assert_eq!(names("/cap"), ["README", "http"]);
    assert_eq!(ns.stat("/").unwrap().kind, Kind::Dir);
    assert!(matches!(ns.remove("/workspace"), Err(NsError::Denied(_))));
    assert!(matches!(ns.stat("/nowhere"), Err(NsError::NotFound(_))));
}

#[test]
fn memory_is_capped_and_a_write_past_the_cap_changes_nothing() {
    let fs = MemFs::new(10);
    let f = p("/f");
    let mut h = fs.open(&f, OpenMode::create()).unwrap();
    h.write_at(0, b"12345678").unwrap();
    let e = h.write_at(8, b"abc").unwrap_err();
    assert!(matches!(e, NsError::NoSpace { limit: 10, .. }), "{e}");
    assert_eq!(fs.used(), 8, "nothing of the refused write landed");
    // An offset far past the end is refused by the cap before anything is allocated.
    assert!(matches!(
        h.write_at(u64::MAX - 2, b"xyz"),
        Err(NsError::NoSpace { .. } | NsError::InvalidPath(_))
    ));
    assert!(matches!(h.set_len(1 << 40), Err(NsError::NoSpace { .. })));
    // Rewriting in place within the cap is fine; removing frees the bytes.
    h.write_at(0, b"ABCDEFGHIJ").unwrap();
    assert_eq!(fs.used(), 10);
    let mut r = fs.open(&f, OpenMode::read()).unwrap();
    fs.remove(&f).unwrap();
    assert_eq!(fs.used(), 0);
    // The handle of a removed file does not keep it alive.
    let mut buf = [0u8; 4];
    assert!(matches!(r.read_at(0, &mut buf), Err(NsError::NotFound(_))));
    assert!(
        matches!(h.read_at(0, &mut buf), Err(NsError::Denied(_))),
        "opened write-only"
    );
    // Directories: parents must exist, non-empty ones stay.
    assert!(matches!(fs.mkdir(&p("/a/b")), Err(NsError::NotFound(_))));
    fs.mkdir(&p("/a")).unwrap();
    fs.mkdir(&p("/a/b")).unwrap();
    assert!(matches!(fs.remove(&p("/a")), Err(NsError::NotEmpty(_))));
    assert!(matches!(
        fs.open(&p("/a"), OpenMode::create()),
        Err(NsError::IsADirectory(_))
    ));
    assert!(matches!(
        fs.open(&p("/a/b/c/f"), OpenMode::create()),
        Err(NsError::NotFound(_))
    ));
    fs.freeze();
    assert!(matches!(
        fs.open(&p("/g"), OpenMode::create()),
        Err(NsError::Denied(_))
    ));
}

#[test]
fn a_map_is_read_only_with_implied_directories() {
    let task = MapFs::new()
        .with("/goal", "fix the bug")
        .unwrap()
        .with("/inputs/build/result.json", "{}")
        .unwrap();
    assert!(
        task.clone().with("/goal/x", "").is_err(),
        "a file is not a directory"
    );
    assert_eq!(
        warren_ns::read_all(&task, &p("/goal"), 100).unwrap(),
        b"fix the bug"
    );
    assert_eq!(task.stat(&p("/inputs/build")).unwrap().kind, Kind::Dir);
    assert_eq!(task.list(&p("/inputs")).unwrap()[0].name, "build");
    for mode in [OpenMode::create(), OpenMode::read_write()] {
        assert!(matches!(
            task.open(&p("/goal"), mode),
            Err(NsError::Denied(_))
        ));
    }
    assert!(task.remove(&p("/goal")).is_err());
}

#[test]
fn a_request_file_is_answered_within_the_call_and_capped() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let http = FuncFs::new()
        .request("request", 16, move |req| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok([b"echo:".as_slice(), req].concat())
        })
        .unwrap();
    let mut h = http.open(&p("/request"), OpenMode::read_write()).unwrap();
    h.write_at(0, b"GET ").unwrap();
    h.write_at(4, b"/x").unwrap();
    let mut buf = [0u8; 64];
    let n = h.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"echo:GET /x");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "answered once, in the read"
    );
    assert!(h.write_at(0, b"again").is_err(), "one exchange per handle");
    // Over the limit: refused, and the host function never sees it.
    let mut h = http.open(&p("/request"), OpenMode::read_write()).unwrap();
    assert!(matches!(
        h.write_at(10, b"0123456789"),
        Err(NsError::NoSpace { limit: 16, .. })
    ));
    assert!(matches!(
        h.write_at(u64::MAX, b"x"),
        Err(NsError::NoSpace { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A computed file is a snapshot per open.
    let n = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&n);
    let clock = FuncFs::new()
        .computed("count", move || {
            Ok(m.fetch_add(1, Ordering::SeqCst).to_string().into_bytes())
        })
        .unwrap();
    assert_eq!(warren_ns::read_all(&clock, &p("/count"), 10).unwrap(), b"0");
    assert_eq!(warren_ns::read_all(&clock, &p("/count"), 10).unwrap(), b"1");
    assert!(clock.open(&p("/count"), OpenMode::create()).is_err());
    assert!(matches!(
        clock.open(&p("/nope"), OpenMode::read()),
        Err(NsError::NotFound(_))
    ));
}

#[test]
fn logs_only_grow() {
    let logs = LogFs::new(1024);
    let f = p("/agent.log");
    let mut h = logs.open(&f, OpenMode::create()).unwrap();
    h.write_at(0, b"one\n").unwrap();
    // A write "at 0" (a rewrite attempt) lands at the end.
    h.write_at(0, b"two\n").unwrap();
    assert_eq!(warren_ns::read_all(&logs, &f, 100).unwrap(), b"one\ntwo\n");
    assert!(h.set_len(0).is_err());
    assert!(
        logs.open(&f, OpenMode::create()).is_err(),
        "no truncating reopen"
    );
    assert!(logs.remove(&f).is_err());
    let mut big = logs.open(&p("/big"), OpenMode::create()).unwrap();
    assert!(matches!(
        big.write_at(0, &[0u8; 2000]),
        Err(NsError::NoSpace { .. })
    ));
}

#[test]
fn copy_on_write_changes_only_the_upper_service() {
    let lower: Arc<dyn FileService> = Arc::new(
        MapFs::new()
            .with("/README", "hello")
            .unwrap()
            .with("/src/main.rs", "fn main() {}")
            .unwrap()
            .with("/src/lib.rs", "")
            .unwrap()
            .with("/big.bin", vec![7u8; 4096])
            .unwrap(),
    );
    let upper = Arc::new(MemFs::new(1 << 20));
    let cow = CowFs::new(Arc::clone(&lower), upper.clone(), 1024);
    // Reads see the lower service; the view is writable.
    assert_eq!(
        warren_ns::read_all(&cow, &p("/README"), 100).unwrap(),
        b"hello"
    );
    assert!(cow.stat(&p("/README")).unwrap().writable);
    // Appending copies the file up first; the lower file is untouched.
    let mut h = cow.open(&p("/README"), OpenMode::read_write()).unwrap();
    h.write_at(5, b" world").unwrap();
    assert_eq!(
        warren_ns::read_all(&cow, &p("/README"), 100).unwrap(),
        b"hello world"
    );
    assert_eq!(
        warren_ns::read_all(&*lower, &p("/README"), 100).unwrap(),
        b"hello"
    );
    // A new file in a lower directory: the directory is made in the upper service.
    warren_ns::write_all(&cow, &p("/src/new.rs"), b"// new").unwrap();
    assert_eq!(upper.stat(&p("/src")).unwrap().kind, Kind::Dir);
    let names: Vec<String> = cow
        .list(&p("/src"))
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["lib.rs", "main.rs", "new.rs"]);
    // Removing a lower file hides it (a whiteout), the lower service keeps it.
    cow.remove(&p("/src/lib.rs")).unwrap();
    assert!(matches!(
        cow.stat(&p("/src/lib.rs")),
        Err(NsError::NotFound(_))
    ));
    assert!(lower.stat(&p("/src/lib.rs")).is_ok());
    assert_eq!(cow.changes().removed, ["/src/lib.rs"]);
    // Made again: the whiteout goes, the new content shows.
    warren_ns::write_all(&cow, &p("/src/lib.rs"), b"pub fn x() {}").unwrap();
    assert!(cow.changes().removed.is_empty());
    // A directory removed and made again is empty (its lower files stay hidden).
    cow.remove(&p("/src/lib.rs")).unwrap();
    cow.remove(&p("/src/main.rs")).unwrap();
    cow.remove(&p("/src/new.rs")).unwrap();
    cow.remove(&p("/src")).unwrap();
    assert!(matches!(cow.stat(&p("/src")), Err(NsError::NotFound(_))));
    cow.mkdir(&p("/src")).unwrap();
    assert!(cow.list(&p("/src")).unwrap().is_empty());
    // A lower directory with files cannot be removed; a file past the copy limit cannot be
    // written through the view (it would be copied whole).
    assert!(matches!(
        cow.open(&p("/big.bin"), OpenMode::read_write()),
        Err(NsError::NoSpace { .. })
    ));
    assert!(
        cow.open(&p("/big.bin"), OpenMode::create()).is_ok(),
        "a truncating write copies nothing"
    );
}

/// Every file and directory of a service, with file contents: what a cell can observe.
fn snapshot(s: &dyn FileService) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut todo = vec![NsPath::root()];
    while let Some(dir) = todo.pop() {
        for e in s.list(&dir).unwrap() {
            let child = dir.child(&e.name).unwrap();
            match e.kind {
                Kind::Dir => {
                    out.push((child.to_string(), None));
                    todo.push(child);
                }
                Kind::File => {
                    let data = warren_ns::read_all(s, &child, 1 << 20).unwrap();
                    out.push((child.to_string(), Some(data)));
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_overlay_behaves_like_a_plain_tree_under_random_operations() {
    // The same random operations on a copy-on-write view of a tree and on a plain copy of the
    // tree: every answer and every observable state must be the same.
    let seed = std::env::var("WARREN_NS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (WARREN_NS_SEED={seed} replays)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let names = ["a", "b", "c"];
    let files = ["/a", "/b/a", "/b/c/b", "/c"];
    let mut lower = MapFs::new();
    let plain = MemFs::new(1 << 20);
    for f in files {
        lower = lower.with(f, f.as_bytes()).unwrap();
        let path = p(f);
        let mut dirs = Vec::new();
        let mut d = path.parent();
        while !d.is_root() {
            dirs.push(d.clone());
            d = d.parent();
        }
        for d in dirs.into_iter().rev() {
            let _ = plain.mkdir(&d);
        }
        warren_ns::write_all(&plain, &path, f.as_bytes()).unwrap();
    }
    let lower: Arc<dyn FileService> = Arc::new(lower);
    let cow = CowFs::new(lower, Arc::new(MemFs::new(1 << 20)), 1 << 20);
    for step in 0..2000 {
        let depth = rng.usize(1..=3);
        let path = (0..depth).fold(NsPath::root(), |p, _| {
            p.child(names[rng.usize(..names.len())]).unwrap()
        });
        let op = rng.u8(..5);
        let data = vec![b'0' + rng.u8(..10); rng.usize(..4)];
        let offset = rng.u64(..6);
        let apply = |s: &dyn FileService| -> Result<(), String> {
            let r = match op {
                0 => s.mkdir(&path),
                1 => s.remove(&path),
                2 => warren_ns::write_all(s, &path, &data),
                3 => s
                    .open(&path, OpenMode::read_write())
                    .and_then(|mut h| h.write_at(offset, &data).map(drop)),
                _ => s.stat(&path).map(drop),
            };
            r.map_err(|e| format!("{e:?}").split('(').next().unwrap().to_owned())
        };
        let want = apply(&plain);
        let got = apply(&cow);
        assert_eq!(got, want, "step {step}: op {op} on {path} (seed {seed})");
        assert_eq!(
            snapshot(&cow),
            snapshot(&plain),
            "step {step}: op {op} on {path} (seed {seed})"
        );
    }
}

mod host_dir {
    use super::*;
    use std::os::unix::fs::symlink;
    use warren_ns::dir::DirFs;

    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A project directory a cell (or a hostile repository) has prepared, and a secret beside
    /// it that must stay out of reach.
    fn planted() -> (Tmp, std::path::PathBuf) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir().join(format!(
            "warren-ns-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let ws = base.join("ws");
        std::fs::create_dir_all(ws.join("src")).unwrap();
        std::fs::write(base.join("secret"), "host secret").unwrap();
        std::fs::write(ws.join("README"), "project").unwrap();
        symlink(base.join("secret"), ws.join("link-to-secret")).unwrap();
        symlink(&base, ws.join("link-to-outside")).unwrap();
        symlink(base.join("not-yet"), ws.join("dangling")).unwrap();
        let fifo = std::ffi::CString::new(ws.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        (Tmp(base), ws)
    }

    fn fs(ws: &std::path::Path, writable: bool) -> DirFs {
        DirFs::new(warren_fsx::Dir::open(ws).unwrap(), writable, 1024)
    }

    #[test]
    fn links_and_special_files_are_neither_followed_nor_shown() {
        let (t, ws) = planted();
        let d = fs(&ws, true);
        let names: Vec<String> = d
            .list(&NsPath::root())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["README", "src"], "links and the FIFO are not shown");
        assert_eq!(
            warren_ns::read_all(&d, &p("/README"), 100).unwrap(),
            b"project"
        );
        for path in ["/link-to-secret", "/link-to-outside/secret", "/dangling"] {
            let e = warren_ns::read_all(&d, &p(path), 100).unwrap_err();
            assert!(matches!(e, NsError::Denied(_)), "{path}: {e:?}");
            let e = warren_ns::write_all(&d, &p(path), b"pwned").unwrap_err();
            assert!(
                matches!(e, NsError::Denied(_) | NsError::Exists(_)),
                "{path}: {e:?}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(t.0.join("secret")).unwrap(),
            "host secret"
        );
        assert!(
            !t.0.join("not-yet").exists(),
            "nothing created through the dangling link"
        );
        // `..` never leaves the namespace, so never the directory.
        assert!(matches!(
            warren_ns::read_all(&d, &p("/../secret"), 100),
            Err(NsError::NotFound(_))
        ));
        // A FIFO is refused by kind, at once (opening it for reading would block).
        let (tx, rx) = std::sync::mpsc::channel();
        let d2 = fs(&ws, false);
        std::thread::spawn(move || {
            let _ = tx.send(d2.open(&p("/fifo"), OpenMode::read()).err());
        });
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("opening a FIFO must not block");
        assert!(matches!(e, Some(NsError::Denied(_))), "{e:?}");
        assert!(matches!(d.remove(&p("/fifo")), Err(NsError::Denied(_))));
    }

    #[test]
    fn writes_are_capped_per_file_and_refused_when_read_only() {
        let (_t, ws) = planted();
        let d = fs(&ws, true);
        warren_ns::write_all(&d, &p("/src/main.rs"), b"fn main() {}").unwrap();
        assert_eq!(
            std::fs::read_to_string(ws.join("src/main.rs")).unwrap(),
            "fn main() {}"
        );
        let mut h = d.open(&p("/src/main.rs"), OpenMode::read_write()).unwrap();
        assert!(matches!(
            h.write_at(1000, &[0u8; 100]),
            Err(NsError::NoSpace { limit: 1024, .. })
        ));
        assert!(matches!(h.set_len(1 << 30), Err(NsError::NoSpace { .. })));
        d.mkdir(&p("/src/sub")).unwrap();
        assert!(matches!(d.mkdir(&p("/src/sub")), Err(NsError::Exists(_))));
        assert!(matches!(d.remove(&p("/src")), Err(NsError::NotEmpty(_))));
        d.remove(&p("/src/sub")).unwrap();
        let ro = fs(&ws, false);
        assert!(matches!(
            warren_ns::write_all(&ro, &p("/README"), b"x"),
            Err(NsError::Denied(_))
        ));
        assert!(matches!(ro.mkdir(&p("/x")), Err(NsError::Denied(_))));
        assert!(matches!(ro.remove(&p("/README")), Err(NsError::Denied(_))));
    }

    #[test]
    fn a_host_directory_under_an_overlay_is_never_written() {
        let (_t, ws) = planted();
        let lower: Arc<dyn FileService> = Arc::new(fs(&ws, false));
        let cow = CowFs::new(lower, Arc::new(MemFs::new(1 << 20)), 1 << 20);
        let mut h = cow.open(&p("/README"), OpenMode::read_write()).unwrap();
        h.write_at(7, b" changed").unwrap();
        cow.remove(&p("/src")).unwrap();
        assert_eq!(
            warren_ns::read_all(&cow, &p("/README"), 100).unwrap(),
            b"project changed"
        );
        assert!(cow.stat(&p("/src")).is_err());
        assert_eq!(
            std::fs::read_to_string(ws.join("README")).unwrap(),
            "project"
        );
        assert!(ws.join("src").is_dir());
    }
}
