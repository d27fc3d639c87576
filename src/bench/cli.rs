//! `chaperone bench`: the command line over [`Runner`], with
//! hyperfine's options where they mean the same.

use super::report::{Sort, TimeUnit, View};
use super::{Command, MAX_RUNS, Metric, Order, Output, Plan, Progress, Runner, bench_spec, words};
use crate::spec::{self, ProcSpec};
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// `chaperone bench`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "chaperone bench",
    version,
    about = "Benchmark commands: every run measured from clone to exit (wall, rusage, perf counters), several commands interleaved",
    after_help = "Each COMMAND is split into words by shell rules and exec'd directly (no shell, \
                  nothing to subtract), with stdin, stdout and stderr on /dev/null unless --output \
                  says otherwise. --prepare, --conclude and --cleanup run through sh -c (or --shell)."
)]
pub struct BenchArgs {
    /// The commands to benchmark.
    #[arg(value_name = "COMMAND")]
    pub commands: Vec<String>,
    /// Run each command through SHELL's -c, as hyperfine does: a program
    /// (`sh`, `bash` …) or a command line (`"bash --norc"`); `default` is
    /// `sh`; the shell's startup is then part of every figure. `none`: exec
    /// directly (the default).
    #[arg(short = 'S', long, value_name = "SHELL")]
    pub shell: Option<String>,
    /// No shell (the default; accepted for hyperfine's -N).
    #[arg(short = 'N', long = "no-shell", conflicts_with = "shell")]
    pub no_shell: bool,
    /// Benchmark the processes of this chaperone spec too, each one a command
    /// named by its id, with every field of its spec applied.
    #[arg(long, value_name = "PATH")]
    pub spec: Option<PathBuf>,
    /// Exactly this many timed runs per command.
    #[arg(short = 'r', long, value_name = "N", conflicts_with_all = ["min_runs", "max_runs"])]
    pub runs: Option<usize>,
    /// Untimed runs per command first.
    #[arg(short = 'w', long, value_name = "N", default_value_t = 0)]
    pub warmup: usize,
    /// At least this many timed runs (without --runs; default 10, or
    /// --max-runs if that is lower).
    #[arg(short = 'm', long, value_name = "N")]
    pub min_runs: Option<usize>,
    /// At most this many timed runs (without --runs).
    #[arg(short = 'M', long, value_name = "N")]
    pub max_runs: Option<usize>,
    /// Without --runs, run each command for about this long (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    pub min_time: f64,
    /// Run before each run (warmups too): once for all commands, or once per
    /// command in order.
    #[arg(short = 'p', long, value_name = "CMD")]
    pub prepare: Vec<String>,
    /// Run after each run: once for all commands, or once per command.
    #[arg(short = 'C', long, value_name = "CMD")]
    pub conclude: Vec<String>,
    /// Run after all runs of each command.
    #[arg(short = 'c', long, value_name = "CMD")]
    pub cleanup: Option<String>,
    /// Benchmark for each integer VAR from MIN to MAX ({VAR} in commands).
    #[arg(short = 'P', long, num_args = 3, value_names = ["VAR", "MIN", "MAX"], allow_hyphen_values = true)]
    pub parameter_scan: Option<Vec<String>>,
    /// The step of --parameter-scan (may be a decimal).
    #[arg(short = 'D', long, value_name = "DELTA", requires = "parameter_scan")]
    pub parameter_step_size: Option<String>,
    /// Benchmark for each of these comma-separated values of VAR (`\,` is a
    /// comma in a value, `\\` a backslash); given several times, for every
    /// combination, the first list varying fastest (as hyperfine).
    #[arg(short = 'L', long, num_args = 2, value_names = ["VAR", "VALUES"], action = clap::ArgAction::Append, allow_hyphen_values = true)]
    pub parameter_list: Vec<String>,
    /// Keep runs that exit non-zero (reported) instead of stopping.
    #[arg(short = 'i', long)]
    pub ignore_failure: bool,
    /// Write the results, with every run's raw figures, as JSON.
    #[arg(long, value_name = "FILE")]
    pub export_json: Option<PathBuf>,
    /// Write the results as a Markdown table.
    #[arg(long, value_name = "FILE")]
    pub export_markdown: Option<PathBuf>,
    /// Write the results as CSV.
    #[arg(long, value_name = "FILE")]
    pub export_csv: Option<PathBuf>,
    /// Write the results as an AsciiDoc table (the Markdown export's).
    #[arg(long, value_name = "FILE")]
    pub export_asciidoc: Option<PathBuf>,
    /// Write the results as an Emacs Org-mode table (the Markdown export's).
    #[arg(long, value_name = "FILE")]
    pub export_orgmode: Option<PathBuf>,
    /// Write a self-contained HTML report with a plot per metric.
    #[arg(long, value_name = "FILE")]
    pub export_html: Option<PathBuf>,
    /// Show times in this unit: nanosecond, microsecond, millisecond, second.
    #[arg(short = 'u', long, value_name = "UNIT")]
    pub time_unit: Option<String>,
    /// auto, full (colour and progress bars), basic (neither), nocolor,
    /// color, none (no output but errors).
    #[arg(long, value_name = "TYPE", default_value = "auto")]
    pub style: String,
    /// Run once before each command's runs (hyperfine's --setup).
    #[arg(short = 's', long, value_name = "CMD")]
    pub setup: Option<String>,
    /// The metric comparisons and outlier warnings use: wall, cpu,
    /// task-clock, instructions, max-rss.
    #[arg(long, value_name = "NAME", default_value = "wall")]
    pub metric: String,
    /// Compare every command with this one (a command given, by its text or
    /// name, or another command to benchmark first); default: the first.
    #[arg(long, value_name = "CMD")]
    pub reference: Option<String>,
    /// Runs in flight at once (throughput mode: also reports runs per second).
    #[arg(short = 'j', long, value_name = "N", default_value_t = 1)]
    pub jobs: usize,
    /// interleaved (A B A B …, the default), shuffled (each round in a
    /// seeded random order) or grouped (all of A, then all of B, as
    /// hyperfine; the default when --setup or --cleanup differs between
    /// commands).
    #[arg(long, value_name = "ORDER")]
    pub order: Option<String>,
    /// The order of the comparison and the Markdown, AsciiDoc and Org-mode
    /// tables: auto (the comparison by mean, the tables as given), command
    /// (both as given) or mean-time (both by mean), as hyperfine's.
    #[arg(long, value_name = "METHOD", default_value = "auto")]
    pub sort: String,
    /// The seed for --order shuffled.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Names for the commands, in order, in place of their text ({VAR} is
    /// substituted); with parameters, also one per benchmark (as hyperfine).
    #[arg(short = 'n', long, value_name = "NAME")]
    pub command_name: Vec<String>,
    /// Where each command's stdout and stderr go: null, pipe (drained by the
    /// agent), inherit, or a file path.
    #[arg(long, value_name = "WHERE", default_value = "null")]
    pub output: String,
    /// Show the commands' output: --output inherit (hyperfine's --show-output).
    #[arg(long)]
    pub show_output: bool,
    /// Where each command's stdin comes from: null (the default) or a file,
    /// opened for each run (hyperfine's --input).
    #[arg(long, value_name = "WHERE")]
    pub input: Option<String>,
}

