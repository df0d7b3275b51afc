//! A recording fake tier, for testing the runtime without root and without a kernel.
//!
//! [`FakeCells`] records every [`CellSpec`] it was asked for and hands out [`FakeCell`]s that
//! record every command and emulate the agent's file tools over an in-memory file map
//! (`cat > FILE` writes, `cat -- FILE` reads, `find` lists). A shell command answers
//! `ran <command>`; `sleep …` blocks until the cell is terminated (a command in flight for
//! cancel and timeout tests); `exit N` exits with N. Nothing runs on the host: this tier
//! confines nothing and exists only for tests of the logic around cells.
//!
//! [`ScriptedModel`] is the provider seam's fake: scripted tool calls per goal and turn, for
//! tests of everything in front of the engine (the API, MCP) without a model server.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use warren_cell::{Cell, CellError, CellSpec, ExecOutcome, ExecSpec, ExitInfo, OutputSink, Tier};

use crate::cells::Cells;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts [`FakeCell`]s and remembers them.
#[derive(Default)]
pub struct FakeCells {
    started: Mutex<Vec<Arc<FakeCell>>>,
    refuse: Mutex<Option<String>>,
}

impl FakeCells {
    /// A fake tier.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Every cell started so far, in order.
    pub fn started(&self) -> Vec<Arc<FakeCell>> {
        lock(&self.started).clone()
    }

    /// Refuse every later start with this reason (`None`: start again).
    pub fn refuse(&self, reason: Option<&str>) {
        *lock(&self.refuse) = reason.map(str::to_owned);
    }
}

impl Cells for FakeCells {
    fn tier(&self) -> &'static str {
        "fake"
    }

    fn start(&self, spec: &CellSpec) -> Result<Arc<dyn Cell>, CellError> {
        if let Some(r) = lock(&self.refuse).clone() {
            return Err(CellError::Refused {
                step: "fake".into(),
                reason: r,
            });
        }
        let cell = Arc::new(FakeCell {
            id: spec.id.clone().unwrap_or_else(|| "fake".into()),
            spec: spec.clone(),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        lock(&self.started).push(Arc::clone(&cell));
        Ok(cell)
    }
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, Vec<u8>>,
    ran: Vec<Vec<String>>,
    terminated: bool,
    running: usize,
}

/// One fake cell.
pub struct FakeCell {
    id: String,
    spec: CellSpec,
    state: Mutex<State>,
    wake: Condvar,
}

impl FakeCell {
    /// The spec it was started with.
    pub fn spec(&self) -> &CellSpec {
        &self.spec
    }

    /// Every command's argv, in order.
    pub fn ran(&self) -> Vec<Vec<String>> {
        lock(&self.state).ran.clone()
    }

    /// A file the agent wrote (absolute path in the cell).
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        lock(&self.state).files.get(path).cloned()
    }

    /// Whether the cell was terminated.
    pub fn terminated(&self) -> bool {
        lock(&self.state).terminated
    }

    /// Commands running now.
    pub fn running(&self) -> usize {
        lock(&self.state).running
    }

    fn exited(code: i32) -> ExecOutcome {
        ExecOutcome {
            exit: ExitInfo {
                code: Some(code),
                ..ExitInfo::default()
            },
            ..ExecOutcome::default()
        }
    }
}

impl Cell for FakeCell {
    fn id(&self) -> &str {
        &self.id
    }

    fn tier(&self) -> Tier {
        Tier::Process
    }

