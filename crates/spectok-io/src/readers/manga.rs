//! SDSS-IV MaNGA spectra in the DAP test layout: image HDUs `WAVE` (1-D,
//! Å, vacuum), `FLUX`, `IVAR`, `MASK`, `SRES` (each nspec × npix, or 1-D
//! for a single spectrum) and `Z` (1-D, one redshift per spectrum).
//!
//! Each row is one spectrum, read one at a time. `MASK` and `SRES` are
//! optional (all-zero mask, no LSF when absent); `SRES` may also be 1-D,
//! one resolution curve for every row. `lsf_sigma = λ / (R · 2.3548)` (the
//! FWHM resolution turned into a Gaussian σ), NaN where `R` is not a
//! finite positive number. The id is `<file stem>:<row>`; `Z` gives
//! `labels.redshift` (no class: the spectra are spaxels).

use std::path::PathBuf;

use crate::fits::Fits;
use crate::readers::common::{at_hdu, file_stem, finish, known};
use crate::{
    Error, Format, InputUnit, Labels, Medium, Reader, Result, Segment, Source, Spectrum,
    SpectrumIter, Survey,
};

/// Reader of MaNGA DAP-layout files ([`Format::MangaDap`]).
pub struct MangaReader;

/// FWHM / σ of a Gaussian: 2·√(2 ln 2).
const FWHM_PER_SIGMA: f64 = 2.354_820_045_030_949_3;

/// HDU indices and sizes, checked from headers.
struct Layout {
    nspec: usize,
    npix: usize,
    wave: usize,
    flux: usize,
    ivar: usize,
    mask: Option<usize>,
    /// `SRES` and whether it is one row for all spectra.
    sres: Option<(usize, bool)>,
    z: Option<usize>,
}

/// `(rows, cols)` of an image shape; a 1-D image is one row.
fn rows_cols(shape: &[usize]) -> Option<(usize, usize)> {
    match shape {
        [n] => Some((1, *n)),
        [r, c] => Some((*r, *c)),
        _ => None,
    }
}

fn layout(fits: &mut Fits) -> Result<Layout> {
    let wave = fits.require_hdu("WAVE")?;
    let wshape = fits
        .image_shape(wave, "WAVE")
        .map_err(|e| at_hdu(e, "WAVE"))?;
    let npix = match wshape.as_slice() {
        [n] => *n,
        _ => {
            return Err(Error::bad(
                fits.loc("WAVE"),
                format!("expected a 1-D image, found shape {wshape:?}"),
            ))
        }
    };
    let flux = fits.require_hdu("FLUX")?;
    let fshape = fits
        .image_shape(flux, "FLUX")
        .map_err(|e| at_hdu(e, "FLUX"))?;
    let nspec = match rows_cols(&fshape) {
        Some((r, c)) if c == npix => r,
        _ => {
            return Err(Error::bad(
                fits.loc("FLUX"),
                format!("expected nspec × {npix} (the WAVE length), found shape {fshape:?}"),
            ))
        }
    };
    let ivar = fits.require_hdu("IVAR")?;
    let same_shape = |fits: &mut Fits, name: &str, i: usize, one_row_ok: bool| -> Result<bool> {
        let shape = fits.image_shape(i, name).map_err(|e| at_hdu(e, name))?;
        match rows_cols(&shape) {
            Some((r, c)) if c == npix && r == nspec => Ok(false),
            Some((1, c)) if c == npix && one_row_ok && shape.len() == 1 => Ok(true),
            _ => Err(Error::bad(
                fits.loc(name),
                format!("expected {nspec} × {npix} (as FLUX), found shape {shape:?}"),
            )),
        }
    };
    same_shape(fits, "IVAR", ivar, false)?;
    let mask = fits.hdu_index("MASK")?;
    if let Some(m) = mask {
        same_shape(fits, "MASK", m, false)?;
    }
    let sres = match fits.hdu_index("SRES")? {
        Some(s) => Some((s, same_shape(fits, "SRES", s, true)?)),
        None => None,
    };
    let z = fits.hdu_index("Z")?;
    if let Some(zi) = z {
        let shape = fits.image_shape(zi, "Z").map_err(|e| at_hdu(e, "Z"))?;
        if shape.iter().product::<usize>() != nspec {
            return Err(Error::bad(
                fits.loc("Z"),
                format!("expected {nspec} redshifts (one per FLUX row), found shape {shape:?}"),
            ));
        }
    }
    Ok(Layout {
        nspec,
        npix,
        wave,
        flux,
        ivar,
        mask,
        sres,
        z,
    })
}

