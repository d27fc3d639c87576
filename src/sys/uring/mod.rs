//! The io_uring ring, its in-flight table, and the provided-buffer ring.
//!
//! `ring.rs` holds the one `unsafe` submission-queue push. Its soundness rests on
//! the in-flight table beside it: every pointer an entry hands the kernel targets
//! heap memory owned by that op's slab entry, which is removed only on the op's
//! final completion. `bufring.rs` is our provided-buffer ring (the io-uring crate
//! registers one but does not manage it).
//!
//! # References
//! - [io_uring_enter(2)](https://man7.org/linux/man-pages/man2/io_uring_enter.2.html)
//! - [io_uring_register_buf_ring(3)](https://man7.org/linux/man-pages/man3/io_uring_register_buf_ring.3.html)

mod bufring;
mod ring;

pub use ring::{Cqe, Features, Ring, RingError, force_fallback};
pub(in crate::sys) use ring::{op_id, slot_key};
