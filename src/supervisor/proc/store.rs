//! The capture store: where a process's captured bytes live while it runs and
//! after ([`Store`]), the capture that owns them ([`Capture`]), and what a
//! reader gets of them ([`Content`]).

use super::super::packer::Packed;
use super::compress::Compression;
use crate::capture::headtail::{Frozen, HeadTail};
use crate::capture::kept::KeptFile;
use crate::spec;
use crate::sys::fd;
use bytes::Bytes;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

/// Where a capture's bytes live.
pub(crate) enum Store {
    /// A pipe drained by the reactor into a head/tail buffer.
    Memory {
        pipe: PipeIn,
        /// The buffer while the process runs.
        live: HeadTail,
        /// The buffer once the process has exited.
        frozen: Option<Arc<Frozen>>,
    },
    /// Mode `file`: a pipe drained by the reactor into a kept file. Nothing is
    /// held in memory; a `"memory": true` head/tail ([`Capture::window`]) is
    /// read back from the file.
    Kept { pipe: PipeIn, file: Box<KeptFile> },
    /// An unlinked file the child writes to directly.
    Tempfile {
        /// The file, shared with readers on other threads.
        file: Arc<OwnedFd>,
    },
}

/// The read side of a capture pipe the reactor drains.
#[derive(Default)]
pub(crate) struct PipeIn {
    /// The pipe's read end while it is open.
    pub fd: Option<Rc<OwnedFd>>,
    /// The key of the armed read op, if any.
    pub read_key: Option<u64>,
    /// The size to raise the pipe to once a read shows its writer fills it
    /// (0: raised, or nothing to raise).
    pub grow_to: usize,
}

impl PipeIn {
    pub(super) fn new(fd: OwnedFd, grow_to: usize) -> PipeIn {
        PipeIn {
            fd: Some(Rc::new(fd)),
            read_key: None,
            grow_to,
        }
    }

    /// Raises the pipe to [`PipeIn::grow_to`] after a read of `n` bytes
    /// that took half the default pipe or more: the writer is a heavy one.
    /// Pipes start at the kernel's default (16 pages), so a process that
    /// writes a few lines costs no `F_SETPIPE_SZ` (about 2 µs a pipe here,
    /// and a larger buffer array to free) and no share of the per-user pipe
    /// quota, which, once spent, leaves every new pipe of the user one page.
    pub fn grow_if_full(&mut self, n: usize) {
        if self.grow_to == 0 || n < crate::sys::pipe::default_size() / 2 {
            return;
        }
        if let Some(fd) = &self.fd {
            crate::sys::pipe::grow(&**fd, self.grow_to);
        }
        self.grow_to = 0;
    }
}

impl Store {
    /// The pipe the reactor drains, for the two stores that have one.
    pub fn pipe(&self) -> Option<&PipeIn> {
        match self {
            Store::Memory { pipe, .. } | Store::Kept { pipe, .. } => Some(pipe),
            Store::Tempfile { .. } => None,
        }
    }

    /// The pipe of a pipe-fed capture, to change.
    pub fn pipe_mut(&mut self) -> Option<&mut PipeIn> {
        match self {
            Store::Memory { pipe, .. } | Store::Kept { pipe, .. } => Some(pipe),
            Store::Tempfile { .. } => None,
        }
    }

    /// The kept file of a mode `file` capture.
    pub fn kept_mut(&mut self) -> Option<&mut KeptFile> {
        match self {
            Store::Kept { file, .. } => Some(file),
            _ => None,
        }
    }
}

/// A captured fd of a process.
pub(crate) struct Capture {
    pub name: String,
    pub encoding: spec::Encoding,
    pub attached: bool,
    pub store: Store,
    /// Mode `file` with `"memory": true`: the head and tail sizes an attached
    /// result shows, read back from the file.
    pub window: Option<(u64, u64)>,
    /// The spec's `compress`, and how far it has got.
    pub compression: Option<Compression>,
}

impl Capture {
    /// How many fds the capture's files hold: a tempfile's, a kept file's
    /// (or its compressed copy's). Pipes are not counted.
    pub(crate) fn file_fds(&self) -> usize {
        match &self.store {
            Store::Memory { .. } => 0,
            Store::Tempfile { .. } => 1,
            Store::Kept { file, .. } => usize::from(
                file.file().is_some() || self.compression.as_ref().is_some_and(|c| c.packed_file()),
            ),
        }
    }
}

/// What a reader gets for a capture: bytes already copied, or the file to read.
#[derive(Clone, Debug)]
pub(crate) enum Content {
    /// A memory capture (finished, or a copy of a live one).
    Memory(Arc<Frozen>),
    /// Only the counts of a live memory capture (for a detached result).
    Counts {
        len: u64,
        dropped: Option<std::ops::Range<u64>>,
        /// Bytes held, and whether `--output-limit` dropped some.
        held: u64,
        limited: bool,
    },
    /// Bytes `[start, stop)` copied from a live memory capture.
    Range {
        data: Bytes,
        info: crate::capture::headtail::ReadInfo,
        len: u64,
    },
    /// A tempfile capture.
    File(Arc<OwnedFd>),
    /// A compressed capture.
    Zstd(Packed),
    /// A kept file (mode `file`), read up to its logical length.
    Kept(KeptContent),
}

