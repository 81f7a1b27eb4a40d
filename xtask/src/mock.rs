//! `cargo xtask mock-survey`: writes a mock survey with spectok-mock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use spectok_mock::{MockConfig, MockSurvey, DISCLAIMER};

/// Named configurations.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Preset {
    /// The committed demo set: regenerates `data/demo` bit for bit.
    Demo,
}

/// Arguments of `mock-survey`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  cargo xtask mock-survey --preset demo\n  cargo xtask mock-survey --count 100000 --out /tmp/mock100k\n  cargo xtask mock-survey --count 500 --fractions apogee=1 --no-shards --out /tmp/apogee"
)]
pub struct Args {
    /// Start from a named configuration (options given as well override
    /// it). `demo` writes into data/demo unless --out is given.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Seed of every random stream.
    #[arg(long)]
    seed: Option<u64>,
    /// Number of objects (each observed by one or more surveys).
    #[arg(long)]
    count: Option<u64>,
    /// Relative weight of each survey as primary survey, e.g.
    /// `sdss=0.3,desi=0.3,apogee=0.15,galah=0.1,lamost=0.15`; surveys not
    /// named get 0 (never used).
    #[arg(long, value_name = "LIST")]
    fractions: Option<String>,
    /// Probability that an object is also observed by a second survey.
    #[arg(long, value_name = "P")]
    cross: Option<f64>,
    /// Target fibres per DESI coadd file.
    #[arg(long, value_name = "N")]
    desi_fibres: Option<usize>,
    /// Sky fibres per DESI coadd file.
    #[arg(long, value_name = "N")]
    desi_sky: Option<usize>,
    /// Spectra per shard file.
    #[arg(long, value_name = "N")]
    shard_size: Option<usize>,
    /// gzip-compress the FITS files (.fits.gz).
    #[arg(long)]
    gzip: bool,
    /// Quantise flux to a power-of-two step ≤ σ/Q (0: off).
    #[arg(long, value_name = "Q")]
    quantize: Option<f64>,
    /// Largest number of APOGEE visits per star.
    #[arg(long, value_name = "N")]
    max_visits: Option<u32>,
    /// Write no FITS files (shards only).
    #[arg(long)]
    no_fits: bool,
    /// Write no shards (FITS only).
    #[arg(long)]
    no_shards: bool,
    /// Replace earlier mock output in the directory (implied by --preset
    /// demo).
    #[arg(long)]
    overwrite: bool,
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Parses `sdss=0.3,desi=0.2,…`.
fn parse_fractions(s: &str) -> Result<[f64; 5]> {
    let mut f = [0.0; 5];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .with_context(|| format!("--fractions: {part:?} is not SURVEY=WEIGHT"))?;
        let survey = MockSurvey::from_name(name).with_context(|| {
            format!("--fractions: unknown survey {name:?} (sdss, desi, apogee, galah, lamost)")
        })?;
        let v: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("--fractions: {value:?} is not a number"))?;
        f[survey.code() as usize] = v;
    }
    Ok(f)
}

/// Names of what a run writes at the top of its directory.
const OUTPUTS: [&str; 7] = [
    "sdss",
    "desi",
    "apogee",
    "galah",
    "lamost",
    "shards",
    "mock-objects.csv",
];

/// Removes earlier mock output from `dir`, or refuses if there is some and
/// `overwrite` is off.
fn prepare_dir(dir: &Path, overwrite: bool) -> Result<()> {
    let present: Vec<PathBuf> = OUTPUTS
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.exists())
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    if !overwrite {
        bail!(
            "{} already holds mock output ({}); pass --overwrite to replace it",
            dir.display(),
            present[0].display()
        );
    }
    for p in present {
        if p.is_dir() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        } else {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Runs `mock-survey`.
pub fn run(args: Args) -> Result<()> {
    let mut cfg = match args.preset {
        Some(Preset::Demo) => MockConfig::demo(),
        None => MockConfig::default(),
    };
    let out = match (&args.out, args.preset) {
        (Some(o), _) => o.clone(),
        (None, Some(Preset::Demo)) => workspace_root().join("data/demo"),
        (None, None) => bail!("--out DIR is required (or --preset demo)"),
    };
    if let Some(v) = args.seed {
        cfg.seed = v;
    }
    if let Some(v) = args.count {
        cfg.count = v;
    }
    if let Some(s) = &args.fractions {
        cfg.fractions = parse_fractions(s)?;
    }
    if let Some(v) = args.cross {
        cfg.cross_fraction = v;
    }
    if let Some(v) = args.desi_fibres {
        cfg.desi_targets_per_file = v;
    }
    if let Some(v) = args.desi_sky {
        cfg.desi_sky_per_file = v;
    }
    if let Some(v) = args.shard_size {
        cfg.shard_size = v;
    }
    if args.gzip {
        cfg.gzip = true;
    }
    if let Some(v) = args.quantize {
        cfg.observe.quantize = v;
    }
    if let Some(v) = args.max_visits {
        cfg.observe.max_visits = v;
    }
    if args.no_fits {
        cfg.fits = false;
    }
    if args.no_shards {
        cfg.shards = false;
    }
    cfg.validate()?;

    eprintln!("spectok mock-survey: {DISCLAIMER}");
    prepare_dir(
        &out,
        args.overwrite || matches!(args.preset, Some(Preset::Demo)),
    )?;
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let progress = |done: u64, total: u64| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        // Report every 10 %.
        if pct / 10 > last.load(Ordering::Relaxed) / 10 || done == total {
            last.store(pct, Ordering::Relaxed);
            eprintln!(
                "  {done}/{total} spectra ({pct}%) after {:.1} s",
                start.elapsed().as_secs_f64()
            );
        }
    };
    let summary = spectok_mock::generate(&cfg, &out, &progress)?;
    let secs = start.elapsed().as_secs_f64();
    let per: Vec<String> = MockSurvey::ALL
        .iter()
        .zip(summary.spectra)
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!(
        "wrote {} objects, {} spectra ({}) as {} FITS files and {} shards in {} ({secs:.1} s, {} threads)",
        summary.objects,
        summary.total_spectra(),
        per.join(", "),
        summary.fits_files,
        summary.shards,
        out.display(),
        spectok_mock::generate::threads(),
    );
    Ok(())
}
