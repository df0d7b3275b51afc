//! A manifest's validators: what a task's `finish` must pass before the task ends.
//!
//! `validate:` lists checks, run in order when the agent calls `finish` (saying it succeeded):
//! a command in the task's cell that must exit 0, a JSON Schema over `/task/result.json`, a
//! regular expression over that file's text, and a judge model that scores the result against
//! a rubric (`min_score`). The first failure goes back to the agent as `finish`'s result — it
//! works on and calls `finish` again — until `limits.validations` judgments have failed; then
//! the task ends as failed, with the last failure as its reason.
//!
//! Each judgment is one `finish` call: its verdict is that call's recorded result (so a
//! resumed task neither re-judges nor forgets a judgment), audited as `validation` with its
//! iteration and each check's outcome, and evented as `agent.validation`.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use warren_agent::tools::{FinishCheck, Verdict};
use warren_cell::{Cell, Collect, ExecSpec};
use warren_config::manifest::Validator;
use warren_llm::{ChatRequest, Message, Provider};
use warren_protocol::api::{AuditKind, EventKind};
use warren_store::CheckpointKind;

use crate::engine::{Engine, lock};

/// How a failed judgment's result starts (also how a resumed task counts earlier ones).
pub const VALIDATION_FAILED: &str = "validation failed";

/// Characters of a failing command's output the agent is shown.
const OUTPUT_TAIL: usize = 2000;

/// A task's validators, judging its `finish` calls.
pub(crate) struct Validation {
    pub(crate) engine: std::sync::Weak<Engine>,
    pub(crate) task: String,
    pub(crate) validators: Vec<Validator>,
    pub(crate) max: u32,
    pub(crate) cell: Arc<dyn Cell>,
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) model: String,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Failed judgments so far (counted from the journal on resume).
    pub(crate) failed: Mutex<u32>,
}

/// Failed judgments recorded in a task's checkpoints.
pub(crate) fn failed_so_far(store: &dyn warren_store::Store, task: &str) -> u32 {
    store
        .checkpoints(task)
        .unwrap_or_default()
        .iter()
        .filter(|c| c.kind == CheckpointKind::ToolResult)
        .filter(|c| {
            c.payload["is_error"] == Value::Bool(true)
                && c.payload["content"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(VALIDATION_FAILED))
        })
        .count() as u32
}

fn tail(s: &str) -> String {
    let n = s.chars().count();
    if n <= OUTPUT_TAIL {
        return s.to_owned();
    }
    s.chars().skip(n - OUTPUT_TAIL).collect()
}

