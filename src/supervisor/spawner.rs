//! Spawning threads beside the reactor, so several children can be in
//! `clone`/`execve` at once.
//!
//! A vfork-style clone suspends the calling thread until the child execs, and
//! exec (loading the program and its dynamic linker) is most of what a spawn
//! costs. With one spawning thread only one exec runs at a time whatever the
//! number of cores. The reactor hands each plan to the spawning thread with the
//! fewest plans held, up to [`DEPTH`] each, so execs overlap and a thread that
//! finishes a spawn goes straight on to its next plan while the reactor is busy
//! with exits; with every queue full the reactor spawns the plan itself. The
//! result comes back over a channel; the thread wakes the ring through the
//! mailbox's eventfd when it runs out of plans, and the reactor takes the
//! results before that at its next turn.
//!
//! With one plan per thread, a thread that finished a spawn slept until the
//! reactor got round to giving it another, and the reactor, having spawned
//! itself because no thread was idle, could be suspended in its vfork while
//! both threads went idle: a scheduler trace of 10,000 × `/bin/true` showed a
//! CPU idle for about 4% of the run, next to a spawning or the reactor
//! thread. The queues took 3,000 and 10,000 × `/bin/true` through `--print`
//! from 1.000 to 0.943 and 0.956 of the time (`ci/alternate`). Never letting
//! the reactor spawn (waiting for room instead) was slower than before:
//! 1.02×; a depth of 2 or 8 measured the same as 4.
//!
//! The threads live as long as the reactor: `PR_SET_PDEATHSIG` follows the thread
//! that created a child, so a spawning thread must never exit before the agent.
//! How many there are is `Config::spawn_threads` (default 2); with none, the
//! reactor spawns every plan itself.

use crate::sys::spawn::{ChildPlan, ChildStack, Spawned, spawn};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The outcome of a spawn a spawning thread made: the proc's serial and the result.
pub(crate) type Done = (u64, Result<Spawned, Errno>);

/// A plan for a spawning thread, with its proc's serial.
type Job = (u64, Box<ChildPlan>);

/// The most plans a spawning thread holds, the one it is spawning included.
/// Each holds its transient fds (a capture's pipe write end) until spawned.
pub(crate) const DEPTH: usize = 4;

/// One spawning thread: its job queue and how many of its jobs are not done.
struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Jobs sent and not yet spawned; the thread counts its own down.
    held: Arc<AtomicUsize>,
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
    /// Set when the spawner is dropped: plans still queued are dropped
    /// unspawned (no one would watch their children).
    stop: Arc<AtomicBool>,
}

impl Spawner {
    /// Starts the threads; each finished spawn is sent on `done` and `wake`
    /// is written so the reactor notices. With no threads, every plan is
    /// given back ([`Spawner::try_spawn`]).
    pub(crate) fn new(
        threads: usize,
        slice: Option<std::time::Duration>,
        done: mpsc::Sender<Done>,
        wake: Arc<OwnedFd>,
    ) -> std::io::Result<Spawner> {
        let mut spawner = Spawner {
            workers: Vec::with_capacity(threads),
            threads: Vec::with_capacity(threads),
            stop: Arc::new(AtomicBool::new(false)),
        };
        for _ in 0..threads {
            let (jobs, rx) = mpsc::channel::<Job>();
            let held = Arc::new(AtomicUsize::new(0));
            let (mine, done, wake) = (held.clone(), done.clone(), wake.clone());
            let stop = spawner.stop.clone();
            let mut stack = ChildStack::new()?;
            spawner.threads.push(
                std::thread::Builder::new()
                    .name("chaperone-spawn".into())
                    .spawn(move || {
                        if let Some(slice) = slice {
                            crate::sys::sched::set_thread_slice(slice);
                        }
                        for (serial, plan) in rx {
                            if stop.load(Ordering::Acquire) {
                                break;
                            }
                            let result = spawn(*plan, &mut stack);
                            if done.send((serial, result)).is_err() {
                                break;
                            }
                            // Wake the reactor once this thread has run out of
                            // plans (it may be waiting for this result, and
                            // takes any earlier ones with it).
                            if mine.fetch_sub(1, Ordering::AcqRel) == 1 {
                                let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                            }
                        }
                    })?,
            );
            spawner.workers.push(Worker { jobs, held });
        }
        Ok(spawner)
    }

    /// The thread with the fewest plans held, if it has room for one more.
    fn least_held(&self) -> Option<&Worker> {
        self.workers
            .iter()
            .map(|w| (w.held.load(Ordering::Acquire), w))
            .filter(|&(n, _)| n < DEPTH)
            .min_by_key(|&(n, _)| n)
            .map(|(_, w)| w)
    }

    /// Hands `plan` to the spawning thread with the fewest plans held; gives
    /// it back when there is no thread, every queue is full, or the thread is
    /// gone.
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
        self.stop.store(true, Ordering::Release);
        self.workers.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
