//! Callback mode (`--callback INPUT|-`): the remote-style agent. It runs a
//! program and pushes what happens to an HTTP(S) server instead of being
//! asked: output as it is written, state changes, and the final result.
//!
//! The input is the notes' `program.json`:
//!
//! ```json
//! {"program": {"argv": ["make", "-j8"], "cwd": "/src", "env": {"CC": "clang"}, "stdin": "text"},
//!  "callback": {"url": "https://sched.example/jobs/42", "method": "POST", "token": "…"},
//!  "config": {"retry_frequency": 5, "timeout": 300, "output_buffer": 65536, "output_latency": 1}}
//! ```
//!
//! (one process, id `program`, stdout and stderr captured), or a chaperone
//! spec with top-level `callback` and `config` beside `specs`.
//!
//! What is sent, each with `Authorization: Bearer TOKEN` when there is a
//! token, by the callback's method (default `POST`):
//!
//! - `URL/output/FD?proc=ID&offset=N` (`application/octet-stream`): bytes of
//!   a capture from stream offset `N` (also in `X-Chaperone-Offset`), at
//!   most `output_buffer` bytes, sent once that many are waiting or
//!   `output_latency` seconds after the first of them was written;
//! - `URL/state` (JSON `{"id", "result"}`): when a process starts and ends;
//! - `URL/completed` (JSON `{"results": {id: result}}`), last, once every
//!   process is final and all of its output has been delivered.
//!
//! Results in pushes show captures as `detached` (their length): the bytes
//! went by the output pushes.
//!
//! Delivery: pushes of one capture go one at a time, in order; processes and
//! captures go side by side. A push that fails to connect, is answered 5xx,
//! 408 or 429, or gets no answer, is sent again every `retry_frequency`
//! seconds until the server has been failing for `timeout` seconds (from
//! the push's first try, or from the first failure of pushes before it that
//! has not been followed by a delivery: a server down throughout costs one
//! timeout, not one per push); any other 4xx is reported and not sent again.
//! The bytes wait in the capture meanwhile: a kept file with `--spool`, else
//! the memory capture's head and tail. A middle beyond those bounds is
//! dropped when the server is down for long, or when the child writes faster
//! than the server takes pushes (memory stays bounded: the child is not slowed
//! down for the server); the next push's offset says where it resumes, and
//! the final result's `dropped` says which bytes are gone. A receiver that
//! deduplicates by offset gets every byte it is sent once.
//!
//! A query string in the URL goes on every push, after the push's own.
//!
//! The agent prints one running-state JSON line at start: its pid, and each
//! process's pid and start time. SIGTERM to the agent reaches the program
//! (Procstar's terminate policy).

use crate::client::{Client, segment as enc};
use crate::spec::{CaptureMode, FdSpec, Input};
use crate::supervisor::Handle;
use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Where and how to push.
#[derive(Clone, Debug, PartialEq)]
pub struct Callback {
    /// The base URL, without its query string.
    pub url: String,
    /// The base URL's query string (without `?`), added to every push's.
    pub query: Option<String>,
    /// The HTTP method of every push.
    pub method: String,
    /// A bearer token.
    pub token: Option<String>,
    /// Seconds between tries of a failed push.
    pub retry_frequency: f64,
    /// Seconds a push is tried for before it is given up.
    pub timeout: f64,
    /// The most bytes of output in one push.
    pub output_buffer: usize,
    /// Seconds output may wait to be pushed.
    pub output_latency: f64,
}

/// The most seconds a callback setting takes (about 31 years): more is the
/// same as forever, and would overflow the clock.
const MAX_SECONDS: f64 = 1e9;

/// The shortest and longest wait for one try's answer: a third of the
/// timeout, within these. A try with no answer by then is sent again (after
/// `retry_frequency`), so one request the server lost does not use up the
/// whole timeout; a server that answers slowly still gets through; one
/// that takes requests and never answers holds each push that long once
/// it has been failing for the timeout.
const TRY_MIN: Duration = Duration::from_secs(1);
const TRY_MAX: Duration = Duration::from_secs(30);

