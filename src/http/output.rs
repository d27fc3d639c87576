//! `GET /procs/ID/output/FD/data`: a capture's bytes, a range of them, in
//! an encoding, now or as they arrive.
//!
//! | Query or header | Meaning |
//! |---|---|
//! | `start=A&stop=B` | bytes `[A, B)` (`stop` exclusive), clamped to the length |
//! | `Range: bytes=A-B`, `bytes=A-`, `bytes=-N` | the same, answered 206 with `Content-Range` (416 when it starts past the end); over a dropped middle, its first part held in one piece (416 if none is) |
//! | `encoding=raw` (default) | the bytes; `text/plain; charset=utf-8` for a `utf-8` capture, else `application/octet-stream` |
//! | `encoding=utf-8` | text, invalid sequences replaced by U+FFFD (`X-Chaperone-Replaced: true` when any were) |
//! | `encoding=base64`, `encoding=base2048` | the bytes so encoded, as text |
//! | `encoding=zstd` | a zstd stream (`application/zstd`): the stored frames of a capture held compressed, else compressed as served |
//! | `Accept-Encoding: zstd` | the same bytes with `Content-Encoding: zstd` (not with `Range`) |
//! | `wait=SECONDS` | when the range starts at or past the end of a capture that may still grow, wait up to SECONDS for bytes there |
//! | `follow=true` | stream the range, then every byte appended, until the capture can grow no more |
//!
//! Every answer says `X-Chaperone-Length` (bytes produced so far) and
//! `X-Chaperone-Open` (whether more may come), so a client can resume from
//! where it stopped. Bytes a head/tail capture dropped are left out and
//! `X-Chaperone-Dropped: START-STOP` says which. Bodies are streamed a step
//! (at most [`CHUNK`]) at a time, and steps shrink as more bodies stream, so
//! all of them together hold about [`STREAM_BUDGET`] bytes.

use super::{App, bad, error, unknown};
use crate::spec;
use crate::supervisor::{FdDataError, Handle, Utf8Carry, incomplete_tail};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The most bytes read from a capture per step of a streamed body.
pub const CHUNK: u64 = 1 << 20;
/// The fewest (unless the range is shorter).
pub const MIN_CHUNK: u64 = 64 << 10;
/// Roughly what all streamed bodies together hold at once: each holds the
/// step being sent and the one being read, and steps shrink as more bodies
/// stream (down to [`MIN_CHUNK`]), so 100 clients each reading a different
/// huge capture cost about this much, not 100 times [`CHUNK`].
pub const STREAM_BUDGET: u64 = 24 << 20;
/// The longest `wait=` taken.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// How long a follower's wait for more bytes lasts before it looks again.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);
/// How often a tempfile capture, which grows unseen, is looked at when
/// waited for.
const TEMPFILE_POLL: Duration = Duration::from_millis(100);
/// The zstd level for bytes compressed as they are served.
const SERVE_LEVEL: i32 = 1;

/// How the body presents the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEncoding {
    /// As they are.
    Raw,
    /// Lossy UTF-8 text.
    Utf8,
    /// base64 text.
    Base64,
    /// base2048 text.
    Base2048,
    /// A zstd stream; `content_encoding`: as `Content-Encoding`, over the
    /// raw representation (from `Accept-Encoding`).
    Zstd {
        /// Asked for by `Accept-Encoding`.
        content_encoding: bool,
    },
}

/// The output request's options beyond the range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutputQuery {
    /// The body's encoding.
    pub encoding: BodyEncoding,
    /// `wait=`: how long to wait for bytes past the end.
    pub wait: Option<Duration>,
    /// `follow=`: stream appended bytes until the capture ends.
    pub follow: bool,
}

