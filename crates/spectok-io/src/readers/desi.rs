//! DESI `coadd-*` and `spectra-*` files, with labels joined from a
//! `redrock-*` companion.
//!
//! Layout: a `FIBERMAP` table (one row per fibre: `TARGETID`, `OBJTYPE`,
//! `TARGET_RA`, `TARGET_DEC`, …), then per arm `X` in B, R, Z the image HDUs
//! `X_WAVELENGTH` (1-D, Å, vacuum), `X_FLUX`, `X_IVAR`, `X_MASK`
//! (nspec × npix) and `X_RESOLUTION`. In `spectra-*` files the `X_MASK`
//! HDUs are tile-compressed images; cfitsio decompresses them transparently.
//!
//! Choices:
//! - One spectrum per fibre, every fibre included: sky and stuck fibres
//!   (`TARGETID < 0`) too, with their `OBJTYPE` in `labels.text["objtype"]`,
//!   so a caller decides what to drop.
//! - The arms become the segments `"b"`, `"r"`, `"z"`, in that order, each on
//!   its own grid. They overlap in wavelength; they are never merged or
//!   resampled.
//! - `X_WAVELENGTH`, `X_FLUX` and `X_IVAR` are required for all three arms:
//!   cfitsio sees a file cut at an HDU boundary as a shorter file, so an
//!   absent arm means damage, not an arm to skip. `X_MASK` is optional
//!   (all-zero when absent).
//! - `X_RESOLUTION` is not read: `lsf_sigma` is `None`.
//! - The stream reads one row of each arm per spectrum, so a file is never
//!   loaded whole; `FIBERMAP` columns and the redrock table (one row per
//!   fibre) are read at open.
//! - Labels come from the `REDSHIFTS` table of the unit's companion files,
//!   joined by `TARGETID`: `Z`, `ZERR`, `ZWARN`, `SPECTYPE` (normalised with
//!   [`Labels::normalise_class`]), `SUBTYPE`, `DELTACHI2`. No companion means
//!   no redshift labels; a companion that cannot be read is a file-level
//!   error naming the companion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::fits::{Fits, HduDesc};
use crate::{
    Error, Format, InputUnit, Labels, Location, Medium, Reader, Result, Segment, Source, Spectrum,
    SpectrumIter, Survey,
};

/// Reader of DESI `coadd-*`/`spectra-*` files ([`Format::DesiCoadd`]).
pub struct DesiCoaddReader;

/// The arms in the order their segments are emitted.
const ARMS: [&str; 3] = ["B", "R", "Z"];

/// One arm's HDUs and grid.
struct Arm {
    /// Upper-case arm letter (`B`, `R`, `Z`).
    name: &'static str,
    wavelength: Vec<f64>,
    flux: usize,
    ivar: usize,
    mask: Option<usize>,
}

