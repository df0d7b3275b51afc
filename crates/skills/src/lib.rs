//! Agent Skills (the agentskills.io specification): a skill is a folder with a `SKILL.md`
//! whose YAML front matter names and describes it; its body, scripts and references are read
//! by the agent only when the skill is used (progressive disclosure).
//!
//! This crate finds skills in a folder of skill folders ([`discover`]), validates each
//! ([`validate`]) by the rules of the reference validator (PyPI `skills-ref`, whose CLI is
//! `agentskills validate`; the tests run both on the same fixtures and compare verdicts), and
//! renders the catalog an agent's system prompt carries ([`catalog`]: name, description and
//! where the `SKILL.md` is in the cell, about a hundred tokens a skill; nothing without
//! skills).
//!
//! Skill folders can come from a project, so everything here reads through
//! [`warren_fsx::Dir`]: beneath the folder's descriptor, no link followed, regular files only,
//! `SKILL.md` capped at [`MAX_SKILL_MD`].
//!
//! The rules (`skills-ref` 0.1):
//! - `SKILL.md` (or `skill.md`) starts with `---` and its front matter is closed by a second
//!   `---`; the front matter is a YAML mapping;
//! - only `name`, `description`, `license`, `allowed-tools`, `metadata`, `compatibility`;
//! - `name`: non-empty, at most 64 characters, lowercase, letters, digits and hyphens, no
//!   leading, trailing or doubled hyphen, equal to the folder's name;
//! - `description`: non-empty, at most 1024 characters; `compatibility`: at most 500.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use warren_fsx::Dir;

/// The largest `SKILL.md` read.
pub const MAX_SKILL_MD: u64 = 256 * 1024;
/// `name`'s limit, in characters.
pub const MAX_NAME: usize = 64;
/// `description`'s limit, in characters.
pub const MAX_DESCRIPTION: usize = 1024;
/// `compatibility`'s limit, in characters.
pub const MAX_COMPATIBILITY: usize = 500;
/// The front matter's fields.
pub const FIELDS: [&str; 6] = [
    "name",
    "description",
    "license",
    "allowed-tools",
    "metadata",
    "compatibility",
];

/// A valid skill's properties.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skill {
    /// Its name (the folder's).
    pub name: String,
    /// What it is for and when to use it.
    pub description: String,
    /// `license`, when given.
    pub license: Option<String>,
    /// `compatibility`, when given.
    pub compatibility: Option<String>,
    /// `allowed-tools`, when given.
    pub allowed_tools: Option<String>,
    /// `metadata`, when given.
    pub metadata: BTreeMap<String, String>,
    /// The folder on the host.
    pub dir: PathBuf,
}

/// Why a folder is not a valid skill: each problem, in the reference validator's words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", dir.display(), problems.join("; "))]
pub struct Invalid {
    /// The folder.
    pub dir: PathBuf,
    /// What is wrong (at least one).
    pub problems: Vec<String>,
}

fn invalid(dir: &Path, problem: impl Into<String>) -> Invalid {
    Invalid {
        dir: dir.to_owned(),
        problems: vec![problem.into()],
    }
}

/// `content`'s front matter (between the leading `---` and the next) and body.
fn front_matter(content: &str) -> Result<(&str, &str), String> {
    let rest = content
        .strip_prefix("---")
        .ok_or("SKILL.md must start with YAML frontmatter (---)")?;
    let (matter, body) = rest
        .split_once("---")
        .ok_or("SKILL.md frontmatter not properly closed with ---")?;
    Ok((matter, body.trim()))
}

/// A scalar as the text it stands for (the reference reads every scalar as a string).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// YAML flow style (`[a, b]`, `{a: b}`), which the reference's strict YAML refuses.
fn flow_style(matter: &str) -> bool {
    matter.lines().any(|l| {
        let value = match l.trim_start().strip_prefix("- ") {
            Some(item) => item,
            None => l.split_once(':').map_or("", |(_, v)| v),
        };
        value.trim_start().starts_with(['[', '{'])
    })
}

