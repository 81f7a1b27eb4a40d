//! `cargo xtask fuzz TARGET --secs N`: runs one cargo-fuzz (libFuzzer)
//! target of `fuzz/` for N seconds with seeds taken from the real survey
//! files at run time, then prints the executions and any crash found.
//!
//! The fuzz project needs cargo-fuzz (`cargo install cargo-fuzz`) and
//! libFuzzer's unstable compiler flags; on a stable toolchain they are
//! enabled with `RUSTC_BOOTSTRAP=1`, which this command sets.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;

/// The fuzz targets of `fuzz/fuzz_targets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Arbitrary bytes as a FITS or gzip file: detection, planning, every
    /// FITS reader.
    #[value(name = "fits_bytes")]
    FitsBytes,
    /// Arbitrary bytes as an HDF5 file: detection, MMU and shard readers.
    #[value(name = "hdf5_bytes")]
    Hdf5Bytes,
    /// Structured mutations of a valid shard's datasets and marker.
    #[value(name = "shard")]
    Shard,
    /// Arbitrary text as training and model configs.
    #[value(name = "config_json")]
    ConfigJson,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::FitsBytes => "fits_bytes",
            Target::Hdf5Bytes => "hdf5_bytes",
            Target::Shard => "shard",
            Target::ConfigJson => "config_json",
        }
    }
}

/// Sanitizer the target is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sanitizer {
    /// None: several times faster; panics, aborts, overflows (debug
    /// assertions are on) and over-large allocations are still caught.
    None,
    /// AddressSanitizer on the Rust code (the C libraries are not
    /// instrumented): also catches memory errors around FFI calls.
    Address,
}

/// Arguments of `fuzz`.
#[derive(clap::Args, Debug)]
#[command(
    about = "Run one fuzz target of fuzz/ for a while and report executions and crashes",
    after_help = "Examples:\n  cargo xtask fuzz fits_bytes --secs 300\n  cargo xtask fuzz shard --secs 60 --sanitizer address\n\n\
Seeds are copied from the real survey files (SPECTOK_REAL_DATA or ../shared/data/real) into a \
temporary directory at run time; the growing corpus is kept in fuzz/corpus/TARGET and crashing \
inputs in fuzz/artifacts/TARGET (both ignored by git). Reproduce a crash with \
`cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-…` from fuzz/ (RUSTC_BOOTSTRAP=1 on stable)."
)]
pub struct Args {
    /// The fuzz target.
    #[arg(value_enum)]
    target: Target,
    /// How long to fuzz, in seconds.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Sanitizer to build with.
    #[arg(long, value_enum, default_value_t = Sanitizer::None)]
    sanitizer: Sanitizer,
    /// Per-input time limit in seconds (an input slower than this is a
    /// finding).
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Memory limit in MiB (RSS, and any single allocation).
    #[arg(long, default_value_t = 2048)]
    rss_limit_mb: u64,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    let root = workspace_root();
    let fuzz_dir = root.join("fuzz");
    if !fuzz_dir.join("Cargo.toml").is_file() {
        bail!("{}: no fuzz project", fuzz_dir.display());
    }
    let have_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_cargo_fuzz {
        bail!("cargo-fuzz is not installed (cargo install cargo-fuzz)");
    }
    let name = args.target.name();
    let seeds = SeedDir::new(name)?;
    let real = spectok_io::testdata::real_data_dir();
    let (n_seeds, max_len) = write_seeds(args.target, &root, real.as_deref(), seeds.path())?;
    if args.target == Target::Shard && real.is_none() {
        bail!(
            "the shard target builds its base shard from the real survey files, which are missing"
        );
    }
    let corpus = fuzz_dir.join("corpus").join(name);
    let artifacts = fuzz_dir.join("artifacts").join(name);
    std::fs::create_dir_all(&corpus).with_context(|| corpus.display().to_string())?;
    std::fs::create_dir_all(&artifacts).with_context(|| artifacts.display().to_string())?;
    eprintln!(
        "fuzz {name}: {n_seeds} seed(s), corpus {}, {} s, sanitizer {:?}",
        corpus.display(),
        args.secs,
        args.sanitizer
    );

