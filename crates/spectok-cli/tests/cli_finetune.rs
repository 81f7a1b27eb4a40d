//! `spectok finetune` and `spectok predict` end to end on the committed
//! mock survey (data/demo), with a tiny tokenizer trained here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spectok_data::PrepareConfig;
use spectok_io::predictions::read_predictions;

#[path = "../../spectok-train/tests/common/mod.rs"]
mod common;

fn spectok(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spectok"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run spectok")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo")
}

/// A tiny tokenizer (width 16, 1+1 layers, P 32) trained for `steps`
/// steps on the demo mocks of `surveys`, into `dir`.
fn train_tiny_on(dir: &Path, surveys: &[&str], steps: u64, seed: u64) {
    let prepare = PrepareConfig {
        patch_size: 32,
        ..PrepareConfig::default()
    };
    common::train(common::tiny_config(
        &demo_dir(),
        surveys,
        prepare,
        steps,
        seed,
        dir,
    ));
}

fn train_tiny(dir: &Path) {
    train_tiny_on(dir, &["sdss", "desi", "galah"], 2, 5);
}

#[test]
fn finetune_then_predict_on_the_demo_mocks() {
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    train_tiny(&run);
    let demo = demo_dir().display().to_string();
    let run_s = run.display().to_string();
    let heads = work.path().join("heads");
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/finetune-class.json");

    // Class with the attentive head (the committed config, few epochs).
    let class_dir = heads.join("class");
    let o = spectok(&[
        "finetune",
        "class",
        &demo,
        "--checkpoint",
        &run_s,
        "-o",
        class_dir.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--epochs",
        "3",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("cached in"), "{t}");
    assert!(
        t.contains("head(attentive)") && t.contains("ridge(pooled embedding)"),
        "{t}"
    );
    assert!(
        t.contains("GALAXY") && t.contains("QSO") && t.contains("STAR"),
        "{t}"
    );
    for f in [
        "head.json",
        "head.safetensors",
        "metrics.json",
        "test_predictions.csv",
        "confusion.png",
    ] {
        assert!(class_dir.join(f).is_file(), "no {f}: {t}");
    }
    let png = std::fs::read(class_dir.join("confusion.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(class_dir.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["task"], "class");
    assert!(metrics["results"][0]["metrics"]["class"]["accuracy"]
        .as_f64()
        .is_some());

    // Stellar from the cached embeddings file given explicitly.
    let cache_file = t
        .lines()
        .find_map(|l| l.strip_prefix("frozen encoder outputs cached in "))
        .expect("cache line")
        .trim()
        .to_string();
    let st_dir = heads.join("stellar");
    let o = spectok(&[
        "finetune",
        "stellar",
        &demo,
        "--checkpoint",
        &run_s,
        "--embeddings",
        &cache_file,
        "-o",
        st_dir.to_str().unwrap(),
        "--epochs",
        "2",
        "--no-baselines",
        "--no-plots",
    ]);
    let ts = text(&o);
    assert!(o.status.success(), "{ts}");
    assert!(ts.contains("read from") && ts.contains("MAD teff"), "{ts}");
    assert!(st_dir.join("head.json").is_file() && !st_dir.join("pred_vs_true.png").exists());

    // Redshift with the linear probe: the cache is reused.
    let z_dir = heads.join("redshift");
    let o = spectok(&[
        "finetune",
        "redshift",
        &demo,
        "--checkpoint",
        &run_s,
        "-o",
        z_dir.to_str().unwrap(),
        "--head",
        "linear",
        "--epochs",
        "3",
        "--no-baselines",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("reused from"), "{t}");
    assert!(t.contains("σ_NMAD") && t.contains("head(linear)"), "{t}");
    assert!(!t.contains("ridge("), "--no-baselines: {t}");
    assert!(z_dir.join("pred_vs_true.png").is_file());

    // Predict with both heads.
    let csv = work.path().join("z.csv");
    let o = spectok(&[
        "predict",
        &demo,
        "--head",
        z_dir.to_str().unwrap(),
        "-o",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let body = std::fs::read_to_string(&csv).unwrap();
    let mut lines = body.lines();
    assert_eq!(lines.next(), Some("object_id,survey,source,z,z_err"));
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= 130, "{} rows", rows.len());
    for r in &rows {
        let cells: Vec<&str> = r.rsplitn(3, ',').collect();
        let z: f64 = cells[1].parse().unwrap();
        let err: f64 = cells[0].parse().unwrap();
        assert!(z.is_finite() && err > 0.0, "{r}");
    }
    // The same predictions as HDF5: every value equals the CSV's.
    let h5 = work.path().join("z.h5");
    let o = spectok(&[
        "predict",
        &demo,
        "--head",
        z_dir.to_str().unwrap(),
        "-o",
        h5.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let p = read_predictions(&h5).unwrap();
    assert_eq!(p.task, "redshift");
    assert_eq!(p.head, z_dir.display().to_string());
    assert_eq!(p.checkpoint_sha256.len(), 64);
    assert!(p.classes.is_none());
    let names: Vec<&str> = p.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["z", "z_err"]);
    assert_eq!(p.columns[1].uncertainty_of.as_deref(), Some("z"));
    let table = csv_rows(&body);
    assert_eq!(p.len(), table.len());
    for (i, cells) in table.iter().enumerate() {
        assert_eq!(
            [&p.object_id[i], &p.survey[i], &p.source[i]],
            [&cells[0], &cells[1], &cells[2]],
            "row {i}"
        );
        for (k, c) in p.columns.iter().enumerate() {
            let want: f64 = cells[3 + k].parse().unwrap();
            assert_eq!(c.values[i], want, "row {i} {}", c.name);
        }
    }
    assert!(
        !work.path().join("z.h5.tmp").exists(),
        "temporary file left"
    );
    let json = work.path().join("c.json");
    let o = spectok(&[
        "predict",
        &demo,
        "--head",
        class_dir.to_str().unwrap(),
        "--checkpoint",
        &run_s,
        "-o",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v.as_array().unwrap();
    assert!(rows.len() >= 130, "{} rows", rows.len());
    let classes = ["GALAXY", "QSO", "STAR"];
    for r in rows {
        assert!(classes.contains(&r["class"].as_str().unwrap()), "{r}");
        let p: f64 = ["p_galaxy", "p_qso", "p_star"]
            .iter()
            .map(|k| r[*k].as_f64().unwrap())
            .sum();
        assert!((p - 1.0).abs() < 1e-4, "{r}");
    }
    // Class predictions as HDF5 (.hdf5) equal the CSV's.
    let class_csv = work.path().join("c.csv");
    let class_h5 = work.path().join("c.hdf5");
    for out in [&class_csv, &class_h5] {
        let o = spectok(&[
            "predict",
            &demo,
            "--head",
            class_dir.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let body = std::fs::read_to_string(&class_csv).unwrap();
    assert!(
        body.starts_with("object_id,survey,source,class,p_galaxy,p_qso,p_star\n"),
        "{body}"
    );
    let table = csv_rows(&body);
    let p = read_predictions(&class_h5).unwrap();
    assert_eq!(p.task, "class");
    assert_eq!(p.head, class_dir.display().to_string());
    assert!(p.columns.is_empty());
    let k = p.classes.as_ref().expect("class datasets");
    assert_eq!(k.names, classes);
    assert_eq!(p.len(), table.len());
    for (i, cells) in table.iter().enumerate() {
        assert_eq!(
            [&p.object_id[i], &p.survey[i], &p.source[i], &k.predicted[i]],
            [&cells[0], &cells[1], &cells[2], &cells[3]],
            "row {i}"
        );
        let want: Vec<f64> = cells[4..].iter().map(|c| c.parse().unwrap()).collect();
        assert_eq!(k.row(i).unwrap(), &want[..], "row {i}");
    }

    // Errors: unknown task, unsupported output, a different tokenizer.
    let o = spectok(&["finetune", "age", &demo, "--checkpoint", &run_s, "-o", "x"]);
    assert!(
        !o.status.success() && text(&o).contains("unknown task"),
        "{}",
        text(&o)
    );
    let o = spectok(&[
        "predict",
        &demo,
        "--head",
        z_dir.to_str().unwrap(),
        "-o",
        "p.parquet",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("unsupported predictions format"),
        "{}",
        text(&o)
    );
    let other = work.path().join("other");
    train_tiny_other(&other);
    let o = spectok(&[
        "predict",
        &demo,
        "--head",
        z_dir.to_str().unwrap(),
        "--checkpoint",
        other.to_str().unwrap(),
        "-o",
        work.path().join("o.csv").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("was trained on the tokenizer with sha256"),
        "{}",
        text(&o)
    );
}

/// The rows of a CSV file after its header, split into cells (quoted
/// cells may hold commas and doubled quotes).
fn csv_rows(body: &str) -> Vec<Vec<String>> {
    body.lines()
        .skip(1)
        .map(|line| {
            let mut cells = vec![String::new()];
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '"' if quoted && chars.peek() == Some(&'"') => {
                        chars.next();
                        cells.last_mut().unwrap().push('"');
                    }
                    '"' => quoted = !quoted,
                    ',' if !quoted => cells.push(String::new()),
                    _ => cells.last_mut().unwrap().push(c),
                }
            }
            cells
        })
        .collect()
}

/// A second tokenizer (another seed), whose weights differ.
fn train_tiny_other(dir: &Path) {
    train_tiny_on(dir, &["sdss"], 1, 99);
}

#[test]
fn finetune_with_unfrozen_blocks_then_predict_agrees() {
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    train_tiny(&run);
    let run_s = run.display().to_string();
    let sdss = demo_dir().join("sdss").display().to_string();
    let desi = demo_dir().join("desi").display().to_string();
    let cache = work.path().join("cache").display().to_string();
    let head = work.path().join("class-k1");
    let head_s = head.display().to_string();
    let finetune = |extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "class",
            &sdss,
            &desi,
            "--checkpoint",
            &run_s,
            "--cache",
            &cache,
            "--epochs",
            "2",
            "--no-baselines",
            "--no-plots",
        ];
        args.extend_from_slice(extra);
        spectok(&args)
    };

    // The tokenizer has one block: K = 1 tunes it on the cached embeddings
    // (the hidden states after block 0).
    let o = finetune(&["--unfreeze-last", "1", "-o", &head_s]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("frozen encoder states after block 0 of 1 cached in"),
        "{t}"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(head.join("head.json")).unwrap()).unwrap();
    assert_eq!(meta["unfreeze_last"], 1);
    assert_eq!(meta["config"]["unfreeze_last"], 1);

    // predict runs the frozen part, the tuned block and the head: the
    // test part's probabilities are those finetune wrote.
    let csv = work.path().join("classes.csv");
    let o = spectok(&[
        "predict",
        &sdss,
        &desi,
        "--head",
        &head_s,
        "--cache",
        &cache,
        "-o",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let preds = csv_rows(&std::fs::read_to_string(&csv).unwrap());
    let test = csv_rows(&std::fs::read_to_string(head.join("test_predictions.csv")).unwrap());
    assert!(!test.is_empty() && preds.len() > test.len());
    for row in &test {
        // object_id, survey, true_class, class, p_galaxy, p_qso, p_star
        let want: Vec<f64> = row[4..].iter().map(|c| c.parse().unwrap()).collect();
        let found = preds
            .iter()
            .filter(|p| p[0] == row[0] && p[1] == row[1])
            .any(|p| {
                let got: Vec<f64> = p[4..].iter().map(|c| c.parse().unwrap()).collect();
                got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5)
            });
        assert!(found, "no prediction equals the test row {row:?}");
    }

    // K above the tokenizer's blocks, and a final-token file with K > 0.
    let o = finetune(&["--unfreeze-last", "2", "-o", &head_s]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("unfreeze_last") && t.contains("exceeds"), "{t}");
    let o = finetune(&[
        "--unfreeze-last",
        "1",
        "--embeddings",
        "whatever.h5",
        "-o",
        &head_s,
    ]);
    let t = text(&o);
    assert!(!o.status.success() && t.contains("--embeddings"), "{t}");
}
