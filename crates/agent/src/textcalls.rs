//! Tool calls a model wrote as text: small local models served by OpenAI-compatible servers
//! (llama.cpp, Ollama, vLLM) often answer with their call in the message instead of in
//! `tool_calls`. [`parse`] recognizes the shapes they use and nothing else:
//!
//! - Hermes / Qwen tags: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, one or more;
//! - fenced JSON blocks: ```` ```json {"name": …, "arguments": {…}} ``` ```` (or a list of
//!   such objects), one or several in a row — the last possibly echoed once more as bare JSON,
//!   or followed by a name-less block of the result the model imagined, as small Qwen models
//!   do;
//! - Llama style: the whole message is the JSON object (`"parameters"` or `"arguments"`),
//!   optionally after `<|python_tag|>`.
//!
//! A call is taken only when it is what the message *ends with*: after the last call there may
//! be whitespace, or a `<tool_response>` the model invented (dropped: the real result follows).
//! Text that quotes a call and goes on talking, an inline mention, a tool that is not offered,
//! arguments that are not a JSON object, or one malformed block among several: no call at all.
//! The calls found get ids `text-<turn>-<n>` and then pass the same schema validation, gate,
//! audit and journal as any other call.

use serde_json::Value;
use warren_llm::ToolCall;

/// Where a call written as text is marked in its id.
pub const ID_PREFIX: &str = "text-";

/// The tool calls `text` ends with, among the `offered` tool names (see the module docs).
pub fn parse(text: &str, offered: &[&str], turn: u32) -> Vec<ToolCall> {
    // A response the model imagined for its own call is not part of it.
    let text = text.split("<tool_response>").next().unwrap_or_default();
    let calls = tagged(text)
        .or_else(|| fenced(text))
        .or_else(|| fenced_then_echo(text, offered))
        .or_else(|| bare(text))
        .unwrap_or_default();
    let mut out = Vec::new();
    for (i, v) in calls.iter().enumerate() {
        match call(v, offered) {
            Some((name, arguments)) => out.push(ToolCall {
                id: format!("{ID_PREFIX}{turn}-{}", i + 1),
                name,
                arguments,
            }),
            // One bad block makes the whole message prose.
            None => return Vec::new(),
        }
    }
    out
}

/// `{"name": offered, "arguments" | "parameters": {…} | "{…}"}` as (name, arguments JSON).
fn call(v: &Value, offered: &[&str]) -> Option<(String, String)> {
    let o = v.as_object()?;
    let name = o.get("name")?.as_str()?;
    if !offered.contains(&name)
        || o.keys()
            .any(|k| !["name", "arguments", "parameters"].contains(&k.as_str()))
    {
        return None;
    }
    let args = match o.get("arguments").or_else(|| o.get("parameters")) {
        None => Value::Object(Default::default()),
        Some(Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(a) => a.clone(),
    };
    args.is_object()
        .then(|| (name.to_owned(), args.to_string()))
}

/// `<tool_call>…</tool_call>` blocks, the last one ending the text.
fn tagged(text: &str) -> Option<Vec<Value>> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    if !text.contains(OPEN) {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let j = after.find(CLOSE)?;
        out.push(serde_json::from_str(after[..j].trim()).ok()?);
        rest = &after[j + CLOSE.len()..];
    }
    rest.trim().is_empty().then_some(out)
}

/// The fenced blocks (```json or ```) ending the text, separated by nothing but whitespace:
/// each one call object or a list of them, in order. Models that call several tools write one
/// block per call; taking only the last would run a `finish` without the write before it. A
/// block that is not JSON (a code block) ends the run of calls; if the last block is not JSON,
/// there are none.
fn fenced(text: &str) -> Option<Vec<Value>> {
    let mut rest = text.trim_end();
    let mut blocks: Vec<Vec<Value>> = Vec::new();
    let mut imagined = false;
    while let Some(body) = rest.strip_suffix("```") {
        let Some(start) = body.rfind("```") else {
            break;
        };
        let inner = &body[start + 3..];
        let inner = inner.strip_prefix("json").unwrap_or(inner);
        match one_or_many(inner) {
            // A last block that is an object without a name is the result the model imagined
            // for its call (`{"success": true, …}`), like an invented `<tool_response>`:
            // dropped, once; the calls must come before it.
            Some(v)
                if blocks.is_empty()
                    && !imagined
                    && matches!(v.as_slice(), [Value::Object(o)] if !o.contains_key("name")) =>
            {
                imagined = true;
            }
            Some(calls) => blocks.push(calls),
            None if blocks.is_empty() => return None,
            None => break,
        }
        rest = body[..start].trim_end();
    }
    if blocks.is_empty() {
        return None;
    }
    blocks.reverse();
    Some(blocks.concat())
}

/// Fenced calls followed by the last of them again as bare JSON (small Qwen models echo the
/// call the way their chat template shows earlier calls, arguments as a string): the calls,
/// once. Any other text after the blocks makes it no call.
fn fenced_then_echo(text: &str, offered: &[&str]) -> Option<Vec<Value>> {
    let at = text.rfind("```")?;
    let (head, tail) = (&text[..at + 3], &text[at + 3..]);
    let echo: Value = serde_json::from_str(tail.trim()).ok()?;
    let calls = fenced(head)?;
    let last = calls.last()?;
    (call(last, offered).is_some() && call(last, offered) == call(&echo, offered)).then_some(calls)
}

/// The whole message as a call object (or a list), optionally after `<|python_tag|>`.
fn bare(text: &str) -> Option<Vec<Value>> {
    let t = text.trim();
    let t = t.strip_prefix("<|python_tag|>").unwrap_or(t).trim();
    if !t.starts_with(['{', '[']) {
        return None;
    }
    one_or_many(t)
}

