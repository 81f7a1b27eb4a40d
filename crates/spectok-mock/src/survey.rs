//! The surveys the mocks observe with: native grids, resolution, noise
//! levels, flux units and pixel-mask conventions.
//!
//! Grids are the real ones: SDSS/BOSS log-linear 1e-4 dex from ≈3600 Å to
//! ≈10350 Å; DESI's three linear 0.8 Å arms (B 3600–5800, R 5760–7620,
//! Z 7520–9824 Å, overlapping); APOGEE's 8575-pixel log-linear grid
//! (`CRVAL1` 4.179, 6e-6 dex) with its three chips and the gaps between
//! them; GALAH's four 4096-pixel linear CCDs (air); LAMOST LRS log-linear
//! 1e-4 dex from 3700 Å (3909 pixels).

use spectok_io::{Medium, Survey};

use crate::physics::FWHM_PER_SIGMA;

/// A survey the mock generator observes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MockSurvey {
    /// SDSS-IV BOSS spectrograph, `spec-*` files.
    Sdss,
    /// DESI, `coadd-*` + `redrock-*` files.
    Desi,
    /// APOGEE, `apStar` + `aspcapStar` files.
    Apogee,
    /// GALAH DR3, per-CCD files.
    Galah,
    /// LAMOST low-resolution survey, DR8+ `spec-*` files.
    LamostLrs,
}

impl MockSurvey {
    /// All mock surveys, in their fixed order.
    pub const ALL: [MockSurvey; 5] = [
        MockSurvey::Sdss,
        MockSurvey::Desi,
        MockSurvey::Apogee,
        MockSurvey::Galah,
        MockSurvey::LamostLrs,
    ];

