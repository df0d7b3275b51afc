//! Trust for project-local configuration.
//!
//! A project's `.warren/config.toml` is written by whoever can write the project: a colleague,
//! a dependency's post-install script, an agent with a read-write workspace, a diff someone
//! applied. So the settings in it that decide where requests and credentials go
//! ([`crate::project_key`]) apply only once the user trusted that exact file with `warren
//! trust`: its project directory (canonical path) and the SHA-256 of its content are recorded
//! in `~/.config/warren/trusted.toml` (written atomically, mode 0600). Any change to the file
//! changes the hash, and the project is untrusted again until trusted anew.
//!
//! The project file itself is hostile input: it is read beneath the project directory without
//! following any link (`.warren` and `config.toml` alike), only if it is a regular file (a FIFO
//! is refused by kind, never opened for reading, so it cannot hang the reader) and at most
//! [`MAX_PROJECT_FILE`] bytes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::ConfigError;

/// The project file, relative to the project directory.
pub const PROJECT_FILE: &str = ".warren/config.toml";

/// Larger project files are refused.
pub const MAX_PROJECT_FILE: u64 = 1 << 20;

/// A trust decision that cannot be read, made or recorded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The project directory cannot be resolved to its canonical path.
    #[error("{}: {source}", dir.display())]
    Resolve {
        /// The directory as given.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A project directory the store (TOML) cannot hold.
    #[error("{}: not a UTF-8 path", path.display())]
    NotUtf8Path {
        /// The directory.
        path: PathBuf,
    },
    /// `warren trust` in a project without a configuration file.
    #[error("{}: no such file; nothing to trust", file.display())]
    NoProjectFile {
        /// The file that is not there.
        file: PathBuf,
    },
    /// The project file is not UTF-8.
    #[error("{}: not UTF-8", file.display())]
    NotUtf8 {
        /// The project file.
        file: PathBuf,
    },
    /// The project file or the store cannot be read, or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store cannot be encoded.
    #[error("recording the trust in {}: {source}", file.display())]
    Encode {
        /// The store.
        file: PathBuf,
        /// Why.
        #[source]
        source: toml::ser::Error,
    },
    /// The store cannot be written.
    #[error("recording the trust in {}: {source}", file.display())]
    Write {
        /// The store.
        file: PathBuf,
        /// Why.
        #[source]
        source: warren_fsx::Error,
    },
}

/// Where the user's trust decisions are kept.
pub fn store_path(home: &Path) -> PathBuf {
    home.join(".config/warren/trusted.toml")
}

/// One trusted project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The project directory, canonical.
    pub path: String,
    /// SHA-256 (hex) of its `.warren/config.toml` when it was trusted.
    pub sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    #[serde(default)]
    project: Vec<Entry>,
}

const STORE_HEADER: &str = "# Projects whose .warren/config.toml may set endpoints, providers and the other settings\n\
# that decide where requests and credentials go. Written by `warren trust`; an entry holds\n\
# only while the file's SHA-256 is the one recorded here (any edit ends the trust).\n\n";

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Read `DIR/.warren/config.toml` as hostile input: beneath `dir`, no link followed in
/// `.warren` or `config.toml`, a regular file only, at most [`MAX_PROJECT_FILE`] bytes.
/// `Ok(None)` when there is none.
pub fn read_project_file(dir: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    let file = dir.join(PROJECT_FILE);
    let refuse = |message: String| ConfigError::Read {
        file: file.clone(),
        message,
    };
    let handle = match warren_fsx::Dir::open(dir) {
        Ok(d) => d,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(refuse(e.to_string())),
    };
    match handle.read(PROJECT_FILE, MAX_PROJECT_FILE) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(
            warren_fsx::Error::Symlink { .. }
            | warren_fsx::Error::WrongKind {
                found: warren_fsx::Kind::Symlink,
                ..
            },
        ) => Err(refuse(
            "refused: it (or .warren) is a symbolic link; a project's configuration is never read through a link".into(),
        )),
        Err(warren_fsx::Error::WrongKind { found, .. }) => Err(refuse(format!(
            "refused: it is a {found}, not a regular file"
        ))),
        Err(warren_fsx::Error::TooLarge { max, .. }) => Err(refuse(format!(
            "refused: larger than {max} bytes"
        ))),
        Err(e) => Err(refuse(e.to_string())),
    }
}

/// The project directory as trust records it: canonical, and UTF-8 (the store is TOML).
pub fn project_id(dir: &Path) -> Result<String, TrustError> {
    let canonical = std::fs::canonicalize(dir).map_err(|source| TrustError::Resolve {
        dir: dir.to_path_buf(),
        source,
    })?;
    match canonical.to_str() {
        Some(s) => Ok(s.to_owned()),
        None => Err(TrustError::NotUtf8Path { path: canonical }),
    }
}