/// Parses the input of `--callback`: the callback and the spec to run. A
/// program's `stdin` text is written to `stdin_dir` for the spec to open.
pub fn parse(raw: &[u8], stdin_dir: &std::path::Path) -> Result<(Callback, Input), String> {
    let mut v: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object_mut().ok_or("the input must be a JSON object")?;
    let cb = obj
        .remove("callback")
        .ok_or("no \"callback\" in the input")?;
    let config = obj.remove("config").unwrap_or_else(|| json!({}));
    // A misspelt setting would otherwise be dropped without a word.
    known_keys("callback", &cb, &["url", "method", "token"])?;
    known_keys(
        "config",
        &config,
        &[
            "retry_frequency",
            "timeout",
            "output_buffer",
            "output_latency",
        ],
    )?;
    if obj.contains_key("program") && obj.contains_key("specs") {
        return Err("give \"program\" or \"specs\", not both".into());
    }
    let url = cb["url"]
        .as_str()
        .ok_or("callback: \"url\" must be a string")?;
    if url.contains('#') {
        return Err(format!(
            "callback url: {url:?} has a fragment (#…), which is never sent"
        ));
    }
    // A query string goes after each push's path, with the push's own.
    let (url, query) = match url.split_once('?') {
        Some((base, q)) => (base, Some(q.to_string()).filter(|q| !q.is_empty())),
        None => (url, None),
    };
    let url = url.trim_end_matches('/').to_string();
    crate::client::parse_url(&url).map_err(|e| format!("callback url: {e}"))?;
    let token = match &cb["token"] {
        Value::Null => None,
        Value::String(t) if t.chars().any(char::is_control) => {
            return Err("callback: \"token\" holds a control character (a newline?)".into());
        }
        Value::String(t) => Some(t.clone()),
        _ => return Err("callback: \"token\" must be a string".into()),
    };
    let method = match &cb["method"] {
        Value::Null => "POST".to_string(),
        Value::String(m) => m.to_ascii_uppercase(),
        _ => return Err("callback: \"method\" must be a string".into()),
    };
    let num = |name: &str, default: f64| -> Result<f64, String> {
        match config.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(n) => n
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| {
                    format!("config: {name:?} must be a number of seconds or bytes, 0 or more")
                }),
        }
    };
    let callback = Callback {
        url,
        query,
        method,
        token,
        // Seconds at most MAX_SECONDS: "forever" written as 1e20 must not
        // overflow a Duration or an Instant.
        retry_frequency: num("retry_frequency", 5.0)?.clamp(0.01, MAX_SECONDS),
        timeout: num("timeout", 300.0)?.min(MAX_SECONDS),
        output_buffer: (num("output_buffer", 65536.0)? as usize).max(1),
        output_latency: num("output_latency", 1.0)?.min(MAX_SECONDS),
    };
    Method::from_bytes(callback.method.as_bytes())
        .map_err(|_| format!("callback: {:?} is not an HTTP method", callback.method))?;
    let input = if let Some(program) = obj.remove("program") {
        program_spec(&program, stdin_dir)?
    } else {
        crate::spec::parse_input(&serde_json::to_vec(&v).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?
    };
    Ok((callback, watchable(input)))
}

/// An error naming the first key of `v` (an object, if anything) not in
/// `known`.
fn known_keys(what: &str, v: &Value, known: &[&str]) -> Result<(), String> {
    match v {
        Value::Object(m) => match m.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "{what}: unknown key {k:?} (known: {})",
                known.join(", ")
            )),
            None => Ok(()),
        },
        Value::Null => Ok(()),
        _ => Err(format!("{what} must be a JSON object")),
    }
}

