//! Synthetic spectra and batches for the model tests, built directly as
//! `Batch` values (no survey files).

#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spectok_data::{Batch, PatchState};
use spectok_io::{Labels, Source, Survey};
use spectok_model::{Config, Tokenizer};

/// One spectrum already cut into patches of `p` pixels.
#[derive(Clone, Debug)]
pub struct Spec {
    pub p: usize,
    pub flux: Vec<f32>,
    pub sigma: Vec<f32>,
    pub wavelength: Vec<f64>,
    pub weight: Vec<f32>,
    pub state: Vec<PatchState>,
    pub log_scale: f32,
}

impl Spec {
    pub fn n_patches(&self) -> usize {
        self.state.len()
    }

    /// Indices of the valid patches.
    pub fn valid(&self) -> Vec<usize> {
        (0..self.n_patches())
            .filter(|&i| self.state[i] == PatchState::Valid)
            .collect()
    }

    /// A copy with an invalid patch (random flux, zero weight, its own
    /// wavelengths) inserted before patch `at`.
    pub fn with_invalid_at(&self, at: usize, seed: u64) -> Spec {
        let p = self.p;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = self.clone();
        let base = 20000.0 + rng.random::<f64>() * 100.0;
        let flux: Vec<f32> = (0..p).map(|_| rng.random::<f32>() * 5.0).collect();
        let wl: Vec<f64> = (0..p).map(|j| base + j as f64).collect();
        s.flux.splice(at * p..at * p, flux);
        s.sigma.splice(at * p..at * p, vec![0.3; p]);
        s.wavelength.splice(at * p..at * p, wl);
        s.weight.splice(at * p..at * p, vec![0.0; p]);
        s.state.insert(at, PatchState::Invalid);
        s
    }
}

/// A spectrum of `n_patches` patches of `p` pixels from `start` Å with
/// pixel step `step` Å; `invalid` lists invalid patches; the last patch
/// has `tail` real pixels (its padding repeats the last wavelength).
pub fn spectrum(
    seed: u64,
    n_patches: usize,
    p: usize,
    start: f64,
    step: f64,
    invalid: &[usize],
    tail: usize,
) -> Spec {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = n_patches * p;
    let mut flux = Vec::with_capacity(n);
    let mut sigma = Vec::with_capacity(n);
    let mut wavelength = Vec::with_capacity(n);
    let mut weight = Vec::with_capacity(n);
    let mut state = Vec::with_capacity(n_patches);
    let amp = 0.2 + rng.random::<f64>();
    let centre = start + rng.random::<f64>() * step * n as f64;
    for i in 0..n_patches {
        let bad = invalid.contains(&i);
        state.push(if bad {
            PatchState::Invalid
        } else {
            PatchState::Valid
        });
        let real = if i + 1 == n_patches { tail } else { p };
        let mut last = 0.0;
        for j in 0..p {
            let k = i * p + j;
            let w = start + step * k as f64;
            if j < real {
                last = w;
            }
            wavelength.push(if j < real { w } else { last });
            let line = amp * (-((w - centre) / (8.0 * step)).powi(2)).exp();
            let f = 1.0 + line + 0.3 * ((w / 300.0).sin()) + 0.02 * (rng.random::<f64>() - 0.5);
            let ok = !bad && j < real && rng.random::<f64>() > 0.05;
            flux.push(if ok { f as f32 } else { 0.0 });
            sigma.push(if ok { 0.02 } else { 0.0 });
            weight.push(if ok { 2500.0 } else { 0.0 });
        }
    }
    Spec {
        p,
        flux,
        sigma,
        wavelength,
        weight,
        state,
        log_scale: (rng.random::<f32>() - 0.5) * 4.0,
    }
}

