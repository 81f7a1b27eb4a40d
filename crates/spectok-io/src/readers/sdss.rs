//! SDSS optical spectra: the DR8+ `spec-*` layout (SDSS legacy, BOSS and
//! eBOSS, lite and full files) and the DR≤7 `spSpec` layout.
//!
//! - [`SdssSpecReader`]: HDU `COADD`, a table with one row per pixel:
//!   `flux`, `loglam` (log10 Å, vacuum), `ivar`, `and_mask`, `or_mask`,
//!   `wdisp`, `sky`, `model`. Labels come from the one-row `SPECOBJ` (SDSS)
//!   or `SPALL` (BOSS/eBOSS) table. Full files add per-exposure tables from
//!   HDU 4 on; they are not read (the coadd is the spectrum).
//! - [`SpSpecReader`]: the primary image, 5 rows × N pixels (`ARRAY1`…
//!   `ARRAY5` name them: spectrum, continuum-subtracted spectrum, error σ,
//!   mask, sky), on the grid `10^(COEFF0 + COEFF1·i)`; labels in the
//!   primary header.
//!
//! Choices:
//! - `mask` is the AND mask (`and_mask`, or the spSpec mask row): a bit set
//!   in every exposure. The OR mask flags pixels bad in any single exposure
//!   and would reject too much; it is not read.
//! - `lsf_sigma` (spec only) from `wdisp`, the dispersion in pixels of
//!   1e-4 dex: `σ_Å = wdisp · λ · ln 10 · 1e-4`.
//! - spSpec gives σ: `ivar = 1/σ²` for finite σ > 0, 0 for σ ≤ 0 (σ = 0
//!   marks a bad pixel), NaN for NaN. Its mask row is stored as floats and
//!   becomes `u32` when it is a whole number in range; anything else is an
//!   error naming the pixel.
//! - Ids: `SPECOBJID` when present and non-zero, else `plate-mjd-fiber`
//!   (`0266-51602-0013`, as in the file names). spSpec's `NAME` keyword is
//!   the plate's name (`plate-mjd-rerun`), shared by all its fibres, so its
//!   id is `plate-mjd-fiber` from `PLATEID`, `MJD`, `FIBERID`, and `NAME`
//!   only when those are absent.
//! - spSpec `SPEC_CLN` (1 star, 2 galaxy, 3 QSO, 4 high-z QSO, 5 sky, 6 late
//!   star, 7 emission-line galaxy) gives the class `STAR`/`GALAXY`/`QSO`
//!   (none for 0 unknown and 5 sky); the number is kept in
//!   `extra["spec_cln"]` and its name in `text["spec_cln"]`.
//!
//! The helpers at the end of this file (orienting segments, validating with
//! a file location, σ and float-mask conversions) are used by the other
//! optical readers too.

use crate::fits::{mask_bits, Fits};
use crate::readers::common::{at_hdu, exp10, finish, float_mask, ivar_from_sigma, loglin_grid};
use crate::{
    Error, Format, InputUnit, Labels, Location, Medium, Reader, Result, Segment, Source, Spectrum,
    SpectrumIter, Survey,
};

/// Reader of SDSS/BOSS/eBOSS `spec-*` files ([`Format::SdssSpec`]).
pub struct SdssSpecReader;

/// Reader of SDSS DR≤7 `spSpec` files ([`Format::SdssSpSpec`]).
pub struct SpSpecReader;

/// Where the parts of a `spec-*` file are, checked from headers.
struct SpecLayout {
    coadd: usize,
    npix: usize,
    /// Index and name of the `SPECOBJ`/`SPALL` table.
    labels: (usize, String),
}

