//! Per-process perf counters: event names, the agent's startup probe, the
//! counters a child opens, and reading them into the result.
//!
//! A proc asks for counters with `"perf": true` (every event) or a list of event
//! names (the spec's `PerfSpec`, a [`Selection`]); `Config::perf` (`--perf`) is
//! the default for specs that say nothing ([`requested`]).
//! The vfork child opens the counters on itself before exec (`sys/child.rs`):
//! one group of software events and, apart, one group of hardware events, so a
//! hardware group the PMU cannot schedule never stops the software counts. Each
//! group leader is `disabled` + `enable_on_exec`, every counter `inherit`: the
//! count runs from the program's first instruction and includes its children.
//! The agent reads them while the process runs (live results) and once more at
//! exit, before the reap, then closes them.
//!
//! At startup (lazily, once) the agent opens every event on itself to learn what
//! the machine allows ([`probe`]): hardware events need a PMU (a VM often has
//! none), and with `perf_event_paranoid` ≥ 2 and no `CAP_PERFMON` the kernel
//! allows only `exclude_kernel` counters. The decision logic ([`probe_with`]) takes
//! the open function as an argument, so it is tested without the kernel.
//!
//! # References
//! - [perf_event_open(2)](https://man7.org/linux/man-pages/man2/perf_event_open.2.html)
//! - `kernel/events/core.c`: `perf_read_group` sums inherited children's counts.

use crate::sys::perf::{self as sys, PerfEntry, PerfEventAttr, PerfPlan};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A counter chaperone can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// CPU time of the task, nanoseconds (`PERF_COUNT_SW_TASK_CLOCK`).
    TaskClock,
    /// Page faults, minor and major.
    PageFaults,
    /// Minor page faults.
    MinorFaults,
    /// Major page faults.
    MajorFaults,
    /// Context switches.
    ContextSwitches,
    /// Migrations between CPUs.
    CpuMigrations,
    /// CPU cycles (hardware).
    Cycles,
    /// Instructions retired (hardware).
    Instructions,
    /// Last-level cache misses (hardware).
    CacheMisses,
    /// Mispredicted branches (hardware).
    BranchMisses,
}

/// Every event, software first, in the order the child opens them.
pub const ALL: [Event; 10] = [
    Event::TaskClock,
    Event::PageFaults,
    Event::MinorFaults,
    Event::MajorFaults,
    Event::ContextSwitches,
    Event::CpuMigrations,
    Event::Cycles,
    Event::Instructions,
    Event::CacheMisses,
    Event::BranchMisses,
];

impl Event {
    /// The event's key in specs and results (`"task_clock"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Event::TaskClock => "task_clock",
            Event::PageFaults => "page_faults",
            Event::MinorFaults => "minor_faults",
            Event::MajorFaults => "major_faults",
            Event::ContextSwitches => "context_switches",
            Event::CpuMigrations => "cpu_migrations",
            Event::Cycles => "cycles",
            Event::Instructions => "instructions",
            Event::CacheMisses => "cache_misses",
            Event::BranchMisses => "branch_misses",
        }
    }

    /// The event named `name`, if any.
    pub fn from_name(name: &str) -> Option<Event> {
        ALL.iter().copied().find(|e| e.name() == name)
    }

    /// Whether the event needs a hardware PMU.
    pub fn is_hardware(self) -> bool {
        matches!(
            self,
            Event::Cycles | Event::Instructions | Event::CacheMisses | Event::BranchMisses
        )
    }

    /// Whether the kernel counts the event only in kernel mode, so that with
    /// `exclude_kernel` it would always read 0 (the scheduler's events).
    fn kernel_only(self) -> bool {
        matches!(self, Event::ContextSwitches | Event::CpuMigrations)
    }

    /// `(type, config)` for `perf_event_attr`.
    fn type_config(self) -> (u32, u64) {
        match self {
            Event::TaskClock => (sys::TYPE_SOFTWARE, sys::SW_TASK_CLOCK),
            Event::PageFaults => (sys::TYPE_SOFTWARE, sys::SW_PAGE_FAULTS),
            Event::MinorFaults => (sys::TYPE_SOFTWARE, sys::SW_PAGE_FAULTS_MIN),
            Event::MajorFaults => (sys::TYPE_SOFTWARE, sys::SW_PAGE_FAULTS_MAJ),
            Event::ContextSwitches => (sys::TYPE_SOFTWARE, sys::SW_CONTEXT_SWITCHES),
            Event::CpuMigrations => (sys::TYPE_SOFTWARE, sys::SW_CPU_MIGRATIONS),
            Event::Cycles => (sys::TYPE_HARDWARE, sys::HW_CPU_CYCLES),
            Event::Instructions => (sys::TYPE_HARDWARE, sys::HW_INSTRUCTIONS),
            Event::CacheMisses => (sys::TYPE_HARDWARE, sys::HW_CACHE_MISSES),
            Event::BranchMisses => (sys::TYPE_HARDWARE, sys::HW_BRANCH_MISSES),
        }
    }
}

