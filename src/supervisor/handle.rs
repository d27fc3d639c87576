//! [`Handle`]: the non-blocking face of an agent, for front ends.
//!
//! Every call sends one command to the reactor and returns a [`Call`] at once: a
//! future for any executor (the core runs none), which a blocking thread can
//! also [`Call::wait`] on. What a reply needs beyond the reactor's snapshot
//! (building a result, encoding bytes) is done by whoever polls it; reading a
//! capture that lives in a file is done on a reader thread, so an async caller's
//! thread never waits for a disk.

use super::command::{Command, FdContent, StartAnswer};
use super::encoding::{CompressedFdData, EncodedFdData, ReadEncoding};
use super::error::{FdDataError, ProcError, StartError};
use super::events::Subscription;
use super::oneshot::{self, Canceled};
use super::proc::{Content, Snapshot};
use super::types::{FdData, FdWaited, ShutdownPolicy, ShutdownState};
use crate::result::ProcRes;
use crate::ring::Sender;
use crate::spec::{self, Input, ProcId};
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::task::{Context, Poll};

/// What a reply carries: the rest of the work, done where it is received.
type Finish<T> = Box<dyn FnOnce() -> T + Send>;

/// A request in flight: `.await` it, or [`Call::wait`] for it on a thread that
/// may block. Dropping it abandons the answer (the request still happens).
#[must_use = "a Call does nothing more unless awaited or waited for"]
pub struct Call<T> {
    rx: oneshot::Receiver<Finish<T>>,
    /// The answer when the agent dropped the request (shutting down): a
    /// closure, so the answer can name the process.
    canceled: Box<dyn Fn() -> T + Send + Sync>,
}

impl<T> Call<T> {
    /// Blocks until the answer comes.
    pub fn wait(self) -> T {
        match self.rx.wait() {
            Ok(finish) => finish(),
            Err(Canceled) => (self.canceled)(),
        }
    }
}

impl<T> Future for Call<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(finish)) => Poll::Ready(finish()),
            Poll::Ready(Err(Canceled)) => Poll::Ready((self.canceled)()),
        }
    }
}

impl<T> std::fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Call")
    }
}

/// A clonable, `Send` handle on an agent; every call is non-blocking.
///
/// ```
/// use chaperone::{Agent, Config, spec};
/// let agent = Agent::new(Config::default())?;
/// let handle = agent.handle();
/// let rt = tokio::runtime::Builder::new_current_thread().build()?;
/// rt.block_on(async {
///     let input = spec::parse_input(br#"{"specs": {"hi": {"argv": ["/bin/echo", "hi"],
///         "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]}}}"#)?;
///     handle.start(input).await?;
///     let res = handle.wait("hi").await.expect("known id");
///     assert_eq!(res.status.unwrap().exit_code, Some(0));
///     let out = handle.fd_data("hi", "stdout", 0, None).await?;
///     assert_eq!(&out.data[..], b"hi\n");
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Handle {
    tx: Sender<Command>,
    reader: Arc<Reader>,
}

/// Results from the reactor's snapshots, built on the receiving side.
fn results_from<C: FromIterator<(ProcId, ProcRes)>>(v: Vec<(ProcId, Snapshot)>) -> C {
    v.into_iter().map(|(id, s)| (id, s.into_res())).collect()
}

impl Handle {
    pub(crate) fn new(tx: Sender<Command>) -> Handle {
        Handle {
            tx,
            reader: Arc::new(Reader::default()),
        }
    }

    /// The reader threads, started here on the first read: on the caller's
    /// thread, not later on the reactor's, where a read is handed out. An
    /// agent whose captures are never read from files (the one-shot CLI)
    /// starts none: two threads' creation and teardown, about 0.1 ms.
    fn reader_started(&self) -> Arc<Reader> {
        self.reader.start();
        self.reader.clone()
    }

    /// Sends the command `make` builds around its reply; the reply's value is
    /// finished by `finish` on the receiving side.
    fn call<R: Send + 'static, T: 'static>(
        &self,
        make: impl FnOnce(Box<dyn FnOnce(R) + Send>) -> Command,
        finish: fn(R) -> T,
        canceled: impl Fn() -> T + Send + Sync + 'static,
    ) -> Call<T> {
        let (tx, rx) = oneshot::channel::<Finish<T>>();
        let cmd = make(Box::new(move |r: R| tx.send(Box::new(move || finish(r)))));
        // A refused send drops the command and with it the reply: canceled.
        let _ = self.tx.send(cmd);
        Call {
            rx,
            canceled: Box::new(canceled),
        }
    }

