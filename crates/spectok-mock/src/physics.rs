//! The noiseless model of one object, and its evaluation on a survey grid
//! at the survey's resolution.
//!
//! A [`Model`] is a rest-frame continuum times rest-frame absorption
//! features plus rest-frame emission lines, redshifted by `1 + z`, times
//! intergalactic absorption in the observed frame (the Lyman-α forest of
//! quasars). Every line is a Gaussian; the instrument's line-spread
//! function (a Gaussian of `σ = λ / (2.3548 R)`) is applied analytically:
//! a Gaussian line seen through a Gaussian LSF is a Gaussian of width
//! `√(σ_line² + σ_LSF²)` with the same equivalent width (absorption) or
//! flux (emission). Absorption lines multiply (`∏ (1 − d_k g_k)`), so
//! blends never go negative; a line too strong to keep its equivalent width
//! at depth ≤ [`MAX_DEPTH`] is widened instead (a saturated line). The
//! continuum varies slowly and is not convolved; molecular band heads get
//! an edge smoothed by the LSF. Pixels are sampled at their centres.

/// Speed of light, km/s.
pub const C_KMS: f64 = 299_792.458;

/// `hc/k` in Å·K, for the Planck function.
const HC_OVER_K: f64 = 1.438_776_9e8;

/// Largest central depth of one absorption line after convolution.
pub const MAX_DEPTH: f64 = 0.95;

/// Gaussian FWHM / σ.
pub const FWHM_PER_SIGMA: f64 = 2.354_820_045;

/// Lines are drawn out to this many σ.
const WINDOW_SIGMA: f64 = 5.0;

/// `B_λ(T) / B_λ(5500 Å, T)`: the Planck function normalised at 5500 Å.
pub fn planck_rel(lambda: f64, teff: f64) -> f64 {
    let x = HC_OVER_K / (lambda * teff);
    let x0 = HC_OVER_K / (5500.0 * teff);
    (5500.0 / lambda).powi(5) * x0.exp_m1() / x.exp_m1()
}

fn sigmoid(x: f64) -> f64 {
    // Far from the transition the value is 0 or 1 to double precision;
    // skipping the exponential there keeps continuum evaluation cheap.
    if x < -40.0 {
        0.0
    } else if x > 40.0 {
        1.0
    } else {
        1.0 / (1.0 + (-x).exp())
    }
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26 for erf, |ε| < 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}

/// The rest-frame continuum shape, normalised to about 1 at 5500 Å.
#[derive(Clone, Debug, PartialEq)]
pub enum Continuum {
    /// Old + young stellar populations.
    Galaxy {
        /// Fraction of 5500 Å light from the young population.
        young: f64,
        /// Depth of the 4000 Å break of the old population (flux blueward
        /// is `1 − break_depth` of the extrapolation).
        break_depth: f64,
        /// Dust slope: the continuum is multiplied by `(λ/5500)^dust`.
        dust: f64,
    },
    /// Quasar: power law `(λ/5500)^alpha_lambda`, a small blue bump and a
    /// host galaxy.
    Qso {
        alpha_lambda: f64,
        /// Amplitude of the Balmer-continuum/Fe II bump near 3000 Å.
        bump: f64,
        /// Host-galaxy fraction at 5500 Å.
        host: f64,
    },
    /// Star: Planck at `teff` with blue line blanketing and a Balmer jump.
    Star {
        teff: f64,
        /// Fractional flux removed by line blanketing in the blue/UV.
        blanketing: f64,
        /// Fractional Balmer jump below 3646 Å.
        balmer_jump: f64,
    },
}

/// Temperature of the old population's Planck-like continuum, K.
const OLD_TEFF: f64 = 4800.0;

/// `B_λ(T)` up to a constant: `λ⁻⁵ / (exp(hc/λkT) − 1)`, with λ in units
/// of 5500 Å.
fn planck_shape(lambda: f64, teff: f64) -> f64 {
    let x = HC_OVER_K / (lambda * teff);
    (5500.0 / lambda).powi(5) / x.exp_m1()
}

/// Per-continuum constants, computed once per evaluation.
struct Prepared {
    /// 1 / shape at 5500 Å of the star (or the old population).
    star_norm: f64,
    old_norm: f64,
}

fn old_population(p: &Prepared, lambda: f64, break_depth: f64) -> f64 {
    let uv = if lambda < 2800.0 {
        (lambda / 2800.0).powi(3)
    } else {
        1.0
    };
    planck_shape(lambda, OLD_TEFF)
        * p.old_norm
        * (1.0 - break_depth * sigmoid((4000.0 - lambda) / 25.0))
        * uv
}

