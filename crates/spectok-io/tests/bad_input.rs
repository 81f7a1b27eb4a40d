//! Corrupted copies of the real survey files, built in a temp dir: every
//! one gives a one-line error naming the file (and HDU/field where known)
//! or a counted per-spectrum skip — never a panic.

use std::path::{Path, PathBuf};

use spectok_io::testdata::real_data_dir;
use spectok_io::{detect, plan_inputs, read_unit, Error, Format, Spectrum};

/// Reads everything `inputs` plan into; returns spectra and all errors.
fn read_all(inputs: &[&Path], format: Option<Format>) -> (Vec<Spectrum>, Vec<Error>) {
    let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let plan = plan_inputs(&names, format);
    let mut errors = plan.problems;
    let mut spectra = Vec::new();
    for unit in &plan.units {
        match read_unit(unit) {
            Ok(stream) => {
                for item in stream {
                    match item {
                        Ok(s) => spectra.push(s),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    (spectra, errors)
}

fn assert_one_line_naming(e: &Error, file: &Path) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(
        msg.contains(name.as_ref()),
        "error does not name {name}: {msg}"
    );
}

fn copy_to(dir: &Path, src: &Path) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(src, &dst).unwrap();
    let mut perm = std::fs::metadata(&dst).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&dst, perm).unwrap();
    dst
}

fn all_real_files(root: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for sub in [
        "sdss", "desi", "apogee", "galah", "lamost", "gaiaxp", "other", "mmu",
    ] {
        let Ok(rd) = std::fs::read_dir(root.join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let n = p.to_string_lossy().to_string();
            if n.ends_with(".fits")
                || n.ends_with(".fit")
                || n.ends_with(".gz")
                || n.ends_with(".hdf5")
            {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

#[test]
fn empty_and_garbage_files_are_unrecognised() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.fits");
    std::fs::write(&empty, b"").unwrap();
    let e = detect(&empty).unwrap_err();
    assert!(matches!(e, Error::Unrecognised { .. }), "{e}");
    assert!(e.to_string().contains("empty"), "{e}");
    assert_one_line_naming(&e, &empty);

    let junk = dir.path().join("junk.fits");
    std::fs::write(&junk, b"this is not a FITS file at all").unwrap();
    let e = detect(&junk).unwrap_err();
    assert_one_line_naming(&e, &junk);

    let (spectra, errors) = read_all(&[&empty, &junk], None);
    assert!(spectra.is_empty());
    assert_eq!(errors.len(), 2);
}

#[test]
fn truncated_copies_of_every_real_file_never_panic() {
    let Some(root) = real_data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for src in all_real_files(&root) {
        let bytes = std::fs::read(&src).unwrap();
        for frac in [0.02, 0.3, 0.7, 0.97] {
            let cut = ((bytes.len() as f64) * frac) as usize;
            let dst = dir.path().join(format!(
                "cut{cut}-{}",
                src.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&dst, &bytes[..cut]).unwrap();
            let (_spectra, errors) = read_all(&[&dst], None);
            // Truncation inside the data must surface as an error or a
            // skipped spectrum, always one line naming the file.
            for e in &errors {
                assert_one_line_naming(e, &dst);
            }
            if frac < 0.9 {
                assert!(
                    !errors.is_empty(),
                    "{} cut at {cut} bytes read without error",
                    src.display()
                );
            }
            cases += 1;
        }
    }
    assert!(cases >= 4 * 50, "only {cases} truncation cases");
}

#[test]
fn sdss_spec_corruptions() {
    let Some(root) = real_data_dir() else { return };
    let src = root.join("sdss/spec-0266-51602-0013.fits");
    let dir = tempfile::tempdir().unwrap();

    // All-zero ivar: read, but no valid pixel.
    let f = copy_to(dir.path(), &src);
    {
        let mut fits = fitsio::FitsFile::edit(&f).unwrap();
        let hdu = fits.hdu("COADD").unwrap();
        let zeros = vec![0f32; 3838];
        hdu.write_col(&mut fits, "ivar", &zeros).unwrap();
    }
    let (spectra, errors) = read_all(&[&f], None);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(spectra.len(), 1);
    assert_eq!(spectra[0].valid_fraction(), 0.0);

    // NaN flux everywhere: read, but no valid pixel.
    let f2 = dir.path().join("nan.fits");
    std::fs::copy(&f, &f2).unwrap();
    {
        let mut fits = fitsio::FitsFile::edit(&f2).unwrap();
        let hdu = fits.hdu("COADD").unwrap();
        hdu.write_col(&mut fits, "flux", &vec![f32::NAN; 3838])
            .unwrap();
    }
    let (spectra, _) = read_all(&[&f2], None);
    assert_eq!(spectra.len(), 1);
    assert_eq!(spectra[0].valid_fraction(), 0.0);

    // Non-monotonic wavelengths: a one-line error naming the field.
    let f3 = dir.path().join("nonmono.fits");
    std::fs::copy(&src, &f3).unwrap();
    {
        let mut fits = fitsio::FitsFile::edit(&f3).unwrap();
        let hdu = fits.hdu("COADD").unwrap();
        let mut loglam: Vec<f32> = hdu.read_col(&mut fits, "loglam").unwrap();
        loglam.swap(100, 101);
        hdu.write_col(&mut fits, "loglam", &loglam).unwrap();
    }
    let (spectra, errors) = read_all(&[&f3], None);
    assert!(spectra.is_empty());
    assert_eq!(errors.len(), 1);
    assert_one_line_naming(&errors[0], &f3);
    assert!(
        errors[0].to_string().contains("wavelength"),
        "{}",
        errors[0]
    );

    // Missing column: the error names the HDU and the column.
    let f4 = dir.path().join("nocol.fits");
    std::fs::copy(&src, &f4).unwrap();
    {
        let mut fits = fitsio::FitsFile::edit(&f4).unwrap();
        let hdu = fits.hdu("COADD").unwrap();
        hdu.delete_column(&mut fits, "ivar").unwrap();
    }
    let (spectra, errors) = read_all(&[&f4], None);
    assert!(spectra.is_empty());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let msg = errors[0].to_string();
    assert_one_line_naming(&errors[0], &f4);
    assert!(
        msg.contains("COADD") && msg.to_lowercase().contains("ivar"),
        "{msg}"
    );

    // Wrong HDU: COADD renamed. Detection no longer recognises it, and a
    // forced format names the missing HDU.
    let f5 = dir.path().join("wronghdu.fits");
    std::fs::copy(&src, &f5).unwrap();
    {
        // Rewrite the EXTNAME card in place (cfitsio's write_key would add a
        // second card rather than replace the first).
        let mut bytes = std::fs::read(&f5).unwrap();
        let card = b"EXTNAME = 'COADD   '";
        let at = bytes
            .windows(card.len())
            .position(|w| w == card)
            .expect("COADD card");
        bytes[at..at + card.len()].copy_from_slice(b"EXTNAME = 'SOMETHIN'");
        std::fs::write(&f5, bytes).unwrap();
    }
    let e = detect(&f5).unwrap_err();
    assert_one_line_naming(&e, &f5);
    let (_, errors) = read_all(&[&f5], Some(Format::SdssSpec));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_one_line_naming(&errors[0], &f5);
    assert!(errors[0].to_string().contains("COADD"), "{}", errors[0]);
}

#[test]
fn forced_wrong_format_is_an_error_not_a_panic() {
    let Some(root) = real_data_dir() else { return };
    let files = all_real_files(&root);
    for fmt in Format::ALL {
        for f in files.iter().step_by(3) {
            let (_, errors) = read_all(&[f], Some(fmt));
            for e in &errors {
                assert!(!e.to_string().contains('\n'));
            }
        }
    }
}
