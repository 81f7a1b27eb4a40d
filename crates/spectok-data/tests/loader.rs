//! The streaming loader: epochs, determinism, resuming, mixing, splits,
//! bucketing and problem reporting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use spectok_data::{
    Batch, BatchSize, Error, FileSource, Loader, LoaderConfig, LoaderState, MemorySource,
    SourceSpec, Split, SplitFilter, SyntheticConfig, SyntheticSource,
};
use spectok_io::{Format, InputUnit};

fn syn(seed: u64, units: usize, per_unit: usize, visits: usize) -> SyntheticSource {
    SyntheticSource::new(SyntheticConfig {
        units,
        per_unit,
        min_pixels: 100,
        max_pixels: 1500,
        visits,
        seed,
        ..SyntheticConfig::default()
    })
}

fn spec(name: &str, weight: f64, src: SyntheticSource) -> SourceSpec {
    SourceSpec::new(name, weight, Arc::new(src))
}

fn cfg() -> LoaderConfig {
    LoaderConfig {
        batch: BatchSize::Fixed { spectra: 8 },
        pool_size: 20,
        seed: 11,
        epochs: Some(1),
        readers_per_source: 2,
        reader_queue: 4,
        prefetch: 2,
        ..LoaderConfig::default()
    }
}

/// Every batch with the state after it.
fn drain(mut loader: Loader) -> Vec<(Batch, LoaderState)> {
    let mut out = Vec::new();
    while let Some(b) = loader.next_batch() {
        out.push((b, loader.state()));
    }
    out
}

fn ids(batches: &[(Batch, LoaderState)]) -> Vec<String> {
    batches.iter().flat_map(|(b, _)| b.ids.clone()).collect()
}

#[test]
fn one_source_epoch_is_exactly_one_pass() {
    let src = syn(1, 7, 13, 1);
    let all: BTreeSet<String> = (0..7)
        .flat_map(|u| (0..13).map(move |i| (u, i)))
        .map(|(u, i)| src.spectrum(u, i).id)
        .collect();
    assert_eq!(all.len(), 91);
    let loader = Loader::new(vec![spec("a", 1.0, src)], cfg()).unwrap();
    let got = drain(loader);
    let mut seen = ids(&got);
    assert_eq!(seen.len(), 91, "each spectrum exactly once");
    seen.sort();
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), all);
    assert!(got
        .iter()
        .all(|(b, _)| b.batch_size <= 8 && b.batch_size > 0));
    // Shuffled: not in reading order.
    let first: Vec<String> = got[0].0.ids.clone();
    let src = syn(1, 7, 13, 1);
    let in_order: Vec<String> = (0..8).map(|i| src.spectrum(0, i).id).collect();
    assert_ne!(first, in_order);
}

#[test]
fn every_epoch_is_one_pass_in_a_new_order() {
    let c = LoaderConfig {
        epochs: Some(3),
        ..cfg()
    };
    let got = drain(Loader::new(vec![spec("a", 1.0, syn(1, 7, 13, 1))], c).unwrap());
    // Batches never straddle an epoch: the state's epoch counts them.
    let mut per_epoch: Vec<Vec<String>> = vec![Vec::new(); 3];
    let mut epoch = 0;
    for (b, st) in &got {
        per_epoch[epoch].extend(b.ids.clone());
        epoch = st.epoch as usize;
    }
    assert_eq!(epoch, 3);
    let sorted = |v: &Vec<String>| {
        let mut v = v.clone();
        v.sort();
        v
    };
    for e in &per_epoch {
        assert_eq!(e.len(), 91);
        assert_eq!(sorted(e), sorted(&per_epoch[0]));
        assert_eq!(e.iter().collect::<BTreeSet<_>>().len(), 91);
    }
    assert_ne!(per_epoch[0], per_epoch[1]);
    assert_ne!(per_epoch[1], per_epoch[2]);
}

