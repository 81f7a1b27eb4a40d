//! The frozen part of the encoder for `unfreeze_last = K > 0`: hidden
//! states after block N−K, computed once and cached.
//!
//! The cache is an embeddings file ([`spectok_io::embeddings`]) whose
//! token datasets hold hidden states instead of final tokens: per
//! spectrum, `scale_token` is the scale token's row and `tokens` the rows
//! of the valid patches (wavelength order, as for tokens) of the encoder's
//! sequence after its first N−K blocks, before the final LayerNorm;
//! `embedding` is the frozen encoder's pooled embedding (the baselines use
//! it). Padding, invalid patches and other spectra never reach a valid
//! row, so the remaining blocks run on these rows alone give the same
//! tokens as the whole encoder. The file lives under its own name
//! ([`hidden_cache_path`]: the block number is part of the name and of
//! the key), so it never mixes with a cache of final tokens.
//!
//! [`load_samples`](super::load_samples) reads it like any embeddings
//! file, with the same `max_tokens` rule as for final tokens: the scale
//! row is kept and longer sequences of patch rows are averaged in groups
//! of consecutive rows, so the fine-tuned blocks attend over at most
//! `max_tokens` rows.
//!
//! Inputs are read, prepared with the run's own preparation, length
//! bucketed and batched as by [`crate::embed::embed`] (on one thread);
//! the rows follow the inputs' order, and every spectrum that cannot be
//! read, prepared or encoded is written to the file's `failed` group and
//! reported to the observer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use spectok_data::{plan_batches, prepare, try_collate, BatchSize, PreparedSpectrum};
use spectok_io::embeddings::{
    EmbeddingRecord, EmbeddingsFile, EmbeddingsMeta, EmbeddingsWriter, Failure, FailureStage,
    ShardPart, Tokens,
};
use spectok_io::{count_unit, plan_inputs, read_unit};

use super::data::io_err;
use super::hidden_cache_path;
use crate::embed::{EmbedModel, EmbedObserver, EmbedOptions, EmbedProgress, EmbedStart};
use crate::error::{Error, Result};

/// The hidden states after block `upto` of `inputs` under `m`: read from
/// the cache in `cache_dir` when present and made by the same checkpoint,
/// else computed once ([`embed_hidden`]) and stored. Returns the file and
/// whether it was reused.
pub fn cached_hidden_states(
    m: &EmbedModel,
    inputs: &[String],
    cache_dir: &Path,
    upto: usize,
    opts: &EmbedOptions,
    observer: &mut dyn EmbedObserver,
) -> Result<(PathBuf, bool)> {
    let path = hidden_cache_path(m, inputs, cache_dir, upto);
    if path.is_file() {
        if let Ok(f) = EmbeddingsFile::open(&path) {
            if f.meta().run.checkpoint_sha256 == m.sha256
                && f.meta().tokens
                && f.meta().dim == m.dim()
            {
                return Ok((path, true));
            }
        }
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::file(cache_dir, e))?;
    embed_hidden(m, inputs, &path, upto, opts, observer)?;
    Ok((path, false))
}

/// A spectrum of a pool: prepared, or lost with the reason.
enum Slot {
    Ready(Box<PreparedSpectrum>),
    Failed(Failure),
}

/// Running counts for the observer.
struct Counts {
    start: Instant,
    done: u64,
    failed: u64,
    expected: Option<u64>,
}

impl Counts {
    fn progress(&self) -> EmbedProgress {
        let elapsed_s = self.start.elapsed().as_secs_f64();
        EmbedProgress {
            done: self.done,
            failed: self.failed,
            expected: self.expected,
            elapsed_s,
            spectra_per_s: self.done as f64 / elapsed_s.max(1e-9),
        }
    }
}

