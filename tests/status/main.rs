//! The status page's HTTP side, against a real `chaperone --serve`: the page
//! and its files, `GET /status`, the `GET /events` stream and
//! `GET /procs/ID/samples`. (The page itself runs in a browser in
//! `tests/python/test_status_page.py`.)

#[path = "../util/mod.rs"]
mod util;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use util::http::{Chunks, Served};

fn serve(spec: &Value, token: Option<&str>) -> Served {
    match token {
        Some(t) => util::http::serve(spec, &["--serve-token", t], &[]),
        None => util::http::serve(spec, &[], &[]),
    }
}

impl Served {
    fn start(&self, specs: Value) {
        let r = self.request(
            "POST",
            "/procs",
            &[("Content-Type", "application/json")],
            &serde_json::to_vec(&json!({ "specs": specs })).unwrap(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }

    /// `GET /events`, read event by event.
    fn events(&self) -> Events {
        let (r, status, headers) = self.send("GET", "/events", &[], b"", true);
        assert_eq!(status, 200);
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == "content-type" && v == "text/event-stream"),
            "{headers:?}"
        );
        Events {
            chunks: Chunks(r),
            buf: Vec::new(),
        }
    }
}

struct Events {
    chunks: Chunks,
    buf: Vec<u8>,
}

impl Events {
    /// The next event: (name, data), skipping comments.
    fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut name = None;
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if let Some(name) = name {
                    return (name, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let c = self.chunks.next_chunk().expect("the event stream ended");
            self.buf.extend(c);
        }
    }

    /// Events until `f` picks one (within `limit`); panics with what came.
    fn until<T>(&mut self, limit: Duration, mut f: impl FnMut(&str, &Value) -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let (name, data) = self.next();
            if let Some(t) = f(&name, &data) {
                return t;
            }
            seen.push(name);
        }
        panic!("not within {limit:?}; saw {seen:?}");
    }
}

fn row<'a>(rows: &'a Value, id: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|r| r["id"] == id)
}

#[test]
fn the_page_loads_without_the_token_and_every_data_request_needs_it() {
    let s = serve(&json!({"specs": {}}), Some("s3cret"));
    let page = s.request_as("GET", "/ui/", &[], b"", false);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(
        html.contains(r#"<script src="app.js" defer></script>"#),
        "{html}"
    );
    // Nothing inline may run: the policy allows only the agent's own files.
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(
        !html.contains("<script>") && !html.contains("onclick="),
        "inline script"
    );
    for (file, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
    ] {
        let r = s.request_as("GET", &format!("/ui/{file}"), &[], b"", false);
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some(kind)),
            "{file}"
        );
        assert!(r.body.len() > 1000, "{file}: {} bytes", r.body.len());
        // Revalidation: the same file answers 304 to its entity tag.
        let tag = r.header("etag").unwrap().to_string();
        let again = s.request_as(
            "GET",
            &format!("/ui/{file}"),
            &[("If-None-Match", &tag)],
            b"",
            false,
        );
        assert_eq!(again.status, 304, "{file}");
    }
    let bare = s.request_as("GET", "/ui", &[], b"", false);
    assert_eq!((bare.status, bare.header("location")), (308, Some("/ui/")));
    let missing = s.request_as("GET", "/ui/secrets.json", &[], b"", false);
    assert_eq!(missing.status, 404);
    // The data behind the page is the API's, token and all.
    for path in ["/status", "/events", "/procs/x/samples", "/agent"] {
        let r = s.request_as("GET", path, &[], b"", false);
        assert_eq!(r.status, 401, "{path} without the token");
    }
    // Only GETs of /ui are open: other methods there still need the token.
    let post = s.request_as("POST", "/ui/", &[], b"", false);
    assert_eq!(post.status, 401);
    let with = s.get("/status");
    assert_eq!(with.status, 200);
    assert_eq!(with.json()["data"]["agent"]["token"], true);
}

