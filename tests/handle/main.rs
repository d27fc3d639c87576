//! The non-blocking [`chaperone::Handle`], awaited from a tokio current-thread
//! runtime: every call, with no `spawn_blocking`.

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::{FdRes, State};
use chaperone::supervisor::status::Select;
use chaperone::{
    Agent, Config, FdDataError, ProcError, ReadEncoding, ShutdownPolicy, ShutdownState,
};
use serde_json::json;
use std::time::Duration;

#[test]
fn every_handle_call_can_be_awaited_on_one_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = dir.path().join("kept.out");
    let agent = Agent::new(Config::default()).expect("agent");
    let handle = agent.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut events = handle.subscribe();
        let ids = handle
            .start(util::input(&json!({"specs": {
                "mem": {"argv": ["/bin/echo", "in memory"], "fds": [["stdout", util::mem_utf8()]]},
                "tmp": {"argv": ["/bin/echo", "in a tempfile"], "fds": [["stdout", util::tmp_utf8()]]},
                "kept": {"argv": ["/bin/echo", "in a kept file"],
                    "fds": [["stdout", {"capture": {"mode": "file", "path": kept}}]]},
                "packed": {"argv": ["/bin/sh", "-c", "seq 1000"],
                    "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8",
                        "compress": "zstd"}}]]},
                "sleeper": {"argv": ["/bin/sleep", "30"]},
            }})))
            .await
            .expect("started");
        assert_eq!(ids.len(), 5);
        assert!(
            matches!(events.event().await, Some(chaperone::Event::Started(_))),
            "an event awaited"
        );
        let mut known = handle.proc_ids().await;
        known.sort();
        assert_eq!(known, ["kept", "mem", "packed", "sleeper", "tmp"]);

        let live = handle.result("sleeper").await.expect("sleeper's result");
        assert_eq!(live.state, State::Running);
        assert!(handle.result("nobody").await.is_none());

        handle.signal("sleeper", libc::SIGKILL).await.expect("signalled");
        let done = handle.wait("sleeper").await.expect("sleeper's end");
        assert_eq!(done.status.and_then(|s| s.signal).as_deref(), Some("SIGKILL"));
        assert!(matches!(
            handle.signal("sleeper", libc::SIGTERM).await,
            Err(ProcError::NoProcess(id)) if id == "sleeper"
        ));

        let packed = handle.wait_compressed("packed").await.expect("packed's end");
        assert_eq!(packed.state, State::Terminated);
        handle.wait_all().await;
        let all = handle.results().await;
        assert!(all.values().all(|r| r.state == State::Terminated), "{all:?}");
        // A chosen part, in the order asked, the unknown left out; the same
        // results as the whole table's.
        let part = handle
            .results_of(vec!["tmp".into(), "nobody".into(), "kept".into()])
            .await;
        let part_ids: Vec<&str> = part.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(part_ids, ["tmp", "kept"]);
        for (id, res) in &part {
            let whole = &all[id];
            assert_eq!((res.pid, &res.fds), (whole.pid, &whole.fds), "{id}");
        }

        for (id, want) in [
            ("mem", "in memory\n"),
            ("tmp", "in a tempfile\n"),
            ("kept", "in a kept file\n"),
        ] {
            let data = handle.fd_data(id, "stdout", 0, None).await.expect("data");
            assert_eq!(&data.data[..], want.as_bytes(), "{id}");
            let part = handle.fd_data(id, "stdout", 3, Some(5)).await.expect("range");
            assert_eq!(&part.data[..], &want.as_bytes()[3..5], "{id}");
        }
        let text = handle
            .fd_data_as("mem", "stdout", 0, None, ReadEncoding::Utf8)
            .await
            .expect("utf-8");
        assert_eq!(text.length, 10);
        let zst = handle
            .fd_compressed("packed", "stdout", 0, None)
            .await
            .expect("compressed");
        assert!(!zst.data.is_empty());
        assert!(matches!(
            handle.fd_compressed("mem", "stdout", 0, None).await,
            Err(FdDataError::NotCompressed(_))
        ));
        assert!(matches!(
            handle.fd_data("nobody", "stdout", 0, None).await,
            Err(FdDataError::Unknown(_))
        ));

        handle.delete("mem").await.expect("deleted");
        assert!(matches!(
            handle.delete("mem").await,
            Err(ProcError::Unknown(_))
        ));

        // A brief result carries each capture's length, none of its bytes.
        let brief = handle.result_brief("tmp").await.expect("tmp's brief result");
        assert!(
            matches!(brief.fds["stdout"], Some(FdRes::Detached { length: 14, .. })),
            "{:?}",
            brief.fds["stdout"]
        );
        let counts = handle.overview(Select::None).await.counts;
        assert_eq!((counts.total, counts.terminated), (4, 4), "{counts:?}");
        assert!(handle.history("tmp").await.is_some());
        assert!(handle.history("nobody").await.is_none());

        // Submitted: answered once validated and queued (not awaited per pid,
        // which this test cannot tell apart); the process tells of its start
        // on a bounded subscription taken first.
        let mut bounded = handle.subscribe_bounded(4);
        let ids = handle
            .submit(util::input(&json!({"specs": {
                "late": {"argv": ["/bin/sh", "-c", "sleep 0.2; echo late"],
                    "fds": [["stdout", util::mem_utf8()]]},
            }})))
            .await
            .expect("submitted");
        assert_eq!(ids, ["late"]);
        assert_eq!(
            bounded.event().await,
            Some(chaperone::Event::Started("late".into()))
        );
        // fd_wait answers once bytes past offset 0 arrive, or the pipe closes.
        let waited = handle
            .fd_wait("late", "stdout", 0, Duration::from_secs(10))
            .await
            .expect("fd_wait");
        assert_eq!(waited.length, Some(5), "{waited:?}");

        assert_eq!(handle.shutdown_state().await, ShutdownState::Active);
        handle.shutdown(ShutdownPolicy::Kill).await;
        handle.wait_done().await;
        assert_eq!(handle.shutdown_state().await, ShutdownState::Done);
    });
}

