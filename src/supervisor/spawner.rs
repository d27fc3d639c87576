//! Spawning threads beside the reactor, so several children can be in
//! `clone`/`execve` at once.
//!
//! A vfork-style clone suspends the calling thread until the child execs, and
//! exec (loading the program and its dynamic linker) is most of what a spawn
//! costs. With one spawning thread only one exec runs at a time whatever the
//! number of cores. The reactor hands each plan to the spawning thread with the
//! fewest plans held, up to [`DEPTH`] each, so execs overlap and a thread that
//! finishes a spawn goes straight on to its next plan while the reactor is busy
//! with exits; with every queue full the reactor spawns the plan itself. A
//! thread whose spawn has taken longer than [`STUCK`] (an exec on a hung
//! filesystem, say) gets no more plans meanwhile. Each result comes back over
//! a channel, and the thread wakes the ring through the mailbox's eventfd
//! unless a wake-up is already pending: at most one per reactor turn
//! ([`Spawner::take_notice`]).
//!
//! With one plan per thread, a thread that finished a spawn slept until the
//! reactor got round to giving it another, and the reactor, having spawned
//! itself because no thread was idle, could be suspended in its vfork while
//! both threads went idle: a scheduler trace of 10,000 × `/bin/true` showed a
//! CPU idle for about 4% of the run, next to a spawning or the reactor
//! thread. The queues took 3,000 and 10,000 × `/bin/true` through `--print`
//! to about 0.95 of the time (`ci/alternate`). Never letting the reactor spawn
//! (waiting for room instead) was slower than before, 1.02–1.08×; a depth of 2
//! or 8 measured the same as 4.
//!
//! Plans still queued when a shutdown gives up the queue (`Terminate`, `Kill`)
//! are not spawned: [`Spawner::cancel_queued`] has their threads answer
//! `ECANCELED` instead.
//!
//! The threads live as long as the reactor: `PR_SET_PDEATHSIG` follows the thread
//! that created a child, so a spawning thread must never exit before the agent.
//! How many there are is `Config::spawn_threads` (default 2); with none, the
//! reactor spawns every plan itself.

use crate::sys::spawn::{ChildPlan, ChildStack, Spawned, spawn};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The outcome of a spawn a spawning thread made: the proc's serial and the result.
pub(crate) type Done = (u64, Result<Spawned, Errno>);

/// A plan for a spawning thread, with its proc's serial.
type Job = (u64, Box<ChildPlan>);

/// The most plans a spawning thread holds, the one it is spawning included.
/// Each holds its transient fds (a capture's pipe write end) until spawned.
pub(crate) const DEPTH: usize = 4;

/// The most spawning threads.
const MAX_THREADS: usize = 64;

/// A spawn running longer than this keeps further plans off its thread.
pub(crate) const STUCK: Duration = Duration::from_millis(5);

/// One spawning thread: its job queue, how many of its jobs are not done,
/// and since when its current spawn runs.
struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Jobs sent and not yet answered; the thread counts its own down.
    held: Arc<AtomicUsize>,
    /// When the spawn under way began (nanoseconds since `Shared::base`,
    /// plus 1); 0 between spawns.
    since: Arc<AtomicU64>,
}

/// What the spawning threads and the reactor share.
struct Shared {
    /// A wake-up was written and the reactor has not drained the results
    /// since ([`Spawner::take_notice`]).
    notified: AtomicBool,
    /// Plans not yet spawned are answered `ECANCELED` ([`Spawner::cancel_queued`]).
    cancel: AtomicBool,
    /// The spawner is dropped: plans still queued are dropped unspawned (no
    /// one would watch their children).
    stop: AtomicBool,
    base: Instant,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }
}

