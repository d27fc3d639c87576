//! Bounded capture of a child's output.
//!
//! [`headtail::HeadTail`] keeps the first `head` and last `tail` bytes of a stream
//! and counts everything, so a child writing 100 GiB costs no more memory than one
//! writing `head + tail`. [`compress`] holds finished captures zstd-compressed and
//! serves ranged reads from them.
//!
//! Nothing here may panic on what a child writes or a client asks for: the
//! agent must keep running, so outside tests `unwrap`, `expect` and `panic!`
//! are denied.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod compress;
pub mod headtail;
pub mod kept;
pub mod limit;
