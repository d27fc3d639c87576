//! Black-box acceptance cases through the `chaperone --print` binary: exit codes,
//! spec errors, and results for the Procstar contract's acceptance cases (the
//! formats docs/spec.md describes).

#[path = "../util/mod.rs"]
mod util;

use serde_json::{Value, json};
use util::*;

//------------------------------------------------------------------------------
// Exit codes and request errors
//------------------------------------------------------------------------------

#[test]
fn cli_exits_0_with_results_when_spec_runs() {
    let (code, res) = run_cli(&json!({"specs": {"t": {"argv": ["/bin/true"]}}}));
    assert_eq!(code, 0);
    assert_exit0(&res["t"]);
    assert_eq!(res.as_object().unwrap().len(), 1);
}

#[test]
fn cli_output_to_a_fifo_reaches_its_reader() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"specs": {"e": {"argv": ["/bin/echo", "hi"]}}}"#).unwrap();
    let fifo = mkfifo(dir.path(), "results");
    let (status, got) = run_into_fifo(
        &["--output", fifo.to_str().unwrap(), spec.to_str().unwrap()],
        &fifo,
    );
    assert!(status.success(), "{status}");
    let res: Value = serde_json::from_slice(&got).expect("the results, whole");
    assert_eq!(res["e"]["state"], "terminated");
}

#[test]
fn cli_exits_2_when_spec_is_not_json() {
    let out = run_cli_raw(b"{\"specs\": {");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(!out.stderr.is_empty());
}

#[test]
fn cli_exits_2_with_message_when_top_level_key_is_procs() {
    let out = run_cli_raw(br#"{"procs": {"a": {"argv": ["/bin/true"]}}}"#);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `procs`, expected `specs`"),
        "stderr: {err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn cli_exits_2_when_spec_file_is_missing() {
    let out = std::process::Command::new(bin())
        .args(["--print", "/no/such/spec.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// Case 26: a duplicate fd alias is rejected as a start error.
#[test]
fn cli_exits_65_when_fd_alias_is_duplicated() {
    let out = run_cli_raw(
        &serde_json::to_vec(&json!({"specs": {"x": {
            "argv": ["/bin/true"],
            "fds": [["1", mem_utf8()], ["stdout", mem_utf8()]]}}}))
        .unwrap(),
    );
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("duplicate fd"), "stderr: {err}");
    assert!(out.stdout.is_empty());
}

// Case 26: an unmatched pipe-write is rejected as a start error.
#[test]
fn cli_exits_65_when_write_pipe_is_unmatched() {
    let out = run_cli_raw(
        &serde_json::to_vec(
            &json!({"specs": {"x": {"argv": ["/bin/true"], "fds": [["1", "pipe-write"]]}}}),
        )
        .unwrap(),
    );
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unmatched write pipe: x 1"), "stderr: {err}");
}

// Defect 7: an empty argv is rejected instead of panicking (exit 101).
#[test]
fn cli_exits_65_when_argv_is_empty() {
    let out = run_cli_raw(br#"{"specs": {"e": {"argv": []}}}"#);
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("argv is empty"), "stderr: {err}");
}

// Under a tiny fd limit the agent says so and exits 65: tokio's signal set-up
// panicked (exit 101) at limits of 9 to 11.
#[test]
fn cli_exits_65_naming_an_fd_limit_too_low_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"specs": {"t": {"argv": ["/bin/true"]}}}"#).unwrap();
    for limit in [9, 10, 11, 31] {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" --print \"$1\""))
            .arg(bin())
            .arg(&spec)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(65), "limit {limit}: {err}");
        assert!(
            err.contains(&format!(
                "the fd limit (RLIMIT_NOFILE, ulimit -n) is {limit}"
            )),
            "limit {limit}: {err}"
        );
    }
}

#[test]
fn cli_exits_65_when_no_mode_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.json");
    std::fs::write(&path, br#"{"specs": {}}"#).unwrap();
    let out = std::process::Command::new(bin())
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
}

#[test]
fn cli_starts_nothing_when_request_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = run_cli_raw(
        &serde_json::to_vec(&json!({"specs": {
            "good": {"argv": ["/usr/bin/touch", marker]},
            "bad": {"argv": ["/bin/true"], "fds": [["1", "pipe-write"]]}}}))
        .unwrap(),
    );
    assert_eq!(out.status.code(), Some(65));
    assert!(!marker.exists(), "a proc of a rejected request ran");
}

//------------------------------------------------------------------------------
// Cases 1–4: capture and encodings
//------------------------------------------------------------------------------

