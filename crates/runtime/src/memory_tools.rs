//! Memory for tasks whose manifest lists a memory tool: the tools themselves (run on the host,
//! not in the cell), the workspace index kept current at task start, reflections offered to
//! the next task on the same workspace, and an episode and a reflection stored when a task ends.
//!
//! `code_search` answers from an index the host built over the whole workspace, so it is
//! scoped, before ranking, to the files the task could read itself: those its effective read
//! capability (path globs) allows and its cell's host identity could read on the host now
//! (`warren_memory::access`).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use warren_agent::tools::HostTools;
use warren_llm::ToolSpec;
use warren_memory::access::Reader;
use warren_memory::db::NewNote;
use warren_memory::embed::Embedder;
use warren_memory::search::{Filter, Fusion, NoteFilter, search_notes};
use warren_memory::{CodeIndex, MemoryDb};

use crate::capabilities::{Capabilities, workspace_relative};

/// The tool calls a task made, from its checkpoints: `name main-argument` each, in order.
pub fn tool_calls(checkpoints: &[warren_store::Checkpoint]) -> Vec<String> {
    checkpoints
        .iter()
        .filter(|c| c.payload["step"] == "model")
        .flat_map(|c| {
            c.payload["response"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| {
            let a: Value =
                serde_json::from_str(c["arguments"].as_str().unwrap_or("{}")).unwrap_or_default();
            let main = a["command"]
                .as_str()
                .or(a["path"].as_str())
                .unwrap_or_default();
            format!("{} {main}", c["name"].as_str().unwrap_or_default())
                .trim()
                .to_owned()
        })
        .collect()
}

/// The daemon's memory: the database and the embedder (none: full text only).
#[derive(Clone)]
pub struct Memory {
    /// The database.
    pub db: Arc<MemoryDb>,
    /// The embedder.
    pub embedder: Option<Arc<dyn Embedder>>,
}

impl Memory {
    fn vector(&self, text: &str) -> Option<Vec<f32>> {
        self.embedder
            .as_ref()
            .and_then(|e| e.embed(&[text]).ok())
            .and_then(|mut v| v.pop())
    }

    fn ename(&self) -> String {
        self.embedder.as_ref().map_or("none".into(), |e| e.name())
    }

    /// Store a note of `kind`.
    pub fn note(&self, kind: &str, agent: &str, workspace: Option<&str>, task: &str, text: &str) {
        let v = self.vector(text);
        let stored = self.db.add_note(&NewNote {
            kind,
            agent: Some(agent),
            workspace,
            task: Some(task),
            text,
            embedder: &self.ename(),
            vector: v.as_deref(),
        });
        if let Err(e) = stored {
            tracing::warn!("task {task}: storing its {kind} in memory: {e}");
        }
    }

    /// Reflections of earlier tasks on `workspace` most relevant to `goal`.
    pub fn reflections(&self, workspace: &str, goal: &str, k: usize) -> Vec<String> {
        search_notes(
            &self.db,
            self.embedder.as_deref(),
            &NoteFilter {
                kinds: &["reflection"],
                workspace: Some(workspace),
                ..NoteFilter::default()
            },
            goal,
            k,
        )
        .map(|ns| ns.into_iter().map(|n| n.text).collect())
        .unwrap_or_default()
    }
}

/// The memory tools of one task.
pub struct MemoryTools {
    /// The daemon's memory.
    pub memory: Memory,
    /// Agent (notes are per agent).
    pub agent: String,
    /// The task's workspace (canonical host path), if any.
    pub workspace: Option<String>,
    /// The task.
    pub task: String,
    /// Which of the tools the manifest grants.
    pub granted: Vec<String>,
    /// The task's effective capabilities: `code_search` answers only from files they let the
    /// task read.
    pub caps: Capabilities,
    /// The task's cell identity on the host: `code_search` answers only from files it could
    /// read now (`warren_memory::access`).
    pub reader: Reader,
}

impl MemoryTools {
    /// What `code_search` may answer from on `workspace`: the indexed files under `prefix`
    /// that the task's read capability allows and its cell's identity could read on the host
    /// now. `None` when that is every indexed file (no filter needed).
    fn searchable(
        &self,
        workspace: &str,
        prefix: Option<&str>,
    ) -> Result<Option<BTreeSet<String>>, String> {
        let all = self
            .memory
            .db
            .indexed_paths(workspace)
            .map_err(|e| e.to_string())?;
        let granted = all
            .iter()
            .filter(|p| prefix.is_none_or(|x| p.starts_with(x)))
            .filter(|p| self.caps.may_read(p))
            .map(String::as_str);
        let readable = self.reader.readable(Path::new(workspace), granted);
        Ok((readable.len() < all.len()).then_some(readable))
    }
}

fn spec(name: &str, description: &str, parameters: Value) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: description.into(),
        parameters,
    }
}

