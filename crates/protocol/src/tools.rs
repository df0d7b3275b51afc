//! Tool names: which entries of a `tools` list (a manifest's request, an operator's bound)
//! cover which tool.
//!
//! An entry is a tool's exact name, or — for the tools MCP servers provide, named
//! `mcp__<server>__<tool>` — a prefix ending in `*`: `mcp__time__*` covers every tool of the
//! server `time`, `mcp__*` every MCP tool. No other entry is a pattern, so a built-in tool is
//! only ever allowed by its own name.

/// Prefix of the agent tools an MCP server's tools become: `mcp__<server>__<tool>`.
pub const MCP_PREFIX: &str = "mcp__";

/// Whether `name` is one of the tools `entries` allow (see the module docs).
pub fn tool_allowed(entries: &[String], name: &str) -> bool {
    entries.iter().any(|e| entry_covers(e, name))
}

/// Whether one `tools` entry covers the tool `name` (see the module docs).
pub fn entry_covers(entry: &str, name: &str) -> bool {
    if entry == name {
        return true;
    }
    match entry.strip_suffix('*') {
        Some(prefix) if prefix.starts_with(MCP_PREFIX) => name.starts_with(prefix),
        _ => false,
    }
}

/// The MCP server an `mcp__<server>__<tool>` name (or entry) belongs to.
pub fn mcp_server_of(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(MCP_PREFIX)?;
    rest.split_once("__").map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mcp_entries_are_patterns() {
        let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(tool_allowed(&e(&["mcp__time__*"]), "mcp__time__now"));
        assert!(!tool_allowed(&e(&["mcp__time__*"]), "mcp__timer__now"));
        assert!(tool_allowed(&e(&["mcp__*"]), "mcp__git__log"));
        assert!(!tool_allowed(&e(&["mcp__*"]), "shell"));
        assert!(!tool_allowed(&e(&["sh*"]), "shell"));
        assert!(!tool_allowed(&e(&["*"]), "shell"));
        assert!(tool_allowed(&e(&["shell"]), "shell"));
        assert_eq!(mcp_server_of("mcp__git__log"), Some("git"));
        assert_eq!(mcp_server_of("mcp__git"), None);
        assert_eq!(mcp_server_of("shell"), None);
    }
}
