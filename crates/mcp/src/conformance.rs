//! The conformance fixture: an MCP server made of the fixed tools, resources and prompts the
//! official MCP conformance suite (`@modelcontextprotocol/conformance`) calls, so that the
//! suite's server scenarios can be run against Warren.
//!
//! The suite calls fixed names (`test_simple_text`, `test://static-text`,
//! `test_prompt_with_arguments`, …) and checks the shape of each answer, so Warren has a
//! fixture mode, as the SDKs do (rust-sdk's `conformance-server`, the TypeScript
//! `everything-server`): [`Fixture`] answers those names and nothing of Warren's. It is served
//! through the same Streamable HTTP configuration as the daemon's `/mcp`
//! ([`streamable_http`], [`crate::streamable_http`]: the same `Host` allow-list, the same
//! `Origin` refusal, the same session and stateless handling), so the transport-level
//! requirements the suite checks (Host/Origin validation against DNS rebinding, stateless
//! `2026-07-28` requests with per-request `_meta`, version negotiation, `Mcp-Session-Id` for
//! `2025-11-25`) are Warren's own, not the fixture's. `warren mcp --conformance-fixture
//! --listen ADDR` serves it (CI: `.ci/mcp-conformance`).
//!
//! What it covers, by revision:
//!
//! - both: tools returning text, image, audio, an embedded resource, mixed content, a tool
//!   error and progress notifications; static, binary and templated resources (every list
//!   and read with caching hints, `ttlMs` and `cacheScope`); prompts with arguments, an
//!   embedded resource and an image; completion;
//! - `2025-11-25`: logging (`logging/setLevel`, log notifications during a call), resource
//!   subscriptions, sampling and elicitation as server-to-client requests during a call;
//! - `2026-07-28`: `subscriptions/listen` with list-changed notifications a tool call
//!   triggers, a tool refused for a missing client capability (`-32021`), log notifications
//!   only when the request asks for a level, and the multi round-trip requests (SEP-2322):
//!   results that ask the client for input (`input_required`), with a `requestState` sealed
//!   by HMAC ([`RequestStateCodec`]) so that a tampered one is refused.
//!
//! Beyond the scored scenarios, the fixture also serves what three pending ones call (a tool
//! whose argument travels in an `Mcp-Param-Value` header, SEP-2243; a tool schema of JSON
//! Schema 2020-12; a slow tool for SSE reconnection). The Tasks extension's fixtures are not
//! here: an extension, which the suite runs without scoring.

// Logging, roots, sampling/elicitation requests and `resources/subscribe` are deprecated in
// the SDK (SEP-2577), but the 2025-11-25 scenarios exercise each of them.
#![allow(deprecated)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rmcp::model::{
    AudioContent, CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult,
    ClientCapabilities, CompleteRequestParams, CompleteResult, CompletionInfo, ContentBlock,
    CreateMessageRequest, CreateMessageRequestParams, ElicitRequest, ElicitRequestParams,
    ElicitationAction, ElicitationSchema, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, ImageContent, Implementation, InputRequest, InputRequests,
    InputRequiredResult, InputResponses, JsonObject, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListRootsRequest, ListToolsResult,
    LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams,
    ProgressNotificationParam, Prompt, PromptArgument, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Reference, RequestStateCodec, Resource,
    ResourceContents, ResourceTemplate, Role, SamplingMessage, ServerCapabilities, ServerConfig,
    SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter, Tool,
    UnsubscribeRequestParams,
};
use rmcp::service::{RequestContext, SubscriptionContext, SubscriptionSink};
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// A 1×1 PNG (base64), for image content and the binary resource.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==";
/// A WAV file without samples (base64), for audio content.
const WAV: &str = "UklGRiQAAABXQVZFZm10IBAAAAABAAEARKwAAIhYAQACABAAZGF0YQAAAAA=";
/// How long a client may cache a list or a read (`ttlMs`).
const TTL_MS: u64 = 60_000;
/// The HMAC key sealing `requestState`. Fixed: the fixture's state guards nothing, and the
/// suite only checks that a tampered state is refused.
const STATE_KEY: &[u8] = b"warren-mcp-conformance-fixture-request-state";
/// Between two notifications of one call.
const STEP: Duration = Duration::from_millis(50);

