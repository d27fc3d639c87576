//! The compression thread: compresses finished captures off the reactor thread.
//!
//! The reactor hands a job (a frozen memory capture, or a capture file) to one
//! thread, started on the first job; the result comes back over a channel and wakes
//! the ring through the mailbox's eventfd, as the spawner's do. Until it arrives
//! readers keep using the uncompressed capture, so a read gives the same bytes
//! before and after.
//!
//! [`Packed`] is what a capture holds once compressed; it serves ranged reads
//! (decompressing only the frames a range needs) and the compressed bytes as stored.

use crate::capture::compress::{self, FrameIndex, PackedHeadTail, Source};
use crate::capture::headtail::{Frozen, ReadInfo};
use bytes::Bytes;
use rustix::fd::{AsFd, OwnedFd};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Something to compress.
pub(crate) enum Job {
    /// A finished memory capture: held bytes compressed into memory.
    Memory { frozen: Arc<Frozen>, level: i32 },
    /// A tempfile capture: compressed into a new unlinked file in `tmpdir`.
    Tempfile {
        src: Arc<OwnedFd>,
        tmpdir: PathBuf,
        level: i32,
    },
    /// A kept (named) capture file: compressed into the file at `dst`, created or
    /// truncated; once that is complete, `src_path` (the uncompressed file) is
    /// removed, so the compressed file replaces it.
    Kept {
        src: Arc<OwnedFd>,
        src_path: PathBuf,
        dst: PathBuf,
        level: i32,
    },
    /// Not a compression: a file to close on this thread (see
    /// [`Packer::release`]); nothing is reported back.
    Release(Arc<OwnedFd>),
}

/// A compressed capture.
#[derive(Clone, Debug)]
pub(crate) enum Packed {
    /// Held in memory.
    Memory(Arc<PackedHeadTail>),
    /// Held in a file.
    File(Arc<PackedFile>),
}

/// A capture compressed into a file.
#[derive(Debug)]
pub(crate) struct PackedFile {
    /// The compressed file (read with `pread`; its offset is not used).
    pub file: Arc<OwnedFd>,
    /// Its frames.
    pub index: FrameIndex,
    pub level: i32,
    /// The file's path, for a kept file; `None` for an unlinked one.
    pub path: Option<PathBuf>,
}

impl Packed {
    /// Total bytes of the stream (held or dropped).
    pub fn raw_len(&self) -> u64 {
        match self {
            Packed::Memory(m) => m.len(),
            Packed::File(f) => f.index.raw_len(),
        }
    }

    /// Bytes of compressed data.
    pub fn compressed_len(&self) -> u64 {
        match self {
            Packed::Memory(m) => m.compressed().len() as u64,
            Packed::File(f) => f.index.compressed_len(),
        }
    }

    pub fn level(&self) -> i32 {
        match self {
            Packed::Memory(m) => m.level(),
            Packed::File(f) => f.level,
        }
    }

    /// The stream's dropped middle (memory head/tail captures only).
    pub fn dropped(&self) -> Option<Range<u64>> {
        match self {
            Packed::Memory(m) => m.dropped(),
            Packed::File(_) => None,
        }
    }

    /// Bytes `[start, stop)` of the stream, as [`Frozen::read`].
    pub fn read(&self, start: u64, stop: u64, out: &mut Vec<u8>) -> io::Result<ReadInfo> {
        match self {
            Packed::Memory(m) => m.read(start, stop, out),
            Packed::File(f) => {
                // Clamped as every uncompressed read is (`stop` to the length,
                // then `start` to `stop`), so reads agree before and after.
                let len = f.index.raw_len();
                let stop = stop.min(len);
                let start = start.min(stop);
                compress::read_range(Source::Fd(f.file.as_fd()), Some(&f.index), start, stop, out)?;
                Ok(ReadInfo {
                    start,
                    stop,
                    missing: None,
                    dropped: None,
                })
            }
        }
    }

    /// All held bytes, decompressed (head then tail for a memory capture).
    #[cfg(test)]
    pub fn held_bytes(&self) -> io::Result<Bytes> {
        let mut out = Vec::new();
        self.read(0, u64::MAX, &mut out)?;
        Ok(Bytes::from(out))
    }

