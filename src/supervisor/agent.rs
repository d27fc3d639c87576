//! The embedding API: [`Agent`], its commands, events and errors.

use super::encoding::{CompressedFdData, EncodedFdData, ReadEncoding};
use super::handle::Handle;
use super::proc::Snapshot;
use super::reactor::{FdContent, Reactor};
use crate::result::ProcRes;
use crate::ring::Mailbox;
use crate::spec::{self, Input, ProcId, SpecError};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// When a start request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAnswer {
    /// Once every process of the request has a pid, has failed to start, or
    /// waits in the queue behind `max_running`.
    Launched,
    /// Once the request is validated and its processes queued; each then
    /// tells of its start with an [`Event::Started`].
    Accepted,
}

/// A command to the reactor thread.
pub(crate) enum Command {
    /// Start a request's processes; answered when [`StartAnswer`] says.
    Start(Input, StartAnswer, Reply<Result<Vec<ProcId>, StartError>>),
    Result(ProcId, Reply<Option<Snapshot>>),
    /// A result with every capture detached (counts only).
    ResultBrief(ProcId, Reply<Option<Snapshot>>),
    Results(Reply<Vec<(ProcId, Snapshot)>>),
    Ids(Reply<Vec<ProcId>>),
    Overview(super::status::Select, Reply<super::status::Overview>),
    History(ProcId, Reply<Option<Vec<super::status::Point>>>),
    /// Wait for exit; with `true`, also for every compression of the process.
    Wait(ProcId, bool, Reply<Option<Snapshot>>),
    /// Wait until every process in the table is final (settled, compressed).
    WaitAll(Reply<()>),
    Signal(ProcId, i32, Reply<Result<(), ProcError>>),
    FdData(
        ProcId,
        String,
        (u64, u64),
        Reply<Result<FdContent, FdDataError>>,
    ),
    /// Wait until a capture holds more than `offset` bytes, can grow no more,
    /// or the deadline passes.
    FdWait(
        ProcId,
        String,
        u64,
        std::time::Instant,
        Reply<Result<FdWaited, FdDataError>>,
    ),
    Delete(ProcId, Reply<Result<(), ProcError>>),
    Subscribe(super::events::Publisher),
    /// Begin shutting down by a policy (answered once it is under way).
    Shutdown(ShutdownPolicy, Reply<()>),
    /// Wait for the shutdown state `done`.
    WaitDone(Reply<()>),
    /// The shutdown state now.
    State(Reply<ShutdownState>),
    /// The agent is dropped: take no more commands, finish once nothing runs.
    Close,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::Start(..) => "Start",
            Command::Result(..) => "Result",
            Command::ResultBrief(..) => "ResultBrief",
            Command::Results(..) => "Results",
            Command::Ids(..) => "Ids",
            Command::Overview(..) => "Overview",
            Command::History(..) => "History",
            Command::Wait(..) => "Wait",
            Command::WaitAll(..) => "WaitAll",
            Command::Signal(..) => "Signal",
            Command::FdData(..) => "FdData",
            Command::FdWait(..) => "FdWait",
            Command::Delete(..) => "Delete",
            Command::Subscribe(..) => "Subscribe",
            Command::Close => "Close",
            Command::Shutdown(..) => "Shutdown",
            Command::WaitDone(..) => "WaitDone",
            Command::State(..) => "State",
        };
        f.write_str(name)
    }
}

/// Where a capture stands after [`Handle::fd_wait`](super::Handle::fd_wait).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdWaited {
    /// Bytes the capture has produced so far; `None` for a `tempfile`
    /// capture, which the child writes directly, so the agent does not see
    /// it grow (read its length with an empty `fd_data`, and poll).
    pub length: Option<u64>,
    /// Whether the capture may still grow (its pipe is open).
    pub open: bool,
}

/// Agent-wide settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Default head size of memory captures, bytes (`--capture-head`).
    pub capture_head: usize,
    /// Default tail size of memory captures, bytes (`--capture-tail`).
    pub capture_tail: usize,
    /// Directory for tempfile captures.
    pub tmpdir: PathBuf,
    /// Size capture pipes are raised to (default `/proc/sys/fs/pipe-max-size`).
    pub pipe_size: usize,
    /// Number of provided buffers (a power of two), each `pipe_size` bytes
    /// (on epoll: what one turn of the reactor reads, `buf_entries ×
    /// pipe_size`).
    pub buf_entries: u16,
    /// Submission queue entries of the ring.
    pub ring_entries: u32,
    /// What the reactor runs on (`--backend`; default from
    /// `CHAPERONE_BACKEND`, else io_uring where it can be set up, else epoll).
    pub backend: crate::ring::BackendChoice,
    /// Signal every child gets when the agent dies, unless its spec says
    /// otherwise (`--pdeath-sig`); `None`: children outlive the agent.
    pub pdeath_sig: Option<i32>,
    /// How often `/proc/<pid>/stat` and `statm` of running processes are sampled
    /// (also on every live result request); `None` or zero: only on requests.
    pub sample_interval: Option<std::time::Duration>,
    /// Whether procs whose spec has no `perf` field count every perf event
    /// (`--perf`).
    pub perf: bool,
    /// Total bytes all memory captures may hold (`--output-limit`); past it,
    /// bytes are dropped from the middle of the largest captures first.
    /// `None`: only each capture's head and tail bound it.
    pub output_limit: Option<u64>,
    /// The most processes started and not yet finished at once
    /// (`--max-running`); more wait in a queue, in request order, and start as
    /// others finish. `None`: as many as the soft fd limit has room for (a
    /// quarter of it, past a reserve). Also, a process that cannot get its fds
    /// waits for others to let go of theirs rather than failing, as long as any
    /// hold some.
    pub max_running: Option<usize>,
    /// Only this exact `exe` (or `argv[0]` when there is no `exe`) may run
    /// (`--restrict-exe`); any other process becomes an error result.
    pub restrict_exe: Option<String>,
    /// Whether results carry each child's environment unless its spec says
    /// (`env.report`); off by default (`--report-env`).
    pub report_env: bool,
    /// Threads beside the reactor that clone and wait out each child's exec
    /// (default 2, so execs overlap on several cores). 0: the reactor spawns
    /// every child itself, which saves two thread hand-offs per process (the
    /// lowest latency for one run at a time, as `chaperone bench` runs) but
    /// stops the reactor for the length of each exec.
    pub spawn_threads: usize,
    /// Whether each process's `/proc/<pid>/stat` and `io` are read at its exit,
    /// before the reap, so that its result carries them as of the exit
    /// (default). `chaperone bench` turns this off: it reports rusage and perf
    /// figures, and the two reads cost the reactor some 60 µs a process.
    pub read_proc_at_exit: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capture_head: 64 << 20,
            capture_tail: 64 << 20,
            tmpdir: std::env::temp_dir(),
            pipe_size: crate::sys::pipe::max_size(),
            buf_entries: 4,
            ring_entries: 512,
            backend: crate::ring::BackendChoice::from_env().unwrap_or_else(|e| {
                tracing::warn!("{e}; choosing by probe");
                crate::ring::BackendChoice::Auto
            }),
            pdeath_sig: None,
            sample_interval: Some(std::time::Duration::from_secs(1)),
            perf: false,
            output_limit: None,
            max_running: None,
            restrict_exe: None,
            report_env: false,
            spawn_threads: 2,
            read_proc_at_exit: true,
        }
    }
}

