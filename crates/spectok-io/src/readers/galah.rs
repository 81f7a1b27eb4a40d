//! GALAH DR3-style per-CCD files: the (up to) four CCD files of one star
//! become one spectrum.
//!
//! Layout of each `<sobject_id><ccd>.fits`: HDU 0 the fluxed spectrum
//! (counts), HDU 1 `normalized`, HDU 2 `relative_error` (σ / flux), HDU 3 sky
//! and more; a linear grid `CRVAL1 + CDELT1·(i + 1 − CRPIX1)` in Å, in air
//! (GALAH reduces to air wavelengths; spectok records [`Medium::Air`] and
//! never converts).
//!
//! Choices:
//! - Flux is HDU 0, the fluxed (not continuum-normalised) spectrum, as the
//!   method asks for native flux; its σ is `|relative_error · flux|`. In the
//!   files the relative error carries the sign of the flux (negative where
//!   the flux is), so the absolute value gives σ; the σ found that way at
//!   negative-flux pixels matches their neighbours'. `ivar = 1/σ²` where σ is
//!   finite and positive, else 0.
//! - One segment per CCD file, `"ccd1"` … `"ccd4"`, in CCD order. A star
//!   with fewer files is read from those it has; `labels.text["ccds"]`
//!   lists the CCDs read (e.g. `"1,2,3,4"`).
//! - No mask HDU exists: the mask is all zero.
//! - The id is the `sobject_id`, from the file names.
//! - Labels `teff_r`, `logg_r`, `fe_h_r`, `alpha_fe_r` (the reduction
//!   pipeline's quick-look values) come from the headers (`TEFF_R`, `LOGG_R`,
//!   `FE_H_R`, `A_FE_R`); when the headers lack them, from a
//!   `*_catalog.txt` CSV (with a `sobject_id` column) beside the files.
//!   `alpha_fe_r` ([α/Fe]) goes into `alpha_m`, as GALAH fits [α/Fe] where
//!   APOGEE fits [α/M]. `PAR_OK` is kept as `extra["par_ok"]` (values are
//!   passed on even where it is 0); `labels.text["labels_from"]` says
//!   where they came from (`header`, or the catalogue file and line).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::fits::Fits;
use crate::input::galah_ccd_key;
use crate::{
    Error, Format, InputUnit, Labels, Location, Medium, Reader, Result, Segment, Source, Spectrum,
    SpectrumIter, Survey,
};

/// Reader of GALAH per-CCD files ([`Format::GalahCcd`]): one spectrum per
/// star from its CCD files.
pub struct GalahReader;

/// The CCD number of `path`: from its name, or else from the wavelength
/// of its first pixel (HERMES bands: ≈4715, 5650, 6480, 7585 Å).
fn ccd_of(path: &Path, fits: &mut Fits) -> Option<u8> {
    if let Some((_, ccd)) = galah_ccd_key(path) {
        return Some(ccd);
    }
    let start = fits.key_f64(0, "CRVAL1")?;
    Some(match start {
        x if x < 5300.0 => 1,
        x if x < 6200.0 => 2,
        x if x < 7200.0 => 3,
        _ => 4,
    })
}

/// The star's `sobject_id`: the file name without its CCD digit.
fn star_id(path: &Path) -> String {
    match galah_ccd_key(path) {
        Some((star, _)) => star,
        None => path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .unwrap_or_default()
            .to_string(),
    }
}

