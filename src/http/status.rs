//! The status page (`GET /ui/`) and the endpoints behind it.
//!
//! | Method and path | Answer |
//! |---|---|
//! | `GET /ui/` | the page (HTML, script and style embedded in the binary; no token needed, it holds no data) |
//! | `GET /status` | `{"data": {"agent": …, "generation": G, "procs": [row, …]}}`: every process in brief |
//! | `GET /events` | a `text/event-stream` of the table's changes (below) |
//! | `GET /procs/ID/samples` | `{"data": {"samples": [[seconds, rss, cpu], …]}}` |
//!
//! A row is [`Row`](crate::supervisor::status::Row): id, phase, state, pid, argv, start, elapsed, exit code
//! or signal, CPU seconds, peak and current RSS, and each captured fd's
//! length, dropped bytes and whether it is open. Rows are built on the
//! reactor from what it holds, with no `/proc` reads or output copies.
//!
//! ## Events
//!
//! One task (the hub), started by the first subscriber and ended a tick
//! after the last one leaves, follows the agent's events and broadcasts
//! ready-made frames to every subscriber, so five browsers cost the agent
//! what one does:
//!
//! - `snapshot` `{"generation", "agent", "procs": [row…]}`: first, and again
//!   whenever this subscriber fell behind (it replaces everything shown);
//! - `procs` `{"generation", "gone": [id…], "procs": [row…]}`: processes
//!   deleted (apply first: an id deleted and started again is in both) and
//!   rows that changed: started, exited, compressed within [`FLUSH`]; those
//!   not yet ended (queued, opening, running) every [`TICK`] when their
//!   figures moved, without `argv`, which the subscriber has;
//! - `agent` `{…}`: the agent's figures, every [`TICK`] and on a shutdown
//!   state change.
//!
//! Every frame carries the generation of the overview it was made from; a
//! subscriber skips frames older than its snapshot, so nothing goes back in
//! time. One that falls behind by more than [`BACKLOG`] frames drops what is
//! queued and gets a fresh snapshot. A comment line every 15 s keeps idle
//! connections open through proxies.

use super::{App, data, unknown};
use crate::supervisor::Event;
use crate::supervisor::status::{Overview, Select};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// How soon a started, exited or deleted process shows.
pub const FLUSH: Duration = Duration::from_millis(200);

/// How often running processes' rows and the agent's figures are sent.
pub const TICK: Duration = Duration::from_secs(1);

/// How long an idle event stream goes without a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Frames the hub may be ahead of a subscriber before it falls behind.
const BACKLOG: usize = 256;

/// The page's files, embedded.
const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// A frame for subscribers: the generation of the overview it was made
/// from, and its `text/event-stream` bytes.
struct Frame {
    generation: u64,
    snapshot: bool,
    bytes: Bytes,
}

/// The broadcast of frames, and whether its task runs.
pub(super) struct Hub {
    tx: broadcast::Sender<Arc<Frame>>,
    running: Mutex<bool>,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            tx: broadcast::channel(BACKLOG).0,
            running: Mutex::new(false),
        }
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A subscription to the frames, starting the task if it is not running.
    fn subscribe(app: &App) -> broadcast::Receiver<Arc<Frame>> {
        let hub = &app.hub;
        let mut running = hub.lock();
        let rx = hub.tx.subscribe();
        if !*running {
            *running = true;
            // Subscribed here, before the caller asks for its snapshot: the
            // reactor takes commands in order, so no event falls between.
            let events = app.handle.subscribe();
            tokio::spawn(run(app.clone(), events));
        }
        rx
    }

    fn send(&self, frame: Frame) {
        let _ = self.tx.send(Arc::new(frame));
    }
}

/// `event: NAME` with `data` as JSON.
fn frame(name: &str, data: &impl serde::Serialize) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // JSON has no raw newlines, so the data is one line.
    if serde_json::to_writer(&mut out, data).is_err() {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Clears the hub's running flag if its task ends by a panic, so that the
/// next subscriber starts a new one.
struct Guard<'a> {
    hub: &'a Hub,
    armed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.hub.lock() = false;
        }
    }
}

