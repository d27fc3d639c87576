//! Callers waiting on the table as a whole: for every process to be final
//! ([`Command::WaitAll`]), and readers waiting for a capture to grow
//! ([`Command::FdWait`]).
//!
//! [`Command::WaitAll`]: super::super::command::Command::WaitAll
//! [`Command::FdWait`]: super::super::command::Command::FdWait

use super::super::error::FdDataError;
use super::super::proc::Proc;
use super::super::types::{Event, FdWaited};
use super::Reactor;
use std::time::Instant;

/// A reader waiting for capture `cap` of process `serial` to hold more than
/// `offset` bytes.
pub(super) struct DataWaiter {
    pub(super) serial: u64,
    /// The capture's place in the process's captures; `None` while it is
    /// unstarted (queued, or opening its files), before its captures exist.
    pub(super) cap: Option<usize>,
    /// The capture's normalised fd name, to find it once the process starts.
    pub(super) name: String,
    pub(super) offset: u64,
    pub(super) deadline: Instant,
    pub(super) reply: Box<dyn FnOnce(Result<FdWaited, FdDataError>) + Send>,
}

impl Reactor {
    /// Finishes settling the processes settled since the last call (see
    /// `settle_exited`): answers their waiters, emits [`Event::Exited`] and
    /// starts their compressions. Called after the loop's launches, so that a
    /// freed slot goes to the next queued process before any of this.
    ///
    /// [`Event::Exited`]: super::super::types::Event::Exited
    pub(super) fn answer_settled(&mut self) {
        if self.unanswered.is_empty() {
            return;
        }
        for serial in std::mem::take(&mut self.unanswered) {
            if self.announce_exit(serial) {
                self.compress_captures(serial);
            }
        }
        // A WaitAll that came meanwhile looked while these were unanswered.
        self.settled = true;
        self.settled_for_done = true;
    }

    /// Answers the waiters of settled process `serial` and emits its
    /// [`Event::Exited`]; false if there is no such process.
    ///
    /// [`Event::Exited`]: super::super::types::Event::Exited
    pub(super) fn announce_exit(&mut self, serial: u64) -> bool {
        let ctx = self.stat_ctx.as_ref();
        let Some(p) = self.table.get_mut(serial) else {
            return false;
        };
        p.answer_waiters(ctx);
        let id = p.id.clone();
        self.emit(Event::Exited(id));
        true
    }

    /// Answers [`Command::WaitAll`] once every process is final. Looks only
    /// after something settled, so a long wait costs nothing per loop.
    ///
    /// [`Command::WaitAll`]: super::super::command::Command::WaitAll
    pub(super) fn answer_all_waiters(&mut self) {
        if self.all_waiters.is_empty() || !std::mem::take(&mut self.settled) {
            return;
        }
        if self.queue.is_empty()
            && self.unanswered.is_empty()
            && self.table.values().all(Proc::is_final)
        {
            for w in std::mem::take(&mut self.all_waiters) {
                w(());
            }
        }
    }

    /// Answers the readers whose capture grew past their offset, can grow no
    /// more, or whose process is gone, and those whose deadline passed; returns
    /// the nearest deadline left.
    pub(super) fn answer_data_waiters(&mut self) -> Option<Instant> {
        if self.data_waiters.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut i = 0;
        while i < self.data_waiters.len() {
            let w = &mut self.data_waiters[i];
            let state = self.table.get(w.serial).map(|p| {
                if w.cap.is_none() {
                    w.cap = p.captures.iter().position(|c| c.name == w.name);
                }
                match w.cap.and_then(|c| p.captures.get(c)) {
                    Some(c) => c.growth(p.is_busy()),
                    // Not started yet: empty so far, and for good once the
                    // process settles without starting.
                    None => (Some(0), p.is_busy()),
                }
            });
            let answer = match state {
                None => Some(Err(FdDataError::Unknown(String::new()))),
                Some((length, open))
                    if !open || length.is_some_and(|l| l > w.offset) || w.deadline <= now =>
                {
                    Some(Ok(FdWaited { length, open }))
                }
                // A tempfile grows unseen: its readers poll.
                Some((None, _)) => Some(Ok(FdWaited {
                    length: None,
                    open: true,
                })),
                Some(_) => None,
            };
            match answer {
                Some(a) => {
                    let w = self.data_waiters.swap_remove(i);
                    (w.reply)(a);
                }
                None => {
                    next = Some(next.map_or(w.deadline, |n| n.min(w.deadline)));
                    i += 1;
                }
            }
        }
        next
    }
}
