//! Mock objects: galaxies, quasars and stars with labels drawn from
//! realistic ranges, and the physical [`Model`] each one's spectrum
//! follows.
//!
//! Labels: galaxy z ∈ [0.005, 1.2], quasar z ∈ [0.1, 4], stars Teff
//! 3200–8000 K, log g 0.5–5, [Fe/H] −2.5–0.5 (dwarfs and giants on a rough
//! HR-diagram locus, α-enhancement rising at low [Fe/H]).

use rand_chacha::ChaCha8Rng;

use crate::lines::{self, vac, Sensitivity, StellarLine};
use crate::physics::{
    curve_of_growth, Band, Continuum, Edge, Line, Model, ObservedLine, C_KMS, FWHM_PER_SIGMA,
};
use crate::rng::{normal, normal_in, poisson, stream, uniform, Purpose};
use crate::survey::MockSurvey;

/// Object class, as survey pipelines name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectClass {
    Galaxy,
    Qso,
    Star,
}

impl ObjectClass {
    /// `GALAXY`, `QSO` or `STAR`.
    pub fn name(self) -> &'static str {
        match self {
            ObjectClass::Galaxy => "GALAXY",
            ObjectClass::Qso => "QSO",
            ObjectClass::Star => "STAR",
        }
    }
}

/// Stellar parameters (the labels of a star).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StarParams {
    /// Effective temperature, K.
    pub teff: f64,
    /// Surface gravity log10(g / cm s⁻²).
    pub logg: f64,
    /// Metallicity [Fe/H] (also [M/H]), dex.
    pub fe_h: f64,
    /// [α/M], dex.
    pub alpha_m: f64,
    /// Microturbulence, km/s.
    pub vmicro: f64,
    /// Macroturbulence + rotation broadening, km/s.
    pub vbroad: f64,
    /// Heliocentric radial velocity, km/s.
    pub rv: f64,
}

impl StarParams {
    /// MK spectral type from Teff, e.g. `K3`.
    pub fn spectral_type(&self) -> String {
        let bins: [(char, f64, f64); 5] = [
            ('M', 2400.0, 3900.0),
            ('K', 3900.0, 5300.0),
            ('G', 5300.0, 6000.0),
            ('F', 6000.0, 7500.0),
            ('A', 7500.0, 10000.0),
        ];
        for (letter, lo, hi) in bins {
            if self.teff < hi {
                let sub = ((hi - self.teff.max(lo)) / (hi - lo) * 10.0)
                    .floor()
                    .clamp(0.0, 9.0);
                return format!("{letter}{}", sub as u32);
            }
        }
        "A0".into()
    }

    /// The spectral-type letter alone (DESI `SUBTYPE`).
    pub fn spectral_letter(&self) -> String {
        self.spectral_type().chars().take(1).collect()
    }
}

/// One mock object: identity, labels and the model of its spectrum.
#[derive(Clone, Debug, PartialEq)]
pub struct MockObject {
    /// Position in the mock catalogue.
    pub index: u64,
    /// Identifier shared by every survey's file of this object (see
    /// [`object_id`]).
    pub id: u64,
    pub class: ObjectClass,
    /// Survey-pipeline style subclass (`STARFORMING`, `BROADLINE`, `K3`, …).
    pub subclass: String,
    /// Redshift; for stars the radial velocity over c.
    pub z: f64,
    /// Right ascension and declination, degrees.
    pub ra: f64,
    pub dec: f64,
    /// AB magnitude at 6200 Å.
    pub mag: f64,
    /// Stellar parameters, for stars.
    pub star: Option<StarParams>,
    /// Stellar velocity dispersion, km/s, for galaxies.
    pub vdisp: Option<f64>,
    /// Rest equivalent width of Hα emission, Å (galaxies, quasars).
    pub halpha_ew: Option<f64>,
    /// The noiseless spectrum.
    pub model: Model,
}

