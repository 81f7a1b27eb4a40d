//! The SDSS, LAMOST, MaNGA and Gaia XP readers on the real survey files
//! (values from the data folder's README), and per-spectrum bad input built
//! in a temp dir.

use std::path::{Path, PathBuf};

use fitsio::images::{ImageDescription, ImageType};
use fitsio::tables::{ColumnDataType, ColumnDescription, ConcreteColumnDescription};
use fitsio::FitsFile;
use spectok_io::testdata::real_data_dir;
use spectok_io::{
    count_unit, detect, plan_inputs, read_unit, Error, Format, InputUnit, Medium, Spectrum, Survey,
};

// ---------------------------------------------------------------------------
// Helpers

/// Detects, counts and reads every spectrum of `path` (items that fail
/// are returned as errors).
fn read_file(path: &Path) -> (Format, usize, Vec<spectok_io::Result<Spectrum>>) {
    let format = detect(path).unwrap_or_else(|e| panic!("{e}"));
    let unit = InputUnit::single(format, path);
    let n = count_unit(&unit).unwrap_or_else(|e| panic!("{e}"));
    let items = read_unit(&unit).unwrap_or_else(|e| panic!("{e}")).collect();
    (format, n, items)
}

/// Reads a file with a known format; `Err` from opening or any item.
fn read_as(format: Format, path: &Path) -> Result<Vec<Spectrum>, Error> {
    read_unit(&InputUnit::single(format, path))?.collect()
}

fn only(items: Vec<spectok_io::Result<Spectrum>>) -> Spectrum {
    assert_eq!(items.len(), 1);
    items
        .into_iter()
        .next()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `actual` equals the README's rounded `text` to within half a unit of its
/// last digit (plus float noise).
fn assert_rounded(actual: f64, text: &str, what: &str) {
    let expected: f64 = text.parse().unwrap();
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().unwrap()),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let half_unit = 0.5 * 10f64.powi(exp - decimals);
    assert!(
        (actual - expected).abs() <= half_unit * 1.000_001 + 1e-12,
        "{what}: {actual} is not {text}"
    );
}

fn assert_range(s: &Spectrum, lo: f64, hi: f64) {
    let (a, b) = s.wavelength_range();
    assert!((a - lo).abs() <= 0.1, "{}: λ min {a}, expected {lo}", s.id);
    assert!((b - hi).abs() <= 0.1, "{}: λ max {b}, expected {hi}", s.id);
}

fn assert_segments(s: &Spectrum, expected: &[(&str, usize)]) {
    let got: Vec<(&str, usize)> = s
        .segments
        .iter()
        .map(|g| (g.name.as_str(), g.len()))
        .collect();
    assert_eq!(got, expected, "{}", s.id);
}

/// The error is one line and names the file.
fn assert_names_file(e: &Error, file: &Path) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(
        msg.contains(name.as_ref()),
        "error does not name {name}: {msg}"
    );
}

fn writable_copy(dir: &Path, src: &Path) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(src, &dst).unwrap();
    let mut perm = std::fs::metadata(&dst).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&dst, perm).unwrap();
    dst
}

// ---------------------------------------------------------------------------
// SDSS

/// The README's rows: file | pixels | λ min | λ max | CLASS | SUBCLASS | Z |
/// Z_ERR.
const SDSS_SPEC: &str = "
spec-0266-51602-0013.fits | 3838 | 3803.6 |  9202.4 | GALAXY |                | 0.12132    | 3.151e-05
spec-0266-51602-0031.fits | 3842 | 3800.1 |  9202.4 | STAR   | WD             | -3.691e-05 | 8.842e-05
spec-0266-51602-0107.fits | 3849 | 3789.7 |  9191.8 | GALAXY | STARFORMING    | 0.12315    | 1.391e-05
spec-0332-52367-0639.fits | 3810 | 3829.1 |  9204.5 | QSO    | BROADLINE      | 0.10061    | 3.556e-05
spec-0752-52251-0323.fits | 3822 | 3823.0 |  9215.1 | QSO    | BROADLINE      | 0.38067    | 5.411e-05
spec-1665-52976-0519.fits | 3841 | 3801.9 |  9204.5 | GALAXY |                | 0.01055    | 5.785e-06
spec-4961-55719-0378.fits | 4619 | 3569.4 | 10337.1 | STAR   | F3/F5V (30743) | -0.0004925 | 1.148e-05
NGC3522_SDSS_DR18.fits    | 3815 | 3826.5 |  9208.7 | GALAXY | BROADLINE      | 0.00402    | 6.347e-06
spec-7338-57859-0739.fits | 4565 | 3614.1 | 10337.1 | QSO    | BROADLINE      | 0.45647    | 7.612e-05
spec-7339-57918-0737.fits | 4566 | 3612.4 | 10334.7 | QSO    | BROADLINE      | 0.45663    | 8.396e-05
spec-7340-57576-0740.fits | 4563 | 3620.8 | 10351.4 | QSO    | BROADLINE      | 0.45657    | 7.029e-05
";

/// The rows of a `|`-separated table, cells trimmed.
fn rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('|').map(str::trim).collect())
        .collect()
}

