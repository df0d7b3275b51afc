//! The agent's tools. Every one runs **inside the task's cell** through the same exec channel
//! as a shell command, so the kernel confines file tools exactly like `sh -c`: there is no
//! host-side file access to get wrong. The host only shapes arguments and results.
//!
//! A file tool's path is resolved once, lexically, against the cell's working directory
//! ([`resolve_path`]), and the command in the cell gets that resolved form: the host's
//! capability check (`warren-daemon` `policy.rs`) uses the same function, so the path it
//! checks is the path that is opened (`../workspace/secrets/x` is checked, and opened, as
//! `secrets/x`). Symlinks are the kernel's: the host never looks at the cell's files.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use warren_cell::{Cell, Collect, ExecSpec};
use warren_llm::{ToolSpec, Usage};

/// What a tool call produced, for the model and for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolOutput {
    /// Text for the model (possibly truncated).
    pub content: String,
    /// Whether the call failed.
    pub is_error: bool,
    /// The full text, when `content` was truncated.
    pub full: Option<String>,
    /// Set by `finish`: the task's result.
    pub finished: Option<Value>,
    /// Model usage the call spent on the task's behalf (a delegated child's): charged to the
    /// task's budget like its own turns.
    pub spent: Usage,
}

impl ToolOutput {
    fn ok(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: false,
            full: None,
            finished: None,
            spent: Usage::default(),
        }
    }
    pub(crate) fn err(content: impl Into<String>) -> Self {
        ToolOutput {
            is_error: true,
            ..ToolOutput::ok(content)
        }
    }
}

/// What a host tool's call produced (see [`HostTools::call_as`]).
#[derive(Clone, Debug, PartialEq)]
pub struct HostOutput {
    /// `Ok(text)` or `Err(message)` for the model.
    pub result: Result<String, String>,
    /// Model usage spent on the task's behalf (charged to its budget).
    pub spent: Usage,
}

/// What the task's validators say about a `finish` (see [`FinishCheck`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// The result stands: the task ends.
    #[default]
    Pass,
    /// Not yet: the model is told this and works on.
    Retry(String),
    /// Not at all, and no more tries: the task ends unsuccessfully with this reason.
    Fail(String),
}

/// Checks a `finish` before it ends the task: a manifest's validators (commands, a JSON
/// Schema, a pattern, a judge model). Called on the tool's thread, after `/task/result.json`
/// was written; `call_id` is the `finish` call's (durable across restarts).
pub trait FinishCheck: Send + Sync {
    /// Judge the result (`{summary, success, …}` as written to `/task/result.json`).
    fn check(&self, call_id: &str, result: &Value) -> Verdict;
}

/// A file tool could not read or write a file in the cell. `path` is as the tool got it (the
/// model's own spelling); `reason` is what the cell said (the command's error output).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading the file failed.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Writing the file (and creating its directories) failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Tools that run on the host, not in the cell (memory, code search): offered next to the
/// cell's tools and routed here by name.
pub trait HostTools: Send + Sync {
    /// Their specifications: offered to the model in every request.
    fn specs(&self) -> Vec<ToolSpec>;
    /// Tools accepted (validated against these schemas, gated, run) but not offered in every
    /// request: the model finds them through one of [`HostTools::specs`] (MCP tools past
    /// their context budget, found with `mcp_search`).
    fn hidden_specs(&self) -> Vec<ToolSpec> {
        Vec::new()
    }
    /// Run `name` if it is one of these (`None` otherwise): `Ok(text)` or `Err(message)`.
    fn call(&self, name: &str, args: &Value) -> Option<Result<String, String>>;
    /// [`HostTools::call`] knowing the call's id (stable across a restart of the task) and
    /// reporting what it spent on models. Tools that need either implement this one.
    fn call_as(&self, call_id: &str, name: &str, args: &Value) -> Option<HostOutput> {
        let _ = call_id;
        self.call(name, args).map(|result| HostOutput {
            result,
            spent: Usage::default(),
        })
    }
    /// Whether a call of `name` interrupted by a restart runs again with the same id instead
    /// of being reported as of unknown effect: the tool finds its own earlier work by the id
    /// (`delegate` re-attaches to its child).
    fn resumable(&self, name: &str) -> bool {
        let _ = name;
        false
    }
}

