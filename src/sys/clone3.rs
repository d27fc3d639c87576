//! `clone3` with `CLONE_CLEAR_SIGHAND`, and the agent's ignored signals: what
//! lets a vfork child skip resetting every signal disposition one by one.
//!
//! A child that shares the agent's memory must never run one of the agent's
//! signal handlers, and a signal the agent ignores must not stay ignored
//! through `execve` unless the spec asks for it. The portable way (glibc's
//! `posix_spawn` does it too) is an `rt_sigaction` per signal in the child:
//! 62 system calls, about 13 µs here, in every spawn. `CLONE_CLEAR_SIGHAND`
//! (Linux 5.5) has the kernel reset every handler to the default as it makes
//! the child; what is left is the signals the agent ignores, which
//! `/proc/self/status` gives in one read (its `SigIgn` line; `stat`'s
//! `sigignore` field is cheaper but shows only signals 1–31). The child then
//! resets only those, usually just `SIGPIPE` (Rust ignores it).
//!
//! That read costs about 10 µs in the agent (the status of a process with
//! several threads), nearly what it saves, so it is made at most once every
//! [`FRESH`] and shared by the spawns in between; the signals programs
//! commonly ignore around a spawn ([`COMMON`]: `SIGINT`, `SIGQUIT`,
//! `SIGHUP`, `SIGPIPE`, job control …) are reset in every child regardless.
//! What this gives up: an uncommon signal (a realtime one, say) that the
//! embedding program starts to ignore less than [`FRESH`] before a spawn may
//! still be ignored in that child, as `posix_spawn` and std's `Command`
//! leave every ignored signal. Handlers are never at risk: the kernel clears
//! them all, whenever they were set.
//!
//! `clone3` has no libc wrapper that runs a function on a new stack, so the
//! call is a few lines of assembly (x86_64 only; other targets, and kernels or
//! seccomp profiles that refuse `clone3`, take `clone` and the full reset).
//!
//! # References
//! - [clone(2)](https://man7.org/linux/man-pages/man2/clone.2.html), `CLONE_CLEAR_SIGHAND`
//! - [proc_pid_status(5)](https://man7.org/linux/man-pages/man5/proc_pid_status.5.html), `SigIgn`

use core::ffi::c_void;
use rustix::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// `CLONE_CLEAR_SIGHAND`: reset every handled signal to `SIG_DFL` in the child.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;

/// `struct clone_args` up to `tls` (`CLONE_ARGS_SIZE_VER0`).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
}

/// Set once `clone3` with `CLONE_CLEAR_SIGHAND` has been refused: every later
/// spawn goes straight to `clone`.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether a spawn should try [`clone3_run`] first: on x86_64, unless it was
/// refused, or `CHAPERONE_FORCE_FALLBACK` asks for an older kernel's paths
/// (`clone` and the full reset, which the suite then runs too).
pub(crate) fn usable() -> bool {
    static FORCED_OFF: OnceLock<bool> = OnceLock::new();
    cfg!(target_arch = "x86_64")
        && !REFUSED.load(Ordering::Relaxed)
        && !*FORCED_OFF.get_or_init(super::uring::force_fallback)
}

/// Records that `clone3` failed with `errno` when it means "not here"
/// (`ENOSYS`: no `clone3` or a seccomp profile that hides it; `EINVAL`: no
/// `CLONE_CLEAR_SIGHAND`, before Linux 5.5; `EPERM`: a profile that denies
/// it). Returns whether the caller should fall back to `clone`.
pub(crate) fn refused(errno: i32) -> bool {
    let refused = matches!(errno, libc::ENOSYS | libc::EINVAL | libc::EPERM);
    if refused {
        REFUSED.store(true, Ordering::Relaxed);
    }
    refused
}

/// The flags [`clone3_run`] adds to a spawn's `clone` flags.
pub(crate) const EXTRA_FLAGS: u64 = CLONE_CLEAR_SIGHAND;

/// `clone3(args)`; the child runs `f(arg)` on the stack `args` gives and
/// exits with its return value. Returns the child's pid or `-errno`, in the
/// parent only.
///
/// # Safety
/// As for `clone` with `CLONE_VM`: `args.stack` must be memory no one else
/// uses while the child runs, and `f` must obey the vfork child's rules
/// (`child.rs`); `arg` must stay valid while the child runs.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn clone3_run(
    args: &mut CloneArgs,
    f: extern "C" fn(*mut c_void) -> i32,
    arg: *mut c_void,
) -> isize {
    let ret: isize;
    // SAFETY: the caller's contract. In the child, the kernel has set the
    // stack pointer to the top of `args.stack` (16-byte aligned, so `call`
    // leaves the alignment the ABI expects); r12 and r13 hold `f` and `arg`
    // (a syscall changes only rax, rcx and r11). The child never comes back
    // to Rust code here: it calls `f` and exits with its result.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") core::mem::size_of::<CloneArgs>(),
            in("r12") f,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Not on this target: always "not here".
#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn clone3_run(
    _args: &mut CloneArgs,
    _f: extern "C" fn(*mut c_void) -> i32,
    _arg: *mut c_void,
) -> isize {
    -(libc::ENOSYS as isize)
}