/// Something that happened to a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The process was started (or failed to start; its result says which).
    Started(ProcId),
    /// The process exited and was reaped; its result is final.
    Exited(ProcId),
    /// The process was deleted.
    Deleted(ProcId),
    /// Compression of capture `fd` (normalized name, e.g. `stdout`) finished or
    /// failed; the process's result says which.
    Compressed(ProcId, String),
    /// The agent's shutdown state changed.
    Shutdown(ShutdownState),
    /// This subscriber fell behind and missed this many events (see
    /// [`Subscription`](super::Subscription)): resync from full results.
    Missed(u64),
}

/// Procstar's shutdown states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownState {
    /// Taking new processes.
    Active,
    /// Refusing new processes; finishing (or ending) the ones it has.
    Idling,
    /// Finished: nothing runs and, for the idle policy, nothing is left.
    Done,
}

impl ShutdownState {
    /// The name on the wire: `active`, `idling`, `done`.
    pub fn name(self) -> &'static str {
        match self {
            ShutdownState::Active => "active",
            ShutdownState::Idling => "idling",
            ShutdownState::Done => "done",
        }
    }
}

/// How the agent shuts down (Procstar's three, as its signals choose them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownPolicy {
    /// SIGTERM to every running process, SIGKILL to any still running after
    /// `grace`; done once none runs. Queued processes never start.
    Terminate {
        /// How long processes have between SIGTERM and SIGKILL.
        grace: std::time::Duration,
    },
    /// SIGKILL to every running process now; done once none runs. Queued
    /// processes never start.
    Kill,
    /// Refuse new starts and let every process finish; done once every one
    /// has been deleted.
    Idle,
}

impl ShutdownPolicy {
    /// Procstar's grace between SIGTERM and SIGKILL.
    pub const TERMINATE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
}

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
    NoProcess,
    /// The process is still running.
    #[error("process running: {0}")]
    Running(ProcId),
    /// `pidfd_send_signal` failed.
    #[error("signal failed")]
    Signal(#[source] std::io::Error),
    /// The agent's reactor is gone.
    #[error("agent is shut down")]
    ShutDown,
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
    #[error("reading fd data failed")]
    Io(#[source] std::io::Error),
    /// The capture is not held compressed: its spec has no `compress`, or the
    /// compression is pending or failed (the result's `compression` says which).
    #[error("fd {0} is not held compressed")]
    NotCompressed(String),
    /// The agent's reactor is gone.
    #[error("agent is shut down")]
    ShutDown,
}

/// Bytes of one capture, for a requested range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdData {
    /// Start of the bytes returned (the request's start, clamped to the length).
    pub start: u64,
    /// End of the range served (exclusive), clamped to the length.
    pub stop: u64,
    /// Total bytes the stream has produced so far.
    pub length: u64,
    /// The part of the range that fell in a head/tail capture's dropped middle.
    pub missing: Option<std::ops::Range<u64>>,
    /// The capture's encoding (`None` is raw bytes/base64).
    pub encoding: spec::Encoding,
    /// The bytes held for `[start, stop)`, minus `missing`.
    pub data: Bytes,
}

/// A running agent: a reactor thread with its ring and process table.
///
/// Dropping it waits until no process runs. A compression (`"compress"`) not yet
/// finished is then cancelled at its next frame: a kept file stays uncompressed
/// at its path. [`Agent::wait_compressed`] first to keep it.
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
    /// Starts the reactor thread. Fails with a clear error when io_uring is
    /// unavailable (disabled by sysctl or seccomp, or too old a kernel).
    pub fn new(config: Config) -> Result<Agent, std::io::Error> {
        let (tx, mailbox) = Mailbox::new()?;
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("chaperone-reactor".into())
            .spawn(move || match Reactor::new(config, mailbox) {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
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
    /// [`Event::Shutdown`] events.
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
        let data = self.fd_data(id, fd, start, stop)?;
        super::encoding::encode(data, enc).map_err(FdDataError::Io)
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
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The reactor takes no more commands (from this agent's handles either)
        // and finishes once nothing runs.
        let _ = self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