/// Several sets of host tools as one (memory tools and MCP tools, say): specifications in
/// order, a call routed to the first set that has the tool.
pub struct Chain(pub Vec<Arc<dyn HostTools>>);

impl HostTools for Chain {
    fn specs(&self) -> Vec<ToolSpec> {
        self.0.iter().flat_map(|h| h.specs()).collect()
    }

    fn hidden_specs(&self) -> Vec<ToolSpec> {
        self.0.iter().flat_map(|h| h.hidden_specs()).collect()
    }

    fn call(&self, name: &str, args: &Value) -> Option<Result<String, String>> {
        self.0.iter().find_map(|h| h.call(name, args))
    }

    fn call_as(&self, call_id: &str, name: &str, args: &Value) -> Option<HostOutput> {
        self.0.iter().find_map(|h| h.call_as(call_id, name, args))
    }

    fn resumable(&self, name: &str) -> bool {
        self.0.iter().any(|h| h.resumable(name))
    }
}

/// Names of the memory tools a daemon can offer (see `warren-memory`).
pub const MEMORY_TOOLS: [&str; 4] = ["code_search", "memory_store", "memory_query", "recall"];

/// Tools that only read may run in parallel within one turn.
pub fn read_only(name: &str) -> bool {
    if matches!(name, "code_search" | "memory_query" | "recall") {
        return true;
    }
    matches!(name, "read_file" | "list_files" | "grep")
}

/// The tool schemas offered to the model in a cell without network.
pub fn specs() -> Vec<ToolSpec> {
    specs_for(&[])
}

/// The shell tool's description: what a command can reach depends on the task's cell.
/// `network` is the destinations its egress proxy allows (empty: no network at all).
pub fn shell_description(network: &[String]) -> String {
    if network.is_empty() {
        return "Run a shell command (sh -c) in the workspace. The environment has no network."
            .into();
    }
    format!(
        "Run a shell command (sh -c) in the workspace. Network traffic goes only through an \
         HTTP(S) proxy (HTTP_PROXY and HTTPS_PROXY are set) that allows these destinations and \
         nothing else: {}; /cap/http offers the same requests as files.",
        network.join(", ")
    )
}

