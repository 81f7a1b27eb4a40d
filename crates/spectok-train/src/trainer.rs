//! The pretraining loop.
//!
//! Each step draws a batch from the [`spectok_data::Loader`] (training
//! side of the split, sources mixed by weight), computes the tokenizer's
//! training loss (masked modelling drawn from a generator seeded by
//! `(seed, step)`), back-propagates, clips and applies AdamW at the
//! schedule's learning rate. Every `log_interval` steps a train record
//! goes to `metrics.jsonl`; every `eval_interval` steps (and at the start
//! and the end) the validation set is scored per survey, example
//! reconstructions are written and a new best mean loss is saved as the
//! `best` checkpoint; every `checkpoint_interval` steps (and at the end) a
//! step checkpoint is written and the oldest beyond `keep_last` removed.
//!
//! Exact resumption: the weights and AdamW moments are saved bit for bit,
//! the schedule and the masking generator are functions of the step, and
//! the loader's position is its serialisable state, so a run stopped at
//! step k and resumed yields the same losses as one that never stopped
//! (on CPU, with `model.dropout` 0: candle's dropout draws from an
//! unseedable generator).
//!
//! Stopping: when the `stop` flag is raised (the binary raises it on
//! Ctrl-C) the loop finishes the current step, writes a checkpoint and
//! returns [`Outcome::Interrupted`]. A non-finite loss or gradient norm
//! stops the run with [`Error::NonFinite`] naming the step and the batch's
//! spectrum ids, before the update is applied and without writing a
//! checkpoint, so the last checkpoint on disk is the last good state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Var};
use candle_nn::VarMap;
use spectok_data::{rng, FileSource, Loader, LoaderState, LoaderStats, SourceSpec, Split};
use spectok_model::Tokenizer;

use crate::checkpoint::{
    resolve_resume, step_name, Checkpoints, LossScale, TrainState, BEST, OPTIMIZER_FILE,
    TRAIN_CONFIG_FILE,
};
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::eval::{EvalReport, ValSet, RECONSTRUCTIONS_FILE};
use crate::metrics::{read_metrics, MetricsLog, Record, METRICS_FILE};
use crate::optim::AdamW;
use crate::schedule::Schedule;

/// File name of the resolved config in a run directory.
pub const RUN_CONFIG_FILE: &str = "config.json";

/// Tag of the training masking stream.
const TAG_TRAIN: u64 = 0x7472_6169; // "trai"

/// What a run is about to do.
#[derive(Clone, Debug)]
pub struct StartEvent {
    pub out_dir: PathBuf,
    /// Steps already done (0, or the checkpoint's step when resuming).
    pub start_step: u64,
    pub total_steps: u64,
    /// The checkpoint resumed from.
    pub resumed_from: Option<PathBuf>,
    /// Trainable scalars of the model.
    pub parameters: usize,
    /// Source name and number of input units (files, shards).
    pub sources: Vec<(String, usize)>,
    /// Validation spectra per survey.
    pub val_spectra: BTreeMap<String, usize>,
}

/// One completed optimiser step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEvent {
    /// Steps completed (1 after the first).
    pub step: u64,
    pub total_steps: u64,
    /// The step's training loss.
    pub loss: f64,
    /// Learning rate the step used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Spectra and real patches in the batch.
    pub batch_spectra: usize,
    pub batch_tokens: usize,
    /// Smoothed throughput.
    pub spectra_per_s: f64,
    pub tokens_per_s: f64,
    /// Training wall time so far, seconds (across resumes).
    pub elapsed_s: f64,
}

