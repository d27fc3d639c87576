//! `chaperone spool DIR`: reads (and reaches) an agent through its spool.
//!
//! ```text
//! chaperone spool DIR                      the agent and every result, as one JSON
//! chaperone spool DIR --follow             JSON lines: results and output as they change, until the agent is done
//! chaperone spool DIR --output ID[/FD] [--from N] [--follow]
//!                                          a capture's bytes from offset N (raw, to stdout)
//! chaperone spool DIR signal ID SIG        through the agent's control socket
//! chaperone spool DIR stop [--policy P] [--grace S]
//! ```
//!
//! Following uses inotify on the spool, not polling: a reader wakes when a
//! result file is replaced or a capture file grows. Once a second it also
//! looks at the agent's lock, so an agent that died (its lock free while
//! `agent.json` still says `running`) ends a follow with exit code 3.
//!
//! Lines of `--follow`: `{"type": "agent", …agent.json, "alive"}`,
//! `{"type": "result", "id", "result"}`, `{"type": "output", "id", "fd",
//! "offset", "data"}` (base64 of the bytes from `offset`), and last
//! `{"type": "done"}` (or `{"type": "died"}`). Output is read from the
//! capture files themselves, each byte once, in order; a capture that was
//! compressed to `.zst` when its process ended is read through the
//! decompressor.

use super::{AGENT, AgentFile, CONTROL, LOCK, PROCS, id_of, read_agent};
use base64::Engine as _;
use clap::Parser;
use rustix::fs::FlockOperation;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit code: the spool cannot be read or the request was refused.
pub const EXIT_ERROR: u8 = 2;
/// Exit code: the agent died (its lock is free but it never said done).
pub const EXIT_DIED: u8 = 3;

/// `chaperone spool`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "chaperone spool",
    about = "Read or reach an agent through its spool directory"
)]
pub struct SpoolArgs {
    /// The spool directory (`--spool DIR` of the agent).
    pub dir: PathBuf,
    /// Stream changes until the agent is done.
    #[arg(short, long)]
    pub follow: bool,
    /// A capture's raw bytes: `ID` (its `stdout`) or `ID/FD` (the id is
    /// what comes before the last `/`, unless the whole is an id).
    #[arg(long, value_name = "ID[/FD]")]
    pub output: Option<String>,
    /// With `--output`: the offset to start at.
    #[arg(long, value_name = "OFFSET", default_value_t = 0)]
    pub from: u64,
    /// With `stop`: `terminate`, `kill` or `idle`.
    #[arg(long, default_value = "terminate")]
    pub policy: String,
    /// With `stop --policy terminate`: seconds between SIGTERM and SIGKILL.
    #[arg(long)]
    pub grace: Option<f64>,
    /// `signal ID SIG` or `stop`.
    pub action: Vec<String>,
}

/// Runs `chaperone spool`; returns the exit code.
pub fn run(args: SpoolArgs) -> u8 {
    match run_inner(&args) {
        Ok(code) => code,
        // Standard output's reader went away (`| head`): nothing is wrong
        // here. (Only a write to standard output fails with exactly this
        // text: the control socket's errors name it.)
        Err(e) if e == std::io::Error::from_raw_os_error(libc::EPIPE).to_string() => 0,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}

fn run_inner(args: &SpoolArgs) -> Result<u8, String> {
    let dir = &args.dir;
    if read_agent(dir).is_none() {
        return Err(format!(
            "{}: not a spool (no readable {AGENT})",
            dir.display()
        ));
    }
    match args.action.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => {}
        ["signal", id, sig] => {
            return request(dir, &json!({"signal": {"id": id, "signal": sig}}));
        }
        ["stop"] => {
            let mut stop = json!({"policy": args.policy});
            if let Some(g) = args.grace {
                stop["grace"] = json!(g);
            }
            return request(dir, &json!({ "stop": stop }));
        }
        _ => {
            return Err(format!(
                "unknown action {:?}: signal ID SIG, or stop",
                args.action.join(" ")
            ));
        }
    }
    let mut out = std::io::stdout().lock();
    if let Some(name) = &args.output {
        // An id (which may hold a `/`) means its stdout; else ID/FD.
        let whole = dir
            .join(PROCS)
            .join(format!("{}.json", super::file_name(name)))
            .exists();
        let (id, fd) = match name.rsplit_once('/') {
            Some((id, fd)) if !whole => (id, fd),
            _ => (name.as_str(), "stdout"),
        };
        return output(dir, id, fd, args.from, args.follow, &mut out);
    }
    if args.follow {
        return follow(dir, &mut out);
    }
    let agent = agent_json(dir);
    let procs: BTreeMap<String, Value> = results(dir).into_iter().collect();
    let doc = json!({"agent": agent, "procs": procs});
    writeln!(out, "{doc}").map_err(|e| e.to_string())?;
    Ok(0)
}

/// Whether the agent that owns `dir` still runs: its lock is held.
pub fn alive(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(LOCK)) else {
        return false;
    };
    // A lock we can take is one no agent holds.
    let free = rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared).is_ok();
    !free
}

