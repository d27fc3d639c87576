//! perf counters (issue 4): counted from exec, children included, read at exit
//! and while running, hardware events null without a PMU, fds owned and closed by
//! the agent, the spec field checked and the `--perf` flag.
//!
//! The tests of this binary run one at a time ([`serial`]): one of them counts the
//! agent's own perf fds, which the others would change.

#[path = "../util/mod.rs"]
mod util;

use chaperone::metrics::perf::{self, Access, Event};
use chaperone::result::{PerfRes, ProcRes, State};
use chaperone::{Agent, Config, StartError};
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use util::*;

/// About 0.3 s of CPU in mawk (more in gawk): a loop every Linux box can run.
const BUSY: &str = "awk 'BEGIN{for(i=0;i<25000000;i++)x+=i}'";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one proc `spec` on a fresh agent and returns its final result.
fn run_one(spec: Value) -> ProcRes {
    let a = agent();
    start(&a, &json!({"specs": {"p": spec}}));
    wait(&a, "p")
}

fn assert_ok(res: &ProcRes) {
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    assert_eq!(res.status.as_ref().and_then(|s| s.exit_code), Some(0));
}

fn perf_of(res: &ProcRes) -> &PerfRes {
    res.perf.as_ref().expect("result has a perf object")
}

fn count(p: &PerfRes, name: &str) -> u64 {
    match p.counts.get(name) {
        Some(Some(v)) => *v,
        other => panic!("{name} not counted ({other:?}): {p:?}"),
    }
}

/// Seconds of CPU in the result's rusage (the process and its reaped children).
fn rusage_cpu(res: &ProcRes) -> f64 {
    let r = res.rusage.expect("rusage");
    r.utime + r.stime
}

fn assert_close(what: &str, perf_s: f64, rusage_s: f64) {
    let err = (perf_s - rusage_s).abs() / rusage_s;
    assert!(
        err < 0.2,
        "{what}: perf task_clock {perf_s:.4} s vs rusage {rusage_s:.4} s ({:.0}% apart)",
        err * 100.0
    );
}

fn task_clock_s(res: &ProcRes) -> f64 {
    count(perf_of(res), "task_clock") as f64 / 1e9
}

#[test]
fn busy_loop_task_clock_matches_rusage() {
    let _g = serial();
    let res = run_one(json!({"argv": ["/bin/sh", "-c", BUSY], "perf": ["task_clock"]}));
    assert_ok(&res);
    let (tc, ru) = (task_clock_s(&res), rusage_cpu(&res));
    eprintln!("busy: task_clock {tc:.4} s, rusage {ru:.4} s");
    assert!(ru > 0.05, "the busy loop should burn CPU: {ru} s");
    assert_close("busy", tc, ru);
    // Only what was asked for.
    assert_eq!(perf_of(&res).counts.len(), 1, "{:?}", perf_of(&res));
}

#[test]
fn true_is_counted_from_exec() {
    let _g = serial();
    let res = run_one(json!({"argv": ["/bin/true"], "perf": true}));
    assert_ok(&res);
    let p = perf_of(&res);
    assert!(count(p, "task_clock") > 0, "{p:?}");
    assert!(count(p, "page_faults") > 0, "{p:?}");
    assert!(count(p, "minor_faults") > 0, "{p:?}");
    // Every fault is counted at entry; minor/major only when it completes.
    assert!(count(p, "page_faults") >= count(p, "minor_faults") + count(p, "major_faults"));
    for e in perf::ALL {
        assert!(
            p.counts.contains_key(e.name()),
            "{} missing: {p:?}",
            e.name()
        );
    }
}

#[test]
fn sh_jobs_count_their_children() {
    let _g = serial();
    let one = run_one(json!({"argv": ["/bin/sh", "-c", BUSY], "perf": ["task_clock"]}));
    let pair = run_one(json!({
        "argv": ["/bin/sh", "-c", format!("{BUSY}; {BUSY}")],
        "perf": ["task_clock", "context_switches"],
    }));
    assert_ok(&one);
    assert_ok(&pair);
    let (t1, t2) = (task_clock_s(&one), task_clock_s(&pair));
    eprintln!(
        "one busy run {t1:.4} s, two {t2:.4} s (rusage {:.4} s)",
        rusage_cpu(&pair)
    );
    // The shell runs at least the first awk as a child: without inherit only the
    // shell itself (and perhaps the last awk it execs) would be counted, about
    // half of what rusage (which includes waited-for children) says, and the
    // 20% match fails. A ratio against the separate single run is no check on
    // this VM: steal time once made one run count 0.61 s and each of the
    // pair's 0.38 s (CI, 2026-12-07), so only each run against its own rusage.
    assert_close("busy", t1, rusage_cpu(&one));
    assert_close("busy; busy", t2, rusage_cpu(&pair));
}