/// Why the command line cannot be run.
fn usage(msg: impl std::fmt::Display) -> u8 {
    eprintln!("chaperone bench: {msg}");
    2
}

/// Runs `chaperone bench`; the exit code.
pub fn run(args: BenchArgs) -> u8 {
    let setup = match Setup::from_args(&args) {
        Ok(s) => s,
        Err(msg) => return usage(msg),
    };
    // Every export must be writable before anything runs: a path that cannot
    // be written would otherwise lose a whole benchmark's results at its end.
    let export_paths = [
        &args.export_json,
        &args.export_markdown,
        &args.export_csv,
        &args.export_asciidoc,
        &args.export_orgmode,
        &args.export_html,
    ];
    let claimed = match Claimed::exports(export_paths.into_iter().flatten()) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("chaperone bench: {msg}");
            return 1;
        }
    };
    if setup.text {
        for note in &setup.notes {
            eprintln!("{note}");
        }
    }
    let mut runner = match Runner::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaperone bench: cannot start the agent: {e}");
            return 1;
        }
    };
    let bars = setup
        .progress
        .then(|| Bars::new(&setup.commands, setup.color));
    let mut on_progress = |p: Progress| {
        if let Some(b) = &bars {
            b.update(p);
        }
    };
    let outcome = runner.bench(&setup.commands, &setup.plan, &mut on_progress);
    if let Some(b) = &bars {
        b.clear();
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    claimed.keep();
    if setup.text {
        let text = setup.view.text(&outcome);
        if setup.color {
            print!("{}", colorize(&text));
        } else {
            print!("{text}");
        }
    }
    let exports: [(&Option<PathBuf>, &dyn Fn() -> String); 6] = [
        (&args.export_json, &|| {
            let mut s = serde_json::to_string_pretty(&setup.view.json(&outcome))
                .expect("JSON values serialize");
            s.push('\n');
            s
        }),
        (&args.export_markdown, &|| setup.view.markdown(&outcome)),
        (&args.export_csv, &|| setup.view.csv(&outcome)),
        (&args.export_asciidoc, &|| setup.view.asciidoc(&outcome)),
        (&args.export_orgmode, &|| setup.view.orgmode(&outcome)),
        (&args.export_html, &|| setup.view.html(&outcome)),
    ];
    let mut code = 0;
    for (path, make) in exports {
        if let Some(path) = path {
            if let Err(e) = std::fs::write(path, make()) {
                eprintln!("chaperone bench: cannot write {}: {e}", path.display());
                code = 1;
            }
        }
    }
    code
}

/// The export files that [`Claimed::exports`] created; dropped before
/// [`Claimed::keep`] (the benchmark failed, or the agent did not start), it
/// removes them again, so that no empty export is left where none was.
struct Claimed(Vec<PathBuf>);

impl Claimed {
    /// Opens each export path for writing (creating it, truncating nothing),
    /// so that one that cannot be written fails before the runs rather than
    /// after. A path that exists and is neither a regular file nor a
    /// directory (a FIFO, `/dev/stdout`, a dangling symlink) is left alone:
    /// opening a FIFO here could block, or tell its reader that the output
    /// has ended, and a dangling symlink is not ours to create or remove (it
    /// fails, if it does, when the export is written).
    fn exports<'p>(paths: impl Iterator<Item = &'p PathBuf>) -> Result<Claimed, String> {
        let mut claimed = Claimed(Vec::new());
        for path in paths {
            // Not `exists`: a dangling symlink is there, and is not ours to remove.
            let existing = std::fs::symlink_metadata(path).ok();
            if existing.as_ref().is_some_and(|m| {
                let t = std::fs::metadata(path).map_or(m.file_type(), |m| m.file_type());
                !t.is_file() && !t.is_dir()
            }) {
                continue;
            }
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path);
            match opened {
                Ok(_) if existing.is_none() => claimed.0.push(path.clone()),
                Ok(_) => {}
                // Dropped, `claimed` takes back what it made so far.
                Err(e) => return Err(format!("cannot write {}: {e}", path.display())),
            }
        }
        Ok(claimed)
    }

    /// The benchmark has results: the exports stay, to be written.
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the command line asks for, checked.
struct Setup {
    commands: Vec<Command>,
    plan: Plan,
    view: View,
    progress: bool,
    color: bool,
    text: bool,
    /// Said on standard error before the runs (unless --style none).
    notes: Vec<String>,
}

