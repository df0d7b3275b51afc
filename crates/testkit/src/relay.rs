//! A minimal Nostr relay (NIP-01) for the `/cap/nostr` tests: on 127.0.0.1:0, a thread per
//! connection. `["EVENT", e]` is checked with the given `verify` (id and signature), stored
//! when it passes, and answered `["OK", id, accepted, message]`; `["REQ", sub, filter…]` gets
//! the stored events whose kind a filter's `kinds` lists (all when no filter has `kinds`),
//! then `["EOSE", sub]`.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tungstenite::Message;

/// The relay's stored events.
pub type Events = Arc<Mutex<Vec<Value>>>;

/// Start a relay; it lives as long as the test process.
#[allow(clippy::expect_used)]
pub fn start(verify: impl Fn(&Value) -> bool + Send + Sync + 'static) -> (SocketAddr, Events) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let events: Events = Arc::default();
    let verify = Arc::new(verify);
    let store = events.clone();
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            let (verify, store) = (verify.clone(), store.clone());
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(m) = ws.read() {
                    let Message::Text(t) = m else { continue };
                    let Ok(Value::Array(a)) = serde_json::from_str::<Value>(t.as_str()) else {
                        let _ = ws.send(Message::text(json!(["NOTICE", "not JSON"]).to_string()));
                        continue;
                    };
                    let reply: Vec<Value> = match a.first().and_then(Value::as_str) {
                        Some("EVENT") => {
                            let e = a.get(1).cloned().unwrap_or(Value::Null);
                            let ok = verify(&e);
                            if ok {
                                store.lock().expect("lock").push(e.clone());
                            }
                            let why = if ok {
                                ""
                            } else {
                                "invalid: bad id or signature"
                            };
                            vec![json!(["OK", e["id"], ok, why])]
                        }
                        Some("REQ") => {
                            let sub = a.get(1).cloned().unwrap_or(Value::Null);
                            let kinds: Vec<u64> = a[2..]
                                .iter()
                                .filter_map(|f| f["kinds"].as_array())
                                .flatten()
                                .filter_map(Value::as_u64)
                                .collect();
                            let mut out: Vec<Value> = store
                                .lock()
                                .expect("lock")
                                .iter()
                                .filter(|e| {
                                    kinds.is_empty()
                                        || e["kind"].as_u64().is_some_and(|k| kinds.contains(&k))
                                })
                                .map(|e| json!(["EVENT", sub, e]))
                                .collect();
                            out.push(json!(["EOSE", sub]));
                            out
                        }
                        _ => vec![json!(["NOTICE", "unknown message"])],
                    };
                    for r in reply {
                        if ws.send(Message::text(r.to_string())).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, events)
}
