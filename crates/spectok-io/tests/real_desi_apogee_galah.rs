//! The DESI, APOGEE and GALAH readers on the real survey files
//! (`shared/data/real`), checked against the spot values of its README,
//! and on damaged copies of them.

use std::path::{Path, PathBuf};

use fitsio::images::{ImageDescription, ImageType};
use fitsio::FitsFile;
use spectok_io::fits::Fits;
use spectok_io::readers::apogee::{ApStarReader, ApVisitReader, AspcapStarReader};
use spectok_io::readers::desi::DesiCoaddReader;
use spectok_io::readers::galah::GalahReader;
use spectok_io::{
    count_unit, detect, plan_inputs, read_unit, Error, Format, InputUnit, Medium, Reader, Spectrum,
    Survey,
};

fn real(sub: &str) -> Option<PathBuf> {
    spectok_io::testdata::real_data_dir().map(|d| d.join(sub))
}

fn read_all(unit: &InputUnit) -> Vec<Spectrum> {
    read_unit(unit)
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn read_one(format: Format, path: &Path) -> Spectrum {
    let unit = InputUnit::single(format, path);
    assert_eq!(count_unit(&unit).unwrap(), 1, "{}", path.display());
    let mut v = read_all(&unit);
    assert_eq!(v.len(), 1, "{}", path.display());
    v.remove(0)
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// Segment names, pixel counts and wavelength ranges.
fn seg_summary(s: &Spectrum) -> Vec<(String, usize, f64, f64)> {
    s.segments
        .iter()
        .map(|g| {
            (
                g.name.clone(),
                g.len(),
                s.wavelength[g.start],
                s.wavelength[g.end - 1],
            )
        })
        .collect()
}

fn assert_one_line(e: &Error, must: &[&str]) {
    let m = e.to_string();
    eprintln!("expected error: {m}");
    assert!(!m.contains('\n'), "not one line: {m}");
    for w in must {
        assert!(m.contains(w), "{m:?} does not name {w:?}");
    }
}

/// The error of a result that must be one.
fn must_fail<T>(r: spectok_io::Result<T>, what: &str) -> Error {
    match r {
        Err(e) => e,
        Ok(_) => panic!("{what}"),
    }
}

fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    v.sort();
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------- detection

#[test]
fn detects_every_desi_apogee_galah_file() {
    let Some(root) = spectok_io::testdata::real_data_dir() else {
        return;
    };
    let mut n = 0;
    for sub in ["desi", "apogee", "galah"] {
        for f in files_in(&root.join(sub), ".fits") {
            let nm = name(&f);
            let want = if nm.starts_with("coadd-") || nm.starts_with("spectra-") {
                Format::DesiCoadd
            } else if nm.starts_with("redrock-") {
                Format::DesiRedrock
            } else if nm.starts_with("apStar-") {
                Format::ApogeeApStar
            } else if nm.starts_with("aspcapStar-") {
                Format::ApogeeAspcapStar
            } else if nm.starts_with("apVisit-") {
                Format::ApogeeApVisit
            } else {
                Format::GalahCcd
            };
            assert_eq!(detect(&f).unwrap_or_else(|e| panic!("{e}")), want, "{nm}");
            n += 1;
        }
    }
    assert_eq!(n, 4 + 13 + 16);
}

// --------------------------------------------------------------------- DESI

const DESI_ARMS: [(&str, usize, f64, f64); 3] = [
    ("b", 2751, 3600.0, 5800.0),
    ("r", 2326, 5760.0, 7620.0),
    ("z", 2881, 7520.0, 9824.0),
];

fn assert_desi_arms(s: &Spectrum) {
    let segs = seg_summary(s);
    assert_eq!(segs.len(), 3);
    for ((name, n, lo, hi), (wn, wnpix, wlo, whi)) in segs.iter().zip(DESI_ARMS) {
        assert_eq!(name, wn);
        assert_eq!(*n, wnpix);
        assert!(
            close(*lo, wlo, 0.1) && close(*hi, whi, 0.1),
            "{name}: {lo}-{hi}"
        );
    }
    assert_eq!(s.len(), 2751 + 2326 + 2881);
    let (lo, hi) = s.wavelength_range();
    assert!(close(lo, 3600.0, 0.1) && close(hi, 9824.0, 0.1));
    assert_eq!(s.survey, Survey::Desi);
    assert_eq!(s.medium, Medium::Vacuum);
    s.validate().unwrap();
}

#[test]
fn desi_coadd_with_redrock_labels() {
    let (Some(coadd), Some(rr)) = (
        real("desi/coadd-4-80613-thru20210324.fits"),
        real("desi/redrock-4-80613-thru20210324.fits"),
    ) else {
        return;
    };
    let unit = InputUnit {
        format: Format::DesiCoadd,
        files: vec![coadd.clone()],
        companions: vec![rr],
    };
    assert_eq!(count_unit(&unit).unwrap(), 1);
    let v = read_all(&unit);
    assert_eq!(v.len(), 1);
    let s = &v[0];
    assert_desi_arms(s);
    assert_eq!(s.id, "39633345008634465");
    assert_eq!(s.source.file, coadd);
    assert_eq!(s.source.row, Some(0));
    let l = &s.labels;
    assert!(
        close(l.redshift.unwrap(), 0.36874, 1e-5),
        "{:?}",
        l.redshift
    );
    assert!(close(l.redshift_err.unwrap(), 1.18e-6, 1e-8));
    assert_eq!(l.redshift_warning, Some(0));
    assert_eq!(l.class.as_deref(), Some("GALAXY"));
    assert_eq!(l.subclass, None);
    assert_eq!(l.text["objtype"], "TGT");
    assert!(close(l.extra["ra"], 105.48977, 1e-4) && close(l.extra["dec"], 56.66930, 1e-4));
    // This coadd has no masked and no zero-ivar pixel.
    assert!(s.mask.iter().all(|&m| m == 0));
    assert!(s.ivar.iter().all(|&v| v > 0.0));

    // Without its companion the same fibre has no redshift labels.
    let alone = read_one(Format::DesiCoadd, &coadd);
    assert_eq!(alone.labels.redshift, None);
    assert_eq!(alone.labels.class, None);
    assert_eq!(alone.labels.text["objtype"], "TGT");
    assert_eq!(alone.flux, s.flux);
}

const DESI_5_169: [i64; 5] = [
    -1695072,
    39633297352951412,
    -1695064,
    -1695073,
    39633300968442591,
];

#[test]
fn desi_multi_fibre_coadd_and_spectra_keep_every_fibre() {
    let Some(dir) = real("desi") else {
        return;
    };
    for file in [
        "coadd-5-169-thru20210419.fits",
        "spectra-5-169-thru20210419.fits",
    ] {
        let path = dir.join(file);
        let unit = InputUnit::single(Format::DesiCoadd, &path);
        assert_eq!(DesiCoaddReader.count(&unit).unwrap(), 5, "{file}");
        let v = read_all(&unit);
        let ids: Vec<String> = v.iter().map(|s| s.id.clone()).collect();
        let want: Vec<String> = DESI_5_169.iter().map(|t| t.to_string()).collect();
        assert_eq!(ids, want, "{file}");
        let mut masked = 0;
        for (row, s) in v.iter().enumerate() {
            assert_desi_arms(s);
            assert_eq!(s.source.row, Some(row as u64));
            let objtype = &s.labels.text["objtype"];
            if DESI_5_169[row] < 0 {
                assert_eq!(objtype, "", "{file} row {row}");
            } else {
                assert_eq!(objtype, "TGT", "{file} row {row}");
            }
            assert_eq!(s.labels.redshift, None);
            masked += s.mask.iter().filter(|&&m| m != 0).count();
        }
        if file.starts_with("spectra-") {
            // The B/R/Z_MASK HDUs are tile-compressed here; their set pixels
            // (counted with astropy) come through.
            assert_eq!(masked, 11004 + 9308 + 11537, "{file}");
            let max = v.iter().flat_map(|s| s.mask.iter()).max().copied();
            assert_eq!(max, Some(513));
        } else {
            assert_eq!(masked, 0, "{file}");
        }
        // Fibres with TARGETID < 0 hold no information in this coadd.
        let zero_ivar: usize = v
            .iter()
            .map(|s| s.ivar.iter().filter(|&&x| x == 0.0).count())
            .sum();
        if file.starts_with("coadd-") {
            assert_eq!(zero_ivar, 11004 + 9304 + 11524);
        }
    }
}

#[test]
fn plan_pairs_desi_coadd_with_its_redrock() {
    let Some(dir) = real("desi") else {
        return;
    };
    let plan = plan_inputs(&[dir.to_string_lossy().into_owned()], None);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.units.len(), 3);
    assert!(plan.units.iter().all(|u| u.format == Format::DesiCoadd));
    let u = plan
        .units
        .iter()
        .find(|u| name(u.main_file()) == "coadd-4-80613-thru20210324.fits")
        .unwrap();
    assert_eq!(
        u.companions,
        vec![dir.join("redrock-4-80613-thru20210324.fits")]
    );
    let v = read_all(u);
    assert!(close(v[0].labels.redshift.unwrap(), 0.36874, 1e-5));
    // Labels are joined by TARGETID: no fibre of the other files gets the
    // redshift of coadd-4-80613's target, whatever companion it is given.
    for other in plan.units.iter().filter(|o| !std::ptr::eq(*o, u)) {
        for sp in read_all(other) {
            assert_eq!(sp.labels.redshift, None, "{}", other.main_file().display());
        }
    }
    let total: usize = plan.units.iter().map(|u| count_unit(u).unwrap()).sum();
    assert_eq!(total, 1 + 5 + 5);
}

// ------------------------------------------------------------------- APOGEE

/// README values of one apStar file.
struct ApStarSpot {
    id: &'static str,
    snr: f64,
    vhelio: f64,
    rv_teff: f64,
    rv_logg: f64,
    rv_feh: f64,
    nvisits: f64,
    /// Pixels with σ = 1e10 (chip gaps and rejected pixels), counted with astropy.
    zero_ivar: usize,
}

const APSTARS: [ApStarSpot; 4] = [
    ApStarSpot {
        id: "2M03290406+3117075",
        snr: 33.127,
        vhelio: 19.604,
        rv_teff: 3300.0,
        rv_logg: 5.0,
        rv_feh: -1.5,
        nvisits: 1.0,
        zero_ivar: 855,
    },
    ApStarSpot {
        id: "2M17334253-1654573",
        snr: 186.493,
        vhelio: -72.9519,
        rv_teff: 3500.0,
        rv_logg: 2.0,
        rv_feh: 0.5,
        nvisits: 2.0,
        zero_ivar: 911,
    },
    ApStarSpot {
        id: "2M19535443+4424541",
        snr: 148.793,
        vhelio: 10.0029,
        rv_teff: 3100.0,
        rv_logg: 5.0,
        rv_feh: -0.5,
        nvisits: 2.0,
        zero_ivar: 876,
    },
    ApStarSpot {
        id: "2M00452143+1634446",
        snr: 79.0154,
        vhelio: 6.73279,
        rv_teff: 2700.0,
        rv_logg: 4.0,
        rv_feh: -0.5,
        nvisits: 3.0,
        zero_ivar: 839,
    },
];

#[test]
fn apstar_combined_spectrum() {
    let Some(dir) = real("apogee") else {
        return;
    };
    for ApStarSpot {
        id,
        snr,
        vhelio,
        rv_teff,
        rv_logg,
        rv_feh,
        nvisits,
        zero_ivar: nbad,
    } in APSTARS
    {
        let path = dir.join(format!("apStar-r6-{id}.fits"));
        let s = read_one(Format::ApogeeApStar, &path);
        assert_eq!(s.id, id);
        assert_eq!(s.len(), 8575);
        assert_eq!(seg_summary(&s).len(), 1);
        assert_eq!(s.segments[0].name, "all");
        let (lo, hi) = s.wavelength_range();
        assert!(
            close(lo, 15100.8, 0.1) && close(hi, 16999.8, 0.1),
            "{id}: {lo}-{hi}"
        );
        assert_eq!(s.medium, Medium::Vacuum);
        assert_eq!(s.source.row, Some(0));
        let l = &s.labels;
        assert_eq!(l.class.as_deref(), Some("STAR"));
        assert_eq!(
            (l.teff, l.logg, l.fe_h),
            (None, None, None),
            "{id}: RV grid values are not labels"
        );
        assert!(close(l.extra["snr"], snr, 1e-3));
        assert!(close(l.extra["vhelio"], vhelio, 1e-3));
        assert!(close(l.extra["rv_teff"], rv_teff, 1e-6));
        assert!(close(l.extra["rv_logg"], rv_logg, 1e-6));
        assert!(close(l.extra["rv_feh"], rv_feh, 1e-6));
        assert!(close(l.extra["nvisits"], nvisits, 0.0));
        // Chip gaps and rejected pixels: flux 0, σ = 1e10 → ivar 0.
        let zero: Vec<usize> = (0..s.len()).filter(|&i| s.ivar[i] == 0.0).collect();
        assert_eq!(zero.len(), nbad, "{id}");
        assert!(zero.iter().all(|&i| s.flux[i] == 0.0 && s.mask[i] & 1 == 1));
        // Row 0 of HDU 1, untouched.
        let mut fits = Fits::open(&path).unwrap();
        assert_eq!(s.flux, fits.read_image_row_f32(1, 0, "flux").unwrap());
        let sigma = fits.read_image_row_f32(2, 0, "error").unwrap();
        assert!(close(
            s.ivar[4000] as f64,
            1.0 / (sigma[4000] as f64).powi(2),
            1e-6
        ));
    }
}

/// (star, FPARAM[0..7], PARAM teff known?, SNR)
const ASPCAPS: [(&str, [f64; 7], bool, f64); 5] = [
    (
        "2M03290406+3117075",
        [2903.6, 1.0417, 0.222, -2.3601, -0.40641, 0.65932, -0.40883],
        false,
        33.127,
    ),
    (
        "2M17334253-1654573",
        [3788.4, 1.3062, 0.222, -0.064415, 0.16192, 0.31817, 0.22532],
        true,
        186.493,
    ),
    (
        "2M19535443+4424541",
        [2749.0, 3.7172, 0.6271, -0.25717, 0.0, 0.0, -0.070585],
        true,
        148.793,
    ),
    (
        "2M00452143+1634446",
        [2500.6, 1.0209, 0.222, -2.2223, 0.15378, -0.98104, 0.045673],
        false,
        79.0154,
    ),
    (
        "2M08501918+1056436",
        [3170.5, 4.435, 0.0595, -0.28629, 0.0, 0.0, -0.036306],
        true,
        435.837,
    ),
];

#[test]
fn aspcapstar_parameters() {
    let Some(dir) = real("apogee") else {
        return;
    };
    for (id, fp, param_teff_known, snr) in ASPCAPS {
        let path = dir.join(format!("aspcapStar-r6-l30e.2-{id}.fits"));
        let s = read_one(Format::ApogeeAspcapStar, &path);
        assert_eq!(s.id, id);
        assert_eq!(s.len(), 8575);
        let (lo, hi) = s.wavelength_range();
        assert!(close(lo, 15100.8, 0.1) && close(hi, 16999.8, 0.1));
        let l = &s.labels;
        assert!(
            close(l.teff.unwrap(), fp[0], 0.05),
            "{id} teff {:?}",
            l.teff
        );
        assert!(close(l.logg.unwrap(), fp[1], 1e-3));
        assert!(close(l.fe_h.unwrap(), fp[3], 1e-3));
        assert!(close(l.alpha_m.unwrap(), fp[6], 1e-3));
        assert!(close(l.extra["vmicro"], fp[2], 1e-3));
        assert!(close(l.extra["c_m"], fp[4], 1e-3));
        assert!(close(l.extra["n_m"], fp[5], 1e-3));
        assert!(close(l.extra["snr"], snr, 1e-2));
        // PARAM (calibrated) is −9999 for these stars' Teff and logg where
        // ASPCAP gave none: unknown values are absent, never −9999.
        assert_eq!(l.extra.contains_key("param_teff"), param_teff_known, "{id}");
        assert!(l.extra.values().all(|v| *v > -9000.0));
        assert!(
            !l.extra.contains_key("param_logg")
                || id == "2M17334253-1654573"
                || id == "2M19535443+4424541"
        );
        assert_eq!(l.text["apogee_id"], id);
        // σ = 0 at the 1061 pixels ASPCAP leaves out → ivar 0.
        assert_eq!(s.ivar.iter().filter(|&&v| v == 0.0).count(), 1061);
    }
}

#[test]
fn apvisit_three_chips_increasing() {
    let Some(dir) = real("apogee") else {
        return;
    };
    // (file, OBJID, λ min, λ max)
    let visits = [
        (
            "apVisit-2M00452143+1634446-0.fits",
            "2M00452143+1634446",
            15142.3,
            16954.6,
        ),
        (
            "apVisit-2M00452143+1634446-1.fits",
            "2M00452143+1634446",
            15142.1,
            16954.5,
        ),
        (
            "apVisit-2M08501918+1056436-0.fits",
            "2M08501918+1056436",
            15143.0,
            16955.1,
        ),
        (
            "apVisit-r13-5095-55844-128.fits",
            "2M01183798+8403419",
            15142.7,
            16954.8,
        ),
    ];
    for (file, id, wlo, whi) in visits {
        let path = dir.join(file);
        let s = read_one(Format::ApogeeApVisit, &path);
        assert_eq!(s.id, id);
        let segs = seg_summary(&s);
        let names: Vec<&str> = segs.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(names, ["chip_c", "chip_b", "chip_a"], "{file}");
        assert!(segs.iter().all(|g| g.1 == 4096));
        assert!(
            segs.windows(2).all(|w| w[0].3 < w[1].2),
            "{file}: chips in λ order"
        );
        for g in &s.segments {
            assert!(s.wavelength[g.start..g.end].windows(2).all(|w| w[0] < w[1]));
        }
        let (lo, hi) = s.wavelength_range();
        assert!(
            close(lo, wlo, 0.1) && close(hi, whi, 0.1),
            "{file}: {lo}-{hi}"
        );
        // Pixels moved, values unchanged: the first pixel is the last of
        // chip c (row 2), the last pixel the first of chip a (row 0).
        let mut fits = Fits::open(&path).unwrap();
        let row2 = fits.read_image_row_f32(1, 2, "flux").unwrap();
        let row0 = fits.read_image_row_f32(1, 0, "flux").unwrap();
        assert_eq!(s.flux[0], row2[4095]);
        assert_eq!(s.flux[s.len() - 1], row0[0]);
        let mut rev = row2.clone();
        rev.reverse();
        assert_eq!(&s.flux[..4096], &rev[..]);
        assert!(s.labels.extra["snr"] > 0.0);
        assert!(s.ivar.iter().all(|v| v.is_finite() && *v > 0.0));
    }
}

// -------------------------------------------------------------------- GALAH

/// (sobject_id, teff_r, logg_r, fe_h_r)
const GALAH_STARS: [(&str, f64, f64, f64); 4] = [
    ("210115000101001", 4688.42627, 2.18679, -0.27187),
    ("210115000101002", 4710.94434, 2.40343, -0.20078),
    ("210115000101003", 6591.50635, 3.92868, -0.81768),
    ("210115000101004", 6942.77637, 3.79979, -0.99249),
];

/// CCD wavelength ranges of star 001 (README).
const GALAH_CCDS_001: [(f64, f64); 4] = [
    (4714.1, 4902.2),
    (5648.7, 5872.7),
    (6476.3, 6734.9),
    (7584.1, 7885.4),
];

#[test]
fn galah_stars_from_directory_plan() {
    let Some(dir) = real("galah") else {
        return;
    };
    let plan = plan_inputs(&[dir.to_string_lossy().into_owned()], None);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.units.len(), 4);
    for (unit, (id, teff, logg, fe_h)) in plan.units.iter().zip(GALAH_STARS) {
        assert_eq!(unit.format, Format::GalahCcd);
        assert_eq!(unit.files.len(), 4);
        assert_eq!(count_unit(unit).unwrap(), 1);
        let v = read_all(unit);
        assert_eq!(v.len(), 1);
        let s = &v[0];
        assert_eq!(s.id, id);
        assert_eq!(s.survey, Survey::Galah);
        assert_eq!(s.medium, Medium::Air);
        assert_eq!(s.source.file, dir.join(format!("{id}1.fits")));
        let segs = seg_summary(s);
        let names: Vec<&str> = segs.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(names, ["ccd1", "ccd2", "ccd3", "ccd4"]);
        assert!(segs.iter().all(|g| g.1 == 4096));
        if id.ends_with("001") {
            for (g, (lo, hi)) in segs.iter().zip(GALAH_CCDS_001) {
                assert!(
                    close(g.2, lo, 0.1) && close(g.3, hi, 0.1),
                    "{id} {}: {}-{}",
                    g.0,
                    g.2,
                    g.3
                );
            }
        }
        let l = &s.labels;
        assert!(close(l.teff.unwrap(), teff, 1e-3), "{id}");
        assert!(close(l.logg.unwrap(), logg, 1e-4));
        assert!(close(l.fe_h.unwrap(), fe_h, 1e-4));
        assert!(l.alpha_m.is_some());
        assert_eq!(l.text["ccds"], "1,2,3,4");
        assert_eq!(l.text["labels_from"], "header");
        assert_eq!(l.class.as_deref(), Some("STAR"));
        // Fluxed spectrum, σ = |relative_error · flux|.
        let mut fits = Fits::open(&unit.files[2]).unwrap();
        let (flux, _) = fits.read_image_f64(0, "flux").unwrap();
        let (rel, _) = fits.read_image_f64(2, "relative_error").unwrap();
        let g = &s.segments[2];
        for i in [0usize, 1000, 4095] {
            assert_eq!(s.flux[g.start + i], flux[i] as f32);
            let want = 1.0 / (rel[i] * flux[i]).powi(2);
            assert!(close(s.ivar[g.start + i] as f64, want, want * 1e-6));
        }
        assert!(s.mask.iter().all(|&m| m == 0));
    }
}

