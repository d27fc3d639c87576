//! Spool mode (`--spool DIR`): the agent keeps everything a reader needs in
//! a directory, so that a scheduler whose connection dropped reattaches by
//! reading it (`chaperone spool DIR`, see [`reader`]).
//!
//! | path in DIR | what |
//! |---|---|
//! | `spec.json` | the spec, as given |
//! | `agent.json` | the agent: `pid`, `start`, `host`, `version`, `state` (`running`, then `done`), `stop` |
//! | `lock` | held (`flock`) by the agent while it runs: free with `state` still `running` means it died |
//! | `procs/NAME.json` | each process's result (Procstar's result JSON; captures as `detached` with their `path`), replaced atomically on every state change and every sample |
//! | `out/ID.FD` | each capture, as a kept file (mode `file`; head/tail view and zstd as the spec says) |
//! | `control` | a Unix socket: `{"signal": {"id", "signal"}}` or `{"stop": {"policy", "grace"}}`, one JSON line each, answered with one |
//! | `agent.log` | the agent's log, once detached |
//!
//! `NAME` is the process id with every byte outside `[A-Za-z0-9_-]` (and a
//! leading `.`) written `%XX`, so any id has one file and the name gives
//! the id back ([`file_name`], [`id_of`]).
//!
//! A result file is written to a temporary name in `procs/` (starting with
//! `.`, which readers skip) and renamed over the old one, so a reader never
//! sees a torn file.

pub mod reader;
pub mod ssh;

use crate::result::{FdRes, ProcRes};
use crate::spec::{CaptureMode, FdSpec, Input};
use crate::supervisor::{Event, Handle, RecvError};
use rustix::fs::FlockOperation;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The spec, as given.
pub const SPEC: &str = "spec.json";
/// The agent's description and state.
pub const AGENT: &str = "agent.json";
/// The lock the agent holds while it runs.
pub const LOCK: &str = "lock";
/// Result files.
pub const PROCS: &str = "procs";
/// Capture files.
pub const OUT: &str = "out";
/// The control socket.
pub const CONTROL: &str = "control";
/// The detached agent's log.
pub const LOG: &str = "agent.log";

/// The file name (without `.json`) for a process id: see the module notes.
pub fn file_name(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for (i, b) in id.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The longest [`file_name`] a result file may have: with `.json` and the
/// temporary name it is written under first, it must fit a file name (255
/// bytes on every Linux filesystem).
pub const MAX_FILE_NAME: usize = 200;

/// Refuses a spec with a process id too long for its result file's name
/// (each byte outside `[A-Za-z0-9._-]` takes three): such a process would
/// run with no result in the spool, and readers would not know of it.
pub fn check_ids(input: &crate::spec::Input) -> Result<(), String> {
    for (id, _) in input.specs.iter() {
        let len = file_name(id).len();
        if len > MAX_FILE_NAME {
            let shown: String = id.chars().take(40).collect();
            return Err(format!(
                "proc {shown}…: its id is too long for a spool: its result file's name would \
                 be {len} bytes, at most {MAX_FILE_NAME} (bytes outside A-Z a-z 0-9 . _ - \
                 count three each)"
            ));
        }
    }
    Ok(())
}

/// The process id a [`file_name`] stands for; `None` if it is not one.
pub fn id_of(name: &str) -> Option<String> {
    let mut out = Vec::with_capacity(name.len());
    let mut bytes = name.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// What `agent.json` holds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentFile {
    /// The agent's pid.
    pub pid: i32,
    /// When it started (RFC 3339).
    pub start: String,
    /// The host it runs on.
    pub host: String,
    /// chaperone's version.
    pub version: String,
    /// `running`, then `done` once every process has ended and its result
    /// is final.
    pub state: String,
    /// When it was done.
    pub stop: Option<String>,
}

/// An agent's spool directory, locked.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Held locked for the agent's life.
    _lock: std::fs::File,
    agent: std::sync::Mutex<AgentFile>,
}

