//! The host's choke point for one task ([`TaskGate`], the agent's [`Gate`]): every tool call is
//! checked against the task's [`Capabilities`] and, with every model call, appended to the
//! hash-chained audit log — arguments and errors with secrets redacted ([`Redactor`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobMatcher};

use serde_json::{Value, json};
use warren_agent::{Gate, ModelCallRecord, ToolCallRecord};
use warren_protocol::api::EventKind;
use warren_store::{Store, TaskState};

use crate::capabilities::Capabilities;

/// Replaces secrets in text before it is stored: the values of the process's secret-looking
/// variables (keys, tokens, passwords) and well-known key shapes (`sk-…`, `ghp_…`, `AKIA…`,
/// `xoxb-…`, `Bearer …`).
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

/// What a redacted secret becomes.
pub const REDACTED: &str = "[REDACTED]";

const SHAPES: &[(&str, usize)] = &[
    ("sk-", 16),
    ("ghp_", 20),
    ("gho_", 20),
    ("github_pat_", 20),
    ("xoxb-", 10),
    ("xoxp-", 10),
    ("AKIA", 16),
    ("Bearer ", 12),
];

impl Redactor {
    /// Secrets from environment variables whose names say they hold one.
    pub fn from_env<'a>(vars: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let mut secrets: Vec<String> = vars
            .into_iter()
            .filter(|(k, v)| {
                let k = k.to_ascii_uppercase();
                v.len() >= 8
                    && ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL"]
                        .iter()
                        .any(|w| k.contains(w))
            })
            .map(|(_, v)| v.clone())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// Also redact `secret`.
    pub fn add(&mut self, secret: &str) {
        if secret.len() >= 8 {
            self.secrets.push(secret.to_owned());
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        for (prefix, min) in SHAPES {
            let mut from = 0;
            while let Some(i) = out[from..].find(prefix) {
                let start = from + i;
                let body = start + prefix.len();
                let len = out[body..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.=/+".contains(c)))
                    .unwrap_or(out.len() - body);
                if len >= *min {
                    out.replace_range(start..body + len, REDACTED);
                    from = start + REDACTED.len();
                } else {
                    from = body;
                }
            }
        }
        out
    }
}

/// Appends to the audit log; failures are reported, never fatal to a task.
#[derive(Clone)]
pub struct Auditor {
    store: Arc<dyn Store>,
    redactor: Arc<Redactor>,
}

impl Auditor {
    /// An auditor writing to `store`.
    pub fn new(store: Arc<dyn Store>, redactor: Arc<Redactor>) -> Self {
        Auditor { store, redactor }
    }

    /// The redactor in use.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Append one record (its text redacted).
    pub fn record(&self, task: Option<&str>, kind: &str, data: &Value) {
        let text = self.redactor.redact(&data.to_string());
        let data: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if let Err(e) = self.store.audit_append(task, kind, &data) {
            tracing::warn!("audit: {kind}: {e}");
        }
    }
}

/// A person's decision on a paused task.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Run the call (or continue past the budget).
    pub approve: bool,
    /// Remember it as a rule for this agent (tool and this exact argument).
    pub remember: bool,
    /// Why (shown to the model on a denial).
    pub reason: String,
    /// Who decided (`cli`, `api`, `timeout`).
    pub by: String,
}

/// Why a decision could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The task waits for no decision.
    #[error("task {0} is not waiting for approval")]
    NotWaiting(String),
    /// The task stopped waiting (it ended) before the decision arrived.
    #[error("task {0} stopped waiting")]
    Stopped(String),
}

/// What a paused task waits for (the API's view of it).
pub type PendingView = warren_protocol::api::ApprovalView;

struct Pending {
    view: PendingView,
    tx: tokio::sync::oneshot::Sender<Decision>,
}

/// Tasks waiting for a person, shared by the daemon and its tasks' gates.
pub struct Desk {
    pending: std::sync::Mutex<std::collections::HashMap<String, Pending>>,
    /// No decision within this long denies.
    pub timeout: Duration,
}

impl Desk {
    /// A desk whose requests time out (deny) after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Desk {
            pending: Default::default(),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `task` waits for, if anything.
    pub fn pending(&self, task: &str) -> Option<PendingView> {
        self.lock().get(task).map(|p| p.view.clone())
    }