#[test]
fn galah_single_ccd_finds_siblings_and_partial_star_reads() {
    let Some(dir) = real("galah") else {
        return;
    };
    let one = dir.join("2101150001010033.fits");
    let plan = plan_inputs(&[one.to_string_lossy().into_owned()], None);
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.units.len(), 1);
    let want: Vec<PathBuf> = (1..=4)
        .map(|c| dir.join(format!("210115000101003{c}.fits")))
        .collect();
    assert_eq!(plan.units[0].files, want);

    // A star with two of its CCDs is still one spectrum.
    let unit = InputUnit {
        format: Format::GalahCcd,
        files: vec![
            dir.join("2101150001010021.fits"),
            dir.join("2101150001010023.fits"),
        ],
        companions: vec![],
    };
    let s = &read_all(&unit)[0];
    let names: Vec<&str> = s.segments.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["ccd1", "ccd3"]);
    assert_eq!(s.len(), 2 * 4096);
    assert_eq!(s.labels.text["ccds"], "1,3");
    assert!(close(s.labels.teff.unwrap(), 4710.94434, 1e-3));
}

// --------------------------------------------------------------- bad inputs

fn tmp_copy(tmp: &Path, src: &Path) -> PathBuf {
    let dst = tmp.join(src.file_name().unwrap());
    std::fs::copy(src, &dst).unwrap();
    let mut perm = std::fs::metadata(&dst).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&dst, perm).unwrap();
    dst
}

