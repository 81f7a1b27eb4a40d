//! The embeddings and reconstruction HDF5 files: round trips, atomic
//! writing, merging of shard parts, malformed files, and reading from
//! Python with h5py where it is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use spectok_io::embeddings::{
    merge, EmbeddingRecord, EmbeddingsFile, EmbeddingsMeta, EmbeddingsWriter, Failure,
    FailureStage, ReconstructionFile, ReconstructionRecord, ReconstructionWriter, RunInfo,
    ShardPart, Tokens, FLUSH_RECORDS,
};
use spectok_io::{Labels, Segment, Source, Survey};

/// HDF5 opens files without close-on-exec and locks them: a child process
/// started while another test has a file open inherits the lock and keeps
/// it after the test closes the file. The tests here therefore run one at a
/// time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn run_info() -> RunInfo {
    RunInfo {
        checkpoint: "runs/demo/checkpoints/best".into(),
        checkpoint_sha256: "ab".repeat(32),
        model_config: r#"{"d_model":4}"#.into(),
        prepare_config: r#"{"patch_size":8}"#.into(),
        inputs: vec!["data/sdss".into(), "data/apogee/*.fits".into()],
        spectok_version: "0.1.0".into(),
    }
}

fn meta(dim: usize, tokens: bool, token_ids: bool, part: ShardPart) -> EmbeddingsMeta {
    EmbeddingsMeta {
        run: run_info(),
        dim,
        tokens,
        token_ids,
        part,
    }
}

/// A record whose values depend on `i`; every third one has rich labels,
/// every fifth has no token.
fn record(i: usize, dim: usize, tokens: bool, ids: bool) -> EmbeddingRecord {
    let mut labels = Labels::default();
    if i.is_multiple_of(3) {
        labels.redshift = Some(0.1 * i as f64);
        labels.redshift_warning = Some(i as i64 % 4);
        labels.class = Some("GALAXY".into());
        labels.teff = Some(f64::NAN);
        labels.extra.insert("ra".into(), 150.0 + i as f64);
        labels.extra.insert("snr".into(), f64::INFINITY);
        labels.text.insert("objtype".into(), format!("TGT{i}"));
    }
    if i % 3 == 1 {
        labels.subclass = Some(String::new());
        labels.logg = Some(4.4);
        labels.fe_h = Some(-0.5);
        labels.alpha_m = Some(0.1);
        labels.redshift_err = Some(1e-5);
    }
    let n_tok = if i.is_multiple_of(5) { 0 } else { 1 + i % 4 };
    EmbeddingRecord {
        object_id: format!("obj-{i}"),
        survey: Survey::ALL[i % Survey::ALL.len()],
        source: Source {
            file: PathBuf::from(format!("/data/file-{}.fits", i / 7)),
            hdu: if i.is_multiple_of(2) {
                "COADD".into()
            } else {
                "B_FLUX".into()
            },
            row: (i % 2 == 1).then_some(i as u64),
        },
        labels,
        scale: 1.5 + i as f64,
        patches: (n_tok + 2) as u32,
        valid_patches: n_tok as u32,
        embedding: (0..dim).map(|k| (i * 10 + k) as f32 * 0.25 - 3.0).collect(),
        tokens: tokens.then(|| Tokens {
            scale_token: (0..dim).map(|k| -(k as f32) - i as f32).collect(),
            values: (0..n_tok * dim).map(|k| (k + i) as f32 / 7.0).collect(),
            center: (0..n_tok)
                .map(|k| 4000.0 + 25.5 * k as f64 + i as f64)
                .collect(),
            ids: ids.then(|| (0..n_tok).map(|k| (k * 31 + i) as u32).collect()),
        }),
    }
}

fn failure(i: usize) -> Failure {
    Failure {
        object_id: if i.is_multiple_of(2) {
            String::new()
        } else {
            format!("bad-{i}")
        },
        source_file: format!("/data/broken-{i}.fits"),
        source_hdu: if i.is_multiple_of(2) {
            String::new()
        } else {
            "COADD".into()
        },
        source_row: (i % 2 == 1).then_some(3),
        stage: FailureStage::ALL[i % FailureStage::ALL.len()],
        reason: format!("reason number {i}"),
    }
}

