//! Decoding one `read` of a counter or a group ([`parse_read`]) and putting its
//! values, scaled when multiplexed, into a result ([`apply_reading`]).

use super::{Event, PerfRes};

/// One read of a group (or of a single counter): the times and the raw values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Nanoseconds the counters were enabled.
    pub time_enabled: u64,
    /// Nanoseconds they were actually counting (less when multiplexed).
    pub time_running: u64,
    /// One raw value per counter, leader first.
    pub values: Vec<u64>,
}

/// Why a read buffer does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Shorter than its layout says.
    #[error("perf read buffer too short: {0} bytes")]
    Short(usize),
    /// The group holds a different number of counters than opened.
    #[error("perf group has {got} counters, expected {want}")]
    Count {
        /// In the buffer.
        got: u64,
        /// Opened.
        want: usize,
    },
}

fn u64_at(buf: &[u8], i: usize) -> Option<u64> {
    let bytes = buf.get(i * 8..i * 8 + 8)?;
    Some(u64::from_ne_bytes(bytes.try_into().ok()?))
}

/// Parses what `read` returned for a counter opened with
/// `TOTAL_TIME_ENABLED | TOTAL_TIME_RUNNING`, and with `group`, `PERF_FORMAT_GROUP`
/// on a leader of `n` counters:
///
/// * group: `nr, time_enabled, time_running, value[nr]`;
/// * single: `value, time_enabled, time_running`.
pub fn parse_read(buf: &[u8], group: bool, n: usize) -> Result<Reading, ReadError> {
    let short = || ReadError::Short(buf.len());
    if group {
        let nr = u64_at(buf, 0).ok_or_else(short)?;
        if usize::try_from(nr).ok() != Some(n) {
            return Err(ReadError::Count { got: nr, want: n });
        }
        let values = (0..n)
            .map(|i| u64_at(buf, 3 + i).ok_or_else(short))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Reading {
            time_enabled: u64_at(buf, 1).ok_or_else(short)?,
            time_running: u64_at(buf, 2).ok_or_else(short)?,
            values,
        })
    } else {
        Ok(Reading {
            values: vec![u64_at(buf, 0).ok_or_else(short)?],
            time_enabled: u64_at(buf, 1).ok_or_else(short)?,
            time_running: u64_at(buf, 2).ok_or_else(short)?,
        })
    }
}

/// Puts the values of one reading of `events` into `res`: scaled by
/// `time_enabled / time_running` when the counters were multiplexed (and the
/// fraction recorded in `res.scaled`), `null` when they never ran although enabled.
pub fn apply_reading(events: &[Event], reading: &Reading, res: &mut PerfRes) {
    let (enabled, running) = (reading.time_enabled, reading.time_running);
    for (&event, &raw) in events.iter().zip(&reading.values) {
        let name = event.name().to_string();
        if running == 0 && enabled > 0 {
            res.counts.insert(name.clone(), None);
            res.unavailable.insert(
                name,
                "never scheduled on a counter (time_running 0): the PMU was busy".into(),
            );
        } else if running < enabled {
            let scaled = u128::from(raw) * u128::from(enabled) / u128::from(running);
            res.counts.insert(
                name.clone(),
                Some(u64::try_from(scaled).unwrap_or(u64::MAX)),
            );
            res.scaled.insert(name, running as f64 / enabled as f64);
        } else {
            res.counts.insert(name, Some(raw));
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::metrics::perf::PerfRes;

    fn words(ws: &[u64]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn parse_software_group() {
        let buf = words(&[3, 1000, 1000, 5_000_000, 42, 40]);
        let r = parse_read(&buf, true, 3).unwrap();
        assert_eq!(r.time_enabled, 1000);
        assert_eq!(r.values, vec![5_000_000, 42, 40]);
        assert_eq!(
            parse_read(&buf, true, 4),
            Err(ReadError::Count { got: 3, want: 4 })
        );
        assert_eq!(parse_read(&buf[..40], true, 3), Err(ReadError::Short(40)));
    }

    #[test]
    fn parse_single_counter() {
        let r = parse_read(&words(&[7, 10, 10]), false, 1).unwrap();
        assert_eq!(r.values, vec![7]);
        assert_eq!((r.time_enabled, r.time_running), (10, 10));
        assert!(parse_read(&words(&[7, 10]), false, 1).is_err());
    }

    #[test]
    fn hardware_group_is_scaled_when_multiplexed() {
        // cycles, instructions, cache_misses, branch_misses, running half the time.
        let buf = words(&[4, 2_000, 1_000, 100, 300, 7, 9]);
        let hw = [
            Event::Cycles,
            Event::Instructions,
            Event::CacheMisses,
            Event::BranchMisses,
        ];
        let reading = parse_read(&buf, true, 4).unwrap();
        let mut res = PerfRes::default();
        apply_reading(&hw, &reading, &mut res);
        assert_eq!(res.counts.get("cycles"), Some(&Some(200)));
        assert_eq!(res.counts.get("instructions"), Some(&Some(600)));
        assert_eq!(res.counts.get("branch_misses"), Some(&Some(18)));
        assert_eq!(res.scaled.get("cycles"), Some(&0.5));
        assert!(res.unavailable.is_empty());
    }

    #[test]
    fn group_that_never_ran_is_null() {
        let reading = parse_read(&words(&[1, 500, 0, 0]), true, 1).unwrap();
        let mut res = PerfRes::default();
        apply_reading(&[Event::Cycles], &reading, &mut res);
        assert_eq!(res.counts.get("cycles"), Some(&None));
        assert!(res.unavailable.contains_key("cycles"));
        // Never enabled (the child failed before exec): zeros, not nulls.
        let reading = parse_read(&words(&[1, 0, 0, 0]), true, 1).unwrap();
        let mut res = PerfRes::default();
        apply_reading(&[Event::TaskClock], &reading, &mut res);
        assert_eq!(res.counts.get("task_clock"), Some(&Some(0)));
    }
}
