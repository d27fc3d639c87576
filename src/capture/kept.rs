//! Kept capture files (capture mode `"file"`): where the file is, and the
//! bookkeeping of the reactor's writes into it.
//!
//! The child writes to a pipe as for a memory capture. The reactor copies what
//! the pipe delivers into a staging buffer ([`KeptFile::push`]) and keeps one
//! `IORING_OP_WRITE` in flight at the end of what is already written
//! ([`KeptFile::next_write`], [`KeptFile::completed`]). While one write runs the
//! next batch gathers in the other buffer, so two buffers take turns and neither
//! grows past the staging cap by more than the pipe reads in flight: once the
//! staged bytes reach the cap the reactor stops reading the pipe
//! ([`KeptFile::over_cap`]), the child blocks on its full pipe, and reading resumes
//! when the writes catch up ([`KeptFile::may_resume`]).
//!
//! [`KeptFile::len`] is the logical length: the bytes whose writes have completed.
//! Readers never see past it, so a live read never shows a hole.

use crate::sys::fd::OpenFailure;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The least staging cap, whatever the pipe size.
pub const MIN_STAGING_CAP: usize = 4 << 20;

/// Longest file name stem [`create_in_dir`] makes from a proc id.
const MAX_STEM: usize = 200;

/// How many numbered names [`create_in_dir`] tries before giving up.
const MAX_SUFFIX: u32 = 10_000;

/// The write side of one kept capture file.
#[derive(Debug)]
pub struct KeptFile {
    /// The open file; `None` once released (its compressed copy replaced it).
    file: Option<Arc<OwnedFd>>,
    path: Arc<Path>,
    /// Bytes waiting for the next write.
    staging: Vec<u8>,
    /// The other buffer, back from its last write (empty, capacity kept).
    spare: Vec<u8>,
    /// Whether a write is in flight.
    writing: bool,
    /// Bytes whose writes have completed: the logical length.
    written: u64,
    cap: usize,
    /// Whether the reactor has stopped reading the pipe for backpressure.
    pub paused: bool,
    /// The first write error; no more writes after it.
    error: Option<Errno>,
    /// Whether [`KeptFile::close`] closed the file (it is complete on disk).
    closed: bool,
}

/// What [`KeptFile::completed`] asks of the reactor.
#[derive(Debug, PartialEq, Eq)]
pub enum Completed {
    /// The write is done; submit [`KeptFile::next_write`] if any.
    Done,
    /// Short or interrupted write: submit this rest at this offset.
    Rest(Vec<u8>, u64),
    /// The write failed; the message names the file. Nothing more is written.
    Failed(String),
}

impl KeptFile {
    /// A kept file with nothing written yet; `cap` is the staging cap in bytes.
    pub fn new(file: OwnedFd, path: PathBuf, cap: usize) -> Self {
        KeptFile {
            file: Some(Arc::new(file)),
            path: Arc::from(path),
            staging: Vec::new(),
            spare: Vec::new(),
            writing: false,
            written: 0,
            cap: cap.max(1),
            paused: false,
            error: None,
            closed: false,
        }
    }

    /// The open file (readers pread it on their own thread); `None` once
    /// [`KeptFile::take_file`] released it.
    pub fn file(&self) -> Option<&Arc<OwnedFd>> {
        self.file.as_ref()
    }

    /// Releases the open file (after its compressed copy replaced it), for the
    /// caller to close where closing a large file may take its time.
    pub fn take_file(&mut self) -> Option<Arc<OwnedFd>> {
        self.file.take()
    }

    /// Closes the file once every write is in: readers open [`KeptFile::path`]
    /// from then on.
    pub fn close(&mut self) {
        if !self.writing && self.file.take().is_some() {
            self.closed = true;
        }
    }

    /// Whether [`KeptFile::close`] closed the file.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Where the file is.
    pub fn path(&self) -> &Arc<Path> {
        &self.path
    }

    /// The logical length: bytes whose writes have completed.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Whether a write failed (the file then stops growing).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Takes bytes from the pipe. After a write error they are dropped: the pipe
    /// is still drained so that the child never blocks on it.
    pub fn push(&mut self, data: &[u8]) {
        if self.error.is_none() {
            self.staging.extend_from_slice(data);
        }
    }

    /// Whether the staged bytes have reached the cap (stop reading the pipe).
    pub fn over_cap(&self) -> bool {
        self.error.is_none() && self.staging.len() >= self.cap
    }