    /// Decide for a waiting task; `Err` when it waits for nothing.
    pub fn decide(&self, task: &str, d: Decision) -> Result<PendingView, DecideError> {
        let p = self
            .lock()
            .remove(task)
            .ok_or_else(|| DecideError::NotWaiting(task.to_owned()))?;
        let view = p.view.clone();
        p.tx.send(d)
            .map_err(|_| DecideError::Stopped(task.to_owned()))?;
        Ok(view)
    }

    /// Forget what `task` waited for (it stopped).
    pub fn withdraw(&self, task: &str) {
        self.lock().remove(task);
    }
}

/// Approval settings of one task.
pub struct Approvals {
    /// The shared desk.
    pub desk: Arc<Desk>,
    /// The agent (remembered rules are per agent).
    pub agent: String,
    /// `approval_required` entries: tool, optional glob over the main argument.
    pub required: Vec<(String, Option<GlobMatcher>)>,
    /// Pause for a person when the token budget is reached (else stop).
    pub pause_on_budget: bool,
    /// Wakes event streams after the gate writes events.
    pub notify: Arc<dyn Fn() + Send + Sync>,
    /// MCP tools that wait for a person by their server's annotations (destructive, or not
    /// marked read-only or non-destructive): tool → reason. Empty when the operator's policy
    /// turns annotation approvals off.
    pub annotated: HashMap<String, String>,
}

impl Approvals {
    /// Parse `approval_required` entries (`tool` or `tool:GLOB`).
    pub fn required_from(entries: &[String]) -> Vec<(String, Option<GlobMatcher>)> {
        entries
            .iter()
            .map(|e| match e.split_once(':') {
                Some((t, g)) => (t.to_owned(), Glob::new(g).ok().map(|g| g.compile_matcher())),
                None => (e.clone(), None),
            })
            .collect()
    }
}

/// Why a call of `tool` with `args` needs a person under `required` (`approval_required`
/// entries), if it does.
///
/// A rule with a glob over a shell command matches each simple command the command line runs
/// (`true; git push` matches `git push*`), and anything the shell parser cannot see through
/// asks under every shell rule (`crate::shellcmd`). A rule over a file tool's path matches the
/// path as given, as the workspace-relative path it resolves to, and as the absolute path in
/// the cell (`./src/x`, `../workspace/src/x` and `/workspace/src/x` all match `src/*`).
pub fn approval_reason(
    required: &[(String, Option<GlobMatcher>)],
    tool: &str,
    args: &Value,
) -> Option<String> {
    let arg = main_argument(tool, args);
    let mut seen = None;
    for (_, glob) in required
        .iter()
        .filter(|(t, _)| warren_protocol::tools::entry_covers(t, tool))
    {
        let Some(g) = glob else {
            return Some(format!("{tool} calls need a person's approval"));
        };
        let why = if tool == "shell" {
            let seen = seen.get_or_insert_with(|| crate::shellcmd::analyze(&arg));
            crate::shellcmd::rule_matches(g, &arg, seen)
        } else {
            argument_forms(tool, args, &arg)
                .into_iter()
                .find(|f| g.is_match(f))
                .map(|f| format!("{f:?} matches {:?}", g.glob().glob()))
        };
        if let Some(why) = why {
            return Some(format!(
                "{tool} calls matching {:?} need a person's approval: {why}",
                g.glob().glob()
            ));
        }
    }
    None
}

/// The forms a rule's glob is tried on: the main argument as given and, for a file tool's
/// path, where it resolves (relative to the workspace when inside it, and absolute).
fn argument_forms(tool: &str, args: &Value, arg: &str) -> Vec<String> {
    let mut forms = vec![arg.to_owned()];
    if matches!(
        tool,
        "read_file" | "write_file" | "edit_file" | "list_files" | "grep"
    ) && let Some(path) = args["path"].as_str()
    {
        forms.push(path.to_owned());
        forms.push(warren_agent::tools::resolve_path(path));
        forms.extend(crate::capabilities::workspace_relative(path));
    }
    forms.dedup();
    forms
}

/// The pattern a remembered approval is stored under: the exact argument, glob-escaped (the
/// store keeps globs). Matching compares this text, never the glob: a remembered rule
/// approves that argument and nothing else.
pub fn remembered_pattern(argument: &str) -> String {
    globset::escape(argument)
}