/// Checks one CCD file's HDUs and returns its pixel count.
fn ccd_layout(fits: &mut Fits) -> Result<usize> {
    let n = match fits.image_shape(0, "flux")?.as_slice() {
        [n] => *n,
        s => {
            return Err(Error::bad(
                fits.loc(0).field("flux"),
                format!("expected a 1-D image, found shape {s:?}"),
            ))
        }
    };
    let nhdu = fits.num_hdus()?;
    if nhdu < 3 {
        return Err(Error::bad(
            fits.loc(2).field("relative_error"),
            format!("HDU missing (file has {nhdu} HDUs)"),
        ));
    }
    let d = fits.describe(2)?;
    if !d.name.eq_ignore_ascii_case("relative_error") {
        return Err(Error::bad(
            fits.loc(2),
            format!("expected the relative_error HDU, found {}", d.summary(2)),
        ));
    }
    if d.shape.as_slice() != [n] {
        return Err(Error::bad(
            fits.loc(2).field("relative_error"),
            format!("{} does not match the {n} flux pixels", d.summary(2)),
        ));
    }
    Ok(n)
}

/// The linear grid of HDU 0: `CRVAL1 + CDELT1·(i + 1 − CRPIX1)`.
fn linear_wavelength(fits: &mut Fits, n: usize) -> Result<Vec<f64>> {
    let crval = fits.require_key_f64(0, "CRVAL1")?;
    let cdelt = match fits.key_f64(0, "CDELT1") {
        Some(v) => v,
        None => fits.require_key_f64(0, "CD1_1")?,
    };
    let crpix = fits.key_f64(0, "CRPIX1").unwrap_or(1.0);
    if !cdelt.is_finite() || cdelt <= 0.0 || !crpix.is_finite() {
        return Err(Error::bad(
            fits.loc(0).field("CDELT1"),
            format!("CDELT1 = {cdelt}, CRPIX1 = {crpix}: not an increasing grid"),
        ));
    }
    Ok((0..n)
        .map(|i| crval + cdelt * (i as f64 + 1.0 - crpix))
        .collect())
}

/// `ivar` from GALAH's relative error: σ = |relative_error · flux|.
pub fn ivar_from_relative_error(flux: f64, relative_error: f64) -> f32 {
    let sigma = (relative_error * flux).abs();
    if sigma.is_finite() && sigma > 0.0 {
        (1.0 / (sigma * sigma)) as f32
    } else {
        0.0
    }
}

/// One CCD file, read.
struct Ccd {
    number: u8,
    path: PathBuf,
    wavelength: Vec<f64>,
    flux: Vec<f64>,
    rel: Vec<f64>,
}

fn read_ccd(path: &Path) -> Result<(Ccd, Fits)> {
    let mut fits = Fits::open(path)?;
    let n = ccd_layout(&mut fits)?;
    let number = ccd_of(path, &mut fits)
        .ok_or_else(|| Error::bad(fits.loc(0).field("CRVAL1"), "cannot tell the CCD number"))?;
    let wavelength = linear_wavelength(&mut fits, n)?;
    let (flux, _) = fits.read_image_f64(0, "flux")?;
    let (rel, _) = fits.read_image_f64(2, "relative_error")?;
    Ok((
        Ccd {
            number,
            path: path.to_path_buf(),
            wavelength,
            flux,
            rel,
        },
        fits,
    ))
}

/// Header keywords (HDU 0) giving the typed labels, and further numbers
/// kept in `extra`.
const LABEL_KEYS: [&str; 4] = ["TEFF_R", "LOGG_R", "FE_H_R", "A_FE_R"];
const EXTRA_KEYS: [(&str, &str); 7] = [
    ("VMIC_R", "vmic_r"),
    ("VBROAD_R", "vbroad_r"),
    ("RVCOM", "rv_com"),
    ("E_RVCOM", "e_rv_com"),
    ("PAR_OK", "par_ok"),
    ("RA_OBS", "ra"),
    ("DEC_OBS", "dec"),
];

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

