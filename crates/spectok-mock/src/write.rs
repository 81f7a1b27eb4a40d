//! Writers of the survey file layouts.
//!
//! Each writer produces the HDUs, columns and keywords the real files have
//! and spectok-io's readers use:
//! - SDSS: `COADD` and `SPECOBJ` tables;
//! - DESI: `FIBERMAP` and the B/R/Z image HDUs, and a `redrock-*` file with
//!   the `REDSHIFTS` table;
//! - APOGEE: unnamed image HDUs on a log-linear WCS, and the `FPARAM`
//!   table of `aspcapStar`;
//! - GALAH: `normalized` and `relative_error` HDUs, `TEFF_R`… keywords;
//! - LAMOST: a one-row `COADD` array table, labels in the primary header.
//!
//! Bulky products no reader uses are left out (DESI resolution matrices,
//! APOGEE sky/telluric/LSF HDUs, per-exposure tables). Every primary
//! header carries `MOCK = T`, `MOCKGEN` (generator), `MOCKSEED`,
//! `MOCKWHAT` and `MOCKNOTE`.

use std::path::{Path, PathBuf};

use crate::fitsw::{card, Card, Col, FitsOut, Pixels};
use crate::objects::{MockObject, ObjectClass};
use crate::observe::{ivar_of, quantise, round_bits, Arm, Observation};
use crate::survey::{self, MockSurvey};
use crate::{Result, GENERATOR};

/// Where and how files are written.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    /// Output root; files go into per-survey folders below it.
    pub root: &'a Path,
    pub gzip: bool,
    pub seed: u64,
    /// Flux quantisation of derived products (as
    /// [`crate::ObserveConfig::quantize`]).
    pub quantize: f64,
}

impl Target<'_> {
    /// `rel` with `.gz` appended when compressing.
    fn name(&self, rel: String) -> PathBuf {
        if self.gzip {
            PathBuf::from(rel + ".gz")
        } else {
            PathBuf::from(rel)
        }
    }
}

/// The mock marker cards of every primary header.
fn mock_cards(seed: u64, what: &str) -> Vec<Card> {
    vec![
        card("MOCK", true, "spectok mock spectrum: NOT survey data"),
        card("MOCKGEN", GENERATOR, "generator"),
        card("MOCKSEED", seed as i64, "generator seed"),
        card("MOCKWHAT", what, "mock object(s)"),
        card("MOCKNOTE", "for tests and benchmarks; not survey data", ""),
    ]
}

fn f32s(v: impl Iterator<Item = f64>) -> Vec<f32> {
    v.map(|x| x as f32).collect()
}

/// A value quantised like the flux of pixel `i` (for model/sky columns).
fn q_like(arm: &Arm, i: usize, x: f64, q: f64) -> f64 {
    let s = arm.sigma[i];
    if s.is_finite() {
        quantise(x, s, q)
    } else {
        round_bits(x, 10)
    }
}

/// Median S/N of the valid pixels (`flux/σ` of the model).
fn snr_of(arm: &Arm) -> f64 {
    crate::observe::median(
        arm.model
            .iter()
            .zip(&arm.sigma)
            .filter(|(_, s)| s.is_finite())
            .map(|(m, s)| m / s)
            .collect(),
    )
}

fn arm0(obs: &Observation) -> &Arm {
    &obs.arms[0]
}

// ---------------------------------------------------------------- SDSS

