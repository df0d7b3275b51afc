//! Capabilities: what a task may do, checked at one choke point on the host and enforced again
//! by the kernel in its cell.
//!
//! An agent's manifest *requests* capabilities (tools; workspace path globs with read or
//! write; network destinations); the operator's policy *bounds* them. The effective set is the
//! intersection, kept as layers that must all allow an action: [`Capabilities::narrow`] adds a
//! layer (delegation to a child can only narrow, never widen). Each rule of the innermost
//! layer is issued an opaque handle at task start (`cap-…`); the audit log records which
//! handle allowed each call.
//!
//! The host check ([`Capabilities::check`]) sees tool calls. The kernel sees everything a
//! command does: [`Capabilities::scopes`] turns the path rules into Landlock scopes under
//! `/workspace` (a glob's literal directory prefix: `src/**` → `/workspace/src`), so a shell
//! command attempting what the host check would refuse fails in the kernel. The kernel's
//! scope is the glob's directory, coarser than the glob itself (`docs/*.md` lets a command
//! write `docs/x.txt`; the host check does not).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use serde_json::Value;
use warren_config::manifest::{Manifest, PathGrant};
use warren_protocol::mount::Scope;

/// Where the workspace is in a cell.
pub const WORKSPACE: &str = "/workspace";

/// One path rule.
#[derive(Clone, Debug)]
struct PathRule {
    glob: String,
    write: bool,
    matcher: GlobMatcher,
}

/// One layer: a manifest's request or an operator's bound.
#[derive(Clone, Debug, Default)]
pub struct Layer {
    /// Where it came from (for refusal messages): `the agent's manifest`, `the operator's policy`.
    pub origin: String,
    tools: Option<Vec<String>>,
    paths: Option<Vec<PathRule>>,
    network: Option<Vec<String>>,
    /// `/cap/nostr` (signing with the agent's key): `Some(false)` forbids it.
    nostr: Option<bool>,
}

/// An operator's policy file (TOML), `[capabilities]` section (other sections, such as
/// `warren exec`'s limits, may share the file).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PolicyFile {
    /// The bound on every agent.
    #[serde(default)]
    pub capabilities: PolicySection,
    /// Bounds on plans and delegation.
    #[serde(default)]
    pub plans: PlanSection,
}

/// `[capabilities]`: omitted keys do not restrict.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Tools any agent may use.
    pub tools: Option<Vec<String>>,
    /// Workspace paths any agent may use.
    pub paths: Option<Vec<PolicyPath>>,
    /// Network destinations any agent may reach (default: none).
    pub network: Option<Vec<String>>,
    /// Whether agents may sign Nostr events (`/cap/nostr`; default: those whose manifest
    /// asks). Publishing is bounded by `network` as well.
    pub nostr: Option<bool>,
    /// Which MCP tool calls wait for a person: `annotations` (the default: those their
    /// server marks destructive or does not mark read-only or non-destructive, and those in
    /// a manifest's `approval_required`) or `listed` (only `approval_required`).
    pub mcp_approval: Option<McpApproval>,
}

/// `[plans]`: bounds on plans and delegation (omitted keys keep the defaults of
/// [`crate::plan::PlanLimits`]).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    /// How deep delegation may nest (a plan's steps are depth 1).
    pub max_depth: Option<u32>,
    /// Children one task may start (`delegate` calls, or a plan's steps).
    pub max_children: Option<u32>,
    /// Times a plan may be replanned after a step failed past its retries.
    pub max_replans: Option<u32>,
    /// Steps one plan may have.
    pub max_steps: Option<u32>,
}

/// A capability layer as stored with a child task (see [`Layer::spec`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct LayerSpec {
    /// Where it came from.
    pub origin: String,
    /// Tools (none: not restricted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Workspace path grants: (glob, write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<(String, bool)>>,
    /// Network destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Vec<String>>,
    /// `/cap/nostr` (none: not restricted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nostr: Option<bool>,
}

/// `mcp_approval`: which MCP tool calls wait for a person.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McpApproval {
    /// By their server's annotations, and `approval_required`.
    #[default]
    Annotations,
    /// Only those in `approval_required`.
    Listed,
}

/// `{ glob = "src/**", access = "write" }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPath {
    /// Glob relative to the workspace.
    pub glob: String,
    /// `read` or `write`.
    pub access: String,
}

