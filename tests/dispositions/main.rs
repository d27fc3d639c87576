//! Signal dispositions the embedding program sets while the agent runs.
//!
//! Its own test binary: the test changes this process's dispositions, which
//! every spawn in the process reads (`sys/clone3.rs`), so no other test may
//! spawn meanwhile.

#[path = "../util/mod.rs"]
mod util;

use chaperone::result::State;
use serde_json::{Value, json};
use util::*;

fn own_status(a: &chaperone::Agent, id: &str, argv: Value) -> (chaperone::result::ProcRes, String) {
    start(
        a,
        &json!({"specs": {id: {"argv": argv, "fds": [["stdout", mem_utf8()]]}}}),
    );
    let res = wait(a, id);
    assert_eq!(res.state, State::Terminated, "{:?}", res.errors);
    let text = string_of(&res, "stdout");
    (res, text)
}

extern "C" fn agent_side_handler(_: libc::c_int) {}

/// Dispositions the embedding program sets after the agent started are
/// reset too: an ignored SIGHUP and a SIGUSR2 handler set 30 ms before the
/// spawn reach the child as defaults (handlers cleared by the kernel with
/// `CLONE_CLEAR_SIGHAND`, ignored signals read at most 10 ms before; or every
/// signal reset one by one under CHAPERONE_FORCE_FALLBACK). The spec's own ignore set
/// is still applied on top. (exec resets handlers by itself; what the
/// SigCgt checks add is that the handler set in this process is not kept.)
#[test]
fn spawn_resets_dispositions_the_embedder_set_after_the_agent_started() {
    let a = agent();
    // A spawn first, so that anything read once and kept would be stale.
    own_status(&a, "warm", json!(["/bin/true"]));
    let handler = agent_side_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: setting dispositions of signals nothing in this test binary uses.
    let (old_hup, old_usr2) = unsafe {
        (
            libc::signal(libc::SIGHUP, libc::SIG_IGN),
            libc::signal(libc::SIGUSR2, handler),
        )
    };
    // The agent reads which signals it ignores at most every 10 ms
    // (sys/clone3.rs): a spawn later than that sees the change.
    std::thread::sleep(std::time::Duration::from_millis(30));
    let (_, status) = own_status(&a, "cat", json!(["/bin/cat", "/proc/self/status"]));
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
        libc::signal(libc::SIGUSR2, old_usr2);
    }
    let hup = 1u64 << (libc::SIGHUP - 1);
    let usr2 = 1u64 << (libc::SIGUSR2 - 1);
    assert_ne!(
        status_mask(&own, "SigIgn") & hup,
        0,
        "the agent ignored SIGHUP"
    );
    assert_ne!(
        status_mask(&own, "SigCgt") & usr2,
        0,
        "the agent caught SIGUSR2"
    );
    assert_eq!(status_mask(&status, "SigIgn"), 0, "{status}");
    assert_eq!(status_mask(&status, "SigCgt"), 0, "{status}");
    assert_eq!(
        status_mask(&ign, "SigIgn"),
        1 << (libc::SIGTERM - 1),
        "{ign}"
    );
    assert_eq!(status_mask(&ign, "SigCgt"), 0, "{ign}");
}
