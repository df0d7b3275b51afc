//! The conformance driver: Warren's MCP client run against the official MCP conformance suite
//! (`@modelcontextprotocol/conformance`), whose client scenarios start a mock server and launch
//! a client at it.
//!
//! The suite's mocks serve fixed tool names (`add_numbers`, `test_mrtr_echo_state`,
//! `test_custom_headers`, …) and drive whole OAuth flows (protected-resource and
//! authorization-server metadata discovery, client registration, PKCE, an authorization
//! endpoint that redirects straight back, scope step-up, a move to another authorization
//! server), and the only thing a launched client learns is the scenario's name, its protocol
//! revision and, for some, a context (`MCP_CONFORMANCE_SCENARIO`,
//! `MCP_CONFORMANCE_PROTOCOL_VERSION`, `MCP_CONFORMANCE_CONTEXT`). So Warren has a client
//! fixture mode, as the SDKs do (rust-sdk's `conformance-client`, the TypeScript
//! `everything-client`): [`run`] plays one scenario, `warren mcp --conformance-client URL`
//! launches it (CI: `.ci/mcp-conformance`). What it does is the same for every scenario:
//! connect, list the tools (and for `http-standard-headers` the resources and prompts too,
//! reading and getting each), call the tools — those the context names with its arguments,
//! otherwise every listed one with arguments made from its input schema; for
//! `json-schema-2020-12-preservation`, the echo tool with each other tool's schema as listed —
//! and, whenever the server answers with an authorization challenge, authorize and go on
//! (the driver's session loop).
//!
//! What is Warren's and what is only the driver's:
//!
//! - **Warren's production path**: the SDK's ([`rmcp`]) client and its Streamable HTTP
//!   transport on reqwest with rustls on ring, as [`crate::http`] builds it (the same response
//!   limits, redirects not followed), and Warren's client information (`warren` and its
//!   version). What the suite checks of the wire — `MCP-Protocol-Version` and the per-request
//!   `_meta` of `2026-07-28`, the retry on an unsupported version, `Mcp-Method`/`Mcp-Name` and
//!   the `Mcp-Param-*` headers a tool's `x-mcp-header` annotations ask for (base64 where a value
//!   is unsafe), tools with invalid header annotations left out, `$ref`s in schemas never
//!   fetched — is the SDK client's doing, not the driver's.
//! - **The driver's only**: it connects directly to the suite's mock on the loopback
//!   interface, where the production client reaches an HTTP server only through the task's
//!   egress proxy ([`crate::http`]); it picks the lifecycle by the scenario's revision (the
//!   stateless `server/discover` one for `2026-07-28`; production sessions initialize); it
//!   answers elicitations itself, accepting with the schema's defaults or sample values, and
//!   retries multi-round-trip results (`input_required`, SEP-2322) through the SDK's helpers;
//!   and it does OAuth with the SDK's `auth` module ([`OAuthState`], [`AuthClient`]), fetching
//!   the authorization URL itself instead of opening a browser. Warren's production client
//!   sends only the static headers an agent's manifest names (`headers_from_env`); it does no
//!   OAuth.

use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ElicitRequestParams, ElicitResult,
    ElicitationAction, ElicitationCapability, FormElicitationCapability, GetPromptRequestParams,
    JsonObject, ProtocolVersion, ReadResourceRequestParams, Tool,
};
use rmcp::service::{RequestContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::auth::{
    AuthClient, AuthorizationCallback, AuthorizationManager, AuthorizationRequest, OAuthState,
    ScopeUpgradeConfig, WWWAuthenticateParams,
};
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, ErrorData, RoleClient};
use serde_json::{Map, Value, json};

