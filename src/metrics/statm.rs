//! `/proc/<pid>/statm`, parsed into Procstar's `proc_statm` shape.
//!
//! The file holds seven page counts: `size resident shared text lib data dt`.
//! Procstar reports five of them, converted to bytes.

use serde::{Deserialize, Serialize};

use super::ParseError;

/// Memory usage from `/proc/<pid>/statm`, all in bytes (pages × page size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcStatm {
    /// Total program size (same as `VmSize`).
    pub size: u64,
    /// Resident set size (same as `VmRSS`).
    pub resident: u64,
    /// Resident shared pages, i.e. file-backed and shared memory.
    pub shared: u64,
    /// Text (code).
    pub text: u64,
    /// Data plus stack.
    pub data: u64,
}

/// Parses the text of `/proc/<pid>/statm`, converting pages to bytes with
/// `page_size`.
///
/// The first six fields are required (`lib`, the fifth, is skipped); extra
/// fields are ignored. Never panics.
///
/// # Errors
///
/// [`ParseError::Missing`] or [`ParseError::Invalid`] naming the first bad
/// field.
pub fn parse_statm(text: &str, page_size: u64) -> Result<ProcStatm, ParseError> {
    let mut it = text.split_ascii_whitespace();
    let mut next = |name: &'static str| -> Result<u64, ParseError> {
        let s = it.next().ok_or(ParseError::Missing(name))?;
        let pages: u64 = s.parse().map_err(|_| ParseError::invalid(name, s))?;
        Ok(pages.saturating_mul(page_size))
    };
    let size = next("size")?;
    let resident = next("resident")?;
    let shared = next("shared")?;
    let text = next("text")?;
    next("lib")?;
    let data = next("data")?;
    Ok(ProcStatm {
        size,
        resident,
        shared,
        text,
        data,
    })
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn real_line() {
        let s = parse_statm("2206 456 412 5 0 120 0\n", 4096).unwrap();
        assert_eq!(
            s,
            ProcStatm {
                size: 2206 * 4096,
                resident: 456 * 4096,
                shared: 412 * 4096,
                text: 5 * 4096,
                data: 120 * 4096,
            }
        );
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            serde_json::json!({
                "size": 9035776, "resident": 1867776, "shared": 1687552,
                "text": 20480, "data": 491520
            })
        );
    }

    #[test]
    fn self_statm() {
        let mut buf = Vec::new();
        super::super::read_proc_file(std::process::id() as i32, "statm", &mut buf).unwrap();
        let s = parse_statm(&String::from_utf8_lossy(&buf), 4096).unwrap();
        assert!(s.size >= s.resident && s.resident > 0);
    }

    #[test]
    fn errors() {
        assert_eq!(parse_statm("", 4096), Err(ParseError::Missing("size")));
        assert_eq!(
            parse_statm("1 2 3 4 5", 4096),
            Err(ParseError::Missing("data"))
        );
        assert_eq!(
            parse_statm("1 2 -3 4 5 6 7", 4096),
            Err(ParseError::invalid("shared", "-3"))
        );
        assert_eq!(
            parse_statm("18446744073709551615 0 0 0 0 0 0", 4096)
                .unwrap()
                .size,
            u64::MAX
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in ".*", page in any::<u64>()) {
            let _ = parse_statm(&s, page);
        }
    }
}