#[test]
fn same_seed_same_batches_other_seed_other_order() {
    let run = |seed| {
        let c = LoaderConfig { seed, ..cfg() };
        drain(Loader::new(vec![spec("a", 1.0, syn(2, 5, 10, 1))], c).unwrap())
    };
    let a = run(5);
    let b = run(5);
    let c = run(6);
    assert_eq!(a.len(), b.len());
    for ((x, sx), (y, sy)) in a.iter().zip(&b) {
        assert_eq!(x, y);
        assert_eq!(sx, sy);
    }
    assert_ne!(ids(&a), ids(&c));
    let (mut ia, mut ic) = (ids(&a), ids(&c));
    ia.sort();
    ic.sort();
    assert_eq!(ia, ic);
}

/// Runs a loader to the end, then resumes from several saved states
/// (through JSON, as a checkpoint would) and checks the batches that
/// follow are identical.
fn check_resume(sources: impl Fn() -> Vec<SourceSpec>, c: LoaderConfig) {
    let full = drain(Loader::new(sources(), c.clone()).unwrap());
    assert!(full.len() >= 10, "{} batches", full.len());
    let n = full.len();
    for k in [1, 2, 3, n / 3, n / 2, n / 2 + 1, n - 2, n - 1, n] {
        let saved = serde_json::to_string(&full[k - 1].1).unwrap();
        let state: LoaderState = serde_json::from_str(&saved).unwrap();
        let rest = drain(Loader::resume(sources(), c.clone(), state).unwrap());
        assert_eq!(rest.len(), n - k, "resumed after batch {k}");
        for (j, ((x, sx), (y, sy))) in full[k..].iter().zip(&rest).enumerate() {
            assert!(x == y, "batch {} differs after resuming at {k}", k + j);
            assert_eq!(sx, sy);
        }
    }
}

#[test]
fn resume_mid_epoch_gives_identical_batches() {
    let c = LoaderConfig {
        epochs: Some(3),
        ..cfg()
    };
    check_resume(|| vec![spec("a", 1.0, syn(3, 6, 9, 1))], c);
}

#[test]
fn resume_with_weighted_sources_and_token_budget() {
    let c = LoaderConfig {
        epochs: Some(2),
        batch: BatchSize::Tokens {
            max_tokens: 200,
            max_spectra: 16,
        },
        readers_per_source: 3,
        pool_size: 17,
        ..cfg()
    };
    check_resume(
        || {
            vec![
                spec("small", 2.0, syn(4, 2, 5, 1)),
                spec("big", 1.0, syn(5, 7, 6, 2)),
            ]
        },
        c,
    );
}

#[test]
fn resume_rejects_a_foreign_state() {
    let sources = || vec![spec("a", 1.0, syn(3, 4, 5, 1))];
    let mut l = Loader::new(sources(), cfg()).unwrap();
    l.next_batch().unwrap();
    let st = l.state();
    let other = LoaderConfig { seed: 99, ..cfg() };
    assert!(matches!(
        Loader::resume(sources(), other, st.clone()),
        Err(Error::State { .. })
    ));
    let more = vec![spec("a", 1.0, syn(3, 5, 5, 1))];
    assert!(matches!(
        Loader::resume(more, cfg(), st),
        Err(Error::State { .. })
    ));
}

#[test]
fn weights_set_the_draw_rates() {
    let c = LoaderConfig {
        epochs: None,
        pool_size: 50,
        ..cfg()
    };
    let sources = vec![
        spec("a", 3.0, syn(100, 50, 20, 1)),
        spec("b", 1.0, syn(200, 50, 20, 1)),
    ];
    let mut l = Loader::new(sources, c).unwrap();
    let mut n = [0usize; 2];
    while n[0] + n[1] < 800 {
        for id in l.next_batch().unwrap().ids {
            n[usize::from(id.starts_with("syn200-"))] += 1;
        }
    }
    let frac = n[0] as f64 / (n[0] + n[1]) as f64;
    assert!((frac - 0.75).abs() < 0.05, "source a drew {frac}");
}