impl Setup {
    fn from_args(a: &BenchArgs) -> Result<Setup, String> {
        let primary = Metric::from_name(&a.metric)
            .filter(|m| Metric::PRIMARY.contains(m))
            .ok_or_else(|| {
                format!(
                    "--metric {:?}: not one of {}",
                    a.metric,
                    Metric::PRIMARY.map(|m| m.name()).join(", ")
                )
            })?;
        // A counter this machine cannot count (no hardware PMU) would give
        // no figure to compare, known before any run.
        if let Some(event) = primary.perf_event()
            && let crate::metrics::perf::Access::Unavailable(why) =
                crate::metrics::perf::probe().access(event)
        {
            return Err(format!(
                "--metric {}: it cannot be counted on this machine: {why}",
                primary.name()
            ));
        }
        let time_unit = a
            .time_unit
            .as_deref()
            .map(|u| {
                TimeUnit::from_name(u).ok_or_else(|| {
                    format!("--time-unit {u:?}: not nanosecond, microsecond, millisecond or second")
                })
            })
            .transpose()?;
        let mut order = match a.order.as_deref().unwrap_or("interleaved") {
            "interleaved" => Order::Interleaved,
            "shuffled" => Order::Shuffled(a.seed),
            "grouped" => Order::Grouped,
            o => {
                return Err(format!(
                    "--order {o:?}: not interleaved, shuffled or grouped"
                ));
            }
        };
        let sort = Sort::from_name(&a.sort)
            .ok_or_else(|| format!("--sort {:?}: not auto, command or mean-time", a.sort))?;
        let tty = std::io::stderr().is_terminal();
        let (progress, color, text) = match a.style.as_str() {
            // The commands' own output on the terminal: no bars among it,
            // as hyperfine.
            "auto" if a.show_output || a.output == "inherit" => (false, false, true),
            "auto" => (tty, tty && std::io::stdout().is_terminal(), true),
            "full" => (true, true, true),
            "basic" => (false, false, true),
            "nocolor" => (true, false, true),
            "color" => (false, true, true),
            "none" => (false, false, false),
            s => {
                return Err(format!(
                    "--style {s:?}: not auto, full, basic, nocolor, color or none"
                ));
            }
        };
        if a.jobs == 0 {
            return Err("--jobs 0: at least one run must be in flight".into());
        }
        if a.jobs > 1 && (!a.prepare.is_empty() || !a.conclude.is_empty()) {
            return Err(
                "--prepare and --conclude run around each run, so they need --jobs 1".into(),
            );
        }
        if let Some(0) = a.runs {
            return Err("--runs 0: at least one run is needed".into());
        }
        for (flag, n) in [
            ("--runs", a.runs),
            ("--min-runs", a.min_runs),
            ("--max-runs", a.max_runs),
        ] {
            if let Some(n) = n.filter(|&n| n > MAX_RUNS) {
                return Err(format!(
                    "{flag} {n}: at most {MAX_RUNS} runs per command (every run's figures are kept)"
                ));
            }
        }
        // As hyperfine: --max-runs alone lowers the default minimum to it.
        let min_runs = match (a.min_runs, a.max_runs) {
            (Some(lo), Some(hi)) if hi < lo => {
                return Err(format!("--max-runs {hi} is below --min-runs {lo}"));
            }
            (Some(lo), _) => lo,
            (None, Some(hi)) => hi.min(10),
            (None, None) => 10,
        };
        if a.max_runs == Some(0) || a.min_runs == Some(0) {
            return Err("--min-runs and --max-runs must be at least 1".into());
        }
        let min_time = Duration::try_from_secs_f64(a.min_time)
            .map_err(|_| format!("--min-time {}: not a time in seconds", a.min_time))?;
        if a.show_output && !matches!(a.output.as_str(), "null" | "inherit") {
            return Err(format!(
                "--show-output is --output inherit: not with --output {}",
                a.output
            ));
        }
        let output = match a.output.as_str() {
            _ if a.show_output => Output::Inherit,
            "null" => Output::Null,
            "pipe" => Output::Pipe,
            "inherit" => Output::Inherit,
            path => Output::File(path.to_owned()),
        };
        // A program or a command line, as hyperfine's --shell.
        let shell: Option<Vec<String>> = match a.shell.as_deref() {
            None | Some("none") => None,
            Some("default") => Some(vec!["sh".to_owned()]),
            // Never empty: a line with no words is an error.
            Some(sh) => Some(words::split(sh).map_err(|e| format!("--shell {sh:?}: {e}"))?),
        };
        let helper_shell = shell.clone().unwrap_or_else(|| vec!["sh".to_owned()]);
        let helper_exe = find_program(&helper_shell[0]).map_err(|e| format!("--shell: {e}"))?;
        let sets = parameter_sets(a)?;
        let n_given = a.commands.len();
        // One name per benchmark (every command with every parameter set, in
        // hyperfine's order) rather than one per command.
        let per_benchmark = sets.len() > 1
            && a.command_name.len() == n_given * sets.len()
            && a.command_name.len() != n_given;
        let mut texts: Vec<(String, Option<String>)> = a
            .commands
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), a.command_name.get(i).cloned()))
            .collect();
        if a.command_name.len() > n_given && !per_benchmark {
            let benchmarks = if sets.len() > 1 {
                format!(" (or {} benchmarks)", n_given * sets.len())
            } else {
                String::new()
            };
            return Err(format!(
                "{} --command-name given for {n_given} commands{benchmarks}",
                a.command_name.len(),
            ));
        }
        // --reference: a command given (by text or name), or one more, first.
        let mut reference = 0;
        let mut inserted = false;
        if let Some(r) = &a.reference {
            match texts
                .iter()
                .position(|(t, n)| t == r || n.as_deref() == Some(r.as_str()))
            {
                Some(i) => reference = i,
                None => {
                    texts.insert(0, (r.clone(), None));
                    inserted = true;
                }
            }
        }
        let per_command = |list: &[String], flag: &str| -> Result<Vec<Option<String>>, String> {
            match list.len() {
                0 => Ok(vec![None; texts.len()]),
                1 => Ok(vec![Some(list[0].clone()); texts.len()]),
                n if n == texts.len() => Ok(list.iter().cloned().map(Some).collect()),
                n if inserted => Err(format!(
                    "{n} --{flag} given: give one for all commands, or one per command with \
                     the --reference command's first ({})",
                    texts.len()
                )),
                n => Err(format!(
                    "{n} --{flag} given: give one for all commands or one per command ({})",
                    texts.len()
                )),
            }
        };
        let prepares = per_command(&a.prepare, "prepare")?;
        let concludes = per_command(&a.conclude, "conclude")?;
        let helper = |cmd: &Option<String>, params: &[(String, String)]| -> Option<ProcSpec> {
            let cmd = substitute(cmd.as_ref()?, params);
            let mut spec = bench_spec(through(&helper_shell, cmd), Output::Null);
            spec.exe = Some(helper_exe.clone());
            Some(spec)
        };
        // --input FILE: each run's stdin, opened for it (so read from its
        // start each time); checked now, not at the first run.
        let stdin: Option<spec::FdSpec> = match a.input.as_deref() {
            None | Some("null") => None,
            Some(path) => {
                std::fs::File::open(path).map_err(|e| format!("--input {path}: {e}"))?;
                let file = serde_json::json!({"file": {"path": path, "flags": "Read"}});
                Some(serde_json::from_value(file).map_err(|e| format!("--input {path}: {e}"))?)
            }
        };
        let mut commands = Vec::new();
        let mut notes = Vec::new();
        let mut warned = Vec::new();
        // As hyperfine: every command with the first parameter set, then
        // every command with the second …
        for (k, params) in sets.iter().enumerate() {
            for (i, (text, name)) in texts.iter().enumerate() {
                let cmd = substitute(text, params);
                let argv = match &shell {
                    Some(sh) => through(sh, cmd.clone()),
                    None => {
                        // hyperfine runs commands through sh; a pipe here
                        // would be an argument, and the figures another
                        // command's.
                        if let Some(c) = words::unquoted_shell_char(&cmd) {
                            if !warned.contains(&c) {
                                warned.push(c);
                                notes.push(format!(
                                    "Note: command {cmd:?} runs without a shell, so its '{c}' is \
                                     passed on as it is, where a shell would act on it: give --shell sh \
                                     to run it through one (as hyperfine does)."
                                ));
                            }
                        }
                        words::split(&cmd).map_err(|e| format!("command {cmd:?}: {e}"))?
                    }
                };
                let name = match (per_benchmark, i.checked_sub(usize::from(inserted))) {
                    (true, Some(given)) => a.command_name.get(k * n_given + given),
                    _ => name.as_ref(),
                };
                let name = name.map_or_else(|| cmd.clone(), |n| substitute(n, params));
                let mut spec = bench_spec(argv, output.clone());
                if let Some(stdin) = &stdin {
                    spec.fds[0].1 = stdin.clone();
                }
                let exe =
                    find_program(&spec.argv[0]).map_err(|e| format!("command {cmd:?}: {e}"))?;
                spec.exe = Some(exe);
                commands.push(Command {
                    name,
                    spec,
                    parameters: params.clone(),
                    prepare: helper(&prepares[i], params),
                    conclude: helper(&concludes[i], params),
                    cleanup: helper(&a.cleanup, params),
                    setup: helper(&a.setup, params),
                });
            }
        }
        if let Some(path) = &a.spec {
            let bytes =
                std::fs::read(path).map_err(|e| format!("--spec {}: {e}", path.display()))?;
            let input =
                spec::parse_input(&bytes).map_err(|e| format!("--spec {}: {e}", path.display()))?;
            spec::validate(&input).map_err(|e| format!("--spec {}: {e}", path.display()))?;
            for (id, mut ps) in input.specs.into_vec() {
                if ps.perf.is_none() {
                    ps.perf = Some(Metric::perf_spec());
                }
                let mut c = Command::new(id, ps);
                c.prepare = helper(&prepares.first().cloned().flatten(), &[]);
                c.conclude = helper(&concludes.first().cloned().flatten(), &[]);
                c.cleanup = helper(&a.cleanup, &[]);
                c.setup = helper(&a.setup, &[]);
                commands.push(c);
            }
        }
        if commands.is_empty() {
            return Err("nothing to benchmark: give a COMMAND or --spec".into());
        }
        // A setup or cleanup that differs between commands (a {VAR} in it)
        // prepares for that command's runs alone: interleaved, every setup
        // would run before any run, and every run but the last setup's would
        // be timed against the wrong state.
        let differ = |f: fn(&Command) -> Option<&ProcSpec>| {
            commands
                .windows(2)
                .any(|w| f(&w[0]).map(|s| &s.argv) != f(&w[1]).map(|s| &s.argv))
        };
        if order != Order::Grouped
            && (differ(|c| c.setup.as_ref()) || differ(|c| c.cleanup.as_ref()))
        {
            if a.order.is_some() {
                return Err(format!(
                    "--order {}: --setup or --cleanup differs between commands, \
                     so each command's runs must come between its own setup and cleanup: \
                     use --order grouped (the default then)",
                    order.name()
                ));
            }
            order = Order::Grouped;
            notes.push(
                "Note: --setup or --cleanup differs between commands, so each command's runs \
                 are grouped between its own setup and cleanup (--order grouped), as in hyperfine."
                    .to_owned(),
            );
        }
        Ok(Setup {
            commands,
            plan: Plan {
                runs: a.runs,
                min_runs,
                max_runs: a.max_runs,
                min_time,
                warmup: a.warmup,
                order,
                jobs: a.jobs,
                ignore_failure: a.ignore_failure,
            },
            view: View {
                primary,
                reference,
                time_unit,
                order: order.name().to_owned(),
                sort,
            },
            progress,
            color,
            text,
            notes,
        })
    }
}