/// Where each arm's HDUs are, checked from headers only.
struct Layout {
    nspec: usize,
    fibermap: usize,
    /// Arm name and the HDU indices of `X_WAVELENGTH`, `X_FLUX`, `X_IVAR`,
    /// `X_MASK`.
    arms: Vec<(&'static str, usize, usize, usize, Option<usize>)>,
}

/// Rows `[nspec, npix]` of an image HDU (a 1-D image is one row).
fn rows_cols(d: &HduDesc) -> Option<(usize, usize)> {
    match d.shape.as_slice() {
        [n] => Some((1, *n)),
        [r, c] => Some((*r, *c)),
        _ => None,
    }
}

fn layout(fits: &mut Fits) -> Result<Layout> {
    let hdus = fits.describe_all()?;
    let find = |name: &str| hdus.iter().position(|h| h.name.eq_ignore_ascii_case(name));
    let fibermap =
        find("FIBERMAP").ok_or_else(|| Error::bad(fits.loc("FIBERMAP"), "HDU missing"))?;
    let fm = &hdus[fibermap];
    if !fm.table {
        return Err(Error::bad(
            fits.loc("FIBERMAP"),
            "expected a table, found an image",
        ));
    }
    if fm.column_index("TARGETID").is_none() {
        return Err(Error::bad(
            fits.loc("FIBERMAP").field("TARGETID"),
            "column missing",
        ));
    }
    let nspec = fm.rows;
    let mut arms = Vec::new();
    for arm in ARMS {
        let flux_name = format!("{arm}_FLUX");
        let flux =
            find(&flux_name).ok_or_else(|| Error::bad(fits.loc(&flux_name), "HDU missing"))?;
        let wave_name = format!("{arm}_WAVELENGTH");
        let wave =
            find(&wave_name).ok_or_else(|| Error::bad(fits.loc(&wave_name), "HDU missing"))?;
        let npix = match hdus[wave].shape.as_slice() {
            [n] if *n > 0 && !hdus[wave].table => *n,
            _ => {
                return Err(Error::bad(
                    fits.loc(&wave_name),
                    format!("expected a 1-D image, found {}", hdus[wave].summary(wave)),
                ))
            }
        };
        let ivar_name = format!("{arm}_IVAR");
        let ivar =
            find(&ivar_name).ok_or_else(|| Error::bad(fits.loc(&ivar_name), "HDU missing"))?;
        let mask = find(&format!("{arm}_MASK"));
        for (name, i) in [
            (flux_name, Some(flux)),
            (ivar_name, Some(ivar)),
            (format!("{arm}_MASK"), mask),
        ] {
            let Some(i) = i else { continue };
            let d = &hdus[i];
            let ok = !d.table && rows_cols(d) == Some((nspec, npix));
            if !ok {
                return Err(Error::bad(
                    fits.loc(&name),
                    format!(
                        "expected an image of {nspec} fibres × {npix} pixels (FIBERMAP rows × {wave_name} length), found {}",
                        d.summary(i)
                    ),
                ));
            }
        }
        arms.push((arm, wave, flux, ivar, mask));
    }
    Ok(Layout {
        nspec,
        fibermap,
        arms,
    })
}

/// What the `FIBERMAP` says about each fibre.
struct Fibermap {
    targetid: Vec<i64>,
    objtype: Option<Vec<String>>,
    ra: Option<Vec<f64>>,
    dec: Option<Vec<f64>>,
    fiber: Option<Vec<i64>>,
    fiberstatus: Option<Vec<i64>>,
}

fn optional<T>(
    fits: &mut Fits,
    hdu: usize,
    col: &str,
    read: impl Fn(&mut Fits, usize, &str) -> Result<Vec<T>>,
) -> Result<Option<Vec<T>>> {
    if fits.has_column(hdu, col) {
        read(fits, hdu, col).map(Some)
    } else {
        Ok(None)
    }
}

fn read_fibermap(fits: &mut Fits, hdu: usize, nspec: usize) -> Result<Fibermap> {
    let targetid = fits.read_col_i64(hdu, "TARGETID")?;
    if targetid.len() != nspec {
        return Err(Error::bad(
            fits.loc("FIBERMAP").field("TARGETID"),
            format!("{} values for {nspec} rows", targetid.len()),
        ));
    }
    let status_col = if fits.has_column(hdu, "COADD_FIBERSTATUS") {
        "COADD_FIBERSTATUS"
    } else {
        "FIBERSTATUS"
    };
    let fm = Fibermap {
        targetid,
        objtype: optional(fits, hdu, "OBJTYPE", Fits::read_col_text)?,
        ra: optional(fits, hdu, "TARGET_RA", Fits::read_col_f64)?,
        dec: optional(fits, hdu, "TARGET_DEC", Fits::read_col_f64)?,
        fiber: optional(fits, hdu, "FIBER", Fits::read_col_i64)?,
        fiberstatus: optional(fits, hdu, status_col, Fits::read_col_i64)?,
    };
    Ok(fm)
}

/// One row of a redrock `REDSHIFTS` table.
#[derive(Clone, Debug)]
struct Redshift {
    z: f64,
    zerr: f64,
    zwarn: i64,
    spectype: String,
    subtype: Option<String>,
    deltachi2: Option<f64>,
}

/// Reads the `REDSHIFTS` table of a redrock file, keyed by `TARGETID`
/// (the first row of a repeated `TARGETID` wins).
fn read_redrock(path: &Path) -> Result<HashMap<i64, Redshift>> {
    let mut fits = Fits::open(path)?;
    let hdu = fits.require_hdu("REDSHIFTS")?;
    let tid = fits.read_col_i64(hdu, "TARGETID")?;
    let z = fits.read_col_f64(hdu, "Z")?;
    let zerr = fits.read_col_f64(hdu, "ZERR")?;
    let zwarn = fits.read_col_i64(hdu, "ZWARN")?;
    let spectype = fits.read_col_text(hdu, "SPECTYPE")?;
    let subtype = optional(&mut fits, hdu, "SUBTYPE", Fits::read_col_text)?;
    let deltachi2 = optional(&mut fits, hdu, "DELTACHI2", Fits::read_col_f64)?;
    let n = tid.len();
    for (name, len) in [
        ("Z", z.len()),
        ("ZERR", zerr.len()),
        ("ZWARN", zwarn.len()),
        ("SPECTYPE", spectype.len()),
    ] {
        if len != n {
            return Err(Error::bad(
                fits.loc("REDSHIFTS").field(name),
                format!("{len} values for {n} TARGETIDs"),
            ));
        }
    }
    let mut out = HashMap::with_capacity(n);
    for i in 0..n {
        out.entry(tid[i]).or_insert_with(|| Redshift {
            z: z[i],
            zerr: zerr[i],
            zwarn: zwarn[i],
            spectype: spectype[i].clone(),
            subtype: subtype
                .as_ref()
                .and_then(|s| s.get(i))
                .filter(|s| !s.is_empty())
                .cloned(),
            deltachi2: deltachi2.as_ref().and_then(|d| d.get(i)).copied(),
        });
    }
    Ok(out)
}

impl Reader for DesiCoaddReader {
    fn format(&self) -> Format {
        Format::DesiCoadd
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        Ok(layout(&mut fits)?.nspec)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file().to_path_buf();
        let mut fits = Fits::open(&path)?;
        let lay = layout(&mut fits)?;
        let fibermap = read_fibermap(&mut fits, lay.fibermap, lay.nspec)?;
        let mut arms = Vec::with_capacity(lay.arms.len());
        for (name, wave, flux, ivar, mask) in lay.arms {
            let (wavelength, _) = fits.read_image_f64(wave, &format!("{name}_WAVELENGTH"))?;
            arms.push(Arm {
                name,
                wavelength,
                flux,
                ivar,
                mask,
            });
        }
        let mut redshifts: HashMap<i64, Redshift> = HashMap::new();
        for companion in &unit.companions {
            for (k, v) in read_redrock(companion)? {
                redshifts.entry(k).or_insert(v);
            }
        }
        let hdu = arms
            .iter()
            .map(|a| format!("{}_FLUX", a.name))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Box::new(DesiStream {
            fits,
            path,
            hdu,
            arms,
            fibermap,
            redshifts,
            nspec: lay.nspec,
            row: 0,
        }))
    }
}

