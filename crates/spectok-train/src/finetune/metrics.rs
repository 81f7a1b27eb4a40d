//! The scores each community uses: σ_NMAD, bias and outlier fractions for
//! redshifts; per-class accuracy and the confusion matrix for
//! classification; median absolute deviation and bias for stellar
//! parameters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The median of `v` (mean of the two middle values for an even count);
/// `NaN` when `v` is empty. Non-finite values are ignored.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Redshift scores of predictions `pred` against truths `truth`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RedshiftMetrics {
    /// Objects scored.
    pub n: usize,
    /// σ_NMAD = 1.4826 · median(|Δz| / (1 + z)).
    pub sigma_nmad: f64,
    /// median(Δz / (1 + z)), Δz = z_pred − z_true.
    pub bias: f64,
    /// Fraction with |Δz| / (1 + z) > 0.05.
    pub outliers_005: f64,
    /// Fraction with |Δz| / (1 + z) > 0.15.
    pub outliers_015: f64,
}

/// `Δz / (1 + z_true)` per object.
pub fn dz_norm(pred: &[f64], truth: &[f64]) -> Vec<f64> {
    pred.iter()
        .zip(truth)
        .map(|(p, t)| (p - t) / (1.0 + t))
        .collect()
}

/// σ_NMAD, bias and outlier fractions (see [`RedshiftMetrics`]).
pub fn redshift_metrics(pred: &[f64], truth: &[f64]) -> RedshiftMetrics {
    let d = dz_norm(pred, truth);
    let n = d.len();
    let abs: Vec<f64> = d.iter().map(|x| x.abs()).collect();
    let frac = |thr: f64| {
        if n == 0 {
            f64::NAN
        } else {
            abs.iter().filter(|a| **a > thr || !a.is_finite()).count() as f64 / n as f64
        }
    };
    RedshiftMetrics {
        n,
        sigma_nmad: 1.4826 * median(&abs),
        bias: median(&d),
        outliers_005: frac(0.05),
        outliers_015: frac(0.15),
    }
}

/// Classification scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Objects scored.
    pub n: usize,
    /// The label set, in the order of the confusion matrix.
    pub classes: Vec<String>,
    /// Overall accuracy (fraction correct).
    pub accuracy: f64,
    /// Accuracy (recall) per true class; `NaN` for a class absent from the truths.
    pub per_class: BTreeMap<String, f64>,
    /// Mean of the per-class accuracies (classes present only).
    pub mean_class_accuracy: f64,
    /// `confusion[t][p]`: objects of true class t predicted as p.
    pub confusion: Vec<Vec<u64>>,
}

/// The confusion matrix of class indices (`k` classes); indices ≥ `k` are ignored.
pub fn confusion_matrix(pred: &[usize], truth: &[usize], k: usize) -> Vec<Vec<u64>> {
    let mut m = vec![vec![0u64; k]; k];
    for (p, t) in pred.iter().zip(truth) {
        if *p < k && *t < k {
            m[*t][*p] += 1;
        }
    }
    m
}

/// Accuracy per class, mean accuracy and confusion matrix.
pub fn class_metrics(pred: &[usize], truth: &[usize], classes: &[String]) -> ClassMetrics {
    let k = classes.len();
    let confusion = confusion_matrix(pred, truth, k);
    let n = pred.len().min(truth.len());
    let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
    let mut per_class = BTreeMap::new();
    let mut present = Vec::new();
    for (i, name) in classes.iter().enumerate() {
        let row: u64 = confusion[i].iter().sum();
        let acc = if row == 0 {
            f64::NAN
        } else {
            confusion[i][i] as f64 / row as f64
        };
        if row > 0 {
            present.push(acc);
        }
        per_class.insert(name.clone(), acc);
    }
    ClassMetrics {
        n,
        classes: classes.to_vec(),
        accuracy: if n == 0 {
            f64::NAN
        } else {
            correct as f64 / n as f64
        },
        per_class,
        mean_class_accuracy: if present.is_empty() {
            f64::NAN
        } else {
            present.iter().sum::<f64>() / present.len() as f64
        },
        confusion,
    }
}

/// Scores of one stellar parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamMetrics {
    /// Objects with this parameter known.
    pub n: usize,
    /// median(|pred − true|).
    pub mad: f64,
    /// median(pred − true).
    pub bias: f64,
}

/// Median absolute deviation and bias of `pred` against `truth`, over
/// the objects whose truth is finite.
pub fn param_metrics(pred: &[f64], truth: &[f64]) -> ParamMetrics {
    let d: Vec<f64> = pred
        .iter()
        .zip(truth)
        .filter(|(_, t)| t.is_finite())
        .map(|(p, t)| p - t)
        .collect();
    let abs: Vec<f64> = d.iter().map(|x| x.abs()).collect();
    ParamMetrics {
        n: d.len(),
        mad: median(&abs),
        bias: median(&d),
    }
}
