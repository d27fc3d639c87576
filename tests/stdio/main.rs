//! `chaperone --stdio` (the agent protocol as JSON lines) and Procstar's
//! shutdown signals in the one-shot modes, driven as a user would: the binary.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct StdioAgent {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

fn agent(args: &[&str]) -> StdioAgent {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .arg("--stdio")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn chaperone --stdio");
    let stdin = child.stdin.take();
    let stdout: ChildStdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    StdioAgent {
        child,
        stdin,
        lines,
    }
}

impl StdioAgent {
    fn send_raw(&mut self, line: &[u8]) {
        let w = self.stdin.as_mut().expect("stdin open");
        w.write_all(line).expect("write");
        w.write_all(b"\n").expect("write");
        w.flush().expect("flush");
    }

    fn send(&mut self, v: &Value) {
        self.send_raw(&serde_json::to_vec(v).expect("json"));
    }

    fn next(&self) -> Value {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from the agent within 20 s");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
    }

    /// The next message of `ty`, skipping others.
    fn next_of(&self, ty: &str) -> Value {
        loop {
            let m = self.next();
            if m["type"] == ty {
                return m;
            }
        }
    }

    /// The first result of `id` that is not running.
    fn final_result(&self, id: &str) -> Value {
        loop {
            let m = self.next_of("ProcResult");
            if m["proc_id"] == id && m["res"]["state"] != "running" {
                return m["res"].clone();
            }
        }
    }
}

