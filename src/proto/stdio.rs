//! The agent protocol over stdio (`--stdio`): one JSON object per line.
//!
//! Requests come on standard input, replies and notifications go to standard
//! output, each a single line. The messages are those of the WebSocket agent
//! (see [`super`]) without the registration: no `Register`/`Registered`.
//! Byte payloads (`ProcFdData`'s `data`) are strings for a `utf-8` capture and
//! base64 otherwise. End of input means shut down by the terminate policy;
//! the last line is then `{"type":"ShutDown","shutdown_state":"done"}`.
//!
//! A line longer than [`MAX_LINE`] is skipped with a `RequestError`; so is a
//! line that is not a JSON object or not a known message.

use super::{Decoded, Reply, serve};
use crate::supervisor::{Handle, ShutdownPolicy, ShutdownState, Subscription};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The longest request line read, bytes.
pub const MAX_LINE: usize = 64 << 20;

/// A line read, or one too long to keep.
enum Line {
    Full(Vec<u8>),
    TooLong(usize),
}

/// Reads one line of at most `max` bytes (without its newline); `None` at the
/// end of input. A longer line is consumed and reported by its length.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut len = 0usize;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match len {
                0 => None,
                n if n > max => Some(Line::TooLong(n)),
                _ => Some(Line::Full(line)),
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        len += chunk.len();
        if len <= max {
            line.extend_from_slice(chunk);
        } else {
            line = Vec::new();
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(if len > max {
                Line::TooLong(len)
            } else {
                Line::Full(line)
            }));
        }
    }
}

/// Decodes one request line.
pub fn decode_line(line: &[u8]) -> Decoded {
    crate::sys::mem::note_request(line.len());
    match serde_json::from_slice::<super::Strict>(line) {
        Ok(s) => Decoded::from_value(Ok(s.0)),
        Err(e) => match serde_json::from_slice::<serde_json::Value>(line) {
            // A map refused only by the strict reading (a key given twice):
            // its error echoes what could be read, as over WebSocket.
            Ok(v @ serde_json::Value::Object(_)) => {
                Decoded::refused(v, format!("invalid JSON message: {e}"))
            }
            _ => Decoded::from_value(Err(format!("not a JSON object: {e}"))),
        },
    }
}

/// Writes one message as a line.
async fn write<W: AsyncWrite + Unpin>(w: &mut W, reply: &Reply) -> std::io::Result<()> {
    if let Reply::ProcFdData {
        proc_id,
        fd,
        start,
        encoding,
        data,
        ..
    } = reply
        && let Some(more) = &data.more
    {
        return write_streamed(w, (proc_id, fd, *start, *encoding), data, more).await;
    }
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await
}

/// Writes a `ProcFdData` whose bytes go on in a file ([`super::More`]),
/// encoding them a piece at a time, so the line is never held whole. `stop`
/// comes after `data` (a JSON object's keys have no order): should the file
/// no longer hold every byte (a process cut its own output file), the reply
/// ends where the bytes did and `stop` says so, as for any range that ends
/// before its length.
async fn write_streamed<W: AsyncWrite + Unpin>(
    w: &mut W,
    (proc_id, fd, start, encoding): (&str, &str, u64, crate::spec::Encoding),
    data: &super::Payload,
    more: &super::More,
) -> std::io::Result<()> {
    let head = format!(
        "{{\"type\":\"ProcFdData\",\"proc_id\":{},\"fd\":{},\"start\":{start},\"encoding\":{},\"data\":\"",
        json(proc_id),
        json(fd),
        json(&encoding),
    );
    w.write_all(head.as_bytes()).await?;
    let mut text = TextPieces::new(data.text);
    w.write_all(&text.push(&data.bytes)).await?;
    let mut at = more.from;
    while at < more.to {
        match more.piece(at).await {
            Ok(piece) => {
                at += piece.len() as u64;
                w.write_all(&text.push(&piece)).await?;
            }
            Err(e) => {
                tracing::warn!("{e}; the reply ends at byte {at}");
                break;
            }
        }
    }
    w.write_all(&text.finish()).await?;
    w.write_all(format!("\",\"stop\":{at}}}\n").as_bytes())
        .await?;
    w.flush().await
}

