//! The std baseline of `ci/fanout-bench`: `N` runs of a program with stdout and
//! stderr piped and read to the end, by std's `Command` on `THREADS` threads
//! (each running its share one after another), as a Rust program without an
//! agent would do it.
//!
//! `cargo run --release --example fanout_baseline -- N THREADS PROGRAM [ARGS…]`

use std::process::{Command, Stdio};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [n, threads, program, rest @ ..] = args.as_slice() else {
        eprintln!("usage: fanout_baseline N THREADS PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    let threads: usize = threads.parse().expect("THREADS is a number");
    let bytes: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = n / threads + usize::from(t < n % threads);
                s.spawn(move || {
                    let mut bytes = 0;
                    for _ in 0..share {
                        let out = Command::new(program)
                            .args(rest)
                            .stdin(Stdio::null())
                            .stdout(Stdio::piped())
                            .stderr(Stdio::piped())
                            .output()
                            .expect("spawn");
                        bytes += out.stdout.len() + out.stderr.len();
                    }
                    bytes
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    println!("{n} children, {bytes} bytes");
}