#[test]
fn sdss_spec_files() {
    let Some(root) = real_data_dir() else { return };
    for row in rows(SDSS_SPEC) {
        let [file, npix, lo, hi, class, subclass, z, zerr] = row[..] else {
            panic!("bad table row {row:?}")
        };
        let (npix, lo, hi): (usize, f64, f64) = (
            npix.parse().unwrap(),
            lo.parse().unwrap(),
            hi.parse().unwrap(),
        );
        let path = root.join("sdss").join(file);
        let (format, n, items) = read_file(&path);
        assert_eq!(format, Format::SdssSpec, "{file}");
        assert_eq!(n, 1, "{file}");
        let s = only(items);
        assert_eq!(s.len(), npix, "{file}");
        assert_segments(&s, &[("all", npix)]);
        assert_range(&s, lo, hi);
        assert_eq!(s.survey, Survey::Sdss);
        assert_eq!(s.medium, Medium::Vacuum);
        assert_eq!(s.source.hdu, "COADD");
        assert_eq!(s.source.file, path);
        assert_eq!(s.labels.class.as_deref(), Some(class), "{file}");
        assert_eq!(
            s.labels.subclass.as_deref().unwrap_or(""),
            subclass,
            "{file}"
        );
        assert_rounded(s.labels.redshift.unwrap(), z, file);
        assert_rounded(s.labels.redshift_err.unwrap(), zerr, file);
        assert_eq!(s.labels.redshift_warning, Some(0), "{file}");
        // SPECOBJID is a long decimal number (text in SDSS files, an
        // integer column in BOSS/eBOSS files).
        assert!(
            s.id.len() >= 15 && s.id.bytes().all(|b| b.is_ascii_digit()),
            "{file}: id {}",
            s.id
        );
        assert!(
            s.labels.extra.contains_key("ra") && s.labels.extra.contains_key("dec"),
            "{file}"
        );
        // wdisp ≈ 1 pixel of 1e-4 dex: σ ≈ λ · 2.3e-4 Å, about 1 Å.
        let lsf = s.lsf_sigma.as_ref().unwrap();
        let mid = lsf[npix / 2] as f64;
        let expect = s.wavelength[npix / 2] * std::f64::consts::LN_10 * 1e-4;
        assert!(
            mid > 0.5 * expect && mid < 2.0 * expect,
            "{file}: lsf {mid} vs {expect}"
        );
        assert!(
            s.valid_fraction() > 0.5,
            "{file}: valid {}",
            s.valid_fraction()
        );
    }
}

#[test]
fn sdss_spec_labels_and_ids() {
    let Some(root) = real_data_dir() else { return };
    let s = only(read_file(&root.join("sdss/spec-0266-51602-0013.fits")).2);
    assert_eq!(s.id, "299492975510054912");
    assert_rounded(s.labels.extra["snr"], "16.24911", "SN_MEDIAN_ALL");
    assert_rounded(s.labels.extra["vdisp"], "230.18", "VDISP");
    assert_rounded(s.labels.extra["ra"], "146.9341", "PLUG_RA");
    assert_eq!(s.labels.extra["plate"], 266.0);
    assert_eq!(s.labels.extra["fiberid"], 13.0);
    // BOSS (SPALL) file: an int64 SPECOBJID.
    let s = only(read_file(&root.join("sdss/spec-4961-55719-0378.fits")).2);
    assert_eq!(s.id, "5585693437644697600");
    assert_eq!(s.labels.text["objtype"], "SPECTROPHOTO_STD");
    // eBOSS file: SPECOBJID stored as unsigned 64-bit (TZERO).
    let s = only(read_file(&root.join("sdss/spec-7338-57859-0739.fits")).2);
    assert_eq!(s.id, "8262056783037880320");
    assert_rounded(s.labels.extra["snr"], "19.53", "SN_MEDIAN_ALL");
}

#[test]
fn sdss_full_file_reads_only_the_coadd() {
    let Some(root) = real_data_dir() else { return };
    // 18 HDUs: per-exposure tables from HDU 4 on are ignored.
    let s = only(read_file(&root.join("sdss/spec-4961-55719-0378.fits")).2);
    assert_eq!(s.len(), 4619);
    assert_eq!(s.segments.len(), 1);
}

#[test]
fn sdss_spspec_files() {
    let Some(root) = real_data_dir() else { return };
    let bits = |b: &[u32]| b.iter().fold(0u32, |m, &i| m | 1 << i);
    for (file, class, code, z, zerr, id, masks) in [
        (
            "spSpec-51993-0542-631.fit",
            "QSO",
            3.0,
            "2.2319",
            "0.00216",
            "0542-51993-0631",
            vec![0, bits(&[23]), bits(&[24]), bits(&[30])],
        ),
        (
            "pyspeckit_sample_sdss.fits",
            "GALAXY",
            2.0,
            "0.04103",
            "7.544e-05",
            "1307-52999-0323",
            vec![
                0,
                bits(&[17, 20]),
                bits(&[23]),
                bits(&[24]),
                bits(&[22, 24, 26]),
                bits(&[30]),
            ],
        ),
    ] {
        let path = root.join("sdss").join(file);
        let (format, n, items) = read_file(&path);
        assert_eq!(format, Format::SdssSpSpec, "{file}");
        assert_eq!(n, 1);
        let s = only(items);
        assert_eq!(s.len(), 3853);
        assert_range(&s, 3798.4, 9221.5);
        assert_eq!(s.medium, Medium::Vacuum);
        assert_eq!(s.labels.class.as_deref(), Some(class), "{file}");
        assert_eq!(s.labels.extra["spec_cln"], code);
        assert_rounded(s.labels.redshift.unwrap(), z, file);
        assert_rounded(s.labels.redshift_err.unwrap(), zerr, file);
        assert_eq!(s.id, id);
        // σ = 0 marks bad pixels: 40/41 of them get ivar 0.
        let zero = s.ivar.iter().filter(|&&v| v == 0.0).count();
        assert!((40..=41).contains(&zero), "{file}: {zero} zero-ivar pixels");
        // The mask row (floats in the file) gives whole bit patterns.
        let mut values = s.mask.clone();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values, masks, "{file}");
    }
}

