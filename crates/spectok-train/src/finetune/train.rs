//! Training a head with early stopping, scoring it and the baselines.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use spectok_io::{plan_inputs, read_unit, Spectrum};

use super::baselines::{Knn, Pca, Ridge, Standardiser};
use super::data::{part_of, targets, Part, Sample, Targets};
use super::head::{loss, outputs, pad_tokens, Head, HeadInput, HeadKind};
use super::metrics::{class_metrics, param_metrics, redshift_metrics};
use super::predict::{predict_with, write_test_predictions, LoadedHead, Prediction};
use super::tail::{is_tail_weight, is_tuned_weight, load_checkpoint_tail, TunedTail};
use super::{
    FinetuneConfig, HeadMeta, Report, Scored, Task, TaskMetrics, HEAD_META, HEAD_WEIGHTS,
    METRICS_JSON, TEST_PREDICTIONS,
};
use crate::error::{Error, Result};

/// What [`finetune`] produced.
pub struct FinetuneOutcome {
    /// The head, ready for predictions.
    pub head: LoadedHead,
    /// The scores (also in `metrics.json`).
    pub report: Report,
    /// Test objects: truth values (class: index) and predictions, for plots.
    pub test: Vec<(Vec<f64>, Prediction)>,
}

/// A small deterministic generator for shuffling and nothing else.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Standardised training target of one labelled row (redshift:
/// log(1+z)); NaN stays NaN.
fn raw_target(task: Task, v: &[f64]) -> Vec<f64> {
    match task {
        Task::Redshift => vec![v[0].ln_1p()],
        _ => v.to_vec(),
    }
}

