//! The decoder: target patches, described only by their wavelengths,
//! cross-attend to the encoder's tokens; a linear head gives `P` flux
//! values per target patch.
//!
//! Decoder blocks have cross-attention and an MLP but no self-attention
//! among target patches, so each target patch is decoded independently:
//! its output does not depend on which other patches are requested, and
//! decoding onto another survey's grid is just another set of target
//! patches.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::layers::{dropout, linear, Attention, LayerNorm, Linear, Mlp};

/// The query of a target patch: linear maps of its pooled wavelength
/// encoding and of its per-pixel offset encoding. The offsets carry each
/// pixel's own wavelength, so head output `j` can depend on pixel `j`'s
/// wavelength.
#[derive(Clone, Debug)]
pub struct QueryEmbedding {
    wavelength: Linear,
    offsets: Linear,
}

impl QueryEmbedding {
    /// Weights at `vb/wavelength` (with bias) and `vb/offsets`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(QueryEmbedding {
            wavelength: linear(cfg.wavelength_dim(), cfg.d_model, true, vb.pp("wavelength"))?,
            offsets: linear(
                cfg.patch_size * cfg.offset_dim(),
                cfg.d_model,
                false,
                vb.pp("offsets"),
            )?,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(QueryEmbedding {
            wavelength: self.wavelength.for_inference()?,
            offsets: self.offsets.for_inference()?,
        })
    }

    /// `pooled (B, T', 2F)`, `offsets (B, T', P·2K)` → `(B, T', D)`.
    pub fn forward(&self, pooled: &Tensor, offsets: &Tensor) -> Result<Tensor> {
        // The second map accumulates onto the first where it can (at
        // inference; see `Linear::forward_onto`).
        self.offsets
            .forward_onto(offsets, &pooled.apply(&self.wavelength)?)
    }
}

/// Pre-LN decoder block: `x + cross_attn(LN(x), memory)`, then
/// `x + mlp(LN(x))`. The memory (encoder output) is already normalised.
#[derive(Clone, Debug)]
pub struct DecoderBlock {
    norm1: LayerNorm,
    cross_attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    dropout: f32,
}

impl DecoderBlock {
    /// Weights at `vb/norm1`, `vb/cross_attn`, `vb/norm2`, `vb/mlp`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.d_model;
        Ok(DecoderBlock {
            norm1: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("norm1"))?,
            cross_attn: Attention::new(cfg, vb.pp("cross_attn"))?,
            norm2: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("norm2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            dropout: cfg.dropout,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(DecoderBlock {
            norm1: self.norm1.for_inference()?,
            cross_attn: self.cross_attn.for_inference()?,
            norm2: self.norm2.for_inference()?,
            mlp: self.mlp.for_inference()?,
            dropout: self.dropout,
        })
    }

    /// `xs (B, T', D)`, `memory (B, S, D)`, `memory_mask (B, S)` u8 →
    /// `(B, T', D)`.
    pub fn forward(
        &self,
        xs: &Tensor,
        memory: &Tensor,
        memory_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let h = self.norm1.forward_t(xs, train)?;
        if train && self.dropout > 0.0 {
            let h = self.cross_attn.forward(&h, memory, memory_mask, train)?;
            let xs = (xs + dropout(&h, self.dropout, train)?)?;
            let h = self.norm2.forward_t(&xs, train)?.apply(&self.mlp)?;
            return xs + dropout(&h, self.dropout, train)?;
        }
        // No dropout: each residual add folded into the branch's last
        // product where it can be.
        let xs = self
            .cross_attn
            .forward_onto(&h, memory, memory_mask, xs, train)?;
        self.mlp
            .forward_onto(&self.norm2.forward_t(&xs, train)?, &xs)
    }
}

/// Query embedding, `decoder_layers` [`DecoderBlock`]s and a final
/// LayerNorm.
#[derive(Clone, Debug)]
pub struct CrossAttentionDecoder {
    query_embed: QueryEmbedding,
    blocks: Vec<DecoderBlock>,
    norm: LayerNorm,
}

impl CrossAttentionDecoder {
    /// Weights at `vb/query_embed`, `vb/blocks/{i}`, `vb/norm`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..cfg.decoder_layers)
            .map(|i| DecoderBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(CrossAttentionDecoder {
            query_embed: QueryEmbedding::new(cfg, vb.pp("query_embed"))?,
            blocks,
            norm: LayerNorm::new(cfg.d_model, cfg.layer_norm_eps, vb.pp("norm"))?,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(CrossAttentionDecoder {
            query_embed: self.query_embed.for_inference()?,
            blocks: self
                .blocks
                .iter()
                .map(DecoderBlock::for_inference)
                .collect::<Result<_>>()?,
            norm: self.norm.for_inference()?,
        })
    }

    /// Target features `pooled`, `offsets` (as in
    /// [`QueryEmbedding::forward`]) attend to `memory (B, S, D)` under
    /// `memory_mask (B, S)`; returns the decoded queries `(B, T', D)`.
    pub fn forward(
        &self,
        pooled: &Tensor,
        offsets: &Tensor,
        memory: &Tensor,
        memory_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let mut xs = self.query_embed.forward(pooled, offsets)?;
        for block in &self.blocks {
            xs = block.forward(&xs, memory, memory_mask, train)?;
        }
        self.norm.forward_t(&xs, train)
    }
}

/// Linear head: one decoded query `(…, D)` → its patch's `P` normalised
/// flux values.
#[derive(Clone, Debug)]
pub struct ReconstructionHead {
    proj: Linear,
}

impl ReconstructionHead {
    /// Weights at `vb/proj`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(ReconstructionHead {
            proj: linear(cfg.d_model, cfg.patch_size, true, vb.pp("proj"))?,
        })
    }

    /// A copy for inference (see [`crate::layers::Linear::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(ReconstructionHead {
            proj: self.proj.for_inference()?,
        })
    }
}

impl Module for ReconstructionHead {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.proj)
    }
}
