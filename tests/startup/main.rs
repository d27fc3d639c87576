//! Start-up behaviour of the `chaperone` binary when the kernel refuses io_uring.

use std::os::unix::process::CommandExt;
use std::process::Command;

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

#[test]
fn cli_names_the_cause_when_io_uring_is_denied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"specs": {"a": {"argv": ["/bin/true"]}}}"#).expect("write spec");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chaperone"));
    cmd.arg("--print").arg(&spec);
    // SAFETY: the closure only makes prctl calls, which are async-signal-safe.
    unsafe { cmd.pre_exec(deny_io_uring) };
    let out = cmd.output().expect("run chaperone");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "stderr: {stderr}");
    assert!(
        stderr.contains("io_uring is unavailable"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("EPERM"), "stderr: {stderr}");
    assert!(stderr.contains("io_uring_disabled"), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "no results without a reactor");
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
