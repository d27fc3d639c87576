//! The result of a process, in Procstar's JSON shape (`ProcRes`).
//!
//! `--print`/`--output` emit a [`ResMap`], `GET /procs` wraps it, and the
//! WebSocket protocol carries one [`ProcRes`] per `ProcResult`. Every type here
//! is `Serialize` and `Deserialize`, so tests and clients can read results back.
//!
//! chaperone adds a few extension fields that a Procstar client ignores:
//! [`ProcRes::failure`] (only when set), and `length` / `dropped` /
//! `compression` on captured fds (see [`FdRes`]). Without them the JSON has exactly Procstar's keys.
//!
//! Results are built and serialized for every client: outside tests,
//! `unwrap`, `expect` and `panic!` are denied here.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::metrics::{ProcStat, ProcStatm};
use crate::signal::signal_name;

// The kernel's `struct rusage` lives with the reap that reads it; `Rusage` converts it.
pub use crate::sys::wait::RawRusage;
// A process's perf counters live with the code that reads them.
pub use crate::metrics::perf::PerfRes;

/// Results keyed by proc ID, as printed by `--print` (sorted by ID).
pub type ResMap = BTreeMap<String, ProcRes>;

/// The result of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcRes {
    /// Lifecycle state; `Error` whenever `errors` is non-empty.
    pub state: State,
    /// Error messages, e.g. `"execve failed: …"`.
    #[serde(default)]
    pub errors: Vec<String>,
    /// The child's pid, if it was started.
    pub pid: Option<i32>,
    /// `/proc/<pid>/stat`: live while running, a zombie snapshot at exit.
    pub proc_stat: Option<ProcStat>,
    /// `/proc/<pid>/statm`: live while running; after exit, the last sample taken
    /// while it ran (`null` if it never was: it ended before the first sample).
    pub proc_statm: Option<ProcStatm>,
    /// cgroup accounting; chaperone does not use systemd, so always `null`.
    pub cgroup_accounting: Option<serde_json::Value>,
    /// Start, now, stop and elapsed times.
    #[serde(default)]
    pub times: Times,
    /// Wait status; `null` while running.
    pub status: Option<Status>,
    /// Resource usage from `wait4`; `null` while running.
    pub rusage: Option<Rusage>,
    /// Per fd name: `null` (not captured) or the capture's result.
    #[serde(default)]
    pub fds: BTreeMap<String, Option<FdRes>>,
    /// Extension: why the child failed before `execve`, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ChildFailure>,
    /// Extension: the working directory the child started in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extension: the umask the child started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    /// Extension: the environment the child was given (`NAME` → value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Extension: the spec's timeout, and whether and when it fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutRes>,
    /// Extension: perf counters, when the spec (or `--perf`) asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perf: Option<PerfRes>,
    /// Extension: `/proc/<pid>/io` (live while running, read at exit before reaping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_io: Option<crate::metrics::ProcIo>,
    /// Extension: the statm sampling behind `proc_statm`, with the peak seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statm_samples: Option<SamplesRes>,
}

/// Extension: what sampling `/proc/<pid>/statm` while the process ran saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplesRes {
    /// Samples taken (timer ticks plus live result requests).
    pub count: u64,
    /// When the last one was taken (RFC 3339).
    pub last_at: String,
    /// The largest `resident` seen in any sample, in bytes.
    pub peak_resident: u64,
    /// The largest `size` (virtual) seen in any sample, in bytes.
    pub peak_size: u64,
}

/// Extension: what a process's timeout did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeoutRes {
    /// Seconds after start when the signal is due.
    pub after: f64,
    /// The signal's name.
    pub signal: String,
    /// Seconds after the signal when SIGKILL follows, if any.
    pub kill_after: Option<f64>,
    /// Whether the signal was sent.
    pub fired: bool,
    /// When it was sent (RFC 3339), if it was.
    pub fired_at: Option<String>,
    /// Whether SIGKILL followed.
    pub killed: bool,
}

/// A process's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Started and not yet waited for.
    Running,
    /// Waited for, with no errors.
    Terminated,
    /// Any error occurred (takes precedence over the other two).
    Error,
}

