//! The light heads on the frozen tokenizer, in candle.
//!
//! - **attentive** (default): `queries` learned query vectors
//!   cross-attend (multi-head, `heads` heads) to the frozen tokens of a
//!   spectrum (its scale token and one token per valid patch, each
//!   dimension standardised on the training tokens, then LayerNorm'd;
//!   padding is masked out of the softmax); the attended vectors are
//!   concatenated, LayerNorm'd, joined by the standardised pooled
//!   embedding (so the head sees at least what the linear probe sees) and
//!   passed through a two-layer GELU MLP of width `hidden`.
//! - **linear**: one linear layer on the standardised pooled embedding
//!   (the paper's probe).
//!
//! Outputs are in standardised target units: redshift gives a mean and a
//! log-variance of the standardised log(1+z) (trained by Gaussian
//! negative log-likelihood), class gives logits (cross-entropy), stellar
//! gives one value per parameter (mean squared error over the known
//! values).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use spectok_model::layers::{linear, LayerNorm, Linear, MASK_LOGIT};

use super::Task;
use crate::error::Result;

/// Which head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Learned queries cross-attending to the tokens, then an MLP.
    Attentive,
    /// Linear on the pooled embedding.
    Linear,
}

/// The architecture of a head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// attentive or linear.
    pub kind: HeadKind,
    /// Learned queries (attentive).
    pub queries: usize,
    /// Attention heads (attentive); must divide the embedding width.
    pub heads: usize,
    /// MLP hidden width (attentive).
    pub hidden: usize,
    /// Dropout before the last layer, in training.
    pub dropout: f32,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            kind: HeadKind::Attentive,
            queries: 4,
            heads: 4,
            hidden: 256,
            dropout: 0.1,
        }
    }
}

/// Number of outputs a task's head has (`classes` for classification,
/// `params` stellar parameters).
pub fn outputs(task: Task, n_names: usize) -> usize {
    match task {
        Task::Redshift => 2,
        Task::Class | Task::Stellar => n_names,
    }
}

/// A head ready to run or train.
pub struct Head {
    cfg: HeadConfig,
    dim: usize,
    norm_in: Option<LayerNorm>,
    queries: Option<Tensor>,
    wk: Option<Linear>,
    wv: Option<Linear>,
    norm_out: Option<LayerNorm>,
    fc1: Option<Linear>,
    fc2: Linear,
}

/// A batch of inputs: `(B, T, D)` tokens with a `(B, T)` 0/1 mask and the
/// `(B, D)` pooled embeddings, or the pooled embeddings alone (all
/// standardised per dimension on the training part).
pub enum HeadInput {
    /// Padded token sequences, their mask and the pooled embeddings.
    Tokens(Tensor, Tensor, Tensor),
    /// Pooled embeddings.
    Pooled(Tensor),
}

impl Head {
    /// Builds a head of `out` outputs on `dim`-wide tokens; weights under `vb`.
    pub fn new(cfg: &HeadConfig, dim: usize, out: usize, vb: VarBuilder) -> Result<Head> {
        match cfg.kind {
            HeadKind::Linear => Ok(Head {
                cfg: cfg.clone(),
                dim,
                norm_in: None,
                queries: None,
                wk: None,
                wv: None,
                norm_out: None,
                fc1: None,
                fc2: linear(dim, out, true, vb.pp("out"))?,
            }),
            HeadKind::Attentive => {
                let q = cfg.queries.max(1);
                let queries = vb.get_with_hints(
                    (q, dim),
                    "queries",
                    candle_nn::Init::Randn {
                        mean: 0.0,
                        stdev: 0.02,
                    },
                )?;
                Ok(Head {
                    cfg: cfg.clone(),
                    dim,
                    norm_in: Some(LayerNorm::new(dim, 1e-5, vb.pp("norm_in"))?),
                    queries: Some(queries),
                    wk: Some(linear(dim, dim, true, vb.pp("k"))?),
                    wv: Some(linear(dim, dim, true, vb.pp("v"))?),
                    norm_out: Some(LayerNorm::new(q * dim, 1e-5, vb.pp("norm_out"))?),
                    fc1: Some(linear((q + 1) * dim, cfg.hidden, true, vb.pp("fc1"))?),
                    fc2: linear(cfg.hidden, out, true, vb.pp("out"))?,
                })
            }
        }
    }