/// Every event name, comma-separated (for error messages).
pub fn known_names() -> String {
    ALL.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
}

/// Which events a proc asked for, as its spec says it (the spec's `PerfSpec`
/// implements this, so the choice is made where the spec is, not here).
pub trait Selection {
    /// The chosen events, in [`ALL`] order, without repeats; unknown names
    /// (which validation rejects) are skipped.
    fn events(&self) -> Vec<Event>;
}

/// The events a proc counts: its spec's `perf`, else the agent's default (every
/// event when `default` is true). In [`ALL`] order, without repeats; unknown
/// names (which validation rejects) are skipped.
pub fn requested<S: Selection + ?Sized>(spec: Option<&S>, default: bool) -> Vec<Event> {
    match spec {
        None => {
            if default {
                ALL.to_vec()
            } else {
                Vec::new()
            }
        }
        Some(selection) => selection.events(),
    }
}

//------------------------------------------------------------------------------
// The probe
//------------------------------------------------------------------------------

/// What the agent may count for one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// User and kernel mode.
    Full,
    /// User mode only: the kernel demands `exclude_kernel`.
    UserOnly,
    /// Not at all, and why.
    Unavailable(String),
}

/// What the agent learned by opening every event on itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Per event of [`ALL`], in order.
    pub access: Vec<(Event, Access)>,
    /// Whether one read of a group leader returns the whole group
    /// (`PERF_FORMAT_GROUP` with `inherit`); otherwise each counter is read alone.
    pub group_read: bool,
}

impl Probe {
    /// The access for `event`.
    pub fn access(&self, event: Event) -> Access {
        self.access.iter().find(|(e, _)| *e == event).map_or_else(
            || Access::Unavailable("not probed".into()),
            |(_, a)| a.clone(),
        )
    }
}

const FORMAT_TIMES: u64 = sys::FORMAT_TOTAL_TIME_ENABLED | sys::FORMAT_TOTAL_TIME_RUNNING;

fn read_format(group_read: bool) -> u64 {
    if group_read {
        FORMAT_TIMES | sys::FORMAT_GROUP
    } else {
        FORMAT_TIMES
    }
}

/// Decides what may be counted, calling `open` (a `perf_event_open` on the agent
/// itself that closes what it opened) with the attrs a child would use.
///
/// * `EACCES`/`EPERM` without `exclude_kernel` but success with it: user-only
///   (except for the scheduler's events, which count only in the kernel and are
///   then unavailable);
/// * `EINVAL` for the group read format with `inherit`, but success without it
///   (with or without `exclude_kernel`): counters are read one by one;
/// * any other error: unavailable, with the errno in the reason (`ENOENT` for a
///   hardware event means no PMU).
pub fn probe_with(mut open: impl FnMut(&PerfEventAttr) -> Result<(), Errno>) -> Probe {
    let attr = |e: Event, group_read: bool, flags: u64| {
        let (type_, config) = e.type_config();
        PerfEventAttr::counting(
            type_,
            config,
            read_format(group_read),
            sys::FLAG_DISABLED | sys::FLAG_INHERIT | flags,
        )
    };
    let mut group_read = true;
    // Opens `event` with `flags`; a kernel that refuses the group read format
    // with `inherit` (EINVAL) but takes the single one turns group reads off,
    // whichever flags the open needed.
    let mut try_open = |event: Event, flags: u64, group_read: &mut bool| match open(&attr(
        event,
        *group_read,
        flags,
    )) {
        Err(Errno::INVAL) if *group_read && open(&attr(event, false, flags)).is_ok() => {
            *group_read = false;
            Ok(())
        }
        r => r,
    };
    let mut access = Vec::with_capacity(ALL.len());
    for &event in ALL.iter() {
        let a = match try_open(event, 0, &mut group_read) {
            Ok(()) => Access::Full,
            Err(e) if e == Errno::ACCESS || e == Errno::PERM => {
                match try_open(event, sys::FLAG_EXCLUDE_KERNEL, &mut group_read) {
                    Ok(()) if event.kernel_only() => Access::Unavailable(format!(
                        "counted only in the kernel, and the kernel allows only user-space \
                         counting ({}: perf_event_paranoid, no CAP_PERFMON)",
                        errno_name(e)
                    )),
                    Ok(()) => Access::UserOnly,
                    Err(e) => Access::Unavailable(reason(event, e)),
                }
            }
            Err(e) => Access::Unavailable(reason(event, e)),
        };
        access.push((event, a));
    }
    Probe { access, group_read }
}

