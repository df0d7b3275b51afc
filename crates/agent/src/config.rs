//! What one task may do: its model, its prompt and its limits ([`AgentConfig`]).
//!
//! The limits are enforced by [`crate::budget`] before every turn; the tool list by
//! [`crate::gating`] (a tool not in it is neither offered nor accepted); the context-window
//! settings by [`crate::context`].

use std::time::Duration;

/// Limits and model settings of one task.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Model name (passed through).
    pub model: String,
    /// System prompt.
    pub system_prompt: String,
    /// At most this many model turns.
    pub max_turns: u32,
    /// Wall-clock limit.
    pub max_wall: Duration,
    /// Stop once this many tokens (input + output) were used.
    pub budget_tokens: Option<u64>,
    /// `max_tokens` of each model call.
    pub max_tokens_per_turn: u32,
    /// Identical failing calls tolerated before the task is stopped.
    pub max_repeated_failures: u32,
    /// Answers without a tool call that are met with a nudge ("call a tool or finish")
    /// before one more ends the task.
    pub max_nudges: u32,
    /// Take tool calls a model wrote as text (`<tool_call>` tags, a fenced JSON call, a
    /// Llama-style JSON message) as calls, when the response has none (`crate::textcalls`):
    /// for OpenAI-compatible servers, whose small local models do that.
    pub text_tool_calls: bool,
    /// The model's context window in tokens (from the catalog).
    pub context_window: u32,
    /// Summarize older turns once a request would fill this fraction of the window.
    pub summarize_at: f64,
    /// Messages at the end of the conversation always kept verbatim.
    pub keep_recent: usize,
    /// Cost budget in USD, priced by `prices` (the model's catalog entry).
    pub budget_usd: Option<f64>,
    /// Prices of the model, for the cost budget.
    pub prices: Option<warren_llm::catalog::ModelInfo>,
    /// Only these tools are offered and accepted (a manifest's `tools`); `finish` always is.
    /// `None`: every tool.
    pub tools: Option<Vec<String>>,
    /// Destinations the task's cell may reach through its egress proxy (empty: no network).
    /// The shell tool's description says so; the default system prompt comes from
    /// [`system_prompt`] with the same list.
    pub network: Vec<String>,
}

/// The default system prompt. It contains nothing that varies between machines or runs, so a
/// recorded transcript replays anywhere.
pub const SYSTEM_PROMPT: &str = "You are Warren's coding agent. You work inside an isolated cell: \
the project is at /workspace (a copy-on-write view: your changes are reviewed by a person before \
they are applied), /tmp is scratch space, /task/spec.json describes the task, and there is no \
network. Use the tools to inspect and change files and to run commands. Keep changes minimal and \
focused on the goal. When the goal is reached, or you cannot make progress, call finish with a \
short summary.";

/// The default system prompt for a cell whose egress proxy allows `network`: exactly
/// [`SYSTEM_PROMPT`] without network (recorded transcripts of such tasks replay unchanged);
/// with network, it names the proxy, the destinations it allows and `/cap/http`.
pub fn system_prompt(network: &[String]) -> String {
    if network.is_empty() {
        return SYSTEM_PROMPT.into();
    }
    SYSTEM_PROMPT.replacen(
        "and there is no network.",
        &format!(
            "and the network is reachable only through an HTTP(S) proxy (HTTP_PROXY and \
HTTPS_PROXY are set; curl, pip, git and most tools use them) that allows these destinations and \
nothing else: {}. /cap/http offers the same requests as files (see /cap/http/README).",
            network.join(", ")
        ),
        1,
    )
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            model: String::new(),
            system_prompt: SYSTEM_PROMPT.into(),
            max_turns: 30,
            max_wall: Duration::from_secs(30 * 60),
            budget_tokens: None,
            max_tokens_per_turn: 4096,
            max_repeated_failures: 3,
            max_nudges: 1,
            text_tool_calls: false,
            context_window: 128_000,
            summarize_at: 0.85,
            keep_recent: 6,
            tools: None,
            budget_usd: None,
            prices: None,
            network: Vec::new(),
        }
    }
}
