//! The error strings a process's result carries when its plan or its child's
//! setup fails, in Procstar's wording.

use crate::sys::fd;
use crate::sys::fd::fd_limit;
use crate::sys::spawn::{ChildFailure, Stage};
use rustix::fd::RawFd;
use rustix::io::Errno;
use std::path::Path;

/// Whether `fd` is at or past the fd limit (so no process could have it).
fn above_fd_limit(fd: i32) -> bool {
    fd_limit().is_some_and(|l| u64::try_from(fd).is_ok_and(|fd| fd >= l))
}

/// The error of a process that could not be cloned (EAGAIN) with no other
/// process whose end might free a task.
pub(crate) fn out_of_tasks_message() -> String {
    let nproc = rustix::process::getrlimit(rustix::process::Resource::Nproc).current;
    let limit = nproc.map_or("unlimited".to_string(), |n| n.to_string());
    format!(
        "out of processes: the agent's user is at its RLIMIT_NPROC ({limit}), or the system at kernel.pid_max or kernel.threads-max; lower --max-running or raise the limit"
    )
}

/// The error of a process that could not get its fds with no other process
/// holding any that might be freed. `held`: how many fds the captures of
/// processes that have ended hold (a tempfile or kept file each, until the
/// process is deleted), which no process's end will free.
pub(crate) fn out_of_fds_message(held: usize) -> String {
    match crate::sys::fd::fd_limit() {
        Some(n) if held > 0 => format!(
            "out of file descriptors: the agent's RLIMIT_NOFILE is {n}, and {held} of its fds \
             hold the files of captures of processes that have ended (a tempfile or file capture \
             keeps its file open until its process is deleted); delete ended processes, capture \
             to memory, or raise the limit (ulimit -n)"
        ),
        Some(n) => format!(
            "out of file descriptors: the agent's RLIMIT_NOFILE is {n}; raise it (ulimit -n) or lower --max-running"
        ),
        None => "out of file descriptors (system-wide limit, fs.file-max)".to_string(),
    }
}

/// How often a spawn that found no fd or task is tried again while no other
/// process holds one: they may have been held only for a moment (another plan
/// being built while a spawning thread cloned, or the last run's counters).
pub(crate) const ALONE_RETRIES: u8 = 3;

/// The error of a process a shutdown gave up before it was spawned (queued,
/// or in a spawning thread's queue).
pub(crate) const NOT_STARTED_SHUTDOWN: &str = "not started: the agent is shutting down";

/// Whether a clone failed for want of an fd (`EMFILE`, `ENFILE`).
pub(crate) fn out_of_fds(e: Errno) -> bool {
    e == Errno::MFILE || e == Errno::NFILE
}

/// Whether a clone failed for want of a task (`EAGAIN`: the user at
/// `RLIMIT_NPROC`, or the system at `pid_max` or `threads-max`).
pub(crate) fn out_of_tasks(e: Errno) -> bool {
    e == Errno::AGAIN
}

/// The errors of a process whose clone failed with `e`: the failure, and
/// for running out of fds or of processes which limit to raise (`held` as
/// for [`out_of_fds_message`]).
pub(crate) fn spawn_failed(e: Errno, held: usize) -> Vec<String> {
    let mut errors = vec![format!("spawn failed: {}", std::io::Error::from(e))];
    if out_of_fds(e) {
        errors.push(out_of_fds_message(held));
    }
    if out_of_tasks(e) {
        errors.push(out_of_tasks_message());
    }
    errors
}

/// Error text for a child setup failure, in Procstar's wording.
pub(crate) fn failure_message(f: &ChildFailure, exe: &str) -> String {
    let err = std::io::Error::from_raw_os_error(f.errno.raw_os_error());
    match f.stage {
        Stage::Exec => format!("execve failed: {exe}: {err}"),
        Stage::DupFd | Stage::CloseFd if f.errno == Errno::BADF && above_fd_limit(f.fd) => format!(
            "failed to set up fd {}: {err}: fds must be below the fd limit, {} here (RLIMIT_NOFILE)",
            f.fd,
            fd_limit().unwrap_or_default()
        ),
        Stage::DupFd | Stage::CloseFd => format!("failed to set up fd {}: {err}", f.fd),
        Stage::Setsid => format!("setsid failed: {err}"),
        Stage::CloseRange => format!("close_range failed: {err}"),
        Stage::SignalMask => format!("setting the signal mask failed: {err}"),
        Stage::Setpgid => format!("setpgid failed: {err}"),
        Stage::PdeathSig if f.errno == Errno::SRCH => {
            "the agent exited before the child started".to_string()
        }
        Stage::PdeathSig => format!("setting the parent-death signal failed: {err}"),
        Stage::Chdir => format!(
            "chdir failed: {}: {err}",
            f.path.as_deref().unwrap_or("<cwd>")
        ),
        Stage::Rlimit => format!(
            "setting rlimit {} failed: {err}",
            crate::control::RLIMIT_NAMES
                .iter()
                .find(|&&(_, r)| i64::from(r) == i64::from(f.fd))
                .map_or_else(|| f.fd.to_string(), |(n, _)| (*n).to_string())
        ),
        Stage::SetGroups => format!("setgroups failed: {err}"),
        Stage::SetGid => format!("setgid failed: {err}"),
        Stage::SetUser => format!("setuid failed: {err}"),
        Stage::None => format!("child setup failed: {err}"),
    }
}

