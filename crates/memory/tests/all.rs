//! The code index and notes over a real SQLite file and a real directory tree.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};

use warren_memory::embed::HashEmbedder;
use warren_memory::index::index;
use warren_memory::search::{Filter, Fusion, NoteFilter, search_notes};
use warren_memory::{CodeIndex, MemoryDb};

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(name: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("warren-memory-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn project(root: &Path) {
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
    std::fs::write(
        root.join("src/units.rs"),
        "/// Parse a duration like 10m or 2h.\npub fn parse_duration(s: &str) -> Option<u64> {\n    let n: u64 = s[..s.len() - 1].parse().ok()?;\n    Some(n)\n}\n\n/// Parse a size like 2G.\npub fn parse_size(s: &str) -> Option<u64> {\n    s.parse().ok()\n}\n",
    )
    .unwrap();
    std::fs::write(
        root.join("src/net.rs"),
        "/// Open a TCP socket to the server.\npub fn connect_socket(addr: &str) -> std::io::Result<std::net::TcpStream> {\n    std::net::TcpStream::connect(addr)\n}\n",
    )
    .unwrap();
    std::fs::write(
        root.join("docs.md"),
        "# Durations\n\nTimeouts accept durations such as 30s.\n",
    )
    .unwrap();
    std::fs::write(
        root.join("target/generated.rs"),
        "pub fn parse_duration_generated() {}\n",
    )
    .unwrap();
    std::fs::write(
        root.join("logo.png"),
        [0x89u8, b'P', b'N', b'G', 0, 0, 1, 2],
    )
    .unwrap();
    std::fs::write(root.join("huge.txt"), "x".repeat(2 << 20)).unwrap();
}

#[test]
fn indexing_is_incremental_and_skips_ignored_binary_and_huge_files() {
    let d = dir("index");
    let root = d.0.join("p");
    project(&root);
    let mem = MemoryDb::open(&d.0.join("m.db")).unwrap();
    let e = HashEmbedder::new(64);
    let mut ticks = 0;
    let r = index(&mem, &root, Some(&e), &mut |_| ticks += 1).unwrap();
    assert_eq!(
        (r.files_indexed, r.skipped_binary, r.skipped_large),
        (3, 1, 1),
        "{r:?}"
    );
    assert!(ticks >= 3);
    let chunks = mem.chunk_count(None).unwrap();
    assert!(chunks >= 3, "{chunks}");
    let again = index(&mem, &root, Some(&e), &mut |_| {}).unwrap();
    assert_eq!(
        (again.files_indexed, again.files_unchanged),
        (0, 3),
        "{again:?}"
    );
    std::fs::write(root.join("src/net.rs"), "pub fn close_socket() {}\n").unwrap();
    std::fs::remove_file(root.join("docs.md")).unwrap();
    let third = index(&mem, &root, Some(&e), &mut |_| {}).unwrap();
    assert_eq!(
        (third.files_indexed, third.files_removed),
        (1, 1),
        "{third:?}"
    );
    // Another embedder's vectors are not comparable: everything is embedded again.
    let other = index(&mem, &root, Some(&HashEmbedder::new(32)), &mut |_| {}).unwrap();
    assert_eq!(other.files_indexed, 2);
}

#[test]
fn full_text_only_without_an_embedder_and_says_so() {
    let d = dir("fts");
    let root = d.0.join("p");
    project(&root);
    let mem = MemoryDb::open(&d.0.join("m.db")).unwrap();
    index(&mem, &root, None, &mut |_| {}).unwrap();
    let ix = CodeIndex::new(&mem, None).unwrap();
    let r = ix
        .search("tcp socket", 5, &Filter::default(), Fusion::default())
        .unwrap();
    assert!(r.mode.contains("full-text only"), "{}", r.mode);
    assert_eq!(r.hits[0].path, "src/net.rs");
    assert_eq!(r.hits[0].start_line, 1);
    assert!(r.hits[0].vector_score.is_none() && r.hits[0].text_score.is_some());
    // FTS syntax in a query is just text.
    assert!(
        ix.search(
            "\"unbalanced AND (",
            5,
            &Filter::default(),
            Fusion::default()
        )
        .is_ok()
    );
}

#[test]
fn hybrid_ranks_by_both_and_filters_apply_before_ranking() {
    let d = dir("hybrid");
    let root = d.0.join("p");
    project(&root);
    let mem = MemoryDb::open(&d.0.join("m.db")).unwrap();
    let e = HashEmbedder::new(256);
    index(&mem, &root, Some(&e), &mut |_| {}).unwrap();
    let ix = CodeIndex::new(&mem, Some(&e)).unwrap();
    let r = ix
        .search("parseDuration", 3, &Filter::default(), Fusion::default())
        .unwrap();
    assert_eq!(r.mode, "hybrid");
    let top = &r.hits[0];
    assert_eq!(top.path, "src/units.rs");
    assert!(top.text.contains("parse_duration"), "{top:?}");
    assert!(top.vector_score.is_some());
    // Filtered to docs: the filter's own best, even though better matches exist elsewhere.
    let f = Filter {
        path_prefix: Some("docs".into()),
        ..Filter::default()
    };
    let r = ix
        .search("parse duration", 3, &f, Fusion::Rrf { k: 60.0 })
        .unwrap();
    assert!(!r.hits.is_empty());
    assert!(
        r.hits.iter().all(|h| h.path.starts_with("docs")),
        "{:?}",
        r.hits
    );
    let ws = Filter {
        workspace: Some("/elsewhere".into()),
        ..Filter::default()
    };
    assert!(
        ix.search("parse", 3, &ws, Fusion::default())
            .unwrap()
            .hits
            .is_empty()
    );
}

/// A generated project: `dirs` directories of `files` files, each three functions (a chunk
/// each) whose words vary with the directory and file.
fn generated(root: &Path, dirs: usize, files: usize) {
    let topics = [
        "parse", "socket", "buffer", "thread", "digest", "encode", "decode", "mutex", "regex",
        "listener", "timeout", "channel",
    ];
    for d in 0..dirs {
        let dir = root.join(format!("m{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files {
            let mut src = String::new();
            for g in 0..3 {
                let a = topics[(d + g) % topics.len()];
                let b = topics[(f * 7 + g * 3) % topics.len()];
                src.push_str(&format!(
                    "/// {a} the {b} of item {d} {f} {g}.\npub fn {a}_{b}_{d}_{f}_{g}(x: u64) -> u64 {{\n    let y = x * {d};\n    let z = y + {f};\n    let w = z ^ {g};\n    let v = w.rotate_left(3);\n    v + {g}\n}}\n\n"
                ));
            }
            std::fs::write(dir.join(format!("f{f:02}.rs")), src).unwrap();
        }
    }
}

#[test]
fn approximate_index_answers_filtered_queries_like_exact_search() {
    let d = dir("ivf-filter");
    let (a, b) = (d.0.join("a"), d.0.join("b"));
    generated(&a, 24, 20);
    generated(&b, 4, 5);
    let mem = MemoryDb::open(&d.0.join("m.db")).unwrap();
    let e = HashEmbedder::new(64);
    index(&mem, &a, Some(&e), &mut |_| {}).unwrap();
    index(&mem, &b, Some(&e), &mut |_| {}).unwrap();
    let wa = std::fs::canonicalize(&a).unwrap().display().to_string();
    let wb = std::fs::canonicalize(&b).unwrap().display().to_string();
    // IVF from 100 vectors on, so this small corpus is searched approximately.
    let mut ix = CodeIndex::with_threshold(&mem, Some(&e), 100).unwrap();
    assert!(ix.approximate(), "{} vectors", ix.vectors());
    // Two lists probed of ~38: a filter searched inside them would miss most of its rows.
    ix.nprobe = 2;
    let filter = |w: Option<&str>, p: Option<&str>| Filter {
        workspace: w.map(str::to_owned),
        path_prefix: p.map(str::to_owned),
        ..Filter::default()
    };
    let queries = [
        "parse socket",
        "thread mutex timeout",
        "encode the buffer",
        "regex",
    ];
    // Narrow filters (a directory, a file, the other workspace) keep fewer rows than IVF
    // would score: answered exactly over their own rows, identical to exact search.
    for f in [
        filter(Some(&wa), Some("m07/")),
        filter(Some(&wa), Some("m11/f03.rs")),
        filter(Some(&wb), None),
        filter(None, Some("m02/")),
    ] {
        for q in queries {
            let qv = warren_memory::Embedder::embed(&e, &[q]).unwrap().remove(0);
            let approx = ix.vector_top(&qv, 10, &f, false);
            let exact = ix.vector_top(&qv, 10, &f, true);
            assert!(!exact.is_empty(), "{f:?}");
            assert_eq!(approx, exact, "{f:?} {q}");
        }
    }
    // A wide filter (all of workspace a) is applied inside the probed lists: k hits, all
    // kept by the filter, most of them exact search's.
    ix.nprobe = 24;
    let wide = filter(Some(&wa), None);
    let mut same = 0;
    for q in queries {
        let qv = warren_memory::Embedder::embed(&e, &[q]).unwrap().remove(0);
        let approx = ix.vector_top(&qv, 10, &wide, false);
        let exact: Vec<usize> = ix
            .vector_top(&qv, 10, &wide, true)
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(approx.len(), 10);
        same += approx.iter().filter(|x| exact.contains(&x.0)).count();
    }
    assert!(same >= 30, "recall {same}/40");
    // Hybrid results under a filter never leave it.
    let r = ix
        .search(
            "parse socket",
            10,
            &filter(None, Some("m03/")),
            Fusion::default(),
        )
        .unwrap();
    assert_eq!(r.hits.len(), 10);
    assert!(r.hits.iter().all(|h| h.path.starts_with("m03/")), "{r:?}");
    // A one-off scoped index reads only the filter's vectors from the database.
    let scoped = CodeIndex::scoped(&mem, Some(&e), &filter(Some(&wb), None)).unwrap();
    assert_eq!(scoped.vectors() as u64, mem.chunk_count(Some(&wb)).unwrap());
    let scoped = CodeIndex::scoped(&mem, Some(&e), &filter(Some(&wa), Some("m05/"))).unwrap();
    assert_eq!(scoped.vectors(), 20 * 3);
    let r = scoped
        .search(
            "decode",
            5,
            &filter(Some(&wa), Some("m05/")),
            Fusion::default(),
        )
        .unwrap();
    assert!(r.hits.iter().all(|h| h.path.starts_with("m05/")), "{r:?}");
}

#[test]
fn notes_are_per_agent_and_searchable() {
    let d = dir("notes");
    let mem = MemoryDb::open(&d.0.join("m.db")).unwrap();
    let e = HashEmbedder::new(128);
    let add = |agent: &str, kind: &str, text: &str| {
        let v = warren_memory::Embedder::embed(&e, &[text])
            .unwrap()
            .pop()
            .unwrap();
        mem.add_note(&warren_memory::db::NewNote {
            kind,
            agent: Some(agent),
            workspace: Some("/ws"),
            task: Some("t1"),
            text,
            embedder: "hash-128",
            vector: Some(&v),
        })
        .unwrap()
    };
    add("coder", "note", "The flaky test needs RUST_TEST_THREADS=1");
    add("reviewer", "note", "Reviewers prefer small diffs");
    add(
        "coder",
        "reflection",
        "Running the tests first saved a turn",
    );
    let notes = |agent| NoteFilter {
        kinds: &["note"],
        agent,
        ..NoteFilter::default()
    };
    let got = search_notes(&mem, Some(&e), &notes(Some("coder")), "flaky test", 5).unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].text.contains("RUST_TEST_THREADS"));
    let refl = search_notes(
        &mem,
        None,
        &NoteFilter {
            kinds: &["reflection"],
            workspace: Some("/ws"),
            ..NoteFilter::default()
        },
        "tests first",
        5,
    )
    .unwrap();
    assert_eq!(refl[0].kind, "reflection");
    assert!(
        search_notes(&mem, Some(&e), &notes(Some("nobody")), "test", 5)
            .unwrap()
            .is_empty()
    );
}

