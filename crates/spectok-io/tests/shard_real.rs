//! `convert`'s library path on every real survey file: whatever the
//! readers yield, a shard stores and gives back bit for bit.

use spectok_io::shard::ShardWriter;
use spectok_io::testdata::real_data_dir;
use spectok_io::{plan_inputs, read_unit, Format, Spectrum};

fn read_all(inputs: &[String]) -> Vec<Spectrum> {
    let plan = plan_inputs(inputs, None);
    let mut out = Vec::new();
    for unit in &plan.units {
        if let Ok(stream) = read_unit(unit) {
            out.extend(stream.flatten());
        }
    }
    out
}

/// Equality that treats two NaNs with the same bits as equal.
fn same(a: &Spectrum, b: &Spectrum) -> bool {
    let f32s = |x: &[f32], y: &[f32]| {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
    };
    let f64s = |x: &[f64], y: &[f64]| {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
    };
    a.id == b.id
        && a.survey == b.survey
        && a.source == b.source
        && f64s(&a.wavelength, &b.wavelength)
        && f32s(&a.flux, &b.flux)
        && f32s(&a.ivar, &b.ivar)
        && a.mask == b.mask
        && a.segments == b.segments
        && a.medium == b.medium
        && match (&a.lsf_sigma, &b.lsf_sigma) {
            (Some(x), Some(y)) => f32s(x, y),
            (None, None) => true,
            _ => false,
        }
        && format!("{:?}", a.labels) == format!("{:?}", b.labels)
}

#[test]
fn every_real_spectrum_round_trips_through_a_shard() {
    let Some(root) = real_data_dir() else { return };
    let inputs = vec![root.display().to_string()];
    let spectra = read_all(&inputs);
    // sdss 13, desi 1+5+5, apogee 13, galah 4, lamost 7, gaia 1 file of 2,
    // manga 8, mmu 10.
    assert!(spectra.len() >= 60, "only {} spectra read", spectra.len());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.h5");
    let mut w = ShardWriter::create(&path).unwrap();
    for s in &spectra {
        w.write(s).unwrap();
    }
    assert_eq!(w.finish().unwrap(), spectra.len());

    let plan = plan_inputs(&[path.display().to_string()], None);
    assert_eq!(plan.units.len(), 1);
    assert_eq!(plan.units[0].format, Format::SpectokShard);
    let back: Vec<Spectrum> = read_unit(&plan.units[0])
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(back.len(), spectra.len());
    for (a, b) in spectra.iter().zip(&back) {
        assert!(same(a, b), "{} differs after the round trip", a.id);
    }
}
