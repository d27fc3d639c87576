//! Procstar's HTTP API (`--serve`), on the same runtime as the WebSocket
//! agent.
//!
//! | Method and path | Answer |
//! |---|---|
//! | `GET /procs` | `{"data": {"procs": {id: result}}}` |
//! | `POST /procs` | body `{"specs": …}` with `Content-Type: application/json`; `{"data": {}}` |
//! | `GET /procs/ID` | `{"data": {"procs": {ID: result}}}`, or 404 |
//! | `DELETE /procs/ID` | `{"data": {}}`; 400 "process running: ID"; 404 |
//! | `POST /procs/ID/signals/SIG` | SIG a name (`SIGTERM`, `TERM`) or number; `{"data": {}}`; 400 "no process" once it has exited; 404 |
//! | `GET /procs/ID/output/FD/data` | the capture's bytes (`text/plain; charset=utf-8` for a `utf-8` capture, else `application/octet-stream`); 400 "no fd: N" |
//!
//! Errors are `{"errors": {"status": "404 Not Found", "detail": …}}`, as
//! Procstar writes them; other paths are 404 and other methods 405.
//!
//! Beyond Procstar: output ranges, by `?start=&stop=` (`stop` exclusive) or a
//! `Range: bytes=A-B`, `bytes=A-` or `bytes=-N` header, answered 206 with
//! `Content-Range`; a range past the end is clamped (a `Range` that starts
//! past it is 416). Bytes a head/tail capture dropped are left out, and the
//! `X-Chaperone-Dropped: START-STOP` header says which. Bodies are streamed
//! in [`CHUNK`]-byte reads, so a slow client reading a huge capture holds one
//! chunk. A bearer token (`--serve-token` or `CHAPERONE_SERVE_TOKEN`) is
//! compared in constant time; without it every request is 401. `GET /agent`
//! describes the agent; `POST /shutdown?policy=terminate|kill|idle` begins
//! one of Procstar's shutdowns.

use crate::spec;
use crate::supervisor::{FdDataError, Handle, ProcError, StartError};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes read from a capture per step of a streamed body.
pub const CHUNK: u64 = 1 << 20;
/// The largest request body taken (a `POST /procs`).
pub const MAX_BODY: usize = 64 << 20;

/// What the server shares between requests.
#[derive(Clone)]
struct App {
    handle: Handle,
    token: Option<Arc<[u8]>>,
    started: (std::time::SystemTime, std::time::Instant),
}

/// The API's router over `handle`; with `token`, every request must carry
/// `Authorization: Bearer TOKEN`.
pub fn router(handle: Handle, token: Option<String>) -> Router {
    let app = App {
        handle,
        token: token.map(|t| Arc::from(t.into_bytes())),
        started: (std::time::SystemTime::now(), std::time::Instant::now()),
    };
    Router::new()
        .route("/procs", get(get_procs).post(post_procs))
        .route("/procs/{id}", get(get_proc).delete(delete_proc))
        .route("/procs/{id}/signals/{sig}", post(signal_proc))
        .route("/procs/{id}/output/{fd}/data", get(get_output))
        .route("/agent", get(get_agent))
        .route("/shutdown", post(post_shutdown))
        .fallback(|| async { error(StatusCode::NOT_FOUND, None) })
        .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, None) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

/// Serves the API on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handle,
    token: Option<String>,
) -> std::io::Result<()> {
    axum::serve(listener, router(handle, token)).await
}

/// Compares two byte strings in time that depends only on their lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn authorize(State(app): State<App>, req: Request, next: Next) -> Response {
    if let Some(token) = &app.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if !given.is_some_and(|g| same(g, token)) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                Some("a bearer token is required (Authorization: Bearer TOKEN)".into()),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

/// `{"data": …}`, 200.
fn data(d: impl Serialize) -> Response {
    #[derive(Serialize)]
    struct Data<T> {
        data: T,
    }
    json(StatusCode::OK, &Data { data: d })
}