/// Parses `encoding=`, `wait=`, `follow=` and `Accept-Encoding`; the error
/// names what is wrong.
pub fn parse_output_query(
    query: &HashMap<String, String>,
    accept_encoding: Option<&[u8]>,
    ranged: bool,
) -> Result<OutputQuery, String> {
    let following = matches!(
        query.get("follow").map(String::as_str),
        Some("true" | "1" | "")
    );
    let encoding = match query.get("encoding").map(String::as_str) {
        None => {
            // `Accept-Encoding: zstd` (a q of 0 refuses it); not for a
            // Range, which counts bytes of the identity representation, nor
            // for a follow, which is served as it comes.
            let zstd = !ranged
                && !following
                && accept_encoding
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .is_some_and(accepts_zstd);
            if zstd {
                BodyEncoding::Zstd {
                    content_encoding: true,
                }
            } else {
                BodyEncoding::Raw
            }
        }
        Some("raw") => BodyEncoding::Raw,
        Some("utf-8" | "utf8") => BodyEncoding::Utf8,
        Some("base64") => BodyEncoding::Base64,
        Some("base2048") => BodyEncoding::Base2048,
        Some("zstd") => BodyEncoding::Zstd {
            content_encoding: false,
        },
        Some(e) => {
            return Err(format!(
                "unknown encoding {e:?}: raw, utf-8, base64, base2048 or zstd"
            ));
        }
    };
    let wait = match query.get("wait") {
        None => None,
        Some(w) => match w.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => {
                Some(Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64())))
            }
            _ => return Err(format!("wait={w:?} is not a number of seconds")),
        },
    };
    let follow = match query.get("follow").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(f) => return Err(format!("follow={f:?}: true or false")),
    };
    if follow && matches!(encoding, BodyEncoding::Zstd { .. }) {
        return Err("follow=true serves raw, utf-8, base64 or base2048, not zstd".into());
    }
    Ok(OutputQuery {
        encoding,
        wait,
        follow,
    })
}

