//! Deterministic random streams: one independent ChaCha8 stream per
//! (seed, object, purpose), so results never depend on the order or the
//! thread in which objects are generated.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// What a stream is used for; each purpose is a separate ChaCha stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Survey and class choice of an object.
    Plan = 1,
    /// The object's physical parameters and labels.
    Object = 2,
    /// One survey's observation of an object (grid jitter, S/N, noise,
    /// masks); the survey code is added.
    Observation = 16,
    /// File-level choices of a multi-object file (DESI sky fibres).
    File = 64,
}

/// SplitMix64 finaliser.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The stream for `purpose` (+ `sub`) of object `index` under `seed`.
pub(crate) fn stream(seed: u64, index: u64, purpose: Purpose, sub: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(mix(seed ^ mix(index)));
    r.set_stream(purpose as u64 + sub);
    r
}

/// Uniform on `[lo, hi)`.
pub(crate) fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Normal with mean `m` and standard deviation `s`.
pub(crate) fn normal(rng: &mut ChaCha8Rng, m: f64, s: f64) -> f64 {
    let x: f64 = StandardNormal.sample(rng);
    m + s * x
}

/// Normal, redrawn until inside `[lo, hi]` (clamped after 32 tries).
pub(crate) fn normal_in(rng: &mut ChaCha8Rng, m: f64, s: f64, lo: f64, hi: f64) -> f64 {
    for _ in 0..32 {
        let x = normal(rng, m, s);
        if (lo..=hi).contains(&x) {
            return x;
        }
    }
    m.clamp(lo, hi)
}

/// Poisson deviate with mean `lambda`.
pub(crate) fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 || !lambda.is_finite() {
        return 0;
    }
    match rand_distr::Poisson::new(lambda) {
        Ok(p) => {
            let v: f64 = p.sample(rng);
            v as u64
        }
        Err(_) => 0,
    }
}

/// Index drawn with probabilities proportional to `weights` (all ≥ 0, not
/// all zero; otherwise 0).
pub(crate) fn choose(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
    if total <= 0.0 {
        return 0;
    }
    let mut u = rng.random::<f64>() * total;
    for (i, &w) in weights.iter().enumerate() {
        if w <= 0.0 {
            continue;
        }
        if u < w {
            return i;
        }
        u -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(stream(7, 3, Purpose::Object, 0), |r, _| Some(r.random()))
            .collect();
        let b: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(stream(7, 3, Purpose::Object, 0), |r, _| Some(r.random()))
            .collect();
        let c: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(stream(7, 4, Purpose::Object, 0), |r, _| Some(r.random()))
            .collect();
        let d: Vec<u64> = (0..4)
            .map(|_| 0)
            .scan(stream(7, 3, Purpose::Plan, 0), |r, _| Some(r.random()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn choose_follows_weights() {
        let mut r = stream(1, 1, Purpose::Plan, 0);
        let mut counts = [0usize; 3];
        for _ in 0..30000 {
            counts[choose(&mut r, &[1.0, 0.0, 3.0])] += 1;
        }
        assert_eq!(counts[1], 0);
        let f = counts[2] as f64 / 30000.0;
        assert!((f - 0.75).abs() < 0.02, "{f}");
    }
}
