//! Rendering a process to its result: the [`Snapshot`] the reactor takes, and
//! its conversion to [`ProcRes`] and [`FdRes`] on the caller's thread.

use super::super::packer::Packed;
use super::life::{Life, Proc, TimeoutState};
use super::sample::Sampled;
use super::store::Content;
use crate::metrics::procstat::StatContext;
use crate::result::{
    ChildFailure as ResFailure, Dropped, Encoding, FdExt, FdRes, ProcRes, SamplesRes, State,
    Status, Times,
};
use crate::spec;
use crate::sys::fd::{self, read_file, read_file_into};
use bytes::Bytes;
use rustix::io::Errno;
use std::sync::Arc;
use std::time::SystemTime;

/// A snapshot of a process result whose fd contents are read on the caller's
/// thread (no whole-capture reads or encodings on the reactor thread).
#[derive(Clone, Debug)]
pub(crate) struct Snapshot {
    pub res: ProcRes,
    pub fds: Vec<(String, Option<FdSnap>)>,
    /// The shared environment map, copied into `res.env` by [`Snapshot::into_res`]
    /// on the caller's thread rather than on the reactor's.
    pub env: Option<Arc<std::collections::BTreeMap<String, String>>>,
    /// The perf counts, copied into `res.perf` on the caller's thread.
    pub perf: Option<Arc<crate::metrics::perf::PerfRes>>,
    /// `res.times`' start, now and stop, formatted on the caller's thread.
    pub times: (SystemTime, SystemTime, Option<SystemTime>),
}

/// One fd of a [`Snapshot`].
#[derive(Clone, Debug)]
pub(crate) struct FdSnap {
    pub encoding: spec::Encoding,
    pub attached: bool,
    pub content: Content,
    /// The `compression` result field, for a capture with `compress`.
    pub compression: Option<crate::result::Compression>,
    /// A kept file's head/tail window (`"memory": true`).
    pub window: Option<(u64, u64)>,
}

impl Snapshot {
    /// Fills in `res.fds`, reading tempfiles; runs on the caller's thread.
    pub fn into_res(self) -> ProcRes {
        let mut res = self.res;
        res.env = self.env.map(Arc::unwrap_or_clone);
        res.perf = self.perf.map(Arc::unwrap_or_clone);
        let (start, now, stop) = self.times;
        res.times.start = rfc3339(start);
        res.times.now = rfc3339(now);
        res.times.stop = stop.map(rfc3339);
        for (name, snap) in self.fds {
            let value = snap.map(|s| s.to_fd_res());
            res.fds.insert(name, value);
        }
        res
    }
}

impl FdSnap {
    /// For a kept file with a head/tail window (`"memory": true`): the stream
    /// offsets an attached result leaves out, if any.
    fn window_gap(&self, len: u64) -> Option<std::ops::Range<u64>> {
        let (head, tail) = self.window.filter(|_| self.attached)?;
        (len > head.saturating_add(tail)).then(|| head..len - tail)
    }

    /// An attached kept file's bytes: the whole stream, or with a window its
    /// head followed by its tail, appended to one buffer by `read(start, stop,
    /// out)`.
    fn windowed(
        &self,
        len: u64,
        mut read: impl FnMut(u64, u64, &mut Vec<u8>) -> Result<(), Errno>,
    ) -> Result<Bytes, Errno> {
        let mut out = Vec::new();
        match self.window_gap(len) {
            None => read(0, len, &mut out)?,
            Some(gap) => {
                read(0, gap.start, &mut out)?;
                read(gap.end, len, &mut out)?;
            }
        }
        Ok(Bytes::from(out))
    }

