//! Checkpoints, seeded initialisation, config, FLOP counts and device names.

mod common;

use candle_core::{DType, Device, Tensor};
use spectok_model::{
    device, dtype, forward_flops, train_step_flops, Config, Error, Tokenizer, WavelengthEncoding,
    CONFIG_FILE, WEIGHTS_FILE,
};

use common::{model, ragged_batch, tensor_diff};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn save_then_load_gives_bit_identical_outputs() {
    for cfg in [
        Config::demo(),
        Config {
            fsq_levels: vec![7, 5, 4],
            ..Config::demo()
        },
    ] {
        let (m, varmap) = model(&cfg, 21);
        let (_, batch) = ragged_batch(cfg.patch_size);
        let dir = tempfile::tempdir().unwrap();
        m.save(&varmap, dir.path()).unwrap();
        assert!(dir.path().join(WEIGHTS_FILE).is_file());
        assert!(dir.path().join(CONFIG_FILE).is_file());
        let (loaded, loaded_vars) = Tokenizer::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
        assert_eq!(loaded.config(), &cfg);
        assert_eq!(loaded_vars.all_vars().len(), varmap.all_vars().len());
        let (a, b) = (
            m.encode(&batch, false).unwrap(),
            loaded.encode(&batch, false).unwrap(),
        );
        assert_eq!(bits(&a.tokens), bits(&b.tokens));
        assert_eq!(bits(&a.scale_token), bits(&b.scale_token));
        assert_eq!(bits(&a.pooled), bits(&b.pooled));
        if cfg.fsq_enabled() {
            let ids = |e: &spectok_model::Encoded| {
                e.token_ids
                    .as_ref()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<u32>()
                    .unwrap()
            };
            assert_eq!(ids(&a), ids(&b));
        }
        assert_eq!(
            bits(&m.reconstruct(&batch).unwrap()),
            bits(&loaded.reconstruct(&batch).unwrap())
        );
        // The inference loader builds the same model; its linear weights
        // are stored as Wᵀ, which the GEMMs sum in another order: equal to
        // float rounding.
        let frozen = Tokenizer::load_frozen(dir.path(), &Device::Cpu, DType::F32).unwrap();
        let c = frozen.encode(&batch, false).unwrap();
        assert!(tensor_diff(&a.tokens, &c.tokens) <= 1e-5);
        assert!(tensor_diff(&a.pooled, &c.pooled) <= 1e-5);
        let (r, rf) = (
            m.reconstruct(&batch).unwrap(),
            frozen.reconstruct(&batch).unwrap(),
        );
        assert!(tensor_diff(&r, &rf) <= 1e-5);
    }
}

/// The error of loading `dir`, the same from both loaders (trainable and
/// frozen), on one line.
fn load_err(dir: &std::path::Path) -> String {
    let e = match Tokenizer::load(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    let frozen = match Tokenizer::load_frozen(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} loaded frozen", dir.display()),
        Err(e) => e.to_string(),
    };
    // Both name the same problem (the frozen loader meets weights in
    // construction order, the other in name order).
    for (a, b) in [(&e, &frozen), (&frozen, &e)] {
        assert!(!a.contains('\n'), "{a}");
        let kind = [
            "shape",
            "unexpected tensor",
            "missing tensor",
            "config.json",
        ]
        .into_iter()
        .find(|k| a.contains(k))
        .unwrap_or_else(|| panic!("unexpected error {a}"));
        assert!(b.contains(kind), "{a} vs {b}");
    }
    e + " / " + &frozen
}

#[test]
fn load_rejects_mismatched_checkpoints() {
    let cfg = Config::demo();
    let (m, varmap) = model(&cfg, 22);
    let dir = tempfile::tempdir().unwrap();
    m.save(&varmap, dir.path()).unwrap();
    // A config whose model needs other weights.
    let wider = Config {
        d_model: 48,
        ..cfg.clone()
    };
    std::fs::write(dir.path().join(CONFIG_FILE), wider.to_json()).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("shape"),
        "{e}"
    );
    // A config with fewer layers leaves weights unused.
    let shallow = Config {
        encoder_layers: 1,
        ..cfg.clone()
    };
    std::fs::write(dir.path().join(CONFIG_FILE), shallow.to_json()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("unexpected tensor `encoder.blocks.1."), "{e}");
    // A config with more layers misses weights.
    let deep = Config {
        decoder_layers: 3,
        ..cfg.clone()
    };
    std::fs::write(dir.path().join(CONFIG_FILE), deep.to_json()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("missing tensor `decoder.blocks.2."), "{e}");
    // No checkpoint at all.
    let e = load_err(&dir.path().join("nope"));
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn seeded_init_is_reproducible() {
    let cfg = Config::demo();
    let (_, batch) = ragged_batch(cfg.patch_size);
    let (a, _) = model(&cfg, 5);
    let (b, _) = model(&cfg, 5);
    let (c, _) = model(&cfg, 6);
    let pa = bits(&a.encode(&batch, false).unwrap().pooled);
    assert_eq!(pa, bits(&b.encode(&batch, false).unwrap().pooled));
    assert_ne!(pa, bits(&c.encode(&batch, false).unwrap().pooled));
}

