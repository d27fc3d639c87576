//! `chaperone --serve` and `chaperone client` together: text encodings of
//! captures larger than one streamed step decode to the exact bytes, live and
//! finished (the step sizes keep base64 and base2048 steps concatenable).

#[path = "../util/mod.rs"]
mod util;

use base64::Engine as _;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `chaperone --serve` on a free port, killed on drop.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(spec: &serde_json::Value) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.json");
    std::fs::write(&path, serde_json::to_vec(spec).unwrap()).unwrap();
    let port = util::free_port();
    let child = Command::new(util::bin())
        .args(["--serve", "--serve-port", &port.to_string()])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the agent never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    Served {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
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
    while length_of(&served.url, "/procs/w/output/stdout/data?start=0&stop=0") < 8 << 20 {
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
fn length_of(url: &str, path: &str) -> u64 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    text.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-chaperone-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
