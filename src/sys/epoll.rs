//! The epoll driver: the reactor's operations where io_uring cannot be used
//! (Docker's default seccomp profile, `kernel.io_uring_disabled`, a kernel
//! without it).
//!
//! [`Poller`] offers the calls and the completions of
//! [`Ring`](super::uring::Ring), so the reactor's one loop runs on either:
//!
//! - a pipe read ([`Poller::read_multishot`]) is an fd in the epoll set,
//!   read at each readiness into a shared arena and reported as a completion
//!   with `more` set, until end of file, an error or a cancel ends it;
//! - an exit wait is the pidfd's readiness, as the ring's POLL_ADD fallback;
//! - timers live in a heap and bound the `epoll_wait`;
//! - file writes go to a pool of writer threads (one more whenever all are
//!   busy, up to [`MAX_WRITERS`]), so a slow disk or a stalled FIFO holds up
//!   only the kept file being written, as the ring's `IOSQE_ASYNC` writes do
//!   (the reactor has at most one write in flight per file, so their order
//!   holds).
//!
//! The arena holds what one turn of the loop reads (the ring's buffer ring
//! has the same bound): each read takes only what the pipe held, so
//! thousands of small outputs share it, and a pipe still readable when it is
//! full is read on the next turn (epoll is level-triggered). The arena is
//! free again at each [`Poller::submit_and_wait`], since every completion of
//! the turn before has been handled by then.
//!
//! Nothing here needs `unsafe`: rustix's epoll is safe. It lives in `sys`
//! beside the ring it stands in for.
//!
//! # References
//! - [epoll(7)](https://man7.org/linux/man-pages/man7/epoll.7.html)
//! - [pidfd_open(2)](https://man7.org/linux/man-pages/man2/pidfd_open.2.html),
//!   "the file descriptor becomes readable when the process terminates"

use super::uring::{Cqe, op_id, slot_key};
use rustix::event::epoll;
use rustix::event::{EventfdFlags, eventfd};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The epoll data of the writer thread's wake-up eventfd (no op id has it:
/// op ids never have `u32::MAX` as their generation).
const WRITER_WAKE: u64 = u64::MAX;

/// Readiness events taken per `epoll_wait`; more wait for the next turn.
const EVENTS: usize = 1024;

/// The most writer threads (each may be stuck in a write that never ends).
pub const MAX_WRITERS: usize = 16;

/// The longest single wait: a timer further off (a timeout of days) is
/// reached in several, and a wait always fits `epoll_wait`'s milliseconds.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// What an op is doing.
enum Kind {
    /// A pipe read repeated at each readiness.
    Stream(Rc<OwnedFd>),
    /// One read into the op's buffer (the wake eventfd).
    Once(Rc<OwnedFd>, Box<[u8]>),
    /// A pidfd's readiness: the process exited.
    Exit(Rc<OwnedFd>),
    /// A write on the writer thread; its buffer comes back with the result.
    Write(Vec<u8>),
    /// A timer.
    Timer,
}

struct Op<T> {
    generation: u32,
    tag: T,
    kind: Kind,
    /// Its final completion is queued: it reports nothing more.
    ended: bool,
}

/// A write for the writer thread: the op, the file, the bytes, the offset.
type Job = (u64, Arc<OwnedFd>, Vec<u8>, u64);

/// A finished write: the op, its result, its buffer back.
type Written = (u64, Result<u32, Errno>, Vec<u8>);

/// The writer threads: jobs in, results out, and an eventfd in the epoll
/// set that says results are waiting.
struct Writer {
    jobs: mpsc::Sender<Job>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    done_tx: mpsc::Sender<Written>,
    done: mpsc::Receiver<Written>,
    wake: Arc<OwnedFd>,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
    threads: usize,
}

/// `pwrite`, or `write` on a stream (a FIFO has no offsets: there, as
/// io_uring does, the write goes where the stream is).
fn write_at(fd: &OwnedFd, buf: &[u8], offset: u64) -> Result<u32, Errno> {
    let r = loop {
        match rustix::io::pwrite(fd, buf, offset) {
            Err(Errno::INTR) => continue,
            Err(Errno::SPIPE) => match rustix::io::write(fd, buf) {
                Err(Errno::INTR) => continue,
                r => break r,
            },
            r => break r,
        }
    };
    r.map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// An epoll set standing in for the ring; see the module notes.
pub struct Poller<T> {
    epoll: OwnedFd,
    ops: Slab<Op<T>>,
    generation: u32,
    /// Completions for the next [`Poller::reap`], in order.
    done: Vec<Cqe>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    arena: Box<[u8]>,
    /// Bytes of the arena this turn's reads took.
    used: usize,
    /// The most one read takes.
    buf_size: usize,
    events: Vec<epoll::Event>,
    /// Pipes left unread when the arena was full: read first next turn, or
    /// the pipes epoll lists first would take the arena every turn.
    deferred: Vec<u64>,
    writer: Option<Writer>,
}

impl<T> std::fmt::Debug for Poller<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poller")
            .field("in_flight", &self.ops.len())
            .field("arena", &self.arena.len())
            .finish()
    }
}