impl Reader for MangaReader {
    fn format(&self) -> Format {
        Format::MangaDap
    }

    fn count(&self, unit: &InputUnit) -> Result<usize> {
        let mut fits = Fits::open(unit.main_file())?;
        Ok(layout(&mut fits)?.nspec)
    }

    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> {
        let path = unit.main_file().to_path_buf();
        let mut fits = Fits::open(&path)?;
        let lay = layout(&mut fits)?;
        let wave = fits
            .read_image_row_f64(lay.wave, 0, "WAVE")
            .map_err(|e| at_hdu(e, "WAVE"))?;
        let z = match lay.z {
            Some(zi) => Some(fits.read_image_f64(zi, "Z").map_err(|e| at_hdu(e, "Z"))?.0),
            None => None,
        };
        let shared_sres = match lay.sres {
            Some((s, true)) => Some(
                fits.read_image_row_f64(s, 0, "SRES")
                    .map_err(|e| at_hdu(e, "SRES"))?,
            ),
            _ => None,
        };
        Ok(Box::new(MangaStream {
            stem: file_stem(&path),
            path,
            fits,
            lay,
            wave,
            z,
            shared_sres,
            row: 0,
        }))
    }
}

/// Streams the rows of a MaNGA file.
struct MangaStream {
    path: PathBuf,
    stem: String,
    fits: Fits,
    lay: Layout,
    wave: Vec<f64>,
    z: Option<Vec<f64>>,
    shared_sres: Option<Vec<f64>>,
    row: usize,
}

/// `λ / (R · 2.3548)`, NaN where R is not finite and positive.
fn lsf_from_sres(wave: &[f64], sres: &[f64]) -> Vec<f32> {
    wave.iter()
        .zip(sres)
        .map(|(&l, &r)| {
            if r.is_finite() && r > 0.0 {
                (l / (r * FWHM_PER_SIGMA)) as f32
            } else {
                f32::NAN
            }
        })
        .collect()
}

impl MangaStream {
    fn read_row(&mut self, row: usize) -> Result<Spectrum> {
        let at = |name: &'static str| move |e| at_hdu(e, name);
        let lay = &self.lay;
        let fits = &mut self.fits;
        let flux = fits
            .read_image_row_f32(lay.flux, row, "FLUX")
            .map_err(at("FLUX"))?;
        let ivar = fits
            .read_image_row_f32(lay.ivar, row, "IVAR")
            .map_err(at("IVAR"))?;
        let mask = match lay.mask {
            Some(m) => fits
                .read_image_row_mask(m, row, "MASK")
                .map_err(at("MASK"))?,
            None => vec![0; lay.npix],
        };
        let lsf_sigma = match (&self.shared_sres, lay.sres) {
            (Some(s), _) => Some(lsf_from_sres(&self.wave, s)),
            (None, Some((s, _))) => {
                let sres = fits
                    .read_image_row_f64(s, row, "SRES")
                    .map_err(at("SRES"))?;
                Some(lsf_from_sres(&self.wave, &sres))
            }
            (None, None) => None,
        };
        let labels = Labels {
            redshift: self
                .z
                .as_ref()
                .and_then(|z| z.get(row).copied())
                .and_then(known),
            ..Labels::default()
        };
        let s = Spectrum {
            id: format!("{}:{row}", self.stem),
            survey: Survey::Manga,
            source: Source {
                file: self.path.clone(),
                hdu: "FLUX".into(),
                row: Some(row as u64),
            },
            wavelength: self.wave.clone(),
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
        finish(s, &[("wavelength", "WAVE"), ("lsf_sigma", "SRES")])
    }
}

impl Iterator for MangaStream {
    type Item = Result<Spectrum>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.row >= self.lay.nspec {
            return None;
        }
        let row = self.row;
        self.row += 1;
        Some(self.read_row(row))
    }
}