/// Callbacks of a run; every method has an empty default. The binary
/// renders them (progress bar, messages); tests record them.
pub trait Observer {
    /// The run is set up and about to take its first step.
    fn on_start(&mut self, _ev: &StartEvent) {}
    /// A step was taken.
    fn on_step(&mut self, _ev: &StepEvent) {}
    /// Validation is starting at `step`.
    fn on_eval_start(&mut self, _step: u64) {}
    /// Validation finished.
    fn on_eval(&mut self, _report: &EvalReport) {}
    /// A checkpoint was written.
    fn on_checkpoint(&mut self, _step: u64, _path: &Path) {}
    /// Something worth telling (skipped inputs, rejected spectra).
    fn on_note(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
impl Observer for () {}

/// How a run ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All configured steps were taken.
    Finished,
    /// The stop flag was raised; a checkpoint of the current step was
    /// written.
    Interrupted,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub outcome: Outcome,
    /// Steps completed.
    pub step: u64,
    pub out_dir: PathBuf,
    /// The first evaluation of the run (at step 0; for a resumed run, the
    /// first one recorded in its metrics).
    pub first_eval: Option<EvalReport>,
    /// The last evaluation.
    pub last_eval: Option<EvalReport>,
    /// Best mean validation loss and its step.
    pub best: Option<(u64, f64)>,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// Loader counters (spectra delivered, rejected, problems).
    pub loader: LoaderStats,
}

/// The weighted file sources of a config. Inputs that cannot be planned
/// are returned as messages; a source with no readable input is an error
/// naming it.
pub fn file_sources(cfg: &TrainConfig) -> Result<(Vec<SourceSpec>, Vec<String>)> {
    if cfg.data.sources.is_empty() {
        return Err(Error::config("data.sources", "no source given"));
    }
    let mut specs = Vec::new();
    let mut problems = Vec::new();
    for (i, s) in cfg.data.sources.iter().enumerate() {
        let format = s.format.as_deref().and_then(spectok_io::Format::from_name);
        let (source, errs) = FileSource::from_inputs(&s.paths, format);
        problems.extend(errs.iter().map(|e| format!("source {}: {e}", s.name)));
        if source.units().is_empty() {
            return Err(Error::config(
                format!("data.sources[{i}].paths"),
                format!(
                    "source `{}`: no readable input in {:?}{}",
                    s.name,
                    s.paths,
                    errs.first().map(|e| format!(" ({e})")).unwrap_or_default()
                ),
            ));
        }
        specs.push(SourceSpec::new(s.name.clone(), s.weight, Arc::new(source)));
    }
    Ok((specs, problems))
}

/// Names of a var map's variables with the variables, sorted by name.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The first field at which two JSON values differ, as a path.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, &p),
                    _ => Some(p),
                }
            })
        }
        _ if a == b => None,
        _ => Some(path.to_string()),
    }
}

/// A pretraining run, set up and ready to [`Trainer::run`].
pub struct Trainer {
    cfg: TrainConfig,
    model: Tokenizer,
    varmap: VarMap,
    opt: AdamW,
    schedule: Schedule,
    sources: Vec<SourceSpec>,
    loader_state: Option<LoaderState>,
    val: ValSet,
    val_notes: Vec<String>,
    checkpoints: Checkpoints,
    state: TrainState,
    resumed_from: Option<PathBuf>,
    first_eval: Option<EvalReport>,
}

impl Trainer {
    /// Sets up a run of `cfg` on its file sources (`cfg.data.sources`),
    /// fresh or resumed from `resume` (a checkpoint directory or a run
    /// directory, whose newest checkpoint is used).
    pub fn new(cfg: TrainConfig, resume: Option<&Path>) -> Result<Self> {
        let (sources, problems) = file_sources(&cfg)?;
        let mut t = Self::with_sources(cfg, sources, resume)?;
        t.val_notes.splice(0..0, problems);
        Ok(t)
    }