impl Continuum {
    fn prepare(&self) -> Prepared {
        let old_norm = 1.0 / planck_shape(5500.0, OLD_TEFF);
        let star_norm = match *self {
            Continuum::Star { teff, .. } => 1.0 / planck_shape(5500.0, teff),
            _ => 1.0,
        };
        Prepared {
            star_norm,
            old_norm,
        }
    }

    /// The continuum at rest wavelength `lambda` (Å).
    pub fn at(&self, lambda: f64) -> f64 {
        self.at_prepared(&self.prepare(), lambda)
    }

    /// The continuum at each rest wavelength of `lambdas`, times `scale`.
    pub fn many(&self, lambdas: impl Iterator<Item = f64>, scale: f64) -> Vec<f64> {
        let p = self.prepare();
        lambdas.map(|l| scale * self.at_prepared(&p, l)).collect()
    }

    fn at_prepared(&self, p: &Prepared, lambda: f64) -> f64 {
        match *self {
            Continuum::Galaxy {
                young,
                break_depth,
                dust,
            } => {
                let old = old_population(p, lambda, break_depth);
                let yng =
                    (lambda / 5500.0).powf(-2.2) * (1.0 - 0.25 * sigmoid((3646.0 - lambda) / 15.0));
                ((1.0 - young) * old + young * yng) * (lambda / 5500.0).powf(dust)
            }
            Continuum::Qso {
                alpha_lambda,
                bump,
                host,
            } => {
                let pl = (lambda / 5500.0).powf(alpha_lambda);
                let b = bump * (-0.5 * ((lambda - 3000.0) / 700.0).powi(2)).exp();
                let h = if host > 0.0 {
                    host * old_population(p, lambda, 0.45)
                } else {
                    0.0
                };
                (1.0 - host) * (pl + b) + h
            }
            Continuum::Star {
                teff,
                blanketing,
                balmer_jump,
            } => {
                planck_shape(lambda, teff)
                    * p.star_norm
                    * (1.0 - blanketing * sigmoid((4200.0 - lambda) / 250.0))
                    * (1.0 - balmer_jump * sigmoid((3646.0 - lambda) / 12.0))
            }
        }
    }
}

/// A Gaussian line in the rest frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    /// Vacuum rest wavelength, Å.
    pub center: f64,
    /// Intrinsic Gaussian σ, rest-frame Å.
    pub sigma: f64,
    /// Absorption: rest equivalent width, Å. Emission: line flux in units
    /// of the model's continuum (normalised continuum × Å).
    pub strength: f64,
}

/// A molecular band: a sharp head degrading to the red.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Band {
    /// Vacuum rest wavelength of the head, Å.
    pub head: f64,
    /// Fractional depth just redward of the head.
    pub depth: f64,
    /// e-folding length of the band redward of the head, rest Å.
    pub scale: f64,
}

/// A line in the observed frame (intergalactic absorbers).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObservedLine {
    /// Observed vacuum wavelength, Å.
    pub center: f64,
    /// Intrinsic Gaussian σ, observed Å.
    pub sigma: f64,
    /// Observed equivalent width, Å.
    pub ew: f64,
}

/// A Lyman-limit edge in the observed frame: flux blueward of `edge` is
/// multiplied by `exp(−tau (λ/edge)³)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edge {
    pub edge: f64,
    pub tau: f64,
}

/// The noiseless spectrum of one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Redshift (for stars: radial velocity / c).
    pub z: f64,
    pub continuum: Continuum,
    /// Flux density of the continuum shape's 1.0 in the observed frame
    /// (1e-17 erg s⁻¹ cm⁻² Å⁻¹ before any survey calibration factor).
    pub amplitude: f64,
    /// Rest-frame absorption lines (equivalent widths).
    pub absorption: Vec<Line>,
    /// Rest-frame emission lines (fluxes).
    pub emission: Vec<Line>,
    /// Rest-frame molecular bands.
    pub bands: Vec<Band>,
    /// Observed-frame absorbers (Lyman-α and β forest).
    pub forest: Vec<ObservedLine>,
    /// Observed-frame Lyman-limit edges.
    pub edges: Vec<Edge>,
}

/// Pixel index range of `grid` (sorted) within `[lo, hi]`.
fn window(grid: &[f64], lo: f64, hi: f64) -> std::ops::Range<usize> {
    let a = grid.partition_point(|&w| w < lo);
    let b = grid.partition_point(|&w| w <= hi);
    a..b.max(a)
}

/// Depth and σ of an absorption line of observed equivalent width `ew` and
/// intrinsic width `sigma`, seen through an LSF of width `lsf`.
fn convolved_absorption(ew: f64, sigma: f64, lsf: f64) -> (f64, f64) {
    let root_2pi = (2.0 * std::f64::consts::PI).sqrt();
    let mut s = (sigma * sigma + lsf * lsf).sqrt();
    let mut depth = ew / (s * root_2pi);
    if depth > MAX_DEPTH {
        depth = MAX_DEPTH;
        s = ew / (MAX_DEPTH * root_2pi);
    }
    (depth, s)
}

