//! Baselines scored on the same split as the heads: ridge regression and
//! k-nearest neighbours on standardised feature vectors (the pooled
//! embedding), and a principal-component projection for raw inputs.
//! Everything is plain f64 linear algebra: the feature widths are small.

/// Per-column mean and standard deviation of the training rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardiser {
    /// Column means.
    pub mean: Vec<f64>,
    /// Column standard deviations (1 where a column is constant).
    pub std: Vec<f64>,
}

impl Standardiser {
    /// Fits the columns of `x` (rows of equal width).
    pub fn fit(x: &[Vec<f64>]) -> Standardiser {
        let d = x.first().map_or(0, Vec::len);
        let n = x.len().max(1) as f64;
        let mut mean = vec![0.0; d];
        for r in x {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v / n;
            }
        }
        let mut var = vec![0.0; d];
        for r in x {
            for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (v - m) * (v - m) / n;
            }
        }
        let std = var
            .into_iter()
            .map(|v| if v > 1e-24 { v.sqrt() } else { 1.0 })
            .collect();
        Standardiser { mean, std }
    }

    /// `(x − mean) / std`.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((v, m), s)| (v - m) / s)
            .collect()
    }
}

/// Solves `A x = b` for a symmetric positive definite `A` (row-major,
/// `n × n`) by Cholesky decomposition; `None` when `A` is not positive
/// definite.
pub fn cholesky_solve(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    let mut y = vec![0.0; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * y[k];
        }
        y[i] = s / l[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    Some(x)
}

/// A multi-output ridge regression on standardised inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Ridge {
    /// Input standardisation.
    pub scaler: Standardiser,
    /// `weights[o]`: coefficients of output o.
    pub weights: Vec<Vec<f64>>,
    /// Intercept per output.
    pub intercept: Vec<f64>,
    /// The regularisation strength used.
    pub lambda: f64,
}

impl Ridge {
    /// Fits `y` (rows × outputs; NaN entries are left out of that output's
    /// fit) on `x` with strength `lambda` (relative to the row count).
    pub fn fit(x: &[Vec<f64>], y: &[Vec<f64>], lambda: f64) -> Ridge {
        let scaler = Standardiser::fit(x);
        let xs: Vec<Vec<f64>> = x.iter().map(|r| scaler.apply(r)).collect();
        let d = scaler.mean.len();
        let outputs = y.first().map_or(0, Vec::len);
        let mut weights = Vec::with_capacity(outputs);
        let mut intercept = Vec::with_capacity(outputs);
        #[allow(clippy::needless_range_loop)]
        for o in 0..outputs {
            let rows: Vec<usize> = (0..xs.len()).filter(|i| y[*i][o].is_finite()).collect();
            let n = rows.len().max(1) as f64;
            let ym = rows.iter().map(|i| y[*i][o]).sum::<f64>() / n;
            // Centre x on these rows too.
            let mut xm = vec![0.0; d];
            for i in &rows {
                for (m, v) in xm.iter_mut().zip(&xs[*i]) {
                    *m += v / n;
                }
            }
            let mut a = vec![0.0; d * d];
            let mut b = vec![0.0; d];
            for i in &rows {
                let r: Vec<f64> = xs[*i].iter().zip(&xm).map(|(v, m)| v - m).collect();
                let t = y[*i][o] - ym;
                for p in 0..d {
                    b[p] += r[p] * t;
                    for q in 0..=p {
                        a[p * d + q] += r[p] * r[q];
                    }
                }
            }
            for p in 0..d {
                for q in 0..p {
                    a[q * d + p] = a[p * d + q];
                }
                a[p * d + p] += lambda * n;
            }
            let w = cholesky_solve(&a, &b, d).unwrap_or_else(|| vec![0.0; d]);
            let c = ym - w.iter().zip(&xm).map(|(w, m)| w * m).sum::<f64>();
            weights.push(w);
            intercept.push(c);
        }
        Ridge {
            scaler,
            weights,
            intercept,
            lambda,
        }
    }

