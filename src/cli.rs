//! The command line: Procstar's flags, modes and exit codes.
//!
//! `chaperone [MODES] [OPTIONS] [SPEC|-]` starts the spec's processes (if one
//! is given), then runs every mode asked for on one tokio current-thread
//! runtime: one-shot (`--print`, `--output PATH`, `--exit`: results once no
//! process runs), `--wait` (until every process has been deleted), `--agent`
//! (the Procstar WebSocket agent, see [`crate::proto::ws`]) and `--stdio`
//! (the same protocol as JSON lines, see [`crate::proto::stdio`]).
//!
//! Exit codes: 0 on success, 1 when the agent gave up connecting, 2 when the
//! spec cannot be loaded or no agent host is known, 65 (`EX_DATAERR`) when the
//! request cannot be started or no mode is chosen.
//!
//! Signals, in every mode: SIGTERM or SIGINT end the processes by Procstar's
//! terminate policy (SIGTERM, then SIGKILL after 60 s), SIGQUIT by SIGKILL,
//! SIGUSR1 makes the agent idle (no new starts; done once every process has
//! been deleted). One-shot modes still write the results.

use crate::proto::ws::{self, WsConfig};
use crate::supervisor::{Handle, ShutdownPolicy};
use crate::{Agent, Config, spec};
use clap::Parser;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Exit code for a spec that cannot be loaded.
pub const EXIT_LOAD: u8 = 2;
/// Exit code for a request that cannot be started (`EX_DATAERR`).
pub const EXIT_START: u8 = 65;
/// Exit code when the agent gave up connecting to its server.
pub const EXIT_GAVE_UP: u8 = 1;

