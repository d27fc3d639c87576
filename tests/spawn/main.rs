//! Spawning through the [`chaperone::Agent`] API: the child's fd table, signal
//! state, process lifecycle (signal, delete), rusage and spawn throughput.
//! Procstar contract acceptance cases 17–20, 23, 24, 28, 29, 33 and 34 (the
//! behaviour docs/spec.md describes).

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::{CompressionState, State};
use chaperone::{Event, ProcError};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};
use util::*;

//------------------------------------------------------------------------------
// The child's fd table (cases 17, 18)
//------------------------------------------------------------------------------

// Case 17: whatever fd number the spec targets, it does not clobber the capture
// pipes or files the agent sets up for the same child.
#[test]
fn spawn_keeps_stdout_capture_when_spec_targets_fd_n() {
    let dir = tempfile::tempdir().unwrap();
    let ns: Vec<i32> = (3..=40).chain([64, 100, 200]).collect();
    let specs: serde_json::Map<String, Value> = ns
        .iter()
        .map(|n| {
            let path = dir.path().join(format!("fd{n}"));
            (
                format!("n{n}"),
                json!({"argv": ["/bin/bash", "-c", format!("echo stdout-{n}; echo file-{n} >&{n}")],
                       "fds": [[n.to_string(), file(&path, "Write")], ["stdout", mem_utf8()]]}),
            )
        })
        .collect();
    let a = agent();
    start(&a, &json!({ "specs": specs }));
    for n in &ns {
        let res = wait(&a, &format!("n{n}"));
        assert_eq!(res.state, State::Terminated, "N={n}: {:?}", res.errors);
        assert_eq!(string_of(&res, "stdout"), format!("stdout-{n}\n"), "N={n}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(format!("fd{n}"))).unwrap(),
            format!("file-{n}\n"),
            "N={n}"
        );
    }
}

/// Starts `count` long sleepers with one memory and one tempfile capture each.
fn sleepers(prefix: &str, count: usize) -> serde_json::Map<String, Value> {
    (0..count)
        .map(|i| {
            (
                format!("{prefix}{i}"),
                json!({"argv": ["/bin/sleep", "30"],
                       "fds": [["stdout", mem_utf8()], ["stderr", tmp_utf8()],
                               ["7", {"capture": {"mode": "memory"}}]]}),
            )
        })
        .collect()
}

fn kill_all(a: &chaperone::Agent, ids: &[String]) {
    for id in ids {
        let _ = a.signal(id, libc::SIGKILL);
        wait(a, id);
    }
}

// Case 18: a child sees only 0, 1, 2 and the fds its spec maps, even while other
// procs' memory and tempfile captures are live, from this and from an earlier
// request.
#[test]
fn spawn_passes_only_spec_fds_when_other_captures_live() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent();
    let mut sleeping = start(&a, &json!({"specs": sleepers("early", 3)}));
    let mut specs = sleepers("same", 3);
    specs.insert(
        "lister".into(),
        json!({"argv": [PYTHON, "-c", PY_LIST_FDS],
               "fds": [["stdout", mem_utf8()], ["5", file(&dir.path().join("f5"), "Write")],
                       ["9", tmp_utf8()]]}),
    );
    sleeping.extend(start(&a, &json!({ "specs": specs })));
    sleeping.retain(|id| id != "lister");
    let res = wait(&a, "lister");
    kill_all(&a, &sleeping);
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    let out = string_of(&res, "stdout");
    assert_eq!(
        parse_fd_list(&out),
        BTreeSet::from([0, 1, 2, 5, 9]),
        "child fds:\n{out}"
    );
}

// Case 18: an fd the agent itself holds without close-on-exec (as one it
// inherited would be) does not reach children either.
#[test]
fn spawn_passes_no_agent_fd_when_agent_fd_lacks_cloexec() {
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(dir.path().join("agent-own")).unwrap();
    let leaky = rustix::io::dup(f.as_fd()).unwrap(); // dup(2) clears FD_CLOEXEC
    assert!(
        !rustix::io::fcntl_getfd(&leaky)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC)
    );
    let a = agent();
    start(
        &a,
        &json!({"specs": {"lister": {"argv": [PYTHON, "-c", PY_LIST_FDS],
                                     "fds": [["stdout", mem_utf8()]]}}}),
    );
    let res = wait(&a, "lister");
    drop(leaky);
    let out = string_of(&res, "stdout");
    assert_eq!(
        parse_fd_list(&out),
        BTreeSet::from([0, 1, 2]),
        "child fds:\n{out}"
    );
}

