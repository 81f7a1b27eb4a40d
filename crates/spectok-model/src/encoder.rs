//! The tokenizer's encoder: patch embedding, scale token and pre-LN
//! transformer blocks with a key mask.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::layers::{dropout, linear, Attention, LayerNorm, Linear, Mlp};

/// Embeds each patch to width `D`: a linear map of its pixel signal
/// `[flux ×P, σ ×P, valid ×P]` (the valid indicator tells a zeroed bad
/// pixel from a true zero), plus linear maps of its pooled wavelength
/// encoding and its per-pixel offset encoding (see
/// [`crate::WavelengthEncoding`]). There is no index position embedding:
/// wavelength is the only position, so a spectrum's tokens do not depend on
/// where its patches sit in the batch.
#[derive(Clone, Debug)]
pub struct PatchEmbedding {
    signal: Linear,
    wavelength: Linear,
    offsets: Linear,
}

impl PatchEmbedding {
    /// Weights at `vb/signal` (with bias), `vb/wavelength`, `vb/offsets`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let p = cfg.patch_size;
        let d = cfg.d_model;
        Ok(PatchEmbedding {
            signal: linear(3 * p, d, true, vb.pp("signal"))?,
            wavelength: linear(cfg.wavelength_dim(), d, false, vb.pp("wavelength"))?,
            offsets: linear(p * cfg.offset_dim(), d, false, vb.pp("offsets"))?,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(PatchEmbedding {
            signal: self.signal.for_inference()?,
            wavelength: self.wavelength.for_inference()?,
            offsets: self.offsets.for_inference()?,
        })
    }

    /// `signal (B, T, 3P)`, `pooled (B, T, 2F)`, `offsets (B, T, P·2K)` →
    /// `(B, T, D)`.
    pub fn forward(&self, signal: &Tensor, pooled: &Tensor, offsets: &Tensor) -> Result<Tensor> {
        // Each map accumulates onto the sum so far where it can (at
        // inference; see `Linear::forward_onto`).
        let e = signal.apply(&self.signal)?;
        let e = self.wavelength.forward_onto(pooled, &e)?;
        self.offsets.forward_onto(offsets, &e)
    }
}

/// The scale token: a learned affine map of `log10(scale)` to width `D`,
/// prepended to every spectrum's patch sequence and always attendable, so
/// absolute flux can be restored and no spectrum has an empty key set.
#[derive(Clone, Debug)]
pub struct ScaleEmbedding {
    proj: Linear,
}

impl ScaleEmbedding {
    /// Weights at `vb/proj`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(ScaleEmbedding {
            proj: linear(1, cfg.d_model, true, vb.pp("proj"))?,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(ScaleEmbedding {
            proj: self.proj.for_inference()?,
        })
    }

    /// `log_scale (B, 1)` → `(B, 1, D)`.
    pub fn forward(&self, log_scale: &Tensor) -> Result<Tensor> {
        log_scale.apply(&self.proj)?.unsqueeze(1)
    }
}

/// Pre-LayerNorm transformer block: `x + attn(LN(x))`, then `x + mlp(LN(x))`,
/// with dropout on both branches in training mode.
#[derive(Clone, Debug)]
pub struct EncoderBlock {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    dropout: f32,
}

