//! [`Inherited`]: counters a runner holds on its own thread and every child it
//! clones inherits, for processes run one at a time.
//!
//! A child that opens its counters before exec pays one `perf_event_open` per
//! counter (four software ones here, eight with a PMU) while its parent waits
//! in the vfork, and the parent as many closes after. Counters opened once on
//! the spawning thread, `inherit` with a `disabled` + `enable_on_exec` leader,
//! cost a child only their copy at clone: the copy is enabled by the child's
//! exec, counts its program (and its own children), and is added into the
//! held counter as the child exits, before its parent can see the exit. The
//! held counter never counts itself (its leader stays disabled: the thread
//! never execs), so what it gained between a read before the clone and one
//! after the exit is the child's count.
//!
//! That is exact only one process at a time:
//! - every child of the thread (and of threads it creates later, unless the
//!   counters are let go of first, as `chaperone bench` does before it starts
//!   an agent) inherits them and adds in: a read just before each clone drops
//!   whatever came in before it, and the caller runs nothing else while a
//!   counted child runs;
//! - a descendant still running when its child is reaped adds in when it ends,
//!   to a later run's count (a per-child counter would have lost it).
//!
//! # The guards
//!
//! A child whose every counter of a context was inherited gets a context the
//! kernel marks as a clone of its parent's, and when the parent switches to
//! such a child (it always does: it waits for it) the scheduler may swap the
//! two contexts instead of switching events out and in. The held counters
//! then leave with the child, and on Linux 6.18 no later child counted
//! anything (`docs/bench.md` has the figures). One event that is not
//! inherited keeps the contexts apart: per group, a disabled copy of its
//! leader, which counts nothing (kernels before 6.2 keep software and
//! hardware events in separate contexts, so each group gets its own). Should
//! a kernel still lose counts, [`Inherited::since`] says so: a part of the
//! counters was never enabled although the child ran a program, and the
//! caller goes back to counters each child opens.

use super::state::Snapshot;
use super::{PerfRes, Setup};
use crate::sys::perf as sys;
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::io::Errno;
use rustix::thread::Pid;
use std::sync::Arc;

/// Counters held on the thread that opened them, inherited by each child it
/// clones after.
#[derive(Debug)]
pub struct Inherited {
    setup: Arc<Setup>,
    /// One per plan entry of `setup`, all open.
    fds: Vec<Result<OwnedFd, Errno>>,
    /// Keep children's contexts from being clones of this thread's (see the
    /// module's doc): one per group.
    _guards: Vec<OwnedFd>,
    /// The thread they count the children of.
    tid: Pid,
    /// The read taken by [`Inherited::mark`].
    mark: Snapshot,
}

impl Inherited {
    /// Opens `setup`'s counters on the calling thread (none counting until a
    /// child execs).
    ///
    /// # Errors
    /// The first open that failed, for the caller to fall back to counters
    /// each child opens (which say per event why one did not open).
    pub fn open(setup: Arc<Setup>) -> Result<Inherited, Errno> {
        if setup.is_empty() {
            // Nothing to count: nothing would ever say the counts were lost.
            return Err(Errno::INVAL);
        }
        let plan = setup.plan();
        let mut guards = Vec::new();
        for entry in plan.entries().iter().filter(|e| e.leader < 0) {
            let mut attr = entry.attr;
            attr.flags &= !(sys::FLAG_INHERIT | sys::FLAG_ENABLE_ON_EXEC);
            attr.flags |= sys::FLAG_DISABLED;
            guards.push(sys::open(&attr, 0, -1, -1)?);
        }
        let mut fds: Vec<Result<OwnedFd, Errno>> = Vec::with_capacity(plan.entries().len());
        for entry in plan.entries() {
            let leader = match usize::try_from(entry.leader) {
                Ok(i) => match fds.get(i) {
                    Some(Ok(fd)) => fd.as_raw_fd(),
                    _ => return Err(Errno::BADF),
                },
                Err(_) => -1,
            };
            fds.push(Ok(sys::open(&entry.attr, 0, -1, leader)?));
        }
        let mark = Snapshot::read(&setup, &fds);
        Ok(Inherited {
            setup,
            fds,
            _guards: guards,
            tid: rustix::thread::gettid(),
            mark,
        })
    }

    /// Whether these count the events `setup` asks for.
    pub fn counts(&self, setup: &Setup) -> bool {
        self.setup.requested == setup.requested
    }

    /// Whether the calling thread is the one these count the children of.
    pub fn on_this_thread(&self) -> bool {
        self.tid == rustix::thread::gettid()
    }

