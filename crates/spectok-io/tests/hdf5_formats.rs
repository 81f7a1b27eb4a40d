//! The HDF5 layouts: Multimodal Universe files (real and synthetic) and
//! spectok's own shard format (round trip, real spectra, bad input).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hdf5::types::{FixedAscii, VarLenUnicode};
use hdf5::H5Type;
use spectok_io::fits::Fits;
use spectok_io::readers::mmu::MmuReader;
use spectok_io::shard::{self, ShardReader, ShardWriter};
use spectok_io::{
    detect, read_unit, Error, Format, InputUnit, Labels, Location, Medium, Reader, Segment, Source,
    Spectrum, Survey,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Deterministic pseudo-random numbers (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Any f32 bit pattern half of the time (NaN payloads, infinities,
    /// subnormals, −0), an ordinary value otherwise.
    fn f32_any(&mut self) -> f32 {
        match self.below(6) {
            0..=2 => f32::from_bits(self.next() as u32),
            3 => [f32::NAN, -0.0, f32::INFINITY, 0.0, f32::MIN_POSITIVE / 4.0]
                [self.below(5) as usize],
            _ => (self.unit() * 200.0 - 50.0) as f32,
        }
    }

    fn f64_any(&mut self) -> f64 {
        match self.below(4) {
            0..=1 => f64::from_bits(self.next()),
            2 => [f64::NAN, -0.0, f64::NEG_INFINITY, 5e-324][self.below(4) as usize],
            _ => self.unit() * 1e4 - 5e3,
        }
    }

    fn text(&mut self) -> String {
        const PIECES: [&str; 8] = [
            "",
            "GALAXY",
            "Ωmega-ß",
            "★☆",
            "日本語テキスト",
            "a b\tc",
            "é\u{301}",
            "2M00452143+1634446",
        ];
        let mut s = String::new();
        for _ in 0..self.below(4) {
            s.push_str(PIECES[self.below(PIECES.len() as u64) as usize]);
        }
        if self.chance(0.05) {
            s.push_str(&"long text ✓ ".repeat(500));
        }
        s
    }
}

fn bits32(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn bits64(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The first difference between two spectra, floats compared by bit
/// pattern (so NaN equals the same NaN), or `None` when identical.
fn difference(a: &Spectrum, b: &Spectrum) -> Option<String> {
    let ob = |x: Option<f64>| x.map(f64::to_bits);
    let (la, lb) = (&a.labels, &b.labels);
    let checks: [(&str, bool); 22] = [
        ("id", a.id == b.id),
        ("survey", a.survey == b.survey),
        ("source", a.source == b.source),
        ("wavelength", bits64(&a.wavelength) == bits64(&b.wavelength)),
        ("flux", bits32(&a.flux) == bits32(&b.flux)),
        ("ivar", bits32(&a.ivar) == bits32(&b.ivar)),
        ("mask", a.mask == b.mask),
        ("segments", a.segments == b.segments),
        ("medium", a.medium == b.medium),
        (
            "lsf_sigma",
            a.lsf_sigma.as_deref().map(bits32) == b.lsf_sigma.as_deref().map(bits32),
        ),
        ("redshift", ob(la.redshift) == ob(lb.redshift)),
        ("redshift_err", ob(la.redshift_err) == ob(lb.redshift_err)),
        (
            "redshift_warning",
            la.redshift_warning == lb.redshift_warning,
        ),
        ("class", la.class == lb.class),
        ("subclass", la.subclass == lb.subclass),
        ("teff", ob(la.teff) == ob(lb.teff)),
        ("logg", ob(la.logg) == ob(lb.logg)),
        ("fe_h", ob(la.fe_h) == ob(lb.fe_h)),
        ("alpha_m", ob(la.alpha_m) == ob(lb.alpha_m)),
        (
            "extra keys",
            la.extra.keys().collect::<Vec<_>>() == lb.extra.keys().collect::<Vec<_>>(),
        ),
        (
            "extra values",
            la.extra.values().map(|v| v.to_bits()).collect::<Vec<_>>()
                == lb.extra.values().map(|v| v.to_bits()).collect::<Vec<_>>(),
        ),
        ("text", la.text == lb.text),
    ];
    checks
        .iter()
        .find(|(_, same)| !same)
        .map(|(what, _)| format!("{what} differs for spectrum {:?}", a.id))
}

fn bad_parts(e: &Error) -> (&Location, &str) {
    match e {
        Error::Bad { loc, reason } => (loc, reason.as_str()),
        other => panic!("expected Error::Bad, got {other}"),
    }
}

/// A spectrum exercising everything the shard must keep: NaN and odd
/// floats, zero/negative ivar, several (overlapping) segments, optional
/// LSF, present NaN labels, unicode and long strings.
fn varied_spectrum(rng: &mut Rng, i: usize) -> Spectrum {
    let nseg = 1 + rng.below(4) as usize;
    let mut segments = Vec::new();
    let mut wavelength = Vec::new();
    for g in 0..nseg {
        let len = match rng.below(20) {
            0 => 1,
            1 => 3000 + rng.below(6000) as usize,
            2..=6 => 200 + rng.below(2800) as usize,
            _ => 1 + rng.below(200) as usize,
        } / nseg
            + 1;
        let start = wavelength.len();
        let mut w = 3000.0 + rng.unit() * 13000.0;
        for _ in 0..len {
            wavelength.push(w);
            w += 0.01 + rng.unit() * 2.0;
        }
        segments.push(Segment {
            name: ["b", "r", "z", "ccd3", "chip_a", "ärm"][(g + i) % 6].to_string(),
            start,
            end: wavelength.len(),
        });
    }
    let n = wavelength.len();
    let flux: Vec<f32> = (0..n).map(|_| rng.f32_any()).collect();
    let ivar: Vec<f32> = (0..n)
        .map(|_| match rng.below(4) {
            0 => 0.0,
            1 => -1.5,
            _ => rng.f32_any(),
        })
        .collect();
    let mask: Vec<u32> = (0..n)
        .map(|_| {
            if rng.chance(0.7) {
                0
            } else {
                rng.next() as u32
            }
        })
        .collect();
    let lsf_sigma = rng
        .chance(0.5)
        .then(|| (0..n).map(|_| rng.f32_any()).collect());
    let mut labels = Labels::default();
    if rng.chance(0.8) {
        let opt = |rng: &mut Rng| rng.chance(0.5).then(|| rng.f64_any());
        labels.redshift = opt(rng);
        labels.redshift_err = opt(rng);
        labels.teff = opt(rng);
        labels.logg = opt(rng);
        labels.fe_h = opt(rng);
        labels.alpha_m = opt(rng);
        labels.redshift_warning = rng.chance(0.5).then(|| rng.next() as i64);
        labels.class = rng.chance(0.5).then(|| rng.text());
        labels.subclass = rng.chance(0.5).then(|| rng.text());
        for _ in 0..rng.below(6) {
            labels
                .extra
                .insert(format!("x{}-{}", rng.below(10), rng.text()), rng.f64_any());
        }
        for _ in 0..rng.below(4) {
            labels
                .text
                .insert(format!("t{}{}", rng.below(10), rng.text()), rng.text());
        }
    }
    let id = match i % 5 {
        0 => format!("{i}"),
        1 => format!("{i}-日本語-★"),
        2 => format!("2M{:08}+{i}", rng.below(100_000_000)),
        3 => format!("{i}{}", "x".repeat(3000)),
        _ => format!("id {i} ß"),
    };
    Spectrum {
        id,
        survey: Survey::ALL[rng.below(Survey::ALL.len() as u64) as usize],
        source: Source {
            file: PathBuf::from(format!(
                "/data/ünï côde/{}/spec-{i}.fits",
                rng.text().replace('/', "_")
            )),
            hdu: ["COADD", "B_FLUX", "spectrum_flux", ""][i % 4].to_string(),
            row: match rng.below(3) {
                0 => None,
                1 => Some(rng.below(100)),
                _ => Some(rng.next() >> 1),
            },
        },
        wavelength,
        flux,
        ivar,
        mask,
        segments,
        medium: [Medium::Vacuum, Medium::Air, Medium::Unknown][rng.below(3) as usize],
        lsf_sigma,
        labels,
    }
}

/// A small valid spectrum for the bad-input tests.
fn simple_spectrum(i: usize, n: usize) -> Spectrum {
    Spectrum {
        id: format!("obj{i}"),
        survey: Survey::Sdss,
        source: Source {
            file: PathBuf::from(format!("spec-{i}.fits")),
            hdu: "COADD".into(),
            row: None,
        },
        wavelength: (0..n).map(|k| 4000.0 + k as f64).collect(),
        flux: (0..n).map(|k| k as f32).collect(),
        ivar: vec![1.0; n],
        mask: vec![0; n],
        segments: vec![Segment {
            name: "all".into(),
            start: 0,
            end: n,
        }],
        medium: Medium::Vacuum,
        lsf_sigma: None,
        labels: Labels::default(),
    }
}

fn write_shard(path: &Path, spectra: &[Spectrum]) {
    let mut w = ShardWriter::create(path).expect("create shard");
    for s in spectra {
        w.write(s).expect("write spectrum");
    }
    assert_eq!(w.finish().expect("finish shard"), spectra.len());
}

fn read_all(path: &Path) -> Vec<spectok_io::Result<Spectrum>> {
    shard::open(path).expect("open shard").collect()
}

// ---------------------------------------------------------------------------
// Multimodal Universe: the real file against the SDSS FITS it was built from
// ---------------------------------------------------------------------------

fn mmu_unit(path: &Path) -> InputUnit {
    InputUnit::single(Format::MmuHdf5, path)
}

struct Coadd {
    file: PathBuf,
    rows: usize,
    flux: Vec<f32>,
    ivar: Vec<f32>,
    loglam: Vec<f64>,
    and_mask: Vec<i64>,
    wdisp: Vec<f32>,
    z: f64,
}

/// The COADD table of every SDSS `spec-*` file, by SPECOBJID.
fn sdss_coadds(real: &Path) -> HashMap<String, Coadd> {
    let mut out = HashMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(real.join("sdss"))
        .expect("list sdss")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for p in files {
        let mut f = match Fits::open(&p) {
            Ok(f) => f,
            Err(_) => continue,
        };
        let Ok(Some(coadd)) = f.hdu_index("COADD") else {
            continue;
        };
        let cat = match (f.hdu_index("SPECOBJ"), f.hdu_index("SPALL")) {
            (Ok(Some(i)), _) | (_, Ok(Some(i))) => i,
            _ => continue,
        };
        let id = match f.read_col_text(cat, "SPECOBJID") {
            Ok(v) if v.first().is_some_and(|s| !s.is_empty()) => v[0].trim().to_string(),
            _ => f.read_col_i64(cat, "SPECOBJID").expect("SPECOBJID")[0].to_string(),
        };
        let rows = f.describe(coadd).expect("describe COADD").rows;
        out.insert(
            id,
            Coadd {
                rows,
                flux: f.read_col_f32(coadd, "flux").expect("flux"),
                ivar: f.read_col_f32(coadd, "ivar").expect("ivar"),
                loglam: f.read_col_f64(coadd, "loglam").expect("loglam"),
                and_mask: f.read_col_i64(coadd, "and_mask").expect("and_mask"),
                wdisp: f.read_col_f32(coadd, "wdisp").expect("wdisp"),
                z: f.read_col_f64(cat, "Z").expect("Z")[0],
                file: p,
            },
        );
    }
    out
}

#[test]
fn mmu_real_rows_equal_the_sdss_fits_they_came_from() {
    let Some(real) = spectok_io::testdata::real_data_dir() else {
        return;
    };
    let path = real.join("mmu/sdss_healpix_sample.hdf5");
    assert_eq!(detect(&path).expect("detect"), Format::MmuHdf5);
    assert_eq!(MmuReader.count(&mmu_unit(&path)).expect("count"), 10);

    let coadds = sdss_coadds(&real);
    let spectra: Vec<Spectrum> = MmuReader
        .read(&mmu_unit(&path))
        .expect("open MMU file")
        .map(|r| r.expect("MMU row"))
        .collect();
    assert_eq!(spectra.len(), 10);
    let mut matched = 0;
    for (row, s) in spectra.iter().enumerate() {
        assert_eq!(s.survey, Survey::Sdss);
        assert_eq!(s.medium, Medium::Vacuum);
        assert_eq!(s.source.row, Some(row as u64));
        assert_eq!(s.segments.len(), 1);
        let Some(c) = coadds.get(&s.id) else {
            panic!(
                "MMU object {} has no SDSS spec file with that SPECOBJID",
                s.id
            );
        };
        matched += 1;
        let what = format!("{} vs {}", s.id, c.file.display());
        // Padding removed: exactly the COADD's pixels.
        assert_eq!(s.len(), c.rows, "{what}: pixel count");
        assert_eq!(bits32(&s.flux), bits32(&c.flux), "{what}: flux");
        assert_eq!(bits32(&s.ivar), bits32(&c.ivar), "{what}: ivar");
        // The MMU mask is and_mask != 0 or ivar <= 1e-6.
        for k in 0..s.len() {
            let bad = c.and_mask[k] != 0 || c.ivar[k] <= 1e-6;
            assert_eq!(s.mask[k], u32::from(bad), "{what}: mask pixel {k}");
            // MMU stores λ = 10^loglam rounded to f32: within an f32 ulp.
            let w = 10f64.powf(c.loglam[k]);
            let rel = ((s.wavelength[k] - w) / w).abs();
            assert!(
                rel < 2e-7,
                "{what}: wavelength pixel {k}: {} vs {w}",
                s.wavelength[k]
            );
            assert_eq!(f64::from(s.wavelength[k] as f32), s.wavelength[k]);
        }
        // lsf_sigma: WDISP (pixels of 1e-4 dex) converted to Å.
        let lsf = s.lsf_sigma.as_ref().expect("lsf_sigma");
        for (k, (&sigma, (&wdisp, &loglam))) in
            lsf.iter().zip(c.wdisp.iter().zip(&c.loglam)).enumerate()
        {
            let want = f64::from(wdisp) * std::f64::consts::LN_10 * 1e-4 * 10f64.powf(loglam);
            let got = f64::from(sigma);
            assert!(
                (got - want).abs() <= 2e-3 * want,
                "{what}: lsf pixel {k}: {got} vs {want}"
            );
        }
        let l = &s.labels;
        let z = l.redshift.expect("redshift");
        assert!(
            (z - c.z).abs() < 1e-6 * (1.0 + c.z.abs()),
            "{what}: z {z} vs {}",
            c.z
        );
        assert!(l.redshift_err.is_some_and(|e| e > 0.0));
        assert_eq!(l.redshift_warning, Some(0));
        assert!(
            l.extra.contains_key("ra") && l.extra.contains_key("dec"),
            "{what}: {:?}",
            l.extra
        );
    }
    assert_eq!(matched, 10);

    // Spot values from the data README.
    let first = &spectra[0];
    assert_eq!(first.id, "299492975510054912");
    assert_eq!(first.len(), 3838);
    assert_eq!(first.labels.class.as_deref(), Some("GALAXY"));
    assert!((first.labels.redshift.unwrap_or(0.0) - 0.12132).abs() < 1e-5);
    let (lo, hi) = first.wavelength_range();
    assert!(
        (lo - 3803.6).abs() < 0.1 && (hi - 9202.4).abs() < 0.1,
        "{lo}..{hi}"
    );
    let longest = spectra.iter().map(Spectrum::len).max();
    assert_eq!(longest, Some(4619));
    let stars = spectra
        .iter()
        .filter(|s| s.labels.class.as_deref() == Some("STAR"))
        .count();
    assert_eq!(stars, 2);
}

// ---------------------------------------------------------------------------
// Multimodal Universe: synthetic files for the generic rules and bad input
// ---------------------------------------------------------------------------

fn put_2d<T: H5Type>(f: &hdf5::File, name: &str, rows: usize, cols: usize, data: &[T]) {
    assert_eq!(data.len(), rows * cols);
    let ds = f
        .new_dataset::<T>()
        .shape([rows, cols])
        .create(name)
        .expect("create 2-D dataset");
    ds.write_raw(data).expect("write 2-D dataset");
}

fn put_1d<T: H5Type>(f: &hdf5::File, name: &str, data: &[T]) {
    f.new_dataset_builder()
        .with_data(data)
        .create(name)
        .expect("create 1-D dataset");
}

fn put_attr(f: &hdf5::File, name: &str, value: &str) {
    f.new_attr::<VarLenUnicode>()
        .create(name)
        .expect("create attribute")
        .write_scalar(&VarLenUnicode::from_str(value).expect("attribute text"))
        .expect("write attribute");
}

fn vlen(v: &[&str]) -> Vec<VarLenUnicode> {
    v.iter()
        .map(|s| VarLenUnicode::from_str(s).expect("text"))
        .collect()
}

/// Three objects of 8-pixel rows in the MMU layout: row 0 has 6 pixels,
/// row 1 padding only, row 2 all 8.
fn write_small_mmu(path: &Path, survey_attr: Option<&str>) {
    let f = hdf5::File::create(path).expect("create MMU file");
    let (rows, npix) = (3, 8);
    let mut lambda = Vec::new();
    for r in 0..rows {
        let n = [6, 0, 8][r];
        for k in 0..npix {
            lambda.push(if k < n {
                5000.0f32 + 2.0 * k as f32
            } else {
                -1.0
            });
        }
    }
    put_2d(&f, "spectrum_lambda", rows, npix, &lambda);
    let flux: Vec<f32> = (0..rows * npix).map(|k| k as f32 * 0.5).collect();
    put_2d(&f, "spectrum_flux", rows, npix, &flux);
    put_2d(&f, "spectrum_ivar", rows, npix, &vec![2.0f32; rows * npix]);
    let mask: Vec<bool> = (0..rows * npix).map(|k| k % 3 == 0).collect();
    put_2d(&f, "spectrum_mask", rows, npix, &mask);
    put_2d(
        &f,
        "spectrum_lsf_sigma",
        rows,
        npix,
        &vec![1.5f32; rows * npix],
    );
    let ids: Vec<FixedAscii<8>> = ["a1", "b2", "c3"]
        .iter()
        .map(|s| FixedAscii::from_ascii(s.as_bytes()).expect("ascii"))
        .collect();
    put_1d(&f, "object_id", &ids);
    put_1d(&f, "Z", &[0.5f32, 0.25, f32::NAN]);
    put_1d(&f, "ZWARNING", &[4i64, 0, 0]);
    put_1d(&f, "CLASS", &vlen(&["qso ", "star", "galaxy"]));
    put_1d(&f, "snr", &[10.0f64, 20.0, 30.0]);
    put_1d(&f, "restframe", &[true, false, true]);
    put_1d(&f, "huge", &[u64::MAX, 1, 2]);
    put_1d(&f, "note", &vlen(&["hello", "", "wörld"]));
    put_1d(&f, "TEFF", &[5000.0f64, 6000.0, 7000.0]);
    if let Some(s) = survey_attr {
        put_attr(&f, "survey", s);
    }
}

#[test]
fn mmu_synthetic_file_follows_the_generic_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("objects.hdf5");
    write_small_mmu(&path, Some("sdss"));
    assert_eq!(detect(&path).expect("detect"), Format::MmuHdf5);
    let items: Vec<_> = MmuReader.read(&mmu_unit(&path)).expect("open").collect();
    assert_eq!(items.len(), 3);

    let s0 = items[0].as_ref().expect("row 0");
    assert_eq!(s0.id, "a1");
    assert_eq!(s0.len(), 6, "padding stripped");
    assert_eq!(s0.flux, (0..6).map(|k| k as f32 * 0.5).collect::<Vec<_>>());
    assert_eq!(s0.mask, vec![1, 0, 0, 1, 0, 0]);
    assert_eq!(s0.survey, Survey::Sdss);
    assert_eq!(s0.medium, Medium::Vacuum);
    // 1.5 pixels of 2 Å each.
    assert_eq!(s0.lsf_sigma.as_deref(), Some(&[3.0f32; 6][..]));
    let l = &s0.labels;
    assert_eq!(l.redshift, Some(0.5));
    assert_eq!(l.redshift_warning, Some(4));
    assert_eq!(l.class.as_deref(), Some("QSO"));
    assert_eq!(l.teff, Some(5000.0));
    assert_eq!(l.extra.get("snr"), Some(&10.0));
    assert_eq!(l.extra.get("restframe"), Some(&1.0));
    assert_eq!(
        l.text.get("huge").map(String::as_str),
        Some("18446744073709551615")
    );
    assert_eq!(l.text.get("note").map(String::as_str), Some("hello"));
    assert!(!l.extra.contains_key("object_id") && !l.text.contains_key("object_id"));

    // Row 1 is padding only: an error item naming the dataset and row.
    let e = items[1].as_ref().expect_err("padding-only row");
    let (loc, reason) = bad_parts(e);
    assert_eq!(loc.hdu.as_deref(), Some("spectrum_lambda"));
    assert_eq!(loc.row, Some(1));
    assert!(reason.contains("no pixels"), "{reason}");
    assert!(e.to_string().contains("objects.hdf5"), "{e}");

    // The stream went on after it.
    let s2 = items[2].as_ref().expect("row 2");
    assert_eq!(s2.len(), 8);
    assert_eq!(s2.labels.redshift, None, "NaN Z is absent");
    assert_eq!(s2.labels.class.as_deref(), Some("GALAXY"));
    assert_eq!(
        s2.labels.text.get("note").map(String::as_str),
        Some("wörld")
    );
}

#[test]
fn mmu_galah_like_file_has_segments_air_and_flux_ivar() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir
        .path()
        .join("galah")
        .join("healpix=12")
        .join("001-of-001.hdf5");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let f = hdf5::File::create(&path).expect("create");
    // Two CCDs of 3 pixels, then 2 pixels of padding.
    let lambda: Vec<f64> = vec![4700.0, 4700.5, 4701.0, 5700.0, 5701.0, 5702.0, -1.0, -1.0];
    put_2d(&f, "spectrum_lambda", 1, 8, &lambda);
    put_2d(
        &f,
        "spectrum_flux",
        1,
        8,
        &[1.0f32, 2., 3., 4., 5., 6., 0., 0.],
    );
    put_2d(&f, "spectrum_flux_ivar", 1, 8, &[9.0f32; 8]);
    put_2d(&f, "spectrum_lsf_sigma", 1, 8, &[2.0f32; 8]);
    put_2d(&f, "spectrum_norm_flux", 1, 8, &[1.0f32; 8]);
    put_1d(&f, "object_id", &[131116000501002i64]);
    put_1d(&f, "spectrum_B_ind_start", &[0i64]);
    put_1d(&f, "spectrum_B_ind_end", &[2i64]);
    put_1d(&f, "spectrum_G_ind_start", &[3i64]);
    put_1d(&f, "spectrum_G_ind_end", &[5i64]);
    put_1d(&f, "teff", &[4500.0f32]);
    put_1d(&f, "fe_h", &[-0.5f32]);
    drop(f);

    let s = MmuReader
        .read(&mmu_unit(&path))
        .expect("open")
        .next()
        .expect("one row")
        .expect("valid row");
    assert_eq!(s.survey, Survey::Galah, "from the folder name");
    assert_eq!(s.medium, Medium::Air);
    assert_eq!(s.id, "131116000501002");
    assert_eq!(s.len(), 6);
    assert_eq!(s.ivar, vec![9.0; 6]);
    assert_eq!(s.mask, vec![0; 6]);
    let names: Vec<(&str, usize, usize)> = s
        .segments
        .iter()
        .map(|g| (g.name.as_str(), g.start, g.end))
        .collect();
    assert_eq!(names, vec![("b", 0, 3), ("g", 3, 6)]);
    // σ = 2 pixels × 0.5 Å on the first CCD, × 1 Å on the second.
    assert_eq!(
        s.lsf_sigma.as_deref(),
        Some(&[1.0f32, 1., 1., 2., 2., 2.][..])
    );
    assert_eq!(s.labels.teff, Some(4500.0));
    assert_eq!(s.labels.fe_h, Some(-0.5));
}

#[test]
fn mmu_without_a_survey_is_refused_with_a_way_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("objects.hdf5");
    write_small_mmu(&path, None);
    let e = MmuReader.read(&mmu_unit(&path)).err().expect("no survey");
    let (loc, reason) = bad_parts(&e);
    assert_eq!(loc.field.as_deref(), Some("survey"));
    assert!(reason.contains("attrs['survey']"), "{reason}");
    assert!(e.to_string().contains("objects.hdf5"));

    // An unknown survey attribute is an error too, a known one is used.
    let path2 = dir.path().join("named.hdf5");
    write_small_mmu(&path2, Some("hubble"));
    let e = MmuReader
        .count(&mmu_unit(&path2))
        .expect_err("unknown survey");
    assert!(e.to_string().contains("hubble"), "{e}");
    let path3 = dir.path().join("desi.hdf5");
    write_small_mmu(&path3, Some("DESI"));
    let first = MmuReader.read(&mmu_unit(&path3)).expect("open").next();
    let s = first.expect("row").expect("valid");
    assert_eq!((s.survey, s.medium), (Survey::Desi, Medium::Vacuum));
}

#[test]
fn mmu_bad_files_give_errors_naming_file_and_dataset() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Missing flux.
    let p = dir.path().join("sdss_noflux.hdf5");
    {
        let f = hdf5::File::create(&p).expect("create");
        put_2d(&f, "spectrum_lambda", 1, 2, &[5000.0f32, 5001.0]);
        put_2d(&f, "spectrum_ivar", 1, 2, &[1.0f32, 1.0]);
        put_1d(&f, "object_id", &[1i64]);
    }
    let e = MmuReader.read(&mmu_unit(&p)).err().expect("missing flux");
    let (loc, reason) = bad_parts(&e);
    assert_eq!(
        (loc.hdu.as_deref(), reason),
        (Some("spectrum_flux"), "dataset missing")
    );

    // Shapes that disagree.
    let p = dir.path().join("sdss_shapes.hdf5");
    {
        let f = hdf5::File::create(&p).expect("create");
        put_2d(&f, "spectrum_lambda", 1, 3, &[5000.0f32, 5001.0, 5002.0]);
        put_2d(&f, "spectrum_flux", 1, 3, &[1.0f32; 3]);
        put_2d(&f, "spectrum_ivar", 1, 2, &[1.0f32; 2]);
        put_1d(&f, "object_id", &[1i64]);
    }
    let e = MmuReader.read(&mmu_unit(&p)).err().expect("shape mismatch");
    let (loc, reason) = bad_parts(&e);
    assert_eq!(loc.hdu.as_deref(), Some("spectrum_ivar"));
    assert_eq!(loc.field.as_deref(), Some("ivar"));
    assert!(reason.contains("disagrees"), "{reason}");

    // object_id of the wrong length.
    let p = dir.path().join("sdss_ids.hdf5");
    {
        let f = hdf5::File::create(&p).expect("create");
        put_2d(&f, "spectrum_lambda", 1, 2, &[5000.0f32, 5001.0]);
        put_2d(&f, "spectrum_flux", 1, 2, &[1.0f32; 2]);
        put_2d(&f, "spectrum_ivar", 1, 2, &[1.0f32; 2]);
        put_1d(&f, "object_id", &[1i64, 2]);
    }
    let e = MmuReader.read(&mmu_unit(&p)).err().expect("bad ids");
    assert_eq!(bad_parts(&e).0.hdu.as_deref(), Some("object_id"));

    // Decreasing wavelengths inside a row: an error item for that row.
    let p = dir.path().join("sdss_order.hdf5");
    {
        let f = hdf5::File::create(&p).expect("create");
        put_2d(
            &f,
            "spectrum_lambda",
            2,
            2,
            &[5001.0f32, 5000.0, 5000.0, 5001.0],
        );
        put_2d(&f, "spectrum_flux", 2, 2, &[1.0f32; 4]);
        put_2d(&f, "spectrum_ivar", 2, 2, &[1.0f32; 4]);
        put_1d(&f, "object_id", &[1i64, 2]);
    }
    let items: Vec<_> = MmuReader.read(&mmu_unit(&p)).expect("open").collect();
    let (loc, _) = bad_parts(items[0].as_ref().expect_err("decreasing"));
    assert_eq!(
        (loc.row, loc.field.as_deref()),
        (Some(0), Some("wavelength"))
    );
    assert!(items[1].is_ok());

    // A truncated copy of the real file: errors, never a panic.
    if let Some(real) = spectok_io::testdata::real_data_dir() {
        let bytes = std::fs::read(real.join("mmu/sdss_healpix_sample.hdf5")).expect("read");
        for cut in [bytes.len() / 2, 4096, 600] {
            let p = dir.path().join(format!("sdss_cut{cut}.hdf5"));
            std::fs::write(&p, &bytes[..cut]).expect("write truncated copy");
            let outcome = MmuReader
                .read(&mmu_unit(&p))
                .map(|it| it.collect::<Vec<_>>());
            let err = match outcome {
                Err(e) => e,
                Ok(items) => items
                    .into_iter()
                    .find_map(Result::err)
                    .expect("a truncated file must fail somewhere"),
            };
            assert!(
                err.to_string().contains(&format!("sdss_cut{cut}.hdf5")),
                "{err}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Shard: round trip
// ---------------------------------------------------------------------------

#[test]
fn difference_helper_sees_a_single_bit() {
    let mut rng = Rng(7);
    let a = varied_spectrum(&mut rng, 0);
    assert_eq!(difference(&a, &a.clone()), None);
    let mut b = a.clone();
    b.flux[0] = f32::from_bits(b.flux[0].to_bits() ^ 1);
    assert!(difference(&a, &b).is_some());
    let mut c = a.clone();
    c.labels.extra.insert("new".into(), f64::NAN);
    assert!(difference(&a, &c).is_some());
}

#[test]
fn shard_round_trip_is_bit_identical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("varied.h5");
    let mut rng = Rng(0x5EED);
    let spectra: Vec<Spectrum> = (0..1300).map(|i| varied_spectrum(&mut rng, i)).collect();
    assert!(spectra.iter().all(|s| s.validate().is_ok()));
    let pixels: usize = spectra.iter().map(Spectrum::len).sum();
    assert!(
        pixels > shard::FLUSH_PIXELS,
        "the test must flush mid-way ({pixels})"
    );

    let mut w = ShardWriter::create(&path).expect("create");
    for (k, s) in spectra.iter().enumerate() {
        w.write(s).expect("write");
        if k == 700 {
            // Nothing under the final name until finish.
            assert!(!path.exists());
            assert!(shard::tmp_path(&path).exists());
        }
    }
    assert_eq!(w.len(), spectra.len());
    assert_eq!(w.finish().expect("finish"), spectra.len());
    assert!(path.exists() && !shard::tmp_path(&path).exists());

    assert_eq!(detect(&path).expect("detect"), Format::SpectokShard);
    let unit = InputUnit::single(Format::SpectokShard, &path);
    assert_eq!(ShardReader.count(&unit).expect("count"), spectra.len());
    let back: Vec<Spectrum> = read_unit(&unit)
        .expect("open")
        .map(|r| r.expect("read spectrum"))
        .collect();
    assert_eq!(back.len(), spectra.len());
    for (a, b) in spectra.iter().zip(&back) {
        assert_eq!(difference(a, b), None);
    }
    // Spectra without NaN compare equal with ==, too.
    let plain = simple_spectrum(0, 50);
    let p2 = dir.path().join("plain.h5");
    write_shard(&p2, std::slice::from_ref(&plain));
    assert_eq!(read_all(&p2)[0].as_ref().expect("plain"), &plain);
}

#[test]
fn shard_empty_and_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty.h5");
    write_shard(&path, &[]);
    assert_eq!(shard::count(&path).expect("count"), 0);
    assert!(read_all(&path).is_empty());
    // finish replaces an existing shard atomically.
    write_shard(&path, &[simple_spectrum(1, 5), simple_spectrum(2, 6)]);
    assert_eq!(shard::count(&path).expect("count"), 2);
}

#[test]
fn shard_writer_refuses_bad_spectra_and_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("refuse.h5");
    let mut w = ShardWriter::create(&path).expect("create");
    w.write(&simple_spectrum(0, 4)).expect("good");

    let mut empty = simple_spectrum(1, 0);
    empty.segments.clear();
    let e = w.write(&empty).expect_err("zero pixels");
    let (loc, reason) = bad_parts(&e);
    assert_eq!(loc.field.as_deref(), Some("wavelength"));
    assert!(reason.contains("no pixels"), "{reason}");
    assert!(e.to_string().contains("spec-1.fits"), "{e}");

    let mut short = simple_spectrum(2, 4);
    short.flux.pop();
    assert_eq!(
        bad_parts(&w.write(&short).expect_err("lengths"))
            .0
            .field
            .as_deref(),
        Some("flux")
    );

    let mut nul = simple_spectrum(3, 4);
    nul.id = "a\0b".into();
    assert_eq!(
        bad_parts(&w.write(&nul).expect_err("NUL"))
            .0
            .field
            .as_deref(),
        Some("id")
    );

    assert!(w.is_open(), "refusals leave the writer usable");
    w.write(&simple_spectrum(4, 3)).expect("good again");
    assert_eq!(w.finish().expect("finish"), 2);
    let ids: Vec<String> = read_all(&path)
        .into_iter()
        .map(|r| r.expect("ok").id)
        .collect();
    assert_eq!(ids, vec!["obj0", "obj4"]);
}

#[test]
fn shard_dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dropped.h5");
    {
        let mut w = ShardWriter::create(&path).expect("create");
        w.write(&simple_spectrum(0, 10)).expect("write");
        assert!(shard::tmp_path(&path).exists());
    }
    assert!(!path.exists());
    assert!(!shard::tmp_path(&path).exists());
}

