//! Starting processes: a start request's validation and its answer, the
//! queue behind `max_running` and the fds, building each process's plan, and
//! spawning it (on a spawning thread, or on the reactor).

use super::super::error::StartError;
use super::super::opener::{self, Opened};
use super::super::proc::{self, Life, PipeIn, PlanContext, Proc};
use super::super::types::{Event, ShutdownPolicy, ShutdownState};
use super::opening::{OPEN_PATIENCE, Opening};
use super::{Reactor, Tag, signal_proc};
use crate::spec::{self, Input, ProcId};
use crate::sys::spawn::{Spawned, spawn};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// A start request's reply, held until each of its procs has started or failed:
/// how many have not, the ids, the reply.
pub(super) type PendingStart = (
    usize,
    Vec<ProcId>,
    Box<dyn FnOnce(Result<Vec<ProcId>, StartError>) + Send>,
);

/// A process waiting to be launched: its spec, and the pipes of its request
/// (`pipe` fds between the request's processes).
pub(super) struct Queued {
    pub(super) serial: u64,
    pub(super) spec: Rc<spec::ProcSpec>,
    pipes: Rc<std::cell::RefCell<proc::RequestPipes>>,
    /// Its files, once the opener has opened them (`None`: not yet asked).
    pub(super) opened: Option<Vec<(usize, Opened)>>,
    /// Spawns that failed for want of an fd while nothing else held a slot.
    fd_retries: u8,
}

/// How long the reactor spawns before it serves completions, timers and
/// commands again.
const SPAWN_SLICE: std::time::Duration = std::time::Duration::from_millis(2);

/// How long a launch short of fds, with no process running to free any, waits
/// on the reactor for the closing thread to close what ended processes left
/// (perf counters take some µs each): only then, and bounded.
const CLOSE_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

impl Reactor {
    /// Validates a request and queues each of its processes; returns the
    /// request's number and its ids.
    pub(super) fn start(&mut self, input: Input) -> Result<(u64, Vec<ProcId>), StartError> {
        if self.shutdown != ShutdownState::Active {
            return Err(StartError::ShuttingDown(self.shutdown));
        }
        let table = &self.table;
        spec::validate_with_existing(&input, |id| table.contains_id(id))
            .map_err(StartError::Spec)?;
        let pipes = proc::request_pipes(&input)
            .map_err(|(id, msg)| StartError::Resource { proc_id: id, msg })?;
        let pipes = Rc::new(std::cell::RefCell::new(pipes));
        let request = self.next_request;
        self.next_request += 1;
        let mut started = Vec::with_capacity(input.specs.len());
        self.table.reserve(input.specs.len());
        self.queue.reserve(input.specs.len());
        for (id, ps) in input.specs {
            let mut proc = Proc::queued(id.clone(), request);
            proc.argv = Arc::from(ps.argv.as_slice());
            let serial = self.table.insert(proc);
            self.queue.push_back(Queued {
                serial,
                spec: Rc::new(ps),
                pipes: pipes.clone(),
                opened: None,
                fd_retries: 0,
            });
            started.push(id);
        }
        Ok((request, started))
    }

    /// Whether a queued process may be launched now. One with `pipe` fds to
    /// others of its request goes past `max_running`: its peers may be running
    /// and waiting for it (a full pipe), which a queue would deadlock.
    pub(super) fn may_launch(&self) -> bool {
        let Some(q) = self.queue.front() else {
            return false;
        };
        self.table.may_launch(|| has_request_pipes(&q.spec))
    }

    /// Whether a process that ran out of fds may wait for them in the queue:
    /// not while shutting down, and not with `pipe` fds (their ends were
    /// handed to this attempt and are gone with it).
    fn may_requeue(&self, q: &Queued) -> bool {
        self.shutdown == ShutdownState::Active && !has_request_pipes(&q.spec)
    }

    /// Launches queued processes for at most [`SPAWN_SLICE`], while
    /// `max_running` and the fds allow.
    pub(super) fn launch_queued(&mut self) {
        let until = Instant::now() + SPAWN_SLICE;
        while self.may_launch() && Instant::now() < until {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            self.launch(q);
        }
        if !self.queue.is_empty() && !self.may_launch() {
            self.answer_queued();
        }
    }

    /// The queue waits for `max_running` or fds: a start request need not wait
    /// for its queued processes to be launched, only for the ones launched to
    /// have pids. Counts the queued processes as done for their requests'
    /// answers, from the back of the queue (the newest) to the first already
    /// counted: everything ahead of it was counted before.
    fn answer_queued(&mut self) {
        let newest: Vec<u64> = self
            .queue
            .iter()
            .rev()
            .take_while(|q| {
                self.table
                    .get(q.serial)
                    .is_some_and(|p| p.request.is_some())
            })
            .map(|q| q.serial)
            .collect();
        for serial in newest {
            self.answer_request(serial);
        }
    }