fn spec_layout(fits: &mut Fits) -> Result<SpecLayout> {
    let coadd = fits.require_hdu("COADD")?;
    let d = fits.describe(coadd)?;
    if !d.table {
        return Err(Error::bad(
            fits.loc("COADD"),
            format!("expected a table, found {}", d.summary(coadd)),
        ));
    }
    for col in ["flux", "loglam", "ivar"] {
        match d.column_index(col) {
            None => return Err(Error::bad(fits.loc("COADD").field(col), "column missing")),
            Some(i) if d.repeats[i] != 1 => {
                return Err(Error::bad(
                    fits.loc("COADD").field(col),
                    format!(
                        "{} values per row; expected one row per pixel",
                        d.repeats[i]
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if d.rows == 0 {
        return Err(Error::bad(fits.loc("COADD"), "table has no rows"));
    }
    let mut labels = None;
    for name in ["SPECOBJ", "SPALL"] {
        if let Some(i) = fits.hdu_index(name)? {
            labels = Some((i, name.to_string()));
            break;
        }
    }
    let labels = labels.ok_or_else(|| {
        Error::bad(
            fits.loc("SPECOBJ"),
            "HDU missing (neither SPECOBJ nor SPALL is present)",
        )
    })?;
    let ld = fits.describe(labels.0)?;
    if !ld.table || ld.rows == 0 {
        return Err(Error::bad(
            fits.loc(&labels.1),
            format!("expected a one-row table, found {}", ld.summary(labels.0)),
        ));
    }
    Ok(SpecLayout {
        coadd,
        npix: d.rows,
        labels,
    })
}

/// Value of scalar column `col` in row 0 of table `hdu`, `None` if the
/// column is absent, not scalar or not finite.
fn cell_f64(fits: &mut Fits, hdu: usize, name: &str, col: &str) -> Result<Option<f64>> {
    if fits.column_repeat(hdu, col) != Some(1) {
        return Ok(None);
    }
    let v = fits
        .read_col_range_f64(hdu, col, 0..1)
        .map_err(|e| at_hdu(e, name))?;
    Ok(v.first().copied().filter(|x| x.is_finite()))
}

/// Text of column `col` in row 0 of table `hdu`, `None` if absent or empty.
fn cell_text(fits: &mut Fits, hdu: usize, name: &str, col: &str) -> Result<Option<String>> {
    if !fits.has_column(hdu, col) {
        return Ok(None);
    }
    let v = fits.read_col_text(hdu, col).map_err(|e| at_hdu(e, name))?;
    Ok(v.into_iter().next().filter(|s| !s.is_empty()))
}

/// `plate-mjd-fiber` as SDSS file names write it.
fn plate_mjd_fiber(plate: i64, mjd: i64, fiber: i64) -> String {
    format!("{plate:04}-{mjd:05}-{fiber:04}")
}

/// Numeric label columns of `SPECOBJ`/`SPALL` kept in `extra`.
const SPEC_EXTRA: [(&str, &str); 9] = [
    ("PLUG_RA", "ra"),
    ("PLUG_DEC", "dec"),
    ("VDISP", "vdisp"),
    ("VDISP_ERR", "vdisp_err"),
    ("SN_MEDIAN_ALL", "snr"),
    ("RCHI2", "rchi2"),
    ("PLATE", "plate"),
    ("MJD", "mjd"),
    ("FIBERID", "fiberid"),
];

/// Labels and id from the `SPECOBJ`/`SPALL` table.
fn spec_labels(fits: &mut Fits, hdu: usize, name: &str) -> Result<(String, Labels)> {
    let mut labels = Labels {
        class: cell_text(fits, hdu, name, "CLASS")?.map(|c| Labels::normalise_class(&c)),
        subclass: cell_text(fits, hdu, name, "SUBCLASS")?,
        redshift: cell_f64(fits, hdu, name, "Z")?,
        redshift_err: cell_f64(fits, hdu, name, "Z_ERR")?,
        redshift_warning: cell_f64(fits, hdu, name, "ZWARNING")?.map(|v| v as i64),
        ..Labels::default()
    };
    for (col, key) in SPEC_EXTRA {
        if let Some(v) = cell_f64(fits, hdu, name, col)? {
            labels.extra.insert(key.into(), v);
        }
    }
    for (col, key) in [
        ("OBJTYPE", "objtype"),
        ("SURVEY", "survey"),
        ("RUN2D", "run2d"),
    ] {
        if let Some(v) = cell_text(fits, hdu, name, col)? {
            labels.text.insert(key.into(), v);
        }
    }
    let specobjid = if fits.has_column(hdu, "SPECOBJID") {
        Some(
            fits.read_cell_id(hdu, "SPECOBJID", 0)
                .map_err(|e| at_hdu(e, name))?,
        )
        .filter(|s| !s.is_empty() && s != "0")
    } else {
        None
    };
    let id = match specobjid {
        Some(id) => id,
        None => {
            let get = |fits: &mut Fits, col: &str| -> Result<i64> {
                cell_f64(fits, hdu, name, col)?
                    .map(|v| v as i64)
                    .ok_or_else(|| {
                        Error::bad(
                            fits.loc(name).field(col),
                            "no SPECOBJID and no plate-mjd-fiber to name the spectrum",
                        )
                    })
            };
            let plate = get(fits, "PLATE")?;
            let mjd = get(fits, "MJD")?;
            let fiber = get(fits, "FIBERID")?;
            plate_mjd_fiber(plate, mjd, fiber)
        }
    };
    Ok((id, labels))
}

impl Reader for SdssSpecReader {
    fn format(&self) -> Format {
        Format::SdssSpec
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        spec_layout(&mut fits)?;
        Ok(1)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file();
        let mut fits = Fits::open(path)?;
        let lay = spec_layout(&mut fits)?;
        let c = lay.coadd;
        let at = |e| at_hdu(e, "COADD");
        let flux = fits.read_col_f32(c, "flux").map_err(at)?;
        let loglam = fits.read_col_f64(c, "loglam").map_err(at)?;
        let ivar = fits.read_col_f32(c, "ivar").map_err(at)?;
        let mask = if fits.has_column(c, "and_mask") {
            fits.read_col_i64(c, "and_mask")
                .map_err(at)?
                .into_iter()
                .map(|v| mask_bits(v, 32))
                .collect()
        } else {
            vec![0; lay.npix]
        };
        let wdisp = if fits.has_column(c, "wdisp") {
            Some(fits.read_col_f64(c, "wdisp").map_err(at)?)
        } else {
            None
        };
        for (col, len) in [
            ("flux", flux.len()),
            ("loglam", loglam.len()),
            ("ivar", ivar.len()),
            ("and_mask", mask.len()),
            ("wdisp", wdisp.as_ref().map_or(lay.npix, |w| w.len())),
        ] {
            if len != lay.npix {
                return Err(Error::bad(
                    fits.loc("COADD").field(col),
                    format!("read {len} values for {} rows", lay.npix),
                ));
            }
        }
        let wavelength: Vec<f64> = loglam.iter().map(|&l| exp10(l)).collect();
        let lsf_sigma = wdisp.map(|w| {
            w.iter()
                .zip(&wavelength)
                .map(|(&d, &l)| (d * l * std::f64::consts::LN_10 * 1e-4) as f32)
                .collect()
        });
        let (id, labels) = spec_labels(&mut fits, lay.labels.0, &lay.labels.1)?;
        let s = Spectrum {
            id,
            survey: Survey::Sdss,
            source: Source {
                file: path.to_path_buf(),
                hdu: "COADD".into(),
                row: None,
            },
            wavelength,
            flux,
            ivar,
            mask,
            segments: vec![Segment {
                name: "all".into(),
                start: 0,
                end: lay.npix,
            }],
            medium: Medium::Vacuum,
            lsf_sigma,
            labels,
        };
        let fields = [
            ("wavelength", "loglam"),
            ("mask", "and_mask"),
            ("lsf_sigma", "wdisp"),
        ];
        Ok(Box::new(std::iter::once(finish(s, &fields))))
    }
}

/// Row indices of the spSpec image: flux, σ, mask.
struct SpSpecRows {
    flux: usize,
    error: usize,
    mask: usize,
}

/// What the `ARRAYn` keywords name each row, matched to the rows spectok
/// reads; without any `ARRAYn` keyword the documented order 0, 2, 3.
fn spspec_rows(fits: &mut Fits, nrows: usize) -> Result<SpSpecRows> {
    let names: Vec<Option<String>> = (1..=nrows)
        .map(|n| {
            fits.key_text(0, &format!("ARRAY{n}"))
                .map(|s| s.to_ascii_uppercase())
        })
        .collect();
    if names.iter().all(Option::is_none) {
        if nrows < 4 {
            return Err(Error::bad(
                fits.loc("PRIMARY"),
                format!("image has {nrows} rows; expected 5 (flux, continuum-subtracted, error, mask, sky)"),
            ));
        }
        return Ok(SpSpecRows {
            flux: 0,
            error: 2,
            mask: 3,
        });
    }
    let find = |want: &str| names.iter().position(|n| n.as_deref() == Some(want));
    let need = |fits: &Fits, want: &str| {
        find(want).ok_or_else(|| {
            let found = names
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.as_ref().map(|n| format!("ARRAY{}={n:?}", i + 1)))
                .collect::<Vec<_>>()
                .join(", ");
            Error::bad(
                fits.loc("PRIMARY").field("ARRAYn"),
                format!("no row named {want:?} (found {found})"),
            )
        })
    };
    Ok(SpSpecRows {
        flux: need(fits, "SPECTRUM")?,
        error: need(fits, "ERROR")?,
        mask: need(fits, "MASK")?,
    })
}

/// Shape `(rows, npix)` of the spSpec primary image.
fn spspec_layout(fits: &mut Fits) -> Result<(usize, usize)> {
    let shape = fits.image_shape(0, "PRIMARY")?;
    match shape.as_slice() {
        [r, n] if *r >= 4 => Ok((*r, *n)),
        _ => Err(Error::bad(
            fits.loc("PRIMARY"),
            format!("expected a 5 × N image, found shape {shape:?}"),
        )),
    }
}

/// SDSS DR≤7 `SPEC_CLN` codes: (name, class).
fn spec_cln(code: i64) -> Option<(&'static str, Option<&'static str>)> {
    Some(match code {
        0 => ("UNKNOWN", None),
        1 => ("STAR", Some("STAR")),
        2 => ("GALAXY", Some("GALAXY")),
        3 => ("QSO", Some("QSO")),
        4 => ("HIZ_QSO", Some("QSO")),
        5 => ("SKY", None),
        6 => ("STAR_LATE", Some("STAR")),
        7 => ("GAL_EM", Some("GALAXY")),
        _ => return None,
    })
}

/// Numeric spSpec header keywords kept in `extra`.
const SPSPEC_EXTRA: [(&str, &str); 10] = [
    ("RAOBJ", "ra"),
    ("DECOBJ", "dec"),
    ("Z_CONF", "z_conf"),
    ("Z_STATUS", "z_status"),
    ("SN_G", "snr_g"),
    ("SN_R", "snr_r"),
    ("SN_I", "snr_i"),
    ("PLATEID", "plate"),
    ("MJD", "mjd"),
    ("FIBERID", "fiberid"),
];

fn spspec_labels(fits: &mut Fits) -> Labels {
    let mut labels = Labels {
        redshift: fits.key_f64(0, "Z").filter(|v| v.is_finite()),
        redshift_err: fits.key_f64(0, "Z_ERR").filter(|v| v.is_finite()),
        // The 8-character keyword for ZWARNING.
        redshift_warning: fits.key_i64(0, "Z_WARNIN"),
        ..Labels::default()
    };
    if let Some(code) = fits.key_i64(0, "SPEC_CLN") {
        labels.extra.insert("spec_cln".into(), code as f64);
        match spec_cln(code) {
            Some((name, class)) => {
                labels.text.insert("spec_cln".into(), name.into());
                labels.class = class.map(String::from);
            }
            None => {
                labels.text.insert("spec_cln".into(), code.to_string());
            }
        }
    }
    for (key, name) in SPSPEC_EXTRA {
        if let Some(v) = fits.key_f64(0, key).filter(|v| v.is_finite()) {
            labels.extra.insert(name.into(), v);
        }
    }
    for (key, name) in [("OBJTYPE", "objtype"), ("NAME", "name")] {
        if let Some(v) = fits.key_text(0, key).filter(|v| !v.is_empty()) {
            labels.text.insert(name.into(), v);
        }
    }
    labels
}

fn spspec_id(fits: &mut Fits) -> Result<String> {
    let keys = ["PLATEID", "MJD", "FIBERID"].map(|k| fits.key_i64(0, k));
    if let [Some(plate), Some(mjd), Some(fiber)] = keys {
        return Ok(plate_mjd_fiber(plate, mjd, fiber));
    }
    fits.key_text(0, "NAME")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::bad(
                fits.loc("PRIMARY").field("NAME"),
                "neither PLATEID/MJD/FIBERID nor NAME names the spectrum",
            )
        })
}

impl Reader for SpSpecReader {
    fn format(&self) -> Format {
        Format::SdssSpSpec
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        spspec_layout(&mut fits)?;
        Ok(1)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file();
        let mut fits = Fits::open(path)?;
        let (nrows, npix) = spspec_layout(&mut fits)?;
        let rows = spspec_rows(&mut fits, nrows)?;
        let coeff0 = fits.require_key_f64(0, "COEFF0")?;
        let coeff1 = fits.require_key_f64(0, "COEFF1")?;
        let at = |e| at_hdu(e, "PRIMARY");
        let flux = fits.read_image_row_f32(0, rows.flux, "flux").map_err(at)?;
        let sigma = fits
            .read_image_row_f32(0, rows.error, "error")
            .map_err(at)?;
        let mask_f = fits.read_image_row_f32(0, rows.mask, "mask").map_err(at)?;
        let loc = Location::file(path).hdu("PRIMARY").row(rows.mask as u64);
        let mask = float_mask(&mask_f, loc.field("mask"))?;
        let wavelength = loglin_grid(coeff0, coeff1, 0.0, npix);
        let medium = match fits.key_bool(0, "VACUUM") {
            Some(false) => Medium::Air,
            _ => Medium::Vacuum,
        };
        let id = spspec_id(&mut fits)?;
        let labels = spspec_labels(&mut fits);
        let s = Spectrum {
            id,
            survey: Survey::Sdss,
            source: Source {
                file: path.to_path_buf(),
                hdu: "PRIMARY".into(),
                row: None,
            },
            wavelength,
            flux,
            ivar: sigma.iter().map(|&s| ivar_from_sigma(s as f64)).collect(),
            mask,
            segments: vec![Segment {
                name: "all".into(),
                start: 0,
                end: npix,
            }],
            medium,
            lsf_sigma: None,
            labels,
        };
        let fields = [("wavelength", "COEFF0/COEFF1")];
        Ok(Box::new(std::iter::once(finish(s, &fields))))
    }
}
