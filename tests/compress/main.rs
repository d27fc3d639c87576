//! Compressed captures (`"compress": "zstd"`) and read encodings through the
//! [`chaperone::Agent`] API: ranged reads of zstd memory and tempfile captures
//! agree byte for byte with the same captures uncompressed, the stored `.zst`
//! bytes decompress to the original output, every read encoding round-trips, and
//! bad `compress` fields are rejected with errors naming them (issue 5).

#[path = "../util/mod.rs"]
mod util;

use base64::Engine as _;
use chaperone::Subscription;
use chaperone::result::{CompressionState, FdExt, FdRes, State};
use chaperone::{Agent, Encoded, Event, FdDataError, ReadEncoding, StartError, spec};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use util::*;

const MIB: u64 = 1 << 20;

/// Deterministic log-like lines, `n` bytes.
fn log_text(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 100);
    let mut i = 0u64;
    while out.len() < n {
        let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 36;
        out.extend_from_slice(
            format!(
                "2026-01-01T00:{:02}:{:02} INFO worker-{} request {x:x} took {}ms\n",
                (i / 60) % 60,
                i % 60,
                i % 7,
                x % 1000
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(n);
    out
}

/// Writes `data` to `dir/name` and returns its path.
fn data_file(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Waits for the `Compressed` event of `id`'s `fd` (after it exited).
fn wait_compressed(events: &Subscription, id: &str, fd: &str) {
    loop {
        // A generous guard against a hang, not a speed check.
        match events.recv_timeout(Duration::from_secs(120)) {
            Ok(Event::Compressed(i, f)) if i == id && f == fd => return,
            Ok(_) => {}
            Err(e) => panic!("no Compressed event for {id} {fd}: {e}"),
        }
    }
}

/// Runs `cat <file>` with `capture` on stdout and returns once it has exited
/// (and, with `compress`, once compression finished).
fn run_cat(a: &Agent, id: &str, file: &Path, capture: Value) {
    start(
        a,
        &json!({"specs": {id: {"argv": ["/bin/cat", file], "fds": [["stdout", capture]]}}}),
    );
    let res = a.wait_compressed(id).expect("known id");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
}

/// The `compression` field of `id`'s stdout.
fn compression(a: &Agent, id: &str) -> chaperone::result::Compression {
    let res = a.result(id).unwrap();
    let fd = res.fds.get("stdout");
    match fd.and_then(|r| r.as_ref()?.ext()?.compression.clone()) {
        Some(c) => c,
        None => panic!("stdout: no compression field: {fd:?}"),
    }
}

/// Ranges to try on a stream of `len` bytes with frames every 4 MiB.
fn ranges(len: u64) -> Vec<(u64, Option<u64>)> {
    vec![
        (0, Some(100)),                     // start
        (0, None),                          // everything
        (MIB, Some(MIB + 4096)),            // middle of the head
        (4 * MIB - 10, Some(4 * MIB + 10)), // across a frame boundary
        (3 * MIB + 5, Some(4 * MIB)),       // inside a dropped middle (head/tail)
        (3 * MIB - 7, Some(5 * MIB + 7)),   // across a dropped middle
        (len - 10, None),                   // end
        (len - 10, Some(len + 1000)),       // across the end
        (len, None),                        // at the end
        (len + 5, Some(len + 50)),          // past the end
        (200, Some(100)),                   // stop < start
        (6 * MIB, Some(6 * MIB)),           // empty
        (u64::MAX - 1, Some(u64::MAX)),     // far past the end
    ]
}

/// Every range of `ranges` reads the same from capture `plain` (uncompressed) as
/// from `zst` (compressed), and matches `model` (held bytes by stream offset).
fn assert_same_reads(a: &Agent, plain: &str, zst: &str, data: &[u8], dropped: Option<(u64, u64)>) {
    let len = data.len() as u64;
    for (start, stop) in ranges(len) {
        let p = a.fd_data(plain, "stdout", start, stop).unwrap();
        let z = a.fd_data(zst, "stdout", start, stop).unwrap();
        assert_eq!(
            (z.start, z.stop, z.length, &z.missing),
            (p.start, p.stop, p.length, &p.missing),
            "range {start}..{stop:?}"
        );
        assert!(z.data == p.data, "range {start}..{stop:?}: bytes differ");
        // The model: the held bytes of [start, stop). (For stop < start, memory
        // and tempfile captures clamp start differently; both serve nothing.)
        let s = start.min(len);
        let e = stop.unwrap_or(u64::MAX).min(len).max(s);
        if stop.is_some_and(|e| e < start) {
            assert!(
                z.data.is_empty() && z.start == z.stop,
                "range {start}..{stop:?}"
            );
            continue;
        }
        assert_eq!((z.start, z.stop, z.length), (s, e, len));
        let held = |o: &u64| dropped.is_none_or(|(lo, hi)| *o < lo || *o >= hi);
        let want: Vec<u8> = (s..e).filter(held).map(|o| data[o as usize]).collect();
        assert!(
            z.data == want,
            "range {start}..{stop:?}: not the model's bytes"
        );
        let missing = dropped.and_then(|(lo, hi)| {
            let (lo, hi) = (lo.max(s), hi.min(e));
            (lo < hi).then_some(lo..hi)
        });
        assert_eq!(z.missing, missing, "range {start}..{stop:?}");
    }
}

#[test]
fn zstd_memory_head_tail_capture_reads_like_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let data = log_text(10 * MIB as usize + 777);
    let file = data_file(dir.path(), "log", &data);
    let a = agent();
    let cap = |compress: bool| {
        let mut c = json!({"capture": {"mode": "memory", "head": 3 * MIB, "tail": 5 * MIB}});
        if compress {
            c["capture"]["compress"] = json!("zstd");
        }
        c
    };
    run_cat(&a, "plain", &file, cap(false));
    run_cat(&a, "zst", &file, cap(true));
    let c = compression(&a, "zst");
    assert_eq!(
        (c.algorithm.as_str(), c.level, c.state),
        ("zstd", 1, CompressionState::Done)
    );
    let zlen = c.compressed_length.unwrap();
    assert!(zlen > 0 && zlen < 8 * MIB / 3, "log text shrinks: {zlen}");
    let len = data.len() as u64;
    assert_same_reads(&a, "plain", "zst", &data, Some((3 * MIB, len - 5 * MIB)));

    // The attached result holds the same bytes and counts.
    let (p, z) = (a.result("plain").unwrap(), a.result("zst").unwrap());
    match (&p.fds["stdout"], &z.fds["stdout"]) {
        (
            Some(FdRes::Data {
                bytes: pb,
                length: pl,
                ext: FdExt { dropped: pd, .. },
            }),
            Some(FdRes::Data {
                bytes: zb,
                length: zl,
                ext: FdExt { dropped: zd, .. },
            }),
        ) => {
            assert!(pb == zb, "attached bytes differ");
            assert_eq!((pl, pd), (zl, zd));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn zstd_tempfile_capture_reads_like_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let data = log_text(9 * MIB as usize + 12345);
    let file = data_file(dir.path(), "log", &data);
    let a = agent();
    run_cat(
        &a,
        "plain",
        &file,
        json!({"capture": {"mode": "tempfile", "attached": false}}),
    );
    run_cat(
        &a,
        "zst",
        &file,
        json!({"capture": {"mode": "tempfile", "attached": false, "compress": "zstd", "compress_level": 3}}),
    );
    let c = compression(&a, "zst");
    assert_eq!((c.level, c.state), (3, CompressionState::Done));
    assert_same_reads(&a, "plain", "zst", &data, None);
}

// A kept capture file (mode "file") with compress: once complete, `<path>.zst`
// replaces it (the uncompressed file is removed), the result's path names the
// .zst, it survives delete, decompresses to the original bytes, and ranged reads
// (decompressing as needed) match the same capture uncompressed.
#[test]
fn zstd_kept_file_is_replaced_by_its_compressed_copy() {
    let dir = tempfile::tempdir().unwrap();
    let data = log_text(9 * MIB as usize + 777);
    let file = data_file(dir.path(), "log", &data);
    let plain_path = dir.path().join("plain.out");
    let zst_path = dir.path().join("job.out");
    let a = agent();
    run_cat(
        &a,
        "plain",
        &file,
        json!({"capture": {"mode": "file", "path": plain_path, "attached": false}}),
    );
    run_cat(
        &a,
        "zst",
        &file,
        json!({"capture": {"mode": "file", "path": zst_path, "memory": true, "attached": false,
                           "compress": "zstd"}}),
    );
    let c = compression(&a, "zst");
    assert_eq!(c.state, CompressionState::Done, "{c:?}");
    let zst_file = dir.path().join("job.out.zst");
    assert!(!zst_path.exists(), "the uncompressed kept file is replaced");
    let res = a.result("zst").unwrap();
    match res.fds.get("stdout") {
        Some(Some(FdRes::Detached {
            length,
            ext: FdExt { path, .. },
            ..
        })) => {
            assert_eq!(path.as_deref(), zst_file.to_str());
            assert_eq!(*length, data.len() as u64);
        }
        other => panic!("stdout: {other:?}"),
    }
    assert_same_reads(&a, "plain", "zst", &data, None);
    let stored = a.fd_compressed("zst", "stdout", 0, None).unwrap();
    assert_eq!(stored.compressed_length, c.compressed_length.unwrap());
    a.delete("zst").unwrap();
    drop(a);
    let on_disk = std::fs::read(&zst_file).expect("the .zst survives delete");
    assert!(zstd::stream::decode_all(&on_disk[..]).unwrap() == data);
}

// A kept file whose writes failed is incomplete: it is not compressed, the
// result says so (not "pending" forever), and Compressed is still emitted.
#[test]
fn zstd_kept_file_with_a_write_error_reports_failed_compression() {
    let a = agent();
    let events = a.subscribe();
    start(
        &a,
        &json!({"specs": {"full": {"argv": ["/bin/sh", "-c", "head -c 100000 /dev/zero"],
            "fds": [["stdout", {"capture": {"mode": "file", "path": "/dev/full",
                                            "attached": false, "compress": "zstd"}}]]}}}),
    );
    let res = wait(&a, "full");
    assert_eq!(res.state, State::Error, "the write error is reported");
    wait_compressed(&events, "full", "stdout");
    let c = compression(&a, "full");
    assert_eq!(c.state, CompressionState::Failed, "{c:?}");
    assert!(
        c.error.as_deref().is_some_and(|e| e.contains("incomplete")),
        "{c:?}"
    );
}

#[test]
fn zstd_result_is_pending_at_exit_then_done() {
    let a = agent();
    let events = a.subscribe();
    start(
        &a,
        &json!({"specs": {"p": {"argv": ["/bin/sh", "-c", "echo hello; exec sleep 100"],
            "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8",
                "attached": false, "compress": "zstd"}}]]}}}),
    );
    // The result handed to waiters is made at exit, before compression starts.
    // The waiter is registered while the process still runs (commands are
    // served in order), so a slow test thread cannot see a later result.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while a.fd_data("p", "stdout", 0, None).unwrap().data.len() < 6 {
        assert!(std::time::Instant::now() < deadline, "no output from p");
        std::thread::sleep(Duration::from_millis(5));
    }
    let waiter = a.handle().wait("p");
    a.signal("p", libc::SIGKILL).unwrap();
    let res = waiter.wait().expect("p is known");
    let v = serde_json::to_value(&res).unwrap();
    assert_eq!(
        v["fds"]["stdout"]["compression"],
        json!({"algorithm": "zstd", "level": 1, "state": "pending", "compressed_length": null})
    );
    wait_compressed(&events, "p", "stdout");
    let v = serde_json::to_value(a.result("p").unwrap()).unwrap();
    let c = &v["fds"]["stdout"]["compression"];
    assert_eq!(c["state"], "done", "{v}");
    let zlen = c["compressed_length"].as_u64().unwrap();
    assert_eq!(v["fds"]["stdout"]["length"], 6);
    let z = a.fd_compressed("p", "stdout", 0, None).unwrap();
    assert_eq!(z.compressed_length, zlen);
    assert_eq!(z.data.len() as u64, zlen);
    // Captures without compress have no compression key.
    let a2 = agent();
    start(
        &a2,
        &json!({"specs": {"q": {"argv": ["/bin/echo", "x"], "fds": [["stdout", mem_utf8()]]}}}),
    );
    let v = serde_json::to_value(wait(&a2, "q")).unwrap();
    assert!(v["fds"]["stdout"].get("compression").is_none(), "{v}");
}

