//! Embedders: text → unit vectors.
//!
//! - [`OpenAiEmbedder`]: any OpenAI-compatible `POST {base}/embeddings` (OpenAI, Ollama, vLLM,
//!   llama.cpp, …), batched, with retries on 429/5xx.
//! - [`HashEmbedder`]: feature hashing of identifier parts and their pairs into a fixed number
//!   of dimensions. No model and no network, and purely lexical: it exists for tests and
//!   benchmarks of the vector machinery (it must be chosen explicitly; with no embedder
//!   configured, retrieval is full-text only and says so).
//! - The local sentence-transformers model (`warren-embed-local`, cargo feature `local`).

use std::time::Duration;

/// Embedding failures.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The endpoint failed or answered something unusable.
    #[error("embeddings: {0}")]
    Remote(String),
    /// The local model failed.
    #[error("local embedder: {0}")]
    Local(String),
}

/// Text → L2-normalized vectors of `dims()` floats.
pub trait Embedder: Send + Sync {
    /// A short name, stored with the vectors (vectors of another embedder are not comparable).
    fn name(&self) -> String;
    /// Vector size.
    fn dims(&self) -> usize;
    /// One vector per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Scale `v` to unit length (zero vectors stay zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Feature hashing of identifier parts (see the module docs).
#[derive(Clone, Debug)]
pub struct HashEmbedder {
    dims: usize,
}

impl HashEmbedder {
    /// With `dims` dimensions.
    pub fn new(dims: usize) -> Self {
        HashEmbedder { dims: dims.max(8) }
    }
}

/// Lowercased word parts: `parseDuration` and `parse_duration` both give `parse`, `duration`.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if c.is_uppercase() && prev_lower && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = c.is_lowercase() || c.is_ascii_digit();
            cur.extend(c.to_lowercase());
        } else {
            prev_lower = false;
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Embedder for HashEmbedder {
    fn name(&self) -> String {
        format!("hash-{}", self.dims)
    }
    fn dims(&self) -> usize {
        self.dims
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; self.dims];
                let w = words(t);
                let mut add = |key: &str, weight: f32| {
                    let h = fnv(key);
                    let i = (h % self.dims as u64) as usize;
                    v[i] += if h >> 63 == 0 { weight } else { -weight };
                };
                for (i, word) in w.iter().enumerate() {
                    add(word, 1.0);
                    if let Some(next) = w.get(i + 1) {
                        add(&format!("{word} {next}"), 0.5);
                    }
                }
                normalize(&mut v);
                v
            })
            .collect())
    }
}

/// An OpenAI-compatible embeddings endpoint.
pub struct OpenAiEmbedder {
    base_url: String,
    api_key: Option<String>,
    model: String,
    dims: usize,
    client: reqwest::blocking::Client,
    /// Texts per request.
    pub batch: usize,
}

