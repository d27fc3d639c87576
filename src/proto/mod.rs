//! Procstar's agent protocol: the messages, and how a request is served
//! through a [`Handle`].
//!
//! One message set, two framings: MessagePack maps in binary WebSocket frames
//! ([`ws`], the agent Apsis talks to) and one JSON object per line on stdio
//! ([`stdio`]). Every message is a map with a `type` tag naming its variant
//! and its fields by name, as Procstar's Rust agent and PyPI `procstar`'s
//! server write them; byte payloads are MessagePack `bin` (base64 or a string
//! on stdio, see [`Payload`]).
//!
//! Requests are decoded in two steps, first to a generic value, then to a
//! [`Request`]: whatever fails, the reply is a [`Reply::RequestError`] that
//! echoes what could be read of the message (always with a `type` key, which
//! the Python server looks up) and says what was wrong. Nothing a peer sends
//! ends the connection or the agent.

pub mod stdio;
pub mod ws;

use crate::result::ProcRes;
use crate::spec::{self, Encoding, ProcId};
use crate::supervisor::{Event, FdDataError, Handle, ProcError, ShutdownState, StartError};
use bytes::Bytes;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use std::future::Future;

/// A message from the server (or the stdio peer) to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type")]
pub enum Request {
    /// The reply to `Register`; valid only as the handshake's.
    Registered,
    /// Starts the processes of `specs` (a spec input's `specs` object).
    ProcStartRequest {
        /// Process id → spec.
        specs: serde_json::Map<String, Value>,
    },
    /// Asks for the ids of every process.
    ProcidListRequest,
    /// Asks for one process's result.
    ProcResultRequest {
        /// The process.
        proc_id: ProcId,
    },
    /// Sends a signal to one process.
    ProcSignalRequest {
        /// The process.
        proc_id: ProcId,
        /// The signal number.
        signum: i32,
    },
    /// Asks for bytes `[start, stop)` of a captured fd.
    ProcFdDataRequest {
        /// The process.
        proc_id: ProcId,
        /// The fd's name (`stdout`) or number.
        fd: String,
        /// First byte.
        #[serde(default)]
        start: u64,
        /// End (exclusive); `null` for the end of what exists.
        #[serde(default)]
        stop: Option<u64>,
    },
    /// Deletes a process that is no longer running.
    ProcDeleteRequest {
        /// The process.
        proc_id: ProcId,
    },
}

/// A message from the agent.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type")]
pub enum Reply {
    /// The first message of every WebSocket connection.
    Register {
        /// Who is connecting.
        conn: ConnInfo,
        /// The agent process.
        proc: ProcInfo,
        /// The ids of every process the agent has.
        proc_ids: Vec<ProcId>,
        /// `PROCSTAR_AGENT_TOKEN`, or empty.
        access_token: String,
        /// The agent's shutdown state.
        shutdown_state: ShutdownState,
    },
    /// A process's result: on start, on termination or error, and on request.
    ProcResult {
        /// The process.
        proc_id: ProcId,
        /// Its result.
        res: Box<ProcRes>,
    },
    /// Bytes of a captured fd.
    ProcFdData {
        /// The process.
        proc_id: ProcId,
        /// The fd's name as asked.
        fd: String,
        /// First byte.
        start: u64,
        /// End (exclusive) of the bytes sent.
        stop: u64,
        /// The capture's encoding (`null` raw, `"utf-8"`).
        encoding: Encoding,
        /// The bytes.
        data: Payload,
    },
    /// A process was deleted.
    ProcDelete {
        /// The process.
        proc_id: ProcId,
    },
    /// The ids of every process.
    ProcidList {
        /// The ids.
        proc_ids: Vec<ProcId>,
    },
    /// A request named a process the agent does not have.
    ProcUnknown {
        /// The id asked for.
        proc_id: ProcId,
    },
    /// A request failed.
    RequestError {
        /// The request as read (always a map with a `type` key).
        msg: Value,
        /// What was wrong.
        err: String,
    },
    /// The agent's shutdown state changed.
    ShutDown {
        /// The new state.
        shutdown_state: ShutdownState,
    },
}