/// Command-line flags (Procstar's, plus chaperone's capture bounds).
#[derive(Debug, Parser)]
#[command(
    name = "chaperone",
    version,
    about = "Runs processes from JSON specs and reports on them",
    args_override_self = true
)]
pub struct Args {
    /// Spec file, or `-` for standard input.
    pub input: Option<PathBuf>,
    /// Once no process is running and every `compress` is done, print the results as JSON and exit.
    #[arg(short, long)]
    pub print: bool,
    /// Once no process is running and every `compress` is done, write the results as JSON to PATH and exit.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Exit once no process is running and every `compress` is done.
    #[arg(short = 'x', long)]
    pub exit: bool,
    /// Exit once every process has been deleted. With `--agent`, first wait
    /// for a process to be started, up to `--wait-timeout`.
    #[arg(short, long)]
    pub wait: bool,
    /// With `--wait --agent`: how long to wait for the first process (seconds).
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval, default_value = "600")]
    pub wait_timeout: Duration,
    /// Run INPUT (a program.json, or a spec with top-level `callback` and
    /// `config`; `-` for standard input) and push its output, state changes
    /// and final result to the callback's URL; exits once all is delivered.
    #[arg(long, value_name = "INPUT")]
    pub callback: Option<PathBuf>,
    /// Keep the spec, each process's result and every capture in DIR, so a
    /// reader can reattach (`chaperone spool DIR`); exits once every process
    /// is done, as `--exit` (with `--print`, printing the results too).
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// With `--spool`: once the processes have started, print their
    /// running-state results, leave the session (an SSH connection, a
    /// terminal) and carry on in the background.
    #[arg(long, requires = "spool")]
    pub detach: bool,
    /// Serve the Procstar agent protocol over WebSocket: connect to
    /// `wss://AGENT_HOST:AGENT_PORT/` and take requests from that server.
    #[arg(short, long)]
    pub agent: bool,
    /// The agent server's host (default: `PROCSTAR_AGENT_HOST`).
    #[arg(long, value_name = "HOST")]
    pub agent_host: Option<String>,
    /// The agent server's port.
    #[arg(long, value_name = "PORT", default_value_t = 59789)]
    pub agent_port: u16,
    /// The agent's group.
    #[arg(long, value_name = "ID", default_value = "default")]
    pub group_id: String,
    /// The connection id (default: a random UUID).
    #[arg(long, value_name = "ID")]
    pub conn_id: Option<String>,
    /// First wait before reconnecting (seconds).
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval, default_value = "1")]
    pub connect_interval_start: Duration,
    /// Factor between successive reconnect waits.
    #[arg(long, value_name = "FACTOR", default_value_t = 2.0)]
    pub connect_interval_mult: f64,
    /// Longest wait before reconnecting (seconds).
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval, default_value = "60")]
    pub connect_interval_max: Duration,
    /// Failed connections in a row before the agent exits (code 1).
    #[arg(long, value_name = "N", default_value_t = u64::MAX)]
    pub connect_count_max: u64,
    /// Reconnect when nothing has come from the server for this long
    /// (seconds, at least 1; the agent pings at half of it, or every 20 s).
    #[arg(long, value_name = "SECONDS", value_parser = parse_read_timeout, default_value = "60")]
    pub agent_read_timeout: Duration,
    /// Serve Procstar's HTTP API (see docs/http.md). A client has 30 s to
    /// send a request's head and 60 s its body (CHAPERONE_SERVE_HEADER_TIMEOUT
    /// and CHAPERONE_SERVE_BODY_TIMEOUT, in seconds, change them).
    #[arg(short, long)]
    pub serve: bool,
    /// The HTTP API's port.
    #[arg(long, value_name = "PORT", default_value_t = 3000)]
    pub serve_port: u16,
    /// The HTTP API's address. Anything but loopback also needs
    /// `--serve-token` (or `CHAPERONE_SERVE_TOKEN`), or `--serve-insecure`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub serve_host: String,
    /// A bearer token every HTTP request must carry (default:
    /// `CHAPERONE_SERVE_TOKEN`).
    #[arg(long, value_name = "TOKEN")]
    pub serve_token: Option<String>,
    /// Serve a non-loopback address without a token.
    #[arg(long)]
    pub serve_insecure: bool,
    /// Serve the HTTP API over TLS with this PEM certificate chain (needs
    /// `--serve-key`).
    #[arg(long, value_name = "PEM", requires = "serve_key")]
    pub serve_cert: Option<PathBuf>,
    /// The PEM private key of `--serve-cert`.
    #[arg(long, value_name = "PEM", requires = "serve_cert")]
    pub serve_key: Option<PathBuf>,
    /// Serve the agent protocol as JSON lines on standard input and output;
    /// end of input shuts the agent down (terminate policy).
    #[arg(long)]
    pub stdio: bool,
    /// Put each child's environment in its result (`env`), unless its spec's
    /// `env.report` says otherwise. Off by default: environments can hold
    /// credentials, and results are sent to and stored by the server.
    #[arg(long)]
    pub report_env: bool,
    /// Only this exact executable may be run; any other process becomes an
    /// error result.
    #[arg(long, value_name = "PATH")]
    pub restrict_exe: Option<String>,
    /// Log level: trace, debug, info, warn or error.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// The largest spec read from a file or standard input (K, M, G
    /// suffixes allowed); a larger one is refused before anything starts.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    pub max_spec_size: usize,
    /// Default head size of memory captures (bytes; K, M, G suffixes allowed).
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub capture_head: usize,
    /// Default tail size of memory captures (bytes; K, M, G suffixes allowed).
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    pub capture_tail: usize,
    /// Total bytes all memory captures may hold together (K, M, G suffixes
    /// allowed). Past it, bytes are dropped from the middle of the largest
    /// captures first. Default: no limit beyond each capture's head and tail.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub output_limit: Option<usize>,
    /// Signal children get when the agent dies, unless a spec sets `pdeath_sig`
    /// (a name such as SIGTERM, or a number). Default: none; children outlive it.
    #[arg(long, value_name = "SIGNAL", value_parser = parse_signal_arg)]
    pub pdeath_sig: Option<i32>,
    /// Count perf events (task clock, page faults, …; cycles etc. where the
    /// machine has a PMU) for every spec that has no `perf` field.
    #[arg(long)]
    pub perf: bool,
    /// Seconds between samples of running processes' `/proc/<pid>/stat` and
    /// `statm` (fractions allowed); 0 samples only when a result is requested.
    #[arg(long, value_name = "SECONDS", value_parser = parse_interval, default_value = "1")]
    pub sample_interval: std::time::Duration,
    /// The most processes running at once; the rest wait in a queue, in spec
    /// order, and start as others finish. Default: a quarter of the soft fd
    /// limit (`ulimit -n`), past a reserve of 256.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_running: Option<u64>,
    /// What the reactor runs on: io_uring, epoll, or auto (io_uring where it
    /// can be set up, else epoll, as in a container whose seccomp profile
    /// denies io_uring). Default: `CHAPERONE_BACKEND`, else auto.
    #[arg(long, value_name = "auto|io_uring|epoll")]
    pub backend: Option<crate::ring::BackendChoice>,
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("not a usable interval: {s:?} (must be 0 or more seconds)"))
}