    /// Validates `input` and starts its processes; answers with their ids once
    /// each has a pid, has failed to start, or waits in the queue behind
    /// [`Config::max_running`](super::Config::max_running) (it starts as others
    /// finish). A rejected request starts nothing.
    pub fn start(&self, input: Input) -> Call<Result<Vec<ProcId>, StartError>> {
        self.call(
            |r| Command::Start(input, StartAnswer::Launched, r),
            |r| r,
            || Err(StartError::ShutDown),
        )
    }

    /// As [`Handle::start`], answered as soon as the request is validated and
    /// its processes queued, before any is spawned: a front end that tells of
    /// each start by its [`Event::Started`](super::Event::Started) need not
    /// hold back what it sends while a large request is being launched.
    pub fn submit(&self, input: Input) -> Call<Result<Vec<ProcId>, StartError>> {
        self.call(
            |r| Command::Start(input, StartAnswer::Accepted, r),
            |r| r,
            || Err(StartError::ShutDown),
        )
    }

    /// The current result of a process (live figures while it runs); `None`
    /// for an unknown id.
    pub fn result(&self, id: &str) -> Call<Option<ProcRes>> {
        self.call(
            |r| Command::Result(id.to_string(), r),
            |s: Option<Snapshot>| s.map(Snapshot::into_res),
            || None,
        )
    }

    /// As [`Handle::result`], with every capture `detached` (its length and
    /// the rest of its keys, none of its bytes): cheap whatever the process
    /// wrote, for a front end that serves output separately.
    pub fn result_brief(&self, id: &str) -> Call<Option<ProcRes>> {
        self.call(
            |r| Command::ResultBrief(id.to_string(), r),
            |s: Option<Snapshot>| s.map(Snapshot::into_res),
            || None,
        )
    }

    /// The current results of all processes, by id.
    pub fn results(&self) -> Call<std::collections::BTreeMap<ProcId, ProcRes>> {
        self.call(Command::Results, results_from, Default::default)
    }

    /// The current results of the processes `ids`, in that order; an unknown
    /// id (or one deleted meanwhile) is left out. With [`Handle::proc_ids`],
    /// a front end can take a large table's results a part at a time, each
    /// part turned into JSON while the agent builds the next.
    pub fn results_of(&self, ids: Vec<ProcId>) -> Call<Vec<(ProcId, ProcRes)>> {
        self.call(|r| Command::ResultsOf(ids, r), results_from, Vec::new)
    }

    /// The process table in brief: a small row for each process `select`
    /// picks, and counts of all (see [`status`](super::status)). Cheap on
    /// the reactor: nothing is read from `/proc` and no output is copied.
    pub fn overview(&self, select: super::status::Select) -> Call<super::status::Overview> {
        self.call(
            |r| Command::Overview(select, r),
            |o| o,
            || super::status::Overview {
                generation: 0,
                rows: Vec::new(),
                counts: Default::default(),
                output_held: None,
                output_limit: None,
                shutdown_state: super::ShutdownState::Done,
                backend: super::status::Backend {
                    name: "io_uring",
                    waitid: false,
                    read_multishot: false,
                    buf_ring_inc: false,
                },
            },
        )
    }

    /// A process's sampled resident set and CPU over its life (see
    /// [`History`](super::status::Point)): `(seconds since start, resident
    /// bytes, CPU seconds)`, at most 64 points; `None` for an unknown id.
    pub fn history(&self, id: &str) -> Call<Option<Vec<super::status::Point>>> {
        self.call(|r| Command::History(id.to_string(), r), |h| h, || None)
    }

    /// Ids of all processes, sorted.
    pub fn proc_ids(&self) -> Call<Vec<ProcId>> {
        self.call(Command::Ids, |v| v, Vec::new)
    }

    /// The final result, once the process has exited and settled; `None` for
    /// an unknown id (or one deleted meanwhile).
    pub fn wait(&self, id: &str) -> Call<Option<ProcRes>> {
        self.call(
            |r| Command::Wait(id.to_string(), false, r),
            |s: Option<Snapshot>| s.map(Snapshot::into_res),
            || None,
        )
    }