fn truncate(path: &Path, keep: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(keep).unwrap();
}

#[test]
fn truncated_files_give_one_line_errors() {
    let Some(root) = spectok_io::testdata::real_data_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, Format, &dyn Reader); 4] = [
        (
            "apogee/apStar-r6-2M17334253-1654573.fits",
            Format::ApogeeApStar,
            &ApStarReader,
        ),
        (
            "apogee/apVisit-2M00452143+1634446-0.fits",
            Format::ApogeeApVisit,
            &ApVisitReader,
        ),
        (
            "desi/coadd-5-169-thru20210419.fits",
            Format::DesiCoadd,
            &DesiCoaddReader,
        ),
        (
            "galah/2101150001010011.fits",
            Format::GalahCcd,
            &GalahReader,
        ),
    ];
    for (file, format, reader) in cases {
        let path = tmp_copy(tmp.path(), &root.join(file));
        let len = std::fs::metadata(&path).unwrap().len();
        // A quarter of each file ends inside the HDUs the reader needs.
        truncate(&path, len / 4);
        let unit = InputUnit::single(format, &path);
        let nm = name(&path);
        let err = match reader.read(&unit) {
            Err(e) => e,
            Ok(mut it) => match it.find_map(|r| r.err()) {
                Some(e) => e,
                None => panic!("{file}: truncated file read without error"),
            },
        };
        assert_one_line(&err, &[&nm, "["]);
        let det = detect(&path);
        if let Err(e) = det {
            assert_one_line(&e, &[&nm]);
        }
    }
    // The aspcapStar's parameter table lies at the end of the file.
    let path = tmp_copy(
        tmp.path(),
        &root.join("apogee/aspcapStar-r6-l30e.2-2M17334253-1654573.fits"),
    );
    truncate(&path, 2880 * 20);
    let err = must_fail(
        AspcapStarReader.read(&InputUnit::single(Format::ApogeeAspcapStar, &path)),
        "truncated aspcapStar read",
    );
    assert_one_line(&err, &[&name(&path), "["]);
    // Cut inside the data of that table (its header is intact).
    let path = tmp_copy(
        tmp.path(),
        &root.join("apogee/aspcapStar-r6-l30e.2-2M17334253-1654573.fits"),
    );
    let len = std::fs::metadata(&path).unwrap().len();
    truncate(&path, len - 5700);
    let err = must_fail(
        AspcapStarReader.read(&InputUnit::single(Format::ApogeeAspcapStar, &path)),
        "aspcapStar with a cut table read",
    );
    assert_one_line(&err, &[&name(&path), "[4]"]);
}