/// The id of object `index` under `seed`: the 15-digit number
/// `9·10¹⁴ + (seed mod 90)·10¹² + (index mod 10¹²)`. It is shared by every
/// survey file of the object (`SPECOBJID`, `TARGETID`, `APOGEE_ID`,
/// GALAH `sobject_id`, LAMOST `OBSID`), so the same object seen by two
/// surveys has one id; its leading 9 keeps it apart from real GALAH
/// `sobject_id`s, whose leading digits are a date.
pub fn object_id(seed: u64, index: u64) -> u64 {
    900_000_000_000_000 + (seed % 90) * 1_000_000_000_000 + index % 1_000_000_000_000
}

/// Flux density (1e-17 erg s⁻¹ cm⁻² Å⁻¹) of an AB magnitude at 6200 Å.
pub fn ab_flux_6200(mag: f64) -> f64 {
    2.83e8 * 10f64.powf(-0.4 * mag)
}

/// Draws the object `index` of class `class` whose primary survey is
/// `primary` (which sets the magnitude range).
pub fn sample_object(seed: u64, index: u64, class: ObjectClass, primary: MockSurvey) -> MockObject {
    let mut rng = stream(seed, index, Purpose::Object, 0);
    let ra = uniform(&mut rng, 0.0, 360.0);
    let dec = (uniform(&mut rng, -1.0, 1.0)).asin().to_degrees();
    let mut obj = match class {
        ObjectClass::Galaxy => sample_galaxy(&mut rng, primary),
        ObjectClass::Qso => sample_qso(&mut rng),
        ObjectClass::Star => sample_star(&mut rng, primary),
    };
    obj.index = index;
    obj.id = object_id(seed, index);
    obj.ra = ra;
    obj.dec = dec;
    obj
}

fn blank(class: ObjectClass, model: Model) -> MockObject {
    MockObject {
        index: 0,
        id: 0,
        class,
        subclass: String::new(),
        z: model.z,
        ra: 0.0,
        dec: 0.0,
        mag: 0.0,
        star: None,
        vdisp: None,
        halpha_ew: None,
        model,
    }
}

fn velocity_sigma(lambda: f64, v: f64) -> f64 {
    lambda * v / C_KMS
}

fn quad(a: f64, b: f64) -> f64 {
    (a * a + b * b).sqrt()
}

// ---------------------------------------------------------------- galaxies

fn sample_galaxy_z(rng: &mut ChaCha8Rng) -> f64 {
    if rng_unit(rng) < 0.3 {
        return uniform(rng, 0.005, 1.2);
    }
    // p(z) ∝ z² exp(−(z/0.3)^1.5), by rejection, truncated to [0.005, 1.2].
    let peak = {
        let zp = 0.3 * (4.0f64 / 3.0).powf(1.0 / 1.5);
        zp * zp * (-(zp / 0.3f64).powf(1.5)).exp()
    };
    for _ in 0..200 {
        let z = uniform(rng, 0.005, 1.2);
        let p = z * z * (-(z / 0.3f64).powf(1.5)).exp() / peak;
        if rng_unit(rng) < p {
            return z;
        }
    }
    0.3
}

fn rng_unit(rng: &mut ChaCha8Rng) -> f64 {
    uniform(rng, 0.0, 1.0)
}