/// The client id Warren presents where an authorization server accepts Client ID Metadata
/// Documents: the URL of the document the suite pretends to serve for its test client.
pub const CLIENT_METADATA_URL: &str = "https://conformance-test.local/client-metadata.json";
/// Where the authorization server is told to send the browser back (nobody listens: the
/// driver reads the redirect's `Location` instead of following it).
const REDIRECT_URI: &str = "http://localhost:3000/callback";
/// How long a scenario may take: less than the 120 seconds `.ci/mcp-conformance` gives the
/// suite (`--timeout 120000`), so that a mock that stops answering ends in an error of the
/// driver's, not in the suite killing it. The suite starts every scenario at once — some 40
/// processes on a 2-core machine — and its default 30 seconds was once too short for one.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(100);
/// Authorization requests per scenario, at most (the first one and the scope step-ups).
const MAX_AUTHORIZATIONS: u32 = 3;

/// Play the suite's client scenario `scenario` against its mock server at `url`, for the
/// protocol revision `protocol` (the suite's `MCP_CONFORMANCE_PROTOCOL_VERSION`; none:
/// `2025-11-25`), with the scenario's `context` (`MCP_CONFORMANCE_CONTEXT`, parsed). `Err`
/// says why it failed; some scenarios expect a failure (a resource that is not the server's,
/// an issuer that does not match), and the suite judges them by what reached its mock.
pub async fn run(
    url: &str,
    scenario: &str,
    protocol: Option<&str>,
    context: Option<Value>,
) -> Result<(), String> {
    let plan = plan(scenario)?;
    // reqwest is built without a crypto provider: Warren's TLS is rustls on ring throughout.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let context = Context::parse(context.as_ref());
    let session = Session {
        url: url.to_owned(),
        lifecycle: lifecycle(plan, protocol),
        context,
    };
    match tokio::time::timeout(SCENARIO_TIMEOUT, session.play(plan)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "scenario {scenario} did not end within {SCENARIO_TIMEOUT:?}"
        )),
    }
}

/// What a scenario needs of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// Call the tools (else list them only).
    call: bool,
    /// Also list, read and get the resources and prompts.
    resources_and_prompts: bool,
    /// Always the `initialize` lifecycle (the scenario's mock serves no other).
    initialize_only: bool,
    /// Send each other listed tool's input schema back through [`ECHO_TOOL`], instead of
    /// calling the tools (SEP-1613, SEP-2106: a schema is kept as the server sent it).
    echo_schemas: bool,
}

/// The tool of `json-schema-2020-12-preservation` that answers the schema it is given.
const ECHO_TOOL: &str = "json_schema_echo";

/// The plan for `scenario`; an error for one the driver does not know.
fn plan(scenario: &str) -> Result<Plan, String> {
    let call = Plan {
        call: true,
        resources_and_prompts: false,
        initialize_only: false,
        echo_schemas: false,
    };
    match scenario {
        // SEP-2106: the tool schema's network `$ref` must not be fetched: list, nothing more.
        // Its mock (the TypeScript SDK's) answers `initialize` only.
        "json-schema-ref-no-deref" => Ok(Plan {
            call: false,
            initialize_only: true,
            ..call
        }),
        "initialize" => Ok(Plan {
            call: false,
            ..call
        }),
        "http-standard-headers" => Ok(Plan {
            resources_and_prompts: true,
            ..call
        }),
        "json-schema-2020-12-preservation" => Ok(Plan {
            call: false,
            echo_schemas: true,
            ..call
        }),
        "tools_call"
        | "request-metadata"
        | "sep-2322-client-request-state"
        | "http-custom-headers"
        | "http-invalid-tool-headers"
        | "elicitation-sep1034-client-defaults"
        | "sse-retry" => Ok(call),
        // Every authorization scenario is the same session: authorization is whatever the
        // server's challenges ask for (`auth/client-credentials-*`, `auth/dpop*` and the other
        // extensions are not among them: the suite runs those without scoring).
        auth if auth.starts_with("auth/") && !EXTENSIONS.contains(&auth) => Ok(call),
        other => Err(format!(
            "the conformance driver does not know the scenario {other:?}"
        )),
    }
}