/// A local OpenAI-compatible `/v1/embeddings` server: answers 429 first, then vectors derived
/// from each input's length; records every request body.
fn embeddings_server() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for (n, c) in l.incoming().flatten().enumerate() {
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut len = 0;
            let mut line = String::new();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            s2.lock().unwrap().push(req.clone());
            let (status, out) = if n == 0 {
                (
                    "429 Too Many Requests",
                    serde_json::json!({"error": {"message": "slow down"}}),
                )
            } else {
                let data: Vec<serde_json::Value> = req["input"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let l = t.as_str().unwrap().len() as f64;
                        serde_json::json!({"index": i, "embedding": [l, 1.0, 0.0, 2.0]})
                    })
                    .rev() // out of order on purpose: the index field decides
                    .collect();
                (
                    "200 OK",
                    serde_json::json!({"data": data, "model": req["model"]}),
                )
            };
            let text = out.to_string();
            let mut c = c;
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (format!("http://{addr}/v1"), seen)
}

#[test]
fn an_openai_compatible_endpoint_embeds_in_batches_and_retries_429() {
    use warren_memory::Embedder;
    let (url, seen) = embeddings_server();
    let mut e =
        warren_memory::OpenAiEmbedder::new(&url, Some("sk-emb".into()), "emb-model", 4).unwrap();
    e.batch = 2;
    let v = e.embed(&["a", "bbb", "cc"]).unwrap();
    assert_eq!(v.len(), 3);
    // In input order (the server answered in reverse), unit length.
    let n = |x: &[f32]| x.iter().map(|y| y * y).sum::<f32>().sqrt();
    assert!((n(&v[0]) - 1.0).abs() < 1e-5);
    assert!(v[1][0] > v[2][0] && v[2][0] > v[0][0], "{v:?}");
    let reqs = seen.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3, "one 429, then two batches");
    assert_eq!(reqs[1]["input"], serde_json::json!(["a", "bbb"]));
    assert_eq!(reqs[2]["model"], "emb-model");
    // Wrong dimensions are an error, not a silent mix.
    let bad = warren_memory::OpenAiEmbedder::new(&url, None, "m", 8).unwrap();
    assert!(bad.embed(&["x"]).is_err());
}

