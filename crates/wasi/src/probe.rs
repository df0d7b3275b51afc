//! WebAssembly text probes for tests and benchmarks: a module with the preview-1 imports most
//! probes need and small helpers (`$write`, `$read`, `$open`, `$check`), whose `_start` is
//! the given body. A probe reports what it saw through its exit code (an errno, a count), so a
//! test needs no wasm toolchain.
//!
//! Data strings are placed at 1024, 1280, … (256 bytes apart); scratch space is 0..64 (an
//! iovec at 0, the count a call returns at 8, the fd `$open` returns at 16), and `$read` reads
//! into 8192.

/// The imports and helpers every probe shares; `$body` is `_start`'s code. Strings go at
/// 1024 (see [`data`]), scratch at 0..64, a read buffer at 8192.
pub fn module(body: &str, data: &[&str]) -> String {
    let mut segs = String::new();
    let mut at = 1024;
    for d in data {
        segs.push_str(&format!("(data (i32.const {at}) \"{}\")\n", escape(d)));
        at += 256;
    }
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $fd_seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_symlink" (func $path_symlink (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $path_unlink_file (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $sock_accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (table 1 funcref)
  {segs}
  ;; write(fd, ptr, len) -> errno
  (func $write (param $fd i32) (param $p i32) (param $l i32) (result i32)
    (i32.store (i32.const 0) (local.get $p))
    (i32.store (i32.const 4) (local.get $l))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  ;; read(fd) into 8192.. (up to 4096 bytes) -> errno; the count at 8
  (func $read (param $fd i32) (result i32)
    (i32.store (i32.const 0) (i32.const 8192))
    (i32.store (i32.const 4) (i32.const 4096))
    (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  ;; open(dirfd, ptr, len, oflags, rights) -> errno; the fd at 16
  (func $open (param $d i32) (param $p i32) (param $l i32) (param $o i32) (param $r i64) (result i32)
    (call $path_open (local.get $d) (i32.const 0) (local.get $p) (local.get $l) (local.get $o)
      (local.get $r) (i64.const 0) (i32.const 0) (i32.const 16)))
  ;; exit with $e unless it is 0
  (func $check (param $e i32)
    (if (local.get $e) (then (call $proc_exit (local.get $e)))))
  (func (export "_start")
    {body})
)"#
    )
}

fn escape(s: &str) -> String {
    s.bytes().map(|b| format!("\\{b:02x}")).collect()
}

/// `(i32.const ptr) (i32.const len)` of data string `i`.
pub fn s(i: usize, data: &[&str]) -> String {
    format!(
        "(i32.const {}) (i32.const {})",
        1024 + 256 * i,
        data[i].len()
    )
}

/// A module that opens `path` for reading and writing, writes `request` to it, seeks back to
/// the start, reads the answer (up to 4 KiB) and prints it: one exchange with a capability
/// file. It exits with the first errno it meets.
pub fn exchange(path: &str, request: &str) -> String {
    let rel = path.trim_start_matches('/');
    let d = [rel, request];
    let body = format!(
        "(call $check (call $open (i32.const 3) {} (i32.const 0) (i64.const 66)))
         (call $check (call $write (i32.load (i32.const 16)) {}))
         (call $check (call $fd_seek (i32.load (i32.const 16)) (i64.const 0) (i32.const 0) (i32.const 32)))
         (call $check (call $read (i32.load (i32.const 16))))
         (call $check (call $write (i32.const 1) (i32.const 8192) (i32.load (i32.const 8))))",
        s(0, &d),
        s(1, &d)
    );
    module(&body, &d)
}
