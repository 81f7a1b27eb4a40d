//! Building blocks shared by encoder and decoder, all differentiable end
//! to end (no fused inference-only kernels).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use crate::config::Config;

/// Logit given to masked keys before the softmax. Finite, so a row whose
/// keys are all masked gives a uniform (not NaN) distribution; the scale
/// token is always attendable, so that never happens for real rows.
pub const MASK_LOGIT: f32 = -1e9;

/// A linear layer `y = x Wᵀ + b` initialised like PyTorch's `nn.Linear`
/// (weight and bias uniform in ±1/√fan_in). Weights at `vb/weight`,
/// `vb/bias`.
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (in_dim.max(1) as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", init)?;
    let bias = if bias {
        Some(vb.get_with_hints(out_dim, "bias", init)?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

/// Dropout in training mode, identity otherwise (or when `p == 0`).
pub fn dropout(xs: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(xs, p)
    } else {
        Ok(xs.clone())
    }
}

/// LayerNorm over the last dimension, built from basic ops so it has a
/// backward pass; statistics are computed in f32 whatever the model dtype.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Gain `vb/weight` (ones) and shift `vb/bias` (zeros) of width `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(LayerNorm { weight, bias, eps })
    }
}

impl LayerNorm {
    /// Like [`Module::forward`]; outside training (`train == false`) an
    /// f32 input takes candle's fused one-pass kernel, which has no
    /// backward pass (training always uses the differentiable path).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if !train && xs.dtype() == DType::F32 && self.weight.dtype() == DType::F32 {
            let xs = xs.contiguous()?;
            return candle_nn::ops::layer_norm(&xs, &self.weight, &self.bias, self.eps as f32);
        }
        self.forward(xs)
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Transformer MLP: `fc2(gelu(fc1(x)))`, hidden width
/// [`Config::mlp_hidden`], exact (erf) GELU.
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// Weights at `vb/fc1`, `vb/fc2`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.mlp_hidden();
        Ok(Mlp {
            fc1: linear(cfg.d_model, hidden, true, vb.pp("fc1"))?,
            fc2: linear(hidden, cfg.d_model, true, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.fc1)?.gelu_erf()?.apply(&self.fc2)
    }
}

/// Multi-head attention of queries `x_q` over keys/values `x_kv` with a
/// key mask; self-attention passes the same tensor twice.
#[derive(Clone, Debug)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
    dropout: f32,
}

impl Attention {
    /// Projections at `vb/q`, `vb/k`, `vb/v`, `vb/out` (all with bias).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Attention {
            q: linear(d, d, true, vb.pp("q"))?,
            k: linear(d, d, true, vb.pp("k"))?,
            v: linear(d, d, true, vb.pp("v"))?,
            out: linear(d, d, true, vb.pp("out"))?,
            heads: cfg.heads,
            head_dim: cfg.head_dim(),
            dropout: cfg.dropout,
        })
    }

    /// `(B, S, D)` → `(B, H, S, D/H)`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, s, _) = xs.dims3()?;
        xs.reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `x_q`: `(B, Sq, D)`; `x_kv`: `(B, Sk, D)`; `key_mask`: `(B, Sk)` u8,
    /// non-zero where a key may be attended. Masked keys get
    /// [`MASK_LOGIT`], so they receive exactly zero weight.
    pub fn forward(
        &self,
        x_q: &Tensor,
        x_kv: &Tensor,
        key_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b, sq, d) = x_q.dims3()?;
        let sk = x_kv.dim(1)?;
        let q = self.split_heads(&x_q.apply(&self.q)?)?;
        let k = self.split_heads(&x_kv.apply(&self.k)?)?;
        let v = self.split_heads(&x_kv.apply(&self.v)?)?;
        // The 1/√d scale goes on q (B·S·D values rather than B·H·S·S
        // logits), and masked keys get an additive MASK_LOGIT bias built
        // once per call at (B, 1, 1, Sk): cheaper than a full-size select,
        // forward and backward.
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = (q * scale)?;
        let logits = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let dev = logits.device();
        let bias = key_mask.reshape((b, 1, 1, sk))?.where_cond(
            &Tensor::zeros((b, 1, 1, sk), DType::F32, dev)?,
            &Tensor::new(MASK_LOGIT, dev)?.broadcast_as((b, 1, 1, sk))?,
        )?;
        let logits = logits.broadcast_add(&bias)?;
        // Outside training the fused last-dim softmax (one pass, no
        // backward) replaces the differentiable composite.
        let weights = if train {
            candle_nn::ops::softmax(&logits, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&logits)?
        }
        .to_dtype(v.dtype())?;
        let weights = dropout(&weights, self.dropout, train)?;
        weights
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, sq, d))?
            .apply(&self.out)
    }
}
