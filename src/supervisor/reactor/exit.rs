//! The end of a process: its pipe reads ending, its exit (a `/proc` snapshot
//! of the zombie), the drain of its pipes once no read is in flight, the reap
//! with rusage, and settling it (also one that never started).

use super::super::outlimit;
use super::super::proc::{Life, PipeIn};
use super::{Reactor, Tag};
use crate::ring::Cqe;
use crate::sys::pipe;
use rustix::fd::OwnedFd;
use std::rc::Rc;

impl Reactor {
    /// A pipe read op ended: at EOF the pipe is closed; otherwise (ENOBUFS, a
    /// single-shot read) it is armed again while the process runs.
    pub(super) fn pipe_read_ended(&mut self, serial: u64, cap: usize, cqe: &Cqe) {
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        let running = p.is_running();
        let exiting = matches!(p.life, Life::Exiting);
        let Some(store) = p.captures.get_mut(cap).map(|c| &mut c.store) else {
            return;
        };
        // Whether this is a kept file, and one paused for backpressure.
        let kept = store.kept_mut().map(|f| f.paused);
        let Some(pipe) = store.pipe_mut() else {
            return;
        };
        pipe.read_key = None;
        if exiting {
            // Its last read may have ended: the exit goes on (`finish_exit`).
            if !self.exited.contains(&serial) {
                self.exited.push(serial);
            }
            return;
        }
        let rearm = match cqe.result {
            Ok(0) => false, // EOF
            Ok(_) => true,  // single-shot read
            Err(e) => {
                read_again(e)
                    // A kept file's read cancelled for backpressure.
                    || (e == rustix::io::Errno::CANCELED && kept.is_some())
            }
        };
        if !rearm {
            // End of file, or an error a re-armed read would only repeat:
            // said in the result, as the capture may have lost bytes.
            pipe.fd = None;
            if let Err(e) = cqe.result {
                let name = p
                    .captures
                    .get(cap)
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                p.errors.push(format!(
                    "reading the {name} capture failed: {}",
                    std::io::Error::from(e)
                ));
            }
            return;
        }
        // A paused kept file re-arms when its writes catch up (`kept_written`).
        if !running || kept == Some(true) {
            return;
        }
        if let Some(fd) = pipe.fd.clone() {
            pipe.read_key = Some(
                self.ring
                    .read_multishot(fd, Tag::Pipe { proc: serial, cap }),
            );
        }
    }

    /// The process exited (not yet reaped), or the last pipe read of an exited
    /// one ended. At the exit: snapshot `/proc/<pid>/stat`, `io` and perf of the
    /// zombie, and cancel its pipe reads. Once no read of its pipes can complete
    /// any more (each read's final completion, which may still carry bytes, has
    /// been handled): drain what is left in the pipes, reap it with rusage,
    /// freeze its captures, publish.
    pub(super) fn finish_exit(&mut self, serial: u64) {
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        match p.life {
            Life::Running => {}
            Life::Exiting if !p.reading() => return self.complete_exit(serial),
            _ => return,
        }
        let read_proc = if self.config.read_proc_at_exit {
            self.stat_ctx.as_ref().map(|ctx| (ctx, &mut self.stat_buf))
        } else {
            None
        };
        self.closer.close(p.exited(read_proc));
        p.life = Life::Exiting;
        // A read's bytes may reach us after the exit's completion: a multishot
        // read that overflowed the completion queue ends with a completion that
        // carries its last bytes, posted after completions that came later. So
        // the captures wait for every read's final completion, not just the exit.
        for c in p.captures.iter_mut() {
            if let Some(PipeIn {
                read_key: Some(key),
                ..
            }) = c.store.pipe_mut()
            {
                self.ring.cancel(*key);
            }
        }
        if !p.reading() {
            self.complete_exit(serial);
        }
    }

