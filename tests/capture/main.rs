//! Output capture through the [`chaperone::Agent`] API and the CLI: head/tail
//! bounds on huge output, `fd_data` ranges in memory and tempfile mode, detached
//! and incremental reads, and concurrent large captures: Procstar contract
//! acceptance cases 5, 7, 8, 27 and 32.

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::{Dropped, Encoding, FdExt, FdRes, State};
use chaperone::{Agent, FdDataError};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use util::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

//------------------------------------------------------------------------------
// 1 GiB of output (case 32)
//------------------------------------------------------------------------------

fn gib_spec() -> Value {
    json!({"specs": {"big": {
        "argv": ["/usr/bin/head", "-c", GIB.to_string(), "/dev/zero"],
        "fds": [["stdout", {"capture": {"mode": "memory", "head": MIB, "tail": MIB}}]]}}})
}

// Case 32: the result holds only the head and tail, with the full length and the
// dropped middle; fd_data serves the held bytes and reports the missing ones.
#[test]
fn capture_keeps_head_and_tail_when_child_writes_1gib() {
    let a = agent();
    start(&a, &gib_spec());
    let res = wait(&a, "big");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0));
    match res.fds.get("stdout") {
        Some(Some(FdRes::Data {
            bytes,
            length,
            ext:
                FdExt {
                    dropped,
                    held,
                    limited,
                    path: None,
                    ..
                },
        })) => {
            assert_eq!(*held, Some(2 * MIB));
            assert!(!limited);
            assert_eq!(*length, GIB);
            assert_eq!(
                *dropped,
                Some(Dropped {
                    start: MIB,
                    stop: GIB - MIB
                })
            );
            assert_eq!(bytes.len() as u64, 2 * MIB);
            assert!(bytes.iter().all(|&b| b == 0));
        }
        other => panic!("stdout: {other:?}"),
    }

    let head = a.fd_data("big", "stdout", 0, Some(16)).unwrap();
    assert_eq!((head.start, head.stop, head.length), (0, 16, GIB));
    assert_eq!(head.missing, None);
    assert_eq!(&head.data[..], &[0u8; 16]);

    let middle = a.fd_data("big", "stdout", 2 * MIB, Some(3 * MIB)).unwrap();
    assert_eq!(middle.missing, Some(2 * MIB..3 * MIB));
    assert!(middle.data.is_empty(), "{} bytes", middle.data.len());

    let across = a.fd_data("big", "stdout", MIB - 4, Some(MIB + 4)).unwrap();
    assert_eq!(across.missing, Some(MIB..MIB + 4));
    assert_eq!(&across.data[..], &[0u8; 4]);

    let last = a.fd_data("big", "stdout", GIB - 1, None).unwrap();
    assert_eq!((last.start, last.stop, last.length), (GIB - 1, GIB, GIB));
    assert_eq!(last.missing, None);
    assert_eq!(&last.data[..], &[0u8]);
}

// Case 32: the agent's own memory stays bounded (Procstar: RSS 1.06 GB). The CLI
// runs as a child of an agent so that its rusage gives its peak RSS.
#[test]
fn capture_agent_memory_stays_bounded_when_child_writes_1gib() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("big.json");
    std::fs::write(&spec, serde_json::to_vec(&gib_spec()).unwrap()).unwrap();
    let a = agent();
    start(
        &a,
        &json!({"specs": {"cli": {"argv": [bin(), "--print", spec],
            "fds": [["stdout", {"capture": {"mode": "tempfile", "encoding": "utf-8", "attached": false}}]]}}}),
    );
    let res = wait(&a, "cli");
    assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0));
    let out = a.fd_data("cli", "stdout", 0, None).unwrap();
    let printed: Value = serde_json::from_slice(&out.data).unwrap();
    assert_eq!(printed["big"]["fds"]["stdout"]["length"], GIB);
    let maxrss = res.rusage.unwrap().maxrss;
    assert!(maxrss < 100_000_000, "agent maxrss {maxrss} bytes");
}

//------------------------------------------------------------------------------
// fd_data ranges (case 8)
//------------------------------------------------------------------------------

fn digits(a: &Agent, mode: &str) {
    start(
        a,
        &json!({"specs": {"d": {"argv": ["/usr/bin/printf", "0123456789"],
            "fds": [["stdout", {"capture": {"mode": mode, "encoding": "utf-8"}}]]}}}),
    );
    wait(a, "d");
}