// ---------------------------------------------------------------------------
// LAMOST

/// The README's rows: file | format | pixels | λ min | λ max | SUBCLASS | Z |
/// Z_ERR | SNRG | SNRR | OBSID (all are CLASS = STAR).
const LAMOST_LRS: &str = "
spec-55859-F5902_sp01-001.fits.gz               | lamost-lrs     | 3908 | 3700.0 | 9097.0 | G7 | -0.0001387 | 2.408e-05 | 12.22  | 27.16  | 101001
spec-55859-F5902_sp01-002.fits.gz               | lamost-lrs     | 3908 | 3700.0 | 9097.0 | K7 | 0.0001192  | 9.18e-06  | 3.84   | 20.02  | 101002
spec-55859-F5902_sp01-013_dr8.fits.gz           | lamost-lrs     | 3908 | 3700.0 | 9097.0 | A2 | -0.00107   | 1.064e-05 | 5.56   | 8.79   | 101013
spec-58397-EG014118N254444M01_sp03-031.fits     | lamost-lrs-old | 3909 | 3700.0 | 9099.1 | G3 | -6.4e-06   | 1.381e-05 | 153.72 | 241.09 | 677503031
spec-60591-LN042429N340750BM01_sp01-001.fits.gz | lamost-lrs     | 3909 | 3700.0 | 9099.1 | G5 | 4.19e-05   | 1.428e-05 | 102.45 | 194.94 | 1247301001
";

#[test]
fn lamost_lrs_files() {
    let Some(root) = real_data_dir() else { return };
    for row in rows(LAMOST_LRS) {
        let [file, fmt, npix, lo, hi, subclass, z, zerr, snrg, snrr, obsid] = row[..] else {
            panic!("bad table row {row:?}")
        };
        let fmt = Format::from_name(fmt).unwrap();
        let (npix, lo, hi): (usize, f64, f64) = (
            npix.parse().unwrap(),
            lo.parse().unwrap(),
            hi.parse().unwrap(),
        );
        let path = root.join("lamost").join(file);
        let (format, n, items) = read_file(&path);
        assert_eq!(format, fmt, "{file}");
        assert_eq!(n, 1);
        let s = only(items);
        assert_eq!(s.len(), npix, "{file}");
        assert_segments(&s, &[("all", npix)]);
        assert_range(&s, lo, hi);
        assert_eq!(s.survey, Survey::LamostLrs);
        // Every file says VACUUM = T.
        assert_eq!(s.medium, Medium::Vacuum, "{file}");
        assert_eq!(s.id, obsid);
        assert_eq!(s.labels.class.as_deref(), Some("STAR"), "{file}");
        assert_eq!(s.labels.subclass.as_deref(), Some(subclass), "{file}");
        assert_rounded(s.labels.redshift.unwrap(), z, file);
        assert_rounded(s.labels.redshift_err.unwrap(), zerr, file);
        assert_rounded(s.labels.extra["snr_g"], snrg, file);
        assert_rounded(s.labels.extra["snr_r"], snrr, file);
        assert!(
            s.valid_fraction() > 0.9,
            "{file}: valid {}",
            s.valid_fraction()
        );
    }
    // DR13 file: ANDMASK (stored as floats) has bit 0 on some pixels, and
    // 21 pixels have ivar 0, kept as they are.
    let s = only(read_file(&root.join("lamost/spec-60591-LN042429N340750BM01_sp01-001.fits.gz")).2);
    assert!(s.mask.contains(&1));
    assert_eq!(s.ivar.iter().filter(|&&v| v == 0.0).count(), 21);
}

