//! Specs that would stall or reach into the agent: a FIFO with no peer delays
//! only its own process (which can still be signalled, deleted or timed out),
//! and paths that mean the agent itself are refused with an error naming them.

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::State;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use util::*;

fn stdin_from(path: &Path) -> serde_json::Value {
    json!([["stdin", {"file": {"path": path, "flags": "Read"}}], ["stdout", mem_utf8()]])
}

// The issue's case: processes before and after one whose stdin is a FIFO
// with no writer run at once; it runs when a writer comes, with its input.
#[test]
fn a_fifo_with_no_peer_delays_only_its_own_process() {
    let dir = tempfile::tempdir().unwrap();
    let f = mkfifo(dir.path(), "in");
    let a = agent();
    let t = Instant::now();
    let ids = a
        .start(input(&json!({"specs": {
            "q": {"argv": ["/bin/echo", "q"], "fds": [["stdout", mem_utf8()]]},
            "p": {"argv": ["/bin/cat"], "fds": stdin_from(&f)},
            "r": {"argv": ["/bin/echo", "r"], "fds": [["stdout", mem_utf8()]]},
        }})))
        .expect("the start is answered while p waits for its FIFO");
    assert_eq!(ids.len(), 3);
    for id in ["q", "r"] {
        let res = wait(&a, id);
        assert_eq!(res.state, State::Terminated, "{id}");
    }
    let p = a.result("p").unwrap();
    assert_eq!(
        (p.state, p.pid),
        (State::Running, None),
        "p waits, unstarted"
    );
    // Its capture holds nothing yet; one it does not have is still no fd.
    // (Asserted once p has its writer: a waiting p would hold the agent's
    // drop after a failed assertion.)
    let early = a.fd_data("p", "stdout", 0, None);
    let absent = a.fd_data("p", "stderr", 0, None);
    // A follower waits for p's output: a short wait ends empty and open, a
    // long one is answered by the bytes once p starts.
    let h = a.handle();
    let short = h
        .fd_wait("p", "stdout", 0, Duration::from_millis(50))
        .wait();
    let follow = h.fd_wait("p", "stdout", 0, Duration::from_secs(60));
    // A writer: p opens, starts and reads what is written.
    std::fs::write(&f, b"through the fifo\n").unwrap();
    let followed = follow.wait();
    let res = wait(&a, "p");
    assert_eq!(string_of(&res, "stdout"), "through the fifo\n");
    assert!(t.elapsed() < Duration::from_secs(60));
    let d = early.expect("an empty range while p waited");
    assert_eq!((d.start, d.stop, d.length, d.data.len()), (0, 0, 0, 0));
    assert!(
        matches!(absent, Err(chaperone::FdDataError::NoFd(_))),
        "{absent:?}"
    );
    let short = short.expect("a wait on p's capture while p waited");
    assert_eq!((short.length, short.open), (Some(0), true));
    let followed = followed.expect("a wait answered once p started");
    assert_eq!(
        followed.length,
        Some("through the fifo\n".len() as u64),
        "the follower saw p's output"
    );
}

#[test]
fn a_process_waiting_on_its_files_can_be_signalled_deleted_or_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent();
    let (f1, f2, f3) = (
        mkfifo(dir.path(), "1"),
        mkfifo(dir.path(), "2"),
        mkfifo(dir.path(), "3"),
    );
    start(
        &a,
        &json!({"specs": {
            "sig": {"argv": ["/bin/cat"], "fds": stdin_from(&f1)},
            "del": {"argv": ["/bin/cat"], "fds": stdin_from(&f2)},
            "tmo": {"argv": ["/bin/cat"], "fds": stdin_from(&f3), "timeout": {"after": 0.3}},
        }}),
    );
    a.signal("sig", libc::SIGTERM).expect("signalled");
    let res = wait(&a, "sig");
    assert_eq!(res.state, State::Error);
    assert_eq!(
        res.errors,
        ["not started: signal SIGTERM while opening its files"]
    );
    a.delete("del").expect("deleted while opening");
    assert!(a.result("del").is_none());
    let res = wait(&a, "tmo");
    assert_eq!(
        res.errors,
        ["not started: timed out after 0.3 s opening its files"]
    );
    let t = res.timeout.expect("the timeout is in its result");
    assert!(t.fired && t.fired_at.is_some() && !t.killed, "{t:?}");
    // The abandoned opens end when writers come; nothing is left to start.
    for f in [&f1, &f2, &f3] {
        let _w = std::fs::OpenOptions::new().write(true).open(f).unwrap();
    }
    assert_eq!(a.proc_ids().len(), 2, "sig and tmo stay, settled");
}