/// Whether an `Accept-Encoding` value takes zstd.
fn accepts_zstd(v: &str) -> bool {
    v.split(',').any(|item| {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .filter_map(|q| q.trim().parse::<f64>().ok())
            .next()
            .unwrap_or(1.0);
        name.eq_ignore_ascii_case("zstd") && q > 0.0
    })
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
        // Digits past u64 are a valid offset, beyond any capture: the
        // most (a last byte is clamped to the end, a first one is past it).
        let num = |s: &str| {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                Ok(s.parse::<u64>().unwrap_or(u64::MAX))
            } else {
                Err(format!("Range {r:?}: {s:?} is not a byte offset"))
            }
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

pub(super) async fn get_output(
    State(app): State<App>,
    Path((id, fd)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let range_header = headers.get(header::RANGE).map(HeaderValue::as_bytes);
    let want = match parse_range(&query, range_header) {
        Ok(w) => w,
        Err(e) => return bad(e),
    };
    let opts = match parse_output_query(
        &query,
        headers
            .get(header::ACCEPT_ENCODING)
            .map(HeaderValue::as_bytes),
        want.header,
    ) {
        Ok(o) => o,
        Err(e) => return bad(e),
    };
    if want.header && opts.follow {
        return bad(
            "a Range header with follow=true: a stream of no known end has no \
             Content-Range; give ?start= (and ?stop=) instead",
        );
    }
    let handle = &app.handle;
    // The length and encoding first (an empty read), for the headers.
    let mut probe = match probe(handle, &id, &fd).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let (Some(wait), Want::At(at)) = (opts.wait, want.start) {
        if at >= probe.length && probe.open {
            wait_past(handle, &id, &fd, at, wait).await;
            probe = match self::probe(handle, &id, &fd).await {
                Ok(p) => p,
                Err(r) => return r,
            };
        }
    }
    let length = probe.length;
    let start = match want.start {
        Want::At(a) => a,
        Want::Last(n) => length.saturating_sub(n),
    };
    // An empty capture is whole as an empty 200: no range of it exists.
    let want = Wanted {
        header: want.header && length > 0,
        ..want
    };
    if want.header && start >= length {
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
    let raw_type = if probe.encoding == spec::Encoding::Utf8 {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    if opts.follow {
        let dropped = dropped_in(handle, &id, &fd, start, want.stop.unwrap_or(u64::MAX)).await;
        let body = Body::from_stream(encode(
            follow(
                handle.clone(),
                id,
                fd,
                (start, want.stop),
                dropped.clone(),
                Streaming::new(&app.streams),
            ),
            opts.encoding,
        ));
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type(opts.encoding, raw_type));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        // A process's output is never to be taken for anything but its type.
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Headers go out before the stream: "open" is all they can say of
        // what comes, and what was dropped so far of what was asked.
        put(h, "x-chaperone-length", length);
        put(h, "x-chaperone-open", probe.open);
        if let Some(d) = &dropped {
            put(h, "x-chaperone-dropped", format!("{}-{}", d.start, d.end));
        }
        return r;
    }
    let start = start.min(length);
    let stop = want.stop.unwrap_or(length).clamp(start, length);
    let dropped = dropped_in(handle, &id, &fd, start, stop).await;
    // A 206's Content-Range names exactly the bytes in its body (RFC 9110,
    // 14.4): a client writes them at its offset. So a `Range` that meets a
    // dropped middle is answered with its first part held in one piece (the
    // client asks again for the rest), and one wholly dropped is 416; the
    // `?start=&stop=` answer, a 200, leaves the middle out instead.
    // (`dropped`, the part of the asked range, is what the header names.)
    let (start, stop, skip) = match &dropped {
        Some(d) if want.header && d.start <= start && stop <= d.end => {
            return wholly_dropped(handle, &id, &fd, (start, stop), &probe).await;
        }
        Some(d) if want.header && d.start > start => (start, d.start, None),
        Some(d) if want.header => (d.end, stop, None),
        _ => (start, stop, dropped.clone()),
    };
    let held = stop - start - skip.as_ref().map_or(0, |d| d.end - d.start);
    // A whole capture held compressed, asked for as zstd: its stored frames.
    let stored = matches!(opts.encoding, BodyEncoding::Zstd { .. })
        && start == 0
        && want.stop.is_none()
        && stop == length
        && probe.compressed;
    // Whether the text will have replacements, for the header: the range is
    // read once ahead (bounded, a step at a time) to find out.
    let replaced = if opts.encoding == BodyEncoding::Utf8 {
        let raw = chunks(
            handle.clone(),
            id.clone(),
            fd.clone(),
            (start, stop),
            skip.clone(),
            Streaming::new(&app.streams),
        );
        match utf8_replaced(raw).await {
            Ok(r) => Some(r),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, Some(e.to_string())),
        }
    } else {
        None
    };
    let mut body_length = match opts.encoding {
        BodyEncoding::Raw => Some(held),
        BodyEncoding::Base64 => Some(held.div_ceil(3) * 4),
        _ => None,
    };
    let body = if stored {
        match handle.fd_compressed(&id, &fd, 0, Some(0)).await {
            Ok(z) => {
                body_length = Some(z.compressed_length);
                Body::from_stream(compressed_chunks(
                    handle.clone(),
                    id,
                    fd,
                    z.compressed_length,
                    Streaming::new(&app.streams),
                ))
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, Some(e.to_string())),
        }
    } else {
        Body::from_stream(encode(
            chunks(
                handle.clone(),
                id,
                fd,
                (start, stop),
                skip,
                Streaming::new(&app.streams),
            ),
            opts.encoding,
        ))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type(opts.encoding, raw_type));
    if let BodyEncoding::Zstd {
        content_encoding: true,
    } = opts.encoding
    {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(n) = body_length {
        put(h, header::CONTENT_LENGTH.as_str(), n);
    }
    put(h, "x-chaperone-length", length);
    put(h, "x-chaperone-open", probe.open);
    if let Some(r) = replaced {
        put(h, "x-chaperone-replaced", r);
    }
    if let Some(d) = &dropped {
        put(h, "x-chaperone-dropped", format!("{}-{}", d.start, d.end));
    }
    if want.header {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let range = if stop > start {
            format!("bytes {start}-{}/{length}", stop - 1)
        } else {
            format!("bytes */{length}")
        };
        put(r.headers_mut(), header::CONTENT_RANGE.as_str(), range);
    }
    r
}

/// The 416 for a `Range` (`[start, stop)`) that lies wholly in a head/tail
/// capture's dropped middle: no byte of it is held. `Content-Range: bytes
/// */LENGTH` as for a range past the end, `X-Chaperone-Dropped` the range,
/// and the detail names the whole dropped middle (where the held bytes
/// stop and start again).
async fn wholly_dropped(
    handle: &Handle,
    id: &str,
    fd: &str,
    (start, stop): (u64, u64),
    probe: &Probe,
) -> Response {
    let length = probe.length;
    let middle = dropped_in(handle, id, fd, 0, u64::MAX)
        .await
        .unwrap_or(start..stop);
    let mut r = error(
        StatusCode::RANGE_NOT_SATISFIABLE,
        Some(format!(
            "bytes {}-{} of {length} were dropped by the capture's head/tail \
             limits; the range asked, bytes={start}-{}, lies within them",
            middle.start,
            middle.end,
            stop - 1
        )),
    );
    let h = r.headers_mut();
    put(
        h,
        header::CONTENT_RANGE.as_str(),
        format!("bytes */{length}"),
    );
    put(h, "x-chaperone-dropped", format!("{start}-{stop}"));
    put(h, "x-chaperone-length", length);
    put(h, "x-chaperone-open", probe.open);
    r
}

/// Sets header `name` to `value`'s text.
fn put(h: &mut HeaderMap, name: &'static str, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        h.insert(name, v);
    }
}

/// The `Content-Type` of a body in `enc`, over a capture served raw as `raw`.
fn content_type(enc: BodyEncoding, raw: &'static str) -> HeaderValue {
    HeaderValue::from_static(match enc {
        BodyEncoding::Raw
        | BodyEncoding::Zstd {
            content_encoding: true,
        } => raw,
        BodyEncoding::Utf8 | BodyEncoding::Base64 | BodyEncoding::Base2048 => {
            "text/plain; charset=utf-8"
        }
        BodyEncoding::Zstd {
            content_encoding: false,
        } => "application/zstd",
    })
}

/// What the headers need before the body: the capture's length, encoding,
/// whether it may grow, and whether it is held compressed.
struct Probe {
    length: u64,
    encoding: spec::Encoding,
    open: bool,
    compressed: bool,
}

async fn probe(handle: &Handle, id: &str, fd: &str) -> Result<Probe, Response> {
    let d = match handle.fd_data(id, fd, 0, Some(0)).await {
        Ok(d) => d,
        Err(FdDataError::Unknown(_)) => return Err(unknown(id)),
        Err(e @ FdDataError::NoFd(_)) => return Err(bad(e.to_string())),
        Err(e) => {
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(e.to_string()),
            ));
        }
    };
    // A wait that times out at once says whether the capture is open.
    let open = match handle.fd_wait(id, fd, u64::MAX, Duration::ZERO).await {
        Ok(w) => w.open,
        Err(_) => false,
    };
    let compressed = handle.fd_compressed(id, fd, 0, Some(0)).await.is_ok();
    Ok(Probe {
        length: d.length,
        encoding: d.encoding,
        open,
        compressed,
    })
}

