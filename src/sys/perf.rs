//! `perf_event_open`—the kernel's `struct perf_event_attr`, its constants, and the
//! calls the agent makes itself (the startup probe, reading counters).
//!
//! The `libc` crate has the syscall number but not the struct, so it is defined
//! here at `PERF_ATTR_SIZE_VER5` (112 bytes, Linux 4.1+); a newer kernel accepts a
//! smaller struct and treats the missing tail as zero.
//!
//! Children's counters are not opened here but in the vfork child on itself (see
//! `child.rs`, [`PerfPlan`]): each open lands in the fd table the child still
//! shares with the agent (`CLONE_FILES`), so the agent owns the fds when `clone`
//! returns, with no round trip between parent and child.
//!
//! # References
//! - [perf_event_open(2)](https://man7.org/linux/man-pages/man2/perf_event_open.2.html)
//! - `include/uapi/linux/perf_event.h`

use rustix::fd::{FromRawFd, OwnedFd, RawFd};
use rustix::io::Errno;

/// `PERF_TYPE_HARDWARE`.
pub const TYPE_HARDWARE: u32 = 0;
/// `PERF_TYPE_SOFTWARE`.
pub const TYPE_SOFTWARE: u32 = 1;

/// `PERF_COUNT_HW_CPU_CYCLES`.
pub const HW_CPU_CYCLES: u64 = 0;
/// `PERF_COUNT_HW_INSTRUCTIONS`.
pub const HW_INSTRUCTIONS: u64 = 1;
/// `PERF_COUNT_HW_CACHE_MISSES`.
pub const HW_CACHE_MISSES: u64 = 3;
/// `PERF_COUNT_HW_BRANCH_MISSES`.
pub const HW_BRANCH_MISSES: u64 = 5;

/// `PERF_COUNT_SW_TASK_CLOCK` (nanoseconds).
pub const SW_TASK_CLOCK: u64 = 1;
/// `PERF_COUNT_SW_PAGE_FAULTS`.
pub const SW_PAGE_FAULTS: u64 = 2;
/// `PERF_COUNT_SW_CONTEXT_SWITCHES`.
pub const SW_CONTEXT_SWITCHES: u64 = 3;
/// `PERF_COUNT_SW_CPU_MIGRATIONS`.
pub const SW_CPU_MIGRATIONS: u64 = 4;
/// `PERF_COUNT_SW_PAGE_FAULTS_MIN`.
pub const SW_PAGE_FAULTS_MIN: u64 = 5;
/// `PERF_COUNT_SW_PAGE_FAULTS_MAJ`.
pub const SW_PAGE_FAULTS_MAJ: u64 = 6;

/// `PERF_FORMAT_TOTAL_TIME_ENABLED`.
pub const FORMAT_TOTAL_TIME_ENABLED: u64 = 1 << 0;
/// `PERF_FORMAT_TOTAL_TIME_RUNNING`.
pub const FORMAT_TOTAL_TIME_RUNNING: u64 = 1 << 1;
/// `PERF_FORMAT_GROUP`.
pub const FORMAT_GROUP: u64 = 1 << 3;

/// `PERF_FLAG_FD_CLOEXEC`.
pub const FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// `PERF_ATTR_SIZE_VER5`.
pub const ATTR_SIZE_VER5: u32 = 112;

/// The bit of the attr's flag word for bitfield member `n` (`disabled` is 0).
/// C bitfields are allocated from the low bit on little-endian targets and from
/// the high bit on big-endian ones.
const fn flag(n: u32) -> u64 {
    if cfg!(target_endian = "big") {
        1 << (63 - n)
    } else {
        1 << n
    }
}

