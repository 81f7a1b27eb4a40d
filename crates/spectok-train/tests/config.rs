//! Config parsing and validation: defaults, and errors that name the field.

use std::path::PathBuf;

use spectok_train::{Error, TrainConfig};

const SOURCES: &str = r#""sources": [{"name": "sdss", "paths": ["data/sdss"]}]"#;

fn field_of(text: &str) -> String {
    match TrainConfig::from_json(text) {
        Ok(_) => panic!("config accepted: {text}"),
        Err(e) => e
            .config_field()
            .unwrap_or_else(|| panic!("not a config error: {e}"))
            .to_string(),
    }
}

fn with_data(rest: &str) -> String {
    format!(r#"{{"data": {{{SOURCES}}}, {rest}}}"#)
}

#[test]
fn defaults_fill_missing_fields() {
    let cfg = TrainConfig::from_json(&format!(r#"{{"data": {{{SOURCES}}}}}"#)).unwrap();
    assert_eq!(cfg.model, spectok_model::Config::paper());
    assert_eq!(cfg.optim.lr, 1e-4);
    assert_eq!(cfg.optim.betas, [0.9, 0.999]);
    assert_eq!(cfg.steps, 600_000);
    assert_eq!(cfg.device, "cpu");
    assert_eq!(cfg.data.sources[0].weight, 1.0);
    assert_eq!(cfg.data.prepare.patch_size, cfg.model.patch_size);
    // A token budget instead of a fixed batch size.
    let cfg = TrainConfig::from_json(&with_data(
        r#""batch": {"mode": "tokens", "max_tokens": 8192, "max_spectra": 64}"#,
    ))
    .unwrap();
    assert_eq!(
        cfg.batch,
        spectok_data::BatchSize::Tokens {
            max_tokens: 8192,
            max_spectra: 64
        }
    );
    // The model's patch size is the loader's.
    let cfg = TrainConfig::from_json(&with_data(r#""model": {"patch_size": 16}"#)).unwrap();
    assert_eq!(cfg.data.prepare.patch_size, 16);
}

#[test]
fn wrong_type_names_the_field() {
    assert_eq!(
        field_of(&with_data(r#""optim": {"lr": "fast"}"#)),
        "optim.lr"
    );
    assert_eq!(field_of(&with_data(r#""steps": -5"#)), "steps");
    assert_eq!(
        field_of(r#"{"data": {"sources": [{"name": "a", "paths": ["x"], "weight": "heavy"}]}}"#),
        "data.sources[0].weight"
    );
    assert_eq!(
        field_of(&with_data(r#""model": {"d_model": 1.5}"#)),
        "model.d_model"
    );
}

#[test]
fn unknown_field_is_an_error_naming_it() {
    assert_eq!(
        field_of(&with_data(r#""optim": {"lrr": 0.1}"#)),
        "optim.lrr"
    );
    assert_eq!(field_of(&with_data(r#""stpes": 10"#)), "stpes");
    assert_eq!(
        field_of(&with_data(r#""model": {"widht": 64}"#)),
        "model.widht"
    );
    let e = TrainConfig::from_json(&with_data(r#""optim": {"lrr": 0.1}"#)).unwrap_err();
    assert!(e.to_string().contains("unknown field `lrr`"), "{e}");
}

#[test]
fn out_of_range_values_name_the_field() {
    assert_eq!(
        field_of(&with_data(r#""optim": {"lr": -0.001}"#)),
        "optim.lr"
    );
    assert_eq!(
        field_of(&with_data(r#""optim": {"betas": [0.9, 1.5]}"#)),
        "optim.betas[1]"
    );
    assert_eq!(
        field_of(&with_data(r#""optim": {"weight_decay": -1}"#)),
        "optim.weight_decay"
    );
    assert_eq!(
        field_of(&with_data(r#""schedule": {"min_lr_ratio": 2}"#)),
        "schedule.min_lr_ratio"
    );
    assert_eq!(field_of(&with_data(r#""steps": 0"#)), "steps");
    assert_eq!(field_of(&with_data(r#""device": "gpu""#)), "device");
    assert_eq!(field_of(&with_data(r#""dtype": "f64""#)), "dtype");
    assert_eq!(
        field_of(&with_data(r#""model": {"heads": 3}"#)),
        "model.heads"
    );
    assert_eq!(
        field_of(&with_data(r#""batch": {"mode": "fixed", "spectra": 0}"#)),
        "batch.spectra"
    );
    assert_eq!(
        field_of(r#"{"data": {"sources": [{"name": "a", "paths": ["x"], "weight": -1}]}}"#),
        "data.sources[0].weight"
    );
    assert_eq!(
        field_of(
            r#"{"data": {"sources": [{"name": "a", "paths": ["x"]}, {"name": "a", "paths": ["y"]}]}}"#
        ),
        "data.sources[1].name"
    );
    assert_eq!(
        field_of(r#"{"data": {"sources": [{"name": "a", "paths": ["x"], "format": "sdsss"}]}}"#),
        "data.sources[0].format"
    );
    assert_eq!(
        field_of(&format!(
            r#"{{"data": {{{SOURCES}, "val_fraction": 1.0}}}}"#
        )),
        "data.val_fraction"
    );
    assert_eq!(
        field_of(&format!(
            r#"{{"data": {{{SOURCES}, "prepare": {{"gap_factor": 0.5}}}}}}"#
        )),
        "data.prepare.gap_factor"
    );
    assert_eq!(
        field_of(&format!(
            r#"{{"data": {{{SOURCES}, "prepare": {{"patch_size": 16}}}}, "model": {{"patch_size": 8}}}}"#
        )),
        "data.prepare.patch_size"
    );
    // validate() on a config built in code names the field the same way.
    let mut cfg = TrainConfig::from_json(&with_data(r#""steps": 10"#)).unwrap();
    cfg.optim.lr = -1.0;
    assert_eq!(cfg.validate().unwrap_err().config_field(), Some("optim.lr"));
}

#[test]
fn syntax_errors_give_line_and_column_and_files_are_named() {
    let e = TrainConfig::from_json("{\n  \"steps\": 10,\n}").unwrap_err();
    assert!(e.to_string().contains("line 3"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, with_data(r#""optim": {"lr": -1}"#)).unwrap();
    let e = TrainConfig::from_file(&path).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("bad.json") && msg.contains("optim.lr"),
        "{msg}"
    );
    assert!(matches!(e, Error::Config { .. }));
}

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn shipped_configs_parse() {
    let demo = TrainConfig::from_file(&configs_dir().join("demo.json")).unwrap();
    assert!(demo
        .data
        .sources
        .iter()
        .all(|s| s.paths.iter().all(|p| p.starts_with("data/demo"))));
    let paper = TrainConfig::from_file(&configs_dir().join("paper.json")).unwrap();
    assert_eq!(paper.model.d_model, 512);
    assert_eq!(paper.model.encoder_layers, 6);
    assert_eq!(paper.model.decoder_layers, 6);
    assert_eq!(paper.model.heads, 8);
    assert_eq!(paper.model.patch_size, 32);
    assert_eq!(paper.batch, spectok_data::BatchSize::Fixed { spectra: 64 });
    assert_eq!(paper.optim.lr, 1e-4);
    assert_eq!(paper.steps, 600_000);
    let names: Vec<&str> = paper.data.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["sdss", "desi", "galah", "apogee"]);
    // The resolved config round-trips.
    assert_eq!(TrainConfig::from_json(&paper.to_json()).unwrap(), paper);
}

/// Parses `text`, expects a config error for `field` whose message holds
/// `quoted` and no line break.
fn one_line_error(text: &str, field: &str, quoted: &str) {
    let e = TrainConfig::from_json(text).expect_err(text);
    let msg = e.to_string();
    assert!(!msg.contains(['\n', '\r', '\u{2028}']), "{msg:?}");
    assert_eq!(e.config_field(), Some(field), "{msg}");
    assert!(msg.contains(quoted), "{msg} (want {quoted})");
}

#[test]
fn errors_quoting_the_config_stay_on_one_line() {
    // Control characters in unknown field names: the field path and the
    // message quote the name escaped.
    one_line_error(
        &with_data(r#""optim": {"lr\nx": 1}"#),
        "optim.lr\\nx",
        "unknown field `lr\\nx`",
    );
    one_line_error(
        r#"{"st\r\neps": 1}"#,
        "st\\r\\neps",
        "unknown field `st\\r\\neps`",
    );
    one_line_error(
        r#"{"data": {"sources": [{"name": "a", "paths": ["x"], "we\u2028ight": 1}]}}"#,
        "data.sources[0].we\\u{2028}ight",
        "unknown field `we\\u{2028}ight`",
    );
    // Control characters in string values.
    one_line_error(
        &with_data(r#""device": "cu\nda""#),
        "device",
        "`cu\\nda`: expected",
    );
    one_line_error(
        &with_data(r#""dtype": "f\t32""#),
        "dtype",
        "`f\\t32`: expected",
    );
    one_line_error(
        &with_data(r#""model": {"mask_score": "hid\nden"}"#),
        "model.mask_score",
        "unknown variant `hid\\nden`",
    );
    one_line_error(
        r#"{"data": {"sources": [{"name": "a\nb", "paths": ["x"]}, {"name": "a\nb", "paths": ["y"]}]}}"#,
        "data.sources[1].name",
        "`a\\nb` is used by another source",
    );
    one_line_error(
        r#"{"data": {"sources": [{"name": "a", "paths": ["x"], "format": "fi\u001bts"}]}}"#,
        "data.sources[0].format",
        "unknown format `fi\\u{1b}ts`",
    );
    // A config file: the file is named, the message stays one line.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.json");
    std::fs::write(&path, with_data(r#""optim": {"lr\u0000": 1}"#)).unwrap();
    let msg = TrainConfig::from_file(&path).unwrap_err().to_string();
    assert!(
        msg.contains("ctl.json") && msg.contains("field `optim.lr\\0`"),
        "{msg}"
    );
    assert!(!msg.contains(['\n', '\0']), "{msg:?}");
}

#[test]
fn finetune_config_errors_stay_on_one_line() {
    use spectok_train::finetune::FinetuneConfig;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ft.json");
    for (text, field, quoted) in [
        (
            r#"{"epo\nchs": 3}"#,
            "epo\\nchs",
            "unknown field `epo\\nchs`",
        ),
        (
            r#"{"head": {"ki\r\nnd": "linear"}}"#,
            "head.ki\\r\\nnd",
            "unknown field `ki\\r\\nnd`",
        ),
        (
            r#"{"task": "red\nshift"}"#,
            "task",
            "unknown variant `red\\nshift`",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let e = FinetuneConfig::from_file(&path).expect_err(text);
        let msg = e.to_string();
        assert!(!msg.contains(['\n', '\r']), "{msg:?}");
        assert_eq!(e.config_field(), Some(field), "{msg}");
        assert!(msg.contains(quoted) && msg.contains("ft.json"), "{msg}");
    }
}
