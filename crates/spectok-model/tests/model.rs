//! Shapes, masks, invariances, gradients, decoding and loss of the
//! tokenizer on synthetic ragged batches.

mod common;

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use spectok_data::PatchState;
use spectok_model::{Config, HiddenPatches, MaskScore, Tokenizer, WavelengthGrid};

use common::{collate, max_diff, model, ragged_batch, rows, spectrum, tensor_diff, Spec};

const TOL: f32 = 1e-5;

/// Valid tokens of spectrum `b` of an encoding, in patch order.
fn valid_tokens(model: &Tokenizer, specs: &[Spec], max_patches: usize, b: usize) -> Vec<Vec<f32>> {
    let batch = collate(specs, max_patches);
    let enc = model.encode(&batch, false).unwrap();
    let all = rows(&enc.tokens, b);
    specs[b]
        .valid()
        .into_iter()
        .map(|i| all[i].clone())
        .collect()
}

fn assert_rows_close(a: &[Vec<f32>], b: &[Vec<f32>], tol: f32) {
    assert_eq!(a.len(), b.len(), "row counts differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = max_diff(x, y);
        assert!(d <= tol, "row {i} differs by {d} > {tol}");
    }
}

#[test]
fn shapes_and_masks_for_a_ragged_batch() {
    let cfg = Config::demo();
    let (m, _) = model(&cfg, 0);
    let (specs, batch) = ragged_batch(cfg.patch_size);
    let enc = m.encode(&batch, false).unwrap();
    let (b, t, d) = (3, 7, cfg.d_model);
    assert_eq!(enc.tokens.dims(), &[b, t, d]);
    assert_eq!(enc.token_mask.dims(), &[b, t]);
    assert_eq!(enc.token_mask.dtype(), DType::U8);
    assert_eq!(enc.scale_token.dims(), &[b, d]);
    assert_eq!(enc.pooled.dims(), &[b, d]);
    assert!(enc.token_ids.is_none());
    let mask = enc.token_mask.to_vec2::<u8>().unwrap();
    for (s, spec) in specs.iter().enumerate() {
        for (i, &v) in mask[s].iter().enumerate() {
            let want = i < spec.n_patches() && spec.state[i] == PatchState::Valid;
            assert_eq!(v == 1, want, "spectrum {s} patch {i}");
        }
    }
    // Pooled = mean of the valid tokens.
    let pooled = enc.pooled.to_vec2::<f32>().unwrap();
    for (s, spec) in specs.iter().enumerate() {
        let toks = rows(&enc.tokens, s);
        let valid = spec.valid();
        let mean: Vec<f32> = (0..d)
            .map(|k| valid.iter().map(|&i| toks[i][k]).sum::<f32>() / valid.len() as f32)
            .collect();
        assert!(max_diff(&mean, &pooled[s]) < 1e-5);
    }
    let recon = m.reconstruct(&batch).unwrap();
    assert_eq!(recon.dims(), &[b, t, cfg.patch_size]);
    let all: Vec<f32> = enc.tokens.flatten_all().unwrap().to_vec1().unwrap();
    assert!(all.iter().all(|v| v.is_finite()));
}

#[test]
fn padding_does_not_change_valid_tokens() {
    let cfg = Config::demo();
    let (m, _) = model(&cfg, 1);
    let (specs, _) = ragged_batch(cfg.patch_size);
    for b in 0..specs.len() {
        let tight = valid_tokens(&m, &specs, 0, b);
        let padded = valid_tokens(&m, &specs, 19, b);
        assert_rows_close(&tight, &padded, TOL);
    }
}

#[test]
fn invalid_patches_do_not_change_valid_tokens() {
    let cfg = Config::demo();
    let (m, _) = model(&cfg, 2);
    let (specs, _) = ragged_batch(cfg.patch_size);
    let base = valid_tokens(&m, &specs, 0, 0);
    for (at, seed) in [(0, 10), (3, 11), (specs[0].n_patches(), 12)] {
        let mut more = specs.clone();
        more[0] = specs[0]
            .with_invalid_at(at, seed)
            .with_invalid_at(at, seed + 100);
        let got = valid_tokens(&m, &more, 0, 0);
        assert_rows_close(&base, &got, TOL);
    }
}

