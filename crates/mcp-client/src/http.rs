//! A Streamable HTTP MCP server, reached from the host only through the task's egress policy.
//!
//! The host runs the client (rmcp's Streamable HTTP transport on reqwest), and every request
//! goes through the task's own egress proxy — the one its cell uses — on a loopback port the
//! runtime opens for it: the server's name must be among the task's network capabilities, its
//! addresses are checked after resolution, and each connection is audited as egress. Without
//! network capabilities there is no proxy, and an HTTP server is refused before anything is
//! sent. Redirects are not followed.
//!
//! Headers come from `headers_from_env`: each value is read from the host's environment when
//! the server is started (a token stays on the host; the cell never sees it).

use std::collections::HashMap;

use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use warren_config::manifest::McpServer;

use crate::McpError;

/// The transport to `url` for `decl`, through the egress proxy at `proxy`
/// (`http://127.0.0.1:PORT`), with `decl`'s headers read from `env`.
pub fn transport(
    decl: &McpServer,
    url: &str,
    proxy: Option<&str>,
    env: &HashMap<String, String>,
) -> Result<StreamableHttpClientTransport<reqwest013::Client>, McpError> {
    let refuse = |reason: String| McpError::Spawn {
        server: decl.name.clone(),
        command: url.to_owned(),
        reason,
    };
    let Some(proxy) = proxy else {
        return Err(refuse(
            "the task has no network capabilities, and an HTTP server is reached only through \
             its egress policy (add the server's host to capabilities.network)"
                .into(),
        ));
    };
    let mut headers = HashMap::new();
    for (name, var) in &decl.headers_from_env {
        let value = env
            .get(var)
            .ok_or_else(|| refuse(format!("header {name}: the variable {var} is not set")))?;
        let name = reqwest013::header::HeaderName::try_from(name.as_str())
            .map_err(|e| refuse(format!("header {name}: {e}")))?;
        let mut value =
            reqwest013::header::HeaderValue::try_from(value.as_str()).map_err(|_| {
                refuse(format!(
                    "header {name}: the value of {var} is not a header value"
                ))
            })?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    // reqwest is built without a crypto provider: Warren's TLS is rustls on ring throughout.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let proxy = reqwest013::Proxy::all(proxy).map_err(|e| refuse(format!("egress proxy: {e}")))?;
    let client = reqwest013::Client::builder()
        .no_proxy()
        .proxy(proxy)
        .redirect(reqwest013::redirect::Policy::none())
        // The proxy relays one plain-HTTP request per connection: never reuse one.
        .pool_max_idle_per_host(0)
        .connect_timeout(decl.startup_timeout)
        .build()
        .map_err(|e| refuse(e.to_string()))?;
    let mut config = config(url);
    config.custom_headers = headers;
    Ok(StreamableHttpClientTransport::with_client(client, config))
}

/// The transport's configuration for `url`: its limits on what a server sends.
pub(crate) fn config(url: &str) -> StreamableHttpClientTransportConfig {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    config.max_sse_event_size = crate::convert::MAX_MESSAGE;
    config.max_json_response_size = crate::convert::MAX_MESSAGE;
    config
}
