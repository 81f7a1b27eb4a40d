//! (reader being written)
use crate::{Error, Format, InputUnit, Reader, Result, SpectrumIter};
pub struct ApStarReader;
impl Reader for ApStarReader {
    fn format(&self) -> Format { Format::ApogeeApStar }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
pub struct ApVisitReader;
impl Reader for ApVisitReader {
    fn format(&self) -> Format { Format::ApogeeApVisit }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
pub struct AspcapStarReader;
impl Reader for AspcapStarReader {
    fn format(&self) -> Format { Format::ApogeeAspcapStar }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
