//! Weight correction for picking several nodes per stripe.
//!
//! Weighted rendezvous hashing with the logarithmic score `-w / ln(h)` is
//! exact for one pick: node i comes first with probability `w_i / W`. A
//! stripe needs n = k + m *distinct* nodes, and taking the top n is
//! sampling without replacement, which over-serves light nodes and
//! under-serves heavy ones (the "multi-pick anomaly" CRUSH straw2 also has):
//! with weights 0.5/1/2 and n = 6 of 12 nodes, the 0.5 nodes get ~30% more
//! than their share. [`adjusted_weights`] computes the effective weights
//! that make each node's inclusion probability `min(1, c * w_i)` (with
//! `sum = n`), i.e. its share of shard slots proportional to its weight.
//!
//! Model: node i's score order equals the order of independent exponential
//! times `T_i ~ Exp(w_i)` (as `-ln(h) / w`), and node i is picked when fewer
//! than n other nodes come before it:
//! `P_i = ∫ w_i e^{-w_i t} P(#{j != i : T_j < t} < n) dt`, evaluated by
//! quadrature in `ln t` (trapezoid: the integrand is smooth and decays at
//! both ends, so few points suffice) with a Poisson-binomial recurrence, then a
//! multiplicative fixed-point iteration on the weights.

/// Quadrature points (log-spaced in t).
const POINTS: usize = 96;
/// Fixed-point iterations at most, and the target relative error.
const MAX_ITERATIONS: usize = 60;
const TOLERANCE: f64 = 5e-4;
/// Effective weights stay within this factor of the mean (nodes whose
/// target inclusion is 1 would otherwise grow without bound).
const MAX_RATIO: f64 = 1e6;
/// Over-relaxation of the fixed-point step: a plain step (1.0) shrinks the
/// error only by about half per iteration.
const STEP: f64 = 1.5;

/// Effective weights for picking `n` distinct nodes out of nodes with
/// `weights` (finite, > 0), so that each node's share of picks is
/// proportional to its weight (capped at one pick per stripe). Returns the
/// weights unchanged when no correction is needed (n <= 1, n >= count, all
/// weights equal). Deterministic.
pub fn adjusted_weights(weights: &[f64], n: usize) -> Vec<f64> {
    let count = weights.len();
    let all_equal = weights.windows(2).all(|w| w[0] == w[1]);
    if n <= 1 || n >= count || all_equal {
        return weights.to_vec();
    }
    let targets = target_inclusion(weights, n);
    let mean = weights.iter().sum::<f64>() / count as f64;
    let mut lambda: Vec<f64> = weights.iter().map(|w| w / mean).collect();
    for _ in 0..MAX_ITERATIONS {
        let p = inclusion(&lambda, n);
        let err = p
            .iter()
            .zip(&targets)
            .map(|(p, t)| (p / t - 1.0).abs())
            .fold(0.0, f64::max);
        if err < TOLERANCE {
            break;
        }
        for ((l, p), t) in lambda.iter_mut().zip(&p).zip(&targets) {
            *l *= (t / p.max(f64::MIN_POSITIVE)).powf(STEP);
        }
        let mean = lambda.iter().sum::<f64>() / count as f64;
        for l in &mut lambda {
            *l = (*l / mean).clamp(1.0 / MAX_RATIO, MAX_RATIO);
        }
    }
    lambda
}

/// Target inclusion probabilities: `min(1, c * w_i)` summing to n.
fn target_inclusion(weights: &[f64], n: usize) -> Vec<f64> {
    let mut capped = vec![false; weights.len()];
    loop {
        let free: f64 = weights
            .iter()
            .zip(&capped)
            .filter(|(_, c)| !**c)
            .map(|(w, _)| w)
            .sum();
        let slots = n as f64 - capped.iter().filter(|c| **c).count() as f64;
        let scale = slots / free;
        let mut changed = false;
        for (w, c) in weights.iter().zip(capped.iter_mut()) {
            if !*c && w * scale >= 1.0 {
                *c = true;
                changed = true;
            }
        }
        if !changed {
            return weights
                .iter()
                .zip(&capped)
                .map(|(w, c)| if *c { 1.0 } else { w * scale })
                .collect();
        }
    }
}

