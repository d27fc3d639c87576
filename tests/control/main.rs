//! Child control (issue 3): each start-state field of a spec, proven by what the
//! child itself sees — `cwd`, `umask`, `pdeath_sig`, `signals`, `rlimits`,
//! `setsid`/`process_group`, `user`/`group`/`env.user_env`, `timeout` and
//! `kill_group` — and the per-proc errors for bad values.

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::{ProcRes, State};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::*;

/// Runs one proc `spec` (with stdout captured as utf-8) on a fresh agent and
/// returns its final result.
fn run_one(spec: Value) -> ProcRes {
    let mut spec = spec;
    spec["fds"] = json!([["stdout", mem_utf8()], ["stderr", mem_utf8()]]);
    let a = agent();
    start(&a, &json!({"specs": {"p": spec}}));
    wait(&a, "p")
}

fn assert_ok(res: &ProcRes) {
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    assert_eq!(
        res.status.as_ref().and_then(|s| s.exit_code),
        Some(0),
        "stderr: {}",
        string_of(res, "stderr")
    );
}

/// `(pid, pgrp, session)` from `/proc/<pid>/stat` text.
fn stat_ids(stat: &str) -> (i32, i32, i32) {
    let pid = stat.split_whitespace().next().unwrap().parse().unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // state ppid pgrp session
    (pid, f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// The process state letter of `pid`, or `None` once it is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet) within `limit`.
fn gone_within(pid: i32, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if matches!(proc_state(pid), None | Some('Z')) {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

//------------------------------------------------------------------------------
// umask, cwd, rlimits
//------------------------------------------------------------------------------

#[test]
fn umask_is_the_childs() {
    for (umask, shown) in [(18, "0022\n"), (63, "0077\n"), (0, "0000\n")] {
        let res = run_one(json!({"argv": ["/bin/sh", "-c", "umask"], "umask": umask}));
        assert_ok(&res);
        assert_eq!(string_of(&res, "stdout"), shown, "umask {umask}");
        assert_eq!(res.umask, Some(umask));
    }
    // Without the field: the agent's umask, reported in the result.
    let res = run_one(json!({"argv": ["/bin/sh", "-c", "umask"]}));
    assert_ok(&res);
    let agent_umask = res.umask.expect("the agent's umask is reported");
    assert_eq!(string_of(&res, "stdout"), format!("{agent_umask:04o}\n"));
}

#[test]
fn cwd_is_the_childs() {
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().canonicalize().unwrap();
    let res = run_one(json!({"argv": ["/bin/pwd"], "cwd": dir_path}));
    assert_ok(&res);
    assert_eq!(
        string_of(&res, "stdout"),
        format!("{}\n", dir_path.display())
    );
    assert_eq!(res.cwd.as_deref(), dir_path.to_str());

    // Without it: the agent's directory.
    let res = run_one(json!({"argv": ["/bin/pwd"]}));
    assert_ok(&res);
    let here = std::env::current_dir().unwrap();
    assert_eq!(string_of(&res, "stdout"), format!("{}\n", here.display()));
    assert_eq!(res.cwd.as_deref(), here.to_str());
}

#[test]
fn relative_file_paths_are_opened_in_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent();
    start(
        &a,
        &json!({"specs": {"p": {"argv": ["/bin/echo", "here"], "cwd": dir.path(),
                                "fds": [["stdout", {"file": {"path": "out.txt", "flags": "Write"}}]]}}}),
    );
    let res = wait(&a, "p");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "here\n"
    );
}

// A relative file path that is not there names the cwd it was looked in:
// with a cwd that does not exist, nothing else would point at it (files are
// opened before the child's chdir).
#[test]
fn a_missing_relative_file_names_the_cwd_it_was_looked_in() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"p": {"argv": ["/bin/cat"], "cwd": "/no/such/dir",
                                "fds": [["stdin", {"file": {"path": "in.txt", "flags": "Read"}}]]}}}),
    );
    let res = wait(&a, "p");
    assert_eq!(res.state, State::Error);
    assert_eq!(
        res.errors,
        [
            "failed to set up fd 0: No such file or directory (os error 2): in.txt is relative \
             to cwd /no/such/dir"
        ]
    );
}

