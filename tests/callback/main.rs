//! `chaperone --callback`: output, state and the final result pushed to a
//! small HTTP server in the test, which is down at first, then answers 503,
//! then recovers.

#[path = "../util/mod.rs"]
mod util;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request the server took.
#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The status it was answered with.
    status: u16,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request's path, headers (names lowercased) and body.
type Parts = (String, Vec<(String, String)>, Vec<u8>);

fn read_request(s: &mut TcpStream) -> Option<Parts> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((path, headers, body))
}

/// Serves on `port` from `down_for` on: 503 until `ok_from`, then `status`
/// (recording every request); returns the record.
fn server(port: u16, down_for: Duration, ok_from: Duration, status: u16) -> Arc<Mutex<Vec<Req>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        std::thread::sleep(down_for);
        // Another process may hold the port for a moment: try for a while.
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if t0.elapsed() < down_for + Duration::from_secs(5) => {
                    eprintln!("port {port}: {e}; trying again");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("port {port}: {e}"),
            }
        };
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let Some((path, headers, body)) = read_request(&mut s) else {
                continue;
            };
            let status = if t0.elapsed() < ok_from { 503 } else { status };
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            record.lock().unwrap().push(Req {
                path,
                headers,
                body,
                status,
            });
        }
    });
    seen
}

#[test]
fn every_byte_arrives_once_in_order_through_an_outage_and_the_completion_last() {
    let port = util::free_port();
    // Down for 1 s (connections refused), then 503 until 2 s, then 200.
    let seen = server(port, Duration::from_secs(1), Duration::from_secs(2), 200);
    let input = json!({
        "program": {"argv": ["/bin/sh", "-c",
            "i=0; while [ $i -lt 60 ]; do echo line $i; i=$((i+1)); sleep 0.05; done; echo bye >&2"]},
        "callback": {"url": format!("http://127.0.0.1:{port}/jobs/7"), "token": "tok"},
        "config": {"retry_frequency": 0.2, "timeout": 30, "output_buffer": 100, "output_latency": 0.1},
    });
    let mut child = Command::new(util::bin())
        .args(["--callback", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&input).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The running-state line: the agent's pid, the process's pid and start.
    let first: Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["state"], "running");
    assert_eq!(first["pid"], pid);
    assert!(
        first["procs"]["program"]["pid"].as_i64().unwrap() > 0,
        "{first}"
    );
    assert!(first["procs"]["program"]["start"].is_string());

    let reqs = seen.lock().unwrap().clone();
    assert!(reqs.iter().any(|r| r.status == 503), "the outage was seen");
    let ok: Vec<&Req> = reqs.iter().filter(|r| r.status == 200).collect();
    assert!(
        ok.iter()
            .all(|r| r.header("authorization") == Some("Bearer tok"))
    );
    // Each capture's accepted pushes: offsets from 0, each once, contiguous.
    for (fd, want) in [
        (
            "stdout",
            (0..60).map(|i| format!("line {i}\n")).collect::<String>(),
        ),
        ("stderr", "bye\n".to_string()),
    ] {
        let mut got = Vec::new();
        for r in ok
            .iter()
            .filter(|r| r.path.starts_with(&format!("/jobs/7/output/{fd}?")))
        {
            let offset: u64 = r.header("x-chaperone-offset").unwrap().parse().unwrap();
            assert!(
                r.path.ends_with(&format!("proc=program&offset={offset}")),
                "{}",
                r.path
            );
            assert_eq!(
                offset,
                got.len() as u64,
                "{fd}: a gap or a repeat at {offset}"
            );
            assert!(r.body.len() <= 100, "output_buffer");
            got.extend(&r.body);
        }
        assert_eq!(String::from_utf8(got).unwrap(), want, "{fd}");
    }
    // States: running, then terminated; the completion last of all.
    let states: Vec<Value> = ok
        .iter()
        .filter(|r| r.path == "/jobs/7/state")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(states.first().unwrap()["result"]["state"], "running");
    assert_eq!(states.last().unwrap()["result"]["state"], "terminated");
    let last = ok.last().unwrap();
    assert_eq!(last.path, "/jobs/7/completed");
    let done: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(done["results"]["program"]["status"]["exit_code"], 0);
    assert_eq!(
        ok.iter().filter(|r| r.path.ends_with("/completed")).count(),
        1
    );
}