/// Every combination of the parameters' values (one empty set without any).
fn parameter_sets(a: &BenchArgs) -> Result<Vec<Vec<(String, String)>>, String> {
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(p) = &a.parameter_scan {
        let (var, lo, hi) = (&p[0], &p[1], &p[2]);
        let num = |s: &str| -> Result<f64, String> {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("--parameter-scan {var}: {s:?} is not a number"))
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        // Kept as typed too: its decimals are those of the values.
        let step_text = a.parameter_step_size.as_deref();
        let step = step_text
            .map(|t| {
                t.parse::<f64>()
                    .map_err(|_| format!("--parameter-step-size {t:?}: not a number"))
            })
            .transpose()?;
        if step.is_none() && (lo.fract() != 0.0 || hi.fract() != 0.0) {
            return Err(format!(
                "--parameter-scan {var}: without --parameter-step-size, MIN and MAX must be integers"
            ));
        }
        let step = step.unwrap_or(1.0);
        if !(step > 0.0 && step.is_finite()) {
            return Err(format!("--parameter-step-size {step}: must be above 0"));
        }
        if hi < lo {
            return Err(format!("--parameter-scan {var}: MAX is below MIN"));
        }
        let n = ((hi - lo) / step + 1e-9).floor() as u64 + 1;
        if n > 100_000 {
            return Err(format!("--parameter-scan {var}: {n} values is too many"));
        }
        // Written as hyperfine's decimal sums write them: MIN with the
        // decimals it was given, each value after it with those of MIN or
        // of the step, whichever has more (`-P n 0 1 -D 0.1`: 0, 0.1, …, 1.0).
        let places = |t: &str| t.split_once('.').map_or(0, |(_, f)| f.len());
        let first = places(&p[1]);
        let rest = first.max(step_text.map_or(0, places));
        let values = (0..n)
            .map(|k| {
                let d = if k == 0 { first } else { rest };
                format!("{:.*}", d, lo + step * k as f64)
            })
            .collect();
        axes.push((var.clone(), values));
    }
    for pair in a.parameter_list.chunks(2) {
        let [var, values] = pair else {
            unreachable!("clap takes two values")
        };
        if axes.iter().any(|(v, _)| v == var) {
            return Err(format!("parameter {var} is given twice"));
        }
        let values = split_list(values);
        axes.push((var.clone(), values));
    }
    // The first axis varies fastest, as in hyperfine: built from the last
    // (outermost) in, each set's pairs then put back in the order given.
    let mut sets: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (var, values) in axes.iter().rev() {
        sets = sets
            .into_iter()
            .flat_map(|set| {
                values.iter().map(move |v| {
                    let mut s = set.clone();
                    s.push((var.clone(), v.clone()));
                    s
                })
            })
            .collect();
    }
    for set in &mut sets {
        set.reverse();
    }
    Ok(sets)
}

