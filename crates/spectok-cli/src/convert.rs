//! `spectok convert`: pack any inputs into a spectok HDF5 shard.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use spectok_io::shard::ShardWriter;
use spectok_io::{count_unit, plan_inputs, read_unit, Format};

use crate::progress::spectra_bar;

/// Pack survey files into one spectok shard (chunked, compressed HDF5).
///
/// Every spectrum of every input is stored bit-identically on its native
/// grid with its labels and source. The shard is written to a temporary
/// file and renamed when complete, so a killed run never leaves a partial
/// shard under the output name. Unreadable files and spectra are reported
/// and counted; the exit code is 1 if any input file was unreadable.
///
/// Example:
///   spectok convert data/demo -o demo.h5
///   spectok convert 'survey/apogee/aspcapStar-*.fits' -o apogee.h5 --force
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Files, directories (walked recursively) or glob patterns.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Output shard (.h5).
    #[arg(short, long)]
    output: PathBuf,
    /// Read every input as this format instead of detecting it.
    #[arg(long, value_parser = crate::parse_format)]
    format: Option<Format>,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    if args.output.exists() && !args.force {
        bail!(
            "{}: output exists (use --force to replace it)",
            args.output.display()
        );
    }
    let plan = plan_inputs(&args.inputs, args.format);
    let mut file_errors = plan.problems.len();
    for p in &plan.problems {
        eprintln!("error: {p}");
    }
    let total: usize = plan.units.iter().map(|u| count_unit(u).unwrap_or(0)).sum();
    let bar = spectra_bar(total as u64, "convert");
    let mut writer = ShardWriter::create(&args.output)
        .with_context(|| format!("{}: cannot create shard", args.output.display()))?;
    let (mut n_ok, mut n_skipped) = (0usize, 0usize);
    for unit in &plan.units {
        let stream = match read_unit(unit) {
            Ok(s) => s,
            Err(e) => {
                bar.suspend(|| eprintln!("error: {e}"));
                file_errors += 1;
                continue;
            }
        };
        for item in stream {
            match item {
                Ok(s) => match writer.write(&s) {
                    Ok(()) => n_ok += 1,
                    // The writer refused this spectrum but can go on.
                    Err(e) if writer.is_open() => {
                        bar.suspend(|| eprintln!("skipped: {e}"));
                        n_skipped += 1;
                    }
                    Err(e) => return Err(e.into()),
                },
                Err(e) => {
                    bar.suspend(|| eprintln!("skipped: {e}"));
                    n_skipped += 1;
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    writer.finish()?;
    eprintln!(
        "{}: {} spectra written, {} skipped, {} input(s) unreadable",
        args.output.display(),
        n_ok,
        n_skipped,
        file_errors
    );
    Ok(if file_errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