fn json(status: StatusCode, v: &impl Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(format!("cannot encode the answer: {e}")),
        ),
    }
}

/// `{"errors": {"status": "404 Not Found", "detail": …}}`.
fn error(status: StatusCode, detail: Option<String>) -> Response {
    let body = serde_json::json!({"errors": {
        "status": format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
        "detail": detail,
    }});
    let mut r = json(StatusCode::OK, &body);
    *r.status_mut() = status;
    r
}

fn bad(detail: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, Some(detail.into()))
}

fn unknown(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        Some(format!("unknown proc id: {id}")),
    )
}

/// `GET /agent`: who and how the agent is.
async fn get_agent(State(app): State<App>) -> Response {
    let results = app.handle.results().await;
    let running = results
        .values()
        .filter(|r| r.pid.is_some() && r.status.is_none())
        .count();
    let since_epoch = app
        .started
        .0
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    data(serde_json::json!({ "agent": {
        "version": env!("CARGO_PKG_VERSION"),
        "proc": crate::proto::ProcInfo::current(),
        "started": crate::metrics::format_rfc3339(since_epoch),
        "uptime": app.started.1.elapsed().as_secs_f64(),
        "shutdown_state": app.handle.shutdown_state().await,
        "procs": {"total": results.len(), "running": running},
    }}))
}

/// `POST /shutdown?policy=terminate|kill|idle` (terminate: `&grace=SECONDS`,
/// default 60): begins shutting down; answers the state.
async fn post_shutdown(
    State(app): State<App>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    use crate::supervisor::ShutdownPolicy;
    let grace = match query.get("grace").map(|g| g.parse::<f64>()) {
        None => ShutdownPolicy::TERMINATE_GRACE,
        Some(Ok(g)) if (0.0..1e9).contains(&g) => std::time::Duration::from_secs_f64(g),
        Some(_) => {
            return bad(format!(
                "grace={:?} is not a number of seconds",
                query["grace"]
            ));
        }
    };
    let policy = match query.get("policy").map(String::as_str) {
        Some("terminate") => ShutdownPolicy::Terminate { grace },
        Some("kill") => ShutdownPolicy::Kill,
        Some("idle") => ShutdownPolicy::Idle,
        Some(p) => return bad(format!("unknown policy {p:?}: terminate, kill or idle")),
        None => return bad("policy= is required: terminate, kill or idle"),
    };
    app.handle.shutdown(policy).await;
    data(serde_json::json!({ "shutdown_state": app.handle.shutdown_state().await }))
}

async fn get_procs(State(app): State<App>) -> Response {
    data(serde_json::json!({ "procs": app.handle.results().await }))
}

async fn post_procs(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    // Procstar's rule, exactly: anything else is "body not JSON".
    if headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes) != Some(b"application/json") {
        return bad("body not JSON");
    }
    let input = match spec::parse_input(&body) {
        Ok(i) => i,
        Err(e) => return bad(e.to_string()),
    };
    match app.handle.start(input).await {
        Ok(_) => data(serde_json::json!({})),
        Err(e @ StartError::ShutDown) => {
            error(StatusCode::SERVICE_UNAVAILABLE, Some(e.to_string()))
        }
        Err(e) => bad(e.to_string()),
    }
}

async fn get_proc(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.handle.result(&id).await {
        Some(res) => data(serde_json::json!({ "procs": { id: res } })),
        None => unknown(&id),
    }
}

fn proc_error(id: &str, e: ProcError) -> Response {
    match e {
        ProcError::Unknown(_) => unknown(id),
        e @ ProcError::ShutDown => error(StatusCode::SERVICE_UNAVAILABLE, Some(e.to_string())),
        e @ ProcError::Signal(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(format!(
                "{e}: {}",
                std::error::Error::source(&e).map_or_else(String::new, |s| s.to_string())
            )),
        ),
        e => bad(e.to_string()),
    }
}

async fn delete_proc(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.handle.delete(&id).await {
        Ok(()) => data(serde_json::json!({})),
        Err(e) => proc_error(&id, e),
    }
}

