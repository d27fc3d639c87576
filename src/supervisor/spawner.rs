//! Spawning threads beside the reactor, so several children can be in
//! `clone`/`execve` at once.
//!
//! A vfork-style clone suspends the calling thread until the child execs, and
//! exec (loading the program and its dynamic linker) is most of what a spawn
//! costs. With one spawning thread only one exec runs at a time whatever the
//! number of cores. The reactor hands a plan to an idle spawning thread, or
//! spawns it itself when every one is busy, so execs overlap; the result comes
//! back over a channel and wakes the ring through the mailbox's eventfd. Two threads
//! measured a little better than one on two cores (interleaved rounds: 0.86x
//! instead of 0.78x std::process::Command on two threads, 1.15x instead of 1.09x
//! tokio::process), the reactor then rarely being suspended in a vfork itself.
//!
//! The threads live as long as the reactor: `PR_SET_PDEATHSIG` follows the thread
//! that created a child, so a spawning thread must never exit before the agent.
//! How many there are is `Config::spawn_threads` (default 2).

use crate::sys::spawn::{ChildPlan, ChildStack, Spawned, spawn};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The outcome of a spawn a spawning thread made: the proc's serial and the result.
pub(crate) type Done = (u64, Result<Spawned, Errno>);

/// A plan for a spawning thread, with its proc's serial.
type Job = (u64, Box<ChildPlan>);

/// The most spawning threads (one bit each in the idle mask).
const MAX_THREADS: usize = 64;

/// The spawning threads, each with its own job queue.
///
/// Each thread waits on a channel of its own and the reactor hands a plan
/// only to a thread whose bit is set in `idle`, so a job wakes exactly the
/// thread that takes it. (One queue shared behind a mutex woke two: the
/// thread holding the lock while it waited, then the other, which was
/// blocked on the lock and went back to wait on the queue.)
pub(crate) struct Spawner {
    jobs: Vec<mpsc::Sender<Job>>,
    /// Bit `i` set: thread `i` has no job.
    idle: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the threads (at most 64); each finished spawn is sent on
    /// `done` and `wake` is written so the reactor notices.
    /// With no threads, every plan is given back ([`Spawner::try_spawn`]).
    pub(crate) fn new(
        threads: usize,
        slice: Option<std::time::Duration>,
        done: mpsc::Sender<Done>,
        wake: Arc<OwnedFd>,
    ) -> std::io::Result<Spawner> {
        let count = threads.min(MAX_THREADS);
        let idle = Arc::new(AtomicU64::new(0));
        let mut spawner = Spawner {
            jobs: Vec::with_capacity(count),
            idle: idle.clone(),
            threads: Vec::with_capacity(count),
        };
        for i in 0..count {
            let (jobs, rx) = mpsc::channel::<Job>();
            let (mine, done, wake) = (idle.clone(), done.clone(), wake.clone());
            let bit = 1u64 << i;
            let mut stack = ChildStack::new()?;
            spawner.threads.push(
                std::thread::Builder::new()
                    .name("chaperone-spawn".into())
                    .spawn(move || {
                        if let Some(slice) = slice {
                            crate::sys::sched::set_thread_slice(slice);
                        }
                        for (serial, plan) in rx {
                            let result = spawn(*plan, &mut stack);
                            mine.fetch_or(bit, Ordering::AcqRel);
                            if done.send((serial, result)).is_err() {
                                break;
                            }
                            let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                        }
                    })?,
            );
            spawner.jobs.push(jobs);
            idle.fetch_or(bit, Ordering::AcqRel);
        }
        Ok(spawner)
    }

    /// Hands `plan` to an idle spawning thread; gives it back if none is idle.
    pub(crate) fn try_spawn(
        &self,
        serial: u64,
        plan: Box<ChildPlan>,
    ) -> Result<(), Box<ChildPlan>> {
        let mut idle = self.idle.load(Ordering::Acquire);
        let i = loop {
            if idle == 0 {
                return Err(plan);
            }
            let i = idle.trailing_zeros();
            match self.idle.compare_exchange_weak(
                idle,
                idle & !(1u64 << i),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break i,
                Err(now) => idle = now,
            }
        };
        let Some(jobs) = self.jobs.get(i as usize) else {
            return Err(plan);
        };
        jobs.send((serial, plan)).map_err(|e| {
            // The thread is gone: it stays marked busy, and never gets a job again.
            e.0.1
        })
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.jobs.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
