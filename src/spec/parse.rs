//! Parsing a request's JSON ([`parse_input`]): the object-only check, the
//! error that names the proc and fd a type error is in, and the map readers
//! that refuse a key given twice.

use std::collections::BTreeMap;

use super::{FdSpec, Input, ProcSpec, RlimitSpec, SpecError};

pub(super) fn unique_vars<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Option<String>>, D::Error> {
    unique_keys(d, "env.vars")
}

pub(super) fn unique_rlimits<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, RlimitSpec>, D::Error> {
    unique_keys(d, "rlimits")
}

/// A JSON object as a map, refusing a key given twice (which JSON parsers
/// take last-wins, silently); the error names `field`.
fn unique_keys<'de, D, V>(d: D, field: &'static str) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: serde::Deserialize<'de>,
{
    struct Unique<V>(&'static str, std::marker::PhantomData<V>);
    impl<'de, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Unique<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = m.next_key::<String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "{}: {k:?} is given twice",
                        self.0
                    )));
                }
                let v = m.next_value()?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique(field, std::marker::PhantomData))
}

/// Parses a request's JSON. Schema errors become [`SpecError::Json`] with serde's
/// message. Call [`validate`](super::validate) (or
/// [`validate_with_existing`](super::validate_with_existing)) on the result.
pub fn parse_input(json: &[u8]) -> Result<Input, SpecError> {
    // A byte order mark, as some editors write, is not part of the JSON
    // (RFC 8259, 8.1: a parser may ignore one).
    let json = json.strip_prefix(b"\xef\xbb\xbf").unwrap_or(json);
    // Procstar's format is objects only; serde would take `[{…}]` as the
    // fields of a request in order. What is not JSON at all is told where.
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) => {
            let what = match serde_json::from_slice::<serde_json::Value>(json) {
                Err(e) => return Err(SpecError::Json(e.to_string())),
                Ok(serde_json::Value::Array(_)) => "an array",
                Ok(serde_json::Value::String(_)) => "a string",
                Ok(serde_json::Value::Number(_)) => "a number",
                Ok(serde_json::Value::Bool(_)) => "a boolean",
                Ok(_) => "null",
            };
            return Err(SpecError::Json(format!(
                "a request is a JSON object, {{\"specs\": {{ID: SPEC, …}}}}, not {what}"
            )));
        }
    }
    serde_json::from_slice(json).map_err(|e| {
        let msg = e.to_string();
        SpecError::Json(locate_error(json, &e, &msg).unwrap_or(msg))
    })
}

/// For a type error inside one proc's spec, the message with the proc (and the
/// fd entry) it is in named first: serde reports only a line and column, and
/// says "expected a boolean" without saying whose. Found by decoding each proc
/// (and each fd) of the request on its own, on the error path only.
fn locate_error(json: &[u8], e: &serde_json::Error, msg: &str) -> Option<String> {
    if !e.is_data() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    // The same error, decoded from a value (which has no position to report).
    let same = |err: serde_json::Error| msg.starts_with(&err.to_string());
    for (id, spec) in v.get("specs")?.as_object()? {
        let Err(err) = serde_json::from_value::<ProcSpec>(spec.clone()) else {
            continue;
        };
        if !same(err) {
            continue;
        }
        for entry in spec
            .get("fds")
            .and_then(|f| f.as_array())
            .into_iter()
            .flatten()
        {
            let (Some(name), Some(fd)) = (entry.get(0), entry.get(1)) else {
                continue;
            };
            if serde_json::from_value::<FdSpec>(fd.clone()).is_err() {
                let name = name
                    .as_str()
                    .map_or_else(|| name.to_string(), str::to_string);
                return Some(format!("proc {id}: fd {name}: {msg}"));
            }
        }
        for (name, limit) in spec
            .get("rlimits")
            .and_then(|r| r.as_object())
            .into_iter()
            .flatten()
        {
            if serde_json::from_value::<super::RlimitSpec>(limit.clone()).is_err() {
                return Some(format!("proc {id}: rlimits.{name}: {msg}"));
            }
        }
        return Some(format!("proc {id}: {msg}"));
    }
    None
}
