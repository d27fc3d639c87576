//! A capture's compression (spec `compress`): where it stands, the job for the
//! compression thread, and taking its result.

use super::super::packer::{Job, Packed};
use super::store::{Capture, Store};
use rustix::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

/// A capture's compression (spec `compress`).
pub(crate) struct Compression {
    pub level: i32,
    pub state: CompressState,
}

impl Compression {
    /// Whether the compressed copy is held in a file (open, an fd).
    pub(crate) fn packed_file(&self) -> bool {
        matches!(
            self.state,
            CompressState::Done(crate::supervisor::packer::Packed::File(_))
        )
    }
}

/// Where a capture's compression stands.
pub(crate) enum CompressState {
    /// The process runs, or the compression thread has the job.
    Pending,
    /// Compressed: readers use this; the uncompressed store was released.
    Done(Packed),
    /// Compression failed: the capture stays uncompressed.
    Failed(String),
}

impl Capture {
    /// The compressed capture, once compression is done.
    pub fn packed(&self) -> Option<&Packed> {
        match &self.compression {
            Some(Compression {
                state: CompressState::Done(p),
                ..
            }) => Some(p),
            _ => None,
        }
    }

    /// Whether the compression the spec asks for has not finished yet.
    pub fn compression_pending(&self) -> bool {
        matches!(
            self.compression,
            Some(Compression {
                state: CompressState::Pending,
                ..
            })
        )
    }

    /// Whether the capture's compression failed (it stays uncompressed).
    pub fn compression_failed(&self) -> bool {
        matches!(
            self.compression,
            Some(Compression {
                state: CompressState::Failed(_),
                ..
            })
        )
    }

    /// The `compression` result field.
    pub fn compression_res(&self) -> Option<crate::result::Compression> {
        use crate::result::CompressionState as S;
        let c = self.compression.as_ref()?;
        let (state, compressed_length, error) = match &c.state {
            CompressState::Pending => (S::Pending, None, None),
            CompressState::Done(p) => (S::Done, Some(p.compressed_len()), None),
            CompressState::Failed(e) => (S::Failed, None, Some(e.clone())),
        };
        Some(crate::result::Compression {
            algorithm: crate::capture::compress::ALGORITHM.to_string(),
            level: c.level,
            state,
            compressed_length,
            error,
        })
    }

    /// The compression job for a finished capture whose spec asks for one. A
    /// kept file whose writes failed is not compressed, and says so.
    pub fn compress_job(&mut self, tmpdir: &Path) -> Option<Job> {
        let c = self.compression.as_mut()?;
        if !matches!(c.state, CompressState::Pending) {
            return None;
        }
        match &self.store {
            // A complete kept file: the whole stream, compressed to `<path>.zst`,
            // which replaces it.
            Store::Kept { file: k, .. } => match k.file() {
                Some(src) if !k.failed() => Some(Job::Kept {
                    src: src.clone(),
                    src_path: k.path().to_path_buf(),
                    dst: crate::capture::kept::with_zst(k.path()),
                    level: c.level,
                }),
                _ => {
                    c.state = CompressState::Failed(
                        "not compressed: the kept file is incomplete (a write failed)".into(),
                    );
                    None
                }
            },
            Store::Memory {
                frozen: Some(f), ..
            } => Some(Job::Memory {
                frozen: f.clone(),
                level: c.level,
            }),
            Store::Memory { .. } => None,
            Store::Tempfile { file } => Some(Job::Tempfile {
                src: file.clone(),
                tmpdir: tmpdir.to_path_buf(),
                level: c.level,
            }),
        }
    }

    /// Takes the compression thread's result: a compressed capture replaces the
    /// uncompressed store (a memory capture's buffers are freed, a tempfile is
    /// swapped for the compressed one); a failure leaves the store as it is.
    ///
    /// Returns the file the compressed copy replaced (a tempfile, or a kept file
    /// already unlinked), for the caller to close off the reactor thread: closing
    /// the last fd of a large deleted file frees all its blocks.
    pub fn compressed(&mut self, result: Result<Packed, String>) -> Option<Arc<OwnedFd>> {
        let c = self.compression.as_mut()?;
        let mut released = None;
        match result {
            Ok(packed) => {
                match (&mut self.store, &packed) {
                    (Store::Memory { frozen, .. }, Packed::Memory(_)) => *frozen = None,
                    (Store::Tempfile { file }, Packed::File(f)) => {
                        released = Some(std::mem::replace(file, f.file.clone()));
                    }
                    // The .zst replaced the kept file, which is unlinked now.
                    (Store::Kept { file: k, .. }, Packed::File(_)) => {
                        released = k.take_file();
                    }
                    _ => {}
                }
                c.state = CompressState::Done(packed);
            }
            Err(e) => c.state = CompressState::Failed(e),
        }
        released
    }
}
