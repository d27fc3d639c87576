//! Per-process perf counters: event names, the agent's startup probe, the
//! counters a child opens, and reading them into the result.
//!
//! A proc asks for counters with `"perf": true` (every event) or a list of event
//! names (the spec's `PerfSpec`, a [`Selection`]); `Config::perf` (`--perf`) is
//! the default for specs that say nothing ([`requested`]).
//! The vfork child opens the counters on itself before exec (`sys/child.rs`):
//! one group of software events and, apart, one group of hardware events, so a
//! hardware group the PMU cannot schedule never stops the software counts. Each
//! group leader is `disabled` + `enable_on_exec`, every counter `inherit`: the
//! count runs from the program's first instruction and includes its children.
//! The agent reads them while the process runs (live results) and once more at
//! exit, before the reap, then closes them. A runner of one process at a time
//! instead holds one set on its own thread for every child to inherit
//! ([`Inherited`]), and takes each child's counts as what the set gained.
//!
//! At startup (lazily, once) the agent opens every event on itself to learn what
//! the machine allows ([`probe`]): hardware events need a PMU (a VM often has
//! none), and with `perf_event_paranoid` ≥ 2 and no `CAP_PERFMON` the kernel
//! allows only `exclude_kernel` counters. The decision logic ([`probe_with`]) takes
//! the open function as an argument, so it is tested without the kernel.
//!
//! One file per part, all re-exported here:
//!
//! | file | holds |
//! |---|---|
//! | `event.rs` | [`Event`], [`ALL`], [`Selection`], [`requested`] |
//! | `access.rs` | [`Access`], [`Probe`]: what the startup probe ([`probe`], [`probe_with`]) found |
//! | `setup.rs` | [`Setup`]: which counters a child opens |
//! | `read.rs` | [`parse_read`], [`apply_reading`] |
//! | `state.rs` | [`PerfState`]: a proc's counters, read while it runs and at exit |
//! | `inherited.rs` | [`Inherited`]: counters held by the runner, inherited by each child |
//! | `result.rs` | [`PerfRes`] |
//!
//! # References
//! - [perf_event_open(2)](https://man7.org/linux/man-pages/man2/perf_event_open.2.html)
//! - `kernel/events/core.c`: `perf_read_group` sums inherited children's counts.

mod access;
mod event;
mod inherited;
mod read;
mod result;
mod setup;
mod state;

pub use access::{Access, Probe, errno_name, probe, probe_with};
pub use event::{ALL, Event, Selection, known_names, requested};
pub use inherited::Inherited;
pub use read::{ReadError, Reading, apply_reading, parse_read};
pub use result::PerfRes;
pub use setup::Setup;
pub use state::PerfState;

/// Whether perf's task clock can be counted here; when not, says that the
/// whole of `test` is skipped, and why.
#[cfg(test)]
pub(crate) fn task_clock_or_skip(test: &str) -> bool {
    if let Access::Unavailable(why) = probe().access(Event::TaskClock) {
        crate::test_skip(test, &format!("perf task-clock unavailable ({why})"), false);
        return false;
    }
    true
}
