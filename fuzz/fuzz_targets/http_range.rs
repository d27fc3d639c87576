//! The HTTP API's output query parsers (`?start=&stop=`, `Range:`,
//! `encoding=`, `wait=`, `follow=`, `Accept-Encoding:`) must never panic, and
//! what they accept must be sane.
#![no_main]

use chaperone::http::{BodyEncoding, MAX_WAIT, Want, parse_output_query, parse_range};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

const KEYS: [&str; 5] = ["start", "stop", "encoding", "wait", "follow"];

fuzz_target!(|data: &[u8]| {
    // Fields split by NUL: the five query values, a Range header, an
    // Accept-Encoding header.
    let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let mut query = HashMap::new();
    for (k, v) in KEYS.iter().zip(&parts) {
        if !v.is_empty() {
            query.insert(k.to_string(), String::from_utf8_lossy(v).into_owned());
        }
    }
    let header = parts.get(KEYS.len()).copied().filter(|h| !h.is_empty());
    let accept = parts.get(KEYS.len() + 1).copied();
    let ranged = match parse_range(&query, header) {
        Ok(w) => {
            if let (Want::At(s), Some(e)) = (w.start, w.stop) {
                assert!(s <= e, "accepted a backwards range");
            }
            w.header
        }
        Err(e) => {
            assert!(!e.is_empty());
            false
        }
    };
    if let Ok(o) = parse_output_query(&query, accept, ranged) {
        assert!(o.wait.is_none_or(|w| w <= MAX_WAIT), "a wait past the cap");
        if ranged {
            assert_ne!(
                o.encoding,
                BodyEncoding::Zstd { content_encoding: true },
                "Content-Encoding with a Range"
            );
        }
        if o.follow {
            assert!(!matches!(o.encoding, BodyEncoding::Zstd { .. }));
        }
    }
});
