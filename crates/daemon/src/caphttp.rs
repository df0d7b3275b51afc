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

/// Create `dir` (the host side of `/cap/http`) for a cell running as `owner`.
pub fn prepare(dir: &Path, owner: (u32, u32)) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("responses"))?;
    std::fs::write(dir.join("README"), README)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        for p in [dir.to_path_buf(), dir.join("responses")] {
            std::os::unix::fs::chown(&p, Some(owner.0), Some(owner.1))?;
        }
    }
    Ok(())
}

fn write_response(dir: &Path, name: &str, v: &Value, owner: (u32, u32)) {
    let tmp = dir.join("responses").join(format!(".{name}.tmp"));
    let dst = dir.join("responses").join(format!("{name}.json"));
    if std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap_or_default()).is_ok() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let _ = std::os::unix::fs::chown(&tmp, Some(owner.0), Some(owner.1));
        }
        let _ = std::fs::rename(&tmp, &dst);
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
        let request = dir.join("request");
        let mut n = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let Ok(text) = std::fs::read(&request) else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            // Complete JSON only: a writer still writing is read again next time.
            let Ok(mut v) = serde_json::from_slice::<Value>(&text) else {
                if text.len() > (1 << 20) || text.ends_with(b"\n") || text.ends_with(b"}") {
                    let _ = std::fs::remove_file(&request);
                    write_response(
                        &dir,
                        "invalid",
                        &json!({"error": "the request is not valid JSON"}),
                        owner,
                    );
                }
                continue;
            };
            n += 1;
            let taken = dir.join(format!(".taken-{n}"));
            if std::fs::rename(&request, &taken).is_err() {
                continue;
            }
            let _ = std::fs::remove_file(&taken);
            let id = v["id"].as_str().map(str::to_owned);
            let Some(id) = id.filter(|i| valid_id(i)) else {
                write_response(
                    &dir,
                    "invalid",
                    &json!({"error": "the request needs an \"id\" of 1-64 characters A-Z a-z 0-9 _ -"}),
                    owner,
                );
                continue;
            };
            if let Some(o) = v.as_object_mut() {
                o.remove("id");
            }
            let (config, audit, dir) = (Arc::clone(&config), Arc::clone(&audit), dir.clone());
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
                write_response(&dir, &id, &answer, owner);
            });
        }
    })
}
