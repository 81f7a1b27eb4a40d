//! LAMOST low- and medium-resolution spectra.
//!
//! - [`LamostLrsReader`] (DR8+ LRS): HDU `COADD`, a one-row table whose
//!   cells are arrays `FLUX`, `IVAR`, `WAVELENGTH` (Å), `ANDMASK`, `ORMASK`
//!   (the masks stored as floats) and `NORMALIZATION` (not read).
//! - [`LamostLrsOldReader`] (older LRS): the primary image, 5 rows × N:
//!   flux, ivar, wavelength, andmask, ormask (`EXTEN0` names them).
//! - [`LamostMrsReader`] (MRS): tables `COADD_B` and `COADD_R`, one row per
//!   pixel with `FLUX`, `IVAR`, `LOGLAM` (log10 Å), `ANDMASK`, `ORMASK`;
//!   they become one spectrum with segments `"b"` and `"r"`. The
//!   per-exposure tables that follow are not read. An arm whose table has
//!   no rows (`COMBIN_B`/`COMBIN_R` false) is left out.
//!
//! Labels and the id (`OBSID`) come from the primary header: LRS files carry
//! `CLASS`, `SUBCLASS`, `Z`, `Z_ERR` (−9999 means unknown), `SNRU`…`SNRZ`
//! (`extra["snr_u"]`…), `RA`, `DEC`. MRS files carry no classification:
//! their `OBJTYPE` is the input catalogue's type, kept in
//! `text["objtype"]` and not taken as the class; each arm's `SNR` goes to
//! `extra["snr_b"]`/`extra["snr_r"]`.
//!
//! `mask` is the AND mask. The medium comes from the `VACUUM` keyword
//! (`T` vacuum, `F` air; absent: unknown).

use crate::fits::{mask_bits, Fits};
use crate::readers::common::{at_hdu, exp10, finish, float_mask, known};
use crate::{
    Error, Format, InputUnit, Labels, Location, Medium, Reader, Result, Segment, Source, Spectrum,
    SpectrumIter, Survey,
};

/// Reader of LAMOST LRS DR8+ files ([`Format::LamostLrs`]).
pub struct LamostLrsReader;

/// Reader of LAMOST LRS files of the older primary-image layout
/// ([`Format::LamostLrsOld`]).
pub struct LamostLrsOldReader;

/// Reader of LAMOST MRS files ([`Format::LamostMrs`]).
pub struct LamostMrsReader;

/// The medium the primary header's `VACUUM` keyword states.
fn medium(fits: &mut Fits) -> Medium {
    match fits.key_bool(0, "VACUUM") {
        Some(true) => Medium::Vacuum,
        Some(false) => Medium::Air,
        None => Medium::Unknown,
    }
}

/// The spectrum id: the primary header's `OBSID`.
fn obsid(fits: &mut Fits) -> Result<String> {
    if let Some(v) = fits.key_i64(0, "OBSID") {
        return Ok(v.to_string());
    }
    fits.key_text(0, "OBSID")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Error::bad(
                fits.loc("PRIMARY").field("OBSID"),
                "keyword missing or empty",
            )
        })
}

/// Header keywords kept in `extra`.
const EXTRA_KEYS: [(&str, &str); 7] = [
    ("RA", "ra"),
    ("DEC", "dec"),
    ("SNRU", "snr_u"),
    ("SNRG", "snr_g"),
    ("SNRR", "snr_r"),
    ("SNRI", "snr_i"),
    ("SNRZ", "snr_z"),
];

