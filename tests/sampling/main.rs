//! `/proc` sampling while processes run (issue 4): `statm`/`stat` on a timer and on
//! every live result request, the last sample and the peak kept after exit,
//! `/proc/<pid>/io` in results, and live results that are current.

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::State;
use chaperone::{Agent, Config};
use serde_json::json;
use std::time::Duration;
use util::*;

fn agent_sampling(every: Option<Duration>) -> Agent {
    Agent::new(Config {
        sample_interval: every,
        ..Config::default()
    })
    .expect("agent starts")
}

const MIB: u64 = 1 << 20;

// A process that fills 200 MiB, sleeps and exits: after it exits, `proc_statm`
// is the last sample taken while it ran (not null, and not a read of the
// half-torn-down address space during exit), and the peak resident size seen is
// at least the 200 MiB it touched.
#[test]
fn statm_last_sample_and_peak_survive_exit() {
    let a = agent_sampling(Some(Duration::from_millis(50)));
    // os._exit: no interpreter teardown freeing the buffer before the exit, so
    // the last sample taken while it runs is of the full 200 MiB; samples taken
    // during the kernel's own exit teardown must not replace it.
    let code = "import os, time; b = b'\\x01' * (200 << 20); time.sleep(0.6); os._exit(0)";
    start(
        &a,
        &json!({"specs": {"big": {"argv": [PYTHON, "-c", code]}}}),
    );
    let res = wait(&a, "big");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    let statm = res.proc_statm.expect("last statm sample kept after exit");
    assert!(
        statm.resident >= 200 * MIB,
        "last sample resident {} < 200 MiB",
        statm.resident
    );
    let samples = res.statm_samples.expect("sampling summary");
    assert!(samples.count >= 2, "sampled {} times", samples.count);
    assert!(
        samples.peak_resident >= 200 * MIB,
        "peak {} < 200 MiB",
        samples.peak_resident
    );
    assert!(samples.peak_resident >= statm.resident);
    assert!(samples.peak_size >= statm.size);
}

// The peak is the largest sample, not the last: a process that frees most of its
// memory before exiting keeps the earlier, higher peak.
#[test]
fn peak_is_the_largest_sample_not_the_last() {
    let a = agent_sampling(Some(Duration::from_millis(40)));
    let code = "import time, mmap\n\
                m = mmap.mmap(-1, 120 << 20)\n\
                m.write(b'\\x01' * (120 << 20))\n\
                time.sleep(0.4)\n\
                m.close()\n\
                time.sleep(0.4)";
    start(&a, &json!({"specs": {"p": {"argv": [PYTHON, "-c", code]}}}));
    let res = wait(&a, "p");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    let last = res.proc_statm.expect("last sample");
    let samples = res.statm_samples.expect("summary");
    assert!(samples.peak_resident >= 120 * MIB, "{samples:?}");
    assert!(
        last.resident < samples.peak_resident - 60 * MIB,
        "the last sample ({}) follows the unmap; the peak ({}) does not",
        last.resident,
        samples.peak_resident
    );
}

// A live result carries the current elapsed time and a fresh sample (each request
// samples), even with the timer off.
#[test]
fn live_results_are_current() {
    let a = agent_sampling(None);
    start(&a, &json!({"specs": {"s": {"argv": ["/bin/sleep", "5"]}}}));
    let first = a.result("s").expect("result");
    assert_eq!(first.state, State::Running);
    assert!(first.proc_statm.is_some(), "live result has statm");
    assert!(first.proc_stat.is_some(), "live result has stat");
    assert!(first.proc_io.is_some(), "live result has io");
    let n1 = first.statm_samples.as_ref().expect("summary").count;
    std::thread::sleep(Duration::from_millis(150));
    let second = a.result("s").expect("result");
    let n2 = second.statm_samples.as_ref().expect("summary").count;
    assert_eq!(n2, n1 + 1, "every live request samples once");
    assert!(
        second.times.elapsed >= first.times.elapsed + 0.1,
        "elapsed moves: {} then {}",
        first.times.elapsed,
        second.times.elapsed
    );
    assert!(second.times.stop.is_none());
    a.signal("s", libc::SIGKILL).expect("kill");
    let done = wait(&a, "s");
    assert!(done.proc_statm.is_some(), "the request's sample is kept");
}

// With the timer off and no request while it ran, nothing was sampled: null, not
// zeros read from the zombie.
#[test]
fn unsampled_process_has_null_statm() {
    let a = agent_sampling(None);
    start(&a, &json!({"specs": {"t": {"argv": ["/bin/true"]}}}));
    let res = wait(&a, "t");
    assert!(res.proc_statm.is_none(), "{:?}", res.proc_statm);
    assert!(res.statm_samples.is_none());
    assert!(res.proc_stat.is_some(), "the zombie stat is still read");
}

// `/proc/<pid>/io` is read at exit, before reaping: a process that copies 3 MiB
// through read and write shows at least that much in rchar and wchar.
#[test]
fn proc_io_counts_at_exit() {
    let a = agent_sampling(None);
    start(
        &a,
        &json!({"specs": {"io": {"argv": ["/bin/sh", "-c", "exec head -c 3145728 /dev/zero >/dev/null"]}}}),
    );
    let res = wait(&a, "io");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    let io = res.proc_io.expect("io counters at exit");
    assert!(io.rchar >= 3 * MIB, "rchar {}", io.rchar);
    assert!(io.wchar >= 3 * MIB, "wchar {}", io.wchar);
    assert!(io.syscw >= 1);
}

// Processes that exit between (or during) samples are not errors: many short
// processes under a 1 ms timer all finish cleanly.
#[test]
fn vanishing_processes_are_not_errors() {
    let a = agent_sampling(Some(Duration::from_millis(1)));
    let specs: serde_json::Map<String, serde_json::Value> = (0..200)
        .map(|i| {
            (
                format!("t{i}"),
                json!({"argv": ["/bin/sh", "-c", if i % 2 == 0 { "exit 0" } else { "sleep 0.01" }]}),
            )
        })
        .collect();
    start(&a, &json!({ "specs": specs }));
    for i in 0..200 {
        let res = wait(&a, &format!("t{i}"));
        assert_eq!(res.state, State::Terminated, "t{i}: {:?}", res.errors);
        assert!(res.errors.is_empty());
    }
}

// The CLI's --sample-interval reaches the agent; a bad value is rejected.
#[test]
fn cli_sample_interval() {
    let spec = json!({"specs": {"s": {"argv": ["/bin/sleep", "0.4"]}}});
    let out = std::process::Command::new(bin())
        .args(["--print", "--sample-interval", "0.05", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(&serde_json::to_vec(&spec).expect("json"))?;
            c.wait_with_output()
        })
        .expect("runs");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let s = &v["s"];
    assert!(s["proc_statm"]["resident"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(
        s["statm_samples"]["count"].as_u64().unwrap_or(0) >= 2,
        "{s}"
    );
    assert!(s["proc_io"]["rchar"].is_u64(), "{s}");

    let bad = std::process::Command::new(bin())
        .args(["--print", "--sample-interval", "soon", "-"])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("sample-interval"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