    /// Compressed bytes `[start, stop)` as stored, clamped to what exists.
    pub fn compressed_range(&self, start: u64, stop: u64) -> io::Result<(Range<u64>, Bytes)> {
        let len = self.compressed_len();
        let stop = stop.min(len);
        let start = start.min(stop);
        let bytes = match self {
            Packed::Memory(m) => m.compressed().slice(start as usize..stop as usize),
            Packed::File(f) => {
                super::proc::read_file(&f.file, start, stop).map_err(io::Error::from)?
            }
        };
        Ok((start..start + bytes.len() as u64, bytes))
    }
}

/// A job's outcome as the reactor takes it: an error as text. A panic fails
/// the job, not the thread, so every job gets its answer (waiters for
/// `Compressed`, such as the CLI, rely on that).
fn answer(job: impl FnOnce() -> io::Result<Packed>) -> Result<Packed, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
        .unwrap_or_else(|_| Err(io::Error::other("the compressor panicked")))
        .map_err(|e| e.to_string())
}

/// Runs one job on the compression thread; `cancel` stops it between frames
/// (the agent is shutting down).
fn run(job: Job, cancel: Option<&AtomicBool>) -> io::Result<Packed> {
    match job {
        Job::Memory { frozen, level } => Ok(Packed::Memory(Arc::new(PackedHeadTail::pack(
            &frozen, level, cancel,
        )?))),
        Job::Tempfile { src, tmpdir, level } => {
            let dst = crate::sys::fd::tempfile(&tmpdir).map_err(io::Error::from)?;
            let stats = compress::compress_file(&*src, &dst, level, cancel)?;
            Ok(Packed::File(Arc::new(PackedFile {
                file: Arc::new(dst),
                index: stats.index,
                level,
                path: None,
            })))
        }
        Job::Kept {
            src,
            src_path,
            dst,
            level,
        } => {
            kept_is_replaceable(&src, &src_path)?;
            // Read and write: ranged reads are served from this file later.
            // A new file: an existing `.zst` (an earlier run's) is never
            // replaced.
            let file = match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&dst)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(io::Error::other(format!(
                        "not compressed: {} exists, and is never replaced",
                        dst.display()
                    )));
                }
                Err(e) => return Err(e),
            };
            let stats = match compress::compress_file(&*src, &file, level, cancel) {
                Ok(s) => s,
                Err(e) => {
                    // Never leave a partial .zst beside the intact original.
                    let _ = std::fs::remove_file(&dst);
                    return Err(e);
                }
            };
            if let Err(e) = std::fs::remove_file(&src_path) {
                // The original stays the capture: no second copy beside it.
                let _ = std::fs::remove_file(&dst);
                return Err(e);
            }
            Ok(Packed::File(Arc::new(PackedFile {
                file: Arc::new(OwnedFd::from(file)),
                index: stats.index,
                level,
                path: Some(dst),
            })))
        }
        // Handled by the thread's loop before `run`.
        Job::Release(_) => Err(io::Error::other("not a compression job")),
    }
}

/// Whether the kept file at `path`, written through `src`, may be compressed
/// and then removed: it must be the regular file written, still at `path`.
/// A device (`/dev/null`), a FIFO or a symbolic link at `path` is never
/// removed, nor a file that has replaced the one written.
fn kept_is_replaceable(src: &OwnedFd, path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let not = |why: &str| io::Error::other(format!("not compressed: {} {why}", path.display()));
    let written = rustix::fs::fstat(src)?;
    if rustix::fs::FileType::from_raw_mode(written.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(not("is not a regular file"));
    }
    let now = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not("was removed")),
        Err(e) => return Err(e),
    };
    if now.file_type().is_symlink() {
        return Err(not("is a symbolic link"));
    }
    if (now.dev(), now.ino()) != (written.st_dev, written.st_ino) {
        return Err(not("is no longer the file written"));
    }
    Ok(())
}

/// A finished job: the proc's serial, the capture's index, and the outcome
/// (an error as text for the result).
pub(crate) type Done = (u64, usize, Result<Packed, String>);

