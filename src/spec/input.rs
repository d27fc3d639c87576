//! The request: [`Input`], its `specs` ([`Specs`], proc specs by [`ProcId`] in
//! input order), and the duplicate-id check made while deserializing them.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ProcSpec, SpecError};

/// A proc id: the key of a proc spec in [`Specs`], unique among live procs.
pub type ProcId = String;

/// A request to start procs: the top-level JSON object, with exactly one key, `specs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The procs to start, by proc id, in input order.
    pub specs: Specs,
}

/// Proc specs by proc id, in the order the JSON object lists them.
///
/// Deserializing rejects a proc id that appears twice in one object with
/// `duplicate proc id: <id>`. Serializes as a JSON object in the same order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Specs(Vec<(ProcId, ProcSpec)>);

impl Specs {
    /// An empty set of specs.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Each spec, mutably, in order (ids stay as they are).
    pub fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = &mut ProcSpec> {
        self.0.iter_mut().map(|(_, s)| s)
    }

    /// Appends a spec, or fails with [`SpecError::DuplicateProcId`] if `proc_id` is
    /// already present.
    pub fn try_insert(&mut self, proc_id: ProcId, spec: ProcSpec) -> Result<(), SpecError> {
        if self.contains(&proc_id) {
            return Err(SpecError::DuplicateProcId { proc_id });
        }
        self.0.push((proc_id, spec));
        Ok(())
    }

    /// The spec for `proc_id`, if present.
    pub fn get(&self, proc_id: &str) -> Option<&ProcSpec> {
        self.0.iter().find(|(id, _)| id == proc_id).map(|(_, s)| s)
    }

    /// Whether `proc_id` is present.
    pub fn contains(&self, proc_id: &str) -> bool {
        self.0.iter().any(|(id, _)| id == proc_id)
    }

    /// The number of specs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no specs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The proc ids and specs, in input order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&ProcId, &ProcSpec)> {
        self.0.iter().map(|(id, spec)| (id, spec))
    }

    /// The proc ids and specs as a slice, in input order.
    pub fn as_slice(&self) -> &[(ProcId, ProcSpec)] {
        &self.0
    }

    /// The proc ids and specs, in input order.
    pub fn into_vec(self) -> Vec<(ProcId, ProcSpec)> {
        self.0
    }
}

impl IntoIterator for Specs {
    type Item = (ProcId, ProcSpec);
    type IntoIter = std::vec::IntoIter<(ProcId, ProcSpec)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Specs {
    type Item = &'a (ProcId, ProcSpec);
    type IntoIter = std::slice::Iter<'a, (ProcId, ProcSpec)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for Specs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (id, spec) in &self.0 {
            map.serialize_entry(id, spec)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Specs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecsVisitor;

        impl<'de> Visitor<'de> for SpecsVisitor {
            type Value = Specs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from proc id to proc spec")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Specs, A::Error> {
                // Cap the preallocation: the size hint comes from the client.
                let mut specs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
                let mut seen = HashSet::new();
                while let Some(id) = map.next_key::<ProcId>()? {
                    if !seen.insert(id.clone()) {
                        return Err(de::Error::custom(format_args!("duplicate proc id: {id}")));
                    }
                    let spec = map.next_value::<ProcSpec>()?;
                    specs.push((id, spec));
                }
                Ok(Specs(specs))
            }
        }

        deserializer.deserialize_map(SpecsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_try_insert_rejects_duplicate() {
        let mut specs = Specs::new();
        specs.try_insert("a".into(), ProcSpec::default()).unwrap();
        let err = specs
            .try_insert("a".into(), ProcSpec::default())
            .unwrap_err();
        assert_eq!(err.to_string(), "duplicate proc id: a");
        assert_eq!(specs.len(), 1);
    }
}
