//! Provider-neutral chat types: what the agent sends and what comes back.

use serde::{Deserialize, Serialize};

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Tool name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: serde_json::Value,
}

/// A tool call made by the model. `arguments` is the raw JSON text the model produced; it is
/// validated by the caller (it may be invalid).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Provider-assigned id, echoed in the result.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Raw JSON arguments.
    pub arguments: String,
}

/// One message of the conversation (the system prompt is separate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// From the user.
    User {
        /// Text.
        content: String,
    },
    /// From the model.
    Assistant {
        /// Text (may be empty when it only calls tools).
        #[serde(default)]
        text: String,
        /// Tool calls, possibly several in parallel.
        #[serde(default)]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    Tool {
        /// The call's id.
        call_id: String,
        /// Result text.
        content: String,
        /// Whether the tool failed.
        #[serde(default)]
        is_error: bool,
    },
}

/// A request to a chat model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model name, passed through as is.
    pub model: String,
    /// System prompt (the stable prefix; cached where the provider supports it).
    pub system: String,
    /// Conversation so far.
    pub messages: Vec<Message>,
    /// Tools offered.
    pub tools: Vec<ToolSpec>,
    /// Upper bound on output tokens.
    pub max_tokens: u32,
    /// Sampling temperature, if set.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Stream the response (the default); `false` asks for one JSON response.
    #[serde(default = "yes")]
    pub stream: bool,
}

fn yes() -> bool {
    true
}

/// Token usage, from the provider's own usage fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens, including cached ones.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input_tokens: u64,
}

impl Usage {
    /// Sum of two usages.
    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens + o.input_tokens,
            output_tokens: self.output_tokens + o.output_tokens,
            cached_input_tokens: self.cached_input_tokens + o.cached_input_tokens,
        }
    }
}

/// Why the model stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It finished its turn.
    EndTurn,
    /// It wants tool results.
    ToolUse,
    /// It hit `max_tokens`.
    MaxTokens,
    /// Anything else the provider said.
    Other,
}

/// A complete answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Text output.
    pub text: String,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Usage of this exchange.
    pub usage: Usage,
    /// Why it stopped.
    pub stop_reason: StopReason,
}

/// What a streaming call reports while it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// More output text.
    TextDelta(String),
    /// A tool call has started (its arguments stream in afterwards).
    ToolCallStarted {
        /// Call id.
        id: String,
        /// Tool name.
        name: String,
    },
    /// The attempt failed part-way and the request is being retried: discard every delta
    /// received so far. The final [`ChatResponse`] only ever holds one attempt's output.
    Restart {
        /// The attempt about to start (2 for the first retry).
        attempt: u32,
        /// Why.
        reason: String,
    },
}
