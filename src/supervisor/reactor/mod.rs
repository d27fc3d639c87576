//! The reactor thread: one io_uring, the process table, the command mailbox.

use super::command::{Command, StartAnswer};
use super::error::{FdDataError, ProcError, StartError};
use super::opener::{self, Opened, Opener};
use super::outlimit;
use super::packer::{self, Packer};
use super::proc::{self, Life, PipeIn, PlanContext, Proc, Snapshot, Store};
use super::spawner::{Done, Spawner};
use super::status;
use super::types::{Config, Event, FdWaited, ShutdownPolicy, ShutdownState};
use crate::metrics::procstat::StatContext;
use crate::result::Rusage;
use crate::ring::{Cqe, Driver, Mailbox, RingError};
use crate::spec::{self, Input, ProcId};
use crate::sys::spawn::{ChildStack, Spawned, spawn};
use crate::sys::{pidfd, pipe, wait};
use rustix::fd::OwnedFd;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::TryRecvError;
use std::time::{Instant, SystemTime};

mod filecap;
mod table;

use table::{ProcTable, default_max_running};

/// What an in-flight ring op is for.
#[derive(Clone, Copy, Debug)]
enum Tag {
    /// The read of the wake eventfd.
    Wake,
    /// A read of capture `cap` of process `proc`.
    Pipe { proc: u64, cap: usize },
    /// The exit wait of process `proc`.
    Exit { proc: u64 },
    /// The timeout of process `proc`: its signal, or (`kill`) the SIGKILL after it.
    Timeout { proc: u64, kill: bool },
    /// The `/proc` sampling timer.
    Sample,
    /// A write into the kept file of capture `cap` of process `proc`.
    FileWrite { proc: u64, cap: usize },
    /// The timeout of process `proc` while its files are being opened.
    OpenTimeout { proc: u64 },
    /// Process `proc`'s files are slow to open: its start request is
    /// answered without waiting for its pid.
    OpenSlow { proc: u64 },
    /// The exit wait of process `proc` failed to be set up: try again.
    ExitRetry { proc: u64 },
}

/// How long after a failed exit wait (an epoll set out of room, say) it is
/// set up again.
const EXIT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a start request waits for a process's files to open before it
/// is answered without that process's pid.
const OPEN_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) struct Reactor {
    ring: Driver<Tag>,
    mailbox: Mailbox<Command>,
    wake_fd: Rc<OwnedFd>,
    config: Config,
    stack: ChildStack,
    stat_ctx: Option<StatContext>,
    /// `/dev/null` for `null` fds, opened once per access mode.
    null_fds: proc::NullFds,
    /// Closes perf counters off this thread.
    closer: super::closer::Closer,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The agent's working directory at start.
    cwd: Option<std::path::PathBuf>,
    /// The processes, their ids and serials, and the launch budget.
    table: ProcTable,
    subscribers: Vec<super::events::Publisher>,
    /// Procstar's shutdown state, and the policy that left `Active`.
    shutdown: ShutdownState,
    policy: Option<ShutdownPolicy>,
    /// When the terminate policy's grace ends: SIGKILL to what still runs.
    kill_at: Option<Instant>,
    /// Callers waiting for the shutdown state `done`.
    done_waiters: Vec<Box<dyn FnOnce(()) + Send>>,
    /// Processes whose exit completed in the current batch.
    exited: Vec<u64>,
    /// Buffer for draining pipes at exit.
    scratch: Vec<u8>,
    /// Buffer for `/proc/<pid>/stat` at exit.
    stat_buf: Vec<u8>,
    cqes: Vec<Cqe>,
    /// Long-lived fds live at or above this number.
    fd_floor: i32,
    /// The second spawning thread.
    spawner: Spawner,
    /// Spawns the spawner thread finished.
    spawned_rx: std::sync::mpsc::Receiver<Done>,
    /// Procs on the spawner thread: their exe path (for error messages) and
    /// their queue entry (to queue them again if the spawn ran out of fds).
    starting: HashMap<u64, (String, Queued)>,
    /// Processes waiting to be launched, in request order.
    queue: std::collections::VecDeque<Queued>,
    /// Start requests not yet answered, by request number: the procs still
    /// to start or fail, their ids and the reply.
    pending_starts: HashMap<u64, PendingStart>,
    /// The number of the next start request.
    next_request: u64,
    /// Whether the sampling timer is armed.
    sampling: bool,
    /// The environment last built (processes started alike share one).
    env_cache: proc::EnvCache,
    /// The compression thread (started on the first `compress` capture).
    packer: Packer,
    /// Compressions the compression thread finished.
    packed_rx: std::sync::mpsc::Receiver<packer::Done>,
    /// Opens spec files off this thread.
    opener: Opener,
    opened_rx: std::sync::mpsc::Receiver<opener::Done>,
    /// Processes waiting for their files.
    opening: HashMap<u64, Opening>,
    /// Kept-file captures whose pipe reads are to be paused (backpressure),
    /// cancelled once the current batch of completions is handled.
    pauses: Vec<(u64, usize)>,
    /// Callers waiting for every process to be final (`Command::WaitAll`).
    all_waiters: Vec<Box<dyn FnOnce(()) + Send>>,
    /// Whether a process settled or finished a compression since the last
    /// look at `all_waiters`.
    settled: bool,
    /// Whether a process settled or was deleted since `check_done` last looked.
    settled_for_done: bool,
    /// Readers waiting for a capture to grow (`Command::FdWait`), looked at
    /// once per loop while there are any.
    data_waiters: Vec<DataWaiter>,
    /// Bytes held by memory captures under `--output-limit`, if set.
    budget: Option<crate::capture::limit::Budget<super::outlimit::CapKey>>,
    /// The last overview's generation (see `status`).
    generation: u64,
}

/// A start request's reply, held until each of its procs has started or failed:
/// how many have not, the ids, the reply.
type PendingStart = (
    usize,
    Vec<ProcId>,
    Box<dyn FnOnce(Result<Vec<ProcId>, StartError>) + Send>,
);

/// A reader waiting for capture `cap` of process `serial` to hold more than
/// `offset` bytes.
struct DataWaiter {
    serial: u64,
    cap: usize,
    offset: u64,
    deadline: Instant,
    reply: Box<dyn FnOnce(Result<FdWaited, FdDataError>) + Send>,
}

/// A process waiting to be launched: its spec, and the pipes of its request
/// (`pipe` fds between the request's processes).
struct Queued {
    serial: u64,
    spec: Rc<spec::ProcSpec>,
    pipes: Rc<std::cell::RefCell<proc::RequestPipes>>,
    /// Its files, once the opener has opened them (`None`: not yet asked).
    opened: Option<Vec<(usize, Opened)>>,
    /// Spawns that failed for want of an fd while nothing else held a slot.
    fd_retries: u8,
}

/// How often a spawn that found no fd is tried again while no other process
/// holds one: the fds may have been held only for a moment (another plan
/// being built on the reactor while the spawner thread cloned).
const ALONE_FD_RETRIES: u8 = 3;