/// The compression thread and its job queue.
pub(crate) struct Packer {
    jobs: Option<mpsc::Sender<(u64, usize, Job)>>,
    done: mpsc::Sender<Done>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Packer {
    /// A packer whose results go to `done`, each followed by a write to `wake`.
    /// No thread is started until the first job.
    pub(crate) fn new(done: mpsc::Sender<Done>, wake: Arc<OwnedFd>) -> Packer {
        Packer {
            jobs: None,
            done,
            wake,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Queues a job for capture `cap` of proc `serial`, starting the thread if
    /// need be. Fails only when the thread cannot be started.
    pub(crate) fn submit(&mut self, serial: u64, cap: usize, job: Job) -> Result<(), String> {
        if self.jobs.is_none() {
            let (tx, rx) = mpsc::channel::<(u64, usize, Job)>();
            let (done, wake, stop) = (self.done.clone(), self.wake.clone(), self.stop.clone());
            let thread = std::thread::Builder::new()
                .name("chaperone-zstd".into())
                .spawn(move || {
                    while let Ok((serial, cap, job)) = rx.recv() {
                        if let Job::Release(file) = job {
                            drop(file); // closed here, not on the reactor
                            continue;
                        }
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let result = answer(|| run(job, Some(&stop)));
                        if done.send((serial, cap, result)).is_err() {
                            break;
                        }
                        let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                    }
                })
                .map_err(|e| format!("starting the compression thread failed: {e}"))?;
            self.jobs = Some(tx);
            self.thread = Some(thread);
        }
        self.jobs
            .as_ref()
            .ok_or_else(|| "no compression thread".to_string())?
            .send((serial, cap, job))
            .map_err(|_| "the compression thread is gone".to_string())
    }
}

impl Packer {
    /// Closes `file` on the compression thread: the last close of a large
    /// deleted file frees all its blocks, which must not hold up the reactor.
    /// (Closed here instead if the thread cannot take it.)
    pub(crate) fn release(&mut self, file: Arc<OwnedFd>) {
        let _ = self.submit(0, 0, Job::Release(file));
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        // Queued jobs are skipped; the one under way stops before its next
        // frame (a kept file's partial `.zst` is removed, the original stays).
        self.stop.store(true, Ordering::Release);
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::headtail::HeadTail;
    use std::path::Path;

    fn packer() -> (Packer, mpsc::Receiver<Done>) {
        let (tx, rx) = mpsc::channel();
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        (Packer::new(tx, Arc::new(wake)), rx)
    }

    #[test]
    fn packer_compresses_memory_and_files_off_thread() {
        let (mut packer, rx) = packer();
        assert!(packer.thread.is_none(), "started lazily");
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut ht = HeadTail::new(1000, 2000);
        ht.push(&data);
        let frozen = Arc::new(ht.freeze());
        packer
            .submit(
                7,
                1,
                Job::Memory {
                    frozen: frozen.clone(),
                    level: 1,
                },
            )
            .unwrap();
        let src = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &src, &data).unwrap();
        let src = Arc::new(OwnedFd::from(src));
        let dir = tempfile::tempdir().unwrap();
        packer
            .submit(
                8,
                0,
                Job::Tempfile {
                    src: src.clone(),
                    tmpdir: dir.path().to_path_buf(),
                    level: 3,
                },
            )
            .unwrap();
        let kept_src = dir.path().join("out");
        std::fs::write(&kept_src, &data).unwrap();
        let kept = dir.path().join("out.zst");
        packer
            .submit(
                9,
                2,
                Job::Kept {
                    src: Arc::new(OwnedFd::from(std::fs::File::open(&kept_src).unwrap())),
                    src_path: kept_src.clone(),
                    dst: kept.clone(),
                    level: 1,
                },
            )
            .unwrap();

        let (serial, cap, mem) = rx.recv().unwrap();
        assert_eq!((serial, cap), (7, 1));
        let mem = mem.unwrap();
        assert_eq!(mem.raw_len(), data.len() as u64);
        assert_eq!(mem.dropped(), frozen.dropped());
        assert_eq!(mem.held_bytes().unwrap(), frozen.contiguous());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(
            mem.read(500, 398_500, &mut a).unwrap(),
            frozen.read(500, 398_500, &mut b)
        );
        assert_eq!(a, b);

        let (serial, cap, file) = rx.recv().unwrap();
        assert_eq!((serial, cap), (8, 0));
        let file = file.unwrap();
        assert_eq!((file.raw_len(), file.level()), (data.len() as u64, 3));
        assert_eq!(&file.held_bytes().unwrap()[..], &data[..]);
        let (range, zst) = file.compressed_range(0, u64::MAX).unwrap();
        assert_eq!(range, 0..file.compressed_len());
        assert_eq!(zstd::stream::decode_all(&zst[..]).unwrap(), data);

        let (serial, cap, kept_packed) = rx.recv().unwrap();
        assert_eq!((serial, cap), (9, 2));
        assert_eq!(kept_packed.unwrap().raw_len(), data.len() as u64);
        let on_disk = std::fs::read(&kept).unwrap();
        assert_eq!(zstd::stream::decode_all(&on_disk[..]).unwrap(), data);
        assert!(
            !kept_src.exists(),
            "the .zst replaces the uncompressed file"
        );
        drop(src);
    }

    #[test]
    fn compressed_capture_releases_its_uncompressed_store() {
        use crate::supervisor::proc::{Capture, CompressState, Compression, Store};
        let capture = |store| Capture {
            name: "stdout".into(),
            encoding: crate::spec::Encoding::Base64,
            attached: true,
            store,
            window: None,
            compression: Some(Compression {
                level: 1,
                state: CompressState::Pending,
            }),
        };
        // Memory: the frozen buffers are dropped once the packed copy is in.
        let mut ht = HeadTail::new(100, 100);
        ht.push(&[7u8; 1000]);
        let frozen = Arc::new(ht.freeze());
        let mut mem = capture(Store::Memory {
            pipe: Default::default(),
            live: HeadTail::default(),
            frozen: Some(frozen.clone()),
        });
        let Some(Job::Memory { frozen: f, level }) = mem.compress_job(Path::new("/tmp")) else {
            panic!("memory job expected")
        };
        let packed = run(Job::Memory { frozen: f, level }, None).unwrap();
        assert_eq!(Arc::strong_count(&frozen), 2);
        mem.compressed(Ok(packed));
        assert_eq!(Arc::strong_count(&frozen), 1, "the capture let go of it");
        assert!(mem.compress_job(Path::new("/tmp")).is_none(), "done once");
        let p = mem.packed().expect("packed");
        assert_eq!((p.raw_len(), p.dropped()), (1000, Some(100..900)));

        // Tempfile: the uncompressed file is swapped for the compressed one.
        let src = Arc::new(OwnedFd::from(tempfile::tempfile().unwrap()));
        let mut tmp = capture(Store::Tempfile { file: src.clone() });
        let job = tmp.compress_job(&std::env::temp_dir()).expect("job");
        let packed = run(job, None).unwrap();
        assert_eq!(Arc::strong_count(&src), 2);
        tmp.compressed(Ok(packed));
        assert_eq!(Arc::strong_count(&src), 1, "the original file is released");

        // A failure keeps the store and says why.
        let mut failed = capture(Store::Tempfile { file: src.clone() });
        failed.compressed(Err("disk full".into()));
        assert!(failed.packed().is_none());
        let res = failed.compression_res().unwrap();
        assert_eq!(res.error.as_deref(), Some("disk full"));
        assert_eq!(Arc::strong_count(&src), 2);
    }

    #[test]
    fn dropping_the_packer_cancels_a_kept_file_job_and_keeps_the_original() {
        let (mut packer, _rx) = packer();
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("out");
        // 32 frames of incompressible bytes: seconds of work at level 19.
        let mut data = vec![0u8; 32 * compress::FRAME_SIZE];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(&src_path, &data).unwrap();
        let dst = dir.path().join("out.zst");
        packer
            .submit(
                1,
                0,
                Job::Kept {
                    src: Arc::new(OwnedFd::from(std::fs::File::open(&src_path).unwrap())),
                    src_path: src_path.clone(),
                    dst: dst.clone(),
                    level: 19,
                },
            )
            .unwrap();
        // Wait for the first frame, then drop mid-job.
        while std::fs::metadata(&dst).map_or(0, |m| m.len()) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(packer);
        assert!(!dst.exists(), "the partial .zst is removed");
        assert_eq!(
            std::fs::metadata(&src_path).unwrap().len(),
            data.len() as u64,
            "the original stays whole"
        );
    }

    #[test]
    fn a_panicking_job_is_answered_with_an_error() {
        let r = answer(|| panic!("boom"));
        assert_eq!(r.err().as_deref(), Some("the compressor panicked"));
        let r = answer(|| Err(io::Error::other("disk full")));
        assert_eq!(r.err().as_deref(), Some("disk full"));
    }

    #[test]
    fn packer_reports_failures_as_text() {
        let (mut packer, rx) = packer();
        let src = Arc::new(OwnedFd::from(tempfile::tempfile().unwrap()));
        packer
            .submit(
                1,
                0,
                Job::Tempfile {
                    src,
                    tmpdir: PathBuf::from("/nonexistent/dir"),
                    level: 1,
                },
            )
            .unwrap();
        let (_, _, r) = rx.recv().unwrap();
        assert!(r.is_err());
    }
}
