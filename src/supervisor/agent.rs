//! The blocking embedding API: [`Agent`], a reactor thread and the
//! [`Handle`] it is driven through.

use super::encoding::{CompressedFdData, EncodedFdData, ReadEncoding};
use super::error::{FdDataError, ProcError, StartError};
use super::handle::Handle;
use super::reactor::Reactor;
use super::types::{Config, FdData, ShutdownPolicy};
use crate::result::ProcRes;
use crate::ring::Mailbox;
use crate::spec::{Input, ProcId};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// A running agent: a reactor thread with its ring and process table.
///
/// Dropping it waits until no process runs: the drop sends no signal, so a
/// process that does not end keeps it waiting (and so does a panic that
/// unwinds through it). To end them, [`Agent::shutdown`] with
/// [`ShutdownPolicy::Kill`](super::ShutdownPolicy) (or `Terminate`) and
/// [`Agent::wait_done`] first. Meanwhile its handles' calls are answered
/// "shut down" at once. A compression (`"compress"`) not yet finished is then
/// cancelled at its next frame: a kept file stays uncompressed at its path.
/// [`Agent::wait_compressed`] first to keep it.
///
/// ```
/// use chaperone::{Agent, Config, spec};
/// let agent = Agent::new(Config::default())?;
/// let input = spec::parse_input(br#"{"specs": {"hi": {"argv": ["/bin/echo", "hello"],
///     "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]}}}"#)?;
/// agent.start(input)?;
/// let res = agent.wait("hi").expect("known id");
/// assert_eq!(res.status.unwrap().exit_code, Some(0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Agent {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts the reactor thread. Where io_uring is unavailable (disabled by
    /// sysctl or seccomp, or too old a kernel) it runs on epoll instead,
    /// unless [`Config::backend`] asks for io_uring only; then, and when
    /// neither can be set up, it fails with an error saying why.
    pub fn new(config: Config) -> Result<Agent, std::io::Error> {
        // Before the reactor thread exists, growing the fd table costs no RCU
        // grace period; later, each growth would stall the reactor for one.
        crate::sys::fd::reserve_table();
        let (tx, mailbox) = Mailbox::new()?;
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let slice = config.thread_slice;
        let thread = std::thread::Builder::new()
            .name("chaperone-reactor".into())
            .spawn(move || match Reactor::new(config, mailbox) {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    if let Some(slice) = slice {
                        crate::sys::sched::set_thread_slice(slice);
                    }
                    r.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Agent {
                handle: Handle::new(tx),
                thread: Some(thread),
            }),
            Ok(Err(msg)) => {
                let _ = thread.join();
                Err(std::io::Error::other(msg))
            }
            Err(_) => Err(std::io::Error::other("reactor thread died at start")),
        }
    }

    /// A clonable, non-blocking handle on this agent, for async front ends
    /// (every call returns a future; see [`Handle`]). The agent's own methods
    /// are these calls, waited for.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Validates `input` and starts its processes; returns their ids. A rejected
    /// request starts nothing. A process that fails to start is still started in
    /// the sense that it has a result in error state.
    pub fn start(&self, input: Input) -> Result<Vec<ProcId>, StartError> {
        self.handle.start(input).wait()
    }

    /// The current result of a process (live figures while it runs).
    pub fn result(&self, id: &str) -> Option<ProcRes> {
        self.handle.result(id).wait()
    }

    /// The current results of all processes.
    pub fn results(&self) -> BTreeMap<ProcId, ProcRes> {
        self.handle.results().wait()
    }

    /// Ids of all processes, sorted.
    pub fn proc_ids(&self) -> Vec<ProcId> {
        self.handle.proc_ids().wait()
    }

    /// Blocks until the process has exited and returns its final result.
    pub fn wait(&self, id: &str) -> Option<ProcRes> {
        self.handle.wait(id).wait()
    }

    /// As [`Agent::wait`], and then until every compression its spec asks for
    /// (`"compress"`) has finished, done or failed: the result is final in every
    /// field, and compressed files are complete. `None` if the process is
    /// unknown, or deleted before then.
    pub fn wait_compressed(&self, id: &str) -> Option<ProcRes> {
        self.handle.wait_compressed(id).wait()
    }

    /// Blocks until every process started so far is final, as
    /// [`Agent::wait_compressed`] would say of each: exited (or failed to
    /// start), settled, and done with its compressions. One round trip for a
    /// whole table, however large.
    pub fn wait_all(&self) {
        self.handle.wait_all().wait()
    }

    /// Sends signal `signum` through the process's pidfd.
    pub fn signal(&self, id: &str, signum: i32) -> Result<(), ProcError> {
        self.handle.signal(id, signum).wait()
    }

    /// Deletes a process that is no longer running.
    pub fn delete(&self, id: &str) -> Result<(), ProcError> {
        self.handle.delete(id).wait()
    }

    /// Subscribes to process events (a bounded queue of its own; see
    /// [`Subscription`](super::Subscription)).
    pub fn subscribe(&self) -> super::Subscription {
        self.handle.subscribe()
    }

    /// Begins shutting down by `policy`; the state and its changes come as
    /// [`Event::Shutdown`](super::Event::Shutdown) events.
    pub fn shutdown(&self, policy: ShutdownPolicy) {
        self.handle.shutdown(policy).wait()
    }

    /// Blocks until the shutdown state is `done`.
    pub fn wait_done(&self) {
        self.handle.wait_done().wait()
    }

    /// Bytes `[start, stop)` of a captured fd (`stop: None` = to the end), clamped
    /// to what exists. Never fails for a range: out-of-range requests return
    /// empty data with the current length.
    pub fn fd_data(
        &self,
        id: &str,
        fd: &str,
        start: u64,
        stop: Option<u64>,
    ) -> Result<FdData, FdDataError> {
        self.handle.fd_data(id, fd, start, stop).wait()
    }

    /// [`Agent::fd_data`], with the bytes in encoding `enc` (raw, lossy UTF-8
    /// with a flag saying whether anything was replaced, base64, or zstd). The
    /// range and its clamping are the same; the encoding applies to the held
    /// bytes of the range (a dropped middle is reported in `missing`, not
    /// encoded). Encoding happens on the calling thread.
    pub fn fd_data_as(
        &self,
        id: &str,
        fd: &str,
        start: u64,
        stop: Option<u64>,
        enc: ReadEncoding,
    ) -> Result<EncodedFdData, FdDataError> {
        self.handle.fd_data_as(id, fd, start, stop, enc).wait()
    }

    /// The compressed bytes of a capture held compressed (spec `compress`), as
    /// stored: bytes `[start, stop)` (`stop: None` = to the end) of a `.zst`
    /// stream, with its total length. Fails with [`FdDataError::NotCompressed`]
    /// while compression is pending, or if it failed or was not asked for.
    pub fn fd_compressed(
        &self,
        id: &str,
        fd: &str,
        start: u64,
        stop: Option<u64>,
    ) -> Result<CompressedFdData, FdDataError> {
        self.handle.fd_compressed(id, fd, start, stop).wait()
    }

    /// Drops the agent when the process exits right after: as a drop, the
    /// reactor finishes once nothing runs (kept files written, compressions
    /// stopped, threads joined), but it leaves its table of processes to the
    /// exit instead of freeing it one allocation at a time (10,000 results:
    /// 35 ms). Their memory, and the fds of any `tempfile` captures, stay
    /// held until the process exits.
    pub fn close_for_exit(self) {
        let _ = self.handle.close(true);
        drop(self);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The reactor takes no more commands (from this agent's handles either)
        // and finishes once nothing runs.
        let _ = self.handle.close(false);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