/// A handle that outlives its agent gets answers saying so, and dropping the
/// agent does not wait for that handle.
#[test]
fn a_handle_outliving_its_agent_is_told_it_is_shut_down() {
    let agent = Agent::new(Config::default()).expect("agent");
    let handle = agent.handle();
    drop(agent);
    assert!(matches!(
        handle.signal("x", libc::SIGTERM).wait(),
        Err(ProcError::ShutDown(id)) if id == "x"
    ));
    assert!(handle.results().wait().is_empty());
    assert!(handle.results_of(vec!["x".into()]).wait().is_empty());
}

// While the agent's drop waits for a process to end, a handle's calls are
// told "shut down" at once: not held until that process ends.
#[test]
fn a_handle_is_told_it_is_shut_down_while_its_agent_is_being_dropped() {
    let agent = Agent::new(Config::default()).expect("agent");
    let handle = agent.handle();
    let ids = agent
        .start(util::input(&json!({"specs": {
            "long": {"argv": ["/bin/sleep", "3"]},
        }})))
        .expect("started");
    assert_eq!(ids.len(), 1);
    let started = std::time::Instant::now();
    let dropper = std::thread::spawn(move || drop(agent));
    // The drop has closed the agent once a call is refused; before that, a
    // call is answered as usual.
    let mut told = false;
    while !told && !dropper.is_finished() {
        told = matches!(
            handle.signal("long", 0).wait(),
            Err(ProcError::ShutDown(id)) if id == "long"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(told, "no call was refused while the drop waited");
    assert!(
        !dropper.is_finished() && started.elapsed() < Duration::from_secs(3),
        "told while long still ran, not after the drop"
    );
    dropper.join().expect("drop");
}

// Every call can be waited for on a thread that blocks, encoded reads too,
// and on an agent that has gone each answers "shut down".
#[test]
fn an_encoded_read_can_be_waited_for_on_a_blocking_thread() {
    let agent = Agent::new(Config::default()).expect("agent");
    let handle = agent.handle();
    agent
        .start(util::input(&json!({"specs": {
            "e": {"argv": ["/bin/echo", "blocking"], "fds": [["stdout", util::mem_utf8()]]},
        }})))
        .expect("started");
    agent.wait("e").expect("known");
    let text = handle
        .fd_data_as("e", "stdout", 0, None, ReadEncoding::Base64)
        .wait()
        .expect("read");
    assert!(
        matches!(&text.data, chaperone::Encoded::Base64(b) if b == "YmxvY2tpbmcK"),
        "{:?}",
        text.data
    );
    drop(agent);
    assert!(matches!(
        handle
            .fd_data_as("e", "stdout", 0, None, ReadEncoding::Raw)
            .wait(),
        Err(FdDataError::ShutDown(id)) if id == "e"
    ));
}

/// Handles are `Send` and `Clone`: many threads can call at once.
#[test]
fn handles_are_shared_across_threads() {
    let agent = Agent::new(Config::default()).expect("agent");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let h = agent.handle();
            std::thread::spawn(move || {
                let id = format!("t{t}");
                h.start(util::input(
                    &json!({"specs": {id.clone(): {"argv": ["/bin/true"]}}}),
                ))
                .wait()
                .expect("started");
                h.wait(&id).wait().expect("result").state
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("thread"), State::Terminated);
    }
}

/// A request larger than `max_running` is answered once the processes that
/// fit have pids, not once the queued ones have run.
#[test]
fn a_start_past_max_running_is_answered_without_waiting_for_the_queue() {
    let config = Config {
        max_running: Some(2),
        ..Config::default()
    };
    let agent = Agent::new(config).expect("agent");
    let specs: serde_json::Map<String, serde_json::Value> = (0..5)
        .map(|i| (format!("s{i}"), json!({"argv": ["/bin/sleep", "2"]})))
        .collect();
    let t0 = std::time::Instant::now();
    let ids = agent
        .start(util::input(&json!({ "specs": specs })))
        .expect("started");
    // Waiting for the queue would take 4 s at least (two rounds of 2 s);
    // the bound leaves a loaded machine most of the first round.
    assert!(
        t0.elapsed() < std::time::Duration::from_millis(1800),
        "start waited for the queue: {:?}",
        t0.elapsed()
    );
    assert_eq!(ids.len(), 5);
    let res = agent.results();
    let with_pid = res.values().filter(|r| r.pid.is_some()).count();
    assert_eq!(with_pid, 2, "two started, three queued: {res:?}");
    agent.wait_all();
    let res = agent.results();
    assert!(
        res.values().all(|r| r.state == State::Terminated),
        "{res:?}"
    );
}

/// A signal to a process waiting behind `max_running`: one that would end it
/// (SIGTERM, as a scheduler cancels) means it never starts, and its result
/// says why; one that would not (SIGCONT), or one its spec blocks or
/// ignores, is sent once it runs (a SIGSTOP kept so stops it as it starts).
/// Neither is "no process" with the process then running anyway.
#[test]
fn a_signal_to_a_queued_process_cancels_it_or_waits_for_it_to_run() {
    let config = Config {
        max_running: Some(1),
        ..Config::default()
    };
    let agent = Agent::new(config).expect("agent");
    agent
        .start(util::input(&json!({"specs": {
            "a": {"argv": ["/bin/sleep", "30"]},
            "b": {"argv": ["/bin/sh", "-c", "echo ran"], "fds": [["stdout", util::mem_utf8()]]},
            "c": {"argv": ["/bin/sh", "-c", "echo ran"], "fds": [["stdout", util::mem_utf8()]]},
            "d": {"argv": ["/bin/sh", "-c", "echo ran"], "fds": [["stdout", util::mem_utf8()]],
                  "signals": {"ignore": ["SIGUSR1"]}},
            "e": {"argv": ["/bin/sleep", "0.2"]},
        }})))
        .expect("started");
    let res = agent.results();
    assert!(res["a"].pid.is_some() && res["b"].pid.is_none(), "{res:?}");
    agent.signal("b", libc::SIGTERM).expect("cancelled");
    agent
        .signal("c", libc::SIGCONT)
        .expect("kept for when it runs");
    // Ignored by its spec: it runs, and ignores it.
    agent
        .signal("d", libc::SIGUSR1)
        .expect("kept for when it runs");
    agent
        .signal("e", libc::SIGSTOP)
        .expect("kept for when it runs");
    // The queue moves once `a` is gone.
    agent.signal("a", libc::SIGKILL).expect("a runs");
    // `e` starts, and is stopped by the signal it was sent while queued.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = agent.results();
        if r["e"].proc_stat.as_ref().is_some_and(|s| s.state == 'T') {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && r["e"].state == State::Running,
            "e was never stopped: {:?}",
            r["e"]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.signal("e", libc::SIGCONT).expect("e goes on");
    agent.wait_all();
    let res = agent.results();
    let b = &res["b"];
    assert_eq!(b.state, State::Error, "{b:?}");
    assert!(b.pid.is_none(), "{b:?}");
    assert!(
        b.errors
            .iter()
            .any(|e| e.contains("not started: SIGTERM while it waited")),
        "{:?}",
        b.errors
    );
    for id in ["c", "d"] {
        let r = &res[id];
        assert_eq!(r.state, State::Terminated, "{id}: {r:?}");
        assert_eq!(util::string_of(r, "stdout"), "ran\n", "{id}");
        assert_eq!(r.status.as_ref().and_then(|s| s.exit_code), Some(0), "{id}");
    }
    assert_eq!(res["a"].state, State::Terminated);
    let e = &res["e"];
    assert_eq!(
        e.status.as_ref().and_then(|s| s.exit_code),
        Some(0),
        "{e:?}"
    );
}

/// Processes joined by a `pipe` go past `max_running`: with a limit of 1 the
/// reader would otherwise wait in the queue for a writer blocked on the full
/// pipe, forever.
#[test]
fn pipe_connected_processes_are_not_held_apart_by_max_running() {
    let config = Config {
        max_running: Some(1),
        ..Config::default()
    };
    let agent = Agent::new(config).expect("agent");
    // 1 MB: more than a pipe holds.
    agent
        .start(util::input(&json!({"specs": {
            "a-producer": {"argv": ["/bin/sh", "-c", "head -c 1000000 /dev/zero"],
                "fds": [["stdout", "pipe-write"]]},
            "b-consumer": {"argv": ["/usr/bin/wc", "-c"],
                "fds": [["stdin", {"pipe-read": {"proc_id": "a-producer", "fd": "stdout"}}],
                        ["stdout", util::mem_utf8()]]},
        }})))
        .expect("started");
    let (tx, rx) = std::sync::mpsc::channel();
    let h = agent.handle();
    std::thread::spawn(move || {
        let _ = tx.send(h.wait("b-consumer").wait());
    });
    let res = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the consumer finished (no deadlock)")
        .expect("result");
    assert_eq!(util::string_of(&res, "stdout").trim(), "1000000");
}

// `fd_wait` answers when bytes past the offset arrive, at its deadline with
// nothing new, and at once when the capture can grow no more; errors name
// the id and fd.
#[test]
fn fd_wait_answers_as_output_arrives_and_when_it_ends() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = util::mkfifo(dir.path(), "go");
    let kept = dir.path().join("kept.out");
    let agent = Agent::new(Config::default()).expect("agent");
    let h = agent.handle();
    // Each writes "a", then "bc" once the fifo is written, then waits.
    let body = format!(
        "printf a; read x < {}; printf bc; exec sleep 100",
        fifo.display()
    );
    util::start(
        &agent,
        &json!({"specs": {
            "mem": {"argv": ["/bin/sh", "-c", body], "fds": [["stdout", util::mem_utf8()]]},
            "tmp": {"argv": ["/bin/sleep", "100"], "fds": [["stdout", util::tmp_utf8()]]},
            "kept": {"argv": ["/bin/sh", "-c", "printf xyz; exec sleep 100"],
                "fds": [["stdout", {"capture": {"mode": "file", "path": kept}}]]},
        }}),
    );
    let long = Duration::from_secs(60);
    let w = h.fd_wait("mem", "stdout", 0, long).wait().expect("waited");
    assert_eq!((w.length, w.open), (Some(1), true));
    // Nothing past 1 byte yet: the deadline answers with the same length.
    let t = Instant::now();
    let w = h
        .fd_wait("mem", "stdout", 1, Duration::from_millis(200))
        .wait()
        .unwrap();
    assert_eq!((w.length, w.open), (Some(1), true));
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    // A waiter registered now is answered by the bytes, not the deadline.
    let waiter = h.fd_wait("mem", "stdout", 1, long);
    std::fs::write(&fifo, "go\n").unwrap();
    let w = waiter.wait().unwrap();
    assert!(w.length.unwrap() > 1 && w.open, "{w:?}");
    let d = agent.fd_data("mem", "stdout", 0, None).unwrap();
    assert!(d.data.starts_with(b"a"), "{:?}", d.data);
    // A kept file's length is what is written to it.
    let mut w = h.fd_wait("kept", "stdout", 0, long).wait().unwrap();
    while w.length < Some(3) {
        w = h
            .fd_wait("kept", "stdout", w.length.unwrap(), long)
            .wait()
            .unwrap();
    }
    assert_eq!((w.length, w.open), (Some(3), true));
    // A tempfile grows unseen: answered at once, without a length.
    let w = h.fd_wait("tmp", "stdout", 0, long).wait().unwrap();
    assert_eq!((w.length, w.open), (None, true));
    // Once the process is killed, a waiter at the end learns it is closed.
    let waiter = h.fd_wait("mem", "stdout", 3, long);
    agent.signal("mem", libc::SIGKILL).unwrap();
    let w = waiter.wait().unwrap();
    assert_eq!((w.length, w.open), (Some(3), false));
    let w = h.fd_wait("mem", "stdout", 99, long).wait().unwrap();
    assert_eq!((w.length, w.open), (Some(3), false), "answered at once");
    // Errors.
    assert!(matches!(
        h.fd_wait("nope", "stdout", 0, long).wait(),
        Err(FdDataError::Unknown(id)) if id == "nope"
    ));
    assert!(matches!(
        h.fd_wait("mem", "stderr", 0, long).wait(),
        Err(FdDataError::NoFd(fd)) if fd == "2"
    ));
    agent.wait("mem");
    for id in ["tmp", "kept"] {
        agent.signal(id, libc::SIGKILL).unwrap();
        agent.wait(id);
    }
}

/// An agent with `spawn_threads: 0` (the reactor spawns itself) runs every
/// process with its output; with `max_running: 1` a queue runs strictly one
/// after another (what `chaperone bench` relies on); `read_proc_at_exit: false`
/// leaves out the exit-time `/proc` figures while rusage stays.
#[test]
fn reactor_spawning_one_at_a_time_without_proc_reads() {
    let agent = Agent::new(Config {
        spawn_threads: 0,
        max_running: Some(1),
        read_proc_at_exit: false,
        sample_interval: None,
        ..Config::default()
    })
    .expect("agent");
    let mut specs = serde_json::Map::new();
    for i in 0..40 {
        specs.insert(
            format!("p{i:02}"),
            json!({"argv": ["/bin/sh", "-c", format!("echo {i}")], "fds": [["stdout", util::mem_utf8()]]}),
        );
    }
    let ids = util::start(&agent, &json!({ "specs": specs }));
    assert_eq!(ids.len(), 40);
    let mut spans = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let res = util::wait(&agent, id);
        assert_eq!(
            res.status.as_ref().and_then(|s| s.exit_code),
            Some(0),
            "{id}: {:?}",
            res.errors
        );
        let out = agent.fd_data(id, "stdout", 0, None).expect("stdout");
        assert_eq!(&out.data[..], format!("{i}\n").as_bytes());
        assert!(
            res.rusage.is_some(),
            "{id}: rusage is still read at the reap"
        );
        assert!(
            res.proc_stat.is_none() && res.proc_io.is_none(),
            "{id}: no /proc reads at exit"
        );
        spans.push((
            res.times.start.clone(),
            res.times.stop.clone().expect("stopped"),
        ));
    }
    // RFC 3339 with a fixed offset sorts as text: each starts after the last stopped.
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "overlap: {w:?}");
    }
    // The default reads them.
    let agent = util::agent();
    util::start(&agent, &json!({"specs": {"d": {"argv": ["/bin/true"]}}}));
    let res = util::wait(&agent, "d");
    assert!(res.proc_stat.is_some() && res.proc_io.is_some(), "{res:?}");
}
