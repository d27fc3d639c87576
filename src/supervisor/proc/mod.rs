//! One process: its plan (built in the parent), its captures, and its result.

use super::opener::{self, OpenReq, Opened};
use super::packer::{Job, Packed};
use crate::capture::headtail::{Frozen, HeadTail};
use crate::capture::kept::{self, KeptFile};
use crate::control;
use crate::metrics::procstat::{ProcStat, StatContext};
use crate::metrics::{ProcIo, ProcStatm};
use crate::result::{
    ChildFailure as ResFailure, Dropped, Encoding, FdExt, FdRes, ProcRes, Rusage, SamplesRes,
    State, Status, Times,
};
use crate::spec::{self, CaptureMode, FdSpec, ProcId, ProcSpec};
use crate::sys::fd;
use crate::sys::pipe;
use crate::sys::spawn::{CStringArray, ChildFailure, ChildPlan, Stage};
use bytes::Bytes;
use rustix::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use rustix::io::Errno;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

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
}

impl PipeIn {
    fn new(fd: OwnedFd) -> PipeIn {
        PipeIn {
            fd: Some(Rc::new(fd)),
            read_key: None,
        }
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

/// A capture's compression (spec `compress`).
pub(crate) struct Compression {
    pub level: i32,
    pub state: CompressState,
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

/// A snapshot of a process result whose fd contents are read on the caller's
/// thread (no whole-capture reads or encodings on the reactor thread).
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub res: ProcRes,
    pub fds: Vec<(String, Option<FdSnap>)>,
    /// The shared environment map, copied into `res.env` by [`Snapshot::into_res`]
    /// on the caller's thread rather than on the reactor's.
    pub env: Option<Arc<std::collections::BTreeMap<String, String>>>,
}

/// One fd of a [`Snapshot`].
#[derive(Clone, Debug)]
pub(crate) struct FdSnap {
    pub encoding: spec::Encoding,
    pub attached: bool,
    pub content: Content,
    /// The `compression` result field, for a capture with `compress`.
    pub compression: Option<crate::result::Compression>,
    /// A kept file's head/tail window (`"memory": true`).
    pub window: Option<(u64, u64)>,
}

impl Snapshot {
    /// Fills in `res.fds`, reading tempfiles; runs on the caller's thread.
    pub fn into_res(self) -> ProcRes {
        let mut res = self.res;
        res.env = self.env.map(Arc::unwrap_or_clone);
        for (name, snap) in self.fds {
            let value = snap.map(|s| s.to_fd_res());
            res.fds.insert(name, value);
        }
        res
    }
}

impl FdSnap {
    /// For a kept file with a head/tail window (`"memory": true`): the stream
    /// offsets an attached result leaves out, if any.
    fn window_gap(&self, len: u64) -> Option<std::ops::Range<u64>> {
        let (head, tail) = self.window.filter(|_| self.attached)?;
        (len > head.saturating_add(tail)).then(|| head..len - tail)
    }

    /// An attached kept file's bytes: the whole stream, or with a window its
    /// head followed by its tail, appended to one buffer by `read(start, stop,
    /// out)`.
    fn windowed(
        &self,
        len: u64,
        mut read: impl FnMut(u64, u64, &mut Vec<u8>) -> Result<(), Errno>,
    ) -> Result<Bytes, Errno> {
        let mut out = Vec::new();
        match self.window_gap(len) {
            None => read(0, len, &mut out)?,
            Some(gap) => {
                read(0, gap.start, &mut out)?;
                read(gap.end, len, &mut out)?;
            }
        }
        Ok(Bytes::from(out))
    }

    fn to_fd_res(&self) -> FdRes {
        let (length, dropped, held, limited) = match &self.content {
            Content::Kept(k) => (k.len, self.window_gap(k.len), None, false),
            Content::Memory(f) => (f.len(), f.dropped(), Some(f.held() as u64), f.limited()),
            Content::Counts {
                len,
                dropped,
                held,
                limited,
            } => (*len, dropped.clone(), Some(*held), *limited),
            Content::Range { len, .. } => (*len, None, None, false),
            Content::File(file) => {
                // Nothing of a tempfile is held in memory; `held` is not reported.
                (fd::file_len(&**file).unwrap_or(0), None, None, false)
            }
            // Compressed: what is held is the compressed form (see `compression`).
            Content::Zstd(p) => {
                let gap = p.dropped().or_else(|| self.window_gap(p.raw_len()));
                (p.raw_len(), gap, None, false)
            }
        };
        // `held` only when it says something: with nothing dropped it equals
        // `length`, and the result keeps Procstar's keys.
        let ext = FdExt {
            held: held.filter(|_| dropped.is_some()),
            dropped: dropped.map(|r| Dropped {
                start: r.start,
                stop: r.end,
            }),
            limited,
            compression: self.compression.clone(),
            path: match &self.content {
                Content::Kept(k) => Some(k.path.to_string_lossy().into_owned()),
                Content::Zstd(Packed::File(f)) => {
                    f.path.as_ref().map(|p| p.to_string_lossy().into_owned())
                }
                _ => None,
            },
        };
        if !self.attached {
            return FdRes::Detached {
                length,
                encoding: match self.encoding {
                    spec::Encoding::Utf8 => Encoding::Utf8,
                    spec::Encoding::Base64 => Encoding::Base64,
                },
                ext,
            };
        }
        let data = match &self.content {
            Content::Kept(k) => {
                let read = |a, b, out: &mut Vec<u8>| read_file_into(&*k.open()?, a, b, out);
                match self.windowed(k.len, read) {
                    Ok(b) => b,
                    Err(_) => return FdRes::Error,
                }
            }
            Content::Memory(f) => f.contiguous(),
            Content::Counts { .. } | Content::Range { .. } => return FdRes::Error,
            Content::File(file) => match read_file(file, 0, length) {
                Ok(b) => b,
                Err(_) => return FdRes::Error,
            },
            // The held bytes (a range read skips a dropped middle), or a kept
            // file's head/tail window of its compressed form.
            Content::Zstd(p) => {
                let read =
                    |a, b, out: &mut Vec<u8>| p.read(a, b, out).map(drop).map_err(|_| Errno::IO);
                match self.windowed(p.raw_len(), read) {
                    Ok(b) => b,
                    Err(_) => return FdRes::Error,
                }
            }
        };
        match self.encoding {
            spec::Encoding::Utf8 => FdRes::Text {
                bytes: data,
                length,
                ext,
            },
            spec::Encoding::Base64 => FdRes::Data {
                bytes: data,
                length,
                ext,
            },
        }
    }
}

/// Reads `[start, stop)` of a file.
pub(crate) fn read_file(file: &OwnedFd, start: u64, stop: u64) -> Result<Bytes, Errno> {
    let mut buf = Vec::new();
    read_file_into(file, start, stop, &mut buf)?;
    Ok(Bytes::from(buf))
}

/// Appends `[start, stop)` of a file (less at end of file) to `out`.
pub(crate) fn read_file_into(
    file: &OwnedFd,
    start: u64,
    stop: u64,
    out: &mut Vec<u8>,
) -> Result<(), Errno> {
    let len = usize::try_from(stop.saturating_sub(start)).map_err(|_| Errno::FBIG)?;
    // A huge range is an error (ENOMEM), not an abort.
    fd::pread_append(file, out, len, start)?;
    Ok(())
}

/// Life of a process.
pub(crate) enum Life {
    /// Waiting for its turn to start (`Config::max_running`, or fds to free up).
    Queued,
    /// Never started: the plan failed in the parent (errors say why).
    NotStarted,
    /// Its files are being opened off the reactor (see `opener`).
    Opening,
    /// Being spawned on the spawner thread.
    Starting,
    /// Running; waiting for exit.
    Running,
    /// Exited (a zombie, not yet reaped); its pipe reads are being cancelled.
    /// Their completions still carry its output, so its captures take bytes
    /// until the last read has ended; then the pipes are drained and it is
    /// reaped.
    Exiting,
    /// Exited, reaped, final.
    Done { status: i32, rusage: Rusage },
}

/// A process in the table.
pub(crate) struct Proc {
    pub id: ProcId,
    pub pid: Option<i32>,
    pub pidfd: Option<Rc<OwnedFd>>,
    pub life: Life,
    pub errors: Vec<String>,
    pub failure: Option<ChildFailure>,
    pub start: SystemTime,
    pub start_mono: Instant,
    /// Set once it is settled: when its exit was seen (so `elapsed` is the
    /// process's, not the time its last output took to land).
    pub stop: Option<(SystemTime, Instant)>,
    /// When its exit was seen.
    pub exited_at: Option<(SystemTime, Instant)>,
    pub proc_stat: Option<ProcStat>,
    /// fd name → capture index, in spec order; `None` for uncaptured fds.
    pub fds: Vec<(String, Option<usize>)>,
    pub captures: Vec<Capture>,
    /// Callers waiting for this process to finish.
    pub waiters: Vec<Box<dyn FnOnce(Snapshot) + Send>>,
    /// Callers waiting for it to finish and its compressions too
    /// ([`Proc::is_final`]).
    pub final_waiters: Vec<Box<dyn FnOnce(Snapshot) + Send>>,
    /// The start state the child was given (result extensions).
    pub started_with: StartInfo,
    /// The spec's timeout and what it has done.
    pub timeout: Option<TimeoutState>,
    /// Whether signals go to the whole process group.
    pub kill_group: bool,
    /// perf counters, when the spec (or the agent's default) asks for them.
    pub perf: Option<crate::metrics::perf::PerfState>,
    /// What sampling `/proc` while it runs has seen.
    pub sampled: Sampled,
    /// Whether it counts against `Config::max_running`: from its launch until it
    /// is settled (it holds fds all that time).
    pub holds_slot: bool,
    /// The start request it belongs to, until it has started or failed.
    pub request: Option<u64>,
    /// The spec's argv, for overviews.
    pub argv: Arc<[String]>,
}

/// `/proc` samples of a running process; kept after exit, when the files are gone
/// or read as zeros (`statm` of a zombie).
#[derive(Clone, Debug, Default)]
pub(crate) struct Sampled {
    /// The last `statm` read.
    pub statm: Option<ProcStatm>,
    /// `statm` reads so far.
    pub count: u64,
    pub last_at: Option<SystemTime>,
    pub peak_resident: u64,
    pub peak_size: u64,
    /// Resident set and CPU over its life, once sampled (see
    /// [`History`](super::status::History)).
    pub history: Option<Box<super::status::History>>,
    /// The last `/proc/<pid>/io` read.
    pub io: Option<ProcIo>,
}

impl Sampled {
    fn to_res(&self) -> Option<SamplesRes> {
        Some(SamplesRes {
            count: self.count,
            last_at: rfc3339(self.last_at?),
            peak_resident: self.peak_resident,
            peak_size: self.peak_size,
        })
    }
}

/// The start state a child was given, reported in its result.
#[derive(Clone, Debug, Default)]
pub(crate) struct StartInfo {
    pub cwd: Option<String>,
    pub umask: Option<u32>,
    /// Shared between processes that got the same environment (see
    /// `Reactor::launch`): a thousand children of one spec hold one map.
    pub env: Option<Arc<std::collections::BTreeMap<String, String>>>,
}

/// A process's timeout: the plan, and what has happened.
#[derive(Clone, Debug)]
pub(crate) struct TimeoutState {
    /// The key of the pending timer op, if one is armed.
    pub timer: Option<u64>,
    pub after: std::time::Duration,
    pub signum: i32,
    pub kill_after: Option<std::time::Duration>,
    pub fired_at: Option<SystemTime>,
    pub killed: bool,
}

impl TimeoutState {
    fn to_res(&self) -> crate::result::TimeoutRes {
        crate::result::TimeoutRes {
            after: self.after.as_secs_f64(),
            signal: crate::signal::signal_name(self.signum)
                .map_or_else(|| self.signum.to_string(), str::to_string),
            kill_after: self.kill_after.map(|d| d.as_secs_f64()),
            fired: self.fired_at.is_some(),
            fired_at: self.fired_at.map(rfc3339),
            killed: self.killed,
        }
    }
}

impl Proc {
    /// A process of a start request, queued until it can be launched.
    pub fn queued(id: ProcId, request: u64) -> Proc {
        Proc {
            id,
            pid: None,
            pidfd: None,
            life: Life::Queued,
            errors: Vec::new(),
            failure: None,
            start: SystemTime::now(),
            start_mono: Instant::now(),
            stop: None,
            exited_at: None,
            proc_stat: None,
            fds: Vec::new(),
            captures: Vec::new(),
            waiters: Vec::new(),
            final_waiters: Vec::new(),
            started_with: StartInfo::default(),
            timeout: None,
            kill_group: false,
            sampled: Sampled::default(),
            perf: None,
            holds_slot: false,
            argv: Arc::from([]),
            request: Some(request),
        }
    }

    /// Takes what plan building made for it (the plan itself goes to the spawn),
    /// and starts its clock.
    pub fn launched(&mut self, prep: Prepared, started_with: StartInfo) {
        self.errors = prep.errors;
        self.fds = prep.fds;
        self.captures = prep.captures;
        self.started_with = started_with;
        self.timeout = prep.timeout;
        self.kill_group = prep.kill_group;
        self.perf = prep.perf;
        self.start = SystemTime::now();
        self.start_mono = Instant::now();
    }

    pub fn is_running(&self) -> bool {
        matches!(self.life, Life::Running | Life::Starting)
    }

    /// Whether its captures still take pipe bytes: running, or exited with a
    /// pipe read still to end ([`Life::Exiting`]).
    pub fn takes_output(&self) -> bool {
        self.is_running() || matches!(self.life, Life::Exiting)
    }

    /// Whether any capture has a pipe read in flight.
    pub fn reading(&self) -> bool {
        self.captures
            .iter()
            .any(|c| c.store.pipe().is_some_and(|p| p.read_key.is_some()))
    }

    /// Not yet settled: running, exiting, or exited and reaped with kept-file
    /// writes still in flight. Waiters wait, delete is refused.
    pub fn is_busy(&self) -> bool {
        self.takes_output()
            || matches!(self.life, Life::Queued | Life::Opening)
            || (matches!(self.life, Life::Done { .. }) && self.stop.is_none())
    }

    /// Settled, with no compression still pending: nothing in its result will
    /// change.
    pub fn is_final(&self) -> bool {
        !self.is_busy() && !self.captures.iter().any(Capture::compression_pending)
    }

    /// Answers the callers of [`Agent::wait_compressed`](crate::Agent::wait_compressed)
    /// once the process [is final](Proc::is_final).
    pub fn answer_final_waiters(&mut self, stat_ctx: Option<&StatContext>) {
        if self.final_waiters.is_empty() || !self.is_final() {
            return;
        }
        let snap = self.snapshot(stat_ctx);
        for w in std::mem::take(&mut self.final_waiters) {
            w(snap.clone());
        }
    }

    /// Whether every kept file of this process holds all the bytes taken for it.
    pub fn kept_idle(&self) -> bool {
        self.captures.iter().all(|c| match &c.store {
            Store::Kept { file, .. } => file.idle(),
            _ => true,
        })
    }

    /// Makes a process that is no longer running final: stop time, memory
    /// captures frozen (pipes dropped), waiters answered.
    pub fn settle(&mut self, stat_ctx: Option<&StatContext>) {
        self.stop = Some(
            self.exited_at
                .unwrap_or_else(|| (SystemTime::now(), Instant::now())),
        );
        for cap in self.captures.iter_mut() {
            match &mut cap.store {
                Store::Memory {
                    pipe, live, frozen, ..
                } => {
                    pipe.fd = None;
                    *frozen = Some(Arc::new(std::mem::take(live).freeze()));
                }
                Store::Kept { pipe, file } => {
                    pipe.fd = None;
                    file.release_buffers();
                    // Complete: a thousand finished results must not hold a
                    // thousand fds. A compression still needs it (and then
                    // replaces it).
                    if cap.compression.is_none() {
                        file.close();
                    }
                }
                Store::Tempfile { .. } => {}
            }
        }
        let waiters = std::mem::take(&mut self.waiters);
        if !waiters.is_empty() {
            let snap = self.snapshot(stat_ctx);
            for w in waiters {
                w(snap.clone());
            }
        }
    }

    /// Samples `/proc/<pid>/stat` and `statm` of a running process into
    /// `proc_stat` and `sampled`, reusing `buf`. A process that is gone or
    /// already exiting (or whose files do not parse) leaves the previous samples
    /// as they were. Returns whether a new sample was taken.
    pub fn sample(&mut self, ctx: &StatContext, buf: &mut Vec<u8>) -> bool {
        /// `PF_EXITING` in `/proc/<pid>/stat`'s flags: `do_exit` has begun.
        const PF_EXITING: u64 = 0x4;
        let (Life::Running, Some(pid)) = (&self.life, self.pid) else {
            return false;
        };
        // statm first, then stat: a process that exits between the two reads
        // shows it in stat, so a statm read during the exit's address-space
        // teardown (zeros, or a part of the real figure) is never kept.
        let statm = read_parsed(pid, "statm", buf, |t| {
            crate::metrics::parse_statm(t, ctx.page_size).ok()
        });
        let Some(stat) = read_stat(pid, ctx, buf) else {
            return false;
        };
        let exiting = matches!(stat.state, 'Z' | 'X' | 'x') || stat.flags & PF_EXITING != 0;
        if exiting {
            return false;
        }
        self.proc_stat = Some(stat);
        if let Some(m) = statm {
            let s = &mut self.sampled;
            s.statm = Some(m);
            s.count += 1;
            s.last_at = Some(SystemTime::now());
            s.peak_resident = s.peak_resident.max(m.resident);
            s.peak_size = s.peak_size.max(m.size);
            return true;
        }
        false
    }

    /// Reads `/proc/<pid>/io` into `sampled.io` (also for a zombie: call before
    /// reaping). Unreadable (gone, or no permission) keeps the previous value.
    pub fn read_io(&mut self, buf: &mut Vec<u8>) {
        let Some(pid) = self.pid else { return };
        if matches!(self.life, Life::Done { .. } | Life::NotStarted) {
            return;
        }
        let io = read_parsed(pid, "io", buf, |t| crate::metrics::parse_io(t).ok());
        if io.is_some() {
            self.sampled.io = io;
        }
    }

    /// Builds the result snapshot (fd contents filled in by the caller). A
    /// running process is sampled first, so a live result is current.
    pub fn snapshot(&mut self, stat_ctx: Option<&StatContext>) -> Snapshot {
        self.snapshot_with(stat_ctx, false)
    }

    /// As [`Proc::snapshot`]; with `brief`, every capture as detached (its
    /// counts only: no bytes copied or read).
    pub fn snapshot_with(&mut self, stat_ctx: Option<&StatContext>, brief: bool) -> Snapshot {
        if let (Life::Running, Some(ctx)) = (&self.life, stat_ctx) {
            let mut buf = Vec::with_capacity(1024);
            let _ = self.sample(ctx, &mut buf);
            self.read_io(&mut buf);
        }
        let now = SystemTime::now();
        let (status, rusage) = match &self.life {
            Life::Done { status, rusage } => {
                (Some(Status::from_wait_status(*status)), Some(*rusage))
            }
            _ => (None, None),
        };
        let state = if !self.errors.is_empty() {
            State::Error
        } else if self.takes_output() || matches!(self.life, Life::Queued | Life::Opening) {
            State::Running
        } else {
            State::Terminated
        };
        let elapsed = match self.stop {
            Some((_, mono)) => mono.duration_since(self.start_mono),
            None => self.start_mono.elapsed(),
        };
        let res = ProcRes {
            state,
            errors: self.errors.clone(),
            pid: self.pid,
            status,
            rusage,
            proc_stat: self.proc_stat.clone(),
            proc_statm: self.sampled.statm,
            cgroup_accounting: None,
            times: Times {
                start: rfc3339(self.start),
                now: rfc3339(now),
                stop: self.stop.map(|(t, _)| rfc3339(t)),
                elapsed: elapsed.as_secs_f64(),
            },
            fds: Default::default(),
            failure: self.failure.as_ref().map(|f| ResFailure {
                stage: f.stage.name().to_string(),
                errno: f.errno.raw_os_error(),
                fd: (f.fd >= 0).then_some(f.fd),
            }),
            cwd: self.started_with.cwd.clone(),
            umask: self.started_with.umask,
            env: None, // from `Snapshot::env`, on the caller's thread
            timeout: self.timeout.as_ref().map(TimeoutState::to_res),
            proc_io: self.sampled.io,
            statm_samples: self.sampled.to_res(),
            perf: self.perf.as_ref().map(|p| p.result()),
        };
        let fds = self
            .fds
            .iter()
            .map(|(name, idx)| {
                let snap = idx.and_then(|i| self.captures.get(i)).map(|c| FdSnap {
                    encoding: c.encoding,
                    attached: c.attached && !brief,
                    content: if c.attached && !brief {
                        c.content()
                    } else {
                        c.counts()
                    },
                    compression: c.compression_res(),
                    window: c.window,
                });
                (name.clone(), snap)
            })
            .collect();
        Snapshot {
            res,
            fds,
            env: self.started_with.env.clone(),
        }
    }
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
                Some(src) if !k.failed() => {
                    let mut dst = k.path().as_os_str().to_owned();
                    dst.push(".zst");
                    Some(Job::Kept {
                        src: src.clone(),
                        src_path: k.path().to_path_buf(),
                        dst: PathBuf::from(dst),
                        level: c.level,
                    })
                }
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

/// Reads and parses `/proc/<pid>/stat` into `buf`'s storage; `None` if the
/// process is gone or the text does not parse.
pub(crate) fn read_stat(pid: i32, ctx: &StatContext, buf: &mut Vec<u8>) -> Option<ProcStat> {
    read_parsed(pid, "stat", buf, |t| {
        crate::metrics::procstat::parse_stat(t, ctx).ok()
    })
}

/// Reads `/proc/<pid>/<name>` into `buf` and parses its text; `None` if the
/// process is gone or the text does not parse.
fn read_parsed<T>(
    pid: i32,
    name: &str,
    buf: &mut Vec<u8>,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    crate::metrics::read_proc_file(pid, name, buf).ok()?;
    parse(std::str::from_utf8(buf).ok()?)
}

/// RFC 3339 with nanoseconds, as Procstar prints times.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let ns = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
        .unwrap_or(0);
    crate::metrics::format_rfc3339(ns)
}

/// The agent's soft fd limit, which its children start with.
fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Whether `fd` is at or past the fd limit (so no process could have it).
fn above_fd_limit(fd: i32) -> bool {
    fd_limit().is_some_and(|l| u64::try_from(fd).is_ok_and(|fd| fd >= l))
}

/// Error text for a child setup failure, in Procstar's wording.
pub(crate) fn failure_message(f: &ChildFailure, exe: &str) -> String {
    let err = std::io::Error::from_raw_os_error(f.errno.raw_os_error());
    match f.stage {
        Stage::Exec => format!("execve failed: {exe}: {err}"),
        Stage::DupFd | Stage::CloseFd if f.errno == Errno::BADF && above_fd_limit(f.fd) => format!(
            "failed to set up fd {}: {err}: fds must be below the fd limit, {} here (RLIMIT_NOFILE)",
            f.fd,
            fd_limit().unwrap_or_default()
        ),
        Stage::DupFd | Stage::CloseFd => format!("failed to set up fd {}: {err}", f.fd),
        Stage::Setsid => format!("setsid failed: {err}"),
        Stage::CloseRange => format!("close_range failed: {err}"),
        Stage::SignalMask => format!("setting the signal mask failed: {err}"),
        Stage::Setpgid => format!("setpgid failed: {err}"),
        Stage::PdeathSig if f.errno == Errno::SRCH => {
            "the agent exited before the child started".to_string()
        }
        Stage::PdeathSig => format!("setting the parent-death signal failed: {err}"),
        Stage::Chdir => format!(
            "chdir failed: {}: {err}",
            f.path.as_deref().unwrap_or("<cwd>")
        ),
        Stage::Rlimit => format!(
            "setting rlimit {} failed: {err}",
            crate::control::RLIMIT_NAMES
                .iter()
                .find(|&&(_, r)| i64::from(r) == i64::from(f.fd))
                .map_or_else(|| f.fd.to_string(), |(n, _)| (*n).to_string())
        ),
        Stage::SetGroups => format!("setgroups failed: {err}"),
        Stage::SetGid => format!("setgid failed: {err}"),
        Stage::SetUser => format!("setuid failed: {err}"),
        Stage::None => format!("child setup failed: {err}"),
    }
}

/// The error for a path refused because in the agent it means the agent.
fn refusal(fd: RawFd, path: &Path, why: &fd::OpenFailure) -> String {
    let path = path.display();
    match why {
        fd::OpenFailure::AgentProc(at) => format!(
            "failed to set up fd {fd}: {path} is the agent's own {at}: refused, as it would \
             give the child the agent's memory, fds or environment (the agent opens spec \
             files; use a dup of another fd, or open it in the child)"
        ),
        _ => format!(
            "failed to set up fd {fd}: {path} goes through a /proc magic link (such as \
             /dev/fd/N, /dev/stdin or /proc/self/fd/N) or a symlink loop: refused, as in the \
             agent it would be the agent's own fd (use a dup of the child's fd instead)"
        ),
    }
}

/// The directory the child starts in: relative `file` paths are opened there.
fn child_cwd(ps: &ProcSpec, ctx: &PlanContext<'_>) -> Option<PathBuf> {
    match (ps.cwd.as_deref().map(Path::new), ctx.cwd) {
        (Some(c), Some(a)) => Some(a.join(c)),
        (Some(c), None) => Some(c.to_path_buf()),
        (None, a) => a.map(Path::to_path_buf),
    }
}

/// Where a `file` fd's path is opened: in the child's directory when the
/// spec sets `cwd`, else as given (relative to the agent's).
fn file_path(ps: &ProcSpec, child_cwd: Option<&Path>, path: &str) -> PathBuf {
    match (&ps.cwd, child_cwd) {
        (Some(_), Some(dir)) => dir.join(path),
        _ => PathBuf::from(path),
    }
}

/// The opens a spec needs done off the reactor (`file` fds and kept capture
/// files), by index in its `fds`.
pub(crate) fn opens_for(id: &str, ps: &ProcSpec, ctx: &PlanContext<'_>) -> Vec<OpenReq> {
    let cwd = child_cwd(ps, ctx);
    let mut opens = Vec::new();
    if control::needs_lookups(ps) {
        opens.push(OpenReq::Control {
            id: id.to_string(),
            spec: Box::new(ps.clone()),
            defaults: control_defaults(ctx),
        });
    }
    for (index, (name, fs)) in ps.fds.iter().enumerate() {
        let Ok(fd) = spec::parse_fd_name(name) else {
            continue;
        };
        match fs {
            FdSpec::File { path, flags, mode } => opens.push(OpenReq::File {
                index,
                path: file_path(ps, cwd.as_deref(), path),
                flags: flags.oflags(fd),
                mode: *mode,
            }),
            FdSpec::Capture {
                mode: CaptureMode::File,
                path,
                dir,
                ..
            } => opens.push(OpenReq::Kept {
                index,
                id: id.to_string(),
                fd_name: spec::fd_name(fd),
                path: path.clone(),
                dir: dir.clone(),
                cwd: cwd.clone(),
            }),
            _ => {}
        }
    }
    opens
}

fn fd_error(fd: RawFd, e: Errno) -> String {
    format!(
        "failed to set up fd {fd}: {}",
        std::io::Error::from_raw_os_error(e.raw_os_error())
    )
}

fn control_defaults(ctx: &PlanContext<'_>) -> control::Defaults {
    control::Defaults {
        pdeath_sig: ctx.pdeath_sig,
    }
}

/// Agent-wide settings a plan needs.
pub(crate) struct PlanContext<'a> {
    pub env: &'a [(std::ffi::OsString, std::ffi::OsString)],
    pub tmpdir: &'a Path,
    pub pipe_size: usize,
    pub head: usize,
    pub tail: usize,
    /// Floor for long-lived fds (see `sys::fd::move_high`).
    pub fd_floor: RawFd,
    /// The agent-wide parent-death signal (`Config::pdeath_sig`).
    pub pdeath_sig: Option<i32>,
    /// The agent's working directory, read once at start (as its environment is).
    pub cwd: Option<&'a Path>,
    /// Whether procs whose spec has no `perf` count every perf event (`Config::perf`).
    pub perf: bool,
    /// The one exe allowed (`Config::restrict_exe`).
    pub restrict_exe: Option<&'a str>,
    /// Whether results carry the environment by default (`Config::report_env`).
    pub report_env: bool,
    /// `/dev/null`, opened once per way of opening it.
    pub null: &'a NullFds,
}

/// `/dev/null` opened once for each access mode, and a duplicate handed to
/// each child that asks for it: a dup costs a fraction of a path lookup, and
/// a batch of `null` fds is the common case (a bench run has three).
#[derive(Default)]
pub(crate) struct NullFds(std::cell::RefCell<Vec<(i32, OwnedFd)>>);

impl NullFds {
    /// An fd on `/dev/null` as `open(2)` with `oflags` would give it.
    fn get(&self, oflags: i32, floor: RawFd) -> Result<OwnedFd, Errno> {
        let open = || fd::open(Path::new("/dev/null"), oflags, 0o666);
        if oflags & libc::O_EXCL != 0 {
            // O_EXCL with O_CREAT fails on an existing file: say so each time.
            return open();
        }
        // Only the access mode and O_APPEND stay with an open /dev/null.
        let key = oflags & (libc::O_ACCMODE | libc::O_APPEND);
        let mut held = self.0.borrow_mut();
        let raw = match held.iter().find(|(k, _)| *k == key) {
            Some((_, f)) => f.as_raw_fd(),
            None => {
                let f = fd::move_high(open()?, floor);
                let raw = f.as_raw_fd();
                held.push((key, f));
                raw
            }
        };
        fd::dup_cloexec_raw(raw, 0)
    }
}

/// Pipes between procs of one request, keyed by (writer proc id, writer fd).
pub(crate) type RequestPipes = HashMap<(ProcId, RawFd), (Option<OwnedFd>, Option<OwnedFd>)>;

/// Creates the pipes for every `pipe-write` of a request.
pub(crate) fn request_pipes(input: &spec::Input) -> Result<RequestPipes, (ProcId, String)> {
    let mut pipes = RequestPipes::new();
    for (id, ps) in input.specs.iter() {
        for (name, fs) in &ps.fds {
            if matches!(fs, FdSpec::PipeWrite) {
                let fd = spec::parse_fd_name(name).map_err(|e| (id.clone(), e.to_string()))?;
                let (r, w) =
                    pipe::pipe().map_err(|e| (id.clone(), format!("pipe creation failed: {e}")))?;
                pipes.insert((id.clone(), fd), (Some(r), Some(w)));
            }
        }
    }
    Ok(pipes)
}

/// A child environment built from an [`spec::EnvSpec`] and the agent's own: the
/// array the child execs with, and the map its result reports.
#[derive(Clone)]
pub(crate) struct BuiltEnv {
    pub envp: Arc<CStringArray>,
    pub map: Arc<BTreeMap<String, String>>,
}

/// The environment last built, for the next process whose spec asks for the
/// same one: a fan-out of one spec builds (and holds) its environment once.
#[derive(Default)]
pub(crate) struct EnvCache {
    last: Option<(spec::EnvSpec, BuiltEnv)>,
}

impl EnvCache {
    /// The environment `spec` gives a child of an agent whose own is `agent`;
    /// `Err` if a name or value holds a NUL byte.
    fn get(
        &mut self,
        spec: &spec::EnvSpec,
        agent: &[(std::ffi::OsString, std::ffi::OsString)],
    ) -> Result<BuiltEnv, Errno> {
        if let Some((s, built)) = &self.last {
            if s == spec {
                return Ok(built.clone());
            }
        }
        let vars = spec.build(agent.iter().cloned());
        let map = vars
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect();
        let envp = CStringArray::new(vars.into_iter().map(|(k, v)| {
            use std::os::unix::ffi::OsStrExt;
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            kv
        }))?;
        let built = BuiltEnv {
            envp: Arc::new(envp),
            map: Arc::new(map),
        };
        self.last = Some((spec.clone(), built.clone()));
        Ok(built)
    }
}

/// A plan ready to spawn, with the captures it sets up.
pub(crate) struct Prepared {
    pub plan: Option<ChildPlan>,
    pub exe: String,
    pub fds: Vec<(String, Option<usize>)>,
    pub captures: Vec<Capture>,
    pub errors: Vec<String>,
    /// Whether the errors include running out of fds (`EMFILE`, `ENFILE`), so
    /// that the same spec may start once other processes have let go of theirs.
    pub out_of_fds: bool,
    /// The start state given to the child (result extensions).
    pub started_with: StartInfo,
    /// The resolved timeout, if the spec has one.
    pub timeout: Option<TimeoutState>,
    /// Whether signals go to the whole process group.
    pub kill_group: bool,
    /// The perf counters the child opens, if any are asked for.
    pub perf: Option<crate::metrics::perf::PerfState>,
}

/// Builds the child plan for one spec. Failures to open fds are collected as
/// Procstar-style error strings; the plan is then `None` and nothing is spawned.
pub(crate) fn prepare(
    id: &str,
    ps: &ProcSpec,
    ctx: &PlanContext<'_>,
    pipes: &mut RequestPipes,
    env_cache: &mut EnvCache,
    opened: Vec<(usize, Opened)>,
) -> Prepared {
    let mut opened: HashMap<usize, Opened> = opened.into_iter().collect();
    let exe = ps.exe().unwrap_or_default().to_string();
    let mut errors = Vec::new();
    if let Some(allowed) = ctx.restrict_exe.filter(|a| *a != exe) {
        errors.push(format!(
            "proc {id}: exe {exe:?} is not allowed: this agent runs only {allowed:?} (--restrict-exe)"
        ));
    }
    // Resolved on an opener thread where it takes NSS lookups (`opens_for`).
    let ctl = match opened.remove(&opener::CONTROL) {
        Some(Opened::Control(r)) => r,
        _ => control::resolve(id, ps, &control_defaults(ctx)),
    };
    let ctl = match ctl {
        Ok(c) => Some(c),
        Err(es) => {
            errors.extend(es.iter().map(ToString::to_string));
            None
        }
    };
    // env.user_env: HOME, USER, LOGNAME and SHELL go in after `inherit` and before
    // `vars`, which is the same as `vars` entries that the spec's own override.
    let user_env_spec;
    let env_spec = match ctl.as_ref().and_then(|c| c.user_env.as_ref()) {
        Some(user_env) => {
            let mut e = ps.env.clone();
            for (k, v) in user_env {
                e.vars.entry(k.clone()).or_insert_with(|| Some(v.clone()));
            }
            user_env_spec = e;
            &user_env_spec
        }
        None => &ps.env,
    };
    let env = env_cache.get(env_spec, ctx.env);
    let argv: Vec<Vec<u8>> = ps.argv.iter().map(|a| a.as_bytes().to_vec()).collect();
    let plan = env
        .as_ref()
        .map_err(|_| Errno::INVAL)
        .and_then(|e| ChildPlan::with_env(std::ffi::OsStr::new(&exe), argv, e.envp.clone()));
    let mut plan = match plan {
        Ok(p) => Some(p),
        Err(_) => {
            errors.push(format!("proc {id}: exe, argv or env contains a NUL byte"));
            None
        }
    };
    let child_cwd = child_cwd(ps, ctx);
    if let (Some(p), Some(c)) = (plan.as_mut(), ctl.as_ref()) {
        apply_control(p, c);
    }

    let mut fds = Vec::new();
    let mut captures = Vec::new();
    // Kept capture files this proc created (removed again if it cannot start).
    let mut created_kept: Vec<PathBuf> = Vec::new();
    // The child's fd table as the list is applied: target → raw source in the plan
    // (or the agent's own 0–2), for `dup` resolution in list order.
    let mut table: HashMap<RawFd, Option<RawFd>> = (0..=2).map(|fd| (fd, Some(fd))).collect();
    // Whether an fd failed for want of fds (EMFILE, ENFILE): worth a retry later.
    let mut out_of_fds = false;

    for (index, (name, fs)) in ps.fds.iter().enumerate() {
        // Whether this fd's error is already reported (a refused path).
        let mut refused = false;
        let fd = match spec::parse_fd_name(name) {
            Ok(fd) => fd,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let norm = spec::fd_name(fd);
        let mut cap_index = None;
        let source: Result<Option<OwnedFd>, Errno> = match fs {
            FdSpec::Inherit => Ok(None),
            FdSpec::Close => {
                if let Some(p) = plan.as_mut() {
                    if (0..=2).contains(&fd) {
                        p.close(fd);
                    }
                }
                table.insert(fd, None);
                Ok(None)
            }
            FdSpec::Null { flags } => ctx.null.get(flags.oflags(fd), ctx.fd_floor).map(Some),
            FdSpec::File { path, flags, mode } => {
                let at = file_path(ps, child_cwd.as_deref(), path);
                let r = match opened.remove(&index) {
                    Some(Opened::File(r)) => r,
                    _ => fd::open_for_child(&at, flags.oflags(fd), *mode),
                };
                match r {
                    Ok(f) => Ok(Some(f)),
                    Err(fd::OpenFailure::Sys(e)) => Err(e),
                    Err(refused) => {
                        errors.push(refusal(fd, &at, &refused));
                        Ok(None)
                    }
                }
            }
            FdSpec::Dup { fd: from } => match table.get(from).copied().flatten() {
                Some(raw) => fd::dup_cloexec_raw(raw, 0).map(Some),
                None => Err(Errno::BADF),
            },
            FdSpec::Capture {
                mode,
                encoding,
                attached,
                head,
                tail,
                compress,
                compress_level,
                path,
                dir,
                memory,
            } => {
                let head = head.map_or(ctx.head, |h| usize::try_from(h).unwrap_or(usize::MAX));
                let tail = tail.map_or(ctx.tail, |t| usize::try_from(t).unwrap_or(usize::MAX));
                let made = match mode {
                    CaptureMode::Memory => pipe::capture_pipe(ctx.pipe_size).map(|p| {
                        (
                            Store::Memory {
                                pipe: PipeIn::new(fd::move_high(p.read, ctx.fd_floor)),
                                live: HeadTail::new(head, tail),
                                frozen: None,
                            },
                            p.write,
                        )
                    }),
                    CaptureMode::File => {
                        let target = (path.as_deref(), dir.as_deref());
                        let r = match opened.remove(&index) {
                            Some(Opened::Kept(r)) => r,
                            _ => open_kept(id, &norm, target, child_cwd.as_deref()),
                        };
                        let r = match r {
                            Ok(x) => Ok(x),
                            Err(fd::OpenFailure::Sys(e)) => Err(e),
                            Err(why) => {
                                let shown = path.as_deref().or(dir.as_deref()).unwrap_or("");
                                errors.push(refusal(fd, Path::new(shown), &why));
                                refused = true;
                                Err(Errno::PERM)
                            }
                        };
                        r.and_then(|(f, at, new)| {
                            if new {
                                created_kept.push(at.clone());
                            }
                            let p = pipe::capture_pipe(ctx.pipe_size)?;
                            let f = fd::move_high(f, ctx.fd_floor);
                            let cap = kept::staging_cap(ctx.pipe_size);
                            let file = KeptFile::new(f, at, cap);
                            Ok((
                                Store::Kept {
                                    pipe: PipeIn::new(fd::move_high(p.read, ctx.fd_floor)),
                                    file: Box::new(file),
                                },
                                p.write,
                            ))
                        })
                    }
                    CaptureMode::Tempfile => fd::tempfile(ctx.tmpdir).and_then(|f| {
                        let child = fd::dup_cloexec(f.as_fd())?;
                        let f = fd::move_high(f, ctx.fd_floor);
                        Ok((Store::Tempfile { file: Arc::new(f) }, child))
                    }),
                };
                made.map(|(store, child)| {
                    cap_index = Some(captures.len());
                    captures.push(Capture {
                        name: norm.clone(),
                        encoding: *encoding,
                        attached: *attached,
                        store,
                        window: (*mode == CaptureMode::File && *memory)
                            .then_some((head as u64, tail as u64)),
                        // Validated: "zstd" is the only algorithm, levels fit i32.
                        compression: compress.as_ref().map(|_| Compression {
                            level: compress_level
                                .and_then(|l| i32::try_from(l).ok())
                                .unwrap_or(crate::capture::compress::DEFAULT_LEVEL),
                            state: CompressState::Pending,
                        }),
                    });
                    Some(child)
                })
            }
            FdSpec::PipeWrite => Ok(pipes
                .get_mut(&(id.to_string(), fd))
                .and_then(|(_, w)| w.take())),
            FdSpec::PipeRead { proc_id, fd: wfd } => {
                let wfd = spec::parse_fd_name(wfd).unwrap_or(-1);
                Ok(pipes
                    .get_mut(&(proc_id.clone(), wfd))
                    .and_then(|(r, _)| r.take()))
            }
        };
        match source {
            Ok(Some(src)) => {
                table.insert(fd, Some(src.as_raw_fd()));
                if let Some(p) = plan.as_mut() {
                    if fd < 0 {
                        errors.push(fd_error(fd, Errno::BADF));
                    } else {
                        p.dup(src, fd);
                    }
                }
            }
            Ok(None) => {}
            Err(_) if refused => {}
            Err(e) => {
                out_of_fds |= e == Errno::MFILE || e == Errno::NFILE;
                errors.push(fd_error(fd, e));
            }
        }
        fds.push((norm, cap_index));
    }
    if !errors.is_empty() {
        plan = None;
        // Nothing starts: remove the kept files this proc created (an existing
        // file named by `path` was truncated, and is left).
        for p in &created_kept {
            let _ = std::fs::remove_file(p);
        }
    }
    // perf counters: only when asked for (no probe, no cost otherwise).
    let perf = match plan.as_mut() {
        Some(p) => {
            let events = crate::metrics::perf::requested(ps.perf.as_ref(), ctx.perf);
            let setup = (!events.is_empty())
                .then(|| crate::metrics::perf::Setup::new(&events, crate::metrics::perf::probe()));
            setup.map(|s| {
                p.set_perf(s.plan());
                crate::metrics::perf::PerfState::Pending(s)
            })
        }
        None => None,
    };
    let started_with = StartInfo {
        cwd: child_cwd.map(|p| p.to_string_lossy().into_owned()),
        umask: ctl
            .as_ref()
            .and_then(|c| c.umask)
            .or_else(|| control::agent_info().umask),
        env: env
            .ok()
            .filter(|_| ps.env.report.unwrap_or(ctx.report_env))
            .map(|e| e.map),
    };
    let timeout = ctl.as_ref().and_then(|c| c.timeout).map(|t| TimeoutState {
        timer: None,
        after: t.after,
        signum: t.signum,
        kill_after: t.kill_after,
        fired_at: None,
        killed: false,
    });
    Prepared {
        plan,
        exe,
        fds,
        captures,
        errors,
        out_of_fds,
        started_with,
        timeout,
        kill_group: ps.kill_group,
        perf,
    }
}

/// Opens a kept capture file: `path` (relative to the child's starting directory)
/// or a new name in `dir`. Returns the file, its path, and whether this call
/// created it (so that a proc that cannot start removes only what it made).
pub(crate) fn open_kept(
    id: &str,
    fd_name: &str,
    (path, dir): (Option<&str>, Option<&str>),
    cwd: Option<&Path>,
) -> Result<(OwnedFd, PathBuf, bool), fd::OpenFailure> {
    let resolve = |p: &str| match cwd {
        Some(c) => c.join(p),
        None => PathBuf::from(p),
    };
    match (path, dir) {
        (Some(p), _) => {
            let p = resolve(p);
            match kept::create_new_at(&p) {
                Ok(f) => Ok((f, p, true)),
                Err(fd::OpenFailure::Sys(Errno::EXIST)) => {
                    kept::create_at(&p).map(|f| (f, p, false))
                }
                Err(e) => Err(e),
            }
        }
        (None, Some(d)) => kept::create_in_dir(&resolve(d), id, fd_name).map(|(f, p)| (f, p, true)),
        (None, None) => Err(fd::OpenFailure::Sys(Errno::INVAL)),
    }
}

/// Puts a proc's resolved start state into its child plan.
fn apply_control(plan: &mut ChildPlan, c: &control::Control) {
    plan.set_sigmask(c.mask);
    plan.set_ignore(c.ignore);
    match c.session {
        control::Session::New => plan.set_setsid(true),
        control::Session::Group(pgid) => plan.set_process_group(pgid),
        control::Session::Inherit => plan.set_setsid(false),
    }
    if let Some(u) = c.umask {
        plan.set_umask(u);
    }
    if let Some(sig) = c.pdeath_sig {
        plan.set_pdeath_sig(sig, rustix::process::getpid().as_raw_nonzero().get());
    }
    if let Some(cwd) = &c.cwd {
        plan.set_cwd(cwd.clone());
    }
    for &(resource, soft, hard) in &c.rlimits {
        plan.add_rlimit(resource, soft, hard);
    }
    if let Some(creds) = &c.creds {
        plan.set_user(creds.uid, creds.gid, creds.groups.clone());
    }
}
