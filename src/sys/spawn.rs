//! `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`—starts a child from a prebuilt plan.
//!
//! Everything the child needs is computed here in the parent before the clone:
//! exe, argv and envp as NUL-terminated arrays, the fd actions with every source
//! moved above every target, the signal mask. The child (see `child.rs`; what
//! passes between us is defined in `child/abi.rs`) only makes raw syscalls.
//! Because the child shares our memory and we are suspended until it execs or
//! exits, spawn cost does not grow with the agent's memory, and the child can
//! report a failure by writing into our stack.
//!
//! # References
//! - [clone(2)](https://man7.org/linux/man-pages/man2/clone.2.html)
//! - [close_range(2)](https://man7.org/linux/man-pages/man2/close_range.2.html)
//! - glibc `sysdeps/unix/sysv/linux/spawni.c`

use super::child::abi::{CATCHABLE, ChildArgs, ChildPlanView, ChildReport, RlimitEntry};
pub use super::child::abi::{FdAction, Stage};
use super::child::child_main;
use super::clone3;
use super::perf::PerfPlan;
use core::ffi::{c_char, c_void};
use rustix::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use rustix::io::Errno;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

/// A NULL-terminated array of C strings that owns its strings.
#[derive(Debug)]
pub struct CStringArray {
    /// Owns what `ptrs` point into; read only through them.
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStringArray {
    /// Builds the array; fails with `EINVAL` naming nothing if any item has a NUL
    /// byte (the spec validator rejects those earlier with a clear message).
    pub fn new<I, S>(items: I) -> Result<Self, Errno>
    where
        I: IntoIterator<Item = S>,
        S: Into<Vec<u8>>,
    {
        let strings = items
            .into_iter()
            .map(|s| CString::new(s).map_err(|_| Errno::INVAL))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(core::ptr::null());
        Ok(CStringArray {
            _strings: strings,
            ptrs,
        })
    }

    /// The NULL-terminated pointer array.
    pub fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

/// Everything the child needs, computed in the parent.
#[derive(Debug)]
pub struct ChildPlan {
    pub(crate) exe: CString,
    pub(crate) argv: CStringArray,
    /// Shared by plans of processes started with the same environment.
    pub(crate) envp: std::sync::Arc<CStringArray>,
    fd_actions: Vec<FdAction>,
    /// Sources kept open until the clone returns; moved off every target.
    sources: Vec<Source>,
    pub(crate) setsid: bool,
    /// Kernel sigset: bit n-1 is signal n.
    pub(crate) sigmask: u64,
    /// Signals set to `SIG_IGN` (same layout as `sigmask`).
    ignore: u64,
    /// `setpgid(0, pgid)` when set (instead of `setsid`).
    pgid: Option<i32>,
    umask: Option<u32>,
    /// The parent-death signal and the agent's pid to check `getppid()` against.
    pdeath: Option<(i32, i32)>,
    cwd: Option<CString>,
    rlimits: Vec<RlimitEntry>,
    creds: Option<Creds>,
    /// perf counters the child opens on itself before exec.
    perf: Option<PerfPlan>,
}

/// An fd a plan installs in the child.
#[derive(Debug)]
pub enum Source {
    /// The plan's own, closed with it.
    Owned(OwnedFd),
    /// Held open by its owner as well (the agent's `/dev/null`), so a plan
    /// needs no duplicate of its own: two syscalls fewer per spawn.
    Shared(std::sync::Arc<OwnedFd>),
}

impl From<OwnedFd> for Source {
    fn from(fd: OwnedFd) -> Source {
        Source::Owned(fd)
    }
}

impl AsRawFd for Source {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Source::Owned(fd) => fd.as_raw_fd(),
            Source::Shared(fd) => fd.as_raw_fd(),
        }
    }
}

/// The credentials the child switches to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Creds {
    uid: Option<u32>,
    gid: u32,
    groups: Vec<u32>,
}

// SAFETY: the raw pointers in `CStringArray` point into the `CString`s the same plan
// owns, which never move (CString's heap buffer is stable) and are never mutated.
unsafe impl Send for CStringArray {}
// SAFETY: as above: nothing mutates a built array, so shared references to it
// from several threads only read.
unsafe impl Sync for CStringArray {}

