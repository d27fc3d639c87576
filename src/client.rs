//! `chaperone client`: a command-line client for the HTTP API (docs/http.md).
//!
//! It speaks to chaperone's `--serve`, and to Procstar's HTTP API for the
//! commands Procstar has. One connection per request, HTTP/1.1, over TLS for
//! an `https://` URL (trusting the system roots and `--ca`).
//!
//! Exit codes, for scripts: see [`Failure::code`].

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::Value;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The default agent URL (`CHAPERONE_URL` overrides it).
pub const DEFAULT_URL: &str = "http://127.0.0.1:3000";

/// `chaperone client [--url URL] [--token T] [--ca PEM] [--json] COMMAND`.
#[derive(Debug, Parser)]
#[command(
    name = "chaperone client",
    about = "Talk to a chaperone (or Procstar) HTTP API"
)]
pub struct ClientArgs {
    /// The agent's URL (default: `CHAPERONE_URL`, else http://127.0.0.1:3000).
    #[arg(long, env = "CHAPERONE_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// The bearer token (default: `CHAPERONE_SERVE_TOKEN`).
    #[arg(long, env = "CHAPERONE_SERVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An extra trusted root certificate for https URLs, PEM (default:
    /// `CHAPERONE_CA`).
    #[arg(long, env = "CHAPERONE_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// The client's commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Every process: id, state, pid, exit, elapsed, output lengths.
    List,
    /// One process's result.
    Show {
        /// The process id.
        id: String,
    },
    /// Start the processes of a spec file (`-` for standard input).
    Start {
        /// The spec (`{"specs": …}`).
        spec: PathBuf,
    },
    /// Send a signal (a name such as TERM or SIGTERM, or a number).
    Signal {
        /// The process id.
        id: String,
        /// The signal.
        signal: String,
    },
    /// Delete a finished process.
    Delete {
        /// The process id.
        id: String,
    },
    /// Write a capture's bytes to standard output.
    Output {
        /// The process id.
        id: String,
        /// The fd (`stdout`, `stderr`, or a number).
        #[arg(default_value = "stdout")]
        fd: String,
        /// First byte.
        #[arg(long, value_name = "OFFSET")]
        start: Option<u64>,
        /// End (exclusive).
        #[arg(long, value_name = "OFFSET", conflicts_with = "tail")]
        stop: Option<u64>,
        /// Only the last N bytes.
        #[arg(long, value_name = "N", conflicts_with = "start")]
        tail: Option<u64>,
        /// Go on writing bytes as the process writes them, until it ends.
        #[arg(short, long)]
        follow: bool,
        /// raw (default), utf-8, base64, base2048 or zstd.
        #[arg(long)]
        encoding: Option<String>,
    },
    /// Wait for a process to end; print its result. Exits 0 if it exited 0.
    Wait {
        /// The process id.
        id: String,
        /// Give up after this many seconds (exit 8).
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<f64>,
    },
    /// Shut the agent down.
    Shutdown {
        /// terminate (TERM, then KILL after the grace), kill, or idle.
        #[arg(long, default_value = "terminate")]
        policy: String,
        /// Seconds between TERM and KILL for terminate.
        #[arg(long, value_name = "SECONDS")]
        grace: Option<f64>,
    },
    /// Describe the agent.
    Agent,
}

/// Why a command failed; each has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The URL, a file or an argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// The agent could not be reached (or dropped the connection).
    #[error("cannot reach {url}: {err}")]
    Connect {
        /// The agent's URL.
        url: String,
        /// What went wrong.
        err: String,
    },
    /// The agent answered with an error status.
    #[error("{status}: {detail}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The error's detail.
        detail: String,
    },
    /// `wait` timed out.
    #[error("timed out waiting for {0}")]
    TimedOut(String),
    /// `wait`: the process ended, but not with exit status 0.
    #[error("{0}")]
    ProcFailed(String),
    /// Writing standard output failed.
    #[error("writing output: {0}")]
    Stdout(std::io::Error),
}