/// Collates spectra into a batch of `max_patches` slots (at least the
/// longest spectrum), padding after each spectrum.
pub fn collate(specs: &[Spec], max_patches: usize) -> Batch {
    let p = specs.first().map(|s| s.p).unwrap_or(8);
    let t = specs
        .iter()
        .map(|s| s.n_patches())
        .max()
        .unwrap_or(0)
        .max(max_patches);
    let b = specs.len();
    let mut batch = Batch {
        batch_size: b,
        max_patches: t,
        patch_size: p,
        flux: vec![0.0; b * t * p],
        sigma: vec![0.0; b * t * p],
        wavelength: vec![0.0; b * t * p],
        weight: vec![0.0; b * t * p],
        patch_state: vec![PatchState::Padding; b * t],
        patch_center: vec![0.0; b * t],
        n_patches: Vec::new(),
        log_scale: Vec::new(),
        ids: Vec::new(),
        surveys: Vec::new(),
        sources: Vec::new(),
        labels: Vec::new(),
    };
    for (i, s) in specs.iter().enumerate() {
        let np = s.n_patches();
        let px = i * t * p..i * t * p + np * p;
        batch.flux[px.clone()].copy_from_slice(&s.flux);
        batch.sigma[px.clone()].copy_from_slice(&s.sigma);
        batch.wavelength[px.clone()].copy_from_slice(&s.wavelength);
        batch.weight[px].copy_from_slice(&s.weight);
        batch.patch_state[i * t..i * t + np].copy_from_slice(&s.state);
        for k in 0..np {
            let w = &s.wavelength[k * p..(k + 1) * p];
            batch.patch_center[i * t + k] = 0.5 * (w[0] + w[p - 1]);
        }
        batch.n_patches.push(np);
        batch.log_scale.push(s.log_scale);
        batch.ids.push(format!("synthetic-{i}"));
        batch.surveys.push(Survey::Sdss);
        batch.sources.push(Source {
            file: PathBuf::from("synthetic"),
            hdu: "none".into(),
            row: Some(i as u64),
        });
        batch.labels.push(Labels::default());
    }
    batch
}

/// A ragged batch of three spectra of the demo patch size.
pub fn ragged_batch(p: usize) -> (Vec<Spec>, Batch) {
    let specs = vec![
        spectrum(1, 5, p, 3800.0, 1.5, &[2], p),
        spectrum(2, 3, p, 15100.0, 0.2, &[], p - 3),
        spectrum(3, 7, p, 4714.0, 0.05, &[0, 6], 2),
    ];
    let batch = collate(&specs, 0);
    (specs, batch)
}

/// The device the model tests run on: the CPU, or the one named by
/// `SPECTOK_TEST_DEVICE` (`cuda`, `cuda:N`; `scripts/gpu_check.sh` sets
/// it to run these tests on a GPU).
#[allow(dead_code)]
pub fn device() -> Device {
    match std::env::var("SPECTOK_TEST_DEVICE") {
        Ok(name) if !name.is_empty() => spectok_model::device(&name)
            .unwrap_or_else(|e| panic!("SPECTOK_TEST_DEVICE={name}: {e}")),
        _ => Device::Cpu,
    }
}

/// A small random f32 model on the test [`device`].
pub fn model(cfg: &Config, seed: u64) -> (Tokenizer, candle_nn::VarMap) {
    Tokenizer::init(cfg, &device(), DType::F32, seed).expect("model init")
}

/// Row `b` of a `(B, T, D)` tensor as nested vectors.
pub fn rows(t: &Tensor, b: usize) -> Vec<Vec<f32>> {
    t.get(b)
        .and_then(|r| r.to_dtype(DType::F32))
        .and_then(|r| r.to_vec2::<f32>())
        .expect("tensor row")
}

/// Largest absolute difference of two tensors of one shape (any float
/// dtype, compared in f32).
#[allow(dead_code)]
pub fn tensor_diff(a: &Tensor, b: &Tensor) -> f32 {
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).expect("to f32");
    (f32(a) - f32(b))
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("tensors of one shape")
}

/// Largest absolute difference of two equally long rows.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
