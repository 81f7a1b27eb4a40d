//! `spectok pretrain`: self-supervised training of the tokenizer.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use spectok_train::checkpoint::TRAIN_CONFIG_FILE;
use spectok_train::{
    resolve_resume, EvalReport, Observer, Outcome, StartEvent, StepEvent, Summary, TrainConfig,
    Trainer,
};

/// Pretrain the tokenizer, self-supervised, on a mix of surveys.
///
/// Everything about the run is in a JSON config (see configs/demo.json and
/// configs/paper.json): data sources with weights and the validation
/// split, model, AdamW, warmup + cosine schedule, gradient clipping, batch
/// size or token budget, steps, eval/checkpoint/log intervals, seed,
/// device and output directory. Unknown or mistyped fields are errors
/// naming the field.
///
/// The run directory (out_dir) receives:
///   config.json            the resolved config
///   metrics.jsonl          train loss, lr, grad norm, throughput; per-survey
///                          validation loss
///   checkpoints/step-N/    the last keep_last checkpoints, and best/
///   reconstructions.json   example reconstructions of the last validation
///   plots/*.png            loss curves and reconstructions, drawn at the
///                          end (or any time with `spectok plot RUN_DIR`)
///
/// Ctrl-C finishes the current step, writes a checkpoint and exits with
/// code 130 (a second Ctrl-C exits at once); `--resume RUN_DIR` continues
/// exactly where the run stopped. A NaN or infinite loss stops the run
/// (exit code 2) naming the step and the spectra of the batch; the last
/// checkpoint written is the last good state.
///
/// Example:
///   spectok pretrain --config configs/demo.json
///   spectok pretrain --config configs/paper.json --device cuda --out runs/paper
///   spectok pretrain --resume runs/paper
///   spectok pretrain --resume runs/demo --steps 600
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The training config (JSON). Optional with --resume, which then uses
    /// the checkpoint's own config.
    #[arg(long, value_name = "FILE", required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Continue from a run directory (its newest checkpoint) or from one
    /// checkpoint directory.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Override `steps`, the total number of optimiser steps.
    #[arg(long)]
    steps: Option<u64>,
    /// Override `device`: cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Override `out_dir`, the run directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Do not draw the plots at the end.
    #[arg(long)]
    no_plots: bool,
}

/// Renders training events: a progress bar on a terminal, plain lines
/// otherwise.
struct Progress {
    bar: ProgressBar,
    terminal: bool,
    log_interval: u64,
    stop: Arc<AtomicBool>,
    told_stop: bool,
}

impl Progress {
    fn line(&self, msg: &str) {
        if self.terminal {
            self.bar.suspend(|| eprintln!("{msg}"));
        } else {
            eprintln!("{msg}");
        }
    }
}

fn eval_line(r: &EvalReport) -> String {
    let parts: Vec<String> = r
        .per_survey
        .iter()
        .map(|(s, l)| format!("{s} {:.4}", l.loss))
        .collect();
    format!(
        "step {:>7}  validation: mean {:.4}  [{}]{}",
        r.step,
        r.mean,
        parts.join(", "),
        if r.best { "  (best)" } else { "" }
    )
}

impl Observer for Progress {
    fn on_start(&mut self, ev: &StartEvent) {
        self.bar.set_length(ev.total_steps);
        self.bar.set_position(ev.start_step);
        self.bar.reset_eta();
        let sources: Vec<String> = ev
            .sources
            .iter()
            .map(|(n, u)| format!("{n} ({u} inputs)"))
            .collect();
        let val: Vec<String> = ev
            .val_spectra
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        self.line(&format!(
            "run {}: {} parameters; sources: {}; validation spectra: {}",
            ev.out_dir.display(),
            ev.parameters,
            sources.join(", "),
            if val.is_empty() {
                "none".into()
            } else {
                val.join(", ")
            }
        ));
        if let Some(r) = &ev.resumed_from {
            self.line(&format!(
                "resuming from {} at step {}",
                r.display(),
                ev.start_step
            ));
        }
    }

    fn on_step(&mut self, ev: &StepEvent) {
        self.bar.set_position(ev.step);
        self.bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.1} spectra/s  {:.0} tokens/s",
            ev.loss, ev.lr, ev.spectra_per_s, ev.tokens_per_s
        ));
        if !self.terminal
            && (ev.step.checked_rem(self.log_interval) == Some(0) || ev.step == ev.total_steps)
        {
            eprintln!(
                "step {:>7}/{}  loss {:.4}  lr {:.2e}  grad {:.3}  {:.1} spectra/s",
                ev.step, ev.total_steps, ev.loss, ev.lr, ev.grad_norm, ev.spectra_per_s
            );
        }
        if self.stop.load(Ordering::SeqCst) && !self.told_stop {
            self.told_stop = true;
            self.line(
                "interrupt: writing a checkpoint and stopping (Ctrl-C again to quit at once)",
            );
        }
    }

    fn on_eval_start(&mut self, step: u64) {
        if self.terminal {
            self.bar.set_message(format!("validating at step {step}…"));
        }
    }

    fn on_eval(&mut self, r: &EvalReport) {
        self.line(&eval_line(r));
    }

    fn on_checkpoint(&mut self, step: u64, path: &Path) {
        if !self.terminal || self.stop.load(Ordering::SeqCst) {
            self.line(&format!("step {step:>7}  checkpoint {}", path.display()));
        }
    }

    fn on_note(&mut self, message: &str) {
        self.line(&format!("note: {message}"));
    }
}

