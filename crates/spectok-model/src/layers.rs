//! Building blocks shared by encoder and decoder, all differentiable end
//! to end (inference-only fused kernels are used outside training only).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::Config;
use crate::fused::WeightLayout;

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
    Ok(Linear {
        weight,
        bias,
        layout: WeightLayout::OutIn,
    })
}

/// A copy of `t` in storage of its own, outside any graph: what the
/// inference copies of the layers ([`Linear::for_inference`] …) hold, so
/// training the original leaves them as they were.
pub(crate) fn snapshot(t: &Tensor) -> Result<Tensor> {
    t.detach().copy()
}

/// A linear layer whose weights are cast to the input's dtype at each
/// call. With f32 weights and bf16/f16 inputs this is mixed precision:
/// the matmul runs in the input dtype while the gradient flows back
/// through the cast into the f32 master weights. With equal dtypes the
/// cast is a no-op.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `W (out, in)`, or `Wᵀ (in, out)` in an inference copy.
    weight: Tensor,
    bias: Option<Tensor>,
    layout: WeightLayout,
}

impl Linear {
    /// The weight matrix as stored: `W (out, in)`, or `Wᵀ (in, out)` in an
    /// inference copy ([`Self::layout`] says which).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// How [`Self::weight`] is stored.
    pub fn layout(&self) -> WeightLayout {
        self.layout
    }

    /// The bias, when the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// A copy for inference: the weight stored as a row-major `Wᵀ (in,
    /// out)` — the operand the CPU GEMMs run fastest from, which a layer
    /// holding `W` copies into per call — and the bias copied, both in
    /// storage of their own, outside any graph. Gradients still flow to
    /// the layer's input.
    pub fn for_inference(&self) -> Result<Linear> {
        let weight = match self.layout {
            WeightLayout::OutIn => crate::fused::transposed(&self.weight)?,
            WeightLayout::InOut => snapshot(&self.weight)?,
        };
        Ok(Linear {
            weight,
            bias: self.bias.as_ref().map(snapshot).transpose()?,
            layout: WeightLayout::InOut,
        })
    }

    /// `x Wᵀ + b + residual` (`residual` of the output's shape). f32 on the
    /// CPU with a residual outside the graph (inference): one fused op,
    /// the GEMM accumulating onto `b + residual`, so the residual
    /// connection costs no pass of its own; else the layer, then the add.
    pub fn forward_onto(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        match crate::fused::linear_onto(
            xs,
            &self.weight,
            self.layout,
            self.bias.as_ref(),
            residual,
        )? {
            Some(ys) => Ok(ys),
            None => residual + self.forward(xs)?,
        }
    }

    /// `GELU(x Wᵀ + b)` as one fused op (f32 on the CPU, with a bias);
    /// `None` where it does not apply.
    pub fn forward_gelu(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        match &self.bias {
            Some(b) => crate::fused::linear_gelu(xs, &self.weight, self.layout, b),
            None => Ok(None),
        }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // f32 on the CPU: one fused op (GEMM onto the bias, direct
        // backward; see `fused::linear`).
        if let Some(ys) = crate::fused::linear(xs, &self.weight, self.layout, self.bias.as_ref())? {
            return Ok(ys);
        }
        // A strided input (e.g. from `Tensor::cat` along an inner
        // dimension) is made contiguous first: candle then runs one 2-D
        // GEMM instead of a broadcast batched one, which CUDA's matmul
        // cannot do on such strides.
        let xs = &xs.contiguous()?;
        let dtype = xs.dtype();
        let weight = self.weight.to_dtype(dtype)?;
        let weight_t = match self.layout {
            WeightLayout::OutIn => weight.t()?,
            WeightLayout::InOut => weight,
        };
        // Leading dimensions folded into rows: one 2-D GEMM.
        let dims = xs.dims();
        let in_dim = dims.last().copied().unwrap_or(1);
        let rows = xs.elem_count() / in_dim.max(1);
        let ys = xs.reshape((rows, in_dim))?.matmul(&weight_t)?;
        let ys = match &self.bias {
            Some(b) => crate::fused::add_bias(&ys, &b.to_dtype(dtype)?)?,
            None => ys,
        };
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = weight_t.dim(1)?;
        }
        ys.reshape(out_dims)
    }
}

/// Dropout in training mode, identity otherwise (or when `p == 0`).
pub fn dropout(xs: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(xs, p)
    } else {
        Ok(xs.clone())
    }
}

