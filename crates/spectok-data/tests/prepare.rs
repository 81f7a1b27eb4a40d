//! Preparation of single spectra: invalid pixels, scale, channels,
//! patches, gaps.

use spectok_data::mask::{apogee, sdss};
use spectok_data::{
    collate, prepare, Error, MaskRules, PatchState, PrepareConfig, RejectReason, ScaleRule,
    Transform, PAD_PIXEL,
};
use spectok_io::{Labels, Medium, Segment, Source, Spectrum, Survey};

/// A spectrum on a linear grid, one segment, flux `f`, ivar 4.
fn spec(flux: Vec<f32>) -> Spectrum {
    let n = flux.len();
    Spectrum {
        id: "obj-1".into(),
        survey: Survey::Sdss,
        source: Source {
            file: "test.fits".into(),
            hdu: "COADD".into(),
            row: Some(3),
        },
        wavelength: (0..n).map(|i| 4000.0 + i as f64).collect(),
        flux,
        ivar: vec![4.0; n],
        mask: vec![0; n],
        segments: vec![Segment {
            name: "all".into(),
            start: 0,
            end: n,
        }],
        medium: Medium::Vacuum,
        lsf_sigma: None,
        labels: Labels::default(),
    }
}

fn cfg(p: usize) -> PrepareConfig {
    PrepareConfig {
        patch_size: p,
        ..PrepareConfig::default()
    }
}

#[test]
fn patches_of_p_with_padded_tail() {
    let s = spec((0..100).map(|i| 2.0 + (i % 3) as f32).collect());
    let p = prepare(&s, &cfg(32)).unwrap();
    // Median of 2,3,4 repeating (34×2, 33×3, 33×4) is 3.
    assert_eq!(p.scale, 3.0);
    assert_eq!(p.scale_rule, ScaleRule::Median);
    assert_eq!(p.log_scale, 3f64.log10() as f32);
    assert_eq!(p.n_patches(), 4);
    assert_eq!(
        p.patch_state,
        vec![
            PatchState::Valid,
            PatchState::Valid,
            PatchState::Valid,
            PatchState::Invalid
        ]
    );
    // Tail: 4 real pixels then 28 padding slots at the last real wavelength.
    let tail = 96..128;
    assert_eq!(&p.pixel_index[96..100], &[96, 97, 98, 99]);
    assert!(p.pixel_index[100..128].iter().all(|&i| i == PAD_PIXEL));
    assert!(p.wavelength[100..128].iter().all(|&w| w == 4099.0));
    assert!(p.flux[100..128].iter().all(|&f| f == 0.0));
    // An invalid patch carries no weight at all.
    assert!(p.weight[tail].iter().all(|&w| w == 0.0));
    // Channels: f/scale, σ/scale = 1/(2·3), weight ivar·scale² = 36.
    assert_eq!(p.flux[0], (2.0f64 / 3.0) as f32);
    assert_eq!(p.sigma[0], (1.0 / 36f64.sqrt()) as f32);
    assert_eq!(p.weight[0], 36.0);
    assert_eq!(p.patch_center[0], 0.5 * (4000.0 + 4031.0));
    assert_eq!(p.patch_center[3], 0.5 * (4096.0 + 4099.0));
}

#[test]
fn half_invalid_is_valid_more_is_invalid() {
    let mut s = spec(vec![1.0; 8]);
    // Patch 0: pixels 0,1 invalid (exactly half of 4): valid.
    s.ivar[0] = 0.0;
    s.flux[1] = f32::NAN;
    // Patch 1: pixels 4,5,6 invalid: invalid.
    s.ivar[4] = -1.0;
    s.ivar[5] = f32::INFINITY;
    s.mask[6] = sdss::NODATA;
    let p = prepare(&s, &cfg(4)).unwrap();
    assert_eq!(p.patch_state, vec![PatchState::Valid, PatchState::Invalid]);
    assert_eq!(&p.weight[0..4], &[0.0, 0.0, 4.0, 4.0]);
    assert!(p.weight[4..8].iter().all(|&w| w == 0.0));
    // Invalid pixels: zero flux and σ, real wavelength.
    assert_eq!(p.flux[1], 0.0);
    assert_eq!(p.sigma[0], 0.0);
    assert_eq!(p.wavelength[1], 4001.0);
    assert_eq!(p.valid_pixels, 3);
}