/// Where `program` is: itself if it has a `/`, else the first executable of
/// that name on `PATH` (a spec's `exe` is not searched for).
fn find_program(program: &str) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                if let Some(s) = candidate.to_str() {
                    return Ok(s.to_owned());
                }
            }
        }
    }
    Err(format!("{program:?} is not an executable file on PATH"))
}

/// The argv that runs `cmd` through `shell` (its words, then `-c CMD`).
fn through(shell: &[String], cmd: String) -> Vec<String> {
    let mut argv = shell.to_vec();
    argv.extend(["-c".to_owned(), cmd]);
    argv
}

/// `s` with each `{VAR}` replaced by its value, in one pass: a value that
/// holds `{OTHER}` is left as it is.
fn substitute(s: &str, params: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| (v, close))
        });
        match value {
            Some((v, close)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The values of a `--parameter-list`: split at each comma, where `\,` is a
/// comma within a value and `\\` a backslash (as hyperfine).
fn split_list(list: &str) -> Vec<String> {
    let mut values = vec![String::new()];
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        let last = values.last_mut().expect("never empty");
        match c {
            '\\' => match chars.clone().next() {
                Some(e @ (',' | '\\')) => {
                    last.push(e);
                    chars.next();
                }
                _ => last.push('\\'),
            },
            ',' => values.push(String::new()),
            c => last.push(c),
        }
    }
    values
}

/// Bold headings, a green mean and yellow warnings, for a terminal.
fn colorize(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("Benchmark ") {
                format!("\x1b[1m{l}\x1b[0m")
            } else if l.trim_start().starts_with("Warning:") || l.starts_with("Note:") {
                format!("\x1b[33m{l}\x1b[0m")
            } else if l.trim_start().contains("(mean ± σ)") {
                format!("\x1b[32m{l}\x1b[0m")
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect()
}

/// One progress bar per command, on standard error.
struct Bars {
    _multi: MultiProgress,
    bars: Vec<ProgressBar>,
}

impl Bars {
    /// Bars in colour if `color` (`--style nocolor` has none).
    fn new(commands: &[Command], color: bool) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(if color {
            "{prefix:.bold} {msg:8} {bar:30.cyan/blue} {pos:>6}/{len:6} ETA {eta}"
        } else {
            "{prefix} {msg:8} {bar:30} {pos:>6}/{len:6} ETA {eta}"
        })
        .expect("a valid template")
        .progress_chars("█▉▊▋▌▍▎▏ ");
        let bars = commands
            .iter()
            .map(|c| {
                let b = multi.add(ProgressBar::new(1).with_style(style.clone()));
                let mut name = c.name.clone();
                if name.chars().count() > 30 {
                    name = name.chars().take(29).collect::<String>() + "…";
                }
                b.set_prefix(format!("{name:30}"));
                b.set_message("waiting");
                b
            })
            .collect();
        Bars {
            _multi: multi,
            bars,
        }
    }

    fn update(&self, p: Progress) {
        let Some(b) = self.bars.get(p.command) else {
            return;
        };
        let msg = if p.warmup { "warmup" } else { "runs" };
        if b.message() != msg {
            b.set_message(msg);
            b.reset_eta();
        }
        b.set_length(p.total as u64);
        b.set_position(p.done as u64);
    }

    fn clear(&self) {
        for b in &self.bars {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> BenchArgs {
        BenchArgs::try_parse_from(std::iter::once("chaperone bench").chain(line.iter().copied()))
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn setup(line: &[&str]) -> Result<Setup, String> {
        Setup::from_args(&args(line))
    }

    /// [`setup`] of a line of words with no blanks in any of them.
    fn setup_line(line: &str) -> Result<Setup, String> {
        setup(&line.split_whitespace().collect::<Vec<_>>())
    }

    #[test]
    fn hyperfine_options_parse_to_a_plan() {
        let s = setup(&[
            "-r",
            "20",
            "-w",
            "3",
            "-i",
            "-u",
            "millisecond",
            "--order",
            "grouped",
            "--style",
            "basic",
            "--metric",
            "task-clock",
            "/bin/true",
            "sleep 0.01",
        ])
        .unwrap();
        assert_eq!(s.plan.runs, Some(20));
        assert_eq!(s.plan.warmup, 3);
        assert!(s.plan.ignore_failure);
        assert_eq!(s.plan.order, Order::Grouped);
        assert_eq!(s.view.primary, Metric::TaskClock);
        assert_eq!(s.view.time_unit, Some(TimeUnit::Millisecond));
        assert!(!s.progress && !s.color && s.text);
        assert_eq!(s.commands.len(), 2);
        assert_eq!(s.commands[1].spec.argv, ["sleep", "0.01"]);
        assert_eq!(s.commands[1].name, "sleep 0.01");
        // --max-runs alone lowers the default minimum, as hyperfine does.
        let s = setup(&["-M", "4", "--style", "basic", "true"]).unwrap();
        assert_eq!((s.plan.min_runs, s.plan.max_runs), (4, Some(4)));
    }

    #[test]
    fn shell_mode_wraps_each_command() {
        let s = setup(&["--shell", "sh", "--style", "basic", "echo $HOME | wc"]).unwrap();
        assert_eq!(s.commands[0].spec.argv, ["sh", "-c", "echo $HOME | wc"]);
        assert_eq!(s.commands.len(), 1);
        let s = setup(&["-S", "bash", "--style", "basic", "true"]).unwrap();
        assert_eq!(s.commands[0].spec.argv, ["bash", "-c", "true"]);
        let s = setup(&["--shell=none", "--style", "basic", "true x"]).unwrap();
        assert_eq!(s.commands[0].spec.argv, ["true", "x"]);
        // A command line, as hyperfine's --shell takes, and its helpers too.
        let s = setup(&["--shell", "sh -e", "-p", "sync", "--style", "basic", "true"]).unwrap();
        assert_eq!(s.commands[0].spec.argv, ["sh", "-e", "-c", "true"]);
        assert_eq!(
            s.commands[0].prepare.as_ref().unwrap().argv,
            ["sh", "-e", "-c", "sync"]
        );
        let s = setup(&["--shell", "default", "--style", "basic", "true"]).unwrap();
        assert_eq!(s.commands[0].spec.argv, ["sh", "-c", "true"]);
        // Without a shell, an unquoted pipe is an argument: said, once.
        let s = setup(&["--style", "basic", "echo a | wc", "echo b | wc"]).unwrap();
        assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
        assert!(s.notes[0].contains("its '|' is passed on"), "{:?}", s.notes);
        let s = setup(&["--style", "basic", "echo 'a | b'"]).unwrap();
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        let s = setup(&["--shell", "sh", "--style", "basic", "echo a | wc"]).unwrap();
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        let e = setup(&["--shell", "", "true"]).err().unwrap();
        assert_eq!(e, "--shell \"\": it has no words");
        let e = setup(&["--shell", "no-such-shell-here -x", "true"])
            .err()
            .unwrap();
        assert!(
            e.contains("--shell: \"no-such-shell-here\" is not an executable"),
            "{e}"
        );
    }

    #[test]
    fn parameter_scan_and_lists_expand_into_commands() {
        let s = setup(&["-P", "n", "1", "3", "--style", "basic", "sleep 0.{n}"]).unwrap();
        let names: Vec<&str> = s.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["sleep 0.1", "sleep 0.2", "sleep 0.3"]);
        assert_eq!(s.commands[2].parameters, [("n".to_owned(), "3".to_owned())]);

        let s = setup(&[
            "-P",
            "t",
            "0",
            "0.3",
            "-D",
            "0.1",
            "--style",
            "basic",
            "sleep {t}",
        ])
        .unwrap();
        let names: Vec<&str> = s.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["sleep 0", "sleep 0.1", "sleep 0.2", "sleep 0.3"]);
        // As hyperfine's decimals: MIN as given, then the step's places as
        // typed.
        let s = setup(&[
            "-P",
            "n",
            "0",
            "1",
            "-D",
            "0.50",
            "--style",
            "basic",
            "sleep {n}",
        ])
        .unwrap();
        let names: Vec<&str> = s.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["sleep 0", "sleep 0.50", "sleep 1.00"]);
        let s = setup(&[
            "-P",
            "n",
            "1",
            "2",
            "-D",
            "0.5",
            "--style",
            "basic",
            "sleep {n}",
        ])
        .unwrap();
        let names: Vec<&str> = s.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["sleep 1", "sleep 1.5", "sleep 2.0"]);

        let s = setup(&[
            "-L",
            "a",
            "x,y",
            "-L",
            "b",
            "1,2",
            "--style",
            "basic",
            "-n",
            "run {a}{b}",
            "echo {a} {b}",
        ])
        .unwrap();
        let names: Vec<&str> = s.commands.iter().map(|c| c.name.as_str()).collect();
        // hyperfine's order: the first list varies fastest.
        assert_eq!(names, ["run x1", "run y1", "run x2", "run y2"]);
        assert_eq!(s.commands[3].spec.argv, ["echo", "y", "2"]);
        assert_eq!(
            s.commands[1].parameters,
            [
                ("a".to_owned(), "y".to_owned()),
                ("b".to_owned(), "1".to_owned())
            ]
        );

        // Every command with the first value, then every command with the next.
        let s = setup(&[
            "-L",
            "x",
            "1,2",
            "--style",
            "basic",
            "echo a{x}",
            "echo b{x}",
        ])
        .unwrap();
        let names: Vec<&str> = s.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["echo a1", "echo b1", "echo a2", "echo b2"]);
    }

    #[test]
    fn parameter_values_may_be_negative_or_hold_escaped_commas() {
        let s = setup(&["-P", "n", "-2", "0", "--style", "basic", "echo {n}"]).unwrap();
        let names: Vec<&str> = s.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["echo -2", "echo -1", "echo 0"]);
        let s = setup(&["-L", "x", "-1,2", "--style", "basic", "echo {x}"]).unwrap();
        assert_eq!(s.commands[0].spec.argv, ["echo", "-1"]);
        assert_eq!(split_list(r"a\,b,c"), ["a,b", "c"]);
        assert_eq!(split_list(r"a\\,b"), ["a\\", "b"]);
        assert_eq!(split_list(r"a\b,"), ["a\\b", ""]);
        let s = setup(&[
            "-L", "x", r"a\,b,c", "--shell", "sh", "--style", "basic", "echo {x}",
        ])
        .unwrap();
        assert_eq!(s.commands[0].spec.argv, ["sh", "-c", "echo a,b"]);
        assert_eq!(s.commands.len(), 2);
    }

    #[test]
    fn substitution_is_one_pass() {
        let p = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let params = [p("a", "{b}"), p("b", "x")];
        assert_eq!(
            substitute("echo {a} {b} {c} {", &params),
            "echo {b} x {c} {"
        );
        assert_eq!(substitute("{{a}}", &params), "{{b}}");
    }

    #[test]
    fn names_are_one_per_command_or_one_per_benchmark() {
        let names = |line: &[&str]| -> Vec<String> {
            setup(line)
                .unwrap()
                .commands
                .into_iter()
                .map(|c| c.name)
                .collect()
        };
        let base = ["--style", "basic", "-L", "x", "1,2"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            base.iter().copied().chain(extra.iter().copied()).collect()
        };
        assert_eq!(
            names(&with(&["-n", "A", "-n", "B", "echo {x}"])),
            ["A", "B"]
        );
        assert_eq!(names(&with(&["-n", "n{x}", "echo {x}"])), ["n1", "n2"]);
        assert_eq!(
            names(&with(&[
                "-n",
                "A{x}",
                "-n",
                "B{x}",
                "echo a{x}",
                "echo b{x}"
            ])),
            ["A1", "B1", "A2", "B2"]
        );
        assert_eq!(
            names(&with(&[
                "-n",
                "1",
                "-n",
                "2",
                "-n",
                "3",
                "-n",
                "4",
                "echo a{x}",
                "echo b{x}"
            ])),
            ["1", "2", "3", "4"]
        );
        let e = setup(&with(&["-n", "A", "-n", "B", "-n", "C", "echo {x}"]))
            .err()
            .unwrap();
        assert_eq!(e, "3 --command-name given for 1 commands (or 2 benchmarks)");
    }

    #[test]
    fn a_setup_that_differs_per_command_groups_the_runs() {
        let s = setup(&[
            "-L", "x", "a,b", "-s", "make {x}", "--style", "basic", "echo {x}",
        ])
        .unwrap();
        assert_eq!(s.plan.order, Order::Grouped);
        assert_eq!(s.view.order, "grouped");
        assert_eq!(s.notes.len(), 1);
        let s = setup(&[
            "-L", "x", "a,b", "-c", "rm {x}", "--style", "basic", "echo {x}",
        ])
        .unwrap();
        assert_eq!(s.plan.order, Order::Grouped);
        // The same setup for every command leaves the runs interleaved.
        let s = setup(&["-s", "make", "--style", "basic", "true", "false"]).unwrap();
        assert_eq!(s.plan.order, Order::Interleaved);
        assert!(s.notes.is_empty());
        let e = setup(&[
            "-L",
            "x",
            "a,b",
            "-s",
            "make {x}",
            "--order",
            "interleaved",
            "echo {x}",
        ])
        .err()
        .unwrap();
        assert!(e.contains("use --order grouped"), "{e}");
    }

    #[test]
    fn prepare_is_one_for_all_or_one_per_command() {
        let s = setup(&["-p", "sync", "--style", "basic", "true", "false"]).unwrap();
        assert!(
            s.commands
                .iter()
                .all(|c| c.prepare.as_ref().unwrap().argv == ["sh", "-c", "sync"])
        );
        let s = setup(&["-p", "x", "-p", "y", "--style", "basic", "true", "false"]).unwrap();
        assert_eq!(s.commands[1].prepare.as_ref().unwrap().argv[2], "y");
        let e = setup(&[
            "-p", "x", "-p", "y", "--style", "basic", "true", "false", "echo",
        ])
        .err()
        .unwrap();
        assert!(e.contains("2 --prepare given"), "{e}");
        // A --reference that is one of the commands changes no count.
        let s = setup_line("-p x -p y --reference false --style basic true false").unwrap();
        assert_eq!(s.commands[1].prepare.as_ref().unwrap().argv[2], "y");
        // One more, benchmarked first, takes the first prepare.
        let s = setup_line("-p r -p x -p y --reference echo --style basic true false").unwrap();
        assert_eq!(s.commands[0].prepare.as_ref().unwrap().argv[2], "r");
        assert_eq!(s.commands[2].prepare.as_ref().unwrap().argv[2], "y");
        let e = setup_line("-p x -p y --reference echo --style basic true false")
            .err()
            .unwrap();
        assert!(e.contains("the --reference command's first (3)"), "{e}");
    }

    #[test]
    fn reference_is_a_given_command_or_one_more_first() {
        let s = setup(&["--reference", "false", "--style", "basic", "true", "false"]).unwrap();
        assert_eq!(s.view.reference, 1);
        let s = setup(&["--reference", "echo", "--style", "basic", "true", "false"]).unwrap();
        assert_eq!(s.view.reference, 0);
        assert_eq!(s.commands[0].name, "echo");
        assert_eq!(s.commands.len(), 3);
    }

    #[test]
    fn programs_are_found_on_path_and_a_missing_one_is_named() {
        let s = setup(&["--style", "basic", "true", "/bin/echo hi"]).unwrap();
        let exe = s.commands[0].spec.exe.as_deref().unwrap();
        assert!(exe.ends_with("/true") && exe.starts_with('/'), "{exe}");
        assert_eq!(s.commands[0].spec.argv, ["true"]);
        assert_eq!(s.commands[1].spec.exe.as_deref(), Some("/bin/echo"));
        let e = setup(&["no-such-program-here x"]).err().unwrap();
        assert_eq!(
            e,
            "command \"no-such-program-here x\": \"no-such-program-here\" is not an executable file on PATH"
        );
    }

    #[test]
    fn runs_conflict_with_min_and_max_runs_as_in_hyperfine() {
        for line in [
            ["-r", "3", "-M", "2", "true"],
            ["-r", "3", "-m", "5", "true"],
        ] {
            let e = BenchArgs::try_parse_from(std::iter::once("chaperone bench").chain(line))
                .err()
                .unwrap_or_else(|| panic!("{line:?} accepted"));
            assert!(e.to_string().contains("cannot be used with"), "{e}");
        }
    }

    #[test]
    fn huge_counts_and_times_are_refused_not_a_panic() {
        let e = setup(&["-r", "18446744073709551615", "true"])
            .err()
            .unwrap();
        assert!(e.contains("at most 10000000 runs"), "{e}");
        let e = setup(&["-M", "20000000", "true"]).err().unwrap();
        assert!(e.starts_with("--max-runs 20000000"), "{e}");
        let e = setup(&["--min-time", "1e30", "true"]).err().unwrap();
        assert!(
            e.contains("--min-time 1000000000000000000000000000000"),
            "{e}"
        );
        // And a sizing run that asks for more is held to the most.
        let plan = Plan {
            min_time: Duration::from_secs(1_000_000),
            ..Plan::default()
        };
        assert_eq!(plan.count_for(Duration::from_nanos(1)), MAX_RUNS);
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        let cases: [(&[&str], &str); 10] = [
            (
                &["--metric", "rss", "a"],
                "--metric \"rss\": not one of wall, cpu",
            ),
            (&["-u", "minute", "a"], "--time-unit \"minute\""),
            (&["--order", "random", "a"], "--order \"random\""),
            (&["--style", "fancy", "a"], "--style \"fancy\""),
            (&["-j", "0", "a"], "--jobs 0"),
            (
                &["-m", "5", "-M", "3", "a"],
                "--max-runs 3 is below --min-runs 5",
            ),
            (&["-j", "4", "-p", "x", "a"], "need --jobs 1"),
            (&["-P", "n", "1", "x", "a"], "\"x\" is not a number"),
            (
                &["a 'b"],
                "command \"a 'b\": the ' at byte 2 is never closed",
            ),
            (&[], "nothing to benchmark"),
        ];
        for (line, want) in cases {
            let e = setup(line)
                .err()
                .unwrap_or_else(|| panic!("{line:?} accepted"));
            assert!(e.contains(want), "{line:?}: {e}");
        }
    }

    #[test]
    fn a_spec_file_gives_one_command_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(
            &path,
            r#"{"specs": {"one": {"argv": ["/bin/true"]}, "two": {"argv": ["/bin/echo"], "perf": false}}}"#,
        )
        .unwrap();
        let s = setup(&["--spec", path.to_str().unwrap(), "--style", "basic"]).unwrap();
        let names: Vec<&str> = s.commands.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        use crate::spec::PerfSpec;
        assert_eq!(s.commands[0].spec.perf, Some(Metric::perf_spec()));
        assert_eq!(s.commands[1].spec.perf, Some(PerfSpec::Enabled(false)));
        std::fs::write(&path, r#"{"specs": {"bad": {"argv": []}}}"#).unwrap();
        let e = setup(&["--spec", path.to_str().unwrap()]).err().unwrap();
        assert!(e.contains("bad"), "{e}");
    }
}