#[test]
fn batch_position_does_not_change_valid_tokens() {
    let cfg = Config::demo();
    let (m, _) = model(&cfg, 3);
    let (specs, _) = ragged_batch(cfg.patch_size);
    let alone = valid_tokens(&m, &specs[1..2], 0, 0);
    let first = valid_tokens(
        &m,
        &[specs[1].clone(), specs[0].clone(), specs[2].clone()],
        0,
        0,
    );
    let last = valid_tokens(
        &m,
        &[specs[0].clone(), specs[2].clone(), specs[1].clone()],
        0,
        2,
    );
    assert_rows_close(&alone, &first, TOL);
    assert_rows_close(&alone, &last, TOL);
}

#[test]
fn tail_padding_pixels_do_not_change_the_encoding() {
    // A tail patch's padding repeats the last real wavelength; changing the
    // flux stored there (weight 0) must not change anything either.
    let cfg = Config::demo();
    let (m, _) = model(&cfg, 4);
    let spec = spectrum(7, 4, cfg.patch_size, 5000.0, 1.0, &[], 3);
    let mut noisy = spec.clone();
    let p = cfg.patch_size;
    for j in 3..p {
        noisy.flux[3 * p + j] = 123.0;
        noisy.sigma[3 * p + j] = 9.0;
    }
    let a = valid_tokens(&m, &[spec], 0, 0);
    let b = valid_tokens(&m, &[noisy], 0, 0);
    assert_rows_close(&a, &b, 0.0);
}

#[test]
fn spectrum_without_valid_patches_pools_to_its_scale_token() {
    let cfg = Config::demo();
    let (m, _) = model(&cfg, 5);
    let p = cfg.patch_size;
    let dead = spectrum(8, 3, p, 6000.0, 1.0, &[0, 1, 2], p);
    let alive = spectrum(9, 4, p, 6000.0, 1.0, &[], p);
    let batch = collate(&[alive, dead], 0);
    let enc = m.encode(&batch, false).unwrap();
    let pooled = enc.pooled.to_vec2::<f32>().unwrap();
    let scale = enc.scale_token.to_vec2::<f32>().unwrap();
    assert_eq!(pooled[1], scale[1]);
    assert!(max_diff(&pooled[0], &scale[0]) > 1e-3);
    assert_eq!(enc.token_mask.to_vec2::<u8>().unwrap()[1], vec![0; 4]);
    // The decoder still runs (it sees the scale token) and the loss has
    // nothing to score for that spectrum.
    let loss = m.loss(&batch, None, false).unwrap();
    assert!(loss.loss.to_scalar::<f32>().unwrap().is_finite());
}

fn check_all_gradients(cfg: &Config, hidden_ratio: f64) {
    let (m, varmap) = model(cfg, 6);
    let (_, batch) = ragged_batch(cfg.patch_size);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let hidden = HiddenPatches::sample(&batch, hidden_ratio, &mut rng);
    let out = m
        .loss(&batch, (hidden_ratio > 0.0).then_some(&hidden), true)
        .unwrap();
    let grads = out.loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    assert!(data.len() > 20, "only {} variables", data.len());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut missing = Vec::new();
    for name in names {
        let g = grads.get(data[name].as_tensor());
        let nonzero = g
            .map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            })
            .unwrap_or(false);
        if !nonzero {
            missing.push(name.clone());
        }
    }
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

#[test]
fn every_parameter_gets_a_gradient() {
    check_all_gradients(&Config::demo(), 0.0);
}

