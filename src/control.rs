//! Child control: resolves a proc spec's start-state fields (`cwd`, `umask`,
//! `pdeath_sig`, `signals`, `rlimits`, `setsid`/`process_group`, `user`/`group`,
//! `env.user_env`, `timeout`) into checked numbers, per proc.
//!
//! Spec parsing (`crate::spec`) accepts these fields loosely, so that a bad value
//! fails only its own proc. [`resolve`] does the checking: every problem becomes a
//! [`ControlError`] that names the proc and the field, e.g.
//! `proc p: umask: -1 is out of range (0 to 511)`. The agent reports these in the
//! proc's `errors` and starts no child for it; other procs are unaffected.
//!
//! Everything here runs in the agent. The vfork child (`sys/child.rs`) receives
//! only the resolved numbers, in its plan.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use crate::signal::MAX_SIGNUM;
use crate::spec::{IdRef, ProcSpec, RlimitSpec, SignalRef};
use crate::sys::user::{self, Passwd};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::OnceLock;
use std::time::Duration;

/// `RLIM_INFINITY`: no limit.
pub const RLIM_INFINITY: u64 = u64::MAX;

/// The largest `umask` (`0o777`).
pub const MAX_UMASK: i64 = 0o777;

/// Resource names accepted in `rlimits`: every `RLIMIT_*` in lower case.
pub const RLIMIT_NAMES: [(&str, u32); 16] = [
    ("as", libc::RLIMIT_AS),
    ("core", libc::RLIMIT_CORE),
    ("cpu", libc::RLIMIT_CPU),
    ("data", libc::RLIMIT_DATA),
    ("fsize", libc::RLIMIT_FSIZE),
    ("locks", libc::RLIMIT_LOCKS),
    ("memlock", libc::RLIMIT_MEMLOCK),
    ("msgqueue", libc::RLIMIT_MSGQUEUE),
    ("nice", libc::RLIMIT_NICE),
    ("nofile", libc::RLIMIT_NOFILE),
    ("nproc", libc::RLIMIT_NPROC),
    ("rss", libc::RLIMIT_RSS),
    ("rtprio", libc::RLIMIT_RTPRIO),
    ("rttime", libc::RLIMIT_RTTIME),
    ("sigpending", libc::RLIMIT_SIGPENDING),
    ("stack", libc::RLIMIT_STACK),
];

/// The number of resource `name` (`"nofile"` → `RLIMIT_NOFILE`), if known.
pub fn rlimit_resource(name: &str) -> Option<u32> {
    RLIMIT_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, r)| r)
}

/// A bad child-control value: `proc <id>: <field>: <msg>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proc {proc_id}: {field}: {msg}")]
pub struct ControlError {
    /// The proc whose spec holds the value.
    pub proc_id: String,
    /// The field, e.g. `umask`, `signals.mask`, `rlimits.nofile`, `timeout.after`.
    pub field: String,
    /// What is wrong with it.
    pub msg: String,
}

/// How the child's session and process group are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Session {
    /// `setsid()`: a new session and process group led by the child (the default).
    #[default]
    New,
    /// `setpgid(0, pgid)`: a new group led by the child (0) or an existing one.
    Group(i32),
    /// Stay in the agent's session and process group (`setsid: false`).
    Inherit,
}

/// The credentials to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// The uid (`None`: only the group changes).
    pub uid: Option<u32>,
    /// The gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// A resolved `timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeout {
    /// When the signal goes out, from the start.
    pub after: Duration,
    /// The signal (default SIGTERM).
    pub signum: i32,
    /// When SIGKILL follows, after the signal.
    pub kill_after: Option<Duration>,
}