/// `--agent-read-timeout`: at least a second. Shorter, an idle connection
/// (answering the agent's pings, nothing else) would be redialled over and
/// over.
fn parse_read_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_interval(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("too short: {s:?} (at least 1 second)"));
    }
    Ok(d)
}

fn parse_signal_arg(s: &str) -> Result<i32, String> {
    crate::signal::parse_signal(s).ok_or_else(|| format!("unknown signal: {s:?}"))
}

/// Parses a byte size such as `4096`, `64K`, `64M`, `1G` or `1MiB`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: usize = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (expected e.g. 4096, 64K, 1M)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {s:?} (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

/// Raises the soft fd limit to the hard one, children keeping the soft
/// limit given (see `sys::fd::raise_fd_limit`). For `main`, before anything
/// else.
pub fn raise_fd_limit() {
    crate::sys::fd::raise_fd_limit();
}

/// The least soft `RLIMIT_NOFILE` the front ends start under: the runtime,
/// the agent and one process with its pipes take about 16.
const MIN_FD_LIMIT: u64 = 32;

/// The front ends' tokio runtime: one thread, timers and I/O; `None` (said
/// on stderr) if it cannot start.
pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    // Below this, tokio's signal handling can panic for want of a socket
    // pair (a fd limit of 9 to 11 did), and no process could start anyway.
    if let Some(limit) = crate::sys::fd::fd_limit().filter(|&n| n < MIN_FD_LIMIT) {
        eprintln!(
            "error: cannot start the runtime: the fd limit (RLIMIT_NOFILE, ulimit -n) is \
             {limit}; chaperone needs at least {MIN_FD_LIMIT}"
        );
        return None;
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

/// Runs the CLI; returns the process exit code, for the process to exit with
/// (the agent's table is left to that exit, see [`Agent::close_for_exit`]).
pub fn run(args: Args) -> u8 {
    init_logging(&args.log_level);
    if !(args.print
        || args.exit
        || args.output.is_some()
        || args.wait
        || args.agent
        || args.stdio
        || args.serve
        || args.spool.is_some()
        || args.callback.is_some())
    {
        eprintln!(
            "error: no mode given: use --print, --output PATH, --exit, --wait, --agent, \
             --serve, --stdio, --spool DIR or --callback INPUT"
        );
        return EXIT_START;
    }
    if args.stdio && args.print {
        // Both would write to standard output: the results object would land
        // in the protocol's stream.
        eprintln!("error: --stdio and --print both write to standard output: use --output PATH");
        return EXIT_START;
    }
    if args.exit && args.wait {
        tracing::warn!("--exit and --wait both given: exiting once no process runs");
    }
    let mut callback = None;
    let (input, raw) = match (&args.callback, &args.input) {
        (Some(_), Some(_)) => {
            eprintln!("error: --callback INPUT holds the spec: give no other");
            return EXIT_START;
        }
        (Some(path), None) => {
            let raw = match read_spec(path, args.max_spec_size) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let dir =
                std::env::temp_dir().join(format!("chaperone-callback-{}", std::process::id()));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("error: {}: {e}", dir.display());
                return EXIT_LOAD;
            }
            match crate::callback::parse(&raw, &dir) {
                Ok((cb, input)) => {
                    callback = Some((cb, dir));
                    (Some(input), raw)
                }
                Err(e) => {
                    eprintln!("error: --callback {}: {e}", path.display());
                    return EXIT_LOAD;
                }
            }
        }
        (None, path) => match path
            .as_ref()
            .map(|p| load(p, args.max_spec_size))
            .transpose()
        {
            Ok(Some((i, raw))) => (Some(i), raw),
            Ok(None) => (None, Vec::new()),
            Err(code) => return code,
        },
    };
    // Where the results go must be writable before anything runs, so that
    // no run's results are lost to a path that cannot be written. Not a FIFO
    // (or another special file): opening it here could block, or tell its
    // reader that the results have ended before they were written.
    let special = |p: &PathBuf| std::fs::metadata(p).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if let Some(out) = args.output.as_ref().filter(|o| !special(o)) {
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(out)
        {
            eprintln!("error: cannot write --output {}: {e}", out.display());
            return EXIT_LOAD;
        }
    }
    if input.is_none() && !(args.agent || args.stdio || args.serve) {
        eprintln!("error: no spec given (a file path, or - for standard input)");
        return EXIT_START;
    }
    if args.spool.is_some() && input.is_none() {
        eprintln!("error: --spool needs a spec (a file path, or - for standard input)");
        return EXIT_START;
    }
    // A spec that cannot start makes no spool: the directory would read as
    // an agent that died, and could not be used again.
    if let (Some(_), Some(input)) = (&args.spool, &input) {
        let checked = crate::spec::validate(input)
            .map_err(|e| e.to_string())
            .and_then(|()| crate::spool::check_ids(input));
        if let Err(e) = checked {
            eprintln!("error: {e}");
            return EXIT_START;
        }
    }
    // The spool is made and locked before a detach, so that an error (the
    // directory is taken) reaches the caller.
    let (spool, input) = match (&args.spool, input) {
        (Some(dir), Some(input)) => match crate::spool::Spool::create(dir, &raw) {
            Ok(s) => {
                let input = s.translate(input);
                (Some(std::sync::Arc::new(s)), Some(input))
            }
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_LOAD;
            }
        },
        (_, input) => (None, input),
    };
    let mut detached = None;
    if args.detach {
        let log = spool.as_ref().and_then(|s| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(s.dir().join(crate::spool::LOG))
                .ok()
        });
        match crate::sys::daemon::detach(log.as_ref()) {
            Ok(crate::sys::daemon::Detached::Parent(p)) => return detach_parent(p),
            Ok(crate::sys::daemon::Detached::Child(c)) => {
                if let Some(s) = &spool {
                    if let Err(e) = s.set_pid(std::process::id() as i32) {
                        eprintln!("error: {e}");
                    }
                }
                detached = Some(c);
            }
            Err(e) => {
                eprintln!("error: --detach: {e}");
                return EXIT_START;
            }
        }
    }
    let ws = if args.agent {
        match ws_config(&args) {
            Ok(c) => Some(c),
            Err(code) => return code,
        }
    } else {
        None
    };
    let mut config = Config {
        capture_head: args.capture_head,
        capture_tail: args.capture_tail,
        pdeath_sig: args.pdeath_sig,
        sample_interval: Some(args.sample_interval),
        perf: args.perf,
        output_limit: args.output_limit.map(|n| n as u64),
        max_running: args
            .max_running
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        restrict_exe: args.restrict_exe.clone(),
        report_env: args.report_env,
        own_stdin_stdout: args.stdio,
        ..Config::default()
    };
    if let Some(b) = args.backend {
        config.backend = b;
    }
    let agent = match Agent::new(config) {
        Ok(a) => a,
        Err(e) => {
            if let Some(c) = detached.as_mut() {
                c.failed(&e.to_string());
            }
            eprintln!("error: {e}");
            return EXIT_START;
        }
    };
    let Some(rt) = runtime() else {
        return EXIT_START;
    };
    let serve = if args.serve {
        match rt.block_on(listen(&args)) {
            Ok(s) => Some(s),
            Err(code) => return code,
        }
    } else {
        None
    };
    let spooled = spool.map(|s| (s, detached));
    let (cb, cb_dir) = callback.map_or((None, None), |(c, d)| (Some(c), Some(d)));
    let code = rt.block_on(modes(&args, agent.handle(), input, ws, serve, spooled, cb));
    if let Some(d) = cb_dir {
        let _ = std::fs::remove_dir_all(d);
    }
    // Nothing may keep the agent from dropping: whatever still runs (the
    // agent gave up on its server, stdout went away under --stdio) is killed.
    // In the other endings nothing runs any more and this returns at once.
    rt.block_on(async {
        let h = agent.handle();
        // From the overview, not the results: those would copy or read
        // every attached capture.
        let live = h.overview(crate::supervisor::status::Select::Live).await;
        if live.rows.iter().any(|r| r.pid.is_some()) {
            h.shutdown(ShutdownPolicy::Kill).await;
            h.wait_done().await;
        }
    });
    // A blocking read of standard input (--stdio) cannot be cancelled: do
    // not wait for it.
    rt.shutdown_background();
    // The process exits next (`run` is the binary's): the agent finishes as
    // a drop would, but leaves its table to the exit.
    agent.close_for_exit();
    code
}

