//! Runs a whole mock survey: plans it, generates and writes the units in
//! parallel (rayon), appends every spectrum to shards in plan order, and
//! writes the object catalogue `mock-objects.csv`.
//!
//! Output layout under the root: `sdss/PLATE/spec-*.fits`,
//! `desi/coadd-*.fits` + `desi/redrock-*.fits`,
//! `apogee/FIELD/apStar-*.fits` + `aspcapStar-*.fits`,
//! `galah/GROUP/<sobject_id><ccd>.fits`, `lamost/PLAN/spec-*.fits` (all
//! `.fits.gz` when compressing), `shards/mock-NNNNN.h5` and
//! `mock-objects.csv`. Paths recorded in shards and the catalogue are
//! relative to the root, so a run's bytes do not depend on where it is
//! written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use spectok_io::shard::ShardWriter;
use spectok_io::{Labels, Source, Spectrum};

use crate::objects::{object_id, sample_object, MockObject};
use crate::observe::{labels_for, observe, observe_sky, Observation};
use crate::plan::{plan, MockConfig, Plan, Unit};
use crate::survey::MockSurvey;
use crate::write::{self, Target};
use crate::{Error, Result, GENERATOR};

/// Spectra generated between two shard appends (bounds memory).
pub const BATCH_SPECTRA: usize = 512;

/// What a run wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub objects: u64,
    /// Spectra per survey (in [`MockSurvey::ALL`] order), DESI sky fibres
    /// included.
    pub spectra: [u64; 5],
    /// FITS files written.
    pub fits_files: u64,
    /// Shard files written.
    pub shards: u64,
}

impl Summary {
    /// Total spectra.
    pub fn total_spectra(&self) -> u64 {
        self.spectra.iter().sum()
    }
}

/// What one unit produced.
struct UnitOutput {
    files: usize,
    spectra: Vec<Spectrum>,
    /// Catalogue rows of the objects whose primary survey this unit is.
    rows: Vec<(u64, String)>,
}

/// The marker stored in every shard spectrum's `text["mock"]`.
fn marker(seed: u64) -> String {
    format!("{GENERATOR} seed {seed}: {}", crate::DISCLAIMER)
}

