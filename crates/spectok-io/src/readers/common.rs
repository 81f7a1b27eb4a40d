//! Helpers shared by the readers.

use std::path::Path;

use crate::{Error, Location, Result, Spectrum};

/// Reverses every segment whose wavelengths run downwards (first pixel
/// above the last), moving the pixels of all per-pixel arrays together and
/// changing no value. Segments that are not monotonic are left for
/// [`Spectrum::validate`] to report.
pub(crate) fn orient_segments(s: &mut Spectrum) {
    for seg in &s.segments {
        let r = seg.start..seg.end;
        if r.end > s.wavelength.len() || r.len() < 2 {
            continue;
        }
        if s.wavelength[r.start] > s.wavelength[r.end - 1] {
            s.wavelength[r.clone()].reverse();
            if let Some(v) = s.flux.get_mut(r.clone()) {
                v.reverse();
            }
            if let Some(v) = s.ivar.get_mut(r.clone()) {
                v.reverse();
            }
            if let Some(v) = s.mask.get_mut(r.clone()) {
                v.reverse();
            }
            if let Some(v) = s.lsf_sigma.as_mut().and_then(|l| l.get_mut(r.clone())) {
                v.reverse();
            }
        }
    }
}

/// Orients the segments and checks the spectrum's invariants; a failure
/// becomes [`Error::Bad`] at the spectrum's source (file, HDU, row) and the
/// file's own name for the field (`fields` maps a [`Spectrum`] field such as
/// `"wavelength"` to the column or keyword it came from).
pub(crate) fn finish(mut s: Spectrum, fields: &[(&str, &str)]) -> Result<Spectrum> {
    orient_segments(&mut s);
    if let Err((field, reason)) = s.validate() {
        let file_field = fields
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(field, |(_, c)| *c);
        let mut loc = Location::file(&s.source.file)
            .hdu(&s.source.hdu)
            .field(file_field);
        if let Some(r) = s.source.row {
            loc = loc.row(r);
        }
        let reason = if file_field == field {
            reason
        } else {
            format!("{field} {reason}")
        };
        return Err(Error::bad(loc, reason));
    }
    Ok(s)
}

/// Names HDU `name` in an error's location (the [`Fits`] methods name HDUs
/// by number).
pub(crate) fn at_hdu(e: Error, name: &str) -> Error {
    match e {
        Error::Bad { mut loc, reason } => {
            loc.hdu = Some(name.to_string());
            Error::Bad { loc, reason }
        }
        e => e,
    }
}

/// `1/σ²` for finite σ > 0; NaN stays NaN; 0 otherwise (σ ≤ 0 or infinite
/// means no information).
pub(crate) fn ivar_from_sigma(sigma: f64) -> f32 {
    if sigma.is_nan() {
        f32::NAN
    } else if sigma.is_finite() && sigma > 0.0 {
        (1.0 / (sigma * sigma)) as f32
    } else {
        0.0
    }
}

/// A bitmask stored as floating-point numbers, as `u32`: every value must
/// be a whole number in `0..=u32::MAX`; the first that is not is an error
/// at `loc` naming the pixel.
pub(crate) fn float_mask(values: &[f32], loc: Location) -> Result<Vec<u32>> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ok = v.is_finite() && v >= 0.0 && v.fract() == 0.0 && (v as f64) <= u32::MAX as f64;
            if ok {
                Ok(v as u32)
            } else {
                Err(Error::bad(
                    loc.clone(),
                    format!("pixel {i} is {v}, not a bitmask value"),
                ))
            }
        })
        .collect()
}

/// A label value, `None` when not finite or the −9999 "unknown" sentinel
/// (anything ≤ −9000).
pub(crate) fn known(v: f64) -> Option<f64> {
    (v.is_finite() && v > -9000.0).then_some(v)
}

/// The file name without its FITS/gzip endings (`a.fits.gz` → `a`).
pub(crate) fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut stem = name.as_str();
    for ending in [".gz", ".fz", ".fits", ".fit", ".fts"] {
        if let Some(s) = stem.strip_suffix(ending) {
            stem = s;
        }
    }
    stem.to_string()
}

/// `10^x` (log-wavelength grids) as `exp(x · ln 10)`: a third of the time
/// of `powf`, which dominated reading APOGEE files (one call a pixel);
/// within 4e-15 relative of `10f64.powf(x)` for |x| < 10 (6e-11 Å at
/// 16 000 Å).
pub(crate) fn exp10(x: f64) -> f64 {
    (x * std::f64::consts::LN_10).exp()
}

/// Pixels to extend a log-linear grid by multiplication between exact
/// points.
const GRID_STRIDE: usize = 32;

/// The log-linear grid `10^(a + b·(i + offset))` for `i` in `0..n`: exact
/// ([`exp10`]) every [`GRID_STRIDE`] pixels and that times `10^(b·j)`
/// (powers of the ratio, formed once) for the `j`-th pixel after it,
/// within 1e-14 relative of computing each pixel. The products are
/// independent, so the compiler vectorises them (a running product was a
/// chain of dependent multiplies, and `exp` per pixel was most of reading
/// an APOGEE file).
pub(crate) fn loglin_grid(a: f64, b: f64, offset: f64, n: usize) -> Vec<f64> {
    let ratio = exp10(b);
    let mut powers = [1.0f64; GRID_STRIDE];
    for j in 1..GRID_STRIDE {
        powers[j] = powers[j - 1] * ratio;
    }
    let mut out = vec![0.0f64; n];
    for (k, block) in out.chunks_mut(GRID_STRIDE).enumerate() {
        let first = exp10(a + b * ((k * GRID_STRIDE) as f64 + offset));
        for (w, p) in block.iter_mut().zip(&powers) {
            *w = first * p;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn loglin_grid_agrees_with_each_pixel_computed() {
        // APOGEE's grid and SDSS spSpec's.
        for (a, b, offset, n) in [(4.179, 6e-6, 0.0, 8575), (3.5797, 1e-4, -1.0, 3900)] {
            let grid = super::loglin_grid(a, b, offset, n);
            for (i, w) in grid.iter().enumerate() {
                let exact = 10f64.powf(a + b * (i as f64 + offset));
                assert!(((w - exact) / exact).abs() < 1e-14, "{i}: {w} vs {exact}");
            }
        }
    }

    #[test]
    fn exp10_agrees_with_powf() {
        for i in 0..200_000 {
            let x = 3.0 + i as f64 * 1e-5;
            let (a, b) = (super::exp10(x), 10f64.powf(x));
            assert!(((a - b) / b).abs() < 4e-15, "{x}: {a} vs {b}");
        }
    }
}