/// Writes `sdss/PLATE/spec-PLATE-MJD-FIBER.fits`: primary header,
/// `COADD` table (`flux`, `loglam`, `ivar`, `and_mask`, `or_mask`, `wdisp`,
/// `sky`, `model`) and a one-row `SPECOBJ` table with the labels. Returns
/// the path relative to the root.
pub fn sdss(
    t: &Target,
    plate: u32,
    mjd: u32,
    fiber: u32,
    obj: &MockObject,
    obs: &Observation,
) -> Result<PathBuf> {
    let rel = t.name(format!(
        "sdss/{plate:04}/spec-{plate:04}-{mjd:05}-{fiber:04}.fits"
    ));
    let a = arm0(obs);
    let n = a.len();
    let g = a.grid;
    let q = t.quantize;
    let mut primary = vec![
        card("TELESCOP", "SDSS 2.5-M", "Sloan Digital Sky Survey"),
        card("FLAVOR", "science", "exposure type"),
        card("PLATEID", plate, "plate id"),
        card("MJD", mjd, "MJD of observation"),
        card("FIBERID", fiber, "fiber id"),
        card("NAME", format!("{plate:04}-{mjd:05}-01"), "plate-MJD-rerun"),
        card("RADEG", obj.ra, "right ascension, deg"),
        card("DECDEG", obj.dec, "declination, deg"),
        card("PLUG_RA", obj.ra, "fiber RA, deg"),
        card("PLUG_DEC", obj.dec, "fiber Dec, deg"),
        card("VACUUM", true, "wavelengths are in vacuum"),
        card("COEFF0", g.start, "log10 of the first wavelength"),
        card("COEFF1", g.step, "log10 wavelength step"),
        card("BUNIT", "1E-17 erg/cm^2/s/Ang", "flux unit"),
    ];
    primary.extend(mock_cards(
        t.seed,
        &format!("{} {}", obj.class.name(), obj.id),
    ));
    let mut f = FitsOut::create(&t.root.join(&rel), t.gzip, None)?;
    f.cards(0, &primary)?;

    let ln10 = std::f64::consts::LN_10;
    let cols = vec![
        ("flux", Col::F32(f32s(a.flux.iter().copied()), 1)),
        (
            "loglam",
            Col::F32(f32s((0..n).map(|i| g.start + g.step * i as f64)), 1),
        ),
        ("ivar", Col::F32((0..n).map(|i| a.ivar(i)).collect(), 1)),
        (
            "and_mask",
            Col::I32(a.mask.iter().map(|&m| m as i32).collect(), 1),
        ),
        (
            "or_mask",
            Col::I32(
                a.mask
                    .iter()
                    .zip(&a.or_only)
                    .map(|(&m, &o)| (m | o) as i32)
                    .collect(),
                1,
            ),
        ),
        (
            "wdisp",
            Col::F32(
                f32s((0..n).map(|i| round_bits(a.lsf[i] / (a.wavelength[i] * ln10 * g.step), 8))),
                1,
            ),
        ),
        (
            "sky",
            Col::F32(f32s((0..n).map(|i| q_like(a, i, a.sky[i], q))), 1),
        ),
        (
            "model",
            Col::F32(f32s((0..n).map(|i| q_like(a, i, a.model[i], q))), 1),
        ),
    ];
    f.table("COADD", &cols, &[])?;

    let (wmin, wmax) = (a.wavelength[0], a.wavelength[n - 1]);
    let snr = snr_of(a);
    let star = obj.star;
    let s1 = |s: &str| vec![s.to_string()];
    let specobj = vec![
        ("SURVEY", Col::Str(s1("boss"), 6)),
        ("INSTRUMENT", Col::Str(s1("BOSS"), 4)),
        ("PROGRAMNAME", Col::Str(s1("spectok-mock"), 23)),
        ("PLATEQUALITY", Col::Str(s1("good"), 8)),
        ("SPECPRIMARY", Col::U8(vec![1], 1)),
        ("SPECOBJID", Col::Str(s1(&obj.id.to_string()), 22)),
        ("SOURCETYPE", Col::Str(s1(source_type(obj)), 19)),
        ("PLATE", Col::I32(vec![plate as i32], 1)),
        ("MJD", Col::I32(vec![mjd as i32], 1)),
        ("FIBERID", Col::I32(vec![fiber as i32], 1)),
        ("PLUG_RA", Col::F64(vec![obj.ra], 1)),
        ("PLUG_DEC", Col::F64(vec![obj.dec], 1)),
        ("CLASS", Col::Str(s1(obj.class.name()), 6)),
        ("SUBCLASS", Col::Str(s1(&obj.subclass), 21)),
        ("Z", Col::F32(vec![obj.z as f32], 1)),
        (
            "Z_ERR",
            Col::F32(
                vec![crate::observe::redshift_err(obj, MockSurvey::Sdss) as f32],
                1,
            ),
        ),
        ("RCHI2", Col::F32(vec![1.0], 1)),
        ("DOF", Col::I32(vec![n as i32], 1)),
        ("ZWARNING", Col::I32(vec![0], 1)),
        ("VDISP", Col::F32(vec![obj.vdisp.unwrap_or(0.0) as f32], 1)),
        (
            "VDISP_ERR",
            Col::F32(vec![obj.vdisp.map(|v| 0.05 * v).unwrap_or(0.0) as f32], 1),
        ),
        ("WAVEMIN", Col::F32(vec![wmin as f32], 1)),
        ("WAVEMAX", Col::F32(vec![wmax as f32], 1)),
        ("SN_MEDIAN_ALL", Col::F32(vec![snr as f32], 1)),
        ("SN_MEDIAN", Col::F32(vec![snr as f32; 5], 5)),
        (
            "ELODIE_TEFF",
            Col::F32(vec![star.map(|p| p.teff).unwrap_or(0.0) as f32], 1),
        ),
        (
            "ELODIE_LOGG",
            Col::F32(vec![star.map(|p| p.logg).unwrap_or(0.0) as f32], 1),
        ),
        (
            "ELODIE_FEH",
            Col::F32(vec![star.map(|p| p.fe_h).unwrap_or(0.0) as f32], 1),
        ),
    ];
    f.table("SPECOBJ", &specobj, &[])?;
    f.finish()?;
    Ok(rel)
}

