//! The HDF5 predictions file: round trips for the three tasks, atomic
//! writing, and errors that name the dataset.

use std::path::Path;

use spectok_io::predictions::{
    read_predictions, write_predictions, Classes, Column, Predictions, PREDICTIONS_MARKER,
};

fn base(task: &str, n: usize) -> Predictions {
    Predictions {
        task: task.into(),
        head: "heads/redshift".into(),
        checkpoint: "runs/demo/checkpoints/best".into(),
        checkpoint_sha256: "ab".repeat(32),
        spectok_version: "0.1.0".into(),
        object_id: (0..n).map(|i| format!("obj,{i} \"Å\"")).collect(),
        survey: (0..n)
            .map(|i| if i % 2 == 0 { "sdss" } else { "desi" }.into())
            .collect(),
        source: (0..n)
            .map(|i| format!("data/x y/spec-{i}.fits[COADD] row {i}"))
            .collect(),
        columns: Vec::new(),
        classes: None,
    }
}

fn redshift(n: usize) -> Predictions {
    Predictions {
        columns: vec![
            Column {
                name: "z".into(),
                values: (0..n).map(|i| 0.1 + i as f64 / 7.0).collect(),
                uncertainty_of: None,
            },
            Column {
                name: "z_err".into(),
                values: (0..n).map(|i| 1e-3 * (i + 1) as f64).collect(),
                uncertainty_of: Some("z".into()),
            },
        ],
        ..base("redshift", n)
    }
}

fn no_tmp_left(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn redshift_predictions_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.h5");
    let p = redshift(5000);
    write_predictions(&path, &p).unwrap();
    let back = read_predictions(&path).unwrap();
    assert_eq!(back, p);
    assert_eq!(back.len(), 5000);
    assert_eq!(
        back.column("z_err").unwrap().uncertainty_of.as_deref(),
        Some("z")
    );
    assert_eq!(back.column("z").unwrap().values[7], 0.1 + 1.0);
    assert!(back.classes.is_none());
    no_tmp_left(dir.path());
}

#[test]
fn class_predictions_round_trip_with_a_probability_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.hdf5");
    let names: Vec<String> = ["GALAXY", "QSO", "STAR"].map(String::from).to_vec();
    let n = 11;
    let probabilities: Vec<f64> = (0..n)
        .flat_map(|i| {
            let a = (i % 3) as f64 * 0.25;
            [a, 0.5 - a / 2.0, 0.5 - a / 2.0]
        })
        .collect();
    let p = Predictions {
        classes: Some(Classes {
            predicted: (0..n).map(|i| names[i % 3].clone()).collect(),
            names: names.clone(),
            probabilities,
        }),
        ..base("class", n)
    };
    write_predictions(&path, &p).unwrap();
    let back = read_predictions(&path).unwrap();
    assert_eq!(back, p);
    let k = back.classes.unwrap();
    assert_eq!(k.names, names);
    assert_eq!(k.row(2), Some(&[0.5, 0.25, 0.25][..]));
    assert_eq!(k.row(n), None);
    assert_eq!(k.predicted[4], "QSO");
}

#[test]
fn stellar_and_empty_tables_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let params = ["teff", "logg", "fe_h"];
    for n in [0, 3] {
        let path = dir.path().join(format!("s{n}.h5"));
        let p = Predictions {
            columns: params
                .iter()
                .enumerate()
                .map(|(k, name)| Column {
                    name: name.to_string(),
                    values: (0..n).map(|i| 5000.0 / (k + 1) as f64 + i as f64).collect(),
                    uncertainty_of: None,
                })
                .collect(),
            head: String::new(),
            ..base("stellar", n)
        };
        write_predictions(&path, &p).unwrap();
        let back = read_predictions(&path).unwrap();
        assert_eq!(back, p, "{n} rows");
        let order: Vec<&str> = back.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(order, params, "CSV order kept");
    }
    // NaN (no value) survives.
    let path = dir.path().join("nan.h5");
    let mut p = redshift(2);
    p.columns[1].values[1] = f64::NAN;
    write_predictions(&path, &p).unwrap();
    let back = read_predictions(&path).unwrap();
    assert!(back.columns[1].values[1].is_nan());
    assert_eq!(back.columns[1].values[0], 1e-3);
}