/// LayerNorm over the last dimension with a backward pass (the fused CPU
/// kernel of [`crate::fused`] for f32, else built from basic ops);
/// statistics are computed in f32 whatever the model dtype.
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
    /// A copy for inference: gain and shift in storage of their own,
    /// outside any graph.
    pub fn for_inference(&self) -> Result<Self> {
        Ok(LayerNorm {
            weight: snapshot(&self.weight)?,
            bias: snapshot(&self.bias)?,
            eps: self.eps,
        })
    }

    /// Like [`Module::forward`]; outside training (`train == false`) an
    /// input of the weights' dtype on CUDA takes candle's fused one-pass
    /// kernel, which has no backward pass (training always uses the
    /// differentiable path). On the CPU in f32 the project's own fused
    /// kernel serves both (2.5× candle's at 1168 × 512: 0.10 against 0.25
    /// ms).
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let fused_dtype = xs.dtype() == DType::F32 || xs.device().is_cuda();
        if !crate::fused::applies(xs) && !train && fused_dtype && xs.dtype() == self.weight.dtype()
        {
            let xs = xs.contiguous()?;
            return candle_nn::ops::layer_norm(&xs, &self.weight, &self.bias, self.eps as f32);
        }
        self.forward(xs)
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        crate::fused::layer_norm(xs, &self.weight, &self.bias, self.eps)
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

impl Mlp {
    /// A copy for inference (see [`Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Mlp {
            fc1: self.fc1.for_inference()?,
            fc2: self.fc2.for_inference()?,
        })
    }
}

impl Mlp {
    /// `residual + mlp(xs)`, the add folded into `fc2` where it can be
    /// (see [`Linear::forward_onto`]).
    pub fn forward_onto(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.fc2.forward_onto(&self.hidden(xs)?, residual)
    }