/// The stream of one DESI file: one fibre per item.
struct DesiStream {
    fits: Fits,
    path: PathBuf,
    /// `Source::hdu` of every spectrum (the flux HDUs of the arms read).
    hdu: String,
    arms: Vec<Arm>,
    fibermap: Fibermap,
    redshifts: HashMap<i64, Redshift>,
    nspec: usize,
    row: usize,
}

impl DesiStream {
    fn spectrum(&mut self, row: usize) -> Result<Spectrum> {
        let npix: usize = self.arms.iter().map(|a| a.wavelength.len()).sum();
        let mut wavelength = Vec::with_capacity(npix);
        let mut flux = Vec::with_capacity(npix);
        let mut ivar = Vec::with_capacity(npix);
        let mut mask = Vec::with_capacity(npix);
        let mut segments = Vec::with_capacity(self.arms.len());
        for arm in &self.arms {
            let n = arm.wavelength.len();
            let start = wavelength.len();
            wavelength.extend_from_slice(&arm.wavelength);
            flux.extend(self.fits.read_image_row_f32(
                arm.flux,
                row,
                &format!("{}_FLUX", arm.name),
            )?);
            ivar.extend(self.fits.read_image_row_f32(
                arm.ivar,
                row,
                &format!("{}_IVAR", arm.name),
            )?);
            match arm.mask {
                Some(m) => mask.extend(self.fits.read_image_row_mask(
                    m,
                    row,
                    &format!("{}_MASK", arm.name),
                )?),
                None => mask.resize(start + n, 0),
            }
            segments.push(Segment {
                name: arm.name.to_ascii_lowercase(),
                start,
                end: start + n,
            });
        }

        let fm = &self.fibermap;
        let targetid = fm.targetid[row];
        let mut labels = Labels::default();
        if let Some(v) = fm.objtype.as_ref().and_then(|v| v.get(row)) {
            labels.text.insert("objtype".into(), v.clone());
        }
        for (key, col) in [("ra", &fm.ra), ("dec", &fm.dec)] {
            if let Some(v) = col
                .as_ref()
                .and_then(|c| c.get(row))
                .filter(|v| v.is_finite())
            {
                labels.extra.insert(key.into(), *v);
            }
        }
        for (key, col) in [("fiber", &fm.fiber), ("fiberstatus", &fm.fiberstatus)] {
            if let Some(v) = col.as_ref().and_then(|c| c.get(row)) {
                labels.extra.insert(key.into(), *v as f64);
            }
        }
        if let Some(r) = self.redshifts.get(&targetid) {
            labels.redshift = Some(r.z).filter(|v| v.is_finite());
            labels.redshift_err = Some(r.zerr).filter(|v| v.is_finite());
            labels.redshift_warning = Some(r.zwarn);
            if !r.spectype.is_empty() {
                labels.class = Some(Labels::normalise_class(&r.spectype));
            }
            labels.subclass = r.subtype.clone();
            if let Some(d) = r.deltachi2.filter(|v| v.is_finite()) {
                labels.extra.insert("deltachi2".into(), d);
            }
        }

        let s = Spectrum {
            id: targetid.to_string(),
            survey: Survey::Desi,
            source: Source {
                file: self.path.clone(),
                hdu: self.hdu.clone(),
                row: Some(row as u64),
            },
            wavelength,
            flux,
            ivar,
            mask,
            segments,
            medium: Medium::Vacuum,
            lsf_sigma: None,
            labels,
        };
        s.validate().map_err(|(field, reason)| {
            Error::bad(
                Location::file(&self.path)
                    .hdu(&self.hdu)
                    .row(row as u64)
                    .field(field),
                reason,
            )
        })?;
        Ok(s)
    }
}

impl Iterator for DesiStream {
    type Item = Result<Spectrum>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.row >= self.nspec {
            return None;
        }
        let row = self.row;
        self.row += 1;
        Some(self.spectrum(row))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.nspec - self.row;
        (left, Some(left))
    }
}
