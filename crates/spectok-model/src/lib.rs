//! spectok-model: the universal spectral tokenizer in candle.
//!
//! Input is a [`spectok_data::Batch`] (`B × T × P` pixels on each survey's
//! native grid, a `B × T` patch state, a log flux scale per spectrum).
//! Output is one `D`-dim token per patch, a scale token and a pooled
//! embedding ([`Encoded`]); the decoder reconstructs normalised flux at any
//! requested wavelengths, and [`Tokenizer::loss`] is the noise-aware
//! training objective.
//!
//! The model is written like candle-transformers' model files: a
//! [`Config`] with presets ([`Config::paper`], [`Config::demo`]), one
//! struct per block with `new(cfg, vb)` and `forward`, and weight names
//! from `vb.pp(..)` paths mirroring the struct tree:
//!
//! ```text
//! encoder.patch_embed.{signal,wavelength,offsets}   PatchEmbedding
//! encoder.scale_embed.proj                          ScaleEmbedding
//! encoder.blocks.{i}.{norm1,attn.{q,k,v,out},norm2,mlp.{fc1,fc2}}
//! encoder.norm
//! fsq.{proj_in,proj_out}                            Fsq (when on)
//! decoder.query_embed.{wavelength,offsets}          QueryEmbedding
//! decoder.blocks.{i}.{norm1,cross_attn.{q,k,v,out},norm2,mlp.{fc1,fc2}}
//! decoder.norm
//! head.proj                                         ReconstructionHead
//! ```
//!
//! # Design choices (METHOD.md leaves these open)
//!
//! - **Wavelength encoding** ([`WavelengthEncoding`]): sinusoids with
//!   periods log-spaced between `min_period` and `max_period` (0.1 Å –
//!   1e5 Å), computed in f64 on the host per pixel and averaged over each
//!   patch's *present* pixels (the repeated wavelengths of a short tail
//!   patch and padding slots are not counted). Each pixel's offset from
//!   its patch centre gets its own sinusoids (`offset_freqs`), so the
//!   model knows every pixel's wavelength, not only the patch's.
//! - **Patch embedding** ([`PatchEmbedding`]): `[flux ×P, σ ×P, valid ×P]`
//!   → linear to `D`, plus linear maps of the two encodings. Flux and σ
//!   are used as the batch gives them (the data crate normalises them).
//!   No index position embedding: a spectrum's tokens depend on its
//!   patches' content and wavelengths only.
//! - **Scale token** ([`ScaleEmbedding`]): an affine map of `log10(scale)`,
//!   prepended to the sequence and always attendable. It is never
//!   quantised.
//! - **Encoder**: pre-LN blocks, exact GELU MLPs, final LayerNorm. Keys of
//!   invalid, padding and hidden patches get [`MASK_LOGIT`] added to their logits, so
//!   they get exactly zero attention weight; such rows are computed but no
//!   valid row reads them. Hence a spectrum's valid tokens do not change
//!   with padding, invalid patches or its position in the batch.
//! - **Pooled embedding**: mean of the valid tokens; a spectrum with no
//!   valid patch gets its scale token.
//! - **Decoder** ([`CrossAttentionDecoder`]): target patches are embedded
//!   from their wavelengths alone ([`QueryEmbedding`]) and cross-attend to
//!   `[scale token, valid tokens]`; there is no self-attention among
//!   targets, so each target patch is decoded independently of the others
//!   requested. [`ReconstructionHead`] maps each to `P` values.
//! - **Loss**: `Σ m·w·(f − f̂)² / Σ m` ([`Tokenizer::loss`]), `w` the
//!   batch's weight clipped at `ivar_clip`. Masked modelling
//!   ([`HiddenPatches`], `mask_ratio`, `mask_score`) hides valid patches
//!   from the encoder and scores hidden, all or both.
//! - **Quantiser** ([`Fsq`], off by default): FSQ on the tokens with a
//!   straight-through gradient; the decoder then reads quantised tokens.
//! - **Dropout** (`dropout`, default 0) on embeddings, attention weights
//!   and both residual branches, in training mode only.
//!
//! Weights are saved as `model.safetensors` with `config.json` beside it
//! ([`Tokenizer::save`], [`Tokenizer::load`]); [`Tokenizer::init`] gives
//! seed-reproducible initial weights. Device is CPU by default; the `cuda`
//! feature enables [`device()`](fn@device) names `cuda` and `cuda:N`,
//! where bf16 is the default dtype. [`forward_flops`] counts matmul FLOPs
//! for MFU.
//!
//! `scripts/reference_model.py` is a PyTorch implementation of the same
//! architecture that loads these checkpoints (same weight names) and
//! reproduces the tokens exported by `examples/export_reference.rs`.
//!
//! Architecture invariants: the crate reads no survey file and knows no
//! command line; CPU-only builds need no CUDA toolkit.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod decoder;
pub mod device;
pub mod encoder;
pub mod error;
pub mod flops;
pub mod fsq;
pub mod fused;
pub mod layers;
pub mod process;
pub mod tokenizer;
pub mod wavelength;

pub use checkpoint::{seeded_var_builder, CONFIG_FILE, WEIGHTS_FILE};
pub use config::{Config, MaskScore};
pub use decoder::{CrossAttentionDecoder, DecoderBlock, QueryEmbedding, ReconstructionHead};
pub use device::{default_dtype, device, dtype};
pub use encoder::{Encoder, EncoderBlock, PatchEmbedding, ScaleEmbedding};
pub use error::{Error, Result};
pub use flops::{decoder_flops, encoder_flops, forward_flops, train_step_flops};
pub use fsq::Fsq;
pub use layers::{Attention, LayerNorm, Mlp, MASK_LOGIT};
pub use tokenizer::{Encoded, HiddenPatches, LossOutput, Tokenizer};
pub use wavelength::{PatchFeatures, WavelengthEncoding, WavelengthGrid};