fn sample_galaxy(rng: &mut ChaCha8Rng, primary: MockSurvey) -> MockObject {
    let z = sample_galaxy_z(rng);
    let young = if rng_unit(rng) < 0.35 {
        uniform(rng, 0.0, 0.15)
    } else {
        uniform(rng, 0.2, 1.0)
    };
    let break_depth = uniform(rng, 0.35, 0.55);
    let av = young * uniform(rng, 0.0, 1.2);
    let continuum = Continuum::Galaxy {
        young,
        break_depth,
        dust: -0.6 * av,
    };
    let vdisp = normal_in(rng, 70.0 + 200.0 * (1.0 - young), 40.0, 40.0, 400.0);
    let gas = uniform(rng, 30.0, 90.0);
    let metal = 10f64.powf(normal(rng, 0.0, 0.15));
    let old = 1.0 - young;

    let mut absorption = Vec::new();
    let mut abs = |center: f64, ew: f64, intrinsic: f64| {
        absorption.push(Line {
            center,
            sigma: quad(intrinsic, velocity_sigma(center, vdisp)),
            strength: ew,
        })
    };
    abs(vac::CA_K, (2.0 + 9.0 * old) * metal, 2.0);
    abs(vac::CA_H, 0.85 * (2.0 + 9.0 * old) * metal, 2.0);
    abs(vac::G_BAND, (1.0 + 4.0 * old) * metal, 6.0);
    for &w in &vac::MG_B {
        abs(w, (0.5 + 1.2 * old) * metal, 0.8);
    }
    abs(vac::FE_5270, (1.0 + 1.0 * old) * metal, 2.0);
    abs(vac::FE_5335, (0.8 + 1.0 * old) * metal, 2.0);
    for &w in &vac::NA_D {
        abs(w, (0.4 + 0.9 * old) * metal, 0.5);
    }
    for &w in &vac::CA_TRIPLET {
        abs(w, (0.8 + 1.4 * old) * metal, 1.0);
    }
    let balmer_abs = 1.0 + 1.5 * young + 6.0 * young * old;
    for (_, w, rel) in lines::balmer().iter().take(6) {
        abs(*w, balmer_abs * rel, 3.0);
    }

    // Emission: Hα equivalent width sets the star formation; ratios follow
    // the star-forming BPT locus.
    let mut ha_ew = young.powf(1.5) * (normal(rng, 60f64.ln(), 0.5)).exp();
    if young < 0.15 {
        ha_ew *= 0.1;
    }
    let f_ha = ha_ew * continuum.at(vac::HALPHA);
    let f_hb = f_ha / 2.86 * 10f64.powf(-0.4 * 0.35 * av);
    let log_n2 = normal_in(rng, -0.4, 0.15, -1.2, 0.1);
    let log_o3 = 0.61 / (log_n2 - 0.05) + 1.19 - normal(rng, 0.2, 0.15).abs();
    let f_o3 = f_hb * 10f64.powf(log_o3.clamp(-1.5, 1.0));
    let f_o2 = f_hb * 10f64.powf(normal(rng, 0.35, 0.15));
    let f_s2 = f_ha * 10f64.powf(normal(rng, -0.55, 0.1));
    let f_n2 = f_ha * 10f64.powf(log_n2);
    let fesc = uniform(rng, 0.0, 0.2);
    let mut emission = Vec::new();
    let mut em = |center: f64, flux: f64| {
        emission.push(Line {
            center,
            sigma: velocity_sigma(center, gas),
            strength: flux,
        })
    };
    em(vac::LYA, 8.7 * f_ha * fesc);
    em(vac::OII_3726, f_o2 / 2.3);
    em(vac::OII_3729, f_o2 * 1.3 / 2.3);
    em(vac::NEIII, 0.08 * f_o3);
    em(vac::HDELTA, 0.26 * f_hb);
    em(vac::HGAMMA, 0.47 * f_hb);
    em(vac::HBETA, f_hb);
    em(vac::OIII_4959, f_o3 / 2.98);
    em(vac::OIII_5007, f_o3);
    em(vac::HEI, 0.1 * f_hb);
    em(vac::OI, 0.05 * f_ha);
    em(vac::NII_6548, f_n2 / 3.05);
    em(vac::HALPHA, f_ha);
    em(vac::NII_6583, f_n2);
    em(vac::SII_6716, f_s2 * 1.3 / 2.3);
    em(vac::SII_6731, f_s2 / 2.3);

    let mag = match primary {
        MockSurvey::Desi => uniform(rng, 18.0, 22.0),
        MockSurvey::LamostLrs => uniform(rng, 14.5, 17.5),
        _ => uniform(rng, 16.0, 20.5),
    };
    let model = Model {
        z,
        amplitude: ab_flux_6200(mag) / continuum_at_6200(&continuum, z),
        continuum,
        absorption,
        emission,
        bands: Vec::new(),
        forest: Vec::new(),
        edges: Vec::new(),
    };
    let mut obj = blank(ObjectClass::Galaxy, model);
    obj.mag = mag;
    obj.vdisp = Some(vdisp);
    obj.halpha_ew = Some(ha_ew);
    obj.subclass = if ha_ew > 50.0 && young > 0.7 {
        "STARBURST".into()
    } else if ha_ew > 5.0 {
        "STARFORMING".into()
    } else {
        String::new()
    };
    obj
}