impl ChildPlan {
    /// Starts a plan for `exe` with `argv` and an environment array built before
    /// (and perhaps shared with other plans).
    pub fn with_env<A>(
        exe: &std::ffi::OsStr,
        argv: A,
        envp: std::sync::Arc<CStringArray>,
    ) -> Result<Self, Errno>
    where
        A: IntoIterator,
        A::Item: Into<Vec<u8>>,
    {
        Ok(ChildPlan {
            exe: CString::new(exe.as_bytes()).map_err(|_| Errno::INVAL)?,
            argv: CStringArray::new(argv)?,
            envp,
            fd_actions: Vec::new(),
            sources: Vec::new(),
            setsid: true,
            sigmask: 0,
            ignore: 0,
            pgid: None,
            umask: None,
            pdeath: None,
            cwd: None,
            rlimits: Vec::new(),
            creds: None,
            perf: None,
        })
    }

    /// Signals blocked at exec (kernel layout: bit n-1 is signal n).
    pub fn set_sigmask(&mut self, mask: u64) {
        self.sigmask = mask;
    }

    /// Signals ignored (`SIG_IGN`) at exec; every other disposition is the default.
    pub fn set_ignore(&mut self, ignore: u64) {
        self.ignore = ignore;
    }

    /// Joins process group `pgid` (0: a new group led by the child) instead of
    /// calling `setsid()`.
    pub fn set_process_group(&mut self, pgid: i32) {
        self.setsid = false;
        self.pgid = Some(pgid);
    }

    /// The child's umask.
    pub fn set_umask(&mut self, umask: u32) {
        self.umask = Some(umask & 0o777);
    }

    /// `PR_SET_PDEATHSIG` with `signum`; the child then checks that its parent is
    /// still `agent_pid` and exits at once if not.
    pub fn set_pdeath_sig(&mut self, signum: i32, agent_pid: i32) {
        self.pdeath = Some((signum, agent_pid));
    }

    /// The child's working directory.
    pub fn set_cwd(&mut self, cwd: CString) {
        self.cwd = Some(cwd);
    }

    /// Sets resource `resource` (`RLIMIT_*`) to `soft`/`hard` (`RLIM_INFINITY`
    /// for unlimited).
    pub fn add_rlimit(&mut self, resource: u32, soft: u64, hard: u64) {
        self.rlimits.push(RlimitEntry {
            resource,
            limit: [soft, hard],
        });
    }

    /// Switches to `gid` with supplementary `groups`, then to `uid` when given.
    pub fn set_user(&mut self, uid: Option<u32>, gid: u32, groups: Vec<u32>) {
        self.creds = Some(Creds { uid, gid, groups });
    }

    /// perf counters the child opens on itself (see `sys::perf`); their fds come
    /// back in [`Spawned::perf`].
    pub fn set_perf(&mut self, perf: PerfPlan) {
        self.perf = Some(perf);
    }

    /// Drops the perf counters planned with [`ChildPlan::set_perf`]: the child
    /// opens none.
    pub fn clear_perf(&mut self) {
        self.perf = None;
    }

    /// Whether the child calls `setsid()` (Procstar does; default true).
    pub fn set_setsid(&mut self, setsid: bool) {
        self.setsid = setsid;
    }

    /// Installs `src` as fd `dst` in the child. The plan keeps `src` open until spawn.
    pub fn dup(&mut self, src: impl Into<Source>, dst: RawFd) {
        let src = src.into();
        let raw = src.as_raw_fd();
        self.sources.push(src);
        self.fd_actions.push(FdAction::Dup { src: raw, dst });
    }

    /// Closes fd `fd` in the child.
    pub fn close(&mut self, fd: RawFd) {
        self.fd_actions.push(FdAction::Close { fd });
    }

    /// The fd actions, in order.
    #[cfg(test)]
    pub fn fd_actions(&self) -> &[FdAction] {
        &self.fd_actions
    }

    /// One past the highest fd number the child needs before exec: 0–2, every
    /// target and every source. Everything at or above it is left behind when the
    /// child takes its own fd table.
    fn fd_window(&self) -> u32 {
        let highest = self
            .fd_actions
            .iter()
            .map(|a| match *a {
                FdAction::Dup { src, dst } => src.max(dst),
                FdAction::Close { fd } => fd,
            })
            .max()
            .unwrap_or(2)
            .max(2);
        u32::try_from(highest).map_or(3, |h| h.saturating_add(1))
    }

