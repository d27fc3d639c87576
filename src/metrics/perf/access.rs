//! What the agent may count of each event ([`Access`]), as its startup probe
//! found on this machine ([`Probe`]; [`probe`] makes it once, [`probe_with`]
//! decides it from any open function).

use super::{ALL, Event};
use crate::sys::perf::{self as sys, PerfEventAttr};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::sync::OnceLock;

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

pub(super) fn read_format(group_read: bool) -> u64 {
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

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

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
}