/// Equality that treats NaNs with the same bits as equal.
fn same(a: &EmbeddingRecord, b: &EmbeddingRecord) -> bool {
    let bits32 = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let bits64 = |x: &[f64]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let label_bits = |l: &Labels| {
        (
            [
                l.redshift,
                l.redshift_err,
                l.teff,
                l.logg,
                l.fe_h,
                l.alpha_m,
            ]
            .map(|v| v.map(f64::to_bits)),
            l.redshift_warning,
            l.class.clone(),
            l.subclass.clone(),
            l.extra
                .iter()
                .map(|(k, v)| (k.clone(), v.to_bits()))
                .collect::<Vec<_>>(),
            l.text.clone(),
        )
    };
    let tokens = |t: &Option<Tokens>| {
        t.as_ref().map(|t| {
            (
                bits32(&t.scale_token),
                bits32(&t.values),
                bits64(&t.center),
                t.ids.clone(),
            )
        })
    };
    a.object_id == b.object_id
        && a.survey == b.survey
        && a.source == b.source
        && label_bits(&a.labels) == label_bits(&b.labels)
        && a.scale.to_bits() == b.scale.to_bits()
        && a.patches == b.patches
        && a.valid_patches == b.valid_patches
        && bits32(&a.embedding) == bits32(&b.embedding)
        && tokens(&a.tokens) == tokens(&b.tokens)
}

fn write_file(
    path: &Path,
    m: &EmbeddingsMeta,
    recs: &[EmbeddingRecord],
    fails: &[Failure],
) -> usize {
    let mut w = EmbeddingsWriter::create(path, m, false).unwrap();
    for (k, r) in recs.iter().enumerate() {
        w.write(r).unwrap();
        if k % 100 == 0 {
            if let Some(f) = fails.get(k / 100) {
                w.fail(f).unwrap();
            }
        }
    }
    for f in fails.iter().skip(recs.len().div_ceil(100)) {
        w.fail(f).unwrap();
    }
    w.finish().unwrap()
}

fn read_all(f: &EmbeddingsFile) -> Vec<EmbeddingRecord> {
    f.records().collect::<Result<Vec<_>, _>>().unwrap()
}

#[test]
fn embeddings_round_trip_across_flushes() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    for (tokens, ids) in [(false, false), (true, false), (true, true)] {
        let path = tmp.path().join(format!("e-{tokens}-{ids}.h5"));
        let n = FLUSH_RECORDS + 300;
        let recs: Vec<_> = (0..n).map(|i| record(i, 5, tokens, ids)).collect();
        let fails: Vec<_> = (0..4).map(failure).collect();
        let m = meta(5, tokens, ids, ShardPart::WHOLE);
        assert_eq!(write_file(&path, &m, &recs, &fails), n);

        let f = EmbeddingsFile::open(&path).unwrap();
        assert_eq!(f.meta(), &m);
        assert_eq!(f.len(), n);
        let back = read_all(&f);
        assert_eq!(back.len(), n);
        for (a, b) in recs.iter().zip(&back) {
            assert!(same(a, b), "{a:?}\n{b:?}");
        }
        let want_tokens: usize = if tokens {
            recs.iter()
                .map(|r| r.tokens.as_ref().map_or(0, |t| t.len()))
                .sum()
        } else {
            0
        };
        assert_eq!(f.token_count(), want_tokens);
        // Failures come back in the order written.
        let mut fb = f.failures().unwrap();
        let mut want = fails.clone();
        fb.sort_by(|a, b| a.source_file.cmp(&b.source_file));
        want.sort_by(|a, b| a.source_file.cmp(&b.source_file));
        assert_eq!(fb, want);
        // A block in the middle reads the same as the stream.
        let mid = f.read(1000..1030).unwrap();
        assert!(mid.iter().zip(&recs[1000..1030]).all(|(a, b)| same(a, b)));
        assert!(f.read(n..n + 5).unwrap().is_empty());
    }
}

