//! How a benchmark's [`Outcome`] is shown: the terminal text, and the JSON,
//! Markdown, AsciiDoc, Org-mode, CSV and self-contained HTML (inline SVG)
//! exports.

use super::stats::{Ratio, Summary};
use super::{CommandOutcome, Metric, Outcome, Run, Unit};
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::fmt::Write as _;

/// How the figures are shown and compared.
#[derive(Debug, Clone)]
pub struct View {
    /// The metric comparisons and outlier warnings use.
    pub primary: Metric,
    /// The command others are compared with (index).
    pub reference: usize,
    /// Times in this unit rather than one chosen per figure.
    pub time_unit: Option<TimeUnit>,
    /// The run order, as said in reports.
    pub order: String,
    /// The order of the comparison and the markup tables.
    pub sort: Sort,
}

/// The order of the comparison and of the Markdown, AsciiDoc and Org-mode
/// tables (hyperfine's `--sort`). The per-command blocks, the JSON, CSV and
/// HTML exports keep the commands' order whatever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// The comparison by the primary metric's mean, the tables as given.
    #[default]
    Auto,
    /// Both as the commands were given.
    Command,
    /// Both by the primary metric's mean, least first.
    MeanTime,
}

impl Sort {
    /// The order named so (hyperfine's names).
    pub fn from_name(s: &str) -> Option<Sort> {
        Some(match s {
            "auto" => Sort::Auto,
            "command" => Sort::Command,
            "mean-time" => Sort::MeanTime,
            _ => return None,
        })
    }
}

/// A fixed unit for times (`--time-unit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// ns
    Nanosecond,
    /// µs
    Microsecond,
    /// ms
    Millisecond,
    /// s
    Second,
}

impl TimeUnit {
    /// The unit named so (hyperfine's names).
    pub fn from_name(s: &str) -> Option<TimeUnit> {
        Some(match s {
            "nanosecond" | "ns" => TimeUnit::Nanosecond,
            "microsecond" | "us" | "µs" => TimeUnit::Microsecond,
            "millisecond" | "ms" => TimeUnit::Millisecond,
            "second" | "s" => TimeUnit::Second,
            _ => return None,
        })
    }

    fn scale(self) -> (f64, &'static str) {
        match self {
            TimeUnit::Nanosecond => (1e9, "ns"),
            TimeUnit::Microsecond => (1e6, "µs"),
            TimeUnit::Millisecond => (1e3, "ms"),
            TimeUnit::Second => (1.0, "s"),
        }
    }

    fn for_value(v: f64) -> TimeUnit {
        let a = v.abs();
        if a < 1e-6 && a > 0.0 {
            TimeUnit::Nanosecond
        } else if a < 1e-3 {
            TimeUnit::Microsecond
        } else if a < 1.0 {
            TimeUnit::Millisecond
        } else {
            TimeUnit::Second
        }
    }
}

/// `v` (in `unit`) for people: `612.3 µs`, `9.8 MiB`, `1,234`.
pub fn format_value(v: f64, unit: Unit, time_unit: Option<TimeUnit>) -> String {
    match unit {
        Unit::Seconds => {
            let (k, name) = time_unit.unwrap_or_else(|| TimeUnit::for_value(v)).scale();
            let x = v * k;
            if x == 0.0 {
                format!("0 {name}")
            } else if x.abs() >= 100.0 || name == "ns" || name == "µs" {
                // Tenths of a nanosecond or microsecond are past what the
                // clocks measure (rusage counts whole microseconds).
                format!("{x:.1} {name}")
            } else {
                format!("{x:.3} {name}")
            }
        }
        Unit::Bytes => {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let mut x = v;
            let mut u = 0;
            while x.abs() >= 1024.0 && u + 1 < units.len() {
                x /= 1024.0;
                u += 1;
            }
            if u == 0 {
                format!("{x:.0} B")
            } else {
                format!("{x:.1} {}", units[u])
            }
        }
        Unit::Count => {
            if v.abs() >= 100.0 || v.fract() == 0.0 {
                group_thousands(v.round() as i64)
            } else {
                format!("{v:.1}")
            }
        }
    }
}

fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

impl View {
    fn fmt(&self, m: Metric, v: f64) -> String {
        format_value(v, m.unit(), self.time_unit)
    }

