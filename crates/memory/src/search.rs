//! Hybrid retrieval: vector similarity and BM25 full text, fused.
//!
//! Both sides apply the filter (workspace, path prefix) *before* ranking: the full-text side in
//! the same SQL statement as the match, the vector side on each candidate before it is scored.
//! Vector search is exact below [`CodeIndex::exact_below`] vectors and uses the IVF index
//! above it. Fusion is weighted (min-max normalized scores, default 0.7 vector / 0.3 text) or
//! reciprocal rank fusion. Without an embedder, retrieval is full-text only, and says so.

use std::collections::HashMap;

use rusqlite::params;

use crate::ann::Ivf;
use crate::db::{MemoryDb, MemoryError, Note, VectorRows, db};
use crate::embed::{Embedder, words};

/// What to search.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this workspace (canonical path).
    pub workspace: Option<String>,
    /// Only paths starting with this (relative to the workspace).
    pub path_prefix: Option<String>,
}

/// How the two rankings are combined.
#[derive(Clone, Copy, Debug)]
pub enum Fusion {
    /// `vector * v + text * t` over min-max normalized scores.
    Weighted {
        /// Weight of vector similarity.
        vector: f32,
        /// Weight of BM25.
        text: f32,
    },
    /// Σ 1 / (k + rank).
    Rrf {
        /// The RRF constant (60 is usual).
        k: f32,
    },
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Weighted {
            vector: 0.7,
            text: 0.3,
        }
    }
}

/// One ranked chunk.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Hit {
    /// Chunk id.
    pub id: i64,
    /// Workspace.
    pub workspace: String,
    /// Path relative to the workspace.
    pub path: String,
    /// First line (1-based).
    pub start_line: i64,
    /// Last line.
    pub end_line: i64,
    /// The chunk.
    pub text: String,
    /// Fused score (higher is better).
    pub score: f32,
    /// Cosine similarity, when ranked by vectors.
    pub vector_score: Option<f32>,
    /// BM25 (higher is better), when matched by text.
    pub text_score: Option<f32>,
}

/// Ranked chunks and how they were found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Results {
    /// Best first.
    pub hits: Vec<Hit>,
    /// `hybrid` or `full-text only (no embedder configured)`.
    pub mode: String,
}

/// An FTS5 query matching any word of `q` (quoted: no FTS syntax from the user).
pub fn fts_query(q: &str) -> Option<String> {
    fts_join(q, " OR ")
}

/// An FTS5 query matching all words of `q`.
pub fn fts_all(q: &str) -> Option<String> {
    fts_join(q, " ")
}

fn fts_join(q: &str, sep: &str) -> Option<String> {
    let w = words(q);
    (!w.is_empty()).then(|| {
        w.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(sep)
    })
}

/// Searches the code index (vectors loaded once).
pub struct CodeIndex<'a> {
    db: &'a MemoryDb,
    embedder: Option<&'a dyn Embedder>,
    rows: Option<VectorRows>,
    ivf: Option<Ivf>,
    /// Use exact vector search below this many vectors.
    pub exact_below: usize,
    /// IVF lists scored per query.
    pub nprobe: usize,
}

impl<'a> CodeIndex<'a> {
    /// Load the vectors `embedder` made (none without an embedder); build IVF when large
    /// (worth it for a long-lived index; see [`CodeIndex::exact`] for one-off queries).
    pub fn new(db: &'a MemoryDb, embedder: Option<&'a dyn Embedder>) -> Result<Self, MemoryError> {
        Self::with(db, embedder, true)
    }

    /// Like [`CodeIndex::new`], but always exact: no index to build (a one-off query, where
    /// building IVF costs more than scoring every vector once).
    pub fn exact(
        db: &'a MemoryDb,
        embedder: Option<&'a dyn Embedder>,
    ) -> Result<Self, MemoryError> {
        Self::with(db, embedder, false)
    }

    fn with(
        db: &'a MemoryDb,
        embedder: Option<&'a dyn Embedder>,
        approximate: bool,
    ) -> Result<Self, MemoryError> {
        let rows = match embedder {
            Some(e) => Some(db.chunk_vectors(&e.name(), e.dims())?),
            None => None,
        };
        let mut me = CodeIndex {
            db,
            embedder,
            rows,
            ivf: None,
            exact_below: 20_000,
            nprobe: 24,
        };
        if let Some(r) = &me.rows
            && approximate
            && r.vectors.len() >= me.exact_below
        {
            let nlist = (r.vectors.len() as f64).sqrt() as usize;
            let mut ivf = Ivf::build(&r.vectors, nlist, 8);
            // Lay the rows out list by list, so a query reads memory sequentially.
            let order = ivf.order();
            let dims = r.vectors.dims;
            let mut rows = VectorRows {
                vectors: crate::ann::Vectors {
                    dims,
                    ids: Vec::with_capacity(order.len()),
                    data: Vec::with_capacity(order.len() * dims),
                },
                workspace: Vec::with_capacity(order.len()),
                path: Vec::with_capacity(order.len()),
            };
            for &i in &order {
                let i = i as usize;
                rows.vectors.ids.push(r.vectors.ids[i]);
                rows.vectors.data.extend_from_slice(r.vectors.get(i));
                rows.workspace.push(r.workspace[i].clone());
                rows.path.push(r.path[i].clone());
            }
            ivf.contiguous();
            me.rows = Some(rows);
            me.ivf = Some(ivf);
            me.nprobe = me.nprobe.max(nlist * 2 / 5);
        }
        Ok(me)
    }