/// Labels from the primary header.
fn header_labels(fits: &mut Fits) -> Labels {
    let class = fits
        .key_text(0, "CLASS")
        .map(|c| Labels::normalise_class(&c))
        .filter(|c| !c.is_empty() && c != "UNKNOWN");
    let mut labels = Labels {
        class,
        subclass: fits
            .key_text(0, "SUBCLASS")
            .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("Non")),
        redshift: fits.key_f64(0, "Z").and_then(known),
        redshift_err: fits.key_f64(0, "Z_ERR").and_then(known),
        ..Labels::default()
    };
    for (key, name) in EXTRA_KEYS {
        if let Some(v) = fits.key_f64(0, key).and_then(known) {
            labels.extra.insert(name.into(), v);
        }
    }
    for (key, name) in [
        ("OBJTYPE", "objtype"),
        ("DESIG", "desig"),
        ("ZFLAG", "zflag"),
        ("DATA_V", "data_release"),
    ] {
        if let Some(v) = fits.key_text(0, key).filter(|v| !v.is_empty()) {
            labels.text.insert(name.into(), v);
        }
    }
    labels
}

/// Checks the `COADD` table of an LRS DR8+ file; returns its index and the
/// number of pixels.
fn lrs_layout(fits: &mut Fits) -> Result<(usize, usize)> {
    let c = fits.require_hdu("COADD")?;
    let d = fits.describe(c)?;
    if !d.table || d.rows != 1 {
        return Err(Error::bad(
            fits.loc("COADD"),
            format!("expected a one-row table, found {}", d.summary(c)),
        ));
    }
    let mut npix = None;
    for col in ["FLUX", "IVAR", "WAVELENGTH"] {
        let i = d
            .column_index(col)
            .ok_or_else(|| Error::bad(fits.loc("COADD").field(col), "column missing"))?;
        let n = d.repeats[i];
        match npix {
            None => npix = Some(n),
            Some(m) if m != n => {
                return Err(Error::bad(
                    fits.loc("COADD").field(col),
                    format!("{n} values, FLUX has {m}"),
                ))
            }
            Some(_) => {}
        }
    }
    match npix {
        Some(n) if n > 0 => Ok((c, n)),
        _ => Err(Error::bad(fits.loc("COADD").field("FLUX"), "no pixels")),
    }
}

impl Reader for LamostLrsReader {
    fn format(&self) -> Format {
        Format::LamostLrs
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        lrs_layout(&mut fits)?;
        Ok(1)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file();
        let mut fits = Fits::open(path)?;
        let (c, npix) = lrs_layout(&mut fits)?;
        let at = |e| at_hdu(e, "COADD");
        let flux = fits.read_col_f32(c, "FLUX").map_err(at)?;
        let ivar = fits.read_col_f32(c, "IVAR").map_err(at)?;
        let wavelength = fits.read_col_f64(c, "WAVELENGTH").map_err(at)?;
        let mask = if fits.has_column(c, "ANDMASK") {
            let m = fits.read_col_f32(c, "ANDMASK").map_err(at)?;
            float_mask(&m, Location::file(path).hdu("COADD").field("ANDMASK"))?
        } else {
            vec![0; npix]
        };
        for (col, len) in [
            ("FLUX", flux.len()),
            ("IVAR", ivar.len()),
            ("WAVELENGTH", wavelength.len()),
            ("ANDMASK", mask.len()),
        ] {
            if len != npix {
                return Err(Error::bad(
                    fits.loc("COADD").field(col),
                    format!("read {len} values, expected {npix}"),
                ));
            }
        }
        let s = Spectrum {
            id: obsid(&mut fits)?,
            survey: Survey::LamostLrs,
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
                end: npix,
            }],
            medium: medium(&mut fits),
            lsf_sigma: None,
            labels: header_labels(&mut fits),
        };
        let fields = [
            ("wavelength", "WAVELENGTH"),
            ("flux", "FLUX"),
            ("ivar", "IVAR"),
            ("mask", "ANDMASK"),
        ];
        Ok(Box::new(std::iter::once(finish(s, &fields))))
    }
}

/// Rows of the old LRS primary image: flux, ivar, wavelength, and-mask.
struct OldRows {
    flux: usize,
    ivar: usize,
    wavelength: usize,
    andmask: usize,
}

