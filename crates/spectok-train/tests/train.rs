//! The training loop: exact resume, stop flag, NaN stop, metrics, and a
//! short run on the real survey files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod common;

use spectok_data::{BatchSize, SourceSpec, SyntheticConfig, SyntheticSource};
use spectok_io::Survey;
use spectok_train::checkpoint::{Checkpoints, TrainState};
use spectok_train::{
    read_metrics, Error, EvalReport, Observer, Outcome, Reconstructions, Record, SourceConfig,
    StepEvent, TrainConfig, Trainer, METRICS_FILE, RECONSTRUCTIONS_FILE,
};

/// Records losses and raises the stop flag after `stop_after` steps.
#[derive(Default)]
struct Recorder {
    steps: Vec<StepEvent>,
    evals: Vec<EvalReport>,
    checkpoints: Vec<(u64, PathBuf)>,
    stop_after: Option<u64>,
    stop: Arc<AtomicBool>,
}

impl Observer for Recorder {
    fn on_step(&mut self, ev: &StepEvent) {
        self.steps.push(ev.clone());
        if Some(ev.step) == self.stop_after {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
    fn on_eval(&mut self, r: &EvalReport) {
        self.evals.push(r.clone());
    }
    fn on_checkpoint(&mut self, step: u64, path: &Path) {
        self.checkpoints.push((step, path.to_path_buf()));
    }
}

fn tiny_config(out: &Path) -> TrainConfig {
    let mut cfg = TrainConfig {
        model: spectok_model::Config {
            mask_ratio: 0.25,
            ..common::tiny_model(16)
        },
        ..TrainConfig::default()
    };
    cfg.data.prepare.patch_size = 16;
    cfg.data.val_fraction = 0.2;
    cfg.data.val_max_spectra = 8;
    cfg.data.eval_batch_size = 8;
    cfg.data.pool_size = 12;
    cfg.batch = BatchSize::Fixed { spectra: 4 };
    cfg.optim.lr = 3e-3;
    cfg.schedule.warmup_steps = 2;
    cfg.steps = 8;
    cfg.eval_interval = 4;
    cfg.checkpoint_interval = 3;
    cfg.log_interval = 2;
    cfg.keep_last = 2;
    cfg.seed = 7;
    cfg.out_dir = out.to_path_buf();
    cfg
}

fn synthetic_sources() -> Vec<SourceSpec> {
    let make = |survey, seed| {
        Arc::new(SyntheticSource::new(SyntheticConfig {
            units: 4,
            per_unit: 8,
            min_pixels: 200,
            max_pixels: 500,
            survey,
            seed,
            ..SyntheticConfig::default()
        }))
    };
    vec![
        SourceSpec::new("sdss", 1.0, make(Survey::Sdss, 1)),
        SourceSpec::new("apogee", 0.5, make(Survey::Apogee, 2)),
    ]
}

fn bits(steps: &[StepEvent]) -> Vec<(u64, u64, u64)> {
    steps
        .iter()
        .map(|e| (e.step, e.loss.to_bits(), e.lr.to_bits()))
        .collect()
}

#[test]
fn stopping_and_resuming_gives_the_same_losses_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let no_stop = AtomicBool::new(false);

    // N = 8 steps straight.
    let straight_dir = tmp.path().join("straight");
    let mut straight = Recorder::default();
    let mut t =
        Trainer::with_sources(tiny_config(&straight_dir), synthetic_sources(), None).unwrap();
    let s = t.run(&mut straight, &no_stop).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    assert_eq!(straight.steps.len(), 8);

    // N/2 steps, stopped by the flag (as Ctrl-C does), which writes a
    // checkpoint; then resumed from the run directory for the rest.
    let split_dir = tmp.path().join("split");
    let mut first = Recorder {
        stop_after: Some(4),
        ..Recorder::default()
    };
    let stop = Arc::clone(&first.stop);
    let mut t = Trainer::with_sources(tiny_config(&split_dir), synthetic_sources(), None).unwrap();
    let s = t.run(&mut first, &stop).unwrap();
    assert_eq!(s.outcome, Outcome::Interrupted);
    assert_eq!(s.step, 4);
    let ckpt = s.last_checkpoint.unwrap();
    assert!(ckpt.ends_with("checkpoints/step-000000004"), "{ckpt:?}");
    assert_eq!(TrainState::read(&ckpt).unwrap().step, 4);

    let mut second = Recorder::default();
    let mut t = Trainer::with_sources(
        tiny_config(&split_dir),
        synthetic_sources(),
        Some(&split_dir),
    )
    .unwrap();
    assert_eq!(t.step(), 4);
    let s = t.run(&mut second, &no_stop).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    assert_eq!(s.step, 8);

    let mut resumed = first.steps.clone();
    resumed.extend(second.steps.iter().cloned());
    assert_eq!(bits(&straight.steps), bits(&resumed));
    // Same final weights and optimiser state, byte for byte.
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let a = std::fs::read(straight_dir.join("checkpoints/step-000000008").join(f)).unwrap();
        let b = std::fs::read(split_dir.join("checkpoints/step-000000008").join(f)).unwrap();
        assert!(a == b, "{f} differs");
    }
    // Validation at step 8 agrees too.
    let last = |r: &Recorder| r.evals.last().unwrap().clone();
    assert_eq!(last(&straight), last(&second));