/// Fills the labels from the header of one CCD file; returns whether it
/// had any of the four typed labels.
fn labels_from_header(fits: &mut Fits, labels: &mut Labels) -> bool {
    let [teff, logg, fe_h, alpha] = LABEL_KEYS.map(|k| finite(fits.key_f64(0, k)));
    let any = teff.is_some() || logg.is_some() || fe_h.is_some() || alpha.is_some();
    if any {
        labels.text.insert("labels_from".into(), "header".into());
        labels.teff = teff;
        labels.logg = logg;
        labels.fe_h = fe_h;
        labels.alpha_m = alpha;
        for (key, name) in EXTRA_KEYS {
            if let Some(v) = finite(fits.key_f64(0, key)) {
                labels.extra.insert(name.into(), v);
            }
        }
    }
    any
}

/// Catalogue columns giving the typed labels, and further numbers kept in
/// `extra`.
const CATALOG_LABELS: [&str; 4] = ["teff_r", "logg_r", "fe_h_r", "alpha_fe_r"];
const CATALOG_EXTRA: [(&str, &str); 6] = [
    ("vmic_r", "vmic_r"),
    ("vbroad_r", "vbroad_r"),
    ("rv_com", "rv_com"),
    ("e_rv_com", "e_rv_com"),
    ("ra", "ra"),
    ("dec", "dec"),
];

/// Splits one CSV line (double quotes group a field with commas).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

/// A number in a catalogue cell (`nan`, `None` and empty are no value).
fn cell_number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Looks `sobject_id` up in `catalog`; fills the labels and returns
/// whether the row was found. A catalogue that cannot be read, or whose
/// header has no `sobject_id`, is an error naming it.
fn labels_from_catalog(catalog: &Path, sobject_id: &str, labels: &mut Labels) -> Result<bool> {
    let file = std::fs::File::open(catalog).map_err(|source| Error::Os {
        path: catalog.to_path_buf(),
        source,
    })?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header = match lines.next() {
        Some(Ok(h)) => split_csv(&h),
        Some(Err(source)) => {
            return Err(Error::Os {
                path: catalog.to_path_buf(),
                source,
            })
        }
        None => return Err(Error::bad(Location::file(catalog), "empty catalogue")),
    };
    let col = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let id_col = col("sobject_id").ok_or_else(|| {
        Error::bad(
            Location::file(catalog).field("sobject_id"),
            "column missing from the header line",
        )
    })?;
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|source| Error::Os {
            path: catalog.to_path_buf(),
            source,
        })?;
        let cells = split_csv(&line);
        if cells.get(id_col).map(String::as_str) != Some(sobject_id) {
            continue;
        }
        let get = |name: &str| {
            col(name)
                .and_then(|c| cells.get(c))
                .and_then(|s| cell_number(s))
        };
        let [teff, logg, fe_h, alpha] = CATALOG_LABELS.map(get);
        labels.teff = teff;
        labels.logg = logg;
        labels.fe_h = fe_h;
        labels.alpha_m = alpha;
        for (name, key) in CATALOG_EXTRA {
            if let Some(v) = get(name) {
                labels.extra.insert(key.into(), v);
            }
        }
        let file = catalog
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        labels
            .text
            .insert("labels_from".into(), format!("{file} line {}", i + 2));
        return Ok(true);
    }
    Ok(false)
}

/// `*_catalog.txt` files in `dir`, sorted.
fn catalogs_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with("_catalog.txt"))
        })
        .collect();
    v.sort();
    v
}

