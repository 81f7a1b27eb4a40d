//! One survey's observation of one object: the native grid, the model
//! seen at the survey's resolution, per-pixel noise from the survey's S/N
//! distribution, bad pixels, chip gaps and mask bits.
//!
//! Noise: `σ_i = K √(s_i² + max(m_i, 0)/m̄)` — a sky term `s_i` (the
//! survey's sky level times a sky spectrum with emission lines, larger at
//! arm edges) plus a photon term (`m̄` the median model flux) — where `K`
//! is set so that the median of `m_i/σ_i` is the spectrum's S/N, drawn
//! from the survey's S/N distribution given the object's magnitude. The
//! flux is `m_i + σ_i·N(0,1)`. Pixels without data (bad-pixel runs, chip
//! gaps) have `σ = ∞`, flux 0 and a mask bit. Flux is then quantised to a
//! power-of-two step no larger than `σ/q` (q = [`ObserveConfig::quantize`],
//! as FITS tile compression does), which keeps files compressible and adds
//! a variance of at most `σ²/(12 q²)`; stored inverse variances and σ are
//! rounded to 8 significant bits (≤ 0.2 %).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::OnceLock;

use spectok_io::{Labels, Segment, Source, Spectrum};

use crate::lines::air_to_vac;
use crate::objects::{MockObject, ObjectClass};
use crate::rng::{normal, poisson, stream, uniform, Purpose};
use crate::survey::{self, mask, MockSurvey};

/// Settings of the observation step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObserveConfig {
    /// Flux is quantised to a power-of-two step ≤ σ/quantize; 0 disables
    /// quantisation.
    pub quantize: f64,
    /// Largest number of APOGEE visits per star (≥ 1).
    pub max_visits: u32,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        ObserveConfig {
            quantize: 16.0,
            max_visits: 3,
        }
    }
}

/// A regular grid: `start + step·i` (linear) or `10^(start + step·i)`
/// (log-linear), in the survey's medium.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub start: f64,
    pub step: f64,
    pub len: usize,
    pub log: bool,
}

/// One arm, chip or CCD of an observation.
#[derive(Clone, Debug, PartialEq)]
pub struct Arm {
    /// Segment name (`all`, `b`, `ccd3`, …).
    pub name: String,
    pub grid: Grid,
    /// Wavelength of each pixel as the file gives it (Å; air for GALAH).
    pub wavelength: Vec<f64>,
    /// Noiseless flux, survey units.
    pub model: Vec<f64>,
    /// Noiseless continuum (no lines), survey units.
    pub continuum: Vec<f64>,
    /// Observed flux.
    pub flux: Vec<f64>,
    /// Noise σ per pixel; `f64::INFINITY` where the pixel has no data.
    pub sigma: Vec<f64>,
    /// The survey's pixel mask (SDSS `and_mask`).
    pub mask: Vec<u32>,
    /// Bits set in some exposures only (SDSS `or_mask` = `mask | or_only`).
    pub or_only: Vec<u32>,
    /// Sky flux (survey units), for layouts that carry it.
    pub sky: Vec<f64>,
    /// Gaussian σ of the line-spread function, Å.
    pub lsf: Vec<f64>,
}

impl Arm {
    /// Inverse variance of pixel `i`: `1/σ²` rounded to 8 significant
    /// bits, 0 without data.
    pub fn ivar(&self, i: usize) -> f32 {
        ivar_of(self.sigma[i])
    }

    pub fn len(&self) -> usize {
        self.wavelength.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wavelength.is_empty()
    }
}

/// `1/σ²` rounded to 8 significant bits; 0 for σ = ∞ or σ ≤ 0.
pub fn ivar_of(sigma: f64) -> f32 {
    if sigma.is_finite() && sigma > 0.0 {
        round_bits(1.0 / (sigma * sigma), 8) as f32
    } else {
        0.0
    }
}

/// `x` rounded to `bits` (1–51) fraction bits after the leading one,
/// half away from zero (0 and non-finite values unchanged).
pub fn round_bits(x: f64, bits: u32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let shift = 52 - bits.clamp(1, 51);
    let half = 1u64 << (shift - 1);
    let keep = !((1u64 << shift) - 1);
    f64::from_bits((x.to_bits() + half) & keep)
}

