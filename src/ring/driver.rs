//! One reactor loop, two drivers: the io_uring [`Ring`] where the kernel
//! lets chaperone have one, else the epoll [`Poller`] with the same calls.

use super::{Cqe, Features, Poller, Ring, RingError};
use rustix::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Which driver the reactor is to run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// io_uring when it can be set up with what chaperone needs, else epoll.
    #[default]
    Auto,
    /// io_uring or nothing: the agent does not start without it.
    IoUring,
    /// epoll, even where io_uring works.
    Epoll,
}

impl BackendChoice {
    /// `CHAPERONE_BACKEND` (`auto`, `io_uring`, `epoll`), else `Auto`; a value
    /// it does not know is an error naming it.
    pub fn from_env() -> Result<BackendChoice, String> {
        match std::env::var("CHAPERONE_BACKEND") {
            Err(_) => Ok(BackendChoice::Auto),
            Ok(v) => v.parse().map_err(|e| format!("CHAPERONE_BACKEND: {e}")),
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "auto" => Ok(BackendChoice::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(BackendChoice::IoUring),
            "epoll" => Ok(BackendChoice::Epoll),
            other => Err(format!(
                "unknown backend {other:?} (expected auto, io_uring or epoll)"
            )),
        }
    }
}

/// The driver the reactor runs on.
// One per reactor, held in place: boxing the ring would only add a pointer
// chase to every operation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Driver<T> {
    /// io_uring.
    Uring(Ring<T>),
    /// epoll, with writer threads for file writes.
    Epoll(Poller<T>),
}

/// The same call on whichever driver it is.
macro_rules! both {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            Driver::Uring($d) => $e,
            Driver::Epoll($d) => $e,
        }
    };
}

impl<T> Driver<T> {
    /// The driver `choice` asks for: a ring of `entries` submission entries
    /// with `buf_entries` provided buffers of `buf_size` bytes, or an epoll
    /// set whose turns read as much (`buf_entries × buf_size`). Under `Auto`,
    /// a ring that cannot be set up (EPERM from a seccomp filter or
    /// `kernel.io_uring_disabled`, ENOSYS, a missing opcode, no buffer ring)
    /// gives epoll, said once at info level.
    pub fn new(
        choice: BackendChoice,
        entries: u32,
        buf_entries: u16,
        buf_size: u32,
    ) -> Result<Driver<T>, RingError> {
        let epoll = || {
            let arena = usize::from(buf_entries) * buf_size as usize;
            Poller::new(arena, buf_size as usize)
                .map(Driver::Epoll)
                .map_err(|e| RingError::Epoll(e.into()))
        };
        let ring = || -> Result<Ring<T>, RingError> {
            let mut ring = Ring::new(entries)?;
            ring.register_buf_ring(buf_entries, buf_size, 0)?;
            Ok(ring)
        };
        match choice {
            BackendChoice::Epoll => {
                tracing::info!("running on epoll (asked for)");
                epoll()
            }
            BackendChoice::IoUring => ring().map(Driver::Uring),
            BackendChoice::Auto => match ring() {
                Ok(r) => Ok(Driver::Uring(r)),
                Err(e) => {
                    tracing::info!("running on epoll: {e}");
                    epoll()
                }
            },
        }
    }

    /// `io_uring` or `epoll`.
    pub fn name(&self) -> &'static str {
        match self {
            Driver::Uring(_) => "io_uring",
            Driver::Epoll(_) => "epoll",
        }
    }

    /// What the ring offers (nothing, on epoll).
    pub fn features(&self) -> Features {
        match self {
            Driver::Uring(r) => r.features,
            Driver::Epoll(_) => Features::default(),
        }
    }

    /// See [`Ring::read_multishot`].
    pub fn read_multishot(&mut self, fd: Rc<OwnedFd>, tag: T) -> u64 {
        both!(self, d => d.read_multishot(fd, tag))
    }

    /// See [`Ring::wait_exit`].
    pub fn wait_exit(&mut self, pidfd: Rc<OwnedFd>, tag: T) -> u64 {
        both!(self, d => d.wait_exit(pidfd, tag))
    }

    /// See [`Ring::read`].
    pub fn read(&mut self, fd: Rc<OwnedFd>, len: usize, tag: T) -> u64 {
        both!(self, d => d.read(fd, len, tag))
    }

    /// See [`Ring::write`].
    pub fn write(&mut self, fd: Arc<OwnedFd>, buf: Vec<u8>, offset: u64, tag: T) -> u64 {
        both!(self, d => d.write(fd, buf, offset, tag))
    }

    /// See [`Ring::take_write_buf`].
    pub fn take_write_buf(&mut self, cqe: &Cqe) -> Vec<u8> {
        both!(self, d => d.take_write_buf(cqe))
    }

    /// See [`Ring::timeout`].
    pub fn timeout(&mut self, after: Duration, tag: T) -> u64 {
        both!(self, d => d.timeout(after, tag))
    }

    /// See [`Ring::cancel`].
    pub fn cancel(&mut self, key: u64) {
        both!(self, d => d.cancel(key))
    }

    /// See [`Ring::submit_and_wait`].
    pub fn submit_and_wait(
        &mut self,
        want: usize,
        timeout: Option<Duration>,
    ) -> Result<(), rustix::io::Errno> {
        both!(self, d => d.submit_and_wait(want, timeout))
    }

    /// See [`Ring::reap`].
    pub fn reap(&mut self, out: &mut Vec<Cqe>) {
        both!(self, d => d.reap(out))
    }

    /// See [`Ring::tag`].
    pub fn tag(&self, cqe: &Cqe) -> Option<&T> {
        both!(self, d => d.tag(cqe))
    }

    /// See [`Ring::data`].
    pub fn data(&mut self, cqe: &Cqe) -> &[u8] {
        both!(self, d => d.data(cqe))
    }

    /// See [`Ring::finish`].
    pub fn finish(&mut self, cqe: &Cqe) -> Option<T> {
        both!(self, d => d.finish(cqe))
    }
}
