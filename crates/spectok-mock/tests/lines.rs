//! Spectral lines land where `(1+z)·λ_rest` says, within a pixel, on every
//! survey's native grid (GALAH: converted to air; APOGEE: rest frame).

mod common;

use spectok_mock::lines::{air_to_vac, hydrogen, vac, vac_to_air};
use spectok_mock::observe::{frame_redshift, Arm};
use spectok_mock::{MockObject, MockSurvey, ObjectClass};

use common::{expected, small_config};

/// Fractional pixel index of wavelength `w` in the arm (linear between
/// pixel centres), if inside.
fn position(a: &Arm, w: f64) -> Option<f64> {
    let g = &a.wavelength;
    let k = g.partition_point(|&x| x < w);
    if k == 0 || k >= g.len() {
        return None;
    }
    Some(k as f64 - 1.0 + (w - g[k - 1]) / (g[k] - g[k - 1]))
}

/// Index of the extreme of `f` within ±`half` pixels of `centre` (max when
/// `peak`, else min); `None` if the window leaves the arm or touches a
/// pixel without data.
fn extreme(a: &Arm, f: &[f64], centre: f64, half: usize, peak: bool) -> Option<usize> {
    let c = centre.round() as usize;
    let (lo, hi) = (c.checked_sub(half)?, c + half);
    if hi >= a.len() || (lo..=hi).any(|i| !a.sigma[i].is_finite()) {
        return None;
    }
    (lo..=hi).max_by(|&i, &j| {
        let o = f[i].total_cmp(&f[j]);
        if peak {
            o
        } else {
            o.reverse()
        }
    })
}

/// The observed wavelength of rest vacuum line `rest` in `survey`'s files.
fn observed(obj: &MockObject, survey: MockSurvey, rest: f64) -> f64 {
    let w = (1.0 + frame_redshift(obj, survey)) * rest;
    if survey == MockSurvey::Galah {
        vac_to_air(w)
    } else {
        w
    }
}

#[test]
fn emission_and_absorption_lines_land_within_a_pixel() {
    let cfg = small_config(21, 260);
    let mut checked = std::collections::BTreeMap::<String, usize>::new();
    for (o, obs) in expected(&cfg).values() {
        let Some(o) = o else { continue };
        let survey = obs.survey;
        // (rest vacuum λ, emission?) of isolated lines strong in this object.
        let lines: Vec<(f64, bool, &str)> = match o.class {
            ObjectClass::Galaxy if o.halpha_ew.unwrap_or(0.0) > 15.0 => {
                vec![(vac::HALPHA, true, "galaxy Hα")]
            }
            ObjectClass::Qso => vec![
                (vac::HALPHA, true, "QSO Hα"),
                (vac::MGII, true, "QSO MgII"),
                (vac::CIII, true, "QSO CIII]"),
                (vac::CIV, true, "QSO CIV"),
            ],
            ObjectClass::Star => {
                let t = o.star.map(|p| p.teff).unwrap_or(0.0);
                if survey == MockSurvey::Apogee {
                    if t > 6500.0 {
                        vec![(hydrogen(4, 11), false, "APOGEE Br11")]
                    } else if t < 5000.0 {
                        vec![(air_to_vac(15765.84), false, "APOGEE Mg I")]
                    } else {
                        vec![]
                    }
                } else if t > 5500.0 {
                    vec![(vac::HALPHA, false, "star Hα")]
                } else {
                    vec![]
                }
            }
            _ => vec![],
        };
        for (rest, emission, what) in lines {
            let w = observed(o, survey, rest);
            for a in &obs.arms {
                let Some(p) = position(a, w) else { continue };
                // Lines only: the model minus (or over) the continuum, so a
                // sloped continuum does not move the extreme.
                let f: Vec<f64> = if emission {
                    a.model
                        .iter()
                        .zip(&a.continuum)
                        .map(|(m, c)| m - c)
                        .collect()
                } else {
                    a.model
                        .iter()
                        .zip(&a.continuum)
                        .map(|(m, c)| m / c)
                        .collect()
                };
                let sigma_px = {
                    let k = p.round() as usize;
                    let dw = a.wavelength[k.min(a.len() - 1)] - a.wavelength[k.saturating_sub(1)];
                    (a.lsf[k.min(a.len() - 1)] / dw).max(1.0)
                };
                let Some(i) = extreme(a, &f, p, (3.0 * sigma_px).ceil() as usize, emission) else {
                    continue;
                };
                assert!(
                    (i as f64 - p).abs() <= 1.0,
                    "{what} of object {} ({survey}, z = {}): extreme at pixel {i} ({:.3} Å), expected {p:.2} ({w:.3} Å)",
                    o.id,
                    frame_redshift(o, survey),
                    a.wavelength[i]
                );
                *checked.entry(format!("{what} {survey}")).or_default() += 1;
            }
        }
    }
    let total: usize = checked.values().sum();
    assert!(total >= 40, "only {total} lines checked: {checked:?}");
    for what in ["galaxy Hα", "QSO", "star Hα", "APOGEE"] {
        assert!(
            checked.keys().any(|k| k.starts_with(what)),
            "no {what} line checked: {checked:?}"
        );
    }
    for s in ["sdss", "desi", "galah", "lamost", "apogee"] {
        assert!(
            checked.keys().any(|k| k.ends_with(s)),
            "no line checked in {s}: {checked:?}"
        );
    }
}

#[test]
fn galah_grids_are_air_and_others_vacuum() {
    let cfg = small_config(4, 40);
    for (o, obs) in expected(&cfg).values() {
        let Some(o) = o else { continue };
        if obs.survey != MockSurvey::Galah {
            continue;
        }
        // Hα in air is 1.8 Å blueward of vacuum Hα; the CCD 3 grid covers it.
        let air = observed(o, MockSurvey::Galah, vac::HALPHA);
        let vacw = (1.0 + o.z) * vac::HALPHA;
        assert!((vacw - air - 1.81).abs() < 0.02, "{vacw} {air}");
        assert_eq!(obs.survey.medium(), spectok_io::Medium::Air);
        return;
    }
    panic!("no GALAH star in the test set");
}
