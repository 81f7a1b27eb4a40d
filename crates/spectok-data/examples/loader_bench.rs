//! Loader throughput: batches/s and spectra/s from memory, from spectok
//! HDF5 shards and from the real survey FITS files, and the real-token
//! fraction with and without length bucketing.
//!
//! `cargo run --release -p spectok-data --example loader_bench [REAL_DIR]`
//! (REAL_DIR defaults to `spectok_io::testdata::real_data_dir()`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use spectok_data::{
    bench_loader, prepare, BatchSize, FileSource, LoaderBench, LoaderConfig, MemorySource,
    PrepareConfig, SourceSpec, SpectrumSource, SyntheticConfig, SyntheticSource,
};
use spectok_io::shard::ShardWriter;

fn syn(units: usize, per_unit: usize, min: usize, max: usize, seed: u64) -> SyntheticSource {
    SyntheticSource::new(SyntheticConfig {
        units,
        per_unit,
        min_pixels: min,
        max_pixels: max,
        seed,
        ..SyntheticConfig::default()
    })
}

fn report(name: &str, b: &LoaderBench) {
    println!(
        "| {name} | {} | {} | {:.1} | {:.0} | {:.3} | {:.3} | {} |",
        b.stats.batches,
        b.stats.spectra,
        b.batches_per_s,
        b.spectra_per_s,
        b.real_token_fraction,
        b.stats.min_real_token_fraction.unwrap_or(0.0),
        b.stats.rejected.values().sum::<u64>() + b.stats.read_errors,
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let real = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .or_else(spectok_io::testdata::real_data_dir);
    let base = LoaderConfig {
        batch: BatchSize::Fixed { spectra: 64 },
        epochs: Some(1),
        ..LoaderConfig::default()
    };

    // Preparation alone, one thread.
    let src = syn(1, 512, 2000, 5000, 1);
    let spectra: Vec<_> = (0..512).map(|i| src.spectrum(0, i)).collect();
    let cfg = PrepareConfig::default();
    let t0 = Instant::now();
    let mut patches = 0;
    for s in &spectra {
        patches += prepare(s, &cfg)?.n_patches();
    }
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "prepare alone (1 thread, 2000–5000 px): {:.0} spectra/s, {:.1} Mpixel/s ({patches} patches)",
        512.0 / dt,
        spectra.iter().map(|s| s.len()).sum::<usize>() as f64 / dt / 1e6
    );

    println!();
    println!("| input | batches | spectra | batches/s | spectra/s | real-token fraction | min per batch | rejected+errors |");
    println!("|---|---|---|---|---|---|---|---|");

    // In memory: the loader's own cost (prepare, pool, collate, queues).
    let mem = MemorySource::new(spectra, 16);
    let b = bench_loader(
        vec![SourceSpec::new("memory", 1.0, Arc::new(mem.clone()))],
        LoaderConfig {
            epochs: Some(8),
            ..base.clone()
        },
        usize::MAX,
    )?;
    report("memory, 2000–5000 px, B=64", &b);

    // Lazily generated (includes generating each spectrum).
    let b = bench_loader(
        vec![SourceSpec::new(
            "synthetic",
            1.0,
            Arc::new(syn(64, 64, 2000, 5000, 2)),
        )],
        base.clone(),
        usize::MAX,
    )?;
    report("synthetic generator, 2000–5000 px, B=64", &b);

    // spectok HDF5 shards of the same kind of spectra.
    let dir = tempfile::tempdir()?;
    let gen = syn(8, 512, 2000, 5000, 3);
    let t0 = Instant::now();
    for u in 0..8 {
        let mut w = ShardWriter::create(dir.path().join(format!("shard-{u}.h5")))?;
        for i in 0..512 {
            w.write(&gen.spectrum(u, i))?;
        }
        w.finish()?;
    }
    println!(
        "(wrote 8 shards × 512 spectra in {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    let (shards, problems) = FileSource::from_inputs(&[dir.path().to_string_lossy()], None);
    assert!(problems.is_empty(), "{problems:?}");
    for readers in [1, 2, 4] {
        let b = bench_loader(
            vec![SourceSpec::new("shards", 1.0, Arc::new(shards.clone()))],
            LoaderConfig {
                readers_per_source: readers,
                ..base.clone()
            },
            usize::MAX,
        )?;
        report(
            &format!("8 shards, 4096 spectra, B=64, {readers} reader(s)"),
            &b,
        );
    }

    // Real survey files (FITS, FITS.gz, MMU HDF5), re-read each epoch.
    if let Some(real) = &real {
        let mut sources = Vec::new();
        for sub in [
            "sdss", "desi", "apogee", "galah", "lamost", "gaiaxp", "other", "mmu",
        ] {
            let (files, _problems) =
                FileSource::from_inputs(&[real.join(sub).to_string_lossy()], None);
            if files.n_units() > 0 {
                sources.push(SourceSpec::new(sub, 1.0, Arc::new(files)));
            }
        }
        let b = bench_loader(
            sources.clone(),
            LoaderConfig {
                batch: BatchSize::Fixed { spectra: 16 },
                epochs: Some(5),
                pool_size: 256,
                ..base.clone()
            },
            usize::MAX,
        )?;
        report("real files (8 families, weights 1), B=16, 5 epochs", &b);
        let sdss: Vec<SourceSpec> = sources
            .iter()
            .filter(|s| s.name == "sdss")
            .cloned()
            .collect();
        let b = bench_loader(
            sdss,
            LoaderConfig {
                batch: BatchSize::Fixed { spectra: 13 },
                epochs: Some(20),
                ..base.clone()
            },
            usize::MAX,
        )?;
        report("real SDSS spec FITS only, B=13, 20 epochs", &b);
    } else {
        println!("(real files not found: skipped)");
    }

    // Mixed lengths: 2 000-pixel and 30 000-pixel spectra.
    let mixed = || {
        vec![
            SourceSpec::new(
                "short",
                3.0,
                Arc::new(syn(32, 32, 1800, 2200, 4)) as Arc<dyn SpectrumSource>,
            ),
            SourceSpec::new("long", 1.0, Arc::new(syn(8, 32, 28000, 32000, 5))),
        ]
    };
    for (name, batch, bucketing) in [
        (
            "mixed 2k/30k px, B=32, no bucketing",
            BatchSize::Fixed { spectra: 32 },
            false,
        ),
        (
            "mixed 2k/30k px, B=32, bucketing",
            BatchSize::Fixed { spectra: 32 },
            true,
        ),
        (
            "mixed 2k/30k px, ≤16384 tokens, no bucketing",
            BatchSize::Tokens {
                max_tokens: 16384,
                max_spectra: 256,
            },
            false,
        ),
        (
            "mixed 2k/30k px, ≤16384 tokens, bucketing",
            BatchSize::Tokens {
                max_tokens: 16384,
                max_spectra: 256,
            },
            true,
        ),
    ] {
        let b = bench_loader(
            mixed(),
            LoaderConfig {
                batch,
                bucketing,
                pool_size: 512,
                ..base.clone()
            },
            usize::MAX,
        )?;
        report(name, &b);
    }
    Ok(())
}