fn source_type(obj: &MockObject) -> &'static str {
    match obj.class {
        ObjectClass::Galaxy => "GALAXY",
        ObjectClass::Qso => "QSO",
        ObjectClass::Star => "STD",
    }
}

// ---------------------------------------------------------------- DESI

/// The `thru` night of every mock DESI coadd.
pub const DESI_NIGHT: u32 = 20250101;

/// A DESI fibre: the object (`None` for a sky fibre) and its observation.
pub type Fibre<'a> = (Option<&'a MockObject>, &'a Observation);

/// Writes `desi/coadd-PETAL-TILE-thru20250101.fits` (primary, `FIBERMAP`,
/// then `X_WAVELENGTH`, `X_FLUX`, `X_IVAR`, `X_MASK` for X in B, R, Z) and
/// the matching `redrock-*` file (`REDSHIFTS`, `FIBERMAP`). Returns both
/// paths relative to the root.
pub fn desi(t: &Target, tile: u32, petal: u32, fibres: &[Fibre]) -> Result<(PathBuf, PathBuf)> {
    let night = DESI_NIGHT;
    let stem = format!("{petal}-{tile}-thru{night}.fits");
    let rel = t.name(format!("desi/coadd-{stem}"));
    let rel_rr = t.name(format!("desi/redrock-{stem}"));
    let nspec = fibres.len();
    let what = format!("{} DESI fibres", nspec);
    let mut primary = vec![
        card("SPGRP", "cumulative", "spectral grouping"),
        card("SPGRPVAL", night, "grouping value"),
        card("NIGHT", night, "last night"),
        card("TILEID", tile, "tile id"),
        card("SPECTRO", petal, "spectrograph"),
        card("PETAL", petal, "petal"),
    ];
    primary.extend(mock_cards(t.seed, &what));
    let fibermap = fibermap(tile, petal, fibres);

    let mut f = FitsOut::create(&t.root.join(&rel), t.gzip, None)?;
    f.cards(0, &primary)?;
    f.table("FIBERMAP", &fibermap, &[])?;
    f.table("EXP_FIBERMAP", &exp_fibermap(tile, petal, fibres), &[])?;
    let arms = survey::DESI_ARMS;
    for (k, &(name, _, npix)) in arms.iter().enumerate() {
        let up = name.to_ascii_uppercase();
        let wave = &fibres
            .first()
            .map(|(_, o)| o.arms[k].wavelength.clone())
            .unwrap_or_default();
        f.image(
            Some(&format!("{up}_WAVELENGTH")),
            &[npix],
            Pixels::F64(wave),
            &[card("BUNIT", "Angstrom", "")],
        )?;
        let flux: Vec<f32> = fibres
            .iter()
            .flat_map(|(_, o)| o.arms[k].flux.iter().map(|&x| x as f32))
            .collect();
        let ivar: Vec<f32> = fibres
            .iter()
            .flat_map(|(_, o)| (0..npix).map(move |i| o.arms[k].ivar(i)))
            .collect();
        let mask: Vec<u32> = fibres
            .iter()
            .flat_map(|(_, o)| o.arms[k].mask.iter().copied())
            .collect();
        f.image(
            Some(&format!("{up}_FLUX")),
            &[nspec, npix],
            Pixels::F32(&flux),
            &[card("BUNIT", "10**-17 erg/(s cm2 Angstrom)", "")],
        )?;
        f.image(
            Some(&format!("{up}_IVAR")),
            &[nspec, npix],
            Pixels::F32(&ivar),
            &[card("BUNIT", "10**+34 (s2 cm4 Angstrom2) / erg2", "")],
        )?;
        f.image(
            Some(&format!("{up}_MASK")),
            &[nspec, npix],
            Pixels::U32(&mask),
            &[],
        )?;
    }
    f.finish()?;

    // Redrock catalogue.
    let mut rr_primary = vec![
        card("RRVER", "0.17.0", "redrock version emulated"),
        card("TILEID", tile, "tile id"),
        card("PETAL", petal, "petal"),
        card("SPGRP", "cumulative", "spectral grouping"),
        card("NIGHT", night, "last night"),
    ];
    rr_primary.extend(mock_cards(t.seed, &what));
    let mut r = FitsOut::create(&t.root.join(&rel_rr), t.gzip, None)?;
    r.cards(0, &rr_primary)?;
    let mut z = Vec::new();
    let mut zerr = Vec::new();
    let mut zwarn = Vec::new();
    let mut spectype = Vec::new();
    let mut subtype = Vec::new();
    let mut npixels = Vec::new();
    let mut dchi2 = Vec::new();
    for (o, obs) in fibres {
        let valid = obs
            .arms
            .iter()
            .map(|a| a.sigma.iter().filter(|s| s.is_finite()).count())
            .sum::<usize>();
        npixels.push(valid as i64);
        match o {
            Some(o) => {
                z.push(o.z);
                zerr.push(crate::observe::redshift_err(o, MockSurvey::Desi));
                zwarn.push(0i64);
                spectype.push(o.class.name().to_string());
                subtype.push(o.star.map(|p| p.spectral_letter()).unwrap_or_default());
                dchi2.push(25.0 * obs.snr * obs.snr + 100.0);
            }
            None => {
                // Sky fibres: redrock flags them with ZWARN bit 0 (SKY).
                z.push(0.0);
                zerr.push(0.0);
                zwarn.push(1);
                spectype.push("GALAXY".into());
                subtype.push(String::new());
                dchi2.push(0.0);
            }
        }
    }
    let ids: Vec<i64> = fibres.iter().map(|(_, o)| o.id).collect();
    let chi2: Vec<f64> = npixels.iter().map(|&n| n as f64).collect();
    let redshifts = vec![
        ("TARGETID", Col::I64(ids, 1)),
        ("Z", Col::F64(z, 1)),
        ("ZERR", Col::F64(zerr, 1)),
        ("ZWARN", Col::I64(zwarn, 1)),
        ("CHI2", Col::F64(chi2, 1)),
        ("COEFF", Col::F64(vec![0.0; 10 * nspec], 10)),
        ("NPIXELS", Col::I64(npixels, 1)),
        ("SPECTYPE", Col::Str(spectype, 6)),
        ("SUBTYPE", Col::Str(subtype, 20)),
        ("NCOEFF", Col::I64(vec![10; nspec], 1)),
        ("DELTACHI2", Col::F64(dchi2, 1)),
    ];
    r.table("REDSHIFTS", &redshifts, &[])?;
    r.table("FIBERMAP", &fibermap, &[])?;
    r.finish()?;
    Ok((rel, rel_rr))
}