    /// Each command's ratio to the reference on the primary metric.
    pub fn ratios(&self, outcome: &Outcome) -> Vec<Option<Ratio>> {
        let reference = outcome
            .commands
            .get(self.reference)
            .and_then(|c| c.summary(self.primary));
        outcome
            .commands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let this = c.summary(self.primary)?;
                if i == self.reference {
                    // Not two samples: exactly 1, no spread (and with one
                    // run, no interval, as for the others).
                    let (low, high) = match this.spread() {
                        Some(_) => (1.0, 1.0),
                        None => (f64::NEG_INFINITY, f64::INFINITY),
                    };
                    return Some(Ratio {
                        ratio: 1.0,
                        stddev: 0.0,
                        low,
                        high,
                        significant: false,
                    });
                }
                Ratio::of(this, reference?)
            })
            .collect()
    }

    /// The commands' indices, by the primary metric's mean when `by_mean`
    /// (those without figures last; ties as given), else as given.
    fn sorted(&self, outcome: &Outcome, by_mean: bool) -> Vec<usize> {
        let mut order: Vec<usize> = (0..outcome.commands.len()).collect();
        if by_mean {
            let mean = |i: usize| outcome.commands[i].summary(self.primary).map(|x| x.mean);
            order.sort_by(|&a, &b| match (mean(a), mean(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
        }
        order
    }

    /// The text shown at the end of a run.
    pub fn text(&self, outcome: &Outcome) -> String {
        let mut s = String::new();
        let p = self.primary;
        for (n, c) in outcome.commands.iter().enumerate() {
            let _ = writeln!(s, "Benchmark {}: {}", n + 1, c.name);
            if let Some(w) = c.summary(p) {
                let label = if p == Metric::Wall {
                    "Time".to_owned()
                } else {
                    p.name().to_owned()
                };
                let user = c
                    .summary(Metric::User)
                    .map(|u| self.fmt(Metric::User, u.mean));
                let sys = c
                    .summary(Metric::System)
                    .map(|u| self.fmt(Metric::System, u.mean));
                let cpu = match (user, sys) {
                    (Some(u), Some(y)) if p == Metric::Wall => {
                        format!("    [User: {u}, System: {y}]")
                    }
                    _ => String::new(),
                };
                let _ = match w.spread() {
                    Some(sd) => writeln!(
                        s,
                        "  {:<20} {:>10} ± {:>10}{cpu}",
                        format!("{label} (mean ± σ):"),
                        self.fmt(p, w.mean),
                        self.fmt(p, sd)
                    ),
                    None => writeln!(
                        s,
                        "  {:<20} {:>10}{cpu}",
                        format!("{label}:"),
                        self.fmt(p, w.mean)
                    ),
                };
                let _ = writeln!(
                    s,
                    "  {:<20} {:>10} … {:>10}    {} run{}",
                    "Range (min … max):",
                    self.fmt(p, w.min),
                    self.fmt(p, w.max),
                    c.runs.len(),
                    if c.runs.len() == 1 { "" } else { "s" }
                );
            }
            let mut rows =
                vec![["metric", "median", "mean ± σ", "min … max", "outliers"].map(str::to_owned)];
            for m in Metric::ALL {
                let Some(x) = c.summary(m) else { continue };
                rows.push([
                    m.name().to_owned(),
                    self.fmt(m, x.median),
                    match x.spread() {
                        Some(sd) => format!("{} ± {}", self.fmt(m, x.mean), self.fmt(m, sd)),
                        None => self.fmt(m, x.mean),
                    },
                    format!("{} … {}", self.fmt(m, x.min), self.fmt(m, x.max)),
                    outliers(x),
                ]);
            }
            s.push_str(&aligned(&rows));
            if let Some(w) = c.summary(p) {
                if w.outliers() > 0 {
                    let _ = writeln!(
                        s,
                        "  Warning: Statistical outliers were detected ({} of {} runs, {}). \
                         Consider re-running this benchmark on a quiet system.",
                        w.outliers(),
                        w.n,
                        p.name()
                    );
                }
            }
            let failed = c.failures();
            if failed > 0 {
                let _ = writeln!(
                    s,
                    "  Warning: Ignoring non-zero exit code ({failed} of {} runs).",
                    c.runs.len()
                );
            }
            s.push('\n');
        }
        if outcome.jobs > 1 {
            let n = outcome.timed_runs;
            let _ = writeln!(
                s,
                "Throughput: {:.0} runs/s with {} in flight ({n} runs in {:.2} s)\n",
                outcome.throughput(),
                outcome.jobs,
                outcome.elapsed
            );
        }
        if outcome.commands.len() > 1 {
            let ratios = self.ratios(outcome);
            let reference = &outcome.commands[self.reference].name;
            let _ = writeln!(
                s,
                "Relative to {reference} ({}, ratio of means, 95% interval):",
                p.name()
            );
            for i in self.sorted(outcome, self.sort != Sort::Command) {
                if i == self.reference {
                    continue;
                }
                let (c, r) = (&outcome.commands[i], &ratios[i]);
                let line = match r {
                    Some(r) if !r.low.is_finite() => {
                        format!("{:.3}  (a single run: no interval)", r.ratio)
                    }
                    Some(r) => format!(
                        "{:.3} ± {:.3}  [{:.3} … {:.3}]  {}",
                        r.ratio,
                        r.stddev,
                        r.low,
                        r.high,
                        verdict(r)
                    ),
                    None => "no ratio (no figures)".to_owned(),
                };
                let _ = writeln!(s, "  {:<30} {line}", c.name);
            }
            s.push('\n');
        }
        for note in self.notes(outcome) {
            let _ = writeln!(s, "Note: {note}");
        }
        s
    }

    /// Notes on what the figures cannot say.
    pub fn notes(&self, outcome: &Outcome) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(why) = &outcome.pmu_note {
            notes.push(why.clone());
        }
        if let Some(floor) = outcome.rss_floor {
            let at_floor = outcome.commands.iter().any(|c| {
                c.summary(Metric::MaxRss)
                    .is_some_and(|x| x.median <= floor as f64 * 1.05)
            });
            if at_floor {
                notes.push(format!(
                    "max-rss counts the runner's own peak resident set ({}), as the kernel \
                     does for any child spawned without a copy of its parent's memory; a \
                     max-rss at that floor means at most that much",
                    format_value(floor as f64, Unit::Bytes, None)
                ));
            }
        }
        notes
    }

    /// The JSON export: hyperfine's fields (of wall time) plus every metric's
    /// summary, the comparison and every run's raw figures. Serialized
    /// straight from `outcome`: a `serde_json::Value` of every run's figures
    /// took 23 ms for 2,000 runs, longer than the whole export should.
    pub fn json<'a>(&'a self, outcome: &'a Outcome) -> JsonExport<'a> {
        JsonExport {
            view: self,
            outcome,
        }
    }

    /// The Markdown export: hyperfine's table, with the primary metric's
    /// relative figure and the extra metrics.
    pub fn markdown(&self, outcome: &Outcome) -> String {
        self.markup(outcome, Markup::Markdown)
    }

    /// The AsciiDoc export: the Markdown export's table, as hyperfine writes
    /// AsciiDoc.
    pub fn asciidoc(&self, outcome: &Outcome) -> String {
        self.markup(outcome, Markup::AsciiDoc)
    }

    /// The Emacs Org-mode export: the Markdown export's table, as hyperfine
    /// writes Org-mode.
    pub fn orgmode(&self, outcome: &Outcome) -> String {
        self.markup(outcome, Markup::OrgMode)
    }

    /// The table of the markup exports, in `markup`.
    fn markup(&self, outcome: &Outcome, markup: Markup) -> String {
        let (header, rows) = self.markup_table(outcome);
        markup.table(&header, &rows)
    }

    /// The markup exports' table: its header, then a row per command (the
    /// command's name unescaped, for the markup to fence).
    fn markup_table(&self, outcome: &Outcome) -> (Vec<String>, Vec<Vec<String>>) {
        let unit = self.table_unit(outcome);
        let (k, name) = unit.scale();
        let header = vec![
            "Command".to_owned(),
            format!("Mean [{name}]"),
            format!("Median [{name}]"),
            format!("Min [{name}]"),
            format!("Max [{name}]"),
            format!("User [{name}]"),
            format!("System [{name}]"),
            "Max RSS [MiB]".to_owned(),
            format!("Task clock [{name}]"),
            format!("Relative ({})", self.primary.name()),
        ];
        let ratios = self.ratios(outcome);
        let rows = self
            .sorted(outcome, self.sort == Sort::MeanTime)
            .into_iter()
            .map(|i| (&outcome.commands[i], &ratios[i]))
            .map(|(c, r)| {
                let t = |m: Metric, f: fn(&Summary) -> f64| {
                    c.summary(m)
                        .map_or("–".to_owned(), |x| format!("{:.3}", f(x) * k))
                };
                vec![
                    c.name.clone(),
                    c.summary(Metric::Wall)
                        .map_or("–".into(), |x| match x.spread() {
                            Some(sd) => format!("{:.3} ± {:.3}", x.mean * k, sd * k),
                            None => format!("{:.3}", x.mean * k),
                        }),
                    t(Metric::Wall, |x| x.median),
                    t(Metric::Wall, |x| x.min),
                    t(Metric::Wall, |x| x.max),
                    t(Metric::User, |x| x.mean),
                    t(Metric::System, |x| x.mean),
                    c.summary(Metric::MaxRss)
                        .map_or("–".into(), |x| format!("{:.1}", x.median / 1048576.0)),
                    t(Metric::TaskClock, |x| x.mean),
                    r.as_ref().map_or("–".into(), |r| {
                        if r.low.is_finite() {
                            format!("{:.2} ± {:.2}", r.ratio, r.stddev)
                        } else {
                            format!("{:.2}", r.ratio)
                        }
                    }),
                ]
            })
            .collect();
        (header, rows)
    }

    fn table_unit(&self, outcome: &Outcome) -> TimeUnit {
        self.time_unit.unwrap_or_else(|| {
            let least = outcome
                .commands
                .iter()
                .filter_map(|c| c.summary(Metric::Wall).map(|x| x.mean))
                .fold(f64::INFINITY, f64::min);
            if least.is_finite() {
                TimeUnit::for_value(least)
            } else {
                TimeUnit::Second
            }
        })
    }

    /// The CSV export: hyperfine's columns (seconds), more metrics, then one
    /// column per parameter.
    pub fn csv(&self, outcome: &Outcome) -> String {
        let mut params: Vec<&str> = Vec::new();
        for c in &outcome.commands {
            for (k, _) in &c.parameters {
                if !params.contains(&k.as_str()) {
                    params.push(k);
                }
            }
        }
        let mut s = String::from(
            "command,mean,stddev,median,user,system,min,max,runs,failures,max_rss,task_clock,instructions,relative",
        );
        for p in &params {
            let _ = write!(s, ",parameter_{p}");
        }
        s.push('\n');
        let ratios = self.ratios(outcome);
        for (c, r) in outcome.commands.iter().zip(&ratios) {
            let w = c.summary(Metric::Wall);
            let f = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
            let cols = [
                csv_field(&c.name),
                f(w.map(|x| x.mean)),
                f(w.and_then(Summary::spread)),
                f(w.map(|x| x.median)),
                f(c.summary(Metric::User).map(|x| x.mean)),
                f(c.summary(Metric::System).map(|x| x.mean)),
                f(w.map(|x| x.min)),
                f(w.map(|x| x.max)),
                c.runs.len().to_string(),
                c.failures().to_string(),
                f(c.summary(Metric::MaxRss).map(|x| x.median)),
                f(c.summary(Metric::TaskClock).map(|x| x.mean)),
                f(c.summary(Metric::Instructions).map(|x| x.mean)),
                f(r.as_ref().map(|r| r.ratio)),
            ];
            s.push_str(&cols.join(","));
            for p in &params {
                let v = c
                    .parameters
                    .iter()
                    .find(|(k, _)| k == p)
                    .map_or("", |(_, v)| v);
                let _ = write!(s, ",{}", csv_field(v));
            }
            s.push('\n');
        }
        s
    }

    /// The HTML export: one self-contained page, a table and, per metric, the
    /// distribution of each command and its runs over time, as inline SVG.
    pub fn html(&self, outcome: &Outcome) -> String {
        let mut s = String::from(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>chaperone bench</title>\n<style>\nbody{font-family:system-ui,sans-serif;margin:2em;color:#222;background:#fff}\ntable{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}\ntd:first-child,th:first-child{text-align:left}code{font-size:90%}\nsection{margin:2em 0}svg{display:block;margin:.5em 0;background:#fafafa;border:1px solid #ddd}\n.legend span{display:inline-block;margin-right:1.5em}.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}\n.note{color:#555}\n</style></head><body>\n<h1>chaperone bench</h1>\n",
        );
        let _ = writeln!(
            s,
            "<p>{} command(s), order {}, {} in flight, {:.3} s of runs; primary metric <b>{}</b>, compared with <code>{}</code>.</p>",
            outcome.commands.len(),
            esc(&self.order),
            outcome.jobs,
            // Of the timed runs after the sizing ones; with one run each,
            // those.
            if outcome.timed_runs > 0 {
                outcome.elapsed
            } else {
                outcome
                    .commands
                    .iter()
                    .flat_map(|c| &c.runs)
                    .filter_map(|r| r.value(Metric::Wall))
                    .sum()
            },
            self.primary.name(),
            esc(outcome.commands.get(self.reference).map_or("", |c| &c.name))
        );
        s.push_str("<div class=\"legend\">");
        for (i, c) in outcome.commands.iter().enumerate() {
            let _ = write!(
                s,
                "<span><i style=\"background:{}\"></i><code>{}</code></span>",
                color(i),
                esc(&c.name)
            );
        }
        s.push_str("</div>\n<table><tr><th>command</th><th>runs</th>");
        for m in Metric::PRIMARY {
            let _ = write!(s, "<th>{} median</th>", m.name());
        }
        s.push_str("<th>relative</th></tr>\n");
        let ratios = self.ratios(outcome);
        for (c, r) in outcome.commands.iter().zip(&ratios) {
            let _ = write!(
                s,
                "<tr><td><code>{}</code></td><td>{}</td>",
                esc(&c.name),
                c.runs.len()
            );
            for m in Metric::PRIMARY {
                let v = c.summary(m).map_or("–".into(), |x| self.fmt(m, x.median));
                let _ = write!(s, "<td>{}</td>", esc(&v));
            }
            let rel = r.as_ref().map_or("–".into(), |r| {
                if r.low.is_finite() {
                    format!("{:.3} ± {:.3} ({})", r.ratio, r.stddev, verdict(r))
                } else {
                    format!("{:.3} (a single run: no interval)", r.ratio)
                }
            });
            let _ = writeln!(s, "<td>{}</td></tr>", esc(&rel));
        }
        s.push_str("</table>\n");
        for note in self.notes(outcome) {
            let _ = writeln!(s, "<p class=\"note\">Note: {}</p>", esc(&note));
        }
        for m in Metric::ALL {
            if outcome.commands.iter().all(|c| c.summary(m).is_none()) {
                continue;
            }
            let _ = writeln!(
                s,
                "<section id=\"{0}\"><h2>{0}</h2>\n{1}\n{2}</section>",
                m.name(),
                self.distribution_svg(outcome, m),
                self.drift_svg(outcome, m)
            );
        }
        s.push_str("</body></html>\n");
        s
    }

    /// Per command: a box from the first to the third quartile, the median,
    /// whiskers to min and max, and the runs as points.
    fn distribution_svg(&self, outcome: &Outcome, m: Metric) -> String {
        let (w, row, left) = (900.0, 40.0, 10.0);
        let h = row * outcome.commands.len() as f64 + 40.0;
        let (lo, hi) = range_of(outcome, m);
        let x = |v: f64| left + (v - lo) / (hi - lo) * (w - 2.0 * left);
        let mut s = format!(
            "<svg class=\"dist\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><title>{} distribution</title>",
            m.name()
        );
        for (i, c) in outcome.commands.iter().enumerate() {
            let mut v: Vec<f64> = c.runs.iter().filter_map(|r| r.value(m)).collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
            let y = 10.0 + row * i as f64;
            let col = color(i);
            let mid = y + row / 2.0 - 5.0;
            let _ = write!(
                s,
                "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{mid:.1}\" y2=\"{mid:.1}\" stroke=\"{col}\"/>\
                 <rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{col}\" fill-opacity=\"0.25\" stroke=\"{col}\"/>",
                x(v[0]),
                x(v[v.len() - 1]),
                x(q(0.25)),
                y,
                (x(q(0.75)) - x(q(0.25))).max(1.0),
                row - 10.0,
                mid = mid,
                col = col,
            );
            let _ = write!(
                s,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"{col}\" stroke-width=\"3\"/>",
                x(q(0.5)),
                y,
                y + row - 10.0
            );
            for (k, val) in thin(&v, 1500).into_iter().enumerate() {
                let jitter = (k as f64 * 0.618_034).fract() * (row - 14.0);
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{col}\" fill-opacity=\"0.6\"/>",
                    x(val),
                    y + 2.0 + jitter
                );
            }
        }
        s.push_str(&self.axis(m, lo, hi, left, w - left, h - 20.0));
        s.push_str("</svg>");
        s
    }

    /// Each run's value against when it ran: drift shows as a slope.
    fn drift_svg(&self, outcome: &Outcome, m: Metric) -> String {
        let (w, h, left) = (900.0, 220.0, 10.0);
        let (lo, hi) = range_of(outcome, m);
        let t_end = outcome
            .commands
            .iter()
            .flat_map(|c| c.runs.iter().map(|r| r.at))
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let y = |v: f64| 10.0 + (1.0 - (v - lo) / (hi - lo)) * (h - 50.0);
        let mut s = format!(
            "<svg class=\"drift\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><title>{} over time</title>",
            m.name()
        );
        for (i, c) in outcome.commands.iter().enumerate() {
            let pts: Vec<(f64, f64)> = c
                .runs
                .iter()
                .filter_map(|r| Some((r.at, r.value(m)?)))
                .collect();
            for (t, v) in thin(&pts, 2000) {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\" fill-opacity=\"0.8\"/>",
                    left + t / t_end * (w - 2.0 * left),
                    y(v),
                    color(i)
                );
            }
        }
        let _ = write!(
            s,
            "<text x=\"{left}\" y=\"{:.0}\" font-size=\"11\">0 s</text><text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"end\">{:.2} s (time of run)</text>",
            h - 8.0,
            w - left,
            h - 8.0,
            t_end
        );
        let _ = write!(
            s,
            "<text x=\"{left}\" y=\"20\" font-size=\"11\">{}</text><text x=\"{left}\" y=\"{:.0}\" font-size=\"11\">{}</text>",
            esc(&self.fmt(m, hi)),
            h - 40.0,
            esc(&self.fmt(m, lo))
        );
        s.push_str("</svg>");
        s
    }

    fn axis(&self, m: Metric, lo: f64, hi: f64, x0: f64, x1: f64, y: f64) -> String {
        let mut s =
            format!("<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#888\"/>");
        for k in 0..=4 {
            let v = lo + (hi - lo) * k as f64 / 4.0;
            let x = x0 + (x1 - x0) * k as f64 / 4.0;
            let anchor = match k {
                0 => "start",
                4 => "end",
                _ => "middle",
            };
            let _ = write!(
                s,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y}\" y2=\"{:.0}\" stroke=\"#888\"/><text x=\"{x:.1}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"{anchor}\">{}</text>",
                y + 4.0,
                y + 16.0,
                esc(&self.fmt(m, v))
            );
        }
        s
    }
}