    let mut cmd = Command::new("cargo");
    cmd.current_dir(&fuzz_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", name])
        .arg(&corpus)
        .arg(seeds.path())
        .arg("--sanitizer")
        .arg(match args.sanitizer {
            Sanitizer::None => "none",
            Sanitizer::Address => "address",
        });
    if let Some(dir) = &real {
        cmd.env("SPECTOK_REAL_DATA", dir);
    }
    if args.target == Target::ConfigJson {
        cmd.args(["--features", "config"]);
    }
    // cargo fuzz itself points -artifact_prefix at fuzz/artifacts/TARGET/.
    cmd.arg("--")
        .arg(format!("-max_total_time={}", args.secs))
        .arg(format!("-timeout={}", args.timeout))
        .arg(format!("-rss_limit_mb={}", args.rss_limit_mb))
        .arg("-print_final_stats=1");
    if max_len > 0 {
        // Load real files whole (libFuzzer would cut seeds to 1 MiB).
        cmd.arg(format!("-max_len={max_len}"));
    }
    cmd.stderr(Stdio::piped());

    let started = SystemTime::now();
    let clock = Instant::now();
    let mut child = cmd.spawn().context("starting cargo fuzz")?;
    let mut executions: Option<u64> = None;
    let mut rate: Option<u64> = None;
    let mut last_status: Option<u64> = None;
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line.context("reading the fuzzer's output")?;
            eprintln!("{line}");
            if let Some(n) = line
                .strip_prefix("stat::number_of_executed_units:")
                .and_then(|v| v.trim().parse().ok())
            {
                executions = Some(n);
            } else if let Some(n) = line
                .strip_prefix("stat::average_exec_per_sec:")
                .and_then(|v| v.trim().parse().ok())
            {
                rate = Some(n);
            } else if let Some(n) = status_count(&line) {
                last_status = Some(n);
            }
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let secs = clock.elapsed().as_secs_f64();
    let found = new_artifacts(&artifacts, started)?;
    let executions = executions.or(last_status).unwrap_or(0);
    println!(
        "{name}: {executions} executions ({} per second; {secs:.0} s with the build), {} crash(es)",
        rate.map_or_else(|| "?".to_string(), |r| r.to_string()),
        found.len()
    );
    for f in &found {
        println!("  {}", f.display());
    }
    if !found.is_empty() {
        bail!("{name}: {} crashing input(s) found", found.len());
    }
    if !status.success() {
        bail!("{name}: the fuzzer exited with {status}");
    }
    Ok(())
}

/// The workspace root (this crate's parent).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The execution count of a libFuzzer status line (`#1234\tNEW …`).
fn status_count(line: &str) -> Option<u64> {
    let rest = line.strip_prefix('#')?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// Crash, out-of-memory, timeout and leak inputs written since `since`.
fn new_artifacts(dir: &Path, since: SystemTime) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let finding = ["crash-", "oom-", "timeout-", "leak-"]
            .iter()
            .any(|p| name.starts_with(p));
        let fresh = e.metadata()?.modified().is_ok_and(|m| m >= since);
        if finding && fresh {
            found.push(e.path());
        }
    }
    found.sort();
    Ok(found)
}

/// A temporary seed directory, removed when dropped.
struct SeedDir(PathBuf);

impl SeedDir {
    fn new(target: &str) -> Result<SeedDir> {
        let dir = std::env::temp_dir().join(format!(
            "spectok-fuzz-seeds-{target}-{}",
            std::process::id()
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())?;
        }
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        Ok(SeedDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SeedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Files below `dir` (one level of subdirectories) whose names end with
/// one of `endings`.
fn files_ending(dir: &Path, endings: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let n = p.to_string_lossy().to_ascii_lowercase();
            if p.is_file() && endings.iter().any(|end| n.ends_with(end)) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Copies (or writes) the seeds of `target` into `dir`; returns their
/// number and the largest seed's size.
fn write_seeds(
    target: Target,
    root: &Path,
    real: Option<&Path>,
    dir: &Path,
) -> Result<(usize, u64)> {
    let mut files: Vec<PathBuf> = Vec::new();
    match (target, real) {
        (Target::FitsBytes, Some(real)) => {
            // The smallest file of each layout: every reader gets a valid
            // start, and small inputs keep executions fast.
            let mut smallest: std::collections::BTreeMap<String, (u64, PathBuf)> =
                Default::default();
            for f in files_ending(real, &[".fits", ".fit", ".fits.gz", ".fit.gz"]) {
                let layout = match spectok_io::detect(&f) {
                    Ok(fmt) => fmt.name().to_string(),
                    Err(_) => f.display().to_string(),
                };
                let size = std::fs::metadata(&f)?.len();
                let entry = smallest.entry(layout).or_insert((size, f.clone()));
                if size < entry.0 {
                    *entry = (size, f);
                }
            }
            files = smallest.into_values().map(|(_, f)| f).collect();
        }
        (Target::Hdf5Bytes, Some(real)) => {
            files = files_ending(real, &[".hdf5", ".h5"]);
            // A shard of a few real spectra, written now.
            let shard = dir.join("seed-shard.h5");
            write_seed_shard(real, &shard)?;
        }
        (Target::ConfigJson, _) => {
            files = files_ending(&root.join("configs"), &[".json"]);
        }
        _ => {}
    }
    for (i, f) in files.iter().enumerate() {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let dst = dir.join(format!("{i:03}-{name}"));
        std::fs::copy(f, &dst).with_context(|| format!("copying {}", f.display()))?;
    }
    let mut n = 0;
    let mut max_len = 0;
    for e in std::fs::read_dir(dir)?.flatten() {
        n += 1;
        max_len = max_len.max(e.metadata()?.len());
    }
    Ok((n, max_len))
}

/// Writes a shard of the first spectra of a few real files.
fn write_seed_shard(real: &Path, out: &Path) -> Result<()> {
    let inputs: Vec<String> = [
        "sdss/spec-0266-51602-0013.fits",
        "desi/coadd-4-80613-thru20210324.fits",
        "apogee/aspcapStar-r6-l30e.2-2M03290406+3117075.fits",
        "lamost/spec-55859-F5902_sp01-001.fits.gz",
    ]
    .iter()
    .map(|p| real.join(p).display().to_string())
    .collect();
    let plan = spectok_io::plan_inputs(&inputs, None);
    let mut w = spectok_io::shard::ShardWriter::create(out)?;
    for unit in &plan.units {
        for s in spectok_io::read_unit(unit)?.take(2).flatten() {
            w.write(&s)?;
        }
    }
    w.finish()?;
    Ok(())
}
