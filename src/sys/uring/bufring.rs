//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) shared by every pipe read.
//!
//! `n` buffers of `size` bytes each, in one anonymous mapping. Memory is touched
//! only where the kernel writes, so a ring of large buffers costs what the data
//! actually needs. Where the kernel has `IOU_PBUF_RING_INC` (since Linux 6.12) a
//! buffer is consumed incrementally: many small reads share one buffer, and a
//! completion carrying `IORING_CQE_F_BUF_MORE` means the kernel keeps filling the
//! same buffer after that completion's bytes. We track the offset per buffer.
//!
//! # References
//! - [io_uring_register_buf_ring(3)](https://man7.org/linux/man-pages/man3/io_uring_register_buf_ring.3.html)
//! - [io_uring_setup_buf_ring(3)](https://man7.org/linux/man-pages/man3/io_uring_setup_buf_ring.3.html)

use core::ffi::c_void;
use core::sync::atomic::{AtomicU16, Ordering};
use io_uring::types::BufRingEntry;
use rustix::io::Errno;

/// A provided-buffer ring: the ring of descriptors and the buffers it lends.
#[derive(Debug)]
pub struct BufRing {
    ring: *mut BufRingEntry,
    ring_len: usize,
    bufs: *mut u8,
    bufs_len: usize,
    entries: u16,
    size: u32,
    tail: u16,
    /// Bytes of each buffer already handed out by incremental completions.
    offsets: Vec<u32>,
    /// The group id the ring is registered under.
    pub group: u16,
    /// Whether the ring was registered with `IOU_PBUF_RING_INC`.
    pub incremental: bool,
}

impl BufRing {
    /// Maps `entries` (a power of two) buffers of `size` bytes and the ring itself.
    /// The caller registers it with [`crate::sys::uring::Ring::register_buf_ring`].
    pub(crate) fn new(entries: u16, size: u32, group: u16) -> Result<Self, Errno> {
        debug_assert!(entries.is_power_of_two());
        let ring_len = usize::from(entries) * core::mem::size_of::<BufRingEntry>();
        let ring = map(ring_len)? as *mut BufRingEntry;
        let bufs_len = usize::from(entries) * size as usize;
        let bufs = match map(bufs_len) {
            Ok(p) => p as *mut u8,
            Err(e) => {
                // SAFETY: unmapping the ring mapping made just above.
                unsafe { libc::munmap(ring as *mut c_void, ring_len) };
                return Err(e);
            }
        };
        Ok(BufRing {
            ring,
            ring_len,
            bufs,
            bufs_len,
            entries,
            size,
            tail: 0,
            offsets: vec![0; usize::from(entries)],
            group,
            incremental: false,
        })
    }

    /// The ring's address, for registration.
    pub(crate) fn ring_addr(&self) -> u64 {
        self.ring as u64
    }

    /// The number of ring entries.
    pub(crate) fn entries(&self) -> u16 {
        self.entries
    }

    /// Size of each buffer in bytes.
    pub fn buf_size(&self) -> u32 {
        self.size
    }

    /// Puts every buffer into the ring (after registration).
    pub(crate) fn fill(&mut self) {
        for bid in 0..self.entries {
            self.push(bid);
        }
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let idx = usize::from(self.tail & mask);
        let ptr = self.ring.wrapping_add(idx);
        // SAFETY: `idx < entries`, so the entry lies inside the ring mapping; the
        // kernel does not read entries at or past the published tail.
        let entry = unsafe { &mut *ptr };
        entry.set_addr(self.bufs as u64 + u64::from(bid) * u64::from(self.size));
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // The tail field overlays `resv` of entry 0 (offset 14, u16), inside
        // the ring mapping and 2-byte aligned; the kernel reads it with acquire.
        let ptr = (self.ring as *mut u8).wrapping_add(14) as *const AtomicU16;
        // SAFETY: as above.
        let tail = unsafe { &*ptr };
        tail.store(self.tail, Ordering::Release);
    }

    /// The bytes a completion delivered in buffer `bid`, and whether the buffer is
    /// now finished (so it must go back with [`BufRing::recycle`]).
    ///
    /// `more` is the completion's `IORING_CQE_F_BUF_MORE`.
    pub(crate) fn take(&mut self, bid: u16, len: u32, more: bool) -> (&[u8], bool) {
        let Some(offset) = self.offsets.get_mut(usize::from(bid)) else {
            return (&[], false);
        };
        let start = if self.incremental { *offset } else { 0 };
        let len = len.min(self.size.saturating_sub(start));
        let finished = Self::finished(self.incremental, len, more);
        if finished {
            *offset = 0;
        } else {
            *offset = start + len;
        }
        let at = usize::from(bid) * self.size as usize + start as usize;
        debug_assert!(at + len as usize <= self.bufs_len);
        // `at + len` lies within the buffer mapping (bid < entries, start +
        // len <= size); the kernel wrote these bytes before posting the completion and
        // will not write them again until the buffer is recycled.
        let ptr = self.bufs.wrapping_add(at);
        // SAFETY: see above.
        let data = unsafe { core::slice::from_raw_parts(ptr, len as usize) };
        (data, finished)
    }

    /// Whether a completion of `len` bytes leaves its buffer with the application.
    ///
    /// Without `IOU_PBUF_RING_INC` every completion consumes its buffer. With it, a
    /// completion consumes the buffer only when the kernel filled the rest of it
    /// (no `IORING_CQE_F_BUF_MORE`); a zero-length completion (end of file)
    /// commits nothing, so the buffer is still the kernel's.
    pub(crate) fn finished(incremental: bool, len: u32, more: bool) -> bool {
        !incremental || (len > 0 && !more)
    }

    /// Whether the ring was registered with `IOU_PBUF_RING_INC`.
    pub(crate) fn is_incremental(&self) -> bool {
        self.incremental
    }

    /// Returns buffer `bid` to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both mappings are owned by this value; the ring that used them is
        // unregistered or dropped before (field order in `Ring`).
        unsafe { libc::munmap(self.ring as *mut c_void, self.ring_len) };
        // SAFETY: as above.
        unsafe { libc::munmap(self.bufs as *mut c_void, self.bufs_len) };
    }
}

fn map(len: usize) -> Result<*mut c_void, Errno> {
    // SAFETY: an anonymous private mapping with no hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(super::super::last_errno())
    } else {
        Ok(p)
    }
}