    fn to_fd_res(&self) -> FdRes {
        let (length, dropped, held, limited) = match &self.content {
            Content::Kept(k) => (k.len, self.window_gap(k.len), None, false),
            Content::Memory(f) => (f.len(), f.dropped(), Some(f.held() as u64), f.limited()),
            Content::Counts {
                len,
                dropped,
                held,
                limited,
            } => (*len, dropped.clone(), Some(*held), *limited),
            Content::Range { len, .. } => (*len, None, None, false),
            Content::File(file) => {
                // Nothing of a tempfile is held in memory; `held` is not reported.
                (fd::file_len(&**file).unwrap_or(0), None, None, false)
            }
            // Compressed: what is held is the compressed form (see `compression`).
            Content::Zstd(p) => {
                let gap = p.dropped().or_else(|| self.window_gap(p.raw_len()));
                (p.raw_len(), gap, None, false)
            }
        };
        // `held` only when it says something: with nothing dropped it equals
        // `length`, and the result keeps Procstar's keys.
        let ext = FdExt {
            held: held.filter(|_| dropped.is_some()),
            dropped: dropped.map(|r| Dropped {
                start: r.start,
                stop: r.end,
            }),
            limited,
            compression: self.compression.clone(),
            path: match &self.content {
                Content::Kept(k) => Some(k.path.to_string_lossy().into_owned()),
                Content::Zstd(Packed::File(f)) => {
                    f.path.as_ref().map(|p| p.to_string_lossy().into_owned())
                }
                _ => None,
            },
        };
        if !self.attached {
            return FdRes::Detached {
                length,
                encoding: match self.encoding {
                    spec::Encoding::Utf8 => Encoding::Utf8,
                    spec::Encoding::Base64 => Encoding::Base64,
                },
                ext,
            };
        }
        let data = match &self.content {
            Content::Kept(k) => {
                let read = |a, b, out: &mut Vec<u8>| read_file_into(&*k.open()?, a, b, out);
                match self.windowed(k.len, read) {
                    Ok(b) => b,
                    Err(_) => return FdRes::Error,
                }
            }
            Content::Memory(f) => f.contiguous(),
            Content::Counts { .. } | Content::Range { .. } => return FdRes::Error,
            Content::File(file) => match read_file(file, 0, length) {
                Ok(b) => b,
                Err(_) => return FdRes::Error,
            },
            // The held bytes (a range read skips a dropped middle), or a kept
            // file's head/tail window of its compressed form.
            Content::Zstd(p) => {
                let read =
                    |a, b, out: &mut Vec<u8>| p.read(a, b, out).map(drop).map_err(|_| Errno::IO);
                match self.windowed(p.raw_len(), read) {
                    Ok(b) => b,
                    Err(_) => return FdRes::Error,
                }
            }
        };
        match self.encoding {
            spec::Encoding::Utf8 => FdRes::Text {
                bytes: data,
                length,
                ext,
            },
            spec::Encoding::Base64 => FdRes::Data {
                bytes: data,
                length,
                ext,
            },
        }
    }
}

impl Proc {
    /// Builds the result snapshot (fd contents filled in by the caller). A
    /// running process is sampled first, so a live result is current.
    pub fn snapshot(&mut self, stat_ctx: Option<&StatContext>) -> Snapshot {
        self.snapshot_with(stat_ctx, false)
    }

    /// As [`Proc::snapshot`]; with `brief`, every capture as detached (its
    /// counts only: no bytes copied or read).
    pub fn snapshot_with(&mut self, stat_ctx: Option<&StatContext>, brief: bool) -> Snapshot {
        if let (Life::Running, Some(ctx)) = (&self.life, stat_ctx) {
            let mut buf = Vec::with_capacity(1024);
            let _ = self.sample(ctx, &mut buf);
            self.read_io(&mut buf);
        }
        let now = SystemTime::now();
        let (status, rusage) = match &self.life {
            Life::Done { status, rusage } => {
                (Some(Status::from_wait_status(*status)), Some(*rusage))
            }
            _ => (None, None),
        };
        let state = if !self.errors.is_empty() {
            State::Error
        } else if self.takes_output() || matches!(self.life, Life::Queued | Life::Opening) {
            State::Running
        } else {
            State::Terminated
        };
        let elapsed = match self.stop {
            Some((_, mono)) => mono.duration_since(self.start_mono),
            None => self.start_mono.elapsed(),
        };
        let res = ProcRes {
            state,
            errors: self.errors.clone(),
            pid: self.pid,
            status,
            rusage,
            proc_stat: self.proc_stat.clone(),
            proc_statm: self.sampled.statm,
            cgroup_accounting: None,
            // The times' text and the perf counts are filled in by `into_res`.
            times: Times {
                start: String::new(),
                now: String::new(),
                stop: None,
                elapsed: elapsed.as_secs_f64(),
            },
            fds: Default::default(),
            failure: self.failure.as_ref().map(|f| ResFailure {
                stage: f.stage.name().to_string(),
                errno: f.errno.raw_os_error(),
                fd: (f.fd >= 0).then_some(f.fd),
            }),
            cwd: self.started_with.cwd.clone(),
            umask: self.started_with.umask,
            env: None, // from `Snapshot::env`, on the caller's thread
            timeout: self.timeout.as_ref().map(TimeoutState::to_res),
            proc_io: self.sampled.io,
            statm_samples: self.sampled.to_res(),
            perf: None,
        };
        let fds = self
            .fds
            .iter()
            .map(|(name, idx)| {
                let snap = idx.and_then(|i| self.captures.get(i)).map(|c| FdSnap {
                    encoding: c.encoding,
                    attached: c.attached && !brief,
                    content: if c.attached && !brief {
                        c.content()
                    } else {
                        c.counts()
                    },
                    compression: c.compression_res(),
                    window: c.window,
                });
                (name.clone(), snap)
            })
            .collect();
        Snapshot {
            res,
            fds,
            env: self.started_with.env.clone(),
            perf: self.perf.as_ref().map(|p| p.shared()),
            times: (self.start, now, self.stop.map(|(t, _)| t)),
        }
    }
}

