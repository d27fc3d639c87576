//! A short EEVDF slice for the agent's own threads (`sched_setattr`).
//!
//! The reactor and the spawning threads sleep most of the time and work in
//! short bursts, each of which a process is waiting on: a child to start, an
//! exit to be reaped. Under EEVDF a thread woken on a CPU that runs a child
//! waits for that child's slice (about 3 ms by default, 1.4 ms here) unless
//! its own deadline is earlier. On a two-core host running thousands of
//! short children, `perf sched timehist` showed the reactor waiting up to
//! 0.4 ms behind a `/bin/true` while the other core idled (6–8% of the run
//! idle). A thread with a shorter slice (Linux 6.12's
//! `sched_attr.sched_runtime` for normal tasks) gets an earlier deadline and
//! runs first. It does not get more CPU time: the share is still the nice
//! level's.
//!
//! `SCHED_FLAG_RESET_ON_FORK` keeps it from children: a process the agent
//! starts gets the default slice. The flag would also put a child's negative
//! nice back to 0, and the call sets the policy, so a thread is left alone
//! unless it runs `SCHED_OTHER` at nice 0 or above (an agent started under
//! `SCHED_BATCH`, a realtime policy or `nice -n -5` passes that on to its
//! children as before). Older kernels ignore the slice; nothing else changes
//! for such a thread.
//!
//! # References
//! - [sched_setattr(2)](https://man7.org/linux/man-pages/man2/sched_setattr.2.html)
//! - Linux 6.12, `sched/eevdf: Allow shorter slices to wakeup-preempt`

/// `struct sched_attr` (`SCHED_ATTR_SIZE_VER1`).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// `SCHED_FLAG_RESET_ON_FORK`.
const RESET_ON_FORK: u64 = 0x01;

/// Asks for a slice of `slice` for the calling thread, reset in any child
/// it creates, if the thread runs `SCHED_OTHER` at nice 0 or above (its nice
/// kept). Best effort: returns whether the kernel took it.
pub(crate) fn set_thread_slice(slice: std::time::Duration) -> bool {
    let Ok(runtime) = u64::try_from(slice.as_nanos()) else {
        return false;
    };
    let Some(now) = get_attr() else {
        return false;
    };
    if now.policy != libc::SCHED_OTHER as u32 || now.nice < 0 {
        return false;
    }
    let attr = SchedAttr {
        flags: RESET_ON_FORK,
        runtime,
        deadline: 0,
        period: 0,
        ..now
    };
    // SAFETY: `attr` is a valid `struct sched_attr` whose size field is its
    // size; pid 0 is the calling thread; flags 0.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    rc == 0
}

/// The calling thread's `sched_attr`.
fn get_attr() -> Option<SchedAttr> {
    let mut attr = core::mem::MaybeUninit::<SchedAttr>::zeroed();
    let size = core::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: the buffer is a zeroed `struct sched_attr` of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, attr.as_mut_ptr(), size, 0) };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised, and filled by the kernel on success.
    let mut attr = unsafe { attr.assume_init() };
    attr.size = size;
    Some(attr)
}

/// The calling thread's slice, in nanoseconds.
#[cfg(test)]
fn thread_slice() -> Option<u64> {
    get_attr().map(|a| a.runtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// On a kernel with custom slices (6.12+) the thread keeps the one asked
    /// for, and a child process it forks gets the default back; elsewhere the
    /// call changes nothing. Runs on a thread of its own, which it changes.
    /// A thread at a negative nice is left as it is (the reset on fork would
    /// take its nice from its children).
    #[test]
    fn a_thread_at_negative_nice_is_left_alone() {
        std::thread::spawn(|| {
            // SAFETY: setpriority on the calling thread; no memory arguments.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -1) } != 0 {
                eprintln!("skipped: cannot lower the nice level here (not root)");
                return;
            }
            let before = thread_slice();
            assert!(!set_thread_slice(Duration::from_micros(100)));
            assert_eq!(thread_slice(), before);
            assert_eq!(get_attr().map(|a| a.nice), Some(-1));
        })
        .join()
        .expect("the test thread");
    }

    #[test]
    fn a_thread_slice_is_kept_and_not_inherited() {
        std::thread::spawn(|| {
            let before = thread_slice();
            if !set_thread_slice(Duration::from_micros(100)) {
                eprintln!("skipped: this kernel refuses a custom slice");
                return;
            }
            let now = thread_slice();
            if now == before {
                eprintln!("skipped: this kernel ignores sched_runtime for normal tasks");
                return;
            }
            assert_eq!(now, Some(100_000));
            let out = std::process::Command::new("/bin/sh")
                .args(["-c", "grep '^se.slice' /proc/self/sched"])
                .output()
                .expect("sh");
            let text = String::from_utf8_lossy(&out.stdout);
            if text.is_empty() {
                eprintln!(
                    "skipped: no /proc/<pid>/sched (CONFIG_SCHED_DEBUG) to read a slice from"
                );
                return;
            }
            let slice: u64 = text
                .split(':')
                .nth(1)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no se.slice in {text:?}"));
            assert_ne!(slice, 100_000, "the child kept the agent thread's slice");
        })
        .join()
        .expect("the test thread");
    }
}
