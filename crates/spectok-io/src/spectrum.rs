//! The one in-memory type for a spectrum on its native grid.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The survey (instrument family) a spectrum comes from.
///
/// This is the *survey*, not the file layout: an SDSS `spec-*` file and an
/// SDSS `spSpec` file are both [`Survey::Sdss`]; see [`crate::Format`] for
/// layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Survey {
    /// SDSS legacy and BOSS/eBOSS optical spectrographs.
    Sdss,
    /// DESI (B, R, Z arms).
    Desi,
    /// APOGEE H-band.
    Apogee,
    /// GALAH / HERMES (4 CCDs).
    Galah,
    /// LAMOST low-resolution survey.
    LamostLrs,
    /// LAMOST medium-resolution survey (B and R arms).
    LamostMrs,
    /// Gaia DR3 BP/RP (XP) sampled spectra.
    GaiaXp,
    /// SDSS-IV MaNGA spaxel spectra.
    Manga,
}

impl Survey {
    /// All surveys, in a fixed order.
    pub const ALL: [Survey; 8] = [
        Survey::Sdss,
        Survey::Desi,
        Survey::Apogee,
        Survey::Galah,
        Survey::LamostLrs,
        Survey::LamostMrs,
        Survey::GaiaXp,
        Survey::Manga,
    ];

    /// Short lowercase name, as used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Survey::Sdss => "sdss",
            Survey::Desi => "desi",
            Survey::Apogee => "apogee",
            Survey::Galah => "galah",
            Survey::LamostLrs => "lamostlrs",
            Survey::LamostMrs => "lamostmrs",
            Survey::GaiaXp => "gaiaxp",
            Survey::Manga => "manga",
        }
    }

    /// Parses [`Survey::name`] back.
    pub fn from_name(s: &str) -> Option<Survey> {
        Survey::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Survey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether wavelengths are in vacuum or in air.
///
/// spectok never converts between the two: the flag travels with the
/// spectrum so a model can be told, and mixing is never silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Medium {
    Vacuum,
    Air,
    /// The file does not say (e.g. Gaia XP pseudo-wavelength samples).
    Unknown,
}

impl Medium {
    pub fn name(self) -> &'static str {
        match self {
            Medium::Vacuum => "vacuum",
            Medium::Air => "air",
            Medium::Unknown => "unknown",
        }
    }

    pub fn from_name(s: &str) -> Option<Medium> {
        [Medium::Vacuum, Medium::Air, Medium::Unknown]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// Where a spectrum was read from: enough to find it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The file (for multi-file spectra such as GALAH, the first CCD file).
    pub file: PathBuf,
    /// HDU name/number or HDF5 dataset path the flux came from.
    pub hdu: String,
    /// Row (fibre, visit, object index) inside that HDU/dataset, if the
    /// file holds several spectra.
    pub row: Option<u64>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.file.display(), self.hdu)?;
        if let Some(r) = self.row {
            write!(f, " row {r}")?;
        }
        Ok(())
    }
}

/// A contiguous run of pixels from one arm, chip or CCD.
///
/// Pixels `start..end` of the spectrum belong to this segment; inside a
/// segment wavelengths strictly increase. Segments may overlap in
/// wavelength (DESI arms do) and are never merged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Arm/chip/CCD name, e.g. `"b"`, `"chip_a"`, `"ccd3"`, `"all"`.
    pub name: String,
    pub start: usize,
    pub end: usize,
}

impl Segment {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Labels a file carries about the object, typed. `None` means the file does
/// not give it or flags it as unknown (e.g. APOGEE's −9999).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    /// Redshift (spectroscopic pipeline value).
    pub redshift: Option<f64>,
    pub redshift_err: Option<f64>,
    /// Pipeline warning bits for the redshift (SDSS `ZWARNING`, DESI `ZWARN`);
    /// 0 means a confident redshift.
    pub redshift_warning: Option<i64>,
    /// Object class, upper case: `GALAXY`, `QSO`, `STAR`.
    pub class: Option<String>,
    pub subclass: Option<String>,
    /// Effective temperature, K.
    pub teff: Option<f64>,
    /// Surface gravity, log10(cm s⁻²).
    pub logg: Option<f64>,
    /// Metallicity [Fe/H] (or [M/H] where that is what the survey fits), dex.
    pub fe_h: Option<f64>,
    /// [α/M], dex.
    pub alpha_m: Option<f64>,
    /// Any further numeric values the file carries (`ra`, `dec`, `snr`,
    /// `vdisp`, …), by lower-case name.
    pub extra: BTreeMap<String, f64>,
    /// Any further text values (`objtype`, `apogee_id`, `spec_cln`, …), by
    /// lower-case name.
    pub text: BTreeMap<String, String>,
}

impl Labels {
    /// Class names normalised to the three spectok uses (`GALAXY`, `QSO`,
    /// `STAR`), leaving other names upper-cased as they are.
    pub fn normalise_class(s: &str) -> String {
        let u = s.trim().to_ascii_uppercase();
        match u.as_str() {
            "GALAXY" | "GAL" => "GALAXY".into(),
            "QSO" | "QUASAR" => "QSO".into(),
            "STAR" | "STARS" => "STAR".into(),
            _ => u,
        }
    }