/// The continuum at observed 6200 Å for redshift `z` (the magnitude's
/// reference point); never below a small floor.
fn continuum_at_6200(c: &Continuum, z: f64) -> f64 {
    c.at(6200.0 / (1.0 + z)).max(1e-3)
}

// ---------------------------------------------------------------- quasars

fn sample_qso_z(rng: &mut ChaCha8Rng) -> f64 {
    if rng_unit(rng) < 0.5 {
        uniform(rng, 0.1, 4.0)
    } else {
        normal_in(rng, 1.8, 0.7, 0.1, 4.0)
    }
}

/// Lyman-α forest absorbers per unit redshift at z (N_HI 10^12–10^17),
/// `A (1+z)^2.92`, calibrated so the mean transmission follows
/// Faucher-Giguère et al. (2008), τ_eff = 0.0018 (1+z)^3.92.
const FOREST_A: f64 = 28.0;
const FOREST_GAMMA: f64 = 2.92;
const LOG_N_MIN: f64 = 12.0;
const LOG_N_MAX: f64 = 17.0;
/// Lyα oscillator strength × λ relative to Lyβ: τ_β/τ_α.
const LYB_OVER_LYA: f64 = 0.1603;

/// Draws the Lyα/β forest and Lyman-limit systems in front of a quasar at
/// `zq`, over observed wavelengths from 3000 Å up to Lyα emission.
fn sample_forest(rng: &mut ChaCha8Rng, zq: f64) -> (Vec<ObservedLine>, Vec<Edge>) {
    let z_lo = 3000.0 / vac::LYA - 1.0;
    let z_hi = zq - 0.003 * (1.0 + zq);
    let mut lines = Vec::new();
    let mut edges = Vec::new();
    if z_hi <= z_lo {
        return (lines, edges);
    }
    let g1 = FOREST_GAMMA + 1.0;
    let (a, b) = ((1.0 + z_lo).powf(g1), (1.0 + z_hi).powf(g1));
    let expected = FOREST_A / g1 * (b - a);
    let n = poisson(rng, expected);
    let (n_lo, n_hi) = (10f64.powf(LOG_N_MIN), 10f64.powf(LOG_N_MAX));
    let (p_lo, p_hi) = (n_lo.powf(-0.5), n_hi.powf(-0.5));
    for _ in 0..n {
        let u = rng_unit(rng);
        let za = (a + u * (b - a)).powf(1.0 / g1) - 1.0;
        // f(N) ∝ N^−1.5.
        let v = rng_unit(rng);
        let col = (p_lo - v * (p_lo - p_hi)).powf(-2.0);
        let bpar = normal_in(rng, 30.0, 8.0, 12.0, 70.0);
        let tau_a = 7.578e-13 * col / bpar;
        for (rest, tau) in [(vac::LYA, tau_a), (vac::LYB, tau_a * LYB_OVER_LYA)] {
            let center = rest * (1.0 + za);
            let sigma = center * bpar / (C_KMS * std::f64::consts::SQRT_2);
            lines.push(ObservedLine {
                center,
                sigma,
                ew: sigma * curve_of_growth(tau),
            });
        }
        if col > 10f64.powf(16.5) {
            edges.push(Edge {
                edge: vac::LYMAN_LIMIT * (1.0 + za),
                tau: 6.3e-18 * col,
            });
        }
    }
    // Lyman-limit systems (N_HI 10^17.2–10^19), ~0.3 (1+z)^1.5 per unit z.
    let lls = poisson(
        rng,
        0.3 * ((1.0 + z_hi) / 4.0).powf(1.5) * 4.0 * (z_hi - z_lo) / 4.0,
    );
    for _ in 0..lls {
        let za = uniform(rng, z_lo, z_hi);
        let col = 10f64.powf(uniform(rng, 17.2, 19.0));
        edges.push(Edge {
            edge: vac::LYMAN_LIMIT * (1.0 + za),
            tau: 6.3e-18 * col,
        });
        let center = vac::LYA * (1.0 + za);
        let sigma = center * 30.0 / (C_KMS * std::f64::consts::SQRT_2);
        lines.push(ObservedLine {
            center,
            sigma,
            ew: sigma * curve_of_growth(7.578e-13 * col / 30.0),
        });
    }
    lines.sort_by(|x, y| x.center.total_cmp(&y.center));
    (lines, edges)
}

