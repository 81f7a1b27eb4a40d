//! spectok's header index against cfitsio's own answers, on every real
//! survey FITS file: the HDU count, where each header and data block
//! lies, each HDU's description, and every valued keyword read as text,
//! as a number and as an integer.

use std::ffi::CString;
use std::os::raw::{c_char, c_int};
use std::path::{Path, PathBuf};

use fitsio::sys;

use super::header::Lookup;
use super::{Fits, HduDesc};

fn fits_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            fits_files(&p, out);
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".fits") || n.ends_with(".fit") || n.ends_with(".fits.gz"))
        {
            out.push(p);
        }
    }
}

/// cfitsio's handle on `path` (read-only), closed on drop.
struct Cfitsio(*mut sys::fitsfile);

impl Cfitsio {
    fn open(path: &Path) -> Cfitsio {
        let name = CString::new(path.to_str().unwrap()).unwrap();
        let (mut fptr, mut status) = (std::ptr::null_mut(), 0);
        // SAFETY: valid C string and out-pointers.
        unsafe { sys::ffopen(&mut fptr, name.as_ptr(), 0, &mut status) };
        assert_eq!(status, 0, "cfitsio cannot open {}", path.display());
        Cfitsio(fptr)
    }

    fn num_hdus(&self) -> usize {
        let (mut n, mut status) = (0, 0);
        // SAFETY: open handle, live out-pointers.
        unsafe { sys::ffthdu(self.0, &mut n, &mut status) };
        assert_eq!(status, 0);
        n as usize
    }

    /// Moves to HDU `i` (0-based); returns header, data and end offsets.
    fn goto(&self, i: usize) -> (u64, u64, u64) {
        let (mut kind, mut status) = (0, 0);
        let (mut head, mut data, mut end) = (0, 0, 0);
        // SAFETY: open handle, live out-pointers.
        unsafe {
            sys::ffmahd(self.0, i as c_int + 1, &mut kind, &mut status);
            sys::ffghadll(self.0, &mut head, &mut data, &mut end, &mut status);
        }
        assert_eq!(status, 0);
        (head as u64, data as u64, end as u64)
    }

    /// Rewinds the keyword search to the header's first card, so each
    /// lookup finds a keyword's first card (cfitsio searches onward from
    /// the last card read).
    fn rewind(&self) {
        let mut card = [0 as c_char; 81];
        let mut status = 0;
        // SAFETY: record 0 only resets the position; `card` has room.
        unsafe { sys::ffgrec(self.0, 0, card.as_mut_ptr(), &mut status) };
    }

    fn text(&self, key: &str) -> Option<String> {
        self.rewind();
        let k = CString::new(key).unwrap();
        let mut value = [0 as c_char; 81];
        let mut comment = [0 as c_char; 81];
        let mut status = 0;
        // SAFETY: buffers of 81 characters, as cfitsio requires.
        unsafe {
            sys::ffgkys(
                self.0,
                k.as_ptr(),
                value.as_mut_ptr(),
                comment.as_mut_ptr(),
                &mut status,
            )
        };
        // SAFETY: cfitsio NUL-terminates the value.
        (status == 0).then(|| unsafe {
            std::ffi::CStr::from_ptr(value.as_ptr())
                .to_string_lossy()
                .trim()
                .to_string()
        })
    }

    fn f64(&self, key: &str) -> Option<f64> {
        self.rewind();
        let k = CString::new(key).unwrap();
        let (mut v, mut status) = (0.0, 0);
        let mut comment = [0 as c_char; 81];
        // SAFETY: live out-pointers; the comment buffer has 81 characters.
        unsafe {
            sys::ffgkyd(
                self.0,
                k.as_ptr(),
                &mut v,
                comment.as_mut_ptr(),
                &mut status,
            )
        };
        (status == 0).then_some(v)
    }

    fn i64(&self, key: &str) -> Option<i64> {
        self.rewind();
        let k = CString::new(key).unwrap();
        let (mut v, mut status) = (0, 0);
        let mut comment = [0 as c_char; 81];
        // SAFETY: live out-pointers; the comment buffer has 81 characters.
        unsafe {
            sys::ffgkyjj(
                self.0,
                k.as_ptr(),
                &mut v,
                comment.as_mut_ptr(),
                &mut status,
            )
        };
        (status == 0).then_some(v)
    }

