//! Spawn throughput: `N` × `/bin/true` per iteration, stdout and stderr captured,
//! every exit status (and rusage where the API gives it) collected.
//!
//! * `spawn/true/chaperone`: one `Agent::start` of `N` specs with two memory
//!   captures each; the bench counts `Exited` events from its subscription, then
//!   takes every full result with one `results()`. The deletes that keep the
//!   proc table small run after the clock stops.
//! * `spawn/true/all_fields`: the `chaperone` loop with every child-control
//!   field set in each spec (cwd, umask, pdeath_sig, signals, rlimits,
//!   process_group, kill_group, a timeout that never fires).
//! * `spawn/true/sampling_1ms`: the `chaperone` loop on an agent that samples
//!   `/proc/<pid>/stat` and `statm` of every running process every millisecond
//!   (the default is every second); `ci/bench` compares it with `chaperone`.
//! * `spawn/true/perf`: the `chaperone` loop with `"perf": true` in each spec
//!   (every perf counter the machine has, opened in the child, read at exit);
//!   `ci/bench` compares it with `chaperone` (perf off).
//! * `spawn/true/raw_vfork`: the machine ceiling, a tight libc loop: glibc
//!   `posix_spawn` (a `clone(CLONE_VM|CLONE_VFORK)`) with two `pipe2` pipes
//!   dup'ed onto 1 and 2, `pidfd_open`, `poll`+`read` of both pipes to EOF,
//!   `waitid(P_PIDFD)` with rusage; two children in flight, one spawning thread.
//! * `spawn/true/std_command`: `std::process::Command::output()` with both pipes,
//!   sequentially (std spawns through `posix_spawn` too);
//!   `spawn/true/std_command_2t`: the same on two threads, i.e. two spawning
//!   threads, one per core.
//! * `spawn/true/tokio_64`: `tokio::process::Command::output()`, 64 in flight on a
//!   current-thread runtime.
//! * `spawn/true/parent_rss_1g`: the chaperone loop on an agent that holds 1 GiB
//!   of captured output (a child wrote 1 GiB into a head=tail=512 MiB capture,
//!   so this process's RSS is > 1 GiB); `spawn/true/std_command_parent_rss_1g`:
//!   `std_command` with that 1 GiB still held.
//!
//! Every benchmark reports time per iteration of `N` children and throughput in
//! children per second. `ci/bench` turns the means into ratios.
//!
//! `spawn --paired ROUNDS` (not criterion) runs the same work interleaved, one
//! iteration of each variant per round in a rotating order, and prints the times
//! as JSON: on a noisy machine, per-round ratios are steadier than ratios of
//! means measured minutes apart. It also times `chaperone_wait_each` (a blocking
//! `wait` per proc instead of events + `results()`), and holds its 1 GiB as a
//! touched anonymous mapping, made and dropped every round.

use chaperone::spec::{self, Input};
use chaperone::{Agent, Config};
use criterion::{Criterion, SamplingMode, Throughput};
use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Children per iteration.
const N: usize = 200;
/// Children the raw loop keeps in flight.
const RAW_IN_FLIGHT: usize = 2;
/// Children `tokio_64` keeps in flight.
const TOKIO_IN_FLIGHT: usize = 64;
/// What the 1 GiB child writes.
const BIG: u64 = 1 << 30;

const TRUE: &str = "/bin/true";

//------------------------------------------------------------------------------
// chaperone
//------------------------------------------------------------------------------

