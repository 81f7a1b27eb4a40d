//! The committed demo set `data/demo` is exactly what
//! `cargo xtask mock-survey --preset demo` writes, and stays small.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use spectok_mock::{generate, MockConfig};

/// Files under `root` (relative path → bytes), skipping `skip`.
fn files(root: &Path, skip: &[&str]) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
                if !skip.iter().any(|s| rel == Path::new(s)) {
                    let bytes =
                        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    out.insert(rel, bytes);
                }
            }
        }
    }
    out
}

const REGENERATE: &str = "regenerate it with `cargo xtask mock-survey --preset demo`";

#[test]
fn committed_demo_set_is_up_to_date() {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo");
    assert!(
        committed.is_dir(),
        "{} is missing: {REGENERATE}",
        committed.display()
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    generate(&MockConfig::demo(), dir.path(), &|_, _| {})
        .unwrap_or_else(|e| panic!("generate: {e}"));
    let fresh = files(dir.path(), &[]);
    let old = files(&committed, &["README.md"]);
    let fresh_names: Vec<&PathBuf> = fresh.keys().collect();
    let old_names: Vec<&PathBuf> = old.keys().collect();
    assert_eq!(
        old_names, fresh_names,
        "data/demo does not hold the demo preset's files: {REGENERATE}"
    );
    for (name, bytes) in &fresh {
        assert!(
            old.get(name) == Some(bytes),
            "data/demo/{} differs from what the demo preset writes: {REGENERATE}",
            name.display()
        );
    }
    let total: usize = old.values().map(Vec::len).sum();
    assert!(
        total < 5_000_000,
        "data/demo holds {total} bytes (limit 5 MB)"
    );
    assert!(
        committed.join("README.md").is_file(),
        "data/demo/README.md missing"
    );
}
