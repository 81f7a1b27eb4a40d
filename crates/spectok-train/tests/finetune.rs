//! Finetuning: the metrics against hand-computed values, the baselines'
//! linear algebra, the split and labels, and heads trained end to end on
//! the committed mock survey (data/demo) with a tiny tokenizer trained
//! here.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use candle_nn::VarMap;
use spectok_data::PrepareConfig;
use spectok_train::embed::{EmbedModel, EmbedOptions};
use spectok_train::finetune::baselines::{cholesky_solve, Knn, Pca, Ridge};
use spectok_train::finetune::data::pool_tokens;
use spectok_train::finetune::metrics::{
    class_metrics, confusion_matrix, median, param_metrics, redshift_metrics,
};
use spectok_train::finetune::{
    cached_embeddings, finetune, load_head, load_samples, part_of, predict_samples,
    read_labels_csv, targets, write_predictions, FinetuneConfig, HeadKind, Part, Report, Task,
    TaskMetrics, HEAD_META, HEAD_WEIGHTS, METRICS_JSON, TEST_PREDICTIONS,
};
use spectok_train::finetune::{cached_hidden_states, embed_hidden, load_checkpoint_tail, Sample};
use spectok_train::TrainConfig;

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn redshift_metrics_match_hand_values() {
    // |Δz|/(1+z): 0.01, 0.02, 0.1, 0.2 (signs +, −, +, +).
    let truth = [0.0, 1.0, 0.5, 3.0];
    let pred = [0.01, 0.96, 0.65, 3.8];
    let m = redshift_metrics(&pred, &truth);
    assert_eq!(m.n, 4);
    // median of 0.01, 0.02, 0.1, 0.2 = 0.06
    assert!(close(m.sigma_nmad, 1.4826 * 0.06, 1e-12), "{m:?}");
    // median of 0.01, −0.02, 0.1, 0.2 = (0.01 + 0.1) / 2
    assert!(close(m.bias, 0.055, 1e-12), "{m:?}");
    assert!(close(m.outliers_005, 0.5, 1e-12));
    assert!(close(m.outliers_015, 0.25, 1e-12));
    assert!(median(&[]).is_nan());
    assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), 2.0);
}

#[test]
fn class_metrics_match_hand_values() {
    let names: Vec<String> = ["GALAXY", "QSO", "STAR"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let truth = [0, 0, 0, 1, 1, 2];
    let pred = [0, 0, 1, 1, 2, 2];
    let c = confusion_matrix(&pred, &truth, 3);
    assert_eq!(c, vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]);
    let m = class_metrics(&pred, &truth, &names);
    assert!(close(m.accuracy, 4.0 / 6.0, 1e-12));
    assert!(close(m.per_class["GALAXY"], 2.0 / 3.0, 1e-12));
    assert!(close(m.per_class["QSO"], 0.5, 1e-12));
    assert!(close(m.per_class["STAR"], 1.0, 1e-12));
    assert!(close(
        m.mean_class_accuracy,
        (2.0 / 3.0 + 0.5 + 1.0) / 3.0,
        1e-12
    ));
}

#[test]
fn param_metrics_match_hand_values() {
    let truth = [5000.0, 5100.0, f64::NAN, 4800.0];
    let pred = [5030.0, 5080.0, 9999.0, 4700.0];
    let m = param_metrics(&pred, &truth);
    assert_eq!(m.n, 3);
    // |d| = 30, 20, 100 → median 30; d = 30, −20, −100 → median −20
    assert_eq!(m.mad, 30.0);
    assert_eq!(m.bias, -20.0);
}

