//! APOGEE `apStar`, `aspcapStar` and `apVisit` files (DR13 layouts).
//!
//! All three give σ, not inverse variance: `ivar = 1/σ²` where σ is finite,
//! positive and below APOGEE's bad-pixel error `1e10` ([`BAD_ERROR`]), and
//! `ivar = 0` otherwise (chip gaps and rejected pixels carry flux 0 with
//! σ = 1e10 in `apStar`, σ = 0 in `aspcapStar`). Flux is passed on as the
//! file holds it.
//!
//! - [`ApStarReader`]: image HDUs 1 flux, 2 σ, 3 bitmask, each
//!   `(nvisits + 2) × 8575`, or `8575` for a single visit. One spectrum per
//!   file: row 0, the combination with individual pixel weighting (its mask
//!   row is the OR of the visit masks). Row 1 (global weighting) is the same
//!   data weighted per visit, so it is not a second spectrum, and the
//!   individual visits are better read from their `apVisit` files.
//! - [`AspcapStarReader`]: HDU 1 normalised flux, HDU 2 σ, HDU 3 best-fit
//!   model (not read), HDU 4 a one-row table with `APOGEE_ID`, `FPARAM`,
//!   `PARAM`. No mask HDU: the mask is all zero. ASPCAP marks pixels it
//!   excluded with flux 0 and σ 0 or 10; they are kept as they are.
//! - [`ApVisitReader`]: HDU 1 flux, 2 σ, 3 mask, 4 wavelength, each 3 chips ×
//!   4096. One spectrum with a segment per chip.
//!
//! `apStar`/`aspcapStar` wavelengths are `10^(CRVAL1 + CDELT1·(i + 1 −
//! CRPIX1))` from the HDU 1 header, one log-linear vacuum grid across the
//! three chips. Their spectra are one segment `"all"`: the chip gaps are not
//! marked as such in the pixel data (they look like any rejected run of
//! pixels: flux 0, σ = 1e10, mask bit 0), their pixels are invalid, and the
//! data crate starts a new patch at a run of invalid pixels anyway.
//!
//! Labels: the `RVTEFF`/`RVLOGG`/`RVFEH` values of `apStar` headers are the
//! RV cross-correlation template's grid point, not stellar parameters, so
//! they go into `extra` (`rv_teff`, `rv_logg`, `rv_feh`), never into `teff`,
//! `logg`, `fe_h`. ASPCAP values of −9999 (anything ≤ −9000) mean unknown
//! and become `None`.

use crate::fits::{mask_bits, Fits};
use crate::readers::common::{finish, known, loglin_grid};
use crate::{
    Error, Format, InputUnit, Labels, Medium, Reader, Result, Segment, Source, Spectrum,
    SpectrumIter, Survey,
};

/// APOGEE's error value for a bad pixel; σ at or above it means no
/// information.
pub const BAD_ERROR: f32 = 1.0e10;

/// `ivar` from APOGEE's σ: `1/σ²` for finite `0 < σ < BAD_ERROR`, else 0.
pub fn ivar_from_sigma(sigma: f32) -> f32 {
    if sigma.is_finite() && sigma > 0.0 && sigma < BAD_ERROR {
        (1.0 / (sigma as f64 * sigma as f64)) as f32
    } else {
        0.0
    }
}

/// Number of pixels per row of image `hdu` (the last axis), requiring at
/// least `min_rows` rows.
fn npix_of(fits: &mut Fits, hdu: usize, field: &str, min_rows: usize) -> Result<(usize, usize)> {
    let shape = fits.image_shape(hdu, field)?;
    match shape.as_slice() {
        [n] if min_rows <= 1 => Ok((1, *n)),
        [r, n] if *r >= min_rows => Ok((*r, *n)),
        _ => Err(Error::bad(
            fits.loc(hdu).field(field),
            format!(
                "expected a 1-D or 2-D image with at least {min_rows} row(s), found shape {shape:?}"
            ),
        )),
    }
}

