//! The whole model: encoder, optional quantiser, decoder, head and loss.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;
use spectok_data::{Batch, PatchState};

use crate::config::{Config, MaskScore};
use crate::decoder::{CrossAttentionDecoder, ReconstructionHead};
use crate::encoder::{Encoder, EncoderTail};
use crate::error::{Error, Result};
use crate::fsq::Fsq;
use crate::wavelength::{WavelengthEncoding, WavelengthGrid};

/// What the encoder gives for a batch.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// `(B, T, D)` one token per patch slot (after the quantiser when it is
    /// on). Only rows with `token_mask == 1` are meaningful; the others
    /// (invalid, hidden and padding patches) are computed but never read.
    pub tokens: Tensor,
    /// `(B, T)` u8: 1 for valid patches the encoder saw.
    pub token_mask: Tensor,
    /// `(B, D)` the scale token's output.
    pub scale_token: Tensor,
    /// `(B, D)` mean of the valid tokens; for a spectrum without any valid
    /// patch, its scale token.
    pub pooled: Tensor,
    /// `(B, T)` u32 quantiser ids, when [`Config::fsq_levels`] is set.
    pub token_ids: Option<Tensor>,
}

/// Which patch slots are hidden from the encoder for masked modelling:
/// `[batch_size][max_patches]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HiddenPatches {
    /// Spectra in the batch.
    pub batch_size: usize,
    /// Patch slots per spectrum.
    pub max_patches: usize,
    /// `[batch_size][max_patches]`: true where the patch is hidden.
    pub hidden: Vec<bool>,
}

impl HiddenPatches {
    /// Hides `round(ratio · n)` of each spectrum's `n` valid patches, drawn
    /// uniformly from `rng` (deterministic for a seeded rng). When
    /// `ratio > 0` and `n ≥ 2`, at least one patch is hidden and at least
    /// one stays visible; spectra with fewer than 2 valid patches keep all.
    pub fn sample<R: Rng + ?Sized>(batch: &Batch, ratio: f64, rng: &mut R) -> Self {
        let (b, t) = (batch.batch_size, batch.max_patches);
        let mut hidden = vec![false; b * t];
        for s in 0..b {
            let Some(states) = batch.patch_state.get(s * t..(s + 1) * t) else {
                break;
            };
            let valid: Vec<usize> = states
                .iter()
                .enumerate()
                .filter(|(_, st)| **st == PatchState::Valid)
                .map(|(i, _)| i)
                .collect();
            let n = valid.len();
            if ratio <= 0.0 || n < 2 {
                continue;
            }
            let k = ((ratio * n as f64).round() as usize).clamp(1, n - 1);
            for i in rand::seq::index::sample(rng, n, k) {
                hidden[s * t + valid[i]] = true;
            }
        }
        HiddenPatches {
            batch_size: b,
            max_patches: t,
            hidden,
        }
    }

    /// Number of hidden patches.
    pub fn count(&self) -> usize {
        self.hidden.iter().filter(|h| **h).count()
    }
}

/// The reconstruction loss of a batch and its parts.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// The scalar to minimise (f32).
    pub loss: Tensor,
    /// Loss over every valid patch (scalar, f32).
    pub all: Tensor,
    /// Loss over the hidden patches only, when some were hidden.
    pub hidden: Option<Tensor>,
    /// `(B, T, P)` reconstruction on the input grid (f32).
    pub reconstruction: Tensor,
    /// Number of pixels `loss` is averaged over.
    pub scored_pixels: usize,
}

/// Host-side inputs of the encoder for one batch.
struct Inputs {
    signal: Tensor,
    log_scale: Tensor,
    key_mask: Tensor,
    token_mask: Tensor,
}

/// The universal spectral tokenizer (see the crate docs for the design).
#[derive(Clone, Debug)]
pub struct Tokenizer {
    cfg: Config,
    wavelength: WavelengthEncoding,
    encoder: Encoder,
    fsq: Option<Fsq>,
    decoder: CrossAttentionDecoder,
    head: ReconstructionHead,
    device: Device,
    dtype: DType,
    compute: DType,
}