#[test]
fn every_parameter_gets_a_gradient_with_fsq_and_masking() {
    let cfg = Config {
        fsq_levels: vec![8, 5, 5],
        mask_ratio: 0.3,
        mask_score: MaskScore::Both,
        dropout: 0.1,
        ..Config::demo()
    };
    check_all_gradients(&cfg, cfg.mask_ratio);
}

#[test]
fn decoding_onto_another_grid() {
    let cfg = Config::demo();
    let (m, _) = model(&cfg, 7);
    let (_, batch) = ragged_batch(cfg.patch_size);
    let enc = m.encode(&batch, false).unwrap();
    // Another survey's grid: APOGEE-like steps for every spectrum, 45 and
    // 13 pixels long (ragged, with a short tail patch).
    let grids: Vec<Vec<f64>> = (0..3)
        .map(|s| {
            let n = if s == 1 { 13 } else { 45 };
            (0..n).map(|i| 15200.0 + 0.21 * i as f64).collect()
        })
        .collect();
    let grid = WavelengthGrid::from_spectra(&grids, cfg.patch_size).unwrap();
    assert_eq!(grid.n_patches, 6);
    let out = m.decode(&enc, &grid, false).unwrap();
    assert_eq!(out.dims(), &[3, 6, cfg.patch_size]);

    // Target patches are decoded independently: the first two patches
    // alone give the same values as within the full grid.
    let p = cfg.patch_size;
    let sub: Vec<f64> = (0..3)
        .flat_map(|s| grid.wavelength[s * 6 * p..s * 6 * p + 2 * p].to_vec())
        .collect();
    let sub = WavelengthGrid::new(3, 2, p, sub).unwrap();
    let out_sub = m.decode(&enc, &sub, false).unwrap();
    for s in 0..3 {
        let full = rows(&out, s);
        let part = rows(&out_sub, s);
        for i in 0..2 {
            assert!(max_diff(&full[i], &part[i]) <= TOL);
        }
    }

    // Moving one pixel's wavelength changes its patch's output only.
    let mut moved = grid.clone();
    moved.wavelength[3] += 0.1;
    let out_moved = m.decode(&enc, &moved, false).unwrap();
    let (a, b) = (rows(&out, 0), rows(&out_moved, 0));
    assert!(max_diff(&a[0], &b[0]) > 1e-6);
    for i in 1..6 {
        assert!(max_diff(&a[i], &b[i]) <= TOL);
    }
    assert!(m
        .decode(
            &enc,
            &WavelengthGrid::new(2, 1, p, vec![5000.0; 2 * p]).unwrap(),
            false
        )
        .is_err());
}

#[test]
fn loss_is_the_noise_weighted_masked_mean() {
    let cfg = Config {
        ivar_clip: 1000.0,
        ..Config::demo()
    };
    let (m, _) = model(&cfg, 8);
    let (_, mut batch) = ragged_batch(cfg.patch_size);
    // Some weights above the clip, some below.
    for (i, w) in batch.weight.iter_mut().enumerate() {
        if *w > 0.0 && i % 3 == 0 {
            *w = 50.0;
        }
    }
    let out = m.loss(&batch, None, false).unwrap();
    let recon: Vec<f32> = out.reconstruction.flatten_all().unwrap().to_vec1().unwrap();
    let (mut num, mut den) = (0f64, 0usize);
    let p = batch.patch_size;
    for (i, &r) in recon.iter().enumerate() {
        let w = batch.weight[i];
        if w > 0.0 && batch.patch_state[i / p] == PatchState::Valid {
            num += (w.min(1000.0) as f64) * ((batch.flux[i] - r) as f64).powi(2);
            den += 1;
        }
    }
    let want = num / den as f64;
    let got = out.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() <= 1e-4 * want, "loss {got} vs {want}");
    assert_eq!(out.scored_pixels, den);
    assert!(out.hidden.is_none());
}