/// Trains a head on `samples` (the frozen encoder's outputs) for
/// `cfg.task`, scores it and the baselines on the test part and writes the
/// head directory `out` (see the module docs). `inputs` are read again
/// only for the flux baseline. `log` receives one line per epoch.
///
/// With `cfg.unfreeze_last = K > 0` the samples must hold the hidden
/// states after encoder block N−K ([`super::cached_hidden_states`] of the
/// checkpoint `checkpoint`, whose weights must have SHA-256
/// `checkpoint_sha256`); the last K blocks and the final norm are copied
/// from the checkpoint and fine-tuned with the head ([`super::tail`]).
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    cfg: &FinetuneConfig,
    samples: &[Sample],
    dim: usize,
    checkpoint: &str,
    checkpoint_sha256: &str,
    inputs: &[String],
    out: &Path,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<FinetuneOutcome> {
    cfg.validate()?;
    let task = cfg.task;
    // The head's weights, and with K > 0 the fine-tuned encoder blocks
    // (copied from the checkpoint first).
    let varmap = VarMap::new();
    let k_tuned = cfg.unfreeze_last;
    let (tail, encoder_cfg) = if k_tuned > 0 {
        let (tail, model) = load_checkpoint_tail(
            &varmap,
            Path::new(checkpoint),
            checkpoint_sha256,
            k_tuned,
            device,
        )?;
        if model.d_model != dim {
            return Err(Error::config(
                "unfreeze_last",
                format!(
                    "the embeddings are {dim} wide, the checkpoint's encoder {}",
                    model.d_model
                ),
            ));
        }
        (Some(tail), Some(model))
    } else {
        (None, None)
    };
    let t = targets(task, samples, &cfg.classes);
    if t.names.is_empty() {
        return Err(Error::config(
            "classes",
            "no class label found in the inputs",
        ));
    }
    if cfg.head.kind == HeadKind::Attentive && !dim.is_multiple_of(cfg.head.heads.max(1)) {
        return Err(Error::config(
            "head.heads",
            format!(
                "{} heads do not divide the embedding width {dim}",
                cfg.head.heads
            ),
        ));
    }
    let mut parts: BTreeMap<Part, Vec<usize>> = BTreeMap::new();
    for (j, &i) in t.rows.iter().enumerate() {
        let p = part_of(
            &samples[i].object_id,
            cfg.val_fraction,
            cfg.test_fraction,
            cfg.split_seed,
        );
        parts.entry(p).or_default().push(j);
    }
    let train = parts.remove(&Part::Train).unwrap_or_default();
    let val = parts.remove(&Part::Val).unwrap_or_default();
    let test = parts.remove(&Part::Test).unwrap_or_default();
    if train.is_empty() || val.is_empty() || test.is_empty() {
        return Err(Error::config(
            "val_fraction",
            format!(
                "{} labelled spectra for task {} give train/val/test = {}/{}/{}; every part needs at least one",
                t.rows.len(),
                task.name(),
                train.len(),
                val.len(),
                test.len()
            ),
        ));
    }
    if tail.is_none()
        && cfg.head.kind == HeadKind::Attentive
        && samples[t.rows[train[0]]].tokens.is_empty()
    {
        return Err(Error::config(
            "head.kind",
            "the attentive head needs tokens; the embeddings hold none",
        ));
    }
    // Standardisation on the training part.
    let k_targets = match task {
        Task::Class => 0,
        _ => t.names.len(),
    };
    let mut target_mean = vec![0.0; k_targets];
    let mut target_std = vec![1.0; k_targets];
    for k in 0..k_targets {
        let vals: Vec<f64> = train
            .iter()
            .map(|j| raw_target(task, &t.values[*j])[k])
            .filter(|x| x.is_finite())
            .collect();
        let n = vals.len().max(1) as f64;
        let m = vals.iter().sum::<f64>() / n;
        let s = (vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n).sqrt();
        target_mean[k] = m;
        target_std[k] = if s > 1e-12 { s } else { 1.0 };
    }
    let pooled = |j: usize| -> Vec<f64> {
        samples[t.rows[j]]
            .pooled
            .iter()
            .map(|v| *v as f64)
            .collect()
    };
    let train_samples: Vec<&Sample> = train.iter().map(|j| &samples[t.rows[*j]]).collect();
    let (feat, (token_mean, token_std)) = match &tail {
        // The head reads the re-encoded tokens: standardise them as the
        // checkpoint's blocks give them.
        Some(tail) => tail_stats(tail, &train_samples, dim, device)?,
        None => (
            Standardiser::fit(&train.iter().map(|j| pooled(*j)).collect::<Vec<_>>()),
            token_stats(
                train_samples
                    .iter()
                    .flat_map(|s| s.tokens.chunks_exact(dim.max(1))),
                dim,
            ),
        ),
    };
    let meta = HeadMeta {
        task,
        names: t.names.clone(),
        head: cfg.head.clone(),
        dim,
        max_tokens: cfg.max_tokens,
        target_mean,
        target_std,
        feature_mean: feat.mean.clone(),
        feature_std: feat.std.clone(),
        token_mean,
        token_std,
        unfreeze_last: k_tuned,
        encoder: encoder_cfg,
        checkpoint: checkpoint.to_string(),
        checkpoint_sha256: checkpoint_sha256.to_string(),
        config: cfg.clone(),
        spectok_version: env!("CARGO_PKG_VERSION").to_string(),
    };

    // The head, optimised at lr; the fine-tuned blocks and final norm at
    // lr × unfreeze_lr_ratio (the quantiser copy stays frozen).
    let vb = spectok_model::seeded_var_builder(&varmap, cfg.seed, DType::F32, device);
    let head = Head::new(&cfg.head, dim, outputs(task, t.names.len()), vb)?;
    let adamw = |vars: Vec<Var>, lr: f64| {
        candle_nn::AdamW::new(
            vars,
            ParamsAdamW {
                lr,
                weight_decay: cfg.weight_decay,
                ..ParamsAdamW::default()
            },
        )
    };
    let mut opt = adamw(vars_where(&varmap, |n| !is_tail_weight(n))?, cfg.lr)?;
    let mut opt_tail = match &tail {
        Some(_) => Some(adamw(
            vars_where(&varmap, is_tuned_weight)?,
            cfg.lr * cfg.unfreeze_lr_ratio,
        )?),
        None => None,
    };
    let loaded_for = |head: Head, tail: Option<TunedTail>| LoadedHead {
        meta: meta.clone(),
        head,
        tail,
        device: device.clone(),
    };
    let batch_loss = |head: &Head, rows: &[usize], train: bool| -> Result<Tensor> {
        let lh = LoadedHeadRef {
            meta: &meta,
            tail: tail.as_ref(),
            device,
        };
        let sel: Vec<&Sample> = rows.iter().map(|j| &samples[t.rows[*j]]).collect();
        let input = lh.input(&sel, train)?;
        let y = head.forward(&input, train)?;
        let b = rows.len();
        match task {
            Task::Class => {
                let idx: Vec<u32> = rows.iter().map(|j| t.values[*j][0] as u32).collect();
                let tt = Tensor::from_vec(idx, b, device)?;
                loss(task, &y, &tt, None)
            }
            _ => {
                let k = k_targets;
                let mut v = vec![0f32; b * k];
                let mut m = vec![0f32; b * k];
                for (r, j) in rows.iter().enumerate() {
                    for (c, x) in raw_target(task, &t.values[*j]).iter().enumerate() {
                        if x.is_finite() {
                            v[r * k + c] = ((x - meta.target_mean[c]) / meta.target_std[c]) as f32;
                            m[r * k + c] = 1.0;
                        }
                    }
                }
                let tt = Tensor::from_vec(v, (b, k), device)?;
                let mm = Tensor::from_vec(m, (b, k), device)?;
                loss(task, &y, &tt, Some(&mm))
            }
        }
    };
    let mut rng = SplitMix(cfg.seed ^ 0x5eed);
    let mut order = train.clone();
    let mut best: Option<(f64, usize, Snapshot)> = None;
    let mut train_curve = Vec::new();
    let mut val_curve = Vec::new();
    let mut since_best = 0;
    for epoch in 1..=cfg.epochs {
        rng.shuffle(&mut order);
        let mut sum = 0.0;
        for chunk in order.chunks(cfg.batch_size) {
            let l = batch_loss(&head, chunk, true)?;
            sum += l.to_scalar::<f32>()? as f64 * chunk.len() as f64;
            let grads = l.backward()?;
            opt.step(&grads)?;
            if let Some(o) = opt_tail.as_mut() {
                o.step(&grads)?;
            }
        }
        let tl = sum / order.len() as f64;
        let mut vsum = 0.0;
        for chunk in val.chunks(cfg.batch_size.max(256)) {
            vsum +=
                batch_loss(&head, chunk, false)?.to_scalar::<f32>()? as f64 * chunk.len() as f64;
        }
        let vl = vsum / val.len() as f64;
        if !tl.is_finite() || !vl.is_finite() {
            return Err(Error::NonFinite {
                what: "head loss",
                value: if tl.is_finite() { vl } else { tl },
                step: epoch as u64,
                ids: Vec::new(),
                last_checkpoint: None,
            });
        }
        train_curve.push(tl);
        val_curve.push(vl);
        let improved = best.as_ref().is_none_or(|b| vl < b.0);
        log(&format!(
            "epoch {epoch:4}  train loss {tl:.5}  val loss {vl:.5}{}",
            if improved { "  (best)" } else { "" }
        ));
        if improved {
            let snap = snapshot(&varmap)?;
            best = Some((vl, epoch, snap));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                break;
            }
        }
    }
    let best_epoch = match &best {
        Some((_, e, snap)) => {
            restore(&varmap, snap)?;
            *e
        }
        None => 0,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    varmap
        .save(out.join(HEAD_WEIGHTS))
        .map_err(|e| Error::file(out.join(HEAD_WEIGHTS), e))?;
    write_json(&out.join(HEAD_META), &meta)?;
    let loaded = loaded_for(head, tail);

    // Score the test part.
    let test_samples: Vec<&Sample> = test.iter().map(|j| &samples[t.rows[*j]]).collect();
    let preds = predict_with(&loaded, &test_samples, 256)?;
    let truth: Vec<Vec<f64>> = test.iter().map(|j| t.values[*j].clone()).collect();
    let head_pred: Vec<Vec<f64>> = preds.iter().map(|p| p.values.clone()).collect();
    let mut results = vec![Scored {
        model: head_label(cfg),
        subset: "all".into(),
        metrics: score(task, &t, &head_pred, &truth),
    }];
    if cfg.baselines {
        log("baselines: ridge and k-NN on the pooled embedding");
        let xtr: Vec<Vec<f64>> = train.iter().map(|j| pooled(*j)).collect();
        let xva: Vec<Vec<f64>> = val.iter().map(|j| pooled(*j)).collect();
        let xte: Vec<Vec<f64>> = test.iter().map(|j| pooled(*j)).collect();
        let ytr: Vec<Vec<f64>> = train.iter().map(|j| t.values[*j].clone()).collect();
        let yva: Vec<Vec<f64>> = val.iter().map(|j| t.values[*j].clone()).collect();
        for (name, p) in run_baselines(cfg, &t, (&xtr, &ytr), (&xva, &yva), &xte) {
            results.push(Scored {
                model: format!("{name}(pooled embedding)"),
                subset: "all".into(),
                metrics: score(task, &t, &p, &truth),
            });
        }
        match flux_baseline(
            cfg,
            samples,
            &t,
            (&train, &val, &test),
            inputs,
            &head_pred,
            log,
        ) {
            Ok(rows) => results.extend(rows),
            Err(e) => log(&format!("flux baseline skipped: {e}")),
        }
    }
    let report = Report {
        task,
        counts: [
            ("train".to_string(), train.len()),
            ("val".to_string(), val.len()),
            ("test".to_string(), test.len()),
        ]
        .into_iter()
        .collect(),
        excluded: t.excluded.clone(),
        epochs_run: train_curve.len(),
        best_epoch,
        val_loss: val_curve,
        train_loss: train_curve,
        results,
    };
    write_json(&out.join(METRICS_JSON), &report)?;
    let test_rows: Vec<(Vec<f64>, Prediction)> = truth.into_iter().zip(preds).collect();
    write_test_predictions(
        &out.join(TEST_PREDICTIONS),
        &loaded.meta,
        &test_samples,
        &test_rows,
    )?;
    Ok(FinetuneOutcome {
        head: loaded,
        report,
        test: test_rows,
    })
}

