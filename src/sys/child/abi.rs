//! The vfork child's ABI: what the parent (`spawn.rs`) hands the child through
//! `clone` and what the child writes back.
//!
//! [`ChildArgs`] points to a [`ChildPlanView`] (the plan as raw pointers and
//! lengths, with the [`FdAction`]s and [`RlimitEntry`]s the child applies) and to a
//! [`ChildReport`] in the parent's stack frame, where a failing child records the
//! [`Stage`] that failed. Both sides read these definitions from this one file;
//! the child's no-panic lints (`child.rs`) apply here too.

use crate::sys::perf::PerfEntry;
use core::ffi::c_char;
use rustix::fd::RawFd;

/// A step of the child's setup, reported with the errno when it fails.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// No failure.
    None = 0,
    /// `setsid()`.
    Setsid = 1,
    /// `close_range()` of inherited fds.
    CloseRange = 2,
    /// `dup3()` of a source onto a target fd.
    DupFd = 3,
    /// `close()` of a target fd.
    CloseFd = 4,
    /// `rt_sigprocmask()`.
    SignalMask = 5,
    /// `execve()`.
    Exec = 6,
    /// `setpgid(0, pgid)` for `process_group`.
    Setpgid = 7,
    /// `prctl(PR_SET_PDEATHSIG)`, or the agent was already gone (`ESRCH`).
    PdeathSig = 8,
    /// `chdir()` to the spec's `cwd`.
    Chdir = 9,
    /// `prlimit64()`; the report's fd field holds the resource number.
    Rlimit = 10,
    /// `setgroups()`.
    SetGroups = 11,
    /// `setgid()`.
    SetGid = 12,
    /// `setuid()`.
    SetUser = 13,
}

impl Stage {
    /// The stage a [`ChildReport`]'s `stage` field names; [`Stage::None`] for an
    /// unknown value.
    pub(crate) fn from_raw(raw: u32) -> Stage {
        match raw {
            1 => Stage::Setsid,
            2 => Stage::CloseRange,
            3 => Stage::DupFd,
            4 => Stage::CloseFd,
            5 => Stage::SignalMask,
            6 => Stage::Exec,
            7 => Stage::Setpgid,
            8 => Stage::PdeathSig,
            9 => Stage::Chdir,
            10 => Stage::Rlimit,
            11 => Stage::SetGroups,
            12 => Stage::SetGid,
            13 => Stage::SetUser,
            _ => Stage::None,
        }
    }

    /// A short lower-case name for results and logs (`"exec"`, `"dup_fd"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Stage::None => "none",
            Stage::Setsid => "setsid",
            Stage::CloseRange => "close_range",
            Stage::DupFd => "dup_fd",
            Stage::CloseFd => "close_fd",
            Stage::SignalMask => "signal_mask",
            Stage::Exec => "exec",
            Stage::Setpgid => "setpgid",
            Stage::PdeathSig => "pdeath_sig",
            Stage::Chdir => "chdir",
            Stage::Rlimit => "rlimit",
            Stage::SetGroups => "setgroups",
            Stage::SetGid => "setgid",
            Stage::SetUser => "setuid",
        }
    }
}

/// One step of the child's fd plan, applied in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdAction {
    /// `dup3(src, dst, 0)`: install `src` (an fd of the parent) as `dst`.
    Dup {
        /// Source fd, above every target.
        src: RawFd,
        /// Target fd number in the child.
        dst: RawFd,
    },
    /// `close(fd)` in the child (only meaningful for fds 0–2; others are closed anyway).
    Close {
        /// The fd to close.
        fd: RawFd,
    },
}

/// One `prlimit64` call of the child.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RlimitEntry {
    /// `RLIMIT_*`.
    pub(crate) resource: u32,
    /// `struct rlimit64`: soft, hard.
    pub(crate) limit: [u64; 2],
}

/// Where in its setup the child failed, written into the parent's memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChildReport {
    /// `Stage as u32`, or 0 when the child did not fail.
    pub stage: u32,
    /// The fd the failing step worked on, or -1.
    pub fd: i32,
    /// The errno of the failing syscall.
    pub errno: i32,
}

/// The arguments passed through `clone` to the child.
pub(crate) struct ChildArgs {
    pub(crate) plan: *const ChildPlanView,
    pub(crate) report: *mut ChildReport,
}