/// A proc's resolved start state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Control {
    /// The working directory as given (relative: to the agent's).
    pub cwd: Option<CString>,
    /// The umask, or `None` for the agent's.
    pub umask: Option<u32>,
    /// The parent-death signal, or `None`.
    pub pdeath_sig: Option<i32>,
    /// Blocked signals at exec (kernel layout: bit n-1 is signal n).
    pub mask: u64,
    /// Ignored signals at exec (same layout).
    pub ignore: u64,
    /// `(resource, soft, hard)` in resource-name order; [`RLIM_INFINITY`] for none.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// Session and process group.
    pub session: Session,
    /// Credentials to switch to; `None` keeps the agent's.
    pub creds: Option<Creds>,
    /// HOME, USER, LOGNAME and SHELL, when `env.user_env` is set.
    pub user_env: Option<BTreeMap<String, String>>,
    /// The timeout.
    pub timeout: Option<Timeout>,
}

/// Agent-wide defaults for [`resolve`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Defaults {
    /// Parent-death signal for specs without `pdeath_sig`.
    pub pdeath_sig: Option<i32>,
    /// `RLIMIT_NOFILE` (soft, hard) for specs without `rlimits.nofile`, when
    /// the agent raised its own (see `sys::fd::raise_fd_limit`): children
    /// start with the limit the agent was given. `None`: they inherit.
    pub nofile: Option<(u64, u64)>,
}

/// Facts about the agent process read once from `/proc/self/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentInfo {
    /// The agent's umask (the `Umask:` line, Linux 4.7+).
    pub umask: Option<u32>,
    /// Effective capabilities (`CapEff:`).
    pub cap_eff: u64,
}

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;

/// [`AgentInfo`] of this process, read on first use. Reading `/proc/self/status`
/// does not race with other threads, as a `umask()` set-and-restore would.
pub fn agent_info() -> AgentInfo {
    static INFO: OnceLock<AgentInfo> = OnceLock::new();
    *INFO.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .map(|s| parse_status(&s))
            .unwrap_or_default()
    })
}

fn parse_status(status: &str) -> AgentInfo {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    AgentInfo {
        umask: field("Umask:").and_then(|v| u32::from_str_radix(v, 8).ok()),
        cap_eff: field("CapEff:")
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .unwrap_or(0),
    }
}

struct Errors<'a> {
    id: &'a str,
    list: Vec<ControlError>,
}

impl Errors<'_> {
    fn push(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.list.push(ControlError {
            proc_id: self.id.to_string(),
            field: field.into(),
            msg: msg.into(),
        });
    }
}

