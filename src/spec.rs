//! The Procstar spec format: the JSON a client sends to start processes.
//!
//! This module mirrors the "Input (spec)" section of
//! `/work/shared/design/procstar-contract.md` as serde types, plus checks that the
//! types alone cannot express ([`validate`]). Every spec Procstar 0.7.5 accepts parses
//! here to the same meaning; Procstar's defects are fixed rather than copied:
//!
//! * an empty `argv` is an error ([`SpecError::EmptyArgv`]), not a panic;
//! * a proc id repeated inside one JSON object is an error (`duplicate proc id: <id>`)
//!   instead of silently keeping the last one, and [`Specs`] keeps input order;
//! * NUL bytes in `exe`, `argv`, `env.vars` and file paths are rejected up front instead
//!   of failing later in the child.
//!
//! chaperone's extensions are new, optional fields an old client never sends:
//!
//! * `capture.head` and `capture.tail`: how many bytes of the start and of the end of a
//!   stream a capture keeps (see `src/capture/`);
//! * `capture.encoding` also accepts the string `"base64"`, which means the same as
//!   `null`. It is serialized as `null`, as Procstar does.
//!
//! Serializing a parsed [`Input`] gives JSON that parses back to the same value, so an
//! echoed request (`RequestError.msg`) is valid input. (Procstar writes
//! `env.inherit` as `"All"`, which is not.)
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A proc id: the key of a proc spec in [`Specs`], unique among live procs.
pub type ProcId = String;

/// Environment variables the agent itself uses for secrets. They are removed from
/// every child's environment, whatever `env` says (see [`EnvSpec::build`]).
pub const SECRET_ENV_VARS: [&str; 3] = [
    "PROCSTAR_AGENT_CERT",
    "PROCSTAR_AGENT_KEY",
    "PROCSTAR_AGENT_TOKEN",
];

/// The largest `head + tail` a capture may ask for, in bytes: the most a single Rust
/// allocation may hold.
pub const MAX_CAPTURE_WINDOW: u64 = isize::MAX as u64;

/// The `capture.compress` values the agent knows.
pub const COMPRESS_ALGORITHMS: &[&str] = &[crate::capture::compress::ALGORITHM];

/// The `capture.compress_level` values accepted.
pub const COMPRESS_LEVELS: std::ops::RangeInclusive<i64> = (*crate::capture::compress::LEVELS
    .start() as i64)
    ..=(*crate::capture::compress::LEVELS.end() as i64);

/// The `capture.compress_level` used when a spec gives none.
pub const DEFAULT_COMPRESS_LEVEL: i64 = crate::capture::compress::DEFAULT_LEVEL as i64;

/// The default `mode` of a `file` fd spec: `0o666`, before the umask.
pub const DEFAULT_FILE_MODE: u32 = 0o666;

//------------------------------------------------------------------------------
// Errors
//------------------------------------------------------------------------------

/// Why a spec was rejected. Any of these fails the whole request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The JSON did not parse or did not match the spec schema; the text is serde's
    /// message, e.g. "unknown field `procs`, expected `specs` at line 1 column 8".
    #[error("{0}")]
    Json(String),

    /// A field's value is not allowed.
    #[error("proc {proc_id}: {field}: {msg}")]
    BadField {
        /// The process.
        proc_id: ProcId,
        /// The field, e.g. `fds.stdout.file.mode`.
        field: String,
        /// What is wrong.
        msg: String,
    },

    /// A proc id appears twice in one request, or is already in use by the agent.
    #[error("duplicate proc id: {proc_id}")]
    DuplicateProcId {
        /// The repeated proc id.
        proc_id: ProcId,
    },

    /// `argv` is missing or empty.
    #[error("proc {proc_id}: argv is empty")]
    EmptyArgv {
        /// The proc whose argv is empty.
        proc_id: ProcId,
    },

    /// A string that must become a C string contains a NUL byte.
    #[error("proc {proc_id}: {field} contains a nul byte")]
    Nul {
        /// The proc whose spec holds the string.
        proc_id: ProcId,
        /// Where the string is, e.g. `exe`, `argv[1]`, `env.vars.HOME`,
        /// `fds.stdout.file.path`.
        field: String,
    },

    /// An `env.vars` name is empty or contains `=`, so it cannot be passed to execve.
    #[error("proc {proc_id}: bad env var name: {name:?}")]
    BadEnvName {
        /// The proc whose `env.vars` holds the name.
        proc_id: ProcId,
        /// The offending name.
        name: String,
    },

    /// An fd name is neither `stdin`, `stdout`, `stderr` nor a decimal integer.
    /// [`parse_fd_name`] leaves `proc_id` empty, and the message then omits it.
    #[error("{}bad fd name: {name}", in_proc(proc_id))]
    BadFdName {
        /// The proc whose spec holds the name.
        proc_id: ProcId,
        /// The offending name.
        name: String,
    },

    /// One proc lists the same fd twice, possibly under two aliases (`"1"` and
    /// `"stdout"`).
    #[error("proc {proc_id}: duplicate fd: {fd}")]
    DuplicateFd {
        /// The proc whose `fds` repeats the fd.
        proc_id: ProcId,
        /// The repeated fd number.
        fd: i32,
    },

    /// A `pipe-write` fd that no `pipe-read` in the same request reads from.
    #[error("unmatched write pipe: {proc_id} {fd}")]
    UnmatchedWritePipe {
        /// The writing proc.
        proc_id: ProcId,
        /// The writing proc's fd number.
        fd: i32,
    },

    /// A `pipe-read` naming a proc and fd that is not a `pipe-write` in the same
    /// request.
    #[error("unmatched read pipe: {proc_id} {fd}")]
    UnmatchedReadPipe {
        /// The proc id the `pipe-read` names.
        proc_id: ProcId,
        /// The fd name the `pipe-read` names, as written.
        fd: String,
    },

    /// Two `pipe-read`s read from the same `pipe-write`.
    #[error("duplicate read pipe: {proc_id} {fd}")]
    DuplicatePipeRead {
        /// The writing proc.
        proc_id: ProcId,
        /// The writing proc's fd number.
        fd: i32,
    },

    /// A capture's `compress` names no known algorithm, or its `compress_level` is
    /// out of range or given without `compress`.
    #[error("proc {proc_id}: fd {fd}: capture {field}: {msg}")]
    BadCompress {
        /// The proc with the capture.
        proc_id: ProcId,
        /// The captured fd's number.
        fd: i32,
        /// `compress` or `compress_level`.
        field: &'static str,
        /// What is wrong with it.
        msg: String,
    },

    /// A capture's `path`, `dir` or `memory` does not fit its `mode`: mode `file`
    /// needs exactly one of `path` and `dir`; other modes take none of the three.
    #[error("proc {proc_id}: fd {fd}: capture {field}: {msg}")]
    BadCapture {
        /// The proc with the capture.
        proc_id: ProcId,
        /// The captured fd's number.
        fd: i32,
        /// The offending field (`path`, `dir`, `memory`).
        field: &'static str,
        /// What is wrong with it.
        msg: &'static str,
    },

    /// `perf` names an event chaperone does not know.
    #[error("proc {proc_id}: perf: unknown event {name:?} (known: {known})", known = crate::metrics::perf::known_names())]
    BadPerfEvent {
        /// The proc whose spec holds the name.
        proc_id: ProcId,
        /// The unknown event name.
        name: String,
    },

    /// A capture's `head + tail` overflows or exceeds [`MAX_CAPTURE_WINDOW`].
    #[error("proc {proc_id}: fd {fd}: capture head plus tail is too large (max {max} bytes)", max = MAX_CAPTURE_WINDOW)]
    CaptureTooLarge {
        /// The proc with the capture.
        proc_id: ProcId,
        /// The captured fd's number.
        fd: i32,
    },
}

//------------------------------------------------------------------------------
// Input and Specs
//------------------------------------------------------------------------------

/// A request to start procs: the top-level JSON object, with exactly one key, `specs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The procs to start, by proc id, in input order.
    pub specs: Specs,
}

/// Proc specs by proc id, in the order the JSON object lists them.
///
/// Deserializing rejects a proc id that appears twice in one object with
/// `duplicate proc id: <id>`. Serializes as a JSON object in the same order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Specs(Vec<(ProcId, ProcSpec)>);

impl Specs {
    /// An empty set of specs.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Each spec, mutably, in order (ids stay as they are).
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = &mut ProcSpec> {
        self.0.iter_mut().map(|(_, s)| s)
    }

    /// Appends a spec, or fails with [`SpecError::DuplicateProcId`] if `proc_id` is
    /// already present.
    pub fn try_insert(&mut self, proc_id: ProcId, spec: ProcSpec) -> Result<(), SpecError> {
        if self.contains(&proc_id) {
            return Err(SpecError::DuplicateProcId { proc_id });
        }
        self.0.push((proc_id, spec));
        Ok(())
    }