impl Failure {
    /// The exit code: 2 usage, 3 unreachable, 4 not found, 5 refused (other
    /// 4xx), 6 unauthorized, 7 server error, 8 timed out, 9 the waited-for
    /// process failed, 10 standard output failed.
    pub fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Connect { .. } => 3,
            Failure::Status { status, .. } => match *status {
                StatusCode::NOT_FOUND => 4,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => 6,
                s if s.is_server_error() => 7,
                _ => 5,
            },
            Failure::TimedOut(_) => 8,
            Failure::ProcFailed(_) => 9,
            Failure::Stdout(_) => 10,
        }
    }
}

/// Where the agent is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Over TLS.
    pub tls: bool,
    /// Host name or address (an IPv6 address without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix, without a trailing `/` (usually empty).
    pub prefix: String,
}

/// Parses `http[s]://HOST[:PORT][/PREFIX]`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "{url:?}: the URL must start with http:// or https://"
        ));
    };
    let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("{url:?}: unexpected {after:?} after the host")),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("{url:?}: {p:?} is not a port"))?,
    };
    Ok(Target {
        tls,
        host: host.to_string(),
        port,
        prefix: prefix.trim_end_matches('/').to_string(),
    })
}

/// Percent-encodes a path segment (a process id or fd name).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection maker for one HTTP server (the agent, or a callback's).
pub(crate) struct Client {
    url: String,
    target: Target,
    token: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// How long connecting (and a TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    fn new(args: &ClientArgs) -> Result<Client, Failure> {
        Client::to(&args.url, args.token.clone(), args.ca.as_deref())
    }

    /// A client of `url` (`http[s]://HOST[:PORT][/PREFIX]`), sending `token`
    /// as a bearer token, trusting the system roots and `ca` over TLS.
    pub(crate) fn to(
        url: &str,
        token: Option<String>,
        ca: Option<&std::path::Path>,
    ) -> Result<Client, Failure> {
        let target = parse_url(url).map_err(Failure::Usage)?;
        let tls = if target.tls {
            let config =
                crate::proto::ws::tls_config(ca).map_err(|e| Failure::Usage(e.to_string()))?;
            Some(tokio_rustls::TlsConnector::from(config))
        } else {
            None
        };
        Ok(Client {
            url: url.to_string(),
            target,
            token: token.filter(|t| !t.is_empty()),
            tls,
        })
    }

    fn unreachable(&self, err: impl std::fmt::Display) -> Failure {
        Failure::Connect {
            url: self.url.clone(),
            err: err.to_string(),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, Failure> {
        let addr = (self.target.host.as_str(), self.target.port);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| self.unreachable("connecting timed out"))?
            .map_err(|e| self.unreachable(e))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let name = rustls::pki_types::ServerName::try_from(self.target.host.clone())
            .map_err(|e| Failure::Usage(format!("{}: {e}", self.target.host)))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
            .await
            .map_err(|_| self.unreachable("the TLS handshake timed out"))?
            .map_err(|e| self.unreachable(e))?;
        Ok(Box::new(stream))
    }

    /// Sends one request on a new connection; answers the response, whose
    /// body streams from that connection.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        json_body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, Failure> {
        let body = json_body.map(|b| ("application/json", Bytes::from(b)));
        self.send_body(method, path_and_query, body, &[]).await
    }

    /// Sends one request with a body of a type, and extra headers, on a new
    /// connection.
    pub(crate) async fn send_body(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<(&'static str, Bytes)>,
        headers: &[(&'static str, String)],
    ) -> Result<Response<Incoming>, Failure> {
        let io = self.connect().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = if self.target.host.contains(':') {
            format!("[{}]:{}", self.target.host, self.target.port)
        } else {
            format!("{}:{}", self.target.host, self.target.port)
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.target.prefix))
            .header(header::HOST, host)
            .header(
                header::USER_AGENT,
                concat!("chaperone-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let body = match body {
            Some((kind, b)) => {
                req = req.header(header::CONTENT_TYPE, kind);
                b
            }
            None => Bytes::new(),
        };
        let req = req
            .body(http_body_util::Full::new(body))
            .map_err(|e| Failure::Usage(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// A request whose answer is `{"data": …}`: the data, or the failure
    /// the status and `{"errors": …}` say.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        json_body: Option<Vec<u8>>,
    ) -> Result<Value, Failure> {
        let resp = self.send(method, path_and_query, json_body).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(status_failure(status, &v, &body));
        }
        Ok(v.get("data").cloned().unwrap_or(v))
    }
}

/// The failure for an error answer, with the API's detail when it has one.
fn status_failure(status: StatusCode, v: &Value, body: &[u8]) -> Failure {
    let detail = v
        .pointer("/errors/detail")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    Failure::Status { status, detail }
}

/// Runs `chaperone client …`; returns the exit code.
pub fn run(args: ClientArgs) -> u8 {
    let Some(rt) = crate::cli::runtime() else {
        return 1;
    };
    match rt.block_on(command(&args)) {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("error: {f}");
            f.code()
        }
    }
}

async fn command(args: &ClientArgs) -> Result<(), Failure> {
    let client = Client::new(args)?;
    let json = args.json;
    match &args.command {
        ClientCommand::List => {
            let d = client.call(Method::GET, "/procs", None).await?;
            let procs = d.get("procs").cloned().unwrap_or(Value::Null);
            print_out(json, &procs, || table(&procs))
        }
        ClientCommand::Show { id } => {
            let d = client
                .call(Method::GET, &format!("/procs/{}", segment(id)), None)
                .await?;
            let res = d.pointer(&format!("/procs/{}", pointer_escape(id)));
            let res = res.cloned().unwrap_or(Value::Null);
            print_out(json, &res, || summary(id, &res))
        }
        ClientCommand::Start { spec } => {
            let body = if spec.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                    .map_err(|e| Failure::Usage(format!("reading the spec: {e}")))?;
                b
            } else {
                std::fs::read(spec)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", spec.display())))?
            };
            let ids = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("specs")?
                        .as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>())
                })
                .unwrap_or_default();
            let d = client.call(Method::POST, "/procs", Some(body)).await?;
            print_out(json, &d, || {
                ids.iter().map(|i| format!("started {i}\n")).collect()
            })
        }
        ClientCommand::Signal { id, signal } => {
            let path = format!("/procs/{}/signals/{}", segment(id), segment(signal));
            let d = client.call(Method::POST, &path, None).await?;
            print_out(json, &d, || format!("sent {signal} to {id}\n"))
        }
        ClientCommand::Delete { id } => {
            let d = client
                .call(Method::DELETE, &format!("/procs/{}", segment(id)), None)
                .await?;
            print_out(json, &d, || format!("deleted {id}\n"))
        }
        ClientCommand::Wait { id, timeout } => wait(&client, json, id, *timeout).await,
        ClientCommand::Shutdown { policy, grace } => {
            let mut path = format!("/shutdown?policy={}", segment(policy));
            if let Some(g) = grace {
                path.push_str(&format!("&grace={g}"));
            }
            let d = client.call(Method::POST, &path, None).await?;
            print_out(json, &d, || {
                format!(
                    "shutdown state: {}\n",
                    d.get("shutdown_state")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                )
            })
        }
        ClientCommand::Agent => {
            let d = client.call(Method::GET, "/agent", None).await?;
            let a = d.get("agent").cloned().unwrap_or(Value::Null);
            print_out(json, &a, || pretty(&a))
        }
        ClientCommand::Output {
            id,
            fd,
            start,
            stop,
            tail,
            follow,
            encoding,
        } => {
            let range = Range {
                start: *start,
                stop: *stop,
                tail: *tail,
            };
            output(&client, id, fd, range, *follow, encoding.as_deref()).await
        }
    }
}

