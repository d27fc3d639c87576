//! A process's lifecycle: its [`Life`] from queued to reaped, the [`Proc`] in
//! the table, and settling it once it has exited.

use super::plan::Prepared;
use super::render::Snapshot;
use super::sample::Sampled;
use super::store::{Capture, Store};
use crate::metrics::procstat::{ProcStat, StatContext};
use crate::result::Rusage;
use crate::spec::ProcId;
use crate::sys::spawn::{ChildFailure, ChildPlan, Spawned};
use rustix::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Life of a process.
pub(crate) enum Life {
    /// Waiting for its turn to start (`Config::max_running`, or fds to free up).
    Queued,
    /// Never started: the plan failed in the parent (errors say why).
    NotStarted,
    /// Its files are being opened off the reactor (see `opener`).
    Opening,
    /// In a spawning thread's queue, being spawned, or spawned with its
    /// result not yet taken by the reactor.
    Starting,
    /// Running; waiting for exit.
    Running,
    /// Exited (a zombie, not yet reaped); its pipe reads are being cancelled.
    /// Their completions still carry its output, so its captures take bytes
    /// until the last read has ended; then the pipes are drained and it is
    /// reaped.
    Exiting,
    /// Exited, reaped, final.
    Done { status: i32, rusage: Rusage },
}

/// A process in the table.
pub(crate) struct Proc {
    pub id: ProcId,
    pub pid: Option<i32>,
    pub pidfd: Option<Rc<OwnedFd>>,
    pub life: Life,
    pub errors: Vec<String>,
    pub failure: Option<ChildFailure>,
    pub start: SystemTime,
    pub start_mono: Instant,
    /// Set once it is settled: when its exit was seen (so `elapsed` is the
    /// process's, not the time its last output took to land).
    pub stop: Option<(SystemTime, Instant)>,
    /// When its exit was seen.
    pub exited_at: Option<(SystemTime, Instant)>,
    pub proc_stat: Option<ProcStat>,
    /// fd name → capture index, in spec order; `None` for uncaptured fds.
    pub fds: Vec<(String, Option<usize>)>,
    pub captures: Vec<Capture>,
    /// Callers waiting for this process to finish.
    pub waiters: Vec<Box<dyn FnOnce(Snapshot) + Send>>,
    /// Callers waiting for it to finish and its compressions too
    /// ([`Proc::is_final`]).
    pub final_waiters: Vec<Box<dyn FnOnce(Snapshot) + Send>>,
    /// The start state the child was given (result extensions).
    pub started_with: StartInfo,
    /// The spec's timeout and what it has done.
    pub timeout: Option<TimeoutState>,
    /// Whether signals go to the whole process group.
    pub kill_group: bool,
    /// perf counters, when the spec (or the agent's default) asks for them.
    pub perf: Option<crate::metrics::perf::PerfState>,
    /// What sampling `/proc` while it runs has seen.
    pub sampled: Sampled,
    /// Whether it counts against `Config::max_running`: from its launch until it
    /// is settled (it holds fds all that time).
    pub holds_slot: bool,
    /// The start request it belongs to, until it has started or failed.
    pub request: Option<u64>,
    /// Signals asked for before it ran (while it was being spawned, or queued
    /// with a signal that does not end it): sent once it runs.
    pub pending_signals: Vec<i32>,
    /// The spec's argv, for overviews.
    pub argv: Arc<[String]>,
}

/// The start state a child was given, reported in its result.
#[derive(Clone, Debug, Default)]
pub(crate) struct StartInfo {
    pub cwd: Option<String>,
    pub umask: Option<u32>,
    /// Shared between processes that got the same environment (see
    /// `Reactor::launch`): a thousand children of one spec hold one map.
    pub env: Option<Arc<std::collections::BTreeMap<String, String>>>,
}

/// A process's timeout: the plan, and what has happened.
#[derive(Clone, Debug)]
pub(crate) struct TimeoutState {
    /// The key of the pending timer op, if one is armed.
    pub timer: Option<u64>,
    pub after: std::time::Duration,
    pub signum: i32,
    pub kill_after: Option<std::time::Duration>,
    pub fired_at: Option<SystemTime>,
    pub killed: bool,
}

impl TimeoutState {
    /// The timeout `t`, with nothing done yet.
    pub fn new(t: crate::control::Timeout) -> TimeoutState {
        TimeoutState {
            timer: None,
            after: t.after,
            signum: t.signum,
            kill_after: t.kill_after,
            fired_at: None,
            killed: false,
        }
    }

    /// The timeout of `spec`, fired now, before the process could start (it
    /// timed out opening its files): its signal had nothing to go to.
    pub fn fired_unstarted(spec: &crate::spec::TimeoutSpec) -> Option<TimeoutState> {
        let mut t = TimeoutState::new(crate::control::Timeout::of(spec)?);
        t.fired_at = Some(SystemTime::now());
        Some(t)
    }
}