    /// The spec for `proc_id`, if present.
    pub fn get(&self, proc_id: &str) -> Option<&ProcSpec> {
        self.0.iter().find(|(id, _)| id == proc_id).map(|(_, s)| s)
    }

    /// Whether `proc_id` is present.
    pub fn contains(&self, proc_id: &str) -> bool {
        self.0.iter().any(|(id, _)| id == proc_id)
    }

    /// The number of specs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no specs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The proc ids and specs, in input order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&ProcId, &ProcSpec)> {
        self.0.iter().map(|(id, spec)| (id, spec))
    }

    /// The proc ids and specs as a slice, in input order.
    pub fn as_slice(&self) -> &[(ProcId, ProcSpec)] {
        &self.0
    }

    /// The proc ids and specs, in input order.
    pub fn into_vec(self) -> Vec<(ProcId, ProcSpec)> {
        self.0
    }
}

impl IntoIterator for Specs {
    type Item = (ProcId, ProcSpec);
    type IntoIter = std::vec::IntoIter<(ProcId, ProcSpec)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Specs {
    type Item = &'a (ProcId, ProcSpec);
    type IntoIter = std::slice::Iter<'a, (ProcId, ProcSpec)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for Specs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (id, spec) in &self.0 {
            map.serialize_entry(id, spec)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Specs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecsVisitor;

        impl<'de> Visitor<'de> for SpecsVisitor {
            type Value = Specs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from proc id to proc spec")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Specs, A::Error> {
                // Cap the preallocation: the size hint comes from the client.
                let mut specs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
                let mut seen = HashSet::new();
                while let Some(id) = map.next_key::<ProcId>()? {
                    if !seen.insert(id.clone()) {
                        return Err(de::Error::custom(format_args!("duplicate proc id: {id}")));
                    }
                    let spec = map.next_value::<ProcSpec>()?;
                    specs.push((id, spec));
                }
                Ok(Specs(specs))
            }
        }

        deserializer.deserialize_map(SpecsVisitor)
    }
}

//------------------------------------------------------------------------------
// Proc spec
//------------------------------------------------------------------------------

/// How to start one proc. Every field is optional, but [`validate`] requires a
/// non-empty `argv`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcSpec {
    /// Accepted and ignored, as by Procstar.
    pub id: Option<String>,
    /// The path given to execve (no PATH search); `argv[0]` when absent.
    pub exe: Option<String>,
    /// The argument vector, including `argv[0]`.
    pub argv: Vec<String>,
    /// The child's environment.
    pub env: EnvSpec,
    /// fd name and what to do with that fd, applied in list order. fds not listed are
    /// inherited. In JSON, a list of two-element lists `[fd_name, fd_spec]`, or
    /// (an extension) an object `{fd_name: fd_spec}`, applied in the order written.
    #[serde(deserialize_with = "fds_list_or_object")]
    pub fds: Vec<(String, FdSpec)>,
    /// systemd scope and slice properties: accepted and kept, but unused.
    pub systemd_properties: Option<serde_json::Value>,

    // chaperone extensions: the child's start state (docs/spec.md). Values are
    // parsed loosely and checked per proc when its plan is built, so a bad value
    // fails only that proc, with an error naming the proc and the field.
    /// Working directory of the child.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// File mode creation mask (JSON has no octal: 18 is 0o022). Default: the agent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<i64>,
    /// Signal delivered to the child when the agent dies (`PR_SET_PDEATHSIG`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdeath_sig: Option<SignalRef>,
    /// Signals blocked and ignored at exec.
    #[serde(skip_serializing_if = "SignalsSpec::is_empty")]
    pub signals: SignalsSpec,
    /// Resource limits: lower-case `RLIMIT_*` name → `[soft, hard]` (`null` is unlimited).
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_rlimits"
    )]
    pub rlimits: BTreeMap<String, RlimitSpec>,
    /// Whether the child calls `setsid()` (default true, as Procstar).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setsid: Option<bool>,
    /// Process group instead of a new session: 0 for a new group led by the child,
    /// or the id of an existing group to join.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_group: Option<i64>,
    /// User to run as (name or uid); needs privilege.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<IdRef>,
    /// Group to run as (name or gid); defaults to the user's primary group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<IdRef>,
    /// Signal the process after a time, then kill it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
    /// Signals from the API and timeouts go to the whole process group.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kill_group: bool,
    /// perf counters: `true`, `false` or a list of event names (default: the
    /// agent's `--perf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf: Option<crate::metrics::perf::PerfSpec>,
}

/// A signal given by name (`"SIGTERM"`, `"TERM"`) or number (`15`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SignalRef {
    /// A signal number.
    Number(i64),
    /// A signal name.
    Name(String),
}

impl std::fmt::Display for SignalRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalRef::Number(n) => write!(f, "{n}"),
            SignalRef::Name(s) => write!(f, "{s:?}"),
        }
    }
}

/// A user or group given by name or numeric id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IdRef {
    /// A numeric id.
    Id(i64),
    /// A name to look up.
    Name(String),
}

/// `"signals": {"mask": [...], "ignore": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsSpec {
    /// Signals blocked at exec.
    pub mask: Vec<SignalRef>,
    /// Signals ignored (`SIG_IGN`) at exec.
    pub ignore: Vec<SignalRef>,
}

impl SignalsSpec {
    /// Whether nothing is blocked or ignored.
    pub fn is_empty(&self) -> bool {
        self.mask.is_empty() && self.ignore.is_empty()
    }
}

/// One resource limit: `[soft, hard]`, or a single value for both; `null` is
/// unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RlimitSpec {
    /// `[soft, hard]`.
    Pair(Option<i64>, Option<i64>),
    /// One value for soft and hard.
    Both(Option<i64>),
}

/// `"timeout": {"after": s, "signal": "SIGTERM", "kill_after": s}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSpec {
    /// Seconds after start when `signal` is sent.
    pub after: f64,
    /// The signal (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalRef>,
    /// Seconds after `signal` when SIGKILL follows (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_after: Option<f64>,
}

/// `fds` as Procstar's list of `[name, spec]` pairs, or as an object of
/// `name: spec` in the order written.
/// The most entries an fd list may have: far past any fd table a child can
/// have, and short of what would let one spec hold the agent's memory.
pub const MAX_FD_ENTRIES: usize = 65_536;

fn fds_list_or_object<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, FdSpec)>, D::Error> {
    use serde::de::Error as _;
    /// One `[fd, spec]` entry, refused by its length when it has not two.
    struct Pair(String, FdSpec);
    impl<'de> Deserialize<'de> for Pair {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Pair, D::Error> {
            struct PairVisitor;
            impl<'de> serde::de::Visitor<'de> for PairVisitor {
                type Value = Pair;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an [fd, spec] pair")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Pair, A::Error> {
                    let short = |n| {
                        A::Error::custom(format_args!(
                            "fds: an entry is [fd, spec]; this one has {n} element{}",
                            if n == 1 { "" } else { "s" }
                        ))
                    };
                    let name = a.next_element::<String>()?.ok_or_else(|| short(0))?;
                    let spec = a.next_element::<FdSpec>()?.ok_or_else(|| short(1))?;
                    if a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                        return Err(A::Error::custom(format_args!(
                            "fds: an entry is [fd, spec]; the one for {name:?} has more than two elements"
                        )));
                    }
                    Ok(Pair(name, spec))
                }
            }
            d.deserialize_seq(PairVisitor)
        }
    }
    fn too_many<E: serde::de::Error>() -> E {
        E::custom(format_args!(
            "fds: more than {MAX_FD_ENTRIES} entries (a child has at most one per fd)"
        ))
    }
    struct Fds;
    impl<'de> serde::de::Visitor<'de> for Fds {
        type Value = Vec<(String, FdSpec)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of [fd, spec] pairs, or an object of fd: spec")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut fds = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
            while let Some(Pair(name, spec)) = a.next_element::<Pair>()? {
                if fds.len() == MAX_FD_ENTRIES {
                    return Err(too_many());
                }
                fds.push((name, spec));
            }
            Ok(fds)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut fds = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
            while let Some(e) = a.next_entry::<String, FdSpec>()? {
                if fds.len() == MAX_FD_ENTRIES {
                    return Err(too_many());
                }
                fds.push(e);
            }
            Ok(fds)
        }
    }
    d.deserialize_any(Fds)
}

impl ProcSpec {
    /// The path to execute: `exe`, or else `argv[0]`, or `None` if both are missing.
    pub fn exe(&self) -> Option<&str> {
        self.exe
            .as_deref()
            .or_else(|| self.argv.first().map(String::as_str))
    }
}

//------------------------------------------------------------------------------
// Env spec
//------------------------------------------------------------------------------