impl Reader for GalahReader {
    fn format(&self) -> Format {
        Format::GalahCcd
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        if unit.files.is_empty() {
            return Err(Error::Input {
                input: "GALAH star".into(),
                reason: "no CCD files".into(),
            });
        }
        for f in &unit.files {
            let mut fits = Fits::open(f)?;
            ccd_layout(&mut fits)?;
        }
        Ok(1)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let Some(first) = unit.files.first() else {
            return Err(Error::Input {
                input: "GALAH star".into(),
                reason: "no CCD files".into(),
            });
        };
        let id = star_id(first);
        let mut labels = Labels {
            class: Some("STAR".into()),
            ..Labels::default()
        };
        let mut have_labels = false;
        let mut ccds: Vec<Ccd> = Vec::with_capacity(unit.files.len());
        for f in &unit.files {
            let other = star_id(f);
            if other != id {
                return Err(Error::bad(
                    Location::file(f),
                    format!("CCD file of star {other} grouped with star {id}"),
                ));
            }
            let (ccd, mut fits) = read_ccd(f)?;
            if let Some(prev) = ccds.iter().find(|c| c.number == ccd.number) {
                return Err(Error::bad(
                    Location::file(f),
                    format!(
                        "CCD {} given twice (also {})",
                        ccd.number,
                        prev.path.display()
                    ),
                ));
            }
            if !have_labels {
                have_labels = labels_from_header(&mut fits, &mut labels);
            }
            let snr = finite(fits.key_f64(0, "SNR"));
            if let Some(v) = snr {
                labels.extra.insert(format!("snr_ccd{}", ccd.number), v);
            }
            for (key, name) in [("GAIA_ID", "gaia_id"), ("2MASS_ID", "2mass_id")] {
                if let Some(v) = fits
                    .key_text(0, key)
                    .filter(|v| !v.is_empty() && v != "None")
                {
                    labels.text.entry(name.into()).or_insert(v);
                }
            }
            ccds.push(ccd);
        }
        if !have_labels {
            let dir = first.parent().unwrap_or(Path::new("."));
            for cat in catalogs_in(dir) {
                if labels_from_catalog(&cat, &id, &mut labels)? {
                    break;
                }
            }
        }
        ccds.sort_by_key(|c| c.number);
        labels.text.insert(
            "ccds".into(),
            ccds.iter()
                .map(|c| c.number.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );

        let total: usize = ccds.iter().map(|c| c.wavelength.len()).sum();
        let mut s = Spectrum {
            id,
            survey: Survey::Galah,
            source: Source {
                file: ccds
                    .first()
                    .map(|c| c.path.clone())
                    .unwrap_or_else(|| first.clone()),
                hdu: "0".into(),
                row: None,
            },
            wavelength: Vec::with_capacity(total),
            flux: Vec::with_capacity(total),
            ivar: Vec::with_capacity(total),
            mask: vec![0; total],
            segments: Vec::with_capacity(ccds.len()),
            medium: Medium::Air,
            lsf_sigma: None,
            labels,
        };
        for c in ccds {
            let n = c.wavelength.len();
            let name = format!("ccd{}", c.number);
            // Each CCD is checked on its own first, so an error names its file.
            let piece = Spectrum {
                wavelength: c.wavelength,
                flux: c.flux.iter().map(|&f| f as f32).collect(),
                ivar: c
                    .flux
                    .iter()
                    .zip(&c.rel)
                    .map(|(&f, &r)| ivar_from_relative_error(f, r))
                    .collect(),
                mask: vec![0; n],
                segments: vec![Segment {
                    name: name.clone(),
                    start: 0,
                    end: n,
                }],
                labels: Labels::default(),
                source: Source {
                    file: c.path.clone(),
                    hdu: "0".into(),
                    row: None,
                },
                id: String::new(),
                survey: Survey::Galah,
                medium: Medium::Air,
                lsf_sigma: None,
            };
            if let Err((field, reason)) = piece.validate() {
                return Ok(Box::new(std::iter::once(Err(Error::bad(
                    Location::file(&c.path).hdu(0).field(field),
                    reason,
                )))));
            }
            let start = s.wavelength.len();
            s.wavelength.extend(piece.wavelength);
            s.flux.extend(piece.flux);
            s.ivar.extend(piece.ivar);
            s.segments.push(Segment {
                name,
                start,
                end: start + n,
            });
        }
        let result = match s.validate() {
            Ok(()) => Ok(s),
            Err((field, reason)) => Err(Error::bad(
                Location::file(&s.source.file).hdu(0).field(field),
                reason,
            )),
        };
        Ok(Box::new(std::iter::once(result)))
    }
}
