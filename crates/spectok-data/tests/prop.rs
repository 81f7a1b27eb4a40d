//! Property tests over random grids, gaps and masks: patchification never
//! interpolates and follows the segment/gap/padding rules exactly, and
//! padding never changes a spectrum's patches.

use proptest::prelude::*;
use spectok_data::{
    collate, median, prepare, robust_scale, MaskRules, PatchState, PrepareConfig, RejectReason,
    ScaleRule, PAD_PIXEL,
};
use spectok_io::{Labels, Medium, Segment, Source, Spectrum, Survey};

#[derive(Clone, Debug)]
struct SegPlan {
    len: usize,
    start: f64,
    step: f64,
    log_linear: bool,
    /// (pixel offset, jump in steps) wavelength jumps inside the segment.
    jumps: Vec<(usize, f64)>,
}

fn seg_plan() -> impl Strategy<Value = SegPlan> {
    (
        1usize..150,
        3000.0f64..9000.0,
        0.05f64..3.0,
        any::<bool>(),
        prop::collection::vec((0usize..150, 1.0f64..40.0), 0..4),
    )
        .prop_map(|(len, start, step, log_linear, jumps)| SegPlan {
            len,
            start,
            step,
            log_linear,
            jumps,
        })
}

/// Per-pixel (flux, ivar, mask) drawn with some bad values.
fn pixel() -> impl Strategy<Value = (f32, f32, u32)> {
    (
        prop_oneof![
            8 => -5.0f32..100.0,
            1 => Just(f32::NAN),
            1 => Just(0.0f32),
        ],
        prop_oneof![
            6 => 0.01f32..1e3,
            1 => Just(0.0f32),
            1 => Just(-1.0f32),
            1 => Just(f32::INFINITY),
        ],
        prop_oneof![
            8 => Just(0u32),
            1 => Just(1u32 << 4),  // SDSS MANYBADCOLUMNS: not bad
            1 => Just(1u32 << 24), // SDSS NODATA: bad
        ],
    )
}

fn build(segs: &[SegPlan], pixels: &[(f32, f32, u32)], id: &str) -> Spectrum {
    let mut wavelength = Vec::new();
    let mut segments = Vec::new();
    for (k, s) in segs.iter().enumerate() {
        let start = wavelength.len();
        let mut lam = s.start;
        for i in 0..s.len {
            for (at, jump) in &s.jumps {
                if *at == i && i > 0 {
                    lam += jump * s.step;
                }
            }
            wavelength.push(lam);
            lam = if s.log_linear {
                lam * (1.0 + s.step / 6000.0)
            } else {
                lam + s.step
            };
        }
        segments.push(Segment {
            name: format!("s{k}"),
            start,
            end: wavelength.len(),
        });
    }
    let n = wavelength.len();
    let px = |i: usize| pixels[i % pixels.len()];
    Spectrum {
        id: id.into(),
        survey: Survey::Sdss,
        source: Source {
            file: "prop.fits".into(),
            hdu: "1".into(),
            row: None,
        },
        wavelength,
        flux: (0..n).map(|i| px(i).0).collect(),
        ivar: (0..n).map(|i| px(i).1).collect(),
        mask: (0..n).map(|i| px(i).2).collect(),
        segments,
        medium: Medium::Vacuum,
        lsf_sigma: None,
        labels: Labels::default(),
    }
}

fn spectrum() -> impl Strategy<Value = Spectrum> {
    (
        prop::collection::vec(seg_plan(), 1..4),
        prop::collection::vec(pixel(), 1..64),
        0u32..1000,
    )
        .prop_map(|(segs, pixels, id)| build(&segs, &pixels, &format!("id{id}")))
}

fn config(p: usize) -> PrepareConfig {
    PrepareConfig {
        patch_size: p,
        min_valid_patches: 0,
        ..PrepareConfig::default()
    }
}

