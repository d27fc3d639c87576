//! [`Solo`]: one process at a time, spawned and waited for on the calling
//! thread, with the agent's plan, spawn and result.
//!
//! `chaperone bench` runs its sequential runs here. Between one run's exit
//! and the next clone no other thread is woken and nothing is kept of the
//! process but its result, so the runner's own work stays off the CPU its
//! child needs. What needs the reactor (captures, pipes between processes,
//! timeouts) is refused by [`Solo::supports`] and goes to an agent.
//!
//! Its perf counters are held on the calling thread and inherited by each
//! child ([`Inherited`]), rather than opened by each child before its exec and
//! closed after it: a run's counts are what they gained from just before its
//! clone to its exit. Should that fail (no counter opens, or the kernel loses
//! them), each child opens its own, as in the agent.

use super::Config;
use super::proc::{self, EnvCache, Life, NullFds, PlanContext, Proc, RequestPipes};
use crate::metrics::perf::{Inherited, PerfState};
use crate::metrics::procstat::StatContext;
use crate::result::ProcRes;
use crate::spec::{FdSpec, ProcSpec};
use crate::sys::spawn::{ChildStack, spawn};
use crate::sys::wait;
use std::ffi::OsString;
use std::path::PathBuf;

/// Runs processes one at a time on the calling thread.
pub(crate) struct Solo {
    config: Config,
    /// The environment and working directory children start from, read once
    /// (as the agent reads its own).
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    null_fds: NullFds,
    env_cache: EnvCache,
    stack: ChildStack,
    /// The last run's perf counters and pidfd, closed once the next child is
    /// on its way.
    closing: Vec<rustix::fd::OwnedFd>,
    /// For `/proc` reads of the zombie (`Config::read_proc_at_exit`).
    stat_ctx: Option<StatContext>,
    stat_buf: Vec<u8>,
    /// The perf counters children inherit, once a run asked for them.
    held: Option<Inherited>,
    /// Set when held counters failed: each child opens its own from then on.
    held_off: bool,
}

impl std::fmt::Debug for Solo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solo").finish_non_exhaustive()
    }
}

impl Solo {
    /// A runner with the plan settings of `config` (its threads, ring and
    /// sampling settings do not apply).
    pub fn new(config: Config) -> std::io::Result<Solo> {
        Ok(Solo {
            config,
            env: std::env::vars_os().collect(),
            cwd: std::env::current_dir().ok(),
            null_fds: NullFds::default(),
            env_cache: EnvCache::default(),
            stack: ChildStack::new().map_err(std::io::Error::from)?,
            closing: Vec::new(),
            stat_ctx: StatContext::from_system().ok(),
            stat_buf: Vec::with_capacity(1024),
            held: None,
            held_off: false,
        })
    }

    /// Whether `spec` can run here: its fds are inherited, closed, `/dev/null`,
    /// files or duplicates (no capture, no pipe to another process), and it has
    /// no timeout.
    pub fn supports(spec: &ProcSpec) -> bool {
        spec.timeout.is_none()
            && spec.fds.iter().all(|(_, fs)| {
                matches!(
                    fs,
                    FdSpec::Inherit
                        | FdSpec::Close
                        | FdSpec::Null { .. }
                        | FdSpec::File { .. }
                        | FdSpec::Dup { .. }
                )
            })
    }

