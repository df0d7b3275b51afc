//! What a server says, made safe for the host and the model: tool definitions into agent
//! tool specifications ([`offered`]), tool results into bounded text ([`render`]).
//!
//! A server is hostile input. Its tool names become parts of function names a model provider
//! validates (`^[a-zA-Z0-9_-]{1,64}$`) and that the gate matches against allowlists, so any
//! other name is dropped, never rewritten into something that could collide. Descriptions are
//! capped at [`MAX_DESCRIPTION`] characters; an input schema must be a JSON object whose
//! `type` is `object` and whose text is at most [`MAX_SCHEMA`] bytes; a server offers at most
//! [`MAX_TOOLS`] tools. A result is rendered to at most [`MAX_RESULT`] bytes of text: text
//! content as is, images and audio described by type and size (never decoded), resources by
//! URI or their text.

use rmcp::model::{CallToolResult, ContentBlock, ResourceContents, Tool};
use serde_json::Value;
use warren_config::manifest::MCP_PREFIX;
use warren_llm::ToolSpec;

/// A tool definition's description, in characters, at most.
pub const MAX_DESCRIPTION: usize = 1024;
/// A tool's input schema, serialized, in bytes, at most.
pub const MAX_SCHEMA: usize = 32 * 1024;
/// Tools of one server at most.
pub const MAX_TOOLS: usize = 256;
/// A model's function name, at most (OpenAI's limit).
pub const MAX_NAME: usize = 64;
/// A rendered tool result, in bytes, at most (the agent truncates further for the model and
/// keeps the whole in `/logs`).
pub const MAX_RESULT: usize = 256 * 1024;
/// One JSON-RPC message from a server, in bytes, at most (a longer line is discarded).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// One server tool as an agent tool.
#[derive(Clone, Debug)]
pub struct Offered {
    /// The agent tool: `mcp__<server>__<tool>`, the server's description and input schema.
    pub spec: ToolSpec,
    /// The tool's name on its server.
    pub remote: String,
    /// Why a call waits for a person by the tool's annotations (`None`: they say it only
    /// reads, or does nothing destructive).
    pub approval: Option<String>,
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn cap_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The agent tools of `server`'s `tools`; definitions that cannot be offered safely are
/// dropped (and logged), never repaired.
pub fn offered(server: &str, tools: &[Tool]) -> Vec<Offered> {
    let mut out: Vec<Offered> = Vec::new();
    for t in tools {
        if out.len() == MAX_TOOLS {
            tracing::warn!(
                "MCP server {server}: more than {MAX_TOOLS} tools; the rest are not offered"
            );
            break;
        }
        let full = format!("{MCP_PREFIX}{server}__{}", t.name);
        if !name_ok(&t.name) || full.len() > MAX_NAME {
            tracing::warn!(
                "MCP server {server}: tool name {:?} is not offered (only A-Z, a-z, 0-9, _ and -, \
                 at most {MAX_NAME} characters with its prefix)",
                cap_chars(&t.name, 80)
            );
            continue;
        }
        if out.iter().any(|o| o.spec.name == full) {
            tracing::warn!("MCP server {server}: tool {full} is listed twice; the first is kept");
            continue;
        }
        let schema = Value::Object((*t.input_schema).clone());
        let schema_text = schema.to_string();
        if schema["type"] != "object" || schema_text.len() > MAX_SCHEMA {
            tracing::warn!(
                "MCP server {server}: tool {full}: its input schema is not an object of at most \
                 {MAX_SCHEMA} bytes; not offered"
            );
            continue;
        }
        let description = cap_chars(
            t.description.as_deref().unwrap_or_default(),
            MAX_DESCRIPTION,
        );
        out.push(Offered {
            spec: ToolSpec {
                name: full,
                description: format!("[MCP server {server}] {description}"),
                parameters: schema,
            },
            remote: t.name.to_string(),
            approval: approval(server, t),
        });
    }
    out
}

/// Why a call of `t` waits for a person by its annotations: unless they say it only reads or
/// is not destructive (`destructiveHint` defaults to true in the specification).
fn approval(server: &str, t: &Tool) -> Option<String> {
    let a = t.annotations.as_ref();
    let read_only = a.and_then(|a| a.read_only_hint) == Some(true);
    let destructive = a.and_then(|a| a.destructive_hint);
    if read_only || destructive == Some(false) {
        return None;
    }
    Some(match destructive {
        Some(true) => format!("MCP server {server} marks {} destructive", t.name),
        _ => format!(
            "MCP server {server} does not mark {} read-only or non-destructive",
            t.name
        ),
    })
}

/// A definition's share of a request, in tokens (about four characters a token).
pub fn tokens(spec: &ToolSpec) -> usize {
    (spec.name.len() + spec.description.len() + spec.parameters.to_string().len()).div_ceil(4)
}

/// A tool result as text for the model, at most [`MAX_RESULT`] bytes.
pub fn render(r: &CallToolResult) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in &r.content {
        parts.push(match c {
            ContentBlock::Text(t) => t.text.clone(),
            ContentBlock::Image(i) => format!(
                "[image {}, {} bytes base64: not shown]",
                cap_chars(&i.mime_type, 64),
                i.data.len()
            ),
            ContentBlock::Audio(a) => format!(
                "[audio {}, {} bytes base64: not shown]",
                cap_chars(&a.mime_type, 64),
                a.data.len()
            ),
            ContentBlock::Resource(e) => match &e.resource {
                ResourceContents::TextResourceContents { uri, text, .. } => {
                    format!("[resource {}]\n{text}", cap_chars(uri.as_str(), 256))
                }
                ResourceContents::BlobResourceContents { uri, blob, .. } => format!(
                    "[resource {}, {} bytes base64: not shown]",
                    cap_chars(uri.as_str(), 256),
                    blob.len()
                ),
                _ => "[a resource of a kind Warren does not show]".into(),
            },
            ContentBlock::ResourceLink(l) => format!("[resource link {}]", cap_chars(&l.uri, 256)),
            _ => "[content of a kind Warren does not show]".into(),
        });
    }
    if parts.is_empty()
        && let Some(s) = &r.structured_content
    {
        parts.push(s.to_string());
    }
    let mut text = parts.join("\n");
    if text.len() > MAX_RESULT {
        let mut cut = MAX_RESULT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let total = text.len();
        text.truncate(cut);
        text.push_str(&format!(
            "\n[the server's answer was {total} bytes; the first {cut} are shown]"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rmcp::model::{ContentBlock as Content, ToolAnnotations};
    use serde_json::json;

    use super::*;

    fn tool(name: &str, schema: Value) -> Tool {
        let Value::Object(m) = schema else {
            panic!("not an object")
        };
        Tool::new(name.to_owned(), "does things", Arc::new(m))
    }

    #[test]
    fn hostile_definitions_are_dropped_not_repaired() {
        let ok = json!({"type": "object"});
        let big = json!({"type": "object", "description": "x".repeat(MAX_SCHEMA)});
        let tools = vec![
            tool("get_time", ok.clone()),
            tool("../../etc", ok.clone()),
            tool("shell; rm", ok.clone()),
            tool("", ok.clone()),
            tool(&"a".repeat(60), ok.clone()),
            tool("list", json!({"type": "string"})),
            tool("huge", big),
            tool("get_time", ok.clone()),
            tool("naïve", ok),
        ];
        let names: Vec<String> = offered("time", &tools)
            .into_iter()
            .map(|o| o.spec.name)
            .collect();
        assert_eq!(names, ["mcp__time__get_time"]);
    }

    #[test]
    fn only_read_only_or_non_destructive_annotations_spare_approval() {
        let ok = json!({"type": "object"});
        let mut ro = tool("read", ok.clone());
        ro.annotations = Some(ToolAnnotations::new().read_only(true));
        let mut safe = tool("safe", ok.clone());
        safe.annotations = Some(ToolAnnotations::new().destructive(false));
        let mut bad = tool("delete", ok.clone());
        bad.annotations = Some(ToolAnnotations::new().destructive(true));
        let bare = tool("bare", ok);
        let o = offered("s", &[ro, safe, bad, bare]);
        let approval: Vec<bool> = o.iter().map(|t| t.approval.is_some()).collect();
        assert_eq!(approval, [false, false, true, true]);
        assert!(
            o[2].approval
                .as_deref()
                .is_some_and(|a| a.contains("destructive"))
        );
    }

    #[test]
    fn results_are_bounded_text_and_images_are_described() {
        let r = CallToolResult::success(vec![
            Content::text("hello"),
            Content::image("aGVsbG8=", "image/png"),
        ]);
        assert_eq!(
            render(&r),
            "hello\n[image image/png, 8 bytes base64: not shown]"
        );
        let long = CallToolResult::success(vec![Content::text("é".repeat(MAX_RESULT))]);
        let text = render(&long);
        assert!(text.len() < MAX_RESULT + 100);
        assert!(text.ends_with("are shown]"));
    }
}
