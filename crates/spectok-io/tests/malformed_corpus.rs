//! A corpus of malformed inputs, generated in a temp dir: hand-built FITS
//! headers (wrong BITPIX, gigantic or negative NAXIS claims, missing END,
//! zero-row images and tables, NaN/inf/negative/non-monotonic wavelengths
//! in keywords and columns), gzip and other compressions gone wrong, HDF5
//! files with missing or mis-shaped datasets, and — with the real survey
//! files — flipped header bytes and missing HDUs in every survey layout.
//!
//! Every case must give one-line errors naming the file or counted
//! per-spectrum skips, never a panic; every spectrum that is returned must
//! satisfy `Spectrum::validate`; and the whole corpus must run in bounded
//! memory (peak RSS checked at the end).

use std::io::Write;
use std::path::{Path, PathBuf};

use spectok_io::shard::ShardWriter;
use spectok_io::testdata::real_data_dir;
use spectok_io::{
    plan_inputs, read_unit, Error, Format, Labels, Medium, Segment, Source, Spectrum, Survey,
};

// ---------------------------------------------------------------------------
// Reading a case
// ---------------------------------------------------------------------------

/// What a case must give.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// No spectrum, at least one error.
    Error,
    /// At least one spectrum.
    Spectra,
    /// Anything but a panic (corruptions that may or may not matter).
    NoPanic,
}

/// The outcome of reading one case.
struct Outcome {
    spectra: Vec<Spectrum>,
    errors: Vec<Error>,
}

/// Plans and reads `file` (with `format` forced if given), every spectrum
/// of every stream.
fn read_all(file: &Path, format: Option<Format>) -> Outcome {
    let plan = plan_inputs(&[file.display().to_string()], format);
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
    Outcome { spectra, errors }
}

/// The corpus: runs each case and checks the rules every case obeys.
struct Corpus {
    dir: tempfile::TempDir,
    cases: usize,
    errors: usize,
    spectra: usize,
}

