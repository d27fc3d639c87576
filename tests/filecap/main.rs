//! Kept capture files (capture mode `"file"`): the whole stream lands in a named
//! file that outlives the process's deletion, written by the reactor from the
//! pipe, with or without the head/tail memory capture; ranged and live reads
//! stop at what is written; setup and write errors; backpressure bounds the
//! agent's memory.

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::{Dropped, FdExt, FdRes, State};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use util::*;

const MIB: u64 = 1 << 20;

/// A deterministic pattern: little-endian u64 words `w * K` (K odd), so that a
/// lost, repeated or reordered chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len.div_ceil(8) as u64)
        .flat_map(|w| w.wrapping_mul(K).to_le_bytes())
        .take(len)
        .collect()
}

/// argv of a python child writing [`pattern`]`(len)` to stdout in writes of
/// varying sizes (1 byte up to 1 MB), with an optional pause between writes.
fn pattern_writer(len: usize, pause: f64) -> Value {
    let code = format!(
        "import os, time
K = 0x9E3779B97F4A7C15
n = {len}
data = b''.join(((w * K) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, 'little') for w in range((n + 7) // 8))[:n]
sizes = [1, 4093, 65536, 1000000, 7]
i = k = 0
while i < n:
    chunk = data[i:i + sizes[k % len(sizes)]]
    k += 1
    while chunk:
        w = os.write(1, chunk)
        chunk = chunk[w:]
        i += w
    if {pause} > 0:
        time.sleep({pause})
"
    );
    json!([PYTHON, "-c", code])
}

fn kept(extra: Value) -> Value {
    let mut c = json!({"mode": "file", "encoding": null});
    for (k, v) in extra.as_object().expect("object") {
        c[k] = v.clone();
    }
    json!({"capture": c})
}

fn fd_path(res: &chaperone::result::ProcRes, fd: &str) -> PathBuf {
    match res
        .fds
        .get(fd)
        .and_then(|r| r.as_ref()?.ext()?.path.as_deref())
    {
        Some(path) => PathBuf::from(path),
        None => panic!("fd {fd}: no kept-file path: {:?}", res.fds.get(fd)),
    }
}

fn fd_length(res: &chaperone::result::ProcRes, fd: &str) -> u64 {
    match res.fds.get(fd).and_then(|r| r.as_ref()?.length()) {
        Some(length) => length,
        None => panic!("fd {fd}: {:?}", res.fds.get(fd)),
    }
}

#[test]
fn filecap_kept_file_survives_delete_and_holds_exactly_the_bytes_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.bin");
    let len = 12 * MIB as usize + 12_345;
    let a = agent();
    start(
        &a,
        &json!({"specs": {"p": {"argv": pattern_writer(len, 0.0),
            "fds": [["stdout", kept(json!({"path": path, "attached": false}))]]}}}),
    );
    let res = wait(&a, "p");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    assert_eq!(fd_path(&res, "stdout"), path);
    assert_eq!(fd_length(&res, "stdout"), len as u64);
    a.delete("p").expect("delete");
    assert_eq!(a.proc_ids(), Vec::<String>::new());
    drop(a);
    let got = std::fs::read(&path).expect("kept file is still there");
    assert_eq!(got.len(), len);
    assert!(
        got == pattern(len),
        "kept file differs from what was written"
    );
}

#[test]
fn filecap_attached_result_reads_the_whole_file_without_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.txt");
    let a = agent();
    start(
        &a,
        &json!({"specs": {"p": {"argv": ["/usr/bin/printf", "hello, file"],
            "fds": [["stdout", kept(json!({"path": path, "encoding": "utf-8"}))]]}}}),
    );
    let res = wait(&a, "p");
    assert_eq!(string_of(&res, "stdout"), "hello, file");
    let v = serde_json::to_value(&res).unwrap();
    assert_eq!(
        v["fds"]["stdout"],
        json!({"type": "text", "text": "hello, file", "encoding": "utf-8", "path": path})
    );
}