/// Writes the hidden states after encoder block `upto` (`0 ≤ upto ≤ N`)
/// of `inputs` under `m` to the embeddings file `output` (see the module
/// docs), replacing it. Uses `opts.format`, `batch_size`, `max_tokens`
/// and `pool_size`. Returns the number of spectra written.
pub fn embed_hidden(
    m: &EmbedModel,
    inputs: &[String],
    output: &Path,
    upto: usize,
    opts: &EmbedOptions,
    observer: &mut dyn EmbedObserver,
) -> Result<usize> {
    let n = m.model.config().encoder_layers;
    if upto > n {
        return Err(Error::config(
            "unfreeze_last",
            format!("block {upto} is beyond the tokenizer's {n} encoder blocks"),
        ));
    }
    for (field, v) in [
        ("batch_size", opts.batch_size),
        ("pool_size", opts.pool_size),
    ] {
        if v == 0 {
            return Err(Error::config(field, "must be at least 1"));
        }
    }
    let size = match opts.max_tokens {
        Some(0) => return Err(Error::config("max_tokens", "must be at least 1")),
        Some(max_tokens) => BatchSize::Tokens {
            max_tokens,
            max_spectra: opts.batch_size,
        },
        None => BatchSize::Fixed {
            spectra: opts.batch_size,
        },
    };
    let meta = EmbeddingsMeta {
        run: m.run_info(inputs),
        dim: m.dim(),
        tokens: true,
        token_ids: false,
        part: ShardPart::WHOLE,
    };
    let mut writer = EmbeddingsWriter::create(output, &meta, true).map_err(io_err)?;
    let plan = plan_inputs(inputs, opts.format);
    let expected = (plan.units.len() <= crate::embed::COUNT_LIMIT).then(|| {
        plan.units
            .iter()
            .map(|u| count_unit(u).unwrap_or(0).max(1) as u64)
            .sum()
    });
    observer.on_start(&EmbedStart {
        part: ShardPart::WHOLE,
        planned_units: plan.units.len(),
        units: plan.units.len(),
        expected,
        input_problems: plan.problems.len(),
    });
    let mut counts = Counts {
        start: Instant::now(),
        done: 0,
        failed: 0,
        expected,
    };
    for e in &plan.problems {
        let f = Failure::from_error(FailureStage::Input, e);
        counts.failed += 1;
        observer.on_failure(&f);
        writer.fail(&f).map_err(io_err)?;
    }
    let mut pool: Vec<Slot> = Vec::new();
    let mut ready = 0usize;
    for unit in &plan.units {
        let stream = match read_unit(unit) {
            Ok(s) => s,
            Err(e) => {
                pool.push(Slot::Failed(Failure::from_error(FailureStage::Open, &e)));
                continue;
            }
        };
        for item in stream {
            let slot = match item {
                Err(e) => Slot::Failed(Failure::from_error(FailureStage::Read, &e)),
                Ok(s) => match prepare(&s, &m.prepare) {
                    Ok(p) => {
                        ready += 1;
                        Slot::Ready(Box::new(p))
                    }
                    Err(e) => {
                        let reason = match e.reject_reason() {
                            Some(r) => format!("rejected: {r}"),
                            None => e.to_string(),
                        };
                        Slot::Failed(Failure::of_spectrum(
                            FailureStage::Prepare,
                            &s.id,
                            &s.source,
                            reason,
                        ))
                    }
                },
            };
            pool.push(slot);
            if ready >= opts.pool_size {
                let full = std::mem::take(&mut pool);
                flush(m, upto, size, full, &mut writer, observer, &mut counts)?;
                ready = 0;
            }
        }
    }
    flush(m, upto, size, pool, &mut writer, observer, &mut counts)?;
    writer.finish().map_err(io_err)
}