/// Run starts by a brute-force reading of the rule: segment starts, and
/// pixel i+1 when step i exceeds gap_factor × the median of the steps
/// within gap_window of it (itself excluded) in its segment.
fn expected_runs(s: &Spectrum, cfg: &PrepareConfig) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    for seg in &s.segments {
        let w = &s.wavelength[seg.start..seg.end];
        let steps: Vec<f64> = (1..w.len()).map(|i| w[i] - w[i - 1]).collect();
        let mut start = seg.start;
        for i in 0..steps.len() {
            let mut nb: Vec<f64> = (0..steps.len())
                .filter(|&j| j != i && j + cfg.gap_window >= i && j <= i + cfg.gap_window)
                .map(|j| steps[j])
                .collect();
            if nb.is_empty() {
                continue;
            }
            nb.sort_by(f64::total_cmp);
            let m = nb.len();
            let med = if m % 2 == 1 {
                nb[m / 2]
            } else {
                0.5 * (nb[m / 2 - 1] + nb[m / 2])
            };
            if steps[i] > cfg.gap_factor * med {
                runs.push((start, seg.start + i + 1));
                start = seg.start + i + 1;
            }
        }
        runs.push((start, seg.end));
    }
    runs
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every output value comes from exactly one input pixel, in order,
    /// and the patch layout is exactly the segment/gap/padding rule.
    #[test]
    fn patchification_never_interpolates(s in spectrum(), p in 1usize..40) {
        let cfg = config(p);
        let valid = MaskRules::default().valid_pixels(&s);
        let out = match prepare(&s, &cfg) {
            Ok(out) => out,
            Err(e) => {
                // Only whole-spectrum rejections can happen here: nothing
                // valid, or a median |flux| of 0.
                let mut abs: Vec<f64> = s.flux.iter().zip(&valid).filter(|(_, v)| **v).map(|(f, _)| f.abs() as f64).collect();
                abs.sort_by(f64::total_cmp);
                let m = abs.len();
                match e.reject_reason() {
                    Some(RejectReason::NoValidPixels) => prop_assert_eq!(m, 0),
                    Some(RejectReason::NoPositiveScale) => {
                        let med = if m % 2 == 1 { abs[m / 2] } else { 0.5 * (abs[m / 2 - 1] + abs[m / 2]) };
                        prop_assert_eq!(med, 0.0);
                    }
                    _ => prop_assert!(false, "unexpected rejection {}", e),
                }
                return Ok(());
            }
        };
        // Layout: runs cut into chunks of P, tails padded.
        let mut expected = Vec::new();
        for (a, b) in expected_runs(&s, &cfg) {
            let mut i = a;
            while i < b {
                let e = (i + p).min(b);
                expected.extend((i..e).map(|k| k as u32));
                expected.extend(std::iter::repeat_n(PAD_PIXEL, p - (e - i)));
                i = e;
            }
        }
        prop_assert_eq!(&out.pixel_index, &expected);

        for (t, state) in out.patch_state.iter().enumerate() {
            let row = t * p..(t + 1) * p;
            let n_ok = row.clone().filter(|&k| out.pixel_index[k] != PAD_PIXEL && valid[out.pixel_index[k] as usize]).count();
            let want = if 2 * (p - n_ok) <= p { PatchState::Valid } else { PatchState::Invalid };
            prop_assert_eq!(*state, want);
            let last_real = row.clone().rfind(|&k| out.pixel_index[k] != PAD_PIXEL).unwrap();
            for k in row {
                let idx = out.pixel_index[k];
                if idx == PAD_PIXEL {
                    prop_assert_eq!(out.wavelength[k], out.wavelength[last_real]);
                    prop_assert_eq!((out.flux[k], out.sigma[k], out.weight[k]), (0.0, 0.0, 0.0));
                    continue;
                }
                let i = idx as usize;
                prop_assert_eq!(out.wavelength[k], s.wavelength[i]);
                if valid[i] {
                    prop_assert_eq!(out.flux[k], (s.flux[i] as f64 / out.scale) as f32);
                    let w = (s.ivar[i] as f64 * out.scale * out.scale).min(cfg.max_weight as f64) as f32;
                    let w = if want == PatchState::Valid { w } else { 0.0 };
                    prop_assert_eq!(out.weight[k], w);
                    prop_assert!(out.flux[k].is_finite() && out.sigma[k].is_finite());
                } else {
                    prop_assert_eq!((out.flux[k], out.sigma[k], out.weight[k]), (0.0, 0.0, 0.0));
                }
            }
        }
        // Determinism.
        prop_assert_eq!(prepare(&s, &cfg).ok(), Some(out));
    }

    /// A spectrum's rows are identical collated alone or among others
    /// (longer or shorter) at any position, and its padding is all zero.
    #[test]
    fn padding_never_changes_a_spectrum(
        s in spectrum(),
        others in prop::collection::vec(spectrum(), 0..4),
        pos in 0usize..5,
        p in 1usize..40,
    ) {
        let cfg = config(p);
        let Ok(me) = prepare(&s, &cfg) else { return Ok(()); };
        let mut group: Vec<_> = others.iter().filter_map(|o| prepare(o, &cfg).ok()).collect();
        let pos = pos.min(group.len());
        group.insert(pos, me.clone());
        let alone = collate(std::slice::from_ref(&me));
        let batch = collate(&group);
        let np = me.n_patches();
        prop_assert_eq!(batch.n_patches[pos], np);
        let t = batch.max_patches;
        let px = |b: usize| b * t * p..b * t * p + np * p;
        let pd = |b: usize| b * t * p + np * p..(b + 1) * t * p;
        prop_assert_eq!(&batch.flux[px(pos)], &alone.flux[px(0)]);
        prop_assert_eq!(&batch.sigma[px(pos)], &alone.sigma[px(0)]);
        prop_assert_eq!(&batch.wavelength[px(pos)], &alone.wavelength[px(0)]);
        prop_assert_eq!(&batch.weight[px(pos)], &alone.weight[px(0)]);
        prop_assert_eq!(&batch.patch_state[pos * t..pos * t + np], &alone.patch_state[..]);
        prop_assert_eq!(&batch.patch_center[pos * t..pos * t + np], &alone.patch_center[..]);
        prop_assert!(batch.flux[pd(pos)].iter().all(|x| *x == 0.0));
        prop_assert!(batch.weight[pd(pos)].iter().all(|x| *x == 0.0));
        prop_assert!(batch.wavelength[pd(pos)].iter().all(|x| *x == 0.0));
        prop_assert!(batch.patch_state[pos * t + np..(pos + 1) * t].iter().all(|s| *s == PatchState::Padding));
        prop_assert_eq!(batch.log_scale[pos], me.log_scale);
        prop_assert_eq!(&batch.ids[pos], &me.id);
    }
}

