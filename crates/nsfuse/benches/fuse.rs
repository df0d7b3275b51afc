//! The FUSE bridge's cost: one exchange with a request/response file (open read-write, write
//! the request, seek back, read the answer, close) through the kernel and `warren-nsfuse`,
//! beside the same exchange made in-process on the service (what the wasi tier does, less the
//! module) and beside writing and reading back a file on the host's own `/tmp` (a kernel
//! file system with no user-space server: the floor). Needs root; prints p50/p99 and ratios.
//!
//! `cargo bench -p warren-nsfuse --bench fuse -- [--n 2000]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    missing_docs
)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_ns::func::FuncFs;
use warren_ns::{FileService, MountTable, OpenMode};

fn pct(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99))
}

fn us(d: Duration) -> String {
    format!("{:.1}µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    if let Err(e) = warren_nsfuse::available() {
        println!("fuse bench skipped: {e}");
        return;
    }
    let svc = || {
        FuncFs::new()
            .request("echo", 4096, |req| Ok([b"ok ", req].concat()))
            .unwrap()
    };
    let dir = std::env::temp_dir().join(format!("warren-fuse-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let at = dir.join("cap");
    let mounted = warren_nsfuse::mount(&at, Arc::new(svc()), (0, 0)).unwrap();
    let request = br#"{"kind": 1, "content": "a request of about sixty bytes, like a template"}"#;

    let mut fuse = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(at.join("echo"))
            .unwrap();
        f.write_all(request).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut answer = Vec::new();
        f.read_to_end(&mut answer).unwrap();
        drop(f);
        fuse.push(t.elapsed());
        assert!(answer.starts_with(b"ok "));
    }

    let mut ns = MountTable::new();
    ns.mount("/cap", Arc::new(svc()) as Arc<dyn FileService>)
        .unwrap();
    let mut direct = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut h = ns.open("/cap/echo", OpenMode::read_write()).unwrap();
        h.write_at(0, request).unwrap();
        let mut buf = vec![0u8; 4096];
        let got = h.read_at(0, &mut buf).unwrap();
        drop(h);
        direct.push(t.elapsed());
        assert!(buf[..got].starts_with(b"ok "));
    }

    let plain = dir.join("plain");
    let mut tmp = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&plain)
            .unwrap();
        f.write_all(request).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        drop(f);
        tmp.push(t.elapsed());
    }
    drop(mounted);
    let _ = std::fs::remove_dir_all(&dir);

    let (f50, f99) = pct(fuse);
    let (d50, d99) = pct(direct);
    let (t50, t99) = pct(tmp);
    println!(
        "capability file exchange ({n} each): open, write {} bytes, seek, read, close",
        request.len()
    );
    println!(
        "  over FUSE (process tier)        p50 {} p99 {}",
        us(f50),
        us(f99)
    );
    println!(
        "  in-process (wasi tier's path)   p50 {} p99 {}",
        us(d50),
        us(d99)
    );
    println!(
        "  a plain file on the host's /tmp p50 {} p99 {}",
        us(t50),
        us(t99)
    );
    println!(
        "  ratio p50: FUSE / plain file {:.2}; FUSE / in-process {:.1}",
        f50.as_secs_f64() / t50.as_secs_f64(),
        f50.as_secs_f64() / d50.as_secs_f64()
    );
}
