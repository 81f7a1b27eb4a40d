//! AdamW with decoupled weight decay and global-norm gradient clipping,
//! over candle [`Var`]s, with its moments saved to and restored from
//! safetensors (candle-nn's own AdamW keeps them private, so a run using it
//! could not resume exactly).
//!
//! One update with learning rate `lr`, gradient `g` (after clipping), and
//! step count `t` (1 for the first update), as in PyTorch's `AdamW`:
//!
//! ```text
//! θ ← θ · (1 − lr · λ)                (decayed parameters only)
//! m ← β₁ m + (1 − β₁) g
//! v ← β₂ v + (1 − β₂) g²
//! θ ← θ − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)
//! ```
//!
//! Which parameters decay: those of rank ≥ 2 (linear weight matrices).
//! Biases and LayerNorm gains and shifts (rank 1) do not: shrinking them
//! toward zero has no regularising meaning and degrades normalisation.
//!
//! Clipping: when `grad_clip > 0` and the global L2 norm of all gradients
//! exceeds it, every gradient is scaled by `grad_clip / norm`.
//!
//! On the CPU with f32 parameters (where [`spectok_model::fused`] applies)
//! the moments are plain vectors beside the parameter and the update is
//! one pass over `θ`, `g`, `m` and `v` together (after one read pass over
//! the gradients for the norm), instead of a dozen tensor operations that
//! each allocate a parameter-sized buffer. Other devices and dtypes keep
//! the moments as tensors and take the tensor-operation path; both compute
//! the same update (tested equal).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp2, Layout, Shape, Tensor, Var};
use multiversion::multiversion;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// AdamW settings (the `optim` section of the config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate (paper: 1e-4); the schedule scales it.
    pub lr: f64,
    /// Moment decay rates `[β₁, β₂]` (default `[0.9, 0.999]`).
    pub betas: [f64; 2],
    /// Denominator epsilon (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay λ (default 0.01, PyTorch's default; the paper
    /// does not give one).
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables clipping (default 1.0).
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            grad_clip: 1.0,
        }
    }
}

/// What one call of [`AdamW::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the gradients before clipping.
    pub grad_norm: f64,
    /// Factor the gradients were multiplied by (1 when not clipped).
    pub clip_scale: f64,
    /// False when the norm was not finite: then no parameter and no moment
    /// was changed.
    pub applied: bool,
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    moments: Moments,
}

/// A parameter's first and second moments, `m` and `v`.
enum Moments {
    /// f32 vectors updated in place with the parameter, in one pass
    /// (f32 CPU parameters, when the fused kernels are on).
    Host { m: Vec<f32>, v: Vec<f32> },
    /// f32 tensors of the parameter's shape, for the tensor-operation path.
    Tensors { m: Tensor, v: Tensor },
}

/// The optimiser: one `(m, v)` pair per named parameter.
pub struct AdamW {
    params: Vec<Param>,
    cfg: OptimConfig,
    /// Updates applied so far.
    step: u64,
}

/// Key of the step counter in the saved state.
const STEP_KEY: &str = "adamw.step";

impl AdamW {
    /// An optimiser over `params` (name, variable), with zero moments.
    /// Parameters are kept sorted by name so updates and saved state do not
    /// depend on the order given.
    pub fn new(params: Vec<(String, Var)>, cfg: OptimConfig) -> Result<Self> {
        let mut params = params
            .into_iter()
            .map(|(name, var)| {
                let moments = if in_place(var.as_tensor()) {
                    let n = var.elem_count();
                    Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    Moments::Tensors {
                        m: Tensor::zeros(var.shape(), DType::F32, var.device())?,
                        v: Tensor::zeros(var.shape(), DType::F32, var.device())?,
                    }
                };
                let decay = var.rank() >= 2;
                Ok(Param {
                    name,
                    var,
                    decay,
                    moments,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(AdamW {
            params,
            cfg,
            step: 0,
        })
    }

    /// Updates applied so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Names of the parameters that get weight decay.
    pub fn decayed(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.decay)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Global L2 norm of the gradients of this optimiser's parameters.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sums = Vec::with_capacity(self.params.len());
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                sums.push(if in_place(g) {
                    g.apply_op1_no_bwd(&SumSquares)?
                } else {
                    g.to_dtype(DType::F32)?.sqr()?.sum_all()?
                });
            }
        }
        if sums.is_empty() {
            return Ok(0.0);
        }
        let total = Tensor::stack(&sums, 0)?.sum_all()?.to_scalar::<f32>()?;
        Ok((total as f64).sqrt())
    }

    /// Clips the gradients and applies one update with learning rate `lr`.
    /// Parameters without a gradient are left alone. A non-finite gradient
    /// norm changes nothing and is reported with `applied: false`.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepStats> {
        self.step_scaled(grads, lr, 1.0)
    }

