//! The operator's allowlist: which host names, on which ports, a cell may reach.
//!
//! Decisions are made on the *name* the cell asked for, never on an address: an address
//! says nothing about who is behind it (one CDN address serves thousands of sites), and an
//! allowlist of addresses would silently rot. The addresses a name resolves to get their own,
//! separate check ([`crate::forbidden`]).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Ports a rule without an explicit port list allows: plain HTTP and HTTPS.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// One allow rule: `example.com` (exactly that name) or `*.example.com` (any name under it,
/// at any depth, but not `example.com` itself), with the ports it allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The normalized pattern: lower case, no trailing dot, `*.` only as a prefix.
    pub pattern: String,
    /// Allowed ports; empty means [`DEFAULT_PORTS`] (80 and 443).
    pub ports: Vec<u16>,
}

/// The whole allowlist. An empty policy denies everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The rules; a request is allowed when any rule matches its name and port.
    pub rules: Vec<Rule>,
}

/// An allowlist entry that is not a valid rule. The message names the entry and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad egress allowlist entry {entry:?}: {problem}")]
pub struct PolicyError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub problem: RuleProblem,
}

/// What is wrong with an allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    /// Blank.
    #[error("empty entry")]
    Empty,
    /// `[::1]`, `::1:443`.
    #[error("IPv6 literals are not allowed; use a name")]
    Ipv6,
    /// `10.0.0.1`.
    #[error("IP literals are not allowed; use a name")]
    IpLiteral,
    /// Not a number in 1..=65535.
    #[error("bad port {0:?} (want 1-65535)")]
    Port(String),
    /// `*.com`.
    #[error("a wildcard must cover at least two labels (*.example.com)")]
    WildcardTooWide,
    /// A `*` other than a leading `*.`.
    #[error("a wildcard is only allowed as a leading \"*.\"")]
    WildcardPlacement,
    /// Not a plausible DNS name.
    #[error(transparent)]
    Name(#[from] NameProblem),
}

/// Why a host name (of an entry, or one a cell asked for) is not a plausible DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    /// Nothing.
    #[error("empty name")]
    Empty,
    /// More than 253 bytes.
    #[error("name longer than 253 bytes")]
    TooLong,
    /// `a..b`.
    #[error("empty label")]
    EmptyLabel,
    /// More than 63 bytes between dots.
    #[error("label longer than 63 bytes")]
    LabelTooLong,
    /// Outside `a-z 0-9 - _`.
    #[error("character {0:?} is not allowed in a name")]
    Character(char),
    /// `-a.com`, `a-.com`.
    #[error("a label may not start or end with '-'")]
    Hyphen,
    /// `example.123`, `127.1`.
    #[error("the last label must start with a letter (IP literals are not allowed)")]
    LastLabel,
}

/// Why a request was refused, in words for the person reading the audit or the 403 page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    /// The reason, e.g. `example.org is not in the allowlist`.
    pub reason: String,
}

impl Denied {
    pub(crate) fn new(reason: impl Into<String>) -> Denied {
        Denied {
            reason: reason.into(),
        }
    }
}

/// The reason every IP-literal host is refused with (followed, for a forbidden address, by
/// what that address is).
pub const IP_LITERAL_REASON: &str = "IP literals are not allowed; use a name in the allowlist";