/// Why `event` cannot be opened, from the errno.
fn reason(event: Event, e: Errno) -> String {
    let name = errno_name(e);
    if e == Errno::NOENT || e == Errno::OPNOTSUPP || e == Errno::NODEV {
        if event.is_hardware() {
            format!("no hardware PMU ({name})")
        } else {
            format!("not supported by the kernel ({name})")
        }
    } else if e == Errno::ACCESS || e == Errno::PERM {
        format!("not permitted ({name}: perf_event_paranoid, no CAP_PERFMON)")
    } else if e == Errno::NOSYS {
        format!("perf_event_open is not available ({name})")
    } else {
        format!("perf_event_open failed ({name})")
    }
}

/// The symbolic name of the errnos perf_event_open gives (`"ENOENT"`), else the number.
pub fn errno_name(e: Errno) -> String {
    let n = e.raw_os_error();
    let name = match n {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EBADF => "EBADF",
        libc::E2BIG => "E2BIG",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESRCH => "ESRCH",
        libc::ENOMEM => "ENOMEM",
        _ => return format!("errno {n}"),
    };
    name.to_string()
}

/// The agent's probe, made on first use and logged once.
///
/// It also leaves one disabled counter of every available event open on the
/// agent for the agent's lifetime (see `hold_events`).
pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<(Probe, Vec<OwnedFd>)> = OnceLock::new();
    let (p, _held) = PROBE.get_or_init(|| {
        let p = probe_with(|attr| sys::open(attr, 0, -1, -1).map(drop));
        log_probe(&p);
        let held = hold_events(&p);
        (p, held)
    });
    p
}

/// Opens a disabled, non-inherited counter of each available event on the
/// calling thread, to keep open for good.
///
/// The kernel turns its perf hooks on and off with static keys (one per
/// software event, one for task contexts) counted by the events that exist;
/// going from 0 to 1 and back patches kernel text. Without a holder, a spawn
/// whose counters are the only ones alive pays that twice per event: measured
/// ~0.4 ms for six software counters (open + close) against ~0.03 ms with the
/// keys held. A disabled counter counts nothing and is not inherited by children.
fn hold_events(p: &Probe) -> Vec<OwnedFd> {
    let floor = crate::sys::fd::high_floor();
    p.access
        .iter()
        .filter_map(|(event, access)| {
            let flags = match access {
                Access::Full => sys::FLAG_DISABLED,
                Access::UserOnly => sys::FLAG_DISABLED | sys::FLAG_EXCLUDE_KERNEL,
                Access::Unavailable(_) => return None,
            };
            let (type_, config) = event.type_config();
            let attr = PerfEventAttr::counting(type_, config, 0, flags);
            let fd = sys::open(&attr, 0, -1, -1).ok()?;
            Some(crate::sys::fd::move_high(fd, floor))
        })
        .collect()
}

fn log_probe(p: &Probe) {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let mut hw_reasons: Vec<&str> = Vec::new();
    for (event, access) in &p.access {
        match access {
            Access::Full => {}
            Access::UserOnly => tracing::warn!(
                event = event.name(),
                perf_event_paranoid = %paranoid,
                "perf: counting user space only (exclude_kernel): EACCES without it"
            ),
            Access::Unavailable(why) if event.is_hardware() => {
                if !hw_reasons.contains(&why.as_str()) {
                    hw_reasons.push(why);
                }
            }
            Access::Unavailable(why) => tracing::warn!(
                event = event.name(),
                perf_event_paranoid = %paranoid,
                "perf: event unavailable: {why}"
            ),
        }
    }
    if !hw_reasons.is_empty() {
        tracing::info!(
            "perf: hardware events (cycles, instructions, cache_misses, branch_misses) \
             unavailable, reported as null: {}",
            hw_reasons.join("; ")
        );
    }
    if !p.group_read {
        tracing::info!(
            "perf: group reads with inherit unsupported (EINVAL); reading counters one by one"
        );
    }
}

//------------------------------------------------------------------------------
// Setup: which counters a child opens
//------------------------------------------------------------------------------