/// The one-process spec of a `program` object.
fn program_spec(p: &Value, stdin_dir: &std::path::Path) -> Result<Input, String> {
    known_keys("program", p, &["argv", "cwd", "env", "stdin"])?;
    let argv = p
        .get("argv")
        .and_then(Value::as_array)
        .ok_or("program: \"argv\" must be a list of strings")?;
    let mut spec = json!({
        "argv": argv,
        "fds": [["stdout", {"capture": {"mode": "memory", "encoding": "utf-8"}}],
                ["stderr", {"capture": {"mode": "memory", "encoding": "utf-8"}}]],
    });
    if let Some(cwd) = p.get("cwd") {
        spec["cwd"] = cwd.clone();
    }
    if let Some(env) = p.get("env") {
        spec["env"] = json!({"vars": env});
    }
    let stdin = match p.get("stdin") {
        None | Some(Value::Null) => json!(["stdin", {"null": {}}]),
        Some(Value::String(text)) => {
            let path = stdin_dir.join("stdin");
            std::fs::write(&path, text).map_err(|e| format!("program stdin: {e}"))?;
            json!(["stdin", {"file": {"path": path.to_string_lossy(), "flags": "Read"}}])
        }
        Some(_) => return Err("program: \"stdin\" must be a string".into()),
    };
    if let Some(fds) = spec["fds"].as_array_mut() {
        fds.insert(0, stdin);
    }
    crate::spec::parse_input(
        &serde_json::to_vec(&json!({"specs": {"program": spec}})).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())
}

/// Tempfile captures become memory captures, whose growth the agent sees
/// (a tempfile is written by the child directly).
fn watchable(mut input: Input) -> Input {
    for ps in input.specs.iter_mut() {
        for (_, fd) in &mut ps.fds {
            if let FdSpec::Capture { mode, .. } = fd {
                if *mode == CaptureMode::Tempfile {
                    *mode = CaptureMode::Memory;
                }
            }
        }
    }
    input
}

/// Why a push did not arrive.
#[derive(Debug, thiserror::Error)]
enum Undelivered {
    /// Refused with this status (4xx): not tried again.
    #[error("refused with status {0} (not tried again)")]
    Refused(u16),
    /// Still failing after the timeout.
    #[error("given up after the timeout: {0}")]
    GaveUp(String),
}

/// The pusher: one HTTP client and the callback's rules.
struct Pusher {
    client: Client,
    cb: Callback,
    method: Method,
    /// Since when every push has failed (`None`: the last one arrived). A
    /// push gives up once the server has been failing for `timeout`, from
    /// its own first try or from this, whichever is earlier: with the server
    /// down, pushes do not each wait out a timeout of their own in turn.
    failing_since: std::sync::Mutex<Option<Instant>>,
    /// Requests in flight at once, at most [`IN_FLIGHT`]: with a push per
    /// capture and state change of thousands of processes, a connection
    /// each overran a small server's listen queue (a stdlib server with
    /// the default backlog of 5 refused some of 50 processes' pushes until
    /// they were given up).
    in_flight: tokio::sync::Semaphore,
}

/// See [`Pusher::in_flight`].
const IN_FLIGHT: usize = 16;

