//! Ranged reads (`Agent::fd_data`) on memory and tempfile captures, live and
//! finished, and the agent-wide `--output-limit` on memory captures: ranges at
//! the start, middle, end, past the end, inside a dropped middle and inverted;
//! a 64 MiB detached output read back in chunks; a live capture followed to its
//! end; 1 GiB under `--output-limit 8M` within 32 MiB of agent RSS; several
//! captures sharing a limit, the largest giving first.

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::{FdExt, FdRes, State};
use chaperone::{Agent, Config, FdData};
use serde_json::{Value, json};
use std::ops::Range;
use util::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A Python program writing `n` bytes of a pattern in which every 8-byte word
/// holds its own index (little endian), in `chunk`-byte writes.
fn offsets_writer(n: u64, chunk: u64) -> Value {
    let prog = format!(
        "import array,sys\n\
         n,c={n},{chunk}\n\
         o=sys.stdout.buffer\n\
         i=0\n\
         while i<n:\n\
         \x20k=min(c,n-i)\n\
         \x20a=array.array('Q',range(i//8,(i+k+7)//8)).tobytes()\n\
         \x20o.write(a[i%8:i%8+k]); o.flush(); i+=k\n"
    );
    json!([PYTHON, "-c", prog])
}

/// The bytes [`offsets_writer`] writes at offsets `[start, stop)`.
fn offsets(start: u64, stop: u64) -> Vec<u8> {
    let first = start / 8;
    let last = stop.div_ceil(8);
    let words: Vec<u8> = (first..last).flat_map(u64::to_le_bytes).collect();
    let skip = (start - first * 8) as usize;
    words[skip..skip + (stop - start) as usize].to_vec()
}

/// What a read of `[start, stop)` must return from a stream `model` of which
/// `dropped` is not held: (start, stop, missing, data).
fn expect(
    model: &[u8],
    dropped: Option<Range<u64>>,
    start: u64,
    stop: u64,
) -> (u64, u64, Option<Range<u64>>, Vec<u8>) {
    let len = model.len() as u64;
    let s = stop.min(len);
    let a = start.min(s);
    let missing = dropped.and_then(|d| {
        let lo = d.start.max(a);
        let hi = d.end.min(s);
        (lo < hi).then_some(lo..hi)
    });
    let data = match &missing {
        None => model[a as usize..s as usize].to_vec(),
        Some(m) => [
            &model[a as usize..m.start as usize],
            &model[m.end as usize..s as usize],
        ]
        .concat(),
    };
    (a, s, missing, data)
}

fn check_read(d: &FdData, model: &[u8], dropped: Option<Range<u64>>, start: u64, stop: u64) {
    let (a, s, missing, data) = expect(model, dropped, start, stop);
    let what = format!("read({start}, {stop})");
    assert_eq!((d.start, d.stop), (a, s), "{what}");
    assert_eq!(d.length, model.len() as u64, "{what}");
    assert_eq!(d.missing, missing, "{what}");
    assert!(d.data[..] == data[..], "{what}: data differs");
}

/// The ranges every capture is read with, for a stream of `len` bytes whose
/// dropped middle (if any) is `dropped`.
fn ranges(len: u64, dropped: Option<Range<u64>>) -> Vec<(u64, Option<u64>)> {
    let mut r = vec![
        (0, Some(10)),                    // start
        (len / 2 - 5, Some(len / 2 + 5)), // middle
        (len - 10, Some(len)),            // end
        (len - 3, None),                  // to the end
        (0, None),                        // everything
        (len, None),                      // at the end
        (len + 5, Some(len + 100)),       // past the end
        (u64::MAX, None),                 // far past the end
        (0, Some(u64::MAX)),              // stop far past the end
        (20, Some(10)),                   // stop < start
        (len + 10, Some(3)),              // stop < start, start past the end
        (7, Some(7)),                     // empty
    ];
    if let Some(d) = dropped {
        r.push((d.start + 1, Some(d.end - 1))); // inside the dropped middle
        r.push((d.start - 4, Some(d.end + 4))); // across it
        r.push((d.start - 4, Some(d.start + 4))); // into it
        r.push((d.end - 4, Some(d.end + 4))); // out of it
    }
    r
}