// A terminating signal the spec ignores does not cancel a process opening
// its files, as it does not cancel a queued one: it would have lived through
// it. The signal is kept and sent once it runs.
#[test]
fn a_signal_its_spec_ignores_does_not_cancel_a_process_opening_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let f = mkfifo(dir.path(), "in");
    let a = agent();
    start(
        &a,
        &json!({"specs": {"p": {
            "argv": ["/bin/cat"],
            "fds": stdin_from(&f),
            "signals": {"ignore": ["SIGTERM"]},
        }}}),
    );
    a.signal("p", libc::SIGTERM).expect("kept for when it runs");
    let res = a.result("p").unwrap();
    assert_eq!(
        (res.state, res.errors.len()),
        (State::Running, 0),
        "still waiting for its FIFO: {:?}",
        res.errors
    );
    std::fs::write(&f, b"read after SIGTERM\n").unwrap();
    let res = wait(&a, "p");
    assert_eq!(res.state, State::Terminated);
    assert_eq!(res.status.as_ref().map(|s| s.exit_code), Some(Some(0)));
    assert_eq!(string_of(&res, "stdout"), "read after SIGTERM\n");
}

// Paths that in the agent mean the agent: its /proc entries and its fds
// through magic links. Refused by name; other processes are unaffected.
#[test]
fn paths_that_mean_the_agent_are_refused() {
    let a = agent();
    let read = |path: &str| json!([["3", {"file": {"path": path, "flags": "Read"}}]]);
    let me = format!("/proc/{}/environ", std::process::id());
    start(
        &a,
        &json!({"specs": {
            "mem": {"argv": ["/bin/true"], "fds": read("/proc/self/mem")},
            "env": {"argv": ["/bin/true"], "fds": read("/proc/thread-self/environ")},
            "pid": {"argv": ["/bin/true"], "fds": read(&me)},
            "devfd": {"argv": ["/bin/true"], "fds": read("/dev/fd/0")},
            "stdin": {"argv": ["/bin/true"], "fds": read("/dev/stdin")},
            "kept": {"argv": ["/bin/echo", "x"], "fds": [["stdout",
                {"capture": {"mode": "file", "path": "/proc/self/mem"}}]]},
            "fine": {"argv": ["/bin/true"], "fds": read("/proc/1/stat")},
        }}),
    );
    for (id, want) in [
        ("mem", "/proc/self/mem is the agent's own"),
        ("env", "/proc/thread-self/environ is the agent's own"),
        ("pid", "is the agent's own"),
        ("devfd", "/dev/fd/0 goes through a /proc magic link"),
        ("stdin", "/dev/stdin goes through a /proc magic link"),
        ("kept", "/proc/self/mem is the agent's own"),
    ] {
        let res = wait(&a, id);
        assert_eq!(res.state, State::Error, "{id}");
        assert!(res.pid.is_none(), "{id} never started");
        assert!(
            res.errors.len() == 1 && res.errors[0].contains(want),
            "{id}: {:?}",
            res.errors
        );
    }
    let res = wait(&a, "fine");
    assert_eq!((res.state, res.errors.len()), (State::Terminated, 0));
}