#[test]
fn masked_modelling_scores_hidden_patches_and_hides_them() {
    let base = Config::demo();
    let (_, batch) = ragged_batch(base.patch_size);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let hidden = HiddenPatches::sample(&batch, 0.4, &mut rng);
    assert!(hidden.count() >= 3);
    for score in [MaskScore::Hidden, MaskScore::All, MaskScore::Both] {
        let cfg = Config {
            mask_score: score,
            ..base.clone()
        };
        let (m, _) = model(&cfg, 9);
        let out = m.loss(&batch, Some(&hidden), false).unwrap();
        let h = out.hidden.as_ref().unwrap().to_scalar::<f32>().unwrap();
        let a = out.all.to_scalar::<f32>().unwrap();
        let l = out.loss.to_scalar::<f32>().unwrap();
        let want = match score {
            MaskScore::Hidden => h,
            MaskScore::All => a,
            MaskScore::Both => a + h,
        };
        assert!((l - want).abs() <= 1e-5 * want.abs(), "{score:?}");
        assert!(h > 0.0 && a > 0.0 && h != a);
    }
    // A hidden patch's content does not reach the visible tokens nor the
    // reconstruction.
    let (m, _) = model(&base, 10);
    let k = hidden.hidden.iter().position(|&h| h).unwrap();
    let p = batch.patch_size;
    let mut changed = batch.clone();
    for v in &mut changed.flux[k * p..(k + 1) * p] {
        *v += 7.0;
    }
    let e1 = m.encode_hidden(&batch, Some(&hidden), false).unwrap();
    let e2 = m.encode_hidden(&changed, Some(&hidden), false).unwrap();
    let mask = e1.token_mask.to_vec2::<u8>().unwrap();
    assert_eq!(mask[k / batch.max_patches][k % batch.max_patches], 0);
    let grid = WavelengthGrid::from_batch(&batch);
    let r1 = m.decode(&e1, &grid, false).unwrap();
    let r2 = m.decode(&e2, &grid, false).unwrap();
    for (s, seen) in mask.iter().enumerate() {
        let (t1, t2) = (rows(&e1.tokens, s), rows(&e2.tokens, s));
        for (i, &v) in seen.iter().enumerate() {
            if v == 1 {
                assert!(max_diff(&t1[i], &t2[i]) <= TOL);
            }
        }
        let (a, b) = (rows(&r1, s), rows(&r2, s));
        for (x, y) in a.iter().zip(&b) {
            assert!(max_diff(x, y) <= TOL);
        }
    }
}

#[test]
fn hidden_patch_sampling_is_deterministic_and_keeps_one_visible() {
    let p = 8;
    let specs = vec![
        spectrum(1, 10, p, 4000.0, 1.0, &[3], p),
        spectrum(2, 2, p, 4000.0, 1.0, &[], p),
        spectrum(3, 1, p, 4000.0, 1.0, &[], p),
    ];
    let batch = collate(&specs, 0);
    let a = HiddenPatches::sample(&batch, 0.5, &mut ChaCha8Rng::seed_from_u64(5));
    let b = HiddenPatches::sample(&batch, 0.5, &mut ChaCha8Rng::seed_from_u64(5));
    let c = HiddenPatches::sample(&batch, 0.5, &mut ChaCha8Rng::seed_from_u64(6));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let t = batch.max_patches;
    let per: Vec<usize> = (0..3)
        .map(|s| a.hidden[s * t..(s + 1) * t].iter().filter(|h| **h).count())
        .collect();
    // 9 valid → round(4.5) = 5; 2 valid → 1; 1 valid → none.
    assert_eq!(per, vec![5, 1, 0]);
    for (k, &h) in a.hidden.iter().enumerate() {
        if h {
            assert_eq!(batch.patch_state[k], PatchState::Valid);
        }
    }
    let none = HiddenPatches::sample(&batch, 0.0, &mut ChaCha8Rng::seed_from_u64(5));
    assert_eq!(none.count(), 0);
}