    /// Runs `spec` as process `id` to its end: plan, spawn, a blocking wait
    /// on its pidfd, its `/proc` files (with `Config::read_proc_at_exit`) and
    /// perf counters read from the zombie, the reap. Without the `/proc`
    /// reads, one `waitid` waits and reaps, and the stop time is taken after
    /// it (as hyperfine's is after `wait4`), a few µs later than the agent's.
    /// Its result is the agent's, from the same code. A spec [`Solo::supports`] refuses is not
    /// started, and its result says why.
    pub fn run(&mut self, id: &str, spec: &ProcSpec) -> ProcRes {
        if !Solo::supports(spec) {
            let mut p = unrequested(id);
            p.errors.push(format!(
                "proc {id}: captures, pipes between processes and timeouts need an agent \
                 (this runner runs one process at a time without one)"
            ));
            p.life = Life::NotStarted;
            return result(p);
        }
        let mut tries = 0;
        loop {
            tries += 1;
            // Out of fds or processes with nothing else running: what this
            // runner holds (the last run's pidfd, and its counters when it
            // opened its own) may be what was short,
            // so it lets go and tries again, as often as the agent tries a
            // process that runs alone.
            let again = tries < proc::ALONE_RETRIES;
            let ctx = PlanContext::new(
                &self.config,
                &self.env,
                self.cwd.as_deref(),
                &self.null_fds,
                // One process at a time: no other's fds to keep the low ones
                // free for, so none is moved.
                0,
            );
            // `prepare` opens files and looks up users on this thread: a
            // FIFO's open waits here, as a shell's would.
            let mut prep = proc::prepare(
                id,
                spec,
                &ctx,
                &mut RequestPipes::new(),
                &mut self.env_cache,
                Vec::new(),
            );
            if prep.out_of_fds {
                if again && !self.closing.is_empty() {
                    self.closing.clear();
                    continue;
                }
                prep.errors.push(proc::out_of_fds_message(0));
            }
            // Before the start is stamped: the held counters' first open and
            // the read are the runner's, not the run's.
            let inherit = prep.plan.is_some() && self.hold_for(prep.perf.as_ref());
            if inherit {
                if let Some(held) = self.held.as_mut() {
                    // What other children added is not this one's.
                    held.mark();
                }
            }
            let mut p = unrequested(id);
            let (mut plan, exe) = p.launched(prep);
            if let (true, Some(plan)) = (inherit, plan.as_mut()) {
                plan.clear_perf();
            }
            match plan.map(|plan| spawn(plan, &mut self.stack)) {
                Some(Ok(child)) => {
                    let pidfd = p.started(child, &exe, 0);
                    // Enabled by its exec, when it got that far.
                    let ran = p.failure.is_none();
                    // Closing a counter tears it down (some µs each): done
                    // while this child runs rather than between its exit and
                    // the next clone.
                    self.closing.clear();
                    let read_proc = if self.config.read_proc_at_exit {
                        self.stat_ctx.as_ref().map(|c| (c, &mut self.stat_buf))
                    } else {
                        None
                    };
                    // With the `/proc` reads: a wait, the reads of the
                    // zombie, the reap (a wait that failed reads nothing; the
                    // reap says what went wrong). Without: one waitid waits
                    // and reaps, and the counters, stopped at the exit, keep
                    // their final counts.
                    let reading = read_proc.is_some();
                    let exited = if reading {
                        wait::wait_exited(&*pidfd).is_ok()
                    } else {
                        p.reap()
                    };
                    if exited {
                        if inherit {
                            take_counts(&mut self.held, &mut self.held_off, &mut p, ran);
                        }
                        self.closing = p.exited(read_proc);
                    } else if let (true, Some(perf)) = (inherit, p.perf.as_mut()) {
                        perf.never_ran("no counts: the process's exit was not seen");
                    }
                    if reading {
                        p.reap();
                    }
                    // The pidfd too closes while the next child runs.
                    self.closing.extend(std::rc::Rc::into_inner(pidfd));
                }
                Some(Err(e)) if again && (proc::out_of_fds(e) || proc::out_of_tasks(e)) => {
                    self.closing.clear();
                    continue;
                }
                Some(Err(e)) => {
                    p.errors.extend(proc::spawn_failed(e, 0));
                    p.life = Life::NotStarted;
                }
                None => p.life = Life::NotStarted,
            }
            return result(p);
        }
    }

    /// Lets go of the held counters (they open again at the next run that asks
    /// for them): a caller about to start threads on this thread does so first,
    /// so that they, and every child they spawn, do not carry copies.
    pub fn release_counters(&mut self) {
        self.held = None;
    }

    /// Whether runs may count through held counters (the default), or each
    /// child opens its own, as in the agent: a benchmark whose commands ask
    /// for different events says no, so that each is measured alike whatever
    /// the order of its runs. Saying yes again also retries after a failure.
    pub fn hold_counters(&mut self, allowed: bool) {
        if !allowed {
            self.held = None;
        }
        self.held_off = !allowed;
    }

    /// Whether counters are held now (for tests).
    #[cfg(test)]
    pub(crate) fn holds_counters(&self) -> bool {
        self.held.is_some()
    }

