//! Every `unsafe` syscall in chaperone, behind safe APIs.
//!
//! Each file covers one kernel concept and offers a safe API out:
//!
//! | file | provides |
//! |---|---|
//! | `child.rs` | the code that runs in the vfork child between `clone` and `execve` |
//! | `child/abi.rs` | what `spawn.rs` hands the child and the child writes back: the plan view, the fd actions, the failure report and its stages |
//! | `spawn.rs` | [`spawn::ChildPlan`], built in the parent, and [`spawn::spawn`], the `clone(CLONE_VM \| CLONE_VFORK \| CLONE_PIDFD)` call |
//! | `clone3.rs` | `clone3` with `CLONE_CLEAR_SIGHAND` (x86_64 assembly), and the agent's ignored signals read from `/proc/self/status` |
//! | `sched.rs` | a short scheduler slice for the agent's own threads (`sched_setattr`) |
//! | `pidfd.rs` | [`pidfd::send_signal`] through `pidfd_send_signal` |
//! | `wait.rs` | [`wait::reap`]: `waitid(P_PIDFD)` with a rusage buffer, read into [`wait::RawRusage`] |
//! | `pipe.rs` | capture pipes: `pipe2`, `F_SETPIPE_SZ` once a writer fills one, non-blocking read ends |
//! | `fd.rs` | `F_DUPFD_CLOEXEC`, `O_TMPFILE` files, `pread` |
//! | `mem.rs` | `malloc_trim` after a large request, so its memory goes back to the system |
//! | `perf.rs` | `perf_event_open`: `struct perf_event_attr`, the agent-side open, the plan a child opens its counters from |
//! | `daemon.rs` | [`daemon::detach`]: the agent's one fork, at start, into a session of its own (`--detach`) |
//! | `user.rs` | user and group lookups (`getpwnam_r`, `getgrnam_r`, `getgrouplist`) in the parent |
//! | `uring/` | the io_uring ring, its in-flight table, and the provided-buffer ring |
//! | `epoll.rs` | [`epoll::Poller`]: the same operations on epoll, where io_uring cannot be used (no `unsafe`) |
//!
//! Reading `/proc` needs no `unsafe` and lives in the `metrics` module (but
//! for `clone3.rs`'s one read of the agent's own status).
//!
//! # References
//! - [clone(2)](https://man7.org/linux/man-pages/man2/clone.2.html)
//! - [io_uring(7)](https://man7.org/linux/man-pages/man7/io_uring.7.html)
#![allow(unsafe_code)] // This module is where chaperone's unsafe code lives; see above.
#![deny(
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block,
    clippy::missing_safety_doc
)]

pub(crate) mod child;
pub(crate) mod clone3;
#[cfg(feature = "cli")]
pub mod daemon;
pub mod epoll;
pub mod fd;
#[cfg(feature = "cli")]
pub mod mem;
pub mod perf;
pub mod pidfd;
pub mod pipe;
pub(crate) mod sched;
pub mod spawn;
pub mod uring;
pub mod user;
pub mod wait;

/// Reads the calling thread's `errno`.
///
/// Safe to call in the vfork child: `__errno_location` only computes an address in the
/// thread's TLS block, which the child shares with the (suspended) parent thread.
pub(crate) fn errno() -> i32 {
    // SAFETY: `__errno_location` has no preconditions.
    let ptr = unsafe { libc::__errno_location() };
    // SAFETY: it returns a valid, aligned pointer to this thread's errno.
    unsafe { *ptr }
}

/// Returns the last OS error as a [`rustix::io::Errno`].
pub(crate) fn last_errno() -> rustix::io::Errno {
    rustix::io::Errno::from_raw_os_error(errno())
}