fn cli_stderr(spec: &[u8], args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.json");
    std::fs::write(&path, spec).unwrap();
    let out = std::process::Command::new(bin())
        .args(args)
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// Careless and hostile specs: each refused before anything starts, with an
// error that names what is wrong.
#[test]
fn careless_specs_are_refused_naming_what_is_wrong() {
    let cases: [(&str, &str); 10] = [
        (
            r#"[{"specs": {}}]"#,
            "a request is a JSON object, {\"specs\": {ID: SPEC, …}}, not an array",
        ),
        // Not JSON at all: serde's words, and where.
        ("not json", "expected ident at line 1 column 2"),
        (
            "\n  \"x\" ",
            "a request is a JSON object, {\"specs\": {ID: SPEC, …}}, not a string",
        ),
        (
            r#"{"specs": {"a": {"argv": ["/bin/true"], "fds": [["stdout", {"null": {}}, "x"]]}}}"#,
            r#"fds: an entry is [fd, spec]; the one for "stdout" has more than two elements"#,
        ),
        (
            r#"{"specs": {"a": {"argv": ["/bin/true"], "fds": [["stdout"]]}}}"#,
            "fds: an entry is [fd, spec]; this one has 1 element",
        ),
        (
            r#"{"specs": {"a": {"argv": ["/bin/true"], "env": {"vars": {"X": "1", "X": "2"}}}}}"#,
            r#"env.vars: "X" is given twice"#,
        ),
        (
            r#"{"specs": {"a": {"argv": ["/bin/true"], "rlimits": {"nofile": 5, "nofile": 6}}}}"#,
            r#"rlimits: "nofile" is given twice"#,
        ),
        (
            r#"{"specs": {"a": {"argv": ["/bin/true"], "fds": [["stdout",
                {"file": {"path": "/tmp/chaperone-never", "flags": "Write", "mode": 36864}}]]}}}"#,
            "proc a: fds.stdout.file.mode: 0o110000 is not a file mode (at most 0o7777)",
        ),
        (
            r#"{"specs": {"a": {"argv": ["/bin/true"]}}}"#,
            "--max-spec-size",
        ),
        (
            r#"{"specs": {"a": {"argv": ["/bin/true"]}}}"#,
            "cannot write --output",
        ),
    ];
    for (i, (spec, want)) in cases.iter().enumerate() {
        let args: &[&str] = match i {
            8 => &["--max-spec-size", "10", "--print"],
            9 => &["--output", "/nonexistent-dir/results.json"],
            _ => &["--print"],
        };
        let (code, err) = cli_stderr(spec.as_bytes(), args);
        // 2: the spec cannot be loaded; 65: it loads but cannot start.
        assert_eq!(code, if i == 7 { 65 } else { 2 }, "{want}: {err}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
    // A byte order mark before a spec is not part of it.
    let out = util::run_cli_raw(b"\xef\xbb\xbf{\"specs\": {\"a\": {\"argv\": [\"/bin/true\"]}}}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new("/tmp/chaperone-never").exists(), "nothing ran");
    // One value out of range is said once.
    let (code, res) = run_cli(&json!({"specs": {"a": {"argv": ["/bin/true"],
        "rlimits": {"nofile": -5}}}}));
    assert_eq!(code, 0);
    assert_eq!(
        res["a"]["errors"],
        json!(["proc a: rlimits.nofile: -5 is out of range (0 or more, or null)"])
    );
}

// Processes with files to open still keep to max_running, and a start
// request waits for their pids when the opens are quick.
#[test]
fn opened_processes_keep_to_max_running_and_start_with_pids() {
    let dir = tempfile::tempdir().unwrap();
    let a = chaperone::Agent::new(chaperone::Config {
        max_running: Some(1),
        ..chaperone::Config::default()
    })
    .unwrap();
    let mut specs = serde_json::Map::new();
    for i in 0..4 {
        specs.insert(
            format!("p{i}"),
            json!({"argv": ["/bin/sh", "-c", "date +%s.%N; sleep 0.2; date +%s.%N"],
                "fds": [["stdin", {"file": {"path": "/dev/null", "flags": "Read"}}],
                        ["stdout", {"capture": {"mode": "file",
                            "path": dir.path().join(format!("p{i}.out"))}}]]}),
        );
    }
    start(&a, &json!({ "specs": specs }));
    let mut spans = Vec::new();
    for i in 0..4 {
        wait(&a, &format!("p{i}"));
        let out = std::fs::read_to_string(dir.path().join(format!("p{i}.out"))).unwrap();
        let t: Vec<f64> = out.lines().map(|l| l.parse().unwrap()).collect();
        spans.push((t[0], t[1]));
    }
    spans.sort_by(|x, y| x.0.total_cmp(&y.0));
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "two ran at once under max_running 1: {spans:?}"
        );
    }
    // Quick opens: the start's answer comes with the pid.
    let b = agent();
    start(
        &b,
        &json!({"specs": {"k": {"argv": ["/bin/sleep", "5"],
            "fds": [["stdout", {"capture": {"mode": "file", "path": dir.path().join("k.out")}}]]}}}),
    );
    assert!(b.result("k").unwrap().pid.is_some(), "started with a pid");
    b.signal("k", libc::SIGKILL)
        .expect("a started process takes a signal");
    wait(&b, "k");
}