/// Exposures per mock DESI coadd.
const DESI_EXPOSURES: usize = 3;

/// The per-exposure fibre map: one row per fibre and exposure.
fn exp_fibermap(tile: u32, petal: u32, fibres: &[Fibre]) -> Vec<(&'static str, Col)> {
    let n = fibres.len() * DESI_EXPOSURES;
    let fibre0 = petal as i32 * 500;
    let rows = || (0..DESI_EXPOSURES).flat_map(|e| (0..fibres.len()).map(move |k| (e, k)));
    vec![
        (
            "TARGETID",
            Col::I64(rows().map(|(_, k)| fibres[k].1.id).collect(), 1),
        ),
        ("NIGHT", Col::I32(vec![DESI_NIGHT as i32; n], 1)),
        (
            "EXPID",
            Col::I32(
                rows()
                    .map(|(e, _)| 900_000 + tile as i32 * 10 + e as i32)
                    .collect(),
                1,
            ),
        ),
        (
            "MJD",
            Col::F64(rows().map(|(e, _)| 60676.2 + 0.02 * e as f64).collect(), 1),
        ),
        ("TILEID", Col::I32(vec![tile as i32; n], 1)),
        ("EXPTIME", Col::F64(vec![1000.0; n], 1)),
        ("PETAL_LOC", Col::I16(vec![petal as i16; n], 1)),
        (
            "FIBER",
            Col::I32(rows().map(|(_, k)| fibre0 + k as i32).collect(), 1),
        ),
        ("FIBERSTATUS", Col::I32(vec![0; n], 1)),
    ]
}

fn fibermap(tile: u32, petal: u32, fibres: &[Fibre]) -> Vec<(&'static str, Col)> {
    let n = fibres.len();
    let desi_target = |o: &Option<&MockObject>| -> i64 {
        match o {
            None => 1 << 32,
            Some(o) => match o.class {
                ObjectClass::Galaxy if o.halpha_ew.unwrap_or(0.0) > 5.0 => 1 << 1,
                ObjectClass::Galaxy => 1,
                ObjectClass::Qso => 1 << 2,
                ObjectClass::Star => 1 << 61,
            },
        }
    };
    let fibre0 = petal as i32 * 500;
    vec![
        (
            "TARGETID",
            Col::I64(fibres.iter().map(|(_, o)| o.id).collect(), 1),
        ),
        ("PETAL_LOC", Col::I16(vec![petal as i16; n], 1)),
        (
            "DEVICE_LOC",
            Col::I32((0..n).map(|i| i as i32 + 1).collect(), 1),
        ),
        (
            "LOCATION",
            Col::I64(
                (0..n).map(|i| petal as i64 * 1000 + i as i64 + 1).collect(),
                1,
            ),
        ),
        (
            "FIBER",
            Col::I32((0..n).map(|i| fibre0 + i as i32).collect(), 1),
        ),
        ("COADD_FIBERSTATUS", Col::I32(vec![0; n], 1)),
        (
            "TARGET_RA",
            Col::F64(
                fibres
                    .iter()
                    .map(|(o, _)| o.map(|o| o.ra).unwrap_or(0.0))
                    .collect(),
                1,
            ),
        ),
        (
            "TARGET_DEC",
            Col::F64(
                fibres
                    .iter()
                    .map(|(o, _)| o.map(|o| o.dec).unwrap_or(0.0))
                    .collect(),
                1,
            ),
        ),
        (
            "OBJTYPE",
            Col::Str(
                fibres
                    .iter()
                    .map(|(o, _)| if o.is_some() { "TGT" } else { "SKY" }.to_string())
                    .collect(),
                3,
            ),
        ),
        (
            "DESI_TARGET",
            Col::I64(fibres.iter().map(|(o, _)| desi_target(o)).collect(), 1),
        ),
        ("TILEID", Col::I32(vec![tile as i32; n], 1)),
        ("COADD_NUMEXP", Col::I16(vec![DESI_EXPOSURES as i16; n], 1)),
        ("COADD_EXPTIME", Col::F32(vec![3000.0; n], 1)),
    ]
}

