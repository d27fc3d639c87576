//! The HTTP API's range parser (`?start=&stop=` and `Range:`) must never
//! panic, and what it accepts must be a sane range.
#![no_main]

use chaperone::http::{Want, parse_range};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (a, b, header) = (parts.next(), parts.next(), parts.next());
    let mut query = HashMap::new();
    if let Some(a) = a {
        query.insert("start".to_string(), String::from_utf8_lossy(a).into_owned());
    }
    if let Some(b) = b {
        query.insert("stop".to_string(), String::from_utf8_lossy(b).into_owned());
    }
    if let Ok(w) = parse_range(&query, header) {
        if let (Want::At(s), Some(e)) = (w.start, w.stop) {
            assert!(s <= e, "accepted a backwards range");
        }
    }
});
