//! Spool mode (`--spool DIR`, `--detach`), its reader (`chaperone spool`)
//! and `chaperone ssh`, against the real binary; the last test goes through
//! a real `sshd` on a loopback port.

#[path = "../util/mod.rs"]
mod util;

use base64::Engine as _;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn chaperone() -> Command {
    let mut c = Command::new(util::bin());
    c.env_remove("CHAPERONE_SERVE_TOKEN");
    c
}

fn write_spec(dir: &Path, spec: &Value) -> PathBuf {
    let p = dir.join("spec.in.json");
    std::fs::write(&p, serde_json::to_vec(spec).unwrap()).unwrap();
    p
}

/// `chaperone --spool DIR MODE SPEC` to its end (`spec` written beside DIR).
fn run_spooled(dir: &Path, mode: &str, spec: &Value) -> std::process::Output {
    chaperone()
        .arg("--spool")
        .arg(dir)
        .arg(mode)
        .arg(write_spec(dir.parent().unwrap(), spec))
        .output()
        .unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `chaperone spool DIR ARGS…`: (exit code, stdout).
fn spool(dir: &Path, args: &[&str]) -> (i32, Vec<u8>) {
    let out = chaperone()
        .arg("spool")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), out.stdout)
}

fn status(dir: &Path) -> Value {
    let (code, out) = spool(dir, &[]);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    serde_json::from_slice(&out).unwrap()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bytes that are not UTF-8, with every byte value in them.
fn binary() -> Vec<u8> {
    (0..=255u8).cycle().take(70_000).collect()
}

#[test]
fn the_spool_keeps_the_spec_every_result_and_every_byte() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data.bin");
    std::fs::write(&data, binary()).unwrap();
    let spec = json!({"specs": {
        "bin/1": {"argv": ["/bin/sh", "-c", format!("cat {}; echo oops >&2; exit 3", data.display())],
                  "fds": [["stdout", util::mem_b64()], ["stderr", util::tmp_utf8()]]},
        "text": {"argv": ["/bin/echo", "hello"], "fds": [["stdout", util::mem_utf8()]]},
    }});
    let dir = d.path().join("spool");
    let out = run_spooled(&dir, "--print", &spec);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --print as ever: the results with their output inline, as the spec asks.
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(util::text_of(&printed["text"], "stdout"), "hello\n");
    assert_eq!(util::data_of(&printed["bin/1"], "stdout"), binary());

    // The spool: the spec as given, the agent done, a result per process.
    assert_eq!(
        std::fs::read(dir.join("spec.json")).unwrap(),
        serde_json::to_vec(&spec).unwrap(),
        "the spec, byte for byte as given"
    );
    let agent = read_json(&dir.join("agent.json"));
    assert_eq!(agent["state"], "done");
    assert!(
        agent["stop"].is_string() && agent["pid"].as_i64().unwrap() > 0,
        "{agent}"
    );
    let r = read_json(&dir.join("procs/bin%2F1.json"));
    assert_eq!(r["status"]["exit_code"], 3);
    // Captures are files; results say where, and hold no bytes.
    let stdout = &r["fds"]["stdout"];
    assert_eq!(stdout["type"], "detached", "{r}");
    assert_eq!(stdout["length"], 70_000);
    let path = PathBuf::from(stdout["path"].as_str().unwrap());
    assert!(
        path.starts_with(dir.canonicalize().unwrap().join("out")),
        "{path:?}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), binary());
    let stderr = PathBuf::from(r["fds"]["stderr"]["path"].as_str().unwrap());
    assert_eq!(std::fs::read(stderr).unwrap(), b"oops\n");

    // The reader gives the same.
    let s = status(&dir);
    assert_eq!(s["agent"]["alive"], false);
    assert_eq!(s["agent"]["state"], "done");
    assert_eq!(s["procs"]["text"]["fds"]["stdout"]["length"], 6);
    let (code, bytes) = spool(&dir, &["--output", "bin/1/stdout", "--from", "1000"]);
    // `bin/1/stdout`: not an id itself, so the id is what comes before the
    // last slash.
    assert_eq!(code, 0);
    assert_eq!(bytes, binary()[1000..].to_vec());

    // A second agent may not take the directory, even once the first is done.
    let again = run_spooled(&dir, "--print", &spec);
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("an earlier agent"), "{err}");

    // A reader whose own reader goes away (`| head`) ends quietly.
    let mut reader = chaperone()
        .arg("spool")
        .arg(&dir)
        .args(["--output", "bin/1/stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(reader.stdout.take());
    let out = reader.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `--spool` agent running `spec` in the background.
fn start_agent(dir: &Path, spec: &Value, extra: &[&str]) -> Child {
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let specfile = write_spec(dir.parent().unwrap(), spec);
    let child = chaperone()
        .arg("--spool")
        .arg(dir)
        .args(extra)
        .arg(specfile)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the agent's spool", Duration::from_secs(20), || {
        dir.join("agent.json").exists() && dir.join("control").exists()
    });
    child
}

#[test]
fn result_files_are_replaced_whole_never_torn() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    // Sampled every 5 ms: its result file is replaced hundreds of times.
    let spec = json!({"specs": {"busy": {
        "argv": ["/bin/sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line $i; i=$((i+1)); sleep 0.005; done"],
        "fds": [["stdout", util::mem_utf8()]]}}});
    let mut agent = start_agent(&dir, &spec, &["--sample-interval", "0.005"]);
    let file = dir.join("procs/busy.json");
    let (mut reads, mut lengths) = (0, Vec::new());
    while agent.try_wait().unwrap().is_none() {
        if let Ok(data) = std::fs::read(&file) {
            let v: Value = serde_json::from_slice(&data).unwrap_or_else(|e| {
                panic!(
                    "a torn result file ({e}): {:?}",
                    String::from_utf8_lossy(&data)
                )
            });
            reads += 1;
            lengths.push(v["fds"]["stdout"]["length"].as_u64().unwrap());
        }
    }
    assert!(reads > 50, "only {reads} reads");
    assert!(
        lengths.windows(2).all(|w| w[0] <= w[1]),
        "went back: {lengths:?}"
    );
    let mut versions = lengths.clone();
    versions.dedup();
    assert!(versions.len() > 10, "only {} versions seen", versions.len());
}