/// The JSON export of an outcome ([`View::json`]), written as it is
/// serialized.
#[derive(Debug)]
pub struct JsonExport<'a> {
    view: &'a View,
    outcome: &'a Outcome,
}

impl Serialize for JsonExport<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (view, outcome) = (self.view, self.outcome);
        let ratios = view.ratios(outcome);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(
            "results",
            &Seq(outcome
                .commands
                .iter()
                .zip(&ratios)
                .map(|(c, ratio)| CommandJson {
                    c,
                    ratio: ratio.as_ref(),
                })),
        )?;
        m.serialize_entry("primary_metric", view.primary.name())?;
        m.serialize_entry(
            "reference",
            &outcome.commands.get(view.reference).map(|c| &c.name),
        )?;
        m.serialize_entry("order", &view.order)?;
        m.serialize_entry("jobs", &outcome.jobs)?;
        m.serialize_entry("elapsed", &outcome.elapsed)?;
        m.serialize_entry("throughput", &outcome.throughput())?;
        m.serialize_entry("rss_floor", &outcome.rss_floor)?;
        m.serialize_entry("notes", &view.notes(outcome))?;
        m.serialize_entry(
            "units",
            &Entries(Metric::ALL.iter().map(|m| (m.name(), m.unit()))),
        )?;
        m.serialize_entry("chaperone_version", env!("CARGO_PKG_VERSION"))?;
        m.end()
    }
}