/// Extension: a failure in the child between `fork` and `execve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildFailure {
    /// The setup step that failed: `"exec"`, `"dup_fd"`, `"close_fd"`, `"setsid"`, …
    pub stage: String,
    /// The `errno` it failed with.
    pub errno: i32,
    /// The target fd, for fd setup steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
}

/// A decoded wait status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The raw wait status.
    pub status: i32,
    /// The exit code, if the process exited.
    pub exit_code: Option<i32>,
    /// The terminating signal number, if a signal killed the process.
    pub signum: Option<i32>,
    /// The terminating signal's name, e.g. `"SIGTERM"`.
    pub signal: Option<String>,
    /// Whether a core was dumped.
    pub core_dump: bool,
}

impl Status {
    /// Decodes a raw wait status as `WIFEXITED`, `WEXITSTATUS`, `WTERMSIG`
    /// and `WCOREDUMP` would.
    ///
    /// Exactly one of `exit_code` and `signum` is set for a terminated
    /// process. A stopped or continued status (low seven bits `0x7f`), which
    /// chaperone never asks for, sets neither.
    #[doc(alias = "WIFEXITED")]
    #[must_use]
    pub fn from_wait_status(raw: i32) -> Status {
        let low = raw & 0x7f;
        let (exit_code, signum) = match low {
            0 => (Some((raw >> 8) & 0xff), None),
            0x7f => (None, None),
            sig => (None, Some(sig)),
        };
        Status {
            status: raw,
            exit_code,
            signum,
            signal: signum.and_then(signal_name).map(str::to_owned),
            core_dump: signum.is_some() && raw & 0x80 != 0,
        }
    }
}

/// Resource usage in Procstar's units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rusage {
    /// User CPU time, seconds.
    pub utime: f64,
    /// System CPU time, seconds.
    pub stime: f64,
    /// Maximum resident set size, **bytes**.
    pub maxrss: i64,
    /// Minor page faults.
    pub minflt: i64,
    /// Major page faults.
    pub majflt: i64,
    /// Swaps.
    pub nswap: i64,
    /// Block input operations.
    pub inblock: i64,
    /// Block output operations.
    pub oublock: i64,
    /// Voluntary context switches.
    pub nvcsw: i64,
    /// Involuntary context switches.
    pub nivcsw: i64,
}

impl Rusage {
    /// Converts kernel units: microseconds to seconds, KiB to bytes.
    pub fn from_raw(raw: &RawRusage) -> Rusage {
        Rusage {
            utime: raw.utime_us as f64 / 1e6,
            stime: raw.stime_us as f64 / 1e6,
            maxrss: raw.maxrss_kib.saturating_mul(1024),
            minflt: raw.minflt,
            majflt: raw.majflt,
            nswap: raw.nswap,
            inblock: raw.inblock,
            oublock: raw.oublock,
            nvcsw: raw.nvcsw,
            nivcsw: raw.nivcsw,
        }
    }
}

/// Wall-clock times (RFC 3339 strings, see
/// [`format_rfc3339`](crate::metrics::format_rfc3339)) and elapsed time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Times {
    /// When the process was started.
    pub start: String,
    /// When this result was produced.
    pub now: String,
    /// When the process was waited for; `null` while running.
    pub stop: Option<String>,
    /// Seconds from start to stop (or to now while running), monotonic clock.
    pub elapsed: f64,
}

/// The encoding of captured output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encoding {
    /// Text, lossily decoded as UTF-8.
    #[serde(rename = "utf-8")]
    Utf8,
    /// Bytes, as standard base64 with padding.
    #[serde(rename = "base64")]
    Base64,
}

/// Extension: a byte range of a stream that a head/tail capture cut out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Offset of the first dropped byte in the stream.
    pub start: u64,
    /// Offset one past the last dropped byte.
    pub stop: u64,
}

/// Extension: how a capture with `compress` in its spec is held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// The algorithm: `"zstd"`.
    pub algorithm: String,
    /// The compression level.
    pub level: i32,
    /// `"pending"` (the process runs, or compression is under way: readers get
    /// the uncompressed bytes meanwhile), `"done"` or `"failed"`.
    pub state: CompressionState,
    /// Bytes of compressed data held, once done; `null` before.
    pub compressed_length: Option<u64>,
    /// Why compression failed (the capture stays uncompressed); only when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Extension: where a capture's compression stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionState {
    /// Not compressed yet: the process runs or the compression is under way.
    Pending,
    /// Compressed; the capture is held compressed.
    Done,
    /// Compression failed; the capture is held uncompressed.
    Failed,
}