/// A workspace is hostile input: what a cell planted there must neither hang the indexer nor
/// end up in the index.
#[test]
fn planted_fifos_links_and_sockets_neither_hang_nor_leak_into_the_index() {
    use std::os::unix::fs::symlink;
    let d = dir("hostile");
    let root = d.0.join("p");
    std::fs::create_dir_all(root.join("src/deep")).unwrap();
    std::fs::create_dir_all(root.join(".git/info")).unwrap();
    std::fs::write(root.join("src/ok.rs"), "pub fn honest_function() {}\n").unwrap();
    let secret = d.0.join("outside-secret.txt");
    std::fs::write(&secret, "root:sekrit-hash-outside:19000:0:99999:7:::\n").unwrap();
    let fifo = |p: &Path| {
        let ok = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo {}", p.display());
    };
    // A FIFO where a source file, and where every ignore file, would be: a blocking open
    // waits for a writer forever.
    fifo(&root.join("src/pipe.rs"));
    fifo(&root.join(".gitignore"));
    fifo(&root.join("src/.gitignore"));
    fifo(&root.join(".git/info/exclude"));
    // Links to a file outside (and to /etc/shadow), to a directory outside, to a device.
    symlink(&secret, root.join("src/leak.rs")).unwrap();
    symlink("/etc/shadow", root.join("src/shadow.rs")).unwrap();
    symlink(&d.0, root.join("src/deep/up")).unwrap();
    symlink("/dev/zero", root.join("zero.txt")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("src/sock.rs")).unwrap();
    let mem = std::sync::Arc::new(MemoryDb::open(&d.0.join("m.db")).unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let (m, r) = (std::sync::Arc::clone(&mem), root.clone());
    std::thread::spawn(move || {
        let _ = tx.send(index(&m, &r, Some(&HashEmbedder::new(64)), &mut |_| {}));
    });
    let report = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("indexing a workspace with FIFOs in it hung")
        .unwrap();
    assert_eq!(report.files_indexed, 1, "{report:?}");
    assert!(report.skipped_special >= 6, "{report:?}");
    let ix = CodeIndex::new(&mem, None).unwrap();
    for q in ["sekrit hash outside", "root", "honest_function"] {
        for h in ix
            .search(q, 20, &Filter::default(), Fusion::default())
            .unwrap()
            .hits
        {
            assert_eq!(h.path, "src/ok.rs", "{q}: {h:?}");
            assert!(!h.text.contains("sekrit"), "{h:?}");
        }
    }
    // A regular file swapped for a link to a secret after it was indexed: dropped, not read.
    std::fs::remove_file(root.join("src/ok.rs")).unwrap();
    symlink(&secret, root.join("src/ok.rs")).unwrap();
    let again = index(&mem, &root, None, &mut |_| {}).unwrap();
    assert_eq!(
        (again.files_indexed, again.files_removed),
        (0, 1),
        "{again:?}"
    );
    assert_eq!(mem.chunk_count(None).unwrap(), 0);
}