/// One command in the JSON export.
struct CommandJson<'a> {
    c: &'a CommandOutcome,
    ratio: Option<&'a Ratio>,
}

impl Serialize for CommandJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.c;
        let wall = c.summary(Metric::Wall);
        let mean_of = |m| c.summary(m).map(|x| x.mean);
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("command", &c.name)?;
        m.serialize_entry("mean", &wall.map(|x| x.mean))?;
        m.serialize_entry("stddev", &wall.and_then(Summary::spread))?;
        m.serialize_entry("median", &wall.map(|x| x.median))?;
        m.serialize_entry("user", &mean_of(Metric::User))?;
        m.serialize_entry("system", &mean_of(Metric::System))?;
        m.serialize_entry("min", &wall.map(|x| x.min))?;
        m.serialize_entry("max", &wall.map(|x| x.max))?;
        m.serialize_entry("times", &Seq(c.runs.iter().map(|r| r.value(Metric::Wall))))?;
        m.serialize_entry("exit_codes", &Seq(c.runs.iter().map(|r| r.exit_code)))?;
        // Left out without parameters, as hyperfine does.
        if !c.parameters.is_empty() {
            m.serialize_entry(
                "parameters",
                &Entries(c.parameters.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            )?;
        }
        m.serialize_entry(
            "metrics",
            &Entries(
                Metric::ALL
                    .iter()
                    .filter_map(|&m| c.summary(m).map(|x| (m.name(), x))),
            ),
        )?;
        m.serialize_entry("relative", &self.ratio)?;
        m.serialize_entry("runs", &Seq(c.runs.iter().map(RunJson)))?;
        m.end()
    }
}

