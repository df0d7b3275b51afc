//! The embedder against the real all-MiniLM-L6-v2 weights.
//!
//! The model folder is `WARREN_MINILM_DIR` if set, else `target/minilm` under the workspace
//! root, fetched there with `fetch-model.sh` when absent. If it cannot be had, each test
//! prints why and passes, except under `CI=true`, where that is a failure.
//!
//! `data/reference.json` holds embeddings computed without candle (numpy, float64, by
//! `data/make_reference.py`); the crate must agree with them.
#![cfg(feature = "local")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use warren_embed_local::{DIMS, EmbedError, LocalEmbedder, model_dir_from_env};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn has_model(dir: &Path) -> bool {
    warren_embed_local::REQUIRED_FILES
        .iter()
        .all(|f| dir.join(f).is_file())
}

/// The model folder, fetching it into `target/minilm` if needed; `Err` says why not.
fn model_dir() -> Result<PathBuf, String> {
    // Tests run in parallel: one fetch at a time (two would race on the same files).
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = FETCH.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = model_dir_from_env() {
        return Ok(dir); // named explicitly: a missing file there is the test's failure
    }
    let dir = workspace_root().join("target/minilm");
    if has_model(&dir) {
        return Ok(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fetch-model.sh");
    eprintln!("fetching all-MiniLM-L6-v2 into {}", dir.display());
    let status = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !status.success() {
        return Err(format!("{} failed: {status}", script.display()));
    }
    if !has_model(&dir) {
        return Err(format!(
            "{} left no model in {}",
            script.display(),
            dir.display()
        ));
    }
    Ok(dir)
}

/// The embedder, loaded once for all tests; `None` (after saying why) when there is no model
/// and this is not CI.
fn embedder() -> Option<&'static LocalEmbedder> {
    static MODEL: OnceLock<Option<LocalEmbedder>> = OnceLock::new();
    MODEL
        .get_or_init(|| match model_dir() {
            Ok(dir) => Some(LocalEmbedder::load(&dir).expect("load the model")),
            Err(why) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "no model under CI: {why}"
                );
                eprintln!("skipping: no all-MiniLM-L6-v2 model ({why})");
                None
            }
        })
        .as_ref()
}

