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

use crate::objects::{sample_object, MockObject};
use crate::observe::{labels_for, observe, observe_sky, Observation};
use crate::plan::{plan, MockConfig, Plan, Unit};
use crate::survey::MockSurvey;
use crate::write::{self, Target};
use crate::{Error, Result, GENERATOR};

/// Spectra generated between two shard appends (bounds memory).
const BATCH_SPECTRA: usize = 512;

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
pub fn generate(cfg: &MockConfig, root: &Path, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<Summary> {
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
    let mut shard: Option<ShardWriter> = None;
    let mut shard_count = 0u64;
    let mut rows: BTreeMap<u64, String> = BTreeMap::new();
    let mut done = 0u64;

    let mut start = 0;
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
        for (u, out) in plan.units[start..end].iter().zip(outs) {
            let out = out?;
            summary.spectra[u.survey().code() as usize] += u.spectra() as u64;
            summary.fits_files += out.files as u64;
            rows.extend(out.rows);
            if cfg.shards {
                for s in &out.spectra {
                    if shard.as_ref().is_some_and(|w| w.len() >= cfg.shard_size) {
                        if let Some(w) = shard.take() {
                            w.finish()?;
                        }
                    }
                    if shard.is_none() {
                        let path = root.join("shards").join(format!("mock-{shard_count:05}.h5"));
                        create_dir(path.parent())?;
                        shard = Some(ShardWriter::create(&path)?);
                        shard_count += 1;
                    }
                    if let Some(w) = shard.as_mut() {
                        w.write(s)?;
                    }
                }
            }
        }
        done += n as u64;
        progress(done.min(total), total);
        start = end;
    }
    if let Some(w) = shard.take() {
        w.finish()?;
    }
    summary.shards = shard_count;
    write_catalog(root, &rows)?;
    Ok(summary)
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
        surveys.iter().map(|s| s.name()).collect::<Vec<_>>().join(";"),
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

/// Generates, writes and converts one unit.
fn run_unit(cfg: &MockConfig, plan: &Plan, root: &Path, unit: &Unit) -> Result<UnitOutput> {
    let t = Target {
        root,
        gzip: cfg.gzip,
        seed: cfg.seed,
        quantize: cfg.observe.quantize,
    };
    let survey = unit.survey();
    let objs: Vec<MockObject> = unit
        .objects()
        .par_iter()
        .map(|&i| object_of(cfg, plan, i).ok_or_else(|| missing(i)))
        .collect::<Result<_>>()?;
    let obs: Vec<Observation> = objs.par_iter().map(|o| observe(o, survey, cfg.seed, &cfg.observe)).collect();
    let mut rows = Vec::new();
    for o in &objs {
        if let Some(p) = plan.objects.get(o.index as usize) {
            if p.surveys.first() == Some(&survey) {
                rows.push((o.index, catalog_row(o, &p.surveys)));
            }
        }
    }
    let mark = marker(cfg.seed);
    let ext = if cfg.gzip { ".fits.gz" } else { ".fits" };
    let mut out = UnitOutput {
        files: 0,
        spectra: Vec::new(),
        rows,
    };
    let single = |rel: PathBuf, hdu: &str, row: Option<u64>, o: &MockObject, ob: &Observation| {
        ob.to_spectrum(
            labels_for(o, ob, &mark),
            Source {
                file: rel,
                hdu: hdu.into(),
                row,
            },
        )
    };
    match unit {
        Unit::Sdss { plate, mjd, fiber, .. } => {
            let (o, ob) = (&objs[0], &obs[0]);
            let rel = if cfg.fits {
                out.files += 1;
                write::sdss(&t, *plate, *mjd, *fiber, o, ob)?
            } else {
                PathBuf::from(format!("sdss/{plate:04}/spec-{plate:04}-{mjd:05}-{fiber:04}{ext}"))
            };
            if cfg.shards {
                out.spectra.push(single(rel, "COADD", None, o, ob));
            }
        }
        Unit::Desi {
            file, tile, petal, sky, ..
        } => {
            let skies: Vec<Observation> = (0..*sky)
                .map(|k| {
                    let id = -(1_000_000 + (*file as i64) * 1000 + k as i64);
                    observe_sky(survey, id, cfg.seed, file * 1000 + k as u64, &cfg.observe)
                })
                .collect();
            let mut fibres: Vec<write::Fibre> = objs.iter().zip(&obs).map(|(o, ob)| (Some(o), ob)).collect();
            fibres.extend(skies.iter().map(|ob| (None, ob)));
            let rel = if cfg.fits {
                out.files += 2;
                write::desi(&t, *tile, *petal, &fibres)?.0
            } else {
                PathBuf::from(format!("desi/coadd-{petal}-{tile}-thru20250101{ext}"))
            };
            if cfg.shards {
                for (row, (o, ob)) in fibres.iter().enumerate() {
                    let src = Source {
                        file: rel.clone(),
                        hdu: "B_FLUX".into(),
                        row: Some(row as u64),
                    };
                    let s = match o {
                        Some(o) => ob.to_spectrum(labels_for(o, ob, &mark), src),
                        None => {
                            let mut l = Labels {
                                redshift_warning: Some(1),
                                ..Labels::default()
                            };
                            l.text.insert("objtype".into(), "SKY".into());
                            l.text.insert("mock".into(), mark.clone());
                            ob.to_spectrum(l, src)
                        }
                    };
                    out.spectra.push(s);
                }
            }
        }
        Unit::Apogee { field, .. } => {
            let (o, ob) = (&objs[0], &obs[0]);
            let rel = if cfg.fits {
                out.files += 2;
                write::apogee(&t, *field, o, ob)?.0
            } else {
                PathBuf::from(format!("apogee/mock{field:03}/apStar-r6-{}{ext}", o.id))
            };
            if cfg.shards {
                let mut s = single(rel, "1", Some(0), o, ob);
                if let Some(p) = o.star {
                    s.labels.extra.insert("vhelio".into(), p.rv);
                }
                out.spectra.push(s);
            }
        }
        Unit::Galah { group, .. } => {
            let (o, ob) = (&objs[0], &obs[0]);
            let rel = if cfg.fits {
                out.files += 4;
                write::galah(&t, *group, o, ob)?.into_iter().next().unwrap_or_default()
            } else {
                PathBuf::from(format!("galah/{group:04}/{}1{ext}", o.id))
            };
            if cfg.shards {
                out.spectra.push(single(rel, "0", None, o, ob));
            }
        }
        Unit::Lamost {
            lmjd, plan: p, spid, fiber, ..
        } => {
            let (o, ob) = (&objs[0], &obs[0]);
            let rel = if cfg.fits {
                out.files += 1;
                write::lamost(&t, *lmjd, *p, *spid, *fiber, o, ob)?
            } else {
                PathBuf::from(format!(
                    "lamost/MOCK{p:05}/spec-{lmjd}-MOCK{p:05}_sp{spid:02}-{fiber:03}{ext}"
                ))
            };
            if cfg.shards {
                out.spectra.push(single(rel, "COADD", None, o, ob));
            }
        }
    }
    Ok(out)
}