#[test]
fn desi_with_corrupt_redrock_is_a_file_error_naming_it() {
    let Some(dir) = real("desi") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let coadd = tmp_copy(tmp.path(), &dir.join("coadd-4-80613-thru20210324.fits"));
    let rr = tmp_copy(tmp.path(), &dir.join("redrock-4-80613-thru20210324.fits"));
    let unit = InputUnit {
        format: Format::DesiCoadd,
        files: vec![coadd.clone()],
        companions: vec![rr.clone()],
    };
    // Garbage in place of the FITS cards.
    std::fs::write(&rr, b"this is not a FITS file at all\n".repeat(100)).unwrap();
    let err = must_fail(DesiCoaddReader.read(&unit), "corrupt redrock accepted");
    assert_one_line(&err, &["redrock-4-80613-thru20210324.fits"]);
    // A redrock file without its REDSHIFTS table.
    let mut f = FitsFile::create(&rr).overwrite().open().unwrap();
    let desc = ImageDescription {
        data_type: ImageType::Float,
        dimensions: &[3],
    };
    f.create_image("OTHER", &desc).unwrap();
    drop(f);
    let err = must_fail(
        DesiCoaddReader.read(&unit),
        "redrock without REDSHIFTS accepted",
    );
    assert_one_line(&err, &["redrock-4-80613-thru20210324.fits", "[REDSHIFTS]"]);
    // A companion that does not exist.
    std::fs::remove_file(&rr).unwrap();
    let err = must_fail(DesiCoaddReader.read(&unit), "missing redrock accepted");
    assert_one_line(&err, &["redrock-4-80613-thru20210324.fits"]);
    // Counting needs headers only, not the companion.
    assert_eq!(DesiCoaddReader.count(&unit).unwrap(), 1);
}

