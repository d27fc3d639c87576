//! `spec::parse_input` and `spec::validate` must never panic, whatever the
//! bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = chaperone::spec::parse_input(data) {
        let _ = chaperone::spec::validate(&input);
    }
});
