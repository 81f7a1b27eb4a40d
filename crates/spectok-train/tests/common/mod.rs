//! Test support shared by the integration tests (spectok-train's and the
//! CLI's): a tiny tokenizer trained for a few steps on survey files. Each
//! test crate uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use spectok_data::{BatchSize, PrepareConfig};
use spectok_train::{DataConfig, OptimConfig, ScheduleConfig, SourceConfig, TrainConfig, Trainer};

/// A width-16, 1+1-layer, 2-head model with patches of `patch_size`.
pub fn tiny_model(patch_size: usize) -> spectok_model::Config {
    spectok_model::Config {
        patch_size,
        d_model: 16,
        encoder_layers: 1,
        decoder_layers: 1,
        heads: 2,
        mlp_ratio: 2.0,
        wavelength_freqs: 8,
        offset_freqs: 2,
        ..spectok_model::Config::paper()
    }
}

/// A width-16, 1+1-layer training config on `dir/<survey>` for each of
/// `surveys`, written to `out`; `prepare` sets the patch size of model
/// and batches alike; `steps` steps with eval and checkpoint at the end.
pub fn tiny_config(
    dir: &Path,
    surveys: &[&str],
    prepare: PrepareConfig,
    steps: u64,
    seed: u64,
    out: &Path,
) -> TrainConfig {
    let sources = surveys
        .iter()
        .map(|s| SourceConfig {
            name: s.to_string(),
            paths: vec![dir.join(s).display().to_string()],
            weight: 1.0,
            format: None,
        })
        .collect();
    TrainConfig {
        model: tiny_model(prepare.patch_size),
        data: DataConfig {
            sources,
            prepare,
            val_fraction: 0.2,
            val_max_spectra: 4,
            eval_batch_size: 4,
            pool_size: 16,
            ..DataConfig::default()
        },
        batch: BatchSize::Fixed { spectra: 4 },
        optim: OptimConfig {
            lr: 3e-3,
            ..OptimConfig::default()
        },
        schedule: ScheduleConfig {
            warmup_steps: 1,
            ..ScheduleConfig::default()
        },
        steps,
        eval_interval: steps,
        checkpoint_interval: steps,
        log_interval: 1,
        seed,
        out_dir: out.to_path_buf(),
        ..TrainConfig::default()
    }
}

/// Trains `cfg` into a fresh `cfg.out_dir` and returns that directory.
pub fn train(cfg: TrainConfig) -> PathBuf {
    let dir = cfg.out_dir.clone();
    let _ = std::fs::remove_dir_all(&dir);
    let mut t = Trainer::new(cfg, None).expect("trainer");
    t.run(&mut (), &AtomicBool::new(false)).expect("training");
    dir
}