#[test]
fn a_dead_agent_shows_as_such_and_its_last_state_stays_readable() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    let spec = json!({"specs": {"sleeper": {"argv": ["/bin/sleep", "30"],
                                            "fds": [["stdout", util::mem_utf8()]]}}});
    let mut agent = start_agent(&dir, &spec, &[]);
    let s = status(&dir);
    assert_eq!(
        (&s["agent"]["alive"], &s["agent"]["state"]),
        (&json!(true), &json!("running"))
    );
    assert_eq!(s["procs"]["sleeper"]["state"], "running");
    let pid = s["procs"]["sleeper"]["pid"].as_i64().unwrap() as i32;
    // Another agent is refused while this one runs.
    let other = run_spooled(&dir, "--print", &spec);
    assert_eq!(other.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&other.stderr).contains("another agent"));

    agent.kill().unwrap();
    agent.wait().unwrap();
    let s = status(&dir);
    assert_eq!(
        (&s["agent"]["alive"], &s["agent"]["state"]),
        (&json!(false), &json!("running"))
    );
    assert_eq!(
        s["procs"]["sleeper"]["state"], "running",
        "the last known state"
    );
    // Following it ends at once, saying so, with exit code 3.
    let (code, out) = spool(&dir, &["--follow"]);
    assert_eq!(code, 3);
    let last = String::from_utf8(out).unwrap();
    assert_eq!(last.lines().last(), Some(r#"{"type":"died"}"#));
    let (code, _) = spool(&dir, &["signal", "sleeper", "TERM"]);
    assert_eq!(code, 2, "no agent to reach");
    // (Its orphan is reaped by init; end it.)
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    );
}