/// A borrowed view used while training (the same input building as
/// [`LoadedHead`]).
pub(crate) struct LoadedHeadRef<'a> {
    pub(crate) meta: &'a HeadMeta,
    pub(crate) tail: Option<&'a TunedTail>,
    pub(crate) device: &'a Device,
}

impl LoadedHeadRef<'_> {
    /// The head's input for these samples; with fine-tuned blocks, the
    /// samples' hidden states are re-encoded first (`train` turns their
    /// dropout and differentiable LayerNorm on).
    pub(crate) fn input(&self, sel: &[&Sample], train: bool) -> Result<HeadInput> {
        if let Some(tail) = self.tail {
            return self.tail_input(tail, sel, train);
        }
        let dim = self.meta.dim;
        match self.meta.head.kind {
            HeadKind::Attentive => {
                let std_tokens: Vec<Vec<f32>> = sel
                    .iter()
                    .map(|s| {
                        s.tokens
                            .iter()
                            .enumerate()
                            .map(|(i, x)| {
                                let k = i % dim.max(1);
                                let m = self.meta.token_mean.get(k).copied().unwrap_or(0.0);
                                let sd = self.meta.token_std.get(k).copied().unwrap_or(1.0);
                                ((*x as f64 - m) / sd) as f32
                            })
                            .collect()
                    })
                    .collect();
                let seqs: Vec<&[f32]> = std_tokens.iter().map(Vec::as_slice).collect();
                let (x, m) = pad_tokens(&seqs, dim, self.device)?;
                Ok(HeadInput::Tokens(x, m, self.pooled(sel)?))
            }
            HeadKind::Linear => Ok(HeadInput::Pooled(self.pooled(sel)?)),
        }
    }

    /// The head's input from the fine-tuned blocks' tokens: the scale
    /// token and the tokens (standardised with the token statistics) with
    /// their mask, and the pooled embedding (standardised with the
    /// feature statistics), as for frozen tokens.
    fn tail_input(&self, tail: &TunedTail, sel: &[&Sample], train: bool) -> Result<HeadInput> {
        let dim = self.meta.dim;
        let enc = tail.encode(sel, self.device, train)?;
        let stats = |v: &[f64]| -> Result<Tensor> {
            let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
            Ok(Tensor::from_vec(v, dim, self.device)?)
        };
        let pooled = enc
            .pooled
            .to_dtype(DType::F32)?
            .broadcast_sub(&stats(&self.meta.feature_mean)?)?
            .broadcast_div(&stats(&self.meta.feature_std)?)?;
        match self.meta.head.kind {
            HeadKind::Linear => Ok(HeadInput::Pooled(pooled)),
            HeadKind::Attentive => {
                let b = sel.len();
                let x = Tensor::cat(&[&enc.scale_token.unsqueeze(1)?, &enc.tokens], 1)?
                    .to_dtype(DType::F32)?
                    .broadcast_sub(&stats(&self.meta.token_mean)?)?
                    .broadcast_div(&stats(&self.meta.token_std)?)?;
                let ones = Tensor::ones((b, 1), DType::F32, self.device)?;
                let mask = Tensor::cat(&[&ones, &enc.token_mask.to_dtype(DType::F32)?], 1)?;
                Ok(HeadInput::Tokens(x, mask, pooled))
            }
        }
    }

    /// The standardised pooled embeddings `(B, D)`.
    fn pooled(&self, sel: &[&Sample]) -> Result<Tensor> {
        let dim = self.meta.dim;
        let mut v = Vec::with_capacity(sel.len() * dim);
        for s in sel {
            for k in 0..dim {
                let x = s.pooled.get(k).copied().unwrap_or(0.0) as f64;
                let m = self.meta.feature_mean.get(k).copied().unwrap_or(0.0);
                let sd = self.meta.feature_std.get(k).copied().unwrap_or(1.0);
                v.push(((x - m) / sd) as f32);
            }
        }
        Ok(Tensor::from_vec(v, (sel.len(), dim), self.device)?)
    }
}

