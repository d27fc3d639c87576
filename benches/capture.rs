//! Capture throughput: 4 GiB from one child through its stdout.
//!
//! * `capture/4g/chaperone`: a chaperone memory capture with head = tail = 1 MiB
//!   (the agent's capture pipe is raised to `pipe-max-size`, the reactor drains
//!   it with io_uring); timed from `start` to the final result.
//! * `capture/4g/chaperone_file`: the same capture with a kept file as well
//!   (capture mode `file`, `"memory": true`, same head/tail): the reactor also
//!   writes every byte to a file in `CHAPERONE_BENCH_CAPTURE_DIR` (default: the
//!   temp dir), removed after each run outside the timing. Target: ≥ 0.8× the
//!   throughput of `chaperone`.
//! * `capture/4g/direct_file`: the floor for any kept file: the same writer with
//!   its stdout opened straight onto a file in the same directory (a `file` fd:
//!   the agent never sees the bytes). `chaperone_file / direct_file` is how much
//!   the agent's pipe → reactor → file path costs over the child writing the file
//!   itself.
//! * `capture/4g/raw_read`: the same writer with its stdout a `pipe2` pipe raised
//!   to `/proc/sys/fs/pipe-max-size` (`F_SETPIPE_SZ`), drained by a plain
//!   blocking `read()` loop of 1 MiB reads to EOF, then `waitpid`.
//!
//! The writer is this bench binary itself, re-run as `capture --writer BYTES`: it
//! `write()`s one 1 MiB buffer of zeros until BYTES are out, so both sides see the
//! same, cheapest possible producer. `CHAPERONE_BENCH_CAPTURE_BYTES` overrides the
//! 4 GiB (for a quick try).
//!
//! Before every timed run of every variant, the bench touches and frees as much
//! anonymous memory as the run will write (`prefault`), untimed. On a VM with
//! virtio-balloon free page reporting (this one has it), guest pages left free
//! for ~2 s are handed back to the host, and the next touch of each costs a
//! host fault: a run that allocates fresh page-cache pages (a kept file,
//! `direct_file`) then takes up to twice as long, depending only on how long
//! ago the memory was freed, while a memory capture, which recycles a few pipe
//! pages, never notices. Prefaulting gives every variant the same, host-backed
//! free memory to start from; on bare metal it changes nothing.
//! `CHAPERONE_BENCH_PREFAULT=0` turns it off (to see the VM's effect).
//!
//! `capture --paired ROUNDS` (not criterion) alternates the three, one run of each
//! per round (the order rotates every round), and prints the times as JSON.

use chaperone::spec;
use chaperone::{Agent, Config};
use criterion::{Criterion, SamplingMode, Throughput};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_BYTES: u64 = 4 << 30;
const CHUNK: usize = 1 << 20;

/// Writer mode: write `n` zero bytes to stdout in 1 MiB `write()`s.
fn writer(n: u64) -> ! {
    let buf = vec![0u8; CHUNK];
    // A raw fd 1 without std's line buffering (stdout is a pipe anyway).
    // SAFETY: fd 1 is open for the life of the process; ManuallyDrop keeps it so.
    let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    let mut left = n;
    while left > 0 {
        let k = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        if let Err(e) = out.write_all(&buf[..k]) {
            eprintln!("writer: {e}");
            std::process::exit(1);
        }
        left -= k as u64;
    }
    std::process::exit(0);
}

/// Touches and frees `bytes` of anonymous memory, so that the next run finds
/// free guest memory the host has backed (see the module docs). Off with
/// `CHAPERONE_BENCH_PREFAULT=0`.
fn prefault(bytes: u64) {
    if std::env::var_os("CHAPERONE_BENCH_PREFAULT").is_some_and(|v| v == "0") {
        return;
    }
    let Ok(len) = usize::try_from(bytes) else {
        return;
    };
    // SAFETY: a fresh private anonymous mapping, unmapped below; no Rust
    // reference to it exists.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            eprintln!(
                "capture bench: prefault of {len} bytes failed: {}; this run is not prefaulted",
                std::io::Error::last_os_error()
            );
        } else {
            libc::munmap(p, len);
        }
    }
}

