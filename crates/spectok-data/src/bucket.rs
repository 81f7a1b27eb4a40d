//! Length bucketing: cutting a pool of spectra into batches so that
//! spectra of similar patch count share a batch and padding stays low.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many spectra go into a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum BatchSize {
    /// A fixed number of spectra per batch (the last batch of an epoch
    /// may hold fewer).
    Fixed {
        /// Spectra per batch.
        spectra: usize,
    },
    /// As many spectra as fit `max_tokens` patch slots, padding included
    /// (`B × T_max ≤ max_tokens`), and at most `max_spectra`. A spectrum
    /// longer than the budget on its own forms a batch of one. This is the
    /// mode for mixing 2 000-pixel and 30 000-pixel spectra: the batch's
    /// memory and compute stay bounded whatever the lengths.
    Tokens {
        /// Most patch slots `B × T_max` per batch.
        max_tokens: usize,
        /// Most spectra per batch.
        max_spectra: usize,
    },
}

impl Default for BatchSize {
    fn default() -> Self {
        BatchSize::Fixed { spectra: 64 }
    }
}

impl BatchSize {
    /// Checks that the sizes are at least 1.
    pub fn validate(&self) -> Result<()> {
        match *self {
            BatchSize::Fixed { spectra: 0 } => {
                Err(Error::config("batch.spectra", "must be at least 1"))
            }
            BatchSize::Tokens { max_tokens: 0, .. } => {
                Err(Error::config("batch.max_tokens", "must be at least 1"))
            }
            BatchSize::Tokens { max_spectra: 0, .. } => {
                Err(Error::config("batch.max_spectra", "must be at least 1"))
            }
            _ => Ok(()),
        }
    }
}

/// Cuts the items `order` (indices into `lengths`, the patch count of
/// each item) into consecutive batches of `size`. With `bucketing`, the
/// order is first stably sorted by length, so ties keep the (shuffled)
/// order they came in. Returns the batches as index lists.
pub fn plan_batches(
    lengths: &[usize],
    order: &[usize],
    size: BatchSize,
    bucketing: bool,
) -> Vec<Vec<usize>> {
    let mut order = order.to_vec();
    if bucketing {
        order.sort_by_key(|&i| lengths.get(i).copied().unwrap_or(0));
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    match size {
        BatchSize::Fixed { spectra } => {
            for c in order.chunks(spectra.max(1)) {
                out.push(c.to_vec());
            }
        }
        BatchSize::Tokens {
            max_tokens,
            max_spectra,
        } => {
            let mut cur: Vec<usize> = Vec::new();
            let mut cur_max = 0;
            for i in order {
                let l = lengths.get(i).copied().unwrap_or(0);
                let m = cur_max.max(l);
                if !cur.is_empty() && ((cur.len() + 1) * m > max_tokens || cur.len() >= max_spectra)
                {
                    out.push(std::mem::take(&mut cur));
                    cur_max = 0;
                }
                cur_max = cur_max.max(l);
                cur.push(i);
            }
            if !cur.is_empty() {
                out.push(cur);
            }
        }
    }
    out
}

/// Real and padded patch slots of a planned batch: `(Σ lengths,
/// count × max length)`.
pub fn batch_tokens(lengths: &[usize], batch: &[usize]) -> (usize, usize) {
    let ls = batch.iter().map(|&i| lengths.get(i).copied().unwrap_or(0));
    let real: usize = ls.clone().sum();
    let max = ls.max().unwrap_or(0);
    (real, max * batch.len())
}

/// Fraction of real patch slots over a plan: `Σ real / Σ slots`.
pub fn real_token_fraction(lengths: &[usize], plan: &[Vec<usize>]) -> f64 {
    let (real, slots) = plan
        .iter()
        .map(|b| batch_tokens(lengths, b))
        .fold((0, 0), |(r, s), (a, b)| (r + a, s + b));
    if slots == 0 {
        0.0
    } else {
        real as f64 / slots as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    fn lengths() -> Vec<usize> {
        // A mix of short (2 000 px ≈ 63 patches) and long (30 000 px ≈ 938
        // patches) spectra with some spread.
        (0..1000)
            .map(|i| {
                let u = rng::unit_f64(rng::key(&[3, i]));
                if i % 3 == 0 {
                    900 + (u * 80.0) as usize
                } else {
                    50 + (u * 150.0) as usize
                }
            })
            .collect()
    }

    #[test]
    fn fixed_batches_cover_every_item_once() {
        let l = lengths();
        let order: Vec<usize> = (0..l.len()).collect();
        for bucketing in [false, true] {
            let plan = plan_batches(&l, &order, BatchSize::Fixed { spectra: 64 }, bucketing);
            let mut all: Vec<usize> = plan.iter().flatten().copied().collect();
            all.sort();
            assert_eq!(all, order);
            assert!(plan.iter().all(|b| b.len() <= 64));
            assert_eq!(plan.iter().filter(|b| b.len() < 64).count(), 1);
        }
    }

    #[test]
    fn bucketing_raises_the_real_token_fraction() {
        let l = lengths();
        let mut order: Vec<usize> = (0..l.len()).collect();
        rng::shuffle(&mut order, 5);
        let size = BatchSize::Fixed { spectra: 32 };
        let without = real_token_fraction(&l, &plan_batches(&l, &order, size, false));
        let with = real_token_fraction(&l, &plan_batches(&l, &order, size, true));
        assert!(without < 0.6, "without bucketing {without}");
        assert!(with > 0.9, "with bucketing {with}");
    }

    #[test]
    fn token_budget_bounds_every_batch() {
        let l = lengths();
        let order: Vec<usize> = (0..l.len()).collect();
        let size = BatchSize::Tokens {
            max_tokens: 8192,
            max_spectra: 256,
        };
        for bucketing in [false, true] {
            let plan = plan_batches(&l, &order, size, bucketing);
            for b in &plan {
                let (_, slots) = batch_tokens(&l, b);
                assert!(
                    slots <= 8192 || b.len() == 1,
                    "{slots} slots in {} spectra",
                    b.len()
                );
                assert!(b.len() <= 256);
            }
            let mut all: Vec<usize> = plan.iter().flatten().copied().collect();
            all.sort();
            assert_eq!(all, order);
        }
        // Short spectra are packed many to a batch, long ones few.
        let plan = plan_batches(&l, &order, size, true);
        assert!(plan.first().is_some_and(|b| b.len() > 30));
        assert!(plan.last().is_some_and(|b| b.len() < 10));
        // A single spectrum over budget is a batch of one.
        let plan = plan_batches(&[5, 20000, 5], &[0, 1, 2], size, false);
        assert_eq!(plan, vec![vec![0], vec![1], vec![2]]);
    }
}
