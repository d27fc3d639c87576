//! Helper for `ci/zstd-bench`: makes a deterministic log-like file and compresses a
//! file with chaperone's `compress_file`, the way a finished capture is compressed.
//!
//! ```text
//! zstd_bench gen <path> <bytes>             write <bytes> of varied log lines
//! zstd_bench compress <src> <dst> <level>   compress <src> into <dst> (created/truncated)
//! ```
//!
//! `compress` prints `raw_len compressed_len` on stdout; the script times the whole
//! process, as it does the `zstd` command's.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let result = match arg(1) {
        "gen" => arg(3)
            .parse::<u64>()
            .map_err(|e| format!("bad size: {e}"))
            .and_then(|n| generate(arg(2), n).map_err(|e| e.to_string())),
        "compress" => arg(4)
            .parse::<i32>()
            .map_err(|e| format!("bad level: {e}"))
            .and_then(|level| compress(arg(2), arg(3), level).map_err(|e| e.to_string())),
        _ => Err("usage: zstd_bench gen <path> <bytes> | compress <src> <dst> <level>".into()),
    };
    if let Err(e) = result {
        eprintln!("zstd_bench: {e}");
        std::process::exit(1);
    }
}

fn compress(src: &str, dst: &str, level: i32) -> std::io::Result<()> {
    let src = std::fs::File::open(src)?;
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    let stats = chaperone::capture::compress::compress_file(&src, &dst, level, None)?;
    println!("{} {}", stats.raw_len, stats.compressed_len);
    Ok(())
}

/// Writes `size` bytes of log lines: timestamps, levels, components, request ids,
/// paths, status codes and latencies drawn from a fixed-seed generator, so the
/// text is varied (not trivially repetitive) and the same on every run.
fn generate(path: &str, size: u64) -> std::io::Result<()> {
    const LEVELS: [&str; 5] = ["INFO", "INFO", "DEBUG", "WARN", "ERROR"];
    const COMPONENTS: [&str; 8] = [
        "http.server",
        "db.pool",
        "auth",
        "scheduler",
        "cache",
        "worker.queue",
        "storage.s3",
        "metrics",
    ];
    const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
    const PATHS: [&str; 10] = [
        "/api/v1/users",
        "/api/v1/orders",
        "/api/v1/items/search",
        "/healthz",
        "/api/v2/reports/daily",
        "/static/app.js",
        "/api/v1/sessions",
        "/api/v1/payments/authorize",
        "/login",
        "/api/v1/inventory",
    ];
    const WORDS: [&str; 12] = [
        "connection",
        "timeout",
        "retrying",
        "accepted",
        "flushed",
        "evicted",
        "slow",
        "query",
        "batch",
        "committed",
        "rejected",
        "upstream",
    ];
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let pick = |r: u64, n: usize| (r % n as u64) as usize;
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut written = 0u64;
    let mut ms: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let mut line = String::with_capacity(256);
    while written < size {
        use std::fmt::Write as _;
        line.clear();
        let r = next();
        ms += r % 37;
        let (secs, milli) = (ms / 1000, ms % 1000);
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let level = LEVELS[pick(r >> 8, LEVELS.len())];
        let comp = COMPONENTS[pick(r >> 16, COMPONENTS.len())];
        let _ = write!(
            line,
            "2026-01-01T{h:02}:{m:02}:{s:02}.{milli:03}Z {level:5} [{comp}] pid={} ",
            1000 + pick(r >> 24, 16)
        );
        let r2 = next();
        match pick(r >> 32, 3) {
            0 => {
                let _ = write!(
                    line,
                    "req={:016x} {} {} status={} bytes={} dur={}.{:03}ms",
                    r2,
                    METHODS[pick(r2 >> 3, METHODS.len())],
                    PATHS[pick(r2 >> 7, PATHS.len())],
                    [200, 200, 200, 201, 204, 304, 400, 404, 500][pick(r2 >> 11, 9)],
                    r2 >> 50,
                    (r2 >> 20) % 900,
                    (r2 >> 30) % 1000
                );
            }
            1 => {
                let _ = write!(
                    line,
                    "{} {} {} id={} attempt={}",
                    WORDS[pick(r2, WORDS.len())],
                    WORDS[pick(r2 >> 5, WORDS.len())],
                    WORDS[pick(r2 >> 10, WORDS.len())],
                    (r2 >> 16) % 1_000_000,
                    (r2 >> 40) % 5
                );
            }
            _ => {
                let _ = write!(
                    line,
                    "user={} session={:08x} from 10.{}.{}.{} ok",
                    (r2 >> 8) % 50_000,
                    r2 as u32,
                    (r2 >> 33) % 256,
                    (r2 >> 41) % 256,
                    (r2 >> 49) % 256
                );
            }
        }
        line.push('\n');
        let bytes = line.as_bytes();
        let n = bytes
            .len()
            .min(usize::try_from(size - written).unwrap_or(usize::MAX));
        out.write_all(&bytes[..n])?;
        written += n as u64;
    }
    out.flush()
}