/// The result for one captured fd.
///
/// Serialized, internally tagged by `"type"`:
///
/// * `{"type":"text","text":…,"encoding":"utf-8"}`
/// * `{"type":"data","data":<base64>,"encoding":"base64"}`
/// * `{"type":"detached","length":N,"encoding":"utf-8"|"base64"}`
/// * `{"type":"error"}`
///
/// `length` on text and data (written only when bytes were dropped, so it
/// differs from what is held), and the [`FdExt`] keys, are chaperone
/// extensions. Text and data hold the raw bytes; the lossy UTF-8 decoding or
/// base64 encoding happens only when serializing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "FdResWire")]
pub enum FdRes {
    /// Output captured as UTF-8 text.
    Text {
        /// The captured bytes (without any dropped middle).
        bytes: Bytes,
        /// Total bytes the stream produced, including any dropped.
        length: u64,
        /// The extension keys.
        ext: FdExt,
    },
    /// Output captured as binary data (base64 in JSON).
    Data {
        /// The captured bytes (without any dropped middle).
        bytes: Bytes,
        /// Total bytes the stream produced, including any dropped.
        length: u64,
        /// The extension keys.
        ext: FdExt,
    },
    /// Output captured but not inlined; fetch it separately.
    Detached {
        /// Total bytes the stream produced.
        length: u64,
        /// How the data will be encoded when fetched.
        encoding: Encoding,
        /// The extension keys.
        ext: FdExt,
    },
    /// The capture failed.
    Error,
}

/// Extension keys of a captured fd's result, the same for text, data and
/// detached. Each is written only when it says something, in this order:
/// `dropped`, `held`, `limited`, `compression`, `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct FdExt {
    /// The byte range cut out of the middle, if any.
    pub dropped: Option<Dropped>,
    /// Bytes a memory capture holds (head plus tail), reported when some were
    /// dropped; `None`: not reported (all `length` bytes are held, or the
    /// capture is not in memory).
    pub held: Option<u64>,
    /// Bytes were dropped to keep within `--output-limit` (written only when
    /// true).
    pub limited: bool,
    /// How the capture is compressed, if its spec asks for it.
    pub compression: Option<Compression>,
    /// Where a kept capture file (mode `file`) is.
    pub path: Option<String>,
}

impl FdExt {
    /// How many keys [`FdExt::serialize_into`] writes.
    fn len(&self) -> usize {
        usize::from(self.dropped.is_some())
            + usize::from(self.held.is_some())
            + usize::from(self.limited)
            + usize::from(self.compression.is_some())
            + usize::from(self.path.is_some())
    }

    /// Writes the keys that say something into `map`.
    fn serialize_into<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        if let Some(d) = &self.dropped {
            map.serialize_entry("dropped", d)?;
        }
        if let Some(h) = &self.held {
            map.serialize_entry("held", h)?;
        }
        if self.limited {
            map.serialize_entry("limited", &true)?;
        }
        if let Some(c) = &self.compression {
            map.serialize_entry("compression", c)?;
        }
        if let Some(p) = &self.path {
            map.serialize_entry("path", p)?;
        }
        Ok(())
    }
}

impl FdRes {
    /// Total bytes the stream produced; `None` for a failed capture.
    pub fn length(&self) -> Option<u64> {
        match self {
            FdRes::Text { length, .. }
            | FdRes::Data { length, .. }
            | FdRes::Detached { length, .. } => Some(*length),
            FdRes::Error => None,
        }
    }

    /// The extension keys; `None` for a failed capture.
    pub fn ext(&self) -> Option<&FdExt> {
        match self {
            FdRes::Text { ext, .. } | FdRes::Data { ext, .. } | FdRes::Detached { ext, .. } => {
                Some(ext)
            }
            FdRes::Error => None,
        }
    }

    /// A complete text capture of `bytes`.
    pub fn text(bytes: impl Into<Bytes>) -> FdRes {
        let bytes = bytes.into();
        FdRes::Text {
            length: bytes.len() as u64,
            bytes,
            ext: FdExt::default(),
        }
    }

