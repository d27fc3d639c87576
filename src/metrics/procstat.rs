//! `/proc/<pid>/stat`, parsed into Procstar's `proc_stat` shape.
//!
//! See proc_pid_stat(5) for the field list. Units follow Procstar: CPU times
//! in seconds (ticks / `CLK_TCK`), `vsize` and `rss` in bytes, `starttime` as
//! an RFC 3339 string, signal masks as lists of names. Unlike Procstar, mask
//! bit *n − 1* is labelled signal *n*, as the kernel lays it out.

use serde::{Deserialize, Serialize};

use super::{ParseError, format_rfc3339};
use crate::signal::{signal_name, sigset_names};

/// The parsed contents of `/proc/<pid>/stat`, serialized as Procstar's
/// `proc_stat` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcStat {
    /// Process ID.
    pub pid: i32,
    /// Executable name (`comm`), without the parentheses. May contain spaces
    /// and parentheses.
    pub comm: String,
    /// State letter: `R`, `S`, `D`, `Z`, `T`, `t`, `X`, `I`, ...
    pub state: char,
    /// Parent process ID.
    pub ppid: i32,
    /// Process group ID.
    pub pgrp: i32,
    /// Session ID.
    pub session: i32,
    /// Controlling terminal as `[major, minor]`; `[0, 0]` for none.
    pub tty_nr: [u32; 2],
    /// Foreground process group of the controlling terminal; `null` for none
    /// (the kernel's -1).
    pub tpgid: Option<i32>,
    /// Kernel `PF_*` flags word.
    pub flags: u64,
    /// Minor faults.
    pub minflt: u64,
    /// Minor faults of waited-for children.
    pub cminflt: u64,
    /// Major faults.
    pub majflt: u64,
    /// Major faults of waited-for children.
    pub cmajflt: u64,
    /// User CPU time, seconds.
    pub utime: f64,
    /// System CPU time, seconds.
    pub stime: f64,
    /// User CPU time of waited-for children, seconds.
    pub cutime: f64,
    /// System CPU time of waited-for children, seconds.
    pub cstime: f64,
    /// Kernel scheduling priority.
    pub priority: i64,
    /// Nice value, -20..=19.
    pub nice: i64,
    /// Number of threads.
    pub num_threads: i64,
    /// Start time, RFC 3339 with nanoseconds (boot time + start ticks).
    pub starttime: String,
    /// Virtual memory size, bytes.
    pub vsize: u64,
    /// Resident set size, bytes (pages × page size).
    pub rss: u64,
    /// Soft limit on RSS, bytes (`u64::MAX` when unlimited).
    pub rsslim: u64,
    /// Pending signals, by name.
    pub signal: Vec<String>,
    /// Blocked signals, by name.
    pub blocked: Vec<String>,
    /// Ignored signals, by name.
    pub sigignore: Vec<String>,
    /// Caught signals, by name.
    pub sigcatch: Vec<String>,
    /// Wait channel (modern kernels show only 0 or 1).
    pub wchan: u64,
    /// Signal sent to the parent on exit, by name; `null` if none.
    pub exit_signal: Option<String>,
    /// CPU last run on.
    pub processor: i32,
    /// Realtime scheduling priority, 0 for normal policies.
    pub rt_priority: u32,
    /// Scheduling policy (`SCHED_*`).
    pub policy: u32,
    /// Aggregated block I/O delay, seconds.
    pub delayacct_blkio_ticks: f64,
    /// Guest time, seconds.
    pub guest_time: f64,
    /// Guest time of waited-for children, in clock ticks: an integer, as Procstar
    /// reports it (its example result shows `"cguest_time": 0`, not `0.0`).
    pub cguest_time: i64,
    /// The raw wait status (the kernel's name for it is `exit_code`).
    pub exit_code: i32,
}

/// System constants needed to convert `/proc/<pid>/stat` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatContext {
    /// Boot time as Unix nanoseconds.
    pub boot_time_ns: u128,
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
    pub clk_tck: u64,
    /// Page size in bytes.
    pub page_size: u64,
}