impl EncoderBlock {
    /// Weights at `vb/norm1`, `vb/attn`, `vb/norm2`, `vb/mlp`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(EncoderBlock {
            norm1: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            norm2: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("norm2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            dropout: cfg.dropout,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(EncoderBlock {
            norm1: self.norm1.for_inference()?,
            attn: self.attn.for_inference()?,
            norm2: self.norm2.for_inference()?,
            mlp: self.mlp.for_inference()?,
            dropout: self.dropout,
        })
    }

    /// `xs (B, S, D)`, `key_mask (B, S)` u8 → `(B, S, D)`.
    pub fn forward(&self, xs: &Tensor, key_mask: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.norm1.forward_t(xs, train)?;
        if train && self.dropout > 0.0 {
            let h = self.attn.forward(&h, &h, key_mask, train)?;
            let xs = (xs + dropout(&h, self.dropout, train)?)?;
            let h = self.norm2.forward_t(&xs, train)?.apply(&self.mlp)?;
            return xs + dropout(&h, self.dropout, train)?;
        }
        // No dropout: each residual add folded into the branch's last
        // product where it can be.
        let xs = self.attn.forward_onto(&h, &h, key_mask, xs, train)?;
        self.mlp
            .forward_onto(&self.norm2.forward_t(&xs, train)?, &xs)
    }
}

/// The encoder: embeddings, `encoder_layers` [`EncoderBlock`]s and a final
/// LayerNorm. Its sequence is `[scale token, patch 0, …, patch T−1]`.
#[derive(Clone, Debug)]
pub struct Encoder {
    patch_embed: PatchEmbedding,
    scale_embed: ScaleEmbedding,
    blocks: Vec<EncoderBlock>,
    norm: LayerNorm,
    dropout: f32,
}

impl Encoder {
    /// Weights at `vb/patch_embed`, `vb/scale_embed`, `vb/blocks/{i}`,
    /// `vb/norm`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..cfg.encoder_layers)
            .map(|i| EncoderBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            patch_embed: PatchEmbedding::new(cfg, vb.pp("patch_embed"))?,
            scale_embed: ScaleEmbedding::new(cfg, vb.pp("scale_embed"))?,
            blocks,
            norm: LayerNorm::new(cfg.d_model, cfg.layer_norm_eps, vb.pp("norm"))?,
            dropout: cfg.dropout,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Encoder {
            patch_embed: self.patch_embed.for_inference()?,
            scale_embed: self.scale_embed.for_inference()?,
            blocks: blocks_for_inference(&self.blocks)?,
            norm: self.norm.for_inference()?,
            dropout: self.dropout,
        })
    }

    /// Runs the encoder. `signal`, `pooled`, `offsets` as in
    /// [`PatchEmbedding::forward`]; `log_scale (B, 1)`; `key_mask (B, 1+T)`
    /// u8 with the scale token's column set. Returns `(B, 1+T, D)`; rows of
    /// masked patches are computed but never read by a valid row.
    pub fn forward(
        &self,
        signal: &Tensor,
        pooled: &Tensor,
        offsets: &Tensor,
        log_scale: &Tensor,
        key_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let patches = self.patch_embed.forward(signal, pooled, offsets)?;
        let scale = self.scale_embed.forward(log_scale)?;
        let mut xs = Tensor::cat(&[&scale, &patches], 1)?;
        xs = dropout(&xs, self.dropout, train)?;
        for block in &self.blocks {
            xs = block.forward(&xs, key_mask, train)?;
        }
        self.norm.forward_t(&xs, train)
    }
}

