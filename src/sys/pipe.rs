//! `pipe2`, `F_SETPIPE_SZ`—capture pipes whose read end the reactor drains.
//!
//! # References
//! - [pipe(7)](https://man7.org/linux/man-pages/man7/pipe.7.html)
//! - [fcntl(2)](https://man7.org/linux/man-pages/man2/fcntl.2.html), `F_SETPIPE_SZ`

use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;

/// A pipe for one captured fd: the read end is non-blocking (the reactor and the
/// exit drain read it), the write end blocking (the child expects an ordinary
/// stdout). Both are close-on-exec in the agent.
#[derive(Debug)]
pub struct CapturePipe {
    /// Read end, kept by the agent.
    pub read: OwnedFd,
    /// Write end, installed in the child and closed by the agent after spawn.
    pub write: OwnedFd,
}

/// Creates a plain close-on-exec pipe (for `pipe-write`/`pipe-read` between procs).
pub fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
}

/// Creates a capture pipe, at the kernel's default size: the reactor raises
/// it ([`grow`]) once a read shows its writer fills it.
pub fn capture_pipe() -> Result<CapturePipe, Errno> {
    let (read, write) = pipe()?;
    rustix::fs::fcntl_setfl(&read, rustix::fs::OFlags::NONBLOCK)?;
    Ok(CapturePipe { read, write })
}

/// A new pipe's size: 16 pages.
pub fn default_size() -> usize {
    16 * rustix::param::page_size()
}

/// Raises a capture pipe to `size` bytes, best effort.
///
/// `EPERM` from `F_SETPIPE_SZ` means the per-user pipe quota
/// (`fs.pipe-user-pages-soft`) is spent: the pipe keeps the size it has,
/// quietly. Any other error from the resize is also non-fatal.
pub fn grow(fd: impl AsFd, size: usize) {
    if size > default_size() {
        let _ = set_size(fd, size);
    }
}

/// `fcntl(fd, F_SETPIPE_SZ, size)`—returns the size the kernel set.
pub fn set_size(fd: impl AsFd, size: usize) -> Result<usize, Errno> {
    rustix::pipe::fcntl_setpipe_size(fd, size)
}

/// Reads `/proc/sys/fs/pipe-max-size`, or 1 MiB if it cannot be read.
pub fn max_size() -> usize {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// A non-blocking `read` from a pipe: `Ok(0)` is end of file, `Err(AGAIN)` empty.
pub fn read(fd: impl AsFd, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match rustix::io::read(fd.as_fd(), &mut *buf) {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}