/// `v` as JSON (serializing these cannot fail).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// The inside of a JSON string holding bytes given a piece at a time, as
/// [`super::Payload`] writes them whole: lossy UTF-8 text (a character split
/// between pieces comes out whole), or base64 (pieces cut at multiples of 3
/// bytes, so the parts concatenate without padding between them).
struct TextPieces {
    utf8: Option<crate::supervisor::Utf8Carry>,
    held: Vec<u8>,
}

impl TextPieces {
    fn new(text: bool) -> TextPieces {
        TextPieces {
            utf8: text.then(Default::default),
            held: Vec::new(),
        }
    }

    fn push(&mut self, b: &[u8]) -> Vec<u8> {
        match &mut self.utf8 {
            Some(carry) => escaped(&carry.push(b)),
            None => {
                self.held.extend_from_slice(b);
                let whole = self.held.len() / 3 * 3;
                let out = base64(&self.held[..whole]);
                self.held.drain(..whole);
                out
            }
        }
    }

    fn finish(&mut self) -> Vec<u8> {
        match &mut self.utf8 {
            Some(carry) => escaped(&carry.finish()),
            None => base64(&std::mem::take(&mut self.held)),
        }
    }
}

/// Text (valid UTF-8) as the inside of a JSON string.
fn escaped(text: &[u8]) -> Vec<u8> {
    let s = std::str::from_utf8(text).unwrap_or_default();
    let mut quoted = serde_json::to_vec(s).unwrap_or_default();
    quoted.pop();
    quoted.remove(0);
    quoted
}

fn base64(b: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .encode(b)
        .into_bytes()
}

/// Serves requests from `input` and writes replies and notifications to
/// `output` until the agent is done: after the end of input (which starts a
/// terminate shutdown with `grace`) or a shutdown begun elsewhere. `events`
/// must have been subscribed before any process was started.
pub async fn run<R, W>(
    handle: Handle,
    mut events: Subscription,
    input: R,
    mut output: W,
    grace: std::time::Duration,
) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    // Lines are read by a task of their own: reading one is not cancel-safe
    // (a line may be half taken), and the loop below selects.
    let (line_tx, mut lines) = mpsc::channel::<std::io::Result<Option<Line>>>(16);
    let reader = tokio::spawn(async move {
        let mut input = input;
        loop {
            let line = read_line(&mut input, MAX_LINE).await;
            let end = !matches!(line, Ok(Some(_)));
            if line_tx.send(line).await.is_err() || end {
                return;
            }
        }
    });
    let mut reading = true;
    // One output in the order requests and events came in (see `ws`).
    let mut out: FuturesOrdered<Pin<Box<dyn Future<Output = Out> + Send>>> = FuturesOrdered::new();
    let mut done = false;
    loop {
        if done && out.is_empty() {
            reader.abort();
            return write(
                &mut output,
                &Reply::ShutDown {
                    shutdown_state: ShutdownState::Done,
                },
            )
            .await;
        }
        tokio::select! {
            biased;
            Some(line) = lines.recv(), if reading && out.len() < super::ws::MAX_IN_FLIGHT => {
                match line {
                    Ok(Some(Line::Full(line))) => {
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        let call = serve(&handle, decode_line(&line));
                        out.push_back(Box::pin(async move { (call.await, Vec::new()) }));
                    }
                    Ok(Some(Line::TooLong(n))) => {
                        let reply = Reply::unreadable(format!(
                            "line of {n} bytes is longer than the limit of {MAX_LINE}"
                        ));
                        out.push_back(Box::pin(std::future::ready((vec![reply], Vec::new()))));
                    }
                    Ok(None) | Err(_) => {
                        if let Err(e) = line {
                            tracing::warn!("reading standard input: {e}; shutting down");
                        }
                        reading = false;
                        // What came before the end is answered first: a start
                        // read just before it is started, not refused as
                        // "shutting down" (it raced the shutdown).
                        while let Some((replies, states)) = out.next().await {
                            done |= states.contains(&ShutdownState::Done);
                            for r in &replies {
                                write(&mut output, r).await?;
                            }
                        }
                        launched(&handle).await;
                        handle.shutdown(ShutdownPolicy::Terminate { grace }).await;
                    }
                }
            }
            Some((replies, states)) = out.next() => {
                done |= states.contains(&ShutdownState::Done);
                for r in &replies {
                    write(&mut output, r).await?;
                }
            }
            e = events.event() => {
                let Some(e) = e else {
                    done = true;
                    continue;
                };
                let mut batch = vec![e];
                batch.extend(events.try_iter());
                let h = handle.clone();
                out.push_back(Box::pin(async move { super::notifications(&h, batch).await }));
            }
        }
    }
}