impl Content {
    /// Whether reading it may read a file (and so wait for a disk).
    pub fn in_file(&self) -> bool {
        matches!(
            self,
            Content::Kept(_) | Content::File(_) | Content::Zstd(Packed::File(_))
        )
    }
}

/// A kept capture file as a reader sees it.
#[derive(Clone, Debug)]
pub(crate) struct KeptContent {
    /// The file while the agent holds it open (being written, or waiting for
    /// its compression); `None` once it is complete and closed, when readers
    /// open `path` on their own thread.
    pub file: Option<Arc<OwnedFd>>,
    pub path: Arc<Path>,
    /// Bytes whose writes have completed; reads stop here.
    pub len: u64,
}

impl KeptContent {
    /// The file to read: the agent's open fd, or the path opened anew.
    pub fn open(&self) -> Result<Arc<OwnedFd>, Errno> {
        match &self.file {
            Some(f) => Ok(f.clone()),
            None => fd::open(&self.path, libc::O_RDONLY, 0).map(Arc::new),
        }
    }
}

impl Capture {
    /// Bytes produced so far, and whether more may come; the length is `None`
    /// for a tempfile, which the agent does not see grow (and which may grow
    /// while its process, `busy`, has not finished).
    pub fn growth(&self, busy: bool) -> (Option<u64>, bool) {
        if let Some(p) = self.packed() {
            return (Some(p.raw_len()), false);
        }
        match &self.store {
            Store::Memory {
                frozen: Some(f), ..
            } => (Some(f.len()), false),
            Store::Memory { live, pipe, .. } => (Some(live.len()), pipe.fd.is_some()),
            // Open until every byte taken from the pipe is in the file.
            Store::Kept { file, pipe, .. } => (Some(file.len()), pipe.fd.is_some() || !file.idle()),
            Store::Tempfile { .. } => (None, busy),
        }
    }

    /// The stream offsets a head/tail bound dropped, if any.
    pub fn dropped(&self) -> Option<std::ops::Range<u64>> {
        if let Some(p) = self.packed() {
            return p.dropped();
        }
        match &self.store {
            Store::Memory {
                frozen: Some(f), ..
            } => f.dropped(),
            Store::Memory { live, .. } => live.dropped(),
            Store::Kept { .. } | Store::Tempfile { .. } => None,
        }
    }

    /// Counts only, without copying a live buffer (detached results).
    pub fn counts(&self) -> Content {
        if let Some(p) = self.packed() {
            return Content::Zstd(p.clone());
        }
        match &self.store {
            Store::Kept { file, .. } => kept_content(file),
            Store::Memory {
                live, frozen: None, ..
            } => Content::Counts {
                len: live.len(),
                dropped: live.dropped(),
                held: live.held() as u64,
                limited: live.limited(),
            },
            _ => self.content(),
        }
    }

    /// Bytes `[start, stop)` for a reader: copied now from a live memory buffer
    /// (only the range), else the finished buffer or file to read on its thread.
    pub fn range(&self, start: u64, stop: u64) -> Content {
        if let Some(p) = self.packed() {
            return Content::Zstd(p.clone());
        }
        match &self.store {
            Store::Kept { file, .. } => kept_content(file),
            Store::Memory {
                live, frozen: None, ..
            } => {
                let mut out = Vec::new();
                let info = live.read(start, stop, &mut out);
                Content::Range {
                    data: Bytes::from(out),
                    info,
                    len: live.len(),
                }
            }
            _ => self.content(),
        }
    }

    /// The capture's content as readers see it now (a copy while live).
    pub fn content(&self) -> Content {
        if let Some(p) = self.packed() {
            return Content::Zstd(p.clone());
        }
        match &self.store {
            Store::Kept { file, .. } => kept_content(file),
            Store::Memory {
                frozen: Some(f), ..
            } => Content::Memory(f.clone()),
            Store::Memory { live, .. } => Content::Memory(Arc::new(live.snapshot())),
            Store::Tempfile { file } => Content::File(file.clone()),
        }
    }
}

/// A kept file as readers see it: its fd and how far it is written. (Once its
/// file is released, the compressed copy is read instead: see `packed`.)
fn kept_content(f: &KeptFile) -> Content {
    match f.file() {
        Some(file) => Content::Kept(KeptContent {
            file: Some(file.clone()),
            path: f.path().clone(),
            len: f.len(),
        }),
        None if f.closed() => Content::Kept(KeptContent {
            file: None,
            path: f.path().clone(),
            len: f.len(),
        }),
        None => Content::Counts {
            len: f.len(),
            dropped: None,
            held: 0,
            limited: false,
        },
    }
}
