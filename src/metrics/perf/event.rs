//! The events chaperone counts ([`Event`], [`ALL`]), their names in specs and
//! results, and which of them a proc asked for ([`Selection`], [`requested`]).

use crate::sys::perf as sys;

/// A counter chaperone can report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// CPU time of the task, nanoseconds (`PERF_COUNT_SW_TASK_CLOCK`).
    TaskClock,
    /// Page faults, minor and major.
    PageFaults,
    /// Minor page faults.
    MinorFaults,
    /// Major page faults.
    MajorFaults,
    /// Context switches.
    ContextSwitches,
    /// Migrations between CPUs.
    CpuMigrations,
    /// CPU cycles (hardware).
    Cycles,
    /// Instructions retired (hardware).
    Instructions,
    /// Last-level cache misses (hardware).
    CacheMisses,
    /// Mispredicted branches (hardware).
    BranchMisses,
}

/// Every event, software first, in the order the child opens them.
pub const ALL: [Event; 10] = [
    Event::TaskClock,
    Event::PageFaults,
    Event::MinorFaults,
    Event::MajorFaults,
    Event::ContextSwitches,
    Event::CpuMigrations,
    Event::Cycles,
    Event::Instructions,
    Event::CacheMisses,
    Event::BranchMisses,
];

impl Event {
    /// The event's key in specs and results (`"task_clock"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Event::TaskClock => "task_clock",
            Event::PageFaults => "page_faults",
            Event::MinorFaults => "minor_faults",
            Event::MajorFaults => "major_faults",
            Event::ContextSwitches => "context_switches",
            Event::CpuMigrations => "cpu_migrations",
            Event::Cycles => "cycles",
            Event::Instructions => "instructions",
            Event::CacheMisses => "cache_misses",
            Event::BranchMisses => "branch_misses",
        }
    }

    /// The event named `name`, if any.
    pub fn from_name(name: &str) -> Option<Event> {
        ALL.iter().copied().find(|e| e.name() == name)
    }

    /// Whether the event needs a hardware PMU.
    pub fn is_hardware(self) -> bool {
        matches!(
            self,
            Event::Cycles | Event::Instructions | Event::CacheMisses | Event::BranchMisses
        )
    }

    /// Whether the kernel counts the event only in kernel mode, so that with
    /// `exclude_kernel` it would always read 0 (the scheduler's events).
    pub(super) fn kernel_only(self) -> bool {
        matches!(self, Event::ContextSwitches | Event::CpuMigrations)
    }

    /// `(type, config)` for `perf_event_attr`.
    pub(super) fn type_config(self) -> (u32, u64) {
        match self {
            Event::TaskClock => (sys::TYPE_SOFTWARE, sys::SW_TASK_CLOCK),
            Event::PageFaults => (sys::TYPE_SOFTWARE, sys::SW_PAGE_FAULTS),
            Event::MinorFaults => (sys::TYPE_SOFTWARE, sys::SW_PAGE_FAULTS_MIN),
            Event::MajorFaults => (sys::TYPE_SOFTWARE, sys::SW_PAGE_FAULTS_MAJ),
            Event::ContextSwitches => (sys::TYPE_SOFTWARE, sys::SW_CONTEXT_SWITCHES),
            Event::CpuMigrations => (sys::TYPE_SOFTWARE, sys::SW_CPU_MIGRATIONS),
            Event::Cycles => (sys::TYPE_HARDWARE, sys::HW_CPU_CYCLES),
            Event::Instructions => (sys::TYPE_HARDWARE, sys::HW_INSTRUCTIONS),
            Event::CacheMisses => (sys::TYPE_HARDWARE, sys::HW_CACHE_MISSES),
            Event::BranchMisses => (sys::TYPE_HARDWARE, sys::HW_BRANCH_MISSES),
        }
    }
}

/// Every event name, comma-separated (for error messages).
pub fn known_names() -> String {
    ALL.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
}

/// Which events a proc asked for, as its spec says it (the spec's `PerfSpec`
/// implements this, so the choice is made where the spec is, not here).
pub trait Selection {
    /// The chosen events, in [`ALL`] order, without repeats; unknown names
    /// (which validation rejects) are skipped.
    fn events(&self) -> Vec<Event>;
}

/// The events a proc counts: its spec's `perf`, else the agent's default (every
/// event when `default` is true). In [`ALL`] order, without repeats; unknown
/// names (which validation rejects) are skipped.
pub fn requested<S: Selection + ?Sized>(spec: Option<&S>, default: bool) -> Vec<Event> {
    match spec {
        None => {
            if default {
                ALL.to_vec()
            } else {
                Vec::new()
            }
        }
        Some(selection) => selection.events(),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip() {
        for e in ALL {
            assert_eq!(Event::from_name(e.name()), Some(e));
        }
        assert_eq!(Event::from_name("cycle"), None);
    }
}