/// `Register`'s `conn`.
#[derive(Clone, Debug, Serialize)]
pub struct ConnInfo {
    /// The connection id (stable across reconnects).
    pub conn_id: String,
    /// The agent's group.
    pub group_id: String,
    /// `--restrict-exe`, if given.
    pub restricted_exe: Option<String>,
}

/// `Register`'s `proc`: the agent process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcInfo {
    /// Its pid.
    pub pid: i32,
    /// Its parent's pid.
    pub ppid: i32,
    /// Real uid.
    pub uid: u32,
    /// Effective uid.
    pub euid: u32,
    /// The real uid's user name (empty if it has none).
    pub username: String,
    /// Real gid.
    pub gid: u32,
    /// Effective gid.
    pub egid: u32,
    /// The real gid's group name (empty if it has none).
    pub groupname: String,
    /// The host's name.
    pub hostname: String,
}

impl ProcInfo {
    /// This process's.
    pub fn current() -> ProcInfo {
        use rustix::process;
        let uid = process::getuid().as_raw();
        let gid = process::getgid().as_raw();
        ProcInfo {
            pid: process::getpid().as_raw_nonzero().get(),
            ppid: process::getppid().map_or(0, |p| p.as_raw_nonzero().get()),
            uid,
            euid: process::geteuid().as_raw(),
            username: crate::sys::user::user_by_uid(uid)
                .ok()
                .flatten()
                .map(|p| p.name)
                .unwrap_or_default(),
            gid,
            egid: process::getegid().as_raw(),
            groupname: crate::sys::user::group_name_by_gid(gid)
                .ok()
                .flatten()
                .unwrap_or_default(),
            hostname: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
        }
    }
}

/// A byte payload: MessagePack `bin`; in a text framing (JSON), a string when
/// the capture's encoding is text, else base64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// The bytes.
    pub bytes: Bytes,
    /// Whether a text framing writes them as a string (lossy UTF-8).
    pub text: bool,
    /// Bytes after `bytes`, still in their capture file: the transports
    /// read and send them a piece at a time ([`More::piece`]), so a large
    /// range is never held whole. Serializing the payload alone leaves
    /// them out.
    pub more: Option<More>,
}

impl Payload {
    /// A payload of `bytes` alone.
    pub fn new(bytes: Bytes, text: bool) -> Payload {
        Payload {
            bytes,
            text,
            more: None,
        }
    }

    /// How many bytes it carries, `more` included.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64 + self.more.as_ref().map_or(0, |m| m.to - m.from)
    }

    /// Whether it carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A range of a capture held in a file, to be read when sent: `[from, to)`.
#[derive(Clone)]
pub struct More {
    handle: Handle,
    proc_id: ProcId,
    fd: String,
    /// The first byte still to send.
    pub from: u64,
    /// The end (exclusive).
    pub to: u64,
}

impl std::fmt::Debug for More {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("More")
            .field("proc_id", &self.proc_id)
            .field("fd", &self.fd)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

impl PartialEq for More {
    fn eq(&self, o: &More) -> bool {
        (&self.proc_id, &self.fd, self.from, self.to) == (&o.proc_id, &o.fd, o.from, o.to)
    }
}

impl Eq for More {}

impl More {
    /// The bytes from `at` (within `[from, to)`), at most [`PIECE`] of
    /// them. Fails when the file no longer has them all (a process that
    /// truncated its own output file): the reply, whose length is already
    /// sent, cannot be finished.
    pub async fn piece(&self, at: u64) -> Result<Bytes, String> {
        let end = self.to.min(at.saturating_add(PIECE));
        let d = self
            .handle
            .fd_data(&self.proc_id, &self.fd, at, Some(end))
            .await
            .map_err(|e| format!("fd {} of {}: {e}", self.fd, self.proc_id))?;
        if d.start != at || d.data.len() as u64 != end - at {
            return Err(format!(
                "fd {} of {}: bytes {at}..{end} are no longer in its file ({} read; it was cut \
                 while they were being sent)",
                self.fd,
                self.proc_id,
                d.data.len()
            ));
        }
        Ok(d.data)
    }
}

/// How much of a file-held range is read at a time when sending it.
pub const PIECE: u64 = 4 << 20;

/// The most bytes one `ProcFdData` carries: MessagePack's `bin 32` limit.
/// A longer range ends there (its `stop` says so) and is asked for again
/// from that point, as for any range that ends before the length.
pub const MAX_DATA: u64 = u32::MAX as u64;

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // In text, written through `collect_str`, which serde_json formats
        // straight into its output: a large capture is not first copied
        // into a string of its own.
        if !s.is_human_readable() {
            s.serialize_bytes(&self.bytes)
        } else if self.text {
            s.collect_str(&Lossy(&self.bytes))
        } else {
            s.collect_str(&base64::display::Base64Display::new(
                &self.bytes,
                &base64::engine::general_purpose::STANDARD,
            ))
        }
    }
}