#[test]
fn stdio_runs_a_process_serves_its_output_and_ends_at_eof() {
    let mut a = agent(&[]);
    a.send(&json!({"type": "ProcStartRequest", "specs": {
        "t": {"argv": ["/bin/sh", "-c", "printf 'hi\\377'"],
              "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]},
        "b": {"argv": ["/bin/sh", "-c", "printf 'hi\\377'"],
              "fds": [["stdout", {"capture": {"mode": "memory"}}]]}}}));
    let mut ended = std::collections::BTreeMap::new();
    while ended.len() < 2 {
        let m = a.next_of("ProcResult");
        if m["res"]["state"] != "running" {
            ended.insert(m["proc_id"].as_str().unwrap_or_default().to_string(), m);
        }
    }
    assert_eq!(ended["b"]["res"]["status"]["exit_code"], 0);
    assert_eq!(ended["t"]["res"]["status"]["exit_code"], 0);
    // Text captures come back as a string, raw ones as base64.
    a.send(&json!({"type": "ProcFdDataRequest", "proc_id": "t", "fd": "stdout"}));
    let d = a.next_of("ProcFdData");
    assert_eq!(d["data"], "hi\u{fffd}");
    assert_eq!(
        (d["start"].clone(), d["stop"].clone()),
        (json!(0), json!(3))
    );
    assert_eq!(d["encoding"], "utf-8");
    a.send(&json!({"type": "ProcFdDataRequest", "proc_id": "b", "fd": "stdout", "start": 1, "stop": 99}));
    let d = a.next_of("ProcFdData");
    assert_eq!(d["data"], "af8=", "base64 of b\"i\\xff\"");
    assert_eq!(d["encoding"], Value::Null);
    assert_eq!(d["stop"], 3, "clamped to the length");

    a.send(&json!({"type": "ProcidListRequest"}));
    let mut ids = a.next_of("ProcidList")["proc_ids"].clone();
    ids.as_array_mut()
        .expect("list")
        .sort_by_key(|v| v.to_string());
    assert_eq!(ids, json!(["b", "t"]));

    a.send(&json!({"type": "ProcDeleteRequest", "proc_id": "t"}));
    assert_eq!(a.next_of("ProcDelete")["proc_id"], "t");
    a.send(&json!({"type": "ProcResultRequest", "proc_id": "t"}));
    assert_eq!(a.next_of("ProcUnknown")["proc_id"], "t");

    // End of input: shut down (terminate), done last, exit 0.
    a.stdin = None;
    let mut last = a.next();
    while last["type"] != "ShutDown" || last["shutdown_state"] != "done" {
        last = a.next();
    }
    assert_eq!(a.child.wait().expect("wait").code(), Some(0));
}

// The agent's stdin and stdout are its protocol: a child that does not name
// fds 0 and 1 gets /dev/null there, so it can neither read the requests nor
// write into the replies. (It read them, and wrote `STOLEN: {...}` lines.)
#[test]
fn children_do_not_inherit_the_protocol_stdin_and_stdout() {
    let mut a = agent(&[]);
    a.send(&json!({"type": "ProcStartRequest", "specs": {
        "thief": {"argv": ["/bin/sh", "-c",
                           "sed 's/^/STOLEN: /'; echo loose; readlink /proc/self/fd/0 >&2"]},
        "heir": {"argv": ["/bin/sh", "-c", "sed 's/^/STOLEN: /'"],
                 "fds": [["stdin", "inherit"], ["stdout", "inherit"]]},
        "dupper": {"argv": ["/bin/sh", "-c", "echo STOLEN >&2"],
                   "fds": [["2", {"dup": {"fd": 1}}], ["1", {"capture": {"mode": "memory"}}]]},
        "named": {"argv": ["/bin/sh", "-c", "echo kept"],
                  "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]}}}));
    for _ in 0..20 {
        a.send(&json!({"type": "ProcResultRequest", "proc_id": "named"}));
    }
    let mut answered = 0;
    let mut thieves_done = 0;
    let mut kept = None;
    while answered < 20 || thieves_done < 3 || kept.is_none() {
        // `next` fails on a line that is not JSON, such as the child's.
        let m = a.next();
        if m["type"] != "ProcResult" {
            continue;
        }
        let ended = m["res"]["state"] == "terminated";
        if ["thief", "heir", "dupper"].contains(&m["proc_id"].as_str().unwrap_or_default()) {
            thieves_done += usize::from(ended);
        } else {
            answered += 1;
            if ended {
                kept = Some(m["res"]["fds"]["stdout"]["text"].clone());
            }
        }
    }
    assert_eq!(kept.unwrap(), "kept\n");
    a.stdin = None;
    while a.next()["shutdown_state"] != "done" {}
    assert_eq!(a.child.wait().expect("wait").code(), Some(0));
}

// A range inside a head/tail capture's dropped middle is refused naming the
// whole middle, so the next byte held is where the tail starts (it named the
// end of the range asked for, itself dropped).
#[test]
fn a_range_in_the_dropped_middle_names_where_the_held_bytes_resume() {
    let mut a = agent(&["--capture-head", "1K", "--capture-tail", "1K"]);
    a.send(&json!({"type": "ProcStartRequest", "specs": {
        "big": {"argv": ["/bin/sh", "-c", "head -c 100000 /dev/zero"],
                "fds": [["stdout", {"capture": {"mode": "memory"}}]]}}}));
    let _ = a.final_result("big");
    a.send(
        &json!({"type": "ProcFdDataRequest", "proc_id": "big", "fd": "stdout",
                   "start": 2000, "stop": 2010}),
    );
    let e = a.next_of("RequestError");
    let err = e["err"].as_str().unwrap_or_default();
    assert!(
        err.contains("bytes 1024..98976 of 100000 were dropped")
            && err.ends_with("the next byte held is 98976"),
        "{err}"
    );
    a.send(
        &json!({"type": "ProcFdDataRequest", "proc_id": "big", "fd": "stdout",
                   "start": 98976, "stop": 98986}),
    );
    let d = a.next_of("ProcFdData");
    assert_eq!(
        (d["start"].clone(), d["stop"].clone()),
        (json!(98976), json!(98986))
    );
}

#[test]
fn stdio_answers_garbage_with_errors_and_keeps_serving() {
    let mut a = agent(&[]);
    a.send_raw(b"{not json");
    let e = a.next_of("RequestError");
    assert!(
        e["err"]
            .as_str()
            .unwrap_or_default()
            .starts_with("not a JSON object"),
        "{e}"
    );
    assert_eq!(e["msg"], json!({"type": null}));
    a.send_raw(b"[1,2,3]");
    assert_eq!(
        a.next_of("RequestError")["err"],
        "message is not a map: an array"
    );
    a.send(&json!({"type": "Bogus", "x": 1}));
    let e = a.next_of("RequestError");
    assert!(
        e["err"].as_str().unwrap_or_default().contains("Bogus"),
        "{e}"
    );
    assert_eq!(
        e["msg"],
        json!({"type": "Bogus", "x": 1}),
        "the request is echoed"
    );
    // A key given twice (a proc id here) is refused, not quietly taken as
    // the last of them (only "second" ran).
    a.send_raw(
        br#"{"type":"ProcStartRequest","specs":{"d":{"argv":["/bin/echo","first"]},"d":{"argv":["/bin/echo","second"]}}}"#,
    );
    let e = a.next_of("RequestError");
    assert!(
        e["err"]
            .as_str()
            .unwrap_or_default()
            .contains("the key \"d\" is given twice"),
        "{e}"
    );
    a.send(&json!({"type": "ProcResultRequest", "proc_id": "d"}));
    assert_eq!(a.next_of("ProcUnknown")["proc_id"], "d", "nothing started");
    a.send(&json!({"type": "ProcSignalRequest", "proc_id": "nope", "signum": 15}));
    assert_eq!(a.next_of("ProcUnknown")["proc_id"], "nope");
    a.send(&json!({"type": "ProcStartRequest", "specs": {"x": {"argv": []}}}));
    let e = a.next_of("RequestError");
    assert_eq!(e["msg"]["type"], "ProcStartRequest");
    // A running process: delete refused, signal taken, then "no process".
    a.send(&json!({"type": "ProcStartRequest", "specs": {"s": {"argv": ["/bin/sleep", "100"]}}}));
    assert_eq!(a.next_of("ProcResult")["res"]["state"], "running");
    a.send(&json!({"type": "ProcDeleteRequest", "proc_id": "s"}));
    assert_eq!(a.next_of("RequestError")["err"], "process running: s");
    a.send(&json!({"type": "ProcSignalRequest", "proc_id": "s", "signum": 9}));
    assert_eq!(a.final_result("s")["status"]["signal"], "SIGKILL");
    a.send(&json!({"type": "ProcSignalRequest", "proc_id": "s", "signum": 9}));
    assert_eq!(a.next_of("RequestError")["err"], "no process");
    a.send(&json!({"type": "ProcSignalRequest", "proc_id": "s", "signum": 1000}));
    assert_eq!(
        a.next_of("RequestError")["err"],
        "invalid signal number: 1000"
    );
    a.stdin = None;
    assert_eq!(a.child.wait().expect("wait").code(), Some(0));
}

/// Procstar's contract: a result on start and another on the end, even for a
/// process that ended before its start was told (Procstar's server takes the
/// first as the start's answer and then waits for a final one).
#[test]
fn every_quick_process_sends_a_start_result_and_an_end_result() {
    let mut a = agent(&[]);
    let n = 200;
    let specs: serde_json::Map<String, Value> = (0..n)
        .map(|i| (format!("q{i}"), json!({"argv": ["/bin/true"]})))
        .collect();
    a.send(&json!({"type": "ProcStartRequest", "specs": specs}));
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let finals = |s: &std::collections::BTreeMap<String, Vec<String>>| {
        s.values()
            .filter(|v| v.len() >= 2 && v[v.len() - 1] != "running")
            .count()
    };
    while finals(&seen) < n {
        let m = a.next_of("ProcResult");
        let id = m["proc_id"].as_str().expect("id").to_string();
        let state = m["res"]["state"].as_str().expect("state").to_string();
        seen.entry(id).or_default().push(state);
    }
    for (id, states) in &seen {
        assert_eq!(states.len(), 2, "{id}: {states:?}");
        assert_eq!(states[1], "terminated", "{id}: {states:?}");
    }
    a.stdin = None;
    assert_eq!(a.child.wait().expect("wait").code(), Some(0));
}

#[test]
fn stdio_eof_terminates_running_processes() {
    let mut a = agent(&[]);
    a.send(&json!({"type": "ProcStartRequest", "specs": {"s": {"argv": ["/bin/sleep", "100"]}}}));
    assert_eq!(a.next_of("ProcResult")["res"]["state"], "running");
    a.stdin = None;
    assert_eq!(a.next_of("ShutDown")["shutdown_state"], "idling");
    assert_eq!(a.final_result("s")["status"]["signal"], "SIGTERM");
    assert_eq!(a.next_of("ShutDown")["shutdown_state"], "done");
    assert_eq!(a.child.wait().expect("wait").code(), Some(0));
}

fn one_shot_with_signal(sig: i32, want: &str) {
    let spec = json!({"specs": {"s": {"argv": ["/bin/sleep", "100"],
                                      "fds": [["stdout", {"null": {}}]]}}});
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .args(["--print", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&serde_json::to_vec(&spec).expect("json"))
        .expect("write");
    drop(stdin);
    // Until the process runs (its sleep is a child of the agent).
    let pid = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Children are forked by the agent's spawner thread: look at every task.
    let has_child = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("children"))
                    .is_ok_and(|c| !c.trim().is_empty())
            })
    };
    while !has_child() {
        assert!(std::time::Instant::now() < deadline, "child never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    let res: Value = serde_json::from_slice(&out.stdout).expect("results JSON");
    assert_eq!(res["s"]["status"]["signal"], want, "{res}");
}

#[test]
fn one_shot_sigterm_and_sigint_terminate_and_still_print() {
    one_shot_with_signal(libc::SIGTERM, "SIGTERM");
    one_shot_with_signal(libc::SIGINT, "SIGTERM");
}

/// SIGHUP (the terminal that ran the agent closed) terminates as SIGTERM
/// does. (Before, it killed the agent and left its children running
/// unwatched, as Procstar 0.7.5 does.)
#[test]
fn one_shot_sighup_terminates_and_still_prints() {
    one_shot_with_signal(libc::SIGHUP, "SIGTERM");
}

#[test]
fn one_shot_sigquit_kills_and_still_prints() {
    one_shot_with_signal(libc::SIGQUIT, "SIGKILL");
}

// A start read just before the end of input is started, then terminated:
// it was sometimes refused "not started: the agent is shutting down", having
// raced the shutdown the end began.
#[test]
fn a_start_just_before_the_end_of_input_is_started() {
    for _ in 0..10 {
        let mut a = agent(&[]);
        a.send(&json!({"type": "ProcStartRequest", "specs": {"e": {"argv": ["/bin/true"]}}}));
        a.stdin = None;
        let mut results = Vec::new();
        loop {
            let m = a.next();
            if m["type"] == "ProcResult" {
                results.push(m["res"].clone());
            }
            if m["shutdown_state"] == "done" {
                break;
            }
        }
        assert!(!results.is_empty());
        for r in &results {
            assert!(r["pid"].as_i64().is_some(), "never started: {r}");
        }
        assert_eq!(a.child.wait().expect("wait").code(), Some(0));
    }
}

#[test]
fn stdio_with_print_is_refused_as_both_write_stdout() {
    let out = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .args(["--stdio", "--print"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(65));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--stdio and --print"), "{err}");
}

#[test]
fn no_mode_exits_65() {
    let out = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .arg("/dev/null")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mode given"));
}

/// Bytes no piece boundary lines up with: text with 2-, 3- and 4-byte
/// characters, and now and then a byte that is not UTF-8.
fn mixed_bytes(len: usize) -> Vec<u8> {
    let mut seed = 0x9e37_79b9_u32;
    let mut out = Vec::with_capacity(len + 4);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        match seed % 7 {
            0 => out.extend_from_slice("é".as_bytes()),
            1 => out.extend_from_slice("€".as_bytes()),
            2 => out.extend_from_slice("😀".as_bytes()),
            3 => out.push(0xff),
            4 => out.extend_from_slice(b"\"\\\n"),
            _ => out.push(b'a' + (seed >> 8) as u8 % 26),
        }
    }
    out.truncate(len);
    out
}

/// The last line from the agent that is a `ProcFdData`, read raw (it may be
/// hundreds of megabytes).
fn fd_data_line(a: &StdioAgent) -> Value {
    loop {
        let l = a
            .lines
            .recv_timeout(Duration::from_secs(120))
            .expect("a line from the agent within 120 s");
        let m: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e})"));
        if m["type"] == "ProcFdData" || m["type"] == "RequestError" {
            return m;
        }
    }
}

// A range of a file-held capture longer than a piece is read and sent a
// piece at a time: the bytes must come out exactly as one whole encoding
// would give them, wherever the pieces cut a character or a base64 group.
#[test]
fn a_large_range_of_a_file_capture_comes_whole_and_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = mixed_bytes(13 * 1024 * 1024 + 7);
    let src = dir.path().join("src");
    std::fs::write(&src, &bytes).expect("write");
    let mut a = agent(&[]);
    let cat = |enc: Value| {
        json!({"argv": ["/bin/cat", src.to_str().unwrap()],
        "fds": [["stdout", {"capture": {"mode": "tempfile", "encoding": enc}}]]})
    };
    a.send(&json!({"type": "ProcStartRequest", "specs": {"t": cat(json!("utf-8")), "b": cat(Value::Null)}}));
    // Both ended, in whichever order they end.
    let mut ended = std::collections::BTreeSet::new();
    while ended.len() < 2 {
        let m = a.next_of("ProcResult");
        if m["res"]["state"] != "running" {
            ended.insert(m["proc_id"].as_str().unwrap_or_default().to_string());
        }
    }
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    for (start, stop) in [
        (0, None),
        (4_194_303, Some(12_000_001)),
        (1, Some(u64::MAX)),
    ] {
        let end = stop.unwrap_or(u64::MAX).min(bytes.len() as u64) as usize;
        let want = &bytes[start as usize..end];
        a.send(&json!({"type": "ProcFdDataRequest", "proc_id": "t", "fd": "stdout", "start": start, "stop": stop}));
        let d = fd_data_line(&a);
        assert_eq!(
            (d["start"].as_u64(), d["stop"].as_u64()),
            (Some(start), Some(end as u64))
        );
        assert_eq!(d["encoding"], "utf-8");
        assert!(
            d["data"].as_str() == Some(&*String::from_utf8_lossy(want)),
            "text of {start}..{end} differs"
        );
        a.send(&json!({"type": "ProcFdDataRequest", "proc_id": "b", "fd": "stdout", "start": start, "stop": stop}));
        let d = fd_data_line(&a);
        assert_eq!(
            (d["start"].as_u64(), d["stop"].as_u64()),
            (Some(start), Some(end as u64))
        );
        let got = b64
            .decode(d["data"].as_str().expect("base64"))
            .expect("valid base64");
        assert!(got == want, "bytes of {start}..{end} differ");
    }
    a.stdin = None;
    assert_eq!(a.child.wait().expect("wait").code(), Some(0));
}

// Fetching a 300 MiB capture whole (as base64, 400 MB of JSON) must not cost
// the agent that much memory: it read the range whole and built the line
// whole, a peak of over 700 MB.
#[test]
fn fetching_a_large_capture_does_not_hold_it_in_memory() {
    let mut a = agent(&[]);
    a.send(&json!({"type": "ProcStartRequest", "specs": {"big": {
        "argv": ["/bin/sh", "-c", "head -c 314572800 /dev/zero"],
        "fds": [["stdout", {"capture": {"mode": "tempfile", "attached": false}}]]}}}));
    // Detached, as Apsis runs jobs: the result does not carry the bytes.
    let res = a.final_result("big");
    assert_eq!(
        res["fds"]["stdout"]["length"], 314_572_800_u64,
        "{}",
        res["fds"]
    );
    a.send(&json!({"type": "ProcFdDataRequest", "proc_id": "big", "fd": "stdout", "start": 0}));
    let d = fd_data_line(&a);
    assert_eq!(d["stop"], 314_572_800_u64);
    let data = d["data"].as_str().expect("base64");
    assert_eq!(data.len(), 314_572_800 / 3 * 4);
    assert!(data.bytes().all(|c| c == b'A'), "zeros are all 'A'");
    let status = std::fs::read_to_string(format!("/proc/{}/status", a.child.id())).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kib < 150 * 1024,
        "the agent's peak resident set was {} MiB for a 300 MiB capture",
        peak_kib / 1024
    );
    a.stdin = None;
    assert_eq!(a.child.wait().expect("wait").code(), Some(0));
}