    fn exec(
        &self,
        spec: &ExecSpec,
        stdin: Option<Box<dyn Read + Send>>,
        sink: &mut dyn OutputSink,
    ) -> Result<ExecOutcome, CellError> {
        let mut st = lock(&self.state);
        if st.terminated {
            return Err(CellError::Channel {
                id: self.id.clone(),
                what: "terminated".into(),
            });
        }
        st.ran.push(spec.argv.clone());
        let argv: Vec<&str> = spec.argv.iter().map(String::as_str).collect();
        match argv.as_slice() {
            ["/bin/sh", "-c", script, "sh", path] if script.contains("cat >") => {
                let mut data = Vec::new();
                if let Some(mut s) = stdin {
                    s.read_to_end(&mut data).map_err(|e| CellError::Channel {
                        id: self.id.clone(),
                        what: format!("stdin: {e}"),
                    })?;
                }
                st.files.insert((*path).to_owned(), data);
                Ok(Self::exited(0))
            }
            ["/bin/cat", "--", path] => match st.files.get(*path) {
                Some(b) => {
                    sink.stdout(b);
                    Ok(Self::exited(0))
                }
                None => {
                    sink.stderr(format!("cat: {path}: No such file or directory\n").as_bytes());
                    Ok(Self::exited(1))
                }
            },
            ["/usr/bin/find", start, ..] => {
                for f in st.files.keys().filter(|f| f.starts_with(start)) {
                    sink.stdout(format!("{f}\n").as_bytes());
                }
                Ok(Self::exited(0))
            }
            ["/bin/sh", "-c", cmd] if cmd.starts_with("sleep") => {
                st.running += 1;
                while !st.terminated {
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.running -= 1;
                Ok(ExecOutcome {
                    exit: ExitInfo {
                        signal: Some(9),
                        ..ExitInfo::default()
                    },
                    ..ExecOutcome::default()
                })
            }
            ["/bin/sh", "-c", cmd] if cmd.starts_with("exit ") => {
                let code = cmd[5..].trim().parse().unwrap_or(1);
                Ok(Self::exited(code))
            }
            ["/bin/sh", "-c", cmd] => {
                sink.stdout(format!("ran {cmd}\n").as_bytes());
                Ok(Self::exited(0))
            }
            _ => {
                sink.stderr(b"fake cell: command not emulated\n");
                Ok(Self::exited(127))
            }
        }
    }

    fn set_env(&self, _vars: Vec<(String, Option<String>)>) -> Result<(), CellError> {
        Ok(())
    }

    fn chdir(&self, _path: &str) -> Result<(), CellError> {
        Ok(())
    }

    fn max_output_bytes(&self) -> u64 {
        1 << 20
    }

    fn kill(&mut self) {
        self.terminate();
    }

    fn terminate(&self) {
        lock(&self.state).terminated = true;
        self.wake.notify_all();
    }
}

/// A scripted model, the provider seam's fake: the goal picks a script (the first whose key
/// the goal starts with) and the number of the model's earlier turns in the conversation
/// picks the turn's tool calls. A turn past the script's end, or a goal no script matches,
/// calls `finish` ("done"). It counts the requests it answered.
pub struct ScriptedModel {
    scripts: Vec<(String, Vec<Vec<warren_llm::ToolCall>>)>,
    requests: Mutex<usize>,
}

/// A tool call of a script: `id`, the tool's name, its arguments.
pub fn tool_call(id: &str, name: &str, args: serde_json::Value) -> warren_llm::ToolCall {
    warren_llm::ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.to_string(),
    }
}

impl ScriptedModel {
    /// A model playing `scripts`: (goal prefix, the tool calls of each turn).
    pub fn new(scripts: Vec<(&str, Vec<Vec<warren_llm::ToolCall>>)>) -> Arc<Self> {
        Arc::new(ScriptedModel {
            scripts: scripts
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            requests: Mutex::new(0),
        })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        *lock(&self.requests)
    }
}

#[async_trait::async_trait]
impl warren_llm::Provider for ScriptedModel {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn chat(
        &self,
        r: &warren_llm::ChatRequest,
        _events: warren_llm::EventSink<'_>,
    ) -> Result<warren_llm::ChatResponse, warren_llm::LlmError> {
        use warren_llm::Message;
        *lock(&self.requests) += 1;
        let goal = r
            .messages
            .iter()
            .find_map(|m| match m {
                Message::User { content } => Some(content.as_str()),
                _ => None,
            })
            .unwrap_or_default();
        let turn = r
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Assistant { .. }))
            .count();
        let finish = || {
            vec![tool_call(
                "f",
                "finish",
                serde_json::json!({"summary": "done"}),
            )]
        };
        let calls = self
            .scripts
            .iter()
            .find(|(k, _)| goal.starts_with(k.as_str()))
            .and_then(|(_, turns)| turns.get(turn).cloned())
            .unwrap_or_else(finish);
        Ok(warren_llm::ChatResponse {
            text: String::new(),
            tool_calls: calls,
            usage: warren_llm::Usage {
                input_tokens: 10,
                output_tokens: 1,
                cached_input_tokens: 0,
            },
            stop_reason: warren_llm::StopReason::ToolUse,
        })
    }
}
