//! Tests of whole requests: JSON through [`parse_input`] and [`validate`],
//! across the concepts of the other files (each file tests its own parts).

use super::*;
use proptest::prelude::*;

const EXAMPLE: &str = r#"{"specs": {
  "build": {
"exe": "/usr/bin/bash",
"argv": ["build-step", "-c", "echo \"$0 in $PWD as $GREETING\"; echo oops >&2; head -c 4 /dev/zero >&3; exit 3"],
"env": {"inherit": ["PATH", "HOME"], "vars": {"GREETING": "hello", "HOME": null}},
"fds": [
  ["stdin",  {"null": {"flags": "Read"}}],
  ["stdout", {"capture": {"mode": "memory",   "encoding": "utf-8", "attached": true}}],
  ["stderr", {"capture": {"mode": "tempfile", "encoding": "utf-8", "attached": false}}],
  ["3",      {"capture": {"mode": "memory",   "encoding": null}}],
  ["4",      {"file": {"path": "/tmp/example/fd4.log", "flags": "CreateAppend", "mode": 420}}],
  ["5",      "close"]
],
"systemd_properties": {
  "scope": {"oom_policy": "kill", "runtime_max_usec": 60000000},
  "slice": {"memory_accounting": true, "memory_max": 1073741824, "memory_swap_max": 0,
            "tasks_accounting": true, "tasks_max": 64}}
  },
  "producer": {"argv": ["/usr/bin/seq", "3"], "fds": [["stdout", "pipe-write"]]},
  "consumer": {"argv": ["/usr/bin/tac"],
           "fds": [["stdin", {"pipe-read": {"proc_id": "producer", "fd": "stdout"}}],
                   ["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]}
}}"#;

fn parse(json: &str) -> Result<Input, SpecError> {
    parse_input(json.as_bytes())
}

fn json_err(json: &str) -> String {
    match parse(json) {
        Err(SpecError::Json(msg)) => msg,
        other => panic!("expected a JSON error, got {other:?}"),
    }
}

/// Parses `{"fds": [["stdout", <fd>]]}` as proc `p` and returns the fd spec.
fn fd(fd_json: &str) -> Result<FdSpec, SpecError> {
    let input = parse(&format!(
        r#"{{"specs": {{"p": {{"argv": ["x"], "fds": [["stdout", {fd_json}]]}}}}}}"#
    ))?;
    Ok(input.specs.get("p").unwrap().fds[0].1.clone())
}

fn validated(json: &str) -> Result<(), SpecError> {
    validate(&parse(json)?)
}

#[test]
fn parse_accepts_contract_example() {
    let input = parse(EXAMPLE).unwrap();
    validate(&input).unwrap();
    let ids: Vec<_> = input.specs.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["build", "producer", "consumer"]);

    let build = input.specs.get("build").unwrap();
    assert_eq!(build.exe(), Some("/usr/bin/bash"));
    assert_eq!(
        build.env.inherit,
        EnvInherit::Names(vec!["PATH".into(), "HOME".into()])
    );
    assert_eq!(build.env.vars.get("HOME"), Some(&None));
    assert_eq!(build.fds.len(), 6);
    assert_eq!(
        build.fds[0],
        (
            "stdin".into(),
            FdSpec::Null {
                flags: OpenFlag::Read
            }
        )
    );
    assert_eq!(
        build.fds[2].1,
        FdSpec::Capture {
            mode: CaptureMode::Tempfile,
            encoding: Encoding::Utf8,
            attached: false,
            head: None,
            tail: None,
            compress: None,
            compress_level: None,
            path: None,
            dir: None,
            memory: false,
        }
    );
    assert_eq!(
        build.fds[4].1,
        FdSpec::File {
            path: "/tmp/example/fd4.log".into(),
            flags: OpenFlag::CreateAppend,
            mode: 0o644
        }
    );
    assert_eq!(build.fds[5].1, FdSpec::Close);
    assert!(build.systemd_properties.is_some());

    let consumer = input.specs.get("consumer").unwrap();
    assert_eq!(consumer.exe(), Some("/usr/bin/tac"));
}

#[test]
fn serialize_round_trips_contract_example() {
    let input = parse(EXAMPLE).unwrap();
    let json = serde_json::to_string(&input).unwrap();
    assert_eq!(parse(&json).unwrap(), input);
    // Order is kept and inherit is written as valid input.
    assert!(json.find("\"build\"").unwrap() < json.find("\"producer\"").unwrap());
    let all = serde_json::to_value(EnvSpec::default()).unwrap();
    assert_eq!(all, serde_json::json!({"inherit": true, "vars": {}}));
}

