//! [`SpecError`]: why a request was rejected, one variant per kind of problem.

use super::{MAX_CAPTURE_WINDOW, ProcId};

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

    /// A proc id is the empty string: it could not be named in an HTTP path
    /// (`/procs/` is the list) or as a spool file.
    #[error("a proc id is empty")]
    EmptyProcId,

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
    /// [`parse_fd_name`](super::parse_fd_name) leaves `proc_id` empty, and the message then omits it.
    #[error("{}bad fd name: {}", in_proc(proc_id), shown(name))]
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

/// A name as given when every character shows (Procstar's wording, `bad fd
/// name: bogus`), else quoted, so that `"stdout "` or an empty name is seen
/// for what it is.
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.is_empty() && name.chars().all(|c| !c.is_whitespace() && !c.is_control()) {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(format!("{name:?}"))
    }
}

/// `"proc <id>: "`, or nothing when the proc id is not known (empty).
fn in_proc(proc_id: &str) -> String {
    if proc_id.is_empty() {
        String::new()
    } else {
        format!("proc {proc_id}: ")
    }
}