    /// Sets up a run on the given sources (any
    /// [`spectok_data::SpectrumSource`]s); `cfg.data.sources` is not read.
    pub fn with_sources(
        cfg: TrainConfig,
        sources: Vec<SourceSpec>,
        resume: Option<&Path>,
    ) -> Result<Self> {
        cfg.validate_settings()?;
        let device = spectok_model::device(&cfg.device)
            .map_err(|e| Error::config("device", e.to_string()))?;
        let dtype =
            spectok_model::dtype(&cfg.dtype).map_err(|e| Error::config("dtype", e.to_string()))?;
        let out_dir = cfg.out_dir.clone();
        std::fs::create_dir_all(&out_dir).map_err(|e| Error::file(&out_dir, e))?;
        let resume_dir = resume.map(resolve_resume).transpose()?;
        let checkpoints = Checkpoints::open(&out_dir)?;

        let (model, varmap, state) = match &resume_dir {
            Some(dir) => {
                let (model, varmap) = Tokenizer::load(dir, &device, DType::F32)?;
                if model.config() != &cfg.model {
                    let a = serde_json::to_value(model.config()).unwrap_or_default();
                    let b = serde_json::to_value(&cfg.model).unwrap_or_default();
                    let field = first_difference(&a, &b, "model").unwrap_or_else(|| "model".into());
                    return Err(Error::checkpoint(
                        dir,
                        format!("its model differs from the config's at `{field}`"),
                    ));
                }
                let state = TrainState::read(dir)?;
                (model, varmap, state)
            }
            None => {
                let (model, varmap) = Tokenizer::init(&cfg.model, &device, DType::F32, cfg.seed)?;
                let state = TrainState {
                    step: 0,
                    seed: cfg.seed,
                    loader: serde_json::Value::Null,
                    lr: 0.0,
                    best_val_loss: None,
                    best_step: None,
                    spectra_seen: 0,
                    tokens_seen: 0,
                    elapsed_s: 0.0,
                    loss_scale: None,
                };
                (model, varmap, state)
            }
        };
        // Weights and optimiser state are f32; `dtype` is the compute
        // dtype (bf16/f16: mixed precision, f16 with loss scaling).
        let model = model.with_compute_dtype(dtype);
        let mut state = state;
        if dtype == DType::F16 && state.loss_scale.is_none() {
            state.loss_scale = Some(LossScale::new());
        }
        let mut opt = AdamW::new(named_vars(&varmap), cfg.optim.clone())?;
        let loader_state = match &resume_dir {
            Some(dir) => {
                opt.load(&dir.join(OPTIMIZER_FILE))?;
                let ls: LoaderState = serde_json::from_value(state.loader.clone())
                    .map_err(|e| Error::checkpoint(dir, format!("loader state: {e}")))?;
                Some(ls)
            }
            None => None,
        };
        if state.seed != cfg.seed {
            return Err(Error::config(
                "seed",
                format!(
                    "{} differs from the checkpoint's seed {} (resuming needs the same seed)",
                    cfg.seed, state.seed
                ),
            ));
        }
        let schedule = Schedule::new(cfg.optim.lr, &cfg.schedule, cfg.steps);
        let (val, notes) = ValSet::read(&sources, &cfg);
        let first_eval = if resume_dir.is_some() {
            first_recorded_eval(&out_dir.join(METRICS_FILE))
        } else {
            None
        };
        Ok(Trainer {
            cfg,
            model,
            varmap,
            opt,
            schedule,
            sources,
            loader_state,
            val,
            val_notes: notes.problems,
            checkpoints,
            state,
            resumed_from: resume_dir,
            first_eval,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &Tokenizer {
        &self.model
    }

    /// Steps completed so far.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// The run's config.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    fn write_checkpoint(&self, name: &str) -> Result<PathBuf> {
        let cfg_json = self.cfg.to_json() + "\n";
        self.checkpoints.write(name, |dir| {
            self.model.save(&self.varmap, dir)?;
            self.opt.save(&dir.join(OPTIMIZER_FILE))?;
            self.state.write(dir)?;
            let p = dir.join(TRAIN_CONFIG_FILE);
            std::fs::write(&p, &cfg_json).map_err(|e| Error::file(&p, e))
        })
    }

    fn evaluate(
        &mut self,
        observer: &mut dyn Observer,
        metrics: &mut MetricsLog,
    ) -> Result<Option<EvalReport>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let step = self.state.step;
        observer.on_eval_start(step);
        let mut report = self.val.evaluate(&self.model, step)?;
        report.best =
            report.mean.is_finite() && self.state.best_val_loss.is_none_or(|b| report.mean < b);
        if report.best {
            self.state.best_val_loss = Some(report.mean);
            self.state.best_step = Some(step);
        }
        let recon =
            self.val
                .reconstruct_examples(&self.model, step, self.cfg.data.prepare.transform)?;
        recon.write(&self.cfg.out_dir.join(RECONSTRUCTIONS_FILE))?;
        metrics.append(&Record::Val {
            step,
            mean: report.mean,
            loss: report
                .per_survey
                .iter()
                .map(|(k, v)| (k.clone(), v.loss))
                .collect(),
            spectra: report
                .per_survey
                .iter()
                .map(|(k, v)| (k.clone(), v.spectra))
                .collect(),
            best: report.best,
        })?;
        observer.on_eval(&report);
        // At step 0 the model is the seeded initialisation: nothing to keep.
        if report.best && step > 0 {
            let path = self.write_checkpoint(BEST)?;
            observer.on_checkpoint(step, &path);
        }
        Ok(Some(report))
    }

    /// Runs until `cfg.steps` steps are done or `stop` is raised.
    pub fn run(&mut self, observer: &mut dyn Observer, stop: &AtomicBool) -> Result<Summary> {
        let out_dir = self.cfg.out_dir.clone();
        let cfg_path = out_dir.join(RUN_CONFIG_FILE);
        std::fs::write(&cfg_path, self.cfg.to_json() + "\n")
            .map_err(|e| Error::file(&cfg_path, e))?;
        let resumed = self.resumed_from.is_some();
        let mut metrics = MetricsLog::open(
            &out_dir.join(METRICS_FILE),
            Some(self.state.step).filter(|_| resumed),
        )?;
        for n in std::mem::take(&mut self.val_notes) {
            observer.on_note(&n);
        }
        if self.val.is_empty() {
            observer.on_note(
                "no validation spectrum found: validation and the best checkpoint are skipped",
            );
        }
        let loader_cfg = self.cfg.loader_config(Split::Train);
        let mut loader = match self.loader_state.take() {
            Some(st) => Loader::resume(self.sources.clone(), loader_cfg, st)?,
            None => Loader::new(self.sources.clone(), loader_cfg)?,
        };
        self.state.loader = serde_json::to_value(loader.state())
            .map_err(|e| Error::file(&out_dir, format!("loader state: {e}")))?;
        let parameters = named_vars(&self.varmap)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum();
        observer.on_start(&StartEvent {
            out_dir: out_dir.clone(),
            start_step: self.state.step,
            total_steps: self.cfg.steps,
            resumed_from: self.resumed_from.clone(),
            parameters,
            sources: self
                .sources
                .iter()
                .map(|s| (s.name.clone(), s.source.n_units()))
                .collect(),
            val_spectra: self.val.counts(),
        });

        let mut last_eval = None;
        if !resumed {
            last_eval = self.evaluate(observer, &mut metrics)?;
            self.first_eval = last_eval.clone();
        }
        let mut last_checkpoint = self.resumed_from.clone();
        let mut last_checkpoint_step = resumed.then_some(self.state.step);
        let mut problems_seen = 0usize;
        let mut told = std::collections::HashSet::new();
        let (mut ema_spectra, mut ema_tokens) = (None::<f64>, None::<f64>);
        let (mut window_sum, mut window_n, mut window_norm) = (0f64, 0u64, 0f64);
        // Steps of the window skipped for an f16 gradient overflow.
        let mut window_skipped = 0u64;
        let mut outcome = Outcome::Finished;
        let mut t_prev = Instant::now();

        while self.state.step < self.cfg.steps {
            if stop.load(Ordering::SeqCst) {
                outcome = Outcome::Interrupted;
                break;
            }
            let Some(batch) = loader.next_batch() else {
                let stats = loader.stats();
                return Err(Error::config(
                    "data.sources",
                    format!(
                        "the loader yielded no training batch (no usable spectrum on the training side){}",
                        stats
                            .problems
                            .first()
                            .map(|p| format!("; first problem: {p}"))
                            .unwrap_or_default()
                    ),
                ));
            };
            let step = self.state.step + 1;
            let lr = self.schedule.lr(step - 1);
            let mut r = rng::rng_from_key(rng::key(&[self.cfg.seed, TAG_TRAIN, step]));
            let out = self.model.training_loss(&batch, &mut r)?;
            let loss = out.loss.to_scalar::<f32>()? as f64;
            let non_finite = |what: &'static str, value: f64| Error::NonFinite {
                what,
                value,
                step,
                ids: batch.ids.clone(),
                last_checkpoint: last_checkpoint.clone(),
            };
            if !loss.is_finite() {
                return Err(non_finite("loss", loss));
            }
            let stats = match self.state.loss_scale.as_mut() {
                None => {
                    let grads = out.loss.backward()?;
                    self.opt.step(&grads, lr)?
                }
                Some(ls) => {
                    let grads = (&out.loss * ls.scale)?.backward()?;
                    let stats = self.opt.step_scaled(&grads, lr, 1.0 / ls.scale)?;
                    if !ls.update(!stats.applied) {
                        return Err(non_finite("gradient norm", stats.grad_norm));
                    }
                    stats
                }
            };
            if !stats.applied && self.state.loss_scale.is_none() {
                return Err(non_finite("gradient norm", stats.grad_norm));
            }

            let now = Instant::now();
            let dt = now.duration_since(t_prev).as_secs_f64().max(1e-9);
            t_prev = now;
            let tokens = batch.real_patches();
            let smooth = |ema: Option<f64>, x: f64| Some(ema.map_or(x, |e| 0.9 * e + 0.1 * x));
            ema_spectra = smooth(ema_spectra, batch.batch_size as f64 / dt);
            ema_tokens = smooth(ema_tokens, tokens as f64 / dt);
            self.state.step = step;
            self.state.lr = lr;
            self.state.spectra_seen += batch.batch_size as u64;
            self.state.tokens_seen += tokens as u64;
            self.state.elapsed_s += dt;
            self.state.loader = serde_json::to_value(loader.state())
                .map_err(|e| Error::file(&out_dir, format!("loader state: {e}")))?;
            let ev = StepEvent {
                step,
                total_steps: self.cfg.steps,
                loss,
                lr,
                grad_norm: stats.grad_norm,
                batch_spectra: batch.batch_size,
                batch_tokens: tokens,
                spectra_per_s: ema_spectra.unwrap_or(0.0),
                tokens_per_s: ema_tokens.unwrap_or(0.0),
                elapsed_s: self.state.elapsed_s,
            };
            observer.on_step(&ev);
            window_sum += loss;
            window_n += 1;
            if stats.applied {
                window_norm += stats.grad_norm;
            } else {
                window_skipped += 1;
            }

            let last = step == self.cfg.steps;
            if step.checked_rem(self.cfg.log_interval) == Some(0) || last {
                metrics.append(&Record::Train {
                    step,
                    loss: window_sum / window_n as f64,
                    last_loss: loss,
                    steps: window_n,
                    lr,
                    grad_norm: window_norm / (window_n - window_skipped).max(1) as f64,
                    skipped: window_skipped,
                    spectra_per_s: ev.spectra_per_s,
                    tokens_per_s: ev.tokens_per_s,
                    elapsed_s: ev.elapsed_s,
                })?;
                (window_sum, window_n, window_norm, window_skipped) = (0.0, 0, 0.0, 0);
                // The loader repeats a source's problems every pass; tell
                // each one once.
                let problems = loader.stats().problems;
                for p in problems.iter().skip(problems_seen) {
                    if told.insert(p.clone()) {
                        observer.on_note(&format!("data: {p}"));
                    }
                }
                problems_seen = problems.len();
            }
            if step.checked_rem(self.cfg.eval_interval) == Some(0) || last {
                let t0 = Instant::now();
                if let Some(rep) = self.evaluate(observer, &mut metrics)? {
                    last_eval = Some(rep);
                }
                // Validation time is not training throughput.
                t_prev += t0.elapsed();
            }
            if step.checked_rem(self.cfg.checkpoint_interval) == Some(0) || last {
                let t0 = Instant::now();
                let path = self.write_checkpoint(&step_name(step))?;
                self.checkpoints.prune(self.cfg.keep_last)?;
                observer.on_checkpoint(step, &path);
                last_checkpoint = Some(path);
                last_checkpoint_step = Some(step);
                t_prev += t0.elapsed();
            }
        }
        if outcome == Outcome::Interrupted && last_checkpoint_step != Some(self.state.step) {
            let path = self.write_checkpoint(&step_name(self.state.step))?;
            self.checkpoints.prune(self.cfg.keep_last)?;
            observer.on_checkpoint(self.state.step, &path);
            last_checkpoint = Some(path);
        }
        let best = self.state.best_step.zip(self.state.best_val_loss);
        Ok(Summary {
            outcome,
            step: self.state.step,
            out_dir,
            first_eval: self.first_eval.clone(),
            last_eval,
            best,
            last_checkpoint,
            loader: loader.stats(),
        })
    }
}

/// The first validation record of a metrics log, as a report.
fn first_recorded_eval(path: &Path) -> Option<EvalReport> {
    read_metrics(path).ok()?.into_iter().find_map(|r| match r {
        Record::Val {
            step,
            mean,
            loss,
            spectra,
            best,
        } => Some(EvalReport {
            step,
            per_survey: loss
                .into_iter()
                .map(|(k, l)| {
                    let n = spectra.get(&k).copied().unwrap_or(0);
                    (
                        k,
                        crate::eval::SurveyLoss {
                            loss: l,
                            spectra: n,
                            pixels: 0,
                        },
                    )
                })
                .collect(),
            mean,
            best,
        }),
        Record::Train { .. } => None,
    })
}