impl Validation {
    /// Run one check: `Ok(note)` or `Err(why it fails)`.
    fn run(&self, v: &Validator, result: &Value, text: &str) -> Result<String, String> {
        match v {
            Validator::Command { command, timeout } => {
                let spec = ExecSpec {
                    argv: vec!["/bin/sh".into(), "-c".into(), command.clone()],
                    env: Vec::new(),
                    cwd: None,
                    timeout_ms: Some(timeout.as_millis() as u64),
                    max_output_bytes: self.cell.max_output_bytes(),
                    stdin: false,
                };
                let mut out = Collect::default();
                let o = self
                    .cell
                    .exec(&spec, None, &mut out)
                    .map_err(|e| format!("the command `{command}` could not run: {e}"))?;
                if let Some((_, m)) = o.failure {
                    return Err(format!("the command `{command}` could not start: {m}"));
                }
                let output = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                match (o.exit.code, o.exit.timed_out) {
                    (_, true) => Err(format!(
                        "the command `{command}` timed out after {timeout:?}"
                    )),
                    (Some(0), _) => Ok(format!("`{command}` exited 0")),
                    (code, _) => Err(format!(
                        "the command `{command}` exited {}; its output ends:\n{}",
                        code.map_or_else(|| "on a signal".to_owned(), |c| c.to_string()),
                        tail(output.trim_end())
                    )),
                }
            }
            Validator::Schema(schema) => {
                let compiled = jsonschema::validator_for(schema)
                    .map_err(|e| format!("the schema does not compile: {e}"))?;
                let errors: Vec<String> = compiled
                    .iter_errors(result)
                    .take(5)
                    .map(|e| {
                        let at = e.instance_path().to_string();
                        format!(
                            "{}{e}",
                            if at.is_empty() {
                                String::new()
                            } else {
                                format!("{at}: ")
                            }
                        )
                    })
                    .collect();
                if errors.is_empty() {
                    Ok("/task/result.json matches the schema".into())
                } else {
                    Err(format!(
                        "/task/result.json does not match the schema: {}",
                        errors.join("; ")
                    ))
                }
            }
            Validator::Regex(re) => {
                let r = regex::Regex::new(re).map_err(|e| format!("regex: {e}"))?;
                if r.is_match(text) {
                    Ok(format!("the result matches /{re}/"))
                } else {
                    Err(format!("the result does not match /{re}/"))
                }
            }
            Validator::Judge {
                rubric,
                min_score,
                model,
            } => {
                let request = ChatRequest {
                    model: model.clone().unwrap_or_else(|| self.model.clone()),
                    system: "You judge an engineering agent's result against a rubric. Answer \
                             with one JSON object only: {\"score\": a number from 0 to 1, \
                             \"reason\": one sentence}."
                        .into(),
                    messages: vec![Message::User {
                        content: format!(
                            "Judge this result.\n\nRubric:\n{rubric}\n\nResult:\n{text}"
                        ),
                    }],
                    tools: Vec::new(),
                    max_tokens: 300,
                    temperature: Some(0.0),
                    stream: false,
                };
                let mut ignore = |_e: warren_llm::StreamEvent| {};
                let r = self
                    .runtime
                    .block_on(self.provider.chat(&request, &mut ignore))
                    .map_err(|e| format!("the judge's model failed: {e}"))?;
                let t = r.text.trim();
                let verdict: Value = match (t.find('{'), t.rfind('}')) {
                    (Some(a), Some(b)) if a < b => serde_json::from_str(&t[a..=b])
                        .map_err(|e| format!("the judge did not answer in JSON: {e}"))?,
                    _ => return Err("the judge did not answer in JSON".into()),
                };
                let score = verdict["score"].as_f64().ok_or("the judge gave no score")?;
                let reason = verdict["reason"].as_str().unwrap_or_default();
                if score >= *min_score {
                    Ok(format!(
                        "the judge scored {score:.2} (≥ {min_score}): {reason}"
                    ))
                } else {
                    Err(format!(
                        "the judge scored {score:.2}, below {min_score}: {reason}"
                    ))
                }
            }
        }
    }
}

impl FinishCheck for Validation {
    fn check(&self, call_id: &str, result: &Value) -> Verdict {
        let text = serde_json::to_string_pretty(result).unwrap_or_default();
        let mut checks = Vec::new();
        let mut failure = None;
        for v in &self.validators {
            let kind = match v {
                Validator::Command { .. } => "command",
                Validator::Schema(_) => "schema",
                Validator::Regex(_) => "regex",
                Validator::Judge { .. } => "judge",
            };
            match self.run(v, result, &text) {
                Ok(note) => checks.push(json!({"check": kind, "passed": true, "note": note})),
                Err(why) => {
                    checks.push(json!({"check": kind, "passed": false, "note": why}));
                    failure = Some(why);
                    break;
                }
            }
        }
        let iteration = {
            let mut f = lock(&self.failed);
            if failure.is_some() {
                *f += 1;
            }
            *f + u32::from(failure.is_none())
        };
        let verdict = match &failure {
            None => Verdict::Pass,
            Some(why) if iteration >= self.max => Verdict::Fail(format!(
                "{VALIDATION_FAILED} {iteration} times (at most {}); last: {why}",
                self.max
            )),
            Some(why) => Verdict::Retry(format!(
                "{VALIDATION_FAILED} (judgment {iteration} of at most {}): {why}\nFix this, then \
                 call finish again.",
                self.max
            )),
        };
        let data = json!({"call_id": call_id, "iteration": iteration, "passed": failure.is_none(),
            "final": !matches!(verdict, Verdict::Retry(_)), "checks": checks});
        if let Some(e) = self.engine.upgrade() {
            e.audit
                .record(Some(&self.task), AuditKind::Validation.as_str(), &data);
            e.event(&self.task, EventKind::AgentValidation, data);
        }
        verdict
    }
}