/// The tools that take no arguments, with their descriptions, in the order `tools/list`
/// answers them (after [`tools`]' own).
const PLAIN_TOOLS: [(&str, &str); 24] = [
    ("test_simple_text", "Returns simple text content"),
    ("test_image_content", "Returns image content (a PNG)"),
    ("test_audio_content", "Returns audio content (a WAV)"),
    (
        "test_embedded_resource",
        "Returns an embedded text resource",
    ),
    (
        "test_multiple_content_types",
        "Returns text, an image and an embedded resource",
    ),
    (
        "test_tool_with_logging",
        "Sends three log notifications while it runs",
    ),
    ("test_error_handling", "Always returns a tool error"),
    (
        "test_tool_with_progress",
        "Sends progress notifications (0, 50, 100 of 100) while it runs",
    ),
    (
        "test_elicitation_sep1034_defaults",
        "Asks the client for values that all have defaults (SEP-1034)",
    ),
    (
        "test_elicitation_sep1330_enums",
        "Asks the client to choose among titled and untitled enums (SEP-1330)",
    ),
    (
        "test_trigger_tool_change",
        "Sends notifications/tools/list_changed to the open subscriptions",
    ),
    (
        "test_trigger_prompt_change",
        "Sends notifications/prompts/list_changed to the open subscriptions",
    ),
    (
        "test_missing_capability",
        "Needs the client's sampling capability; refused without it (-32021)",
    ),
    (
        "test_streaming_elicitation",
        "Answers with an input_required result holding an elicitation",
    ),
    (
        "test_logging_tool",
        "Sends a log notification only when the request asks for a log level",
    ),
    (
        "test_input_required_result_elicitation",
        "Asks for the user's name through an input_required result (SEP-2322)",
    ),
    (
        "test_input_required_result_sampling",
        "Asks for a sampling result through an input_required result (SEP-2322)",
    ),
    (
        "test_input_required_result_list_roots",
        "Asks for the client's roots through an input_required result (SEP-2322)",
    ),
    (
        "test_input_required_result_request_state",
        "Asks for a confirmation and seals its progress in requestState (SEP-2322)",
    ),
    (
        "test_input_required_result_multiple_inputs",
        "Asks for an elicitation, a sampling result and the roots at once (SEP-2322)",
    ),
    (
        "test_input_required_result_multi_round",
        "Asks for input over two rounds, each with its own requestState (SEP-2322)",
    ),
    (
        "test_input_required_result_tampered_state",
        "Refuses a requestState that fails integrity verification (SEP-2322)",
    ),
    (
        "test_input_required_result_capabilities",
        "Asks only for the kinds of input the client declared it supports (SEP-2322)",
    ),
    (
        "test_reconnection",
        "Answers after a short delay (SSE reconnection)",
    ),
];

/// A JSON value as a JSON object (a schema); anything else is the empty object.
fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

/// Every tool, in a fixed order (clients may cache the list and compare it).
fn tools() -> Vec<Tool> {
    let mut tools = vec![
        Tool::new(
            "test_sampling",
            "Asks the client to sample a model with the prompt (sampling/createMessage)",
            object(json!({
                "type": "object",
                "properties": {"prompt": {"type": "string", "description": "The prompt to send"}},
                "required": ["prompt"],
            })),
        ),
        Tool::new(
            "test_elicitation",
            "Asks the user for a username and an email (elicitation/create)",
            object(json!({
                "type": "object",
                "properties": {"message": {"type": "string", "description": "The message to show"}},
                "required": ["message"],
            })),
        ),
        Tool::new(
            "test_custom_header",
            "Echoes its argument, which clients also send as the Mcp-Param-Value header (SEP-2243)",
            object(json!({
                "type": "object",
                "properties": {"value": {"type": "string", "x-mcp-header": "Value"}},
                "required": ["value"],
            })),
        ),
        Tool::new(
            "json_schema_2020_12_tool",
            "Takes arguments described with JSON Schema 2020-12 features",
            object(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {
                    "address": {
                        "$anchor": "address",
                        "type": "object",
                        "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                    },
                },
                "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                "allOf": [{"anyOf": [{"required": ["name"]}, {"required": ["address"]}]}],
                "if": {"required": ["address"]},
                "then": {"properties": {"address": {"required": ["street"]}}},
                "else": {"required": ["name"]},
                "additionalProperties": false,
            })),
        ),
    ];
    tools.extend(PLAIN_TOOLS.iter().map(|(name, description)| {
        Tool::new(
            *name,
            *description,
            object(json!({"type": "object", "properties": {}})),
        )
    }));
    tools
}

