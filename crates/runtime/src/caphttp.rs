//! `/cap/http`: HTTP requests as files, executed by the host under the task's egress policy.
//!
//! Present in a cell only when its capabilities allow network destinations. The interface:
//!
//! ```text
//! /cap/http/request              write one JSON request here (the whole file, then close)
//! /cap/http/responses/ID.json    the host writes the response here (atomically: poll for it)
//! /cap/http/README               this description
//! ```
//!
//! A request is `{"id": "r1", "url": "http://api.example.com/x", "method": "GET",
//! "headers": [["accept", "application/json"]], "body": "…", "max_body_bytes": 1048576,
//! "timeout_ms": 30000}`; only `id` (1–64 of `A-Z a-z 0-9 _ -`) and `url` are required. The
//! host takes the file as soon as it is complete (so the next request can be written), runs it
//! with the same allowlist, resolution and address checks as the proxy, audits it, and writes
//! `{"id", "status", "headers", "body" | "body_base64", "truncated", "error"}`; a refusal or
//! failure has `status` 0 and `error` set. A request that is not valid JSON or has no valid
//! `id` gets its answer in `responses/invalid.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

/// The README placed in `/cap/http`.
pub const README: &str = "Write one JSON request to /cap/http/request, e.g.\n  {\"id\": \"r1\", \"url\": \"http://api.example.com/x\"}\n(optional: method, headers as [[name, value]], body, max_body_bytes, timeout_ms).\nThe response appears as /cap/http/responses/r1.json (status, headers, body, error).\nOnly destinations your task may reach are allowed; every request is audited.\n";

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Largest request file the host reads.
const MAX_REQUEST: u64 = 1 << 20;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn owner_if_root(owner: (u32, u32)) -> Option<(u32, u32)> {
    is_root().then_some(owner)
}

/// Create (or, on resume, repair) `dir`, the host side of `/cap/http`, for a cell running as
/// `owner`. The cell can write everything in it, so nothing in it is trusted: the directory is
/// opened beneath its trusted parent without following links, `responses` is recreated if it is
/// anything but a real directory, and `README` is replaced atomically (a planted link at either
/// name is removed, never followed).
pub fn prepare(dir: &Path, owner: (u32, u32)) -> std::io::Result<()> {
    let cap = open_cap_dir(dir)?;
    cap.set_mode_owner("", 0o755, owner_if_root(owner))
        .map_err(std::io::Error::other)?;
    responses(&cap, owner)?;
    cap.write("README", README.as_bytes(), 0o444, None)
        .map_err(std::io::Error::other)?;
    Ok(())
}

/// Open `dir` as a handle: its parent is the host's own task directory.
fn open_cap_dir(dir: &Path) -> std::io::Result<warren_fsx::Dir> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(std::io::Error::other(format!(
            "{}: no parent",
            dir.display()
        )));
    };
    let parent = warren_fsx::Dir::create_trusted(parent, 0o755).map_err(std::io::Error::other)?;
    parent
        .ensure_dir(name, 0o755)
        .map_err(std::io::Error::other)
}

/// The `responses` directory, recreated when the cell replaced it with anything else.
fn responses(cap: &warren_fsx::Dir, owner: (u32, u32)) -> std::io::Result<warren_fsx::Dir> {
    match cap.stat("responses").map_err(std::io::Error::other)? {
        Some(s) if s.kind == warren_fsx::Kind::Dir => {}
        Some(_) => {
            cap.remove_all("responses").map_err(std::io::Error::other)?;
            cap.mkdir("responses", 0o755)
                .map_err(std::io::Error::other)?;
        }
        None => {
            cap.mkdir("responses", 0o755)
                .map_err(std::io::Error::other)?;
        }
    }
    let r = cap.sub("responses").map_err(std::io::Error::other)?;
    r.set_mode_owner("", 0o755, owner_if_root(owner))
        .map_err(std::io::Error::other)?;
    Ok(r)
}

fn write_response(cap: &warren_fsx::Dir, name: &str, v: &Value, owner: (u32, u32)) {
    let written = responses(cap, owner).and_then(|dir| {
        let bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
        dir.write(format!("{name}.json"), &bytes, 0o644, owner_if_root(owner))
            .map_err(std::io::Error::other)
    });
    if let Err(e) = written {
        // The cell waits for this file: say why it will not come.
        tracing::warn!("/cap/http: writing response {name}: {e}");
    }
}