// `wait_compressed` answers once exit and every compression are done; `wait`
// once the process exits.
#[test]
fn wait_compressed_returns_the_final_result() {
    let dir = tempfile::tempdir().unwrap();
    // Two 4 MiB frames, so compression is still under way at exit.
    let file = data_file(dir.path(), "log", &log_text(8 * MIB as usize));
    let a = agent();
    start(
        &a,
        &json!({"specs": {
            "z": {"argv": ["/bin/cat", &file],
                  "fds": [["stdout", {"capture": {"mode": "memory", "compress": "zstd",
                                                  "attached": false}}]]},
            "plain": {"argv": ["/bin/echo", "x"], "fds": [["stdout", mem_utf8()]]}}}),
    );
    let res = a.wait_compressed("z").expect("known id");
    let v = serde_json::to_value(&res).unwrap();
    let c = &v["fds"]["stdout"]["compression"];
    assert_eq!(c["state"], "done", "{v}");
    assert!(c["compressed_length"].as_u64().unwrap() > 0, "{v}");
    // Asked again once final: answered at once, the same.
    assert_eq!(
        serde_json::to_value(a.wait_compressed("z").unwrap()).unwrap()["fds"],
        v["fds"]
    );
    // Nothing to compress: the same as `wait`.
    let res = a.wait_compressed("plain").expect("known id");
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    assert_eq!(
        text_of(&serde_json::to_value(&res).unwrap(), "stdout"),
        "x\n"
    );
    assert!(a.wait_compressed("nope").is_none());
}