/// The old layout's image shape and row order (from `EXTEN0` when present:
/// `"Flux, Inverse, Wavelength, Andmask, Ormask"`).
fn old_layout(fits: &mut Fits) -> Result<(OldRows, usize, String)> {
    let name = fits.describe(0)?.name;
    let shape = fits
        .image_shape(0, "PRIMARY")
        .map_err(|e| at_hdu(e, &name))?;
    let (nrows, npix) = match shape.as_slice() {
        [r, n] if *r >= 4 => (*r, *n),
        _ => {
            return Err(Error::bad(
                fits.loc(&name),
                format!("expected a 5 × N image, found shape {shape:?}"),
            ))
        }
    };
    let rows = match fits.key_text(0, "EXTEN0") {
        Some(list) => {
            let names: Vec<String> = list
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect();
            let find = |want: &[&str]| -> Result<usize> {
                names
                    .iter()
                    .position(|n| want.contains(&n.as_str()))
                    .filter(|&i| i < nrows)
                    .ok_or_else(|| {
                        Error::bad(
                            fits.loc(&name).field("EXTEN0"),
                            format!("no row named {:?} among {list:?} ({nrows} rows)", want[0]),
                        )
                    })
            };
            OldRows {
                flux: find(&["flux"])?,
                ivar: find(&["inverse", "ivar", "inverse variance"])?,
                wavelength: find(&["wavelength"])?,
                andmask: find(&["andmask"])?,
            }
        }
        None => OldRows {
            flux: 0,
            ivar: 1,
            wavelength: 2,
            andmask: 3,
        },
    };
    Ok((rows, npix, name))
}

impl Reader for LamostLrsOldReader {
    fn format(&self) -> Format {
        Format::LamostLrsOld
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        old_layout(&mut fits)?;
        Ok(1)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file();
        let mut fits = Fits::open(path)?;
        let (rows, npix, name) = old_layout(&mut fits)?;
        let at = |e| at_hdu(e, &name);
        let flux = fits.read_image_row_f32(0, rows.flux, "flux").map_err(at)?;
        let ivar = fits.read_image_row_f32(0, rows.ivar, "ivar").map_err(at)?;
        let wavelength = fits
            .read_image_row_f64(0, rows.wavelength, "wavelength")
            .map_err(at)?;
        let m = fits
            .read_image_row_f32(0, rows.andmask, "andmask")
            .map_err(at)?;
        let mask = float_mask(
            &m,
            Location::file(path)
                .hdu(&name)
                .row(rows.andmask as u64)
                .field("andmask"),
        )?;
        let s = Spectrum {
            id: obsid(&mut fits)?,
            survey: Survey::LamostLrs,
            source: Source {
                file: path.to_path_buf(),
                hdu: name.clone(),
                row: None,
            },
            wavelength,
            flux,
            ivar,
            mask,
            segments: vec![Segment {
                name: "all".into(),
                start: 0,
                end: npix,
            }],
            medium: medium(&mut fits),
            lsf_sigma: None,
            labels: header_labels(&mut fits),
        };
        Ok(Box::new(std::iter::once(finish(s, &[]))))
    }
}

/// The MRS arms: HDU name and segment name.
const MRS_ARMS: [(&str, &str); 2] = [("COADD_B", "b"), ("COADD_R", "r")];