    /// `GELU(fc1(xs))`: one fused op for f32 on the CPU.
    fn hidden(&self, xs: &Tensor) -> Result<Tensor> {
        match self.fc1.forward_gelu(xs)? {
            Some(h) => Ok(h),
            None => crate::fused::gelu_erf(&xs.apply(&self.fc1)?),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.hidden(xs)?.apply(&self.fc2)
    }
}

/// Most attention logits materialised at once outside training (2²⁶
/// f32 values, 256 MiB): longer inputs are attended in query chunks, so
/// inference memory grows linearly, not quadratically, with the number
/// of tokens once a batch passes this size.
pub const ATTENTION_CHUNK_LOGITS: usize = 1 << 26;

/// f32 attention weights `softmax(scale · q kᵀ + bias)` of `(B, H, Sq,
/// Dh)` queries over `(B, H, Sk, Dh)` keys; `bias` is `(B, 1, 1, Sk)`.
fn attention_weights(q: &Tensor, k: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    crate::fused::softmax_with_bias(&q.matmul(&k.t()?)?.to_dtype(DType::F32)?, bias, scale)
}

/// Inference attention `softmax(scale · q kᵀ + bias) v`, over chunks of queries so that at most `max_logits` logits
/// exist at once (queries attend independently, so the result equals the
/// unchunked one).
pub fn attend_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    max_logits: usize,
) -> Result<Tensor> {
    let (b, h, sq, _) = q.dims4()?;
    let sk = k.dim(2)?;
    let per_query = (b * h * sk).max(1);
    let chunk = (max_logits / per_query).clamp(1, sq.max(1));
    let attend = |q: &Tensor| -> Result<Tensor> {
        attention_weights(q, k, bias, scale)?
            .to_dtype(v.dtype())?
            .matmul(v)
    };
    if chunk >= sq {
        return attend(q);
    }
    let mut parts = Vec::with_capacity(sq.div_ceil(chunk));
    let mut start = 0;
    while start < sq {
        let len = chunk.min(sq - start);
        parts.push(attend(&q.narrow(2, start, len)?.contiguous()?)?);
        start += len;
    }
    Tensor::cat(&parts, 2)
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

    /// A copy for inference (see [`Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Attention {
            q: self.q.for_inference()?,
            k: self.k.for_inference()?,
            v: self.v.for_inference()?,
            out: self.out.for_inference()?,
            ..self.clone()
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
        self.attend(x_q, x_kv, key_mask, None, train)
    }

    /// `residual + forward(…)` (`residual` of the output's shape), the add
    /// folded into the output projection where it can be (see
    /// [`Linear::forward_onto`]); no dropout on the attention's output.
    pub fn forward_onto(
        &self,
        x_q: &Tensor,
        x_kv: &Tensor,
        key_mask: &Tensor,
        residual: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        self.attend(x_q, x_kv, key_mask, Some(residual), train)
    }

    /// The output projection of the heads' output, onto `residual` when
    /// there is one.
    fn project(&self, heads: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        match residual {
            Some(r) => self.out.forward_onto(heads, r),
            None => heads.apply(&self.out),
        }
    }

    /// [`Self::forward`], or [`Self::forward_onto`] with a residual.
    fn attend(
        &self,
        x_q: &Tensor,
        x_kv: &Tensor,
        key_mask: &Tensor,
        residual: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, sq, d) = x_q.dims3()?;
        let sk = x_kv.dim(1)?;
        let (q, k, v) = (
            x_q.apply(&self.q)?,
            x_kv.apply(&self.k)?,
            x_kv.apply(&self.v)?,
        );
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // f32 on the CPU: one fused op per call (heads as strided views of
        // the projections, scale and mask folded in; see
        // `fused::attention`) unless attention dropout is on in training.
        if !(train && self.dropout > 0.0) {
            if let Some(o) =
                crate::fused::attention(&q, &k, &v, key_mask, self.heads, scale, train)?
            {
                return self.project(&o, residual);
            }
        }
        let (q, k, v) = (
            self.split_heads(&q)?,
            self.split_heads(&k)?,
            self.split_heads(&v)?,
        );
        // The 1/√d scale is applied inside the fused softmax on the CPU
        // (no pass of its own), else on q (B·S·D values rather than
        // B·H·S·S logits); masked keys get an additive MASK_LOGIT bias
        // built once per call at (B, 1, 1, Sk): cheaper than a full-size
        // select, forward and backward.
        let (q, scale) = if crate::fused::applies(&q) {
            (q, scale)
        } else {
            ((q * scale)?, 1.0)
        };
        let dev = q.device();
        let bias = key_mask.reshape((b, 1, 1, sk))?.where_cond(
            &Tensor::zeros((b, 1, 1, sk), DType::F32, dev)?,
            &Tensor::new(MASK_LOGIT, dev)?.broadcast_as((b, 1, 1, sk))?,
        )?;
        let heads_out = if train {
            let weights = attention_weights(&q, &k, &bias, scale)?.to_dtype(v.dtype())?;
            dropout(&weights, self.dropout, train)?.matmul(&v)?
        } else {
            attend_chunked(&q, &k, &v, &bias, scale, ATTENTION_CHUNK_LOGITS)?
        };
        self.project(&heads_out.transpose(1, 2)?.reshape((b, sq, d))?, residual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn chunked_attention_equals_one_pass_and_honours_the_mask() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, sq, sk, dh) = (2, 3, 37, 41, 8);
        let q = Tensor::randn(0f32, 1.0, (b, h, sq, dh), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (b, h, sk, dh), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, h, sk, dh), &dev)?;
        // Second spectrum: only the first 10 keys are attendable.
        let mask: Vec<u8> = (0..b * sk)
            .map(|i| u8::from(i < sk || i % sk < 10))
            .collect();
        let mask = Tensor::from_vec(mask, (b, 1, 1, sk), &dev)?;
        let bias = mask.where_cond(
            &Tensor::zeros((b, 1, 1, sk), DType::F32, &dev)?,
            &Tensor::new(MASK_LOGIT, &dev)?.broadcast_as((b, 1, 1, sk))?,
        )?;
        let whole = attend_chunked(&q, &k, &v, &bias, 0.5, usize::MAX)?;
        for max_logits in [1, b * h * sk * 5, b * h * sk * 36] {
            let parts = attend_chunked(&q, &k, &v, &bias, 0.5, max_logits)?;
            let diff = (&parts - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 5e-6, "max_logits {max_logits}: diff {diff}");
        }
        // Changing a masked key's value leaves the output unchanged.
        let v2 = v.clone();
        let bump = Tensor::zeros((b, h, sk, dh), DType::F32, &dev)?.slice_assign(
            &[1..2, 0..h, 20..21, 0..dh],
            &Tensor::ones((1, h, 1, dh), DType::F32, &dev)?,
        )?;
        let moved = attend_chunked(&q, &k, &(v2 + bump)?, &bias, 0.5, 64)?;
        let diff = (&moved - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "masked key changed the output by {diff}");
        Ok(())
    }
}
