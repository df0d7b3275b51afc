//! Limits: what a task may spend, checked before every turn, and the guard against a model
//! that keeps repeating a failing call.
//!
//! [`Budget::check`] runs before each turn, in this order: the wall clock (no appeal), then
//! the token budget and the cost budget. When one of the two budgets is reached the
//! [`Gate`] is asked ([`Gate::over_budget`]: in the daemon, a person may approve as much
//! again); a refusal, or a journal still replaying (nobody is asked twice for a recorded
//! turn), stops the task. A stop is not an error: the run ends with
//! [`crate::Outcome::Stopped`] and the reason. The turn limit is the loop's own bound
//! (`1..=max_turns`, in `lib.rs`).
//!
//! Usage counts every model call, the summaries of [`crate::context`] included, and turns
//! replayed from the journal (they were paid for once).

use std::collections::HashMap;
use std::time::Instant;

use warren_llm::catalog::ModelInfo;
use warren_llm::{ToolCall, Usage};

use crate::config::AgentConfig;
use crate::gating::Gate;

/// What one run has spent, against what it may.
pub(crate) struct Budget<'a> {
    config: &'a AgentConfig,
    started: Instant,
    total: Usage,
    /// The token budget now (raised when a person approves more).
    tokens: Option<u64>,
    /// The cost budget now, in USD (raised likewise).
    usd: Option<f64>,
}

impl<'a> Budget<'a> {
    /// The limits of `config`, with the clock starting now.
    pub(crate) fn start(config: &'a AgentConfig) -> Self {
        Budget {
            config,
            started: Instant::now(),
            total: Usage::default(),
            tokens: config.budget_tokens,
            usd: config.budget_usd,
        }
    }

    /// Count a model call's usage.
    pub(crate) fn charge(&mut self, usage: Usage) {
        self.total = self.total.plus(usage);
    }

    /// Tokens used so far.
    pub(crate) fn total(&self) -> Usage {
        self.total
    }

    /// Before a turn: `None` goes on, `Some(reason)` stops the task. `live` is false while
    /// the journal replays (no person is asked then).
    pub(crate) async fn check(&mut self, live: bool, gate: &dyn Gate) -> Option<String> {
        let config = self.config;
        if self.started.elapsed() > config.max_wall {
            return Some(format!("wall-clock limit of {:?} reached", config.max_wall));
        }
        let used = self.total.input_tokens + self.total.output_tokens;
        if let Some(b) = self.tokens
            && used >= b
            && live
            && gate
                .over_budget(&format!("the token budget of {b} is reached ({used} used)"))
                .await
        {
            // A person approved going on: as much again.
            self.tokens = Some(used + config.budget_tokens.unwrap_or(b));
        }
        if let (Some(limit), Some(prices)) = (self.usd, &config.prices) {
            let cost = cost(self.total, prices);
            if cost >= limit {
                if live
                    && gate
                        .over_budget(&format!(
                            "the cost budget of ${limit:.2} is reached (${cost:.4} spent)"
                        ))
                        .await
                {
                    self.usd = Some(cost + config.budget_usd.unwrap_or(limit));
                } else {
                    return Some(format!(
                        "cost budget of ${limit:.2} reached (${cost:.4} spent)"
                    ));
                }
            }
        }
        if let Some(b) = self.tokens
            && used >= b
        {
            return Some(format!("token budget of {b} reached"));
        }
        None
    }
}

/// What `usage` cost in USD at `prices` (cached input at its own price).
fn cost(usage: Usage, prices: &ModelInfo) -> f64 {
    let fresh = usage.input_tokens.saturating_sub(usage.cached_input_tokens) as f64;
    (fresh * prices.input_per_mtok
        + usage.cached_input_tokens as f64 * prices.cached_input_per_mtok
        + usage.output_tokens as f64 * prices.output_per_mtok)
        / 1e6
}

/// `v` as compact JSON with every object's keys sorted.
fn canonical(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::from(k.as_str()),
                        canonical(&m[k])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

/// Stops a task whose model keeps making the same failing call (same tool, same arguments),
/// across turns. Arguments are compared as parsed JSON with object keys in order, so spacing
/// and key order do not make a repeated call look new; text that is not JSON is compared as
/// written.
pub(crate) struct RepeatGuard {
    max: u32,
    failures: HashMap<String, u32>,
}

impl RepeatGuard {
    /// Tolerate `max - 1` repetitions of a failing call.
    pub(crate) fn new(max: u32) -> Self {
        RepeatGuard {
            max,
            failures: HashMap::new(),
        }
    }

    /// `call` failed (again): `Some(reason)` when that is once too often.
    pub(crate) fn failed(&mut self, call: &ToolCall) -> Option<String> {
        let args = serde_json::from_str::<serde_json::Value>(&call.arguments)
            .map(|v| canonical(&v))
            .unwrap_or_else(|_| call.arguments.clone());
        let n = self
            .failures
            .entry(format!("{}\u{0}{args}", call.name))
            .or_insert(0);
        *n += 1;
        (*n >= self.max).then(|| {
            format!(
                "the same failing {} call was repeated {} times",
                call.name, n
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn the_same_call_with_other_spacing_or_key_order_is_a_repeat() {
        let mut g = RepeatGuard::new(3);
        assert!(
            g.failed(&call("shell", r#"{"command":"make","cwd":"/w"}"#))
                .is_none()
        );
        assert!(
            g.failed(&call("shell", r#"{ "cwd": "/w",  "command": "make" }"#))
                .is_none()
        );
        let stop = g.failed(&call(
            "shell",
            "{\n\"command\": \"make\", \"cwd\": \"/w\"\n}",
        ));
        assert!(stop.is_some_and(|r| r.contains("repeated 3 times")));
        // Another argument, or another tool, is another call.
        let mut g = RepeatGuard::new(2);
        assert!(g.failed(&call("shell", r#"{"command":"make"}"#)).is_none());
        assert!(
            g.failed(&call("shell", r#"{"command":"make test"}"#))
                .is_none()
        );
        assert!(g.failed(&call("grep", r#"{"command":"make"}"#)).is_none());
        assert!(g.failed(&call("shell", "not json")).is_none());
        assert!(g.failed(&call("shell", "not json")).is_some());
    }
}
