//! [`PerfSpec`]: a proc spec's `"perf"` field, which perf counters it asks for;
//! as a [`Selection`] it gives the events (`crate::metrics::perf` counts them).

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::metrics::perf::{ALL, Event, Selection};

/// The spec's `"perf"` field: `true` (every event), `false` (none), or a list of
/// event names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerfSpec {
    /// `true` or `false`.
    Enabled(bool),
    /// The events to count, by name.
    Events(Vec<String>),
}

impl PerfSpec {
    /// The first name in the list that is not an event, if any.
    pub fn unknown_event(&self) -> Option<&str> {
        match self {
            PerfSpec::Enabled(_) => None,
            PerfSpec::Events(names) => names
                .iter()
                .find(|n| Event::from_name(n).is_none())
                .map(String::as_str),
        }
    }
}

impl Serialize for PerfSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PerfSpec::Enabled(b) => serializer.serialize_bool(*b),
            PerfSpec::Events(names) => names.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for PerfSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PerfVisitor;

        impl<'de> Visitor<'de> for PerfVisitor {
            type Value = PerfSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`perf`: true, false or a list of event names")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<PerfSpec, E> {
                Ok(PerfSpec::Enabled(v))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PerfSpec, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(PerfSpec::Events(names))
            }
        }

        deserializer.deserialize_any(PerfVisitor)
    }
}

impl Selection for PerfSpec {
    fn events(&self) -> Vec<Event> {
        match self {
            PerfSpec::Enabled(true) => ALL.to_vec(),
            PerfSpec::Enabled(false) => Vec::new(),
            PerfSpec::Events(names) => ALL
                .iter()
                .copied()
                .filter(|e| names.iter().any(|n| n == e.name()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::perf::requested;

    #[test]
    fn spec_parses_bool_and_list() {
        let t: PerfSpec = serde_json::from_str("true").unwrap();
        assert_eq!(t, PerfSpec::Enabled(true));
        let l: PerfSpec = serde_json::from_str(r#"["task_clock", "cycles"]"#).unwrap();
        assert_eq!(
            requested(Some(&l), false),
            vec![Event::TaskClock, Event::Cycles]
        );
        let err = serde_json::from_str::<PerfSpec>("3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`perf`: true, false or a list"), "{err}");
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            r#"["task_clock","cycles"]"#
        );
    }

    #[test]
    fn requested_follows_spec_then_default() {
        assert_eq!(requested(None::<&PerfSpec>, false), vec![]);
        assert_eq!(requested(None::<&PerfSpec>, true), ALL.to_vec());
        assert_eq!(requested(Some(&PerfSpec::Enabled(false)), true), vec![]);
        assert_eq!(
            requested(Some(&PerfSpec::Enabled(true)), false),
            ALL.to_vec()
        );
        let dup = PerfSpec::Events(vec!["page_faults".into(), "page_faults".into()]);
        assert_eq!(requested(Some(&dup), false), vec![Event::PageFaults]);
    }

    #[test]
    fn unknown_event_is_found() {
        let s = PerfSpec::Events(vec!["task_clock".into(), "cpu_cycles".into()]);
        assert_eq!(s.unknown_event(), Some("cpu_cycles"));
        assert_eq!(PerfSpec::Enabled(true).unknown_event(), None);
    }
}