#[test]
fn hardware_events_are_null_without_a_pmu() {
    let _g = serial();
    let res = run_one(json!({"argv": ["/bin/sh", "-c", BUSY], "perf": true}));
    assert_ok(&res);
    let p = perf_of(&res);
    let probe = perf::probe();
    let hw = [
        Event::Cycles,
        Event::Instructions,
        Event::CacheMisses,
        Event::BranchMisses,
    ];
    match probe.access(Event::Cycles) {
        Access::Unavailable(why) => {
            chaperone::test_skip(
                "perf: hardware counts",
                &format!("{why}: checked to be null only"),
                true,
            );
            for e in hw {
                assert_eq!(p.counts.get(e.name()), Some(&None), "{p:?}");
                assert!(p.unavailable.contains_key(e.name()), "{p:?}");
            }
        }
        _ => {
            assert!(count(p, "cycles") > 0, "{p:?}");
            assert!(count(p, "instructions") > 0, "{p:?}");
            assert!(p.counts.contains_key("cache_misses"), "{p:?}");
            assert!(p.counts.contains_key("branch_misses"), "{p:?}");
        }
    }
    // Software counts do not suffer from the hardware group's fate.
    assert!(count(p, "task_clock") > 0, "{p:?}");
    for e in perf::ALL.iter().filter(|e| !e.is_hardware()) {
        if probe.access(*e) != Access::Full {
            eprintln!("note: {} is limited here: {:?}", e.name(), probe.access(*e));
            continue;
        }
        assert!(p.counts.get(e.name()).is_some_and(Option::is_some), "{p:?}");
    }
    assert!(
        p.exclude_kernel
            .iter()
            .all(|n| probe.access(Event::from_name(n).unwrap()) == Access::UserOnly)
    );
}

