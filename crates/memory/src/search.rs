//! Hybrid retrieval: vector similarity and BM25 full text, fused.
//!
//! Both sides apply the filter (workspace, path prefix and a list of the paths the asking task
//! may read for code; kind, agent, workspace, task for notes) *before* ranking, never to a
//! ranked list afterwards:
//!
//! - full text: in the same SQL statement as the match (or, equivalently and faster, on
//!   FTS5's own rank order, read until k kept rows are found);
//! - vectors, one-off queries ([`CodeIndex::scoped`], notes): only the filter's rows are read
//!   from SQLite and scored;
//! - vectors, a long-lived index ([`CodeIndex::new`]): exact below 20 000 vectors; above, IVF,
//!   with the filter's size looked up first — a narrow filter is scored exactly over its own
//!   rows, a wide one inside the probed lists (see [`CodeIndex::vector_top`]).
//!
//! Fusion is weighted (min-max normalized scores, default 0.7 vector / 0.3 text) or
//! reciprocal rank fusion. Without an embedder, retrieval is full-text only, and says so.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rusqlite::params;

use crate::ann::{Ivf, Quantized};
use crate::db::{MemoryDb, MemoryError, Note, VectorRows, db};
use crate::embed::{Embedder, words};

/// What to search.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this workspace (canonical path).
    pub workspace: Option<String>,
    /// Only paths starting with this (relative to the workspace).
    pub path_prefix: Option<String>,
    /// Only these paths (relative to the workspace): what the asking task may read. Applied
    /// like the others, in SQL and before either ranking.
    pub paths: Option<Arc<BTreeSet<String>>>,
}

impl Filter {
    /// Whether it keeps everything.
    pub fn is_empty(&self) -> bool {
        self.workspace.is_none() && self.path_prefix.is_none() && self.paths.is_none()
    }

    /// Whether a chunk of `workspace` at `path` is kept.
    pub fn keeps(&self, workspace: &str, path: &str) -> bool {
        self.workspace.as_deref().is_none_or(|w| w == workspace)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.paths.as_ref().is_none_or(|ps| ps.contains(path))
    }

    /// [`Filter::paths`] as one SQL parameter: a JSON array (`path IN (SELECT value FROM
    /// json_each(?))`), or NULL for no such restriction.
    pub(crate) fn paths_json(&self) -> Option<String> {
        self.paths
            .as_ref()
            .map(|ps| serde_json::Value::from(ps.iter().cloned().collect::<Vec<_>>()).to_string())
    }
}

/// Which notes to search: every field set narrows (applied in SQL, before either ranking).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoteFilter<'a> {
    /// Kinds (`note`, `reflection`, `episode`); empty keeps none.
    pub kinds: &'a [&'a str],
    /// Only this agent's.
    pub agent: Option<&'a str>,
    /// Only this workspace's.
    pub workspace: Option<&'a str>,
    /// Only this task's.
    pub task: Option<&'a str>,
}

impl NoteFilter<'_> {
    /// The kinds as `,a,b,` (one SQL parameter, matched with `instr`).
    pub(crate) fn kinds_csv(&self) -> String {
        format!(",{},", self.kinds.join(","))
    }
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
///
/// Three ways to open one: [`CodeIndex::new`] loads every vector and builds the IVF index when
/// there are many (a long-lived index: the daemon, the benchmark); [`CodeIndex::scoped`] loads
/// only the vectors a filter keeps and scores them exactly (a one-off query: `warren memory
/// search`, the `code_search` tool); [`CodeIndex::with_threshold`] is `new` with another size
/// at which IVF takes over.
pub struct CodeIndex<'a> {
    db: &'a MemoryDb,
    embedder: Option<&'a dyn Embedder>,
    rows: Option<VectorRows>,
    ivf: Option<Ivf>,
    /// int8 copies of the vectors, for the IVF scan.
    codes: Option<Quantized>,
    keys: Option<KeyIndex>,
    /// IVF lists scored per query.
    pub nprobe: usize,
}

/// Row positions sorted by (workspace, path): the rows a filter keeps are a few ranges of
/// it, found by binary search, so a filter's size is known before any vector is scored.
struct KeyIndex {
    by_key: Vec<u32>,
    /// Each workspace and its range of `by_key`.
    workspaces: Vec<(String, std::ops::Range<usize>)>,
}

