//! Attacks on the handle API: every way a planted entry could steer a host operation.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_fsx::{Dir, Error, Kind};

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!(
            "warren-fsx-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tree with a secret outside it, and links that point at the secret in every way.
fn hostile_tree(t: &Tmp) -> (PathBuf, PathBuf) {
    let root = t.0.join("root");
    let secret = t.0.join("secret");
    std::fs::write(&secret, "TOP SECRET").unwrap();
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("dir/sub/ok.txt"), "fine").unwrap();
    symlink(&secret, root.join("abs-link")).unwrap();
    symlink("../secret", root.join("rel-link")).unwrap();
    symlink(&t.0, root.join("dir-link")).unwrap();
    symlink("sub", root.join("dir/inner-link")).unwrap();
    symlink("/dev/zero", root.join("zero")).unwrap();
    let fifo =
        std::ffi::CString::new(root.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    (root, secret)
}

fn refused(r: Result<Vec<u8>, Error>) -> Error {
    match r {
        Ok(b) => panic!("read succeeded: {:?}", String::from_utf8_lossy(&b)),
        Err(e) => e,
    }
}

#[test]
fn links_are_never_followed_in_any_component() {
    let t = Tmp::new("links");
    let (root, _) = hostile_tree(&t);
    let d = Dir::open(&root).unwrap();
    assert_eq!(d.read("dir/sub/ok.txt", 100).unwrap(), b"fine");
    for p in [
        "abs-link",
        "rel-link",
        "dir-link/secret",
        "dir/inner-link/ok.txt",
        "zero",
        "./abs-link",
    ] {
        let e = refused(d.read(p, 1 << 20));
        assert!(
            matches!(e, Error::Symlink { .. } | Error::WrongKind { .. }),
            "{p}: {e}"
        );
    }
    assert!(d.sub("dir-link").is_err());
    assert!(d.sub("dir/inner-link").is_err());
    // lstat sees the link itself.
    assert_eq!(d.stat("abs-link").unwrap().unwrap().kind, Kind::Symlink);
    assert_eq!(d.read_link("rel-link").unwrap(), PathBuf::from("../secret"));
    // A stat through a linked directory is refused, not answered for the target.
    assert!(d.stat("dir-link/secret").is_err());
}

#[test]
fn dotdot_and_absolute_paths_are_refused_before_any_call() {
    let t = Tmp::new("dotdot");
    let (root, secret) = hostile_tree(&t);
    let d = Dir::open(&root).unwrap();
    for p in [
        "../secret",
        "dir/../../secret",
        "dir/sub/../../../secret",
        secret.to_str().unwrap(),
        "/etc/passwd",
    ] {
        let e = refused(d.read(p, 1 << 20));
        assert!(matches!(e, Error::Escapes { .. }), "{p}: {e}");
    }
    for name in ["..", ".", "a/b", ""] {
        assert!(d.write(name, b"x", 0o644, None).is_err(), "{name:?}");
    }
}

#[test]
fn a_fifo_is_refused_at_once_and_never_blocks() {
    let t = Tmp::new("fifo");
    let (root, _) = hostile_tree(&t);
    let d = Dir::open(&root).unwrap();
    let start = Instant::now();
    let e = refused(d.read("fifo", 1 << 20));
    assert!(
        matches!(
            e,
            Error::WrongKind {
                found: Kind::Fifo,
                ..
            }
        ),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn sizes_are_capped_before_and_while_reading() {
    let t = Tmp::new("size");
    std::fs::write(t.0.join("big"), vec![b'a'; 10_000]).unwrap();
    let d = Dir::open(&t.0).unwrap();
    assert!(matches!(
        d.read("big", 9_999),
        Err(Error::TooLarge { max: 9_999, .. })
    ));
    assert_eq!(d.read("big", 10_000).unwrap().len(), 10_000);
}

#[test]
fn writes_replace_a_planted_symlink_instead_of_writing_through_it() {
    let t = Tmp::new("write");
    let (root, secret) = hostile_tree(&t);
    let d = Dir::open(&root).unwrap();
    d.write("abs-link", b"answer", 0o4755, None).unwrap();
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "TOP SECRET");
    let m = std::fs::symlink_metadata(root.join("abs-link")).unwrap();
    assert!(m.is_file());
    // Setuid/setgid/sticky never survive a write.
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    // A FIFO at the name is replaced too (rename does not open it).
    d.write("fifo", b"x", 0o644, None).unwrap();
    assert!(
        std::fs::symlink_metadata(root.join("fifo"))
            .unwrap()
            .is_file()
    );
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".warren-tmp"))
        .collect();
    assert!(left.is_empty());
}