    /// Moves every source fd whose number is also a target to a number that is
    /// not, so that `dup3` in list order can never overwrite a source still to
    /// be used: the plan is a permutation, not a sequence. Done in the parent,
    /// where allocating fds is allowed. (Moving them all above the highest
    /// target, as this once did, fails with `EINVAL` for a target just under
    /// the fd limit.)
    fn lift_sources(&mut self) -> Result<(), Errno> {
        let mut targets: Vec<RawFd> = self
            .fd_actions
            .iter()
            .map(|a| match *a {
                FdAction::Dup { dst, .. } => dst,
                FdAction::Close { fd } => fd,
            })
            .collect();
        targets.sort_unstable();
        targets.dedup();
        let is_target = |fd: RawFd| targets.binary_search(&fd).is_ok();
        // `dup` pushes a source and a Dup action together, so the Dup actions and
        // the sources pair up in order.
        let dups = self.fd_actions.iter_mut().filter_map(|a| match a {
            FdAction::Dup { src, .. } => Some(src),
            FdAction::Close { .. } => None,
        });
        for (src, source) in dups.zip(self.sources.iter_mut()) {
            let mut min = 0;
            while is_target(source.as_raw_fd()) {
                // The lowest free number from `min`; one that is a target is
                // closed again and the search goes on past it.
                let moved = super::fd::dup_cloexec_raw(source.as_raw_fd(), min)?;
                min = moved.as_raw_fd() + 1;
                if !is_target(moved.as_raw_fd()) {
                    *source = Source::Owned(moved);
                }
            }
            *src = source.as_raw_fd();
        }
        Ok(())
    }
}

/// A dedicated stack for vfork children, with a guard page below it.
///
/// One stack serves every spawn: the parent thread is suspended until the child
/// execs or exits, so no two children ever use it at once.
#[derive(Debug)]
pub struct ChildStack {
    base: *mut c_void,
    len: usize,
}

// SAFETY: the stack is plain anonymous memory owned by this value; it is used only
// by children of the thread that holds `&mut ChildStack`.
unsafe impl Send for ChildStack {}

const GUARD: usize = 4096;
const STACK_SIZE: usize = 64 * 1024;

impl ChildStack {
    /// Maps a 64 KiB stack plus a guard page.
    pub fn new() -> Result<Self, Errno> {
        let len = STACK_SIZE + GUARD;
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; the result is checked below.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(super::last_errno());
        }
        // SAFETY: `base..base+GUARD` lies inside the mapping just made.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } < 0 {
            let err = super::last_errno();
            // SAFETY: unmapping the mapping we just made and no one else uses.
            unsafe { libc::munmap(base, len) };
            return Err(err);
        }
        Ok(ChildStack { base, len })
    }

    fn top(&self) -> *mut c_void {
        // Stacks grow down on every Linux target we build for; 16-byte aligned.
        (self.base as usize + self.len) as *mut c_void
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe a mapping this value owns; no child runs now.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// How a child's setup failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildFailure {
    /// The failing step.
    pub stage: Stage,
    /// The fd it worked on, or -1; for [`Stage::Rlimit`], the resource number.
    pub fd: RawFd,
    /// The errno it got.
    pub errno: Errno,
    /// For [`Stage::Chdir`], the directory (lossy UTF-8).
    pub path: Option<String>,
}

/// A started child: its pid, its pidfd, and whether its setup failed.
///
/// On a setup failure the child has already called `_exit(63)`; it is a zombie
/// to reap like any other, which keeps the pid and status in the result.
#[derive(Debug)]
pub struct Spawned {
    /// The child's pid (a label for `/proc` and display, never a handle).
    pub pid: rustix::process::Pid,
    /// The pidfd from `CLONE_PIDFD`.
    pub pidfd: OwnedFd,
    /// The setup failure, if the child did not reach `execve`.
    pub failure: Option<ChildFailure>,
    /// One entry per [`ChildPlan::set_perf`] entry, in order: the counter's fd
    /// (moved high), or why it did not open. Empty without perf counters.
    pub perf: Vec<Result<OwnedFd, Errno>>,
}

