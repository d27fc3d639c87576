//! `pidfd_send_signal`—signals a process through its pidfd.
//!
//! A pid is only a label: once a process is reaped, its pid can be reused. A pidfd
//! always refers to the same process, and signalling it after exit gives `ESRCH`
//! instead of hitting a stranger.
//!
//! # References
//! - [pidfd_send_signal(2)](https://man7.org/linux/man-pages/man2/pidfd_send_signal.2.html)

use rustix::fd::{AsFd, AsRawFd};
use rustix::io::Errno;

/// `kill(-pgid, signum)`—sends `signum` to every process in group `pgid`.
///
/// The one place chaperone signals by number rather than pidfd: a process group
/// has no fd. Callers only use it while the group's leader is unreaped, so the id
/// cannot have been recycled.
///
/// # Errors
/// `ESRCH` when no process is in the group.
pub fn signal_group(pgid: i32, signum: i32) -> Result<(), Errno> {
    if pgid <= 1 {
        return Err(Errno::INVAL);
    }
    // SAFETY: kill has no memory arguments; a negative pid names a process group.
    if unsafe { libc::kill(-pgid, signum) } < 0 {
        Err(super::last_errno())
    } else {
        Ok(())
    }
}

/// `pidfd_send_signal(pidfd, signum, NULL, 0)`—sends `signum` to the process.
///
/// Since Linux 5.1.
///
/// # Errors
/// `ESRCH` once the process has exited (even before it is reaped), `EINVAL` for a
/// bad signal number.
#[doc(alias = "pidfd_send_signal")]
pub fn send_signal(pidfd: impl AsFd, signum: i32) -> Result<(), Errno> {
    // SAFETY: the pidfd is a valid borrowed fd; the siginfo pointer may be null.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd(),
            signum,
            core::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        Err(super::last_errno())
    } else {
        Ok(())
    }
}