/// Decodes `zst` with the `zstd` command, or `None` when it is not installed.
fn zstd_command_decode(dir: &Path, zst: &[u8]) -> Option<Vec<u8>> {
    let path = dir.join("stored.zst");
    std::fs::write(&path, zst).unwrap();
    match std::process::Command::new("zstd")
        .args(["-d", "-q", "-c"])
        .arg(&path)
        .output()
    {
        Ok(out) => {
            assert!(out.status.success(), "zstd -d failed: {out:?}");
            Some(out.stdout)
        }
        Err(e) => {
            chaperone::test_skip("compress: zstd command check", &e.to_string(), true);
            None
        }
    }
}

#[test]
fn zstd_stored_bytes_decompress_to_original_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = log_text(5 * MIB as usize + 99);
    let file = data_file(dir.path(), "log", &data);
    let a = agent();
    run_cat(
        &a,
        "t",
        &file,
        json!({"capture": {"mode": "tempfile", "compress": "zstd"}}),
    );
    run_cat(
        &a,
        "m",
        &file,
        json!({"capture": {"mode": "memory", "head": MIB, "tail": 2 * MIB, "compress": "zstd"}}),
    );
    run_cat(
        &a,
        "whole",
        &file,
        json!({"capture": {"mode": "memory", "compress": "zstd"}}),
    );

    // Tempfile and unbounded memory: the whole output.
    for id in ["t", "whole"] {
        let z = a.fd_compressed(id, "stdout", 0, None).unwrap();
        assert_eq!(
            (z.algorithm, z.level, z.length),
            ("zstd", 1, data.len() as u64),
            "{id}"
        );
        assert_eq!(
            (z.range.start, z.range.end),
            (0, z.compressed_length),
            "{id}"
        );
        assert_eq!(z.dropped, None);
        assert!(
            zstd::stream::decode_all(&z.data[..]).unwrap() == data,
            "{id}"
        );
        if let Some(out) = zstd_command_decode(dir.path(), &z.data) {
            assert!(out == data, "{id}: zstd -d differs");
        }
        // Fetched in pieces, the stored bytes are the same.
        let mut pieces = Vec::new();
        let mut at = 0;
        loop {
            let part = a
                .fd_compressed(id, "stdout", at, Some(at + 100_000))
                .unwrap();
            if part.data.is_empty() {
                assert_eq!(part.range, z.compressed_length..z.compressed_length);
                break;
            }
            assert_eq!(part.range.start, at);
            at = part.range.end;
            pieces.extend_from_slice(&part.data);
        }
        assert!(pieces == z.data, "{id}: pieces differ");
    }

    // Head/tail memory: the held bytes, head then tail, and where the gap was.
    let len = data.len() as u64;
    let z = a.fd_compressed("m", "stdout", 0, None).unwrap();
    assert_eq!(z.dropped, Some(MIB..len - 2 * MIB));
    let held = [&data[..MIB as usize], &data[(len - 2 * MIB) as usize..]].concat();
    assert!(zstd::stream::decode_all(&z.data[..]).unwrap() == held);
    if let Some(out) = zstd_command_decode(dir.path(), &z.data) {
        assert!(out == held, "zstd -d differs");
    }
}