    /// Whether reading the pipe may resume after a pause.
    pub fn may_resume(&self) -> bool {
        self.error.is_some() || self.staging.len() < self.cap / 2
    }

    /// The next write to submit, `(bytes, offset)`, if none is in flight and
    /// bytes are staged.
    pub fn next_write(&mut self) -> Option<(Vec<u8>, u64)> {
        if self.writing || self.error.is_some() || self.staging.is_empty() {
            return None;
        }
        let buf = std::mem::replace(&mut self.staging, std::mem::take(&mut self.spare));
        self.writing = true;
        Some((buf, self.written))
    }

    /// Takes the outcome of the write [`KeptFile::next_write`] (or a `Rest`)
    /// handed out, with its buffer back from the ring.
    pub fn completed(&mut self, result: Result<u32, Errno>, mut buf: Vec<u8>) -> Completed {
        self.writing = false;
        let n = match result {
            Ok(n) if n > 0 || buf.is_empty() => n as usize,
            Ok(_) => return self.fail(Errno::IO, buf.len()), // wrote nothing
            Err(Errno::INTR) | Err(Errno::AGAIN) => {
                self.writing = true;
                return Completed::Rest(buf, self.written);
            }
            Err(e) => return self.fail(e, buf.len()),
        };
        let n = n.min(buf.len());
        self.written += n as u64;
        if n < buf.len() {
            buf.drain(..n);
            self.writing = true;
            return Completed::Rest(buf, self.written);
        }
        buf.clear();
        if self.spare.capacity() < buf.capacity() {
            self.spare = buf;
        }
        Completed::Done
    }

    fn fail(&mut self, e: Errno, lost: usize) -> Completed {
        self.error = Some(e);
        self.staging = Vec::new();
        self.spare = Vec::new();
        let err = std::io::Error::from_raw_os_error(e.raw_os_error());
        Completed::Failed(format!(
            "capture file {}: write of {lost} bytes at offset {} failed: {err}",
            self.path.display(),
            self.written
        ))
    }

    /// Whether every byte taken has reached the file (or can no longer).
    pub fn idle(&self) -> bool {
        !self.writing && (self.staging.is_empty() || self.error.is_some())
    }

    /// Frees the buffers once the stream has ended.
    pub fn release_buffers(&mut self) {
        self.staging = Vec::new();
        self.spare = Vec::new();
    }
}

/// The staging cap for a pipe of `pipe_size` bytes: twice the pipe, at least
/// [`MIN_STAGING_CAP`].
pub fn staging_cap(pipe_size: usize) -> usize {
    pipe_size.saturating_mul(2).max(MIN_STAGING_CAP)
}

/// Opens (creating or truncating) the kept file at `path`, for reading and
/// writing, close-on-exec, mode 0666 before the umask.
pub fn create_at(path: &Path) -> Result<OwnedFd, OpenFailure> {
    crate::sys::fd::open_for_child(path, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o666)
}

/// Creates the kept file at `path`, which must not exist yet (`O_EXCL`),
/// for reading and writing, close-on-exec, mode 0666 before the umask.
pub fn create_new_at(path: &Path) -> Result<OwnedFd, OpenFailure> {
    crate::sys::fd::open_for_child(path, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o666)
}