#[test]
fn status_gives_every_process_in_brief_with_counts() {
    let s = serve(
        &json!({"specs": {
            "echo": {"argv": ["/bin/sh", "-c", "printf 'hello\\n'; printf 'oops' >&2; exit 3"],
                     "fds": [["stdout", util::mem_utf8()], ["stderr", util::mem_utf8()]]},
            "sleeper": {"argv": ["/bin/sleep", "30"]},
            "missing": {"argv": ["/nonexistent/program", "x"]},
        }}),
        None,
    );
    // Until the short ones have ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    let d = loop {
        let d = s.get("/status").json()["data"].clone();
        let echo = row(&d["procs"], "echo").cloned().unwrap_or_default();
        if echo["phase"] == "terminated" || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rows = &d["procs"];
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["echo", "missing", "sleeper"], "sorted by id");
    let echo = row(rows, "echo").unwrap();
    assert_eq!(echo["phase"], "terminated");
    assert_eq!(echo["exit_code"], 3);
    assert_eq!(echo["signal"], Value::Null);
    assert_eq!(echo["argv"][0], "/bin/sh");
    assert_eq!(
        echo["fds"][0],
        json!({"name": "stdout", "length": 6, "dropped": null, "open": false})
    );
    assert_eq!(echo["fds"][1]["length"], 4);
    assert!(
        echo["cpu"].as_f64().is_some() && echo["rss"].as_u64().unwrap() > 0,
        "{echo}"
    );
    let sleeper = row(rows, "sleeper").unwrap();
    assert_eq!(
        (&sleeper["phase"], &sleeper["state"]),
        (&json!("running"), &json!("running"))
    );
    assert!(sleeper["pid"].as_i64().unwrap() > 0);
    assert_eq!(sleeper["exit_code"], Value::Null);
    let missing = row(rows, "missing").unwrap();
    assert_eq!(missing["phase"], "error");
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/program"),
        "{missing}"
    );
    let agent = &d["agent"];
    assert_eq!(
        agent["counts"],
        json!({"total": 3, "queued": 0, "opening": 0, "running": 1, "terminated": 1, "error": 1})
    );
    let ring = chaperone::BackendChoice::IoUring;
    let want = match std::env::var("CHAPERONE_BACKEND").as_deref() {
        Ok("epoll") => "epoll",
        _ if chaperone::backend_usable(ring) => "io_uring",
        _ => "epoll",
    };
    assert_eq!(agent["backend"]["name"], want);
    assert_eq!(agent["shutdown_state"], "active");
    assert!(d["generation"].as_u64().unwrap() > 0);
    // GET /agent counts the same way.
    let a = s.get("/agent").json();
    assert_eq!(a["data"]["agent"]["procs"]["total"], 3);
    assert_eq!(a["data"]["agent"]["procs"]["states"]["error"], 1);
}

#[test]
fn events_give_a_snapshot_then_each_change_newer_than_it() {
    let s = serve(
        &json!({"specs": {"before": {"argv": ["/bin/sleep", "30"]}}}),
        None,
    );
    let mut ev = s.events();
    let (name, snap) = ev.next();
    assert_eq!(name, "snapshot");
    assert!(row(&snap["procs"], "before").is_some(), "{snap}");
    assert_eq!(snap["agent"]["counts"]["running"], 1);
    let base = snap["generation"].as_u64().unwrap();

    // A process started after the stream opened shows as it runs, then as
    // it ends, without asking.
    s.start(
        json!({"late": {"argv": ["/bin/sh", "-c", "echo hi; sleep 0.5; exit 7"],
                            "fds": [["stdout", util::mem_utf8()]]}}),
    );
    let mut generations = Vec::new();
    // (A tick may catch it queued, before it is launched.)
    let first = ev.until(Duration::from_secs(10), |name, d| {
        (name == "procs").then(|| generations.push(d["generation"].as_u64().unwrap()));
        row(&d["procs"], "late")
            .filter(|r| r["phase"] != "queued")
            .cloned()
    });
    assert_eq!(first["phase"], "running", "{first}");
    let ended = ev.until(Duration::from_secs(10), |name, d| {
        (name == "procs").then(|| generations.push(d["generation"].as_u64().unwrap()));
        row(&d["procs"], "late")
            .filter(|r| r["phase"] == "terminated")
            .cloned()
    });
    assert_eq!(ended["exit_code"], 7);
    assert_eq!(ended["fds"][0]["length"], 3);
    // Never a frame older than the snapshot, and in order.
    assert!(
        generations.iter().all(|&g| g > base),
        "{generations:?} after {base}"
    );
    assert!(
        generations.windows(2).all(|w| w[0] < w[1]),
        "{generations:?}"
    );

    // The agent's figures come on the tick.
    let agent = ev.until(Duration::from_secs(5), |name, d| {
        (name == "agent").then(|| d.clone())
    });
    assert_eq!(agent["counts"]["terminated"], 1, "{agent}");

    // Deleting it is a `gone` in the next `procs` frame. Started again
    // under the same id, it comes back as a new row (in one frame with the
    // `gone` or a later one: `gone` is applied first).
    assert_eq!(s.request("DELETE", "/procs/late", &[], b"").status, 200);
    let gone = ev.until(Duration::from_secs(5), |name, d| {
        (name == "procs" && d["gone"] != json!([])).then(|| d.clone())
    });
    assert_eq!(gone["gone"], json!(["late"]));
    assert!(row(&gone["procs"], "late").is_none(), "{gone}");
    s.start(json!({"late": {"argv": ["/bin/sleep", "1"]}}));
    let again = ev.until(Duration::from_secs(5), |name, d| {
        (name == "procs")
            .then(|| row(&d["procs"], "late").cloned())
            .flatten()
    });
    assert_eq!(again["argv"][0], "/bin/sleep", "{again}");
    ev.until(Duration::from_secs(5), |name, d| {
        (name == "procs")
            .then(|| row(&d["procs"], "late").filter(|r| r["phase"] == "terminated"))
            .flatten()
            .map(|_| ())
    });
    assert_eq!(s.request("DELETE", "/procs/late", &[], b"").status, 200);

    // A second subscriber gets its own snapshot, with what is there now.
    let mut other = s.events();
    let (name, snap2) = other.next();
    assert_eq!(name, "snapshot");
    assert!(row(&snap2["procs"], "late").is_none() && row(&snap2["procs"], "before").is_some());
    assert!(snap2["generation"].as_u64().unwrap() > base);
}