/// Writes an apStar-like file (DR13 header keys) with only `nhdu` image
/// HDUs after the primary.
fn write_apstar(path: &Path, nhdu: usize, flux: f32, sigma: f32) {
    let mut f = FitsFile::create(path).overwrite().open().unwrap();
    let p = f.primary_hdu().unwrap();
    p.write_key(&mut f, "OBJID", "2M00000000+0000000").unwrap();
    p.write_key(&mut f, "NVISITS", 1i64).unwrap();
    for (i, v) in [flux, sigma, 0.0].into_iter().enumerate().take(nhdu) {
        let desc = ImageDescription {
            data_type: if i == 2 {
                ImageType::Short
            } else {
                ImageType::Float
            },
            dimensions: &[8575],
        };
        let h = f.create_image(format!("HDU{}", i + 1), &desc).unwrap();
        h.write_key(&mut f, "CRVAL1", 4.179).unwrap();
        h.write_key(&mut f, "CDELT1", 6e-6).unwrap();
        h.write_key(&mut f, "CRPIX1", 1i64).unwrap();
        h.write_key(&mut f, "CTYPE1", "LOG-LINEAR").unwrap();
        if i == 2 {
            h.write_image(&mut f, &vec![0i16; 8575]).unwrap();
        } else {
            h.write_image(&mut f, &vec![v; 8575]).unwrap();
        }
    }
}