fn chaperone_input(n: usize) -> Input {
    let spec = format!(
        r#"{{"argv": ["{TRUE}"], "fds": [["stdout", {{"capture": {{"mode": "memory"}}}}],
            ["stderr", {{"capture": {{"mode": "memory"}}}}]]}}"#
    );
    let specs: Vec<String> = (0..n).map(|i| format!(r#""t{i}": {spec}"#)).collect();
    let json = format!(r#"{{"specs": {{{}}}}}"#, specs.join(","));
    spec::parse_input(json.as_bytes()).expect("valid spec")
}

/// [`chaperone_input`] with every child-control field set (docs/spec.md, "Child
/// control"): the same children, each with a cwd, umask, parent-death signal,
/// blocked and ignored signals, two rlimits, its own process group, kill_group
/// and a (never firing) timeout. Compared with `chaperone` in `ci/bench`.
fn chaperone_input_all_fields(n: usize) -> Input {
    let spec = format!(
        r#"{{"argv": ["{TRUE}"], "fds": [["stdout", {{"capture": {{"mode": "memory"}}}}],
            ["stderr", {{"capture": {{"mode": "memory"}}}}]],
            "cwd": "/", "umask": 18, "pdeath_sig": "SIGTERM",
            "signals": {{"mask": ["SIGUSR1"], "ignore": ["SIGPIPE"]}},
            "rlimits": {{"core": 0, "nofile": [1024, 1024]}},
            "process_group": 0, "kill_group": true,
            "timeout": {{"after": 3600, "kill_after": 10}}}}"#
    );
    let specs: Vec<String> = (0..n).map(|i| format!(r#""t{i}": {spec}"#)).collect();
    let json = format!(r#"{{"specs": {{{}}}}}"#, specs.join(","));
    spec::parse_input(json.as_bytes()).expect("valid spec")
}

/// [`chaperone_input`] with `"perf": true` in each spec: every perf counter the
/// machine has (hardware ones only with a PMU). Compared with `chaperone` in
/// `ci/bench` (target: perf on at least 0.8× the throughput of perf off).
fn chaperone_input_perf(n: usize) -> Input {
    let spec = format!(
        r#"{{"argv": ["{TRUE}"], "fds": [["stdout", {{"capture": {{"mode": "memory"}}}}],
            ["stderr", {{"capture": {{"mode": "memory"}}}}]], "perf": true}}"#
    );
    let specs: Vec<String> = (0..n).map(|i| format!(r#""t{i}": {spec}"#)).collect();
    let json = format!(r#"{{"specs": {{{}}}}}"#, specs.join(","));
    spec::parse_input(json.as_bytes()).expect("valid spec")
}

/// Starts `input`, waits for each proc's final result and checks it. Returns the
/// time from start to the last result; the deletes are not timed.
fn chaperone_round(agent: &Agent, input: &Input) -> Duration {
    let input = input.clone();
    let t0 = Instant::now();
    let ids = agent.start(input).expect("start");
    let results: Vec<_> = ids
        .iter()
        .map(|id| agent.wait(id).expect("known id"))
        .collect();
    let elapsed = t0.elapsed();
    for (id, res) in ids.iter().zip(&results) {
        let code = res.status.as_ref().and_then(|s| s.exit_code);
        assert_eq!(code, Some(0), "{id}: {:?}", res.errors);
        assert!(res.rusage.is_some(), "{id}: no rusage");
        assert_eq!(res.fds.len(), 2, "{id}: {:?}", res.fds);
        agent.delete(id).expect("delete");
    }
    elapsed
}

/// Like [`chaperone_round`], but the way a server would collect: it counts
/// `Exited` events from its subscription, then takes every result with one
/// `results()` call.
fn chaperone_round_events(
    agent: &Agent,
    events: &chaperone::Subscription,
    input: &Input,
) -> Duration {
    let input = input.clone();
    // Events of earlier rounds (every proc of theirs has exited and is deleted).
    while events.try_recv().is_ok() {}
    let t0 = Instant::now();
    let ids = agent.start(input).expect("start");
    let mut left = ids.len();
    while left > 0 {
        if let chaperone::Event::Exited(_) = events.recv().expect("agent alive") {
            left -= 1;
        }
    }
    let results = agent.results();
    let elapsed = t0.elapsed();
    for id in &ids {
        let res = &results[id];
        let code = res.status.as_ref().and_then(|s| s.exit_code);
        assert_eq!(code, Some(0), "{id}: {:?}", res.errors);
        assert!(res.rusage.is_some(), "{id}: no rusage");
        assert_eq!(res.fds.len(), 2, "{id}: {:?}", res.fds);
        agent.delete(id).expect("delete");
    }
    elapsed
}

/// An agent holding `BIG` bytes of captured output, in this process.
fn agent_holding_big() -> Agent {
    let agent = Agent::new(Config::default()).expect("agent");
    let half = BIG / 2;
    let json = format!(
        r#"{{"specs": {{"big": {{"argv": ["/usr/bin/head", "-c", "{BIG}", "/dev/zero"],
            "fds": [["stdout", {{"capture": {{"mode": "memory", "attached": false,
            "head": {half}, "tail": {half}}}}}]]}}}}}}"#
    );
    agent
        .start(spec::parse_input(json.as_bytes()).expect("valid spec"))
        .expect("start big");
    let res = agent.wait("big").expect("big");
    assert_eq!(res.status.and_then(|s| s.exit_code), Some(0));
    let data = agent
        .fd_data("big", "stdout", 0, Some(16))
        .expect("fd data");
    assert_eq!(data.length, BIG);
    eprintln!(
        "parent_rss_1g: agent holds {} MiB captured; bench process VmRSS {} MiB",
        data.length >> 20,
        vm_rss_kib() >> 10
    );
    agent
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