#[test]
fn temp_files_never_reuse_a_planted_name() {
    let t = Tmp::new("temp");
    let d = Dir::open(&t.0).unwrap();
    let a = d.temp_file().unwrap();
    let b = d.temp_file().unwrap();
    assert_ne!(a.name, b.name);
    // The temporary is exclusive: a link planted at its name cannot exist first; opening an
    // existing name fails (O_EXCL), shown by re-creating under the same name by hand.
    let again = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(t.0.join(&a.name));
    assert!(again.is_err());
}

#[test]
fn remove_all_never_descends_through_a_link() {
    let t = Tmp::new("rm");
    let (root, secret) = hostile_tree(&t);
    let d = Dir::open(&t.0).unwrap();
    d.remove_all("root").unwrap();
    assert!(!root.exists());
    assert!(secret.exists(), "the secret behind a link was removed");
}

#[test]
fn mkdir_and_ensure_dir_refuse_a_link_in_the_way() {
    let t = Tmp::new("mkdir");
    let (root, _) = hostile_tree(&t);
    let d = Dir::open(&root).unwrap();
    assert!(d.ensure_dir("dir-link", 0o755).is_err());
    assert!(!d.mkdir("dir", 0o755).unwrap());
    assert!(d.mkdir("fresh", 0o755).unwrap());
    assert_eq!(d.stat("fresh").unwrap().unwrap().kind, Kind::Dir);
}

#[test]
fn set_mode_owner_acts_on_the_entry_never_a_link_target() {
    let t = Tmp::new("chmod");
    let (root, secret) = hostile_tree(&t);
    let before = std::fs::metadata(&secret).unwrap().permissions().mode();
    let d = Dir::open(&root).unwrap();
    assert!(d.set_mode_owner("abs-link", 0o777, None).is_err());
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode(),
        before
    );
    assert!(d.set_mode_owner("dir/sub/ok.txt", 0o600, None).is_ok());
}

#[test]
fn read_regular_takes_a_trusted_parent_and_a_hostile_name() {
    let t = Tmp::new("regular");
    let (root, _) = hostile_tree(&t);
    assert_eq!(
        warren_fsx::read_regular(&root.join("dir/sub/ok.txt"), 10)
            .unwrap()
            .unwrap(),
        b"fine"
    );
    assert!(warren_fsx::read_regular(&root.join("abs-link"), 100).is_err());
    assert!(warren_fsx::read_regular(&root.join("fifo"), 100).is_err());
    assert!(
        warren_fsx::read_regular(&root.join("missing"), 100)
            .unwrap()
            .is_none()
    );
}

/// Randomised paths over a hostile tree: whatever the string, a read either fails or returns
/// a file that really lies beneath the root without a link on the way.
#[test]
fn random_paths_never_read_outside_the_tree() {
    let t = Tmp::new("fuzz");
    let (root, _) = hostile_tree(&t);
    let d = Dir::open(&root).unwrap();
    let parts = [
        "..",
        ".",
        "dir",
        "sub",
        "ok.txt",
        "abs-link",
        "rel-link",
        "dir-link",
        "inner-link",
        "secret",
        "zero",
        "fifo",
        "",
        "/",
        "//",
        "root",
    ];
    let mut rng = fastrand::Rng::with_seed(11);
    let mut hits = 0;
    for _ in 0..20_000 {
        let n = rng.usize(1..6);
        let mut s = String::new();
        if rng.bool() {
            s.push('/');
        }
        for i in 0..n {
            if i > 0 {
                s.push('/');
            }
            s.push_str(parts[rng.usize(..parts.len())]);
        }
        let start = Instant::now();
        if let Ok(bytes) = d.read(&s, 1 << 16) {
            assert_eq!(bytes, b"fine", "{s}");
            let clean: PathBuf = Path::new(&s)
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect();
            assert_eq!(clean, Path::new("dir/sub/ok.txt"), "{s}");
            hits += 1;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{s} blocked");
    }
    // Not vacuous: the one legitimate file was reached by some of the spellings.
    assert!(hits > 0);
}
