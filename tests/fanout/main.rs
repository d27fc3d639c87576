//! High fan-out: every byte of every process arrives, however many run at once,
//! and nothing waits behind a burst of spawns.
//!
//! Each request runs through the CLI (`chaperone --print`), in its own process,
//! as a batch host would. The tests take a lock so that two fan-outs never
//! share the machine's pids and cores at once.

#[path = "../util/mod.rs"]
mod util;

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// One fan-out at a time (pid_max, cores and the fd limit are the machine's).
static MACHINE: Mutex<()> = Mutex::new(());

fn machine() -> std::sync::MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` processes that each write a line naming themselves to stdout and one to
/// stderr, both captured in memory, or (with `kept`) in files in that directory.
fn fan_spec(n: usize, kept: Option<&Path>) -> Value {
    let mut specs = serde_json::Map::new();
    for i in 0..n {
        let id = format!("p{i:05}");
        let cap = |fd: &str| match kept {
            Some(dir) => json!({"capture": {"mode": "file",
                "path": dir.join(format!("{id}.{fd}")), "encoding": "utf-8"}}),
            None => util::mem_utf8(),
        };
        specs.insert(
            id.clone(),
            json!({
                "argv": ["/bin/sh", "-c", "echo \"out $0\"; echo \"err $0\" >&2", id],
                "fds": [["stdout", cap("stdout")], ["stderr", cap("stderr")]],
            }),
        );
    }
    json!({ "specs": specs })
}

/// Runs `spec` through `chaperone --print` with `args`, under `ulimit -n` if
/// given; returns the results.
fn run(spec: &Value, args: &[&str], nofile: Option<u32>) -> Value {
    run_under(
        spec,
        args,
        &nofile.map_or(String::new(), |n| format!("ulimit -n {n} && ")),
    )
}

/// [`run`] after the shell commands `limit` (each ending in `&&`).
fn run_under(spec: &Value, args: &[&str], limit: &str) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spec.json");
    std::fs::write(&path, serde_json::to_vec(spec).expect("spec JSON")).expect("write spec");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("{limit}exec \"$0\" --print \"$@\""))
        .arg(util::bin())
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = cmd.output().expect("run chaperone");
    assert!(
        out.status.success(),
        "chaperone failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("results are JSON")
}

/// Asserts that each of the `n` processes of [`fan_spec`] terminated cleanly
/// and that every byte it wrote arrived (in memory, or in its kept files).
fn assert_every_byte(results: &Value, n: usize, kept: Option<&Path>) {
    let procs = results.as_object().expect("results object");
    assert_eq!(procs.len(), n, "one result per process");
    let mut lost = Vec::new();
    for (id, res) in procs {
        util::assert_exit0(res);
        for fd in ["stdout", "stderr"] {
            let want = format!("{} {id}\n", &fd[3..]);
            let got = match kept {
                Some(dir) => std::fs::read_to_string(dir.join(format!("{id}.{fd}")))
                    .unwrap_or_else(|e| panic!("{id} {fd}: kept file: {e}")),
                None => util::text_of(res, fd),
            };
            if got != want {
                lost.push(format!("{id} {fd}: {got:?}"));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} captures lost bytes: {:?}",
        lost.len(),
        2 * n,
        &lost[..lost.len().min(10)]
    );
}

fn fan_out(n: usize, runs: usize) {
    let _m = machine();
    let spec = fan_spec(n, None);
    for _ in 0..runs {
        assert_every_byte(&run(&spec, &[], None), n, None);
    }
}

fn fan_out_kept(n: usize, runs: usize) {
    let _m = machine();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = fan_spec(n, Some(dir.path()));
        assert_every_byte(&run(&spec, &[], None), n, Some(dir.path()));
    }
}

#[test]
fn every_byte_arrives_from_2000_processes() {
    fan_out(2000, 2);
}

#[test]
fn every_byte_arrives_from_5000_processes() {
    fan_out(5000, 1);
}

#[test]
fn every_byte_arrives_from_10000_processes() {
    fan_out(10_000, 1);
}

#[test]
fn every_byte_reaches_kept_files_from_2000_processes() {
    fan_out_kept(2000, 1);
}

#[test]
fn every_byte_reaches_kept_files_from_10000_processes() {
    fan_out_kept(10_000, 1);
}

/// 20,000 processes × 3 fds is more than `RLIMIT_NOFILE` (20,000 here) allows at
/// once: the default `--max-running` queues the rest, and every output arrives.
#[test]
fn a_request_larger_than_the_fd_limit_completes_with_every_output() {
    let _m = machine();
    let n = 20_000;
    assert_every_byte(&run(&fan_spec(n, None), &[], None), n, None);
}

/// With `--max-running` far above what the fd limit allows, processes that
/// cannot get their fds wait for others to let go of theirs (EMFILE), and
/// nothing fails or loses output.
#[test]
fn processes_short_of_fds_wait_for_them_instead_of_failing() {
    let _m = machine();
    let n = 600;
    let results = run(&fan_spec(n, None), &["--max-running", "100000"], Some(400));
    assert_every_byte(&results, n, None);
}

/// A process that needs more fds than the limit allows even with nothing else
/// running fails with an error naming the limit; the others are unaffected.
#[test]
fn a_process_that_can_never_get_its_fds_is_told_why() {
    let _m = machine();
    let mut spec = fan_spec(50, None);
    let fds: Vec<Value> = (3..600)
        .map(|fd| json!([fd.to_string(), {"null": {"flags": "Read"}}]))
        .collect();
    spec["specs"]["greedy"] = json!({"argv": ["/bin/true"], "fds": fds});
    let mut results = run(&spec, &[], Some(300));
    let greedy = results
        .as_object_mut()
        .and_then(|r| r.remove("greedy"))
        .expect("greedy's result");
    assert_eq!(greedy["state"], "error", "{greedy}");
    let errors = greedy["errors"].to_string();
    assert!(
        errors.contains("RLIMIT_NOFILE is 300"),
        "the error names the limit: {errors}"
    );
    assert_every_byte(&results, 50, None);
}

/// Tempfile captures (the default mode) keep their files open until their
/// processes are deleted. Under a soft fd limit of 300 below a higher hard
/// one, 1,000 processes with two each all run: the agent raises its soft
/// limit to the hard one. Their children still start with 300, unless a
/// spec says otherwise. (Before, at a soft limit of 1,024, a third of 1,500
/// such processes failed for want of fds.)
#[test]
fn the_agent_raises_its_soft_fd_limit_and_children_keep_the_given_one() {
    let _m = machine();
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    if hard.is_some_and(|h| h < 2_500) {
        eprintln!("SKIP: the hard fd limit ({hard:?}) is too low to raise to");
        return;
    }
    let n = 1000;
    let mut specs = serde_json::Map::new();
    let tmp = json!({"capture": {"mode": "tempfile", "encoding": "utf-8"}});
    for i in 0..n {
        specs.insert(
            format!("t{i:04}"),
            json!({"argv": ["/bin/sh", "-c", "ulimit -Sn; echo err >&2"],
                   "fds": [["stdout", tmp], ["stderr", tmp]]}),
        );
    }
    specs.insert(
        "own".into(),
        json!({"argv": ["/bin/sh", "-c", "ulimit -Sn"], "rlimits": {"nofile": 500},
               "fds": [["stdout", tmp]]}),
    );
    let results = run_under(&json!({ "specs": specs }), &[], "ulimit -S -n 300 && ");
    let procs = results.as_object().expect("results");
    assert_eq!(procs.len(), n + 1);
    for (id, res) in procs {
        util::assert_exit0(res);
        let want = if id == "own" { "500\n" } else { "300\n" };
        assert_eq!(util::text_of(res, "stdout"), want, "{id}");
    }
}

/// Under a hard fd limit, processes that cannot get fds because ended ones'
/// tempfile captures hold them are told so, and what to do: the limit alone
/// would not say why lowering `--max-running` does not help.
#[test]
fn fds_held_by_ended_processes_captures_are_named() {
    let _m = machine();
    let n = 400;
    let mut specs = serde_json::Map::new();
    for i in 0..n {
        specs.insert(
            format!("t{i:03}"),
            json!({"argv": ["/bin/echo", "hi"],
                   "fds": [["stdout", {"capture": {"mode": "tempfile", "encoding": "utf-8"}}]]}),
        );
    }
    let results = run(&json!({ "specs": specs }), &[], Some(300));
    let procs = results.as_object().expect("results");
    let failed: Vec<&Value> = procs.values().filter(|r| r["state"] == "error").collect();
    assert!(!failed.is_empty(), "300 fds cannot hold 400 tempfiles");
    for res in &failed {
        let errors = res["errors"].to_string();
        assert!(
            errors.contains("RLIMIT_NOFILE is 300")
                && errors.contains("hold the files of captures of processes that have ended"),
            "{errors}"
        );
    }
    for res in procs.values().filter(|r| r["state"] != "error") {
        assert_eq!(util::text_of(res, "stdout"), "hi\n");
    }
}

/// `--max-running N`: never more than N processes between start and exit.
#[test]
fn max_running_bounds_the_processes_alive_at_once() {
    let _m = machine();
    let n = 60;
    let mut specs = serde_json::Map::new();
    for i in 0..n {
        specs.insert(format!("s{i:02}"), json!({"argv": ["/bin/sleep", "0.05"]}));
    }
    let results = run(&json!({ "specs": specs }), &["--max-running", "7"], None);
    // Each process's [start, stop] interval; count the most that overlap.
    let mut edges = Vec::new();
    for res in results.as_object().expect("results").values() {
        util::assert_exit0(res);
        let t = |k: &str| chrono_free_seconds(res["times"][k].as_str().expect("timestamp"));
        edges.push((t("start"), 1i32));
        edges.push((t("stop"), -1i32));
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut alive, mut most) = (0, 0);
    for (_, d) in edges {
        alive += d;
        most = most.max(alive);
    }
    assert!(most <= 7, "{most} processes were alive at once");
    assert!(
        most >= 2,
        "processes ran one at a time ({most}): no concurrency"
    );
}

/// A burst of spawns does not hold up a timer, an exit or a measurement: a
/// timeout fires on time and a short process's `elapsed` is its own.
#[test]
fn a_spawn_burst_delays_neither_timers_nor_exits() {
    let _m = machine();
    let mut specs = serde_json::Map::new();
    specs.insert(
        "a-sleeper".into(),
        json!({"argv": ["/bin/sleep", "100"], "timeout": {"after": 0.2, "signal": "SIGKILL"}}),
    );
    for i in 0..3000 {
        specs.insert(format!("t{i:04}"), json!({"argv": ["/bin/true"]}));
    }
    let results = run(&json!({ "specs": specs }), &[], None);
    let sleeper = &results["a-sleeper"];
    let start = chrono_free_seconds(sleeper["times"]["start"].as_str().expect("start"));
    let fired = chrono_free_seconds(
        sleeper["timeout"]["fired_at"]
            .as_str()
            .unwrap_or_else(|| panic!("timeout did not fire: {sleeper}")),
    );
    let late = fired - start - 0.2;
    assert!(
        (-0.001..0.1).contains(&late),
        "the timeout fired {late:.3} s after its time"
    );
    let mut elapsed: Vec<f64> = results
        .as_object()
        .expect("results")
        .iter()
        .filter(|(id, _)| id.starts_with('t'))
        .map(|(_, r)| r["times"]["elapsed"].as_f64().expect("elapsed"))
        .collect();
    elapsed.sort_by(f64::total_cmp);
    let median = elapsed[elapsed.len() / 2];
    assert!(median < 0.1, "median elapsed of /bin/true: {median:.3} s");
}

/// A completion queue of 8 entries under 1000 processes' exits and reads: the
/// queue overflows all the time (the kernel keeps the rest in its overflow
/// list, and a multishot read that could not post ends with its last bytes in
/// a completion that comes after its process's exit), and nothing is lost.
#[test]
fn nothing_is_lost_when_the_completion_queue_overflows() {
    let _m = machine();
    let config = chaperone::Config {
        ring_entries: 2, // the completion queue has 4 × as many
        ..chaperone::Config::default()
    };
    let agent = chaperone::Agent::new(config).expect("agent starts");
    let n = 1000;
    let ids = util::start(&agent, &fan_spec(n, None));
    assert_eq!(ids.len(), n);
    let mut lost = Vec::new();
    for id in &ids {
        let res = util::wait(&agent, id);
        assert!(res.errors.is_empty(), "{id}: {:?}", res.errors);
        for fd in ["stdout", "stderr"] {
            let got = util::string_of(&res, fd);
            if got != format!("{} {id}\n", &fd[3..]) {
                lost.push(format!("{id} {fd}: {got:?}"));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} captures lost bytes: {lost:?}",
        lost.len()
    );
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as chaperone writes
/// them (`2026-12-01T19:54:30.349768969+00:00`).
fn chrono_free_seconds(ts: &str) -> f64 {
    let (date, rest) = ts.split_once('T').expect("date and time");
    let mut d = date
        .split('-')
        .map(|x| x.parse::<i64>().expect("date field"));
    let (y, m, day) = (
        d.next().expect("year"),
        d.next().expect("month"),
        d.next().expect("day"),
    );
    let time = rest
        .trim_end_matches('Z')
        .split(['+'])
        .next()
        .expect("time");
    let mut t = time.split(':');
    let h: f64 = t.next().expect("hour").parse().expect("hour");
    let mi: f64 = t.next().expect("minute").parse().expect("minute");
    let s: f64 = t.next().expect("second").parse().expect("second");
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days as f64 * 86_400.0 + h * 3600.0 + mi * 60.0 + s
}