impl StatContext {
    /// Reads the constants from the running system.
    ///
    /// Boot time is `CLOCK_REALTIME − CLOCK_BOOTTIME`, which has nanosecond
    /// precision (the kernel measures `starttime` on the boot-time clock);
    /// if that clock is unavailable, `btime` from `/proc/stat` (whole seconds)
    /// is used. Compute this once and reuse it, so that one process's
    /// `starttime` does not jitter between reads.
    ///
    /// # Errors
    ///
    /// Only when falling back to `/proc/stat` and it cannot be read or has
    /// no `btime` line.
    pub fn from_system() -> std::io::Result<Self> {
        let boot_time_ns = match boot_time_from_clocks() {
            Some(ns) => ns,
            None => boot_time_from_proc_stat()?,
        };
        Ok(StatContext {
            boot_time_ns,
            clk_tck: rustix::param::clock_ticks_per_second(),
            page_size: u64::try_from(rustix::param::page_size()).unwrap_or(4096),
        })
    }
}

/// Boot time in Unix ns from `CLOCK_REALTIME − CLOCK_BOOTTIME`.
fn boot_time_from_clocks() -> Option<u128> {
    use rustix::time::{ClockId, DynamicClockId, clock_gettime, clock_gettime_dynamic};
    let to_ns =
        |t: rustix::time::Timespec| i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec);
    let boot = clock_gettime_dynamic(DynamicClockId::Boottime).ok()?;
    let real = clock_gettime(ClockId::Realtime);
    u128::try_from(to_ns(real) - to_ns(boot)).ok()
}

/// Boot time in Unix ns from the `btime` line of `/proc/stat`.
fn boot_time_from_proc_stat() -> std::io::Result<u128> {
    let text = std::fs::read_to_string("/proc/stat")?;
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u128>().ok())
        .map(|s| s * 1_000_000_000)
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no btime in /proc/stat")
        })
}

/// Whitespace-separated fields after `comm`, parsed one at a time.
struct Fields<'a> {
    it: std::str::SplitAsciiWhitespace<'a>,
}

