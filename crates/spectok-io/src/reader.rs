//! The one trait every survey reader implements, and the registry that
//! maps a [`Format`] to its reader.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::format::Format;
use crate::spectrum::Spectrum;

/// The files one reader call consumes.
///
/// Most layouts are one file. A GALAH star is its CCD files (ordered by
/// CCD number); a DESI coadd carries the `redrock-*` catalogue whose labels
/// are joined to it as a companion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputUnit {
    pub format: Format,
    /// The spectrum files, main file first.
    pub files: Vec<PathBuf>,
    /// Companion files whose content is joined (labels), not read as spectra.
    pub companions: Vec<PathBuf>,
}

impl InputUnit {
    /// A unit of one file and no companions.
    pub fn single(format: Format, file: impl Into<PathBuf>) -> Self {
        InputUnit {
            format,
            files: vec![file.into()],
            companions: Vec::new(),
        }
    }

    /// The main file.
    pub fn main_file(&self) -> &std::path::Path {
        &self.files[0]
    }
}

/// A stream of spectra from one unit. Items that fail are per-spectrum
/// problems (the caller skips and counts them); the stream goes on after
/// them.
pub type SpectrumIter = Box<dyn Iterator<Item = Result<Spectrum>>>;

/// A reader of one family of survey files.
///
/// Readers are stateless values; the stream they return owns the open
/// file and reads one spectrum at a time, so multi-spectrum files are never
/// loaded whole. Streams are not `Send` (cfitsio handles are not): open
/// them on the thread that consumes them.
pub trait Reader: Send + Sync {
    /// The layout this reader handles.
    fn format(&self) -> Format;

    /// Number of spectra the unit holds, from headers only.
    fn count(&self, unit: &InputUnit) -> Result<usize>;

    /// Opens the unit. File-level problems (missing HDU, missing column,
    /// truncated file) are an `Err` here; problems of one spectrum in a
    /// multi-spectrum file are `Err` items of the stream.
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter>;
}

/// The reader for `format`, or the reason there is none.
pub fn reader_for(format: Format, path: &std::path::Path) -> Result<&'static dyn Reader> {
    use crate::readers::*;
    Ok(match format {
        Format::SdssSpec => &sdss::SdssSpecReader,
        Format::SdssSpSpec => &sdss::SpSpecReader,
        Format::DesiCoadd => &desi::DesiCoaddReader,
        Format::ApogeeApStar => &apogee::ApStarReader,
        Format::ApogeeAspcapStar => &apogee::AspcapStarReader,
        Format::ApogeeApVisit => &apogee::ApVisitReader,
        Format::GalahCcd => &galah::GalahReader,
        Format::LamostLrs => &lamost::LamostLrsReader,
        Format::LamostLrsOld => &lamost::LamostLrsOldReader,
        Format::LamostMrs => &lamost::LamostMrsReader,
        Format::GaiaXpSampled => &gaiaxp::GaiaXpReader,
        Format::MangaDap => &manga::MangaReader,
        Format::MmuHdf5 => &mmu::MmuReader,
        Format::SpectokShard => &crate::shard::ShardReader,
        Format::DesiRedrock => {
            return Err(Error::Refused {
                path: path.to_path_buf(),
                format: format.name(),
                reason:
                    "a redrock catalogue holds redshifts, not spectra: give it together with \
                         its coadd-*/spectra-* file (or put it beside it) and its labels are joined"
                        .into(),
            })
        }
        Format::GaiaXpContinuous => {
            return Err(Error::Refused {
                path: path.to_path_buf(),
                format: format.name(),
                reason: "found BP/RP basis-function coefficients, not sampled fluxes; sample them \
                         first (e.g. GaiaXPy calibrate) and read the sampled table"
                    .into(),
            })
        }
    })
}

/// Opens a unit with the reader of its format.
pub fn read_unit(unit: &InputUnit) -> Result<SpectrumIter> {
    reader_for(unit.format, unit.main_file())?.read(unit)
}

/// Counts the spectra of a unit with the reader of its format.
pub fn count_unit(unit: &InputUnit) -> Result<usize> {
    reader_for(unit.format, unit.main_file())?.count(unit)
}
