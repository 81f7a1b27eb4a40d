//! Validation: the held-out side of the id-hash split, scored per survey,
//! and example reconstructions for the plots.
//!
//! The validation set is read once at the start of a run: each source's
//! units are read in order and the spectra whose object id falls on the
//! validation side are prepared and kept, up to `data.val_max_spectra` per
//! source. Validation batches hold one survey each. When masked modelling
//! is on, the hidden patches of each validation batch are drawn from a
//! fixed seed, so successive evaluations score the same task.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use spectok_data::{
    rng, split_of, try_collate, PreparedSpectrum, SourceSpec, Split, Transform, PAD_PIXEL,
};
use spectok_io::{Medium, Survey};
use spectok_model::{HiddenPatches, Tokenizer};

use crate::config::TrainConfig;
use crate::error::{Error, Result};

/// File name of the example reconstructions in a run directory.
pub const RECONSTRUCTIONS_FILE: &str = "reconstructions.json";

/// Tag of the validation masking stream.
const TAG_VAL: u64 = 0x7661_6c69; // "vali"

/// Validation loss of one survey.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SurveyLoss {
    /// Mean loss per scored pixel.
    pub loss: f64,
    /// Spectra scored.
    pub spectra: usize,
    /// Pixels scored.
    pub pixels: usize,
}

/// One evaluation of the validation set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Steps completed when it was taken.
    pub step: u64,
    /// Loss per survey (by survey name).
    pub per_survey: BTreeMap<String, SurveyLoss>,
    /// Mean of the per-survey losses (each survey counts equally).
    pub mean: f64,
    /// Whether this is the best mean so far in the run.
    pub best: bool,
}

/// The held-out spectra, grouped by survey.
pub struct ValSet {
    /// Per survey, spectra sorted by patch count (for compact batches).
    by_survey: BTreeMap<Survey, Vec<PreparedSpectrum>>,
    /// Per survey, the first validation spectra met, for the plots.
    examples: BTreeMap<Survey, Vec<PreparedSpectrum>>,
    batch_size: usize,
    seed: u64,
}

/// What reading the validation set met besides the spectra it kept.
#[derive(Clone, Debug, Default)]
pub struct ValReadNotes {
    /// Problems (unreadable units or spectra, rejections), one line each.
    pub problems: Vec<String>,
}

/// Most problems kept while reading the validation set.
const MAX_NOTES: usize = 20;

impl ValSet {
    /// Reads the validation side of `sources` as `cfg.data` says.
    pub fn read(sources: &[SourceSpec], cfg: &TrainConfig) -> (ValSet, ValReadNotes) {
        let d = &cfg.data;
        let prepare = &d.prepare;
        let max_per_source = d.val_max_spectra;
        let examples_per_survey = d.examples_per_survey;
        let mut notes = ValReadNotes::default();
        let mut note = |msg: String| {
            if notes.problems.len() < MAX_NOTES {
                notes.problems.push(msg);
            }
        };
        let mut by_survey: BTreeMap<Survey, Vec<PreparedSpectrum>> = BTreeMap::new();
        let mut examples: BTreeMap<Survey, Vec<PreparedSpectrum>> = BTreeMap::new();
        for spec in sources {
            let mut kept = 0usize;
            'units: for unit in 0..spec.source.n_units() {
                let stream = match spec.source.open_unit(unit) {
                    Ok(s) => s,
                    Err(e) => {
                        note(format!("validation, source {}: {e}", spec.name));
                        continue;
                    }
                };
                for item in stream {
                    let sp = match item {
                        Ok(sp) => sp,
                        Err(e) => {
                            note(format!("validation, source {}: {e}", spec.name));
                            continue;
                        }
                    };
                    if split_of(&sp.id, d.val_fraction, d.split_seed) != Split::Validation {
                        continue;
                    }
                    match spectok_data::prepare(&sp, prepare) {
                        Ok(p) => {
                            let ex = examples.entry(p.survey).or_default();
                            if ex.len() < examples_per_survey {
                                ex.push(p.clone());
                            }
                            by_survey.entry(p.survey).or_default().push(p);
                            kept += 1;
                            if kept >= max_per_source {
                                break 'units;
                            }
                        }
                        Err(e) => note(format!("validation: {e}")),
                    }
                }
            }
        }
        for v in by_survey.values_mut() {
            v.sort_by(|a, b| a.n_patches().cmp(&b.n_patches()).then(a.id.cmp(&b.id)));
        }
        (
            ValSet {
                by_survey,
                examples,
                batch_size: d.eval_batch_size.max(1),
                seed: cfg.seed,
            },
            notes,
        )
    }

    /// Whether no validation spectrum was found.
    pub fn is_empty(&self) -> bool {
        self.by_survey.is_empty()
    }

    /// Number of validation spectra per survey name.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.by_survey
            .iter()
            .map(|(s, v)| (s.name().to_string(), v.len()))
            .collect()
    }

    fn hidden_for(
        &self,
        model: &Tokenizer,
        batch: &spectok_data::Batch,
        survey: Survey,
        index: u64,
    ) -> Option<HiddenPatches> {
        let ratio = model.config().mask_ratio;
        (ratio > 0.0).then(|| {
            let mut r = rng::rng_from_key(rng::key(&[
                self.seed,
                TAG_VAL,
                rng::fnv1a64(survey.name().as_bytes()),
                index,
            ]));
            HiddenPatches::sample(batch, ratio, &mut r)
        })
    }

    /// Scores the model on every validation spectrum. `best` of the
    /// report is left false for the caller to set.
    pub fn evaluate(&self, model: &Tokenizer, step: u64) -> Result<EvalReport> {
        let mut per_survey = BTreeMap::new();
        for (survey, spectra) in &self.by_survey {
            let (mut sum, mut pixels) = (0f64, 0usize);
            for (i, chunk) in spectra.chunks(self.batch_size).enumerate() {
                let batch = try_collate(chunk, 0)?;
                let hidden = self.hidden_for(model, &batch, *survey, i as u64);
                let out = model.loss(&batch, hidden.as_ref(), false)?;
                let loss = out.loss.to_scalar::<f32>()? as f64;
                sum += loss * out.scored_pixels as f64;
                pixels += out.scored_pixels;
            }
            let loss = if pixels > 0 { sum / pixels as f64 } else { 0.0 };
            per_survey.insert(
                survey.name().to_string(),
                SurveyLoss {
                    loss,
                    spectra: spectra.len(),
                    pixels,
                },
            );
        }
        let mean = if per_survey.is_empty() {
            f64::NAN
        } else {
            per_survey.values().map(|s| s.loss).sum::<f64>() / per_survey.len() as f64
        };
        Ok(EvalReport {
            step,
            per_survey,
            mean,
            best: false,
        })
    }

    /// Reconstructs the example spectra of every survey.
    pub fn reconstruct_examples(
        &self,
        model: &Tokenizer,
        step: u64,
        transform: Transform,
    ) -> Result<Reconstructions> {
        let mut examples = Vec::new();
        for (survey, spectra) in &self.examples {
            if spectra.is_empty() {
                continue;
            }
            let batch = try_collate(spectra, 0)?;
            let hidden = self.hidden_for(model, &batch, *survey, u64::MAX);
            let out = model.loss(&batch, hidden.as_ref(), false)?;
            let recon = out.reconstruction.flatten_all()?.to_vec1::<f32>()?;
            let (t, p) = (batch.max_patches, batch.patch_size);
            for (s, sp) in spectra.iter().enumerate() {
                examples.push(Example::from_prepared(
                    sp,
                    &recon,
                    s * t * p,
                    hidden.as_ref().map(|h| &h.hidden[s * t..(s + 1) * t]),
                ));
            }
        }
        Ok(Reconstructions {
            step,
            transform,
            examples,
        })
    }
}