impl<T> Poller<T> {
    /// An epoll set whose turns read at most `arena` bytes, at most
    /// `buf_size` of them from one pipe.
    pub fn new(arena: usize, buf_size: usize) -> Result<Self, Errno> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let buf_size = buf_size.max(4096);
        Ok(Poller {
            epoll,
            ops: Slab::with_capacity(256),
            generation: 0,
            done: Vec::new(),
            timers: BinaryHeap::new(),
            // Zeroed pages are mapped lazily: only what reads touch is resident.
            // At most 4 GiB: completions carry offsets into it as u32.
            arena: vec![0u8; arena.max(buf_size).min(u32::MAX as usize)].into_boxed_slice(),
            used: 0,
            buf_size,
            events: Vec::with_capacity(EVENTS),
            deferred: Vec::new(),
            writer: None,
        })
    }

    /// Number of ops not yet finished.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    fn insert(&mut self, tag: T, kind: Kind) -> u64 {
        let generation = self.generation;
        // Never u32::MAX, so no op id is WRITER_WAKE.
        self.generation = generation.wrapping_add(1) % u32::MAX;
        let entry = self.ops.vacant_entry();
        let id = op_id(entry.key(), generation);
        entry.insert(Op {
            generation,
            tag,
            kind,
            ended: false,
        });
        id
    }

    fn op(&self, id: u64) -> Option<&Op<T>> {
        self.ops
            .get(slot_key(id))
            .filter(|o| op_id(slot_key(id), o.generation) == id)
    }

    fn op_mut(&mut self, id: u64) -> Option<&mut Op<T>> {
        self.ops
            .get_mut(slot_key(id))
            .filter(|o| op_id(slot_key(id), o.generation) == id)
    }

    /// Queues the final completion of op `id`.
    fn end(&mut self, id: u64, result: Result<u32, Errno>) {
        let Some(op) = self.op_mut(id) else { return };
        op.ended = true;
        let fd = match &op.kind {
            Kind::Stream(fd) | Kind::Once(fd, _) | Kind::Exit(fd) => Some(fd.clone()),
            Kind::Write(_) | Kind::Timer => None,
        };
        if let Some(fd) = fd {
            // It was in the set unless adding it failed (then this is that error).
            let _ = epoll::delete(&self.epoll, &*fd);
        }
        self.done.push(Cqe::new(id, result, false, 0));
    }

    /// Adds `fd` to the set for op `id`; a failure ends the op with its errno.
    fn watch(&mut self, id: u64, fd: &OwnedFd) {
        let flags = epoll::EventFlags::IN;
        if let Err(e) = epoll::add(&self.epoll, fd, epoll::EventData::new_u64(id), flags) {
            self.end(id, Err(e));
        }
    }

    /// Reads `fd` at each readiness until end of file, an error or a cancel;
    /// each read is a completion with `more` set whose bytes
    /// [`Poller::data`] gives.
    pub fn read_multishot(&mut self, fd: Rc<OwnedFd>, tag: T) -> u64 {
        let id = self.insert(tag, Kind::Stream(fd.clone()));
        self.watch(id, &fd);
        id
    }

    /// Completes once the process behind `pidfd` has exited, without
    /// reaping it.
    pub fn wait_exit(&mut self, pidfd: Rc<OwnedFd>, tag: T) -> u64 {
        let id = self.insert(tag, Kind::Exit(pidfd.clone()));
        self.watch(id, &pidfd);
        id
    }

    /// One read of up to `len` bytes of `fd` once it is readable (its bytes
    /// are kept with the op until it finishes).
    pub fn read(&mut self, fd: Rc<OwnedFd>, len: usize, tag: T) -> u64 {
        let id = self.insert(
            tag,
            Kind::Once(fd.clone(), vec![0u8; len].into_boxed_slice()),
        );
        self.watch(id, &fd);
        id
    }

    /// Writes `buf` to `fd` at `offset` on a writer thread; the result is
    /// the byte count, which may be short. With no writer thread to be had
    /// (none could start), it writes here, at once.
    pub fn write(&mut self, fd: Arc<OwnedFd>, buf: Vec<u8>, offset: u64, tag: T) -> u64 {
        let id = self.insert(tag, Kind::Write(Vec::new()));
        let job = match self.writer() {
            Some(w) => match w.jobs.send((id, fd, buf, offset)) {
                Ok(()) => return id,
                Err(mpsc::SendError(job)) => job,
            },
            None => (id, fd, buf, offset),
        };
        let (id, fd, buf, offset) = job;
        let r = write_at(&fd, &buf, offset);
        if let Some(Op {
            kind: Kind::Write(b),
            ..
        }) = self.op_mut(id)
        {
            *b = buf;
        }
        self.end(id, r);
        id
    }

    /// The writer pool, with a thread idle for the next job if one can be
    /// started; `None` if there is no thread at all.
    fn writer(&mut self) -> Option<&Writer> {
        if self.writer.is_none() {
            let wake = match eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK) {
                Ok(w) => Arc::new(w),
                Err(e) => {
                    tracing::error!(
                        "no eventfd for the writer threads: {e}; writing on the reactor"
                    );
                    return None;
                }
            };
            let data = epoll::EventData::new_u64(WRITER_WAKE);
            if let Err(e) = epoll::add(&self.epoll, &*wake, data, epoll::EventFlags::IN) {
                tracing::error!("cannot watch the writer threads: {e}; writing on the reactor");
                return None;
            }
            let (jobs, rx) = mpsc::channel::<Job>();
            let (done_tx, done) = mpsc::channel();
            self.writer = Some(Writer {
                jobs,
                rx: Arc::new(Mutex::new(rx)),
                done_tx,
                done,
                wake,
                idle: Arc::new(AtomicUsize::new(0)),
                threads: 0,
            });
        }
        let w = self.writer.as_mut()?;
        if w.idle.load(Ordering::Acquire) == 0 && w.threads < MAX_WRITERS {
            let (rx, done, wake, idle) = (
                w.rx.clone(),
                w.done_tx.clone(),
                w.wake.clone(),
                w.idle.clone(),
            );
            let started = std::thread::Builder::new()
                .name("chaperone-writer".into())
                .spawn(move || {
                    loop {
                        idle.fetch_add(1, Ordering::AcqRel);
                        let job = rx.lock().map(|rx| rx.recv());
                        idle.fetch_sub(1, Ordering::AcqRel);
                        let Ok(Ok((id, fd, buf, offset))) = job else {
                            return;
                        };
                        let r = write_at(&fd, &buf, offset);
                        if done.send((id, r, buf)).is_err() {
                            return;
                        }
                        let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                    }
                });
            match started {
                Ok(_) => w.threads += 1,
                Err(e) if w.threads == 0 => {
                    tracing::error!("cannot start a writer thread: {e}; writing on the reactor");
                }
                Err(e) => tracing::warn!("cannot start another writer thread: {e}"),
            }
        }
        self.writer.as_ref().filter(|w| w.threads > 0)
    }

    /// Takes back the buffer of a completed [`Poller::write`].
    pub fn take_write_buf(&mut self, cqe: &Cqe) -> Vec<u8> {
        match self.op_mut(cqe.key()) {
            Some(Op {
                kind: Kind::Write(buf),
                ..
            }) => std::mem::take(buf),
            _ => Vec::new(),
        }
    }

    /// A timer that completes after `after` (result `ETIME`).
    pub fn timeout(&mut self, after: Duration, tag: T) -> u64 {
        let id = self.insert(tag, Kind::Timer);
        let at = Instant::now().checked_add(after).unwrap_or_else(far_future);
        self.timers.push(Reverse((at, id)));
        id
    }

    /// Ends op `key` with `ECANCELED` (reported at the next reap), unless it
    /// has ended already. A write on the writer thread runs to its end.
    pub fn cancel(&mut self, key: u64) {
        match self.op(key) {
            Some(op) if !op.ended && !matches!(op.kind, Kind::Write(_)) => {
                self.end(key, Err(Errno::CANCELED))
            }
            _ => {}
        }
    }

    /// Waits until something is ready, `timeout` has passed (if given) or
    /// the next timer is due, and performs what is ready; `want == 0` only
    /// looks. Completions queued already (cancels) make it only look too.
    pub fn submit_and_wait(&mut self, want: usize, timeout: Option<Duration>) -> Result<(), Errno> {
        // Every completion of the last turn has been handled: the arena is free.
        self.used = 0;
        let now = Instant::now();
        let mut wait = if want == 0 || !self.done.is_empty() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        // Timers cancelled or ended since are dropped here, so they neither
        // wake the wait nor pile up.
        while let Some(&Reverse((_, id))) = self.timers.peek() {
            if self.op(id).is_some_and(|o| !o.ended) {
                break;
            }
            self.timers.pop();
        }
        if let Some(Reverse((at, _))) = self.timers.peek() {
            let due = at.saturating_duration_since(now);
            wait = Some(wait.map_or(due, |w| w.min(due)));
        }
        let wait = wait.map(|w| w.min(LONGEST_WAIT));
        // Rounded up to the millisecond, so a timer is never woken for early.
        let ts = wait.map(|w| {
            let w = w.as_nanos().div_ceil(1_000_000) * 1_000_000;
            rustix::time::Timespec {
                tv_sec: (w / 1_000_000_000).min(i64::MAX as u128) as i64,
                tv_nsec: (w % 1_000_000_000) as _,
            }
        });
        self.events.clear();
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut self.events),
            ts.as_ref(),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
        for id in std::mem::take(&mut self.deferred) {
            self.ready(id);
        }
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            match ev.data.u64() {
                WRITER_WAKE => self.writes_done(),
                id => self.ready(id),
            }
        }
        self.events = events;
        self.timers_due();
        Ok(())
    }

    /// Op `id`'s fd is readable.
    fn ready(&mut self, id: u64) {
        let Some(op) = self.op(id).filter(|o| !o.ended) else {
            return;
        };
        match &op.kind {
            Kind::Stream(fd) => {
                let room = self.arena.len() - self.used;
                if room == 0 {
                    // Still readable next turn, and read first then (an id
                    // deferred twice is only read twice).
                    self.deferred.push(id);
                    return;
                }
                let fd = fd.clone();
                let at = self.used;
                let take = room.min(self.buf_size);
                let buf = &mut self.arena[at..at + take];
                match super::pipe::read(&*fd, buf) {
                    Ok(0) => self.end(id, Ok(0)),
                    Ok(n) => {
                        self.used += n;
                        let n = u32::try_from(n).unwrap_or(u32::MAX);
                        let at = u32::try_from(at).unwrap_or(u32::MAX);
                        self.done.push(Cqe::new(id, Ok(n), true, at));
                    }
                    Err(Errno::AGAIN) => {}
                    Err(e) => self.end(id, Err(e)),
                }
            }
            Kind::Once(fd, _) => {
                let fd = fd.clone();
                let Some(Op {
                    kind: Kind::Once(_, buf),
                    ..
                }) = self.op_mut(id)
                else {
                    return;
                };
                match super::pipe::read(&*fd, buf) {
                    Err(Errno::AGAIN) => {}
                    r => self.end(id, r.map(|n| u32::try_from(n).unwrap_or(u32::MAX))),
                }
            }
            Kind::Exit(_) => self.end(id, Ok(0)),
            Kind::Write(_) | Kind::Timer => {}
        }
    }

    /// The writer thread has results: each ends its write op.
    fn writes_done(&mut self) {
        let Some(w) = self.writer.as_ref() else {
            return;
        };
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&*w.wake, &mut count);
        let results: Vec<_> = w.done.try_iter().collect();
        for (id, result, buf) in results {
            if let Some(Op {
                kind: Kind::Write(b),
                ..
            }) = self.op_mut(id)
            {
                *b = buf;
            }
            self.end(id, result);
        }
    }

    /// Ends every timer that is due with `ETIME` (a cancelled one has ended).
    fn timers_due(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.op(id).is_some_and(|o| !o.ended) {
                self.end(id, Err(Errno::TIME));
            }
        }
    }

    /// Takes every completion queued (`out` is cleared first).
    pub fn reap(&mut self, out: &mut Vec<Cqe>) {
        out.clear();
        out.append(&mut self.done);
    }

    /// The tag of the op a completion belongs to.
    pub fn tag(&self, cqe: &Cqe) -> Option<&T> {
        self.op(cqe.key()).map(|o| &o.tag)
    }

    /// The bytes a pipe read's completion delivered.
    pub fn data(&mut self, cqe: &Cqe) -> &[u8] {
        match (self.op(cqe.key()).map(|o| &o.kind), cqe.result, cqe.more) {
            (Some(Kind::Stream(_)), Ok(n), true) => {
                let at = cqe.flags() as usize;
                self.arena.get(at..at + n as usize).unwrap_or(&[])
            }
            _ => &[],
        }
    }

    /// The bytes a [`Poller::read`] completed with.
    #[cfg(test)]
    pub fn read_buf(&self, cqe: &Cqe) -> &[u8] {
        match (self.op(cqe.key()), cqe.result) {
            (
                Some(Op {
                    kind: Kind::Once(_, buf),
                    ..
                }),
                Ok(n),
            ) => buf.get(..n as usize).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Done with a completion: frees the op on its final one and returns its
    /// tag.
    pub fn finish(&mut self, cqe: &Cqe) -> Option<T> {
        if cqe.more {
            return None;
        }
        self.op(cqe.key())?;
        self.ops.try_remove(slot_key(cqe.key())).map(|o| o.tag)
    }
}

/// An instant no timer reaches (a timeout too long to add to now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

#[cfg(test)]
mod tests;
