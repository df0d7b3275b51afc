//! `/cap/nostr`: a Nostr signing identity whose secret key never leaves the host.
//!
//! ```text
//! /cap/nostr/README
//! /cap/nostr/pubkey     the identity's public key (hex, BIP-340 x-only)
//! /cap/nostr/sign       write an event template, read the signed event (NIP-01)
//! /cap/nostr/publish    write a template, read {"event", "relays": [{url, accepted, message}]}
//!                       after the relays answered (or did not, within 10 s each)
//! ```
//!
//! A template is `{"kind": 1, "content": "…", "tags": [["t", "x"]], "created_at": 1700000000}`
//! (`created_at` defaults to now). NIP-90 job requests are templates of kinds 5000–5999 with
//! `i` (input) and `param` tags; they are signed and published like any event. The host fills
//! in `pubkey`, computes the NIP-01 `id` (SHA-256 of `[0, pubkey, created_at, kind, tags,
//! content]`) and signs it with BIP-340 Schnorr.
//!
//! Hostile-input discipline: a template is capped (64 KiB content, 256 tags of at most 16
//! strings of 1 KiB) and parsed strictly (unknown fields refused, so a module cannot smuggle an
//! `id`, `pubkey` or `sig` of its own); kinds outside the service's allowed ranges are refused;
//! relays are reached only through the egress gate (audited as `WEBSOCKET`), and their answers
//! are capped and parsed, never trusted. The key file is created 0600 in host state no cell
//! can see, with `O_EXCL` (never through a planted link).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k256::schnorr::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tungstenite::Message;

/// The README placed in `/cap/nostr`.
pub const README: &str = "A Nostr identity held by the host. Read /cap/nostr/pubkey. Write an event template\n  {\"kind\": 1, \"content\": \"hello\", \"tags\": []}\nto /cap/nostr/sign and read the signed event from the same handle, or to\n/cap/nostr/publish to sign it and send it to the task's relays (the answer lists each\nrelay's reply). NIP-90 job requests are kinds 5000-5999. The secret key is never visible.\n";

const MAX_TEMPLATE: usize = 256 << 10;
const MAX_CONTENT: usize = 64 << 10;
const MAX_TAGS: usize = 256;
const MAX_TAG_ITEMS: usize = 16;
const MAX_TAG_ITEM: usize = 1024;
const RELAY_WAIT: Duration = Duration::from_secs(10);

/// What a module writes to `sign` or `publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// The event kind.
    pub kind: u16,
    /// The content.
    #[serde(default)]
    pub content: String,
    /// The tags.
    #[serde(default)]
    pub tags: Vec<Vec<String>>,
    /// Unix seconds; now when absent.
    #[serde(default)]
    pub created_at: Option<u64>,
}

/// A signed NIP-01 event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Hex SHA-256 of the canonical serialization.
    pub id: String,
    /// Hex x-only public key.
    pub pubkey: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The kind.
    pub kind: u16,
    /// The tags.
    pub tags: Vec<Vec<String>>,
    /// The content.
    pub content: String,
    /// Hex BIP-340 signature of `id`.
    pub sig: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The NIP-01 id of an event's fields.
pub fn event_id(
    pubkey: &str,
    created_at: u64,
    kind: u16,
    tags: &[Vec<String>],
    content: &str,
) -> String {
    let canonical = json!([0, pubkey, created_at, kind, tags, content]).to_string();
    hex(&Sha256::digest(canonical.as_bytes()))
}

/// Whether `e`'s id matches its fields and its signature verifies under its pubkey.
pub fn verify(e: &Event) -> bool {
    if event_id(&e.pubkey, e.created_at, e.kind, &e.tags, &e.content) != e.id {
        return false;
    }
    let (Some(pk), Some(sig), Some(id)) = (unhex(&e.pubkey), unhex(&e.sig), unhex(&e.id)) else {
        return false;
    };
    let (Ok(vk), Ok(sig)) = (
        VerifyingKey::from_bytes(&pk),
        k256::schnorr::Signature::try_from(sig.as_slice()),
    ) else {
        return false;
    };
    vk.verify_raw(&id, &sig).is_ok()
}

fn random32() -> Result<[u8; 32], String> {
    let mut b = [0u8; 32];
    let mut filled = 0;
    while filled < 32 {
        // SAFETY: getrandom writes at most the given length into the live buffer's tail.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), 32 - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("getrandom: {e}"));
            }
            continue;
        }
        filled += n as usize;
    }
    Ok(b)
}

