//! [`ProcSpec`]: how to start one proc, with the types of its start-state
//! fields (signals, rlimits, user and group, timeout) and the `fds` list reader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::parse::unique_rlimits;
use super::{EnvSpec, FdSpec, PerfSpec};

/// How to start one proc. Every field is optional, but [`validate`](super::validate) requires a
/// non-empty `argv`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcSpec {
    /// Accepted and ignored, as by Procstar.
    pub id: Option<String>,
    /// The path given to execve (no PATH search); `argv[0]` when absent.
    pub exe: Option<String>,
    /// The argument vector, including `argv[0]`.
    pub argv: Vec<String>,
    /// The child's environment.
    pub env: EnvSpec,
    /// fd name and what to do with that fd, applied in list order. fds not listed are
    /// inherited. In JSON, a list of two-element lists `[fd_name, fd_spec]`, or
    /// (an extension) an object `{fd_name: fd_spec}`, applied in the order written.
    #[serde(deserialize_with = "fds_list_or_object")]
    pub fds: Vec<(String, FdSpec)>,
    /// systemd scope and slice properties: accepted and kept, but unused.
    pub systemd_properties: Option<serde_json::Value>,

    // chaperone extensions: the child's start state (docs/spec.md). Values are
    // parsed loosely and checked per proc when its plan is built, so a bad value
    // fails only that proc, with an error naming the proc and the field.
    /// Working directory of the child.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// File mode creation mask (JSON has no octal: 18 is 0o022). Default: the agent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub umask: Option<i64>,
    /// Signal delivered to the child when the agent dies (`PR_SET_PDEATHSIG`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdeath_sig: Option<SignalRef>,
    /// Signals blocked and ignored at exec.
    #[serde(skip_serializing_if = "SignalsSpec::is_empty")]
    pub signals: SignalsSpec,
    /// Resource limits: lower-case `RLIMIT_*` name → `[soft, hard]` (`null` is unlimited).
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_rlimits"
    )]
    pub rlimits: BTreeMap<String, RlimitSpec>,
    /// Whether the child calls `setsid()` (default true, as Procstar).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setsid: Option<bool>,
    /// Process group instead of a new session: 0 for a new group led by the child,
    /// or the id of an existing group to join.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_group: Option<i64>,
    /// User to run as (name or uid); needs privilege.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<IdRef>,
    /// Group to run as (name or gid); defaults to the user's primary group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<IdRef>,
    /// Signal the process after a time, then kill it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutSpec>,
    /// Signals from the API and timeouts go to the whole process group.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kill_group: bool,
    /// perf counters: `true`, `false` or a list of event names (default: the
    /// agent's `--perf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf: Option<PerfSpec>,
}

/// A signal given by name (`"SIGTERM"`, `"TERM"`) or number (`15`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SignalRef {
    /// A signal number.
    Number(i64),
    /// A signal name.
    Name(String),
}

impl SignalRef {
    /// The signal it names: a number from 1 to
    /// [`MAX_SIGNUM`](crate::signal::MAX_SIGNUM), or a known name.
    pub fn number(&self) -> Option<i32> {
        match self {
            SignalRef::Number(n) => i32::try_from(*n)
                .ok()
                .filter(|n| (1..=crate::signal::MAX_SIGNUM).contains(n)),
            SignalRef::Name(name) => crate::signal::parse_signal(name),
        }
    }
}

impl std::fmt::Display for SignalRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignalRef::Number(n) => write!(f, "{n}"),
            SignalRef::Name(s) => write!(f, "{s:?}"),
        }
    }
}

/// A user or group given by name or numeric id.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum IdRef {
    /// A numeric id.
    Id(i64),
    /// A name to look up.
    Name(String),
}

/// A number or a name, deserialized by hand rather than `untagged`, so that a
/// value of another type is told what was expected instead of "data did not
/// match any variant of untagged enum …".
struct NumberOrName<T> {
    expected: &'static str,
    /// What a number is, for one too large: "a signal number".
    number_is: &'static str,
    number: fn(i64) -> T,
    name: fn(String) -> T,
}