/// The suite's authorization extensions (scenarios it runs without scoring): flows without a
/// person (client credentials, workload identity, enterprise-managed), DPoP-bound tokens.
const EXTENSIONS: &[&str] = &[
    "auth/client-credentials-jwt",
    "auth/client-credentials-basic",
    "auth/enterprise-managed-authorization",
    "auth/cross-app-access-complete-flow",
    "auth/dpop",
    "auth/dpop-nonce",
    "auth/wif-jwt-bearer",
];

/// The lifecycle for `protocol`: from `2026-07-28` on the stateless one (`server/discover`,
/// then requests that each carry the version and the client's capabilities), preferring
/// `protocol` and then every other known version, newest first; before it, `initialize`.
fn lifecycle(plan: Plan, protocol: Option<&str>) -> ClientLifecycleMode {
    let version = protocol
        .and_then(|v| serde_json::from_value::<ProtocolVersion>(Value::String(v.into())).ok())
        .unwrap_or(ProtocolVersion::V_2025_11_25);
    if plan.initialize_only || version.as_str() < ProtocolVersion::V_2026_07_28.as_str() {
        return ClientLifecycleMode::Initialize;
    }
    let mut preferred = vec![version];
    for v in ProtocolVersion::KNOWN_VERSIONS.iter().rev() {
        if !preferred.contains(v) {
            preferred.push(v.clone());
        }
    }
    ClientLifecycleMode::Discover {
        preferred_versions: preferred,
    }
}

/// The scenario's context: the tool calls to make, pre-registered client credentials.
#[derive(Debug, Default, PartialEq)]
struct Context {
    /// `toolCalls`: each tool's name and arguments.
    tool_calls: Vec<(String, Option<JsonObject>)>,
    /// `client_id` and `client_secret` (`auth/pre-registration`).
    client: Option<(String, Option<String>)>,
}

impl Context {
    fn parse(context: Option<&Value>) -> Context {
        let Some(context) = context else {
            return Context::default();
        };
        let tool_calls = context["toolCalls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .filter_map(|c| {
                        let name = c["name"].as_str()?.to_owned();
                        Some((name, c["arguments"].as_object().cloned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let client = context["client_id"].as_str().map(|id| {
            (
                id.to_owned(),
                context["client_secret"].as_str().map(str::to_owned),
            )
        });
        Context { tool_calls, client }
    }
}

/// The client's side of the protocol: Warren's client information, elicitations answered.
#[derive(Clone)]
struct Driver;

impl ClientHandler for Driver {
    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut info = crate::client_info();
        let mut capabilities = ClientCapabilities::default();
        capabilities.elicitation = Some(
            ElicitationCapability::new()
                .with_form(FormElicitationCapability::new().with_schema_validation(true)),
        );
        info.capabilities = capabilities;
        info
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _cx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let request = serde_json::to_value(&request).unwrap_or_default();
        let content = elicited(&request["requestedSchema"]);
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(Value::Object(content)))
    }
}

/// What a person would accept for the form `schema`: each property's default, else, for a
/// required one, a sample value of its type (the first choice of an enumeration).
fn elicited(schema: &Value) -> Map<String, Value> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut content = Map::new();
    let Some(properties) = schema["properties"].as_object() else {
        return content;
    };
    for (name, property) in properties {
        let value = match property.get("default") {
            Some(d) => Some(d.clone()),
            None if required.contains(&name.as_str()) => Some(sample(property)),
            None => None,
        };
        if let Some(v) = value {
            content.insert(name.clone(), v);
        }
    }
    content
}