//------------------------------------------------------------------------------
// raw libc baseline
//------------------------------------------------------------------------------

fn cvt(r: libc::c_int, what: &str) -> libc::c_int {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

fn pipe_cloexec() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    cvt(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe2",
    );
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// What the raw loop keeps per child.
struct RawChild {
    pidfd: OwnedFd,
    out: OwnedFd,
    err: OwnedFd,
}

/// A prebuilt argv and envp for `posix_spawn`.
struct RawCmd {
    path: CString,
    _argv_store: Vec<CString>,
    argv: Vec<*mut libc::c_char>,
    _envp_store: Vec<CString>,
    envp: Vec<*mut libc::c_char>,
}

impl RawCmd {
    fn new(path: &str) -> RawCmd {
        use std::os::unix::ffi::OsStrExt;
        let path = CString::new(path).expect("no NUL");
        let argv_store = vec![path.clone()];
        let envp_store: Vec<CString> = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).expect("no NUL")
            })
            .collect();
        let ptrs = |v: &[CString]| -> Vec<*mut libc::c_char> {
            v.iter()
                .map(|s| s.as_ptr().cast_mut())
                .chain(std::iter::once(std::ptr::null_mut()))
                .collect()
        };
        RawCmd {
            argv: ptrs(&argv_store),
            envp: ptrs(&envp_store),
            path,
            _argv_store: argv_store,
            _envp_store: envp_store,
        }
    }

    fn spawn(&self) -> RawChild {
        let (out_r, out_w) = pipe_cloexec();
        let (err_r, err_w) = pipe_cloexec();
        let mut pid: libc::pid_t = 0;
        // SAFETY: the file actions object is initialised before use and destroyed
        // after; the argv/envp arrays are NUL-terminated and outlive the call;
        // dup2 onto 1 and 2 clears close-on-exec there, every other pipe end is
        // close-on-exec.
        unsafe {
            let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
            cvt(libc::posix_spawn_file_actions_init(&mut fa), "fa init");
            cvt(
                libc::posix_spawn_file_actions_adddup2(&mut fa, out_w.as_raw_fd(), 1),
                "adddup2",
            );
            cvt(
                libc::posix_spawn_file_actions_adddup2(&mut fa, err_w.as_raw_fd(), 2),
                "adddup2",
            );
            let r = libc::posix_spawn(
                &mut pid,
                self.path.as_ptr(),
                &fa,
                std::ptr::null(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            );
            libc::posix_spawn_file_actions_destroy(&mut fa);
            assert_eq!(
                r,
                0,
                "posix_spawn: {}",
                std::io::Error::from_raw_os_error(r)
            );
        }
        drop((out_w, err_w));
        // SAFETY: pidfd_open takes a pid and flags; the child is ours and not yet
        // reaped, so the pid cannot have been reused.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        RawChild {
            // SAFETY: a new fd that nothing else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) },
            out: out_r,
            err: err_r,
        }
    }
}

/// Reads both pipes to EOF (poll + read), then reaps through the pidfd with
/// rusage. Returns the bytes read.
fn raw_finish(child: RawChild, buf: &mut [u8]) -> usize {
    let mut total = 0;
    let mut fds = [
        libc::pollfd {
            fd: child.out.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: child.err.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let mut open = 2;
    while open > 0 {
        // SAFETY: `fds` is a valid array of two pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        cvt(r, "poll");
        for p in fds.iter_mut().filter(|p| p.fd >= 0 && p.revents != 0) {
            // SAFETY: `buf` is valid for `buf.len()` bytes.
            let n = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                total += n as usize;
            } else if n == 0 {
                p.fd = -1; // EOF: poll ignores negative fds
                open -= 1;
            } else {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "read: {e}");
            }
        }
    }
    // SAFETY: zeroed siginfo_t and rusage are valid out-parameters.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the raw waitid syscall takes (idtype, id, *siginfo, options,
    // *rusage); both pointers are valid for writes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_waitid,
            libc::P_PIDFD,
            child.pidfd.as_raw_fd(),
            &mut info as *mut libc::siginfo_t,
            libc::WEXITED,
            &mut ru as *mut libc::rusage,
        )
    };
    assert!(r == 0, "waitid: {}", std::io::Error::last_os_error());
    // SAFETY: waitid filled in a SIGCHLD siginfo, for which si_status is valid.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    assert!(code == libc::CLD_EXITED && status == 0, "child failed");
    total
}

