//! Gaia DR3 BP/RP (XP) *sampled* spectra: a table with one row per source
//! and array columns `flux` and `flux_error` (plus `source_id`, and `ra`,
//! `dec` where present).
//!
//! The table holds no wavelength column, so the grid must come from the
//! file or from the layout's definition, never be guessed:
//! - a `SAMPLING` keyword (written by GaiaXPy `calibrate`; a long string
//!   continued over several cards) lists the sample wavelengths in nm. Its
//!   values must lie within the XP range 300–1100 nm: GaiaXPy `convert`
//!   writes pseudo-wavelengths (about 0–60) under the same keyword, and
//!   those are refused;
//! - without `SAMPLING`, a table of exactly 343 samples is the Gaia DR3
//!   `XP_SAMPLED` product, defined on 336–1020 nm in 2 nm steps (Gaia DR3
//!   documentation, datamodel of XP_SAMPLED; GaiaXPy's default sampling);
//! - anything else (e.g. GaiaXPy's internally calibrated pseudo-wavelength
//!   samples, 307 per row in `XP_SPECTRA_RAW`) is refused with
//!   [`Error::Refused`]: the samples have no physical wavelength.
//!
//! Wavelengths are stored in Å (nm × 10). Gaia states neither air nor
//! vacuum for these grids, so the medium is [`Medium::Unknown`].
//! `ivar = 1/flux_error²` (NaN error → NaN, error ≤ 0 → 0); with fluxes in
//! W m⁻² nm⁻¹ that value is large (about 1e36) and an error below ~5e-20
//! overflows f32 to +∞, which the data crate treats as invalid. The mask is
//! all zero (the table has none). Rows are read one at a time; the id is
//! `source_id`.

use std::path::{Path, PathBuf};

use crate::fits::Fits;
use crate::readers::common::{at_hdu, finish, ivar_from_sigma};
use crate::{
    Error, Format, InputUnit, Labels, Medium, Reader, Result, Segment, Source, Spectrum,
    SpectrumIter, Survey,
};

/// Reader of Gaia XP sampled-spectra tables ([`Format::GaiaXpSampled`]).
pub struct GaiaXpReader;

/// Samples of the Gaia DR3 `XP_SAMPLED` grid (336–1020 nm, 2 nm steps).
pub const DR3_SAMPLES: usize = 343;

/// The Gaia DR3 `XP_SAMPLED` grid, in Å.
pub fn dr3_grid() -> Vec<f64> {
    (0..DR3_SAMPLES).map(|i| 3360.0 + 20.0 * i as f64).collect()
}

/// Physical bounds (nm) a `SAMPLING` grid must lie within to be taken as
/// wavelengths.
const XP_RANGE_NM: (f64, f64) = (300.0, 1100.0);

/// The table and its grid.
struct Layout {
    hdu: usize,
    name: String,
    rows: usize,
    /// Wavelength of each sample, Å.
    grid: Vec<f64>,
    has_radec: bool,
}

/// Parses a `SAMPLING` value such as `"(336.0, 338.0, …)"`.
fn parse_sampling(text: &str) -> Option<Vec<f64>> {
    let inner = text
        .trim()
        .trim_start_matches(['(', '['])
        .trim_end_matches([')', ']']);
    inner
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<f64>().ok())
        .collect()
}

fn refused(path: &Path, reason: String) -> Error {
    Error::Refused {
        path: path.to_path_buf(),
        format: Format::GaiaXpSampled.name(),
        reason,
    }
}