fn sample_qso(rng: &mut ChaCha8Rng) -> MockObject {
    let z = sample_qso_z(rng);
    let alpha_nu = normal_in(rng, -0.5, 0.3, -1.5, 0.5);
    let host = if z < 0.5 {
        uniform(rng, 0.0, 0.4) * (1.0 - z / 0.5)
    } else {
        0.0
    };
    let continuum = Continuum::Qso {
        alpha_lambda: -2.0 - alpha_nu,
        bump: uniform(rng, 0.1, 0.4),
        host,
    };
    let fwhm = 10f64.powf(normal_in(rng, 4500f64.log10(), 0.15, 3.2, 4.1));
    let sb = fwhm / FWHM_PER_SIGMA;
    let sn = uniform(rng, 250.0, 500.0) / FWHM_PER_SIGMA;
    let mut lognorm = |m: f64, s: f64| m * normal(rng, 0.0, s).exp();
    // Broad lines: (rest λ, rest EW).
    let broad = [
        (vac::LYA, lognorm(90.0, 0.25)),
        (vac::NV, lognorm(18.0, 0.3)),
        (vac::SIIV, lognorm(9.0, 0.3)),
        (vac::CIV, lognorm(35.0, 0.3)),
        (vac::HEII, lognorm(3.0, 0.3)),
        (vac::CIII, lognorm(18.0, 0.25)),
        (vac::MGII, lognorm(32.0, 0.25)),
        (vac::HGAMMA, lognorm(14.0, 0.25)),
        (vac::HBETA, lognorm(60.0, 0.2)),
        (vac::HALPHA, lognorm(250.0, 0.2)),
    ];
    let narrow = [
        (vac::NEV, lognorm(1.0, 0.4)),
        (vac::OII_3726, lognorm(1.2, 0.4)),
        (vac::OII_3729, lognorm(1.5, 0.4)),
        (vac::NEIII, lognorm(1.5, 0.4)),
        (vac::OIII_5007, lognorm(15.0, 0.5)),
    ];
    let mut emission = Vec::new();
    let mut halpha_ew = 0.0;
    for (w, ew) in broad {
        if w == vac::HALPHA {
            halpha_ew = ew;
        }
        let f = ew * continuum.at(w);
        emission.push(Line {
            center: w,
            sigma: velocity_sigma(w, 0.5 * sb),
            strength: 0.4 * f,
        });
        emission.push(Line {
            center: w,
            sigma: velocity_sigma(w, 1.3 * sb),
            strength: 0.6 * f,
        });
    }
    for (w, ew) in narrow {
        let f = ew * continuum.at(w);
        emission.push(Line {
            center: w,
            sigma: velocity_sigma(w, sn),
            strength: f,
        });
        if w == vac::OIII_5007 {
            emission.push(Line {
                center: vac::OIII_4959,
                sigma: velocity_sigma(vac::OIII_4959, sn),
                strength: f / 2.98,
            });
        }
    }
    let (forest, edges) = sample_forest(rng, z);
    let mag = uniform(rng, 17.0, 21.5);
    let model = Model {
        z,
        amplitude: ab_flux_6200(mag) / continuum_at_6200(&continuum, z),
        continuum,
        absorption: Vec::new(),
        emission,
        bands: Vec::new(),
        forest,
        edges,
    };
    let mut obj = blank(ObjectClass::Qso, model);
    obj.mag = mag;
    obj.halpha_ew = Some(halpha_ew);
    obj.subclass = "BROADLINE".into();
    obj
}

// ---------------------------------------------------------------- stars

/// Hydrogen-line strength versus Teff (peaks near 9000 K).
fn hydrogen_strength(teff: f64) -> f64 {
    (-((teff - 9000.0) / 2500.0).powi(2)).exp() + 0.03
}