    // Keep-last-2 pruning plus best; the metrics log reads as one run.
    let cp = Checkpoints::open(&split_dir).unwrap();
    let steps: Vec<u64> = cp.steps().unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [6, 8]);
    assert!(cp.best().is_some());
    let recs = read_metrics(&split_dir.join(METRICS_FILE)).unwrap();
    let train_steps: Vec<u64> = recs
        .iter()
        .filter(|r| matches!(r, Record::Train { .. }))
        .map(Record::step)
        .collect();
    assert_eq!(train_steps, [2, 4, 6, 8]);
    let val_steps: Vec<u64> = recs
        .iter()
        .filter(|r| matches!(r, Record::Val { .. }))
        .map(Record::step)
        .collect();
    assert_eq!(val_steps, [0, 4, 8]);
    for r in &recs {
        if let Record::Val { loss, .. } = r {
            let surveys: Vec<&str> = loss.keys().map(String::as_str).collect();
            assert_eq!(surveys, ["apogee", "sdss"]);
        }
    }
}

#[test]
fn a_non_finite_loss_stops_naming_step_and_spectra_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(tmp.path());
    // An absurd learning rate: the first update throws the weights to
    // ~1e30, and the next forward pass overflows.
    cfg.optim.lr = 1e30;
    cfg.optim.grad_clip = 0.0;
    cfg.optim.weight_decay = 0.0;
    cfg.schedule.warmup_steps = 0;
    cfg.checkpoint_interval = 1;
    cfg.eval_interval = 100;
    let mut rec = Recorder::default();
    let mut t = Trainer::with_sources(cfg, synthetic_sources(), None).unwrap();
    let err = t.run(&mut rec, &AtomicBool::new(false)).unwrap_err();
    let Error::NonFinite {
        step,
        ids,
        last_checkpoint,
        ..
    } = &err
    else {
        panic!("not a non-finite error: {err}");
    };
    let good = rec.steps.len() as u64;
    assert_eq!(*step, good + 1);
    assert_eq!(ids.len(), 4);
    let msg = err.to_string();
    assert!(msg.contains(&format!("at step {step}")), "{msg}");
    for id in ids {
        assert!(msg.contains(id.as_str()), "{msg}");
    }
    // The last good checkpoint is there and named; nothing of the bad step.
    let cp = Checkpoints::open(tmp.path()).unwrap();
    let steps: Vec<u64> = cp.steps().unwrap().iter().map(|(s, _)| *s).collect();
    assert_eq!(steps.last().copied(), Some(good));
    assert_eq!(
        last_checkpoint.as_deref(),
        Some(
            tmp.path()
                .join(format!("checkpoints/step-{good:09}"))
                .as_path()
        )
    );
}

