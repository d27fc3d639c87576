//! The reactor's side of the command protocol ([`Command`]): draining the
//! mailbox and answering each command from the process table.

use super::super::command::{Command, StartAnswer};
use super::super::error::{FdDataError, ProcError};
use super::super::outlimit;
use super::super::proc::{self, Proc, Snapshot};
use super::super::status;
use super::super::types::{Event, FdWaited, ShutdownState};
use super::waiters::DataWaiter;
use super::{Reactor, signal_proc};
use crate::spec::{self, ProcId};
use std::sync::mpsc::TryRecvError;

impl Reactor {
    /// Handles queued commands; returns true once every sender is gone.
    pub(super) fn drain_mailbox(&mut self) -> bool {
        loop {
            match self.mailbox.try_recv() {
                Ok(Command::Close { leave_table }) => {
                    self.leave_table = leave_table;
                    return true;
                }
                Ok(cmd) => self.command(cmd),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Once closed (the agent is being dropped), refuses what other handles
    /// still send: a command dropped unanswered answers its caller with its
    /// "shut down" value at once, not when the last process has ended.
    pub(super) fn refuse_mailbox(&mut self) {
        while let Ok(cmd) = self.mailbox.try_recv() {
            drop(cmd);
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Start(input, answer, reply) => match self.start(input) {
                // Answered once every proc of the request has a pid, has
                // failed, or waits in the queue behind `max_running`: callers
                // may signal or query a started one at once.
                Ok((request, ids)) if !ids.is_empty() && answer == StartAnswer::Launched => {
                    self.pending_starts.insert(request, (ids.len(), ids, reply));
                }
                Ok((_, ids)) => reply(Ok(ids)),
                Err(e) => reply(Err(e)),
            },
            Command::Result(id, reply) => {
                let snap = self
                    .table
                    .serial(&id)
                    .and_then(|s| self.table.get_mut(s))
                    .map(|p| p.snapshot(self.stat_ctx.as_ref()));
                reply(snap);
            }
            Command::ResultBrief(id, reply) => {
                let snap = self
                    .table
                    .serial(&id)
                    .and_then(|s| self.table.get_mut(s))
                    .map(|p| p.snapshot_with(self.stat_ctx.as_ref(), true));
                reply(snap);
            }
            Command::Results(reply) => {
                let ctx = self.stat_ctx.as_ref();
                // Sorted as references, then snapshotted in order: a snapshot
                // is several hundred bytes, and sorting the snapshots moved
                // each about log2(n) times (a quarter of 10,000 results' cost).
                let mut procs: Vec<&mut _> = self.table.values_mut().collect();
                procs.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                let out: Vec<(ProcId, Snapshot)> = procs
                    .into_iter()
                    .map(|p| (p.id.clone(), p.snapshot(ctx)))
                    .collect();
                reply(out);
            }
            Command::ResultsOf(ids, reply) => {
                let ctx = self.stat_ctx.as_ref();
                let out: Vec<(ProcId, Snapshot)> = ids
                    .into_iter()
                    .filter_map(|id| {
                        let p = self.table.serial(&id).and_then(|s| self.table.get_mut(s))?;
                        let snap = p.snapshot(ctx);
                        Some((id, snap))
                    })
                    .collect();
                reply(out);
            }
            Command::Overview(select, reply) => reply(self.overview(select)),
            Command::History(id, reply) => {
                let points = self
                    .table
                    .serial(&id)
                    .and_then(|s| self.table.get(s))
                    .map(|p| {
                        p.sampled
                            .history
                            .as_ref()
                            .map(|h| h.points())
                            .unwrap_or_default()
                    });
                reply(points);
            }
            Command::Ids(reply) => reply(self.table.ids()),
            Command::Wait(id, compressed, reply) => {
                let ctx = self.stat_ctx.as_ref();
                match self.table.serial(&id).and_then(|s| self.table.get_mut(s)) {
                    None => reply(None),
                    Some(p) if compressed && !p.is_final() => {
                        p.final_waiters.push(Box::new(move |s| reply(Some(s))));
                    }
                    Some(p) if p.is_busy() => p.waiters.push(Box::new(move |s| reply(Some(s)))),
                    Some(p) => reply(Some(p.snapshot(ctx))),
                }
            }
            Command::WaitAll(reply) => {
                self.all_waiters.push(reply);
                self.settled = true;
                self.answer_all_waiters();
            }
            Command::Signal(id, signum, reply) => {
                // Not running yet: cancelled, or kept for when it runs.
                if let Some(r) = self
                    .table
                    .serial(&id)
                    .and_then(|s| self.signal_unstarted(s, signum))
                {
                    reply(r);
                    return;
                }
                let r = match self.table.serial(&id).and_then(|s| self.table.get(s)) {
                    None => Err(ProcError::Unknown(id)),
                    Some(p) => signal_proc(p, signum).map_err(|e| {
                        if e == rustix::io::Errno::SRCH {
                            ProcError::NoProcess(id.clone())
                        } else {
                            ProcError::Signal(e.into())
                        }
                    }),
                };
                reply(r);
            }
            Command::FdData(id, fd, (start, stop), reply) => {
                let serial = self.table.serial(&id);
                let r = match serial.and_then(|s| self.table.get(s)) {
                    None => Err(FdDataError::Unknown(id)),
                    Some(p) => {
                        let norm = spec::parse_fd_name(&fd)
                            .map(spec::fd_name)
                            .unwrap_or(fd.clone());
                        let found = p.captures.iter().find(|c| c.name == norm);
                        let unstarted = serial.filter(|_| found.is_none()).and_then(|s| {
                            // Not started yet (queued, or opening its files):
                            // a capture its spec names holds nothing so far.
                            self.unstarted_capture(s, &norm)
                        });
                        match (found, unstarted) {
                            (Some(c), _) => Ok((c.range(start, stop), c.encoding)),
                            (None, Some(encoding)) => Ok((
                                proc::Content::Counts {
                                    len: 0,
                                    dropped: None,
                                    held: 0,
                                    limited: false,
                                },
                                encoding,
                            )),
                            // Procstar's wording names the number: "no fd: 2".
                            (None, None) => Err(FdDataError::NoFd(
                                spec::parse_fd_name(&fd).map_or(fd, |n| n.to_string()),
                            )),
                        }
                    }
                };
                reply(r);
            }
            Command::FdWait(id, fd, offset, deadline, reply) => {
                let found = match self.table.serial(&id).map(|s| (s, self.table.get(s))) {
                    Some((s, Some(p))) => {
                        let norm = spec::parse_fd_name(&fd)
                            .map(spec::fd_name)
                            .unwrap_or(fd.clone());
                        match p.captures.iter().position(|c| c.name == norm) {
                            Some(cap) => Ok((s, Some(cap), norm)),
                            // Not started yet: waits for the capture its spec
                            // names to be made, as `FdData` reads it empty.
                            None if self.unstarted_capture(s, &norm).is_some() => {
                                Ok((s, None, norm))
                            }
                            None => Err(FdDataError::NoFd(
                                spec::parse_fd_name(&fd).map_or(fd, |n| n.to_string()),
                            )),
                        }
                    }
                    _ => Err(FdDataError::Unknown(id.clone())),
                };
                match found {
                    Err(e) => reply(Err(e)),
                    Ok((serial, cap, name)) => {
                        // A process deleted while its reader waits answers
                        // Unknown with its id.
                        let reply = Box::new(move |r: Result<FdWaited, FdDataError>| {
                            reply(r.map_err(|e| match e {
                                FdDataError::Unknown(_) => FdDataError::Unknown(id),
                                e => e,
                            }))
                        });
                        self.data_waiters.push(DataWaiter {
                            serial,
                            cap,
                            name,
                            offset,
                            deadline,
                            reply,
                        });
                    }
                }
            }
            Command::Delete(id, reply) => {
                if let Some(s) = self
                    .table
                    .serial(&id)
                    .filter(|s| self.opening.contains_key(s))
                {
                    self.abandon_opening(s, "not started: deleted while opening its files".into());
                }
                let r = match self.table.serial(&id) {
                    None => Err(ProcError::Unknown(id)),
                    Some(s) => {
                        if self.table.get(s).is_some_and(Proc::is_busy) {
                            Err(ProcError::Running(id))
                        } else {
                            // Settled this turn but not yet announced
                            // (`answer_settled` would find it gone): its
                            // waiters and its Exited come first.
                            if let Some(at) = self.unanswered.iter().position(|&u| u == s) {
                                self.unanswered.remove(at);
                                self.announce_exit(s);
                            }
                            if let Some(mut p) = self.table.remove(s) {
                                p.answer_waiters(self.stat_ctx.as_ref());
                                outlimit::forget(self.budget.as_mut(), s, &p);
                            }
                            self.settled_for_done = true;
                            self.emit(Event::Deleted(id));
                            Ok(())
                        }
                    }
                };
                reply(r);
            }
            Command::Subscribe(shared) => self.subscribers.push(shared),
            Command::Close { .. } => {}
            Command::Shutdown(policy, reply) => {
                self.begin_shutdown(policy);
                reply(());
            }
            Command::State(reply) => reply(self.shutdown),
            Command::WaitDone(reply) if self.shutdown == ShutdownState::Done => reply(()),
            Command::WaitDone(reply) => {
                self.done_waiters.push(reply);
                self.settled_for_done = true;
                self.check_done();
            }
        }
    }

    /// The table in brief (see [`status`]): rows built from
    /// what is held, without `/proc` reads or copies of output.
    fn overview(&mut self, select: status::Select) -> status::Overview {
        use status::Select;
        self.generation += 1;
        let mut counts = status::Counts::default();
        for p in self.table.values() {
            counts.add(p.phase());
            counts.spawning += usize::from(matches!(p.life, proc::Life::Starting));
        }
        let mut rows: Vec<status::Row> = match select {
            Select::All => self.table.values().map(Proc::row).collect(),
            Select::Live => self
                .table
                .values()
                .filter(|p| p.phase().is_live())
                .map(Proc::row)
                .collect(),
            Select::Ids(ids) => ids
                .iter()
                .filter_map(|id| self.table.serial(id))
                .filter_map(|s| self.table.get(s))
                .map(Proc::row)
                .collect(),
            Select::None => Vec::new(),
        };
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        let f = self.ring.features();
        status::Overview {
            generation: self.generation,
            rows,
            counts,
            output_held: self.budget.as_ref().map(|b| b.held()),
            output_limit: self.budget.as_ref().map(|b| b.limit()),
            shutdown_state: self.shutdown,
            backend: status::Backend {
                name: self.ring.name(),
                waitid: f.waitid,
                read_multishot: f.read_multishot,
                buf_ring_inc: f.buf_ring_inc,
            },
        }
    }
}
