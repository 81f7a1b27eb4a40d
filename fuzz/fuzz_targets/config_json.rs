//! Arbitrary text as a training config and as a model config: parsing
//! never panics, errors are one line, and an accepted config survives a
//! round trip through its own JSON and yields its derived settings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spectok_data::Split;
use spectok_model::Config;
use spectok_train::{Schedule, TrainConfig};

fn check_model(cfg: &Config) {
    let _ = (
        cfg.head_dim(),
        cfg.mlp_hidden(),
        cfg.wavelength_dim(),
        cfg.offset_dim(),
        cfg.codebook_size(),
    );
    let again = Config::from_json(&cfg.to_json())
        .unwrap_or_else(|e| panic!("an accepted model config does not re-parse: {e}"));
    assert_eq!(&again, cfg, "model config changed in a JSON round trip");
}

/// Panics when an error message spans lines (names and values quoted from
/// the input are escaped by the parsers, control characters included).
fn check_one_line(msg: &str, _input: &str) {
    assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match TrainConfig::from_json(text) {
        Ok(cfg) => {
            let again = TrainConfig::from_json(&cfg.to_json())
                .unwrap_or_else(|e| panic!("an accepted config does not re-parse: {e}"));
            assert_eq!(again, cfg, "config changed in a JSON round trip");
            check_model(&cfg.model);
            let _ = cfg.loader_config(Split::Train);
            let _ = cfg.loader_config(Split::Validation);
            let schedule = Schedule::new(cfg.optim.lr, &cfg.schedule, cfg.steps);
            for step in [0, 1, cfg.schedule.warmup_steps, cfg.steps / 2, cfg.steps] {
                let lr = schedule.lr(step);
                assert!(
                    lr.is_finite() && lr >= 0.0,
                    "learning rate {lr} at step {step}"
                );
            }
        }
        Err(e) => check_one_line(&e.to_string(), text),
    }
    match Config::from_json(text) {
        Ok(cfg) => check_model(&cfg),
        Err(e) => check_one_line(&e.to_string(), text),
    }
});