fn name_problems(name: &str, dir_name: &str) -> Vec<String> {
    let name = name.trim();
    if name.is_empty() {
        return vec!["Field 'name' must be a non-empty string".into()];
    }
    let mut p = Vec::new();
    let len = name.chars().count();
    if len > MAX_NAME {
        p.push(format!(
            "Skill name '{name}' exceeds {MAX_NAME} character limit ({len} chars)"
        ));
    }
    if name.to_lowercase() != name {
        p.push(format!("Skill name '{name}' must be lowercase"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        p.push("Skill name cannot start or end with a hyphen".into());
    }
    if name.contains("--") {
        p.push("Skill name cannot contain consecutive hyphens".into());
    }
    if !name.chars().all(|c| c.is_alphanumeric() || c == '-') {
        p.push(format!(
            "Skill name '{name}' contains invalid characters. Only letters, digits, and hyphens are allowed."
        ));
    }
    if dir_name != name {
        p.push(format!(
            "Directory name '{dir_name}' must match skill name '{name}'"
        ));
    }
    p
}

/// Parse and check the `SKILL.md` text of the folder named `dir_name`.
pub fn check(content: &str, dir: &Path) -> Result<Skill, Invalid> {
    let (matter, _body) = front_matter(content).map_err(|e| invalid(dir, e))?;
    if flow_style(matter) {
        return Err(invalid(
            dir,
            "Invalid YAML in frontmatter: flow style (`[…]`, `{…}`) is not allowed",
        ));
    }
    let fields: BTreeMap<String, Value> = match serde_saphyr::from_str::<Value>(matter) {
        Ok(Value::Object(m)) => m.into_iter().collect(),
        Ok(_) => return Err(invalid(dir, "SKILL.md frontmatter must be a YAML mapping")),
        Err(e) => return Err(invalid(dir, format!("Invalid YAML in frontmatter: {e}"))),
    };
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut problems = Vec::new();
    let extra: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|k| !FIELDS.contains(k))
        .collect();
    if !extra.is_empty() {
        let mut allowed = FIELDS.to_vec();
        allowed.sort_unstable();
        problems.push(format!(
            "Unexpected fields in frontmatter: {}. Only {allowed:?} are allowed.",
            extra.join(", ")
        ));
    }
    let name = match fields.get("name") {
        None => {
            problems.push("Missing required field in frontmatter: name".into());
            String::new()
        }
        Some(v) => {
            let n = text(v).unwrap_or_default();
            problems.extend(name_problems(&n, &dir_name));
            n.trim().to_owned()
        }
    };
    let description = match fields.get("description") {
        None => {
            problems.push("Missing required field in frontmatter: description".into());
            String::new()
        }
        Some(v) => {
            let d = text(v).unwrap_or_default();
            let len = d.chars().count();
            if d.trim().is_empty() {
                problems.push("Field 'description' must be a non-empty string".into());
            } else if len > MAX_DESCRIPTION {
                problems.push(format!(
                    "Description exceeds {MAX_DESCRIPTION} character limit ({len} chars)"
                ));
            }
            d.trim().to_owned()
        }
    };
    let compatibility = fields.get("compatibility").map(|v| match text(v) {
        Some(c) => {
            let len = c.chars().count();
            if len > MAX_COMPATIBILITY {
                problems.push(format!(
                    "Compatibility exceeds {MAX_COMPATIBILITY} character limit ({len} chars)"
                ));
            }
            c
        }
        None => {
            problems.push("Field 'compatibility' must be a string".into());
            String::new()
        }
    });
    if !problems.is_empty() {
        return Err(Invalid {
            dir: dir.to_owned(),
            problems,
        });
    }
    let metadata = match fields.get("metadata") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), text(v).unwrap_or_else(|| v.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(Skill {
        name,
        description,
        license: fields.get("license").and_then(text),
        compatibility,
        allowed_tools: fields.get("allowed-tools").and_then(text),
        metadata,
        dir: dir.to_owned(),
    })
}

/// Validate the skill folder `dir` (a path the user named).
pub fn validate(dir: &Path) -> Result<Skill, Invalid> {
    let d = Dir::open(dir).map_err(|e| invalid(dir, format!("cannot open the folder: {e}")))?;
    validate_in(&d, dir)
}

/// Validate the skill folder open as `d` (`dir` names it in errors and in the result).
fn validate_in(d: &Dir, dir: &Path) -> Result<Skill, Invalid> {
    for file in ["SKILL.md", "skill.md"] {
        match d.read(file, MAX_SKILL_MD) {
            Ok(bytes) => {
                let content = String::from_utf8(bytes)
                    .map_err(|_| invalid(dir, format!("{file} is not UTF-8")))?;
                return check(&content, dir);
            }
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(invalid(dir, format!("{file}: {e}"))),
        }
    }
    Err(invalid(dir, "Missing required file: SKILL.md"))
}

/// Every folder directly in `root` that holds a `SKILL.md`, validated, by name. A `root` that
/// does not exist has none; entries that are not directories (links among them) are passed
/// over.
pub fn discover(root: &Path) -> Result<Vec<Result<Skill, Invalid>>, Invalid> {
    let d = match Dir::open(root) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(invalid(root, format!("cannot open: {e}"))),
    };
    let mut entries = d
        .entries()
        .map_err(|e| invalid(root, format!("cannot list: {e}")))?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries
        .into_iter()
        .filter(|e| e.stat.kind == warren_fsx::Kind::Dir)
        .map(|e| {
            let path = root.join(&e.name);
            // Opened beneath root's descriptor: a folder swapped for a link is refused.
            match d.sub(&e.name) {
                Ok(sub) => validate_in(&sub, &path),
                Err(err) => Err(invalid(&path, format!("cannot open the folder: {err}"))),
            }
        })
        .collect())
}