/// What the poller found at `request`.
enum Pickup {
    Nothing,
    /// Still being written (not yet complete JSON): look again next time.
    Incomplete,
    /// A complete request, taken (renamed away) so the next one can be written.
    Request(Value),
    /// Not something the host reads; removed, and the reason answered.
    Invalid(String),
}

fn pick_up(cap: &warren_fsx::Dir, n: u64) -> Pickup {
    let text = match cap.read("request", MAX_REQUEST) {
        Ok(t) => t,
        Err(e) if e.is_not_found() => return Pickup::Nothing,
        Err(warren_fsx::Error::TooLarge { .. }) => {
            let _ = cap.remove_file("request");
            return Pickup::Invalid("the request is larger than 1 MiB".into());
        }
        Err(warren_fsx::Error::WrongKind { found, .. }) => {
            // A FIFO, directory, link or device: never opened for reading, just removed.
            let _ = cap.remove_all("request");
            return Pickup::Invalid(format!("the request is a {found}, not a regular file"));
        }
        Err(e) => {
            let _ = cap.remove_all("request");
            return Pickup::Invalid(format!("the request cannot be read: {e}"));
        }
    };
    if text.is_empty() {
        return Pickup::Nothing;
    }
    // Complete JSON only: a writer still writing is read again next time.
    if serde_json::from_slice::<Value>(&text).is_err() {
        if text.ends_with(b"\n") || text.ends_with(b"}") {
            let _ = cap.remove_file("request");
            return Pickup::Invalid("the request is not valid JSON".into());
        }
        return Pickup::Incomplete;
    }
    // Take it, then read what was taken: what is processed is exactly the file removed.
    let taken = format!(".taken-{n}");
    if cap.rename("request", &taken).is_err() {
        return Pickup::Nothing;
    }
    let text = cap.read(&taken, MAX_REQUEST);
    let _ = cap.remove_all(&taken);
    match text.map(|t| serde_json::from_slice::<Value>(&t)) {
        Ok(Ok(v)) => Pickup::Request(v),
        _ => Pickup::Invalid("the request changed while it was taken".into()),
    }
}

/// Serve `dir` until the returned task is aborted: pick up `request`, run it, answer.
pub fn serve(
    dir: PathBuf,
    owner: (u32, u32),
    config: Arc<warren_egress::Config>,
    audit: Arc<dyn warren_egress::Audit>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let cap = match open_cap_dir(&dir) {
            Ok(c) => Arc::new(c),
            Err(_) => return,
        };
        let mut n = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            n += 1;
            let mut v = match pick_up(&cap, n) {
                Pickup::Nothing | Pickup::Incomplete => continue,
                Pickup::Invalid(why) => {
                    write_response(&cap, "invalid", &json!({"error": why}), owner);
                    continue;
                }
                Pickup::Request(v) => v,
            };
            let id = v["id"].as_str().map(str::to_owned);
            let Some(id) = id.filter(|i| valid_id(i)) else {
                write_response(
                    &cap,
                    "invalid",
                    &json!({"error": "the request needs an \"id\" of 1-64 characters A-Z a-z 0-9 _ -"}),
                    owner,
                );
                continue;
            };
            if let Some(o) = v.as_object_mut() {
                o.remove("id");
            }
            let (config, audit, cap) = (Arc::clone(&config), Arc::clone(&audit), Arc::clone(&cap));
            tokio::spawn(async move {
                let answer = match serde_json::from_value::<warren_egress::FetchRequest>(v) {
                    Ok(req) => {
                        let r = warren_egress::fetch(&config, audit.as_ref(), &req).await;
                        let mut out = serde_json::to_value(&r).unwrap_or_default();
                        out["id"] = json!(id);
                        out
                    }
                    Err(e) => {
                        json!({"id": id, "status": 0, "error": format!("invalid request: {e}")})
                    }
                };
                write_response(&cap, &id, &answer, owner);
            });
        }
    })
}

/// Run `f` to completion on `rt` from synchronous code: on this thread when it is outside any
/// tokio runtime (a WASI run's thread: no thread spawned per request), else on a scoped thread
/// of its own (`block_on` must not be called from inside a runtime). `Err` if it panicked.
pub(crate) fn block_on<F>(rt: &tokio::runtime::Runtime, f: F) -> Result<F::Output, ()>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(rt.block_on(f));
    }
    std::thread::scope(|s| s.spawn(|| rt.block_on(f)).join()).map_err(|_| ())
}