/// `disabled`: the counter starts off.
pub const FLAG_DISABLED: u64 = flag(0);
/// `inherit`: children created after the open are counted too.
pub const FLAG_INHERIT: u64 = flag(1);
/// `exclude_kernel`: count user space only.
pub const FLAG_EXCLUDE_KERNEL: u64 = flag(5);
/// `enable_on_exec`: the counter starts at the next `execve`.
pub const FLAG_ENABLE_ON_EXEC: u64 = flag(12);

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER5`. The kernel's unions are
/// flattened to the member chaperone uses; the bitfield word is [`Self::flags`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerfEventAttr {
    /// `PERF_TYPE_*`.
    pub type_: u32,
    /// `sizeof` the struct as the caller knows it.
    pub size: u32,
    /// The event within the type (`PERF_COUNT_*`).
    pub config: u64,
    /// `sample_period` / `sample_freq` (0: counting only).
    pub sample_period: u64,
    /// `sample_type`.
    pub sample_type: u64,
    /// `PERF_FORMAT_*`: what `read` returns.
    pub read_format: u64,
    /// The bitfield word (`FLAG_*`).
    pub flags: u64,
    /// `wakeup_events` / `wakeup_watermark`.
    pub wakeup_events: u32,
    /// `bp_type`.
    pub bp_type: u32,
    /// `config1` / `bp_addr`.
    pub config1: u64,
    /// `config2` / `bp_len`.
    pub config2: u64,
    /// `branch_sample_type`.
    pub branch_sample_type: u64,
    /// `sample_regs_user`.
    pub sample_regs_user: u64,
    /// `sample_stack_user`.
    pub sample_stack_user: u32,
    /// `clockid`.
    pub clockid: i32,
    /// `sample_regs_intr`.
    pub sample_regs_intr: u64,
    /// `aux_watermark`.
    pub aux_watermark: u32,
    /// `sample_max_stack`.
    pub sample_max_stack: u16,
    /// `__reserved_2`.
    pub reserved_2: u16,
}

const _: () = assert!(core::mem::size_of::<PerfEventAttr>() == ATTR_SIZE_VER5 as usize);

impl PerfEventAttr {
    /// A counting (not sampling) attr for event `config` of `type_`.
    pub fn counting(type_: u32, config: u64, read_format: u64, flags: u64) -> Self {
        PerfEventAttr {
            type_,
            size: ATTR_SIZE_VER5,
            config,
            read_format,
            flags,
            ..Default::default()
        }
    }
}

/// The bare `perf_event_open(attr, pid, cpu, group_fd, PERF_FLAG_FD_CLOEXEC)`
/// syscall: the new fd, or -1 with errno set. Raw enough for the vfork child
/// (no allocation, no locks), which reads errno itself.
pub(crate) fn open_raw(attr: &PerfEventAttr, pid: i32, cpu: i32, group: RawFd) -> libc::c_long {
    // SAFETY: `attr` is a valid `perf_event_attr` of `attr.size` bytes for the call.
    unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            pid,
            cpu,
            group,
            FLAG_FD_CLOEXEC,
        )
    }
}

/// `perf_event_open(attr, pid, cpu, group_fd, PERF_FLAG_FD_CLOEXEC)` in the agent.
///
/// # Errors
/// The kernel's: `ENOENT`/`EOPNOTSUPP`/`ENODEV` (no such event, e.g. no hardware
/// PMU), `EACCES`/`EPERM` (`perf_event_paranoid`), `EINVAL`, `EMFILE`, `ENOSYS`.
pub fn open(attr: &PerfEventAttr, pid: i32, cpu: i32, group: RawFd) -> Result<OwnedFd, Errno> {
    let rc = open_raw(attr, pid, cpu, group);
    if rc < 0 {
        return Err(super::last_errno());
    }
    let fd = RawFd::try_from(rc).map_err(|_| Errno::INVAL)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One counter the vfork child opens on itself: its attr and, for a group member,
/// the index of its leader in the same plan (`-1` for a leader).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerfEntry {
    /// The event.
    pub attr: PerfEventAttr,
    /// Index of the group leader's entry, or -1 if this entry leads its group.
    pub leader: i32,
}

/// The counters a child opens on itself before exec, and where it writes the fds.
///
/// The child writes each entry's fd, or `-errno`, into `out`; a failed open never
/// fails the spawn. `spawn` hands the fds to the caller as they were opened (low
/// numbers: the caller moves long-lived ones high, as it does the pidfd).
#[derive(Debug, Clone)]
pub struct PerfPlan {
    pub(crate) entries: Vec<PerfEntry>,
    pub(crate) out: Vec<i32>,
}

impl PerfPlan {
    /// A plan for `entries`.
    pub fn new(entries: Vec<PerfEntry>) -> Self {
        let out = vec![-libc::EBADF; entries.len()];
        PerfPlan { entries, out }
    }

    /// The entries, in open order.
    pub fn entries(&self) -> &[PerfEntry] {
        &self.entries
    }
}