fn check_ranges(mode: &str) {
    let a = agent();
    digits(&a, mode);
    let get = |start, stop| a.fd_data("d", "stdout", start, stop).unwrap();

    let all = get(0, None);
    assert_eq!((all.start, all.stop, all.length), (0, 10, 10));
    assert_eq!(&all.data[..], b"0123456789");
    assert_eq!(all.encoding, chaperone::spec::Encoding::Utf8);

    let mid = get(3, Some(7));
    assert_eq!((mid.start, mid.stop, &mid.data[..]), (3, 7, &b"3456"[..]));

    let clamped = get(8, Some(1000));
    assert_eq!(
        (clamped.start, clamped.stop, &clamped.data[..]),
        (8, 10, &b"89"[..])
    );

    let past = get(20, Some(30));
    assert!(past.data.is_empty());
    assert_eq!(past.length, 10);
    assert_eq!(past.missing, None);

    let past_open = get(10, None);
    assert!(past_open.data.is_empty());
    assert_eq!(past_open.length, 10);

    let backwards = get(7, Some(3));
    assert!(backwards.data.is_empty());
    assert_eq!(backwards.length, 10);

    let empty = get(4, Some(4));
    assert!(empty.data.is_empty());

    // Out-of-range requests leave the capture readable (Procstar closed the
    // tempfile's fd on a short read).
    assert_eq!(&get(0, Some(u64::MAX)).data[..], b"0123456789");
    assert_eq!(&get(0, None).data[..], b"0123456789");
}

#[test]
fn capture_fd_data_clamps_ranges_in_memory_mode() {
    check_ranges("memory");
}

#[test]
fn capture_fd_data_clamps_ranges_in_tempfile_mode() {
    check_ranges("tempfile");
}

#[test]
fn capture_fd_data_accepts_fd_number_alias() {
    let a = agent();
    digits(&a, "memory");
    assert_eq!(
        &a.fd_data("d", "1", 0, None).unwrap().data[..],
        b"0123456789"
    );
}

#[test]
fn capture_fd_data_fails_when_fd_or_proc_unknown() {
    let a = agent();
    digits(&a, "tempfile");
    assert!(matches!(
        a.fd_data("d", "stderr", 0, None),
        Err(FdDataError::NoFd(fd)) if fd == "2"
    ));
    assert!(matches!(
        a.fd_data("nope", "stdout", 0, None),
        Err(FdDataError::Unknown(id)) if id == "nope"
    ));
}

//------------------------------------------------------------------------------
// Detached and incremental reads (cases 5, 7)
//------------------------------------------------------------------------------

// Case 5.
#[test]
fn capture_detached_reports_length_and_serves_bytes() {
    for mode in ["memory", "tempfile"] {
        let a = agent();
        start(
            &a,
            &json!({"specs": {"d": {"argv": ["/bin/echo", "Hello, world.", "How are you?"],
                "fds": [["stdout", {"capture": {"mode": mode, "encoding": "utf-8", "attached": false}}]]}}}),
        );
        let res = wait(&a, "d");
        // Nothing dropped: no `held` (it would equal `length`).
        let held = None;
        assert_eq!(
            res.fds["stdout"],
            Some(FdRes::Detached {
                length: 27,
                encoding: Encoding::Utf8,
                ext: FdExt {
                    held,
                    ..FdExt::default()
                },
            }),
            "{mode}"
        );
        let v = serde_json::to_value(&res).unwrap();
        assert_eq!(
            v["fds"]["stdout"],
            json!({"type": "detached", "length": 27, "encoding": "utf-8"}),
            "{mode}"
        );
        assert_eq!(
            &a.fd_data("d", "stdout", 0, None).unwrap().data[..],
            b"Hello, world. How are you?\n",
            "{mode}"
        );
    }
}

