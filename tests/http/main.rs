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
