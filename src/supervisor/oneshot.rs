//! A one-value channel whose receiving half is a [`Future`] for any executor
//! and can also be waited on by a blocking thread: the reply path of every
//! [`Handle`](super::Handle) call. The core runs no async runtime; a waker is
//! all it needs from one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// The value will never come: the agent dropped the request (it is shutting
/// down, or its reactor is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the agent dropped the request (shut down)")]
pub struct Canceled;

enum State<T> {
    /// Nothing yet; the waker of the task that polled last, if any.
    Empty(Option<Waker>),
    Full(T),
    /// Taken by the receiver, or the sender went away without a value.
    Done,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    /// A thread sleeps in [`Receiver::wait`]; read and written only with
    /// `state` locked. Without one, settling makes no `futex` call (a condvar
    /// wakes with a system call whether or not anyone waits, and the reactor
    /// settles several of these per process).
    sleeping: AtomicBool,
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock leaves a valid state: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the state to `next` and wakes whoever waits.
    fn settle(&self, next: State<T>) {
        let (waker, sleeping) = {
            let mut s = self.lock();
            let waker = match std::mem::replace(&mut *s, next) {
                State::Empty(w) => w,
                // Sent already (the drop after a send): keep the value.
                other => {
                    *s = other;
                    None
                }
            };
            (waker, self.sleeping.load(Ordering::Relaxed))
        };
        if sleeping {
            self.ready.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The sending half: [`Sender::send`] once, or drop it to cancel.
pub struct Sender<T> {
    inner: Option<Arc<Inner<T>>>,
}

/// The receiving half: `.await` it, or [`Receiver::wait`] on a blocking thread.
pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

/// A connected pair.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State::Empty(None)),
        ready: Condvar::new(),
        sleeping: AtomicBool::new(false),
    });
    (
        Sender {
            inner: Some(inner.clone()),
        },
        Receiver { inner },
    )
}

impl<T> Sender<T> {
    /// Hands `value` to the receiver (dropped if the receiver is gone).
    pub fn send(mut self, value: T) {
        if let Some(inner) = self.inner.take() {
            inner.settle(State::Full(value));
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.settle(State::Done);
        }
    }
}

impl<T> Receiver<T> {
    /// Blocks the calling thread until the value comes (or never will).
    pub fn wait(self) -> Result<T, Canceled> {
        let mut s = self.inner.lock();
        loop {
            match std::mem::replace(&mut *s, State::Done) {
                State::Full(v) => return Ok(v),
                State::Done => return Err(Canceled),
                empty @ State::Empty(_) => {
                    *s = empty;
                    // Set with the lock held, which `wait` lets go of only as
                    // it sleeps: a settle that comes later sees it.
                    self.inner.sleeping.store(true, Ordering::Relaxed);
                    s = self.inner.ready.wait(s).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.inner.lock();
        match std::mem::replace(&mut *s, State::Done) {
            State::Full(v) => Poll::Ready(Ok(v)),
            State::Done => Poll::Ready(Err(Canceled)),
            State::Empty(w) => {
                let w = match w {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                *s = State::Empty(Some(w));
                Poll::Pending
            }
        }
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("oneshot::Receiver")
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("oneshot::Sender")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<T>(rx: &mut Receiver<T>, waker: &Waker) -> Poll<Result<T, Canceled>> {
        Pin::new(rx).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_sent_value_wakes_the_poller_and_is_ready() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let (tx, mut rx) = channel();
        assert!(poll(&mut rx, &waker).is_pending());
        std::thread::spawn(move || tx.send(7))
            .join()
            .expect("sender");
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Ok(7)));
    }

    #[test]
    fn a_dropped_sender_cancels_both_ways_of_waiting() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let (tx, mut rx) = channel::<u8>();
        assert!(poll(&mut rx, &waker).is_pending());
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut rx, &waker), Poll::Ready(Err(Canceled)));
        let (tx, rx) = channel::<u8>();
        let t = std::thread::spawn(move || rx.wait());
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(tx);
        assert_eq!(t.join().expect("waiter"), Err(Canceled));
    }

    /// A send racing a wait that is about to sleep is never lost: the waiter
    /// either sees the value or is woken (the send skips the wake-up when no
    /// one sleeps). 20,000 races, each with the sender on another thread.
    #[test]
    fn no_wake_up_is_lost_when_send_races_wait() {
        let (jobs, rx) = std::sync::mpsc::channel::<Sender<u32>>();
        let sender = std::thread::spawn(move || {
            for (i, tx) in rx.into_iter().enumerate() {
                if i % 3 == 0 {
                    std::thread::yield_now();
                }
                tx.send(u32::try_from(i).unwrap_or(0));
            }
        });
        // The waits run on a thread of their own, so that a lost wake-up
        // fails the test (the deadline below) instead of hanging it.
        let (finished, done) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            for i in 0..20_000u32 {
                let (tx, rx) = channel();
                jobs.send(tx).expect("sender thread");
                assert_eq!(rx.wait(), Ok(i));
            }
            let _ = finished.send(());
        });
        assert!(
            done.recv_timeout(std::time::Duration::from_secs(60))
                .is_ok(),
            "a wait was never woken"
        );
        waiter.join().expect("waiter");
        sender.join().expect("sender");
    }

    #[test]
    fn wait_blocks_until_the_value_comes() {
        let (tx, rx) = channel();
        let t = std::thread::spawn(move || rx.wait());
        std::thread::sleep(std::time::Duration::from_millis(20));
        tx.send("hello");
        assert_eq!(t.join().expect("waiter"), Ok("hello"));
    }
}
