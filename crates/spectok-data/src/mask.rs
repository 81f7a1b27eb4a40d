//! Which pixels are invalid: the survey-independent rule plus, per survey,
//! the mask bits that invalidate a pixel.
//!
//! A pixel is invalid when its flux or ivar is not finite, its ivar is
//! ≤ 0, or its mask has a bit set that [`MaskRules`] lists as bad for the
//! spectrum's survey. Bits not listed (informational flags such as SDSS
//! `NEARBADPIXEL` or APOGEE `PERSIST_LOW`) leave the pixel valid: its ivar
//! already says how much it is worth.
//!
//! # Defaults and where they come from
//!
//! | survey | mask the reader passes | bad bits by default |
//! |---|---|---|
//! | SDSS / BOSS (`spec`, `spSpec`) | `and_mask` (SPPIXMASK) | fibre: 0 `NOPLUG`, 1 `BADTRACE`, 2 `BADFLAT`, 3 `BADARC`; pixel: 18 `FULLREJECT`, 22 `NOSKY`, 23 `BRIGHTSKY`, 24 `NODATA`, 25 `COMBINEREJ`, 26 `BADFLUXFACTOR`, 27 `BADSKYCHI`, 28 `REDMONSTER` |
//! | APOGEE | `PIXMASK` | 0 `BADPIX`, 1 `CRPIX`, 2 `SATPIX`, 3 `UNFIXABLE`, 4 `BADDARK`, 5 `BADFLAT`, 6 `BADERR`, 7 `NOSKY` |
//! | DESI | `X_MASK` | any bit |
//! | LAMOST LRS / MRS | `ANDMASK` | any bit |
//! | MaNGA | `DRP3PIXMASK` | 0 `NOCOV`, 1 `LOWCOV`, 2 `DEADFIBER`, 3 `FORESTAR`, 10 `DONOTUSE` |
//! | GALAH, Gaia XP | (no survey mask; readers flag what they must) | any bit |
//!
//! SDSS bit numbers follow `sdssMaskbits.par` (idlutils). The fibre-level
//! bits 4 `MANYBADCOLUMNS`, 5 `MANYREJECTED` and 6 `LARGESHIFT` are *not*
//! bad by default: in the `and_mask` they mark a whole camera of an
//! otherwise good spectrum (half the pixels of `spec-0266-51602-0013` carry
//! `MANYBADCOLUMNS` with positive ivar). Pixel bits 16 `NEARBADPIXEL`, 17
//! `LOWFLAT`, 19 `PARTIALREJECT`, 20 `SCATTEREDLIGHT` and 21 `CROSSTALK`
//! only lower a pixel's quality, which its ivar carries.
//!
//! APOGEE's default is the "bad pixel" set of the APOGEE tools
//! (`apogee.tools.bitmask.badpixmask`, bits 0–7). The persistence bits
//! ([`apogee::PERSIST_HIGH`], `_MED`, `_LOW`), [`apogee::SIG_SKYLINE`] and
//! [`apogee::SIG_TELLURIC`] mark pixels that are usable but may be
//! affected; add them with [`MaskRules::with_bits`] or in the config file
//! for a stricter run.
//!
//! DESI's pipeline sets a mask bit only on pixels not to be used, so any
//! bit is bad; the same holds for LAMOST's `ANDMASK` (bits 1–6: bad CCD,
//! bad profile, no sky, bright sky, bad centre, no data).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use spectok_io::{Spectrum, Survey};