/// Voluntary context switches of `pid` so far.
fn switches(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn follow_streams_every_change_and_wakes_on_them_not_on_a_timer() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    // Two lines 3.5 s apart; sampled rarely, so the spool is quiet between.
    let spec = json!({"specs": {"slow": {
        "argv": ["/bin/sh", "-c", "echo first; sleep 3.5; echo second; echo err >&2"],
        "fds": [["stdout", util::mem_utf8()], ["stderr", util::mem_utf8()]]}}});
    let mut agent = start_agent(&dir, &spec, &["--sample-interval", "100"]);
    let mut follower = chaperone()
        .arg("spool")
        .arg(&dir)
        .arg("--follow")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = follower.id();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    let mut output = Output::new();
    let mut idle_switches = None;
    type Output = std::collections::BTreeMap<String, Vec<u8>>;
    let take = |events: &mut Vec<Value>, output: &mut Output, line: String| {
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "output" {
            let fd = v["fd"].as_str().unwrap().to_string();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().unwrap())
                .unwrap();
            let have = output.entry(fd).or_default();
            assert_eq!(
                v["offset"].as_u64().unwrap(),
                have.len() as u64,
                "in order, once"
            );
            have.extend(bytes);
        }
        events.push(v);
    };
    // Up to the first line; then, while nothing changes, the follower
    // sleeps: about one wake-up a second (its look at the agent's lock).
    while output.get("stdout").is_none_or(|o| o != b"first\n") {
        take(&mut events, &mut output, lines.next().unwrap().unwrap());
    }
    let before = switches(pid);
    std::thread::sleep(Duration::from_millis(2500));
    idle_switches.get_or_insert(switches(pid) - before);
    for line in lines {
        take(&mut events, &mut output, line.unwrap());
    }
    assert!(follower.wait().unwrap().success());
    assert!(agent.wait().unwrap().success());
    let idle = idle_switches.unwrap();
    assert!(idle < 20, "{idle} wake-ups in 2.5 s of quiet: polling?");
    assert_eq!(output["stdout"], b"first\nsecond\n");
    assert_eq!(output["stderr"], b"err\n");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "done");
    let results: Vec<&Value> = events.iter().filter(|e| e["type"] == "result").collect();
    assert_eq!(results.first().unwrap()["result"]["state"], "running");
    assert_eq!(results.last().unwrap()["result"]["state"], "terminated");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "agent" && e["agent"]["state"] == "done")
    );
}

#[test]
fn the_control_socket_signals_and_stops_the_agent() {
    let d = tempfile::tempdir().unwrap();
    // A long path, past what a Unix socket address holds.
    let dir = d.path().join("x".repeat(90)).join("spool");
    let spec = json!({"specs": {
        "a": {"argv": ["/bin/sleep", "30"]},
        "b": {"argv": ["/bin/sleep", "30"]},
    }});
    let mut agent = start_agent(&dir, &spec, &[]);
    let (code, out) = spool(&dir, &["signal", "a", "TERM"]);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
    let answer: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(answer["ok"]["signal"]["signum"], 15);
    wait_until("a's end", Duration::from_secs(10), || {
        status(&dir)["procs"]["a"]["status"]["signal"] == "SIGTERM"
    });
    let (code, out) = spool(&dir, &["signal", "nope", "TERM"]);
    assert_eq!(code, 1);
    let err: Value = serde_json::from_slice(&out).unwrap();
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");
    let (code, out) = spool(&dir, &["signal", "b", "SIGNOPE"]);
    assert_eq!(code, 1, "{}", String::from_utf8_lossy(&out));
    // Stop: kill what runs; the agent finishes its results and exits.
    let (code, _) = spool(&dir, &["stop", "--policy", "kill"]);
    assert_eq!(code, 0);
    let st = agent.wait().unwrap();
    assert!(st.success(), "{st:?}");
    let s = status(&dir);
    assert_eq!(s["agent"]["state"], "done");
    assert_eq!(s["procs"]["b"]["status"]["signal"], "SIGKILL");
}