/// One run in the JSON export: its raw figures.
struct RunJson<'a>(&'a Run);

impl Serialize for RunJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry("index", &r.index)?;
        m.serialize_entry("at", &r.at)?;
        m.serialize_entry("exit_code", &r.exit_code)?;
        m.serialize_entry("signal", &r.signal)?;
        m.serialize_entry(
            "values",
            &Entries(
                Metric::ALL
                    .iter()
                    .filter_map(|&m| r.value(m).map(|v| (m.name(), v))),
            ),
        )?;
        m.end()
    }
}

/// A JSON array of what an iterator gives, serialized as it is walked.
struct Seq<I>(I);

impl<I> Serialize for Seq<I>
where
    I: Iterator + Clone,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

/// A JSON object of the (key, value) pairs an iterator gives, in its order.
struct Entries<I>(I);

impl<I, K, V> Serialize for Entries<I>
where
    I: Iterator<Item = (K, V)> + Clone,
    K: Serialize,
    V: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.clone())
    }
}

/// The spread of `m` over every command's runs, widened when flat.
fn range_of(outcome: &Outcome, m: Metric) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in outcome
        .commands
        .iter()
        .flat_map(|c| c.runs.iter().filter_map(move |r| r.value(m)))
    {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < f64::EPSILON * hi.abs().max(1.0) {
        let pad = (hi.abs() * 0.05).max(1e-9);
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.02;
    // Nothing measured below 0 is drawn as if it could be.
    let floor = if lo >= 0.0 { 0.0 } else { f64::NEG_INFINITY };
    ((lo - pad).max(floor), hi + pad)
}

/// At most `n` of `v`, evenly strided from the first to the last (the plots
/// stay light at 100,000 runs).
fn thin<T: Copy>(v: &[T], n: usize) -> Vec<T> {
    if v.len() <= n {
        return v.to_vec();
    }
    if n < 2 {
        return v[..n].to_vec();
    }
    (0..n).map(|k| v[k * (v.len() - 1) / (n - 1)]).collect()
}

fn color(i: usize) -> &'static str {
    const P: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    P[i % P.len()]
}

