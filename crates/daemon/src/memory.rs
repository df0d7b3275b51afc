//! Memory for tasks whose manifest lists a memory tool: the tools themselves (run on the host,
//! not in the cell), the workspace index kept current at task start, reflections offered to
//! the next task on the same workspace, and an episode and a reflection stored when a task ends.

use std::sync::Arc;

use serde_json::{Value, json};
use warren_agent::tools::HostTools;
use warren_llm::ToolSpec;
use warren_memory::db::NewNote;
use warren_memory::embed::Embedder;
use warren_memory::search::{Filter, Fusion, search_notes};
use warren_memory::{CodeIndex, MemoryDb};

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
        let _ = self.db.add_note(&NewNote {
            kind,
            agent: Some(agent),
            workspace,
            task: Some(task),
            text,
            embedder: &self.ename(),
            vector: v.as_deref(),
        });
    }

    /// Reflections of earlier tasks on `workspace` most relevant to `goal`.
    pub fn reflections(&self, workspace: &str, goal: &str, k: usize) -> Vec<String> {
        search_notes(
            &self.db,
            self.embedder.as_deref(),
            &["reflection"],
            None,
            Some(workspace),
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
                "Search the history of earlier tasks (goals, outcomes, commands) and their reflections.",
                query("What to look for"),
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
                CodeIndex::exact(&m.db, m.embedder.as_deref())
                    .and_then(|ix| {
                        ix.search(
                            q,
                            k,
                            &Filter {
                                workspace: Some(ws.clone()),
                                path_prefix: args["path"].as_str().map(str::to_owned),
                            },
                            Fusion::default(),
                        )
                    })
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
                let (kinds, agent): (&[&str], Option<&str>) = if name == "recall" {
                    (&["episode", "reflection"], None)
                } else {
                    (&["note"], Some(&self.agent))
                };
                search_notes(&m.db, m.embedder.as_deref(), kinds, agent, None, q, k)
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