    /// As [`Handle::wait`], and then until every compression of the process
    /// has finished: every field is final and compressed files are complete.
    pub fn wait_compressed(&self, id: &str) -> Call<Option<ProcRes>> {
        self.call(
            |r| Command::Wait(id.to_string(), true, r),
            |s: Option<Snapshot>| s.map(Snapshot::into_res),
            || None,
        )
    }

    /// Answers once every process started so far is final (exited or failed,
    /// settled, compressions done).
    pub fn wait_all(&self) -> Call<()> {
        self.call(Command::WaitAll, |()| (), || ())
    }

    /// Sends signal `signum` to a running process (through its pidfd).
    pub fn signal(&self, id: &str, signum: i32) -> Call<Result<(), ProcError>> {
        self.call(
            |r| Command::Signal(id.to_string(), signum, r),
            |r| r,
            proc_shut_down(id),
        )
    }

    /// Deletes a process that is no longer running.
    pub fn delete(&self, id: &str) -> Call<Result<(), ProcError>> {
        self.call(
            |r| Command::Delete(id.to_string(), r),
            |r| r,
            proc_shut_down(id),
        )
    }

    /// Bytes `[start, stop)` of a captured fd (`stop: None` = to the end),
    /// clamped to what exists: a range never fails, it comes back empty with
    /// the current length. A capture in a file is read on a reader thread.
    pub fn fd_data(
        &self,
        id: &str,
        fd: &str,
        start: u64,
        stop: Option<u64>,
    ) -> Call<Result<FdData, FdDataError>> {
        self.fd_data_then(id, fd, start, stop, Ok)
    }