/// Mean and standard deviation per dimension of `tokens` (each `dim`
/// values).
fn token_stats<'a>(tokens: impl Iterator<Item = &'a [f32]>, dim: usize) -> MeanStd {
    let mut acc = TokenStats::new(dim);
    for tok in tokens {
        acc.add(tok);
    }
    acc.finish()
}

/// Mean and standard deviation per dimension.
type MeanStd = (Vec<f64>, Vec<f64>);

/// Running sums for [`token_stats`].
struct TokenStats {
    n: f64,
    sum: Vec<f64>,
    sq: Vec<f64>,
}

impl TokenStats {
    fn new(dim: usize) -> TokenStats {
        TokenStats {
            n: 0.0,
            sum: vec![0f64; dim],
            sq: vec![0f64; dim],
        }
    }

    fn add(&mut self, tok: &[f32]) {
        self.n += 1.0;
        for ((a, b), x) in self.sum.iter_mut().zip(self.sq.iter_mut()).zip(tok) {
            *a += *x as f64;
            *b += (*x as f64) * (*x as f64);
        }
    }

    fn finish(self) -> MeanStd {
        let n = self.n.max(1.0);
        let mean: Vec<f64> = self.sum.iter().map(|a| a / n).collect();
        let std = self
            .sq
            .iter()
            .zip(&mean)
            .map(|(b, m)| {
                let v = b / n - m * m;
                if v > 1e-24 {
                    v.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        (mean, std)
    }
}

/// The feature standardiser (pooled embeddings) and the token statistics
/// (scale token and tokens) of the checkpoint's blocks re-encoding the
/// training samples' hidden states.
fn tail_stats(
    tail: &TunedTail,
    train: &[&Sample],
    dim: usize,
    device: &Device,
) -> Result<(Standardiser, MeanStd)> {
    let mut pooled: Vec<Vec<f64>> = Vec::with_capacity(train.len());
    let mut tokens = TokenStats::new(dim);
    for chunk in train.chunks(256) {
        let enc = tail.encode(chunk, device, false)?;
        let p = enc.pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        pooled.extend(
            p.into_iter()
                .map(|r| r.into_iter().map(f64::from).collect::<Vec<f64>>()),
        );
        let scale = enc.scale_token.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let toks = enc.tokens.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let mask = enc.token_mask.to_vec2::<u8>()?;
        for ((s, rows), m) in scale.iter().zip(&toks).zip(&mask) {
            tokens.add(s);
            for (row, keep) in rows.iter().zip(m) {
                if *keep == 1 {
                    tokens.add(row);
                }
            }
        }
    }
    Ok((Standardiser::fit(&pooled), tokens.finish()))
}

/// The variables of `varmap` whose names pass `keep`, by name.
fn vars_where(varmap: &VarMap, keep: impl Fn(&str) -> bool) -> Result<Vec<Var>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::config("head", "weights lock poisoned"))?;
    let mut named: Vec<(&String, &Var)> = data.iter().filter(|(n, _)| keep(n)).collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    Ok(named.into_iter().map(|(_, v)| v.clone()).collect())
}

/// The head's row name in the results table: `head(attentive)`,
/// `head(linear)`, with `, last K blocks tuned` when `unfreeze_last > 0`.
fn head_label(cfg: &FinetuneConfig) -> String {
    match cfg.unfreeze_last {
        0 => format!("head({})", kind_name(cfg.head.kind)),
        1 => format!("head({}, last block tuned)", kind_name(cfg.head.kind)),
        k => format!("head({}, last {k} blocks tuned)", kind_name(cfg.head.kind)),
    }
}

fn kind_name(k: HeadKind) -> &'static str {
    match k {
        HeadKind::Attentive => "attentive",
        HeadKind::Linear => "linear",
    }
}

