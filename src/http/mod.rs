//! Procstar's HTTP API (`--serve`), on the same runtime as the WebSocket
//! agent.
//!
//! | Method and path | Answer |
//! |---|---|
//! | `GET /procs` | `{"data": {"procs": {id: result}}}` |
//! | `POST /procs` | body `{"specs": …}` with `Content-Type: application/json`; `{"data": {}}` |
//! | `GET /procs/ID` | `{"data": {"procs": {ID: result}}}`, or 404 |
//! | `DELETE /procs/ID` | `{"data": {}}`; 400 "process running: ID"; 404. A download of its output still in flight is cut |
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
//! `X-Chaperone-Dropped: START-STOP` header says which (a `Range` gets the
//! first part held in one piece, or 416 if none is). Bodies are streamed
//! in [`CHUNK`]-byte reads, so a slow client reading a huge capture holds one
//! chunk. A bearer token (`--serve-token` or `CHAPERONE_SERVE_TOKEN`) is
//! compared in constant time (the scheme's name in any case); without it
//! every request is 401, except a `GET` of the status page's own files
//! under `/ui`. `GET /agent`
//! describes the agent; `POST /shutdown?policy=terminate|kill|idle` begins
//! one of Procstar's shutdowns. A client has [`HEADER_TIMEOUT`] to send a
//! request's head and [`BODY_TIMEOUT`] its body; answers have no limit.

use crate::spec;
use crate::supervisor::{Handle, ProcError, StartError};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

mod output;
mod status;
pub use output::{
    BodyEncoding, CHUNK, MAX_WAIT, MIN_CHUNK, OutputQuery, STREAM_BUDGET, Want, Wanted,
    parse_output_query, parse_range,
};
pub use status::{FLUSH, TICK};

/// The largest request body taken (a `POST /procs`).
pub const MAX_BODY: usize = 64 << 20;

/// How the API is served.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// With a token, every request must carry `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// Serve over TLS (see [`server_tls`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The WebSocket agent's connection, for `GET /agent`.
    pub link: Option<crate::proto::ws::Link>,
}

/// What the server shares between requests.
#[derive(Clone)]
struct App {
    handle: Handle,
    token: Option<Arc<[u8]>>,
    link: Option<crate::proto::ws::Link>,
    tls: bool,
    /// Bodies streaming now (see [`output::STREAM_BUDGET`]).
    streams: Arc<std::sync::atomic::AtomicUsize>,
    started: (std::time::SystemTime, std::time::Instant),
    /// The status page's event broadcast.
    hub: Arc<status::Hub>,
    /// Who the agent is (read once: the user and group names are NSS
    /// lookups, not for every second's `agent` frame).
    info: Arc<serde_json::Value>,
    /// How long a request body may take to arrive (see [`BODY_TIMEOUT`]).
    body_timeout: std::time::Duration,
}

/// The API's router over `handle`.
pub fn router(handle: Handle, options: &Options) -> Router {
    router_with(handle, options, Limits::from_env())
}

/// [`router`], with the time limits [`serve`] read (once, so a malformed
/// variable is warned of once).
fn router_with(handle: Handle, options: &Options, limits: Limits) -> Router {
    let app = App {
        handle,
        token: options
            .token
            .as_ref()
            .map(|t| Arc::from(t.as_bytes().to_vec())),
        link: options.link.clone(),
        tls: options.tls.is_some(),
        streams: Arc::default(),
        started: (std::time::SystemTime::now(), std::time::Instant::now()),
        hub: Arc::default(),
        info: Arc::new(serde_json::to_value(crate::proto::ProcInfo::current()).unwrap_or_default()),
        body_timeout: limits.body,
    };
    Router::new()
        .route("/procs", get(get_procs).post(post_procs))
        .route("/procs/{id}", get(get_proc).delete(delete_proc))
        .route("/procs/{id}/signals/{sig}", post(signal_proc))
        .route("/procs/{id}/output/{fd}/data", get(output::get_output))
        .route("/agent", get(get_agent))
        .route("/shutdown", post(post_shutdown))
        .route("/status", get(status::get_status))
        .route("/events", get(status::get_events))
        .route("/procs/{id}/samples", get(status::get_samples))
        .route("/ui", get(status::redirect_ui))
        .route("/ui/", get(status::get_asset))
        .route("/ui/{file}", get(status::get_asset))
        .fallback(|| async { error(StatusCode::NOT_FOUND, None) })
        .method_not_allowed_fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, None) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .layer(middleware::map_response(json_errors))
        .with_state(app)
}

/// Gives an error the framework answered itself (a body past [`MAX_BODY`],
/// a path that is not UTF-8 …) in plain text the contract's JSON shape,
/// `{"errors": {"status", "detail"}}`, with its text as the detail.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return res;
    }
    let (parts, body) = res.into_parts();
    // The framework's texts are a line; a longer body is not one of them.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    let mut r = error(status, (!detail.is_empty()).then_some(detail));
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            r.headers_mut().insert(name, value.clone());
        }
    }
    r
}