// Case 1.
#[test]
fn cli_captures_echo_as_text_in_memory_and_tempfile() {
    let argv = json!(["/bin/echo", "Hello, world.", "How are you?"]);
    let (code, res) = run_cli(&json!({"specs": {
        "mem": {"argv": argv, "fds": [["stdout", mem_utf8()]]},
        "tmp": {"argv": argv, "fds": [["stdout", tmp_utf8()]]}}}));
    assert_eq!(code, 0);
    for id in ["mem", "tmp"] {
        assert_exit0(&res[id]);
        assert_eq!(res[id]["status"]["status"], 0);
        assert_eq!(
            res[id]["fds"]["stdout"],
            json!({"type": "text", "text": "Hello, world. How are you?\n",
                   "encoding": "utf-8"}),
            "{id}"
        );
    }
}

// Case 2.
#[test]
fn cli_captures_echo_as_base64_when_encoding_is_null() {
    let argv = json!(["/bin/echo", "Hello, world.", "How are you?"]);
    let (code, res) = run_cli(&json!({"specs": {
        "mem": {"argv": argv, "fds": [["stdout", mem_b64()]]},
        "tmp": {"argv": argv, "fds": [["stdout", {"capture": {"mode": "tempfile", "encoding": null}}]]}}}));
    assert_eq!(code, 0);
    for id in ["mem", "tmp"] {
        let f = &res[id]["fds"]["stdout"];
        assert!(
            f["data"].as_str().unwrap().starts_with("SGVsbG8s"),
            "{id}: {f}"
        );
        assert_eq!(data_of(&res[id], "stdout"), b"Hello, world. How are you?\n");
    }
}

// Case 3.
#[test]
fn cli_reproduces_interleaved_binary_streams_separately() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "interleave.py",
        "#!/usr/bin/python3\nimport os\nfor i in range(256):\n    os.write(2 if i % 3 == 0 else 1, bytes([i]) * i)\n",
    );
    let (code, res) = run_cli(&json!({"specs": {"i": {"argv": [prog],
        "fds": [["stdout", mem_b64()],
                ["stderr", {"capture": {"mode": "tempfile", "encoding": null}}]]}}}));
    assert_eq!(code, 0);
    assert_exit0(&res["i"]);
    let want = |pick: fn(usize) -> bool| -> Vec<u8> {
        (0..256usize)
            .filter(|&i| pick(i))
            .flat_map(|i| std::iter::repeat_n(i as u8, i))
            .collect()
    };
    assert_eq!(data_of(&res["i"], "stdout"), want(|i| i % 3 != 0));
    assert_eq!(data_of(&res["i"], "stderr"), want(|i| i % 3 == 0));
}

// Case 4.
#[test]
fn cli_replaces_invalid_utf8_with_replacement_chars() {
    let (code, res) = run_cli(&json!({"specs": {"p": {
        "argv": ["/usr/bin/printf", "abc\\200\\200def"],
        "fds": [["stdout", mem_utf8()]]}}}));
    assert_eq!(code, 0);
    let text = text_of(&res["p"], "stdout");
    assert_eq!(text, "abc\u{FFFD}\u{FFFD}def");
    assert_eq!(text.chars().count(), 8);
}

//------------------------------------------------------------------------------
// Case 9: environment
//------------------------------------------------------------------------------

fn env_of(res: &Value) -> Vec<String> {
    text_of(res, "stdout").lines().map(str::to_string).collect()
}

#[test]
fn cli_env_sets_overrides_and_unsets_vars() {
    let (code, res) = run_cli_env(
        &json!({"specs": {"e": {"argv": ["/usr/bin/env"],
            "env": {"vars": {"NEW_VAR": "new", "OVERRIDDEN": "after", "REMOVED": null}},
            "fds": [["stdout", mem_utf8()]]}}}),
        &[("OVERRIDDEN", "before"), ("REMOVED", "x"), ("KEPT", "kept")],
    );
    assert_eq!(code, 0);
    let env = env_of(&res["e"]);
    assert!(env.contains(&"NEW_VAR=new".into()), "{env:?}");
    assert!(env.contains(&"OVERRIDDEN=after".into()), "{env:?}");
    assert!(!env.iter().any(|l| l.starts_with("OVERRIDDEN=before")));
    assert!(!env.iter().any(|l| l.starts_with("REMOVED=")), "{env:?}");
    assert!(env.contains(&"KEPT=kept".into()), "{env:?}");
}

