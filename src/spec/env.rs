//! [`EnvSpec`]: the child's environment, built from the agent's by `inherit`,
//! then `vars`, always without the agent's secrets ([`SECRET_ENV_VARS`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::parse::unique_vars;

/// Environment variables the agent itself uses for secrets. They are removed from
/// every child's environment, whatever `env` says (see [`EnvSpec::build`]).
pub const SECRET_ENV_VARS: [&str; 3] = [
    "PROCSTAR_AGENT_CERT",
    "PROCSTAR_AGENT_KEY",
    "PROCSTAR_AGENT_TOKEN",
];

/// The child's environment: what to inherit from the agent, then what to set or unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvSpec {
    /// Which of the agent's variables the child inherits.
    pub inherit: EnvInherit,
    /// chaperone extension: set HOME, USER, LOGNAME and SHELL for the spec's `user`
    /// (applied after `inherit`, before `vars`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub user_env: bool,
    /// Variables to set (a string) or unset (`null`), applied after `inherit`.
    #[serde(deserialize_with = "unique_vars")]
    pub vars: BTreeMap<String, Option<String>>,
    /// chaperone extension: whether the result carries the environment the
    /// child got (`env`). Default: the agent's `--report-env` (off), since an
    /// environment can hold credentials and results go to the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<bool>,
}

/// Which of the agent's environment variables a child inherits.
///
/// In JSON: `true` (all, the default), `false` (none), or a list of names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EnvInherit {
    /// Inherit every variable (`true`).
    #[default]
    All,
    /// Inherit nothing (`false`).
    None,
    /// Inherit only the listed variables that exist.
    Names(Vec<String>),
}

impl Serialize for EnvInherit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => serializer.serialize_bool(true),
            Self::None => serializer.serialize_bool(false),
            Self::Names(names) => {
                let mut seq = serializer.serialize_seq(Some(names.len()))?;
                for name in names {
                    seq.serialize_element(name)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for EnvInherit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InheritVisitor;

        impl<'de> Visitor<'de> for InheritVisitor {
            type Value = EnvInherit;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a list of env var names")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvInherit, E> {
                Ok(if v { EnvInherit::All } else { EnvInherit::None })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EnvInherit, A::Error> {
                let mut names = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(EnvInherit::Names(names))
            }
        }

        deserializer.deserialize_any(InheritVisitor)
    }
}