#[test]
fn live_result_carries_current_counts() {
    let _g = serial();
    let a = agent();
    start(
        &a,
        &json!({"specs": {"p": {
            "argv": ["/bin/sh", "-c", "while :; do :; done"],
            "perf": ["task_clock"],
        }}}),
    );
    // Wait (with a generous deadline, not a timed assertion) for some CPU use.
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = loop {
        let res = a.result("p").expect("known proc");
        assert_eq!(res.state, State::Running);
        let tc = count(perf_of(&res), "task_clock");
        if tc > 20_000_000 {
            break tc;
        }
        assert!(
            Instant::now() < deadline,
            "no CPU counted while running: {tc}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    a.signal("p", libc::SIGKILL).expect("signal");
    let res = wait(&a, "p");
    let fin = count(perf_of(&res), "task_clock");
    assert!(fin >= live, "final {fin} < live {live}");
}

/// The agent's own perf fds (`anon_inode:[perf_event]`).
fn agent_perf_fds() -> Vec<i32> {
    let me = std::process::id() as i32;
    open_fds_of(me)
        .into_iter()
        .filter(|fd| {
            std::fs::read_link(format!("/proc/{me}/fd/{fd}"))
                .is_ok_and(|t| t.to_string_lossy().contains("perf_event"))
        })
        .collect()
}

#[test]
fn agent_owns_the_counters_high_and_closes_them_after_exit() {
    let _g = serial();
    let a = agent();
    perf::probe();
    // The probe keeps one disabled counter per available event for good.
    let held = agent_perf_fds();
    start(
        &a,
        &json!({"specs": {"p": {"argv": ["/bin/sleep", "30"], "perf": true}}}),
    );
    let fds: Vec<i32> = agent_perf_fds()
        .into_iter()
        .filter(|fd| !held.contains(fd))
        .collect();
    let available = perf::ALL
        .iter()
        .filter(|e| !matches!(perf::probe().access(**e), Access::Unavailable(_)))
        .count();
    assert!(!fds.is_empty() && fds.len() <= available, "{fds:?}");
    let floor = chaperone::fd_floor();
    assert!(fds.iter().all(|&fd| fd >= floor), "{fds:?} below {floor}");
    a.signal("p", libc::SIGKILL).expect("signal");
    wait(&a, "p");
    assert_eq!(perf_fds_settled(&held), held, "perf fds after exit");
    // Many short procs leave none behind either.
    let specs: serde_json::Map<String, Value> = (0..10)
        .map(|i| {
            (
                format!("t{i}"),
                json!({"argv": ["/bin/true"], "perf": true}),
            )
        })
        .collect();
    start(&a, &json!({"specs": specs}));
    for i in 0..10 {
        assert_ok(&wait(&a, &format!("t{i}")));
    }
    assert_eq!(perf_fds_settled(&held), held, "perf fds after 10 procs");
}

/// The agent's perf fds once the closing thread has had up to 5 s to close
/// the finished processes' counters (they are closed off the reactor, soon
/// after the exit rather than before its result is answered).
fn perf_fds_settled(held: &[i32]) -> Vec<i32> {
    let t = std::time::Instant::now();
    loop {
        let fds = agent_perf_fds();
        if fds == held || t.elapsed() > std::time::Duration::from_secs(5) {
            return fds;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn child_gets_no_perf_fds() {
    let _g = serial();
    let res = run_one(json!({
        "argv": [PYTHON, "-c", PY_LIST_FDS],
        "fds": [["stdout", mem_utf8()]],
        "perf": true,
    }));
    assert_ok(&res);
    let out = string_of(&res, "stdout");
    assert_eq!(parse_fd_list(&out), [0, 1, 2].into(), "{out}");
}

#[test]
fn no_perf_object_unless_asked() {
    let _g = serial();
    let res = run_one(json!({"argv": ["/bin/true"]}));
    assert_ok(&res);
    assert_eq!(res.perf, None);
    let v = serde_json::to_value(&res).unwrap();
    assert!(v.get("perf").is_none(), "{v}");
    // The agent default applies to specs without the field, not against `false`.
    let a = Agent::new(Config {
        perf: true,
        ..Config::default()
    })
    .expect("agent");
    start(
        &a,
        &json!({"specs": {"on": {"argv": ["/bin/true"]}, "off": {"argv": ["/bin/true"], "perf": false}}}),
    );
    assert!(perf_of(&wait(&a, "on")).counts.len() == perf::ALL.len());
    assert_eq!(wait(&a, "off").perf, None);
}

#[test]
fn unknown_event_rejects_the_request() {
    let _g = serial();
    let a = agent();
    let input = chaperone::spec::parse_input(
        br#"{"specs": {"p": {"argv": ["/bin/true"], "perf": ["task_clock", "cpu_cycles"]}}}"#,
    )
    .expect("parses");
    match a.start(input) {
        Err(StartError::Spec(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("perf") && msg.contains("\"cpu_cycles\""),
                "{msg}"
            );
        }
        other => panic!("expected a spec error, got {other:?}"),
    }
}

#[test]
fn cli_perf_flag_prints_the_perf_object() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spec.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&json!({"specs": {"t": {"argv": ["/bin/true"]}}})).unwrap(),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["--perf", "--print"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run chaperone");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let p = &v["t"]["perf"];
    assert!(p["task_clock"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(p["page_faults"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(p.get("cycles").is_some(), "{v}");
    assert!(p["exclude_kernel"].is_array(), "{v}");
    assert!(p["unavailable"].is_object(), "{v}");

    // Without the flag: no perf object; a bad name: the start error's exit code.
    let (code, v) = run_cli(&json!({"specs": {"t": {"argv": ["/bin/true"]}}}));
    assert_eq!(code, 0);
    assert!(v["t"].get("perf").is_none(), "{v}");
    let (code, _) = run_cli(&json!({"specs": {"t": {"argv": ["/bin/true"], "perf": ["nope"]}}}));
    assert_eq!(code, i32::from(chaperone::cli::EXIT_START));
}

// A child whose exec fails never ran its program: its counts are null with the
// reason (not zeros), and its counters are closed at once.
#[test]
fn failed_exec_reports_null_counts_not_zeros() {
    let _g = serial();
    let a = agent();
    perf::probe();
    let held = agent_perf_fds();
    start(
        &a,
        &json!({"specs": {"p": {"argv": ["/no/such/program"], "perf": true}}}),
    );
    let res = wait(&a, "p");
    assert_eq!(res.state, State::Error, "{:?}", res.errors);
    let p = perf_of(&res);
    assert!(!p.counts.is_empty());
    for (name, v) in &p.counts {
        assert_eq!(*v, None, "{name} counted for a process that never ran");
        assert!(
            p.unavailable
                .get(name)
                .is_some_and(|why| why.contains("before exec") || why.contains("PMU")),
            "{name}: {:?}",
            p.unavailable.get(name)
        );
    }
    assert_eq!(agent_perf_fds(), held, "the counters are closed");
}