/// Every signal whose disposition can be set: all 64 but `SIGKILL` and
/// `SIGSTOP` (kernel layout: bit n-1 is signal n).
pub(crate) const CATCHABLE: u64 = !((1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1)));

/// The parts of a plan the child reads, with the fd actions as a slice.
#[derive(Debug)]
pub(crate) struct ChildPlanView {
    pub(crate) exe: *const c_char,
    pub(crate) argv: *const *const c_char,
    pub(crate) envp: *const *const c_char,
    pub(crate) fd_actions: *const FdAction,
    pub(crate) fd_actions_len: usize,
    pub(crate) setsid: bool,
    /// `setpgid(0, pgid)` when `>= 0`.
    pub(crate) pgid: i32,
    pub(crate) sigmask: u64,
    /// Signals set to `SIG_IGN`.
    pub(crate) ignore: u64,
    /// Signals set to `SIG_DFL` (those not in `ignore`): every one, or, when
    /// the kernel has cleared the handlers (`CLONE_CLEAR_SIGHAND`), those the
    /// agent ignores.
    pub(crate) reset: u64,
    /// The umask, or -1 to keep the agent's.
    pub(crate) umask: i32,
    /// `PR_SET_PDEATHSIG` signal, or 0 for none.
    pub(crate) pdeath_sig: i32,
    /// The agent's pid, which `getppid()` must return after `pdeath_sig` is set.
    pub(crate) agent_pid: i32,
    /// NUL-terminated directory, or null to stay in the agent's.
    pub(crate) cwd: *const c_char,
    pub(crate) rlimits: *const RlimitEntry,
    pub(crate) rlimits_len: usize,
    /// Whether to switch credentials (setgroups, setgid, then setuid if `uid >= 0`).
    pub(crate) set_creds: bool,
    pub(crate) uid: i64,
    pub(crate) gid: u32,
    pub(crate) groups: *const u32,
    pub(crate) groups_len: usize,
    /// One past the highest fd the child keeps (targets, sources, 0–2).
    pub(crate) fd_window: u32,
    /// perf counters to open, and `perf_len` result slots (fd or `-errno`).
    pub(crate) perf: *const PerfEntry,
    pub(crate) perf_out: *mut i32,
    pub(crate) perf_len: usize,
}

impl ChildPlanView {
    pub(crate) fn fd_actions(&self) -> &[FdAction] {
        if self.fd_actions_len == 0 {
            return &[];
        }
        // SAFETY: the pointer and length come from a live `Vec<FdAction>` in the plan
        // that outlives the child's use of this view (the parent is suspended).
        unsafe { core::slice::from_raw_parts(self.fd_actions, self.fd_actions_len) }
    }

    pub(crate) fn rlimits(&self) -> &[RlimitEntry] {
        if self.rlimits_len == 0 {
            return &[];
        }
        // SAFETY: the pointer and length come from a live `Vec<RlimitEntry>` in the
        // plan that outlives the child's use of this view (the parent is suspended).
        unsafe { core::slice::from_raw_parts(self.rlimits, self.rlimits_len) }
    }

    pub(crate) fn perf_entries(&self) -> &[PerfEntry] {
        if self.perf_len == 0 {
            return &[];
        }
        // SAFETY: the pointer and length come from a live `Vec<PerfEntry>` in the
        // plan that outlives the child's use of this view (the parent is suspended).
        unsafe { core::slice::from_raw_parts(self.perf, self.perf_len) }
    }

    /// The fd (or `-errno`) written for perf entry `i`; `-EBADF` out of range.
    pub(crate) fn perf_result(&self, i: usize) -> i32 {
        if i >= self.perf_len {
            return -libc::EBADF;
        }
        // SAFETY: `perf_out` points to `perf_len` i32s in the plan (see `perf_entries`)
        // and `i` is in range.
        unsafe { core::ptr::read_volatile(self.perf_out.wrapping_add(i)) }
    }

    /// Records the fd (or `-errno`) of perf entry `i`; ignored out of range.
    pub(crate) fn set_perf_result(&self, i: usize, value: i32) {
        if i >= self.perf_len {
            return;
        }
        // SAFETY: as in `perf_result`; only the child writes here, while the parent
        // is suspended and holds no reference into the slots.
        unsafe { core::ptr::write_volatile(self.perf_out.wrapping_add(i), value) };
    }
}