/// The README of the live `/cap/http` (the WASI tier's).
pub const LIVE_README: &str = "Open /cap/http/request for reading and writing, write one JSON request, e.g.\n  {\"url\": \"http://api.example.com/x\"}\n(optional: method, headers as [[name, value]], body, max_body_bytes, timeout_ms),\nseek back to the start and read the response (status, headers, body, error) on the same\nhandle. Only destinations your task may reach are allowed; every request is audited.\n";

/// The largest request the live service takes.
pub const LIVE_MAX_REQUEST: usize = 1 << 20;

/// `/cap/http` as a live file service, for tiers whose files the host serves itself (the WASI
/// tier): each handle on `request` is one exchange — the request written to it is run under
/// `config`'s egress policy and audited when the handle is first read after the write, and the
/// read returns the response (the same JSON fields as the process tier's `responses/ID.json`;
/// no `id` is needed). A request that is not valid JSON gets `status` 0 and `error`. The
/// request runs on a thread of its own, so this may be read from any thread, inside a tokio
/// runtime or not.
pub fn service(
    config: Arc<warren_egress::Config>,
    audit: Arc<dyn warren_egress::Audit>,
) -> warren_ns::Result<warren_ns::func::FuncFs> {
    let rt = Arc::new(crate::capws::io_runtime("cap/http")?);
    warren_ns::func::FuncFs::new()
        .computed("README", || Ok(LIVE_README.as_bytes().to_vec()))?
        .request("request", LIVE_MAX_REQUEST, move |body| {
            let answer = match serde_json::from_slice::<warren_egress::FetchRequest>(body) {
                Ok(req) => {
                    let r = block_on(&rt, warren_egress::fetch(&config, audit.as_ref(), &req))
                        .map_err(|_| {
                            warren_ns::NsError::Failed("cap/http: request failed".into())
                        })?;
                    serde_json::to_value(&r).unwrap_or_default()
                }
                Err(e) => json!({"status": 0, "error": format!("invalid request: {e}")}),
            };
            Ok(serde_json::to_vec(&answer).unwrap_or_default())
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warren-caphttp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn me() -> (u32, u32) {
        // SAFETY: no preconditions.
        unsafe { (libc::geteuid(), libc::getegid()) }
    }

    /// What a cell can plant in its `/cap/http` before the host (re-)prepares it on resume.
    #[test]
    fn attack_prepare_replaces_planted_links_and_never_writes_or_chowns_through_them() {
        let root = tmp("prepare");
        let victim = root.join("victim");
        std::fs::write(&victim, "root-only\n").unwrap();
        let dir = root.join("task/cap-http");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("README")).unwrap();
        std::os::unix::fs::symlink(&root, dir.join("responses")).unwrap();
        prepare(&dir, (65534, 65534)).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root-only\n");
        let m = std::fs::symlink_metadata(&victim).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((m.uid(), m.gid()), me());
        assert!(
            std::fs::symlink_metadata(dir.join("README"))
                .unwrap()
                .is_file()
        );
        assert!(
            std::fs::symlink_metadata(dir.join("responses"))
                .unwrap()
                .is_dir()
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn attack_a_fifo_or_link_at_request_is_removed_without_blocking() {
        let root = tmp("fifo");
        let dir = root.join("task/cap-http");
        prepare(&dir, me()).unwrap();
        let cap = open_cap_dir(&dir).unwrap();
        let c = std::ffi::CString::new(dir.join("request").into_os_string().into_encoded_bytes())
            .unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        let start = std::time::Instant::now();
        assert!(matches!(pick_up(&cap, 1), Pickup::Invalid(w) if w.contains("FIFO")));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(!dir.join("request").exists());
        std::os::unix::fs::symlink("/etc/passwd", dir.join("request")).unwrap();
        assert!(matches!(pick_up(&cap, 2), Pickup::Invalid(w) if w.contains("symlink")));
        // A planted link at the temporary name of a response is replaced, never followed.
        let victim = root.join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("responses/r1.json")).unwrap();
        write_response(&cap, "r1", &json!({"ok": true}), me());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
        assert!(
            std::fs::read_to_string(dir.join("responses/r1.json"))
                .unwrap()
                .contains("ok")
        );
        // And a well-formed request is still taken.
        std::fs::write(
            dir.join("request"),
            r#"{"id": "r2", "url": "http://x.test/"}"#,
        )
        .unwrap();
        assert!(matches!(pick_up(&cap, 3), Pickup::Request(v) if v["id"] == "r2"));
        let _ = std::fs::remove_dir_all(&root);
    }
}
