//! Signal names and numbers, using the Linux x86_64 numbering.
//!
//! Standard signals are 1..=31. Signals 32 and 33 are reserved by glibc for
//! its threading implementation and are named `"SIG32"` and `"SIG33"` here.
//! The realtime signals 34..=64 are named `"SIGRTMIN"`, `"SIGRTMIN+1"`, ...,
//! `"SIGRTMIN+29"` and `"SIGRTMAX"`.
//!
//! Signal sets as the kernel shows them (`SigIgn` in `/proc/<pid>/status`, the
//! `signal`/`blocked`/`sigignore`/`sigcatch` fields of `/proc/<pid>/stat`) put
//! signal *n* at bit *n − 1*. [`sigset_names`] follows that layout; Procstar
//! labelled bit *n* as signal *n*, which was off by one.

/// The highest signal number on Linux (`SIGRTMAX` as the kernel sees it).
pub const MAX_SIGNUM: i32 = 64;

/// The kernel's lowest realtime signal number as glibc exposes it
/// (`SIGRTMIN`; 32 and 33 are reserved by glibc).
pub const SIGRTMIN: i32 = 34;

/// Names indexed by `signum - 1`, for 1..=64.
static NAMES: [&str; 64] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
    "SIG32",
    "SIG33",
    "SIGRTMIN",
    "SIGRTMIN+1",
    "SIGRTMIN+2",
    "SIGRTMIN+3",
    "SIGRTMIN+4",
    "SIGRTMIN+5",
    "SIGRTMIN+6",
    "SIGRTMIN+7",
    "SIGRTMIN+8",
    "SIGRTMIN+9",
    "SIGRTMIN+10",
    "SIGRTMIN+11",
    "SIGRTMIN+12",
    "SIGRTMIN+13",
    "SIGRTMIN+14",
    "SIGRTMIN+15",
    "SIGRTMIN+16",
    "SIGRTMIN+17",
    "SIGRTMIN+18",
    "SIGRTMIN+19",
    "SIGRTMIN+20",
    "SIGRTMIN+21",
    "SIGRTMIN+22",
    "SIGRTMIN+23",
    "SIGRTMIN+24",
    "SIGRTMIN+25",
    "SIGRTMIN+26",
    "SIGRTMIN+27",
    "SIGRTMIN+28",
    "SIGRTMIN+29",
    "SIGRTMAX",
];

/// Alternative names accepted by [`parse_signal`] (without the `SIG` prefix).
const ALIASES: [(&str, i32); 4] = [("IOT", 6), ("CLD", 17), ("POLL", 29), ("UNUSED", 31)];

/// Returns the name of signal `signum` (e.g. `"SIGTERM"` for 15), or `None`
/// if `signum` is outside 1..=64.
#[must_use]
pub fn signal_name(signum: i32) -> Option<&'static str> {
    let index = usize::try_from(signum.checked_sub(1)?).ok()?;
    NAMES.get(index).copied()
}

/// Parses a signal given by name or number.
///
/// Accepts, case-insensitively, names with or without the `SIG` prefix
/// (`"SIGTERM"`, `"TERM"`, `"sigterm"`), the aliases `SIGIOT`, `SIGCLD`,
/// `SIGPOLL`, realtime names (`"SIGRTMIN"`, `"SIGRTMIN+3"`, `"SIGRTMAX-2"`,
/// `"SIGRTMAX"`, `"SIG32"`), and decimal numbers (`"15"`). Surrounding
/// whitespace is ignored. Returns `None` unless the result is in 1..=64.
#[must_use]
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i32 = s.parse().ok()?;
        return (1..=MAX_SIGNUM).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if bare.is_empty() {
        return None;
    }
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        let offset = parse_offset(rest, '+')?;
        let n = SIGRTMIN.checked_add(offset)?;
        return (n <= MAX_SIGNUM).then_some(n);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        let offset = parse_offset(rest, '-')?;
        let n = MAX_SIGNUM.checked_sub(offset)?;
        return (n >= SIGRTMIN).then_some(n);
    }
    if let Some(&(_, n)) = ALIASES.iter().find(|(name, _)| *name == bare) {
        return Some(n);
    }
    NAMES
        .iter()
        .position(|name| name.get(3..) == Some(bare))
        .and_then(|i| i32::try_from(i).ok())
        .map(|i| i + 1)
}

