use spectok_io::*;
use spectok_io::shard;
#[test]
fn bench() {
    let real = testdata::real_data_dir().unwrap();
    let src: Vec<Spectrum> = read_unit(&InputUnit::single(Format::MmuHdf5, real.join("mmu/sdss_healpix_sample.hdf5"))).unwrap().map(|s| s.unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.h5");
    let t = std::time::Instant::now();
    let mut w = shard::ShardWriter::create(&p).unwrap();
    for i in 0..5000 { let mut s = src[i % 10].clone(); s.id = format!("{i}"); w.write(&s).unwrap(); }
    w.finish().unwrap();
    eprintln!("write 5000 in {:?}, size {}", t.elapsed(), std::fs::metadata(&p).unwrap().len());
    let t = std::time::Instant::now();
    let n = shard::open(&p).unwrap().filter(|r| r.is_ok()).count();
    eprintln!("read {n} in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let n = read_unit(&InputUnit::single(Format::MmuHdf5, real.join("mmu/sdss_healpix_sample.hdf5"))).unwrap().count();
    eprintln!("mmu {n} in {:?}", t.elapsed());
}
