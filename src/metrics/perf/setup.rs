//! [`Setup`]: the counters one proc's child opens, decided from what it asked
//! for and what the probe found, and the plan the child opens them from.

use super::access::read_format;
use super::{Access, Event, Probe};
use crate::sys::perf::{self as sys, PerfEntry, PerfEventAttr, PerfPlan};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A setup and its plan, with the events it was built for.
type Built = (Vec<Event>, Arc<Setup>, PerfPlan);

thread_local! {
    /// The last setup [`Setup::for_events`] built on this thread.
    static LAST: RefCell<Option<Built>> = const { RefCell::new(None) };
}

/// The counters of one proc, decided in the agent before its spawn.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Every requested event, in [`ALL`](super::ALL) order.
    pub(super) requested: Vec<Event>,
    /// Groups (software, then hardware), each a list of events, leader first.
    pub(super) groups: Vec<Vec<Event>>,
    /// Requested events left out, and why.
    pub(super) unavailable: BTreeMap<Event, String>,
    /// Events counted in user space only.
    pub(super) user_only: Vec<Event>,
    pub(super) group_read: bool,
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

    /// Whether no counter would be opened (nothing asked for is available).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The setup for `requested` with the agent's [`probe`](super::probe), and
    /// its plan: the last one built on this thread while the same events are
    /// asked for, so a run of spawns of one spec decides its counters once.
    pub fn for_events(requested: &[Event]) -> (Arc<Setup>, PerfPlan) {
        LAST.with_borrow_mut(|last| {
            if let Some((events, setup, plan)) = last.as_ref() {
                if events.as_slice() == requested {
                    return (setup.clone(), plan.clone());
                }
            }
            let setup = Arc::new(Setup::new(requested, super::probe()));
            let plan = setup.plan();
            *last = Some((requested.to_vec(), setup.clone(), plan.clone()));
            (setup, plan)
        })
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

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::metrics::perf::{ALL, PerfState, probe_with};
    use rustix::io::Errno;

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
    fn for_events_reuses_the_last_setup_only_for_the_same_events() {
        let soft = [Event::TaskClock, Event::PageFaults];
        let (a, _) = Setup::for_events(&soft);
        let (b, plan) = Setup::for_events(&soft);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(plan.entries().len(), a.plan().entries().len());
        let (c, _) = Setup::for_events(&[Event::TaskClock]);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.requested, vec![Event::TaskClock]);
        let (d, _) = Setup::for_events(&soft);
        assert!(!Arc::ptr_eq(&c, &d));
        assert_eq!(d.requested, soft.to_vec());
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
        let res = PerfState::Pending(Arc::new(s)).result();
        assert_eq!(res.counts.get("cycles"), Some(&None));
        assert_eq!(
            res.unavailable.get("cycles").map(String::as_str),
            Some("no hardware PMU (ENOENT)")
        );
    }
}
