//! Processes waiting for their files: the [`Opener`] opens a spec's files off
//! the reactor (a FIFO's open may never end); a process waits here until they
//! are open, or is given up on.
//!
//! [`Opener`]: super::super::opener::Opener

use super::super::proc::Life;
use super::Reactor;
use super::start::Queued;

/// How long a start request waits for a process's files to open before it
/// is answered without that process's pid.
pub(super) const OPEN_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

/// A process whose files are being opened: its queue entry and the timer of
/// its timeout, if it has one.
pub(super) struct Opening {
    pub(super) q: Queued,
    pub(super) timer: Option<u64>,
    pub(super) slow: Option<u64>,
}

impl Opening {
    /// The timers' keys, to cancel.
    fn timers(&mut self) -> impl Iterator<Item = u64> {
        self.timer.take().into_iter().chain(self.slow.take())
    }
}

impl Reactor {
    /// Lets the opener grow for jobs waiting behind stuck threads, and
    /// checks again every [`STUCK_AFTER`](super::super::opener::STUCK_AFTER)
    /// while any job still waits: threads started for them may take earlier
    /// jobs that never end, and become stuck in turn.
    pub(super) fn check_opener(&mut self) {
        self.opener.unclog();
        if self.opener.waiting() > 0 && !self.opener_check {
            self.opener_check = true;
            self.ring
                .timeout(super::super::opener::STUCK_AFTER, super::Tag::OpenerCheck);
        }
    }

    /// Collects the opener's finished jobs: each process goes on to launch;
    /// one abandoned meanwhile has its files discarded.
    pub(super) fn drain_opened(&mut self) {
        while let Ok((serial, results)) = self.opened_rx.try_recv() {
            match self.opening.remove(&serial) {
                Some(mut o) => {
                    for key in o.timers() {
                        self.ring.cancel(key);
                    }
                    let mut q = o.q;
                    q.opened = Some(results);
                    if let Some(p) = self.table.get_mut(serial) {
                        p.life = Life::Queued;
                    }
                    // Back at the head of the queue: it launches when
                    // `max_running` and the fds allow, as any other.
                    self.queue.push_front(q);
                }
                None => results.into_iter().for_each(|(_, o)| o.discard()),
            }
        }
    }

    /// Gives up on a process waiting for its files (signalled, deleted, timed
    /// out, or the agent shutting down): it never starts, and says `why`. Its
    /// files are discarded when their opens end.
    pub(super) fn abandon_opening(&mut self, serial: u64, why: String) {
        let Some(mut o) = self.opening.remove(&serial) else {
            return;
        };
        for key in o.timers() {
            self.ring.cancel(key);
        }
        if let Some(p) = self.table.get_mut(serial) {
            p.errors.push(why);
        }
        self.settle_unstarted(serial);
        self.start_resolved(serial);
    }
}
