//! The `spectok inspect` and `spectok convert` commands end to end, on the
//! real survey files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spectok_io::testdata::real_data_dir;

fn spectok(args: &[&str]) -> Output {
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

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in ["inspect", "convert"] {
        let out = spectok(&[sub, "--help"]);
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(
            help.contains("Example"),
            "{sub} --help has no example:\n{help}"
        );
    }
}

#[test]
fn inspect_sdss_dir_lists_every_spectrum() {
    let Some(root) = real_data_dir() else { return };
    let out = spectok(&["inspect", p(&root.join("sdss"))]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("format=sdss-spec"), "{stdout}");
    assert!(stdout.contains("format=sdss-spspec"), "{stdout}");
    assert!(stdout.contains("class=GALAXY z=0.1213"), "{stdout}");
    assert!(
        stderr.contains("13 spectra read, 0 skipped, 0 input(s) unreadable"),
        "{stderr}"
    );
}

#[test]
fn inspect_json_lines_carry_the_fields() {
    let Some(root) = real_data_dir() else { return };
    let f = root.join("desi/coadd-4-80613-thru20210324.fits");
    let out = spectok(&["inspect", "--json", p(&f)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    let v = &lines[0];
    assert_eq!(v["id"], "39633345008634465");
    assert_eq!(v["survey"], "desi");
    assert_eq!(v["pixels"], 2751 + 2326 + 2881);
    let z = v["labels"]["redshift"].as_f64().unwrap();
    assert!((z - 0.36874).abs() < 1e-5, "{z}");
    assert_eq!(v["segments"].as_array().unwrap().len(), 3);
}

#[test]
fn unreadable_inputs_give_one_line_errors_and_exit_1() {
    let Some(root) = real_data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = root.join("sdss/spec-0266-51602-0013.fits");
    let bytes = std::fs::read(&src).unwrap();
    let cut = dir.path().join("truncated.fits");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = spectok(&["inspect", p(&cut), p(&src), "does-not-exist.fits"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error:") || l.starts_with("skipped:"))
        .collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(
        errors.iter().any(|l| l.contains("truncated.fits")),
        "{stderr}"
    );
    assert!(
        errors.iter().any(|l| l.contains("does-not-exist.fits")),
        "{stderr}"
    );
    // The good file is still listed.
    assert!(text(&out.stdout).contains("spec-0266-51602-0013.fits"));
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn refused_layouts_say_what_they_found() {
    let Some(root) = real_data_dir() else { return };
    let out = spectok(&["inspect", p(&root.join("gaiaxp/XP_CONTINUOUS_RAW.fits"))]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("coefficients"), "{stderr}");
}

#[test]
fn convert_round_trips_through_inspect_and_refuses_to_overwrite() {
    let Some(root) = real_data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let shard: PathBuf = dir.path().join("apogee.h5");
    let inputs = root.join("apogee");
    let out = spectok(&["convert", p(&inputs), "-o", p(&shard)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(shard.is_file());
    // No temporary file is left beside the shard.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    let direct = spectok(&["inspect", "--json", p(&inputs)]);
    let via_shard = spectok(&["inspect", "--json", p(&shard)]);
    let ids = |o: &Output| -> Vec<String> {
        text(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
            .collect()
    };
    assert_eq!(ids(&direct), ids(&via_shard));
    assert_eq!(ids(&direct).len(), 13);

    let again = spectok(&["convert", p(&inputs), "-o", p(&shard)]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("--force"));
    let forced = spectok(&["convert", p(&inputs), "-o", p(&shard), "--force"]);
    assert!(forced.status.success());
}