/// Returns once no process waits to start (queued, opening its files, or
/// handed to a spawning thread), or
/// once that number stops falling for 200 ms (the rest wait behind
/// `--max-running`, for fds or on a file such as a FIFO, and the shutdown
/// cancels them), or after 5 s. A start behind `--max-running` can be
/// answered before its processes launch.
async fn launched(handle: &Handle) {
    use crate::supervisor::status::Select;
    let began = tokio::time::Instant::now();
    let mut last = (usize::MAX, began);
    loop {
        // Queued, opening its files, or handed to a spawning thread: no pid
        // yet (a shutdown would cancel a spawn not yet begun too). Counts
        // only: rows for a large table would keep the reactor busy.
        let c = handle.overview(Select::None).await.counts;
        let queued = c.queued + c.opening + c.spawning;
        let now = tokio::time::Instant::now();
        if queued == 0 || now - began > Duration::from_secs(5) {
            return;
        }
        if queued < last.0 {
            last = (queued, now);
        } else if now - last.1 > Duration::from_millis(200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An entry of the output: replies and the shutdown states they saw.
type Out = (Vec<Reply>, Vec<ShutdownState>);

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, usize>> {
        let mut r = tokio::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        while let Some(l) = read_line(&mut r, max).await.expect("read") {
            out.push(match l {
                Line::Full(v) => Ok(v),
                Line::TooLong(n) => Err(n),
            });
        }
        out
    }

    #[test]
    fn lines_are_split_and_long_ones_skipped_whole() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let got = rt.block_on(lines(b"ab\n0123456789\n\nxyz", 5));
        assert_eq!(
            got,
            vec![Ok(b"ab".to_vec()), Err(10), Ok(vec![]), Ok(b"xyz".to_vec())]
        );
    }

    #[test]
    fn a_line_that_is_not_an_object_is_an_error_naming_why() {
        let d = decode_line(b"[1, 2]");
        assert_eq!(
            d.request.expect_err("not a request"),
            "message is not a map: an array"
        );
        assert_eq!(d.value, serde_json::json!({"type": null}));
        let d = decode_line(b"{\"type\": \"ProcResultRequest\"}");
        let e = d.request.expect_err("no proc_id");
        assert!(
            e.contains("invalid ProcResultRequest message") && e.contains("proc_id"),
            "{e}"
        );
        let d = decode_line(b"{not json");
        assert!(d.request.expect_err("bad").starts_with("not a JSON object"));
        // A proc id given twice: refused, echoing the start's type and specs.
        let d = decode_line(
            br#"{"type": "ProcStartRequest", "specs": {"a": {"argv": ["/bin/true"]}, "a": {"argv": ["/bin/false"]}}}"#,
        );
        let e = d.request.expect_err("a key twice");
        assert!(e.contains(r#"the key "a" is given twice"#), "{e}");
        assert_eq!(d.value["type"], "ProcStartRequest");
        assert!(d.value["specs"]["a"].is_object(), "{}", d.value);
    }
}