/// Parses the `"+N"`/`"-N"` suffix of a realtime signal name; empty means 0.
fn parse_offset(rest: &str, sign: char) -> Option<i32> {
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix(sign)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Names the signals in a kernel signal mask, in increasing signal order.
///
/// Bit *n − 1* set means signal *n* is in the set, as in `/proc/<pid>/status`
/// (`SigIgn` etc.) and the mask fields of `/proc/<pid>/stat`. For example
/// `0x1000` is `["SIGPIPE"]`.
#[must_use]
pub fn sigset_names(mask: u64) -> Vec<String> {
    (0..64u32)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .filter_map(|bit| i32::try_from(bit + 1).ok())
        .filter_map(signal_name)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn standard_names() {
        assert_eq!(signal_name(1), Some("SIGHUP"));
        assert_eq!(signal_name(9), Some("SIGKILL"));
        assert_eq!(signal_name(13), Some("SIGPIPE"));
        assert_eq!(signal_name(15), Some("SIGTERM"));
        assert_eq!(signal_name(17), Some("SIGCHLD"));
        assert_eq!(signal_name(31), Some("SIGSYS"));
        assert_eq!(signal_name(32), Some("SIG32"));
        assert_eq!(signal_name(33), Some("SIG33"));
        assert_eq!(signal_name(34), Some("SIGRTMIN"));
        assert_eq!(signal_name(35), Some("SIGRTMIN+1"));
        assert_eq!(signal_name(63), Some("SIGRTMIN+29"));
        assert_eq!(signal_name(64), Some("SIGRTMAX"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(65), None);
        assert_eq!(signal_name(-1), None);
        assert_eq!(signal_name(i32::MIN), None);
    }

    #[test]
    fn names_match_libc() {
        for (n, name) in [
            (libc::SIGHUP, "SIGHUP"),
            (libc::SIGUSR1, "SIGUSR1"),
            (libc::SIGUSR2, "SIGUSR2"),
            (libc::SIGSTKFLT, "SIGSTKFLT"),
            (libc::SIGCHLD, "SIGCHLD"),
            (libc::SIGCONT, "SIGCONT"),
            (libc::SIGSTOP, "SIGSTOP"),
            (libc::SIGWINCH, "SIGWINCH"),
            (libc::SIGIO, "SIGIO"),
            (libc::SIGPWR, "SIGPWR"),
            (libc::SIGSYS, "SIGSYS"),
        ] {
            assert_eq!(signal_name(n), Some(name));
        }
    }

    #[test]
    fn parse_forms() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("TERM"), Some(15));
        assert_eq!(parse_signal("sigterm"), Some(15));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal(" 15 "), Some(15));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("64"), Some(64));
        assert_eq!(parse_signal("SIGRTMIN"), Some(34));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(37));
        assert_eq!(parse_signal("rtmin+30"), Some(64));
        assert_eq!(parse_signal("SIGRTMAX"), Some(64));
        assert_eq!(parse_signal("SIGRTMAX-2"), Some(62));
        assert_eq!(parse_signal("SIGIOT"), Some(6));
        assert_eq!(parse_signal("SIGPOLL"), Some(29));
        assert_eq!(parse_signal("SIGCLD"), Some(17));
        assert_eq!(parse_signal("SIG32"), Some(32));
    }

    #[test]
    fn parse_rejects() {
        for s in [
            "",
            "SIG",
            "0",
            "65",
            "-1",
            "+15",
            "SIGFOO",
            "SIGRTMIN+31",
            "SIGRTMIN+",
            "SIGRTMIN-1",
            "SIGRTMAX-31",
            "SIGRTMAX+1",
            "99999999999999999999",
            "SIGTERM2",
        ] {
            assert_eq!(parse_signal(s), None, "{s:?}");
        }
    }

    #[test]
    fn name_parse_round_trip() {
        for n in 1..=MAX_SIGNUM {
            let name = signal_name(n).unwrap_or_default();
            assert_eq!(parse_signal(name), Some(n), "{name}");
            assert_eq!(parse_signal(&name.to_ascii_lowercase()), Some(n), "{name}");
        }
    }

    #[test]
    fn sigignore_pipe() {
        assert_eq!(sigset_names(0x1000), vec!["SIGPIPE"]);
    }

    #[test]
    fn sigset_usr1_pipe() {
        assert_eq!(
            sigset_names((1 << 9) | (1 << 12)),
            vec!["SIGUSR1", "SIGPIPE"]
        );
    }

    #[test]
    fn sigset_chld() {
        assert_eq!(sigset_names(1 << 16), vec!["SIGCHLD"]);
    }

    #[test]
    fn sigset_edges() {
        assert!(sigset_names(0).is_empty());
        assert_eq!(sigset_names(1), vec!["SIGHUP"]);
        assert_eq!(sigset_names(1 << 63), vec!["SIGRTMAX"]);
        assert_eq!(sigset_names(u64::MAX).len(), 64);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".*") {
            if let Some(n) = parse_signal(&s) {
                prop_assert!((1..=MAX_SIGNUM).contains(&n));
            }
        }

        #[test]
        fn sigset_counts_bits(mask in any::<u64>()) {
            let names = sigset_names(mask);
            prop_assert_eq!(names.len(), mask.count_ones() as usize);
        }
    }
}
