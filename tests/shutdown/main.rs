//! Shutdown policies (terminate, kill, idle): their signals, their order, the
//! shutdown state's events; and bounded event subscriptions.

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::State;
use chaperone::{Agent, Config, Event, ShutdownPolicy, ShutdownState, StartError, Subscription};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Every event until the shutdown state is `done` (or a guard of 60 s).
fn events_until_done(events: &Subscription) -> Vec<Event> {
    let mut got = Vec::new();
    loop {
        match events.recv_timeout(Duration::from_secs(60)) {
            Ok(e) => {
                let done = e == Event::Shutdown(ShutdownState::Done);
                got.push(e);
                if done {
                    return got;
                }
            }
            Err(e) => panic!("no done after {got:?}: {e}"),
        }
    }
}

fn position(events: &[Event], e: &Event) -> usize {
    events
        .iter()
        .position(|x| x == e)
        .unwrap_or_else(|| panic!("{e:?} not in {events:?}"))
}

/// A shell that reports SIGTERM on stdout and exits 7.
const TRAPS_TERM: &str = "trap 'echo got-term; exit 7' TERM; while :; do sleep 0.02; done";

#[test]
fn terminate_sends_sigterm_then_sigkill_after_the_grace_and_queued_never_start() {
    // (JSON objects here are sorted by key: a, b start; c waits.)
    let config = Config {
        max_running: Some(2),
        ..Config::default()
    };
    let agent = Agent::new(config).expect("agent");
    let events = agent.subscribe();
    agent
        .start(util::input(&json!({"specs": {
            "a-polite": {"argv": ["/bin/sh", "-c", TRAPS_TERM], "fds": [["stdout", util::mem_utf8()]]},
            "b-stubborn": {"argv": ["/bin/sleep", "100"], "signals": {"ignore": ["SIGTERM"]}},
            "c-queued": {"argv": ["/bin/true"]},
        }})))
        .expect("started");
    // Let the shell set its trap.
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    agent.shutdown(ShutdownPolicy::Terminate {
        grace: Duration::from_millis(500),
    });
    agent.wait_done();
    let waited = t0.elapsed();
    let got = events_until_done(&events);

    let res = agent.results();
    let polite = &res["a-polite"];
    assert_eq!(polite.status.as_ref().and_then(|s| s.exit_code), Some(7));
    assert_eq!(util::string_of(polite, "stdout"), "got-term\n");
    let stubborn = &res["b-stubborn"];
    assert_eq!(
        stubborn.status.as_ref().and_then(|s| s.signal.as_deref()),
        Some("SIGKILL"),
        "the stubborn one is killed once the grace is over"
    );
    assert!(
        waited >= Duration::from_millis(450),
        "done before the grace: {waited:?}"
    );
    let queued = &res["c-queued"];
    assert_eq!(queued.state, State::Error);
    assert!(queued.pid.is_none(), "a queued process never starts");
    assert!(
        queued.errors.iter().any(|e| e.contains("shutting down")),
        "{:?}",
        queued.errors
    );

    // Order: idling, then the exits, then done, last.
    let idling = position(&got, &Event::Shutdown(ShutdownState::Idling));
    assert!(idling < position(&got, &Event::Exited("a-polite".into())));
    assert!(idling < position(&got, &Event::Exited("b-stubborn".into())));
    assert_eq!(got.last(), Some(&Event::Shutdown(ShutdownState::Done)));

    match agent.start(util::input(
        &json!({"specs": {"late": {"argv": ["/bin/true"]}}}),
    )) {
        Err(e @ StartError::ShuttingDown(_)) => {
            assert_eq!(e.to_string(), "agent shutting down: done")
        }
        other => panic!("a start after shutdown: {other:?}"),
    }
}

#[test]
fn kill_sends_sigkill_at_once() {
    let agent = Agent::new(Config::default()).expect("agent");
    let events = agent.subscribe();
    agent
        .start(util::input(&json!({"specs": {
            "a": {"argv": ["/bin/sh", "-c", TRAPS_TERM]},
            "b": {"argv": ["/bin/sleep", "100"]},
        }})))
        .expect("started");
    std::thread::sleep(Duration::from_millis(200));
    agent.shutdown(ShutdownPolicy::Kill);
    agent.wait_done();
    agent.wait_done(); // once done, at once
    let got = events_until_done(&events);
    let res = agent.results();
    for id in ["a", "b"] {
        assert_eq!(
            res[id].status.as_ref().and_then(|s| s.signal.as_deref()),
            Some("SIGKILL"),
            "{id}"
        );
        assert!(
            position(&got, &Event::Shutdown(ShutdownState::Idling))
                < position(&got, &Event::Exited(id.into()))
        );
    }
}

