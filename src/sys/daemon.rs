//! Leaving the caller's session (`--spool DIR --detach`): one `fork`, at
//! start, while the process has a single thread, so that the agent goes on
//! in a session of its own after the command that started it (an SSH
//! session, a terminal) has returned.
//!
//! This is the only fork in chaperone, and it forks the agent itself, once,
//! before anything is spawned: children are still spawned without forking.
//! The parent waits on a pipe for the child's word that the processes have
//! started (see [`Detached`]), passes it on and exits; the child calls
//! `setsid`, so no hangup of the old session or terminal reaches it or its
//! processes.

use rustix::fd::AsRawFd;
use std::io::{Read, Write};

/// Which side of the fork this is.
#[derive(Debug)]
pub enum Detached {
    /// The process that was started: it waits for [`Parent::wait`] and
    /// exits.
    Parent(Parent),
    /// The agent, in its own session: it sends [`Child::ready`] once its
    /// processes have started.
    Child(Child),
}

/// The waiting side.
#[derive(Debug)]
pub struct Parent {
    ready: std::fs::File,
    pid: i32,
}

/// The agent's side.
#[derive(Debug)]
pub struct Child {
    ready: Option<std::fs::File>,
}

/// What the parent learned.
#[derive(Debug, PartialEq, Eq)]
pub enum Word {
    /// The agent is running; its message (the running-state results).
    Ready(Vec<u8>),
    /// The agent failed before it got there; its message.
    Failed(Vec<u8>),
    /// The agent ended without a word, with this wait status.
    Died(i32),
}

/// Forks, after checking that the process has one thread (a fork of a
/// process with other threads could copy a lock one of them holds). The
/// child's standard input and output become `/dev/null` and its standard
/// error `log` (else `/dev/null`) at once, so neither it nor any process it
/// starts holds the session's streams: an SSH session ends when the parent
/// does.
pub fn detach(log: Option<&std::fs::File>) -> std::io::Result<Detached> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "cannot detach: the process has {threads} threads already"
        )));
    }
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // SAFETY: the process is single-threaded (checked above), so the child
    // of this fork is a whole copy of it and may run any code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(r);
            rustix::process::setsid()?;
            redirect_stdio(log)?;
            Ok(Detached::Child(Child {
                ready: Some(std::fs::File::from(w)),
            }))
        }
        pid => {
            drop(w);
            Ok(Detached::Parent(Parent {
                ready: std::fs::File::from(r),
                pid,
            }))
        }
    }
}

/// Points fds 0 and 1 at `/dev/null` and fd 2 at `log` (else `/dev/null`).
fn redirect_stdio(log: Option<&std::fs::File>) -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err_target = log.map_or(null.as_raw_fd(), AsRawFd::as_raw_fd);
    for (from, to) in [
        (null.as_raw_fd(), 0),
        (null.as_raw_fd(), 1),
        (err_target, 2),
    ] {
        // SAFETY: `from` is an open fd for the duration of the call and `to`
        // is one of the standard fds; dup2 replaces it atomically.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Parent {
    /// Waits for the agent's word.
    pub fn wait(mut self) -> Word {
        let mut msg = Vec::new();
        let _ = self.ready.read_to_end(&mut msg);
        match msg.split_first() {
            Some((b'R', rest)) => Word::Ready(rest.to_vec()),
            Some((_, rest)) => Word::Failed(rest.to_vec()),
            None => {
                let mut status = 0;
                // SAFETY: `status` is a valid out-pointer; `pid` is our child.
                let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
                Word::Died(if r == self.pid { status } else { -1 })
            }
        }
    }
}

impl Child {
    /// Tells the parent the agent is running, with `msg`.
    pub fn ready(&mut self, msg: &[u8]) -> std::io::Result<()> {
        if let Some(mut w) = self.ready.take() {
            w.write_all(b"R")?;
            w.write_all(msg)?;
        }
        Ok(())
    }

    /// Tells the parent the agent failed, with `msg`.
    pub fn failed(&mut self, msg: &str) {
        if let Some(mut w) = self.ready.take() {
            let _ = w.write_all(b"E");
            let _ = w.write_all(msg.as_bytes());
        }
    }
}