/// Escapes a JSON pointer token.
fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Prints `v` as JSON, or the human form `human` makes.
fn print_out(json: bool, v: &Value, human: impl FnOnce() -> String) -> Result<(), Failure> {
    let text = if json {
        let mut t = serde_json::to_string_pretty(v).unwrap_or_default();
        t.push('\n');
        t
    } else {
        human()
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(Failure::Stdout)
}

fn pretty(v: &Value) -> String {
    let mut t = serde_json::to_string_pretty(v).unwrap_or_default();
    t.push('\n');
    t
}

/// How a process ended, in a few characters: `0`, `1`, `SIGKILL`, or empty.
fn exit_of(r: &Value) -> String {
    let s = &r["status"];
    if let Some(c) = s["exit_code"].as_i64() {
        return c.to_string();
    }
    s["signal"].as_str().map(str::to_string).unwrap_or_default()
}

/// A table of processes.
pub fn table(procs: &Value) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "STATE".into(),
        "PID".into(),
        "EXIT".into(),
        "ELAPSED".into(),
        "OUTPUT".into(),
    ]];
    if let Some(m) = procs.as_object() {
        for (id, r) in m {
            let out: Vec<String> = r["fds"]
                .as_object()
                .map(|fds| {
                    fds.iter()
                        .filter_map(|(n, f)| {
                            let len = f.get("length")?.as_u64().or_else(|| {
                                f.get("text")
                                    .and_then(Value::as_str)
                                    .map(|t| t.len() as u64)
                            })?;
                            Some(format!("{n}={len}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            rows.push([
                id.clone(),
                r["state"].as_str().unwrap_or("?").to_string(),
                r["pid"].as_i64().map(|p| p.to_string()).unwrap_or_default(),
                exit_of(r),
                r["times"]["elapsed"]
                    .as_f64()
                    .map(|e| format!("{e:.3}s"))
                    .unwrap_or_default(),
                out.join(" "),
            ]);
        }
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut t = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        t.push_str(line.join("  ").trim_end());
        t.push('\n');
    }
    t
}

/// One process's result, readable.
fn summary(id: &str, r: &Value) -> String {
    let mut t = format!("{id}: {}\n", r["state"].as_str().unwrap_or("?"));
    let mut line = |k: &str, v: String| {
        if !v.is_empty() {
            t.push_str(&format!("  {k:<8} {v}\n"));
        }
    };
    line(
        "pid",
        r["pid"].as_i64().map(|p| p.to_string()).unwrap_or_default(),
    );
    line("exit", exit_of(r));
    line(
        "start",
        r["times"]["start"].as_str().unwrap_or("").to_string(),
    );
    line(
        "stop",
        r["times"]["stop"].as_str().unwrap_or("").to_string(),
    );
    line(
        "elapsed",
        r["times"]["elapsed"]
            .as_f64()
            .map(|e| format!("{e:.3}s"))
            .unwrap_or_default(),
    );
    if let Some(ru) = r["rusage"].as_object() {
        let f = |k: &str| ru.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        line(
            "cpu",
            format!("{:.3}s user, {:.3}s system", f("utime"), f("stime")),
        );
        line("max rss", format!("{:.1} MiB", f("maxrss") / 1048576.0));
    }
    if let Some(errs) = r["errors"].as_array() {
        for e in errs {
            line("error", e.as_str().unwrap_or("").to_string());
        }
    }
    if let Some(fds) = r["fds"].as_object() {
        for (n, f) in fds {
            let len = f.get("length").and_then(Value::as_u64).or_else(|| {
                f.get("text")
                    .and_then(Value::as_str)
                    .map(|s| s.len() as u64)
            });
            if let Some(len) = len {
                line(n, format!("{len} bytes"));
            }
        }
    }
    t
}

/// `wait ID`: long-polls `GET /procs/ID?wait=` until the process has ended.
async fn wait(client: &Client, json: bool, id: &str, timeout: Option<f64>) -> Result<(), Failure> {
    if let Some(t) = timeout.filter(|t| !(t.is_finite() && *t >= 0.0)) {
        return Err(Failure::Usage(format!(
            "--timeout {t}: not a number of seconds"
        )));
    }
    let deadline =
        timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t.min(1e9)));
    // An agent that does not long-poll (Procstar ignores `wait=`) answers at
    // once: then the client polls, backing off from 50 ms to 2 s, rather
    // than ask again and again as fast as it is answered.
    let mut pause = Duration::from_millis(50);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let step = left.map_or(60.0, |l| l.as_secs_f64().min(60.0));
        let path = format!("/procs/{}?wait={step}", segment(id));
        let asked = tokio::time::Instant::now();
        let d = client.call(Method::GET, &path, None).await?;
        let answered_at_once = asked.elapsed().as_secs_f64() < step / 2.0;
        let r = d
            .pointer(&format!("/procs/{}", pointer_escape(id)))
            .cloned()
            .unwrap_or(Value::Null);
        // Ended: it has a stop time (an exit, or a start that failed). An
        // "error" state alone is not an end: a running process whose kept
        // file failed is one.
        if r.pointer("/times/stop").is_some_and(|s| !s.is_null()) {
            print_out(json, &r, || summary(id, &r))?;
            let code = r.pointer("/status/exit_code").and_then(Value::as_i64);
            return match code {
                Some(0) => Ok(()),
                _ => Err(Failure::ProcFailed(format!(
                    "{id} ended: {}",
                    match exit_of(&r) {
                        e if e.is_empty() => r["state"].as_str().unwrap_or("?").to_string(),
                        e => format!("exit {e}"),
                    }
                ))),
            };
        }
        if left.is_some_and(|l| l.is_zero()) {
            return Err(Failure::TimedOut(id.to_string()));
        }
        if answered_at_once {
            let left = deadline.map_or(pause, |d| {
                d.saturating_duration_since(tokio::time::Instant::now())
            });
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        } else {
            pause = Duration::from_millis(50);
        }
    }
}

