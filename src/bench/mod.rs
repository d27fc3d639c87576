//! A command benchmark runner over the embedding API: what `chaperone bench`
//! runs, and what a `benches/` harness can use to measure child processes.
//!
//! Each run is one process started by an [`Agent`] (so it never forks, and
//! every child control of a spec applies) and measured from its clone to its
//! exit: wall time from the pidfd, rusage at the reap, and perf counters
//! counted in the child from exec. Several commands run interleaved so that a
//! noisy machine's drift falls on all of them alike.
//!
//! ```
//! use chaperone::bench::{self, Command, Metric, Plan, Runner};
//! let mut runner = Runner::new()?;
//! let commands = vec![Command::argv("true", &["/bin/true"])];
//! let plan = Plan { runs: Some(5), ..Plan::default() };
//! let outcome = runner.bench(&commands, &plan, &mut |_| {})?;
//! let wall = outcome.commands[0].summary(Metric::Wall).expect("5 runs");
//! assert_eq!(wall.n, 5);
//! assert!(wall.median > 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Max RSS: a child spawned with `CLONE_VM` execs from the agent's address
//! space, and the kernel counts that address space's peak into the child's
//! `ru_maxrss` (`exec_mmap` → `setmax_mm_hiwater_rss`). A fork-based runner has
//! the same floor at its own size. The runner lowers its floor by resetting its
//! own peak before it starts (`/proc/self/clear_refs`), and reports what the
//! floor was ([`Outcome::rss_floor`]) so that a max RSS at the floor reads as
//! "at most this".

pub mod report;
pub mod stats;
pub mod words;

#[cfg(feature = "cli")]
pub mod cli;

use crate::metrics::perf::Event;
use crate::result::ProcRes;
use crate::spec::{self, Input, ProcSpec, Specs};
use crate::supervisor::solo::Solo;
use crate::{Agent, Config, StartError};
use serde::Serialize;
use stats::Summary;
use std::time::{Duration, Instant};

//------------------------------------------------------------------------------
// Metrics
//------------------------------------------------------------------------------

/// What a figure counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Seconds.
    Seconds,
    /// Bytes.
    Bytes,
    /// A count of events.
    Count,
}

/// One figure measured for every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Wall time, clone to exit seen on the pidfd.
    Wall,
    /// User CPU time (rusage).
    User,
    /// System CPU time (rusage).
    System,
    /// User plus system time.
    Cpu,
    /// Peak resident set (rusage; see the module docs on its floor).
    MaxRss,
    /// Minor page faults (rusage).
    MinorFaults,
    /// Major page faults (rusage).
    MajorFaults,
    /// Voluntary context switches (rusage).
    VoluntaryCs,
    /// Involuntary context switches (rusage).
    InvoluntaryCs,
    /// perf task-clock: time on a CPU, counted by the kernel's scheduler.
    TaskClock,
    /// perf page faults.
    PageFaults,
    /// perf context switches.
    ContextSwitches,
    /// perf CPU migrations.
    CpuMigrations,
    /// perf cycles (hardware PMU).
    Cycles,
    /// perf instructions (hardware PMU).
    Instructions,
    /// perf cache misses (hardware PMU).
    CacheMisses,
    /// perf branch misses (hardware PMU).
    BranchMisses,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 17] = [
        Metric::Wall,
        Metric::User,
        Metric::System,
        Metric::Cpu,
        Metric::MaxRss,
        Metric::MinorFaults,
        Metric::MajorFaults,
        Metric::VoluntaryCs,
        Metric::InvoluntaryCs,
        Metric::TaskClock,
        Metric::PageFaults,
        Metric::ContextSwitches,
        Metric::CpuMigrations,
        Metric::Cycles,
        Metric::Instructions,
        Metric::CacheMisses,
        Metric::BranchMisses,
    ];

    /// The metrics `--metric` may choose as primary.
    pub const PRIMARY: [Metric; 5] = [
        Metric::Wall,
        Metric::Cpu,
        Metric::TaskClock,
        Metric::Instructions,
        Metric::MaxRss,
    ];

    /// Its name in options, tables and exports (`max-rss`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Wall => "wall",
            Metric::User => "user",
            Metric::System => "system",
            Metric::Cpu => "cpu",
            Metric::MaxRss => "max-rss",
            Metric::MinorFaults => "minor-faults",
            Metric::MajorFaults => "major-faults",
            Metric::VoluntaryCs => "voluntary-cs",
            Metric::InvoluntaryCs => "involuntary-cs",
            Metric::TaskClock => "task-clock",
            Metric::PageFaults => "page-faults",
            Metric::ContextSwitches => "context-switches",
            Metric::CpuMigrations => "cpu-migrations",
            Metric::Cycles => "cycles",
            Metric::Instructions => "instructions",
            Metric::CacheMisses => "cache-misses",
            Metric::BranchMisses => "branch-misses",
        }
    }

    /// The metric named `name`.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.iter().copied().find(|m| m.name() == name)
    }

    /// What it counts.
    pub fn unit(self) -> Unit {
        match self {
            Metric::Wall | Metric::User | Metric::System | Metric::Cpu | Metric::TaskClock => {
                Unit::Seconds
            }
            Metric::MaxRss => Unit::Bytes,
            _ => Unit::Count,
        }
    }

    /// Whether it needs a hardware PMU.
    pub fn is_hardware(self) -> bool {
        self.perf_event().is_some_and(Event::is_hardware)
    }

    /// Its index in [`Metric::ALL`] (and in [`Run::values`]).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The perf event behind it, if it is one.
    fn perf_event(self) -> Option<Event> {
        Some(match self {
            Metric::TaskClock => Event::TaskClock,
            Metric::PageFaults => Event::PageFaults,
            Metric::ContextSwitches => Event::ContextSwitches,
            Metric::CpuMigrations => Event::CpuMigrations,
            Metric::Cycles => Event::Cycles,
            Metric::Instructions => Event::Instructions,
            Metric::CacheMisses => Event::CacheMisses,
            Metric::BranchMisses => Event::BranchMisses,
            _ => return None,
        })
    }

    /// The perf counters a bench run asks for: those behind a metric, and no
    /// more. Each counter costs a run about 6 µs (its open in the child, its
    /// share of every context switch and fault, its teardown at exit);
    /// minor and major faults come from rusage, so their perf counters
    /// would only slow every run down.
    pub fn perf_spec() -> crate::spec::PerfSpec {
        crate::spec::PerfSpec::Events(
            Metric::ALL
                .iter()
                .filter_map(|m| m.perf_event())
                .map(|e| e.name().to_string())
                .collect(),
        )
    }

    /// Its value in `res`, if measured.
    pub fn of(self, res: &ProcRes) -> Option<f64> {
        if let Some(event) = self.perf_event() {
            let count = (*res.perf.as_ref()?.counts.get(event.name())?)? as f64;
            return Some(if self == Metric::TaskClock {
                count / 1e9
            } else {
                count
            });
        }
        if self == Metric::Wall {
            return Some(res.times.elapsed);
        }
        let r = res.rusage.as_ref()?;
        Some(match self {
            Metric::User => r.utime,
            Metric::System => r.stime,
            Metric::Cpu => r.utime + r.stime,
            Metric::MaxRss => r.maxrss as f64,
            Metric::MinorFaults => r.minflt as f64,
            Metric::MajorFaults => r.majflt as f64,
            Metric::VoluntaryCs => r.nvcsw as f64,
            Metric::InvoluntaryCs => r.nivcsw as f64,
            _ => unreachable!("perf metrics are handled above"),
        })
    }
}

