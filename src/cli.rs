//! The one-shot command line: run a spec file to completion and print results.
//!
//! `chaperone [--print | --output PATH | --exit] [--log-level L] SPEC|-`, with
//! Procstar's flags and exit codes: 0 on success, 2 when the spec cannot be
//! loaded, 65 (`EX_DATAERR`) when the request cannot be started or no mode is
//! chosen.

use crate::{Agent, Config, spec};
use clap::Parser;
use std::io::Write;
use std::path::PathBuf;

/// Exit code for a spec that cannot be loaded.
pub const EXIT_LOAD: u8 = 2;
/// Exit code for a request that cannot be started (`EX_DATAERR`).
pub const EXIT_START: u8 = 65;

/// Command-line flags (Procstar's, plus chaperone's capture bounds).
#[derive(Debug, Parser)]
#[command(
    name = "chaperone",
    version,
    about = "Runs processes from JSON specs and reports on them"
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
    /// Log level: trace, debug, info, warn or error.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
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
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("not a usable interval: {s:?} (must be 0 or more seconds)"))
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

/// Runs the CLI; returns the process exit code.
pub fn run(args: Args) -> u8 {
    init_logging(&args.log_level);
    if !(args.print || args.exit || args.output.is_some()) {
        eprintln!("error: no mode given: use --print, --output PATH or --exit");
        return EXIT_START;
    }
    let Some(path) = args.input.as_ref() else {
        eprintln!("error: no spec given (a file path, or - for standard input)");
        return EXIT_START;
    };
    let raw = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(path)
    };
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot read spec {}: {e}", path.display());
            return EXIT_LOAD;
        }
    };
    let input = match spec::parse_input(&raw) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_LOAD;
        }
    };
    let config = Config {
        capture_head: args.capture_head,
        capture_tail: args.capture_tail,
        pdeath_sig: args.pdeath_sig,
        sample_interval: Some(args.sample_interval),
        perf: args.perf,
        output_limit: args.output_limit.map(|n| n as u64),
        max_running: args
            .max_running
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        ..Config::default()
    };
    let agent = match Agent::new(config) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_START;
        }
    };
    match agent.start(input) {
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_START;
        }
    };
    // Compression (`"compress"`) runs after exit, off the reactor: wait for it
    // too, so that the results are final and compressed files complete when we
    // exit (dropping the agent would cancel it).
    agent.wait_all();
    let results = agent.results();
    let write = |w: &mut dyn Write| -> std::io::Result<()> {
        serde_json::to_writer(&mut *w, &results)?;
        w.write_all(b"\n")?;
        w.flush()
    };
    let outcome = if let Some(out) = args.output.as_ref() {
        std::fs::File::create(out)
            .and_then(|f| write(&mut std::io::BufWriter::with_capacity(1 << 20, f)))
    } else if args.print {
        write(&mut std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout().lock(),
        ))
    } else {
        Ok(())
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

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