#[test]
fn apstar_missing_mask_hdu_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("apStar-r6-2M00000000+0000000.fits");
    write_apstar(&path, 2, 1.0, 0.1);
    assert_eq!(detect(&path).unwrap(), Format::ApogeeApStar);
    let unit = InputUnit::single(Format::ApogeeApStar, &path);
    let err = must_fail(ApStarReader.read(&unit), "apStar without HDU 3 read");
    assert_one_line(&err, &["apStar-r6-2M00000000+0000000.fits", "[3]", "mask"]);
    let err = must_fail(ApStarReader.count(&unit), "apStar without HDU 3 counted");
    assert_one_line(&err, &["[3]", "mask"]);

    // The same file with its mask reads.
    write_apstar(&path, 3, 1.0, 0.1);
    let s = read_one(Format::ApogeeApStar, &path);
    assert_eq!(s.len(), 8575);
    assert!(close(s.ivar[0] as f64, 100.0, 1e-3));
}

#[test]
fn nan_everywhere_is_kept_or_rejected_with_location() {
    let Some(root) = spectok_io::testdata::real_data_dir() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();

    // apStar with NaN flux and σ: read, flux NaN kept, ivar 0.
    let path = tmp.path().join("apStar-nan.fits");
    write_apstar(&path, 3, f32::NAN, f32::NAN);
    let s = read_one(Format::ApogeeApStar, &path);
    assert!(s.flux.iter().all(|v| v.is_nan()));
    assert!(s.ivar.iter().all(|&v| v == 0.0));
    assert_eq!(s.valid_fraction(), 0.0);

    // GALAH CCD with NaN flux and relative error.
    let g = tmp_copy(tmp.path(), &root.join("galah/2101150001010011.fits"));
    {
        let mut f = FitsFile::edit(&g).unwrap();
        for h in [0usize, 2] {
            let hdu = f.hdu(h).unwrap();
            hdu.write_image(&mut f, &vec![f64::NAN; 4096]).unwrap();
        }
    }
    let s = &read_all(&InputUnit {
        format: Format::GalahCcd,
        files: vec![g.clone()],
        companions: vec![],
    })[0];
    assert_eq!(s.len(), 4096);
    assert!(s.flux.iter().all(|v| v.is_nan()));
    assert!(s.ivar.iter().all(|&v| v == 0.0));

    // DESI with NaN flux, ivar and wavelengths: the wavelength grid is
    // invalid, so every fibre is an Err item naming file, HDU, row, field.
    let d = tmp_copy(tmp.path(), &root.join("desi/coadd-5-169-thru20210419.fits"));
    {
        let mut f = FitsFile::edit(&d).unwrap();
        for (hdu, n) in [("R_FLUX", 5 * 2326), ("R_IVAR", 5 * 2326)] {
            let h = f.hdu(hdu).unwrap();
            h.write_image(&mut f, &vec![f32::NAN; n]).unwrap();
        }
        let h = f.hdu("R_WAVELENGTH").unwrap();
        h.write_image(&mut f, &vec![f64::NAN; 2326]).unwrap();
    }
    let unit = InputUnit::single(Format::DesiCoadd, &d);
    assert_eq!(count_unit(&unit).unwrap(), 5);
    let items: Vec<_> = read_unit(&unit).unwrap().collect();
    assert_eq!(items.len(), 5);
    for (row, item) in items.into_iter().enumerate() {
        let err = must_fail(item, "NaN wavelengths accepted");
        assert_one_line(
            &err,
            &[
                &name(&d),
                "R_FLUX",
                &format!("row {row}"),
                "field wavelength",
            ],
        );
    }

    // NaN flux and ivar alone (valid grid) are kept as they are.
    let d2 = tmp.path().join("coadd-nan-flux.fits");
    std::fs::copy(root.join("desi/coadd-4-80613-thru20210324.fits"), &d2).unwrap();
    let mut perm = std::fs::metadata(&d2).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(&d2, perm).unwrap();
    {
        let mut f = FitsFile::edit(&d2).unwrap();
        for (hdu, n) in [("B_FLUX", 2751), ("B_IVAR", 2751)] {
            let h = f.hdu(hdu).unwrap();
            h.write_image(&mut f, &vec![f32::NAN; n]).unwrap();
        }
    }
    let s = read_one(Format::DesiCoadd, &d2);
    assert!(s.flux[..2751].iter().all(|v| v.is_nan()));
    assert!(s.ivar[..2751].iter().all(|v| v.is_nan()));
    assert!(s.flux[2751..].iter().all(|v| v.is_finite()));
}

