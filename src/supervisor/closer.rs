//! Closing fds off the reactor: a perf counter's `close` tears down the
//! counter and its inherited copies, some 30 µs for a process's six, which the
//! reactor would otherwise spend between one exit and the next spawn.
//!
//! The reactor gathers what it would close during one turn of its loop and
//! hands the lot to a thread before it blocks; the thread drops them. Should the
//! thread not start, fds are closed where they are (nothing is lost but time).

use rustix::fd::OwnedFd;
use std::sync::mpsc;

/// The closing thread's end, and the fds gathered for it this turn.
pub(crate) struct Closer {
    tx: Option<mpsc::Sender<Vec<OwnedFd>>>,
    pending: Vec<OwnedFd>,
}

impl Closer {
    pub(crate) fn new() -> Closer {
        let (tx, rx) = mpsc::channel::<Vec<OwnedFd>>();
        let started = std::thread::Builder::new()
            .name("chaperone-close".into())
            .spawn(move || {
                for fds in rx {
                    drop(fds);
                }
            });
        Closer {
            tx: started.ok().map(|_| tx),
            pending: Vec::new(),
        }
    }

    /// Closes `fds`, soon.
    pub(crate) fn close(&mut self, fds: Vec<OwnedFd>) {
        if self.tx.is_some() {
            self.pending.extend(fds);
        }
    }

    /// Hands what was gathered to the thread (one wake for the lot).
    pub(crate) fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let fds = std::mem::take(&mut self.pending);
        if let Some(tx) = &self.tx {
            // A thread that is gone gives the fds back in the error: they are
            // closed here as it drops.
            let _ = tx.send(fds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the pipe's write end is still open somewhere: a read of the
    /// (nonblocking) read end gives EAGAIN while it is, end of file after.
    fn writer_open(r: &OwnedFd) -> bool {
        let mut b = [0u8; 1];
        matches!(rustix::io::read(r, &mut b), Err(rustix::io::Errno::AGAIN))
    }

    #[test]
    fn gathered_fds_are_closed_after_a_flush_not_before() {
        let mut closer = Closer::new();
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        closer.close(vec![w]);
        assert!(writer_open(&r), "held until the flush");
        closer.flush();
        let t = std::time::Instant::now();
        while writer_open(&r) && t.elapsed().as_secs() < 5 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!writer_open(&r), "closed by the thread");
    }
}