/// Copies of a head's weights by name.
type Snapshot = Vec<(String, Tensor)>;

fn snapshot(varmap: &VarMap) -> Result<Snapshot> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::config("head", "weights lock poisoned"))?;
    let mut out = Vec::with_capacity(data.len());
    for (k, v) in data.iter() {
        out.push((k.clone(), v.as_tensor().copy()?));
    }
    Ok(out)
}

fn restore(varmap: &VarMap, snap: &[(String, Tensor)]) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::config("head", "weights lock poisoned"))?;
    for (k, t) in snap {
        if let Some(v) = data.get(k) {
            v.set(t)?;
        }
    }
    Ok(())
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::file(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::file(path, e))
}

/// Scores predictions (class: `[index]`, redshift: `[z]`, stellar: one
/// value per parameter) against truths of the same shape.
pub fn score(task: Task, t: &Targets, pred: &[Vec<f64>], truth: &[Vec<f64>]) -> TaskMetrics {
    let col = |v: &[Vec<f64>], k: usize| -> Vec<f64> {
        v.iter()
            .map(|r| r.get(k).copied().unwrap_or(f64::NAN))
            .collect()
    };
    match task {
        Task::Redshift => TaskMetrics::Redshift(redshift_metrics(&col(pred, 0), &col(truth, 0))),
        Task::Class => {
            let p: Vec<usize> = col(pred, 0).iter().map(|x| *x as usize).collect();
            let tr: Vec<usize> = col(truth, 0).iter().map(|x| *x as usize).collect();
            TaskMetrics::Class(class_metrics(&p, &tr, &t.names))
        }
        Task::Stellar => TaskMetrics::Stellar(
            t.names
                .iter()
                .enumerate()
                .map(|(k, n)| (n.clone(), param_metrics(&col(pred, k), &col(truth, k))))
                .collect(),
        ),
    }
}