/// The tool schemas offered to the model, for a cell whose egress proxy allows `network`.
pub fn specs_for(network: &[String]) -> Vec<ToolSpec> {
    let t = |name: &str, description: &str, parameters: Value| ToolSpec {
        name: name.into(),
        description: description.into(),
        parameters,
    };
    vec![
        t(
            "shell",
            &shell_description(network),
            json!({"type": "object", "additionalProperties": false, "required": ["command"], "properties": {
                "command": {"type": "string", "minLength": 1},
                "timeout_secs": {"type": "integer", "minimum": 1, "maximum": 3600},
                "cwd": {"type": "string"},
                "env": {"type": "object", "additionalProperties": {"type": "string"}}}}),
        ),
        t(
            "read_file",
            "Read a text file. Lines are numbered from 1; use offset and limit for large files.",
            json!({"type": "object", "additionalProperties": false, "required": ["path"], "properties": {
                "path": {"type": "string", "minLength": 1},
                "offset": {"type": "integer", "minimum": 1},
                "limit": {"type": "integer", "minimum": 1},
                "line_numbers": {"type": "boolean"}}}),
        ),
        t(
            "write_file",
            "Create or replace a file with the given content (parent directories are created).",
            json!({"type": "object", "additionalProperties": false, "required": ["path", "content"], "properties": {
                "path": {"type": "string", "minLength": 1},
                "content": {"type": "string"}}}),
        ),
        t(
            "edit_file",
            "Replace an exact piece of text in a file. `old` must occur exactly once unless replace_all is true.",
            json!({"type": "object", "additionalProperties": false, "required": ["path", "old", "new"], "properties": {
                "path": {"type": "string", "minLength": 1},
                "old": {"type": "string", "minLength": 1},
                "new": {"type": "string"},
                "replace_all": {"type": "boolean"}}}),
        ),
        t(
            "list_files",
            "List files below a directory, skipping what .gitignore excludes.",
            json!({"type": "object", "additionalProperties": false, "properties": {
                "path": {"type": "string"}}}),
        ),
        t(
            "grep",
            "Search file contents with an extended regular expression; optional glob filter such as *.rs.",
            json!({"type": "object", "additionalProperties": false, "required": ["pattern"], "properties": {
                "pattern": {"type": "string", "minLength": 1},
                "path": {"type": "string"},
                "glob": {"type": "string"},
                "ignore_case": {"type": "boolean"}}}),
        ),
        t(
            "finish",
            "Finish the task: report what was done. Call this exactly once, when done or stuck.",
            json!({"type": "object", "additionalProperties": false, "required": ["summary"], "properties": {
                "summary": {"type": "string", "minLength": 1},
                "success": {"type": "boolean"}}}),
        ),
    ]
}

/// The working directory file tools run in: the cell's own (`/workspace` when the task has a
/// workspace; the agent never changes it, and each command starts there).
pub const CWD: &str = "/workspace";