    /// Vectors loaded.
    pub fn vectors(&self) -> usize {
        self.rows.as_ref().map_or(0, |r| r.vectors.len())
    }

    /// Whether the approximate index is in use.
    pub fn approximate(&self) -> bool {
        self.ivf.is_some()
    }

    /// Top `k` by vectors only (`exact` forces exhaustive scoring): (row index, cosine).
    pub fn vector_top(
        &self,
        q: &[f32],
        k: usize,
        filter: &Filter,
        exact: bool,
    ) -> Vec<(usize, f32)> {
        let Some(rows) = &self.rows else {
            return Vec::new();
        };
        let keep = |i: usize| {
            filter
                .workspace
                .as_ref()
                .is_none_or(|w| rows.workspace[i] == *w)
                && filter
                    .path_prefix
                    .as_ref()
                    .is_none_or(|p| rows.path[i].starts_with(p.as_str()))
        };
        match (&self.ivf, exact) {
            (Some(ivf), false) => ivf.search(&rows.vectors, q, k, self.nprobe, &keep),
            _ => rows.vectors.exact(q, k, &keep),
        }
    }

    /// Hybrid search.
    pub fn search(
        &self,
        query: &str,
        k: usize,
        filter: &Filter,
        fusion: Fusion,
    ) -> Result<Results, MemoryError> {
        let pool = (k * 5).max(50);
        let text = self.text_top(query, pool, filter)?;
        let (vector, mode) = match (self.embedder, &self.rows) {
            (Some(e), Some(rows)) => {
                let qv = e.embed(&[query])?.pop().unwrap_or_default();
                let top = self.vector_top(&qv, pool, filter, false);
                (
                    top.into_iter()
                        .map(|(i, s)| (rows.vectors.ids[i], s))
                        .collect::<Vec<_>>(),
                    "hybrid".to_owned(),
                )
            }
            _ => (
                Vec::new(),
                "full-text only (no embedder configured)".to_owned(),
            ),
        };
        let fused = fuse(&vector, &text, fusion, self.embedder.is_some());
        let vmap: HashMap<i64, f32> = vector.into_iter().collect();
        let tmap: HashMap<i64, f32> = text.into_iter().collect();
        let mut hits = Vec::new();
        let c = self.db.lock();
        let mut st = c
            .prepare_cached(
                "SELECT workspace, path, start_line, end_line, text FROM chunks WHERE id = ?1",
            )
            .map_err(db)?;
        for (id, score) in fused.into_iter().take(k) {
            let (workspace, path, start_line, end_line, text): (String, String, i64, i64, String) =
                st.query_row([id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(db)?;
            hits.push(Hit {
                id,
                workspace,
                path,
                start_line,
                end_line,
                text,
                score,
                vector_score: vmap.get(&id).copied(),
                text_score: tmap.get(&id).copied(),
            });
        }
        Ok(Results { hits, mode })
    }

    /// BM25 top `k` (id, score where higher is better), filtered in the same statement.
    fn text_top(
        &self,
        query: &str,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(i64, f32)>, MemoryError> {
        // All words first (precise, and cheap to rank); any word when that finds too little.
        if let Some(q) = fts_all(query) {
            let all = self.text_ranked(&q, k, filter)?;
            if all.len() >= k.min(10) {
                return Ok(all);
            }
        }
        match fts_query(query) {
            Some(q) => self.text_ranked(&q, k, filter),
            None => Ok(Vec::new()),
        }
    }

    /// BM25 top `k` for an FTS5 query, filtered.
    fn text_ranked(
        &self,
        q: &str,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(i64, f32)>, MemoryError> {
        let c = self.db.lock();
        // Fast path: FTS5 ranks on its own (`ORDER BY rank`) and the filter is checked on a
        // generous top; the fully filtered statement runs only when that leaves too few.
        let wide = (k * 8) as i64;
        let rows: Vec<(i64, f32, String, String)> = {
            let mut st = c
                .prepare_cached(
                    "SELECT c.id, r.rank, c.workspace, c.path FROM \
                     (SELECT rowid, rank FROM chunks_fts WHERE chunks_fts MATCH ?1 ORDER BY rank LIMIT ?2) r \
                     JOIN chunks c ON c.id = r.rowid ORDER BY r.rank",
                )
                .map_err(db)?;
            st.query_map(params![q, wide], |r| {
                Ok((
                    r.get(0)?,
                    -(r.get::<_, f64>(1)? as f32),
                    r.get(2)?,
                    r.get(3)?,
                ))
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
        };
        let exhausted = (rows.len() as i64) < wide;
        let kept: Vec<(i64, f32)> = rows
            .into_iter()
            .filter(|(_, _, w, p)| {
                filter.workspace.as_ref().is_none_or(|x| x == w)
                    && filter
                        .path_prefix
                        .as_ref()
                        .is_none_or(|x| p.starts_with(x.as_str()))
            })
            .map(|(id, s, _, _)| (id, s))
            .take(k)
            .collect();
        if kept.len() >= k || exhausted {
            return Ok(kept);
        }
        let mut st = c
            .prepare_cached(
                "SELECT c.id, bm25(chunks_fts) FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid \
                 WHERE chunks_fts MATCH ?1 AND (?2 IS NULL OR c.workspace = ?2) \
                 AND (?3 IS NULL OR substr(c.path, 1, length(?3)) = ?3) ORDER BY 2 LIMIT ?4",
            )
            .map_err(db)?;
        let rows = st
            .query_map(
                params![q, filter.workspace, filter.path_prefix, k as i64],
                |r| Ok((r.get::<_, i64>(0)?, -(r.get::<_, f64>(1)? as f32))),
            )
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }
}

fn minmax(v: &[(i64, f32)]) -> HashMap<i64, f32> {
    let lo = v.iter().map(|x| x.1).fold(f32::INFINITY, f32::min);
    let hi = v.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    v.iter()
        .map(|(id, s)| (*id, if hi > lo { (s - lo) / (hi - lo) } else { 1.0 }))
        .collect()
}

/// Combine two rankings (id, score; best first) into one.
pub fn fuse(
    vector: &[(i64, f32)],
    text: &[(i64, f32)],
    fusion: Fusion,
    have_vectors: bool,
) -> Vec<(i64, f32)> {
    let mut total: HashMap<i64, f32> = HashMap::new();
    match fusion {
        Fusion::Weighted {
            vector: wv,
            text: wt,
        } => {
            let wt = if have_vectors { wt } else { 1.0 };
            for (id, s) in minmax(vector) {
                *total.entry(id).or_default() += wv * s;
            }
            for (id, s) in minmax(text) {
                *total.entry(id).or_default() += wt * s;
            }
        }
        Fusion::Rrf { k } => {
            for list in [vector, text] {
                for (rank, (id, _)) in list.iter().enumerate() {
                    *total.entry(*id).or_default() += 1.0 / (k + rank as f32 + 1.0);
                }
            }
        }
    }
    let mut out: Vec<(i64, f32)> = total.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Search notes of the given kinds (agent and workspace filters applied first).
pub fn search_notes(
    mem: &MemoryDb,
    embedder: Option<&dyn Embedder>,
    kinds: &[&str],
    agent: Option<&str>,
    workspace: Option<&str>,
    query: &str,
    k: usize,
) -> Result<Vec<Note>, MemoryError> {
    let in_kinds = |kind: &str| kinds.contains(&kind);
    let text: Vec<(i64, f32)> = match fts_query(query) {
        None => Vec::new(),
        Some(q) => {
            let c = mem.lock();
            let mut st = c
                .prepare_cached(
                    "SELECT n.id, bm25(notes_fts), n.kind FROM notes_fts JOIN notes n ON n.id = notes_fts.rowid \
                     WHERE notes_fts MATCH ?1 AND (?2 IS NULL OR n.agent = ?2) AND (?3 IS NULL OR n.workspace = ?3) \
                     ORDER BY 2 LIMIT 200",
                )
                .map_err(db)?;
            let rows = st
                .query_map(params![q, agent, workspace], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        -(r.get::<_, f64>(1)? as f32),
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(db)?;
            rows.filter_map(Result::ok)
                .filter(|(_, _, kind)| in_kinds(kind))
                .map(|(id, s, _)| (id, s))
                .collect()
        }
    };
    let vector: Vec<(i64, f32)> = match embedder {
        None => Vec::new(),
        Some(e) => {
            let rows = mem.note_vectors(&e.name(), e.dims())?;
            let qv = e.embed(&[query])?.pop().unwrap_or_default();
            let keep = |i: usize| {
                let (kind, a) = rows.path[i].split_once('/').unwrap_or(("", ""));
                in_kinds(kind)
                    && agent.is_none_or(|x| x == a)
                    && workspace.is_none_or(|w| rows.workspace[i] == w)
            };
            rows.vectors
                .exact(&qv, 50, &keep)
                .into_iter()
                .map(|(i, s)| (rows.vectors.ids[i], s))
                .collect()
        }
    };
    let fused = fuse(&vector, &text, Fusion::default(), embedder.is_some());
    let ids: Vec<i64> = fused.into_iter().take(k).map(|x| x.0).collect();
    mem.notes(&ids)
}
