//! Every mock file is detected and read back by spectok-io's readers —
//! the same code path as real survey files — with its pixels, labels and
//! noise intact.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use spectok_io::{detect, plan_inputs, read_unit, Format, Spectrum, Survey};
use spectok_mock::generate::{spectra, Observed};
use spectok_mock::{generate, ObjectClass};

use common::{expected, small_config};

/// Reads every spectrum under `dirs` (FITS only), failing on any problem.
fn read_all(dirs: &[&Path]) -> Vec<(Format, Spectrum)> {
    let inputs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let plan = plan_inputs(&inputs, None);
    assert!(plan.problems.is_empty(), "problems: {:?}", plan.problems);
    let mut out = Vec::new();
    for u in &plan.units {
        let it = read_unit(u).unwrap_or_else(|e| panic!("{}: {e}", u.main_file().display()));
        for s in it {
            let s = s.unwrap_or_else(|e| panic!("{}: {e}", u.main_file().display()));
            assert_eq!(s.validate(), Ok(()), "{}", s.source);
            out.push((u.format, s));
        }
    }
    out
}

fn survey_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    ["sdss", "desi", "apogee", "galah", "lamost"]
        .iter()
        .map(|d| root.join(d))
        .filter(|d| d.is_dir())
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-300)
}

/// Compares one read spectrum with the observation it came from and
/// returns (χ² sum, valid pixels) of flux against the noiseless model.
fn check_spectrum(format: Format, s: &Spectrum, exp: &Observed) -> (f64, usize) {
    let (obj, obs) = exp;
    let ctx = format!("{format} {}", s.source);
    assert_eq!(s.survey, obs.survey.survey(), "{ctx}");
    assert_eq!(s.medium, obs.survey.medium(), "{ctx}");
    assert_eq!(s.len(), obs.len(), "{ctx}: pixel count");
    let names: Vec<&str> = s.segments.iter().map(|g| g.name.as_str()).collect();
    if obs.arms.len() > 1 {
        let want: Vec<&str> = obs.arms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, want, "{ctx}: segments");
    }
    let normalised = format == Format::ApogeeAspcapStar;
    let (mut chi2, mut n) = (0.0, 0usize);
    let mut k = 0;
    for a in &obs.arms {
        for i in 0..a.len() {
            let w = s.wavelength[k];
            assert!(
                close(w, a.wavelength[i], 1e-9),
                "{ctx}: λ[{k}] {w} vs {}",
                a.wavelength[i]
            );
            let (model, flux) = if normalised {
                let c = a.continuum[i];
                if a.sigma[i].is_finite() {
                    assert!(
                        (s.flux[k] as f64 - a.flux[i] / c).abs() <= a.sigma[i] / c / 8.0,
                        "{ctx}: normalised flux[{k}]"
                    );
                }
                (a.model[i] / c, s.flux[k] as f64)
            } else {
                assert_eq!(s.flux[k], a.flux[i] as f32, "{ctx}: flux[{k}]");
                (a.model[i], s.flux[k] as f64)
            };
            match obs.survey.survey() {
                Survey::Galah => assert_eq!(s.mask[k], 0),
                _ if normalised => {}
                _ => assert_eq!(s.mask[k], a.mask[i], "{ctx}: mask[{k}]"),
            }
            let iv = s.ivar[k] as f64;
            // GALAH stores σ/flux: a pixel whose flux is exactly 0 cannot
            // carry its σ (as in the real files).
            let representable = !(obs.survey.survey() == Survey::Galah && a.flux[i] == 0.0);
            if a.sigma[i].is_finite() && representable {
                let want = if normalised {
                    (a.continuum[i] / a.sigma[i]).powi(2)
                } else {
                    1.0 / (a.sigma[i] * a.sigma[i])
                };
                assert!(close(iv, want, 0.01), "{ctx}: ivar[{k}] {iv} vs {want}");
                chi2 += (flux - model).powi(2) * iv;
                n += 1;
            } else {
                assert_eq!(iv, 0.0, "{ctx}: ivar[{k}] of a pixel without data");
                k += 1;
                continue;
            }
            k += 1;
        }
    }
    // Labels the file layout carries.
    let l = &s.labels;
    match obj {
        None => {
            assert_eq!(format, Format::DesiCoadd, "{ctx}: sky fibre outside DESI");
            assert_eq!(
                l.text.get("objtype").map(String::as_str),
                Some("SKY"),
                "{ctx}"
            );
            assert_eq!(l.redshift_warning, Some(1), "{ctx}");
        }
        Some(o) => {
            assert_eq!(l.class.as_deref(), Some(o.class.name()), "{ctx}: class");
            match format {
                Format::SdssSpec => {
                    assert_eq!(l.redshift, Some(o.z as f32 as f64), "{ctx}: z");
                    assert_eq!(l.redshift_warning, Some(0), "{ctx}");
                    if !o.subclass.is_empty() {
                        assert_eq!(l.subclass.as_deref(), Some(o.subclass.as_str()), "{ctx}");
                    }
                }
                Format::DesiCoadd => {
                    assert_eq!(l.redshift, Some(o.z), "{ctx}: z");
                    assert_eq!(l.redshift_warning, Some(0), "{ctx}");
                }
                Format::LamostLrs => {
                    let z = l.redshift.unwrap_or(f64::NAN);
                    assert!((z - o.z).abs() < 1e-7, "{ctx}: z {z} vs {}", o.z);
                }
                Format::ApogeeAspcapStar => {
                    let p = o.star.unwrap_or_else(|| panic!("{ctx}: APOGEE non-star"));
                    assert_eq!(l.teff, Some(p.teff as f32 as f64), "{ctx}");
                    assert_eq!(l.logg, Some(p.logg as f32 as f64), "{ctx}");
                    assert_eq!(l.fe_h, Some(p.fe_h as f32 as f64), "{ctx}");
                    assert_eq!(l.alpha_m, Some(p.alpha_m as f32 as f64), "{ctx}");
                }
                Format::ApogeeApStar => {
                    let p = o.star.unwrap_or_else(|| panic!("{ctx}: APOGEE non-star"));
                    let v = l.extra.get("vhelio").copied().unwrap_or(f64::NAN);
                    assert!((v - p.rv).abs() < 1e-3, "{ctx}: vhelio {v} vs {}", p.rv);
                }
                Format::GalahCcd => {
                    let p = o.star.unwrap_or_else(|| panic!("{ctx}: GALAH non-star"));
                    for (got, want) in [
                        (l.teff, p.teff),
                        (l.logg, p.logg),
                        (l.fe_h, p.fe_h),
                        (l.alpha_m, p.alpha_m),
                    ] {
                        let got = got.unwrap_or(f64::NAN);
                        assert!((got - want).abs() < 1e-5, "{ctx}: label {got} vs {want}");
                    }
                    assert_eq!(
                        l.text.get("ccds").map(String::as_str),
                        Some("1,2,3,4"),
                        "{ctx}"
                    );
                }
                f => panic!("{ctx}: unexpected format {f}"),
            }
        }
    }
    (chi2, n)
}

