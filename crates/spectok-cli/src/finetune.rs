//! `spectok finetune`: light heads on the frozen tokenizer.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use plotters::prelude::*;
use spectok_train::embed::EmbedOptions;
use spectok_train::finetune::{
    cached_embeddings, cached_hidden_states, check_unfreeze, finetune, load_samples,
    read_labels_csv, FinetuneConfig, HeadKind, Report, Task, TaskMetrics,
};

use crate::embed::{load_model, set_threads, Progress};

/// Train a light head on the frozen tokenizer and score it.
///
/// TASK is one of:
///   redshift   regress z (log(1+z) with an uncertainty); scored by
///              σ_NMAD = 1.4826·median(|Δz|/(1+z)), bias and the outlier
///              fractions |Δz|/(1+z) > 0.05 and > 0.15
///   class      object class (GALAXY / QSO / STAR by default, or the
///              config's "classes"; [] = every class in the data); scored
///              by accuracy per class, mean and confusion matrix
///   stellar    Teff, log g, [Fe/H] (and [α/M] when most spectra carry it);
///              scored by median absolute deviation and bias per parameter
///
/// Labels come from the inputs (survey catalog columns the readers carry,
/// mock labels) or from --labels FILE.csv (columns object_id and any of z,
/// class, teff, logg, fe_h, alpha_m), which then replaces them. Spectra
/// without a usable label (missing, redshift warning set, class outside
/// the label set) are left out and counted.
///
/// The frozen encoder embeds the inputs once (with tokens) into a cache
/// file shared by all tasks (--cache, default OUT/../embeddings-cache);
/// objects are split by a hash of their id into train/val/test; the head
/// (attentive pooling + MLP, or --head linear: the paper's linear probe on
/// the pooled embedding) trains with AdamW and stops early on the
/// validation loss. On the same test split the baselines run: ridge and
/// k-NN on the pooled embedding, and ridge and k-NN on a PCA of the
/// median-normalised flux of the most common survey.
///
/// --unfreeze-last K (the config's "unfreeze_last", default 0) fine-tunes
/// the last K of the tokenizer's N encoder blocks and its final norm with
/// the head, starting from the checkpoint's weights, at the learning rate
/// lr × "unfreeze_lr_ratio" (default 0.1). The frozen encoder then runs
/// once up to block N−K and its hidden states are cached instead of the
/// final tokens (a cache file of their own, hidden-bN−K-KEY.h5); each
/// batch re-encodes them with the tuned blocks, and the head (attentive,
/// or linear on the pooled re-encoded tokens) reads the result. K above N
/// is an error.
///
/// OUT (the head directory) receives head.safetensors (with K > 0 also the
/// tuned blocks), head.json (task, labels, standardisation, head config,
/// K, tokenizer checkpoint and its SHA-256), metrics.json (the results
/// table), test_predictions.csv and the plots pred_vs_true.png (redshift,
/// stellar) or confusion.png (class). `spectok predict` applies it.
///
/// Example:
///   spectok finetune redshift data/demo --checkpoint runs/demo -o heads/redshift
///   spectok finetune class data/demo --checkpoint runs/demo --config configs/finetune-class.json -o heads/class
///   spectok finetune stellar apogee/ --checkpoint runs/paper --labels apogee-labels.csv --head linear -o heads/stellar
///   spectok finetune redshift data/demo --checkpoint runs/demo --unfreeze-last 2 -o heads/redshift-tuned
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// redshift, class or stellar.
    #[arg(value_parser = parse_task)]
    task: Task,
    /// Files, directories (walked recursively) or glob patterns.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// The tokenizer: a run directory (its best checkpoint, else its
    /// newest) or one checkpoint directory.
    #[arg(long, value_name = "RUN_DIR")]
    checkpoint: PathBuf,
    /// The head directory to write.
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
    /// A finetuning config (JSON, e.g. configs/finetune-redshift.json);
    /// its task is replaced by TASK.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Labels keyed by object id (CSV), replacing the inputs' labels.
    #[arg(long, value_name = "FILE.csv")]
    labels: Option<PathBuf>,
    /// Override the head: attentive or linear.
    #[arg(long, value_parser = parse_head)]
    head: Option<HeadKind>,
    /// Override the largest number of epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Fine-tune the last K encoder blocks (and the final norm) with the
    /// head, overriding the config's unfreeze_last (0: frozen encoder).
    #[arg(long, value_name = "K")]
    unfreeze_last: Option<usize>,
    /// Where the frozen encoder's outputs are cached (default:
    /// OUT/../embeddings-cache).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Use this embeddings file (written by `spectok embed --tokens`, or a
    /// cache file) instead of embedding the inputs; it must come from the
    /// same checkpoint. The inputs are then read only for the flux baseline.
    /// Not with --unfreeze-last (which needs the hidden states).
    #[arg(long, value_name = "FILE.h5")]
    embeddings: Option<PathBuf>,
    /// Skip the baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Do not draw the plots.
    #[arg(long)]
    no_plots: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute threads (rayon and candle; default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Spectra per embedding batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

fn parse_task(s: &str) -> Result<Task, String> {
    Task::from_name(s)
        .ok_or_else(|| format!("unknown task {s:?}; one of: redshift, class, stellar"))
}

fn parse_head(s: &str) -> Result<HeadKind, String> {
    match s {
        "attentive" => Ok(HeadKind::Attentive),
        "linear" => Ok(HeadKind::Linear),
        _ => Err(format!("unknown head {s:?}; one of: attentive, linear")),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    set_threads(args.threads)?;
    let mut cfg = match &args.config {
        Some(p) => FinetuneConfig::from_file(p)?,
        None => FinetuneConfig::default(),
    };
    cfg.task = args.task;
    if let Some(h) = args.head {
        cfg.head.kind = h;
    }
    if let Some(e) = args.epochs {
        cfg.epochs = e;
    }
    if let Some(k) = args.unfreeze_last {
        cfg.unfreeze_last = k;
    }
    if args.no_baselines {
        cfg.baselines = false;
    }
    cfg.validate()?;
    let m = load_model(&args.checkpoint, &args.device, None)?;
    let n_blocks = m.model.config().encoder_layers;
    check_unfreeze(cfg.unfreeze_last, n_blocks)?;
    let cache_dir = args.cache.clone().unwrap_or_else(|| {
        args.out
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
            .join("embeddings-cache")
    });
    let opts = EmbedOptions {
        batch_size: args.batch_size,
        ..EmbedOptions::default()
    };
    let path = match &args.embeddings {
        Some(_) if cfg.unfreeze_last > 0 => bail!(
            "--embeddings holds final tokens, but unfreeze_last {} needs the hidden states after encoder block {}: leave --embeddings out to compute and cache them from the inputs",
            cfg.unfreeze_last,
            n_blocks - cfg.unfreeze_last
        ),
        Some(p) => {
            eprintln!("frozen encoder outputs read from {}", p.display());
            p.clone()
        }
        None if cfg.unfreeze_last > 0 => {
            let upto = n_blocks - cfg.unfreeze_last;
            let mut progress = Progress::new("embed");
            let cached = cached_hidden_states(
                &m,
                &args.inputs,
                &cache_dir,
                upto,
                &opts,
                &mut progress,
            );
            progress.finish();
            let (path, reused) = cached?;
            eprintln!(
                "frozen encoder states after block {upto} of {n_blocks} {} {}",
                if reused { "reused from" } else { "cached in" },
                path.display()
            );
            path
        }
        None => {
            let mut progress = Progress::new("embed");
            let cached = cached_embeddings(&m, &args.inputs, &cache_dir, &opts, &mut progress);
            progress.finish();
            let (path, reused) = cached?;
            eprintln!(
                "frozen encoder outputs {} {}",
                if reused { "reused from" } else { "cached in" },
                path.display()
            );
            path
        }
    };
    let (mut samples, dim, sha) = load_samples(&path, cfg.max_tokens)?;
    if sha != m.sha256 {
        bail!(
            "{} was embedded by the tokenizer with sha256 {sha}, not by {} (sha256 {})",
            path.display(),
            m.checkpoint.display(),
            m.sha256
        );
    }
    if let Some(l) = &args.labels {
        let table = read_labels_csv(l)?;
        let mut found = 0;
        for s in &mut samples {
            s.labels = match table.get(s.object_id.trim()) {
                Some(lab) => {
                    found += 1;
                    lab.clone()
                }
                None => Default::default(),
            };
        }
        eprintln!(
            "labels from {}: {found} of {} spectra",
            l.display(),
            samples.len()
        );
    }
    eprintln!("{} spectra embedded (width {dim})", samples.len());
    let device = spectok_model::device(&args.device)?;
    let outcome = finetune(
        &cfg,
        &samples,
        dim,
        &m.checkpoint.display().to_string(),
        &m.sha256,
        &args.inputs,
        &args.out,
        &device,
        &mut |line| eprintln!("{line}"),
    )?;
    print_table(&outcome.report);
    if !args.no_plots {
        let plots = draw(&args.out, &outcome)?;
        for p in plots {
            eprintln!("plot {}", p.display());
        }
    }
    eprintln!("head written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// Prints the results table of a report.
pub fn print_table(r: &Report) {
    println!(
        "task {}: train {} / val {} / test {} spectra; best epoch {} of {}",
        r.task.name(),
        r.counts.get("train").copied().unwrap_or(0),
        r.counts.get("val").copied().unwrap_or(0),
        r.counts.get("test").copied().unwrap_or(0),
        r.best_epoch,
        r.epochs_run
    );
    for (why, n) in &r.excluded {
        println!("  excluded: {n} ({why})");
    }
    let w = r
        .results
        .iter()
        .map(|s| s.model.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let sw = r
        .results
        .iter()
        .map(|s| s.subset.len())
        .max()
        .unwrap_or(6)
        .max(6);
    match r.results.first().map(|s| &s.metrics) {
        Some(TaskMetrics::Redshift(_)) => println!(
            "{:w$}  {:sw$}  {:>6}  {:>9}  {:>9}  {:>8}  {:>8}",
            "model", "subset", "n", "σ_NMAD", "bias", ">0.05", ">0.15"
        ),
        Some(TaskMetrics::Class(c)) => {
            let mut h = format!(
                "{:w$}  {:sw$}  {:>6}  {:>8}  {:>8}",
                "model", "subset", "n", "acc", "mean"
            );
            for c in &c.classes {
                h.push_str(&format!("  {c:>8}"));
            }
            println!("{h}");
        }
        Some(TaskMetrics::Stellar(p)) => {
            let mut h = format!("{:w$}  {:sw$}  {:>6}", "model", "subset", "n");
            for k in p.keys() {
                h.push_str(&format!("  {:>10}  {:>10}", format!("MAD {k}"), "bias"));
            }
            println!("{h}");
        }
        None => {}
    }
    for s in &r.results {
        match &s.metrics {
            TaskMetrics::Redshift(m) => println!(
                "{:w$}  {:sw$}  {:>6}  {:>9.5}  {:>9.5}  {:>7.2}%  {:>7.2}%",
                s.model,
                s.subset,
                m.n,
                m.sigma_nmad,
                m.bias,
                100.0 * m.outliers_005,
                100.0 * m.outliers_015
            ),
            TaskMetrics::Class(m) => {
                let mut line = format!(
                    "{:w$}  {:sw$}  {:>6}  {:>7.2}%  {:>7.2}%",
                    s.model,
                    s.subset,
                    m.n,
                    100.0 * m.accuracy,
                    100.0 * m.mean_class_accuracy
                );
                for c in &m.classes {
                    let a = m.per_class.get(c).copied().unwrap_or(f64::NAN);
                    line.push_str(&format!("  {:>7.2}%", 100.0 * a));
                }
                println!("{line}");
            }
            TaskMetrics::Stellar(p) => {
                let n = p.values().map(|x| x.n).max().unwrap_or(0);
                let mut line = format!("{:w$}  {:sw$}  {:>6}", s.model, s.subset, n);
                for v in p.values() {
                    line.push_str(&format!("  {:>10.4}  {:>10.4}", v.mad, v.bias));
                }
                println!("{line}");
            }
        }
    }
}

/// Draws the plots of a finished run into `out`.
fn draw(out: &Path, o: &spectok_train::finetune::FinetuneOutcome) -> Result<Vec<PathBuf>> {
    let text = crate::plot::fonts_available();
    if !text {
        eprintln!(
            "warning: no TTF font found (install fonts-dejavu-core or set SPECTOK_FONT): plots are drawn without text"
        );
    }
    let meta = &o.head.meta;
    match meta.task {
        Task::Class => {
            let Some(TaskMetrics::Class(c)) = o.report.results.first().map(|s| &s.metrics) else {
                bail!("no class scores to draw");
            };
            let path = out.join("confusion.png");
            draw_confusion(&c.confusion, &c.classes, &path, text)?;
            Ok(vec![path])
        }
        Task::Redshift | Task::Stellar => {
            let path = out.join("pred_vs_true.png");
            let panels: Vec<(String, Vec<(f64, f64)>)> = meta
                .names
                .iter()
                .enumerate()
                .map(|(k, n)| {
                    let pts = o
                        .test
                        .iter()
                        .filter_map(|(t, p)| Some((*t.get(k)?, *p.values.get(k)?)))
                        .filter(|(a, b)| a.is_finite() && b.is_finite())
                        .collect();
                    (n.clone(), pts)
                })
                .collect();
            draw_scatter(&panels, meta.task == Task::Redshift, &path, text)?;
            Ok(vec![path])
        }
    }
}

/// Predicted against true, one panel per target; for redshift also the
/// outlier limits |Δz| = 0.05 (1+z) and 0.15 (1+z).
fn draw_scatter(
    panels: &[(String, Vec<(f64, f64)>)],
    redshift: bool,
    path: &Path,
    text: bool,
) -> Result<()> {
    let n = panels.len().max(1);
    let root = BitMapBackend::new(path, (520 * n as u32, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, n));
    for ((name, pts), area) in panels.iter().zip(areas.iter()) {
        let lo = pts
            .iter()
            .flat_map(|p| [p.0, p.1])
            .fold(f64::INFINITY, f64::min);
        let hi = pts
            .iter()
            .flat_map(|p| [p.0, p.1])
            .fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() && hi > lo {
            let pad = 0.03 * (hi - lo);
            (lo - pad, hi + pad)
        } else {
            (0.0, 1.0)
        };
        let mut b = ChartBuilder::on(area);
        b.margin(15);
        if text {
            b.caption(format!("{name}: predicted vs true"), ("sans-serif", 22))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = b.build_cartesian_2d(lo..hi, lo..hi)?;
        let mut mesh = chart.configure_mesh();
        mesh.light_line_style(TRANSPARENT)
            .x_labels(6)
            .y_labels(6)
            .x_label_formatter(&axis_label)
            .y_label_formatter(&axis_label);
        if text {
            mesh.x_desc(format!("true {name}"))
                .y_desc(format!("predicted {name}"))
                .label_style(("sans-serif", 14));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        chart.draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.stroke_width(1)))?;
        if redshift {
            for (f, c) in [(0.05, RGBColor(230, 120, 0)), (0.15, RGBColor(200, 0, 0))] {
                for sgn in [-1.0, 1.0] {
                    let line = [lo, hi].map(|z| (z, z + sgn * f * (1.0 + z)));
                    chart.draw_series(LineSeries::new(line, c.stroke_width(1)))?;
                }
            }
        }
        let blue = RGBColor(31, 119, 180);
        chart.draw_series(
            pts.iter()
                .map(|p| Circle::new(*p, 2, blue.mix(0.5).filled())),
        )?;
    }
    root.present()?;
    Ok(())
}

/// A tick label: no decimals for large values, three significant digits
/// otherwise.
fn axis_label(v: &f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// The confusion matrix as coloured cells (row-normalised), with counts
/// when text can be drawn.
fn draw_confusion(m: &[Vec<u64>], classes: &[String], path: &Path, text: bool) -> Result<()> {
    let k = classes.len().max(1);
    let root = BitMapBackend::new(path, (700, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut b = ChartBuilder::on(&root);
    b.margin(20);
    if text {
        b.caption(
            "Confusion matrix (rows: true, columns: predicted)",
            ("sans-serif", 22),
        )
        .x_label_area_size(50)
        .y_label_area_size(90);
    }
    let mut chart = b.build_cartesian_2d(0.0..k as f64, 0.0..k as f64)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_mesh();
    if text {
        let names = classes.to_vec();
        let names2 = classes.to_vec();
        mesh.x_labels(k * 2 + 1)
            .y_labels(k * 2 + 1)
            .x_label_formatter(&move |x| label_at(&names, *x))
            .y_label_formatter(&move |y| {
                let row = k as f64 - 1.0 - y.floor();
                label_at(&names2, row + (y - y.floor()))
            })
            .label_style(("sans-serif", 16))
            .draw()?;
    } else {
        mesh.x_labels(0).y_labels(0).draw()?;
    }
    for (t, row) in m.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (p, count) in row.iter().enumerate() {
            let f = if total > 0 {
                *count as f64 / total as f64
            } else {
                0.0
            };
            let shade = (255.0 * (1.0 - f)) as u8;
            let y0 = (k - 1 - t) as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(p as f64, y0), (p as f64 + 1.0, y0 + 1.0)],
                RGBColor(shade, shade, 255).filled(),
            )))?;
            if text {
                let color = if f > 0.5 { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(Text::new(
                    format!("{count}"),
                    (p as f64 + 0.42, y0 + 0.55),
                    ("sans-serif", 20).into_font().color(&color),
                )))?;
            }
        }
    }
    root.present()?;
    Ok(())
}

/// The class name of a cell centre `x` (…, i + 0.5, …), empty elsewhere.
fn label_at(names: &[String], x: f64) -> String {
    let f = x - x.floor();
    if (f - 0.5).abs() < 0.1 && x >= 0.0 {
        names.get(x.floor() as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}
