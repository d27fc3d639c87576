//! [`Inherited`]: counters a runner holds on its own thread and every child it
//! clones inherits, for processes run one at a time.
//!
//! A child that opens its counters before exec pays for six `perf_event_open`
//! calls while its parent waits in the vfork, and the parent six closes after.
//! Counters opened once on the spawning thread, `inherit` with a `disabled` +
//! `enable_on_exec` leader, cost a child only their copy at clone: the copy is
//! enabled by the child's exec, counts its program (and its own children), and
//! is added into the held counter as the child exits, before its parent can
//! see the exit. The held counter never counts itself (its leader stays
//! disabled: the thread never execs), so what it gained between a read before
//! the clone and one after the exit is the child's count.
//!
//! Two things make that exact only one process at a time:
//! - every child of the thread (and of threads it creates later) adds in: a
//!   read just before each clone drops whatever came in before it, and the
//!   caller runs nothing else while a counted child runs;
//! - a descendant still running when its child is reaped adds in when it ends,
//!   to a later run's count (a per-child counter would have lost it).
//!
//! # The guard event
//!
//! A child whose every counter was inherited gets a context the kernel marks
//! as a clone of its parent's, and when the parent switches to such a child
//! (it always does: it waits for it) the scheduler may swap the two contexts
//! instead of switching events out and in. The held counters then leave with
//! the child, and on Linux 6.18 no later child counted anything (measured: 269
//! of 300 runs counted nothing on two CPUs, 298 of 300 on one). One event that
//! is not inherited keeps the contexts apart: a disabled dummy, which counts
//! nothing. Should a kernel still lose the counts, [`Inherited::since`] says
//! so (a child that ran a program was enabled for some time), and the caller
//! goes back to counters each child opens.

use super::state::Snapshot;
use super::{PerfRes, Setup};
use crate::sys::perf::{self as sys, PerfEventAttr};
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
    /// Keeps children's contexts from being clones of this thread's (see the
    /// module's doc).
    _guard: OwnedFd,
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
        let plan = setup.plan();
        if plan.entries().is_empty() {
            // Nothing to count: nothing would ever say the counts were lost.
            return Err(Errno::INVAL);
        }
        let guard = sys::open(
            &PerfEventAttr::counting(
                sys::TYPE_SOFTWARE,
                sys::SW_DUMMY,
                0,
                // Allowed at any perf_event_paranoid level.
                sys::FLAG_DISABLED | sys::FLAG_EXCLUDE_KERNEL,
            ),
            0,
            -1,
            -1,
        )?;
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
            _guard: guard,
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
    /// since, once it has exited. `None` when they were never enabled,
    /// although `ran` says a child ran a program under them (the kernel lost
    /// them; see the module's doc).
    pub fn since(&mut self, ran: bool) -> Option<PerfRes> {
        let now = Snapshot::read(&self.setup, &self.fds);
        let counted = now.since(&self.mark);
        self.mark = now;
        if ran && !counted.enabled() {
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
    /// counted, by itself. Without the guard event most of them counted
    /// nothing here.
    #[test]
    fn each_child_is_counted_alone() {
        let events = [Event::TaskClock, Event::PageFaults, Event::ContextSwitches];
        if let Access::Unavailable(why) = probe().access(Event::TaskClock) {
            crate::test_skip(
                "perf::inherited each_child_is_counted_alone",
                &format!("perf task-clock unavailable ({why})"),
                true,
            );
            return;
        }
        // A thread of its own: no other child of the test's threads adds in.
        std::thread::spawn(move || {
            let (setup, _) = Setup::for_events(&events);
            let mut held = Inherited::open(setup.clone()).unwrap();
            assert!(held.counts(&setup) && held.on_this_thread());
            let run = |held: &mut Inherited, script: &str| {
                held.mark();
                let status = std::process::Command::new("/bin/sh")
                    .args(["-c", script])
                    .status()
                    .unwrap();
                assert!(status.success());
                let res = held.since(true).expect("counted");
                res.counts["task_clock"].expect("a task clock")
            };
            let mut quick = Vec::new();
            let mut busy = Vec::new();
            for _ in 0..20 {
                quick.push(run(&mut held, "exit 0"));
                busy.push(run(
                    &mut held,
                    "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
                ));
            }
            // Every run counted something, and the busy ones far more: counts
            // are per run, not running totals.
            assert!(quick.iter().all(|&ns| ns > 0), "{quick:?}");
            quick.sort_unstable();
            busy.sort_unstable();
            assert!(busy[10] > 5 * quick[10], "quick {quick:?} busy {busy:?}");
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
        if matches!(probe().access(Event::TaskClock), Access::Unavailable(_)) {
            crate::test_skip(
                "perf::inherited count_their_events_for_their_thread",
                "perf task-clock unavailable",
                true,
            );
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
