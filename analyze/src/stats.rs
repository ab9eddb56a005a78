//! Robust trend and change statistics over short series (one point per window).
//!
//! Series here are per-window aggregates (a few hundred to a few thousand points), so the
//! O(n²) estimators (Theil–Sen, Mann–Kendall) are cheap; series longer than
//! [`MAX_POINTS`] are thinned by averaging neighbours first.

/// Longest series the quadratic estimators see; longer ones are averaged down to this.
pub const MAX_POINTS: usize = 1500;

/// Averages neighbouring points so that at most [`MAX_POINTS`] remain.
pub fn thin(xs: &[f64], ys: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let n = xs.len().min(ys.len());
    if n <= MAX_POINTS {
        return (xs[..n].to_vec(), ys[..n].to_vec());
    }
    let group = n.div_ceil(MAX_POINTS);
    let mut ox = Vec::with_capacity(MAX_POINTS);
    let mut oy = Vec::with_capacity(MAX_POINTS);
    for chunk in (0..n).collect::<Vec<_>>().chunks(group) {
        let k = chunk.len() as f64;
        ox.push(chunk.iter().map(|&i| xs[i]).sum::<f64>() / k);
        oy.push(chunk.iter().map(|&i| ys[i]).sum::<f64>() / k);
    }
    (ox, oy)
}

/// Median of a slice (sorts a copy). `NaN` for an empty slice.
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Theil–Sen slope: the median of the slopes of all pairs of points. Robust to up to ~29%
/// outliers, which per-window p99s have plenty of.
pub fn theil_sen(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return None;
    }
    let mut slopes = Vec::with_capacity(n * (n - 1) / 2);
    for i in 0..n {
        for j in (i + 1)..n {
            let dx = xs[j] - xs[i];
            if dx != 0.0 {
                slopes.push((ys[j] - ys[i]) / dx);
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    let mid = slopes.len() / 2;
    let (_, m, _) = slopes.select_nth_unstable_by(mid, f64::total_cmp);
    Some(*m)
}

/// Result of a Mann–Kendall trend test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannKendall {
    /// The S statistic (concordant minus discordant pairs).
    pub s: f64,
    /// Normal approximation of S.
    pub z: f64,
    /// Two-sided p-value.
    pub p_value: f64,
}

/// Mann–Kendall test for a monotonic trend (normal approximation with tie correction).
pub fn mann_kendall(ys: &[f64]) -> Option<MannKendall> {
    let n = ys.len();
    if n < 4 {
        return None;
    }
    let mut s = 0i64;
    for i in 0..n {
        for j in (i + 1)..n {
            s += match ys[j].partial_cmp(&ys[i]) {
                Some(std::cmp::Ordering::Greater) => 1,
                Some(std::cmp::Ordering::Less) => -1,
                _ => 0,
            };
        }
    }
    // Tie correction: groups of equal values reduce the variance of S.
    let mut sorted = ys.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && sorted[j] == sorted[i] {
            j += 1;
        }
        let t = (j - i) as f64;
        if t > 1.0 {
            tie_term += t * (t - 1.0) * (2.0 * t + 5.0);
        }
        i = j;
    }
    let nf = n as f64;
    let var = (nf * (nf - 1.0) * (2.0 * nf + 5.0) - tie_term) / 18.0;
    if var <= 0.0 {
        return Some(MannKendall {
            s: s as f64,
            z: 0.0,
            p_value: 1.0,
        });
    }
    let sf = s as f64;
    let z = if s > 0 {
        (sf - 1.0) / var.sqrt()
    } else if s < 0 {
        (sf + 1.0) / var.sqrt()
    } else {
        0.0
    };
    let p_value = 2.0 * (1.0 - normal_cdf(z.abs()));
    Some(MannKendall {
        s: sf,
        z,
        p_value: p_value.clamp(0.0, 1.0),
    })
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 erf, error < 1.5e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    let erf = if x >= 0.0 { erf } else { -erf };
    0.5 * (1.0 + erf)
}

/// Two-sided 97.5% quantile of Student's t with `df` degrees of freedom (95% intervals).
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.96 + 2.4 / df as f64,
    }
}

/// Ordinary least squares fit of `y = intercept + slope · x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ols {
    /// Slope.
    pub slope: f64,
    /// Intercept.
    pub intercept: f64,
    /// Standard error of the slope.
    pub slope_se: f64,
    /// Points fitted.
    pub n: usize,
    /// Sum of squared residuals.
    pub sse: f64,
}

impl Ols {
    /// 95% confidence interval of the slope.
    pub fn slope_ci95(&self) -> (f64, f64) {
        let half = t_975(self.n.saturating_sub(2)) * self.slope_se;
        (self.slope - half, self.slope + half)
    }
}

