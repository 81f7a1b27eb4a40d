//! The fine-tuned end of the encoder (`unfreeze_last = K > 0`): trainable
//! copies of the last K blocks and the final LayerNorm of a checkpoint,
//! with its quantiser (frozen) when the model has one, finishing the
//! encoding from the cached hidden states after block N−K
//! ([`super::hidden`]) exactly as the tokenizer does
//! ([`Tokenizer::finish_with`]).
//!
//! Their weights live in the head's [`VarMap`] under [`TAIL_PREFIX`], with
//! the checkpoint's names after it (`encoder_tail.blocks.{i}.…` for
//! `i ≥ N−K`, `encoder_tail.norm.…`, `encoder_tail.fsq.…`), so
//! `head.safetensors` holds them with the head.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use spectok_model::encoder::EncoderTail;
use spectok_model::tokenizer::EncoderState;
use spectok_model::{Config, Encoded, Fsq, Tokenizer, CONFIG_FILE, WEIGHTS_FILE};

use super::check_unfreeze;
use super::data::Sample;
use crate::embed::sha256_file;
use crate::error::{Error, Result};

/// Prefix of the fine-tuned encoder weights in a head's weights.
pub const TAIL_PREFIX: &str = "encoder_tail";

/// The last K encoder blocks, the final LayerNorm and the quantiser, run
/// on cached hidden states.
pub struct TunedTail {
    dim: usize,
    tail: EncoderTail,
    fsq: Option<Fsq>,
}

impl TunedTail {
    /// The last `k` blocks of an encoder of config `model`, its final norm
    /// and (when `model` has one) its quantiser, with weights at
    /// `vb/encoder_tail/…`.
    pub fn new(model: &Config, k: usize, vb: VarBuilder) -> Result<TunedTail> {
        check_unfreeze(k, model.encoder_layers)?;
        let vb = vb.pp(TAIL_PREFIX);
        let tail = EncoderTail::new(model, model.encoder_layers - k, vb.clone())?;
        let fsq = if model.fsq_enabled() {
            Some(Fsq::new(model, vb.pp("fsq"))?)
        } else {
            None
        };
        Ok(TunedTail {
            dim: model.d_model,
            tail,
            fsq,
        })
    }

    /// The first fine-tuned block, N−K: the cached hidden states are
    /// those after it.
    pub fn from_block(&self) -> usize {
        self.tail.from_block()
    }

    /// Encodes samples whose `tokens` are cached hidden states (the scale
    /// token's row, then one row per kept patch): the remaining blocks,
    /// final norm, quantiser and pooling. `train` turns dropout and the
    /// differentiable LayerNorm on.
    pub fn encode(&self, sel: &[&Sample], device: &Device, train: bool) -> Result<Encoded> {
        let d = self.dim;
        let mut n_rows = Vec::with_capacity(sel.len());
        for s in sel {
            let n = s.tokens.len() / d.max(1);
            if n == 0 || s.tokens.len() != n * d {
                return Err(Error::config(
                    "unfreeze_last",
                    format!(
                        "spectrum {} ({}) has {} cached values, not rows of the encoder width {d}: the fine-tuned blocks need the hidden states cached for them",
                        s.object_id,
                        s.source,
                        s.tokens.len()
                    ),
                ));
            }
            n_rows.push(n);
        }
        // At least one patch row, so the token tensors are never empty.
        let rows = n_rows.iter().copied().max().unwrap_or(1).max(2);
        let b = sel.len();
        let mut hidden = vec![0f32; b * rows * d];
        let mut key_mask = vec![0u8; b * rows];
        for (i, (s, n)) in sel.iter().zip(&n_rows).enumerate() {
            hidden[i * rows * d..(i * rows + n) * d].copy_from_slice(&s.tokens);
            key_mask[i * rows..i * rows + n].fill(1);
        }
        let key_mask = Tensor::from_vec(key_mask, (b, rows), device)?;
        let state = EncoderState {
            hidden: Tensor::from_vec(hidden, (b, rows, d), device)?,
            token_mask: key_mask.narrow(1, 1, rows - 1)?.contiguous()?,
            key_mask,
            blocks: self.tail.from_block(),
        };
        Ok(Tokenizer::finish_with(
            &state,
            &self.tail,
            self.fsq.as_ref(),
            train,
        )?)
    }
}