    /// [`Handle::fd_data`] with `then` applied where the answer is received.
    fn fd_data_then<U: 'static>(
        &self,
        id: &str,
        fd: &str,
        start: u64,
        stop: Option<u64>,
        then: impl FnOnce(FdData) -> Result<U, FdDataError> + Send + 'static,
    ) -> Call<Result<U, FdDataError>> {
        let stop = stop.unwrap_or(u64::MAX);
        let (tx, rx) = oneshot::channel::<Finish<Result<U, FdDataError>>>();
        let reader = self.reader_started();
        let reply = Box::new(move |r: Result<FdContent, FdDataError>| {
            match r {
                Ok((content, encoding)) if content.in_file() => {
                    // Off the reactor and off the caller's thread.
                    reader.run(Box::new(move || {
                        let data = read_content(content, encoding, start, stop);
                        tx.send(Box::new(move || data.and_then(then)));
                    }));
                }
                Ok((content, encoding)) => tx.send(Box::new(move || {
                    read_content(content, encoding, start, stop).and_then(then)
                })),
                Err(e) => tx.send(Box::new(move || Err(e))),
            }
        });
        let _ = self.tx.send(Command::FdData(
            id.to_string(),
            fd.to_string(),
            (start, stop),
            reply,
        ));
        Call {
            rx,
            canceled: Box::new(fd_shut_down(id)),
        }
    }

    /// Waits until capture `fd` of `id` holds more than `offset` bytes, can
    /// grow no more (its pipe closed, its process finished), or `timeout`
    /// passes, then says where it stands. The reactor answers as bytes
    /// arrive, so a follower needs no polling; only a `tempfile` capture,
    /// which the child writes directly, answers at once with no length.
    pub fn fd_wait(
        &self,
        id: &str,
        fd: &str,
        offset: u64,
        timeout: std::time::Duration,
    ) -> Call<Result<FdWaited, FdDataError>> {
        let deadline = std::time::Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| std::time::Instant::now() + std::time::Duration::from_secs(1 << 32));
        let (tx, rx) = oneshot::channel::<Finish<Result<FdWaited, FdDataError>>>();
        let reply = Box::new(move |r: Result<FdWaited, FdDataError>| {
            tx.send(Box::new(move || r));
        });
        let _ = self.tx.send(Command::FdWait(
            id.to_string(),
            fd.to_string(),
            offset,
            deadline,
            reply,
        ));
        Call {
            rx,
            canceled: Box::new(fd_shut_down(id)),
        }
    }

    /// [`Handle::fd_data`], with the bytes in encoding `enc` (raw, lossy UTF-8
    /// flagged, base64, or zstd); a dropped middle is reported in `missing`,
    /// not encoded. Encoding happens where the answer is received.
    pub fn fd_data_as(
        &self,
        id: &str,
        fd: &str,
        start: u64,
        stop: Option<u64>,
        enc: ReadEncoding,
    ) -> Call<Result<EncodedFdData, FdDataError>> {
        self.fd_data_then(id, fd, start, stop, move |d| {
            super::encoding::encode(d, enc).map_err(FdDataError::Io)
        })
    }

    /// The compressed bytes of a capture held compressed (spec `compress`), as
    /// stored: bytes `[start, stop)` of its `.zst` stream. Fails with
    /// [`FdDataError::NotCompressed`] while compression is pending, or if it
    /// failed or was not asked for.
    pub fn fd_compressed(
        &self,
        id: &str,
        fd: &str,
        start: u64,
        stop: Option<u64>,
    ) -> Call<Result<CompressedFdData, FdDataError>> {
        let name = fd.to_string();
        let (tx, rx) = oneshot::channel::<Finish<Result<CompressedFdData, FdDataError>>>();
        let reader = self.reader_started();
        let reply = Box::new(move |r: Result<FdContent, FdDataError>| {
            let read = move || -> Result<CompressedFdData, FdDataError> {
                let (content, _) = r?;
                let Content::Zstd(packed) = content else {
                    return Err(FdDataError::NotCompressed(name));
                };
                let (range, data) = packed
                    .compressed_range(start, stop.unwrap_or(u64::MAX))
                    .map_err(FdDataError::Io)?;
                Ok(CompressedFdData {
                    algorithm: crate::capture::compress::ALGORITHM,
                    level: packed.level(),
                    range,
                    compressed_length: packed.compressed_len(),
                    length: packed.raw_len(),
                    dropped: packed.dropped(),
                    data,
                })
            };
            // Compressed frames may live in a file: read them on a reader thread.
            reader.run(Box::new(move || {
                let data = read();
                tx.send(Box::new(move || data));
            }));
        });
        let _ = self.tx.send(Command::FdData(
            id.to_string(),
            fd.to_string(),
            (0, 0),
            reply,
        ));
        Call {
            rx,
            canceled: Box::new(fd_shut_down(id)),
        }
    }

    /// Tells the reactor to take no more commands (the agent is dropped);
    /// with `leave_table`, to leave its table unfreed (the process exits next).
    pub(crate) fn close(&self, leave_table: bool) -> Result<(), Command> {
        self.tx.send(Command::Close { leave_table })
    }

    /// Subscribes to process events, with a queue of
    /// [`Subscription::CAPACITY`] events of its own.
    pub fn subscribe(&self) -> Subscription {
        self.subscribe_bounded(Subscription::CAPACITY)
    }

    /// Subscribes with a queue of `capacity` events (past it, events are
    /// counted as missed; see [`Subscription`]).
    pub fn subscribe_bounded(&self, capacity: usize) -> Subscription {
        // Refused, the command (and the publisher in it) is dropped: closed.
        let (sub, publisher) = Subscription::new(capacity);
        let _ = self.tx.send(Command::Subscribe(publisher));
        sub
    }

    /// Begins shutting down by `policy` (answered once it is under way); the
    /// state's changes come as [`Event::Shutdown`](super::Event::Shutdown).
    pub fn shutdown(&self, policy: ShutdownPolicy) -> Call<()> {
        self.call(|r| Command::Shutdown(policy, r), |()| (), || ())
    }

    /// The shutdown state now (`done` once the agent is gone): what a
    /// subscriber that missed events resyncs from, with the results.
    pub fn shutdown_state(&self) -> Call<ShutdownState> {
        self.call(Command::State, |s| s, || ShutdownState::Done)
    }

    /// Answers once the shutdown state is `done` (or the agent is gone).
    pub fn wait_done(&self) -> Call<()> {
        self.call(Command::WaitDone, |()| (), || ())
    }
}

/// A request about process `id` answered by an agent that is gone.
fn proc_shut_down<T>(id: &str) -> impl Fn() -> Result<T, ProcError> + Send + Sync + 'static {
    let id = id.to_string();
    move || Err(ProcError::ShutDown(id.clone()))
}

/// A read of a capture of process `id` answered by an agent that is gone.
fn fd_shut_down<T>(id: &str) -> impl Fn() -> Result<T, FdDataError> + Send + Sync + 'static {
    let id = id.to_string();
    move || Err(FdDataError::ShutDown(id.clone()))
}

