//! Opening a spec's files, and looking up its user and group, off the
//! reactor thread.
//!
//! A `file` fd or a kept capture path may be a FIFO with no peer, a slow
//! network mount, or a device whose open sleeps; a user or group lookup goes
//! through NSS, which may ask LDAP or sssd over the network: done on the
//! reactor, either would stall every other process. The reactor hands such opens to this pool
//! of threads, one job per process, and goes on; the process waits
//! ([`Life::Opening`](super::proc::Life::Opening)) and may be signalled,
//! deleted or timed out meanwhile, which abandons the job (its files are
//! closed, and kept files it created removed, when it finishes).
//!
//! The pool grows while every thread is busy, up to [`MAX_THREADS`] plus
//! one for each thread whose job has taken longer than [`STUCK_AFTER`] (an
//! open that may never end: 32 FIFOs with no peer held every thread, and
//! every later process with a file waited behind them), at most
//! [`MOST_THREADS`]; past that, jobs wait for a thread (only processes with
//! files to open wait).

use crate::sys::fd::OpenFailure;
use rustix::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// Opener threads the pool grows to while every one is busy.
pub(crate) const MAX_THREADS: usize = 32;

/// A thread whose job has taken this long counts as stuck (a FIFO with no
/// peer, a hung mount): the pool may grow past [`MAX_THREADS`] by one for it.
pub(crate) const STUCK_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// The most opener threads, stuck ones included.
pub(crate) const MOST_THREADS: usize = 512;

/// How long a thread past [`MAX_THREADS`] waits for a job before it ends, so
/// that a burst of slow opens leaves no lasting crowd of threads.
const IDLE_EXIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One open a process needs, by the index of its entry in the spec's `fds`.
#[derive(Debug)]
pub(crate) enum OpenReq {
    /// A `file` fd.
    File {
        index: usize,
        path: PathBuf,
        flags: i32,
        mode: u32,
    },
    /// The spec's child controls, resolved here because `user`, `group` or
    /// `env.user_env` needs NSS lookups (the result goes under
    /// [`CONTROL`]).
    Control {
        id: String,
        spec: Box<crate::spec::ProcSpec>,
        defaults: crate::control::Defaults,
    },
    /// A mode `file` capture's kept file.
    Kept {
        index: usize,
        id: String,
        fd_name: String,
        path: Option<String>,
        dir: Option<String>,
        /// To be compressed to `<name>.zst` (see `open_kept`).
        zst: bool,
        cwd: Option<PathBuf>,
    },
}

/// What an open gave.
#[derive(Debug)]
pub(crate) enum Opened {
    /// A `file` fd.
    File(Result<OwnedFd, OpenFailure>),
    /// A kept file, its path, and whether the open created it.
    Kept(Result<(OwnedFd, PathBuf, bool), OpenFailure>),
    /// The resolved child controls.
    Control(Result<crate::control::Control, Vec<crate::control::ControlError>>),
}

/// Where a job's [`Opened::Control`] goes among its results (no `fds` entry
/// has this index).
pub(crate) const CONTROL: usize = usize::MAX;