impl Spool {
    /// Creates (or takes, if empty) `dir`, locks it and writes the spec and
    /// the agent's file. A directory another agent owns, or one an earlier
    /// agent used, is refused: its results stay as they were.
    pub fn create(dir: &Path, spec: &[u8]) -> Result<Spool, String> {
        let name = dir.display();
        // Private when made here: the spec (its environment's secrets) and
        // every byte of output are in it. One the user made keeps its mode.
        // (Its parents, made as `mkdir -p` makes them, keep the umask's.)
        use std::os::unix::fs::DirBuilderExt as _;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| format!("--spool {name}: {e}"))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(format!("--spool {name}: {e}"));
            }
            _ => {}
        }
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("--spool {name}: {e}"))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(|e| format!("--spool {name}: {LOCK}: {e}"))?;
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            let pid = read_agent(&dir).map_or_else(|| "?".into(), |a| a.pid.to_string());
            return Err(format!(
                "--spool {name}: another agent (pid {pid}) is running in it"
            ));
        }
        if let Some(a) = read_agent(&dir) {
            return Err(format!(
                "--spool {name}: an earlier agent (pid {}, started {}) used it; its results \
                 are kept there: give a new directory",
                a.pid, a.start
            ));
        }
        for sub in [PROCS, OUT] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("--spool {name}: {e}"))?;
        }
        write_atomic(&dir, SPEC, spec).map_err(|e| format!("--spool {name}: {SPEC}: {e}"))?;
        let agent = AgentFile {
            pid: std::process::id() as i32,
            start: now(),
            host: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
            version: env!("CARGO_PKG_VERSION").into(),
            state: "running".into(),
            stop: None,
        };
        let spool = Spool {
            dir,
            _lock: lock,
            agent: std::sync::Mutex::new(agent),
        };
        spool.write_agent()?;
        Ok(spool)
    }

    /// The directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// After a (detaching) fork, the agent's pid is the child's.
    pub fn set_pid(&self, pid: i32) -> Result<(), String> {
        self.agent.lock().unwrap_or_else(|e| e.into_inner()).pid = pid;
        self.write_agent()
    }

    fn write_agent(&self) -> Result<(), String> {
        let a = self.agent.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let json = serde_json::to_vec_pretty(&a).map_err(|e| e.to_string())?;
        write_atomic(&self.dir, AGENT, &json)
            .map_err(|e| format!("--spool {}: {AGENT}: {e}", self.dir.display()))
    }

    /// Marks the agent done: every result is final.
    pub fn finish(&self) -> Result<(), String> {
        {
            let mut a = self.agent.lock().unwrap_or_else(|e| e.into_inner());
            a.state = "done".into();
            a.stop = Some(now());
        }
        self.write_agent()
    }

    /// Makes every capture of `input` a kept file in `out/`, so that every
    /// byte is in the spool: memory captures keep their head/tail view of
    /// the file in results, tempfile captures their whole-file result.
    /// Captures that are already kept files stay where their spec puts them.
    pub fn translate(&self, mut input: Input) -> Input {
        let out = self.dir.join(OUT).to_string_lossy().into_owned();
        for ps in input.specs.iter_mut() {
            for (_, fd) in &mut ps.fds {
                if let FdSpec::Capture {
                    mode, dir, memory, ..
                } = fd
                {
                    if *mode != CaptureMode::File {
                        *memory = *mode == CaptureMode::Memory;
                        *mode = CaptureMode::File;
                        *dir = Some(out.clone());
                    }
                }
            }
        }
        input
    }

    /// Writes a process's result file: captures as `detached` (length and
    /// path; the bytes are in the capture files), replaced atomically.
    pub fn write_result(&self, id: &str, res: &ProcRes) -> std::io::Result<()> {
        let mut res = res.clone();
        for fd in res.fds.values_mut().flatten() {
            let (length, encoding, ext) = match fd {
                FdRes::Text { length, ext, .. } => {
                    (*length, crate::result::Encoding::Utf8, std::mem::take(ext))
                }
                FdRes::Data { length, ext, .. } => (
                    *length,
                    crate::result::Encoding::Base64,
                    std::mem::take(ext),
                ),
                _ => continue,
            };
            *fd = FdRes::Detached {
                length,
                encoding,
                ext,
            };
        }
        let json = serde_json::to_vec(&res).map_err(std::io::Error::other)?;
        write_atomic(
            &self.dir.join(PROCS),
            &format!("{}.json", file_name(id)),
            &json,
        )
    }

    /// Writes every process's result now; returns them, and how many could
    /// not be written (each is logged).
    pub fn write_all(
        &self,
        handle: &Handle,
    ) -> (std::collections::BTreeMap<String, ProcRes>, usize) {
        let mut all = std::collections::BTreeMap::new();
        let mut failed = 0;
        for id in handle.proc_ids().wait() {
            if let Some(res) = handle.result_brief(&id).wait() {
                failed += usize::from(!self.write(&id, &res));
                all.insert(id, res);
            }
        }
        (all, failed)
    }

    /// Writes a result file; false (logged) if it could not be.
    fn write(&self, id: &str, res: &ProcRes) -> bool {
        match self.write_result(id, res) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("spool: writing the result of {id}: {e}");
                false
            }
        }
    }
}