    /// Predictions for one row.
    pub fn predict(&self, x: &[f64]) -> Vec<f64> {
        let xs = self.scaler.apply(x);
        self.weights
            .iter()
            .zip(&self.intercept)
            .map(|(w, c)| c + w.iter().zip(&xs).map(|(a, b)| a * b).sum::<f64>())
            .collect()
    }
}

/// k-nearest-neighbour lookup in standardised feature space.
#[derive(Clone, Debug)]
pub struct Knn {
    scaler: Standardiser,
    train: Vec<Vec<f64>>,
    /// Neighbours consulted.
    pub k: usize,
}

impl Knn {
    /// Indexes the training rows `x`.
    pub fn new(x: &[Vec<f64>], k: usize) -> Knn {
        let scaler = Standardiser::fit(x);
        let train = x.iter().map(|r| scaler.apply(r)).collect();
        Knn {
            scaler,
            train,
            k: k.max(1),
        }
    }

    /// The indices of the `k` training rows nearest to `x`, nearest first.
    pub fn neighbours(&self, x: &[f64]) -> Vec<usize> {
        let q = self.scaler.apply(x);
        let mut d: Vec<(f64, usize)> = self
            .train
            .iter()
            .enumerate()
            .map(|(i, r)| (r.iter().zip(&q).map(|(a, b)| (a - b) * (a - b)).sum(), i))
            .collect();
        let k = self.k.min(d.len());
        if k == 0 {
            return Vec::new();
        }
        d.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        d.truncate(k);
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        d.into_iter().map(|(_, i)| i).collect()
    }
}

/// A principal-component projection fitted by subspace iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    /// Column means.
    pub mean: Vec<f64>,
    /// Orthonormal components (each of the input width).
    pub components: Vec<Vec<f64>>,
}

impl Pca {
    /// The leading `k` components of the rows `x` (`iters` rounds of
    /// subspace iteration, deterministic start).
    pub fn fit(x: &[Vec<f64>], k: usize, iters: usize) -> Pca {
        let d = x.first().map_or(0, Vec::len);
        let n = x.len().max(1) as f64;
        let mut mean = vec![0.0; d];
        for r in x {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v / n;
            }
        }
        let xc: Vec<Vec<f64>> = x
            .iter()
            .map(|r| r.iter().zip(&mean).map(|(v, m)| v - m).collect())
            .collect();
        let k = k.min(d).min(x.len());
        // Deterministic pseudo-random start.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut comps: Vec<Vec<f64>> = (0..k)
            .map(|_| {
                (0..d)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
                    })
                    .collect()
            })
            .collect();
        orthonormalise(&mut comps);
        for _ in 0..iters {
            // comps ← Xᵀ X comps
            let mut next = vec![vec![0.0; d]; k];
            for r in &xc {
                for (c, nx) in comps.iter().zip(next.iter_mut()) {
                    let s: f64 = r.iter().zip(c).map(|(a, b)| a * b).sum();
                    for (o, v) in nx.iter_mut().zip(r) {
                        *o += s * v;
                    }
                }
            }
            comps = next;
            orthonormalise(&mut comps);
        }
        Pca {
            mean,
            components: comps,
        }
    }

    /// The projection of one row.
    pub fn transform(&self, x: &[f64]) -> Vec<f64> {
        self.components
            .iter()
            .map(|c| {
                c.iter()
                    .zip(x)
                    .zip(&self.mean)
                    .map(|((c, v), m)| c * (v - m))
                    .sum()
            })
            .collect()
    }
}

fn orthonormalise(v: &mut [Vec<f64>]) {
    for i in 0..v.len() {
        for j in 0..i {
            let (a, b) = v.split_at_mut(i);
            let dot: f64 = b[0].iter().zip(&a[j]).map(|(x, y)| x * y).sum();
            for (x, y) in b[0].iter_mut().zip(&a[j]) {
                *x -= dot * y;
            }
        }
        let norm = v[i].iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 0.0 {
            for x in v[i].iter_mut() {
                *x /= norm;
            }
        }
    }
}
