//! A seed gives the same bytes, whatever the number of threads.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use spectok_mock::generate;

fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{e}")) {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"));
                out.insert(p.strip_prefix(root).unwrap_or(&p).to_path_buf(), bytes);
            }
        }
    }
    out
}

fn run(
    threads: usize,
    cfg: &spectok_mock::MockConfig,
) -> (tempfile::TempDir, BTreeMap<PathBuf, Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    pool.install(|| generate(cfg, dir.path(), &|_, _| {}))
        .unwrap_or_else(|e| panic!("generate: {e}"));
    let t = tree(dir.path());
    (dir, t)
}

#[test]
fn same_seed_same_bytes_on_one_or_three_threads() {
    let mut cfg = common::small_config(13, 24);
    cfg.gzip = true;
    let (_a, one) = run(1, &cfg);
    let (_b, three) = run(3, &cfg);
    assert!(one.len() > 20, "{} files", one.len());
    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        three.keys().collect::<Vec<_>>()
    );
    for (k, v) in &one {
        assert!(
            three.get(k) == Some(v),
            "{} differs between runs",
            k.display()
        );
    }
    // A different seed changes the content.
    cfg.seed = 14;
    let (_c, other) = run(2, &cfg);
    let catalog = Path::new("mock-objects.csv");
    assert_ne!(one.get(catalog), other.get(catalog));
}