/// Starts the thread that keeps the result files current: on every start,
/// exit, compression and deletion (`events`, subscribed before the first
/// [`Spool::write_all`], so that no change falls between), and every
/// `interval` for the processes running. It ends when the agent does.
pub fn start_writer(
    spool: std::sync::Arc<Spool>,
    handle: Handle,
    events: crate::supervisor::Subscription,
    interval: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("spool".into())
        .spawn(move || {
            let interval = interval.max(Duration::from_millis(100));
            let mut next = std::time::Instant::now() + interval;
            loop {
                let mut dirty = std::collections::BTreeSet::new();
                let mut all = false;
                let wait = next.saturating_duration_since(std::time::Instant::now());
                let first = events.recv_timeout(wait);
                let mut closed = false;
                for e in std::iter::once(first).chain(events.try_iter().map(Ok)) {
                    match e {
                        Ok(Event::Started(id) | Event::Exited(id) | Event::Compressed(id, _)) => {
                            dirty.insert(id);
                        }
                        Ok(Event::Missed(_)) => all = true,
                        Ok(Event::Deleted(_) | Event::Shutdown(_)) => {}
                        Err(RecvError::Timeout) => {}
                        Err(RecvError::Closed) => closed = true,
                    }
                }
                if std::time::Instant::now() >= next {
                    next = std::time::Instant::now() + interval;
                    let running = handle
                        .overview(crate::supervisor::status::Select::Live)
                        .wait();
                    dirty.extend(running.rows.into_iter().map(|r| r.id));
                }
                if all {
                    let _ = spool.write_all(&handle);
                } else {
                    for id in dirty {
                        if let Some(res) = handle.result_brief(&id).wait() {
                            spool.write(&id, &res);
                        }
                    }
                }
                if closed {
                    return;
                }
            }
        })
}

/// Writes `data` to `dir/name` through a temporary file renamed over it.
///
/// Each write has a temporary name of its own: two threads writing the same
/// file at once (the writer thread and a final `write_all`) must not share
/// one, or one could rename the other's half-written file into place.
pub(crate) fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if written.is_err() {
        // A full disk leaves no half-made file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `agent.json` of `dir`, if there is one that parses.
pub fn read_agent(dir: &Path) -> Option<AgentFile> {
    serde_json::from_slice(&std::fs::read(dir.join(AGENT)).ok()?).ok()
}

fn now() -> String {
    crate::supervisor::rfc3339(std::time::SystemTime::now())
}

/// A path to `name` in `dir` short enough for a Unix socket address
/// (108 bytes): through `/proc/self/fd` when `dir`'s own path is too long.
/// The fd (if one was opened) must stay open while the path is used.
pub(crate) fn socket_path(
    dir: &Path,
    name: &str,
) -> std::io::Result<(PathBuf, Option<rustix::fd::OwnedFd>)> {
    let direct = dir.join(name);
    if direct.as_os_str().len() < 100 {
        return Ok((direct, None));
    }
    use rustix::fd::AsRawFd;
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok((
        PathBuf::from(format!("/proc/self/fd/{}/{name}", fd.as_raw_fd())),
        Some(fd),
    ))
}

/// The longest control request taken.
const MAX_REQUEST: u64 = 1 << 20;

/// Serves the control socket until the future is dropped: each connection
/// sends JSON lines and gets one line back for each.
pub async fn serve_control(spool: std::sync::Arc<Spool>, handle: Handle) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (path, _dirfd) = socket_path(spool.dir(), CONTROL)?;
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("spool control: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                // One request a line, at most MAX_REQUEST bytes.
                let n = match (&mut r)
                    .take(MAX_REQUEST + 1)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let too_long = n as u64 > MAX_REQUEST && !line.ends_with(b"\n");
                let (answer, stop) = if too_long {
                    let e = format!("request longer than {MAX_REQUEST} bytes");
                    (serde_json::json!({ "error": e }), None)
                } else {
                    match std::str::from_utf8(&line) {
                        Ok(text) => control(&handle, text).await,
                        Err(e) => (
                            serde_json::json!({"error": format!("not UTF-8: {e}")}),
                            None,
                        ),
                    }
                };
                let mut out = answer.to_string();
                out.push('\n');
                let written = w.write_all(out.as_bytes()).await.is_ok();
                // A stop is begun once its answer is out: the agent may be
                // done, and gone, soon after.
                if let Some(policy) = stop {
                    handle.shutdown(policy).await;
                }
                if !written || too_long {
                    break;
                }
            }
        });
    }
}