/// `n` children with `in_flight` running at a time.
fn raw_round(cmd: &RawCmd, n: usize, in_flight: usize, buf: &mut [u8]) {
    let mut q = VecDeque::with_capacity(in_flight);
    for _ in 0..n {
        if q.len() == in_flight {
            raw_finish(q.pop_front().expect("non-empty"), buf);
        }
        q.push_back(cmd.spawn());
    }
    while let Some(c) = q.pop_front() {
        raw_finish(c, buf);
    }
}

//------------------------------------------------------------------------------
// std and tokio
//------------------------------------------------------------------------------

fn std_round(n: usize) {
    for _ in 0..n {
        let out = Command::new(TRUE)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("spawn");
        assert!(out.status.success());
    }
}

fn std_round_threads(n: usize, threads: usize) {
    std::thread::scope(|s| {
        for t in 0..threads {
            let share = n / threads + usize::from(t < n % threads);
            s.spawn(move || std_round(share));
        }
    });
}

async fn tokio_round(n: usize, in_flight: usize) {
    let mut set = tokio::task::JoinSet::new();
    let mut done = 0;
    let mut spawned = 0;
    while done < n {
        if spawned < n && set.len() < in_flight {
            spawned += 1;
            set.spawn(async {
                tokio::process::Command::new(TRUE)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .output()
                    .await
            });
            continue;
        }
        let out = set
            .join_next()
            .await
            .expect("a task")
            .expect("join")
            .expect("spawn");
        assert!(out.status.success());
        done += 1;
    }
}

//------------------------------------------------------------------------------

fn per_iter(iters: u64, mut f: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| f()).sum()
}

fn timed(f: impl FnOnce()) -> Duration {
    let t0 = Instant::now();
    f();
    t0.elapsed()
}

