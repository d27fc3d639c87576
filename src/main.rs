//! The `chaperone` binary: the one-shot CLI (see `chaperone::cli`).
#![deny(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Thousands of processes take an fd or more each: up to the hard limit
    // (children get the soft limit this was started with).
    chaperone::cli::raise_fd_limit();
    // Subcommands come first; anything else is the agent's command line,
    // Procstar's flags and a spec path.
    if std::env::args_os().nth(1).is_some_and(|a| a == "client") {
        let args = chaperone::client::ClientArgs::parse_from(std::env::args_os().skip(1));
        return ExitCode::from(chaperone::client::run(args));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "spool") {
        let args = chaperone::spool::reader::SpoolArgs::parse_from(std::env::args_os().skip(1));
        return ExitCode::from(chaperone::spool::reader::run(args));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "ssh") {
        let args = chaperone::spool::ssh::SshArgs::parse_from(std::env::args_os().skip(1));
        return ExitCode::from(chaperone::spool::ssh::run(args));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "bench") {
        let args = chaperone::bench::cli::BenchArgs::parse_from(std::env::args_os().skip(1));
        return ExitCode::from(chaperone::bench::cli::run(args));
    }
    ExitCode::from(chaperone::cli::run(chaperone::cli::Args::parse()))
}
