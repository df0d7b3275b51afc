//! The FUSE bridge against the real kernel: files of a namespace service read, written,
//! listed and exchanged through ordinary system calls, and hostile names refused. Needs root
//! and `/dev/fuse` (in CI a missing one fails; elsewhere the test says why it skips).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use warren_ns::func::FuncFs;
use warren_ns::mem::MemFs;
use warren_testkit::TempDir;

fn can_mount() -> bool {
    if !warren_testkit::require_root("FUSE mounts") {
        return false;
    }
    match warren_nsfuse::available() {
        Ok(()) => true,
        Err(e) if warren_testkit::in_ci() => panic!("FUSE is required in CI: {e}"),
        Err(e) => {
            warren_testkit::skip(&format!("no FUSE here: {e}"));
            false
        }
    }
}

#[test]
fn a_memory_service_behaves_as_files_through_the_kernel() {
    if !can_mount() {
        return;
    }
    let t = TempDir::new("nsfuse-mem");
    let at = t.path().join("m");
    let mounted = warren_nsfuse::mount(&at, Arc::new(MemFs::new(64)), (0, 0)).expect("mount");
    std::fs::write(at.join("a.txt"), "hello").expect("write");
    assert_eq!(
        std::fs::read_to_string(at.join("a.txt")).expect("read"),
        "hello"
    );
    std::fs::create_dir(at.join("d")).expect("mkdir");
    std::fs::write(at.join("d/b"), "x").expect("write below");
    let mut names: Vec<String> = std::fs::read_dir(&at)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "d"]);
    assert_eq!(std::fs::metadata(at.join("a.txt")).expect("stat").len(), 5);
    // The service's cap holds: a write past it fails and leaves nothing half-written.
    let big = std::fs::write(at.join("big"), vec![b'z'; 100]).unwrap_err();
    assert_eq!(big.raw_os_error(), Some(libc::ENOSPC), "{big}");
    // Links cannot be made (a namespace has files and directories only).
    let link = std::os::unix::fs::symlink("/etc/passwd", at.join("l")).unwrap_err();
    assert!(link.raw_os_error().is_some(), "{link}");
    assert!(!at.join("l").exists());
    std::fs::remove_file(at.join("d/b")).expect("unlink");
    std::fs::remove_dir(at.join("d")).expect("rmdir");
    assert!(!at.join("d").exists());
    drop(mounted);
    // Detached: the directory is an empty directory of the host again.
    assert_eq!(std::fs::read_dir(&at).expect("list").count(), 0);
}

#[test]
fn a_request_file_is_answered_within_the_call_on_the_same_descriptor() {
    if !can_mount() {
        return;
    }
    let t = TempDir::new("nsfuse-func");
    let at = t.path().join("cap");
    let svc = FuncFs::new()
        .request("echo", 1024, |req| Ok([b"you said: ", req].concat()))
        .expect("file");
    let _m = warren_nsfuse::mount(&at, Arc::new(svc), (0, 0)).expect("mount");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(at.join("echo"))
        .expect("open");
    f.write_all(b"ping").expect("write");
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut answer = String::new();
    f.read_to_string(&mut answer).expect("read");
    assert_eq!(answer, "you said: ping");
    // A request past the file's limit is refused, and nothing is answered.
    let mut g = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(at.join("echo"))
        .expect("open");
    let e = g.write_all(&vec![b'a'; 2000]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    // Files the service does not have cannot be created.
    assert!(std::fs::write(at.join("new"), "x").is_err());
}
