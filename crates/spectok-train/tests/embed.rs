//! `embed` and `reconstruct` with a small checkpoint trained here on the
//! real survey files: every real file is embedded or listed as failed,
//! order and batch size do not change embeddings, shard parts merged equal
//! a single run, the file reads back (also from h5py), reconstructions land
//! on the requested grids.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use candle_core::Device;
use spectok_data::PrepareConfig;
use spectok_io::embeddings::{
    merge, EmbeddingRecord, EmbeddingsFile, Failure, FailureStage, ReconstructionFile, ShardPart,
};
use spectok_io::testdata::real_data_dir;
use spectok_io::{plan_inputs, read_unit, Survey};
use spectok_train::embed::{
    embed, reconstruct, resolve_checkpoint, sha256_file, EmbedModel, EmbedObserver, EmbedOptions,
    EmbedProgress, EmbedStart, NativeGrid, Target, GRID_SURVEYS,
};

/// HDF5 opens files without close-on-exec and locks them: a child process
/// (python) started while another test writes a file would inherit the
/// lock. Tests hold this for reading; the test that starts a child holds
/// it for writing.
static HDF5: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    HDF5.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    HDF5.write().unwrap_or_else(|p| p.into_inner())
}

/// A tiny run trained for a few steps on real SDSS, APOGEE and GALAH
/// files, once per test binary.
fn run_dir(real: &Path) -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        // A non-default preparation setting, to check that embedding uses
        // the run's own.
        let prepare = PrepareConfig {
            patch_size: 16,
            gap_factor: 4.0,
            ..PrepareConfig::default()
        };
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spectok-train-embed-run");
        common::train(common::tiny_config(
            real,
            &["sdss", "apogee", "galah"],
            prepare,
            3,
            11,
            &out,
        ))
    })
}

fn model(real: &Path) -> &'static EmbedModel {
    static MODEL: OnceLock<EmbedModel> = OnceLock::new();
    MODEL.get_or_init(|| EmbedModel::load(run_dir(real), &Device::Cpu, None).expect("load"))
}

