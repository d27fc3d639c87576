//! Process metrics read from `/proc`, in Procstar's result shapes and units.
//!
//! * [`procstat`] parses `/proc/<pid>/stat` into [`ProcStat`] (the result's
//!   `proc_stat`), with times in seconds, sizes in bytes, signal masks as
//!   names and `starttime` as an RFC 3339 string.
//! * [`statm`] parses `/proc/<pid>/statm` into [`ProcStatm`] (the result's
//!   `proc_statm`), in bytes.
//! * [`procio`] parses `/proc/<pid>/io` into [`ProcIo`] (the result's `proc_io`
//!   extension).
//! * [`perf`] opens, reads and reports per-process perf counters (the
//!   result's `perf` extension); its syscalls live in `crate::sys::perf`.
//! * [`read_proc_file`] reads one such file into a reusable buffer, and
//!   [`format_rfc3339`] formats a Unix time the way Procstar does.
//!
//! Parsing never panics on malformed input: it returns a [`ParseError`] that
//! names the offending field.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod perf;
pub mod procio;
pub mod procstat;
pub mod statm;

pub use procio::{ProcIo, parse_io};
pub use procstat::{ProcStat, StatContext, parse_stat};
pub use statm::{ProcStatm, parse_statm};

use std::io;

/// An error parsing a `/proc` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A field was absent (the text ended early, or a delimiter was missing).
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field was present but its text was not a valid value.
    #[error("invalid value for field `{field}`: {value:?}")]
    Invalid {
        /// The field's name, as in proc(5).
        field: &'static str,
        /// The offending text (at most 64 bytes of it).
        value: String,
    },
}

impl ParseError {
    /// Builds [`ParseError::Invalid`], keeping at most 64 bytes of `value`.
    pub(crate) fn invalid(field: &'static str, value: &str) -> Self {
        let mut end = value.len().min(64);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        ParseError::Invalid {
            field,
            value: value.get(..end).unwrap_or_default().to_owned(),
        }
    }
}

/// Reads `/proc/<pid>/<name>` into `buf`, replacing its contents.
///
/// Does one `open` and then `read`s until end of file, appending into `buf`'s
/// spare capacity. The only allocation is `buf` growing (reuse the buffer to
/// avoid even that); the path is built on the stack.
///
/// # Errors
///
/// The `open` or `read` error (`NotFound` once the process is reaped), or
/// `InvalidInput` if the path exceeds 255 bytes.
pub fn read_proc_file(pid: i32, name: &str, buf: &mut Vec<u8>) -> io::Result<()> {
    read_proc(pid, name, buf, false)
}

/// As [`read_proc_file`], for a file the kernel writes whole at the first
/// `read` (`stat`, `statm`, `io`: one record, well under a page): a read
/// that leaves room in `buf` has returned all of it, and the read that would
/// only say "end of file" is not made. That read is not free: a zombie's
/// `stat` took 11.6 µs with it and 8.3 µs without (2,000 zombies, C), and
/// the agent reads `stat` and `io` at every exit.
///
/// # Errors
///
/// As [`read_proc_file`].
pub fn read_proc_record(pid: i32, name: &str, buf: &mut Vec<u8>) -> io::Result<()> {
    read_proc(pid, name, buf, true)
}