    /// The HDU description `fitsio` gave before spectok's index existed:
    /// cfitsio's HDU type, image size and equivalent type, table columns.
    fn describe(&self, i: usize) -> HduDesc {
        self.goto(i);
        let mut d = HduDesc {
            name: self.text("EXTNAME").unwrap_or_else(|| {
                if i == 0 {
                    "PRIMARY".into()
                } else {
                    String::new()
                }
            }),
            ..HduDesc::default()
        };
        let (mut kind, mut status) = (0, 0);
        // SAFETY: open handle positioned on HDU `i`; live out-pointers and
        // buffers sized as cfitsio documents.
        unsafe {
            sys::ffghdt(self.0, &mut kind, &mut status);
            if kind == 0 {
                let mut naxis = 0;
                sys::ffgidm(self.0, &mut naxis, &mut status);
                let mut naxes = vec![0i64; naxis as usize];
                sys::ffgiszll(self.0, naxis, naxes.as_mut_ptr(), &mut status);
                let mut bitpix = 0;
                sys::ffgiet(self.0, &mut bitpix, &mut status);
                d.bitpix = match bitpix {
                    10 | 8 => 8,
                    20 | 16 => 16,
                    40 | 32 => 32,
                    80 | 64 => 64,
                    b => b,
                };
                d.shape = naxes.iter().rev().map(|&n| n as usize).collect();
            } else {
                d.table = true;
                let (mut ncols, mut rows) = (0, 0);
                sys::ffgncl(self.0, &mut ncols, &mut status);
                sys::ffgnrwll(self.0, &mut rows, &mut status);
                d.rows = rows as usize;
                for c in 1..=ncols {
                    let (mut code, mut repeat, mut width) = (0, 0, 0);
                    sys::ffgtclll(self.0, c, &mut code, &mut repeat, &mut width, &mut status);
                    d.repeats.push(repeat as usize);
                    d.columns
                        .push(self.text(&format!("TTYPE{c}")).unwrap_or_default());
                }
            }
        }
        assert_eq!(status, 0);
        d
    }
}

impl Drop for Cfitsio {
    fn drop(&mut self) {
        let mut status = 0;
        // SAFETY: the handle was opened by ffopen and is closed once.
        unsafe { sys::ffclos(self.0, &mut status) };
    }
}

#[test]
fn header_index_agrees_with_cfitsio() {
    let Some(dir) = crate::testdata::real_data_dir() else {
        return;
    };
    let mut files = Vec::new();
    fits_files(&dir, &mut files);
    assert!(files.len() >= 40, "only {} FITS files found", files.len());
    let (mut hdus, mut keys) = (0, 0);
    let mut mismatches = Vec::new();
    for path in &files {
        let ours = Fits::open(path).unwrap_or_else(|e| panic!("{e}"));
        let cf = Cfitsio::open(path);
        let n = cf.num_hdus();
        assert_eq!(ours.hdus.len(), n, "{}: HDU count", path.display());
        for (i, h) in ours.hdus.iter().enumerate() {
            hdus += 1;
            let at = format!("{}[{i}]", path.display());
            let (head, data, end) = cf.goto(i);
            let start = if i == 0 { 0 } else { ours.hdus[i - 1].end() };
            assert_eq!(
                (start, h.data_start, h.end()),
                (head, data, end),
                "{at}: offsets"
            );
            let theirs = cf.describe(i);
            let d = &h.described().unwrap().desc;
            assert_eq!(
                (&d.name, &d.shape, d.bitpix, &d.columns, &d.repeats, d.rows, d.table),
                (
                    &theirs.name,
                    &theirs.shape,
                    theirs.bitpix,
                    &theirs.columns,
                    &theirs.repeats,
                    theirs.rows,
                    theirs.table
                ),
                "{at}: description"
            );
            for key in h.header.keywords() {
                if key.is_empty() || key == "HIERARCH" {
                    continue;
                }
                keys += 1;
                let same_f64 = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) => a == b || (a.is_nan() && b.is_nan()),
                    (a, b) => a.is_none() && b.is_none(),
                };
                let (t, f, j) = (h.header.text(&key), h.header.f64(&key), h.header.i64(&key));
                let ct = cf.text(&key);
                if t.as_deref().map(str::trim) != ct.as_deref() {
                    mismatches.push(format!("{at} {key}: text {t:?} vs cfitsio {ct:?}"));
                }
                // cfitsio's own number conversions overflow a message buffer
                // (a fortify abort) on non-numeric text of 29+ characters.
                if f.is_none() && t.as_ref().is_some_and(|t| t.len() > 20) {
                    continue;
                }
                let (cf64, cj) = (cf.f64(&key), cf.i64(&key));
                if !same_f64(f, cf64) {
                    mismatches.push(format!("{at} {key}: number {f:?} vs cfitsio {cf64:?}"));
                }
                // spectok reads a string holding an integer exactly; cfitsio
                // goes through a double.
                let exact = t
                    .as_deref()
                    .and_then(|t| t.trim().parse::<i64>().ok())
                    .filter(|&v| j == Some(v) && cj == Some(v as f64 as i64));
                if j != cj && exact.is_none() {
                    mismatches.push(format!("{at} {key}: integer {j:?} vs cfitsio {cj:?}"));
                }
            }
        }
    }
    eprintln!(
        "{} files, {hdus} HDUs, {keys} keywords compared with cfitsio",
        files.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

/// The same values, NaN equal to NaN.
fn same<T: PartialEq + Copy + std::fmt::Debug>(a: &[T], b: &[T], nan: impl Fn(T) -> bool) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y || (nan(*x) && nan(*y)))
}

