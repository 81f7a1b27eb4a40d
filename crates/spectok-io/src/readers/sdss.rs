//! (reader being written)
use crate::{Error, Format, InputUnit, Reader, Result, SpectrumIter};
pub struct SdssSpecReader;
impl Reader for SdssSpecReader {
    fn format(&self) -> Format { Format::SdssSpec }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
pub struct SpSpecReader;
impl Reader for SpSpecReader {
    fn format(&self) -> Format { Format::SdssSpSpec }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