/// Equivalent-width factor of a metal line for the atmosphere
/// (1 at 5000 K, log g 4.4, [Fe/H] 0, [α/M] 0).
pub fn line_factor(kind: Sensitivity, teff: f64, logg: f64, fe_h: f64, alpha: f64) -> f64 {
    let z = 10f64.powf(0.8 * fe_h);
    let cool = ((7200.0 - teff) / 2200.0).clamp(0.05, 1.5);
    let g = logg - 4.4;
    match kind {
        Sensitivity::Neutral => cool * z * 10f64.powf(0.05 * g),
        Sensitivity::Ionised => {
            ((-((teff - 6200.0) / 2200.0).powi(2)).exp() + 0.25) * z * 10f64.powf(-0.18 * g)
        }
        Sensitivity::Pressure => cool * z.powf(0.7) * 10f64.powf(0.18 * g),
        Sensitivity::CaTriplet => {
            ((7800.0 - teff) / 2600.0).clamp(0.3, 1.3) * z.powf(0.5) * 10f64.powf(-0.15 * g)
        }
        Sensitivity::Alpha => cool * z * 10f64.powf(0.8 * alpha) * 10f64.powf(0.05 * g),
        Sensitivity::Oh => {
            ((5200.0 - teff) / 1000.0).clamp(0.0, 2.0)
                * 10f64.powf(fe_h + alpha)
                * 10f64.powf(-0.1 * g)
        }
    }
}

fn sample_star_params(rng: &mut ChaCha8Rng) -> StarParams {
    let giant = rng_unit(rng) < 0.4;
    let (teff, logg) = if giant {
        let t = uniform(rng, 3500.0, 5400.0);
        let g = 0.5 + (t - 3500.0) / 1900.0 * 3.0 + normal(rng, 0.0, 0.3);
        (t, g.clamp(0.5, 3.8))
    } else {
        let t = uniform(rng, 3200.0, 8000.0);
        // Main sequence: log g ≈ 5.0 for M dwarfs to ≈ 4.1 for A/F stars,
        // plus some subgiants.
        let ms = 5.0 - (t - 3200.0) / 4800.0 * 0.9;
        let g = if rng_unit(rng) < 0.15 {
            ms - uniform(rng, 0.3, 0.9)
        } else {
            ms + normal(rng, 0.0, 0.12)
        };
        (t, g.clamp(0.5, 5.0))
    };
    let halo = rng_unit(rng) < 0.12;
    let fe_h = if halo {
        normal_in(rng, -1.5, 0.5, -2.5, 0.5)
    } else {
        normal_in(rng, -0.15, 0.3, -2.5, 0.5)
    };
    let alpha_m = ((-0.3 * fe_h).clamp(0.0, 0.3) + normal(rng, 0.0, 0.04)).clamp(-0.2, 0.5);
    let vmicro = (1.1 + 0.2 * (teff - 5000.0) / 1000.0 - 0.25 * (logg - 4.0)).clamp(0.5, 3.0);
    let rot = if teff > 6300.0 {
        uniform(rng, 5.0, 60.0)
    } else {
        uniform(rng, 1.0, 6.0)
    };
    let vbroad = quad(rot, if giant { 5.0 } else { 3.0 });
    let rv = if halo {
        normal(rng, 0.0, 120.0)
    } else {
        normal(rng, 0.0, 35.0)
    };
    StarParams {
        teff,
        logg,
        fe_h,
        alpha_m,
        vmicro,
        vbroad,
        rv,
    }
}