impl Opened {
    /// Undoes what nobody will use: closes the file and removes a kept file
    /// the open created.
    pub fn discard(self) {
        if let Opened::Kept(Ok((_, path, true))) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A finished job: the process's serial and its opens' results, by index.
pub(crate) type Done = (u64, Vec<(usize, Opened)>);

type Job = (u64, Vec<OpenReq>);

/// The pool.
pub(crate) struct Opener {
    jobs: mpsc::Sender<Job>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
    /// Jobs sent and not yet taken by a thread.
    waiting: Arc<AtomicUsize>,
    /// Threads running.
    threads: Arc<AtomicUsize>,
    /// The next thread's number.
    next_id: usize,
    /// When each busy thread (by its number) took its job.
    busy: Arc<Mutex<std::collections::HashMap<usize, std::time::Instant>>>,
    done: mpsc::Sender<Done>,
    wake: Arc<OwnedFd>,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("threads", &self.threads.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Opener {
    /// A pool with no threads yet; finished jobs go to `done`, and `wake` is
    /// written to wake the reactor.
    pub fn new(done: mpsc::Sender<Done>, wake: Arc<OwnedFd>) -> Opener {
        let (jobs, rx) = mpsc::channel();
        Opener {
            jobs,
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicUsize::new(0)),
            waiting: Arc::new(AtomicUsize::new(0)),
            threads: Arc::default(),
            next_id: 0,
            busy: Arc::default(),
            done,
            wake,
        }
    }

    /// Threads the pool may have now: [`MAX_THREADS`], plus those stuck.
    fn allowed(&self) -> usize {
        let now = std::time::Instant::now();
        let stuck = self.busy.lock().map_or(0, |b| {
            b.values()
                .filter(|&&t| now.duration_since(t) >= STUCK_AFTER)
                .count()
        });
        (MAX_THREADS + stuck).min(MOST_THREADS)
    }

    /// Starts a thread for each job waiting with none idle to take it, as
    /// far as the pool may grow (call while jobs wait, every
    /// [`STUCK_AFTER`]: the threads that held them up may have become stuck
    /// since they were queued).
    pub fn unclog(&mut self) {
        let allowed = self.allowed();
        let mut need = self
            .waiting
            .load(Ordering::Acquire)
            .saturating_sub(self.idle.load(Ordering::Acquire));
        while need > 0 && self.threads.load(Ordering::Acquire) < allowed && self.grow() {
            need -= 1;
        }
    }

    /// Jobs queued and not yet taken by a thread.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Queues the opens of process `serial`; gives them back if there is
    /// no thread to do them (none could be started).
    pub fn submit(&mut self, serial: u64, opens: Vec<OpenReq>) -> Result<(), Vec<OpenReq>> {
        // Every job waiting needs an idle thread of its own: one that is idle
        // now may be about to take an earlier job that never ends.
        let waiting = self.waiting.load(Ordering::Acquire) + 1;
        let threads = self.threads.load(Ordering::Acquire);
        if waiting > self.idle.load(Ordering::Acquire)
            && (threads < MAX_THREADS || threads < self.allowed())
        {
            self.grow();
        }
        if self.threads.load(Ordering::Acquire) == 0 {
            return Err(opens);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.jobs.send((serial, opens)).map_err(|e| {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            e.0.1
        })
    }

    /// Starts a thread; false if none could be.
    fn grow(&mut self) -> bool {
        let (rx, idle, waiting, busy, threads, done, wake) = (
            self.rx.clone(),
            self.idle.clone(),
            self.waiting.clone(),
            self.busy.clone(),
            self.threads.clone(),
            self.done.clone(),
            self.wake.clone(),
        );
        let me = self.next_id;
        self.next_id += 1;
        // Counted before it runs, so that the growth above sees it.
        self.threads.fetch_add(1, Ordering::AcqRel);
        let started = std::thread::Builder::new()
            .name("chaperone-open".into())
            .spawn(move || {
                loop {
                    idle.fetch_add(1, Ordering::AcqRel);
                    let job = rx.lock().map(|rx| rx.recv_timeout(IDLE_EXIT));
                    idle.fetch_sub(1, Ordering::AcqRel);
                    let (serial, opens) = match job {
                        Ok(Ok(job)) => job,
                        Ok(Err(mpsc::RecvTimeoutError::Timeout)) => {
                            // Past the pool's usual size, an idle thread ends.
                            let past =
                                threads.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                                    (n > MAX_THREADS).then(|| n - 1)
                                });
                            if past.is_ok() {
                                break;
                            }
                            continue;
                        }
                        _ => break,
                    };
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    if let Ok(mut b) = busy.lock() {
                        b.insert(me, std::time::Instant::now());
                    }
                    let results = open_all(opens);
                    if let Ok(mut b) = busy.lock() {
                        b.remove(&me);
                    }
                    if done.send((serial, results)).is_err() {
                        break;
                    }
                    let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                }
            });
        match started {
            Ok(_) => true,
            Err(e) => {
                // With no thread at all the opens are done by the caller.
                if self.threads.fetch_sub(1, Ordering::AcqRel) == 1 {
                    tracing::error!("cannot start an opener thread: {e}; opening on the reactor");
                } else {
                    tracing::warn!("cannot start another opener thread: {e}");
                }
                false
            }
        }
    }
}

/// Does a process's opens in order, stopping after a control resolution that
/// failed (it comes first): that process cannot start, so its files are not
/// created or truncated.
pub(crate) fn open_all(opens: Vec<OpenReq>) -> Vec<(usize, Opened)> {
    let mut results = Vec::with_capacity(opens.len());
    for req in opens {
        let done = open(req);
        let refused = matches!(done.1, Opened::Control(Err(_)));
        results.push(done);
        if refused {
            break;
        }
    }
    results
}

/// Does one open (on an opener thread, or the reactor's as a last resort).
pub(crate) fn open(req: OpenReq) -> (usize, Opened) {
    match req {
        OpenReq::Control { id, spec, defaults } => (
            CONTROL,
            Opened::Control(crate::control::resolve(&id, &spec, &defaults)),
        ),
        OpenReq::File {
            index,
            path,
            flags,
            mode,
        } => (
            index,
            Opened::File(crate::sys::fd::open_for_child(&path, flags, mode)),
        ),
        OpenReq::Kept {
            index,
            id,
            fd_name,
            path,
            dir,
            zst,
            cwd,
        } => (
            index,
            Opened::Kept(super::proc::open_kept(
                &id,
                &fd_name,
                (path.as_deref(), dir.as_deref()),
                zst,
                cwd.as_deref(),
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn mkfifo(dir: &std::path::Path) -> PathBuf {
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        fifo
    }

    fn wake() -> Arc<OwnedFd> {
        Arc::new(rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd"))
    }

    // User and group lookups (NSS: perhaps LDAP over the network) are a
    // job like an open: their errors come back naming the field.
    #[test]
    fn a_control_job_resolves_user_and_group_on_a_pool_thread() {
        let (tx, rx) = mpsc::channel();
        let mut o = Opener::new(tx, wake());
        let spec = |user: &str| -> Box<crate::spec::ProcSpec> {
            let json = format!(
                r#"{{"argv": ["/bin/true"], "user": "{user}", "env": {{"user_env": true}}}}"#
            );
            Box::new(serde_json::from_str(&json).expect("spec"))
        };
        let job = |user: &str| OpenReq::Control {
            id: "p".into(),
            spec: spec(user),
            defaults: Default::default(),
        };
        // The agent's own user: any agent may ask for that.
        let me = crate::sys::user::user_by_uid(rustix::process::geteuid().as_raw())
            .ok()
            .flatten()
            .expect("the test's own user has a passwd entry")
            .name;
        o.submit(1, vec![job(&me)]).unwrap();
        o.submit(2, vec![job("no-such-user-here")]).unwrap();
        let mut got: Vec<_> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(30)).expect("a job"))
            .collect();
        got.sort_by_key(|g| g.0);
        match &got[0].1[..] {
            [(CONTROL, Opened::Control(Ok(c)))] => {
                let env = c.user_env.as_ref().expect("user_env");
                assert_eq!(env.get("USER"), Some(&me));
            }
            other => panic!("{me}: {other:?}"),
        }
        match &got[1].1[..] {
            [(CONTROL, Opened::Control(Err(es)))] => {
                let msg = es
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                assert!(
                    msg.contains("user") && msg.contains("no-such-user-here"),
                    "{msg}"
                );
            }
            other => panic!("unknown user: {other:?}"),
        }
    }

    // A FIFO with no writer holds one thread; another job still finishes,
    // on a second thread.
    #[test]
    fn a_stuck_open_holds_up_only_its_own_job() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = mkfifo(dir.path());
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let (tx, rx) = mpsc::channel();
        let mut o = Opener::new(tx, wake());
        let req = |index, path: &std::path::Path| OpenReq::File {
            index,
            path: path.to_path_buf(),
            flags: libc::O_RDONLY,
            mode: 0,
        };
        o.submit(1, vec![req(0, &fifo)]).unwrap();
        o.submit(2, vec![req(3, &file)]).unwrap();
        let (serial, results) = rx.recv_timeout(Duration::from_secs(30)).expect("job 2");
        assert_eq!(serial, 2);
        assert!(matches!(results[..], [(3, Opened::File(Ok(_)))]));
        assert!(rx.try_recv().is_err(), "the FIFO's open is still waiting");
        assert_eq!(o.threads.load(Ordering::Acquire), 2);
        // A writer arrives: the stuck job finishes too.
        let w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let (serial, _) = rx.recv_timeout(Duration::from_secs(30)).expect("job 1");
        assert_eq!(serial, 1);
        drop(w);
    }

    // With a thread already idle, a stuck job and a quick one submitted
    // together still get a thread each.
    #[test]
    fn jobs_submitted_together_each_get_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = mkfifo(dir.path());
        let (tx, rx) = mpsc::channel();
        let mut o = Opener::new(tx, wake());
        let req = |path: &std::path::Path| {
            vec![OpenReq::File {
                index: 0,
                path: path.to_path_buf(),
                flags: libc::O_RDONLY,
                mode: 0,
            }]
        };
        o.submit(1, req(std::path::Path::new("/dev/null"))).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap().0, 1);
        // Wait for the thread to be idle again.
        let t = std::time::Instant::now();
        while o.idle.load(Ordering::Acquire) == 0 {
            assert!(t.elapsed() < Duration::from_secs(30));
            std::thread::yield_now();
        }
        o.submit(2, req(&fifo)).unwrap();
        o.submit(3, req(std::path::Path::new("/dev/null"))).unwrap();
        let (serial, _) = rx.recv_timeout(Duration::from_secs(30)).expect("job 3");
        assert_eq!(serial, 3, "the quick job is not stuck behind the FIFO");
        let _w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap().0, 2);
    }

    #[test]
    fn the_agents_own_proc_entries_and_fds_are_refused() {
        for p in [
            "/proc/self/mem",
            "/proc/thread-self/environ",
            "/proc/self/status",
        ] {
            let r = crate::sys::fd::open_for_child(std::path::Path::new(p), libc::O_RDONLY, 0);
            assert!(matches!(r, Err(OpenFailure::AgentProc(_))), "{p}: {r:?}");
        }
        let me = format!("/proc/{}/cmdline", std::process::id());
        let r = crate::sys::fd::open_for_child(std::path::Path::new(&me), libc::O_RDONLY, 0);
        assert!(matches!(r, Err(OpenFailure::AgentProc(_))), "{me}: {r:?}");
        for p in ["/dev/stdin", "/dev/fd/0", "/proc/self/fd/1"] {
            let r = crate::sys::fd::open_for_child(std::path::Path::new(p), libc::O_RDONLY, 0);
            assert_eq!(r.err(), Some(OpenFailure::MagicLink), "{p}");
        }
        // Another process's /proc entry is its own business.
        let r =
            crate::sys::fd::open_for_child(std::path::Path::new("/proc/1/stat"), libc::O_RDONLY, 0);
        assert!(r.is_ok(), "{r:?}");
        let r =
            crate::sys::fd::open_for_child(std::path::Path::new("/dev/null"), libc::O_RDONLY, 0);
        assert!(r.is_ok());
    }
}