/// An operator policy file that cannot be used; each names the file (and, for syntax, the
/// line and column).
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    /// Not TOML, or an unknown or mistyped key.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's complaint.
        message: String,
    },
    /// A path grant's access is neither `read` nor `write`.
    #[error("{}: access must be read or write, not {access:?}", file.display())]
    Access {
        /// The file.
        file: PathBuf,
        /// The access as written.
        access: String,
    },
    /// A path grant's glob does not parse.
    #[error("{}: {source}", file.display())]
    Glob {
        /// The file.
        file: PathBuf,
        /// The glob's problem.
        source: globset::Error,
    },
}

impl PolicyFile {
    /// Parse a policy file; errors name the file, line and column.
    pub fn parse(file: &Path, text: &str) -> Result<PolicyFile, PolicyFileError> {
        let p: PolicyFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((1, 1), |s| warren_config::line_col(text, s.start));
            PolicyFileError::Syntax {
                file: file.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        for path in p.capabilities.paths.iter().flatten() {
            if !["read", "write"].contains(&path.access.as_str()) {
                return Err(PolicyFileError::Access {
                    file: file.to_owned(),
                    access: path.access.clone(),
                });
            }
            Glob::new(&path.glob).map_err(|source| PolicyFileError::Glob {
                file: file.to_owned(),
                source,
            })?;
        }
        Ok(p)
    }

    /// This policy as a bounding layer.
    pub fn layer(&self) -> Layer {
        let c = &self.capabilities;
        Layer {
            origin: "the operator's policy".into(),
            tools: c.tools.clone(),
            paths: c.paths.as_ref().map(|ps| {
                ps.iter()
                    .filter_map(|p| rule(&p.glob, p.access == "write"))
                    .collect()
            }),
            // No network unless the policy lists it.
            network: Some(c.network.clone().unwrap_or_default()),
            nostr: c.nostr,
        }
    }
}

fn rule(glob: &str, write: bool) -> Option<PathRule> {
    Some(PathRule {
        glob: glob.to_owned(),
        write,
        matcher: Glob::new(glob).ok()?.compile_matcher(),
    })
}

impl Layer {
    /// What a manifest asks for.
    pub fn from_manifest(m: &Manifest) -> Layer {
        Layer {
            origin: "the agent's manifest".into(),
            tools: Some(m.tools.clone()),
            paths: m.paths.as_ref().map(|ps| {
                ps.iter()
                    .filter_map(|PathGrant { glob, write }| rule(glob, *write))
                    .collect()
            }),
            network: Some(m.network.clone()),
            nostr: Some(m.nostr.is_some()),
        }
    }

