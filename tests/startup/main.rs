//! Start-up: which driver the reactor runs on. The one asked for is the one
//! that runs, and where the kernel refuses io_uring (as Docker's default
//! seccomp profile does) chaperone runs every process on epoll with every
//! output, unless io_uring was asked for.

#[path = "../util/mod.rs"]
mod util;

use chaperone::BackendChoice;
use chaperone::supervisor::status::Select;
use chaperone::{Agent, Config};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Installs a seccomp filter that fails `io_uring_setup` with EPERM, as a
/// container runtime's default profile or `kernel.io_uring_disabled=2` would.
fn deny_io_uring() -> std::io::Result<()> {
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let nr = libc::SYS_io_uring_setup as u32;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A == io_uring_setup: next, else skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl calls with valid arguments; `prog` outlives the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `chaperone ARGS… SPEC` under a seccomp filter denying `io_uring_setup`
/// with EPERM, with `CHAPERONE_BACKEND` unset: the exit code, stdout, stderr.
fn without_io_uring(args: &[&str], spec: &Value) -> (i32, Vec<u8>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spec.json");
    std::fs::write(&path, serde_json::to_vec(spec).expect("json")).expect("write spec");
    let mut cmd = Command::new(util::bin());
    cmd.args(args)
        .arg(&path)
        .env_remove("CHAPERONE_BACKEND")
        .stdin(Stdio::null());
    // SAFETY: the closure only makes prctl calls, which are async-signal-safe.
    unsafe { cmd.pre_exec(deny_io_uring) };
    let out = cmd.output().expect("run chaperone");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().expect("exited by a signal"),
        out.stdout,
        stderr,
    )
}

#[test]
fn cli_names_the_cause_when_io_uring_is_asked_for_and_denied() {
    let spec = json!({"specs": {"a": {"argv": ["/bin/true"]}}});
    let (code, stdout, stderr) = without_io_uring(&["--backend", "io_uring", "--print"], &spec);
    assert_eq!(code, 65, "stderr: {stderr}");
    assert!(
        stderr.contains("io_uring is unavailable"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("EPERM"), "stderr: {stderr}");
    assert!(stderr.contains("io_uring_disabled"), "stderr: {stderr}");
    assert!(
        stderr.contains("--backend epoll"),
        "names the way out: {stderr}"
    );
    assert!(stdout.is_empty(), "no results without a reactor");
}

#[test]
fn cli_runs_the_same_spec_when_io_uring_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"specs": {"a": {"argv": ["/bin/true"]}}}"#).expect("write spec");
    let out = Command::new(env!("CARGO_BIN_EXE_chaperone"))
        .arg("--print")
        .arg(&spec)
        .output()
        .expect("run chaperone");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(res["a"]["state"], "terminated");
}

/// What `CHAPERONE_BACKEND` and `CHAPERONE_FORCE_FALLBACK` ask of this run
/// (ci/test runs the suites under each) must be what runs: a forced driver
/// or fallback that silently did not take effect would leave a path untested.
#[test]
fn the_backend_asked_for_is_the_one_running() {
    let agent = Agent::new(Config::default()).expect("agent");
    let b = agent.handle().overview(Select::None).wait().backend;
    let asked = std::env::var("CHAPERONE_BACKEND").unwrap_or_default();
    // What auto would find: a ring with its buffer ring.
    let ring_works = chaperone::backend_usable(BackendChoice::IoUring);
    let want = match asked.as_str() {
        "epoll" => "epoll",
        "io_uring" => "io_uring",
        _ if ring_works => "io_uring",
        _ => "epoll",
    };
    assert_eq!(b.name, want, "CHAPERONE_BACKEND={asked:?}");
    let fallback =
        std::env::var("CHAPERONE_FORCE_FALLBACK").is_ok_and(|v| !v.is_empty() && v != "0");
    if b.name == "io_uring" && fallback {
        assert!(
            !b.waitid && !b.read_multishot && !b.buf_ring_inc,
            "CHAPERONE_FORCE_FALLBACK=1 left newer paths on: {b:?}"
        );
    }
    if b.name == "epoll" {
        assert!(!b.waitid && !b.read_multishot && !b.buf_ring_inc, "{b:?}");
    }
}

#[test]
fn under_a_seccomp_filter_denying_io_uring_a_spec_runs_on_epoll_with_every_output() {
    let mem = json!({"capture": {"mode": "memory", "encoding": "utf-8"}});
    let n = 500;
    let mut specs = serde_json::Map::new();
    for i in 0..n {
        specs.insert(
            format!("p{i:04}"),
            json!({"argv": ["/bin/sh", "-c", format!("echo out {i}; echo err {i} >&2")],
                   "fds": [["stdout", mem], ["stderr", mem]]}),
        );
    }
    // 32 MiB through one pipe: many turns of the arena.
    specs.insert(
        "big".into(),
        json!({"argv": ["/bin/sh", "-c", "head -c 33554432 /dev/zero | tr '\\0' x"],
               "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8",
                                               "head": 16, "tail": 16}}]]}),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = dir.path().join("kept.out");
    specs.insert(
        "kept".into(),
        json!({"argv": ["/bin/sh", "-c", "seq 1 200000"],
               "fds": [["stdout", {"capture": {"mode": "file", "path": kept, "encoding": "utf-8"}}]]}),
    );
    specs.insert(
        "slow".into(),
        json!({"argv": ["/bin/sleep", "30"], "timeout": {"after": 0.3}}),
    );
    let spec = json!({ "specs": specs });
    let (code, stdout, stderr) = without_io_uring(&["--log-level", "info", "--print"], &spec);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("running on epoll") && stderr.contains("EPERM"),
        "the fallback is said once at info level, with its cause: {stderr}"
    );
    assert_eq!(stderr.matches("running on epoll").count(), 1, "{stderr}");
    let res: Value = serde_json::from_slice(&stdout).expect("results");
    for i in 0..n {
        let r = &res[format!("p{i:04}")];
        assert_eq!(r["status"]["exit_code"], 0, "p{i:04}: {r}");
        assert_eq!(r["fds"]["stdout"]["text"], format!("out {i}\n"), "p{i:04}");
        assert_eq!(r["fds"]["stderr"]["text"], format!("err {i}\n"), "p{i:04}");
    }
    let big = &res["big"]["fds"]["stdout"];
    assert_eq!(big["length"], 33554432, "{big}");
    let want: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert!(
        std::fs::read_to_string(&kept).expect("kept file") == want,
        "the kept file holds every line"
    );
    assert_eq!(
        res["slow"]["status"]["signal"], "SIGTERM",
        "{}",
        res["slow"]
    );
}

#[test]
fn an_unknown_backend_is_named_in_the_error() {
    let out = Command::new(util::bin())
        .args(["--backend", "kqueue", "--print", "-"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("kqueue") && stderr.contains("epoll"),
        "{stderr}"
    );
    // And from the environment: a warning naming it, then the probe's choice.
    let out = Command::new(util::bin())
        .args(["--print", "-"])
        .env("CHAPERONE_BACKEND", "kqueue")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(br#"{"specs": {"t": {"argv": ["/bin/true"]}}}"#)?;
            c.wait_with_output()
        })
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("CHAPERONE_BACKEND") && stderr.contains("kqueue"),
        "{stderr}"
    );
}