fn pipe_max_size() -> usize {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// The raw baseline: one run, timed from spawn to reap.
fn raw_round(exe: &str, bytes: u64, buf: &mut [u8]) -> Duration {
    prefault(bytes);
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded; the fds are new and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let size = libc::c_int::try_from(pipe_max_size()).unwrap_or(1 << 20);
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own; failure leaves the default size.
    let set = unsafe { libc::fcntl(read_end.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    assert!(
        set >= size,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );

    let t0 = Instant::now();
    let mut child = Command::new(exe)
        .args(["--writer", &bytes.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let mut pipe = std::fs::File::from(read_end);
    let mut total = 0u64;
    loop {
        match pipe.read(buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let status = child.wait().expect("wait");
    let elapsed = t0.elapsed();
    assert!(status.success());
    assert_eq!(total, bytes);
    elapsed
}

/// The chaperone side: one run, timed from `start` to the final result.
fn chaperone_round(agent: &Agent, input: &spec::Input, bytes: u64) -> Duration {
    let input = input.clone();
    prefault(bytes);
    let t0 = Instant::now();
    agent.start(input).expect("start");
    let res = agent.wait("w").expect("known id");
    let elapsed = t0.elapsed();
    assert_eq!(
        res.status.and_then(|s| s.exit_code),
        Some(0),
        "{:?}",
        res.errors
    );
    // A `file` fd (direct_file) is no capture: its length is checked on disk.
    if let Ok(data) = agent.fd_data("w", "stdout", 0, Some(0)) {
        assert_eq!(data.length, bytes);
    }
    agent.delete("w").expect("delete");
    elapsed
}

/// Bytes per run, the writer's path, and the group name.
fn setup() -> (u64, String, String) {
    let bytes = std::env::var("CHAPERONE_BENCH_CAPTURE_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_BYTES);
    let exe = std::env::current_exe().expect("current exe");
    let exe = exe.to_str().expect("UTF-8 path").to_string();
    let name = if bytes == DEFAULT_BYTES {
        "capture/4g".to_string()
    } else {
        format!("capture/{bytes}b")
    };
    (bytes, exe, name)
}

fn chaperone_input(exe: &str, bytes: u64) -> spec::Input {
    let capture = serde_json::json!({"mode": "memory", "head": 1 << 20, "tail": 1 << 20});
    writer_input(exe, bytes, capture)
}

/// The same capture plus a kept file at `path`.
fn file_input(exe: &str, bytes: u64, path: &std::path::Path) -> spec::Input {
    let capture = serde_json::json!({"mode": "file", "path": path, "memory": true,
        "head": 1 << 20, "tail": 1 << 20});
    writer_input(exe, bytes, capture)
}

/// The writer with its stdout opened directly onto the file at `path`.
fn direct_input(exe: &str, bytes: u64, path: &std::path::Path) -> spec::Input {
    writer_input_fd(
        exe,
        bytes,
        serde_json::json!({"file": {"path": path, "flags": "Write"}}),
    )
}

fn writer_input(exe: &str, bytes: u64, capture: serde_json::Value) -> spec::Input {
    writer_input_fd(exe, bytes, serde_json::json!({ "capture": capture }))
}

fn writer_input_fd(exe: &str, bytes: u64, stdout: serde_json::Value) -> spec::Input {
    let json = serde_json::json!({"specs": {"w": {
        "argv": [exe, "--writer", bytes.to_string()],
        "fds": [
            ["stdin", {"null": {}}],
            ["stdout", stdout],
            ["stderr", {"null": {}}],
        ],
    }}});
    spec::parse_input(json.to_string().as_bytes()).expect("valid spec")
}

/// Where the kept-file runs write (`CHAPERONE_BENCH_CAPTURE_DIR`, default the
/// temp dir): a file unique to this bench process.
fn kept_path() -> std::path::PathBuf {
    let dir = std::env::var_os("CHAPERONE_BENCH_CAPTURE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!(
        "chaperone-bench-capture-{}.out",
        std::process::id()
    ))
}

/// One kept-file run; the file is checked and removed after the timing.
fn file_round(agent: &Agent, input: &spec::Input, bytes: u64, path: &std::path::Path) -> Duration {
    let elapsed = chaperone_round(agent, input, bytes);
    let len = std::fs::metadata(path).expect("kept file").len();
    assert_eq!(len, bytes, "kept file length");
    std::fs::remove_file(path).expect("remove kept file");
    elapsed
}

/// An agent on the epoll driver (as where io_uring is denied).
fn epoll_agent() -> Agent {
    Agent::new(Config {
        backend: chaperone::BackendChoice::Epoll,
        ..Config::default()
    })
    .expect("agent")
}

fn paired(rounds: usize) {
    let (bytes, exe, name) = setup();
    let agent = Agent::new(Config::default()).expect("agent");
    let epoll = epoll_agent();
    let input = chaperone_input(&exe, bytes);
    let path = kept_path();
    let finput = file_input(&exe, bytes, &path);
    let dinput = direct_input(&exe, bytes, &path);
    let mut buf = vec![0u8; CHUNK];
    let (mut chap, mut file, mut direct, mut raw) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ep, mut ep_file) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for k in 0..6 {
            match (round + k) % 6 {
                5 => ep.push(chaperone_round(&epoll, &input, bytes).as_secs_f64()),
                4 => ep_file.push(file_round(&epoll, &finput, bytes, &path).as_secs_f64()),
                0 => chap.push(chaperone_round(&agent, &input, bytes).as_secs_f64()),
                1 => file.push(file_round(&agent, &finput, bytes, &path).as_secs_f64()),
                2 => direct.push(file_round(&agent, &dinput, bytes, &path).as_secs_f64()),
                _ => raw.push(raw_round(&exe, bytes, &mut buf).as_secs_f64()),
            }
        }
    }
    let times = serde_json::json!({
        format!("{name}/chaperone"): chap,
        format!("{name}/chaperone_file"): file,
        format!("{name}/direct_file"): direct,
        format!("{name}/raw_read"): raw,
        format!("{name}/epoll"): ep,
        format!("{name}/epoll_file"): ep_file,
    });
    println!("{}", serde_json::json!({"bytes": bytes, "times": times}));
}

fn bench_capture(c: &mut Criterion) {
    let (bytes, exe, name) = setup();

    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(bytes));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);

    let agent = Agent::new(Config::default()).expect("agent");
    let input = chaperone_input(&exe, bytes);
    g.bench_function("chaperone", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| chaperone_round(&agent, &input, bytes))
                .sum()
        });
    });
    let path = kept_path();
    let finput = file_input(&exe, bytes, &path);
    g.bench_function("chaperone_file", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| file_round(&agent, &finput, bytes, &path))
                .sum()
        });
    });
    let dinput = direct_input(&exe, bytes, &path);
    g.bench_function("direct_file", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| file_round(&agent, &dinput, bytes, &path))
                .sum()
        });
    });
    drop(agent);
    let epoll = epoll_agent();
    g.bench_function("epoll", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| chaperone_round(&epoll, &input, bytes))
                .sum()
        });
    });
    g.bench_function("epoll_file", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| file_round(&epoll, &finput, bytes, &path))
                .sum()
        });
    });
    drop(epoll);

    let mut buf = vec![0u8; CHUNK];
    g.bench_function("raw_read", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| raw_round(&exe, bytes, &mut buf)).sum());
    });
    g.finish();
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--writer") => {
            let n = args
                .next()
                .and_then(|s| s.parse().ok())
                .expect("--writer BYTES");
            writer(n);
        }
        Some("--paired") => {
            paired(args.next().and_then(|s| s.parse().ok()).unwrap_or(4));
            return;
        }
        _ => {}
    }
    let mut c = Criterion::default().configure_from_args();
    bench_capture(&mut c);
    c.final_summary();
}
