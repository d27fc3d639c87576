//! Signal dispositions the embedding program sets while the agent runs.
//!
//! Its own test binary: the test changes this process's dispositions, which
//! every spawn in the process reads (`sys/clone3.rs`), so no other test may
//! spawn meanwhile.

#[path = "../util/mod.rs"]
mod util;

use serde_json::json;
use util::*;

/// Signals the embedding program starts to ignore while the agent runs are
/// not ignored in the children it starts: a common one (SIGHUP) even when
/// ignored just before the spawn, an uncommon one (signal 40) once the
/// agent's 10 ms cache of its ignored signals has moved on (`sys/clone3.rs`;
/// under CHAPERONE_FORCE_FALLBACK every signal is reset one by one). The
/// spec's own ignore set still applies.
#[test]
fn spawn_resets_dispositions_the_embedder_set_after_the_agent_started() {
    let a = agent();
    // A spawn first, so that the agent has read its ignored signals.
    own_status(&a, "warm", json!(["/bin/true"]));
    let rt = 40;
    // SAFETY: setting dispositions of signals nothing in this test binary uses.
    let old_hup = unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let (_, hup_status) = own_status(&a, "hup", json!(["/bin/cat", "/proc/self/status"]));
    // SAFETY: as above.
    let old_rt = unsafe { libc::signal(rt, libc::SIG_IGN) };
    std::thread::sleep(std::time::Duration::from_millis(30));
    let (_, rt_status) = own_status(&a, "rt", json!(["/bin/cat", "/proc/self/status"]));
    let own = std::fs::read_to_string("/proc/self/status").expect("own status");
    start(
        &a,
        &json!({"specs": {"ign": {"argv": ["/bin/cat", "/proc/self/status"],
                                  "fds": [["stdout", mem_utf8()]],
                                  "signals": {"ignore": ["SIGTERM"]}}}}),
    );
    let ign = string_of(&wait(&a, "ign"), "stdout");
    // SAFETY: putting back what was there.
    unsafe {
        libc::signal(libc::SIGHUP, old_hup);
        libc::signal(rt, old_rt);
    }
    let hup = 1u64 << (libc::SIGHUP - 1);
    let rt_bit = 1u64 << (rt - 1);
    assert_eq!(
        status_mask(&own, "SigIgn") & (hup | rt_bit),
        hup | rt_bit,
        "{own}"
    );
    assert_eq!(status_mask(&hup_status, "SigIgn"), 0, "{hup_status}");
    assert_eq!(status_mask(&rt_status, "SigIgn"), 0, "{rt_status}");
    assert_eq!(
        status_mask(&ign, "SigIgn"),
        1 << (libc::SIGTERM - 1),
        "{ign}"
    );
}