    /// Whether the child of a proc with counters `perf` (still to open) counts
    /// through the held ones: opens them for its events on this thread when
    /// there are none here yet. No, from then on, when that fails (but for a
    /// lack of fds) or when a proc asks for other events than the held ones
    /// count: then every child opens its own, as in the agent.
    fn hold_for(&mut self, perf: Option<&PerfState>) -> bool {
        let Some(PerfState::Pending(setup)) = perf else {
            return false;
        };
        if self.held_off || setup.is_empty() {
            return false;
        }
        if let Some(held) = &self.held {
            if !held.on_this_thread() {
                self.held = None;
            } else if held.counts(setup) {
                return true;
            } else {
                // Every child inherits the held counters, a child counting
                // other events too: commands that ask for different events
                // would not be measured alike. Each opens its own from now.
                self.held = None;
                self.held_off = true;
                return false;
            }
        }
        match Inherited::open(setup.clone()) {
            Ok(held) => {
                self.held = Some(held);
                true
            }
            // Short of fds for now: this child opens its own (and says why
            // any did not open); the next run tries again.
            Err(e) if proc::out_of_fds(e) => false,
            Err(_) => {
                self.held_off = true;
                false
            }
        }
    }
}

/// Gives `p`, which has exited, the counts the held counters gained since
/// its clone; when they were lost (`ran` but never enabled), says so in its
/// counts and lets go of the held counters for good.
fn take_counts(held: &mut Option<Inherited>, off: &mut bool, p: &mut Proc, ran: bool) {
    // The exit was seen now, not after the reading below.
    p.stamp_exit();
    let (Some(h), Some(perf)) = (held.as_mut(), p.perf.as_mut()) else {
        return;
    };
    match h.since(ran) {
        Some(res) => perf.counted(res),
        None => {
            perf.never_ran(
                "no counts: the kernel did not count this child under the runner's \
                 inherited counters (later runs open their own)",
            );
            *held = None;
            *off = true;
        }
    }
}

/// A process of no start request.
fn unrequested(id: &str) -> Proc {
    let mut p = Proc::queued(id.to_string(), 0);
    p.request = None;
    p
}

