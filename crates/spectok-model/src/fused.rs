//! Fused CPU kernels with their backward passes: softmax over the last
//! dimension, LayerNorm, the exact (erf) GELU and a row-broadcast bias.
//!
//! candle's own fused softmax and LayerNorm have no backward pass, and its
//! differentiable composites take 5–10 memory passes forward and as many
//! again backward, each with a fresh buffer. These take one pass forward
//! and one or two backward, rows split over rayon. They apply to
//! contiguous f32 tensors on the CPU; [`softmax`], [`layer_norm`] and
//! [`gelu_erf`] fall back to the composites elsewhere (other dtypes, CUDA),
//! so results agree with the composites to float rounding either way.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};
use multiversion::multiversion;
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

mod attention;
mod linear;

/// Elements handed to one rayon task at least.
const TASK_ELEMENTS: usize = 1 << 14;

/// Rows of `n` values per rayon task.
fn rows_per_task(n: usize) -> usize {
    (TASK_ELEMENTS / n.max(1)).max(1)
}

/// A new vector of `n` values built on rayon's threads: each block of
/// `step` values is zeroed by its own task and then filled by
/// `f(block index, block)`. The zero fill, which `vec![0; n]` does as one
/// serial pass (calloc reuses freed memory) while the other cores wait,
/// happens beside its use, block by block.
fn par_new(n: usize, step: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(step.max(1))
        .enumerate()
        .for_each(|(i, block)| {
            for v in block.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every element of `block` was initialised just above;
            // MaybeUninit<f32> has f32's layout.
            let block = unsafe {
                std::slice::from_raw_parts_mut(block.as_mut_ptr().cast::<f32>(), block.len())
            };
            f(i, block);
        });
    // SAFETY: the tasks initialised all `n` values (the chunks cover
    // `..n`).
    unsafe { out.set_len(n) };
    out
}

/// A new vector of `n` values built on rayon's threads, each block of
/// `step` values written in full by `f(block index, block)` — no zero
/// fill first (one pass over the memory rather than two). `f` must
/// initialise every element of its block.
fn par_fill(
    n: usize,
    step: usize,
    f: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(step.max(1))
        .enumerate()
        .for_each(|(i, block)| f(i, block));
    // SAFETY: the chunks cover `..n`, and `f` initialises every element
    // of its chunk (this function's contract).
    unsafe { out.set_len(n) };
    out
}

/// `n` zeros, written in parallel (see [`par_new`]).
fn par_zeros(n: usize) -> Vec<f32> {
    par_new(n, TASK_ELEMENTS * 16, |_, _| {})
}

/// `f(out, x)` over blocks of `step` values of `x` (whole rows when `step`
/// is a multiple of the row width), blocks split over rayon.
fn map_blocks(x: &[f32], step: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let step = step.max(1);
    par_new(x.len(), step, |i, o| f(o, &x[i * step..i * step + o.len()]))
}

/// [`map_blocks`] over two inputs of the same length.
fn map_blocks2(
    x: &[f32],
    y: &[f32],
    step: usize,
    f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync,
) -> Vec<f32> {
    let step = step.max(1);
    par_new(x.len(), step, |i, o| {
        let r = i * step..i * step + o.len();
        // A shorter `y` ends the pairs early (as zipped chunks would).
        let ry = r.start.min(y.len())..r.end.min(y.len());
        f(o, &x[r], &y[ry])
    })
}

/// Whether the fused kernels are used (on by default).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels on or off for the whole process, so that a
/// benchmark can time them against the composites in one run.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether `xs` takes the fused kernels (an f32 CPU tensor, kernels
/// enabled), for callers that arrange their work around them.
pub fn applies(xs: &Tensor) -> bool {
    fusable(xs)
}

/// Whether `xs` can take the fused kernels.
fn fusable(xs: &Tensor) -> bool {
    ENABLED.load(Ordering::Relaxed) && xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// The contiguous f32 values of a CPU storage.
fn values<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Width of the last dimension of a layout.
fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

// ---------------------------------------------------------------------------
// Softmax
// ---------------------------------------------------------------------------

/// Softmax over the last dimension, differentiable (candle's
/// `softmax_last_dim` has no backward; `candle_nn::ops::softmax` is the
/// composite).
pub fn softmax(xs: &Tensor) -> Result<Tensor> {
    if !fusable(xs) {
        return candle_nn::ops::softmax(xs, D::Minus1);
    }
    xs.contiguous()?.apply_op1(Softmax)
}

struct Softmax;

/// `eˣ` in straight-line f32 arithmetic that the compiler vectorises
/// (libm's `expf` is a scalar call): Cephes' `expf` — `x = n ln 2 + r`
/// with `n` rounded by the 1.5·2²³ shift, `r` by a two-part `ln 2`, a
/// degree-6 polynomial for `eʳ`, and `2ⁿ` built in the exponent bits —
/// within 2.5e-7 relative (test). The input is clamped to
/// `[−87.3, 88.3]`, where `2ⁿ` stays a normal number: below, the result
/// is `e^−87.3` (1.2e-38) instead of a subnormal or zero, above it is
/// `e^88.3`; NaN stays NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 · 2²³
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // t's low mantissa bits hold n + 2²² (two's complement in 23 bits).
    let n_int = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    er * f32::from_bits((n_int.wrapping_add(127) << 23) as u32)
}