fn apply_absorption(grid: &[f64], t: &mut [f64], center: f64, ew: f64, sigma: f64, lsf: f64) {
    if ew <= 0.0 {
        return;
    }
    let (depth, s) = convolved_absorption(ew, sigma, lsf);
    let r = window(grid, center - WINDOW_SIGMA * s, center + WINDOW_SIGMA * s);
    let inv = 1.0 / s;
    for i in r {
        let x = (grid[i] - center) * inv;
        t[i] *= 1.0 - depth * (-0.5 * x * x).exp();
    }
}

impl Model {
    /// Evaluates the model at the vacuum wavelengths `grid` (one segment,
    /// strictly increasing, observed frame) seen with an LSF of Gaussian σ
    /// `lsf(λ)` (Å), writing the flux density into `out`.
    pub fn evaluate(&self, grid: &[f64], lsf: &dyn Fn(f64) -> f64, out: &mut [f64]) {
        self.evaluate_at(self.z, grid, lsf, out);
    }

    /// As [`Model::evaluate`] with the object's lines and continuum at
    /// redshift `z` instead of [`Model::z`] (`z = 0` gives the rest frame,
    /// as APOGEE's `apStar` files hold it). The observed-frame forest is
    /// not moved. Returns the continuum alone (no lines, bands or forest)
    /// on the grid, as [`Model::continuum_at`] gives it.
    pub fn evaluate_at(
        &self,
        z: f64,
        grid: &[f64],
        lsf: &dyn Fn(f64) -> f64,
        out: &mut [f64],
    ) -> Vec<f64> {
        let n = grid.len().min(out.len());
        let (grid, out) = (&grid[..n], &mut out[..n]);
        let zp1 = 1.0 + z;
        let norm = self.amplitude;
        let plain = self.continuum_at(z, grid);
        // Continuum with bands.
        let mut cont = plain.clone();
        for b in &self.bands {
            let head = b.head * zp1;
            let scale = b.scale * zp1;
            let s = lsf(head).max(1e-6);
            let r = window(grid, head - WINDOW_SIGMA * s, head + 8.0 * scale);
            for i in r {
                let d = grid[i] - head;
                cont[i] *= 1.0 - b.depth * normal_cdf(d / s) * (-(d.max(0.0)) / scale).exp();
            }
        }
        // Stellar / interstellar absorption in the object's frame.
        let mut t = vec![1.0; n];
        for l in &self.absorption {
            let c = l.center * zp1;
            apply_absorption(grid, &mut t, c, l.strength * zp1, l.sigma * zp1, lsf(c));
        }
        for i in 0..n {
            out[i] = cont[i] * t[i];
        }
        // Emission.
        let inv_root_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
        for l in &self.emission {
            if l.strength <= 0.0 {
                continue;
            }
            let c = l.center * zp1;
            let si = l.sigma * zp1;
            let sl = lsf(c);
            let s = (si * si + sl * sl).sqrt();
            let amp = norm * l.strength * inv_root_2pi / s * zp1;
            let r = window(grid, c - WINDOW_SIGMA * s, c + WINDOW_SIGMA * s);
            let inv = 1.0 / s;
            for i in r {
                let x = (grid[i] - c) * inv;
                out[i] += amp * (-0.5 * x * x).exp();
            }
        }
        // Intergalactic absorption in the observed frame.
        if !self.forest.is_empty() || !self.edges.is_empty() {
            t.iter_mut().for_each(|v| *v = 1.0);
            for l in &self.forest {
                apply_absorption(grid, &mut t, l.center, l.ew, l.sigma, lsf(l.center));
            }
            for e in &self.edges {
                let s = lsf(e.edge).max(1e-6);
                for (i, &w) in grid.iter().enumerate() {
                    if w > e.edge + WINDOW_SIGMA * s {
                        break;
                    }
                    let blue = 1.0 - normal_cdf((w - e.edge) / s);
                    t[i] *= 1.0 - blue * (1.0 - (-e.tau * (w / e.edge).powi(3)).exp());
                }
            }
            for i in 0..n {
                out[i] *= t[i];
            }
        }
        plain
    }

    /// The continuum alone (no lines, no bands, no forest) at the vacuum
    /// wavelengths `grid`: what a survey's continuum normalisation divides
    /// by.
    pub fn continuum_on(&self, grid: &[f64]) -> Vec<f64> {
        self.continuum_at(self.z, grid)
    }