    /// Short name, as on the command line (`sdss`, `desi`, `apogee`,
    /// `galah`, `lamost`).
    pub fn name(self) -> &'static str {
        match self {
            MockSurvey::Sdss => "sdss",
            MockSurvey::Desi => "desi",
            MockSurvey::Apogee => "apogee",
            MockSurvey::Galah => "galah",
            MockSurvey::LamostLrs => "lamost",
        }
    }

    /// Parses [`MockSurvey::name`] (also accepts `lamostlrs`).
    pub fn from_name(s: &str) -> Option<MockSurvey> {
        let s = s.trim().to_ascii_lowercase();
        if s == "lamostlrs" {
            return Some(MockSurvey::LamostLrs);
        }
        MockSurvey::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Position in [`MockSurvey::ALL`].
    pub fn code(self) -> u64 {
        self as u64
    }

    /// The io crate's survey.
    pub fn survey(self) -> Survey {
        match self {
            MockSurvey::Sdss => Survey::Sdss,
            MockSurvey::Desi => Survey::Desi,
            MockSurvey::Apogee => Survey::Apogee,
            MockSurvey::Galah => Survey::Galah,
            MockSurvey::LamostLrs => Survey::LamostLrs,
        }
    }

    /// Medium of the survey's wavelengths.
    pub fn medium(self) -> Medium {
        match self {
            MockSurvey::Galah => Medium::Air,
            _ => Medium::Vacuum,
        }
    }

    /// Whether the survey observes objects of `class` (APOGEE and GALAH
    /// observe stars only).
    pub fn observes(self, class: crate::objects::ObjectClass) -> bool {
        use crate::objects::ObjectClass;
        !matches!(self, MockSurvey::Apogee | MockSurvey::Galah) || class == ObjectClass::Star
    }

    /// Resolving power λ/Δλ (FWHM) at `lambda` in arm `arm`.
    pub fn resolution(self, arm: &str, lambda: f64) -> f64 {
        let lerp = |l0: f64, l1: f64, r0: f64, r1: f64| {
            let t = ((lambda - l0) / (l1 - l0)).clamp(0.0, 1.0);
            r0 + t * (r1 - r0)
        };
        match self {
            // BOSS: ≈1500 at 3800 Å to ≈2600 at 10000 Å.
            MockSurvey::Sdss => lerp(3600.0, 10400.0, 1500.0, 2600.0),
            // DESI: B 2000–3200, R 3200–4100, Z 4100–5100.
            MockSurvey::Desi => match arm {
                "b" => lerp(3600.0, 5800.0, 2000.0, 3200.0),
                "r" => lerp(5760.0, 7620.0, 3200.0, 4100.0),
                _ => lerp(7520.0, 9824.0, 4100.0, 5100.0),
            },
            MockSurvey::Apogee => 22_500.0,
            MockSurvey::Galah => 28_000.0,
            MockSurvey::LamostLrs => 1_800.0,
        }
    }

    /// Gaussian σ of the line-spread function at `lambda`, Å.
    pub fn lsf_sigma(self, arm: &str, lambda: f64) -> f64 {
        lambda / (FWHM_PER_SIGMA * self.resolution(arm, lambda))
    }

    /// S/N model: `(reference S/N, magnitude at which it is reached, lowest,
    /// highest)`. A spectrum's median S/N per pixel is
    /// `ref · 10^(−0.2 (m − m_ref))` with 0.3 dex-ish log-normal scatter,
    /// clipped to `[lowest, highest]`.
    pub fn snr_model(self) -> (f64, f64, f64, f64) {
        match self {
            MockSurvey::Sdss => (12.0, 18.0, 1.5, 120.0),
            MockSurvey::Desi => (5.0, 20.0, 1.0, 100.0),
            MockSurvey::Apogee => (120.0, 11.5, 20.0, 800.0),
            MockSurvey::Galah => (50.0, 12.5, 10.0, 300.0),
            MockSurvey::LamostLrs => (30.0, 15.0, 3.0, 400.0),
        }
    }

    /// Factor from 1e-17 erg s⁻¹ cm⁻² Å⁻¹ to the survey's flux unit
    /// (GALAH: counts; LAMOST: its relative flux units).
    pub fn flux_unit(self) -> f64 {
        match self {
            MockSurvey::Galah => 3.0,
            MockSurvey::LamostLrs => 7.0,
            _ => 1.0,
        }
    }

    /// Sky noise relative to the median object flux for a typical target
    /// (faint-object surveys are sky dominated, bright-star surveys not).
    pub fn sky_level(self) -> f64 {
        match self {
            MockSurvey::Sdss | MockSurvey::Desi => 1.2,
            MockSurvey::LamostLrs => 0.6,
            MockSurvey::Apogee => 0.3,
            MockSurvey::Galah => 0.15,
        }
    }

    /// Mean number of runs of bad pixels per arm.
    pub fn bad_runs(self) -> f64 {
        match self {
            MockSurvey::Sdss => 2.0,
            MockSurvey::Desi => 0.8,
            MockSurvey::Apogee => 3.0,
            MockSurvey::Galah => 0.0,
            MockSurvey::LamostLrs => 1.5,
        }
    }
}

