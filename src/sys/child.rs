//! The code that runs in the vfork child, between `clone` and `execve`.
//!
//! The child shares the parent's memory (`CLONE_VM`) while the parent thread is
//! suspended (`CLONE_VFORK`). Any lock it takes may be held by another of the
//! parent's threads forever, and anything it allocates or frees corrupts the
//! parent's heap. So this file may do only three things: raw async-signal-safe
//! syscalls, reads of the prebuilt [`ChildPlan`](super::spawn::ChildPlan), and one volatile write of a
//! [`ChildReport`] into memory the parent owns. No allocation, no locks, no
//! logging, no panics, no unwinding, no drop of an owned value. It leaves only by
//! `execve` or by `_exit(63)` (Procstar's code for a failed exec).
//!
//! This follows glibc's `posix_spawn` child (`sysdeps/unix/sysv/linux/spawni.c`)
//! and the reasoning in Rust std's `do_exec` comment on malloc deadlocks.
//!
//! # References
//! - [vfork(2)](https://man7.org/linux/man-pages/man2/vfork.2.html)
//! - [signal-safety(7)](https://man7.org/linux/man-pages/man7/signal-safety.7.html)
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub(crate) mod abi;

use abi::{ChildArgs, ChildPlanView, ChildReport, FdAction, Stage};
use core::ffi::c_void;

/// Exit status of a child whose setup or exec failed (as glibc's `posix_spawn`).
pub(crate) const SPAWN_FAILED: i32 = 63;

/// Entry point of the vfork child; `arg` points to a [`ChildArgs`] in the parent.
///
/// Only `spawn::spawn` passes this function, to `clone3` or `clone`, with `arg` pointing to a
/// live `ChildArgs` whose plan and report pointers stay valid while the child runs
/// before `execve` or `_exit`: `CLONE_VFORK` keeps the parent (and so the plan)
/// suspended and alive for exactly that long. (`clone` takes a safe `extern "C"`
/// function pointer, hence not `unsafe fn`.)
pub(crate) extern "C" fn child_main(arg: *mut c_void) -> i32 {
    // SAFETY: `spawn` passes a valid `ChildArgs` that outlives the child (see above).
    let args = unsafe { &*(arg as *const ChildArgs) };
    // SAFETY: `args.plan` points to the parent's `ChildPlanView`, alive while we run.
    let plan = unsafe { &*args.plan };
    let (stage, fd, errno) = run(plan);
    let report = ChildReport {
        stage: stage as u32,
        fd,
        errno,
    };
    // SAFETY: `args.report` points into the suspended parent's stack frame, valid
    // until the parent resumes, which happens only after this `_exit`.
    unsafe { core::ptr::write_volatile(args.report, report) };
    // SAFETY: `_exit` is async-signal-safe and runs no exit handlers.
    unsafe { libc::_exit(SPAWN_FAILED) }
}