// ---------------------------------------------------------------------------
// Shard: real spectra
// ---------------------------------------------------------------------------

/// A spectrum built by hand from an SDSS `spec-*` file's COADD table.
fn sdss_by_hand(path: &Path) -> Spectrum {
    let mut f = Fits::open(path).expect("open FITS");
    let h = f.require_hdu("COADD").expect("COADD");
    let loglam = f.read_col_f64(h, "loglam").expect("loglam");
    let n = loglam.len();
    let cat = f.require_hdu("SPECOBJ").expect("SPECOBJ");
    let mut extra = BTreeMap::new();
    extra.insert(
        "plug_ra".to_string(),
        f.read_col_f64(cat, "PLUG_RA").expect("ra")[0],
    );
    Spectrum {
        id: f.read_col_text(cat, "SPECOBJID").expect("id")[0].clone(),
        survey: Survey::Sdss,
        source: Source {
            file: path.to_path_buf(),
            hdu: "COADD".into(),
            row: None,
        },
        wavelength: loglam.iter().map(|l| 10f64.powf(*l)).collect(),
        flux: f.read_col_f32(h, "flux").expect("flux"),
        ivar: f.read_col_f32(h, "ivar").expect("ivar"),
        mask: f
            .read_col_i64(h, "and_mask")
            .expect("and_mask")
            .into_iter()
            .map(|m| m as u32)
            .collect(),
        segments: vec![Segment {
            name: "all".into(),
            start: 0,
            end: n,
        }],
        medium: Medium::Vacuum,
        lsf_sigma: None,
        labels: Labels {
            redshift: Some(f.read_col_f64(cat, "Z").expect("Z")[0]),
            class: Some(f.read_col_text(cat, "CLASS").expect("CLASS")[0].clone()),
            extra,
            ..Labels::default()
        },
    }
}