impl Policy {
    /// Parses allowlist entries: `api.github.com` (ports 80 and 443), `*.pypi.org:443`,
    /// `example.com:80,8080`. Names are case-insensitive and may end with a dot.
    ///
    /// Refused: empty entries or labels, characters outside `a-z 0-9 - _`, labels longer than
    /// 63 bytes or starting or ending with `-`, names longer than 253 bytes, a `*` anywhere
    /// but a leading `*.`, a wildcard over a single label (`*.com`), a last label that does
    /// not start with a letter (which also refuses every IPv4 literal and the numeric forms
    /// resolvers accept, like `127.1` or `0x7f000001`), IPv6 literals, and ports that are not
    /// numbers in 1..=65535.
    pub fn parse(entries: &[String]) -> Result<Policy, PolicyError> {
        let rules = entries
            .iter()
            .map(|e| {
                parse_rule(e).map_err(|problem| PolicyError {
                    entry: e.clone(),
                    problem,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { rules })
    }

    /// Whether the policy allows `host:port`, by name. The host is compared case-insensitively
    /// with one trailing dot ignored. IP literals are always refused (with what the address
    /// is when [`crate::forbidden`] knows it), so that an allowlist of names cannot be
    /// bypassed by asking for an address.
    pub fn allows(&self, host: &str, port: u16) -> Result<(), Denied> {
        let name = normalize_host(host)?;
        let mut name_matched: Option<&Rule> = None;
        for rule in &self.rules {
            if matches(&rule.pattern, &name) {
                if rule_ports(rule).contains(&port) {
                    return Ok(());
                }
                name_matched.get_or_insert(rule);
            }
        }
        match name_matched {
            None => Err(Denied::new(format!("{name} is not in the allowlist"))),
            Some(_) => {
                let mut ports: Vec<u16> = self
                    .rules
                    .iter()
                    .filter(|r| matches(&r.pattern, &name))
                    .flat_map(|r| rule_ports(r).to_vec())
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                Err(Denied::new(format!(
                    "port {port} is not allowed for {name} (allowed: {})",
                    Ports(&ports)
                )))
            }
        }
    }
}

fn rule_ports(rule: &Rule) -> &[u16] {
    if rule.ports.is_empty() {
        &DEFAULT_PORTS
    } else {
        &rule.ports
    }
}

struct Ports<'a>(&'a [u16]);

impl fmt::Display for Ports<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        // `a.example.com` ends with `.example.com`: the suffix check includes the dot, so
        // `badexample.com` does not match, and the apex is excluded by requiring the dot.
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name.ends_with(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => pattern == name,
    }
}

/// Lower-cases `host`, strips brackets and one trailing dot, and checks it is a plausible
/// DNS name (not an IP literal). The result is what the proxy resolves and records.
pub(crate) fn normalize_host(host: &str) -> Result<String, Denied> {
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Err(ip_literal_denied(ip));
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    check_name(&name).map_err(|problem| {
        Denied::new(format!(
            "{:?} is not a valid host name ({problem})",
            host.escape_default().to_string()
        ))
    })?;
    Ok(name)
}

pub(crate) fn ip_literal_denied(ip: IpAddr) -> Denied {
    match crate::forbidden(ip) {
        Some(what) => Denied::new(format!("{IP_LITERAL_REASON} ({ip} is {what})")),
        None => Denied::new(IP_LITERAL_REASON),
    }
}

fn parse_rule(entry: &str) -> Result<Rule, RuleProblem> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(RuleProblem::Empty);
    }
    if entry.starts_with('[') || entry.matches(':').count() > 1 {
        return Err(RuleProblem::Ipv6);
    }
    let (host, ports) = match entry.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (entry, None),
    };
    if host.parse::<IpAddr>().is_ok() {
        return Err(RuleProblem::IpLiteral);
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let ports = match ports {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|p| match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(RuleProblem::Port(p.to_owned())),
                Ok(n) => Ok(n),
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let bare = match host.strip_prefix("*.") {
        Some(rest) => {
            if !rest.contains('.') {
                return Err(RuleProblem::WildcardTooWide);
            }
            rest
        }
        None => &host,
    };
    if bare.contains('*') {
        return Err(RuleProblem::WildcardPlacement);
    }
    check_name(bare)?;
    Ok(Rule {
        pattern: host,
        ports,
    })
}

/// DNS name syntax, a little more lenient than RFC 1123 (underscores pass: some real host
/// names have them) and stricter in one place: the last label must start with a letter, as
/// every top-level domain does, which shuts out every numeric form a resolver might read as
/// an address.
fn check_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > 253 {
        return Err(NameProblem::TooLong);
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameProblem::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(NameProblem::LabelTooLong);
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(NameProblem::Character(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameProblem::Hyphen);
        }
        last = label;
    }
    if !last.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(NameProblem::LastLabel);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(entries: &[&str]) -> Policy {
        Policy::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn parse_err(entry: &str) -> String {
        Policy::parse(&[entry.to_string()]).unwrap_err().to_string()
    }

    #[test]
    fn parses_names_wildcards_and_ports() {
        let p = policy(&["API.GitHub.com.", "*.pypi.org:443", "example.com:80,8080"]);
        assert_eq!(
            p.rules,
            vec![
                Rule {
                    pattern: "api.github.com".into(),
                    ports: vec![]
                },
                Rule {
                    pattern: "*.pypi.org".into(),
                    ports: vec![443]
                },
                Rule {
                    pattern: "example.com".into(),
                    ports: vec![80, 8080]
                },
            ]
        );
    }

    #[test]
    fn refuses_junk() {
        for (entry, problem) in [
            ("", "empty entry"),
            ("a..b", "empty label"),
            (".a.com", "empty label"),
            ("a.com:", "bad port"),
            ("a.com:0", "bad port"),
            ("a.com:65536", "bad port"),
            ("a.com:80,", "bad port"),
            ("a.com:http", "bad port"),
            ("a.*.com", "only allowed as a leading"),
            ("*a.com", "only allowed as a leading"),
            ("a.com*", "only allowed as a leading"),
            ("*", "only allowed as a leading"),
            ("*.com", "at least two labels"),
            ("10.0.0.1", "IP literals"),
            ("10.0.0.1:443", "IP literals"),
            ("127.1", "last label must start with a letter"),
            ("0x7f000001", "last label must start with a letter"),
            ("[::1]:443", "IPv6"),
            ("::1", "IPv6"),
            ("a b.com", "not allowed in a name"),
            ("exa/mple.com", "not allowed in a name"),
            ("-a.com", "start or end with '-'"),
            ("ünicode.com", "not allowed in a name"),
        ] {
            let err = parse_err(entry);
            assert!(err.contains(problem), "{entry:?}: {err}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(parse_err(&long).contains("63"));
    }

    #[test]
    fn exact_names_match_case_insensitively_with_a_trailing_dot() {
        let p = policy(&["api.github.com"]);
        assert!(p.allows("api.github.com", 443).is_ok());
        assert!(p.allows("API.GITHUB.COM.", 80).is_ok());
        let d = p.allows("github.com", 443).unwrap_err();
        assert_eq!(d.reason, "github.com is not in the allowlist");
        assert!(p.allows("xapi.github.com", 443).is_err());
        assert!(p.allows("api.github.com.evil.test", 443).is_err());
    }

    #[test]
    fn wildcards_match_subdomains_at_any_depth_but_not_the_apex() {
        let p = policy(&["*.example.test"]);
        assert!(p.allows("a.example.test", 443).is_ok());
        assert!(p.allows("a.b.example.test", 443).is_ok());
        assert!(p.allows("example.test", 443).is_err());
        assert!(p.allows("badexample.test", 443).is_err());
        assert!(p.allows(".example.test", 443).is_err());
    }

    #[test]
    fn ports_default_to_80_and_443_and_a_wrong_port_says_which_are_allowed() {
        let p = policy(&["a.test", "b.test:8080,22"]);
        assert!(p.allows("a.test", 80).is_ok());
        assert!(p.allows("a.test", 443).is_ok());
        assert_eq!(
            p.allows("a.test", 22).unwrap_err().reason,
            "port 22 is not allowed for a.test (allowed: 80, 443)"
        );
        assert!(p.allows("b.test", 22).is_ok());
        assert!(p.allows("b.test", 443).is_err());
    }

    #[test]
    fn ip_literals_are_always_denied_even_when_listed_by_accident() {
        let p = policy(&["a.test"]);
        let d = p.allows("10.0.0.1", 80).unwrap_err();
        assert_eq!(
            d.reason,
            "IP literals are not allowed; use a name in the allowlist (10.0.0.1 is private)"
        );
        assert_eq!(
            p.allows("203.0.113.5", 80).unwrap_err().reason,
            IP_LITERAL_REASON
        );
        assert!(
            p.allows("[::1]", 443)
                .unwrap_err()
                .reason
                .contains("loopback")
        );
        assert!(
            p.allows("::ffff:127.0.0.1", 443)
                .unwrap_err()
                .reason
                .contains("IP literals")
        );
        assert!(
            p.allows("127.1", 80)
                .unwrap_err()
                .reason
                .contains("not a valid host")
        );
    }

    #[test]
    fn an_empty_policy_denies_everything() {
        assert!(Policy::default().allows("a.test", 443).is_err());
    }

    #[test]
    fn odd_hosts_are_denied_not_matched() {
        let p = policy(&["*.example.test"]);
        for host in [
            "",
            "a.example.test/x",
            "a.example.test:443",
            "a@b.example.test",
            "a\r\n.example.test",
        ] {
            assert!(p.allows(host, 443).is_err(), "{host:?}");
        }
    }
}
