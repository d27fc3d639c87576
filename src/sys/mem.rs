//! Handing freed heap memory back to the system after a large request.
//!
//! A request of hundreds of thousands of specs is several copies of itself
//! while it is read, checked and answered (the MessagePack value, the specs,
//! the echo in an error): 350 MB of RSS for a 4.9 MB message, measured. Freed,
//! that memory stayed with glibc's malloc, as its arenas keep what they had
//! unless their top chunk is free. [`note_request`] marks such a request, and
//! the front ends' runtime calls [`trim_if_noted`] every few seconds, which
//! returns free pages with `malloc_trim` a few times after each.

use std::sync::atomic::{AtomicU32, Ordering};

/// Requests at least this large are followed by trims.
const LARGE: usize = 1 << 20;

/// Trims still to do; each large request sets it to [`TRIMS`].
static PENDING: AtomicU32 = AtomicU32::new(0);

/// Trims after each large request: its memory is freed once its answer has
/// gone, which may take a while (a large start is being spawned).
const TRIMS: u32 = 3;

/// Notes a request of `bytes` bytes read by a front end.
pub fn note_request(bytes: usize) {
    if bytes >= LARGE {
        PENDING.store(TRIMS, Ordering::Relaxed);
    }
}

/// Returns free heap pages to the system if a large request came lately.
/// Walks the heap: for the front ends' thread, not the reactor's.
pub fn trim_if_noted() {
    let left = PENDING.load(Ordering::Relaxed);
    if left == 0 {
        return;
    }
    PENDING.store(left - 1, Ordering::Relaxed);
    trim();
}

#[cfg(target_env = "gnu")]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}
