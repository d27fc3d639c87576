//! The reactor's side of capture compression (spec `compress`): handing a
//! finished process's captures to the compression thread ([`Packer`]), and
//! taking in what it finished.
//!
//! [`Packer`]: super::super::packer::Packer

use super::super::proc::{self, Store};
use super::super::types::Event;
use super::Reactor;

impl Reactor {
    /// Hands the finished captures of a process whose spec asks for `compress`
    /// to the compression thread.
    pub(super) fn compress_captures(&mut self, serial: u64) {
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        let mut failed = Vec::new();
        for (cap, c) in p.captures.iter_mut().enumerate() {
            if let Some(job) = c.compress_job(&self.config.tmpdir) {
                if let Err(e) = self.packer.submit(serial, cap, job) {
                    let _ = c.compressed(Err(e));
                }
            }
            // Failed without a job (or its submission): done, as far as
            // subscribers waiting for `Compressed` are concerned.
            if c.compression_failed() {
                failed.push(Event::Compressed(p.id.clone(), c.name.clone()));
            }
        }
        // Nothing to compress (or all failed at once): final now.
        p.answer_final_waiters(self.stat_ctx.as_ref());
        for event in failed {
            self.emit(event);
        }
    }

    /// Takes compressions the compression thread finished (results for deleted
    /// processes are dropped).
    pub(super) fn drain_packed(&mut self) {
        while let Ok((serial, cap, result)) = self.packed_rx.try_recv() {
            let Some(p) = self.table.get_mut(serial) else {
                continue;
            };
            let Some(c) = p.captures.get_mut(cap) else {
                continue;
            };
            if let Err(e) = &result {
                tracing::warn!(id = %p.id, fd = %c.name, "compression failed: {e}");
            }
            let held = |c: &proc::Capture| match &c.store {
                Store::Memory {
                    frozen: Some(f), ..
                } => Some(f.held() as u64),
                _ => None,
            };
            let before = held(c);
            if let Some(old) = c.compressed(result) {
                self.packer.release(old);
            }
            // The uncompressed buffers are gone: their bytes leave the budget.
            if let (Some(bytes), None, Some(budget)) = (before, held(c), self.budget.as_mut()) {
                budget.remove((serial, cap), bytes);
            }
            let event = Event::Compressed(p.id.clone(), c.name.clone());
            self.settled = true;
            p.answer_final_waiters(self.stat_ctx.as_ref());
            self.emit(event);
        }
    }
}