    /// Builds the plan of a queued process and hands it to a spawning thread
    /// (or spawns it here when every one is full). A plan that ran out of fds
    /// goes back to the head of the queue while other processes hold fds that
    /// they will let go of.
    fn launch(&mut self, mut q: Queued) {
        let serial = q.serial;
        let Some(id) = self.table.get(serial).map(|p| p.id.clone()) else {
            return;
        };
        let ctx = PlanContext::new(
            &self.config,
            &self.env,
            self.cwd.as_deref(),
            &self.null_fds,
            self.fd_floor,
        );
        // Files are opened off this thread first (a FIFO's open may never end).
        if q.opened.is_none() {
            let opens = proc::opens_for(&id, &q.spec, &ctx);
            if !opens.is_empty() {
                match self.opener.submit(serial, opens) {
                    Ok(()) => {
                        let timer = q
                            .spec
                            .timeout
                            .as_ref()
                            .and_then(|t| std::time::Duration::try_from_secs_f64(t.after).ok())
                            .map(|after| {
                                self.ring.timeout(after, Tag::OpenTimeout { proc: serial })
                            });
                        let slow = Some(
                            self.ring
                                .timeout(OPEN_PATIENCE, Tag::OpenSlow { proc: serial }),
                        );
                        if let Some(p) = self.table.get_mut(serial) {
                            p.life = Life::Opening;
                        }
                        self.opening.insert(serial, Opening { q, timer, slow });
                        return;
                    }
                    // No opener thread could start: open here, as before.
                    Err(opens) => q.opened = Some(opener::open_all(opens)),
                }
            }
        }
        let opened = q.opened.take().unwrap_or_default();
        let mut prep = proc::prepare(
            &id,
            &q.spec,
            &ctx,
            &mut q.pipes.borrow_mut(),
            &mut self.env_cache,
            opened,
        );
        if prep.out_of_fds && self.may_requeue(&q) {
            let active = self.table.active();
            if active > 0 {
                tracing::debug!(%id, active, "out of fds: queued until some are freed");
                self.table.fds_ran_short();
                self.queue.push_front(q);
                self.answer_request(serial);
                return;
            }
            // Nothing running to free any, but fds of ended processes still
            // waiting to be closed: closed now, and it tries again.
            if self.closer.settle(CLOSE_PATIENCE) {
                tracing::debug!(%id, "out of fds: closed those pending, trying again");
                self.queue.push_front(q);
                self.answer_request(serial);
                return;
            }
        }
        if prep.out_of_fds {
            prep.errors
                .push(proc::out_of_fds_message(self.table.ended_capture_fds()));
        }
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        let (plan, exe) = p.launched(prep);
        match plan {
            Some(plan) => {
                self.table.take_slot(serial);
                // Execs overlap: the spawning thread with the fewest plans
                // takes this one. With every queue full (or no thread at
                // all, `spawn_threads` 0), the reactor spawns it and is
                // suspended until it execs.
                match self.spawner.try_spawn(serial, Box::new(plan)) {
                    Ok(()) => {
                        if let Some(p) = self.table.get_mut(serial) {
                            p.life = Life::Starting;
                        }
                        self.starting.insert(serial, (exe, q));
                    }
                    Err(plan) => {
                        let result = spawn(*plan, &mut self.stack);
                        self.spawned(serial, result, &exe, q);
                    }
                }
            }
            None => {
                self.settle_unstarted(serial);
                self.start_resolved(serial);
            }
        }
    }

    /// Process `serial` has started (it has a pid) or failed: tell
    /// subscribers, and answer its start request once that was the last of the
    /// request's processes to do so.
    pub(super) fn start_resolved(&mut self, serial: u64) {
        let Some(id) = self.table.get(serial).map(|p| p.id.clone()) else {
            return;
        };
        self.emit(Event::Started(id));
        self.answer_request(serial);
    }

