//! `spectok embed`, `spectok merge` and `spectok reconstruct` end to end:
//! a checkpoint trained here with `spectok pretrain` on real survey files,
//! then every real file embedded, shard parts merged, spectra
//! reconstructed onto another survey's grid and plotted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use spectok_io::embeddings::{EmbeddingRecord, EmbeddingsFile, Failure, ReconstructionFile};
use spectok_io::testdata::real_data_dir;

/// HDF5 opens files without close-on-exec and locks them: a child started
/// while this process has an HDF5 file open would inherit the lock. So no
/// child starts while a test reads a file here: starting a child takes
/// this lock shared, opening a file takes it exclusively.
static HDF5: RwLock<()> = RwLock::new(());

fn spawning() -> RwLockReadGuard<'static, ()> {
    HDF5.read().unwrap_or_else(|p| p.into_inner())
}

fn reading() -> RwLockWriteGuard<'static, ()> {
    HDF5.write().unwrap_or_else(|p| p.into_inner())
}

fn spectok(args: &[&str]) -> Output {
    let _g = spawning();
    Command::new(env!("CARGO_BIN_EXE_spectok"))
        .args(args)
        .output()
        .expect("run spectok")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A run trained by `spectok pretrain` for a few steps on real SDSS,
/// APOGEE and GALAH files, once per test binary.
fn run_dir(real: &Path) -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("spectok-cli-embed");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let run = base.join("run");
        let sources: Vec<serde_json::Value> = ["sdss", "apogee", "galah"]
            .iter()
            .map(|s| serde_json::json!({"name": s, "paths": [real.join(s)]}))
            .collect();
        let cfg = serde_json::json!({
            "data": {
                "sources": sources,
                "val_fraction": 0.2,
                "val_max_spectra": 4,
                "eval_batch_size": 4,
                "pool_size": 16
            },
            "model": {
                "patch_size": 16, "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                "heads": 2, "mlp_ratio": 2.0, "wavelength_freqs": 8, "offset_freqs": 2
            },
            "optim": {"lr": 3e-3},
            "schedule": {"warmup_steps": 1},
            "batch": {"mode": "fixed", "spectra": 4},
            "steps": 3,
            "eval_interval": 3,
            "checkpoint_interval": 3,
            "log_interval": 1,
            "seed": 5,
            "device": "cpu",
            "out_dir": run
        });
        let cfg_path = base.join("tiny.json");
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
        let out = spectok(&["pretrain", "--config", p(&cfg_path), "--no-plots"]);
        assert!(
            out.status.success(),
            "pretrain failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        run
    })
}