/// Probability that each node is among the first `n` of independent
/// exponential times with rates `lambda` (normalised, all > 0).
pub(crate) fn inclusion(lambda: &[f64], n: usize) -> Vec<f64> {
    let count = lambda.len();
    let total: f64 = lambda.iter().sum();
    let min = lambda.iter().copied().fold(f64::INFINITY, f64::min);
    let t_lo = 1e-4 / total;
    let t_hi = 45.0 / min;
    let step = (t_hi / t_lo).ln() / (POINTS - 1) as f64;

    // Below t_lo almost nothing has fired: node i is picked if it fires.
    let mut p: Vec<f64> = lambda.iter().map(|l| -(-l * t_lo).exp_m1()).collect();
    // prefix[j * n + c]: P(exactly c of nodes 0..j fired), for c < n.
    let mut prefix = vec![0.0; (count + 1) * n];
    // suffix_cum[j * n + c]: P(at most c of nodes j.. fired), for c < n.
    let mut suffix = vec![0.0; (count + 1) * n];
    let mut prev: Option<Vec<f64>> = None;
    let mut f = vec![0.0; count];
    let mut cums = vec![0.0; n];
    for s in 0..POINTS {
        let t = t_lo * (step * s as f64).exp();
        let fired: Vec<f64> = lambda.iter().map(|l| -(-l * t).exp_m1()).collect();
        prefix.fill(0.0);
        prefix[0] = 1.0;
        for j in 0..count {
            let (q, r) = (fired[j], 1.0 - fired[j]);
            for c in 0..n {
                let stay = prefix[j * n + c] * r;
                let from = if c > 0 {
                    prefix[j * n + c - 1] * q
                } else {
                    0.0
                };
                prefix[(j + 1) * n + c] = stay + from;
            }
        }
        // Exact counts for the suffix, then cumulate in place per row.
        suffix.fill(0.0);
        suffix[count * n] = 1.0;
        for j in (0..count).rev() {
            let (q, r) = (fired[j], 1.0 - fired[j]);
            for c in 0..n {
                let stay = suffix[(j + 1) * n + c] * r;
                let from = if c > 0 {
                    suffix[(j + 1) * n + c - 1] * q
                } else {
                    0.0
                };
                suffix[j * n + c] = stay + from;
            }
        }
        let mut all_done = true;
        for i in 0..count {
            // P(fewer than n of the others fired) =
            //   sum_a prefix[i][a] * P(suffix(i+1) count <= n-1-a).
            let row = &suffix[(i + 1) * n..(i + 2) * n];
            let mut cum = 0.0;
            for (c, v) in cums.iter_mut().zip(row) {
                cum += v;
                *c = cum;
            }
            let fewer: f64 = (0..n).map(|a| prefix[i * n + a] * cums[n - 1 - a]).sum();
            // Integrand in ln t: density * t.
            f[i] = lambda[i] * (-lambda[i] * t).exp() * fewer * t;
            all_done &= fewer < 1e-13;
        }
        if let Some(prev) = &prev {
            for i in 0..count {
                p[i] += 0.5 * step * (prev[i] + f[i]);
            }
        }
        prev = Some(f.clone());
        // Every node's chance of still being picked is gone: the rest of
        // the integral is negligible.
        if all_done {
            break;
        }
    }
    // Absorb quadrature error: the picks must sum to n.
    let sum: f64 = p.iter().sum();
    p.iter().map(|v| v * n as f64 / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inclusion_matches_closed_forms() {
        // One pick: P_i = w_i / W.
        let p = inclusion(&[1.0, 2.0, 0.5], 1);
        for (got, want) in p.iter().zip([1.0 / 3.5, 2.0 / 3.5, 0.5 / 3.5]) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        // Two of three, rates a, b, c: P(a excluded) = P(a last)
        // = sum over orders ending in a.
        let (a, b, c) = (1.0f64, 2.0, 0.5);
        let w = a + b + c;
        let a_last = b / w * c / (a + c) + c / w * b / (a + b);
        let p = inclusion(&[a, b, c], 2);
        assert!(
            (p[0] - (1.0 - a_last)).abs() < 1e-4,
            "{} vs {}",
            p[0],
            1.0 - a_last
        );
    }

    #[test]
    fn adjusted_weights_hit_targets() {
        let weights: Vec<f64> = [1.0, 2.0, 0.5].repeat(4);
        let adjusted = adjusted_weights(&weights, 6);
        let p = inclusion(&adjusted, 6);
        let total: f64 = weights.iter().sum();
        for (p, w) in p.iter().zip(&weights) {
            let want = 6.0 * w / total;
            assert!((p / want - 1.0).abs() < 2e-3, "{p} vs {want}");
        }
    }

    #[test]
    fn equal_weights_are_left_alone() {
        assert_eq!(adjusted_weights(&[1.5; 7], 3), vec![1.5; 7]);
        assert_eq!(adjusted_weights(&[1.0, 2.0], 1), vec![1.0, 2.0]);
    }

    #[test]
    fn overweight_nodes_are_capped_at_one_pick() {
        let t = target_inclusion(&[10.0, 1.0, 1.0, 1.0, 1.0], 3);
        assert_eq!(t[0], 1.0);
        for v in &t[1..] {
            assert!((v - 0.5).abs() < 1e-12);
        }
    }
}