/// SDSS SPPIXMASK bits (`sdssMaskbits.par`).
pub mod sdss {
    /// Fibre not listed in the plug map.
    pub const NOPLUG: u32 = 1 << 0;
    /// Bad trace.
    pub const BADTRACE: u32 = 1 << 1;
    /// Low counts in the fibre flat.
    pub const BADFLAT: u32 = 1 << 2;
    /// Bad arc solution.
    pub const BADARC: u32 = 1 << 3;
    /// More than 10 % of the pixels are bad columns.
    pub const MANYBADCOLUMNS: u32 = 1 << 4;
    /// More than 10 % of the pixels are rejected in extraction.
    pub const MANYREJECTED: u32 = 1 << 5;
    /// Large spatial shift between flat and object position.
    pub const LARGESHIFT: u32 = 1 << 6;
    /// Bad pixel within 3 pixels of the trace.
    pub const NEARBADPIXEL: u32 = 1 << 16;
    /// Flat field below 0.5.
    pub const LOWFLAT: u32 = 1 << 17;
    /// Pixel fully rejected in extraction.
    pub const FULLREJECT: u32 = 1 << 18;
    /// Some pixels rejected in extraction.
    pub const PARTIALREJECT: u32 = 1 << 19;
    /// Scattered light significant.
    pub const SCATTEREDLIGHT: u32 = 1 << 20;
    /// Cross-talk significant.
    pub const CROSSTALK: u32 = 1 << 21;
    /// Sky level unknown at this wavelength.
    pub const NOSKY: u32 = 1 << 22;
    /// Sky much brighter than the object.
    pub const BRIGHTSKY: u32 = 1 << 23;
    /// No data in the combine B-spline.
    pub const NODATA: u32 = 1 << 24;
    /// Rejected in the combine B-spline.
    pub const COMBINEREJ: u32 = 1 << 25;
    /// Low flux-calibration or flux-correction factor.
    pub const BADFLUXFACTOR: u32 = 1 << 26;
    /// Relative χ² > 3 in sky residuals.
    pub const BADSKYCHI: u32 = 1 << 27;
    /// Contiguous region of bad χ² in sky residuals.
    pub const REDMONSTER: u32 = 1 << 28;
    /// The default bad set (see the module docs).
    pub const DEFAULT_BAD: u32 = NOPLUG
        | BADTRACE
        | BADFLAT
        | BADARC
        | FULLREJECT
        | NOSKY
        | BRIGHTSKY
        | NODATA
        | COMBINEREJ
        | BADFLUXFACTOR
        | BADSKYCHI
        | REDMONSTER;
}

/// APOGEE PIXMASK bits.
pub mod apogee {
    /// Marked bad in the bad pixel mask.
    pub const BADPIX: u32 = 1 << 0;
    /// Cosmic ray.
    pub const CRPIX: u32 = 1 << 1;
    /// Saturated.
    pub const SATPIX: u32 = 1 << 2;
    /// Unfixable in ap3d.
    pub const UNFIXABLE: u32 = 1 << 3;
    /// Bad from the dark frame.
    pub const BADDARK: u32 = 1 << 4;
    /// Bad from the flat frame.
    pub const BADFLAT: u32 = 1 << 5;
    /// Very high error.
    pub const BADERR: u32 = 1 << 6;
    /// No sky available.
    pub const NOSKY: u32 = 1 << 7;
    /// In the Littrow ghost.
    pub const LITTROW_GHOST: u32 = 1 << 8;
    /// High persistence region.
    pub const PERSIST_HIGH: u32 = 1 << 9;
    /// Medium persistence region.
    pub const PERSIST_MED: u32 = 1 << 10;
    /// Low persistence region.
    pub const PERSIST_LOW: u32 = 1 << 11;
    /// Near a significant sky line.
    pub const SIG_SKYLINE: u32 = 1 << 12;
    /// Near a significant telluric line.
    pub const SIG_TELLURIC: u32 = 1 << 13;
    /// Less than half the PSF in good pixels.
    pub const NOT_ENOUGH_PSF: u32 = 1 << 14;
    /// The default bad set: bits 0–7.
    pub const DEFAULT_BAD: u32 =
        BADPIX | CRPIX | SATPIX | UNFIXABLE | BADDARK | BADFLAT | BADERR | NOSKY;
}