//------------------------------------------------------------------------------
// What to run
//------------------------------------------------------------------------------

/// One command to benchmark.
#[derive(Debug, Clone)]
pub struct Command {
    /// Its name in reports.
    pub name: String,
    /// How to start it (each run gets a fresh id).
    pub spec: ProcSpec,
    /// Parameter values substituted into it (`--parameter-scan`), in order.
    pub parameters: Vec<(String, String)>,
    /// Run before each of its runs, warmups included; not measured.
    pub prepare: Option<ProcSpec>,
    /// Run after each of its runs; not measured.
    pub conclude: Option<ProcSpec>,
    /// Run once after all of its runs.
    pub cleanup: Option<ProcSpec>,
    /// Run once before any of its runs (warmups included).
    pub setup: Option<ProcSpec>,
}

impl Command {
    /// A command that execs `argv` directly, with stdin, stdout and stderr on
    /// /dev/null and every perf counter behind a metric on.
    pub fn argv(name: &str, argv: &[&str]) -> Command {
        Command::new(
            name.to_owned(),
            bench_spec(argv.iter().map(|s| s.to_string()).collect(), Output::Null),
        )
    }

    /// A command with this name and spec, nothing around it.
    pub fn new(name: String, spec: ProcSpec) -> Command {
        Command {
            name,
            spec,
            parameters: Vec::new(),
            prepare: None,
            conclude: None,
            cleanup: None,
            setup: None,
        }
    }
}

/// Where a benchmarked command's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// /dev/null (the default).
    Null,
    /// A pipe the agent drains and keeps only the last 4 KiB of.
    Pipe,
    /// The runner's own stdout and stderr.
    Inherit,
    /// This file, truncated before each run.
    File(String),
}

/// A spec that runs `argv` with stdin from /dev/null, its output to `output`,
/// every perf counter behind a metric on ([`Metric::perf_spec`]), and no
/// session of its own.
pub fn bench_spec(argv: Vec<String>, output: Output) -> ProcSpec {
    let devnull = |flags: &str| serde_json::json!({"null": {"flags": flags}});
    let out = match &output {
        Output::Null => Some(devnull("Write")),
        Output::Pipe => Some(serde_json::json!({"capture": {"mode": "memory", "tail": 4096}})),
        Output::Inherit => None,
        Output::File(path) => Some(serde_json::json!({"file": {"path": path, "flags": "Write"}})),
    };
    let mut fds = vec![serde_json::json!(["stdin", devnull("Read")])];
    if let Some(out) = out {
        // A file is opened once and shared, as `>FILE 2>&1` would.
        let err = match &output {
            Output::File(_) => serde_json::json!({"dup": {"fd": 1}}),
            _ => out.clone(),
        };
        fds.push(serde_json::json!(["stdout", out]));
        fds.push(serde_json::json!(["stderr", err]));
    }
    // In the runner's session and process group, as a shell or hyperfine runs
    // a command (a ^C reaches it too), which also saves a setsid per run.
    let json = serde_json::json!({"argv": argv, "fds": fds, "setsid": false});
    let mut spec: ProcSpec =
        serde_json::from_value(json).expect("a bench spec is always well formed");
    spec.perf = Some(Metric::perf_spec());
    spec
}

/// In what order the runs of several commands go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Round robin: A B C A B C … (the default).
    Interleaved,
    /// Rounds of one run each, each round shuffled (seeded, so repeatable).
    Shuffled(u64),
    /// All of A, then all of B (hyperfine's order).
    Grouped,
}

impl Order {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Order::Interleaved => "interleaved",
            Order::Shuffled(_) => "shuffled",
            Order::Grouped => "grouped",
        }
    }
}