#[test]
fn lamost_mrs_files() {
    let Some(root) = real_data_dir() else { return };
    for (file, b, r, (blo, bhi), (rlo, rhi), obsid, objtype, ra, dec) in [
        (
            "med-58408-TD230151N343645T01_sp01-015.fits",
            4101,
            3692,
            (4894.0, 5378.5),
            (6292.5, 6850.6),
            "681001015",
            "Star",
            "345.79771",
            "32.22654",
        ),
        (
            "med-58268-HIP95119KP01_sp12-076.fits.gz",
            4151,
            3726,
            (4899.8, 5391.1),
            (6308.4, 6873.4),
            "666212076",
            "STAR",
            "292.05872",
            "43.9253",
        ),
    ] {
        let path = root.join("lamost").join(file);
        let (format, n, items) = read_file(&path);
        assert_eq!(format, Format::LamostMrs, "{file}");
        assert_eq!(n, 1);
        let s = only(items);
        assert_segments(&s, &[("b", b), ("r", r)]);
        assert_eq!(s.len(), b + r);
        let (w0, w1) = (s.wavelength[0], s.wavelength[b - 1]);
        assert!(
            (w0 - blo).abs() <= 0.1 && (w1 - bhi).abs() <= 0.1,
            "{file}: b {w0}–{w1}"
        );
        let (w0, w1) = (s.wavelength[b], s.wavelength[b + r - 1]);
        assert!(
            (w0 - rlo).abs() <= 0.1 && (w1 - rhi).abs() <= 0.1,
            "{file}: r {w0}–{w1}"
        );
        assert_eq!(s.survey, Survey::LamostMrs);
        assert_eq!(s.medium, Medium::Vacuum);
        assert_eq!(s.id, obsid);
        assert_eq!(s.source.hdu, "COADD_B+COADD_R");
        // MRS files carry no classification, only the input catalogue type.
        assert_eq!(s.labels.class, None);
        assert_eq!(s.labels.text["objtype"], objtype);
        assert_rounded(s.labels.extra["ra"], ra, file);
        assert_rounded(s.labels.extra["dec"], dec, file);
        assert!(s.labels.extra.contains_key("snr_b") && s.labels.extra.contains_key("snr_r"));
    }
}

// ---------------------------------------------------------------------------
// MaNGA

#[test]
fn manga_file() {
    let Some(root) = real_data_dir() else { return };
    let path = root.join("other/MaNGA_test_spectra.fits.gz");
    let (format, n, items) = read_file(&path);
    assert_eq!(format, Format::MangaDap);
    assert_eq!(n, 8);
    assert_eq!(items.len(), 8);
    let mut nan_lsf = 0;
    let z = [
        "0.04953", "0.05023", "0.04935", "0.02745", "0.0308", "0.01716", "0.01716", "0.01817",
    ];
    for (row, item) in items.into_iter().enumerate() {
        let s = item.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.id, format!("MaNGA_test_spectra:{row}"));
        assert_eq!(s.source.row, Some(row as u64));
        assert_eq!(s.source.hdu, "FLUX");
        assert_eq!(s.len(), 4563);
        assert_range(&s, 3621.6, 10353.8);
        assert_eq!(s.survey, Survey::Manga);
        assert_eq!(s.medium, Medium::Vacuum);
        assert_rounded(s.labels.redshift.unwrap(), z[row], "Z");
        // Row 5 is masked throughout (MASK 1026/1027 everywhere).
        if row == 5 {
            assert_eq!(s.valid_fraction(), 0.0);
        } else {
            assert!(
                s.valid_fraction() > 0.99,
                "row {row}: valid {}",
                s.valid_fraction()
            );
        }
        // R ≈ 2000: σ = λ / (R · 2.3548) ≈ 1 Å; NaN where SRES ≤ 0 (1901
        // values, all in row 5).
        let lsf = s.lsf_sigma.as_ref().unwrap();
        let expect = 3621.59598486 / (1397.56544426 * 2.3548);
        if row == 0 {
            assert!(
                (lsf[0] as f64 - expect).abs() < 1e-3,
                "{} vs {expect}",
                lsf[0]
            );
        }
        if row != 5 {
            assert!(lsf.iter().all(|v| *v > 0.3 && *v < 5.0), "row {row}");
        }
        nan_lsf += lsf.iter().filter(|v| v.is_nan()).count();
    }
    assert_eq!(nan_lsf, 1901);
}

// ---------------------------------------------------------------------------
// Gaia XP

#[test]
fn gaia_xp_calibrated_file() {
    let Some(root) = real_data_dir() else { return };
    let path = root.join("gaiaxp/calibrator.fits");
    let (format, n, items) = read_file(&path);
    assert_eq!(format, Format::GaiaXpSampled);
    assert_eq!(n, 2);
    let ids = ["5853498713190525696", "5762406957886626816"];
    for (row, item) in items.into_iter().enumerate() {
        let s = item.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.id, ids[row]);
        assert_eq!(s.source.row, Some(row as u64));
        assert_eq!(s.len(), 343);
        assert_eq!(s.wavelength[0], 3360.0);
        assert_eq!(s.wavelength[342], 10200.0);
        assert!(s
            .wavelength
            .windows(2)
            .all(|w| (w[1] - w[0] - 20.0).abs() < 1e-9));
        assert_eq!(s.medium, Medium::Unknown);
        assert_eq!(s.survey, Survey::GaiaXp);
        assert!(s.flux.iter().all(|f| f.is_finite()));
        assert!(s.ivar.iter().all(|v| v.is_finite() && *v > 0.0));
    }
    // ivar = 1/flux_error² (first sample of row 0: σ = 6.8448316e-17).
    let s = only(
        read_as(Format::GaiaXpSampled, &path)
            .unwrap()
            .into_iter()
            .take(1)
            .map(Ok)
            .collect(),
    );
    let expect = 1.0 / (6.8448316e-17f64 * 6.8448316e-17);
    assert!(
        ((s.ivar[0] as f64) / expect - 1.0).abs() < 1e-5,
        "{}",
        s.ivar[0]
    );
}