/// A process whose files are being opened: its queue entry and the timer of
/// its timeout, if it has one.
struct Opening {
    q: Queued,
    timer: Option<u64>,
    slow: Option<u64>,
}

impl Opening {
    /// The timers' keys, to cancel.
    fn timers(&mut self) -> impl Iterator<Item = u64> {
        self.timer.take().into_iter().chain(self.slow.take())
    }
}

/// How long the reactor spawns before it serves completions, timers and
/// commands again.
const SPAWN_SLICE: std::time::Duration = std::time::Duration::from_millis(2);

impl Reactor {
    pub(crate) fn new(config: Config, mailbox: Mailbox<Command>) -> Result<Reactor, StartupError> {
        let buf_size = u32::try_from(config.pipe_size.max(4096)).unwrap_or(1 << 20);
        let ring = Driver::new(
            config.backend,
            config.ring_entries,
            config.buf_entries,
            buf_size,
        )
        .map_err(StartupError::Ring)?;
        let wake_fd = Rc::new(
            crate::sys::fd::dup_cloexec(rustix::fd::AsFd::as_fd(&*mailbox.wake))
                .map_err(|e| StartupError::Sys("dup of eventfd", e))?,
        );
        let stack = ChildStack::new().map_err(|e| StartupError::Sys("mmap of child stack", e))?;
        let stat_ctx = StatContext::from_system().ok();
        if config.perf {
            // Probe (and log what the machine allows) at startup, not at the first spawn.
            crate::metrics::perf::probe();
        }
        let (done_tx, spawned_rx) = std::sync::mpsc::channel();
        let spawner =
            Spawner::new(config.spawn_threads, done_tx, mailbox.wake.clone()).map_err(|e| {
                let errno =
                    rustix::io::Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EAGAIN));
                StartupError::Sys("starting the spawner thread", errno)
            })?;
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let opener = Opener::new(opened_tx, mailbox.wake.clone());
        let (packed_tx, packed_rx) = std::sync::mpsc::channel();
        let packer = Packer::new(packed_tx, mailbox.wake.clone());
        tracing::debug!(backend = ring.name(), features = ?ring.features(), "reactor ready");
        let output_limit = config.output_limit.map(crate::capture::limit::Budget::new);
        let max_running = config
            .max_running
            .unwrap_or_else(default_max_running)
            .max(1);
        Ok(Reactor {
            ring,
            mailbox,
            wake_fd,
            config,
            stack,
            stat_ctx,
            null_fds: proc::NullFds::default(),
            closer: super::closer::Closer::new(),
            env: std::env::vars_os().collect(),
            cwd: std::env::current_dir().ok(),
            table: ProcTable::new(max_running),
            subscribers: Vec::new(),
            shutdown: ShutdownState::Active,
            policy: None,
            kill_at: None,
            done_waiters: Vec::new(),
            exited: Vec::new(),
            scratch: vec![0u8; 64 * 1024],
            stat_buf: Vec::with_capacity(1024),
            cqes: Vec::with_capacity(256),
            fd_floor: crate::sys::fd::high_floor(),
            spawner,
            spawned_rx,
            starting: HashMap::new(),
            queue: std::collections::VecDeque::new(),
            pending_starts: HashMap::new(),
            next_request: 0,
            sampling: false,
            env_cache: proc::EnvCache::default(),
            packer,
            packed_rx,
            opener,
            opened_rx,
            opening: HashMap::new(),
            pauses: Vec::new(),
            budget: output_limit,
            generation: 0,
            all_waiters: Vec::new(),
            settled: false,
            settled_for_done: false,
            data_waiters: Vec::new(),
        })
    }

    /// Runs until every `Agent` handle is dropped and no process is running.
    pub(crate) fn run(mut self) {
        self.ring.read(self.wake_fd.clone(), 8, Tag::Wake);
        let mut closed = false;
        loop {
            self.drain_spawned();
            self.drain_opened();
            self.drain_packed();
            if !closed {
                closed = self.drain_mailbox();
            }
            self.launch_queued();
            if self.kill_at.is_some_and(|t| t <= Instant::now()) {
                self.kill_at = None;
                self.signal_all(libc::SIGKILL);
            }
            // After the drains above (a compression or spawn they took in may
            // be what a waiter waits for) and before blocking in the ring.
            self.check_done();
            self.answer_all_waiters();
            let next_deadline = self.answer_data_waiters();
            if closed && !self.table.values().any(Proc::is_busy) {
                break;
            }
            // With processes still to launch, only look at what has completed.
            let want = usize::from(!self.may_launch());
            let until_kill = match (self.kill_at, next_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|t| t.saturating_duration_since(Instant::now()));
            // Whatever this turn closes goes to the closing thread at once.
            self.closer.flush();
            if let Err(e) = self.ring.submit_and_wait(want, until_kill) {
                tracing::error!("waiting for completions ({}) failed: {e}", self.ring.name());
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            self.ring.reap(&mut cqes);
            for cqe in &cqes {
                self.dispatch(cqe);
            }
            self.cqes = cqes;
            let exited = std::mem::take(&mut self.exited);
            for serial in &exited {
                self.finish_exit(*serial);
            }
            self.exited = exited;
            self.exited.clear();
            self.apply_pauses();
        }
        self.shutdown_state(ShutdownState::Done);
        // Dropping the publishers (and any subscription still in the mailbox)
        // closes the subscriptions.
    }

    /// Leaves `Active` by `policy`: new starts are refused from now on.
    fn begin_shutdown(&mut self, policy: ShutdownPolicy) {
        let harder = match (self.policy, policy) {
            (None, _) => true,
            (Some(ShutdownPolicy::Idle), ShutdownPolicy::Idle) => false,
            (Some(ShutdownPolicy::Idle), _) => true,
            (Some(ShutdownPolicy::Terminate { .. }), ShutdownPolicy::Kill) => true,
            _ => false,
        };
        if self.shutdown == ShutdownState::Done || !harder {
            return;
        }
        tracing::info!(?policy, "shutting down");
        self.policy = Some(policy);
        self.shutdown_state(ShutdownState::Idling);
        match policy {
            ShutdownPolicy::Idle => {}
            ShutdownPolicy::Kill => {
                self.unqueue_all();
                self.kill_at = None;
                self.signal_all(libc::SIGKILL);
            }
            ShutdownPolicy::Terminate { grace } => {
                self.unqueue_all();
                self.signal_all(libc::SIGTERM);
                self.kill_at = Some(Instant::now() + grace);
            }
        }
        self.settled_for_done = true;
    }

    /// Processes still queued never start: each fails, saying why.
    fn unqueue_all(&mut self) {
        for q in std::mem::take(&mut self.queue) {
            if let Some(p) = self.table.get_mut(q.serial) {
                p.errors
                    .push("not started: the agent is shutting down".to_string());
            }
            self.settle_unstarted(q.serial);
            self.start_resolved(q.serial);
        }
    }

    /// Sends `signum` to every running process; those waiting for their files
    /// never start.
    fn signal_all(&mut self, signum: i32) {
        let opening: Vec<u64> = self.opening.keys().copied().collect();
        for serial in opening {
            self.abandon_opening(
                serial,
                "not started: the agent is shutting down (it was opening its files)".into(),
            );
        }
        for p in self.table.values() {
            if matches!(p.life, Life::Running) {
                if let Err(e) = signal_proc(p, signum) {
                    tracing::debug!(id = %p.id, signum, "shutdown signal failed: {e}");
                }
            }
        }
    }

    /// Moves to `state` (once), telling subscribers; `done` answers its waiters.
    fn shutdown_state(&mut self, state: ShutdownState) {
        if self.shutdown == state {
            return;
        }
        self.shutdown = state;
        self.emit(Event::Shutdown(state));
        if state == ShutdownState::Done {
            for w in std::mem::take(&mut self.done_waiters) {
                w(());
            }
        }
    }

    /// Whether shutting down has finished: nothing runs (terminate, kill) or
    /// nothing is left (idle). Looked at only after something settled.
    fn check_done(&mut self) {
        if self.shutdown != ShutdownState::Idling || !std::mem::take(&mut self.settled_for_done) {
            return;
        }
        let done = match self.policy {
            Some(ShutdownPolicy::Idle) => self.table.is_empty(),
            Some(_) => self.queue.is_empty() && !self.table.values().any(Proc::is_busy),
            None => false,
        };
        if done {
            self.shutdown_state(ShutdownState::Done);
        }
    }

    /// Answers [`Command::WaitAll`] once every process is final. Looks only
    /// after something settled, so a long wait costs nothing per loop.
    fn answer_all_waiters(&mut self) {
        if self.all_waiters.is_empty() || !std::mem::take(&mut self.settled) {
            return;
        }
        if self.queue.is_empty() && self.table.values().all(Proc::is_final) {
            for w in std::mem::take(&mut self.all_waiters) {
                w(());
            }
        }
    }

    /// Answers the readers whose capture grew past their offset, can grow no
    /// more, or whose process is gone, and those whose deadline passed; returns
    /// the nearest deadline left.
    fn answer_data_waiters(&mut self) -> Option<Instant> {
        if self.data_waiters.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut i = 0;
        while i < self.data_waiters.len() {
            let w = &self.data_waiters[i];
            let state = self
                .table
                .get(w.serial)
                .and_then(|p| Some(p.captures.get(w.cap)?.growth(p.is_busy())));
            let answer = match state {
                None => Some(Err(FdDataError::Unknown(String::new()))),
                Some((length, open))
                    if !open || length.is_some_and(|l| l > w.offset) || w.deadline <= now =>
                {
                    Some(Ok(FdWaited { length, open }))
                }
                // A tempfile grows unseen: its readers poll.
                Some((None, _)) => Some(Ok(FdWaited {
                    length: None,
                    open: true,
                })),
                Some(_) => None,
            };
            match answer {
                Some(a) => {
                    let w = self.data_waiters.swap_remove(i);
                    (w.reply)(a);
                }
                None => {
                    next = Some(next.map_or(w.deadline, |n| n.min(w.deadline)));
                    i += 1;
                }
            }
        }
        next
    }

    fn dispatch(&mut self, cqe: &Cqe) {
        let Some(tag) = self.ring.tag(cqe).copied() else {
            tracing::warn!(key = cqe.key(), "completion for an unknown op");
            return;
        };
        match tag {
            Tag::Wake => {
                // Commands are drained at the top of the loop; re-arm the read.
                if !cqe.more {
                    self.ring.finish(cqe);
                    if let Err(e) = cqe.result {
                        // Commands are still drained every turn; only the
                        // wake-up is lost. Not a busy loop while it fails.
                        tracing::warn!("the wake-up read failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    self.ring.read(self.wake_fd.clone(), 8, Tag::Wake);
                }
                return;
            }
            Tag::Pipe { proc, cap } => {
                let data = self.ring.data(cqe);
                let mut kept = false;
                if self.table.get(proc).is_some_and(Proc::takes_output) {
                    kept = outlimit::push(
                        self.budget.as_mut(),
                        self.table.by_serial_mut(),
                        proc,
                        cap,
                        data,
                    );
                }
                self.ring.finish(cqe);
                if kept {
                    self.kept_pushed(proc, cap);
                }
                if !cqe.more {
                    self.pipe_read_ended(proc, cap, cqe);
                }
                return;
            }
            Tag::Timeout { proc, kill } => {
                self.ring.finish(cqe);
                self.timeout_fired(proc, kill);
                return;
            }
            // A cancelled timer completes too: only one still armed counts.
            Tag::OpenSlow { proc } => {
                self.ring.finish(cqe);
                if let Some(o) = self.opening.get_mut(&proc).filter(|o| o.slow.is_some()) {
                    o.slow = None;
                    self.answer_request(proc);
                }
                return;
            }
            Tag::OpenTimeout { proc } => {
                self.ring.finish(cqe);
                match self.opening.get_mut(&proc) {
                    Some(o) if o.timer.is_some() => o.timer = None,
                    _ => return,
                }
                let after = self
                    .opening
                    .get(&proc)
                    .and_then(|o| o.q.spec.timeout.as_ref())
                    .map_or(0.0, |t| t.after);
                self.abandon_opening(
                    proc,
                    format!("not started: timed out after {after} s opening its files"),
                );
                return;
            }
            Tag::Sample => {
                self.ring.finish(cqe);
                self.sample_all();
                return;
            }
            Tag::FileWrite { proc, cap } => {
                let buf = self.ring.take_write_buf(cqe);
                self.ring.finish(cqe);
                self.kept_written(proc, cap, cqe.result, buf);
                return;
            }
            Tag::Exit { proc } => {
                tracing::debug!(proc, result = ?cqe.result, "exit completion");
                if let Err(e) = cqe.result {
                    // Not an exit: the wait could not be set up. Taking it
                    // for one would reap a running child (a blocking wait).
                    tracing::warn!(proc, "exit wait failed: {e}; trying again");
                    self.ring.finish(cqe);
                    self.ring.timeout(EXIT_RETRY, Tag::ExitRetry { proc });
                    return;
                }
                if !self.exited.contains(&proc) {
                    self.exited.push(proc);
                }
            }
            Tag::ExitRetry { proc } => {
                self.ring.finish(cqe);
                let pidfd = self
                    .table
                    .get(proc)
                    .filter(|p| p.is_running())
                    .and_then(|p| p.pidfd.clone());
                if let Some(fd) = pidfd {
                    self.ring.wait_exit(fd, Tag::Exit { proc });
                }
                return;
            }
        }
        self.ring.finish(cqe);
    }

    /// A timeout's timer fired: send its signal (then arm the SIGKILL timer), or the
    /// SIGKILL itself. Nothing happens once the process has exited.
    fn timeout_fired(&mut self, serial: u64, kill: bool) {
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        let running = p.is_running();
        let Some(t) = p.timeout.as_mut() else { return };
        t.timer = None;
        if !running {
            return;
        }
        let signum = if kill { libc::SIGKILL } else { t.signum };
        if kill {
            t.killed = true;
        } else {
            t.fired_at = Some(SystemTime::now());
            if let Some(after) = t.kill_after {
                t.timer = Some(self.ring.timeout(
                    after,
                    Tag::Timeout {
                        proc: serial,
                        kill: true,
                    },
                ));
            }
        }
        tracing::info!(id = %p.id, signum, "timeout fired");
        if let Err(e) = signal_proc(p, signum) {
            tracing::warn!(id = %p.id, signum, "timeout signal failed: {e}");
        }
    }

    /// The sampling timer fired: sample `/proc` of every running process, and arm
    /// the timer again while any runs. Each sample is a few small `/proc` reads
    /// (about 20 µs a process), so even a thousand processes take the reactor
    /// only milliseconds a tick.
    fn sample_all(&mut self) {
        self.sampling = false;
        let Some(ctx) = self.stat_ctx.as_ref() else {
            return;
        };
        let mut any = false;
        for p in self.table.values_mut() {
            if matches!(p.life, Life::Running) {
                if p.sample(ctx, &mut self.stat_buf) {
                    p.record_history();
                }
                any = true;
            }
        }
        if any {
            self.arm_sampling();
        }
    }

    /// Arms the sampling timer unless it is armed or sampling is off.
    fn arm_sampling(&mut self) {
        if self.sampling || self.stat_ctx.is_none() {
            return;
        }
        if let Some(every) = self.config.sample_interval.filter(|d| !d.is_zero()) {
            self.ring.timeout(every, Tag::Sample);
            self.sampling = true;
        }
    }

    /// A pipe read op ended: at EOF the pipe is closed; otherwise (ENOBUFS, a
    /// single-shot read) it is armed again while the process runs.
    fn pipe_read_ended(&mut self, serial: u64, cap: usize, cqe: &Cqe) {
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        let running = p.is_running();
        let exiting = matches!(p.life, Life::Exiting);
        let Some(store) = p.captures.get_mut(cap).map(|c| &mut c.store) else {
            return;
        };
        // Whether this is a kept file, and one paused for backpressure.
        let kept = store.kept_mut().map(|f| f.paused);
        let Some(pipe) = store.pipe_mut() else {
            return;
        };
        pipe.read_key = None;
        if exiting {
            // Its last read may have ended: the exit goes on (`finish_exit`).
            if !self.exited.contains(&serial) {
                self.exited.push(serial);
            }
            return;
        }
        let rearm = match cqe.result {
            Ok(0) => false, // EOF
            Ok(_) => true,  // single-shot read
            Err(e) => {
                e == rustix::io::Errno::NOBUFS
                    || e == rustix::io::Errno::INTR
                    || e == rustix::io::Errno::AGAIN
                    // A kept file's read cancelled for backpressure.
                    || (e == rustix::io::Errno::CANCELED && kept.is_some())
            }
        };
        if !rearm {
            // End of file, or an error a re-armed read would only repeat:
            // said in the result, as the capture may have lost bytes.
            pipe.fd = None;
            if let Err(e) = cqe.result {
                let name = p
                    .captures
                    .get(cap)
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                p.errors.push(format!(
                    "reading the {name} capture failed: {}",
                    std::io::Error::from(e)
                ));
            }
            return;
        }
        // A paused kept file re-arms when its writes catch up (`kept_written`).
        if !running || kept == Some(true) {
            return;
        }
        if let Some(fd) = pipe.fd.clone() {
            pipe.read_key = Some(
                self.ring
                    .read_multishot(fd, Tag::Pipe { proc: serial, cap }),
            );
        }
    }

    /// The process exited (not yet reaped), or the last pipe read of an exited
    /// one ended. At the exit: snapshot `/proc/<pid>/stat`, `io` and perf of the
    /// zombie, and cancel its pipe reads. Once no read of its pipes can complete
    /// any more (each read's final completion, which may still carry bytes, has
    /// been handled): drain what is left in the pipes, reap it with rusage,
    /// freeze its captures, publish.
    fn finish_exit(&mut self, serial: u64) {
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        match p.life {
            Life::Running => {}
            Life::Exiting if !p.reading() => return self.complete_exit(serial),
            _ => return,
        }
        p.exited_at = Some((SystemTime::now(), Instant::now()));
        if self.config.read_proc_at_exit {
            if let (Some(pid), Some(ctx)) = (p.pid, self.stat_ctx.as_ref()) {
                p.proc_stat = proc::read_stat(pid, ctx, &mut self.stat_buf).or(p.proc_stat.take());
            }
            // Still readable for the zombie: its final I/O counts.
            p.read_io(&mut self.stat_buf);
        }
        // The zombie's counters are final (its exited children's counts folded in):
        // read them before the reap, and close them.
        if let Some(perf) = p.perf.as_mut() {
            self.closer.close(perf.finish());
        }
        p.life = Life::Exiting;
        // A read's bytes may reach us after the exit's completion: a multishot
        // read that overflowed the completion queue ends with a completion that
        // carries its last bytes, posted after completions that came later. So
        // the captures wait for every read's final completion, not just the exit.
        for c in p.captures.iter_mut() {
            if let Some(PipeIn {
                read_key: Some(key),
                ..
            }) = c.store.pipe_mut()
            {
                self.ring.cancel(*key);
            }
        }
        if !p.reading() {
            self.complete_exit(serial);
        }
    }

    /// An exited process none of whose pipe reads is in flight: drain the pipes
    /// (their bytes are newer than every completion handled), reap, settle.
    fn complete_exit(&mut self, serial: u64) {
        for cap in 0..self.table.get(serial).map_or(0, |p| p.captures.len()) {
            let Some(PipeIn {
                fd: Some(fd),
                read_key: None,
            }) = self
                .table
                .get_mut(serial)
                .and_then(|p| p.captures.get_mut(cap))
                .and_then(|c| c.store.pipe_mut())
            else {
                continue;
            };
            let fd = fd.clone();
            // At most one pipe's worth: all a dead writer can have left. A
            // descendant still writing into the pipe must not keep the reactor
            // here (or a kept file's staging growing); its later output is not
            // part of this process's capture.
            // (The kernel rounds a pipe's size up to a power of two pages; one
            // that kept its default has 16 pages.)
            let default_pipe = 16 * rustix::param::page_size();
            let mut left = self.config.pipe_size.max(default_pipe).next_power_of_two();
            while left > 0 {
                let want = self.scratch.len().min(left);
                match pipe::read(&*fd, self.scratch.get_mut(..want).unwrap_or(&mut [])) {
                    Ok(0) | Err(_) => break,
                    // Kept files' staged bytes are written by `flush_kept` below.
                    Ok(n) => {
                        left = left.saturating_sub(n);
                        _ = outlimit::push(
                            self.budget.as_mut(),
                            self.table.by_serial_mut(),
                            serial,
                            cap,
                            self.scratch.get(..n).unwrap_or(&[]),
                        )
                    }
                }
            }
        }
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        // Reaped, the pidfd has nothing more to say: close it (a thousand
        // finished results must not hold a thousand fds).
        let reaped = match p.pidfd.take().map(|fd| wait::reap(&*fd)) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                p.errors.push(format!("waitid failed: {e}"));
                None
            }
            None => None,
        };
        let (status, rusage) = reaped.map_or((-1, Default::default()), |r| (r.status, r.rusage));
        let rusage = Rusage::from_raw(&rusage);
        p.life = Life::Done { status, rusage };
        if let Some(key) = p.timeout.as_mut().and_then(|t| t.timer.take()) {
            self.ring.cancel(key);
        }
        // Kept files get their last bytes; the process settles once they are in.
        self.flush_kept(serial);
        self.settle_exited(serial);
    }

    /// Hands the finished captures of a process whose spec asks for `compress`
    /// to the compression thread.
    fn compress_captures(&mut self, serial: u64) {
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        let mut failed = Vec::new();
        for (cap, c) in p.captures.iter_mut().enumerate() {
            if let Some(job) = c.compress_job(&self.config.tmpdir) {
                if let Err(e) = self.packer.submit(serial, cap, job) {
                    let _ = c.compressed(Err(e));
                }
            }
            // Failed without a job (or its submission): done, as far as
            // subscribers waiting for `Compressed` are concerned.
            if c.compression_failed() {
                failed.push(Event::Compressed(p.id.clone(), c.name.clone()));
            }
        }
        // Nothing to compress (or all failed at once): final now.
        p.answer_final_waiters(self.stat_ctx.as_ref());
        for event in failed {
            self.emit(event);
        }
    }

    /// Takes compressions the compression thread finished (results for deleted
    /// processes are dropped).
    fn drain_packed(&mut self) {
        while let Ok((serial, cap, result)) = self.packed_rx.try_recv() {
            let Some(p) = self.table.get_mut(serial) else {
                continue;
            };
            let Some(c) = p.captures.get_mut(cap) else {
                continue;
            };
            if let Err(e) = &result {
                tracing::warn!(id = %p.id, fd = %c.name, "compression failed: {e}");
            }
            let held = |c: &proc::Capture| match &c.store {
                Store::Memory {
                    frozen: Some(f), ..
                } => Some(f.held() as u64),
                _ => None,
            };
            let before = held(c);
            if let Some(old) = c.compressed(result) {
                self.packer.release(old);
            }
            // The uncompressed buffers are gone: their bytes leave the budget.
            if let (Some(bytes), None, Some(budget)) = (before, held(c), self.budget.as_mut()) {
                budget.remove((serial, cap), bytes);
            }
            let event = Event::Compressed(p.id.clone(), c.name.clone());
            self.settled = true;
            p.answer_final_waiters(self.stat_ctx.as_ref());
            self.emit(event);
        }
    }

    fn emit(&mut self, event: Event) {
        self.subscribers.retain(|s| s.subscribed());
        for s in &self.subscribers {
            s.push(&event);
        }
    }

    /// Handles queued commands; returns true once every sender is gone.
    fn drain_mailbox(&mut self) -> bool {
        loop {
            match self.mailbox.try_recv() {
                Ok(Command::Close) => return true,
                Ok(cmd) => self.command(cmd),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Start(input, answer, reply) => match self.start(input) {
                // Answered once every proc of the request has a pid, has
                // failed, or waits in the queue behind `max_running`: callers
                // may signal or query a started one at once.
                Ok((request, ids)) if !ids.is_empty() && answer == StartAnswer::Launched => {
                    self.pending_starts.insert(request, (ids.len(), ids, reply));
                }
                Ok((_, ids)) => reply(Ok(ids)),
                Err(e) => reply(Err(e)),
            },
            Command::Result(id, reply) => {
                let snap = self
                    .table
                    .serial(&id)
                    .and_then(|s| self.table.get_mut(s))
                    .map(|p| p.snapshot(self.stat_ctx.as_ref()));
                reply(snap);
            }
            Command::ResultBrief(id, reply) => {
                let snap = self
                    .table
                    .serial(&id)
                    .and_then(|s| self.table.get_mut(s))
                    .map(|p| p.snapshot_with(self.stat_ctx.as_ref(), true));
                reply(snap);
            }
            Command::Results(reply) => {
                let ctx = self.stat_ctx.as_ref();
                let mut out: Vec<(ProcId, Snapshot)> = self
                    .table
                    .values_mut()
                    .map(|p| (p.id.clone(), p.snapshot(ctx)))
                    .collect();
                out.sort_by(|a, b| a.0.cmp(&b.0));
                reply(out);
            }
            Command::Overview(select, reply) => reply(self.overview(select)),
            Command::History(id, reply) => {
                let points = self
                    .table
                    .serial(&id)
                    .and_then(|s| self.table.get(s))
                    .map(|p| {
                        p.sampled
                            .history
                            .as_ref()
                            .map(|h| h.points())
                            .unwrap_or_default()
                    });
                reply(points);
            }
            Command::Ids(reply) => reply(self.table.ids()),
            Command::Wait(id, compressed, reply) => {
                let ctx = self.stat_ctx.as_ref();
                match self.table.serial(&id).and_then(|s| self.table.get_mut(s)) {
                    None => reply(None),
                    Some(p) if compressed && !p.is_final() => {
                        p.final_waiters.push(Box::new(move |s| reply(Some(s))));
                    }
                    Some(p) if p.is_busy() => p.waiters.push(Box::new(move |s| reply(Some(s)))),
                    Some(p) => reply(Some(p.snapshot(ctx))),
                }
            }
            Command::WaitAll(reply) => {
                self.all_waiters.push(reply);
                self.settled = true;
                self.answer_all_waiters();
            }
            Command::Signal(id, signum, reply) => {
                // A process still waiting for its files never starts.
                if let Some(s) = self
                    .table
                    .serial(&id)
                    .filter(|s| self.opening.contains_key(s))
                {
                    self.abandon_opening(
                        s,
                        format!(
                            "not started: signal {} while opening its files",
                            crate::signal::signal_name(signum)
                                .map_or_else(|| signum.to_string(), str::to_string)
                        ),
                    );
                    reply(Ok(()));
                    return;
                }
                let r = match self.table.serial(&id).and_then(|s| self.table.get(s)) {
                    None => Err(ProcError::Unknown(id)),
                    Some(p) => signal_proc(p, signum).map_err(|e| {
                        if e == rustix::io::Errno::SRCH {
                            ProcError::NoProcess
                        } else {
                            ProcError::Signal(e.into())
                        }
                    }),
                };
                reply(r);
            }
            Command::FdData(id, fd, (start, stop), reply) => {
                let r = match self.table.serial(&id).and_then(|s| self.table.get(s)) {
                    None => Err(FdDataError::Unknown(id)),
                    Some(p) => {
                        let norm = spec::parse_fd_name(&fd)
                            .map(spec::fd_name)
                            .unwrap_or(fd.clone());
                        match p.captures.iter().find(|c| c.name == norm) {
                            // Procstar's wording names the number: "no fd: 2".
                            None => Err(FdDataError::NoFd(
                                spec::parse_fd_name(&fd).map_or(fd, |n| n.to_string()),
                            )),
                            Some(c) => Ok((c.range(start, stop), c.encoding)),
                        }
                    }
                };
                reply(r);
            }
            Command::FdWait(id, fd, offset, deadline, reply) => {
                let found = match self.table.serial(&id).map(|s| (s, self.table.get(s))) {
                    Some((s, Some(p))) => {
                        let norm = spec::parse_fd_name(&fd)
                            .map(spec::fd_name)
                            .unwrap_or(fd.clone());
                        match p.captures.iter().position(|c| c.name == norm) {
                            None => Err(FdDataError::NoFd(
                                spec::parse_fd_name(&fd).map_or(fd, |n| n.to_string()),
                            )),
                            Some(cap) => Ok((s, cap)),
                        }
                    }
                    _ => Err(FdDataError::Unknown(id.clone())),
                };
                match found {
                    Err(e) => reply(Err(e)),
                    Ok((serial, cap)) => {
                        // A process deleted while its reader waits answers
                        // Unknown with its id.
                        let reply = Box::new(move |r: Result<FdWaited, FdDataError>| {
                            reply(r.map_err(|e| match e {
                                FdDataError::Unknown(_) => FdDataError::Unknown(id),
                                e => e,
                            }))
                        });
                        self.data_waiters.push(DataWaiter {
                            serial,
                            cap,
                            offset,
                            deadline,
                            reply,
                        });
                    }
                }
            }
            Command::Delete(id, reply) => {
                if let Some(s) = self
                    .table
                    .serial(&id)
                    .filter(|s| self.opening.contains_key(s))
                {
                    self.abandon_opening(s, "not started: deleted while opening its files".into());
                }
                let r = match self.table.serial(&id) {
                    None => Err(ProcError::Unknown(id)),
                    Some(s) => {
                        if self.table.get(s).is_some_and(Proc::is_busy) {
                            Err(ProcError::Running(id))
                        } else {
                            if let Some(p) = self.table.remove(s) {
                                outlimit::forget(self.budget.as_mut(), s, &p);
                            }
                            self.settled_for_done = true;
                            self.emit(Event::Deleted(id));
                            Ok(())
                        }
                    }
                };
                reply(r);
            }
            Command::Subscribe(shared) => self.subscribers.push(shared),
            Command::Close => {}
            Command::Shutdown(policy, reply) => {
                self.begin_shutdown(policy);
                reply(());
            }
            Command::State(reply) => reply(self.shutdown),
            Command::WaitDone(reply) if self.shutdown == ShutdownState::Done => reply(()),
            Command::WaitDone(reply) => {
                self.done_waiters.push(reply);
                self.settled_for_done = true;
                self.check_done();
            }
        }
    }

    /// The table in brief (see [`status`]): rows built from
    /// what is held, without `/proc` reads or copies of output.
    fn overview(&mut self, select: status::Select) -> status::Overview {
        use status::Select;
        self.generation += 1;
        let mut counts = status::Counts::default();
        for p in self.table.values() {
            counts.add(p.phase());
        }
        let mut rows: Vec<status::Row> = match select {
            Select::All => self.table.values().map(Proc::row).collect(),
            Select::Live => self
                .table
                .values()
                .filter(|p| p.phase().is_live())
                .map(Proc::row)
                .collect(),
            Select::Ids(ids) => ids
                .iter()
                .filter_map(|id| self.table.serial(id))
                .filter_map(|s| self.table.get(s))
                .map(Proc::row)
                .collect(),
            Select::None => Vec::new(),
        };
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        let f = self.ring.features();
        status::Overview {
            generation: self.generation,
            rows,
            counts,
            output_held: self.budget.as_ref().map(|b| b.held()),
            output_limit: self.budget.as_ref().map(|b| b.limit()),
            shutdown_state: self.shutdown,
            backend: status::Backend {
                name: self.ring.name(),
                waitid: f.waitid,
                read_multishot: f.read_multishot,
                buf_ring_inc: f.buf_ring_inc,
            },
        }
    }

    /// Validates a request and queues each of its processes; returns the
    /// request's number and its ids.
    fn start(&mut self, input: Input) -> Result<(u64, Vec<ProcId>), StartError> {
        if self.shutdown != ShutdownState::Active {
            return Err(StartError::ShuttingDown(self.shutdown));
        }
        let table = &self.table;
        spec::validate_with_existing(&input, |id| table.contains_id(id))
            .map_err(StartError::Spec)?;
        let pipes = proc::request_pipes(&input)
            .map_err(|(id, msg)| StartError::Resource { proc_id: id, msg })?;
        let pipes = Rc::new(std::cell::RefCell::new(pipes));
        let request = self.next_request;
        self.next_request += 1;
        let mut started = Vec::with_capacity(input.specs.len());
        for (id, ps) in input.specs {
            let mut proc = Proc::queued(id.clone(), request);
            proc.argv = Arc::from(ps.argv.as_slice());
            let serial = self.table.insert(proc);
            self.queue.push_back(Queued {
                serial,
                spec: Rc::new(ps),
                pipes: pipes.clone(),
                opened: None,
                fd_retries: 0,
            });
            started.push(id);
        }
        Ok((request, started))
    }

    /// Whether a queued process may be launched now. One with `pipe` fds to
    /// others of its request goes past `max_running`: its peers may be running
    /// and waiting for it (a full pipe), which a queue would deadlock.
    fn may_launch(&self) -> bool {
        let Some(q) = self.queue.front() else {
            return false;
        };
        self.table.may_launch(|| has_request_pipes(&q.spec))
    }

    /// Whether a process that ran out of fds may wait for them in the queue:
    /// not while shutting down, and not with `pipe` fds (their ends were
    /// handed to this attempt and are gone with it).
    fn may_requeue(&self, q: &Queued) -> bool {
        self.shutdown == ShutdownState::Active && !has_request_pipes(&q.spec)
    }

    /// Launches queued processes for at most [`SPAWN_SLICE`], while
    /// `max_running` and the fds allow.
    fn launch_queued(&mut self) {
        let until = Instant::now() + SPAWN_SLICE;
        while self.may_launch() && Instant::now() < until {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            self.launch(q);
        }
        if !self.queue.is_empty() && !self.may_launch() {
            self.answer_queued();
        }
    }

    /// The queue waits for `max_running` or fds: a start request need not wait
    /// for its queued processes to be launched, only for the ones launched to
    /// have pids. Counts the queued processes as done for their requests'
    /// answers, from the back of the queue (the newest) to the first already
    /// counted: everything ahead of it was counted before.
    fn answer_queued(&mut self) {
        let newest: Vec<u64> = self
            .queue
            .iter()
            .rev()
            .take_while(|q| {
                self.table
                    .get(q.serial)
                    .is_some_and(|p| p.request.is_some())
            })
            .map(|q| q.serial)
            .collect();
        for serial in newest {
            self.answer_request(serial);
        }
    }

    /// Builds the plan of a queued process and spawns it (on the spawner thread
    /// if it is idle). A plan that ran out of fds goes back to the head of the
    /// queue while other processes hold fds that they will let go of.
    fn launch(&mut self, mut q: Queued) {
        let serial = q.serial;
        let Some(id) = self.table.get(serial).map(|p| p.id.clone()) else {
            return;
        };
        let ctx = PlanContext {
            env: &self.env,
            tmpdir: &self.config.tmpdir,
            pipe_size: self.config.pipe_size,
            head: self.config.capture_head,
            tail: self.config.capture_tail,
            fd_floor: self.fd_floor,
            pdeath_sig: self.config.pdeath_sig,
            cwd: self.cwd.as_deref(),
            perf: self.config.perf,
            restrict_exe: self.config.restrict_exe.as_deref(),
            report_env: self.config.report_env,
            null: &self.null_fds,
        };
        // Files are opened off this thread first (a FIFO's open may never end).
        if q.opened.is_none() {
            let opens = proc::opens_for(&id, &q.spec, &ctx);
            if !opens.is_empty() {
                match self.opener.submit(serial, opens) {
                    Ok(()) => {
                        let timer = q
                            .spec
                            .timeout
                            .as_ref()
                            .and_then(|t| std::time::Duration::try_from_secs_f64(t.after).ok())
                            .map(|after| {
                                self.ring.timeout(after, Tag::OpenTimeout { proc: serial })
                            });
                        let slow = Some(
                            self.ring
                                .timeout(OPEN_PATIENCE, Tag::OpenSlow { proc: serial }),
                        );
                        if let Some(p) = self.table.get_mut(serial) {
                            p.life = Life::Opening;
                        }
                        self.opening.insert(serial, Opening { q, timer, slow });
                        return;
                    }
                    // No opener thread could start: open here, as before.
                    Err(opens) => q.opened = Some(opens.into_iter().map(opener::open).collect()),
                }
            }
        }
        let opened = q.opened.take().unwrap_or_default();
        let mut prep = proc::prepare(
            &id,
            &q.spec,
            &ctx,
            &mut q.pipes.borrow_mut(),
            &mut self.env_cache,
            opened,
        );
        if prep.out_of_fds && self.table.active() > 0 && self.may_requeue(&q) {
            tracing::debug!(%id, active = self.table.active(), "out of fds: queued until some are freed");
            self.table.fds_ran_short();
            self.queue.push_front(q);
            self.answer_request(serial);
            return;
        }
        if prep.out_of_fds {
            prep.errors.push(out_of_fds_message());
        }
        let plan = prep.plan.take();
        let exe = std::mem::take(&mut prep.exe);
        let started_with = std::mem::take(&mut prep.started_with);
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        p.launched(prep, started_with);
        match plan {
            Some(plan) => {
                self.table.take_slot(serial);
                // Two execs at once: the spawner thread takes this one if it is
                // idle, otherwise the reactor spawns it (and is suspended until
                // it execs).
                match self.spawner.try_spawn(serial, Box::new(plan)) {
                    Ok(()) => {
                        if let Some(p) = self.table.get_mut(serial) {
                            p.life = Life::Starting;
                        }
                        self.starting.insert(serial, (exe, q));
                    }
                    Err(plan) => {
                        let result = spawn(*plan, &mut self.stack);
                        self.spawned(serial, result, &exe, q);
                    }
                }
            }
            None => {
                self.settle_unstarted(serial);
                self.start_resolved(serial);
            }
        }
    }

    /// Process `serial` has started (it has a pid) or failed: tell
    /// subscribers, and answer its start request once that was the last of the
    /// request's processes to do so.
    fn start_resolved(&mut self, serial: u64) {
        let Some(id) = self.table.get(serial).map(|p| p.id.clone()) else {
            return;
        };
        self.emit(Event::Started(id));
        self.answer_request(serial);
    }

    /// Counts process `serial` as done for its start request's answer, which
    /// goes out once every process of the request is.
    fn answer_request(&mut self, serial: u64) {
        let Some(request) = self.table.get_mut(serial).and_then(|p| p.request.take()) else {
            return;
        };
        let Some((left, _, _)) = self.pending_starts.get_mut(&request) else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left == 0 {
            if let Some((_, ids, reply)) = self.pending_starts.remove(&request) {
                reply(Ok(ids));
            }
        }
    }

    /// A process that held a slot (and fds) let go of them.
    fn release_slot(&mut self, serial: u64) {
        self.settled = true;
        self.settled_for_done = true;
        self.table.release_slot(serial);
    }

    /// Takes the outcome of a spawn: arms the exit wait, the pipe reads and the
    /// timeout of a started child, or records why it did not start.
    fn spawned(
        &mut self,
        serial: u64,
        result: Result<Spawned, rustix::io::Errno>,
        exe: &str,
        mut q: Queued,
    ) {
        let out_of_fds = matches!(
            result,
            Err(rustix::io::Errno::MFILE) | Err(rustix::io::Errno::NFILE)
        );
        // EAGAIN from clone: the agent's user is at RLIMIT_NPROC, or the
        // system at pid_max or threads-max. A process ending frees a task
        // as it frees fds, so it waits the same way.
        let out_of_tasks = matches!(result, Err(rustix::io::Errno::AGAIN));
        // With others holding slots, it waits for one of them to end; alone,
        // it is tried again a few times (what held the fds may be gone).
        let others = self.table.active() > 1;
        let again = others || q.fd_retries < ALONE_FD_RETRIES;
        if (out_of_fds || out_of_tasks) && again && self.may_requeue(&q) {
            // No pidfd (or task) to be had now: start it again once one is
            // freed. Its captures (and their pipes) are made anew then.
            self.release_slot(serial);
            if others {
                self.table.fds_ran_short();
            } else {
                q.fd_retries += 1;
            }
            if let Some(p) = self.table.get_mut(serial) {
                let mut fresh = Proc::queued(p.id.clone(), 0);
                fresh.request = p.request;
                fresh.argv = p.argv.clone();
                fresh.waiters = std::mem::take(&mut p.waiters);
                fresh.final_waiters = std::mem::take(&mut p.final_waiters);
                *p = fresh;
            }
            self.queue.push_front(q);
            // Its request need not wait for it (see `answer_queued`).
            self.answer_request(serial);
            return;
        }
        let Some(proc) = self.table.get_mut(serial) else {
            return;
        };
        match result {
            Ok(mut child) => {
                if let Some(perf) = proc.perf.as_mut() {
                    if child.failure.is_some() {
                        // Its counters close with `child.perf`, never read.
                        perf.never_ran("no counts: the child failed before exec");
                    } else {
                        // Long-lived fds live above the floor, as the pidfd below.
                        let fds = std::mem::take(&mut child.perf)
                            .into_iter()
                            .map(|r| r.map(|fd| crate::sys::fd::move_high(fd, self.fd_floor)));
                        perf.attach(fds.collect());
                    }
                }
                if let Some(f) = child.failure {
                    proc.errors.push(proc::failure_message(&f, exe));
                    proc.failure = Some(f);
                }
                proc.pid = Some(child.pid.as_raw_nonzero().get());
                let pidfd = Rc::new(crate::sys::fd::move_high(child.pidfd, self.fd_floor));
                proc.pidfd = Some(pidfd.clone());
                proc.life = Life::Running;
                let key = self.ring.wait_exit(pidfd, Tag::Exit { proc: serial });
                tracing::debug!(serial, id = %proc.id, pid = ?proc.pid, key, "spawned");
                if let Some(t) = proc.timeout.as_mut() {
                    let tag = Tag::Timeout {
                        proc: serial,
                        kill: false,
                    };
                    t.timer = Some(self.ring.timeout(t.after, tag));
                }
                for (cap, c) in proc.captures.iter_mut().enumerate() {
                    if let Some(PipeIn {
                        fd: Some(fd),
                        read_key,
                    }) = c.store.pipe_mut()
                    {
                        *read_key = Some(
                            self.ring
                                .read_multishot(fd.clone(), Tag::Pipe { proc: serial, cap }),
                        );
                    }
                }
            }
            Err(e) => {
                proc.errors
                    .push(format!("spawn failed: {}", std::io::Error::from(e)));
                if out_of_fds {
                    proc.errors.push(out_of_fds_message());
                }
                if out_of_tasks {
                    proc.errors.push(out_of_tasks_message());
                }
                proc.life = Life::NotStarted;
                self.settle_unstarted(serial);
            }
        }
        // Started while shutting down by terminate or kill (it was on the
        // spawner thread): it gets the policy's signal now.
        let late = match self.policy {
            Some(ShutdownPolicy::Kill) => Some(libc::SIGKILL),
            Some(ShutdownPolicy::Terminate { .. }) if self.kill_at.is_some() => Some(libc::SIGTERM),
            Some(ShutdownPolicy::Terminate { .. }) => Some(libc::SIGKILL),
            _ => None,
        };
        if let (Some(signum), Some(p)) = (late, self.table.get(serial)) {
            let _ = signal_proc(p, signum);
        }
        self.start_resolved(serial);
        self.arm_sampling();
    }

    /// A process that never started is final at once: stop time set, captures
    /// frozen (empty), waiters answered.
    fn settle_unstarted(&mut self, serial: u64) {
        let Some(proc) = self.table.get_mut(serial) else {
            return;
        };
        proc.life = Life::NotStarted;
        proc.settle(self.stat_ctx.as_ref());
        self.release_slot(serial);
        self.compress_captures(serial);
    }

    /// Collects the opener's finished jobs: each process goes on to launch;
    /// one abandoned meanwhile has its files discarded.
    fn drain_opened(&mut self) {
        while let Ok((serial, results)) = self.opened_rx.try_recv() {
            match self.opening.remove(&serial) {
                Some(mut o) => {
                    for key in o.timers() {
                        self.ring.cancel(key);
                    }
                    let mut q = o.q;
                    q.opened = Some(results);
                    if let Some(p) = self.table.get_mut(serial) {
                        p.life = Life::Queued;
                    }
                    // Back at the head of the queue: it launches when
                    // `max_running` and the fds allow, as any other.
                    self.queue.push_front(q);
                }
                None => results.into_iter().for_each(|(_, o)| o.discard()),
            }
        }
    }

    /// Gives up on a process waiting for its files (signalled, deleted, timed
    /// out, or the agent shutting down): it never starts, and says `why`. Its
    /// files are discarded when their opens end.
    fn abandon_opening(&mut self, serial: u64, why: String) {
        let Some(mut o) = self.opening.remove(&serial) else {
            return;
        };
        for key in o.timers() {
            self.ring.cancel(key);
        }
        if let Some(p) = self.table.get_mut(serial) {
            p.errors.push(why);
        }
        self.settle_unstarted(serial);
        self.start_resolved(serial);
    }

    /// Collects spawns the spawner thread finished.
    fn drain_spawned(&mut self) {
        while let Ok((serial, result)) = self.spawned_rx.try_recv() {
            if let Some((exe, q)) = self.starting.remove(&serial) {
                self.spawned(serial, result, &exe, q);
            }
        }
    }
}

/// Whether a spec has `pipe` fds to others of its request.
fn has_request_pipes(ps: &spec::ProcSpec) -> bool {
    ps.fds
        .iter()
        .any(|(_, fs)| matches!(fs, spec::FdSpec::PipeWrite | spec::FdSpec::PipeRead { .. }))
}

/// The error of a process that could not be cloned (EAGAIN) with no other
/// process whose end might free a task.
fn out_of_tasks_message() -> String {
    let nproc = rustix::process::getrlimit(rustix::process::Resource::Nproc).current;
    let limit = nproc.map_or("unlimited".to_string(), |n| n.to_string());
    format!(
        "out of processes: the agent's user is at its RLIMIT_NPROC ({limit}), or the system at kernel.pid_max or kernel.threads-max; lower --max-running or raise the limit"
    )
}

/// The error of a process that could not get its fds with no other process
/// holding any that might be freed.
fn out_of_fds_message() -> String {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft {
        Some(n) => format!(
            "out of file descriptors: the agent's RLIMIT_NOFILE is {n}; raise it (ulimit -n) or lower --max-running"
        ),
        None => "out of file descriptors (system-wide limit, fs.file-max)".to_string(),
    }
}

/// Sends `signum` to a running process through its pidfd and, with `kill_group`,
/// to its process group too. Never signals a reaped process: its pid (and so its
/// group id) may belong to someone else by now.
fn signal_proc(p: &Proc, signum: i32) -> Result<(), rustix::io::Errno> {
    let (Life::Running, Some(fd), Some(pid)) = (&p.life, &p.pidfd, p.pid) else {
        return Err(rustix::io::Errno::SRCH);
    };
    let leader = pidfd::send_signal(&**fd, signum);
    if p.kill_group {
        // The leader is not reaped yet (Running), so its pid, which is the group's
        // id, cannot have been reused. ESRCH: the group is already empty.
        let group = pidfd::signal_group(pid, signum);
        if leader.is_err() {
            return group;
        }
    }
    leader
}

/// Why the reactor could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartupError {
    /// The driver (io_uring, or epoll) could not be set up.
    #[error(transparent)]
    Ring(RingError),
    /// A syscall during setup failed.
    #[error("{0} failed")]
    Sys(&'static str, #[source] rustix::io::Errno),
}
