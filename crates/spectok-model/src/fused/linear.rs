//! A linear layer `y = x Wᵀ + b` as one candle custom op with its
//! backward, for f32 on the CPU.
//!
//! As a composite, a linear layer is five graph nodes (reshape to rows,
//! `Wᵀ`, matmul, bias, reshape back), and candle's backward pass gives
//! every node's input a zero-filled gradient buffer plus an add, single
//! threaded — for the MLP's `(rows × 4D)` activations that is several
//! memory passes per layer around GEMMs that run near the machine's peak.
//! Here the output buffer starts as the bias and the GEMM accumulates onto
//! it (no zero fill, no bias pass), and the backward pass returns
//! `dX = dY W`, `dW = dYᵀ X` and `db = Σ_rows dY` straight from the
//! output gradient (two GEMMs written straight into fresh buffers): one
//! node, one gradient buffer per input.
//!
//! The MLP's first layer also takes its GELU ([`super::linear_gelu`]): the
//! activation is applied after the GEMM (in place when no backward pass
//! needs the product) and the pre-activation kept for the backward pass,
//! which multiplies the output gradient by GELU's derivative before the
//! GEMMs — the `(rows × 4D)` pre-activation is no graph node of its own.
//!
//! The weight comes as `W (out, in)` (trained parameters) or as a
//! row-major `Wᵀ (in, out)` (inference copies, [`WeightLayout`]). gemm's
//! kernels run the forward product fastest from `Wᵀ`; a `W` whose
//! reduction is at least as long as its output is copied into that
//! layout per call. The backward pass reads `W` in either layout for
//! `dX` (row-major `W` is its fast operand) and returns the weight's
//! gradient in the weight's own layout.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};

use rayon::prelude::*;

use super::{
    gelu_block, gelu_grad_block, gelu_in_place, last_dim, map_blocks, map_blocks2, par_fill,
    rows_per_task, values, SumRows, WeightLayout, TASK_ELEMENTS,
};

/// `y = x Wᵀ (+ b)` with `x (…, in)`, `W (out, in)` (or `Wᵀ (in, out)`),
/// `b (out)`, or `GELU(x Wᵀ + b)`.
pub(super) struct Linear {
    layout: WeightLayout,
    /// Added to the output (a tensor outside the graph, of the output's
    /// shape): the GEMM accumulates onto it.
    residual: Option<Tensor>,
    gelu: bool,
    /// Keep the pre-activation for the backward pass (GELU only).
    keep: bool,
    pre: Mutex<Option<Vec<f32>>>,
}

impl Linear {
    /// `x Wᵀ (+ b)`.
    pub(super) fn plain(layout: WeightLayout) -> Linear {
        Linear {
            layout,
            residual: None,
            gelu: false,
            keep: false,
            pre: Mutex::new(None),
        }
    }

    /// `x Wᵀ (+ b) + residual`, `residual` contiguous and outside the
    /// graph.
    pub(super) fn onto(layout: WeightLayout, residual: Tensor) -> Linear {
        Linear {
            residual: Some(residual),
            ..Linear::plain(layout)
        }
    }

    /// `GELU(x Wᵀ + b)`, keeping the pre-activation when `keep`.
    pub(super) fn with_gelu(layout: WeightLayout, keep: bool) -> Linear {
        Linear {
            layout,
            residual: None,
            gelu: true,
            keep,
            pre: Mutex::new(None),
        }
    }

    /// Runs `f` on the residual's values, if there is one.
    fn with_residual<T>(&self, f: impl FnOnce(Option<&[f32]>) -> Result<T>) -> Result<T> {
        match &self.residual {
            Some(r) => with_values(r, |v| f(Some(v))),
            None => f(None),
        }
    }

    /// The output from the product: GELU applied (the product kept for
    /// the backward pass when asked) or the product itself.
    fn activate(&self, (mut y, shape): (Vec<f32>, Shape)) -> (CpuStorage, Shape) {
        if !self.gelu {
            return (CpuStorage::F32(y), shape);
        }
        if !self.keep {
            // Nothing keeps the product: GELU in place, no second buffer.
            y.par_chunks_mut(TASK_ELEMENTS).for_each(gelu_in_place);
            return (CpuStorage::F32(y), shape);
        }
        let out = map_blocks(&y, TASK_ELEMENTS, gelu_block);
        *self.pre.lock().unwrap_or_else(|e| e.into_inner()) = Some(y);
        (CpuStorage::F32(out), shape)
    }

