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
//! filesystem, say) gets no more plans meanwhile; those it already holds (at
//! most three) wait for it, and cannot be cancelled until it returns. Each
//! result comes back over a channel, and the thread wakes the ring through the
//! mailbox's eventfd unless a wake-up is already pending: at most one per
//! reactor turn ([`Spawner::take_notice`]).
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
//! Plans still queued when a shutdown gives up the queue (`Terminate`, `Kill`),
//! or when the spawner is dropped, are not spawned: [`Spawner::cancel_queued`]
//! has their threads answer `ECANCELED` instead.
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

/// One spawning thread, as the reactor sees it: its job queue and its counts.
struct Worker {
    jobs: mpsc::Sender<Job>,
    counts: Arc<Counts>,
}

/// What a spawning thread reports of itself.
#[derive(Default)]
struct Counts {
    /// Jobs sent and not yet answered; the thread counts its own down.
    held: AtomicUsize,
    /// When the spawn under way began (nanoseconds since `Shared::base`,
    /// plus 1); 0 between spawns.
    since: AtomicU64,
}

/// What the spawning threads and the reactor share.
struct Shared {
    /// A wake-up was written and the reactor has not drained the results
    /// since ([`Spawner::take_notice`]).
    notified: AtomicBool,
    /// Plans not yet spawned are answered `ECANCELED` ([`Spawner::cancel_queued`],
    /// and when the spawner is dropped: no one would watch their children).
    cancel: AtomicBool,
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

/// A spawning thread's side: its counts, what it shares, where results go.
struct End {
    counts: Arc<Counts>,
    shared: Arc<Shared>,
    done: mpsc::Sender<Done>,
    wake: Arc<OwnedFd>,
}

impl End {
    /// Spawns the plans of `rx` in order until it closes, sending each
    /// result on `done`.
    fn work(&self, rx: mpsc::Receiver<Job>, stack: &mut ChildStack) {
        for (serial, plan) in rx {
            let result = if self.shared.cancel.load(Ordering::Acquire) {
                drop(plan);
                Err(Errno::CANCELED)
            } else {
                self.counts
                    .since
                    .store(self.shared.now(), Ordering::Release);
                let result = spawn(*plan, stack);
                self.counts.since.store(0, Ordering::Release);
                result
            };
            if self.done.send((serial, result)).is_err() {
                break;
            }
            self.counts.held.fetch_sub(1, Ordering::AcqRel);
            // One wake-up per drain: the reactor clears the flag before it
            // looks at the channel, so a result sent before a skipped write
            // is seen then.
            if !self.shared.notified.swap(true, Ordering::AcqRel) {
                let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
            }
        }
    }
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
                base: Instant::now(),
            }),
        };
        for _ in 0..threads {
            let (jobs, rx) = mpsc::channel::<Job>();
            let worker = Worker {
                jobs,
                counts: Arc::default(),
            };
            let end = End {
                counts: worker.counts.clone(),
                shared: spawner.shared.clone(),
                done: done.clone(),
                wake: wake.clone(),
            };
            let mut stack = ChildStack::new()?;
            spawner.threads.push(
                std::thread::Builder::new()
                    .name("chaperone-spawn".into())
                    .spawn(move || {
                        if let Some(slice) = slice {
                            crate::sys::sched::set_thread_slice(slice);
                        }
                        end.work(rx, &mut stack);
                    })?,
            );
            spawner.workers.push(worker);
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
                let since = w.counts.since.load(Ordering::Acquire);
                since == 0 || now.saturating_sub(since) < stuck
            })
            .map(|w| (w.counts.held.load(Ordering::Acquire), w))
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
        w.counts.held.fetch_add(1, Ordering::AcqRel);
        w.jobs.send((serial, plan)).map_err(|e| {
            // The thread is gone: it stays full, and never gets a job again.
            w.counts.held.store(usize::MAX / 2, Ordering::Release);
            e.0.1
        })
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.cancel_queued();
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

    fn eventfd() -> OwnedFd {
        rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .unwrap()
    }

    fn shared(base: Instant) -> Arc<Shared> {
        Arc::new(Shared {
            notified: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            base,
        })
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

    /// A spawner with workers whose queues nothing reads: what `try_spawn`
    /// decides, without threads taking the plans away meanwhile.
    fn idle_workers(since: &[u64], base: Instant) -> (Spawner, Vec<mpsc::Receiver<Job>>) {
        let mut rxs = Vec::new();
        let workers = since
            .iter()
            .map(|&at| {
                let (jobs, rx) = mpsc::channel();
                rxs.push(rx);
                let counts = Counts::default();
                counts.since.store(at, Ordering::Release);
                Worker {
                    jobs,
                    counts: Arc::new(counts),
                }
            })
            .collect();
        let sp = Spawner {
            workers,
            threads: Vec::new(),
            shared: shared(base),
        };
        (sp, rxs)
    }

    #[test]
    fn with_no_thread_every_plan_is_given_back() {
        let (sp, _rxs) = idle_workers(&[], Instant::now());
        assert!(sp.try_spawn(1, plan(&["/bin/true"])).is_err());
    }

    #[test]
    fn plans_go_to_the_least_held_thread_up_to_depth_each_then_come_back() {
        let (sp, rxs) = idle_workers(&[0, 0], Instant::now());
        for serial in 0..2 * DEPTH as u64 {
            assert!(
                sp.try_spawn(serial, plan(&["/bin/true"])).is_ok(),
                "{serial}"
            );
        }
        assert!(
            sp.try_spawn(99, plan(&["/bin/true"])).is_err(),
            "every queue is full"
        );
        // Alternately, the fewest held first: serials 0, 2, 4 … to the first.
        let first: Vec<u64> = rxs[0].try_iter().map(|(s, _)| s).collect();
        let second: Vec<u64> = rxs[1].try_iter().map(|(s, _)| s).collect();
        assert_eq!(first, (0..DEPTH as u64).map(|i| 2 * i).collect::<Vec<_>>());
        assert_eq!(
            second,
            (0..DEPTH as u64).map(|i| 2 * i + 1).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_thread_stuck_in_a_spawn_gets_no_more_plans() {
        // Thread 0's spawn began at the base, 100 ms ago; thread 1's is
        // later than any now.
        let base = Instant::now()
            .checked_sub(Duration::from_millis(100))
            .expect("a clock past 100 ms");
        let (sp, rxs) = idle_workers(&[1, u64::MAX], base);
        for serial in 0..DEPTH as u64 {
            assert!(sp.try_spawn(serial, plan(&["/bin/true"])).is_ok());
        }
        assert!(
            sp.try_spawn(9, plan(&["/bin/true"])).is_err(),
            "the stuck one is not used"
        );
        assert_eq!(rxs[0].try_iter().count(), 0);
        assert_eq!(rxs[1].try_iter().count(), DEPTH);
    }

    /// A thread's side with `n` plans of `/bin/true` queued and their
    /// sender closed: its results, its wake-up eventfd and its queue.
    fn queued_end(n: u64) -> (End, mpsc::Receiver<Done>, Arc<OwnedFd>, mpsc::Receiver<Job>) {
        let wake = Arc::new(eventfd());
        let (tx, done) = mpsc::channel();
        let (jobs, rx) = mpsc::channel();
        let counts = Counts::default();
        counts
            .held
            .store(usize::try_from(n).unwrap(), Ordering::Release);
        let end = End {
            counts: Arc::new(counts),
            shared: shared(Instant::now()),
            done: tx,
            wake: wake.clone(),
        };
        for serial in 0..n {
            jobs.send((serial, plan(&["/bin/true"]))).unwrap();
        }
        (end, done, wake, rx)
    }

    #[test]
    fn a_thread_answers_each_plan_and_wakes_once_per_drain() {
        let (end, done, wake, rx) = queued_end(3);
        end.work(rx, &mut ChildStack::new().unwrap());
        let got: Vec<u64> = done
            .try_iter()
            .map(|(serial, r)| {
                crate::sys::wait::reap(&r.expect("spawned").pidfd).expect("reap");
                serial
            })
            .collect();
        assert_eq!(got, [0, 1, 2], "in order, each answered");
        assert_eq!(end.counts.held.load(Ordering::Acquire), 0);
        assert_eq!(
            wakes(&wake),
            1,
            "one wake-up for three results: no drain between"
        );
        // After a drain, the next result wakes the reactor again.
        end.shared.notified.swap(false, Ordering::AcqRel);
        let (jobs, rx) = mpsc::channel();
        jobs.send((3, plan(&["/bin/true"]))).unwrap();
        drop(jobs);
        end.counts.held.store(1, Ordering::Release);
        end.work(rx, &mut ChildStack::new().unwrap());
        let (serial, r) = done.try_recv().expect("answered");
        assert_eq!(serial, 3);
        crate::sys::wait::reap(&r.expect("spawned").pidfd).expect("reap");
        assert_eq!(wakes(&wake), 1);
    }

    #[test]
    fn plans_queued_before_cancel_queued_are_answered_ecanceled_unspawned() {
        let (end, done, _wake, rx) = queued_end(3);
        end.shared.cancel.store(true, Ordering::Release);
        end.work(rx, &mut ChildStack::new().unwrap());
        let got: Vec<_> = done.try_iter().collect();
        assert_eq!(got.len(), 3);
        assert!(
            got.iter()
                .all(|(_, r)| r.as_ref().err() == Some(&Errno::CANCELED))
        );
    }

    #[test]
    fn spawner_threads_spawn_and_answer_what_they_are_given() {
        let wake = eventfd();
        let (tx, done) = mpsc::channel();
        let sp = Spawner::new(
            2,
            None,
            tx,
            Arc::new(rustix::io::fcntl_dupfd_cloexec(&wake, 0).unwrap()),
        )
        .unwrap();
        let mut handed = Vec::new();
        for serial in 0..6 {
            if sp.try_spawn(serial, plan(&["/bin/true"])).is_ok() {
                handed.push(serial);
            }
        }
        assert!(!handed.is_empty());
        let mut got: Vec<u64> = handed
            .iter()
            .map(|_| {
                let (serial, r) = done
                    .recv_timeout(Duration::from_secs(30))
                    .expect("answered");
                crate::sys::wait::reap(&r.expect("spawned").pidfd).expect("reap");
                serial
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, handed);
        assert!(wakes(&wake) >= 1);
        drop(sp);
        assert!(
            matches!(done.try_recv(), Err(mpsc::TryRecvError::Disconnected)),
            "no answer beyond the plans handed over"
        );
    }
}