/// The most timed runs a command gets: every run's figures are kept (a few
/// hundred bytes each), and the run order is laid out before the runs.
pub const MAX_RUNS: usize = 10_000_000;

/// How many runs, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Exactly this many timed runs per command.
    pub runs: Option<usize>,
    /// Without `runs`: at least this many (default 10)…
    pub min_runs: usize,
    /// … and at most this many…
    pub max_runs: Option<usize>,
    /// … enough to fill this time per command (default 3 s).
    pub min_time: Duration,
    /// Untimed runs per command first.
    pub warmup: usize,
    /// The order of runs.
    pub order: Order,
    /// Runs in flight at once (1: sequential).
    pub jobs: usize,
    /// Keep runs that exit non-zero instead of stopping.
    pub ignore_failure: bool,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            runs: None,
            min_runs: 10,
            max_runs: None,
            min_time: Duration::from_secs(3),
            warmup: 0,
            order: Order::Interleaved,
            jobs: 1,
            ignore_failure: false,
        }
    }
}

impl Plan {
    /// How many timed runs a command gets whose first run took `first`.
    pub fn count_for(&self, first: Duration) -> usize {
        if let Some(n) = self.runs {
            return n;
        }
        let per = first.as_secs_f64() / self.jobs.max(1) as f64;
        let want = if per > 0.0 {
            (self.min_time.as_secs_f64() / per)
                .ceil()
                .min(MAX_RUNS as f64) as usize
        } else {
            self.min_runs
        };
        let n = want.max(self.min_runs).clamp(1, MAX_RUNS);
        self.max_runs.map_or(n, |m| n.min(m.max(1)))
    }
}

/// The run order for commands with these run counts: command indices.
///
/// Interleaved spreads each command's runs evenly over the whole sequence
/// (its k-th of n runs at (k + ½)/n of the way), so that a command with 10
/// runs beside one with 3,000 is not all in the first rounds; with equal
/// counts this is round robin. Shuffled takes that order and shuffles each
/// block of as many runs as there are commands.
pub fn schedule(counts: &[usize], order: Order) -> Vec<usize> {
    if order == Order::Grouped {
        return counts
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| std::iter::repeat_n(i, n))
            .collect();
    }
    let mut slots: Vec<(f64, usize)> = counts
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| (0..n).map(move |k| ((k as f64 + 0.5) / n as f64, i)))
        .collect();
    slots.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut out: Vec<usize> = slots.into_iter().map(|(_, i)| i).collect();
    if let Order::Shuffled(seed) = order {
        let mut rng = SplitMix64(seed);
        for block in out.chunks_mut(counts.len().max(1)) {
            for k in (1..block.len()).rev() {
                let j = (rng.next() % (k as u64 + 1)) as usize;
                block.swap(k, j);
            }
        }
    }
    out
}

/// A small seeded generator (SplitMix64), enough for shuffling run order.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

//------------------------------------------------------------------------------
// What came out
//------------------------------------------------------------------------------

/// One timed run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Which command (index into the commands given).
    pub command: usize,
    /// Its number among that command's runs, from 0.
    pub index: usize,
    /// When it exited, in seconds since the benchmark began (its setup and
    /// warmups included).
    pub at: f64,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<String>,
    /// Each metric's value, in [`Metric::ALL`] order (`None`: not measured).
    pub values: Vec<Option<f64>>,
}

impl Run {
    /// The value of `metric`, if measured.
    pub fn value(&self, metric: Metric) -> Option<f64> {
        self.values[metric.index()]
    }

    /// Whether it exited 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// One command's runs and their figures.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// The command's name.
    pub name: String,
    /// Its parameter values.
    pub parameters: Vec<(String, String)>,
    /// Its timed runs, in the order they ran.
    pub runs: Vec<Run>,
    /// Each metric's summary over the runs, in [`Metric::ALL`] order.
    pub summaries: Vec<Option<Summary>>,
}

impl CommandOutcome {
    /// The summary of `metric`, if any run measured it.
    pub fn summary(&self, metric: Metric) -> Option<&Summary> {
        self.summaries[metric.index()].as_ref()
    }

    /// How many runs exited other than 0.
    pub fn failures(&self) -> usize {
        self.runs.iter().filter(|r| !r.succeeded()).count()
    }
}

/// What a benchmark found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Each command's runs and figures, in the order given.
    pub commands: Vec<CommandOutcome>,
    /// Wall time of the timed runs after each command's first (sizing) run,
    /// all commands (seconds).
    pub elapsed: f64,
    /// How many runs that time holds.
    pub timed_runs: usize,
    /// Runs in flight at once.
    pub jobs: usize,
    /// The runner's own peak resident set during the runs, which every max RSS
    /// includes (see the module docs).
    pub rss_floor: Option<u64>,
    /// Why the hardware counters have no figures, when they have none.
    pub pmu_note: Option<String>,
}

impl Outcome {
    /// Runs per second over [`Outcome::elapsed`], all commands together.
    pub fn throughput(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.timed_runs as f64 / self.elapsed
        } else {
            0.0
        }
    }
}

/// Progress, for a caller showing it.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Which command.
    pub command: usize,
    /// Whether this was a warmup run.
    pub warmup: bool,
    /// Runs of this kind done for it so far.
    pub done: usize,
    /// Runs of this kind it will get (known once its first timed run is in).
    pub total: usize,
}

