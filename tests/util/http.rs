//! A `chaperone --serve` for tests, spoken to over raw connections so that a
//! test sees exactly what the server sends: status, headers, body, chunks.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `chaperone --serve` on a free port, killed on drop.
pub struct Served {
    child: Child,
    pub port: u16,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The `--serve-token` it was given, sent by [`Served::request`].
    pub token: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 answer: status, headers (names lower-case), body (a chunked
/// one decoded).
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

/// Serves `spec` (a `{"specs": …}` value) with more arguments and
/// environment variables; returns once the port takes connections.
pub fn serve(spec: &Value, args: &[&str], env: &[(&str, &str)]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.json");
    std::fs::write(&path, serde_json::to_vec(spec).unwrap()).unwrap();
    let port = super::free_port();
    let child = Command::new(super::bin())
        .args(["--serve", "--serve-port", &port.to_string()])
        .args(args)
        .arg(&path)
        .env_remove("CHAPERONE_SERVE_TOKEN")
        .envs(env.iter().copied())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the agent never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let token = args
        .iter()
        .position(|a| *a == "--serve-token")
        .map(|i| args[i + 1].to_owned());
    Served {
        child,
        port,
        url: format!("http://127.0.0.1:{port}"),
        token,
        _dir: dir,
    }
}

impl Served {
    /// Sends a request on a connection of its own (with the token if
    /// `token`); returns the reader positioned at the body, the status and
    /// the headers.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        token: bool,
    ) -> (BufReader<TcpStream>, u16, Vec<(String, String)>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let (true, Some(t)) = (token, &self.token) {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        (r, status, headers)
    }

    /// A request with the token, read whole.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.request_as(method, path, headers, body, true)
    }

    /// A request, with the token if `token`, read whole.
    pub fn request_as(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        token: bool,
    ) -> Response {
        let (mut r, status, headers) = self.send(method, path, headers, body, token);
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        let mut body = Vec::new();
        if chunked {
            let mut c = Chunks(r);
            while let Some(piece) = c.next_chunk() {
                body.extend(piece);
            }
        } else if method != "HEAD" && status != 304 {
            r.read_to_end(&mut body).unwrap();
        }
        Response {
            status,
            headers,
            body,
        }
    }

    /// `GET path` with the token, read whole.
    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, &[], b"")
    }
}

/// A chunked body, chunk by chunk.
pub struct Chunks(pub BufReader<TcpStream>);

impl Chunks {
    /// The next chunk's data; `None` at the last chunk or a broken stream.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        let mut line = String::new();
        self.0.read_line(&mut line).ok()?;
        let n = usize::from_str_radix(line.trim_end(), 16).ok()?;
        let mut data = vec![0; n + 2];
        self.0.read_exact(&mut data).ok()?;
        data.truncate(n);
        (n > 0).then_some(data)
    }
}
