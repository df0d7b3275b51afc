//! A task's events as a JSON array, and the live feeds: server-sent events (one task's, or
//! every task's) and a WebSocket. The feeds read through the engine
//! ([`Engine::events_since`], [`Engine::task_state`]) and wake on its changes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use warren_protocol::api::{ErrorBody, EventView};
use warren_runtime::action::{Answer, Query};
use warren_runtime::engine::Engine;

use super::{ApiError, ApiResult, QueryOf, Shared, TaskId, TaskPath, ask};

/// A WebSocket with nothing to send pings its client this often: the idle timeout of the
/// listener does not close a quiet stream, and a client that vanished is noticed.
pub const PING_EVERY: Duration = Duration::from_secs(20);

/// Query of event endpoints.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only events after this id (default 0: from the start).
    pub after: Option<i64>,
}

/// The header a reconnecting SSE client sends (for the document; the stream handlers read it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct ResumeHeader {
    /// Resume after this event id (beats `after`).
    #[param(rename = "Last-Event-ID", nullable = false)]
    last_event_id: Option<i64>,
}

/// A task's events after an id, as a JSON array (at most 1000).
#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "events", params(TaskPath, EventsQuery),
    responses((status = 200, body = Vec<EventView>), (status = 404, body = ErrorBody, description = "no such task")))]
pub(super) async fn task_events(
    State(d): Shared,
    TaskId(id): TaskId,
    QueryOf(q): QueryOf<EventsQuery>,
) -> ApiResult<axum::Json<Vec<EventView>>> {
    let op = Query::Events {
        id,
        after: q.after.unwrap_or(0),
    };
    let ev = ask(&d, op, |a| match a {
        Answer::Events(v) => Some(v),
        _ => None,
    })
    .await?;
    Ok(axum::Json(ev))
}

/// Where a stream starts: `Last-Event-ID` (a reconnecting SSE client) beats `after`.
fn start_after(headers: &HeaderMap, q: &EventsQuery) -> ApiResult<i64> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::invalid("Last-Event-ID: not an event id")),
        None => Ok(q.after.unwrap_or(0)),
    }
}

/// Events in order from `after`; for a task, ends once the task is over and every event was
/// sent; for all tasks, never ends.
fn event_feed(
    d: Arc<Engine>,
    task: Option<String>,
    after: i64,
) -> impl Stream<Item = EventView> + Send {
    struct Feed {
        d: Arc<Engine>,
        task: Option<String>,
        after: i64,
        buf: VecDeque<EventView>,
        changes: tokio::sync::watch::Receiver<u64>,
        last_look: bool,
    }
    let changes = d.changes();
    let feed = Feed {
        d,
        task,
        after,
        buf: VecDeque::new(),
        changes,
        last_look: false,
    };
    futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.buf.pop_front() {
                f.after = e.id;
                return Some((e, f));
            }
            if f.last_look {
                return None;
            }
            f.changes.borrow_and_update();
            // A failed read is tried again at the next change or poll.
            let batch =
                f.d.events_since(f.task.as_deref(), f.after, 256)
                    .unwrap_or_default();
            if !batch.is_empty() {
                f.buf.extend(batch);
                continue;
            }
            if let Some(t) = &f.task {
                match f.d.task_state(t) {
                    Ok(s) if s.is_terminal() => {
                        // One more look: events written with the final state.
                        f.last_look = true;
                        let batch =
                            f.d.events_since(f.task.as_deref(), f.after, 256)
                                .unwrap_or_default();
                        f.buf.extend(batch);
                        continue;
                    }
                    Err(_) => return None,
                    Ok(_) => {}
                }
            }
            // Woken by this daemon's writes; polled for writers in other processes.
            let _ = tokio::time::timeout(Duration::from_millis(500), f.changes.changed()).await;
        }
    })
}

fn sse(
    feed: impl Stream<Item = EventView> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    use futures_util::StreamExt;
    let events = feed.map(|e| {
        let event = Event::default().id(e.id.to_string()).event(e.kind.as_str());
        let data = serde_json::to_string(&e).unwrap_or_default();
        Ok(event.data(data))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// A task's events as server-sent events, from `after` or `Last-Event-ID`; the stream ends when
/// the task is over.
#[utoipa::path(get, path = "/v1/tasks/{id}/events/stream", tag = "events", params(TaskPath, EventsQuery, ResumeHeader),
    responses((status = 200, description = "SSE: `id` is the event id, `event` its kind, `data` an EventView", content_type = "text/event-stream", body = String),
        (status = 404, body = ErrorBody, description = "no such task")))]
pub(super) async fn task_event_stream(
    State(d): Shared,
    TaskId(id): TaskId,
    QueryOf(q): QueryOf<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    d.task_state(&id)?;
    let after = start_after(&headers, &q)?;
    Ok(sse(event_feed(d, Some(id), after)).into_response())
}

/// Every task's events as server-sent events (never ends).
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(EventsQuery, ResumeHeader),
    responses((status = 200, description = "SSE of EventView", content_type = "text/event-stream", body = String)))]
pub(super) async fn all_event_stream(
    State(d): Shared,
    QueryOf(q): QueryOf<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let after = start_after(&headers, &q)?;
    Ok(sse(event_feed(d, None, after)).into_response())
}

/// A task's events over a WebSocket: one text message (an EventView) per event; the server
/// closes when the task is over, answers a close frame, and pings a quiet client.
#[utoipa::path(get, path = "/v1/tasks/{id}/events/ws", tag = "events", params(TaskPath, EventsQuery),
    responses((status = 101, description = "WebSocket upgrade"),
        (status = 400, body = ErrorBody, description = "not an upgrade request, or a malformed id or query"),
        (status = 404, body = ErrorBody, description = "no such task")))]
pub(super) async fn task_event_ws(
    State(d): Shared,
    TaskId(id): TaskId,
    QueryOf(q): QueryOf<EventsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    d.task_state(&id)?;
    let ws = ws.map_err(|e| {
        ApiError::invalid(format!(
            "this endpoint is a WebSocket: send an upgrade request ({})",
            e.body_text()
        ))
    })?;
    let after = q.after.unwrap_or(0);
    Ok(ws.on_upgrade(move |socket| pump_ws(socket, event_feed(d, Some(id), after))))
}

/// Send the feed; stop as soon as the client goes away (EOF, an error, or its close frame,
/// which is answered) instead of polling for a reader that is gone.
async fn pump_ws(socket: WebSocket, feed: impl Stream<Item = EventView> + Send) {
    use futures_util::{SinkExt, StreamExt};
    let (mut tx, mut rx) = socket.split();
    let mut feed = std::pin::pin!(feed);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            e = feed.next() => {
                let Some(e) = e else { break };
                let text = serde_json::to_string(&e).unwrap_or_default();
                if tx.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
                ping.reset();
            }
            m = rx.next() => match m {
                // The client closes: answer its close frame (the library queued the answer on
                // reading it; closing the sink writes it out), and stop.
                Some(Ok(Message::Close(_))) => {
                    let _ = tx.close().await;
                    return;
                }
                None | Some(Err(_)) => return,
                // Pings are answered by the library; other messages are ignored.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if tx.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
    // The feed is over: close, and give the client a moment to answer before the connection
    // goes.
    if tx.send(Message::Close(None)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = rx.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}