#[test]
fn fsq_gives_ids_that_map_back_to_the_tokens() {
    let cfg = Config {
        fsq_levels: vec![8, 5, 5, 5],
        ..Config::demo()
    };
    assert_eq!(cfg.codebook_size(), 1000);
    let (m, _) = model(&cfg, 11);
    let (_, batch) = ragged_batch(cfg.patch_size);
    let enc = m.encode(&batch, false).unwrap();
    let ids = enc.token_ids.clone().unwrap();
    assert_eq!(ids.dims(), &[3, 7]);
    assert_eq!(ids.dtype(), DType::U32);
    let flat: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
    assert!(flat.iter().all(|&i| i < 1000));
    let distinct: std::collections::BTreeSet<u32> = flat.iter().copied().collect();
    assert!(distinct.len() > 1, "all tokens got the same id");
    let back = m.fsq().unwrap().tokens_from_ids(&ids, DType::F32).unwrap();
    for s in 0..3 {
        let (a, b) = (rows(&enc.tokens, s), rows(&back, s));
        for i in 0..7 {
            assert!(max_diff(&a[i], &b[i]) <= 1e-5);
        }
    }
}

#[test]
fn dropout_only_in_training_mode() {
    let cfg = Config {
        dropout: 0.3,
        ..Config::demo()
    };
    let (m, _) = model(&cfg, 12);
    let (_, batch) = ragged_batch(cfg.patch_size);
    let eval1 = m.encode(&batch, false).unwrap().pooled;
    let eval2 = m.encode(&batch, false).unwrap().pooled;
    let train = m.encode(&batch, true).unwrap().pooled;
    assert_eq!(tensor_diff(&eval1, &eval2), 0.0);
    assert!(tensor_diff(&eval1, &train) > 1e-4);
}

#[test]
fn bf16_runs_and_stays_close_to_f32() {
    let cfg = Config::demo();
    let dev = common::device();
    let (m32, varmap) = Tokenizer::init(&cfg, &dev, DType::F32, 13).unwrap();
    let (m16, _) = Tokenizer::init(&cfg, &dev, DType::BF16, 13).unwrap();
    assert_eq!(m16.dtype(), DType::BF16);
    assert!(!varmap.all_vars().is_empty());
    let (_, batch) = ragged_batch(cfg.patch_size);
    let a = m32.encode(&batch, false).unwrap().pooled;
    let b = m16.encode(&batch, false).unwrap().pooled;
    assert_eq!(b.dtype(), DType::BF16);
    let diff = (a - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 0.1, "bf16 pooled differs by {diff}");
    let loss = m16.loss(&batch, None, true).unwrap();
    assert_eq!(loss.loss.dtype(), DType::F32);
    loss.loss.backward().unwrap();
}

#[test]
fn mixed_precision_trains_f32_weights_through_bf16_compute() {
    let cfg = Config::demo();
    let (m32, varmap) = model(&cfg, 15);
    let mixed = m32.clone().with_compute_dtype(DType::BF16);
    assert_eq!(mixed.dtype(), DType::F32);
    assert_eq!(mixed.compute_dtype(), DType::BF16);
    let (_, batch) = ragged_batch(cfg.patch_size);
    let enc = mixed.encode(&batch, false).unwrap();
    assert_eq!(enc.tokens.dtype(), DType::BF16);
    let l32 = m32.loss(&batch, None, true).unwrap().loss;
    let l16 = mixed.loss(&batch, None, true).unwrap().loss;
    assert_eq!(l16.dtype(), DType::F32);
    let (a, b) = (
        l32.to_scalar::<f32>().unwrap(),
        l16.to_scalar::<f32>().unwrap(),
    );
    assert!((a - b).abs() <= 0.05 * a.abs(), "f32 loss {a}, mixed {b}");
    let grads = l16.backward().unwrap();
    for var in varmap.all_vars() {
        let g = grads
            .get(var.as_tensor())
            .expect("every weight gets a gradient");
        assert_eq!(
            g.dtype(),
            DType::F32,
            "gradients reach the f32 master weights"
        );
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm.is_finite() && norm > 0.0, "gradient norm² {norm}");
    }
}