    /// A signal for process `serial` if it has not started; `None` if it has
    /// (or never will), for the caller to signal it as a running one.
    ///
    /// Queued (behind `max_running` or the fds), a signal whose default
    /// action ends a process (`SIGTERM`, `SIGKILL`, `SIGINT` …) cancels it: it
    /// never starts, and its result says why; so it does while its files are
    /// being opened. Any other signal, one its spec ignores or blocks (which
    /// the process would have lived through), and any for a process being
    /// spawned, waits and is sent once it runs, as it would have been had it
    /// been running.
    pub(super) fn signal_unstarted(
        &mut self,
        serial: u64,
        signum: i32,
    ) -> Option<Result<(), crate::supervisor::ProcError>> {
        let life = &self.table.get(serial)?.life;
        let queued = match life {
            Life::Queued => true,
            // Opening its files: it never starts if the signal would have
            // ended it (as for a queued one: not if its spec ignores or
            // blocks the signal).
            Life::Opening
                if ends_by_default(signum)
                    && self
                        .opening
                        .get(&serial)
                        .is_some_and(|o| !spec_handles(&o.q.spec, signum)) =>
            {
                let name = crate::signal::signal_name(signum)
                    .map_or_else(|| signum.to_string(), str::to_string);
                self.abandon_opening(
                    serial,
                    format!("not started: signal {name} while opening its files"),
                );
                return Some(Ok(()));
            }
            // Opening, or being spawned: sent once it runs.
            Life::Starting | Life::Opening => false,
            _ => return None,
        };
        let at = self.queue.iter().position(|q| q.serial == serial);
        let cancels = queued
            && ends_by_default(signum)
            && at.is_some_and(|at| !spec_handles(&self.queue[at].spec, signum));
        let p = self.table.get_mut(serial)?;
        if !cancels {
            // A signal kept twice is sent twice, as it would have been; but
            // not without bound for a process that does not start.
            if p.pending_signals.len() < MAX_PENDING_SIGNALS {
                p.pending_signals.push(signum);
            }
            return Some(Ok(()));
        }
        if let Some(at) = at {
            self.queue.remove(at);
        }
        let name = crate::signal::signal_name(signum)
            .map_or_else(|| format!("signal {signum}"), str::to_owned);
        p.errors.push(format!(
            "not started: {name} while it waited to start (behind --max-running, or for fds)"
        ));
        self.settle_unstarted(serial);
        self.start_resolved(serial);
        Some(Ok(()))
    }

    /// The encoding of the capture named `norm` (a normalised fd name) that
    /// process `serial`'s spec asks for, if it has not started (queued, or
    /// opening its files): its captures are made when it launches.
    pub(super) fn unstarted_capture(&self, serial: u64, norm: &str) -> Option<spec::Encoding> {
        let spec = match self.table.get(serial)?.life {
            Life::Queued => &self.queue.iter().find(|q| q.serial == serial)?.spec,
            Life::Opening => &self.opening.get(&serial)?.q.spec,
            _ => return None,
        };
        spec.fds.iter().find_map(|(name, fs)| match fs {
            spec::FdSpec::Capture { encoding, .. }
                if spec::parse_fd_name(name).map(spec::fd_name).ok().as_deref() == Some(norm) =>
            {
                Some(*encoding)
            }
            _ => None,
        })
    }

    /// Counts process `serial` as done for its start request's answer, which
    /// goes out once every process of the request is.
    pub(super) fn answer_request(&mut self, serial: u64) {
        let Some(request) = self.table.get_mut(serial).and_then(|p| p.request.take()) else {
            return;
        };
        let Some((left, _, _)) = self.pending_starts.get_mut(&request) else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left == 0 {
            if let Some((_, ids, reply)) = self.pending_starts.remove(&request) {
                reply(Ok(ids));
            }
        }
    }