fn read_proc(pid: i32, name: &str, buf: &mut Vec<u8>, whole: bool) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags, open};
    use std::io::Write;

    let mut path_buf = [0u8; 256];
    let mut cursor = io::Cursor::new(&mut path_buf[..]);
    write!(cursor, "/proc/{pid}/{name}")
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "proc path too long"))?;
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    let path = path_buf
        .get(..len)
        .and_then(|p| std::str::from_utf8(p).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad proc path"))?;

    let fd = open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    buf.clear();
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        let room = buf.capacity() - buf.len();
        match rustix::io::read(&fd, rustix::buffer::spare_capacity(buf)) {
            Ok(0) => return Ok(()),
            Ok(n) if whole && n < room => return Ok(()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Formats a Unix time in nanoseconds as RFC 3339 with nine fractional digits
/// and a `+00:00` offset, e.g. `"1970-01-01T00:00:00.000000000+00:00"`.
///
/// This is the format of Procstar's `times` and `proc_stat.starttime`. Times
/// before 1970 work (proleptic Gregorian calendar); it never panics.
pub fn format_rfc3339(unix_ns: i128) -> String {
    const NS_PER_SEC: i128 = 1_000_000_000;
    let secs = unix_ns.div_euclid(NS_PER_SEC);
    let nanos = unix_ns.rem_euclid(NS_PER_SEC);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, mi, sec) = (sod / 3600, sod % 3600 / 60, sod % 60);
    let y = match u16::try_from(year) {
        Ok(y) if y <= 9999 => u64::from(y),
        _ => {
            return format!(
                "{year:04}-{month:02}-{day:02}T{h:02}:{mi:02}:{sec:02}.{nanos:09}+00:00"
            );
        }
    };
    // Years 0 to 9999, digit by digit: results carry four of these each, and
    // `format!` of i128s was most of turning 10,000 results into JSON.
    let mut b = *b"0000-00-00T00:00:00.000000000+00:00";
    // Each field is in range (month 1-12, ..., nanos below 10^9): no sign.
    let digits = |v: i128| u64::try_from(v).unwrap_or(0);
    let fields = [
        (0..4, y),
        (5..7, digits(month)),
        (8..10, digits(day)),
        (11..13, digits(h)),
        (14..16, digits(mi)),
        (17..19, digits(sec)),
        (20..29, digits(nanos)),
    ];
    for (at, v) in fields {
        if let Some(dst) = b.get_mut(at) {
            put_digits(dst, v);
        }
    }
    b.iter().map(|&c| char::from(c)).collect()
}

/// Writes `v`'s last `dst.len()` decimal digits into `dst`, zero-padded.
fn put_digits(dst: &mut [u8], mut v: u64) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Nanoseconds since the Unix epoch of a time as [`format_rfc3339`] writes it
/// (`YYYY-MM-DDTHH:MM:SS.fffffffff+00:00`); `None` for any other text.
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() != 35
        || s.get(29..) != Some("+00:00")
        || b.get(10) != Some(&b'T')
        || b.get(19) != Some(&b'.')
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i128> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec, ns) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..29)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil, the inverse of `civil_from_days`.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if mo > 2 { mo - 3 } else { mo + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000_000) + ns)
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Howard Hinnant's `civil_from_days` algorithm, in 64-bit arithmetic (the
/// 128-bit divisions it was written in cost more than the rest of a
/// formatted time): the calendar repeats every 146,097 days (400 years), so
/// any day count is a whole number of such eras plus one day within them.
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    const ERA_DAYS: i128 = 146_097;
    let (eras, rest) = (days.div_euclid(ERA_DAYS), days.rem_euclid(ERA_DAYS));
    // `rest` is in [0, 146096].
    let (y, m, d) = civil_from_era_day(i64::try_from(rest).unwrap_or(0));
    (i128::from(y) + eras * 400, i128::from(m), i128::from(d))
}