#[test]
fn cli_env_inherits_only_listed_existing_names() {
    let (code, res) = run_cli_env(
        &json!({"specs": {"e": {"argv": ["/usr/bin/env"],
            "env": {"inherit": ["USER", "TERM", "NOT_A_VAR"]},
            "fds": [["stdout", mem_utf8()]]}}}),
        &[("USER", "someone"), ("TERM", "vt100"), ("OTHER", "x")],
    );
    assert_eq!(code, 0);
    let mut env = env_of(&res["e"]);
    env.sort();
    assert_eq!(env, ["TERM=vt100", "USER=someone"]);
}

#[test]
fn cli_env_inherits_nothing_when_inherit_is_false() {
    let (code, res) = run_cli_env(
        &json!({"specs": {"e": {"argv": ["/usr/bin/env"],
            "env": {"inherit": false, "vars": {"ONLY": "1"}},
            "fds": [["stdout", mem_utf8()]]}}}),
        &[("OTHER", "x")],
    );
    assert_eq!(code, 0);
    assert_eq!(env_of(&res["e"]), ["ONLY=1"]);
}

#[test]
fn cli_env_never_passes_agent_secrets() {
    let (code, res) = run_cli_env(
        &json!({"specs": {"e": {"argv": ["/usr/bin/env"],
            "env": {"vars": {"PROCSTAR_AGENT_KEY": "explicit"}},
            "fds": [["stdout", mem_utf8()]]}}}),
        &[
            ("PROCSTAR_AGENT_TOKEN", "s3cret"),
            ("PROCSTAR_AGENT_CERT", "/cert.pem"),
            ("VISIBLE", "yes"),
        ],
    );
    assert_eq!(code, 0);
    let env = env_of(&res["e"]);
    assert!(env.contains(&"VISIBLE=yes".into()), "{env:?}");
    assert!(
        !env.iter().any(|l| l.starts_with("PROCSTAR_AGENT_")),
        "{env:?}"
    );
}

//------------------------------------------------------------------------------
// Cases 10–13: exe, argv[0] and setup errors
//------------------------------------------------------------------------------

// Case 10.
#[test]
fn cli_execs_exe_with_fake_argv0() {
    let (code, res) = run_cli(&json!({"specs": {
        "echo": {"exe": "/usr/bin/echo", "argv": ["foobar", "hi"], "fds": [["stdout", mem_utf8()]]},
        "bash": {"exe": "/bin/bash", "argv": ["Not really bash!", "-c", "echo $0"],
                 "fds": [["stdout", mem_utf8()]]}}}));
    assert_eq!(code, 0);
    assert_exit0(&res["echo"]);
    assert_eq!(text_of(&res["echo"], "stdout"), "hi\n");
    assert_exit0(&res["bash"]);
    assert_eq!(text_of(&res["bash"], "stdout"), "Not really bash!\n");
}

// Case 10: without exe, argv[0] is the path, and there is no PATH search.
#[test]
fn cli_reports_error_when_argv0_is_not_a_path_and_exe_missing() {
    let (code, res) = run_cli(&json!({"specs": {"e": {"argv": ["foobar", "hi"]}}}));
    assert_eq!(code, 0);
    assert_eq!(res["e"]["state"], "error", "{}", res["e"]);
}

// Case 11, plus the `failure` extension.
#[test]
fn cli_reports_exec_stage_and_errno_when_exe_missing() {
    let (code, res) = run_cli(&json!({"specs": {"m": {"argv": ["/no/such/exe"]}}}));
    assert_eq!(code, 0);
    let r = &res["m"];
    assert_eq!(r["state"], "error");
    assert_eq!(
        r["errors"],
        json!(["execve failed: /no/such/exe: No such file or directory (os error 2)"])
    );
    assert!(r["pid"].as_i64().unwrap() > 0, "{r}");
    assert_eq!(r["failure"], json!({"stage": "exec", "errno": 2}));
    assert!(r["status"]["exit_code"].is_i64(), "{r}");
}

// Case 12.
#[test]
fn cli_reports_fd_1_and_2_when_output_paths_are_bad() {
    let (code, res) = run_cli(&json!({"specs": {"b": {"argv": ["/bin/true"],
        "fds": [["stdout", file("/no/such/dir/out".as_ref(), "Write")],
                ["stderr", file("/no/such/dir/err".as_ref(), "Write")]]}}}));
    assert_eq!(code, 0);
    let r = &res["b"];
    assert_eq!(r["state"], "error");
    let errors: Vec<&str> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(errors.iter().any(|e| e.contains("fd 1")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("fd 2")), "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("No such file or directory")),
        "{errors:?}"
    );
}