/// Waits up to `wait` for capture bytes past `at` (a tempfile, which grows
/// unseen, is looked at every [`TEMPFILE_POLL`]).
async fn wait_past(handle: &Handle, id: &str, fd: &str, at: u64, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match handle.fd_wait(id, fd, at, left).await {
            Ok(w) if w.length.is_none() && w.open && !left.is_zero() => {
                let len = handle
                    .fd_data(id, fd, 0, Some(0))
                    .await
                    .map_or(0, |d| d.length);
                if len > at {
                    return;
                }
                tokio::time::sleep(TEMPFILE_POLL.min(left)).await;
            }
            _ => return,
        }
    }
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
    // Brief: the capture's counts, not a copy of a live one's bytes (made
    // on the reactor, up to its head and tail) for one range.
    let res = handle.result_brief(id).await?;
    let d = res.fds.get(&name)?.as_ref()?.ext()?.dropped.as_ref()?;
    let (lo, hi) = (d.start.max(start), d.stop.min(stop));
    (lo < hi).then_some(lo..hi)
}

/// One streamed body, counted while it lasts; its steps shrink as more
/// bodies stream (see [`STREAM_BUDGET`]).
pub(super) struct Streaming(Arc<AtomicUsize>);

impl Streaming {
    pub(super) fn new(count: &Arc<AtomicUsize>) -> Streaming {
        count.fetch_add(1, Ordering::Relaxed);
        Streaming(count.clone())
    }