async fn signal_proc(State(app): State<App>, Path((id, sig)): Path<(String, String)>) -> Response {
    let Some(signum) = crate::signal::parse_signal(&sig) else {
        return bad(format!("unknown signal: {sig}"));
    };
    match app.handle.signal(&id, signum).await {
        Ok(()) => data(serde_json::json!({})),
        Err(e) => proc_error(&id, e),
    }
}

/// The byte range a request asks for: `[start, stop)`, `stop` `None` for the
/// end, and whether it came from a `Range` header (then answered 206).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// First byte.
    pub start: Want,
    /// End (exclusive); `None`: to the end.
    pub stop: Option<u64>,
    /// Asked for by a `Range` header.
    pub header: bool,
}

/// Where a range starts: an offset, or the last `n` bytes (`bytes=-n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// From this offset.
    At(u64),
    /// The last this many bytes.
    Last(u64),
}

/// Parses `?start=&stop=` and a `Range` header (which wins when both are
/// given); the error names what is wrong.
pub fn parse_range(
    query: &HashMap<String, String>,
    range: Option<&[u8]>,
) -> Result<Wanted, String> {
    if let Some(r) = range {
        let r = std::str::from_utf8(r).map_err(|_| "Range header is not text".to_string())?;
        let spec = r.trim().strip_prefix("bytes=").ok_or_else(|| {
            format!("Range {r:?}: only bytes=A-B, bytes=A- and bytes=-N are served")
        })?;
        if spec.contains(',') {
            return Err(format!("Range {r:?}: one range at a time"));
        }
        let (a, b) = spec
            .split_once('-')
            .ok_or_else(|| format!("Range {r:?}: expected bytes=A-B"))?;
        let num = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("Range {r:?}: {s:?} is not a byte offset"))
        };
        return match (a.trim().is_empty(), b.trim().is_empty()) {
            (true, true) => Err(format!("Range {r:?}: no offsets")),
            (true, false) => Ok(Wanted {
                start: Want::Last(num(b)?),
                stop: None,
                header: true,
            }),
            (false, true) => Ok(Wanted {
                start: Want::At(num(a)?),
                stop: None,
                header: true,
            }),
            (false, false) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    return Err(format!("Range {r:?}: the last byte is before the first"));
                }
                Ok(Wanted {
                    start: Want::At(a),
                    stop: Some(b.saturating_add(1)),
                    header: true,
                })
            }
        };
    }
    let num = |k: &str| -> Result<Option<u64>, String> {
        query
            .get(k)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{k}={v:?} is not a byte offset"))
            })
            .transpose()
    };
    let (start, stop) = (num("start")?.unwrap_or(0), num("stop")?);
    if let Some(s) = stop.filter(|s| *s < start) {
        return Err(format!("start={start} is after stop={s}"));
    }
    Ok(Wanted {
        start: Want::At(start),
        stop,
        header: false,
    })
}