    /// A child's request: what a plan step or a `delegate` call asks for (omitted parts do not
    /// restrict; the layers above it still do).
    pub fn request(
        origin: &str,
        tools: Option<Vec<String>>,
        paths: Option<Vec<(String, bool)>>,
        network: Option<Vec<String>>,
    ) -> Result<Layer, String> {
        let paths = match paths {
            None => None,
            Some(ps) => Some(
                ps.into_iter()
                    .map(|(g, w)| {
                        if g.starts_with('/') || g.split('/').any(|c| c == "..") {
                            return Err(format!(
                                "{g:?}: path grants are relative to the workspace, without `..`"
                            ));
                        }
                        rule(&g, w).ok_or_else(|| format!("{g:?} is not a valid glob"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Layer {
            origin: origin.into(),
            tools,
            paths,
            network,
            nostr: None,
        })
    }

    /// This layer as stored with a child task.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec {
            origin: self.origin.clone(),
            tools: self.tools.clone(),
            paths: self
                .paths
                .as_ref()
                .map(|ps| ps.iter().map(|r| (r.glob.clone(), r.write)).collect()),
            network: self.network.clone(),
            nostr: self.nostr,
        }
    }

    /// A stored layer back (a glob that no longer parses grants nothing).
    pub fn from_spec(s: &LayerSpec) -> Layer {
        Layer {
            origin: s.origin.clone(),
            tools: s.tools.clone(),
            paths: s
                .paths
                .as_ref()
                .map(|ps| ps.iter().filter_map(|(g, w)| rule(g, *w)).collect()),
            network: s.network.clone(),
            nostr: s.nostr,
        }
    }

    /// Allows everything (`warren run`, where the person at the terminal is the operator).
    pub fn unrestricted(origin: &str) -> Layer {
        Layer {
            origin: origin.into(),
            ..Layer::default()
        }
    }

    /// The index of the rule allowing `rel` with `write`, or why not.
    fn path(&self, rel: &str, write: bool) -> Result<Option<usize>, String> {
        let Some(rules) = &self.paths else {
            return Ok(None);
        };
        let hit = rules
            .iter()
            .position(|r| r.matcher.is_match(rel) && (r.write || !write));
        match hit {
            Some(i) => Ok(Some(i)),
            None => Err(format!(
                "{} does not grant {} access to {rel:?} (granted: {})",
                self.origin,
                if write { "write" } else { "read" },
                rules
                    .iter()
                    .map(|r| format!("{} {}", r.glob, if r.write { "rw" } else { "ro" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// A task's effective capabilities: layers that must all allow, and the handles issued for
/// the innermost one.
#[derive(Clone, Debug)]
pub struct Capabilities {
    layers: Vec<Layer>,
    tool_handles: Vec<(String, String)>,
    path_handles: Vec<String>,
}

fn handle() -> String {
    let id = warren_cell::process::new_cell_id();
    format!("cap-{}", &id[1..])
}

/// How a tool touches the workspace, from its arguments.
fn access_of(tool: &str, args: &Value) -> Option<(String, bool)> {
    let write = match tool {
        "write_file" | "edit_file" => true,
        "read_file" | "list_files" | "grep" => false,
        _ => return None,
    };
    let path = args["path"].as_str().unwrap_or(".");
    Some((path.to_owned(), write))
}

/// `path` (as a tool got it: relative to `/workspace`, the cell's working directory, or
/// absolute) as a normalized path relative to the workspace; `None` when it is outside.
///
/// Resolved the way the cell resolves it and with the same function the tool uses to build
/// its command ([`warren_agent::tools::resolve_path`]): `..` is taken lexically against
/// `/workspace`, so `../workspace/docs/x` and `/workspace/../workspace/docs/x` are the
/// workspace's `docs/x`, and `src/../secrets/k` is `secrets/k`. What lexical resolution does
/// not see is a symlink inside the workspace (`docs/x` → `../secrets/x`): the kernel
/// resolves it, and the Landlock scopes decide.
pub fn workspace_relative(path: &str) -> Option<String> {
    let abs = warren_agent::tools::resolve_path(path);
    if abs == WORKSPACE {
        return Some(".".into());
    }
    abs.strip_prefix(WORKSPACE)
        .and_then(|r| r.strip_prefix('/'))
        .map(str::to_owned)
}

impl Capabilities {
    /// Requested ∩ bound.
    pub fn new(requested: Layer, bound: Layer) -> Capabilities {
        Capabilities::from_layers(vec![bound, requested])
    }

    fn from_layers(layers: Vec<Layer>) -> Capabilities {
        let inner = layers.last().cloned().unwrap_or_default();
        let tool_handles = inner
            .tools
            .iter()
            .flatten()
            .map(|t| (t.clone(), handle()))
            .collect();
        let path_handles = inner.paths.iter().flatten().map(|_| handle()).collect();
        Capabilities {
            layers,
            tool_handles,
            path_handles,
        }
    }

    /// Delegation: a child gets at most what this task has (its request is one more layer).
    pub fn narrow(&self, child: Layer) -> Capabilities {
        let mut layers = self.layers.clone();
        layers.push(child);
        Capabilities::from_layers(layers)
    }

    /// The layers below the operator's bound (the request and any narrowing): what a child
    /// inherits. The bound is the operator's current policy, applied afresh to every task.
    pub fn inherited(&self) -> Vec<LayerSpec> {
        self.layers.iter().skip(1).map(Layer::spec).collect()
    }

    /// Whether every layer grants `tool`.
    pub fn allows_tool(&self, tool: &str) -> bool {
        self.layers.iter().all(|l| {
            l.tools
                .as_ref()
                .is_none_or(|ts| warren_protocol::tools::tool_allowed(ts, tool))
        })
    }

    /// Whether a child asking for `request` asks for nothing this task lacks: every tool it
    /// lists granted here, every path grant within one here (same glob, or beneath a `dir/**`
    /// grant, with write only where write is granted), every destination allowed here as a
    /// whole. `Err` names each excess. (Asking more would gain nothing — the child's layers
    /// include these — but a plan or a call asking for it is refused, not silently narrowed.)
    pub fn covers(&self, request: &Layer) -> Result<(), String> {
        let mut excess = Vec::new();
        for t in request.tools.iter().flatten() {
            if !self.allows_tool(t) {
                excess.push(format!("the tool {t:?}"));
            }
        }
        for r in request.paths.iter().flatten() {
            for l in &self.layers {
                let Some(rules) = &l.paths else { continue };
                if !rules
                    .iter()
                    .any(|o| (o.write || !r.write) && glob_within(&r.glob, &o.glob))
                {
                    excess.push(format!(
                        "{} access to {:?} ({} grants: {})",
                        if r.write { "write" } else { "read" },
                        r.glob,
                        l.origin,
                        rules
                            .iter()
                            .map(|o| format!("{} {}", o.glob, if o.write { "rw" } else { "ro" }))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    break;
                }
            }
        }
        for n in request.network.iter().flatten() {
            let all = self
                .layers
                .iter()
                .all(|l| l.network.as_ref().is_none_or(|outer| covered(outer, n)));
            if !all {
                excess.push(format!("the network destination {n:?}"));
            }
        }
        if excess.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "asks for more than its parent has: {}",
                excess.join("; ")
            ))
        }
    }

    /// The choke point: `Ok(handle)` of the capability allowing this call, or why not.
    pub fn check(&self, tool: &str, args: &Value) -> Result<String, String> {
        for l in &self.layers {
            if let Some(tools) = &l.tools
                && !warren_protocol::tools::tool_allowed(tools, tool)
                && tool != "finish"
                // Finds MCP tool definitions (a call of one is checked by its own name).
                && tool != "mcp_search"
            {
                return Err(format!("{} does not grant the tool {tool:?}", l.origin));
            }
        }
        let mut granted = self
            .tool_handles
            .iter()
            .find(|(t, _)| warren_protocol::tools::entry_covers(t, tool))
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| format!("tool:{tool}"));
        if let Some((path, write)) = access_of(tool, args) {
            // Outside the workspace (/tmp, the system) the kernel alone decides.
            if let Some(rel) = workspace_relative(&path) {
                for (i, l) in self.layers.iter().enumerate() {
                    let hit = l.path(&rel, write)?;
                    if i + 1 == self.layers.len()
                        && let Some(r) = hit
                        && let Some(h) = self.path_handles.get(r)
                    {
                        granted = h.clone();
                    }
                }
            }
        }
        Ok(granted)
    }

    /// Whether every layer lets the task read `rel` (a normalized workspace-relative path):
    /// its read capability, for host tools that read the workspace on its behalf.
    pub fn may_read(&self, rel: &str) -> bool {
        self.layers.iter().all(|l| l.path(rel, false).is_ok())
    }

    /// Whether any layer restricts workspace paths.
    pub fn restricts_paths(&self) -> bool {
        self.layers.iter().any(|l| l.paths.is_some())
    }

    /// Whether every layer lets the task sign Nostr events (`/cap/nostr`): its manifest asks,
    /// and no policy or narrowing forbids it.
    pub fn allows_nostr(&self) -> bool {
        self.layers.iter().all(|l| l.nostr != Some(false))
    }

    /// The network destinations every layer allows (entries of the innermost restricting
    /// layer that each outer layer covers).
    pub fn network(&self) -> Vec<String> {
        let mut allowed: Option<Vec<String>> = None;
        for l in self.layers.iter().rev() {
            let Some(n) = &l.network else { continue };
            allowed = Some(match allowed {
                None => n.clone(),
                Some(prev) => {
                    let mut out: Vec<String> = Vec::new();
                    for d in prev.iter().flat_map(|e| meet(n, e)) {
                        if !out.contains(&d) {
                            out.push(d);
                        }
                    }
                    out
                }
            });
        }
        allowed.unwrap_or_default()
    }

    /// Landlock scopes for the cell: the path rules' directories, intersected across layers.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut cur: Option<BTreeSet<(String, bool)>> = None;
        for l in &self.layers {
            let Some(rules) = &l.paths else { continue };
            let mine: BTreeSet<(String, bool)> =
                rules.iter().map(|r| (prefix(&r.glob), r.write)).collect();
            cur = Some(match cur {
                None => mine,
                Some(prev) => {
                    let mut out = BTreeSet::new();
                    for (p, w) in &prev {
                        for (q, w2) in &mine {
                            if under(p, q) {
                                out.insert((p.clone(), *w && *w2));
                            } else if under(q, p) {
                                out.insert((q.clone(), *w && *w2));
                            }
                        }
                    }
                    out
                }
            });
        }
        cur.unwrap_or_default()
            .into_iter()
            .map(|(p, write)| Scope {
                path: if p.is_empty() {
                    WORKSPACE.to_owned()
                } else {
                    format!("{WORKSPACE}/{p}")
                },
                write,
            })
            .collect()
    }
}

/// Every path `inner` matches is matched by `outer`, as far as can be shown without a glob
/// algebra: the same glob; `outer` is `**` or `dir/**` and `inner` lies beneath `dir`;
/// or `inner` is a literal path `outer` matches. Anything else is not shown (refused).
fn glob_within(inner: &str, outer: &str) -> bool {
    if inner == outer || outer == "**" {
        return true;
    }
    if let Some(dir) = outer.strip_suffix("/**")
        && !dir.contains(['*', '?', '[', '{'])
        && inner.starts_with(&format!("{dir}/"))
        && !inner.split('/').any(|c| c == "..")
    {
        return true;
    }
    !inner.contains(['*', '?', '[', '{'])
        && !inner.split('/').any(|c| c == "..")
        && Glob::new(outer).is_ok_and(|g| g.compile_matcher().is_match(inner))
}

/// `p` equals or lies beneath `q` (relative paths; `""` is the workspace root).
fn under(p: &str, q: &str) -> bool {
    q.is_empty() || p == q || p.starts_with(&format!("{q}/"))
}

/// The literal directory part of a glob (`src/**` → `src`, `**` → ``).
fn prefix(glob: &str) -> String {
    glob.split('/')
        .take_while(|c| !c.contains(['*', '?', '[', '{']))
        .collect::<Vec<_>>()
        .join("/")
}

/// A destination as (lower-case host pattern, ports); no ports means 80 and 443.
fn split_dest(e: &str) -> (String, BTreeSet<u16>) {
    let (h, p) = e.split_once(':').unwrap_or((e, ""));
    let ports: BTreeSet<u16> = if p.is_empty() {
        [80, 443].into()
    } else {
        p.split(',').filter_map(|x| x.parse().ok()).collect()
    };
    (h.to_ascii_lowercase(), ports)
}

/// A destination written back: the host alone when its ports are 80 and 443.
fn join_dest(host: &str, ports: &BTreeSet<u16>) -> String {
    if *ports == BTreeSet::from([80, 443]) {
        return host.to_owned();
    }
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("{host}:{}", list.join(","))
}

/// The hosts both patterns allow, as one pattern: the narrower of the two (`*.d` allows
/// `a.d` and `*.x.d`, not `d` itself), or `None`.
fn host_meet(a: &str, b: &str) -> Option<String> {
    let within = |h: &str, wild: &str| {
        // `h` (exact or wildcard) lies within wildcard `*.dom`.
        let dom = &wild[2..];
        match h.strip_prefix("*.") {
            Some(hd) => hd == dom || hd.ends_with(&format!(".{dom}")),
            None => h.ends_with(&format!(".{dom}")),
        }
    };
    match (a.starts_with("*."), b.starts_with("*.")) {
        (false, false) => (a == b).then(|| a.to_owned()),
        (true, false) => within(b, a).then(|| b.to_owned()),
        (false, true) => within(a, b).then(|| a.to_owned()),
        (true, true) => {
            if within(a, b) {
                Some(a.to_owned())
            } else if within(b, a) {
                Some(b.to_owned())
            } else {
                None
            }
        }
    }
}

/// What of `entry` the entries of `outer` allow: for each outer entry, the narrower host
/// pattern with the ports both allow (none when nothing is left).
fn meet(outer: &[String], entry: &str) -> Vec<String> {
    let (host, ports) = split_dest(entry);
    let mut out: Vec<String> = Vec::new();
    for o in outer {
        let (oh, op) = split_dest(o);
        if let Some(h) = host_meet(&host, &oh) {
            let both: BTreeSet<u16> = ports.intersection(&op).copied().collect();
            if !both.is_empty() {
                let d = join_dest(&h, &both);
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Whether `outer` allows all of `entry` (every host it names, on every port).
fn covered(outer: &[String], entry: &str) -> bool {
    let (host, ports) = split_dest(entry);
    let mut left = ports.clone();
    for o in outer {
        let (oh, op) = split_dest(o);
        if host_meet(&host, &oh).as_deref() == Some(host.as_str()) {
            left.retain(|p| !op.contains(p));
        }
    }
    left.is_empty()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn layer(origin: &str, tools: &[&str], paths: &[(&str, bool)], net: &[&str]) -> Layer {
        Layer {
            origin: origin.into(),
            tools: Some(tools.iter().map(|t| (*t).to_owned()).collect()),
            paths: Some(paths.iter().filter_map(|(g, w)| rule(g, *w)).collect()),
            network: Some(net.iter().map(|t| (*t).to_owned()).collect()),
            nostr: None,
        }
    }

    #[test]
    fn nostr_needs_the_manifest_and_no_layer_forbidding_it() {
        let manifest = |nostr: bool| {
            let mut m = Manifest::default();
            if nostr {
                m.nostr = Some(Default::default());
            }
            Layer::from_manifest(&m)
        };
        let policy = |text: &str| {
            toml::from_str::<PolicyFile>(text)
                .map(|p| p.layer())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let caps = |m: bool, p: &str| Capabilities::new(manifest(m), policy(p));
        assert!(caps(true, "").allows_nostr());
        assert!(caps(true, "[capabilities]\nnostr = true\n").allows_nostr());
        assert!(!caps(true, "[capabilities]\nnostr = false\n").allows_nostr());
        assert!(!caps(false, "").allows_nostr());
        // A child inherits the bound through its stored layers.
        let parent = caps(true, "");
        let child = Capabilities::from_layers(
            parent
                .inherited()
                .iter()
                .map(Layer::from_spec)
                .chain([policy("[capabilities]\nnostr = false\n")])
                .collect(),
        );
        assert!(!child.allows_nostr());
    }

    #[test]
    fn effective_is_the_intersection_and_handles_name_the_rule() {
        let req = layer(
            "manifest",
            &["shell", "read_file", "write_file"],
            &[("src/**", true), ("**", false)],
            &["api.github.com:443", "*.pypi.org", "evil.example"],
        );
        let bound = layer(
            "policy",
            &["read_file", "write_file", "grep"],
            &[("**", true)],
            &["*.github.com", "pypi.org", "*.pypi.org:443"],
        );
        let c = Capabilities::new(req, bound);
        assert!(c.check("shell", &json!({})).unwrap_err().contains("policy"));
        assert!(
            c.check("grep", &json!({}))
                .unwrap_err()
                .contains("manifest")
        );
        let h = c
            .check("write_file", &json!({"path": "src/main.rs"}))
            .unwrap();
        assert!(h.starts_with("cap-"), "{h}");
        assert_ne!(
            h,
            c.check("read_file", &json!({"path": "README"})).unwrap(),
            "each rule has its own handle"
        );
        let e = c
            .check("write_file", &json!({"path": "/workspace/README"}))
            .unwrap_err();
        assert!(e.contains("write access to \"README\""), "{e}");
        assert!(
            c.check("write_file", &json!({"path": "src/../secrets/key"}))
                .is_err(),
            "normalized before matching"
        );
        assert!(
            c.check("write_file", &json!({"path": "/tmp/scratch"}))
                .is_ok(),
            "outside the workspace the kernel decides"
        );
        assert_eq!(
            c.network(),
            ["api.github.com:443", "*.pypi.org:443"],
            "narrowed to the ports both allow; evil.example dropped"
        );
        assert_eq!(
            c.scopes(),
            vec![
                Scope {
                    path: "/workspace".into(),
                    write: false
                },
                Scope {
                    path: "/workspace/src".into(),
                    write: true
                },
            ]
        );
    }

    #[test]
    fn delegation_only_narrows() {
        let parent = Capabilities::new(
            layer(
                "manifest",
                &["read_file", "write_file"],
                &[("src/**", true)],
                &["a.example"],
            ),
            Layer::unrestricted("policy"),
        );
        let child = parent.narrow(layer(
            "child",
            &["read_file", "write_file", "shell"],
            &[("**", true)],
            &["a.example", "b.example"],
        ));
        assert!(
            child.check("shell", &json!({})).is_err(),
            "asking more gains nothing"
        );
        assert!(
            child
                .check("write_file", &json!({"path": "docs/x"}))
                .is_err()
        );
        assert!(child.check("write_file", &json!({"path": "src/x"})).is_ok());
        assert_eq!(child.network(), ["a.example"]);
        assert_eq!(
            child.scopes(),
            vec![Scope {
                path: "/workspace/src".into(),
                write: true
            }]
        );
    }

    /// Thousands of random delegation chains: whatever a child asks, nothing it may do (a tool,
    /// a path read or write, a destination, a Landlock scope) is beyond any ancestor's grant;
    /// and a request `covers` accepts gains nothing either.
    #[test]
    fn random_delegations_never_escalate() {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        const TOOLS: [&str; 5] = ["shell", "read_file", "write_file", "grep", "delegate"];
        const GLOBS: [&str; 7] = [
            "**",
            "src/**",
            "src/a/**",
            "docs/*.md",
            "src/a/x.rs",
            "b/**",
            "README.md",
        ];
        const HOSTS: [&str; 5] = [
            "a.example",
            "*.example",
            "b.example:443",
            "c.test",
            "a.example:80,443",
        ];
        const PATHS: [&str; 8] = [
            "src/a/x.rs",
            "src/b.rs",
            "docs/x.md",
            "docs/x.txt",
            "README.md",
            "b/c",
            "x",
            "src/a/y/z",
        ];
        let pick = |rng: &mut fastrand::Rng, xs: &[&str]| -> Option<Vec<String>> {
            if rng.u8(..4) == 0 {
                return None;
            }
            Some(
                xs.iter()
                    .filter(|_| rng.bool())
                    .map(|s| (*s).to_owned())
                    .collect(),
            )
        };
        let random_layer = |rng: &mut fastrand::Rng, name: &str| {
            let paths = if rng.u8(..4) == 0 {
                None
            } else {
                let mut v = Vec::new();
                for g in GLOBS {
                    if rng.bool() {
                        v.push((g.to_owned(), rng.bool()));
                    }
                }
                Some(v)
            };
            // Every real layer (a manifest, a policy, a request) states its network: none
            // stated would mean none allowed.
            let net = pick(rng, &HOSTS).unwrap_or_default();
            Layer::request(name, pick(rng, &TOOLS), paths, Some(net)).unwrap()
        };
        let mut escalations = 0;
        let mut kinds = [0u32; 6];
        for _ in 0..5000 {
            let mut chain = vec![Capabilities::new(
                random_layer(&mut rng, "manifest"),
                random_layer(&mut rng, "policy"),
            )];
            for depth in 0..rng.usize(1..4) {
                let req = random_layer(&mut rng, &format!("child {depth}"));
                let parent = chain.last().unwrap().clone();
                let child = parent.narrow(req.clone());
                // What `covers` accepts is within the parent for every probe below too.
                let accepted = parent.covers(&req).is_ok();
                for t in TOOLS {
                    let args = json!({});
                    if child.check(t, &args).is_ok()
                        && chain.iter().any(|a| a.check(t, &args).is_err())
                    {
                        escalations += 1;
                        kinds[0] += 1;
                    }
                    if accepted
                        && req
                            .tools
                            .as_ref()
                            .is_some_and(|ts| ts.iter().any(|x| x == t))
                        && !parent.allows_tool(t)
                    {
                        escalations += 1;
                        kinds[1] += 1;
                    }
                }
                for p in PATHS {
                    for (tool, write) in [("read_file", false), ("write_file", true)] {
                        let args = json!({"path": p});
                        if child.check(tool, &args).is_ok()
                            && chain.iter().any(|a| a.check(tool, &args).is_err())
                        {
                            escalations += 1;
                            kinds[2] += 1;
                        }
                        if accepted
                            && req.path(p, write).is_ok_and(|x| x.is_some())
                            && !parent.layers.iter().all(|l| l.path(p, write).is_ok())
                        {
                            escalations += 1;
                            kinds[3] += 1;
                        }
                    }
                }
                let net = child.network();
                for a in &chain {
                    let outer = a.network();
                    for n in &net {
                        if !covered(&outer, n) {
                            escalations += 1;
                            kinds[4] += 1;
                        }
                    }
                }
                for s in child.scopes() {
                    for a in &chain {
                        if !a.restricts_paths() {
                            continue;
                        }
                        let within = a.scopes().iter().any(|o| {
                            (o.write || !s.write)
                                && (s.path == o.path || s.path.starts_with(&format!("{}/", o.path)))
                        });
                        if !within {
                            escalations += 1;
                            kinds[5] += 1;
                        }
                    }
                }
                chain.push(child);
            }
        }
        assert_eq!(escalations, 0, "seed {seed}: {kinds:?}");
    }

    #[test]
    fn workspace_paths_are_normalized_and_escapes_are_outside() {
        assert_eq!(workspace_relative("a/./b/../c").as_deref(), Some("a/c"));
        assert_eq!(workspace_relative("/workspace").as_deref(), Some("."));
        assert_eq!(workspace_relative("/workspace/x/y").as_deref(), Some("x/y"));
        assert_eq!(workspace_relative("/workspacex/y"), None);
        assert_eq!(workspace_relative("../etc/passwd"), None);
        assert_eq!(workspace_relative("/etc/passwd"), None);
        // `..` past the workspace's root resolves where the cell resolves it (its working
        // directory is /workspace): back inside.
        for (given, rel) in [
            ("../workspace/docs/evil.sh", Some("docs/evil.sh")),
            ("/workspace/../workspace/x", Some("x")),
            ("../../workspace/a/../b", Some("b")),
            ("//workspace//a/", Some("a")),
            ("/tmp/../workspace", Some(".")),
            ("./", Some(".")),
            ("..", None),
            ("/workspace/..", None),
            ("../workspacex/y", None),
        ] {
            assert_eq!(workspace_relative(given).as_deref(), rel, "{given:?}");
        }
        // And the check refuses them like the plain path.
        let c = Capabilities::new(
            layer(
                "manifest",
                &["read_file", "write_file", "grep", "list_files"],
                &[("src/**", true)],
                &[],
            ),
            Layer::unrestricted("policy"),
        );
        for path in [
            "../workspace/docs/evil.sh",
            "/workspace/../workspace/docs/evil.sh",
            "src/../docs/evil.sh",
            "src/../../workspace/docs/evil.sh",
            "./docs//evil.sh/",
        ] {
            assert!(
                c.check("write_file", &json!({"path": path})).is_err(),
                "{path} passed the check"
            );
            assert!(
                c.check("read_file", &json!({"path": path})).is_err(),
                "{path}"
            );
        }
        assert!(
            c.check("grep", &json!({"pattern": "x", "path": "../workspace"}))
                .is_err()
        );
        assert!(
            c.check("list_files", &json!({})).is_err(),
            "the root is not src/**"
        );
        assert!(
            c.check("write_file", &json!({"path": "../workspace/src/ok.rs"}))
                .is_ok()
        );
        // Outside the workspace, where it really is: the kernel decides.
        assert!(
            c.check("read_file", &json!({"path": "../etc/hosts"}))
                .is_ok()
        );
    }

    #[test]
    fn policy_files_parse_with_located_errors() {
        let p = PolicyFile::parse(
            std::path::Path::new("p.toml"),
            "[capabilities]\ntools = [\"read_file\"]\npaths = [{ glob = \"**\", access = \"read\" }]\nnetwork = [\"*.github.com\"]\n",
        )
        .unwrap();
        let l = p.layer();
        assert_eq!(l.tools.unwrap(), ["read_file"]);
        let e = PolicyFile::parse(
            std::path::Path::new("p.toml"),
            "[capabilities]\ntols = []\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("p.toml:2:1:"), "{e}");
        assert!(
            PolicyFile::parse(
                std::path::Path::new("p.toml"),
                "[capabilities]\npaths = [{ glob = \"**\", access = \"all\" }]\n"
            )
            .is_err()
        );
        // The example in the repository parses.
        let example = include_str!("../../../examples/operator-policy.toml");
        let p = PolicyFile::parse(std::path::Path::new("operator-policy.toml"), example).unwrap();
        assert!(
            p.layer()
                .network
                .unwrap()
                .contains(&"*.github.com".to_owned())
        );
        // No network section: no network.
        let none = PolicyFile::parse(std::path::Path::new("p.toml"), "").unwrap();
        assert_eq!(none.layer().network, Some(vec![]));
    }
}