impl HostTools for MemoryTools {
    fn specs(&self) -> Vec<ToolSpec> {
        let query = |what: &str| {
            json!({"type": "object", "properties": {
                "query": {"type": "string", "description": what},
                "k": {"type": "integer", "minimum": 1, "maximum": 50}
            }, "required": ["query"], "additionalProperties": false})
        };
        [
            spec(
                "code_search",
                "Search the project's code by meaning and words (hybrid vector + full-text). Returns ranked chunks with file and line numbers.",
                json!({"type": "object", "properties": {
                    "query": {"type": "string", "description": "What you are looking for: identifiers, a description of behaviour"},
                    "path": {"type": "string", "description": "Only paths starting with this (relative to the workspace)"},
                    "k": {"type": "integer", "minimum": 1, "maximum": 50}
                }, "required": ["query"], "additionalProperties": false}),
            ),
            spec(
                "memory_store",
                "Remember a short note for your future tasks (facts about this project, what works).",
                json!({"type": "object", "properties": {"text": {"type": "string", "maxLength": 4000}}, "required": ["text"], "additionalProperties": false}),
            ),
            spec("memory_query", "Search the notes you stored in earlier tasks.", query("What to look for")),
            spec(
                "recall",
                "Search the history of earlier tasks on this project (goals, outcomes, commands) and their reflections.",
                json!({"type": "object", "properties": {
                    "query": {"type": "string", "description": "What to look for"},
                    "task": {"type": "string", "description": "Only this task's episode and reflection (a task id)"},
                    "k": {"type": "integer", "minimum": 1, "maximum": 50}
                }, "required": ["query"], "additionalProperties": false}),
            ),
        ]
        .into_iter()
        .filter(|s| self.granted.contains(&s.name))
        .collect()
    }

