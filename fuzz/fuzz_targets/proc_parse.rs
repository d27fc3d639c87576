//! The `/proc` parsers (`stat`, `statm`, `io`) and the perf read-buffer
//! parser must never panic, whatever the kernel (or a fuzzer) hands them:
//! a process name with spaces and parentheses, a field missing or huge, a
//! buffer short of its header.
#![no_main]

use chaperone::metrics::{StatContext, parse_io, parse_stat, parse_statm, perf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let ctx = StatContext {
        boot_time_ns: 1_700_000_000_000_000_000,
        clk_tck: 100,
        page_size: 4096,
    };
    match pick % 4 {
        0 => {
            let _ = parse_stat(&text, &ctx);
        }
        1 => {
            let _ = parse_statm(&text, ctx.page_size);
        }
        2 => {
            let _ = parse_io(&text);
        }
        _ => {
            let n = usize::from(pick >> 2) % 12;
            let _ = perf::parse_read(rest, pick & 0x80 != 0, n);
        }
    }
});