    /// A complete binary capture of `bytes`.
    pub fn data(bytes: impl Into<Bytes>) -> FdRes {
        let bytes = bytes.into();
        FdRes::Data {
            length: bytes.len() as u64,
            bytes,
            ext: FdExt::default(),
        }
    }
}

/// Serializes bytes as standard base64 without an intermediate `String`
/// (for serializers that implement `collect_str` by streaming, like
/// serde_json).
struct Base64Bytes<'a>(&'a [u8]);

impl Serialize for Base64Bytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Base64Display::new(self.0, &STANDARD))
    }
}

impl Serialize for FdRes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FdRes::Text { bytes, length, ext } => {
                // `length` only when it says more than the text (Procstar's
                // shape otherwise).
                let cut = *length != bytes.len() as u64;
                let mut map = serializer.serialize_map(Some(3 + usize::from(cut) + ext.len()))?;
                map.serialize_entry("type", "text")?;
                // A head and a tail are decoded apart: bytes on either side
                // of the dropped middle were never next to each other.
                let gap = ext
                    .dropped
                    .as_ref()
                    .and_then(|d| usize::try_from(d.start).ok())
                    .filter(|&c| c > 0 && c < bytes.len());
                let text: Cow<'_, str> = match gap {
                    Some(c) => Cow::Owned(
                        String::from_utf8_lossy(&bytes[..c]).into_owned()
                            + &String::from_utf8_lossy(&bytes[c..]),
                    ),
                    None => String::from_utf8_lossy(bytes),
                };
                map.serialize_entry("text", &text)?;
                map.serialize_entry("encoding", &Encoding::Utf8)?;
                if cut {
                    map.serialize_entry("length", length)?;
                }
                ext.serialize_into(&mut map)?;
                map.end()
            }
            FdRes::Data { bytes, length, ext } => {
                let cut = *length != bytes.len() as u64;
                let mut map = serializer.serialize_map(Some(3 + usize::from(cut) + ext.len()))?;
                map.serialize_entry("type", "data")?;
                map.serialize_entry("data", &Base64Bytes(bytes))?;
                map.serialize_entry("encoding", &Encoding::Base64)?;
                if cut {
                    map.serialize_entry("length", length)?;
                }
                ext.serialize_into(&mut map)?;
                map.end()
            }
            FdRes::Detached {
                length,
                encoding,
                ext,
            } => {
                let mut map = serializer.serialize_map(Some(3 + ext.len()))?;
                map.serialize_entry("type", "detached")?;
                map.serialize_entry("length", length)?;
                map.serialize_entry("encoding", encoding)?;
                ext.serialize_into(&mut map)?;
                map.end()
            }
            FdRes::Error => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("type", "error")?;
                map.end()
            }
        }
    }
}

/// The wire form of [`FdRes`], for deserializing.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum FdResWire {
    Text {
        text: String,
        #[serde(default)]
        length: Option<u64>,
        #[serde(flatten)]
        ext: FdExt,
    },
    Data {
        data: String,
        #[serde(default)]
        length: Option<u64>,
        #[serde(flatten)]
        ext: FdExt,
    },
    Detached {
        length: u64,
        encoding: Encoding,
        #[serde(flatten)]
        ext: FdExt,
    },
    Error,
}

impl TryFrom<FdResWire> for FdRes {
    type Error = base64::DecodeError;

