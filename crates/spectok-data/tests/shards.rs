//! The loader reads spectok HDF5 shards (many spectra per unit) and
//! resumes inside a shard exactly.

use std::collections::BTreeSet;
use std::sync::Arc;

use spectok_data::{
    BatchSize, FileSource, Loader, LoaderConfig, SourceSpec, SyntheticConfig, SyntheticSource,
};
use spectok_io::shard::ShardWriter;
use spectok_io::Format;

#[test]
fn loader_reads_shards_and_resumes_inside_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = SyntheticSource::new(SyntheticConfig {
        units: 3,
        per_unit: 40,
        min_pixels: 300,
        max_pixels: 2000,
        seed: 21,
        ..SyntheticConfig::default()
    });
    let mut all = BTreeSet::new();
    for u in 0..3 {
        let mut w = ShardWriter::create(dir.path().join(format!("part-{u}.h5"))).unwrap();
        for i in 0..40 {
            let s = src.spectrum(u, i);
            all.insert(s.id.clone());
            w.write(&s).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 40);
    }
    let sources = || {
        let (files, problems) = FileSource::from_inputs(&[dir.path().to_string_lossy()], None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(files.units().len(), 3);
        assert!(files
            .units()
            .iter()
            .all(|u| u.format == Format::SpectokShard));
        vec![SourceSpec::new("shards", 1.0, Arc::new(files))]
    };
    let cfg = LoaderConfig {
        batch: BatchSize::Fixed { spectra: 8 },
        pool_size: 24,
        epochs: Some(2),
        readers_per_source: 2,
        seed: 3,
        ..LoaderConfig::default()
    };
    let mut loader = Loader::new(sources(), cfg.clone()).unwrap();
    let mut seen = Vec::new();
    let mut states = Vec::new();
    let mut batches = Vec::new();
    while let Some(b) = loader.next_batch() {
        seen.extend(b.ids.clone());
        states.push(loader.state());
        batches.push(b);
    }
    assert_eq!(seen.len(), 240);
    let first: BTreeSet<String> = seen[..120].iter().cloned().collect();
    assert_eq!(first, all, "epoch 1 is every spectrum once");
    assert!(
        loader.stats().problems.is_empty(),
        "{:?}",
        loader.stats().problems
    );

    // Resume after batch 4 (mid-pool, readers mid-shard) and after 16
    // (second epoch).
    for k in [4, 16] {
        let resumed: Vec<_> = Loader::resume(sources(), cfg.clone(), states[k - 1].clone())
            .unwrap()
            .collect();
        assert_eq!(resumed.len(), batches.len() - k);
        assert!(resumed == batches[k..], "resumed after batch {k} differs");
    }
}