#[test]
fn zstd_empty_output_and_uncompressed_captures() {
    let a = agent();
    let events = a.subscribe();
    start(
        &a,
        &json!({"specs": {"e": {"argv": ["/bin/true"],
            "fds": [["stdout", {"capture": {"mode": "memory", "compress": "zstd"}}],
                    ["stderr", {"capture": {"mode": "tempfile", "compress": "zstd"}}]]}}}),
    );
    wait(&a, "e");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match events.recv_timeout(Duration::from_secs(120)).unwrap() {
            Event::Compressed(id, fd) if id == "e" => seen.push(fd),
            _ => {}
        }
    }
    seen.sort();
    assert_eq!(seen, ["stderr", "stdout"]);
    for fd in ["stdout", "stderr"] {
        let z = a.fd_compressed("e", fd, 0, None).unwrap();
        assert_eq!(z.length, 0);
        assert!(zstd::stream::decode_all(&z.data[..]).unwrap().is_empty());
        let d = a.fd_data("e", fd, 0, None).unwrap();
        assert_eq!((d.start, d.stop, d.length, d.data.len()), (0, 0, 0, 0));
    }

    // A capture without compress has no stored compressed bytes.
    start(
        &a,
        &json!({"specs": {"u": {"argv": ["/bin/echo", "hi"], "fds": [["stdout", mem_utf8()]]}}}),
    );
    wait(&a, "u");
    assert!(matches!(
        a.fd_compressed("u", "stdout", 0, None),
        Err(FdDataError::NotCompressed(fd)) if fd == "stdout"
    ));
    assert!(matches!(
        a.fd_compressed("nope", "stdout", 0, None),
        Err(FdDataError::Unknown(_))
    ));
}

