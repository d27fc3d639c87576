//! Fds that plans hand out beyond their own opens: `/dev/null`, opened once
//! and duplicated ([`NullFds`]), and the pipes between processes of one start
//! request ([`RequestPipes`]).

use crate::spec::{self, FdSpec, ProcId};
use crate::sys::fd;
use crate::sys::pipe;
use rustix::fd::{AsRawFd, OwnedFd, RawFd};
use rustix::io::Errno;
use std::collections::HashMap;
use std::path::Path;

/// `/dev/null` opened once for each access mode, and a duplicate handed to
/// each child that asks for it: a dup costs a fraction of a path lookup, and
/// a batch of `null` fds is the common case (a bench run has three).
#[derive(Default)]
pub(crate) struct NullFds(std::cell::RefCell<Vec<(i32, OwnedFd)>>);

impl NullFds {
    /// An fd on `/dev/null` as `open(2)` with `oflags` would give it.
    pub(super) fn get(&self, oflags: i32, floor: RawFd) -> Result<OwnedFd, Errno> {
        let open = || fd::open(Path::new("/dev/null"), oflags, 0o666);
        if oflags & libc::O_EXCL != 0 {
            // O_EXCL with O_CREAT fails on an existing file: say so each time.
            return open();
        }
        // Only the access mode and O_APPEND stay with an open /dev/null.
        let key = oflags & (libc::O_ACCMODE | libc::O_APPEND);
        let mut held = self.0.borrow_mut();
        let raw = match held.iter().find(|(k, _)| *k == key) {
            Some((_, f)) => f.as_raw_fd(),
            None => {
                let f = fd::move_high(open()?, floor);
                let raw = f.as_raw_fd();
                held.push((key, f));
                raw
            }
        };
        fd::dup_cloexec_raw(raw, 0)
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