/// Ridge (strength chosen on the validation part) and k-NN predictions
/// for the test rows, in the task's output form.
fn run_baselines(
    cfg: &FinetuneConfig,
    t: &Targets,
    (xtr, ytr): (&[Vec<f64>], &[Vec<f64>]),
    (xva, yva): (&[Vec<f64>], &[Vec<f64>]),
    xte: &[Vec<f64>],
) -> Vec<(String, Vec<Vec<f64>>)> {
    let task = cfg.task;
    let k_cls = t.names.len();
    // Regression targets for the ridge: log(1+z), one-hot classes, params.
    let enc = |y: &[Vec<f64>]| -> Vec<Vec<f64>> {
        y.iter()
            .map(|r| match task {
                Task::Redshift => vec![r[0].ln_1p()],
                Task::Class => (0..k_cls).map(|c| f64::from(r[0] as usize == c)).collect(),
                Task::Stellar => r.clone(),
            })
            .collect()
    };
    let dec = |o: Vec<f64>| -> Vec<f64> {
        match task {
            Task::Redshift => vec![o[0].exp_m1()],
            Task::Class => vec![argmax(&o) as f64],
            Task::Stellar => o,
        }
    };
    let etr = enc(ytr);
    let mut best: Option<(f64, Ridge)> = None;
    for lambda in [1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0] {
        let r = Ridge::fit(xtr, &etr, lambda);
        let p: Vec<Vec<f64>> = xva.iter().map(|x| dec(r.predict(x))).collect();
        let s = badness(&score(task, t, &p, yva));
        if best.as_ref().is_none_or(|b| s < b.0) {
            best = Some((s, r));
        }
    }
    let mut out = Vec::new();
    if let Some((_, r)) = best {
        out.push((
            "ridge".to_string(),
            xte.iter().map(|x| dec(r.predict(x))).collect(),
        ));
    }
    let knn = Knn::new(xtr, cfg.knn_k);
    let p = xte
        .iter()
        .map(|x| {
            let nb = knn.neighbours(x);
            let o: Vec<f64> = (0..etr.first().map_or(0, Vec::len))
                .map(|k| {
                    let v: Vec<f64> = nb
                        .iter()
                        .map(|i| etr[*i][k])
                        .filter(|v| v.is_finite())
                        .collect();
                    match task {
                        // Median for regression (robust), mean of one-hot = votes.
                        Task::Class => v.iter().sum::<f64>(),
                        _ => super::metrics::median(&v),
                    }
                })
                .collect();
            dec(o)
        })
        .collect();
    out.push((format!("knn{}", cfg.knn_k), p));
    out
}