/// `Σ f(aᵢ, bᵢ)` in eight interleaved partial sums (the compiler keeps
/// them in one vector register; a single running sum cannot be
/// vectorised without reordering it). Pairs end with the shorter slice.
#[inline(always)]
fn lane_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += f(x, y);
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `Σ f(xᵢ)` as [`lane_sum2`] does it.
#[inline(always)]
fn lane_sum_by(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    lane_sum2(x, x, |v, _| f(v))
}

/// Sum of a row as [`lane_sum2`] does it.
#[inline(always)]
fn lane_sum(row: &[f32]) -> f32 {
    lane_sum_by(row, |v| v)
}

/// Largest value of a row (−∞ when empty), in sixteen interleaved
/// partial maxima: a single running `f32::max` is a chain of dependent
/// scalar steps the compiler cannot vectorise. NaNs are passed over, as
/// `f32::max` passes them.
#[inline(always)]
fn lane_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for (m, &v) in acc.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    acc.iter().copied().fold(tail, f32::max)
}

/// Replaces the logits of one row by their softmax.
#[multiversion(targets = "simd")]
fn softmax_in_place(row: &mut [f32]) {
    softmax_from_max(row, lane_max(row));
}

/// The softmax of a row whose largest value is `max`, in place: the
/// exponentials summed as they are written, then scaled.
#[inline(always)]
fn softmax_from_max(row: &mut [f32], max: f32) {
    let inv = 1.0 / exp_and_sum(row, max);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `row ← row + bias` (pairs end with the shorter slice), returning the
/// largest sum, in one pass (partial maxima as in [`lane_max`]).
#[inline(always)]
fn add_and_max(row: &mut [f32], bias: &[f32]) -> f32 {
    let n = row.len().min(bias.len());
    let (row, bias) = (&mut row[..n], &bias[..n]);
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut rows = row.chunks_exact_mut(16);
    let mut biases = bias.chunks_exact(16);
    for (r, b) in (&mut rows).zip(&mut biases) {
        for ((m, x), &b) in acc.iter_mut().zip(r.iter_mut()).zip(b) {
            *x += b;
            *m = if *x > *m { *x } else { *m };
        }
    }
    let mut tail = f32::NEG_INFINITY;
    for (x, &b) in rows.into_remainder().iter_mut().zip(biases.remainder()) {
        *x += b;
        tail = tail.max(*x);
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// `row ← exp(row − max)` (terms below [`NEGLIGIBLE`] as zero), returning
/// the sum of the new values, in one pass (partial sums as in
/// [`lane_sum2`], sixteen of them).
#[inline(always)]
fn exp_and_sum(row: &mut [f32], max: f32) -> f32 {
    let term = |v: &mut f32| {
        let d = *v - max;
        let e = exp(d);
        *v = if d < NEGLIGIBLE { 0.0 } else { e };
        *v
    };
    let mut acc = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for (s, v) in acc.iter_mut().zip(c.iter_mut()) {
            *s += term(v);
        }
    }
    let tail: f32 = chunks.into_remainder().iter_mut().map(term).sum();
    acc.iter().sum::<f32>() + tail
}

/// Below this, `exp` is under 2e-35 of the largest term: the term is
/// taken as zero (a masked key's logit, −1e9, lands here).
const NEGLIGIBLE: f32 = -80.0;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "spectok-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s, l)?;
        let n = last_dim(l);
        let out = map_blocks(x, n * rows_per_task(n), |o, x| {
            for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                o.copy_from_slice(x);
                softmax_in_place(o);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(
            &grad,
            &SoftmaxBackward { scale: 1.0 },
        )?))
    }
}

/// `dx = scale · y ⊙ (dy − Σ dy ⊙ y)` per row, from the softmax output
/// `y` of `softmax(scale · x + …)`.
struct SoftmaxBackward {
    scale: f32,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "spectok-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = values(self.name(), s1, l1)?;
        let dy = values(self.name(), s2, l2)?;
        let n = last_dim(l1);
        let dx = map_blocks2(y, dy, n * rows_per_task(n), |dx, y, dy| {
            let rows = dx.chunks_exact_mut(n).zip(y.chunks_exact(n));
            for ((dx, y), dy) in rows.zip(dy.chunks_exact(n)) {
                let dot = lane_sum2(y, dy, |y, d| y * d);
                for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                    *dx = self.scale * y * (dy - dot);
                }
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `softmax(scale · logits + bias)` over the last dimension, where `logits` is
/// `(B, …, Sk)` and `bias` `(B, 1, …, 1, Sk)` (an attention key mask; it
/// gets no gradient). One pass forward; the sum `logits + bias`, which
/// candle would materialise and give a full-size gradient buffer in the
/// backward pass, never exists.
pub fn softmax_with_bias(logits: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    if !(fusable(logits) && fusable(bias)) {
        let scaled = if scale == 1.0 {
            logits.clone()
        } else {
            (logits * scale)?
        };
        return candle_nn::ops::softmax(&scaled.broadcast_add(bias)?, D::Minus1);
    }
    let bias = bias.detach().contiguous()?;
    let op = SoftmaxWithBias {
        scale: scale as f32,
    };
    logits.contiguous()?.apply_op2(&bias, op)
}

struct SoftmaxWithBias {
    scale: f32,
}

impl CustomOp2 for SoftmaxWithBias {
    fn name(&self) -> &'static str {
        "spectok-softmax-with-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s1, l1)?;
        let bias = values(self.name(), s2, l2)?;
        let n = last_dim(l1);
        let batch = l1.dims().first().copied().unwrap_or(1);
        if bias.len() != batch * n {
            candle_core::bail!(
                "{}: bias of {} values does not suit {:?}",
                self.name(),
                bias.len(),
                l1.dims()
            );
        }
        // Rows of one batch element share its bias row.
        let rows_per_batch = (x.len() / n.max(1)) / batch.max(1);
        let step = n * rows_per_task(n);
        let out = par_new(x.len(), step, |block, o| {
            let x = &x[block * step..block * step + o.len()];
            let first_row = block * (step / n.max(1));
            for (r, (o, x)) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)).enumerate() {
                let b = (first_row + r) / rows_per_batch.max(1);
                let bias = &bias[b * n..(b + 1) * n];
                for ((o, &x), &c) in o.iter_mut().zip(x).zip(bias) {
                    *o = self.scale * x + c;
                }
                softmax_in_place(o);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _logits: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let backward = SoftmaxBackward { scale: self.scale };
        Ok((Some(res.apply_op2_no_bwd(&grad, &backward)?), None))
    }
}

// ---------------------------------------------------------------------------
// LayerNorm
// ---------------------------------------------------------------------------

/// LayerNorm over the last dimension with gain `weight` and shift `bias`
/// (both of its width), differentiable in all three.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !(fusable(xs) && fusable(weight) && fusable(bias)) {
        return composite_layer_norm(xs, weight, bias, eps);
    }
    let xs = xs.contiguous()?;
    let (weight, bias) = (weight.contiguous()?, bias.contiguous()?);
    xs.apply_op3(&weight, &bias, LayerNormOp { eps: eps as f32 })
}

/// LayerNorm from basic ops, statistics in f32 whatever the dtype.
pub fn composite_layer_norm(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dtype = xs.dtype();
    let x = xs.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)?
        .broadcast_add(&bias.to_dtype(dtype)?)
}