    /// The next step's size.
    fn step(&self) -> u64 {
        let n = self.0.load(Ordering::Relaxed).max(1) as u64;
        (STREAM_BUDGET / 2 / n).clamp(MIN_CHUNK, CHUNK)
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The held bytes of `[start, stop)`, read a step at a time, `dropped`
/// being the part the headers said was dropped.
///
/// A head/tail capture still growing drops more of its middle as its tail
/// moves on: bytes held when the headers went out can be gone by the time
/// their step is read. The body then fails there, naming them, rather than
/// end short as if complete (a body sent without a length, as text, would
/// otherwise look whole); a client asks again from where it got to, and
/// that answer's headers name what is gone.
fn chunks(
    handle: Handle,
    id: String,
    fd: String,
    (start, stop): (u64, u64),
    dropped: Option<std::ops::Range<u64>>,
    streaming: Streaming,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let streaming = Arc::new(streaming);
    // The state: where to read next, and pieces to send first (last first).
    futures_util::stream::unfold((start, Vec::new()), move |(at, mut pending)| {
        let (handle, id, fd) = (handle.clone(), id.clone(), fd.clone());
        let step = streaming.step();
        let dropped = dropped.clone();
        async move {
            if let Some(piece) = pending.pop() {
                return Some((Ok(piece), (at, pending)));
            }
            // Past the part the headers named in one step: walked a step at
            // a time, the capture's tail could outrun the walk.
            let past_at = past(at, dropped.as_ref());
            if past_at != at && at > start {
                return Some((Ok(GAP), (past_at, pending)));
            }
            let at = past_at;
            if at >= stop {
                return None;
            }
            let end = stop.min(at.saturating_add(step));
            match handle.fd_data(&id, &fd, at, Some(end)).await {
                Ok(d) if overtaken(d.missing.as_ref(), dropped.as_ref()) => Some((
                    Err(overtaken_error(&id, &fd, d.missing.as_ref())),
                    (stop, pending),
                )),
                Ok(d) => {
                    // Past a dropped middle, go on at its end.
                    let next = d.missing.as_ref().map_or(end, |m| m.end.max(end));
                    let first = split_at_gap(d, at, &mut pending);
                    Some((Ok(first), (next, pending)))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), (stop, pending))),
            }
        }
    })
}

