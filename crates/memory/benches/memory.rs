//! Memory benchmarks on a large real source tree (default: the crate sources in cargo's
//! registry, `$CARGO_HOME/registry/src`, or pass `--tree DIR`):
//!
//! 1. indexing throughput (files/s, MB/s), full-text only and with the hashing embedder;
//! 2. query latency p50/p99 over every chunk (≥ 100 000 wanted): hybrid, full-text only, and
//!    vector only (IVF);
//! 3. recall@10 of the approximate (IVF) vector search against exact search.
//!
//! `cargo bench -p warren-memory --bench memory [-- --tree DIR --max-files N --queries N]`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use warren_memory::embed::{Embedder, HashEmbedder};
use warren_memory::index::index;
use warren_memory::search::{Filter, Fusion};
use warren_memory::{CodeIndex, MemoryDb};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn pct(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let tree = arg("--tree").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .expect("CARGO_HOME or HOME");
        home.join("registry").join("src")
    });
    let queries: usize = arg("--queries").and_then(|q| q.parse().ok()).unwrap_or(300);
    let dir = std::env::temp_dir().join(format!("warren-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    println!(
        "## indexing {} (the cargo registry's crate sources unless --tree)",
        tree.display()
    );
    let mem = MemoryDb::open(&dir.join("fts.db")).unwrap();
    let r = index(&mem, &tree, None, &mut |_| {}).unwrap();
    let secs = r.elapsed.as_secs_f64();
    println!(
        "full-text only: {} files, {} lines, {:.1} MB, {} chunks in {:.1} s: {:.0} files/s, {:.1} MB/s ({} binary, {} huge skipped)",
        r.files_indexed,
        r.lines,
        r.bytes as f64 / 1e6,
        r.chunks,
        secs,
        r.files_indexed as f64 / secs,
        r.bytes as f64 / 1e6 / secs,
        r.skipped_binary,
        r.skipped_large
    );
    let again = index(&mem, &tree, None, &mut |_| {}).unwrap();
    println!(
        "re-index, nothing changed: {} unchanged in {:.1} s ({:.0} files/s)",
        again.files_unchanged,
        again.elapsed.as_secs_f64(),
        again.files_unchanged as f64 / again.elapsed.as_secs_f64()
    );
    let e = HashEmbedder::new(256);
    let memv = MemoryDb::open(&dir.join("vec.db")).unwrap();
    let r = index(&memv, &tree, Some(&e), &mut |_| {}).unwrap();
    let secs = r.elapsed.as_secs_f64();
    println!(
        "with the hashing embedder (256 dims): {} chunks in {:.1} s: {:.0} files/s, {:.1} MB/s",
        r.chunks,
        secs,
        r.files_indexed as f64 / secs,
        r.bytes as f64 / 1e6 / secs
    );

    // Queries: phrases from the corpus itself — three words from each of `queries` chunks
    // spread over the whole index (distinct queries, no repeats) — and, for filtered queries,
    // the directory of the crate that chunk came from.
    let (qs, crates) = sample_queries(&memv, queries);
    let t0 = Instant::now();
    let ix = CodeIndex::new(&memv, Some(&e)).unwrap();
    println!(
        "\n## {} queries over {} chunks (vectors loaded and IVF built in {:.1} s; approximate: {})",
        qs.len(),
        ix.vectors(),
        t0.elapsed().as_secs_f64(),
        ix.approximate()
    );
    println!("e.g. {:?}", &qs[..3.min(qs.len())]);
    let f = Filter::default();
    // Filtered queries name the workspace, as `code_search` and `warren memory search` do.
    let workspace = std::fs::canonicalize(&tree).unwrap().display().to_string();
    let in_crate: Vec<Filter> = crates
        .iter()
        .map(|c| Filter {
            workspace: Some(workspace.clone()),
            path_prefix: Some(c.clone()),
            ..Filter::default()
        })
        .collect();
    let fts_ix = CodeIndex::new(&memv, None).unwrap();
    let (mut hybrid, mut fts, mut hybrid_f) = (Vec::new(), Vec::new(), Vec::new());
    for ((q, c), in_crate) in qs.iter().zip(&crates).zip(&in_crate) {
        let t = Instant::now();
        let r = ix.search(q, 10, &f, Fusion::default()).unwrap();
        hybrid.push(t.elapsed());
        assert!(!r.hits.is_empty());
        let t = Instant::now();
        fts_ix.search(q, 10, &f, Fusion::default()).unwrap();
        fts.push(t.elapsed());
        let t = Instant::now();
        let r = ix.search(q, 10, in_crate, Fusion::default()).unwrap();
        hybrid_f.push(t.elapsed());
        assert!(r.hits.iter().all(|h| h.path.starts_with(c.as_str())));
    }
    let qv: Vec<Vec<f32>> = e
        .embed(&qs.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    let (mut approx_t, mut exact_t) = (Vec::new(), Vec::new());
    let (mut hits, mut wanted) = (0usize, 0usize);
    let (mut hits_f, mut wanted_f) = (0usize, 0usize);
    let recall = |a: &[(usize, f32)], x: &[(usize, f32)]| {
        a.iter().filter(|p| x.iter().any(|y| y.0 == p.0)).count()
    };
    for (v, in_crate) in qv.iter().zip(&in_crate) {
        let t = Instant::now();
        let a = ix.vector_top(v, 10, &f, false);
        approx_t.push(t.elapsed());
        let t = Instant::now();
        let x = ix.vector_top(v, 10, &f, true);
        exact_t.push(t.elapsed());
        hits += recall(&a, &x);
        wanted += x.len();
        let a = ix.vector_top(v, 10, in_crate, false);
        let x = ix.vector_top(v, 10, in_crate, true);
        hits_f += recall(&a, &x);
        wanted_f += x.len();
    }
    let (h50, h99) = pct(hybrid);
    let (g50, g99) = pct(hybrid_f);
    let (f50, f99) = pct(fts);
    let (a50, a99) = pct(approx_t);
    let (x50, x99) = pct(exact_t);
    println!(
        "hybrid (embed query + IVF + BM25 + fuse): p50 {h50:.2} ms  p99 {h99:.2} ms  (target <= 10 ms p50: {})",
        if h50 <= 10.0 { "met" } else { "NOT met" }
    );
    println!("hybrid, filtered to the query's crate:    p50 {g50:.2} ms  p99 {g99:.2} ms");
    println!("full-text only (BM25):                    p50 {f50:.2} ms  p99 {f99:.2} ms");
    println!("vector top-10, IVF:                       p50 {a50:.2} ms  p99 {a99:.2} ms");
    println!(
        "vector top-10, exact (the peer):          p50 {x50:.2} ms  p99 {x99:.2} ms  (IVF speed-up {:.1}x)",
        x50 / a50
    );
    let r = hits as f64 / wanted.max(1) as f64;
    println!(
        "recall@10 of IVF against exact: {r:.3} over {} distinct queries (target >= 0.95: {})",
        qv.len(),
        if r >= 0.95 { "met" } else { "NOT met" }
    );
    println!(
        "recall@10 of IVF against exact, filtered to the query's crate: {:.3}",
        hits_f as f64 / wanted_f.max(1) as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` distinct queries of three words (four letters or more), each from one chunk, chunks
/// spread evenly over the index; with each, the first two components of its path (the crate's
/// directory in the registry's layout).
fn sample_queries(mem: &MemoryDb, n: usize) -> (Vec<String>, Vec<String>) {
    let chunks = mem.chunk_count(None).unwrap().max(1);
    let step = (chunks / (n as u64 * 2)).max(1);
    let mut seen = std::collections::HashSet::new();
    let (mut qs, mut dirs) = (Vec::new(), Vec::new());
    let mut id = 1;
    while qs.len() < n && id <= chunks as i64 * 2 {
        if let Some((path, text)) = mem.chunk_text(id).unwrap() {
            let w: Vec<String> = warren_memory::embed::words(&text)
                .into_iter()
                .filter(|w| w.len() >= 4 && w.chars().all(|c| c.is_ascii_alphabetic()))
                .collect();
            if w.len() >= 6 {
                let at = w.len() / 3;
                let q = w[at..at + 3].join(" ");
                let dir: Vec<&str> = path.splitn(3, '/').collect();
                if dir.len() == 3 && seen.insert(q.clone()) {
                    qs.push(q);
                    dirs.push(format!("{}/{}/", dir[0], dir[1]));
                }
            }
        }
        id += step as i64;
    }
    (qs, dirs)
}
