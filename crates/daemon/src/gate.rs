//! The host's choke point for one task ([`TaskGate`], the agent's [`Gate`]): every tool call is
//! checked against the task's [`Capabilities`] and, with every model call, appended to the
//! hash-chained audit log — arguments and errors with secrets redacted ([`Redactor`]).

use std::sync::Arc;

use serde_json::{Value, json};
use warren_agent::{Gate, ModelCallRecord, ToolCallRecord};
use warren_store::Store;

use crate::policy::Capabilities;

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
            eprintln!("warren: audit: {kind}: {e}");
        }
    }
}

/// One task's gate.
pub struct TaskGate {
    task: String,
    caps: Capabilities,
    audit: Auditor,
}

impl TaskGate {
    /// The gate of `task` with `caps`.
    pub fn new(task: impl Into<String>, caps: Capabilities, audit: Auditor) -> Self {
        TaskGate {
            task: task.into(),
            caps,
            audit,
        }
    }
}

impl Gate for TaskGate {
    fn check(&self, tool: &str, args: &Value) -> Result<String, String> {
        self.caps.check(tool, args)
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
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