// Case 7: output is readable while the process runs, and a second read from
// where the first stopped gets exactly the rest.
#[test]
fn capture_fd_data_reads_incrementally_while_running() {
    for mode in ["memory", "tempfile"] {
        let a = agent();
        start(
            &a,
            &json!({"specs": {"i": {"argv": ["/bin/sh", "-c", "echo hello; sleep 0.5; echo world"],
                "fds": [["stdout", {"capture": {"mode": mode, "encoding": "utf-8", "attached": false}}]]}}}),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = loop {
            let d = a.fd_data("i", "stdout", 0, None).unwrap();
            if d.length >= 6 || Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(a.result("i").unwrap().state, State::Running, "{mode}");
        assert_eq!((first.start, first.stop), (0, 6), "{mode}");
        assert_eq!(&first.data[..], b"hello\n", "{mode}");
        wait(&a, "i");
        let second = a.fd_data("i", "stdout", first.stop, None).unwrap();
        assert_eq!((second.start, second.stop), (6, 12), "{mode}");
        assert_eq!(&second.data[..], b"world\n", "{mode}");
    }
}

//------------------------------------------------------------------------------
// Concurrent large captures (case 27)
//------------------------------------------------------------------------------

// Case 27: 8 concurrent 4 MiB printers, each captured intact.
#[test]
fn capture_keeps_8_concurrent_4mib_outputs_intact() {
    const SIZE: usize = 4 << 20;
    let specs: serde_json::Map<String, Value> = (0..8)
        .map(|i| {
            let mode = if i % 2 == 0 { "memory" } else { "tempfile" };
            (
                format!("p{i}"),
                json!({"argv": ["/bin/sh", "-c", format!("yes line-of-printer-{i} | head -c {SIZE}")],
                       "fds": [["stdout", {"capture": {"mode": mode}}]]}),
            )
        })
        .collect();
    let a = agent();
    start(&a, &json!({ "specs": specs }));
    for i in 0..8 {
        let res = wait(&a, &format!("p{i}"));
        assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0), "{i}");
        let line = format!("line-of-printer-{i}\n");
        let want: Vec<u8> = line.bytes().cycle().take(SIZE).collect();
        let got = bytes_of(&res, "stdout");
        assert_eq!(got.len(), SIZE, "{i}");
        assert!(got == want, "printer {i}: output differs");
    }
}

//------------------------------------------------------------------------------
// Pipe size: raised for a writer that fills the pipe, not for a quiet one
//------------------------------------------------------------------------------

/// The size of this process's end of the pipe that process `pid` has as fd
/// `fd` (the agent here is this test process).
fn agent_pipe_size(pid: i32, fd: i32) -> i32 {
    let theirs = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("child's fd");
    let ours = std::fs::read_dir("/proc/self/fd")
        .expect("own fds")
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).ok().as_ref() == Some(&theirs))
        .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("no fd of this process on {theirs:?}"));
    // SAFETY: F_GETPIPE_SZ on an fd this process holds; no memory arguments.
    unsafe { libc::fcntl(ours, libc::F_GETPIPE_SZ) }
}