//------------------------------------------------------------------------------
// Signal state of the child (cases 19, 20)
//------------------------------------------------------------------------------

// Case 19.
#[test]
fn spawn_leaves_sigpipe_default_so_yes_exits_141_in_bash_pipeline() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"b": {
            "argv": ["/bin/bash", "-c", "yes | head -n1 >/dev/null; echo ${PIPESTATUS[0]}"],
            "fds": [["stdout", mem_utf8()]]}}}),
    );
    let res = wait(&a, "b");
    assert_eq!(string_of(&res, "stdout"), "141\n");
}

// SIGPIPE is default in the child itself: `yes` writing into a pipe whose reader
// (`head -c1`, another proc of the request) has exited dies by SIGPIPE.
#[test]
fn spawn_child_dies_by_sigpipe_when_pipe_reader_exits() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {
            "yes": {"argv": ["/usr/bin/yes"], "fds": [["stdout", "pipe-write"]]},
            "head": {"argv": ["/usr/bin/head", "-c1"],
                     "fds": [["stdin", {"pipe-read": {"proc_id": "yes", "fd": "stdout"}}],
                             ["stdout", mem_utf8()]]}}}),
    );
    let head = wait(&a, "head");
    assert_eq!(string_of(&head, "stdout"), "y");
    let yes = wait(&a, "yes");
    let status = yes.status.expect("status");
    assert_eq!(status.signum, Some(libc::SIGPIPE), "{status:?}");
    assert_eq!(status.signal.as_deref(), Some("SIGPIPE"));
    assert_eq!(status.exit_code, None);
}

// Case 20.
#[test]
fn spawn_child_has_no_ignored_or_blocked_signals() {
    let a = agent();
    let (_, status) = own_status(&a, "cat", json!(["/bin/cat", "/proc/self/status"]));
    assert_eq!(status_mask(&status, "SigIgn"), 0, "{status}");
    assert_eq!(status_mask(&status, "SigBlk"), 0, "{status}");
    assert_eq!(status_mask(&status, "SigCgt"), 0, "{status}");
}

#[test]
fn spawn_proc_stat_sigignore_is_empty_for_plain_child() {
    let a = agent();
    let (res, _) = own_status(&a, "cat", json!(["/bin/cat", "/proc/self/status"]));
    let stat = res.proc_stat.expect("proc_stat");
    assert_eq!(stat.sigignore, Vec::<String>::new());
    assert_eq!(stat.blocked, Vec::<String>::new());
}

// Case 20: the sigignore labels match the kernel's mask (PS is off by one).
#[test]
fn spawn_proc_stat_sigignore_labels_match_proc_status() {
    let a = agent();
    let (res, status) = own_status(
        &a,
        "trap",
        json!([
            "/bin/sh",
            "-c",
            "trap '' USR1 PIPE; exec /bin/cat /proc/self/status"
        ]),
    );
    let mask = status_mask(&status, "SigIgn");
    assert_eq!(
        mask,
        (1 << (libc::SIGUSR1 - 1)) | (1 << (libc::SIGPIPE - 1)),
        "{status}"
    );
    let stat = res.proc_stat.expect("proc_stat");
    assert_eq!(stat.sigignore, ["SIGUSR1", "SIGPIPE"]);
}

//------------------------------------------------------------------------------
// Signal and delete through the API (cases 23, 24)
//------------------------------------------------------------------------------

// Case 23.
#[test]
fn spawn_signal_sigterm_reports_signum_15_and_then_no_process() {
    let a = agent();
    start(&a, &json!({"specs": {"s": {"argv": ["/bin/sleep", "30"]}}}));
    assert_eq!(a.result("s").unwrap().state, State::Running);
    a.signal("s", libc::SIGTERM).expect("signal a running proc");
    let res = wait(&a, "s");
    assert_eq!(res.state, State::Terminated);
    let status = res.status.expect("status");
    assert_eq!(status.status, 15);
    assert_eq!(status.signum, Some(15));
    assert_eq!(status.signal.as_deref(), Some("SIGTERM"));
    assert_eq!(status.exit_code, None);
    assert!(!status.core_dump);
    assert!(matches!(
        a.signal("s", libc::SIGTERM),
        Err(ProcError::NoProcess(id)) if id == "s"
    ));
}