async fn get_output(
    State(app): State<App>,
    Path((id, fd)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let want = match parse_range(
        &query,
        headers.get(header::RANGE).map(HeaderValue::as_bytes),
    ) {
        Ok(w) => w,
        Err(e) => return bad(e),
    };
    // The length and encoding first (an empty read), for the headers.
    let probe = match app.handle.fd_data(&id, &fd, 0, Some(0)).await {
        Ok(d) => d,
        Err(FdDataError::Unknown(_)) => return unknown(&id),
        Err(e @ FdDataError::NoFd(_)) => return bad(e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, Some(e.to_string())),
    };
    let length = probe.length;
    let start = match want.start {
        Want::At(a) => a,
        Want::Last(n) => length.saturating_sub(n),
    };
    if want.header && start >= length && !(start == 0 && length == 0) {
        let mut r = error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            Some(format!(
                "the capture has {length} bytes; the range starts at {start}"
            )),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        return r;
    }
    let start = start.min(length);
    let stop = want.stop.unwrap_or(length).clamp(start, length);
    let dropped = dropped_in(&app.handle, &id, &fd, start, stop).await;
    let held = stop - start - dropped.as_ref().map_or(0, |d| d.end - d.start);
    let content_type = if probe.encoding == spec::Encoding::Utf8 {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    let body = Body::from_stream(chunks(app.handle.clone(), id, fd, start, stop));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&held.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Some(d) = &dropped {
        if let Ok(v) = HeaderValue::from_str(&format!("{}-{}", d.start, d.end)) {
            h.insert("x-chaperone-dropped", v);
        }
    }
    if want.header {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let range = if stop > start {
            format!("bytes {start}-{}/{length}", stop - 1)
        } else {
            format!("bytes */{length}")
        };
        if let Ok(v) = HeaderValue::from_str(&range) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

/// The part of `[start, stop)` a head/tail capture dropped, if any (from
/// the result, which says what the capture dropped).
async fn dropped_in(
    handle: &Handle,
    id: &str,
    fd: &str,
    start: u64,
    stop: u64,
) -> Option<std::ops::Range<u64>> {
    let name = spec::parse_fd_name(fd).map(spec::fd_name).ok()?;
    let res = handle.result(id).await?;
    let d = res.fds.get(&name)?.as_ref()?.ext()?.dropped.as_ref()?;
    let (lo, hi) = (d.start.max(start), d.stop.min(stop));
    (lo < hi).then_some(lo..hi)
}

/// The held bytes of `[start, stop)`, read `CHUNK` at a time.
fn chunks(
    handle: Handle,
    id: String,
    fd: String,
    start: u64,
    stop: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(start, move |at| {
        let (handle, id, fd) = (handle.clone(), id.clone(), fd.clone());
        async move {
            if at >= stop {
                return None;
            }
            let end = stop.min(at.saturating_add(CHUNK));
            match handle.fd_data(&id, &fd, at, Some(end)).await {
                Ok(d) => {
                    // Past a dropped middle, go on at its end.
                    let next = d.missing.as_ref().map_or(end, |m| m.end.max(end));
                    Some((Ok(d.data), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), stop)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ranges_parse_from_query_and_header() {
        let at = |a, b, header| Wanted {
            start: Want::At(a),
            stop: b,
            header,
        };
        assert_eq!(parse_range(&q(&[]), None), Ok(at(0, None, false)));
        assert_eq!(
            parse_range(&q(&[("start", "5"), ("stop", "9")]), None),
            Ok(at(5, Some(9), false))
        );
        assert_eq!(
            parse_range(&q(&[]), Some(b"bytes=2-4")),
            Ok(at(2, Some(5), true))
        );
        assert_eq!(
            parse_range(&q(&[]), Some(b"bytes=7-")),
            Ok(at(7, None, true))
        );
        assert_eq!(
            parse_range(&q(&[]), Some(b"bytes=-3")),
            Ok(Wanted {
                start: Want::Last(3),
                stop: None,
                header: true
            })
        );
        // The header wins over the query.
        assert_eq!(
            parse_range(&q(&[("start", "1")]), Some(b"bytes=2-2")),
            Ok(at(2, Some(3), true))
        );
    }

    #[test]
    fn bad_ranges_say_what_is_wrong() {
        let e = |q_: &[(&str, &str)], h: Option<&[u8]>| parse_range(&q(q_), h).unwrap_err();
        assert_eq!(
            e(&[("start", "x")], None),
            "start=\"x\" is not a byte offset"
        );
        assert_eq!(
            e(&[("start", "9"), ("stop", "3")], None),
            "start=9 is after stop=3"
        );
        assert!(e(&[], Some(b"items=1-2")).contains("only bytes="));
        assert!(e(&[], Some(b"bytes=1-2,4-5")).contains("one range at a time"));
        assert!(e(&[], Some(b"bytes=5-2")).contains("before the first"));
        assert!(e(&[], Some(b"bytes=-")).contains("no offsets"));
        assert!(e(&[], Some(b"bytes=a-2")).contains("not a byte offset"));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
