//! The memory database (one SQLite file, WAL): code chunks with their vectors and a full-text
//! index (FTS5, BM25), and notes — agent notes, reflections, episodes — likewise.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::ann::Vectors;
use crate::search::{Filter, NoteFilter};

/// Memory failures.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// SQLite failed.
    #[error("memory database: {0}")]
    Db(String),
    /// Reading the project failed.
    #[error("{0}")]
    Io(String),
    /// The embedder failed.
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
}

pub(crate) fn db(e: rusqlite::Error) -> MemoryError {
    MemoryError::Db(e.to_string())
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS files (
    workspace TEXT NOT NULL,
    path TEXT NOT NULL,
    hash TEXT NOT NULL,
    embedder TEXT NOT NULL,
    PRIMARY KEY (workspace, path)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    workspace TEXT NOT NULL,
    path TEXT NOT NULL,
    start_line INTEGER NOT NULL,
    end_line INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    embedder TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks (workspace, path);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, content='chunks', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    agent TEXT,
    workspace TEXT,
    task TEXT,
    text TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    embedder TEXT NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS notes_scope ON notes (kind, agent, workspace);
CREATE VIRTUAL TABLE IF NOT EXISTS notes_fts USING fts5(text, content='notes', content_rowid='id');
CREATE TRIGGER IF NOT EXISTS notes_ai AFTER INSERT ON notes BEGIN
    INSERT INTO notes_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS notes_ad AFTER DELETE ON notes BEGIN
    INSERT INTO notes_fts (notes_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"#;

/// The memory database.
pub struct MemoryDb {
    conn: Mutex<Connection>,
}

/// Vector bytes (little-endian f32).
pub(crate) fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn from_blob(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// One stored note (an agent's note, a reflection or an episode).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Note {
    /// Id.
    pub id: i64,
    /// `note`, `reflection` or `episode`.
    pub kind: String,
    /// Agent.
    pub agent: Option<String>,
    /// Workspace.
    pub workspace: Option<String>,
    /// Task.
    pub task: Option<String>,
    /// Text.
    pub text: String,
    /// Unix ms.
    pub created_ms: i64,
}

/// A note to store.
#[derive(Clone, Debug, Default)]
pub struct NewNote<'a> {
    /// `note`, `reflection` or `episode`.
    pub kind: &'a str,
    /// Agent.
    pub agent: Option<&'a str>,
    /// Workspace.
    pub workspace: Option<&'a str>,
    /// Task.
    pub task: Option<&'a str>,
    /// Text.
    pub text: &'a str,
    /// Name of the embedder of `vector` (`none` without).
    pub embedder: &'a str,
    /// Its vector.
    pub vector: Option<&'a [f32]>,
}

/// Rows of a table's vectors, with what filters need.
pub struct VectorRows {
    /// The vectors.
    pub vectors: Vectors,
    /// Workspace of each row.
    pub workspace: Vec<String>,
    /// Path of each row (chunks) or agent (notes).
    pub path: Vec<String>,
}

impl MemoryDb {
    /// Open (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, MemoryError> {
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .map_err(db)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        Ok(MemoryDb {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Store a note; returns its id.
    pub fn add_note(&self, n: &NewNote<'_>) -> Result<i64, MemoryError> {
        let c = self.lock();
        c.execute(
            "INSERT INTO notes (kind, agent, workspace, task, text, created_ms, embedder, vector) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                n.kind,
                n.agent,
                n.workspace,
                n.task,
                n.text,
                now_ms(),
                n.embedder,
                n.vector.map(to_blob)
            ],
        )
        .map_err(db)?;
        Ok(c.last_insert_rowid())
    }

    /// Notes by id, in the given order.
    pub fn notes(&self, ids: &[i64]) -> Result<Vec<Note>, MemoryError> {
        let c = self.lock();
        let mut st = c
            .prepare_cached("SELECT id, kind, agent, workspace, task, text, created_ms FROM notes WHERE id = ?1")
            .map_err(db)?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(n) = st
                .query_row([id], |r| {
                    Ok(Note {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        agent: r.get(2)?,
                        workspace: r.get(3)?,
                        task: r.get(4)?,
                        text: r.get(5)?,
                        created_ms: r.get(6)?,
                    })
                })
                .optional()
                .map_err(db)?
            {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Chunk vectors made by `embedder`, only those `filter` keeps (selected in SQL: rows
    /// outside the filter are never read).
    pub fn chunk_vectors(
        &self,
        embedder: &str,
        dims: usize,
        filter: &Filter,
    ) -> Result<VectorRows, MemoryError> {
        self.vectors(
            "SELECT id, workspace, path, vector FROM chunks WHERE embedder = ?1 AND vector IS NOT NULL \
             AND (?2 IS NULL OR workspace = ?2) AND (?3 IS NULL OR substr(path, 1, length(?3)) = ?3) \
             AND (?4 IS NULL OR path IN (SELECT value FROM json_each(?4))) ORDER BY id",
            params![embedder, filter.workspace, filter.path_prefix, filter.paths_json()],
            dims,
        )
    }

    /// Note vectors made by `embedder` that `filter` keeps (path column: `kind/agent`).
    pub fn note_vectors(
        &self,
        embedder: &str,
        dims: usize,
        filter: &NoteFilter<'_>,
    ) -> Result<VectorRows, MemoryError> {
        self.vectors(
            "SELECT id, coalesce(workspace, ''), kind || '/' || coalesce(agent, ''), vector FROM notes \
             WHERE embedder = ?1 AND vector IS NOT NULL AND instr(?2, ',' || kind || ',') > 0 \
             AND (?3 IS NULL OR agent = ?3) AND (?4 IS NULL OR workspace = ?4) AND (?5 IS NULL OR task = ?5) ORDER BY id",
            params![embedder, filter.kinds_csv(), filter.agent, filter.workspace, filter.task],
            dims,
        )
    }

    fn vectors(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        dims: usize,
    ) -> Result<VectorRows, MemoryError> {
        let c = self.lock();
        let mut st = c.prepare_cached(sql).map_err(db)?;
        let mut rows = st.query(args).map_err(db)?;
        let mut out = VectorRows {
            vectors: Vectors {
                dims,
                ..Vectors::default()
            },
            workspace: Vec::new(),
            path: Vec::new(),
        };
        while let Some(r) = rows.next().map_err(db)? {
            let blob: Vec<u8> = r.get(3).map_err(db)?;
            let v = from_blob(&blob);
            if v.len() != dims {
                continue;
            }
            out.vectors.ids.push(r.get(0).map_err(db)?);
            out.workspace.push(r.get(1).map_err(db)?);
            out.path.push(r.get(2).map_err(db)?);
            out.vectors.data.extend(v);
        }
        Ok(out)
    }

    /// The paths of `workspace`'s indexed files, sorted.
    pub fn indexed_paths(&self, workspace: &str) -> Result<Vec<String>, MemoryError> {
        let c = self.lock();
        let mut st = c
            .prepare_cached("SELECT path FROM files WHERE workspace = ?1 ORDER BY path")
            .map_err(db)?;
        let rows = st.query_map([workspace], |r| r.get(0)).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// One chunk's path and text.
    pub fn chunk_text(&self, id: i64) -> Result<Option<(String, String)>, MemoryError> {
        self.lock()
            .query_row("SELECT path, text FROM chunks WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(db)
    }

    /// Number of chunks (of one workspace, or all).
    pub fn chunk_count(&self, workspace: Option<&str>) -> Result<u64, MemoryError> {
        self.lock()
            .query_row(
                "SELECT count(*) FROM chunks WHERE ?1 IS NULL OR workspace = ?1",
                [workspace],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(db)
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
