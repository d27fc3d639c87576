//! Closing fds off the reactor: a perf counter's `close` tears down the
//! counter and its inherited copies, some 30 µs for a process's six, which the
//! reactor would otherwise spend between one exit and the next spawn.
//!
//! The reactor gathers what it would close during one turn of its loop and
//! hands the lot to a thread before it blocks; the thread drops them. Should the
//! thread not start, fds are closed where they are (nothing is lost but time).

use rustix::fd::OwnedFd;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The closing thread's end, and the fds gathered for it this turn.
pub(crate) struct Closer {
    tx: Option<mpsc::Sender<Vec<OwnedFd>>>,
    pending: Vec<OwnedFd>,
    /// Fds handed to the thread and not yet closed.
    in_flight: Arc<InFlight>,
}

/// How many fds the thread has still to close, and whether someone waits for
/// none (so that the thread wakes a waiter only when there is one).
#[derive(Default)]
struct InFlight {
    count: Mutex<(usize, bool)>,
    none: Condvar,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, (usize, bool)> {
        self.count.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, n: usize) {
        self.lock().0 += n;
    }

    fn closed(&self, n: usize) {
        let mut c = self.lock();
        c.0 -= n;
        if c.0 == 0 && c.1 {
            self.none.notify_all();
        }
    }
}

impl Closer {
    pub(crate) fn new() -> Closer {
        let (tx, rx) = mpsc::channel::<Vec<OwnedFd>>();
        let in_flight = Arc::new(InFlight::default());
        let closed = in_flight.clone();
        let started = std::thread::Builder::new()
            .name("chaperone-close".into())
            .spawn(move || {
                for fds in rx {
                    let n = fds.len();
                    drop(fds);
                    closed.closed(n);
                }
            });
        Closer {
            tx: started.ok().map(|_| tx),
            pending: Vec::new(),
            in_flight,
        }
    }

    /// For a caller short of fds with nothing else to free them: closes what
    /// was gathered here and now, and waits, at most `patience`, for the
    /// thread to close what it was handed. Whether any fd was waiting to be
    /// closed (so that trying again may find one free).
    pub(crate) fn settle(&mut self, patience: Duration) -> bool {
        let gathered = !self.pending.is_empty();
        self.pending.clear();
        let mut c = self.in_flight.lock();
        let held = gathered || c.0 > 0;
        c.1 = true;
        let (mut c, _) = self
            .in_flight
            .none
            .wait_timeout_while(c, patience, |c| c.0 > 0)
            .unwrap_or_else(|e| e.into_inner());
        c.1 = false;
        held
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
            let n = fds.len();
            self.in_flight.add(n);
            // A thread that is gone gives the fds back in the error: they are
            // closed here as it drops.
            if tx.send(fds).is_err() {
                self.in_flight.closed(n);
            }
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

    /// Short of fds, a caller has every fd it handed over closed before it
    /// tries again, and learns whether there were any.
    #[test]
    fn settle_closes_what_was_gathered_and_handed_over() {
        let mut closer = Closer::new();
        assert!(!closer.settle(Duration::from_secs(5)), "nothing held");
        let (r1, w1) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        let (r2, w2) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        closer.close(vec![w1]);
        closer.flush();
        closer.close(vec![w2]);
        assert!(closer.settle(Duration::from_secs(5)));
        assert!(
            !writer_open(&r1),
            "handed over: closed by the thread before settle returned"
        );
        assert!(!writer_open(&r2), "gathered: closed here");
        assert!(!closer.settle(Duration::from_secs(5)), "nothing left");
    }
}