impl Sampled {
    fn to_res(&self) -> Option<SamplesRes> {
        Some(SamplesRes {
            count: self.count,
            last_at: rfc3339(self.last_at?),
            peak_resident: self.peak_resident,
            peak_size: self.peak_size,
        })
    }
}

impl TimeoutState {
    fn to_res(&self) -> crate::result::TimeoutRes {
        crate::result::TimeoutRes {
            after: self.after.as_secs_f64(),
            signal: crate::signal::signal_name(self.signum)
                .map_or_else(|| self.signum.to_string(), str::to_string),
            kill_after: self.kill_after.map(|d| d.as_secs_f64()),
            fired: self.fired_at.is_some(),
            fired_at: self.fired_at.map(rfc3339),
            killed: self.killed,
        }
    }
}

/// RFC 3339 with nanoseconds, as Procstar prints times.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let ns = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
        .unwrap_or(0);
    crate::metrics::format_rfc3339(ns)
}

#[cfg(test)]
mod tests {
    use super::super::store::{Capture, KeptContent, PipeIn, Store};
    use super::*;
    use crate::capture::headtail::HeadTail;
    use crate::result::Rusage;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::io::Write as _;

    /// A finished memory capture that was given `bytes`, held within `head`
    /// and `tail`.
    fn frozen(bytes: &[u8], head: usize, tail: usize) -> Arc<crate::capture::headtail::Frozen> {
        let mut live = HeadTail::new(head, tail);
        live.push(bytes);
        Arc::new(live.freeze())
    }

    fn snap(content: Content, encoding: spec::Encoding, attached: bool) -> FdSnap {
        FdSnap {
            encoding,
            attached,
            content,
            compression: None,
            window: None,
        }
    }

    /// The fd's result as JSON, as Procstar's clients read it.
    fn shown(s: &FdSnap) -> Value {
        serde_json::to_value(s.to_fd_res()).unwrap()
    }

    #[test]
    fn a_whole_utf8_capture_renders_as_text_without_length() {
        let s = snap(
            Content::Memory(frozen(b"hello\n", 64, 64)),
            spec::Encoding::Utf8,
            true,
        );
        assert_eq!(
            shown(&s),
            json!({"type": "text", "text": "hello\n", "encoding": "utf-8"})
        );
    }

    #[test]
    fn a_whole_base64_capture_renders_as_data_without_length() {
        let s = snap(
            Content::Memory(frozen(&[0, 0xff, 1], 64, 64)),
            spec::Encoding::Base64,
            true,
        );
        assert_eq!(
            shown(&s),
            json!({"type": "data", "data": "AP8B", "encoding": "base64"})
        );
    }

    #[test]
    fn a_dropped_middle_renders_length_dropped_and_held() {
        let s = snap(
            Content::Memory(frozen(b"abcdefgh", 2, 2)),
            spec::Encoding::Utf8,
            true,
        );
        assert_eq!(
            shown(&s),
            json!({"type": "text", "text": "abgh", "encoding": "utf-8", "length": 8,
                   "dropped": {"start": 2, "stop": 6}, "held": 4})
        );
    }

    #[test]
    fn a_detached_capture_renders_its_length_and_encoding_only() {
        let s = snap(
            Content::Memory(frozen(b"hello\n", 64, 64)),
            spec::Encoding::Utf8,
            false,
        );
        assert_eq!(
            shown(&s),
            json!({"type": "detached", "length": 6, "encoding": "utf-8"})
        );
        // What was dropped is said detached too.
        let s = snap(
            Content::Memory(frozen(b"abcdefgh", 2, 2)),
            spec::Encoding::Base64,
            false,
        );
        assert_eq!(
            shown(&s),
            json!({"type": "detached", "length": 8, "encoding": "base64",
                   "dropped": {"start": 2, "stop": 6}, "held": 4})
        );
    }

    #[test]
    fn live_counts_render_detached_but_not_attached() {
        let counts = Content::Counts {
            len: 10,
            dropped: None,
            held: 10,
            limited: true,
        };
        let s = snap(counts.clone(), spec::Encoding::Utf8, false);
        assert_eq!(
            shown(&s),
            json!({"type": "detached", "length": 10, "encoding": "utf-8", "limited": true})
        );
        // Counts carry no bytes to inline.
        let s = snap(counts, spec::Encoding::Utf8, true);
        assert_eq!(s.to_fd_res(), FdRes::Error);
    }