impl KeyIndex {
    fn build(rows: &VectorRows) -> KeyIndex {
        let mut by_key: Vec<u32> = (0..rows.vectors.len() as u32).collect();
        by_key.sort_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            (&rows.workspace[a], &rows.path[a]).cmp(&(&rows.workspace[b], &rows.path[b]))
        });
        let mut workspaces: Vec<(String, std::ops::Range<usize>)> = Vec::new();
        for (pos, &i) in by_key.iter().enumerate() {
            let w = &rows.workspace[i as usize];
            match workspaces.last_mut() {
                Some((last, r)) if last == w => r.end = pos + 1,
                _ => workspaces.push((w.clone(), pos..pos + 1)),
            }
        }
        KeyIndex { by_key, workspaces }
    }

    /// The ranges of `by_key` whose rows `filter` keeps.
    fn ranges(&self, rows: &VectorRows, filter: &Filter) -> Vec<std::ops::Range<usize>> {
        self.workspaces
            .iter()
            .filter(|(w, _)| filter.workspace.as_ref().is_none_or(|x| x == w))
            .filter_map(|(_, r)| {
                let Some(p) = filter.path_prefix.as_deref() else {
                    return Some(r.clone());
                };
                // Paths starting with `p` are contiguous in sorted order, right after those
                // below `p`.
                let slice = &self.by_key[r.clone()];
                let path = |i: &u32| rows.path[*i as usize].as_str();
                let lo = slice.partition_point(|i| path(i) < p);
                let hi = slice.partition_point(|i| path(i) < p || path(i).starts_with(p));
                (hi > lo).then(|| r.start + lo..r.start + hi)
            })
            .collect()
    }
}

impl<'a> CodeIndex<'a> {
    /// Load every vector `embedder` made (none without an embedder); build IVF when there are
    /// 20 000 or more (worth it for a long-lived index; see [`CodeIndex::scoped`] for one-off
    /// queries).
    pub fn new(db: &'a MemoryDb, embedder: Option<&'a dyn Embedder>) -> Result<Self, MemoryError> {
        Self::with_threshold(db, embedder, 20_000)
    }

    /// Like [`CodeIndex::new`], with IVF from `exact_below` vectors on.
    pub fn with_threshold(
        db: &'a MemoryDb,
        embedder: Option<&'a dyn Embedder>,
        exact_below: usize,
    ) -> Result<Self, MemoryError> {
        Self::load(db, embedder, &Filter::default(), Some(exact_below))
    }

    /// Load only the vectors `filter` keeps (selected in SQL) and score them exactly: no index
    /// to build, which for a one-off query costs more than scoring every vector once.
    pub fn scoped(
        db: &'a MemoryDb,
        embedder: Option<&'a dyn Embedder>,
        filter: &Filter,
    ) -> Result<Self, MemoryError> {
        Self::load(db, embedder, filter, None)
    }