/// Every file of the real data directory, sorted.
fn real_files(real: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![real.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// (object id, file, hdu, row) of a record.
type Key = (String, String, String, Option<u64>);

fn key(r: &EmbeddingRecord) -> Key {
    (
        r.object_id.clone(),
        r.source.file.display().to_string(),
        r.source.hdu.clone(),
        r.source.row,
    )
}

fn read_records(path: &Path) -> Vec<EmbeddingRecord> {
    let f = EmbeddingsFile::open(path).unwrap();
    f.records().collect::<Result<Vec<_>, _>>().unwrap()
}

fn by_key(recs: &[EmbeddingRecord]) -> BTreeMap<Key, &EmbeddingRecord> {
    let mut m = BTreeMap::new();
    for r in recs {
        assert!(m.insert(key(r), r).is_none(), "duplicate {:?}", key(r));
    }
    m
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[derive(Default)]
struct Recorder {
    start: Option<EmbedStart>,
    progress: Vec<EmbedProgress>,
    failures: Vec<Failure>,
}

impl EmbedObserver for Recorder {
    fn on_start(&mut self, ev: &EmbedStart) {
        self.start = Some(ev.clone());
    }
    fn on_progress(&mut self, ev: &EmbedProgress) {
        self.progress.push(ev.clone());
    }
    fn on_failure(&mut self, f: &Failure) {
        self.failures.push(f.clone());
    }
}

/// Spectra the readers yield for `inputs`, by source key, and the number
/// of per-spectrum read errors.
fn readable(inputs: &[String]) -> (Vec<Key>, usize) {
    let plan = plan_inputs(inputs, None);
    let mut keys = Vec::new();
    let mut errors = 0;
    for u in &plan.units {
        match read_unit(u) {
            Ok(s) => {
                for item in s {
                    match item {
                        Ok(s) => keys.push((
                            s.id.clone(),
                            s.source.file.display().to_string(),
                            s.source.hdu.clone(),
                            s.source.row,
                        )),
                        Err(_) => errors += 1,
                    }
                }
            }
            Err(_) => errors += 1,
        }
    }
    (keys, errors)
}

#[test]
fn checkpoint_is_resolved_with_its_run_preparation() {
    let Some(real) = real_data_dir() else { return };
    let _g = shared();
    let run = run_dir(&real);
    let m = model(&real);
    // The run directory resolves to its best checkpoint (written at the
    // final validation), and a checkpoint directory to itself.
    let best = run.join("checkpoints/best");
    assert_eq!(resolve_checkpoint(run).unwrap(), best);
    assert_eq!(resolve_checkpoint(&run.join("checkpoints")).unwrap(), best);
    let step = run.join("checkpoints/step-000000003");
    assert_eq!(resolve_checkpoint(&step).unwrap(), step);
    assert_eq!(m.checkpoint, best);
    let e = resolve_checkpoint(&real).unwrap_err().to_string();
    assert!(e.contains("neither a checkpoint"), "{e}");
    // The run's preparation, not the defaults.
    assert_eq!(m.prepare.gap_factor, 4.0);
    assert_eq!(m.prepare.patch_size, 16);
    assert!(m
        .prepare_source
        .as_ref()
        .is_some_and(|p| p.ends_with("train_config.json")));
    assert_eq!(m.dim(), 16);
    // The hash is the SHA-256 of the weights file.
    assert_eq!(m.sha256.len(), 64);
    assert_eq!(
        m.sha256,
        sha256_file(&best.join("model.safetensors")).unwrap()
    );
    if let Ok(out) = Command::new("sha256sum")
        .arg(best.join("model.safetensors"))
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.split_whitespace().next(), Some(m.sha256.as_str()));
    }
}

#[test]
fn every_real_file_is_embedded_or_listed_as_failed() {
    let Some(real) = real_data_dir() else { return };
    let _g = shared();
    let m = model(&real);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("all.h5");
    let inputs = vec![real.display().to_string()];
    let mut rec = Recorder::default();
    let opts = EmbedOptions {
        batch_size: 7,
        ..EmbedOptions::default()
    };
    let s = embed(m, &inputs, &out, &opts, &mut rec).unwrap();

    let (keys, read_errors) = readable(&inputs);
    let records = read_records(&out);
    let file = EmbeddingsFile::open(&out).unwrap();
    let failures = file.failures().unwrap();
    assert_eq!(s.done, records.len());
    assert_eq!(s.failed, failures.len());
    assert_eq!(s.failures, failures);
    assert_eq!(rec.failures.len(), failures.len());
    // Every spectrum the readers yield is embedded or failed at
    // preparation; every unreadable input is listed.
    let prepare_failed = failures
        .iter()
        .filter(|f| f.stage == FailureStage::Prepare)
        .count();
    assert_eq!(records.len() + prepare_failed, keys.len());
    let embedded = by_key(&records);
    for k in &keys {
        let listed = failures
            .iter()
            .any(|f| f.object_id == k.0 && f.source_file == k.1 && f.source_row == k.3);
        assert!(
            embedded.contains_key(k) || listed,
            "{k:?} neither embedded nor failed"
        );
    }
    let read_failed = failures
        .iter()
        .filter(|f| matches!(f.stage, FailureStage::Read | FailureStage::Open))
        .count();
    assert_eq!(read_failed, read_errors);
    let unreadable: Vec<&Failure> = failures
        .iter()
        .filter(|f| matches!(f.stage, FailureStage::Input | FailureStage::Open))
        .collect();
    for name in [
        "XP_CONTINUOUS_RAW.fits",
        "XP_SPECTRA_RAW_mini.fits",
        "linetools_",
    ] {
        assert!(
            unreadable
                .iter()
                .any(|f| f.source_file.contains(name) && !f.reason.contains(&f.source_file)),
            "{name} not listed: {unreadable:?}"
        );
    }
    assert!(s.failures.iter().all(|f| !f.reason.is_empty()));

    // Every survey of the real data is embedded, with finite values.
    for survey in [
        Survey::Sdss,
        Survey::Desi,
        Survey::Apogee,
        Survey::Galah,
        Survey::LamostLrs,
        Survey::LamostMrs,
        Survey::GaiaXp,
        Survey::Manga,
    ] {
        assert!(
            records.iter().any(|r| r.survey == survey),
            "no {survey} embedding"
        );
    }
    for r in &records {
        assert_eq!(r.embedding.len(), 16);
        assert!(r.embedding.iter().all(|v| v.is_finite()), "{:?}", key(r));
        assert!(r.valid_patches >= 1 && r.valid_patches <= r.patches);
        assert!(r.scale.is_finite() && r.scale > 0.0);
        assert!(r.tokens.is_none());
    }
    // Labels are carried from the inputs (README spot values).
    let galaxy = records
        .iter()
        .find(|r| r.source.file.ends_with("sdss/spec-0266-51602-0013.fits"))
        .unwrap();
    assert_eq!(galaxy.labels.class.as_deref(), Some("GALAXY"));
    assert!((galaxy.labels.redshift.unwrap() - 0.12132).abs() < 1e-4);
    let galah = records.iter().find(|r| r.survey == Survey::Galah).unwrap();
    assert!(galah.labels.teff.is_some());
    assert_eq!(galah.patches, 4 * 4096 / 16);
    // Rows follow the input order: files in plan order.
    let files: Vec<String> = records
        .iter()
        .map(|r| r.source.file.display().to_string())
        .collect();
    let plan = plan_inputs(&inputs, None);
    let order: Vec<String> = plan
        .units
        .iter()
        .map(|u| u.main_file().display().to_string())
        .collect();
    let pos = |f: &str| order.iter().position(|o| o == f).unwrap();
    assert!(files.windows(2).all(|w| pos(&w[0]) <= pos(&w[1])));

    // Metadata and progress.
    let meta = file.meta();
    assert_eq!(meta.run.checkpoint_sha256, m.sha256);
    assert_eq!(meta.dim, 16);
    assert_eq!(meta.part, ShardPart::WHOLE);
    assert_eq!(meta.run.inputs, inputs);
    let cfg: serde_json::Value = serde_json::from_str(&meta.run.model_config).unwrap();
    assert_eq!(cfg["d_model"], 16);
    let prep: serde_json::Value = serde_json::from_str(&meta.run.prepare_config).unwrap();
    assert_eq!(prep["gap_factor"], 4.0);
    let start = rec.start.unwrap();
    assert_eq!(start.units, plan.units.len());
    assert_eq!(start.input_problems, plan.problems.len());
    assert_eq!(
        start.expected,
        Some((keys.len() + read_errors) as u64),
        "expected from headers"
    );
    let last = rec.progress.last().unwrap();
    assert_eq!(last.done as usize, records.len());
    assert!(last.spectra_per_s > 0.0);

    // An existing output is kept unless asked.
    let before = std::fs::read(&out).unwrap();
    let e = embed(m, &inputs, &out, &opts, &mut ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let again = EmbedOptions {
        overwrite: true,
        ..opts
    };
    embed(m, &inputs[..], &out, &again, &mut ()).unwrap();
    assert_eq!(read_records(&out).len(), records.len());
}

#[test]
fn order_and_batch_size_do_not_change_embeddings() {
    let Some(real) = real_data_dir() else { return };
    let _g = shared();
    let m = model(&real);
    let tmp = tempfile::tempdir().unwrap();
    let files = real_files(&real);
    let mut reversed = files.clone();
    reversed.reverse();
    let a = tmp.path().join("a.h5");
    let b = tmp.path().join("b.h5");
    let c = tmp.path().join("c.h5");
    let with = |batch_size, max_tokens| EmbedOptions {
        batch_size,
        max_tokens,
        tokens: true,
        pool_size: 16,
        readers: 3,
        ..EmbedOptions::default()
    };
    embed(m, &files, &a, &with(1, None), &mut ()).unwrap();
    embed(m, &reversed, &b, &with(7, None), &mut ()).unwrap();
    embed(m, &files, &c, &with(64, Some(2000)), &mut ()).unwrap();
    let (ra, rb, rc) = (read_records(&a), read_records(&b), read_records(&c));
    let (ka, kb, kc) = (by_key(&ra), by_key(&rb), by_key(&rc));
    assert!(ka.len() > 50);
    assert_eq!(ka.keys().collect::<Vec<_>>(), kb.keys().collect::<Vec<_>>());
    assert_eq!(ka.keys().collect::<Vec<_>>(), kc.keys().collect::<Vec<_>>());
    let mut worst = 0f32;
    for (k, x) in &ka {
        for other in [&kb, &kc] {
            let y = other[k];
            worst = worst.max(max_diff(&x.embedding, &y.embedding));
            let (tx, ty) = (x.tokens.as_ref().unwrap(), y.tokens.as_ref().unwrap());
            assert_eq!(tx.center, ty.center, "{k:?}");
            worst = worst.max(max_diff(&tx.values, &ty.values));
            worst = worst.max(max_diff(&tx.scale_token, &ty.scale_token));
        }
    }
    assert!(worst <= 1e-5, "largest difference {worst}");
    // Same inputs, same order: the same rows in the same order.
    assert_eq!(
        ra.iter().map(key).collect::<Vec<_>>(),
        rc.iter().map(key).collect::<Vec<_>>()
    );
}

#[test]
fn shard_parts_merged_equal_a_single_run() {
    let Some(real) = real_data_dir() else { return };
    let _g = shared();
    let m = model(&real);
    let tmp = tempfile::tempdir().unwrap();
    let inputs = vec![real.display().to_string()];
    let single = tmp.path().join("single.h5");
    embed(m, &inputs, &single, &EmbedOptions::default(), &mut ()).unwrap();
    let n = 3;
    let mut parts = Vec::new();
    let mut sizes = Vec::new();
    for i in 0..n {
        let p = tmp.path().join(format!("part-{i}.h5"));
        let opts = EmbedOptions {
            part: ShardPart::new(i, n).unwrap(),
            batch_size: 5,
            ..EmbedOptions::default()
        };
        let s = embed(m, &inputs, &p, &opts, &mut ()).unwrap();
        sizes.push(s.done);
        parts.push(p);
    }
    // Parts are disjoint and balanced by spectra, not by files.
    let total: usize = sizes.iter().sum();
    assert!(sizes.iter().all(|&k| k > 0 && k < total), "{sizes:?}");
    let merged = tmp.path().join("merged.h5");
    let ms = merge(&parts, &merged, false).unwrap();
    assert_eq!(ms.records, total);
    let (rs, rm) = (read_records(&single), read_records(&merged));
    assert_eq!(
        rs.iter().map(key).collect::<Vec<_>>(),
        rm.iter().map(key).collect::<Vec<_>>()
    );
    for (x, y) in rs.iter().zip(&rm) {
        assert!(max_diff(&x.embedding, &y.embedding) <= 1e-5, "{:?}", key(x));
        assert_eq!(x.labels, y.labels);
    }
    let fs = EmbeddingsFile::open(&single).unwrap().failures().unwrap();
    let fm = EmbeddingsFile::open(&merged).unwrap().failures().unwrap();
    assert_eq!(fs, fm);
    // The merged file is the whole run.
    assert_eq!(
        EmbeddingsFile::open(&merged).unwrap().meta().part,
        ShardPart::WHOLE
    );
}

#[test]
fn tokens_read_back_and_from_h5py() {
    let Some(real) = real_data_dir() else { return };
    let _g = exclusive();
    let m = model(&real);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tokens.h5");
    let inputs = vec![
        real.join("desi").display().to_string(),
        real.join("apogee/apVisit-*.fits").display().to_string(),
    ];
    let opts = EmbedOptions {
        tokens: true,
        ..EmbedOptions::default()
    };
    let s = embed(m, &inputs, &out, &opts, &mut ()).unwrap();
    let recs = read_records(&out);
    assert_eq!(recs.len(), s.done);
    let mut tokens = 0;
    for r in &recs {
        let t = r.tokens.as_ref().unwrap();
        assert_eq!(t.len(), r.valid_patches as usize);
        assert_eq!(t.values.len(), t.len() * 16);
        assert!(t.ids.is_none());
        let (lo, hi) = if r.survey == Survey::Desi {
            (3600.0, 9824.0)
        } else {
            (15100.0, 17000.0)
        };
        assert!(
            t.center.iter().all(|c| (lo..=hi).contains(c)),
            "{:?}",
            key(r)
        );
        // The pooled embedding is the mean of the tokens.
        for d in 0..16 {
            let mean: f32 =
                (0..t.len()).map(|k| t.values[k * 16 + d]).sum::<f32>() / t.len() as f32;
            assert!((mean - r.embedding[d]).abs() < 1e-4);
        }
        tokens += t.len();
    }
    assert_eq!(tokens, s.tokens);
    // DESI sky fibres carry their OBJTYPE.
    assert!(recs.iter().any(|r| r.labels.text.contains_key("objtype")));

    let ok = Command::new("python3")
        .args(["-c", "import h5py"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping the h5py check: python3 with h5py not available");
        return;
    }
    let script = r#"
import sys, json, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
n = int(sys.argv[2]); m = int(sys.argv[3])
assert f["embedding"].shape == (n, 16), f["embedding"].shape
assert f["object_id"].shape == (n,)
for name in ["survey", "source_file", "source_hdu", "source_row", "scale", "patches",
             "valid_patches", "label_present", "redshift", "class", "teff"]:
    assert f[name].shape == (n,), name
off = f["token_offsets"][:]
assert off.shape == (n + 1,) and off[-1] == m
assert f["tokens"].shape == (m, 16) and f["token_center"].shape == (m,)
assert (np.diff(off) == f["valid_patches"][:]).all()
assert f["scale_token"].shape == (n, 16)
assert f.attrs["has_tokens"] == 1 and f.attrs["embedding_dim"] == 16
assert len(f.attrs["checkpoint_sha256"]) == 64
assert json.loads(f.attrs["model_config"])["d_model"] == 16
surveys = set(f["survey"].asstr()[:])
assert surveys == {"desi", "apogee"}, surveys
assert "failed" in f and "reason" in f["failed"]
print("ok")
"#;
    let out_py = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&out)
        .arg(recs.len().to_string())
        .arg(tokens.to_string())
        .output()
        .unwrap();
    assert!(
        out_py.status.success(),
        "h5py check failed:\n{}\n{}",
        String::from_utf8_lossy(&out_py.stdout),
        String::from_utf8_lossy(&out_py.stderr)
    );
}

#[test]
fn native_grids_match_the_real_files() {
    let Some(real) = real_data_dir() else { return };
    let _g = shared();
    for name in GRID_SURVEYS {
        let g = NativeGrid::survey(name).unwrap();
        for (arm, w) in &g.arms {
            assert!(w.windows(2).all(|p| p[1] > p[0]), "{name} {arm}");
        }
    }
    assert!(NativeGrid::survey("hubble").is_none());
    let len = |n: &str| -> Vec<usize> {
        NativeGrid::survey(n)
            .unwrap()
            .arms
            .iter()
            .map(|(_, w)| w.len())
            .collect()
    };
    assert_eq!(len("desi"), vec![2751, 2326, 2881]);
    assert_eq!(len("sdss"), vec![4608]);
    assert_eq!(len("lamost"), vec![3909]);
    assert_eq!(len("apogee"), vec![3028, 2495, 1991]);
    assert_eq!(len("galah"), vec![4096; 4]);
    let sdss = NativeGrid::survey("sdss").unwrap().wavelength();
    assert!((sdss[0] - 3600.0).abs() < 0.5 && (sdss[sdss.len() - 1] - 10400.0).abs() < 1.5);

    // The survey grids are the grids of the real files.
    let grid_of = |rel: &str| NativeGrid::from_file(&real.join(rel), None).unwrap();
    let close = |a: &[f64], b: &[f64], tol: f64| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    };
    let desi = grid_of("desi/coadd-4-80613-thru20210324.fits");
    let std_desi = NativeGrid::survey("desi").unwrap();
    for ((na, a), (nb, b)) in desi.arms.iter().zip(&std_desi.arms) {
        assert_eq!(na, nb);
        assert!(close(a, b, 1e-3), "desi arm {na}");
    }
    let galah = grid_of("galah/2101150001010011.fits");
    let std_galah = NativeGrid::survey("galah").unwrap();
    assert_eq!(galah.arms.len(), 4);
    for ((na, a), (nb, b)) in galah.arms.iter().zip(&std_galah.arms) {
        assert_eq!(na, nb);
        assert!(close(a, b, 1e-6), "galah {na}");
    }
    let lamost = grid_of("lamost/spec-60591-LN042429N340750BM01_sp01-001.fits.gz");
    assert!(close(
        &lamost.wavelength(),
        &NativeGrid::survey("lamost").unwrap().wavelength(),
        0.01
    ));
    // APOGEE chips: the pixels of the apStar grid that carry data.
    let aspcap = grid_of("apogee/aspcapStar-r6-l30e.2-2M17334253-1654573.fits").wavelength();
    let chips = NativeGrid::survey("apogee").unwrap();
    for ((name, w), start) in chips.arms.iter().zip([246, 3585, 6344]) {
        assert!(
            close(w, &aspcap[start..start + w.len()], 1e-6),
            "apogee {name}"
        );
    }
    // SDSS pixels lie on the 1e-4 dex grid.
    let spec = grid_of("sdss/spec-0266-51602-0013.fits").wavelength();
    for w in spec.iter().step_by(97) {
        let nearest = sdss
            .iter()
            .map(|g| (g - w).abs() / w)
            .fold(f64::INFINITY, f64::min);
        assert!(nearest < 1e-6, "{w}");
    }
    let e = NativeGrid::from_file(&real.join("README.md"), None).unwrap_err();
    assert!(e.to_string().contains("README.md"), "{e}");
}

#[test]
fn reconstructions_land_on_the_requested_grid() {
    let Some(real) = real_data_dir() else { return };
    let _g = shared();
    let m = model(&real);
    let tmp = tempfile::tempdir().unwrap();
    let inputs = vec![
        real.join("sdss/spec-0266-51602-0013.fits")
            .display()
            .to_string(),
        real.join("galah/2101150001010011.fits")
            .display()
            .to_string(),
    ];
    let opts = EmbedOptions {
        batch_size: 2,
        ..EmbedOptions::default()
    };
    // Onto DESI's B/R/Z grids.
    let out = tmp.path().join("desi.h5");
    let target = Target::Grid(NativeGrid::survey("desi").unwrap());
    let s = reconstruct(m, &inputs, &target, &out, &opts, &mut ()).unwrap();
    assert_eq!((s.done, s.failed), (2, 0));
    let f = ReconstructionFile::open(&out).unwrap();
    assert_eq!((f.len(), f.target()), (2, "desi"));
    assert_eq!(f.run().checkpoint_sha256, m.sha256);
    let desi = NativeGrid::survey("desi").unwrap();
    for i in 0..2 {
        let r = f.read(i).unwrap();
        assert_eq!(r.output_wavelength, desi.wavelength());
        let names: Vec<&str> = r.output_segments.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "r", "z"]);
        assert!(r.output_flux.iter().all(|v| v.is_finite()));
        assert!(r.input_valid.iter().any(|v| *v));
        // Flux units: the reconstruction is of the order of the input.
        let med = |v: &[f32]| {
            let mut v: Vec<f32> = v.iter().map(|x| x.abs()).collect();
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        let ratio = med(&r.output_flux) / (r.scale as f32);
        assert!(ratio > 1e-3 && ratio < 1e3, "{ratio}");
    }
    let sdss = f.read(0).unwrap();
    assert_eq!(sdss.survey, Survey::Sdss);
    assert_eq!(sdss.input_wavelength.len(), 3838);

    // Onto each spectrum's own grid: one value per input pixel.
    let own = tmp.path().join("own.h5");
    reconstruct(m, &inputs, &Target::Own, &own, &opts, &mut ()).unwrap();
    let f = ReconstructionFile::open(&own).unwrap();
    assert_eq!(f.target(), "own");
    for i in 0..2 {
        let r = f.read(i).unwrap();
        assert_eq!(r.output_wavelength, r.input_wavelength);
        assert_eq!(r.output_flux.len(), r.input_flux.len());
        assert!(r.output_flux.iter().all(|v| v.is_finite()));
    }
    assert_eq!(f.read(1).unwrap().output_segments.len(), 4);

    // Decoding onto the grid of the spectrum's own file is decoding onto
    // its own grid (an SDSS spectrum has one arm and no gap, so the
    // patches are the same).
    let same = tmp.path().join("same.h5");
    let own_file = NativeGrid::from_file(Path::new(&inputs[0]), None).unwrap();
    reconstruct(
        m,
        &inputs[..1],
        &Target::Grid(own_file),
        &same,
        &opts,
        &mut (),
    )
    .unwrap();
    let a = ReconstructionFile::open(&own).unwrap().read(0).unwrap();
    let b = ReconstructionFile::open(&same).unwrap().read(0).unwrap();
    assert_eq!(a.output_wavelength, b.output_wavelength);
    assert!(max_diff(&a.output_flux, &b.output_flux) <= 1e-5 * a.scale as f32);

    // Onto a file's grid (a LAMOST spectrum), GALAH only.
    let lamost = real.join("lamost/spec-55859-F5902_sp01-001.fits.gz");
    let grid = NativeGrid::from_file(&lamost, None).unwrap();
    let onto = tmp.path().join("onto.h5");
    reconstruct(
        m,
        &inputs[1..],
        &Target::Grid(grid.clone()),
        &onto,
        &opts,
        &mut (),
    )
    .unwrap();
    let f = ReconstructionFile::open(&onto).unwrap();
    assert_eq!(f.target(), lamost.display().to_string());
    assert_eq!(f.read(0).unwrap().output_wavelength, grid.wavelength());
    assert_eq!(f.read(0).unwrap().output_wavelength.len(), 3908);
}
