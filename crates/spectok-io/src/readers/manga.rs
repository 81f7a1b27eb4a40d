//! (reader being written)
use crate::{Error, Format, InputUnit, Reader, Result, SpectrumIter};
pub struct MangaReader;
impl Reader for MangaReader {
    fn format(&self) -> Format { Format::MangaDap }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