#[test]
fn missing_cwd_is_a_chdir_failure_naming_the_path() {
    let res = run_one(json!({"argv": ["/bin/pwd"], "cwd": "/no/such/dir"}));
    assert_eq!(res.state, State::Error);
    assert_eq!(
        res.errors,
        ["chdir failed: /no/such/dir: No such file or directory (os error 2)"]
    );
    let f = res.failure.expect("failure extension");
    assert_eq!((f.stage.as_str(), f.errno), ("chdir", 2));
    assert_eq!(res.status.and_then(|s| s.exit_code), Some(63));
}

// A relative exe is found from the child's directory, as the docs say.
#[test]
fn a_relative_exe_is_found_from_the_cwd() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello"), "#!/bin/sh\necho from cwd\n").unwrap();
    std::fs::set_permissions(
        dir.path().join("hello"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let res = run_one(json!({"argv": ["./hello"], "cwd": dir.path()}));
    assert_ok(&res);
    assert_eq!(string_of(&res, "stdout"), "from cwd\n");
}

// The directory is entered as the user the child runs as: the agent's
// privilege does not hand it one that user cannot enter.
#[test]
fn the_cwd_is_entered_as_the_childs_user() {
    if !is_root() {
        chaperone::test_skip("the_cwd_is_entered_as_the_childs_user", "not root", false);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let res = run_one(json!({"argv": ["/bin/pwd"], "user": "nobody", "cwd": private}));
    assert_eq!(res.state, State::Error);
    let f = res.failure.as_ref().expect("failure extension");
    assert_eq!(
        (f.stage.as_str(), f.errno),
        ("chdir", libc::EACCES),
        "{:?}",
        res.errors
    );
    let res = run_one(json!({"argv": ["/bin/pwd"], "user": "nobody", "cwd": open}));
    assert_ok(&res);
    assert_eq!(string_of(&res, "stdout").trim_end(), open.to_str().unwrap());
}

#[test]
fn rlimit_nofile_is_the_childs() {
    let res = run_one(
        json!({"argv": ["/bin/sh", "-c", "ulimit -n; ulimit -Hn; ulimit -c"],
                             "rlimits": {"nofile": [123, 456], "core": null}}),
    );
    assert_ok(&res);
    assert_eq!(string_of(&res, "stdout"), "123\n456\nunlimited\n");
}

//------------------------------------------------------------------------------
// signals
//------------------------------------------------------------------------------

#[test]
fn signal_mask_and_ignore_are_the_childs() {
    let res = run_one(json!({"argv": ["/bin/cat", "/proc/self/status"],
                             "signals": {"mask": ["SIGUSR1", "HUP", 34],
                                         "ignore": ["USR2", "SIGPIPE"]}}));
    assert_ok(&res);
    let status = string_of(&res, "stdout");
    let blk = (1u64 << (libc::SIGUSR1 - 1)) | (1 << (libc::SIGHUP - 1)) | (1 << 33);
    let ign = (1u64 << (libc::SIGUSR2 - 1)) | (1 << (libc::SIGPIPE - 1));
    assert_eq!(status_mask(&status, "SigBlk"), blk, "{status}");
    assert_eq!(status_mask(&status, "SigIgn"), ign, "{status}");
    assert_eq!(status_mask(&status, "SigCgt"), 0, "{status}");

    // The result's proc_stat names the same sets (live, from the agent's side).
    let a = agent();
    start(
        &a,
        &json!({"specs": {"s": {"argv": ["/bin/sleep", "100"],
                                "signals": {"mask": ["SIGUSR1", "HUP"],
                                            "ignore": ["USR2", "SIGPIPE"]}}}}),
    );
    let stat = a.result("s").unwrap().proc_stat.expect("proc_stat");
    assert_eq!(stat.blocked, ["SIGHUP", "SIGUSR1"]);
    assert_eq!(stat.sigignore, ["SIGUSR2", "SIGPIPE"]);
    a.signal("s", libc::SIGKILL).unwrap();
    wait(&a, "s");
}

#[test]
fn default_signal_state_is_clean() {
    let res = run_one(json!({"argv": ["/bin/cat", "/proc/self/status"]}));
    assert_ok(&res);
    let status = string_of(&res, "stdout");
    assert_eq!(status_mask(&status, "SigBlk"), 0, "{status}");
    assert_eq!(status_mask(&status, "SigIgn"), 0, "{status}");
}

//------------------------------------------------------------------------------
// session and process group
//------------------------------------------------------------------------------

#[test]
fn setsid_by_default() {
    let res = run_one(json!({"argv": ["/bin/cat", "/proc/self/stat"]}));
    assert_ok(&res);
    let (pid, pgrp, session) = stat_ids(&string_of(&res, "stdout"));
    assert_eq!((pgrp, session), (pid, pid));
}

#[test]
fn process_group_zero_makes_a_new_group_in_the_agents_session() {
    let (_, _, agent_session) = stat_ids(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let res = run_one(json!({"argv": ["/bin/cat", "/proc/self/stat"], "process_group": 0}));
    assert_ok(&res);
    let (pid, pgrp, session) = stat_ids(&string_of(&res, "stdout"));
    assert_eq!(pgrp, pid);
    assert_eq!(session, agent_session);
}

#[test]
fn process_group_joins_an_existing_group() {
    // A leader in a new group in our session, then a proc that joins it.
    let mut leader = Command::new("/bin/sleep")
        .arg("100")
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = leader.id() as i32;
    let res = run_one(json!({"argv": ["/bin/cat", "/proc/self/stat"], "process_group": pgid}));
    leader.kill().unwrap();
    leader.wait().unwrap();
    assert_ok(&res);
    let (_, pgrp, _) = stat_ids(&string_of(&res, "stdout"));
    assert_eq!(pgrp, pgid);
}

#[test]
fn setsid_false_stays_in_the_agents_session_and_group() {
    let (_, agent_pgrp, agent_session) =
        stat_ids(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let res = run_one(json!({"argv": ["/bin/cat", "/proc/self/stat"], "setsid": false}));
    assert_ok(&res);
    let (_, pgrp, session) = stat_ids(&string_of(&res, "stdout"));
    assert_eq!((pgrp, session), (agent_pgrp, agent_session));
}

//------------------------------------------------------------------------------
// user, group, user_env
//------------------------------------------------------------------------------

#[test]
fn user_and_group_are_the_childs() {
    if !is_root() {
        chaperone::test_skip("user_and_group_are_the_childs", "not root", false);
        return;
    }
    let res = run_one(json!({"argv": ["/usr/bin/id"], "user": "nobody"}));
    assert_ok(&res);
    let out = string_of(&res, "stdout");
    assert!(out.starts_with("uid=65534(nobody) gid=65534"), "{out}");
    assert!(!out.contains("groups=0"), "root's groups kept: {out}");

    let res2 = run_one(json!({"argv": ["/bin/sh", "-c", "id -u; id -g; id -G"],
                              "user": 4321, "group": 1234}));
    assert_ok(&res2);
    assert_eq!(string_of(&res2, "stdout"), "4321\n1234\n1234\n");
}

#[test]
fn user_env_sets_home_user_logname_shell() {
    if !is_root() {
        chaperone::test_skip("user_env_sets_home_user_logname_shell", "not root", false);
        return;
    }
    let res = run_one(
        json!({"argv": ["/bin/sh", "-c", "echo $HOME $USER $LOGNAME $SHELL $KEEP"],
                             "user": "nobody",
                             "env": {"user_env": true, "report": true,
                                     "vars": {"KEEP": "k", "SHELL": "/bin/sh"}}}),
    );
    assert_ok(&res);
    // `vars` applies after user_env, so SHELL is the spec's.
    assert_eq!(
        string_of(&res, "stdout"),
        "/nonexistent nobody nobody /bin/sh k\n"
    );
    let env = res.env.expect("env in result");
    assert_eq!(env.get("USER").map(String::as_str), Some("nobody"));
}

#[test]
fn result_env_is_what_the_child_got_without_secrets() {
    let a = chaperone::Agent::new(chaperone::Config::default()).unwrap();
    let spec = json!({"specs": {"p": {"argv": ["/usr/bin/env"],
        "env": {"inherit": false, "report": true,
                "vars": {"A": "1", "PROCSTAR_AGENT_TOKEN": "secret"}},
        "fds": [["stdout", mem_utf8()]]}}});
    start(&a, &spec);
    let res = wait(&a, "p");
    assert_eq!(string_of(&res, "stdout"), "A=1\n");
    let env = res.env.expect("env");
    assert_eq!(env.len(), 1);
    assert_eq!(env["A"], "1");
}

//------------------------------------------------------------------------------
// pdeath_sig
//------------------------------------------------------------------------------

/// Starts `chaperone --exit` on a `sleep 100` (extra spec fields `extra`), waits
/// for the sleeper's pid, SIGKILLs the agent and returns the sleeper's pid.
fn kill_agent_under_sleeper(extra: Value) -> i32 {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut spec = json!({"argv": ["/bin/sh", "-c",
                                    format!("echo $$ > {}; exec sleep 100", pidfile.display())]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, json!({"specs": {"p": spec}}).to_string()).unwrap();
    let mut cli = Command::new(bin())
        .arg("--exit")
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            // Wait for the exec so that the pid is sleep's, not sh's.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break pid;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "child never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    cli.kill().unwrap(); // SIGKILL
    cli.wait().unwrap();
    pid
}

#[test]
fn pdeath_sig_stops_the_child_when_the_agent_dies() {
    let pid = kill_agent_under_sleeper(json!({"pdeath_sig": "SIGTERM"}));
    assert!(
        gone_within(pid, Duration::from_secs(1)),
        "child {pid} outlived the agent by 1 s"
    );
}

#[test]
fn without_pdeath_sig_the_child_survives_the_agent() {
    let pid = kill_agent_under_sleeper(json!({}));
    std::thread::sleep(Duration::from_millis(500));
    let alive = !matches!(proc_state(pid), None | Some('Z'));
    // Clean up before asserting.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .ok();
    assert!(alive, "child {pid} died with the agent without pdeath_sig");
}

#[test]
fn agent_wide_pdeath_sig_flag_applies_to_specs_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let spec = json!({"specs": {"p": {"argv": ["/bin/sh", "-c",
        format!("echo $$ > {}; exec sleep 100", pidfile.display())]}}});
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let mut cli = Command::new(bin())
        .args(["--exit", "--pdeath-sig", "SIGKILL"])
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        if let Ok(Some(st)) = cli.try_wait() {
            panic!("chaperone exited: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "child never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    cli.kill().unwrap();
    cli.wait().unwrap();
    assert!(
        gone_within(pid, Duration::from_secs(1)),
        "child {pid} survived"
    );
}

//------------------------------------------------------------------------------
// timeout, kill_group
//------------------------------------------------------------------------------

#[test]
fn timeout_sends_sigterm() {
    let a = agent();
    let t0 = Instant::now();
    start(
        &a,
        &json!({"specs": {"t": {"argv": ["/bin/sleep", "100"], "timeout": {"after": 0.5}}}}),
    );
    let res = wait(&a, "t");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        res.status.as_ref().and_then(|s| s.signum),
        Some(15),
        "{res:?}"
    );
    // The agent's own record: the signal went out no earlier than `after`, and
    // TERM ended the sleep within the issue's 1 s of the start.
    let elapsed = res.times.elapsed;
    assert!((0.5..1.0).contains(&elapsed), "elapsed {elapsed}");
    let t = res.timeout.expect("timeout in result");
    assert!(t.fired && !t.killed, "{t:?}");
    assert!(t.fired_at.is_some());
    assert_eq!(t.signal, "SIGTERM");
}

#[test]
fn timeout_kill_after_sends_sigkill_to_a_child_ignoring_term() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"t": {"argv": ["/bin/sleep", "100"],
                                "signals": {"ignore": ["TERM"]},
                                "timeout": {"after": 0.3, "kill_after": 0.5}}}}),
    );
    let res = wait(&a, "t");
    assert_eq!(
        res.status.as_ref().and_then(|s| s.signum),
        Some(9),
        "{res:?}"
    );
    // SIGKILL no earlier than after + kill_after.
    assert!(res.times.elapsed >= 0.8, "elapsed {}", res.times.elapsed);
    let t = res.timeout.expect("timeout in result");
    assert!(t.fired && t.killed, "{t:?}");
}