#[test]
fn parse_rejects_unknown_top_level_key() {
    let msg = json_err(r#"{"procs": {}}"#);
    assert!(
        msg.contains("unknown field `procs`, expected `specs`"),
        "{msg}"
    );
}

#[test]
fn type_errors_name_the_proc_and_fd() {
    let msg = json_err(
        r#"{"specs": {"ok": {"argv": ["x"]},
             "p": {"argv": ["x"], "fds": [["stdin", {"null": {}}],
                   ["stdout", {"capture": {"mode": "memory", "attached": "yes"}}]]}}}"#,
    );
    assert!(
        msg.starts_with("proc p: fd stdout: invalid type: string \"yes\", expected a boolean"),
        "{msg}"
    );
    assert!(msg.contains("at line 3"), "keeps serde's position: {msg}");
    let msg = json_err(r#"{"specs": {"q": {"argv": ["x"], "kill_group": 1}}}"#);
    assert!(
        msg.starts_with("proc q: invalid type: integer `1`"),
        "{msg}"
    );
    // Syntax and top-level errors are left as serde reports them.
    let msg = json_err(r#"{"specs": {"p": "#);
    assert!(msg.starts_with("EOF while parsing"), "{msg}");
}

// An fd spec serde cannot read as any kind ("expected value", with no proc
// or fd named), a key given twice (which a parsed value no longer shows) and
// serde's Rust type names: each placed and said as the spec's author knows
// it.
#[test]
fn every_error_inside_a_proc_is_placed_and_plainly_said() {
    for (fd, shown) in [
        ("{}", "{}"),
        ("7", "7"),
        (r#"["capture"]"#, r#"["capture"]"#),
        (
            r#"{"capture": {}, "file": {"path": "/a"}}"#,
            r#"{"capture": {}"#,
        ),
    ] {
        let msg = json_err(&format!(
            r#"{{"specs": {{"ok": {{"argv": ["x"]}}, "job": {{"argv": ["x"], "fds": [["stdout", {fd}]]}}}}}}"#
        ));
        assert!(
            msg.starts_with(&format!("proc job: fd stdout: not an fd spec: {shown}")),
            "{fd}: {msg}"
        );
        assert!(
            msg.contains("exactly one key") && msg.contains("at line 1"),
            "{msg}"
        );
    }
    let msg = json_err(r#"{"specs": {"job": {"argv": ["x"], "fds": {"stdout": {}}}}}"#);
    assert!(
        msg.starts_with("proc job: fd stdout: not an fd spec"),
        "{msg}"
    );
    let msg =
        json_err(r#"{"specs": {"a": {"argv": ["x"]}, "job": {"argv": ["x"], "argv": ["y"]}}}"#);
    assert!(msg.starts_with("proc job: duplicate field `argv`"), "{msg}");
    let msg = json_err(r#"{"specs": {"job": {"argv": ["x"], "timeout": 5}}}"#);
    assert!(
        msg.starts_with("proc job: invalid type: integer `5`, expected an object (timeout)"),
        "{msg}"
    );
    let msg =
        json_err(r#"{"specs": {"job": {"argv": ["x"], "fds": [["stdout", {"capture": null}]]}}}"#);
    assert!(
        msg.starts_with(
            "proc job: fd stdout: invalid type: null, expected an object for `capture`"
        ),
        "{msg}"
    );
}

#[test]
fn parse_rejects_unknown_proc_field() {
    let msg = json_err(r#"{"specs": {"p": {"argv": ["x"], "workdir": "/"}}}"#);
    assert!(msg.contains("unknown field `workdir`"), "{msg}");
}

#[test]
fn parse_rejects_duplicate_proc_id_in_one_object() {
    let msg = json_err(r#"{"specs": {"a": {"argv": ["x"]}, "a": {"argv": ["y"]}}}"#);
    assert!(msg.starts_with("duplicate proc id: a"), "{msg}");
}

#[test]
fn parse_rejects_wrong_types() {
    json_err(r#"{"specs": {"p": {"argv": "x"}}}"#);
    json_err(r#"{"specs": {"p": {"argv": ["x"], "fds": [["stdout"]]}}}"#);
    json_err(r#"{"specs": {"p": {"argv": ["x"], "env": {"inherit": "yes"}}}}"#);
    json_err(r#"{"specs": []}"#);
    json_err("not json");
}

#[test]
fn fd_spec_parses_every_variant() {
    assert_eq!(fd(r#""inherit""#).unwrap(), FdSpec::Inherit);
    assert_eq!(fd(r#"{"inherit": null}"#).unwrap(), FdSpec::Inherit);
    assert_eq!(fd(r#""close""#).unwrap(), FdSpec::Close);
    assert_eq!(
        fd(r#"{"null": {"flags": "Write"}}"#).unwrap(),
        FdSpec::Null {
            flags: OpenFlag::Write
        }
    );
    assert_eq!(
        fd(r#"{"file": {"path": "/x"}}"#).unwrap(),
        FdSpec::File {
            path: "/x".into(),
            flags: OpenFlag::Default,
            mode: 0o666
        }
    );
    assert_eq!(fd(r#"{"dup": {"fd": 2}}"#).unwrap(), FdSpec::Dup { fd: 2 });
    assert_eq!(
        fd(r#"{"capture": {"mode": "memory", "encoding": "utf-8", "attached": false, "head": 10, "tail": 20}}"#)
            .unwrap(),
        FdSpec::Capture {
            mode: CaptureMode::Memory,
            encoding: Encoding::Utf8,
            attached: false,
            head: Some(10),
            tail: Some(20),
            compress: None,
            compress_level: None,
            path: None,
            dir: None,
            memory: false,
        }
    );
    assert_eq!(fd(r#""pipe-write""#).unwrap(), FdSpec::PipeWrite);
    assert_eq!(
        fd(r#"{"pipe-read": {"proc_id": "a", "fd": "1"}}"#).unwrap(),
        FdSpec::PipeRead {
            proc_id: "a".into(),
            fd: "1".into()
        }
    );
}

#[test]
fn fd_spec_rejects_bare_null_and_bad_forms() {
    assert!(fd(r#""null""#).is_err());
    assert!(fd(r#""capture""#).is_err());
    assert!(fd(r#"{"dup": {"fd": "2"}}"#).is_err());
    assert!(fd(r#"{"dup": {"fd": 2, "extra": 1}}"#).is_err());
    assert!(fd(r#"{"file": {"path": "/x", "mode": -1}}"#).is_err());
    assert!(fd(r#"{"null": {"flags": "read"}}"#).is_err());
    assert!(fd(r#"{"capture": {"encoding": "latin-1"}}"#).is_err());
    assert!(fd(r#""pipe_write""#).is_err());
}

#[test]
fn capture_has_contract_defaults() {
    assert_eq!(
        fd(r#"{"capture": {}}"#).unwrap(),
        FdSpec::Capture {
            mode: CaptureMode::Tempfile,
            encoding: Encoding::Base64,
            attached: true,
            head: None,
            tail: None,
            compress: None,
            compress_level: None,
            path: None,
            dir: None,
            memory: false,
        }
    );
    assert_eq!(
        fd(r#"{"capture": {"encoding": "base64"}}"#).unwrap(),
        fd(r#"{"capture": {"encoding": null}}"#).unwrap()
    );
}

#[test]
fn capture_serializes_like_procstar() {
    let v = serde_json::to_value(fd(r#"{"capture": {}}"#).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"capture": {"mode": "tempfile", "encoding": null, "attached": true}})
    );
    let v = serde_json::to_value(FdSpec::PipeWrite).unwrap();
    assert_eq!(v, serde_json::json!("pipe-write"));
}

#[test]
fn validate_rejects_bad_fd_name() {
    let err =
        validated(r#"{"specs": {"p": {"argv": ["x"], "fds": [["bogus", "close"]]}}}"#).unwrap_err();
    assert_eq!(err.to_string(), "proc p: bad fd name: bogus");
}

#[test]
fn validate_accepts_negative_fd_name() {
    validated(r#"{"specs": {"p": {"argv": ["x"], "fds": [["-1", "close"]]}}}"#).unwrap();
}

#[test]
fn validate_rejects_duplicate_fd_alias() {
    let err = validated(
        r#"{"specs": {"p": {"argv": ["x"], "fds": [["stdout", "close"], ["1", "inherit"]]}}}"#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        SpecError::DuplicateFd {
            proc_id: "p".into(),
            fd: 1
        }
    );
    assert_eq!(err.to_string(), "proc p: duplicate fd: 1");
}

#[test]
fn validate_rejects_empty_argv() {
    let err = validated(r#"{"specs": {"p": {}}}"#).unwrap_err();
    assert_eq!(err.to_string(), "proc p: argv is empty");
}

#[test]
fn validate_rejects_nul_bytes() {
    let err = validated(r#"{"specs": {"p": {"argv": ["a", "b\u0000"]}}}"#).unwrap_err();
    assert_eq!(err.to_string(), "proc p: argv[1] contains a nul byte");
    let err = validated(r#"{"specs": {"p": {"argv": ["a"], "exe": "\u0000"}}}"#).unwrap_err();
    assert_eq!(err.to_string(), "proc p: exe contains a nul byte");
    let err = validated(r#"{"specs": {"p": {"argv": ["a"], "env": {"vars": {"A": "\u0000"}}}}}"#)
        .unwrap_err();
    assert_eq!(err.to_string(), "proc p: env.vars.A contains a nul byte");
    let err = validated(
        r#"{"specs": {"p": {"argv": ["a"], "fds": [["1", {"file": {"path": "/\u0000"}}]]}}}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "proc p: fds.1.file.path contains a nul byte"
    );
}

#[test]
fn validate_rejects_unknown_perf_event_naming_it_and_the_field() {
    let err =
        validated(r#"{"specs": {"p": {"argv": ["a"], "perf": ["task_clock", "cpu-cycles"]}}}"#)
            .unwrap_err();
    assert_eq!(
        err,
        SpecError::BadPerfEvent {
            proc_id: "p".into(),
            name: "cpu-cycles".into()
        }
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(r#"proc p: perf: unknown event "cpu-cycles""#),
        "{msg}"
    );
    assert!(msg.contains("task_clock"), "{msg}");
    validated(r#"{"specs": {"p": {"argv": ["a"], "perf": ["cycles", "task_clock"]}}}"#).unwrap();
    validated(r#"{"specs": {"p": {"argv": ["a"], "perf": false}}}"#).unwrap();
}

#[test]
fn perf_of_the_wrong_type_is_a_json_error_naming_the_field() {
    let err = validated(r#"{"specs": {"p": {"argv": ["a"], "perf": "yes"}}}"#).unwrap_err();
    assert!(
        matches!(err, SpecError::Json(ref m) if m.contains("`perf`")),
        "{err}"
    );
    let err = validated(r#"{"specs": {"p": {"argv": ["a"], "perf": [1]}}}"#).unwrap_err();
    assert!(matches!(err, SpecError::Json(_)), "{err}");
}

#[test]
fn validate_rejects_bad_env_name() {
    let err = validated(r#"{"specs": {"p": {"argv": ["a"], "env": {"vars": {"A=B": "c"}}}}}"#)
        .unwrap_err();
    assert!(matches!(err, SpecError::BadEnvName { .. }), "{err}");
}

#[test]
fn validate_rejects_unmatched_write_pipe() {
    let err = validated(r#"{"specs": {"x": {"argv": ["a"], "fds": [["stdout", "pipe-write"]]}}}"#)
        .unwrap_err();
    assert_eq!(err.to_string(), "unmatched write pipe: x 1");
}

#[test]
fn validate_rejects_unmatched_read_pipe() {
    let err = validated(
        r#"{"specs": {"c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "stdout"}}]]}}}"#,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "unmatched read pipe: x stdout");
    // A pipe-read of an fd that exists but is not a pipe-write is unmatched too.
    let err = validated(
        r#"{"specs": {"x": {"argv": ["a"], "fds": [["stdout", "close"]]},
                      "c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "1"}}]]}}}"#,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "unmatched read pipe: x 1");
}

#[test]
fn validate_matches_pipes_by_fd_number() {
    validated(
        r#"{"specs": {"c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "1"}}]]},
                      "x": {"argv": ["a"], "fds": [["stdout", "pipe-write"]]}}}"#,
    )
    .unwrap();
}

#[test]
fn validate_rejects_second_reader_of_one_pipe() {
    let err = validated(
        r#"{"specs": {"x": {"argv": ["a"], "fds": [["stdout", "pipe-write"]]},
                      "c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "1"}}],
                                                  ["3", {"pipe-read": {"proc_id": "x", "fd": "stdout"}}]]}}}"#,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "duplicate read pipe: x 1");
}

#[test]
fn validate_rejects_bad_fd_name_in_pipe_read() {
    let err = validated(
        r#"{"specs": {"c": {"argv": ["a"], "fds": [["stdin", {"pipe-read": {"proc_id": "x", "fd": "out"}}]]}}}"#,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "proc c: bad fd name: out");
}

fn capture_check(capture: &str) -> Result<(), SpecError> {
    let text = format!(
        r#"{{"specs": {{"p": {{"argv": ["a"], "fds": [["stdout", {{"capture": {capture}}}]]}}}}}}"#
    );
    validate(&parse_input(text.as_bytes()).unwrap())
}

#[test]
fn file_capture_parses_path_dir_and_memory_and_round_trips() {
    let f = fd(r#"{"capture": {"mode": "file", "path": "out.log", "memory": true}}"#).unwrap();
    assert_eq!(
        f,
        FdSpec::Capture {
            mode: CaptureMode::File,
            encoding: Encoding::Base64,
            attached: true,
            head: None,
            tail: None,
            path: Some("out.log".into()),
            dir: None,
            memory: true,
            compress: None,
            compress_level: None,
        }
    );
    let again: FdSpec = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
    assert_eq!(again, f);
    assert!(capture_check(r#"{"mode": "file", "dir": "/tmp"}"#).is_ok());
    assert!(capture_check(r#"{"mode": "file", "path": "x", "memory": true}"#).is_ok());
}

#[test]
fn file_capture_needs_exactly_one_of_path_and_dir() {
    let both = capture_check(r#"{"mode": "file", "path": "a", "dir": "/tmp"}"#).unwrap_err();
    assert!(
        matches!(
            both,
            SpecError::BadCapture {
                field: "path",
                fd: 1,
                ..
            }
        ),
        "{both:?}"
    );
    assert!(both.to_string().contains("either path or dir"), "{both}");
    let neither = capture_check(r#"{"mode": "file"}"#).unwrap_err();
    assert!(
        neither
            .to_string()
            .contains("capture path: mode \"file\" needs a path or a dir"),
        "{neither}"
    );
    let empty = capture_check(r#"{"mode": "file", "dir": ""}"#).unwrap_err();
    assert!(
        matches!(empty, SpecError::BadCapture { field: "dir", .. }),
        "{empty:?}"
    );
    let nul = capture_check(r#"{"mode": "file", "path": "a\u0000b"}"#).unwrap_err();
    assert!(nul.to_string().contains("fds.stdout.capture.path"), "{nul}");
}

#[test]
fn path_dir_and_memory_are_rejected_outside_file_mode() {
    for (capture, field) in [
        (r#"{"mode": "memory", "path": "a"}"#, "path"),
        (r#"{"mode": "tempfile", "dir": "/tmp"}"#, "dir"),
        (r#"{"memory": true}"#, "memory"),
    ] {
        let e = capture_check(capture).unwrap_err();
        assert!(
            matches!(&e, SpecError::BadCapture { field: f, .. } if *f == field),
            "{capture}: {e:?}"
        );
    }
    let bad_mode = parse_input(
        br#"{"specs": {"p": {"argv": ["a"], "fds": [["1", {"capture": {"mode": "disk"}}]]}}}"#,
    )
    .unwrap_err();
    assert!(
        bad_mode.to_string().contains("unknown variant `disk`"),
        "{bad_mode}"
    );
}

#[test]
fn validate_rejects_overflowing_capture_window() {
    let max = u64::MAX;
    let err = validated(&format!(
        r#"{{"specs": {{"p": {{"argv": ["a"], "fds": [["1", {{"capture": {{"head": {max}, "tail": 1}}}}]]}}}}}}"#
    ))
    .unwrap_err();
    assert!(
        matches!(err, SpecError::CaptureTooLarge { fd: 1, .. }),
        "{err}"
    );
    validated(
        r#"{"specs": {"p": {"argv": ["a"], "fds": [["1", {"capture": {"head": 1048576, "tail": 1048576}}]]}}}"#,
    )
    .unwrap();
}

#[test]
fn capture_compress_parses_and_validates() {
    let spec = |cap: &str| {
        format!(r#"{{"specs": {{"p": {{"argv": ["a"], "fds": [["2", {{"capture": {cap}}}]]}}}}}}"#)
    };
    assert_eq!(
        fd(r#"{"capture": {"compress": "zstd", "compress_level": 5}}"#).unwrap(),
        FdSpec::Capture {
            mode: CaptureMode::Tempfile,
            encoding: Encoding::Base64,
            attached: true,
            head: None,
            tail: None,
            compress: Some("zstd".into()),
            compress_level: Some(5),
            path: None,
            dir: None,
            memory: false,
        }
    );
    validated(&spec(r#"{"compress": "zstd"}"#)).unwrap();
    validated(&spec(
        r#"{"mode": "memory", "compress": "zstd", "compress_level": 19}"#,
    ))
    .unwrap();
    let err = |cap: &str| validated(&spec(cap)).unwrap_err().to_string();
    assert_eq!(
        err(r#"{"compress": "gzip"}"#),
        r#"proc p: fd 2: capture compress: unknown algorithm "gzip" (expected one of ["zstd"])"#
    );
    assert_eq!(
        err(r#"{"compress": "zstd", "compress_level": 0}"#),
        "proc p: fd 2: capture compress_level: 0 out of range 1..=19"
    );
    assert_eq!(
        err(r#"{"compress": "zstd", "compress_level": 20}"#),
        "proc p: fd 2: capture compress_level: 20 out of range 1..=19"
    );
    assert_eq!(
        err(r#"{"compress_level": 3}"#),
        "proc p: fd 2: capture compress_level: given without compress"
    );
    // Wrong JSON types are schema errors naming the expected type.
    assert!(parse(&spec(r#"{"compress": 1}"#)).is_err());
    assert!(parse(&spec(r#"{"compress": "zstd", "compress_level": "fast"}"#)).is_err());
    assert!(parse(&spec(r#"{"compress": "zstd", "compress_level": 1.5}"#)).is_err());
}

#[test]
fn validate_rejects_an_empty_proc_id() {
    let input = parse(r#"{"specs": {"a": {"argv": ["x"]}, "": {"argv": ["y"]}}}"#).unwrap();
    let err = validate_with_existing(&input, |_| false).unwrap_err();
    assert_eq!(err, SpecError::EmptyProcId);
    assert_eq!(err.to_string(), "a proc id is empty");
}

#[test]
fn validate_with_existing_rejects_existing_proc_id() {
    let input = parse(r#"{"specs": {"s1": {"argv": ["a"]}}}"#).unwrap();
    let err = validate_with_existing(&input, |id| id == "s1").unwrap_err();
    assert_eq!(err.to_string(), "duplicate proc id: s1");
    validate_with_existing(&input, |id| id == "s2").unwrap();
}

/// A JSON value drawn from the spec's vocabulary, so the fuzzing reaches deep into
/// the schema rather than failing at the top level.
fn spec_like_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let words = prop::sample::select(vec![
        "specs",
        "argv",
        "exe",
        "env",
        "inherit",
        "vars",
        "fds",
        "stdin",
        "stdout",
        "stderr",
        "1",
        "-1",
        "bogus",
        "inherit",
        "close",
        "null",
        "file",
        "path",
        "flags",
        "mode",
        "dup",
        "fd",
        "capture",
        "memory",
        "tempfile",
        "encoding",
        "utf-8",
        "attached",
        "head",
        "tail",
        "compress",
        "compress_level",
        "zstd",
        "dir",
        "pipe-write",
        "pipe-read",
        "proc_id",
        "p",
        "q",
        "Read",
        "Default",
        "systemd_properties",
        "id",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        words.clone().prop_map(Value::from),
        ".{0,4}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((words.clone(), inner), 0..4).prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

proptest! {
    #[test]
    fn parse_input_never_panics_on_arbitrary_text(s in "[{}\\[\\]\",:a-z0-9 \\-\\\\]{0,80}") {
        if let Ok(input) = parse_input(s.as_bytes()) {
            let _ = validate(&input);
        }
    }

    #[test]
    fn parse_input_never_panics_on_spec_like_json(v in spec_like_json()) {
        let wrapped = serde_json::json!({"specs": {"p": v.clone(), "q": {"argv": ["x"], "fds": [["1", v.clone()]]}}});
        for doc in [v, wrapped] {
            let text = serde_json::to_vec(&doc).unwrap();
            if let Ok(input) = parse_input(&text) {
                let _ = validate(&input);
                let again = serde_json::to_vec(&input).unwrap();
                prop_assert_eq!(parse_input(&again).unwrap(), input);
            }
        }
    }

}

#[test]
fn rlimits_of_every_shape_parse_and_a_wrong_shape_is_told_the_shapes() {
    let input = parse(
        r#"{"specs": {"p": {"argv": ["x"], "rlimits":
            {"nofile": [10, 20], "core": 0, "cpu": null, "stack": [null, 5]}}}}"#,
    )
    .unwrap();
    let r = &input.specs.get("p").unwrap().rlimits;
    assert_eq!(r["nofile"], RlimitSpec::Pair(Some(10), Some(20)));
    assert_eq!(r["core"], RlimitSpec::Both(Some(0)));
    assert_eq!(r["cpu"], RlimitSpec::Both(None));
    assert_eq!(r["stack"], RlimitSpec::Pair(None, Some(5)));
    // RLIM_INFINITY as a number is unlimited too.
    let input = parse(
        r#"{"specs": {"p": {"argv": ["x"], "rlimits":
            {"core": 18446744073709551615, "as": [1, 18446744073709551615]}}}}"#,
    )
    .unwrap();
    let r = &input.specs.get("p").unwrap().rlimits;
    assert_eq!(r["core"], RlimitSpec::Both(None));
    assert_eq!(r["as"], RlimitSpec::Pair(Some(1), None));
    for (limit, told) in [
        (r#"{"soft": 10, "hard": 20}"#, "invalid type: map"),
        ("[1]", "not [soft, hard]"),
        ("[1, 2, 3]", "not [soft, hard]"),
        ("1.5", "invalid type: floating point"),
        ("\"unlimited\"", "invalid type: string"),
        ("18446744073709551614", "too large for a limit"),
        ("[1, 9223372036854775808]", "too large for a limit"),
    ] {
        let msg = json_err(&format!(
            r#"{{"specs": {{"p": {{"argv": ["x"], "rlimits": {{"nofile": {limit}}}}}}}}}"#
        ));
        assert!(msg.contains(told), "{limit}: {msg}");
        assert!(
            msg.starts_with("proc p: rlimits.nofile: "),
            "{limit}: {msg}"
        );
        if !told.starts_with("too large") {
            assert!(
                msg.contains("[soft, hard], one number for both, or null"),
                "{limit}: {msg}"
            );
        }
    }
}

#[test]
fn signals_and_users_of_the_wrong_type_are_told_what_is_expected() {
    let p = parse(
        r#"{"specs": {"p": {"argv": ["x"], "pdeath_sig": "SIGTERM", "user": 0, "group": "adm",
            "timeout": {"after": 1, "signal": 9}}}}"#,
    )
    .unwrap();
    let p = p.specs.get("p").unwrap();
    assert_eq!(p.pdeath_sig, Some(SignalRef::Name("SIGTERM".into())));
    assert_eq!(p.user, Some(IdRef::Id(0)));
    assert_eq!(p.group, Some(IdRef::Name("adm".into())));
    assert_eq!(
        p.timeout.as_ref().unwrap().signal,
        Some(SignalRef::Number(9))
    );
    for (field, told) in [
        (
            r#""pdeath_sig": [1]"#,
            "invalid type: sequence, expected a signal: a name such as \"SIGTERM\", or a number",
        ),
        (
            r#""signals": {"mask": [{}]}"#,
            "invalid type: map, expected a signal",
        ),
        (
            r#""user": {"a": 1}"#,
            "invalid type: map, expected a user or group: a name, or a numeric id",
        ),
        (
            r#""group": 1.5"#,
            "invalid type: floating point `1.5`, expected a user or group",
        ),
        (
            r#""user": 18446744073709551615"#,
            "18446744073709551615 is too large for a user or group id",
        ),
    ] {
        let msg = json_err(&format!(
            r#"{{"specs": {{"p": {{"argv": ["x"], {field}}}}}}}"#
        ));
        assert!(msg.contains(told), "{field}: {msg}");
    }
}

#[test]
fn a_bad_fd_name_that_does_not_show_is_quoted() {
    let err = |name: &str| {
        let json = format!(
            r#"{{"specs": {{"p": {{"argv": ["x"], "fds": {{"{name}": {{"null": {{}}}}}}}}}}}}"#
        );
        validate_with_existing(&parse(&json).unwrap(), |_| false)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(err("bogus"), "proc p: bad fd name: bogus");
    assert_eq!(err("stdout "), r#"proc p: bad fd name: "stdout ""#);
    assert_eq!(err(""), r#"proc p: bad fd name: """#);
    assert_eq!(err("1\\t"), r#"proc p: bad fd name: "1\t""#);
}
