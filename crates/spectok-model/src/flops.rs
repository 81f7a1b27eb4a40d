//! Matmul FLOP counts, for model FLOP utilisation (MFU).
//!
//! Counts `2·m·n·k` per matrix product (weights and attention), nothing
//! for element-wise ops, norms or softmax, on the full padded shapes the
//! model really computes.

use crate::config::Config;

/// FLOPs of `y = x W` with `x: m × k`, `W: k × n`.
fn mm(m: f64, k: f64, n: f64) -> f64 {
    2.0 * m * k * n
}

/// Forward matmul FLOPs of the encoder (with the quantiser's projections
/// when it is on) for `batch_size` spectra of `n_patches` patch slots.
pub fn encoder_flops(cfg: &Config, batch_size: usize, n_patches: usize) -> f64 {
    let (b, t) = (batch_size as f64, n_patches as f64);
    let d = cfg.d_model as f64;
    let p = cfg.patch_size as f64;
    let h = cfg.mlp_hidden() as f64;
    let s = t + 1.0;
    let embed = mm(b * t, 3.0 * p, d)
        + mm(b * t, cfg.wavelength_dim() as f64, d)
        + mm(b * t, p * cfg.offset_dim() as f64, d)
        + mm(b, 1.0, d);
    let block = 4.0 * mm(b * s, d, d) // q, k, v, out
        + 2.0 * mm(b * s, d, s) // scores and weighted values
        + mm(b * s, d, h)
        + mm(b * s, h, d);
    let fsq = if cfg.fsq_enabled() {
        let c = cfg.fsq_levels.len() as f64;
        mm(b * t, d, c) + mm(b * t, c, d)
    } else {
        0.0
    };
    embed + cfg.encoder_layers as f64 * block + fsq
}

/// Forward matmul FLOPs of the decoder and head for `target_patches`
/// target patches per spectrum attending to `n_patches` tokens plus the
/// scale token.
pub fn decoder_flops(
    cfg: &Config,
    batch_size: usize,
    n_patches: usize,
    target_patches: usize,
) -> f64 {
    let (b, tq) = (batch_size as f64, target_patches as f64);
    let s = n_patches as f64 + 1.0;
    let d = cfg.d_model as f64;
    let p = cfg.patch_size as f64;
    let h = cfg.mlp_hidden() as f64;
    let embed =
        mm(b * tq, cfg.wavelength_dim() as f64, d) + mm(b * tq, p * cfg.offset_dim() as f64, d);
    let block = 2.0 * mm(b * tq, d, d) // q, out
        + 2.0 * mm(b * s, d, d) // k, v
        + 2.0 * mm(b * tq, d, s) // scores and weighted values
        + mm(b * tq, d, h)
        + mm(b * tq, h, d);
    let head = mm(b * tq, d, p);
    embed + cfg.decoder_layers as f64 * block + head
}

/// Forward matmul FLOPs of one training-case pass (encode a
/// `batch_size × n_patches` batch and decode onto the same grid).
pub fn forward_flops(cfg: &Config, batch_size: usize, n_patches: usize) -> f64 {
    encoder_flops(cfg, batch_size, n_patches) + decoder_flops(cfg, batch_size, n_patches, n_patches)
}

/// FLOPs of one training step (forward + backward ≈ 3 × forward).
pub fn train_step_flops(cfg: &Config, batch_size: usize, n_patches: usize) -> f64 {
    3.0 * forward_flops(cfg, batch_size, n_patches)
}