/// `agent.json` with `"alive"`.
fn agent_json(dir: &Path) -> Value {
    let mut v = serde_json::to_value(read_agent(dir)).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("alive".into(), alive(dir).into());
    }
    v
}

/// Every result file: (id, result).
fn results(dir: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join(PROCS)) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_suffix(".json")
            .filter(|_| !name.starts_with('.'))
        else {
            continue;
        };
        let (Some(id), Ok(data)) = (id_of(stem), std::fs::read(e.path())) else {
            continue;
        };
        if let Ok(v) = serde_json::from_slice::<Value>(&data) {
            out.push((id, v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Sends one control request; prints the answer.
fn request(dir: &Path, req: &Value) -> Result<u8, String> {
    use std::io::BufRead;
    let (path, _fd) = super::socket_path(dir, CONTROL).map_err(|e| e.to_string())?;
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        if alive(dir) {
            format!("{}: cannot reach the agent: {e}", path.display())
        } else {
            format!("{}: the agent is not running", dir.display())
        }
    })?;
    let socket = |e: std::io::Error| format!("{}: {e}", path.display());
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(socket)?;
    writeln!(s, "{req}").map_err(socket)?;
    let mut line = String::new();
    std::io::BufReader::new(&s)
        .read_line(&mut line)
        .map_err(socket)?;
    let answer: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{answer}").map_err(|e| e.to_string())?;
    Ok(if answer.get("error").is_some() { 1 } else { 0 })
}

/// A capture being read: its file and how far.
struct Tail {
    /// The file, kept open: it stays readable if the agent replaces it by
    /// its compressed copy.
    file: Option<Box<dyn Read>>,
    path: String,
    offset: u64,
}

impl Tail {
    fn new(offset: u64) -> Tail {
        Tail {
            file: None,
            path: String::new(),
            offset,
        }
    }

    /// Reads what the capture (at `path` per its result) has past the
    /// offset; calls `emit` with each piece.
    fn read(
        &mut self,
        path: &str,
        compressed: bool,
        mut emit: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.file.is_none() || (compressed && self.path != path) {
            self.file = open_at(path, compressed, self.offset)?;
            self.path = path.to_string();
        }
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let mut buf = vec![0; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(|e| format!("{path}: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            emit(self.offset, &buf[..n])?;
            self.offset += n as u64;
        }
    }
}

/// `path` opened at stream offset `offset` (through the decompressor for a
/// `.zst`); `None` if it does not exist yet.
fn open_at(path: &str, compressed: bool, offset: u64) -> Result<Option<Box<dyn Read>>, String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    if compressed {
        let mut z = zstd::stream::read::Decoder::new(f).map_err(|e| format!("{path}: {e}"))?;
        std::io::copy(&mut (&mut z).take(offset), &mut std::io::sink())
            .map_err(|e| format!("{path}: {e}"))?;
        return Ok(Some(Box::new(z)));
    }
    f.seek(std::io::SeekFrom::Start(offset))
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(Some(Box::new(f)))
}

/// A capture's file from its result: (path, compressed, length, final).
fn capture_of(result: &Value, fd: &str) -> Option<(String, bool, u64)> {
    let f = result.get("fds")?.get(fd)?;
    let path = f.get("path")?.as_str()?.to_string();
    let compressed = f
        .get("compression")
        .and_then(|c| c.get("state"))
        .is_some_and(|s| s == "done");
    Some((path, compressed, f.get("length")?.as_u64()?))
}

/// Whether a result is of a process still waiting to start.
fn queued(result: &Value) -> bool {
    result.get("state").is_some_and(|s| s == "running")
        && result.get("pid").is_none_or(Value::is_null)
}

fn is_final(result: &Value) -> bool {
    result.get("state").is_some_and(|s| s != "running")
        && result
            .get("fds")
            .and_then(Value::as_object)
            .is_none_or(|fds| {
                fds.values().all(|f| {
                    f.get("compression")
                        .and_then(|c| c.get("state"))
                        .is_none_or(|s| s != "pending")
                })
            })
}

/// Waits for something to change in the spool (inotify), or a second.
struct Watch {
    fd: rustix::fd::OwnedFd,
    buf: Vec<std::mem::MaybeUninit<u8>>,
}

impl Watch {
    fn new(dir: &Path) -> Result<Watch, String> {
        use rustix::fs::inotify;
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| format!("inotify: {e}"))?;
        let mask = inotify::WatchFlags::CLOSE_WRITE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::CREATE
            | inotify::WatchFlags::MODIFY
            | inotify::WatchFlags::DELETE;
        for d in [dir.to_path_buf(), dir.join(PROCS), dir.join(super::OUT)] {
            inotify::add_watch(&fd, &d, mask).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        Ok(Watch {
            fd,
            buf: vec![std::mem::MaybeUninit::uninit(); 1 << 14],
        })
    }

    /// Blocks until an event or a second has passed; drains the events.
    fn wait(&mut self) {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        let _ = poll(
            &mut fds,
            Some(&rustix::time::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            }),
        );
        let mut r = rustix::fs::inotify::Reader::new(&self.fd, &mut self.buf);
        while r.next().is_ok() {}
    }

    /// Adds a watch on a capture file outside the spool's `out/`.
    fn add_file(&self, path: &str) {
        use rustix::fs::inotify;
        let _ = inotify::add_watch(&self.fd, path, inotify::WatchFlags::MODIFY);
    }
}

/// `--output ID/FD`: the capture's raw bytes from `from`; with `follow`,
/// until the process is final and every byte is out.
fn output(
    dir: &Path,
    id: &str,
    fd: &str,
    from: u64,
    follow: bool,
    out: &mut impl Write,
) -> Result<u8, String> {
    let mut watch = if follow { Some(Watch::new(dir)?) } else { None };
    let mut tail = Tail::new(from);
    // `1` is `stdout`, as the HTTP API takes it.
    let fd = crate::spec::parse_fd_name(fd).map_or_else(|_| fd.to_owned(), crate::spec::fd_name);
    let fd = fd.as_str();
    let file = dir
        .join(PROCS)
        .join(format!("{}.json", super::file_name(id)));
    let mut watched = String::new();
    loop {
        let result: Value = std::fs::read(&file)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
            .ok_or_else(|| format!("{}: no process {id:?} in the spool", dir.display()))?;
        let Some((path, compressed, length)) = capture_of(&result, fd) else {
            // Queued (behind --max-running): no captures yet, and none
            // written; a follower waits for it to start.
            if queued(&result) {
                match watch.as_mut() {
                    Some(w) if alive(dir) => {
                        w.wait();
                        continue;
                    }
                    Some(_) => {
                        eprintln!("error: the agent died before {id} started");
                        return Ok(EXIT_DIED);
                    }
                    None => return Ok(0),
                }
            }
            return Err(format!("{id}: no captured fd {fd:?}"));
        };
        if let Some(w) = &watch {
            if watched != path {
                w.add_file(&path);
                watched.clone_from(&path);
            }
        }
        tail.read(&path, compressed, |_, bytes| {
            out.write_all(bytes).map_err(|e| e.to_string())
        })?;
        out.flush().map_err(|e| e.to_string())?;
        let done = is_final(&result) && tail.offset >= length;
        let Some(w) = watch.as_mut() else {
            return Ok(0);
        };
        if done {
            return Ok(0);
        }
        if !alive(dir) && read_agent(dir).is_some_and(|a| a.state != "done") {
            // One last look: the agent may have written its last bytes.
            tail.read(&path, compressed, |_, bytes| {
                out.write_all(bytes).map_err(|e| e.to_string())
            })?;
            eprintln!("error: the agent died before {id} was done");
            return Ok(EXIT_DIED);
        }
        w.wait();
    }
}

/// `--follow`: see the module notes.
fn follow(dir: &Path, out: &mut impl Write) -> Result<u8, String> {
    let mut watch = Watch::new(dir)?;
    let mut line = |v: Value| -> Result<(), String> {
        writeln!(out, "{v}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())
    };
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let mut tails: BTreeMap<(String, String), Tail> = BTreeMap::new();
    let mut last_agent: Option<AgentFile> = None;
    let mut watched = std::collections::BTreeSet::new();
    loop {
        let agent = read_agent(dir);
        let alive = alive(dir);
        if agent != last_agent {
            line(json!({"type": "agent", "agent": agent, "alive": alive}))?;
            last_agent.clone_from(&agent);
        }
        // Read results, then output: a result says how long a capture is,
        // so output read after it is at least that long when it is final.
        let now = results(dir);
        for (id, r) in &now {
            if seen.get(id) != Some(r) {
                line(json!({"type": "result", "id": id, "result": r}))?;
                seen.insert(id.clone(), r.clone());
            }
        }
        for (id, r) in &now {
            let fds: Vec<String> = r
                .get("fds")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for fd in fds {
                let Some((path, compressed, _)) = capture_of(r, &fd) else {
                    continue;
                };
                if watched.insert(path.clone()) {
                    watch.add_file(&path);
                }
                let tail = tails
                    .entry((id.clone(), fd.clone()))
                    .or_insert_with(|| Tail::new(0));
                tail.read(&path, compressed, |offset, bytes| {
                    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
                    line(json!({"type": "output", "id": id, "fd": fd, "offset": offset, "data": data}))
                })?;
            }
        }
        // `agent` was read before this pass: once it said done, every
        // result was final and every byte in its file, so the pass has
        // read it all.
        match agent.as_ref().map(|a| a.state.as_str()) {
            Some("done") => {
                line(json!({"type": "done"}))?;
                return Ok(0);
            }
            _ if !alive => {
                line(json!({"type": "died"}))?;
                eprintln!("error: the agent died before it was done");
                return Ok(EXIT_DIED);
            }
            _ => {}
        }
        watch.wait();
    }
}
