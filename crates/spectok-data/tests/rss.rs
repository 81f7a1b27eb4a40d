//! Memory stays bounded by the loader's queues, not by the dataset: peak
//! RSS barely moves when the input grows 10×, and every loader thread is
//! gone once the loader is dropped. Its own test binary (own process), so
//! no other test disturbs the process-wide numbers.

use std::sync::Arc;

use spectok_data::{BatchSize, Loader, LoaderConfig, SourceSpec, SyntheticConfig, SyntheticSource};

/// A field of /proc/self/status in kB (or a count), if readable.
fn status(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn source(units: usize) -> Vec<SourceSpec> {
    let src = SyntheticSource::new(SyntheticConfig {
        units,
        per_unit: 20,
        min_pixels: 500,
        max_pixels: 1500,
        seed: 3,
        ..SyntheticConfig::default()
    });
    vec![SourceSpec::new("synthetic", 1.0, Arc::new(src))]
}

fn config() -> LoaderConfig {
    LoaderConfig {
        batch: BatchSize::Fixed { spectra: 32 },
        pool_size: 256,
        epochs: Some(1),
        ..LoaderConfig::default()
    }
}

/// Consumes one epoch; returns the number of spectra seen.
fn run(units: usize) -> u64 {
    let mut loader = Loader::new(source(units), config()).unwrap();
    let mut n = 0u64;
    while let Some(b) = loader.next_batch() {
        n += b.batch_size as u64;
    }
    n
}

#[test]
fn peak_rss_is_flat_when_the_input_grows_tenfold() {
    let (Some(threads0), Some(_)) = (status("Threads:"), status("VmHWM:")) else {
        eprintln!("skipping: /proc/self/status not readable on this system");
        return;
    };
    assert_eq!(run(50), 1_000);
    let hwm_small = status("VmHWM:").unwrap();
    assert_eq!(run(500), 10_000);
    let hwm_large = status("VmHWM:").unwrap();
    let grown = hwm_large.saturating_sub(hwm_small);
    eprintln!("peak RSS: {hwm_small} kB after 1 000 spectra, {hwm_large} kB after 10 000 more");
    // Keeping every spectrum of the large run would take ≈ 10 000 × 1 000
    // pixels × 24 B ≈ 240 MB; allow allocator noise only.
    assert!(
        grown < 24 * 1024 + hwm_small / 10,
        "peak RSS grew by {grown} kB (from {hwm_small} kB)"
    );

    // Dropping a loader mid-epoch stops and joins all its threads.
    let mut loader = Loader::new(source(500), config()).unwrap();
    for _ in 0..3 {
        loader.next_batch().unwrap();
    }
    assert!(status("Threads:").unwrap() > threads0);
    drop(loader);
    assert_eq!(status("Threads:").unwrap(), threads0);
}
