//! A compact view of the process table for status pages and listings:
//! one small row per process, built on the reactor from what it already
//! holds (no `/proc` reads, no copies of captured bytes), so that listing
//! ten thousand processes costs about as much as walking the table.
//!
//! Rows carry a generation: every [`Overview`] the reactor builds has a
//! larger one than the last, so a front end that merges overviews fetched
//! at different moments can drop one older than what it already shows.

use super::proc::{Life, Proc};
use crate::result::Status;
use crate::spec::ProcId;
use serde::Serialize;
use std::sync::Arc;

/// Which processes an [`Overview`] lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Select {
    /// Every process.
    All,
    /// These, where they exist (unknown ids are left out).
    Ids(Vec<ProcId>),
    /// Those not yet ended: queued, opening their files, or running (or
    /// exited, with output still being read).
    Live,
    /// None: only the counts.
    None,
}

/// Where a process is in its life, finer than the result's `state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Waiting for its turn (`max_running`, or fds to free up).
    Queued,
    /// Its spec's files are being opened.
    Opening,
    /// Started and not yet reaped (or still draining its output).
    Running,
    /// Exited and reaped.
    Terminated,
    /// Failed: never started, or ended with errors (a running process
    /// with errors is still [`Phase::Running`]; its row has them).
    Error,
}

impl Phase {
    /// Whether it has not ended yet (queued, opening or running).
    pub fn is_live(self) -> bool {
        matches!(self, Phase::Queued | Phase::Opening | Phase::Running)
    }
}

/// One captured fd in a [`Row`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FdRow {
    /// The fd's name, as in results (`stdout`, `fd3`).
    pub name: String,
    /// Bytes produced so far; `None` for a tempfile capture, which the child
    /// writes directly.
    pub length: Option<u64>,
    /// The stream offsets a head/tail bound dropped from the middle.
    pub dropped: Option<crate::result::Dropped>,
    /// Whether more may come.
    pub open: bool,
}

/// One process, in brief.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The process id.
    pub id: ProcId,
    /// Where it is.
    pub phase: Phase,
    /// The result's `state`: `running`, `terminated` or `error`.
    pub state: &'static str,
    /// Its pid, once it has one.
    pub pid: Option<i32>,
    /// The spec's argv.
    pub argv: Arc<[String]>,
    /// When it was started (RFC 3339).
    pub start: String,
    /// Seconds from start to its exit, or to now while it runs.
    pub elapsed: f64,
    /// Its exit code, once it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, by name (`SIGTERM`).
    pub signal: Option<String>,
    /// User plus system CPU seconds: from rusage once reaped, else from the
    /// last `/proc` sample.
    pub cpu: Option<f64>,
    /// Peak resident set in bytes: the largest sampled; for a process never
    /// sampled (it ran for less than a sampling interval), rusage's max RSS
    /// once reaped. (A child spawned without forking starts in the agent's
    /// address space, and Linux carries that space's high-water mark into
    /// the exec'd program's max RSS, so rusage's figure is at least the
    /// agent's resident set at the spawn.)
    pub rss: Option<u64>,
    /// Resident set at the last sample, while it runs.
    pub rss_now: Option<u64>,
    /// Each captured fd.
    pub fds: Vec<FdRow>,
    /// Its first error, if any.
    pub error: Option<String>,
    /// How many errors it has.
    pub errors: usize,
}

impl Row {
    /// A hash of everything in the row but its elapsed time (which a
    /// viewer can count on by itself): rows with the same fingerprint show
    /// the same, so a front end need not send one again.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.phase, self.pid, self.exit_code, &self.signal).hash(&mut h);
        (
            self.cpu.map(f64::to_bits),
            self.rss,
            self.rss_now,
            self.errors,
        )
            .hash(&mut h);
        for f in &self.fds {
            (f.length, f.open, f.dropped.map(|d| (d.start, d.stop))).hash(&mut h);
        }
        h.finish()
    }
}

/// How many processes are in each phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Every process in the table.
    pub total: usize,
    /// [`Phase::Queued`].
    pub queued: usize,
    /// [`Phase::Opening`].
    pub opening: usize,
    /// [`Phase::Running`].
    pub running: usize,
    /// Of `running`, those still being spawned (no pid yet). Not in the
    /// status API's JSON.
    #[serde(skip)]
    pub spawning: usize,
    /// [`Phase::Terminated`].
    pub terminated: usize,
    /// [`Phase::Error`].
    pub error: usize,
}

/// What the reactor's I/O runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// `io_uring`.
    pub name: &'static str,
    /// Exits through `IORING_OP_WAITID` (else a pidfd poll).
    pub waitid: bool,
    /// Pipes read by multishot reads (else one read at a time).
    pub read_multishot: bool,
    /// Provided buffers consumed incrementally.
    pub buf_ring_inc: bool,
}

/// The table in brief: rows for the processes asked for, and counts of all.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Overview {
    /// Larger for every overview built (see the module notes).
    pub generation: u64,
    /// The rows asked for, sorted by id.
    pub rows: Vec<Row>,
    /// Counts over the whole table.
    pub counts: Counts,
    /// Captured bytes held in memory against `Config::output_limit`.
    pub output_held: Option<u64>,
    /// `Config::output_limit`.
    pub output_limit: Option<u64>,
    /// The agent's shutdown state.
    pub shutdown_state: super::ShutdownState,
    /// What the reactor runs on.
    pub backend: Backend,
}

/// A point of a process's sampled history: seconds since its start,
/// resident bytes, and CPU seconds so far.
pub type Point = (f64, u64, f64);

