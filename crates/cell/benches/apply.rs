//! `warren apply` of many changed files beside `cp -r` of the same files (the peer), one run.
//!
//! `cargo bench -p warren-cell --bench apply [-- --files N]` prints both times and the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::Instant;

use warren_cell::cow;
use warren_cell::spec::CowLayer;

fn populate(root: &Path, files: usize, content: &str) {
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i / 200));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), format!("{content} {i}\n")).unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let files = args
        .iter()
        .position(|a| a == "--files")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000usize);
    let root = std::env::temp_dir().join(format!("warren-bench-apply-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let ws = root.join("ws");
    populate(&ws, files, "old");
    let layer = CowLayer::at(&root, "bench");
    std::fs::create_dir_all(&layer.work).unwrap();
    populate(&layer.upper, files, "new");
    cow::write_meta(&layer, &ws).unwrap();

    let t = Instant::now();
    let n = cow::changes(&layer, &ws).unwrap().len();
    let list = t.elapsed();

    let t = Instant::now();
    let report = cow::apply(&layer, &ws).unwrap();
    let apply = t.elapsed();
    assert_eq!(report.written.len(), files);

    let peer_dst = root.join("peer");
    std::fs::create_dir_all(&peer_dst).unwrap();
    let t = Instant::now();
    let ok = std::process::Command::new("cp")
        .arg("-r")
        .arg(layer.upper.join("."))
        .arg(&peer_dst)
        .status()
        .unwrap()
        .success();
    let cp = t.elapsed();
    assert!(ok);
    println!("changes listed: {n} in {:.1} ms", list.as_secs_f64() * 1e3);
    println!(
        "apply {files} modified files: warren {:.0} ms, cp -r {:.0} ms, ratio {:.2}",
        apply.as_secs_f64() * 1e3,
        cp.as_secs_f64() * 1e3,
        apply.as_secs_f64() / cp.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&root);
}