/// A value of `property`'s type for a required argument or form field.
fn sample(property: &Value) -> Value {
    if let Some(first) = property["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    if let Some(first) = property["oneOf"].as_array().and_then(|e| e.first()) {
        return first["const"].clone();
    }
    match property["type"].as_str() {
        Some("number") => json!(1.0),
        Some("integer") => json!(1),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        Some("object") => json!({}),
        Some("string") if property["format"] == "email" => json!("test@example.com"),
        Some("string") => json!("test"),
        _ => Value::Null,
    }
}

/// Arguments for `tool` from its input schema: a sample value for each required property.
fn arguments(tool: &Tool) -> Option<JsonObject> {
    let schema = Value::Object((*tool.input_schema).clone());
    let properties = schema["properties"].as_object()?;
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let args: JsonObject = properties
        .iter()
        .filter(|(name, _)| required.contains(&name.as_str()))
        .map(|(name, property)| (name.clone(), sample(property)))
        .collect();
    Some(args)
}

/// The HTTP client: directly to the suite's mock (see the module's documentation), redirects
/// not followed.
fn http() -> Result<reqwest013::Client, String> {
    reqwest013::Client::builder()
        .no_proxy()
        .redirect(reqwest013::redirect::Policy::none())
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

type Client = RunningService<RoleClient, Driver>;
type Authorized = AuthClient<reqwest013::Client>;

/// One scenario's connection to the mock: its URL, lifecycle and context.
struct Session {
    url: String,
    lifecycle: ClientLifecycleMode,
    context: Context,
}

/// Why a step failed: the server's authorization challenge (a `WWW-Authenticate` value), or
/// anything else.
enum Failure {
    Challenge(String),
    Other(String),
}

impl Failure {
    fn service(what: &str, e: rmcp::ServiceError) -> Failure {
        match e.auth_challenge() {
            Some(c) => Failure::Challenge(c.to_owned()),
            None => Failure::Other(format!("{what}: {e}")),
        }
    }

    fn connect(e: rmcp::service::ClientInitializeError) -> Failure {
        match e.auth_challenge() {
            Some(c) => Failure::Challenge(c.to_owned()),
            None => Failure::Other(format!("connect: {e}")),
        }
    }
}

/// One thing the scenario does on a connection.
#[derive(Clone, Debug)]
enum Step {
    ListTools,
    Call(String, Option<JsonObject>),
    Explore,
}

impl Session {
    /// Connect, then each step; a challenge is answered by authorizing (or, for more scope,
    /// by re-authorizing) and the step done again on a new connection, within
    /// [`MAX_AUTHORIZATIONS`].
    async fn play(&self, plan: Plan) -> Result<(), String> {
        let http = http()?;
        // No credentials at first: the requests go out without a token, and a server that
        // wants one answers with the challenge that starts authorization.
        let mut auth = AuthClient::new(
            http.clone(),
            AuthorizationManager::new(self.url.as_str())
                .await
                .map_err(|e| format!("authorization: {e}"))?,
        );
        let mut authorizations = 0;
        let mut client: Option<Client> = None;
        let mut steps = vec![Step::ListTools];
        let mut i = 0;
        while i < steps.len() {
            let step = steps[i].clone();
            let outcome = match &client {
                Some(c) => self.step(c, &step).await,
                None => match self.connect(&auth).await {
                    Ok(c) => {
                        client = Some(c);
                        continue;
                    }
                    Err(f) => Err(f),
                },
            };
            match outcome {
                Ok(tools) => {
                    if let Some(tools) = tools {
                        steps.extend(self.after_listing(plan, &tools));
                    }
                    i += 1;
                }
                Err(Failure::Other(e)) => {
                    close(client).await;
                    return Err(e);
                }
                Err(Failure::Challenge(challenge)) => {
                    close(client.take()).await;
                    if authorizations == MAX_AUTHORIZATIONS {
                        return Err(format!(
                            "the server still refuses after {MAX_AUTHORIZATIONS} authorizations: \
                             {challenge}"
                        ));
                    }
                    authorizations += 1;
                    auth = self.authorize(&http, &auth, &challenge).await?;
                }
            }
        }
        close(client).await;
        Ok(())
    }

    /// The steps after the tools are listed: the calls, and more for some scenarios.
    fn after_listing(&self, plan: Plan, tools: &[Tool]) -> Vec<Step> {
        let mut steps = Vec::new();
        if plan.call {
            if self.context.tool_calls.is_empty() {
                steps.extend(
                    tools
                        .iter()
                        .map(|t| Step::Call(t.name.to_string(), arguments(t))),
                );
            } else {
                steps.extend(
                    self.context
                        .tool_calls
                        .iter()
                        .map(|(name, args)| Step::Call(name.clone(), args.clone())),
                );
            }
        }
        if plan.echo_schemas && tools.iter().any(|t| t.name == ECHO_TOOL) {
            steps.extend(tools.iter().filter(|t| t.name != ECHO_TOOL).map(|t| {
                let mut args = JsonObject::new();
                args.insert("schema".into(), Value::Object((*t.input_schema).clone()));
                Step::Call(ECHO_TOOL.into(), Some(args))
            }));
        }
        if plan.resources_and_prompts {
            steps.push(Step::Explore);
        }
        steps
    }

    async fn connect(&self, auth: &Authorized) -> Result<Client, Failure> {
        let transport = StreamableHttpClientTransport::with_client(
            auth.clone(),
            crate::http::config(&self.url),
        );
        Driver
            .serve_with_lifecycle(transport, self.lifecycle.clone())
            .await
            .map_err(Failure::connect)
    }

    /// Do `step` on `client`: the listed tools for [`Step::ListTools`].
    async fn step(&self, client: &Client, step: &Step) -> Result<Option<Vec<Tool>>, Failure> {
        match step {
            Step::ListTools => client
                .list_all_tools()
                .await
                .map(Some)
                .map_err(|e| Failure::service("tools/list", e)),
            Step::Call(name, args) => {
                let mut params = CallToolRequestParams::new(name.clone());
                params.arguments = args.clone();
                let result = client
                    .call_tool(params)
                    .await
                    .map_err(|e| Failure::service(&format!("tools/call {name}"), e))?;
                tracing::info!(
                    "tools/call {name}: {}",
                    crate::convert::render(&result)
                        .chars()
                        .take(200)
                        .collect::<String>()
                );
                Ok(None)
            }
            Step::Explore => {
                explore(client).await?;
                Ok(None)
            }
        }
    }

    /// Authorize for `challenge`: more scope on the same registration when the token lacks
    /// some (`insufficient_scope`), else from the start — discovery from the challenge,
    /// registration (pre-registered, a Client ID Metadata Document, or dynamic), the
    /// authorization request, the token.
    async fn authorize(
        &self,
        http: &reqwest013::Client,
        current: &Authorized,
        challenge: &str,
    ) -> Result<Authorized, String> {
        let base = url::Url::parse(&self.url).map_err(|e| format!("{}: {e}", self.url))?;
        let params = WWWAuthenticateParams::parse(challenge, &base);
        tracing::info!("authorization challenge: {challenge}");
        if params.is_insufficient_scope()
            && let Some(scope) = &params.scope
        {
            let manager = current.auth_manager.lock().await;
            if manager.get_access_token().await.is_ok() {
                // The union of the scopes held and those asked for (SEP-2350).
                let url = manager
                    .request_scope_upgrade(scope)
                    .await
                    .map_err(|e| format!("scope step-up: {e}"))?;
                let callback = authorization_redirect(http, &url).await?;
                manager
                    .exchange_code_for_token_with_issuer(
                        &callback.code,
                        &callback.csrf_token,
                        callback.issuer.as_deref(),
                    )
                    .await
                    .map_err(|e| format!("token (scope step-up): {e}"))?;
                drop(manager);
                return Ok(current.clone());
            }
        }
        let mut oauth = OAuthState::new(self.url.as_str(), None)
            .await
            .map_err(|e| format!("authorization: {e}"))?;
        let mut request = AuthorizationRequest::new(REDIRECT_URI).with_challenge(challenge);
        request = match &self.context.client {
            Some((id, secret)) => {
                let r = request.with_preregistered_client(id.clone());
                match secret {
                    Some(s) => r.with_client_secret(s.clone()),
                    None => r,
                }
            }
            None => request
                .with_client_name("warren")
                .with_client_metadata_url(CLIENT_METADATA_URL),
        };
        oauth
            .start_authorization(request)
            .await
            .map_err(|e| format!("authorization: {e}"))?;
        let url = oauth
            .get_authorization_url()
            .await
            .map_err(|e| format!("authorization: {e}"))?;
        let callback = authorization_redirect(http, &url).await?;
        oauth
            .handle_callback_with_issuer(
                &callback.code,
                &callback.csrf_token,
                callback.issuer.as_deref(),
            )
            .await
            .map_err(|e| format!("token: {e}"))?;
        let mut manager = oauth
            .into_authorization_manager()
            .ok_or("authorization: no authorized state after the token")?;
        // Re-authorizations for more scope count against the same limit as the first.
        let mut upgrades = ScopeUpgradeConfig::default();
        upgrades.max_upgrade_attempts = MAX_AUTHORIZATIONS - 1;
        manager.set_scope_upgrade_config(upgrades);
        Ok(AuthClient::new(http.clone(), manager))
    }
}

/// The authorization endpoint's answer to `url`, which a person's browser would follow back
/// to [`REDIRECT_URI`]: the code, state and issuer of its `Location`.
async fn authorization_redirect(
    http: &reqwest013::Client,
    url: &str,
) -> Result<AuthorizationCallback, String> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("authorization request: {e}"))?;
    let location = response
        .headers()
        .get(reqwest013::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            format!(
                "authorization request: {} without a redirect",
                response.status()
            )
        })?;
    AuthorizationCallback::from_redirect_url(location)
        .map_err(|e| format!("authorization redirect: {e}"))
}

