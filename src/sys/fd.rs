//! `fcntl(F_DUPFD_CLOEXEC)`, `open(O_TMPFILE)`, `pread`—fd helpers for capture and plans.
//!
//! Every fd chaperone creates is close-on-exec; only the child's `dup3` makes a
//! target inheritable.
//!
//! # References
//! - [fcntl(2)](https://man7.org/linux/man-pages/man2/fcntl.2.html)
//! - [open(2)](https://man7.org/linux/man-pages/man2/open.2.html)

use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use rustix::io::Errno;
use std::path::Path;

/// `fcntl(fd, F_DUPFD_CLOEXEC, min)`—duplicates a raw fd of this process to the
/// lowest free number ≥ `min`, close-on-exec.
///
/// Takes a raw number because the source may be one the agent does not own (its
/// inherited stdin/stdout/stderr); a closed number gives `EBADF`.
#[doc(alias = "F_DUPFD_CLOEXEC")]
pub fn dup_cloexec_raw(fd: RawFd, min: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: F_DUPFD_CLOEXEC takes no memory arguments; an invalid fd gives EBADF.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min.max(0)) };
    if new < 0 {
        return Err(super::last_errno());
    }
    // SAFETY: fcntl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Moves `fd` to the lowest free number ≥ `floor` (close-on-exec), closing the
/// original; returns it unchanged if it is already there or cannot be moved.
///
/// The agent keeps the fds it holds for a process's lifetime (pidfds, capture
/// read ends, tempfiles) above a floor, so the low fds a child copies at spawn
/// stay few (see `child.rs`, `CLOSE_RANGE_UNSHARE`).
pub fn move_high(fd: OwnedFd, floor: RawFd) -> OwnedFd {
    use rustix::fd::AsRawFd;
    if floor <= 0 || fd.as_raw_fd() >= floor {
        return fd;
    }
    match rustix::io::fcntl_dupfd_cloexec(&fd, floor) {
        Ok(high) => high,
        Err(_) => fd,
    }
}

/// The soft `RLIMIT_NOFILE` (what this process and its children start
/// with); `None` when unlimited.
pub fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// The `RLIMIT_NOFILE` this process was given, once [`raise_fd_limit`] has
/// raised it: what its children start with.
static GIVEN_FD_LIMIT: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// The most [`raise_fd_limit`] raises the soft limit to: the kernel's
/// default `fs.nr_open`.
#[cfg(feature = "cli")]
const RAISE_MAX: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 2^20), as a
/// program that holds an fd or more for each of thousands of processes
/// should: the soft limit (often 1,024) is kept low for programs that use
/// `select`, and the hard one is there to be raised to. Children start with
/// the limit that was given (see [`child_fd_limit`]). For the binary's front
/// ends; call it before the agent starts, once.
#[cfg(feature = "cli")]
pub fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let given = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (given.current, given.maximum) else {
        return;
    };
    let to = hard.unwrap_or(u64::MAX).min(RAISE_MAX);
    if to <= soft {
        return;
    }
    let raised = Rlimit {
        current: Some(to),
        maximum: hard,
    };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        let _ = GIVEN_FD_LIMIT.set((soft, hard.unwrap_or(u64::MAX)));
    }
}

/// The `RLIMIT_NOFILE` (soft, hard) children start with when
/// [`raise_fd_limit`] raised this process's; `None` if it did not.
pub fn child_fd_limit() -> Option<(u64, u64)> {
    GIVEN_FD_LIMIT.get().copied()
}

/// A floor for [`move_high`]: a quarter of the soft `RLIMIT_NOFILE`, at most 1024.
pub fn high_floor() -> RawFd {
    // The limit given, not one [`raise_fd_limit`] raised: the children's fd
    // window (which `CLOSE_RANGE_UNSHARE` copies) stays as small.
    let soft = child_fd_limit().map_or_else(|| fd_limit().unwrap_or(1 << 20), |(s, _)| s);
    RawFd::try_from((soft / 4).min(1024)).unwrap_or(0)
}

/// The most fd slots [`reserve_table`] asks for: 512 KiB of kernel memory for
/// the table, enough for a soft `RLIMIT_NOFILE` of 65,536; past it the table
/// grows as fds are opened, as it would anyway.
const RESERVE_MAX: RawFd = 1 << 16;