/// The largest power of two not above `x` (> 0, finite, normal).
fn pow2_floor(x: f64) -> f64 {
    f64::from_bits(x.to_bits() & (0x7ffu64 << 52))
}

/// `x` rounded to a power-of-two step no larger than `sigma / q`.
pub fn quantise(x: f64, sigma: f64, q: f64) -> f64 {
    if q <= 0.0 || !sigma.is_finite() || sigma <= 0.0 {
        return x;
    }
    let r = sigma / q;
    if !r.is_normal() {
        return x;
    }
    let step = pow2_floor(r);
    (x / step).round() * step
}

/// One survey's observation of one object (or of blank sky).
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub survey: MockSurvey,
    /// Object index in the catalogue (`None` for a sky fibre).
    pub object: Option<u64>,
    /// The object id (negative for sky fibres).
    pub id: i64,
    pub arms: Vec<Arm>,
    /// Median S/N per pixel the noise was scaled to.
    pub snr: f64,
    /// APOGEE: the individual visits' fluxes (the combined flux in `arms`
    /// is their mean; each visit's σ is `σ·√n`).
    pub visits: Vec<Vec<f64>>,
}

impl Observation {
    /// Total number of pixels.
    pub fn len(&self) -> usize {
        self.arms.iter().map(Arm::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The observation as the io crate's [`Spectrum`] (one segment per
    /// arm), with `labels` and `source`.
    pub fn to_spectrum(&self, labels: Labels, source: Source) -> Spectrum {
        let n = self.len();
        let mut s = Spectrum {
            id: self.id.to_string(),
            survey: self.survey.survey(),
            source,
            wavelength: Vec::with_capacity(n),
            flux: Vec::with_capacity(n),
            ivar: Vec::with_capacity(n),
            mask: Vec::with_capacity(n),
            segments: Vec::with_capacity(self.arms.len()),
            medium: self.survey.medium(),
            lsf_sigma: Some(Vec::with_capacity(n)),
            labels,
        };
        for a in &self.arms {
            let start = s.wavelength.len();
            s.wavelength.extend_from_slice(&a.wavelength);
            s.flux.extend(a.flux.iter().map(|&f| f as f32));
            s.ivar.extend((0..a.len()).map(|i| a.ivar(i)));
            s.mask.extend_from_slice(&a.mask);
            if let Some(l) = s.lsf_sigma.as_mut() {
                l.extend(a.lsf.iter().map(|&v| round_bits(v, 8) as f32));
            }
            s.segments.push(Segment {
                name: a.name.clone(),
                start,
                end: start + a.len(),
            });
        }
        s
    }
}

/// The labels every copy of an object carries in shards: class, redshift,
/// stellar parameters (stars), position, S/N and the mock marker.
pub fn labels_for(obj: &MockObject, obs: &Observation, marker: &str) -> Labels {
    let mut l = Labels {
        redshift: Some(frame_redshift(obj, obs.survey)),
        redshift_err: Some(redshift_err(obj, obs.survey)),
        redshift_warning: Some(0),
        class: Some(obj.class.name().to_string()),
        subclass: (!obj.subclass.is_empty()).then(|| obj.subclass.clone()),
        ..Labels::default()
    };
    if let Some(p) = obj.star {
        l.teff = Some(p.teff);
        l.logg = Some(p.logg);
        l.fe_h = Some(p.fe_h);
        l.alpha_m = Some(p.alpha_m);
        l.extra.insert("rv".into(), p.rv);
        l.extra.insert("vmicro".into(), p.vmicro);
        l.extra.insert("vbroad".into(), p.vbroad);
    }
    if let Some(v) = obj.vdisp {
        l.extra.insert("vdisp".into(), v);
    }
    if let Some(v) = obj.halpha_ew {
        l.extra.insert("halpha_ew".into(), v);
    }
    l.extra.insert("ra".into(), obj.ra);
    l.extra.insert("dec".into(), obj.dec);
    l.extra.insert("mag".into(), obj.mag);
    l.extra.insert("snr".into(), obs.snr);
    l.text.insert("mock".into(), marker.to_string());
    l
}

/// The redshift uncertainty a survey pipeline would quote for the object.
pub fn redshift_err(obj: &MockObject, survey: MockSurvey) -> f64 {
    let base = match obj.class {
        ObjectClass::Star => 5e-6,
        ObjectClass::Galaxy => 2e-5,
        ObjectClass::Qso => 2e-4,
    };
    let scale = match survey {
        MockSurvey::Apogee | MockSurvey::Galah => 0.1,
        _ => 1.0,
    };
    base * scale * (1.0 + obj.z)
}

/// Sky emission lines as (vacuum Å, peak relative to the sky continuum):
/// the bright optical lines plus a fixed pseudo list of OH lines in the
/// red and the H band (built once from a constant seed).
fn sky_lines() -> &'static [(f64, f64)] {
    static LINES: OnceLock<Vec<(f64, f64)>> = OnceLock::new();
    LINES.get_or_init(|| {
        let mut v = vec![
            (5578.89, 25.0),
            (5891.58, 5.0),
            (5897.56, 4.0),
            (6302.05, 12.0),
            (6365.54, 4.0),
        ];
        let mut s: u64 = 0xD1B5_4A32_D192_ED03;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for (lo, hi, n, peak) in [(6800.0, 10400.0, 160, 15.0), (15100.0, 17000.0, 110, 40.0)] {
            for _ in 0..n {
                let w = lo + (hi - lo) * next();
                v.push((w, 2.0 + peak * next() * next()));
            }
        }
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    })
}

/// Sky spectrum shape (1 = dark continuum) on `grid` (vacuum) with line
/// widths `lsf`.
fn sky_shape(grid: &[f64], lsf: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = grid
        .iter()
        .map(|&w| 1.0 + 0.4 * ((w - 6000.0) / 4000.0).clamp(0.0, 1.0))
        .collect();
    let (Some(&lo), Some(&hi)) = (grid.first(), grid.last()) else {
        return s;
    };
    for &(c, a) in sky_lines() {
        if c < lo - 10.0 || c > hi + 10.0 {
            continue;
        }
        let k = grid.partition_point(|&w| w < c).min(grid.len() - 1);
        let sig = lsf[k].max(1e-3);
        let a0 = grid.partition_point(|&w| w < c - 5.0 * sig);
        let a1 = grid.partition_point(|&w| w <= c + 5.0 * sig);
        for i in a0..a1 {
            let x = (grid[i] - c) / sig;
            s[i] += a * (-0.5 * x * x).exp();
        }
    }
    s
}

/// The grids (and arm names) of one survey for one observation.
fn grids(survey: MockSurvey, rng: &mut ChaCha8Rng) -> Vec<(String, Grid)> {
    match survey {
        MockSurvey::Sdss => {
            let k0 = rng.random_range(20..=90usize);
            let k1 = rng.random_range(4630..=survey::SDSS_NPIX_FULL - 1);
            // The start is a short decimal so that COEFF0 round-trips
            // through a header card exactly.
            let start = decimal(survey::SDSS_LOGLAM0 + survey::SDSS_DLOGLAM * k0 as f64, 4);
            vec![(
                "all".into(),
                Grid {
                    start,
                    step: survey::SDSS_DLOGLAM,
                    len: k1 - k0 + 1,
                    log: true,
                },
            )]
        }
        MockSurvey::Desi => survey::DESI_ARMS
            .iter()
            .map(|&(name, start, len)| {
                (
                    name.to_string(),
                    Grid {
                        start,
                        step: survey::DESI_DLAMBDA,
                        len,
                        log: false,
                    },
                )
            })
            .collect(),
        MockSurvey::Apogee => vec![(
            "all".into(),
            Grid {
                start: survey::APOGEE_CRVAL1,
                step: survey::APOGEE_CDELT1,
                len: survey::APOGEE_NPIX,
                log: true,
            },
        )],
        MockSurvey::Galah => survey::GALAH_CCDS
            .iter()
            .enumerate()
            .map(|(k, &(start, step))| {
                let jitter = uniform(rng, -0.1, 0.1);
                (
                    format!("ccd{}", k + 1),
                    Grid {
                        start: decimal(start + jitter, 4),
                        step,
                        len: survey::GALAH_NPIX,
                        log: false,
                    },
                )
            })
            .collect(),
        MockSurvey::LamostLrs => vec![(
            "all".into(),
            Grid {
                start: survey::LAMOST_COEFF0,
                step: survey::LAMOST_COEFF1,
                len: survey::LAMOST_NPIX,
                log: true,
            },
        )],
    }
}

/// `x` rounded to `digits` decimals, as the nearest f64 to that decimal.
fn decimal(x: f64, digits: usize) -> f64 {
    format!("{x:.digits$}").parse().unwrap_or(x)
}

/// The wavelengths of `grid` exactly as a reader of the survey's files
/// computes them (f32 table columns are rounded to f32 first).
fn wavelengths(survey: MockSurvey, g: &Grid) -> Vec<f64> {
    (0..g.len)
        .map(|i| match survey {
            // spec-* stores log10 λ as an f32 column.
            MockSurvey::Sdss => 10f64.powf((g.start + g.step * i as f64) as f32 as f64),
            // LAMOST stores λ as an f32 column.
            MockSurvey::LamostLrs => 10f64.powf(g.start + g.step * i as f64) as f32 as f64,
            _ if g.log => 10f64.powf(g.start + g.step * (i as f64 + 1.0 - 1.0)),
            _ => g.start + g.step * (i as f64 + 1.0 - 1.0),
        })
        .collect()
}

/// The redshift at which `survey` presents `obj`: APOGEE's `apStar` and
/// `aspcapStar` spectra are shifted to the star's rest frame (their
/// headers give the velocity), every other survey gives the observed
/// (heliocentric) frame.
pub fn frame_redshift(obj: &MockObject, survey: MockSurvey) -> f64 {
    if survey == MockSurvey::Apogee {
        0.0
    } else {
        obj.z
    }
}

/// Observes `obj` with `survey`. Deterministic in `(seed, obj.index,
/// survey)`.
pub fn observe(
    obj: &MockObject,
    survey: MockSurvey,
    seed: u64,
    cfg: &ObserveConfig,
) -> Observation {
    let mut rng = stream(seed, obj.index, Purpose::Observation, survey.code());
    let (r0, m0, lo, hi) = survey.snr_model();
    let snr =
        (r0 * 10f64.powf(-0.2 * (obj.mag - m0)) * normal(&mut rng, 0.0, 0.3).exp()).clamp(lo, hi);
    let unit = survey.flux_unit();
    let z = frame_redshift(obj, survey);
    let mut arms = Vec::new();
    for (name, g) in grids(survey, &mut rng) {
        let wavelength = wavelengths(survey, &g);
        let vacuum: Vec<f64> = if survey == MockSurvey::Galah {
            wavelength.iter().map(|&w| air_to_vac(w)).collect()
        } else {
            wavelength.clone()
        };
        let lsf: Vec<f64> = wavelength
            .iter()
            .map(|&w| survey.lsf_sigma(&name, w))
            .collect();
        let mut model = vec![0.0; g.len];
        let arm_name = name.clone();
        let mut continuum =
            obj.model
                .evaluate_at(z, &vacuum, &|w| survey.lsf_sigma(&arm_name, w), &mut model);
        model.iter_mut().for_each(|m| *m *= unit);
        continuum.iter_mut().for_each(|c| *c *= unit);
        arms.push(new_arm(name, g, wavelength, &vacuum, model, continuum, lsf));
    }
    let mut obs = Observation {
        survey,
        object: Some(obj.index),
        id: obj.id as i64,
        arms,
        snr,
        visits: Vec::new(),
    };
    add_noise(&mut obs, &mut rng, cfg, None);
    obs
}

/// A DESI sky fibre: no object, sky-subtraction residual noise only.
/// Deterministic in `(seed, stream)`.
pub fn observe_sky(
    survey: MockSurvey,
    id: i64,
    seed: u64,
    stream_index: u64,
    cfg: &ObserveConfig,
) -> Observation {
    let mut rng = stream(seed, stream_index, Purpose::File, survey.code());
    let mut arms = Vec::new();
    for (name, g) in grids(survey, &mut rng) {
        let wavelength = wavelengths(survey, &g);
        let lsf: Vec<f64> = wavelength
            .iter()
            .map(|&w| survey.lsf_sigma(&name, w))
            .collect();
        let n = g.len;
        let vacuum = wavelength.clone();
        arms.push(new_arm(
            name,
            g,
            wavelength,
            &vacuum,
            vec![0.0; n],
            vec![0.0; n],
            lsf,
        ));
    }
    let mut obs = Observation {
        survey,
        object: None,
        id,
        arms,
        snr: 0.0,
        visits: Vec::new(),
    };
    // Residual sky noise of 0.3e-17 erg/s/cm²/Å per pixel on the dark sky.
    add_noise(&mut obs, &mut rng, cfg, Some(0.3));
    obs
}

fn new_arm(
    name: String,
    grid: Grid,
    wavelength: Vec<f64>,
    vacuum: &[f64],
    model: Vec<f64>,
    continuum: Vec<f64>,
    lsf: Vec<f64>,
) -> Arm {
    let n = wavelength.len();
    let sky = sky_shape(vacuum, &lsf);
    Arm {
        name,
        grid,
        wavelength,
        model,
        continuum,
        flux: vec![0.0; n],
        sigma: vec![0.0; n],
        mask: vec![0; n],
        or_only: vec![0; n],
        sky,
        lsf,
    }
}

/// The element of rank n/2 (the upper median).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let k = v.len() / 2;
    *v.select_nth_unstable_by(k, f64::total_cmp).1
}