    fn call(&self, name: &str, args: &Value) -> Option<Result<String, String>> {
        if !self.granted.iter().any(|g| g == name) {
            return None;
        }
        let k = args["k"].as_u64().unwrap_or(8).clamp(1, 50) as usize;
        let q = args["query"].as_str().unwrap_or_default();
        let m = &self.memory;
        Some(match name {
            "code_search" => {
                let Some(ws) = &self.workspace else {
                    return Some(Err("this task has no workspace to search".into()));
                };
                // The optional path as the cell resolves it (`./src`, `../workspace/src`).
                let prefix = match args["path"].as_str() {
                    None => None,
                    Some(p) => match workspace_relative(p) {
                        Some(r) if r == "." => None,
                        Some(r) => Some(r),
                        None => {
                            return Some(Err(format!("{p} is outside the workspace")));
                        }
                    },
                };
                // Scoped to what this task may read and its cell could, before ranking.
                let paths = match self.searchable(ws, prefix.as_deref()) {
                    Ok(p) => p,
                    Err(e) => return Some(Err(e)),
                };
                if paths.as_ref().is_some_and(BTreeSet::is_empty) {
                    return Some(Ok(
                        "0 result(s): nothing this task may read is indexed".into()
                    ));
                }
                let filter = Filter {
                    workspace: Some(ws.clone()),
                    path_prefix: prefix,
                    paths: paths.map(Arc::new),
                };
                CodeIndex::scoped(&m.db, m.embedder.as_deref(), &filter)
                    .and_then(|ix| ix.search(q, k, &filter, Fusion::default()))
                    .map(|r| {
                        let mut out = format!("{} result(s), {}\n", r.hits.len(), r.mode);
                        for h in r.hits {
                            out.push_str(&format!(
                                "\n{}:{}-{} (score {:.2})\n",
                                h.path, h.start_line, h.end_line, h.score
                            ));
                            for l in h.text.lines().take(12) {
                                out.push_str(l);
                                out.push('\n');
                            }
                        }
                        out
                    })
                    .map_err(|e| e.to_string())
            }
            "memory_store" => {
                let text = args["text"].as_str().unwrap_or_default();
                m.note(
                    "note",
                    &self.agent,
                    self.workspace.as_deref(),
                    &self.task,
                    text,
                );
                Ok("stored".into())
            }
            "memory_query" | "recall" => {
                let filter = if name == "recall" {
                    // Episodes and reflections of this workspace, whichever agent ran them
                    // (a task without a workspace: only its own agent's). Never another
                    // project's history.
                    NoteFilter {
                        kinds: &["episode", "reflection"],
                        agent: self.workspace.is_none().then_some(self.agent.as_str()),
                        workspace: self.workspace.as_deref(),
                        task: args["task"].as_str(),
                    }
                } else {
                    NoteFilter {
                        kinds: &["note"],
                        agent: Some(&self.agent),
                        ..NoteFilter::default()
                    }
                };
                search_notes(&m.db, m.embedder.as_deref(), &filter, q, k)
                    .map(|notes| {
                        if notes.is_empty() {
                            return "nothing found".to_owned();
                        }
                        notes
                            .iter()
                            .map(|n| {
                                format!(
                                    "- [{}{}] {}",
                                    n.kind,
                                    n.task.as_ref().map(|t| format!(" {t}")).unwrap_or_default(),
                                    n.text
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .map_err(|e| e.to_string())
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use warren_memory::HashEmbedder;
    use warren_testkit::TempDir;

    fn tools(memory: &Memory, agent: &str, workspace: Option<&str>) -> MemoryTools {
        MemoryTools {
            memory: memory.clone(),
            agent: agent.into(),
            workspace: workspace.map(str::to_owned),
            task: "t-now".into(),
            granted: vec![
                "recall".into(),
                "memory_query".into(),
                "memory_store".into(),
            ],
            caps: unrestricted(),
            reader: Reader {
                uid: 65534,
                gid: 65534,
                idmap: None,
            },
        }
    }

    fn unrestricted() -> Capabilities {
        Capabilities::new(
            crate::capabilities::Layer::unrestricted("m"),
            crate::capabilities::Layer::unrestricted("p"),
        )
    }

    /// The index holds everything; a task's `code_search` gets only what its read grants allow
    /// and its cell's identity could read on the host.
    #[test]
    fn code_search_answers_only_from_files_the_task_and_its_cell_could_read() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = TempDir::new("memory-code-scope");
        let ws = t.path().join("ws");
        let file = |rel: &str, mode: u32| {
            let p = ws.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(
                &p,
                format!("pub fn tokenizer_{}() {{}}\n", rel.replace(['/', '.'], "_")),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        file("src/lib.rs", 0o644);
        file("src/private.rs", 0o600);
        file("src/closed/inner.rs", 0o644);
        file("secrets/key.rs", 0o644);
        for d in ["", "src", "secrets"] {
            std::fs::set_permissions(ws.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(
            ws.join("src/closed"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let memory = Memory {
            db: Arc::new(MemoryDb::open(&t.path().join("m.db")).unwrap()),
            embedder: Some(Arc::new(HashEmbedder::new(64))),
        };
        warren_memory::index::index(&memory.db, &ws, memory.embedder.as_deref(), &mut |_| {})
            .unwrap();
        let ws_key = std::fs::canonicalize(&ws).unwrap().display().to_string();
        let me = std::fs::metadata(&ws).unwrap();
        assert_ne!(
            me.uid(),
            65534,
            "the test's files need an owner other than the cell"
        );
        let src_only = crate::capabilities::PolicyFile::parse(
            Path::new("p.toml"),
            "[capabilities]\npaths = [{ glob = \"src/**\", access = \"read\" }]\n",
        )
        .unwrap()
        .layer();
        let search = |caps: Capabilities, idmap: Option<(u32, u32)>, args: Value| {
            let mut tools = tools(&memory, "coder", Some(&ws_key));
            tools.granted = vec!["code_search".into()];
            tools.caps = caps;
            tools.reader.idmap = idmap;
            tools.call("code_search", &args).unwrap()
        };
        let q = json!({"query": "tokenizer", "k": 50});
        // Everything is in the index.
        let all = search(unrestricted(), Some((me.uid(), me.gid())), q.clone()).unwrap();
        for f in [
            "src/lib.rs",
            "src/private.rs",
            "src/closed/inner.rs",
            "secrets/key.rs",
        ] {
            assert!(all.contains(&format!("{f}:")), "{f} missing: {all}");
        }
        // Read granted on src/** only: no secrets/.
        let scoped = Capabilities::new(crate::capabilities::Layer::unrestricted("m"), src_only);
        let got = search(scoped.clone(), Some((me.uid(), me.gid())), q.clone()).unwrap();
        assert!(
            got.contains("src/lib.rs:") && !got.contains("secrets/"),
            "{got}"
        );
        // The cell as nobody, the files another user's: no 0600 file, nothing under a 0700
        // directory; the rest as before.
        let got = search(unrestricted(), None, q.clone()).unwrap();
        assert!(
            got.contains("src/lib.rs:") && got.contains("secrets/key.rs:"),
            "{got}"
        );
        assert!(
            !got.contains("private.rs") && !got.contains("inner.rs"),
            "{got}"
        );
        let got = search(scoped.clone(), None, q.clone()).unwrap();
        assert!(got.contains("src/lib.rs:"), "{got}");
        assert!(!got.contains("private") && !got.contains("inner") && !got.contains("secrets"));
        // A path narrows as the cell resolves it; outside the workspace is an error.
        let got = search(
            unrestricted(),
            None,
            json!({"query": "tokenizer", "path": "./secrets"}),
        )
        .unwrap();
        assert!(
            got.contains("secrets/key.rs:") && !got.contains("src/"),
            "{got}"
        );
        let got = search(
            unrestricted(),
            None,
            json!({"query": "tokenizer", "path": "../workspace/secrets"}),
        )
        .unwrap();
        assert!(
            got.contains("secrets/key.rs:") && !got.contains("src/"),
            "{got}"
        );
        assert!(search(unrestricted(), None, json!({"query": "x", "path": "/etc"})).is_err());
        // Nothing readable at all: says so.
        let got = search(
            scoped,
            None,
            json!({"query": "tokenizer", "path": "secrets"}),
        )
        .unwrap();
        assert!(got.starts_with("0 result(s)"), "{got}");
        // A file swapped for a symlink since it was indexed is not answered from.
        std::fs::remove_file(ws.join("src/lib.rs")).unwrap();
        std::os::unix::fs::symlink("../secrets/key.rs", ws.join("src/lib.rs")).unwrap();
        let got = search(unrestricted(), None, q).unwrap();
        assert!(!got.contains("src/lib.rs:"), "{got}");
    }

    #[test]
    fn recall_sees_this_workspaces_history_only_and_notes_stay_with_their_agent() {
        let t = TempDir::new("memory-scope");
        let memory = Memory {
            db: Arc::new(MemoryDb::open(&t.path().join("m.db")).unwrap()),
            embedder: Some(Arc::new(HashEmbedder::new(64))),
        };
        memory.note(
            "episode",
            "coder",
            Some("/p/a"),
            "t-a1",
            "fixed the tokenizer bug in a",
        );
        memory.note(
            "reflection",
            "other",
            Some("/p/a"),
            "t-a2",
            "tokenizer tests run fast",
        );
        memory.note(
            "episode",
            "coder",
            Some("/p/b"),
            "t-b1",
            "tokenizer secret plan of b",
        );
        memory.note(
            "episode",
            "coder",
            None,
            "t-n1",
            "tokenizer without a workspace",
        );
        memory.note(
            "note",
            "reviewer",
            Some("/p/a"),
            "t-a3",
            "tokenizer notes of the reviewer",
        );
        let call = |tools: &MemoryTools, name: &str, args: Value| {
            tools.call(name, &args).unwrap().unwrap()
        };
        let on_a = tools(&memory, "coder", Some("/p/a"));
        let got = call(&on_a, "recall", json!({"query": "tokenizer"}));
        assert!(
            got.contains("bug in a") && got.contains("tests run fast"),
            "{got}"
        );
        assert!(
            !got.contains("plan of b") && !got.contains("without a workspace"),
            "{got}"
        );
        assert!(!got.contains("reviewer"), "notes are not history: {got}");
        // One task's history.
        let one = call(
            &on_a,
            "recall",
            json!({"query": "tokenizer", "task": "t-a2"}),
        );
        assert!(
            one.contains("tests run fast") && !one.contains("bug in a"),
            "{one}"
        );
        // No workspace: the agent's own history only.
        let nowhere = tools(&memory, "coder", None);
        let got = call(&nowhere, "recall", json!({"query": "tokenizer"}));
        assert!(got.contains("without a workspace"), "{got}");
        assert!(!got.contains("tests run fast"), "{got}");
        // Notes: this agent's only.
        let got = call(&on_a, "memory_query", json!({"query": "tokenizer"}));
        assert_eq!(got, "nothing found");
        let reviewer = tools(&memory, "reviewer", Some("/p/b"));
        let got = call(&reviewer, "memory_query", json!({"query": "tokenizer"}));
        assert!(got.contains("notes of the reviewer"), "{got}");
    }
}