    /// Like [`Self::step`] for gradients of a loss multiplied by
    /// `1 / grad_scale` (loss scaling): every gradient is multiplied by
    /// `grad_scale` before norm, clipping and update.
    pub fn step_scaled(
        &mut self,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
    ) -> Result<StepStats> {
        let grad_norm = self.grad_norm(grads)? * grad_scale;
        if !grad_norm.is_finite() {
            return Ok(StepStats {
                grad_norm,
                clip_scale: 1.0,
                applied: false,
            });
        }
        let clip_scale = if self.cfg.grad_clip > 0.0 && grad_norm > self.cfg.grad_clip {
            self.cfg.grad_clip / grad_norm
        } else {
            1.0
        };
        self.step += 1;
        let t = self.step as i32;
        let [b1, b2] = self.cfg.betas;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let wd = self.cfg.weight_decay;
        let factor = clip_scale * grad_scale;
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let decay = if p.decay && wd != 0.0 {
                1.0 - lr * wd
            } else {
                1.0
            };
            match &mut p.moments {
                Moments::Host { m, v } => {
                    // The gradient of an f32 CPU parameter is f32 on the CPU.
                    let g = g.contiguous()?;
                    let c = StepConstants {
                        b1: b1 as f32,
                        b2: b2 as f32,
                        r1: (1.0 - b1) as f32,
                        r2: (1.0 - b2) as f32,
                        f: factor as f32,
                        decay: decay as f32,
                        lr: lr as f32,
                        ibc1: (1.0 / bc1) as f32,
                        ibc2: (1.0 / bc2) as f32,
                        eps: self.cfg.eps as f32,
                    };
                    p.var.as_tensor().inplace_op2(
                        &g,
                        &Update {
                            moments: Mutex::new((m, v)),
                            c,
                        },
                    )?;
                }
                Moments::Tensors { m, v } => {
                    let g = g.to_dtype(DType::F32)?;
                    let g = if factor != 1.0 {
                        g.affine(factor, 0.0)?
                    } else {
                        g
                    };
                    *m = (m.affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?;
                    *v = (v.affine(b2, 0.0)? + g.sqr()?.affine(1.0 - b2, 0.0)?)?;
                    let m_hat = m.affine(1.0 / bc1, 0.0)?;
                    let denom = v
                        .affine(1.0 / bc2, 0.0)?
                        .sqrt()?
                        .affine(1.0, self.cfg.eps)?;
                    let update = (m_hat / denom)?;
                    let theta = p.var.as_tensor().to_dtype(DType::F32)?;
                    let theta = if decay != 1.0 {
                        theta.affine(decay, 0.0)?
                    } else {
                        theta
                    };
                    let theta = (theta - update.affine(lr, 0.0)?)?;
                    p.var.set(&theta.to_dtype(p.var.dtype())?)?;
                }
            }
        }
        Ok(StepStats {
            grad_norm,
            clip_scale,
            applied: true,
        })
    }

    /// The moments and step counter as named tensors: `m.<param>`,
    /// `v.<param>` and `adamw.step` (copies: later steps update the
    /// moments in place).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            let (m, v) = match &p.moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, p.var.shape(), p.var.device())?,
                    Tensor::from_slice(v, p.var.shape(), p.var.device())?,
                ),
                Moments::Tensors { m, v } => (m.copy()?, v.copy()?),
            };
            out.insert(format!("m.{}", p.name), m);
            out.insert(format!("v.{}", p.name), v);
        }
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        out.insert(
            STEP_KEY.to_string(),
            Tensor::new(&[self.step as i64], &device)?,
        );
        Ok(out)
    }

    /// Writes [`AdamW::state_tensors`] to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.state_tensors()?, path)
            .map_err(|e| Error::file(path, e))
    }

    /// Restores moments and step counter from a file written by
    /// [`AdamW::save`]. Every parameter must have both moments with its
    /// shape, and the file must hold nothing else.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let mut tensors =
            candle_core::safetensors::load(path, &device).map_err(|e| Error::file(path, e))?;
        let step = tensors
            .remove(STEP_KEY)
            .ok_or_else(|| Error::checkpoint(path, format!("tensor `{STEP_KEY}` missing")))?;
        let step = step
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?
            .first()
            .copied()
            .filter(|s| *s >= 0)
            .ok_or_else(|| {
                Error::checkpoint(path, format!("tensor `{STEP_KEY}` is empty or negative"))
            })?;
        let mut restored = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut take = |kind: &str| -> Result<Tensor> {
                let key = format!("{kind}.{}", p.name);
                let t = tensors
                    .remove(&key)
                    .ok_or_else(|| Error::checkpoint(path, format!("tensor `{key}` missing")))?;
                if t.shape() != p.var.shape() {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "tensor `{key}` has shape {:?}, the parameter has {:?}",
                            t.dims(),
                            p.var.dims()
                        ),
                    ));
                }
                Ok(t.to_dtype(DType::F32)?)
            };
            let (m, v) = (take("m")?, take("v")?);
            restored.push(match p.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                },
                // Own copies, as later steps replace them.
                Moments::Tensors { .. } => Moments::Tensors {
                    m: m.copy()?,
                    v: v.copy()?,
                },
            });
        }
        if let Some(extra) = tensors.keys().min() {
            return Err(Error::checkpoint(
                path,
                format!("tensor `{extra}` belongs to no parameter of this model"),
            ));
        }
        for (p, moments) in self.params.iter_mut().zip(restored) {
            p.moments = moments;
        }
        self.step = step as u64;
        Ok(())
    }
}