#[test]
fn gaia_xp_internal_samples_are_refused() {
    let Some(root) = real_data_dir() else { return };
    let path = root.join("gaiaxp/XP_SPECTRA_RAW_mini.fits");
    assert_eq!(detect(&path).unwrap(), Format::GaiaXpSampled);
    let unit = InputUnit::single(Format::GaiaXpSampled, &path);
    for e in [
        count_unit(&unit).unwrap_err(),
        read_unit(&unit).err().unwrap(),
    ] {
        assert!(matches!(e, Error::Refused { .. }), "{e}");
        assert_names_file(&e, &path);
        let msg = e.to_string();
        assert!(
            msg.contains("307") && msg.contains("without a wavelength grid"),
            "{msg}"
        );
    }
}

#[test]
fn gaia_xp_continuous_is_refused_by_planning() {
    let Some(root) = real_data_dir() else { return };
    let path = root.join("gaiaxp/XP_CONTINUOUS_RAW.fits");
    assert_eq!(detect(&path).unwrap(), Format::GaiaXpContinuous);
    let plan = plan_inputs(&[path.to_string_lossy()], None);
    assert!(plan.units.is_empty());
    assert_eq!(plan.problems.len(), 1);
    let e = &plan.problems[0];
    assert!(matches!(e, Error::Refused { .. }), "{e}");
    assert_names_file(e, &path);
    assert!(e.to_string().contains("coefficients"), "{e}");
}

// ---------------------------------------------------------------------------
// Unrecognised

#[test]
fn linetools_file_is_unrecognised() {
    let Some(root) = real_data_dir() else { return };
    let path = root.join("other/linetools_SDSSJ220248.31+123656.3.fits");
    let e = detect(&path).unwrap_err();
    assert!(matches!(e, Error::Unrecognised { .. }), "{e}");
    assert_names_file(&e, &path);
    // The message says what the file holds: four 1-D images.
    let msg = e.to_string();
    assert!(
        msg.contains("HDU 0") && msg.contains("image 4646") && msg.contains("HDU 3"),
        "{msg}"
    );
    let plan = plan_inputs(&[path.to_string_lossy()], None);
    assert!(plan.units.is_empty() && plan.problems.len() == 1);
}

#[test]
fn every_file_of_these_families_is_planned() {
    let Some(root) = real_data_dir() else { return };
    let dirs: Vec<String> = ["sdss", "lamost"]
        .iter()
        .map(|d| root.join(d).to_string_lossy().to_string())
        .collect();
    let plan = plan_inputs(&dirs, None);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.units.len(), 13 + 7);
    let mut n = 0;
    for unit in &plan.units {
        for item in read_unit(unit).unwrap() {
            item.unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 20);
}

// ---------------------------------------------------------------------------
// Bad input, per spectrum