#[test]
fn galah_labels_from_catalog_when_headers_lack_them() {
    let Some(dir) = real("galah") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // CCD files without the *_R keywords, written from the real data.
    let mut files = Vec::new();
    for ccd in 1..=4 {
        let src = dir.join(format!("210115000101003{ccd}.fits"));
        let mut fits = Fits::open(&src).unwrap();
        let (flux, _) = fits.read_image_f64(0, "flux").unwrap();
        let (norm, _) = fits.read_image_f64(1, "normalized").unwrap();
        let (rel, _) = fits.read_image_f64(2, "relative_error").unwrap();
        let crval = fits.require_key_f64(0, "CRVAL1").unwrap();
        let cdelt = fits.require_key_f64(0, "CDELT1").unwrap();
        let dst = tmp.path().join(format!("210115000101003{ccd}.fits"));
        let desc = ImageDescription {
            data_type: ImageType::Double,
            dimensions: &[4096],
        };
        let mut f = FitsFile::create(&dst)
            .with_custom_primary(&desc)
            .open()
            .unwrap();
        let p = f.primary_hdu().unwrap();
        p.write_image(&mut f, &flux).unwrap();
        p.write_key(&mut f, "CRVAL1", crval).unwrap();
        p.write_key(&mut f, "CDELT1", cdelt).unwrap();
        p.write_key(&mut f, "CRPIX1", 1.0).unwrap();
        for (ext, data) in [("normalized", &norm), ("relative_error", &rel)] {
            let h = f.create_image(ext, &desc).unwrap();
            h.write_image(&mut f, data).unwrap();
        }
        files.push(dst);
    }
    assert_eq!(detect(&files[0]).unwrap(), Format::GalahCcd);
    let unit = InputUnit {
        format: Format::GalahCcd,
        files: files.clone(),
        companions: vec![],
    };
    // No catalogue: no stellar labels.
    let s = &read_all(&unit)[0];
    assert_eq!(s.labels.teff, None);
    assert_eq!(s.len(), 4 * 4096);

    // With the catalogue beside the files.
    std::fs::copy(
        dir.join("210115_catalog.txt"),
        tmp.path().join("210115_catalog.txt"),
    )
    .unwrap();
    let s = &read_all(&unit)[0];
    assert_eq!(s.id, "210115000101003");
    assert!(close(s.labels.teff.unwrap(), 6591.5063, 1e-3));
    assert!(close(s.labels.logg.unwrap(), 3.928682, 1e-5));
    assert!(close(s.labels.fe_h.unwrap(), -0.8176751, 1e-6));
    assert!(close(s.labels.alpha_m.unwrap(), 0.6628087, 1e-6));
    assert_eq!(s.labels.text["labels_from"], "210115_catalog.txt line 4");

    // A catalogue without a sobject_id column is an error naming it.
    std::fs::write(tmp.path().join("210115_catalog.txt"), "id,teff_r\n1,5000\n").unwrap();
    let err = must_fail(GalahReader.read(&unit), "bad catalogue accepted");
    assert_one_line(&err, &["210115_catalog.txt", "sobject_id"]);
}