fn bench_spawn(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn/true");
    g.throughput(Throughput::Elements(N as u64));
    // Iterations take ~0.1 s: one per sample. Sample count and times come from
    // the command line (`ci/bench` passes a quick setting).
    g.sampling_mode(SamplingMode::Flat);

    let input = chaperone_input(N);
    {
        let agent = Agent::new(Config::default()).expect("agent");
        let events = agent.handle().subscribe_bounded(1 << 20);
        g.bench_function("chaperone", |b| {
            b.iter_custom(|iters| {
                per_iter(iters, || chaperone_round_events(&agent, &events, &input))
            });
        });
        let with_perf = chaperone_input_perf(N);
        g.bench_function("perf", |b| {
            b.iter_custom(|iters| {
                per_iter(iters, || {
                    chaperone_round_events(&agent, &events, &with_perf)
                })
            });
        });
        {
            let sampling = sampling_agent();
            let events = sampling.handle().subscribe_bounded(1 << 20);
            g.bench_function("sampling_1ms", |b| {
                b.iter_custom(|iters| {
                    per_iter(iters, || chaperone_round_events(&sampling, &events, &input))
                });
            });
        }
        {
            let epoll = epoll_agent();
            let events = epoll.handle().subscribe_bounded(1 << 20);
            g.bench_function("epoll", |b| {
                b.iter_custom(|iters| {
                    per_iter(iters, || chaperone_round_events(&epoll, &events, &input))
                });
            });
        }
        let all_fields = chaperone_input_all_fields(N);
        g.bench_function("all_fields", |b| {
            b.iter_custom(|iters| {
                per_iter(iters, || {
                    chaperone_round_events(&agent, &events, &all_fields)
                })
            });
        });
    }

    let cmd = RawCmd::new(TRUE);
    let mut buf = vec![0u8; 64 * 1024];
    g.bench_function("raw_vfork", |b| {
        b.iter_custom(|iters| {
            per_iter(iters, || {
                timed(|| raw_round(&cmd, N, RAW_IN_FLIGHT, &mut buf))
            })
        });
    });

    g.bench_function("std_command", |b| {
        b.iter_custom(|iters| per_iter(iters, || timed(|| std_round(N))));
    });
    g.bench_function("std_command_2t", |b| {
        b.iter_custom(|iters| per_iter(iters, || timed(|| std_round_threads(N, 2))));
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    g.bench_function("tokio_64", |b| {
        b.iter_custom(|iters| {
            per_iter(iters, || {
                timed(|| rt.block_on(tokio_round(N, TOKIO_IN_FLIGHT)))
            })
        });
    });
    drop(rt);

    // Made on first use, so that a filter that skips both benches skips the 1 GiB.
    let mut big: Option<(Agent, chaperone::Subscription)> = None;
    let make_big = || {
        let agent = agent_holding_big();
        let events = agent.handle().subscribe_bounded(1 << 20);
        (agent, events)
    };
    g.bench_function("parent_rss_1g", |b| {
        let (agent, events) = big.get_or_insert_with(make_big);
        b.iter_custom(|iters| per_iter(iters, || chaperone_round_events(agent, events, &input)));
    });
    g.bench_function("std_command_parent_rss_1g", |b| {
        big.get_or_insert_with(make_big);
        b.iter_custom(|iters| per_iter(iters, || timed(|| std_round(N))));
    });
    drop(big);
    g.finish();
}

//------------------------------------------------------------------------------
// paired mode
//------------------------------------------------------------------------------

/// 1 GiB of anonymous memory, touched, in this process (which the agent shares).
struct Ballast {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Ballast {
    fn new(len: usize) -> Ballast {
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(
            ptr != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `ptr` is a writable mapping of `len` bytes that we own.
        unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 1, len) };
        Ballast { ptr, len }
    }
}

impl Drop for Ballast {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, used by nobody else.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// `spawn --paired ROUNDS`: the same work as the criterion benches, but
/// interleaved: every round times one iteration (`N` children) of each, so that
/// each pair of figures saw the same machine load. The 1 GiB variants hold a
/// touched 1 GiB anonymous mapping (dropped between rounds) instead of a capture.
/// Prints one JSON object: `{"n": N, "times": {id: [seconds per round]}}`.
/// An agent sampling `/proc` of its running processes every millisecond.
fn sampling_agent() -> Agent {
    Agent::new(Config {
        sample_interval: Some(Duration::from_millis(1)),
        ..Config::default()
    })
    .expect("agent")
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
    let input = chaperone_input(N);
    let input_perf = chaperone_input_perf(N);
    let agent = Agent::new(Config::default()).expect("agent");
    let sampling = sampling_agent();
    let sampling_events = sampling.handle().subscribe_bounded(1 << 20);
    let epoll = epoll_agent();
    let epoll_events = epoll.handle().subscribe_bounded(1 << 20);
    let cmd = RawCmd::new(TRUE);
    let mut buf = vec![0u8; 64 * 1024];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ids: [&str; 11] = [
        "chaperone",
        "raw_vfork",
        "std_command",
        "std_command_2t",
        "tokio_64",
        "parent_rss_1g",
        "std_command_parent_rss_1g",
        "chaperone_wait_each",
        "perf",
        "sampling_1ms",
        "epoll",
    ];
    let events = agent.handle().subscribe_bounded(1 << 20);
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); ids.len()];
    // One untimed warm-up round.
    for round in 0..=rounds {
        // Ten blocks, in an order rotated every round so that no variant always
        // runs first or after the same neighbour.
        let mut t = [Duration::ZERO; 11];
        for block in 0..10 {
            match (block + round) % 10 {
                9 => t[10] = chaperone_round_events(&epoll, &epoll_events, &input),
                8 => t[9] = chaperone_round_events(&sampling, &sampling_events, &input),
                7 => t[8] = chaperone_round_events(&agent, &events, &input_perf),
                6 => t[7] = chaperone_round(&agent, &input),
                0 => t[0] = chaperone_round_events(&agent, &events, &input),
                1 => t[1] = timed(|| raw_round(&cmd, N, RAW_IN_FLIGHT, &mut buf)),
                2 => t[2] = timed(|| std_round(N)),
                3 => t[3] = timed(|| std_round_threads(N, 2)),
                4 => t[4] = timed(|| rt.block_on(tokio_round(N, TOKIO_IN_FLIGHT))),
                _ => {
                    let ballast = Ballast::new(BIG as usize);
                    t[5] = chaperone_round_events(&agent, &events, &input);
                    t[6] = timed(|| std_round(N));
                    drop(ballast);
                }
            }
        }
        if round > 0 {
            for (v, d) in times.iter_mut().zip(t) {
                v.push(d.as_secs_f64());
            }
        }
    }
    let obj: serde_json::Map<String, serde_json::Value> = ids
        .iter()
        .zip(times)
        .map(|(id, v)| (format!("spawn/true/{id}"), serde_json::json!(v)))
        .collect();
    println!("{}", serde_json::json!({"n": N, "times": obj}));
}

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--paired") {
        let rounds = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
        paired(rounds);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_spawn(&mut c);
    c.final_summary();
}