/// Whether `t` takes the in-place CPU path: an f32 CPU tensor, contiguous,
/// with the fused kernels enabled (see [`spectok_model::fused::applies`]).
fn in_place(t: &Tensor) -> bool {
    spectok_model::fused::applies(t) && t.is_contiguous()
}

/// Elements per rayon task of the in-place passes.
const BLOCK: usize = 1 << 14;

/// The f32 slice of a contiguous CPU tensor.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("in-place AdamW: strided tensor".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("in-place AdamW: not f32"),
    }
}

/// The mutable f32 slice of a contiguous CPU tensor.
fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("in-place AdamW: strided tensor".into()))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => candle_core::bail!("in-place AdamW: not f32"),
    }
}

/// `Σ g²` of one gradient as a scalar tensor (accumulated in f64, in
/// eight interleaved partial sums per block so the loop vectorises).
struct SumSquares;

impl CustomOp1 for SumSquares {
    fn name(&self) -> &'static str {
        "adamw-sum-squares"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = slice(s, l)?;
        let sum: f64 = g.par_chunks(BLOCK).map(sum_squares).sum();
        Ok((CpuStorage::F32(vec![sum as f32]), Shape::from(())))
    }
}

/// `Σ x²` of a block in f64, in eight interleaved partial sums.
#[multiversion(targets = "simd")]
fn sum_squares(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut lanes = x.chunks_exact(8);
    for x in &mut lanes {
        for (a, &x) in acc.iter_mut().zip(x) {
            *a += f64::from(x) * f64::from(x);
        }
    }
    let tail: f64 = lanes
        .remainder()
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// The constants of one AdamW step, in f32: `g` is scaled by `f`,
/// `r₁ = 1 − β₁`, `r₂ = 1 − β₂`, `ibc = 1 / bc`.
#[derive(Clone, Copy)]
struct StepConstants {
    b1: f32,
    b2: f32,
    r1: f32,
    r2: f32,
    f: f32,
    decay: f32,
    lr: f32,
    ibc1: f32,
    ibc2: f32,
    eps: f32,
}

/// [`Update`] over one block of `θ`, `g`, `m`, `v`.
#[multiversion(targets = "simd")]
fn update_block(t: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: StepConstants) {
    for (((t, &g), m), v) in t.iter_mut().zip(g).zip(m).zip(v) {
        let g = g * c.f;
        *m = *m * c.b1 + g * c.r1;
        *v = *v * c.b2 + (g * g) * c.r2;
        let update = (*m * c.ibc1) / ((*v * c.ibc2).sqrt() + c.eps);
        *t = *t * c.decay - c.lr * update;
    }
}

/// One AdamW step of a parameter in place, with its host moments, in one
/// pass: for each element, with `g ← f g`,
/// `m ← β₁ m + (1 − β₁) g`, `v ← β₂ v + (1 − β₂) g²`,
/// `θ ← θ · decay − lr · (m / bc₁) / (√(v / bc₂) + ε)`.
struct Update<'a> {
    /// `(m, v)`, borrowed for the step (the op is called through `&self`).
    moments: Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    c: StepConstants,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = slice(s2, l2)?;
        let theta = slice_mut(s1, l1)?;
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("in-place AdamW: moments poisoned".into()))?;
        let (m, v) = &mut *moments;
        if theta.len() != g.len() || theta.len() != m.len() || theta.len() != v.len() {
            candle_core::bail!("in-place AdamW: parameter, gradient and moment sizes differ");
        }
        let c = self.c;
        theta
            .par_chunks_mut(BLOCK)
            .zip(g.par_chunks(BLOCK))
            .zip(m.par_chunks_mut(BLOCK).zip(v.par_chunks_mut(BLOCK)))
            .for_each(|((t, g), (m, v))| update_block(t, g, m, v, c));
        Ok(())
    }
}