#[test]
fn weight_names_mirror_the_module_tree() {
    let cfg = Config {
        fsq_levels: vec![5, 5],
        ..Config::demo()
    };
    let (_, varmap) = model(&cfg, 0);
    let data = varmap.data().lock().unwrap();
    for name in [
        "encoder.patch_embed.signal.weight",
        "encoder.patch_embed.signal.bias",
        "encoder.patch_embed.wavelength.weight",
        "encoder.patch_embed.offsets.weight",
        "encoder.scale_embed.proj.weight",
        "encoder.blocks.0.norm1.weight",
        "encoder.blocks.1.attn.q.weight",
        "encoder.blocks.1.mlp.fc2.bias",
        "encoder.norm.bias",
        "fsq.proj_in.weight",
        "fsq.proj_out.bias",
        "decoder.query_embed.wavelength.weight",
        "decoder.query_embed.offsets.weight",
        "decoder.blocks.1.cross_attn.out.weight",
        "decoder.norm.weight",
        "head.proj.weight",
    ] {
        assert!(data.contains_key(name), "no weight {name}");
    }
    assert!(!data.contains_key("encoder.patch_embed.wavelength.bias"));
    let d = cfg.d_model;
    let wl = WavelengthEncoding::new(&cfg);
    assert_eq!(
        data["encoder.patch_embed.offsets.weight"].dims(),
        &[d, wl.offsets_dim()]
    );
    assert_eq!(data["head.proj.weight"].dims(), &[cfg.patch_size, d]);
}

#[test]
fn config_json_defaults_and_validation() {
    let cfg = Config::from_json(r#"{"d_model": 64, "heads": 4}"#).unwrap();
    assert_eq!(cfg.d_model, 64);
    assert_eq!(cfg.patch_size, Config::paper().patch_size);
    assert_eq!(
        Config::from_json(&Config::demo().to_json()).unwrap(),
        Config::demo()
    );
    let e = Config::from_json(r#"{"d_modle": 64}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("d_modle"), "{e}");
    let e = Config::from_json(r#"{"mask_score": "some"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("some"), "{e}");
    let field = |c: Config| match c.validate() {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(
        field(Config {
            heads: 5,
            ..Config::demo()
        }),
        "heads"
    );
    assert_eq!(
        field(Config {
            dropout: 1.0,
            ..Config::demo()
        }),
        "dropout"
    );
    assert_eq!(
        field(Config {
            min_period: 0.0,
            ..Config::demo()
        }),
        "min_period"
    );
    assert_eq!(
        field(Config {
            max_period: 0.01,
            ..Config::demo()
        }),
        "max_period"
    );
    assert_eq!(
        field(Config {
            mask_ratio: 1.0,
            ..Config::demo()
        }),
        "mask_ratio"
    );
    assert_eq!(
        field(Config {
            fsq_levels: vec![1, 5],
            ..Config::demo()
        }),
        "fsq_levels"
    );
    assert_eq!(
        field(Config {
            fsq_levels: vec![256; 4],
            ..Config::demo()
        }),
        "fsq_levels"
    );
    assert_eq!(
        field(Config {
            patch_size: 0,
            ..Config::demo()
        }),
        "patch_size"
    );
    assert_eq!(
        field(Config {
            ivar_clip: -1.0,
            ..Config::demo()
        }),
        "ivar_clip"
    );
    Config::paper().validate().unwrap();
    Config::demo().validate().unwrap();
    let p = Config::paper();
    assert_eq!(
        (
            p.d_model,
            p.encoder_layers,
            p.decoder_layers,
            p.heads,
            p.patch_size
        ),
        (512, 6, 6, 8, 32)
    );
    let e = match Tokenizer::init(
        &Config {
            heads: 3,
            ..Config::demo()
        },
        &Device::Cpu,
        DType::F32,
        0,
    ) {
        Ok(_) => panic!("heads = 3 accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("heads"), "{e}");
}

#[test]
fn flop_count_matches_a_hand_count() {
    // Demo config, B = 2, T = 3 (S = 4 with the scale token), D = 32,
    // MLP 64, P = 8, 32 encoding features, 64 offset features per patch.
    // Encoder: embed 9216 + 12288 + 24576 + 128 = 46208; per block
    // 65536 + 4096 + 32768 + 32768 = 135168; 2 blocks → 316544.
    // Decoder: embed 12288 + 24576 = 36864; per block
    // 24576 + 32768 + 3072 + 24576 + 24576 = 109568; head 3072 → 259072.
    let cfg = Config::demo();
    assert_eq!(forward_flops(&cfg, 2, 3), 575_616.0);
    assert_eq!(train_step_flops(&cfg, 2, 3), 3.0 * 575_616.0);
    // Linear in the batch size.
    assert_eq!(forward_flops(&cfg, 4, 3), 2.0 * forward_flops(&cfg, 2, 3));
    // The paper model on a full APOGEE spectrum (268 patches): about
    // 2 FLOPs per weight per token, 12·D² weights per block, 12 blocks.
    let per = forward_flops(&Config::paper(), 1, 268);
    let rough = 2.0 * 12.0 * 512.0 * 512.0 * 12.0 * 269.0;
    assert!((per / rough - 1.0).abs() < 0.15, "{per} vs {rough}");
}

#[test]
fn device_and_dtype_names() {
    assert!(device("cpu").unwrap().is_cpu());
    assert!(device(" CPU ").unwrap().is_cpu());
    assert!(device("tpu").is_err());
    assert!(device("cuda:x").is_err());
    #[cfg(not(feature = "cuda"))]
    {
        let e = device("cuda:0").unwrap_err().to_string();
        assert!(e.contains("cuda` feature"), "{e}");
        assert!(device("cuda").is_err());
    }
    assert_eq!(dtype("f32").unwrap(), DType::F32);
    assert_eq!(dtype("BF16").unwrap(), DType::BF16);
    assert!(dtype("f64x").is_err());
    assert_eq!(spectok_model::default_dtype(&Device::Cpu), DType::F32);
}
