//! What the model sees: the conversation, kept within the model's context window, and tool
//! output cut to a size the model can use.
//!
//! The conversation ([`Context`]) starts with the goal as the first user message; each turn
//! adds the model's response (text and tool calls) and one result message per call, in the
//! model's order. A response without tool calls gets a nudge to continue.
//!
//! **Summarizing.** Before a turn, when the request would fill `summarize_at` (85%) of the
//! model's context window ([`estimate_tokens`]: 4 characters a token), the model condenses
//! the older turns into a summary: the goal and the latest `keep_recent` messages stay
//! verbatim, and a tool call is never separated from its results ([`summary_split`]). The
//! summary replaces the older turns after the goal and is recorded in the journal, so a
//! resumed task rebuilds the same conversation without asking again.
//!
//! **Truncation.** A tool result longer than the tools' `max_output_chars` reaches the model
//! cut to that length, with a note saying so; the full text is written to
//! `tool-<turn>-<n>.log` in the task's logs, which the cell sees read-only at `/logs`, and the
//! note names that file, so the model can read on with its own tools.

use warren_llm::{ChatRequest, ChatResponse, Message, StreamEvent, ToolSpec};

use crate::budget::Budget;
use crate::error::LogsError;
use crate::events::{AgentEvent, Events};
use crate::journal::{Replayer, Step};
use crate::tools::ToolOutput;
use crate::{Agent, AgentError};

/// The conversation of one run, as the next request will carry it.
pub(crate) struct Context {
    messages: Vec<Message>,
}

/// What a model that answered without a tool call is told.
pub(crate) const NUDGE: &str = "You answered without calling a tool. Call a tool to continue, \
or call finish with a summary if the goal is reached or cannot be reached.";

impl Context {
    /// A conversation that starts with `goal`.
    pub(crate) fn new(goal: &str) -> Self {
        Context {
            messages: vec![Message::User {
                content: goal.to_owned(),
            }],
        }
    }

    /// The messages, oldest first.
    pub(crate) fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Add the model's response.
    pub(crate) fn push_response(&mut self, response: &ChatResponse) {
        self.messages.push(Message::Assistant {
            text: response.text.clone(),
            tool_calls: response.tool_calls.clone(),
        });
    }

    /// The model answered without calling a tool: tell it to go on.
    /// Tell the model it answered without a tool call.
    pub(crate) fn nudge(&mut self) {
        self.messages.push(Message::User {
            content: NUDGE.into(),
        });
    }

    /// Add the result of call `call_id`.
    pub(crate) fn push_result(&mut self, call_id: String, output: ToolOutput) {
        self.messages.push(Message::Tool {
            call_id,
            content: output.content,
            is_error: output.is_error,
        });
    }

    /// Replace the `replaced` messages after the goal by the goal followed by `text`.
    fn apply_summary(&mut self, replaced: usize, text: &str) {
        let messages = &mut self.messages;
        let goal = match messages.first() {
            Some(Message::User { content }) => content.clone(),
            _ => String::new(),
        };
        let head = Message::User {
            content: format!(
                "{goal}\n\nSummary of the work so far (older turns were condensed):\n{text}"
            ),
        };
        let end = (replaced + 1).min(messages.len());
        messages.splice(0..end, [head]);
    }
}

/// A rough token count (4 characters a token): what is sent, not what is billed; the
/// provider's own usage figures are what budgets count.
pub fn estimate_tokens(system: &str, tools: &[ToolSpec], messages: &[Message]) -> u64 {
    let chars = system.len()
        + serde_json::to_string(tools).map_or(0, |s| s.len())
        + serde_json::to_string(messages).map_or(0, |s| s.len());
    (chars / 4) as u64
}

/// Where older turns end: keep the goal (message 0) and at least `keep` recent messages, and
/// never separate tool results from the assistant message that called them (the split lands
/// just before an assistant message).
pub fn summary_split(messages: &[Message], keep: usize) -> Option<usize> {
    let mut split = messages.len().checked_sub(keep)?;
    while split > 1 && !matches!(messages[split], Message::Assistant { .. }) {
        split -= 1;
    }
    (split > 1).then_some(split)
}

/// Older turns as plain text for the summarizing model (each result cut to 2 000 characters).
fn render(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        match m {
            Message::User { content } => out.push_str(&format!("USER: {content}\n")),
            Message::Assistant { text, tool_calls } => {
                if !text.is_empty() {
                    out.push_str(&format!("ASSISTANT: {text}\n"));
                }
                for c in tool_calls {
                    out.push_str(&format!("CALL {}: {}\n", c.name, c.arguments));
                }
            }
            Message::Tool {
                content, is_error, ..
            } => {
                let c: String = content.chars().take(2000).collect();
                out.push_str(&format!(
                    "RESULT{}: {c}\n",
                    if *is_error { " (error)" } else { "" }
                ));
            }
        }
    }
    out
}

const SUMMARY_PROMPT: &str = "You compress an agent's work log. Write a concise summary of what was done, what was \
learned (file names, commands, errors and their fixes) and what remains, so the agent can continue \
without the full log. Plain text, no preamble.";

