//! Turning command-line inputs (files, directories, globs) into
//! [`InputUnit`]s: expansion, content detection, GALAH CCD grouping and
//! DESI redrock pairing all happen here, in one place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::{detect, Format};
use crate::reader::InputUnit;

/// File name endings looked at when a directory is walked. Files named
/// explicitly are always examined, whatever their name.
pub const SPECTRUM_FILE_ENDINGS: [&str; 10] = [
    ".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".h5", ".hdf5", ".hdf", ".he5",
];

/// The result of planning: units to read, and the inputs that cannot be
/// read with the reason for each.
#[derive(Debug, Default)]
pub struct Plan {
    pub units: Vec<InputUnit>,
    pub problems: Vec<Error>,
}

/// Expands inputs into a sorted, de-duplicated file list. A directory is
/// walked recursively (files with a [`SPECTRUM_FILE_ENDINGS`] ending); an
/// input that does not exist is treated as a glob pattern.
pub fn expand_inputs<S: AsRef<str>>(inputs: &[S]) -> (Vec<PathBuf>, Vec<Error>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for input in inputs {
        let input = input.as_ref();
        let p = Path::new(input);
        let meta = std::fs::metadata(p).ok();
        if meta.as_ref().is_some_and(|m| m.is_dir()) {
            match walk(p) {
                Ok(mut v) if !v.is_empty() => files.append(&mut v),
                Ok(_) => problems.push(Error::Input {
                    input: input.into(),
                    reason: "directory holds no FITS or HDF5 files".into(),
                }),
                Err(e) => problems.push(e),
            }
        } else if meta.is_some() {
            files.push(p.to_path_buf());
        } else if input.contains(['*', '?', '[']) {
            match glob::glob(input) {
                Ok(paths) => {
                    let mut v: Vec<PathBuf> = paths
                        .filter_map(|r| r.ok())
                        .filter(|p| p.is_file())
                        .collect();
                    if v.is_empty() {
                        problems.push(Error::Input {
                            input: input.into(),
                            reason: "pattern matches no file".into(),
                        });
                    }
                    v.sort();
                    files.append(&mut v);
                }
                Err(e) => problems.push(Error::Input {
                    input: input.into(),
                    reason: format!("bad pattern: {e}"),
                }),
            }
        } else {
            problems.push(Error::Input {
                input: input.into(),
                reason: "no such file or directory".into(),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut dirs = std::collections::HashMap::new();
    files.retain(|f| seen.insert(canonical(f, &mut dirs)));
    (files, problems)
}

/// `f.canonicalize()` (or `f` itself when that fails), resolving each
/// parent directory once: a file that is not a symbolic link is its
/// canonical directory joined with its name, so inputs from one directory
/// cost one `lstat` each instead of a `readlink` per path component.
fn canonical(f: &Path, dirs: &mut std::collections::HashMap<PathBuf, Option<PathBuf>>) -> PathBuf {
    let full = || f.canonicalize().unwrap_or_else(|_| f.to_path_buf());
    let (Some(parent), Some(name)) = (f.parent(), f.file_name()) else {
        return full();
    };
    let is_link = std::fs::symlink_metadata(f).map_or(true, |m| m.file_type().is_symlink());
    if is_link {
        return full();
    }
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = dirs
        .entry(parent.to_path_buf())
        .or_insert_with(|| parent.canonicalize().ok());
    match dir {
        Some(d) => d.join(name),
        None => full(),
    }
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| Error::Os {
            path: d.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| Error::Os {
                path: d.clone(),
                source,
            })?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if has_spectrum_ending(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn has_spectrum_ending(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    SPECTRUM_FILE_ENDINGS.iter().any(|e| name.ends_with(e))
}

/// GALAH per-CCD files are named `<sobject_id><ccd>.fits`: the star's id
/// and the CCD number 1–4.
pub fn galah_ccd_key(path: &Path) -> Option<(String, u8)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.split('.').next()?;
    if stem.len() < 2 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ccd = stem.as_bytes()[stem.len() - 1] - b'0';
    if !(1..=4).contains(&ccd) {
        return None;
    }
    Some((stem[..stem.len() - 1].to_string(), ccd))
}

/// The redrock file that belongs beside a DESI `coadd-X`/`spectra-X` file.
fn redrock_beside(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("coadd-")
        .or_else(|| name.strip_prefix("spectra-"))?;
    let cand = path.with_file_name(format!("redrock-{rest}"));
    cand.is_file().then_some(cand)
}

fn redrock_suffix(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    ["coadd-", "spectra-", "redrock-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .map(|s| s.to_string())
}

/// Plans how to read `inputs`: expands them, detects each file's layout
/// (or uses `format` for all), groups GALAH CCD files by star, pairs DESI
/// files with their redrock catalogue, and reports every input that
/// cannot be read.
pub fn plan_inputs<S: AsRef<str>>(inputs: &[S], format: Option<Format>) -> Plan {
    let (files, mut problems) = expand_inputs(inputs);
    // Detection reads each file's headers: in parallel, results in input
    // order.
    let formats: Vec<Result<Format>> = files
        .par_iter()
        .map(|f| format.map(Ok).unwrap_or_else(|| detect(f)))
        .collect();
    let mut detected: Vec<(PathBuf, Format)> = Vec::new();
    for (f, fmt) in files.into_iter().zip(formats) {
        match fmt {
            Ok(fmt) => detected.push((f, fmt)),
            Err(e) => problems.push(e),
        }
    }

    let redrocks: Vec<PathBuf> = detected
        .iter()
        .filter(|(_, f)| *f == Format::DesiRedrock)
        .map(|(p, _)| p.clone())
        .collect();
    let mut used_redrock = vec![false; redrocks.len()];
    let mut units = Vec::new();
    // GALAH: star id -> (position of first CCD in the input order, ccd -> file)
    let mut galah: BTreeMap<String, (usize, BTreeMap<u8, PathBuf>)> = BTreeMap::new();

    for (path, fmt) in &detected {
        match fmt {
            Format::DesiRedrock => {}
            Format::GalahCcd => match galah_ccd_key(path) {
                Some((star, ccd)) => {
                    let n = units.len();
                    let entry = galah.entry(star).or_insert_with(|| {
                        units.push(InputUnit {
                            format: Format::GalahCcd,
                            files: Vec::new(),
                            companions: Vec::new(),
                        });
                        (n, BTreeMap::new())
                    });
                    entry.1.insert(ccd, path.clone());
                }
                None => units.push(InputUnit::single(*fmt, path.clone())),
            },
            Format::DesiCoadd => {
                let mut unit = InputUnit::single(*fmt, path.clone());
                let suffix = redrock_suffix(path);
                let given = redrocks
                    .iter()
                    .position(|r| suffix.is_some() && redrock_suffix(r) == suffix)
                    .or_else(|| (suffix.is_none() && redrocks.len() == 1).then_some(0));
                if let Some(i) = given {
                    used_redrock[i] = true;
                    unit.companions.push(redrocks[i].clone());
                } else if let Some(r) = redrock_beside(path) {
                    unit.companions.push(r);
                }
                units.push(unit);
            }
            _ => units.push(InputUnit::single(*fmt, path.clone())),
        }
    }

    // Complete each GALAH star with the CCD files found beside the given ones.
    for (star, (pos, mut ccds)) in galah {
        if let Some(first) = ccds.values().next().cloned() {
            for ccd in 1..=4u8 {
                if ccds.contains_key(&ccd) {
                    continue;
                }
                let name = first
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(|n| n.replacen(&star, "", 1))
                    .unwrap_or_default();
                // name is now "<ccd><ext>"; swap the ccd digit.
                let ext = name.get(1..).unwrap_or("");
                let cand = first.with_file_name(format!("{star}{ccd}{ext}"));
                if cand.is_file() {
                    ccds.insert(ccd, cand);
                }
            }
        }
        units[pos].files = ccds.into_values().collect();
    }

    for (i, r) in redrocks.iter().enumerate() {
        if !used_redrock[i] {
            if let Err(e) = crate::reader::reader_for(Format::DesiRedrock, r) {
                problems.push(e);
            }
        }
    }
    for u in &units {
        if !u.format.has_spectra() {
            if let Err(e) = crate::reader::reader_for(u.format, u.main_file()) {
                problems.push(e);
            }
        }
    }
    units.retain(|u| u.format.has_spectra());
    Plan { units, problems }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_file_by_any_spelling_or_symbolic_link_is_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let a = sub.join("a.fits");
        let b = sub.join("b.fits");
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"y").unwrap();
        // A link to the file, a link to its directory, a dotted spelling.
        std::os::unix::fs::symlink(&a, dir.path().join("link.fits")).unwrap();
        std::os::unix::fs::symlink(&sub, dir.path().join("alias")).unwrap();
        // A hard link is a file of its own name (the RSS benchmark's 10×
        // input is made of them) and stays.
        std::fs::hard_link(&a, dir.path().join("hard.fits")).unwrap();
        let spell = |p: PathBuf| p.to_string_lossy().into_owned();
        let inputs = [
            spell(a.clone()),
            spell(dir.path().join("link.fits")),
            spell(dir.path().join("alias").join("a.fits")),
            spell(sub.join("..").join("sub").join("a.fits")),
            spell(b.clone()),
            spell(dir.path().join("hard.fits")),
        ];
        let (files, problems) = expand_inputs(&inputs);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(files, vec![a, b, dir.path().join("hard.fits")]);
    }
}