/// The bytes `[start, stop)` of a capture's content, clamped to its length.
/// May read a file: not for the reactor's or an async caller's thread.
fn read_content(
    content: Content,
    encoding: spec::Encoding,
    start: u64,
    stop: u64,
) -> Result<FdData, FdDataError> {
    let in_file = content.in_file();
    match content {
        Content::Range { data, info, len } => Ok(FdData {
            start: info.start,
            stop: info.stop,
            length: len,
            missing: info.missing.clone(),
            dropped: info.dropped.clone(),
            encoding,
            data,
            in_file: false,
        }),
        Content::Counts { len, .. } => Ok(FdData {
            start: start.min(stop).min(len),
            stop: start.min(stop).min(len),
            length: len,
            missing: None,
            dropped: None,
            encoding,
            data: Bytes::new(),
            in_file: false,
        }),
        Content::Memory(frozen) => {
            let mut out = Vec::new();
            let info = frozen.read(start, stop, &mut out);
            Ok(FdData {
                start: info.start,
                stop: info.stop,
                length: frozen.len(),
                missing: info.missing.clone(),
                dropped: info.dropped.clone(),
                encoding,
                data: Bytes::from(out),
                in_file: false,
            })
        }
        Content::Zstd(packed) => {
            let mut out = Vec::new();
            let info = packed
                .read(start, stop, &mut out)
                .map_err(FdDataError::Io)?;
            Ok(FdData {
                start: info.start,
                stop: info.stop,
                length: packed.raw_len(),
                missing: info.missing.clone(),
                dropped: info.dropped.clone(),
                encoding,
                data: Bytes::from(out),
                in_file,
            })
        }
        // Never past a kept file's logical length: bytes beyond it may be a
        // write still in flight (a hole).
        Content::Kept(k) => {
            let file = k.open().map_err(|e| FdDataError::Io(e.into()))?;
            file_range(&file, k.len, start, stop, encoding)
        }
        Content::File(file) => {
            let length = crate::sys::fd::file_len(&*file).map_err(|e| FdDataError::Io(e.into()))?;
            file_range(&file, length, start, stop, encoding)
        }
    }
}

/// Bytes `[start, stop)` of a capture file whose readable length is `length`,
/// clamped as every capture is: `stop` to the length, then `start` to `stop`.
fn file_range(
    file: &rustix::fd::OwnedFd,
    length: u64,
    start: u64,
    stop: u64,
    encoding: spec::Encoding,
) -> Result<FdData, FdDataError> {
    let stop = stop.min(length);
    let start = start.min(stop);
    let data = super::proc::read_file(file, start, stop).map_err(|e| FdDataError::Io(e.into()))?;
    Ok(FdData {
        start,
        stop: start + data.len() as u64,
        length,
        missing: None,
        dropped: None,
        encoding,
        data,
        in_file: true,
    })
}

/// A read for a reader thread.
type Job = Box<dyn FnOnce() + Send>;

/// Threads that read capture files for handles, started on the first read.
#[derive(Debug, Default)]
struct Reader {
    jobs: OnceLock<Mutex<mpsc::Sender<Job>>>,
}

/// Reader threads: enough that one slow disk does not hold up every read.
const READERS: usize = 2;

impl Reader {
    /// Starts the reader threads.
    fn start(&self) {
        self.jobs();
    }

    /// Runs `job` on a reader thread (on this one if none could be started).
    fn run(&self, job: Job) {
        let refused = match self.jobs().lock() {
            Ok(tx) => tx.send(job).err().map(|e| e.0),
            Err(_) => Some(job),
        };
        if let Some(job) = refused {
            job();
        }
    }

    fn jobs(&self) -> &Mutex<mpsc::Sender<Job>> {
        self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            // With no thread started, `rx` goes with this scope and every send
            // fails: jobs then run on the calling thread.
            for i in 0..READERS {
                let rx = rx.clone();
                let _ = std::thread::Builder::new()
                    .name(format!("chaperone-read{i}"))
                    .spawn(move || {
                        loop {
                            let job = match rx.lock() {
                                Ok(r) => r.recv(),
                                Err(_) => return,
                            };
                            match job {
                                Ok(job) => job(),
                                Err(_) => return, // every handle is gone
                            }
                        }
                    });
            }
            Mutex::new(tx)
        })
    }
}