    #[test]
    fn a_tempfile_is_read_whole() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"from a file").unwrap();
        let file = Arc::new(rustix::fd::OwnedFd::from(f));
        let s = snap(Content::File(file), spec::Encoding::Utf8, true);
        assert_eq!(
            shown(&s),
            json!({"type": "text", "text": "from a file", "encoding": "utf-8"})
        );
    }

    #[test]
    fn a_kept_file_renders_its_path_and_an_attached_window_of_head_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kept");
        std::fs::write(&path, b"0123456789").unwrap();
        let kept = Content::Kept(KeptContent {
            file: None,
            path: Arc::from(path.as_path()),
            len: 10,
        });
        let p = path.to_string_lossy();
        let mut s = snap(kept, spec::Encoding::Utf8, true);
        s.window = Some((2, 3));
        assert_eq!(
            shown(&s),
            json!({"type": "text", "text": "01789", "encoding": "utf-8", "length": 10,
                   "dropped": {"start": 2, "stop": 7}, "path": p})
        );
        // Detached, nothing is left out: the whole file is there to fetch.
        s.attached = false;
        assert_eq!(
            shown(&s),
            json!({"type": "detached", "length": 10, "encoding": "utf-8", "path": p})
        );
        // Without a window, attached is the whole file.
        s.attached = true;
        s.window = None;
        assert_eq!(
            shown(&s),
            json!({"type": "text", "text": "0123456789", "encoding": "utf-8", "path": p})
        );
    }

    #[test]
    fn an_unreadable_kept_file_renders_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let kept = Content::Kept(KeptContent {
            file: None,
            path: Arc::from(dir.path().join("gone").as_path()),
            len: 3,
        });
        let s = snap(kept, spec::Encoding::Utf8, true);
        assert_eq!(s.to_fd_res(), FdRes::Error);
    }

    /// A finished process whose stdout was captured as `out`, in memory.
    fn finished(out: &[u8]) -> Proc {
        let mut p = Proc::queued("p".into(), 1);
        p.pid = Some(42);
        p.life = Life::Done {
            status: 3 << 8,
            rusage: Rusage {
                utime: 0.0,
                stime: 0.0,
                maxrss: 0,
                minflt: 0,
                majflt: 0,
                nswap: 0,
                inblock: 0,
                oublock: 0,
                nvcsw: 0,
                nivcsw: 0,
            },
        };
        p.stop = Some((SystemTime::now(), std::time::Instant::now()));
        p.fds = vec![("stdin".into(), None), ("stdout".into(), Some(0))];
        p.captures = vec![Capture {
            name: "stdout".into(),
            encoding: spec::Encoding::Utf8,
            attached: true,
            store: Store::Memory {
                pipe: PipeIn::default(),
                live: HeadTail::default(),
                frozen: Some(frozen(out, 64, 64)),
            },
            window: None,
            compression: None,
        }];
        p
    }

    #[test]
    fn a_finished_snapshot_renders_every_fd_in_the_spec_and_its_status() {
        let mut p = finished(b"hi");
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "1".to_string());
        p.started_with.env = Some(Arc::new(env.clone()));
        let res = p.snapshot(None).into_res();
        assert_eq!(res.state, State::Terminated);
        assert_eq!(res.pid, Some(42));
        assert_eq!(res.status.as_ref().and_then(|s| s.exit_code), Some(3));
        assert!(res.times.stop.is_some());
        assert_eq!(res.env, Some(env));
        assert_eq!(
            res.fds.keys().collect::<Vec<_>>(),
            ["stdin", "stdout"],
            "every fd of the spec, captured or not"
        );
        assert_eq!(res.fds["stdin"], None);
        assert_eq!(res.fds["stdout"], Some(FdRes::text(&b"hi"[..])));
    }

    #[test]
    fn a_brief_snapshot_renders_every_capture_detached() {
        let mut p = finished(b"hi");
        let res = p.snapshot_with(None, true).into_res();
        assert_eq!(
            serde_json::to_value(&res.fds["stdout"]).unwrap(),
            json!({"type": "detached", "length": 2, "encoding": "utf-8"})
        );
    }

    #[test]
    fn the_state_follows_life_and_errors() {
        let mut p = Proc::queued("p".into(), 1);
        assert_eq!(p.snapshot(None).res.state, State::Running, "queued");
        p.life = Life::Exiting;
        assert_eq!(p.snapshot(None).res.state, State::Running, "exiting");
        p.life = Life::NotStarted;
        assert_eq!(p.snapshot(None).res.state, State::Terminated, "not started");
        p.errors.push("failed to set up fd 1: ...".into());
        let res = p.snapshot(None).res;
        assert_eq!(res.state, State::Error, "any error");
        assert_eq!(res.errors, ["failed to set up fd 1: ..."]);
        assert_eq!(res.status, None);
    }

    #[test]
    fn rfc3339_has_nanoseconds_and_a_utc_offset() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1, 500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.000000500+00:00");
        // Before 1970 is clamped to the epoch.
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(5);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000000000+00:00");
    }
}