#[test]
fn survey_mask_bits() {
    let mut s = spec(vec![1.0; 4]);
    s.mask = vec![
        sdss::MANYBADCOLUMNS,
        sdss::NEARBADPIXEL,
        sdss::BRIGHTSKY,
        sdss::NOPLUG,
    ];
    let rules = MaskRules::default();
    assert_eq!(rules.valid_pixels(&s), vec![true, true, false, false]);

    s.survey = Survey::Desi;
    assert_eq!(rules.valid_pixels(&s), vec![false; 4]);

    s.survey = Survey::Apogee;
    s.mask = vec![apogee::PERSIST_HIGH, apogee::SIG_SKYLINE, apogee::CRPIX, 0];
    assert_eq!(rules.valid_pixels(&s), vec![true, true, false, true]);
    let strict = rules
        .clone()
        .with_bits(Survey::Apogee, apogee::PERSIST_HIGH | apogee::SIG_SKYLINE);
    assert_eq!(strict.valid_pixels(&s), vec![false, false, false, true]);
    let ignore = rules.set_bits(Survey::Apogee, 0);
    assert_eq!(ignore.valid_pixels(&s), vec![true; 4]);
}

#[test]
fn mask_rules_config_keeps_defaults_for_unnamed_surveys() {
    let r: MaskRules = serde_json::from_str(r#"{"apogee": 4863}"#).unwrap();
    assert_eq!(r.bad_bits(Survey::Apogee), 4863);
    assert_eq!(r.bad_bits(Survey::Sdss), sdss::DEFAULT_BAD);
    let text = serde_json::to_string(&MaskRules::default()).unwrap();
    assert!(text.contains("\"desi\":4294967295"), "{text}");
    let back: MaskRules = serde_json::from_str(&text).unwrap();
    assert_eq!(back, MaskRules::default());
    let c: PrepareConfig =
        serde_json::from_str(r#"{"patch_size": 16, "transform": "arcsinh"}"#).unwrap();
    assert_eq!(c.patch_size, 16);
    assert_eq!(c.transform, Transform::Arcsinh);
    assert_eq!(c.gap_factor, 3.0);
    assert!(serde_json::from_str::<PrepareConfig>(r#"{"patch_sise": 16}"#).is_err());
}

#[test]
fn negative_or_noise_median_falls_back_to_median_abs() {
    // Median −1 (≤ 0): scale is the median of |flux| = 2.
    let s = spec(vec![-3.0, -2.0, -1.0, 1.0, 2.0]);
    let p = prepare(&s, &cfg(4)).unwrap();
    assert_eq!((p.scale, p.scale_rule), (2.0, ScaleRule::MedianAbs));
    assert_eq!(p.flux[0], -1.5);
    // Median 0.05 but median |flux| 1: noise-dominated, scale 1.
    let s = spec(vec![-1.0, -1.0, 0.05, 1.0, 1.0]);
    let p = prepare(&s, &cfg(4)).unwrap();
    assert_eq!((p.scale, p.scale_rule), (1.0, ScaleRule::MedianAbs));
    // A positive median above the threshold is used as it is.
    let s = spec(vec![-1.0, 0.5, 0.6, 1.0, 1.0]);
    let p = prepare(&s, &cfg(4)).unwrap();
    assert_eq!((p.scale, p.scale_rule), (0.6f32 as f64, ScaleRule::Median));
    // Only invalid pixels carry the large values: they do not count.
    let mut s = spec(vec![1e9, 2.0, 2.0, 2.0]);
    s.ivar[0] = 0.0;
    assert_eq!(prepare(&s, &cfg(4)).unwrap().scale, 2.0);
}

#[test]
fn spectra_without_a_scale_are_rejected_with_a_reason() {
    let s = spec(vec![0.0; 10]);
    let e = prepare(&s, &cfg(4)).unwrap_err();
    assert_eq!(e.reject_reason(), Some(&RejectReason::NoPositiveScale));
    let msg = e.to_string();
    assert!(
        msg.contains("obj-1") && msg.contains("test.fits[COADD] row 3"),
        "{msg}"
    );

    let mut s = spec(vec![1.0; 10]);
    s.ivar = vec![0.0; 10];
    let e = prepare(&s, &cfg(4)).unwrap_err();
    assert_eq!(e.reject_reason(), Some(&RejectReason::NoValidPixels));

    // Valid pixels exist but every patch is more than half invalid.
    let mut s = spec(vec![1.0; 8]);
    for i in [0, 1, 2, 4, 5, 6] {
        s.ivar[i] = 0.0;
    }
    let e = prepare(&s, &cfg(4)).unwrap_err();
    assert_eq!(
        e.reject_reason(),
        Some(&RejectReason::TooFewValidPatches {
            valid: 0,
            required: 1
        })
    );

    let mut s = spec(vec![1.0; 8]);
    s.ivar.pop();
    assert!(matches!(
        prepare(&s, &cfg(4)),
        Err(Error::Rejected {
            reason: RejectReason::Malformed { field: "ivar", .. },
            ..
        })
    ));
}

#[test]
fn weights_are_clipped_and_arcsinh_is_bounded() {
    let mut s = spec(vec![1.0, 1.0, 1.0, 100.0]);
    s.ivar = vec![1e8, 1.0, 1.0, 1.0];
    let p = prepare(&s, &cfg(4)).unwrap();
    assert_eq!(p.weight[0], 1e4);
    assert_eq!(p.weight[1], 1.0);
    let c = PrepareConfig {
        transform: Transform::Arcsinh,
        ..cfg(4)
    };
    let p = prepare(&s, &c).unwrap();
    assert_eq!(p.flux[3], 100f64.asinh() as f32);
    assert_eq!(p.sigma[1], 1f64.asinh() as f32);
    // Weight through the derivative of asinh: ivar·(1 + f²).
    assert_eq!(p.weight[1], 2.0);
    assert_eq!(p.weight[3], 1e4f32.min(10001.0));
    assert_eq!(Transform::Arcsinh.invert(p.flux[3] as f64).round(), 100.0);
}

#[test]
fn segments_and_gaps_start_new_patches() {
    // Two segments of 40 and 60 pixels: 2 + 2 patches of 32.
    let mut s = spec(vec![1.0; 100]);
    s.segments = vec![
        Segment {
            name: "b".into(),
            start: 0,
            end: 40,
        },
        Segment {
            name: "r".into(),
            start: 40,
            end: 100,
        },
    ];
    // The second arm overlaps the first in wavelength, as DESI's do.
    for i in 40..100 {
        s.wavelength[i] = 4030.0 + (i - 40) as f64;
    }
    let p = prepare(&s, &cfg(32)).unwrap();
    assert_eq!(p.n_patches(), 4);
    assert_eq!(p.pixel_index[32 * 2], 40);
    assert_eq!(p.pixel_index[32 + 7], 39);
    assert_eq!(p.pixel_index[32 + 8], PAD_PIXEL);

    // A jump of 5 steps at pixel 50 starts a patch there; one of 2.5
    // steps at pixel 20 does not.
    let mut s = spec(vec![1.0; 100]);
    for i in 20..100 {
        s.wavelength[i] += 1.5;
    }
    for i in 50..100 {
        s.wavelength[i] += 4.0;
    }
    let p = prepare(&s, &cfg(32)).unwrap();
    assert_eq!(p.n_patches(), 4);
    assert_eq!(p.pixel_index[32], 32);
    assert_eq!(p.pixel_index[32 + 17], 49);
    assert_eq!(p.pixel_index[32 + 18], PAD_PIXEL);
    assert_eq!(p.pixel_index[64], 50);
    assert_eq!(p.pixel_index[96], 82);
}

#[test]
fn log_linear_grid_has_no_spurious_gaps() {
    // SDSS-like: 10⁻⁴ dex per pixel over 3600–10400 Å; steps grow ~3×.
    let n = 4600;
    let mut s = spec(vec![1.0; n]);
    s.wavelength = (0..n)
        .map(|i| 10f64.powf(3.5563 + 1e-4 * i as f64))
        .collect();
    let p = prepare(&s, &cfg(32)).unwrap();
    assert_eq!(p.n_patches(), n.div_ceil(32));
    // An APOGEE-like chip gap (a jump of ~100 Å) is found on the same grid.
    for w in s.wavelength[2300..].iter_mut() {
        *w += 100.0;
    }
    let p = prepare(&s, &cfg(32)).unwrap();
    assert_eq!(
        p.n_patches(),
        2300usize.div_ceil(32) + 2300usize.div_ceil(32)
    );
}

#[test]
fn collate_pads_without_touching_patches() {
    let a = prepare(&spec(vec![1.0; 40]), &cfg(8)).unwrap();
    let b = prepare(&spec(vec![2.0; 100]), &cfg(8)).unwrap();
    let batch = collate(&[a.clone(), b.clone()]);
    assert_eq!(
        (batch.batch_size, batch.max_patches, batch.patch_size),
        (2, 13, 8)
    );
    assert_eq!(batch.n_patches, vec![5, 13]);
    assert_eq!(&batch.flux[..40], &a.flux[..]);
    assert!(batch.flux[40..13 * 8].iter().all(|&f| f == 0.0));
    assert!(batch.patch_state[5..13]
        .iter()
        .all(|&s| s == PatchState::Padding));
    assert_eq!(&batch.wavelength[13 * 8..], &b.wavelength[..]);
    assert_eq!(batch.real_token_fraction(), 18.0 / 26.0);
    assert_eq!(batch.ids, vec!["obj-1".to_string(), "obj-1".to_string()]);
    let empty = collate(&[]);
    assert_eq!((empty.batch_size, empty.max_patches), (0, 0));
    let other = prepare(&spec(vec![1.0; 40]), &cfg(4)).unwrap();
    assert!(spectok_data::try_collate(&[a, other], 0).is_err());
}
