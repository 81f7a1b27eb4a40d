//! What to generate: the configuration, each object's class and surveys,
//! and the files ("units") the observations are grouped into.

use crate::objects::ObjectClass;
use crate::observe::ObserveConfig;
use crate::rng::{choose, stream, Purpose};
use crate::survey::MockSurvey;
use crate::{Error, Result};

use rand::Rng;

/// Everything that decides a mock survey's content. Two runs with equal
/// configurations write identical bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MockConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Number of objects (each observed by one or more surveys).
    pub count: u64,
    /// Relative weight of each survey (in [`MockSurvey::ALL`] order) as an
    /// object's primary survey. A survey of weight 0 is never used.
    pub fractions: [f64; 5],
    /// Probability that an object is also observed by a second survey able
    /// to observe it (cross-survey pairs share id and labels).
    pub cross_fraction: f64,
    /// Target fibres per DESI coadd file.
    pub desi_targets_per_file: usize,
    /// Sky fibres per DESI coadd file (`TARGETID < 0`).
    pub desi_sky_per_file: usize,
    /// Write the survey FITS files.
    pub fits: bool,
    /// Write spectok HDF5 shards of every spectrum.
    pub shards: bool,
    /// Spectra per shard file.
    pub shard_size: usize,
    /// gzip-compress FITS files (`.fits.gz`).
    pub gzip: bool,
    /// Noise and visit settings.
    pub observe: ObserveConfig,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            seed: 1,
            count: 1000,
            fractions: [0.3, 0.3, 0.15, 0.1, 0.15],
            cross_fraction: 0.1,
            desi_targets_per_file: 500,
            desi_sky_per_file: 10,
            fits: true,
            shards: true,
            shard_size: 5000,
            gzip: false,
            observe: ObserveConfig::default(),
        }
    }
}

impl MockConfig {
    /// The committed demo set (`data/demo`): 80 objects, 87 spectra across
    /// the five surveys (SDSS 25, DESI 38 in three coadds incl. 3 sky
    /// fibres, APOGEE 9, GALAH 4, LAMOST 11) as gzip-compressed FITS plus
    /// one shard of everything, ≈ 4.7 MB. The size limit (5 MB) is what
    /// bounds the count: a native-grid spectrum with realistic noise costs
    /// ≈ 30 KB compressed as FITS and ≈ 24 KB more in the shard.
    pub fn demo() -> Self {
        MockConfig {
            seed: 20_250_101,
            count: 130,
            fractions: [0.32, 0.34, 0.08, 0.05, 0.21],
            cross_fraction: 0.12,
            desi_targets_per_file: 12,
            desi_sky_per_file: 1,
            fits: true,
            shards: false,
            shard_size: 1000,
            gzip: true,
            observe: ObserveConfig {
                quantize: 4.0,
                max_visits: 2,
            },
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.fractions.iter().any(|f| !f.is_finite() || *f < 0.0)
            || self.fractions.iter().sum::<f64>() <= 0.0
        {
            return Err(Error::Config(format!(
                "survey fractions must be ≥ 0 and not all 0, got {:?}",
                self.fractions
            )));
        }
        if !(0.0..=1.0).contains(&self.cross_fraction) {
            return Err(Error::Config(format!(
                "cross fraction must be in [0, 1], got {}",
                self.cross_fraction
            )));
        }
        if self.desi_targets_per_file == 0 || self.shard_size == 0 {
            return Err(Error::Config(
                "DESI targets per file and shard size must be ≥ 1".into(),
            ));
        }
        if self.observe.max_visits == 0 {
            return Err(Error::Config("max visits must be ≥ 1".into()));
        }
        if !self.fits && !self.shards {
            return Err(Error::Config(
                "nothing to write: neither FITS files nor shards".into(),
            ));
        }
        if self.count >= 1_000_000_000_000 {
            return Err(Error::Config("count must be below 10^12".into()));
        }
        Ok(())
    }

    /// The fraction of `survey`.
    pub fn fraction(&self, survey: MockSurvey) -> f64 {
        self.fractions[survey.code() as usize]
    }
}

/// One object of the plan: its class and the surveys observing it
/// (primary first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedObject {
    pub index: u64,
    pub class: ObjectClass,
    pub surveys: Vec<MockSurvey>,
}

