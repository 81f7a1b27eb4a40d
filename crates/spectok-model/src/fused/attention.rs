//! Multi-head attention `softmax(scale · q kᵀ + bias) v` as one candle
//! custom op with its backward, for f32 on the CPU.
//!
//! candle runs a batched matmul as a loop of small GEMMs, each split over
//! the threads (a fork and join per head and spectrum: 64 per matmul for
//! 8 spectra × 8 heads), and the heads need `(B, S, D) → (B, H, S, D/H)`
//! copies before and after. Here each (spectrum, head) pair is one rayon
//! task running its own single-threaded GEMMs (the `gemm` crate candle
//! uses) straight on the `(B, S, D)` projections through strides: no head
//! copies, the scale and key-mask bias folded into the softmax, and the
//! output written in place in `(B, Sq, D)`.
//!
//! Inference keeps at most [`QUERY_BLOCK_LOGITS`] logits per task; in
//! training the softmax weights are kept for the backward pass (as
//! candle's composite keeps them), and recomputed if absent.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};
use multiversion::multiversion;
use rayon::prelude::*;

use super::{add_and_max, lane_sum2, par_zeros, softmax_from_max, values};

/// Most logits one task holds at once at inference (queries are taken in
/// blocks of rows): 2²² f32 values, 16 MiB.
pub const QUERY_BLOCK_LOGITS: usize = 1 << 22;

/// Shapes of one call: batch, query and key lengths, model width, heads.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    sq: usize,
    sk: usize,
    d: usize,
    heads: usize,
}

impl Dims {
    fn head_dim(&self) -> usize {
        self.d / self.heads
    }
}

/// A raw pointer that tasks share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes only the rows × head-columns of its own
// (spectrum, head) pair, so no two tasks touch the same element.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer (a method, so closures capture the `Sync` wrapper).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// A buffer for `n` values that the products below write in full — each
/// writes every value of its block without reading it — when their
/// reduction (`k`) is not empty: left unfilled then (its length set by
/// [`filled`] once they are done), zeros otherwise.
fn unfilled(n: usize, k: usize) -> Vec<f32> {
    if k == 0 {
        vec![0f32; n]
    } else {
        Vec::with_capacity(n)
    }
}

/// A buffer from [`unfilled`] with its `n` values.
///
/// # Safety
/// The products have written all `n` values (or the buffer was zeroed).
unsafe fn filled(mut v: Vec<f32>, n: usize) -> Vec<f32> {
    v.set_len(n);
    v
}

