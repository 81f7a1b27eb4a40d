//! The mock files follow the real survey files' layouts: compared with
//! real files of each family, every mock HDU has the real HDU's name,
//! kind, data type and (for multi-fibre images) axis order, and every mock
//! table column exists in the real table with the same data type.

mod common;

use std::path::{Path, PathBuf};

use fitsio::hdu::HduInfo;
use fitsio::tables::ColumnDataType;
use fitsio::FitsFile;
use spectok_io::{detect, testdata::real_data_dir};
use spectok_mock::generate;

/// What a test needs to know of one HDU.
#[derive(Debug)]
struct Hdu {
    name: String,
    image: Option<(usize, i32)>,
    columns: Vec<(String, ColumnDataType, usize)>,
}

fn bitpix(t: &fitsio::images::ImageType) -> i32 {
    use fitsio::images::ImageType::*;
    match t {
        UnsignedByte | Byte => 8,
        Short | UnsignedShort => 16,
        Long | UnsignedLong => 32,
        LongLong => 64,
        Float => -32,
        Double => -64,
    }
}

fn hdus(path: &Path) -> Vec<Hdu> {
    let mut f = FitsFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = f.num_hdus().unwrap_or_else(|e| panic!("{e}"));
    (0..n)
        .map(|i| {
            let h = f.hdu(i).unwrap_or_else(|e| panic!("{e}"));
            let name = h.read_key::<String>(&mut f, "EXTNAME").unwrap_or_default();
            match &h.info {
                HduInfo::ImageInfo { shape, image_type } => Hdu {
                    name,
                    image: Some((shape.len(), bitpix(image_type))),
                    columns: vec![],
                },
                HduInfo::TableInfo {
                    column_descriptions,
                    ..
                } => Hdu {
                    name,
                    image: None,
                    columns: column_descriptions
                        .iter()
                        .map(|c| (c.name.clone(), c.data_type.typ, c.data_type.repeat))
                        .collect(),
                },
                HduInfo::AnyInfo => Hdu {
                    name,
                    image: None,
                    columns: vec![],
                },
            }
        })
        .collect()
}

/// Text columns differ in width only; numbers must match in type and
/// (array columns of fixed meaning) in repeat.
fn same_type(a: ColumnDataType, b: ColumnDataType) -> bool {
    use ColumnDataType::*;
    let norm = |t| match t {
        Text | String => String,
        Int | Long => Int,
        t => t,
    };
    norm(a) == norm(b)
}

/// Compares the mock file `mock` with the real file `real`. Named HDUs
/// are found by name and must come in the real file's order (the mock may
/// leave some out, e.g. DESI's resolution matrices); unnamed HDUs (APOGEE)
/// and the primary are compared at the same index.
fn compare(mock: &Path, real: &Path, fixed_repeat: &[&str]) {
    assert_eq!(
        detect(mock).ok(),
        detect(real).ok(),
        "{} vs {}",
        mock.display(),
        real.display()
    );
    let (m, r) = (hdus(mock), hdus(real));
    let mut last = 0;
    for (i, mh) in m.iter().enumerate() {
        let ri = if i == 0 || mh.name.is_empty() {
            i
        } else {
            r.iter()
                .position(|h| h.name.eq_ignore_ascii_case(&mh.name))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: HDU {:?} is not in {}",
                        mock.display(),
                        mh.name,
                        real.display()
                    )
                })
        };
        let ctx = format!("{} HDU {i} vs {} HDU {ri}", mock.display(), real.display());
        assert!(ri >= last, "{ctx}: HDUs out of the real order");
        last = ri;
        let rh = r
            .get(ri)
            .unwrap_or_else(|| panic!("{ctx}: real file has no HDU {ri}"));
        assert!(
            mh.name.eq_ignore_ascii_case(&rh.name),
            "{ctx}: name {:?} vs {:?}",
            mh.name,
            rh.name
        );
        match (mh.image, rh.image) {
            // An HDU without data (NAXIS = 0) has no meaningful BITPIX.
            (Some((0, _)), Some((0, _))) => {}
            (Some((ma, mb)), Some((ra, rb))) => {
                assert_eq!(mb, rb, "{ctx}: BITPIX");
                // Multi-row images (DESI nspec × npix, APOGEE visits) keep
                // their axes; a single-row image may be 1-D, as in the real
                // files.
                assert!(ma <= ra, "{ctx}: {ma} axes vs {ra}");
            }
            (None, None) => {}
            (a, b) => assert_eq!(a.is_some(), b.is_some(), "{ctx}: image vs table"),
        }
        for (name, typ, rep) in &mh.columns {
            let Some((_, rt, rrep)) = rh.columns.iter().find(|c| c.0.eq_ignore_ascii_case(name))
            else {
                panic!("{ctx}: column {name} is not in the real table");
            };
            assert!(
                same_type(*typ, *rt),
                "{ctx}: column {name} {typ:?} vs {rt:?}"
            );
            if fixed_repeat.contains(&name.as_str()) {
                assert_eq!(rep, rrep, "{ctx}: column {name} repeat");
            }
        }
    }
}

fn first(dir: &Path, prefix: &str) -> PathBuf {
    let mut v: Vec<PathBuf> = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
            {
                v.push(p);
            }
        }
    }
    v.sort();
    v.into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {prefix}* under {}", dir.display()))
}

#[test]
fn mock_layouts_match_the_real_files() {
    let Some(real) = real_data_dir() else { return };
    let cfg = common::small_config(17, 30);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    generate(&cfg, dir.path(), &|_, _| {}).unwrap_or_else(|e| panic!("generate: {e}"));
    let d = dir.path();
    let fparam = ["FPARAM", "PARAM", "PARAMFLAG", "SN_MEDIAN", "COEFF"];
    compare(
        &first(&d.join("sdss"), "spec-"),
        &real.join("sdss/spec-0266-51602-0013.fits"),
        &fparam,
    );
    compare(
        &first(&d.join("desi"), "coadd-"),
        &real.join("desi/coadd-5-169-thru20210419.fits"),
        &fparam,
    );
    compare(
        &first(&d.join("desi"), "redrock-"),
        &real.join("desi/redrock-4-80613-thru20210324.fits"),
        &fparam,
    );
    compare(
        &first(&d.join("apogee"), "apStar-"),
        &real.join("apogee/apStar-r6-2M17334253-1654573.fits"),
        &fparam,
    );
    compare(
        &first(&d.join("apogee"), "aspcapStar-"),
        &real.join("apogee/aspcapStar-r6-l30e.2-2M17334253-1654573.fits"),
        &fparam,
    );
    compare(
        &first(&d.join("galah"), "9"),
        &real.join("galah/2101150001010013.fits"),
        &fparam,
    );
    compare(
        &first(&d.join("lamost"), "spec-"),
        &real.join("lamost/spec-55859-F5902_sp01-001.fits.gz"),
        &fparam,
    );
}