impl Tokenizer {
    /// Builds the model with weights from `vb` (at `encoder`, `fsq`,
    /// `decoder`, `head`), after validating `cfg`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let fsq = if cfg.fsq_enabled() {
            Some(Fsq::new(cfg, vb.pp("fsq"))?)
        } else {
            None
        };
        Ok(Tokenizer {
            cfg: cfg.clone(),
            wavelength: WavelengthEncoding::new(cfg),
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            fsq,
            decoder: CrossAttentionDecoder::new(cfg, vb.pp("decoder"))?,
            head: ReconstructionHead::new(cfg, vb.pp("head"))?,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            compute: vb.dtype(),
        })
    }

    /// A copy of the model for inference: every weight copied into
    /// storage of its own, outside any graph (training this model
    /// afterwards leaves the copy as it was), and each linear layer's
    /// weight stored as `Wᵀ (in, out)`, the operand the CPU GEMMs run
    /// fastest from — a trainable layer holds PyTorch's `W (out, in)` and
    /// copies it into that layout at every call (see
    /// [`crate::layers::Linear::for_inference`]). Outputs equal the
    /// original's to float rounding.
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Tokenizer {
            encoder: self.encoder.for_inference()?,
            fsq: self.fsq.as_ref().map(Fsq::for_inference).transpose()?,
            decoder: self.decoder.for_inference()?,
            head: self.head.for_inference()?,
            ..self.clone()
        })
    }

    /// The model's config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dtype activations are computed in: the weights' dtype unless
    /// [`Self::with_compute_dtype`] set another.
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// Computes activations in `dtype` whatever the weights' dtype: with
    /// f32 weights and `bf16`/`f16` this is mixed-precision training, the
    /// weights cast per call (gradients flow back through the cast into
    /// the f32 master weights). LayerNorm statistics, attention softmax,
    /// pooling and the loss stay in f32.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute = dtype;
        self
    }

    /// The quantiser, when [`Config::fsq_levels`] is set.
    pub fn fsq(&self) -> Option<&Fsq> {
        self.fsq.as_ref()
    }

    /// Checks that a batch's arrays agree with its shape and the model.
    pub fn check_batch(&self, batch: &Batch) -> Result<()> {
        let (b, t, p) = (batch.batch_size, batch.max_patches, batch.patch_size);
        if p != self.cfg.patch_size {
            return Err(Error::batch(
                "patch_size",
                format!(
                    "batch has {p} pixels per patch, model {}",
                    self.cfg.patch_size
                ),
            ));
        }
        let pix = b * t * p;
        let lens: [(&'static str, usize, usize); 6] = [
            ("flux", batch.flux.len(), pix),
            ("sigma", batch.sigma.len(), pix),
            ("wavelength", batch.wavelength.len(), pix),
            ("weight", batch.weight.len(), pix),
            ("patch_state", batch.patch_state.len(), b * t),
            ("log_scale", batch.log_scale.len(), b),
        ];
        for (field, got, want) in lens {
            if got != want {
                return Err(Error::batch(
                    field,
                    format!("{got} values for a {b} × {t} × {p} batch (want {want})"),
                ));
            }
        }
        Ok(())
    }

    fn inputs(&self, batch: &Batch, hidden: Option<&HiddenPatches>) -> Result<Inputs> {
        self.check_batch(batch)?;
        let (b, t, p) = (batch.batch_size, batch.max_patches, batch.patch_size);
        if let Some(h) = hidden {
            if h.batch_size != b || h.max_patches != t || h.hidden.len() != b * t {
                return Err(Error::batch(
                    "hidden",
                    format!(
                        "hidden mask is {} × {} for a {b} × {t} batch",
                        h.batch_size, h.max_patches
                    ),
                ));
            }
        }
        let mut signal = vec![0f32; b * t * 3 * p];
        for (i, out) in signal.chunks_exact_mut(3 * p).enumerate() {
            let px = i * p..(i + 1) * p;
            for (j, ((&f, &s), &w)) in batch.flux[px.clone()]
                .iter()
                .zip(&batch.sigma[px.clone()])
                .zip(&batch.weight[px])
                .enumerate()
            {
                if w > 0.0 && f.is_finite() && s.is_finite() {
                    out[j] = f;
                    out[p + j] = s;
                    out[2 * p + j] = 1.0;
                }
            }
        }
        let mut key_mask = vec![0u8; b * (1 + t)];
        let mut token_mask = vec![0u8; b * t];
        for s in 0..b {
            key_mask[s * (1 + t)] = 1;
            for i in 0..t {
                let k = s * t + i;
                let seen = batch.patch_state[k] == PatchState::Valid
                    && !hidden.is_some_and(|h| h.hidden[k]);
                token_mask[k] = seen as u8;
                key_mask[s * (1 + t) + 1 + i] = seen as u8;
            }
        }
        let log_scale: Vec<f32> = batch
            .log_scale
            .iter()
            .map(|&l| if l.is_finite() { l } else { 0.0 })
            .collect();
        let dev = &self.device;
        Ok(Inputs {
            signal: Tensor::from_vec(signal, (b, t, 3 * p), dev)?.to_dtype(self.compute)?,
            log_scale: Tensor::from_vec(log_scale, (b, 1), dev)?.to_dtype(self.compute)?,
            key_mask: Tensor::from_vec(key_mask, (b, 1 + t), dev)?,
            token_mask: Tensor::from_vec(token_mask, (b, t), dev)?,
        })
    }

    /// Encodes a batch (`train` turns dropout on).
    pub fn encode(&self, batch: &Batch, train: bool) -> Result<Encoded> {
        self.encode_hidden(batch, None, train)
    }

    /// Encodes a batch with some valid patches hidden from the encoder
    /// (masked modelling): hidden patches are neither attended to nor
    /// pooled, and their token rows are masked out like invalid ones.
    pub fn encode_hidden(
        &self,
        batch: &Batch,
        hidden: Option<&HiddenPatches>,
        train: bool,
    ) -> Result<Encoded> {
        self.check_batch(batch)?;
        let features = self.grid_features(&WavelengthGrid::from_batch(batch))?;
        self.encode_with(batch, hidden, &features, train)
    }

    /// Wavelength features `(pooled, offsets)` of a grid as tensors.
    fn grid_features(&self, grid: &WavelengthGrid) -> Result<(Tensor, Tensor)> {
        self.wavelength.forward(grid, &self.device, self.compute)
    }

    fn encode_with(
        &self,
        batch: &Batch,
        hidden: Option<&HiddenPatches>,
        (pooled_wl, offsets): &(Tensor, Tensor),
        train: bool,
    ) -> Result<Encoded> {
        let inputs = self.inputs(batch, hidden)?;
        let t = batch.max_patches;
        let out = self.encoder.forward(
            &inputs.signal,
            pooled_wl,
            offsets,
            &inputs.log_scale,
            &inputs.key_mask,
            train,
        )?;
        let scale_token = out.i((.., 0))?;
        let tokens = out.narrow(1, 1, t)?;
        let (tokens, token_ids) = match &self.fsq {
            Some(fsq) => {
                let (q, ids) = fsq.forward(&tokens)?;
                (q, Some(ids))
            }
            None => (tokens, None),
        };
        let pooled = pool(&tokens, &inputs.token_mask, &scale_token)?;
        Ok(Encoded {
            tokens,
            token_mask: inputs.token_mask,
            scale_token,
            pooled,
            token_ids,
        })
    }

    /// Reconstructs normalised flux `(B, T', P)` (model dtype) at the
    /// wavelengths of `target`, from the tokens and scale token of `enc`.
    /// `target` may be the input grid ([`WavelengthGrid::from_batch`], the
    /// training case) or any other, e.g. another survey's.
    pub fn decode(&self, enc: &Encoded, target: &WavelengthGrid, train: bool) -> Result<Tensor> {
        let b = enc.tokens.dim(0)?;
        if target.batch_size != b {
            return Err(Error::batch(
                "batch_size",
                format!("target grid has {} spectra, tokens {b}", target.batch_size),
            ));
        }
        let features = self.grid_features(target)?;
        self.decode_with(enc, &features, train)
    }

    fn decode_with(
        &self,
        enc: &Encoded,
        (pooled_wl, offsets): &(Tensor, Tensor),
        train: bool,
    ) -> Result<Tensor> {
        let b = enc.tokens.dim(0)?;
        let memory =
            Tensor::cat(&[&enc.scale_token.unsqueeze(1)?, &enc.tokens], 1)?.contiguous()?;
        let ones = Tensor::ones((b, 1), DType::U8, &self.device)?;
        let memory_mask = Tensor::cat(&[&ones, &enc.token_mask], 1)?;
        let xs = self
            .decoder
            .forward(pooled_wl, offsets, &memory, &memory_mask, train)?;
        Ok(self.head.forward(&xs)?)
    }

    /// Encodes a batch and decodes it onto its own grid: `(B, T, P)`.
    pub fn reconstruct(&self, batch: &Batch) -> Result<Tensor> {
        let enc = self.encode(batch, false)?;
        self.decode(&enc, &WavelengthGrid::from_batch(batch), false)
    }

    /// The noise-aware masked Gaussian loss of METHOD.md,
    /// `L = Σ m·w·(f − f̂)² / Σ m`, with `w = min(weight, ivar_clip)` and
    /// `m = 1` for pixels with positive weight in the scored patches of
    /// state `Valid` (never invalid or padding ones).
    ///
    /// Without hidden patches (`hidden` is `None` or hides nothing) every
    /// valid patch is scored. With hidden patches, [`Config::mask_score`]
    /// picks the hidden ones, all valid ones, or the sum of both losses.
    pub fn loss(
        &self,
        batch: &Batch,
        hidden: Option<&HiddenPatches>,
        train: bool,
    ) -> Result<LossOutput> {
        let hidden = hidden.filter(|h| h.count() > 0);
        self.check_batch(batch)?;
        // The input grid is the target grid: encode its wavelengths once.
        let features = self.grid_features(&WavelengthGrid::from_batch(batch))?;
        let enc = self.encode_with(batch, hidden, &features, train)?;
        let recon = self
            .decode_with(&enc, &features, train)?
            .to_dtype(DType::F32)?;
        let (b, t, p) = (batch.batch_size, batch.max_patches, batch.patch_size);
        let clip = self.cfg.ivar_clip;
        let mut target = vec![0f32; b * t * p];
        let mut w_all = vec![0f32; b * t * p];
        let mut w_hidden = vec![0f32; b * t * p];
        let (mut n_all, mut n_hidden) = (0usize, 0usize);
        for k in 0..b * t {
            if batch.patch_state[k] != PatchState::Valid {
                continue;
            }
            let is_hidden = hidden.is_some_and(|h| h.hidden[k]);
            for i in k * p..(k + 1) * p {
                let (f, w) = (batch.flux[i], batch.weight[i]);
                if !(w > 0.0 && w.is_finite() && f.is_finite()) {
                    continue;
                }
                let w = w.min(clip);
                target[i] = f;
                w_all[i] = w;
                n_all += 1;
                if is_hidden {
                    w_hidden[i] = w;
                    n_hidden += 1;
                }
            }
        }
        let dev = &self.device;
        let target = Tensor::from_vec(target, (b, t, p), dev)?;
        let sq = (&recon - &target)?.sqr()?;
        let part = |w: Vec<f32>, n: usize| -> Result<Tensor> {
            let w = Tensor::from_vec(w, (b, t, p), dev)?;
            Ok(((&sq * &w)?.sum_all()? / n.max(1) as f64)?)
        };
        let all = part(w_all, n_all)?;
        let hidden_loss = match hidden {
            Some(_) => Some(part(w_hidden, n_hidden)?),
            None => None,
        };
        let (loss, scored_pixels) = match (&hidden_loss, self.cfg.mask_score) {
            (None, _) | (Some(_), MaskScore::All) => (all.clone(), n_all),
            (Some(h), MaskScore::Hidden) => (h.clone(), n_hidden),
            (Some(h), MaskScore::Both) => ((&all + h)?, n_all),
        };
        Ok(LossOutput {
            loss,
            all,
            hidden: hidden_loss,
            reconstruction: recon,
            scored_pixels,
        })
    }

    /// The training loss: hides [`Config::mask_ratio`] of the valid patches
    /// (drawn from `rng`) when masked modelling is on, then [`Self::loss`]
    /// in training mode.
    pub fn training_loss<R: Rng + ?Sized>(&self, batch: &Batch, rng: &mut R) -> Result<LossOutput> {
        if self.cfg.mask_ratio > 0.0 {
            let hidden = HiddenPatches::sample(batch, self.cfg.mask_ratio, rng);
            self.loss(batch, Some(&hidden), true)
        } else {
            self.loss(batch, None, true)
        }
    }
}