impl Agent {
    /// Before a turn: replay the summary the journal recorded here, or, live, summarize older
    /// turns if the next request would fill the context window (and record the summary).
    pub(crate) async fn keep_within_window(
        &self,
        context: &mut Context,
        specs: &[ToolSpec],
        budget: &mut Budget<'_>,
        journal: &mut Replayer,
        events: &mut Events<'_>,
    ) -> Result<(), AgentError> {
        if let Some((replaced, text)) = journal.summary() {
            context.apply_summary(replaced, &text);
        } else if journal.live()
            && let Some((replaced, text)) = self.summarize(context, specs, budget, events).await?
        {
            journal.record(Step::Summary { replaced, text })?;
        }
        Ok(())
    }

    /// Replace older turns by a summary when the next request would fill the context window:
    /// `Some((messages replaced, summary))` when it did.
    async fn summarize(
        &self,
        context: &mut Context,
        specs: &[ToolSpec],
        budget: &mut Budget<'_>,
        events: &mut Events<'_>,
    ) -> Result<Option<(usize, String)>, AgentError> {
        let system = &self.config.system_prompt;
        let before = estimate_tokens(system, specs, context.messages());
        if (before as f64) < self.config.summarize_at * f64::from(self.config.context_window) {
            return Ok(None);
        }
        let Some(split) = summary_split(context.messages(), self.config.keep_recent) else {
            return Ok(None);
        };
        let request = ChatRequest {
            model: self.config.model.clone(),
            system: SUMMARY_PROMPT.into(),
            messages: vec![Message::User {
                content: render(&context.messages()[1..split]),
            }],
            tools: vec![],
            max_tokens: self.config.max_tokens_per_turn,
            temperature: None,
            stream: true,
        };
        let mut ignore = |_e: StreamEvent| {};
        let response = self.provider.chat(&request, &mut ignore).await?;
        budget.charge(response.usage);
        let replaced = split - 1;
        context.apply_summary(replaced, &response.text);
        let after = estimate_tokens(system, specs, context.messages());
        events.emit(AgentEvent::Summarized {
            replaced,
            tokens_before: before,
            tokens_after: after,
        });
        Ok(Some((replaced, response.text)))
    }

    /// Make `output` fit for the model (call number `index` of `turn`): a truncated result
    /// gets its full text written to the logs and a note naming it. Returns the characters
    /// of the full result and, when written, the log as the cell sees it (`/logs/…`).
    pub(crate) fn fit_output(
        &self,
        turn: u32,
        index: usize,
        output: &mut ToolOutput,
    ) -> Result<(usize, Option<String>), LogsError> {
        let chars = output
            .full
            .as_ref()
            .map_or(output.content.chars().count(), |f| f.chars().count());
        let mut log = None;
        if let Some(full) = output.full.take() {
            log = self.log_full(turn, index, &full)?;
            output.content.push_str(&format!(
                "\n[output truncated at {} characters of {chars}{}]",
                self.tools.max_output_chars,
                log.as_ref()
                    .map_or(String::new(), |l| format!("; full output in {l}"))
            ));
        }
        Ok((chars, log))
    }

    fn log_full(&self, turn: u32, index: usize, full: &str) -> Result<Option<String>, LogsError> {
        let Some(dir) = &self.logs else {
            return Ok(None);
        };
        let name = format!("tool-{turn}-{index}.log");
        let path = dir.join(&name);
        std::fs::write(&path, full).map_err(|source| LogsError::Write { path, source })?;
        Ok(Some(format!("/logs/{name}")))
    }
}

#[cfg(test)]
mod tests {
    use warren_llm::ToolCall;

    use super::*;

    fn assistant(id: &str) -> Message {
        Message::Assistant {
            text: String::new(),
            tool_calls: vec![ToolCall {
                id: id.into(),
                name: "shell".into(),
                arguments: "{}".into(),
            }],
        }
    }
    fn result(id: &str) -> Message {
        Message::Tool {
            call_id: id.into(),
            content: "ok".into(),
            is_error: false,
        }
    }

    #[test]
    fn split_keeps_goal_recent_turns_and_tool_pairs_together() {
        let goal = Message::User {
            content: "goal".into(),
        };
        let mut m = vec![goal];
        for i in 0..5 {
            m.push(assistant(&i.to_string()));
            m.push(result(&i.to_string()));
        }
        // 11 messages, keep 4: the split lands on an assistant message.
        let s = summary_split(&m, 4).unwrap_or(0);
        assert!(matches!(m[s], Message::Assistant { .. }), "split at {s}");
        assert!(m.len() - s >= 4);
        // Keeping 3 would cut a pair: the split moves back to the assistant message.
        let s = summary_split(&m, 3).unwrap_or(0);
        assert!(matches!(m[s], Message::Assistant { .. }), "split at {s}");
        // Too short a conversation: nothing to summarize.
        assert_eq!(summary_split(&m[..3], 4), None);
    }

    #[test]
    fn estimate_grows_with_content() {
        let small = estimate_tokens(
            "s",
            &[],
            &[Message::User {
                content: "x".into(),
            }],
        );
        let big = estimate_tokens(
            "s",
            &[],
            &[Message::User {
                content: "x".repeat(4000),
            }],
        );
        assert!(big >= small + 999);
    }
}
