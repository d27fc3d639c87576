//! `chaperone --serve` and `chaperone client` together: text encodings of
//! captures larger than one streamed step decode to the exact bytes, live and
//! finished (the step sizes keep base64 and base2048 steps concatenable);
//! and the server over raw connections: ranges of a head/tail capture, the
//! bearer token's scheme, and the time limits on what a client sends.

#[path = "../util/mod.rs"]
mod util;

use base64::Engine as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use util::http::Served;

fn serve(spec: &serde_json::Value) -> Served {
    util::http::serve(spec, &[], &[])
}

fn client(url: &str, args: &[&str]) -> Output {
    let out = Command::new(util::bin())
        .arg("client")
        .args(args)
        .env("CHAPERONE_URL", url)
        .env_remove("CHAPERONE_SERVE_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// 3 MiB and a bit of bytes that are not text, as a shell writes them.
const SIZE: usize = (3 << 20) + 12_345;

fn expected() -> Vec<u8> {
    // What `head -c SIZE /dev/zero | tr '\0' '\377'` … is hard to vary; use
    // a repeating pattern of every byte value.
    (0..SIZE).map(|i| (i % 256) as u8).collect()
}

#[test]
fn text_encodings_of_multi_step_captures_decode_exactly() {
    // The process writes the pattern in two halves, a pause between, so the
    // follower reads part of it live.
    let script = format!(
        "python3 -c 'import sys; d=bytes(i % 256 for i in range({SIZE})); \
         sys.stdout.buffer.write(d[:{half}]); sys.stdout.flush(); \
         import time; time.sleep(0.3); sys.stdout.buffer.write(d[{half}:])'",
        half = SIZE / 2
    );
    let s = serve(&serde_json::json!({"specs": {"p": {
        "argv": ["/bin/sh", "-c", script],
        "fds": [["stdout", {"capture": {"mode": "memory", "encoding": null}}]]}}}));
    let want = expected();
    let b64 = base64::engine::general_purpose::STANDARD;
    // Followed live, base64.
    let out = client(&s.url, &["output", "p", "--follow", "--encoding", "base64"]);
    assert_eq!(b64.decode(&out.stdout).unwrap(), want);
    client(&s.url, &["wait", "p"]);
    // Finished: base2048, base64 from an offset, raw.
    let out = client(&s.url, &["output", "p", "--encoding", "base2048"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(base2048::decode(&text).unwrap(), want);
    let out = client(
        &s.url,
        &["output", "p", "--encoding", "base64", "--start", "1000001"],
    );
    assert_eq!(b64.decode(&out.stdout).unwrap(), want[1_000_001..]);
    let out = client(&s.url, &["output", "p"]);
    assert_eq!(out.stdout, want);
}

/// A live head/tail capture read by a client slower than its writer: its
/// tail drops bytes before the agent sends them. What the client writes is
/// still exact: each byte is the one at its offset, and each part skipped is
/// named on standard error. (Before, the body fell short of its
/// Content-Length and the client said the agent could not be reached.)
#[test]
fn a_slow_reader_of_a_live_head_tail_capture_gets_exact_bytes_and_named_gaps() {
    // 16-byte records, each its own offset in decimal: "%015d\n".
    let writer = "import sys\n\
                  out = sys.stdout.buffer\n\
                  n = 0\n\
                  for _ in range(3000):\n    \
                      out.write(b''.join(b'%015d\\n' % (16 * (n + k)) for k in range(4096)))\n    \
                      n += 4096\n";
    let served = serve(&serde_json::json!({"specs": {"w": {
        "argv": ["/usr/bin/env", "python3", "-c", writer],
        "fds": [["stdout", {"capture": {"mode": "memory", "encoding": null,
                                        "head": 4096, "tail": 1 << 20}}]],
    }}}));
    // Wait until the writer is well past its head and tail.
    let deadline = Instant::now() + Duration::from_secs(30);
    while length_of(&served, "/procs/w/output/stdout/data?start=0&stop=0") < 8 << 20 {
        assert!(Instant::now() < deadline, "the writer never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The client's standard output drains 64 KiB every 5 ms (13 MB/s).
    let mut c = Command::new(util::bin())
        .args(["client", "output", "w", "stdout"])
        .env("CHAPERONE_URL", &served.url)
        .env_remove("CHAPERONE_SERVE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = c.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        use std::io::Read;
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The gaps, in order, as the client named them.
    let gaps: Vec<(u64, u64)> = err
        .lines()
        .filter_map(|l| {
            let r = l.split("bytes ").nth(1)?.split(' ').next()?;
            let (a, b) = r.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    assert!(!gaps.is_empty(), "the middle was dropped: {err}");
    // Walk the output: every byte where its offset says.
    let record = |off: u64| format!("{:015}\n", off / 16 * 16).into_bytes()[(off % 16) as usize];
    let mut off = 0u64;
    let mut gaps = gaps.into_iter().peekable();
    for (i, &b) in got.iter().enumerate() {
        while let Some(&(a, z)) = gaps.peek() {
            if off >= a {
                off = off.max(z);
                gaps.next();
            } else {
                break;
            }
        }
        assert_eq!(b, record(off), "byte {i} of the output, offset {off}");
        off += 1;
    }
}

/// A capture's `X-Chaperone-Length` from a GET of `path` (0 if none).
fn length_of(served: &Served, path: &str) -> u64 {
    served
        .get(path)
        .header("x-chaperone-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A 206's `Content-Range` names exactly the bytes of its body, also when
/// the range meets a head/tail capture's dropped middle: the first part held
/// in one piece is served (with `X-Chaperone-Dropped` naming what is gone),
/// and a range wholly in the middle is 416. (Before, `bytes=1287890-1287899`
/// answered `Content-Range: bytes 1287890-1287899/…` over 5 bytes, those of
/// 1287895-1287899.) `?start=&stop=` still answers 200 with the middle left
/// out.
#[test]
fn ranges_that_meet_a_dropped_middle_name_exactly_the_bytes_sent() {
    let served = serve(&serde_json::json!({"specs": {"s": {
        "argv": ["/bin/sh", "-c", "seq 1 200000"],
        "fds": [["stdout", {"capture": {"mode": "memory", "encoding": null,
                                        "head": 1000, "tail": 1000}}]]}}}));
    let out = client(&served.url, &["wait", "s"]);
    assert!(out.status.success());
    let whole: Vec<u8> = (1..=200_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let length = whole.len() as u64;
    assert_eq!(length, 1_288_895);
    let gone = (1000, length - 1000);
    let path = "/procs/s/output/stdout/data";
    let range = |r: &str| served.request("GET", path, &[("Range", &format!("bytes={r}"))], b"");
    let check = |r: &str, (a, z): (u64, u64)| {
        let ans = range(r);
        assert_eq!(ans.status, 206, "{r}");
        assert_eq!(
            ans.header("content-range"),
            Some(format!("bytes {a}-{z}/{length}").as_str()),
            "{r}"
        );
        assert_eq!(ans.body, whole[a as usize..=z as usize], "{r}");
        ans
    };
    // Ends in the tail, starts in the middle: the tail's part.
    let ans = check("1287890-1287899", (1_287_895, 1_287_899));
    assert_eq!(ans.header("x-chaperone-dropped"), Some("1287890-1287895"));
    // Starts in the head, ends in the middle: the head's part.
    let ans = check("500-1499", (500, 999));
    assert_eq!(ans.header("x-chaperone-dropped"), Some("1000-1500"));
    // Across the whole middle: the head's part; asking on gets the tail's.
    let ans = check("990-", (990, 999));
    assert_eq!(
        ans.header("x-chaperone-dropped"),
        Some(format!("{}-{}", gone.0, gone.1).as_str())
    );
    check("1000-", (gone.1, length - 1));
    check("-1005", (gone.1, length - 1));
    // Wholly held or wholly dropped.
    let ans = check("10-19", (10, 19));
    assert_eq!(ans.header("x-chaperone-dropped"), None);
    let ans = range("5000-6000");
    assert_eq!(ans.status, 416);
    assert_eq!(
        ans.header("content-range"),
        Some(format!("bytes */{length}").as_str())
    );
    assert_eq!(ans.header("x-chaperone-dropped"), Some("5000-6001"));
    let detail =
        serde_json::from_slice::<serde_json::Value>(&ans.body).unwrap()["errors"]["detail"]
            .as_str()
            .unwrap()
            .to_owned();
    assert!(
        detail.contains(&format!(
            "bytes {}-{} of {length} were dropped",
            gone.0, gone.1
        )),
        "{detail}"
    );
    // ?start=&stop= leaves the middle out, and says so, as before.
    let ans = served.get(&format!("{path}?start=990&stop=1287900"));
    assert_eq!(ans.status, 200);
    assert_eq!(ans.header("content-range"), None);
    assert_eq!(ans.header("x-chaperone-dropped"), Some("1000-1287895"));
    let mut want = whole[990..1000].to_vec();
    want.extend_from_slice(&whole[1_287_895..1_287_900]);
    assert_eq!(ans.body, want);
}

/// The `Authorization` scheme is case-insensitive (RFC 9110, 11.1):
/// `bearer TOKEN` is taken as `Bearer TOKEN` is. (Before, it was 401.)
#[test]
fn the_bearer_scheme_is_taken_in_any_case() {
    let served = util::http::serve(
        &serde_json::json!({"specs": {}}),
        &["--serve-token", "s3cret"],
        &[],
    );
    let status = |auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        served.request_as("GET", "/procs", &h, b"", false).status
    };
    for ok in [
        "Bearer s3cret",
        "bearer s3cret",
        "BEARER s3cret",
        "bEaReR  s3cret",
    ] {
        assert_eq!(status(Some(ok)), 200, "{ok}");
    }
    for no in [
        "bearer wrong",
        "Basic s3cret",
        "bearers3cret",
        "Bearer",
        "s3cret",
    ] {
        assert_eq!(status(Some(no)), 401, "{no}");
    }
    assert_eq!(status(None), 401);
}

/// Whether the server closes `c` (EOF or a reset) within `within`.
fn closed_within(c: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            // A 408 or the like before the close is fine.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A client that sends half a request line and stalls is disconnected
/// after the header read timeout (1 s here, by
/// `CHAPERONE_SERVE_HEADER_TIMEOUT`), as is one that sends half a `POST`
/// body (by `CHAPERONE_SERVE_BODY_TIMEOUT`), which gets a 408; answers that
/// last longer than either, a `?wait=` long poll and a `follow=true`
/// stream, are not cut. (Before, a half-sent request held its connection,
/// and an agent fd, for good.)
#[test]
fn stalled_requests_are_cut_and_long_answers_are_not() {
    use std::io::{Read, Write};
    let served = util::http::serve(
        &serde_json::json!({"specs": {}}),
        &[],
        &[
            ("CHAPERONE_SERVE_HEADER_TIMEOUT", "1"),
            ("CHAPERONE_SERVE_BODY_TIMEOUT", "1"),
        ],
    );
    let addr = served.url.trim_start_matches("http://").to_owned();
    // Half a request line.
    let t = Instant::now();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(b"GET /pro").unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(10)), "still open");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // Headers and then nothing more, on a connection kept alive after an
    // answer.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(b"GET /procs HTTP/1.1\r\nhost: x\r\n\r\nGET /procs HTTP/1.1\r\nhost:")
        .unwrap();
    assert!(closed_within(&mut c, Duration::from_secs(10)), "still open");
    // Half a body.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(
        b"POST /procs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"specs\": ",
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head)
        .expect("an answer to a stalled body");
    assert_eq!(&head, b"HTTP/1.1 408");
    assert!(closed_within(&mut c, Duration::from_secs(10)), "still open");
    // A long poll and a stream, each about 3 s, well past both limits.
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("slow.json");
    let slow = serde_json::json!({"specs": {"slow": {
        "argv": ["/bin/sh", "-c", "sleep 3; echo done"],
        "fds": [["stdout", {"capture": {"mode": "memory", "encoding": null}}]]}}});
    std::fs::write(&spec, serde_json::to_vec(&slow).unwrap()).unwrap();
    let t = Instant::now();
    client(&served.url, &["start", spec.to_str().unwrap()]);
    let ans = std::thread::scope(|scope| {
        let follow = scope.spawn(|| served.get("/procs/slow/output/stdout/data?follow=true"));
        let ans = served.get("/procs/slow?wait=30");
        (ans, follow.join().unwrap())
    });
    let (ans, follow) = ans;
    assert_eq!(ans.status, 200);
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    let v: serde_json::Value = serde_json::from_slice(&ans.body).unwrap();
    assert_eq!(v["data"]["procs"]["slow"]["status"]["exit_code"], 0, "{v}");
    assert_eq!(follow.status, 200);
    assert_eq!(
        follow.body,
        b"done\n",
        "{:?}",
        String::from_utf8_lossy(&follow.body)
    );
}

/// `?encoding=utf-8` decodes a head/tail capture's head and tail apart: an
/// "é" whose first byte is the head and whose last is the tail is two
/// replaced bytes (and `X-Chaperone-Replaced: true`), not an "é".
#[test]
fn utf8_text_is_not_made_across_the_dropped_middle() {
    let served = serve(&serde_json::json!({"specs": {"s": {
        "argv": ["/usr/bin/printf", "\\303\\251XX\\303\\251"],
        "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8",
                                        "head": 1, "tail": 1}}]]}}}));
    assert!(client(&served.url, &["wait", "s"]).status.success());
    let ans = served.get("/procs/s/output/stdout/data?encoding=utf-8");
    assert_eq!(ans.status, 200);
    assert_eq!(String::from_utf8_lossy(&ans.body), "\u{fffd}\u{fffd}");
    assert_eq!(ans.header("x-chaperone-replaced"), Some("true"));
    // Followed too.
    let ans = served.get("/procs/s/output/stdout/data?encoding=utf-8&follow=true");
    assert_eq!(String::from_utf8_lossy(&ans.body), "\u{fffd}\u{fffd}");
    // The same held bytes, raw, are the two bytes.
    let ans = served.get("/procs/s/output/stdout/data");
    assert_eq!(ans.body, b"\xc3\xa9");
}