/// The child's environment: what to inherit from the agent, then what to set or unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvSpec {
    /// Which of the agent's variables the child inherits.
    pub inherit: EnvInherit,
    /// chaperone extension: set HOME, USER, LOGNAME and SHELL for the spec's `user`
    /// (applied after `inherit`, before `vars`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub user_env: bool,
    /// Variables to set (a string) or unset (`null`), applied after `inherit`.
    #[serde(deserialize_with = "unique_vars")]
    pub vars: BTreeMap<String, Option<String>>,
    /// chaperone extension: whether the result carries the environment the
    /// child got (`env`). Default: the agent's `--report-env` (off), since an
    /// environment can hold credentials and results go to the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<bool>,
}

/// Which of the agent's environment variables a child inherits.
///
/// In JSON: `true` (all, the default), `false` (none), or a list of names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EnvInherit {
    /// Inherit every variable (`true`).
    #[default]
    All,
    /// Inherit nothing (`false`).
    None,
    /// Inherit only the listed variables that exist.
    Names(Vec<String>),
}

impl Serialize for EnvInherit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => serializer.serialize_bool(true),
            Self::None => serializer.serialize_bool(false),
            Self::Names(names) => {
                let mut seq = serializer.serialize_seq(Some(names.len()))?;
                for name in names {
                    seq.serialize_element(name)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for EnvInherit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InheritVisitor;

        impl<'de> Visitor<'de> for InheritVisitor {
            type Value = EnvInherit;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a list of env var names")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvInherit, E> {
                Ok(if v { EnvInherit::All } else { EnvInherit::None })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EnvInherit, A::Error> {
                let mut names = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(EnvInherit::Names(names))
            }
        }

        deserializer.deserialize_any(InheritVisitor)
    }
}

impl EnvSpec {
    /// Builds the child's environment from the agent's, `parent` (typically
    /// `std::env::vars_os()`).
    ///
    /// 1. `inherit` selects from `parent`, keeping its order. Only the first of
    ///    several entries with one name is kept, as `getenv` would see it.
    /// 2. `vars` is applied in name order: a string replaces an existing variable in
    ///    place or appends a new one; `null` removes the variable.
    /// 3. The agent's secrets, [`SECRET_ENV_VARS`], are removed. This happens last, so
    ///    a secret is dropped even when `vars` sets it explicitly: the contract says
    ///    they are always removed.
    pub fn build<I>(&self, parent: I) -> Vec<(OsString, OsString)>
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let wanted: Option<HashSet<&OsStr>> = match &self.inherit {
            EnvInherit::All => None,
            EnvInherit::None => Some(HashSet::new()),
            EnvInherit::Names(names) => Some(names.iter().map(OsStr::new).collect()),
        };
        // A `None` value marks a variable that `vars` removed.
        let mut env: Vec<(OsString, Option<OsString>)> = Vec::new();
        let mut index: HashMap<OsString, usize> = HashMap::new();
        if !matches!(self.inherit, EnvInherit::None) {
            for (name, value) in parent {
                let keep = wanted.as_ref().is_none_or(|w| w.contains(name.as_os_str()));
                if keep && !index.contains_key(&name) {
                    index.insert(name.clone(), env.len());
                    env.push((name, Some(value)));
                }
            }
        }

        for (name, value) in &self.vars {
            let value = value.as_deref().map(OsString::from);
            match index.get(OsStr::new(name)).and_then(|&i| env.get_mut(i)) {
                Some(slot) => slot.1 = value,
                None if value.is_some() => {
                    index.insert(OsString::from(name), env.len());
                    env.push((OsString::from(name), value));
                }
                None => {}
            }
        }

        env.into_iter()
            .filter(|(name, _)| !SECRET_ENV_VARS.iter().any(|s| OsStr::new(s) == name))
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect()
    }
}

//------------------------------------------------------------------------------
// Fd spec
//------------------------------------------------------------------------------

/// What to do with one of the child's fds. Externally tagged, lower-case names, as in
/// the contract's fd_spec table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum FdSpec {
    /// Leave the fd as the agent has it: `"inherit"` or `{"inherit": null}`.
    Inherit,
    /// Close the fd in the child: `"close"`. Only meaningful for fds 0–2; no other
    /// agent fd reaches a child, so closing an fd ≥ 3 is a no-op (docs/spec.md).
    Close,
    /// Open `/dev/null` onto the fd: `{"null": {"flags": F}}`. The bare string
    /// `"null"` is rejected.
    Null {
        /// How to open `/dev/null`.
        #[serde(default)]
        flags: OpenFlag,
    },
    /// Open a file in the child onto the fd:
    /// `{"file": {"path": P, "flags": F, "mode": M}}`.
    File {
        /// The path to open.
        path: String,
        /// How to open it.
        #[serde(default)]
        flags: OpenFlag,
        /// The permission bits for a created file, before the umask; JSON writes
        /// `0o644` as 420.
        #[serde(default = "default_file_mode")]
        mode: u32,
    },
    /// `dup2(fd, this fd)` in the child, using the child's fd table at that point of
    /// the list: `{"dup": {"fd": N}}`.
    Dup {
        /// The fd to duplicate.
        fd: i32,
    },
    /// Capture what the child writes to the fd:
    /// `{"capture": {"mode": …, "encoding": …, "attached": …}}`.
    Capture {
        /// Where the agent keeps the data.
        #[serde(default)]
        mode: CaptureMode,
        /// How the result presents the data.
        #[serde(default)]
        encoding: Encoding,
        /// Whether the result carries the data inline (`true`) or only its length.
        #[serde(default = "default_attached")]
        attached: bool,
        /// chaperone extension: keep this many bytes from the start of the stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<u64>,
        /// chaperone extension: keep this many bytes from the end of the stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<u64>,
        /// chaperone extension: compress the capture when the process finishes;
        /// only `"zstd"` is known (checked by [`validate`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compress: Option<String>,
        /// chaperone extension: the zstd level, in [`COMPRESS_LEVELS`] (default
        /// [`DEFAULT_COMPRESS_LEVEL`]); only with `compress`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compress_level: Option<i64>,
        /// chaperone extension, mode `file`: the file to keep the stream in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// chaperone extension, mode `file`: a directory the agent names the file in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dir: Option<String>,
        /// chaperone extension, mode `file`: also keep the head/tail memory capture.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        memory: bool,
    },
    /// The write end of a pipe to a `pipe-read` of another proc in the same request:
    /// `"pipe-write"`.
    PipeWrite,
    /// The read end of the pipe from proc `proc_id`'s fd `fd`, which must be a
    /// `pipe-write` in the same request: `{"pipe-read": {"proc_id": ID, "fd": NAME}}`.
    PipeRead {
        /// The writing proc.
        proc_id: ProcId,
        /// The writing proc's fd name.
        fd: String,
    },
}

fn default_file_mode() -> u32 {
    DEFAULT_FILE_MODE
}

fn default_attached() -> bool {
    true
}

/// Where a capture keeps its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// An unlinked temporary file (`"tempfile"`, the default).
    #[default]
    Tempfile,
    /// A pipe read into agent memory (`"memory"`).
    Memory,
    /// chaperone extension: a named file the agent writes from a pipe and keeps
    /// after the process is deleted (`"file"`, with `path` or `dir`).
    File,
}

/// How a capture's bytes are presented in results.
///
/// In JSON: `null` (the default) is base64 and `"utf-8"` is lossy UTF-8 text. As a
/// chaperone extension, `"base64"` is accepted too; it is always written as `null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// Raw bytes, base64-encoded (`null`).
    #[default]
    Base64,
    /// Lossy UTF-8 text; invalid bytes become U+FFFD (`"utf-8"`).
    Utf8,
}

impl Serialize for Encoding {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Base64 => serializer.serialize_none(),
            Self::Utf8 => serializer.serialize_str("utf-8"),
        }
    }
}

impl<'de> Deserialize<'de> for Encoding {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const VARIANTS: &[&str] = &["utf-8", "base64"];
        match Option::<String>::deserialize(deserializer)?.as_deref() {
            None | Some("base64") => Ok(Self::Base64),
            Some("utf-8") => Ok(Self::Utf8),
            Some(other) => Err(de::Error::unknown_variant(other, VARIANTS)),
        }
    }
}

/// How `null` and `file` fd specs open their file. PascalCase in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenFlag {
    /// `Read` for fd 0, `Write` for fds 1 and 2, `ReadWrite` otherwise.
    #[default]
    Default,
    /// Open an existing file for reading.
    Read,
    /// Create or truncate a file for writing.
    Write,
    /// Create a new file for writing; it must not exist.
    Create,
    /// Truncate an existing file for writing; it must exist.
    Replace,
    /// Append to an existing file.
    Append,
    /// Create a file or append to an existing one.
    CreateAppend,
    /// Create or truncate a file for reading and writing.
    ReadWrite,
}