/// The stellar model for parameters `p`.
pub fn star_model(p: &StarParams, amplitude_at_6200: f64) -> Model {
    let (t, g, fe, al) = (p.teff, p.logg, p.fe_h, p.alpha_m);
    let h = hydrogen_strength(t);
    let continuum = Continuum::Star {
        teff: t,
        blanketing: (0.55 * ((7500.0 - t) / 3500.0).clamp(0.0, 1.0) * 10f64.powf(0.3 * fe))
            .min(0.8),
        balmer_jump: 0.45 * h,
    };
    let vline = (p.vmicro * p.vmicro + p.vbroad * p.vbroad + 1.5 * 1.5).sqrt();
    let press = 10f64.powf(0.15 * (g - 4.0));
    let mut absorption = Vec::new();
    // Hydrogen: a narrow core and pressure-broadened wings.
    let mut hline = |center: f64, ew: f64, wing_scale: f64| {
        let core = quad(velocity_sigma(center, vline), velocity_sigma(center, 10.0));
        absorption.push(Line {
            center,
            sigma: core,
            strength: 0.45 * ew,
        });
        absorption.push(Line {
            center,
            sigma: quad(core, wing_scale * (1.5 + 6.0 * h) * press),
            strength: 0.55 * ew,
        });
    };
    let ew_ha = 1.5 + 12.0 * h;
    for (_, w, rel) in lines::balmer() {
        hline(w, ew_ha * rel, w / vac::HALPHA);
    }
    for w in lines::paschen() {
        hline(w, 2.0 * h + 0.1, w / vac::HALPHA);
    }
    for (n, w) in lines::brackett() {
        hline(
            w,
            (0.25 + 2.0 * h) * (11.0 / n as f64).powf(0.8),
            0.5 * w / vac::HALPHA,
        );
    }
    // Ca II H & K.
    let ew_k =
        (1.5 + 14.0 * ((7000.0 - t) / 2500.0).clamp(0.0, 1.2)) * 10f64.powf(0.3 * fe + 0.2 * al);
    for (w, f) in [(vac::CA_K, 1.0), (vac::CA_H, 0.85)] {
        let core = velocity_sigma(w, vline);
        absorption.push(Line {
            center: w,
            sigma: core,
            strength: 0.3 * f * ew_k,
        });
        absorption.push(Line {
            center: w,
            sigma: quad(core, 4.0 * press),
            strength: 0.7 * f * ew_k,
        });
    }
    // Ca II triplet.
    for (w, f) in vac::CA_TRIPLET.iter().zip([0.6, 1.0, 0.85]) {
        let ew = 1.6 * f * line_factor(Sensitivity::CaTriplet, t, g, fe, al);
        absorption.push(Line {
            center: *w,
            sigma: quad(velocity_sigma(*w, vline), 1.0 * press),
            strength: ew,
        });
    }
    // G band (CH).
    let gband = 4.0 * ((6500.0 - t) / 1500.0).clamp(0.0, 1.0) * 10f64.powf(0.3 * fe);
    absorption.push(Line {
        center: vac::G_BAND,
        sigma: 6.0,
        strength: gband,
    });
    // Named metal lines and the weak-line list.
    let metal = |l: &StellarLine, absorption: &mut Vec<Line>| {
        let mut sigma = velocity_sigma(l.vacuum, vline);
        if l.sensitivity == Sensitivity::Pressure {
            sigma = quad(sigma, 0.15 * press * l.vacuum / 5000.0);
        }
        absorption.push(Line {
            center: l.vacuum,
            sigma,
            strength: l.ew * line_factor(l.sensitivity, t, g, fe, al),
        });
    };
    for l in lines::stellar_lines() {
        metal(l, &mut absorption);
    }
    for l in lines::weak_lines() {
        metal(l, &mut absorption);
    }
    // Molecular bands.
    let mut bands = Vec::new();
    let tio = 0.7 * ((4100.0 - t) / 900.0).clamp(0.0, 1.0) * 10f64.powf(0.3 * fe);
    if tio > 0.0 {
        for (k, &head) in lines::TIO_BANDHEADS.iter().enumerate() {
            bands.push(Band {
                head,
                depth: (tio * [0.5, 0.6, 0.8, 0.7, 0.5, 0.6, 0.9, 0.8, 1.0, 0.9, 0.6][k]).min(0.9),
                scale: 60.0 + 10.0 * k as f64,
            });
        }
    }
    let co = 0.2
        * ((5200.0 - t) / 1500.0).clamp(0.0, 1.0)
        * 10f64.powf(0.5 * fe)
        * 10f64.powf(-0.12 * (g - 4.4));
    if co > 0.0 {
        for &head in &lines::CO_BANDHEADS {
            bands.push(Band {
                head,
                depth: co.min(0.35),
                scale: 60.0,
            });
        }
    }
    let z = p.rv / C_KMS;
    Model {
        z,
        amplitude: amplitude_at_6200 / continuum_at_6200(&continuum, z),
        continuum,
        absorption,
        emission: Vec::new(),
        bands,
        forest: Vec::new(),
        edges: Vec::new(),
    }
}