#[test]
fn a_refusing_server_is_reported_and_not_tried_forever() {
    let port = util::free_port();
    let seen = server(port, Duration::ZERO, Duration::ZERO, 404);
    std::thread::sleep(Duration::from_millis(100));
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.json");
    std::fs::write(
        &input,
        serde_json::to_vec(&json!({
            "specs": {"e": {"argv": ["/bin/echo", "hi"], "fds": [["stdout", util::mem_utf8()]]}},
            "callback": {"url": format!("http://127.0.0.1:{port}")},
            "config": {"retry_frequency": 0.1, "timeout": 60},
        }))
        .unwrap(),
    )
    .unwrap();
    let t0 = Instant::now();
    let out = Command::new(util::bin())
        .arg("--callback")
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(t0.elapsed() < Duration::from_secs(20), "kept trying a 404");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused with status 404"), "{err}");
    // One try each: the states, the output, the completion.
    let reqs = seen.lock().unwrap().clone();
    let outputs = reqs
        .iter()
        .filter(|r| r.path.starts_with("/output/stdout"))
        .count();
    assert_eq!(outputs, 1, "{reqs:?}");
    assert_eq!(reqs.iter().filter(|r| r.path == "/completed").count(), 1);
}

#[test]
fn sigterm_to_the_agent_reaches_the_program_and_its_end_is_pushed() {
    let port = util::free_port();
    let seen = server(port, Duration::ZERO, Duration::ZERO, 200);
    std::thread::sleep(Duration::from_millis(100));
    let mut child = Command::new(util::bin())
        .args(["--callback", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let input = json!({"program": {"argv": ["/bin/sleep", "30"]},
                       "callback": {"url": format!("http://127.0.0.1:{port}")}});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&input).unwrap())
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("\"running\""), "{line}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let reqs = seen.lock().unwrap().clone();
    let last = reqs.last().unwrap();
    assert_eq!(last.path, "/completed");
    let done: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(
        done["results"]["program"]["status"]["signal"], "SIGTERM",
        "{done}"
    );
}

/// Runs `chaperone --callback` on `input`; its output and how long it took.
fn run_callback(input: &Value) -> (std::process::Output, Duration) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("in.json");
    std::fs::write(&path, serde_json::to_vec(input).unwrap()).unwrap();
    let t0 = Instant::now();
    let out = Command::new(util::bin())
        .arg("--callback")
        .arg(&path)
        .output()
        .unwrap();
    (out, t0.elapsed())
}

// A server that takes each request and never answers: every push is given up
// once `timeout` has passed (it hung for good).
#[test]
fn a_server_that_never_answers_is_given_up_after_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let (out, took) = run_callback(&json!({
        "specs": {"e": {"argv": ["/bin/echo", "hi"], "fds": [["stdout", util::mem_utf8()]]}},
        "callback": {"url": format!("http://127.0.0.1:{port}")},
        "config": {"retry_frequency": 0.2, "timeout": 2},
    }));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no answer within"), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

// With the server down throughout, pushes give up together once it has been
// down for `timeout`, not one timeout after another (ten processes took
// (10 + 2) × timeout).
#[test]
fn a_server_down_throughout_is_given_up_once_not_per_push() {
    let port = util::free_port();
    let specs: serde_json::Map<String, Value> = (0..10)
        .map(|i| (format!("p{i}"), json!({"argv": ["/bin/true"]})))
        .collect();
    let (out, took) = run_callback(&json!({
        "specs": specs,
        "callback": {"url": format!("http://127.0.0.1:{port}")},
        "config": {"retry_frequency": 0.2, "timeout": 2},
    }));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("given up after the timeout"), "{err}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
}

