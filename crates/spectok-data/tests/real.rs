//! Preparation and loading of the real survey files
//! (`spectok_io::testdata::real_data_dir()`; skipped when absent).

use std::path::Path;
use std::sync::Arc;

use spectok_data::{
    collate, prepare, BatchSize, FileSource, Loader, LoaderConfig, PatchState, PrepareConfig,
    PreparedSpectrum, ScaleRule, SourceSpec,
};
use spectok_io::testdata::real_data_dir;

/// Prepares every spectrum of one real file.
fn prepared(dir: &Path, rel: &str) -> Vec<Result<PreparedSpectrum, spectok_data::Error>> {
    let path = dir.join(rel);
    let plan = spectok_io::plan_inputs(&[path.to_string_lossy()], None);
    assert!(plan.problems.is_empty(), "{rel}: {:?}", plan.problems);
    assert_eq!(plan.units.len(), 1, "{rel}");
    spectok_io::read_unit(&plan.units[0])
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|s| {
            prepare(
                &s.unwrap_or_else(|e| panic!("{e}")),
                &PrepareConfig::default(),
            )
        })
        .collect()
}

fn first_ok(dir: &Path, rel: &str) -> PreparedSpectrum {
    prepared(dir, rel)
        .into_iter()
        .find_map(|r| r.ok())
        .unwrap_or_else(|| panic!("{rel}: no spectrum prepared"))
}

/// Median of the valid normalised flux.
fn median_norm_flux(p: &PreparedSpectrum) -> f64 {
    let mut v: Vec<f64> = p
        .flux
        .iter()
        .zip(&p.pixel_index)
        .zip(&p.sigma)
        .filter(|((_, i), s)| **i != spectok_data::PAD_PIXEL && **s > 0.0)
        .map(|((f, _), _)| *f as f64)
        .collect();
    spectok_data::prepare::median(&mut v).unwrap()
}

#[test]
fn real_spectra_become_the_expected_patches() {
    let Some(dir) = real_data_dir() else { return };
    // (file, pixels per segment as the README lists them)
    let cases: [(&str, &[usize]); 8] = [
        ("sdss/spec-0266-51602-0013.fits", &[3838]),
        ("sdss/spec-4961-55719-0378.fits", &[4619]),
        ("desi/coadd-4-80613-thru20210324.fits", &[2751, 2326, 2881]),
        ("apogee/apStar-r6-2M17334253-1654573.fits", &[8575]),
        (
            "apogee/apVisit-2M00452143+1634446-0.fits",
            &[4096, 4096, 4096],
        ),
        ("galah/2101150001010011.fits", &[4096, 4096, 4096, 4096]),
        (
            "lamost/med-58408-TD230151N343645T01_sp01-015.fits",
            &[4101, 3692],
        ),
        ("gaiaxp/calibrator.fits", &[343]),
    ];
    for (rel, segs) in cases {
        let p = first_ok(&dir, rel);
        // Arms never share a patch; no gap inside these grids.
        let want: usize = segs.iter().map(|n| n.div_ceil(32)).sum();
        assert_eq!(p.n_patches(), want, "{rel}");
        let real = p
            .pixel_index
            .iter()
            .filter(|&&i| i != spectok_data::PAD_PIXEL)
            .count();
        assert_eq!(real, segs.iter().sum::<usize>(), "{rel}");
        assert!(
            p.n_valid_patches() > p.n_patches() * 3 / 4,
            "{rel}: {} valid of {}",
            p.n_valid_patches(),
            p.n_patches()
        );
        assert_eq!(p.scale_rule, ScaleRule::Median, "{rel}");
        // Normalised by the median of valid flux: the median is 1.
        let m = median_norm_flux(&p);
        assert!((m - 1.0).abs() < 1e-6, "{rel}: median normalised flux {m}");
        assert!(p
            .flux
            .iter()
            .chain(&p.sigma)
            .chain(&p.weight)
            .all(|x| x.is_finite()));
    }
}