/// A single number to minimise when choosing a baseline's strength.
fn badness(m: &TaskMetrics) -> f64 {
    let v = match m {
        TaskMetrics::Redshift(r) => r.sigma_nmad + r.outliers_005,
        TaskMetrics::Class(c) => 1.0 - c.accuracy,
        TaskMetrics::Stellar(p) => p.values().map(|x| x.mad).sum::<f64>(),
    };
    if v.is_finite() {
        v
    } else {
        f64::INFINITY
    }
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, x)| if *x > b.1 { (i, *x) } else { b },
        )
        .0
}

/// Largest flux-vector width of the flux baseline (spectra are averaged
/// in blocks of pixels down to at most this).
const FLUX_WIDTH: usize = 512;

/// Median-normalised flux on the survey's common grid, averaged in blocks
/// of `bin` pixels; invalid pixels count as 1 (the median level).
fn flux_vector(s: &Spectrum, bin: usize) -> Vec<f64> {
    let valid: Vec<f64> = (0..s.len())
        .filter(|i| s.pixel_ok(*i))
        .map(|i| s.flux[i] as f64)
        .collect();
    let med = super::metrics::median(&valid);
    let scale = if med.is_finite() && med > 0.0 {
        med
    } else {
        let m = super::metrics::median(&valid.iter().map(|v| v.abs()).collect::<Vec<_>>());
        if m.is_finite() && m > 0.0 {
            m
        } else {
            1.0
        }
    };
    (0..s.len())
        .map(|i| {
            if s.pixel_ok(i) {
                (s.flux[i] as f64 / scale).clamp(-5.0, 10.0)
            } else {
                1.0
            }
        })
        .collect::<Vec<f64>>()
        .chunks(bin.max(1))
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect()
}

