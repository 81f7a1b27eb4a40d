//! Times reading (no preparation) of the given inputs, to separate reader
//! cost from loader cost: `cargo run -p spectok-data --example read_time -- DIR...`

use std::time::Instant;

fn main() {
    let inputs: Vec<String> = std::env::args().skip(1).collect();
    let plan = spectok_io::plan_inputs(&inputs, None);
    let t0 = Instant::now();
    let mut n = 0;
    let reps = 5;
    for _ in 0..reps {
        for u in &plan.units {
            if let Ok(stream) = spectok_io::read_unit(u) {
                n += stream.filter(|s| s.is_ok()).count();
            }
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    println!(
        "{} units × {reps}: {n} spectra in {dt:.2} s = {:.0} spectra/s (one thread)",
        plan.units.len(),
        n as f64 / dt
    );
}