/// The session id of `pid` (field 6 of `/proc/PID/stat`).
fn session_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn detach_returns_once_started_and_the_agent_carries_on_in_its_own_session() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    let spec = json!({"specs": {"job": {
        "argv": ["/bin/sh", "-c", "echo started; sleep 1.5; echo finished"],
        "fds": [["stdout", util::mem_utf8()]]}}});
    let t0 = Instant::now();
    let out = run_spooled(&dir, "--detach", &spec);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1400),
        "returned after {:?}",
        t0.elapsed()
    );
    // It printed the running-state results.
    let running: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(running["job"]["state"], "running");
    // The agent is another process, in a session of its own.
    let agent = read_json(&dir.join("agent.json"));
    let pid = agent["pid"].as_i64().unwrap() as i32;
    assert_ne!(pid, std::process::id() as i32);
    assert_eq!(session_of(pid), pid, "the agent leads its own session");
    assert_ne!(running["job"]["pid"].as_i64().unwrap() as i32, pid);
    // It carries on and finishes.
    let (code, bytes) = spool(&dir, &["--output", "job", "--follow"]);
    assert_eq!(code, 0);
    assert_eq!(bytes, b"started\nfinished\n");
    wait_until("the agent's exit", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    });
    assert_eq!(status(&dir)["agent"]["state"], "done");
}

#[test]
fn reading_a_capture_live_from_an_offset_is_exact() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    let spec = json!({"specs": {"w": {
        "argv": ["/bin/sh", "-c", "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); sleep 0.005; done"],
        "fds": [["stdout", util::tmp_utf8()]]}}});
    let mut agent = start_agent(&dir, &spec, &[]);
    let (code, bytes) = spool(&dir, &["--output", "w/stdout", "--from", "5", "--follow"]);
    assert_eq!(code, 0);
    assert!(agent.wait().unwrap().success());
    let want: String = (0..200).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8(bytes).unwrap(), want[5..]);
}

/// A process queued behind `--max-running` has no capture yet: a follower of
/// its output waits for it to start rather than fail, and an fd may be named
/// by number, as over HTTP.
#[test]
fn following_a_queued_process_waits_for_it_to_start() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    let spec = json!({"specs": {
        "a1": {"argv": ["/bin/sleep", "30"]},
        "b2": {"argv": ["/bin/echo", "hi"], "fds": [["stdout", util::tmp_utf8()]]},
    }});
    let mut agent = start_agent(&dir, &spec, &["--max-running", "1"]);
    assert!(
        status(&dir)["procs"]["b2"]["pid"].is_null(),
        "b2 is queued behind a1"
    );
    // a1 ends while the follower waits.
    let dir2 = dir.clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        spool(&dir2, &["signal", "a1", "KILL"])
    });
    let (code, bytes) = spool(&dir, &["--output", "b2", "--follow"]);
    assert_eq!(killer.join().unwrap().0, 0);
    assert_eq!(
        (code, String::from_utf8_lossy(&bytes).as_ref()),
        (0, "hi\n")
    );
    assert!(agent.wait().unwrap().success());
    let (code, bytes) = spool(&dir, &["--output", "b2/1"]);
    assert_eq!((code, bytes.as_slice()), (0, b"hi\n".as_slice()));
}

/// A real `sshd` on a loopback port, with a key made for the test.
struct Sshd {
    child: Child,
    port: u16,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sshd() -> Result<Sshd, String> {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() || Command::new("ssh-keygen").arg("-?").output().is_err() {
        return Err(
            "openssh-server and openssh-client are not installed (ci/test installs them)".into(),
        );
    }
    if !rustix::process::geteuid().is_root() {
        return Err("sshd needs root to run here".into());
    }
    let d = tempfile::tempdir().unwrap();
    let keygen = |path: &Path| {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    };
    let (host, key) = (d.path().join("host_key"), d.path().join("id"));
    keygen(&host);
    keygen(&key);
    std::fs::copy(d.path().join("id.pub"), d.path().join("authorized_keys")).unwrap();
    let port = util::free_port();
    let config = d.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {dir}/authorized_keys\n\
             PidFile {dir}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n",
            host = host.display(),
            dir = d.path().display()
        ),
    )
    .unwrap();
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("sshd: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("sshd never listened".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Sshd {
        child,
        port,
        key,
        _dir: d,
    })
}