#[test]
fn writing_is_atomic_and_never_overwrites_unasked() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("out.h5");
    let tmp_file = tmp.path().join("out.h5.tmp");
    let m = meta(3, false, false, ShardPart::WHOLE);

    // Unfinished: nothing under the final name; dropping removes the temp.
    let mut w = EmbeddingsWriter::create(&path, &m, false).unwrap();
    w.write(&record(1, 3, false, false)).unwrap();
    assert!(tmp_file.exists() && !path.exists());
    drop(w);
    assert!(!tmp_file.exists() && !path.exists());

    write_file(&path, &m, &[record(1, 3, false, false)], &[]);
    assert!(path.exists() && !tmp_file.exists());
    let before = std::fs::read(&path).unwrap();

    // Not overwritten without `overwrite`, at create…
    let e = EmbeddingsWriter::create(&path, &m, false).err().unwrap();
    assert!(
        matches!(&e, spectok_io::Error::Os { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{e}"
    );
    assert!(e.to_string().contains("already exists"), "{e}");
    // …nor at finish when the file appeared meanwhile.
    let other = tmp.path().join("late.h5");
    let mut w = EmbeddingsWriter::create(&other, &m, false).unwrap();
    w.write(&record(2, 3, false, false)).unwrap();
    std::fs::write(&other, b"someone else's").unwrap();
    assert!(w.finish().is_err());
    assert_eq!(std::fs::read(&other).unwrap(), b"someone else's");
    assert!(!tmp.path().join("late.h5.tmp").exists());
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // With `overwrite` it is replaced.
    let mut w = EmbeddingsWriter::create(&path, &m, true).unwrap();
    for i in 0..3 {
        w.write(&record(i, 3, false, false)).unwrap();
    }
    assert_eq!(w.finish().unwrap(), 3);
    assert_eq!(EmbeddingsFile::open(&path).unwrap().len(), 3);
}

#[test]
fn records_that_do_not_fit_are_refused_and_the_file_stays_consistent() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("r.h5");
    let m = meta(4, true, false, ShardPart::WHOLE);
    let mut w = EmbeddingsWriter::create(&path, &m, false).unwrap();
    let good = record(1, 4, true, false);
    w.write(&good).unwrap();

    let mut wrong_dim = record(2, 4, true, false);
    wrong_dim.embedding.pop();
    let e = w.write(&wrong_dim).unwrap_err().to_string();
    assert!(
        e.contains("/data/file-0.fits") && e.contains("obj-2") && e.contains("width"),
        "{e}"
    );

    let no_tokens = record(3, 4, false, false);
    assert!(w
        .write(&no_tokens)
        .unwrap_err()
        .to_string()
        .contains("tokens"));
    let with_ids = record(4, 4, true, true);
    assert!(w
        .write(&with_ids)
        .unwrap_err()
        .to_string()
        .contains("token ids"));
    let mut ragged = record(6, 4, true, false);
    ragged.tokens.as_mut().unwrap().values.push(1.0);
    assert!(w.write(&ragged).is_err());
    let mut nul = record(7, 4, true, false);
    nul.object_id = "a\0b".into();
    assert!(w.write(&nul).unwrap_err().to_string().contains("NUL"));
    // A failure with a NUL is still recorded.
    let mut f = failure(1);
    f.reason = "bad\0byte".into();
    w.fail(&f).unwrap();
    let last = record(8, 4, true, false);
    w.write(&last).unwrap();
    assert_eq!(w.finish().unwrap(), 2);

    let file = EmbeddingsFile::open(&path).unwrap();
    let back = read_all(&file);
    assert!(same(&back[0], &good) && same(&back[1], &last));
    assert_eq!(file.failures().unwrap()[0].reason, "bad\u{FFFD}byte");

    // Metadata out of range is refused before anything is written.
    for bad in [meta(0, false, false, ShardPart::WHOLE), {
        let mut m = meta(2, false, false, ShardPart::WHOLE);
        m.part = ShardPart { index: 3, count: 2 };
        m
    }] {
        let p = tmp.path().join("bad-meta.h5");
        assert!(EmbeddingsWriter::create(&p, &bad, false).is_err());
        assert!(!p.exists() && !tmp.path().join("bad-meta.h5.tmp").exists());
    }
}

#[test]
fn shard_parts() {
    let _serial = serial();
    assert_eq!(
        "2/5".parse::<ShardPart>(),
        Ok(ShardPart { index: 2, count: 5 })
    );
    assert_eq!(" 0 / 1 ".parse::<ShardPart>(), Ok(ShardPart::WHOLE));
    for bad in ["5/5", "1/0", "a/2", "3", "-1/2", ""] {
        let e = bad.parse::<ShardPart>().unwrap_err();
        assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
    }
    assert_eq!(ShardPart { index: 3, count: 8 }.to_string(), "3/8");
}

