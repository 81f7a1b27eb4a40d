//! Writes a checkpoint and a batch with the model's outputs, for the
//! PyTorch reference (`scripts/reference_model.py compare`) to reproduce.
//!
//! ```text
//! cargo run --example export_reference -p spectok-model -- OUT [demo|small|paper] [--fsq] [--steps N]
//! python scripts/reference_model.py compare OUT/checkpoint OUT/batch.safetensors
//! ```
//!
//! The model is initialised from a fixed seed and trained for a few AdamW
//! steps (default 20) on a synthetic ragged batch (invalid patches, short
//! tail patches, padding), so the weights are not the initial ones.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spectok_data::{Batch, PatchState};
use spectok_io::{Labels, Source, Survey};
use spectok_model::{Config, Tokenizer};

/// A ragged synthetic batch: spectra on SDSS-, GALAH- and APOGEE-like
/// grids with a few invalid patches and bad pixels.
fn synthetic_batch(p: usize, seed: u64) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // (patches, first wavelength, step, last patch's real pixels)
    let layout = [
        (12, 3800.0, 1.8, p),
        (7, 4714.0, 0.046, p / 2),
        (10, 15100.0, 0.21, 3),
        (4, 6476.0, 0.06, p),
    ];
    let b = layout.len();
    let t = layout.iter().map(|l| l.0).max().unwrap_or(0);
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
    for (s, &(np, start, step, tail)) in layout.iter().enumerate() {
        let line = start + step * (np * p) as f64 * rng.random::<f64>();
        for i in 0..np {
            let k = s * t + i;
            let invalid = rng.random::<f64>() < 0.15;
            batch.patch_state[k] = if invalid {
                PatchState::Invalid
            } else {
                PatchState::Valid
            };
            let real = if i + 1 == np { tail } else { p };
            let mut last = 0.0;
            for j in 0..p {
                let px = k * p + j;
                let w = start + step * (i * p + j) as f64;
                if j < real {
                    last = w;
                }
                batch.wavelength[px] = last;
                let ok = !invalid && j < real && rng.random::<f64>() > 0.05;
                if ok {
                    let f = 1.0 - 0.6 * (-((w - line) / (5.0 * step)).powi(2)).exp()
                        + 0.05 * (rng.random::<f64>() - 0.5);
                    batch.flux[px] = f as f32;
                    batch.sigma[px] = 0.03;
                    batch.weight[px] = 1111.0;
                }
            }
            batch.patch_center[k] = 0.5 * (batch.wavelength[k * p] + last);
        }
        batch.n_patches.push(np);
        batch.log_scale.push(rng.random::<f32>() * 2.0 - 1.0);
        batch.ids.push(format!("reference-{s}"));
        batch.surveys.push(Survey::Sdss);
        batch.sources.push(Source {
            file: PathBuf::from("synthetic"),
            hdu: "none".into(),
            row: Some(s as u64),
        });
        batch.labels.push(Labels::default());
    }
    batch
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: export_reference OUT [demo|small|paper] [--fsq] [--steps N]")?,
    );
    let mut cfg = Config::demo();
    let mut steps = 20usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "demo" => cfg = Config::demo(),
            "small" => {
                cfg = Config {
                    patch_size: 16,
                    d_model: 128,
                    encoder_layers: 3,
                    decoder_layers: 3,
                    heads: 4,
                    ..Config::paper()
                }
            }
            "paper" => cfg = Config::paper(),
            "--fsq" => cfg.fsq_levels = vec![8, 5, 5, 5],
            "--steps" => steps = args.next().ok_or("--steps needs a number")?.parse()?,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let device = Device::Cpu;
    let (model, varmap) = Tokenizer::init(&cfg, &device, DType::F32, 2025)?;
    let batch = synthetic_batch(cfg.patch_size, 7);
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    for step in 0..steps {
        let loss = model.loss(&batch, None, true)?;
        opt.backward_step(&loss.loss)?;
        if step == 0 || step + 1 == steps {
            println!("step {step}: loss {:.4}", loss.loss.to_scalar::<f32>()?);
        }
    }
    let ckpt = out.join("checkpoint");
    model.save(&varmap, &ckpt)?;

    let enc = model.encode(&batch, false)?;
    let recon = model.reconstruct(&batch)?;
    let (b, t, p) = (batch.batch_size, batch.max_patches, batch.patch_size);
    let states: Vec<u8> = batch.patch_state.iter().map(|s| *s as u8).collect();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert(
        "flux".into(),
        Tensor::from_vec(batch.flux.clone(), (b, t, p), &device)?,
    );
    tensors.insert(
        "sigma".into(),
        Tensor::from_vec(batch.sigma.clone(), (b, t, p), &device)?,
    );
    tensors.insert(
        "weight".into(),
        Tensor::from_vec(batch.weight.clone(), (b, t, p), &device)?,
    );
    tensors.insert(
        "wavelength".into(),
        Tensor::from_vec(batch.wavelength.clone(), (b, t, p), &device)?,
    );
    tensors.insert(
        "patch_state".into(),
        Tensor::from_vec(states, (b, t), &device)?,
    );
    tensors.insert(
        "log_scale".into(),
        Tensor::from_vec(batch.log_scale.clone(), b, &device)?,
    );
    tensors.insert("tokens".into(), enc.tokens.clone());
    tensors.insert("token_mask".into(), enc.token_mask.clone());
    tensors.insert("scale_token".into(), enc.scale_token.clone());
    tensors.insert("pooled".into(), enc.pooled.clone());
    tensors.insert("reconstruction".into(), recon);
    if let Some(ids) = &enc.token_ids {
        tensors.insert("token_ids".into(), ids.clone());
    }
    let batch_file = out.join("batch.safetensors");
    candle_core::safetensors::save(&tensors, &batch_file)?;
    println!(
        "wrote {} and {} (B={b} T={t} P={p} D={})",
        ckpt.display(),
        batch_file.display(),
        cfg.d_model
    );
    Ok(())
}