impl std::fmt::Display for MockSurvey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Pixel-mask bits the mocks set, per survey (the surveys' own bit
/// definitions).
pub mod mask {
    /// SDSS `SPPIXMASK` FULLREJECT: pixel rejected in all exposures.
    pub const SDSS_FULLREJECT: u32 = 1 << 18;
    /// SDSS `SPPIXMASK` BRIGHTSKY: sky flux well above the object's.
    pub const SDSS_BRIGHTSKY: u32 = 1 << 23;
    /// SDSS `SPPIXMASK` COMBINEREJ: rejected in some exposures (only in
    /// `or_mask`).
    pub const SDSS_COMBINEREJ: u32 = 1 << 25;
    /// DESI `specmask` BADPIX.
    pub const DESI_BADPIX: u32 = 1 << 0;
    /// APOGEE `PIXMASK` BADPIX (also every chip-gap pixel).
    pub const APOGEE_BADPIX: u32 = 1 << 0;
    /// APOGEE `PIXMASK` CRPIX (cosmic ray).
    pub const APOGEE_CRPIX: u32 = 1 << 1;
    /// APOGEE `PIXMASK` PERSIST_LOW (persistence on the blue chip).
    pub const APOGEE_PERSIST_LOW: u32 = 1 << 11;
    /// APOGEE `PIXMASK` SIG_SKYLINE.
    pub const APOGEE_SIG_SKYLINE: u32 = 1 << 12;
    /// LAMOST pixel mask BADCCD.
    pub const LAMOST_BADCCD: u32 = 1 << 0;
    /// LAMOST pixel mask BRIGHTSKY.
    pub const LAMOST_BRIGHTSKY: u32 = 1 << 3;
}

/// The SDSS/BOSS grid: `log10 λ = SDSS_LOGLAM0 + 1e-4 · (offset + i)`.
pub const SDSS_LOGLAM0: f64 = 3.5500;
/// SDSS/BOSS log-λ step, dex.
pub const SDSS_DLOGLAM: f64 = 1.0e-4;
/// Pixels of the full SDSS/BOSS grid (3548.1–10351.4 Å).
pub const SDSS_NPIX_FULL: usize = 4651;

/// DESI arms: (name, first wavelength Å, pixels), all 0.8 Å steps.
pub const DESI_ARMS: [(&str, f64, usize); 3] = [
    ("b", 3600.0, 2751),
    ("r", 5760.0, 2326),
    ("z", 7520.0, 2881),
];
/// DESI pixel step, Å.
pub const DESI_DLAMBDA: f64 = 0.8;

/// APOGEE apStar grid: `CRVAL1`, `CDELT1` (dex), pixels.
pub const APOGEE_CRVAL1: f64 = 4.179;
/// APOGEE apStar log-λ step, dex.
pub const APOGEE_CDELT1: f64 = 6.0e-6;
/// Pixels of the APOGEE apStar grid.
pub const APOGEE_NPIX: usize = 8575;
/// First and last pixel of the blue, green and red chips on the apStar
/// grid (a star's own ranges shift by up to 35 pixels to the blue).
pub const APOGEE_CHIPS: [(usize, usize); 3] = [(242, 3337), (3577, 6141), (6334, 8393)];

/// GALAH CCDs: (first air wavelength Å, step Å), 4096 pixels each.
pub const GALAH_CCDS: [(f64, f64); 4] = [
    (4714.061, 0.045_947_8),
    (5648.730, 0.054_694_0),
    (6476.255, 0.063_160_3),
    (7584.114, 0.073_577_1),
];
/// Pixels per GALAH CCD.
pub const GALAH_NPIX: usize = 4096;

/// LAMOST LRS grid: `COEFF0`, `COEFF1`, pixels (3699.99–9099.1 Å).
pub const LAMOST_COEFF0: f64 = 3.5682;
/// LAMOST LRS log-λ step, dex.
pub const LAMOST_COEFF1: f64 = 1.0e-4;
/// Pixels of the LAMOST LRS grid.
pub const LAMOST_NPIX: usize = 3909;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_match_the_real_ranges() {
        let sdss_end = 10f64.powf(SDSS_LOGLAM0 + SDSS_DLOGLAM * (SDSS_NPIX_FULL - 1) as f64);
        assert!((10f64.powf(SDSS_LOGLAM0) - 3548.1).abs() < 0.1);
        assert!((sdss_end - 10351.4).abs() < 0.2, "{sdss_end}");
        for (_, start, n) in DESI_ARMS {
            let end = start + DESI_DLAMBDA * (n - 1) as f64;
            assert!([5800.0, 7620.0, 9824.0]
                .iter()
                .any(|e| (end - e).abs() < 1e-6));
        }
        let a0 = 10f64.powf(APOGEE_CRVAL1);
        let a1 = 10f64.powf(APOGEE_CRVAL1 + APOGEE_CDELT1 * (APOGEE_NPIX - 1) as f64);
        assert!(
            (a0 - 15100.8).abs() < 0.1 && (a1 - 16999.8).abs() < 0.1,
            "{a0} {a1}"
        );
        let l1 = 10f64.powf(LAMOST_COEFF0 + LAMOST_COEFF1 * (LAMOST_NPIX - 1) as f64);
        assert!((l1 - 9099.1).abs() < 0.2, "{l1}");
    }

    #[test]
    fn names_round_trip() {
        for s in MockSurvey::ALL {
            assert_eq!(MockSurvey::from_name(s.name()), Some(s));
        }
    }
}