    /// An exited process none of whose pipe reads is in flight: drain the pipes
    /// (their bytes are newer than every completion handled), reap, settle.
    fn complete_exit(&mut self, serial: u64) {
        for cap in 0..self.table.get(serial).map_or(0, |p| p.captures.len()) {
            let Some(PipeIn {
                fd: Some(fd),
                read_key: None,
                grow_to,
            }) = self
                .table
                .get_mut(serial)
                .and_then(|p| p.captures.get_mut(cap))
                .and_then(|c| c.store.pipe_mut())
            else {
                continue;
            };
            let fd = fd.clone();
            // At most one pipe's worth: all a dead writer can have left. A
            // descendant still writing into the pipe must not keep the reactor
            // here (or a kept file's staging growing); its later output is not
            // part of this process's capture. A pipe not grown yet
            // (`grow_to` still set) holds the default at most.
            // (The kernel rounds a pipe's size up to a power of two pages.)
            let default_pipe = pipe::default_size();
            let size = if *grow_to == 0 {
                self.config.pipe_size.max(default_pipe)
            } else {
                default_pipe
            };
            let mut left = size.next_power_of_two();
            let mut eof = false;
            while left > 0 {
                let want = self.scratch.len().min(left);
                match pipe::read(&*fd, self.scratch.get_mut(..want).unwrap_or(&mut [])) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Err(_) => break,
                    // Kept files' staged bytes are written by `flush_kept` below.
                    Ok(n) => {
                        left = left.saturating_sub(n);
                        _ = outlimit::push(
                            self.budget.as_mut(),
                            self.table.by_serial_mut(),
                            serial,
                            cap,
                            self.scratch.get(..n).unwrap_or(&[]),
                        )
                    }
                }
            }
            if !eof {
                // A writer is left: a descendant holding the pipe.
                drop(fd);
                let held = self
                    .table
                    .get_mut(serial)
                    .and_then(|p| p.captures.get_mut(cap))
                    .and_then(|c| c.store.pipe_mut())
                    .and_then(|p| p.fd.take());
                if let Some(fd) = held {
                    self.orphan(fd);
                }
            }
        }
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        // With `kill_group`, a timeout's signal sent and its SIGKILL still to
        // come: the group may outlive its leader (a member that ignores the
        // signal). The leader stays an unreaped zombie, holding the group's
        // id, and the kill timer stays armed, for the group (`group_killed`).
        let group_kill_due = p.kill_group
            && p.timeout
                .as_ref()
                .is_some_and(|t| t.fired_at.is_some() && t.timer.is_some() && !t.killed);
        let held = match (group_kill_due, p.pid) {
            (true, Some(pid)) => p.end_unreaped().map(|fd| (fd, pid)),
            _ => {
                p.reap();
                None
            }
        };
        match held {
            Some(held) => {
                self.group_kills.insert(serial, held);
            }
            None => {
                if let Some(key) = p.timeout.as_mut().and_then(|t| t.timer.take()) {
                    self.ring.cancel(key);
                }
            }
        }
        // Kept files get their last bytes; the process settles once they are in.
        self.flush_kept(serial);
        self.settle_exited(serial);
    }

    /// Reads `fd`, a capture pipe of an ended process that a descendant still
    /// writes to, until its end, dropping the bytes (see `Reactor::orphans`).
    fn orphan(&mut self, fd: Rc<OwnedFd>) {
        if self.orphans.len() >= self.max_orphans {
            self.close_orphan(fd);
            return;
        }
        let id = self.next_orphan;
        self.next_orphan += 1;
        self.ring.read_multishot(fd.clone(), Tag::Orphan { id });
        self.orphans.insert(id, fd);
    }

    /// An orphaned pipe's read ended: at its end (or an error a new read
    /// would repeat) the pipe is closed, otherwise read again.
    pub(super) fn orphan_read_ended(&mut self, id: u64, cqe: &Cqe) {
        let again = match cqe.result {
            Ok(n) => n > 0, // a single-shot read
            Err(e) => read_again(e),
        };
        match self.orphans.get(&id) {
            Some(fd) if again => {
                let fd = fd.clone();
                self.ring.read_multishot(fd, Tag::Orphan { id });
            }
            _ => {
                if let Some(fd) = self.orphans.remove(&id) {
                    self.close_orphan(fd);
                }
            }
        }
    }

    fn close_orphan(&mut self, fd: Rc<OwnedFd>) {
        if let Ok(fd) = Rc::try_unwrap(fd) {
            self.closer.close(vec![fd]);
        }
    }

    /// A process that held a slot (and fds) let go of them.
    pub(super) fn release_slot(&mut self, serial: u64) {
        self.settled = true;
        self.settled_for_done = true;
        self.table.release_slot(serial);
    }

    /// A process that never started is final at once: stop time set, captures
    /// frozen (empty), waiters answered.
    pub(super) fn settle_unstarted(&mut self, serial: u64) {
        let Some(proc) = self.table.get_mut(serial) else {
            return;
        };
        proc.life = Life::NotStarted;
        proc.settle(self.stat_ctx.as_ref());
        self.release_slot(serial);
        self.compress_captures(serial);
    }
}

/// Whether a pipe read that ended with `e` is worth arming again: out of
/// buffers, interrupted, or nothing to read yet.
fn read_again(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NOBUFS || e == rustix::io::Errno::INTR || e == rustix::io::Errno::AGAIN
}
