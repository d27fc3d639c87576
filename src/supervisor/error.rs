//! Why an agent's requests fail: [`StartError`] for a start request,
//! [`ProcError`] for a request about one process, [`FdDataError`] for a
//! capture read.

use super::types::ShutdownState;
use crate::spec::{ProcId, SpecError};

/// Why a start request was rejected as a whole.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A resource for the request could not be made.
    #[error("proc {proc_id}: {msg}")]
    Resource {
        /// The proc it was for.
        proc_id: ProcId,
        /// What failed.
        msg: String,
    },
    /// The agent's reactor is gone.
    #[error("agent is shut down")]
    ShutDown,
    /// The agent is shutting down and takes no new processes.
    #[error("agent shutting down: {}", .0.name())]
    ShuttingDown(ShutdownState),
}

/// Why a request about one process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// No process has this id.
    #[error("unknown proc id: {0}")]
    Unknown(ProcId),
    /// The process has exited: there is nothing to signal.
    #[error("no process")]
    NoProcess(ProcId),
    /// The process is still running.
    #[error("process running: {0}")]
    Running(ProcId),
    /// `pidfd_send_signal` failed.
    #[error("signal failed: {0}")]
    Signal(#[source] std::io::Error),
    /// The agent's reactor is gone.
    #[error("agent is shut down")]
    ShutDown(ProcId),
}

/// Why an fd data request failed.
#[derive(Debug, thiserror::Error)]
pub enum FdDataError {
    /// No process has this id.
    #[error("unknown proc id: {0}")]
    Unknown(ProcId),
    /// The fd is not captured (its number, or the name as given if it is not
    /// an fd name).
    #[error("no fd: {0}")]
    NoFd(String),
    /// Reading a capture file failed.
    #[error("reading fd data failed: {0}")]
    Io(#[source] std::io::Error),
    /// The capture is not held compressed: its spec has no `compress`, or the
    /// compression is pending or failed (the result's `compression` says which).
    #[error("fd {0} is not held compressed")]
    NotCompressed(String),
    /// The agent's reactor is gone.
    #[error("agent is shut down")]
    ShutDown(ProcId),
}