#[test]
fn merging_parts_equals_writing_once() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let all: Vec<_> = (0..50).map(|i| record(i, 6, true, true)).collect();
    let all_fails: Vec<_> = (0..3).map(failure).collect();
    // Parts of uneven size, one of them empty, failures spread.
    let cuts = [0, 20, 20, 50];
    let mut parts = Vec::new();
    for k in 0..3 {
        let p = tmp.path().join(format!("part-{k}.h5"));
        let recs = &all[cuts[k]..cuts[k + 1]];
        let fails = &all_fails[k..k + 1];
        write_file(
            &p,
            &meta(6, true, true, ShardPart::new(k, 3).unwrap()),
            recs,
            fails,
        );
        parts.push(p);
    }
    let merged = tmp.path().join("merged.h5");
    // Given in any order.
    let shuffled = vec![parts[2].clone(), parts[0].clone(), parts[1].clone()];
    let s = merge(&shuffled, &merged, false).unwrap();
    assert_eq!((s.parts, s.records, s.failures), (3, 50, 3));
    let f = EmbeddingsFile::open(&merged).unwrap();
    assert_eq!(f.meta(), &meta(6, true, true, ShardPart::WHOLE));
    let back = read_all(&f);
    assert_eq!(back.len(), all.len());
    assert!(back.iter().zip(&all).all(|(a, b)| same(a, b)));
    assert_eq!(f.failures().unwrap(), all_fails);

    // An existing output is kept unless asked.
    assert!(merge(&parts, &merged, false).is_err());
    assert!(merge(&parts, &merged, true).is_ok());

    // A missing part, a repeated part, a part of another run.
    let e = merge(&parts[..2], &tmp.path().join("m2.h5"), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2/3") && e.contains("missing"), "{e}");
    let twice = vec![parts[0].clone(), parts[1].clone(), parts[1].clone()];
    let e = merge(&twice, &tmp.path().join("m3.h5"), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice"), "{e}");
    let foreign = tmp.path().join("foreign.h5");
    let mut m = meta(6, true, true, ShardPart::new(1, 3).unwrap());
    m.run.checkpoint_sha256 = "cd".repeat(32);
    write_file(&foreign, &m, &all[20..50], &[]);
    let e = merge(
        &[parts[0].clone(), foreign.clone(), parts[2].clone()],
        &tmp.path().join("m4.h5"),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("foreign.h5") && e.contains("checkpoint_sha256"),
        "{e}"
    );
    assert!(!tmp.path().join("m4.h5").exists() && !tmp.path().join("m4.h5.tmp").exists());
    assert!(merge(&[], &tmp.path().join("m5.h5"), false).is_err());
}

#[test]
fn malformed_files_are_errors_naming_the_dataset() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.h5");
    let recs: Vec<_> = (0..10).map(|i| record(i, 3, true, false)).collect();
    write_file(&path, &meta(3, true, false, ShardPart::WHOLE), &recs, &[]);

    // Decreasing token offsets inside the file.
    {
        let f = hdf5::File::open_rw(&path).unwrap();
        let ds = f.dataset("token_offsets").unwrap();
        let mut v: Vec<u64> = ds.read_raw().unwrap();
        v[4] = v[6] + 1;
        ds.write_raw(&v).unwrap();
    }
    let f = EmbeddingsFile::open(&path).unwrap();
    let e = f
        .records()
        .find_map(|r| r.err())
        .expect("an error")
        .to_string();
    assert!(e.contains("token_offsets"), "{e}");
    drop(f);

    // A dataset of the wrong length is found at open.
    {
        let f = hdf5::File::open_rw(&path).unwrap();
        f.unlink("scale").unwrap();
        f.new_dataset::<f64>().shape(3).create("scale").unwrap();
    }
    let e = EmbeddingsFile::open(&path).err().unwrap().to_string();
    assert!(e.contains("scale") && e.contains("shape"), "{e}");

    // Not an embeddings file at all.
    let other = tmp.path().join("other.h5");
    hdf5::File::create(&other).unwrap();
    let e = EmbeddingsFile::open(&other).err().unwrap().to_string();
    assert!(e.contains("not a spectok embeddings file"), "{e}");
}