impl EnvSpec {
    /// Builds the child's environment from the agent's, `parent` (typically
    /// `std::env::vars_os()`).
    ///
    /// 1. `inherit` selects from `parent`, keeping its order. Only the first of
    ///    several entries with one name is kept, as `getenv` would see it.
    /// 2. `vars` is applied in name order: a string replaces an existing variable in
    ///    place or appends a new one; `null` removes the variable.
    /// 3. The agent's secrets, [`SECRET_ENV_VARS`], are removed. This happens last, so
    ///    a secret is dropped even when `vars` sets it explicitly: the contract says
    ///    they are always removed.
    pub fn build<I>(&self, parent: I) -> Vec<(OsString, OsString)>
    where
        I: IntoIterator<Item = (OsString, OsString)>,
    {
        let wanted: Option<HashSet<&OsStr>> = match &self.inherit {
            EnvInherit::All => None,
            EnvInherit::None => Some(HashSet::new()),
            EnvInherit::Names(names) => Some(names.iter().map(OsStr::new).collect()),
        };
        // A `None` value marks a variable that `vars` removed.
        let mut env: Vec<(OsString, Option<OsString>)> = Vec::new();
        let mut index: HashMap<OsString, usize> = HashMap::new();
        if !matches!(self.inherit, EnvInherit::None) {
            for (name, value) in parent {
                let keep = wanted.as_ref().is_none_or(|w| w.contains(name.as_os_str()));
                if keep && !index.contains_key(&name) {
                    index.insert(name.clone(), env.len());
                    env.push((name, Some(value)));
                }
            }
        }

        for (name, value) in &self.vars {
            let value = value.as_deref().map(OsString::from);
            match index.get(OsStr::new(name)).and_then(|&i| env.get_mut(i)) {
                Some(slot) => slot.1 = value,
                None if value.is_some() => {
                    index.insert(OsString::from(name), env.len());
                    env.push((OsString::from(name), value));
                }
                None => {}
            }
        }

        env.into_iter()
            .filter(|(name, _)| !SECRET_ENV_VARS.iter().any(|s| OsStr::new(s) == name))
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn env_inherit_parses_bool_and_list() {
        let env: EnvSpec = serde_json::from_str(r#"{"inherit": false}"#).unwrap();
        assert_eq!(env.inherit, EnvInherit::None);
        let env: EnvSpec = serde_json::from_str(r#"{"inherit": true}"#).unwrap();
        assert_eq!(env.inherit, EnvInherit::All);
        let env: EnvSpec = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(env.inherit, EnvInherit::All);
        let env: EnvSpec = serde_json::from_str(r#"{"inherit": ["A"]}"#).unwrap();
        assert_eq!(env.inherit, EnvInherit::Names(vec!["A".into()]));
        for inherit in [
            EnvInherit::All,
            EnvInherit::None,
            EnvInherit::Names(vec!["A".into()]),
        ] {
            let json = serde_json::to_string(&inherit).unwrap();
            assert_eq!(serde_json::from_str::<EnvInherit>(&json).unwrap(), inherit);
        }
    }

    #[test]
    fn env_build_inherits_only_existing_listed_names() {
        let env = EnvSpec {
            inherit: EnvInherit::Names(vec!["USER".into(), "TERM".into(), "NOT_A_VAR".into()]),
            user_env: false,
            report: None,
            vars: BTreeMap::new(),
        };
        let parent = os(&[("PATH", "/bin"), ("TERM", "xterm"), ("USER", "me")]);
        assert_eq!(env.build(parent), os(&[("TERM", "xterm"), ("USER", "me")]));
    }

    #[test]
    fn env_build_overrides_in_place_and_removes_nulls() {
        let env = EnvSpec {
            inherit: EnvInherit::All,
            user_env: false,
            report: None,
            vars: BTreeMap::from([
                ("B".to_owned(), Some("new".to_owned())),
                ("C".to_owned(), None),
                ("D".to_owned(), Some("d".to_owned())),
                ("Z".to_owned(), None),
            ]),
        };
        let parent = os(&[("A", "a"), ("B", "b"), ("C", "c"), ("E", "e"), ("B", "dup")]);
        assert_eq!(
            env.build(parent),
            os(&[("A", "a"), ("B", "new"), ("E", "e"), ("D", "d")])
        );
    }

    #[test]
    fn env_build_with_inherit_none_uses_only_vars() {
        let env = EnvSpec {
            inherit: EnvInherit::None,
            user_env: false,
            report: None,
            vars: BTreeMap::from([("X".to_owned(), Some("1".to_owned()))]),
        };
        assert_eq!(env.build(os(&[("A", "a")])), os(&[("X", "1")]));
    }

    #[test]
    fn env_build_always_removes_agent_secrets() {
        let parent = os(&[
            ("PROCSTAR_AGENT_TOKEN", "t"),
            ("PROCSTAR_AGENT_CERT", "c"),
            ("PROCSTAR_AGENT_KEY", "k"),
            ("PROCSTAR_AGENT_HOST", "h"),
        ]);
        let env = EnvSpec::default();
        assert_eq!(
            env.build(parent.clone()),
            os(&[("PROCSTAR_AGENT_HOST", "h")])
        );
        let env = EnvSpec {
            inherit: EnvInherit::Names(vec!["PROCSTAR_AGENT_TOKEN".into()]),
            user_env: false,
            report: None,
            vars: BTreeMap::from([("PROCSTAR_AGENT_KEY".to_owned(), Some("x".to_owned()))]),
        };
        assert_eq!(env.build(parent), os(&[]));
    }
}
