//! Anthropic Messages, with prompt caching of the stable prefix (system prompt and tools).

use std::collections::BTreeMap;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::client::{AnswerError, Dialect, StreamState};
use crate::types::{ChatRequest, ChatResponse, Message, StopReason, StreamEvent, ToolCall, Usage};

/// The Anthropic Messages wire format.
pub struct Anthropic;

/// An Anthropic-format answer that is not in the documented shape.
#[derive(Debug, thiserror::Error)]
pub enum AnthropicError {
    /// A response whose `type` is not `message`.
    #[error("expected a message, got type {0}")]
    NotAMessage(String),
    /// A message without a `content` array.
    #[error("message without content")]
    NoContent,
    /// A stream event that does not parse.
    #[error("{event} event is not JSON: {source}")]
    EventNotJson {
        /// The event's name.
        event: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A content block start without its index.
    #[error("content block without an index")]
    BlockWithoutIndex,
    /// A delta without its block's index.
    #[error("delta without an index")]
    DeltaWithoutIndex,
    /// Input for a block that was never started.
    #[error("input delta for an unknown block ({index})")]
    UnknownBlock {
        /// The block's index.
        index: u64,
    },
    /// The server reported an error inside the stream.
    #[error("error in stream: {0}")]
    InStream(String),
}

const VERSION: &str = "2023-06-01";

/// Anthropic wants tool results inside user messages, and consecutive same-role messages merged.
fn messages(msgs: &[Message]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for m in msgs {
        let (role, blocks): (&str, Vec<Value>) = match m {
            Message::User { content } => ("user", vec![json!({"type": "text", "text": content})]),
            Message::Assistant { text, tool_calls } => {
                let mut b = Vec::new();
                if !text.is_empty() {
                    b.push(json!({"type": "text", "text": text}));
                }
                for c in tool_calls {
                    // Arguments the model produced as invalid JSON are sent back as an empty
                    // object: the API requires an object, and the tool result explains the error.
                    let input: Value = serde_json::from_str(&c.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    b.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
                }
                ("assistant", b)
            }
            Message::Tool {
                call_id,
                content,
                is_error,
            } => (
                "user",
                vec![
                    json!({"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error}),
                ],
            ),
        };
        match out.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(arr) = last["content"].as_array_mut() {
                    arr.extend(blocks);
                }
            }
            _ => out.push(json!({"role": role, "content": blocks})),
        }
    }
    out
}

fn usage(u: &Value) -> Usage {
    let read = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
    let created = u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
    Usage {
        // Anthropic's input_tokens excludes cached tokens; ours includes them.
        input_tokens: u["input_tokens"].as_u64().unwrap_or(0) + read + created,
        output_tokens: u["output_tokens"].as_u64().unwrap_or(0),
        cached_input_tokens: read,
    }
}

fn stop(reason: Option<&str>) -> StopReason {
    match reason {
        Some("end_turn") | Some("stop_sequence") => StopReason::EndTurn,
        Some("tool_use") => StopReason::ToolUse,
        Some("max_tokens") => StopReason::MaxTokens,
        _ => StopReason::Other,
    }
}

impl Dialect for Anthropic {
    fn endpoint(&self, base: &str) -> String {
        format!("{base}/v1/messages")
    }

    fn headers(&self, key: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("anthropic-version", HeaderValue::from_static(VERSION));
        if let Some(v) = key.and_then(|k| HeaderValue::from_str(k).ok()) {
            h.insert("x-api-key", v);
        }
        h
    }

    fn body(&self, req: &ChatRequest) -> Value {
        let mut body = json!({"model": req.model, "max_tokens": req.max_tokens, "messages": messages(&req.messages), "stream": req.stream});
        // The system prompt and the tools are the stable prefix of every request of a task:
        // mark their end as a cache breakpoint.
        if !req.system.is_empty() {
            body["system"] = json!([{"type": "text", "text": req.system, "cache_control": {"type": "ephemeral"}}]);
        }
        if !req.tools.is_empty() {
            let mut tools: Vec<Value> = req
                .tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
                .collect();
            if let Some(last) = tools.last_mut() {
                last["cache_control"] = json!({"type": "ephemeral"});
            }
            body["tools"] = Value::Array(tools);
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        body
    }

    fn parse(&self, v: Value) -> Result<ChatResponse, AnswerError> {
        if v["type"] != "message" {
            return Err(AnthropicError::NotAMessage(v["type"].to_string()).into());
        }
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for b in v["content"].as_array().ok_or(AnthropicError::NoContent)? {
            match b["type"].as_str() {
                Some("text") => text.push_str(b["text"].as_str().unwrap_or_default()),
                Some("tool_use") => tool_calls.push(ToolCall {
                    id: b["id"].as_str().unwrap_or_default().to_owned(),
                    name: b["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: match &b["input"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                }),
                _ => {}
            }
        }
        Ok(ChatResponse {
            text,
            tool_calls,
            usage: usage(&v["usage"]),
            stop_reason: stop(v["stop_reason"].as_str()),
        })
    }

    fn stream_state(&self) -> Box<dyn StreamState> {
        Box::new(AnthropicStream::default())
    }
}

#[derive(Default)]
struct AnthropicStream {
    text: String,
    /// Tool-use blocks by content-block index.
    calls: BTreeMap<u64, ToolCall>,
    usage: Usage,
    stop: Option<String>,
}

impl StreamState for AnthropicStream {
    fn on_event(
        &mut self,
        event: &str,
        data: &str,
        sink: &mut dyn FnMut(StreamEvent),
    ) -> Result<bool, AnswerError> {
        let v: Value =
            serde_json::from_str(data).map_err(|source| AnthropicError::EventNotJson {
                event: event.to_owned(),
                source,
            })?;
        match v["type"].as_str().unwrap_or(event) {
            "message_start" => self.usage = usage(&v["message"]["usage"]),
            "content_block_start" => {
                let b = &v["content_block"];
                if b["type"] == "tool_use" {
                    let index = v["index"]
                        .as_u64()
                        .ok_or(AnthropicError::BlockWithoutIndex)?;
                    let call = ToolCall {
                        id: b["id"].as_str().unwrap_or_default().to_owned(),
                        name: b["name"].as_str().unwrap_or_default().to_owned(),
                        arguments: String::new(),
                    };
                    sink(StreamEvent::ToolCallStarted {
                        id: call.id.clone(),
                        name: call.name.clone(),
                    });
                    self.calls.insert(index, call);
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        let t = d["text"].as_str().unwrap_or_default();
                        self.text.push_str(t);
                        sink(StreamEvent::TextDelta(t.to_owned()));
                    }
                    Some("input_json_delta") => {
                        let index = v["index"]
                            .as_u64()
                            .ok_or(AnthropicError::DeltaWithoutIndex)?;
                        let call = self
                            .calls
                            .get_mut(&index)
                            .ok_or(AnthropicError::UnknownBlock { index })?;
                        call.arguments
                            .push_str(d["partial_json"].as_str().unwrap_or_default());
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(s) = v["delta"]["stop_reason"].as_str() {
                    self.stop = Some(s.to_owned());
                }
                if let Some(o) = v["usage"]["output_tokens"].as_u64() {
                    self.usage.output_tokens = o;
                }
            }
            "message_stop" => return Ok(true),
            "error" => {
                return Err(AnthropicError::InStream(
                    v["error"]["message"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_owned(),
                )
                .into());
            }
            _ => {} // ping, content_block_stop, future event types
        }
        Ok(false)
    }

    fn finish(self: Box<Self>) -> Result<ChatResponse, AnswerError> {
        let s = *self;
        Ok(ChatResponse {
            stop_reason: stop(s.stop.as_deref()),
            text: s.text,
            tool_calls: s
                .calls
                .into_values()
                .map(|mut c| {
                    // A tool call with no input streams no fragments: that is the empty object.
                    if c.arguments.is_empty() {
                        c.arguments = "{}".into();
                    }
                    c
                })
                .collect(),
            usage: s.usage,
        })
    }
}