/// Requires HDU `hdu` to exist.
fn require_index(fits: &mut Fits, hdu: usize, field: &str) -> Result<()> {
    let n = fits.num_hdus()?;
    if hdu >= n {
        return Err(Error::bad(
            fits.loc(hdu).field(field),
            format!("HDU missing (file has {n} HDUs)"),
        ));
    }
    Ok(())
}

/// The log-linear grid of HDU `hdu`: `10^(CRVAL1 + CDELT1·(i + 1 − CRPIX1))`.
fn loglin_wavelength(fits: &mut Fits, hdu: usize, n: usize) -> Result<Vec<f64>> {
    if let Some(t) = fits.key_text(hdu, "CTYPE1") {
        if !t.to_ascii_uppercase().contains("LOG") {
            return Err(Error::bad(
                fits.loc(hdu).field("CTYPE1"),
                format!("expected a log-linear grid, found CTYPE1 = {t:?}"),
            ));
        }
    }
    let crval = fits.require_key_f64(hdu, "CRVAL1")?;
    let cdelt = match fits.key_f64(hdu, "CDELT1") {
        Some(v) => v,
        None => fits.require_key_f64(hdu, "CD1_1")?,
    };
    let crpix = fits.key_f64(hdu, "CRPIX1").unwrap_or(1.0);
    if !cdelt.is_finite() || cdelt <= 0.0 || !crpix.is_finite() {
        return Err(Error::bad(
            fits.loc(hdu).field("CDELT1"),
            format!("CDELT1 = {cdelt}, CRPIX1 = {crpix}: not an increasing grid"),
        ));
    }
    Ok(loglin_grid(crval, cdelt, 1.0 - crpix, n))
}

/// Adds header keyword `key` of HDU `hdu` to `labels.extra[name]` if it
/// is a finite number.
fn extra_key(fits: &mut Fits, hdu: usize, key: &str, name: &str, labels: &mut Labels) {
    if let Some(v) = fits.key_f64(hdu, key).filter(|v| v.is_finite()) {
        labels.extra.insert(name.into(), v);
    }
}

fn text_key(fits: &mut Fits, hdu: usize, key: &str, name: &str, labels: &mut Labels) {
    if let Some(v) = fits.key_text(hdu, key).filter(|v| !v.is_empty()) {
        labels.text.insert(name.into(), v);
    }
}

/// The object id from the primary header's `OBJID`.
fn objid(fits: &mut Fits) -> Result<String> {
    fits.key_text(0, "OBJID")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::bad(fits.loc(0).field("OBJID"), "keyword missing or empty"))
}

/// Reader of APOGEE `apStar` files ([`Format::ApogeeApStar`]): the
/// pixel-weighted combined spectrum (row 0).
pub struct ApStarReader;

/// HDUs 1–3 of an apStar: checks shapes, returns pixels per row.
fn apstar_layout(fits: &mut Fits) -> Result<usize> {
    for (h, f) in [(1, "flux"), (2, "error"), (3, "mask")] {
        require_index(fits, h, f)?;
    }
    let (_, n) = npix_of(fits, 1, "flux", 1)?;
    for (h, f) in [(2, "error"), (3, "mask")] {
        let (_, m) = npix_of(fits, h, f, 1)?;
        if m != n {
            return Err(Error::bad(
                fits.loc(h).field(f),
                format!("{m} pixels per row, HDU 1 has {n}"),
            ));
        }
    }
    Ok(n)
}