#[test]
fn short_run_on_the_real_surveys_validates_per_survey() {
    let Some(real) = spectok_io::testdata::real_data_dir() else {
        eprintln!("skipping: real survey data not found");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(tmp.path());
    cfg.model.patch_size = 32;
    cfg.data.prepare.patch_size = 32;
    cfg.data.val_fraction = 0.3;
    cfg.data.examples_per_survey = 1;
    cfg.steps = 4;
    cfg.eval_interval = 4;
    cfg.checkpoint_interval = 4;
    let source = |name: &str| SourceConfig {
        name: name.into(),
        paths: vec![real.join(name).display().to_string()],
        weight: 1.0,
        format: None,
    };
    cfg.data.sources = vec![source("sdss"), source("galah"), source("apogee")];
    let mut rec = Recorder::default();
    let mut t = Trainer::new(cfg, None).unwrap();
    let s = t.run(&mut rec, &AtomicBool::new(false)).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    assert!(rec.steps.iter().all(|e| e.loss.is_finite() && e.loss > 0.0));
    let first = s.first_eval.unwrap();
    assert_eq!(first.step, 0);
    let surveys: Vec<&str> = first.per_survey.keys().map(String::as_str).collect();
    assert!(!surveys.is_empty());
    for sv in &surveys {
        assert!(["sdss", "galah", "apogee"].contains(sv), "{sv}");
    }
    // Example reconstructions on the native grid: one per survey, every
    // pixel of the spectrum, wavelengths in the survey's range.
    let rec_file = Reconstructions::read(&tmp.path().join(RECONSTRUCTIONS_FILE)).unwrap();
    assert_eq!(rec_file.step, 4);
    assert_eq!(rec_file.examples.len(), surveys.len());
    for ex in &rec_file.examples {
        let n = ex.wavelength.len();
        assert_eq!(ex.flux.len(), n);
        assert_eq!(ex.reconstruction.len(), n);
        assert_eq!(ex.valid.len(), n);
        let (lo, hi) = ex
            .wavelength
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &w| (a.min(w), b.max(w)));
        match ex.survey {
            // README: SDSS spectra have 3810–4619 pixels over 3569–10351 Å.
            Survey::Sdss => assert!((3800..=4700).contains(&n) && lo > 3500.0 && hi < 10400.0),
            // APOGEE: 8575 pixels (apStar/aspcapStar) or 3 × 4096 (apVisit).
            Survey::Apogee => assert!((n == 8575 || n == 12288) && lo > 15000.0 && hi < 17100.0),
            // GALAH: 4 CCDs × 4096 pixels, 4714–7886 Å.
            Survey::Galah => assert!(n == 4 * 4096 && lo > 4700.0 && hi < 7900.0),
            other => panic!("unexpected survey {other}"),
        }
        assert!(ex.valid.iter().any(|v| *v));
    }
}

#[test]
fn mixed_precision_keeps_f32_master_weights_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let no_stop = AtomicBool::new(false);
    for dtype in ["bf16", "f16"] {
        let cfg = |dir: &Path| TrainConfig {
            dtype: dtype.into(),
            ..tiny_config(dir)
        };
        let straight_dir = tmp.path().join(format!("{dtype}-straight"));
        let mut straight = Recorder::default();
        let mut t = Trainer::with_sources(cfg(&straight_dir), synthetic_sources(), None).unwrap();
        t.run(&mut straight, &no_stop).unwrap();
        let losses: Vec<f64> = straight.steps.iter().map(|e| e.loss).collect();
        assert!(losses.iter().all(|l| l.is_finite()), "{dtype}: {losses:?}");

        // Checkpoints hold f32 master weights whatever the compute dtype.
        let ckpt = straight_dir.join("checkpoints/step-000000008");
        let w = candle_core::safetensors::load(
            ckpt.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert!(w.values().all(|t| t.dtype() == candle_core::DType::F32));
        // f16 keeps a dynamic loss scale in the run state; bf16 needs none.
        let state = TrainState::read(&ckpt).unwrap();
        match dtype {
            "f16" => {
                let ls = state.loss_scale.expect("f16 records its loss scale");
                assert!(ls.scale >= 1.0 && ls.scale <= 65536.0, "{ls:?}");
            }
            _ => assert!(state.loss_scale.is_none()),
        }

        // Stop at 4, resume: the same losses bit for bit.
        let split_dir = tmp.path().join(format!("{dtype}-split"));
        let mut first = Recorder {
            stop_after: Some(4),
            ..Recorder::default()
        };
        let stop = Arc::clone(&first.stop);
        let mut t = Trainer::with_sources(cfg(&split_dir), synthetic_sources(), None).unwrap();
        t.run(&mut first, &stop).unwrap();
        let mut second = Recorder::default();
        let mut t =
            Trainer::with_sources(cfg(&split_dir), synthetic_sources(), Some(&split_dir)).unwrap();
        t.run(&mut second, &no_stop).unwrap();
        let mut resumed = first.steps.clone();
        resumed.extend(second.steps.iter().cloned());
        assert_eq!(bits(&straight.steps), bits(&resumed), "{dtype}");
    }
}
