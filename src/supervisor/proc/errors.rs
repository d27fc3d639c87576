//! The error strings a process's result carries when its plan or its child's
//! setup fails, in Procstar's wording.

use crate::sys::fd;
use crate::sys::spawn::{ChildFailure, Stage};
use rustix::fd::RawFd;
use rustix::io::Errno;
use std::path::Path;

/// The agent's soft fd limit, which its children start with.
fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Whether `fd` is at or past the fd limit (so no process could have it).
fn above_fd_limit(fd: i32) -> bool {
    fd_limit().is_some_and(|l| u64::try_from(fd).is_ok_and(|fd| fd >= l))
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
