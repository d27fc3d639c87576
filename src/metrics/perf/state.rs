//! [`PerfState`]: a proc's counters through its life (decided, open, read at
//! exit), and reading the open ones into a result.

use super::read::{Reading, apply_reading, parse_read};
use super::{ALL, Event, PerfRes, Setup, errno_name};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::sync::Arc;

/// The counters of a proc through its life.
#[derive(Debug)]
pub enum PerfState {
    /// Decided, not yet opened (the proc is being spawned).
    Pending(Arc<Setup>),
    /// Open: the fds per plan entry, or why each did not open.
    Live {
        /// What was asked for.
        setup: Arc<Setup>,
        /// One per plan entry, group by group.
        fds: Vec<Result<OwnedFd, Errno>>,
    },
    /// Read at exit; the fds are closed. Shared with the results taken of it,
    /// which copy it on their callers' threads.
    Done(Arc<PerfRes>),
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
        Arc::unwrap_or_clone(self.shared())
    }

    /// As [`PerfState::result`], shared: once the counters are read at exit,
    /// without a copy.
    pub fn shared(&self) -> Arc<PerfRes> {
        match self {
            PerfState::Pending(setup) => {
                Arc::new(all_null(setup, "no counters: the process has not started"))
            }
            PerfState::Live { setup, fds } => Arc::new(read_counters(setup, fds)),
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
        *self = PerfState::Done(Arc::new(all_null(&setup, why)));
    }

    /// Takes final counts counted elsewhere (by counters the runner holds and
    /// the child inherited, see [`Inherited`](super::Inherited)), unless the
    /// counts are already settled (a child that failed before exec has none).
    pub fn counted(&mut self, res: PerfRes) {
        if !matches!(self, PerfState::Done(_)) {
            *self = PerfState::Done(Arc::new(res));
        }
    }

    /// Reads the final counts and hands back the counters' fds for the caller
    /// to close: closing an inherited counter tears down its per-task copies
    /// (some 5 µs each here), which a caller may rather spend off its thread.
    #[must_use = "the counters' fds close when the returned Vec is dropped"]
    pub fn finish(&mut self) -> Vec<OwnedFd> {
        if matches!(self, PerfState::Done(_)) {
            return Vec::new();
        }
        let res = self.shared();
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

pub(super) fn read_counters(setup: &Setup, fds: &[Result<OwnedFd, Errno>]) -> PerfRes {
    Snapshot::read(setup, fds).result(setup)
}

/// One read of a proc's counters, before it becomes a result: per group (per
/// counter without group reads) the events it covers and their reading, or why
/// they have none. Two of them give the counts between them
/// ([`Snapshot::since`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Snapshot {
    parts: Vec<(Vec<Event>, Result<Reading, String>)>,
}

impl Snapshot {
    /// Reads `fds`, one per entry of `setup`'s plan.
    pub(super) fn read(setup: &Setup, fds: &[Result<OwnedFd, Errno>]) -> Snapshot {
        let mut parts = Vec::new();
        let mut slots = fds.iter();
        let mut buf = [0u8; 8 * (3 + ALL.len())];
        for group in &setup.groups {
            let group_fds: Vec<&Result<OwnedFd, Errno>> =
                slots.by_ref().take(group.len()).collect();
            if setup.group_read {
                // A member that failed to open is not in the group: the
                // leader's read covers the members that opened, in order; the
                // others say why they did not.
                let mut opened = Vec::with_capacity(group.len());
                for (i, &event) in group.iter().enumerate() {
                    match group_fds.get(i) {
                        Some(Ok(_)) => opened.push(event),
                        Some(Err(e)) => parts.push((vec![event], Err(open_failed(*e)))),
                        None => parts.push((vec![event], Err("not opened".into()))),
                    }
                }
                // Without a leader there is no group: every member already
                // says why.
                if let Some(Ok(leader)) = group_fds.first() {
                    let reading = read_into(leader, &mut buf).and_then(|n| {
                        parse_read(buf.get(..n).unwrap_or(&[]), true, opened.len())
                            .map_err(|e| e.to_string())
                    });
                    parts.push((opened, reading));
                }
                continue;
            }
            for (i, &event) in group.iter().enumerate() {
                let reading = match group_fds.get(i) {
                    Some(Ok(fd)) => read_into(fd, &mut buf).and_then(|n| {
                        parse_read(buf.get(..n).unwrap_or(&[]), false, 1).map_err(|e| e.to_string())
                    }),
                    Some(Err(e)) => Err(open_failed(*e)),
                    None => Err("not opened".into()),
                };
                parts.push((vec![event], reading));
            }
        }
        Snapshot { parts }
    }

    /// The counts from `earlier` (a snapshot of the same counters) to this
    /// one: values and times subtracted part by part; a part that either
    /// lacks says why.
    pub(super) fn since(&self, earlier: &Snapshot) -> Snapshot {
        let parts = self
            .parts
            .iter()
            .zip(&earlier.parts)
            .map(|((events, now), (_, then))| {
                let reading = match (now, then) {
                    (Ok(now), Ok(then)) => Ok(Reading {
                        time_enabled: now.time_enabled.wrapping_sub(then.time_enabled),
                        time_running: now.time_running.wrapping_sub(then.time_running),
                        values: now
                            .values
                            .iter()
                            .zip(&then.values)
                            .map(|(a, b)| a.wrapping_sub(*b))
                            .collect(),
                    }),
                    (Err(why), _) | (_, Err(why)) => Err(why.clone()),
                };
                (events.clone(), reading)
            })
            .collect();
        Snapshot { parts }
    }

    /// Whether a part that was read was never enabled (as the counters of a
    /// child that ran a program under them all were, if only for an instant).
    pub(super) fn never_enabled(&self) -> bool {
        self.parts
            .iter()
            .any(|(_, r)| r.as_ref().is_ok_and(|r| r.time_enabled == 0))
    }

    /// The result: `setup`'s events, each with its count or why it has none.
    pub(super) fn result(&self, setup: &Setup) -> PerfRes {
        let mut res = base_res(setup);
        for (events, reading) in &self.parts {
            match reading {
                Ok(reading) => apply_reading(events, reading, &mut res),
                Err(why) => {
                    for e in events {
                        res.unavailable.insert(e.name().to_string(), why.clone());
                    }
                }
            }
        }
        res
    }
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
    use crate::metrics::perf::access::read_format;
    use crate::sys::perf::{self as sys, PerfEventAttr};
    use std::collections::BTreeMap;

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
}
