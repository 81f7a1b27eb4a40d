//! `spectok predict`: apply a trained head to survey files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use spectok_train::embed::EmbedOptions;
use spectok_train::finetune::predict::write_predictions_from;
use spectok_train::finetune::{
    cached_embeddings, cached_hidden_states, check_unfreeze, load_head, load_samples,
    predict_samples,
};

use crate::embed::{load_model, set_threads, Progress};

/// Predict redshifts, classes or stellar parameters with a trained head.
///
/// The inputs are embedded with the tokenizer the head was trained on
/// (--checkpoint, default: the checkpoint recorded in HEAD_DIR/head.json;
/// its SHA-256 must match the one recorded), the head is applied, and one
/// row per spectrum is written:
///   redshift   object_id, survey, source, z, z_err
///   class      object_id, survey, source, class, p_<class> per class
///   stellar    object_id, survey, source, one column per parameter
/// OUTPUT is CSV (.csv), JSON (.json, an array of objects) or HDF5
/// (.h5 or .hdf5: one dataset per column, the class probabilities as an
/// N x C matrix `probabilities` with the names in `classes`, and the task,
/// head directory and checkpoint as file attributes). The frozen
/// encoder's outputs are cached in --cache (default: a directory
/// embeddings-cache beside OUTPUT), so a second head on the same inputs
/// does not embed them again. A head trained with --unfreeze-last K runs
/// the frozen encoder up to block N−K (those hidden states are cached
/// instead), then its own fine-tuned blocks, then the head.
///
/// Example:
///   spectok predict data/demo --head heads/redshift -o redshifts.csv
///   spectok predict 'desi/*.fits' --head heads/class --checkpoint runs/paper -o classes.json
///   spectok predict data/demo --head heads/stellar -o stellar.h5
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Files, directories (walked recursively) or glob patterns.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// The head directory written by `spectok finetune`.
    #[arg(long, value_name = "HEAD_DIR")]
    head: PathBuf,
    /// The tokenizer (default: the checkpoint recorded in head.json).
    #[arg(long, value_name = "RUN_DIR")]
    checkpoint: Option<PathBuf>,
    /// The predictions file (.csv, .json, .h5 or .hdf5).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Where the frozen encoder's outputs are cached.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute threads (rayon and candle; default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    set_threads(args.threads)?;
    let ext = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !["csv", "json", "h5", "hdf5"].contains(&ext.as_str()) {
        bail!(
            "{}: unsupported predictions format; use a .csv, .json or .h5 file name",
            args.output.display()
        );
    }
    let device = spectok_model::device(&args.device)?;
    let head = load_head(&args.head, &device)
        .with_context(|| format!("cannot load the head {}", args.head.display()))?;
    let ckpt = args
        .checkpoint
        .clone()
        .unwrap_or_else(|| PathBuf::from(&head.meta.checkpoint));
    let m = load_model(&ckpt, &args.device, None)?;
    if m.sha256 != head.meta.checkpoint_sha256 {
        bail!(
            "the head {} was trained on the tokenizer with sha256 {}, but {} has sha256 {}",
            args.head.display(),
            head.meta.checkpoint_sha256,
            m.checkpoint.display(),
            m.sha256
        );
    }
    let cache_dir = args.cache.clone().unwrap_or_else(|| {
        args.output
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default()
            .join("embeddings-cache")
    });
    let k = head.meta.unfreeze_last;
    let n_blocks = m.model.config().encoder_layers;
    check_unfreeze(k, n_blocks)?;
    let mut progress = Progress::new("embed");
    let cached = if k > 0 {
        cached_hidden_states(
            &m,
            &args.inputs,
            &cache_dir,
            n_blocks - k,
            &EmbedOptions::default(),
            &mut progress,
        )
    } else {
        cached_embeddings(
            &m,
            &args.inputs,
            &cache_dir,
            &EmbedOptions::default(),
            &mut progress,
        )
    };
    progress.finish();
    let (path, _) = cached?;
    let (samples, dim, _) = load_samples(&path, head.meta.max_tokens)?;
    if dim != head.meta.dim {
        bail!(
            "embedding width {dim} differs from the head's {}",
            head.meta.dim
        );
    }
    let preds = predict_samples(&head, &samples)?;
    write_predictions_from(
        &args.output,
        &args.head,
        &m.checkpoint,
        &head.meta,
        &samples,
        &preds,
    )?;
    eprintln!(
        "{} predictions ({}) -> {}",
        preds.len(),
        head.meta.task.name(),
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
