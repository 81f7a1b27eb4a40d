//! `spectok embed`: tokens and embeddings for any survey file.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use spectok_io::embeddings::{Failure, ShardPart};
use spectok_io::Format;
use spectok_train::embed::{
    embed, EmbedModel, EmbedObserver, EmbedOptions, EmbedProgress, EmbedStart, EmbedSummary,
};

/// Embed survey spectra with a trained tokenizer into an HDF5 file.
///
/// INPUTS are anything the readers accept, detected by content: survey
/// files (SDSS/BOSS, DESI, APOGEE, GALAH, LAMOST, Gaia XP, MaNGA),
/// directories (walked recursively), glob patterns, spectok shards and
/// Multimodal Universe HDF5 files. Spectra are prepared exactly as in the
/// checkpoint's training run, read on background threads, grouped by
/// length and encoded in batches.
///
/// The output (HDF5, readable with h5py) holds per spectrum: object_id,
/// survey, source_file/source_hdu/source_row, the pooled embedding (N × D),
/// the flux scale and the labels carried from the input; with --tokens
/// also the token sequences (tokens, concatenated, with token_offsets and
/// each patch's centre wavelength token_center). Attributes record the
/// checkpoint's SHA-256 and the model and preparation configs. Spectra and
/// inputs that could not be embedded are listed with their reason in the
/// group failed/ and in the summary. The layout is documented in the
/// README ("Embeddings file").
///
/// The file is written under OUTPUT.tmp and renamed when complete; an
/// existing OUTPUT is not replaced without --force. Exit code 0: all
/// embedded; 1: written, but some spectra or inputs failed; 2: error.
///
/// --shard i/n embeds part i (0-based) of n: the spectra of the inputs
/// are split into n contiguous parts of equal size, so n processes (e.g. a
/// Slurm job array) embed disjoint parts; `spectok merge` joins them into
/// the file a single run writes.
///
/// Example:
///   spectok embed data/demo --checkpoint runs/demo -o demo-embeddings.h5
///   spectok embed 'data/desi/*.fits' --checkpoint runs/paper --tokens --device cuda -o desi.h5
///   spectok embed data/ --checkpoint runs/paper --shard $SLURM_ARRAY_TASK_ID/16 \
///       -o part-$SLURM_ARRAY_TASK_ID.h5     # one task of a 16-task job array
///   spectok merge part-*.h5 -o embeddings.h5
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Files, directories (walked recursively) or glob patterns.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// The run directory (its best checkpoint, else its newest) or one
    /// checkpoint directory.
    #[arg(long, value_name = "RUN_DIR")]
    checkpoint: PathBuf,
    /// The HDF5 file to write.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Also store each spectrum's token sequence.
    #[arg(long)]
    tokens: bool,
    /// Spectra per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Also limit each batch to this many patch slots (spectra × longest),
    /// so long spectra come in smaller batches and attention memory stays
    /// bounded (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 8192)]
    max_tokens: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weight dtype: f32, bf16 or f16 (default: f32 on CPU, bf16 on GPU).
    #[arg(long)]
    dtype: Option<String>,
    /// Compute threads (rayon and candle; default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Background threads reading and preparing spectra.
    #[arg(long, default_value_t = 2, value_name = "N")]
    readers: usize,
    /// Embed only part i of n (0-based), e.g. 3/16.
    #[arg(long, value_name = "I/N")]
    shard: Option<ShardPart>,
    /// Read every input as this format instead of detecting it.
    #[arg(long, value_parser = crate::parse_format)]
    format: Option<Format>,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    force: bool,
}

/// Failures printed as they happen; the rest are counted (all are in the
/// output file).
const SHOWN_FAILURES: usize = 20;