#[test]
fn truncated_files_are_errors() {
    let Some(root) = real_data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for sub in ["sdss", "lamost", "gaiaxp"] {
        for e in std::fs::read_dir(root.join(sub)).unwrap() {
            files.push(e.unwrap().path());
        }
    }
    files.push(root.join("other/MaNGA_test_spectra.fits.gz"));
    files.retain(|f| !f.to_string_lossy().contains("CONTINUOUS"));
    assert_eq!(files.len(), 13 + 7 + 2 + 1);
    for src in files {
        let bytes = std::fs::read(&src).unwrap();
        for frac in [0.05, 0.3, 0.6, 0.9] {
            let cut = (bytes.len() as f64 * frac) as usize;
            let name = src.file_name().unwrap().to_string_lossy();
            let path = dir.path().join(format!("cut{cut}-{name}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            // Read with the file's real format, so detection is not what
            // catches the damage.
            let format = detect(&src).unwrap();
            let unit = InputUnit::single(format, &path);
            let errors: Vec<Error> = match read_unit(&unit) {
                Ok(items) => items.filter_map(|r| r.err()).collect(),
                Err(e) => vec![e],
            };
            let refused = format == Format::GaiaXpSampled && name.contains("RAW");
            assert!(!errors.is_empty(), "{name} cut at {cut} read without error");
            for e in &errors {
                assert_names_file(e, &path);
                if !refused {
                    assert!(matches!(e, Error::Bad { .. }), "{e}");
                }
            }
        }
    }
}

#[test]
fn spspec_corruptions() {
    let Some(root) = real_data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = root.join("sdss/spSpec-51993-0542-631.fit");
    let good = only(read_file(&src).2);

    // A decreasing grid (COEFF1 < 0) is reversed: values move, none change.
    let path = writable_copy(dir.path(), &src);
    replace_card(&path, "COEFF0", "3.9648");
    replace_card(&path, "COEFF1", "-0.0001");
    let s = only(
        read_as(Format::SdssSpSpec, &path)
            .unwrap()
            .into_iter()
            .map(Ok)
            .collect(),
    );
    assert!(s.wavelength.windows(2).all(|w| w[1] > w[0]));
    assert!((s.wavelength[0] - good.wavelength[0]).abs() < 1e-6);
    let mut flux = good.flux.clone();
    flux.reverse();
    assert_eq!(s.flux, flux);
    let mut mask = good.mask.clone();
    mask.reverse();
    assert_eq!(s.mask, mask);

    // A NaN in the float mask row: an error naming the field and pixel.
    let path = dir.path().join("nanmask.fit");
    std::fs::copy(&src, &path).unwrap();
    set_writable(&path);
    {
        let mut f = FitsFile::edit(&path).unwrap();
        let hdu = f.primary_hdu().unwrap();
        let mut img: Vec<f32> = hdu.read_image(&mut f).unwrap();
        img[3 * 3853 + 7] = f32::NAN;
        hdu.write_image(&mut f, &img).unwrap();
    }
    let e = read_as(Format::SdssSpSpec, &path).unwrap_err();
    assert_names_file(&e, &path);
    assert!(
        e.to_string().contains("mask") && e.to_string().contains("pixel 7"),
        "{e}"
    );

    // A row name that is not there: the error lists what ARRAYn says.
    let path = dir.path().join("noerror.fit");
    std::fs::copy(&src, &path).unwrap();
    set_writable(&path);
    replace_card(&path, "ARRAY3", "'NOISE'");
    let e = read_as(Format::SdssSpSpec, &path).unwrap_err();
    assert_names_file(&e, &path);
    assert!(
        e.to_string().contains("ARRAY") && e.to_string().contains("\"ERROR\""),
        "{e}"
    );
}

/// Rewrites the value of header card `key` in place (uncompressed file,
/// first occurrence).
fn replace_card(path: &Path, key: &str, value: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    let prefix = format!("{key:<8}=");
    let at = (0..bytes.len() / 80)
        .map(|i| i * 80)
        .find(|&o| bytes[o..o + 9] == *prefix.as_bytes())
        .unwrap_or_else(|| panic!("no card {key}"));
    let card = format!("{prefix} {value:>20}");
    let card = format!("{card:<80}");
    bytes[at..at + 80].copy_from_slice(card.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

fn set_writable(path: &Path) {
    let mut perm = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(path, perm).unwrap();
}

#[test]
fn lamost_mrs_non_monotonic_arm_is_an_error() {
    let Some(root) = real_data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = writable_copy(
        dir.path(),
        &root.join("lamost/med-58408-TD230151N343645T01_sp01-015.fits"),
    );
    {
        let mut f = FitsFile::edit(&path).unwrap();
        let hdu = f.hdu("COADD_R").unwrap();
        let mut loglam: Vec<f32> = hdu.read_col(&mut f, "LOGLAM").unwrap();
        loglam.swap(10, 11);
        hdu.write_col(&mut f, "LOGLAM", &loglam).unwrap();
    }
    let items: Vec<_> = read_unit(&InputUnit::single(Format::LamostMrs, &path))
        .unwrap()
        .collect();
    assert_eq!(items.len(), 1);
    let e = items.into_iter().next().unwrap().unwrap_err();
    assert_names_file(&e, &path);
    let msg = e.to_string();
    assert!(
        msg.contains("COADD_R") && msg.contains("LOGLAM") && msg.contains("pixel 10"),
        "{msg}"
    );
}

/// Writes a small LAMOST-LRS-like file: a primary header with labels and a
/// one-row `COADD` table of array columns.
fn write_lrs(path: &Path, wavelength: &[f32], andmask: &[f32]) {
    let n = wavelength.len();
    let mut f = FitsFile::create(path).open().unwrap();
    let p = f.primary_hdu().unwrap();
    p.write_key(&mut f, "OBSID", 42i64).unwrap();
    p.write_key(&mut f, "TELESCOP", "LAMOST").unwrap();
    p.write_key(&mut f, "CLASS", "GALAXY").unwrap();
    p.write_key(&mut f, "Z", 0.25f64).unwrap();
    p.write_key(&mut f, "Z_ERR", -9999.0f64).unwrap();
    let cols: Vec<ConcreteColumnDescription> = ["FLUX", "IVAR", "WAVELENGTH", "ANDMASK", "ORMASK"]
        .iter()
        .map(|c| {
            ColumnDescription::new(*c)
                .with_type(ColumnDataType::Float)
                .that_repeats(n)
                .create()
                .unwrap()
        })
        .collect();
    let t = f.create_table("COADD", &cols).unwrap();
    let flux: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut ivar = vec![1f32; n];
    if n > 3 {
        ivar[2] = 0.0;
        ivar[3] = f32::NAN;
    }
    t.write_col(&mut f, "FLUX", &flux).unwrap();
    t.write_col(&mut f, "IVAR", &ivar).unwrap();
    t.write_col(&mut f, "WAVELENGTH", wavelength).unwrap();
    t.write_col(&mut f, "ANDMASK", andmask).unwrap();
    t.write_col(&mut f, "ORMASK", andmask).unwrap();
}

#[test]
fn lamost_lrs_written_cases() {
    let dir = tempfile::tempdir().unwrap();

    // Decreasing wavelengths are reversed; zero and NaN ivar are kept.
    let path = dir.path().join("lrs-decreasing.fits");
    write_lrs(
        &path,
        &[5000.0, 4999.0, 4998.0, 4997.0, 4996.0],
        &[0.0, 1.0, 2.0, 0.0, 4.0],
    );
    assert_eq!(detect(&path).unwrap(), Format::LamostLrs);
    let s = only(read_file(&path).2);
    assert_eq!(s.wavelength, vec![4996.0, 4997.0, 4998.0, 4999.0, 5000.0]);
    assert_eq!(s.flux, vec![4.0, 3.0, 2.0, 1.0, 0.0]);
    assert_eq!(s.mask, vec![4, 0, 2, 1, 0]);
    assert!(s.ivar[1].is_nan() && s.ivar[2] == 0.0);
    assert_eq!(s.id, "42");
    assert_eq!(s.labels.class.as_deref(), Some("GALAXY"));
    assert_eq!(s.labels.redshift, Some(0.25));
    assert_eq!(s.labels.redshift_err, None, "−9999 means unknown");
    assert_eq!(s.medium, Medium::Unknown, "no VACUUM keyword");

    // A fractional mask value: an error naming the file and ANDMASK.
    let path = dir.path().join("lrs-badmask.fits");
    write_lrs(&path, &[4000.0, 4001.0, 4002.0], &[0.0, 0.5, 0.0]);
    let e = read_as(Format::LamostLrs, &path).unwrap_err();
    assert_names_file(&e, &path);
    assert!(
        e.to_string().contains("ANDMASK") && e.to_string().contains("pixel 1"),
        "{e}"
    );

    // Non-monotonic wavelengths: an error naming WAVELENGTH.
    let path = dir.path().join("lrs-zigzag.fits");
    write_lrs(&path, &[4000.0, 4002.0, 4001.0, 4003.0], &[0.0; 4]);
    let e = read_as(Format::LamostLrs, &path).unwrap_err();
    assert_names_file(&e, &path);
    assert!(
        e.to_string().contains("COADD") && e.to_string().contains("WAVELENGTH"),
        "{e}"
    );
}

/// Writes a small MaNGA-like file: `WAVE`, `FLUX`, `IVAR`, `MASK`, `SRES`
/// (3 × n) and `Z`.
fn write_manga(path: &Path, wave: &[f64], flux: &[f32]) {
    let n = wave.len();
    let mut f = FitsFile::create(path).open().unwrap();
    let img = |f: &mut FitsFile, name: &str, t: ImageType, dims: &[usize]| {
        f.create_image(
            name,
            &ImageDescription {
                data_type: t,
                dimensions: dims,
            },
        )
        .unwrap()
    };
    let h = img(&mut f, "WAVE", ImageType::Double, &[n]);
    h.write_image(&mut f, wave).unwrap();
    let h = img(&mut f, "FLUX", ImageType::Float, &[3, n]);
    h.write_image(&mut f, flux).unwrap();
    let mut ivar = vec![1f32; 3 * n];
    for v in &mut ivar[n..2 * n] {
        *v = 0.0;
    }
    let h = img(&mut f, "IVAR", ImageType::Float, &[3, n]);
    h.write_image(&mut f, &ivar).unwrap();
    let h = img(&mut f, "MASK", ImageType::Long, &[3, n]);
    h.write_image(&mut f, &vec![0i32; 3 * n]).unwrap();
    let h = img(&mut f, "SRES", ImageType::Double, &[3, n]);
    h.write_image(&mut f, &vec![2000f64; 3 * n]).unwrap();
    let h = img(&mut f, "Z", ImageType::Double, &[3]);
    h.write_image(&mut f, &[0.1f64, 0.2, 0.3]).unwrap();
}

#[test]
fn manga_written_cases() {
    let dir = tempfile::tempdir().unwrap();
    let n = 6;
    let wave: Vec<f64> = (0..n).map(|i| 4000.0 + i as f64).collect();
    let mut flux: Vec<f32> = (0..3 * n).map(|i| i as f32).collect();
    flux[..n].fill(f32::NAN);

    // NaN flux (row 0) and zero ivar (row 1) are passed on as they are.
    let path = dir.path().join("manga-ok.fits");
    write_manga(&path, &wave, &flux);
    let (format, count, items) = read_file(&path);
    assert_eq!((format, count), (Format::MangaDap, 3));
    let spectra: Vec<Spectrum> = items.into_iter().map(|r| r.unwrap()).collect();
    assert!(spectra[0].flux.iter().all(|f| f.is_nan()));
    assert!(spectra[1].ivar.iter().all(|v| *v == 0.0));
    assert_eq!(spectra[1].valid_fraction(), 0.0);
    assert_eq!(spectra[2].flux[0], 12.0);
    assert_eq!(spectra[2].labels.redshift, Some(0.3));
    assert_eq!(spectra[2].id, "manga-ok:2");

    // Decreasing WAVE: every row reversed.
    let path = dir.path().join("manga-rev.fits");
    let rev: Vec<f64> = wave.iter().rev().copied().collect();
    write_manga(&path, &rev, &flux);
    let spectra: Vec<Spectrum> = read_as(Format::MangaDap, &path).unwrap();
    assert_eq!(spectra[2].wavelength, wave);
    assert_eq!(spectra[2].flux, vec![17.0, 16.0, 15.0, 14.0, 13.0, 12.0]);

    // Non-monotonic WAVE: each row is an error item naming file, row and
    // field; the stream goes on to the end.
    let path = dir.path().join("manga-zigzag.fits");
    let mut zig = wave.clone();
    zig.swap(2, 3);
    write_manga(&path, &zig, &flux);
    let items: Vec<_> = read_unit(&InputUnit::single(Format::MangaDap, &path))
        .unwrap()
        .collect();
    assert_eq!(items.len(), 3);
    for (row, item) in items.into_iter().enumerate() {
        let e = item.unwrap_err();
        assert_names_file(&e, &path);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("row {row}")) && msg.contains("WAVE"),
            "{msg}"
        );
    }

    // FLUX of the wrong width: a file-level error naming FLUX.
    let path = dir.path().join("manga-shape.fits");
    {
        let mut f = FitsFile::create(&path).open().unwrap();
        for (name, dims) in [
            ("WAVE", vec![5]),
            ("FLUX", vec![2, 4]),
            ("IVAR", vec![2, 4]),
        ] {
            let h = f
                .create_image(
                    name,
                    &ImageDescription {
                        data_type: ImageType::Float,
                        dimensions: &dims,
                    },
                )
                .unwrap();
            h.write_image(&mut f, &vec![1f32; dims.iter().product()])
                .unwrap();
        }
    }
    let e = read_as(Format::MangaDap, &path).unwrap_err();
    assert_names_file(&e, &path);
    assert!(e.to_string().contains("[FLUX]"), "{e}");
}

/// Writes a small Gaia-XP-sampled-like table of `rows` × `n` samples.
fn write_xp(path: &Path, n: usize, sampling: Option<&str>, err: &[f32]) {
    let mut f = FitsFile::create(path).open().unwrap();
    let cols = [
        ColumnDescription::new("source_id")
            .with_type(ColumnDataType::LongLong)
            .create()
            .unwrap(),
        ColumnDescription::new("flux")
            .with_type(ColumnDataType::Double)
            .that_repeats(n)
            .create()
            .unwrap(),
        ColumnDescription::new("flux_error")
            .with_type(ColumnDataType::Float)
            .that_repeats(n)
            .create()
            .unwrap(),
    ];
    let t = f.create_table("XP", &cols).unwrap();
    t.write_col(&mut f, "source_id", &[7i64, 8]).unwrap();
    let flux: Vec<f64> = (0..2 * n).map(|i| 1e-17 * (1.0 + i as f64)).collect();
    t.write_col(&mut f, "flux", &flux).unwrap();
    t.write_col(&mut f, "flux_error", err).unwrap();
    if let Some(s) = sampling {
        t.write_key(&mut f, "SAMPLING", s).unwrap();
    }
}

#[test]
fn gaia_xp_written_cases() {
    let dir = tempfile::tempdir().unwrap();

    // 343 samples and no SAMPLING keyword: the DR3 grid; σ 0 → ivar 0,
    // σ NaN → ivar NaN.
    let path = dir.path().join("xp-dr3.fits");
    let mut err = vec![1e-18f32; 2 * 343];
    err[5] = 0.0;
    err[6] = f32::NAN;
    write_xp(&path, 343, None, &err);
    let (format, count, items) = read_file(&path);
    assert_eq!((format, count), (Format::GaiaXpSampled, 2));
    let spectra: Vec<Spectrum> = items.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(spectra[0].wavelength[0], 3360.0);
    assert_eq!(spectra[1].wavelength[342], 10200.0);
    assert_eq!(spectra[0].ivar[5], 0.0);
    assert!(spectra[0].ivar[6].is_nan());
    assert_eq!(spectra[1].id, "8");

    // A SAMPLING keyword of 5 wavelengths in nm.
    let path = dir.path().join("xp-sampled.fits");
    write_xp(
        &path,
        5,
        Some("(400.0, 500.0, 600.0, 700.0, 800.0)"),
        &[1e-18; 10],
    );
    let spectra = read_as(Format::GaiaXpSampled, &path).unwrap();
    assert_eq!(
        spectra[0].wavelength,
        vec![4000.0, 5000.0, 6000.0, 7000.0, 8000.0]
    );

    // Pseudo-wavelengths under SAMPLING: refused, saying why.
    let path = dir.path().join("xp-pseudo.fits");
    write_xp(
        &path,
        5,
        Some("(0.0, 15.0, 30.0, 45.0, 60.0)"),
        &[1e-18; 10],
    );
    let e = read_as(Format::GaiaXpSampled, &path).unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e}");
    assert_names_file(&e, &path);
    assert!(e.to_string().contains("pseudo-wavelength"), "{e}");

    // SAMPLING of the wrong length: an error naming the keyword.
    let path = dir.path().join("xp-short.fits");
    write_xp(&path, 5, Some("(400.0, 500.0, 600.0)"), &[1e-18; 10]);
    let e = read_as(Format::GaiaXpSampled, &path).unwrap_err();
    assert_names_file(&e, &path);
    assert!(
        e.to_string().contains("SAMPLING") && e.to_string().contains("3 sample"),
        "{e}"
    );

    // A non-monotonic SAMPLING: each row an error naming the row.
    let path = dir.path().join("xp-zigzag.fits");
    write_xp(
        &path,
        5,
        Some("(400.0, 600.0, 500.0, 700.0, 800.0)"),
        &[1e-18; 10],
    );
    let items: Vec<_> = read_unit(&InputUnit::single(Format::GaiaXpSampled, &path))
        .unwrap()
        .collect();
    assert_eq!(items.len(), 2);
    for (row, item) in items.into_iter().enumerate() {
        let e = item.unwrap_err();
        assert_names_file(&e, &path);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("row {row}")) && msg.contains("SAMPLING"),
            "{msg}"
        );
    }
}