/// Bytes `[start, stop)` of a capture, then (with no `stop`) every byte it
/// gains, until it can grow no more: a follower's stream. As [`chunks`], it
/// fails where bytes past what `dropped` (the headers') says were dropped
/// before they were sent, so that a follower always knows its offset.
fn follow(
    handle: Handle,
    id: String,
    fd: String,
    (start, stop): (u64, Option<u64>),
    dropped: Option<std::ops::Range<u64>>,
    streaming: Streaming,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let stop = stop.unwrap_or(u64::MAX);
    let streaming = Arc::new(streaming);
    // The state: where to read next (`None`: done), and pieces to send
    // first (last first), as in [`chunks`].
    futures_util::stream::unfold((Some(start), Vec::new()), move |(at, mut pending)| {
        let (handle, id, fd) = (handle.clone(), id.clone(), fd.clone());
        let step = streaming.step();
        let dropped = dropped.clone();
        async move {
            if let Some(piece) = pending.pop() {
                return Some((Ok(piece), (at, pending)));
            }
            let at0 = at?;
            let mut at = past(at0, dropped.as_ref());
            if at != at0 && at0 > start {
                return Some((Ok(GAP), (Some(at), pending)));
            }
            loop {
                if at >= stop {
                    return None;
                }
                let end = stop.min(at.saturating_add(step));
                let d = match handle.fd_data(&id, &fd, at, Some(end)).await {
                    Ok(d) if overtaken(d.missing.as_ref(), dropped.as_ref()) => {
                        return Some((
                            Err(overtaken_error(&id, &fd, d.missing.as_ref())),
                            (None, pending),
                        ));
                    }
                    Ok(d) => d,
                    Err(e) => {
                        return Some((Err(std::io::Error::other(e.to_string())), (None, pending)));
                    }
                };
                if !d.data.is_empty() || d.missing.is_some() {
                    let next = d.missing.as_ref().map_or(d.stop, |m| m.end.max(d.stop));
                    let next = Some(next.max(at + 1).min(d.length.max(at)));
                    let first = split_at_gap(d, at, &mut pending);
                    return Some((Ok(first), (next, pending)));
                }
                at = at.max(d.stop);
                match handle.fd_wait(&id, &fd, at, FOLLOW_WAIT).await {
                    Ok(w) if !w.open && w.length.is_none_or(|l| l <= at) => {
                        // Closed: one last read for a tempfile's final bytes.
                        if w.length.is_none() {
                            let end = stop.min(at.saturating_add(step));
                            let d = handle.fd_data(&id, &fd, at, Some(end)).await.ok()?;
                            if !d.data.is_empty() {
                                return Some((Ok(d.data), (Some(d.stop), pending)));
                            }
                        }
                        return None;
                    }
                    Ok(w) if w.length.is_none() => tokio::time::sleep(TEMPFILE_POLL).await,
                    Ok(_) => {}
                    Err(e) => {
                        return Some((Err(std::io::Error::other(e.to_string())), (None, pending)));
                    }
                }
            }
        }
    })
}

/// The piece [`chunks`] and [`follow`] put between the bytes before a dropped middle and
/// those after it (an empty one: no other piece is): the UTF-8 encoder
/// decodes the two sides apart, as they were never next to each other.
const GAP: Bytes = Bytes::new();

/// The piece to send of read `d` (made at `at`): all its bytes, or, when a
/// dropped middle lies within it, those before the middle, with [`GAP`] and
/// those after it pushed on `pending` (sent last first).
fn split_at_gap(d: crate::supervisor::FdData, at: u64, pending: &mut Vec<Bytes>) -> Bytes {
    let Some(m) = &d.missing else {
        return d.data;
    };
    let k = usize::try_from(m.start.saturating_sub(at))
        .unwrap_or(usize::MAX)
        .min(d.data.len());
    let after = d.data.slice(k..);
    if !after.is_empty() {
        pending.push(after);
    }
    pending.push(GAP);
    d.data.slice(..k)
}

/// `at`, or the end of `dropped` if `at` is in it.
fn past(at: u64, dropped: Option<&std::ops::Range<u64>>) -> u64 {
    match dropped {
        Some(d) if d.start <= at && at < d.end => d.end,
        _ => at,
    }
}

/// Whether a read's `missing` part holds bytes the response's headers did
/// not say were dropped (`dropped`).
fn overtaken(
    missing: Option<&std::ops::Range<u64>>,
    dropped: Option<&std::ops::Range<u64>>,
) -> bool {
    let Some(m) = missing.filter(|m| m.start < m.end) else {
        return false;
    };
    !dropped.is_some_and(|d| d.start <= m.start && m.end <= d.end)
}

fn overtaken_error(id: &str, fd: &str, missing: Option<&std::ops::Range<u64>>) -> std::io::Error {
    let m = missing.cloned().unwrap_or_default();
    let msg = format!(
        "{id} {fd}: bytes {}-{} were dropped by the capture's head/tail limits while being sent",
        m.start, m.end
    );
    tracing::info!("{msg}; the body ends there");
    std::io::Error::other(msg)
}