/// Reads and parses the spec at `path` (`-`: standard input); on failure, the
/// exit code.
fn load(path: &std::path::Path, max: usize) -> Result<(spec::Input, Vec<u8>), u8> {
    let raw = read_spec(path, max)?;
    let input = spec::parse_input(&raw).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_LOAD
    })?;
    Ok((input, raw))
}

/// Reads the spec's bytes at `path` (`-`: standard input), at most `max`.
fn read_spec(path: &std::path::Path, max: usize) -> Result<Vec<u8>, u8> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let read = if path.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut raw)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut raw))
    };
    read.map_err(|e| {
        eprintln!("error: cannot read spec {}: {e}", path.display());
        EXIT_LOAD
    })?;
    if raw.len() > max {
        eprintln!(
            "error: spec {} is larger than --max-spec-size ({max} bytes)",
            path.display()
        );
        return Err(EXIT_LOAD);
    }
    Ok(raw)
}

/// The WebSocket agent's settings from flags and `PROCSTAR_AGENT_*`; on
/// failure, the exit code.
fn ws_config(args: &Args) -> Result<(WsConfig, std::sync::Arc<rustls::ClientConfig>), u8> {
    let Some(host) = args
        .agent_host
        .clone()
        .or_else(|| std::env::var("PROCSTAR_AGENT_HOST").ok())
    else {
        eprintln!("error: no agent host: use --agent-host or set PROCSTAR_AGENT_HOST");
        return Err(EXIT_LOAD);
    };
    let cert = std::env::var_os("PROCSTAR_AGENT_CERT").map(PathBuf::from);
    let tls = ws::tls_config(cert.as_deref()).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_LOAD
    })?;
    if !(args.connect_interval_mult.is_finite() && args.connect_interval_mult >= 1.0) {
        eprintln!(
            "error: --connect-interval-mult must be at least 1, not {}",
            args.connect_interval_mult
        );
        return Err(EXIT_LOAD);
    }
    let conn_id = args.conn_id.clone().unwrap_or_else(uuid_v4);
    let link = ws::Link::new(&host, args.agent_port, &args.group_id, &conn_id);
    let config = WsConfig {
        host,
        port: args.agent_port,
        group_id: args.group_id.clone(),
        conn_id,
        interval_start: args.connect_interval_start.min(LONGEST),
        interval_mult: args.connect_interval_mult,
        interval_max: args.connect_interval_max.min(LONGEST),
        count_max: args.connect_count_max.max(1),
        read_timeout: args.agent_read_timeout.min(LONGEST),
        access_token: std::env::var("PROCSTAR_AGENT_TOKEN").unwrap_or_default(),
        cert,
        restricted_exe: args.restrict_exe.clone(),
        link,
    };
    Ok((config, tls))
}