/// The state the fixture's sessions share (the suite's 2026-07-28 requests are stateless:
/// each one is served by a fresh clone of the fixture).
struct Shared {
    /// Open `subscriptions/listen` streams, by a key of ours.
    listeners: Mutex<HashMap<u64, SubscriptionSink>>,
    next_listener: AtomicU64,
    /// URIs `resources/subscribe` named (2025-11-25).
    watched: Mutex<HashSet<String>>,
    /// The least severe level `logging/setLevel` asked for (2025-11-25).
    log_level: Mutex<LoggingLevel>,
    /// Seals and opens `requestState`.
    states: RequestStateCodec,
}

/// The conformance fixture's MCP server (see the [module documentation](self)).
#[derive(Clone)]
pub struct Fixture {
    shared: Arc<Shared>,
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// The service `warren mcp --conformance-fixture` mounts at `/mcp`: the [`Fixture`] over
/// Streamable HTTP, configured as the daemon's `/mcp` is ([`crate::streamable_http`]:
/// requests must name one of `hosts` in `Host`; an `Origin` other than the listener's own
/// is refused).
pub fn streamable_http(hosts: Vec<String>) -> StreamableHttpService<Fixture, LocalSessionManager> {
    let fixture = Fixture::new();
    crate::http_service(move || Ok(fixture.clone()), hosts)
}

/// The order of severity of a log level (debug lowest).
fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

fn text(t: impl Into<String>) -> Result<CallToolResponse, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(t)]).into())
}

fn internal(e: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(e.to_string(), None)
}

/// A form elicitation asking for the object `properties` (all of `required`).
fn elicitation(
    message: &str,
    properties: Value,
    required: &[&str],
) -> Result<ElicitRequestParams, ErrorData> {
    let schema: ElicitationSchema = serde_json::from_value(
        json!({"type": "object", "properties": properties, "required": required}),
    )
    .map_err(internal)?;
    Ok(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: message.into(),
        requested_schema: schema,
    })
}

/// An elicitation as one input request of an `input_required` result.
fn ask(message: &str, properties: Value, required: &[&str]) -> Result<InputRequest, ErrorData> {
    Ok(InputRequest::Elicitation(ElicitRequest::new(elicitation(
        message, properties, required,
    )?)))
}

/// A sampling request (at most 100 tokens) as one input request.
fn sample(prompt: &str) -> InputRequest {
    InputRequest::CreateMessage(CreateMessageRequest::new(CreateMessageRequestParams::new(
        vec![SamplingMessage::user_text(prompt)],
        100,
    )))
}

/// A `roots/list` request as one input request.
fn roots() -> InputRequest {
    InputRequest::ListRoots(ListRootsRequest::default())
}

/// The client's answer to the input request `key`, when it is an object (an elicitation,
/// sampling or roots result); anything else counts as missing, and is asked for again.
fn answer<'a>(responses: Option<&'a InputResponses>, key: &str) -> Option<&'a JsonObject> {
    responses
        .and_then(|r| r.get(key))
        .and_then(Value::as_object)
}

/// `answer["content"][field]` as a string.
fn field<'a>(answer: &'a JsonObject, field: &str) -> Option<&'a str> {
    answer.get("content")?.get(field)?.as_str()
}

fn input_required(
    requests: InputRequests,
    state: Option<String>,
) -> Result<CallToolResponse, ErrorData> {
    Ok(InputRequiredResult::new(Some(requests), state).into())
}

fn action(a: &ElicitationAction) -> &'static str {
    match a {
        ElicitationAction::Accept => "accept",
        ElicitationAction::Decline => "decline",
        ElicitationAction::Cancel => "cancel",
        _ => "unknown",
    }
}

impl Fixture {
    /// A fixture with no subscriptions, logging at every level.
    pub fn new() -> Self {
        Fixture {
            shared: Arc::new(Shared {
                listeners: Mutex::default(),
                next_listener: AtomicU64::new(0),
                watched: Mutex::default(),
                log_level: Mutex::new(LoggingLevel::Debug),
                states: RequestStateCodec::new_unchecked(STATE_KEY),
            }),
        }
    }

    fn seal(&self, state: &Value) -> Result<String, ErrorData> {
        self.shared.states.seal_json(state).map_err(internal)
    }