/// Mean and 1/σ of one row.
#[inline(always)]
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len().max(1) as f32;
    let mean = lane_sum(x) / n;
    let var = lane_sum_by(x, |v| (v - mean) * (v - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm of the rows (of the gain's width) of `x` into `o`.
#[multiversion(targets = "simd")]
fn layer_norm_rows(o: &mut [f32], x: &[f32], (w, b): (&[f32], &[f32]), eps: f32) {
    let n = w.len().max(1);
    for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
        let (mean, rstd) = row_stats(x, eps);
        for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
            *o = (x - mean) * rstd * w + b;
        }
    }
}

/// One block of rows of [`LayerNormBackward`]: `dx` of each row, and the
/// rows' `dy ⊙ x̂` and `dy` added to `dw` and `db`; `g` is scratch of the
/// width.
#[multiversion(targets = "simd")]
fn layer_norm_backward_rows(
    (dx, x, dy): (&mut [f32], &[f32], &[f32]),
    w: &[f32],
    eps: f32,
    (dw, db, g): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let n = w.len().max(1);
    for ((dx, x), dy) in dx
        .chunks_exact_mut(n)
        .zip(x.chunks_exact(n))
        .zip(dy.chunks_exact(n))
    {
        let (mean, rstd) = row_stats(x, eps);
        for i in 0..n {
            let xhat = (x[i] - mean) * rstd;
            g[i] = dy[i] * w[i];
            dw[i] += dy[i] * xhat;
            db[i] += dy[i];
        }
        let mean_g = lane_sum(g) / n as f32;
        let mean_gx = lane_sum2(g, x, |g, x| g * ((x - mean) * rstd)) / n as f32;
        for i in 0..n {
            let xhat = (x[i] - mean) * rstd;
            dx[i] = (g[i] - mean_g - xhat * mean_gx) * rstd;
        }
    }
}

#[derive(Clone, Copy)]
struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "spectok-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s1, l1)?;
        let w = values(self.name(), s2, l2)?;
        let b = values(self.name(), s3, l3)?;
        let n = last_dim(l1);
        if w.len() != n || b.len() != n {
            candle_core::bail!("{}: gain/shift width differs from {n}", self.name());
        }
        let eps = self.eps;
        let out = map_blocks(x, n * rows_per_task(n), |o, x| {
            layer_norm_rows(o, x, (w, b), eps)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let packed = x.apply_op3_no_bwd(weight, &grad, &LayerNormBackward { eps: self.eps })?;
        let n = weight.elem_count();
        let total = x.elem_count();
        let dx = packed.narrow(0, 0, total)?.reshape(x.shape())?;
        let dw = packed.narrow(0, total, n)?.reshape(weight.shape())?;
        let db = packed.narrow(0, total + n, n)?.reshape(weight.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The three gradients of [`LayerNormOp`] packed in one flat tensor:
/// `dx` (the input's size), then `dweight` and `dbias` (the width each).
/// With `x̂ = (x − μ)/σ` and `g = dy ⊙ w`:
/// `dx = (g − mean(g) − x̂ · mean(g ⊙ x̂)) / σ`, `dw = Σ dy ⊙ x̂`,
/// `db = Σ dy` (sums over rows).
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "spectok-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s1, l1)?;
        let w = values(self.name(), s2, l2)?;
        let dy = values(self.name(), s3, l3)?;
        let n = last_dim(l1);
        let total = x.len();
        let mut out = par_zeros(total + 2 * n);
        let (dx, rest) = out.split_at_mut(total);
        let step = n * rows_per_task(n);
        let (dw, db) = dx
            .par_chunks_mut(step)
            .zip(x.par_chunks(step).zip(dy.par_chunks(step)))
            .map(|(dx, (x, dy))| {
                let mut dw = vec![0f32; n];
                let mut db = vec![0f32; n];
                let mut g = vec![0f32; n];
                layer_norm_backward_rows((dx, x, dy), w, self.eps, (&mut dw, &mut db, &mut g));
                (dw, db)
            })
            .reduce(
                || (vec![0f32; n], vec![0f32; n]),
                |(mut aw, mut ab), (bw, bb)| {
                    aw.iter_mut().zip(&bw).for_each(|(a, b)| *a += b);
                    ab.iter_mut().zip(&bb).for_each(|(a, b)| *a += b);
                    (aw, ab)
                },
            );
        rest[..n].copy_from_slice(&dw);
        rest[n..].copy_from_slice(&db);
        Ok((CpuStorage::F32(out), Shape::from(total + 2 * n)))
    }
}

// ---------------------------------------------------------------------------
// Bias
// ---------------------------------------------------------------------------

/// How a linear layer's weight is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `W (out, in)`, as PyTorch's `nn.Linear` (and the checkpoints)
    /// store it: the trained parameters.
    OutIn,
    /// `Wᵀ (in, out)`, row-major: copies made for inference, the operand
    /// the CPU GEMMs run fastest from (see `fused/linear.rs`).
    InOut,
}

/// A linear layer `x Wᵀ + b` (`x (…, in)`, the weight stored as `layout`
/// says, `b (out)`) as one differentiable op: the GEMM accumulates onto
/// the bias, and the backward pass gives the gradients of `x`, the weight
/// and `b` straight from the output gradient (see `fused/linear.rs`).
/// `None` where the fused kernel does not apply (not f32 on the CPU, or
/// the kernels are off): the caller then takes the composite path.
pub fn linear(
    xs: &Tensor,
    weight: &Tensor,
    layout: WeightLayout,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    apply_linear(xs, weight, bias, || Ok(linear::Linear::plain(layout)))
}

/// `op` (made only where it applies) on `xs`, `weight` and the bias when
/// all are f32 CPU tensors and the kernels are on; `None` otherwise.
fn apply_linear(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    op: impl FnOnce() -> Result<linear::Linear>,
) -> Result<Option<Tensor>> {
    if !(fusable(xs) && fusable(weight) && bias.is_none_or(fusable)) {
        return Ok(None);
    }
    let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
    let op = op()?;
    Ok(Some(match bias {
        Some(b) => xs.apply_op3(&weight, &b.contiguous()?, op)?,
        None => xs.apply_op2(&weight, op)?,
    }))
}

/// [`linear`] plus `residual` (the output's shape), the GEMM accumulating
/// onto `b + residual`: the residual connection of a transformer block
/// without a pass of its own. Only for a residual outside the graph
/// (inference; a residual that needs a gradient is not an input of the
/// op): `None` there, and wherever [`linear`] does not apply.
pub fn linear_onto(
    xs: &Tensor,
    weight: &Tensor,
    layout: WeightLayout,
    bias: Option<&Tensor>,
    residual: &Tensor,
) -> Result<Option<Tensor>> {
    if !fusable(residual) || residual.track_op() {
        return Ok(None);
    }
    apply_linear(xs, weight, bias, || {
        Ok(linear::Linear::onto(layout, residual.contiguous()?))
    })
}

/// A 2-D tensor's transpose in storage of its own, row-major (a
/// cache-blocked copy for f32 on the CPU, candle's strided copy
/// elsewhere); outside any graph.
pub fn transposed(w: &Tensor) -> Result<Tensor> {
    let w = w.detach();
    let (rows, cols) = w.dims2()?;
    if !(w.device().is_cpu() && w.dtype() == DType::F32) {
        return w.t()?.contiguous();
    }
    let w = w.contiguous()?;
    let wt = linear::with_values(&w, |v| Ok(linear::transpose(v, rows, cols)))?;
    Tensor::from_vec(wt, (cols, rows), w.device())
}

/// [`linear`] followed by the exact GELU, as one op: the activation is
/// applied right after the GEMM, and the pre-activation is kept (when a
/// gradient can flow) for the backward pass, which turns the output
/// gradient into the pre-activation's before the GEMMs — no graph node,
/// gradient buffer or extra pass for the `(rows × out)` pre-activation.
/// `None` where the fused kernel does not apply.
pub fn linear_gelu(
    xs: &Tensor,
    weight: &Tensor,
    layout: WeightLayout,
    bias: &Tensor,
) -> Result<Option<Tensor>> {
    if !(fusable(xs) && fusable(weight) && fusable(bias)) {
        return Ok(None);
    }
    let keep = xs.track_op() || weight.track_op() || bias.track_op();
    let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
    let op = linear::Linear::with_gelu(layout, keep);
    Ok(Some(xs.apply_op3(&weight, &bias.contiguous()?, op)?))
}

/// `x + bias` with `bias` (the width of `x`'s last dimension) broadcast
/// over the rows. The backward pass sums the gradient's rows in parallel
/// blocks; candle's `broadcast_add` backward reduces over the leading
/// dimensions with a strided single-threaded sum.
pub fn add_bias(xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !(fusable(xs) && fusable(bias)) {
        return xs.broadcast_add(bias);
    }
    xs.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "spectok-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s1, l1)?;
        let b = values(self.name(), s2, l2)?;
        let n = last_dim(l1);
        if b.len() != n {
            candle_core::bail!("{}: bias width {} differs from {n}", self.name(), b.len());
        }
        let out = map_blocks(x, n * rows_per_task(n), |o, x| {
            for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                    *o = x + b;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = grad.apply_op1_no_bwd(&SumRows)?.reshape(bias.shape())?;
        Ok((Some(grad), Some(db)))
    }
}

/// Sums the rows of a tensor: `(…, n)` → `(n)`.
struct SumRows;

/// Adds every row (of `acc`'s width) of `block` to `acc`.
#[multiversion(targets = "simd")]
fn add_rows(acc: &mut [f32], block: &[f32]) {
    for row in block.chunks_exact(acc.len().max(1)) {
        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
}

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "spectok-sum-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s, l)?;
        let n = last_dim(l);
        let sums = x
            .par_chunks(n * rows_per_task(n))
            .map(|block| {
                let mut acc = vec![0f32; n];
                add_rows(&mut acc, block);
                acc
            })
            .reduce(
                || vec![0f32; n],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        Ok((CpuStorage::F32(sums), Shape::from(n)))
    }
}

// ---------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------

/// Multi-head attention `softmax(scale · q kᵀ + bias) v` over `(B, Sq, D)`
/// queries and `(B, Sk, D)` keys and values (the projections, heads
/// interleaved along `D`), with `key_mask` `(B, Sk)` non-zero where a key
/// may be attended (others get [`crate::layers::MASK_LOGIT`]); returns
/// `(B, Sq, D)`, differentiable in q, k and v. `train` keeps the softmax
/// weights for the backward pass. `None` where the fused kernel does not
/// apply (not f32 on the CPU, or the kernels are off): the caller then
/// takes the composite path.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Tensor,
    heads: usize,
    scale: f64,
    train: bool,
) -> Result<Option<Tensor>> {
    attention_blocks(
        q,
        k,
        v,
        key_mask,
        (heads, scale, train),
        attention::QUERY_BLOCK_LOGITS,
    )
}

/// [`attention`] holding at most `block_logits` logits per task at
/// inference.
fn attention_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Tensor,
    (heads, scale, train): (usize, f64, bool),
    block_logits: usize,
) -> Result<Option<Tensor>> {
    if !(fusable(q) && fusable(k) && fusable(v)) {
        return Ok(None);
    }
    let bias: Vec<f32> = key_mask
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?
        .into_iter()
        .map(|m| {
            if m != 0 {
                0.0
            } else {
                crate::layers::MASK_LOGIT
            }
        })
        .collect();
    let op = attention::Attention::new(heads, scale as f32, bias, train, block_logits);
    Ok(Some(q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        op,
    )?))
}