fn progress_bar(terminal: bool) -> ProgressBar {
    if !terminal {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "pretrain [{elapsed_precise}] {wide_bar} {pos}/{len} steps (ETA {eta})\n  {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

/// The config of the run: `--config`, else the checkpoint's, plus the
/// command-line overrides.
fn resolve_config(args: &Args) -> Result<TrainConfig> {
    let mut cfg = match (&args.config, &args.resume) {
        (Some(path), _) => TrainConfig::from_file(path)?,
        (None, Some(resume)) => {
            let ckpt = resolve_resume(resume)?;
            TrainConfig::from_file(&ckpt.join(TRAIN_CONFIG_FILE))?
        }
        (None, None) => bail!("give --config FILE (or --resume DIR)"),
    };
    if let Some(s) = args.steps {
        cfg.steps = s;
    }
    if let Some(d) = &args.device {
        cfg.device = d.clone();
    }
    if let Some(o) = &args.out {
        cfg.out_dir = o.clone();
    }
    cfg.validate().context("after the command-line overrides")?;
    Ok(cfg)
}

fn print_summary(s: &Summary) {
    println!("run directory: {}", s.out_dir.display());
    match s.outcome {
        Outcome::Finished => println!("finished after {} steps", s.step),
        Outcome::Interrupted => println!("interrupted after {} steps", s.step),
    }
    let evals = match (&s.first_eval, &s.last_eval) {
        (Some(f), Some(l)) if l.step > f.step => Some((f, l)),
        _ => None,
    };
    if let Some((first, last)) = evals {
        println!(
            "{:<12} {:>14} {:>14} {:>10}",
            "survey",
            format!("val@{}", first.step),
            format!("val@{}", last.step),
            "ratio"
        );
        for (survey, l) in &last.per_survey {
            let before = first.per_survey.get(survey).map(|f| f.loss);
            println!(
                "{:<12} {:>14} {:>14.5} {:>10}",
                survey,
                before
                    .map(|b| format!("{b:.5}"))
                    .unwrap_or_else(|| "-".into()),
                l.loss,
                before
                    .filter(|_| l.loss > 0.0)
                    .map(|b| format!("{:.1}×", b / l.loss))
                    .unwrap_or_else(|| "-".into())
            );
        }
        println!(
            "{:<12} {:>14.5} {:>14.5} {:>10}",
            "mean",
            first.mean,
            last.mean,
            if last.mean > 0.0 {
                format!("{:.1}×", first.mean / last.mean)
            } else {
                "-".into()
            }
        );
    }
    if let Some((step, loss)) = s.best {
        println!("best validation: {loss:.5} at step {step}");
    }
    if let Some(c) = &s.last_checkpoint {
        println!("last checkpoint: {}", c.display());
    }
    let rejected: u64 = s
        .loader
        .rejected
        .iter()
        .filter(|(k, _)| *k != "other-split")
        .map(|(_, v)| v)
        .sum();
    if rejected > 0 || s.loader.read_errors > 0 {
        println!(
            "data: {} spectra trained on, {} rejected, {} read errors",
            s.loader.spectra, rejected, s.loader.read_errors
        );
    }
}

/// Keeps freed memory in the process instead of returning it to the
/// system after every tensor: a training step allocates and frees the same
/// large buffers (attention matrices of tens of MB) over and over, and with
/// glibc's defaults each one is a fresh `mmap` whose pages fault in again —
/// measured at a third of CPU time on the demo run.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator tuning parameters; it is
    // called before the training threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

pub fn run(args: Args) -> Result<ExitCode> {
    let cfg = resolve_config(&args)?;
    keep_freed_memory();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        let presses = AtomicUsize::new(0);
        ctrlc::set_handler(move || {
            if presses.fetch_add(1, Ordering::SeqCst) > 0 {
                eprintln!("\ninterrupted again: exiting without a checkpoint");
                std::process::exit(130);
            }
            stop.store(true, Ordering::SeqCst);
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let terminal = std::io::stderr().is_terminal();
    let mut progress = Progress {
        bar: progress_bar(terminal),
        terminal,
        log_interval: cfg.log_interval,
        stop: Arc::clone(&stop),
        told_stop: false,
    };
    let out_dir = cfg.out_dir.clone();
    let mut trainer = Trainer::new(cfg, args.resume.as_deref())?;
    let result = trainer.run(&mut progress, &stop);
    progress.bar.finish_and_clear();
    let summary = result?;
    print_summary(&summary);
    if !args.no_plots {
        match crate::plot::render(&out_dir, &out_dir.join("plots")) {
            Ok(files) => {
                for f in files {
                    println!("plot: {}", f.display());
                }
            }
            Err(e) => eprintln!("warning: plots not drawn: {}", crate::one_line(&e)),
        }
    }
    Ok(match summary.outcome {
        Outcome::Finished => ExitCode::SUCCESS,
        Outcome::Interrupted => {
            println!(
                "resume with: spectok pretrain --resume {}",
                out_dir.display()
            );
            ExitCode::from(130)
        }
    })
}
