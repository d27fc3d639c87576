//! `chaperone bench` end to end: real runs, their figures, the run order, and
//! every export parsed back.

#[path = "../util/mod.rs"]
mod util;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(util::bin())
        .arg("bench")
        .args(["--style", "basic"])
        .args(args)
        .output()
        .expect("run chaperone bench")
}

fn bench_json(dir: &Path, args: &[&str]) -> (Output, Value) {
    let path = dir.join("out.json");
    let mut all = vec!["--export-json", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = bench(&all);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("JSON export");
    (out, json)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn true_runs_give_sane_figures_for_every_software_metric() {
    let dir = tempfile::tempdir().unwrap();
    let (out, json) = bench_json(dir.path(), &["-r", "30", "-w", "2", "/bin/true"]);
    let r = &json["results"][0];
    assert_eq!(r["command"], "/bin/true");
    assert_eq!(
        r["runs"].as_array().unwrap().len(),
        30,
        "warmups are not runs"
    );
    assert_eq!(r["times"].as_array().unwrap().len(), 30);
    assert!(
        r.get("parameters").is_none(),
        "without parameters the key is left out, as hyperfine does: {r}"
    );
    assert!(r["exit_codes"].as_array().unwrap().iter().all(|c| c == 0));
    let m = &r["metrics"];
    // Wall: positive, under a second, median within [min, max].
    let wall = &m["wall"];
    assert!(f(&wall["min"]) > 0.0 && f(&wall["max"]) < 1.0, "{wall}");
    assert!(f(&wall["min"]) <= f(&wall["median"]) && f(&wall["median"]) <= f(&wall["max"]));
    assert_eq!(
        f(&r["median"]),
        f(&wall["median"]),
        "hyperfine's field is wall time"
    );
    // /bin/true faults in its pages and ran on a CPU for some time.
    assert!(f(&m["minor-faults"]["median"]) >= 1.0, "{m}");
    assert!(f(&m["page-faults"]["median"]) >= 1.0, "{m}");
    assert!(f(&m["task-clock"]["median"]) > 0.0, "{m}");
    assert!(
        f(&m["task-clock"]["median"]) < f(&wall["max"]),
        "on a CPU less than it lived"
    );
    assert!(f(&m["max-rss"]["median"]) > 0.0);
    for k in [
        "user",
        "system",
        "cpu",
        "voluntary-cs",
        "context-switches",
        "cpu-migrations",
    ] {
        assert!(m[k]["n"] == 30, "{k}: {m}");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Benchmark 1: /bin/true"), "{text}");
    assert!(
        text.contains("Time (mean ± σ):") && text.contains("30 runs"),
        "{text}"
    );
    assert!(text.contains("task-clock"), "{text}");
    // Without a PMU the hardware counters are absent and the reason is said.
    if m.get("instructions").is_none() {
        assert!(text.contains("were not counted"), "{text}");
    }
}

#[test]
fn a_cpu_loop_task_clock_agrees_with_user_plus_system() {
    let dir = tempfile::tempdir().unwrap();
    let (_, json) = bench_json(
        dir.path(),
        &[
            "-r",
            "5",
            "--shell",
            "sh",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done",
        ],
    );
    let m = &json["results"][0]["metrics"];
    let task = f(&m["task-clock"]["mean"]);
    let cpu = f(&m["cpu"]["mean"]);
    assert!(cpu > 0.02, "the loop takes CPU time: {m}");
    assert!(
        (task - cpu).abs() <= 0.2 * cpu,
        "task-clock {task} and user+system {cpu} differ by more than 20%"
    );
    assert!(f(&m["wall"]["mean"]) >= 0.9 * task, "{m}");
}

/// Commands, in the order their runs ended.
fn run_order(json: &Value) -> Vec<usize> {
    let mut runs: Vec<(f64, usize)> = Vec::new();
    for (i, r) in json["results"].as_array().unwrap().iter().enumerate() {
        for run in r["runs"].as_array().unwrap() {
            runs.push((f(&run["at"]), i));
        }
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs.into_iter().map(|(_, i)| i).collect()
}

#[test]
fn commands_run_interleaved_by_default_and_grouped_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (_, json) = bench_json(dir.path(), &["-r", "4", "/bin/true", "/bin/echo"]);
    assert_eq!(run_order(&json), [0, 1, 0, 1, 0, 1, 0, 1]);
    assert_eq!(json["order"], "interleaved");
    let (_, json) = bench_json(
        dir.path(),
        &["-r", "4", "--order", "grouped", "/bin/true", "/bin/echo"],
    );
    // Each command in one block, from its sizing run to its last.
    assert_eq!(run_order(&json), [0, 0, 0, 0, 1, 1, 1, 1]);
    let (_, json) = bench_json(
        dir.path(),
        &[
            "-r",
            "6",
            "--order",
            "shuffled",
            "--seed",
            "3",
            "/bin/true",
            "/bin/echo",
            "/bin/pwd",
        ],
    );
    let order = run_order(&json);
    for round in order.chunks(3) {
        let mut r = round.to_vec();
        r.sort();
        assert_eq!(r, [0, 1, 2], "each round runs each command once: {order:?}");
    }
}

#[test]
fn a_parameter_scan_benchmarks_each_value() {
    let dir = tempfile::tempdir().unwrap();
    let (_, json) = bench_json(
        dir.path(),
        &["-r", "2", "-P", "n", "1", "3", "/bin/echo {n}"],
    );
    let results = json["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["command"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["/bin/echo 1", "/bin/echo 2", "/bin/echo 3"]);
    assert_eq!(results[2]["parameters"]["n"], "3");
}

#[test]
fn markdown_and_csv_exports_parse_back() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("r.md");
    let csv = dir.path().join("r.csv");
    let out = bench(&[
        "-r",
        "5",
        "-L",
        "word",
        "a,b",
        "--export-markdown",
        md.to_str().unwrap(),
        "--export-csv",
        csv.to_str().unwrap(),
        "/bin/echo {word}",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(md).unwrap();
    let rows: Vec<&str> = md.lines().collect();
    assert_eq!(rows.len(), 4, "header, rule, two commands: {md}");
    let cells = |l: &str| {
        l.trim_matches('|')
            .split('|')
            .map(str::trim)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let header = cells(rows[0]);
    assert_eq!(header[0], "Command");
    assert!(header[1].starts_with("Mean ["), "{header:?}");
    assert_eq!(cells(rows[2])[0], "`/bin/echo a`");
    assert_eq!(cells(rows[2]).len(), header.len());
    assert_eq!(
        cells(rows[2]).last().unwrap(),
        "1.00 ± 0.00",
        "the reference against itself"
    );

    let csv = std::fs::read_to_string(csv).unwrap();
    let lines: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        &lines[0][..8],
        [
            "command", "mean", "stddev", "median", "user", "system", "min", "max"
        ]
    );
    assert_eq!(*lines[0].last().unwrap(), "parameter_word");
    for row in &lines[1..] {
        assert_eq!(row.len(), lines[0].len());
        let mean: f64 = row[1].parse().unwrap();
        let (min, max): (f64, f64) = (row[6].parse().unwrap(), row[7].parse().unwrap());
        assert!(min <= mean && mean <= max, "{row:?}");
        assert_eq!(row[8], "5");
    }
    assert_eq!(*lines[2].last().unwrap(), "b");
}

#[test]
fn asciidoc_and_orgmode_exports_have_the_markdown_table() {
    let dir = tempfile::tempdir().unwrap();
    let (md, adoc, org) = (
        dir.path().join("r.md"),
        dir.path().join("r.adoc"),
        dir.path().join("r.org"),
    );
    let out = bench(&[
        "-r",
        "3",
        "--export-markdown",
        md.to_str().unwrap(),
        "--export-asciidoc",
        adoc.to_str().unwrap(),
        "--export-orgmode",
        org.to_str().unwrap(),
        "/bin/echo a",
        "/bin/echo b",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row_cells = |l: &str| -> Vec<String> {
        l.trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    // Markdown: header, rule, a row per command.
    let md = std::fs::read_to_string(md).unwrap();
    let md_rows: Vec<Vec<String>> = md
        .lines()
        .filter(|l| !l.starts_with("|:"))
        .map(row_cells)
        .collect();
    assert_eq!(md_rows.len(), 3, "{md}");

    // AsciiDoc: `[cols=…]`, `|===`, then blank-line-separated rows of one
    // `| cell` line each, then `|===`.
    let adoc = std::fs::read_to_string(adoc).unwrap();
    let lines: Vec<&str> = adoc.lines().collect();
    assert!(lines[0].starts_with("[cols=\"<,>"), "{adoc}");
    assert_eq!((lines[1], *lines.last().unwrap()), ("|===", "|==="));
    let adoc_rows: Vec<Vec<String>> = adoc
        .split("\n\n")
        .skip(1)
        .map(|block| {
            block
                .lines()
                .filter(|l| *l != "|===")
                .map(|l| l.trim_start_matches('|').trim().to_owned())
                .collect()
        })
        .collect();
    assert_eq!(adoc_rows.len(), 3, "{adoc}");
    assert_eq!(adoc_rows[1][0], "`pass:c[/bin/echo a]`");

    // Org-mode: header, `|---+…|` rule, a row per command.
    let org = std::fs::read_to_string(org).unwrap();
    let lines: Vec<&str> = org.lines().collect();
    assert!(lines[1].starts_with("|---+"), "{org}");
    let org_rows: Vec<Vec<String>> = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| row_cells(l))
        .collect();
    assert_eq!(org_rows[2][0], "=/bin/echo b=");

    // The same figures in all three, but for how the command is fenced.
    for (i, md_row) in md_rows.iter().enumerate() {
        assert_eq!(md_row.len(), adoc_rows[i].len(), "{md}{adoc}");
        assert_eq!(md_row[1..], adoc_rows[i][1..]);
        assert_eq!(md_row[1..], org_rows[i][1..]);
    }
}

#[test]
fn the_html_report_is_self_contained_with_a_plot_per_metric() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("r.html");
    let out = bench(&[
        "-r",
        "10",
        "--export-html",
        html.to_str().unwrap(),
        "/bin/true",
        "/bin/echo",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(
        !html.contains("http://") || !html.contains("src=\"http"),
        "nothing fetched"
    );
    assert!(!html.contains("<script src"), "no external scripts");
    for metric in ["wall", "task-clock", "max-rss"] {
        assert!(
            html.contains(&format!("<section id=\"{metric}\">")),
            "{metric}"
        );
    }
    assert!(html.matches("<svg class=\"dist\"").count() >= 10);
    assert_eq!(
        html.matches("<svg class=\"dist\"").count(),
        html.matches("<svg class=\"drift\"").count()
    );
    // Every shape of a distribution plot lies within its box.
    for svg in html.split("<svg class=\"dist\"").skip(1) {
        let svg = &svg[..svg.find("</svg>").unwrap()];
        let attr = |s: &str, name: &str| -> Vec<f64> {
            s.match_indices(&format!(" {name}=\""))
                .map(|(i, m)| {
                    let v = &s[i + m.len()..];
                    v[..v.find('"').unwrap()].parse::<f64>().unwrap()
                })
                .collect()
        };
        let height = attr(svg, "height")[0];
        for shape in svg
            .split('<')
            .filter(|e| e.starts_with("line") || e.starts_with("rect"))
        {
            for y in attr(shape, "y1")
                .into_iter()
                .chain(attr(shape, "y2"))
                .chain(attr(shape, "y"))
            {
                assert!(
                    (0.0..=height).contains(&y),
                    "y={y} outside 0..{height}: <{shape}"
                );
            }
        }
    }
    // 10 runs of each command as points in the wall distribution.
    let wall = &html[html.find("<section id=\"wall\">").unwrap()..];
    let wall = &wall[..wall.find("</section>").unwrap()];
    assert_eq!(
        wall.matches("<circle").count(),
        40,
        "10 runs × 2 commands × 2 plots"
    );
}

#[test]
fn a_failing_command_stops_the_run_unless_failures_are_ignored() {
    let out = bench(&["-r", "3", "/bin/false"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"/bin/false\" terminated with non-zero exit code 1")
            && err.contains("--ignore-failure"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (out, json) = bench_json(dir.path(), &["-r", "3", "-i", "/bin/false"]);
    let r = &json["results"][0];
    assert_eq!(r["exit_codes"], serde_json::json!([1, 1, 1]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Ignoring non-zero exit code (3 of 3 runs)")
    );
    // A program that cannot be run at all is not "ignored".
    let out = bench(&["-r", "2", "-i", "/no/such/program"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("could not be started")
            && err.contains("No such file")
            && err.contains("with --ignore-failure too")
            && !err.contains("Use the '-i'"),
        "{err}"
    );
}

/// Runs through the agent (`--output pipe`) stop at a failure within a run:
/// those of a second or so each are collected one by one, not in lots of 8.
/// (Before, a command that failed at its 3rd run of 0.2 s ran 9 times.)
#[test]
fn a_failed_run_through_the_agent_stops_the_rest_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    let c = count.to_str().unwrap();
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; sleep 0.2; [ $n -lt 3 ]"
    );
    let out = bench(&["--output", "pipe", "-r", "50", "--shell", "sh", &script]);
    assert_eq!(out.status.code(), Some(1));
    let runs: u32 = std::fs::read_to_string(&count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The failed 3rd, and at most the one the agent started as it ended.
    assert!((3..=4).contains(&runs), "{runs} runs started");
}

/// `--metric instructions` needs a hardware PMU: without one it is refused
/// before anything runs (before, every run was made and the comparison then
/// said "no figures"); with one, the figures are there.
#[test]
fn a_primary_metric_the_machine_cannot_count_is_refused_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let out = bench(&[
        "-r",
        "2",
        "--metric",
        "instructions",
        "--setup",
        &format!("touch {}", ran.display()),
        "/bin/true",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("this machine counts instructions: checked that it runs");
        assert!(ran.exists());
        return;
    }
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--metric instructions: it cannot be counted on this machine"),
        "{err}"
    );
    assert!(!ran.exists(), "nothing ran");
}

/// One run has no spread: the exports say none, as the text does (and
/// hyperfine's JSON: `"stddev": null`), not "± 0.00".
#[test]
fn single_runs_have_no_spread_in_any_export() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("out.md");
    let (_, json) = bench_json(
        dir.path(),
        &[
            "-r",
            "1",
            "-i",
            "--export-markdown",
            md.to_str().unwrap(),
            "/bin/true",
            "/bin/false",
        ],
    );
    for r in json["results"].as_array().unwrap() {
        assert_eq!(r["stddev"], Value::Null, "{r}");
        assert_eq!(r["metrics"]["wall"]["stddev"], Value::Null, "{r}");
    }
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(!md.contains('±'), "{md}");
    // Nor in the CSV (an empty stddev, as hyperfine) or the text.
    let csv = dir.path().join("out.csv");
    let out = bench(&[
        "-r",
        "1",
        "-i",
        "--export-csv",
        csv.to_str().unwrap(),
        "/bin/true",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text
            .lines()
            .any(|l| l.contains(" ± ") && !l.contains("mean ± σ")),
        "{text}"
    );
    let csv = std::fs::read_to_string(&csv).unwrap();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(row[2], "", "{csv}");
}

/// On a terminal, `--style nocolor` draws its progress bars without colour
/// (before, they were cyan and blue), and `full` with it.
#[test]
fn nocolor_progress_bars_have_no_colour() {
    let on_a_pty = |style: &str| {
        Command::new("script")
            .args(["-qec"])
            .arg(format!(
                "{} bench --style {style} -r 30 /bin/true",
                util::bin()
            ))
            .arg("/dev/null")
            .output()
    };
    let Ok(full) = on_a_pty("full") else {
        eprintln!("SKIP: no script(1) to run on a pseudo-terminal");
        return;
    };
    let colours = |o: &Output| o.stdout.windows(3).filter(|w| w == b"\x1b[3").count();
    assert!(
        colours(&full) > 0,
        "{}",
        String::from_utf8_lossy(&full.stdout)
    );
    let plain = on_a_pty("nocolor").unwrap();
    assert!(plain.status.success());
    assert_eq!(
        colours(&plain),
        0,
        "{:?}",
        String::from_utf8_lossy(&plain.stdout)
    );
}

/// hyperfine's `--input FILE` (each run's stdin, from its start),
/// `--show-output` (`--output inherit`) and `-V`.
#[test]
fn input_show_output_and_version_are_hyperfines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, "hello\n").unwrap();
    let out = bench(&[
        "-r",
        "3",
        "--input",
        input.to_str().unwrap(),
        "--shell",
        "sh",
        "read x && [ \"$x\" = hello ]",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bench(&["-r", "2", "--input", "/no/such/file", "/bin/true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--input /no/such/file"));

    let out = Command::new(util::bin())
        .args([
            "bench",
            "--style",
            "none",
            "-r",
            "2",
            "--show-output",
            "echo shown",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shown\nshown\n");
    let out = Command::new(util::bin())
        .args(["bench", "-V"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("chaperone bench "));
}

#[test]
fn an_export_that_cannot_be_written_fails_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let bad = dir.path().join("no-such-dir").join("out.html");
    let csv = dir.path().join("out.csv");
    let out = bench(&[
        "-r",
        "1",
        "--export-csv",
        csv.to_str().unwrap(),
        // Claimed last (json, markdown, csv, html): the csv made before it
        // must be taken back.
        "--export-html",
        bad.to_str().unwrap(),
        &format!("touch {}", marker.display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write") && err.contains("no-such-dir"),
        "{err}"
    );
    assert!(
        !marker.exists(),
        "the command ran although an export could not be written"
    );
    assert!(!csv.exists(), "the export made for the check is taken back");
    // A benchmark that fails takes back the empty export it made, and
    // leaves one that was there before.
    let kept = dir.path().join("kept.md");
    std::fs::write(&kept, "before").unwrap();
    let out = bench(&[
        "-r",
        "2",
        "--export-csv",
        csv.to_str().unwrap(),
        "--export-markdown",
        kept.to_str().unwrap(),
        "/bin/false",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!csv.exists());
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "before");
    // A dangling symlink is the user's: a failed benchmark leaves it, and
    // makes no target for it.
    let link = dir.path().join("link.json");
    let target = dir.path().join("target.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = bench(&[
        "-r",
        "2",
        "--export-json",
        link.to_str().unwrap(),
        "/bin/false",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        std::fs::symlink_metadata(&link).is_ok(),
        "the symlink was removed"
    );
    assert!(!target.exists());
}

#[test]
fn an_export_to_a_fifo_reaches_its_reader() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = util::mkfifo(dir.path(), "csv");
    let (status, got) = util::run_into_fifo(
        &[
            "bench",
            "--style",
            "none",
            "-r",
            "2",
            "--export-csv",
            fifo.to_str().unwrap(),
            "/bin/true",
        ],
        &fifo,
    );
    assert!(status.success(), "{status}");
    let csv = String::from_utf8(got).unwrap();
    assert!(csv.starts_with("command,mean,stddev,median"), "{csv}");
}

#[test]
fn prepare_and_conclude_run_around_each_run() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let l = log.to_str().unwrap();
    let (_, _) = bench_json(
        dir.path(),
        &[
            "-r",
            "3",
            "-w",
            "1",
            "--setup",
            &format!("echo setup >> {l}"),
            "--prepare",
            &format!("echo prepare >> {l}"),
            "--conclude",
            &format!("echo conclude >> {l}"),
            "--cleanup",
            &format!("echo cleanup >> {l}"),
            "/bin/true",
        ],
    );
    let got = std::fs::read_to_string(&log).unwrap();
    let want = "setup\n".to_owned() + &"prepare\nconclude\n".repeat(4) + "cleanup\n";
    assert_eq!(got, want);
    let out = bench(&["-r", "2", "--prepare", "exit 3", "/bin/true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Prepare command"));
    // --ignore-failure is for the benchmarked commands: the advice for a
    // helper says what does apply.
    let out = bench(&["-r", "2", "-i", "--prepare", "exit 3", "/bin/true"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Prepare command \"exit 3\" terminated with non-zero exit code 3")
            && err.contains("append ' || true'")
            && !err.contains("Use the '-i'"),
        "{err}"
    );
}

/// Interleaved commands share one setup and one cleanup, run once around
/// all their runs: a setup that cannot run twice works, and the cleanup
/// leaves nothing behind. (Before, the setup ran once per command, all
/// first: `mkdir` failed the second time, and the benchmark with it.)
#[test]
fn interleaved_commands_share_one_setup_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d");
    let d = d.to_str().unwrap();
    let (_, json) = bench_json(
        dir.path(),
        &[
            "-r",
            "2",
            "--setup",
            &format!("mkdir {d}"),
            "--cleanup",
            &format!("rmdir {d}"),
            &format!("ls {d}"),
            &format!("stat {d}"),
        ],
    );
    assert_eq!(json["results"].as_array().unwrap().len(), 2);
    assert!(!Path::new(d).exists(), "the cleanup ran");
}

#[test]
fn a_setup_per_parameter_wraps_only_its_own_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let l = log.to_str().unwrap();
    let out = bench(&[
        "-r",
        "2",
        "-w",
        "1",
        "-L",
        "x",
        "a,b",
        "--setup",
        &format!("echo setup {{x}} >> {l}"),
        "--cleanup",
        &format!("echo cleanup {{x}} >> {l}"),
        "--shell",
        "sh",
        &format!("echo run {{x}} >> {l}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("grouped between its own setup and cleanup"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read_to_string(&log).unwrap();
    let block = |x: &str| format!("setup {x}\n{}cleanup {x}\n", format!("run {x}\n").repeat(3));
    assert_eq!(got, block("a") + &block("b"));
}

#[test]
fn throughput_mode_keeps_jobs_in_flight_and_reports_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (out, json) = bench_json(dir.path(), &["-r", "200", "-j", "16", "/bin/true"]);
    assert_eq!(json["jobs"], 16);
    assert_eq!(json["results"][0]["runs"].as_array().unwrap().len(), 200);
    let rate = f(&json["throughput"]);
    assert!(rate > 0.0);
    // Runs overlapped: their wall times add up to more than the time taken.
    let walls: f64 = json["results"][0]["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(f)
        .sum();
    assert!(
        walls > 2.0 * f(&json["elapsed"]),
        "{walls} s of runs in {} s",
        json["elapsed"]
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("with 16 in flight"));
    // Indices are each run's place among its command's, all present.
    let mut idx: Vec<u64> = json["results"][0]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    idx.sort();
    assert_eq!(idx, (0..200).collect::<Vec<_>>());
}

#[test]
fn a_spec_file_benchmarks_its_processes_with_their_controls() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("s.json");
    std::fs::write(
        &spec,
        r#"{"specs": {"in-tmp": {"argv": ["/bin/sh", "-c", "test \"$PWD\" = /tmp && test \"$X\" = y"],
            "cwd": "/tmp", "env": {"vars": {"X": "y"}}}}}"#,
    )
    .unwrap();
    let (_, json) = bench_json(dir.path(), &["-r", "3", "--spec", spec.to_str().unwrap()]);
    let r = &json["results"][0];
    assert_eq!(r["command"], "in-tmp");
    assert_eq!(
        r["exit_codes"],
        serde_json::json!([0, 0, 0]),
        "cwd and env applied"
    );
    assert!(r["metrics"]["task-clock"]["n"] == 3, "perf on by default");
}

#[test]
fn two_commands_are_compared_with_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    // Both sleep, so that one slow run of the VM's (8-12 ms seen) cannot
    // widen the reference's spread past the difference: against /bin/true
    // (0.6 ms a run) one such run once left the interval reaching 1.
    let (out, json) = bench_json(
        dir.path(),
        &["-r", "20", "/bin/sleep 0.01", "/bin/sleep 0.05"],
    );
    let rel = &json["results"][1]["relative"];
    assert!(f(&rel["ratio"]) > 2.0, "{rel}");
    assert!(f(&rel["low"]) <= f(&rel["ratio"]) && f(&rel["ratio"]) <= f(&rel["high"]));
    assert_eq!(rel["significant"], true);
    assert_eq!(json["results"][0]["relative"]["ratio"], 1.0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Relative to /bin/sleep 0.01 (wall"), "{text}");
    assert!(text.contains("larger"), "{text}");
}

#[test]
fn bad_command_lines_exit_2_naming_the_problem() {
    let out = bench(&["--metric", "bogus", "/bin/true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metric \"bogus\""));
    let out = bench(&["nosuchprogram-xyz"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an executable file on PATH"));
}

#[test]
fn a_failure_midway_stops_the_runs_already_queued() {
    // One at a time on the runner's thread (output to /dev/null), then through
    // the agent, which queues runs (output piped to it).
    for (output, most) in [("null", 5), ("pipe", 24)] {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let c = count.to_str().unwrap();
        // Fails on its 5th run; each run counts itself first.
        let script =
            format!("n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ $n -lt 4 ]");
        let out = bench(&["-r", "200", "--output", output, "--shell", "sh", &script]);
        assert_eq!(out.status.code(), Some(1), "{output}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("non-zero exit code 1"));
        let n: u32 = std::fs::read_to_string(&count)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Through the agent up to 64 runs are queued at a time; those after
        // the failure are killed or never start, beyond the few already under
        // way when it was seen. One at a time, none runs after it.
        assert!((5..=most).contains(&n), "{output}: {n} runs happened");
    }
}

#[test]
fn the_metric_table_keeps_its_columns_apart_in_any_unit() {
    // Nanosecond figures are the widest ("612345.0 ns ± 98765.4 ns"); a
    // fixed-width table ran them into their neighbours.
    let out = bench(&["-r", "12", "-u", "nanosecond", "/bin/true"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("metric"))
        .take_while(|l| !l.trim().is_empty() && !l.trim_start().starts_with("Warning"))
        .collect();
    assert!(table.len() > 5, "{text}");
    let width = table[0].chars().count();
    for line in &table {
        // Cells are two or more spaces apart; none holds two spaces.
        let cells: Vec<&str> = line
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells.len(), 5, "columns run together in {line:?}\n{text}");
        // Right-aligned to one edge.
        assert_eq!(line.chars().count(), width, "{line:?}\n{text}");
    }
    assert!(table[1].starts_with("  wall "), "{text}");
    assert!(table[1].contains(" ns"), "{text}");
}

#[test]
fn sort_orders_the_comparison_and_the_markup_tables_as_hyperfines() {
    // Means far apart (tens of milliseconds), so the order is the commands'
    // however noisy the machine.
    let commands = ["sleep 0.06", "sleep 0.03", "/bin/true"];
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("r.md");
    let run = |sort: &str| {
        let mut args = vec!["-r", "3", "--export-markdown", md.to_str().unwrap()];
        args.extend(["--sort", sort]);
        args.extend(commands);
        let out = bench(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        // The commands named in the comparison, in the order shown.
        let compared: Vec<String> = text
            .lines()
            .skip_while(|l| !l.starts_with("Relative to"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| {
                l.split("  ")
                    .find(|c| !c.is_empty())
                    .unwrap()
                    .trim()
                    .to_owned()
            })
            .collect();
        let tabled: Vec<String> = std::fs::read_to_string(&md)
            .unwrap()
            .lines()
            .skip(2)
            .map(|l| {
                l.split('|')
                    .nth(1)
                    .unwrap()
                    .trim()
                    .trim_matches('`')
                    .to_owned()
            })
            .collect();
        (compared, tabled)
    };
    let (compared, tabled) = run("auto");
    assert_eq!(compared, ["/bin/true", "sleep 0.03"], "by mean");
    assert_eq!(tabled, commands, "as given");
    let (compared, tabled) = run("command");
    assert_eq!(compared, ["sleep 0.03", "/bin/true"], "as given");
    assert_eq!(tabled, commands, "as given");
    let (compared, tabled) = run("mean-time");
    assert_eq!(compared, ["/bin/true", "sleep 0.03"], "by mean");
    assert_eq!(tabled, ["/bin/true", "sleep 0.03", "sleep 0.06"], "by mean");

    let out = bench(&["--sort", "fastest", "/bin/true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sort \"fastest\""));
}