fn read(path: &Path) -> (Vec<EmbeddingRecord>, Vec<Failure>) {
    let _g = reading();
    let f = EmbeddingsFile::open(path).unwrap();
    let recs = f.records().collect::<Result<Vec<_>, _>>().unwrap();
    (recs, f.failures().unwrap())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn key(r: &EmbeddingRecord) -> (String, PathBuf, String, Option<u64>) {
    (
        r.object_id.clone(),
        r.source.file.clone(),
        r.source.hdu.clone(),
        r.source.row,
    )
}

#[test]
fn help_has_examples() {
    for sub in ["embed", "merge", "reconstruct"] {
        let out = spectok(&[sub, "--help"]);
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(help.contains("Example:"), "{sub} --help:\n{help}");
    }
    let help = text(&spectok(&["embed", "--help"]).stdout);
    for flag in [
        "--checkpoint",
        "--tokens",
        "--batch-size",
        "--device",
        "--threads",
        "--shard",
        "--force",
    ] {
        assert!(help.contains(flag), "embed --help lacks {flag}");
    }
    assert!(text(&spectok(&["reconstruct", "--help"]).stdout).contains("--onto"));
}

#[test]
fn embed_every_real_file_and_keep_an_existing_output() {
    let Some(real) = real_data_dir() else { return };
    let run = run_dir(&real);
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("all.h5");
    let args = [
        "embed",
        p(&real),
        "--checkpoint",
        p(run),
        "-o",
        p(&out_path),
        "--batch-size",
        "7",
        "--threads",
        "1",
    ];
    let out = spectok(&args);
    let stderr = text(&out.stderr);
    // Some real inputs cannot be embedded: written, exit code 1.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let (recs, fails) = read(&out_path);
    assert!(recs.len() > 50, "{stderr}");
    assert!(
        stderr.contains(&format!("embedded: {} spectra", recs.len())),
        "{stderr}"
    );
    assert!(stderr.contains("spectra/s"), "{stderr}");
    assert!(
        stderr.contains(&format!("{} failed", fails.len())),
        "{stderr}"
    );
    // Every failure is in the summary with its reason.
    for f in &fails {
        assert!(stderr.contains(&f.to_string()), "{f} not in:\n{stderr}");
    }
    assert!(
        stderr.contains("XP_CONTINUOUS_RAW.fits: input: gaia-xp-continuous refused"),
        "{stderr}"
    );
    assert!(recs
        .iter()
        .all(|r| r.embedding.len() == 16 && r.embedding.iter().all(|v| v.is_finite())));

    // Not replaced without --force; replaced with it.
    let before = std::fs::read(&out_path).unwrap();
    let again = spectok(&args);
    let e = text(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{e}");
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out_path).unwrap(), before);
    assert!(!tmp.path().join("all.h5.tmp").exists());
    let mut forced = args.to_vec();
    forced.push("--force");
    assert_eq!(spectok(&forced).status.code(), Some(1));
    let (again_recs, _) = read(&out_path);
    assert_eq!(again_recs.len(), recs.len());

    // A bad checkpoint is an error naming it.
    let bad = spectok(&[
        "embed",
        p(&real),
        "--checkpoint",
        p(&real),
        "-o",
        p(&tmp.path().join("x.h5")),
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("neither a checkpoint"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn shard_parts_merged_equal_a_single_run() {
    let Some(real) = real_data_dir() else { return };
    let run = run_dir(&real);
    let tmp = tempfile::tempdir().unwrap();
    let embed = |out: &Path, extra: &[&str]| {
        let mut a = vec!["embed", p(&real), "--checkpoint", p(run), "-o", p(out)];
        a.extend_from_slice(extra);
        let o = spectok(&a);
        // 1 when some spectra of the part failed.
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "{}",
            text(&o.stderr)
        );
    };
    let single = tmp.path().join("single.h5");
    embed(&single, &[]);
    let parts: Vec<PathBuf> = (0..2)
        .map(|i| tmp.path().join(format!("part-{i}.h5")))
        .collect();
    embed(&parts[1], &["--shard", "1/2", "--batch-size", "3"]);
    let o = spectok(&[
        "embed",
        p(&real),
        "--checkpoint",
        p(run),
        "-o",
        p(&parts[0]),
        "--shard",
        "0/2",
    ]);
    // Part 0 reports the unreadable inputs; it also has rejected spectra.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("part 0/2"), "{}", text(&o.stderr));

    let merged = tmp.path().join("merged.h5");
    let m = spectok(&["merge", p(&parts[1]), p(&parts[0]), "-o", p(&merged)]);
    assert!(m.status.success(), "{}", text(&m.stderr));
    let (rs, fs) = read(&single);
    let (rm, fm) = read(&merged);
    assert!(text(&m.stderr).contains(&format!("{} embeddings", rs.len())));
    assert_eq!(
        rs.iter().map(key).collect::<Vec<_>>(),
        rm.iter().map(key).collect::<Vec<_>>()
    );
    for (a, b) in rs.iter().zip(&rm) {
        assert!(max_diff(&a.embedding, &b.embedding) <= 1e-5, "{:?}", key(a));
    }
    assert_eq!(fs, fm);

    // A missing part, an existing output, a bad --shard.
    let e = spectok(&["merge", p(&parts[0]), "-o", p(&tmp.path().join("m.h5"))]);
    assert_eq!(e.status.code(), Some(2));
    assert!(text(&e.stderr).contains("1/2") && text(&e.stderr).contains("missing"));
    let e = spectok(&["merge", p(&parts[0]), p(&parts[1]), "-o", p(&merged)]);
    assert_eq!(e.status.code(), Some(2));
    assert!(text(&e.stderr).contains("--force"), "{}", text(&e.stderr));
    let e = spectok(&[
        "embed",
        p(&real),
        "--checkpoint",
        p(run),
        "-o",
        p(&tmp.path().join("b.h5")),
        "--shard",
        "2/2",
    ]);
    assert_eq!(e.status.code(), Some(2));
    assert!(text(&e.stderr).contains("\"2/2\""), "{}", text(&e.stderr));
}

#[test]
fn reconstruct_onto_desi_with_plots() {
    let Some(real) = real_data_dir() else { return };
    let run = run_dir(&real);
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("sdss-on-desi.h5");
    let sdss = real.join("sdss/spec-0266-51602-0013.fits");
    let out = spectok(&[
        "reconstruct",
        p(&sdss),
        p(&real.join("apogee/apVisit-2M08501918+1056436-0.fits")),
        "--checkpoint",
        p(run),
        "--onto",
        "desi",
        "-o",
        p(&out_path),
        "--plot",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pngs: Vec<&str> = stdout.lines().filter(|l| l.ends_with(".png")).collect();
    assert_eq!(pngs.len(), 2, "{stdout}");
    for png in &pngs {
        let bytes = std::fs::read(png).unwrap();
        assert!(bytes.len() > 5000 && bytes.starts_with(b"\x89PNG"), "{png}");
        assert!(Path::new(png).starts_with(tmp.path().join("sdss-on-desi-plots")));
    }
    {
        let _g = reading();
        let f = ReconstructionFile::open(&out_path).unwrap();
        assert_eq!((f.len(), f.target()), (2, "desi"));
        for i in 0..2 {
            let r = f.read(i).unwrap();
            assert_eq!(r.output_wavelength.len(), 2751 + 2326 + 2881);
            assert_eq!(r.output_segments.len(), 3);
            assert!(r.output_flux.iter().all(|v| v.is_finite()));
        }
        assert_eq!(f.read(0).unwrap().input_wavelength.len(), 3838);
    }
    // Onto its own grid by default; a grid that is neither a survey nor a
    // file is an error.
    let own = tmp.path().join("own.h5");
    let o = spectok(&[
        "reconstruct",
        p(&sdss),
        "--checkpoint",
        p(run),
        "-o",
        p(&own),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    {
        let _g = reading();
        let r = ReconstructionFile::open(&own).unwrap().read(0).unwrap();
        assert_eq!(r.output_wavelength, r.input_wavelength);
    }
    let e = spectok(&[
        "reconstruct",
        p(&sdss),
        "--checkpoint",
        p(run),
        "--onto",
        "hubble",
        "-o",
        p(&tmp.path().join("h.h5")),
    ]);
    assert_eq!(e.status.code(), Some(2));
    assert!(
        text(&e.stderr).contains("neither a survey"),
        "{}",
        text(&e.stderr)
    );
}

#[test]
fn tokens_read_from_h5py() {
    let Some(real) = real_data_dir() else { return };
    let run = run_dir(&real);
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("tokens.h5");
    let o = spectok(&[
        "embed",
        p(&real.join("sdss")),
        p(&real.join("lamost")),
        "--checkpoint",
        p(run),
        "-o",
        p(&out_path),
        "--tokens",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let (recs, fails) = read(&out_path);
    assert!(fails.is_empty());
    let n = recs.len();
    let m: usize = recs.iter().map(|r| r.tokens.as_ref().unwrap().len()).sum();
    let have = {
        let _g = spawning();
        Command::new("python3")
            .args(["-c", "import h5py"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have {
        eprintln!("skipping the h5py check: python3 with h5py not available");
        return;
    }
    let script = r#"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
n, m = int(sys.argv[2]), int(sys.argv[3])
assert f["embedding"].shape == (n, 16)
assert f["object_id"].shape == (n,) and f["survey"].shape == (n,)
assert f["source_file"].shape == (n,) and f["source_row"].shape == (n,)
assert f["tokens"].shape == (m, 16) and f["token_center"].shape == (m,)
assert f["token_offsets"].shape == (n + 1,) and f["token_offsets"][-1] == m
assert set(f["survey"].asstr()[:]) == {"sdss", "lamostlrs", "lamostmrs"}
assert f["failed/reason"].shape == (0,)
assert f.attrs["has_tokens"] == 1
print("ok")
"#;
    let out = {
        let _g = spawning();
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&out_path)
            .arg(n.to_string())
            .arg(m.to_string())
            .output()
            .unwrap()
    };
    assert!(
        out.status.success(),
        "h5py check failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