/// One control request's answer (`{"ok": …}` or `{"error": "…"}`), and the
/// shutdown to begin once it is sent.
async fn control(
    handle: &Handle,
    line: &str,
) -> (serde_json::Value, Option<crate::supervisor::ShutdownPolicy>) {
    use crate::supervisor::ShutdownPolicy;
    use serde_json::json;
    let req: serde_json::Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return (json!({"error": format!("not JSON: {e}")}), None),
    };
    if let Some(s) = req.get("signal") {
        let (Some(id), Some(sig)) = (s["id"].as_str(), s.get("signal")) else {
            return (
                json!({"error": "signal: needs \"id\" and \"signal\""}),
                None,
            );
        };
        let sig = sig
            .as_str()
            .map(str::to_string)
            .or_else(|| sig.as_i64().map(|n| n.to_string()))
            .unwrap_or_default();
        let Some(signum) = crate::signal::parse_signal(&sig) else {
            return (json!({"error": format!("unknown signal: {sig}")}), None);
        };
        let answer = match handle.signal(id, signum).await {
            Ok(()) => json!({"ok": {"signal": {"id": id, "signum": signum}}}),
            Err(e) => json!({"error": e.to_string()}),
        };
        return (answer, None);
    }
    if let Some(s) = req.get("stop") {
        let grace = s
            .get("grace")
            .and_then(serde_json::Value::as_f64)
            .filter(|g| (0.0..1e9).contains(g))
            .map_or(ShutdownPolicy::TERMINATE_GRACE, Duration::from_secs_f64);
        let name = s
            .get("policy")
            .and_then(|p| p.as_str())
            .unwrap_or("terminate");
        let policy = match name {
            "terminate" => ShutdownPolicy::Terminate { grace },
            "kill" => ShutdownPolicy::Kill,
            "idle" => ShutdownPolicy::Idle,
            p => {
                return (
                    json!({"error": format!("unknown policy {p:?}: terminate, kill or idle")}),
                    None,
                );
            }
        };
        return (json!({"ok": {"stop": name}}), Some(policy));
    }
    (
        json!({"error": "unknown request: expected {\"signal\": …} or {\"stop\": …}"}),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_names_are_safe_and_give_the_id_back() {
        assert_eq!(file_name("build-1.step_2"), "build-1.step_2");
        assert_eq!(file_name("a/b"), "a%2Fb");
        assert_eq!(file_name(".hidden"), "%2Ehidden");
        assert_eq!(file_name(".."), "%2E.");
        assert_eq!(file_name("50%"), "50%25");
        assert_eq!(id_of("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(id_of("bad%2"), None);
    }

    proptest! {
        #[test]
        fn any_id_round_trips(id in "\\PC{0,40}") {
            let name = file_name(&id);
            prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"%_-.".contains(&b)));
            prop_assert!(!name.starts_with('.'));
            prop_assert_eq!(id_of(&name), Some(id));
        }
    }

    #[test]
    fn two_writers_of_one_file_never_show_a_reader_a_torn_one() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        write_atomic(&dir, "r.json", b"[0]").unwrap();
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let body = format!("[{w}, {i}, \"{}\"]", "x".repeat(i % 500));
                        write_atomic(&dir, "r.json", body.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        while !writers.iter().all(std::thread::JoinHandle::is_finished) {
            let data = std::fs::read(dir.join("r.json")).unwrap();
            serde_json::from_slice::<serde_json::Value>(&data)
                .unwrap_or_else(|e| panic!("torn ({e}): {:?}", String::from_utf8_lossy(&data)));
        }
        for w in writers {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_spool_is_locked_and_not_reused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("s");
        let input = br#"{"specs": {}}"#;
        let s = Spool::create(&dir, input).unwrap();
        let e = Spool::create(&dir, input).unwrap_err();
        assert!(e.contains("another agent"), "{e}");
        s.finish().unwrap();
        drop(s);
        let e = Spool::create(&dir, input).unwrap_err();
        assert!(e.contains("an earlier agent"), "{e}");
        assert_eq!(std::fs::read(dir.join(SPEC)).unwrap(), input);
        assert_eq!(read_agent(&dir).unwrap().state, "done");
    }
}
