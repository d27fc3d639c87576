//! A second spawning thread, so two children can be in `clone`/`execve` at once.
//!
//! A vfork-style clone suspends the calling thread until the child execs, and
//! exec (loading the program and its dynamic linker) is most of what a spawn
//! costs. With one spawning thread only one exec runs at a time whatever the
//! number of cores. The reactor hands a plan to this thread when it is idle and
//! spawns the next one itself, so two execs overlap; the result comes back over a
//! channel and wakes the ring through the mailbox's eventfd.
//!
//! The thread lives as long as the reactor: `PR_SET_PDEATHSIG` follows the thread
//! that created a child, so a spawning thread must never exit before the agent.

use crate::sys::spawn::{ChildPlan, ChildStack, Spawned, spawn};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The outcome of a spawn the thread made: the proc's serial and the result.
pub(crate) type Done = (u64, Result<Spawned, Errno>);

/// The spawning thread and its job queue.
pub(crate) struct Spawner {
    jobs: Option<mpsc::Sender<(u64, Box<ChildPlan>)>>,
    idle: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the thread; each finished spawn is sent on `done` and `wake` is
    /// written so the reactor notices.
    pub(crate) fn new(done: mpsc::Sender<Done>, wake: Arc<OwnedFd>) -> std::io::Result<Spawner> {
        let (jobs, rx) = mpsc::channel::<(u64, Box<ChildPlan>)>();
        let idle = Arc::new(AtomicBool::new(true));
        let flag = idle.clone();
        let mut stack = ChildStack::new()?;
        let thread = std::thread::Builder::new()
            .name("chaperone-spawn".into())
            .spawn(move || {
                for (serial, plan) in rx {
                    let result = spawn(*plan, &mut stack);
                    flag.store(true, Ordering::Release);
                    if done.send((serial, result)).is_err() {
                        break;
                    }
                    let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                }
            })?;
        Ok(Spawner {
            jobs: Some(jobs),
            idle,
            thread: Some(thread),
        })
    }

    /// Hands `plan` to the thread if it is idle; gives it back otherwise.
    pub(crate) fn try_spawn(
        &self,
        serial: u64,
        plan: Box<ChildPlan>,
    ) -> Result<(), Box<ChildPlan>> {
        let Some(jobs) = self.jobs.as_ref() else {
            return Err(plan);
        };
        if !self.idle.swap(false, Ordering::AcqRel) {
            return Err(plan);
        }
        jobs.send((serial, plan)).map_err(|e| {
            self.idle.store(true, Ordering::Release);
            e.0.1
        })
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