    /// Takes the outcome of a spawn: arms the exit wait, the pipe reads and the
    /// timeout of a started child, or records why it did not start.
    fn spawned(
        &mut self,
        serial: u64,
        result: Result<Spawned, rustix::io::Errno>,
        exe: &str,
        mut q: Queued,
    ) {
        // Out of fds, or of tasks (EAGAIN from clone): a process ending
        // frees a task as it frees fds, so it waits the same way.
        let out_of_fds = result.as_ref().is_err_and(|&e| proc::out_of_fds(e));
        let out_of_tasks = result.as_ref().is_err_and(|&e| proc::out_of_tasks(e));
        // With others holding slots, it waits for one of them to end; alone,
        // it is tried again a few times (what held the fds may be gone).
        let others = self.table.active() > 1;
        if (out_of_fds || out_of_tasks) && !others {
            // Alone: what the ended ones left to close goes first.
            self.closer.settle(CLOSE_PATIENCE);
        }
        let again = others || q.fd_retries < proc::ALONE_RETRIES;
        if (out_of_fds || out_of_tasks) && again && self.may_requeue(&q) {
            // No pidfd (or task) to be had now: start it again once one is
            // freed. Its captures (and their pipes) are made anew then.
            self.release_slot(serial);
            if others {
                self.table.fds_ran_short();
            } else {
                q.fd_retries += 1;
            }
            if let Some(p) = self.table.get_mut(serial) {
                let mut fresh = Proc::queued(p.id.clone(), 0);
                fresh.request = p.request;
                fresh.argv = p.argv.clone();
                fresh.pending_signals = std::mem::take(&mut p.pending_signals);
                fresh.waiters = std::mem::take(&mut p.waiters);
                fresh.final_waiters = std::mem::take(&mut p.final_waiters);
                *p = fresh;
            }
            self.queue.push_front(q);
            // Its request need not wait for it (see `answer_queued`).
            self.answer_request(serial);
            return;
        }
        // Counted before the proc is borrowed, for an out-of-fds error.
        let held = match result {
            Err(e) if proc::out_of_fds(e) => self.table.ended_capture_fds(),
            _ => 0,
        };
        let Some(proc) = self.table.get_mut(serial) else {
            return;
        };
        match result {
            Ok(child) => {
                let pidfd = proc.started(child, exe, self.fd_floor);
                // Asked for before it ran: sent now, in order.
                for signum in std::mem::take(&mut proc.pending_signals) {
                    if let Err(e) = super::signal_proc(proc, signum) {
                        tracing::debug!(id = %proc.id, signum, "a pending signal failed: {e}");
                    }
                }
                let key = self.ring.wait_exit(pidfd, Tag::Exit { proc: serial });
                tracing::debug!(serial, id = %proc.id, pid = ?proc.pid, key, "spawned");
                if let Some(t) = proc.timeout.as_mut() {
                    let tag = Tag::Timeout {
                        proc: serial,
                        kill: false,
                    };
                    t.timer = Some(self.ring.timeout(t.after, tag));
                }
                for (cap, c) in proc.captures.iter_mut().enumerate() {
                    if let Some(PipeIn {
                        fd: Some(fd),
                        read_key,
                        ..
                    }) = c.store.pipe_mut()
                    {
                        *read_key = Some(
                            self.ring
                                .read_multishot(fd.clone(), Tag::Pipe { proc: serial, cap }),
                        );
                    }
                }
            }
            Err(e) => {
                if e == rustix::io::Errno::CANCELED {
                    // Its thread had not spawned it when a shutdown gave up
                    // the queue (`unqueue_all`).
                    proc.errors.push(proc::NOT_STARTED_SHUTDOWN.to_string());
                } else {
                    proc.errors.extend(proc::spawn_failed(e, held));
                }
                proc.life = Life::NotStarted;
                self.settle_unstarted(serial);
            }
        }
        // Started while shutting down by terminate or kill (it was on a
        // spawning thread): it gets the policy's signal now.
        let late = match self.policy {
            Some(ShutdownPolicy::Kill) => Some(libc::SIGKILL),
            Some(ShutdownPolicy::Terminate { .. }) if self.kill_at.is_some() => Some(libc::SIGTERM),
            Some(ShutdownPolicy::Terminate { .. }) => Some(libc::SIGKILL),
            _ => None,
        };
        if let (Some(signum), Some(p)) = (late, self.table.get(serial)) {
            let _ = signal_proc(p, signum);
        }
        self.start_resolved(serial);
        self.arm_sampling();
    }

    /// Collects spawns the spawning threads finished.
    pub(super) fn drain_spawned(&mut self) {
        self.spawner.take_notice();
        while let Ok((serial, result)) = self.spawned_rx.try_recv() {
            if let Some((exe, q)) = self.starting.remove(&serial) {
                self.spawned(serial, result, &exe, q);
            }
        }
    }
}

/// Whether a spec has `pipe` fds to others of its request.
fn has_request_pipes(ps: &spec::ProcSpec) -> bool {
    ps.fds
        .iter()
        .any(|(_, fs)| matches!(fs, spec::FdSpec::PipeWrite | spec::FdSpec::PipeRead { .. }))
}

/// Signals kept for a process that has not started yet.
const MAX_PENDING_SIGNALS: usize = 64;

/// Whether a signal's default action ends a process (terminate, or core
/// dump), rather than being ignored, stopping or continuing it.
fn ends_by_default(signum: i32) -> bool {
    !matches!(
        signum,
        libc::SIGCHLD
            | libc::SIGCONT
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
    ) && signum > 0
}

/// Whether `spec` has its process ignore or block `signum` at exec.
fn spec_handles(spec: &spec::ProcSpec, signum: i32) -> bool {
    let s = &spec.signals;
    s.ignore
        .iter()
        .chain(&s.mask)
        .any(|r| r.number() == Some(signum))
}
