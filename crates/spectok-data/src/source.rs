//! Where the loader's spectra come from: a [`SpectrumSource`] is a list of
//! units (files, shards, in-memory chunks), each opened on the reading
//! thread as a stream of spectra.

use std::sync::Arc;

use spectok_io::{Format, InputUnit, Spectrum};

use crate::error::Result;

/// A stream of spectra from one unit. Items that fail are per-spectrum
/// problems; the stream goes on after them. Streams need not be `Send`:
/// the loader opens each one on the thread that reads it.
pub type SpectrumStream = Box<dyn Iterator<Item = spectok_io::Result<Spectrum>>>;

/// A list of units the loader reads from.
///
/// Units are the grain of shuffling and of parallel reading: the loader
/// shuffles the unit order each pass and reads several units at once.
/// Implementations must be deterministic: opening a unit twice yields the
/// same spectra in the same order (resuming a run relies on it).
pub trait SpectrumSource: Send + Sync {
    /// Number of units.
    fn n_units(&self) -> usize;
    /// Opens unit `unit` (< [`SpectrumSource::n_units`]). File-level
    /// problems are an `Err` here.
    fn open_unit(&self, unit: usize) -> Result<SpectrumStream>;
    /// A name for messages (a file path, a shard name).
    fn unit_name(&self, unit: usize) -> String;
}

/// Survey files or spectok shards, read with the io crate's readers.
#[derive(Clone, Debug, Default)]
pub struct FileSource {
    units: Vec<InputUnit>,
}

impl FileSource {
    /// A source of planned input units.
    pub fn new(units: Vec<InputUnit>) -> Self {
        FileSource { units }
    }

    /// Plans `inputs` (files, directories, globs; see
    /// [`spectok_io::plan_inputs`]) and returns the source of the readable
    /// units together with the problems of the inputs that cannot be read.
    pub fn from_inputs<S: AsRef<str>>(
        inputs: &[S],
        format: Option<Format>,
    ) -> (Self, Vec<spectok_io::Error>) {
        let plan = spectok_io::plan_inputs(inputs, format);
        (FileSource::new(plan.units), plan.problems)
    }

    /// The units.
    pub fn units(&self) -> &[InputUnit] {
        &self.units
    }
}

impl SpectrumSource for FileSource {
    fn n_units(&self) -> usize {
        self.units.len()
    }

    fn open_unit(&self, unit: usize) -> Result<SpectrumStream> {
        let u = self.units.get(unit).ok_or_else(|| crate::Error::Source {
            name: "files".into(),
            reason: format!("no unit {unit} of {}", self.units.len()),
        })?;
        Ok(spectok_io::read_unit(u)?)
    }

    fn unit_name(&self, unit: usize) -> String {
        self.units
            .get(unit)
            .and_then(|u| u.files.first())
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| format!("unit {unit}"))
    }
}

/// Spectra already in memory, cut into units of `per_unit` spectra.
#[derive(Clone, Debug)]
pub struct MemorySource {
    spectra: Arc<Vec<Spectrum>>,
    per_unit: usize,
}

impl MemorySource {
    /// A source over `spectra`, `per_unit` (≥ 1) spectra per unit.
    pub fn new(spectra: Vec<Spectrum>, per_unit: usize) -> Self {
        MemorySource {
            spectra: Arc::new(spectra),
            per_unit: per_unit.max(1),
        }
    }
}

impl SpectrumSource for MemorySource {
    fn n_units(&self) -> usize {
        self.spectra.len().div_ceil(self.per_unit)
    }

    fn open_unit(&self, unit: usize) -> Result<SpectrumStream> {
        let start = (unit * self.per_unit).min(self.spectra.len());
        let end = (start + self.per_unit).min(self.spectra.len());
        let all = Arc::clone(&self.spectra);
        Ok(Box::new((start..end).map(move |i| Ok(all[i].clone()))))
    }

    fn unit_name(&self, unit: usize) -> String {
        format!("memory unit {unit}")
    }
}
