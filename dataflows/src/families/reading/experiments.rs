//! A/B analysis: each group against control, with a 95 % interval for the difference.

/// A group's completion rate against the control's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AbTest {
    pub rate: f64,
    pub diff: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// The 97.5 % quantile of the standard normal distribution, Φ⁻¹(0.975).
pub const Z_95: f64 = 1.959963984540054;

/// Wilson's score interval for `c` successes in `n` trials (`n` > 0).
pub fn wilson(c: i64, n: i64) -> (f64, f64) {
    let (n, p, z2) = (n as f64, c as f64 / n as f64, Z_95 * Z_95);
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z_95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    (centre - half, centre + half)
}

impl AbTest {
    /// `(completions, sessions)` of a group and of the control (both with sessions).
    ///
    /// The interval of `p₁ − p₀` is Newcombe's hybrid score interval (his method 10),
    /// built from each rate's Wilson interval `[l, u]`:
    /// `d − √((p₁−l₁)² + (u₀−p₀)²)` to `d + √((u₁−p₁)² + (p₀−l₀)²)`. Unlike the Wald
    /// interval it stays honest on small samples and rates near 0 or 1: 1/1 against 0/1
    /// is not significant.
    pub fn of((c1, n1): (i64, i64), (c0, n0): (i64, i64)) -> Self {
        let (p1, p0) = (c1 as f64 / n1 as f64, c0 as f64 / n0 as f64);
        let ((l1, u1), (l0, u0)) = (wilson(c1, n1), wilson(c0, n0));
        let diff = p1 - p0;
        AbTest {
            rate: p1,
            diff,
            ci_low: diff - ((p1 - l1).powi(2) + (u0 - p0).powi(2)).sqrt(),
            ci_high: diff + ((u1 - p1).powi(2) + (p0 - l0).powi(2)).sqrt(),
        }
    }
    /// The control against itself: no difference, no interval.
    pub fn control((c, n): (i64, i64)) -> Self {
        AbTest {
            rate: if n > 0 { c as f64 / n as f64 } else { 0.0 },
            diff: 0.0,
            ci_low: 0.0,
            ci_high: 0.0,
        }
    }
    /// The interval leaves out zero.
    pub fn significant(&self) -> bool {
        self.ci_low > 0.0 || self.ci_high < 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_samples_are_not_significant_and_large_differences_are() {
        assert!(!AbTest::of((1, 1), (0, 1)).significant());
        assert!((AbTest::of((1, 1), (0, 1)).ci_low + 0.1221).abs() < 5e-5);
        assert!(AbTest::of((600, 1000), (500, 1000)).significant());
        assert!(!AbTest::of((510, 1000), (500, 1000)).significant());
    }

    #[test]
    fn wilson_matches_a_published_value() {
        // Newcombe (1998), table I: 81/263 → 0.2553 to 0.3662
        let (l, u) = wilson(81, 263);
        assert!(
            (l - 0.2553).abs() < 5e-5 && (u - 0.3662).abs() < 5e-5,
            "{l} {u}"
        );
        // and the difference example: 56/70 − 48/80 → 0.0524 to 0.3339
        let ab = AbTest::of((56, 70), (48, 80));
        assert!((ab.ci_low - 0.0524).abs() < 5e-5, "{}", ab.ci_low);
        assert!((ab.ci_high - 0.3339).abs() < 5e-5, "{}", ab.ci_high);
    }
}
