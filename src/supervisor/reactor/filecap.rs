//! The reactor's side of kept capture files (capture mode `file`, see
//! [`crate::capture::kept`]): writes from the staged pipe data with
//! `IORING_OP_WRITE`, backpressure on the pipe, and settling an exited process
//! only once its files hold every byte it wrote.

use super::super::proc::{Capture, Life, PipeIn, Store};
use super::table::ProcTable;
use super::{Reactor, Tag};
use crate::capture::kept::{Completed, KeptFile};
use rustix::io::Errno;

/// The kept file of capture `cap` of process `serial`, if it has one.
fn kept_mut(table: &mut ProcTable, serial: u64, cap: usize) -> Option<&mut KeptFile> {
    table
        .get_mut(serial)?
        .captures
        .get_mut(cap)?
        .store
        .kept_mut()
}

impl Reactor {
    /// Pipe bytes went into a kept file's staging: start a write if none is in
    /// flight, and pause the pipe if the staging is still full after that.
    pub(super) fn kept_pushed(&mut self, serial: u64, cap: usize) {
        self.pump_kept(serial, cap);
        let pause = match kept_mut(&mut self.table, serial, cap) {
            Some(f) if f.over_cap() && !f.paused => {
                f.paused = true;
                true
            }
            _ => false,
        };
        if pause {
            self.pauses.push((serial, cap));
        }
    }

    /// Submits the next write of a kept file, if one is due.
    fn pump_kept(&mut self, serial: u64, cap: usize) {
        let Some(f) = kept_mut(&mut self.table, serial, cap) else {
            return;
        };
        let Some(file) = f.file().cloned() else {
            return;
        };
        if let Some((buf, offset)) = f.next_write() {
            self.ring
                .write(file, buf, offset, Tag::FileWrite { proc: serial, cap });
        }
    }

    /// Cancels the pipe reads of kept files paused during the last batch.
    ///
    /// Done after the whole batch, not at the completion that filled the
    /// staging: a read op's final completion later in the same batch frees its
    /// slot, and an op armed after it could take the same key, which a cancel
    /// queued earlier would then hit. Here `read_key` names a live read.
    pub(super) fn apply_pauses(&mut self) {
        let mut pauses = std::mem::take(&mut self.pauses);
        for (serial, cap) in pauses.drain(..) {
            let Some(p) = self.table.get(serial).filter(|p| p.is_running()) else {
                continue;
            };
            if let Some(Capture {
                store:
                    Store::Kept {
                        pipe:
                            PipeIn {
                                read_key: Some(key),
                                ..
                            },
                        file,
                    },
                ..
            }) = p.captures.get(cap)
            {
                if file.paused {
                    self.ring.cancel(*key);
                }
            }
        }
        self.pauses = pauses;
    }

    /// A kept file's write completed: account for it, go on with the rest or
    /// the next batch, resume a paused pipe once the staging has room, and
    /// settle the process if it has exited and this was its last write.
    pub(super) fn kept_written(
        &mut self,
        serial: u64,
        cap: usize,
        result: Result<u32, Errno>,
        buf: Vec<u8>,
    ) {
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        let running = p.is_running();
        let Some(Capture {
            store: Store::Kept { pipe, file: f },
            ..
        }) = p.captures.get_mut(cap)
        else {
            return;
        };
        let tag = Tag::FileWrite { proc: serial, cap };
        let next = match f.completed(result, buf) {
            Completed::Rest(rest, offset) => Some((rest, offset)),
            Completed::Done => f.next_write(),
            Completed::Failed(msg) => {
                tracing::warn!(id = %p.id, "{msg}");
                p.errors.push(msg);
                None
            }
        };
        if let (Some((buf, offset)), Some(file)) = (next, f.file()) {
            self.ring.write(file.clone(), buf, offset, tag);
        }
        if f.paused && f.may_resume() {
            f.paused = false;
            if running && pipe.read_key.is_none() {
                if let Some(fd) = pipe.fd.clone() {
                    pipe.read_key = Some(
                        self.ring
                            .read_multishot(fd, Tag::Pipe { proc: serial, cap }),
                    );
                }
            }
        }
        if !running {
            self.settle_exited(serial);
        }
    }

    /// After the exit drain: starts the writes of what is left staged.
    pub(super) fn flush_kept(&mut self, serial: u64) {
        let n = self.table.get(serial).map_or(0, |p| p.captures.len());
        for cap in 0..n {
            self.pump_kept(serial, cap);
        }
    }

    /// Settles an exited (reaped) process once every kept-file write of it has
    /// completed: freezes it and lets go of its slot. Until then it stays busy
    /// ([`Proc::is_busy`]), so no waiter or result sees a short file. The rest
    /// (its waiters answered, [`Event::Exited`], its compressions started, in
    /// that order) waits for the loop's next launches (`answer_settled`), so
    /// that the slot goes to the next queued process first: in a sequential
    /// run all of it sat between one exit and the next clone.
    ///
    /// [`Proc::is_busy`]: super::super::proc::Proc::is_busy
    /// [`Event::Exited`]: super::super::types::Event::Exited
    pub(super) fn settle_exited(&mut self, serial: u64) {
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        if !matches!(p.life, Life::Done { .. }) || p.stop.is_some() || !p.kept_idle() {
            return;
        }
        p.settle_quietly();
        self.unanswered.push(serial);
        self.release_slot(serial);
    }
}