impl<'de, T> serde::de::Visitor<'de> for NumberOrName<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expected)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        Ok((self.number)(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        signed(v, self.number_is).map(self.number)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        Ok((self.name)(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<T, E> {
        Ok((self.name)(v))
    }
}

/// A JSON number past `i64` as the error a visitor gives: "… is too large for
/// `what`".
fn signed<E: serde::de::Error>(v: u64, what: &str) -> Result<i64, E> {
    i64::try_from(v).map_err(|_| E::custom(format_args!("{v} is too large for {what}")))
}

impl<'de> Deserialize<'de> for SignalRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrName {
            expected: "a signal: a name such as \"SIGTERM\", or a number",
            number_is: "a signal number",
            number: SignalRef::Number,
            name: SignalRef::Name,
        })
    }
}

impl<'de> Deserialize<'de> for IdRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberOrName {
            expected: "a user or group: a name, or a numeric id",
            number_is: "a user or group id",
            number: IdRef::Id,
            name: IdRef::Name,
        })
    }
}

/// `"signals": {"mask": [...], "ignore": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsSpec {
    /// Signals blocked at exec.
    pub mask: Vec<SignalRef>,
    /// Signals ignored (`SIG_IGN`) at exec.
    pub ignore: Vec<SignalRef>,
}

impl SignalsSpec {
    /// Whether nothing is blocked or ignored.
    pub fn is_empty(&self) -> bool {
        self.mask.is_empty() && self.ignore.is_empty()
    }
}

/// One resource limit: `[soft, hard]`, or a single value for both; `null` is
/// unlimited.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RlimitSpec {
    /// `[soft, hard]`.
    Pair(Option<i64>, Option<i64>),
    /// One value for soft and hard.
    Both(Option<i64>),
}

