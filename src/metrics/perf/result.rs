//! [`PerfRes`]: a process's perf counters as its result reports them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Extension: a process's perf counters, the `perf` field of its result.
///
/// One key per requested event (`"task_clock"` in ns, `"page_faults"`, …), `null`
/// when it could not be counted, plus the keys below.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerfRes {
    /// Event name → count (`null`: not counted; see `unavailable`).
    #[serde(flatten)]
    pub counts: BTreeMap<String, Option<u64>>,
    /// Events counted in user space only, because the kernel demanded
    /// `exclude_kernel` (`perf_event_paranoid` without `CAP_PERFMON`).
    #[serde(default)]
    pub exclude_kernel: Vec<String>,
    /// Event name → why its count is `null`.
    #[serde(default)]
    pub unavailable: BTreeMap<String, String>,
    /// Events whose counters were multiplexed: the fraction of the time they ran.
    /// Their counts are extrapolated (`raw × time_enabled / time_running`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scaled: BTreeMap<String, f64>,
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn perf_object_round_trips_with_event_keys_beside_the_notes() {
        let mut perf = PerfRes::default();
        perf.counts.insert("task_clock".into(), Some(1_234_567));
        perf.counts.insert("cycles".into(), None);
        perf.unavailable
            .insert("cycles".into(), "no hardware PMU (ENOENT)".into());
        let v = serde_json::to_value(&perf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"task_clock": 1_234_567, "cycles": null, "exclude_kernel": [],
                   "unavailable": {"cycles": "no hardware PMU (ENOENT)"}})
        );
        let back: PerfRes = serde_json::from_value(v).unwrap();
        assert_eq!(back, perf);
    }
}