impl Reader for ApStarReader {
    fn format(&self) -> Format {
        Format::ApogeeApStar
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        apstar_layout(&mut fits)?;
        Ok(1)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file();
        let mut fits = Fits::open(path)?;
        let n = apstar_layout(&mut fits)?;
        let id = objid(&mut fits)?;
        let wavelength = loglin_wavelength(&mut fits, 1, n)?;
        let flux = fits.read_image_row_f32(1, 0, "flux")?;
        let sigma = fits.read_image_row_f32(2, 0, "error")?;
        let mask = fits.read_image_row_mask(3, 0, "mask")?;

        let mut labels = Labels {
            class: Some("STAR".into()),
            ..Labels::default()
        };
        labels.text.insert("apogee_id".into(), id.clone());
        for (key, name) in [
            ("SNR", "snr"),
            ("VHELIO", "vhelio"),
            ("VSCATTER", "vscatter"),
            ("VERR", "verr"),
            ("NVISITS", "nvisits"),
            ("RA", "ra"),
            ("DEC", "dec"),
            ("J", "j"),
            ("H", "h"),
            ("K", "k"),
            ("STARFLAG", "starflag"),
        ] {
            extra_key(&mut fits, 0, key, name, &mut labels);
        }
        // RV template grid point: DR13 spells the keys RVTEFF/RVLOGG/RVFEH.
        for (keys, name) in [
            (["RV_TEFF", "RVTEFF"], "rv_teff"),
            (["RV_LOGG", "RVLOGG"], "rv_logg"),
            (["RV_FEH", "RVFEH"], "rv_feh"),
        ] {
            if let Some(v) = keys
                .iter()
                .find_map(|k| fits.key_f64(0, k))
                .filter(|v| v.is_finite())
            {
                labels.extra.insert(name.into(), v);
            }
        }
        text_key(&mut fits, 0, "TELESCOP", "telescope", &mut labels);
        text_key(&mut fits, 0, "FIELD", "field", &mut labels);

        let s = Spectrum {
            id,
            survey: Survey::Apogee,
            source: Source {
                file: path.to_path_buf(),
                hdu: "1".into(),
                row: Some(0),
            },
            wavelength,
            flux,
            ivar: sigma.iter().map(|&s| ivar_from_sigma(s)).collect(),
            mask,
            segments: vec![Segment {
                name: "all".into(),
                start: 0,
                end: n,
            }],
            medium: Medium::Vacuum,
            lsf_sigma: None,
            labels,
        };
        Ok(Box::new(std::iter::once(finish(s, &[]))))
    }
}

/// Reader of APOGEE `aspcapStar` files ([`Format::ApogeeAspcapStar`]):
/// the continuum-normalised spectrum with the ASPCAP parameters as labels.
pub struct AspcapStarReader;

/// `FPARAM`/`PARAM` entries after the four typed labels, by index.
const ASPCAP_EXTRA: [(usize, &str); 3] = [(2, "vmicro"), (4, "c_m"), (5, "n_m")];

/// Names of the first seven `PARAM` (calibrated) entries, stored as
/// `param_<name>` in `extra`.
const PARAM_NAMES: [&str; 7] = ["teff", "logg", "vmicro", "m_h", "c_m", "n_m", "alpha_m"];

fn aspcap_layout(fits: &mut Fits) -> Result<usize> {
    for (h, f) in [(1, "flux"), (2, "error"), (4, "FPARAM")] {
        require_index(fits, h, f)?;
    }
    let (_, n) = npix_of(fits, 1, "flux", 1)?;
    let (_, m) = npix_of(fits, 2, "error", 1)?;
    if m != n {
        return Err(Error::bad(
            fits.loc(2).field("error"),
            format!("{m} pixels, HDU 1 has {n}"),
        ));
    }
    let d = fits.describe(4)?;
    if !d.table || d.rows == 0 {
        return Err(Error::bad(
            fits.loc(4),
            format!("expected a table with one row, found {}", d.summary(4)),
        ));
    }
    Ok(n)
}