/// The longest interval a flag may set (a year): longer ones are taken as
/// this, so that deadline arithmetic cannot overflow.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// What `--serve` serves with.
struct Serve {
    listener: tokio::net::TcpListener,
    token: Option<String>,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// `--serve`: the listening socket, the token and TLS; on failure, the exit
/// code.
async fn listen(args: &Args) -> Result<Serve, u8> {
    let tls = match (&args.serve_cert, &args.serve_key) {
        (Some(cert), Some(key)) => Some(crate::http::server_tls(cert, key).map_err(|e| {
            eprintln!("error: {e}");
            EXIT_LOAD
        })?),
        _ => None,
    };
    let token = args
        .serve_token
        .clone()
        .or_else(|| std::env::var("CHAPERONE_SERVE_TOKEN").ok())
        .filter(|t| !t.is_empty());
    let addr = (args.serve_host.as_str(), args.serve_port);
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        eprintln!(
            "error: cannot listen on {}:{}: {e}",
            args.serve_host, args.serve_port
        );
        EXIT_LOAD
    })?;
    let local = listener.local_addr().map_err(|e| {
        eprintln!("error: {e}");
        EXIT_LOAD
    })?;
    if !local.ip().is_loopback() && token.is_none() {
        if !args.serve_insecure {
            eprintln!(
                "error: --serve-host {} is reachable from other hosts: give --serve-token \
                 (or CHAPERONE_SERVE_TOKEN; TLS alone authenticates no one), or \
                 --serve-insecure to serve it without one",
                args.serve_host
            );
            return Err(EXIT_LOAD);
        }
        tracing::warn!("serving {local} to other hosts without a token (--serve-insecure)");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "serving the HTTP API on {scheme}://{local}/ (status page: {scheme}://{local}/ui/){}",
        if token.is_some() {
            " (token required)"
        } else {
            ""
        }
    );
    Ok(Serve {
        listener,
        token,
        tls,
    })
}

