//! The reactor's process table ([`ProcTable`]): every [`Proc`] by serial, the
//! serial of each id, and the budget of processes launched at once
//! (`max_running`, and whether launches wait for fds).

use super::super::proc::Proc;
use crate::spec::ProcId;
use std::collections::HashMap;

/// The processes of an agent, each under a serial that is never reused (ring
/// ops and the other threads' results name processes by serial, so one
/// deleted and started again under the same id is not taken for the old), and
/// how many of them hold a launch slot.
pub(super) struct ProcTable {
    /// The processes, by serial. Boxed: a `Proc` is large, and serials are
    /// never reused, so a map that sees processes come and go fills with
    /// tombstones and sometimes grows though it holds no more than before; an
    /// inline `Proc` made every bucket of the grown table resident (a soak of
    /// 100 × 1000 processes rose 24% in RSS and stayed there; boxed, 4%).
    procs: HashMap<u64, Box<Proc>>,
    /// The serial of each process, by id.
    ids: HashMap<ProcId, u64>,
    /// The serial the next process gets.
    next_serial: u64,
    /// Processes launched and not yet settled (see `Proc::holds_slot`).
    active: usize,
    /// The most processes [`ProcTable::active`] may count.
    max_running: usize,
    /// A launch ran out of fds (or tasks): no launch until a process lets go
    /// of its own.
    fds_short: bool,
    /// [`ProcTable::ended_capture_fds`]'s last count, with the (processes,
    /// active) it was made at: a request failing for want of fds asks for
    /// every process it fails, and a walk each time was quadratic.
    held_memo: std::cell::Cell<Option<((usize, usize), usize)>>,
}

impl ProcTable {
    /// An empty table whose budget allows `max_running` processes at once.
    pub(super) fn new(max_running: usize) -> ProcTable {
        ProcTable {
            procs: HashMap::new(),
            ids: HashMap::new(),
            next_serial: 0,
            active: 0,
            max_running,
            fds_short: false,
            held_memo: std::cell::Cell::new(None),
        }
    }

    /// Room for `n` more processes. A request's are inserted together; grown
    /// a doubling at a time, the two maps rehashed every entry at each one (a
    /// quarter of the reactor's samples while it queued 10,000 processes,
    /// before the first could start; 3 of the 49 ms to the first start).
    pub(super) fn reserve(&mut self, n: usize) {
        self.procs.reserve(n);
        self.ids.reserve(n);
    }

    /// Adds `proc` under its id and a new serial, which it returns.
    pub(super) fn insert(&mut self, proc: Proc) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.ids.insert(proc.id.clone(), serial);
        self.procs.insert(serial, Box::new(proc));
        serial
    }

    /// Removes process `serial`, and its id with it.
    pub(super) fn remove(&mut self, serial: u64) -> Option<Proc> {
        let p = self.procs.remove(&serial)?;
        self.ids.remove(&p.id);
        Some(*p)
    }

    /// The serial of the process with this id.
    pub(super) fn serial(&self, id: &str) -> Option<u64> {
        self.ids.get(id).copied()
    }

    /// Whether a process has this id.
    pub(super) fn contains_id(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Every id, sorted.
    pub(super) fn ids(&self) -> Vec<ProcId> {
        let mut ids: Vec<ProcId> = self.ids.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(super) fn get(&self, serial: u64) -> Option<&Proc> {
        self.procs.get(&serial).map(Box::as_ref)
    }

    pub(super) fn get_mut(&mut self, serial: u64) -> Option<&mut Proc> {
        self.procs.get_mut(&serial).map(Box::as_mut)
    }

    /// Every process, in no order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Proc> {
        self.procs.values().map(Box::as_ref)
    }

    /// Every process, in no order.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.procs.values_mut().map(Box::as_mut)
    }

    /// How many fds the captures of processes that have ended hold: their
    /// files, open until the process is deleted (see
    /// [`Capture::file_fds`](crate::supervisor::proc::Capture::file_fds)).
    /// Counted again only once a process has come, gone, started or ended
    /// since the last count (for an error message, it need not be exact to
    /// the compression of a capture).
    pub(super) fn ended_capture_fds(&self) -> usize {
        let key = (self.procs.len(), self.active);
        if let Some((k, n)) = self.held_memo.get()
            && k == key
        {
            return n;
        }
        let n = self
            .values()
            .filter(|p| !p.holds_slot)
            .flat_map(|p| &p.captures)
            .map(|c| c.file_fds())
            .sum();
        self.held_memo.set(Some((key, n)));
        n
    }

    pub(super) fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// The processes by serial, for [`outlimit`](super::super::outlimit),
    /// which finds the captures of its budget by (serial, capture).
    pub(super) fn by_serial_mut(&mut self) -> &mut HashMap<u64, Box<Proc>> {
        &mut self.procs
    }

    /// How many processes hold a launch slot.
    pub(super) fn active(&self) -> usize {
        self.active
    }

    /// Whether a process may be launched now: not while launches wait for
    /// fds, and not past `max_running` unless `past_max` says it may go past
    /// it (asked only then).
    pub(super) fn may_launch(&self, past_max: impl FnOnce() -> bool) -> bool {
        !self.fds_short && (self.active < self.max_running || past_max())
    }

    /// Process `serial` is launched: it holds a slot until
    /// [`ProcTable::release_slot`].
    pub(super) fn take_slot(&mut self, serial: u64) {
        if let Some(p) = self.procs.get_mut(&serial) {
            p.holds_slot = true;
            self.active += 1;
        }
    }

    /// Process `serial` let go of its slot (and fds), if it held one: a launch
    /// that waited for fds may be tried again.
    pub(super) fn release_slot(&mut self, serial: u64) {
        if let Some(p) = self.procs.get_mut(&serial).filter(|p| p.holds_slot) {
            p.holds_slot = false;
            self.active = self.active.saturating_sub(1);
            self.fds_short = false;
        }
    }

    /// A launch ran out of fds (or tasks) while others hold some: no launch
    /// until one of them lets go of its slot.
    pub(super) fn fds_ran_short(&mut self) {
        self.fds_short = true;
    }
}