impl Proc {
    /// A process of a start request, queued until it can be launched.
    pub fn queued(id: ProcId, request: u64) -> Proc {
        Proc {
            id,
            pid: None,
            pidfd: None,
            life: Life::Queued,
            errors: Vec::new(),
            failure: None,
            start: SystemTime::now(),
            start_mono: Instant::now(),
            stop: None,
            exited_at: None,
            proc_stat: None,
            fds: Vec::new(),
            captures: Vec::new(),
            waiters: Vec::new(),
            final_waiters: Vec::new(),
            started_with: StartInfo::default(),
            timeout: None,
            kill_group: false,
            sampled: Sampled::default(),
            perf: None,
            holds_slot: false,
            argv: Arc::from([]),
            request: Some(request),
            pending_signals: Vec::new(),
        }
    }

    /// Takes what plan building made for it and starts its clock; gives back
    /// the plan (for the spawn) and the exe (for its failure messages).
    pub fn launched(&mut self, mut prep: Prepared) -> (Option<ChildPlan>, String) {
        let plan = prep.plan.take();
        let exe = std::mem::take(&mut prep.exe);
        self.started_with = std::mem::take(&mut prep.started_with);
        self.errors = prep.errors;
        self.fds = prep.fds;
        self.captures = prep.captures;
        self.timeout = prep.timeout;
        self.kill_group = prep.kill_group;
        self.perf = prep.perf;
        self.start = SystemTime::now();
        self.start_mono = Instant::now();
        (plan, exe)
    }

    /// Takes a child that was cloned: its perf counters (closed unread if it
    /// failed before exec), its failure, pid and pidfd; it is now running.
    /// Long-lived fds are moved to `floor` or above (see `sys::fd::move_high`).
    /// Returns the pidfd, to wait on.
    pub fn started(&mut self, mut child: Spawned, exe: &str, floor: RawFd) -> Rc<OwnedFd> {
        if let Some(perf) = self.perf.as_mut() {
            if child.failure.is_some() {
                // Its counters close with `child.perf`, never read.
                perf.never_ran("no counts: the child failed before exec");
            } else {
                let fds = std::mem::take(&mut child.perf)
                    .into_iter()
                    .map(|r| r.map(|fd| crate::sys::fd::move_high(fd, floor)));
                perf.attach(fds.collect());
            }
        }
        if let Some(f) = child.failure {
            self.errors.push(super::failure_message(&f, exe));
            self.failure = Some(f);
        }
        self.pid = Some(child.pid.as_raw_nonzero().get());
        let pidfd = Rc::new(crate::sys::fd::move_high(child.pidfd, floor));
        self.pidfd = Some(pidfd.clone());
        self.life = Life::Running;
        pidfd
    }

    /// The process has exited (not yet reaped): stamps the time, reads the
    /// zombie's `/proc` `stat` and `io` when `read_proc` gives the context and
    /// a buffer, and reads its final perf counts (its exited children's
    /// folded in), handing back the counters' fds for the caller to close.
    pub fn exited(&mut self, read_proc: Option<(&StatContext, &mut Vec<u8>)>) -> Vec<OwnedFd> {
        self.stamp_exit();
        if let Some((ctx, buf)) = read_proc {
            if let Some(pid) = self.pid {
                self.proc_stat = super::read_stat(pid, ctx, buf).or(self.proc_stat.take());
            }
            // Still readable for the zombie: its final I/O counts.
            self.read_io(buf);
        }
        self.perf.as_mut().map(|p| p.finish()).unwrap_or_default()
    }

    /// Stamps the time its exit was seen, unless already stamped (a caller
    /// with work to do between the exit and [`Proc::exited`] stamps it first).
    pub fn stamp_exit(&mut self) {
        if self.exited_at.is_none() {
            self.exited_at = Some((SystemTime::now(), Instant::now()));
        }
    }

    /// Reaps the exited process through its pidfd, with its rusage, and lets
    /// go of the pidfd (closed then unless the caller holds it too: a
    /// thousand finished results must not hold a thousand fds). A failed
    /// `waitid` is said in its errors, and gives false.
    pub fn reap(&mut self) -> bool {
        let fd = self.pidfd.take();
        self.record_end(fd.map(|fd| crate::sys::wait::reap(&*fd)))
    }

    /// As [`Proc::reap`], but leaves the zombie unreaped and gives its pidfd
    /// back, to reap it with later: until then its pid, which is its process
    /// group's id, cannot be taken by another process, so the group can still
    /// be signalled safely. `None` (the pidfd let go) if `waitid` failed.
    pub fn end_unreaped(&mut self) -> Option<Rc<OwnedFd>> {
        let Some(fd) = self.pidfd.take() else {
            self.record_end(None);
            return None;
        };
        self.record_end(Some(crate::sys::wait::peek(&*fd)))
            .then_some(fd)
    }