/// Why a benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The agent refused a start.
    #[error("{command}: {source}")]
    Start {
        /// The command's name.
        command: String,
        /// Why.
        source: StartError,
    },
    /// A run (or its prepare/conclude/cleanup) did not exit 0.
    #[error("{what} {command:?} {how}. {}", advice(what, how))]
    Failed {
        /// "Command", "Prepare command" …
        what: &'static str,
        /// The command's name.
        command: String,
        /// "terminated with non-zero exit code 3", "was killed by SIGKILL" …
        how: String,
    },
    /// The agent went away.
    #[error("the agent stopped")]
    AgentGone,
    /// An agent could not be made.
    #[error("cannot start the agent: {0}")]
    Agent(std::io::Error),
}

/// Runs benchmarks, one run at a time on the caller's thread or through an
/// agent of its own.
///
/// With one job, and commands that need nothing of an agent's reactor (no
/// capture, no pipe between processes, no timeout), every run of a benchmark
/// is spawned and waited for on the caller's thread, with the agent's own
/// plan, spawn and result code: no other thread wakes between one run's exit
/// and the next clone. Otherwise runs go through the agent: runs without
/// `prepare` or `conclude` are handed to it in batches, with `max_running`
/// set to the plan's `jobs`, so that it starts the next one as soon as the
/// last one's exit is seen, and the caller collects results while the next
/// child runs. With one job the children are then spawned on the reactor
/// itself ([`Config::spawn_threads`] 0), which saves two thread hand-offs per
/// run.
#[derive(Debug)]
pub struct Runner {
    base: Config,
    /// The agent and the `jobs` it was made for.
    agent: Option<(Agent, usize)>,
    /// Where runs one at a time go, when their spec allows (made on first use).
    solo: Option<Solo>,
    /// Whether the benchmark's commands all ask for the same perf events, so
    /// that [`Solo`] may count them through held counters.
    same_events: bool,
    next: u64,
}

impl Runner {
    /// A runner with the default agent configuration, less what it does not
    /// report: no periodic sampling, no `/proc` reads at exit.
    pub fn new() -> std::io::Result<Runner> {
        Runner::with_config(Config {
            sample_interval: None,
            read_proc_at_exit: false,
            ..Config::default()
        })
    }

    /// A runner whose agents start from `config` (its `max_running` and
    /// `spawn_threads` are set per plan). Its first run that needs one makes
    /// it, and the one-at-a-time runner likewise: a benchmark that can run all
    /// of its runs on this thread starts no agent at all.
    pub fn with_config(config: Config) -> std::io::Result<Runner> {
        Ok(Runner {
            base: config,
            agent: None,
            solo: None,
            same_events: true,
            next: 0,
        })
    }

    /// The agent for `jobs` in flight, made anew when the last was for another
    /// number.
    fn agent_for(&mut self, jobs: usize) -> std::io::Result<&Agent> {
        if self.agent.as_ref().is_none_or(|(_, j)| *j != jobs) {
            self.agent = None;
            if let Some(solo) = self.solo.as_mut() {
                // The agent's threads would inherit them, and so every child
                // they spawn; they open again at the next run here.
                solo.release_counters();
            }
            let config = Config {
                max_running: Some(jobs),
                spawn_threads: if jobs == 1 {
                    0
                } else {
                    self.base.spawn_threads
                },
                ..self.base.clone()
            };
            self.agent = Some((Agent::new(config)?, jobs));
        }
        Ok(&self.agent.as_ref().expect("just made").0)
    }

    fn agent(&self) -> &Agent {
        &self
            .agent
            .as_ref()
            .expect("made before use (`agent_for`)")
            .0
    }

    fn fresh_id(&mut self) -> String {
        self.next += 1;
        format!("b{}", self.next)
    }

    /// Runs `spec` once and returns its result (the process is deleted).
    ///
    /// A spec with no capture, pipe or timeout runs on this thread: no agent
    /// thread wakes between its exit and the next run's clone, to share the
    /// CPU the child needs. Others run through the agent.
    pub fn run_once(&mut self, spec: &ProcSpec, name: &str) -> Result<ProcRes, BenchError> {
        let here = Solo::supports(spec);
        if here {
            // As the agent checks what it is asked to start.
            validate(spec, name)?;
        }
        self.run_via(spec, name, here)
    }

    /// Runs `spec` (validated) once, on this thread when `here` (which its
    /// spec must allow), else through the agent.
    fn run_via(&mut self, spec: &ProcSpec, name: &str, here: bool) -> Result<ProcRes, BenchError> {
        if here {
            let id = self.fresh_id();
            if self.solo.is_none() {
                let mut solo = Solo::new(self.base.clone()).map_err(BenchError::Agent)?;
                solo.hold_counters(self.same_events);
                self.solo = Some(solo);
            }
            let solo = self.solo.as_mut().expect("just made");
            return Ok(solo.run(&id, spec));
        }
        if self.agent.is_none() {
            // Dropped after a failed benchmark.
            self.agent_for(1).map_err(BenchError::Agent)?;
        }
        let id = self.fresh_id();
        let mut specs = Specs::new();
        specs
            .try_insert(id.clone(), spec.clone())
            .expect("a fresh id is unique");
        let handle = self.agent().handle();
        let start = handle.start(Input { specs });
        // Asked for at once, so the reply comes without another round trip
        // through this thread; the agent handles the two in order.
        let waited = handle.wait(&id);
        start.wait().map_err(|source| BenchError::Start {
            command: name.to_owned(),
            source,
        })?;
        let res = waited.wait().ok_or(BenchError::AgentGone)?;
        drop(handle.delete(&id));
        Ok(res)
    }