#[test]
fn ridge_pca_knn_recover_simple_structure() {
    // y = 2 x0 − 3 x1 + 1 exactly.
    let x: Vec<Vec<f64>> = (0..50)
        .map(|i| {
            vec![
                (i as f64 * 0.37).sin(),
                (i as f64 * 0.11).cos(),
                i as f64 % 7.0,
            ]
        })
        .collect();
    let y: Vec<Vec<f64>> = x
        .iter()
        .map(|r| vec![2.0 * r[0] - 3.0 * r[1] + 1.0])
        .collect();
    let r = Ridge::fit(&x, &y, 1e-9);
    for (xi, yi) in x.iter().zip(&y) {
        assert!(close(r.predict(xi)[0], yi[0], 1e-5), "{:?}", r.predict(xi));
    }
    let sol = cholesky_solve(&[4.0, 2.0, 2.0, 3.0], &[2.0, 1.0], 2).unwrap();
    assert!(close(sol[0], 0.5, 1e-12) && close(sol[1], 0.0, 1e-12));
    assert!(cholesky_solve(&[0.0, 1.0, 1.0, 0.0], &[1.0, 1.0], 2).is_none());
    // Points along (1, 1, 0) with small noise: the first component.
    let pts: Vec<Vec<f64>> = (0..40)
        .map(|i| {
            let t = i as f64 - 20.0;
            vec![t + 0.01 * (i % 3) as f64, t, 0.02 * (i % 5) as f64]
        })
        .collect();
    let pca = Pca::fit(&pts, 1, 10);
    let c = &pca.components[0];
    let s = std::f64::consts::FRAC_1_SQRT_2;
    assert!(
        close(c[0].abs(), s, 1e-3) && close(c[1].abs(), s, 1e-3),
        "{c:?}"
    );
    let line: Vec<Vec<f64>> = (0..20).map(|i| vec![i as f64, 2.0 * i as f64]).collect();
    let knn = Knn::new(&line, 3);
    assert_eq!(knn.neighbours(&line[10])[0], 10);
    let mut nb = knn.neighbours(&line[10]);
    nb.sort();
    assert_eq!(nb, vec![9, 10, 11]);
    // Token pooling keeps short sequences and averages long ones.
    let v: Vec<f32> = (0..10).map(|i| i as f32).collect(); // 5 tokens of width 2
    assert_eq!(pool_tokens(&v, 2, 8), v);
    assert_eq!(pool_tokens(&v, 2, 2), vec![2.0, 3.0, 7.0, 8.0]);
}

#[test]
fn split_is_stable_and_proportional() {
    let mut counts = HashMap::new();
    for i in 0..20_000 {
        let id = format!("obj{i}");
        let p = part_of(&id, 0.1, 0.2, 7);
        assert_eq!(p, part_of(&format!(" {id} "), 0.1, 0.2, 7));
        *counts.entry(p).or_insert(0usize) += 1;
    }
    let f = |p| counts[&p] as f64 / 20_000.0;
    assert!(close(f(Part::Test), 0.2, 0.015), "{counts:?}");
    assert!(close(f(Part::Val), 0.1, 0.015), "{counts:?}");
    assert!(close(f(Part::Train), 0.7, 0.015), "{counts:?}");
}

#[test]
fn labels_csv_is_read_and_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("labels.csv");
    std::fs::write(&p, "object_id,z,class,teff\na,0.5,galaxy,\nb,,QSO,5100\n").unwrap();
    let t = read_labels_csv(&p).unwrap();
    assert_eq!(t["a"].redshift, Some(0.5));
    assert_eq!(t["a"].class.as_deref(), Some("GALAXY"));
    assert_eq!(t["a"].teff, None);
    assert_eq!(t["b"].teff, Some(5100.0));
    std::fs::write(&p, "object_id,z\na,abc\n").unwrap();
    let e = read_labels_csv(&p).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("column z"), "{e}");
    std::fs::write(&p, "name,z\na,1\n").unwrap();
    assert!(read_labels_csv(&p)
        .unwrap_err()
        .to_string()
        .contains("object_id"));
}

