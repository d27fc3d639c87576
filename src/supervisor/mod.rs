//! The process table and each process's life, and the embedding API.
//!
//! An [`Agent`] owns one reactor thread. The reactor thread owns the io_uring
//! ring and the process table; nothing else touches them. The [`Agent`] sends it
//! commands over a mailbox that wakes the ring, and receives replies through
//! callbacks, so both blocking callers (this API, the CLI) and async front ends can
//! sit on top.
//!
//! A process moves through start → running → exited (stat snapshot, pipes
//! drained, reaped with rusage) → deleted.
//!
//! The reactor thread is the agent: a panic there loses every process, so
//! outside tests `unwrap`, `expect` and `panic!` are denied here.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod agent;
mod closer;
mod command;
mod encoding;
mod error;
mod events;
mod handle;
mod oneshot;
mod opener;
mod outlimit;
mod packer;
mod proc;
mod reactor;
pub(crate) mod solo;
mod spawner;
pub mod status;
mod types;

pub use agent::Agent;
pub use encoding::{CompressedFdData, Encoded, EncodedFdData, ReadEncoding};
pub(crate) use encoding::{Utf8Carry, incomplete_tail};
pub use error::{FdDataError, ProcError, StartError};
pub use events::{Next, RecvError, Subscription};
pub use handle::{Call, Handle};
pub use oneshot::Canceled;
pub(crate) use proc::rfc3339;
pub use types::{Config, Event, FdData, FdWaited, ShutdownPolicy, ShutdownState};