fn recon(i: usize) -> ReconstructionRecord {
    let n = 10 + i;
    ReconstructionRecord {
        object_id: format!("r{i}"),
        survey: Survey::Sdss,
        source: Source {
            file: PathBuf::from("/data/spec.fits"),
            hdu: "COADD".into(),
            row: None,
        },
        scale: 2.0,
        input_wavelength: (0..n).map(|k| 4000.0 + k as f64).collect(),
        input_flux: (0..n).map(|k| k as f32).collect(),
        input_ivar: vec![1.0; n],
        input_valid: (0..n).map(|k| k % 3 != 0).collect(),
        output_wavelength: (0..7).map(|k| 5000.0 + k as f64).collect(),
        output_flux: (0..7).map(|k| -(k as f32)).collect(),
        output_segments: vec![
            Segment {
                name: "b".into(),
                start: 0,
                end: 4,
            },
            Segment {
                name: "r".into(),
                start: 4,
                end: 7,
            },
        ],
    }
}

#[test]
fn reconstructions_round_trip() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("rec.h5");
    let mut w = ReconstructionWriter::create(&path, &run_info(), "desi", false).unwrap();
    for i in 0..3 {
        w.write(&recon(i)).unwrap();
    }
    let mut bad = recon(5);
    bad.output_segments[1].end = 6;
    assert!(w
        .write(&bad)
        .unwrap_err()
        .to_string()
        .contains("segments cover 6 of 7"));
    w.fail(&failure(2)).unwrap();
    assert_eq!(w.finish().unwrap(), 3);
    let f = ReconstructionFile::open(&path).unwrap();
    assert_eq!((f.len(), f.target()), (3, "desi"));
    assert_eq!(f.run(), &run_info());
    for i in 0..3 {
        assert_eq!(f.read(i).unwrap(), recon(i));
    }
    assert!(f.read(3).is_err());
    assert_eq!(f.failures().unwrap(), vec![failure(2)]);
    // Not an embeddings file, and the other way round.
    assert!(EmbeddingsFile::open(&path).is_err());
}

/// Whether `python3 -c 'import h5py'` works.
fn have_h5py() -> bool {
    Command::new("python3")
        .args(["-c", "import h5py"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn h5py_reads_the_documented_schema() {
    let _serial = serial();
    if !have_h5py() {
        eprintln!("skipping: python3 with h5py not available");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("py.h5");
    let recs: Vec<_> = (0..12).map(|i| record(i, 5, true, true)).collect();
    write_file(
        &path,
        &meta(5, true, true, ShardPart::new(1, 4).unwrap()),
        &recs,
        &[failure(1)],
    );
    let script = r#"
import sys, json, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
n = f["object_id"].shape[0]
assert n == 12, n
assert f.attrs["spectok_embeddings_version"] == 1
assert f.attrs["embedding_dim"] == 5
assert f.attrs["shard_index"] == 1 and f.attrs["shard_count"] == 4
assert len(f.attrs["checkpoint_sha256"]) == 64
json.loads(f.attrs["model_config"]); json.loads(f.attrs["prepare_config"])
assert json.loads(f.attrs["inputs"]) == ["data/sdss", "data/apogee/*.fits"]
assert f["embedding"].shape == (12, 5) and f["embedding"].dtype == np.float32
assert f["scale_token"].shape == (12, 5)
for name in ["survey", "source_file", "source_hdu", "source_row", "scale", "patches",
             "valid_patches", "label_present", "redshift", "class"]:
    assert f[name].shape == (12,), name
ids = f["object_id"].asstr()[:]
assert ids[3] == "obj-3", ids[3]
assert f["survey"].asstr()[0] == "sdss"
off = f["token_offsets"][:]
assert off.shape == (13,) and off[0] == 0 and off[-1] == f["tokens"].shape[0]
assert f["tokens"].shape[1] == 5 and f["token_center"].shape == (off[-1],)
assert f["token_ids"].shape == (off[-1],)
t3 = f["tokens"][off[3]:off[4]]
assert t3.shape == (4, 5), t3.shape
assert abs(f["token_center"][off[3]] - 4003.0) < 1e-9
z = f["redshift"][:]
assert np.isnan(z[1]) and abs(z[3] - 0.3) < 1e-12
assert f["failed/reason"].asstr()[0] == "reason number 1"
assert f["failed/stage"].asstr()[0] == "open"
print("ok")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "h5py check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