// GELU
// ---------------------------------------------------------------------------

/// Exact GELU `x Φ(x)`, differentiable with a one-pass backward.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if !fusable(xs) {
        return xs.gelu_erf();
    }
    xs.contiguous()?.apply_op1(Gelu)
}

/// `erf(x)` in f32 as a rational function of `x` clamped to ±4 (beyond
/// which erf is ±1 in f32): the single-precision approximation of Eigen
/// and XLA, within 4.5e-7 of the exact value over the whole line (the
/// unit test checks 1e-6 against `libm`). Branch-free, so the loops below
/// vectorise; libm's `erff` is a scalar call per element.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const A: [f32; 7] = [
        -1.609_603_3e-2,
        -2.954_6e-3,
        -7.349_906_3e-4,
        -5.692_506_4e-5,
        -2.101_024e-6,
        2.770_681_4e-8,
        -2.726_142_3e-10,
    ];
    const B: [f32; 5] = [
        -1.426_473_9e-2,
        -7.373_329e-3,
        -1.682_827e-3,
        -2.133_740_6e-4,
        -1.456_607_2e-5,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = A[6];
    for a in A[..6].iter().rev() {
        p = p * x2 + *a;
    }
    let mut q = B[4];
    for b in B[..4].iter().rev() {
        q = q * x2 + *b;
    }
    x * p / q
}