/// The counters of one proc, decided in the agent before its spawn.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Every requested event, in [`ALL`] order.
    requested: Vec<Event>,
    /// Groups (software, then hardware), each a list of events, leader first.
    groups: Vec<Vec<Event>>,
    /// Requested events left out, and why.
    unavailable: BTreeMap<Event, String>,
    /// Events counted in user space only.
    user_only: Vec<Event>,
    group_read: bool,
}

impl Setup {
    /// The counters for `requested` events given what `probe` found (no groups
    /// when nothing is requested; callers skip the probe then).
    pub fn new(requested: &[Event], probe: &Probe) -> Setup {
        let mut setup = Setup {
            requested: requested.to_vec(),
            groups: Vec::new(),
            unavailable: BTreeMap::new(),
            user_only: Vec::new(),
            group_read: probe.group_read,
        };
        let mut software = Vec::new();
        let mut hardware = Vec::new();
        for &event in requested {
            match probe.access(event) {
                Access::Unavailable(why) => {
                    setup.unavailable.insert(event, why);
                    continue;
                }
                Access::UserOnly => setup.user_only.push(event),
                Access::Full => {}
            }
            if event.is_hardware() {
                hardware.push(event);
            } else {
                software.push(event);
            }
        }
        setup.groups = [software, hardware]
            .into_iter()
            .filter(|g| !g.is_empty())
            .collect();
        setup
    }

    /// The plan entries for the child, group by group, leader first: the leader
    /// `disabled` + `enable_on_exec`, every counter `inherit`, `exclude_kernel`
    /// only where the probe found it required.
    pub fn plan(&self) -> PerfPlan {
        let mut entries = Vec::new();
        for group in &self.groups {
            let leader_index = i32::try_from(entries.len()).unwrap_or(-1);
            for (i, &event) in group.iter().enumerate() {
                let (type_, config) = event.type_config();
                let mut flags = sys::FLAG_INHERIT;
                if i == 0 {
                    flags |= sys::FLAG_DISABLED | sys::FLAG_ENABLE_ON_EXEC;
                }
                if self.user_only.contains(&event) {
                    flags |= sys::FLAG_EXCLUDE_KERNEL;
                }
                entries.push(PerfEntry {
                    attr: PerfEventAttr::counting(
                        type_,
                        config,
                        read_format(self.group_read),
                        flags,
                    ),
                    leader: if i == 0 { -1 } else { leader_index },
                });
            }
        }
        PerfPlan::new(entries)
    }
}

//------------------------------------------------------------------------------
// The result
//------------------------------------------------------------------------------

/// Extension: a process's perf counters, the `perf` field of its result.
///
/// One key per requested event (`"task_clock"` in ns, `"page_faults"`, …), `null`
/// when it could not be counted, plus the keys below.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerfRes {
    /// Event name → count (`null`: not counted; see `unavailable`).
    #[serde(flatten)]
    pub counts: BTreeMap<String, Option<u64>>,
    /// Events counted in user space only, because the kernel demanded
    /// `exclude_kernel` (`perf_event_paranoid` without `CAP_PERFMON`).
    #[serde(default)]
    pub exclude_kernel: Vec<String>,
    /// Event name → why its count is `null`.
    #[serde(default)]
    pub unavailable: BTreeMap<String, String>,
    /// Events whose counters were multiplexed: the fraction of the time they ran.
    /// Their counts are extrapolated (`raw × time_enabled / time_running`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scaled: BTreeMap<String, f64>,
}

//------------------------------------------------------------------------------
// Reading
//------------------------------------------------------------------------------

/// One read of a group (or of a single counter): the times and the raw values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Nanoseconds the counters were enabled.
    pub time_enabled: u64,
    /// Nanoseconds they were actually counting (less when multiplexed).
    pub time_running: u64,
    /// One raw value per counter, leader first.
    pub values: Vec<u64>,
}

/// Why a read buffer does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Shorter than its layout says.
    #[error("perf read buffer too short: {0} bytes")]
    Short(usize),
    /// The group holds a different number of counters than opened.
    #[error("perf group has {got} counters, expected {want}")]
    Count {
        /// In the buffer.
        got: u64,
        /// Opened.
        want: usize,
    },
}