impl Sshd {
    /// ssh options for this server, as `-o` values.
    fn options(&self) -> Vec<String> {
        vec![
            format!("Port={}", self.port),
            format!("IdentityFile={}", self.key.display()),
            "StrictHostKeyChecking=no".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "BatchMode=yes".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// `ssh … root@127.0.0.1 COMMAND` (one remote command line).
    fn ssh(&self, command: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null"]);
        for o in self.options() {
            c.args(["-o", &o]);
        }
        c.args(["root@127.0.0.1", "--", command]);
        c
    }
}

#[test]
fn over_ssh_a_detached_agent_survives_the_connection_and_is_reattached() {
    let server = match sshd() {
        Ok(s) => s,
        Err(why) => {
            chaperone::test_skip(
                "over_ssh_a_detached_agent_survives_the_connection",
                &why,
                false,
            );
            return;
        }
    };
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    let bin = std::fs::canonicalize(util::bin()).unwrap();
    // `chaperone ssh` runs the program on the "remote" host under a
    // detached, spooled chaperone.
    let mut cmd = chaperone();
    cmd.arg("ssh");
    for o in server.options() {
        cmd.args(["-o", &o]);
    }
    cmd.args(["--user", "root", "--chaperone"])
        .arg(&bin)
        .arg("--spool")
        .arg(&dir)
        .args(["127.0.0.1", "--", "/bin/sh", "-c"])
        .arg("i=0; while [ $i -lt 40 ]; do echo \"line $i: it's \\\"quoted\\\"\"; i=$((i+1)); sleep 0.1; done");
    let mut client = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its first line is the running-state results; then the connection is
    // cut (the client killed, if it has not already returned).
    let mut first = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let running: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first:?}"));
    assert_eq!(running["job"]["state"], "running");
    let _ = client.kill();
    let _ = client.wait();
    // The process keeps running without the connection.
    std::thread::sleep(Duration::from_millis(500));
    let s = status(&dir);
    assert_eq!(s["agent"]["alive"], true);
    assert_eq!(s["procs"]["job"]["state"], "running", "{s}");

    // A new SSH session follows the rest, byte exact, to the final result.
    let q = |p: &Path| {
        String::from_utf8(chaperone::spool::ssh::quote(
            p.as_os_str().as_encoded_bytes(),
        ))
        .unwrap()
    };
    let follow = server
        .ssh(&format!("exec {} spool {} --follow", q(&bin), q(&dir)))
        .output()
        .unwrap();
    assert!(
        follow.status.success(),
        "{}",
        String::from_utf8_lossy(&follow.stderr)
    );
    let mut stdout = Vec::new();
    let mut last = Value::Null;
    for line in String::from_utf8(follow.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["type"] == "output" && v["fd"] == "stdout" {
            assert_eq!(v["offset"].as_u64().unwrap(), stdout.len() as u64);
            stdout.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(v["data"].as_str().unwrap())
                    .unwrap(),
            );
        }
        if v["type"] == "result" {
            last = v["result"].clone();
        }
        if v["type"] == "done" {
            break;
        }
    }
    let want: String = (0..40)
        .map(|i| format!("line {i}: it's \"quoted\"\n"))
        .collect();
    assert_eq!(String::from_utf8(stdout).unwrap(), want);
    assert_eq!(last["status"]["exit_code"], 0, "{last}");
    // And a third reads the capture from an offset over SSH.
    let part = server
        .ssh(&format!(
            "exec {} spool {} --output job/stdout --from 100",
            q(&bin),
            q(&dir)
        ))
        .output()
        .unwrap();
    assert_eq!(part.stdout, want.as_bytes()[100..].to_vec());
}

#[test]
fn garbage_on_the_control_socket_is_answered_and_the_agent_goes_on() {
    use std::io::Write as _;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("spool");
    let spec = json!({"specs": {"s": {"argv": ["/bin/sleep", "30"]}}});
    let mut agent = start_agent(&dir, &spec, &[]);
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("control")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"garbage\n\xff\xfe\n{}\n{\"signal\": {\"id\": 3}}\n{\"stop\": {\"policy\": \"x\"}}\n",
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let answers: Vec<Value> = (0..5)
        .map(|_| {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap()
        })
        .collect();
    let errors: Vec<&str> = answers
        .iter()
        .map(|a| a["error"].as_str().unwrap())
        .collect();
    assert!(errors[0].starts_with("not JSON"), "{errors:?}");
    assert!(errors[1].starts_with("not UTF-8"), "{errors:?}");
    assert!(errors[2].starts_with("unknown request"), "{errors:?}");
    assert!(errors[3].contains("needs \"id\""), "{errors:?}");
    assert!(errors[4].contains("unknown policy"), "{errors:?}");
    // A line past the limit is refused, and the connection ends.
    let mut long = std::os::unix::net::UnixStream::connect(dir.join("control")).unwrap();
    long.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = long.write_all(&vec![b'x'; 2 << 20]);
    let mut line = String::new();
    BufReader::new(long).read_line(&mut line).unwrap();
    assert!(line.contains("request longer than"), "{line}");
    // And the agent still takes requests.
    let (code, _) = spool(&dir, &["stop", "--policy", "kill"]);
    assert_eq!(code, 0);
    assert!(agent.wait().unwrap().success());
}