    /// The state a client echoed, verified: a forged or altered one is an invalid request.
    fn open(&self, sealed: &str) -> Result<Value, ErrorData> {
        self.shared.states.open_json(sealed).map_err(|_| {
            ErrorData::invalid_params("requestState failed integrity verification", None)
        })
    }

    async fn log(&self, cx: &RequestContext<RoleServer>, level: LoggingLevel, message: &str) {
        if severity(level) < severity(*self.shared.log_level.lock().await) {
            return;
        }
        let note = LoggingMessageNotificationParam::new(level, json!(message))
            .with_logger("warren-conformance-fixture");
        if let Err(e) = cx.peer.notify_logging_message(note).await {
            tracing::debug!("log notification not sent: {e}");
        }
    }

    /// Every open subscription's sink.
    async fn listeners(&self) -> Vec<SubscriptionSink> {
        self.shared
            .listeners
            .lock()
            .await
            .values()
            .cloned()
            .collect()
    }

    /// Ask the client to fill `params` in (a server-to-client request: 2025-11-25 only), and
    /// describe what it answered.
    async fn elicit(
        &self,
        cx: &RequestContext<RoleServer>,
        params: ElicitRequestParams,
    ) -> CallToolResult {
        match cx.peer.create_elicitation(params).await {
            Ok(r) => CallToolResult::success(vec![ContentBlock::text(format!(
                "Elicitation completed: action={}, content={}",
                action(&r.action),
                r.content.unwrap_or(Value::Null)
            ))]),
            Err(e) => {
                CallToolResult::error(vec![ContentBlock::text(format!("Elicitation failed: {e}"))])
            }
        }
    }