/// `rows` as lines of columns each as wide as its widest cell (in characters),
/// two spaces apart: the first left-aligned, the others right-aligned, so
/// that no cell runs into the next however long (`-u nanosecond` figures,
/// "1 low, 1 high").
fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in rows {
        s.push_str("  ");
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if i == 0 {
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', pad));
            } else {
                s.push_str("  ");
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(cell);
            }
        }
        // The first column's padding when it is the only one.
        s.truncate(s.trim_end_matches(' ').len());
        s.push('\n');
    }
    s
}

fn outliers(x: &Summary) -> String {
    match (x.outliers_low, x.outliers_high) {
        (0, 0) => "0".into(),
        (0, h) => format!("{h} high"),
        (l, 0) => format!("{l} low"),
        (l, h) => format!("{l} low, {h} high"),
    }
}

fn verdict(r: &Ratio) -> &'static str {
    if !r.significant {
        "not significant"
    } else if r.ratio > 1.0 {
        "larger"
    } else {
        "smaller"
    }
}

/// `s` as a Markdown code span that holds in one table cell.
fn md_code(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ").replace('|', "\\|");
    // A span fenced with more backticks than any run inside it.
    let mut run = 0;
    let mut longest = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    if longest > 0 {
        format!("{fence} {s} {fence}")
    } else {
        format!("{fence}{s}{fence}")
    }
}