// An fd list past any fd table is refused as it is read (a million `close`
// entries once took 693 MB), and one just short of the cap is fine.
#[test]
fn an_absurd_fd_list_is_refused_by_its_length() {
    let n = chaperone::spec::MAX_FD_ENTRIES;
    let list = |n: usize| {
        let entries: Vec<String> = (0..n)
            .map(|i| format!(r#"["{}", "close"]"#, 3 + i))
            .collect();
        format!("[{}]", entries.join(","))
    };
    let spec = format!(
        r#"{{"specs": {{"a": {{"argv": ["/bin/true"], "fds": {}}}}}}}"#,
        list(n + 1)
    );
    let (code, err) = cli_stderr(spec.as_bytes(), &["--print"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("fds: more than 65536 entries"), "{err}");
    let spec = format!(
        r#"{{"specs": {{"a": {{"argv": ["/bin/true"], "fds": {}}}}}}}"#,
        list(n)
    );
    let (code, res) = run_cli(&serde_json::from_str(&spec).unwrap());
    assert_eq!(code, 0);
    assert_eq!(res["a"]["state"], "terminated", "{}", res["a"]["errors"]);
}

// A target fd just under the fd limit works: sources are moved only off
// target numbers, not above the highest target (which fails with EINVAL there).
#[test]
fn a_target_fd_just_under_the_fd_limit_works() {
    // The agent's limit: the soft one, raised to the hard one (at most 2^20).
    let given = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let soft = given
        .maximum
        .unwrap_or(u64::MAX)
        .min(1 << 20)
        .max(given.current.expect("a finite fd limit"));
    let top = (soft - 1).min(i32::MAX as u64) as i32;
    let script = format!("import os; os.write({top}, b'top')");
    let (code, res) = run_cli(&json!({"specs": {"a": {
        "argv": ["/usr/bin/python3", "-c", script],
        "fds": [["stdout", util::mem_utf8()], [top.to_string(), {"dup": {"fd": 1}}]]}}}));
    assert_eq!(code, 0);
    assert_eq!(res["a"]["errors"], json!([]), "fd {top}");
    assert_eq!(res["a"]["status"]["exit_code"], 0, "{}", res["a"]);
    assert_eq!(res["a"]["fds"]["stdout"]["text"], "top");
    // One at the limit cannot be, and the error says why.
    let (_, res) = run_cli(&json!({"specs": {"a": {"argv": ["/bin/true"],
        "fds": [[soft.to_string(), {"null": {}}]]}}}));
    let errors = res["a"]["errors"].to_string();
    assert!(
        errors.contains(&format!("fds must be below the fd limit, {soft} here")),
        "{errors}"
    );
}

// Opens that never end hold their opener threads: 32 such (the pool's size)
// held every thread, and each later process with a file to open, or a user
// to look up, waited behind them for good. A stuck thread now lets the pool
// grow by one.
#[test]
fn opens_that_never_end_do_not_hold_up_later_processes_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent();
    let fifos: Vec<_> = (0..40)
        .map(|i| mkfifo(dir.path(), &format!("f{i}")))
        .collect();
    // On the way out, pass or fail, writers end the stuck opens (before the
    // agent is dropped: it waits for its processes).
    struct Writers(Vec<std::path::PathBuf>);
    impl Drop for Writers {
        fn drop(&mut self) {
            use std::os::unix::fs::OpenOptionsExt as _;
            for f in &self.0 {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(f);
            }
        }
    }
    let more: Vec<_> = (0..80)
        .map(|i| mkfifo(dir.path(), &format!("m{i}")))
        .collect();
    let _writers = Writers(fifos.iter().chain(&more).cloned().collect());
    let mut specs = serde_json::Map::new();
    for (i, f) in fifos.iter().enumerate() {
        specs.insert(
            format!("stuck{i}"),
            json!({"argv": ["/bin/cat"], "fds": stdin_from(f), "timeout": {"after": 0.2}}),
        );
    }
    start(&a, &json!({ "specs": specs }));
    for i in 0..40 {
        let res = wait(&a, &format!("stuck{i}"));
        assert_eq!(res.state, State::Error, "stuck{i}");
    }
    // Every stuck open still holds a thread; later files open regardless.
    let file = dir.path().join("in.txt");
    std::fs::write(&file, "from a file\n").unwrap();
    let mut later = json!({"specs": {
        "file": {"argv": ["/bin/cat"], "fds": stdin_from(&file)},
    }});
    if rustix::process::geteuid().is_root() {
        // A user to look up takes the same threads.
        later["specs"]["user"] = json!({"argv": ["/bin/echo", "as nobody"], "user": "nobody",
            "fds": [["stdout", mem_utf8()]]});
    }
    start(&a, &later);
    // Waited for on another thread, so that this fails rather than hangs.
    let waited = |id: &str| {
        let call = a.handle().wait(id);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(call.wait());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{id} still waits for its opens after 20 s"))
            .expect("known")
    };
    assert_eq!(string_of(&waited("file"), "stdout"), "from a file\n");
    if rustix::process::geteuid().is_root() {
        assert_eq!(string_of(&waited("user"), "stdout"), "as nobody\n");
    }
    // In one burst, 80 more never-ending opens queued ahead of a file: the
    // threads started for the first that waited took the next stuck ones,
    // so the pool must keep growing while a job waits.
    let mut burst = serde_json::Map::new();
    for (i, f) in more.iter().enumerate() {
        burst.insert(
            format!("more{i}"),
            json!({"argv": ["/bin/cat"], "fds": stdin_from(f), "timeout": {"after": 30}}),
        );
    }
    burst.insert(
        "last".into(),
        json!({"argv": ["/bin/cat"], "fds": stdin_from(&file)}),
    );
    start(&a, &json!({ "specs": burst }));
    assert_eq!(string_of(&waited("last"), "stdout"), "from a file\n");
}