/// One example spectrum and its reconstruction, pixel by pixel on the
/// native grid (normalised units: flux and σ over the spectrum's scale,
/// after the configured transform).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub survey: Survey,
    pub medium: Medium,
    /// `log10` of the flux scale.
    pub log_scale: f32,
    /// Wavelength, Å, in input pixel order (arms one after the other).
    pub wavelength: Vec<f64>,
    /// Normalised flux (0 at invalid pixels).
    pub flux: Vec<f32>,
    /// Normalised σ (0 at invalid pixels).
    pub sigma: Vec<f32>,
    /// The model's reconstruction.
    pub reconstruction: Vec<f32>,
    /// Whether the pixel is valid (scored by the loss).
    pub valid: Vec<bool>,
    /// Whether the pixel's patch was hidden from the encoder.
    pub hidden: Vec<bool>,
}

impl Example {
    /// Maps a spectrum's slots in a reconstruction (starting at `offset`
    /// of the flattened `(B, T, P)` array) back to its input pixels.
    fn from_prepared(
        sp: &PreparedSpectrum,
        recon: &[f32],
        offset: usize,
        hidden: Option<&[bool]>,
    ) -> Example {
        let p = sp.patch_size;
        let mut ex = Example {
            id: sp.id.clone(),
            survey: sp.survey,
            medium: sp.medium,
            log_scale: sp.log_scale,
            wavelength: Vec::new(),
            flux: Vec::new(),
            sigma: Vec::new(),
            reconstruction: Vec::new(),
            valid: Vec::new(),
            hidden: Vec::new(),
        };
        for (slot, &pix) in sp.pixel_index.iter().enumerate() {
            if pix == PAD_PIXEL {
                continue;
            }
            let finite = |v: f32| if v.is_finite() { v } else { 0.0 };
            let r = recon.get(offset + slot).copied().unwrap_or(0.0);
            ex.wavelength.push(sp.wavelength[slot]);
            ex.flux.push(finite(sp.flux[slot]));
            ex.sigma.push(finite(sp.sigma[slot]));
            ex.reconstruction.push(finite(r));
            ex.valid.push(sp.weight[slot] > 0.0);
            ex.hidden.push(
                hidden
                    .and_then(|h| h.get(slot / p))
                    .copied()
                    .unwrap_or(false),
            );
        }
        ex
    }
}

/// The content of `reconstructions.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reconstructions {
    /// Steps completed when the reconstructions were made.
    pub step: u64,
    /// The transform the flux and σ channels went through.
    pub transform: Transform,
    pub examples: Vec<Example>,
}

impl Reconstructions {
    /// Writes `path` atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self).map_err(|e| Error::file(path, e))?;
        crate::error::write_atomic(path, text.as_bytes())
    }

    /// Reads a file written by [`Reconstructions::write`].
    pub fn read(path: &Path) -> Result<Reconstructions> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::file(path, e))
    }
}