/// The catalog for an agent's system prompt: each skill's name, description and where its
/// `SKILL.md` is in the cell (`{mount}/NAME/SKILL.md`). Empty without skills.
pub fn catalog(skills: &[Skill], mount: &str) -> String {
    if skills.is_empty() {
        return String::new();
    }
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut out = String::from(
        "Skills: folders of instructions and scripts for particular jobs. When one fits the \
         task, read its SKILL.md first and follow it; its scripts run in this cell.\n\
         <available_skills>\n",
    );
    for s in skills {
        out.push_str(&format!(
            "<skill>\n<name>{}</name>\n<description>{}</description>\n<location>{mount}/{}/SKILL.md</location>\n</skill>\n",
            esc(&s.name),
            esc(&s.description),
            s.name
        ));
    }
    out.push_str("</available_skills>");
    out
}

/// Where skills come from, in order of precedence (a name found earlier wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The project's `.warren/skills` or `.agents/skills` (used only when the project is
    /// trusted: a repository's skills are instructions to the agent).
    Project,
    /// The user's `~/.config/warren/skills` or `~/.agents/skills`.
    User,
    /// The operator's `/etc/warren/skills`.
    Operator,
}

/// A folder of skill folders.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Root {
    /// The folder.
    pub path: PathBuf,
    /// Whose.
    pub origin: Origin,
    /// Whether its skills are used (a project's only when trusted).
    pub used: bool,
}

/// The skill folders for a user at `home` working in `project` (trusted or not).
pub fn roots(home: Option<&Path>, project: Option<&Path>, project_trusted: bool) -> Vec<Root> {
    let mut r = Vec::new();
    if let Some(p) = project {
        for sub in [".warren/skills", ".agents/skills"] {
            r.push(Root {
                path: p.join(sub),
                origin: Origin::Project,
                used: project_trusted,
            });
        }
    }
    if let Some(h) = home {
        for sub in [".config/warren/skills", ".agents/skills"] {
            r.push(Root {
                path: h.join(sub),
                origin: Origin::User,
                used: true,
            });
        }
    }
    r.push(Root {
        path: PathBuf::from("/etc/warren/skills"),
        origin: Origin::Operator,
        used: true,
    });
    r
}

/// Limits of a skill's snapshot ([`snapshot`]).
pub const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024;
/// Files (and folders) of one skill's snapshot at most.
pub const MAX_SNAPSHOT_ENTRIES: usize = 10_000;
/// Folder depth of a skill's snapshot at most.
pub const MAX_SNAPSHOT_DEPTH: usize = 32;