/// The result of a process run here, settled.
fn result(mut p: Proc) -> ProcRes {
    p.settle_quietly();
    let snap = p.snapshot(None);
    // Gone first, so the result takes the perf counts without a copy.
    drop(p);
    snap.into_res()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::spec::{Input, Specs};
    use crate::{Agent, Config};
    use serde_json::{Value, json};

    fn spec(v: Value) -> ProcSpec {
        serde_json::from_value(v).unwrap()
    }

    /// The result of `s` run by an agent (no periodic samples: a slow run
    /// must not gain fields a quick one lacks).
    fn by_agent(s: &ProcSpec) -> ProcRes {
        let agent = Agent::new(Config {
            sample_interval: None,
            ..Config::default()
        })
        .unwrap();
        let handle = agent.handle();
        let mut specs = Specs::new();
        specs.try_insert("p".into(), s.clone()).unwrap();
        let start = handle.start(Input { specs });
        let waited = handle.wait("p");
        start.wait().unwrap();
        waited.wait().unwrap()
    }

    /// Every key path of a JSON value, arrays' items by their keys.
    fn keys(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let path = format!("{at}.{k}");
                    out.push(path.clone());
                    keys(x, &path, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|x| keys(x, &format!("{at}[]"), out)),
            _ => {}
        }
    }

    fn shape(res: &ProcRes) -> Vec<String> {
        let mut out = Vec::new();
        keys(&serde_json::to_value(res).unwrap(), "", &mut out);
        out.sort();
        out.dedup();
        out
    }

    /// Whether perf's task clock can be counted here; says so when not.
    fn counting(test: &str) -> bool {
        use crate::metrics::perf::{Access, Event, probe};
        let ok = !matches!(probe().access(Event::TaskClock), Access::Unavailable(_));
        if !ok {
            crate::test_skip(
                test,
                "perf task-clock unavailable: counts not checked",
                true,
            );
        }
        ok
    }

    fn bench_like(argv: Value) -> ProcSpec {
        let mut s = spec(json!({
            "argv": argv,
            "fds": [["stdin", {"null": {"flags": "Read"}}],
                    ["stdout", {"null": {"flags": "Write"}}],
                    ["stderr", {"dup": {"fd": 1}}]],
            "setsid": false,
        }));
        s.perf = Some(crate::bench::Metric::perf_spec());
        s
    }

    #[test]
    fn a_run_gives_the_agents_result() {
        let s = bench_like(json!(["/bin/sh", "-c", "exit 3"]));
        let mut solo = Solo::new(Config::default()).unwrap();
        let mine = solo.run("p", &s);
        let theirs = by_agent(&s);
        assert_eq!(shape(&mine), shape(&theirs));
        assert_eq!(mine.status, theirs.status);
        assert_eq!(mine.state, theirs.state);
        assert_eq!(mine.errors, theirs.errors);
        assert!(mine.pid.is_some());
        let times = &mine.times;
        assert!(times.stop.is_some() && times.elapsed > 0.0);
        assert!(crate::metrics::parse_rfc3339(&times.start).is_some());
        let perf = mine.perf.as_ref().unwrap();
        if counting("solo a_run_gives_the_agents_result") {
            // Counted in the exec'd program (a PMU-less machine still has it).
            assert!(
                perf.counts["task_clock"].is_some_and(|ns| ns > 0),
                "{perf:?}"
            );
        }
        assert_eq!(
            perf.counts.keys().collect::<Vec<_>>(),
            theirs
                .perf
                .as_ref()
                .unwrap()
                .counts
                .keys()
                .collect::<Vec<_>>()
        );
        let r = mine.rusage.unwrap();
        assert!(r.utime + r.stime > 0.0 || r.minflt > 0);
    }

    #[test]
    fn a_failed_exec_is_reported_as_the_agent_reports_it() {
        let s = bench_like(json!(["/nonexistent/solo-test"]));
        let mut solo = Solo::new(Config::default()).unwrap();
        let mine = solo.run("p", &s);
        let theirs = by_agent(&s);
        assert_eq!(mine.errors, theirs.errors);
        assert!(!mine.errors.is_empty());
        assert_eq!(mine.state, theirs.state);
        assert_eq!(
            mine.failure.as_ref().map(|f| (&f.stage, f.errno)),
            theirs.failure.as_ref().map(|f| (&f.stage, f.errno))
        );
        let perf = mine.perf.as_ref().unwrap();
        assert_eq!(perf.counts["task_clock"], None, "never ran: null, not zero");
        // A plan that fails in the parent: nothing spawned, said the same way.
        let bad = spec(
            json!({"argv": ["/bin/true"], "fds": [["stdout", {"file": {"path": "/nonexistent/dir/f"}}]]}),
        );
        let mine = solo.run("q", &bad);
        let theirs = by_agent(&bad);
        assert_eq!(mine.errors.len(), 1, "{:?}", mine.errors);
        assert_eq!(mine.state, theirs.state);
        assert_eq!(mine.pid, None);
        assert_eq!(
            mine.errors[0].replace("proc q", "proc p"),
            theirs.errors[0],
            "the same message"
        );
    }

    /// With the zombie's `/proc` files read (a wait, the reads, the reap) and
    /// without, as the bench runs (one `waitid` waits and reaps).
    #[test]
    fn runs_one_after_another_each_with_its_own_file_and_counts() {
        for read_proc_at_exit in [true, false] {
            one_after_another(read_proc_at_exit);
        }
    }

    fn one_after_another(read_proc_at_exit: bool) {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let counts = counting("solo runs_one_after_another_each_with_its_own_file_and_counts");
        let mut solo = Solo::new(Config {
            read_proc_at_exit,
            ..Config::default()
        })
        .unwrap();
        for i in 0..50 {
            let mut s = spec(json!({
                "argv": ["/bin/sh", "-c", format!("echo run {i}; echo err >&2")],
                "fds": [["stdout", {"file": {"path": out, "flags": "Write"}}],
                        ["stderr", {"dup": {"fd": 1}}]],
            }));
            s.perf = Some(crate::bench::Metric::perf_spec());
            let res = solo.run(&format!("r{i}"), &s);
            assert_eq!(res.errors, Vec::<String>::new());
            assert_eq!(res.status.as_ref().and_then(|s| s.exit_code), Some(0));
            assert_eq!(
                std::fs::read_to_string(&out).unwrap(),
                format!("run {i}\nerr\n")
            );
            let perf = res.perf.unwrap();
            assert!(!counts || perf.counts["task_clock"].is_some_and(|ns| ns > 0));
            assert_eq!(res.proc_stat.is_some(), read_proc_at_exit);
            assert!(res.times.elapsed > 0.0 && res.rusage.is_some());
        }
        // What stays open between runs is the last run's pidfd, held to be
        // closed while the next child runs (or with the runner); the counters
        // are the runner's own, which every child inherits.
        use rustix::fd::AsRawFd;
        let links: Vec<String> = solo
            .closing
            .iter()
            .map(|fd| {
                let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                link.unwrap().to_string_lossy().into_owned()
            })
            .collect();
        assert_eq!(links.len(), 1, "{links:?}");
        assert!(links[0].contains("pidfd"), "{links:?}");
        assert_eq!(solo.held.is_some(), counts);
        assert!(!solo.held_off);
        let s = bench_like(json!(["/bin/true"]));
        let res = solo.run("again", &s);
        assert!(!counts || res.perf.unwrap().counts["task_clock"].is_some_and(|ns| ns > 0));
        assert_eq!(solo.closing.len(), 1, "replaced by this run's pidfd");
    }

    /// Runs counted by the held counters each get their own counts, not the
    /// total so far: a busy run counts far more CPU than a quick one, in any
    /// order. A run of another spec in between (no counters) does not add in.
    #[test]
    fn each_run_gets_its_own_counts() {
        if !crate::metrics::perf::task_clock_or_skip("solo each_run_gets_its_own_counts") {
            return;
        }
        let mut solo = Solo::new(Config::default()).unwrap();
        let quick = bench_like(json!(["/bin/true"]));
        let busy = bench_like(json!([
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"
        ]));
        let mut plain = busy.clone();
        plain.perf = Some(crate::spec::PerfSpec::Enabled(false));
        let task_clock = |res: ProcRes| res.perf.unwrap().counts["task_clock"].unwrap();
        let (mut q, mut b) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            // Its busy child adds into the held counters, before the quick
            // one's mark.
            assert!(solo.run("plain", &plain).perf.is_none());
            q.push(task_clock(solo.run("q", &quick)));
            b.push(task_clock(solo.run("b", &busy)));
        }
        q.sort_unstable();
        b.sort_unstable();
        assert!(q[0] > 0, "{q:?}");
        assert!(b[5] > 5 * q[5], "quick {q:?} busy {b:?}");
        assert!(solo.held.is_some() && !solo.held_off);
        // Other events than the held ones: from then on every child counts
        // with counters of its own, as in the agent, and is still counted.
        let mut other = busy.clone();
        other.perf = Some(crate::spec::PerfSpec::Events(vec!["task_clock".into()]));
        let perf = solo.run("other", &other).perf.unwrap();
        assert_eq!(perf.counts.len(), 1, "{perf:?}");
        assert!(perf.counts["task_clock"].unwrap() > 5 * q[5], "{perf:?}");
        assert!(solo.held.is_none() && solo.held_off);
        let again = task_clock(solo.run("q", &quick));
        assert!(again > 0 && again < b[5], "{again} {b:?}");
    }

    #[test]
    fn supports_only_what_needs_no_reactor() {
        assert!(Solo::supports(&bench_like(json!(["/bin/true"]))));
        let capture = spec(
            json!({"argv": ["/bin/true"], "fds": [["stdout", {"capture": {"mode": "memory"}}]]}),
        );
        assert!(!Solo::supports(&capture));
        let timeout = spec(json!({"argv": ["/bin/true"], "timeout": {"after": 1}}));
        assert!(!Solo::supports(&timeout));
        let pipe = spec(json!({"argv": ["/bin/true"], "fds": [["stdout", "pipe-write"]]}));
        assert!(!Solo::supports(&pipe));
        // Given one anyway, it does not start it, and says why.
        let res = Solo::new(Config::default()).unwrap().run("c", &capture);
        assert_eq!(res.pid, None);
        assert_eq!(res.state, crate::result::State::Error);
        assert!(res.errors[0].contains("need an agent"), "{:?}", res.errors);
    }
}