/// Grows this process's fd table now to hold every fd up to the soft
/// `RLIMIT_NOFILE` (at most 65,536), by duplicating an fd to the top number and
/// closing it.
///
/// The kernel grows a table shared by several threads only after an RCU grace
/// period (`expand_fdtable` calls `synchronize_rcu` when the `files_struct`
/// has other users), 10–25 ms here, during which the thread that opened the fd
/// waits. The agent moves every fd it keeps above [`high_floor`], so without
/// this its first spawn stalled the reactor for one grace period, and a
/// fan-out of thousands for one more at each doubling past 2,048 fds. Called
/// before the agent starts its threads, while the table is unshared, growing
/// costs no grace period at all (in a program that has threads of its own, it
/// costs one, once). Best effort: failure only leaves the table to grow later.
pub fn reserve_table() {
    let soft = fd_limit().unwrap_or(1 << 20);
    let top = RawFd::try_from(soft.saturating_sub(1))
        .unwrap_or(RawFd::MAX)
        .min(RESERVE_MAX - 1);
    let Ok(fd) = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC) else {
        return;
    };
    // The duplicate closes as it drops: only the table's growth is wanted.
    let _ = rustix::io::fcntl_dupfd_cloexec(&fd, top);
}

/// Duplicates an owned fd, close-on-exec.
pub fn dup_cloexec(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0)
}

/// `open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600)`—an unnamed file for a tempfile
/// capture; falls back to create-then-unlink where the filesystem lacks O_TMPFILE.
pub fn tempfile(dir: &Path) -> Result<OwnedFd, Errno> {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(
        dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => Ok(fd),
        Err(Errno::OPNOTSUPP) | Err(Errno::ISDIR) | Err(Errno::INVAL) => {
            // Name unique to this process and call; unlinked at once.
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!(
                "chaperone-{}-{}.capture",
                rustix::process::getpid().as_raw_nonzero(),
                n
            ));
            let fd = rustix::fs::open(
                &path,
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            rustix::fs::unlink(&path)?;
            Ok(fd)
        }
        Err(e) => Err(e),
    }
}

/// Why [`open_for_child`] did not open a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenFailure {
    /// The open failed.
    Sys(Errno),
    /// The path goes through a `/proc` magic link (`/dev/fd/N`, `/dev/stdin`,
    /// `/proc/self/fd/N`, `/proc/self/cwd/…`), which in the agent means the
    /// agent's own fds, or a symlink loop (the kernel says ELOOP for both).
    MagicLink,
    /// The path is one of the agent's own `/proc` entries (`/proc/self/mem`,
    /// `/proc/thread-self/environ`, `/proc/<agent pid>/…`).
    AgentProc(String),
}

/// Opens `path` for a child's fd, in the agent, refusing what would mean the
/// agent itself: paths through magic links (`openat2` with
/// `RESOLVE_NO_MAGICLINKS`, Linux 5.6; older kernels open plainly) and the
/// agent's own `/proc` entries (checked on the opened file's path as the
/// kernel resolved it, so no symlink gets around it).
pub fn open_for_child(path: &Path, flags: i32, mode: u32) -> Result<OwnedFd, OpenFailure> {
    use rustix::fs::{OFlags, ResolveFlags};
    let oflags = OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC;
    let mode = rustix::fs::Mode::from_raw_mode(mode);
    // openat2 takes a mode only where open would use one.
    let creates = oflags.contains(OFlags::CREATE) || oflags.contains(OFlags::TMPFILE);
    let fd = match rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        oflags,
        if creates {
            mode
        } else {
            rustix::fs::Mode::empty()
        },
        ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Err(OpenFailure::MagicLink),
        // No openat2 (before 5.6, or a seccomp filter): a plain open.
        Err(Errno::NOSYS | Errno::PERM) => {
            rustix::fs::open(path, oflags, mode).map_err(OpenFailure::Sys)?
        }
        Err(Errno::INTR) => return open_for_child(path, flags, mode.bits()),
        Err(e) => return Err(OpenFailure::Sys(e)),
    };
    if let Some(what) = agent_proc_entry(&fd) {
        return Err(OpenFailure::AgentProc(what));
    }
    Ok(fd)
}

/// If `fd` is a file under one of this process's `/proc/<pid>` (or a
/// thread's) directories, its path.
fn agent_proc_entry(fd: &OwnedFd) -> Option<String> {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let target = rustix::fs::readlink(link.as_str(), Vec::new()).ok()?;
    let target = target.to_string_lossy().into_owned();
    let rest = target.strip_prefix("/proc/")?;
    let num = rest.split('/').next()?;
    let n: i32 = num.parse().ok()?;
    // A process's or a thread's directory: the agent's when its thread group
    // is the agent's.
    let me = rustix::process::getpid().as_raw_nonzero().get();
    if n == me {
        return Some(target);
    }
    let status = std::fs::read_to_string(format!("/proc/{n}/status")).ok()?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse::<i32>()
        .ok()?;
    (tgid == me).then_some(target)
}

/// `open(path, flags | O_CLOEXEC, mode)`—opens a file for a child's fd in the parent.
pub fn open(path: &Path, flags: i32, mode: u32) -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        path,
        rustix::fs::OFlags::from_bits_retain(flags as u32) | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(mode),
    )
}

