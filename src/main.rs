//! The `chaperone` binary: the one-shot CLI (see `chaperone::cli`).
#![deny(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(chaperone::cli::run(chaperone::cli::Args::parse()))
}