    /// Reads the counters now: the next [`Inherited::since`] counts from here.
    /// Called just before the clone of the child to count.
    pub fn mark(&mut self) {
        self.mark = Snapshot::read(&self.setup, &self.fds);
    }

    /// The counts added since [`Inherited::mark`]: those of the child run
    /// since, once it has exited. `None` when a group of them was never
    /// enabled although `ran` says a child ran a program under them (the
    /// kernel lost them; see the module's doc). A counter that could not be
    /// read says why in the result.
    pub fn since(&mut self, ran: bool) -> Option<PerfRes> {
        let now = Snapshot::read(&self.setup, &self.fds);
        let counted = now.since(&self.mark);
        self.mark = now;
        if ran && counted.never_enabled() {
            return None;
        }
        Some(counted.result(&self.setup))
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
mod tests {
    use super::*;
    use crate::metrics::perf::{Access, Event, probe};

    /// Children run one after another under inherited counters: each is
    /// counted, by itself, and what a child outside a mark added is not
    /// counted. Without the guards most of them counted nothing here.
    #[test]
    fn each_child_is_counted_alone() {
        let test = "perf::inherited each_child_is_counted_alone";
        if !crate::metrics::perf::task_clock_or_skip(test) {
            return;
        }
        let hardware = !matches!(probe().access(Event::Instructions), Access::Unavailable(_));
        let mut events = vec![Event::TaskClock, Event::PageFaults, Event::ContextSwitches];
        if hardware {
            events.push(Event::Instructions);
        } else {
            crate::test_skip(test, "no hardware PMU: instructions not checked", true);
        }
        const BUSY: &str = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done";
        let sh = |script: &str| {
            let status = std::process::Command::new("/bin/sh")
                .args(["-c", script])
                .status()
                .unwrap();
            assert!(status.success());
        };
        // A thread of its own: no other child of the test's threads adds in.
        std::thread::spawn(move || {
            let (setup, _) = Setup::for_events(&events);
            let mut held = Inherited::open(setup.clone()).unwrap();
            assert!(held.counts(&setup) && held.on_this_thread());
            let run = |held: &mut Inherited, script: &str| {
                held.mark();
                sh(script);
                let res = held.since(true).expect("counted");
                let instructions = res.counts.get("instructions").copied().flatten();
                (
                    res.counts["task_clock"].expect("a task clock"),
                    instructions,
                )
            };
            let mut quick = Vec::new();
            let mut busy = Vec::new();
            let mut after_busy = Vec::new();
            let mut instructions = Vec::new();
            for _ in 0..20 {
                quick.push(run(&mut held, "exit 0").0);
                let (ns, n) = run(&mut held, BUSY);
                busy.push(ns);
                instructions.push(n.unwrap_or(0));
                // A child outside any run adds in; the next run's mark drops it.
                sh(BUSY);
                after_busy.push(run(&mut held, "exit 0").0);
            }
            if hardware {
                // Counted (a busy PMU may leave a run's null: the median).
                instructions.sort_unstable();
                assert!(instructions[10] > 0, "{instructions:?}");
            }
            // Every run counted something, and the busy ones far more: counts
            // are per run, not running totals.
            assert!(quick.iter().all(|&ns| ns > 0), "{quick:?}");
            let median = |v: &mut Vec<u64>| {
                v.sort_unstable();
                v[v.len() / 2]
            };
            let (q, b, a) = (
                median(&mut quick),
                median(&mut busy),
                median(&mut after_busy),
            );
            assert!(b > 5 * q, "quick {quick:?} busy {busy:?}");
            assert!(a < b / 5, "after a busy child {after_busy:?} busy {busy:?}");
            // Nothing ran since the last mark: nothing counted, and nothing
            // enabled (a run that ran a program would be said lost).
            held.mark();
            assert!(held.since(true).is_none());
            assert_eq!(held.since(false).unwrap().counts["task_clock"], Some(0));
        })
        .join()
        .unwrap();
    }

    /// Counters of one thread are not those of another, nor of other events.
    #[test]
    fn count_their_events_for_their_thread() {
        let events = [Event::TaskClock];
        if !crate::metrics::perf::task_clock_or_skip(
            "perf::inherited count_their_events_for_their_thread",
        ) {
            return;
        }
        let (setup, _) = Setup::for_events(&events);
        let held = Inherited::open(setup.clone()).unwrap();
        assert!(held.counts(&setup) && held.on_this_thread());
        let (other, _) = Setup::for_events(&[Event::TaskClock, Event::PageFaults]);
        assert!(!held.counts(&other));
        std::thread::scope(|s| {
            s.spawn(|| assert!(!held.on_this_thread()));
        });
    }
}