impl OpenAiEmbedder {
    /// `base_url` like `http://localhost:11434/v1`; `dims` is checked against the answers.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        model: &str,
        dims: usize,
    ) -> Result<Self, EmbedError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| EmbedError::Remote(e.to_string()))?;
        Ok(OpenAiEmbedder {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            model: model.to_owned(),
            dims,
            client,
            batch: 64,
        })
    }

    fn once(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, (bool, String)> {
        let mut req = self
            .client
            .post(format!("{}/embeddings", self.base_url))
            .json(&serde_json::json!({"model": self.model, "input": texts}));
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().map_err(|e| (true, e.to_string()))?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().map_err(|e| {
            (
                status.is_server_error(),
                format!("{status}: invalid JSON: {e}"),
            )
        })?;
        if !status.is_success() {
            let retry = status.as_u16() == 429 || status.is_server_error();
            return Err((
                retry,
                format!(
                    "{status}: {}",
                    body["error"]["message"].as_str().unwrap_or("error")
                ),
            ));
        }
        let mut data: Vec<(usize, Vec<f32>)> = body["data"]
            .as_array()
            .ok_or((false, "answer has no data array".to_owned()))?
            .iter()
            .map(|d| {
                let idx = d["index"].as_u64().unwrap_or(0) as usize;
                let mut v: Vec<f32> = d["embedding"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default();
                normalize(&mut v);
                (idx, v)
            })
            .collect();
        data.sort_by_key(|(i, _)| *i);
        if data.len() != texts.len() || data.iter().any(|(_, v)| v.len() != self.dims) {
            return Err((
                false,
                format!("expected {} vectors of {} dims", texts.len(), self.dims),
            ));
        }
        Ok(data.into_iter().map(|(_, v)| v).collect())
    }
}

impl Embedder for OpenAiEmbedder {
    fn name(&self) -> String {
        format!("openai:{}", self.model)
    }
    fn dims(&self) -> usize {
        self.dims
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.batch.max(1)) {
            let mut delay = Duration::from_millis(200);
            let mut attempt = 0;
            loop {
                match self.once(batch) {
                    Ok(v) => {
                        out.extend(v);
                        break;
                    }
                    Err((true, _)) if attempt < 4 => {
                        std::thread::sleep(delay);
                        delay *= 2;
                        attempt += 1;
                    }
                    Err((_, e)) => return Err(EmbedError::Remote(e)),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(feature = "local")]
fn local() -> Result<Option<std::sync::Arc<dyn Embedder>>, String> {
    let dir = warren_embed_local::model_dir_from_env()
        .ok_or("the local embedder reads its model from WARREN_MINILM_DIR (model.safetensors, tokenizer.json, config.json)")?;
    let e = warren_embed_local::LocalEmbedder::load(&dir).map_err(|e| e.to_string())?;
    Ok(Some(std::sync::Arc::new(Local(e))))
}

#[cfg(not(feature = "local"))]
fn local() -> Result<Option<std::sync::Arc<dyn Embedder>>, String> {
    Err("this warren was built without the local embedder (cargo build --release --features local-embedder)".into())
}

/// all-MiniLM-L6-v2 in-process (`warren-embed-local`).
#[cfg(feature = "local")]
pub struct Local(pub warren_embed_local::LocalEmbedder);

#[cfg(feature = "local")]
impl Embedder for Local {
    fn name(&self) -> String {
        "local:all-MiniLM-L6-v2".into()
    }
    fn dims(&self) -> usize {
        self.0.dims()
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.0
            .embed(texts)
            .map_err(|e| EmbedError::Local(e.to_string()))
    }
}

/// The embedder named by `choice` or `WARREN_EMBEDDER`: `none` (the default: full-text only),
/// `openai` (`WARREN_EMBEDDINGS_URL` or `OPENAI_BASE_URL`, `OPENAI_API_KEY`,
/// `WARREN_EMBEDDINGS_MODEL`, `WARREN_EMBEDDINGS_DIMS`), `hash` (lexical; for tests), `local`
/// (needs a build with the local embedder).
pub fn from_env(choice: Option<&str>) -> Result<Option<std::sync::Arc<dyn Embedder>>, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let choice = choice.map(str::to_owned).or_else(|| env("WARREN_EMBEDDER"));
    match choice.as_deref().unwrap_or("none") {
        "none" => Ok(None),
        "hash" => Ok(Some(std::sync::Arc::new(HashEmbedder::new(256)))),
        "openai" => {
            let url = env("WARREN_EMBEDDINGS_URL")
                .or_else(|| env("OPENAI_BASE_URL"))
                .unwrap_or_else(|| "https://api.openai.com/v1".into());
            let model =
                env("WARREN_EMBEDDINGS_MODEL").unwrap_or_else(|| "text-embedding-3-small".into());
            let dims = env("WARREN_EMBEDDINGS_DIMS")
                .and_then(|d| d.parse().ok())
                .unwrap_or(1536);
            Ok(Some(std::sync::Arc::new(
                OpenAiEmbedder::new(&url, env("OPENAI_API_KEY"), &model, dims)
                    .map_err(|e| e.to_string())?,
            )))
        }
        "local" => local(),
        other => Err(format!(
            "unknown embedder {other:?} (none, openai, local, hash)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_parts_match_across_styles() {
        assert_eq!(words("parseDuration(x)"), ["parse", "duration", "x"]);
        assert_eq!(words("parse_duration"), ["parse", "duration"]);
        let e = HashEmbedder::new(64);
        let v = e
            .embed(&["parse_duration", "parseDuration", "open socket"])
            .unwrap_or_default();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!((dot(&v[0], &v[1]) - 1.0).abs() < 1e-5);
        assert!(dot(&v[0], &v[2]) < 0.5);
        assert!((dot(&v[2], &v[2]) - 1.0).abs() < 1e-5);
    }
}