/// Least-squares line through the points; `None` with fewer than 3 points or no x spread.
pub fn ols(xs: &[f64], ys: &[f64]) -> Option<Ols> {
    let n = xs.len().min(ys.len());
    if n < 3 {
        return None;
    }
    let nf = n as f64;
    let mx = xs[..n].iter().sum::<f64>() / nf;
    let my = ys[..n].iter().sum::<f64>() / nf;
    let mut sxx = 0.0;
    let mut sxy = 0.0;
    for i in 0..n {
        sxx += (xs[i] - mx) * (xs[i] - mx);
        sxy += (xs[i] - mx) * (ys[i] - my);
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let sse: f64 = (0..n)
        .map(|i| {
            let r = ys[i] - intercept - slope * xs[i];
            r * r
        })
        .sum();
    let slope_se = (sse / (nf - 2.0) / sxx).sqrt();
    Some(Ols {
        slope,
        intercept,
        slope_se,
        n,
        sse,
    })
}

/// A step change in the level of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChangePoint {
    /// Index of the first point after the change.
    pub index: usize,
    /// Mean before.
    pub before: f64,
    /// Mean after.
    pub after: f64,
    /// Welch-like t statistic of the difference of the two means.
    pub t_stat: f64,
}

/// CUSUM change-point detector (single change, mean shift). The split is where the
/// cumulative sum of deviations from the overall mean peaks. It is accepted only when
/// the two means differ by `min_rel` of the earlier level, the difference is large
/// against the noise (t > 6), and a step explains the series better than a straight line
/// (a steady trend also makes CUSUM peak, in the middle, and must not read as a step).
pub fn cusum_change_point(ys: &[f64], min_rel: f64) -> Option<ChangePoint> {
    let n = ys.len();
    if n < 8 {
        return None;
    }
    let mean = ys.iter().sum::<f64>() / n as f64;
    let mut cum = 0.0;
    let mut best = (0usize, 0.0f64);
    for (k, y) in ys.iter().enumerate().take(n - 1) {
        cum += y - mean;
        let split = k + 1;
        if split >= 3 && n - split >= 3 && cum.abs() > best.1 {
            best = (split, cum.abs());
        }
    }
    let split = best.0;
    if split == 0 {
        return None;
    }
    let (a, b) = ys.split_at(split);
    let ma = a.iter().sum::<f64>() / a.len() as f64;
    let mb = b.iter().sum::<f64>() / b.len() as f64;
    let sse_step: f64 = a.iter().map(|y| (y - ma).powi(2)).sum::<f64>()
        + b.iter().map(|y| (y - mb).powi(2)).sum::<f64>();
    let xs: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let line = ols(&xs, ys)?;
    let pooled_sd = (sse_step / (n as f64 - 2.0)).sqrt();
    let denom = pooled_sd * (1.0 / a.len() as f64 + 1.0 / b.len() as f64).sqrt();
    let t_stat = if denom > 0.0 {
        (mb - ma).abs() / denom
    } else {
        f64::INFINITY
    };
    let rel = if ma.abs() > 0.0 {
        (mb - ma).abs() / ma.abs()
    } else {
        f64::INFINITY
    };
    // A step must beat the straight line clearly (a pure step leaves far less residual).
    if rel >= min_rel && t_stat > 6.0 && sse_step < 0.7 * line.sse {
        Some(ChangePoint {
            index: split,
            before: ma,
            after: mb,
            t_stat,
        })
    } else {
        None
    }
}

/// How a resource grows over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrowthShape {
    /// No significant growth.
    Flat,
    /// Steady growth that does not slow down: the signature of a leak.
    Linear,
    /// Growth that levels off: a cache or pool warming up.
    Plateau,
    /// Significant decrease.
    Shrinking,
}

/// Growth analysis of a series (x in hours).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Growth {
    /// Shape.
    pub shape: GrowthShape,
    /// Whole-run least-squares fit.
    pub fit: Ols,
    /// Slope over the first half of the run.
    pub first_half_slope: f64,
    /// Slope over the second half of the run.
    pub second_half_slope: f64,
    /// Fit over the second half (the current trend, used for projections).
    pub recent: Ols,
}