#[test]
fn timeout_not_fired_for_a_quick_proc() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"t": {"argv": ["/bin/true"], "timeout": {"after": 30}}}}),
    );
    let res = wait(&a, "t");
    assert_eq!(res.status.as_ref().and_then(|s| s.exit_code), Some(0));
    let t = res.timeout.expect("timeout in result");
    assert!(!t.fired && !t.killed, "{t:?}");
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                let (_, pgrp, _) = stat_ids(&s);
                pgrp == pgid && !s[s.rfind(')').unwrap() + 2..].starts_with('Z')
            })
        })
        .collect()
}

#[test]
fn kill_group_signals_the_whole_group() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"g": {"argv": ["/bin/sh", "-c", "sleep 100 & sleep 100; wait"],
                                "kill_group": true}}}),
    );
    let pid = a.result("g").unwrap().pid.unwrap();
    // Wait until sh and both sleeps are there.
    let t0 = Instant::now();
    while group_members(pid).len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(10), "group never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    a.signal("g", libc::SIGTERM).unwrap();
    let res = wait(&a, "g");
    assert_eq!(res.status.as_ref().and_then(|s| s.signum), Some(15));
    let t0 = Instant::now();
    while !group_members(pid).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "left behind: {:?}",
            group_members(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn kill_group_with_timeout_leaves_no_sleep_behind() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"g": {"argv": ["/bin/sh", "-c", "sleep 100 & sleep 100; wait"],
                                "kill_group": true, "timeout": {"after": 0.5}}}}),
    );
    let pid = a.result("g").unwrap().pid.unwrap();
    let res = wait(&a, "g");
    assert!(res.timeout.expect("timeout").fired);
    let t0 = Instant::now();
    while !group_members(pid).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "left behind: {:?}",
            group_members(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// The group stops together even when its leader goes first: a member that
// ignores the timeout's signal outlives the leader, and still gets the
// SIGKILL at `kill_after`. (The leader stays an unreaped zombie till then,
// so the group's id cannot have been reused when the SIGKILL is sent.)
#[test]
fn kill_group_kill_after_reaches_members_that_outlive_the_leader() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"g": {
            "argv": ["/bin/sh", "-c", "(trap '' TERM; exec sleep 100) & wait"],
            "kill_group": true,
            "timeout": {"after": 0.3, "kill_after": 2},
        }}}),
    );
    let pid = a.result("g").unwrap().pid.unwrap();
    let t0 = Instant::now();
    while group_members(pid).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "group never filled");
        std::thread::sleep(Duration::from_millis(10));
    }
    let res = wait(&a, "g");
    assert_eq!(
        res.status.as_ref().and_then(|s| s.signum),
        Some(libc::SIGTERM),
        "the leader ends by the timeout's signal"
    );
    let ended = Instant::now();
    let left = group_members(pid);
    assert_eq!(left.len(), 1, "the sleep ignores SIGTERM: {left:?}");
    while !group_members(pid).is_empty() {
        assert!(
            ended.elapsed() < Duration::from_secs(10),
            "left behind after kill_after: {:?}",
            group_members(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Killed by the SIGKILL at kill_after, not before it.
    assert!(
        ended.elapsed() > Duration::from_millis(1000),
        "gone {:?} after the leader",
        ended.elapsed()
    );
}

//------------------------------------------------------------------------------
// bad values
//------------------------------------------------------------------------------

#[test]
fn bad_values_fail_only_their_proc() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {
            "sig": {"argv": ["/bin/true"], "signals": {"mask": ["SIGFOO"]}},
            "um": {"argv": ["/bin/true"], "umask": -1},
            "rl": {"argv": ["/bin/true"], "rlimits": {"bogus": [1, 2]}},
            "usr": {"argv": ["/bin/true"], "user": "nosuchuser"},
            "after": {"argv": ["/bin/true"], "timeout": {"after": -1}},
            "pd": {"argv": ["/bin/true"], "pdeath_sig": "NOPE"},
            "ok": {"argv": ["/bin/sh", "-c", "exit 0"]}
        }}),
    );
    let cases = [
        ("sig", "proc sig: signals.mask: unknown signal \"SIGFOO\""),
        ("um", "proc um: umask: -1 is out of range (0 to 511)"),
        ("rl", "proc rl: rlimits: unknown resource \"bogus\""),
        ("usr", "proc usr: user: unknown user \"nosuchuser\""),
        ("after", "proc after: timeout.after: must be >= 0"),
        ("pd", "proc pd: pdeath_sig: unknown signal \"NOPE\""),
    ];
    for (id, msg) in cases {
        let res = wait(&a, id);
        assert_eq!(res.state, State::Error, "{id}");
        assert_eq!(res.errors, [msg], "{id}");
        assert_eq!(res.pid, None, "{id}: no child is started");
    }
    let ok = wait(&a, "ok");
    assert_eq!(ok.state, State::Terminated, "{:?}", ok.errors);
    assert_eq!(ok.status.and_then(|s| s.exit_code), Some(0));
}

