//! `cargo xtask gpu-bench`: checks spectok on a GPU against the CPU and
//! measures it against the PyTorch reference on the same card.
//!
//! Runs inside `scripts/gpu_check.sh` (one device call). Sections:
//!
//! - **Agreement**: one checkpoint's tokens on the GPU in f32 and bf16 vs
//!   the CPU in f32 (relative RMS error; targets 1e-4 and 1e-2, the
//!   largest element error reported beside), and the mixed-precision
//!   loss vs the CPU.
//! - **Gradients**: every parameter gets a finite, non-zero gradient
//!   through the bf16 compute path into the f32 master weights.
//! - **Learning**: a few mixed-precision AdamW steps on one batch lower
//!   the loss.
//! - **Speed**: embed (encoder) and train step (forward, backward,
//!   spectok's AdamW) on the GPU in bf16 and f32, with MFU against the
//!   card's dense bf16 peak; a candle 8192³ bf16 matmul as the achieved
//!   GEMM peak; the same batch and weights through
//!   `scripts/bench_torch.py --device cuda` (eager, bf16 autocast) for the
//!   ratio.
//!
//! Built without the `cuda` feature, `--device cpu` still runs every
//! section (on the CPU), which is how the script is tested off the GPU.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use spectok_data::PrepareConfig;
use spectok_model::{encoder_flops, train_step_flops, Tokenizer};
use spectok_train::{named_vars, AdamW, OptimConfig};

use crate::bench::{mark, model_config, python_json, read_prepared, repeat_batch, write_batch};

/// Options of `cargo xtask gpu-bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Device to check and time (`cuda`, `cuda:N`; `cpu` to test the
    /// benchmark itself off the GPU).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Model size: `paper` (D 512, 6+6 layers, P 32) or `small`.
    #[arg(long, default_value = "paper")]
    model: String,
    /// Spectra per timed batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Spectra of the agreement checks (compared with the CPU).
    #[arg(long, default_value_t = 8)]
    check_batch: usize,
    /// Timed repetitions (after two warm-ups).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Survey files to batch (any layout `spectok inspect` reads).
    #[arg(long, default_value = "data/demo")]
    data: PathBuf,
    /// Timed repetitions of the PyTorch reference (its host-side input
    /// preparation makes each call slow).
    #[arg(long, default_value_t = 3)]
    torch_reps: usize,
    /// Python with torch and safetensors for the reference; `none` skips.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Dense bf16 peak of the card, TFLOP/s (H100 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
    /// Scratch directory (checkpoint, batch files).
    #[arg(long, default_value = "target/gpu-bench")]
    work: PathBuf,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the GPU check and benchmark; fails when an agreement or gradient