#[test]
fn idle_refuses_new_starts_lets_processes_finish_and_is_done_once_all_are_deleted() {
    let agent = Agent::new(Config::default()).expect("agent");
    let events = agent.subscribe();
    agent
        .start(util::input(
            &json!({"specs": {"runner": {"argv": ["/bin/sleep", "0.4"]}}}),
        ))
        .expect("started");
    agent.shutdown(ShutdownPolicy::Idle);
    match agent.start(util::input(
        &json!({"specs": {"late": {"argv": ["/bin/true"]}}}),
    )) {
        Err(e @ StartError::ShuttingDown(ShutdownState::Idling)) => {
            assert_eq!(e.to_string(), "agent shutting down: idling")
        }
        other => panic!("a start while idling: {other:?}"),
    }
    let res = agent.wait("runner").expect("runner");
    assert_eq!(
        res.status.and_then(|s| s.exit_code),
        Some(0),
        "ran to its end"
    );
    assert!(
        res.times.elapsed >= 0.35,
        "not cut short: {}",
        res.times.elapsed
    );
    // Not done while a result is still held.
    std::thread::sleep(Duration::from_millis(100));
    let so_far: Vec<Event> = events.try_iter().collect();
    assert!(
        !so_far.contains(&Event::Shutdown(ShutdownState::Done)),
        "{so_far:?}"
    );
    agent.delete("runner").expect("deleted");
    agent.wait_done();
    let rest = events_until_done(&events);
    assert!(
        position(&rest, &Event::Deleted("runner".into()))
            < position(&rest, &Event::Shutdown(ShutdownState::Done))
    );
}

/// Two subscribers: one keeps up and sees every event; one with a small bound
/// falls behind, learns how many it missed, resyncs from the results and
/// goes on with the events after.
#[test]
fn a_subscriber_that_falls_behind_learns_what_it_missed_and_resyncs() {
    let agent = Agent::new(Config::default()).expect("agent");
    let handle = agent.handle();
    let full = handle.subscribe();
    let small = handle.subscribe_bounded(8);
    let n = 40;
    let specs: serde_json::Map<String, Value> = (0..n)
        .map(|i| (format!("p{i:02}"), json!({"argv": ["/bin/true"]})))
        .collect();
    agent
        .start(util::input(&json!({ "specs": specs })))
        .expect("started");
    agent.wait_all();
    // Every process has started and exited: 2 events each.
    let all: Vec<Event> = full.try_iter().collect();
    assert_eq!(all.len(), 2 * n, "{all:?}");
    let behind: Vec<Event> = small.try_iter().collect();
    assert_eq!(behind.len(), 9, "{behind:?}");
    assert_eq!(behind[..8], all[..8], "the first 8, in order");
    assert_eq!(behind[8], Event::Missed((2 * n - 8) as u64));
    // Resync: the full results have every process, final.
    let results = agent.results();
    assert_eq!(results.len(), n);
    assert!(results.values().all(|r| r.state == State::Terminated));
    // And it goes on receiving.
    agent.delete("p00").expect("delete");
    assert_eq!(
        small.recv_timeout(Duration::from_secs(10)),
        Ok(Event::Deleted("p00".into()))
    );
    assert_eq!(
        full.recv_timeout(Duration::from_secs(10)),
        Ok(Event::Deleted("p00".into()))
    );
}

/// Started comes once the process has a pid.
#[test]
fn started_comes_once_the_pid_exists() {
    let agent = Agent::new(Config::default()).expect("agent");
    let events = agent.subscribe();
    agent
        .start(util::input(
            &json!({"specs": {"s": {"argv": ["/bin/sleep", "0.2"]}}}),
        ))
        .expect("started");
    assert_eq!(
        events.recv_timeout(Duration::from_secs(10)),
        Ok(Event::Started("s".into()))
    );
    let res = agent.result("s").expect("result");
    assert!(res.pid.is_some(), "{res:?}");
}

/// Idle, then kill: the harder policy takes over (its signal, its `done`).
#[test]
fn a_harder_policy_takes_over_from_idle() {
    let agent = Agent::new(Config::default()).expect("agent");
    agent
        .start(util::input(
            &json!({"specs": {"s": {"argv": ["/bin/sleep", "100"]}}}),
        ))
        .expect("started");
    agent.shutdown(ShutdownPolicy::Idle);
    agent.shutdown(ShutdownPolicy::Kill);
    agent.wait_done();
    let res = agent.result("s").expect("result");
    assert_eq!(
        res.status.as_ref().and_then(|s| s.signal.as_deref()),
        Some("SIGKILL")
    );
}

#[test]
fn the_shutdown_state_can_be_asked_for_at_any_time() {
    let a = Agent::new(Config::default()).unwrap();
    let h = a.handle();
    assert_eq!(h.shutdown_state().wait(), ShutdownState::Active);
    util::start(
        &a,
        &json!({"specs": {"s": {"argv": ["/bin/sleep", "100"]}}}),
    );
    h.shutdown(ShutdownPolicy::Idle).wait();
    // Idle: done only once every process has been deleted.
    assert_eq!(h.shutdown_state().wait(), ShutdownState::Idling);
    a.signal("s", libc::SIGKILL).unwrap();
    util::wait(&a, "s");
    assert_eq!(h.shutdown_state().wait(), ShutdownState::Idling);
    a.delete("s").unwrap();
    h.wait_done().wait();
    assert_eq!(h.shutdown_state().wait(), ShutdownState::Done);
}