/// Encodes a pool's prepared spectra in length-bucketed batches and
/// writes every slot's record or failure, in pool order.
fn flush(
    m: &EmbedModel,
    upto: usize,
    size: BatchSize,
    pool: Vec<Slot>,
    writer: &mut EmbeddingsWriter,
    observer: &mut dyn EmbedObserver,
    counts: &mut Counts,
) -> Result<()> {
    let mut out: Vec<Option<std::result::Result<EmbeddingRecord, Failure>>> = Vec::new();
    let mut preps: Vec<Option<PreparedSpectrum>> = Vec::new();
    let mut at: Vec<usize> = Vec::new();
    for slot in pool {
        match slot {
            Slot::Ready(p) => {
                at.push(out.len());
                preps.push(Some(*p));
                out.push(None);
            }
            Slot::Failed(f) => out.push(Some(Err(f))),
        }
    }
    let lengths: Vec<usize> = preps
        .iter()
        .map(|p| p.as_ref().map_or(0, PreparedSpectrum::n_patches))
        .collect();
    let order: Vec<usize> = (0..preps.len()).collect();
    for idx in plan_batches(&lengths, &order, size, true) {
        let items: Vec<(usize, PreparedSpectrum)> = idx
            .iter()
            .filter_map(|&i| Some((*at.get(i)?, preps.get_mut(i)?.take()?)))
            .collect();
        if items.is_empty() {
            continue;
        }
        let (slots, batch): (Vec<usize>, Vec<PreparedSpectrum>) = items.into_iter().unzip();
        for (slot, r) in slots.into_iter().zip(encode_batch(m, upto, batch)?) {
            if r.is_ok() {
                counts.done += 1;
            }
            if let Some(o) = out.get_mut(slot) {
                *o = Some(r);
            }
        }
        observer.on_progress(&counts.progress());
    }
    for r in out.into_iter().flatten() {
        match r {
            Ok(rec) => writer.write(&rec).map_err(io_err)?,
            Err(f) => {
                counts.failed += 1;
                observer.on_failure(&f);
                writer.fail(&f).map_err(io_err)?;
            }
        }
    }
    observer.on_progress(&counts.progress());
    Ok(())
}

/// The records (hidden states after block `upto`, the frozen pooled
/// embedding) of one batch, or a failure for a spectrum whose values are
/// not finite.
fn encode_batch(
    m: &EmbedModel,
    upto: usize,
    preps: Vec<PreparedSpectrum>,
) -> Result<Vec<std::result::Result<EmbeddingRecord, Failure>>> {
    let batch = try_collate(&preps, 0)?;
    let state = m.model.encode_until(&batch, upto, false)?;
    let enc = m.model.encode_from(&state, false)?;
    let pooled = enc.pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let hidden = state.hidden.to_dtype(DType::F32)?.to_vec3::<f32>()?;
    let mask = state.token_mask.to_vec2::<u8>()?;
    let d = m.dim();
    let t_max = batch.max_patches;
    let mut out = Vec::with_capacity(preps.len());
    for (b, prep) in preps.into_iter().enumerate() {
        let embedding = pooled.get(b).cloned().unwrap_or_default();
        let rows = hidden.get(b);
        let mut t = Tokens {
            scale_token: rows.and_then(|r| r.first()).cloned().unwrap_or_default(),
            values: Vec::new(),
            center: Vec::new(),
            ids: None,
        };
        for i in 0..prep.n_patches().min(t_max) {
            if mask.get(b).and_then(|m| m.get(i)).copied() != Some(1) {
                continue;
            }
            let v = rows
                .and_then(|r| r.get(1 + i))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            t.values.extend_from_slice(v);
            t.center
                .push(prep.patch_center.get(i).copied().unwrap_or(f64::NAN));
        }
        let finite = embedding.len() == d
            && t.scale_token.len() == d
            && t.values.len() == t.center.len() * d
            && embedding
                .iter()
                .chain(&t.scale_token)
                .chain(&t.values)
                .all(|v| v.is_finite());
        out.push(if finite {
            Ok(EmbeddingRecord {
                patches: prep.n_patches() as u32,
                valid_patches: prep.n_valid_patches() as u32,
                object_id: prep.id,
                survey: prep.survey,
                source: prep.source,
                labels: prep.labels,
                scale: prep.scale,
                embedding,
                tokens: Some(t),
            })
        } else {
            Err(Failure::of_spectrum(
                FailureStage::Encode,
                &prep.id,
                &prep.source,
                "the model gave a non-finite hidden state or embedding (NaN or infinity)",
            ))
        });
    }
    Ok(out)
}
