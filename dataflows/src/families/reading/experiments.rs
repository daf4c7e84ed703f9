//! A/B analysis: each group against control, with a 95 % interval.

/// A group's completion rate against the control's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AbTest {
    pub rate: f64,
    pub diff: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// The 97.5 % quantile of the standard normal distribution.
pub const Z_95: f64 = 1.959963984540054;

impl AbTest {
    /// `(completions, sessions)` of a group and of the control.
    pub fn of((c1, n1): (i64, i64), (c0, n0): (i64, i64)) -> Self {
        let p = |c: i64, n: i64| if n > 0 { c as f64 / n as f64 } else { 0.0 };
        let (p1, p0) = (p(c1, n1), p(c0, n0));
        let var = |p: f64, n: i64| if n > 0 { p * (1.0 - p) / n as f64 } else { 0.0 };
        let diff = p1 - p0;
        let half = Z_95 * (var(p1, n1) + var(p0, n0)).sqrt();
        AbTest {
            rate: p1,
            diff,
            ci_low: diff - half,
            ci_high: diff + half,
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
