//! chaperone runs Linux processes from declarative JSON specs and babysits them.
//!
//! It speaks Procstar's spec and result formats. Children start through a
//! vfork-style `clone` that returns a pidfd; one io_uring reactor thread drains
//! their output into bounded head/tail captures and waits on their pidfds; each
//! exit is measured (`/proc/<pid>/stat` before reaping, rusage at the reap).
//!
//! Embed it through [`Agent`]:
//!
//! ```
//! use chaperone::{Agent, Config, spec};
//! let agent = Agent::new(Config::default())?;
//! let input = spec::parse_input(br#"{"specs": {"hi": {"argv": ["/bin/echo", "hello"],
//!     "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]}}}"#)?;
//! agent.start(input)?;
//! let res = agent.wait("hi").expect("known id");
//! println!("{}", serde_json::to_string(&res)?);
//! let out = agent.fd_data("hi", "stdout", 0, None)?;
//! assert_eq!(&out.data[..], b"hello\n");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

// `eprintln!` and `eprint!` that never panic. std's panic when standard
// error cannot be written, and a detached spool agent's standard error is a
// log file on the spool's filesystem: when that filled up, the first
// message about it took the agent down (exit 101), leaving its processes
// unwatched. Defined before the modules, so they shadow std's in all of
// them; a message that cannot be written is dropped.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

macro_rules! eprint {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::write!(::std::io::stderr(), $($arg)*);
    }};
}

pub mod bench;
#[cfg(feature = "cli")]
pub mod callback;
pub mod capture;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod client;
pub mod control;
#[cfg(feature = "cli")]
pub mod http;
pub mod metrics;
#[cfg(feature = "cli")]
pub mod proto;
pub mod result;
pub(crate) mod ring;
pub mod signal;
pub mod spec;
#[cfg(feature = "cli")]
pub mod spool;
pub mod supervisor;
pub(crate) mod sys;

/// For tests that cannot run here: says so on stderr (`SKIP test: reason`)
/// and, when `CHAPERONE_SKIP_LOG` names a file, appends the same line to it,
/// so that `ci/test` counts the test as skipped, not passed, and prints why.
/// `part` marks a test that ran but had to leave part of its checks out.
#[doc(hidden)]
pub fn test_skip(test: &str, reason: &str, part: bool) {
    use std::io::Write as _;
    let line = format!("{} {test}: {reason}\n", if part { "PART" } else { "SKIP" });
    eprint!("{line}");
    if let Some(path) = std::env::var_os("CHAPERONE_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            // One write per line: lines from parallel tests do not interleave.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

pub use ring::BackendChoice;

/// Whether the reactor can run on `choice` here: what [`Agent::new`] with
/// [`Config::backend`] set to it would find. io_uring needs `io_uring_setup`
/// (a seccomp filter or `kernel.io_uring_disabled` may deny it) and a
/// provided-buffer ring; epoll works on every kernel chaperone supports.
pub fn backend_usable(choice: BackendChoice) -> bool {
    ring::Driver::<u32>::new(choice, 8, 4, 65536).is_ok()
}

/// The fd number above which the agent keeps its long-lived fds (pidfds, perf
/// counters), so a child's fd table below it stays small; for tests.
#[doc(hidden)]
pub fn fd_floor() -> i32 {
    sys::fd::high_floor()
}

pub use supervisor::{
    Agent, Call, CompressedFdData, Config, Encoded, EncodedFdData, Event, FdData, FdDataError,
    FdWaited, Handle, ProcError, ReadEncoding, ShutdownPolicy, ShutdownState, StartError,
    Subscription,
};