// ---------------------------------------------------------------- APOGEE

/// Writes `apogee/FIELD/apStar-r6-ID.fits` (HDUs 1 flux, 2 σ, 3 mask on the
/// 8575-pixel log-linear grid, `(nvisits+2) × 8575` for several visits) and
/// `aspcapStar-r6-l30e.2-ID.fits` (normalised flux, σ, model, and the
/// `FPARAM` table). Both are in the star's rest frame, as the real files.
pub fn apogee(
    t: &Target,
    field: u32,
    obj: &MockObject,
    obs: &Observation,
) -> Result<(PathBuf, PathBuf)> {
    let id = obj.id.to_string();
    let dir = format!("apogee/mock{field:03}");
    let rel = t.name(format!("{dir}/apStar-r6-{id}.fits"));
    let rel_asp = t.name(format!("{dir}/aspcapStar-r6-l30e.2-{id}.fits"));
    let a = arm0(obs);
    let n = a.len();
    let g = a.grid;
    let p = obj.star.unwrap_or(crate::objects::StarParams {
        teff: 0.0,
        logg: 0.0,
        fe_h: 0.0,
        alpha_m: 0.0,
        vmicro: 0.0,
        vbroad: 0.0,
        rv: 0.0,
    });
    let nvis = obs.visits.len().max(1);
    let wcs = |bunit: &str| {
        vec![
            card("CRVAL1", g.start, "log10 of the first wavelength"),
            card("CDELT1", g.step, "log10 wavelength step"),
            card("CRPIX1", 1i64, ""),
            card("CTYPE1", "LOG-LINEAR", ""),
            card("DC-FLAG", 1i64, ""),
            card("BUNIT", bunit, ""),
        ]
    };
    let chips = chip_ranges(a);
    let snr = snr_of(a);
    // (+ 0.0 turns a rounded −0 into 0.)
    let round = |x: f64, step: f64| (x / step).round() * step + 0.0;
    let mut primary = vec![
        card("OBJID", id.as_str(), "object id"),
        card("TELESCOP", "apo25m", ""),
        card("SURVEY", "apogee", ""),
        card("FIELD", format!("mock{field:03}"), ""),
        card("RA", obj.ra, ""),
        card("DEC", obj.dec, ""),
        card("NVISITS", nvis, "number of visits"),
        card("VRAD", 0.0, ""),
        card("VHELIO", round(p.rv, 1e-4), "heliocentric velocity, km/s"),
        card("VSCATTER", if nvis > 1 { 0.1 } else { 0.0 }, ""),
        card("VERR", 0.05, ""),
        card("SNR", round(snr, 1e-3), "median S/N"),
        card("STARFLAG", 0i64, ""),
        card("ANDFLAG", 0i64, ""),
        card("RVTEFF", round(p.teff, 100.0), "RV template Teff"),
        card("RVLOGG", round(p.logg, 0.5), "RV template log g"),
        card("RVFEH", round(p.fe_h, 0.5), "RV template [Fe/H]"),
        card("NWAVE", n, ""),
        card("CRVAL1", g.start, ""),
        card("CDELT1", g.step, ""),
        card("CRPIX1", 1i64, ""),
        card("CTYPE1", "LOG-LINEAR", ""),
        card("DC-FLAG", 1i64, ""),
    ];
    for (k, (lo, hi)) in ["B", "G", "R"].iter().zip(chips) {
        primary.push(card(&format!("{k}MIN"), lo, ""));
        primary.push(card(&format!("{k}MAX"), hi, ""));
    }
    primary.extend(mock_cards(t.seed, &format!("STAR {}", obj.id)));

    let err = |s: f64| {
        if s.is_finite() {
            round_bits(s, 8) as f32
        } else {
            1.0e10
        }
    };
    let mut flux: Vec<f32> = Vec::new();
    let mut sigma: Vec<f32> = Vec::new();
    let mut mask: Vec<i16> = Vec::new();
    let comb_f = f32s(a.flux.iter().copied());
    let comb_s: Vec<f32> = a.sigma.iter().map(|&s| err(s)).collect();
    let comb_m: Vec<i16> = a.mask.iter().map(|&m| m as u16 as i16).collect();
    let shape: Vec<usize> = if nvis > 1 {
        for _ in 0..2 {
            flux.extend_from_slice(&comb_f);
            sigma.extend_from_slice(&comb_s);
            mask.extend_from_slice(&comb_m);
        }
        let root = (nvis as f64).sqrt();
        for v in &obs.visits {
            flux.extend(v.iter().map(|&x| x as f32));
            sigma.extend(a.sigma.iter().map(|&s| err(s * root)));
            mask.extend_from_slice(&comb_m);
        }
        vec![nvis + 2, n]
    } else {
        flux = comb_f;
        sigma = comb_s;
        mask = comb_m;
        vec![n]
    };
    let mut f = FitsOut::create(&t.root.join(&rel), t.gzip, None)?;
    f.cards(0, &primary)?;
    f.image(
        None,
        &shape,
        Pixels::F32(&flux),
        &wcs("Flux (10^-17 erg/s/cm^2/Ang)"),
    )?;
    f.image(
        None,
        &shape,
        Pixels::F32(&sigma),
        &wcs("Error (10^-17 erg/s/cm^2/Ang)"),
    )?;
    f.image(
        None,
        &shape,
        Pixels::I16(&mask),
        &wcs("Flag Mask (bitwise)"),
    )?;
    f.finish()?;

    // aspcapStar: continuum-normalised, σ 0 where there is no data.
    let q = t.quantize;
    let norm_f: Vec<f32> = (0..n)
        .map(|i| {
            let s = a.sigma[i];
            if s.is_finite() && a.continuum[i] > 0.0 {
                quantise(a.flux[i] / a.continuum[i], s / a.continuum[i], q) as f32
            } else {
                0.0
            }
        })
        .collect();
    let norm_s: Vec<f32> = (0..n)
        .map(|i| {
            let s = a.sigma[i];
            if s.is_finite() && a.continuum[i] > 0.0 {
                round_bits(s / a.continuum[i], 8) as f32
            } else {
                0.0
            }
        })
        .collect();
    let norm_m: Vec<f32> = (0..n)
        .map(|i| {
            let s = a.sigma[i];
            if s.is_finite() && a.continuum[i] > 0.0 {
                quantise(a.model[i] / a.continuum[i], s / a.continuum[i], q) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mut asp_primary = vec![
        card("OBJ", id.as_str(), "object id"),
        card("RA", obj.ra, ""),
        card("DEC", obj.dec, ""),
        card("FIELD", format!("mock{field:03}"), ""),
        card("SNR", round(snr, 1e-3), ""),
        card("VHELIO", round(p.rv, 1e-4), ""),
        card("NVISITS", nvis, ""),
    ];
    asp_primary.extend(mock_cards(t.seed, &format!("STAR {}", obj.id)));
    let asp_wcs: Vec<Card> = wcs("").into_iter().filter(|c| c.key != "BUNIT").collect();
    let fparam = vec![
        p.teff as f32,
        p.logg as f32,
        p.vmicro as f32,
        p.fe_h as f32,
        0.0,
        0.0,
        p.alpha_m as f32,
        p.vbroad.log10() as f32,
        0.0,
    ];
    let file_name = format!("apStar-r6-{id}.fits");
    let table = vec![
        ("FILE", Col::Str(vec![file_name], 40)),
        ("APOGEE_ID", Col::Str(vec![id.clone()], 18)),
        ("FIELD", Col::Str(vec![format!("mock{field:03}")], 8)),
        ("RA", Col::F64(vec![obj.ra], 1)),
        ("DEC", Col::F64(vec![obj.dec], 1)),
        ("SNR", Col::F32(vec![snr as f32], 1)),
        ("VHELIO", Col::F32(vec![p.rv as f32], 1)),
        ("NVISITS", Col::I16(vec![nvis as i16], 1)),
        ("STARFLAG", Col::I32(vec![0], 1)),
        ("CLASS", Col::Str(vec![aspcap_class(&p)], 5)),
        ("PARAM", Col::F32(fparam.clone(), 9)),
        ("FPARAM", Col::F32(fparam, 9)),
        ("PARAMFLAG", Col::I32(vec![0; 9], 9)),
        ("ASPCAPFLAG", Col::I32(vec![0], 1)),
    ];
    let mut f = FitsOut::create(&t.root.join(&rel_asp), t.gzip, None)?;
    f.cards(0, &asp_primary)?;
    f.image(None, &[n], Pixels::F32(&norm_f), &asp_wcs)?;
    f.image(None, &[n], Pixels::F32(&norm_s), &asp_wcs)?;
    f.image(None, &[n], Pixels::F32(&norm_m), &asp_wcs)?;
    f.table("", &table, &[])?;
    f.finish()?;
    Ok((rel, rel_asp))
}

/// ASPCAP grid class (`GKg`, `Md`, …) of a star.
fn aspcap_class(p: &crate::objects::StarParams) -> String {
    let t = if p.teff < 4000.0 {
        "M"
    } else if p.teff < 5500.0 {
        "GK"
    } else {
        "F"
    };
    let g = if p.logg < 3.8 { "g" } else { "d" };
    format!("{t}{g}")
}

/// First and last pixel of each APOGEE chip (blue, green, red): the runs
/// of pixels that are not chip-gap pixels (gap pixels carry exactly the
/// BADPIX bit and no data; rejected pixels inside a chip carry more bits).
fn chip_ranges(a: &Arm) -> Vec<(usize, usize)> {
    let gap = |i: usize| a.mask[i] == survey::mask::APOGEE_BADPIX && !a.sigma[i].is_finite();
    let mut out = Vec::new();
    let mut start = None;
    for i in 0..a.len() {
        match (gap(i), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                out.push((s, i - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, a.len() - 1));
    }
    out.resize(3, (0, 0));
    out
}

// ---------------------------------------------------------------- GALAH

/// Writes the four GALAH CCD files `galah/GROUP/<sobject_id><ccd>.fits`:
/// HDU 0 flux (counts), HDU 1 `normalized`, HDU 2 `relative_error`, with a
/// linear air-wavelength WCS and the quick-look labels (`TEFF_R`,
/// `LOGG_R`, `FE_H_R`, `A_FE_R`, …) in the header.
pub fn galah(t: &Target, group: u32, obj: &MockObject, obs: &Observation) -> Result<Vec<PathBuf>> {
    let id = obj.id.to_string();
    let p = obj.star;
    let q = t.quantize;
    let mut out = Vec::new();
    for (k, a) in obs.arms.iter().enumerate() {
        let ccd = k + 1;
        let rel = t.name(format!("galah/{group:04}/{id}{ccd}.fits"));
        let n = a.len();
        let g = a.grid;
        let snr = snr_of(a);
        let wcs = vec![
            card("CTYPE1", "LINEAR", ""),
            card("CRVAL1", g.start, "first wavelength, A (air)"),
            card("CDELT1", g.step, "wavelength step, A"),
            card("CD1_1", g.step, ""),
            card("CRPIX1", 1.0, ""),
            card("CUNIT1", "angstroms", ""),
        ];
        let mut primary = wcs.clone();
        let res = (a.wavelength[n / 2]
            / survey::MockSurvey::Galah.resolution(&a.name, a.wavelength[n / 2])
            * 1e4)
            .round()
            / 1e4;
        primary.extend([
            card("TELESCOP", "Anglo-Australian Telescope", ""),
            card("INSTRUME", "HERMES-2dF", ""),
            card("OBJ_NAME", format!("mock_{id}"), ""),
            card("RA_OBS", obj.ra, ""),
            card("DEC_OBS", obj.dec, ""),
            card("SNR", (snr * 1e3).round() / 1e3, "median S/N of this CCD"),
            card("RES", res, "resolution FWHM, A"),
            card("PIPE_VER", "6.0", ""),
            card("BUNIT", "counts", ""),
        ]);
        if let Some(p) = p {
            let r4 = |x: f64| (x * 1e5).round() / 1e5;
            primary.extend([
                card("RV", r4(p.rv), "radial velocity, km/s"),
                card("E_RV", 0.1, ""),
                card("RVCOM", r4(p.rv), "combined radial velocity, km/s"),
                card("E_RVCOM", 0.1, ""),
                card("TEFF_R", r4(p.teff), "quick-look Teff"),
                card("LOGG_R", r4(p.logg), "quick-look log g"),
                card("FE_H_R", r4(p.fe_h), "quick-look [Fe/H]"),
                card("A_FE_R", r4(p.alpha_m), "quick-look [alpha/Fe]"),
                card("VMIC_R", r4(p.vmicro), ""),
                card("VBROAD_R", r4(p.vbroad), ""),
                card("PAR_OK", 1i64, ""),
            ]);
        }
        primary.extend(mock_cards(t.seed, &format!("STAR {}", obj.id)));
        let flux: Vec<f64> = a.flux.clone();
        let normalized: Vec<f64> = (0..n)
            .map(|i| {
                let c = a.continuum[i];
                if c > 0.0 {
                    quantise(a.flux[i] / c, a.sigma[i] / c, q)
                } else {
                    f64::NAN
                }
            })
            .collect();
        let rel_err: Vec<f64> = (0..n)
            .map(|i| {
                let (s, fl) = (a.sigma[i], a.flux[i]);
                if s.is_finite() && fl != 0.0 {
                    round_bits(s / fl, 8)
                } else {
                    f64::NAN
                }
            })
            .collect();
        let mut f = FitsOut::create(&t.root.join(&rel), t.gzip, Some((&[n], Pixels::F64(&flux))))?;
        f.cards(0, &primary)?;
        f.image(Some("normalized"), &[n], Pixels::F64(&normalized), &wcs)?;
        f.image(Some("relative_error"), &[n], Pixels::F64(&rel_err), &wcs)?;
        f.finish()?;
        out.push(rel);
    }
    Ok(out)
}

// ---------------------------------------------------------------- LAMOST

/// Writes `lamost/PLAN/spec-LMJD-PLAN_spSP-FIBER.fits`: primary header with
/// the labels (`CLASS`, `SUBCLASS`, `Z`, `Z_ERR`, `OBSID`, …) and a one-row
/// `COADD` table of array columns (`FLUX`, `IVAR`, `WAVELENGTH`,
/// `ANDMASK`, `ORMASK`, `NORMALIZATION`).
pub fn lamost(
    t: &Target,
    lmjd: u32,
    plan: u32,
    spid: u32,
    fiber: u32,
    obj: &MockObject,
    obs: &Observation,
) -> Result<PathBuf> {
    let planid = format!("MOCK{plan:05}");
    let base = format!("spec-{lmjd}-{planid}_sp{spid:02}-{fiber:03}.fits");
    let rel = t.name(format!("lamost/{planid}/{base}"));
    let a = arm0(obs);
    let n = a.len();
    let g = a.grid;
    let snr = (snr_of(a) * 100.0).round() / 100.0;
    let objtype = match obj.class {
        ObjectClass::Star => "Star",
        ObjectClass::Galaxy => "galaxy",
        ObjectClass::Qso => "QSO",
    };
    let subclass = match obj.class {
        ObjectClass::Galaxy | ObjectClass::Qso => "Non".to_string(),
        ObjectClass::Star => obj.subclass.clone(),
    };
    let mut primary = vec![
        card("FILENAME", base.as_str(), ""),
        card("OBSID", obj.id as i64, "observation id"),
        card("AUTHOR", "spectok-mock", ""),
        card("DATA_V", "MOCK", ""),
        card("TELESCOP", "LAMOST", ""),
        card("LMJD", lmjd, "local MJD"),
        card("MJD", lmjd - 1, ""),
        card("PLANID", planid.as_str(), ""),
        card("RA", obj.ra, ""),
        card("DEC", obj.dec, ""),
        card("FIBERID", fiber, ""),
        card("SPID", spid, ""),
        card("OBJTYPE", objtype, ""),
        card("OBS_TYPE", "OBJ", ""),
        card("HELIO", true, ""),
        card("VACUUM", true, "wavelengths are in vacuum"),
        card("WFITTYPE", "LOG-LINEAR", ""),
        card("COEFF0", g.start, ""),
        card("COEFF1", g.step, ""),
        card("CLASS", obj.class.name(), ""),
        card("SUBCLASS", subclass, ""),
        card("Z", (obj.z * 1e7).round() / 1e7, ""),
        card(
            "Z_ERR",
            (crate::observe::redshift_err(obj, MockSurvey::LamostLrs) * 1e9).round() / 1e9,
            "",
        ),
        card("ZFLAG", "LASP", ""),
        card("SNRU", (snr * 0.3 * 100.0).round() / 100.0, ""),
        card("SNRG", snr, ""),
        card("SNRR", snr, ""),
        card("SNRI", snr, ""),
        card("SNRZ", (snr * 0.8 * 100.0).round() / 100.0, ""),
    ];
    primary.extend(mock_cards(
        t.seed,
        &format!("{} {}", obj.class.name(), obj.id),
    ));
    let q = t.quantize;
    let norm: Vec<f32> = (0..n)
        .map(|i| {
            let c = a.continuum[i];
            if a.sigma[i].is_finite() && c > 0.0 {
                quantise(a.flux[i] / c, a.sigma[i] / c, q) as f32
            } else {
                0.0
            }
        })
        .collect();
    let cols = vec![
        ("FLUX", Col::F32(f32s(a.flux.iter().copied()), n)),
        (
            "IVAR",
            Col::F32((0..n).map(|i| ivar_of(a.sigma[i])).collect(), n),
        ),
        (
            "WAVELENGTH",
            Col::F32(f32s(a.wavelength.iter().copied()), n),
        ),
        (
            "ANDMASK",
            Col::F32(a.mask.iter().map(|&m| m as f32).collect(), n),
        ),
        (
            "ORMASK",
            Col::F32(a.mask.iter().map(|&m| m as f32).collect(), n),
        ),
        ("NORMALIZATION", Col::F32(norm, n)),
    ];
    let mut f = FitsOut::create(&t.root.join(&rel), t.gzip, None)?;
    f.cards(0, &primary)?;
    f.table("COADD", &cols, &[])?;
    f.finish()?;
    Ok(rel)
}