fn sample_star(rng: &mut ChaCha8Rng, primary: MockSurvey) -> MockObject {
    let p = sample_star_params(rng);
    let mag = match primary {
        MockSurvey::Apogee | MockSurvey::Galah => uniform(rng, 9.0, 14.0),
        MockSurvey::LamostLrs => uniform(rng, 10.0, 17.0),
        MockSurvey::Desi => uniform(rng, 16.0, 20.0),
        MockSurvey::Sdss => uniform(rng, 14.5, 19.5),
    };
    let model = star_model(&p, ab_flux_6200(mag));
    let mut obj = blank(ObjectClass::Star, model);
    obj.mag = mag;
    obj.subclass = p.spectral_type();
    obj.star = Some(p);
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_in_their_ranges() {
        for i in 0..400 {
            let g = sample_object(5, i, ObjectClass::Galaxy, MockSurvey::Sdss);
            assert!((0.005..=1.2).contains(&g.z), "{}", g.z);
            let q = sample_object(5, i, ObjectClass::Qso, MockSurvey::Desi);
            assert!((0.1..=4.0).contains(&q.z), "{}", q.z);
            let s = sample_object(5, i, ObjectClass::Star, MockSurvey::Apogee);
            let p = s.star.unwrap_or_else(|| panic!("star without parameters"));
            assert!((3200.0..=8000.0).contains(&p.teff));
            assert!((0.5..=5.0).contains(&p.logg));
            assert!((-2.5..=0.5).contains(&p.fe_h));
            assert!(s.z.abs() < 0.002);
        }
    }

    #[test]
    fn ids_are_distinct_and_fifteen_digits() {
        let a = object_id(42, 0);
        let b = object_id(42, 1);
        let c = object_id(43, 0);
        assert_ne!(a, b);
        assert_ne!(a, c);
        for id in [a, b, c, object_id(u64::MAX, 999_999_999_999)] {
            assert_eq!(id.to_string().len(), 15, "{id}");
        }
    }

    #[test]
    fn forest_mean_transmission_follows_faucher_giguere() {
        // Mean transmission over rest 1070–1170 Å for quasars at z = 3.2
        // (absorbers at z ≈ 2.7–3.0): FG08 gives exp(−0.0018 (1+z)^3.92).
        let mut rng = stream(9, 9, Purpose::Object, 0);
        let zq = 3.2;
        let grid: Vec<f64> = (0..20000)
            .map(|i| 1070.0 * (1.0 + zq) + 0.021 * i as f64)
            .collect();
        let grid: Vec<f64> = grid
            .into_iter()
            .filter(|w| *w < 1170.0 * (1.0 + zq))
            .collect();
        let mut mean = 0.0;
        let trials = 40;
        for _ in 0..trials {
            let (forest, _) = sample_forest(&mut rng, zq);
            let m = Model {
                z: 0.0,
                continuum: Continuum::Qso {
                    alpha_lambda: 0.0,
                    bump: 0.0,
                    host: 0.0,
                },
                amplitude: 1.0,
                absorption: vec![],
                emission: vec![],
                bands: vec![],
                forest,
                edges: vec![],
            };
            let mut out = vec![0.0; grid.len()];
            m.evaluate(&grid, &|_| 0.01, &mut out);
            mean += out.iter().sum::<f64>() / out.len() as f64;
        }
        mean /= trials as f64;
        let za = 1120.0 * (1.0 + zq) / vac::LYA - 1.0;
        let expect = (-0.0018 * (1.0 + za).powf(3.92)).exp();
        assert!(
            (mean - expect).abs() < 0.06,
            "mean transmission {mean}, FG08 {expect}"
        );
    }

    #[test]
    fn spectral_types() {
        let mut p = StarParams {
            teff: 5777.0,
            logg: 4.44,
            fe_h: 0.0,
            alpha_m: 0.0,
            vmicro: 1.0,
            vbroad: 2.0,
            rv: 0.0,
        };
        assert_eq!(p.spectral_type(), "G3");
        p.teff = 3300.0;
        assert_eq!(p.spectral_letter(), "M");
        p.teff = 7900.0;
        assert_eq!(p.spectral_letter(), "A");
    }
}