#[test]
fn filecap_with_memory_keeps_head_and_tail_in_the_result_and_everything_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("both.bin");
    let len = 3 * MIB as usize + 5;
    let a = agent();
    start(
        &a,
        &json!({"specs": {"p": {"argv": pattern_writer(len, 0.0),
            "fds": [["stdout", kept(json!({"path": path, "memory": true, "head": 1000, "tail": 2000}))]]}}}),
    );
    let res = wait(&a, "p");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    let want = pattern(len);
    match res.fds.get("stdout") {
        Some(Some(FdRes::Data {
            bytes,
            length,
            ext: FdExt {
                dropped, path: p, ..
            },
        })) => {
            assert_eq!(*length, len as u64);
            assert_eq!(
                *dropped,
                Some(Dropped {
                    start: 1000,
                    stop: len as u64 - 2000
                })
            );
            let mut held = want[..1000].to_vec();
            held.extend_from_slice(&want[len - 2000..]);
            assert!(bytes[..] == held[..], "head/tail differ");
            assert_eq!(p.as_deref(), Some(path.to_str().unwrap()));
        }
        other => panic!("stdout: {other:?}"),
    }
    // fd_data serves the whole stream (from the file), nothing missing.
    let mid = a.fd_data("p", "stdout", MIB, Some(MIB + 10)).unwrap();
    assert_eq!(mid.missing, None);
    assert_eq!(&mid.data[..], &want[MIB as usize..MIB as usize + 10]);
    let got = std::fs::read(&path).unwrap();
    assert!(got == want, "kept file differs from what was written");
}

#[test]
fn filecap_fd_data_clamps_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent();
    start(
        &a,
        &json!({"specs": {"d": {"argv": ["/usr/bin/printf", "0123456789"],
            "fds": [["stdout", kept(json!({"dir": dir.path(), "encoding": "utf-8"}))]]}}}),
    );
    wait(&a, "d");
    let get = |start, stop| a.fd_data("d", "stdout", start, stop).unwrap();
    let all = get(0, None);
    assert_eq!((all.start, all.stop, all.length), (0, 10, 10));
    assert_eq!(&all.data[..], b"0123456789");
    assert_eq!(all.encoding, chaperone::spec::Encoding::Utf8);
    let head = get(0, Some(3));
    assert_eq!((head.start, head.stop, &head.data[..]), (0, 3, &b"012"[..]));
    let mid = get(3, Some(7));
    assert_eq!((mid.start, mid.stop, &mid.data[..]), (3, 7, &b"3456"[..]));
    let end = get(8, Some(1000));
    assert_eq!((end.start, end.stop, &end.data[..]), (8, 10, &b"89"[..]));
    let past = get(20, Some(30));
    assert!(past.data.is_empty());
    assert_eq!((past.start, past.stop, past.length), (10, 10, 10));
    assert_eq!(past.missing, None);
    let backwards = get(7, Some(3));
    assert!(backwards.data.is_empty());
    assert_eq!(backwards.length, 10);
    let huge = get(u64::MAX, Some(u64::MAX));
    assert!(huge.data.is_empty());
    assert_eq!(&get(0, Some(u64::MAX)).data[..], b"0123456789");
}

#[test]
fn filecap_dir_gives_each_proc_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent();
    let cap = kept(json!({"dir": dir.path(), "encoding": "utf-8"}));
    start(
        &a,
        &json!({"specs": {
            "a/b": {"argv": ["/usr/bin/printf", "one"], "fds": [["stdout", cap.clone()]]},
            "a_b": {"argv": ["/usr/bin/printf", "two"], "fds": [["stdout", cap.clone()], ["stderr", cap]]}}}),
    );
    let one = wait(&a, "a/b");
    let two = wait(&a, "a_b");
    let (p1, p2, p3) = (
        fd_path(&one, "stdout"),
        fd_path(&two, "stdout"),
        fd_path(&two, "stderr"),
    );
    for p in [&p1, &p2, &p3] {
        assert_eq!(p.parent(), Some(dir.path()), "{}", p.display());
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("a_b."), "{name}");
    }
    assert!(p1 != p2 && p2 != p3 && p1 != p3, "{p1:?} {p2:?} {p3:?}");
    assert!(p3.to_str().unwrap().contains("stderr"), "{}", p3.display());
    assert_eq!(std::fs::read(&p1).unwrap(), b"one");
    assert_eq!(std::fs::read(&p2).unwrap(), b"two");
    assert_eq!(std::fs::read(&p3).unwrap(), b"");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}

