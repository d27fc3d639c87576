//! Faults from outside the spec: a per-user process limit reached, the pipe
//! quota spent, a disk filling up mid-write. Each time the agent keeps running
//! and loses nothing but what the fault itself took.
//!
//! Root is exempt from `RLIMIT_NPROC` and the pipe quota, so those tests run
//! the agent as an unprivileged user of their own (they need root to switch,
//! and skip, saying so, without it). The disk test mounts a small tmpfs (root too).

#[path = "../util/mod.rs"]
mod util;

use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use util::is_root;

/// A directory any user can read and write, holding a copy of the binary
/// (the build tree may not be reachable by other users).
fn shared_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let bin = dir.path().join("chaperone");
    std::fs::copy(util::bin(), &bin).expect("copy the binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (dir, bin)
}

/// Runs `chaperone --print SPEC` as user `uid` (no passwd entry needed),
/// with `limits` (prlimit(1) options) applied; returns the exit code, the
/// results and stderr. Each test has a uid of its own: the limits these
/// tests reach are per user, and tests run in parallel.
fn run_as(uid: u32, dir: &Path, bin: &Path, limits: &[&str], spec: &Value) -> (i32, Value, String) {
    let path = dir.join("spec.json");
    std::fs::write(&path, serde_json::to_vec(spec).expect("json")).expect("write spec");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--"])
        .arg("prlimit")
        .args(limits)
        .arg(bin)
        .arg("--print")
        .arg(&path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let res = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), res, stderr)
}

fn mem() -> Value {
    json!({"capture": {"mode": "memory", "encoding": "utf-8"}})
}

/// With the agent's user at its `RLIMIT_NPROC`, clone fails with EAGAIN:
/// the process waits for another to end, as one short of fds does, and
/// every process runs in the end.
#[test]
fn clone_at_the_process_limit_waits_for_a_process_to_end() {
    if !is_root() {
        chaperone::test_skip(
            "clone_at_the_process_limit_waits_for_a_process_to_end",
            "not root: cannot run the agent as another user",
            false,
        );
        return;
    }
    let (dir, bin) = shared_dir();
    let n = 40;
    let specs: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            (
                format!("s{i:02}"),
                // No fork of its own: a child's fork would meet the limit too.
                json!({"argv": [util::PYTHON, "-c",
                                format!("import time; time.sleep(0.3); print('done {i}')")],
                       "fds": [["stdout", mem()]]}),
            )
        })
        .collect();
    // The agent's own threads count too: some ten tasks leave room for a
    // dozen processes at a time.
    let (code, res, stderr) = run_as(
        64901,
        dir.path(),
        &bin,
        &["--nproc=24"],
        &json!({ "specs": specs }),
    );
    assert_eq!(code, 0, "{stderr}");
    for i in 0..n {
        let r = &res[format!("s{i:02}")];
        assert_eq!(r["errors"], json!([]), "s{i:02}: {r}");
        assert_eq!(
            r["fds"]["stdout"]["text"],
            format!("done {i}\n"),
            "s{i:02}: {r}"
        );
    }
}

/// Sets a sysctl for the length of a test.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> std::io::Result<Sysctl> {
        let old = std::fs::read_to_string(path)?;
        std::fs::write(path, value)?;
        Ok(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, self.old.trim());
    }
}

/// An unprivileged agent past `fs.pipe-user-pages-soft` gets small pipes
/// and cannot raise them (EPERM): captures are whole anyway, only read in
/// more pieces.
#[test]
fn past_the_pipe_quota_small_pipes_still_carry_every_byte() {
    let test = "past_the_pipe_quota_small_pipes_still_carry_every_byte";
    if !is_root() {
        chaperone::test_skip(test, "not root: cannot set the pipe quota", false);
        return;
    }
    // Root (and so every other test) is exempt; only the test's user feels it.
    let _quota = match Sysctl::set("/proc/sys/fs/pipe-user-pages-soft", "32") {
        Ok(q) => q,
        Err(e) => {
            chaperone::test_skip(
                test,
                &format!("cannot set fs.pipe-user-pages-soft: {e}"),
                false,
            );
            return;
        }
    };
    let (dir, bin) = shared_dir();
    let n = 30;
    let lines = 20_000; // "NN LLLLL\n": 180 KB on each of stdout and stderr
    let specs: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let sh = format!(
                "i=0; while [ $i -lt {lines} ]; do printf '%02d %05d\\n' {i} $i; printf '%02d %05d\\n' {i} $i >&2; i=$((i+1)); done"
            );
            (
                format!("p{i:02}"),
                json!({"argv": ["/bin/sh", "-c", sh], "fds": [["stdout", mem()], ["stderr", mem()]]}),
            )
        })
        .collect();
    // Last, so its pipe is made past the quota: it reports its stdout
    // pipe's size (F_GETPIPE_SZ), which shows the quota was met.
    let mut specs = specs;
    specs.insert(
        "size".into(),
        json!({"argv": [util::PYTHON, "-c", "import fcntl; print(fcntl.fcntl(1, 1032))"],
               "fds": [["stdout", mem()]]}),
    );
    let (code, res, stderr) = run_as(64902, dir.path(), &bin, &[], &json!({ "specs": specs }));
    assert_eq!(code, 0, "{stderr}");
    let size: u64 = res["size"]["fds"]["stdout"]["text"]
        .as_str()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("the pipe size: {}", res["size"]));
    assert!(
        size < 1 << 20,
        "a pipe of {size} bytes: the quota was not reached"
    );
    for i in 0..n {
        let want: String = (0..lines).map(|l| format!("{i:02} {l:05}\n")).collect();
        let r = &res[format!("p{i:02}")];
        assert_eq!(r["status"]["exit_code"], 0, "p{i:02}: {}", r["errors"]);
        for fd in ["stdout", "stderr"] {
            let got = r["fds"][fd]["text"].as_str().unwrap_or_default();
            assert!(
                got == want,
                "p{i:02} {fd}: {} bytes of {}",
                got.len(),
                want.len()
            );
        }
    }
}

