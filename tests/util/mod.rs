//! Helpers shared by the integration test binaries (`tests/*/main.rs`).
//!
//! Each binary uses only some of them.
#![allow(dead_code)]

pub mod http;

use base64::Engine as _;
use chaperone::result::{FdRes, ProcRes};
use chaperone::{Agent, Config, spec};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The Python interpreter used by generated scripts (execve does no PATH search).
pub const PYTHON: &str = "/usr/bin/python3";

/// The chaperone binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chaperone")
}

/// Runs `chaperone --print SPEC` on raw spec bytes written to a temp file, with
/// extra environment variables for the agent; returns the whole output.
pub fn run_cli_raw_env(spec: &[u8], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spec.json");
    std::fs::write(&path, spec).expect("write spec");
    let mut cmd = Command::new(bin());
    cmd.arg("--print")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run chaperone")
}

/// Runs `chaperone --print SPEC` on raw spec bytes.
pub fn run_cli_raw(spec: &[u8]) -> Output {
    run_cli_raw_env(spec, &[])
}

/// Runs `chaperone --print` on `spec`; returns the exit code and the parsed results
/// (`Value::Null` when stdout is empty).
pub fn run_cli(spec: &Value) -> (i32, Value) {
    run_cli_env(spec, &[])
}

/// [`run_cli`] with extra environment variables for the agent.
pub fn run_cli_env(spec: &Value, env: &[(&str, &str)]) -> (i32, Value) {
    let out = run_cli_raw_env(&serde_json::to_vec(spec).expect("spec JSON"), env);
    let code = out.status.code().expect("chaperone exited by a signal");
    let results = if out.stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "results are not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    };
    if code != 0 {
        eprintln!("chaperone stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    (code, results)
}

/// An in-process agent with the default configuration.
pub fn agent() -> Agent {
    Agent::new(Config::default()).expect("agent starts (io_uring available?)")
}

/// Starts `spec` (a `{"specs": …}` value) on `agent`; panics if it is rejected.
pub fn start(agent: &Agent, spec: &Value) -> Vec<String> {
    agent.start(input(spec)).expect("request starts")
}

/// Parses a `{"specs": …}` value into a request; panics if it does not parse.
pub fn input(spec: &Value) -> spec::Input {
    spec::parse_input(&serde_json::to_vec(spec).expect("spec JSON")).expect("parses")
}

/// Waits for `id` and returns its final result.
pub fn wait(agent: &Agent, id: &str) -> ProcRes {
    agent
        .wait(id)
        .unwrap_or_else(|| panic!("unknown proc {id}"))
}

/// A memory capture fd spec with utf-8 encoding.
pub fn mem_utf8() -> Value {
    serde_json::json!({"capture": {"mode": "memory", "encoding": "utf-8"}})
}

/// A tempfile capture fd spec with utf-8 encoding.
pub fn tmp_utf8() -> Value {
    serde_json::json!({"capture": {"mode": "tempfile", "encoding": "utf-8"}})
}

/// A memory capture fd spec with base64 encoding.
pub fn mem_b64() -> Value {
    serde_json::json!({"capture": {"mode": "memory", "encoding": null}})
}

/// A file fd spec.
pub fn file(path: &Path, flags: &str) -> Value {
    serde_json::json!({"file": {"path": path, "flags": flags}})
}

/// The text of a utf-8 capture in a CLI result (`res` is one proc's result).
pub fn text_of(res: &Value, fd: &str) -> String {
    let f = &res["fds"][fd];
    assert_eq!(f["type"], "text", "fd {fd} is not text: {f}");
    f["text"].as_str().expect("text").to_string()
}

/// The decoded bytes of a base64 capture in a CLI result.
pub fn data_of(res: &Value, fd: &str) -> Vec<u8> {
    let f = &res["fds"][fd];
    assert_eq!(f["type"], "data", "fd {fd} is not data: {f}");
    assert_eq!(f["encoding"], "base64");
    base64::engine::general_purpose::STANDARD
        .decode(f["data"].as_str().expect("data"))
        .expect("valid base64")
}

/// The held bytes of a capture in an Agent result.
pub fn bytes_of(res: &ProcRes, fd: &str) -> Vec<u8> {
    match res.fds.get(fd) {
        Some(Some(FdRes::Text { bytes, .. })) | Some(Some(FdRes::Data { bytes, .. })) => {
            bytes.to_vec()
        }
        other => panic!("fd {fd} holds no inline data: {other:?}"),
    }
}

/// The held bytes of a capture in an Agent result, as (lossless) UTF-8.
/// Runs `argv` as process `id` with stdout captured, waits for it to be
/// terminated, and returns its result and its stdout (e.g. its own
/// `/proc/self/status`, to see what the child got).
pub fn own_status(a: &Agent, id: &str, argv: Value) -> (ProcRes, String) {
    start(
        a,
        &serde_json::json!({"specs": {id: {"argv": argv, "fds": [["stdout", mem_utf8()]]}}}),
    );
    let res = wait(a, id);
    assert_eq!(
        res.state,
        chaperone::result::State::Terminated,
        "{:?}",
        res.errors
    );
    let text = string_of(&res, "stdout");
    (res, text)
}

pub fn string_of(res: &ProcRes, fd: &str) -> String {
    String::from_utf8(bytes_of(res, fd)).expect("utf-8 output")
}

/// Asserts that a CLI result terminated normally with exit code 0.
pub fn assert_exit0(res: &Value) {
    assert_eq!(res["state"], "terminated", "{res}");
    assert_eq!(res["errors"], serde_json::json!([]), "{res}");
    assert_eq!(res["status"]["exit_code"], 0, "{res}");
}

/// Writes an executable script `name` with `body` into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("create script");
    f.write_all(body.as_bytes()).expect("write script");
    drop(f);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The fds open in process `pid`, from `/proc/<pid>/fd`.
pub fn open_fds_of(pid: i32) -> BTreeSet<i32> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// A python3 one-liner that prints the fds open in itself, one per line as
/// `fd -> target`, leaving out the directory fd its own listing opened.
pub const PY_LIST_FDS: &str = "import os
for fd in sorted(int(x) for x in os.listdir('/proc/self/fd')):
    try:
        os.fstat(fd)
    except OSError:
        continue
    print(fd, '->', os.readlink('/proc/self/fd/%d' % fd))
";

/// Parses the output of [`PY_LIST_FDS`] into fd numbers.
pub fn parse_fd_list(out: &str) -> BTreeSet<i32> {
    out.lines()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("bad fd line {l:?}"))
        })
        .collect()
}