#[test]
fn filecap_relative_path_is_opened_in_the_spec_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent();
    start(
        &a,
        &json!({"specs": {"r": {"argv": ["/usr/bin/printf", "rel"], "cwd": dir.path(),
            "fds": [["stdout", kept(json!({"path": "sub.log"}))]]}}}),
    );
    let res = wait(&a, "r");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    assert_eq!(fd_path(&res, "stdout"), dir.path().join("sub.log"));
    assert_eq!(std::fs::read(dir.path().join("sub.log")).unwrap(), b"rel");
}

#[test]
fn filecap_spec_errors_name_the_field() {
    let a = agent();
    let try_start = |capture: Value| {
        let spec = json!({"specs": {"v": {"argv": ["/bin/true"], "fds": [["stdout", {"capture": capture}]]}}});
        match chaperone::spec::parse_input(&serde_json::to_vec(&spec).unwrap()) {
            Err(e) => e.to_string(),
            Ok(input) => a.start(input).expect_err("rejected").to_string(),
        }
    };
    let both = try_start(json!({"mode": "file", "path": "/tmp/x", "dir": "/tmp"}));
    assert!(
        both.contains("capture path: give either path or dir, not both"),
        "{both}"
    );
    let neither = try_start(json!({"mode": "file"}));
    assert!(
        neither.contains("capture path: mode \"file\" needs a path or a dir"),
        "{neither}"
    );
    let stray = try_start(json!({"mode": "memory", "dir": "/tmp"}));
    assert!(
        stray.contains("capture dir: only mode \"file\" takes it"),
        "{stray}"
    );
    let mode = try_start(json!({"mode": "disk", "path": "/tmp/x"}));
    assert!(mode.contains("unknown variant `disk`"), "{mode}");
    assert!(a.proc_ids().is_empty(), "nothing started");
}

#[test]
fn filecap_path_in_a_missing_directory_fails_fd_setup_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/out.log");
    let a = agent();
    start(
        &a,
        &json!({"specs": {"m": {"argv": ["/bin/true"],
            "fds": [["stdout", kept(json!({"path": path}))]]}}}),
    );
    let res = wait(&a, "m");
    assert_eq!(res.state, State::Error);
    assert_eq!(res.pid, None, "no child started");
    assert_eq!(
        res.errors,
        vec!["failed to set up fd 1: No such file or directory (os error 2)".to_string()]
    );
}

// A proc that cannot start (another fd fails) leaves no kept files behind that
// it created; an existing file named by `path` stays (truncated, as opened).
#[test]
fn filecap_proc_that_cannot_start_removes_the_kept_files_it_created() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let new_path = dir.path().join("new.out");
    let old_path = dir.path().join("old.out");
    std::fs::write(&old_path, b"previous contents").unwrap();
    let missing = dir.path().join("no/such/dir/in");
    let a = agent();
    start(
        &a,
        &json!({"specs": {"m": {"argv": ["/bin/true"],
            "fds": [["stdout", kept(json!({"dir": logs}))],
                    ["stderr", kept(json!({"path": new_path}))],
                    ["3", kept(json!({"path": old_path}))],
                    ["stdin", {"file": {"path": missing, "flags": "Read"}}]]}}}),
    );
    let res = wait(&a, "m");
    assert_eq!(res.state, State::Error, "{:?}", res.errors);
    assert_eq!(res.pid, None, "no child started");
    let left: Vec<_> = std::fs::read_dir(&logs).unwrap().collect();
    assert!(left.is_empty(), "files left in dir: {left:?}");
    assert!(!new_path.exists(), "a new kept file is removed");
    assert!(old_path.exists(), "an existing file is not removed");
}

#[test]
fn filecap_write_error_is_reported_with_the_path_and_the_child_still_finishes() {
    // /dev/full: every write fails with ENOSPC. The child writes more than a
    // pipe holds, so it finishes only if the agent keeps draining the pipe.
    let a = agent();
    start(
        &a,
        &json!({"specs": {"f": {"argv": ["/usr/bin/head", "-c", (8 * MIB).to_string(), "/dev/zero"],
            "fds": [["stdout", kept(json!({"path": "/dev/full", "attached": false}))]]}}}),
    );
    let res = wait(&a, "f");
    assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0), "{res:?}");
    assert_eq!(res.state, State::Error);
    assert_eq!(res.errors.len(), 1, "{:?}", res.errors);
    let e = &res.errors[0];
    assert!(e.starts_with("capture file /dev/full: write of "), "{e}");
    assert!(e.contains("No space left on device"), "{e}");
    assert_eq!(fd_length(&res, "stdout"), 0, "nothing reached the file");
}