fn u64_at(buf: &[u8], i: usize) -> Option<u64> {
    let bytes = buf.get(i * 8..i * 8 + 8)?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

/// Parses what `read` returned for a counter opened with
/// `TOTAL_TIME_ENABLED | TOTAL_TIME_RUNNING`, and with `group`, `PERF_FORMAT_GROUP`
/// on a leader of `n` counters:
///
/// * group: `nr, time_enabled, time_running, value[nr]`;
/// * single: `value, time_enabled, time_running`.
pub fn parse_read(buf: &[u8], group: bool, n: usize) -> Result<Reading, ReadError> {
    let short = || ReadError::Short(buf.len());
    if group {
        let nr = u64_at(buf, 0).ok_or_else(short)?;
        if usize::try_from(nr).ok() != Some(n) {
            return Err(ReadError::Count { got: nr, want: n });
        }
        let values = (0..n)
            .map(|i| u64_at(buf, 3 + i).ok_or_else(short))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Reading {
            time_enabled: u64_at(buf, 1).ok_or_else(short)?,
            time_running: u64_at(buf, 2).ok_or_else(short)?,
            values,
        })
    } else {
        Ok(Reading {
            values: vec![u64_at(buf, 0).ok_or_else(short)?],
            time_enabled: u64_at(buf, 1).ok_or_else(short)?,
            time_running: u64_at(buf, 2).ok_or_else(short)?,
        })
    }
}

/// Puts the values of one reading of `events` into `res`: scaled by
/// `time_enabled / time_running` when the counters were multiplexed (and the
/// fraction recorded in `res.scaled`), `null` when they never ran although enabled.
pub fn apply_reading(events: &[Event], reading: &Reading, res: &mut PerfRes) {
    let (enabled, running) = (reading.time_enabled, reading.time_running);
    for (&event, &raw) in events.iter().zip(&reading.values) {
        let name = event.name().to_string();
        if running == 0 && enabled > 0 {
            res.counts.insert(name.clone(), None);
            res.unavailable.insert(
                name,
                "never scheduled on a counter (time_running 0): the PMU was busy".into(),
            );
        } else if running < enabled {
            let scaled = u128::from(raw) * u128::from(enabled) / u128::from(running);
            res.counts.insert(
                name.clone(),
                Some(u64::try_from(scaled).unwrap_or(u64::MAX)),
            );
            res.scaled.insert(name, running as f64 / enabled as f64);
        } else {
            res.counts.insert(name, Some(raw));
        }
    }
}

/// The counters of a proc through its life.
#[derive(Debug)]
pub enum PerfState {
    /// Decided, not yet opened (the proc is being spawned).
    Pending(Setup),
    /// Open: the fds per plan entry, or why each did not open.
    Live {
        /// What was asked for.
        setup: Setup,
        /// One per plan entry, group by group.
        fds: Vec<Result<OwnedFd, Errno>>,
    },
    /// Read at exit; the fds are closed.
    Done(PerfRes),
}

impl PerfState {
    /// Takes the fds the child opened (from `Spawned::perf`).
    pub fn attach(&mut self, fds: Vec<Result<OwnedFd, Errno>>) {
        if let PerfState::Pending(setup) = self {
            let setup = setup.clone();
            *self = PerfState::Live { setup, fds };
        }
    }

    /// The counts now: read from the counters while they are open.
    pub fn result(&self) -> PerfRes {
        match self {
            PerfState::Pending(setup) => {
                all_null(setup, "no counters: the process has not started")
            }
            PerfState::Live { setup, fds } => read_counters(setup, fds),
            PerfState::Done(res) => res.clone(),
        }
    }

    /// The child failed before exec, so its counters never ran (they are
    /// enabled by the exec): closes them and reports every count as null, with
    /// `why`, rather than as zeros.
    pub fn never_ran(&mut self, why: &str) {
        let setup = match self {
            PerfState::Pending(setup) | PerfState::Live { setup, .. } => setup.clone(),
            PerfState::Done(_) => return,
        };
        *self = PerfState::Done(all_null(&setup, why));
    }

    /// Reads the final counts and hands back the counters' fds for the caller
    /// to close: closing an inherited counter tears down its per-task copies
    /// (some 5 µs each here), which a caller may rather spend off its thread.
    #[must_use = "the counters' fds close when the returned Vec is dropped"]
    pub fn finish(&mut self) -> Vec<OwnedFd> {
        if matches!(self, PerfState::Done(_)) {
            return Vec::new();
        }
        let res = self.result();
        match std::mem::replace(self, PerfState::Done(res)) {
            PerfState::Live { fds, .. } => fds.into_iter().filter_map(Result::ok).collect(),
            _ => Vec::new(),
        }
    }
}