#[test]
fn zstd_deleted_before_compression_finishes_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let data = log_text(8 * MIB as usize);
    let file = data_file(dir.path(), "log", &data);
    let a = agent();
    start(
        &a,
        &json!({"specs": {"d": {"argv": ["/bin/cat", &file],
            "fds": [["stdout", {"capture": {"mode": "memory", "compress": "zstd"}}]]}}}),
    );
    wait(&a, "d");
    a.delete("d").unwrap();
    // The agent goes on: the same id again, compressed and readable.
    run_cat(
        &a,
        "d",
        &file,
        json!({"capture": {"mode": "memory", "compress": "zstd"}}),
    );
    let got = a.fd_data("d", "stdout", 0, None).unwrap();
    assert!(got.data == data);
}

//------------------------------------------------------------------------------
// Read encodings
//------------------------------------------------------------------------------

#[test]
fn read_encodings_round_trip_on_plain_and_compressed_captures() {
    let a = agent();
    for (id, compress) in [("plain", false), ("zst", true)] {
        let events = a.subscribe();
        let mut cap = json!({"capture": {"mode": "memory", "encoding": "utf-8"}});
        if compress {
            cap["capture"]["compress"] = json!("zstd");
        }
        // Valid text, then two invalid bytes, then more text.
        start(
            &a,
            &json!({"specs": {id: {"argv": ["/usr/bin/printf", "caf\\303\\251 ok \\377\\376 end"],
                "fds": [["stdout", cap]]}}}),
        );
        wait(&a, id);
        if compress {
            wait_compressed(&events, id, "stdout");
        }
        let raw = a.fd_data(id, "stdout", 0, None).unwrap().data;
        assert_eq!(&raw[..], b"caf\xc3\xa9 ok \xff\xfe end", "{id}");

        let r = a
            .fd_data_as(id, "stdout", 0, None, ReadEncoding::Raw)
            .unwrap();
        assert_eq!(r.data, Encoded::Raw(raw.clone()), "{id}");
        assert_eq!((r.start, r.stop, r.length, r.raw_length), (0, 15, 15, 15));

        // Lossy UTF-8: replaced only when the range holds invalid bytes.
        let r = a
            .fd_data_as(id, "stdout", 0, None, ReadEncoding::Utf8)
            .unwrap();
        assert_eq!(
            r.data,
            Encoded::Utf8 {
                text: "café ok \u{FFFD}\u{FFFD} end".into(),
                replaced: true
            },
            "{id}"
        );
        let r = a
            .fd_data_as(id, "stdout", 0, Some(8), ReadEncoding::Utf8)
            .unwrap();
        assert_eq!(
            r.data,
            Encoded::Utf8 {
                text: "café ok".into(),
                replaced: false
            },
            "{id}"
        );

        let r = a
            .fd_data_as(id, "stdout", 3, Some(12), ReadEncoding::Base64)
            .unwrap();
        let Encoded::Base64(b64) = &r.data else {
            panic!("{:?}", r.data)
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(&decoded[..], &raw[3..12], "{id}");
        assert_eq!((r.start, r.stop, r.raw_length), (3, 12, 9));

        let r = a
            .fd_data_as(id, "stdout", 1, None, ReadEncoding::Zstd { level: 5 })
            .unwrap();
        let Encoded::Zstd { data, level } = &r.data else {
            panic!("{:?}", r.data)
        };
        assert_eq!(*level, 5);
        assert_eq!(
            zstd::stream::decode_all(&data[..]).unwrap(),
            &raw[1..],
            "{id}"
        );

        // Past the end: empty in every encoding, with the length.
        let r = a
            .fd_data_as(id, "stdout", 100, None, ReadEncoding::Base64)
            .unwrap();
        assert_eq!((r.start, r.stop, r.length), (15, 15, 15));
        assert_eq!(r.data, Encoded::Base64(String::new()));

        // A bad zstd level is an error, not a panic.
        assert!(matches!(
            a.fd_data_as(id, "stdout", 0, None, ReadEncoding::Zstd { level: 99 }),
            Err(FdDataError::Io(_))
        ));
    }
}

#[test]
fn read_encodings_skip_the_dropped_middle() {
    let a = agent();
    start(
        &a,
        &json!({"specs": {"ht": {"argv": ["/usr/bin/printf", "0123456789abcdefghij"],
            "fds": [["stdout", {"capture": {"mode": "memory", "head": 4, "tail": 4}}]]}}}),
    );
    wait(&a, "ht");
    let r = a
        .fd_data_as("ht", "stdout", 2, Some(18), ReadEncoding::Utf8)
        .unwrap();
    assert_eq!(r.missing, Some(4..16));
    assert_eq!(r.raw_length, 4);
    assert_eq!(
        r.data,
        Encoded::Utf8 {
            text: "23gh".into(),
            replaced: false
        }
    );
}

//------------------------------------------------------------------------------
// Validation
//------------------------------------------------------------------------------

#[test]
fn zstd_bad_compress_fields_are_rejected_with_clear_errors() {
    let a = agent();
    let try_start = |cap: Value| {
        let spec =
            json!({"specs": {"v": {"argv": ["/bin/true"], "fds": [["stdout", {"capture": cap}]]}}});
        match spec::parse_input(&serde_json::to_vec(&spec).unwrap()) {
            Err(e) => Err(e.to_string()),
            Ok(input) => a.start(input).map_err(|e| {
                assert!(matches!(e, StartError::Spec(_)), "{e:?}");
                e.to_string()
            }),
        }
    };
    assert_eq!(
        try_start(json!({"compress": "gzip"})).unwrap_err(),
        r#"proc v: fd 1: capture compress: unknown algorithm "gzip" (expected one of ["zstd"])"#
    );
    assert_eq!(
        try_start(json!({"compress": "zstd", "compress_level": 42})).unwrap_err(),
        "proc v: fd 1: capture compress_level: 42 out of range 1..=19"
    );
    assert_eq!(
        try_start(json!({"compress": "zstd", "compress_level": -3})).unwrap_err(),
        "proc v: fd 1: capture compress_level: -3 out of range 1..=19"
    );
    assert_eq!(
        try_start(json!({"compress_level": 2})).unwrap_err(),
        "proc v: fd 1: capture compress_level: given without compress"
    );
    let e = try_start(json!({"compress": true})).unwrap_err();
    assert!(e.contains("invalid type"), "{e}");
    // Nothing was started by the rejected requests.
    assert!(a.proc_ids().is_empty());
    try_start(json!({"compress": "zstd", "compress_level": 19})).unwrap();
}

/// A `dir` capture to be compressed takes a name whose `.zst` is free too:
/// a job run twice into one directory keeps both runs' output, and an
/// unrelated `.zst` there is never replaced. (Before, the second run's
/// `job.stdout` was created, since the first's had become `job.stdout.zst`,
/// and its compression renamed over the first run's.)
#[test]
fn a_dir_capture_never_replaces_an_earlier_compressed_one() {
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("other.stdout.zst");
    std::fs::write(&taken, b"not ours").unwrap();
    let a = agent();
    let capture = json!({"capture": {"mode": "file", "dir": dir.path(), "attached": false,
                                     "compress": "zstd"}});
    for (id, run) in [("job", "first"), ("job", "second"), ("other", "third")] {
        start(
            &a,
            &json!({"specs": {id: {"argv": ["/bin/echo", run], "fds": [["stdout", capture]]}}}),
        );
        a.wait_compressed(id).expect("known id");
        assert_eq!(compression(&a, id).state, CompressionState::Done, "{run}");
        a.delete(id).unwrap();
    }
    let read = |name: &str| {
        let z = std::fs::read(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        zstd::stream::decode_all(&z[..]).unwrap()
    };
    assert_eq!(read("job.stdout.zst"), b"first\n");
    assert_eq!(read("job.stdout.1.zst"), b"second\n");
    assert_eq!(read("other.stdout.1.zst"), b"third\n");
    assert_eq!(std::fs::read(&taken).unwrap(), b"not ours");
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "job.stdout.1.zst",
            "job.stdout.zst",
            "other.stdout.1.zst",
            "other.stdout.zst"
        ]
    );
}

