//! OpenAI Chat Completions (and every server that speaks it).

use std::collections::BTreeMap;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::client::{AnswerError, Dialect, StreamState};
use crate::types::{ChatRequest, ChatResponse, Message, StopReason, StreamEvent, ToolCall, Usage};

/// The OpenAI-compatible wire format.
pub struct OpenAi;

/// An OpenAI-format answer that is not in the documented shape.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    /// A response without `choices[0]`.
    #[error("no choices in the response")]
    NoChoices,
    /// A stream chunk that does not parse.
    #[error("stream chunk is not JSON: {0}")]
    ChunkNotJson(#[source] serde_json::Error),
    /// The server reported an error inside the stream.
    #[error("error in stream: {0}")]
    InStream(String),
    /// A tool call fragment that does not say which call it belongs to.
    #[error("tool call fragment without an index")]
    FragmentWithoutIndex,
    /// `[DONE]` without a `finish_reason` before it.
    #[error("stream ended without a finish reason")]
    NoFinishReason,
}

fn message(m: &Message) -> Value {
    match m {
        Message::User { content } => json!({"role": "user", "content": content}),
        Message::Assistant { text, tool_calls } => {
            let mut v = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
            if !tool_calls.is_empty() {
                v["tool_calls"] = tool_calls
                    .iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
            }
            v
        }
        Message::Tool {
            call_id, content, ..
        } => json!({"role": "tool", "tool_call_id": call_id, "content": content}),
    }
}

fn usage(u: &Value) -> Usage {
    Usage {
        input_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
        output_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
        cached_input_tokens: u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    }
}

fn stop(reason: Option<&str>) -> StopReason {
    match reason {
        Some("stop") => StopReason::EndTurn,
        Some("tool_calls") | Some("function_call") => StopReason::ToolUse,
        Some("length") => StopReason::MaxTokens,
        _ => StopReason::Other,
    }
}

impl Dialect for OpenAi {
    fn endpoint(&self, base: &str) -> String {
        format!("{base}/chat/completions")
    }

    fn headers(&self, key: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(v) = key.and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok()) {
            h.insert(AUTHORIZATION, v);
        }
        h
    }

    fn body(&self, req: &ChatRequest) -> Value {
        let mut messages = Vec::with_capacity(req.messages.len() + 1);
        if !req.system.is_empty() {
            messages.push(json!({"role": "system", "content": req.system}));
        }
        messages.extend(req.messages.iter().map(message));
        let mut body = json!({"model": req.model, "messages": messages, "max_tokens": req.max_tokens, "stream": req.stream});
        if req.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if !req.tools.is_empty() {
            body["tools"] = req
                .tools
                .iter()
                .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
                .collect();
        }
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        body
    }

    fn parse(&self, v: Value) -> Result<ChatResponse, AnswerError> {
        let choice = v["choices"].get(0).ok_or(OpenAiError::NoChoices)?;
        let msg = &choice["message"];
        let tool_calls = msg["tool_calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| ToolCall {
                        id: c["id"].as_str().unwrap_or_default().to_owned(),
                        name: c["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        arguments: c["function"]["arguments"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(ChatResponse {
            text: msg["content"].as_str().unwrap_or_default().to_owned(),
            tool_calls,
            usage: usage(&v["usage"]),
            stop_reason: stop(choice["finish_reason"].as_str()),
        })
    }

    fn stream_state(&self) -> Box<dyn StreamState> {
        Box::new(OpenAiStream::default())
    }
}

#[derive(Default)]
struct OpenAiStream {
    text: String,
    /// Tool calls by the index the server gives them (fragments of parallel calls interleave).
    calls: BTreeMap<u64, ToolCall>,
    usage: Usage,
    finish: Option<String>,
}

impl StreamState for OpenAiStream {
    fn on_event(
        &mut self,
        _event: &str,
        data: &str,
        sink: &mut dyn FnMut(StreamEvent),
    ) -> Result<bool, AnswerError> {
        if data.trim() == "[DONE]" {
            return Ok(true);
        }
        let v: Value = serde_json::from_str(data).map_err(OpenAiError::ChunkNotJson)?;
        if let Some(e) = v.get("error") {
            return Err(OpenAiError::InStream(
                e["message"].as_str().unwrap_or("unknown").to_owned(),
            )
            .into());
        }
        if v["usage"].is_object() {
            self.usage = usage(&v["usage"]);
        }
        let Some(choice) = v["choices"].get(0) else {
            return Ok(false);
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.text.push_str(t);
            sink(StreamEvent::TextDelta(t.to_owned()));
        }
        for c in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = c["index"]
                .as_u64()
                .ok_or(OpenAiError::FragmentWithoutIndex)?;
            let call = self.calls.entry(index).or_insert_with(|| ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
            let started = call.id.is_empty() && call.name.is_empty();
            if let Some(id) = c["id"].as_str() {
                call.id = id.to_owned();
            }
            if let Some(name) = c["function"]["name"].as_str() {
                call.name.push_str(name);
            }
            if let Some(args) = c["function"]["arguments"].as_str() {
                call.arguments.push_str(args);
            }
            if started && !call.name.is_empty() {
                sink(StreamEvent::ToolCallStarted {
                    id: call.id.clone(),
                    name: call.name.clone(),
                });
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_owned());
        }
        Ok(false)
    }

    fn finish(self: Box<Self>) -> Result<ChatResponse, AnswerError> {
        let s = *self;
        if s.finish.is_none() {
            return Err(OpenAiError::NoFinishReason.into());
        }
        Ok(ChatResponse {
            stop_reason: stop(s.finish.as_deref()),
            text: s.text,
            tool_calls: s.calls.into_values().collect(),
            usage: s.usage,
        })
    }
}