/// Resolves `ps`'s child-control fields. Returns every problem found, not only the
/// first.
///
/// # Errors
/// One [`ControlError`] per bad value; see the module docs.
pub fn resolve(id: &str, ps: &ProcSpec, defaults: &Defaults) -> Result<Control, Vec<ControlError>> {
    let mut errs = Errors {
        id,
        list: Vec::new(),
    };
    let mut c = Control::default();

    if let Some(cwd) = &ps.cwd {
        if cwd.is_empty() {
            errs.push("cwd", "is empty");
        }
        match CString::new(cwd.as_bytes()) {
            Ok(s) => c.cwd = Some(s),
            Err(_) => errs.push("cwd", "contains a nul byte"),
        }
    }

    if let Some(umask) = ps.umask {
        match u32::try_from(umask) {
            Ok(u) if i64::from(u) <= MAX_UMASK => c.umask = Some(u),
            _ => errs.push(
                "umask",
                format!("{umask} is out of range (0 to {MAX_UMASK})"),
            ),
        }
    }

    c.pdeath_sig = match &ps.pdeath_sig {
        // 0 turns off the agent-wide default.
        Some(SignalRef::Number(0)) => None,
        Some(s) => signal(&mut errs, "pdeath_sig", s),
        None => defaults.pdeath_sig.filter(|&s| s > 0),
    };

    for s in &ps.signals.mask {
        if let Some(n) = signal(&mut errs, "signals.mask", s) {
            // The kernel would leave them unblocked without a word.
            if n == libc::SIGKILL || n == libc::SIGSTOP {
                errs.push("signals.mask", format!("{s} cannot be blocked"));
            } else {
                c.mask |= 1u64 << (n - 1);
            }
        }
    }
    for s in &ps.signals.ignore {
        if let Some(n) = signal(&mut errs, "signals.ignore", s) {
            if n == libc::SIGKILL || n == libc::SIGSTOP {
                errs.push("signals.ignore", format!("{s} cannot be ignored"));
            } else {
                c.ignore |= 1u64 << (n - 1);
            }
        }
    }

    for (name, spec) in &ps.rlimits {
        let Some(resource) = rlimit_resource(name) else {
            errs.push("rlimits", format!("unknown resource {name:?}"));
            continue;
        };
        let field = format!("rlimits.{name}");
        let (soft, hard) = match *spec {
            RlimitSpec::Pair(s, h) => (s, h),
            RlimitSpec::Both(v) => (v, v),
        };
        let mut limit = |v: Option<i64>| match v {
            None => Some(RLIM_INFINITY),
            Some(n) => match u64::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    errs.push(
                        field.clone(),
                        format!("{n} is out of range (0 or more, or null)"),
                    );
                    None
                }
            },
        };
        // A single value `n` is checked once, so its error is said once.
        let (soft, hard) = match *spec {
            RlimitSpec::Both(_) => {
                let v = limit(soft);
                (v, v)
            }
            RlimitSpec::Pair(..) => (limit(soft), limit(hard)),
        };
        let (Some(soft), Some(hard)) = (soft, hard) else {
            continue;
        };
        if soft > hard {
            errs.push(
                field.clone(),
                format!("soft limit {soft} is above hard limit {hard}"),
            );
            continue;
        }
        if resource == libc::RLIMIT_NOFILE {
            let need = nofile_needed(ps);
            if soft < need {
                errs.push(
                    field.clone(),
                    format!(
                        "soft limit {soft} is too low for this process: its fds and exec need at least {need}"
                    ),
                );
                continue;
            }
        }
        c.rlimits.push((resource, soft, hard));
    }
    // The agent's own limit was raised: a child gets the one it was given,
    // or what its fds need if that is more (within the hard limit).
    if let Some((soft, hard)) = defaults.nofile
        && !c.rlimits.iter().any(|r| r.0 == libc::RLIMIT_NOFILE)
    {
        c.rlimits.push((
            libc::RLIMIT_NOFILE,
            soft.max(nofile_needed(ps)).min(hard),
            hard,
        ));
    }

    c.session = match (ps.setsid, ps.process_group) {
        (Some(true), Some(_)) => {
            errs.push("process_group", "cannot be combined with \"setsid\": true");
            Session::New
        }
        (_, Some(pg)) => match i32::try_from(pg) {
            Ok(pg) if pg >= 0 => Session::Group(pg),
            _ => {
                errs.push(
                    "process_group",
                    format!("{pg} is out of range (0 to {})", i32::MAX),
                );
                Session::New
            }
        },
        (Some(false), None) => Session::Inherit,
        (_, None) => Session::New,
    };
    if ps.kill_group && !matches!(c.session, Session::New | Session::Group(0)) {
        errs.push(
            "kill_group",
            "needs the child to lead its own process group (setsid, or process_group 0)",
        );
    }

    resolve_user(&mut errs, ps, &mut c);

    if let Some(t) = &ps.timeout {
        c.timeout = timeout(&mut errs, t);
    }

    if errs.list.is_empty() {
        Ok(c)
    } else {
        Err(errs.list)
    }
}

/// The timeout `t` asks for, or errors naming its fields.
fn timeout(errs: &mut Errors<'_>, t: &crate::spec::TimeoutSpec) -> Option<Timeout> {
    let after = duration(errs, "timeout.after", t.after);
    let kill_after = t
        .kill_after
        .and_then(|k| duration(errs, "timeout.kill_after", k));
    let signum = match &t.signal {
        Some(s) => signal(errs, "timeout.signal", s),
        None => Some(libc::SIGTERM),
    };
    Some(Timeout {
        after: after?,
        signum: signum?,
        kill_after,
    })
}

impl Timeout {
    /// The timeout `t` asks for; `None` if any value is invalid (which
    /// [`resolve`] reports).
    pub fn of(t: &crate::spec::TimeoutSpec) -> Option<Timeout> {
        let mut errs = Errors {
            id: "",
            list: Vec::new(),
        };
        timeout(&mut errs, t)
    }
}

