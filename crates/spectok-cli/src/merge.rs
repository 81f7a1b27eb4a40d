//! `spectok merge`: joins the parts of a sharded `spectok embed` run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use spectok_io::embeddings::merge;

/// Join the outputs of `spectok embed --shard i/n` runs into one file.
///
/// Every part 0..n of one run must be given exactly once (in any order);
/// parts of different runs (another checkpoint, config or input list) are
/// refused, naming the file and the attribute that differs. The result is
/// the file a single run over the same inputs writes: rows in input order,
/// failures of all parts, the attributes of the run. It is written under
/// OUTPUT.tmp and renamed when complete; an existing OUTPUT is not
/// replaced without --force.
///
/// Example:
///   spectok merge part-*.h5 -o embeddings.h5
///   spectok merge part-0.h5 part-1.h5 part-2.h5 -o all.h5 --force
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The part files (outputs of `spectok embed --shard i/n`).
    #[arg(required = true)]
    parts: Vec<PathBuf>,
    /// The merged file to write.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let s = merge(&args.parts, &args.output, args.force).map_err(|e| {
        let text = e.to_string();
        if text.contains("already exists") {
            anyhow::anyhow!("{text}; pass --force to replace it")
        } else {
            anyhow::Error::new(e)
        }
    })?;
    eprintln!(
        "merged {} parts: {} embeddings, {} failures -> {}",
        s.parts,
        s.records,
        s.failures,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
