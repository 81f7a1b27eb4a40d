//! (reader being written)
use crate::{Error, Format, InputUnit, Reader, Result, SpectrumIter};
pub struct LamostLrsReader;
impl Reader for LamostLrsReader {
    fn format(&self) -> Format { Format::LamostLrs }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
pub struct LamostLrsOldReader;
impl Reader for LamostLrsOldReader {
    fn format(&self) -> Format { Format::LamostLrsOld }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
pub struct LamostMrsReader;
impl Reader for LamostMrsReader {
    fn format(&self) -> Format { Format::LamostMrs }
    fn count(&self, unit: &InputUnit) -> Result<usize> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
    fn read(&self, unit: &InputUnit) -> Result<SpectrumIter> { Err(Error::Refused { path: unit.main_file().into(), format: self.format().name(), reason: "unfinished".into() }) }
}
