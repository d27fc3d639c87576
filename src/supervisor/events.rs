//! Event subscriptions: each subscriber has its own bounded queue, so a slow one
//! never holds up the reactor or the others.
//!
//! Policy for a subscriber that falls behind: once its queue holds
//! [`Subscription::CAPACITY`] events, further events are dropped *for it* and
//! counted; the next thing it receives is [`Event::Missed`] with that count,
//! after which it should resync from a full result (for example
//! [`Handle::results`](super::Handle::results)) and go on from the events that
//! follow. A deletion is the one thing a full result cannot show (the process
//! is simply not there), so deletions in a gap are kept, up to
//! [`MAX_GAP_DELETIONS`], and received as [`Event::Deleted`] just before the
//! `Missed`: a peer waiting for a deletion's notice is not left waiting.

use super::types::Event;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Deletions kept for a subscriber whose queue is full (past these, they
/// are only counted as missed).
pub const MAX_GAP_DELETIONS: usize = 65_536;

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    /// Events dropped since the subscriber last caught up.
    missed: u64,
    /// The deletions among them, in order (see the module notes).
    deleted: VecDeque<crate::spec::ProcId>,
    waker: Option<Waker>,
    /// The agent is gone: nothing more will come.
    closed: bool,
}

/// The reactor's end of one subscription.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `event`, or counts it as missed when the queue is full (or
    /// events are already missed: none is queued after a gap until the
    /// subscriber has been told of it).
    fn push(&self, event: &Event) {
        let waker = {
            let mut q = self.lock();
            if q.events.len() >= self.capacity || q.missed > 0 {
                q.missed += 1;
                if let Event::Deleted(id) = event {
                    if q.deleted.len() < MAX_GAP_DELETIONS {
                        q.deleted.push_back(id.clone());
                    }
                }
            } else {
                q.events.push_back(event.clone());
            }
            q.waker.take()
        };
        self.ready.notify_one();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The agent is going away.
    fn close(&self) {
        let waker = {
            let mut q = self.lock();
            q.closed = true;
            q.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The reactor's end of a subscription; dropping it closes the subscription.
pub(crate) struct Publisher(Arc<Shared>);

impl Publisher {
    /// Queues `event` for this subscriber (see [`Shared::push`]).
    pub(crate) fn push(&self, event: &Event) {
        self.0.push(event);
    }

    /// Whether the subscriber still holds its end.
    pub(crate) fn subscribed(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Why [`Subscription::recv`] returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// Nothing came within the timeout.
    #[error("no event within the timeout")]
    Timeout,
    /// The agent is gone and every event has been received.
    #[error("the agent is gone")]
    Closed,
}

/// One subscriber's events, in order; see the module notes for what happens
/// when it falls behind. Dropping it unsubscribes.
pub struct Subscription {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Subscription {
    /// Events a subscriber may have waiting before further ones are missed:
    /// two per process for a burst of 30,000 processes, at some 64 bytes
    /// each (4 MiB). (4,096 made a client of `--stdio` that paused for a
    /// second during a 3,000-process start miss events.)
    pub const CAPACITY: usize = 65_536;

    /// A subscription and the reactor's end of it, queueing at most `capacity`.
    pub(crate) fn new(capacity: usize) -> (Subscription, Publisher) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        });
        (
            Subscription {
                shared: shared.clone(),
            },
            Publisher(shared),
        )
    }

    /// The next event waiting, if any: first [`Event::Missed`] if events were
    /// dropped since the last one received.
    fn take(q: &mut Queue) -> Option<Event> {
        if let Some(e) = q.events.pop_front() {
            return Some(e);
        }
        if let Some(id) = q.deleted.pop_front() {
            return Some(Event::Deleted(id));
        }
        if q.missed > 0 {
            return Some(Event::Missed(std::mem::take(&mut q.missed)));
        }
        None
    }

    /// The next event, without waiting.
    pub fn try_recv(&self) -> Result<Event, RecvError> {
        let mut q = self.shared.lock();
        match Self::take(&mut q) {
            Some(e) => Ok(e),
            None if q.closed => Err(RecvError::Closed),
            None => Err(RecvError::Timeout),
        }
    }

    /// The events waiting now, without blocking.
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(|| self.try_recv().ok())
    }

    /// Blocks for the next event.
    pub fn recv(&self) -> Result<Event, RecvError> {
        self.recv_until(None)
    }

    /// Blocks for the next event, at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvError> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<Event, RecvError> {
        let mut q = self.shared.lock();
        loop {
            if let Some(e) = Self::take(&mut q) {
                return Ok(e);
            }
            if q.closed {
                return Err(RecvError::Closed);
            }
            q = match deadline {
                None => self.shared.ready.wait(q).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RecvError::Timeout);
                    }
                    self.shared
                        .ready
                        .wait_timeout(q, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// The next event, as a future; `None` once the agent is gone and every
    /// event has been received.
    pub fn event(&mut self) -> Next<'_> {
        Next { sub: self }
    }
}

/// The future of [`Subscription::event`].
#[derive(Debug)]
pub struct Next<'a> {
    sub: &'a mut Subscription,
}

impl Future for Next<'_> {
    type Output = Option<Event>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut q = self.sub.shared.lock();
        if let Some(e) = Subscription::take(&mut q) {
            return Poll::Ready(Some(e));
        }
        if q.closed {
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_past_its_bound_learns_how_many_it_missed() {
        let (sub, publisher) = Subscription::new(2);
        for i in 0..5 {
            publisher.push(&Event::Exited(format!("p{i}")));
        }
        assert_eq!(sub.try_recv(), Ok(Event::Exited("p0".into())));
        // Room again, but after a gap nothing is queued until it is told.
        publisher.push(&Event::Exited("p5".into()));
        assert_eq!(sub.try_recv(), Ok(Event::Exited("p1".into())));
        assert_eq!(sub.try_recv(), Ok(Event::Missed(4)));
        assert_eq!(sub.try_recv(), Err(RecvError::Timeout));
        publisher.push(&Event::Exited("p6".into()));
        assert_eq!(sub.try_recv(), Ok(Event::Exited("p6".into())));
        drop(publisher);
        assert_eq!(sub.recv(), Err(RecvError::Closed));
    }

    /// A full result cannot show a deletion: those in a gap are kept and
    /// come, in order, just before the `Missed` that says resync.
    #[test]
    fn deletions_in_a_gap_are_not_lost() {
        let (sub, publisher) = Subscription::new(1);
        publisher.push(&Event::Exited("a".into()));
        publisher.push(&Event::Exited("b".into()));
        publisher.push(&Event::Deleted("a".into()));
        publisher.push(&Event::Exited("c".into()));
        publisher.push(&Event::Deleted("c".into()));
        let got: Vec<Event> = sub.try_iter().collect();
        assert_eq!(
            got,
            [
                Event::Exited("a".into()),
                Event::Deleted("a".into()),
                Event::Deleted("c".into()),
                Event::Missed(4),
            ]
        );
    }

    #[test]
    fn recv_waits_for_an_event_from_another_thread() {
        let (sub, publisher) = Subscription::new(8);
        let t = std::thread::spawn(move || sub.recv_timeout(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        publisher.push(&Event::Started("x".into()));
        assert_eq!(t.join().expect("thread"), Ok(Event::Started("x".into())));
    }
}