    /// The gradient of the product: the output gradient itself, or
    /// through GELU's derivative at the kept (else recomputed)
    /// pre-activation.
    fn product_grad(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<Tensor> {
        let grad = grad.contiguous()?;
        if !self.gelu {
            return Ok(grad);
        }
        let kept = self.pre.lock().unwrap_or_else(|e| e.into_inner()).take();
        let pre = match kept {
            Some(pre) => Tensor::from_vec(pre, grad.shape(), grad.device())?,
            // Taken by an earlier backward pass: the product again.
            None => {
                let (x, w) = (x.contiguous()?, w.contiguous()?);
                let plain = Linear::plain(self.layout);
                match bias {
                    Some(b) => x.apply_op3_no_bwd(&w, &b.contiguous()?, &plain)?,
                    None => x.apply_op2_no_bwd(&w, &plain)?,
                }
            }
        };
        let dpre = with_values(&pre, |pre| {
            with_values(&grad, |g| {
                if g.len() != pre.len() {
                    candle_core::bail!("spectok-linear: gradient and pre-activation sizes differ");
                }
                Ok(map_blocks2(pre, g, TASK_ELEMENTS, gelu_grad_block))
            })
        })?;
        Tensor::from_vec(dpre, grad.shape(), grad.device())
    }
}

/// The product `x Wᵀ (+ b) (+ residual)` on contiguous values: the output
/// starts as the bias rows plus the residual (or either alone) and the
/// GEMM accumulates onto it.
fn product_onto_bias(
    name: &str,
    (x, xl): (&[f32], &Layout),
    (w, wl, layout): (&[f32], &Layout, WeightLayout),
    (bias, residual): (Option<&[f32]>, Option<&[f32]>),
) -> Result<(Vec<f32>, Shape)> {
    let (out, inp) = match layout {
        WeightLayout::OutIn => wl.shape().dims2()?,
        WeightLayout::InOut => {
            let (inp, out) = wl.shape().dims2()?;
            (out, inp)
        }
    };
    if last_dim(xl) != inp {
        candle_core::bail!(
            "{name}: input width {} differs from the weight's {inp}",
            last_dim(xl)
        );
    }
    let rows: usize = xl.dims().iter().rev().skip(1).product();
    if let Some(b) = bias {
        if b.len() != out {
            candle_core::bail!("{name}: bias width {} differs from {out}", b.len());
        }
    }
    if let Some(r) = residual {
        if r.len() != rows * out {
            candle_core::bail!(
                "{name}: residual of {} values, the output has {}",
                r.len(),
                rows * out
            );
        }
    }
    // With a bias or a residual the output starts as their sum, written
    // in parallel, and the GEMM adds onto it; without either the GEMM
    // writes every value without reading it, so the buffer needs no fill.
    let step = out.max(1) * rows_per_task(out);
    let mut y = match (bias, residual) {
        (Some(b), None) => par_fill(rows * out, step, |_, block| {
            for r in block.chunks_exact_mut(out.max(1)) {
                for (d, &v) in r.iter_mut().zip(b) {
                    d.write(v);
                }
            }
        }),
        (b, Some(res)) => par_fill(rows * out, step, |i, block| {
            let res = &res[i * step..i * step + block.len()];
            match b {
                Some(b) => {
                    for (r, res) in block
                        .chunks_exact_mut(out.max(1))
                        .zip(res.chunks_exact(out.max(1)))
                    {
                        for ((d, &v), &b) in r.iter_mut().zip(res).zip(b) {
                            d.write(v + b);
                        }
                    }
                }
                None => {
                    for (d, &v) in block.iter_mut().zip(res) {
                        d.write(v);
                    }
                }
            }
        }),
        // An empty reduction (no input columns): the product is zeros.
        (None, None) if inp == 0 => vec![0f32; rows * out],
        (None, None) => Vec::with_capacity(rows * out),
    };
    // gemm's kernels run `x·Wᵀ` much faster from a row-major Wᵀ than from
    // W read by columns where the reduction is at least as long as the
    // output (AVX-512, 1168 rows: 512 → 512 at ~460 against ~320 GFLOP/s,
    // 2048 → 512 at ~410 against ~310; 512 → 2048 only ~455 against
    // ~425). There a weight stored as W is copied into that layout per
    // call: the copy costs ~0.2 ns a weight (read from memory), the
    // GEMM's gain ~2 ps a weight and row, so it pays from about a hundred
    // rows on.
    let transposed = (layout == WeightLayout::OutIn && inp >= out && rows >= TRANSPOSE_FROM_ROWS)
        .then(|| transpose(w, out, inp));
    let (rhs, rhs_cs, rhs_rs) = match (&transposed, layout) {
        (Some(wt), _) => (wt.as_slice(), 1, out as isize),
        (None, WeightLayout::InOut) => (w, 1, out as isize),
        (None, WeightLayout::OutIn) => (w, inp as isize, 1),
    };
    if rows > 0 && out > 0 && inp > 0 {
        // SAFETY: y has room for rows × out values (row stride out): filled
        // when the GEMM reads it (bias or residual), else left unfilled and
        // written without being read (read_dst false); x holds rows × inp
        // (row stride inp), Wᵀ is read from W (element (i, j) at
        // w[j·inp + i]) or from a row-major Wᵀ (at [i·out + j]); y is a
        // fresh buffer, so nothing overlaps.
        unsafe {
            gemm(
                rows,
                out,
                inp,
                y.as_mut_ptr(),
                1,
                out as isize,
                bias.is_some() || residual.is_some(),
                x.as_ptr(),
                1,
                inp as isize,
                rhs.as_ptr(),
                rhs_cs,
                rhs_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
        }
    }
    if y.len() != rows * out {
        // SAFETY: only the unfilled buffer (no bias, inp > 0) gets here:
        // the GEMM above ran and wrote all rows × out values (with read_dst
        // false it writes without reading), or rows · out is zero.
        unsafe { y.set_len(rows * out) };
    }
    let mut dims = xl.dims().to_vec();
    match dims.last_mut() {
        Some(last) => *last = out,
        None => candle_core::bail!("{name}: input has no dimensions"),
    }
    Ok((y, Shape::from(dims)))
}

/// Rows from which [`product_onto_bias`] multiplies by a row-major copy
/// of `Wᵀ` rather than by `W` read by columns.
const TRANSPOSE_FROM_ROWS: usize = 128;

/// `Wᵀ` (`inp × out`, row-major) of a row-major `out × inp` matrix (the
/// `transpose` crate's cache-blocked copy: ~0.3 ms for 512 × 2048 on one
/// core, a tenth of a plain strided loop's time).
pub(super) fn transpose(w: &[f32], out: usize, inp: usize) -> Vec<f32> {
    let mut wt = vec![0f32; w.len()];
    transpose::transpose(w, &mut wt, inp, out);
    wt
}

/// Runs `f` on the contiguous f32 values of a CPU tensor.
pub(super) fn with_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else {
        candle_core::bail!("spectok-linear: expects CPU tensors");
    };
    f(values("spectok-linear", s, layout)?)
}

/// `lhs (m × k) · rhs (k × n)` into a new row-major `m × n` buffer; each
/// operand given as (values, row stride, column stride), on rayon's
/// threads.
fn product(
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
) -> Vec<f32> {
    if k == 0 || m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the operands' extents are m × k and k × n at the given
    // strides (the callers pass whole matrices); dst has room for m × n
    // values, gemm writes every one of them (it does not read dst), and
    // only then is the length set.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
        dst.set_len(m * n);
    }
    dst
}