/// Where the cell will find `path` (as a tool got it: relative to [`CWD`], or absolute),
/// resolved lexically: `.` and empty components dropped, `..` taking one component off (at
/// `/` it stays at `/`, as the kernel does), no trailing slash. Always absolute.
pub fn resolve_path(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    if !path.starts_with('/') {
        out.extend(CWD.split('/').filter(|c| !c.is_empty()));
    }
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

/// The form of `path` a command in the cell gets: [`resolve_path`], relative to [`CWD`] when
/// beneath it (so listings read as before), `./`-prefixed when it would start with `-` (never
/// an option).
fn cell_arg(path: &str) -> String {
    let abs = resolve_path(path);
    if abs == CWD {
        return ".".into();
    }
    match abs.strip_prefix(CWD).and_then(|r| r.strip_prefix('/')) {
        Some(rel) if rel.starts_with('-') => format!("./{rel}"),
        Some(rel) if !path.starts_with('/') => rel.to_owned(),
        _ => abs,
    }
}

/// Runs tools in a cell.
pub struct Tools {
    cell: Arc<dyn Cell>,
    /// Tools that run on the host (memory, code search), routed before the cell's.
    pub host: Option<Arc<dyn HostTools>>,
    /// Characters of output the model sees per call.
    pub max_output_chars: usize,
    /// Host directory the cell sees as `/logs`: shell output is appended to `stdout.log` and
    /// `stderr.log` there, in full.
    pub logs: Option<std::path::PathBuf>,
    /// Judges `finish` before it ends the task (the manifest's validators).
    pub finish_check: Option<Arc<dyn FinishCheck>>,
}

#[derive(Deserialize)]
struct Shell {
    command: String,
    timeout_secs: Option<u64>,
    cwd: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}
#[derive(Deserialize)]
struct ReadFile {
    path: String,
    offset: Option<usize>,
    limit: Option<usize>,
    line_numbers: Option<bool>,
}
#[derive(Deserialize)]
struct WriteFile {
    path: String,
    content: String,
}
#[derive(Deserialize)]
struct EditFile {
    path: String,
    old: String,
    new: String,
    #[serde(default)]
    replace_all: bool,
}
#[derive(Deserialize)]
struct ListFiles {
    path: Option<String>,
}
#[derive(Deserialize)]
struct Grep {
    pattern: String,
    path: Option<String>,
    glob: Option<String>,
    #[serde(default)]
    ignore_case: bool,
}
#[derive(Deserialize)]
struct Finish {
    summary: String,
    success: Option<bool>,
}

/// Where `finish` writes the task's result in the cell.
pub const RESULT_FILE: &str = "/task/result.json";

/// The largest file a file tool reads from a tier that serves its files itself.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// A structured result the agent wrote larger than this is not kept by `finish`.
const MAX_RESULT_BYTES: usize = 1 << 20;

/// Raw result of a command in the cell.
struct Ran {
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    disk_exceeded: bool,
    stdout: String,
    stderr: String,
    failure: Option<String>,
}

const SHELL_TIMEOUT_SECS: u64 = 120;

impl Tools {
    /// The id of the cell the tools act in.
    pub fn cell_id(&self) -> &str {
        self.cell.id()
    }

    /// Tools acting in `cell`.
    pub fn new(cell: Arc<dyn Cell>) -> Self {
        Tools {
            cell,
            host: None,
            max_output_chars: 16_000,
            logs: None,
            finish_check: None,
        }
    }

    /// Whether a call of `name` interrupted by a restart runs again (see
    /// [`HostTools::resumable`]).
    pub fn resumable(&self, name: &str) -> bool {
        self.host.as_ref().is_some_and(|h| h.resumable(name))
    }

    fn run(
        &self,
        argv: &[&str],
        stdin: Option<Vec<u8>>,
        cwd: Option<String>,
        env: Vec<(String, String)>,
        timeout_secs: u64,
    ) -> Ran {
        let spec = ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env,
            cwd,
            timeout_ms: Some(timeout_secs * 1000),
            max_output_bytes: self.cell.max_output_bytes(),
            stdin: false,
        };
        let mut out = Collect::default();
        let input: Option<Box<dyn std::io::Read + Send>> =
            stdin.map(|b| Box::new(std::io::Cursor::new(b)) as _);
        match self.cell.exec(&spec, input, &mut out) {
            Ok(o) => Ran {
                code: o.exit.code,
                signal: o.exit.signal,
                timed_out: o.exit.timed_out,
                disk_exceeded: o.disk_exceeded,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                failure: o.failure.map(|(_, m)| m),
            },
            Err(e) => Ran {
                code: None,
                signal: None,
                timed_out: false,
                disk_exceeded: false,
                stdout: String::new(),
                stderr: String::new(),
                failure: Some(e.to_string()),
            },
        }
    }

    /// Run one validated tool call. `args` has already been checked against the schema.
    pub fn call(&self, name: &str, args: &Value) -> ToolOutput {
        self.call_as("", name, args)
    }

    /// [`Tools::call`] for the call `call_id` (host tools and validators may need it).
    pub fn call_as(&self, call_id: &str, name: &str, args: &Value) -> ToolOutput {
        if let Some(h) = &self.host
            && let Some(r) = h.call_as(call_id, name, args)
        {
            let mut out = match r.result {
                Ok(text) => ToolOutput::ok(text),
                Err(e) => ToolOutput::err(e),
            };
            out.spent = r.spent;
            return out;
        }
        if name == "finish" {
            return match serde_json::from_value::<Finish>(args.clone()) {
                Ok(a) => self.finish(call_id, a),
                Err(e) => ToolOutput::err(format!("invalid arguments: {e}")),
            };
        }
        fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, serde_json::Error> {
            serde_json::from_value(v.clone())
        }
        let r = match name {
            "shell" => parse(args).map(|a| self.shell(a)),
            "read_file" => parse(args).map(|a| self.read_file(a)),
            "write_file" => parse(args).map(|a| self.write_file(a)),
            "edit_file" => parse(args).map(|a| self.edit_file(a)),
            "list_files" => parse(args).map(|a| self.list_files(a)),
            "grep" => parse(args).map(|a| self.grep(a)),
            other => return ToolOutput::err(format!("unknown tool {other:?}")),
        };
        r.unwrap_or_else(|e| ToolOutput::err(format!("invalid arguments: {e}")))
    }

    fn truncate(&self, text: String) -> ToolOutput {
        if text.chars().count() <= self.max_output_chars {
            return ToolOutput::ok(text);
        }
        let head: String = text.chars().take(self.max_output_chars).collect();
        ToolOutput {
            content: head,
            is_error: false,
            full: Some(text),
            finished: None,
            spent: Usage::default(),
        }
    }

    fn append_logs(&self, command: &str, r: &Ran) {
        use std::io::Write;
        let Some(dir) = &self.logs else { return };
        for (file, text) in [("stdout.log", &r.stdout), ("stderr.log", &r.stderr)] {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(file))
            {
                let _ = write!(f, "=== $ {command}\n{text}");
                if !text.is_empty() && !text.ends_with('\n') {
                    let _ = writeln!(f);
                }
            }
        }
    }

    fn shell(&self, a: Shell) -> ToolOutput {
        let r = self.run(
            &["/bin/sh", "-c", &a.command],
            None,
            a.cwd,
            a.env.into_iter().collect(),
            a.timeout_secs.unwrap_or(SHELL_TIMEOUT_SECS),
        );
        self.append_logs(&a.command, &r);
        if let Some(f) = r.failure {
            return ToolOutput::err(f);
        }
        let status = if r.timed_out {
            "killed: timed out".to_owned()
        } else if r.disk_exceeded {
            "killed: the workspace's changes reached their disk limit; remove files to free space"
                .to_owned()
        } else if let Some(s) = r.signal {
            format!("killed by signal {s}")
        } else {
            format!("exit code {}", r.code.unwrap_or(-1))
        };
        let mut text = status.clone();
        if !r.stdout.is_empty() {
            text.push_str("\n--- stdout ---\n");
            text.push_str(&r.stdout);
        }
        if !r.stderr.is_empty() {
            text.push_str("\n--- stderr ---\n");
            text.push_str(&r.stderr);
        }
        let mut out = self.truncate(text);
        out.is_error = r.code != Some(0);
        out
    }

    /// The content of `path` in the cell.
    fn cat(&self, path: &str) -> Result<String, FileError> {
        if let Some(r) = self.cell.read_file(&resolve_path(path), MAX_FILE_BYTES) {
            return r
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|reason| FileError::Read {
                    path: path.to_owned(),
                    reason,
                });
        }
        let r = self.run(&["/bin/cat", "--", &cell_arg(path)], None, None, vec![], 60);
        let reason = match (r.failure, r.code) {
            (Some(f), _) => f,
            (None, Some(0)) => return Ok(r.stdout),
            _ => r.stderr.trim().trim_start_matches("/bin/cat: ").to_owned(),
        };
        Err(FileError::Read {
            path: path.to_owned(),
            reason,
        })
    }

    /// Replace `path` in the cell by `content`, creating its directories.
    fn write(&self, path: &str, content: &str) -> Result<(), FileError> {
        if let Some(r) = self
            .cell
            .write_file(&resolve_path(path), content.as_bytes())
        {
            return r.map_err(|reason| FileError::Write {
                path: path.to_owned(),
                reason,
            });
        }
        let arg = cell_arg(path);
        let r = self.run(
            &[
                "/bin/sh",
                "-c",
                r#"mkdir -p -- "$(dirname -- "$1")" && cat > "$1""#,
                "sh",
                &arg,
            ],
            Some(content.as_bytes().to_vec()),
            None,
            vec![],
            60,
        );
        let reason = match (r.failure, r.code) {
            (Some(f), _) => f,
            (None, Some(0)) => return Ok(()),
            _ => r.stderr.trim().to_owned(),
        };
        Err(FileError::Write {
            path: path.to_owned(),
            reason,
        })
    }

    fn read_file(&self, a: ReadFile) -> ToolOutput {
        let text = match self.cat(&a.path) {
            Ok(t) => t,
            Err(e) => return ToolOutput::err(e.to_string()),
        };
        let lines: Vec<&str> = text.lines().collect();
        let start = a.offset.unwrap_or(1).max(1) - 1;
        let end = a
            .limit
            .map_or(lines.len(), |l| (start + l).min(lines.len()));
        if start >= lines.len() && !lines.is_empty() {
            return ToolOutput::err(format!(
                "{} has {} lines; offset {} is past the end",
                a.path,
                lines.len(),
                start + 1
            ));
        }
        let numbered = a.line_numbers.unwrap_or(true);
        let mut out: String = lines[start.min(lines.len())..end]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if numbered {
                    format!("{:>6}\t{l}\n", start + i + 1)
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        if end < lines.len() {
            out.push_str(&format!(
                "[{} more lines; continue with offset {}]\n",
                lines.len() - end,
                end + 1
            ));
        }
        self.truncate(out)
    }

    fn write_file(&self, a: WriteFile) -> ToolOutput {
        match self.write(&a.path, &a.content) {
            Ok(()) => ToolOutput::ok(format!("wrote {} ({} bytes)", a.path, a.content.len())),
            Err(e) => ToolOutput::err(e.to_string()),
        }
    }

    fn edit_file(&self, a: EditFile) -> ToolOutput {
        let text = match self.cat(&a.path) {
            Ok(t) => t,
            Err(e) => return ToolOutput::err(e.to_string()),
        };
        let count = text.matches(&a.old).count();
        if count == 0 {
            return ToolOutput::err(format!(
                "the text to replace was not found in {}; read the file and copy it exactly",
                a.path
            ));
        }
        if count > 1 && !a.replace_all {
            return ToolOutput::err(format!(
                "the text to replace occurs {count} times in {}; include more surrounding lines to make it unique, or set replace_all",
                a.path
            ));
        }
        let new = if a.replace_all {
            text.replace(&a.old, &a.new)
        } else {
            text.replacen(&a.old, &a.new, 1)
        };
        match self.write(&a.path, &new) {
            Ok(()) => ToolOutput::ok(format!(
                "edited {} ({} replacement{})",
                a.path,
                count.min(if a.replace_all { count } else { 1 }),
                if count > 1 && a.replace_all { "s" } else { "" }
            )),
            Err(e) => ToolOutput::err(e.to_string()),
        }
    }

    fn list_files(&self, a: ListFiles) -> ToolOutput {
        let root = a.path.unwrap_or_else(|| ".".into());
        let start = cell_arg(&root);
        let r = self.run(
            &[
                "/usr/bin/find",
                &start,
                "-name",
                ".git",
                "-prune",
                "-o",
                "-type",
                "f",
                "-print",
            ],
            None,
            None,
            vec![],
            60,
        );
        if let Some(f) = r.failure {
            return ToolOutput::err(f);
        }
        if r.code != Some(0) {
            return ToolOutput::err(format!("cannot list {root}: {}", r.stderr.trim()));
        }
        let mut files: Vec<&str> = r.stdout.lines().collect();
        files.sort_unstable();
        // Honour every .gitignore found, each relative to its own directory.
        let mut matchers = Vec::new();
        for gi in files
            .iter()
            .filter(|f| f.ends_with("/.gitignore") || **f == ".gitignore")
        {
            let dir = std::path::Path::new(gi)
                .parent()
                .unwrap_or(std::path::Path::new(""));
            let mut b = ignore::gitignore::GitignoreBuilder::new(dir);
            if let Ok(text) = self.cat(gi) {
                for line in text.lines() {
                    let _ = b.add_line(None, line);
                }
            }
            if let Ok(m) = b.build() {
                matchers.push(m);
            }
        }
        let kept: Vec<&str> = files
            .into_iter()
            .filter(|f| {
                !matchers.iter().any(|m| {
                    f.starts_with(m.path().to_str().unwrap_or(""))
                        && m.matched_path_or_any_parents(f, false).is_ignore()
                })
            })
            .collect();
        let mut out = kept.join("\n");
        out.push('\n');
        self.truncate(out)
    }

    fn grep(&self, a: Grep) -> ToolOutput {
        let root = a.path.unwrap_or_else(|| ".".into());
        let mut argv = vec!["/bin/grep", "-rnIE", "--exclude-dir=.git"];
        if a.ignore_case {
            argv.push("-i");
        }
        let include = a.glob.map(|g| format!("--include={g}"));
        if let Some(i) = &include {
            argv.push(i);
        }
        let start = cell_arg(&root);
        argv.extend(["--", &a.pattern, &start]);
        let r = self.run(&argv, None, None, vec![], 60);
        match (r.failure, r.code) {
            (Some(f), _) => ToolOutput::err(f),
            (None, Some(0)) => self.truncate(r.stdout),
            (None, Some(1)) => ToolOutput::ok("no matches"),
            _ => ToolOutput::err(format!("grep failed: {}", r.stderr.trim())),
        }
    }

    /// `finish`: `/task/result.json` gets the summary and success, kept beside whatever
    /// structured result the agent wrote there first (a JSON object); then the validators,
    /// if any, judge it.
    fn finish(&self, call_id: &str, a: Finish) -> ToolOutput {
        let mut result = match self.cat(RESULT_FILE) {
            Ok(t) if t.len() <= MAX_RESULT_BYTES => match serde_json::from_str::<Value>(&t) {
                Ok(Value::Object(m)) => Value::Object(m),
                _ => json!({}),
            },
            _ => json!({}),
        };
        result["summary"] = Value::String(a.summary);
        result["success"] = Value::Bool(a.success.unwrap_or(true));
        let text = serde_json::to_string_pretty(&result).unwrap_or_default() + "\n";
        if let Err(e) = self.write(RESULT_FILE, &text) {
            return ToolOutput::err(e.to_string());
        }
        let verdict = match &self.finish_check {
            Some(c) if result["success"] == Value::Bool(true) => c.check(call_id, &result),
            // A task that says it failed is not judged: it ends as failed.
            _ => Verdict::Pass,
        };
        match verdict {
            Verdict::Pass => ToolOutput {
                finished: Some(result),
                ..ToolOutput::ok("task finished")
            },
            Verdict::Retry(why) => ToolOutput::err(why),
            Verdict::Fail(why) => {
                result["success"] = Value::Bool(false);
                result["claimed"] = result["summary"].take();
                result["summary"] = Value::String(why);
                ToolOutput {
                    finished: Some(result),
                    ..ToolOutput::ok("task finished: validation failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_workspace_as_the_cell_will() {
        for (given, abs, arg) in [
            ("src/main.rs", "/workspace/src/main.rs", "src/main.rs"),
            ("./src//main.rs/", "/workspace/src/main.rs", "src/main.rs"),
            (
                "../workspace/docs/evil.sh",
                "/workspace/docs/evil.sh",
                "docs/evil.sh",
            ),
            ("/workspace/../workspace/x", "/workspace/x", "/workspace/x"),
            (
                "src/../secrets/key",
                "/workspace/secrets/key",
                "secrets/key",
            ),
            ("../../../etc/passwd", "/etc/passwd", "/etc/passwd"),
            ("..", "/", "/"),
            (".", "/workspace", "."),
            ("", "/workspace", "."),
            ("/", "/", "/"),
            ("/tmp/../workspace", "/workspace", "."),
            ("-delete", "/workspace/-delete", "./-delete"),
            ("/workspacex/y", "/workspacex/y", "/workspacex/y"),
        ] {
            assert_eq!(resolve_path(given), abs, "{given:?}");
            assert_eq!(cell_arg(given), arg, "{given:?}");
        }
    }
}