/// A spec that cannot start (exit 65) makes no spool directory, so the same
/// directory is there for the corrected spec. (Before, it was made with an
/// agent "running", read as "died", and refused as an earlier agent's.)
#[test]
fn a_spec_that_cannot_start_makes_no_spool() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("sp");
    let out = run_spooled(&dir, "--exit", &json!({"specs": {"a": {"argv": []}}}));
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("proc a: argv is empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.exists(), "no spool was made");
    let out = run_spooled(
        &dir,
        "--exit",
        &json!({"specs": {"a": {"argv": ["/bin/true"]}}}),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_id_too_long_for_a_result_file_name_is_refused_before_the_spool_is_made() {
    // 250 bytes: its result file (and the temporary name it is written
    // under) would not fit a file name. It ran, and was missing from the
    // spool: readers said the agent was done with 0 processes.
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("sp");
    let long = "y".repeat(250);
    let out = run_spooled(
        &dir,
        "--exit",
        &json!({"specs": {"ok": {"argv": ["/bin/true"]}, long.clone(): {"argv": ["/bin/true"]}}}),
    );
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("too long for a spool") && err.contains("250 bytes"),
        "{err}"
    );
    assert!(!dir.exists(), "no spool was made");
    // Within the limit (200 bytes) it is kept and read back.
    let id = "z".repeat(200);
    let out = run_spooled(
        &dir,
        "--exit",
        &json!({"specs": {id.clone(): {"argv": ["/bin/true"]}}}),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(&dir)["procs"][&id]["state"], "terminated");
}

#[test]
fn a_spool_directory_made_by_the_agent_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    // It holds the spec (its environment's secrets) and every byte of output.
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("sp");
    let out = run_spooled(
        &dir,
        "--exit",
        &json!({"specs": {"a": {"argv": ["/bin/true"]}}}),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn a_full_spool_disk_fails_the_run_saying_so_and_a_detached_agent_lives_on() {
    let test = "a_full_spool_disk_fails_the_run_saying_so_and_a_detached_agent_lives_on";
    let top = tempfile::tempdir().unwrap();
    let _fs = match util::Tmpfs::mount(&top.path().join("mnt"), "1m") {
        Ok(m) => m,
        Err(why) => return chaperone::test_skip(test, why, false),
    };
    // 2 MB over about 2 s into a 1 MiB filesystem.
    let spec = json!({"specs": {"w": {"argv": ["/bin/sh", "-c",
        "for i in $(seq 1 20); do head -c 100000 /dev/zero; sleep 0.1; done"],
        "fds": [["stdout", {"capture": {"mode": "memory"}}]]}}});
    // In the foreground: it exited 0 with results unwritten.
    let dir = top.path().join("mnt").join("fg");
    let out = run_spooled(&dir, "--exit", &spec);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("procs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written files left: {leftovers:?}"
    );
    // Detached, its log is on that filesystem too: logging the first
    // failed write panicked the agent (exit 101) while its process ran.
    std::fs::remove_dir_all(&dir).unwrap();
    let dir = top.path().join("mnt").join("bg");
    let out = run_spooled(&dir, "--detach", &spec);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = read_json(&dir.join("agent.json"))["pid"].as_i64().unwrap() as i32;
    std::thread::sleep(Duration::from_millis(1000));
    let alive =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(
        alive,
        "the detached agent died while its process was running"
    );
    wait_until("the detached agent to end", Duration::from_secs(20), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    });
}