    /// True when no label at all is present.
    pub fn is_empty(&self) -> bool {
        self == &Labels::default()
    }
}

/// A spectrum on its native wavelength grid.
///
/// Invariants (checked by [`Spectrum::validate`], which every reader calls):
/// - `wavelength`, `flux`, `ivar`, `mask` (and `lsf_sigma` if present) have
///   the same length, and it is > 0;
/// - `segments` tile `0..len` in order without gaps or overlaps;
/// - inside each segment, wavelengths are finite, positive and strictly
///   increasing (readers reverse a decreasing chip, which moves pixels but
///   never changes a value);
/// - `ivar`, `flux` and `mask` are passed on as the file holds them: NaN,
///   zero or negative ivar and set mask bits are kept, and the data crate
///   decides which pixels are invalid.
///
/// Flux values are exactly what the file holds, in the file's units: the io
/// crate never interpolates, smooths or rescales flux.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spectrum {
    /// Object identifier (SPECOBJID, TARGETID, APOGEE_ID, sobject_id, …).
    pub id: String,
    pub survey: Survey,
    pub source: Source,
    /// Wavelength of each pixel, Å.
    pub wavelength: Vec<f64>,
    pub flux: Vec<f32>,
    /// Inverse variance of `flux` (0 = no information).
    pub ivar: Vec<f32>,
    /// The survey's own pixel bitmask (0 = no flag set). Which bits make a
    /// pixel invalid is decided downstream, per survey.
    pub mask: Vec<u32>,
    pub segments: Vec<Segment>,
    pub medium: Medium,
    /// Line-spread function as a Gaussian σ in Å per pixel, where the file
    /// gives one.
    pub lsf_sigma: Option<Vec<f32>>,
    pub labels: Labels,
}

impl Spectrum {
    /// Number of pixels.
    pub fn len(&self) -> usize {
        self.wavelength.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wavelength.is_empty()
    }

    /// Smallest and largest wavelength (over all segments).
    pub fn wavelength_range(&self) -> (f64, f64) {
        self.wavelength
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &w| {
                (lo.min(w), hi.max(w))
            })
    }

    /// Whether pixel `i` carries information in the simplest sense: finite
    /// flux, finite positive ivar and no mask bit set. The data crate applies
    /// per-survey mask-bit rules on top.
    pub fn pixel_ok(&self, i: usize) -> bool {
        self.flux[i].is_finite()
            && self.ivar[i].is_finite()
            && self.ivar[i] > 0.0
            && self.mask[i] == 0
    }

    /// Fraction of pixels for which [`Spectrum::pixel_ok`] holds.
    pub fn valid_fraction(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let n = (0..self.len()).filter(|&i| self.pixel_ok(i)).count();
        n as f64 / self.len() as f64
    }

    /// Checks the invariants listed on the type. Returns the name of the
    /// offending field and what is wrong with it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let n = self.wavelength.len();
        if n == 0 {
            return Err(("wavelength", "no pixels".into()));
        }
        for (name, len) in [
            ("flux", self.flux.len()),
            ("ivar", self.ivar.len()),
            ("mask", self.mask.len()),
        ] {
            if len != n {
                return Err((name, format!("{len} values for {n} wavelengths")));
            }
        }
        if let Some(l) = &self.lsf_sigma {
            if l.len() != n {
                return Err(("lsf_sigma", format!("{} values for {n} pixels", l.len())));
            }
        }
        let mut next = 0;
        for s in &self.segments {
            if s.start != next || s.end <= s.start || s.end > n {
                return Err((
                    "segments",
                    format!(
                        "segment {:?} {}..{} does not continue at pixel {next} of {n}",
                        s.name, s.start, s.end
                    ),
                ));
            }
            next = s.end;
            let w = &self.wavelength[s.start..s.end];
            // Fast check without early exits (the compiler vectorises it):
            // a strictly rising segment holds no NaN, so its first pixel
            // above 0 and its last below ∞ bound all of them. Only a
            // failing segment is searched for its first bad pixel.
            let rising = w.iter().zip(&w[1..]).filter(|(a, b)| b > a).count();
            if rising + 1 == w.len() && w[0] > 0.0 && w[w.len() - 1] < f64::INFINITY {
                continue;
            }
            if let Some(i) = w.iter().position(|x| !x.is_finite() || *x <= 0.0) {
                return Err((
                    "wavelength",
                    format!("pixel {} is {} (must be finite and > 0)", s.start + i, w[i]),
                ));
            }
            if let Some(i) = w.windows(2).position(|p| p[1] <= p[0]) {
                return Err((
                    "wavelength",
                    format!(
                        "not strictly increasing in segment {:?} at pixel {} ({} then {})",
                        s.name,
                        s.start + i,
                        w[i],
                        w[i + 1]
                    ),
                ));
            }
        }
        if next != n {
            return Err(("segments", format!("cover {next} of {n} pixels")));
        }
        Ok(())
    }
}