/// The table markups of the text exports. The first column (the command) is
/// left-aligned and shown as code; the rest are right-aligned figures.
#[derive(Debug, Clone, Copy)]
enum Markup {
    Markdown,
    AsciiDoc,
    OrgMode,
}

impl Markup {
    /// `header` and `rows` as a table in this markup.
    fn table(self, header: &[String], rows: &[Vec<String>]) -> String {
        let mut s = String::new();
        match self {
            Markup::Markdown => {
                let row = |s: &mut String, cells: &[String]| {
                    let _ = writeln!(s, "| {} |", cells.join(" | "));
                };
                row(&mut s, header);
                s.push_str("|:---|");
                s.push_str(&"---:|".repeat(header.len() - 1));
                s.push('\n');
                for r in rows {
                    let mut cells = r.clone();
                    cells[0] = md_code(&r[0]);
                    row(&mut s, &cells);
                }
            }
            Markup::AsciiDoc => {
                let _ = writeln!(
                    s,
                    "[cols=\"<{}\",options=\"header\"]\n|===",
                    ",>".repeat(header.len() - 1)
                );
                let row = |s: &mut String, cells: &[String]| {
                    s.push('\n');
                    for c in cells {
                        let _ = writeln!(s, "| {c}");
                    }
                };
                row(
                    &mut s,
                    &header.iter().map(|h| adoc_cell(h)).collect::<Vec<_>>(),
                );
                for r in rows {
                    let mut cells: Vec<String> = r.iter().map(|c| adoc_cell(c)).collect();
                    // The pass macro keeps any text literal (a `+` would
                    // end a `+…+` passthrough early); `]` would end it.
                    cells[0] = format!("`pass:c[{}]`", cells[0].replace(']', "\\]"));
                    row(&mut s, &cells);
                }
                s.push_str("|===\n");
            }
            Markup::OrgMode => {
                let row = |s: &mut String, cells: &[String]| {
                    let _ = writeln!(s, "| {} |", cells.join(" | "));
                };
                row(
                    &mut s,
                    &header.iter().map(|h| org_cell(h)).collect::<Vec<_>>(),
                );
                let _ = writeln!(s, "|{}|", vec!["---"; header.len()].join("+"));
                for r in rows {
                    let mut cells: Vec<String> = r.iter().map(|c| org_cell(c)).collect();
                    cells[0] = org_code(&r[0]);
                    row(&mut s, &cells);
                }
            }
        }
        s
    }
}