/// Compression replaces only the regular file it wrote: a `path` that is a
/// device or a symbolic link, or whose `.zst` exists already, is left as it
/// is, and the result says why. (Before, a capture to `/dev/null` with
/// `compress` unlinked `/dev/null` when the agent ran as root.)
#[test]
fn compression_never_removes_what_is_not_the_file_written() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent();
    let run = |id: &str, path: &Path| {
        start(
            &a,
            &json!({"specs": {id: {"argv": ["/usr/bin/seq", "1", "1000"],
                "fds": [["stdout", {"capture": {"mode": "file", "path": path,
                                                "attached": false, "compress": "zstd"}}]]}}}),
        );
        a.wait_compressed(id).expect("known id");
        let c = compression(&a, id);
        assert_eq!(c.state, CompressionState::Failed, "{id}: {c:?}");
        c.error.unwrap_or_default()
    };
    let seq: Vec<u8> = (1..=1000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();

    // A symbolic link to a regular file: the link and its target stay.
    let target = dir.path().join("target");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = run("link", &link);
    assert!(e.contains("is a symbolic link"), "{e}");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), seq);
    assert!(!dir.path().join("link.zst").exists());

    // An existing `.zst` beside the path: it and the new file stay.
    let out = dir.path().join("out");
    std::fs::write(dir.path().join("out.zst"), b"an earlier run").unwrap();
    let e = run("exists", &out);
    assert!(e.contains("out.zst exists"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), seq);
    assert_eq!(
        std::fs::read(dir.path().join("out.zst")).unwrap(),
        b"an earlier run"
    );

    // A character device (the null device; making one needs CAP_MKNOD).
    let null = dir.path().join("null");
    let made = std::process::Command::new("mknod")
        .args([null.as_os_str(), "c".as_ref(), "1".as_ref(), "3".as_ref()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("SKIP the device case: mknod failed (needs CAP_MKNOD)");
        return;
    }
    let e = run("device", &null);
    assert!(e.contains("is not a regular file"), "{e}");
    use std::os::unix::fs::FileTypeExt as _;
    assert!(null.metadata().unwrap().file_type().is_char_device());
    assert!(!dir.path().join("null.zst").exists());
}
