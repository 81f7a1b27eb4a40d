//! spectok-cli: the `spectok` binary.
//!
//! Parses the command line, wires the library crates together and owns
//! everything terminal-facing (clap, indicatif progress bars, JSON output,
//! exit codes). The library crates know nothing of it.

mod convert;
mod embed;
mod finetune;
mod inspect;
mod merge;
mod plot;
mod predict;
mod pretrain;
mod progress;
mod reconstruct;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// spectok: a universal tokenizer for astronomical spectra on their native
/// wavelength grids.
#[derive(Parser, Debug)]
#[command(name = "spectok", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Inspect(inspect::Args),
    Convert(convert::Args),
    Pretrain(pretrain::Args),
    Plot(plot::Args),
    Embed(embed::Args),
    Merge(merge::Args),
    Reconstruct(reconstruct::Args),
    Finetune(finetune::Args),
    Predict(predict::Args),
}

fn main() -> ExitCode {
    spectok_model::process::configure();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Pretrain(a) => pretrain::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Reconstruct(a) => reconstruct::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Predict(a) => predict::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string().replace('\n', " "))
        .collect::<Vec<_>>()
        .join(": ")
}

/// Parses a `--format` value.
pub fn parse_format(s: &str) -> Result<spectok_io::Format, String> {
    spectok_io::Format::from_name(s).ok_or_else(|| {
        let names: Vec<_> = spectok_io::Format::ALL.iter().map(|f| f.name()).collect();
        format!("unknown format {s:?}; one of: {}", names.join(", "))
    })
}