// Case 13.
#[test]
fn cli_reports_fd_1_when_dup_source_is_not_open() {
    let (code, res) = run_cli(&json!({"specs": {"d": {"argv": ["/bin/true"],
        "fds": [["stdout", {"dup": {"fd": 152}}]]}}}));
    assert_eq!(code, 0);
    let r = &res["d"];
    assert_eq!(r["state"], "error");
    let errors = r["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("failed to set up fd 1")),
        "{r}"
    );
}

// Deliberate difference from Procstar (docs/spec.md): Procstar's "close" of an
// fd >= 3 only worked when the agent had leaked that fd into the child (the
// contract's example closes fd 5 and terminates normally); otherwise EBADF. No
// agent fd reaches a chaperone child, so such a close is a no-op: the process
// runs, and the fd is not open in it.
#[test]
fn cli_close_of_fd_above_2_is_a_noop_and_the_fd_is_not_open() {
    let (code, res) = run_cli(&json!({"specs": {"c": {
        "argv": ["/bin/sh", "-c", "if [ -e /proc/self/fd/200 ] || [ -e /proc/self/fd/5 ]; then echo open; else echo closed; fi"],
        "fds": [["200", "close"], ["5", "close"], ["stdout", mem_utf8()]]}}}));
    assert_eq!(code, 0);
    let r = &res["c"];
    assert_eq!(r["state"], "terminated", "{r}");
    assert_eq!(r["fds"]["stdout"]["text"], "closed\n", "{r}");
}

#[test]
fn cli_closes_stdout_when_spec_says_close() {
    let (code, res) = run_cli(&json!({"specs": {"c": {"argv": ["/bin/echo", "hi"],
        "fds": [["stdout", "close"], ["stderr", mem_utf8()]]}}}));
    assert_eq!(code, 0);
    let r = &res["c"];
    assert_eq!(r["status"]["exit_code"], 1, "{r}");
    assert!(text_of(r, "stderr").contains("Bad file descriptor"), "{r}");
}

//------------------------------------------------------------------------------
// Cases 14–16: files and dups
//------------------------------------------------------------------------------

// Case 14.
#[test]
fn cli_reports_exit_42_and_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "test.py",
        "#!/usr/bin/python3
import sys
print('message to stdout')
print('message to stderr', file=sys.stderr)
if sys.argv[1:2] == ['--exit']:
    sys.exit(int(sys.argv[2]))
",
    );
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let (code, res) = run_cli(&json!({"specs": {"t": {"argv": [prog, "--exit", "42"],
        "fds": [["stdout", file(&out, "Write")], ["stderr", file(&err, "Write")]]}}}));
    assert_eq!(code, 0);
    let r = &res["t"];
    assert_eq!(r["state"], "terminated", "{r}");
    assert_eq!(
        r["status"],
        json!({"status": 10752, "exit_code": 42, "signum": null, "signal": null,
               "core_dump": false})
    );
    assert_eq!(r["fds"], json!({"stdout": null, "stderr": null}));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "message to stdout\n"
    );
    assert_eq!(
        std::fs::read_to_string(&err).unwrap(),
        "message to stderr\n"
    );
}

// Case 15.
#[test]
fn cli_dup_stdout_to_stderr_file_keeps_program_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("both");
    let (code, res) = run_cli(&json!({"specs": {"o": {
        "argv": ["/bin/sh", "-c", "echo one; echo two >&2; echo three"],
        "fds": [["stderr", file(&path, "Write")], ["stdout", {"dup": {"fd": 2}}]]}}}));
    assert_eq!(code, 0);
    assert_exit0(&res["o"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");
}

// Case 16.
#[test]
fn cli_dup_after_capture_merges_streams() {
    let (code, res) = run_cli(&json!({"specs": {"o": {
        "argv": ["/bin/sh", "-c", "echo one; echo two >&2; echo three"],
        "fds": [["stdout", mem_utf8()], ["stderr", {"dup": {"fd": 1}}]]}}}));
    assert_eq!(code, 0);
    assert_exit0(&res["o"]);
    assert_eq!(text_of(&res["o"], "stdout"), "one\ntwo\nthree\n");
    assert_eq!(res["o"]["fds"]["stderr"], Value::Null);
}

//------------------------------------------------------------------------------
// Cases 26–27: pipes and several procs
//------------------------------------------------------------------------------

// Case 26.
#[test]
fn cli_pipes_seq_into_tac() {
    let (code, res) = run_cli(&json!({"specs": {
        "producer": {"argv": ["/usr/bin/seq", "3"], "fds": [["stdout", "pipe-write"]]},
        "consumer": {"argv": ["/usr/bin/tac"],
                     "fds": [["stdin", {"pipe-read": {"proc_id": "producer", "fd": "stdout"}}],
                             ["stdout", mem_utf8()]]}}}));
    assert_eq!(code, 0);
    assert_exit0(&res["producer"]);
    assert_exit0(&res["consumer"]);
    assert_eq!(text_of(&res["consumer"], "stdout"), "3\n2\n1\n");
}

// Case 27.
#[test]
fn cli_gives_each_of_8_echoes_its_own_output() {
    let specs: serde_json::Map<String, Value> = (0..8)
        .map(|i| {
            (
                format!("echo{i}"),
                json!({"argv": ["/bin/echo", format!("I am {i}")],
                       "fds": [["stdout", if i % 2 == 0 { mem_utf8() } else { tmp_utf8() }]]}),
            )
        })
        .collect();
    let (code, res) = run_cli(&json!({ "specs": specs }));
    assert_eq!(code, 0);
    for i in 0..8 {
        let r = &res[format!("echo{i}")];
        assert_exit0(r);
        assert_eq!(text_of(r, "stdout"), format!("I am {i}\n"));
    }
}

// The contract's example file (examples/hello.json) runs as documented.
#[test]
fn cli_runs_example_spec() {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.json"))
            .unwrap(),
    )
    .unwrap();
    let (code, res) = run_cli(&spec);
    assert_eq!(code, 0);
    assert_eq!(
        text_of(&res["hello"], "stdout"),
        "Hello, world. How are you?\n"
    );
    assert_eq!(text_of(&res["consumer"], "stdout"), "3\n2\n1\n");
    assert_eq!(res["missing"]["state"], "error");
}