#[test]
fn spawn_signal_is_unknown_when_id_is_unknown() {
    let a = agent();
    assert!(matches!(a.signal("nope", 15), Err(ProcError::Unknown(id)) if id == "nope"));
    assert!(matches!(a.delete("nope"), Err(ProcError::Unknown(_))));
}

// Case 24.
#[test]
fn spawn_delete_fails_while_running_and_removes_after_exit() {
    let a = agent();
    let events = a.subscribe();
    start(&a, &json!({"specs": {"d": {"argv": ["/bin/sleep", "30"]}}}));
    assert!(matches!(a.delete("d"), Err(ProcError::Running(id)) if id == "d"));
    assert_eq!(a.result("d").unwrap().state, State::Running);
    a.signal("d", libc::SIGKILL).unwrap();
    assert_eq!(wait(&a, "d").status.unwrap().signum, Some(libc::SIGKILL));
    a.delete("d").expect("delete after exit");
    assert!(a.result("d").is_none());
    assert!(a.wait("d").is_none());
    assert!(!a.proc_ids().contains(&"d".to_string()));
    assert!(matches!(a.delete("d"), Err(ProcError::Unknown(_))));
    let got: Vec<Event> = events.try_iter().collect();
    assert_eq!(
        got,
        [
            Event::Started("d".into()),
            Event::Exited("d".into()),
            Event::Deleted("d".into())
        ]
    );
}

/// A process deleted as soon as its wait returns still gets its `Exited`
/// event, before `Deleted`: the wait can be answered, and the delete taken, in
/// the loop turn that settled it, before the turn announces what settled.
#[test]
fn delete_right_after_the_wait_still_announces_the_exit() {
    let a = agent();
    let events = a.subscribe();
    for i in 0..300 {
        let id = format!("q{i}");
        start(&a, &json!({"specs": {&id: {"argv": ["/bin/true"]}}}));
        wait(&a, &id);
        a.delete(&id).expect("delete after exit");
        // Every event of the process is sent before the delete's answer.
        let got: Vec<Event> = events.try_iter().collect();
        assert_eq!(
            got,
            [
                Event::Started(id.clone()),
                Event::Exited(id.clone()),
                Event::Deleted(id.clone())
            ],
            "round {i}"
        );
    }
}

//------------------------------------------------------------------------------
// Fork trees and rusage (cases 28, 29)
//------------------------------------------------------------------------------

const SUBPROCS: &str = "#!/usr/bin/python3
import os, time
pids = []
for i in range(4):
    pid = os.fork()
    if pid == 0:
        kids = []
        for j in range(2):
            g = os.fork()
            if g == 0:
                time.sleep(0.05)
                os._exit(j)
            kids.append(g)
        for j, g in enumerate(kids):
            got, st = os.waitpid(g, 0)
            assert got == g and os.waitstatus_to_exitcode(st) == j
        os._exit(10 + i)
    pids.append(pid)
for pid in pids:
    got, st = os.waitpid(pid, 0)
    print('waited', got, os.waitstatus_to_exitcode(st), flush=True)
print('done', flush=True)
";

// Case 28.
#[test]
fn spawn_fork_tree_waits_for_every_pid_and_prints_done() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(dir.path(), "subprocs1.py", SUBPROCS);
    let a = agent();
    start(
        &a,
        &json!({"specs": {"t": {"argv": [prog], "fds": [["stdout", mem_utf8()], ["stderr", mem_utf8()]]}}}),
    );
    let res = wait(&a, "t");
    let out = string_of(&res, "stdout");
    assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0), "{res:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.last(), Some(&"done"), "{out}");
    assert_eq!(lines.len(), 5, "{out}");
    let mut pids = BTreeSet::new();
    for (i, line) in lines[..4].iter().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], "waited", "{out}");
        pids.insert(f[1].parse::<i32>().unwrap());
        assert_eq!(f[2], (10 + i).to_string(), "{out}");
    }
    assert_eq!(pids.len(), 4, "{out}");
    assert_eq!(string_of(&res, "stderr"), "");
}

// Case 29.
#[test]
fn spawn_rusage_reports_maxrss_and_utime_of_1gib_busy_child() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"r": {"argv": [PYTHON, "-c",
            "import os\nb = b'x' * (1 << 30)\nwhile os.times().user < 0.26:\n    pass\n"]}}}),
    );
    let res = wait(&a, "r");
    assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0), "{res:?}");
    let ru = res.rusage.expect("rusage");
    assert!(
        ru.maxrss > 1 << 30 && (ru.maxrss as f64) < 1.1e9,
        "maxrss {}",
        ru.maxrss
    );
    assert!(ru.utime > 0.25 && ru.utime < 0.5, "utime {}", ru.utime);
}

