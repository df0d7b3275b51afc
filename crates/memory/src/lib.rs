//! Warren's memory: what agents and people can look up.
//!
//! - **Code index** ([`index`], [`search`]): a workspace is walked (honouring `.gitignore`;
//!   through `warren-fsx` handles: no link followed, no special file opened, sizes capped),
//!   binary and huge files skipped, files chunked at syntactic boundaries where a line-based
//!   reading finds them ([`chunk`]), chunks embedded ([`embed`]) and stored with a full-text
//!   index in SQLite ([`db`]); re-indexing is incremental by content hash. Retrieval is hybrid:
//!   vectors (exact when small, IVF when large: [`ann`]) and BM25, fused, filters applied
//!   before either ranking.
//! - **Notes**: per-agent notes (`memory_store`/`memory_query`), reflections written when a
//!   task ends, and episodes (what a task did), searched the same way.
//!
//! - **Access** ([`access`]): which indexed files a task's cell could read on the host, so
//!   host tools answer a task only from those.
//!
//! With no embedder configured everything still works, full-text only, and says so.

#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod access;
pub mod ann;
pub mod chunk;
pub mod db;
pub mod embed;
pub mod index;
pub mod search;

pub use db::{MemoryDb, MemoryError, Note};
pub use embed::{Embedder, HashEmbedder, OpenAiEmbedder};
pub use search::{CodeIndex, Filter, Fusion, Hit, Results};
