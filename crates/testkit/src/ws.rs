//! A WebSocket echo server for the `/cap/ws` tests: on 127.0.0.1:0, a thread per connection,
//! every text or binary message sent back as it came; `close` after a message `bye`.

use std::net::{SocketAddr, TcpListener};

use tungstenite::Message;

/// Start the server; it lives as long as the test process.
#[allow(clippy::expect_used)]
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                while let Ok(m) = ws.read() {
                    match m {
                        Message::Text(t) if t.as_str() == "bye" => {
                            let _ = ws.close(None);
                            let _ = ws.flush();
                        }
                        Message::Text(_) | Message::Binary(_) if ws.send(m.clone()).is_err() => {
                            return;
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}