    /// The head's outputs `(B, out)`.
    pub fn forward(&self, input: &HeadInput, train: bool) -> Result<Tensor> {
        let p = self.cfg.dropout;
        match input {
            HeadInput::Pooled(x) => {
                let x = spectok_model::layers::dropout(x, p, train)?;
                Ok(self.fc2.forward(&x)?)
            }
            HeadInput::Tokens(x, mask, pooled_in) => {
                let (Some(norm_in), Some(queries), Some(wk), Some(wv), Some(norm_out), Some(fc1)) = (
                    &self.norm_in,
                    &self.queries,
                    &self.wk,
                    &self.wv,
                    &self.norm_out,
                    &self.fc1,
                ) else {
                    // A linear head given tokens uses the pooled embedding.
                    return Ok(self.fc2.forward(pooled_in)?);
                };
                let (b, t, d) = x.dims3()?;
                let h = self.cfg.heads.max(1);
                let dh = d / h;
                let q = queries.dim(0)?;
                let x = norm_in.forward(x)?;
                // (B, T, D) → (B, H, T, dh)
                let k = wk
                    .forward(&x)?
                    .reshape((b, t, h, dh))?
                    .transpose(1, 2)?
                    .contiguous()?;
                let v = wv
                    .forward(&x)?
                    .reshape((b, t, h, dh))?
                    .transpose(1, 2)?
                    .contiguous()?;
                // (Q, D) → (1, H, Q, dh) → (B, H, Q, dh)
                let qs = queries
                    .reshape((q, h, dh))?
                    .transpose(0, 1)?
                    .unsqueeze(0)?
                    .broadcast_as((b, h, q, dh))?
                    .contiguous()?;
                let scores = (qs.matmul(&k.transpose(2, 3)?.contiguous()?)? / (dh as f64).sqrt())?;
                // mask (B, T) → additive bias (B, 1, 1, T): 0 where valid,
                // MASK_LOGIT on padding.
                let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * (-(MASK_LOGIT as f64)))?
                    .reshape((b, 1, 1, t))?;
                let scores = scores.broadcast_add(&bias)?;
                // The fused softmax has no backward pass: training takes
                // the differentiable composite.
                let attn = if train {
                    spectok_model::fused::softmax(&scores)?
                } else {
                    candle_nn::ops::softmax_last_dim(&scores)?
                };
                let pooled = attn.matmul(&v)?; // (B, H, Q, dh)
                let pooled = pooled.transpose(1, 2)?.contiguous()?.reshape((b, q * d))?;
                let y = Tensor::cat(&[&norm_out.forward(&pooled)?, pooled_in], 1)?;
                let y = spectok_model::fused::gelu_erf(&fc1.forward(&y)?)?;
                let y = spectok_model::layers::dropout(&y, p, train)?;
                Ok(self.fc2.forward(&y)?)
            }
        }
    }

    /// The token width the head expects.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// Pads token sequences (each `n_i × dim` values) into a `(B, T, D)`
/// tensor and a `(B, T)` mask.
pub fn pad_tokens(seqs: &[&[f32]], dim: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let t = seqs
        .iter()
        .map(|s| s.len() / dim.max(1))
        .max()
        .unwrap_or(0)
        .max(1);
    let b = seqs.len();
    let mut data = vec![0f32; b * t * dim];
    let mut mask = vec![0f32; b * t];
    for (i, s) in seqs.iter().enumerate() {
        let n = s.len() / dim.max(1);
        data[i * t * dim..i * t * dim + n * dim].copy_from_slice(&s[..n * dim]);
        for m in &mut mask[i * t..i * t + n] {
            *m = 1.0;
        }
    }
    Ok((
        Tensor::from_vec(data, (b, t, dim), device)?,
        Tensor::from_vec(mask, (b, t), device)?,
    ))
}

/// The training loss of a batch of head outputs `y` `(B, out)` against
/// standardised targets `target` `(B, K)` (class: `(B,)` u32 indices;
/// stellar: NaN-free targets with a 0/1 `known` mask of the same shape).
pub fn loss(task: Task, y: &Tensor, target: &Tensor, known: Option<&Tensor>) -> Result<Tensor> {
    match task {
        Task::Class => Ok(candle_nn::loss::cross_entropy(y, target)?),
        Task::Redshift => {
            let mu = y.narrow(1, 0, 1)?.squeeze(1)?;
            let logvar = y.narrow(1, 1, 1)?.squeeze(1)?.clamp(-12.0, 8.0)?;
            let t = target.squeeze(1)?;
            let d2 = (mu - t)?.sqr()?;
            let nll = ((d2 * logvar.neg()?.exp()?)? + logvar)?;
            Ok((nll.mean_all()? * 0.5)?)
        }
        Task::Stellar => {
            let d2 = (y - target)?.sqr()?;
            match known {
                Some(m) => {
                    let n = m.sum_all()?.clamp(1.0, f64::INFINITY)?;
                    Ok((d2 * m)?.sum_all()?.div(&n)?)
                }
                None => Ok(d2.mean_all()?),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    #[test]
    fn every_attentive_head_parameter_gets_a_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let cfg = HeadConfig {
            dropout: 0.0,
            ..HeadConfig::default()
        };
        let (b, t, d) = (3, 5, 8);
        let head = Head::new(&cfg, d, 2, vb)?;
        let x = Tensor::randn(0f32, 1.0, (b, t, d), &dev)?;
        let mask: Vec<u8> = (0..b * t)
            .map(|i| u8::from(i % t < 3 + i / t % 2))
            .collect();
        let mask = Tensor::from_vec(mask, (b, t), &dev)?;
        let pooled = Tensor::randn(0f32, 1.0, (b, d), &dev)?;
        let y = head.forward(&HeadInput::Tokens(x, mask, pooled), true)?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        for (name, var) in varmap.data().lock().expect("varmap").iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} gets no gradient"));
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm > 0.0 && norm.is_finite(), "{name}: |g|² = {norm}");
        }
        Ok(())
    }
}