/// Why the skills an agent names cannot be given to it.
#[derive(Debug, thiserror::Error)]
pub enum SkillError {
    /// A named skill is in none of the folders.
    #[error("skill {name:?} was not found (looked in {looked})")]
    NotFound {
        /// The name.
        name: String,
        /// The folders looked in, comma-separated.
        looked: String,
    },
    /// A named skill was found but is not valid.
    #[error("skill {name:?} is not valid: {invalid}")]
    Invalid {
        /// The name.
        name: String,
        /// What is wrong.
        invalid: Invalid,
    },
    /// Copying a skill for a task failed (a special file, a limit, an I/O error).
    #[error("skill {name:?}: {problem}")]
    Snapshot {
        /// The name.
        name: String,
        /// What went wrong.
        problem: String,
    },
}

/// The skills `wanted` (names, or `*` for every valid skill) from the folders of skill
/// folders `roots`, in precedence order (a name found in an earlier root wins). A named skill
/// that is missing or invalid is an error; `*` passes over invalid ones.
pub fn select(roots: &[PathBuf], wanted: &[String]) -> Result<Vec<Skill>, SkillError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut found: BTreeMap<String, Result<Skill, Invalid>> = BTreeMap::new();
    for root in roots {
        // An unreadable root is passed over like a missing one: a named skill then reports
        // itself as not found, with the folders looked in.
        for s in discover(root).unwrap_or_default() {
            let name = match &s {
                Ok(k) => k.name.clone(),
                Err(e) => e
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            found.entry(name).or_insert(s);
        }
    }
    if wanted.iter().any(|w| w == "*") {
        return Ok(found.into_values().filter_map(Result::ok).collect());
    }
    let mut out = Vec::new();
    for name in wanted {
        match found.remove(name) {
            Some(Ok(s)) => out.push(s),
            Some(Err(invalid)) => {
                return Err(SkillError::Invalid {
                    name: name.clone(),
                    invalid,
                });
            }
            None => {
                return Err(SkillError::NotFound {
                    name: name.clone(),
                    looked: roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    Ok(out)
}

/// Copy `skill`'s folder into `dest/<name>` for one task: what the cell mounts read-only at
/// `/skills/<name>`. A copy, not a mount of the folder itself, so the task sees one fixed
/// version, and a folder swapped for a link (or a file for a FIFO) between discovery and the
/// cell's start is never followed: the source is read beneath its parent's descriptor, links
/// are copied as links (they resolve inside the cell, never on the host), FIFOs, sockets and
/// devices are refused, modes are masked to `0755`, and the copy is bounded
/// ([`MAX_SNAPSHOT_BYTES`], [`MAX_SNAPSHOT_ENTRIES`], [`MAX_SNAPSHOT_DEPTH`]).
pub fn snapshot(skill: &Skill, dest: &Path) -> Result<(), SkillError> {
    let items = read_tree(skill)?;
    let fail = |problem: String| SkillError::Snapshot {
        name: skill.name.clone(),
        problem,
    };
    let root = Dir::create_trusted(dest, 0o755)
        .and_then(|d| d.ensure_dir(&skill.name, 0o755))
        .map_err(|e| fail(format!("{}: {e}", dest.display())))?;
    // Items come parents first: each folder is made before what it holds.
    for item in &items {
        let (rel, name) = match item {
            Item::Dir(rel) | Item::File(rel, ..) | Item::Link(rel, _) => (
                rel.parent().unwrap_or(Path::new("")),
                rel.file_name().unwrap_or_default(),
            ),
        };
        let io = |e: warren_fsx::Error| fail(format!("{}: {e}", item.path().display()));
        let parent = root.sub(rel).map_err(io)?;
        match item {
            Item::Dir(_) => parent.ensure_dir(name, 0o755).map(drop).map_err(io)?,
            Item::File(_, bytes, exec) => parent
                .write(name, bytes, if *exec { 0o755 } else { 0o644 }, None)
                .map_err(io)?,
            Item::Link(_, target) => parent.symlink(target, name).map_err(io)?,
        }
    }
    Ok(())
}

/// `skill`'s regular files with their contents, by path relative to its folder (`SKILL.md`,
/// `scripts/run.sh`), sorted: what an MCP client fetches of it (SEP-2640). Read like
/// [`snapshot`]: beneath the folder's descriptor, special files refused, bounded; links are
/// passed over (they mean nothing off the host).
pub fn files(skill: &Skill) -> Result<Vec<(String, Vec<u8>)>, SkillError> {
    let mut out = Vec::new();
    for item in read_tree(skill)? {
        if let Item::File(rel, bytes, _) = item {
            let name = rel.to_str().ok_or_else(|| SkillError::Snapshot {
                name: skill.name.clone(),
                problem: format!("{}: not a UTF-8 name", rel.display()),
            })?;
            out.push((name.to_owned(), bytes));
        }
    }
    out.sort();
    Ok(out)
}

/// One entry of a skill's folder, by path relative to it.
enum Item {
    Dir(PathBuf),
    /// Contents, and whether any execute bit is set.
    File(PathBuf, Vec<u8>, bool),
    Link(PathBuf, PathBuf),
}

impl Item {
    fn path(&self) -> &Path {
        match self {
            Item::Dir(p) | Item::File(p, ..) | Item::Link(p, _) => p,
        }
    }
}

/// Everything in `skill`'s folder, parents before children, read beneath its parent's
/// descriptor with no link followed and within the snapshot limits.
fn read_tree(skill: &Skill) -> Result<Vec<Item>, SkillError> {
    let fail = |problem: String| SkillError::Snapshot {
        name: skill.name.clone(),
        problem,
    };
    let parent = skill
        .dir
        .parent()
        .ok_or_else(|| fail("the folder has no parent".into()))?;
    let src = Dir::open(parent)
        .and_then(|p| p.sub(&skill.name))
        .map_err(|e| fail(format!("cannot open the folder: {e}")))?;
    let mut out = Vec::new();
    let mut budget = (MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_ENTRIES);
    walk(&src, Path::new(""), 0, &mut budget, &mut out).map_err(fail)?;
    Ok(out)
}

fn walk(
    src: &Dir,
    rel: &Path,
    depth: usize,
    budget: &mut (u64, usize),
    out: &mut Vec<Item>,
) -> Result<(), String> {
    if depth > MAX_SNAPSHOT_DEPTH {
        return Err(format!(
            "{}: deeper than {MAX_SNAPSHOT_DEPTH} folders",
            rel.display()
        ));
    }
    let entries = src
        .entries()
        .map_err(|e| format!("{}: {e}", rel.display()))?;
    for e in entries {
        let path = rel.join(&e.name);
        budget.1 = budget
            .1
            .checked_sub(1)
            .ok_or_else(|| format!("more than {MAX_SNAPSHOT_ENTRIES} files and folders"))?;
        let io = |e: warren_fsx::Error| format!("{}: {e}", path.display());
        match e.stat.kind {
            warren_fsx::Kind::File => {
                budget.0 = budget
                    .0
                    .checked_sub(e.stat.size)
                    .ok_or_else(|| format!("larger than {} MiB", MAX_SNAPSHOT_BYTES >> 20))?;
                // Opened beneath the folder's descriptor and checked by kind again: a file
                // swapped for a FIFO or a link meanwhile is refused, one grown is too large.
                let bytes = src.read(&e.name, e.stat.size).map_err(io)?;
                out.push(Item::File(path, bytes, e.stat.mode & 0o111 != 0));
            }
            warren_fsx::Kind::Dir => {
                let s = src.sub(&e.name).map_err(io)?;
                out.push(Item::Dir(path.clone()));
                walk(&s, &path, depth + 1, budget, out)?;
            }
            warren_fsx::Kind::Symlink => {
                let target = src.read_link(&e.name).map_err(io)?;
                out.push(Item::Link(path, target));
            }
            other => {
                return Err(format!(
                    "{}: a {other} is not part of a skill",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}