#[test]
fn every_mock_file_reads_back_with_labels_and_noise_intact() {
    let cfg = small_config(7, 36);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let summary =
        generate(&cfg, dir.path(), &|_, _| {}).unwrap_or_else(|e| panic!("generate: {e}"));
    let exp = expected(&cfg);
    assert_eq!(summary.total_spectra() as usize, exp.len());
    for s in spectok_mock::MockSurvey::ALL {
        assert!(
            summary.spectra[s.code() as usize] > 0,
            "no {s} spectrum in the test set"
        );
    }

    let dirs = survey_dirs(dir.path());
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let read = read_all(&dirs);
    let mut per_format: BTreeMap<Format, usize> = BTreeMap::new();
    let mut chi2: HashMap<Format, (f64, usize)> = HashMap::new();
    let mut seen: HashMap<(Survey, String), usize> = HashMap::new();
    for (format, s) in &read {
        *per_format.entry(*format).or_default() += 1;
        let key = (s.survey, s.id.clone());
        let e = exp
            .get(&key)
            .unwrap_or_else(|| panic!("{}: read id {} that was never generated", s.source, s.id));
        let (c, n) = check_spectrum(*format, s, e);
        let t = chi2.entry(*format).or_default();
        t.0 += c;
        t.1 += n;
        *seen.entry(key).or_default() += 1;
    }
    // Every generated spectrum was read: APOGEE twice (apStar, aspcapStar).
    for (key, _) in exp.iter() {
        let want = if key.0 == Survey::Apogee { 2 } else { 1 };
        assert_eq!(seen.get(key).copied().unwrap_or(0), want, "{key:?}");
    }
    let total: usize = per_format.values().sum();
    assert_eq!(total, exp.len() + summary.spectra[2] as usize);
    // Noise matches the stated ivar: χ² per pixel ≈ 1 in every layout.
    for (format, (c, n)) in chi2 {
        let r = c / n as f64;
        assert!(n > 10_000, "{format}: only {n} pixels");
        assert!(
            (r - 1.0).abs() < 0.03,
            "{format}: χ²/N = {r} over {n} pixels"
        );
    }
}