/// A kept file whose disk fills up mid-write: the error names the file, the
/// process is not held up (its pipe is still drained, so it runs to its end),
/// the bytes written before the disk filled stay, and other processes are
/// untouched.
#[test]
fn a_disk_filling_mid_write_fails_only_that_capture() {
    let test = "a_disk_filling_mid_write_fails_only_that_capture";
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("small");
    let _fs = match util::Tmpfs::mount(&mnt, "512k") {
        Ok(m) => m,
        Err(why) => return chaperone::test_skip(test, why, false),
    };
    let kept = mnt.join("fill.out");
    let spec = json!({"specs": {
        "fill": {"argv": ["/bin/sh", "-c", "head -c 4194304 /dev/zero; echo finished >&2"],
                 "fds": [["stdout", {"capture": {"mode": "file", "path": kept}}],
                         ["stderr", mem()]]},
        "other": {"argv": ["/bin/sh", "-c", "seq 1 100000"], "fds": [["stdout", mem()]]}
    }});
    let (code, res) = util::run_cli(&spec);
    assert_eq!(code, 0);
    let fill = &res["fill"];
    assert_eq!(fill["status"]["exit_code"], 0, "{fill}");
    assert_eq!(
        fill["fds"]["stderr"]["text"], "finished\n",
        "the writer ran to its end"
    );
    let errors = fill["errors"].to_string();
    assert!(
        errors.contains("No space left on device") && errors.contains("fill.out"),
        "{errors}"
    );
    let len = std::fs::metadata(&kept).expect("kept file").len();
    assert!(
        len > 0 && len <= 512 << 10,
        "{len} bytes before the disk filled"
    );
    let want: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    assert!(
        res["other"]["fds"]["stdout"]["text"] == want.as_str(),
        "other is whole"
    );
}

/// Short of fds everywhere the agent takes them (capture pipes, pidfds,
/// perf counters, kept files, tempfiles), with `--max-running` far past
/// what the fd limit holds: the agent keeps running, and every process
/// either runs whole or says it was short of fds; none comes back with
/// less output than it wrote and no word why.
#[test]
fn short_of_fds_at_every_kind_no_process_loses_output_silently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 60;
    let specs: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            let kept = dir.path().join(format!("k{i:02}.out"));
            (
                format!("p{i:02}"),
                json!({"argv": ["/bin/sh", "-c", format!("seq 1 2000; echo err {i} >&2")],
                       "perf": true,
                       "fds": [["stdout", {"capture": {"mode": "file", "path": kept,
                                                       "memory": true, "encoding": "utf-8"}}],
                               ["stderr", {"capture": {"mode": "tempfile", "encoding": "utf-8"}}]]}),
            )
        })
        .collect();
    let path = dir.path().join("spec.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&json!({ "specs": specs })).expect("json"),
    )
    .expect("write spec");
    let out = Command::new("prlimit")
        .arg("--nofile=96")
        .arg(util::bin())
        .args(["--max-running", "60", "--print"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run prlimit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let res: Value = serde_json::from_slice(&out.stdout).expect("results");
    let want: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    let mut whole = 0;
    for i in 0..n {
        let r = &res[format!("p{i:02}")];
        let errors = r["errors"].to_string();
        let ran = r["status"]["exit_code"] == 0;
        let out_ok = r["fds"]["stdout"]["text"] == want.as_str();
        let err_ok = r["fds"]["stderr"]["text"] == format!("err {i}\n");
        if ran && out_ok && err_ok {
            whole += 1;
            let kept = std::fs::read_to_string(dir.path().join(format!("k{i:02}.out")))
                .expect("kept file");
            assert!(kept == want, "p{i:02}: the kept file is whole");
        } else {
            assert!(
                errors.contains("file descriptors") || errors.contains("Too many open files"),
                "p{i:02} lost output with no word why: {r}"
            );
        }
    }
    assert!(whole >= n / 2, "only {whole} of {n} ran whole: {stderr}");
}
