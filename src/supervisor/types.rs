//! The agent's shared public types: its [`Config`], the [`Event`]s it
//! publishes, its shutdown [`ShutdownState`]s and [`ShutdownPolicy`]s, and what
//! capture reads return ([`FdData`], [`FdWaited`]).

use crate::spec::{self, ProcId};
use bytes::Bytes;
use std::path::PathBuf;

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
    /// Whether the agent's standard input and output are its own (its
    /// protocol, `--stdio`): a child whose spec names no fd 0 or 1 gets
    /// `/dev/null` there instead of inheriting them. Off by default.
    pub own_stdin_stdout: bool,
    /// Threads beside the reactor that clone and wait out each child's exec
    /// (default 2, so execs overlap on several cores; at most 64). 0: the reactor spawns
    /// every child itself, which saves two thread hand-offs per process (the
    /// lowest latency for one run at a time, as `chaperone bench` runs) but
    /// stops the reactor for the length of each exec.
    pub spawn_threads: usize,
    /// The scheduler slice the reactor and the spawning threads ask for
    /// (Linux 6.12+; older kernels ignore it), so that one woken to reap or
    /// to spawn runs before a child on its core finishes a default slice
    /// (see `sys/sched.rs`). Children get the default slice. `None` leaves
    /// the threads as they are. Default: 100 µs, the kernel's shortest.
    pub thread_slice: Option<std::time::Duration>,
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
            own_stdin_stdout: false,
            spawn_threads: 2,
            thread_slice: Some(std::time::Duration::from_micros(100)),
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
    /// The whole dropped middle, when `missing` is set (the held bytes resume
    /// at its end).
    pub dropped: Option<std::ops::Range<u64>>,
    /// The capture's encoding (`None` is raw bytes/base64).
    pub encoding: spec::Encoding,
    /// The bytes held for `[start, stop)`, minus `missing`.
    pub data: Bytes,
    /// Whether they were read from a file (a tempfile or kept capture, or
    /// its compressed copy) rather than memory: such a capture has no dropped
    /// middle, and its bytes up to `length` stay readable, so a large range
    /// can be read a piece at a time.
    pub in_file: bool,
}
