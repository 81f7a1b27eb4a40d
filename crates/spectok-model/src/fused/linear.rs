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
//! activation is applied after the GEMM and the pre-activation kept for
//! the backward pass, which multiplies the output gradient by GELU's
//! derivative before the GEMMs — the `(rows × 4D)` pre-activation is no
//! graph node of its own.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};

use super::{
    gelu_block, gelu_grad_block, last_dim, map_blocks, map_blocks2, par_new, rows_per_task, values,
    SumRows, TASK_ELEMENTS,
};

/// `y = x Wᵀ (+ b)` with `x (…, in)`, `W (out, in)`, `b (out)`, or
/// `GELU(x Wᵀ + b)`.
pub(super) struct Linear {
    gelu: bool,
    /// Keep the pre-activation for the backward pass (GELU only).
    keep: bool,
    pre: Mutex<Option<Vec<f32>>>,
}

impl Linear {
    /// `x Wᵀ (+ b)`.
    pub(super) fn plain() -> Linear {
        Linear {
            gelu: false,
            keep: false,
            pre: Mutex::new(None),
        }
    }

    /// `GELU(x Wᵀ + b)`, keeping the pre-activation when `keep`.
    pub(super) fn with_gelu(keep: bool) -> Linear {
        Linear {
            gelu: true,
            keep,
            pre: Mutex::new(None),
        }
    }

    /// The output from the product: GELU applied (the product kept for
    /// the backward pass when asked) or the product itself.
    fn activate(&self, (y, shape): (Vec<f32>, Shape)) -> (CpuStorage, Shape) {
        if !self.gelu {
            return (CpuStorage::F32(y), shape);
        }
        let out = map_blocks(&y, TASK_ELEMENTS, gelu_block);
        if self.keep {
            *self.pre.lock().unwrap_or_else(|e| e.into_inner()) = Some(y);
        }
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
                let (x, w, plain) = (x.contiguous()?, w.contiguous()?, Linear::plain());
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

/// The product `x Wᵀ (+ b)` on contiguous values: the output starts as
/// the bias (or zeros) and the GEMM accumulates onto it.
fn product_onto_bias(
    name: &str,
    (x, xl): (&[f32], &Layout),
    (w, wl): (&[f32], &Layout),
    bias: Option<&[f32]>,
) -> Result<(Vec<f32>, Shape)> {
    let (out, inp) = wl.shape().dims2()?;
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
    // The output starts as the bias rows (or zeros), written in parallel.
    let mut y = par_new(rows * out, out.max(1) * rows_per_task(out), |_, block| {
        if let Some(b) = bias {
            block
                .chunks_exact_mut(out.max(1))
                .for_each(|r| r.copy_from_slice(b));
        }
    });
    // A reduction much longer than the output (fc2) runs faster from a
    // row-major Wᵀ than from W read by columns (gemm's AVX-512 kernels:
    // 2048 → 512 at ~330 against ~450 GFLOP/s); the copy costs far less.
    let transposed = (inp >= 2 * out && rows >= out).then(|| transpose(w, out, inp));
    let (rhs, rhs_cs, rhs_rs) = match &transposed {
        Some(wt) => (wt.as_slice(), 1, out as isize),
        None => (w, inp as isize, 1),
    };
    if rows > 0 && out > 0 && inp > 0 {
        // SAFETY: y holds rows × out values (row stride out), x rows × inp
        // (row stride inp), Wᵀ is read from w (element (i, j) at
        // w[j·inp + i]) or from its row-major copy (at wt[i·out + j]); y is
        // a fresh buffer, so nothing overlaps.
        unsafe {
            gemm(
                rows,
                out,
                inp,
                y.as_mut_ptr(),
                1,
                out as isize,
                bias.is_some(),
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
    let mut dims = xl.dims().to_vec();
    match dims.last_mut() {
        Some(last) => *last = out,
        None => candle_core::bail!("{name}: input has no dimensions"),
    }
    Ok((y, Shape::from(dims)))
}

/// `Wᵀ` (`inp × out`, row-major) of a row-major `out × inp` matrix, in
/// tiles of rows of `Wᵀ` (each stays in cache while it fills), made block
/// by block on rayon's threads ([`par_new`]).
fn transpose(w: &[f32], out: usize, inp: usize) -> Vec<f32> {
    const TILE: usize = 32;
    par_new(inp * out, TILE * out.max(1), |t, block| {
        let i0 = t * TILE;
        let rows = block.len() / out.max(1);
        // Row r of the tile is column i0 + r of W: each row of W gives one
        // short contiguous run, written down a column of the tile.
        for j in 0..out {
            let src = &w[j * inp + i0..j * inp + i0 + rows];
            for (r, &v) in src.iter().enumerate() {
                block[r * out + j] = v;
            }
        }
    })
}

/// Runs `f` on the contiguous f32 values of a CPU tensor.
fn with_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else {
        candle_core::bail!("spectok-linear: backward needs CPU tensors");
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

/// Gradients of `x`, `W` and (with a bias) `b` from the (contiguous)
/// gradient of the product, each only where that input takes part in the
/// graph.
fn backward(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    grad: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (out, inp) = w.dims2()?;
    let rows = grad.elem_count() / out.max(1);
    let dev = grad.device();
    let dx = if x.track_op() {
        // dX (rows × in) = dY (rows × out) · W (out × in).
        let v = with_values(grad, |g| {
            with_values(w, |w| {
                Ok(product((rows, inp, out), (g, out, 1), (w, inp, 1)))
            })
        })?;
        Some(Tensor::from_vec(v, x.shape(), dev)?)
    } else {
        None
    };
    let dw = if w.track_op() {
        // dW (out × in) = dYᵀ (out × rows) · X (rows × in).
        let x = x.contiguous()?;
        let v = with_values(grad, |g| {
            with_values(&x, |x| {
                Ok(product((out, inp, rows), (g, 1, out), (x, inp, 1)))
            })
        })?;
        Some(Tensor::from_vec(v, (out, inp), dev)?)
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
        Ok(self.activate(product_onto_bias(
            name,
            (values(name, s1, l1)?, l1),
            (values(name, s2, l2)?, l2),
            Some(values(name, s3, l3)?),
        )?))
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
        backward(x, w, Some(b), &grad)
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
        Ok(self.activate(product_onto_bias(
            name,
            (values(name, s1, l1)?, l1),
            (values(name, s2, l2)?, l2),
            None,
        )?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = self.product_grad(x, w, None, grad)?;
        let (dx, dw, _) = backward(x, w, None, &grad)?;
        Ok((dx, dw))
    }
}