    fn try_from(wire: FdResWire) -> Result<FdRes, base64::DecodeError> {
        Ok(match wire {
            FdResWire::Text { text, length, ext } => FdRes::Text {
                length: length.unwrap_or(text.len() as u64),
                bytes: Bytes::from(text.into_bytes()),
                ext,
            },
            FdResWire::Data { data, length, ext } => {
                let bytes = STANDARD.decode(data)?;
                FdRes::Data {
                    length: length.unwrap_or(bytes.len() as u64),
                    bytes: Bytes::from(bytes),
                    ext,
                }
            }
            FdResWire::Detached {
                length,
                encoding,
                ext,
            } => FdRes::Detached {
                length,
                encoding,
                ext,
            },
            FdResWire::Error => FdRes::Error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The contract's example `procstar --print` output.
    const EXAMPLE: &str = r#"{"hello": {
  "state": "terminated", "errors": [], "pid": 10637,
  "proc_stat": {"pid": 10637, "comm": "echo", "state": "Z", "ppid": 10631, "pgrp": 10637,
    "session": 10637, "tty_nr": [0, 0], "tpgid": null, "flags": 4227084, "minflt": 117,
    "cminflt": 0, "majflt": 0, "cmajflt": 0, "utime": 0.0, "stime": 0.0, "cutime": 0.0,
    "cstime": 0.0, "priority": 20, "nice": 0, "num_threads": 1,
    "starttime": "2026-11-22T02:18:03.869552201+00:00", "vsize": 0, "rss": 0,
    "rsslim": 18446744073709551615, "signal": [], "blocked": [], "sigignore": ["SIGUSR2"],
    "sigcatch": [], "wchan": 1, "exit_signal": "SIGCHLD", "processor": 0, "rt_priority": 0,
    "policy": 0, "delayacct_blkio_ticks": 0.0, "guest_time": 0.0, "cguest_time": 0,
    "exit_code": 0},
  "proc_statm": null, "cgroup_accounting": null,
  "times": {"start": "2026-11-22T02:18:03.866557435+00:00",
            "now": "2026-11-22T02:18:03.869582317+00:00",
            "stop": "2026-11-22T02:18:03.869572078+00:00", "elapsed": 0.003014553},
  "status": {"status": 0, "exit_code": 0, "signum": null, "signal": null, "core_dump": false},
  "rusage": {"utime": 0.000915, "stime": 0.0, "maxrss": 2277376, "minflt": 117, "majflt": 0,
             "nswap": 0, "inblock": 0, "oublock": 0, "nvcsw": 1, "nivcsw": 2},
  "fds": {"stderr": null, "stdout": {"type": "text", "text": "Hello, world.\n", "encoding": "utf-8"}}
}}"#;

    /// Checks that `got` has every value of `want` (numbers compared as
    /// f64, so `0` equals `0.0`), and records keys only `got` has.
    fn assert_covers(want: &Value, got: &Value, path: &str, extra: &mut Vec<String>) {
        match (want, got) {
            (Value::Object(w), Value::Object(g)) => {
                for (k, wv) in w {
                    let gv = g.get(k).unwrap_or_else(|| panic!("missing {path}.{k}"));
                    assert_covers(wv, gv, &format!("{path}.{k}"), extra);
                }
                extra.extend(
                    g.keys()
                        .filter(|k| !w.contains_key(*k))
                        .map(|k| format!("{path}.{k}")),
                );
            }
            (Value::Array(w), Value::Array(g)) => {
                assert_eq!(w.len(), g.len(), "{path}");
                for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                    assert_covers(wv, gv, &format!("{path}[{i}]"), extra);
                }
            }
            (Value::Number(w), Value::Number(g)) => {
                if w.is_u64() && g.is_u64() {
                    assert_eq!(w.as_u64(), g.as_u64(), "{path}");
                } else {
                    assert_eq!(w.as_f64(), g.as_f64(), "{path}");
                }
            }
            _ => assert_eq!(want, got, "{path}"),
        }
    }

    #[test]
    fn example_round_trips() {
        let original: Value = serde_json::from_str(EXAMPLE).unwrap();
        let map: ResMap = serde_json::from_str(EXAMPLE).unwrap();
        let res = &map["hello"];
        assert_eq!(res.state, State::Terminated);
        assert_eq!(res.pid, Some(10637));
        assert_eq!(res.rusage.unwrap().maxrss, 2277376);
        assert_eq!(
            res.fds["stdout"],
            Some(FdRes::text(&b"Hello, world.\n"[..]))
        );
        assert_eq!(res.fds["stderr"], None);
        assert_eq!(res.failure, None);

        let again = serde_json::to_value(&map).unwrap();
        let mut extra = Vec::new();
        assert_covers(&original, &again, "", &mut extra);
        assert_eq!(extra, Vec::<String>::new(), "Procstar's keys and no more");

        // And back again, to the same structure.
        let map2: ResMap = serde_json::from_value(again).unwrap();
        assert_eq!(map2, map);
    }