/// Mean of the tokens under `mask (B, T)`; the scale token where a row has
/// no valid token.
fn pool(tokens: &Tensor, mask: &Tensor, scale: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = tokens.dtype();
    let m = mask.to_dtype(DType::F32)?;
    let n = m.sum_keepdim(1)?; // (B, 1)
                               // Σ_t mask·token as a batched product (B, 1, T) · (B, T, D): one pass
                               // over the tokens, straight on their strided view (a broadcast
                               // multiply and a sum over the middle dimension took two, the sum a
                               // slow strided one).
    let sum = m
        .unsqueeze(1)?
        .matmul(&tokens.to_dtype(DType::F32)?)?
        .squeeze(1)?; // (B, D)
    let empty = n.eq(0f64)?.to_dtype(DType::F32)?;
    let sum = (sum + scale.to_dtype(DType::F32)?.broadcast_mul(&empty)?)?;
    sum.broadcast_div(&n.clamp(1f64, f64::INFINITY)?)?
        .to_dtype(dtype)
}

/// The encoder's hidden states part way through: what
/// [`Tokenizer::encode_until`] gives and [`Tokenizer::encode_from`]
/// finishes.
#[derive(Clone, Debug)]
pub struct EncoderState {
    /// `(B, 1+T, D)` the sequence `[scale token, patch 0, …, patch T−1]`
    /// after the first [`Self::blocks`] blocks (before the final
    /// LayerNorm). Rows of masked patches are computed but never read by
    /// a valid row.
    pub hidden: Tensor,
    /// `(B, 1+T)` u8: the attendable rows (the scale token and the valid
    /// patches).
    pub key_mask: Tensor,
    /// `(B, T)` u8: 1 for valid patches (`key_mask` without the scale
    /// token's column).
    pub token_mask: Tensor,
    /// Blocks run so far.
    pub blocks: usize,
}

