//! `waitid(P_PIDFD, …, &rusage)`—reaps a child through its pidfd, with rusage.
//!
//! glibc's `waitid` wrapper has no rusage argument; the raw syscall does (as
//! `wait4` does), so the reap and the resource figures come from one call.
//!
//! # References
//! - [waitid(2)](https://man7.org/linux/man-pages/man2/waitid.2.html)
//! - [getrusage(2)](https://man7.org/linux/man-pages/man2/getrusage.2.html)

use rustix::fd::{AsFd, AsRawFd};
use rustix::io::Errno;

const P_PIDFD: libc::idtype_t = 3;

/// `struct rusage` as the sys layer reads it, in the kernel's units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawRusage {
    /// User CPU time, microseconds.
    pub utime_us: i64,
    /// System CPU time, microseconds.
    pub stime_us: i64,
    /// Maximum resident set size, KiB.
    pub maxrss_kib: i64,
    /// Minor page faults.
    pub minflt: i64,
    /// Major page faults.
    pub majflt: i64,
    /// Swaps (always 0 on Linux).
    pub nswap: i64,
    /// Block input operations.
    pub inblock: i64,
    /// Block output operations.
    pub oublock: i64,
    /// Voluntary context switches.
    pub nvcsw: i64,
    /// Involuntary context switches.
    pub nivcsw: i64,
}

/// What reaping a child found.
#[derive(Clone, Copy, Debug)]
pub struct Reaped {
    /// The wait status as `wait4` would give it (`WIFEXITED` etc. apply).
    pub status: i32,
    /// Resource use of the child and its waited-for descendants.
    pub rusage: RawRusage,
}

/// `waitid(P_PIDFD, pidfd, &info, WEXITED | flags, &rusage)`—reaps the exited child.
///
/// Since Linux 5.4 (`P_PIDFD`).
///
/// # Errors
/// `EAGAIN` with `WNOHANG` semantics is not used; `ECHILD` if it was reaped already.
pub fn reap(pidfd: impl AsFd) -> Result<Reaped, Errno> {
    waitid_raw(pidfd, libc::WEXITED)
}

/// What [`reap`] would find, leaving the exited child unreaped
/// (`WNOWAIT`): its pid, and the process group id it may lead, stay taken
/// until it is reaped. The rusage is the same (the kernel's `RUSAGE_BOTH` of
/// the zombie either way).
///
/// # Errors
/// As [`reap`].
pub fn peek(pidfd: impl AsFd) -> Result<Reaped, Errno> {
    waitid_raw(pidfd, libc::WEXITED | libc::WNOWAIT)
}

/// Waits until the process of `pidfd` has exited, and leaves it unreaped
/// (`WNOWAIT`): a zombie, whose perf counters hold their final counts, for
/// [`reap`] to collect.
pub fn wait_exited(pidfd: impl AsFd) -> Result<(), Errno> {
    waitid_raw(pidfd, libc::WEXITED | libc::WNOWAIT).map(drop)
}

fn waitid_raw(pidfd: impl AsFd, options: i32) -> Result<Reaped, Errno> {
    // SAFETY: an all-zero siginfo_t and rusage are valid out-parameter values.
    let mut info: libc::siginfo_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    loop {
        // SAFETY: `info` and `ru` are valid, writable out-parameters for this call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_waitid,
                P_PIDFD,
                pidfd.as_fd().as_raw_fd(),
                &mut info as *mut libc::siginfo_t,
                options,
                &mut ru as *mut libc::rusage,
            )
        };
        if rc < 0 {
            let e = super::last_errno();
            if e == Errno::INTR {
                continue;
            }
            return Err(e);
        }
        break;
    }
    // SAFETY: after a successful waitid the kernel filled si_pid/si_status.
    let pid = unsafe { info.si_pid() };
    if pid == 0 {
        return Ok(Reaped {
            status: -1,
            rusage: RawRusage::default(),
        });
    }
    Ok(Reaped {
        status: wait_status_from_siginfo(&info),
        rusage: rusage_from(&ru),
    })
}

/// Rebuilds the `wait4`-style status word from a `siginfo_t` of a `CLD_*` event.
pub(crate) fn wait_status_from_siginfo(info: &libc::siginfo_t) -> i32 {
    // SAFETY: si_status is valid for SIGCHLD siginfo, which waitid produces.
    let st = unsafe { info.si_status() };
    match info.si_code {
        libc::CLD_EXITED => (st & 0xff) << 8,
        libc::CLD_KILLED => st & 0x7f,
        libc::CLD_DUMPED => (st & 0x7f) | 0x80,
        _ => st,
    }
}

fn rusage_from(ru: &libc::rusage) -> RawRusage {
    RawRusage {
        utime_us: ru.ru_utime.tv_sec * 1_000_000 + ru.ru_utime.tv_usec,
        stime_us: ru.ru_stime.tv_sec * 1_000_000 + ru.ru_stime.tv_usec,
        maxrss_kib: ru.ru_maxrss,
        minflt: ru.ru_minflt,
        majflt: ru.ru_majflt,
        nswap: ru.ru_nswap,
        inblock: ru.ru_inblock,
        oublock: ru.ru_oublock,
        nvcsw: ru.ru_nvcsw,
        nivcsw: ru.ru_nivcsw,
    }
}
