//! One model turn: the request, the streamed answer, the complete response.
//!
//! [`Agent::model_turn`] builds the [`ChatRequest`] from the system prompt, the conversation
//! so far ([`crate::context::Context`]) and the offered tool schemas. A turn the journal
//! recorded is replayed from it: the model is not asked (or paid) again. Otherwise the
//! provider is asked; text streams out as [`AgentEvent::Text`] (and
//! [`AgentEvent::Restart`] when the provider retried and the text so far is void), the call
//! is reported to the gate ([`crate::Gate::model_call`], success or failure, for the audit), and the
//! complete response is recorded in the journal before anything acts on it.
//!
//! A provider error (after the provider's own retries) ends the run: [`AgentError::Llm`].

use std::time::Instant;

use warren_llm::{ChatRequest, ChatResponse, StreamEvent, ToolSpec};

use crate::context::Context;
use crate::events::{AgentEvent, Events};
use crate::gating::ModelCallRecord;
use crate::journal::{Replayer, Step};
use crate::{Agent, AgentError};

impl Agent {
    /// The model's response for `turn`: replayed from the journal, or asked for and recorded.
    pub(crate) async fn model_turn(
        &self,
        turn: u32,
        context: &Context,
        specs: &[ToolSpec],
        journal: &mut Replayer,
        events: &mut Events<'_>,
    ) -> Result<ChatResponse, AgentError> {
        // A recorded turn is not paid for again; a new one is durable before it is acted on.
        if let Some(response) = journal.model()? {
            return Ok(response);
        }
        let request = ChatRequest {
            model: self.config.model.clone(),
            system: self.config.system_prompt.clone(),
            messages: context.messages().to_vec(),
            tools: specs.to_vec(),
            max_tokens: self.config.max_tokens_per_turn,
            temperature: None,
            stream: true,
        };
        let mut sink = |e: StreamEvent| match e {
            StreamEvent::TextDelta(delta) => events.emit(AgentEvent::Text { delta }),
            StreamEvent::Restart { reason, .. } => events.emit(AgentEvent::Restart { reason }),
            StreamEvent::ToolCallStarted { .. } => {}
        };
        let asked = Instant::now();
        let mut response = self.provider.chat(&request, &mut sink).await;
        // Some OpenAI-compatible servers (llama-cpp-python's) send no usage in a stream: a
        // turn that cost nothing would never reach a token budget. Estimate it instead.
        if let Ok(r) = &mut response
            && r.usage == warren_llm::Usage::default()
        {
            r.usage = warren_llm::Usage {
                input_tokens: crate::context::estimate_tokens(
                    &request.system,
                    &request.tools,
                    &request.messages,
                ),
                output_tokens: ((r.text.len()
                    + r.tool_calls
                        .iter()
                        .map(|c| c.name.len() + c.arguments.len())
                        .sum::<usize>())
                    / 4) as u64,
                cached_input_tokens: 0,
            };
        }
        let error = response.as_ref().err().map(ToString::to_string);
        self.gate.model_call(&ModelCallRecord {
            turn,
            model: &self.config.model,
            usage: response.as_ref().map(|r| r.usage).unwrap_or_default(),
            latency: asked.elapsed(),
            tool_calls: response.as_ref().map_or(0, |r| r.tool_calls.len()),
            error: error.as_deref(),
            request: &request,
        });
        let response = response?;
        journal.record(Step::Model {
            response: response.clone(),
        })?;
        Ok(response)
    }
}
