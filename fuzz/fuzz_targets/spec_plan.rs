//! The spec path short of opening files and spawning: parse, validate, and
//! resolve each process's child controls (rlimits, signals, umask, cwd,
//! timeouts, user and group), which the child's plan is built from. None of
//! it may panic; a refusal is an error that says something.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = chaperone::spec::parse_input(data) else {
        return;
    };
    if chaperone::spec::validate(&input).is_err() {
        return;
    }
    let defaults = chaperone::control::Defaults {
        pdeath_sig: Some(15),
        ..Default::default()
    };
    for (id, ps) in input.specs.iter() {
        if let Err(errs) = chaperone::control::resolve(id, ps, &defaults) {
            for e in errs {
                assert!(!e.to_string().is_empty(), "an error says what was wrong");
            }
        }
    }
});