#[test]
fn epoch_ends_when_every_source_completed_a_pass() {
    let sources = vec![
        spec("small", 1.0, syn(7, 1, 5, 1)),
        spec("large", 1.0, syn(8, 6, 10, 1)),
    ];
    let got = ids(&drain(Loader::new(sources, cfg()).unwrap()));
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for id in &got {
        *count.entry(id.clone()).or_default() += 1;
    }
    let large: Vec<usize> = count
        .iter()
        .filter(|(k, _)| k.starts_with("syn8-"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(large, vec![1; 60], "the large source is read exactly once");
    let small: Vec<usize> = count
        .iter()
        .filter(|(k, _)| k.starts_with("syn7-"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(small.len(), 5);
    assert!(
        small.iter().all(|&c| c >= 5),
        "the small source repeats: {small:?}"
    );
}

#[test]
fn split_keeps_all_visits_of_an_object_on_one_side() {
    let run = |keep| {
        let c = LoaderConfig {
            split: Some(SplitFilter {
                keep,
                val_fraction: 0.3,
                seed: 4,
            }),
            ..cfg()
        };
        let l = Loader::new(vec![spec("a", 1.0, syn(9, 5, 12, 3))], c).unwrap();
        let got = drain(l);
        (ids(&got), got)
    };
    let (train, _) = run(Split::Train);
    let (val, val_batches) = run(Split::Validation);
    let t: BTreeSet<_> = train.iter().cloned().collect();
    let v: BTreeSet<_> = val.iter().cloned().collect();
    assert!(t.is_disjoint(&v));
    assert_eq!(t.len() + v.len(), 20, "60 spectra, 3 visits each");
    assert_eq!(train.len(), 3 * t.len());
    assert_eq!(val.len(), 3 * v.len());
    assert!(
        !v.is_empty() && v.len() < 12,
        "{} validation objects",
        v.len()
    );
    let _ = val_batches;
}

#[test]
fn split_rejections_are_counted() {
    let c = LoaderConfig {
        split: Some(SplitFilter {
            keep: Split::Validation,
            val_fraction: 0.5,
            seed: 1,
        }),
        ..cfg()
    };
    let mut l = Loader::new(vec![spec("a", 1.0, syn(9, 4, 10, 1))], c).unwrap();
    let mut kept = 0;
    while let Some(b) = l.next_batch() {
        kept += b.batch_size;
    }
    let st = l.stats();
    assert_eq!(kept as u64 + st.rejected["other-split"], 40);
    assert!(st.problems.is_empty(), "{:?}", st.problems);
}

#[test]
fn rejected_spectra_are_counted_and_skipped() {
    let src = syn(10, 1, 6, 1);
    let mut spectra: Vec<_> = (0..6).map(|i| src.spectrum(0, i)).collect();
    spectra[2].flux.iter_mut().for_each(|f| *f = 0.0);
    let bad_id = spectra[2].id.clone();
    let mut l = Loader::new(
        vec![SourceSpec::new(
            "mem",
            1.0,
            Arc::new(MemorySource::new(spectra, 2)),
        )],
        cfg(),
    )
    .unwrap();
    let mut got = Vec::new();
    while let Some(b) = l.next_batch() {
        got.extend(b.ids);
    }
    assert_eq!(got.len(), 5);
    assert!(!got.contains(&bad_id));
    let st = l.stats();
    assert_eq!(st.rejected.get("no-positive-scale"), Some(&1));
    assert!(
        st.problems
            .iter()
            .any(|p| p.contains(&bad_id) && p.contains("no positive flux scale")),
        "{:?}",
        st.problems
    );
}

#[test]
fn unreadable_files_are_reported_and_never_hang_the_loader() {
    let bad = FileSource::new(vec![InputUnit::single(
        Format::SdssSpec,
        "/nonexistent/spec-0000-00000-0000.fits",
    )]);
    // Alone: the epoch yields nothing, the loader ends instead of spinning.
    let c = LoaderConfig {
        epochs: None,
        ..cfg()
    };
    let mut l = Loader::new(
        vec![SourceSpec::new("bad", 1.0, Arc::new(bad.clone()))],
        c.clone(),
    )
    .unwrap();
    assert!(l.next_batch().is_none());
    let st = l.stats();
    assert!(st.read_errors >= 1);
    assert!(
        st.problems
            .iter()
            .any(|p| p.contains("spec-0000-00000-0000.fits")),
        "{:?}",
        st.problems
    );
    // Mixed with a good source: the bad one drops out, the good one goes on.
    let c = LoaderConfig {
        epochs: Some(2),
        ..cfg()
    };
    let l = Loader::new(
        vec![
            SourceSpec::new("bad", 5.0, Arc::new(bad)),
            spec("good", 1.0, syn(11, 3, 7, 1)),
        ],
        c,
    )
    .unwrap();
    assert_eq!(ids(&drain(l)).len(), 42);
}

#[test]
fn sequential_mode_reads_each_spectrum_once_in_order() {
    let c = LoaderConfig {
        shuffle: false,
        bucketing: false,
        readers_per_source: 1,
        ..cfg()
    };
    let (a, b) = (syn(12, 3, 5, 1), syn(13, 2, 4, 1));
    let want: Vec<String> = (0..3)
        .flat_map(|u| (0..5).map(move |i| (u, i)))
        .map(|(u, i)| a.spectrum(u, i).id)
        .chain(
            (0..2)
                .flat_map(|u| (0..4).map(move |i| (u, i)))
                .map(|(u, i)| b.spectrum(u, i).id),
        )
        .collect();
    let l = Loader::new(vec![spec("a", 1.0, a), spec("b", 9.0, b)], c).unwrap();
    assert_eq!(ids(&drain(l)), want);
}

#[test]
fn token_budget_and_bucketing_in_the_loader() {
    let sources = || {
        vec![
            // Short (≈ 100–1500 px) and long (8 000–30 000 px) spectra mixed.
            spec("short", 1.0, syn(14, 8, 10, 1)),
            spec(
                "long",
                1.0,
                SyntheticSource::new(SyntheticConfig {
                    units: 4,
                    per_unit: 5,
                    min_pixels: 8000,
                    max_pixels: 30000,
                    seed: 15,
                    ..SyntheticConfig::default()
                }),
            ),
        ]
    };
    let budget = 1024;
    let c = LoaderConfig {
        batch: BatchSize::Tokens {
            max_tokens: budget,
            max_spectra: 64,
        },
        pool_size: 100,
        ..cfg()
    };
    let mut l = Loader::new(sources(), c.clone()).unwrap();
    while let Some(b) = l.next_batch() {
        assert!(
            b.batch_size * b.max_patches <= budget || b.batch_size == 1,
            "{} × {}",
            b.batch_size,
            b.max_patches
        );
        assert!(
            (b.real_token_fraction() - b.real_patches() as f64 / b.patch_slots() as f64).abs()
                < 1e-12
        );
    }
    let with = l.stats().real_token_fraction();
    let c = LoaderConfig {
        bucketing: false,
        batch: BatchSize::Fixed { spectra: 16 },
        ..c
    };
    let without = drain_stats(Loader::new(sources(), c.clone()).unwrap());
    let bucketed = drain_stats(
        Loader::new(
            sources(),
            LoaderConfig {
                bucketing: true,
                ..c
            },
        )
        .unwrap(),
    );
    assert!(with > 0.8, "token budget with bucketing: {with}");
    assert!(
        bucketed > without + 0.2,
        "fixed 16: with bucketing {bucketed}, without {without}"
    );
}

fn drain_stats(mut l: Loader) -> f64 {
    while l.next_batch().is_some() {}
    l.stats().real_token_fraction()
}