/// Bytes shown as UTF-8 text, each invalid sequence as U+FFFD (as
/// `String::from_utf8_lossy` does).
struct Lossy<'a>(&'a [u8]);

impl std::fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{FFFD}")?;
            }
        }
        Ok(())
    }
}

impl Reply {
    /// The error reply for a message that could not be read at all (so
    /// nothing of it can be echoed): `msg` is `{"type": null}`.
    pub fn unreadable(err: String) -> Reply {
        Decoded::from_value(Err(err.clone())).error(err)
    }
}

/// A request decoded as far as it goes: the generic value (for echoes in
/// errors) and the request, or what was wrong with it.
#[derive(Debug)]
pub struct Decoded {
    /// The message as read; `{"type": null}` if it was not a map.
    pub value: Value,
    /// The request, or why it is not one.
    pub request: Result<Request, String>,
}

impl Decoded {
    /// Decodes a generic value (a MessagePack or JSON map) into a request.
    pub fn from_value(value: Result<Value, String>) -> Decoded {
        match value {
            Err(e) => Decoded {
                value: serde_json::json!({ "type": null }),
                request: Err(e),
            },
            Ok(value) => {
                let request = match &value {
                    Value::Object(m) => match m.get("type") {
                        None => Err("message has no \"type\"".to_string()),
                        Some(Value::String(_)) => {
                            Request::deserialize(&value).map_err(|e| match m.get("type") {
                                Some(Value::String(t)) => format!("invalid {t} message: {e}"),
                                _ => e.to_string(),
                            })
                        }
                        Some(t) => Err(format!("message \"type\" is not a string: {t}")),
                    },
                    _ => Err(format!("message is not a map: {}", kind(&value))),
                };
                let value = match value {
                    Value::Object(mut m) => {
                        m.entry("type").or_insert(Value::Null);
                        Value::Object(m)
                    }
                    _ => serde_json::json!({ "type": null }),
                };
                Decoded { value, request }
            }
        }
    }

    /// A map that was read but refused as a whole (`err` says why): `value`
    /// is what could be read of it, echoed in the error.
    pub(crate) fn refused(value: Value, err: String) -> Decoded {
        let value = match value {
            Value::Object(mut m) => {
                m.entry("type").or_insert(Value::Null);
                Value::Object(m)
            }
            _ => serde_json::json!({ "type": null }),
        };
        Decoded {
            value,
            request: Err(err),
        }
    }

    /// The error reply for this message.
    pub fn error(&self, err: impl Into<String>) -> Reply {
        Reply::RequestError {
            msg: self.value.clone(),
            err: err.into(),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map",
    }
}

/// A generic value (JSON or MessagePack) read as `serde_json::Value` does,
/// but refusing a map with a key given twice, which `Value` would quietly
/// keep the last of (a proc id, an env var, a message's `type`). A MessagePack
/// `bin` is read as the string it holds, as Procstar does (Python's msgpack
/// writes `bytes` as `bin`); one that is not UTF-8 is refused.
pub(crate) struct Strict(pub Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::DeserializeSeed::deserialize(ValueSeed { strict: true }, d).map(Strict)
    }
}