/// A host-held signing identity.
pub struct Identity {
    key: SigningKey,
    /// Hex x-only public key.
    pub pubkey: String,
}

impl Identity {
    /// Load the key at `path`, or create it (0600, exclusively) if there is none.
    pub fn load_or_create(path: &Path) -> Result<Identity, String> {
        let read = |p: &Path| -> Result<Identity, String> {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let bytes =
                unhex(text.trim()).ok_or_else(|| format!("{}: not a hex key", p.display()))?;
            Identity::from_secret(&bytes).map_err(|e| format!("{}: {e}", p.display()))
        };
        if path.exists() {
            return read(path);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let (secret, id) = loop {
            let s = random32()?;
            if let Ok(id) = Identity::from_secret(&s) {
                break (s, id);
            }
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(hex(&secret).as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(id)
    }

    /// An identity from a 32-byte secret key.
    pub fn from_secret(secret: &[u8]) -> Result<Identity, String> {
        let key =
            SigningKey::from_bytes(secret).map_err(|_| "not a valid secret key".to_string())?;
        let pubkey = hex(&key.verifying_key().to_bytes());
        Ok(Identity { key, pubkey })
    }

    /// Sign a template (checked against the caps and `kinds`).
    pub fn sign(&self, t: Template, kinds: &[(u16, u16)]) -> Result<Event, String> {
        if !kinds.is_empty() && !kinds.iter().any(|(a, b)| (*a..=*b).contains(&t.kind)) {
            return Err(format!("kind {} is not allowed for this task", t.kind));
        }
        if t.content.len() > MAX_CONTENT {
            return Err(format!("content is longer than {MAX_CONTENT} bytes"));
        }
        if t.tags.len() > MAX_TAGS
            || t.tags.iter().any(|tag| {
                tag.is_empty()
                    || tag.len() > MAX_TAG_ITEMS
                    || tag.iter().any(|s| s.len() > MAX_TAG_ITEM)
            })
        {
            return Err(format!(
                "at most {MAX_TAGS} tags, each 1-{MAX_TAG_ITEMS} strings of at most {MAX_TAG_ITEM} bytes"
            ));
        }
        let created_at = t.created_at.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
        let id = event_id(&self.pubkey, created_at, t.kind, &t.tags, &t.content);
        let digest = unhex(&id).unwrap_or_default();
        let sig = self
            .key
            .sign_raw(&digest, &random32()?)
            .map_err(|e| format!("signing: {e}"))?;
        Ok(Event {
            id,
            pubkey: self.pubkey.clone(),
            created_at,
            kind: t.kind,
            tags: t.tags,
            content: t.content,
            sig: hex(&sig.to_bytes()),
        })
    }
}

/// Called with every event the identity signed (the task's audit).
#[derive(Clone)]
pub struct SignHook(pub Arc<dyn Fn(&Event) + Send + Sync>);

impl SignHook {
    /// Tell `hook`, if any, of `e`.
    fn tell(hook: &Option<SignHook>, e: &Event) {
        if let Some(h) = hook {
            (h.0)(e);
        }
    }
}

impl std::fmt::Debug for SignHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignHook")
    }
}

/// Settings of one task's `/cap/nostr`.
#[derive(Clone, Debug, Default)]
pub struct NostrGrant {
    /// Relays `publish` sends to (`ws://` URLs; each must also pass the egress policy).
    pub relays: Vec<String>,
    /// Kinds that may be signed, as inclusive ranges (empty: any).
    pub kinds: Vec<(u16, u16)>,
    /// Told of every signature.
    pub on_sign: Option<SignHook>,
}

fn parse_template(body: &[u8]) -> Result<Template, String> {
    serde_json::from_slice::<Template>(body).map_err(|e| format!("invalid template: {e}"))
}

/// `/cap/nostr` for `identity`, publishing to `grant.relays` through `config`'s policy.
pub fn service(
    identity: Arc<Identity>,
    grant: NostrGrant,
    config: Arc<warren_egress::Config>,
    audit: Arc<dyn warren_egress::Audit>,
) -> warren_ns::Result<warren_ns::func::FuncFs> {
    let rt = Arc::new(crate::capws::io_runtime("cap/nostr")?);
    let (id_sign, kinds_sign) = (identity.clone(), grant.kinds.clone());
    let (hook_sign, hook_publish) = (grant.on_sign.clone(), grant.on_sign.clone());
    let pubkey = identity.pubkey.clone();
    warren_ns::func::FuncFs::new()
        .computed("README", || Ok(README.as_bytes().to_vec()))?
        .computed("pubkey", move || Ok(format!("{pubkey}\n").into_bytes()))?
        .request("sign", MAX_TEMPLATE, move |body| {
            let v = match parse_template(body).and_then(|t| id_sign.sign(t, &kinds_sign)) {
                Ok(e) => {
                    SignHook::tell(&hook_sign, &e);
                    serde_json::to_value(&e).unwrap_or_default()
                }
                Err(e) => json!({"error": e}),
            };
            Ok(serde_json::to_vec(&v).unwrap_or_default())
        })?
        .request("publish", MAX_TEMPLATE, move |body| {
            let event = match parse_template(body).and_then(|t| identity.sign(t, &grant.kinds)) {
                Ok(e) => {
                    SignHook::tell(&hook_publish, &e);
                    e
                }
                Err(e) => return Ok(serde_json::to_vec(&json!({"error": e})).unwrap_or_default()),
            };
            let relays: Vec<Value> = grant
                .relays
                .iter()
                .map(
                    |url| match publish(&rt, &config, audit.as_ref(), url, &event) {
                        Ok((accepted, message)) => {
                            json!({"url": url, "accepted": accepted, "message": message})
                        }
                        Err(e) => json!({"url": url, "accepted": false, "error": e}),
                    },
                )
                .collect();
            Ok(serde_json::to_vec(&json!({"event": event, "relays": relays})).unwrap_or_default())
        })
}

/// Send `event` to the relay at `url` and wait for its `OK`.
fn publish(
    rt: &tokio::runtime::Runtime,
    config: &warren_egress::Config,
    audit: &dyn warren_egress::Audit,
    url: &str,
    event: &Event,
) -> Result<(bool, String), String> {
    let mut ws = crate::capws::dial(rt, config, audit, url, RELAY_WAIT)?;
    ws.send(Message::text(json!(["EVENT", event]).to_string()))
        .map_err(|e| format!("send: {e}"))?;
    // Wait for this event's OK; other messages (NOTICE, …) are skipped, a handful at most.
    for _ in 0..16 {
        let m = ws
            .read()
            .map_err(|e| format!("no OK from the relay: {e}"))?;
        let Message::Text(t) = m else { continue };
        let Ok(Value::Array(a)) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        if a.first().and_then(Value::as_str) == Some("OK")
            && a.get(1).and_then(Value::as_str) == Some(event.id.as_str())
        {
            let accepted = a.get(2).and_then(Value::as_bool).unwrap_or(false);
            let message: String = a
                .get(3)
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(1024)
                .collect();
            let _ = ws.close(None);
            return Ok((accepted, message));
        }
    }
    Err("the relay did not answer this event".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_are_signed_per_nip01_and_verify() {
        // The BIP-340 test vector 1's secret key.
        let id = Identity::from_secret(
            &unhex("b7e151628aed2a6abf7158809cf4f3c762e7160f38b4da56a784d9045190cfef").unwrap(),
        )
        .unwrap();
        assert_eq!(
            id.pubkey,
            "dff1d77f2a671c5f36183726db2341be58feae1da2deced843240f7b502ba659"
        );
        let t: Template =
            serde_json::from_str(r#"{"kind": 1, "content": "hi\n\"there\"", "tags": [["t", "x"]], "created_at": 1700000000}"#)
                .unwrap();
        let e = id.sign(t, &[]).unwrap();
        assert!(verify(&e));
        let mut forged = e.clone();
        forged.content.push('!');
        assert!(!verify(&forged));
    }

    #[test]
    fn attack_templates_cannot_carry_their_own_id_pubkey_or_sig_or_exceed_caps() {
        for bad in [
            r#"{"kind": 1, "content": "x", "pubkey": "00"}"#,
            r#"{"kind": 1, "content": "x", "sig": "00"}"#,
            r#"{"kind": 70000, "content": "x"}"#,
            r#"{"content": "x"}"#,
        ] {
            assert!(parse_template(bad.as_bytes()).is_err(), "{bad}");
        }
        let id = Identity::from_secret(&[7u8; 32]).unwrap();
        let big = Template {
            kind: 1,
            content: "x".repeat(MAX_CONTENT + 1),
            tags: vec![],
            created_at: None,
        };
        assert!(id.sign(big, &[]).is_err());
        let t = Template {
            kind: 1,
            content: String::new(),
            tags: vec![],
            created_at: None,
        };
        assert!(
            id.sign(t, &[(5000, 5999)])
                .unwrap_err()
                .contains("not allowed")
        );
    }
}