/// `s` as one AsciiDoc table cell's text: on one line, its `|` escaped.
fn adoc_cell(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('|', "\\|")
}

/// `s` as one Org-mode table cell's text: on one line, its `|` written as
/// Org's `\vert{}` entity (a bare `|` would end the cell).
fn org_cell(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('|', "\\vert{}")
}

/// A command's name as an Org-mode cell: verbatim code (`=…=`) where Org
/// allows it, which is when the name neither starts nor ends with a space
/// and holds no `=`; and no `|`, whose escape Org does not read inside
/// verbatim text. Otherwise plain.
fn org_code(name: &str) -> String {
    let cell = org_cell(name);
    let plain = cell.is_empty()
        || cell.starts_with(' ')
        || cell.ends_with(' ')
        || cell.contains('=')
        || cell != name.replace(['\n', '\r'], " ");
    if plain { cell } else { format!("={cell}=") }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_in_fitting_units() {
        assert_eq!(format_value(0.000_612_3, Unit::Seconds, None), "612.3 µs");
        assert_eq!(format_value(0.012_345, Unit::Seconds, None), "12.345 ms");
        assert_eq!(format_value(0.000_017_733, Unit::Seconds, None), "17.7 µs");
        assert_eq!(format_value(2.5, Unit::Seconds, None), "2.500 s");
        assert_eq!(
            format_value(0.0005, Unit::Seconds, Some(TimeUnit::Millisecond)),
            "0.500 ms"
        );
        assert_eq!(format_value(10_276_864.0, Unit::Bytes, None), "9.8 MiB");
        assert_eq!(format_value(512.0, Unit::Bytes, None), "512 B");
        assert_eq!(format_value(1_234_567.0, Unit::Count, None), "1,234,567");
        assert_eq!(format_value(2.5, Unit::Count, None), "2.5");
        assert_eq!(format_value(3.0, Unit::Count, None), "3");
    }

    #[test]
    fn csv_and_html_escape_what_they_must() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a\rb"), "\"a\rb\"");
        assert_eq!(esc("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        assert_eq!(md_code("a|b"), "`a\\|b`");
        assert_eq!(md_code("echo `x`\ny"), "`` echo `x` y ``");
    }

    #[test]
    fn the_markup_tables_are_each_markups_own() {
        let header = ["Command".to_owned(), "Mean [ms]".to_owned()];
        let rows = [
            vec!["sh -c 'a|b'".to_owned(), "1.000 ± 0.100".to_owned()],
            vec!["x=1 env".to_owned(), "2.000 ± 0.200".to_owned()],
        ];
        assert_eq!(
            Markup::Markdown.table(&header, &rows),
            "| Command | Mean [ms] |\n|:---|---:|\n| `sh -c 'a\\|b'` | 1.000 ± 0.100 |\n| `x=1 env` | 2.000 ± 0.200 |\n"
        );
        assert_eq!(
            Markup::AsciiDoc.table(&header, &rows),
            "[cols=\"<,>\",options=\"header\"]\n|===\n\n| Command\n| Mean [ms]\n\n| `pass:c[sh -c 'a\\|b']`\n| 1.000 ± 0.100\n\n| `pass:c[x=1 env]`\n| 2.000 ± 0.200\n|===\n"
        );
        // Org reads neither `=` nor the `|` escape inside its verbatim
        // markers: those names stay plain.
        assert_eq!(
            Markup::OrgMode.table(&header, &rows),
            "| Command | Mean [ms] |\n|---+---|\n| sh -c 'a\\vert{}b' | 1.000 ± 0.100 |\n| x=1 env | 2.000 ± 0.200 |\n"
        );
        assert_eq!(org_code("/bin/true"), "=/bin/true=");
    }

    #[test]
    fn thinning_keeps_ends_and_bounds_the_count() {
        let v: Vec<usize> = (0..10_000).collect();
        let t = thin(&v, 100);
        assert_eq!(t.len(), 100);
        assert_eq!((t[0], t[99]), (0, 9_999));
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(thin(&v[..5], 100), [0, 1, 2, 3, 4]);
    }
}
