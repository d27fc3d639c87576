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

pub mod bench;
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
pub mod ring;
pub mod signal;
pub mod spec;
pub mod supervisor;
pub mod sys;

pub use supervisor::{
    Agent, Call, CompressedFdData, Config, Encoded, EncodedFdData, Event, FdData, FdDataError,
    FdWaited, Handle, ProcError, ReadEncoding, ShutdownPolicy, ShutdownState, StartError,
    Subscription,
};
