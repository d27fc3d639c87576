//! The reactor's side of `--output-limit`: memory captures of the process table
//! under one [`Budget`], keyed by (process serial, capture index).

use super::proc::{Proc, Store};
use crate::capture::headtail::HeadTail;
use crate::capture::limit::{self, Budget, Captures};
use std::collections::HashMap;
use std::sync::Arc;

/// A capture's key in the budget: (process serial, capture index).
pub(crate) type CapKey = (u64, usize);

struct Table<'a>(&'a mut HashMap<u64, Box<Proc>>);

impl Captures<CapKey> for Table<'_> {
    fn live(&mut self, (serial, cap): CapKey) -> Option<&mut HeadTail> {
        let p = self.0.get_mut(&serial)?;
        match &mut p.captures.get_mut(cap)?.store {
            Store::Memory {
                live, frozen: None, ..
            } => Some(live),
            _ => None,
        }
    }

    fn shed(&mut self, (serial, cap): CapKey, k: usize) -> usize {
        let Some(c) = self
            .0
            .get_mut(&serial)
            .and_then(|p| p.captures.get_mut(cap))
        else {
            return 0;
        };
        match &mut c.store {
            Store::Memory {
                frozen: Some(f), ..
            } => Arc::make_mut(f).shed(k),
            Store::Memory { live, .. } => live.shed(k, 0),
            _ => 0,
        }
    }
}

/// Pushes bytes read from a pipe into capture `cap` of process `serial`: a kept
/// file's staging (returns true: the caller starts its write), or the memory
/// capture, within the budget if there is one.
pub(crate) fn push(
    budget: Option<&mut Budget<CapKey>>,
    procs: &mut HashMap<u64, Box<Proc>>,
    serial: u64,
    cap: usize,
    data: &[u8],
) -> bool {
    if let Some(f) = procs
        .get_mut(&serial)
        .and_then(|p| p.captures.get_mut(cap))
        .and_then(|c| c.store.kept_mut())
    {
        // A kept file holds nothing in memory: even its head/tail window
        // (`"memory": true`) is read back from the file.
        f.push(data);
        return true;
    }
    limit::push(budget, &mut Table(procs), (serial, cap), data);
    false
}

/// Forgets the memory captures of a deleted process.
pub(crate) fn forget(budget: Option<&mut Budget<CapKey>>, serial: u64, p: &Proc) {
    let Some(budget) = budget else { return };
    for (i, c) in p.captures.iter().enumerate() {
        if let Store::Memory { live, frozen, .. } = &c.store {
            let held = frozen.as_ref().map_or(live.held(), |f| f.held());
            budget.remove((serial, i), held as u64);
        }
    }
}