/// The hub's task: turns the agent's events into frames until no one
/// subscribes.
async fn run(app: App, mut events: crate::supervisor::Subscription) {
    let handle = app.handle.clone();
    let mut guard = Guard {
        hub: &app.hub,
        armed: true,
    };
    // What each process's row showed when last sent (see `Row::fingerprint`).
    let mut sent = std::collections::HashMap::<String, u64>::new();
    let mut dirty = BTreeSet::new();
    let mut gone = Vec::new();
    let mut resync = false;
    let mut flush = tokio::time::interval(FLUSH);
    let mut tick = tokio::time::interval(TICK);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            e = events.event() => match e {
                None => break,
                Some(Event::Started(id) | Event::Exited(id) | Event::Compressed(id, _)) => {
                    dirty.insert(id);
                }
                Some(Event::Deleted(id)) => {
                    // A later start of the same id is dirty again, after
                    // this: the frame's `gone` goes before its rows.
                    dirty.remove(&id);
                    sent.remove(&id);
                    gone.push(id);
                }
                Some(Event::Shutdown(_)) => {
                    let o = handle.overview(Select::None).await;
                    app.hub.send(agent_frame(&app, &o));
                }
                Some(Event::Missed(_)) => resync = true,
            },
            _ = flush.tick() => {
                if resync {
                    resync = false;
                    dirty.clear();
                    gone.clear();
                    let o = handle.overview(Select::All).await;
                    sent = o.rows.iter().map(|r| (r.id.clone(), r.fingerprint())).collect();
                    app.hub.send(snapshot(&app, &o));
                    continue;
                }
                if !dirty.is_empty() || !gone.is_empty() {
                    let ids = std::mem::take(&mut dirty).into_iter().collect();
                    let o = handle.overview(Select::Ids(ids)).await;
                    for r in &o.rows {
                        sent.insert(r.id.clone(), r.fingerprint());
                    }
                    app.hub.send(rows(&o, true, &std::mem::take(&mut gone)));
                }
            }
            _ = tick.tick() => {
                {
                    let mut running = app.hub.lock();
                    if app.hub.tx.receiver_count() == 0 {
                        *running = false;
                        guard.armed = false;
                        return;
                    }
                }
                let mut o = handle.overview(Select::Live).await;
                o.rows.retain(|r| {
                    let f = r.fingerprint();
                    sent.insert(r.id.clone(), f) != Some(f)
                });
                if !o.rows.is_empty() {
                    app.hub.send(rows(&o, false, &[]));
                }
                app.hub.send(agent_frame(&app, &o));
            }
        }
    }
}

/// An `agent` frame, of the overview's generation.
fn agent_frame(app: &App, o: &Overview) -> Frame {
    Frame {
        generation: o.generation,
        snapshot: false,
        bytes: frame("agent", &agent(app, o)),
    }
}

/// A `procs` frame: the ids deleted since the last one (`gone`, to apply
/// first) and an overview's rows, with or without their argv.
fn rows(o: &Overview, argv: bool, gone: &[String]) -> Frame {
    let mut v = serde_json::json!({"generation": o.generation, "gone": gone, "procs": o.rows});
    if !argv {
        for r in v["procs"].as_array_mut().into_iter().flatten() {
            if let Some(m) = r.as_object_mut() {
                m.remove("argv");
            }
        }
    }
    Frame {
        generation: o.generation,
        snapshot: false,
        bytes: frame("procs", &v),
    }
}

/// The `snapshot` frame of an overview of every process.
fn snapshot(app: &App, o: &Overview) -> Frame {
    Frame {
        generation: o.generation,
        snapshot: true,
        bytes: frame("snapshot", &whole(app, o)),
    }
}

/// Everything: the agent, the generation and every row.
fn whole(app: &App, o: &Overview) -> serde_json::Value {
    serde_json::json!({
        "agent": agent(app, o),
        "generation": o.generation,
        "procs": o.rows,
    })
}