/// `dst (m × n) = beta · lhs (m × k) · rhs (k × n)` (or `+=` with
/// `accumulate`), strides in elements as (row, column), single-threaded.
///
/// # Safety
/// Every pointer must be valid for the extents its strides and sizes
/// reach, and `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
    accumulate: bool,
) {
    gemm(
        m,
        n,
        k,
        dst.0,
        dst.2 as isize,
        dst.1 as isize,
        accumulate,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        if accumulate { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// Softmax weights of queries `rows` of pair (`b`, `h`) into `p`
/// (`rows.len() × sk`, row-major): `softmax(scale · q kᵀ + bias)`.
fn weights(
    dims: Dims,
    (q, k, bias): (&[f32], &[f32], &[f32]),
    scale: f32,
    (b, h): (usize, usize),
    rows: std::ops::Range<usize>,
    p: &mut [f32],
) {
    let Dims { sq, sk, d, .. } = dims;
    let dh = dims.head_dim();
    let q0 = b * sq * d + rows.start * d + h * dh;
    let k0 = b * sk * d + h * dh;
    // SAFETY: q rows `rows` of head h lie in q[q0..], k rows 0..sk in
    // k[k0..] (row stride d, dh columns); p holds rows.len() × sk values.
    unsafe {
        mm(
            (rows.len(), sk, dh),
            (p.as_mut_ptr(), sk, 1),
            (q.as_ptr().add(q0), d, 1),
            // kᵀ: element (i, j) is k[j][i].
            (k.as_ptr().add(k0), 1, d),
            scale,
            false,
        );
    }
    softmax_rows_with_bias(p, &bias[b * sk..(b + 1) * sk]);
}

/// Each row of `p` (of `bias`'s width) replaced by `softmax(row + bias)`,
/// in three passes over the row: the bias added as the maximum is found,
/// the exponentials summed as they are written, then the scaling.
#[multiversion(targets = "simd")]
fn softmax_rows_with_bias(p: &mut [f32], bias: &[f32]) {
    for row in p.chunks_exact_mut(bias.len().max(1)) {
        let max = add_and_max(row, bias);
        softmax_from_max(row, max);
    }
}

/// The softmax's backward pass in place, row by row (of `p`'s rows of
/// width `sk`): `ds ← p ⊙ (ds − Σ ds ⊙ p)`.
#[multiversion(targets = "simd")]
fn softmax_grad_rows(ds: &mut [f32], p: &[f32], sk: usize) {
    for (ds, p) in ds
        .chunks_exact_mut(sk.max(1))
        .zip(p.chunks_exact(sk.max(1)))
    {
        let dot = lane_sum2(ds, p, |a, b| a * b);
        for (x, &y) in ds.iter_mut().zip(p) {
            *x = y * (*x - dot);
        }
    }
}

/// The forward op; keeps the softmax weights for the backward pass when
/// `keep` is set.
pub(super) struct Attention {
    heads: usize,
    scale: f32,
    /// Additive key bias, `(B, Sk)` (0 or a large negative logit).
    bias: Vec<f32>,
    keep: bool,
    /// Most logits a task holds at inference ([`QUERY_BLOCK_LOGITS`]).
    block_logits: usize,
    /// Softmax weights `(B, H, Sq, Sk)` from the forward pass.
    kept: Mutex<Option<Vec<f32>>>,
}

impl Attention {
    pub(super) fn new(
        heads: usize,
        scale: f32,
        bias: Vec<f32>,
        keep: bool,
        block_logits: usize,
    ) -> Attention {
        Attention {
            heads,
            scale,
            bias,
            keep,
            block_logits,
            kept: Mutex::new(None),
        }
    }

    fn dims(&self, q: &Layout, k: &Layout) -> Result<Dims> {
        let (b, sq, d) = q.shape().dims3()?;
        let (bk, sk, dk) = k.shape().dims3()?;
        if bk != b || dk != d || d % self.heads != 0 || self.bias.len() != b * sk {
            candle_core::bail!("spectok-attention: inconsistent shapes");
        }
        Ok(Dims {
            b,
            sq,
            sk,
            d,
            heads: self.heads,
        })
    }

    /// All softmax weights `(B, H, Sq, Sk)`.
    fn all_weights(&self, dims: Dims, q: &[f32], k: &[f32]) -> Vec<f32> {
        let Dims { sq, sk, heads, .. } = dims;
        let mut p = par_zeros(dims.b * heads * sq * sk);
        p.par_chunks_mut((sq * sk).max(1))
            .enumerate()
            .for_each(|(pair, p)| {
                let (b, h) = (pair / heads, pair % heads);
                weights(dims, (q, k, &self.bias), self.scale, (b, h), 0..sq, p);
            });
        p
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "spectok-attention"
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
        let dims = self.dims(l1, l2)?;
        if l3.shape() != l2.shape() {
            candle_core::bail!("spectok-attention: keys and values differ in shape");
        }
        let (q, k, v) = (
            values(self.name(), s1, l1)?,
            values(self.name(), s2, l2)?,
            values(self.name(), s3, l3)?,
        );
        let Dims {
            b,
            sq,
            sk,
            d,
            heads,
        } = dims;
        let dh = dims.head_dim();
        let mut out = unfilled(b * sq * d, sk);
        let dst = Out(out.as_mut_ptr());
        let kept = self.keep.then(|| self.all_weights(dims, q, k));
        (0..b * heads).into_par_iter().for_each(|pair| {
            let (bi, h) = (pair / heads, pair % heads);
            let attend = |rows: std::ops::Range<usize>, p: &[f32]| {
                let o0 = bi * sq * d + rows.start * d + h * dh;
                let v0 = bi * sk * d + h * dh;
                // SAFETY: this task alone writes rows `rows` × columns
                // h·dh..(h+1)·dh of spectrum bi; v rows 0..sk of head h lie
                // in v[v0..] with row stride d; p is rows.len() × sk.
                unsafe {
                    mm(
                        (rows.len(), dh, sk),
                        (dst.at(o0), d, 1),
                        (p.as_ptr(), sk, 1),
                        (v.as_ptr().add(v0), d, 1),
                        1.0,
                        false,
                    );
                }
            };
            match &kept {
                Some(p) => {
                    let p = &p[pair * sq * sk..(pair + 1) * sq * sk];
                    attend(0..sq, p);
                }
                None => {
                    let block = (self.block_logits / sk.max(1)).clamp(1, sq.max(1));
                    let mut p = vec![0f32; block * sk];
                    let mut start = 0;
                    while start < sq {
                        let rows = start..(start + block).min(sq);
                        let p = &mut p[..rows.len() * sk];
                        weights(
                            dims,
                            (q, k, &self.bias),
                            self.scale,
                            (bi, h),
                            rows.clone(),
                            p,
                        );
                        attend(rows.clone(), p);
                        start = rows.end;
                    }
                }
            }
        });
        if let Some(p) = kept {
            *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        }
        // SAFETY: the (spectrum, head) pairs cover every row and, heads
        // side by side, every column of the output (d = heads · dh); each
        // pair's products wrote all of its rows (in blocks at inference).
        let out = unsafe { filled(out, b * sq * d) };
        Ok((CpuStorage::F32(out), Shape::from((b, sq, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let (sq_, lq) = q.storage_and_layout();
        let (sk_, lk) = k.storage_and_layout();
        let (sv_, lv) = v.storage_and_layout();
        let (sg_, lg) = grad.storage_and_layout();
        let (Storage::Cpu(sq_), Storage::Cpu(sk_), Storage::Cpu(sv_), Storage::Cpu(sg_)) =
            (&*sq_, &*sk_, &*sv_, &*sg_)
        else {
            candle_core::bail!("spectok-attention: backward needs CPU tensors");
        };
        let dims = self.dims(lq, lk)?;
        let (qs, ks, vs, dout) = (
            values(self.name(), sq_, lq)?,
            values(self.name(), sk_, lk)?,
            values(self.name(), sv_, lv)?,
            values(self.name(), sg_, lg)?,
        );
        let p = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| self.all_weights(dims, qs, ks));
        let Dims {
            b,
            sq,
            sk,
            d,
            heads,
        } = dims;
        let dh = dims.head_dim();
        let mut dq = unfilled(b * sq * d, sk);
        let mut dk = unfilled(b * sk * d, sq);
        let mut dv = unfilled(b * sk * d, sq);
        let (dq_p, dk_p, dv_p) = (
            Out(dq.as_mut_ptr()),
            Out(dk.as_mut_ptr()),
            Out(dv.as_mut_ptr()),
        );
        let scale = self.scale;
        (0..b * heads).into_par_iter().for_each(|pair| {
            let (bi, h) = (pair / heads, pair % heads);
            let p = &p[pair * sq * sk..(pair + 1) * sq * sk];
            let q0 = bi * sq * d + h * dh;
            let k0 = bi * sk * d + h * dh;
            let mut ds = unfilled(sq * sk, dh);
            // SAFETY (all four products): this task alone writes the rows of
            // spectrum bi × columns h·dh..(h+1)·dh of dq, dk and dv; inputs
            // are read with row stride d from their head's first column;
            // p and ds are sq × sk row-major.
            unsafe {
                // dV = Pᵀ dO
                mm(
                    (sk, dh, sq),
                    (dv_p.at(k0), d, 1),
                    (p.as_ptr(), 1, sk),
                    (dout.as_ptr().add(q0), d, 1),
                    1.0,
                    false,
                );
                // dP = dO Vᵀ
                mm(
                    (sq, sk, dh),
                    (ds.as_mut_ptr(), sk, 1),
                    (dout.as_ptr().add(q0), d, 1),
                    (vs.as_ptr().add(k0), 1, d),
                    1.0,
                    false,
                );
            }
            // SAFETY: the product above wrote all sq × sk values.
            let mut ds = unsafe { filled(ds, sq * sk) };
            // dS = P ⊙ (dP − Σ dP ⊙ P), per row.
            softmax_grad_rows(&mut ds, p, sk);
            unsafe {
                // dQ = scale · dS K
                mm(
                    (sq, dh, sk),
                    (dq_p.at(q0), d, 1),
                    (ds.as_ptr(), sk, 1),
                    (ks.as_ptr().add(k0), d, 1),
                    scale,
                    false,
                );
                // dK = scale · dSᵀ Q
                mm(
                    (sk, dh, sq),
                    (dk_p.at(k0), d, 1),
                    (ds.as_ptr(), 1, sk),
                    (qs.as_ptr().add(q0), d, 1),
                    scale,
                    false,
                );
            }
        });
        // SAFETY: as in the forward pass, the pairs' products wrote every
        // row and every head's columns of dq, dk and dv.
        let (dq, dk, dv) = unsafe {
            (
                filled(dq, b * sq * d),
                filled(dk, b * sk * d),
                filled(dv, b * sk * d),
            )
        };
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, sq, d), dev)?),
            Some(Tensor::from_vec(dk, (b, sk, d), dev)?),
            Some(Tensor::from_vec(dv, (b, sk, d), dev)?),
        ))
    }
}