/// Parses a hex mask line such as `SigIgn:\t0000000000001000` from
/// `/proc/<pid>/status` text.
pub fn status_mask(status: &str, key: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in status: {status}"));
    u64::from_str_radix(line.split_whitespace().nth(1).expect("mask"), 16).expect("hex mask")
}

/// Makes a FIFO at `dir/name` (with the `mkfifo` command).
pub fn mkfifo(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let ok = Command::new("mkfifo").arg(&p).status().expect("run mkfifo");
    assert!(ok.success(), "mkfifo {}", p.display());
    p
}

/// Runs `chaperone ARGS`, which writes a file at `fifo` (made with
/// [`mkfifo`]), with a reader (`cat`) on the FIFO; returns chaperone's exit
/// status and what the reader got. Panics if either is not done within 30 s:
/// a writer that opened the FIFO early and closed it would have sent the
/// reader its end, and its real write would then wait for a reader forever;
/// one that never opens it leaves the reader waiting.
pub fn run_into_fifo(args: &[&str], fifo: &Path) -> (std::process::ExitStatus, Vec<u8>) {
    use std::io::Read as _;
    let mut reader = Command::new("cat")
        .arg(fifo)
        .stdout(Stdio::piped())
        .spawn()
        .expect("cat");
    let mut out = reader.stdout.take().expect("cat's stdout");
    let got = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("chaperone");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut timed_out = false;
    loop {
        let written = child.try_wait().expect("wait").is_some();
        let read = reader.try_wait().expect("wait for cat").is_some();
        if written && read {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = reader.kill();
            timed_out = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = child.wait().expect("wait");
    let read = reader.wait().expect("wait for cat");
    assert!(
        !timed_out,
        "chaperone {args:?} and a reader of its FIFO were not both done within 30 s \
         (chaperone: {status}, reader: {read})"
    );
    (status, got.join().expect("reader thread"))
}

/// A port free now, below the ephemeral range (32768 up), so that no
/// connection another test makes meanwhile takes it as its source port before
/// the test (or the chaperone it runs) binds it: a port that bind(0) handed
/// out and that was let go failed to bind again with `EADDRINUSE` that way in
/// CI (tests/callback, whose agents connect every 0.1 s).
pub fn free_port() -> u16 {
    // One base per test binary, then a step prime to the range's size: the
    // tests of one binary (which run in parallel) never probe the same port.
    static BASE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const PORTS: u32 = 12_000;
    let base = *BASE.get_or_init(|| {
        std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
    });
    let mut last = None;
    for _ in 0..PORTS {
        let n = NEXT.fetch_add(7919, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (base.wrapping_add(n) % PORTS) as u16;
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return port,
            Err(e) => last = Some(e),
        }
    }
    panic!("no free port in 20000-31999 on 127.0.0.1: {last:?}");
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A small tmpfs mounted at `at` (made if missing), unmounted when dropped;
/// or why there is none (not root, or the mount failed), for a visible skip.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Result<Tmpfs, &'static str> {
        if !is_root() {
            return Err("not root: cannot mount a tmpfs");
        }
        std::fs::create_dir_all(at).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err("mount -t tmpfs failed")
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