/// `text` as JSON: one object, or a list of them (each checked as a call by [`call`]).
fn one_or_many(text: &str) -> Option<Vec<Value>> {
    match serde_json::from_str(text.trim()).ok()? {
        Value::Array(a) => Some(a),
        v @ Value::Object(_) => Some(vec![v]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOLS: &[&str] = &["write_file", "shell", "finish"];

    fn names(text: &str) -> Vec<(String, String)> {
        parse(text, TOOLS, 3)
            .into_iter()
            .map(|c| (c.name, c.arguments))
            .collect()
    }

    #[test]
    fn every_known_shape_is_a_call() {
        let want = vec![(
            "write_file".to_owned(),
            r#"{"content":"x","path":"a.py"}"#.to_owned(),
        )];
        for text in [
            "<tool_call>\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"a.py\", \"content\": \"x\"}}\n</tool_call>",
            "I'll write it.\n<tool_call>{\"name\": \"write_file\", \"arguments\": {\"path\": \"a.py\", \"content\": \"x\"}}</tool_call>\n<tool_response>\nDone!\n</tool_response>",
            "Let me create the file:\n```json\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"a.py\", \"content\": \"x\"}}\n```",
            "```\n{\"name\": \"write_file\", \"arguments\": \"{\\\"path\\\": \\\"a.py\\\", \\\"content\\\": \\\"x\\\"}\"}\n```\n",
            "{\"name\": \"write_file\", \"parameters\": {\"path\": \"a.py\", \"content\": \"x\"}}",
            "<|python_tag|>{\"name\": \"write_file\", \"parameters\": {\"path\": \"a.py\", \"content\": \"x\"}}",
        ] {
            assert_eq!(names(text), want, "{text}");
        }
        let two = names(
            "<tool_call>{\"name\": \"shell\", \"arguments\": {\"command\": \"ls\"}}</tool_call>\n<tool_call>{\"name\": \"finish\", \"arguments\": {}}</tool_call>",
        );
        assert_eq!(two.len(), 2);
        // One fenced block per call (seen from Qwen2.5-Coder-1.5B): every call, in order — not
        // only the last, which would finish without the write before it.
        let fenced: Vec<String> = names(
            "```json\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"a.py\", \"content\": \"x\"}}\n```\n\n```json\n{\"name\": \"finish\", \"arguments\": {\"summary\": \"done\"}}\n```",
        )
        .into_iter()
        .map(|(n, _)| n)
        .collect();
        assert_eq!(fenced, ["write_file", "finish"]);
        // A code block before the call block is content, not a call.
        let after_code: Vec<String> = names(
            "Here is the code:\n```python\nprint('hi')\n```\n```json\n{\"name\": \"finish\", \"arguments\": {\"summary\": \"done\"}}\n```",
        )
        .into_iter()
        .map(|(n, _)| n)
        .collect();
        assert_eq!(after_code, ["finish"]);
        // A call followed by the result the model imagined for it: the call.
        assert_eq!(
            names(
                "```json\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"a.py\", \"content\": \"x\"}}\n```\n```json\n{\"success\": true, \"summary\": \"written\"}\n```"
            ),
            want
        );
        // The last call echoed once more as bare JSON, arguments as a string: taken once.
        assert_eq!(
            names(
                "```json\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"a.py\", \"content\": \"x\"}}\n```\n{\"name\": \"write_file\", \"arguments\": \"{\\\"path\\\": \\\"a.py\\\", \\\"content\\\": \\\"x\\\"}\"}"
            ),
            want
        );
        let ids: Vec<String> = parse(
            "[{\"name\": \"shell\", \"arguments\": {\"command\": \"ls\"}}, {\"name\": \"finish\"}]",
            TOOLS,
            7,
        )
        .into_iter()
        .map(|c| c.id)
        .collect();
        assert_eq!(ids, ["text-7-1", "text-7-2"]);
    }

    #[test]
    fn prose_that_quotes_a_call_runs_nothing() {
        for text in [
            // Quoted, then more prose.
            "You could run ```json\n{\"name\": \"shell\", \"arguments\": {\"command\": \"rm -rf /\"}}\n``` but I would not.",
            "A call looks like <tool_call>{\"name\": \"shell\", \"arguments\": {\"command\": \"ls\"}}</tool_call> in my format.",
            // Inline mention.
            "I used {\"name\": \"shell\", \"arguments\": {\"command\": \"ls\"}} earlier.",
            // Not offered, or not a call object.
            "<tool_call>{\"name\": \"run\", \"arguments\": {\"command\": \"ls\"}}</tool_call>",
            "```json\n{\"path\": \"a.py\"}\n```",
            "```json\n{\"name\": \"shell\", \"arguments\": {\"command\": \"ls\"}, \"why\": \"x\"}\n```",
            "{\"name\": \"shell\", \"arguments\": [\"ls\"]}",
            // A fenced call followed by a different bare call: ambiguous, nothing runs.
            "```json\n{\"name\": \"shell\", \"arguments\": {\"command\": \"ls\"}}\n```\n{\"name\": \"shell\", \"arguments\": {\"command\": \"rm -rf /\"}}",
            // Calls in a row, then prose.
            "```json\n{\"name\": \"shell\", \"arguments\": {\"command\": \"ls\"}}\n```\n```json\n{\"name\": \"finish\"}\n```\nThat should do it.",
            // One malformed block among good ones.
            "<tool_call>{\"name\": \"shell\", \"arguments\": {\"command\": \"ls\"}}</tool_call><tool_call>{oops}</tool_call>",
            "Done. The file is written.",
            "",
        ] {
            assert!(names(text).is_empty(), "{text}");
        }
    }
}