/// A group of observations written together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unit {
    /// One SDSS `spec-PLATE-MJD-FIBER` file.
    Sdss {
        object: u64,
        plate: u32,
        mjd: u32,
        fiber: u32,
    },
    /// One DESI coadd (+ redrock) file: targets, then `sky` sky fibres.
    Desi {
        file: u64,
        tile: u32,
        petal: u32,
        objects: Vec<u64>,
        sky: usize,
    },
    /// One APOGEE star (`apStar` + `aspcapStar`).
    Apogee { object: u64, field: u32 },
    /// One GALAH star (4 CCD files).
    Galah { object: u64, group: u32 },
    /// One LAMOST LRS file.
    Lamost {
        object: u64,
        lmjd: u32,
        plan: u32,
        spid: u32,
        fiber: u32,
    },
}

impl Unit {
    /// The survey of the unit.
    pub fn survey(&self) -> MockSurvey {
        match self {
            Unit::Sdss { .. } => MockSurvey::Sdss,
            Unit::Desi { .. } => MockSurvey::Desi,
            Unit::Apogee { .. } => MockSurvey::Apogee,
            Unit::Galah { .. } => MockSurvey::Galah,
            Unit::Lamost { .. } => MockSurvey::LamostLrs,
        }
    }

    /// The objects observed in the unit.
    pub fn objects(&self) -> Vec<u64> {
        match self {
            Unit::Desi { objects, .. } => objects.clone(),
            Unit::Sdss { object, .. }
            | Unit::Apogee { object, .. }
            | Unit::Galah { object, .. }
            | Unit::Lamost { object, .. } => vec![*object],
        }
    }

    /// Number of spectra the unit holds (DESI sky fibres included).
    pub fn spectra(&self) -> usize {
        match self {
            Unit::Desi { objects, sky, .. } => objects.len() + sky,
            _ => 1,
        }
    }
}

/// The full plan of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub objects: Vec<PlannedObject>,
    pub units: Vec<Unit>,
}

impl Plan {
    /// Number of spectra (observations, DESI sky fibres included).
    pub fn spectra(&self) -> usize {
        self.units.iter().map(Unit::spectra).sum()
    }
}

/// Class mix of objects whose primary survey is `s`: (galaxy, QSO, star).
fn class_mix(s: MockSurvey) -> [f64; 3] {
    match s {
        MockSurvey::Sdss => [0.55, 0.2, 0.25],
        MockSurvey::Desi => [0.6, 0.2, 0.2],
        MockSurvey::LamostLrs => [0.1, 0.05, 0.85],
        MockSurvey::Apogee | MockSurvey::Galah => [0.0, 0.0, 1.0],
    }
}

/// Weight of `s` as the second survey of an object of `class`.
fn cross_weight(s: MockSurvey, class: ObjectClass) -> f64 {
    match (class, s) {
        (ObjectClass::Star, MockSurvey::Sdss | MockSurvey::Desi) => 0.5,
        (ObjectClass::Star, _) => 1.0,
        (_, MockSurvey::Sdss | MockSurvey::Desi) => 1.0,
        (_, MockSurvey::LamostLrs) => 0.2,
        _ => 0.0,
    }
}