/// The trusted projects (none when the store does not exist).
///
/// The store is refused when someone other than the user could have written it (owned by
/// another user, or writable by group or others): trust is only what the user decided.
pub fn load_store(home: &Path) -> Result<Vec<Entry>, ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let file = store_path(home);
    let meta = match std::fs::metadata(&file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError::Read {
                file,
                message: e.to_string(),
            });
        }
    };
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !meta.is_file() || (meta.uid() != euid && meta.uid() != 0) || meta.mode() & 0o022 != 0 {
        return Err(ConfigError::Read {
            file,
            message: "refused: not a regular file owned by you and writable only by you (chmod 600 it, or remove it and trust again)".into(),
        });
    }
    let text = std::fs::read_to_string(&file).map_err(|e| ConfigError::Read {
        file: file.clone(),
        message: e.to_string(),
    })?;
    toml::from_str::<StoreFile>(&text)
        .map(|s| s.project)
        .map_err(|e| {
            let (line, column) = crate::line_col(&text, e.span().map_or(0, |s| s.start));
            ConfigError::File {
                file,
                line,
                column,
                message: e.message().to_owned(),
            }
        })
}

fn save_store(home: &Path, entries: &[Entry]) -> Result<(), TrustError> {
    let file = store_path(home);
    let text = match toml::to_string(&StoreFile {
        project: entries.to_vec(),
    }) {
        Ok(t) => t,
        Err(source) => return Err(TrustError::Encode { file, source }),
    };
    // The store's directory (`~/.config/warren`) is always there to take.
    let dir = file.parent().unwrap_or(home);
    let written = warren_fsx::Dir::create_trusted(dir, 0o700).and_then(|handle| {
        handle.write(
            "trusted.toml",
            format!("{STORE_HEADER}{text}").as_bytes(),
            0o600,
            None,
        )
    });
    written.map_err(|source| TrustError::Write { file, source })
}

/// Whether the project at `key` (see [`project_id`]) is trusted with content hash `sha256`.
pub fn is_trusted(entries: &[Entry], key: &str, sha256: &str) -> bool {
    entries.iter().any(|e| e.path == key && e.sha256 == sha256)
}

/// What `warren trust DIR` recorded.
#[derive(Clone, Debug)]
pub struct Trusted {
    /// The project directory (canonical).
    pub dir: String,
    /// The file's hash.
    pub sha256: String,
    /// Its settings that apply now and did not before (`key = value`, secrets redacted).
    pub now_applied: Vec<String>,
    /// Keys found in it that are never applied from a project file.
    pub never: Vec<String>,
}

/// Trust `dir`'s `.warren/config.toml` as it is now. The file must exist and be valid.
pub fn trust(home: &Path, dir: &Path) -> Result<Trusted, TrustError> {
    let key = project_id(dir)?;
    let file = Path::new(&key).join(PROJECT_FILE);
    let Some(bytes) = read_project_file(Path::new(&key))? else {
        return Err(TrustError::NoProjectFile { file });
    };
    let Ok(text) = String::from_utf8(bytes.clone()) else {
        return Err(TrustError::NotUtf8 { file });
    };
    let table = crate::parse_file(&file, &text)?;
    let mut now_applied = Vec::new();
    let mut never = Vec::new();
    crate::walk_leaves(
        &table,
        &mut Vec::new(),
        &mut |key, v| match crate::project_key(key) {
            crate::ProjectKey::Applies => {}
            crate::ProjectKey::NeedsTrust => now_applied.push(format!(
                "{} = {}",
                crate::dotted(key),
                crate::shown(&crate::dotted(key), v)
            )),
            crate::ProjectKey::Never => never.push(crate::dotted(key)),
        },
    );
    let sha256 = sha256_hex(&bytes);
    let mut entries = load_store(home)?;
    entries.retain(|e| e.path != key);
    entries.push(Entry {
        path: key.clone(),
        sha256: sha256.clone(),
    });
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    save_store(home, &entries)?;
    Ok(Trusted {
        dir: key,
        sha256,
        now_applied,
        never,
    })
}

/// Stop trusting `dir` (also when the directory is gone). `Ok(false)`: it was not trusted.
pub fn revoke(home: &Path, dir: &Path) -> Result<bool, TrustError> {
    let key = project_id(dir).or_else(|e| {
        let abs = std::path::absolute(dir).map_err(|_| e)?;
        match abs.to_str() {
            Some(s) => Ok(s.to_owned()),
            None => Err(TrustError::NotUtf8Path { path: abs }),
        }
    })?;
    let mut entries = load_store(home)?;
    let before = entries.len();
    entries.retain(|e| e.path != key);
    if entries.len() == before {
        return Ok(false);
    }
    save_store(home, &entries)?;
    Ok(true)
}

/// Whether a recorded trust still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The file is the one trusted.
    Holds,
    /// The file changed since: the project is not trusted.
    Changed,
    /// There is no such file (any more), or it cannot be read safely.
    Missing,
}

impl Status {
    /// A word for listings.
    pub fn name(self) -> &'static str {
        match self {
            Status::Holds => "trusted",
            Status::Changed => "changed",
            Status::Missing => "missing",
        }
    }
}

/// Every recorded trust and whether it still holds.
pub fn list(home: &Path) -> Result<Vec<(Entry, Status)>, TrustError> {
    let entries = load_store(home)?;
    Ok(entries
        .into_iter()
        .map(|e| {
            let status = match read_project_file(Path::new(&e.path)) {
                Ok(Some(b)) if sha256_hex(&b) == e.sha256 => Status::Holds,
                Ok(Some(_)) => Status::Changed,
                _ => Status::Missing,
            };
            (e, status)
        })
        .collect())
}
