//! Parsing a request's JSON ([`parse_input`]): the object-only check, the
//! error that names the proc and fd a type error is in, and the map readers
//! that refuse a key given twice.

use std::collections::BTreeMap;

use super::{Input, RlimitSpec, SpecError};

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

/// For an error inside one proc's spec, the message with the proc (and the
/// fd entry or rlimit) it is in named first: serde reports only a line and
/// column, and says "expected a boolean" without saying whose. Found by
/// where the error is: the byte it points at falls within one proc's JSON
/// (and within one of its fds), so a key given twice, which a parsed value
/// would no longer show, is placed too. On the error path only.
fn locate_error(json: &[u8], e: &serde_json::Error, msg: &str) -> Option<String> {
    use serde_json::value::RawValue;
    // A request that is not JSON at all has no proc to name.
    serde_json::from_slice::<serde::de::IgnoredAny>(json).ok()?;
    let at = offset_of(json, e)?;
    let span = |raw: &RawValue| {
        let start = raw.get().as_ptr() as usize - json.as_ptr() as usize;
        start..=start + raw.get().len()
    };
    let specs_raw: &RawValue = {
        #[derive(serde::Deserialize)]
        struct Specs<'a> {
            #[serde(borrow)]
            specs: &'a RawValue,
        }
        serde_json::from_slice::<Specs>(json).ok()?.specs
    };
    let procs: std::collections::BTreeMap<String, &RawValue> =
        serde_json::from_str(specs_raw.get()).ok()?;
    let (id, raw) = procs.iter().find(|(_, raw)| span(raw).contains(&at))?;
    #[derive(serde::Deserialize)]
    struct Parts<'a> {
        #[serde(borrow, default)]
        fds: Option<&'a RawValue>,
        #[serde(borrow, default)]
        rlimits: Option<std::collections::BTreeMap<String, &'a RawValue>>,
    }
    let parts: Option<Parts> = serde_json::from_str(raw.get()).ok();
    let fds = parts.as_ref().and_then(|p| p.fds);
    let entries = fds.map(fd_entries).unwrap_or_default();
    if let Some((name, fd)) = entries.iter().find(|(_, r)| span(r).contains(&at)) {
        // serde's word for an enum it cannot read from what it got.
        let msg = if msg.starts_with("expected value") {
            let place = msg.rsplit_once(" at line ").map_or("", |(_, p)| p);
            let mut shown: String = fd.get().chars().take(60).collect();
            if shown.len() < fd.get().len() {
                shown.push('…');
            }
            format!(
                "not an fd spec: {shown} (\"inherit\", \"close\", or an object with exactly one \
                 key: capture, file, null, dup, pipe-read or pipe-write) at line {place}"
            )
        } else {
            plain_types(msg)
        };
        return Some(format!("proc {id}: fd {name}: {msg}"));
    }
    if let Some((name, _)) = parts
        .iter()
        .flat_map(|p| p.rlimits.iter().flatten())
        .find(|(_, r)| span(r).contains(&at))
    {
        return Some(format!("proc {id}: rlimits.{name}: {}", plain_types(msg)));
    }
    Some(format!("proc {id}: {}", plain_types(msg)))
}

/// serde's names for the spec's Rust types ("expected struct TimeoutSpec",
/// "struct variant FdSpec::Capture") as a spec's author knows them.
fn plain_types(msg: &str) -> String {
    let mut out = msg.to_string();
    for (rust, key) in [
        ("FdSpec::Capture", "capture"),
        ("FdSpec::File", "file"),
        ("FdSpec::Null", "null"),
        ("FdSpec::Dup", "dup"),
        ("FdSpec::PipeRead", "pipe-read"),
        ("FdSpec::PipeWrite", "pipe-write"),
        ("FdSpec::Inherit", "inherit"),
        ("FdSpec::Close", "close"),
    ] {
        out = out.replace(rust, &format!("FdSpec::`{key}`"));
    }
    for (rust, plain) in [
        ("struct variant FdSpec::", "an object for "),
        ("unit variant FdSpec::", "the fd spec "),
    ] {
        out = out.replace(rust, plain);
    }
    // "struct NameSpec" → "an object (name)".
    while let Some(i) = out.find("struct ") {
        let rest = &out[i + "struct ".len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        let name = rest[..end].trim_end_matches("Spec").to_ascii_lowercase();
        out = format!("{}an object ({name}){}", &out[..i], &rest[end..]);
    }
    out
}

/// A spec's `fds`, as a list of `[name, spec]` pairs or an object, as
/// (name, raw spec) pairs; none if it is neither.
fn fd_entries(fds: &serde_json::value::RawValue) -> Vec<(String, &serde_json::value::RawValue)> {
    use serde_json::value::RawValue;
    let text = fds.get();
    if let Ok(list) = serde_json::from_str::<Vec<(serde_json::Value, &RawValue)>>(text) {
        return list
            .into_iter()
            .map(|(n, r)| (n.as_str().map_or_else(|| n.to_string(), str::to_string), r))
            .collect();
    }
    serde_json::from_str::<std::collections::BTreeMap<String, &RawValue>>(text)
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

/// The byte of `json` serde's error `e` points at (its line and column).
fn offset_of(json: &[u8], e: &serde_json::Error) -> Option<usize> {
    let (line, column) = (e.line(), e.column());
    if line == 0 {
        return None;
    }
    let start: usize = json
        .split(|&b| b == b'\n')
        .take(line - 1)
        .map(|l| l.len() + 1)
        .sum();
    Some((start + column.saturating_sub(1)).min(json.len()))
}