#[test]
fn config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.json");
    std::fs::write(&p, r#"{"task": "class", "epoks": 3}"#).unwrap();
    let e = FinetuneConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("epoks"), "{e}");
    std::fs::write(
        &p,
        r#"{"task": "class", "val_fraction": 0.5, "test_fraction": 0.5}"#,
    )
    .unwrap();
    let e = FinetuneConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("val_fraction"), "{e}");
    // The committed configs parse.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for t in ["redshift", "class", "stellar"] {
        let c =
            FinetuneConfig::from_file(&root.join(format!("configs/finetune-{t}.json"))).unwrap();
        assert_eq!(c.task.name(), t);
    }
}

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo")
}

/// A tiny tokenizer trained for a few steps on the demo mock survey,
/// once per test binary.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let prepare = PrepareConfig {
            patch_size: 32,
            ..PrepareConfig::default()
        };
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spectok-train-finetune-run");
        common::train(common::tiny_config(
            &demo_dir(),
            &["sdss", "desi", "apogee"],
            prepare,
            2,
            3,
            &out,
        ))
    })
}

#[test]
fn heads_train_score_save_and_predict_on_the_demo_mocks() {
    let m = EmbedModel::load(run_dir(), &Device::Cpu, None).unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let inputs = vec![demo_dir().display().to_string()];
    let opts = EmbedOptions::default();
    let (path, reused) = cached_embeddings(&m, &inputs, &cache, &opts, &mut ()).unwrap();
    assert!(!reused);
    let (path2, reused2) = cached_embeddings(&m, &inputs, &cache, &opts, &mut ()).unwrap();
    assert!(reused2 && path2 == path, "the second call reuses the cache");
    let (samples, dim, sha) = load_samples(&path, 64).unwrap();
    assert_eq!(dim, 16);
    assert_eq!(sha, m.sha256);
    assert!(samples.len() >= 130, "{} spectra", samples.len());
    assert!(samples
        .iter()
        .all(|s| s.tokens.len() % dim == 0 && s.n_tokens(dim) >= 2));
    assert!(samples.iter().all(|s| s.n_tokens(dim) <= 64));

    // Labels of the mocks: every class labelled, stars carry parameters.
    let t = targets(Task::Class, &samples, &[]);
    assert_eq!(t.names, vec!["GALAXY", "QSO", "STAR"]);
    assert_eq!(t.rows.len(), samples.len());
    let ts = targets(Task::Stellar, &samples, &[]);
    assert!(!ts.rows.is_empty() && ts.excluded["no teff/logg/fe_h"] > 0);
    assert_eq!(
        ts.rows.len() + ts.excluded.values().sum::<usize>(),
        samples.len()
    );

    for (task, kind) in [
        (Task::Class, HeadKind::Attentive),
        (Task::Redshift, HeadKind::Linear),
        (Task::Stellar, HeadKind::Attentive),
    ] {
        let mut cfg = FinetuneConfig {
            task,
            epochs: 4,
            patience: 2,
            batch_size: 32,
            val_fraction: 0.2,
            test_fraction: 0.3,
            knn_k: 3,
            pca_components: 4,
            ..FinetuneConfig::default()
        };
        cfg.head.kind = kind;
        cfg.head.hidden = 16;
        cfg.head.heads = 2;
        let out = work.path().join(task.name());
        let mut lines = Vec::new();
        let o = finetune(
            &cfg,
            &samples,
            dim,
            &m.checkpoint.display().to_string(),
            &m.sha256,
            &inputs,
            &out,
            &Device::Cpu,
            &mut |l| lines.push(l.to_string()),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", task.name()));
        for f in [HEAD_WEIGHTS, HEAD_META, METRICS_JSON, TEST_PREDICTIONS] {
            assert!(out.join(f).is_file(), "{} lacks {f}", task.name());
        }
        let r: Report =
            serde_json::from_str(&std::fs::read_to_string(out.join(METRICS_JSON)).unwrap())
                .unwrap();
        assert_eq!(r.counts, o.report.counts);
        assert_eq!(r.best_epoch, o.report.best_epoch);
        assert_eq!(r.results.len(), o.report.results.len());
        assert_eq!(r.results[0].model, o.report.results[0].model);
        assert!(r.epochs_run >= 1 && r.epochs_run <= 4 && r.best_epoch >= 1);
        assert!(lines.iter().any(|l| l.starts_with("epoch")), "{lines:?}");
        let labelled = targets(task, &samples, &cfg.classes).rows.len();
        assert_eq!(r.counts.values().sum::<usize>(), labelled);
        assert_eq!(o.test.len(), r.counts["test"]);
        // Head, two pooled-embedding baselines, and (the flux baseline)
        // the head and two baselines on one survey.
        let models: Vec<&str> = r.results.iter().map(|s| s.model.as_str()).collect();
        assert!(models.len() >= 3, "{models:?}");
        assert!(
            models.iter().any(|m| m.starts_with("ridge(pooled")),
            "{models:?}"
        );
        assert!(
            models.iter().any(|m| m.starts_with("knn3(pooled")),
            "{models:?}"
        );
        match (&r.results[0].metrics, task) {
            (TaskMetrics::Class(c), Task::Class) => {
                assert_eq!(c.n, r.counts["test"]);
                let total: u64 = c.confusion.iter().flatten().sum();
                assert_eq!(total as usize, c.n);
            }
            (TaskMetrics::Redshift(z), Task::Redshift) => {
                assert_eq!(z.n, r.counts["test"]);
                assert!(z.sigma_nmad.is_finite() && z.outliers_015 <= z.outliers_005);
            }
            (TaskMetrics::Stellar(p), Task::Stellar) => {
                assert!(p.contains_key("teff") && p["teff"].mad.is_finite());
            }
            (m, t) => panic!("{t:?} scored as {m:?}"),
        }
        // The saved head predicts what the trained one did.
        let h = load_head(&out, &Device::Cpu).unwrap();
        assert_eq!(h.meta.task, task);
        assert_eq!(h.meta.checkpoint_sha256, m.sha256);
        let preds = predict_samples(&h, &samples).unwrap();
        assert_eq!(preds.len(), samples.len());
        // An object may have several spectra (surveys, visits): the first
        // test prediction must be that of one of them.
        let csv = std::fs::read_to_string(out.join(TEST_PREDICTIONS)).unwrap();
        let first = csv.lines().nth(1).unwrap();
        let id = first.split(',').next().unwrap();
        let p0 = &o.test[0].1;
        let same = samples
            .iter()
            .zip(&preds)
            .filter(|(s, _)| s.object_id == id)
            .any(|(_, p)| {
                p.values
                    .iter()
                    .zip(&p0.values)
                    .all(|(a, b)| close(*a, *b, 1e-4 * (1.0 + b.abs())))
            });
        assert!(same, "{}: saved head disagrees on {id}", task.name());
        if task == Task::Redshift {
            assert!(preds
                .iter()
                .all(|p| p.errors[0] > 0.0 && p.values[0].is_finite()));
        }
        if task == Task::Class {
            let s: f64 = preds[0].probabilities.iter().sum();
            assert!(close(s, 1.0, 1e-4));
        }
        let pf = work.path().join(format!("{}.csv", task.name()));
        write_predictions(&pf, &h.meta, &samples, &preds).unwrap();
        let text = std::fs::read_to_string(&pf).unwrap();
        assert_eq!(text.lines().count(), samples.len() + 1);
        let bad = work.path().join("p.txt");
        assert!(write_predictions(&bad, &h.meta, &samples, &preds).is_err());
    }
}

/// The tokenizer of [`run_dir`] with two encoder blocks (same config and
/// training otherwise), once per test binary.
fn run_dir_two_blocks() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let mut cfg =
            TrainConfig::from_file(&run_dir().join(spectok_train::trainer::RUN_CONFIG_FILE))
                .expect("run config");
        cfg.model.encoder_layers = 2;
        cfg.out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spectok-train-finetune-run2");
        common::train(cfg)
    })
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The test-part samples of a finetuning run, in the order finetune
/// scores them.
fn test_part(cfg: &FinetuneConfig, samples: &[Sample]) -> Vec<Sample> {
    targets(cfg.task, samples, &cfg.classes)
        .rows
        .into_iter()
        .filter(|&i| {
            part_of(
                &samples[i].object_id,
                cfg.val_fraction,
                cfg.test_fraction,
                cfg.split_seed,
            ) == Part::Test
        })
        .map(|i| samples[i].clone())
        .collect()
}