// A proc refused for a bad control value (resolved here, or with a user
// lookup on an opener thread) or for its exe opens none of its files: an
// existing file its spec names is neither truncated nor replaced.
#[test]
fn a_refused_proc_truncates_none_of_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let keep = |name: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, "precious\n").unwrap();
        p
    };
    let (f1, f2, f3, f4) = (keep("1"), keep("2"), keep("3"), keep("4"));
    let a = agent();
    start(
        &a,
        &json!({"specs": {
            "um": {"argv": ["/bin/true"], "umask": 999,
                   "fds": [["stdout", {"capture": {"mode": "file", "path": f1}}]]},
            "usr": {"argv": ["/bin/true"], "user": "nosuchuser",
                    "fds": [["stdout", {"capture": {"mode": "file", "path": f2}}],
                            ["stderr", {"file": {"path": f3, "flags": "Write"}}]]},
            "rl": {"argv": ["/bin/true"], "rlimits": {"core": -1},
                   "fds": [["3", {"file": {"path": f4, "flags": "Write"}}]]},
        }}),
    );
    for id in ["um", "usr", "rl"] {
        let res = wait(&a, id);
        assert_eq!(res.state, State::Error, "{id}");
        assert_eq!(res.errors.len(), 1, "{id}: {:?}", res.errors);
    }
    for f in [&f1, &f2, &f3, &f4] {
        assert_eq!(
            std::fs::read_to_string(f).unwrap(),
            "precious\n",
            "{}",
            f.display()
        );
    }
}

#[test]
fn switching_user_without_privilege_is_a_clear_error() {
    if is_root() {
        // Run the check as an unprivileged agent: the CLI under setpriv/su is not
        // guaranteed to exist, so use `chaperone` run by `setpriv` when available.
        let Ok(out) = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin())
            .args(["--print", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(br#"{"specs": {"p": {"argv": ["/bin/true"], "user": "root"}}}"#)?;
                c.wait_with_output()
            })
        else {
            chaperone::test_skip(
                "switching_user_without_privilege_is_a_clear_error",
                "no setpriv",
                false,
            );
            return;
        };
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(v["p"]["state"], "error");
        assert_eq!(
            v["p"]["errors"],
            json!(["proc p: user: switching user needs privilege (running as uid 65534)"])
        );
        return;
    }
    let res = run_one(json!({"argv": ["/bin/true"], "user": "root"}));
    assert_eq!(res.state, State::Error);
    let uid = rustix::process::geteuid().as_raw();
    assert_eq!(
        res.errors,
        [format!(
            "proc p: user: switching user needs privilege (running as uid {uid})"
        )]
    );
}