impl Pusher {
    /// Sends one push, trying again as the callback's config says.
    async fn push(
        &self,
        path: &str,
        body: (&'static str, Bytes),
        headers: &[(&'static str, String)],
    ) -> Result<(), Undelivered> {
        let path = self.with_query(path);
        let timeout = Duration::from_secs_f64(self.cb.timeout);
        let first = Instant::now();
        loop {
            // A request in flight is bounded too: a server that takes it and
            // never answers must not hold the push (and the agent) for good,
            // and one it lost is sent again while the timeout lasts.
            let left = (timeout / 3).clamp(TRY_MIN, TRY_MAX);
            // A turn first (waiting for one is not the server failing),
            // held through the try.
            let turn = self.in_flight.acquire().await;
            let attempt = async {
                let r = self
                    .client
                    .send_body(self.method.clone(), &path, Some(body.clone()), headers)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status().as_u16();
                // The body is not wanted, but read it so the server is done.
                let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                Ok::<u16, String>(status)
            };
            let why = match tokio::time::timeout(left, attempt).await {
                Ok(Ok(status)) => match status {
                    200..=299 => {
                        self.set_failing(false);
                        return Ok(());
                    }
                    408 | 429 | 500..=599 => format!("answered {status}"),
                    _ => {
                        self.set_failing(false);
                        return Err(Undelivered::Refused(status));
                    }
                },
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {:.1} s", left.as_secs_f64()),
            };
            drop(turn);
            self.set_failing(true);
            let since = self.failing().map_or(first, |f| f.min(first));
            if since.elapsed() >= timeout {
                return Err(Undelivered::GaveUp(why));
            }
            tracing::debug!("callback {path}: {why}; trying again");
            tokio::time::sleep(Duration::from_secs_f64(self.cb.retry_frequency)).await;
        }
    }

    /// Since when pushes have been failing, if they are.
    fn failing(&self) -> Option<Instant> {
        *self.failing_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a push failing (from now, unless already) or arriving.
    fn set_failing(&self, failing: bool) {
        let mut f = self.failing_since.lock().unwrap_or_else(|e| e.into_inner());
        *f = match (failing, *f) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(Instant::now()),
            (false, _) => None,
        };
    }

    /// `path` (which may have a query string) with the base URL's query.
    fn with_query(&self, path: &str) -> String {
        match &self.cb.query {
            None => path.to_string(),
            Some(q) if path.contains('?') => format!("{path}&{q}"),
            Some(q) => format!("{path}?{q}"),
        }
    }

    /// Pushes process `id`'s state `r`; why it did not arrive, if it did not.
    async fn push_state(&self, id: &str, r: &crate::result::ProcRes) -> Option<String> {
        self.push_json("/state", &json!({"id": id, "result": r}))
            .await
            .err()
            .map(|e| format!("state of {id}: {e}"))
    }

    async fn push_json(&self, path: &str, v: &Value) -> Result<(), Undelivered> {
        let body = Bytes::from(serde_json::to_vec(v).unwrap_or_default());
        self.push(path, ("application/json", body), &[]).await
    }
}

/// Pushes one capture's bytes until it can grow no more and all is sent.
async fn push_output(p: &Pusher, handle: &Handle, id: &str, fd: &str) -> Result<(), String> {
    let latency = Duration::from_secs_f64(p.cb.output_latency);
    let mut at = 0u64;
    loop {
        // Wait for a first byte past `at`, then for a buffer's worth or the
        // latency, whichever is first.
        let w = handle
            .fd_wait(id, fd, at, Duration::from_secs(3600))
            .await
            .map_err(|e| e.to_string())?;
        let mut length = w.length.unwrap_or(at);
        if length <= at && !w.open {
            return Ok(());
        }
        let due = Instant::now() + latency;
        let mut open = w.open;
        while open && length - at < p.cb.output_buffer as u64 {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let w = handle
                .fd_wait(id, fd, length, left)
                .await
                .map_err(|e| e.to_string())?;
            open = w.open;
            length = w.length.unwrap_or(length);
        }
        let stop = length.min(at + p.cb.output_buffer as u64);
        let d = handle
            .fd_data(id, fd, at, Some(stop))
            .await
            .map_err(|e| e.to_string())?;
        // Bytes a head/tail bound dropped meanwhile are skipped: the offset
        // says where the pushed bytes are.
        let from = match &d.missing {
            Some(m) if m.start <= at => m.end,
            _ => at,
        };
        let next = d.missing.as_ref().map_or(d.stop, |m| m.end.max(d.stop));
        if !d.data.is_empty() {
            let path = format!("/output/{}?proc={}&offset={from}", enc(fd), enc(id));
            let headers = [
                ("x-chaperone-offset", from.to_string()),
                ("x-chaperone-proc", id.to_string()),
            ];
            match p
                .push(&path, ("application/octet-stream", d.data), &headers)
                .await
            {
                Ok(()) => {}
                Err(e) => return Err(format!("output of {id} {fd} from {from}: {e}")),
            }
        }
        if next > at {
            at = next;
        } else if !open {
            return Ok(());
        }
    }
}

/// Runs callback mode once the processes are started: pushes until every
/// process is final and everything is delivered; returns the exit code.
pub async fn run(handle: Handle, cb: Callback, ids: Vec<String>) -> u8 {
    let client = match Client::to(&cb.url, cb.token.clone(), None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: callback: {e}");
            return 2;
        }
    };
    let method = Method::from_bytes(cb.method.as_bytes()).unwrap_or(Method::POST);
    let p = Pusher {
        client,
        cb,
        method,
        failing_since: std::sync::Mutex::new(None),
        in_flight: tokio::sync::Semaphore::new(IN_FLIGHT),
    };
    // Running-state line: the agent's pid and each process's.
    let mut procs = serde_json::Map::new();
    let mut captures = Vec::new();
    for id in &ids {
        if let Some(r) = handle.result_brief(id).await {
            procs.insert(
                id.clone(),
                json!({"pid": r.pid, "start": r.times.start, "state": r.state}),
            );
            for (fd, res) in &r.fds {
                if res.is_some() {
                    captures.push((id.clone(), fd.clone()));
                }
            }
        }
    }
    println!(
        "{}",
        json!({"state": "running", "pid": std::process::id(), "procs": procs})
    );
    let mut failures = Vec::new();
    let outputs = futures_util::future::join_all(
        captures
            .iter()
            .map(|(id, fd)| push_output(&p, &handle, id, fd)),
    );
    // Each process's states, in order: as it is now, then its end, by
    // waiting on it (not on events, which a process that ended before this
    // began would never send again). Processes go side by side, so one whose
    // push waits on the server holds up no other.
    let states = async {
        let (handle, p) = (&handle, &p);
        let each = ids.iter().map(|id| async move {
            let mut failed = Vec::new();
            let mut pushed_final = false;
            if let Some(r) = handle.result_brief(id).await {
                // Final once it has its stop time (settled: an error while it
                // runs, or kept-file writes in flight, are not the end).
                pushed_final = r.times.stop.is_some();
                failed.extend(p.push_state(id, &r).await);
            }
            if !pushed_final && handle.wait(id).await.is_some() {
                if let Some(r) = handle.result_brief(id).await {
                    failed.extend(p.push_state(id, &r).await);
                }
            }
            failed
        });
        futures_util::future::join_all(each)
            .await
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
    };
    let (outs, state_failures) = tokio::join!(outputs, states);
    failures.extend(state_failures);
    failures.extend(outs.into_iter().filter_map(Result::err));
    handle.wait_all().await;
    // Detached: the bytes went by the output pushes.
    let mut results = serde_json::Map::new();
    for id in &ids {
        if let Some(r) = handle.result_brief(id).await {
            results.insert(id.clone(), serde_json::to_value(&r).unwrap_or(Value::Null));
        }
    }
    if let Err(e) = p
        .push_json("/completed", &json!({ "results": results }))
        .await
    {
        failures.push(format!("completed: {e}"));
    }
    for f in &failures {
        eprintln!("error: callback: {f}");
    }
    if failures.is_empty() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_json_is_one_process_with_its_stdin() {
        let d = tempfile::tempdir().unwrap();
        let raw = br#"{"program": {"argv": ["/bin/cat"], "cwd": "/tmp", "env": {"A": "1"}, "stdin": "in"},
                       "callback": {"url": "http://127.0.0.1:9/cb/", "token": "t"},
                       "config": {"retry_frequency": 0.5, "output_buffer": 10}}"#;
        let (cb, input) = parse(raw, d.path()).unwrap();
        assert_eq!(cb.url, "http://127.0.0.1:9/cb");
        assert_eq!(
            (cb.method.as_str(), cb.token.as_deref()),
            ("POST", Some("t"))
        );
        assert_eq!(
            (cb.retry_frequency, cb.timeout, cb.output_buffer),
            (0.5, 300.0, 10)
        );
        let ps = input.specs.get("program").unwrap();
        assert_eq!(ps.argv, ["/bin/cat"]);
        assert_eq!(ps.cwd.as_deref(), Some("/tmp"));
        assert_eq!(ps.env.vars.get("A"), Some(&Some("1".to_string())));
        assert_eq!(std::fs::read(d.path().join("stdin")).unwrap(), b"in");
        assert_eq!(ps.fds.len(), 3);
    }

    #[test]
    fn a_spec_with_a_callback_is_taken_and_tempfiles_become_watchable() {
        let d = tempfile::tempdir().unwrap();
        let raw =
            br#"{"specs": {"a": {"argv": ["/bin/true"], "fds": [["stdout", {"capture": {}}]]}},
                       "callback": {"url": "https://x.example", "method": "put"}}"#;
        let (cb, input) = parse(raw, d.path()).unwrap();
        assert_eq!(cb.method, "PUT");
        let ps = input.specs.get("a").unwrap();
        assert!(matches!(
            ps.fds[0].1,
            FdSpec::Capture {
                mode: CaptureMode::Memory,
                ..
            }
        ));
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let e = |raw: &str| parse(raw.as_bytes(), d.path()).unwrap_err();
        assert!(e("[]").contains("JSON object"));
        assert!(e(r#"{"specs": {}}"#).contains("no \"callback\""));
        assert!(e(r#"{"specs": {}, "callback": {"url": "ftp://x"}}"#).contains("callback url"));
        assert!(
            e(r#"{"specs": {}, "callback": {"url": "http://x"}, "config": {"timeout": -1}}"#)
                .contains("\"timeout\"")
        );
        assert!(
            e(r#"{"program": {"argv": "ls"}, "callback": {"url": "http://x"}}"#).contains("argv")
        );
        // Misspelt or mistyped settings, said rather than dropped.
        let cases = [
            (
                r#"{"specs": {}, "callback": {"url": "http://x", "tokn": "t"}}"#,
                "unknown key \"tokn\"",
            ),
            (
                r#"{"specs": {}, "callback": {"url": "http://x"}, "config": {"retry_frequncy": 1}}"#,
                "config: unknown key \"retry_frequncy\"",
            ),
            (
                r#"{"program": {"argv": ["ls"], "cmd": 1}, "callback": {"url": "http://x"}}"#,
                "program: unknown key \"cmd\"",
            ),
            (
                r#"{"specs": {}, "callback": {"url": "http://x", "token": 5}}"#,
                "\"token\" must be a string",
            ),
            (
                r#"{"specs": {}, "callback": {"url": "http://x", "token": "a\nb"}}"#,
                "control character",
            ),
            (
                r#"{"specs": {}, "callback": {"url": "http://x/#frag"}}"#,
                "fragment",
            ),
            (
                r#"{"specs": {}, "program": {"argv": ["ls"]}, "callback": {"url": "http://x"}}"#,
                "not both",
            ),
        ];
        for (raw, want) in cases {
            let got = e(raw);
            assert!(got.contains(want), "{raw}: {got}");
        }
        let (cb, _) = parse(
            br#"{"specs": {}, "callback": {"url": "http://x/hook/?job=42"}}"#,
            d.path(),
        )
        .unwrap();
        assert_eq!(
            (cb.url.as_str(), cb.query.as_deref()),
            ("http://x/hook", Some("job=42"))
        );
    }
}