impl Reader for AspcapStarReader {
    fn format(&self) -> Format {
        Format::ApogeeAspcapStar
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        aspcap_layout(&mut fits)?;
        Ok(1)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file();
        let mut fits = Fits::open(path)?;
        let n = aspcap_layout(&mut fits)?;
        let wavelength = loglin_wavelength(&mut fits, 1, n)?;
        let flux = fits.read_image_row_f32(1, 0, "flux")?;
        let sigma = fits.read_image_row_f32(2, 0, "error")?;

        let id = fits
            .read_col_text(4, "APOGEE_ID")?
            .into_iter()
            .next()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::bad(fits.loc(4).field("APOGEE_ID"), "empty"))?;
        let fparam = first_row(&mut fits, 4, "FPARAM")?;
        if fparam.len() < 7 {
            return Err(Error::bad(
                fits.loc(4).field("FPARAM"),
                format!("{} values, expected at least 7", fparam.len()),
            ));
        }
        let mut labels = Labels {
            class: Some("STAR".into()),
            teff: known(fparam[0]),
            logg: known(fparam[1]),
            fe_h: known(fparam[3]),
            alpha_m: known(fparam[6]),
            ..Labels::default()
        };
        for (i, name) in ASPCAP_EXTRA {
            if let Some(v) = known(fparam[i]) {
                labels.extra.insert(name.into(), v);
            }
        }
        if fits.has_column(4, "PARAM") {
            let param = first_row(&mut fits, 4, "PARAM")?;
            for (name, v) in PARAM_NAMES.iter().zip(param) {
                if let Some(v) = known(v) {
                    labels.extra.insert(format!("param_{name}"), v);
                }
            }
        }
        for col in ["SNR", "VHELIO", "VSCATTER", "RA", "DEC", "H", "NVISITS"] {
            if fits.has_column(4, col) {
                if let Some(v) = first_row(&mut fits, 4, col)?
                    .first()
                    .copied()
                    .and_then(known)
                {
                    labels.extra.insert(col.to_ascii_lowercase(), v);
                }
            }
        }
        // Bit flags: kept as their unsigned 32-bit pattern.
        for col in ["ASPCAPFLAG", "STARFLAG"] {
            if fits.has_column(4, col) {
                if let Some(v) = fits.read_col_i64(4, col)?.first() {
                    labels
                        .extra
                        .insert(col.to_ascii_lowercase(), mask_bits(*v, 32) as f64);
                }
            }
        }
        labels.text.insert("apogee_id".into(), id.clone());
        if fits.has_column(4, "CLASS") {
            if let Some(c) = fits
                .read_col_text(4, "CLASS")?
                .into_iter()
                .next()
                .filter(|c| !c.is_empty())
            {
                labels.text.insert("aspcap_class".into(), c);
            }
        }

        let s = Spectrum {
            id,
            survey: Survey::Apogee,
            source: Source {
                file: path.to_path_buf(),
                hdu: "1".into(),
                row: None,
            },
            wavelength,
            flux,
            ivar: sigma.iter().map(|&s| ivar_from_sigma(s)).collect(),
            mask: vec![0; n],
            segments: vec![Segment {
                name: "all".into(),
                start: 0,
                end: n,
            }],
            medium: Medium::Vacuum,
            lsf_sigma: None,
            labels,
        };
        Ok(Box::new(std::iter::once(finish(s, &[]))))
    }
}

/// The values of `column` in the first row of table `hdu`.
fn first_row(fits: &mut Fits, hdu: usize, column: &str) -> Result<Vec<f64>> {
    let d = fits.describe(hdu)?;
    let rows = d.rows.max(1);
    let all = fits.read_col_f64(hdu, column)?;
    let per_row = all.len() / rows;
    if per_row == 0 {
        return Err(Error::bad(fits.loc(hdu).field(column), "column is empty"));
    }
    Ok(all.into_iter().take(per_row).collect())
}

/// Reader of APOGEE `apVisit` files ([`Format::ApogeeApVisit`]): one visit,
/// three chips.
///
/// Chip rows come red to blue (chip a, b, c) with decreasing wavelength
/// inside each; every chip is reversed to increasing wavelength (pixels
/// move, values never change) and the segments `"chip_a"`, `"chip_b"`,
/// `"chip_c"` (named after their HDU row) are ordered by increasing
/// wavelength.
pub struct ApVisitReader;

const APVISIT_HDUS: [(usize, &str); 4] =
    [(1, "flux"), (2, "error"), (3, "mask"), (4, "wavelength")];