/// [`civil_from_days`] for a day in the first era from 1970 (0 to 146,096).
fn civil_from_era_day(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {

    #[test]
    fn rfc3339_parses_back_what_it_formats() {
        for ns in [
            0i128,
            1,
            1_764_641_213_974_465_128,
            951_782_400_123_456_789,
            -1,
        ] {
            let s = format_rfc3339(ns);
            assert_eq!(parse_rfc3339(&s), Some(ns), "{s}");
        }
        assert_eq!(parse_rfc3339("2026-12-02T04:06:53.974465128Z"), None);
        assert_eq!(parse_rfc3339("2026-13-02T04:06:53.974465128+00:00"), None);
        assert_eq!(parse_rfc3339("2026-12-02T04:06:5x.974465128+00:00"), None);
    }

    use super::*;
    use proptest::prelude::*;

    const S: i128 = 1_000_000_000;

    #[test]
    fn rfc3339_known_values() {
        // Expected strings checked with Python's datetime.fromtimestamp(s, timezone.utc).
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000000+00:00");
        assert_eq!(
            format_rfc3339(1_795_313_883_869_552_201),
            "2026-11-22T02:18:03.869552201+00:00"
        );
        assert_eq!(
            format_rfc3339(1_795_312_683_869_552_201),
            "2026-11-22T01:58:03.869552201+00:00"
        );
        assert_eq!(
            format_rfc3339(951_782_400 * S),
            "2000-02-29T00:00:00.000000000+00:00"
        );
        assert_eq!(
            format_rfc3339(1_709_210_096 * S + 5),
            "2024-02-29T12:34:56.000000005+00:00"
        );
        assert_eq!(
            format_rfc3339(4_102_444_800 * S),
            "2100-01-01T00:00:00.000000000+00:00"
        );
        assert_eq!(
            format_rfc3339(253_402_300_799 * S + 999_999_999),
            "9999-12-31T23:59:59.999999999+00:00"
        );
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999999+00:00");
        // The first instant written digit by digit, and outside years
        // 0-9999, the general path.
        assert_eq!(
            format_rfc3339(-62_167_219_200 * S),
            "0000-01-01T00:00:00.000000000+00:00"
        );
        assert_eq!(
            format_rfc3339(253_402_300_800 * S),
            "10000-01-01T00:00:00.000000000+00:00"
        );
        assert_eq!(
            format_rfc3339(-62_167_219_200 * S - 1),
            "-001-12-31T23:59:59.999999999+00:00"
        );
    }

    /// The digit-by-digit text is what `format!` makes of the same fields,
    /// and the calendar what the 128-bit algorithm gave, over days from
    /// year -1000 to 12000 and times within them.
    #[test]
    fn rfc3339_fast_path_matches_the_general_one() {
        fn reference(unix_ns: i128) -> String {
            let secs = unix_ns.div_euclid(1_000_000_000);
            let nanos = unix_ns.rem_euclid(1_000_000_000);
            let days = secs.div_euclid(86_400);
            let sod = secs.rem_euclid(86_400);
            // Hinnant's algorithm as first written, all in i128.
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z.rem_euclid(146_097);
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let day = doy - (153 * mp + 2) / 5 + 1;
            let month = if mp < 10 { mp + 3 } else { mp - 9 };
            let year = yoe + era * 400 + i128::from(month <= 2);
            format!(
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}+00:00",
                sod / 3600,
                sod % 3600 / 60,
                sod % 60
            )
        }
        let mut ns: i128 = -93_000_000_000_000_000_000; // year -1000 or so
        let step: i128 = 86_400 * S * 13 + 3_600 * S * 5 + 61 * S + 123_456_789;
        let mut n = 0;
        while ns < 316_000_000_000 * S {
            assert_eq!(format_rfc3339(ns), reference(ns), "{ns}");
            assert_eq!(
                format_rfc3339(ns + 86_399_999_999_999),
                reference(ns + 86_399_999_999_999)
            );
            ns += step;
            n += 1;
        }
        assert!(n > 300_000, "{n} days tried");
        for extreme in [
            i128::MIN,
            i128::MAX,
            i128::MIN / 2,
            i128::MAX / 2,
            i128::from(i64::MIN),
            i128::from(i64::MAX),
        ] {
            assert_eq!(format_rfc3339(extreme), reference(extreme));
        }
    }

    #[test]
    fn read_self_stat() {
        let mut buf = Vec::new();
        read_proc_file(std::process::id() as i32, "stat", &mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with(&format!("{} (", std::process::id())));
        assert!(text.ends_with('\n'));
        // Reuse replaces contents.
        read_proc_file(std::process::id() as i32, "statm", &mut buf).unwrap();
        assert!(!String::from_utf8_lossy(&buf).contains('('));
    }

    /// A record file read once gives the same bytes as read to end of file,
    /// whatever the buffer held before (a full one grows; a big one is
    /// cleared).
    #[test]
    fn read_record_matches_read_to_the_end() {
        let pid = std::process::id() as i32;
        for name in ["statm", "io", "stat"] {
            let (mut whole, mut once) = (Vec::new(), vec![b'x'; 600]);
            read_proc_file(pid, name, &mut whole).unwrap();
            read_proc_record(pid, name, &mut once).unwrap();
            // stat's times and statm's counts may move between the reads;
            // the shape may not.
            let fields = |b: &[u8]| String::from_utf8_lossy(b).split_whitespace().count();
            assert_eq!(fields(&whole), fields(&once), "{name}");
            assert_eq!(once.last(), Some(&b'\n'), "{name}");
        }
        let mut small = Vec::with_capacity(8);
        read_proc_record(pid, "stat", &mut small).unwrap();
        assert!(small.starts_with(format!("{pid} (").as_bytes()));
    }

    #[test]
    fn read_large_file() {
        // smaps is always far larger than one read chunk.
        let pid = std::process::id() as i32;
        let mut buf = Vec::new();
        read_proc_file(pid, "smaps", &mut buf).unwrap();
        assert!(buf.len() > 8192, "{}", buf.len());
        assert_eq!(buf.last(), Some(&b'\n'));
        read_proc_file(pid, "cmdline", &mut buf).unwrap();
        assert_eq!(buf, std::fs::read(format!("/proc/{pid}/cmdline")).unwrap());
    }

    #[test]
    fn read_missing() {
        let mut buf = Vec::new();
        let err = read_proc_file(std::process::id() as i32, "no-such-file", &mut buf);
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::NotFound);
        let long = "x".repeat(300);
        let err = read_proc_file(1, &long, &mut buf);
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn invalid_truncates() {
        let long = "é".repeat(100);
        match ParseError::invalid("f", &long) {
            ParseError::Invalid { value, .. } => assert!(value.len() <= 64),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn rfc3339_never_panics(ns in any::<i128>()) {
            let _ = format_rfc3339(ns);
        }

        #[test]
        fn rfc3339_fields_in_range(ns in -(1i128 << 70)..(1i128 << 70)) {
            let s = format_rfc3339(ns);
            prop_assert!(s.ends_with("+00:00"));
            let t = s.rfind('T').unwrap();
            let time = &s[t + 1..];
            let h: u32 = time[0..2].parse().unwrap();
            let m: u32 = time[3..5].parse().unwrap();
            let sec: u32 = time[6..8].parse().unwrap();
            prop_assert!(h < 24 && m < 60 && sec < 60);
        }
    }
}
