//! Bounded capture of a child's output.
//!
//! [`headtail::HeadTail`] keeps the first `head` and last `tail` bytes of a stream
//! and counts everything, so a child writing 100 GiB costs no more memory than one
//! writing `head + tail`. [`compress`] holds finished captures zstd-compressed and
//! serves ranged reads from them.

pub mod compress;
pub mod headtail;
pub mod kept;
pub mod limit;