impl OpenFlag {
    /// The open(2) flags for opening onto child fd `fd`, per the contract's table.
    /// The caller adds `O_CLOEXEC` or whatever else it needs.
    pub fn oflags(self, fd: i32) -> i32 {
        use libc::{O_APPEND, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};
        match self {
            Self::Default => match fd {
                0 => O_RDONLY,
                1 | 2 => O_WRONLY | O_CREAT | O_TRUNC,
                _ => O_RDWR | O_CREAT | O_TRUNC,
            },
            Self::Read => O_RDONLY,
            Self::Write => O_WRONLY | O_CREAT | O_TRUNC,
            Self::Create => O_WRONLY | O_CREAT | O_TRUNC | O_EXCL,
            Self::Replace => O_WRONLY | O_TRUNC,
            Self::Append => O_WRONLY | O_APPEND,
            Self::CreateAppend => O_WRONLY | O_CREAT | O_APPEND,
            Self::ReadWrite => O_RDWR | O_CREAT | O_TRUNC,
        }
    }
}

//------------------------------------------------------------------------------
// Fd names
//------------------------------------------------------------------------------

/// `"proc <id>: "`, or nothing when the proc id is not known (empty).
fn in_proc(proc_id: &str) -> String {
    if proc_id.is_empty() {
        String::new()
    } else {
        format!("proc {proc_id}: ")
    }
}

/// A [`SpecError::BadFdName`] for `name` in proc `proc_id`.
fn bad_fd_name(proc_id: &str, name: &str) -> SpecError {
    SpecError::BadFdName {
        proc_id: proc_id.to_owned(),
        name: name.to_owned(),
    }
}

/// Parses an fd name: `"stdin"`, `"stdout"` and `"stderr"` are 0, 1 and 2; a decimal
/// integer (also negative, like `"-1"`, which fails later in the child with EBADF) is
/// that number. Anything else is [`SpecError::BadFdName`] with an empty `proc_id`
/// ("bad fd name: bogus"); [`validate`] names the proc.
pub fn parse_fd_name(name: &str) -> Result<i32, SpecError> {
    match name {
        "stdin" => Ok(0),
        "stdout" => Ok(1),
        "stderr" => Ok(2),
        _ => name.parse::<i32>().map_err(|_| bad_fd_name("", name)),
    }
}

/// The normalised name of fd `fd`, which keys results: `"stdin"`, `"stdout"` and
/// `"stderr"` for 0, 1 and 2, else the decimal number.
pub fn fd_name(fd: i32) -> String {
    match fd {
        0 => "stdin".to_owned(),
        1 => "stdout".to_owned(),
        2 => "stderr".to_owned(),
        _ => fd.to_string(),
    }
}

//------------------------------------------------------------------------------
// Parsing and validation
//------------------------------------------------------------------------------

fn unique_vars<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Option<String>>, D::Error> {
    unique_keys(d, "env.vars")
}

fn unique_rlimits<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, RlimitSpec>, D::Error> {
    unique_keys(d, "rlimits")
}

/// A JSON object as a map, refusing a key given twice (which JSON parsers
/// take last-wins, silently); the error names `field`.
fn unique_keys<'de, D, V>(d: D, field: &'static str) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: serde::Deserialize<'de>,
{
    struct Unique<V>(&'static str, std::marker::PhantomData<V>);
    impl<'de, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = m.next_key::<String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "{}: {k:?} is given twice",
                        self.0
                    )));
                }
                let v = m.next_value()?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique(field, std::marker::PhantomData))
}

/// Parses a request's JSON. Schema errors become [`SpecError::Json`] with serde's
/// message. Call [`validate`] (or [`validate_with_existing`]) on the result.
pub fn parse_input(json: &[u8]) -> Result<Input, SpecError> {
    // Procstar's format is objects only; serde would take `[{…}]` as the
    // fields of a request in order.
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) => {
            return Err(SpecError::Json(
                "a request is a JSON object, {\"specs\": {ID: SPEC, …}}".into(),
            ));
        }
    }
    serde_json::from_slice(json).map_err(|e| {
        let msg = e.to_string();
        SpecError::Json(locate_error(json, &e, &msg).unwrap_or(msg))
    })
}

/// For a type error inside one proc's spec, the message with the proc (and the
/// fd entry) it is in named first: serde reports only a line and column, and
/// says "expected a boolean" without saying whose. Found by decoding each proc
/// (and each fd) of the request on its own, on the error path only.
fn locate_error(json: &[u8], e: &serde_json::Error, msg: &str) -> Option<String> {
    if !e.is_data() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    // The same error, decoded from a value (which has no position to report).
    let same = |err: serde_json::Error| msg.starts_with(&err.to_string());
    for (id, spec) in v.get("specs")?.as_object()? {
        let Err(err) = serde_json::from_value::<ProcSpec>(spec.clone()) else {
            continue;
        };
        if !same(err) {
            continue;
        }
        for entry in spec
            .get("fds")
            .and_then(|f| f.as_array())
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(fd)) = (entry.get(0), entry.get(1)) else {
                continue;
            };
            if serde_json::from_value::<FdSpec>(fd.clone()).is_err() {
                let name = name
                    .as_str()
                    .map_or_else(|| name.to_string(), str::to_string);
                return Some(format!("proc {id}: fd {name}: {msg}"));
            }
        }
        return Some(format!("proc {id}: {msg}"));
    }
    None
}

/// Checks what the types cannot: see [`validate_with_existing`], with no existing procs.
pub fn validate(input: &Input) -> Result<(), SpecError> {
    validate_with_existing(input, |_| false)
}

/// Checks a parsed request against the contract, given which proc ids the agent
/// already has (`existing(id)` is true for those). Returns the first problem found,
/// in input order:
///
/// * a proc id that already exists;
/// * an empty `argv`;
/// * a NUL byte in `exe`, `argv`, an `env.vars` name or value, or a file path;
/// * an `env.vars` name that is empty or contains `=`;
/// * an unknown event name in `perf`;
/// * a bad fd name (also in a `pipe-read`'s `fd`);
/// * an fd listed twice in one proc, including aliases (`"1"` and `"stdout"`);
/// * a capture whose `head + tail` exceeds [`MAX_CAPTURE_WINDOW`];
/// * a `pipe-read` that names no `pipe-write` of this request, or a second
///   `pipe-read` of the same `pipe-write`;
/// * a `pipe-write` that no `pipe-read` of this request reads.
///
/// Pipe ends are compared by fd number, so `"1"` matches `"stdout"`.
pub fn validate_with_existing(
    input: &Input,
    existing: impl Fn(&str) -> bool,
) -> Result<(), SpecError> {
    // Write ends in input order, and whether a pipe-read has claimed each one.
    let mut writes: Vec<(&str, i32)> = Vec::new();
    let mut write_index: HashMap<(&str, i32), usize> = HashMap::new();

    for (proc_id, spec) in input.specs.iter() {
        if existing(proc_id) {
            return Err(SpecError::DuplicateProcId {
                proc_id: proc_id.clone(),
            });
        }
        validate_strings(proc_id, spec)?;
        if let Some(name) = spec.perf.as_ref().and_then(|p| p.unknown_event()) {
            return Err(SpecError::BadPerfEvent {
                proc_id: proc_id.clone(),
                name: name.to_owned(),
            });
        }

        let mut seen = HashSet::new();
        for (name, fd_spec) in &spec.fds {
            let fd = parse_fd_name(name).map_err(|_| bad_fd_name(proc_id, name))?;
            if !seen.insert(fd) {
                return Err(SpecError::DuplicateFd {
                    proc_id: proc_id.clone(),
                    fd,
                });
            }
            match fd_spec {
                FdSpec::File { path, .. } if path.contains('\0') => {
                    return Err(SpecError::Nul {
                        proc_id: proc_id.clone(),
                        field: format!("fds.{name}.file.path"),
                    });
                }
                // Only permission bits: not the file type, which open ignores,
                // and setuid/setgid/sticky are 0o7000, allowed as open allows.
                FdSpec::File { mode, .. } if *mode > 0o7777 => {
                    return Err(SpecError::BadField {
                        proc_id: proc_id.clone(),
                        field: format!("fds.{name}.file.mode"),
                        msg: format!("{mode:#o} is not a file mode (at most 0o7777)"),
                    });
                }
                FdSpec::Capture {
                    head,
                    tail,
                    compress,
                    compress_level,
                    mode,
                    path,
                    dir,
                    memory,
                    ..
                } => {
                    check_capture_target(proc_id, name, fd, *mode, path, dir, *memory)?;
                    let window = head.unwrap_or(0).checked_add(tail.unwrap_or(0));
                    if window.is_none_or(|w| w > MAX_CAPTURE_WINDOW) {
                        return Err(SpecError::CaptureTooLarge {
                            proc_id: proc_id.clone(),
                            fd,
                        });
                    }
                    check_compress(proc_id, fd, compress.as_deref(), *compress_level)?;
                }
                FdSpec::PipeWrite => {
                    write_index.insert((proc_id.as_str(), fd), writes.len());
                    writes.push((proc_id.as_str(), fd));
                }
                _ => {}
            }
        }
    }

    let mut claimed = vec![false; writes.len()];
    for (proc_id, spec) in input.specs.iter() {
        for (_, fd_spec) in &spec.fds {
            let FdSpec::PipeRead {
                proc_id: from_id,
                fd: from_name,
            } = fd_spec
            else {
                continue;
            };
            let from_fd = parse_fd_name(from_name).map_err(|_| bad_fd_name(proc_id, from_name))?;
            let slot = write_index
                .get(&(from_id.as_str(), from_fd))
                .and_then(|&i| claimed.get_mut(i));
            match slot {
                None => {
                    return Err(SpecError::UnmatchedReadPipe {
                        proc_id: from_id.clone(),
                        fd: from_name.clone(),
                    });
                }
                Some(true) => {
                    return Err(SpecError::DuplicatePipeRead {
                        proc_id: from_id.clone(),
                        fd: from_fd,
                    });
                }
                Some(c) => *c = true,
            }
        }
    }
    if let Some((&(proc_id, fd), _)) = writes.iter().zip(&claimed).find(|(_, c)| !**c) {
        return Err(SpecError::UnmatchedWritePipe {
            proc_id: proc_id.to_owned(),
            fd,
        });
    }
    Ok(())
}