    fn load(
        db: &'a MemoryDb,
        embedder: Option<&'a dyn Embedder>,
        filter: &Filter,
        exact_below: Option<usize>,
    ) -> Result<Self, MemoryError> {
        let rows = match embedder {
            Some(e) => Some(db.chunk_vectors(&e.name(), e.dims(), filter)?),
            None => None,
        };
        let mut me = CodeIndex {
            db,
            embedder,
            rows,
            ivf: None,
            codes: None,
            keys: None,
            nprobe: 24,
        };
        if let (Some(r), Some(exact_below)) = (&me.rows, exact_below)
            && r.vectors.len() >= exact_below
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
            me.keys = Some(KeyIndex::build(&rows));
            me.codes = Some(Quantized::new(&rows.vectors));
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
    ///
    /// With the IVF index and a filter, the filter's size is looked up first (binary search
    /// over the rows sorted by workspace and path). A filter that keeps no more rows than IVF
    /// would score anyway is answered exactly over just its rows: no recall lost to lists
    /// not probed. A wider filter is applied inside the probed lists, and if they hold fewer
    /// than `k` of its rows, the filter's rows are scored exactly instead.
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
        let keep = |i: usize| filter.keeps(&rows.workspace[i], &rows.path[i]);
        let (Some(ivf), Some(codes), Some(keys), false) =
            (&self.ivf, &self.codes, &self.keys, exact)
        else {
            return rows.vectors.exact(q, k, &keep);
        };
        let approximate = || ivf.search_quantized(&rows.vectors, codes, q, k, self.nprobe, &keep);
        if filter.is_empty() {
            return approximate();
        }
        let ranges = keys.ranges(rows, filter);
        let kept: usize = ranges.iter().map(|r| r.len()).sum();
        // The ranges narrow by workspace and prefix; a path list is checked row by row.
        let subset = || {
            rows.vectors.exact_in(
                q,
                k,
                ranges
                    .iter()
                    .flat_map(|r| keys.by_key[r.clone()].iter().map(|&i| i as usize))
                    .filter(|&i| keep(i)),
            )
        };
        let probed = rows.vectors.len() * self.nprobe / ivf.nlist().max(1);
        if kept <= probed {
            return subset();
        }
        let top = approximate();
        if top.len() < k.min(kept) {
            return subset();
        }
        top
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
        // The two sides are independent: the vector side (embed the query, scan) runs on a
        // second thread while SQLite ranks the text.
        let vector_side =
            |e: &dyn Embedder, rows: &VectorRows| -> Result<Vec<(i64, f32)>, MemoryError> {
                let qv = e.embed(&[query])?.pop().unwrap_or_default();
                Ok(self
                    .vector_top(&qv, pool, filter, false)
                    .into_iter()
                    .map(|(i, s)| (rows.vectors.ids[i], s))
                    .collect())
            };
        let (text, vector, mode) = match (self.embedder, &self.rows) {
            (Some(e), Some(rows)) => {
                let (text, vector) = std::thread::scope(|s| {
                    let v = s.spawn(|| vector_side(e, rows));
                    let t = self.text_top(query, pool, filter);
                    (t, v.join())
                });
                let vector =
                    vector.map_err(|_| MemoryError::Io("vector search panicked".into()))??;
                (text?, vector, "hybrid".to_owned())
            }
            _ => (
                self.text_top(query, pool, filter)?,
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
        // Fast path: FTS5 ranks on its own, and the filter is checked on a generous top, row by
        // row in rank order until k are kept; the fully filtered statement runs only when that
        // leaves too few. (`bm25()` spelled out: `ORDER BY rank` costs twice as much here.)
        let wide = if filter.is_empty() { k } else { k * 8 } as i64;
        let ranked: Vec<(i64, f32)> = {
            let mut st = c
                .prepare_cached(
                    "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ?1 \
                     ORDER BY 2, 1 LIMIT ?2",
                )
                .map_err(db)?;
            st.query_map(params![q, wide], |r| {
                Ok((r.get(0)?, -(r.get::<_, f64>(1)? as f32)))
            })
            .map_err(db)?
            .collect::<Result<_, _>>()
            .map_err(db)?
        };
        let exhausted = (ranked.len() as i64) < wide;
        if filter.is_empty() {
            return Ok(ranked);
        }
        let mut kept = Vec::with_capacity(k);
        {
            let mut st = c
                .prepare_cached("SELECT workspace, path FROM chunks WHERE id = ?1")
                .map_err(db)?;
            for (id, score) in ranked {
                let (w, p): (String, String) = st
                    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(db)?;
                if filter.keeps(&w, &p) {
                    kept.push((id, score));
                    if kept.len() == k {
                        break;
                    }
                }
            }
        }
        if kept.len() >= k || exhausted {
            return Ok(kept);
        }
        let mut st = c
            .prepare_cached(
                "SELECT c.id, bm25(chunks_fts) FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid \
                 WHERE chunks_fts MATCH ?1 AND (?2 IS NULL OR c.workspace = ?2) \
                 AND (?3 IS NULL OR substr(c.path, 1, length(?3)) = ?3) \
                 AND (?5 IS NULL OR c.path IN (SELECT value FROM json_each(?5))) ORDER BY 2, 1 LIMIT ?4",
            )
            .map_err(db)?;
        let rows = st
            .query_map(
                params![
                    q,
                    filter.workspace,
                    filter.path_prefix,
                    k as i64,
                    filter.paths_json()
                ],
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

/// Search notes (every field of `filter` applied in SQL, before either ranking).
pub fn search_notes(
    mem: &MemoryDb,
    embedder: Option<&dyn Embedder>,
    filter: &NoteFilter<'_>,
    query: &str,
    k: usize,
) -> Result<Vec<Note>, MemoryError> {
    let pool = (k * 5).max(50) as i64;
    let text: Vec<(i64, f32)> = match fts_query(query) {
        None => Vec::new(),
        Some(q) => {
            let c = mem.lock();
            let mut st = c
                .prepare_cached(
                    "SELECT n.id, bm25(notes_fts) FROM notes_fts JOIN notes n ON n.id = notes_fts.rowid \
                     WHERE notes_fts MATCH ?1 AND instr(?2, ',' || n.kind || ',') > 0 AND (?3 IS NULL OR n.agent = ?3) \
                     AND (?4 IS NULL OR n.workspace = ?4) AND (?5 IS NULL OR n.task = ?5) ORDER BY 2 LIMIT ?6",
                )
                .map_err(db)?;
            let rows = st
                .query_map(
                    params![
                        q,
                        filter.kinds_csv(),
                        filter.agent,
                        filter.workspace,
                        filter.task,
                        pool
                    ],
                    |r| Ok((r.get::<_, i64>(0)?, -(r.get::<_, f64>(1)? as f32))),
                )
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)?
        }
    };
    let vector: Vec<(i64, f32)> = match embedder {
        None => Vec::new(),
        Some(e) => {
            let rows = mem.note_vectors(&e.name(), e.dims(), filter)?;
            let qv = e.embed(&[query])?.pop().unwrap_or_default();
            rows.vectors
                .exact(&qv, pool as usize, &|_| true)
                .into_iter()
                .map(|(i, s)| (rows.vectors.ids[i], s))
                .collect()
        }
    };
    let fused = fuse(&vector, &text, Fusion::default(), embedder.is_some());
    let ids: Vec<i64> = fused.into_iter().take(k).map(|x| x.0).collect();
    mem.notes(&ids)
}