/// MaNGA DRP3PIXMASK bits.
pub mod manga {
    /// No coverage in the cube.
    pub const NOCOV: u32 = 1 << 0;
    /// Low coverage.
    pub const LOWCOV: u32 = 1 << 1;
    /// A dead fibre contributes.
    pub const DEADFIBER: u32 = 1 << 2;
    /// Foreground star.
    pub const FORESTAR: u32 = 1 << 3;
    /// Do not use this pixel for science.
    pub const DONOTUSE: u32 = 1 << 10;
    /// The default bad set.
    pub const DEFAULT_BAD: u32 = NOCOV | LOWCOV | DEADFIBER | FORESTAR | DONOTUSE;
}

/// Every bit: a pixel with any mask bit set is invalid.
pub const ANY_BIT: u32 = u32::MAX;

/// Per survey, the mask bits that make a pixel invalid.
///
/// Serialises as a map from survey name to bitmask. A config that names
/// only some surveys keeps the defaults for the others, so
/// `{"apogee": 4863}` (bits 0–7 plus `PERSIST_HIGH` and `SIG_SKYLINE`)
/// makes APOGEE stricter and leaves every other survey as it is; a survey
/// with `0` ignores its mask entirely.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MaskRules {
    bad_bits: BTreeMap<Survey, u32>,
}

impl Default for MaskRules {
    fn default() -> Self {
        let bad_bits = Survey::ALL
            .into_iter()
            .map(|s| (s, Self::default_bits(s)))
            .collect();
        MaskRules { bad_bits }
    }
}

impl<'de> Deserialize<'de> for MaskRules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let given = BTreeMap::<Survey, u32>::deserialize(d)?;
        let mut rules = MaskRules::default();
        rules.bad_bits.extend(given);
        Ok(rules)
    }
}

impl MaskRules {
    /// The default bad bits of `survey` (see the module docs).
    pub fn default_bits(survey: Survey) -> u32 {
        match survey {
            Survey::Sdss => sdss::DEFAULT_BAD,
            Survey::Apogee => apogee::DEFAULT_BAD,
            Survey::Manga => manga::DEFAULT_BAD,
            Survey::Desi
            | Survey::LamostLrs
            | Survey::LamostMrs
            | Survey::Galah
            | Survey::GaiaXp => ANY_BIT,
        }
    }

    /// Bits that invalidate a pixel of `survey`.
    pub fn bad_bits(&self, survey: Survey) -> u32 {
        self.bad_bits
            .get(&survey)
            .copied()
            .unwrap_or_else(|| Self::default_bits(survey))
    }

    /// Replaces the bad bits of `survey`.
    pub fn set_bits(mut self, survey: Survey, bits: u32) -> Self {
        self.bad_bits.insert(survey, bits);
        self
    }

    /// Adds `bits` to the bad bits of `survey` (e.g.
    /// `apogee::PERSIST_HIGH | apogee::SIG_SKYLINE`).
    pub fn with_bits(self, survey: Survey, bits: u32) -> Self {
        let b = self.bad_bits(survey) | bits;
        self.set_bits(survey, b)
    }

    /// Whether a pixel with these values is valid under `bad_bits`.
    #[inline]
    pub fn pixel_valid(flux: f32, ivar: f32, mask: u32, bad_bits: u32) -> bool {
        // Non-short-circuit `&` of comparisons (finite flux, finite
        // positive ivar): branch-free, so `valid_pixels` vectorises.
        (flux.abs() < f32::INFINITY)
            & (ivar > 0.0)
            & (ivar < f32::INFINITY)
            & (mask & bad_bits == 0)
    }

    /// Validity of every pixel of `spectrum` (arrays must have equal
    /// lengths; shorter arrays end the result early).
    pub fn valid_pixels(&self, spectrum: &Spectrum) -> Vec<bool> {
        let bad = self.bad_bits(spectrum.survey);
        spectrum
            .flux
            .iter()
            .zip(&spectrum.ivar)
            .zip(&spectrum.mask)
            .map(|((&f, &iv), &m)| Self::pixel_valid(f, iv, m, bad))
            .collect()
    }
}