#[test]
fn direct_reads_equal_cfitsio() {
    use super::header::Direct;
    let Some(dir) = crate::testdata::real_data_dir() else {
        return;
    };
    let mut files = Vec::new();
    fits_files(&dir, &mut files);
    let (mut direct, mut fallback, mut unsigned) = (0, 0, 0);
    let mut problems = Vec::new();
    for path in &files {
        let mut ours = Fits::open(path).unwrap_or_else(|e| panic!("{e}"));
        if ours.plain.is_none() {
            continue;
        }
        let mut theirs = Fits::open(path).unwrap();
        theirs.cfitsio_only = true;
        for i in 0..ours.hdus.len() {
            let at = format!("{}[{i}]", path.display());
            let described = ours.hdus[i].described().unwrap().clone();
            match described.direct.clone() {
                Direct::Image { bitpix } => {
                    let n: usize = described.desc.shape.iter().product();
                    if n == 0 || described.desc.shape.is_empty() {
                        continue;
                    }
                    let Some(a) = ours.direct_pixels::<f64>(i, 0, n) else {
                        problems.push(format!(
                            "{at}: image not read directly ({:?}, {} bytes of data)",
                            described.desc.shape, ours.hdus[i].data_len
                        ));
                        continue;
                    };
                    let b = theirs.read_pixels::<f64>(i, 0, n).unwrap();
                    if !same(&a, &b, f64::is_nan) {
                        problems.push(format!("{at}: image as f64"));
                    }
                    let a: Vec<f32> = ours.read_pixels(i, 0, n).unwrap();
                    let b: Vec<f32> = theirs.read_pixels(i, 0, n).unwrap();
                    if !same(&a, &b, f32::is_nan) {
                        problems.push(format!("{at}: image as f32"));
                    }
                    if bitpix > 0 {
                        let a = ours.direct_pixels::<i64>(i, 0, n).expect("direct integers");
                        let b: Vec<i64> = theirs.read_pixels(i, 0, n).unwrap();
                        if a != b {
                            problems.push(format!("{at}: image as i64"));
                        }
                    }
                    direct += 1;
                }
                Direct::Table { columns, .. } => {
                    let rows = described.desc.rows;
                    for (c, column) in columns.iter().enumerate() {
                        let ok = column.direct;
                        let code = described.forms[c].code;
                        let name = described.desc.columns[c].clone();
                        if !ok {
                            fallback += 1;
                            continue;
                        }
                        direct += 1;
                        if code == b'A' {
                            let a = ours.direct_text(i, c, 0..rows).expect("direct text");
                            let b = theirs.read_text_cells(i, c, 0..rows).unwrap();
                            if a != b {
                                problems.push(format!(
                                    "{at} {name}: text {:?} vs {:?}",
                                    &a[..1],
                                    &b[..1]
                                ));
                            }
                            continue;
                        }
                        let a = ours
                            .direct_cells::<f64>(i, c, 0..rows)
                            .expect("direct column");
                        let b = theirs.read_cells::<f64>(i, c, 0..rows).unwrap();
                        if !same(&a, &b, f64::is_nan) {
                            problems.push(format!("{at} {name}: column as f64"));
                        }
                        let a = ours.read_cells::<f32>(i, c, 0..rows).unwrap();
                        let b = theirs.read_cells::<f32>(i, c, 0..rows).unwrap();
                        if !same(&a, &b, f32::is_nan) {
                            problems.push(format!("{at} {name}: column as f32"));
                        }
                        if column.unsigned {
                            let a = ours
                                .direct_cells::<u64>(i, c, 0..rows)
                                .expect("direct unsigned");
                            let b = theirs.read_cells::<u64>(i, c, 0..rows).unwrap();
                            if a != b {
                                problems.push(format!("{at} {name}: column as u64"));
                            }
                            unsigned += 1;
                        }
                        if matches!(code, b'B' | b'I' | b'J' | b'K') && !column.unsigned {
                            let a = ours
                                .direct_cells::<i64>(i, c, 0..rows)
                                .expect("direct ints");
                            let b = theirs.read_cells::<i64>(i, c, 0..rows).unwrap();
                            if a != b {
                                problems.push(format!("{at} {name}: column as i64"));
                            }
                        }
                        // A part of the rows, as readers stream them.
                        if rows > 2 {
                            let a = ours.read_cells::<f64>(i, c, 1..rows - 1).unwrap();
                            let b = theirs.read_cells::<f64>(i, c, 1..rows - 1).unwrap();
                            if !same(&a, &b, f64::is_nan) {
                                problems.push(format!("{at} {name}: rows 1.. as f64"));
                            }
                        }
                    }
                }
                Direct::None => fallback += 1,
            }
        }
    }
    eprintln!(
        "{direct} images and columns ({unsigned} unsigned) read directly and by cfitsio alike; \
         {fallback} left to cfitsio"
    );
    assert!(direct > 100, "only {direct} direct reads");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
