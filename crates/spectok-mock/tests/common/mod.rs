//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;

use spectok_io::Survey;
use spectok_mock::generate::{unit_observations, Observed};
use spectok_mock::{plan, MockConfig, ObserveConfig};

/// A small configuration touching every survey, with several
/// cross-survey objects and multi-visit APOGEE stars.
pub fn small_config(seed: u64, count: u64) -> MockConfig {
    MockConfig {
        seed,
        count,
        fractions: [1.0, 1.0, 1.0, 0.8, 0.8],
        cross_fraction: 0.3,
        desi_targets_per_file: 5,
        desi_sky_per_file: 1,
        fits: true,
        shards: true,
        shard_size: 25,
        gzip: false,
        observe: ObserveConfig {
            quantize: 16.0,
            max_visits: 3,
        },
    }
}

/// Every observation of `cfg` by (survey, id).
pub fn expected(cfg: &MockConfig) -> HashMap<(Survey, String), Observed> {
    let p = plan(cfg).unwrap_or_else(|e| panic!("plan: {e}"));
    let mut map = HashMap::new();
    for u in &p.units {
        for (o, ob) in unit_observations(cfg, &p, u).unwrap_or_else(|e| panic!("observe: {e}")) {
            let key = (ob.survey.survey(), ob.id.to_string());
            assert!(
                map.insert(key.clone(), (o, ob)).is_none(),
                "duplicate {key:?}"
            );
        }
    }
    map
}