/// A signal number from a name or number, or an error naming `field`.
fn signal(errs: &mut Errors<'_>, field: &str, s: &SignalRef) -> Option<i32> {
    let n = s.number();
    if n.is_none() {
        errs.push(
            field,
            match s {
                SignalRef::Number(n) => format!("{n} is not a signal number (1 to {MAX_SIGNUM})"),
                SignalRef::Name(name) => format!("unknown signal {name:?}"),
            },
        );
    }
    n
}

/// Seconds as a duration, or an error naming `field`.
fn duration(errs: &mut Errors<'_>, field: &str, secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        errs.push(field, "must be >= 0");
        return None;
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) => Some(d),
        Err(_) => {
            errs.push(field, format!("{secs} is too large"));
            None
        }
    }
}

/// The least `RLIMIT_NOFILE` a process can start under. The limit is set
/// before the child's fds are put in place, so each must be below it; and
/// exec then needs one free fd (ld.so opening the program's libraries),
/// the lowest one not taken. Below that the child fails at its fds, or in
/// ld.so with "Error 24", without a word of the limit.
fn nofile_needed(ps: &ProcSpec) -> u64 {
    let mut open: std::collections::BTreeSet<i32> = (0..=2).collect();
    for (name, fs) in &ps.fds {
        if let Ok(fd) = crate::spec::parse_fd_name(name) {
            if matches!(fs, crate::spec::FdSpec::Close) {
                open.remove(&fd);
            } else {
                open.insert(fd);
            }
        }
    }
    let top = open.last().map_or(0, |&t| i64::from(t) + 1);
    let free = (0..)
        .find(|fd| !open.contains(fd))
        .map_or(0, |f| i64::from(f) + 1);
    u64::try_from(top.max(free)).unwrap_or(0)
}

/// Whether resolving `ps` looks users or groups up (NSS: perhaps over the
/// network), so that it is done off the reactor.
pub fn needs_lookups(ps: &ProcSpec) -> bool {
    ps.user.is_some() || ps.group.is_some() || ps.env.user_env
}