/// Serves the API on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handle,
    options: Options,
) -> std::io::Result<()> {
    let limits = Limits::from_env();
    let app = router_with(handle, &options, limits);
    serve_connections(listener, app, options.tls, limits).await
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a client has to send a request's line and headers, from when
/// the connection is ready for one (accepted, or done with its last answer):
/// a client that sends half a request and stalls holds an fd no longer.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a request body (a `POST /procs`) may take to arrive, once its
/// headers have; a body slower than that is 408.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The time limits on what clients send, [`HEADER_TIMEOUT`] and
/// [`BODY_TIMEOUT`] unless `CHAPERONE_SERVE_HEADER_TIMEOUT` or
/// `CHAPERONE_SERVE_BODY_TIMEOUT` (seconds) say otherwise. Neither limits an
/// answer: a `follow=true` stream, a `?wait=` long poll or `/events` lasts
/// as long as it needs.
#[derive(Clone, Copy, Debug)]
struct Limits {
    header: std::time::Duration,
    body: std::time::Duration,
}

impl Limits {
    fn from_env() -> Limits {
        let secs = |name: &str, default: std::time::Duration| {
            let Ok(v) = std::env::var(name) else {
                return default;
            };
            match v.trim().parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => {
                    std::time::Duration::from_secs_f64(s)
                }
                _ => {
                    tracing::warn!("{name}={v:?} is not a number of seconds; using {default:?}");
                    default
                }
            }
        };
        Limits {
            header: secs("CHAPERONE_SERVE_HEADER_TIMEOUT", HEADER_TIMEOUT),
            body: secs("CHAPERONE_SERVE_BODY_TIMEOUT", BODY_TIMEOUT),
        }
    }
}

/// The accept loop: each connection (its TLS handshake, with `tls`, and its
/// requests) runs in a task of its own, so a slow client holds up no other,
/// and hyper's header read timeout (which needs a timer) closes one that
/// stalls before its request is whole.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of fds, most likely: the clients being served finish
                // and free some; take no more until then.
                tracing::warn!("accepting an HTTP connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return serve_connection(tcp, app, limits, peer).await;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => serve_connection(s, app, limits, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
async fn serve_connection<I>(io: I, app: Router, limits: Limits, peer: std::net::SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    // The timer runs the header read timeout, which starts whenever the
    // connection waits for a request's head (an idle keep-alive connection
    // too) and stops once the head is read: an answer, however long it
    // streams, is not cut by it.
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
    {
        tracing::debug!(%peer, "HTTP connection: {e}");
    }
}

/// The TLS server configuration from a PEM certificate chain and a PEM
/// private key; the error names the file and what is wrong with it.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("--serve-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--serve-cert {}: no certificate in the file",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--serve-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--serve-cert/--serve-key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Compares two byte strings in time that depends only on their lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer TOKEN` value. The scheme's name
/// is case-insensitive (RFC 9110, section 11.1), and one or more spaces
/// may follow it.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"Bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(&rest[start..])
}

async fn authorize(State(app): State<App>, req: Request, next: Next) -> Response {
    // The status page's own files hold no data: they load without the
    // token and ask for it (every data request still needs it).
    let page = req.method() == axum::http::Method::GET
        && (req.uri().path() == "/ui" || req.uri().path().starts_with("/ui/"));
    if let Some(token) = app.token.as_ref().filter(|_| !page) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
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

/// `GET /agent`: who and how the agent is (counted from the table in
/// brief, not from every result).
async fn get_agent(State(app): State<App>) -> Response {
    let o = app
        .handle
        .overview(crate::supervisor::status::Select::None)
        .await;
    data(serde_json::json!({ "agent": status::agent(&app, &o) }))
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

/// `{"procs": …}`, serialized straight from the results (no JSON tree).
#[derive(Serialize)]
struct Procs<T> {
    procs: T,
}

async fn get_procs(State(app): State<App>) -> Response {
    data(Procs {
        procs: app.handle.results().await,
    })
}

async fn post_procs(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    // Procstar's rule, exactly: anything else is "body not JSON".
    if headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes) != Some(b"application/json") {
        return bad("body not JSON");
    }
    // A body that dribbles in holds its connection (an fd) no longer than
    // the limit; the answer then closes the connection, unread.
    let body =
        match tokio::time::timeout(app.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                let too_big = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                return if too_big {
                    error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Some(format!(
                            "length limit exceeded: the body is larger than {MAX_BODY} bytes"
                        )),
                    )
                } else {
                    bad(format!("reading the body: {e}"))
                };
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    Some(format!(
                        "the body took longer than {:?} to arrive",
                        app.body_timeout
                    )),
                );
            }
        };
    crate::sys::mem::note_request(body.len());
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

/// `GET /procs/ID`, and with `?wait=SECONDS`, once the process has ended
/// or the wait is over (a long poll: `client wait` needs no busy loop).
async fn get_proc(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(w) = query.get("wait") {
        let wait = match w.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => {
                std::time::Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64()))
            }
            _ => return bad(format!("wait={w:?} is not a number of seconds")),
        };
        // Ended or not, the result at the end of the wait is the answer.
        let _ = tokio::time::timeout(wait, app.handle.wait(&id)).await;
    }
    match app.handle.result(&id).await {
        Some(res) => data(Procs {
            procs: [(id.as_str(), &res)].into_iter().collect::<HashMap<_, _>>(),
        }),
        None => unknown(&id),
    }
}

fn proc_error(id: &str, e: ProcError) -> Response {
    match e {
        ProcError::Unknown(_) => unknown(id),
        e @ ProcError::ShutDown(_) => error(StatusCode::SERVICE_UNAVAILABLE, Some(e.to_string())),
        // Its text carries the OS error.
        e @ ProcError::Signal(_) => error(StatusCode::INTERNAL_SERVER_ERROR, Some(e.to_string())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