/// The bytes `output` asks for.
#[derive(Clone, Copy, Debug, Default)]
struct Range {
    start: Option<u64>,
    stop: Option<u64>,
    tail: Option<u64>,
}

/// How long `output --follow` goes on trying to resume after the agent
/// dropped the connection.
const RESUME_FOR: Duration = Duration::from_secs(60);

/// `output ID [FD]`: streams the bytes to standard output. With `--follow`,
/// one streamed request that the agent ends when the capture can grow no
/// more. A dropped connection, or a body the agent cut off because a
/// head/tail capture dropped bytes before they were sent, is resumed from the
/// byte reached, so what is written is exact; every part of the range the
/// capture dropped is named on standard error (`X-Chaperone-Dropped`).
async fn output(
    client: &Client,
    id: &str,
    fd: &str,
    range: Range,
    follow: bool,
    encoding: Option<&str>,
) -> Result<(), Failure> {
    let base = format!("/procs/{}/output/{}/data", segment(id), segment(fd));
    let resumable = encoding.is_none_or(|e| e == "raw");
    let mut at = range.start;
    if let Some(n) = range.tail {
        at = Some(probe_length(client, &base).await?.saturating_sub(n));
    }
    let mut dropped_since: Option<tokio::time::Instant> = None;
    // Bodies cut off in a row with no progress: a capture whose tail
    // outruns every request is not chased for ever.
    let mut fruitless = 0;
    // A read without --follow ends where its first answer's range did, even
    // when it has to ask again: it does not chase a growing capture.
    let mut stop = range.stop;
    let mut cut = false;
    let mut out = std::io::stdout().lock();
    loop {
        let mut query = Vec::new();
        if let Some(s) = at {
            query.push(format!("start={s}"));
        }
        if let Some(s) = stop {
            query.push(format!("stop={s}"));
        }
        if follow {
            query.push("follow=true".into());
        }
        if let Some(e) = encoding {
            query.push(format!("encoding={}", segment(e)));
        }
        let path = if query.is_empty() {
            base.clone()
        } else {
            format!("{base}?{}", query.join("&"))
        };
        let resp = match client.send(Method::GET, &path, None).await {
            Ok(r) => r,
            // The agent closed the connection before its answer came: a
            // body it cut at its first step can take the answer's head with
            // it. Asked again, from where this got to (at most as often as
            // bodies may be cut with nothing written).
            Err(Failure::Connect { err, .. })
                if resumable
                    && err.contains("connection closed before message completed")
                    && fruitless < MAX_FRUITLESS =>
            {
                fruitless += 1;
                cut = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            // After a cut, the connection it came on may be closing too.
            Err(e @ Failure::Connect { .. }) if (follow || cut) && resumable && at.is_some() => {
                if dropped_since
                    .get_or_insert_with(tokio::time::Instant::now)
                    .elapsed()
                    > RESUME_FOR
                {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        dropped_since = None;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(status_failure(status, &v, &body));
        }
        if !follow && stop.is_none() {
            stop = resp
                .headers()
                .get("x-chaperone-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        }
        // Where the body's bytes are in the capture: from the range's start,
        // past the part it says was dropped once it gets there.
        let mut pos = Position::new(at.unwrap_or(0), dropped_header(resp.headers()));
        let began = at;
        if let Some(d) = &pos.gap {
            eprintln!(
                "chaperone client: {id} {fd}: bytes {}-{} were dropped by the capture's \
                 head/tail limits; not written",
                d.start, d.end
            );
        }
        let mut body = resp.into_body();
        let mut ended = true;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(data) = f.into_data() {
                        out.write_all(&data).map_err(Failure::Stdout)?;
                        out.flush().map_err(Failure::Stdout)?;
                        pos.advance(data.len() as u64);
                        if resumable {
                            at = Some(pos.next());
                        }
                    }
                }
                Err(e) => {
                    // Resumed from the next byte: bytes written, or a
                    // dropped part stepped over, are progress.
                    let next = pos.next();
                    fruitless = if Some(next) != began {
                        0
                    } else {
                        fruitless + 1
                    };
                    if !resumable || fruitless > MAX_FRUITLESS {
                        return Err(client.unreachable(e));
                    }
                    at = Some(next);
                    cut = true;
                    ended = false;
                    break;
                }
            }
        }
        if ended || stop.is_some_and(|s| at.is_some_and(|a| a >= s)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many bodies in a row may be cut off with nothing written before
/// `output` gives up.
const MAX_FRUITLESS: u32 = 20;

/// `X-Chaperone-Dropped: START-STOP`, the part of a response's range its
/// capture dropped.
fn dropped_header(h: &hyper::HeaderMap) -> Option<std::ops::Range<u64>> {
    let v = h.get("x-chaperone-dropped")?.to_str().ok()?;
    let (a, b) = v.split_once('-')?;
    Some(a.trim().parse().ok()?..b.trim().parse().ok()?)
}

/// The capture offset of a response body's next byte: it starts at the
/// range's start and skips the dropped part once it reaches it.
struct Position {
    at: u64,
    gap: Option<std::ops::Range<u64>>,
}

impl Position {
    fn new(start: u64, gap: Option<std::ops::Range<u64>>) -> Position {
        let at = match &gap {
            Some(g) if g.contains(&start) => g.end,
            _ => start,
        };
        Position { at, gap }
    }

    /// `n` more bytes of the body: those before the gap, then the rest after
    /// it (never inside it, as it never starts there).
    fn advance(&mut self, n: u64) {
        let end = self.at + n;
        self.at = match &self.gap {
            Some(g) if self.at < g.start && end >= g.start => g.end + (end - g.start),
            _ => end,
        };
    }

    fn next(&self) -> u64 {
        self.at
    }
}

/// A capture's length now (`X-Chaperone-Length`, else the body's length).
async fn probe_length(client: &Client, base: &str) -> Result<u64, Failure> {
    let resp = client
        .send(Method::GET, &format!("{base}?start=0&stop=0"), None)
        .await?;
    let status = resp.status();
    let len = resp
        .headers()
        .get("x-chaperone-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| client.unreachable(e))?
        .to_bytes();
    if !status.is_success() {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        return Err(status_failure(status, &v, &body));
    }
    match len {
        Some(l) => Ok(l),
        // Not chaperone: read the whole capture to learn its length.
        None => {
            let resp = client.send(Method::GET, base, None).await?;
            let b = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| client.unreachable(e))?
                .to_bytes();
            Ok(b.len() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = |tls, host: &str, port, prefix: &str| Target {
            tls,
            host: host.into(),
            port,
            prefix: prefix.into(),
        };
        assert_eq!(
            parse_url("http://127.0.0.1:3000"),
            Ok(t(false, "127.0.0.1", 3000, ""))
        );
        assert_eq!(
            parse_url("https://agent.example/"),
            Ok(t(true, "agent.example", 443, ""))
        );
        assert_eq!(parse_url("http://h/api/"), Ok(t(false, "h", 80, "/api")));
        assert_eq!(
            parse_url("http://[::1]:8080/x"),
            Ok(t(false, "::1", 8080, "/x"))
        );
        assert!(parse_url("ftp://h").unwrap_err().contains("http://"));
        assert!(
            parse_url("http://h:99999")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(parse_url("http://:80").unwrap_err().contains("no host"));
        assert!(parse_url("http://[::1").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("p-1_x.y~"), "p-1_x.y~");
        assert_eq!(segment("a b/c?d"), "a%20b%2Fc%3Fd");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn exit_codes_name_the_failure() {
        let st = |s| Failure::Status {
            status: s,
            detail: String::new(),
        };
        assert_eq!(st(StatusCode::NOT_FOUND).code(), 4);
        assert_eq!(st(StatusCode::BAD_REQUEST).code(), 5);
        assert_eq!(st(StatusCode::UNAUTHORIZED).code(), 6);
        assert_eq!(st(StatusCode::INTERNAL_SERVER_ERROR).code(), 7);
        assert_eq!(Failure::TimedOut("p".into()).code(), 8);
        assert_eq!(Failure::ProcFailed("p".into()).code(), 9);
    }

    #[test]
    fn tables_line_up() {
        let procs = serde_json::json!({
            "a": {"state": "terminated", "pid": 12, "status": {"exit_code": 0},
                  "times": {"elapsed": 0.5}, "fds": {"stdout": {"length": 3}}},
            "long-id": {"state": "running", "pid": 7, "status": null,
                        "times": {"elapsed": 12.25}, "fds": {}},
        });
        let t = table(&procs);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID       STATE       PID  EXIT  ELAPSED  OUTPUT");
        assert_eq!(
            lines[1],
            "a        terminated  12   0     0.500s   stdout=3"
        );
        assert_eq!(lines[2], "long-id  running     7          12.250s");
    }

    #[test]
    fn a_body_s_position_skips_the_dropped_part() {
        // Bytes 0..16 held, 16..84 dropped, from 10: six bytes, then 84 on.
        let mut p = Position::new(10, Some(16..84));
        p.advance(4);
        assert_eq!(p.next(), 14);
        p.advance(2);
        assert_eq!(p.next(), 84);
        p.advance(10);
        assert_eq!(p.next(), 94);
        // One piece across the gap.
        let mut p = Position::new(10, Some(16..84));
        p.advance(20);
        assert_eq!(p.next(), 98);
        // Starting inside it: at its end at once.
        assert_eq!(Position::new(20, Some(20..84)).next(), 84);
        assert_eq!(Position::new(7, None).next(), 7);
    }
}