/// The stored `.zst` stream of a compressed capture, `CHUNK` at a time.
fn compressed_chunks(
    handle: Handle,
    id: String,
    fd: String,
    length: u64,
    streaming: Streaming,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let streaming = Arc::new(streaming);
    futures_util::stream::unfold(0u64, move |at| {
        let (handle, id, fd) = (handle.clone(), id.clone(), fd.clone());
        let step = streaming.step();
        async move {
            if at >= length {
                return None;
            }
            let end = length.min(at + step);
            match handle.fd_compressed(&id, &fd, at, Some(end)).await {
                Ok(z) if !z.data.is_empty() => Some((Ok(z.data), z.range.end)),
                Ok(_) => None,
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), length)),
            }
        }
    })
}

/// Encodes a stream of raw pieces as `enc`, whatever their sizes: what a
/// piece ends with that cannot be encoded alone (part of a UTF-8 character,
/// bytes short of a whole base64 or base2048 group) waits for the next one,
/// so the body is the encoding of all the bytes, as if in one piece. Zstd
/// pieces are frames, which concatenate.
fn encode(
    raw: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    enc: BodyEncoding,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut encoder = Encoder::new(enc);
    let done = futures_util::stream::once(async { Ok(Bytes::new()) });
    raw.map(Some)
        .chain(done.map(|_: Result<Bytes, std::io::Error>| None))
        .map(move |piece| match piece {
            None => Ok(encoder.finish()),
            Some(Err(e)) => Err(e),
            Some(Ok(b)) => encoder.push(b),
        })
        .filter(|r| std::future::ready(!matches!(r, Ok(b) if b.is_empty())))
}

/// [`encode`]'s state: the encoding and the bytes held for the next piece.
struct Encoder {
    enc: BodyEncoding,
    utf8: Utf8Carry,
    held: Vec<u8>,
}

impl Encoder {
    fn new(enc: BodyEncoding) -> Encoder {
        Encoder {
            enc,
            utf8: Utf8Carry::default(),
            held: Vec::new(),
        }
    }

    /// Bytes per group that encodes alone: 3 for base64, 11 for base2048.
    fn group(&self) -> usize {
        match self.enc {
            BodyEncoding::Base64 => 3,
            BodyEncoding::Base2048 => 11,
            _ => 1,
        }
    }

    fn text(&self, b: &[u8]) -> Bytes {
        use base64::Engine as _;
        match self.enc {
            BodyEncoding::Base64 => {
                Bytes::from(base64::engine::general_purpose::STANDARD.encode(b))
            }
            _ => Bytes::from(base2048::encode(b)),
        }
    }

    fn push(&mut self, b: Bytes) -> Result<Bytes, std::io::Error> {
        Ok(match self.enc {
            BodyEncoding::Raw => b,
            // The sides of a dropped middle are decoded apart.
            BodyEncoding::Utf8 if b.is_empty() => self.utf8.finish(),
            BodyEncoding::Utf8 => self.utf8.push(&b),
            BodyEncoding::Base64 | BodyEncoding::Base2048 => {
                let group = self.group();
                let mut all = std::mem::take(&mut self.held);
                all.extend_from_slice(&b);
                let whole = all.len() - all.len() % group;
                self.held = all.split_off(whole);
                self.text(&all)
            }
            BodyEncoding::Zstd { .. } if b.is_empty() => b,
            BodyEncoding::Zstd { .. } => {
                let (z, _) = crate::capture::compress::compress_slices(&[&b], SERVE_LEVEL)?;
                Bytes::from(z)
            }
        })
    }

    /// What is left at the end, encoded (an incomplete character: U+FFFD).
    fn finish(&mut self) -> Bytes {
        match self.enc {
            BodyEncoding::Utf8 => self.utf8.finish(),
            BodyEncoding::Base64 | BodyEncoding::Base2048 if !self.held.is_empty() => {
                let rest = std::mem::take(&mut self.held);
                self.text(&rest)
            }
            _ => Bytes::new(),
        }
    }
}