/// `Φ(x)`, the standard normal CDF.
#[inline(always)]
fn phi_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `x ← x Φ(x)` over a block.
#[multiversion(targets = "simd")]
fn gelu_in_place(x: &mut [f32]) {
    for x in x.iter_mut() {
        *x *= phi_cdf(*x);
    }
}

/// `o = x Φ(x)` over a block.
#[multiversion(targets = "simd")]
fn gelu_block(o: &mut [f32], x: &[f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = x * phi_cdf(x);
    }
}

/// `dx = dy · (Φ(x) + x φ(x))` over a block.
#[multiversion(targets = "simd")]
fn gelu_grad_block(dx: &mut [f32], x: &[f32], dy: &[f32]) {
    // 1/√(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
        *dx = dy * (phi_cdf(x) + x * pdf);
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "spectok-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s, l)?;
        let out = map_blocks(x, TASK_ELEMENTS, gelu_block);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &GeluBackward)?))
    }
}

/// `dx = dy · (Φ(x) + x φ(x))`.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "spectok-gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s1, l1)?;
        let dy = values(self.name(), s2, l2)?;
        let dx = map_blocks2(x, dy, TASK_ELEMENTS, gelu_grad_block);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn exp_is_within_a_few_ulp_over_its_range() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            let exact = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - exact) / exact).abs();
            worst = worst.max(rel);
            x += 1.3e-3;
        }
        assert!(worst < 2.5e-7, "exp off by {worst} relative");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(-1e9) > 0.0 && exp(-1e9) < 2e-38);
        assert!(exp(1e9).is_finite());
    }

    #[test]
    fn erf_is_within_a_micro_of_the_exact_value_everywhere() {
        let mut worst = 0f64;
        for i in -1_200_000..=1_200_000 {
            let x = i as f32 * 5e-6;
            let exact = candle_core::cpu::erf::erf_f64(f64::from(x));
            worst = worst.max((f64::from(erf(x)) - exact).abs());
        }
        for x in [-1e30f32, -50.0, -4.0, 4.0, 7.5, 1e30, f32::MIN_POSITIVE] {
            let exact = candle_core::cpu::erf::erf_f64(f64::from(x));
            worst = worst.max((f64::from(erf(x)) - exact).abs());
        }
        assert!(worst < 1e-6, "erf off by {worst}");
    }

    /// Values and gradients (of a random weighting of the output) of the
    /// fused op equal those of the composite.
    fn agree(
        shape: &[usize],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        composite: impl Fn(&[Tensor]) -> Result<Tensor>,
        extra: &[Tensor],
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 2.0, shape, &dev)? + 0.3)?;
        let weighting = Tensor::randn(0f32, 1.0, shape, &dev)?;
        let run = |f: &dyn Fn(&[Tensor]) -> Result<Tensor>| -> Result<(Tensor, Vec<Tensor>)> {
            let mut vars = vec![Var::from_tensor(&x)?];
            for e in extra {
                vars.push(Var::from_tensor(e)?);
            }
            let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&inputs)?;
            let grads = (&y * &weighting)?.sum_all()?.backward()?;
            let g = vars
                .iter()
                .map(|v| grads.get(v).cloned().expect("a gradient for every input"))
                .collect();
            Ok((y, g))
        };
        let (yf, gf) = run(&fused)?;
        let (yc, gc) = run(&composite)?;
        let close = |a: &Tensor, b: &Tensor, what: &str| -> Result<()> {
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
            assert!(
                diff / scale < 1e-5,
                "{what}: max diff {diff} (scale {scale})"
            );
            Ok(())
        };
        close(&yf, &yc, "value")?;
        for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
            close(a, b, &format!("gradient of input {i}"))?;
        }
        Ok(())
    }

    #[test]
    fn fused_softmax_equals_the_composite_forward_and_backward() -> Result<()> {
        for shape in [[2, 3, 5, 7], [1, 2, 4, 300]] {
            agree(
                &shape,
                |t| softmax(&t[0]),
                |t| candle_nn::ops::softmax(&t[0], D::Minus1),
                &[],
            )?;
        }
        Ok(())
    }

    #[test]
    fn fused_layer_norm_equals_the_composite_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, n) in [(3usize, 8usize), (1500, 64)] {
            let w = (Tensor::randn(0f32, 1.0, n, &dev)? + 1.0)?;
            let b = Tensor::randn(0f32, 1.0, n, &dev)?;
            agree(
                &[rows, n],
                |t| layer_norm(&t[0], &t[1], &t[2], 1e-5),
                |t| composite_layer_norm(&t[0], &t[1], &t[2], 1e-5),
                &[w, b],
            )?;
        }
        Ok(())
    }

    /// The composite attention of `layers::Attention` (heads split and
    /// merged by copies, candle's softmax).
    fn composite_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        heads: usize,
        scale: f64,
    ) -> Result<Tensor> {
        let (b, sq, d) = q.dims3()?;
        let sk = k.dim(1)?;
        let split = |x: &Tensor, s: usize| {
            x.reshape((b, s, heads, d / heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (qh, kh, vh) = (split(q, sq)?, split(k, sk)?, split(v, sk)?);
        let dev = q.device();
        let bias = mask.reshape((b, 1, 1, sk))?.where_cond(
            &Tensor::zeros((b, 1, 1, sk), DType::F32, dev)?,
            &Tensor::new(crate::layers::MASK_LOGIT, dev)?.broadcast_as((b, 1, 1, sk))?,
        )?;
        let logits = (qh.matmul(&kh.t()?)? * scale)?.broadcast_add(&bias)?;
        candle_nn::ops::softmax(&logits, D::Minus1)?
            .matmul(&vh)?
            .transpose(1, 2)?
            .reshape((b, sq, d))
    }

    #[test]
    fn fused_attention_equals_the_composite_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        // Self-attention and cross-attention (Sq ≠ Sk); the second spectrum
        // may attend only its first 5 keys.
        for (b, sq, sk, d, heads) in [(2, 7, 7, 16, 4), (2, 5, 11, 24, 3)] {
            let mask: Vec<u8> = (0..b * sk)
                .map(|i| u8::from(i < sk || i % sk < 5))
                .collect();
            let mask = Tensor::from_vec(mask, (b, sk), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (b, sk, d), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (b, sk, d), &dev)?;
            let scale = 1.0 / ((d / heads) as f64).sqrt();
            // Training (weights kept), inference in one block and in
            // blocks of two query rows (the backward recomputes them).
            for (train, block) in [(true, usize::MAX), (false, usize::MAX), (false, 2 * sk)] {
                agree(
                    &[b, sq, d],
                    |t| {
                        attention_blocks(&t[0], &t[1], &t[2], &mask, (heads, scale, train), block)?
                            .ok_or_else(|| candle_core::Error::Msg("not fused".into()))
                    },
                    |t| composite_attention(&t[0], &t[1], &t[2], &mask, heads, scale),
                    &[k.clone(), v.clone()],
                )?;
            }
        }
        Ok(())
    }

    #[test]
    fn fused_gelu_equals_the_composite_forward_and_backward() -> Result<()> {
        for shape in [[4, 9], [40, 1000]] {
            agree(&shape, |t| gelu_erf(&t[0]), |t| t[0].gelu_erf(), &[])?;
        }
        Ok(())
    }

    #[test]
    fn fused_linear_equals_the_composite_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        for (case, layout) in [
            (vec![7usize, 5], 3usize, true),
            (vec![2, 9, 33], 17, true),
            (vec![3, 4, 6], 8, false),
            // 128 rows and more and a reduction at least as long as the
            // output: the forward of a weight stored as W reads a
            // row-major copy of Wᵀ (with and without a bias) …
            (vec![2, 70, 37], 9, true),
            (vec![130, 5], 3, false),
            // … but not where the output is wider than the reduction.
            (vec![140, 6], 11, true),
        ]
        .into_iter()
        .flat_map(|case| [WeightLayout::OutIn, WeightLayout::InOut].map(|l| (case.clone(), l)))
        {
            let (x_shape, out, bias) = case;
            let inp = *x_shape.last().unwrap_or(&1);
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, x_shape.as_slice(), &dev)?)?;
            let w_shape = match layout {
                WeightLayout::OutIn => (out, inp),
                WeightLayout::InOut => (inp, out),
            };
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, w_shape, &dev)?)?;
            // The composite's `Wᵀ`, from either layout.
            let wt = match layout {
                WeightLayout::OutIn => w.as_tensor().t()?,
                WeightLayout::InOut => w.as_tensor().clone(),
            };
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, out, &dev)?)?;
            let mut y_shape = x_shape.clone();
            if let Some(last) = y_shape.last_mut() {
                *last = out;
            }
            let weighting = Tensor::randn(0f32, 1.0, y_shape.as_slice(), &dev)?;
            let bias_t = bias.then(|| b.as_tensor().clone());
            let fused = linear(x.as_tensor(), w.as_tensor(), layout, bias_t.as_ref())?
                .expect("f32 on the CPU takes the fused op");
            let rows = x.elem_count() / inp;
            let mut composite = x.as_tensor().reshape((rows, inp))?.matmul(&wt)?;
            if bias {
                composite = composite.broadcast_add(b.as_tensor())?;
            }
            let composite = composite.reshape(y_shape.as_slice())?;
            let d = (&fused - &composite)?.abs()?.flatten_all()?.max(0)?;
            assert!(
                d.to_scalar::<f32>()? < 1e-4,
                "{x_shape:?} {layout:?}: value"
            );
            let gf = (&fused * &weighting)?.sum_all()?.backward()?;
            let gc = (&composite * &weighting)?.sum_all()?.backward()?;
            let mut vars = vec![("x", &x), ("w", &w)];
            if bias {
                vars.push(("b", &b));
            }
            for (name, v) in vars {
                let (a, c) = (gf.get(v).expect("fused grad"), gc.get(v).expect("grad"));
                assert_eq!(a.dims(), c.dims(), "{x_shape:?} {layout:?}: {name}");
                let d = (a - c)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(
                    d < 1e-4,
                    "{x_shape:?} {layout:?}: gradient of {name} off by {d}"
                );
            }
            if !bias {
                assert!(gf.get(&b).is_none());
            }
        }
        // No rows: the output is empty, the weight's gradient zero.
        let x = Var::from_tensor(&Tensor::zeros((0, 6), DType::F32, &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 6), &dev)?)?;
        let b = Tensor::randn(0f32, 1.0, 4, &dev)?;
        let y =
            linear(x.as_tensor(), w.as_tensor(), WeightLayout::OutIn, Some(&b))?.expect("fused");
        assert_eq!(y.dims(), &[0, 4]);
        let g = y.sum_all()?.backward()?;
        let gw = g.get(&w).expect("weight gradient");
        assert_eq!(gw.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        // An input outside the graph (data) gets no gradient computed.
        let x = Tensor::randn(0f32, 1.0, (4, 3), &dev)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3), &dev)?)?;
        let y = linear(&x, w.as_tensor(), WeightLayout::OutIn, None)?.expect("fused");
        let g = y.sum_all()?.backward()?;
        assert!(g.get(&x).is_none());
        assert!(g.get(&w).is_some());
        Ok(())
    }

    #[test]
    fn linear_onto_a_residual_equals_the_linear_plus_the_residual() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, inp, out, bias, layout) in [
            (5usize, 7usize, 3usize, true, WeightLayout::OutIn),
            (5, 7, 3, false, WeightLayout::InOut),
            (150, 9, 4, true, WeightLayout::OutIn),
            (150, 9, 4, false, WeightLayout::OutIn),
            (150, 4, 9, true, WeightLayout::InOut),
            (3, 0, 4, false, WeightLayout::OutIn),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, inp), &dev)?)?;
            let w_shape = match layout {
                WeightLayout::OutIn => (out, inp),
                WeightLayout::InOut => (inp, out),
            };
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, w_shape, &dev)?)?;
            let b = bias
                .then(|| Tensor::randn(0f32, 1.0, out, &dev))
                .transpose()?;
            let r = Tensor::randn(0f32, 1.0, (rows, out), &dev)?;
            let case = format!("{rows}×{inp}→{out} {layout:?} bias {bias}");
            let folded = linear_onto(x.as_tensor(), w.as_tensor(), layout, b.as_ref(), &r)?
                .expect("a residual outside the graph is folded");
            let plain = linear(x.as_tensor(), w.as_tensor(), layout, b.as_ref())?.expect("fused");
            let d = (&folded - (plain + &r)?)?.abs()?.flatten_all()?.max(0)?;
            assert!(d.to_scalar::<f32>()? < 1e-4, "{case}: value");
            if inp == 0 {
                continue;
            }
            // The weight and the input still get their gradients.
            let g = folded.sum_all()?.backward()?;
            let gp = linear(x.as_tensor(), w.as_tensor(), layout, b.as_ref())?
                .expect("fused")
                .sum_all()?
                .backward()?;
            for (name, v) in [("x", &x), ("w", &w)] {
                let (a, c) = (g.get(v).expect("grad"), gp.get(v).expect("grad"));
                let d = (a - c)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(d < 1e-4, "{case}: gradient of {name} off by {d}");
            }
        }
        // A residual that needs a gradient is not folded.
        let x = Tensor::randn(0f32, 1.0, (4, 3), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (2, 3), &dev)?;
        let r = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 2), &dev)?)?;
        assert!(linear_onto(&x, &w, WeightLayout::OutIn, None, r.as_tensor())?.is_none());
        // A residual of another size is an error, not a wrong answer.
        let r = Tensor::randn(0f32, 1.0, (3, 2), &dev)?;
        assert!(linear_onto(&x, &w, WeightLayout::OutIn, None, &r).is_err());
        Ok(())
    }

    #[test]
    fn fused_linear_gelu_equals_the_composite_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        // 2 × 70 rows: past the per-call transpose's threshold.
        for (layout, rows) in [
            (WeightLayout::OutIn, 11),
            (WeightLayout::OutIn, 70),
            (WeightLayout::InOut, 11),
            (WeightLayout::InOut, 70),
        ] {
            linear_gelu_agrees(&dev, layout, rows)?;
        }
        Ok(())
    }

    fn linear_gelu_agrees(dev: &Device, layout: WeightLayout, rows: usize) -> Result<()> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, rows, 9), dev)?)?;
        let (w, wt) = match layout {
            WeightLayout::OutIn => {
                let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (13, 9), dev)?)?;
                let wt = w.as_tensor().t()?;
                (w, wt)
            }
            WeightLayout::InOut => {
                let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (9, 13), dev)?)?;
                let wt = w.as_tensor().clone();
                (w, wt)
            }
        };
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 13, dev)?)?;
        let weighting = Tensor::randn(0f32, 1.0, (2, rows, 13), dev)?;
        let fused = linear_gelu(x.as_tensor(), w.as_tensor(), layout, b.as_tensor())?
            .expect("f32 on the CPU takes the fused op");
        let composite = x
            .as_tensor()
            .broadcast_matmul(&wt)?
            .broadcast_add(b.as_tensor())?
            .gelu_erf()?;
        let d = (&fused - &composite)?.abs()?.flatten_all()?.max(0)?;
        assert!(d.to_scalar::<f32>()? < 1e-5, "{layout:?} {rows}: value");
        let loss = (&fused * &weighting)?.sum_all()?;
        let gc = (&composite * &weighting)?.sum_all()?.backward()?;
        // The first backward uses the kept pre-activation, the second
        // recomputes it: both equal the composite's gradients.
        for round in 0..2 {
            let gf = loss.backward()?;
            for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
                let (a, c) = (gf.get(v).expect("fused grad"), gc.get(v).expect("grad"));
                let d = (a - c)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert!(
                    d < 1e-4,
                    "{layout:?} {rows}: round {round}: gradient of {name} off by {d}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn fused_bias_equals_broadcast_add_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        for (shape, n) in [(vec![3usize, 7], 7usize), (vec![4, 300, 64], 64)] {
            let b = Tensor::randn(0f32, 1.0, n, &dev)?;
            agree(
                &shape,
                |t| add_bias(&t[0], &t[1]),
                |t| t[0].broadcast_add(&t[1]),
                &[b],
            )?;
        }
        Ok(())
    }

    #[test]
    fn fused_softmax_with_bias_equals_the_composite() -> Result<()> {
        let dev = Device::Cpu;
        // A key mask: 0 where attendable, MASK_LOGIT elsewhere.
        let keep = Tensor::new(&[[1u8, 1, 0, 1, 0], [1, 0, 1, 1, 1]], &dev)?;
        let bias = keep
            .where_cond(
                &Tensor::zeros((2, 5), DType::F32, &dev)?,
                &Tensor::full(crate::layers::MASK_LOGIT, (2, 5), &dev)?,
            )?
            .reshape((2, 1, 1, 5))?;
        let b = bias.clone();
        agree(
            &[2, 3, 4, 5],
            move |t| softmax_with_bias(&t[0], &b, 0.3),
            move |t| candle_nn::ops::softmax(&(&t[0] * 0.3)?.broadcast_add(&bias)?, D::Minus1),
            &[],
        )
    }

    #[test]
    fn strided_inputs_are_accepted() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (6, 5), &Device::Cpu)?.t()?;
        let a = softmax(&x)?;
        let b = candle_nn::ops::softmax(&x, D::Minus1)?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6);
        Ok(())
    }
}
