//! `warren index`, `warren memory search`, `warren history`: the code index and the record of
//! past tasks.
//!
//! The embedder comes from `--embedder` or `WARREN_EMBEDDER`: `none` (the default: full-text
//! only), `openai` (any OpenAI-compatible `/embeddings`: `WARREN_EMBEDDINGS_URL` or
//! `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `WARREN_EMBEDDINGS_MODEL`, `WARREN_EMBEDDINGS_DIMS`),
//! `local` (all-MiniLM-L6-v2 from `WARREN_MINILM_DIR`; needs the `local-embedder` build
//! feature), or `hash` (lexical feature hashing; for tests).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::json;
use warren_memory::embed::from_env as embedder;
use warren_memory::search::{Filter, Fusion};
use warren_memory::{CodeIndex, MemoryDb};
use warren_store::{Store, TaskFilter};

/// `warren memory …`.
#[derive(Subcommand, Debug)]
pub enum MemoryCommand {
    /// Ranked chunks of the index for a query, with file and lines.
    Search {
        /// What to look for (words, identifiers, a description).
        query: String,
        /// Only this workspace (default: the current directory's).
        #[arg(long, value_name = "DIR")]
        workspace: Option<PathBuf>,
        /// Only paths starting with this.
        #[arg(long, value_name = "PREFIX")]
        path: Option<String>,
        /// How many.
        #[arg(short = 'k', long, default_value_t = 10)]
        limit: usize,
        /// Reciprocal rank fusion instead of weighted scores.
        #[arg(long)]
        rrf: bool,
        /// Embedder (see `warren index --help`).
        #[arg(long)]
        embedder: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn open(state: &Path) -> Result<MemoryDb, String> {
    std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
    MemoryDb::open(&state.join("memory.db")).map_err(|e| e.to_string())
}

/// `warren index [DIR]`.
pub fn index(dir: Option<PathBuf>, embedder_choice: Option<&str>, json: bool, state: &Path) -> i32 {
    let run = || -> Result<warren_memory::index::Report, String> {
        let mem = open(state)?;
        let e = embedder(embedder_choice)?;
        let root = dir.unwrap_or_else(|| PathBuf::from("."));
        let tty = !json && std::io::stderr().is_terminal();
        let mut last = std::time::Instant::now();
        let mut bar = |p: warren_memory::index::Progress| {
            if tty && (last.elapsed().as_millis() > 100 || p.done == p.total) {
                last = std::time::Instant::now();
                let width = 30;
                let filled = (p.done * width / p.total.max(1)) as usize;
                eprint!(
                    "\r[{}{}] {}/{} files",
                    "#".repeat(filled),
                    " ".repeat(width as usize - filled),
                    p.done,
                    p.total
                );
                let _ = std::io::stderr().flush();
            }
        };
        let r = warren_memory::index::index(&mem, &root, e.as_deref(), &mut bar)
            .map_err(|e| e.to_string())?;
        if tty {
            eprintln!();
        }
        Ok(r)
    };
    match run() {
        Ok(r) if json => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            0
        }
        Ok(r) => {
            let secs = r.elapsed.as_secs_f64().max(1e-9);
            eprintln!(
                "warren: indexed {} files ({} unchanged, {} removed, {} binary and {} huge skipped): {} chunks, {} lines, {:.1} MB in {:.2}s ({:.0} files/s, {:.1} MB/s); embedder: {}",
                r.files_indexed,
                r.files_unchanged,
                r.files_removed,
                r.skipped_binary,
                r.skipped_large,
                r.chunks,
                r.lines,
                r.bytes as f64 / 1e6,
                secs,
                r.files_indexed as f64 / secs,
                r.bytes as f64 / 1e6 / secs,
                if r.embedder == "none" {
                    "none (retrieval will be full-text only)"
                } else {
                    &r.embedder
                }
            );
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}

/// `warren memory …`.
pub fn run(cmd: MemoryCommand, state: &Path) -> i32 {
    let MemoryCommand::Search {
        query,
        workspace,
        path,
        limit,
        rrf,
        embedder: choice,
        json,
    } = cmd;
    let go = || -> Result<warren_memory::Results, String> {
        let mem = open(state)?;
        let e = embedder(choice.as_deref())?;
        let ws = workspace.unwrap_or_else(|| PathBuf::from("."));
        let ws = std::fs::canonicalize(&ws).map_err(|e| format!("{}: {e}", ws.display()))?;
        let filter = Filter {
            workspace: Some(ws.display().to_string()),
            path_prefix: path.clone(),
            ..Filter::default()
        };
        // One query: only this workspace's vectors, scored exactly (building the approximate
        // index would cost more).
        let ix = CodeIndex::scoped(&mem, e.as_deref(), &filter).map_err(|e| e.to_string())?;
        let fusion = if rrf {
            Fusion::Rrf { k: 60.0 }
        } else {
            Fusion::default()
        };
        ix.search(&query, limit, &filter, fusion)
            .map_err(|e| e.to_string())
    };
    match go() {
        Ok(r) if json => {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            0
        }
        Ok(r) => {
            eprintln!("warren: {} result(s), {}", r.hits.len(), r.mode);
            for h in &r.hits {
                println!(
                    "{}:{}-{}  score {:.3}",
                    h.path, h.start_line, h.end_line, h.score
                );
                for l in h.text.lines().take(4) {
                    println!("    {l}");
                }
            }
            0
        }
        Err(e) => {
            eprintln!("warren: {e}");
            1
        }
    }
}

/// `warren history`: past tasks, newest first, with outcome and what they ran.
pub fn history(state: &Path, limit: u32, json: bool) -> i32 {
    let db = state.join("warren.db");
    if !db.exists() {
        eprintln!("warren: no tasks yet");
        return 0;
    }
    let store = match warren_store::sqlite::SqliteStore::open(&db) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warren: {e}");
            return 1;
        }
    };
    let tasks = match store.list_tasks(&TaskFilter {
        limit: Some(limit),
        ..TaskFilter::default()
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warren: {e}");
            return 1;
        }
    };
    let mut out = Vec::new();
    for t in tasks {
        let steps = store.checkpoints(&t.id).unwrap_or_default();
        let commands = warren_runtime::memory_tools::tool_calls(&steps);
        let result = store
            .get_artifact(&t.id, "result")
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        out.push(json!({
            "id": t.id, "agent": t.agent, "goal": t.goal, "state": t.state.as_str(),
            "reason": t.reason, "workspace": t.workspace, "created_ms": t.created_ms,
            "steps": steps.len(), "tool_calls": commands,
            "summary": result.as_ref().and_then(|r| r["summary"].as_str()).map(str::to_owned),
        }));
    }
    if json {
        println!("{}", serde_json::Value::Array(out));
        return 0;
    }
    for t in &out {
        println!(
            "{}  {:<10} {:<10} {}",
            t["id"].as_str().unwrap_or(""),
            t["state"].as_str().unwrap_or(""),
            t["agent"].as_str().unwrap_or(""),
            t["goal"].as_str().unwrap_or("")
        );
        for c in t["tool_calls"].as_array().into_iter().flatten().take(8) {
            println!(
                "    → {}",
                c.as_str()
                    .unwrap_or("")
                    .chars()
                    .take(100)
                    .collect::<String>()
            );
        }
        if let Some(s) = t["summary"].as_str() {
            println!("    = {s}");
        }
    }
    0
}