/// Whether lossy UTF-8 decoding of the pieces replaces anything.
async fn utf8_replaced(
    raw: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>,
) -> Result<bool, std::io::Error> {
    let mut raw = std::pin::pin!(raw);
    let mut held = Vec::new();
    while let Some(piece) = raw.next().await {
        let piece = piece?;
        if piece.is_empty() && !held.is_empty() {
            // A character cut by a dropped middle ([`GAP`]).
            return Ok(true);
        }
        held.extend_from_slice(&piece);
        let keep = incomplete_tail(&held);
        if std::str::from_utf8(&held[..held.len() - keep]).is_err() {
            return Ok(true);
        }
        held.drain(..held.len() - keep);
    }
    Ok(!held.is_empty())
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

    fn oq(pairs: &[(&str, &str)], ae: Option<&str>, ranged: bool) -> Result<OutputQuery, String> {
        parse_output_query(&q(pairs), ae.map(str::as_bytes), ranged)
    }

    #[test]
    fn output_options_parse() {
        let o = oq(&[], None, false).unwrap();
        assert_eq!(
            (o.encoding, o.wait, o.follow),
            (BodyEncoding::Raw, None, false)
        );
        let o = oq(&[("encoding", "base2048"), ("wait", "2.5")], None, false).unwrap();
        assert_eq!(o.encoding, BodyEncoding::Base2048);
        assert_eq!(o.wait, Some(Duration::from_millis(2500)));
        assert_eq!(
            oq(&[("wait", "1e12")], None, false).unwrap().wait,
            Some(MAX_WAIT)
        );
        assert!(oq(&[("follow", "1")], None, false).unwrap().follow);
        let ce = BodyEncoding::Zstd {
            content_encoding: true,
        };
        assert_eq!(oq(&[], Some("gzip, zstd"), false).unwrap().encoding, ce);
        assert_eq!(
            oq(&[], Some("zstd;q=0"), false).unwrap().encoding,
            BodyEncoding::Raw
        );
        assert_eq!(
            oq(&[], Some("gzip, br"), false).unwrap().encoding,
            BodyEncoding::Raw
        );
        // A Range counts identity bytes: Accept-Encoding is not taken with it.
        assert_eq!(
            oq(&[], Some("zstd"), true).unwrap().encoding,
            BodyEncoding::Raw
        );
        // The query's encoding wins over Accept-Encoding.
        assert_eq!(
            oq(&[("encoding", "raw")], Some("zstd"), false)
                .unwrap()
                .encoding,
            BodyEncoding::Raw
        );
    }

    #[test]
    fn bad_output_options_say_what_is_wrong() {
        let e = |p: &[(&str, &str)]| oq(p, None, false).unwrap_err();
        assert!(e(&[("encoding", "rot13")]).contains("unknown encoding \"rot13\""));
        assert!(e(&[("wait", "-1")]).contains("wait=\"-1\""));
        assert!(e(&[("wait", "NaN")]).contains("not a number of seconds"));
        assert!(e(&[("follow", "maybe")]).contains("follow=\"maybe\""));
        assert!(e(&[("follow", "1"), ("encoding", "zstd")]).contains("not zstd"));
    }

    // Text encodings of pieces of any sizes are the encoding of the whole.
    proptest::proptest! {
        #[test]
        fn text_encodings_of_pieces_are_the_whole(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300), cuts in proptest::collection::vec(0usize..300, 0..8)) {
            use base64::Engine as _;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            for enc in [BodyEncoding::Base64, BodyEncoding::Base2048] {
                let mut e = Encoder::new(enc);
                let mut out = Vec::new();
                let mut last = 0;
                for c in cuts.iter().copied().chain([data.len()]) {
                    out.extend_from_slice(&e.push(Bytes::copy_from_slice(&data[last..c])).unwrap());
                    last = c;
                }
                out.extend_from_slice(&e.finish());
                let whole = match enc {
                    BodyEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(&data),
                    _ => base2048::encode(&data),
                };
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), whole);
            }
        }
    }
}