#[test]
fn running_processes_rows_come_every_tick_with_their_output_growing() {
    let s = serve(
        &json!({"specs": {"ticker": {
            "argv": ["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 0.4; done"],
            "fds": [["stdout", util::mem_utf8()]]}}}),
        None,
    );
    let mut ev = s.events();
    let mut lengths = Vec::new();
    let mut ticks = 0;
    ev.until(Duration::from_secs(15), |name, d| {
        if name == "procs" || name == "snapshot" {
            if let Some(r) = row(&d["procs"], "ticker") {
                lengths.push(r["fds"][0]["length"].as_u64().unwrap());
                if name == "procs" && r["phase"] == "running" {
                    ticks += 1;
                }
                return (r["phase"] == "terminated").then_some(());
            }
        }
        None
    });
    // It ran for 3.2 s: rows on at least two ticks while it ran, between
    // the snapshot and the end, its output only growing.
    assert!(ticks >= 2, "{ticks} running rows: {lengths:?}");
    assert!(lengths.windows(2).all(|w| w[0] <= w[1]), "{lengths:?}");
    assert_eq!(lengths.last(), Some(&56));
}

#[test]
fn samples_chart_a_running_process_over_its_life() {
    let s = serve(
        &json!({"specs": {"slow": {"argv": ["/bin/sleep", "30"]},
                          "quick": {"argv": ["/bin/true"]}}}),
        None,
    );
    // The agent samples every second.
    std::thread::sleep(Duration::from_millis(3500));
    let d = s.get("/procs/slow/samples").json();
    let points = d["data"]["samples"].as_array().unwrap().clone();
    assert!(points.len() >= 2, "{d}");
    for p in &points {
        let p = p.as_array().unwrap();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[1].as_u64().unwrap() > 0, "resident bytes: {p:?}");
        assert!(p[2].as_f64().unwrap() >= 0.0, "CPU seconds: {p:?}");
    }
    let t: Vec<f64> = points.iter().map(|p| p[0].as_f64().unwrap()).collect();
    assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
    assert!(t[0] > 0.5 && t[t.len() - 1] < 4.0, "{t:?}");
    // One that was over before any sample has none; an unknown id is 404.
    assert_eq!(
        s.get("/procs/quick/samples").json()["data"]["samples"],
        json!([])
    );
    let unknown = s.get("/procs/nope/samples");
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["errors"]["detail"], "unknown proc id: nope");
}

#[test]
fn a_running_row_is_sent_again_only_when_its_figures_move() {
    let s = serve(
        &json!({"specs": {
            "idle": {"argv": ["/bin/sleep", "30"]},
            "busy": {"argv": ["/bin/sh", "-c", "while :; do echo x; sleep 0.2; done"],
                     "fds": [["stdout", util::mem_utf8()]]},
        }}),
        None,
    );
    // Past the first samples, which fill in CPU and RSS.
    std::thread::sleep(Duration::from_millis(2500));
    let mut ev = s.events();
    let (mut idle, mut busy) = (0, 0);
    let deadline = Instant::now() + Duration::from_millis(6500);
    while Instant::now() < deadline {
        let (name, d) = ev.next();
        if name != "procs" {
            continue;
        }
        for r in d["procs"].as_array().unwrap() {
            // A running row on the tick leaves out the argv the viewer has.
            assert!(r.get("argv").is_none(), "{r}");
            match r["id"].as_str() {
                Some("idle") => idle += 1,
                Some("busy") => busy += 1,
                _ => {}
            }
        }
    }
    // The writer's output grows every tick; the sleeper's figures stay put:
    // it is sent on the hub's first tick (the hub is new) and at most once
    // more, should its resident set move as the kernel settles it.
    assert!(busy >= 5, "busy sent {busy} times");
    assert!(idle <= 2, "idle sent {idle} times");
}