impl<'a> Fields<'a> {
    fn raw(&mut self, name: &'static str) -> Result<&'a str, ParseError> {
        self.it.next().ok_or(ParseError::Missing(name))
    }

    fn next<T: std::str::FromStr>(&mut self, name: &'static str) -> Result<T, ParseError> {
        let s = self.raw(name)?;
        s.parse().map_err(|_| ParseError::invalid(name, s))
    }

    fn skip(&mut self, names: &[&'static str]) -> Result<(), ParseError> {
        for &name in names {
            self.raw(name)?;
        }
        Ok(())
    }
}

/// Parses the text of `/proc/<pid>/stat`.
///
/// `comm` is everything between the first `(` and the **last** `)`, since it
/// may itself contain `)` and spaces. All 52 fields of current kernels
/// (3.5 and later) are required. Never panics; malformed input gives a
/// [`ParseError`] naming the field. For a file read as bytes, convert with
/// [`String::from_utf8_lossy`] first (`comm` may hold arbitrary bytes).
///
/// # Errors
///
/// [`ParseError::Missing`] or [`ParseError::Invalid`] naming the first bad
/// field.
pub fn parse_stat(text: &str, ctx: &StatContext) -> Result<ProcStat, ParseError> {
    let open = text.find('(').ok_or(ParseError::Missing("comm"))?;
    let close = text.rfind(')').ok_or(ParseError::Missing("comm"))?;
    if close < open {
        return Err(ParseError::Missing("comm"));
    }
    let pid_text = text.get(..open).ok_or(ParseError::Missing("pid"))?.trim();
    let pid = pid_text
        .parse()
        .map_err(|_| ParseError::invalid("pid", pid_text))?;
    let comm = text
        .get(open + 1..close)
        .ok_or(ParseError::Missing("comm"))?
        .to_owned();
    let rest = text.get(close + 1..).ok_or(ParseError::Missing("state"))?;
    let mut f = Fields {
        it: rest.split_ascii_whitespace(),
    };

    let clk_tck = ctx.clk_tck.max(1);
    let secs = |ticks: f64| ticks / clk_tck as f64;
    let bytes = |pages: u64| pages.saturating_mul(ctx.page_size);

    let state_text = f.raw("state")?;
    let mut chars = state_text.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) => c,
        _ => return Err(ParseError::invalid("state", state_text)),
    };
    let ppid = f.next("ppid")?;
    let pgrp = f.next("pgrp")?;
    let session = f.next("session")?;
    let tty: i64 = f.next("tty_nr")?;
    // The kernel's new_encode_dev layout: minor low byte, major, minor high bits.
    let tty_major = ((tty >> 8) & 0xfff) as u32;
    let tty_minor = ((tty & 0xff) | ((tty >> 12) & 0xfff00)) as u32;
    let tpgid: i32 = f.next("tpgid")?;
    let flags = f.next("flags")?;
    let minflt = f.next("minflt")?;
    let cminflt = f.next("cminflt")?;
    let majflt = f.next("majflt")?;
    let cmajflt = f.next("cmajflt")?;
    let utime = secs(f.next::<u64>("utime")? as f64);
    let stime = secs(f.next::<u64>("stime")? as f64);
    let cutime = secs(f.next::<i64>("cutime")? as f64);
    let cstime = secs(f.next::<i64>("cstime")? as f64);
    let priority = f.next("priority")?;
    let nice = f.next("nice")?;
    let num_threads = f.next("num_threads")?;
    f.skip(&["itrealvalue"])?;
    let start_ticks: u64 = f.next("starttime")?;
    let start_ns = u128::from(start_ticks) * 1_000_000_000 / u128::from(clk_tck);
    let start_unix_ns = ctx.boot_time_ns.saturating_add(start_ns);
    let starttime = format_rfc3339(i128::try_from(start_unix_ns).unwrap_or(i128::MAX));
    let vsize = f.next("vsize")?;
    let rss_pages: i64 = f.next("rss")?;
    let rss = bytes(u64::try_from(rss_pages).unwrap_or(0));
    let rsslim = f.next("rsslim")?;
    f.skip(&["startcode", "endcode", "startstack", "kstkesp", "kstkeip"])?;
    let signal = sigset_names(f.next("signal")?);
    let blocked = sigset_names(f.next("blocked")?);
    let sigignore = sigset_names(f.next("sigignore")?);
    let sigcatch = sigset_names(f.next("sigcatch")?);
    let wchan = f.next("wchan")?;
    f.skip(&["nswap", "cnswap"])?;
    let exit_signal = signal_name(f.next("exit_signal")?).map(str::to_owned);
    let processor = f.next("processor")?;
    let rt_priority = f.next("rt_priority")?;
    let policy = f.next("policy")?;
    let delayacct_blkio_ticks = secs(f.next::<u64>("delayacct_blkio_ticks")? as f64);
    let guest_time = secs(f.next::<u64>("guest_time")? as f64);
    let cguest_time = f.next::<i64>("cguest_time")?;
    f.skip(&[
        "start_data",
        "end_data",
        "start_brk",
        "arg_start",
        "arg_end",
        "env_start",
        "env_end",
    ])?;
    let exit_code = f.next("exit_code")?;

    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid,
        pgrp,
        session,
        tty_nr: [tty_major, tty_minor],
        tpgid: (tpgid != -1).then_some(tpgid),
        flags,
        minflt,
        cminflt,
        majflt,
        cmajflt,
        utime,
        stime,
        cutime,
        cstime,
        priority,
        nice,
        num_threads,
        starttime,
        vsize,
        rss,
        rsslim,
        signal,
        blocked,
        sigignore,
        sigcatch,
        wchan,
        exit_signal,
        processor,
        rt_priority,
        policy,
        delayacct_blkio_ticks,
        guest_time,
        cguest_time,
        exit_code,
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CTX: StatContext = StatContext {
        // 2026-11-22T02:00:00Z
        boot_time_ns: 1_795_312_800_000_000_000,
        clk_tck: 100,
        page_size: 4096,
    };