    /// The process is `Done` with what `waitid` found (`None`: no pidfd).
    fn record_end(
        &mut self,
        waited: Option<Result<crate::sys::wait::Reaped, rustix::io::Errno>>,
    ) -> bool {
        let reaped = match waited {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                self.errors.push(format!("waitid failed: {e}"));
                None
            }
            None => None,
        };
        let ok = reaped.is_some();
        let (status, rusage) = reaped.map_or((-1, Default::default()), |r| (r.status, r.rusage));
        self.life = Life::Done {
            status,
            rusage: Rusage::from_raw(&rusage),
        };
        ok
    }

    pub fn is_running(&self) -> bool {
        matches!(self.life, Life::Running | Life::Starting)
    }

    /// Whether its captures still take pipe bytes: running, or exited with a
    /// pipe read still to end ([`Life::Exiting`]).
    pub fn takes_output(&self) -> bool {
        self.is_running() || matches!(self.life, Life::Exiting)
    }

    /// Whether any capture has a pipe read in flight.
    pub fn reading(&self) -> bool {
        self.captures
            .iter()
            .any(|c| c.store.pipe().is_some_and(|p| p.read_key.is_some()))
    }

    /// Not yet settled: running, exiting, or exited and reaped with kept-file
    /// writes still in flight. Waiters wait, delete is refused.
    pub fn is_busy(&self) -> bool {
        self.takes_output()
            || matches!(self.life, Life::Queued | Life::Opening)
            || (matches!(self.life, Life::Done { .. }) && self.stop.is_none())
    }

    /// Settled, with no compression still pending: nothing in its result will
    /// change.
    pub fn is_final(&self) -> bool {
        !self.is_busy() && !self.captures.iter().any(Capture::compression_pending)
    }

    /// Answers the callers of [`Agent::wait_compressed`](crate::Agent::wait_compressed)
    /// once the process [is final](Proc::is_final).
    pub fn answer_final_waiters(&mut self, stat_ctx: Option<&StatContext>) {
        if self.final_waiters.is_empty() || !self.is_final() {
            return;
        }
        let snap = self.snapshot(stat_ctx);
        answer_each(std::mem::take(&mut self.final_waiters), snap);
    }

    /// Whether every kept file of this process holds all the bytes taken for it.
    pub fn kept_idle(&self) -> bool {
        self.captures.iter().all(|c| match &c.store {
            Store::Kept { file, .. } => file.idle(),
            _ => true,
        })
    }

    /// Makes a process that is no longer running final: stop time, memory
    /// captures frozen (pipes dropped), waiters answered.
    pub fn settle(&mut self, stat_ctx: Option<&StatContext>) {
        self.settle_quietly();
        self.answer_waiters(stat_ctx);
    }

    /// [`Proc::settle`] but for its waiters, who are answered later by
    /// [`Proc::answer_waiters`] (the reactor starts the next queued process
    /// first: a sequential run's waiter is on its critical path otherwise).
    pub fn settle_quietly(&mut self) {
        self.stop = Some(
            self.exited_at
                .unwrap_or_else(|| (SystemTime::now(), Instant::now())),
        );
        for cap in self.captures.iter_mut() {
            match &mut cap.store {
                Store::Memory {
                    pipe, live, frozen, ..
                } => {
                    pipe.fd = None;
                    *frozen = Some(Arc::new(std::mem::take(live).freeze()));
                }
                Store::Kept { pipe, file } => {
                    pipe.fd = None;
                    file.release_buffers();
                    // Complete: a thousand finished results must not hold a
                    // thousand fds. A compression still needs it (and then
                    // replaces it).
                    if cap.compression.is_none() {
                        file.close();
                    }
                }
                Store::Tempfile { .. } => {}
            }
        }
    }

    /// Answers everyone waiting for this process to end, with one snapshot.
    pub fn answer_waiters(&mut self, stat_ctx: Option<&StatContext>) {
        let waiters = std::mem::take(&mut self.waiters);
        if !waiters.is_empty() {
            let snap = self.snapshot(stat_ctx);
            answer_each(waiters, snap);
        }
    }
}

/// Answers every waiter with `snap`: a copy each, the last one the snapshot
/// itself (one waiter, the usual case, costs no copy).
fn answer_each(waiters: Vec<Box<dyn FnOnce(Snapshot) + Send>>, snap: Snapshot) {
    let mut waiters = waiters.into_iter().peekable();
    while let Some(w) = waiters.next() {
        if waiters.peek().is_none() {
            w(snap);
            return;
        }
        w(snap.clone());
    }
}
