//! (reader being written)
use crate::{Error, Format, InputUnit, Reader, Result, SpectrumIter};
pub struct GalahReader;
impl Reader for GalahReader {
    fn format(&self) -> Format { Format::GalahCcd }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