    /// The SEP-2322 tools: each answers `input_required` until the client retries with the
    /// inputs it asked for (and, where it sealed one, the `requestState` it gave).
    async fn call_input_required(
        &self,
        request: CallToolRequestParams,
        cx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let responses = request.input_responses.as_ref();
        let state = request.request_state.as_deref();
        match request.name.as_ref() {
            "test_input_required_result_elicitation" => match answer(responses, "user_name") {
                Some(a) => text(format!(
                    "Hello, {}!",
                    field(a, "name").unwrap_or("stranger")
                )),
                None => input_required(
                    InputRequests::from([(
                        "user_name".into(),
                        ask(
                            "What is your name?",
                            json!({"name": {"type": "string"}}),
                            &["name"],
                        )?,
                    )]),
                    None,
                ),
            },
            "test_input_required_result_sampling" => match answer(responses, "capital_question") {
                Some(a) => text(format!(
                    "Sampling response: {}",
                    field(a, "text").unwrap_or("(no text)")
                )),
                None => input_required(
                    InputRequests::from([(
                        "capital_question".into(),
                        sample("What is the capital of France?"),
                    )]),
                    None,
                ),
            },
            "test_input_required_result_list_roots" => match answer(responses, "client_roots") {
                Some(a) => {
                    let uris: Vec<&str> = a
                        .get("roots")
                        .and_then(Value::as_array)
                        .map(|roots| {
                            roots
                                .iter()
                                .filter_map(|r| r.get("uri").and_then(Value::as_str))
                                .collect()
                        })
                        .unwrap_or_default();
                    text(format!("Client roots: [{}]", uris.join(", ")))
                }
                None => input_required(
                    InputRequests::from([("client_roots".into(), roots())]),
                    None,
                ),
            },
            "test_input_required_result_request_state"
            | "test_input_required_result_tampered_state" => match state {
                Some(sealed) => {
                    self.open(sealed)?;
                    text("Confirmed: state-ok")
                }
                None => input_required(
                    InputRequests::from([(
                        "confirm".into(),
                        ask(
                            "Please confirm",
                            json!({"ok": {"type": "boolean"}}),
                            &["ok"],
                        )?,
                    )]),
                    Some(self.seal(&json!({"stage": "confirm"}))?),
                ),
            },
            "test_input_required_result_multiple_inputs" => {
                if let Some(sealed) = state {
                    self.open(sealed)?;
                }
                let keys = ["user_name", "greeting", "client_roots"];
                if state.is_some() && keys.iter().all(|k| answer(responses, k).is_some()) {
                    return text("All inputs received");
                }
                input_required(
                    InputRequests::from([
                        (
                            "user_name".into(),
                            ask(
                                "What is your name?",
                                json!({"name": {"type": "string"}}),
                                &["name"],
                            )?,
                        ),
                        ("greeting".into(), sample("Generate a greeting")),
                        ("client_roots".into(), roots()),
                    ]),
                    Some(self.seal(&json!({"stage": "gather"}))?),
                )
            }
            "test_input_required_result_multi_round" => {
                let round = match state {
                    Some(sealed) => self
                        .open(sealed)?
                        .get("round")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    None => 0,
                };
                match round {
                    0 => input_required(
                        InputRequests::from([(
                            "step1".into(),
                            ask(
                                "Step 1: what is your name?",
                                json!({"name": {"type": "string"}}),
                                &["name"],
                            )?,
                        )]),
                        Some(self.seal(&json!({"round": 1}))?),
                    ),
                    1 => input_required(
                        InputRequests::from([(
                            "step2".into(),
                            ask(
                                "Step 2: what is your favorite color?",
                                json!({"color": {"type": "string"}}),
                                &["color"],
                            )?,
                        )]),
                        Some(self.seal(&json!({"round": 2}))?),
                    ),
                    _ => text("Multi-round flow complete"),
                }
            }
            "test_input_required_result_capabilities" => {
                if responses.is_some() {
                    return text("Capability-aware flow complete");
                }
                // Only what the client declared it can answer (its per-request capabilities).
                let caps = cx.meta.client_capabilities().unwrap_or_default();
                let mut requests = InputRequests::new();
                if caps.elicitation.is_some() {
                    requests.insert(
                        "user_name".into(),
                        ask(
                            "What is your name?",
                            json!({"name": {"type": "string"}}),
                            &["name"],
                        )?,
                    );
                }
                if caps.sampling.is_some() {
                    requests.insert("greeting".into(), sample("Generate a greeting"));
                }
                if caps.roots.is_some() {
                    requests.insert("client_roots".into(), roots());
                }
                if requests.is_empty() {
                    return text("The client declared no capability to ask input of");
                }
                input_required(requests, None)
            }
            other => Err(ErrorData::invalid_params(
                format!("no tool {other:?}"),
                None,
            )),
        }
    }
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_logging()
                .enable_completions()
                .build(),
        )
        .with_server_info(Implementation::new(
            "warren-conformance-fixture",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions("Warren's MCP conformance fixture: test tools, resources and prompts.")
    }

    /// A tool's definition, for the SDK to check a call's `Mcp-Param-*` headers against its
    /// schema (as `#[tool_handler]` does for [`crate::WarrenMcp`]).
    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools().into_iter().find(|t| t.name == name)
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.supported_by(&self.get_info().capabilities))
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let key = self.shared.next_listener.fetch_add(1, Ordering::Relaxed);
        self.shared
            .listeners
            .lock()
            .await
            .insert(key, context.sink().clone());
        context.cancelled().await;
        self.shared.listeners.lock().await.remove(&key);
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools())
            .with_ttl_ms(TTL_MS)
            .with_cache_scope(CacheScope::Public))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name.starts_with("test_input_required_result_") {
            return self.call_input_required(request, &cx).await;
        }
        let args = request.arguments.unwrap_or_default();
        let arg = |name: &str| args.get(name).and_then(Value::as_str).map(str::to_owned);
        let result = match request.name.as_ref() {
            "test_simple_text" => CallToolResult::success(vec![ContentBlock::text(
                "This is a simple text response for testing.",
            )]),
            "test_image_content" => {
                CallToolResult::success(vec![ContentBlock::image(PNG, "image/png")])
            }
            "test_audio_content" => CallToolResult::success(vec![ContentBlock::Audio(
                AudioContent::new(WAV, "audio/wav"),
            )]),
            "test_embedded_resource" => CallToolResult::success(vec![ContentBlock::resource(
                ResourceContents::TextResourceContents {
                    uri: "test://embedded-resource".into(),
                    mime_type: Some("text/plain".into()),
                    text: "This is an embedded resource content.".into(),
                    meta: None,
                },
            )]),
            "test_multiple_content_types" => CallToolResult::success(vec![
                ContentBlock::text("Multiple content types test:"),
                ContentBlock::image(PNG, "image/png"),
                ContentBlock::resource(ResourceContents::TextResourceContents {
                    uri: "test://mixed-content-resource".into(),
                    mime_type: Some("application/json".into()),
                    text: r#"{"test":"data","value":123}"#.into(),
                    meta: None,
                }),
            ]),
            "test_error_handling" => CallToolResult::error(vec![ContentBlock::text(
                "This tool intentionally returns an error for testing",
            )]),
            "test_tool_with_logging" => {
                for message in [
                    "Tool execution started",
                    "Tool processing data",
                    "Tool execution completed",
                ] {
                    self.log(&cx, LoggingLevel::Info, message).await;
                    tokio::time::sleep(STEP).await;
                }
                CallToolResult::success(vec![ContentBlock::text("Logging test completed")])
            }
            "test_tool_with_progress" => {
                let token = cx.meta.get_progress_token();
                for (progress, message) in
                    [(0.0, "Starting"), (50.0, "Halfway"), (100.0, "Complete")]
                {
                    if let Some(token) = &token {
                        let note = ProgressNotificationParam::new(token.clone(), progress)
                            .with_total(100.0)
                            .with_message(message);
                        if let Err(e) = cx.peer.notify_progress(note).await {
                            tracing::debug!("progress notification not sent: {e}");
                        }
                    }
                    tokio::time::sleep(STEP).await;
                }
                CallToolResult::success(vec![ContentBlock::text("Progress test completed")])
            }
            "test_sampling" => {
                let prompt = arg("prompt").unwrap_or_else(|| "Hello".into());
                let params =
                    CreateMessageRequestParams::new(vec![SamplingMessage::user_text(prompt)], 100);
                match cx.peer.create_message(params).await {
                    Ok(r) => {
                        let said = r
                            .message
                            .content
                            .first()
                            .and_then(|c| c.as_text())
                            .map_or_else(|| "(no text)".to_owned(), |t| t.text.clone());
                        CallToolResult::success(vec![ContentBlock::text(format!(
                            "LLM response: {said}"
                        ))])
                    }
                    Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
                        "Sampling failed: {e}"
                    ))]),
                }
            }
            "test_elicitation" => {
                let message =
                    arg("message").unwrap_or_else(|| "Please provide your information".into());
                let params = elicitation(
                    &message,
                    json!({
                        "username": {"type": "string", "description": "User's response"},
                        "email": {"type": "string", "description": "User's email address"},
                    }),
                    &["username", "email"],
                )?;
                self.elicit(&cx, params).await
            }
            "test_elicitation_sep1034_defaults" => {
                let params = elicitation(
                    "Please provide values (all have defaults)",
                    json!({
                        "name": {"type": "string", "description": "User's name", "default": "John Doe"},
                        "age": {"type": "integer", "description": "User's age", "default": 30},
                        "score": {"type": "number", "description": "User's score", "default": 95.5},
                        "status": {
                            "type": "string",
                            "description": "User's status",
                            "enum": ["active", "inactive", "pending"],
                            "default": "active",
                        },
                        "verified": {"type": "boolean", "description": "Whether the user is verified", "default": true},
                    }),
                    &[],
                )?;
                self.elicit(&cx, params).await
            }
            "test_elicitation_sep1330_enums" => {
                let params = elicitation(
                    "Choose among enums of every kind",
                    json!({
                        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                        "titledSingle": {
                            "type": "string",
                            "oneOf": [
                                {"const": "value1", "title": "First Option"},
                                {"const": "value2", "title": "Second Option"},
                                {"const": "value3", "title": "Third Option"},
                            ],
                        },
                        "legacyEnum": {
                            "type": "string",
                            "enum": ["opt1", "opt2", "opt3"],
                            "enumNames": ["Option One", "Option Two", "Option Three"],
                        },
                        "untitledMulti": {
                            "type": "array",
                            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                        },
                        "titledMulti": {
                            "type": "array",
                            "items": {
                                "anyOf": [
                                    {"const": "value1", "title": "First Choice"},
                                    {"const": "value2", "title": "Second Choice"},
                                    {"const": "value3", "title": "Third Choice"},
                                ],
                            },
                        },
                    }),
                    &[],
                )?;
                self.elicit(&cx, params).await
            }
            "json_schema_2020_12_tool" => CallToolResult::success(vec![ContentBlock::text(
                format!("Hello, {}!", arg("name").unwrap_or_else(|| "world".into())),
            )]),
            "test_custom_header" => match arg("value") {
                Some(value) => CallToolResult::success(vec![ContentBlock::text(value)]),
                None => return Err(ErrorData::invalid_params("value must be a string", None)),
            },
            "test_reconnection" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                CallToolResult::success(vec![ContentBlock::text("Reconnection test completed")])
            }
            "test_trigger_tool_change" => {
                for sink in self.listeners().await {
                    if let Err(e) = sink.notify_tool_list_changed().await {
                        tracing::debug!("list-changed notification not sent: {e}");
                    }
                }
                CallToolResult::success(vec![ContentBlock::text("Tool list change triggered")])
            }
            "test_trigger_prompt_change" => {
                for sink in self.listeners().await {
                    if let Err(e) = sink.notify_prompt_list_changed().await {
                        tracing::debug!("list-changed notification not sent: {e}");
                    }
                }
                CallToolResult::success(vec![ContentBlock::text("Prompt list change triggered")])
            }
            "test_missing_capability" => {
                let caps = cx.meta.client_capabilities().unwrap_or_default();
                if caps.sampling.is_none() {
                    return Err(ErrorData::missing_required_client_capability(
                        ClientCapabilities::builder().enable_sampling().build(),
                    ));
                }
                CallToolResult::success(vec![ContentBlock::text("The client can sample")])
            }
            "test_streaming_elicitation" => {
                // On 2026-07-28 a server asks for input in its result, never with a request of
                // its own on the response stream.
                return input_required(
                    InputRequests::from([(
                        "streaming_elicitation".into(),
                        ask(
                            "Provide a value",
                            json!({"value": {"type": "string"}}),
                            &["value"],
                        )?,
                    )]),
                    None,
                );
            }
            "test_logging_tool" => {
                if let Some(level) = cx.meta.log_level() {
                    let note = LoggingMessageNotificationParam::new(
                        level,
                        json!("logLevel was requested"),
                    )
                    .with_logger("warren-conformance-fixture");
                    if let Err(e) = cx.peer.notify_logging_message(note).await {
                        tracing::debug!("log notification not sent: {e}");
                    }
                }
                CallToolResult::success(vec![ContentBlock::text("Logging tool completed")])
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("no tool {other:?}"),
                    None,
                ));
            }
        };
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new("test://static-text", "Static Text Resource")
                .with_description("A static text resource")
                .with_mime_type("text/plain"),
            Resource::new("test://static-binary", "Static Binary Resource")
                .with_description("A static binary resource (a PNG)")
                .with_mime_type("image/png"),
            Resource::new("test://watched-resource", "Watched Resource")
                .with_description("A text resource to subscribe to")
                .with_mime_type("text/plain"),
        ])
        .with_ttl_ms(TTL_MS)
        .with_cache_scope(CacheScope::Public))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("test://template/{id}/data", "Templated Resource")
                .with_description("A resource whose URI names an id")
                .with_mime_type("application/json"),
        ])
        .with_ttl_ms(TTL_MS)
        .with_cache_scope(CacheScope::Public))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let plain = |mime: &str, text: String| ResourceContents::TextResourceContents {
            uri: uri.clone(),
            mime_type: Some(mime.into()),
            text,
            meta: None,
        };
        let contents = match uri.as_str() {
            "test://static-text" => plain(
                "text/plain",
                "This is the content of the static text resource.".into(),
            ),
            "test://watched-resource" => plain("text/plain", "This resource is watched.".into()),
            "test://static-binary" => ResourceContents::BlobResourceContents {
                uri: uri.clone(),
                mime_type: Some("image/png".into()),
                blob: PNG.into(),
                meta: None,
            },
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|rest| rest.strip_suffix("/data"))
                .filter(|id| !id.is_empty() && !id.contains('/'))
            {
                Some(id) => plain(
                    "application/json",
                    json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")})
                        .to_string(),
                ),
                None => {
                    return Err(ErrorData::resource_not_found(
                        format!("no resource {uri:?}"),
                        Some(json!({"uri": uri})),
                    ));
                }
            },
        };
        Ok(ReadResourceResult::new(vec![contents])
            .with_ttl_ms(TTL_MS)
            .with_cache_scope(CacheScope::Public)
            .into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.shared.watched.lock().await.insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.shared.watched.lock().await.remove(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let arg = |name: &str, what: &str| {
            PromptArgument::new(name)
                .with_description(what)
                .with_required(true)
        };
        Ok(ListPromptsResult::with_all_items(vec![
            Prompt::new(
                "test_simple_prompt",
                Some("A prompt without arguments"),
                None,
            ),
            Prompt::new(
                "test_prompt_with_arguments",
                Some("A prompt that quotes its two arguments"),
                Some(vec![
                    arg("arg1", "First argument"),
                    arg("arg2", "Second argument"),
                ]),
            ),
            Prompt::new(
                "test_prompt_with_embedded_resource",
                Some("A prompt that embeds a resource"),
                Some(vec![arg("resourceUri", "The URI of the resource to embed")]),
            ),
            Prompt::new(
                "test_prompt_with_image",
                Some("A prompt that includes an image"),
                None,
            ),
            Prompt::new(
                "test_input_required_result_prompt",
                Some("A prompt that first asks the user for context (SEP-2322)"),
                None,
            ),
        ])
        .with_ttl_ms(TTL_MS)
        .with_cache_scope(CacheScope::Public))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let arg = |name: &str| args.get(name).and_then(Value::as_str).unwrap_or_default();
        let user = |t: String| PromptMessage::new_text(Role::User, t);
        let result = match request.name.as_str() {
            "test_simple_prompt" => {
                GetPromptResult::new(vec![user("This is a simple prompt for testing.".into())])
            }
            "test_prompt_with_arguments" => GetPromptResult::new(vec![user(format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                arg("arg1"),
                arg("arg2")
            ))]),
            "test_prompt_with_embedded_resource" => {
                let uri = match arg("resourceUri") {
                    "" => "test://static-text",
                    uri => uri,
                };
                GetPromptResult::new(vec![
                    PromptMessage::new(
                        Role::User,
                        ContentBlock::resource(ResourceContents::TextResourceContents {
                            uri: uri.into(),
                            mime_type: Some("text/plain".into()),
                            text: "Embedded resource content for testing.".into(),
                            meta: None,
                        }),
                    ),
                    user("Please process the embedded resource above.".into()),
                ])
            }
            "test_prompt_with_image" => GetPromptResult::new(vec![
                PromptMessage::new(
                    Role::User,
                    ContentBlock::Image(ImageContent::new(PNG, "image/png")),
                ),
                user("Please analyze the image above.".into()),
            ]),
            "test_input_required_result_prompt" => {
                match answer(request.input_responses.as_ref(), "user_context") {
                    Some(a) => GetPromptResult::new(vec![user(format!(
                        "Prompt with elicited context: {}",
                        field(a, "context").unwrap_or("(none)")
                    ))]),
                    None => {
                        let requests = InputRequests::from([(
                            "user_context".into(),
                            ask(
                                "What context should the prompt use?",
                                json!({"context": {"type": "string"}}),
                                &["context"],
                            )?,
                        )]);
                        return Ok(InputRequiredResult::from_input_requests(requests).into());
                    }
                }
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("no prompt {other:?}"),
                    None,
                ));
            }
        };
        Ok(result.into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let candidates: &[&str] = match (&request.r#ref, request.argument.name.as_str()) {
            (Reference::Prompt(_), "arg1" | "arg2") => {
                &["test", "testValue1", "testValue2", "value"]
            }
            (Reference::Resource(_), "id") => &["1", "2", "3", "123"],
            _ => &[],
        };
        let prefix = request.argument.value.as_str();
        let values = candidates
            .iter()
            .filter(|c| c.starts_with(prefix))
            .map(|c| (*c).to_owned())
            .collect();
        Ok(CompleteResult::new(
            CompletionInfo::new(values).map_err(internal)?,
        ))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self.shared.log_level.lock().await = request.level;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tool_names_are_unique_and_of_the_recommended_form() {
        let tools = tools();
        let names: HashSet<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names.len(), tools.len());
        for name in names {
            assert!(
                !name.is_empty()
                    && name.len() <= 128
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
                "{name}"
            );
        }
    }

    #[test]
    fn a_sealed_request_state_opens_and_a_tampered_one_does_not() {
        let f = Fixture::new();
        let sealed = f.seal(&json!({"round": 1})).unwrap();
        assert_eq!(f.open(&sealed).unwrap(), json!({"round": 1}));
        assert!(f.open(&format!("{sealed}-TAMPERED")).is_err());
        assert!(f.open("").is_err());
    }
}
