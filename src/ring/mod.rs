//! The reactor's plumbing above the raw drivers: which one it runs on
//! ([`Driver`]: io_uring, or epoll where io_uring cannot be used), and the
//! wake-up path from other threads.
//!
//! The control side (the embedding program or a front end's runtime) sends
//! commands over a channel and writes the eventfd; the reactor keeps a read of the
//! eventfd in its driver, so a command wakes it from `io_uring_enter` or
//! `epoll_wait`.

use rustix::event::{EventfdFlags, eventfd};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::sync::Arc;
use std::sync::mpsc;

pub use crate::sys::epoll::Poller;
pub use crate::sys::uring::{Cqe, Features, Ring, RingError};

mod driver;
pub use driver::{BackendChoice, Driver};

/// The sending half of a [`Mailbox`]: queue a message, then wake the reactor.
/// Clones share one channel sender, so dropping a clone costs nothing; the
/// last one to go wakes the reactor, which then sees the channel closed.
#[derive(Debug)]
pub struct Sender<M> {
    inner: Arc<SenderInner<M>>,
}

#[derive(Debug)]
struct SenderInner<M> {
    /// Always `Some` until drop, which must close the channel before waking.
    tx: Option<mpsc::Sender<M>>,
    wake: Arc<OwnedFd>,
}

impl<M> Clone for Sender<M> {
    fn clone(&self) -> Self {
        Sender {
            inner: self.inner.clone(),
        }
    }
}

impl<M> Sender<M> {
    /// Queues `msg` and wakes the reactor. Fails only once the reactor is gone.
    pub fn send(&self, msg: M) -> Result<(), M> {
        match &self.inner.tx {
            Some(tx) => tx.send(msg).map_err(|e| e.0)?,
            None => return Err(msg),
        }
        // An eventfd write fails only on counter overflow (EAGAIN), which still
        // leaves the reactor woken.
        let _ = rustix::io::write(&*self.inner.wake, &1u64.to_ne_bytes());
        Ok(())
    }
}

impl<M> Drop for SenderInner<M> {
    /// Wakes the reactor so it notices that the last sender is gone.
    fn drop(&mut self) {
        drop(self.tx.take());
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }
}

/// The receiving half, owned by the reactor thread.
#[derive(Debug)]
pub struct Mailbox<M> {
    rx: mpsc::Receiver<M>,
    /// The eventfd the reactor reads through its ring.
    pub wake: Arc<OwnedFd>,
}

impl<M> Mailbox<M> {
    /// Creates a connected sender and mailbox.
    pub fn new() -> Result<(Sender<M>, Mailbox<M>), Errno> {
        // Blocking on purpose: io_uring answers a read of an O_NONBLOCK file with
        // EAGAIN instead of waiting for it to become readable. Writes never block
        // (the counter would have to reach 2^64-1).
        let fd = Arc::new(eventfd(0, EventfdFlags::CLOEXEC)?);
        let (tx, rx) = mpsc::channel();
        Ok((
            Sender {
                inner: Arc::new(SenderInner {
                    tx: Some(tx),
                    wake: fd.clone(),
                }),
            },
            Mailbox { rx, wake: fd },
        ))
    }

    /// Takes one queued message without blocking; `Err(Disconnected)` once every
    /// sender is gone and nothing is left.
    pub fn try_recv(&self) -> Result<M, mpsc::TryRecvError> {
        self.rx.try_recv()
    }
}