/// Whatever of a message can be read, for the echo in its error when
/// [`Strict`] refused it: the last of a repeated key, a `bin` or a key that
/// is not a string as lossy text, so that a server can still route the error
/// by its `type`, `proc_id` or `specs`.
struct Lenient(Value);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::DeserializeSeed::deserialize(ValueSeed { strict: false }, d).map(Lenient)
    }
}

#[derive(Clone, Copy)]
struct ValueSeed {
    strict: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ValueSeed {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Value, E> {
        match std::str::from_utf8(v) {
            Ok(s) => Ok(Value::String(s.to_owned())),
            Err(_) if !self.strict => Ok(Value::String(String::from_utf8_lossy(v).into_owned())),
            Err(e) => Err(E::custom(format_args!(
                "a byte string of {} bytes is not UTF-8 text ({e})",
                v.len()
            ))),
        }
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(e) = seq.next_element_seed(self)? {
            v.push(e);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error as _;
        let mut m = serde_json::Map::new();
        loop {
            let k = if self.strict {
                match map.next_key::<String>()? {
                    Some(k) => k,
                    None => break,
                }
            } else {
                match map.next_key_seed(self)? {
                    Some(Value::String(k)) => k,
                    Some(k) => k.to_string(),
                    None => break,
                }
            };
            let v = map.next_value_seed(self)?;
            if self.strict && m.contains_key(&k) {
                return Err(A::Error::custom(format_args!(
                    "the key {k:?} is given twice"
                )));
            }
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

/// Decodes one MessagePack message: one value, taking the whole frame.
pub fn decode_msgpack(frame: &[u8]) -> Decoded {
    crate::sys::mem::note_request(frame.len());
    let read = || -> Result<Value, String> {
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(frame));
        let Strict(v) = Strict::deserialize(&mut de).map_err(|e| e.to_string())?;
        let used = de.get_ref().position();
        match frame.len() as u64 - used {
            0 => Ok(v),
            left => Err(format!(
                "{left} bytes follow the message's {used}: a frame holds one message"
            )),
        }
    };
    match read() {
        Ok(v) => Decoded::from_value(Ok(v)),
        Err(e) => {
            let err = format!("invalid MessagePack message: {e}");
            match rmp_serde::from_slice::<Lenient>(frame) {
                Ok(Lenient(v @ Value::Object(_))) => Decoded::refused(v, err),
                _ => Decoded::from_value(Err(err)),
            }
        }
    }
}

/// [`encode_msgpack`] as two parts whose concatenation is the message: a
/// large `ProcFdData`'s bytes are the second part, shared with the reply,
/// not copied. So sending a 256 MiB capture holds no second 256 MiB. When
/// the payload has [`Payload::more`], the message is these two parts and
/// then those bytes (the `bin` header counts them).
pub fn encode_msgpack_split(reply: &Reply) -> (Bytes, Bytes) {
    // The bytes are the last field: the message is the reply encoded with no
    // bytes, less that empty `bin`, then a `bin 32` header and the bytes.
    const EMPTY_BIN: [u8; 2] = [0xc4, 0x00];
    if let Reply::ProcFdData {
        proc_id,
        fd,
        start,
        stop,
        encoding,
        data,
    } = reply
    {
        if let Ok(len) = u32::try_from(data.len())
            && (data.bytes.len() > SPLIT_AT || data.more.is_some())
        {
            let empty = Reply::ProcFdData {
                proc_id: proc_id.clone(),
                fd: fd.clone(),
                start: *start,
                stop: *stop,
                encoding: *encoding,
                data: Payload::new(Bytes::new(), data.text),
            };
            let mut head = encode_msgpack(&empty);
            if head.ends_with(&EMPTY_BIN) {
                head.truncate(head.len() - EMPTY_BIN.len());
                head.push(0xc6);
                head.extend_from_slice(&len.to_be_bytes());
                return (head.into(), data.bytes.clone());
            }
        }
    }
    (encode_msgpack(reply).into(), Bytes::new())
}

/// The size of bytes from which [`encode_msgpack_split`] does not copy them.
const SPLIT_AT: usize = 64 * 1024;

/// Encodes one message as a MessagePack map with named fields.
pub fn encode_msgpack(reply: &Reply) -> Vec<u8> {
    // Serializing these types cannot fail: every map key is a string.
    rmp_serde::to_vec_named(reply).unwrap_or_else(|e| {
        rmp_serde::to_vec_named(&Reply::RequestError {
            msg: serde_json::json!({ "type": null }),
            err: format!("internal: cannot encode a reply: {e}"),
        })
        .unwrap_or_default()
    })
}

/// Serves one decoded request: the command reaches the agent before this
/// returns (so requests take effect in the order they came), and the future
/// gives the replies. `Registered` outside a handshake, and every malformed
/// message, get a `RequestError`.
pub fn serve(handle: &Handle, msg: Decoded) -> impl Future<Output = Vec<Reply>> + 'static {
    let pending: Pending = match &msg.request {
        Err(e) => Pending::Ready(vec![msg.error(e.clone())]),
        Ok(Request::Registered) => Pending::Ready(vec![msg.error("unexpected")]),
        Ok(Request::ProcStartRequest { specs }) => match start_input(specs) {
            Err(e) => Pending::Ready(vec![msg.error(e)]),
            Ok(input) => Pending::Start(Box::pin(handle.submit(input))),
        },
        Ok(Request::ProcidListRequest) => Pending::Ids(Box::pin(handle.proc_ids())),
        Ok(Request::ProcResultRequest { proc_id }) => {
            Pending::Result(proc_id.clone(), Box::pin(handle.result(proc_id)))
        }
        Ok(Request::ProcSignalRequest { proc_id, signum }) => {
            if *signum <= 0 || *signum > 64 {
                Pending::Ready(vec![msg.error(format!("invalid signal number: {signum}"))])
            } else {
                Pending::Proc(proc_id.clone(), Box::pin(handle.signal(proc_id, *signum)))
            }
        }
        Ok(Request::ProcDeleteRequest { proc_id }) => {
            Pending::Delete(proc_id.clone(), Box::pin(handle.delete(proc_id)))
        }
        Ok(Request::ProcFdDataRequest {
            proc_id,
            fd,
            start,
            stop,
        }) => {
            if stop.is_some_and(|s| s < *start) {
                Pending::Ready(vec![msg.error(format!(
                    "invalid range for fd {fd}: start {start} > stop {}",
                    stop.unwrap_or_default()
                ))])
            } else {
                Pending::FdData(
                    proc_id.clone(),
                    fd.clone(),
                    Box::pin(fetch(
                        handle.clone(),
                        proc_id.clone(),
                        fd.clone(),
                        *start,
                        *stop,
                    )),
                )
            }
        }
    };
    async move { pending.finish(msg).await }
}

type Boxed<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// A request's reply still to come.
enum Pending {
    Ready(Vec<Reply>),
    Start(Boxed<Result<Vec<ProcId>, StartError>>),
    Ids(Boxed<Vec<ProcId>>),
    Result(ProcId, Boxed<Option<ProcRes>>),
    Proc(ProcId, Boxed<Result<(), ProcError>>),
    Delete(ProcId, Boxed<Result<(), ProcError>>),
    FdData(
        ProcId,
        String,
        Boxed<Result<(crate::supervisor::FdData, Option<More>), FdDataError>>,
    ),
}

/// Reads `[start, stop)` of a capture for a reply: the whole range, or when
/// it is held in a file and longer than [`PIECE`], its first piece and the
/// rest as [`More`], read as it is sent.
async fn fetch(
    handle: Handle,
    proc_id: ProcId,
    fd: String,
    start: u64,
    stop: Option<u64>,
) -> Result<(crate::supervisor::FdData, Option<More>), FdDataError> {
    let want = stop.unwrap_or(u64::MAX);
    let first = handle
        .fd_data(
            &proc_id,
            &fd,
            start,
            Some(want.min(start.saturating_add(PIECE))),
        )
        .await?;
    if first.missing.is_some() || first.stop >= want.min(first.length) {
        return Ok((first, None));
    }
    if !first.in_file {
        // Held in memory anyway (at most its head and tail): read whole.
        return Ok((handle.fd_data(&proc_id, &fd, start, stop).await?, None));
    }
    // A file's bytes up to the length read stay there to be read.
    let to = want
        .min(first.length)
        .min(first.start.saturating_add(MAX_DATA));
    let more = More {
        handle,
        proc_id,
        fd,
        from: first.stop,
        to,
    };
    Ok((first, Some(more)))
}

impl Pending {
    async fn finish(self, msg: Decoded) -> Vec<Reply> {
        match self {
            Pending::Ready(r) => r,
            // Each started process reports itself (its running or error
            // result) through the notification path.
            Pending::Start(call) => match call.await {
                Ok(_) => vec![],
                Err(e) => vec![msg.error(e.to_string())],
            },
            Pending::Ids(call) => vec![Reply::ProcidList {
                proc_ids: call.await,
            }],
            Pending::Result(proc_id, call) => vec![match call.await {
                Some(res) => Reply::ProcResult {
                    proc_id,
                    res: Box::new(res),
                },
                None => Reply::ProcUnknown { proc_id },
            }],
            Pending::Proc(proc_id, call) => match call.await {
                Ok(()) => vec![],
                Err(e) => vec![proc_error(&msg, proc_id, e)],
            },
            // Success is told by the `ProcDelete` notification, as Procstar
            // does, so every connection hears of it once.
            Pending::Delete(proc_id, call) => match call.await {
                Ok(()) => vec![],
                Err(e) => vec![proc_error(&msg, proc_id, e)],
            },
            Pending::FdData(proc_id, fd, call) => match call.await {
                Err(FdDataError::Unknown(_)) => vec![Reply::ProcUnknown { proc_id }],
                Err(e) => vec![msg.error(e.to_string())],
                Ok((d, more)) => vec![fd_data_reply(&msg, proc_id, fd, d, more)],
            },
        }
    }
}

fn proc_error(msg: &Decoded, proc_id: ProcId, e: ProcError) -> Reply {
    match e {
        ProcError::Unknown(_) => Reply::ProcUnknown { proc_id },
        e => msg.error(e.to_string()),
    }
}

/// A range reply. The data must be exactly `[start, stop)`, as a peer that
/// stitches ranges expects: a range reaching into a head/tail capture's
/// dropped middle is cut where the middle starts, and one starting inside it
/// is an error that says which bytes are gone.
fn fd_data_reply(
    msg: &Decoded,
    proc_id: ProcId,
    fd: String,
    d: crate::supervisor::FdData,
    more: Option<More>,
) -> Reply {
    let text = d.encoding == Encoding::Utf8;
    match d.missing {
        Some(m) if m.start <= d.start => {
            // The whole dropped middle: the bytes asked for may end inside it.
            let gone = d.dropped.unwrap_or(m);
            msg.error(format!(
                "fd {fd}: bytes {}..{} of {} were dropped (head/tail capture); \
                 the next byte held is {}",
                gone.start, gone.end, d.length, gone.end
            ))
        }
        Some(m) => {
            let held = usize::try_from(m.start - d.start).unwrap_or(usize::MAX);
            Reply::ProcFdData {
                proc_id,
                fd,
                start: d.start,
                stop: m.start,
                encoding: d.encoding,
                data: Payload::new(d.data.slice(..held.min(d.data.len())), text),
            }
        }
        None => Reply::ProcFdData {
            proc_id,
            fd,
            start: d.start,
            stop: more.as_ref().map_or(d.stop, |m| m.to),
            encoding: d.encoding,
            data: Payload {
                bytes: d.data,
                text,
                more,
            },
        },
    }
}

/// Parses a start request's specs as a spec input.
fn start_input(specs: &serde_json::Map<String, Value>) -> Result<spec::Input, String> {
    // Borrowed, not a `json!` copy of every spec.
    #[derive(Serialize)]
    struct Specs<'a> {
        specs: &'a serde_json::Map<String, Value>,
    }
    let json = serde_json::to_vec(&Specs { specs }).map_err(|e| format!("specs: {e}"))?;
    spec::parse_input(&json).map_err(|e| without_position(e.to_string()))
}

/// `msg` without the " at line L column C" that serde_json puts at its end:
/// here it would count in the JSON the agent made of the message, which the
/// client never saw.
fn without_position(mut msg: String) -> String {
    if let Some(at) = msg.rfind(" at line ") {
        let tail = &msg[at + " at line ".len()..];
        let positional = tail.split_once(" column ").is_some_and(|(l, c)| {
            !l.is_empty()
                && !c.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && c.bytes().all(|b| b.is_ascii_digit())
        });
        if positional {
            msg.truncate(at);
        }
    }
    msg
}

/// The notifications for a batch of events, in the events' order: each
/// started or ended process's current result (asked for in one round trip),
/// deletions and shutdown-state changes.
///
/// A start is always told by a result of its own, and so is the end after
/// it, even when both fall in one batch and the two results are the same
/// final one: Procstar's server takes the first result after a start as the
/// start's answer and waits for another that is not running, so a process
/// that ended before its start was told must still send two. Repeats past
/// that (a resync after missed events over an end in the same batch) are
/// sent once, where the last of them was. The shutdown states seen come back too; `done` is
/// left to the caller to announce, as it decides when the agent is finished.
pub async fn notifications(
    handle: &Handle,
    events: Vec<Event>,
) -> (Vec<Reply>, Vec<ShutdownState>) {
    enum Slot {
        Result(ProcId, crate::supervisor::Call<Option<ProcRes>>),
        Reply(Reply),
        Gone,
    }
    let mut slots = Vec::with_capacity(events.len());
    let mut last: std::collections::HashMap<ProcId, usize> = Default::default();
    let mut states = Vec::new();
    for e in events {
        match e {
            Event::Started(id) => {
                // Not folded into a later result: see above.
                last.remove(&id);
                let call = handle.result(&id);
                slots.push(Slot::Result(id, call));
            }
            Event::Exited(id) => {
                if let Some(i) = last.insert(id.clone(), slots.len()) {
                    slots[i] = Slot::Gone;
                }
                let call = handle.result(&id);
                slots.push(Slot::Result(id, call));
            }
            Event::Deleted(id) => slots.push(Slot::Reply(Reply::ProcDelete { proc_id: id })),
            Event::Compressed(..) => {}
            Event::Missed(n) => {
                tracing::warn!("{n} events missed; sending every result");
                // A missed shutdown change would never come again. (Still
                // active: there was none to miss.)
                let s = handle.shutdown_state().await;
                states.push(s);
                if s != ShutdownState::Done && s != ShutdownState::Active {
                    slots.push(Slot::Reply(Reply::ShutDown { shutdown_state: s }));
                }
                for id in handle.proc_ids().await {
                    if let Some(i) = last.insert(id.clone(), slots.len()) {
                        slots[i] = Slot::Gone;
                    }
                    let call = handle.result(&id);
                    slots.push(Slot::Result(id, call));
                }
            }
            Event::Shutdown(s) => {
                states.push(s);
                if s != ShutdownState::Done {
                    slots.push(Slot::Reply(Reply::ShutDown { shutdown_state: s }));
                }
            }
        }
    }
    let mut replies = Vec::with_capacity(slots.len());
    for slot in slots {
        match slot {
            Slot::Result(proc_id, call) => {
                if let Some(res) = call.await {
                    replies.push(Reply::ProcResult {
                        proc_id,
                        res: Box::new(res),
                    });
                }
            }
            Slot::Reply(r) => replies.push(r),
            Slot::Gone => {}
        }
    }
    (replies, states)
}

/// The current result of each of `ids` (each once, in order; a process
/// deleted meanwhile is left out), asked for in one round trip.
pub async fn results(handle: &Handle, ids: Vec<ProcId>) -> Vec<Reply> {
    let mut seen = std::collections::HashSet::new();
    let calls: Vec<_> = ids
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .map(|id| {
            let call = handle.result(&id);
            (id, call)
        })
        .collect();
    let mut replies = Vec::with_capacity(calls.len());
    for (proc_id, call) in calls {
        if let Some(res) = call.await {
            replies.push(Reply::ProcResult {
                proc_id,
                res: Box::new(res),
            });
        }
    }
    replies
}

#[cfg(test)]
mod tests;
