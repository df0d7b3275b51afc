//! `--policy FILE`: the same settings as `warren exec`'s flags, in TOML.
//!
//! Two stages (raw → resolved): [`RawPolicy`] is exactly the file, parsed with spans so every
//! error — syntax, unknown key, or a bad value such as `memory = "12Q"` — names the file, line
//! and column; [`Policy`] holds the validated values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The policy file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    workspace: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
    pids: Option<Spanned<u64>>,
    cpus: Option<Spanned<f64>>,
    timeout: Option<Spanned<String>>,
    tmp_size: Option<Spanned<String>>,
    disk: Option<Spanned<String>>,
    output_limit: Option<Spanned<String>>,
    #[serde(default)]
    read_only_paths: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Validated policy values; every field optional so flags can override.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Policy {
    /// Host workspace directory.
    pub workspace: Option<PathBuf>,
    /// `ro`, `rw` or `cow`.
    pub mode: Option<Mode>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Process limit.
    pub pids: Option<u64>,
    /// CPU quota in cores.
    pub cpus: Option<f64>,
    /// Wall-clock timeout.
    pub timeout: Option<Duration>,
    /// `/tmp` size.
    pub tmp_size: Option<u64>,
    /// Disk bound of a copy-on-write workspace's changes.
    pub disk: Option<u64>,
    /// Output cap per stream.
    pub output_limit: Option<u64>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Host paths mounted read-only at the same path in the cell (checked).
    pub read_only_paths: Vec<String>,
}

/// Workspace mount mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read-only bind.
    Ro,
    /// Read-write bind.
    Rw,
    /// Copy-on-write overlay.
    Cow,
}

/// A policy error with its location.
#[derive(Debug)]
pub struct PolicyError {
    /// `FILE:LINE:COL: message`.
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

use warren_config::line_col;
use warren_config::units::UnitError;
pub use warren_config::units::{parse_duration, parse_size};

/// Parse policy text; `file` is only used in messages, `state_dir` is Warren's state directory
/// (no read-only path may hold it or lie inside it).
pub fn parse(file: &Path, text: &str, state_dir: &Path) -> Result<Policy, PolicyError> {
    let at = |offset: usize, msg: &str| {
        let (l, c) = line_col(text, offset);
        PolicyError {
            message: format!("{}:{l}:{c}: {msg}", file.display()),
        }
    };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset, e.message())
    })?;
    let value = |v: &Spanned<String>, f: fn(&str) -> Result<u64, UnitError>| {
        f(v.get_ref()).map_err(|m| at(v.span().start, &m.to_string()))
    };
    let mode = match &raw.mode {
        None => None,
        Some(m) => Some(match m.get_ref().as_str() {
            "ro" => Mode::Ro,
            "rw" => Mode::Rw,
            "cow" => Mode::Cow,
            other => {
                return Err(at(
                    m.span().start,
                    &format!("mode must be \"ro\", \"rw\" or \"cow\", not {other:?}"),
                ));
            }
        }),
    };
    if let Some(p) = &raw.pids
        && *p.get_ref() == 0
    {
        return Err(at(p.span().start, "pids must be at least 1"));
    }
    if let Some(c) = &raw.cpus {
        let v = *c.get_ref();
        if !(v.is_finite() && v > 0.0) {
            return Err(at(c.span().start, "cpus must be a positive number"));
        }
    }
    let read_only_paths = raw
        .read_only_paths
        .iter()
        .map(|p| {
            warren_cell::hostpaths::check_read_only_path(Path::new(p.get_ref()), state_dir)
                .map_err(|m| at(p.span().start, &format!("read_only_paths: {m}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for k in raw.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(at(0, &format!("invalid environment variable name {k:?}")));
        }
    }
    Ok(Policy {
        workspace: raw.workspace.as_ref().map(|w| PathBuf::from(w.get_ref())),
        mode,
        memory: raw
            .memory
            .as_ref()
            .map(|v| value(v, parse_size))
            .transpose()?,
        pids: raw.pids.map(|p| p.into_inner()),
        cpus: raw.cpus.map(|c| c.into_inner()),
        timeout: raw
            .timeout
            .as_ref()
            .map(|t| parse_duration(t.get_ref()).map_err(|m| at(t.span().start, &m.to_string())))
            .transpose()?,
        disk: raw
            .disk
            .as_ref()
            .map(|v| value(v, parse_size))
            .transpose()?,
        tmp_size: raw
            .tmp_size
            .as_ref()
            .map(|v| value(v, parse_size))
            .transpose()?,
        output_limit: raw
            .output_limit
            .as_ref()
            .map(|v| value(v, parse_size))
            .transpose()?,
        env: raw.env.into_iter().collect(),
        read_only_paths,
    })
}

/// Read and parse a policy file.
pub fn load(file: &Path, state_dir: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(file).map_err(|e| PolicyError {
        message: format!("{}: {e}", file.display()),
    })?;
    parse(file, &text, state_dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const STATE: &str = "/nonexistent-warren-state";

    fn err(text: &str) -> String {
        parse(Path::new("p.toml"), text, Path::new(STATE))
            .unwrap_err()
            .message
    }

    #[test]
    fn full_policy_parses() {
        let p = parse(
            Path::new("p.toml"),
            "workspace = \"/src\"\nmode = \"cow\"\nmemory = \"512M\"\npids = 64\ncpus = 1.5\ntimeout = \"30s\"\ntmp_size = \"64M\"\noutput_limit = \"1M\"\nread_only_paths = [\"/usr/share\"]\n[env]\nA = \"b\"\n",
            Path::new(STATE),
        )
        .unwrap();
        assert_eq!(p.memory, Some(512 << 20));
        assert_eq!(p.mode, Some(Mode::Cow));
        assert_eq!(p.timeout, Some(Duration::from_secs(30)));
        assert_eq!(p.env, vec![("A".into(), "b".into())]);
        assert_eq!(p.read_only_paths, vec!["/usr/share".to_owned()]);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        assert!(
            err("pids = 4\nmemory = \"12Q\"\n").starts_with("p.toml:2:10: unknown size unit"),
            "{}",
            err("pids = 4\nmemory = \"12Q\"\n")
        );
        let e = err("pids = 4\nbogus = 1\n");
        assert!(
            e.starts_with("p.toml:2:1:") && e.contains("unknown field"),
            "{e}"
        );
        let e = err("pids = \n");
        assert!(e.starts_with("p.toml:1:"), "{e}");
        let e = err("mode = \"rx\"\n");
        assert!(e.starts_with("p.toml:1:8: mode must be"), "{e}");
        let e = err("pids = 0");
        assert!(e.starts_with("p.toml:1:8: pids must be at least 1"), "{e}");
        let e = err("pids = 4\nread_only_paths = [\"/usr/share\", \"/proc/self\"]\n");
        assert!(
            e.starts_with("p.toml:2:34: read_only_paths: /proc/self is at or below /proc"),
            "{e}"
        );
        let e = err("read_only_paths = [\"opt/x\"]");
        assert!(
            e.starts_with("p.toml:1:20:") && e.contains("absolute"),
            "{e}"
        );
        let e = err("read_only_paths = [\"/nonexistent/x\"]");
        assert!(
            e.starts_with("p.toml:1:20:") && e.contains("No such file"),
            "{e}"
        );
    }
}