/// Checks a capture's `compress` and `compress_level`.
fn check_compress(
    proc_id: &str,
    fd: i32,
    compress: Option<&str>,
    level: Option<i64>,
) -> Result<(), SpecError> {
    let bad = |field, msg: String| SpecError::BadCompress {
        proc_id: proc_id.to_owned(),
        fd,
        field,
        msg,
    };
    match compress {
        Some(c) if !COMPRESS_ALGORITHMS.contains(&c) => {
            return Err(bad(
                "compress",
                format!("unknown algorithm {c:?} (expected one of {COMPRESS_ALGORITHMS:?})"),
            ));
        }
        None if level.is_some() => {
            return Err(bad("compress_level", "given without compress".to_string()));
        }
        _ => {}
    }
    match level {
        Some(l) if !COMPRESS_LEVELS.contains(&l) => Err(bad(
            "compress_level",
            format!(
                "{l} out of range {}..={}",
                COMPRESS_LEVELS.start(),
                COMPRESS_LEVELS.end()
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks `path`, `dir` and `memory` of a capture against its mode.
fn check_capture_target(
    proc_id: &str,
    name: &str,
    fd: i32,
    mode: CaptureMode,
    path: &Option<String>,
    dir: &Option<String>,
    memory: bool,
) -> Result<(), SpecError> {
    let bad = |field, msg| SpecError::BadCapture {
        proc_id: proc_id.to_owned(),
        fd,
        field,
        msg,
    };
    if mode != CaptureMode::File {
        let extra = [
            ("path", path.is_some()),
            ("dir", dir.is_some()),
            ("memory", memory),
        ];
        if let Some((field, _)) = extra.into_iter().find(|(_, set)| *set) {
            return Err(bad(field, "only mode \"file\" takes it"));
        }
        return Ok(());
    }
    let (field, value) = match (path, dir) {
        (Some(_), Some(_)) => return Err(bad("path", "give either path or dir, not both")),
        (None, None) => return Err(bad("path", "mode \"file\" needs a path or a dir")),
        (Some(p), None) => ("path", p),
        (None, Some(d)) => ("dir", d),
    };
    if value.is_empty() {
        return Err(bad(field, "is empty"));
    }
    if value.contains('\0') {
        return Err(SpecError::Nul {
            proc_id: proc_id.to_owned(),
            field: format!("fds.{name}.capture.{field}"),
        });
    }
    Ok(())
}

/// Checks argv, exe and env.vars of one proc.
fn validate_strings(proc_id: &str, spec: &ProcSpec) -> Result<(), SpecError> {
    let nul = |field: String| SpecError::Nul {
        proc_id: proc_id.to_owned(),
        field,
    };
    if spec.argv.is_empty() {
        return Err(SpecError::EmptyArgv {
            proc_id: proc_id.to_owned(),
        });
    }
    if spec.exe.as_deref().is_some_and(|e| e.contains('\0')) {
        return Err(nul("exe".to_owned()));
    }
    if let Some(i) = spec.argv.iter().position(|a| a.contains('\0')) {
        return Err(nul(format!("argv[{i}]")));
    }
    for (name, value) in &spec.env.vars {
        if name.contains('\0') {
            return Err(nul(format!("env.vars name {name:?}")));
        }
        if name.is_empty() || name.contains('=') {
            return Err(SpecError::BadEnvName {
                proc_id: proc_id.to_owned(),
                name: name.clone(),
            });
        }
        if value.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(nul(format!("env.vars.{name}")));
        }
    }
    Ok(())
}

//------------------------------------------------------------------------------
// Tests
//------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = r#"{"specs": {
  "build": {
    "exe": "/usr/bin/bash",
    "argv": ["build-step", "-c", "echo \"$0 in $PWD as $GREETING\"; echo oops >&2; head -c 4 /dev/zero >&3; exit 3"],
    "env": {"inherit": ["PATH", "HOME"], "vars": {"GREETING": "hello", "HOME": null}},
    "fds": [
      ["stdin",  {"null": {"flags": "Read"}}],
      ["stdout", {"capture": {"mode": "memory",   "encoding": "utf-8", "attached": true}}],
      ["stderr", {"capture": {"mode": "tempfile", "encoding": "utf-8", "attached": false}}],
      ["3",      {"capture": {"mode": "memory",   "encoding": null}}],
      ["4",      {"file": {"path": "/tmp/example/fd4.log", "flags": "CreateAppend", "mode": 420}}],
      ["5",      "close"]
    ],
    "systemd_properties": {
      "scope": {"oom_policy": "kill", "runtime_max_usec": 60000000},
      "slice": {"memory_accounting": true, "memory_max": 1073741824, "memory_swap_max": 0,
                "tasks_accounting": true, "tasks_max": 64}}
  },
  "producer": {"argv": ["/usr/bin/seq", "3"], "fds": [["stdout", "pipe-write"]]},
  "consumer": {"argv": ["/usr/bin/tac"],
               "fds": [["stdin", {"pipe-read": {"proc_id": "producer", "fd": "stdout"}}],
                       ["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]}
}}"#;

    fn parse(json: &str) -> Result<Input, SpecError> {
        parse_input(json.as_bytes())
    }

    fn json_err(json: &str) -> String {
        match parse(json) {
            Err(SpecError::Json(msg)) => msg,
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }

    /// Parses `{"fds": [["stdout", <fd>]]}` as proc `p` and returns the fd spec.
    fn fd(fd_json: &str) -> Result<FdSpec, SpecError> {
        let input = parse(&format!(
            r#"{{"specs": {{"p": {{"argv": ["x"], "fds": [["stdout", {fd_json}]]}}}}}}"#
        ))?;
        Ok(input.specs.get("p").unwrap().fds[0].1.clone())
    }

    fn validated(json: &str) -> Result<(), SpecError> {
        validate(&parse(json)?)
    }

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn parse_accepts_contract_example() {
        let input = parse(EXAMPLE).unwrap();
        validate(&input).unwrap();
        let ids: Vec<_> = input.specs.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["build", "producer", "consumer"]);

        let build = input.specs.get("build").unwrap();
        assert_eq!(build.exe(), Some("/usr/bin/bash"));
        assert_eq!(
            build.env.inherit,
            EnvInherit::Names(vec!["PATH".into(), "HOME".into()])
        );
        assert_eq!(build.env.vars.get("HOME"), Some(&None));
        assert_eq!(build.fds.len(), 6);
        assert_eq!(
            build.fds[0],
            (
                "stdin".into(),
                FdSpec::Null {
                    flags: OpenFlag::Read
                }
            )
        );
        assert_eq!(
            build.fds[2].1,
            FdSpec::Capture {
                mode: CaptureMode::Tempfile,
                encoding: Encoding::Utf8,
                attached: false,
                head: None,
                tail: None,
                compress: None,
                compress_level: None,
                path: None,
                dir: None,
                memory: false,
            }
        );
        assert_eq!(
            build.fds[4].1,
            FdSpec::File {
                path: "/tmp/example/fd4.log".into(),
                flags: OpenFlag::CreateAppend,
                mode: 0o644
            }
        );
        assert_eq!(build.fds[5].1, FdSpec::Close);
        assert!(build.systemd_properties.is_some());

        let consumer = input.specs.get("consumer").unwrap();
        assert_eq!(consumer.exe(), Some("/usr/bin/tac"));
    }

    #[test]
    fn serialize_round_trips_contract_example() {
        let input = parse(EXAMPLE).unwrap();
        let json = serde_json::to_string(&input).unwrap();
        assert_eq!(parse(&json).unwrap(), input);
        // Order is kept and inherit is written as valid input.
        assert!(json.find("\"build\"").unwrap() < json.find("\"producer\"").unwrap());
        let all = serde_json::to_value(EnvSpec::default()).unwrap();
        assert_eq!(all, serde_json::json!({"inherit": true, "vars": {}}));
    }

    #[test]
    fn parse_rejects_unknown_top_level_key() {
        let msg = json_err(r#"{"procs": {}}"#);
        assert!(
            msg.contains("unknown field `procs`, expected `specs`"),
            "{msg}"
        );
    }

    #[test]
    fn type_errors_name_the_proc_and_fd() {
        let msg = json_err(
            r#"{"specs": {"ok": {"argv": ["x"]},
                 "p": {"argv": ["x"], "fds": [["stdin", {"null": {}}],
                       ["stdout", {"capture": {"mode": "memory", "attached": "yes"}}]]}}}"#,
        );
        assert!(
            msg.starts_with("proc p: fd stdout: invalid type: string \"yes\", expected a boolean"),
            "{msg}"
        );
        assert!(msg.contains("at line 3"), "keeps serde's position: {msg}");
        let msg = json_err(r#"{"specs": {"q": {"argv": ["x"], "kill_group": 1}}}"#);
        assert!(
            msg.starts_with("proc q: invalid type: integer `1`"),
            "{msg}"
        );
        // Syntax and top-level errors are left as serde reports them.
        let msg = json_err(r#"{"specs": {"p": "#);
        assert!(msg.starts_with("EOF while parsing"), "{msg}");
    }

    #[test]
    fn parse_rejects_unknown_proc_field() {
        let msg = json_err(r#"{"specs": {"p": {"argv": ["x"], "workdir": "/"}}}"#);
        assert!(msg.contains("unknown field `workdir`"), "{msg}");
    }

    #[test]
    fn parse_rejects_duplicate_proc_id_in_one_object() {
        let msg = json_err(r#"{"specs": {"a": {"argv": ["x"]}, "a": {"argv": ["y"]}}}"#);
        assert!(msg.starts_with("duplicate proc id: a"), "{msg}");
    }

    #[test]
    fn parse_rejects_wrong_types() {
        json_err(r#"{"specs": {"p": {"argv": "x"}}}"#);
        json_err(r#"{"specs": {"p": {"argv": ["x"], "fds": [["stdout"]]}}}"#);
        json_err(r#"{"specs": {"p": {"argv": ["x"], "env": {"inherit": "yes"}}}}"#);
        json_err(r#"{"specs": []}"#);
        json_err("not json");
    }

    #[test]
    fn fd_spec_parses_every_variant() {
        assert_eq!(fd(r#""inherit""#).unwrap(), FdSpec::Inherit);
        assert_eq!(fd(r#"{"inherit": null}"#).unwrap(), FdSpec::Inherit);
        assert_eq!(fd(r#""close""#).unwrap(), FdSpec::Close);
        assert_eq!(
            fd(r#"{"null": {"flags": "Write"}}"#).unwrap(),
            FdSpec::Null {
                flags: OpenFlag::Write
            }
        );
        assert_eq!(
            fd(r#"{"file": {"path": "/x"}}"#).unwrap(),
            FdSpec::File {
                path: "/x".into(),
                flags: OpenFlag::Default,
                mode: 0o666
            }
        );
        assert_eq!(fd(r#"{"dup": {"fd": 2}}"#).unwrap(), FdSpec::Dup { fd: 2 });
        assert_eq!(
            fd(r#"{"capture": {"mode": "memory", "encoding": "utf-8", "attached": false, "head": 10, "tail": 20}}"#)
                .unwrap(),
            FdSpec::Capture {
                mode: CaptureMode::Memory,
                encoding: Encoding::Utf8,
                attached: false,
                head: Some(10),
                tail: Some(20),
                compress: None,
                compress_level: None,
                path: None,
                dir: None,
                memory: false,
            }
        );
        assert_eq!(fd(r#""pipe-write""#).unwrap(), FdSpec::PipeWrite);
        assert_eq!(
            fd(r#"{"pipe-read": {"proc_id": "a", "fd": "1"}}"#).unwrap(),
            FdSpec::PipeRead {
                proc_id: "a".into(),
                fd: "1".into()
            }
        );
    }

    #[test]
    fn fd_spec_rejects_bare_null_and_bad_forms() {
        assert!(fd(r#""null""#).is_err());
        assert!(fd(r#""capture""#).is_err());
        assert!(fd(r#"{"dup": {"fd": "2"}}"#).is_err());
        assert!(fd(r#"{"dup": {"fd": 2, "extra": 1}}"#).is_err());
        assert!(fd(r#"{"file": {"path": "/x", "mode": -1}}"#).is_err());
        assert!(fd(r#"{"null": {"flags": "read"}}"#).is_err());
        assert!(fd(r#"{"capture": {"encoding": "latin-1"}}"#).is_err());
        assert!(fd(r#""pipe_write""#).is_err());
    }

    #[test]
    fn capture_has_contract_defaults() {
        assert_eq!(
            fd(r#"{"capture": {}}"#).unwrap(),
            FdSpec::Capture {
                mode: CaptureMode::Tempfile,
                encoding: Encoding::Base64,
                attached: true,
                head: None,
                tail: None,
                compress: None,
                compress_level: None,
                path: None,
                dir: None,
                memory: false,
            }
        );
        assert_eq!(
            fd(r#"{"capture": {"encoding": "base64"}}"#).unwrap(),
            fd(r#"{"capture": {"encoding": null}}"#).unwrap()
        );
    }

    #[test]
    fn capture_serializes_like_procstar() {
        let v = serde_json::to_value(fd(r#"{"capture": {}}"#).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"capture": {"mode": "tempfile", "encoding": null, "attached": true}})
        );
        let v = serde_json::to_value(FdSpec::PipeWrite).unwrap();
        assert_eq!(v, serde_json::json!("pipe-write"));
    }

    #[test]
    fn open_flag_oflags_follow_contract_table() {
        use libc::{O_APPEND, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};
        assert_eq!(OpenFlag::Default.oflags(0), O_RDONLY);
        assert_eq!(OpenFlag::Default.oflags(1), O_WRONLY | O_CREAT | O_TRUNC);
        assert_eq!(OpenFlag::Default.oflags(2), O_WRONLY | O_CREAT | O_TRUNC);
        assert_eq!(OpenFlag::Default.oflags(7), O_RDWR | O_CREAT | O_TRUNC);
        assert_eq!(OpenFlag::Read.oflags(1), O_RDONLY);
        assert_eq!(OpenFlag::Write.oflags(0), O_WRONLY | O_CREAT | O_TRUNC);
        assert_eq!(
            OpenFlag::Create.oflags(1),
            O_WRONLY | O_CREAT | O_TRUNC | O_EXCL
        );
        assert_eq!(OpenFlag::Replace.oflags(1), O_WRONLY | O_TRUNC);
        assert_eq!(OpenFlag::Append.oflags(1), O_WRONLY | O_APPEND);
        assert_eq!(
            OpenFlag::CreateAppend.oflags(1),
            O_WRONLY | O_CREAT | O_APPEND
        );
        assert_eq!(OpenFlag::ReadWrite.oflags(0), O_RDWR | O_CREAT | O_TRUNC);
    }

    #[test]
    fn fd_name_parses_aliases_and_numbers() {
        assert_eq!(parse_fd_name("stdin").unwrap(), 0);
        assert_eq!(parse_fd_name("stdout").unwrap(), 1);
        assert_eq!(parse_fd_name("stderr").unwrap(), 2);
        assert_eq!(parse_fd_name("14").unwrap(), 14);
        assert_eq!(parse_fd_name("-1").unwrap(), -1);
        assert!(parse_fd_name("bogus").is_err());
        assert!(parse_fd_name("").is_err());
        assert!(parse_fd_name("99999999999").is_err());
        assert_eq!(fd_name(0), "stdin");
        assert_eq!(fd_name(1), "stdout");
        assert_eq!(fd_name(2), "stderr");
        assert_eq!(fd_name(-1), "-1");
        assert_eq!(fd_name(14), "14");
    }

    #[test]
    fn validate_rejects_bad_fd_name() {
        let err = validated(r#"{"specs": {"p": {"argv": ["x"], "fds": [["bogus", "close"]]}}}"#)
            .unwrap_err();
        assert_eq!(err.to_string(), "proc p: bad fd name: bogus");
    }

    #[test]
    fn validate_accepts_negative_fd_name() {
        validated(r#"{"specs": {"p": {"argv": ["x"], "fds": [["-1", "close"]]}}}"#).unwrap();
    }

    #[test]
    fn validate_rejects_duplicate_fd_alias() {
        let err = validated(
            r#"{"specs": {"p": {"argv": ["x"], "fds": [["stdout", "close"], ["1", "inherit"]]}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            SpecError::DuplicateFd {
                proc_id: "p".into(),
                fd: 1
            }
        );
        assert_eq!(err.to_string(), "proc p: duplicate fd: 1");
    }

    #[test]
    fn validate_rejects_empty_argv() {
        let err = validated(r#"{"specs": {"p": {}}}"#).unwrap_err();
        assert_eq!(err.to_string(), "proc p: argv is empty");
    }

    #[test]
    fn validate_rejects_nul_bytes() {
        let err = validated(r#"{"specs": {"p": {"argv": ["a", "b\u0000"]}}}"#).unwrap_err();
        assert_eq!(err.to_string(), "proc p: argv[1] contains a nul byte");
        let err = validated(r#"{"specs": {"p": {"argv": ["a"], "exe": "\u0000"}}}"#).unwrap_err();
        assert_eq!(err.to_string(), "proc p: exe contains a nul byte");
        let err =
            validated(r#"{"specs": {"p": {"argv": ["a"], "env": {"vars": {"A": "\u0000"}}}}}"#)
                .unwrap_err();
        assert_eq!(err.to_string(), "proc p: env.vars.A contains a nul byte");
        let err = validated(
            r#"{"specs": {"p": {"argv": ["a"], "fds": [["1", {"file": {"path": "/\u0000"}}]]}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "proc p: fds.1.file.path contains a nul byte"
        );
    }

    #[test]
    fn validate_rejects_unknown_perf_event_naming_it_and_the_field() {
        let err =
            validated(r#"{"specs": {"p": {"argv": ["a"], "perf": ["task_clock", "cpu-cycles"]}}}"#)
                .unwrap_err();
        assert_eq!(
            err,
            SpecError::BadPerfEvent {
                proc_id: "p".into(),
                name: "cpu-cycles".into()
            }
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with(r#"proc p: perf: unknown event "cpu-cycles""#),
            "{msg}"
        );
        assert!(msg.contains("task_clock"), "{msg}");
        validated(r#"{"specs": {"p": {"argv": ["a"], "perf": ["cycles", "task_clock"]}}}"#)
            .unwrap();
        validated(r#"{"specs": {"p": {"argv": ["a"], "perf": false}}}"#).unwrap();
    }

    #[test]
    fn perf_of_the_wrong_type_is_a_json_error_naming_the_field() {
        let err = validated(r#"{"specs": {"p": {"argv": ["a"], "perf": "yes"}}}"#).unwrap_err();
        assert!(
            matches!(err, SpecError::Json(ref m) if m.contains("`perf`")),
            "{err}"
        );
        let err = validated(r#"{"specs": {"p": {"argv": ["a"], "perf": [1]}}}"#).unwrap_err();
        assert!(matches!(err, SpecError::Json(_)), "{err}");
    }

    #[test]
    fn validate_rejects_bad_env_name() {
        let err = validated(r#"{"specs": {"p": {"argv": ["a"], "env": {"vars": {"A=B": "c"}}}}}"#)
            .unwrap_err();
        assert!(matches!(err, SpecError::BadEnvName { .. }), "{err}");
    }

    #[test]
    fn validate_rejects_unmatched_write_pipe() {
        let err =
            validated(r#"{"specs": {"x": {"argv": ["a"], "fds": [["stdout", "pipe-write"]]}}}"#)
                .unwrap_err();
        assert_eq!(err.to_string(), "unmatched write pipe: x 1");
    }

    #[test]
    fn validate_rejects_unmatched_read_pipe() {
        let err = validated(
            r#"{"specs": {"c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "stdout"}}]]}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "unmatched read pipe: x stdout");
        // A pipe-read of an fd that exists but is not a pipe-write is unmatched too.
        let err = validated(
            r#"{"specs": {"x": {"argv": ["a"], "fds": [["stdout", "close"]]},
                          "c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "1"}}]]}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "unmatched read pipe: x 1");
    }

    #[test]
    fn validate_matches_pipes_by_fd_number() {
        validated(
            r#"{"specs": {"c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "1"}}]]},
                          "x": {"argv": ["a"], "fds": [["stdout", "pipe-write"]]}}}"#,
        )
        .unwrap();
    }

    #[test]
    fn validate_rejects_second_reader_of_one_pipe() {
        let err = validated(
            r#"{"specs": {"x": {"argv": ["a"], "fds": [["stdout", "pipe-write"]]},
                          "c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "1"}}],
                                                      ["3", {"pipe-read": {"proc_id": "x", "fd": "stdout"}}]]}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "duplicate read pipe: x 1");
    }

    #[test]
    fn validate_rejects_bad_fd_name_in_pipe_read() {
        let err = validated(
            r#"{"specs": {"c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "out"}}]]}}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "proc c: bad fd name: out");
    }

    fn capture_check(capture: &str) -> Result<(), SpecError> {
        let text = format!(
            r#"{{"specs": {{"p": {{"argv": ["a"], "fds": [["stdout", {{"capture": {capture}}}]]}}}}}}"#
        );
        validate(&parse_input(text.as_bytes()).unwrap())
    }

    #[test]
    fn file_capture_parses_path_dir_and_memory_and_round_trips() {
        let f = fd(r#"{"capture": {"mode": "file", "path": "out.log", "memory": true}}"#).unwrap();
        assert_eq!(
            f,
            FdSpec::Capture {
                mode: CaptureMode::File,
                encoding: Encoding::Base64,
                attached: true,
                head: None,
                tail: None,
                path: Some("out.log".into()),
                dir: None,
                memory: true,
                compress: None,
                compress_level: None,
            }
        );
        let again: FdSpec = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(again, f);
        assert!(capture_check(r#"{"mode": "file", "dir": "/tmp"}"#).is_ok());
        assert!(capture_check(r#"{"mode": "file", "path": "x", "memory": true}"#).is_ok());
    }

    #[test]
    fn file_capture_needs_exactly_one_of_path_and_dir() {
        let both = capture_check(r#"{"mode": "file", "path": "a", "dir": "/tmp"}"#).unwrap_err();
        assert!(
            matches!(
                both,
                SpecError::BadCapture {
                    field: "path",
                    fd: 1,
                    ..
                }
            ),
            "{both:?}"
        );
        assert!(both.to_string().contains("either path or dir"), "{both}");
        let neither = capture_check(r#"{"mode": "file"}"#).unwrap_err();
        assert!(
            neither
                .to_string()
                .contains("capture path: mode \"file\" needs a path or a dir"),
            "{neither}"
        );
        let empty = capture_check(r#"{"mode": "file", "dir": ""}"#).unwrap_err();
        assert!(
            matches!(empty, SpecError::BadCapture { field: "dir", .. }),
            "{empty:?}"
        );
        let nul = capture_check(r#"{"mode": "file", "path": "a\u0000b"}"#).unwrap_err();
        assert!(nul.to_string().contains("fds.stdout.capture.path"), "{nul}");
    }

    #[test]
    fn path_dir_and_memory_are_rejected_outside_file_mode() {
        for (capture, field) in [
            (r#"{"mode": "memory", "path": "a"}"#, "path"),
            (r#"{"mode": "tempfile", "dir": "/tmp"}"#, "dir"),
            (r#"{"memory": true}"#, "memory"),
        ] {
            let e = capture_check(capture).unwrap_err();
            assert!(
                matches!(&e, SpecError::BadCapture { field: f, .. } if *f == field),
                "{capture}: {e:?}"
            );
        }
        let bad_mode = parse_input(
            br#"{"specs": {"p": {"argv": ["a"], "fds": [["1", {"capture": {"mode": "disk"}}]]}}}"#,
        )
        .unwrap_err();
        assert!(
            bad_mode.to_string().contains("unknown variant `disk`"),
            "{bad_mode}"
        );
    }

    #[test]
    fn validate_rejects_overflowing_capture_window() {
        let max = u64::MAX;
        let err = validated(&format!(
            r#"{{"specs": {{"p": {{"argv": ["a"], "fds": [["1", {{"capture": {{"head": {max}, "tail": 1}}}}]]}}}}}}"#
        ))
        .unwrap_err();
        assert!(
            matches!(err, SpecError::CaptureTooLarge { fd: 1, .. }),
            "{err}"
        );
        validated(
            r#"{"specs": {"p": {"argv": ["a"], "fds": [["1", {"capture": {"head": 1048576, "tail": 1048576}}]]}}}"#,
        )
        .unwrap();
    }

    #[test]
    fn capture_compress_parses_and_validates() {
        let spec = |cap: &str| {
            format!(
                r#"{{"specs": {{"p": {{"argv": ["a"], "fds": [["2", {{"capture": {cap}}}]]}}}}}}"#
            )
        };
        assert_eq!(
            fd(r#"{"capture": {"compress": "zstd", "compress_level": 5}}"#).unwrap(),
            FdSpec::Capture {
                mode: CaptureMode::Tempfile,
                encoding: Encoding::Base64,
                attached: true,
                head: None,
                tail: None,
                compress: Some("zstd".into()),
                compress_level: Some(5),
                path: None,
                dir: None,
                memory: false,
            }
        );
        validated(&spec(r#"{"compress": "zstd"}"#)).unwrap();
        validated(&spec(
            r#"{"mode": "memory", "compress": "zstd", "compress_level": 19}"#,
        ))
        .unwrap();
        let err = |cap: &str| validated(&spec(cap)).unwrap_err().to_string();
        assert_eq!(
            err(r#"{"compress": "gzip"}"#),
            r#"proc p: fd 2: capture compress: unknown algorithm "gzip" (expected one of ["zstd"])"#
        );
        assert_eq!(
            err(r#"{"compress": "zstd", "compress_level": 0}"#),
            "proc p: fd 2: capture compress_level: 0 out of range 1..=19"
        );
        assert_eq!(
            err(r#"{"compress": "zstd", "compress_level": 20}"#),
            "proc p: fd 2: capture compress_level: 20 out of range 1..=19"
        );
        assert_eq!(
            err(r#"{"compress_level": 3}"#),
            "proc p: fd 2: capture compress_level: given without compress"
        );
        // Wrong JSON types are schema errors naming the expected type.
        assert!(parse(&spec(r#"{"compress": 1}"#)).is_err());
        assert!(parse(&spec(r#"{"compress": "zstd", "compress_level": "fast"}"#)).is_err());
        assert!(parse(&spec(r#"{"compress": "zstd", "compress_level": 1.5}"#)).is_err());
    }

    #[test]
    fn validate_with_existing_rejects_existing_proc_id() {
        let input = parse(r#"{"specs": {"s1": {"argv": ["a"]}}}"#).unwrap();
        let err = validate_with_existing(&input, |id| id == "s1").unwrap_err();
        assert_eq!(err.to_string(), "duplicate proc id: s1");
        validate_with_existing(&input, |id| id == "s2").unwrap();
    }

    #[test]
    fn specs_try_insert_rejects_duplicate() {
        let mut specs = Specs::new();
        specs.try_insert("a".into(), ProcSpec::default()).unwrap();
        let err = specs
            .try_insert("a".into(), ProcSpec::default())
            .unwrap_err();
        assert_eq!(err.to_string(), "duplicate proc id: a");
        assert_eq!(specs.len(), 1);
    }

    #[test]
    fn proc_spec_exe_defaults_to_argv0() {
        let spec = ProcSpec {
            argv: vec!["/bin/echo".into()],
            ..ProcSpec::default()
        };
        assert_eq!(spec.exe(), Some("/bin/echo"));
        assert_eq!(ProcSpec::default().exe(), None);
    }

    #[test]
    fn env_inherit_parses_bool_and_list() {
        let env: EnvSpec = serde_json::from_str(r#"{"inherit": false}"#).unwrap();
        assert_eq!(env.inherit, EnvInherit::None);
        let env: EnvSpec = serde_json::from_str(r#"{"inherit": true}"#).unwrap();
        assert_eq!(env.inherit, EnvInherit::All);
        let env: EnvSpec = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(env.inherit, EnvInherit::All);
        let env: EnvSpec = serde_json::from_str(r#"{"inherit": ["A"]}"#).unwrap();
        assert_eq!(env.inherit, EnvInherit::Names(vec!["A".into()]));
        for inherit in [
            EnvInherit::All,
            EnvInherit::None,
            EnvInherit::Names(vec!["A".into()]),
        ] {
            let json = serde_json::to_string(&inherit).unwrap();
            assert_eq!(serde_json::from_str::<EnvInherit>(&json).unwrap(), inherit);
        }
    }

    #[test]
    fn fds_as_an_object_apply_in_the_order_written() {
        let input = parse_input(
            br#"{"specs": {"p": {"argv": ["x"], "fds": {"stdout": {"capture": {"mode": "memory"}},
                "stderr": {"dup": {"fd": 1}}, "stdin": "close"}}}}"#,
        )
        .unwrap();
        let fds = &input.specs.get("p").unwrap().fds;
        let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["stdout", "stderr", "stdin"]);
        assert_eq!(fds[1].1, FdSpec::Dup { fd: 1 });
        // The same duplicate-alias check as the list form.
        let input = parse_input(
            br#"{"specs": {"p": {"argv": ["x"], "fds": {"stdout": "close", "1": "inherit"}}}}"#,
        )
        .unwrap();
        assert!(validate(&input).is_err());
        let e = parse_input(br#"{"specs": {"p": {"argv": ["x"], "fds": 3}}}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("a list of [fd, spec] pairs, or an object"),
            "{e}"
        );
    }

    #[test]
    fn env_build_inherits_only_existing_listed_names() {
        let env = EnvSpec {
            inherit: EnvInherit::Names(vec!["USER".into(), "TERM".into(), "NOT_A_VAR".into()]),
            user_env: false,
            report: None,
            vars: BTreeMap::new(),
        };
        let parent = os(&[("PATH", "/bin"), ("TERM", "xterm"), ("USER", "me")]);
        assert_eq!(env.build(parent), os(&[("TERM", "xterm"), ("USER", "me")]));
    }

    #[test]
    fn env_build_overrides_in_place_and_removes_nulls() {
        let env = EnvSpec {
            inherit: EnvInherit::All,
            user_env: false,
            report: None,
            vars: BTreeMap::from([
                ("B".to_owned(), Some("new".to_owned())),
                ("C".to_owned(), None),
                ("D".to_owned(), Some("d".to_owned())),
                ("Z".to_owned(), None),
            ]),
        };
        let parent = os(&[("A", "a"), ("B", "b"), ("C", "c"), ("E", "e"), ("B", "dup")]);
        assert_eq!(
            env.build(parent),
            os(&[("A", "a"), ("B", "new"), ("E", "e"), ("D", "d")])
        );
    }

    #[test]
    fn env_build_with_inherit_none_uses_only_vars() {
        let env = EnvSpec {
            inherit: EnvInherit::None,
            user_env: false,
            report: None,
            vars: BTreeMap::from([("X".to_owned(), Some("1".to_owned()))]),
        };
        assert_eq!(env.build(os(&[("A", "a")])), os(&[("X", "1")]));
    }

    #[test]
    fn env_build_always_removes_agent_secrets() {
        let parent = os(&[
            ("PROCSTAR_AGENT_TOKEN", "t"),
            ("PROCSTAR_AGENT_CERT", "c"),
            ("PROCSTAR_AGENT_KEY", "k"),
            ("PROCSTAR_AGENT_HOST", "h"),
        ]);
        let env = EnvSpec::default();
        assert_eq!(
            env.build(parent.clone()),
            os(&[("PROCSTAR_AGENT_HOST", "h")])
        );
        let env = EnvSpec {
            inherit: EnvInherit::Names(vec!["PROCSTAR_AGENT_TOKEN".into()]),
            user_env: false,
            report: None,
            vars: BTreeMap::from([("PROCSTAR_AGENT_KEY".to_owned(), Some("x".to_owned()))]),
        };
        assert_eq!(env.build(parent), os(&[]));
    }

    /// A JSON value drawn from the spec's vocabulary, so the fuzzing reaches deep into
    /// the schema rather than failing at the top level.
    fn spec_like_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let words = prop::sample::select(vec![
            "specs",
            "argv",
            "exe",
            "env",
            "inherit",
            "vars",
            "fds",
            "stdin",
            "stdout",
            "stderr",
            "1",
            "-1",
            "bogus",
            "inherit",
            "close",
            "null",
            "file",
            "path",
            "flags",
            "mode",
            "dup",
            "fd",
            "capture",
            "memory",
            "tempfile",
            "encoding",
            "utf-8",
            "attached",
            "head",
            "tail",
            "compress",
            "compress_level",
            "zstd",
            "dir",
            "pipe-write",
            "pipe-read",
            "proc_id",
            "p",
            "q",
            "Read",
            "Default",
            "systemd_properties",
            "id",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            words.clone().prop_map(Value::from),
            ".{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((words.clone(), inner), 0..4).prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn parse_input_never_panics_on_arbitrary_text(s in "[{}\\[\\]\",:a-z0-9 \\-\\\\]{0,80}") {
            if let Ok(input) = parse_input(s.as_bytes()) {
                let _ = validate(&input);
            }
        }

        #[test]
        fn parse_input_never_panics_on_spec_like_json(v in spec_like_json()) {
            let wrapped = serde_json::json!({"specs": {"p": v.clone(), "q": {"argv": ["x"], "fds": [["1", v.clone()]]}}});
            for doc in [v, wrapped] {
                let text = serde_json::to_vec(&doc).unwrap();
                if let Ok(input) = parse_input(&text) {
                    let _ = validate(&input);
                    let again = serde_json::to_vec(&input).unwrap();
                    prop_assert_eq!(parse_input(&again).unwrap(), input);
                }
            }
        }

        #[test]
        fn fd_name_round_trips(fd in any::<i32>()) {
            prop_assert_eq!(parse_fd_name(&fd_name(fd)).unwrap(), fd);
        }
    }
}
