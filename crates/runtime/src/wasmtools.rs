//! A wasi-tier manifest's `modules:` as the model's tools: one tool per module, named as the
//! manifest names it, whose call runs the module in the task's cell with the model's `args`
//! (and `stdin`). The model never chooses a path to run: the tool's name selects a module the
//! operator listed, and the cell runs nothing else.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use warren_agent::tools::HostTools;
use warren_cell::{Cell, Collect, ExecSpec};
use warren_config::manifest::WasmModule;
use warren_llm::ToolSpec;

/// How long one module call may run.
const TIMEOUT_MS: u64 = 120_000;
/// The most arguments, and the longest stdin, a call may pass.
const MAX_ARGS: usize = 256;
const MAX_STDIN: usize = 8 << 20;

/// The modules of one task, run in its cell.
pub struct WasmTools {
    /// The task's cell (of the wasi tier).
    pub cell: Arc<dyn Cell>,
    /// The manifest's modules.
    pub modules: Vec<WasmModule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    #[serde(default)]
    args: Vec<String>,
    stdin: Option<String>,
}

impl WasmTools {
    fn run(&self, m: &WasmModule, a: Args) -> Result<String, String> {
        if a.args.len() > MAX_ARGS || a.args.iter().any(|x| x.contains('\0')) {
            return Err(format!("at most {MAX_ARGS} arguments, without NUL bytes"));
        }
        if a.stdin.as_ref().is_some_and(|s| s.len() > MAX_STDIN) {
            return Err(format!("stdin is larger than {MAX_STDIN} bytes"));
        }
        let mut argv = vec![m.path.clone()];
        argv.extend(a.args);
        let spec = ExecSpec {
            argv,
            env: Vec::new(),
            cwd: None,
            timeout_ms: Some(TIMEOUT_MS),
            max_output_bytes: self.cell.max_output_bytes(),
            stdin: false,
        };
        let mut out = Collect::default();
        let input: Option<Box<dyn std::io::Read + Send>> = a
            .stdin
            .map(|s| Box::new(std::io::Cursor::new(s.into_bytes())) as _);
        let o = self
            .cell
            .exec(&spec, input, &mut out)
            .map_err(|e| e.to_string())?;
        if let Some((_, why)) = o.failure {
            return Err(why);
        }
        let code = o.exit.code.unwrap_or(-1);
        let mut text = format!("exit code {code}");
        if o.exit.timed_out {
            text.push_str(&format!(" (stopped at the {} s limit)", TIMEOUT_MS / 1000));
        }
        if o.oom_killed {
            text.push_str(" (stopped at the memory limit)");
        }
        for (name, bytes, cut) in [
            ("stdout", &out.stdout, o.stdout_truncated),
            ("stderr", &out.stderr, o.stderr_truncated),
        ] {
            if !bytes.is_empty() {
                text.push_str(&format!("\n{name}:\n{}", String::from_utf8_lossy(bytes)));
                if cut {
                    text.push_str("\n[truncated]");
                }
            }
        }
        if code == 0 { Ok(text) } else { Err(text) }
    }
}

impl HostTools for WasmTools {
    fn specs(&self) -> Vec<ToolSpec> {
        self.modules
            .iter()
            .map(|m| ToolSpec {
                name: m.name.clone(),
                description: if m.description.is_empty() {
                    format!("Run the WebAssembly program {} in the task's cell.", m.name)
                } else {
                    m.description.clone()
                },
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "args": {"type": "array", "items": {"type": "string"},
                                 "description": "Command-line arguments (after the program's name)."},
                        "stdin": {"type": "string", "description": "Text for its standard input."}
                    },
                    "additionalProperties": false
                }),
            })
            .collect()
    }

    fn call(&self, name: &str, args: &Value) -> Option<Result<String, String>> {
        let m = self.modules.iter().find(|m| m.name == name)?;
        Some(match serde_json::from_value::<Args>(args.clone()) {
            Ok(a) => self.run(m, a),
            Err(e) => Err(format!("invalid arguments: {e}")),
        })
    }
}