/// A random (version 4) UUID, for a connection id.
pub(crate) fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `--detach`, the side that was started: waits for the agent's word,
/// prints its running-state results and exits.
fn detach_parent(p: crate::sys::daemon::Parent) -> u8 {
    use crate::sys::daemon::Word;
    match p.wait() {
        Word::Ready(msg) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&msg).and_then(|()| out.flush());
            0
        }
        Word::Failed(msg) => {
            eprintln!("error: {}", String::from_utf8_lossy(&msg));
            EXIT_START
        }
        Word::Died(status) => {
            eprintln!(
                "error: the detached agent ended before its processes started (wait status {status})"
            );
            EXIT_START
        }
    }
}

/// `--spool`: writes the first results, starts the writer thread and, when
/// detached, tells the parent (with the running-state results) and leaves
/// the session's standard streams for `agent.log`.
fn start_spool(
    s: &std::sync::Arc<crate::spool::Spool>,
    handle: &Handle,
    args: &Args,
    detached: Option<crate::sys::daemon::Child>,
) -> Result<(), u8> {
    let events = handle.subscribe();
    let (results, _) = s.write_all(handle);
    if let Err(e) =
        crate::spool::start_writer(s.clone(), handle.clone(), events, args.sample_interval)
    {
        eprintln!("error: --spool: cannot start its writer: {e}");
        return Err(EXIT_START);
    }
    if let Some(mut c) = detached {
        let mut msg = serde_json::to_vec(&results).unwrap_or_default();
        msg.push(b'\n');
        if let Err(e) = c.ready(&msg) {
            tracing::warn!("--detach: {e}");
        }
    }
    Ok(())
}

/// A future that never ends unless `on`.
async fn when<T>(on: bool, fut: impl Future<Output = T>) -> T {
    if on {
        fut.await
    } else {
        std::future::pending().await
    }
}