/// Marks pixels without data: σ = ∞, flux 0, `bits` set (pixels already
/// without data are left as they are).
fn kill(arm: &mut Arm, range: std::ops::Range<usize>, bits: u32) {
    for i in range {
        if i < arm.len() && arm.sigma[i].is_finite() {
            arm.sigma[i] = f64::INFINITY;
            arm.mask[i] |= bits;
        }
    }
}

/// Marks chip-gap pixels: no data and exactly `bits` (no other flag).
fn gap(arm: &mut Arm, range: std::ops::Range<usize>, bits: u32) {
    for i in range {
        if i < arm.len() {
            arm.sigma[i] = f64::INFINITY;
            arm.mask[i] = bits;
        }
    }
}

/// Sky-shape value above which a pixel is flagged as bright sky.
pub const BRIGHT_SKY: f64 = 7.0;

/// Scales σ to the S/N (or to an absolute sky σ for sky fibres), sets
/// masks and gaps, draws the noise and quantises the flux.
fn add_noise(
    obs: &mut Observation,
    rng: &mut ChaCha8Rng,
    cfg: &ObserveConfig,
    sky_sigma: Option<f64>,
) {
    let survey = obs.survey;
    let sky_level = survey.sky_level();
    let m_med = median(
        obs.arms
            .iter()
            .flat_map(|a| a.model.iter().copied())
            .filter(|m| *m > 0.0)
            .collect(),
    )
    .max(1e-30);
    // Dimensionless σ shape: sky (with lines and noisier arm edges) plus
    // photon noise normalised to 1 at the median flux.
    for arm in &mut obs.arms {
        let n = arm.len();
        for i in 0..n {
            let edge =
                1.0 + 1.5 * (-(i as f64) / 60.0).exp() + (-((n - 1 - i) as f64) / 60.0).exp();
            let sky = sky_level * arm.sky[i] * edge;
            arm.sigma[i] = (sky * sky + arm.model[i].max(0.0) / m_med).sqrt();
        }
    }
    // Scale to flux units.
    let k = match sky_sigma {
        Some(s) => s / sky_level,
        None => {
            let r = median(
                obs.arms
                    .iter()
                    .flat_map(|a| a.model.iter().zip(&a.sigma).map(|(m, s)| m / s))
                    .collect(),
            );
            if r > 0.0 && obs.snr > 0.0 {
                r / obs.snr
            } else {
                sky_level
            }
        }
    };
    for arm in &mut obs.arms {
        arm.sigma.iter_mut().for_each(|s| *s *= k);
    }
    masks(obs, rng);
    // The sky spectrum in flux units (≈ 20 times its noise).
    for arm in &mut obs.arms {
        arm.sky.iter_mut().for_each(|s| *s *= 20.0 * k * sky_level);
    }
    let nvis = if survey == MockSurvey::Apogee {
        rng.random_range(1..=cfg.max_visits.max(1)) as usize
    } else {
        1
    };
    if nvis > 1 {
        // Visits with σ√n each; the combination is their mean, so its noise
        // is σ.
        let root = (nvis as f64).sqrt();
        let mut visits: Vec<Vec<f64>> = vec![Vec::new(); nvis];
        for arm in &mut obs.arms {
            let n = arm.len();
            let arm_visits: Vec<Vec<f64>> = (0..nvis)
                .map(|_| {
                    (0..n)
                        .map(|i| {
                            let s = arm.sigma[i];
                            if s.is_finite() {
                                quantise(
                                    arm.model[i] + normal(rng, 0.0, s * root),
                                    s * root,
                                    cfg.quantize,
                                )
                            } else {
                                0.0
                            }
                        })
                        .collect()
                })
                .collect();
            for i in 0..n {
                let s = arm.sigma[i];
                arm.flux[i] = if s.is_finite() {
                    let mean = arm_visits.iter().map(|v| v[i]).sum::<f64>() / nvis as f64;
                    quantise(mean, s, cfg.quantize)
                } else {
                    0.0
                };
            }
            for (all, mine) in visits.iter_mut().zip(arm_visits) {
                all.extend(mine);
            }
        }
        obs.visits = visits;
    } else {
        for arm in &mut obs.arms {
            for i in 0..arm.len() {
                let s = arm.sigma[i];
                arm.flux[i] = if s.is_finite() {
                    quantise(arm.model[i] + normal(rng, 0.0, s), s, cfg.quantize)
                } else {
                    0.0
                };
            }
        }
    }
}

