//! `/proc/<pid>/io`, parsed into the result's `proc_io` extension.
//!
//! The file is `name: value` lines (proc(5)). All seven counters are required;
//! unknown lines (a later kernel may add some) are ignored. The file is still
//! readable for a zombie, so the exit path reads it before reaping.

use serde::{Deserialize, Serialize};

use super::ParseError;

/// I/O counters of a process: its threads' own plus those of the descendants
/// it has reaped (the kernel folds a reaped child's counts into its parent's,
/// as it does for rusage); descendants still running are not included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcIo {
    /// Bytes passed to `read`-like syscalls (including pipes and page cache hits).
    pub rchar: u64,
    /// Bytes passed to `write`-like syscalls.
    pub wchar: u64,
    /// Read syscalls.
    pub syscr: u64,
    /// Write syscalls.
    pub syscw: u64,
    /// Bytes the process caused to be fetched from storage.
    pub read_bytes: u64,
    /// Bytes the process caused to be sent to storage.
    pub write_bytes: u64,
    /// Bytes of `write_bytes` not written after all (truncated page cache).
    pub cancelled_write_bytes: u64,
}

/// Parses the text of `/proc/<pid>/io`. Never panics.
///
/// # Errors
///
/// [`ParseError::Missing`] naming the first absent counter, or
/// [`ParseError::Invalid`] for a value that is not a `u64`.
pub fn parse_io(text: &str) -> Result<ProcIo, ParseError> {
    const NAMES: [&str; 7] = [
        "rchar",
        "wchar",
        "syscr",
        "syscw",
        "read_bytes",
        "write_bytes",
        "cancelled_write_bytes",
    ];
    let mut values: [Option<u64>; 7] = [None; 7];
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Some(i) = NAMES.iter().position(|n| *n == name.trim()) else {
            continue;
        };
        let value = value.trim();
        let v = value
            .parse()
            .map_err(|_| ParseError::invalid(NAMES.get(i).copied().unwrap_or(""), value))?;
        if let Some(slot) = values.get_mut(i) {
            *slot = Some(v);
        }
    }
    let mut get = |i: usize| -> Result<u64, ParseError> {
        values
            .get_mut(i)
            .and_then(Option::take)
            .ok_or(ParseError::Missing(NAMES.get(i).copied().unwrap_or("")))
    };
    Ok(ProcIo {
        rchar: get(0)?,
        wchar: get(1)?,
        syscr: get(2)?,
        syscw: get(3)?,
        read_bytes: get(4)?,
        write_bytes: get(5)?,
        cancelled_write_bytes: get(6)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REAL: &str = "rchar: 2012\nwchar: 323\nsyscr: 7\nsyscw: 3\nread_bytes: 4096\n\
                        write_bytes: 8192\ncancelled_write_bytes: 0\n";

    #[test]
    fn real_file() {
        let io = parse_io(REAL).unwrap();
        assert_eq!(
            io,
            ProcIo {
                rchar: 2012,
                wchar: 323,
                syscr: 7,
                syscw: 3,
                read_bytes: 4096,
                write_bytes: 8192,
                cancelled_write_bytes: 0,
            }
        );
    }

    #[test]
    fn unknown_lines_ignored_order_free() {
        let text = "future: 9\ncancelled_write_bytes: 1\nwrite_bytes: 2\nread_bytes: 3\n\
                    syscw: 4\nsyscr: 5\nwchar: 6\nrchar: 7\n";
        let io = parse_io(text).unwrap();
        assert_eq!((io.rchar, io.cancelled_write_bytes), (7, 1));
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(parse_io(""), Err(ParseError::Missing("rchar")));
        let missing = REAL.replace("syscw: 3\n", "");
        assert_eq!(parse_io(&missing), Err(ParseError::Missing("syscw")));
        let bad = REAL.replace("wchar: 323", "wchar: -1");
        assert_eq!(parse_io(&bad), Err(ParseError::invalid("wchar", "-1")));
    }

    #[test]
    fn self_io() {
        let mut buf = Vec::new();
        super::super::read_proc_file(std::process::id() as i32, "io", &mut buf).unwrap();
        let io = parse_io(&String::from_utf8_lossy(&buf)).unwrap();
        assert!(
            io.rchar > 0,
            "this test binary has read its own files: {io:?}"
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = parse_io(&s);
        }
    }
}