/// Starts a process writing `len` offset bytes into a capture `cap` and waits.
fn run_offsets(a: &Agent, id: &str, len: u64, cap: Value) -> chaperone::result::ProcRes {
    start(
        a,
        &json!({"specs": {id: {"argv": offsets_writer(len, 4096),
            "fds": [["stdin", {"null": {}}], ["stdout", cap]]}}}),
    );
    let res = wait(a, id);
    assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0), "{res:?}");
    res
}

#[test]
fn ranges_clamp_on_finished_memory_tempfile_and_head_tail_captures() {
    let a = agent();
    let len = 1000;
    let model = offsets(0, len);
    let cases = [
        ("mem", json!({"capture": {"mode": "memory"}}), None),
        ("tmp", json!({"capture": {"mode": "tempfile"}}), None),
        (
            "ht",
            json!({"capture": {"mode": "memory", "head": 100, "tail": 200}}),
            Some(100..800),
        ),
    ];
    for (id, cap, dropped) in cases {
        let res = run_offsets(&a, id, len, cap);
        if let Some(Some(FdRes::Data {
            ext: FdExt {
                dropped: d, held, ..
            },
            ..
        })) = res.fds.get("stdout")
        {
            assert_eq!(d.map(|d| d.start..d.stop), dropped, "{id}");
            assert_eq!(*held, dropped.as_ref().map(|_| 300), "{id}");
        } else {
            panic!("{id}: {:?}", res.fds.get("stdout"));
        }
        for (start, stop) in ranges(len, dropped.clone()) {
            let d = a.fd_data(id, "stdout", start, stop).unwrap();
            check_read(&d, &model, dropped.clone(), start, stop.unwrap_or(u64::MAX));
        }
    }
}

