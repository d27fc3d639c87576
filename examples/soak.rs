//! The soak of `ci/fanout-bench`: `ROUNDS` sequential requests of `N` processes
//! (`/bin/true` with stdout and stderr captured in memory) through one agent,
//! each waited for and deleted, printing the agent process's open fds and
//! resident memory after the first round and after the last.
//!
//! `cargo run --release --example soak -- [ROUNDS [N]]` (default 100 × 1000)

use chaperone::{Agent, Config, spec};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(100, |a| a.parse().expect("ROUNDS"));
    let n: usize = args.next().map_or(1000, |a| a.parse().expect("N"));
    let agent = Agent::new(Config::default()).expect("agent");
    let mut first = None;
    let mut trend = Vec::new();
    let t0 = std::time::Instant::now();
    for round in 0..rounds {
        let specs: serde_json::Map<String, serde_json::Value> = (0..n)
            .map(|i| {
                let cap = serde_json::json!({"capture": {"mode": "memory", "encoding": "utf-8"}});
                (
                    format!("r{round}-{i}"),
                    serde_json::json!({"argv": ["/bin/true"],
                        "fds": [["stdout", cap.clone()], ["stderr", cap]]}),
                )
            })
            .collect();
        let raw = serde_json::to_vec(&serde_json::json!({ "specs": specs })).expect("json");
        let input = spec::parse_input(&raw).expect("spec");
        let ids = agent.start(input).expect("start");
        for id in &ids {
            let res = agent.wait(id).expect("result");
            assert!(res.errors.is_empty(), "{id}: {:?}", res.errors);
            agent.delete(id).expect("delete");
        }
        if round == 0 {
            first = Some((open_fds(), rss_kib()));
        }
        // The trend, not only the ends: a leak grows with every round, an
        // allocator's high-water mark levels off.
        if (round + 1) % (rounds / 10).max(1) == 0 {
            trend.push(rss_kib());
        }
    }
    let (fds0, rss0) = first.unwrap_or_default();
    let (fds1, rss1) = (open_fds(), rss_kib());
    println!(
        "soak: {} processes in {:.1} s; after round 1: {fds0} fds, {rss0} KiB; after round {rounds}: {fds1} fds, {rss1} KiB (RSS {:+.1}%)",
        rounds * n,
        t0.elapsed().as_secs_f64(),
        (rss1 as f64 / rss0.max(1) as f64 - 1.0) * 100.0
    );
    let trend: Vec<String> = trend.iter().map(|k| k.to_string()).collect();
    println!(
        "soak: RSS (KiB) after each tenth of the rounds: {}",
        trend.join(", ")
    );
}