/// Starts a child from `plan` on `stack`.
///
/// The calling thread blocks all signals around the clone (a handler must never
/// run in the child while it shares our memory) and is suspended until the child
/// execs or exits.
///
/// # Errors
/// `clone` failures: `EAGAIN` (process limit), `ENOMEM`, `ENOSYS` (no
/// `CLONE_PIDFD`, before Linux 5.2).
pub fn spawn(mut plan: ChildPlan, stack: &mut ChildStack) -> Result<Spawned, Errno> {
    plan.lift_sources()?;
    let (perf, perf_out, perf_len) = match plan.perf.as_mut() {
        Some(p) => (
            p.entries.as_ptr(),
            p.out.as_mut_ptr(),
            p.entries.len().min(p.out.len()),
        ),
        None => (core::ptr::null(), core::ptr::null_mut(), 0),
    };
    let mut view = ChildPlanView {
        exe: plan.exe.as_ptr(),
        argv: plan.argv.as_ptr(),
        envp: plan.envp.as_ptr(),
        fd_actions: plan.fd_actions.as_ptr(),
        fd_actions_len: plan.fd_actions.len(),
        setsid: plan.setsid,
        pgid: plan.pgid.unwrap_or(-1),
        sigmask: plan.sigmask,
        ignore: plan.ignore,
        reset: CATCHABLE,
        umask: plan.umask.and_then(|u| i32::try_from(u).ok()).unwrap_or(-1),
        pdeath_sig: plan.pdeath.map_or(0, |(sig, _)| sig),
        agent_pid: plan.pdeath.map_or(0, |(_, pid)| pid),
        cwd: plan.cwd.as_ref().map_or(core::ptr::null(), |c| c.as_ptr()),
        rlimits: plan.rlimits.as_ptr(),
        rlimits_len: plan.rlimits.len(),
        set_creds: plan.creds.is_some(),
        uid: plan
            .creds
            .as_ref()
            .and_then(|c| c.uid)
            .map_or(-1, i64::from),
        gid: plan.creds.as_ref().map_or(0, |c| c.gid),
        groups: plan
            .creds
            .as_ref()
            .map_or(core::ptr::null(), |c| c.groups.as_ptr()),
        groups_len: plan.creds.as_ref().map_or(0, |c| c.groups.len()),
        fd_window: plan.fd_window(),
        perf,
        perf_out,
        perf_len,
    };
    // With handlers cleared by the kernel, the child resets only the signals
    // the agent ignores (see clone3.rs).
    let ignored = if clone3::usable() {
        clone3::ignored_recently()
    } else {
        None
    };
    if let Some(ignored) = ignored {
        view.reset = clone3::to_reset(ignored, plan.ignore);
    }
    let mut report = ChildReport::default();
    let mut args = ChildArgs {
        plan: &view,
        report: &mut report,
    };

    let all: libc::sigset_t = unsafe_sigset_full();
    // With clone3 the child has no handler to run, and SIGCHLD keeps the
    // state it has in this thread (unblocked, unless the embedding program
    // blocks it to read it some other way): the kernel drops a SIGCHLD whose
    // disposition is the default only while the parent thread does not block
    // it. Blocked (this thread spawns again and again at a fan-out), it was
    // queued, and the exit of every other child woke some other thread of
    // the agent to throw it away (`perf sched`: half of 200 exits woke one).
    let mut all_but_chld = all;
    // SAFETY: a valid, initialised set and a valid signal number.
    unsafe { libc::sigdelset(&mut all_but_chld, libc::SIGCHLD) };
    let mut old: libc::sigset_t = unsafe_sigset_empty();
    let (how, mask) = if ignored.is_some() {
        (libc::SIG_BLOCK, &all_but_chld)
    } else {
        (libc::SIG_SETMASK, &all)
    };
    // SAFETY: both sigset pointers are valid for the call.
    unsafe { libc::pthread_sigmask(how, mask, &mut old) };

    let mut pidfd: libc::c_int = -1;
    // CLONE_FILES: the child starts on our fd table and takes a copy of only its
    // low window (see child.rs), instead of the kernel copying every fd we hold.
    let flags =
        libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::CLONE_PIDFD | libc::SIGCHLD;
    let mut pid = -1;
    let mut clone_errno = libc::ENOSYS;
    let mut use_clone = ignored.is_none();
    if ignored.is_some() {
        let mut cargs = clone3::CloneArgs {
            flags: (flags & !libc::CSIGNAL) as u64 | clone3::EXTRA_FLAGS,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.base as u64,
            stack_size: stack.len as u64,
            ..Default::default()
        };
        // SAFETY: as for `clone` below: the stack is this thread's alone,
        // `child_main` obeys the vfork rules, and `args`, `pidfd` and `cargs`
        // outlive the child's use of them (CLONE_VFORK).
        let r = unsafe {
            clone3::clone3_run(
                &mut cargs,
                child_main,
                &mut args as *mut ChildArgs as *mut c_void,
            )
        };
        match i32::try_from(r) {
            Ok(p) if p > 0 => pid = p,
            _ => {
                clone_errno = i32::try_from(r.saturating_neg()).unwrap_or(libc::EINVAL);
                if clone3::refused(clone_errno) {
                    // Fall back to clone, and so to resetting every signal,
                    // with every signal blocked until the child has.
                    view.reset = CATCHABLE;
                    args.plan = &view;
                    use_clone = true;
                    // SAFETY: a valid sigset pointer; the old mask is kept.
                    unsafe {
                        libc::pthread_sigmask(libc::SIG_SETMASK, &all, core::ptr::null_mut())
                    };
                }
            }
        }
    }
    if use_clone {
        // SAFETY: the stack is a private mapping this thread alone uses for children;
        // `child_main` obeys the vfork rules (child.rs); `args` and `pidfd` outlive the
        // child's use of them because CLONE_VFORK suspends us until exec or exit.
        pid = unsafe {
            libc::clone(
                child_main,
                stack.top(),
                flags,
                &mut args as *mut ChildArgs as *mut c_void,
                &mut pidfd as *mut libc::c_int,
            )
        };
        clone_errno = super::errno();
    }

    // SAFETY: restoring the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) };
    let cwd = plan.cwd.take();
    // The perf fds the child opened are in our fd table (CLONE_FILES): take
    // them. After a failed clone the slots still hold their initial -EBADF.
    let perf: Vec<Result<OwnedFd, Errno>> = (0..perf_len)
        .map(|i| {
            // SAFETY: `perf_out` points to `perf_len` slots of the plan's `out`, still
            // alive (`plan` is dropped below); the child's writes finished before
            // clone returned (CLONE_VFORK).
            let raw = unsafe { core::ptr::read_volatile(perf_out.wrapping_add(i)) };
            if raw >= 0 {
                // SAFETY: the child opened this fd in our shared table and nothing
                // else owns it.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                Ok(fd)
            } else {
                Err(Errno::from_raw_os_error(raw.saturating_neg()))
            }
        })
        .collect();
    drop(plan); // closes the sources: the child has its own copies now
    if pid < 0 {
        return Err(Errno::from_raw_os_error(clone_errno));
    }
    // SAFETY: CLONE_PIDFD stored a new pidfd that we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: the child wrote the report (if at all) before exec/exit, and vfork
    // ordering makes its write visible now.
    let report = unsafe { core::ptr::read_volatile(&report) };
    let failure = (report.stage != 0).then(|| {
        let stage = Stage::from_raw(report.stage);
        ChildFailure {
            stage,
            fd: report.fd,
            errno: Errno::from_raw_os_error(report.errno),
            path: (stage == Stage::Chdir)
                .then(|| cwd.map(|c| c.to_string_lossy().into_owned()))
                .flatten(),
        }
    });
    Ok(Spawned {
        pid: rustix::process::Pid::from_raw(pid).ok_or(Errno::SRCH)?,
        pidfd,
        failure,
        perf,
    })
}