#[test]
fn batch_inconsistencies_are_errors_naming_the_field() {
    let cfg = Config::demo();
    let (m, _) = model(&cfg, 14);
    let (_, batch) = ragged_batch(cfg.patch_size);
    let mut bad = batch.clone();
    bad.sigma.pop();
    let e = m.encode(&bad, false).unwrap_err().to_string();
    assert!(e.contains("sigma"), "{e}");
    let mut bad = batch.clone();
    bad.log_scale.push(0.0);
    assert!(m
        .encode(&bad, false)
        .unwrap_err()
        .to_string()
        .contains("log_scale"));
    let other = collate(&[spectrum(1, 2, 4, 5000.0, 1.0, &[], 4)], 0);
    let e = m.encode(&other, false).unwrap_err().to_string();
    assert!(e.contains("patch_size"), "{e}");
}

#[test]
fn finishing_from_hidden_states_after_block_n_minus_k_equals_encode() {
    use spectok_model::encoder::EncoderTail;
    use spectok_model::tokenizer::EncoderState;
    for fsq_levels in [vec![], vec![8, 5, 5]] {
        let cfg = Config {
            encoder_layers: 3,
            fsq_levels,
            ..Config::demo()
        };
        let n = cfg.encoder_layers;
        let (m, varmap) = model(&cfg, 16);
        let (specs, batch) = ragged_batch(cfg.patch_size);
        let enc = m.encode(&batch, false).unwrap();
        for k in [0, 1, n] {
            let state = m.encode_until(&batch, n - k, false).unwrap();
            assert_eq!(state.blocks, n - k);
            assert_eq!(state.hidden.dims(), &[3, 8, cfg.d_model]);
            assert_eq!(state.key_mask.dims(), &[3, 8]);
            let fin = m.encode_from(&state, false).unwrap();
            assert!(
                tensor_diff(&fin.tokens, &enc.tokens) <= TOL,
                "k {k}: tokens"
            );
            assert!(
                tensor_diff(&fin.pooled, &enc.pooled) <= TOL,
                "k {k}: pooled"
            );
            assert!(tensor_diff(&fin.scale_token, &enc.scale_token) <= TOL);
            assert_eq!(
                fin.token_ids.as_ref().map(|t| t.to_vec2::<u32>().unwrap()),
                enc.token_ids.as_ref().map(|t| t.to_vec2::<u32>().unwrap()),
                "k {k}: ids"
            );
            // A tail built on its own from the same weight names, run on a
            // spectrum's scale row and valid rows alone (what the finetune
            // cache stores), gives that spectrum's valid tokens and pooled
            // embedding.
            let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &common::device());
            let tail = EncoderTail::new(&cfg, n - k, vb.pp("encoder")).unwrap();
            assert_eq!(tail.len(), k);
            for (s, spec) in specs.iter().enumerate() {
                let hidden = rows(&state.hidden, s);
                let valid = spec.valid();
                let mut keep: Vec<f32> = hidden[0].clone();
                for &i in &valid {
                    keep.extend_from_slice(&hidden[1 + i]);
                }
                let len = 1 + valid.len();
                let dev = common::device();
                let compact = EncoderState {
                    hidden: Tensor::from_vec(keep, (1, len, cfg.d_model), &dev).unwrap(),
                    key_mask: Tensor::ones((1, len), DType::U8, &dev).unwrap(),
                    token_mask: Tensor::ones((1, len - 1), DType::U8, &dev).unwrap(),
                    blocks: n - k,
                };
                let own = Tokenizer::finish_with(&compact, &tail, m.fsq(), false).unwrap();
                let got = rows(&own.tokens, 0);
                let want: Vec<Vec<f32>> = valid
                    .iter()
                    .map(|&i| rows(&enc.tokens, s)[i].clone())
                    .collect();
                assert_rows_close(&got, &want, TOL);
                let pooled = own.pooled.to_vec2::<f32>().unwrap();
                let want = enc.pooled.to_vec2::<f32>().unwrap();
                assert!(max_diff(&pooled[0], &want[s]) <= TOL, "k {k} spectrum {s}");
            }
            // A tail starting elsewhere is refused.
            if k > 0 {
                let other = EncoderTail::new(&cfg, n - k + 1, vb.pp("encoder")).unwrap();
                let e = Tokenizer::finish_with(&state, &other, m.fsq(), false).unwrap_err();
                assert!(e.to_string().contains("block"), "{e}");
            }
        }
        let e = m
            .encode_until(&batch, n + 1, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("encoder_layers"), "{e}");
    }
}