/// Starts `input`, then runs the modes asked for until the first one ends;
/// returns the exit code.
async fn modes(
    args: &Args,
    handle: Handle,
    input: Option<spec::Input>,
    ws: Option<(WsConfig, std::sync::Arc<rustls::ClientConfig>)>,
    serve: Option<Serve>,
    spool: Option<(
        std::sync::Arc<crate::spool::Spool>,
        Option<crate::sys::daemon::Child>,
    )>,
    callback: Option<crate::callback::Callback>,
) -> u8 {
    // Subscribed before anything starts, so that no event is missed.
    let ws_events = ws.as_ref().map(|_| handle.subscribe());
    let stdio_events = args.stdio.then(|| handle.subscribe());
    let wait_events = args.wait.then(|| handle.subscribe());
    let had_input = input.is_some();
    tokio::spawn(shutdown_on_signals(handle.clone()));
    tokio::spawn(async {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        loop {
            every.tick().await;
            crate::sys::mem::trim_if_noted();
        }
    });
    let mut started = Vec::new();
    if let Some(input) = input {
        match handle.start(input).await {
            Ok(ids) => started = ids,
            Err(e) => {
                if let Some((_, Some(mut c))) = spool {
                    c.failed(&e.to_string());
                }
                eprintln!("error: {e}");
                return EXIT_START;
            }
        }
    }
    let spool = match spool {
        Some((s, detached)) => match start_spool(&s, &handle, args, detached) {
            Ok(()) => Some(s),
            Err(code) => return code,
        },
        None => None,
    };

    let one_shot = args.print || args.exit || args.output.is_some() || spool.is_some();
    let link = ws.as_ref().map(|(c, _)| c.link.clone());
    let serve_run = async {
        let Some(Serve {
            listener,
            token,
            tls,
        }) = serve
        else {
            return std::future::pending().await;
        };
        let options = crate::http::Options { token, tls, link };
        match crate::http::serve(listener, handle.clone(), options).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: the HTTP API stopped: {e}");
                1
            }
        }
    };
    let ws_run = async {
        match (ws, ws_events) {
            (Some((config, tls)), Some(events)) => {
                match ws::run(handle.clone(), events, config, tls).await {
                    ws::Outcome::Done => 0,
                    ws::Outcome::GaveUp => EXIT_GAVE_UP,
                }
            }
            _ => std::future::pending().await,
        }
    };
    let stdio_run = async {
        let Some(events) = stdio_events else {
            return std::future::pending().await;
        };
        let stdin = tokio::io::BufReader::with_capacity(1 << 16, tokio::io::stdin());
        match crate::proto::stdio::run(
            handle.clone(),
            events,
            stdin,
            tokio::io::stdout(),
            ShutdownPolicy::TERMINATE_GRACE,
        )
        .await
        {
            Ok(()) => 0,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            Err(e) => {
                eprintln!("error: writing to standard output: {e}");
                1
            }
        }
    };
    let wait_run = async {
        let Some(events) = wait_events else {
            return std::future::pending().await;
        };
        wait_idle(&handle, events, args.agent && !had_input, args.wait_timeout).await;
        if args.agent || args.stdio {
            // Let the front ends tell their peer (the last deletion, then
            // done): the idle policy is done at once with nothing left.
            handle.shutdown(ShutdownPolicy::Idle).await;
            return std::future::pending().await;
        }
        0
    };
    // Without a front end to tell, a shutdown is over once the processes
    // have ended and had a few seconds to be deleted.
    let done_run = async {
        handle.wait_done().await;
        let deadline = tokio::time::Instant::now() + ws::DELETE_GRACE;
        while !handle.proc_ids().await.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        0
    };
    let has_callback = callback.is_some();
    let callback_run = async {
        match callback {
            Some(cb) => crate::callback::run(handle.clone(), cb, started).await,
            None => std::future::pending().await,
        }
    };
    let control_run = async {
        let Some(s) = spool.clone() else {
            return std::future::pending().await;
        };
        if let Err(e) = crate::spool::serve_control(s, handle.clone()).await {
            tracing::warn!("spool: no control socket: {e}");
        }
        std::future::pending().await
    };
    let finish = async {
        handle.wait_all().await;
        // A spool a reader cannot read to its end (a full disk) is a failed
        // run, whatever the processes did: exit 1, saying why.
        let mut spooled = true;
        if let Some(s) = &spool {
            let (_, failed) = s.write_all(&handle);
            if failed > 0 {
                eprintln!(
                    "error: --spool {}: {failed} result file(s) could not be written (see above)",
                    s.dir().display()
                );
                spooled = false;
            }
            if let Err(e) = s.finish() {
                eprintln!("error: {e}");
                spooled = false;
            }
        }
        let code = write_results(args, &handle).await;
        if spooled {
            code
        } else {
            code.max(EXIT_GAVE_UP)
        }
    };
    // With both a callback and a one-shot ending (`--spool`, `--print`),
    // the run ends once the callback has delivered everything, then as a
    // one-shot run does: ending at the processes' end dropped the pushes
    // still queued, and exited 0.
    let callback_and_finish = async {
        match (has_callback, one_shot) {
            (true, true) => {
                let delivered = callback_run.await;
                finish.await.max(delivered)
            }
            (true, false) => callback_run.await,
            (false, true) => finish.await,
            (false, false) => std::future::pending().await,
        }
    };
    tokio::select! {
        code = callback_and_finish => code,
        code = control_run => code,
        code = ws_run => code,
        code = serve_run => code,
        code = stdio_run => code,
        code = wait_run => code,
        code = when(!one_shot && !args.agent && !args.stdio && !has_callback, done_run) => code,
    }
}

/// `--wait`: returns once no process is left (after a first one has been
/// started, if `first` and within `timeout`).
async fn wait_idle(
    handle: &Handle,
    mut events: crate::Subscription,
    mut first: bool,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !first && handle.proc_ids().await.is_empty() {
            return;
        }
        let next = if first {
            match tokio::time::timeout_at(deadline, events.event()).await {
                Ok(e) => e,
                Err(_) => {
                    tracing::warn!("--wait: no process started within {timeout:?}; exiting");
                    return;
                }
            }
        } else {
            events.event().await
        };
        match next {
            None => return,
            // After missed events, look at the table itself.
            Some(crate::Event::Started(_) | crate::Event::Missed(_)) => first = false,
            Some(_) => {}
        }
    }
}