/// By hand rather than `untagged`, so that a limit of the wrong shape (say
/// `{"soft": 10, "hard": 20}`) is told what the shapes are, instead of
/// "data did not match any variant of untagged enum RlimitSpec".
impl<'de> Deserialize<'de> for RlimitSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Limit;
        const EXPECTED: &str = "a limit: [soft, hard], one number for both, or null (unlimited)";
        impl<'de> serde::de::Visitor<'de> for Limit {
            type Value = RlimitSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RlimitSpec, E> {
                Ok(RlimitSpec::Both(Some(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RlimitSpec, E> {
                limit_u64(v).map(RlimitSpec::Both)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<RlimitSpec, E> {
                Ok(RlimitSpec::Both(None))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<RlimitSpec, E> {
                Ok(RlimitSpec::Both(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RlimitSpec, A::Error> {
                use serde::de::Error as _;
                let soft = seq.next_element::<LimitValue>()?;
                let hard = seq.next_element::<LimitValue>()?;
                match (soft, hard, seq.next_element::<serde::de::IgnoredAny>()?) {
                    (Some(s), Some(h), None) => Ok(RlimitSpec::Pair(s.0, h.0)),
                    _ => Err(A::Error::custom(format_args!(
                        "not [soft, hard]: {EXPECTED}"
                    ))),
                }
            }
        }
        d.deserialize_any(Limit)
    }
}

/// A limit past `i64`: `RLIM_INFINITY` (2^64 − 1, as `ulimit` and C code
/// write "unlimited") is unlimited, as `null` is; any other is refused.
fn limit_u64<E: serde::de::Error>(v: u64) -> Result<Option<i64>, E> {
    if v == u64::MAX {
        return Ok(None);
    }
    signed(
        v,
        "a limit (the largest is 9223372036854775807; null or 18446744073709551615 is unlimited)",
    )
    .map(Some)
}

/// One number of `[soft, hard]`: a limit, or `null` (unlimited).
struct LimitValue(Option<i64>);

impl<'de> Deserialize<'de> for LimitValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = LimitValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a limit: a number, or null (unlimited)")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<LimitValue, E> {
                Ok(LimitValue(Some(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<LimitValue, E> {
                limit_u64(v).map(LimitValue)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<LimitValue, E> {
                Ok(LimitValue(None))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<LimitValue, E> {
                Ok(LimitValue(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// `"timeout": {"after": s, "signal": "SIGTERM", "kill_after": s}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSpec {
    /// Seconds after start when `signal` is sent.
    pub after: f64,
    /// The signal (default SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalRef>,
    /// Seconds after `signal` when SIGKILL follows (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_after: Option<f64>,
}

/// The most entries an fd list may have: far past any fd table a child can
/// have, and short of what would let one spec hold the agent's memory.
pub const MAX_FD_ENTRIES: usize = 65_536;

/// `fds` as Procstar's list of `[name, spec]` pairs, or as an object of
/// `name: spec` in the order written.
fn fds_list_or_object<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, FdSpec)>, D::Error> {
    use serde::de::Error as _;
    /// One `[fd, spec]` entry, refused by its length when it has not two.
    struct Pair(String, FdSpec);
    impl<'de> Deserialize<'de> for Pair {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Pair, D::Error> {
            struct PairVisitor;
            impl<'de> serde::de::Visitor<'de> for PairVisitor {
                type Value = Pair;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an [fd, spec] pair")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Pair, A::Error> {
                    let short = |n| {
                        A::Error::custom(format_args!(
                            "fds: an entry is [fd, spec]; this one has {n} element{}",
                            if n == 1 { "" } else { "s" }
                        ))
                    };
                    let name = a.next_element::<String>()?.ok_or_else(|| short(0))?;
                    let spec = a.next_element::<FdSpec>()?.ok_or_else(|| short(1))?;
                    if a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                        return Err(A::Error::custom(format_args!(
                            "fds: an entry is [fd, spec]; the one for {name:?} has more than two elements"
                        )));
                    }
                    Ok(Pair(name, spec))
                }
            }
            d.deserialize_seq(PairVisitor)
        }
    }
    fn too_many<E: serde::de::Error>() -> E {
        E::custom(format_args!(
            "fds: more than {MAX_FD_ENTRIES} entries (a child has at most one per fd)"
        ))
    }
    struct Fds;
    impl<'de> serde::de::Visitor<'de> for Fds {
        type Value = Vec<(String, FdSpec)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of [fd, spec] pairs, or an object of fd: spec")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut fds = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
            while let Some(Pair(name, spec)) = a.next_element::<Pair>()? {
                if fds.len() == MAX_FD_ENTRIES {
                    return Err(too_many());
                }
                fds.push((name, spec));
            }
            Ok(fds)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut fds = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
            while let Some(e) = a.next_entry::<String, FdSpec>()? {
                if fds.len() == MAX_FD_ENTRIES {
                    return Err(too_many());
                }
                fds.push(e);
            }
            Ok(fds)
        }
    }
    d.deserialize_any(Fds)
}

impl ProcSpec {
    /// The path to execute: `exe`, or else `argv[0]`, or `None` if both are missing.
    pub fn exe(&self) -> Option<&str> {
        self.exe
            .as_deref()
            .or_else(|| self.argv.first().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_input, validate};

    #[test]
    fn proc_spec_exe_defaults_to_argv0() {
        let spec = ProcSpec {
            argv: vec!["/bin/echo".into()],
            ..ProcSpec::default()
        };
        assert_eq!(spec.exe(), Some("/bin/echo"));
        assert_eq!(ProcSpec::default().exe(), None);
    }

    #[test]
    fn fds_as_an_object_apply_in_the_order_written() {
        let input = parse_input(
            br#"{"specs": {"p": {"argv": ["x"], "fds": {"stdout": {"capture": {"mode": "memory"}},
                "stderr": {"dup": {"fd": 1}}, "stdin": "close"}}}}"#,
        )
        .unwrap();
        let fds = &input.specs.get("p").unwrap().fds;
        let names: Vec<&str> = fds.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["stdout", "stderr", "stdin"]);
        assert_eq!(fds[1].1, FdSpec::Dup { fd: 1 });
        // The same duplicate-alias check as the list form.
        let input = parse_input(
            br#"{"specs": {"p": {"argv": ["x"], "fds": {"stdout": "close", "1": "inherit"}}}}"#,
        )
        .unwrap();
        assert!(validate(&input).is_err());
        let e = parse_input(br#"{"specs": {"p": {"argv": ["x"], "fds": 3}}}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("a list of [fd, spec] pairs, or an object"),
            "{e}"
        );
    }
}