// A query string in the URL is kept on every push, after the push's own.
#[test]
fn a_query_string_in_the_url_goes_on_every_push() {
    let port = util::free_port();
    let seen = server(port, Duration::ZERO, Duration::ZERO, 200);
    std::thread::sleep(Duration::from_millis(100));
    let (out, _) = run_callback(&json!({
        "specs": {"e": {"argv": ["/bin/echo", "hi"], "fds": [["stdout", util::mem_utf8()]]}},
        "callback": {"url": format!("http://127.0.0.1:{port}/hook?job=42")},
    }));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert!(
        paths.contains(&"/hook/state?job=42".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/hook/output/stdout?proc=e&offset=0&job=42".to_string()),
        "{paths:?}"
    );
    assert_eq!(paths.last().unwrap(), "/hook/completed?job=42");
}

#[test]
fn with_a_spool_every_push_is_delivered_before_the_agent_exits() {
    // --spool ends a run once its processes have; with --callback as well,
    // the agent exited then (0), before most pushes and the completion.
    let port = util::free_port();
    let seen = server(port, Duration::ZERO, Duration::ZERO, 200);
    let want: String = (1..=40000).map(|i| format!("{i}\n")).collect();
    let top = tempfile::tempdir().unwrap();
    let input = json!({
        "program": {"argv": ["/usr/bin/seq", "1", "40000"]},
        "callback": {"url": format!("http://127.0.0.1:{port}/j")},
        "config": {"retry_frequency": 0.2, "timeout": 20, "output_buffer": 4096, "output_latency": 0.05},
    });
    let spec = top.path().join("cb.json");
    std::fs::write(&spec, serde_json::to_vec(&input).unwrap()).unwrap();
    let out = Command::new(util::bin())
        .arg("--spool")
        .arg(top.path().join("sp"))
        .arg("--callback")
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reqs = seen.lock().unwrap().clone();
    let mut got: Vec<u8> = Vec::new();
    for r in reqs
        .iter()
        .filter(|r| r.path.starts_with("/j/output/stdout?"))
    {
        got.extend(&r.body);
    }
    assert_eq!(got.len(), want.len(), "every byte pushed");
    assert!(got == want.as_bytes());
    assert_eq!(reqs.last().map(|r| r.path.as_str()), Some("/j/completed"));

    // A server down throughout: not delivered, so exit 1 (it was 0).
    let down = util::free_port();
    let input = json!({
        "program": {"argv": ["/bin/echo", "hi"]},
        "callback": {"url": format!("http://127.0.0.1:{down}/j")},
        "config": {"retry_frequency": 0.2, "timeout": 1},
    });
    std::fs::write(&spec, serde_json::to_vec(&input).unwrap()).unwrap();
    let out = Command::new(util::bin())
        .arg("--spool")
        .arg(top.path().join("sp2"))
        .arg("--callback")
        .arg(&spec)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// A server that loses one request (takes it, never answers) and answers the
// rest: that push is sent again after retry_frequency. Its first try waited
// out the whole timeout, so it was given up (exit 1) though the server was
// answering every other push at once.
#[test]
fn a_request_the_server_never_answers_is_sent_again() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (n, s) in listener.incoming().enumerate() {
            let Ok(mut s) = s else { continue };
            let Some((path, _, body)) = read_request(&mut s) else {
                continue;
            };
            if n == 0 {
                held.push(s); // lost: never answered
                continue;
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            record.lock().unwrap().push((path, body));
        }
    });
    let (out, took) = run_callback(&json!({
        "specs": {"e": {"argv": ["/bin/echo", "hi"], "fds": [["stdout", util::mem_utf8()]]}},
        "callback": {"url": format!("http://127.0.0.1:{port}/j")},
        "config": {"retry_frequency": 0.2, "timeout": 6},
    }));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.last().map(|(p, _)| p.as_str()), Some("/j/completed"));
    let output: Vec<u8> = seen
        .iter()
        .filter(|(p, _)| p.starts_with("/j/output/stdout"))
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert_eq!(output, b"hi\n");
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

// Pushes for many processes at once: a connection each overran a small
// server's listen queue. At most 16 requests are in flight; all arrive.
#[test]
fn pushes_are_at_most_sixteen_at_once_and_all_arrive() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (active, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let (active, most, seen) = (active.clone(), most.clone(), seen.clone());
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let (active, most, seen) = (active.clone(), most.clone(), seen.clone());
                std::thread::spawn(move || {
                    let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    if let Some((path, _, _)) = read_request(&mut s) {
                        std::thread::sleep(Duration::from_millis(20));
                        seen.lock().unwrap().push(path);
                        active.fetch_sub(1, Ordering::SeqCst);
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    } else {
                        active.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
    }
    let specs: serde_json::Map<String, Value> = (0..60)
        .map(|i| {
            (
                format!("p{i}"),
                json!({"argv": ["/bin/echo", format!("out {i}")], "fds": [["stdout", util::mem_utf8()]]}),
            )
        })
        .collect();
    let (out, _) = run_callback(&json!({
        "specs": specs,
        "callback": {"url": format!("http://127.0.0.1:{port}/j")},
        "config": {"retry_frequency": 0.2, "timeout": 30},
    }));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = seen.lock().unwrap().clone();
    for i in 0..60 {
        assert!(
            seen.iter()
                .any(|p| p.starts_with("/j/output/stdout") && p.contains(&format!("proc=p{i}&"))),
            "p{i}'s output"
        );
    }
    assert_eq!(seen.last().map(String::as_str), Some("/j/completed"));
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 16, "{most} requests at once");
}
