//! The `chaperone` binary: the one-shot CLI (see `chaperone::cli`).
#![deny(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
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
    // Thousands of processes take an fd or more each: the agent and the
    // bench runner go up to the hard limit (their processes get the soft
    // limit this was started with); the client and spool readers need not.
    chaperone::cli::raise_fd_limit();
    if std::env::args_os().nth(1).is_some_and(|a| a == "bench") {
        let args = chaperone::bench::cli::BenchArgs::parse_from(std::env::args_os().skip(1));
        return ExitCode::from(chaperone::bench::cli::run(args));
    }
    ExitCode::from(chaperone::cli::run(chaperone::cli::Args::parse()))
}