//------------------------------------------------------------------------------
// Many processes (cases 33, 34)
//------------------------------------------------------------------------------

fn trues(prefix: &str, n: usize) -> Value {
    let specs: serde_json::Map<String, Value> = (0..n)
        .map(|i| (format!("{prefix}{i:04}"), json!({"argv": ["/bin/true"]})))
        .collect();
    json!({ "specs": specs })
}

fn run_trues(a: &chaperone::Agent, prefix: &str, n: usize) -> Duration {
    let t0 = Instant::now();
    let ids = start(a, &trues(prefix, n));
    for id in &ids {
        let res = wait(a, id);
        assert_eq!(res.state, State::Terminated, "{id}: {:?}", res.errors);
        assert_eq!(res.status.unwrap().exit_code, Some(0), "{id}");
    }
    t0.elapsed()
}

// Case 34: 1000 × /bin/true in one request all terminate with exit 0. How fast
// is a benchmark's business (benches/spawn.rs, ci/bench), not a test's.
#[test]
fn spawn_runs_1000_trues_in_one_request() {
    let a = agent();
    run_trues(&a, "t", 1000);
    assert_eq!(a.proc_ids().len(), 1000);
}

// 1000 concurrent processes, each with its own capture and distinct output.
#[test]
fn spawn_gives_each_of_1000_procs_its_own_output() {
    let n = 1000;
    let specs: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let fds = if i % 2 == 0 { mem_utf8() } else { tmp_utf8() };
            (
                format!("p{i:04}"),
                json!({"exe": "/bin/sh", "argv": [format!("argv0-{i}"), "-c", "echo $0"],
                       "fds": [["stdout", fds]]}),
            )
        })
        .collect();
    let a = agent();
    let ids = start(&a, &json!({ "specs": specs }));
    assert_eq!(ids.len(), n);
    for i in 0..n {
        let res = wait(&a, &format!("p{i:04}"));
        assert_eq!(res.state, State::Terminated, "{i}: {:?}", res.errors);
        assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0), "{i}");
        assert_eq!(string_of(&res, "stdout"), format!("argv0-{i}\n"));
    }
}

// Case 33: spawning works while the agent holds much captured output. That its
// cost does not grow with it is shown by the `spawn/true/parent_rss_1g` bench.
#[test]
fn spawn_runs_while_agent_holds_512mib() {
    let a = agent();
    let size = 512u64 << 20;
    start(
        &a,
        &json!({"specs": {"big": {"argv": ["/usr/bin/head", "-c", size.to_string(), "/dev/zero"],
            "fds": [["stdout", {"capture": {"mode": "memory", "head": size, "tail": 0}}]]}}}),
    );
    wait(&a, "big");
    let held = a.fd_data("big", "stdout", size - 1, None).unwrap();
    assert_eq!(
        (held.length, held.missing, &held.data[..]),
        (size, None, &[0u8][..])
    );
    run_trues(&a, "held-", 100);
    assert_eq!(a.proc_ids().len(), 101);
}

/// `Agent::wait_all` returns once every process is final: a slow one, a quick
/// one, one that cannot start, and one with a compression to finish.
#[test]
fn wait_all_returns_once_every_process_is_final() {
    let agent = agent();
    let ids = start(
        &agent,
        &json!({"specs": {
            "slow": {"argv": ["/bin/sleep", "0.3"]},
            "quick": {"argv": ["/bin/true"]},
            "missing": {"argv": ["/nonexistent/exe"]},
            "packed": {"argv": ["/bin/sh", "-c", "seq 100000"],
                "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8",
                    "compress": "zstd"}}]]},
        }}),
    );
    let t0 = Instant::now();
    agent.wait_all();
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "returned before the sleep ended"
    );
    let results = agent.results();
    for id in &ids {
        let res = &results[id];
        assert_ne!(res.state, State::Running, "{id} still running");
        if let Some(Some(fd)) = res.fds.get("stdout") {
            if let Some(c) = fd.ext().and_then(|e| e.compression.as_ref()) {
                assert_eq!(c.state, CompressionState::Done, "{id}: {c:?}");
            }
        }
    }
    assert_eq!(results["missing"].state, State::Error);
}