impl Encoder {
    /// Number of transformer blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The hidden sequence `(B, 1+T, D)` after the embeddings and the
    /// first `upto` blocks (before the final LayerNorm); arguments as in
    /// [`Encoder::forward`]. `upto == 0` gives the embedded sequence;
    /// [`Encoder::forward_from`] with `from == upto` finishes it, so the
    /// two together equal [`Encoder::forward`]. `upto` beyond the number
    /// of blocks is an error.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_until(
        &self,
        signal: &Tensor,
        pooled: &Tensor,
        offsets: &Tensor,
        log_scale: &Tensor,
        key_mask: &Tensor,
        upto: usize,
        train: bool,
    ) -> Result<Tensor> {
        let Some(first) = self.blocks.get(..upto) else {
            candle_core::bail!(
                "encoder: cannot stop after block {upto} of {}",
                self.blocks.len()
            );
        };
        let patches = self.patch_embed.forward(signal, pooled, offsets)?;
        let scale = self.scale_embed.forward(log_scale)?;
        let mut xs = Tensor::cat(&[&scale, &patches], 1)?;
        xs = dropout(&xs, self.dropout, train)?;
        for block in first {
            xs = block.forward(&xs, key_mask, train)?;
        }
        Ok(xs)
    }

    /// Runs blocks `from..` and the final LayerNorm on a hidden sequence
    /// `xs (B, S, D)` with its key mask `(B, S)` u8 (as given by
    /// [`Encoder::forward_until`] with `upto == from`). `from` beyond the
    /// number of blocks is an error.
    pub fn forward_from(
        &self,
        xs: &Tensor,
        key_mask: &Tensor,
        from: usize,
        train: bool,
    ) -> Result<Tensor> {
        let Some(rest) = self.blocks.get(from..) else {
            candle_core::bail!(
                "encoder: cannot start at block {from} of {}",
                self.blocks.len()
            );
        };
        let mut xs = xs.clone();
        for block in rest {
            xs = block.forward(&xs, key_mask, train)?;
        }
        self.norm.forward_t(&xs, train)
    }

    /// The blocks from `from` on and the final LayerNorm, sharing this
    /// encoder's weights.
    pub fn tail(&self, from: usize) -> Result<EncoderTail> {
        let Some(rest) = self.blocks.get(from..) else {
            candle_core::bail!(
                "encoder: cannot start at block {from} of {}",
                self.blocks.len()
            );
        };
        Ok(EncoderTail {
            from,
            blocks: rest.to_vec(),
            norm: self.norm.clone(),
        })
    }
}

/// The last blocks of an encoder (block `from` to the last) and its final
/// LayerNorm: what turns the hidden sequence after block `from`
/// ([`Encoder::forward_until`]) into the encoder's output. Its weights
/// have the encoder's names (`vb/blocks/{i}` for `i ≥ from`, `vb/norm`),
/// so it can be built on its own (e.g. as trainable copies of a
/// checkpoint's last blocks) or taken from an encoder
/// ([`Encoder::tail`]).
#[derive(Clone, Debug)]
pub struct EncoderTail {
    from: usize,
    blocks: Vec<EncoderBlock>,
    norm: LayerNorm,
}

impl EncoderTail {
    /// Blocks `from..cfg.encoder_layers` at `vb/blocks/{i}` and the final
    /// LayerNorm at `vb/norm`; `from` beyond `cfg.encoder_layers` is an
    /// error.
    pub fn new(cfg: &Config, from: usize, vb: VarBuilder) -> Result<Self> {
        if from > cfg.encoder_layers {
            candle_core::bail!(
                "encoder tail: cannot start at block {from} of {}",
                cfg.encoder_layers
            );
        }
        let blocks = (from..cfg.encoder_layers)
            .map(|i| EncoderBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(EncoderTail {
            from,
            blocks,
            norm: LayerNorm::new(cfg.d_model, cfg.layer_norm_eps, vb.pp("norm"))?,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(EncoderTail {
            from: self.from,
            blocks: blocks_for_inference(&self.blocks)?,
            norm: self.norm.for_inference()?,
        })
    }

    /// The index of the first block (the number of blocks before it).
    pub fn from_block(&self) -> usize {
        self.from
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the tail is the final LayerNorm alone.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// `xs (B, S, D)` after block `from`, `key_mask (B, S)` u8 → the
    /// encoder's output `(B, S, D)`.
    pub fn forward(&self, xs: &Tensor, key_mask: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = xs.clone();
        for block in &self.blocks {
            xs = block.forward(&xs, key_mask, train)?;
        }
        self.norm.forward_t(&xs, train)
    }
}

/// Inference copies of `blocks`.
fn blocks_for_inference(blocks: &[EncoderBlock]) -> Result<Vec<EncoderBlock>> {
    blocks.iter().map(EncoderBlock::for_inference).collect()
}
