//! Stable hashing and counter-based randomness.
//!
//! Everything random in the loader is a pure function of the seed and a
//! position (epoch, source, pass, chunk, draw number), so a run can be
//! resumed from a few counters and is the same on every platform and
//! release. `std`'s `DefaultHasher` is deliberately not used: its output
//! may change between Rust releases.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// 64-bit FNV-1a of `bytes`, starting from the FNV offset basis.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser: a bijective mix so that every output bit
/// depends on every input bit (FNV alone mixes its last bytes weakly).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A key derived from a sequence of words (seed, stream tag, counters).
pub fn key(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x6a09_e667_f3bc_c909, |h, p| mix64(h ^ mix64(*p)))
}

/// A uniform number in `[0, 1)` from a key (53 random bits).
pub fn unit_f64(k: u64) -> f64 {
    (mix64(k) >> 11) as f64 / (1u64 << 53) as f64
}

/// A ChaCha8 generator seeded from a key (its stream is fixed by the
/// ChaCha specification, so it is stable across releases).
pub fn rng_from_key(k: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(k)
}

/// Uniform integer in `0..n` (`n` ≥ 1) by 128-bit multiply; the bias is
/// below 2⁻⁶⁴·n, immaterial for shuffling.
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    ((rng.next_u64() as u128 * n as u128) >> 64) as usize
}

/// Fisher–Yates shuffle of `v`, a pure function of `v` and `k`.
pub fn shuffle<T>(v: &mut [T], k: u64) {
    let mut rng = rng_from_key(k);
    for i in (1..v.len()).rev() {
        let j = below(&mut rng, i + 1);
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shuffle_is_a_deterministic_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut c = a.clone();
        c.sort();
        assert_eq!(c, (0..100).collect::<Vec<_>>());
        let mut d: Vec<u32> = (0..100).collect();
        shuffle(&mut d, 8);
        assert_ne!(a, d);
    }

    #[test]
    fn unit_is_in_range_and_spread() {
        let xs: Vec<f64> = (0..10_000).map(|i| unit_f64(key(&[1, i]))).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