/// List the resources and prompts, read each resource and get each prompt (with a sample
/// value for each required argument).
async fn explore(client: &Client) -> Result<(), Failure> {
    let capabilities = client
        .peer_info()
        .map(|i| i.capabilities.clone())
        .unwrap_or_default();
    if capabilities.resources.is_some() {
        let resources = client
            .list_all_resources()
            .await
            .map_err(|e| Failure::service("resources/list", e))?;
        for r in resources {
            client
                .read_resource(ReadResourceRequestParams::new(r.uri.clone()))
                .await
                .map_err(|e| Failure::service(&format!("resources/read {}", r.uri), e))?;
        }
    }
    if capabilities.prompts.is_some() {
        let prompts = client
            .list_all_prompts()
            .await
            .map_err(|e| Failure::service("prompts/list", e))?;
        for p in prompts {
            let mut params = GetPromptRequestParams::new(p.name.clone());
            let args: JsonObject = p
                .arguments
                .iter()
                .flatten()
                .filter(|a| a.required == Some(true))
                .map(|a| (a.name.clone(), json!("test")))
                .collect();
            if !args.is_empty() {
                params.arguments = Some(args);
            }
            client
                .get_prompt(params)
                .await
                .map_err(|e| Failure::service(&format!("prompts/get {}", p.name), e))?;
        }
    }
    Ok(())
}