/// Waits until the capture `fd` of `id` holds `len` bytes.
fn wait_for_length(a: &Agent, id: &str, len: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = a.result(id).expect("known");
        if let Some(Some(fd)) = res.fds.get("stdout") {
            if fd.length().is_some_and(|l| l >= len) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{id}: no {len} bytes in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A capture pipe starts at the kernel's default size and is raised to the
/// agent's pipe size once a read finds it full: a process that writes a line
/// costs no resize and no share of the per-user pipe quota.
#[test]
fn capture_pipe_grows_only_for_a_writer_that_fills_it() {
    let a = agent();
    let page = i32::try_from(rustix::param::page_size()).expect("page size");
    let max: i32 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .expect("pipe-max-size")
        .trim()
        .parse()
        .expect("a number");
    start(
        &a,
        &json!({"specs": {
            "quiet": {"argv": ["/bin/sh", "-c", "echo hi; exec sleep 30"],
                      "fds": [["stdout", mem_utf8()]]},
            "heavy": {"argv": ["/bin/sh", "-c",
                               "dd if=/dev/zero bs=1M count=4 status=none; exec sleep 30"],
                      "fds": [["stdout", {"capture": {"mode": "memory", "tail": 4096}}]]}}}),
    );
    wait_for_length(&a, "quiet", 3);
    wait_for_length(&a, "heavy", 4 << 20);
    let pid = |id: &str| a.result(id).expect("known").pid.expect("a pid");
    // 16 pages, or fewer where the user's pipe quota is spent: not raised.
    assert!(
        agent_pipe_size(pid("quiet"), 1) <= 16 * page,
        "quiet writer's pipe"
    );
    // A 1 MiB write fills the 16-page pipe before the first read can take
    // the pipe's lock: that read finds it full.
    assert_eq!(agent_pipe_size(pid("heavy"), 1), max, "heavy writer's pipe");
    for id in ["quiet", "heavy"] {
        a.signal(id, libc::SIGKILL).expect("signal");
        wait(&a, id);
    }
}

//------------------------------------------------------------------------------
// Descendants that outlive their process
//------------------------------------------------------------------------------

// A background descendant writing into the capture's pipe after its process
// ended: the capture keeps what the process's lifetime gave, and the
// descendant's writes succeed (the agent reads the pipe to its end and drops
// them), so it neither dies of SIGPIPE nor blocks on a full pipe.
#[test]
fn a_descendant_writing_after_its_process_ended_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    let go = dir.path().join("go");
    // The descendant writes once the test has the process's result (it
    // waits for `go`); 2 MiB, more than a pipe holds, so a pipe left unread
    // would block it. Beside it, live processes whose captures share the
    // reads' buffers must get exactly their own bytes.
    let script = format!(
        "(while [ ! -e {go} ]; do sleep 0.01; done; echo late; \
          head -c 2097152 /dev/zero; echo $? > {status}) & echo early",
        go = go.display(),
        status = status.display()
    );
    let a = agent();
    a.start(input(&json!({"specs": {
        "p": {"argv": ["/bin/sh", "-c", script], "fds": [["stdout", mem_utf8()]]},
    }})))
    .expect("start");
    let res = wait(&a, "p");
    assert_eq!(res.state, State::Terminated);
    assert_eq!(string_of(&res, "stdout"), "early\n");
    std::fs::write(&go, b"").unwrap();
    let specs: serde_json::Map<String, Value> = (0..200)
        .map(|i| {
            let want = format!("{i:03}").repeat(20_000);
            (
                format!("live{i}"),
                json!({"argv": ["/bin/sh", "-c", format!("sleep 0.0{}; printf %s {want}", i % 10)],
                       "fds": [["stdout", mem_utf8()]]}),
            )
        })
        .collect();
    a.start(input(&json!({ "specs": specs })))
        .expect("start live");
    for i in 0..200 {
        let res = wait(&a, &format!("live{i}"));
        assert_eq!(
            string_of(&res, "stdout"),
            format!("{i:03}").repeat(20_000),
            "live{i}"
        );
    }
    // The line once written whole (the shell creates the file first).
    let t = Instant::now();
    let mut got = String::new();
    while !got.ends_with('\n') && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
        got = std::fs::read_to_string(&status).unwrap_or_default();
    }
    assert_eq!(
        got, "0\n",
        "the descendant's writes after the exit succeeded"
    );
}

// A tempfile that cannot be made names the directory it was to be made in.
#[test]
fn a_tempfile_capture_that_cannot_be_made_names_its_directory() {
    let a = Agent::new(chaperone::Config {
        tmpdir: "/no/such/dir".into(),
        ..Default::default()
    })
    .expect("agent");
    a.start(input(&json!({"specs": {
        "t": {"argv": ["/bin/true"], "fds": [["stdout", tmp_utf8()]]},
    }})))
    .expect("start");
    let res = wait(&a, "t");
    assert_eq!(res.state, State::Error);
    assert!(
        res.errors
            .iter()
            .any(|e| e.starts_with("failed to set up fd 1: No such file")
                && e.contains("made in /no/such/dir")),
        "{:?}",
        res.errors
    );
}

/// A head/tail capture's head and tail are decoded as UTF-8 apart: the last
/// byte of the head and the first of the tail were never next to each
/// other, so an "é" split between them is two replaced bytes, in the result
/// and in a read as UTF-8, not an "é" the process never wrote.
#[test]
fn a_character_is_not_made_across_the_dropped_middle() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"s": {"argv": ["/usr/bin/printf", "\\303\\251XX\\303\\251"],
            "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8",
                                            "head": 1, "tail": 1}}]]}}}),
    );
    let res = wait(&a, "s");
    let v = serde_json::to_value(&res).unwrap();
    assert_eq!(v["fds"]["stdout"]["text"], "\u{fffd}\u{fffd}", "{v}");
    let r = a
        .fd_data_as("s", "stdout", 0, None, chaperone::ReadEncoding::Utf8)
        .unwrap();
    assert_eq!(
        r.data,
        chaperone::Encoded::Utf8 {
            text: "\u{fffd}\u{fffd}".into(),
            replaced: true
        }
    );
}