/// A result with no counts: every requested event `null`, with the setup's own
/// reason where it has one, else `why`.
fn all_null(setup: &Setup, why: &str) -> PerfRes {
    let mut res = base_res(setup);
    for &e in &setup.requested {
        res.unavailable
            .entry(e.name().to_string())
            .or_insert_with(|| why.to_string());
    }
    res
}

/// A result with every requested event `null` and the setup's limits filled in.
fn base_res(setup: &Setup) -> PerfRes {
    let mut res = PerfRes::default();
    for &e in &setup.requested {
        res.counts.insert(e.name().to_string(), None);
    }
    for (e, why) in &setup.unavailable {
        res.unavailable.insert(e.name().to_string(), why.clone());
    }
    res.exclude_kernel = setup
        .user_only
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    res
}

fn read_counters(setup: &Setup, fds: &[Result<OwnedFd, Errno>]) -> PerfRes {
    let mut res = base_res(setup);
    let mut slots = fds.iter();
    let mut buf = [0u8; 8 * (3 + ALL.len())];
    for group in &setup.groups {
        let group_fds: Vec<&Result<OwnedFd, Errno>> = slots.by_ref().take(group.len()).collect();
        let mut unavailable = |events: &[Event], why: String| {
            for e in events {
                res.unavailable.insert(e.name().to_string(), why.clone());
            }
        };
        if setup.group_read {
            // A member that failed to open is not in the group: the leader's
            // read covers the members that opened, in order; the others say
            // why they did not.
            let mut opened = Vec::with_capacity(group.len());
            for (i, &event) in group.iter().enumerate() {
                match group_fds.get(i) {
                    Some(Ok(_)) => opened.push(event),
                    Some(Err(e)) => unavailable(&[event], open_failed(*e)),
                    None => unavailable(&[event], "not opened".into()),
                }
            }
            // Without a leader there is no group: every member already says why.
            if let Some(Ok(leader)) = group_fds.first() {
                match read_into(leader, &mut buf).and_then(|n| {
                    parse_read(buf.get(..n).unwrap_or(&[]), true, opened.len())
                        .map_err(|e| e.to_string())
                }) {
                    Ok(reading) => apply_reading(&opened, &reading, &mut res),
                    Err(why) => unavailable(&opened, why),
                }
            }
            continue;
        }
        for (i, &event) in group.iter().enumerate() {
            let outcome = match group_fds.get(i) {
                Some(Ok(fd)) => read_into(fd, &mut buf).and_then(|n| {
                    parse_read(buf.get(..n).unwrap_or(&[]), false, 1).map_err(|e| e.to_string())
                }),
                Some(Err(e)) => Err(open_failed(*e)),
                None => Err("not opened".into()),
            };
            match outcome {
                Ok(reading) => apply_reading(&[event], &reading, &mut res),
                Err(why) => {
                    res.unavailable.insert(event.name().to_string(), why);
                }
            }
        }
    }
    res
}

fn open_failed(e: Errno) -> String {
    format!("perf_event_open failed in the child ({})", errno_name(e))
}