/// `pread(fd, buf, offset)` until `buf` is full or end of file; returns bytes read.
pub fn pread_full(fd: impl AsFd, buf: &mut [u8], mut offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        let Some(rest) = buf.get_mut(done..) else {
            break;
        };
        match rustix::io::pread(fd.as_fd(), rest, offset) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                offset += n as u64;
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `pread`s up to `len` bytes at `offset` onto the end of `out` (into its
/// spare capacity: no zeroing first), until `len` are read or end of file;
/// returns bytes read. Reserves the room itself; a huge `len` is ENOMEM.
pub fn pread_append(
    fd: impl AsFd,
    out: &mut Vec<u8>,
    len: usize,
    mut offset: u64,
) -> Result<usize, Errno> {
    out.try_reserve_exact(len).map_err(|_| Errno::NOMEM)?;
    let want = out.len() + len;
    let start = out.len();
    while out.len() < want {
        // A read may fill more than asked when the spare room is larger;
        // the excess is cut below.
        match rustix::io::pread(fd.as_fd(), rustix::buffer::spare_capacity(out), offset) {
            Ok(0) => break,
            Ok(n) => offset += n as u64,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    out.truncate(want);
    Ok(out.len() - start)
}

/// The size of the file behind `fd` (`fstat`).
pub fn file_len(fd: impl AsFd) -> Result<u64, Errno> {
    Ok(rustix::fs::fstat(fd)?.st_size.max(0) as u64)
}

/// Reads `[start, stop)` of a file.
pub fn read_file(file: &OwnedFd, start: u64, stop: u64) -> Result<bytes::Bytes, Errno> {
    let mut buf = Vec::new();
    read_file_into(file, start, stop, &mut buf)?;
    Ok(bytes::Bytes::from(buf))
}

/// Appends `[start, stop)` of a file (less at end of file) to `out`.
pub fn read_file_into(
    file: &OwnedFd,
    start: u64,
    stop: u64,
    out: &mut Vec<u8>,
) -> Result<(), Errno> {
    let len = usize::try_from(stop.saturating_sub(start)).map_err(|_| Errno::FBIG)?;
    // A huge range is an error (ENOMEM), not an abort.
    pread_append(file, out, len, start)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's fd table size, from `/proc/self/status`.
    fn fd_table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    /// Run alone in a fresh test process (see the test below): other tests
    /// in this binary start agents, which grow the table, and it never shrinks.
    const RESERVE_CHILD: &str = "CHAPERONE_TEST_RESERVE_TABLE_CHILD";

    #[test]
    fn reserve_table_grows_the_fd_table_to_the_soft_limit_or_the_cap() {
        if std::env::var_os(RESERVE_CHILD).is_some() {
            let soft = fd_limit().unwrap();
            let want = soft.min(RESERVE_MAX as u64);
            let before = fd_table_size();
            if before >= want {
                crate::test_skip(
                    "sys::fd reserve_table",
                    &format!("the fd table already holds {before} fds, the soft limit is {soft}"),
                    false,
                );
                return;
            }
            reserve_table();
            let after = fd_table_size();
            assert!(
                after >= want,
                "FDSize {before} -> {after}, soft limit {soft}"
            );
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sys::fd::tests::reserve_table_grows_the_fd_table_to_the_soft_limit_or_the_cap",
                "--nocapture",
            ])
            .env(RESERVE_CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran no test: {text}");
    }

    /// A file holding `bytes`.
    fn file_of(bytes: &[u8]) -> OwnedFd {
        let f = tempfile(&std::env::temp_dir()).unwrap();
        let mut done = 0;
        while done < bytes.len() {
            done += rustix::io::write(&f, &bytes[done..]).unwrap();
        }
        f
    }

    #[test]
    fn read_file_reads_a_range_and_stops_at_end_of_file() {
        let f = file_of(b"0123456789");
        assert_eq!(&read_file(&f, 0, 10).unwrap()[..], b"0123456789");
        assert_eq!(&read_file(&f, 2, 5).unwrap()[..], b"234");
        assert_eq!(
            &read_file(&f, 8, 100).unwrap()[..],
            b"89",
            "less at end of file"
        );
        assert!(read_file(&f, 5, 5).unwrap().is_empty());
        assert!(read_file(&f, 7, 3).unwrap().is_empty(), "stop before start");
    }

    #[test]
    fn read_file_into_appends() {
        let f = file_of(b"abcdef");
        let mut out = b"head:".to_vec();
        read_file_into(&f, 0, 2, &mut out).unwrap();
        read_file_into(&f, 4, 6, &mut out).unwrap();
        assert_eq!(out, b"head:abef");
    }

    #[test]
    fn read_file_of_a_huge_range_is_an_error_not_an_abort() {
        let f = file_of(b"x");
        assert!(matches!(
            read_file(&f, 0, u64::MAX),
            Err(Errno::NOMEM | Errno::FBIG)
        ));
    }
}