/// Plans `cfg`: each object's class and surveys, and the files.
pub fn plan(cfg: &MockConfig) -> Result<Plan> {
    cfg.validate()?;
    let mut objects = Vec::with_capacity(cfg.count as usize);
    for index in 0..cfg.count {
        let mut rng = stream(cfg.seed, index, Purpose::Plan, 0);
        let primary = MockSurvey::ALL[choose(&mut rng, &cfg.fractions)];
        let class = [ObjectClass::Galaxy, ObjectClass::Qso, ObjectClass::Star]
            [choose(&mut rng, &class_mix(primary))];
        let mut surveys = vec![primary];
        if rng.random::<f64>() < cfg.cross_fraction {
            let w: Vec<f64> = MockSurvey::ALL
                .iter()
                .map(|&s| {
                    if s == primary || cfg.fraction(s) <= 0.0 || !s.observes(class) {
                        0.0
                    } else {
                        cross_weight(s, class)
                    }
                })
                .collect();
            if w.iter().any(|x| *x > 0.0) {
                surveys.push(MockSurvey::ALL[choose(&mut rng, &w)]);
            }
        }
        objects.push(PlannedObject {
            index,
            class,
            surveys,
        });
    }

    let mut units = Vec::new();
    let mut seq = [0u64; 5];
    let mut open_desi: Option<usize> = None;
    let mut desi_files = 0u64;
    for o in &objects {
        for &s in &o.surveys {
            let j = seq[s.code() as usize];
            seq[s.code() as usize] += 1;
            match s {
                MockSurvey::Sdss => units.push(Unit::Sdss {
                    object: o.index,
                    plate: 9000 + (j / 1000) as u32,
                    mjd: 59000 + (j / 1000) as u32,
                    fiber: (j % 1000) as u32 + 1,
                }),
                MockSurvey::Desi => {
                    let full = open_desi
                        .and_then(|u| match &units[u] {
                            Unit::Desi { objects, .. } => {
                                Some(objects.len() >= cfg.desi_targets_per_file)
                            }
                            _ => None,
                        })
                        .unwrap_or(true);
                    if full {
                        units.push(Unit::Desi {
                            file: desi_files,
                            tile: 90_000 + (desi_files / 10) as u32,
                            petal: (desi_files % 10) as u32,
                            objects: Vec::new(),
                            sky: cfg.desi_sky_per_file,
                        });
                        desi_files += 1;
                        open_desi = Some(units.len() - 1);
                    }
                    if let Some(Unit::Desi { objects, .. }) =
                        open_desi.and_then(|u| units.get_mut(u))
                    {
                        objects.push(o.index);
                    }
                }
                MockSurvey::Apogee => units.push(Unit::Apogee {
                    object: o.index,
                    field: (j / 1000) as u32,
                }),
                MockSurvey::Galah => units.push(Unit::Galah {
                    object: o.index,
                    group: (j / 1000) as u32,
                }),
                MockSurvey::LamostLrs => units.push(Unit::Lamost {
                    object: o.index,
                    lmjd: 60000 + (j / 4000) as u32,
                    plan: (j / 4000) as u32,
                    spid: ((j % 4000) / 250) as u32 + 1,
                    fiber: (j % 250) as u32 + 1,
                }),
            }
        }
    }
    Ok(Plan { objects, units })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_respects_fractions_and_classes() {
        let cfg = MockConfig {
            count: 4000,
            ..MockConfig::default()
        };
        let p = plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.objects.len(), 4000);
        let mut primary = [0usize; 5];
        let mut cross = 0;
        for o in &p.objects {
            primary[o.surveys[0].code() as usize] += 1;
            cross += usize::from(o.surveys.len() > 1);
            for s in &o.surveys {
                assert!(s.observes(o.class), "{s} cannot observe {:?}", o.class);
            }
        }
        for (k, f) in cfg.fractions.iter().enumerate() {
            let got = primary[k] as f64 / 4000.0;
            assert!((got - f).abs() < 0.03, "survey {k}: {got} vs {f}");
        }
        assert!((cross as f64 / 4000.0 - 0.1).abs() < 0.02);
        let spectra: usize = p.objects.iter().map(|o| o.surveys.len()).sum();
        let sky: usize = p
            .units
            .iter()
            .map(|u| match u {
                Unit::Desi { sky, .. } => *sky,
                _ => 0,
            })
            .sum();
        assert_eq!(p.spectra(), spectra + sky);
    }

    #[test]
    fn zero_fraction_surveys_are_never_used() {
        let cfg = MockConfig {
            count: 500,
            fractions: [0.0, 0.0, 1.0, 0.0, 0.0],
            cross_fraction: 1.0,
            ..MockConfig::default()
        };
        let p = plan(&cfg).unwrap_or_else(|e| panic!("{e}"));
        assert!(p
            .objects
            .iter()
            .all(|o| o.surveys == vec![MockSurvey::Apogee]));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let bad = MockConfig {
            fractions: [0.0; 5],
            ..MockConfig::default()
        };
        assert!(plan(&bad).is_err());
        let bad = MockConfig {
            cross_fraction: 2.0,
            ..MockConfig::default()
        };
        assert!(plan(&bad).is_err());
    }
}