/// Bad-pixel runs, chip gaps and informational mask bits.
fn masks(obs: &mut Observation, rng: &mut ChaCha8Rng) {
    let survey = obs.survey;
    let bad_bit = match survey {
        MockSurvey::Sdss => mask::SDSS_FULLREJECT,
        MockSurvey::Desi => mask::DESI_BADPIX,
        MockSurvey::Apogee => mask::APOGEE_BADPIX | mask::APOGEE_CRPIX,
        MockSurvey::Galah => 0,
        MockSurvey::LamostLrs => mask::LAMOST_BADCCD,
    };
    let sky_bit = match survey {
        MockSurvey::Sdss => mask::SDSS_BRIGHTSKY,
        MockSurvey::Apogee => mask::APOGEE_SIG_SKYLINE,
        MockSurvey::LamostLrs => mask::LAMOST_BRIGHTSKY,
        _ => 0,
    };
    for arm in &mut obs.arms {
        let n = arm.len();
        if n == 0 {
            continue;
        }
        if sky_bit != 0 {
            for i in 0..n {
                if arm.sky[i] > BRIGHT_SKY {
                    arm.mask[i] |= sky_bit;
                }
            }
        }
        if survey == MockSurvey::Apogee {
            // Chip gaps: everything outside the three chips.
            let shift = rng.random_range(0..=35usize);
            let mut prev_end = 0;
            for &(a, b) in &survey::APOGEE_CHIPS {
                gap(arm, prev_end..a - shift, mask::APOGEE_BADPIX);
                prev_end = b - shift + 1;
            }
            gap(arm, prev_end..n, mask::APOGEE_BADPIX);
            if rng.random::<f64>() < 0.2 {
                let s = survey::APOGEE_CHIPS[0].0 - shift + rng.random_range(0..1500usize);
                for i in s..(s + 600).min(n) {
                    arm.mask[i] |= mask::APOGEE_PERSIST_LOW;
                }
            }
        }
        if bad_bit != 0 {
            let runs = poisson(rng, survey.bad_runs());
            for _ in 0..runs {
                let len = 1 + (-6.0 * (1.0 - rng.random::<f64>()).ln()).min(39.0) as usize;
                let s = rng.random_range(0..n);
                kill(arm, s..(s + len).min(n), bad_bit);
            }
        }
        if survey == MockSurvey::Sdss {
            for i in 0..n {
                if rng.random::<f64>() < 0.004 {
                    arm.or_only[i] |= mask::SDSS_COMBINEREJ;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_helpers() {
        assert_eq!(round_bits(1.0, 8), 1.0);
        let x = round_bits(std::f64::consts::PI, 8);
        assert!((x - std::f64::consts::PI).abs() / std::f64::consts::PI < 1.0 / 256.0);
        let q = quantise(10.123_456, 1.0, 16.0);
        assert_eq!(q, 10.125);
        assert_eq!(quantise(3.3, 1.0, 0.0), 3.3);
        assert_eq!(ivar_of(f64::INFINITY), 0.0);
        assert!((ivar_of(0.5) - 4.0).abs() < 1e-6);
    }
}