/// GEMMs on all of rayon's threads.
fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        threads => Parallelism::Rayon(threads),
    }
}

/// Gradients of `x`, the weight (in its layout) and (with a bias) `b`
/// from the (contiguous) gradient of the product, each only where that
/// input takes part in the graph.
fn backward(
    x: &Tensor,
    w: &Tensor,
    layout: WeightLayout,
    bias: Option<&Tensor>,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (out, inp) = match layout {
        WeightLayout::OutIn => w.dims2()?,
        WeightLayout::InOut => {
            let (inp, out) = w.dims2()?;
            (out, inp)
        }
    };
    let rows = grad.elem_count() / out.max(1);
    let dev = grad.device();
    let dx = if x.track_op() {
        // dX (rows × in) = dY (rows × out) · W (out × in), W read from
        // either layout.
        let w_strides = match layout {
            WeightLayout::OutIn => (inp, 1),
            WeightLayout::InOut => (1, out),
        };
        let v = with_values(grad, |g| {
            with_values(w, |w| {
                Ok(product(
                    (rows, inp, out),
                    (g, out, 1),
                    (w, w_strides.0, w_strides.1),
                ))
            })
        })?;
        Some(Tensor::from_vec(v, x.shape(), dev)?)
    } else {
        None
    };
    let dw = if w.track_op() {
        let x = x.contiguous()?;
        let v = with_values(grad, |g| {
            with_values(&x, |x| {
                Ok(match layout {
                    // dW (out × in) = dYᵀ (out × rows) · X (rows × in).
                    WeightLayout::OutIn => product((out, inp, rows), (g, 1, out), (x, inp, 1)),
                    // dWᵀ (in × out) = Xᵀ (in × rows) · dY (rows × out).
                    WeightLayout::InOut => product((inp, out, rows), (x, 1, inp), (g, out, 1)),
                })
            })
        })?;
        Some(Tensor::from_vec(v, w.shape(), dev)?)
    } else {
        None
    };
    let db = match bias {
        Some(b) if b.track_op() => Some(grad.apply_op1_no_bwd(&SumRows)?.reshape(b.shape())?),
        _ => None,
    };
    Ok((dx, dw, db))
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "spectok-linear"
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
        let name = CustomOp3::name(self);
        let bias = values(name, s3, l3)?;
        self.with_residual(|residual| {
            Ok(self.activate(product_onto_bias(
                name,
                (values(name, s1, l1)?, l1),
                (values(name, s2, l2)?, l2, self.layout),
                (Some(bias), residual),
            )?))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = self.product_grad(x, w, Some(b), grad)?;
        backward(x, w, self.layout, Some(b), &grad)
    }
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "spectok-linear-no-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = CustomOp2::name(self);
        self.with_residual(|residual| {
            Ok(self.activate(product_onto_bias(
                name,
                (values(name, s1, l1)?, l1),
                (values(name, s2, l2)?, l2, self.layout),
                (None, residual),
            )?))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = self.product_grad(x, w, None, grad)?;
        let (dx, dw, _) = backward(x, w, self.layout, None, &grad)?;
        Ok((dx, dw))
    }
}
