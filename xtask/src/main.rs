//! Developer chores for spectok, run with `cargo xtask <command>`.
//!
//! This binary only parses arguments and dispatches; each command's code
//! lives in its own module.

use clap::{Parser, Subcommand};

mod mock;

/// spectok developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "spectok developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write mock survey spectra (SDSS, DESI, APOGEE, GALAH, LAMOST layouts
    /// and spectok shards). MOCKS FOR TESTING AND BENCHMARKING, NOT A
    /// SUBSTITUTE FOR SURVEY DATA.
    MockSurvey(mock::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::MockSurvey(args) => mock::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