    /// Runs an untimed helper (setup, prepare, conclude, cleanup) and checks it.
    fn helper(
        &mut self,
        spec: Option<&ProcSpec>,
        what: &'static str,
        command: &str,
    ) -> Result<(), BenchError> {
        let Some(spec) = spec else { return Ok(()) };
        // Named by its text (the shell's -c argument), not the command's name.
        let text = spec.argv.last().map_or(command, String::as_str);
        let res = self.run_once(spec, text)?;
        failure(&res).map_or(Ok(()), |how| {
            Err(BenchError::Failed {
                what,
                command: text.to_owned(),
                how,
            })
        })
    }

    /// Benchmarks `commands` as `plan` says, calling `progress` after each run.
    ///
    /// Interleaved and shuffled orders run the commands' setup (one they
    /// share, run once), then their warmups, then one sizing run of each,
    /// then all the timed runs mixed, then the cleanup; grouped runs all of
    /// that one command at a time. On
    /// an error, runs still queued are killed and the agent is made anew.
    pub fn bench(
        &mut self,
        commands: &[Command],
        plan: &Plan,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Outcome, BenchError> {
        for c in commands {
            validate(&c.spec, &c.name)?;
        }
        // Runs one at a time count through counters the runner holds, which
        // every child inherits: commands asking for different events would
        // not be measured alike, so each child then opens its own.
        self.same_events = commands
            .windows(2)
            .all(|w| w[0].spec.perf == w[1].spec.perf);
        if let Some(solo) = self.solo.as_mut() {
            solo.hold_counters(self.same_events);
        }
        let jobs = plan.jobs.max(1);
        if !runs_here(commands, plan) {
            self.agent_for(jobs).map_err(BenchError::Agent)?;
        }
        let mut bench = Timed {
            t0: Instant::now(),
            t0_unix_ns: unix_ns(std::time::SystemTime::now()),
            runs: vec![Vec::new(); commands.len()],
            totals: vec![0; commands.len()],
            pmu_note: None,
            timed_secs: 0.0,
            timed_runs: 0,
        };
        let all: Vec<usize> = (0..commands.len()).collect();
        let done = if plan.order == Order::Grouped {
            all.iter()
                .try_for_each(|&i| self.phases(commands, &[i], plan, &mut bench, progress))
        } else {
            self.phases(commands, &all, plan, &mut bench, progress)
        };
        if let Err(e) = done {
            self.abandon();
            return Err(e);
        }
        let commands = commands
            .iter()
            .zip(bench.runs)
            .map(|(c, runs)| {
                let summaries = Metric::ALL
                    .iter()
                    .map(|&m| {
                        let v: Vec<f64> = runs.iter().filter_map(|r| r.value(m)).collect();
                        Summary::of(&v)
                    })
                    .collect();
                CommandOutcome {
                    name: c.name.clone(),
                    parameters: c.parameters.clone(),
                    runs,
                    summaries,
                }
            })
            .collect();
        Ok(Outcome {
            commands,
            elapsed: bench.timed_secs,
            timed_runs: bench.timed_runs,
            jobs,
            rss_floor: peak_rss(),
            pmu_note: bench.pmu_note,
        })
    }

    /// Kills whatever the agent still has queued or running and drops it, so
    /// that nothing of a failed benchmark runs on (the next call makes a new
    /// agent).
    fn abandon(&mut self) {
        if let Some((agent, _)) = self.agent.take() {
            agent.shutdown(crate::ShutdownPolicy::Kill);
        }
    }

    /// Setup, warmups, a sizing run, the timed runs and cleanup of the
    /// commands in `group` (indices).
    fn phases(
        &mut self,
        commands: &[Command],
        group: &[usize],
        plan: &Plan,
        bench: &mut Timed,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), BenchError> {
        // Commands whose runs are mixed share one setup and one cleanup
        // (they differ only when grouped, one command at a time): each is
        // run once, around all the runs. Run once per command, a setup that
        // cannot run twice (`mkdir d`) failed, and all cleanups came last.
        let shared = |f: fn(&Command) -> Option<&ProcSpec>| {
            let mut seen: Vec<&ProcSpec> = Vec::new();
            group
                .iter()
                .filter_map(|&i| Some((f(&commands[i])?, &commands[i].name)))
                .filter(|(s, _)| {
                    let new = !seen.contains(s);
                    seen.push(s);
                    new
                })
                .collect::<Vec<_>>()
        };
        for (setup, name) in shared(|c| c.setup.as_ref()) {
            self.helper(Some(setup), "Setup command", name)?;
        }
        reset_peak_rss();
        let here = runs_here(commands, plan);
        for &i in group {
            let c = &commands[i];
            for done in 1..=plan.warmup {
                self.helper(c.prepare.as_ref(), "Prepare command", &c.name)?;
                let res = self.run_via(&c.spec, &c.name, here)?;
                if !plan.ignore_failure {
                    check(&res, &c.name)?;
                }
                self.helper(c.conclude.as_ref(), "Conclude command", &c.name)?;
                progress(Progress {
                    command: i,
                    warmup: true,
                    done,
                    total: plan.warmup,
                });
            }
        }
        // A first timed run of each, to size the rest.
        let mut counts = vec![0; commands.len()];
        for &i in group {
            let c = &commands[i];
            self.helper(c.prepare.as_ref(), "Prepare command", &c.name)?;
            let res = self.run_via(&c.spec, &c.name, here)?;
            self.helper(c.conclude.as_ref(), "Conclude command", &c.name)?;
            let total = {
                let run = bench.record(i, &res, &c.name, plan, progress)?;
                plan.count_for(Duration::from_secs_f64(
                    run.value(Metric::Wall).unwrap_or(0.0),
                ))
            };
            bench.totals[i] = total;
            counts[i] = total.saturating_sub(1);
        }
        let order = schedule(&counts, plan.order);
        let t = Instant::now();
        self.timed(commands, &order, plan, bench, progress)?;
        bench.timed_secs += t.elapsed().as_secs_f64();
        bench.timed_runs += order.len();
        for (cleanup, name) in shared(|c| c.cleanup.as_ref()) {
            self.helper(Some(cleanup), "Cleanup command", name)?;
        }
        Ok(())
    }

    /// The timed runs in `order` (command indices).
    fn timed(
        &mut self,
        commands: &[Command],
        order: &[usize],
        plan: &Plan,
        bench: &mut Timed,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), BenchError> {
        let around = order
            .iter()
            .any(|&i| commands[i].prepare.is_some() || commands[i].conclude.is_some());
        let here = runs_here(commands, plan);
        if around || here {
            // One at a time, with the helpers between; on this thread when
            // the benchmark's commands allow (`Runner::bench`).
            for (n, &i) in order.iter().enumerate() {
                if n % RSS_RESET == 0 {
                    reset_peak_rss();
                }
                let c = &commands[i];
                self.helper(c.prepare.as_ref(), "Prepare command", &c.name)?;
                let res = self.run_via(&c.spec, &c.name, here)?;
                bench.record(i, &res, &c.name, plan, progress)?;
                self.helper(c.conclude.as_ref(), "Conclude command", &c.name)?;
            }
            return Ok(());
        }
        // Batches queued in the agent, which keeps `jobs` running; results are
        // taken in the order they were queued.
        let jobs = plan.jobs.max(1);
        let window = (jobs * 4).max(64);
        let handle = self.agent_for(jobs).map_err(BenchError::Agent)?.handle();
        let longest = bench
            .runs
            .iter()
            .flatten()
            .filter_map(|r| r.value(Metric::Wall))
            .fold(0.0, f64::max);
        let collect = if longest >= ONE_BY_ONE { 1 } else { COLLECT };
        let mut starts = Vec::new();
        let mut waits = std::collections::VecDeque::new();
        let mut next = order.iter().copied().peekable();
        loop {
            if waits.len() <= window / 2 && next.peek().is_some() {
                let mut specs = Specs::new();
                let mut batch = Vec::new();
                while waits.len() + batch.len() < window {
                    let Some(i) = next.next() else { break };
                    let id = self.fresh_id();
                    specs
                        .try_insert(id.clone(), commands[i].spec.clone())
                        .expect("a fresh id is unique");
                    batch.push((id, i));
                }
                // The runs of this batch exec from this process's memory: its
                // peak as they start is the floor of their max RSS.
                reset_peak_rss();
                starts.push(handle.start(Input { specs }));
                for (id, i) in batch {
                    let call = handle.wait(&id);
                    waits.push_back((id, i, call));
                }
            }
            if waits.is_empty() {
                break;
            }
            // Several at a time, waiting for the last of them first: this
            // thread then wakes once for the lot, not once a run. Runs long
            // enough for a wake-up each not to matter are taken one by one,
            // so that a failure stops the rest at once, not a lot later.
            let take = waits.len().min(collect);
            let mut lot: Vec<_> = waits.drain(..take).collect();
            let (last_id, last_i, last_call) = lot.pop().expect("take >= 1");
            let last = last_call.wait();
            let mut results: Vec<(String, usize, Option<ProcRes>)> = lot
                .into_iter()
                .map(|(id, i, call)| (id, i, call.wait()))
                .collect();
            results.push((last_id, last_i, last));
            for (id, i, res) in results {
                let Some(res) = res else {
                    // Not known: its batch was refused; say why.
                    for s in starts {
                        s.wait().map_err(|source| BenchError::Start {
                            command: commands[i].name.clone(),
                            source,
                        })?;
                    }
                    return Err(BenchError::AgentGone);
                };
                drop(handle.delete(&id));
                bench.record(i, &res, &commands[i].name, plan, progress)?;
            }
        }
        for s in starts {
            s.wait().map_err(|source| BenchError::Start {
                command: String::from("batch"),
                source,
            })?;
        }
        Ok(())
    }
}

/// Whether every run of a benchmark of `commands` (warmups and sizing runs
/// too) goes one at a time on the runner's thread: with one job, when none of
/// them needs an agent's reactor. Otherwise all go through the agent.
fn runs_here(commands: &[Command], plan: &Plan) -> bool {
    plan.jobs <= 1 && commands.iter().all(|c| Solo::supports(&c.spec))
}

/// Checks `spec` as an agent checks what it is asked to start.
fn validate(spec: &ProcSpec, name: &str) -> Result<(), BenchError> {
    let mut specs = Specs::new();
    specs
        .try_insert("check".into(), spec.clone())
        .expect("one id");
    spec::validate(&Input { specs }).map_err(|e| BenchError::Start {
        command: name.to_owned(),
        source: e.into(),
    })
}

/// How many queued runs' results are collected at once.
const COLLECT: usize = 8;

/// The wall time (seconds) of a run (the longest so far) from which queued
/// runs' results are collected one at a time: a wake-up per run is then
/// little, and a failed run stops the rest within one run, not [`COLLECT`].
const ONE_BY_ONE: f64 = 0.005;

/// Runs one at a time between resets of this process's peak RSS (the floor
/// of a run's max RSS: see `reset_peak_rss`), as a batch of queued runs has.
const RSS_RESET: usize = 64;

/// The timed runs so far.
struct Timed {
    t0: Instant,
    /// `t0` on the clock results' times are on.
    t0_unix_ns: i128,
    /// Time spent in, and runs of, the timed phases (after the sizing runs).
    timed_secs: f64,
    timed_runs: usize,
    runs: Vec<Vec<Run>>,
    /// Each command's run count, once known.
    totals: Vec<usize>,
    pmu_note: Option<String>,
}

impl Timed {
    /// Records the run `res` was (checked against `plan.ignore_failure`) as
    /// command `command`'s next, and tells `progress`.
    fn record(
        &mut self,
        command: usize,
        res: &ProcRes,
        name: &str,
        plan: &Plan,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<&Run, BenchError> {
        if !plan.ignore_failure || res.failure.is_some() || res.status.is_none() {
            // A run that never started has nothing to measure, ignored or not.
            check(res, name)?;
        }
        if self.pmu_note.is_none() {
            if let Some(why) = res
                .perf
                .as_ref()
                .and_then(|p| p.unavailable.get(Event::Cycles.name()))
            {
                self.pmu_note = Some(format!(
                    "cycles, instructions, cache and branch misses were not counted: {why}"
                ));
            }
        }
        let runs = &mut self.runs[command];
        runs.push(Run {
            command,
            index: runs.len(),
            // When it exited, from the result's own stop time (results may be
            // collected a few at a time, later).
            at: res
                .times
                .stop
                .as_deref()
                .and_then(crate::metrics::parse_rfc3339)
                .map_or_else(
                    || self.t0.elapsed().as_secs_f64(),
                    |ns| (ns - self.t0_unix_ns) as f64 / 1e9,
                ),
            exit_code: res.status.as_ref().and_then(|s| s.exit_code),
            signal: res.status.as_ref().and_then(|s| s.signal.clone()),
            values: Metric::ALL.iter().map(|m| m.of(res)).collect(),
        });
        progress(Progress {
            command,
            warmup: false,
            done: runs.len(),
            total: self.totals[command].max(runs.len()),
        });
        Ok(runs.last().expect("just pushed"))
    }
}

/// What was wrong with a run, or `None` if it exited 0.
fn failure(res: &ProcRes) -> Option<String> {
    if let Some(f) = &res.failure {
        return Some(format!(
            "could not be started: {} failed: {}",
            f.stage,
            std::io::Error::from_raw_os_error(f.errno)
        ));
    }
    match &res.status {
        Some(s) if s.exit_code == Some(0) => None,
        Some(s) if s.exit_code.is_some() => Some(format!(
            "terminated with non-zero exit code {}",
            s.exit_code.unwrap_or_default()
        )),
        Some(s) => Some(format!(
            "was killed by {}",
            s.signal.as_deref().unwrap_or("a signal")
        )),
        None => Some(format!(
            "could not be run: {}",
            if res.errors.is_empty() {
                "no exit status".to_owned()
            } else {
                res.errors.join("; ")
            }
        )),
    }
}

/// How to go on past a failure: `--ignore-failure` for a benchmarked command
/// that ran and failed; it does not apply to one that could not be started,
/// nor to the helpers (setup, prepare, conclude, cleanup), which must
/// succeed, as in hyperfine.
fn advice(what: &str, how: &str) -> &'static str {
    if how.starts_with("could not be") {
        "A command that cannot be started stops the benchmark, with --ignore-failure too: \
         check the program's path and permissions."
    } else if what == "Command" {
        "Use the '-i'/'--ignore-failure' option if you want to ignore this."
    } else {
        "--ignore-failure does not apply to it: append ' || true' to it if this can be ignored."
    }
}

fn check(res: &ProcRes, name: &str) -> Result<(), BenchError> {
    failure(res).map_or(Ok(()), |how| {
        Err(BenchError::Failed {
            what: "Command",
            command: name.to_owned(),
            how,
        })
    })
}

fn unix_ns(t: std::time::SystemTime) -> i128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Resets this process's peak resident set to its current one, so that the
/// floor every vfork-spawned child's max RSS carries is as low as it can be:
/// the runner's resident set when the child starts, not its highest ever.
/// Best effort: without it, the floor is just higher (and still reported).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident set since [`reset_peak_rss`] (VmHWM), bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_runs_start_no_agent_and_what_needs_one_gets_one() {
        let plan = Plan {
            runs: Some(3),
            ..Plan::default()
        };
        let mut runner = Runner::new().unwrap();
        let commands = [Command::argv("true", &["/bin/true"])];
        let out = runner.bench(&commands, &plan, &mut |_| {}).unwrap();
        assert_eq!(out.commands[0].runs.len(), 3, "the sizing run among them");
        assert!(runner.agent.is_none(), "one at a time on this thread");
        assert!(runner.solo.is_some());
        // A capture needs the reactor.
        let piped = [Command::new(
            "piped".into(),
            bench_spec(vec!["/bin/echo".into(), "x".into()], Output::Pipe),
        )];
        let out = runner.bench(&piped, &plan, &mut |_| {}).unwrap();
        assert_eq!(out.commands[0].runs.len(), 3);
        assert!(runner.agent.is_some(), "a capture goes through the agent");
        // So do runs in parallel.
        let mut runner = Runner::new().unwrap();
        let jobs = Plan { jobs: 2, ..plan };
        let out = runner.bench(&commands, &jobs, &mut |_| {}).unwrap();
        assert_eq!(out.commands[0].runs.len(), 3);
        assert!(runner.agent.is_some());
    }

    /// Runs one at a time count through counters the runner holds only when
    /// every command asks for the same events (in any order, grouped too),
    /// and an agent's start lets go of them; every run is counted either way.
    #[test]
    fn held_counters_only_for_commands_asking_alike() {
        if !crate::metrics::perf::task_clock_or_skip(
            "bench held_counters_only_for_commands_asking_alike",
        ) {
            return;
        }
        let plan = Plan {
            runs: Some(3),
            order: Order::Grouped,
            ..Plan::default()
        };
        let counted = |out: &Outcome| {
            out.commands.iter().all(|c| {
                c.runs
                    .iter()
                    .all(|r| r.value(Metric::TaskClock).is_some_and(|ns| ns > 0.0))
            })
        };
        let holds = |r: &Runner| r.solo.as_ref().is_some_and(Solo::holds_counters);
        let mut runner = Runner::new().unwrap();
        let a = Command::argv("a", &["/bin/true"]);
        let out = runner
            .bench(std::slice::from_ref(&a), &plan, &mut |_| {})
            .unwrap();
        assert!(counted(&out) && holds(&runner));
        let mut b = Command::argv("b", &["/bin/true"]);
        b.spec.perf = Some(crate::spec::PerfSpec::Events(vec!["task_clock".into()]));
        let out = runner.bench(&[a.clone(), b], &plan, &mut |_| {}).unwrap();
        assert!(counted(&out));
        assert!(!holds(&runner), "every run opened its own");
        let out = runner
            .bench(std::slice::from_ref(&a), &plan, &mut |_| {})
            .unwrap();
        assert!(counted(&out) && holds(&runner), "alike again: held again");
        runner.agent_for(2).unwrap();
        assert!(
            !holds(&runner),
            "let go of before the agent's threads start"
        );
        let out = runner
            .bench(std::slice::from_ref(&a), &plan, &mut |_| {})
            .unwrap();
        assert!(counted(&out) && holds(&runner));
    }

    #[test]
    fn interleaved_goes_round_robin_and_spreads_unequal_counts() {
        assert_eq!(schedule(&[2, 2, 2], Order::Interleaved), [0, 1, 2, 0, 1, 2]);
        // Slots: 0 at 1/6, 3/6, 5/6; 1 at 1/2; 2 at 1/4, 3/4.
        assert_eq!(schedule(&[3, 1, 2], Order::Interleaved), [0, 2, 0, 1, 2, 0]);
        assert_eq!(schedule(&[], Order::Interleaved), Vec::<usize>::new());
        // 1 run of B among 99 of A lands in the middle, not first.
        let s = schedule(&[99, 1], Order::Interleaved);
        let at = s.iter().position(|&i| i == 1).unwrap();
        assert!((45..=55).contains(&at), "{at}");
    }

    #[test]
    fn grouped_runs_each_command_in_one_block() {
        assert_eq!(schedule(&[2, 0, 3], Order::Grouped), [0, 0, 2, 2, 2]);
    }

    #[test]
    fn shuffled_is_a_permutation_of_each_round_and_repeatable() {
        let a = schedule(&[50, 50, 50], Order::Shuffled(7));
        assert_eq!(a, schedule(&[50, 50, 50], Order::Shuffled(7)));
        assert_ne!(a, schedule(&[50, 50, 50], Order::Shuffled(8)));
        assert_ne!(a, schedule(&[50, 50, 50], Order::Interleaved));
        for round in a.chunks(3) {
            let mut r = round.to_vec();
            r.sort();
            assert_eq!(r, [0, 1, 2]);
        }
    }

    #[test]
    fn run_count_fills_the_time_within_the_bounds() {
        let plan = Plan::default(); // 3 s, at least 10
        assert_eq!(plan.count_for(Duration::from_millis(1)), 3000);
        assert_eq!(plan.count_for(Duration::from_secs(1)), 10);
        assert_eq!(plan.count_for(Duration::ZERO), 10);
        let capped = Plan {
            max_runs: Some(500),
            ..Plan::default()
        };
        assert_eq!(capped.count_for(Duration::from_millis(1)), 500);
        let exact = Plan {
            runs: Some(7),
            ..Plan::default()
        };
        assert_eq!(exact.count_for(Duration::from_millis(1)), 7);
        let jobs = Plan {
            jobs: 4,
            ..Plan::default()
        };
        assert_eq!(jobs.count_for(Duration::from_millis(1)), 12000);
    }

    #[test]
    fn metric_names_round_trip_and_units_are_right() {
        for m in Metric::ALL {
            assert_eq!(Metric::from_name(m.name()), Some(m));
            assert_eq!(Metric::ALL[m.index()], m);
        }
        assert_eq!(Metric::from_name("rss"), None);
        assert_eq!(Metric::TaskClock.unit(), Unit::Seconds);
        assert_eq!(Metric::MaxRss.unit(), Unit::Bytes);
        assert!(Metric::Instructions.is_hardware() && !Metric::TaskClock.is_hardware());
    }

    #[test]
    fn bench_spec_puts_output_where_asked() {
        let s = bench_spec(vec!["/bin/true".into()], Output::Null);
        assert_eq!(s.fds.len(), 3);
        assert_eq!(s.perf, Some(Metric::perf_spec()));
        let Some(crate::spec::PerfSpec::Events(names)) = s.perf else {
            panic!("a list of events")
        };
        assert_eq!(
            names,
            [
                "task_clock",
                "page_faults",
                "context_switches",
                "cpu_migrations",
                "cycles",
                "instructions",
                "cache_misses",
                "branch_misses"
            ]
        );
        assert_eq!(bench_spec(vec!["x".into()], Output::Inherit).fds.len(), 1);
        let f = bench_spec(vec!["x".into()], Output::File("/tmp/o".into()));
        assert_eq!(f.fds[2].1, crate::spec::FdSpec::Dup { fd: 1 });
    }
}
