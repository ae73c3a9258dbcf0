//! The expected values a scenario derives from what it injected: binomial intervals for
//! loss, quantiles of the jitter distribution, medians.

/// The central `level` interval of Binomial(n, p) as counts `(lo, hi)`: the smallest `lo`
/// with P(X ≤ lo) ≥ (1 − level)/2 and the smallest `hi` with P(X ≤ hi) ≥ (1 + level)/2.
/// Exact (the pmf summed in log space), so it holds for small n and p too.
pub fn binomial_interval(n: u64, p: f64, level: f64) -> (u64, u64) {
    assert!(n > 0 && (0.0..=1.0).contains(&p), "n={n} p={p}");
    let tail = (1.0 - level) / 2.0;
    let ln_p = p.ln();
    let ln_q = (1.0 - p).ln();
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut cdf = 0.0;
    let mut lo = None;
    for k in 0..=n {
        if k > 0 {
            ln_choose += ((n - k + 1) as f64).ln() - (k as f64).ln();
        }
        let pmf = if p == 0.0 {
            if k == 0 {
                1.0
            } else {
                0.0
            }
        } else if p == 1.0 {
            if k == n {
                1.0
            } else {
                0.0
            }
        } else {
            (ln_choose + k as f64 * ln_p + (n - k) as f64 * ln_q).exp()
        };
        cdf += pmf;
        if lo.is_none() && cdf >= tail {
            lo = Some(k);
        }
        if cdf >= 1.0 - tail {
            return (lo.unwrap_or(k), k);
        }
    }
    (lo.unwrap_or(n), n)
}

/// The same interval as percentages of n.
pub fn binomial_interval_percent(n: u64, p: f64, level: f64) -> (f64, f64) {
    let (lo, hi) = binomial_interval(n, p, level);
    (lo as f64 * 100.0 / n as f64, hi as f64 * 100.0 / n as f64)
}

/// Two-sided z for 99 %.
pub const Z_99: f64 = 2.5758;

/// The largest difference between two loss rates, `k1/n1` and `k2/n2`, that two binomial
/// samples of one and the same rate still show in `z` of their runs (99 % with [`Z_99`]):
/// z · √(p̂(1 − p̂)(1/n1 + 1/n2)), p̂ the pooled rate. Comparing one tool's figure with
/// another's is this, not one figure against the other's interval as if it were exact:
/// each carries its own sampling error.
pub fn max_rate_difference(k1: u64, n1: u64, k2: u64, n2: u64, z: f64) -> f64 {
    let pooled = (k1 + k2) as f64 / (n1 + n2) as f64;
    z * (pooled * (1.0 - pooled) * (1.0 / n1 as f64 + 1.0 / n2 as f64)).sqrt()
}

/// The `q` quantile of the sum of two independent U(−a, +a) (a triangle on [−2a, 2a]):
/// what a round trip adds when each way gets its own uniform jitter of half-width `a`.
pub fn triangle_quantile(a: f64, q: f64) -> f64 {
    let w = 2.0 * a;
    if q <= 0.5 {
        -w + w * (2.0 * q).sqrt()
    } else {
        w - w * (2.0 * (1.0 - q)).sqrt()
    }
}

/// The standard deviation of that sum: √2 · a/√3.
pub fn triangle_stddev(a: f64) -> f64 {
    (2.0 * a * a / 3.0).sqrt()
}

/// Relative difference of `measured` from `expected`.
pub fn rel_diff(measured: f64, expected: f64) -> f64 {
    (measured - expected).abs() / expected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_interval_matches_the_normal_approximation_for_large_n() {
        // n = 2500, p = 0.05: mean 125, sd 10.9, ±2.576 sd ≈ [97, 153].
        let (lo, hi) = binomial_interval(2500, 0.05, 0.99);
        assert!((96..=99).contains(&lo), "lo {lo}");
        assert!((152..=155).contains(&hi), "hi {hi}");
    }

    #[test]
    fn binomial_interval_edges() {
        assert_eq!(binomial_interval(10, 0.0, 0.99), (0, 0));
        assert_eq!(binomial_interval(10, 1.0, 0.99), (10, 10));
        // n = 1, p = 0.5: either outcome is in the central 99 %.
        assert_eq!(binomial_interval(1, 0.5, 0.99), (0, 1));
    }

    #[test]
    fn max_rate_difference_of_two_samples() {
        // 128/2382 and 103/2500: pooled 4.73 %, se 0.607 points, 99 %: 1.56 points.
        let max = max_rate_difference(128, 2382, 103, 2500, Z_99);
        assert!((max - 0.01564).abs() < 0.0001, "{max}");
        // Nothing lost on either side: no difference allowed.
        assert_eq!(max_rate_difference(0, 100, 0, 100, Z_99), 0.0);
    }

    #[test]
    fn triangle_quantiles_and_spread() {
        assert_eq!(triangle_quantile(10.0, 0.5), 0.0);
        assert!((triangle_quantile(10.0, 0.99) - (20.0 - 20.0 * 0.02f64.sqrt())).abs() < 1e-9);
        assert!((triangle_quantile(10.0, 0.01) + triangle_quantile(10.0, 0.99)).abs() < 1e-9);
        assert_eq!(triangle_quantile(10.0, 1.0), 20.0);
        assert!((triangle_stddev(10.0) - 8.16496580927726).abs() < 1e-9);
    }
}
