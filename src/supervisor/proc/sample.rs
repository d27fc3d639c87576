//! Sampling a running process's `/proc` files (`stat`, `statm`, `io`) into
//! its [`Proc`].

use super::life::{Life, Proc};
use crate::metrics::procstat::{ProcStat, StatContext};
use crate::metrics::{ProcIo, ProcStatm};
use std::time::SystemTime;

/// `/proc` samples of a running process; kept after exit, when the files are gone
/// or read as zeros (`statm` of a zombie).
#[derive(Clone, Debug, Default)]
pub(crate) struct Sampled {
    /// The last `statm` read.
    pub statm: Option<ProcStatm>,
    /// `statm` reads so far.
    pub count: u64,
    pub last_at: Option<SystemTime>,
    pub peak_resident: u64,
    pub peak_size: u64,
    /// Resident set and CPU over its life, once sampled (see
    /// [`History`](super::super::status::History)).
    pub history: Option<Box<super::super::status::History>>,
    /// The last `/proc/<pid>/io` read.
    pub io: Option<ProcIo>,
}

impl Proc {
    /// Samples `/proc/<pid>/stat` and `statm` of a running process into
    /// `proc_stat` and `sampled`, reusing `buf`. A process that is gone or
    /// already exiting (or whose files do not parse) leaves the previous samples
    /// as they were. Returns whether a new sample was taken.
    pub fn sample(&mut self, ctx: &StatContext, buf: &mut Vec<u8>) -> bool {
        /// `PF_EXITING` in `/proc/<pid>/stat`'s flags: `do_exit` has begun.
        const PF_EXITING: u64 = 0x4;
        let (Life::Running, Some(pid)) = (&self.life, self.pid) else {
            return false;
        };
        // statm first, then stat: a process that exits between the two reads
        // shows it in stat, so a statm read during the exit's address-space
        // teardown (zeros, or a part of the real figure) is never kept.
        let statm = read_parsed(pid, "statm", buf, |t| {
            crate::metrics::parse_statm(t, ctx.page_size).ok()
        });
        let Some(stat) = read_stat(pid, ctx, buf) else {
            return false;
        };
        let exiting = matches!(stat.state, 'Z' | 'X' | 'x') || stat.flags & PF_EXITING != 0;
        if exiting {
            return false;
        }
        self.proc_stat = Some(stat);
        if let Some(m) = statm {
            let s = &mut self.sampled;
            s.statm = Some(m);
            s.count += 1;
            s.last_at = Some(SystemTime::now());
            s.peak_resident = s.peak_resident.max(m.resident);
            s.peak_size = s.peak_size.max(m.size);
            return true;
        }
        false
    }

    /// Reads `/proc/<pid>/io` into `sampled.io` (also for a zombie: call before
    /// reaping). Unreadable (gone, or no permission) keeps the previous value.
    pub fn read_io(&mut self, buf: &mut Vec<u8>) {
        let Some(pid) = self.pid else { return };
        if matches!(self.life, Life::Done { .. } | Life::NotStarted) {
            return;
        }
        let io = read_parsed(pid, "io", buf, |t| crate::metrics::parse_io(t).ok());
        if io.is_some() {
            self.sampled.io = io;
        }
    }
}

/// Reads and parses `/proc/<pid>/stat` into `buf`'s storage; `None` if the
/// process is gone or the text does not parse.
pub(crate) fn read_stat(pid: i32, ctx: &StatContext, buf: &mut Vec<u8>) -> Option<ProcStat> {
    read_parsed(pid, "stat", buf, |t| {
        crate::metrics::procstat::parse_stat(t, ctx).ok()
    })
}

/// Reads `/proc/<pid>/<name>` into `buf` and parses its text; `None` if the
/// process is gone or the text does not parse.
fn read_parsed<T>(
    pid: i32,
    name: &str,
    buf: &mut Vec<u8>,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Option<T> {
    crate::metrics::read_proc_record(pid, name, buf).ok()?;
    parse(std::str::from_utf8(buf).ok()?)
}