/// The error for a path refused because in the agent it means the agent.
pub(super) fn refusal(fd: RawFd, path: &Path, why: &fd::OpenFailure) -> String {
    let path = path.display();
    match why {
        fd::OpenFailure::AgentProc(at) => format!(
            "failed to set up fd {fd}: {path} is the agent's own {at}: refused, as it would \
             give the child the agent's memory, fds or environment (the agent opens spec \
             files; use a dup of another fd, or open it in the child)"
        ),
        _ => format!(
            "failed to set up fd {fd}: {path} goes through a /proc magic link (such as \
             /dev/fd/N, /dev/stdin or /proc/self/fd/N) or a symlink loop: refused, as in the \
             agent it would be the agent's own fd (use a dup of the child's fd instead)"
        ),
    }
}

/// Error text for an fd the plan could not set up.
pub(super) fn fd_error(fd: RawFd, e: Errno) -> String {
    format!(
        "failed to set up fd {fd}: {}",
        std::io::Error::from_raw_os_error(e.raw_os_error())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(stage: Stage, errno: Errno, fd: RawFd, path: Option<&str>) -> ChildFailure {
        ChildFailure {
            stage,
            fd,
            errno,
            path: path.map(str::to_string),
        }
    }

    #[test]
    fn an_exec_failure_names_the_exe() {
        let f = failure(Stage::Exec, Errno::NOENT, -1, None);
        assert_eq!(
            failure_message(&f, "/no/such"),
            "execve failed: /no/such: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn an_fd_at_or_past_the_fd_limit_says_why_it_is_bad() {
        let f = failure(Stage::DupFd, Errno::BADF, 5, None);
        assert_eq!(
            failure_message(&f, "x"),
            "failed to set up fd 5: Bad file descriptor (os error 9)"
        );
        let Some(limit) = fd_limit().and_then(|l| RawFd::try_from(l).ok()) else {
            return; // no fd can be past an unlimited (or huge) limit
        };
        let f = failure(Stage::CloseFd, Errno::BADF, limit, None);
        assert_eq!(
            failure_message(&f, "x"),
            format!(
                "failed to set up fd {limit}: Bad file descriptor (os error 9): fds must be \
                 below the fd limit, {limit} here (RLIMIT_NOFILE)"
            )
        );
    }

    #[test]
    fn a_chdir_failure_names_the_directory() {
        let f = failure(Stage::Chdir, Errno::NOENT, -1, Some("/gone"));
        assert_eq!(
            failure_message(&f, "x"),
            "chdir failed: /gone: No such file or directory (os error 2)"
        );
        let f = failure(Stage::Chdir, Errno::NOENT, -1, None);
        assert_eq!(
            failure_message(&f, "x"),
            "chdir failed: <cwd>: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn an_rlimit_failure_names_the_resource() {
        let nofile = RawFd::try_from(libc::RLIMIT_NOFILE).unwrap();
        let f = failure(Stage::Rlimit, Errno::PERM, nofile, None);
        assert_eq!(
            failure_message(&f, "x"),
            "setting rlimit nofile failed: Operation not permitted (os error 1)"
        );
        let f = failure(Stage::Rlimit, Errno::PERM, 99, None);
        assert_eq!(
            failure_message(&f, "x"),
            "setting rlimit 99 failed: Operation not permitted (os error 1)"
        );
    }

    #[test]
    fn a_parent_death_check_that_finds_no_agent_says_the_agent_exited() {
        let f = failure(Stage::PdeathSig, Errno::SRCH, -1, None);
        assert_eq!(
            failure_message(&f, "x"),
            "the agent exited before the child started"
        );
        let f = failure(Stage::PdeathSig, Errno::INVAL, -1, None);
        assert_eq!(
            failure_message(&f, "x"),
            "setting the parent-death signal failed: Invalid argument (os error 22)"
        );
    }

    #[test]
    fn a_magic_link_refusal_says_to_dup_instead() {
        let msg = refusal(1, Path::new("/dev/stdout"), &fd::OpenFailure::MagicLink);
        assert_eq!(
            msg,
            "failed to set up fd 1: /dev/stdout goes through a /proc magic link (such as \
             /dev/fd/N, /dev/stdin or /proc/self/fd/N) or a symlink loop: refused, as in the \
             agent it would be the agent's own fd (use a dup of the child's fd instead)"
        );
    }

    #[test]
    fn an_fd_error_is_procstars_wording() {
        assert_eq!(
            fd_error(3, Errno::MFILE),
            "failed to set up fd 3: Too many open files (os error 24)"
        );
    }
}
