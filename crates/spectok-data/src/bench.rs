//! Loader throughput measurement, called by `cargo xtask bench` and the
//! `loader_bench` example (not a timed test).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::loader::{Loader, LoaderConfig, LoaderStats, SourceSpec};

/// Throughput of one loader run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoaderBench {
    /// Counters of the run.
    pub stats: LoaderStats,
    /// Wall time from creating the loader to the last batch, s.
    pub seconds: f64,
    /// Batches delivered per second.
    pub batches_per_s: f64,
    /// Spectra delivered per second.
    pub spectra_per_s: f64,
    /// Real-token fraction over all delivered patch slots.
    pub real_token_fraction: f64,
}

/// Runs a loader over `sources` until `max_batches` batches (or the
/// configured epochs) are consumed, doing nothing with them but touching
/// their data, and reports the rates.
pub fn bench_loader(
    sources: Vec<SourceSpec>,
    cfg: LoaderConfig,
    max_batches: usize,
) -> Result<LoaderBench> {
    let t0 = Instant::now();
    let mut loader = Loader::new(sources, cfg)?;
    let mut checksum = 0.0f64;
    for batch in loader.by_ref().take(max_batches) {
        // Touch the data so the consumer side is not optimised away.
        checksum += batch
            .flux
            .iter()
            .step_by(97)
            .map(|x| *x as f64)
            .sum::<f64>();
    }
    let seconds = t0.elapsed().as_secs_f64().max(1e-9);
    let stats = loader.stats();
    std::hint::black_box(checksum);
    Ok(LoaderBench {
        seconds,
        batches_per_s: stats.batches as f64 / seconds,
        spectra_per_s: stats.spectra as f64 / seconds,
        real_token_fraction: stats.real_token_fraction(),
        stats,
    })
}