/// check fails (after printing every result).
pub fn run(args: Args) -> Result<()> {
    let device = spectok_model::device(&args.device).map_err(|e| anyhow!("--device: {e}"))?;
    std::fs::create_dir_all(&args.work)?;
    let cfg = model_config(&args.model)?;
    let mut out: BTreeMap<&str, Value> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    out.insert("device", json!(args.device));
    out.insert("model", json!(args.model));

    // Checkpoint (CPU, f32) and batches of real-layout spectra.
    let ckpt = args.work.join("checkpoint");
    let (cpu_model, cpu_varmap) = Tokenizer::init(&cfg, &Device::Cpu, DType::F32, 2025)?;
    cpu_model.save(&cpu_varmap, &ckpt)?;
    let prep = PrepareConfig {
        patch_size: cfg.patch_size,
        ..PrepareConfig::default()
    };
    let files = list_files(&args.data)?;
    let spectra = read_prepared(&files, &prep)?;
    if spectra.is_empty() {
        bail!("no spectrum in {} could be prepared", args.data.display());
    }
    let small = repeat_batch(&spectra, args.check_batch)?;
    let big = repeat_batch(&spectra, args.batch)?;
    eprintln!(
        "gpu-bench: {} spectra read; check batch {} × {}, timed batch {} × {} ({} real patches)",
        spectra.len(),
        small.batch_size,
        small.max_patches,
        big.batch_size,
        big.max_patches,
        big.real_patches()
    );

    // Agreement with the CPU.
    eprintln!("gpu-bench: agreement with the CPU");
    let cpu_enc = cpu_model.encode(&small, false)?;
    let cpu_loss = cpu_model.loss(&small, None, true)?.loss;
    let cpu_loss_v = cpu_loss.to_scalar::<f32>()? as f64;
    let mut agreement = serde_json::Map::new();
    for (name, dtype, tol) in [("f32", DType::F32, 1e-4), ("bf16", DType::BF16, 1e-2)] {
        let (model, _) = Tokenizer::load(&ckpt, &device, dtype)?;
        let enc = model.encode(&small, false)?;
        let (tok, tok_max) = masked_rel_err(&enc.tokens, &cpu_enc.tokens, &cpu_enc.token_mask)?;
        let (pooled, pooled_max) = rel_err(&enc.pooled, &cpu_enc.pooled)?;
        let ok = tok <= tol && pooled <= tol;
        eprintln!(
            "  {name}: relative RMS error tokens {tok:.2e}, pooled {pooled:.2e} (≤ {tol:.0e} {}); \
             largest |Δ| / largest |x|: tokens {tok_max:.2e}, pooled {pooled_max:.2e}",
            mark(ok)
        );
        if !ok {
            failures.push(format!(
                "{name} tokens differ from the CPU by {tok:.2e} (RMS)"
            ));
        }
        agreement.insert(
            name.into(),
            json!({"tokens_rel_rms": tok, "pooled_rel_rms": pooled, "tokens_rel_max": tok_max,
                   "pooled_rel_max": pooled_max, "tol": tol, "ok": ok}),
        );
    }

    // Mixed precision: f32 master weights, bf16 compute.
    let (mixed, varmap) = Tokenizer::load(&ckpt, &device, DType::F32)?;
    let mixed = mixed.with_compute_dtype(DType::BF16);
    let out_mixed = mixed.loss(&small, None, true)?;
    let loss_mixed = out_mixed.loss.to_scalar::<f32>()? as f64;
    let loss_rel = (loss_mixed - cpu_loss_v).abs() / cpu_loss_v.abs().max(1e-12);
    let grads = out_mixed.loss.backward()?;
    let mut zero = Vec::new();
    let mut n_params = 0;
    for (name, var) in named_vars(&varmap) {
        n_params += 1;
        match grads.get(var.as_tensor()) {
            Some(g) => {
                let g = g.to_dtype(DType::F32)?;
                let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
                if !(norm.is_finite() && norm > 0.0) {
                    zero.push(format!("{name} (|g|² = {norm})"));
                }
            }
            None => zero.push(format!("{name} (no gradient)")),
        }
    }
    let ok = zero.is_empty();
    eprintln!(
        "  mixed bf16: loss {loss_mixed:.5} vs CPU f32 {cpu_loss_v:.5} (rel {loss_rel:.2e}); \
         {} of {n_params} parameters with a finite non-zero gradient {}",
        n_params - zero.len(),
        mark(ok)
    );
    if !ok {
        failures.push(format!("parameters without gradient: {}", zero.join(", ")));
    }
    if loss_rel > 5e-2 {
        failures.push(format!("mixed-precision loss off by {loss_rel:.2e}"));
    }
    agreement.insert(
        "mixed_bf16".into(),
        json!({"loss": loss_mixed, "cpu_f32_loss": cpu_loss_v, "loss_rel_err": loss_rel,
               "params": n_params, "params_without_gradient": zero}),
    );
    out.insert("agreement", Value::Object(agreement));

    // Learning: mixed-precision AdamW steps on one batch.
    eprintln!("gpu-bench: mixed-precision steps on one batch");
    let mut opt = AdamW::new(
        named_vars(&varmap),
        OptimConfig {
            lr: 1e-3,
            ..OptimConfig::default()
        },
    )?;
    let mut losses = Vec::new();
    for _ in 0..30 {
        let o = mixed.loss(&small, None, true)?;
        losses.push(o.loss.to_scalar::<f32>()? as f64);
        let g = o.loss.backward()?;
        opt.step(&g, 1e-3)?;
    }
    let (first, last) = (losses[0], *losses.last().unwrap_or(&f64::NAN));
    let ok = last.is_finite() && last < 0.5 * first;
    eprintln!("  loss {first:.4} → {last:.4} in 30 steps {}", mark(ok));
    if !ok {
        failures.push(format!(
            "30 mixed-precision steps took the loss from {first} to {last}"
        ));
    }
    out.insert("learning", json!({"losses": losses, "ok": ok}));

    // Speed.
    eprintln!(
        "gpu-bench: speed ({} × {})",
        big.batch_size, big.max_patches
    );
    let batch_file = args.work.join("batch.safetensors");
    write_batch(&cpu_model, &big, &batch_file)?;
    let (b, t) = (big.batch_size, big.max_patches);
    let enc_fl = encoder_flops(&cfg, b, t);
    let train_fl = train_step_flops(&cfg, b, t);
    let peak = args.peak_tflops * 1e12;
    let gemm = gemm_rate(&device, DType::BF16, args.reps)?;
    eprintln!("  candle bf16 8192³ matmul: {:.1} TFLOP/s", gemm / 1e12);
    let mut speed = serde_json::Map::new();
    speed.insert("gemm_bf16_tflops".into(), json!(gemm / 1e12));
    speed.insert("batch".into(), json!(b));
    speed.insert("patch_slots".into(), json!(t));
    speed.insert("real_patches".into(), json!(big.real_patches()));
    speed.insert("encoder_gflop".into(), json!(enc_fl / 1e9));
    speed.insert("train_step_gflop".into(), json!(train_fl / 1e9));
    for (name, weights, compute) in [
        ("bf16", DType::F32, DType::BF16),
        ("f32", DType::F32, DType::F32),
    ] {
        // Inference runs on weights of the compute dtype (as `spectok
        // embed --dtype` loads them); training on f32 master weights.
        let (inf, _) = Tokenizer::load(&ckpt, &device, compute)?;
        let embed_s = time_mean(&device, args.reps, || {
            let enc = inf.encode(&big, false)?;
            Ok(enc.pooled)
        })?;
        let (model, varmap) = Tokenizer::load(&ckpt, &device, weights)?;
        let model = model.with_compute_dtype(compute);
        let mut opt = AdamW::new(named_vars(&varmap), OptimConfig::default())?;
        let train_s = time_mean(&device, args.reps, || {
            let o = model.loss(&big, None, true)?;
            let g = o.loss.backward()?;
            opt.step(&g, 1e-4)?;
            Ok(o.loss)
        })?;
        let row = json!({
            "embed_s": embed_s,
            "embed_spectra_per_s": b as f64 / embed_s,
            "embed_tokens_per_s": big.real_patches() as f64 / embed_s,
            "embed_tflops": enc_fl / embed_s / 1e12,
            "embed_mfu": enc_fl / embed_s / peak,
            "train_step_s": train_s,
            "train_tflops": train_fl / train_s / 1e12,
            "train_mfu": train_fl / train_s / peak,
        });
        eprintln!(
            "  spectok {name}: embed {:.1} ms ({:.0} spectra/s, {:.1} TFLOP/s, MFU {:.1} %), \
             train step {:.1} ms ({:.1} TFLOP/s, MFU {:.1} %)",
            embed_s * 1e3,
            b as f64 / embed_s,
            enc_fl / embed_s / 1e12,
            100.0 * enc_fl / embed_s / peak,
            train_s * 1e3,
            train_fl / train_s / 1e12,
            100.0 * train_fl / train_s / peak
        );
        speed.insert(format!("spectok_{name}"), row);
    }
    if args.python != "none" {
        for dtype in ["bf16", "f32"] {
            let torch_device = if device.is_cuda() {
                args.device.as_str()
            } else {
                "cpu"
            };
            let res = python_json(
                std::path::Path::new(&args.python),
                &[
                    "scripts/bench_torch.py".as_ref(),
                    ckpt.as_os_str(),
                    batch_file.as_os_str(),
                    "--reps".as_ref(),
                    args.torch_reps.to_string().as_ref(),
                    "--warmup".as_ref(),
                    "1".as_ref(),
                    "--device".as_ref(),
                    torch_device.as_ref(),
                    "--dtype".as_ref(),
                    dtype.as_ref(),
                ],
            );
            match res {
                Ok(v) => {
                    let embed_s = mean_of(&v["embed"]["seconds"])?;
                    let train_s = mean_of(&v["train"]["seconds"])?;
                    let ours = &speed[&format!("spectok_{dtype}")];
                    let embed_ratio = embed_s / ours["embed_s"].as_f64().unwrap_or(f64::NAN);
                    let train_ratio = train_s / ours["train_step_s"].as_f64().unwrap_or(f64::NAN);
                    eprintln!(
                        "  PyTorch {dtype}: embed {:.1} ms, train step {:.1} ms → spectok \
                         {embed_ratio:.2}× (embed), {train_ratio:.2}× (train); torch max rel err \
                         vs spectok CPU tokens {:.2e}",
                        embed_s * 1e3,
                        train_s * 1e3,
                        v["max_rel_err"].as_f64().unwrap_or(f64::NAN)
                    );
                    speed.insert(
                        format!("pytorch_{dtype}"),
                        json!({"embed_s": embed_s, "train_step_s": train_s,
                               "embed_ratio": embed_ratio, "train_ratio": train_ratio,
                               "max_rel_err": v["max_rel_err"], "torch": v["torch"]}),
                    );
                }
                Err(e) => {
                    eprintln!("  PyTorch {dtype}: failed: {e:#}");
                    speed.insert(
                        format!("pytorch_{dtype}"),
                        json!({"error": format!("{e:#}")}),
                    );
                }
            }
        }
    }
    out.insert("speed", Value::Object(speed));
    out.insert("failures", json!(failures));
    let text = serde_json::to_string_pretty(&out)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if !failures.is_empty() {
        bail!(
            "{} check(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

/// Files directly in `dir` and one level down, sorted.
fn list_files(dir: &std::path::Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            for e in std::fs::read_dir(&p)? {
                let q = e?.path();
                if q.extension().is_some_and(|x| x == "fits" || x == "gz") {
                    files.push(q);
                }
            }
        } else if p.extension().is_some_and(|x| x == "fits" || x == "gz") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Relative errors of `a` against `b`: `‖a − b‖₂ / ‖b‖₂` (the gate) and
/// `max |a − b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let d = (&a - &b)?;
    let scalar = |t: Tensor| -> Result<f64> { Ok(t.to_scalar::<f32>()? as f64) };
    let rms = (scalar(d.sqr()?.sum_all()?)? / scalar(b.sqr()?.sum_all()?)?.max(1e-30)).sqrt();
    let max = scalar(d.abs()?.max_all()?)? / scalar(b.abs()?.max_all()?)?.max(1e-30);
    Ok((rms, max))
}

/// [`rel_err`] over the `(B, T, D)` tokens where `mask (B, T)` is set.
fn masked_rel_err(a: &Tensor, b: &Tensor, mask: &Tensor) -> Result<(f64, f64)> {
    let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .broadcast_mul(&m)?;
    let b = b.to_dtype(DType::F32)?.broadcast_mul(&m)?;
    rel_err(&a, &b)
}

/// Mean wall time of `reps` calls of `f` after two warm-ups, the device
/// synchronised around the timed calls (each call's result is read back
/// to the host, as a real step does with its loss).
fn time_mean(device: &Device, reps: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    for _ in 0..2 {
        f()?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    }
    device.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..reps.max(1) {
        f()?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    }
    device.synchronize()?;
    Ok(t0.elapsed().as_secs_f64() / reps.max(1) as f64)
}

/// FLOP/s of an 8192³ matmul (1024³ on the CPU) in `dtype`.
fn gemm_rate(device: &Device, dtype: DType, reps: usize) -> Result<f64> {
    let n = if device.is_cuda() { 8192 } else { 1024 };
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let secs = time_mean(device, reps, || Ok(a.matmul(&b)?.narrow(0, 0, 1)?))?;
    Ok(2.0 * (n as f64).powi(3) / secs)
}

/// Mean of a JSON array of numbers.
fn mean_of(v: &Value) -> Result<f64> {
    let a = v
        .as_array()
        .ok_or_else(|| anyhow!("expected a list of seconds, got {v}"))?;
    let xs: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
    if xs.is_empty() {
        bail!("no timings in {v}");
    }
    Ok(xs.iter().sum::<f64>() / xs.len() as f64)
}