fn unsafe_sigset_full() -> libc::sigset_t {
    let mut set = core::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises the whole set.
    unsafe { libc::sigfillset(set.as_mut_ptr()) };
    // SAFETY: initialised by sigfillset above.
    unsafe { set.assume_init() }
}

fn unsafe_sigset_empty() -> libc::sigset_t {
    let mut set = core::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set.
    unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    // SAFETY: initialised by sigemptyset above.
    unsafe { set.assume_init() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    fn file_with(dir: &std::path::Path, name: &str, text: &str) -> OwnedFd {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::File::open(path).unwrap().into()
    }

    /// A shared source whose number another action targets is moved off it
    /// (a copy of the plan's own), and the owner's fd stays open and
    /// unchanged after the spawn.
    #[test]
    fn a_shared_source_on_a_target_number_is_lifted_and_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(file_with(dir.path(), "a", "from a\n"));
        let b = file_with(dir.path(), "b", "from b\n");
        let n = shared.as_raw_fd();
        let (r, w) = crate::sys::pipe::pipe().unwrap();
        let envp = Arc::new(CStringArray::new(Vec::<Vec<u8>>::new()).unwrap());
        let script = format!("cat; cat /proc/self/fd/{n}");
        let mut plan =
            ChildPlan::with_env("/bin/sh".as_ref(), ["sh", "-c", script.as_str()], envp).unwrap();
        // Fd n is written first: without the lift, stdin would get b.
        plan.dup(b, n);
        plan.dup(Source::Shared(shared.clone()), 0);
        plan.dup(w, 1);
        let child = spawn(plan, &mut ChildStack::new().unwrap()).unwrap();
        assert_eq!(child.failure, None);
        let reaped = crate::sys::wait::reap(&child.pidfd).unwrap();
        assert_eq!(reaped.status, 0);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "from a\nfrom b\n");
        assert_eq!(
            Arc::strong_count(&shared),
            1,
            "the plan's reference is gone"
        );
        let link = std::fs::read_link(format!("/proc/self/fd/{n}")).unwrap();
        assert_eq!(
            link,
            dir.path().join("a"),
            "still open, still the same file"
        );
    }
}