#[test]
fn a_failed_write_leaves_the_old_file_and_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.h5");
    let good = redshift(4);
    write_predictions(&path, &good).unwrap();

    let mut bad = redshift(4);
    bad.source[2] = "a\0b".into();
    let e = write_predictions(&path, &bad).unwrap_err().to_string();
    assert!(e.contains("[source] row 2") && e.contains("NUL"), "{e}");
    assert_eq!(read_predictions(&path).unwrap(), good, "old file kept");
    no_tmp_left(dir.path());

    let mut bad = redshift(4);
    bad.task = "red\0shift".into();
    let e = write_predictions(&path, &bad).unwrap_err().to_string();
    assert!(e.contains("@task"), "{e}");
    assert_eq!(read_predictions(&path).unwrap(), good);
    no_tmp_left(dir.path());

    // A directory that does not exist: nothing is created.
    let missing = dir.path().join("no/such/dir/p.h5");
    assert!(write_predictions(&missing, &good).is_err());
    assert!(!dir.path().join("no").exists());
    no_tmp_left(dir.path());
}

#[test]
fn inconsistent_tables_are_refused_naming_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.h5");
    let refused = |p: &Predictions, want: &str| {
        let e = write_predictions(&path, p).unwrap_err().to_string();
        assert!(e.contains(want), "{e} (want {want})");
        assert!(!e.contains('\n'), "{e}");
        assert!(!path.exists());
        no_tmp_left(dir.path());
    };
    let mut p = redshift(3);
    p.columns[0].values.pop();
    refused(&p, "[z]: 2 values for 3 rows");
    let mut p = redshift(3);
    p.survey.push("sdss".into());
    refused(&p, "[survey]: 4 values for 3 rows");
    let mut p = redshift(3);
    p.columns[1].name = "z/err".into();
    refused(&p, "column name");
    let mut p = redshift(3);
    p.columns[1].name = "class".into();
    refused(&p, "column name");
    let mut p = redshift(3);
    p.columns[1].name = "z".into();
    refused(&p, "column name");
    let mut p = redshift(3);
    p.columns[1].uncertainty_of = Some("zz".into());
    refused(&p, "no column");
    let p = Predictions {
        classes: Some(Classes {
            names: vec!["A".into(), "B".into()],
            predicted: vec!["A".into(); 3],
            probabilities: vec![0.5; 5],
        }),
        ..base("class", 3)
    };
    refused(&p, "[probabilities]: 5 values for 3 rows of 2 classes");
}

#[test]
fn malformed_files_give_errors_naming_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    // Not a predictions file.
    let other = dir.path().join("other.h5");
    hdf5::File::create(&other).unwrap();
    let e = read_predictions(&other).unwrap_err().to_string();
    assert!(e.contains("not a spectok predictions file"), "{e}");
    assert!(e.contains(PREDICTIONS_MARKER), "{e}");

    // A column shorter than the table.
    let path = dir.path().join("short.h5");
    write_predictions(&path, &redshift(3)).unwrap();
    {
        let f = hdf5::File::open_rw(&path).unwrap();
        f.unlink("z_err").unwrap();
        f.new_dataset_builder()
            .with_data(&[1.0f64, 2.0])
            .create("z_err")
            .unwrap();
    }
    let e = read_predictions(&path).unwrap_err().to_string();
    assert!(e.contains("[z_err]") && e.contains("shape [2]"), "{e}");

    // A column listed but missing; a wrong version.
    let path = dir.path().join("missing.h5");
    write_predictions(&path, &redshift(3)).unwrap();
    {
        let f = hdf5::File::open_rw(&path).unwrap();
        f.unlink("z").unwrap();
    }
    let e = read_predictions(&path).unwrap_err().to_string();
    assert!(e.contains("[z]: dataset missing"), "{e}");
    let path = dir.path().join("v2.h5");
    write_predictions(&path, &redshift(3)).unwrap();
    {
        let f = hdf5::File::open_rw(&path).unwrap();
        f.delete_attr(PREDICTIONS_MARKER).unwrap();
        f.new_attr::<u32>()
            .create(PREDICTIONS_MARKER)
            .unwrap()
            .write_scalar(&2u32)
            .unwrap();
    }
    let e = read_predictions(&path).unwrap_err().to_string();
    assert!(e.contains("version 2"), "{e}");
}