/// Ridge and k-NN on a PCA of the median-normalised flux of the most
/// common survey among the labelled spectra (those on its most common
/// grid), with the head's score on the same test subset.
#[allow(clippy::too_many_arguments)]
fn flux_baseline(
    cfg: &FinetuneConfig,
    samples: &[Sample],
    t: &Targets,
    (train, val, test): (&[usize], &[usize], &[usize]),
    inputs: &[String],
    head_pred: &[Vec<f64>],
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Scored>> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for i in &t.rows {
        *counts.entry(samples[*i].survey.as_str()).or_insert(0) += 1;
    }
    let survey = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, _)| s.to_string())
        .ok_or_else(|| Error::config("baselines", "no labelled spectra"))?;
    // Labelled row (index into t.rows) by source.
    let mut by_source: HashMap<&str, usize> = HashMap::new();
    for (j, i) in t.rows.iter().enumerate() {
        if samples[*i].survey == survey {
            by_source.insert(samples[*i].source.as_str(), j);
        }
    }
    log(&format!(
        "baselines: PCA of the median-normalised {survey} flux"
    ));
    let plan = plan_inputs(inputs, None);
    // Labelled row → (pixel count, binned normalised flux); only the
    // vectors are kept, never the spectra.
    let mut spectra: HashMap<usize, (usize, Vec<f64>)> = HashMap::new();
    for unit in &plan.units {
        let Ok(iter) = read_unit(unit) else { continue };
        for s in iter.flatten() {
            if s.survey.name() != survey {
                continue;
            }
            if let Some(j) = by_source.get(s.source.to_string().as_str()) {
                let bin = s.len().div_ceil(FLUX_WIDTH);
                spectra.insert(*j, (s.len(), flux_vector(&s, bin)));
            }
        }
    }
    let mut lens: BTreeMap<usize, usize> = BTreeMap::new();
    for (len, _) in spectra.values() {
        *lens.entry(*len).or_insert(0) += 1;
    }
    let grid = lens
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(l, _)| *l)
        .ok_or_else(|| Error::config("baselines", format!("no {survey} spectrum could be read")))?;
    let pick = |rows: &[usize]| -> (Vec<usize>, Vec<Vec<f64>>) {
        let mut keep = Vec::new();
        let mut x = Vec::new();
        for (pos, j) in rows.iter().enumerate() {
            if let Some((_, v)) = spectra.get(j).filter(|(len, _)| *len == grid) {
                keep.push(pos);
                x.push(v.clone());
            }
        }
        (keep, x)
    };
    let (ktr, ftr) = pick(train);
    let (kva, fva) = pick(val);
    let (kte, fte) = pick(test);
    if ftr.len() < 2 || fva.is_empty() || fte.is_empty() {
        return Err(Error::config(
            "baselines",
            format!("too few {survey} spectra on one grid ({} train)", ftr.len()),
        ));
    }
    let pca = Pca::fit(&ftr, cfg.pca_components, 6);
    let ptr: Vec<Vec<f64>> = ftr.iter().map(|x| pca.transform(x)).collect();
    let pva: Vec<Vec<f64>> = fva.iter().map(|x| pca.transform(x)).collect();
    let pte: Vec<Vec<f64>> = fte.iter().map(|x| pca.transform(x)).collect();
    let ytr: Vec<Vec<f64>> = ktr.iter().map(|p| t.values[train[*p]].clone()).collect();
    let yva: Vec<Vec<f64>> = kva.iter().map(|p| t.values[val[*p]].clone()).collect();
    let truth: Vec<Vec<f64>> = kte.iter().map(|p| t.values[test[*p]].clone()).collect();
    let subset = format!("{survey} ({} test)", truth.len());
    let head_sub: Vec<Vec<f64>> = kte.iter().map(|p| head_pred[*p].clone()).collect();
    let mut out = vec![Scored {
        model: head_label(cfg),
        subset: subset.clone(),
        metrics: score(cfg.task, t, &head_sub, &truth),
    }];
    for (name, p) in run_baselines(cfg, t, (&ptr, &ytr), (&pva, &yva), &pte) {
        out.push(Scored {
            model: format!("{name}(flux PCA{})", pca.components.len()),
            subset: subset.clone(),
            metrics: score(cfg.task, t, &p, &truth),
        });
    }
    Ok(out)
}
