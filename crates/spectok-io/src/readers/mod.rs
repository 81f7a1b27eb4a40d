//! One reader per survey family. Each implements [`crate::Reader`].

mod common;
pub mod apogee;
pub mod desi;
pub mod gaiaxp;
pub mod galah;
pub mod lamost;
pub mod manga;
pub mod mmu;
pub mod sdss;