macro_rules! embedder_or_skip {
    () => {
        match embedder() {
            Some(e) => e,
            None => return,
        }
    };
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Short code-like snippets and prose of varied lengths (several batches' worth).
fn corpus(n: usize) -> Vec<String> {
    let kinds = [
        "fn handle_{i}(req: Request) -> Response {{ Response::ok() }}",
        "def test_{i}(): assert parse('{i}') == {i}",
        "SELECT id, name FROM users WHERE id = {i} ORDER BY name;",
        "let v{i}: Vec<u32> = (0..{i}).map(|x| x * x).filter(|x| x % 3 == 0).collect();",
        "The build failed at step {i} because a dependency could not be resolved.",
        "{i}",
    ];
    (0..n)
        .map(|i| {
            let base = kinds[i % kinds.len()].replace("{i}", &i.to_string());
            // Every seventh gets long, so batches mix short and long inputs.
            if i % 7 == 3 {
                format!("{base} {}", "and more words after that ".repeat(i % 40))
            } else {
                base
            }
        })
        .collect()
}

#[test]
fn dims_and_unit_norm() {
    let e = embedder_or_skip!();
    assert_eq!(e.dims(), DIMS);
    assert_eq!(e.dims(), 384);
    let texts = corpus(40);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vs = e.embed(&refs).unwrap();
    assert_eq!(vs.len(), texts.len());
    for v in &vs {
        assert_eq!(v.len(), DIMS);
        assert!(v.iter().all(|x| x.is_finite()));
        let norm = dot(v, v).sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

#[test]
fn deterministic() {
    let e = embedder_or_skip!();
    let texts = [
        "A man is playing a guitar.",
        "impl Drop for Guard { fn drop(&mut self) {} }",
    ];
    let a = e.embed(&texts).unwrap();
    let b = e.embed(&texts).unwrap();
    assert_eq!(a, b, "same input, same call shape: bit-identical");
    // A second instance from the same files agrees too.
    let other = LocalEmbedder::load(&model_dir().unwrap()).unwrap();
    assert_eq!(other.embed(&texts).unwrap(), a);
}

#[test]
fn batch_equals_one_by_one() {
    let e = embedder_or_skip!();
    let texts = corpus(75); // three batches of up to 32, of mixed lengths
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let together = e.embed(&refs).unwrap();
    let mut worst = 0.0f32;
    for (text, v) in refs.iter().zip(&together) {
        let alone = e.embed(&[text]).unwrap();
        assert_eq!(alone.len(), 1);
        worst = worst.max(max_abs_diff(&alone[0], v));
    }
    assert!(worst < 1e-5, "largest difference batched vs alone: {worst}");
    // Order is kept: reversing the input reverses the output.
    let reversed: Vec<&str> = refs.iter().rev().copied().collect();
    let back = e.embed(&reversed).unwrap();
    for (a, b) in back.iter().rev().zip(&together) {
        assert!(max_abs_diff(a, b) < 1e-5);
    }
}

#[test]
fn close_sentences_are_closer_than_unrelated_ones() {
    let e = embedder_or_skip!();
    let vs = e
        .embed(&[
            "A man is playing a guitar.",
            "Someone plays the guitar.",
            "The stock market fell today.",
        ])
        .unwrap();
    let close = dot(&vs[0], &vs[1]);
    let far0 = dot(&vs[0], &vs[2]);
    let far1 = dot(&vs[1], &vs[2]);
    eprintln!("cos close {close:.4}, unrelated {far0:.4} / {far1:.4}");
    assert!(close > 0.7, "paraphrases: {close}");
    assert!(far0 < 0.2 && far1 < 0.2, "unrelated: {far0}, {far1}");
    assert!(close - far0.max(far1) > 0.5);

    // Code: a query finds the snippet that does what it says.
    let code = e
        .embed(&[
            "read a file into a string",
            "let text = std::fs::read_to_string(path)?;",
            "let sum: u64 = values.iter().sum();",
        ])
        .unwrap();
    assert!(dot(&code[0], &code[1]) > dot(&code[0], &code[2]));
}

struct Reference {
    max_tokens: usize,
    texts: Vec<RefText>,
}

struct RefText {
    text: String,
    tokens: usize,
    vector: Vec<f32>,
}

fn reference() -> Reference {
    let raw: serde_json::Value = serde_json::from_str(include_str!("data/reference.json")).unwrap();
    let as_usize = |v: &serde_json::Value| usize::try_from(v.as_u64().unwrap()).unwrap();
    Reference {
        max_tokens: as_usize(&raw["max_tokens"]),
        texts: raw["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| RefText {
                text: t["text"].as_str().unwrap().to_owned(),
                tokens: as_usize(&t["tokens"]),
                vector: t["vector"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            })
            .collect(),
    }
}

#[test]
fn matches_independent_reference() {
    let e = embedder_or_skip!();
    let r = reference();
    assert_eq!(e.max_tokens(), r.max_tokens);
    let texts: Vec<&str> = r.texts.iter().map(|t| t.text.as_str()).collect();
    let got = e.embed(&texts).unwrap();
    for (want, v) in r.texts.iter().zip(&got) {
        let label = &want.text[..want.text.len().min(40)];
        assert_eq!(
            e.token_ids(&want.text).unwrap().len(),
            want.tokens,
            "{label:?}"
        );
        let diff = max_abs_diff(v, &want.vector);
        let cos = dot(v, &want.vector);
        eprintln!(
            "{label:?}: {} tokens, max diff {diff:.2e}, cos {cos:.7}",
            want.tokens
        );
        assert!(diff < 5e-6, "{label:?}: max difference {diff}");
        assert!(cos > 0.999_999, "{label:?}: cosine {cos}");
    }
}

#[test]
fn hello_world_tokens_and_published_values() {
    let e = embedder_or_skip!();
    assert_eq!(e.token_ids("hello world").unwrap(), [101, 7592, 2088, 102]);
    assert_eq!(e.token_ids("Hello World").unwrap(), [101, 7592, 2088, 102]);
    let v = &e.embed(&["hello world"]).unwrap()[0];
    // The start of the published all-MiniLM-L6-v2 embedding of this text.
    let published = [
        -0.034_477, 0.031_023, 0.006_735, 0.026_109, -0.039_362, -0.160_302,
    ];
    assert!(max_abs_diff(&v[..6], &published) < 1e-5, "{:?}", &v[..6]);
}

#[test]
fn long_text_is_truncated() {
    let e = embedder_or_skip!();
    let sentence = "The quick brown fox jumps over the lazy dog. ";
    let long = sentence.repeat(20_000); // ~900 KB, ~200k word pieces
    assert_eq!(e.token_ids(&long).unwrap().len(), e.max_tokens());
    assert_eq!(e.max_tokens(), 256);
    // Only the first 256 pieces count: the same text at 5 000 copies gives the same vector.
    let shorter = sentence.repeat(5_000);
    let vs = e.embed(&[&long, &shorter, "short"]).unwrap();
    assert_eq!(vs.len(), 3);
    assert!(max_abs_diff(&vs[0], &vs[1]) < 1e-5);
    assert!((dot(&vs[0], &vs[0]).sqrt() - 1.0).abs() < 1e-5);
}

#[test]
fn empty_input_and_empty_string() {
    let e = embedder_or_skip!();
    assert!(e.embed(&[]).unwrap().is_empty());
    let vs = e.embed(&["", "   "]).unwrap();
    assert_eq!(vs.len(), 2);
    assert_eq!(e.token_ids("").unwrap(), [101, 102]);
    // Whitespace is dropped by the tokenizer: both are `[CLS] [SEP]`.
    assert!(max_abs_diff(&vs[0], &vs[1]) < 1e-6);
    assert!((dot(&vs[0], &vs[0]).sqrt() - 1.0).abs() < 1e-5);
}

#[test]
fn unicode_and_unknown_text() {
    let e = embedder_or_skip!();
    let texts = ["naïve café — 東京 🚀", "\u{0}\u{1}\u{7f}", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"];
    let vs = e.embed(&texts).unwrap();
    assert_eq!(vs.len(), 3);
    for v in vs {
        assert!((dot(&v, &v).sqrt() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LocalEmbedder>();
    let e = embedder_or_skip!();
    let alone = e.embed(&["thread safety"]).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| e.embed(&["thread safety"]).unwrap()))
            .collect();
        for h in handles {
            assert!(max_abs_diff(&h.join().unwrap()[0], &alone[0]) < 1e-6);
        }
    });
}

/// A scratch folder under the target dir, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = workspace_root().join("target/embed-local-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn missing_files_are_named() {
    let dir = scratch("missing");
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    match LocalEmbedder::load(&dir) {
        Err(EmbedError::MissingFiles { missing, .. }) => {
            assert_eq!(missing, ["model.safetensors", "config.json"]);
        }
        other => panic!("expected MissingFiles, got {other:?}"),
    }
    let err = LocalEmbedder::load(&dir.join("nowhere")).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("lacks model.safetensors, tokenizer.json, config.json"),
        "{err}"
    );
}

#[test]
fn bad_config_and_bad_files_are_reported() {
    let dir = scratch("bad");
    for f in warren_embed_local::REQUIRED_FILES {
        std::fs::write(dir.join(f), "not json").unwrap();
    }
    let err = LocalEmbedder::load(&dir).unwrap_err();
    assert!(matches!(err, EmbedError::Config { .. }), "{err:?}");

    // A well-formed BERT config of the wrong width.
    let config = r#"{"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "model_type": "bert"}"#;
    std::fs::write(dir.join("config.json"), config).unwrap();
    let err = LocalEmbedder::load(&dir).unwrap_err();
    assert!(err.to_string().contains("hidden_size is 768"), "{err}");

    // Right config, broken tokenizer.
    std::fs::write(dir.join("config.json"), config.replace("768", "384")).unwrap();
    let err = LocalEmbedder::load(&dir).unwrap_err();
    assert!(matches!(err, EmbedError::Tokenizer(_)), "{err:?}");

    // Real tokenizer (when the model is at hand), weights that are not safetensors.
    if let Some(model) = model_dir().ok().filter(|d| has_model(d)) {
        std::fs::copy(model.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
        let err = LocalEmbedder::load(&dir).unwrap_err();
        assert!(matches!(err, EmbedError::Model(_)), "{err:?}");
    }
}