/// Tells a leak from a warm-up. Growth is significant when the slope's 95% interval
/// excludes zero and the growth over the run is at least `min_rel` of the mean level. A
/// leak keeps its slope in the second half; a warm-up's second-half slope falls below a
/// third of the first half's (or is not significant).
pub fn growth(xs: &[f64], ys: &[f64], min_rel: f64) -> Option<Growth> {
    let n = xs.len().min(ys.len());
    if n < 6 {
        return None;
    }
    let fit = ols(xs, ys)?;
    let half = n / 2;
    let first = ols(&xs[..half], &ys[..half])?;
    let recent = ols(&xs[half..n], &ys[half..n])?;
    let span = xs[n - 1] - xs[0];
    let level = ys[..n].iter().map(|y| y.abs()).sum::<f64>() / n as f64;
    let (lo, hi) = fit.slope_ci95();
    let total = fit.slope * span;
    let meaningful = level <= 0.0 || total.abs() >= min_rel * level;
    let shape = if lo > 0.0 && meaningful {
        let (recent_lo, _) = recent.slope_ci95();
        if recent.slope < first.slope / 3.0 || recent_lo <= 0.0 {
            GrowthShape::Plateau
        } else {
            GrowthShape::Linear
        }
    } else if hi < 0.0 && meaningful {
        GrowthShape::Shrinking
    } else {
        GrowthShape::Flat
    };
    Some(Growth {
        shape,
        fit,
        first_half_slope: first.slope,
        second_half_slope: recent.slope,
        recent,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Deterministic pseudo-random noise in [-1, 1] (xorshift), so tests are reproducible.
    pub(crate) fn noise(seed: &mut u64) -> f64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % 20_001) as f64 / 10_000.0 - 1.0
    }

    #[test]
    fn theil_sen_recovers_slope_despite_outliers() {
        let mut seed = 7;
        let xs: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let mut ys: Vec<f64> = xs
            .iter()
            .map(|x| 3.0 * x + 10.0 + noise(&mut seed))
            .collect();
        for i in (0..100).step_by(10) {
            ys[i] += 500.0; // 10% wild outliers
        }
        let slope = theil_sen(&xs, &ys).unwrap();
        assert!((slope - 3.0).abs() < 0.1, "slope {slope}");
    }

    #[test]
    fn mann_kendall_finds_trend_and_not_noise() {
        let mut seed = 11;
        let trend: Vec<f64> = (0..60).map(|i| i as f64 * 0.2 + noise(&mut seed)).collect();
        let mk = mann_kendall(&trend).unwrap();
        assert!(mk.p_value < 0.001 && mk.z > 0.0, "{mk:?}");
        let flat: Vec<f64> = (0..60).map(|_| 100.0 + 5.0 * noise(&mut seed)).collect();
        let mk = mann_kendall(&flat).unwrap();
        assert!(mk.p_value > 0.01, "{mk:?}");
        let constant = vec![5.0; 20];
        assert_eq!(mann_kendall(&constant).unwrap().p_value, 1.0);
    }

    #[test]
    fn normal_cdf_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-3);
        assert!((normal_cdf(-1.96) - 0.025).abs() < 1e-3);
    }

    #[test]
    fn cusum_dates_a_step_and_ignores_trend_and_noise() {
        let mut seed = 3;
        let step: Vec<f64> = (0..60)
            .map(|i| if i < 42 { 100.0 } else { 140.0 } + 3.0 * noise(&mut seed))
            .collect();
        let cp = cusum_change_point(&step, 0.1).unwrap();
        assert!((41..=43).contains(&cp.index), "{cp:?}");
        assert!(cp.after > cp.before);
        let trend: Vec<f64> = (0..60)
            .map(|i| 100.0 + i as f64 + noise(&mut seed))
            .collect();
        assert!(cusum_change_point(&trend, 0.1).is_none());
        let flat: Vec<f64> = (0..60).map(|_| 100.0 + 10.0 * noise(&mut seed)).collect();
        assert!(cusum_change_point(&flat, 0.1).is_none());
    }

    #[test]
    fn ols_interval_covers_true_slope() {
        let mut seed = 5;
        let xs: Vec<f64> = (0..50).map(|i| i as f64 / 10.0).collect();
        let ys: Vec<f64> = xs
            .iter()
            .map(|x| 2.0 * x + 1.0 + 0.5 * noise(&mut seed))
            .collect();
        let fit = ols(&xs, &ys).unwrap();
        let (lo, hi) = fit.slope_ci95();
        assert!(lo < 2.0 && 2.0 < hi && hi - lo < 0.5, "{lo}..{hi}");
    }

    #[test]
    fn growth_tells_leak_from_warmup_from_flat() {
        let mut seed = 9;
        let xs: Vec<f64> = (0..30).map(|i| i as f64 / 60.0).collect(); // 30 min, in hours
                                                                       // 512 MB/hour leak on a 2 GB base, 5 MB of noise.
        let leak: Vec<f64> = xs
            .iter()
            .map(|x| 2048.0 + 512.0 * x + 5.0 * noise(&mut seed))
            .collect();
        let g = growth(&xs, &leak, 0.01).unwrap();
        assert_eq!(g.shape, GrowthShape::Linear, "{g:?}");
        assert!((g.fit.slope - 512.0).abs() < 50.0);
        // Warm-up: rises 300 MB with a 4-minute time constant, then flat.
        let warm: Vec<f64> = xs
            .iter()
            .map(|x| 2048.0 + 300.0 * (1.0 - (-x * 15.0).exp()) + 5.0 * noise(&mut seed))
            .collect();
        assert_eq!(
            growth(&xs, &warm, 0.01).unwrap().shape,
            GrowthShape::Plateau
        );
        let flat: Vec<f64> = xs
            .iter()
            .map(|_| 2048.0 + 20.0 * noise(&mut seed))
            .collect();
        assert_eq!(growth(&xs, &flat, 0.01).unwrap().shape, GrowthShape::Flat);
    }

    #[test]
    fn thin_keeps_short_series_and_averages_long_ones() {
        let xs: Vec<f64> = (0..10).map(f64::from).collect();
        assert_eq!(thin(&xs, &xs).0.len(), 10);
        let long: Vec<f64> = (0..4000).map(f64::from).collect();
        let (tx, ty) = thin(&long, &long);
        assert!(tx.len() <= MAX_POINTS && tx == ty);
    }
}