impl Tokenizer {
    /// Encodes a batch up to block `upto` (`0 ≤ upto ≤ encoder_layers`):
    /// the hidden states after the embeddings and the first `upto`
    /// blocks, with the key and token masks. [`Self::encode_from`] on the
    /// result gives what [`Self::encode`] gives.
    pub fn encode_until(&self, batch: &Batch, upto: usize, train: bool) -> Result<EncoderState> {
        if upto > self.cfg.encoder_layers {
            return Err(Error::Config {
                field: "encoder_layers",
                message: format!(
                    "cannot stop after block {upto}: the encoder has {} blocks",
                    self.cfg.encoder_layers
                ),
            });
        }
        self.check_batch(batch)?;
        let (pooled_wl, offsets) = self.grid_features(&WavelengthGrid::from_batch(batch))?;
        let inputs = self.inputs(batch, None)?;
        let hidden = self.encoder.forward_until(
            &inputs.signal,
            &pooled_wl,
            &offsets,
            &inputs.log_scale,
            &inputs.key_mask,
            upto,
            train,
        )?;
        Ok(EncoderState {
            hidden,
            key_mask: inputs.key_mask,
            token_mask: inputs.token_mask,
            blocks: upto,
        })
    }

    /// Finishes an encoding from `state` with this model's remaining
    /// blocks, final LayerNorm, quantiser (when on) and pooling.
    pub fn encode_from(&self, state: &EncoderState, train: bool) -> Result<Encoded> {
        let tail = self.encoder.tail(state.blocks)?;
        Self::finish_with(state, &tail, self.fsq.as_ref(), train)
    }

