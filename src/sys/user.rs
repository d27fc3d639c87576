//! User and group lookups for the `user`/`group` spec fields: `getpwnam_r`,
//! `getpwuid_r`, `getgrnam_r`, `getgrgid_r` and `getgrouplist`.
//!
//! These run in the agent (the parent), never in a vfork child: NSS may load
//! modules, take locks and allocate. The child gets only the resulting numbers.
//!
//! # References
//! - [getpwnam_r(3)](https://man7.org/linux/man-pages/man3/getpwnam_r.3.html)
//! - [getgrnam_r(3)](https://man7.org/linux/man-pages/man3/getgrnam_r.3.html)
//! - [getgrouplist(3)](https://man7.org/linux/man-pages/man3/getgrouplist.3.html)

use rustix::io::Errno;
use std::ffi::{CStr, CString};

/// A passwd entry, the fields chaperone uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passwd {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub dir: String,
    /// Login shell.
    pub shell: String,
}

/// The largest buffer a lookup grows to before giving up with `ERANGE`.
const MAX_BUF: usize = 1 << 20;

/// Turns a NUL-terminated C string from a lookup buffer into a `String` (lossy).
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that stays valid for the call.
unsafe fn c_str(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Runs a reentrant NSS lookup (`getpwnam_r`, `getgrnam_r`, …) with a buffer
/// that grows on `ERANGE`, and converts the entry while the buffer (which its
/// string fields point into) is still alive. `Ok(None)`: not found.
fn lookup_r<E, R>(
    mut call: impl FnMut(*mut E, *mut libc::c_char, usize, *mut *mut E) -> libc::c_int,
    convert: impl FnOnce(&E) -> R,
) -> Result<Option<R>, Errno> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let mut entry = core::mem::MaybeUninit::<E>::zeroed();
        let mut result: *mut E = core::ptr::null_mut();
        let rc = call(entry.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == libc::ERANGE && buf.len() < MAX_BUF {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(Errno::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        // SAFETY: on success with a non-null result, the entry was filled in.
        let entry = unsafe { entry.assume_init() };
        return Ok(Some(convert(&entry)));
    }
}

/// Runs a `getpw*_r` call and copies out the fields chaperone uses.
fn passwd_lookup(
    call: impl FnMut(*mut libc::passwd, *mut libc::c_char, usize, *mut *mut libc::passwd) -> libc::c_int,
) -> Result<Option<Passwd>, Errno> {
    lookup_r(call, |pw: &libc::passwd| {
        // SAFETY: the string fields point into the lookup buffer, alive while
        // `convert` runs (one unsafe call per block, each with the same reason).
        let name = unsafe { c_str(pw.pw_name) };
        // SAFETY: as above.
        let dir = unsafe { c_str(pw.pw_dir) };
        // SAFETY: as above.
        let shell = unsafe { c_str(pw.pw_shell) };
        Passwd {
            name,
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            dir,
            shell,
        }
    })
}

/// Looks up a user by name. `Ok(None)`: no such user.
///
/// # Errors
/// A lookup failure other than "not found" (e.g. `EIO` from NSS); `EINVAL` for a
/// name with a NUL byte.
pub fn user_by_name(name: &str) -> Result<Option<Passwd>, Errno> {
    let cname = CString::new(name).map_err(|_| Errno::INVAL)?;
    passwd_lookup(|pw, buf, len, result| {
        // SAFETY: every pointer is valid for the call: `cname` is NUL-terminated,
        // `pw` and `result` point to locals, `buf` has `len` bytes.
        unsafe { libc::getpwnam_r(cname.as_ptr(), pw, buf, len, result) }
    })
}

/// Looks up a user by uid. `Ok(None)`: no passwd entry for it.
///
/// # Errors
/// A lookup failure other than "not found".
pub fn user_by_uid(uid: u32) -> Result<Option<Passwd>, Errno> {
    passwd_lookup(|pw, buf, len, result| {
        // SAFETY: `pw` and `result` point to locals, `buf` has `len` bytes.
        unsafe { libc::getpwuid_r(uid, pw, buf, len, result) }
    })
}

/// Looks up a group's id by name. `Ok(None)`: no such group.
///
/// # Errors
/// A lookup failure other than "not found"; `EINVAL` for a name with a NUL byte.
pub fn group_by_name(name: &str) -> Result<Option<u32>, Errno> {
    let cname = CString::new(name).map_err(|_| Errno::INVAL)?;
    lookup_r(
        |gr, buf, len, result| {
            // SAFETY: every pointer is valid for the call: `cname` is
            // NUL-terminated, `gr` and `result` point to locals, `buf` has `len`
            // bytes.
            unsafe { libc::getgrnam_r(cname.as_ptr(), gr, buf, len, result) }
        },
        |gr: &libc::group| gr.gr_gid,
    )
}

/// Looks up a group's name by gid. `Ok(None)`: no group entry for it.
///
/// # Errors
/// A lookup failure other than "not found".
#[cfg(feature = "cli")] // the agent protocol's Register
pub fn group_name_by_gid(gid: u32) -> Result<Option<String>, Errno> {
    lookup_r(
        |gr, buf, len, result| {
            // SAFETY: `gr` and `result` point to locals, `buf` has `len` bytes.
            unsafe { libc::getgrgid_r(gid, gr, buf, len, result) }
        },
        // SAFETY: `gr_name` points into the lookup buffer, alive while the
        // conversion runs.
        |gr: &libc::group| unsafe { c_str(gr.gr_name) },
    )
}

/// The supplementary groups of user `name` (as `initgroups` would set them),
/// including `gid`.
///
/// # Errors
/// `EINVAL` for a name with a NUL byte; `ERANGE` if the list keeps growing.
pub fn group_list(name: &str, gid: u32) -> Result<Vec<u32>, Errno> {
    let cname = CString::new(name).map_err(|_| Errno::INVAL)?;
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..8 {
        let mut n = libc::c_int::try_from(groups.len()).map_err(|_| Errno::RANGE)?;
        // SAFETY: `cname` is NUL-terminated; `groups` has room for `n` entries.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).map_err(|_| Errno::RANGE)?;
        if rc >= 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        // Too small: `n` is the size needed.
        groups.resize(n.max(groups.len() * 2), 0);
    }
    Err(Errno::RANGE)
}
