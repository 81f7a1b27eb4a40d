//! Synthetic spectra generated lazily: a [`SpectrumSource`] of any size
//! whose memory does not grow with it, for benchmarks and for testing the
//! loader (streaming, mixing, resuming) without files.
//!
//! Spectra look like survey data in the ways the loader cares about:
//! varying pixel counts, several segments (arms), log-linear or linear
//! grids, wavelength gaps inside a segment, masked and zero-ivar pixels,
//! flux scales spanning decades, and several spectra (visits) of one
//! object sharing an id. Each spectrum is a pure function of the seed and
//! its position.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spectok_io::{Labels, Medium, Segment, Source, Spectrum, Survey};

use crate::error::Result;
use crate::rng;
use crate::source::{SpectrumSource, SpectrumStream};

/// Shape of a synthetic source.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    /// Number of units (as if files or shards).
    pub units: usize,
    /// Spectra per unit.
    pub per_unit: usize,
    /// Smallest pixel count.
    pub min_pixels: usize,
    /// Largest pixel count (inclusive).
    pub max_pixels: usize,
    /// Consecutive spectra of a unit sharing one object id (visits).
    pub visits: usize,
    /// Fraction of pixels with a bad mask bit (bit 0, bad for every
    /// survey by default) or zero ivar.
    pub bad_fraction: f64,
    /// Survey the spectra claim to be from.
    pub survey: Survey,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            units: 16,
            per_unit: 64,
            min_pixels: 2000,
            max_pixels: 5000,
            visits: 1,
            bad_fraction: 0.02,
            survey: Survey::Sdss,
            seed: 0,
        }
    }
}

/// A lazily generated source (see the module docs).
#[derive(Clone, Debug)]
pub struct SyntheticSource {
    cfg: SyntheticConfig,
}

impl SyntheticSource {
    /// A source of `cfg.units × cfg.per_unit` spectra.
    pub fn new(cfg: SyntheticConfig) -> Self {
        SyntheticSource { cfg }
    }

    /// Total number of spectra.
    pub fn len(&self) -> usize {
        self.cfg.units * self.cfg.per_unit
    }

    /// Whether the source holds no spectrum.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Spectrum `index` of unit `unit`.
    pub fn spectrum(&self, unit: usize, index: usize) -> Spectrum {
        synth(&self.cfg, unit, index)
    }
}

impl SpectrumSource for SyntheticSource {
    fn n_units(&self) -> usize {
        self.cfg.units
    }

    fn open_unit(&self, unit: usize) -> Result<SpectrumStream> {
        let cfg = self.cfg.clone();
        Ok(Box::new(
            (0..cfg.per_unit).map(move |i| Ok(synth(&cfg, unit, i))),
        ))
    }

    fn unit_name(&self, unit: usize) -> String {
        format!("synthetic-{}-{unit}", self.cfg.seed)
    }
}

fn synth(cfg: &SyntheticConfig, unit: usize, index: usize) -> Spectrum {
    let mut r = ChaCha8Rng::seed_from_u64(rng::key(&[cfg.seed, unit as u64, index as u64]));
    let lo = cfg.min_pixels.max(2);
    let hi = cfg.max_pixels.max(lo);
    let n = r.random_range(lo..=hi);
    let n_seg = r.random_range(1..=3usize).min(n / 2).max(1);
    let mut segments = Vec::with_capacity(n_seg);
    let mut wavelength = Vec::with_capacity(n);
    let mut start = 0;
    let mut lam0: f64 = r.random_range(3500.0..4000.0);
    for s in 0..n_seg {
        let end = if s + 1 == n_seg { n } else { start + n / n_seg };
        let log_linear = r.random_bool(0.5);
        let step: f64 = r.random_range(0.2..2.0);
        // One in four segments has a chip gap of 20–60 steps inside it.
        let gap_at = r
            .random_bool(0.25)
            .then(|| start + r.random_range(1..(end - start).max(2)));
        let mut lam = lam0;
        for i in start..end {
            if Some(i) == gap_at {
                lam += step * r.random_range(20.0..60.0);
            }
            wavelength.push(lam);
            lam = if log_linear {
                lam * (1.0 + step / 5000.0)
            } else {
                lam + step
            };
        }
        segments.push(Segment {
            name: format!("arm{s}"),
            start,
            end,
        });
        // Arms may overlap in wavelength, as DESI's do.
        lam0 = lam - step * r.random_range(0.0..50.0);
        start = end;
    }
    let amp: f64 = 10f64.powf(r.random_range(-2.0..3.0));
    let noise = amp * r.random_range(0.01..0.2);
    let phase: f64 = r.random_range(0.0..6.3);
    let mut flux = Vec::with_capacity(n);
    let mut ivar = Vec::with_capacity(n);
    let mut mask = Vec::with_capacity(n);
    for (i, lam) in wavelength.iter().enumerate() {
        let cont = amp * (1.0 + 0.3 * (lam / 700.0 + phase).sin());
        let line = if i % 97 == 0 { 3.0 * amp } else { 0.0 };
        let eps: f64 = r.random_range(-1.0..1.0);
        flux.push((cont + line + noise * eps) as f32);
        let bad = r.random_bool(cfg.bad_fraction.clamp(0.0, 1.0));
        if bad && r.random_bool(0.5) {
            ivar.push(0.0);
            mask.push(0);
        } else {
            ivar.push((1.0 / (noise * noise)) as f32);
            mask.push(u32::from(bad));
        }
    }
    let global = unit * cfg.per_unit + index;
    let object = global / cfg.visits.max(1);
    Spectrum {
        id: format!("syn{}-{object}", cfg.seed),
        survey: cfg.survey,
        source: Source {
            file: format!("synthetic-{}-{unit}", cfg.seed).into(),
            hdu: "synthetic".into(),
            row: Some(index as u64),
        },
        wavelength,
        flux,
        ivar,
        mask,
        segments,
        medium: Medium::Vacuum,
        lsf_sigma: None,
        labels: Labels {
            redshift: Some(r.random_range(0.0..1.0)),
            ..Labels::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spectra_are_valid_and_deterministic() {
        let src = SyntheticSource::new(SyntheticConfig {
            units: 3,
            per_unit: 20,
            visits: 4,
            ..SyntheticConfig::default()
        });
        let a: Vec<Spectrum> = src.open_unit(1).unwrap().map(|s| s.unwrap()).collect();
        let b: Vec<Spectrum> = src.open_unit(1).unwrap().map(|s| s.unwrap()).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 20);
        for s in &a {
            s.validate().unwrap();
            assert!((2000..=5000).contains(&s.len()));
        }
        // Visits share the object id.
        assert_eq!(a[0].id, a[3].id);
        assert_ne!(a[3].id, a[4].id);
    }
}
