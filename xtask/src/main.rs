//! Developer chores for spectok, run with `cargo xtask <command>`.
//!
//! This binary only parses arguments and dispatches; each command's code
//! lives in its own module.

use clap::{Parser, Subcommand};

mod bench;
mod fuzz;
mod gpu;
mod mock;

/// spectok developer tasks.
#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "spectok developer tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write mock survey spectra in real survey file layouts — mocks for
    /// testing and benchmarking, NOT a substitute for survey data.
    ///
    /// Writes labelled, physically grounded mock spectra — galaxies,
    /// quasars and stars observed by SDSS/BOSS, DESI, APOGEE, GALAH and
    /// LAMOST LRS on their native grids — as spec-*, coadd-*/redrock-*,
    /// apStar/aspcapStar, GALAH per-CCD and LAMOST files, plus spectok HDF5
    /// shards and a catalogue (mock-objects.csv).
    ///
    /// THESE ARE MOCKS FOR TESTING AND BENCHMARKING, NOT A SUBSTITUTE FOR
    /// SURVEY DATA. Every file carries MOCK = T in its primary header.
    ///
    /// Output is deterministic in --seed: the same options write the same
    /// bytes, whatever the number of threads.
    MockSurvey(mock::Args),
    /// Run one fuzz target of fuzz/ (cargo-fuzz) for a while, seeded from
    /// the real survey files, and report executions and crashes.
    Fuzz(fuzz::Args),
    /// Benchmark spectok side by side with PyTorch, astropy and the
    /// machine's GEMM peak, and record the results in BENCHMARKS.md.
    Bench(bench::Args),
    /// Check spectok on a GPU against the CPU (f32, bf16, mixed-precision
    /// gradients) and time embed and train steps against the PyTorch
    /// reference on the same card; run by scripts/gpu_check.sh.
    ///
    /// Example: cargo xtask gpu-bench --device cuda --json gpu.json
    GpuBench(gpu::Args),
}

fn main() -> std::process::ExitCode {
    spectok_model::process::configure();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::MockSurvey(args) => mock::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Bench(args) => bench::run(args),
        Command::GpuBench(args) => gpu::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