/// Removes its file when dropped.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn ranges_clamp_on_live_memory_and_tempfile_captures() {
    // The writer waits after its output until the test is done reading, so the
    // capture is live while it is read.
    let len = 1000;
    let model = offsets(0, len);
    for (mode, dropped) in [("memory", None), ("tempfile", None), ("ht", Some(64..800))] {
        let a = agent();
        let cap = match mode {
            "ht" => json!({"capture": {"mode": "memory", "head": 64, "tail": 200}}),
            m => json!({"capture": {"mode": m}}),
        };
        let dir = tempfile::tempdir().unwrap();
        // The writer waits while this file exists. It goes when the test is
        // done reading, or when it fails (the agent waits for its processes
        // when dropped).
        let hold = dir.path().join("hold");
        std::fs::write(&hold, b"").unwrap();
        let _release = Release(hold.clone());
        let mut argv = offsets_writer(len, 100);
        let prog = argv[2].as_str().unwrap().to_string()
            + &format!(
                "import os,time\nwhile os.path.exists({:?}): time.sleep(0.01)\n",
                hold.to_str().unwrap()
            );
        argv[2] = json!(prog);
        start(
            &a,
            &json!({"specs": {"w": {"argv": argv,
                "fds": [["stdin", {"null": {}}], ["stdout", cap]]}}}),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while a.fd_data("w", "stdout", 0, Some(0)).unwrap().length < len {
            assert!(std::time::Instant::now() < deadline, "{mode}: no output");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(a.result("w").unwrap().state, State::Running, "{mode}");
        for (start, stop) in ranges(len, dropped.clone()) {
            let d = a.fd_data("w", "stdout", start, stop).unwrap();
            check_read(&d, &model, dropped.clone(), start, stop.unwrap_or(u64::MAX));
        }
        std::fs::remove_file(&hold).unwrap();
        assert_eq!(wait(&a, "w").status.unwrap().exit_code, Some(0), "{mode}");
    }
}

#[test]
fn ranges_read_64mib_detached_output_back_in_chunks() {
    let len = 64 * MIB;
    let a = agent();
    for mode in ["memory", "tempfile"] {
        let id = format!("big-{mode}");
        let res = run_offsets(
            &a,
            &id,
            len,
            json!({"capture": {"mode": mode, "attached": false}}),
        );
        match res.fds.get("stdout") {
            Some(Some(FdRes::Detached {
                length,
                ext: FdExt { dropped, .. },
                ..
            })) => {
                assert_eq!((*length, *dropped), (len, None), "{mode}");
            }
            other => panic!("{mode}: {other:?}"),
        }
        // Odd-sized chunks, so they straddle the writer's word boundaries.
        let chunk = 3 * MIB + 5;
        let mut at = 0;
        while at < len {
            let d = a.fd_data(&id, "stdout", at, Some(at + chunk)).unwrap();
            let stop = (at + chunk).min(len);
            assert_eq!(
                (d.start, d.stop, d.length, &d.missing),
                (at, stop, len, &None)
            );
            assert!(d.data[..] == offsets(at, stop)[..], "{mode}: chunk at {at}");
            at = d.stop;
        }
        let end = a.fd_data(&id, "stdout", at, None).unwrap();
        assert!(end.data.is_empty());
        assert_eq!(end.length, len);
    }
}

#[test]
fn ranges_follow_a_live_capture_to_its_end() {
    let len = 8 * MIB + 12345;
    let a = agent();
    for mode in ["memory", "tempfile"] {
        let id = format!("f-{mode}");
        start(
            &a,
            &json!({"specs": {&id: {"argv": offsets_writer(len, 64 * KIB + 3),
                "fds": [["stdin", {"null": {}}],
                        ["stdout", {"capture": {"mode": mode, "attached": false}}]]}}}),
        );
        let mut got: Vec<u8> = Vec::new();
        let mut reads = 0;
        let mut while_running = 0;
        loop {
            let running = a.result(&id).unwrap().state == State::Running;
            let d = a.fd_data(&id, "stdout", got.len() as u64, None).unwrap();
            // Each read continues exactly where the last one stopped.
            assert_eq!(d.start, got.len() as u64, "{mode}");
            assert_eq!(d.missing, None, "{mode}");
            assert_eq!(d.stop, d.length, "{mode}");
            assert_eq!(d.stop - d.start, d.data.len() as u64, "{mode}");
            got.extend_from_slice(&d.data);
            reads += 1;
            if running {
                while_running += 1;
            } else if d.data.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(got.len() as u64, len, "{mode}");
        assert!(got == offsets(0, len), "{mode}: concatenated reads differ");
        assert!(while_running >= 1, "{mode}: never read while running");
        eprintln!("{mode}: {reads} reads, {while_running} while running");
    }
}

/// Sum of what the memory captures of `res` hold: `held` when reported, else
/// the whole length.
fn held_of(fd: &FdRes) -> (u64, u64, bool) {
    match (fd.length(), fd.ext()) {
        (Some(length), Some(ext)) => (length, ext.held.unwrap_or(length), ext.limited),
        _ => panic!("capture error"),
    }
}

#[test]
fn output_limit_keeps_1gib_output_to_the_limit_over_a_1mib_run() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent();
    // The CLI's peak RSS running `head -c BYTES` into one memory capture. It is
    // run from a small Python, whose RUSAGE_CHILDREN gives the CLI's own peak:
    // a child's max RSS counts the memory it was exec'd from, and this test
    // process (or a shell spawned from it) may hold far more than the CLI.
    let run = |name: &str, bytes: u64| {
        let spec = dir.path().join(format!("{name}.json"));
        let printed = dir.path().join(format!("{name}.out"));
        // Default head and tail (64 MiB each): only the limit bounds the capture.
        let big = json!({"specs": {"big": {
            "argv": ["/usr/bin/head", "-c", bytes.to_string(), "/dev/zero"],
            "fds": [["stdin", {"null": {}}], ["stdout", {"capture": {"mode": "memory"}}]]}}});
        std::fs::write(&spec, serde_json::to_vec(&big).unwrap()).unwrap();
        let py = "import resource, subprocess, sys\n\
                  with open(sys.argv[1], 'wb') as out:\n\
                  \x20   rc = subprocess.run(sys.argv[2:], stdout=out).returncode\n\
                  print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
                  sys.exit(rc)";
        start(
            &a,
            &json!({"specs": {name: {"argv": ["/usr/bin/python3", "-c", py, printed, bin(),
                    "--output-limit", "8M", "--print", spec],
                "fds": [["stdout", util::mem_utf8()],
                        ["stderr", {"capture": {"mode": "memory", "encoding": "utf-8"}}]]}}}),
        );
        let res = wait(&a, name);
        assert_eq!(
            res.status.as_ref().unwrap().exit_code,
            Some(0),
            "{}",
            string_of(&res, "stderr")
        );
        let kib: i64 = string_of(&res, "stdout")
            .trim()
            .parse()
            .expect("maxrss in KiB");
        let printed: Value = serde_json::from_slice(&std::fs::read(printed).unwrap()).unwrap();
        (printed, kib * 1024)
    };
    let (printed, maxrss) = run("gib", GIB);
    let fd = &printed["big"]["fds"]["stdout"];
    assert_eq!(fd["length"], GIB);
    assert_eq!(fd["limited"], true, "{}", fd["dropped"]);
    let held = fd["held"].as_u64().unwrap();
    assert!(held <= 8 * MIB && held > 7 * MIB, "held {held}");
    let (lo, hi) = (
        fd["dropped"]["start"].as_u64().unwrap(),
        fd["dropped"]["stop"].as_u64().unwrap(),
    );
    assert_eq!(hi - lo, GIB - held, "dropped {lo}..{hi}");
    // Both ends kept: the head and the tail share the limit.
    assert!(lo > MIB && hi < GIB - MIB, "dropped {lo}..{hi}");
    // Against the same CLI with a child writing 1 MiB: 1 GiB costs at most the
    // limit's worth of bytes held, plus their copy in the printed JSON. (An
    // absolute bound would also measure the binary: a debug build's baseline
    // alone is some 17 MiB.)
    let (_, baseline) = run("mib", MIB);
    eprintln!(
        "agent max RSS with --output-limit 8M: {} KiB for 1 GiB, {} KiB for 1 MiB",
        maxrss / 1024,
        baseline / 1024
    );
    assert!(
        maxrss - baseline < 16 * MIB as i64,
        "1 GiB took {maxrss} bytes, 1 MiB {baseline}"
    );
    assert!(maxrss < 48 * MIB as i64, "agent maxrss {maxrss} bytes");
}

#[test]
fn output_limit_is_shared_and_the_largest_captures_give_first() {
    let limit = 4 * MIB;
    let a = Agent::new(Config {
        output_limit: Some(limit),
        ..Config::default()
    })
    .unwrap();
    let sizes = [
        ("s1", 256 * KIB),
        ("s2", 512 * KIB),
        ("b1", 6 * MIB),
        ("b2", 8 * MIB),
    ];
    let specs: serde_json::Map<String, Value> = sizes
        .iter()
        .map(|&(id, n)| {
            (
                id.to_string(),
                json!({"argv": offsets_writer(n, 64 * KIB),
                       "fds": [["stdin", {"null": {}}],
                               ["stdout", {"capture": {"mode": "memory", "attached": false}}]]}),
            )
        })
        .collect();
    start(&a, &json!({ "specs": specs }));
    // Wait for all first: a finished capture still gives bytes to one that
    // grows later, so the held sizes are only one state once all have ended.
    for &(id, _) in &sizes {
        wait(&a, id);
    }
    let mut total = 0;
    for &(id, n) in &sizes {
        let res = wait(&a, id);
        assert_eq!(res.status.as_ref().unwrap().exit_code, Some(0), "{id}");
        let (length, held, limited) = held_of(res.fds["stdout"].as_ref().unwrap());
        assert_eq!(length, n, "{id}");
        total += held;
        let d = a.fd_data(id, "stdout", 0, None).unwrap();
        assert_eq!(d.data.len() as u64, held, "{id}");
        if id.starts_with('s') {
            // Never the largest: kept whole.
            assert!(!limited, "{id}");
            assert_eq!(held, n, "{id}");
            assert!(d.data[..] == offsets(0, n)[..], "{id}");
        } else {
            assert!(limited, "{id}");
            assert!(held < n, "{id}");
            // What is held is the stream's own bytes around one dropped range.
            let m = d.missing.clone().unwrap();
            assert_eq!(m.end - m.start, n - held, "{id}");
            let want = [offsets(0, m.start), offsets(m.end, n)].concat();
            assert!(d.data[..] == want[..], "{id}: held bytes differ");
        }
    }
    assert!(total <= limit, "held {total} > limit {limit}");
}