/// Runs the setup steps in order and execs; returns only on failure.
///
/// Order: signal dispositions → perf counters → session or process group → umask
/// → rlimits → credentials → cwd → parent-death signal → fd table → signal mask →
/// exec.
/// `PR_SET_PDEATHSIG` comes after the credentials because the kernel clears it
/// when the effective uid or gid changes.
fn run(plan: &ChildPlanView) -> (Stage, i32, i32) {
    // Signals: every disposition back to default (handlers must never run in a
    // child sharing the parent's memory; an inherited SIG_IGN would survive exec),
    // except the spec's ignore set, which becomes SIG_IGN. `reset` names the
    // signals to set to default: all, or, when `CLONE_CLEAR_SIGHAND` has
    // already reset the handlers, only those the agent ignores (see
    // `clone3.rs`). The mask stays as inherited from the spawning thread
    // (everything blocked, but for SIGCHLD after a clone3) until just before
    // exec.
    let dfl = sigaction_with(SIG_DFL);
    let ign = sigaction_with(SIG_IGN);
    let mut todo = (plan.reset | plan.ignore) & abi::CATCHABLE;
    while todo != 0 {
        let sig = todo.trailing_zeros() + 1;
        todo &= todo - 1;
        let action = if plan.ignore & (1u64 << (sig - 1)) != 0 {
            &ign
        } else {
            &dfl
        };
        // Errors (EINVAL for glibc's reserved 32/33) are harmless and ignored.
        // SAFETY: `action` is a valid sigaction; the old-action pointer may be null.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                action as *const KernelSigaction,
                core::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }

    open_perf(plan);

    if plan.setsid {
        // SAFETY: setsid has no memory arguments.
        if unsafe { libc::syscall(libc::SYS_setsid) } < 0 {
            return (Stage::Setsid, -1, super::errno());
        }
    } else if plan.pgid >= 0 {
        // SAFETY: setpgid has no memory arguments.
        if unsafe { libc::syscall(libc::SYS_setpgid, 0, plan.pgid) } < 0 {
            return (Stage::Setpgid, -1, super::errno());
        }
    }

    if plan.umask >= 0 {
        // SAFETY: umask has no memory arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_umask, plan.umask) };
    }

    for entry in plan.rlimits() {
        // SAFETY: `entry.limit` is a `struct rlimit64` (soft, hard) owned by the
        // plan; the old-limit pointer may be null.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                entry.resource,
                entry.limit.as_ptr(),
                core::ptr::null_mut::<u64>(),
            )
        };
        if rc < 0 {
            return (Stage::Rlimit, entry.resource as i32, super::errno());
        }
    }

    // Credentials, with raw syscalls: glibc's setuid()/setgid()/setgroups()
    // signal every thread of the process to change theirs too (setxid broadcast),
    // which must never happen in a vfork child sharing the agent's threads.
    if plan.set_creds {
        // SAFETY: `plan.groups` points to `groups_len` gids owned by the plan.
        if unsafe { libc::syscall(libc::SYS_setgroups, plan.groups_len, plan.groups) } < 0 {
            return (Stage::SetGroups, -1, super::errno());
        }
        // SAFETY: setgid has no memory arguments.
        if unsafe { libc::syscall(libc::SYS_setgid, plan.gid) } < 0 {
            return (Stage::SetGid, -1, super::errno());
        }
        if plan.uid >= 0 {
            // SAFETY: setuid has no memory arguments.
            if unsafe { libc::syscall(libc::SYS_setuid, plan.uid) } < 0 {
                return (Stage::SetUser, -1, super::errno());
            }
        }
    }

    // After the credentials: the directory is entered as the user the process
    // runs as, so one that user may not enter fails here rather than being
    // handed to it by the agent's privilege.
    if !plan.cwd.is_null() {
        // SAFETY: `plan.cwd` is a NUL-terminated string owned by the plan.
        if unsafe { libc::syscall(libc::SYS_chdir, plan.cwd) } < 0 {
            return (Stage::Chdir, -1, super::errno());
        }
    }

    if plan.pdeath_sig > 0 {
        // The signal follows the thread that created us (the reactor thread, which
        // lives as long as the agent).
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes only integers.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_PDEATHSIG,
                plan.pdeath_sig as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc < 0 {
            return (Stage::PdeathSig, -1, super::errno());
        }
        // If the agent died before the prctl, we were reparented and no signal
        // will come: leave now rather than run unsupervised.
        // SAFETY: getppid has no arguments.
        if unsafe { libc::syscall(libc::SYS_getppid) } != plan.agent_pid as libc::c_long {
            return (Stage::PdeathSig, -1, libc::ESRCH);
        }
    }

    // Take our own fd table. We were cloned with CLONE_FILES, sharing the agent's
    // table; CLOSE_RANGE_UNSHARE over [window, ~0] copies only the fds below
    // `window` (0–2, every target and every source), so the cost of a spawn does not
    // grow with the fds the agent holds for other processes (since Linux 5.9).
    // SAFETY: close_range has no memory arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            plan.fd_window,
            u32::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    if rc < 0 {
        return (Stage::CloseRange, plan.fd_window as i32, super::errno());
    }
    // Below the window, mark everything from fd 3 up close-on-exec: an fd the agent
    // or its embedder holds there without CLOEXEC must not reach the child. Targets
    // installed below by dup3 are not close-on-exec (since Linux 5.11).
    if plan.fd_window > 3 {
        // SAFETY: close_range has no memory arguments.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                plan.fd_window - 1,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc < 0 {
            return (Stage::CloseRange, 3, super::errno());
        }
    }

    // The fd plan: no source has a target's number (the parent moved those), so
    // dup3 in list order never overwrites a source still needed.
    for action in plan.fd_actions() {
        match *action {
            FdAction::Dup { src, dst } => {
                // SAFETY: dup3 has no memory arguments.
                if unsafe { libc::syscall(libc::SYS_dup3, src, dst, 0) } < 0 {
                    return (Stage::DupFd, dst, super::errno());
                }
            }
            FdAction::Close { fd } => {
                // SAFETY: close has no memory arguments; fd is a number from the plan.
                if unsafe { libc::syscall(libc::SYS_close, fd) } < 0 {
                    return (Stage::CloseFd, fd, super::errno());
                }
            }
        }
    }

    // The spec's signal mask (empty by default), as late as possible.
    // SAFETY: `plan.sigmask` is a valid sigset owned by the plan.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &plan.sigmask as *const u64,
            core::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    if rc < 0 {
        return (Stage::SignalMask, -1, super::errno());
    }

    // SAFETY: exe, argv and envp are NUL-terminated strings and NULL-terminated
    // pointer arrays owned by the plan.
    unsafe { libc::syscall(libc::SYS_execve, plan.exe, plan.argv, plan.envp) };
    (Stage::Exec, -1, super::errno())
}

/// Opens the plan's perf counters on this task (`pid` 0, any cpu), writing each
/// fd or `-errno` into the plan; a failure is only recorded, never fatal.
///
/// This runs before `close_range(CLOSE_RANGE_UNSHARE)`, so each fd lands in the fd
/// table shared with the agent, which owns it once `clone` returns; our own copy
/// (if the fd is below the window) is close-on-exec. It runs before the rlimits
/// (a low `RLIMIT_NOFILE` must not stop it) and before the credentials change, so
/// the open has the agent's privilege, which the agent's startup probe measured.
/// Leaders are `disabled` + `enable_on_exec`: counting starts at `execve`.
fn open_perf(plan: &ChildPlanView) {
    for (i, entry) in plan.perf_entries().iter().enumerate() {
        let group = if entry.leader < 0 {
            -1
        } else {
            let leader = plan.perf_result(entry.leader as usize);
            if leader < 0 {
                // The leader failed: so does its group, with the leader's errno.
                plan.set_perf_result(i, leader);
                continue;
            }
            leader
        };
        // On ourselves (pid 0), any CPU.
        let rc = super::perf::open_raw(&entry.attr, 0, -1, group);
        let value = if rc < 0 {
            -super::errno()
        } else {
            i32::try_from(rc).unwrap_or(-libc::EBADF)
        };
        plan.set_perf_result(i, value);
    }
}

/// The kernel's `struct sigaction` for `rt_sigaction` on x86_64 and aarch64.
#[repr(C)]
pub(crate) struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

const SIG_DFL: usize = 0;
const SIG_IGN: usize = 1;

const fn sigaction_with(handler: usize) -> KernelSigaction {
    KernelSigaction {
        handler,
        flags: 0,
        restorer: 0,
        mask: 0,
    }
}