/// Procstar's signals: SIGTERM and SIGINT terminate, SIGQUIT kills, SIGUSR1
/// idles; and SIGHUP terminates (the terminal or session that ran the agent
/// is gone: by default it would kill the agent and leave every child
/// running, unwatched, as Procstar does). The handlers are installed when
/// this is called (before any process starts); the future applies the
/// policies.
fn shutdown_on_signals(handle: Handle) -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::quit(), "SIGQUIT"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::hangup(), "SIGHUP"),
    ];
    let streams: Vec<_> = kinds
        .into_iter()
        .filter_map(|(k, name)| {
            signal(k)
                .map_err(|e| tracing::error!("cannot handle {name}: {e}"))
                .ok()
        })
        .collect();
    async move {
        let mut streams = streams;
        let [term, int, quit, usr1, hup] = &mut streams[..] else {
            return;
        };
        let terminate = ShutdownPolicy::Terminate {
            grace: ShutdownPolicy::TERMINATE_GRACE,
        };
        loop {
            let policy = tokio::select! {
                _ = term.recv() => terminate,
                _ = int.recv() => terminate,
                _ = hup.recv() => terminate,
                _ = quit.recv() => ShutdownPolicy::Kill,
                _ = usr1.recv() => ShutdownPolicy::Idle,
            };
            tracing::info!("shutting down: {policy:?}");
            handle.shutdown(policy).await;
        }
    }
}

/// Writes the results for `--print` or `--output`; returns the exit code.
async fn write_results(args: &Args, handle: &Handle) -> u8 {
    let outcome = if let Some(out) = args.output.as_ref() {
        match std::fs::File::create(out) {
            Ok(f) => write_results_to(handle, f).await,
            Err(e) => Err(e),
        }
    } else if args.print {
        write_results_to(handle, std::io::stdout()).await
    } else {
        // Nothing to write: build no results (an attached capture would be
        // copied or read for nothing).
        return 0;
    };
    match outcome {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: writing results: {e}");
            1
        }
    }
}

/// How many results [`write_results_to`] asks the agent for at once.
const RESULTS_PART: usize = 256;

/// Writes every result as one JSON object by id, then a newline: the bytes
/// `serde_json` makes of [`Handle::results`]' map, built a part at a time.
/// Every part is asked for at once; while this thread turns one part into
/// JSON, the reactor builds the next, so the two cores share what was a
/// single-threaded wait at the end of a large run (3,000 results: 33 ms).
/// The JSON streams through a 1 MiB buffer: one result's text can be many
/// times its capture (a NUL byte is six characters).
async fn write_results_to(handle: &Handle, w: impl Write) -> std::io::Result<()> {
    let ids = handle.proc_ids().await;
    let parts: Vec<_> = ids
        .chunks(RESULTS_PART)
        .map(|c| handle.results_of(c.to_vec()))
        .collect();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, w);
    w.write_all(b"{")?;
    let mut first = true;
    for part in parts {
        for (id, res) in part.await {
            if !first {
                w.write_all(b",")?;
            }
            first = false;
            serde_json::to_writer(&mut w, &id)?;
            w.write_all(b":")?;
            serde_json::to_writer(&mut w, &res)?;
        }
    }
    w.write_all(b"}\n")?;
    w.flush()
}

/// Logging to stderr at `level` for chaperone itself (its libraries log
/// warnings and errors only); a full filter (`chaperone=debug,rustls=trace`)
/// is taken as it is.
fn init_logging(level: &str) {
    let directives = if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("warn,chaperone={level}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Its report of a write that failed is an `eprintln!`, which panics
        // when standard error is what failed (a full disk under a detached
        // agent's log): the event is dropped instead.
        .log_internal_errors(false)
        .with_timer(Millis)
        // Colour only on a terminal: a log file or a journal gets plain lines.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

/// Log timestamps in UTC to the millisecond, as Procstar's, e.g.
/// `2026-12-07T10:55:24.123Z`.
struct Millis;

impl tracing_subscriber::fmt::time::FormatTime for Millis {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        // YYYY-MM-DDTHH:MM:SS.mmm of "…SS.fffffffff+00:00".
        let t = crate::metrics::format_rfc3339(ns);
        write!(w, "{}Z", t.get(..23).unwrap_or(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn parse_size_accepts_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
    }
}