/// The agent's figures, as `GET /agent` gives them, from an overview.
pub(super) fn agent(app: &App, o: &Overview) -> serde_json::Value {
    let c = &o.counts;
    let since_epoch = app
        .started
        .0
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let mut states = serde_json::Map::new();
    for (name, n) in [
        ("running", c.queued + c.opening + c.running),
        ("terminated", c.terminated),
        ("error", c.error),
    ] {
        if n > 0 {
            states.insert(name.into(), n.into());
        }
    }
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "proc": &*app.info,
        "started": crate::metrics::format_rfc3339(since_epoch),
        "uptime": app.started.1.elapsed().as_secs_f64(),
        "shutdown_state": o.shutdown_state,
        "procs": {"total": c.total, "running": c.running, "states": states},
        "counts": c,
        "output": {"held": o.output_held, "limit": o.output_limit},
        "backend": o.backend,
        "tls": app.tls,
        "token": app.token.is_some(),
        "connection": app.link.as_ref().map(crate::proto::ws::Link::get),
    })
}

/// `GET /status`.
pub(super) async fn get_status(State(app): State<App>) -> Response {
    let o = app.handle.overview(Select::All).await;
    data(whole(&app, &o))
}

/// `GET /procs/ID/samples`.
pub(super) async fn get_samples(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.handle.history(&id).await {
        Some(samples) => data(serde_json::json!({ "samples": samples })),
        None => unknown(&id),
    }
}

/// `GET /events`: see the module notes.
pub(super) async fn get_events(State(app): State<App>) -> Response {
    let rx = Hub::subscribe(&app);
    let stream = futures_util::stream::unfold((app, rx, 0u64, true), |state| async move {
        let (app, mut rx, mut seen, first) = state;
        if first {
            let o = app.handle.overview(Select::All).await;
            let f = snapshot(&app, &o);
            return Some((
                Ok::<_, std::io::Error>(f.bytes),
                (app, rx, f.generation, false),
            ));
        }
        loop {
            match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
                Err(_) => {
                    return Some((
                        Ok(Bytes::from_static(b": keep-alive\n\n")),
                        (app, rx, seen, false),
                    ));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    // Instead of the frames still queued: a fresh start.
                    rx = rx.resubscribe();
                    let o = app.handle.overview(Select::All).await;
                    let f = snapshot(&app, &o);
                    return Some((Ok(f.bytes), (app, rx, f.generation, false)));
                }
                Ok(Ok(f)) if f.generation <= seen => continue,
                Ok(Ok(f)) => {
                    if f.snapshot {
                        seen = f.generation;
                    }
                    return Some((Ok(f.bytes.clone()), (app, rx, seen, false)));
                }
            }
        }
    });
    let mut r = Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Answers `/ui/…` with an embedded file.
pub(super) async fn get_asset(path: Option<Path<String>>, headers: HeaderMap) -> Response {
    let name = path.map_or_else(String::new, |Path(p)| p);
    let (body, kind) = match name.as_str() {
        "" | "index.html" => (INDEX, "text/html; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return super::error(StatusCode::NOT_FOUND, Some(format!("no page /ui/{name}"))),
    };
    let tag = etag(body);
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == tag.as_bytes())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    // Everything the page uses comes from here; nothing runs inline, so
    // text from a process (ids, argv, output) can never become script.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; \
             base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// `GET /ui`: to `/ui/`, where the page's relative links resolve.
pub(super) async fn redirect_ui() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static("/ui/"))],
    )
        .into_response()
}

/// An entity tag for a file: FNV-1a of its bytes.
fn etag(body: &str) -> String {
    let h = body.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{h:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_one_event_each() {
        let f = frame("procs", &serde_json::json!({"a": "two\nlines"}));
        assert_eq!(&f[..], b"event: procs\ndata: {\"a\":\"two\\nlines\"}\n\n");
    }

    #[test]
    fn etags_change_with_the_file() {
        assert_ne!(etag("a"), etag("b"));
        assert_eq!(etag(INDEX), etag(INDEX));
    }
}
