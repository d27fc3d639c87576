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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The outcome of a spawn a spawning thread made: the proc's serial and the result.
pub(crate) type Done = (u64, Result<Spawned, Errno>);

/// The spawning threads and their job queue.
pub(crate) struct Spawner {
    jobs: Option<mpsc::Sender<(u64, Box<ChildPlan>)>>,
    idle: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the threads; each finished spawn is sent on `done` and `wake` is
    /// written so the reactor notices.
    /// With no threads, every plan is given back ([`Spawner::try_spawn`]).
    pub(crate) fn new(
        threads: usize,
        done: mpsc::Sender<Done>,
        wake: Arc<OwnedFd>,
    ) -> std::io::Result<Spawner> {
        let (jobs, rx) = mpsc::channel::<(u64, Box<ChildPlan>)>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let count = threads;
        let idle = Arc::new(AtomicUsize::new(count));
        let mut threads = Vec::with_capacity(count);
        for _ in 0..count {
            let (rx, idle, done, wake) = (rx.clone(), idle.clone(), done.clone(), wake.clone());
            let mut stack = ChildStack::new()?;
            threads.push(
                std::thread::Builder::new()
                    .name("chaperone-spawn".into())
                    .spawn(move || {
                        loop {
                            let job = match rx.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => break,
                            };
                            let Ok((serial, plan)) = job else { break };
                            let result = spawn(*plan, &mut stack);
                            idle.fetch_add(1, Ordering::AcqRel);
                            if done.send((serial, result)).is_err() {
                                break;
                            }
                            let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                        }
                    })?,
            );
        }
        Ok(Spawner {
            jobs: Some(jobs),
            idle,
            threads,
        })
    }

    /// Hands `plan` to an idle spawning thread; gives it back if none is idle.
    pub(crate) fn try_spawn(
        &self,
        serial: u64,
        plan: Box<ChildPlan>,
    ) -> Result<(), Box<ChildPlan>> {
        let Some(jobs) = self.jobs.as_ref() else {
            return Err(plan);
        };
        if self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(plan);
        }
        jobs.send((serial, plan)).map_err(|e| {
            self.idle.fetch_add(1, Ordering::AcqRel);
            e.0.1
        })
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