/// Whether a weight of a head's [`VarMap`] is one the fine-tuning
/// optimises at the reduced rate: the copied encoder blocks and final
/// norm (the quantiser copy stays frozen).
pub fn is_tuned_weight(name: &str) -> bool {
    let blocks = format!("{TAIL_PREFIX}.blocks.");
    let norm = format!("{TAIL_PREFIX}.norm.");
    name.starts_with(&blocks) || name.starts_with(&norm)
}

/// Whether a weight of a head's [`VarMap`] belongs to the encoder copy.
pub fn is_tail_weight(name: &str) -> bool {
    name.starts_with(&format!("{TAIL_PREFIX}."))
}

/// Copies the last `k` encoder blocks, the final norm and the quantiser
/// (when the model has one) of the checkpoint `checkpoint_dir` into
/// `varmap` as f32 variables named `encoder_tail.…`, after checking that
/// its weights have SHA-256 `sha256` (the checkpoint the hidden states
/// were computed with), and builds the [`TunedTail`] on them. Returns it
/// with the checkpoint's model config.
pub fn load_checkpoint_tail(
    varmap: &VarMap,
    checkpoint_dir: &Path,
    sha256: &str,
    k: usize,
    device: &Device,
) -> Result<(TunedTail, Config)> {
    let config_path = checkpoint_dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::file(&config_path, e))?;
    let model = Config::from_json(&text).map_err(|e| Error::checkpoint(&config_path, e))?;
    check_unfreeze(k, model.encoder_layers)?;
    let weights = checkpoint_dir.join(WEIGHTS_FILE);
    let sha = sha256_file(&weights)?;
    if sha != sha256 {
        return Err(Error::checkpoint(
            &weights,
            format!("sha256 {sha} differs from the embeddings' tokenizer (sha256 {sha256})"),
        ));
    }
    // Read on the CPU; only the copied tensors go to `device`.
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| Error::checkpoint(&weights, e))?;
    let first = model.encoder_layers - k;
    let wanted = |name: &str| -> Option<String> {
        if let Some(rest) = name.strip_prefix("encoder.blocks.") {
            let (i, _) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
            return (i >= first).then(|| format!("{TAIL_PREFIX}.{}", &name["encoder.".len()..]));
        }
        if name.starts_with("encoder.norm.") {
            return Some(format!("{TAIL_PREFIX}.{}", &name["encoder.".len()..]));
        }
        if name.starts_with("fsq.") && model.fsq_enabled() {
            return Some(format!("{TAIL_PREFIX}.{name}"));
        }
        None
    };
    let mut copied = HashSet::new();
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| Error::checkpoint(&weights, "weights lock poisoned"))?;
        for (name, t) in &tensors {
            if let Some(to) = wanted(name) {
                let var = Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?;
                data.insert(to.clone(), var);
                copied.insert(to);
            }
        }
    }
    let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
    let tail = TunedTail::new(&model, k, vb).map_err(|e| Error::checkpoint(&weights, e))?;
    // Every weight the tail uses must come from the checkpoint.
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::checkpoint(&weights, "weights lock poisoned"))?;
    let mut missing: Vec<&String> = data
        .keys()
        .filter(|n| is_tail_weight(n) && !copied.contains(*n))
        .collect();
    missing.sort();
    if let Some(name) = missing.first() {
        let rest = name
            .strip_prefix(TAIL_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(name);
        let original = if rest.starts_with("fsq.") {
            rest.to_string()
        } else {
            format!("encoder.{rest}")
        };
        return Err(Error::checkpoint(
            &weights,
            format!("missing tensor `{original}`"),
        ));
    }
    Ok((tail, model))
}