/// Number of threads the generator runs on (rayon's pool; set
/// `RAYON_NUM_THREADS` to change it).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Generates the mock survey `cfg` under `root`. `progress(done, total)`
/// is called with spectra counts as batches complete.
///
/// Units are generated and their FITS files written in parallel, one batch
/// of about [`BATCH_SPECTRA`] spectra at a time; a writer thread appends
/// each finished batch to the shards in plan order while the next batch is
/// generated.
pub fn generate(
    cfg: &MockConfig,
    root: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Summary> {
    let plan = plan(cfg)?;
    std::fs::create_dir_all(root).map_err(|source| Error::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let total = plan.spectra() as u64;
    let mut summary = Summary {
        objects: cfg.count,
        ..Summary::default()
    };
    let mut rows: BTreeMap<u64, String> = BTreeMap::new();

    let shards = std::thread::scope(|scope| -> Result<u64> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Spectrum>>(2);
        let writer = cfg
            .shards
            .then(|| scope.spawn(move || write_shards(rx, root, cfg.shard_size)));
        let mut done = 0u64;
        let mut start = 0;
        let mut failed = None;
        while start < plan.units.len() {
            let mut end = start;
            let mut n = 0;
            while end < plan.units.len() && (n < BATCH_SPECTRA || end == start) {
                n += plan.units[end].spectra();
                end += 1;
            }
            let outs: Vec<Result<UnitOutput>> = plan.units[start..end]
                .par_iter()
                .map(|u| run_unit(cfg, &plan, root, u))
                .collect();
            let mut batch = Vec::with_capacity(n);
            for (u, out) in plan.units[start..end].iter().zip(outs) {
                match out {
                    Ok(out) => {
                        summary.spectra[u.survey().code() as usize] += u.spectra() as u64;
                        summary.fits_files += out.files as u64;
                        rows.extend(out.rows);
                        batch.extend(out.spectra);
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if failed.is_some() {
                break;
            }
            // A closed channel means the writer stopped on an error, which
            // its join below reports.
            if writer.is_some() && tx.send(batch).is_err() {
                break;
            }
            done += n as u64;
            progress(done.min(total), total);
            start = end;
        }
        drop(tx);
        let shards = match writer {
            Some(h) => h
                .join()
                .map_err(|_| Error::Config("the shard writer thread panicked".into()))??,
            None => 0,
        };
        match failed {
            Some(e) => Err(e),
            None => Ok(shards),
        }
    })?;
    summary.shards = shards;
    write_catalog(root, &rows)?;
    Ok(summary)
}

/// Appends the batches from `rx` to `shards/mock-NNNNN.h5` under `root`,
/// `size` spectra per shard. Returns the number of shards.
fn write_shards(
    rx: std::sync::mpsc::Receiver<Vec<Spectrum>>,
    root: &Path,
    size: usize,
) -> Result<u64> {
    let mut shard: Option<ShardWriter> = None;
    let mut count = 0u64;
    for batch in rx {
        for s in &batch {
            if shard.as_ref().is_some_and(|w| w.len() >= size) {
                if let Some(w) = shard.take() {
                    w.finish()?;
                }
            }
            if shard.is_none() {
                let path = root.join("shards").join(format!("mock-{count:05}.h5"));
                create_dir(path.parent())?;
                shard = Some(ShardWriter::create(&path)?);
                count += 1;
            }
            if let Some(w) = shard.as_mut() {
                w.write(s)?;
            }
        }
    }
    if let Some(w) = shard.take() {
        w.finish()?;
    }
    Ok(count)
}

fn create_dir(dir: Option<&Path>) -> Result<()> {
    if let Some(d) = dir {
        std::fs::create_dir_all(d).map_err(|source| Error::Io {
            path: d.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Header of `mock-objects.csv`.
pub const CATALOG_HEADER: &str =
    "index,id,class,subclass,z,ra,dec,mag,teff,logg,fe_h,alpha_m,vdisp,halpha_ew,surveys";

fn write_catalog(root: &Path, rows: &BTreeMap<u64, String>) -> Result<()> {
    let mut text = String::with_capacity(rows.len() * 120 + 100);
    text.push_str(CATALOG_HEADER);
    text.push('\n');
    for r in rows.values() {
        text.push_str(r);
        text.push('\n');
    }
    let path = root.join("mock-objects.csv");
    std::fs::write(&path, text).map_err(|source| Error::Io { path, source })
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x}")).unwrap_or_default()
}

/// One catalogue line for `obj` observed by `surveys`.
fn catalog_row(obj: &MockObject, surveys: &[MockSurvey]) -> String {
    let mut s = String::new();
    let p = obj.star;
    let _ = write!(
        s,
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        obj.index,
        obj.id,
        obj.class.name(),
        obj.subclass,
        obj.z,
        obj.ra,
        obj.dec,
        obj.mag,
        opt(p.map(|p| p.teff)),
        opt(p.map(|p| p.logg)),
        opt(p.map(|p| p.fe_h)),
        opt(p.map(|p| p.alpha_m)),
        opt(obj.vdisp),
        opt(obj.halpha_ew),
        surveys
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(";"),
    );
    s
}

/// Samples object `index` of the plan.
pub fn object_of(cfg: &MockConfig, plan: &Plan, index: u64) -> Option<MockObject> {
    let o = plan.objects.get(index as usize)?;
    Some(sample_object(cfg.seed, index, o.class, *o.surveys.first()?))
}

fn missing(index: u64) -> Error {
    Error::Config(format!("plan has no object {index}"))
}

/// One spectrum of a unit: the object (`None` for a DESI sky fibre) and
/// its observation.
pub type Observed = (Option<MockObject>, Observation);

/// The observations of `unit`, in file order (DESI: targets, then sky
/// fibres). Deterministic in the configuration alone.
pub fn unit_observations(cfg: &MockConfig, plan: &Plan, unit: &Unit) -> Result<Vec<Observed>> {
    let survey = unit.survey();
    let mut out: Vec<Observed> = unit
        .objects()
        .par_iter()
        .map(|&i| {
            let o = object_of(cfg, plan, i).ok_or_else(|| missing(i))?;
            let ob = observe(&o, survey, cfg.seed, &cfg.observe);
            Ok((Some(o), ob))
        })
        .collect::<Result<_>>()?;
    if let Unit::Desi { file, sky, .. } = unit {
        for k in 0..*sky as u64 {
            let id = -(1_000_000 + (*file as i64) * 1000 + k as i64);
            out.push((
                None,
                observe_sky(survey, id, cfg.seed, file * 1000 + k, &cfg.observe),
            ));
        }
    }
    Ok(out)
}

/// The file holding `unit`'s spectra (DESI: the coadd; APOGEE: the
/// `apStar`; GALAH: the CCD 1 file), relative to the output root.
pub fn unit_file(cfg: &MockConfig, plan: &Plan, unit: &Unit) -> PathBuf {
    let ext = if cfg.gzip { ".fits.gz" } else { ".fits" };
    let id = |o: &u64| {
        plan.objects
            .get(*o as usize)
            .map(|_| object_id(cfg.seed, *o))
            .unwrap_or(0)
    };
    PathBuf::from(match unit {
        Unit::Sdss {
            plate, mjd, fiber, ..
        } => format!("sdss/{plate:04}/spec-{plate:04}-{mjd:05}-{fiber:04}{ext}"),
        Unit::Desi { tile, petal, .. } => {
            format!("desi/coadd-{petal}-{tile}-thru{}{ext}", write::DESI_NIGHT)
        }
        Unit::Apogee { object, field } => {
            format!("apogee/mock{field:03}/apStar-r6-{}{ext}", id(object))
        }
        Unit::Galah { object, group } => format!("galah/{group:04}/{}1{ext}", id(object)),
        Unit::Lamost {
            lmjd,
            plan,
            spid,
            fiber,
            ..
        } => format!("lamost/MOCK{plan:05}/spec-{lmjd}-MOCK{plan:05}_sp{spid:02}-{fiber:03}{ext}"),
    })
}

/// The spectra of `unit` as spectok-io [`Spectrum`]s, as the shards hold
/// them: sources point into the unit's file, labels are the objects' full
/// truth ([`labels_for`]).
pub fn unit_spectra(cfg: &MockConfig, plan: &Plan, unit: &Unit, obs: &[Observed]) -> Vec<Spectrum> {
    let file = unit_file(cfg, plan, unit);
    let mark = marker(cfg.seed);
    let (hdu, rows) = match unit {
        Unit::Sdss { .. } | Unit::Lamost { .. } => ("COADD", false),
        Unit::Desi { .. } => ("B_FLUX", true),
        Unit::Apogee { .. } => ("1", true),
        Unit::Galah { .. } => ("0", false),
    };
    obs.iter()
        .enumerate()
        .map(|(k, (o, ob))| {
            let source = Source {
                file: file.clone(),
                hdu: hdu.into(),
                row: rows.then_some(k as u64),
            };
            let labels = match o {
                Some(o) => {
                    let mut l = labels_for(o, ob, &mark);
                    if let (MockSurvey::Apogee, Some(p)) = (ob.survey, o.star) {
                        l.extra.insert("vhelio".into(), p.rv);
                    }
                    l
                }
                None => {
                    let mut l = Labels {
                        redshift_warning: Some(1),
                        ..Labels::default()
                    };
                    l.text.insert("objtype".into(), "SKY".into());
                    l.text.insert("mock".into(), mark.clone());
                    l
                }
            };
            ob.to_spectrum(labels, source)
        })
        .collect()
}

/// Every spectrum of the mock survey `cfg`, in memory and in shard order
/// (no files are written).
pub fn spectra(cfg: &MockConfig) -> Result<Vec<Spectrum>> {
    let plan = plan(cfg)?;
    let mut out = Vec::with_capacity(plan.spectra());
    for u in &plan.units {
        let obs = unit_observations(cfg, &plan, u)?;
        out.extend(unit_spectra(cfg, &plan, u, &obs));
    }
    Ok(out)
}

/// Generates, writes and converts one unit.
fn run_unit(cfg: &MockConfig, plan: &Plan, root: &Path, unit: &Unit) -> Result<UnitOutput> {
    let t = Target {
        root,
        gzip: cfg.gzip,
        seed: cfg.seed,
        quantize: cfg.observe.quantize,
    };
    let survey = unit.survey();
    let obs = unit_observations(cfg, plan, unit)?;
    let mut rows = Vec::new();
    for o in obs.iter().filter_map(|(o, _)| o.as_ref()) {
        if let Some(p) = plan.objects.get(o.index as usize) {
            if p.surveys.first() == Some(&survey) {
                rows.push((o.index, catalog_row(o, &p.surveys)));
            }
        }
    }
    let mut files = 0;
    if cfg.fits {
        let first = obs
            .first()
            .ok_or_else(|| Error::Config("empty unit".into()))?;
        let single = || {
            first
                .0
                .as_ref()
                .map(|o| (o, &first.1))
                .ok_or_else(|| Error::Config("unit without object".into()))
        };
        let written = match unit {
            Unit::Sdss {
                plate, mjd, fiber, ..
            } => {
                let (o, ob) = single()?;
                vec![write::sdss(&t, *plate, *mjd, *fiber, o, ob)?]
            }
            Unit::Desi { tile, petal, .. } => {
                let fibres: Vec<write::Fibre> =
                    obs.iter().map(|(o, ob)| (o.as_ref(), ob)).collect();
                let (a, b) = write::desi(&t, *tile, *petal, &fibres)?;
                vec![a, b]
            }
            Unit::Apogee { field, .. } => {
                let (o, ob) = single()?;
                let (a, b) = write::apogee(&t, *field, o, ob)?;
                vec![a, b]
            }
            Unit::Galah { group, .. } => {
                let (o, ob) = single()?;
                write::galah(&t, *group, o, ob)?
            }
            Unit::Lamost {
                lmjd,
                plan: p,
                spid,
                fiber,
                ..
            } => {
                let (o, ob) = single()?;
                vec![write::lamost(&t, *lmjd, *p, *spid, *fiber, o, ob)?]
            }
        };
        debug_assert_eq!(written.first(), Some(&unit_file(cfg, plan, unit)));
        files = written.len();
    }
    let spectra = if cfg.shards {
        unit_spectra(cfg, plan, unit, &obs)
    } else {
        Vec::new()
    };
    Ok(UnitOutput {
        files,
        spectra,
        rows,
    })
}