    /// As [`Model::continuum_on`] at redshift `z`.
    pub fn continuum_at(&self, z: f64, grid: &[f64]) -> Vec<f64> {
        let zp1 = 1.0 + z;
        self.continuum
            .many(grid.iter().map(|&w| w / zp1), self.amplitude)
    }
}

/// Equivalent width (in units of the Gaussian σ of the optical-depth
/// profile) of a line with central optical depth `tau0`: the curve of
/// growth `∫ (1 − exp(−τ₀ e^{−x²/2})) dx`.
pub fn curve_of_growth(tau0: f64) -> f64 {
    if tau0 <= 0.0 {
        return 0.0;
    }
    if tau0 < 1e-3 {
        return (2.0 * std::f64::consts::PI).sqrt() * tau0;
    }
    // The integrand is ≈ 1 out to x ≈ √(2 ln τ₀) and falls off within a
    // few units after; Simpson's rule on [0, x_max].
    let x_max = (2.0 * (tau0 / 1e-6).ln()).sqrt() + 1.0;
    let n = 200;
    let h = x_max / n as f64;
    let f = |x: f64| 1.0 - (-tau0 * (-0.5 * x * x).exp()).exp();
    let mut s = f(0.0) + f(x_max);
    for k in 1..n {
        let w = if k % 2 == 1 { 4.0 } else { 2.0 };
        s += w * f(k as f64 * h);
    }
    2.0 * s * h / 3.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planck_is_normalised_and_peaks_by_wien() {
        assert!((planck_rel(5500.0, 5000.0) - 1.0).abs() < 1e-12);
        // Wien: λ_max = 2.898e7 Å K / T.
        let t = 5000.0;
        let peak = (2000..20000)
            .map(|l| l as f64)
            .max_by(|a, b| planck_rel(*a, t).total_cmp(&planck_rel(*b, t)))
            .unwrap_or(0.0);
        assert!((peak - 2.898e7 / t).abs() < 5.0, "{peak}");
    }

    #[test]
    fn curve_of_growth_limits() {
        let r = (2.0 * std::f64::consts::PI).sqrt();
        assert!((curve_of_growth(1e-4) / (r * 1e-4) - 1.0).abs() < 1e-6);
        // Weak but not tiny: W ≈ √(2π) τ₀ (1 − τ₀/(2√2)).
        let t = 0.05;
        assert!((curve_of_growth(t) - r * t * (1.0 - t / 8f64.sqrt())).abs() < 1e-4);
        // Saturated: W ≈ 2√(2 ln τ₀).
        let w = curve_of_growth(1e4);
        assert!(w > 2.0 * (2.0 * 1e4f64.ln()).sqrt() && w < 2.0 * (2.0 * 1e4f64.ln()).sqrt() + 1.5);
    }

    #[test]
    fn normal_cdf_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.96) - 0.975).abs() < 1e-4);
        assert!((normal_cdf(-1.0) - 0.158_655).abs() < 1e-5);
    }

    fn flat_model() -> Model {
        Model {
            z: 0.5,
            continuum: Continuum::Qso {
                alpha_lambda: 0.0,
                bump: 0.0,
                host: 0.0,
            },
            amplitude: 2.0,
            absorption: vec![Line {
                center: 4000.0,
                sigma: 1.0,
                strength: 2.0,
            }],
            emission: vec![Line {
                center: 5000.0,
                sigma: 2.0,
                strength: 30.0,
            }],
            bands: vec![],
            forest: vec![],
            edges: vec![],
        }
    }

    #[test]
    fn lines_conserve_equivalent_width_and_flux_through_the_lsf() {
        let m = flat_model();
        let grid: Vec<f64> = (0..40000).map(|i| 5000.0 + 0.1 * i as f64).collect();
        let mut out = vec![0.0; grid.len()];
        m.evaluate(&grid, &|l| l / (2000.0 * FWHM_PER_SIGMA), &mut out);
        // Absorption at 6000 Å observed: EW_obs = 1.5 × 2 = 3 Å.
        let ew: f64 = grid
            .iter()
            .zip(&out)
            .filter(|(w, _)| (**w - 6000.0).abs() < 40.0)
            .map(|(_, f)| (1.0 - f / 2.0) * 0.1)
            .sum();
        assert!((ew - 3.0).abs() < 0.01, "{ew}");
        // Emission at 7500 Å observed: flux = amplitude × 30 × (1+z) = 90.
        let flux: f64 = grid
            .iter()
            .zip(&out)
            .filter(|(w, _)| (**w - 7500.0).abs() < 60.0)
            .map(|(_, f)| (f - 2.0) * 0.1)
            .sum();
        assert!((flux - 90.0).abs() < 0.1, "{flux}");
    }
}
