//! The Procstar spec format: the JSON a client sends to start processes.
//!
//! This module mirrors the input side of Procstar's spec format (see
//! `docs/spec.md`) as serde types, plus checks that the types alone cannot
//! express ([`validate`]). Every spec Procstar 0.7.5 accepts parses
//! here to the same meaning; Procstar's defects are fixed rather than copied:
//!
//! * an empty `argv` is an error ([`SpecError::EmptyArgv`]), not a panic;
//! * a proc id repeated inside one JSON object is an error (`duplicate proc id: <id>`)
//!   instead of silently keeping the last one, and [`Specs`] keeps input order;
//! * NUL bytes in `exe`, `argv`, `env.vars` and file paths are rejected up front instead
//!   of failing later in the child.
//!
//! chaperone's extensions are new, optional fields an old client never sends:
//!
//! * `capture.head` and `capture.tail`: how many bytes of the start and of the end of a
//!   stream a capture keeps (see `src/capture/`);
//! * `capture.encoding` also accepts the string `"base64"`, which means the same as
//!   `null`. It is serialized as `null`, as Procstar does.
//!
//! Serializing a parsed [`Input`] gives JSON that parses back to the same value, so an
//! echoed request (`RequestError.msg`) is valid input. (Procstar writes
//! `env.inherit` as `"All"`, which is not.)
//!
//! One file per concept, all re-exported here:
//!
//! | file | holds |
//! |---|---|
//! | `error.rs` | [`SpecError`] |
//! | `input.rs` | [`Input`], [`Specs`], [`ProcId`] |
//! | `proc.rs` | [`ProcSpec`] and its start-state fields |
//! | `env.rs` | [`EnvSpec`] and building the child's environment |
//! | `fd.rs` | [`FdSpec`], captures, open flags |
//! | `names.rs` | fd names ([`parse_fd_name`], [`fd_name`]) |
//! | `perf.rs` | [`PerfSpec`], the `perf` field |
//! | `parse.rs` | [`parse_input`] |
//! | `validation.rs` | [`validate`], [`validate_with_existing`] |
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod env;
mod error;
mod fd;
mod input;
mod names;
mod parse;
mod perf;
mod proc;
mod validation;

#[cfg(test)]
mod tests;

pub use env::{EnvInherit, EnvSpec, SECRET_ENV_VARS};
pub use error::SpecError;
pub use fd::{
    COMPRESS_ALGORITHMS, COMPRESS_LEVELS, CaptureMode, DEFAULT_COMPRESS_LEVEL, DEFAULT_FILE_MODE,
    Encoding, FdSpec, MAX_CAPTURE_WINDOW, OpenFlag,
};
pub use input::{Input, ProcId, Specs};
pub use names::{fd_name, parse_fd_name};
pub use parse::parse_input;
pub use perf::PerfSpec;
pub use proc::{IdRef, MAX_FD_ENTRIES, ProcSpec, RlimitSpec, SignalRef, SignalsSpec, TimeoutSpec};
pub use validation::{validate, validate_with_existing};