async fn close(client: Option<Client>) {
    if let Some(c) = client {
        let _ = c.cancel().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn scenarios_map_to_plans_and_unknown_ones_are_refused() {
        assert!(plan("tools_call").is_ok_and(|p| p.call && !p.initialize_only));
        assert!(plan("json-schema-ref-no-deref").is_ok_and(|p| !p.call && p.initialize_only));
        assert!(plan("http-standard-headers").is_ok_and(|p| p.resources_and_prompts));
        assert!(plan("json-schema-2020-12-preservation").is_ok_and(|p| p.echo_schemas && !p.call));
        assert!(plan("auth/scope-step-up").is_ok_and(|p| p.call));
        assert!(plan("auth/dpop").is_err());
        assert!(plan("no-such-scenario").is_err());
    }

    #[test]
    fn the_revision_picks_the_lifecycle() {
        let call = plan("tools_call").unwrap_or_else(|e| panic!("{e}"));
        let ClientLifecycleMode::Discover { preferred_versions } =
            lifecycle(call, Some("2026-07-28"))
        else {
            panic!("2026-07-28 is stateless")
        };
        assert_eq!(preferred_versions[0], ProtocolVersion::V_2026_07_28);
        assert!(preferred_versions.contains(&ProtocolVersion::V_2025_11_25));
        assert!(matches!(
            lifecycle(call, Some("2025-11-25")),
            ClientLifecycleMode::Initialize
        ));
        assert!(matches!(
            lifecycle(call, None),
            ClientLifecycleMode::Initialize
        ));
        let list = plan("json-schema-ref-no-deref").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            lifecycle(list, Some("2026-07-28")),
            ClientLifecycleMode::Initialize
        ));
    }

    #[test]
    fn the_context_gives_tool_calls_and_a_registered_client() {
        let c = Context::parse(Some(&json!({
            "name": "http-custom-headers",
            "toolCalls": [
                {"name": "test_custom_headers", "arguments": {"region": "us-west1"}},
                {"name": "bare"},
                {"arguments": {}}
            ]
        })));
        assert_eq!(c.tool_calls.len(), 2);
        assert_eq!(c.tool_calls[0].0, "test_custom_headers");
        assert_eq!(
            c.tool_calls[0].1.as_ref().map(|a| a["region"].clone()),
            Some(json!("us-west1"))
        );
        assert_eq!(c.tool_calls[1], ("bare".to_owned(), None));
        assert_eq!(c.client, None);
        let c = Context::parse(Some(&json!({
            "client_id": "pre-registered-client", "client_secret": "s"
        })));
        assert_eq!(
            c.client,
            Some(("pre-registered-client".to_owned(), Some("s".to_owned())))
        );
        assert_eq!(Context::parse(None), Context::default());
    }

    #[test]
    fn elicitations_are_accepted_with_defaults_or_samples() {
        let schema = json!({
            "type": "object",
            "required": ["name", "email", "ok", "color"],
            "properties": {
                "name": {"type": "string"},
                "email": {"type": "string", "format": "email"},
                "ok": {"type": "boolean"},
                "color": {"type": "string", "enum": ["red", "blue"]},
                "age": {"type": "integer", "default": 30},
                "status": {"type": "string", "oneOf": [{"const": "a"}], "default": "a"},
                "optional": {"type": "string"}
            }
        });
        assert_eq!(
            Value::Object(elicited(&schema)),
            json!({"name": "test", "email": "test@example.com", "ok": true, "color": "red",
                   "age": 30, "status": "a"})
        );
        assert!(elicited(&json!({})).is_empty());
    }

    #[test]
    fn tool_arguments_cover_the_required_properties() {
        let Value::Object(schema) = json!({
            "type": "object",
            "required": ["a", "b"],
            "properties": {"a": {"type": "number"}, "b": {"type": "integer"},
                           "c": {"type": "string"}}
        }) else {
            panic!("an object")
        };
        let tool = Tool::new("add_numbers", "adds", Arc::new(schema));
        assert_eq!(
            arguments(&tool).map(Value::Object),
            Some(json!({"a": 1.0, "b": 1}))
        );
        let Value::Object(bare) = json!({"type": "object"}) else {
            panic!("an object")
        };
        assert_eq!(arguments(&Tool::new("t", "d", Arc::new(bare))), None);
    }
}
