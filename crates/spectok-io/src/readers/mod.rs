//! One reader per survey family. Each implements [`crate::Reader`].

pub mod apogee;
mod common;
pub mod desi;
pub mod gaiaxp;
pub mod galah;
pub mod lamost;
pub mod manga;
pub mod mmu;
pub mod sdss;