/// The scale rule by its definition: both medians, in f64.
fn scale_by_definition(flux: &[f32], valid: &[bool], fraction: f64) -> Option<(f64, ScaleRule)> {
    let mut v: Vec<f64> = flux
        .iter()
        .zip(valid)
        .filter(|(_, ok)| **ok)
        .map(|(f, _)| f64::from(*f))
        .collect();
    let med = median(&mut v)?;
    let mut a: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    let med_abs = median(&mut a)?;
    if med.is_finite() && med > 0.0 && med >= fraction * med_abs {
        Some((med, ScaleRule::Median))
    } else if med_abs.is_finite() && med_abs > 0.0 {
        Some((med_abs, ScaleRule::MedianAbs))
    } else {
        None
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// `robust_scale` (one selection in f32 where a count proves the
    /// median passes) gives exactly the scale and rule of the definition.
    #[test]
    fn robust_scale_equals_its_definition(
        flux in prop::collection::vec(
            prop_oneof![-50.0f32..200.0, Just(0.0f32), Just(-0.0f32), -1e30f32..1e30],
            0..300,
        ),
        keep in prop::collection::vec(any::<bool>(), 300),
        fraction in prop_oneof![Just(0.0f64), 0.0f64..1.0, Just(0.1), Just(1.0), 1.0f64..20.0],
    ) {
        let valid = &keep[..flux.len()];
        prop_assert_eq!(
            robust_scale(&flux, valid, fraction),
            scale_by_definition(&flux, valid, fraction)
        );
    }
}