/// A running process's samples, kept to a bounded number of points over its
/// whole life: once full, every other point is dropped and from then on
/// only every other sample is kept, so a process that runs for days holds
/// as many points as one that ran for a minute, spread over its life.
#[derive(Clone, Debug, Default)]
pub(crate) struct History {
    points: Vec<(f32, u64, f32)>,
    /// Keep one sample in `stride`.
    stride: u32,
    /// Samples since the last one kept.
    skipped: u32,
}

impl History {
    /// The most points held.
    pub const POINTS: usize = 64;

    pub fn push(&mut self, t: f64, rss: u64, cpu: f64) {
        self.stride = self.stride.max(1);
        self.skipped += 1;
        if self.skipped < self.stride && !self.points.is_empty() {
            return;
        }
        self.skipped = 0;
        if self.points.len() >= Self::POINTS {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride *= 2;
        }
        self.points.push((t as f32, rss, cpu as f32));
    }

    pub fn points(&self) -> Vec<Point> {
        self.points
            .iter()
            .map(|&(t, r, c)| (f64::from(t), r, f64::from(c)))
            .collect()
    }
}

impl Proc {
    /// Its phase and the result's state name.
    pub(crate) fn phase(&self) -> Phase {
        match self.life {
            Life::Queued | Life::Opening if !self.errors.is_empty() => Phase::Error,
            Life::Queued => Phase::Queued,
            Life::Opening => Phase::Opening,
            Life::NotStarted => Phase::Error,
            Life::Starting | Life::Running | Life::Exiting => Phase::Running,
            Life::Done { .. } if !self.errors.is_empty() => Phase::Error,
            Life::Done { .. } => Phase::Terminated,
        }
    }

    /// Its row (see [`Row`]).
    pub(crate) fn row(&self) -> Row {
        let phase = self.phase();
        // The result's state: `error` as soon as there is one.
        let state = match phase {
            _ if !self.errors.is_empty() => "error",
            Phase::Error => "error",
            Phase::Terminated => "terminated",
            _ => "running",
        };
        let (status, rusage) = match &self.life {
            Life::Done { status, rusage } => {
                (Some(Status::from_wait_status(*status)), Some(rusage))
            }
            _ => (None, None),
        };
        let elapsed = match self.stop {
            Some((_, mono)) => mono.duration_since(self.start_mono),
            None => self.start_mono.elapsed(),
        };
        let cpu = match (rusage, &self.proc_stat) {
            (Some(r), _) => Some(r.utime + r.stime),
            (None, Some(s)) => Some(s.utime + s.stime),
            _ => None,
        };
        let rss = match (self.sampled.peak_resident, rusage) {
            (0, Some(r)) => u64::try_from(r.maxrss).ok(),
            (0, None) => None,
            (peak, _) => Some(peak),
        };
        let running = matches!(phase, Phase::Running);
        let fds = self
            .captures
            .iter()
            .map(|c| {
                let (length, open) = c.growth(self.is_busy());
                FdRow {
                    name: c.name.clone(),
                    length,
                    dropped: c.dropped().map(|d| crate::result::Dropped {
                        start: d.start,
                        stop: d.end,
                    }),
                    open,
                }
            })
            .collect();
        Row {
            id: self.id.clone(),
            phase,
            state,
            pid: self.pid,
            argv: self.argv.clone(),
            start: super::rfc3339(self.start),
            elapsed: elapsed.as_secs_f64(),
            exit_code: status.as_ref().and_then(|s| s.exit_code),
            signal: status.and_then(|s| s.signal),
            cpu,
            rss,
            rss_now: self.sampled.statm.filter(|_| running).map(|m| m.resident),
            fds,
            error: self.errors.first().cloned(),
            errors: self.errors.len(),
        }
    }

    /// Records a sample in its history (see [`History`]).
    pub(crate) fn record_history(&mut self) {
        let (Some(m), Some(s)) = (self.sampled.statm, &self.proc_stat) else {
            return;
        };
        let t = self.start_mono.elapsed().as_secs_f64();
        self.sampled.history.get_or_insert_with(Box::default).push(
            t,
            m.resident,
            s.utime + s.stime,
        );
    }
}

impl Counts {
    pub(crate) fn add(&mut self, phase: Phase) {
        self.total += 1;
        match phase {
            Phase::Queued => self.queued += 1,
            Phase::Opening => self.opening += 1,
            Phase::Running => self.running += 1,
            Phase::Terminated => self.terminated += 1,
            Phase::Error => self.error += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_stays_bounded_and_spans_the_whole_life() {
        let mut h = History::default();
        for i in 0..10_000u32 {
            h.push(f64::from(i), u64::from(i), f64::from(i) / 10.0);
        }
        let p = h.points();
        assert!(p.len() <= History::POINTS, "{} points", p.len());
        assert!(p.len() >= History::POINTS / 2, "{} points", p.len());
        assert_eq!(p.first().map(|x| x.0), Some(0.0));
        // The last point is recent: within one stride of the last sample.
        let last = p.last().map_or(0.0, |x| x.0);
        assert!(last > 9_000.0, "last point at {last}");
        // Strictly increasing in time.
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn a_short_history_keeps_every_sample() {
        let mut h = History::default();
        for i in 0..10u32 {
            h.push(f64::from(i), 100, 0.5);
        }
        assert_eq!(h.points().len(), 10);
    }

    #[test]
    fn counts_add_up() {
        let mut c = Counts::default();
        for p in [Phase::Queued, Phase::Running, Phase::Running, Phase::Error] {
            c.add(p);
        }
        assert_eq!((c.total, c.queued, c.running, c.error), (4, 1, 2, 1));
    }
}