impl Corpus {
    fn new() -> Corpus {
        Corpus {
            dir: tempfile::tempdir().unwrap(),
            cases: 0,
            errors: 0,
            spectra: 0,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `bytes` as `name` and checks it.
    fn bytes(&mut self, name: &str, bytes: &[u8], format: Option<Format>, expect: Expect) {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        self.check(&p, format, expect);
    }

    /// Reads `file` and checks the outcome; returns the error messages.
    fn check(&mut self, file: &Path, format: Option<Format>, expect: Expect) -> Vec<String> {
        let out = read_all(file, format);
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let msgs: Vec<String> = out.errors.iter().map(|e| e.to_string()).collect();
        for m in &msgs {
            assert!(!m.contains('\n'), "{name}: multi-line error: {m}");
            assert!(
                m.contains(&name),
                "{name}: error does not name the file: {m}"
            );
        }
        for s in &out.spectra {
            if let Err((field, why)) = s.validate() {
                panic!("{name}: invalid spectrum returned: {field}: {why}");
            }
        }
        match expect {
            Expect::Error => assert!(
                out.spectra.is_empty() && !out.errors.is_empty(),
                "{name}: expected an error, got {} spectra and errors {msgs:?}",
                out.spectra.len()
            ),
            Expect::Spectra => assert!(
                !out.spectra.is_empty(),
                "{name}: expected spectra, got errors {msgs:?}"
            ),
            Expect::NoPanic => {}
        }
        self.cases += 1;
        self.errors += out.errors.len();
        self.spectra += out.spectra.len();
        msgs
    }
}

// ---------------------------------------------------------------------------
// Hand-built FITS
// ---------------------------------------------------------------------------

/// One 80-character header card.
fn card(key: &str, value: &str) -> String {
    let c = if value.is_empty() {
        key.to_string()
    } else {
        format!("{key:<8}= {value:>20}")
    };
    format!("{c:<80}")
}

fn text(key: &str, value: &str) -> String {
    card(key, &format!("'{value:<8}'"))
}

/// A header of `cards` closed by END (unless `end` is false), padded to
/// whole 2880-byte blocks.
fn header(cards: &[String], end: bool) -> Vec<u8> {
    let mut h: String = cards.concat();
    if end {
        h.push_str(&format!("{:<80}", "END"));
    }
    let mut b = h.into_bytes();
    pad(&mut b, b' ');
    b
}

fn pad(b: &mut Vec<u8>, with: u8) {
    let n = b.len().div_ceil(2880) * 2880;
    b.resize(n, with);
}

/// A primary HDU holding a BITPIX −32 image of `rows` × `cols` big-endian
/// floats given by `value(row, col)`, with extra cards.
fn primary_image(
    rows: usize,
    cols: usize,
    extra: &[String],
    value: impl Fn(usize, usize) -> f32,
) -> Vec<u8> {
    let mut cards = vec![
        card("SIMPLE", "T"),
        card("BITPIX", "-32"),
        card("NAXIS", "2"),
        card("NAXIS1", &cols.to_string()),
        card("NAXIS2", &rows.to_string()),
    ];
    cards.extend_from_slice(extra);
    let mut b = header(&cards, true);
    let mut data = Vec::with_capacity(rows * cols * 4);
    for r in 0..rows {
        for c in 0..cols {
            data.extend_from_slice(&value(r, c).to_be_bytes());
        }
    }
    pad(&mut data, 0);
    b.extend(data);
    b
}

/// An SDSS spSpec-like primary image (5 × n, log-linear COEFF0/COEFF1).
fn spspec(n: usize, coeff0: &str, coeff1: &str) -> Vec<u8> {
    primary_image(
        5,
        n,
        &[
            card("COEFF0", coeff0),
            card("COEFF1", coeff1),
            text("NAME", "made-up"),
        ],
        |r, c| match r {
            2 => 0.1,
            3 => 0.0,
            _ => 1.0 + c as f32 * 1e-3,
        },
    )
}

/// A LAMOST LRS old-layout image (5 × n; row 2 is the wavelength).
fn lamost_old(n: usize, wave: impl Fn(usize) -> f32) -> Vec<u8> {
    primary_image(
        5,
        n,
        &[
            text("TELESCOP", "LAMOST"),
            text("OBSID", "12345"),
            card("COEFF0", "3.5682"),
            card("COEFF1", "0.0001"),
        ],
        |r, c| match r {
            2 => wave(c),
            1 => 1.0,
            _ => 1.0 + c as f32,
        },
    )
}

/// A minimal primary header with no data.
fn empty_primary() -> Vec<u8> {
    header(
        &[
            card("SIMPLE", "T"),
            card("BITPIX", "8"),
            card("NAXIS", "0"),
            card("EXTEND", "T"),
        ],
        true,
    )
}

/// A binary-table extension of float (`E`) columns `cols`, each holding
/// `repeat` values per row, with `rows` rows of `value(col, i)`.
fn bintable(
    name: &str,
    cols: &[&str],
    repeat: usize,
    rows: usize,
    value: impl Fn(usize, usize) -> f32,
) -> Vec<u8> {
    let mut cards = vec![
        text("XTENSION", "BINTABLE"),
        card("BITPIX", "8"),
        card("NAXIS", "2"),
        card("NAXIS1", &(cols.len() * repeat * 4).to_string()),
        card("NAXIS2", &rows.to_string()),
        card("PCOUNT", "0"),
        card("GCOUNT", "1"),
        card("TFIELDS", &cols.len().to_string()),
    ];
    for (i, c) in cols.iter().enumerate() {
        cards.push(text(&format!("TTYPE{}", i + 1), c));
        cards.push(text(&format!("TFORM{}", i + 1), &format!("{repeat}E")));
    }
    cards.push(text("EXTNAME", name));
    let mut b = header(&cards, true);
    let mut data = Vec::new();
    for _ in 0..rows {
        for (ci, _) in cols.iter().enumerate() {
            for i in 0..repeat {
                data.extend_from_slice(&value(ci, i).to_be_bytes());
            }
        }
    }
    pad(&mut data, 0);
    b.extend(data);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

// ---------------------------------------------------------------------------
// Editing real FITS files byte-wise
// ---------------------------------------------------------------------------

/// Where each HDU of a FITS file lies: header start, data start, data
/// length (without padding).
fn hdus(bytes: &[u8]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 2880 <= bytes.len() {
        let start = at;
        let mut keys = std::collections::HashMap::new();
        loop {
            if at + 80 > bytes.len() {
                return out;
            }
            let c = String::from_utf8_lossy(&bytes[at..at + 80]).to_string();
            at += 80;
            if c.starts_with("END ") || c.trim_end() == "END" {
                break;
            }
            if c.get(8..10) == Some("= ") {
                let v = c[10..].split('/').next().unwrap_or("").trim().to_string();
                keys.insert(c[..8].trim().to_string(), v);
            }
        }
        at = at.div_ceil(2880) * 2880;
        let num = |k: &str| keys.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let naxis = num("NAXIS");
        let mut n: i64 = if naxis > 0 { 1 } else { 0 };
        for i in 1..=naxis {
            n *= num(&format!("NAXIS{i}"));
        }
        let len = (num("BITPIX").unsigned_abs() as i64 / 8 * (n + num("PCOUNT"))) as usize;
        out.push((start, at, len));
        at += len.div_ceil(2880) * 2880;
    }
    out
}

/// Rewrites the value of card `key` in the header starting at `from`
/// (same card, value right-justified in columns 11–30).
fn set_card(bytes: &mut [u8], from: usize, key: &str, value: &str) {
    let want = format!("{key:<8}=");
    let mut at = from;
    loop {
        assert!(at + 80 <= bytes.len(), "card {key} not found");
        if bytes[at..at + 9] == *want.as_bytes() {
            let v = format!(" {value:>20}");
            let mut cardv = v.into_bytes();
            cardv.resize(71, b' ');
            bytes[at + 9..at + 80].copy_from_slice(&cardv);
            return;
        }
        if &bytes[at..at + 3] == b"END" {
            panic!("card {key} not found");
        }
        at += 80;
    }
}

/// Overwrites the data of image HDU `hdu` (BITPIX −32 or −64) with `v`.
fn fill_image(bytes: &mut [u8], hdu: usize, bitpix: i32, v: f64) {
    let (_, data, len) = hdus(bytes)[hdu];
    let w = (bitpix.unsigned_abs() / 8) as usize;
    for i in (0..len).step_by(w) {
        if w == 8 {
            bytes[data + i..data + i + 8].copy_from_slice(&v.to_be_bytes());
        } else {
            bytes[data + i..data + i + 4].copy_from_slice(&(v as f32).to_be_bytes());
        }
    }
}

fn copy(src: &Path, dst: &Path) {
    std::fs::write(dst, std::fs::read(src).unwrap()).unwrap();
}

fn delete_hdu(file: &Path, hdu: usize) {
    let mut f = fitsio::FitsFile::edit(file).unwrap();
    let h = f.hdu(hdu).unwrap();
    h.delete(&mut f).unwrap();
}

// ---------------------------------------------------------------------------
// HDF5
// ---------------------------------------------------------------------------

fn spectrum(n: usize) -> Spectrum {
    Spectrum {
        id: "obj-1".into(),
        survey: Survey::Sdss,
        source: Source {
            file: PathBuf::from("made-up.fits"),
            hdu: "COADD".into(),
            row: None,
        },
        wavelength: (0..n).map(|i| 4000.0 + i as f64).collect(),
        flux: vec![1.0; n],
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

/// A valid shard of three spectra at `path`.
fn shard(path: &Path) {
    let mut w = ShardWriter::create(path).unwrap();
    for n in [10, 20, 30] {
        w.write(&spectrum(n)).unwrap();
    }
    w.finish().unwrap();
}

/// Replaces 1-D dataset `name` of `file` by `values`.
fn replace<T: hdf5::H5Type>(file: &Path, name: &str, values: &[T]) {
    let f = hdf5::File::open_rw(file).unwrap();
    f.unlink(name).unwrap();
    let ds = f
        .new_dataset::<T>()
        .shape(values.len())
        .create(name)
        .unwrap();
    if !values.is_empty() {
        ds.write_raw(values).unwrap();
    }
}

/// Rewrites string dataset `name` of `file` (its values kept, the extent
/// grown to `extent` elements) stored contiguously, or chunked with the
/// shuffle filter and no compression, then applies
/// `edit` to the stored descriptor of its first element: the 4-byte
/// length, 8-byte heap collection address and 4-byte object index.
fn edit_string_descriptor(
    file: &Path,
    name: &str,
    chunked: bool,
    extent: usize,
    edit: impl Fn(&mut [u8; 16]),
) {
    use hdf5::types::VarLenUnicode;
    let (at, stride) = {
        let f = hdf5::File::open_rw(file).unwrap();
        let values: Vec<VarLenUnicode> = f.dataset(name).unwrap().read_raw().unwrap();
        f.unlink(name).unwrap();
        let mut b = f
            .new_dataset::<VarLenUnicode>()
            .shape(extent.max(values.len()));
        if chunked {
            b = b.chunk(values.len()).shuffle();
        }
        let ds = b.create(name).unwrap();
        ds.write_slice(&values, 0..values.len()).unwrap();
        f.flush().unwrap();
        if chunked {
            // Shuffled, byte k of element 0 is at k × elements; the library
            // skips the shuffle for variable-length data (and says so in
            // the chunk's filter mask).
            let info = ds.chunk_info(0).unwrap();
            let shuffled = info.filter_mask & 1 == 0;
            (info.addr, if shuffled { values.len() } else { 1 })
        } else {
            (ds.offset().unwrap(), 1)
        }
    };
    let mut bytes = std::fs::read(file).unwrap();
    let mut desc = [0u8; 16];
    for (k, d) in desc.iter_mut().enumerate() {
        *d = bytes[at as usize + k * stride];
    }
    edit(&mut desc);
    for (k, d) in desc.iter().enumerate() {
        bytes[at as usize + k * stride] = *d;
    }
    std::fs::write(file, bytes).unwrap();
}

fn unlink(file: &Path, name: &str) {
    hdf5::File::open_rw(file).unwrap().unlink(name).unwrap();
}

/// Peak resident memory of this process in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------

/// Hand-built FITS headers and data.
fn synthetic_fits(c: &mut Corpus) {
    use Expect::*;
    let ok = spspec(100, "3.5", "0.0001");
    c.bytes("spspec-valid.fits", &ok, None, Spectra);

    // Cut short and header problems.
    c.bytes("only-simple.fits", b"SIMPLE", None, Error);
    c.bytes("cut-2879.fits", &ok[..2879], None, Error);
    c.bytes("cut-in-data.fits", &ok[..2880 + 100], None, Error);
    let mut no_end = header(&[card("SIMPLE", "T"), card("BITPIX", "8")], false);
    no_end.extend(vec![b' '; 2880]);
    c.bytes("no-end-card.fits", &no_end, None, Error);
    let simple_f = header(
        &[card("SIMPLE", "F"), card("BITPIX", "8"), card("NAXIS", "0")],
        true,
    );
    c.bytes("simple-false.fits", &simple_f, None, Error);

    // BITPIX and NAXIS claims.
    for (name, key, value) in [
        ("bitpix-12.fits", "BITPIX", "12"),
        ("bitpix-0.fits", "BITPIX", "0"),
        ("bitpix-text.fits", "BITPIX", "'float'"),
        ("naxis-1000.fits", "NAXIS", "1000"),
        ("naxis-negative.fits", "NAXIS", "-1"),
        ("naxis1-2e40.fits", "NAXIS1", "1099511627776"),
        ("naxis1-negative.fits", "NAXIS1", "-5"),
        ("naxis2-huge.fits", "NAXIS2", "4000000000"),
    ] {
        let mut b = ok.clone();
        set_card(&mut b, 0, key, value);
        c.bytes(name, &b, Some(Format::SdssSpSpec), Error);
    }
    // BITPIX changed to 16: the data no longer fill the claimed size
    // consistently with the rest; anything but a panic.
    let mut b = ok.clone();
    set_card(&mut b, 0, "BITPIX", "16");
    c.bytes("bitpix-16.fits", &b, None, NoPanic);
    // Zero-size image.
    let zero = primary_image(
        5,
        0,
        &[card("COEFF0", "3.5"), card("COEFF1", "0.0001")],
        |_, _| 0.0,
    );
    c.bytes("image-5x0.fits", &zero, Some(Format::SdssSpSpec), Error);
    let one_row = spspec(1, "3.5", "0.0001");
    c.bytes("spspec-1px.fits", &one_row, None, NoPanic);

    // Wavelength keywords: NaN, inf, negative step, zero step, overflow.
    for (name, c0, c1) in [
        ("coeff0-nan.fits", "NaN", "0.0001"),
        ("coeff0-text.fits", "'abc'", "0.0001"),
        ("coeff1-inf.fits", "3.5", "1E400"),
        ("coeff1-zero.fits", "3.5", "0.0"),
        ("coeff0-overflow.fits", "400.0", "0.0001"),
    ] {
        c.bytes(name, &spspec(100, c0, c1), Some(Format::SdssSpSpec), Error);
    }

    // log10 λ = −3.5 is a tiny but valid wavelength: read or refused.
    c.bytes(
        "coeff0-negative.fits",
        &spspec(100, "-3.5", "0.0001"),
        Some(Format::SdssSpSpec),
        NoPanic,
    );
    // A decreasing grid is reversed, not refused.
    c.bytes(
        "coeff1-negative.fits",
        &spspec(100, "3.5", "-0.0001"),
        Some(Format::SdssSpSpec),
        Spectra,
    );

    // LAMOST old layout: the wavelength row is data.
    c.bytes(
        "lamost-old-valid.fits",
        &lamost_old(50, |i| 4000.0 + i as f32),
        None,
        Spectra,
    );
    for (name, w) in [
        (
            "lamost-wave-nan.fits",
            Box::new(|_| f32::NAN) as Box<dyn Fn(usize) -> f32>,
        ),
        (
            "lamost-wave-inf.fits",
            Box::new(|i| {
                if i == 7 {
                    f32::INFINITY
                } else {
                    4000.0 + i as f32
                }
            }),
        ),
        (
            "lamost-wave-negative.fits",
            Box::new(|i| -4000.0 + i as f32),
        ),
        (
            "lamost-wave-nonmono.fits",
            Box::new(|i| if i == 20 { 3000.0 } else { 4000.0 + i as f32 }),
        ),
        ("lamost-wave-zero.fits", Box::new(|_| 0.0)),
    ] {
        let msgs = c.check(
            &{
                let p = c.path(name);
                std::fs::write(&p, lamost_old(50, w)).unwrap();
                p
            },
            None,
            Error,
        );
        assert!(
            msgs.iter().any(|m| m.contains("wavelength")),
            "{name}: {msgs:?}"
        );
    }

    // Tables: an SDSS-like COADD with no rows, with gigantic repeat and row
    // claims, and with NaN/inf/negative loglam.
    let coadd = |rows: usize, loglam: fn(usize) -> f32| {
        let mut b = empty_primary();
        b.extend(bintable(
            "COADD",
            &["loglam", "flux", "ivar", "and_mask"],
            1,
            rows,
            move |col, _| if col == 0 { loglam(0) } else { 1.0 },
        ));
        b
    };
    c.bytes(
        "coadd-0-rows.fits",
        &coadd(0, |_| 3.6),
        Some(Format::SdssSpec),
        Error,
    );
    let mut b = coadd(3, |_| 3.6);
    let ext = hdus(&b)[1].0;
    set_card(&mut b, ext, "NAXIS2", "1099511627776");
    c.bytes("coadd-rows-2e40.fits", &b, Some(Format::SdssSpec), Error);
    let mut b = coadd(3, |_| 3.6);
    set_card(&mut b, ext, "TFORM1", "'1000000000E'");
    c.bytes("coadd-repeat-1e9.fits", &b, Some(Format::SdssSpec), Error);
    let mut b = coadd(3, |_| 3.6);
    set_card(&mut b, ext, "TFIELDS", "999");
    c.bytes("coadd-tfields-999.fits", &b, Some(Format::SdssSpec), Error);
    let mut b = coadd(3, |_| 3.6);
    set_card(&mut b, ext, "XTENSION", "'FOOBAR  '");
    c.bytes("xtension-foobar.fits", &b, None, Error);
    c.bytes(
        "coadd-loglam-nan.fits",
        &coadd(3, |_| f32::NAN),
        Some(Format::SdssSpec),
        Error,
    );
    c.bytes(
        "coadd-loglam-inf.fits",
        &coadd(3, |_| f32::INFINITY),
        Some(Format::SdssSpec),
        Error,
    );
    c.bytes(
        "coadd-loglam-neg.fits",
        &coadd(3, |_| -3.6),
        Some(Format::SdssSpec),
        Error,
    );

    // Gaia XP sampled table with NaN fluxes: read (nothing valid) or skipped.
    let mut b = empty_primary();
    b.extend(bintable("", &["flux", "flux_error"], 343, 2, |_, _| {
        f32::NAN
    }));
    c.bytes("gaiaxp-nan.fits", &b, Some(Format::GaiaXpSampled), NoPanic);

    // An extension header cut short after a valid primary.
    let mut b = ok.clone();
    b.extend_from_slice(&text("XTENSION", "BINTABLE").into_bytes()[..80]);
    c.bytes("ext-header-cut.fits", &b, None, Error);
}

/// Compression problems.
fn compression(c: &mut Corpus) {
    use Expect::*;
    let ok = spspec(100, "3.5", "0.0001");
    c.bytes("gz-valid.fits.gz", &gzip(&ok), None, Spectra);
    let mut garbage = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    garbage.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    c.bytes("gz-garbage.fits.gz", &garbage, None, Error);
    c.bytes("gz-of-text.fits.gz", &gzip(b"no FITS in here"), None, Error);
    let gz = gzip(&ok);
    c.bytes("gz-cut.fits.gz", &gz[..gz.len() / 2], None, Error);
    // The trailer claims 4 GiB: refused before anything is allocated.
    let mut lying = gz.clone();
    let n = lying.len();
    lying[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    let msgs = c.check(
        &{
            let p = c.path("gz-trailer-4g.fits.gz");
            std::fs::write(&p, &lying).unwrap();
            p
        },
        Some(Format::SdssSpSpec),
        Error,
    );
    assert!(msgs.iter().any(|m| m.contains("trailer")), "{msgs:?}");
    // A gzip bomb: ~1 MiB that inflates past the limit.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&ok).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut written = ok.len() as u64;
    while written <= spectok_io::fits::MAX_GZIP_BYTES {
        enc.write_all(&zeros).unwrap();
        written += zeros.len() as u64;
    }
    let bomb = enc.finish().unwrap();
    assert!(bomb.len() < 8 << 20);
    let p = c.path("gz-bomb.fits.gz");
    std::fs::write(&p, &bomb).unwrap();
    let msgs = c.check(&p, Some(Format::SdssSpSpec), Error);
    assert!(msgs.iter().any(|m| m.contains("more than")), "{msgs:?}");
    // Zero padding after the gzip member (as some archives write): read.
    let mut padded = gzip(&ok);
    pad(&mut padded, 0);
    c.bytes("gz-padded.fits.gz", &padded, None, Spectra);
    // A second member after the first is not read (cfitsio reads one), so
    // a bomb hidden there costs nothing.
    let mut two = gzip(&ok);
    two.extend(gzip(&vec![0u8; 64 << 20]));
    let n = two.len();
    two[n - 4..].copy_from_slice(&[0; 4]);
    c.bytes("gz-two-members.fits.gz", &two, None, Spectra);
    // Compressions cfitsio would also open: refused by name.
    for (name, magic) in [
        ("unix-compress.fits.Z", &[0x1f, 0x9d, 0x90][..]),
        ("pkzip.fits.zip", &b"PK\x03\x04"[..]),
    ] {
        let mut b = magic.to_vec();
        b.extend(vec![0u8; 3000]);
        let p = c.path(name);
        std::fs::write(&p, &b).unwrap();
        c.check(&p, Some(Format::SdssSpec), Error);
    }
}

/// HDF5 files with missing, mis-shaped or lying datasets.
fn hdf5_cases(c: &mut Corpus) {
    use Expect::*;
    let mut junk = b"\x89HDF\r\n\x1a\n".to_vec();
    junk.extend(vec![0xAB; 4000]);
    c.bytes("hdf5-garbage.h5", &junk, None, Error);
    c.bytes(
        "hdf5-garbage-forced.h5",
        &junk,
        Some(Format::MmuHdf5),
        Error,
    );
    let p = c.path("hdf5-empty.h5");
    hdf5::File::create(&p).unwrap();
    c.check(&p, None, Error);
    c.check(&p, Some(Format::SpectokShard), Error);

    // MMU-like: 1-D where 2-D is expected, and a missing ivar.
    let p = c.path("mmu-1d.h5");
    {
        let f = hdf5::File::create(&p).unwrap();
        for name in ["spectrum_flux", "spectrum_lambda", "spectrum_ivar"] {
            f.new_dataset::<f32>()
                .shape(10)
                .create(name)
                .unwrap()
                .write_raw(&[1.0f32; 10])
                .unwrap();
        }
    }
    c.check(&p, None, Error);
    let p = c.path("mmu-nan-lambda.h5");
    {
        let f = hdf5::File::create(&p).unwrap();
        for name in [
            "spectrum_flux",
            "spectrum_lambda",
            "spectrum_ivar",
            "spectrum_mask",
        ] {
            let v = if name == "spectrum_lambda" {
                f32::NAN
            } else {
                1.0
            };
            f.new_dataset::<f32>()
                .shape((2, 10))
                .create(name)
                .unwrap()
                .write_raw(&[v; 20])
                .unwrap();
        }
    }
    c.check(&p, None, Error);

    // Shards: start from a valid one, break one thing at a time.
    let base = c.path("shard-valid.h5");
    shard(&base);
    c.check(&base, None, Spectra);
    type Edit = Box<dyn Fn(&Path)>;
    let edits: Vec<(&str, Expect, Edit)> = vec![
        ("shard-no-flux.h5", Error, Box::new(|p| unlink(p, "flux"))),
        (
            "shard-no-offsets.h5",
            Error,
            Box::new(|p| unlink(p, "offsets")),
        ),
        (
            "shard-offsets-decreasing.h5",
            NoPanic,
            Box::new(|p| replace::<u64>(p, "offsets", &[0, 30, 10, 60])),
        ),
        (
            "shard-offsets-2e40.h5",
            NoPanic,
            Box::new(|p| replace::<u64>(p, "offsets", &[0, 10, 30, 1 << 40])),
        ),
        (
            "shard-offsets-empty.h5",
            Error,
            Box::new(|p| replace::<u64>(p, "offsets", &[])),
        ),
        (
            "shard-flux-short.h5",
            Error,
            Box::new(|p| replace::<f32>(p, "flux", &[1.0; 5])),
        ),
        (
            "shard-wavelength-nan.h5",
            Error,
            Box::new(|p| replace::<f64>(p, "wavelength", &[f64::NAN; 60])),
        ),
        (
            "shard-segment-2e40.h5",
            NoPanic,
            Box::new(|p| replace::<u64>(p, "segment_ends", &[10, 1 << 40, 30])),
        ),
        (
            "shard-version-99.h5",
            Error,
            Box::new(|p| {
                let f = hdf5::File::open_rw(p).unwrap();
                f.delete_attr(spectok_io::hdf5util::SHARD_MARKER).unwrap();
                f.new_attr::<u32>()
                    .create(spectok_io::hdf5util::SHARD_MARKER)
                    .unwrap()
                    .write_scalar(&99u32)
                    .unwrap();
            }),
        ),
    ];
    // The HDF5 library copies a variable-length string by the size its
    // global heap object claims: a claim past the collection would crash
    // the process, a zero-size free space would hang it. Both are refused
    // before the library reads them.
    let base_bytes = std::fs::read(&base).unwrap();
    let gcol = base_bytes
        .windows(8)
        .position(|w| w == b"GCOL\x01\0\0\0")
        .expect("a shard has a global heap");
    let first_object = gcol + 16;
    // (and a size near 2⁶⁴, whose padding would overflow)
    for claim in [16_711_684u64, u64::MAX - 8] {
        let mut b = base_bytes.clone();
        b[first_object + 8..first_object + 16].copy_from_slice(&claim.to_le_bytes());
        for fmt in [None, Some(Format::SpectokShard), Some(Format::MmuHdf5)] {
            let p = c.path(&format!("shard-heap-object-{claim}.h5"));
            std::fs::write(&p, &b).unwrap();
            let msgs = c.check(&p, fmt, Error);
            assert!(msgs.iter().any(|m| m.contains("global heap")), "{msgs:?}");
        }
    }
    let mut b = base_bytes.clone();
    let size = u64::from_le_bytes(b[gcol + 8..gcol + 16].try_into().unwrap()) as usize;
    // Walk to the free-space object and make its size 0.
    let mut at = first_object;
    while u16::from_le_bytes([b[at], b[at + 1]]) != 0 {
        let n = u64::from_le_bytes(b[at + 8..at + 16].try_into().unwrap()) as usize;
        at += 16 + n.div_ceil(8) * 8;
        assert!(at + 16 <= gcol + size);
    }
    b[at + 8..at + 16].copy_from_slice(&0u64.to_le_bytes());
    c.bytes("shard-heap-free-space-0.h5", &b, None, Error);

    // The HDF5 library allocates and zeroes a buffer of the length a
    // variable-length string descriptor claims before it reads the heap
    // object, and then copies the whole object into it: a claim of 2 GB
    // takes 2 GB, a claim shorter than the object overruns the buffer.
    // Every descriptor is checked against its object before any read.
    let claim = |n: u32| move |d: &mut [u8; 16]| d[..4].copy_from_slice(&n.to_le_bytes());
    type DescEdit = Box<dyn Fn(&mut [u8; 16])>;
    let descriptor_edits: Vec<(&str, &str, DescEdit)> = vec![
        (
            "2e9",
            "claims 2147483647 bytes",
            Box::new(claim(i32::MAX as u32)),
        ),
        ("short", "its heap object holds", Box::new(claim(1))),
        (
            "index",
            "does not exist",
            Box::new(|d: &mut [u8; 16]| d[12..16].copy_from_slice(&60_000u32.to_le_bytes())),
        ),
        (
            "address",
            "does not exist",
            Box::new(|d: &mut [u8; 16]| d[4..12].copy_from_slice(&8u64.to_le_bytes())),
        ),
    ];
    // "sparse": one chunk stored of a 10M-element extent, so the chunks are
    // found through the library's index rather than by grid position.
    for (layout, chunked, extent) in [
        ("contiguous", false, 0),
        ("chunked", true, 0),
        ("sparse", true, 10_000_000),
    ] {
        for (what, expect, edit) in &descriptor_edits {
            let p = c.path(&format!("shard-string-{what}-{layout}.h5"));
            std::fs::copy(&base, &p).unwrap();
            edit_string_descriptor(&p, "id", chunked, extent, edit);
            for fmt in [None, Some(Format::SpectokShard)] {
                let msgs = c.check(&p, fmt, Error);
                assert!(
                    msgs.iter()
                        .any(|m| m.contains("[id]") && m.contains(expect)),
                    "{what} {layout}: {msgs:?}"
                );
            }
        }
    }
    // A file that passed the checks once is checked again after a write.
    let p = c.path("shard-checked-then-broken.h5");
    std::fs::copy(&base, &p).unwrap();
    c.check(&p, None, Spectra);
    edit_string_descriptor(&p, "id", false, 0, claim(i32::MAX as u32));
    c.check(&p, None, Error);

    // HDF5 1.10 divides by a chunked layout's dimensions when it opens a
    // dataset (SIGFPE for a dimensionality or a chunk size of 0): chunked
    // layout messages are checked first.
    let layout = base_bytes
        .windows(11)
        .position(|w| w[0] == 8 && w[1] == 0 && w[5..10] == [0, 0, 0, 3, 2])
        .expect("a shard has chunked datasets");
    for (what, at, value) in [
        ("dimensionality-0", layout + 10, 0u8),
        ("chunk-size-0", layout + 8 + 3 + 8, 0u8),
    ] {
        let mut b = base_bytes.clone();
        b[at] = value;
        if what == "chunk-size-0" {
            b[at..at + 4].copy_from_slice(&[0; 4]);
        }
        let p = c.path(&format!("shard-layout-{what}.h5"));
        std::fs::write(&p, &b).unwrap();
        let msgs = c.check(&p, None, Error);
        assert!(
            msgs.iter().any(|m| m.contains("dataset layout")),
            "{what}: {msgs:?}"
        );
    }

    // HDF5 1.10 accepts a stored integer type of 255 bytes with 32 bits of
    // precision and copies past its buffers converting it (SIGSEGV).
    // `mask` is the shard's only u32 dataset (the version attribute is u32
    // too): a u32 datatype message is fixed-point version 1, size 4,
    // offset 0, precision 32. Each is made 255 bytes in turn.
    let u32_type = [0x10, 0, 0, 0, 4, 0, 0, 0, 0, 0, 32, 0];
    let mut mask_refused = false;
    for (k, at) in base_bytes
        .windows(12)
        .enumerate()
        .filter(|(_, w)| *w == u32_type)
        .map(|(i, _)| i)
        .enumerate()
    {
        let mut b = base_bytes.clone();
        b[at + 4] = 255;
        let p = c.path(&format!("shard-u32-type-{k}-255-bytes.h5"));
        std::fs::write(&p, &b).unwrap();
        let msgs = c.check(&p, None, Error);
        mask_refused |= msgs
            .iter()
            .any(|m| m.contains("[mask]") && m.contains("numeric type of 255 bytes"));
    }
    assert!(mask_refused, "no u32 type edit reached the mask dataset");

    // A version 0 superblock points (at byte 48) to a driver information
    // block; the library reads as many bytes as the block's header claims
    // before it checks the end of file (at byte 40): a 4 GB claim made it
    // allocate and zero 4 GB.
    assert_eq!(base_bytes[8], 0, "shards have a version 0 superblock");
    let mut b = base_bytes.clone();
    let at = b.len() as u64;
    b[48..56].copy_from_slice(&at.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
    b.extend_from_slice(b"NCSAmult");
    let p = c.path("shard-driver-info-4gb.h5");
    std::fs::write(&p, &b).unwrap();
    let msgs = c.check(&p, None, Error);
    assert!(
        msgs.iter().any(|m| m.contains("driver information block")),
        "{msgs:?}"
    );
    let mut b = base_bytes.clone();
    b[40..48].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let p = c.path("shard-eof-address-1tb.h5");
    std::fs::write(&p, &b).unwrap();
    let msgs = c.check(&p, None, Error);
    assert!(
        msgs.iter().any(|m| m.contains("end-of-file address")),
        "{msgs:?}"
    );

    // A flipped byte inside a deflated chunk of strings.
    let p = c.path("shard-string-deflate-flip.h5");
    std::fs::copy(&base, &p).unwrap();
    let at = {
        let f = hdf5::File::open(&p).unwrap();
        let ds = f.dataset("id").unwrap();
        let info = ds.chunk_info(0).unwrap();
        info.addr + info.size / 2
    };
    let mut b = std::fs::read(&p).unwrap();
    b[at as usize] ^= 0x5A;
    std::fs::write(&p, b).unwrap();
    c.check(&p, None, NoPanic);

    for (name, expect, edit) in edits {
        let p = c.path(name);
        std::fs::copy(&base, &p).unwrap();
        edit(&p);
        c.check(&p, None, expect);
        c.check(&p, Some(Format::SpectokShard), expect);
    }
}

/// Real survey files with flipped header bytes and missing HDUs.
fn real_files(c: &mut Corpus, root: &Path) {
    use Expect::*;
    let sources = [
        ("sdss/spec-0266-51602-0013.fits", Format::SdssSpec),
        ("desi/coadd-4-80613-thru20210324.fits", Format::DesiCoadd),
        (
            "apogee/apStar-r6-2M03290406+3117075.fits",
            Format::ApogeeApStar,
        ),
        (
            "lamost/spec-58397-EG014118N254444M01_sp03-031.fits",
            Format::LamostLrsOld,
        ),
        ("galah/2101150001010011.fits", Format::GalahCcd),
        ("gaiaxp/XP_SPECTRA_RAW_mini.fits", Format::GaiaXpSampled),
    ];
    // Flipped bytes at spread positions of the first two headers.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for (rel, fmt) in sources {
        let bytes = std::fs::read(root.join(rel)).unwrap();
        let layout = hdus(&bytes);
        for k in 0..6 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let (hstart, dstart, _) = layout[(k % 2).min(layout.len() - 1)];
            let at = hstart + (seed >> 33) as usize % (dstart - hstart);
            let mut b = bytes.clone();
            b[at] ^= 0x5A;
            let name = format!(
                "flip{at}-{}",
                Path::new(rel).file_name().unwrap().to_string_lossy()
            );
            let p = c.path(&name);
            std::fs::write(&p, &b).unwrap();
            c.check(&p, None, NoPanic);
            c.check(&p, Some(fmt), NoPanic);
        }
    }

    // Missing HDUs, forced to the layout they came from. Where the next HDU
    // moves into the gap and looks the part (APOGEE's unnamed images, the
    // SDSS label table), reading may succeed; the rest must fail.
    for (rel, fmt, hdu, expect) in [
        (
            "desi/coadd-4-80613-thru20210324.fits",
            Format::DesiCoadd,
            1,
            Error,
        ), // FIBERMAP
        (
            "desi/coadd-4-80613-thru20210324.fits",
            Format::DesiCoadd,
            3,
            Error,
        ), // B_WAVELENGTH
        (
            "apogee/apStar-r6-2M03290406+3117075.fits",
            Format::ApogeeApStar,
            1,
            NoPanic,
        ),
        (
            "apogee/aspcapStar-r6-l30e.2-2M03290406+3117075.fits",
            Format::ApogeeAspcapStar,
            4,
            Error,
        ),
        (
            "apogee/apVisit-2M00452143+1634446-0.fits",
            Format::ApogeeApVisit,
            4,
            Error,
        ),
        ("galah/2101150001010011.fits", Format::GalahCcd, 1, Error),
        (
            "lamost/med-58408-TD230151N343645T01_sp01-015.fits",
            Format::LamostMrs,
            2,
            Error,
        ),
        (
            "sdss/spec-0266-51602-0013.fits",
            Format::SdssSpec,
            2,
            NoPanic,
        ), // SPECOBJ
        (
            "gaiaxp/XP_SPECTRA_RAW_mini.fits",
            Format::GaiaXpSampled,
            1,
            Error,
        ),
    ] {
        let name = format!(
            "nohdu{hdu}-{}",
            Path::new(rel).file_name().unwrap().to_string_lossy()
        );
        let p = c.path(&name);
        copy(&root.join(rel), &p);
        delete_hdu(&p, hdu);
        c.check(&p, Some(fmt), expect);
        c.check(&p, None, NoPanic);
    }

    // Wavelength keywords of real files made NaN, infinite or negative.
    for (rel, fmt, key, value) in [
        (
            "apogee/apStar-r6-2M03290406+3117075.fits",
            Format::ApogeeApStar,
            "CRVAL1",
            "NaN",
        ),
        (
            "apogee/apStar-r6-2M03290406+3117075.fits",
            Format::ApogeeApStar,
            "CDELT1",
            "-6E-06",
        ),
        (
            "apogee/aspcapStar-r6-l30e.2-2M03290406+3117075.fits",
            Format::ApogeeAspcapStar,
            "CDELT1",
            "0.0",
        ),
        (
            "galah/2101150001010011.fits",
            Format::GalahCcd,
            "CRVAL1",
            "1E400",
        ),
        (
            "galah/2101150001010011.fits",
            Format::GalahCcd,
            "CDELT1",
            "-0.05",
        ),
        (
            "other/linetools_SDSSJ220248.31+123656.3.fits",
            Format::SdssSpSpec,
            "COEFF0",
            "NaN",
        ),
    ] {
        let name = format!(
            "{key}-{value}-{}",
            Path::new(rel).file_name().unwrap().to_string_lossy()
        );
        let p = c.path(&name);
        let mut b = std::fs::read(root.join(rel)).unwrap();
        let hdu = if rel.starts_with("apogee") { 1 } else { 0 };
        let start = hdus(&b)[hdu].0;
        let present = {
            let want = format!("{key:<8}=");
            (start..)
                .step_by(80)
                .take_while(|&a| a + 80 <= b.len() && &b[a..a + 3] != b"END")
                .any(|a| b[a..a + 9] == *want.as_bytes())
        };
        if !present {
            continue;
        }
        set_card(&mut b, start, key, value);
        std::fs::write(&p, &b).unwrap();
        c.check(&p, Some(fmt), Error);
    }

    // Wavelength data of real files made NaN or negative.
    let p = c.path("desi-bwave-nan.fits");
    let mut b = std::fs::read(root.join("desi/coadd-4-80613-thru20210324.fits")).unwrap();
    fill_image(&mut b, 3, -64, f64::NAN);
    std::fs::write(&p, &b).unwrap();
    c.check(&p, None, Error);
    let p = c.path("apvisit-wave-negative.fits");
    let mut b = std::fs::read(root.join("apogee/apVisit-2M00452143+1634446-0.fits")).unwrap();
    fill_image(&mut b, 4, -64, -15000.0);
    std::fs::write(&p, &b).unwrap();
    c.check(&p, None, Error);
    let p = c.path("lamost-mrs-loglam-nan.fits");
    copy(
        &root.join("lamost/med-58408-TD230151N343645T01_sp01-015.fits"),
        &p,
    );
    {
        let mut f = fitsio::FitsFile::edit(&p).unwrap();
        let h = f.hdu("COADD_B").unwrap();
        h.write_col(&mut f, "LOGLAM", &vec![f32::NAN; 4101])
            .unwrap();
    }
    c.check(&p, None, NoPanic);
    let p = c.path("sdss-loglam-inf.fits");
    copy(&root.join("sdss/spec-0266-51602-0013.fits"), &p);
    {
        let mut f = fitsio::FitsFile::edit(&p).unwrap();
        let h = f.hdu("COADD").unwrap();
        h.write_col(&mut f, "loglam", &vec![f32::INFINITY; 3838])
            .unwrap();
    }
    c.check(&p, None, Error);

    // The real MMU file with its flux removed and its wavelengths 1-D.
    let mmu = root.join("mmu/sdss_healpix_sample.hdf5");
    if mmu.is_file() {
        let p = c.path("mmu-no-flux.hdf5");
        copy(&mmu, &p);
        unlink(&p, "spectrum_flux");
        c.check(&p, Some(Format::MmuHdf5), Error);
        let p = c.path("mmu-lambda-1d.hdf5");
        copy(&mmu, &p);
        replace::<f32>(&p, "spectrum_lambda", &[5000.0; 7]);
        c.check(&p, Some(Format::MmuHdf5), Error);
    }
    // A truncated gzip survey file.
    let gz = std::fs::read(root.join("other/MaNGA_test_spectra.fits.gz")).unwrap();
    c.bytes("manga-cut.fits.gz", &gz[..gz.len() * 2 / 3], None, Error);
}

#[test]
fn malformed_inputs_give_one_line_errors_in_bounded_memory() {
    let mut c = Corpus::new();
    synthetic_fits(&mut c);
    compression(&mut c);
    hdf5_cases(&mut c);
    let synthetic = c.cases;
    assert!(synthetic >= 50, "only {synthetic} synthetic cases");
    if let Some(root) = real_data_dir() {
        real_files(&mut c, &root);
        assert!(c.cases >= synthetic + 50, "only {} cases in all", c.cases);
    }
    eprintln!(
        "malformed corpus: {} cases, {} errors, {} spectra",
        c.cases, c.errors, c.spectra
    );
    if let Some(kib) = peak_rss_kib() {
        assert!(kib < 1 << 20, "peak RSS {kib} KiB over 1 GiB");
    }
}

/// cfitsio writes a NUL after each string it reads; a column whose display
/// width (TDISP) is narrower than its strings must still be read whole.
#[test]
fn text_column_wider_than_its_display_width_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tdisp.fits");
    let mut b = empty_primary();
    let mut cards = vec![
        text("XTENSION", "BINTABLE"),
        card("BITPIX", "8"),
        card("NAXIS", "2"),
        card("NAXIS1", "12"),
        card("NAXIS2", "2"),
        card("PCOUNT", "0"),
        card("GCOUNT", "1"),
        card("TFIELDS", "1"),
        text("TTYPE1", "CLASS"),
        text("TFORM1", "12A"),
        text("TDISP1", "A3"),
        text("EXTNAME", "T"),
    ];
    let mut h = header(&cards, true);
    cards.clear();
    let mut data = b"GALAXY_LONG1QSO_SHORT_XX".to_vec();
    pad(&mut data, 0);
    h.extend(data);
    b.extend(h);
    std::fs::write(&p, &b).unwrap();
    let mut f = spectok_io::fits::Fits::open(&p).unwrap();
    let v = f.read_col_text(1, "CLASS").unwrap();
    assert_eq!(
        v,
        vec!["GALAXY_LONG1".to_string(), "QSO_SHORT_XX".to_string()]
    );
}
