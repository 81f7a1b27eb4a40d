use spectok_model::{Config, WavelengthEncoding};
fn main() {
    let cfg = Config::paper();
    let enc = WavelengthEncoding::new(&cfg);
    let n = 64 * 268 * 32;
    let wl: Vec<f64> = (0..n).map(|i| 3600.0 + 0.05 * i as f64).collect();
    let t = std::time::Instant::now();
    let f = enc.features(&wl);
    println!("{} patches: {:?} ({})", n / 32, t.elapsed(), f.pooled.len());
}