/// Checks HDUs 1–4 are images of the same `nchip × npix` shape.
fn apvisit_layout(fits: &mut Fits) -> Result<(usize, usize)> {
    for (h, f) in APVISIT_HDUS {
        require_index(fits, h, f)?;
    }
    let (nchip, npix) = npix_of(fits, 1, "flux", 1)?;
    for (h, f) in &APVISIT_HDUS[1..] {
        let shape = npix_of(fits, *h, f, 1)?;
        if shape != (nchip, npix) {
            return Err(Error::bad(
                fits.loc(h).field(f),
                format!("{} × {} image, HDU 1 is {nchip} × {npix}", shape.0, shape.1),
            ));
        }
    }
    Ok((nchip, npix))
}

impl Reader for ApVisitReader {
    fn format(&self) -> Format {
        Format::ApogeeApVisit
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        apvisit_layout(&mut fits)?;
        Ok(1)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file();
        let mut fits = Fits::open(path)?;
        let (nchip, npix) = apvisit_layout(&mut fits)?;
        let id = objid(&mut fits)?;

        struct Chip {
            name: String,
            wavelength: Vec<f64>,
            flux: Vec<f32>,
            sigma: Vec<f32>,
            mask: Vec<u32>,
        }
        let mut chips = Vec::with_capacity(nchip);
        for row in 0..nchip {
            let mut c = Chip {
                name: chip_name(row),
                wavelength: fits.read_image_row_f64(4, row, "wavelength")?,
                flux: fits.read_image_row_f32(1, row, "flux")?,
                sigma: fits.read_image_row_f32(2, row, "error")?,
                mask: fits.read_image_row_mask(3, row, "mask")?,
            };
            if c.wavelength.first() > c.wavelength.last() {
                c.wavelength.reverse();
                c.flux.reverse();
                c.sigma.reverse();
                c.mask.reverse();
            }
            chips.push(c);
        }
        chips.sort_by(|a, b| {
            let key = |c: &Chip| c.wavelength.first().copied().unwrap_or(f64::NAN);
            key(a).total_cmp(&key(b))
        });

        let total = nchip * npix;
        let mut s = Spectrum {
            id: id.clone(),
            survey: Survey::Apogee,
            source: Source {
                file: path.to_path_buf(),
                hdu: "1".into(),
                row: None,
            },
            wavelength: Vec::with_capacity(total),
            flux: Vec::with_capacity(total),
            ivar: Vec::with_capacity(total),
            mask: Vec::with_capacity(total),
            segments: Vec::with_capacity(nchip),
            medium: Medium::Vacuum,
            lsf_sigma: None,
            labels: Labels {
                class: Some("STAR".into()),
                ..Labels::default()
            },
        };
        for c in chips {
            let start = s.wavelength.len();
            s.wavelength.extend(c.wavelength);
            s.flux.extend(c.flux);
            s.ivar.extend(c.sigma.iter().map(|&x| ivar_from_sigma(x)));
            s.mask.extend(c.mask);
            s.segments.push(Segment {
                name: c.name,
                start,
                end: s.wavelength.len(),
            });
        }
        let labels = &mut s.labels;
        labels.text.insert("apogee_id".into(), id);
        for (key, name) in [
            ("SNR", "snr"),
            ("VHELIO", "vhelio"),
            ("VREL", "vrel"),
            ("RA", "ra"),
            ("DEC", "dec"),
            ("J", "j"),
            ("H", "h"),
            ("K", "k"),
            ("MJD5", "mjd"),
            ("FIBERID", "fiberid"),
            ("STARFLAG", "starflag"),
        ] {
            extra_key(&mut fits, 0, key, name, labels);
        }
        text_key(&mut fits, 0, "PLATE", "plate", labels);
        text_key(&mut fits, 0, "TELESCOP", "telescope", labels);
        Ok(Box::new(std::iter::once(finish(s, &[]))))
    }
}

/// Segment name of image row `row`: APOGEE's chip letter (a = red,
/// b = green, c = blue), or `chip_<row>` past the third row.
fn chip_name(row: usize) -> String {
    match row {
        0 => "chip_a".into(),
        1 => "chip_b".into(),
        2 => "chip_c".into(),
        _ => format!("chip_{row}"),
    }
}