    /// A zombie `echo`, shaped like the contract's example (SIGPIPE ignored).
    const ZOMBIE: &str = "10637 (echo) Z 10631 10637 10637 0 -1 4227084 117 0 0 0 0 0 0 0 20 0 1 0 108387 0 0 18446744073709551615 0 0 0 0 0 0 0 4096 0 1 0 0 17 3 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    /// A live shell with a terminal, signals caught, and odd comm.
    const ODD: &str = "4242 (a) b (c) S 1 4242 4242 34817 4300 4194304 1500 2000 3 4 250 125 -10 7 20 -5 3 0 12345 10485760 600 18446744073709551615 1 1 0 0 0 65536 65538 20484 0 0 0 0 17 5 0 0 12 34 56 0 0 0 0 0 0 0 256\n";

    #[test]
    fn zombie_echo() {
        let s = parse_stat(ZOMBIE, &CTX).unwrap();
        assert_eq!(s.pid, 10637);
        assert_eq!(s.comm, "echo");
        assert_eq!(s.state, 'Z');
        assert_eq!(s.ppid, 10631);
        assert_eq!(s.tty_nr, [0, 0]);
        assert_eq!(s.tpgid, None);
        assert_eq!(s.flags, 4227084);
        assert_eq!(s.minflt, 117);
        assert_eq!(s.priority, 20);
        assert_eq!(s.num_threads, 1);
        // 108387 ticks = 1083.87 s after boot.
        assert_eq!(s.starttime, "2026-11-22T02:18:03.870000000+00:00");
        assert_eq!(s.rsslim, u64::MAX);
        assert!(s.signal.is_empty());
        assert!(s.blocked.is_empty());
        assert_eq!(s.sigignore, vec!["SIGPIPE"]);
        assert!(s.sigcatch.is_empty());
        assert_eq!(s.wchan, 1);
        assert_eq!(s.exit_signal.as_deref(), Some("SIGCHLD"));
        assert_eq!(s.processor, 3);
        assert_eq!(s.exit_code, 0);

        let json = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "pid",
            "comm",
            "state",
            "ppid",
            "pgrp",
            "session",
            "tty_nr",
            "tpgid",
            "flags",
            "minflt",
            "cminflt",
            "majflt",
            "cmajflt",
            "utime",
            "stime",
            "cutime",
            "cstime",
            "priority",
            "nice",
            "num_threads",
            "starttime",
            "vsize",
            "rss",
            "rsslim",
            "signal",
            "blocked",
            "sigignore",
            "sigcatch",
            "wchan",
            "exit_signal",
            "processor",
            "rt_priority",
            "policy",
            "delayacct_blkio_ticks",
            "guest_time",
            "cguest_time",
            "exit_code",
        ];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["state"], "Z");
        assert_eq!(json["tpgid"], serde_json::Value::Null);
        assert_eq!(json["tty_nr"], serde_json::json!([0, 0]));
        let back: ProcStat = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn odd_comm_and_units() {
        let s = parse_stat(ODD, &CTX).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "a) b (c");
        assert_eq!(s.state, 'S');
        // 34817 = 0x8801: /dev/pts/1 is major 136, minor 1.
        assert_eq!(s.tty_nr, [136, 1]);
        assert_eq!(s.tpgid, Some(4300));
        assert_eq!(s.utime, 2.5);
        assert_eq!(s.stime, 1.25);
        assert_eq!(s.cutime, -0.1);
        assert_eq!(s.cstime, 0.07);
        assert_eq!(s.nice, -5);
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.starttime, "2026-11-22T02:02:03.450000000+00:00");
        assert_eq!(s.vsize, 10485760);
        assert_eq!(s.rss, 600 * 4096);
        // 65536 = bit 16: SIGCHLD pending.
        assert_eq!(s.signal, vec!["SIGCHLD"]);
        // 65538 = bits 1 and 16.
        assert_eq!(s.blocked, vec!["SIGINT", "SIGCHLD"]);
        // 20484 = bits 2, 12 and 14.
        assert_eq!(s.sigignore, vec!["SIGQUIT", "SIGPIPE", "SIGTERM"]);
        assert!(s.sigcatch.is_empty());
        assert_eq!(s.exit_signal.as_deref(), Some("SIGCHLD"));
        assert_eq!(s.processor, 5);
        assert_eq!(s.delayacct_blkio_ticks, 0.12);
        assert_eq!(s.guest_time, 0.34);
        assert_eq!(s.cguest_time, 56);
        assert_eq!(s.exit_code, 256);
    }

    #[test]
    fn self_stat_parses() {
        let ctx = StatContext::from_system().unwrap();
        assert!(ctx.clk_tck > 0);
        assert!(ctx.page_size >= 4096);
        let mut buf = Vec::new();
        let pid = std::process::id() as i32;
        super::super::read_proc_file(pid, "stat", &mut buf).unwrap();
        let s = parse_stat(&String::from_utf8_lossy(&buf), &ctx).unwrap();
        assert_eq!(s.pid, pid);
        assert_eq!(
            s.ppid,
            rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get())
        );
        assert!(s.rss > 0);
        assert!(s.starttime.starts_with("20"));
        assert_eq!(s.exit_signal.as_deref(), Some("SIGCHLD"));
        let btime = boot_time_from_proc_stat().unwrap();
        assert!(ctx.boot_time_ns.abs_diff(btime) < 2_000_000_000);
    }

    #[test]
    fn errors_name_fields() {
        assert_eq!(parse_stat("", &CTX), Err(ParseError::Missing("comm")));
        assert_eq!(
            parse_stat("1 x) (y", &CTX),
            Err(ParseError::Missing("comm"))
        );
        assert_eq!(
            parse_stat("x (sh) S 1", &CTX),
            Err(ParseError::invalid("pid", "x"))
        );
        assert_eq!(
            parse_stat("1 (sh)", &CTX),
            Err(ParseError::Missing("state"))
        );
        assert_eq!(
            parse_stat("1 (sh) SS 1", &CTX),
            Err(ParseError::invalid("state", "SS"))
        );
        assert_eq!(
            parse_stat("1 (sh) S 1", &CTX),
            Err(ParseError::Missing("pgrp"))
        );
        let truncated = ZOMBIE.rsplit_once(' ').unwrap().0;
        assert_eq!(
            parse_stat(truncated, &CTX),
            Err(ParseError::Missing("exit_code"))
        );
        let bad = ZOMBIE.replace(" 4096 ", " x ");
        assert_eq!(
            parse_stat(&bad, &CTX),
            Err(ParseError::invalid("sigignore", "x"))
        );
    }

    #[test]
    fn zero_clk_tck_does_not_panic() {
        let ctx = StatContext { clk_tck: 0, ..CTX };
        assert!(parse_stat(ZOMBIE, &ctx).is_ok());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = parse_stat(&s, &CTX);
        }

        #[test]
        fn arbitrary_fields_never_panic(
            comm in ".*",
            fields in proptest::collection::vec("-?[0-9]{1,25}|[A-Za-z]|\\PC{0,3}", 0..60),
        ) {
            let text = format!("1 ({comm}) {}", fields.join(" "));
            let _ = parse_stat(&text, &CTX);
        }

        #[test]
        fn comm_round_trips(comm in "[^\n]{0,16}") {
            let text = ZOMBIE.replacen("(echo)", &format!("({comm})"), 1);
            let s = parse_stat(&text, &CTX).unwrap();
            prop_assert_eq!(s.comm, comm);
        }
    }
}