#[test]
fn shard_keeps_real_spectra_exactly() {
    let Some(real) = spectok_io::testdata::real_data_dir() else {
        return;
    };
    let mut spectra = vec![
        sdss_by_hand(&real.join("sdss/spec-0266-51602-0013.fits")),
        sdss_by_hand(&real.join("sdss/spec-1665-52976-0519.fits")),
    ];
    assert_eq!(spectra[0].len(), 3838);
    let mmu = real.join("mmu/sdss_healpix_sample.hdf5");
    spectra.extend(
        MmuReader
            .read(&mmu_unit(&mmu))
            .expect("open MMU")
            .map(|r| r.expect("MMU row")),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("real.h5");
    write_shard(&path, &spectra);
    let back: Vec<Spectrum> = read_all(&path)
        .into_iter()
        .map(|r| r.expect("read"))
        .collect();
    assert_eq!(back.len(), 12);
    for (a, b) in spectra.iter().zip(&back) {
        assert_eq!(difference(a, b), None);
    }
    // The COADD of spec-0266-51602-0013 and its MMU row hold the same flux.
    assert_eq!(bits32(&back[0].flux), bits32(&back[2].flux));
    // Compression: the shard is smaller than the raw arrays.
    let raw: usize = spectra.iter().map(|s| s.len() * 20).sum();
    let size = std::fs::metadata(&path).expect("size").len() as usize;
    assert!(size < raw, "shard {size} bytes vs {raw} raw");
}

// ---------------------------------------------------------------------------
// Shard: bad input
// ---------------------------------------------------------------------------

/// A shard of `n` spectra of 10 pixels each, and its path.
fn small_shard(dir: &Path, name: &str, n: usize) -> PathBuf {
    let path = dir.join(name);
    let spectra: Vec<Spectrum> = (0..n).map(|i| simple_spectrum(i, 10)).collect();
    write_shard(&path, &spectra);
    path
}

fn edit(path: &Path, f: impl FnOnce(&hdf5::File)) {
    let file = hdf5::File::open_rw(path).expect("open for editing");
    f(&file);
}

fn set_u64(file: &hdf5::File, name: &str, at: usize, v: u64) {
    let ds = file.dataset(name).expect("dataset");
    ds.write_slice(&[v][..], at..at + 1).expect("write value");
}

#[test]
fn shard_inconsistent_offsets_fail_only_their_spectra() {
    let dir = tempfile::tempdir().expect("tempdir");

    // Decreasing: spectrum 3 would end before it starts.
    let p = small_shard(dir.path(), "decrease.h5", 8);
    edit(&p, |f| set_u64(f, "offsets", 4, 25));
    let items = read_all(&p);
    assert_eq!(items.len(), 8);
    let (loc, reason) = bad_parts(items[3].as_ref().expect_err("decreasing"));
    assert_eq!((loc.hdu.as_deref(), loc.row), (Some("offsets"), Some(3)));
    assert!(reason.contains("decrease"), "{reason}");
    for k in [0, 1, 2, 5, 6, 7] {
        assert_eq!(
            items[k].as_ref().expect("untouched spectrum").id,
            format!("obj{k}")
        );
    }

    // Beyond the data.
    let p = small_shard(dir.path(), "beyond.h5", 8);
    edit(&p, |f| set_u64(f, "offsets", 5, 1 << 40));
    let items = read_all(&p);
    let (loc, reason) = bad_parts(items[4].as_ref().expect_err("beyond"));
    assert_eq!((loc.hdu.as_deref(), loc.row), (Some("offsets"), Some(4)));
    assert!(reason.contains("beyond"), "{reason}");
    assert!(items[5].is_err());
    assert!(items[6].is_ok() && items[3].is_ok());

    // Zero pixels.
    let p = small_shard(dir.path(), "zero.h5", 4);
    edit(&p, |f| set_u64(f, "offsets", 2, 10));
    let items = read_all(&p);
    let (loc, reason) = bad_parts(items[1].as_ref().expect_err("no pixels"));
    assert_eq!((loc.hdu.as_deref(), loc.row), (Some("offsets"), Some(1)));
    assert!(reason.contains("no pixels"), "{reason}");
    assert!(items[0].is_ok() && items[3].is_ok());

    // Last offset disagreeing with the data length: a file-level error.
    let p = small_shard(dir.path(), "last.h5", 4);
    edit(&p, |f| set_u64(f, "offsets", 4, 39));
    let e = shard::open(&p).err().expect("last offset");
    let (loc, reason) = bad_parts(&e);
    assert_eq!(loc.hdu.as_deref(), Some("offsets"));
    assert!(reason.contains("39"), "{reason}");
    assert!(e.to_string().contains("last.h5"));
}

#[test]
fn shard_missing_or_mismatched_datasets_are_file_errors() {
    let dir = tempfile::tempdir().expect("tempdir");

    let p = small_shard(dir.path(), "missing.h5", 3);
    edit(&p, |f| f.unlink("flux").expect("unlink"));
    let e = shard::open(&p).err().expect("missing flux");
    let (loc, reason) = bad_parts(&e);
    assert_eq!(
        (loc.hdu.as_deref(), loc.field.as_deref()),
        (Some("flux"), Some("flux"))
    );
    assert_eq!(reason, "dataset missing");
    assert!(read_unit(&InputUnit::single(Format::SpectokShard, &p)).is_err());

    let p = small_shard(dir.path(), "shortflux.h5", 3);
    edit(&p, |f| {
        f.dataset("flux")
            .expect("flux")
            .resize(29usize)
            .expect("resize")
    });
    let e = shard::open(&p).err().expect("short flux");
    let (loc, reason) = bad_parts(&e);
    assert_eq!(loc.hdu.as_deref(), Some("flux"));
    assert!(reason.contains("29"), "{reason}");

    let p = small_shard(dir.path(), "shortid.h5", 3);
    edit(&p, |f| {
        f.dataset("id").expect("id").resize(2usize).expect("resize")
    });
    let e = shard::open(&p).err().expect("short id");
    let (loc, reason) = bad_parts(&e);
    assert_eq!(
        (loc.hdu.as_deref(), loc.field.as_deref()),
        (Some("id"), Some("id"))
    );
    assert!(reason.contains("2 values for 3 spectra"), "{reason}");

    let p = small_shard(dir.path(), "version.h5", 1);
    edit(&p, |f| {
        f.attr(spectok_io::hdf5util::SHARD_MARKER)
            .expect("marker")
            .write_scalar(&2u32)
            .expect("rewrite version")
    });
    let e = shard::count(&p).expect_err("version 2");
    assert!(e.to_string().contains("version 2"), "{e}");
}

#[test]
fn shard_truncated_files_fail_without_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = Rng(3);
    let spectra: Vec<Spectrum> = (0..40).map(|i| varied_spectrum(&mut rng, i)).collect();
    let path = dir.path().join("whole.h5");
    write_shard(&path, &spectra);
    let bytes = std::fs::read(&path).expect("read shard");
    for frac in [0.9, 0.5, 0.1] {
        let cut = (bytes.len() as f64 * frac) as usize;
        let p = dir.path().join(format!("cut{cut}.h5"));
        std::fs::write(&p, &bytes[..cut]).expect("write truncated copy");
        let err = match shard::open(&p) {
            Err(e) => e,
            Ok(stream) => stream
                .into_iter()
                .find_map(Result::err)
                .expect("a truncated shard must fail somewhere"),
        };
        assert!(matches!(err, Error::Bad { .. }), "{err}");
        assert!(err.to_string().contains(&format!("cut{cut}.h5")), "{err}");
    }
}