    /// Finishes an encoding from `state` with the given blocks and final
    /// LayerNorm (`tail`, which must start at block `state.blocks`) and
    /// quantiser, then pools exactly as [`Self::encode`] does: the scale
    /// token is row 0 of the output, the tokens the other rows (quantised
    /// when `fsq` is given), and the pooled embedding the mean of the
    /// tokens under `state.token_mask` (the scale token where there is
    /// none). With this model's own tail and quantiser it is
    /// [`Self::encode_from`]; with trainable copies of them it fine-tunes
    /// the last blocks on hidden states computed once.
    pub fn finish_with(
        state: &EncoderState,
        tail: &EncoderTail,
        fsq: Option<&Fsq>,
        train: bool,
    ) -> Result<Encoded> {
        if tail.from_block() != state.blocks {
            return Err(Error::batch(
                "blocks",
                format!(
                    "the hidden states are after block {}, the tail starts at block {}",
                    state.blocks,
                    tail.from_block()
                ),
            ));
        }
        let (b, s, _) = state.hidden.dims3()?;
        let t = state.token_mask.dim(1)?;
        if s != t + 1 || state.key_mask.dims() != [b, s] || state.token_mask.dim(0)? != b {
            return Err(Error::batch(
                "hidden",
                format!(
                    "hidden states {:?}, key mask {:?} and token mask {:?} disagree",
                    state.hidden.dims(),
                    state.key_mask.dims(),
                    state.token_mask.dims()
                ),
            ));
        }
        let out = tail.forward(&state.hidden, &state.key_mask, train)?;
        let scale_token = out.i((.., 0))?;
        let tokens = out.narrow(1, 1, t)?;
        let (tokens, token_ids) = match fsq {
            Some(fsq) => {
                let (q, ids) = fsq.forward(&tokens)?;
                (q, Some(ids))
            }
            None => (tokens, None),
        };
        let pooled = pool(&tokens, &state.token_mask, &scale_token)?;
        Ok(Encoded {
            tokens,
            token_mask: state.token_mask.clone(),
            scale_token,
            pooled,
            token_ids,
        })
    }
}