/// Creates a new file in `dir` named `<proc id>.<fd name>`, or with `.1`, `.2`, …
/// appended when that name is taken (`O_EXCL`: an existing file is never reused).
/// With `zst` (the file is to be compressed to `<name>.zst`, which replaces
/// it), a name is taken also when `<name>.zst` exists: an earlier run's
/// compressed capture is never replaced. The proc id is reduced to
/// `[A-Za-z0-9._-]` (see [`sanitize`]).
pub fn create_in_dir(
    dir: &Path,
    proc_id: &str,
    fd_name: &str,
    zst: bool,
) -> Result<(OwnedFd, PathBuf), OpenFailure> {
    let stem = format!("{}.{}", sanitize(proc_id), sanitize(fd_name));
    for n in 0..MAX_SUFFIX {
        let name = if n == 0 {
            stem.clone()
        } else {
            format!("{stem}.{n}")
        };
        let path = dir.join(name);
        if zst && with_zst(&path).symlink_metadata().is_ok() {
            continue;
        }
        match crate::sys::fd::open_for_child(
            &path,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
            0o666,
        ) {
            Ok(fd) => return Ok((fd, path)),
            Err(OpenFailure::Sys(Errno::EXIST)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(OpenFailure::Sys(Errno::EXIST))
}

/// `path` with `.zst` added: where a kept file is compressed to.
pub fn with_zst(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".zst");
    PathBuf::from(p)
}

/// A file-name-safe form of `s`: every character outside `[A-Za-z0-9._-]`
/// becomes `_`, a leading `.` too (no hidden files, no `..`), at most
/// 200 bytes (`MAX_STEM`); never empty.
pub fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .enumerate()
        .map(|(i, c)| match c {
            '.' if i == 0 => '_',
            'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '_',
        })
        .take(MAX_STEM)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(cap: usize) -> (tempfile::TempDir, KeptFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let fd = create_at(&path).unwrap();
        (dir, KeptFile::new(fd, path, cap))
    }

    #[test]
    fn sanitize_keeps_safe_characters_and_replaces_the_rest() {
        assert_eq!(sanitize("job-1.a_b"), "job-1.a_b");
        assert_eq!(sanitize("a/b c"), "a_b_c");
        assert_eq!(sanitize(".."), "_.");
        assert_eq!(sanitize("../etc"), "_._etc");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("é"), "_");
        assert_eq!(sanitize(&"x".repeat(1000)).len(), MAX_STEM);
    }

    #[test]
    fn create_in_dir_numbers_names_that_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (_, a) = create_in_dir(dir.path(), "a/b", "stdout", false).unwrap();
        let (_, b) = create_in_dir(dir.path(), "a/b", "stdout", false).unwrap();
        let (_, c) = create_in_dir(dir.path(), "a_b", "stdout", false).unwrap();
        assert_eq!(a, dir.path().join("a_b.stdout"));
        assert_eq!(b, dir.path().join("a_b.stdout.1"));
        assert_eq!(c, dir.path().join("a_b.stdout.2"));
    }

    #[test]
    fn writes_take_turns_and_track_the_completed_length() {
        let (_d, mut k) = sink(8);
        assert_eq!(k.next_write(), None, "nothing staged");
        k.push(b"abcd");
        let (buf, off) = k.next_write().unwrap();
        assert_eq!((&buf[..], off), (&b"abcd"[..], 0));
        k.push(b"ef");
        assert_eq!(k.next_write(), None, "one write at a time");
        assert!(!k.idle());
        assert_eq!(k.len(), 0, "nothing completed yet");
        assert_eq!(k.completed(Ok(4), buf), Completed::Done);
        assert_eq!(k.len(), 4);
        let (buf, off) = k.next_write().unwrap();
        assert_eq!((&buf[..], off), (&b"ef"[..], 4));
        assert_eq!(k.completed(Ok(2), buf), Completed::Done);
        assert!(k.idle());
        assert_eq!(k.len(), 6);
    }

    #[test]
    fn short_write_resubmits_the_rest_at_the_next_offset() {
        let (_d, mut k) = sink(8);
        k.push(b"abcdef");
        let (buf, _) = k.next_write().unwrap();
        match k.completed(Ok(2), buf) {
            Completed::Rest(rest, off) => {
                assert_eq!((&rest[..], off), (&b"cdef"[..], 2));
                assert!(!k.idle());
                assert_eq!(k.completed(Ok(4), rest), Completed::Done);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(k.len(), 6);
        assert!(k.idle());
    }

    #[test]
    fn write_error_stops_writing_and_drops_later_bytes() {
        let (_d, mut k) = sink(8);
        k.push(b"abcd");
        let (buf, _) = k.next_write().unwrap();
        k.push(b"ef");
        match k.completed(Err(Errno::NOSPC), buf) {
            Completed::Failed(msg) => {
                assert!(msg.contains("capture file "), "{msg}");
                assert!(msg.contains("No space left on device"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        k.push(b"gh");
        assert_eq!(k.next_write(), None);
        assert!(k.idle());
        assert!(!k.over_cap());
        assert!(k.may_resume());
        assert_eq!(k.len(), 0);
    }

    #[test]
    fn over_cap_and_resume_follow_the_staged_bytes() {
        let (_d, mut k) = sink(8);
        k.push(&[0; 7]);
        assert!(!k.over_cap());
        k.push(&[0; 1]);
        assert!(k.over_cap());
        assert!(!k.may_resume());
        let (buf, _) = k.next_write().unwrap();
        assert!(k.may_resume(), "staging handed to the write");
        assert_eq!(k.completed(Ok(8), buf), Completed::Done);
    }
}