/// The default of `Config::max_running`: as many processes as the soft fd
/// limit has room for at four long-lived fds each (a pidfd and three captures),
/// past a reserve for the agent's own.
pub(crate) fn default_max_running() -> usize {
    let soft = crate::sys::fd::fd_limit().unwrap_or(1 << 20);
    usize::try_from(soft.saturating_sub(256) / 4)
        .unwrap_or(usize::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(max_running: usize, ids: &[&str]) -> (ProcTable, Vec<u64>) {
        let mut t = ProcTable::new(max_running);
        let serials = ids
            .iter()
            .map(|id| t.insert(Proc::queued(id.to_string(), 0)))
            .collect();
        (t, serials)
    }

    #[test]
    fn inserted_procs_are_found_by_serial_and_id() {
        let (t, s) = table_with(4, &["b", "a"]);
        assert_eq!(t.serial("a"), Some(s[1]));
        assert_eq!(t.serial("b"), Some(s[0]));
        assert_eq!(t.get(s[1]).map(|p| p.id.as_str()), Some("a"));
        assert!(t.contains_id("a"));
        assert!(!t.contains_id("c"));
        assert_eq!(t.serial("c"), None);
        assert_eq!(t.ids(), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(t.values().count(), 2);
        assert!(!t.is_empty());
    }

    #[test]
    fn serials_increase_and_are_not_reused() {
        let (mut t, s) = table_with(4, &["x", "y", "z"]);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{s:?}");
        // Deleted and started again under the same id: a new serial.
        assert!(t.remove(s[2]).is_some());
        let again = t.insert(Proc::queued("z".into(), 0));
        assert!(again > s[2], "{again} after {s:?}");
        assert_eq!(t.serial("z"), Some(again));
    }

    #[test]
    fn remove_takes_the_id_with_it() {
        let (mut t, s) = table_with(4, &["a", "b"]);
        let p = t.remove(s[0]).expect("known serial");
        assert_eq!(p.id, "a");
        assert_eq!(t.serial("a"), None);
        assert!(!t.contains_id("a"));
        assert!(t.get(s[0]).is_none());
        assert_eq!(t.ids(), vec!["b".to_string()]);
        assert!(t.remove(s[0]).is_none());
        assert!(t.remove(s[1]).is_some());
        assert!(t.is_empty());
    }

    #[test]
    fn the_budget_counts_slots_and_refuses_past_max() {
        let (mut t, s) = table_with(2, &["a", "b", "c"]);
        assert!(t.may_launch(|| false));
        t.take_slot(s[0]);
        t.take_slot(s[1]);
        assert_eq!(t.active(), 2);
        assert!(t.get(s[0]).is_some_and(|p| p.holds_slot));
        assert!(!t.may_launch(|| false), "past max_running");
        // A process whose peers may wait for it goes past the max.
        assert!(t.may_launch(|| true));
        t.release_slot(s[0]);
        assert_eq!(t.active(), 1);
        assert!(t.get(s[0]).is_some_and(|p| !p.holds_slot));
        assert!(t.may_launch(|| false));
        // Released twice, or never held: counted once.
        t.release_slot(s[0]);
        t.release_slot(s[2]);
        assert_eq!(t.active(), 1);
    }

    #[test]
    fn past_max_is_asked_only_at_the_max() {
        let (mut t, s) = table_with(1, &["a"]);
        assert!(t.may_launch(|| panic!("asked below the max")));
        t.take_slot(s[0]);
        let mut asked = false;
        assert!(!t.may_launch(|| {
            asked = true;
            false
        }));
        assert!(asked);
    }

    #[test]
    fn short_of_fds_no_launch_until_a_slot_is_released() {
        let (mut t, s) = table_with(8, &["a", "b"]);
        t.take_slot(s[0]);
        t.fds_ran_short();
        assert!(!t.may_launch(|| false));
        assert!(!t.may_launch(|| true), "fds short even past max");
        // One that held no slot frees no fds.
        t.release_slot(s[1]);
        assert!(!t.may_launch(|| true));
        t.release_slot(s[0]);
        assert!(t.may_launch(|| false));
        assert_eq!(t.active(), 0);
    }

    #[test]
    fn the_default_max_running_is_at_least_one() {
        assert!(default_max_running() >= 1);
    }
}
