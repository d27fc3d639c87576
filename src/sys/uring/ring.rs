//! The io_uring ring and its in-flight table.
//!
//! Every in-flight operation has a slot in a slab. The entry's `user_data` is the
//! op's id: the slot key in the low 32 bits and the slot's generation in the high
//! 32, so an id names one op only, never a later op that reused its slot (a
//! cancel queued for an op that has since ended finds nothing instead of hitting
//! its successor). A slot owns everything the kernel may touch for that op (the fd
//! through an `Rc<OwnedFd>`, a boxed `siginfo_t`, a boxed read buffer or timespec),
//! and is freed only on the op's final completion (`!more` for multishot ops).
//! Slab growth moves slots, so the kernel only ever gets pointers to heap
//! allocations a slot owns, never into the slot itself.

use super::bufring::BufRing;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::io::Errno;
use slab::Slab;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// `IOU_PBUF_RING_INC`: consume provided buffers incrementally (since Linux 6.12).
const IOU_PBUF_RING_INC: u16 = 2;

/// `user_data` of entries whose own completion nobody waits for (cancels).
const IGNORED: u64 = u64::MAX;

/// Whether `CHAPERONE_FORCE_FALLBACK` asks for the older-kernel code paths.
pub fn force_fallback() -> bool {
    std::env::var_os("CHAPERONE_FORCE_FALLBACK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// What the running kernel's io_uring offers, probed once at start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// `IORING_OP_WAITID` (since Linux 6.7).
    pub waitid: bool,
    /// `IORING_OP_READ_MULTISHOT` (since Linux 6.7).
    pub read_multishot: bool,
    /// `IOU_PBUF_RING_INC` incremental buffer consumption (since Linux 6.12).
    pub buf_ring_inc: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (since Linux 6.1).
    pub defer_taskrun: bool,
}

/// Why the ring (or the epoll set standing in for it) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// `io_uring_setup` failed; the message names the usual causes.
    #[error(
        "io_uring is unavailable ({reason}); check sysctl kernel.io_uring_disabled and seccomp filters, or run on epoll (--backend epoll)"
    )]
    Unavailable {
        /// What the kernel said.
        reason: String,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The kernel lacks an opcode chaperone cannot do without.
    #[error("io_uring lacks {0}")]
    Missing(&'static str),
    /// Registering the provided-buffer ring failed.
    #[error("registering the provided-buffer ring failed")]
    BufRing(#[source] std::io::Error),
    /// The epoll set standing in for the ring could not be made.
    #[error("epoll_create failed")]
    Epoll(#[source] std::io::Error),
}

/// What an in-flight slot owns on the kernel's behalf.
enum Owned {
    Fd(#[allow(dead_code)] Rc<OwnedFd>), // Held only to keep the fd open.
    Wait(#[allow(dead_code)] Rc<OwnedFd>, Box<libc::siginfo_t>), // fd held open.
    Buf(#[allow(dead_code)] Rc<OwnedFd>, Box<[u8]>), // fd held open.
    Time(#[allow(dead_code)] Box<types::Timespec>), // Read by the kernel.
    /// A write's source bytes (read by the kernel), and the file held open.
    Write(#[allow(dead_code)] Arc<OwnedFd>, Vec<u8>),
}

struct Slot<T> {
    /// The op id's high half; see [`op_id`].
    generation: u32,
    tag: T,
    owned: Owned,
}

/// The op id of slot `key` in generation `generation`.
pub(in crate::sys) fn op_id(key: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (key as u64 & 0xffff_ffff)
}

/// The slot key of op id `id`.
pub(in crate::sys) fn slot_key(id: u64) -> usize {
    (id & 0xffff_ffff) as usize
}

/// One completion, copied out of the completion queue.
#[derive(Clone, Copy, Debug)]
pub struct Cqe {
    /// The op id (`user_data`).
    key: u64,
    /// The result: bytes or a non-negative value, or the errno.
    pub result: Result<u32, Errno>,
    /// Whether more completions follow for the same op (multishot).
    pub more: bool,
    flags: u32,
}

impl Cqe {
    /// A completion of op `key` (the epoll driver makes its own; `flags`
    /// are its own too).
    pub(crate) fn new(key: u64, result: Result<u32, Errno>, more: bool, flags: u32) -> Cqe {
        Cqe {
            key,
            result,
            more,
            flags,
        }
    }

    /// The op id.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The completion's flags (the epoll driver's: where its bytes are).
    pub(crate) fn flags(&self) -> u32 {
        self.flags
    }
}

/// The ring, the in-flight table and the provided-buffer ring.
pub struct Ring<T> {
    // Field order matters for drop: the ring is closed (and with it every op the
    // kernel still holds) before the slots and the buffer ring are freed.
    ring: IoUring,
    ops: Slab<Slot<T>>,
    /// The generation the next slot gets.
    generation: u32,
    /// How many enters left completions waiting in the kernel's overflow list
    /// (the completion queue was full).
    cq_overflows: u64,
    /// Entries that did not fit the submission queue, in order.
    backlog: std::collections::VecDeque<squeue::Entry>,
    bufs: Option<BufRing>,
    /// What the kernel offers.
    pub features: Features,
}

impl<T> std::fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("in_flight", &self.ops.len())
            .field("features", &self.features)
            .finish()
    }
}

impl<T> Ring<T> {
    /// Sets up a ring with `entries` submission entries, `SINGLE_ISSUER |
    /// DEFER_TASKRUN` where the kernel has them, and probes opcodes.
    ///
    /// Must be called on the thread that will use the ring (single issuer).
    pub fn new(entries: u32) -> Result<Self, RingError> {
        let mut features = Features::default();
        let ring = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(entries * 4)
            .build(entries)
        {
            Ok(r) => {
                features.defer_taskrun = true;
                r
            }
            Err(_) => IoUring::builder()
                .setup_cqsize(entries * 4)
                .build(entries)
                .map_err(|e| RingError::Unavailable {
                    reason: match e.raw_os_error() {
                        Some(libc::EPERM) => {
                            "EPERM: disabled by kernel.io_uring_disabled or a seccomp filter".into()
                        }
                        Some(libc::ENOSYS) => {
                            "ENOSYS: the kernel was built without io_uring".into()
                        }
                        Some(libc::ENOMEM) => "ENOMEM: locked-memory limit too low".into(),
                        _ => e.to_string(),
                    },
                    source: e,
                })?,
        };
        let mut probe = io_uring::Probe::new();
        if ring.submitter().register_probe(&mut probe).is_ok() {
            features.waitid = probe.is_supported(opcode::WaitId::CODE);
            features.read_multishot = probe.is_supported(opcode::ReadMulti::CODE);
        }
        // CHAPERONE_FORCE_FALLBACK=1 takes the paths an older kernel would: pidfd
        // poll instead of WAITID, single-shot reads, whole-buffer consumption. CI
        // runs the integration tests once this way (as mio's force-poll cfgs).
        if force_fallback() {
            features.waitid = false;
            features.read_multishot = false;
        }
        if !probe.is_supported(opcode::PollAdd::CODE) && !features.waitid {
            return Err(RingError::Missing("both WAITID and POLL_ADD"));
        }
        Ok(Ring {
            ring,
            ops: Slab::with_capacity(256),
            generation: 0,
            cq_overflows: 0,
            backlog: std::collections::VecDeque::new(),
            bufs: None,
            features,
        })
    }

    /// Registers a provided-buffer ring of `entries` buffers of `size` bytes as
    /// group `group`, incremental where the kernel allows.
    pub fn register_buf_ring(
        &mut self,
        entries: u16,
        size: u32,
        group: u16,
    ) -> Result<(), RingError> {
        let mut bufs =
            BufRing::new(entries, size, group).map_err(|e| RingError::BufRing(e.into()))?;
        let submitter = self.ring.submitter();
        let inc = IOU_PBUF_RING_INC;
        let r = if force_fallback() {
            Err(std::io::Error::from_raw_os_error(libc::EINVAL))
        } else {
            // SAFETY: the ring mapping lives in `bufs`, which `self` keeps until the
            // io_uring is closed (field order).
            unsafe {
                submitter.register_buf_ring_with_flags(bufs.ring_addr(), bufs.entries(), group, inc)
            }
        };
        match r {
            Ok(()) => bufs.incremental = true,
            Err(_) => {
                // SAFETY: as above.
                unsafe {
                    submitter.register_buf_ring_with_flags(
                        bufs.ring_addr(),
                        bufs.entries(),
                        group,
                        0,
                    )
                }
                .map_err(RingError::BufRing)?;
            }
        }
        self.features.buf_ring_inc = bufs.incremental;
        bufs.fill();
        self.bufs = Some(bufs);
        Ok(())
    }

    /// The buffer size of the provided-buffer ring (0 without one).
    pub fn buf_size(&self) -> u32 {
        self.bufs.as_ref().map_or(0, |b| b.buf_size())
    }

    /// How many times an enter left completions in the kernel's overflow list
    /// (they are posted in order once the queue has room).
    #[cfg(test)]
    pub fn cq_overflows(&self) -> u64 {
        self.cq_overflows
    }

    /// Number of in-flight ops.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Queues one entry: into the submission queue, or into the backlog when the
    /// queue is full (or a backlog already exists, to keep order).
    ///
    /// Never submits. Handing entries to the kernel while completions are being
    /// handled could let a re-armed pipe read run inline and take bytes that the
    /// exit drain of the same batch should have seen; those bytes would arrive in
    /// a completion after the process's capture was frozen. Entries reach the
    /// kernel only in [`Ring::submit_and_wait`], before completions are reaped.
    fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() || !self.try_push(&entry) {
            self.backlog.push_back(entry);
        }
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every pointer in `entry` targets heap memory owned by the slot
        // whose op id is the entry's user_data (or by nothing, for IGNORED
        // entries), and a slot is removed only on its op's final completion.
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    /// Moves the backlog into the submission queue, submitting whenever it fills.
    fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            if self.try_push(&entry) {
                continue;
            }
            self.backlog.push_front(entry);
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    // EBUSY: the completion queue needs reaping first; the rest
                    // goes in on the next call.
                    if e.raw_os_error() != Some(libc::EBUSY) {
                        tracing::error!("io_uring submit failed: {e}");
                    }
                    return;
                }
            }
        }
    }

    fn insert(&mut self, tag: T, owned: Owned) -> (u64, &mut Owned) {
        let generation = self.generation;
        // Never u32::MAX: with slot key u32::MAX that would be IGNORED.
        self.generation = generation.wrapping_add(1) % u32::MAX;
        let entry = self.ops.vacant_entry();
        let id = op_id(entry.key(), generation);
        let slot = entry.insert(Slot {
            generation,
            tag,
            owned,
        });
        (id, &mut slot.owned)
    }

    /// The slot of op `id`, if that op is still in flight.
    fn slot(&self, id: u64) -> Option<&Slot<T>> {
        self.ops
            .get(slot_key(id))
            .filter(|s| op_id(slot_key(id), s.generation) == id)
    }

    fn slot_mut(&mut self, id: u64) -> Option<&mut Slot<T>> {
        self.ops
            .get_mut(slot_key(id))
            .filter(|s| op_id(slot_key(id), s.generation) == id)
    }

    /// Arms a multishot read of `fd` into the provided-buffer ring (falls back to a
    /// single-shot buffer-select read where multishot is missing).
    pub fn read_multishot(&mut self, fd: Rc<OwnedFd>, tag: T) -> u64 {
        let raw = types::Fd(fd.as_raw_fd());
        let group = self.bufs.as_ref().map_or(0, |b| b.group);
        let multishot = self.features.read_multishot;
        let size = self.buf_size();
        let (key, _) = self.insert(tag, Owned::Fd(fd));
        let entry = if multishot {
            opcode::ReadMulti::new(raw, 0, group).build()
        } else {
            opcode::Read::new(raw, core::ptr::null_mut(), size)
                .buf_group(group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        self.push(entry.user_data(key));
        key
    }

    /// Waits for the process behind `pidfd` to exit, without reaping it
    /// (`waitid(P_PIDFD, WEXITED | WNOWAIT)`; a pidfd poll where WAITID is missing).
    pub fn wait_exit(&mut self, pidfd: Rc<OwnedFd>, tag: T) -> u64 {
        let raw = pidfd.as_raw_fd();
        if self.features.waitid {
            // SAFETY: an all-zero siginfo_t is a valid value.
            let info: Box<libc::siginfo_t> = Box::new(unsafe { core::mem::zeroed() });
            let (key, owned) = self.insert(tag, Owned::Wait(pidfd, info));
            let Owned::Wait(_, info) = owned else {
                unreachable!("just inserted a Wait slot")
            };
            let ptr: *const libc::siginfo_t = &**info;
            // since Linux 6.7
            let entry = opcode::WaitId::new(
                3, /* P_PIDFD */
                raw as libc::id_t,
                libc::WEXITED | libc::WNOWAIT,
            )
            .infop(ptr)
            .build()
            .user_data(key);
            self.push(entry);
            key
        } else {
            let (key, _) = self.insert(tag, Owned::Fd(pidfd));
            let entry = opcode::PollAdd::new(types::Fd(raw), libc::POLLIN as u32)
                .build()
                .user_data(key);
            self.push(entry);
            key
        }
    }

    /// A plain read of up to `len` bytes of `fd` into a buffer the slot owns (used
    /// for the wake eventfd; the reactor reads the eventfd's counter itself, so
    /// the bytes are only kept until the completion).
    pub fn read(&mut self, fd: Rc<OwnedFd>, len: usize, tag: T) -> u64 {
        let raw = types::Fd(fd.as_raw_fd());
        let (key, owned) = self.insert(tag, Owned::Buf(fd, vec![0u8; len].into_boxed_slice()));
        let Owned::Buf(_, buf) = owned else {
            unreachable!("just inserted a Buf slot")
        };
        let entry = opcode::Read::new(
            raw,
            buf.as_mut_ptr(),
            u32::try_from(buf.len()).unwrap_or(u32::MAX),
        )
        .build()
        .user_data(key);
        self.push(entry);
        key
    }

    /// Writes `buf` to `fd` at `offset` (`IORING_OP_WRITE`, since Linux 5.6). The
    /// slot owns `buf` until the op completes; the result is the byte count, which
    /// may be short. [`Ring::take_write_buf`] hands the buffer back.
    pub fn write(&mut self, fd: Arc<OwnedFd>, buf: Vec<u8>, offset: u64, tag: T) -> u64 {
        let raw = types::Fd(fd.as_raw_fd());
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let (key, owned) = self.insert(tag, Owned::Write(fd, buf));
        let Owned::Write(_, buf) = owned else {
            unreachable!("just inserted a Write slot")
        };
        // The Vec's heap block does not move when the slab grows (only the Vec
        // header does), and nothing touches the Vec until the op completes.
        // IOSQE_ASYNC: the kernel would otherwise first try the write inline, in
        // io_uring_enter on this (the reactor) thread, where copying megabytes
        // into the page cache, or a filesystem's dirty throttling, would hold up
        // every other process's pipes; an io-wq worker does it on another core.
        let entry = opcode::Write::new(raw, buf.as_ptr(), len)
            .offset(offset)
            .build()
            .flags(squeue::Flags::ASYNC)
            .user_data(key);
        self.push(entry);
        key
    }

    /// Takes back the buffer of a completed [`Ring::write`] (empty for other ops).
    /// Call before [`Ring::finish`]; the kernel is done with it once the write's
    /// completion has arrived.
    pub fn take_write_buf(&mut self, cqe: &Cqe) -> Vec<u8> {
        match self.slot_mut(cqe.key) {
            Some(Slot {
                owned: Owned::Write(_, buf),
                ..
            }) => std::mem::take(buf),
            _ => Vec::new(),
        }
    }

    /// A timer that completes after `after` (result `ETIME`).
    pub fn timeout(&mut self, after: Duration, tag: T) -> u64 {
        let ts = Box::new(
            types::Timespec::new()
                .sec(after.as_secs())
                .nsec(after.subsec_nanos()),
        );
        let ptr: *const types::Timespec = &*ts;
        let (key, _) = self.insert(tag, Owned::Time(ts));
        self.push(opcode::Timeout::new(ptr).build().user_data(key));
        key
    }

    /// Asks the kernel to cancel op `key`; its slot stays until its own final
    /// completion arrives. An op that has already ended is left alone, and so
    /// is whatever op has taken its slot since.
    pub fn cancel(&mut self, key: u64) {
        if self.slot(key).is_some() {
            self.push(opcode::AsyncCancel::new(key).build().user_data(IGNORED));
        }
    }

    /// Submits what is queued and waits for at least `want` completions, or until
    /// `timeout` if given.
    ///
    /// `want == 0` still runs the ring's deferred work (`DEFER_TASKRUN` runs it
    /// only in an enter that asks for events), so the completions that are due
    /// are posted: it is a wait for one completion with a zero timeout.
    pub fn submit_and_wait(&mut self, want: usize, timeout: Option<Duration>) -> Result<(), Errno> {
        self.flush_backlog();
        let (want, timeout) = match (want, timeout) {
            (0, _) => (1, Some(Duration::ZERO)),
            w => w,
        };
        let r = match timeout {
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
            None => self.ring.submitter().submit_and_wait(want),
        };
        if self.ring.submission().cq_overflow() {
            self.cq_overflows += 1;
        }
        match r {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR) | Some(libc::ETIME) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                    Ok(())
                }
                Some(n) => Err(Errno::from_raw_os_error(n)),
                None => Err(Errno::IO),
            },
        }
    }

    /// Copies every available completion into `out` (cleared first), skipping those
    /// of ignored entries. Slots are not freed here; see [`Ring::finish`].
    pub fn reap(&mut self, out: &mut Vec<Cqe>) {
        out.clear();
        let cq = self.ring.completion();
        if cq.overflow() > 0 {
            tracing::warn!(
                overflow = cq.overflow(),
                "io_uring completion queue overflowed"
            );
        }
        for cqe in cq {
            if cqe.user_data() == IGNORED {
                continue;
            }
            let res = cqe.result();
            out.push(Cqe {
                key: cqe.user_data(),
                result: if res < 0 {
                    Err(Errno::from_raw_os_error(-res))
                } else {
                    Ok(res as u32)
                },
                more: cqueue::more(cqe.flags()),
                flags: cqe.flags(),
            });
        }
    }

    /// The tag of the op a completion belongs to.
    pub fn tag(&self, cqe: &Cqe) -> Option<&T> {
        self.slot(cqe.key).map(|s| &s.tag)
    }

    /// The bytes a completion delivered through the provided-buffer ring, if any.
    ///
    /// Call once per completion, in completion order; then [`Ring::finish`].
    pub fn data(&mut self, cqe: &Cqe) -> &[u8] {
        let (Some(bid), Ok(len), Some(bufs)) = (
            cqueue::buffer_select(cqe.flags),
            cqe.result,
            self.bufs.as_mut(),
        ) else {
            return &[];
        };
        bufs.take(bid, len, cqueue::buffer_more(cqe.flags)).0
    }

    /// Done with a completion: returns its provided buffer to the kernel if the
    /// kernel is finished with it, and frees the slot on the op's final completion.
    /// Returns the tag when the slot was freed.
    pub fn finish(&mut self, cqe: &Cqe) -> Option<T> {
        if let (Some(bid), Some(bufs)) = (cqueue::buffer_select(cqe.flags), self.bufs.as_mut()) {
            let len = cqe.result.unwrap_or(0);
            if BufRing::finished(bufs.is_incremental(), len, cqueue::buffer_more(cqe.flags)) {
                bufs.recycle(bid);
            }
        }
        if cqe.more {
            None
        } else {
            self.slot(cqe.key)?;
            self.ops.try_remove(slot_key(cqe.key)).map(|s| s.tag)
        }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Cancel everything still in flight so the kernel lets go of our buffers;
        // closing the ring (field drop) then completes the teardown before the
        // slots and the buffer ring are freed.
        let keys: Vec<u64> = self
            .ops
            .iter()
            .map(|(k, s)| op_id(k, s.generation))
            .collect();
        for key in keys {
            self.push(opcode::AsyncCancel::new(key).build().user_data(IGNORED));
        }
        self.flush_backlog();
        let _ = self.ring.submit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn ring() -> Ring<u32> {
        let mut ring = Ring::new(64).expect("io_uring available");
        ring.register_buf_ring(4, 64 * 1024, 0)
            .expect("buffer ring");
        ring
    }

    /// Reaps until `f` has seen `n` completions or a second passes.
    fn collect(ring: &mut Ring<u32>, n: usize) -> Vec<(Cqe, Vec<u8>, Option<u32>)> {
        let mut out = Vec::new();
        let mut cqes = Vec::new();
        let start = std::time::Instant::now();
        while out.len() < n && start.elapsed() < Duration::from_secs(1) {
            ring.submit_and_wait(1, Some(Duration::from_millis(100)))
                .expect("enter");
            ring.reap(&mut cqes);
            for cqe in &cqes {
                let data = ring.data(cqe).to_vec();
                let freed = ring.finish(cqe);
                out.push((*cqe, data, freed));
            }
        }
        out
    }

    #[test]
    fn multishot_read_stays_in_slab_while_more_and_frees_on_eof() {
        let mut ring = ring();
        if !ring.features.read_multishot {
            crate::test_skip(
                "multishot_read_stays_in_slab_while_more_and_frees_on_eof",
                "no READ_MULTISHOT",
                false,
            );
            return;
        }
        let (r, w) = crate::sys::pipe::pipe().expect("pipe");
        ring.read_multishot(Rc::new(r), 7);
        rustix::io::write(&w, b"hello ").expect("write");
        let first = collect(&mut ring, 1);
        assert_eq!(first.len(), 1);
        let (cqe, data, freed) = &first[0];
        assert!(cqe.more, "multishot read continues");
        assert_eq!(data, b"hello ");
        assert_eq!(*freed, None, "slot kept while more is set");
        assert_eq!(ring.in_flight(), 1);

        rustix::io::write(&w, b"world").expect("write");
        drop(w);
        let rest = collect(&mut ring, 2);
        let bytes: Vec<u8> = rest.iter().flat_map(|(_, d, _)| d.clone()).collect();
        assert_eq!(bytes, b"world");
        let (last, _, freed) = rest.last().expect("eof completion");
        assert_eq!(last.result, Ok(0), "end of file");
        assert!(!last.more);
        assert_eq!(*freed, Some(7), "slot freed on the final completion");
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn reads_through_many_buffers_arrive_in_order() {
        let mut ring = ring();
        let (r, w) = crate::sys::pipe::pipe().expect("pipe");
        let _ = crate::sys::pipe::set_size(&r, 1 << 20);
        let r = Rc::new(r);
        ring.read_multishot(r.clone(), 1);
        // 1 MiB of a counting pattern through 4 × 64 KiB buffers: the ring must
        // run dry and recover (ENOBUFS, re-arm) without losing or reordering bytes.
        let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn(move || {
            rustix::io::write(&w, &payload[..]).expect("write");
            payload
        });
        let mut got = Vec::new();
        let mut cqes = Vec::new();
        let start = std::time::Instant::now();
        let mut done = false;
        while !done && start.elapsed() < Duration::from_secs(5) {
            ring.submit_and_wait(1, Some(Duration::from_millis(100)))
                .expect("enter");
            ring.reap(&mut cqes);
            for cqe in &cqes {
                got.extend_from_slice(ring.data(cqe));
                let ended = ring.finish(cqe).is_some();
                if ended {
                    match cqe.result {
                        Ok(0) => done = true,
                        _ => {
                            ring.read_multishot(r.clone(), 1);
                        }
                    }
                }
            }
        }
        let payload = writer.join().expect("writer");
        assert_eq!(got.len(), payload.len());
        assert!(got == payload, "bytes reordered or corrupted");
    }

    #[test]
    fn nothing_reaches_the_kernel_outside_submit_and_wait_even_when_the_queue_overflows() {
        // See the comment on `Ring::push`: a submit while completions are being
        // handled once let a pipe's bytes land after its capture was frozen.
        let mut ring = Ring::<u32>::new(8).expect("io_uring available");
        ring.register_buf_ring(64, 4096, 0).expect("buffer ring");
        let mut keep = Vec::new();
        for i in 0..40 {
            let (r, w) = crate::sys::pipe::pipe().expect("pipe");
            rustix::io::write(&w, b"x").expect("write");
            ring.read_multishot(Rc::new(r), i);
            keep.push(w);
        }
        let mut cqes = Vec::new();
        ring.reap(&mut cqes);
        assert!(cqes.is_empty(), "reads ran before submit_and_wait");
        let got = collect(&mut ring, 40);
        assert_eq!(got.len(), 40, "every queued read reached the kernel");
        assert!(got.iter().all(|(_, data, _)| data == b"x"));
    }

    #[test]
    fn a_timer_completes_while_the_ring_waits() {
        let mut ring = ring();
        let t0 = std::time::Instant::now();
        ring.timeout(Duration::from_millis(100), 9);
        let mut cqes = Vec::new();
        while cqes.is_empty() && t0.elapsed() < Duration::from_secs(5) {
            ring.submit_and_wait(1, None).expect("enter");
            ring.reap(&mut cqes);
        }
        assert_eq!(cqes.len(), 1);
        assert_eq!(ring.tag(&cqes[0]), Some(&9));
        assert!(t0.elapsed() >= Duration::from_millis(90));
    }

    #[test]
    fn a_cancel_for_an_ended_op_spares_the_op_that_took_its_slot() {
        let mut ring = ring();
        let (r1, w1) = crate::sys::pipe::pipe().expect("pipe");
        let old = ring.read_multishot(Rc::new(r1), 1);
        drop(w1);
        let ended = collect(&mut ring, 1);
        assert_eq!(ended.last().map(|e| e.2), Some(Some(1)), "first read ended");
        let (r2, w2) = crate::sys::pipe::pipe().expect("pipe");
        let new = ring.read_multishot(Rc::new(r2), 2);
        assert_eq!(slot_key(old), slot_key(new), "the slot was reused");
        assert_ne!(old, new, "a reused slot gets a new op id");
        ring.cancel(old);
        rustix::io::write(&w2, b"still here").expect("write");
        let got = collect(&mut ring, 1);
        let (cqe, data, _) = got.first().expect("a completion for the second read");
        assert_eq!(data, b"still here", "{cqe:?}");
        assert!(
            cqe.result.is_ok(),
            "the second read was not cancelled: {cqe:?}"
        );
    }

    #[test]
    fn completions_past_a_full_completion_queue_all_arrive() {
        // 2 submission entries: a completion queue of 8 for 200 pipes' reads.
        let mut ring = Ring::<u32>::new(2).expect("io_uring available");
        ring.register_buf_ring(256, 4096, 0).expect("buffer ring");
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for i in 0..200u32 {
            let (r, w) = crate::sys::pipe::pipe().expect("pipe");
            let r = Rc::new(r);
            ring.read_multishot(r.clone(), i);
            readers.push(r);
            writers.push(w);
        }
        ring.submit_and_wait(0, None).expect("enter");
        for (i, w) in writers.iter().enumerate() {
            rustix::io::write(w, format!("pipe {i};").as_bytes()).expect("write");
        }
        writers.clear(); // end of file on every pipe
        let mut got = vec![Vec::new(); 200];
        let mut open = 200;
        let mut cqes = Vec::new();
        let start = std::time::Instant::now();
        while open > 0 && start.elapsed() < Duration::from_secs(5) {
            ring.submit_and_wait(1, Some(Duration::from_millis(100)))
                .expect("enter");
            ring.reap(&mut cqes);
            for cqe in &cqes {
                let i = *ring.tag(cqe).expect("known op") as usize;
                got[i].extend_from_slice(ring.data(cqe));
                if ring.finish(cqe).is_some() {
                    match cqe.result {
                        Ok(0) => open -= 1,
                        // Ended early (ENOBUFS, overflow, single-shot): again.
                        _ => _ = ring.read_multishot(readers[i].clone(), i as u32),
                    }
                }
            }
        }
        assert!(
            ring.cq_overflows() > 0,
            "the completion queue never overflowed"
        );
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, format!("pipe {i};").as_bytes(), "pipe {i}");
        }
    }

    #[test]
    fn write_lands_at_its_offset_and_hands_the_buffer_back() {
        let mut ring = ring();
        let dir = std::env::temp_dir();
        let file = Arc::new(crate::sys::fd::tempfile(&dir).expect("tempfile"));
        ring.write(file.clone(), b"world".to_vec(), 6, 1);
        ring.write(file.clone(), b"hello ".to_vec(), 0, 2);
        let mut cqes = Vec::new();
        let mut bufs = Vec::new();
        let start = std::time::Instant::now();
        while bufs.len() < 2 && start.elapsed() < Duration::from_secs(5) {
            ring.submit_and_wait(1, Some(Duration::from_millis(100)))
                .expect("enter");
            ring.reap(&mut cqes);
            for cqe in &cqes {
                let buf = ring.take_write_buf(cqe);
                let tag = ring.finish(cqe).expect("write is single-shot");
                bufs.push((tag, cqe.result, buf));
            }
        }
        bufs.sort_by_key(|b| b.0);
        assert_eq!(bufs.len(), 2);
        assert_eq!(bufs[0], (1, Ok(5), b"world".to_vec()));
        assert_eq!(bufs[1], (2, Ok(6), b"hello ".to_vec()));
        assert_eq!(ring.in_flight(), 0);
        let mut out = [0u8; 16];
        let n = crate::sys::fd::pread_full(&*file, &mut out, 0).expect("pread");
        assert_eq!(&out[..n], b"hello world");
    }

    #[test]
    fn wait_exit_completes_for_an_exited_child() {
        let mut ring = ring();
        let mut child = std::process::Command::new("/bin/true")
            .spawn()
            .expect("spawn true");
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_child(&child),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("pidfd_open");
        ring.wait_exit(Rc::new(pidfd), 3);
        let got = collect(&mut ring, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, Some(3));
        if ring.features.waitid {
            assert_eq!(got[0].0.result, Ok(0));
        }
        // WNOWAIT left the zombie for its owner to reap.
        assert!(child.wait().expect("reap").success());
    }
}