#[test]
fn unfreezing_the_last_blocks_tunes_them_and_predict_agrees() {
    let dev = Device::Cpu;
    let m = EmbedModel::load(run_dir_two_blocks(), &dev, None).unwrap();
    assert_eq!(m.model.config().encoder_layers, 2);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // SDSS and DESI mocks: every class, and fast to read.
    let inputs: Vec<String> = ["sdss", "desi"]
        .iter()
        .map(|s| demo_dir().join(s).display().to_string())
        .collect();
    let opts = EmbedOptions::default();

    // Final tokens and the hidden states after each block are cached apart.
    let (tok_path, _) = cached_embeddings(&m, &inputs, &cache, &opts, &mut ()).unwrap();
    let (h1_path, reused) = cached_hidden_states(&m, &inputs, &cache, 1, &opts, &mut ()).unwrap();
    assert!(!reused && h1_path != tok_path);
    let name = h1_path.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("hidden-b1-"), "{name}");
    let (again, reused) = cached_hidden_states(&m, &inputs, &cache, 1, &opts, &mut ()).unwrap();
    assert!(reused && again == h1_path);
    let (h0_path, _) = cached_hidden_states(&m, &inputs, &cache, 0, &opts, &mut ()).unwrap();
    assert!(h0_path != h1_path && h0_path != tok_path);

    // The checkpoint's last block and norm, run on the cached hidden
    // states, give the frozen encoder's tokens and pooled embedding.
    let (frozen, dim, _) = load_samples(&tok_path, 0).unwrap();
    let (hidden, hdim, sha) = load_samples(&h1_path, 0).unwrap();
    assert_eq!((dim, hdim), (16, 16));
    assert_eq!(sha, m.sha256);
    assert_eq!(frozen.len(), hidden.len());
    let varmap = VarMap::new();
    let (tail, model) = load_checkpoint_tail(&varmap, &m.checkpoint, &m.sha256, 1, &dev).unwrap();
    assert_eq!(model.encoder_layers, 2);
    assert_eq!(tail.from_block(), 1);
    let refs: Vec<&Sample> = hidden.iter().collect();
    let enc = tail.encode(&refs, &dev, false).unwrap();
    let pooled = enc.pooled.to_vec2::<f32>().unwrap();
    let scale = enc.scale_token.to_vec2::<f32>().unwrap();
    for (i, (f, h)) in frozen.iter().zip(&hidden).enumerate() {
        assert_eq!((&f.object_id, &f.source), (&h.object_id, &h.source));
        assert_eq!(f.n_tokens(dim), h.n_tokens(dim), "{}", f.source);
        let d = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
        };
        assert!(d(&pooled[i], &f.pooled) <= 1e-5, "{}: pooled", f.source);
        assert!(
            d(&h.pooled, &f.pooled) <= 1e-5,
            "{}: cached pooled",
            f.source
        );
        assert!(
            d(&scale[i], &f.tokens[..dim]) <= 1e-5,
            "{}: scale",
            f.source
        );
    }

    // K = 1 with the attentive class head; max_tokens pools the hidden
    // rows of the longer spectra.
    let mut cfg = FinetuneConfig {
        task: Task::Class,
        epochs: 3,
        patience: 3,
        batch_size: 32,
        lr: 3e-3,
        val_fraction: 0.2,
        test_fraction: 0.3,
        max_tokens: 64,
        baselines: false,
        unfreeze_last: 1,
        ..FinetuneConfig::default()
    };
    cfg.head.hidden = 16;
    cfg.head.heads = 2;
    let (samples, _, _) = load_samples(&h1_path, cfg.max_tokens).unwrap();
    assert!(samples.iter().all(|s| s.n_tokens(dim) <= 64));
    let ckpt = m.checkpoint.display().to_string();
    let out = work.path().join("class-k1");
    let o = finetune(
        &cfg,
        &samples,
        dim,
        &ckpt,
        &m.sha256,
        &inputs,
        &out,
        &dev,
        &mut |_| {},
    )
    .unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(HEAD_META)).unwrap()).unwrap();
    assert_eq!(meta["unfreeze_last"], 1);
    assert_eq!(meta["encoder"]["encoder_layers"], 2);
    assert_eq!(
        o.report.results[0].model,
        "head(attentive, last block tuned)"
    );

    // The tuned block and norm moved away from the checkpoint's; nothing
    // else of the encoder is in the head, and the checkpoint is unchanged.
    let weights = m.checkpoint.join(spectok_model::WEIGHTS_FILE);
    let ck = candle_core::safetensors::load(&weights, &dev).unwrap();
    let hd = candle_core::safetensors::load(out.join(HEAD_WEIGHTS), &dev).unwrap();
    let mut tuned: Vec<&String> = hd
        .keys()
        .filter(|k| k.starts_with("encoder_tail."))
        .collect();
    tuned.sort();
    // 16 tensors of block 1 (two norms, four projections, two MLP layers)
    // and the final norm's 2.
    assert_eq!(tuned.len(), 18, "{tuned:?}");
    for name in &tuned {
        assert!(
            name.starts_with("encoder_tail.blocks.1.") || name.starts_with("encoder_tail.norm."),
            "{name}"
        );
    }
    for name in [
        "blocks.1.attn.q.weight",
        "blocks.1.mlp.fc1.weight",
        "norm.weight",
    ] {
        let (a, b) = (
            &hd[&format!("encoder_tail.{name}")],
            &ck[&format!("encoder.{name}")],
        );
        assert_eq!(a.dims(), b.dims());
        assert!(max_abs_diff(a, b) > 1e-6, "{name} did not change");
    }
    assert_eq!(
        spectok_train::embed::sha256_file(&weights).unwrap(),
        m.sha256
    );
    let fresh = work.path().join("fresh.h5");
    let one = demo_dir().join("desi/coadd-0-90000-thru20250101.fits.gz");
    embed_hidden(&m, &[one.display().to_string()], &fresh, 1, &opts, &mut ()).unwrap();
    let (again, _, _) = load_samples(&fresh, 0).unwrap();
    assert!(!again.is_empty());
    for a in &again {
        let b = hidden
            .iter()
            .find(|b| b.source == a.source)
            .expect("same spectrum");
        assert_eq!(a.tokens, b.tokens, "{}", a.source);
    }

    // The saved head (frozen block 0, tuned block 1, head) predicts what
    // finetune wrote for the test part.
    let h = load_head(&out, &dev).unwrap();
    assert_eq!(h.meta.unfreeze_last, 1);
    assert_eq!(h.tail.as_ref().map(|t| t.from_block()), Some(1));
    let test = test_part(&cfg, &samples);
    assert_eq!(test.len(), o.test.len());
    let preds = predict_samples(&h, &test).unwrap();
    let csv = std::fs::read_to_string(out.join(TEST_PREDICTIONS)).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), test.len());
    for (((p, (_, q)), row), s) in preds.iter().zip(&o.test).zip(&rows).zip(&test) {
        assert!(
            row.starts_with(&format!("{},{},", s.object_id, s.survey)),
            "{row}"
        );
        let written: Vec<f64> = row
            .rsplit(',')
            .take(3)
            .map(|c| c.parse().unwrap())
            .collect();
        let written: Vec<f64> = written.into_iter().rev().collect();
        for ((a, b), c) in p.probabilities.iter().zip(&q.probabilities).zip(&written) {
            assert!(
                (a - b).abs() <= 1e-5 && (a - c).abs() <= 1e-5,
                "{row}: {a} {b} {c}"
            );
        }
    }

    // K = N with the linear head: the pooled re-encoded tokens.
    let (samples0, _, _) = load_samples(&h0_path, cfg.max_tokens).unwrap();
    let mut lin = FinetuneConfig {
        task: Task::Redshift,
        epochs: 2,
        unfreeze_last: 2,
        ..cfg.clone()
    };
    lin.head.kind = HeadKind::Linear;
    let out0 = work.path().join("redshift-k2");
    let o0 = finetune(
        &lin,
        &samples0,
        dim,
        &ckpt,
        &m.sha256,
        &inputs,
        &out0,
        &dev,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        o0.report.results[0].model,
        "head(linear, last 2 blocks tuned)"
    );
    let h0 = load_head(&out0, &dev).unwrap();
    assert_eq!(h0.tail.as_ref().map(|t| t.from_block()), Some(0));
    let test0 = test_part(&lin, &samples0);
    let preds0 = predict_samples(&h0, &test0).unwrap();
    assert_eq!(preds0.len(), o0.test.len());
    for (p, (_, q)) in preds0.iter().zip(&o0.test) {
        assert!((p.values[0] - q.values[0]).abs() <= 1e-5 * (1.0 + q.values[0].abs()));
        assert!((p.errors[0] - q.errors[0]).abs() <= 1e-5 * (1.0 + q.errors[0].abs()));
    }

    // Bad values name their field, on one line.
    let bad = FinetuneConfig {
        unfreeze_last: 3,
        ..cfg.clone()
    };
    let e = finetune(
        &bad,
        &samples,
        dim,
        &ckpt,
        &m.sha256,
        &inputs,
        &work.path().join("bad"),
        &dev,
        &mut |_| {},
    )
    .err()
    .expect("K above the encoder's blocks")
    .to_string();
    assert!(e.contains("unfreeze_last") && !e.contains('\n'), "{e}");
    let e = FinetuneConfig {
        unfreeze_lr_ratio: 0.0,
        ..cfg.clone()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("unfreeze_lr_ratio"), "{e}");
    let p = work.path().join("c.json");
    std::fs::write(&p, r#"{"task": "class", "unfreeze_lr_ratio": -1}"#).unwrap();
    let e = FinetuneConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("unfreeze_lr_ratio"), "{e}");
    std::fs::write(&p, r#"{"task": "class", "unfreeze_last": -1}"#).unwrap();
    let e = FinetuneConfig::from_file(&p).unwrap_err().to_string();
    assert!(e.contains("unfreeze_last"), "{e}");
    // Hidden states of another checkpoint are refused.
    let e = finetune(
        &cfg,
        &samples,
        dim,
        &ckpt,
        &"0".repeat(64),
        &inputs,
        &work.path().join("bad"),
        &dev,
        &mut |_| {},
    )
    .err()
    .expect("sha mismatch")
    .to_string();
    assert!(e.contains("sha256"), "{e}");

    // A head written before unfreeze_last existed (no such fields) loads
    // as a head on the frozen encoder.
    let plain = FinetuneConfig {
        epochs: 1,
        unfreeze_last: 0,
        ..lin.clone()
    };
    let out_old = work.path().join("old");
    finetune(
        &plain,
        &frozen,
        dim,
        &ckpt,
        &m.sha256,
        &inputs,
        &out_old,
        &dev,
        &mut |_| {},
    )
    .unwrap();
    let mp = out_old.join(HEAD_META);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mp).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    assert!(o.remove("unfreeze_last").is_some() && !o.contains_key("encoder"));
    let c = o["config"].as_object_mut().unwrap();
    c.remove("unfreeze_last");
    c.remove("unfreeze_lr_ratio");
    std::fs::write(&mp, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let old = load_head(&out_old, &dev).unwrap();
    assert_eq!(old.meta.unfreeze_last, 0);
    assert!(old.tail.is_none());
    assert_eq!(predict_samples(&old, &frozen).unwrap().len(), frozen.len());
}
