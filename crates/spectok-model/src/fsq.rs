//! Finite scalar quantisation (Mentzer et al. 2023, arXiv:2309.15505) of
//! the encoder tokens, for discrete token ids.
//!
//! A token `x` (width `D`) is projected to `d = levels.len()` code
//! dimensions, each bounded to `L_i` values by
//! `tanh(z + shift) · half_l − offset` (`half_l = (L−1)(1−ε)/2`,
//! `offset = 0.5` for even `L`, `shift = tan(offset/half_l)` as in the
//! paper's reference code, which is finite for every `L ≥ 2`), rounded
//! with a straight-through gradient, rescaled to `[−1, 1]` by
//! `half_width = ⌊L/2⌋`, and projected back to `D`. The token id is the
//! mixed-radix number of the digits `round(bounded) + half_width`, first
//! dimension least significant.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::layers::{linear, Linear};

/// Shrinks the bound slightly so `round` never lands on the excluded edge.
const EPS: f64 = 1e-3;

/// The quantiser and its two projections.
#[derive(Clone, Debug)]
pub struct Fsq {
    proj_in: Linear,
    proj_out: Linear,
    levels: Vec<u32>,
    /// `(d)` tensors, f32.
    half_l: Tensor,
    offset: Tensor,
    shift: Tensor,
    half_width: Tensor,
    basis: Tensor,
}

impl Fsq {
    /// Projections at `vb/proj_in` (`D → d`) and `vb/proj_out` (`d → D`).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let levels = cfg.fsq_levels.clone();
        let d = levels.len();
        let dev = vb.device().clone();
        let half_l: Vec<f32> = levels
            .iter()
            .map(|&l| ((l as f64 - 1.0) * (1.0 - EPS) / 2.0) as f32)
            .collect();
        let offset: Vec<f32> = levels
            .iter()
            .map(|&l| if l % 2 == 0 { 0.5 } else { 0.0 })
            .collect();
        let shift: Vec<f32> = offset
            .iter()
            .zip(&half_l)
            .map(|(&o, &h)| ((o as f64) / (h as f64)).tan() as f32)
            .collect();
        let half_width: Vec<f32> = levels.iter().map(|&l| (l / 2) as f32).collect();
        let mut basis = Vec::with_capacity(d);
        let mut acc = 1u64;
        for &l in &levels {
            basis.push(acc as f32);
            acc *= l as u64;
        }
        let t = |v: Vec<f32>| Tensor::from_vec(v, d, &dev);
        Ok(Fsq {
            proj_in: linear(cfg.d_model, d, true, vb.pp("proj_in"))?,
            proj_out: linear(d, cfg.d_model, true, vb.pp("proj_out"))?,
            half_l: t(half_l)?,
            offset: t(offset)?,
            shift: t(shift)?,
            half_width: t(half_width)?,
            basis: t(basis)?,
            levels,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Fsq {
            proj_in: self.proj_in.for_inference()?,
            proj_out: self.proj_out.for_inference()?,
            ..self.clone()
        })
    }

    /// Levels per code dimension.
    pub fn levels(&self) -> &[u32] {
        &self.levels
    }

    /// Quantises `xs (…, D)`: returns the quantised tokens `(…, D)` (in
    /// `xs`'s dtype, straight-through gradient) and the token ids `(…)` u32.
    pub fn forward(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let dtype = xs.dtype();
        let z = xs.apply(&self.proj_in)?.to_dtype(DType::F32)?;
        let bounded = z
            .broadcast_add(&self.shift)?
            .tanh()?
            .broadcast_mul(&self.half_l)?
            .broadcast_sub(&self.offset)?;
        let rounded = bounded.round()?;
        let quantised = (&bounded + (&rounded - &bounded)?.detach())?;
        let zhat = quantised.broadcast_div(&self.half_width)?;
        let tokens = zhat.to_dtype(dtype)?.apply(&self.proj_out)?;
        let ids = rounded
            .broadcast_add(&self.half_width)?
            .broadcast_mul(&self.basis)?
            .sum(D::Minus1)?
            .to_dtype(DType::U32)?;
        Ok((tokens, ids))
    }

    /// The quantised tokens `(B, T, D)` of token ids `(B, T)` u32, in
    /// `dtype`: the inverse of the id half of [`Fsq::forward`].
    pub fn tokens_from_ids(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = self.levels.len();
        let flat = ids.flatten_all()?.to_vec1::<u32>()?;
        let mut zhat = Vec::with_capacity(flat.len() * d);
        for id in flat {
            let mut rest = id as u64;
            for &l in &self.levels {
                let digit = (rest % l as u64) as f32;
                rest /= l as u64;
                let hw = (l / 2) as f32;
                zhat.push((digit - hw) / hw);
            }
        }
        let dev: &Device = ids.device();
        Tensor::from_vec(zhat, (b, t, d), dev)?
            .to_dtype(dtype)?
            .apply(&self.proj_out)
    }
}

impl Module for Fsq {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Fsq::forward(self, xs).map(|(tokens, _)| tokens)
    }
}
