//! Shutting the agent down by a [`ShutdownPolicy`]: its states
//! ([`ShutdownState`]), the signals to what runs, and when it is done.

use super::super::proc::{self, Life, Proc};
use super::super::types::{Event, ShutdownPolicy, ShutdownState};
use super::{Reactor, signal_proc};
use std::time::Instant;

impl Reactor {
    /// Leaves `Active` by `policy`: new starts are refused from now on.
    pub(super) fn begin_shutdown(&mut self, policy: ShutdownPolicy) {
        let harder = match (self.policy, policy) {
            (None, _) => true,
            (Some(ShutdownPolicy::Idle), ShutdownPolicy::Idle) => false,
            (Some(ShutdownPolicy::Idle), _) => true,
            (Some(ShutdownPolicy::Terminate { .. }), ShutdownPolicy::Kill) => true,
            _ => false,
        };
        if self.shutdown == ShutdownState::Done || !harder {
            return;
        }
        tracing::info!(?policy, "shutting down");
        self.policy = Some(policy);
        self.shutdown_state(ShutdownState::Idling);
        match policy {
            ShutdownPolicy::Idle => {}
            ShutdownPolicy::Kill => {
                self.unqueue_all();
                self.kill_at = None;
                self.signal_all(libc::SIGKILL);
            }
            ShutdownPolicy::Terminate { grace } => {
                self.unqueue_all();
                self.signal_all(libc::SIGTERM);
                self.kill_at = Some(Instant::now() + grace);
            }
        }
        self.settled_for_done = true;
    }

    /// Processes still queued never start: each fails, saying why.
    fn unqueue_all(&mut self) {
        // Plans in the spawning threads' queues too.
        self.spawner.cancel_queued();
        for q in std::mem::take(&mut self.queue) {
            if let Some(p) = self.table.get_mut(q.serial) {
                p.errors.push(proc::NOT_STARTED_SHUTDOWN.to_string());
            }
            self.settle_unstarted(q.serial);
            self.start_resolved(q.serial);
        }
    }

    /// Sends `signum` to every running process; those waiting for their files
    /// never start.
    pub(super) fn signal_all(&mut self, signum: i32) {
        let opening: Vec<u64> = self.opening.keys().copied().collect();
        for serial in opening {
            self.abandon_opening(
                serial,
                "not started: the agent is shutting down (it was opening its files)".into(),
            );
        }
        for p in self.table.values() {
            if matches!(p.life, Life::Running) {
                if let Err(e) = signal_proc(p, signum) {
                    tracing::debug!(id = %p.id, signum, "shutdown signal failed: {e}");
                }
            }
        }
    }

    /// Moves to `state` (once), telling subscribers; `done` answers its waiters.
    pub(super) fn shutdown_state(&mut self, state: ShutdownState) {
        if self.shutdown == state {
            return;
        }
        self.shutdown = state;
        self.emit(Event::Shutdown(state));
        if state == ShutdownState::Done {
            for w in std::mem::take(&mut self.done_waiters) {
                w(());
            }
        }
    }

    /// Whether shutting down has finished: nothing runs (terminate, kill) or
    /// nothing is left (idle). Looked at only after something settled.
    pub(super) fn check_done(&mut self) {
        if self.shutdown != ShutdownState::Idling || !std::mem::take(&mut self.settled_for_done) {
            return;
        }
        if !self.unanswered.is_empty() {
            // Looked at again once their Exited events are out (answer_settled).
            return;
        }
        let done = match self.policy {
            Some(ShutdownPolicy::Idle) => self.table.is_empty(),
            Some(_) => self.queue.is_empty() && !self.table.values().any(Proc::is_busy),
            None => false,
        };
        if done {
            self.shutdown_state(ShutdownState::Done);
        }
    }
}
