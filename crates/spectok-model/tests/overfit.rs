//! A tiny model overfits a handful of real spectra (SDSS, APOGEE, GALAH):
//! the training loss must fall at least 100× in a few hundred steps.

use candle_core::{DType, Device};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use spectok_data::{collate, prepare, PatchState, PrepareConfig, PreparedSpectrum};
use spectok_io::{plan_inputs, read_unit, testdata::real_data_dir, Survey};
use spectok_model::{Config, Tokenizer};

/// Patches kept per spectrum (a short crop keeps the test fast).
const CROP: usize = 6;

/// The first `CROP` consecutive valid patches of a prepared spectrum.
fn crop(s: &PreparedSpectrum) -> PreparedSpectrum {
    let start = (0..s.n_patches().saturating_sub(CROP))
        .find(|&i| {
            s.patch_state[i..i + CROP]
                .iter()
                .all(|st| *st == PatchState::Valid)
        })
        .unwrap_or_else(|| panic!("{}: no run of {CROP} valid patches", s.id));
    let p = s.patch_size;
    let px = start * p..(start + CROP) * p;
    let pt = start..start + CROP;
    PreparedSpectrum {
        flux: s.flux[px.clone()].to_vec(),
        sigma: s.sigma[px.clone()].to_vec(),
        wavelength: s.wavelength[px.clone()].to_vec(),
        weight: s.weight[px.clone()].to_vec(),
        pixel_index: s.pixel_index[px].to_vec(),
        patch_state: s.patch_state[pt.clone()].to_vec(),
        patch_center: s.patch_center[pt].to_vec(),
        ..s.clone()
    }
}

/// The loss of the best flat reconstruction (each spectrum's weighted
/// mean flux everywhere): beating it means the model learned the lines,
/// not just the continuum level.
fn flat_loss(batch: &spectok_data::Batch) -> f32 {
    let n = batch.max_patches * batch.patch_size;
    let (mut num, mut count) = (0f64, 0usize);
    for s in 0..batch.batch_size {
        let f = &batch.flux[s * n..(s + 1) * n];
        let w = &batch.weight[s * n..(s + 1) * n];
        let sw: f64 = w.iter().map(|&w| w as f64).sum();
        let mean = f.iter().zip(w).map(|(&f, &w)| (f * w) as f64).sum::<f64>() / sw;
        for (&f, &w) in f.iter().zip(w) {
            if w > 0.0 {
                num += w as f64 * (f as f64 - mean).powi(2);
                count += 1;
            }
        }
    }
    (num / count as f64) as f32
}

#[test]
fn tiny_model_overfits_real_spectra() {
    let Some(dir) = real_data_dir() else {
        return;
    };
    let inputs: Vec<String> = [
        "sdss/spec-0266-51602-0013.fits",
        "apogee/aspcapStar-r6-l30e.2-2M17334253-1654573.fits",
        "galah/2101150001010011.fits",
        "galah/2101150001010012.fits",
        "galah/2101150001010013.fits",
        "galah/2101150001010014.fits",
    ]
    .iter()
    .map(|f| dir.join(f).display().to_string())
    .collect();
    let plan = plan_inputs(&inputs, None);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.units.len(), 3, "GALAH CCDs should form one unit");
    let prep = PrepareConfig {
        patch_size: 16,
        ..PrepareConfig::default()
    };
    let mut spectra = Vec::new();
    for unit in &plan.units {
        let spectrum = read_unit(unit)
            .unwrap()
            .next()
            .expect("one spectrum")
            .unwrap();
        spectra.push(crop(&prepare(&spectrum, &prep).unwrap()));
    }
    let surveys: Vec<Survey> = spectra.iter().map(|s| s.survey).collect();
    assert_eq!(surveys, vec![Survey::Sdss, Survey::Apogee, Survey::Galah]);
    let batch = collate(&spectra);
    assert_eq!((batch.batch_size, batch.max_patches), (3, CROP));

    let cfg = Config {
        patch_size: 16,
        d_model: 64,
        encoder_layers: 1,
        decoder_layers: 2,
        heads: 4,
        mlp_ratio: 2.0,
        wavelength_freqs: 16,
        offset_freqs: 4,
        ..Config::paper()
    };
    let (model, varmap) = Tokenizer::init(&cfg, &Device::Cpu, DType::F32, 0).unwrap();
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let first = model.loss(&batch, None, false).unwrap().loss;
    let first = first.to_scalar::<f32>().unwrap();
    let steps = 300;
    for step in 0..steps {
        let out = model.training_loss(&batch, &mut rng).unwrap();
        opt.backward_step(&out.loss).unwrap();
        if step % 50 == 0 {
            println!("step {step}: {}", out.loss.to_scalar::<f32>().unwrap());
        }
    }
    let last = model.loss(&batch, None, false).unwrap().loss;
    let last = last.to_scalar::<f32>().unwrap();
    let flat = flat_loss(&batch);
    println!("loss {first:.1} -> {last:.3} in {steps} steps; flat spectra {flat:.2}");
    assert!(
        last <= first / 100.0,
        "loss only fell from {first} to {last} in {steps} steps"
    );
    assert!(
        last <= flat / 10.0,
        "loss {last} is not well below the flat-spectrum loss {flat}"
    );
}