/// `user`, `group` and `env.user_env`.
fn resolve_user(errs: &mut Errors<'_>, ps: &ProcSpec, c: &mut Control) {
    if !needs_lookups(ps) {
        return;
    }
    let n_before = errs.list.len();
    // The passwd entry for `user` (or for the agent's own uid, for user_env).
    let mut passwd: Option<Passwd> = None;
    let mut uid: Option<u32> = None;
    match &ps.user {
        Some(IdRef::Name(name)) => match user::user_by_name(name) {
            Ok(Some(pw)) => {
                uid = Some(pw.uid);
                passwd = Some(pw);
            }
            Ok(None) => errs.push("user", format!("unknown user {name:?}")),
            Err(e) => errs.push("user", format!("looking up {name:?} failed: {e}")),
        },
        Some(IdRef::Id(n)) => match u32::try_from(*n) {
            Ok(id) if id != u32::MAX => {
                uid = Some(id);
                passwd = user::user_by_uid(id).ok().flatten();
            }
            _ => errs.push("user", format!("{n} is not a valid uid")),
        },
        None => {}
    }
    let mut gid: Option<u32> = None;
    match &ps.group {
        Some(IdRef::Name(name)) => match user::group_by_name(name) {
            Ok(Some(g)) => gid = Some(g),
            Ok(None) => errs.push("group", format!("unknown group {name:?}")),
            Err(e) => errs.push("group", format!("looking up {name:?} failed: {e}")),
        },
        Some(IdRef::Id(n)) => match u32::try_from(*n) {
            Ok(id) if id != u32::MAX => gid = Some(id),
            _ => errs.push("group", format!("{n} is not a valid gid")),
        },
        None => {}
    }
    if errs.list.len() > n_before {
        return;
    }

    let euid = rustix::process::geteuid().as_raw();
    let egid = rustix::process::getegid().as_raw();
    if ps.env.user_env {
        let target = uid.unwrap_or(euid);
        if passwd.is_none() {
            passwd = user::user_by_uid(target).ok().flatten();
        }
        match &passwd {
            Some(pw) => {
                c.user_env = Some(BTreeMap::from([
                    ("HOME".to_string(), pw.dir.clone()),
                    ("USER".to_string(), pw.name.clone()),
                    ("LOGNAME".to_string(), pw.name.clone()),
                    ("SHELL".to_string(), pw.shell.clone()),
                ]));
            }
            None => errs.push("env.user_env", format!("uid {target} has no passwd entry")),
        }
    }
    if uid.is_none() && gid.is_none() {
        return;
    }

    let gid = match (gid, &passwd) {
        (Some(g), _) => g,
        (None, Some(pw)) if uid.is_some() => pw.gid,
        (None, _) => {
            errs.push(
                "group",
                format!(
                    "needed: uid {} has no passwd entry to take the primary group from",
                    uid.unwrap_or(euid)
                ),
            );
            return;
        }
    };
    // Already running as the target: nothing to switch (no privilege needed).
    if uid.is_none_or(|u| u == euid) && gid == egid {
        return;
    }
    let info = agent_info();
    let has = |cap: u32| euid == 0 || info.cap_eff & (1u64 << cap) != 0;
    if uid.is_some_and(|u| u != euid) && !has(CAP_SETUID) {
        errs.push(
            "user",
            format!("switching user needs privilege (running as uid {euid})"),
        );
        return;
    }
    if !has(CAP_SETGID) {
        let field = if ps.group.is_some() { "group" } else { "user" };
        errs.push(
            field,
            format!("switching group needs privilege (running as uid {euid})"),
        );
        return;
    }
    let groups = match (&passwd, uid) {
        (Some(pw), Some(_)) => match user::group_list(&pw.name, gid) {
            Ok(g) => g,
            Err(e) => {
                errs.push(
                    "user",
                    format!("listing the groups of {:?} failed: {e}", pw.name),
                );
                return;
            }
        },
        _ => vec![gid],
    };
    c.creds = Some(Creds { uid, gid, groups });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ProcSpec {
        serde_json::from_str(json).unwrap()
    }

    fn errors(json: &str) -> Vec<String> {
        resolve("p", &spec(json), &Defaults::default())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn messages_name_proc_and_field() {
        assert_eq!(
            errors(r#"{"argv": ["x"], "umask": -1}"#),
            ["proc p: umask: -1 is out of range (0 to 511)"]
        );
        assert_eq!(
            errors(r#"{"argv": ["x"], "signals": {"mask": ["SIGFOO"]}}"#),
            ["proc p: signals.mask: unknown signal \"SIGFOO\""]
        );
        assert_eq!(
            errors(r#"{"argv": ["x"], "rlimits": {"bogus": 1}}"#),
            ["proc p: rlimits: unknown resource \"bogus\""]
        );
        assert_eq!(
            errors(r#"{"argv": ["x"], "user": "nosuchuser"}"#),
            ["proc p: user: unknown user \"nosuchuser\""]
        );
        assert_eq!(
            errors(r#"{"argv": ["x"], "timeout": {"after": -1}}"#),
            ["proc p: timeout.after: must be >= 0"]
        );
        assert_eq!(
            errors(r#"{"argv": ["x"], "signals": {"ignore": ["KILL"]}}"#),
            ["proc p: signals.ignore: \"KILL\" cannot be ignored"]
        );
        assert_eq!(
            errors(r#"{"argv": ["x"], "signals": {"mask": ["SIGSTOP", "SIGUSR1"]}}"#),
            ["proc p: signals.mask: \"SIGSTOP\" cannot be blocked"]
        );
        assert_eq!(
            errors(r#"{"argv": ["x"], "rlimits": {"nofile": [10, 5]}}"#),
            ["proc p: rlimits.nofile: soft limit 10 is above hard limit 5"]
        );
        assert_eq!(
            errors(r#"{"argv": ["x"], "rlimits": {"nofile": [0, 0]}}"#),
            [
                "proc p: rlimits.nofile: soft limit 0 is too low for this process: its fds and exec need at least 4"
            ]
        );
        // fd 9 must be below the limit; exec gets fd 3.
        assert_eq!(
            errors(r#"{"argv": ["x"], "fds": [["9", {"null": {}}]], "rlimits": {"nofile": 9}}"#),
            [
                "proc p: rlimits.nofile: soft limit 9 is too low for this process: its fds and exec need at least 10"
            ]
        );
        let ok = |json: &str| resolve("p", &spec(json), &Defaults::default()).is_ok();
        assert!(ok(
            r#"{"argv": ["x"], "fds": [["9", {"null": {}}]], "rlimits": {"nofile": 10}}"#
        ));
        // A closed fd takes no room; with stdin closed, exec gets fd 0.
        assert!(ok(
            r#"{"argv": ["x"], "fds": [["9", "close"]], "rlimits": {"nofile": 4}}"#
        ));
        assert!(ok(
            r#"{"argv": ["x"], "fds": [["stdin", "close"]], "rlimits": {"nofile": 3}}"#
        ));
        assert_eq!(
            errors(r#"{"argv": ["x"], "fds": [["stdin", "close"]], "rlimits": {"nofile": 2}}"#),
            [
                "proc p: rlimits.nofile: soft limit 2 is too low for this process: its fds and exec need at least 3"
            ]
        );
        assert_eq!(
            errors(r#"{"argv": ["x"], "setsid": false, "kill_group": true}"#).len(),
            1
        );
    }

    #[test]
    fn resolves_values() {
        let c = resolve(
            "p",
            &spec(
                r#"{"argv": ["x"], "umask": 18, "pdeath_sig": "TERM",
                    "signals": {"mask": ["USR1", 12], "ignore": ["PIPE"]},
                    "rlimits": {"nofile": [100, null], "core": 0},
                    "process_group": 0, "timeout": {"after": 1.5, "kill_after": 2}}"#,
            ),
            &Defaults {
                pdeath_sig: Some(9),
                nofile: Some((1024, 4096)),
            },
        )
        .unwrap();
        assert_eq!(c.umask, Some(0o022));
        assert_eq!(c.pdeath_sig, Some(15));
        assert_eq!(c.mask, (1 << 9) | (1 << 11));
        assert_eq!(c.ignore, 1 << 12);
        assert_eq!(
            c.rlimits,
            [
                (libc::RLIMIT_CORE, 0, 0),
                (libc::RLIMIT_NOFILE, 100, RLIM_INFINITY)
            ]
        );
        assert_eq!(c.session, Session::Group(0));
        let t = c.timeout.unwrap();
        assert_eq!(t.after, Duration::from_millis(1500));
        assert_eq!(t.signum, 15);
        assert_eq!(t.kill_after, Some(Duration::from_secs(2)));

        let d = Defaults {
            pdeath_sig: Some(9),
            nofile: Some((1024, 4096)),
        };
        let plain = resolve("p", &spec(r#"{"argv": ["x"]}"#), &d).unwrap();
        assert_eq!(plain.pdeath_sig, Some(9));
        // The spec's nofile wins (above); without one, the given limit, unless
        // the process's fds need more.
        assert_eq!(plain.rlimits, [(libc::RLIMIT_NOFILE, 1024, 4096)]);
        let high = resolve(
            "p",
            &spec(r#"{"argv": ["x"], "fds": [["2000", {"null": {}}]]}"#),
            &d,
        )
        .unwrap();
        assert_eq!(high.rlimits, [(libc::RLIMIT_NOFILE, 2001, 4096)]);
        assert_eq!(plain.session, Session::New);
        let off = resolve("p", &spec(r#"{"argv": ["x"], "pdeath_sig": 0}"#), &d).unwrap();
        assert_eq!(off.pdeath_sig, None);
    }

    #[test]
    fn parses_status() {
        let info = parse_status("Name:\tx\nUmask:\t0022\nCapEff:\t000001ffffffffff\n");
        assert_eq!(info.umask, Some(0o22));
        assert_eq!(info.cap_eff, 0x1ff_ffff_ffff);
    }
}