/// Signals a program commonly ignores for a while around starting a child
/// (a shell's job control, `SIGINT`/`SIGQUIT` around `system()`, hangups,
/// broken pipes, alarms): reset in every child whatever the cached mask says,
/// so that ignoring one just before a spawn never reaches the child. About
/// 3 µs for the fifteen.
const COMMON: u64 = {
    let sigs = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGCHLD,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGURG,
        libc::SIGXFSZ,
        libc::SIGWINCH,
    ];
    let mut mask = 0u64;
    let mut i = 0;
    while i < sigs.len() {
        mask |= 1u64 << (sigs[i] - 1);
        i += 1;
    }
    mask
};

/// The signals a child started with `CLONE_CLEAR_SIGHAND` sets back to the
/// default: those the agent ignored at the last read, and the [`COMMON`]
/// ones, less the spec's own ignore set (which the child sets to `SIG_IGN`).
pub(crate) fn to_reset(ignored: u64, spec_ignore: u64) -> u64 {
    (ignored | COMMON) & !spec_ignore
}

/// How long a read of the agent's ignored signals serves later spawns.
pub(crate) const FRESH: std::time::Duration = std::time::Duration::from_millis(10);

/// The signals this process ignores (kernel layout: bit n-1 is signal n), as
/// read from `/proc/self/status` within the last [`FRESH`]; `None` when it
/// cannot be read (no `/proc`).
pub(crate) fn ignored_recently() -> Option<u64> {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    /// When the mask was read: nanoseconds since `BASE`, plus 1 (0: never).
    static READ_AT: AtomicU64 = AtomicU64::new(0);
    static MASK: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(std::time::Instant::now);
    let now = u64::try_from(base.elapsed().as_nanos())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1);
    let at = READ_AT.load(Ordering::Acquire);
    let fresh = u64::try_from(FRESH.as_nanos()).unwrap_or(u64::MAX);
    if at != 0 && now.saturating_sub(at) < fresh {
        return Some(MASK.load(Ordering::Relaxed));
    }
    let mask = read_ignored()?;
    MASK.store(mask, Ordering::Relaxed);
    READ_AT.store(now, Ordering::Release);
    Some(mask)
}

/// The signals this process ignores now, from `/proc/self/status`.
fn read_ignored() -> Option<u64> {
    static STATUS: OnceLock<Option<OwnedFd>> = OnceLock::new();
    let fd = STATUS
        .get_or_init(|| {
            let fd = rustix::fs::open(
                "/proc/self/status",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()?;
            Some(super::fd::move_high(fd, super::fd::high_floor()))
        })
        .as_ref()?;
    let mut buf = [0u8; 4096];
    let n = rustix::io::pread(fd.as_fd(), &mut buf, 0).ok()?;
    parse_sig_ign(buf.get(..n)?)
}

/// The `SigIgn:` line (64 bits in hex) of a `/proc/<pid>/status`; `None` if
/// it is missing or malformed.
fn parse_sig_ign(status: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\nSigIgn:";
    let at = status.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = status.get(at..)?;
    let line = rest.split(|&b| b == b'\n').next()?;
    let hex = std::str::from_utf8(line).ok()?.trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_child_resets_the_ignored_and_the_common_signals_but_not_the_specs() {
        let bit = |s: i32| 1u64 << (s - 1);
        let reset = to_reset(bit(libc::SIGPIPE) | bit(40), bit(libc::SIGTERM));
        for s in [libc::SIGPIPE, 40, libc::SIGINT, libc::SIGHUP, libc::SIGTSTP] {
            assert_ne!(reset & bit(s), 0, "signal {s} reset");
        }
        assert_eq!(reset & bit(libc::SIGTERM), 0, "the spec ignores SIGTERM");
        assert_eq!(reset & bit(41), 0, "signal 41 was not ignored");
        assert_eq!(reset & (bit(libc::SIGKILL) | bit(libc::SIGSTOP)), 0);
    }

    #[test]
    fn sig_ign_is_read_from_its_line_in_full_64_bits() {
        let status =
            b"Name:\tx\nSigBlk:\t0000000000000001\nSigIgn:\t8000000000001000\nSigCgt:\t0\n";
        assert_eq!(parse_sig_ign(status), Some(0x8000_0000_0000_1000));
        assert_eq!(parse_sig_ign(b"Name:\tx\nSigIgn:\tzz\n"), None);
        assert_eq!(parse_sig_ign(b"Name:\tx\n"), None);
    }

    #[test]
    fn ignored_signals_are_read_in_full() {
        // Rust ignores SIGPIPE in every program it starts.
        let mask = read_ignored().expect("/proc/self/status");
        assert_ne!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{mask:#x}");
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = own.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
        assert_eq!(format!("SigIgn:\t{mask:016x}"), line);
    }
}
