//! The statistics `chaperone bench` reports: a metric's summary over its runs,
//! outliers, and one command's ratio to another with a confidence interval.
//!
//! Conventions:
//! - σ is the sample standard deviation (n − 1 in the denominator).
//! - The median of an even count is the mean of the two middle values.
//! - An outlier is a run whose modified Z-score, 0.6745 · (x − median) / MAD,
//!   is beyond ±3.5 (Iglewicz and Hoaglin), MAD being the unscaled median
//!   absolute deviation. This holds up where a few very slow runs would drag a
//!   mean-and-σ test along with them. It is stricter than hyperfine's cut-off
//!   (|x − median| / MAD > 14.83); where MAD is 0 (most runs equal, as fault
//!   counts often are) nothing is called an outlier.
//! - A ratio is of means, its spread propagated from both commands' standard
//!   errors (the delta method), with a 95% interval r ± t σᵣ, t being
//!   Student's 97.5% quantile for the smaller sample's degrees of freedom
//!   (past 30, from its expansion in 1/df). With one run of either, there is no interval
//!   and no difference is called significant.

use serde::Serialize;

/// The modified Z-score beyond which a run is an outlier.
pub const OUTLIER_Z: f64 = 3.5;

/// z for a two-sided 95% normal interval.
const Z95: f64 = 1.959_963_984_540_054;

/// Student's t, 97.5% quantile, for `df` degrees of freedom (≥ 1).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        // The Cornish-Fisher expansion of t in 1/df around the normal
        // quantile, within 1e-5 of the exact value from 30 degrees of
        // freedom on (a table's rows rounded df up, giving t too small).
        _ => {
            let (z, v) = (Z95, df as f64);
            let z2 = z * z;
            z + z * (z2 + 1.0) / (4.0 * v)
                + z * ((5.0 * z2 + 16.0) * z2 + 3.0) / (96.0 * v * v)
                + z * (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) / (384.0 * v * v * v)
                + z * ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0)
                    / (92160.0 * v * v * v * v)
        }
    }
}

/// A metric's figures over a set of runs. In JSON, `stddev` is `null` for
/// one run, as hyperfine writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// How many runs had a value.
    pub n: usize,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one run).
    pub stddev: f64,
    /// Median.
    pub median: f64,
    /// Median absolute deviation from the median (unscaled).
    pub mad: f64,
    /// Runs more than [`OUTLIER_Z`] below the median.
    pub outliers_low: usize,
    /// Runs more than [`OUTLIER_Z`] above the median.
    pub outliers_high: usize,
}

impl Serialize for Summary {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut m = s.serialize_struct("Summary", 9)?;
        m.serialize_field("n", &self.n)?;
        m.serialize_field("min", &self.min)?;
        m.serialize_field("max", &self.max)?;
        m.serialize_field("mean", &self.mean)?;
        m.serialize_field("stddev", &self.spread())?;
        m.serialize_field("median", &self.median)?;
        m.serialize_field("mad", &self.mad)?;
        m.serialize_field("outliers_low", &self.outliers_low)?;
        m.serialize_field("outliers_high", &self.outliers_high)?;
        m.end()
    }
}

impl Summary {
    /// The standard deviation, `None` for one run (which has none).
    pub fn spread(&self) -> Option<f64> {
        (self.n > 1).then_some(self.stddev)
    }

    /// The summary of `values`, or `None` when there are none. Values that are
    /// not finite are ignored.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let stddev = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let median = median_sorted(&v);
        let mut dev: Vec<f64> = v.iter().map(|x| (x - median).abs()).collect();
        dev.sort_by(f64::total_cmp);
        let mad = median_sorted(&dev);
        let (mut outliers_low, mut outliers_high) = (0, 0);
        if mad > 0.0 {
            for x in &v {
                let z = 0.6745 * (x - median) / mad;
                if z > OUTLIER_Z {
                    outliers_high += 1;
                } else if z < -OUTLIER_Z {
                    outliers_low += 1;
                }
            }
        }
        Some(Summary {
            n,
            min: v[0],
            max: v[n - 1],
            mean,
            stddev,
            median,
            mad,
            outliers_low,
            outliers_high,
        })
    }

    /// All outliers, low and high.
    pub fn outliers(&self) -> usize {
        self.outliers_low + self.outliers_high
    }

    /// The standard error of the mean.
    pub fn stderr(&self) -> f64 {
        self.stddev / (self.n as f64).sqrt()
    }
}

/// The median of sorted, non-empty `v`.
fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// How one command's metric compares with a reference's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// mean(this) / mean(reference): above 1, this one is larger (slower).
    pub ratio: f64,
    /// Its propagated standard deviation.
    pub stddev: f64,
    /// The 95% interval's low end.
    pub low: f64,
    /// The 95% interval's high end.
    pub high: f64,
    /// Whether the interval leaves out 1: the two differ beyond noise.
    pub significant: bool,
}