#[test]
fn filecap_live_reads_return_growing_prefixes_of_the_final_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.bin");
    let len = 2 * MIB as usize;
    let a = agent();
    start(
        &a,
        &json!({"specs": {"l": {"argv": pattern_writer(len, 0.002),
            "fds": [["stdout", kept(json!({"path": path, "attached": false}))]]}}}),
    );
    let mut got = Vec::new();
    let mut reads_while_running = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = a.result("l").unwrap().state == State::Running;
        let d = a.fd_data("l", "stdout", got.len() as u64, None).unwrap();
        assert_eq!(d.start, got.len() as u64);
        assert!(d.length >= got.len() as u64, "length shrank");
        assert_eq!(d.stop, d.length, "read to the current end");
        got.extend_from_slice(&d.data);
        if !running {
            break;
        }
        reads_while_running += 1;
        assert!(Instant::now() < deadline, "writer did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    wait(&a, "l");
    let rest = a.fd_data("l", "stdout", got.len() as u64, None).unwrap();
    got.extend_from_slice(&rest.data);
    assert!(reads_while_running > 0);
    assert_eq!(got.len(), len);
    assert!(got == pattern(len), "concatenated live reads differ");
}

#[test]
fn filecap_cli_print_shows_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.txt");
    let (code, out) = run_cli(
        &json!({"specs": {"c": {"argv": ["/usr/bin/printf", "via cli"],
        "fds": [["stdout", kept(json!({"path": path, "encoding": "utf-8", "attached": false}))]]}}}),
    );
    assert_eq!(code, 0);
    assert_exit0(&out["c"]);
    assert_eq!(
        out["c"]["fds"]["stdout"],
        json!({"type": "detached", "length": 7, "encoding": "utf-8", "path": path})
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"via cli");
}

/// Peak RSS of an agent (the CLI) whose child writes 256 MiB into a kept file
/// that is a FIFO read slowly by this test: the file cannot keep up, so only
/// backpressure (the child blocked on its full pipe) keeps the agent small.
#[test]
fn filecap_backpressure_bounds_agent_memory_when_the_file_is_slow() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("slow.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    let total = 256 * MIB;
    let spec = dir.path().join("spec.json");
    let inner = json!({"specs": {"w": {"argv": ["/usr/bin/head", "-c", total.to_string(), "/dev/zero"],
        "fds": [["stdout", kept(json!({"path": fifo, "attached": false}))]]}}});
    std::fs::write(&spec, serde_json::to_vec(&inner).unwrap()).unwrap();
    // The reader: opens the FIFO read-write (never blocks, never sees EOF) and
    // reads 64 KiB per millisecond until it has everything.
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo)
                .expect("open fifo");
            let mut buf = vec![0u8; 64 << 10];
            let mut n = 0u64;
            let mut nonzero = false;
            while n < total {
                let k = f.read(&mut buf).expect("read fifo");
                nonzero |= buf[..k].iter().any(|&b| b != 0);
                n += k as u64;
                std::thread::sleep(Duration::from_millis(1));
            }
            (n, nonzero)
        })
    };
    let a = agent();
    start(
        &a,
        &json!({"specs": {"cli": {"argv": [bin(), "--print", spec],
            "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]}}}),
    );
    let res = wait(&a, "cli");
    assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0), "{res:?}");
    let printed: Value = serde_json::from_str(&string_of(&res, "stdout")).unwrap();
    assert_eq!(printed["w"]["state"], "terminated", "{printed}");
    assert_eq!(printed["w"]["fds"]["stdout"]["length"], total);
    let (n, nonzero) = reader.join().unwrap();
    assert_eq!(n, total);
    assert!(!nonzero);
    let maxrss = res.rusage.unwrap().maxrss;
    assert!(maxrss < 96 * MIB as i64, "agent maxrss {maxrss} bytes");
}