// `compress` runs after exit, off the reactor: the one-shot CLI waits for it, so
// that its results say `done` and a kept file's `.zst` is complete on exit
// (dropping the agent earlier cancels a compression under way).
#[test]
fn cli_waits_for_compression_before_exiting() {
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("out");
    // About 23 MB: several 4 MiB frames, so compression takes a while.
    let argv = json!(["/usr/bin/seq", "1", "3000000"]);
    let (code, res) = run_cli(&json!({"specs": {
        "kept": {"argv": argv, "fds": [["stdout", {"capture": {
            "mode": "file", "path": kept, "compress": "zstd", "attached": false}}]]},
        "mem": {"argv": argv, "fds": [["stdout", {"capture": {
            "mode": "memory", "compress": "zstd", "attached": false}}]]}}}));
    assert_eq!(code, 0);
    let expected: Vec<u8> = (1..=3_000_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    for id in ["kept", "mem"] {
        assert_exit0(&res[id]);
        let fd = &res[id]["fds"]["stdout"];
        assert_eq!(fd["length"], expected.len() as u64, "{id}");
        assert_eq!(fd["compression"]["state"], "done", "{id}: {fd}");
    }
    let zst = dir.path().join("out.zst");
    assert_eq!(res["kept"]["fds"]["stdout"]["path"], json!(zst));
    assert!(!kept.exists(), "the .zst replaced the original");
    let packed = std::fs::read(&zst).unwrap();
    assert_eq!(
        res["kept"]["fds"]["stdout"]["compression"]["compressed_length"],
        packed.len() as u64
    );
    assert!(zstd::stream::decode_all(&packed[..]).unwrap() == expected);
}

// A log read from a file or a pipe: plain lines (no colour codes), each
// starting with a UTC timestamp to the millisecond, as Procstar's.
#[test]
fn logs_to_a_pipe_are_plain_with_millisecond_timestamps() {
    // No server listens on port 1: the agent logs its failed connection.
    let out = std::process::Command::new(bin())
        .args(["--agent", "--agent-host", "127.0.0.1", "--agent-port", "1"])
        .args(["--connect-count-max", "1"])
        .env_remove("NO_COLOR")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "gave up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains('\x1b'),
        "colour codes in a piped log: {err:?}"
    );
    let first = err.lines().next().expect("a log line");
    let (stamp, _) = first.split_once(' ').expect("stamp, then the rest");
    let shape = stamp.len() == "2026-12-07T10:55:24.123Z".len()
        && stamp.ends_with('Z')
        && stamp.as_bytes()[19] == b'.'
        && stamp[20..23].bytes().all(|b| b.is_ascii_digit());
    assert!(shape, "{first:?}");
}

#[test]
fn an_agent_read_timeout_under_a_second_is_refused() {
    for t in ["0", "0.5"] {
        let out = std::process::Command::new(bin())
            .args([
                "--agent",
                "--agent-host",
                "127.0.0.1",
                "--agent-read-timeout",
                t,
            ])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{t}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("at least 1 second"), "{t}: {err}");
    }
}