    #[test]
    fn error_result_shape() {
        let res = ProcRes {
            state: State::Error,
            errors: vec!["execve failed: /no/such/exe".into()],
            pid: Some(14331),
            proc_stat: None,
            proc_statm: None,
            cgroup_accounting: None,
            times: Times::default(),
            status: Some(Status::from_wait_status(16128)),
            rusage: None,
            fds: BTreeMap::new(),
            failure: Some(ChildFailure {
                stage: "execve".into(),
                errno: 2,
                fd: None,
            }),
            cwd: None,
            umask: None,
            env: None,
            timeout: None,
            proc_io: None,
            statm_samples: None,
            perf: None,
        };
        let v = serde_json::to_value(&res).unwrap();
        assert_eq!(v["state"], "error");
        assert_eq!(v["status"]["exit_code"], 63);
        assert_eq!(v["cgroup_accounting"], Value::Null);
        assert_eq!(v["failure"], json!({"stage": "execve", "errno": 2}));
        let back: ProcRes = serde_json::from_value(v).unwrap();
        assert_eq!(back, res);

        let plain = ProcRes {
            failure: None,
            ..res
        };
        let v = serde_json::to_value(&plain).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "cgroup_accounting",
                "errors",
                "fds",
                "pid",
                "proc_stat",
                "proc_statm",
                "rusage",
                "state",
                "status",
                "times"
            ]
        );
    }

    #[test]
    fn wait_status_exit_42() {
        let s = Status::from_wait_status(10752);
        assert_eq!(
            s,
            Status {
                status: 10752,
                exit_code: Some(42),
                signum: None,
                signal: None,
                core_dump: false
            }
        );
    }

    #[test]
    fn wait_status_sigterm() {
        let s = Status::from_wait_status(15);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"status":15,"exit_code":null,"signum":15,"signal":"SIGTERM","core_dump":false})
        );
    }

    #[test]
    fn wait_status_exit_3_and_core() {
        let s = Status::from_wait_status(768);
        assert_eq!((s.exit_code, s.signum), (Some(3), None));
        let s = Status::from_wait_status(0x80 | 11);
        assert_eq!(s.signal.as_deref(), Some("SIGSEGV"));
        assert!(s.core_dump);
        let s = Status::from_wait_status(0x137f); // stopped by SIGSTOP
        assert_eq!((s.exit_code, s.signum, s.core_dump), (None, None, false));
    }

    #[test]
    fn wait_status_matches_libc() {
        for raw in [
            0, 256, 10752, 65280, 9, 15, 0x86, 0x8b, 0x7f, 0x137f, 0xffff,
        ] {
            let s = Status::from_wait_status(raw);
            let exited = libc::WIFEXITED(raw);
            let signaled = libc::WIFSIGNALED(raw);
            assert_eq!(s.exit_code, exited.then(|| libc::WEXITSTATUS(raw)), "{raw}");
            assert_eq!(s.signum, signaled.then(|| libc::WTERMSIG(raw)), "{raw}");
            assert_eq!(s.core_dump, signaled && libc::WCOREDUMP(raw), "{raw}");
        }
    }

    #[test]
    fn rusage_units() {
        let r = Rusage::from_raw(&RawRusage {
            utime_us: 915,
            stime_us: 1_500_000,
            maxrss_kib: 2224,
            minflt: 117,
            nvcsw: 1,
            nivcsw: 2,
            ..RawRusage::default()
        });
        assert_eq!(r.utime, 0.000915);
        assert_eq!(r.stime, 1.5);
        assert_eq!(r.maxrss, 2277376);
        assert_eq!((r.minflt, r.nvcsw, r.nivcsw), (117, 1, 2));
    }

    #[test]
    fn lossy_utf8() {
        let fd = FdRes::text(&b"abc\x80\x80def"[..]);
        let v = serde_json::to_value(&fd).unwrap();
        let text = v["text"].as_str().unwrap();
        assert_eq!(text, "abc\u{FFFD}\u{FFFD}def");
        assert_eq!(text.chars().count(), 8);
        assert_eq!(text, String::from_utf8_lossy(b"abc\x80\x80def"));
        assert_eq!(v.get("length"), None, "nothing dropped: Procstar's shape");
        assert_eq!(v["encoding"], "utf-8");
    }

    #[test]
    fn base64_round_trip() {
        let fd = FdRes::data(&b"Hello, world."[..]);
        let s = serde_json::to_string(&fd).unwrap();
        assert_eq!(
            s,
            r#"{"type":"data","data":"SGVsbG8sIHdvcmxkLg==","encoding":"base64"}"#
        );
        let back: FdRes = serde_json::from_str(&s).unwrap();
        assert_eq!(back, fd);
        // Procstar's form, without length.
        let back: FdRes = serde_json::from_str(
            r#"{"type":"data","data":"SGVsbG8sIHdvcmxkLg==","encoding":"base64"}"#,
        )
        .unwrap();
        assert_eq!(back, fd);
        let bad =
            serde_json::from_str::<FdRes>(r#"{"type":"data","data":"!!","encoding":"base64"}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn binary_data_round_trip() {
        let bytes: Vec<u8> = (0..=255u8)
            .flat_map(|b| std::iter::repeat_n(b, 3))
            .collect();
        let fd = FdRes::data(bytes.clone());
        let back: FdRes = serde_json::from_str(&serde_json::to_string(&fd).unwrap()).unwrap();
        assert_eq!(back, fd);
        let text = FdRes::text("naïve ✓\n");
        let back: FdRes = serde_json::from_str(&serde_json::to_string(&text).unwrap()).unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn detached_shape() {
        let fd = FdRes::Detached {
            length: 1234,
            encoding: Encoding::Utf8,
            ext: FdExt::default(),
        };
        assert_eq!(
            serde_json::to_string(&fd).unwrap(),
            r#"{"type":"detached","length":1234,"encoding":"utf-8"}"#
        );
        let back: FdRes =
            serde_json::from_str(r#"{"type":"detached","length":1234,"encoding":"utf-8"}"#)
                .unwrap();
        assert_eq!(back, fd);
        let fd = FdRes::Detached {
            length: 5,
            encoding: Encoding::Base64,
            ext: FdExt::default(),
        };
        assert_eq!(
            serde_json::to_value(&fd).unwrap(),
            json!({"type":"detached","length":5,"encoding":"base64"})
        );
    }

    #[test]
    fn kept_file_path_is_written_and_read_back() {
        let fd = FdRes::Detached {
            length: 7,
            encoding: Encoding::Base64,
            ext: FdExt {
                path: Some("/var/log/job.stdout".into()),
                ..FdExt::default()
            },
        };
        let v = serde_json::to_value(&fd).unwrap();
        assert_eq!(
            v,
            json!({"type":"detached","length":7,"encoding":"base64","path":"/var/log/job.stdout"})
        );
        assert_eq!(serde_json::from_value::<FdRes>(v).unwrap(), fd);
        let fd = FdRes::Text {
            bytes: Bytes::from_static(b"ab"),
            length: 9,
            ext: FdExt {
                dropped: Some(Dropped { start: 1, stop: 8 }),
                held: None,
                limited: false,
                compression: None,
                path: Some("out".into()),
            },
        };
        let v = serde_json::to_value(&fd).unwrap();
        assert_eq!(v["path"], "out");
        assert_eq!(serde_json::from_value::<FdRes>(v).unwrap(), fd);
    }

    #[test]
    fn error_and_dropped_shapes() {
        assert_eq!(
            serde_json::to_string(&FdRes::Error).unwrap(),
            r#"{"type":"error"}"#
        );
        let back: FdRes = serde_json::from_str(r#"{"type":"error"}"#).unwrap();
        assert_eq!(back, FdRes::Error);

        let fd = FdRes::Text {
            bytes: Bytes::from_static(b"headtail"),
            length: 100,
            ext: FdExt {
                dropped: Some(Dropped { start: 4, stop: 96 }),
                compression: None,
                path: None,
                held: None,
                limited: false,
            },
        };
        let v = serde_json::to_value(&fd).unwrap();
        assert_eq!(
            v,
            json!({"type":"text","text":"headtail","encoding":"utf-8","length":100,
                   "dropped":{"start":4,"stop":96}})
        );
        assert_eq!(serde_json::from_value::<FdRes>(v).unwrap(), fd);
    }

    #[test]
    fn a_head_and_a_tail_are_decoded_apart() {
        // "é" whose first byte is the head and whose last is the tail: not
        // a character, two replaced bytes.
        let fd = FdRes::Text {
            bytes: bytes::Bytes::from_static(b"\xc3\xa9"),
            length: 6,
            ext: FdExt {
                dropped: Some(Dropped { start: 1, stop: 5 }),
                ..FdExt::default()
            },
        };
        let v = serde_json::to_value(&fd).unwrap();
        assert_eq!(v["text"], "\u{fffd}\u{fffd}");
        // Whole characters on either side stay.
        let fd = FdRes::Text {
            bytes: bytes::Bytes::from_static("é|é".as_bytes()),
            length: 9,
            ext: FdExt {
                dropped: Some(Dropped { start: 3, stop: 5 }),
                ..FdExt::default()
            },
        };
        assert_eq!(serde_json::to_value(&fd).unwrap()["text"], "é|é");
    }

    #[test]
    fn compression_shape_round_trips() {
        let fd = FdRes::Detached {
            length: 100,
            encoding: Encoding::Base64,
            ext: FdExt {
                dropped: None,
                held: None,
                limited: false,
                compression: Some(Compression {
                    algorithm: "zstd".into(),
                    level: 1,
                    state: CompressionState::Done,
                    compressed_length: Some(42),
                    error: None,
                }),
                path: None,
            },
        };
        let v = serde_json::to_value(&fd).unwrap();
        assert_eq!(
            v,
            json!({"type":"detached","length":100,"encoding":"base64",
                   "compression":{"algorithm":"zstd","level":1,"state":"done",
                                  "compressed_length":42}})
        );
        assert_eq!(serde_json::from_value::<FdRes>(v).unwrap(), fd);
        let pending = FdRes::Text {
            bytes: Bytes::from_static(b"x"),
            length: 1,
            ext: FdExt {
                dropped: None,
                held: None,
                limited: false,
                compression: Some(Compression {
                    algorithm: "zstd".into(),
                    level: 3,
                    state: CompressionState::Failed,
                    compressed_length: None,
                    error: Some("disk full".into()),
                }),
                path: None,
            },
        };
        let v = serde_json::to_value(&pending).unwrap();
        assert_eq!(
            v["compression"],
            json!({"algorithm":"zstd","level":3,"state":"failed","compressed_length":null,
                   "error":"disk full"})
        );
        assert_eq!(serde_json::from_value::<FdRes>(v).unwrap(), pending);
    }

    #[test]
    fn held_and_limited_shapes() {
        let fd = FdRes::Data {
            bytes: Bytes::from_static(b"ht"),
            length: 100,
            ext: FdExt {
                dropped: Some(Dropped { start: 1, stop: 99 }),
                compression: None,
                path: None,
                held: Some(2),
                limited: true,
            },
        };
        let v = serde_json::to_value(&fd).unwrap();
        assert_eq!(
            v,
            json!({"type":"data","data":"aHQ=","encoding":"base64","length":100,
                   "dropped":{"start":1,"stop":99},"held":2,"limited":true})
        );
        assert_eq!(serde_json::from_value::<FdRes>(v).unwrap(), fd);
        let fd = FdRes::Detached {
            length: 7,
            encoding: Encoding::Utf8,
            ext: FdExt {
                held: Some(7),
                ..FdExt::default()
            },
        };
        let s = serde_json::to_string(&fd).unwrap();
        assert_eq!(
            s,
            r#"{"type":"detached","length":7,"encoding":"utf-8","held":7}"#
        );
        assert_eq!(serde_json::from_str::<FdRes>(&s).unwrap(), fd);
    }

    #[test]
    fn text_key_order_is_procstars() {
        let s = serde_json::to_string(&FdRes::text("hi")).unwrap();
        assert_eq!(s, r#"{"type":"text","text":"hi","encoding":"utf-8"}"#);
    }

    #[test]
    fn length_is_written_only_when_bytes_were_dropped() {
        let fd = FdRes::Text {
            bytes: Bytes::from_static(b"ab"),
            length: 10,
            ext: FdExt {
                dropped: Some(Dropped { start: 1, stop: 9 }),
                held: Some(2),
                ..FdExt::default()
            },
        };
        let v = serde_json::to_value(&fd).unwrap();
        assert_eq!(v["length"], 10);
        assert_eq!(serde_json::from_value::<FdRes>(v).unwrap(), fd);
        let back: FdRes =
            serde_json::from_str(r#"{"type":"text","text":"hi","encoding":"utf-8"}"#).unwrap();
        assert_eq!(back.length(), Some(2), "an absent length is the text's");
    }
}
