//! File layouts spectok reads, and content-based detection of them.
//!
//! Detection lives here and nowhere else: it looks at what a file holds
//! (magic bytes, HDU names, table columns, image shapes, header keywords),
//! never only at its name.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fits::{Fits, HduDesc};
use crate::spectrum::Survey;

/// A file layout. One reader handles each spectrum-bearing layout; the
/// companion and refused layouts are recognised so that they get a precise
/// message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Format {
    /// SDSS/BOSS/eBOSS `spec-*` (DR8+, lite and full): `COADD` table +
    /// `SPECOBJ` or `SPALL`.
    SdssSpec,
    /// SDSS DR≤7 `spSpec`: primary 5×N image, log-linear `COEFF0/COEFF1`.
    SdssSpSpec,
    /// DESI `coadd-*` and `spectra-*`: `FIBERMAP` + B/R/Z image HDUs.
    DesiCoadd,
    /// DESI `redrock-*`: the `REDSHIFTS` table, a companion of a coadd.
    DesiRedrock,
    /// APOGEE `apStar`: combined + per-visit spectra on the log-linear grid.
    ApogeeApStar,
    /// APOGEE `aspcapStar`: normalised spectrum + ASPCAP parameters.
    ApogeeAspcapStar,
    /// APOGEE `apVisit`: 3 chips × 4096 with an explicit wavelength HDU.
    ApogeeApVisit,
    /// GALAH DR3 per-CCD file; the CCDs of one star form one spectrum.
    GalahCcd,
    /// LAMOST LRS DR8+ (`COADD` 1-row table with array columns).
    LamostLrs,
    /// LAMOST LRS old layout (primary 5×N image incl. wavelength row).
    LamostLrsOld,
    /// LAMOST MRS (`COADD_B` + `COADD_R` tables).
    LamostMrs,
    /// Gaia DR3 XP sampled spectra (`flux`, `flux_error` array columns).
    GaiaXpSampled,
    /// Gaia DR3 XP continuous (basis coefficients): recognised, refused.
    GaiaXpContinuous,
    /// MaNGA DAP test layout (`WAVE`, `FLUX`, `IVAR`, `MASK`, `SRES`).
    MangaDap,
    /// Multimodal Universe HDF5 (`spectrum_*` datasets, padded).
    MmuHdf5,
    /// spectok's own HDF5 shard (written by `spectok convert`).
    SpectokShard,
}

impl Format {
    pub const ALL: [Format; 16] = [
        Format::SdssSpec,
        Format::SdssSpSpec,
        Format::DesiCoadd,
        Format::DesiRedrock,
        Format::ApogeeApStar,
        Format::ApogeeAspcapStar,
        Format::ApogeeApVisit,
        Format::GalahCcd,
        Format::LamostLrs,
        Format::LamostLrsOld,
        Format::LamostMrs,
        Format::GaiaXpSampled,
        Format::GaiaXpContinuous,
        Format::MangaDap,
        Format::MmuHdf5,
        Format::SpectokShard,
    ];

    /// Name used by `--format` and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::SdssSpec => "sdss-spec",
            Format::SdssSpSpec => "sdss-spspec",
            Format::DesiCoadd => "desi-coadd",
            Format::DesiRedrock => "desi-redrock",
            Format::ApogeeApStar => "apogee-apstar",
            Format::ApogeeAspcapStar => "apogee-aspcapstar",
            Format::ApogeeApVisit => "apogee-apvisit",
            Format::GalahCcd => "galah-ccd",
            Format::LamostLrs => "lamost-lrs",
            Format::LamostLrsOld => "lamost-lrs-old",
            Format::LamostMrs => "lamost-mrs",
            Format::GaiaXpSampled => "gaia-xp",
            Format::GaiaXpContinuous => "gaia-xp-continuous",
            Format::MangaDap => "manga-dap",
            Format::MmuHdf5 => "mmu-hdf5",
            Format::SpectokShard => "spectok-shard",
        }
    }

    pub fn from_name(s: &str) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
    }

    /// The survey whose spectra this layout holds (`None` for layouts that
    /// can hold any survey, or none).
    pub fn survey(self) -> Option<Survey> {
        Some(match self {
            Format::SdssSpec | Format::SdssSpSpec => Survey::Sdss,
            Format::DesiCoadd | Format::DesiRedrock => Survey::Desi,
            Format::ApogeeApStar | Format::ApogeeAspcapStar | Format::ApogeeApVisit => {
                Survey::Apogee
            }
            Format::GalahCcd => Survey::Galah,
            Format::LamostLrs | Format::LamostLrsOld => Survey::LamostLrs,
            Format::LamostMrs => Survey::LamostMrs,
            Format::GaiaXpSampled | Format::GaiaXpContinuous => Survey::GaiaXp,
            Format::MangaDap => Survey::Manga,
            Format::MmuHdf5 | Format::SpectokShard => return None,
        })
    }

    /// Whether files of this layout hold spectra a reader can produce.
    pub fn has_spectra(self) -> bool {
        !matches!(self, Format::DesiRedrock | Format::GaiaXpContinuous)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const HDF5_MAGIC: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// Detects the layout of `path` from its content.
///
/// FITS files (plain or gzip-compressed) are recognised by their HDU names,
/// columns, image shapes and keywords; HDF5 files by their datasets. Files
/// of no known layout give [`Error::Unrecognised`] with a short description
/// of what was found.
pub fn detect(path: &Path) -> Result<Format> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|source| Error::Os {
            path: path.to_path_buf(),
            source,
        })?;
    if n == 0 {
        return Err(Error::Unrecognised {
            path: path.to_path_buf(),
            found: "empty file".into(),
        });
    }
    if n == 8 && &head == HDF5_MAGIC {
        return crate::hdf5util::detect_hdf5(path);
    }
    let gz = n >= 2 && head[0] == 0x1f && head[1] == 0x8b;
    if !gz && (n < 6 || &head[..6] != b"SIMPLE") {
        return Err(Error::Unrecognised {
            path: path.to_path_buf(),
            found: "neither FITS (no SIMPLE card), gzip nor HDF5".into(),
        });
    }
    let mut fits = Fits::open(path)?;
    detect_fits(&mut fits)
}