/// Sets the compute threads of rayon's global pool and of candle's CPU
/// kernels (both read `RAYON_NUM_THREADS`); must run before either starts.
pub fn set_threads(n: Option<usize>) -> Result<()> {
    if let Some(n) = n {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        // Called at the start of the command, before any thread exists.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    Ok(())
}

/// Loads the model of `--checkpoint` on `--device`.
pub fn load_model(checkpoint: &Path, device: &str, dtype: Option<&str>) -> Result<EmbedModel> {
    let dev = spectok_model::device(device)?;
    let dtype = dtype.map(spectok_model::dtype).transpose()?;
    let m = EmbedModel::load(checkpoint, &dev, dtype)
        .with_context(|| format!("cannot load the model of {}", checkpoint.display()))?;
    eprintln!(
        "model {} (sha256 {}…, width {}), preparation from {}",
        m.checkpoint.display(),
        m.sha256.get(..12).unwrap_or(&m.sha256),
        m.dim(),
        m.prepare_source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults (no training config found)".into())
    );
    Ok(m)
}

/// Renders a run: a bar with count and spectra/s on a terminal, plain
/// lines otherwise; failures one line each.
pub struct Progress {
    bar: ProgressBar,
    terminal: bool,
    what: &'static str,
    shown: usize,
}

impl Progress {
    /// A renderer for `what` ("embed", "reconstruct").
    pub fn new(what: &'static str) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let bar = if terminal {
            let bar = crate::progress::spectra_bar(0, what);
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            terminal,
            what,
            shown: 0,
        }
    }

    fn line(&self, msg: &str) {
        if self.terminal {
            self.bar.suspend(|| eprintln!("{msg}"));
        } else {
            eprintln!("{msg}");
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl EmbedObserver for Progress {
    fn on_start(&mut self, ev: &EmbedStart) {
        match ev.expected {
            Some(n) => self.bar.set_length(n),
            None => {
                self.bar.set_length(0);
                if self.terminal {
                    let style = ProgressStyle::with_template(
                        "{prefix} [{elapsed_precise}] {spinner} {pos} spectra ({per_sec})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                    self.bar.set_style(style);
                }
            }
        }
        let part = if ev.part.is_whole() {
            String::new()
        } else {
            format!(" (part {} of the inputs)", ev.part)
        };
        self.line(&format!(
            "{}: {} input unit(s){part}{}{}",
            self.what,
            ev.units,
            ev.expected
                .map(|n| format!(", {n} spectra expected"))
                .unwrap_or_default(),
            if ev.input_problems > 0 {
                format!(", {} unreadable input(s)", ev.input_problems)
            } else {
                String::new()
            }
        ));
    }

    fn on_progress(&mut self, ev: &EmbedProgress) {
        let done = ev.done + ev.failed;
        if self.bar.length().is_some_and(|l| l > 0 && done > l) {
            self.bar.set_length(done);
        }
        self.bar.set_position(done);
    }

    fn on_failure(&mut self, f: &Failure) {
        self.shown += 1;
        if self.shown <= SHOWN_FAILURES {
            self.line(&format!("failed: {f}"));
        } else if self.shown == SHOWN_FAILURES + 1 {
            self.line("failed: … (further failures are counted in the summary)");
        }
    }
}

/// Prints the summary of a run; returns the exit code.
pub fn report(s: &EmbedSummary, what: &str) -> ExitCode {
    let stages: Vec<String> = s
        .failed_by_stage
        .iter()
        .map(|(k, v)| format!("{} {v}", k.name()))
        .collect();
    eprintln!(
        "{what}: {} spectra{} in {:.1} s ({:.1} spectra/s), {} failed{} -> {}",
        s.done,
        if s.tokens > 0 {
            format!(" ({} tokens)", s.tokens)
        } else {
            String::new()
        },
        s.elapsed_s,
        s.spectra_per_s,
        s.failed,
        if stages.is_empty() {
            String::new()
        } else {
            format!(" ({})", stages.join(", "))
        },
        s.output.display()
    );
    if s.failed > 0 {
        eprintln!(
            "failures (all {} listed in {} under failed/):",
            s.failed,
            s.output.display()
        );
        for f in &s.failures {
            eprintln!("  {f}");
        }
        if s.failures.len() < s.failed {
            eprintln!("  … and {} more", s.failed - s.failures.len());
        }
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Adds a hint to an "already exists" error.
pub fn hint_force(e: spectok_train::Error) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("already exists") {
        anyhow::anyhow!("{text}; pass --force to replace it")
    } else {
        anyhow::Error::new(e)
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    set_threads(args.threads)?;
    let m = load_model(&args.checkpoint, &args.device, args.dtype.as_deref())?;
    let opts = EmbedOptions {
        format: args.format,
        batch_size: args.batch_size,
        max_tokens: (args.max_tokens > 0).then_some(args.max_tokens),
        readers: args.readers,
        tokens: args.tokens,
        part: args.shard.unwrap_or(ShardPart::WHOLE),
        overwrite: args.force,
        ..EmbedOptions::default()
    };
    let mut progress = Progress::new("embed");
    let result = embed(&m, &args.inputs, &args.output, &opts, &mut progress);
    progress.finish();
    let summary = result.map_err(hint_force)?;
    Ok(report(&summary, "embedded"))
}
