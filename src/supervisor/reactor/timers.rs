//! The reactor's timers: a process's timeout (its signal, then the SIGKILL
//! after it), and the `/proc` sampling tick of running processes.

use super::super::proc::Life;
use super::{Reactor, Tag, signal_proc};
use std::time::SystemTime;

impl Reactor {
    /// A timeout's timer fired: send its signal (then arm the SIGKILL timer), or the
    /// SIGKILL itself. Nothing happens once the process has exited.
    pub(super) fn timeout_fired(&mut self, serial: u64, kill: bool) {
        if kill {
            if let Some((pidfd, pgid)) = self.group_kills.remove(&serial) {
                if let Some(t) = self.table.get_mut(serial).and_then(|p| p.timeout.as_mut()) {
                    t.timer = None;
                }
                group_killed(pidfd, pgid);
                return;
            }
        }
        let Some(p) = self.table.get_mut(serial) else {
            return;
        };
        let running = p.is_running();
        let exiting = matches!(p.life, Life::Exiting);
        let (kill_group, pid) = (p.kill_group, p.pid);
        let Some(t) = p.timeout.as_mut() else { return };
        t.timer = None;
        if !running {
            // The leader has exited and is not reaped yet (its output still
            // being read), so its group's id is still its own: the SIGKILL
            // due to the group goes now.
            if kill && kill_group && exiting {
                if let Some(pgid) = pid {
                    t.killed = true;
                    let _ = crate::sys::pidfd::signal_group(pgid, libc::SIGKILL);
                }
            }
            return;
        }
        let signum = if kill { libc::SIGKILL } else { t.signum };
        if kill {
            t.killed = true;
        } else {
            t.fired_at = Some(SystemTime::now());
            if let Some(after) = t.kill_after {
                t.timer = Some(self.ring.timeout(
                    after,
                    Tag::Timeout {
                        proc: serial,
                        kill: true,
                    },
                ));
            }
        }
        tracing::info!(id = %p.id, signum, "timeout fired");
        if let Err(e) = signal_proc(p, signum) {
            tracing::warn!(id = %p.id, signum, "timeout signal failed: {e}");
        }
    }

    /// Ends the group kills still due (at shutdown): each group gets its
    /// SIGKILL now, and its leader is reaped.
    pub(super) fn group_kills_now(&mut self) {
        for (_, (pidfd, pgid)) in self.group_kills.drain() {
            group_killed(pidfd, pgid);
        }
    }

    /// The sampling timer fired: sample `/proc` of every running process, and arm
    /// the timer again while any runs. Each sample is a few small `/proc` reads
    /// (about 20 µs a process), so even a thousand processes take the reactor
    /// only milliseconds a tick.
    pub(super) fn sample_all(&mut self) {
        self.sampling = false;
        let Some(ctx) = self.stat_ctx.as_ref() else {
            return;
        };
        let mut any = false;
        for p in self.table.values_mut() {
            if matches!(p.life, Life::Running) {
                if p.sample(ctx, &mut self.stat_buf) {
                    p.record_history();
                }
                any = true;
            }
        }
        if any {
            self.arm_sampling();
        }
    }

    /// Arms the sampling timer unless it is armed or sampling is off.
    pub(super) fn arm_sampling(&mut self) {
        if self.sampling || self.stat_ctx.is_none() {
            return;
        }
        if let Some(every) = self.config.sample_interval.filter(|d| !d.is_zero()) {
            self.ring.timeout(every, Tag::Sample);
            self.sampling = true;
        }
    }
}

/// The SIGKILL of a timeout for the process group `pgid`, whose leader has
/// exited and is still unreaped (so the id is still the group's): sent to
/// the group, then the leader is reaped. An empty group (`ESRCH`) is fine.
fn group_killed(pidfd: std::rc::Rc<rustix::fd::OwnedFd>, pgid: i32) {
    match crate::sys::pidfd::signal_group(pgid, libc::SIGKILL) {
        Ok(()) => tracing::info!(pgid, "timeout: SIGKILL to the group its leader left"),
        Err(rustix::io::Errno::SRCH) => {}
        Err(e) => tracing::warn!(pgid, "timeout: SIGKILL to the group failed: {e}"),
    }
    if let Err(e) = crate::sys::wait::reap(&*pidfd) {
        tracing::warn!(pgid, "reaping a group's leader failed: {e}");
    }
}