/// The argument a person judges a call by (and remembered rules match): a built-in tool's
/// command, path or pattern; an MCP tool's whole arguments as compact JSON (its `path` means
/// whatever its server says), so a remembered approval covers exactly those arguments.
pub fn main_argument(tool: &str, args: &Value) -> String {
    if tool.starts_with(warren_protocol::tools::MCP_PREFIX) {
        return args.to_string();
    }
    ["command", "path", "pattern"]
        .iter()
        .find_map(|k| args[k].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// One task's gate.
pub struct TaskGate {
    task: String,
    caps: Capabilities,
    audit: Auditor,
    store: Arc<dyn Store>,
    approvals: Option<Approvals>,
    audit_prompts: bool,
}

impl TaskGate {
    /// The gate of `task` with `caps`.
    pub fn new(task: impl Into<String>, caps: Capabilities, audit: Auditor) -> Self {
        let store = Arc::clone(&audit.store);
        TaskGate {
            task: task.into(),
            caps,
            audit,
            store,
            approvals: None,
            audit_prompts: false,
        }
    }

    /// Keep each model call's prompt (system prompt and messages, redacted) in the audit log.
    pub fn with_audit_prompts(mut self, on: bool) -> Self {
        self.audit_prompts = on;
        self
    }

    /// Pause calls that need a person.
    pub fn with_approvals(mut self, a: Approvals) -> Self {
        self.approvals = Some(a);
        self
    }

    /// Pause the task until a person decides (or the desk's timeout denies).
    async fn wait_for_person(&self, view: PendingView) -> Decision {
        let Some(a) = &self.approvals else {
            return Decision {
                approve: false,
                remember: false,
                reason: "nobody can approve here".into(),
                by: "none".into(),
            };
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        a.desk.lock().insert(
            self.task.clone(),
            Pending {
                view: view.clone(),
                tx,
            },
        );
        let why = format!(
            "waiting for approval: {} {}",
            view.tool,
            self.audit.redactor().redact(&view.argument)
        );
        let paused = self
            .store
            .transition(&self.task, TaskState::AwaitingApproval, Some(&why));
        let data = serde_json::to_value(&view).unwrap_or_default();
        self.audit
            .record(Some(&self.task), "approval.requested", &data);
        let text = self.audit.redactor().redact(&data.to_string());
        if let Err(e) = self.store.append_event(
            Some(&self.task),
            EventKind::ApprovalRequested.as_str(),
            &serde_json::from_str(&text).unwrap_or_default(),
        ) {
            tracing::warn!("task {}: recording approval.requested: {e}", self.task);
        }
        (a.notify)();
        let decision = if let Err(e) = paused {
            Decision {
                approve: false,
                remember: false,
                reason: e.to_string(),
                by: "daemon".into(),
            }
        } else {
            match tokio::time::timeout(a.desk.timeout, rx).await {
                Ok(Ok(d)) => d,
                Ok(Err(_)) => Decision {
                    approve: false,
                    remember: false,
                    reason: "the request was withdrawn".into(),
                    by: "daemon".into(),
                },
                Err(_) => Decision {
                    approve: false,
                    remember: false,
                    reason: format!("no decision within {:?}", a.desk.timeout),
                    by: "timeout".into(),
                },
            }
        };
        a.desk.withdraw(&self.task);
        let back = if decision.approve {
            format!("approved by {}", decision.by)
        } else {
            format!("denied by {}: {}", decision.by, decision.reason)
        };
        if let Err(e) = self
            .store
            .transition(&self.task, TaskState::Running, Some(&back))
        {
            // Cancelled (or taken over) while it waited: the runner's stop ends the task.
            tracing::info!(
                "task {}: back to running after the decision: {e}",
                self.task
            );
        }
        self.audit.record(
            Some(&self.task),
            "approval.decided",
            &json!({"call_id": view.call_id, "tool": view.tool, "argument": view.argument,
                    "approved": decision.approve, "remember": decision.remember,
                    "by": decision.by, "reason": decision.reason}),
        );
        if let Err(e) = self.store.append_event(
            Some(&self.task),
            EventKind::ApprovalDecided.as_str(),
            &json!({"approved": decision.approve, "by": decision.by, "reason": decision.reason}),
        ) {
            tracing::warn!("task {}: recording approval.decided: {e}", self.task);
        }
        (a.notify)();
        if decision.approve && decision.remember && view.tool != "budget" {
            let pattern = remembered_pattern(&view.argument);
            if let Ok(rule) = self.store.add_approval_rule(&a.agent, &view.tool, &pattern) {
                self.audit.record(
                    Some(&self.task),
                    "approval.remembered",
                    &json!({"rule": rule.id, "agent": rule.agent, "tool": rule.tool, "pattern": rule.pattern}),
                );
            }
        }
        decision
    }
}

#[async_trait::async_trait]
impl Gate for TaskGate {
    fn check(&self, tool: &str, args: &Value) -> Result<String, String> {
        self.caps.check(tool, args)
    }

    fn needs_approval(&self, tool: &str, args: &Value) -> Option<String> {
        let a = self.approvals.as_ref()?;
        approval_reason(&a.required, tool, args).or_else(|| a.annotated.get(tool).cloned())
    }

    async fn ask(
        &self,
        call_id: &str,
        tool: &str,
        args: &Value,
        reason: &str,
    ) -> Result<(), String> {
        let argument = main_argument(tool, args);
        if let Some(a) = &self.approvals {
            let rules = self
                .store
                .approval_rules(Some(&a.agent))
                .unwrap_or_default();
            // Exact: the stored text is this argument's, escaped (`remembered_pattern`). Not
            // a glob match: globset's escape leaves `\` alone, so an escaped `ls \*` would
            // match as the glob `ls \[*]`, any `ls [...]`.
            let exact = remembered_pattern(&argument);
            if let Some(rule) = rules.iter().find(|r| r.tool == tool && r.pattern == exact) {
                self.audit.record(
                    Some(&self.task),
                    "approval.decided",
                    &json!({"call_id": call_id, "tool": tool, "argument": argument,
                            "approved": true, "by": format!("rule {}", rule.id)}),
                );
                return Ok(());
            }
        }
        let d = self
            .wait_for_person(PendingView {
                call_id: call_id.to_owned(),
                tool: tool.to_owned(),
                argument,
                reason: reason.to_owned(),
            })
            .await;
        if d.approve { Ok(()) } else { Err(d.reason) }
    }

    async fn over_budget(&self, what: &str) -> bool {
        if !self.approvals.as_ref().is_some_and(|a| a.pause_on_budget) {
            return false;
        }
        self.wait_for_person(PendingView {
            call_id: String::new(),
            tool: "budget".into(),
            argument: what.to_owned(),
            reason: format!("{what}; approve to allow as much again"),
        })
        .await
        .approve
    }

    fn tool_call(&self, c: &ToolCallRecord<'_>) {
        let (allowed, capability, reason) = match c.decision {
            Ok(cap) => (true, Some(cap), None),
            Err(r) => (false, None, Some(r.lines().next().unwrap_or_default())),
        };
        self.audit.record(
            Some(&self.task),
            "tool.call",
            &json!({
                "turn": c.turn,
                "call_id": c.call_id,
                "tool": c.tool,
                "arguments": c.arguments,
                "decision": if allowed { "allowed" } else { "refused" },
                "capability": capability,
                "reason": reason,
                "cell": c.cell,
                "duration_ms": c.duration.as_secs_f64() * 1000.0,
                "is_error": c.is_error,
                "bytes": c.bytes,
            }),
        );
    }

    fn model_call(&self, c: &ModelCallRecord<'_>) {
        let prompt = self
            .audit_prompts
            .then(|| json!({"system": c.request.system, "messages": c.request.messages}));
        self.audit.record(
            Some(&self.task),
            "model.call",
            &json!({
                "turn": c.turn,
                "model": c.model,
                "input_tokens": c.usage.input_tokens,
                "cached_input_tokens": c.usage.cached_input_tokens,
                "output_tokens": c.usage.output_tokens,
                "latency_ms": c.latency.as_secs_f64() * 1000.0,
                "tool_calls": c.tool_calls,
                "error": c.error,
                "prompt": prompt,
            }),
        );
    }
}

/// Egress attempts of one task into the audit log.
pub struct EgressAudit {
    /// The task.
    pub task: String,
    /// Where records go.
    pub audit: Auditor,
}

impl warren_egress::Audit for EgressAudit {
    fn record(&self, a: &warren_egress::Attempt) {
        let (decision, reason) = match &a.decision {
            warren_egress::Decision::Allowed => ("allowed", None),
            warren_egress::Decision::Denied(r) => ("denied", Some(r.as_str())),
            warren_egress::Decision::Failed(r) => ("failed", Some(r.as_str())),
        };
        self.audit.record(
            Some(&self.task),
            "egress",
            &json!({"method": a.method, "host": a.host, "port": a.port,
                    "resolved": a.resolved, "dialed": a.dialed, "decision": decision,
                    "reason": reason, "bytes_up": a.bytes_up, "bytes_down": a.bytes_down,
                    "duration_ms": a.duration.as_secs_f64() * 1000.0}),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rules(entries: &[&str]) -> Vec<(String, Option<GlobMatcher>)> {
        Approvals::required_from(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn approval_rules_match_each_simple_command_and_every_form_of_a_path() {
        let r = rules(&["shell:git push*", "write_file:src/*", "read_file"]);
        let shell = |c: &str| approval_reason(&r, "shell", &json!({"command": c}));
        // The reproduced bypass, and its control.
        let why = shell("true; git push origin main").unwrap();
        assert!(why.contains("git push origin main"), "{why}");
        assert_eq!(shell("git status"), None);
        assert!(shell("git -C . push").is_some());
        assert!(shell("$X push").unwrap().contains("cannot see"));
        // Paths: as given, resolved in the workspace, absolute.
        let write = |p: &str| approval_reason(&r, "write_file", &json!({"path": p, "content": ""}));
        for p in [
            "src/x",
            "./src/x",
            "../workspace/src/x",
            "/workspace/src/x",
            "docs/../src/x",
        ] {
            assert!(write(p).is_some(), "{p}");
        }
        assert_eq!(write("docs/x"), None);
        // A rule without a glob asks for every call of its tool; other tools are untouched.
        assert!(approval_reason(&r, "read_file", &json!({"path": "x"})).is_some());
        assert_eq!(
            approval_reason(&r, "grep", &json!({"pattern": "git push"})),
            None
        );
        // An absolute glob matches a relative path that resolves there.
        let abs = rules(&["edit_file:/workspace/secrets/**"]);
        assert!(approval_reason(&abs, "edit_file", &json!({"path": "secrets/k"})).is_some());
        // A glob that does not parse asks for every call of its tool (fail closed).
        let bad = rules(&["shell:[unclosed"]);
        assert!(approval_reason(&bad, "shell", &json!({"command": "ls"})).is_some());
    }

    #[tokio::test]
    async fn a_remembered_approval_matches_its_exact_argument_only() {
        use warren_store::sqlite::SqliteStore;
        let t = warren_testkit::TempDir::new("gate-remembered");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&t.path().join("w.db")).unwrap());
        let remembered = "ls \\*";
        let pattern = remembered_pattern(remembered);
        // As a glob the escaped text is wider than the argument: `\[*]` is `[`, anything, `]`.
        let other = "ls [; git push]";
        assert!(
            Glob::new(&pattern)
                .unwrap()
                .compile_matcher()
                .is_match(other)
        );
        store.add_approval_rule("coder", "shell", &pattern).unwrap();
        let desk = Arc::new(Desk::new(Duration::from_millis(50)));
        let gate = TaskGate::new(
            "t-none",
            Capabilities::new(
                crate::capabilities::Layer::unrestricted("m"),
                crate::capabilities::Layer::unrestricted("p"),
            ),
            Auditor::new(Arc::clone(&store), Arc::new(Redactor::default())),
        )
        .with_approvals(Approvals {
            desk,
            agent: "coder".into(),
            required: rules(&["shell"]),
            pause_on_budget: false,
            notify: Arc::new(|| {}),
            annotated: HashMap::new(),
        });
        for (command, approved) in [
            (remembered, true),
            (other, false),
            ("ls \\* ; git push", false),
            ("ls", false),
        ] {
            let args = json!({"command": command});
            let got = gate.ask("c1", "shell", &args, "test").await;
            assert_eq!(got.is_ok(), approved, "{command}: {got:?}");
        }
    }

    #[test]
    fn known_values_and_key_shapes_are_redacted() {
        let k = "OPENAI_API_KEY".to_owned();
        let v = "plain-secret-value-123".to_owned();
        let path = "PATH".to_owned();
        let pv = "/usr/bin:/bin".to_owned();
        let r = Redactor::from_env([(&k, &v), (&path, &pv)]);
        let out = r.redact(
            "curl -H 'Authorization: Bearer abcdefghijklmnop' --key plain-secret-value-123 \
             sk-proj-AAAAAAAAAAAAAAAAAAAA AKIAABCDEFGHIJKLMNOP ghp_short /usr/bin:/bin",
        );
        assert!(!out.contains("plain-secret-value-123"), "{out}");
        assert!(!out.contains("abcdefghijklmnop"), "{out}");
        assert!(!out.contains("sk-proj-AAAA"), "{out}");
        assert!(!out.contains("AKIAABCDEFGHIJKLMNOP"), "{out}");
        assert!(out.contains("ghp_short"), "too short to be a token: {out}");
        assert!(
            out.contains("/usr/bin:/bin"),
            "not a secret variable: {out}"
        );
    }
}