fn detect_fits(fits: &mut Fits) -> Result<Format> {
    // HDU names come with the index; an HDU is described (its columns,
    // shape) only when a rule below looks at it.
    let names = fits.hdu_names();
    let named = |n: &str| names.iter().any(|h| h.eq_ignore_ascii_case(n));
    let cols_of = |fits: &mut Fits, n: &str| -> Vec<String> {
        match names.iter().position(|h| h.eq_ignore_ascii_case(n)) {
            Some(i) => fits.describe(i).map(|d| d.columns).unwrap_or_default(),
            None => Vec::new(),
        }
    };
    let has_col = |cols: &[String], c: &str| cols.iter().any(|x| x.eq_ignore_ascii_case(c));
    let describe = |fits: &mut Fits, i: usize| -> Result<Option<HduDesc>> {
        if i < names.len() {
            fits.describe(i).map(Some)
        } else {
            Ok(None)
        }
    };

    if named("COADD_B") && named("COADD_R") {
        return Ok(Format::LamostMrs);
    }
    if named("COADD") {
        let cols = cols_of(fits, "COADD");
        if has_col(&cols, "loglam") {
            return Ok(Format::SdssSpec);
        }
        if has_col(&cols, "WAVELENGTH") && has_col(&cols, "FLUX") {
            return Ok(Format::LamostLrs);
        }
    }
    if named("B_FLUX") || named("R_FLUX") || named("Z_FLUX") {
        return Ok(Format::DesiCoadd);
    }
    if named("REDSHIFTS") && has_col(&cols_of(fits, "REDSHIFTS"), "TARGETID") {
        return Ok(Format::DesiRedrock);
    }
    if named("WAVE") && named("FLUX") && named("IVAR") {
        return Ok(Format::MangaDap);
    }
    if names.len() > 2
        && names[1].eq_ignore_ascii_case("normalized")
        && names[2].eq_ignore_ascii_case("relative_error")
    {
        return Ok(Format::GalahCcd);
    }
    let h1 = describe(fits, 1)?;
    let h4 = describe(fits, 4)?;
    // Tables in HDU 1 identified by their columns.
    if let Some(h1) = &h1 {
        if has_col(&h1.columns, "bp_coefficients") || has_col(&h1.columns, "rp_coefficients") {
            return Ok(Format::GaiaXpContinuous);
        }
        if has_col(&h1.columns, "flux") && has_col(&h1.columns, "flux_error") {
            return Ok(Format::GaiaXpSampled);
        }
    }
    // APOGEE: aspcapStar has a table with FPARAM in HDU 4.
    if h4.as_ref().is_some_and(|h| has_col(&h.columns, "FPARAM"))
        && h1.as_ref().is_some_and(|h| h.shape.len() == 1)
    {
        return Ok(Format::ApogeeAspcapStar);
    }
    if let (Some(h1), Some(h4)) = (&h1, &h4) {
        // apVisit: HDU 4 is a (3 × 4096) double wavelength image, like HDU 1.
        if h1.shape.len() == 2 && h4.shape == h1.shape && h4.bitpix == -64 && h1.shape[0] == 3 {
            return Ok(Format::ApogeeApVisit);
        }
    }
    if let Some(h1) = &h1 {
        if h1.is_image()
            && fits
                .key_text(1, "CTYPE1")
                .is_some_and(|s| s.contains("LOG"))
            || (h1.is_image()
                && fits.key_f64(0, "NVISITS").is_some()
                && fits.key_f64(1, "CDELT1").is_some())
        {
            return Ok(Format::ApogeeApStar);
        }
    }
    // Primary 5 × N images: LAMOST old (TELESCOP; it also carries
    // COEFF0/COEFF1, so it is tested first) or SDSS spSpec (COEFF0/COEFF1).
    let h0 = fits.describe(0)?;
    if h0.shape.len() == 2 && h0.shape[0] == 5 {
        if fits
            .key_text(0, "TELESCOP")
            .is_some_and(|t| t.to_ascii_uppercase().contains("LAMOST"))
        {
            return Ok(Format::LamostLrsOld);
        }
        if fits.key_f64(0, "COEFF0").is_some() && fits.key_f64(0, "COEFF1").is_some() {
            return Ok(Format::SdssSpSpec);
        }
    }
    let found = fits
        .describe_all()?
        .iter()
        .enumerate()
        .map(|(i, h)| h.summary(i))
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error::Unrecognised {
        path: fits.path().to_path_buf(),
        found: format!("FITS with {}", found),
    })
}
