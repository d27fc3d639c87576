//! Fds that plans hand out beyond their own opens: `/dev/null`, opened once
//! and shared or duplicated ([`NullFds`]), and the pipes between processes of one start
//! request ([`RequestPipes`]).

use crate::spec::{self, FdSpec, ProcId};
use crate::sys::fd;
use crate::sys::pipe;
use crate::sys::spawn::Source;
use rustix::fd::{AsRawFd, OwnedFd, RawFd};
use rustix::io::Errno;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// `/dev/null` opened once for each access mode, and handed to each child
/// that asks for it: a dup costs a fraction of a path lookup, and a batch of
/// `null` fds is the common case (a bench run has three).
#[derive(Default)]
pub(crate) struct NullFds(std::cell::RefCell<Vec<(i32, Arc<OwnedFd>)>>);

/// With no floor (`Solo`), a held `/dev/null` below this number is installed
/// as it is, without a `dup` and a `close` per fd; otherwise a duplicate is.
/// The child copies every fd below the highest it needs
/// (`CLOSE_RANGE_UNSHARE`), so a source up at the agent's floor, or anywhere
/// high, would cost each spawn more than the duplicate does; the agent, which
/// has a floor, always duplicates.
const SHARED_BELOW: RawFd = 64;

impl NullFds {
    /// An fd on `/dev/null` as `open(2)` with `oflags` would give it: the
    /// held one itself where [`SHARED_BELOW`] allows, else a duplicate.
    pub(super) fn get(&self, oflags: i32, floor: RawFd) -> Result<Source, Errno> {
        let open = || fd::open(Path::new("/dev/null"), oflags, 0o666);
        if oflags & libc::O_EXCL != 0 {
            // O_EXCL with O_CREAT fails on an existing file: say so each time.
            return open().map(Source::Owned);
        }
        // Only the access mode and O_APPEND stay with an open /dev/null.
        let key = oflags & (libc::O_ACCMODE | libc::O_APPEND);
        let mut held = self.0.borrow_mut();
        let f = match held.iter().find(|(k, _)| *k == key) {
            Some((_, f)) => f.clone(),
            None => {
                let f = Arc::new(fd::move_high(open()?, floor));
                held.push((key, f.clone()));
                f
            }
        };
        if floor <= 0 && f.as_raw_fd() < SHARED_BELOW {
            return Ok(Source::Shared(f));
        }
        fd::dup_cloexec_raw(f.as_raw_fd(), 0).map(Source::Owned)
    }
}

/// Pipes between procs of one request, keyed by (writer proc id, writer fd).
pub(crate) type RequestPipes = HashMap<(ProcId, RawFd), (Option<OwnedFd>, Option<OwnedFd>)>;

/// Creates the pipes for every `pipe-write` of a request.
pub(crate) fn request_pipes(input: &spec::Input) -> Result<RequestPipes, (ProcId, String)> {
    let mut pipes = RequestPipes::new();
    for (id, ps) in input.specs.iter() {
        for (name, fs) in &ps.fds {
            if matches!(fs, FdSpec::PipeWrite) {
                let fd = spec::parse_fd_name(name).map_err(|e| (id.clone(), e.to_string()))?;
                let (r, w) =
                    pipe::pipe().map_err(|e| (id.clone(), format!("pipe creation failed: {e}")))?;
                pipes.insert((id.clone(), fd), (Some(r), Some(w)));
            }
        }
    }
    Ok(pipes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// The fd `nulls` holds for its first access mode.
    fn held(nulls: &NullFds) -> RawFd {
        nulls.0.borrow()[0].1.as_raw_fd()
    }

    #[test]
    fn a_low_dev_null_is_shared_and_a_high_one_duplicated() {
        // With no floor, /dev/null opens at the lowest free number: low,
        // unless other tests hold many fds just then.
        let low = NullFds::default();
        let first = low.get(libc::O_RDONLY, 0).unwrap();
        let again = low.get(libc::O_RDONLY, 0).unwrap();
        if held(&low) < SHARED_BELOW {
            let (Source::Shared(a), Source::Shared(b)) = (first, again) else {
                panic!("a /dev/null at a low number is installed as it is");
            };
            // One open file, no duplicate.
            assert!(Arc::ptr_eq(&a, &b));
        } else {
            eprintln!(
                "skipped the shared case: /dev/null opened at {}",
                held(&low)
            );
        }

        // With a floor (the agent's), each ask is a duplicate of its own,
        // wherever the held one is, so the child's fd window stays small.
        let floor = fd::high_floor().max(1);
        let high = NullFds::default();
        let a = high.get(libc::O_RDONLY, floor).unwrap();
        let b = high.get(libc::O_RDONLY, floor).unwrap();
        let (Source::Owned(a), Source::Owned(b)) = (a, b) else {
            panic!("a /dev/null held at {} is duplicated", held(&high));
        };
        assert_ne!(a.as_raw_fd(), b.as_raw_fd());
        assert_ne!(a.as_raw_fd(), held(&high));
    }
}