fn read_into(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, String> {
    rustix::io::retry_on_intr(|| rustix::io::read(fd, &mut *buf))
        .map_err(|e| format!("reading the counter failed ({})", errno_name(e)))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn words(ws: &[u64]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    // A member that failed to open does not blank its group: the leader's read
    // covers the members that opened, and the failed one says why. Real software
    // counters on this thread (enabled at once, not on exec).
    #[test]
    fn failed_group_member_leaves_the_others_counted() {
        let group = vec![Event::TaskClock, Event::PageFaults, Event::ContextSwitches];
        let setup = Setup {
            requested: group.clone(),
            groups: vec![group],
            unavailable: BTreeMap::new(),
            user_only: Vec::new(),
            group_read: true,
        };
        // Counting now (not disabled until exec), user space only (allowed at
        // any perf_event_paranoid level).
        let counting = |e: Event| {
            let (t, c) = e.type_config();
            PerfEventAttr::counting(t, c, read_format(true), sys::FLAG_EXCLUDE_KERNEL)
        };
        let leader = match sys::open(&counting(Event::TaskClock), 0, -1, -1) {
            Ok(fd) => fd,
            Err(e) => {
                crate::test_skip(
                    "metrics::perf group read",
                    &format!("cannot open a software perf counter ({e:?})"),
                    false,
                );
                return;
            }
        };
        let member = sys::open(
            &counting(Event::ContextSwitches),
            0,
            -1,
            std::os::fd::AsRawFd::as_raw_fd(&leader),
        );
        let member = match member {
            Ok(fd) => fd,
            Err(e) => {
                crate::test_skip(
                    "metrics::perf group read",
                    &format!("cannot open a group member ({e:?})"),
                    false,
                );
                return;
            }
        };
        let _work: u64 = (0..1_000_000u64).map(std::hint::black_box).sum();
        let fds = vec![Ok(leader), Err(Errno::MFILE), Ok(member)];
        let res = read_counters(&setup, &fds);
        assert!(
            res.counts
                .get("task_clock")
                .copied()
                .flatten()
                .is_some_and(|v| v > 0),
            "{res:?}"
        );
        assert!(
            res.counts
                .get("context_switches")
                .copied()
                .flatten()
                .is_some(),
            "{res:?}"
        );
        assert_eq!(res.counts.get("page_faults"), Some(&None), "{res:?}");
        assert!(
            res.unavailable
                .get("page_faults")
                .is_some_and(|w| w.contains("EMFILE")),
            "{res:?}"
        );
    }

    #[test]
    fn event_names_round_trip() {
        for e in ALL {
            assert_eq!(Event::from_name(e.name()), Some(e));
        }
        assert_eq!(Event::from_name("cycle"), None);
    }

    #[test]
    fn probe_without_pmu_marks_hardware_unavailable() {
        let p = probe_with(|a| {
            if a.type_ == sys::TYPE_HARDWARE {
                Err(Errno::NOENT)
            } else {
                Ok(())
            }
        });
        assert!(p.group_read);
        assert_eq!(p.access(Event::TaskClock), Access::Full);
        assert_eq!(
            p.access(Event::Cycles),
            Access::Unavailable("no hardware PMU (ENOENT)".into())
        );
    }

    #[test]
    fn probe_under_paranoid_uses_exclude_kernel_only_when_needed() {
        let mut calls = Vec::new();
        let p = probe_with(|a| {
            calls.push(a.flags & sys::FLAG_EXCLUDE_KERNEL != 0);
            if a.flags & sys::FLAG_EXCLUDE_KERNEL == 0 {
                Err(Errno::ACCESS)
            } else {
                Ok(())
            }
        });
        // Every event is tried first without exclude_kernel.
        assert_eq!(calls.iter().filter(|k| !**k).count(), ALL.len());
        assert_eq!(p.access(Event::TaskClock), Access::UserOnly);
        assert_eq!(p.access(Event::Cycles), Access::UserOnly);
        let Access::Unavailable(why) = p.access(Event::ContextSwitches) else {
            panic!("context switches count only in the kernel");
        };
        assert!(why.contains("EACCES"), "{why}");
        // Allowed: no exclude_kernel anywhere.
        let p = probe_with(|_| Ok(()));
        assert!(p.access.iter().all(|(_, a)| *a == Access::Full));
    }

    #[test]
    fn probe_falls_back_to_single_reads_when_group_inherit_is_refused() {
        let p = probe_with(|a| {
            if a.read_format & sys::FORMAT_GROUP != 0 {
                Err(Errno::INVAL)
            } else {
                Ok(())
            }
        });
        assert!(!p.group_read);
        assert_eq!(p.access(Event::PageFaults), Access::Full);
        // The same under perf_event_paranoid: found on the exclude_kernel retry.
        let p = probe_with(|a| {
            if a.flags & sys::FLAG_EXCLUDE_KERNEL == 0 {
                Err(Errno::ACCESS)
            } else if a.read_format & sys::FORMAT_GROUP != 0 {
                Err(Errno::INVAL)
            } else {
                Ok(())
            }
        });
        assert!(!p.group_read);
        assert_eq!(p.access(Event::PageFaults), Access::UserOnly);
    }

    #[test]
    fn probe_reports_missing_syscall() {
        let p = probe_with(|_| Err(Errno::NOSYS));
        assert_eq!(
            p.access(Event::TaskClock),
            Access::Unavailable("perf_event_open is not available (ENOSYS)".into())
        );
    }

    #[test]
    fn setup_groups_software_apart_from_hardware() {
        let probe = probe_with(|_| Ok(()));
        let s = Setup::new(&ALL, &probe);
        assert_eq!(s.groups.len(), 2);
        let plan = s.plan();
        let e = plan.entries();
        assert_eq!(e.len(), 10);
        assert_eq!(e[0].leader, -1);
        assert_eq!(
            e[0].attr.flags & sys::FLAG_ENABLE_ON_EXEC,
            sys::FLAG_ENABLE_ON_EXEC
        );
        assert_eq!(e[0].attr.flags & sys::FLAG_DISABLED, sys::FLAG_DISABLED);
        assert_eq!(e[5].leader, 0);
        assert_eq!(e[5].attr.flags, sys::FLAG_INHERIT);
        assert_eq!(e[6].leader, -1);
        assert_eq!(e[6].attr.type_, sys::TYPE_HARDWARE);
        assert_eq!(e[9].leader, 6);
        assert!(
            e.iter()
                .all(|x| x.attr.flags & sys::FLAG_EXCLUDE_KERNEL == 0)
        );
        assert!(Setup::new(&[], &probe).groups.is_empty());
    }

    #[test]
    fn setup_leaves_out_unavailable_events() {
        let probe = probe_with(|a| {
            if a.type_ == sys::TYPE_HARDWARE {
                Err(Errno::NOENT)
            } else {
                Ok(())
            }
        });
        let s = Setup::new(&[Event::TaskClock, Event::Cycles], &probe);
        assert_eq!(s.groups, vec![vec![Event::TaskClock]]);
        let res = PerfState::Pending(s).result();
        assert_eq!(res.counts.get("cycles"), Some(&None));
        assert_eq!(
            res.unavailable.get("cycles").map(String::as_str),
            Some("no hardware PMU (ENOENT)")
        );
    }

    #[test]
    fn parse_software_group() {
        let buf = words(&[3, 1000, 1000, 5_000_000, 42, 40]);
        let r = parse_read(&buf, true, 3).unwrap();
        assert_eq!(r.time_enabled, 1000);
        assert_eq!(r.values, vec![5_000_000, 42, 40]);
        assert_eq!(
            parse_read(&buf, true, 4),
            Err(ReadError::Count { got: 3, want: 4 })
        );
        assert_eq!(parse_read(&buf[..40], true, 3), Err(ReadError::Short(40)));
    }

    #[test]
    fn parse_single_counter() {
        let r = parse_read(&words(&[7, 10, 10]), false, 1).unwrap();
        assert_eq!(r.values, vec![7]);
        assert_eq!((r.time_enabled, r.time_running), (10, 10));
        assert!(parse_read(&words(&[7, 10]), false, 1).is_err());
    }

    #[test]
    fn hardware_group_is_scaled_when_multiplexed() {
        // cycles, instructions, cache_misses, branch_misses, running half the time.
        let buf = words(&[4, 2_000, 1_000, 100, 300, 7, 9]);
        let hw = [
            Event::Cycles,
            Event::Instructions,
            Event::CacheMisses,
            Event::BranchMisses,
        ];
        let reading = parse_read(&buf, true, 4).unwrap();
        let mut res = PerfRes::default();
        apply_reading(&hw, &reading, &mut res);
        assert_eq!(res.counts.get("cycles"), Some(&Some(200)));
        assert_eq!(res.counts.get("instructions"), Some(&Some(600)));
        assert_eq!(res.counts.get("branch_misses"), Some(&Some(18)));
        assert_eq!(res.scaled.get("cycles"), Some(&0.5));
        assert!(res.unavailable.is_empty());
    }

    #[test]
    fn group_that_never_ran_is_null() {
        let reading = parse_read(&words(&[1, 500, 0, 0]), true, 1).unwrap();
        let mut res = PerfRes::default();
        apply_reading(&[Event::Cycles], &reading, &mut res);
        assert_eq!(res.counts.get("cycles"), Some(&None));
        assert!(res.unavailable.contains_key("cycles"));
        // Never enabled (the child failed before exec): zeros, not nulls.
        let reading = parse_read(&words(&[1, 0, 0, 0]), true, 1).unwrap();
        let mut res = PerfRes::default();
        apply_reading(&[Event::TaskClock], &reading, &mut res);
        assert_eq!(res.counts.get("task_clock"), Some(&Some(0)));
    }

    #[test]
    fn perf_object_round_trips_with_event_keys_beside_the_notes() {
        let mut perf = PerfRes::default();
        perf.counts.insert("task_clock".into(), Some(1_234_567));
        perf.counts.insert("cycles".into(), None);
        perf.unavailable
            .insert("cycles".into(), "no hardware PMU (ENOENT)".into());
        let v = serde_json::to_value(&perf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"task_clock": 1_234_567, "cycles": null, "exclude_kernel": [],
                   "unavailable": {"cycles": "no hardware PMU (ENOENT)"}})
        );
        let back: PerfRes = serde_json::from_value(v).unwrap();
        assert_eq!(back, perf);
    }
}