impl Ratio {
    /// `this` against `reference`; `None` when the reference's mean is 0 (no
    /// ratio means anything then).
    pub fn of(this: &Summary, reference: &Summary) -> Option<Ratio> {
        if reference.mean == 0.0 || !reference.mean.is_finite() {
            return None;
        }
        let ratio = this.mean / reference.mean;
        let rel = |s: &Summary| {
            if s.mean == 0.0 {
                0.0
            } else {
                s.stderr() / s.mean
            }
        };
        let stddev = ratio.abs() * (rel(this).powi(2) + rel(reference).powi(2)).sqrt();
        let n = this.n.min(reference.n);
        if n < 2 {
            // No spread to go by: no interval, nothing significant.
            return Some(Ratio {
                ratio,
                stddev,
                low: f64::NEG_INFINITY,
                high: f64::INFINITY,
                significant: false,
            });
        }
        let t = t975(n - 1);
        let (low, high) = (ratio - t * stddev, ratio + t * stddev);
        Some(Ratio {
            ratio,
            stddev,
            low,
            high,
            significant: !(low <= 1.0 && 1.0 <= high),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn summary_of_a_hand_computed_set() {
        // 1 2 3 4 100: mean 22, median 3, deviations 2 1 0 1 97 → MAD 1.
        // σ² = (441 + 400 + 361 + 324 + 6084) / 4 = 1902.5.
        let s = Summary::of(&[4.0, 100.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(
            (s.n, s.min, s.max, s.median, s.mad),
            (5, 1.0, 100.0, 3.0, 1.0)
        );
        assert!(close(s.mean, 22.0));
        assert!(close(s.stddev, 1902.5f64.sqrt()));
        // z(100) = 0.6745 · 97 = 65.4 → high; z(1) = −1.35 → not an outlier.
        assert_eq!((s.outliers_low, s.outliers_high), (0, 1));
    }

    #[test]
    fn even_count_median_is_the_mean_of_the_middle_two() {
        let s = Summary::of(&[1.0, 2.0, 3.0, 10.0]).unwrap();
        assert_eq!(s.median, 2.5);
        // Deviations 1.5 0.5 0.5 7.5 → sorted 0.5 0.5 1.5 7.5 → MAD 1.
        assert_eq!(s.mad, 1.0);
        // z(10) = 0.6745 · 7.5 = 5.06 → high outlier.
        assert_eq!(s.outliers_high, 1);
    }

    #[test]
    fn low_outliers_are_counted_apart_from_high_ones() {
        let s = Summary::of(&[10.0, 10.0, 11.0, 9.0, 10.0, 0.0, 30.0]).unwrap();
        // median 10, deviations 0 0 1 1 0 10 20 → MAD 1.
        assert_eq!((s.median, s.mad), (10.0, 1.0));
        assert_eq!((s.outliers_low, s.outliers_high), (1, 1));
    }

    #[test]
    fn a_constant_set_has_no_spread_and_no_outliers() {
        let s = Summary::of(&[5.0; 4]).unwrap();
        assert_eq!((s.stddev, s.mad, s.outliers()), (0.0, 0.0, 0));
    }

    #[test]
    fn one_value_and_no_values() {
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!((s.n, s.mean, s.stddev, s.median), (1, 7.0, 0.0, 7.0));
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[f64::NAN]), None);
        assert_eq!(Summary::of(&[f64::NAN, 2.0]).unwrap().n, 1);
    }

    #[test]
    fn ratio_and_its_interval_by_hand() {
        // A: 10 11 12 13 14 → mean 12, σ = √2.5, se = √0.5.
        // B: 20 22 24 26 28 → mean 24, σ = √10,  se = √2.
        // r = 2; rel. errors √0.5/12 and √2/24 → σᵣ = 2 · √(0.5/144 + 2/576)
        //   = 2 · √(1/144) = 1/6.
        let a = Summary::of(&[10.0, 11.0, 12.0, 13.0, 14.0]).unwrap();
        let b = Summary::of(&[20.0, 22.0, 24.0, 26.0, 28.0]).unwrap();
        let r = Ratio::of(&b, &a).unwrap();
        assert!(close(r.ratio, 2.0));
        assert!(close(r.stddev, 1.0 / 6.0), "{}", r.stddev);
        // Five runs each: t(4) = 2.776.
        assert!(close(r.low, 2.0 - 2.776 / 6.0) && close(r.high, 2.0 + 2.776 / 6.0));
        assert!(r.significant);
    }

    #[test]
    fn one_run_gives_no_interval_and_nothing_significant() {
        let a = Summary::of(&[1.0]).unwrap();
        let b = Summary::of(&[5.0, 5.1]).unwrap();
        let r = Ratio::of(&b, &a).unwrap();
        assert!(close(r.ratio, 5.05));
        assert!(!r.significant);
        assert!(r.low.is_infinite() && r.high.is_infinite());
    }

    #[test]
    fn t_quantiles_fall_to_the_normal() {
        assert_eq!(t975(1), 12.706);
        assert_eq!(t975(9), 2.262);
        assert!(t975(30) > t975(31) && t975(31) > t975(50) && t975(50) > t975(500));
        assert!(t975(500) > t975(5000) && t975(5000) > Z95);
        // Exact quantiles (R: qt(0.975, df)) past the table.
        for (df, t) in [
            (31, 2.039513),
            (44, 2.015368),
            (49, 2.009575),
            (99, 1.984217),
            (199, 1.971957),
            (1000, 1.962339),
        ] {
            assert!(
                (t975(df) - t).abs() < 2e-5,
                "{df}: {} against {t}",
                t975(df)
            );
        }
    }

    #[test]
    fn overlapping_noise_is_not_significant() {
        let a = Summary::of(&[10.0, 14.0, 9.0, 15.0]).unwrap();
        let b = Summary::of(&[11.0, 13.0, 10.0, 14.5]).unwrap();
        let r = Ratio::of(&b, &a).unwrap();
        assert!(r.low < 1.0 && r.high > 1.0, "{r:?}");
        assert!(!r.significant);
        // Against itself: exactly 1, never significant.
        let same = Ratio::of(&a, &a).unwrap();
        assert_eq!(same.ratio, 1.0);
        assert!(!same.significant);
    }

    #[test]
    fn a_zero_reference_has_no_ratio() {
        let z = Summary::of(&[0.0, 0.0]).unwrap();
        let a = Summary::of(&[1.0, 2.0]).unwrap();
        assert_eq!(Ratio::of(&a, &z), None);
        assert_eq!(Ratio::of(&z, &a).unwrap().ratio, 0.0);
    }
}