fn layout(fits: &mut Fits) -> Result<Layout> {
    let hdus = fits.describe_all()?;
    let hdu = hdus
        .iter()
        .position(|h| {
            h.table && h.column_index("flux").is_some() && h.column_index("flux_error").is_some()
        })
        .ok_or_else(|| {
            Error::bad(
                fits.loc(1).field("flux"),
                "no table with flux and flux_error columns",
            )
        })?;
    let d = &hdus[hdu];
    let name = if d.name.is_empty() {
        hdu.to_string()
    } else {
        d.name.clone()
    };
    if d.column_index("source_id").is_none() {
        return Err(Error::bad(
            fits.loc(&name).field("source_id"),
            "column missing",
        ));
    }
    let repeat = |c: &str| d.column_index(c).map_or(0, |i| d.repeats[i]);
    let n = repeat("flux");
    if repeat("flux_error") != n {
        return Err(Error::bad(
            fits.loc(&name).field("flux_error"),
            format!("{} values per row, flux has {n}", repeat("flux_error")),
        ));
    }
    if n == 0 {
        return Err(Error::bad(
            fits.loc(&name).field("flux"),
            "no samples per row",
        ));
    }
    let sampling = fits
        .key_long_text(hdu, "SAMPLING")
        .or_else(|| fits.key_long_text(0, "SAMPLING"));
    let grid = match sampling {
        Some(text) => {
            let nm = parse_sampling(&text).ok_or_else(|| {
                Error::bad(fits.loc(&name).field("SAMPLING"), "not a list of numbers")
            })?;
            if nm.len() != n {
                return Err(Error::bad(
                    fits.loc(&name).field("SAMPLING"),
                    format!(
                        "{} sample wavelengths for {n} flux values per row",
                        nm.len()
                    ),
                ));
            }
            let (lo, hi) = nm
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            if !(lo >= XP_RANGE_NM.0 && hi <= XP_RANGE_NM.1) {
                return Err(refused(
                    fits.path(),
                    format!(
                        "its SAMPLING runs from {lo} to {hi}, outside the XP range {}–{} nm: \
                         these are internally-calibrated pseudo-wavelength samples with no \
                         wavelength grid; calibrate them first (e.g. GaiaXPy calibrate)",
                        XP_RANGE_NM.0, XP_RANGE_NM.1
                    ),
                ));
            }
            nm.iter().map(|x| x * 10.0).collect()
        }
        None if n == DR3_SAMPLES => dr3_grid(),
        None => {
            return Err(refused(
                fits.path(),
                format!(
                    "table {name} holds {n} flux samples per row with no SAMPLING keyword and \
                     not the {DR3_SAMPLES}-sample DR3 grid: these are internally-calibrated \
                     (pseudo-wavelength) samples without a wavelength grid; calibrate them \
                     first (e.g. GaiaXPy calibrate)"
                ),
            ))
        }
    };
    Ok(Layout {
        hdu,
        rows: d.rows,
        has_radec: d.column_index("ra").is_some() && d.column_index("dec").is_some(),
        name,
        grid,
    })
}

impl Reader for GaiaXpReader {
    fn format(&self) -> Format {
        Format::GaiaXpSampled
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        Ok(layout(&mut fits)?.rows)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file().to_path_buf();
        let mut fits = Fits::open(&path)?;
        let lay = layout(&mut fits)?;
        Ok(Box::new(XpStream {
            path,
            fits,
            lay,
            row: 0,
        }))
    }
}

/// Streams the rows of an XP table.
struct XpStream {
    path: PathBuf,
    fits: Fits,
    lay: Layout,
    row: usize,
}

impl XpStream {
    fn read_row(&mut self, row: usize) -> Result<Spectrum> {
        let (h, name) = (self.lay.hdu, self.lay.name.as_str());
        let at = |e| at_hdu(e, name);
        let r = row..row + 1;
        let fits = &mut self.fits;
        let id = fits.read_cell_id(h, "source_id", row).map_err(at)?;
        let flux = fits.read_col_range_f64(h, "flux", r.clone()).map_err(at)?;
        let err = fits
            .read_col_range_f64(h, "flux_error", r.clone())
            .map_err(at)?;
        let n = self.lay.grid.len();
        for (col, len) in [("flux", flux.len()), ("flux_error", err.len())] {
            if len != n {
                return Err(Error::bad(
                    fits.loc(name).row(row as u64).field(col),
                    format!("read {len} values, expected {n}"),
                ));
            }
        }
        let mut labels = Labels::default();
        if self.lay.has_radec {
            for col in ["ra", "dec"] {
                let v = fits.read_col_range_f64(h, col, r.clone()).map_err(at)?;
                if let Some(v) = v.first().copied().filter(|v| v.is_finite()) {
                    labels.extra.insert(col.into(), v);
                }
            }
        }
        let s = Spectrum {
            id,
            survey: Survey::GaiaXp,
            source: Source {
                file: self.path.clone(),
                hdu: name.to_string(),
                row: Some(row as u64),
            },
            wavelength: self.lay.grid.clone(),
            flux: flux.iter().map(|&f| f as f32).collect(),
            ivar: err.iter().map(|&e| ivar_from_sigma(e)).collect(),
            mask: vec![0; n],
            segments: vec![Segment {
                name: "all".into(),
                start: 0,
                end: n,
            }],
            medium: Medium::Unknown,
            lsf_sigma: None,
            labels,
        };
        finish(s, &[("wavelength", "SAMPLING"), ("flux", "flux")])
    }
}

impl Iterator for XpStream {
    type Item = Result<Spectrum>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.row >= self.lay.rows {
            return None;
        }
        let row = self.row;
        self.row += 1;
        Some(self.read_row(row))
    }
}