/// Checks the `COADD_B`/`COADD_R` tables; returns (HDU index, HDU name,
/// segment name, pixels) of each arm that has pixels.
fn mrs_layout(fits: &mut Fits) -> Result<Vec<(usize, &'static str, &'static str, usize)>> {
    let mut arms = Vec::new();
    for (hdu, seg) in MRS_ARMS {
        let i = fits.require_hdu(hdu)?;
        let d = fits.describe(i)?;
        if !d.table {
            return Err(Error::bad(
                fits.loc(hdu),
                format!("expected a table, found {}", d.summary(i)),
            ));
        }
        for col in ["FLUX", "IVAR", "LOGLAM"] {
            match d.column_index(col) {
                None => return Err(Error::bad(fits.loc(hdu).field(col), "column missing")),
                Some(c) if d.repeats[c] != 1 => {
                    return Err(Error::bad(
                        fits.loc(hdu).field(col),
                        format!(
                            "{} values per row; expected one row per pixel",
                            d.repeats[c]
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if d.rows > 0 {
            arms.push((i, hdu, seg, d.rows));
        }
    }
    if arms.is_empty() {
        return Err(Error::bad(
            fits.loc("COADD_B"),
            "both COADD_B and COADD_R have no rows",
        ));
    }
    Ok(arms)
}

impl Reader for LamostMrsReader {
    fn format(&self) -> Format {
        Format::LamostMrs
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        mrs_layout(&mut fits)?;
        Ok(1)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file();
        let mut fits = Fits::open(path)?;
        let arms = mrs_layout(&mut fits)?;
        let mut s = Spectrum {
            id: obsid(&mut fits)?,
            survey: Survey::LamostMrs,
            source: Source {
                file: path.to_path_buf(),
                hdu: arms.iter().map(|a| a.1).collect::<Vec<_>>().join("+"),
                row: None,
            },
            wavelength: Vec::new(),
            flux: Vec::new(),
            ivar: Vec::new(),
            mask: Vec::new(),
            segments: Vec::new(),
            medium: medium(&mut fits),
            lsf_sigma: None,
            labels: header_labels(&mut fits),
        };
        for &(i, hdu, seg, npix) in &arms {
            let at = |e| at_hdu(e, hdu);
            let flux = fits.read_col_f32(i, "FLUX").map_err(at)?;
            let ivar = fits.read_col_f32(i, "IVAR").map_err(at)?;
            let loglam = fits.read_col_f64(i, "LOGLAM").map_err(at)?;
            let mask: Vec<u32> = if fits.has_column(i, "ANDMASK") {
                fits.read_col_i64(i, "ANDMASK")
                    .map_err(at)?
                    .into_iter()
                    .map(|v| mask_bits(v, 16))
                    .collect()
            } else {
                vec![0; npix]
            };
            for (col, len) in [
                ("FLUX", flux.len()),
                ("IVAR", ivar.len()),
                ("LOGLAM", loglam.len()),
                ("ANDMASK", mask.len()),
            ] {
                if len != npix {
                    return Err(Error::bad(
                        fits.loc(hdu).field(col),
                        format!("read {len} values for {npix} rows"),
                    ));
                }
            }
            // Orient and check this arm on its own so an error names its HDU.
            let mut arm = Spectrum {
                source: Source {
                    hdu: hdu.into(),
                    ..s.source.clone()
                },
                wavelength: loglam.iter().map(|&l| exp10(l)).collect(),
                flux,
                ivar,
                mask,
                segments: vec![Segment {
                    name: seg.into(),
                    start: 0,
                    end: npix,
                }],
                labels: Labels::default(),
                ..s.clone()
            };
            arm = match finish(arm, &[("wavelength", "LOGLAM")]) {
                Ok(a) => a,
                Err(e) => return Ok(Box::new(std::iter::once(Err(e)))),
            };
            let start = s.wavelength.len();
            s.wavelength.append(&mut arm.wavelength);
            s.flux.append(&mut arm.flux);
            s.ivar.append(&mut arm.ivar);
            s.mask.append(&mut arm.mask);
            s.segments.push(Segment {
                name: seg.into(),
                start,
                end: start + npix,
            });
            if let Some(v) = fits.key_f64(i, "SNR").and_then(known) {
                s.labels.extra.insert(format!("snr_{seg}"), v);
            }
        }
        Ok(Box::new(std::iter::once(finish(s, &[]))))
    }
}