#[test]
fn sdss_and_apogee_masks_and_scales() {
    let Some(dir) = real_data_dir() else { return };
    // SDSS and_mask: half the pixels of this spectrum carry MANYBADCOLUMNS
    // with positive ivar; they stay valid. 54 pixels are invalid
    // (BRIGHTSKY, BADSKYCHI, …). Scale = median of valid flux.
    let p = first_ok(&dir, "sdss/spec-0266-51602-0013.fits");
    assert_eq!(p.valid_pixels, 3784);
    assert!((p.scale - 20.830559).abs() < 1e-4, "{}", p.scale);
    let p = first_ok(&dir, "sdss/spec-0332-52367-0639.fits");
    assert_eq!(p.valid_pixels, 3771);
    assert!((p.scale - 45.594006).abs() < 1e-4, "{}", p.scale);
    // APOGEE apStar: chip gaps (BADPIX, zero flux) make invalid patches in
    // a single log-linear segment.
    let p = first_ok(&dir, "apogee/apStar-r6-2M17334253-1654573.fits");
    assert_eq!(p.valid_pixels, 7662);
    assert!((p.scale - 1517.691).abs() < 1e-2, "{}", p.scale);
    let invalid = p
        .patch_state
        .iter()
        .filter(|s| **s == PatchState::Invalid)
        .count();
    assert!(invalid >= 20, "{invalid} invalid patches");
    assert!((p.log_scale - 1517.691f32.log10()).abs() < 1e-5);
}

#[test]
fn desi_sky_fibres_and_empty_spaxels_are_rejected_with_reasons() {
    let Some(dir) = real_data_dir() else { return };
    let all = prepared(&dir, "desi/coadd-5-169-thru20210419.fits");
    assert_eq!(all.len(), 5);
    let ok: Vec<&PreparedSpectrum> = all.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].id, "39633300968442591");
    for e in all.iter().filter_map(|r| r.as_ref().err()) {
        let msg = e.to_string();
        assert!(
            msg.contains("coadd-5-169-thru20210419.fits") && msg.contains("no valid pixel"),
            "{msg}"
        );
    }
    let manga = prepared(&dir, "other/MaNGA_test_spectra.fits.gz");
    assert_eq!(manga.len(), 8);
    assert_eq!(manga.iter().filter(|r| r.is_err()).count(), 1);
}

#[test]
fn collating_real_spectra_of_different_surveys() {
    let Some(dir) = real_data_dir() else { return };
    let a = first_ok(&dir, "gaiaxp/calibrator.fits");
    let b = first_ok(&dir, "galah/2101150001010011.fits");
    let batch = collate(&[a.clone(), b.clone()]);
    assert_eq!((batch.batch_size, batch.max_patches), (2, 512));
    assert_eq!(batch.n_patches, vec![11, 512]);
    assert_eq!(&batch.flux[..11 * 32], &a.flux[..]);
    assert_eq!(&batch.wavelength[512 * 32..], &b.wavelength[..]);
    assert!((batch.real_token_fraction() - 523.0 / 1024.0).abs() < 1e-12);
}

#[test]
fn loader_over_real_directories() {
    let Some(dir) = real_data_dir() else { return };
    let sources = || {
        let (sdss, problems) = FileSource::from_inputs(&[dir.join("sdss").to_string_lossy()], None);
        assert!(problems.is_empty(), "{problems:?}");
        let (galah, problems) =
            FileSource::from_inputs(&[dir.join("galah").to_string_lossy()], None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(galah.units().len(), 4, "4 stars of 4 CCD files each");
        vec![
            SourceSpec::new("sdss", 1.0, Arc::new(sdss)),
            SourceSpec::new("galah", 1.0, Arc::new(galah)),
        ]
    };
    // In order, once: 13 SDSS spectra then 4 GALAH stars.
    let cfg = LoaderConfig {
        shuffle: false,
        epochs: Some(1),
        batch: BatchSize::Tokens {
            max_tokens: 2048,
            max_spectra: 64,
        },
        ..LoaderConfig::default()
    };
    let mut l = Loader::new(sources(), cfg).unwrap();
    let mut n = 0;
    let mut galah = 0;
    while let Some(b) = l.next_batch() {
        assert!(b.batch_size * b.max_patches <= 2048 || b.batch_size == 1);
        n += b.batch_size;
        galah += b
            .surveys
            .iter()
            .filter(|s| **s == spectok_io::Survey::Galah)
            .count();
    }
    assert_eq!((n, galah), (17, 4));
    let st = l.stats();
    assert!(st.problems.is_empty(), "{:?}", st.problems);

    // Shuffled and resumed after the third batch: the same batches follow.
    let cfg = LoaderConfig {
        epochs: Some(2),
        batch: BatchSize::Fixed { spectra: 3 },
        pool_size: 8,
        ..LoaderConfig::default()
    };
    let mut full = Loader::new(sources(), cfg.clone()).unwrap();
    let head: Vec<_> = full.by_ref().take(3).collect();
    assert_eq!(head.len(), 3);
    let state = full.state();
    let rest: Vec<_> = full.collect();
    let resumed: Vec<_> = Loader::resume(sources(), cfg, state).unwrap().collect();
    assert!(!rest.is_empty());
    assert!(rest == resumed, "resumed batches differ");
}
