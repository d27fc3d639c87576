//! The reactor thread: one io_uring, the process table, the command mailbox.
//!
//! This file holds the [`Reactor`] itself, its setup, the loop and the
//! dispatch of completions; each other part is an `impl Reactor` of its own:
//! [`commands`] (the server side of [`Command`]), [`start`] (requests, the
//! queue behind `max_running`, plans, spawns), [`opening`] (processes waiting
//! for their files), [`exit`] (exit, drain, reap, settle), [`filecap`] (kept
//! capture files), [`compress`], [`timers`], [`shutdown`] and [`waiters`]. The
//! process table and its launch budget are a [`ProcTable`].

use super::command::Command;
use super::opener::{self, Opener};
use super::outlimit;
use super::packer::{self, Packer};
use super::proc::{self, Life, Proc};
use super::spawner::{Done, Spawner};
use super::types::{Config, Event, ShutdownPolicy, ShutdownState};
use crate::metrics::procstat::StatContext;
use crate::ring::{Cqe, Driver, Mailbox, RingError};
use crate::sys::pidfd;
use crate::sys::spawn::ChildStack;
use rustix::fd::OwnedFd;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

mod commands;
mod compress;
mod exit;
mod filecap;
mod opening;
mod shutdown;
mod start;
mod table;
mod timers;
mod waiters;

use opening::Opening;
use start::{PendingStart, Queued};
use table::{ProcTable, default_max_running};
use waiters::DataWaiter;

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
    /// Opens wait for an opener thread: see whether the pool may grow.
    OpenerCheck,
    /// The exit wait of process `proc` failed to be set up: try again.
    ExitRetry { proc: u64 },
    /// A read of a pipe whose process has ended but which a descendant
    /// still holds open (see `Reactor::orphans`).
    Orphan { id: u64 },
}

/// Most pipes read for descendants of ended processes at once (each holds an
/// fd); past it such a pipe is closed, as when the agent exits, and the
/// descendant's next write fails with EPIPE.
const MAX_ORPHANS: usize = 1024;

/// How long after a failed exit wait (an epoll set out of room, say) it is
/// set up again.
const EXIT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

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
    /// Closed for the process's exit: the table is not freed at the end.
    leave_table: bool,
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
    /// The spawning threads beside the reactor (`Config::spawn_threads`,
    /// default 2; none: the reactor spawns every child itself).
    spawner: Spawner,
    /// Spawns the spawning threads finished.
    spawned_rx: std::sync::mpsc::Receiver<Done>,
    /// Procs on a spawning thread: their exe path (for error messages) and
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
    /// Whether a [`Tag::OpenerCheck`] is armed.
    opener_check: bool,
    /// Exited `kill_group` leaders whose timeout's SIGKILL is still due to
    /// their group: each one's pidfd (unreaped, holding the group's id) and
    /// the group id, by serial.
    group_kills: HashMap<u64, (Rc<OwnedFd>, i32)>,
    /// Capture pipes of ended processes that a descendant still holds open
    /// for writing: read until its end and the bytes dropped, so the
    /// descendant neither blocks on a full pipe nor dies of SIGPIPE. By an id
    /// of their own, at most [`MAX_ORPHANS`].
    orphans: HashMap<u64, Rc<OwnedFd>>,
    /// How many pipes may be orphans at once: [`MAX_ORPHANS`], and a quarter
    /// of the fd limit (they hold fds outside the launch budget).
    max_orphans: usize,
    /// The id of the next orphaned pipe.
    next_orphan: u64,
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
    /// Processes settled since the loop last answered their waiters.
    unanswered: Vec<u64>,
    /// Readers waiting for a capture to grow (`Command::FdWait`), looked at
    /// once per loop while there are any.
    data_waiters: Vec<DataWaiter>,
    /// Bytes held by memory captures under `--output-limit`, if set.
    budget: Option<crate::capture::limit::Budget<super::outlimit::CapKey>>,
    /// The last overview's generation (see `status`).
    generation: u64,
}

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
        let spawner = Spawner::new(
            config.spawn_threads,
            config.thread_slice,
            done_tx,
            mailbox.wake.clone(),
        )
        .map_err(|e| {
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
            leave_table: false,
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
            opener_check: false,
            group_kills: HashMap::new(),
            orphans: HashMap::new(),
            max_orphans: crate::sys::fd::fd_limit().map_or(MAX_ORPHANS, |n| {
                MAX_ORPHANS.min(usize::try_from(n / 4).unwrap_or(usize::MAX))
            }),
            next_orphan: 0,
            pauses: Vec::new(),
            budget: output_limit,
            generation: 0,
            all_waiters: Vec::new(),
            settled: false,
            settled_for_done: false,
            unanswered: Vec::new(),
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
            } else {
                self.refuse_mailbox();
            }
            self.launch_queued();
            self.answer_settled();
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
        // The agent is going: no timer will fire for the groups still due
        // a SIGKILL, so they get it now.
        self.group_kills_now();
        self.shutdown_state(ShutdownState::Done);
        if self.leave_table {
            // Waiters for a compression still under way are told the agent
            // is gone (their replies dropped), as a freed table would; the
            // rest is left to the process's exit.
            for p in self.table.values_mut() {
                drop(std::mem::take(&mut p.final_waiters));
            }
            std::mem::forget(std::mem::replace(&mut self.table, ProcTable::new(0)));
        }
        // Dropping the publishers (and any subscription still in the mailbox)
        // closes the subscriptions.
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
                if let Some(pipe) = self
                    .table
                    .get_mut(proc)
                    .and_then(|p| p.captures.get_mut(cap))
                    .and_then(|c| c.store.pipe_mut())
                {
                    pipe.grow_if_full(data.len());
                }
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
            Tag::Orphan { id } => {
                // A descendant's bytes, after its process's capture was frozen:
                // taken from the buffer ring (which keeps an incremental
                // buffer's offset right for the reads sharing it) and dropped.
                let _ = self.ring.data(cqe);
                self.ring.finish(cqe);
                if !cqe.more {
                    self.orphan_read_ended(id, cqe);
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
                // Its job may wait behind threads stuck since it was queued.
                self.check_opener();
                if let Some(o) = self.opening.get_mut(&proc).filter(|o| o.slow.is_some()) {
                    o.slow = None;
                    self.answer_request(proc);
                }
                return;
            }
            Tag::OpenerCheck => {
                self.ring.finish(cqe);
                self.opener_check = false;
                self.check_opener();
                return;
            }
            Tag::OpenTimeout { proc } => {
                self.ring.finish(cqe);
                match self.opening.get_mut(&proc) {
                    Some(o) if o.timer.is_some() => o.timer = None,
                    _ => return,
                }
                let spec = self
                    .opening
                    .get(&proc)
                    .and_then(|o| o.q.spec.timeout.as_ref());
                let after = spec.map_or(0.0, |t| t.after);
                // Its result says the timeout fired, as for a running one.
                let fired = spec.and_then(proc::TimeoutState::fired_unstarted);
                if let Some(p) = self.table.get_mut(proc) {
                    p.timeout = fired;
                }
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

    fn emit(&mut self, event: Event) {
        self.subscribers.retain(|s| s.subscribed());
        for s in &self.subscribers {
            s.push(&event);
        }
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
