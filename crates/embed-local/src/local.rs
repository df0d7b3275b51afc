//! The model itself (feature `local`): tokenizer, BERT from candle-transformers, pooling.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{Tokenizer, TruncationParams};

use crate::{DEFAULT_MAX_TOKENS, DIMS, EmbedError, REQUIRED_FILES};

/// How many texts go through BERT at once. Texts are sorted by length first, so a batch pads
/// to a length close to all of its members'.
const BATCH: usize = 32;

/// all-MiniLM-L6-v2 loaded on the CPU (f32), ready to embed text.
///
/// `Send + Sync`: one instance can serve several threads (candle parallelises each batch
/// over its own thread pool already).
pub struct LocalEmbedder {
    dir: PathBuf,
    tokenizer: Tokenizer,
    model: BertModel,
    device: Device,
    dims: usize,
    max_tokens: usize,
    pad_id: u32,
}

impl fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("dir", &self.dir)
            .field("dims", &self.dims)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

fn model_err(e: candle_core::Error) -> EmbedError {
    EmbedError::Model(e.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, EmbedError> {
    std::fs::read(path).map_err(|source| EmbedError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses and checks `config.json`: a BERT with absolute positions and [`DIMS`] hidden units.
fn load_config(path: &Path) -> Result<BertConfig, EmbedError> {
    let bad = |reason: String| EmbedError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read(path)?;
    let config: BertConfig =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a BERT config: {e}")))?;
    if let Some(kind) = &config.model_type
        && kind != "bert"
    {
        return Err(bad(format!("model_type is {kind:?}, not \"bert\"")));
    }
    if config.hidden_size != DIMS {
        return Err(bad(format!(
            "hidden_size is {}, this crate embeds with {DIMS}",
            config.hidden_size
        )));
    }
    if config.num_attention_heads == 0
        || !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(bad(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            config.hidden_size, config.num_attention_heads
        )));
    }
    if config.max_position_embeddings < 2 {
        return Err(bad(format!(
            "max_position_embeddings is {}, too small for [CLS] and [SEP]",
            config.max_position_embeddings
        )));
    }
    Ok(config)
}

/// The longest input in word pieces: `max_seq_length` from an optional
/// `sentence_bert_config.json` beside the model, else [`DEFAULT_MAX_TOKENS`]; never more than
/// the position table holds.
fn max_tokens(dir: &Path, config: &BertConfig) -> Result<usize, EmbedError> {
    let path = dir.join("sentence_bert_config.json");
    let wanted = match std::fs::read(&path) {
        Ok(bytes) => {
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| EmbedError::Config {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            value
                .get("max_seq_length")
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n >= 2)
                .ok_or_else(|| EmbedError::Config {
                    path: path.clone(),
                    reason: "no max_seq_length of at least 2".into(),
                })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => DEFAULT_MAX_TOKENS,
        Err(source) => return Err(EmbedError::Io { path, source }),
    };
    Ok(wanted.min(config.max_position_embeddings))
}

impl LocalEmbedder {
    /// Load from a folder with `model.safetensors`, `tokenizer.json`, `config.json` (CPU, f32).
    ///
    /// The folder may also hold sentence-transformers' `sentence_bert_config.json`, whose
    /// `max_seq_length` then replaces the default of 256 word pieces. The tokenizer's own
    /// truncation and padding settings are replaced: inputs are cut at that length and padded
    /// per batch.
    ///
    /// # Errors
    /// [`EmbedError::MissingFiles`] naming every absent file, [`EmbedError::Io`],
    /// [`EmbedError::Config`] for a config that is not a 384-wide BERT,
    /// [`EmbedError::Tokenizer`], and [`EmbedError::Model`] when the weights do not match.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let missing: Vec<&'static str> = REQUIRED_FILES
            .into_iter()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(EmbedError::MissingFiles {
                dir: dir.to_path_buf(),
                missing,
            });
        }

        let config = load_config(&dir.join("config.json"))?;
        let max_tokens = max_tokens(dir, &config)?;

        let mut tokenizer = Tokenizer::from_bytes(read(&dir.join("tokenizer.json"))?)
            .map_err(|e| EmbedError::Tokenizer(format!("tokenizer.json: {e}")))?;
        // tokenizer.json ships with truncation at 128 and fixed padding to 128: replace both.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .or_else(|| u32::try_from(config.pad_token_id).ok())
            .unwrap_or(0);
        tokenizer.with_padding(None);

        let device = Device::Cpu;
        // Read into memory rather than memory-map: no `unsafe`, and 87 MiB is read once.
        let weights = read(&dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(model_err)?;
        let model = BertModel::load(vb, &config).map_err(model_err)?;

        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            model,
            device,
            dims: config.hidden_size,
            max_tokens,
            pad_id,
        })
    }

    /// Mean-pooled (attention-mask weighted), L2-normalized embeddings, one per text, in order.
    ///
    /// Batches internally (32 texts at a time, grouped by length), truncates each text to
    /// [`max_tokens`](Self::max_tokens) word pieces (256 for this model) and pads per batch.
    /// The result for a text does not depend on what else is in the call (to float rounding,
    /// about 1e-6). An empty slice gives an empty `Vec`; an empty string gets a vector too
    /// (that of `[CLS] [SEP]`).
    ///
    /// # Errors
    /// [`EmbedError::Tokenizer`] or [`EmbedError::Model`]; neither is expected once
    /// [`load`](Self::load) succeeded.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // Longest first, so each batch pads to little more than its members' lengths.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));

        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| encodings[i].get_ids()).collect();
            let vectors = self.forward(&batch).map_err(model_err)?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// BERT, mean pooling and normalisation for one batch of token id sequences.
    fn forward(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let len = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * len);
        let mut mask = Vec::with_capacity(batch.len() * len);
        for seq in batch {
            ids.extend_from_slice(seq);
            ids.extend(std::iter::repeat_n(self.pad_id, len - seq.len()));
            mask.extend(std::iter::repeat_n(1u32, seq.len()));
            mask.extend(std::iter::repeat_n(0u32, len - seq.len()));
        }
        let shape = (batch.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let token_types = ids.zeros_like()?;

        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?; // (b, len, dims)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (b, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (b, dims)
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (b, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norms)?.to_vec2::<f32>()
    }

    /// Length of each embedding (384 for all-MiniLM-L6-v2; always [`DIMS`]).
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The longest input in word pieces, `[CLS]` and `[SEP]` included; longer texts are cut.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The word-piece ids of `text` as fed to the model (`[CLS]` … `[SEP]`, truncated).
    ///
    /// # Errors
    /// [`EmbedError::Tokenizer`] if tokenizing fails.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }
}