#[test]
fn one_object_in_two_surveys_shares_id_and_labels() {
    let cfg = small_config(11, 60);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    generate(&cfg, dir.path(), &|_, _| {}).unwrap_or_else(|e| panic!("generate: {e}"));
    let dirs = survey_dirs(dir.path());
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let mut by_id: HashMap<String, Vec<Spectrum>> = HashMap::new();
    for (_, s) in read_all(&dirs) {
        by_id.entry(s.id.clone()).or_default().push(s);
    }
    let mut pairs = 0;
    for (id, v) in &by_id {
        let surveys: std::collections::BTreeSet<Survey> = v.iter().map(|s| s.survey).collect();
        if surveys.len() < 2 {
            continue;
        }
        pairs += 1;
        let class = v[0].labels.class.clone();
        assert!(
            v.iter().all(|s| s.labels.class == class),
            "{id}: classes differ"
        );
        // Stellar parameters agree wherever a layout carries them.
        let teffs: Vec<f64> = v.iter().filter_map(|s| s.labels.teff).collect();
        assert!(
            teffs.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-3 * w[0]),
            "{id}: {teffs:?}"
        );
        // Redshifts agree between the surveys that report the observed frame.
        let zs: Vec<f64> = v
            .iter()
            .filter(|s| s.survey != Survey::Apogee)
            .filter_map(|s| s.labels.redshift)
            .collect();
        assert!(
            zs.windows(2)
                .all(|w| (w[0] - w[1]).abs() < 1e-6 * (1.0 + w[0])),
            "{id}: {zs:?}"
        );
    }
    assert!(pairs >= 5, "only {pairs} cross-survey objects");
}

#[test]
fn shards_hold_every_spectrum_and_gzip_fits_read_back() {
    let mut cfg = small_config(3, 20);
    cfg.gzip = true;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let summary =
        generate(&cfg, dir.path(), &|_, _| {}).unwrap_or_else(|e| panic!("generate: {e}"));
    let want = spectra(&cfg).unwrap_or_else(|e| panic!("spectra: {e}"));
    assert_eq!(want.len() as u64, summary.total_spectra());
    let shards = dir.path().join("shards");
    let mut files: Vec<_> = std::fs::read_dir(&shards)
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|e| e.map(|e| e.path()).unwrap_or_default())
        .collect();
    files.sort();
    assert_eq!(files.len() as u64, summary.shards);
    assert_eq!(files.len(), want.len().div_ceil(cfg.shard_size));
    let mut got = Vec::new();
    for f in &files {
        assert_eq!(
            detect(f).ok(),
            Some(Format::SpectokShard),
            "{}",
            f.display()
        );
        for s in spectok_io::shard::open(f).unwrap_or_else(|e| panic!("{e}")) {
            got.push(s.unwrap_or_else(|e| panic!("{e}")));
        }
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "shard spectrum {} differs", w.id);
        assert!(
            dir.path().join(&g.source.file).is_file(),
            "{} not written",
            g.source.file.display()
        );
        assert!(g
            .labels
            .text
            .get("mock")
            .is_some_and(|m| m.contains("not a substitute")));
        if g.labels.class.as_deref() == Some("STAR") {
            assert!(g.labels.teff.is_some() && g.labels.logg.is_some() && g.labels.fe_h.is_some());
        }
    }
    // The gzip-compressed FITS files are read like plain ones.
    let dirs = survey_dirs(dir.path());
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let read = read_all(&dirs);
    assert!(read
        .iter()
        .all(|(_, s)| s.source.file.to_string_lossy().ends_with(".fits.gz")));
    let exp = expected(&cfg);
    for (format, s) in &read {
        let e = exp
            .get(&(s.survey, s.id.clone()))
            .unwrap_or_else(|| panic!("unknown {}", s.id));
        check_spectrum(*format, s, e);
    }
}

#[test]
fn every_file_says_it_is_a_mock() {
    let cfg = small_config(5, 12);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    generate(&cfg, dir.path(), &|_, _| {}).unwrap_or_else(|e| panic!("generate: {e}"));
    let mut n = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{e}")) {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".fits") {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"));
                // The primary header: 80-character cards up to END.
                let cards: Vec<String> = bytes
                    .chunks(80)
                    .map(|c| String::from_utf8_lossy(c).to_string())
                    .take_while(|c| !c.starts_with("END "))
                    .collect();
                let header = cards.join("");
                assert!(
                    header.contains("MOCK    =                    T"),
                    "{}",
                    p.display()
                );
                assert!(
                    header.contains("MOCKGEN = 'spectok-mock"),
                    "{}",
                    p.display()
                );
                assert!(!header.contains("DATE    ="), "{}: time stamp", p.display());
                n += 1;
            }
        }
    }
    assert!(n >= 12, "{n} files");
}

#[test]
fn classes_cover_galaxies_quasars_and_stars() {
    let cfg = small_config(9, 80);
    let exp = expected(&cfg);
    let mut classes = std::collections::BTreeSet::new();
    for (o, _) in exp.values() {
        if let Some(o) = o {
            classes.insert(o.class);
        }
    }
    assert_eq!(classes.len(), 3, "{classes:?}");
    assert!(classes.contains(&ObjectClass::Qso));
}
