//! Embeddings per second for ~200 short code-like snippets, single-threaded and with candle's
//! default threading.
//!
//! ```sh
//! cargo run --release -p warren-embed-local --features local --example bench [MODEL_DIR]
//! ```
//!
//! The model folder is the argument, else `WARREN_MINILM_DIR`, else `target/minilm` under the
//! workspace root. candle sizes its thread pools once per process, so the single-threaded
//! figure comes from a child process of this same program run with `RAYON_NUM_THREADS=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use warren_embed_local::{LocalEmbedder, model_dir_from_env};

const CHILD_FLAG: &str = "--measure-only";
const SNIPPETS: usize = 200;
const ROUNDS: usize = 3;

fn snippets() -> Vec<String> {
    let kinds = [
        "fn handle_{i}(req: Request) -> Result<Response, Error> {{ Ok(Response::ok()) }}",
        "def test_{i}(tmp_path): assert load(tmp_path / 'f{i}.json') == {{}}",
        "SELECT id, name FROM users WHERE id = {i} ORDER BY name LIMIT 10;",
        "let v{i}: Vec<u32> = (0..{i}).map(|x| x * x).collect();",
        "if err != nil {{ return fmt.Errorf(\"step {i}: %w\", err) }}",
        "const handler{i} = async (req, res) => res.json({{ ok: true, id: {i} }});",
        "impl From<io::Error> for Error{i} {{ fn from(e: io::Error) -> Self {{ Self::Io(e) }} }}",
        "#[test] fn parses_{i}() {{ assert_eq!(parse(\"{i}\"), Ok({i})); }}",
    ];
    (0..SNIPPETS)
        .map(|i| kinds[i % kinds.len()].replace("{i}", &i.to_string()))
        .collect()
}

/// Embeds the snippets ROUNDS times after one warm-up and prints the best rate.
fn measure(dir: &Path) {
    let label = match std::env::var("RAYON_NUM_THREADS") {
        Ok(n) => format!("RAYON_NUM_THREADS={n}"),
        Err(_) => "default threading".to_owned(),
    };
    let t = Instant::now();
    let e = LocalEmbedder::load(dir).expect("load the model");
    let load = t.elapsed();
    let texts = snippets();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens: usize = refs.iter().map(|t| e.token_ids(t).unwrap().len()).sum();
    e.embed(&refs).unwrap(); // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let out = e.embed(&refs).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(out.len(), refs.len());
    }
    println!(
        "{label} (candle threads {}): {} snippets ({:.1} word pieces avg) in {:.3} s = {:.0} embeddings/s (best of {ROUNDS}; load {:.2} s)",
        candle_core::utils::get_num_threads(),
        refs.len(),
        tokens as f64 / refs.len() as f64,
        best,
        refs.len() as f64 / best,
        load.as_secs_f64(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let child = args.iter().any(|a| a == CHILD_FLAG);
    let dir = args
        .iter()
        .find(|a| *a != CHILD_FLAG)
        .map(PathBuf::from)
        .or_else(model_dir_from_env)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/minilm"));
    if child {
        measure(&dir);
        return;
    }
    let status = Command::new(std::env::current_exe().unwrap())
        .arg(CHILD_FLAG)
        .arg(&dir)
        .env("RAYON_NUM_THREADS", "1")
        .status()
        .unwrap();
    assert!(status.success(), "single-threaded run failed: {status}");
    let status = Command::new(std::env::current_exe().unwrap())
        .arg(CHILD_FLAG)
        .arg(&dir)
        .env_remove("RAYON_NUM_THREADS")
        .status()
        .unwrap();
    assert!(status.success(), "default-threading run failed: {status}");
}
