//! One process: its plan (built in the parent), its captures, and its result.
//!
//! | file | holds |
//! |---|---|
//! | `plan.rs` | plan building: [`prepare`], one function per kind of fd, [`opens_for`], [`open_kept`] |
//! | `env.rs` | a child's environment and the cache that builds it once per spec ([`EnvCache`]) |
//! | `sources.rs` | fds plans share: `/dev/null` ([`NullFds`]) and a request's pipes ([`RequestPipes`]) |
//! | `life.rs` | the [`Proc`] in the table and its [`Life`], from queued to settled |
//! | `sample.rs` | sampling `/proc/<pid>/{stat,statm,io}` of a running process ([`read_stat`]) |
//! | `store.rs` | the capture store: [`Store`], [`Capture`], and what readers get ([`Content`]) |
//! | `compress.rs` | a capture's compression ([`Compression`](compress::Compression), [`CompressState`](compress::CompressState)) |
//! | `render.rs` | [`Snapshot`] and its rendering to `result::ProcRes`, [`rfc3339`] |
//! | `errors.rs` | the error strings of a result, in Procstar's wording ([`failure_message`]) |

mod compress;
mod env;
mod errors;
mod life;
mod plan;
mod render;
mod sample;
mod sources;
mod store;

// A byte-level helper of `sys::fd`, re-exported where the capture readers
// (`handle`, `packer`) have always found it.
pub(crate) use crate::sys::fd::read_file;
#[cfg(test)] // only the compression thread's tests build a capture by hand
pub(crate) use compress::{CompressState, Compression};
pub(crate) use env::EnvCache;
pub(crate) use errors::{
    ALONE_RETRIES, NOT_STARTED_SHUTDOWN, failure_message, out_of_fds, out_of_fds_message,
    out_of_tasks, spawn_failed,
};
pub(crate) use life::{Life, Proc, TimeoutState};
pub(crate) use plan::{PlanContext, open_kept, opens_for, prepare};
pub(crate) use render::{Snapshot, rfc3339};
pub(crate) use sample::read_stat;
pub(crate) use sources::{NullFds, RequestPipes, request_pipes};
pub(crate) use store::{Capture, Content, PipeIn, Store};