/// The spawning threads, each with its own job queue.
///
/// Each thread waits on a channel of its own, so a job wakes exactly the
/// thread that takes it. (One queue shared behind a mutex woke two: the
/// thread holding the lock while it waited, then the other, which was
/// blocked on the lock and went back to wait on the queue.)
pub(crate) struct Spawner {
    workers: Vec<Worker>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Spawner {
    /// Starts the threads (at most 64); each finished spawn is sent on
    /// `done`, and `wake` written unless a wake-up is pending. With no
    /// threads, every plan is given back ([`Spawner::try_spawn`]).
    pub(crate) fn new(
        threads: usize,
        slice: Option<Duration>,
        done: mpsc::Sender<Done>,
        wake: Arc<OwnedFd>,
    ) -> std::io::Result<Spawner> {
        let threads = threads.min(MAX_THREADS);
        let mut spawner = Spawner {
            workers: Vec::with_capacity(threads),
            threads: Vec::with_capacity(threads),
            shared: Arc::new(Shared {
                notified: AtomicBool::new(false),
                cancel: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                base: Instant::now(),
            }),
        };
        for _ in 0..threads {
            let (jobs, rx) = mpsc::channel::<Job>();
            let held = Arc::new(AtomicUsize::new(0));
            let since = Arc::new(AtomicU64::new(0));
            let (my_held, my_since) = (held.clone(), since.clone());
            let (shared, done, wake) = (spawner.shared.clone(), done.clone(), wake.clone());
            let mut stack = ChildStack::new()?;
            spawner.threads.push(
                std::thread::Builder::new()
                    .name("chaperone-spawn".into())
                    .spawn(move || {
                        if let Some(slice) = slice {
                            crate::sys::sched::set_thread_slice(slice);
                        }
                        for (serial, plan) in rx {
                            if shared.stop.load(Ordering::Acquire) {
                                break;
                            }
                            let result = if shared.cancel.load(Ordering::Acquire) {
                                drop(plan);
                                Err(Errno::CANCELED)
                            } else {
                                my_since.store(shared.now(), Ordering::Release);
                                let result = spawn(*plan, &mut stack);
                                my_since.store(0, Ordering::Release);
                                result
                            };
                            if done.send((serial, result)).is_err() {
                                break;
                            }
                            my_held.fetch_sub(1, Ordering::AcqRel);
                            // One wake-up per drain: the reactor clears the
                            // flag before it looks at the channel, so a result
                            // sent before a skipped write is seen then.
                            if !shared.notified.swap(true, Ordering::AcqRel) {
                                let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                            }
                        }
                    })?,
            );
            spawner.workers.push(Worker { jobs, held, since });
        }
        Ok(spawner)
    }

    /// To call before draining `done`: clears the pending wake-up, so that
    /// a result sent after the drain writes a new one.
    pub(crate) fn take_notice(&self) {
        self.shared.notified.swap(false, Ordering::AcqRel);
    }

    /// Plans not yet spawned are answered `ECANCELED` from now on (a
    /// shutdown that gives up the queue).
    pub(crate) fn cancel_queued(&self) {
        self.shared.cancel.store(true, Ordering::Release);
    }

    /// The thread with the fewest plans held, if it has room for one more.
    fn least_held(&self) -> Option<&Worker> {
        let stuck = u64::try_from(STUCK.as_nanos()).unwrap_or(u64::MAX);
        let now = self.shared.now();
        self.workers
            .iter()
            .filter(|w| {
                let since = w.since.load(Ordering::Acquire);
                since == 0 || now.saturating_sub(since) < stuck
            })
            .map(|w| (w.held.load(Ordering::Acquire), w))
            .filter(|&(n, _)| n < DEPTH)
            .min_by_key(|&(n, _)| n)
            .map(|(_, w)| w)
    }

    /// Hands `plan` to the spawning thread with the fewest plans held (none
    /// stuck in a spawn); gives it back when there is no such thread, every
    /// queue is full, or the thread is gone.
    pub(crate) fn try_spawn(
        &self,
        serial: u64,
        plan: Box<ChildPlan>,
    ) -> Result<(), Box<ChildPlan>> {
        let Some(w) = self.least_held() else {
            return Err(plan);
        };
        w.held.fetch_add(1, Ordering::AcqRel);
        w.jobs.send((serial, plan)).map_err(|e| {
            // The thread is gone: it stays full, and never gets a job again.
            w.held.store(usize::MAX / 2, Ordering::Release);
            e.0.1
        })
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.workers.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::spawn::CStringArray;
    use std::time::Duration;

    fn plan(argv: &[&str]) -> Box<ChildPlan> {
        let env = Arc::new(CStringArray::new(Vec::<Vec<u8>>::new()).unwrap());
        Box::new(
            ChildPlan::with_env(
                std::ffi::OsStr::new(argv[0]),
                argv.iter().map(|a| a.as_bytes().to_vec()),
                env,
            )
            .unwrap(),
        )
    }

    fn spawner(threads: usize) -> (Spawner, mpsc::Receiver<Done>, OwnedFd) {
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .unwrap();
        let dup = rustix::io::fcntl_dupfd_cloexec(&wake, 0).unwrap();
        let (tx, rx) = mpsc::channel();
        (
            Spawner::new(threads, None, tx, Arc::new(dup)).unwrap(),
            rx,
            wake,
        )
    }

    /// The eventfd's count of wake-ups since the last call (0: none).
    fn wakes(fd: &OwnedFd) -> u64 {
        let mut buf = [0u8; 8];
        match rustix::io::read(fd, &mut buf) {
            Ok(_) => u64::from_ne_bytes(buf),
            Err(rustix::io::Errno::AGAIN) => 0,
            Err(e) => panic!("eventfd read: {e}"),
        }
    }

    /// Reaps a spawned child so that the test leaves no zombie.
    fn reap(s: &Spawned) {
        crate::sys::wait::reap(&s.pidfd).expect("reap");
    }

    #[test]
    fn with_no_thread_every_plan_is_given_back() {
        let (sp, _rx, _wake) = spawner(0);
        assert!(sp.try_spawn(1, plan(&["/bin/true"])).is_err());
    }

    #[test]
    fn a_thread_takes_up_to_depth_plans_and_answers_each_with_at_least_one_wake() {
        let (sp, rx, wake) = spawner(1);
        for serial in 0..DEPTH as u64 {
            // Given back only while a spawn runs past STUCK: offer it again.
            let mut p = plan(&["/bin/true"]);
            let t0 = std::time::Instant::now();
            while let Err(back) = sp.try_spawn(serial, p) {
                assert!(t0.elapsed() < Duration::from_secs(10), "never taken");
                std::thread::sleep(Duration::from_millis(1));
                p = back;
            }
        }
        let mut got: Vec<u64> = (0..DEPTH)
            .map(|_| {
                let (serial, r) = rx.recv_timeout(Duration::from_secs(10)).expect("result");
                reap(&r.expect("spawned"));
                serial
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..DEPTH as u64).collect::<Vec<_>>());
        assert!(wakes(&wake) >= 1, "the reactor is woken");
        // Drained: the next result writes a new wake-up.
        sp.take_notice();
        sp.try_spawn(9, plan(&["/bin/true"])).unwrap();
        let (serial, r) = rx.recv_timeout(Duration::from_secs(10)).expect("result");
        assert_eq!(serial, 9);
        reap(&r.expect("spawned"));
        // The write follows the send; wait for it briefly.
        let t0 = std::time::Instant::now();
        let mut n = 0;
        while n == 0 && t0.elapsed() < Duration::from_secs(5) {
            n = wakes(&wake);
            std::thread::yield_now();
        }
        assert_eq!(n, 1, "one wake-up for the result after the drain");
    }

    #[test]
    fn plans_after_cancel_queued_are_answered_ecanceled_unspawned() {
        let (sp, rx, _wake) = spawner(2);
        sp.cancel_queued();
        // A plan given back (every queue full) is the reactor's to spawn.
        let handed = (0..6)
            .filter(|&serial| sp.try_spawn(serial, plan(&["/bin/true"])).is_ok())
            .count();
        assert!(handed >= 1);
        let mut answered = 0;
        while let Ok((_, r)) = rx.recv_timeout(Duration::from_millis(500)) {
            assert_eq!(r.err(), Some(Errno::CANCELED));
            answered += 1;
        }
        assert_eq!(answered, handed, "every plan handed over is answered");
    }
}