#[test]
fn the_inference_copy_computes_the_same_and_ignores_later_training() {
    use candle_nn::Optimizer;
    let cfg = Config {
        fsq_levels: vec![8, 5, 5],
        ..Config::demo()
    };
    let (m, varmap) = model(&cfg, 31);
    let inf = m.for_inference().unwrap();
    let (specs, small) = ragged_batch(cfg.patch_size);
    // 60 spectra × 8 rows: past the row count from which a trainable
    // layer copies W into Wᵀ per call, so both products of the trained
    // model are compared with the copy's.
    let many: Vec<Spec> = specs.iter().cycle().take(60).cloned().collect();
    let large = collate(&many, 0);
    let grid = WavelengthGrid::from_batch(&small);
    let mut before = Vec::new();
    for batch in [&small, &large] {
        let (a, b) = (
            m.encode(batch, false).unwrap(),
            inf.encode(batch, false).unwrap(),
        );
        assert!(tensor_diff(&a.tokens, &b.tokens) <= TOL, "tokens");
        assert!(tensor_diff(&a.pooled, &b.pooled) <= TOL, "pooled");
        assert_eq!(
            a.token_ids.map(|t| t.to_vec2::<u32>().unwrap()),
            b.token_ids.map(|t| t.to_vec2::<u32>().unwrap()),
        );
        before.push(b.pooled);
    }
    let (a, b) = (
        m.decode(&m.encode(&small, false).unwrap(), &grid, false)
            .unwrap(),
        inf.decode(&inf.encode(&small, false).unwrap(), &grid, false)
            .unwrap(),
    );
    assert!(tensor_diff(&a, &b) <= TOL, "reconstruction");
    // The copy's weights are its own: a training step of the original
    // moves the original's outputs, not the copy's.
    let mut sgd = candle_nn::SGD::new(varmap.all_vars(), 0.5).unwrap();
    sgd.backward_step(&m.loss(&large, None, true).unwrap().loss)
        .unwrap();
    let moved = m.encode(&small, false).unwrap().pooled;
    assert!(
        tensor_diff(&moved, &before[0]) > 1e-4,
        "the step changed nothing"
    );
    for (batch, was) in [&small, &large].into_iter().zip(&before) {
        assert_eq!(
            tensor_diff(&inf.encode(batch, false).unwrap().pooled, was),
            0.0
        );
    }
}

#[test]
fn the_inference_copy_of_a_bf16_model_computes_the_same() {
    // bf16 takes the composite paths (no fused kernels): the copy's
    // products read its Wᵀ where the original reads W transposed.
    let cfg = Config::demo();
    let (m, _) = Tokenizer::init(&cfg, &common::device(), DType::BF16, 32).unwrap();
    let inf = m.for_inference().unwrap();
    let (_, batch) = ragged_batch(cfg.patch_size);
    let (a, b) = (
        m.encode(&batch, false).unwrap().pooled,
        inf.encode(&batch, false).unwrap().pooled,
    );
    assert_eq!(b.dtype(), DType::BF16);
    let diff = tensor_diff(&a, &b);
    assert!(diff <= 1e-2, "bf16 inference copy differs by {diff}");
}