#[test]
fn sigma_and_mask_conversions() {
    use spectok_io::fits::mask_bits;
    use spectok_io::readers::apogee::ivar_from_sigma;
    use spectok_io::readers::galah::ivar_from_relative_error;
    assert_eq!(ivar_from_sigma(0.5), 4.0);
    for bad in [0.0, -1.0, 1.0e10, f32::NAN, f32::INFINITY] {
        assert_eq!(ivar_from_sigma(bad), 0.0, "σ = {bad}");
    }
    // The relative error carries the sign of the flux.
    assert_eq!(ivar_from_relative_error(-10.0, -0.1), 1.0);
    assert_eq!(ivar_from_relative_error(10.0, 0.1), 1.0);
    assert_eq!(ivar_from_relative_error(0.0, f64::INFINITY), 0.0);
    assert_eq!(ivar_from_relative_error(f64::NAN, 0.1), 0.0);
    // Bit patterns survive signed storage and BZERO offsets.
    assert_eq!(mask_bits(-32768, 16), 0x8000);
    assert_eq!(mask_bits(-1, 16), 0xFFFF);
    assert_eq!(mask_bits(-2147483648, 32), 0x8000_0000);
    assert_eq!(mask_bits(4_294_967_295, 32), u32::MAX);
    assert_eq!(mask_bits(513, 32), 513);
}
