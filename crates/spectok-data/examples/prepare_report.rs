//! Prints, for every spectrum of the given inputs, how preparation sees
//! it: pixels, segments, patches (valid / invalid), scale and rejections.
//!
//! `cargo run -p spectok-data --example prepare_report -- FILE_OR_DIR...`

use spectok_data::{prepare, PrepareConfig};

fn main() {
    let inputs: Vec<String> = std::env::args().skip(1).collect();
    let plan = spectok_io::plan_inputs(&inputs, None);
    for p in &plan.problems {
        println!("input problem: {p}");
    }
    let cfg = PrepareConfig::default();
    for unit in &plan.units {
        let stream = match spectok_io::read_unit(unit) {
            Ok(s) => s,
            Err(e) => {
                println!("{}: {e}", unit.main_file().display());
                continue;
            }
        };
        for item in stream {
            let s = match item {
                Ok(s) => s,
                Err(e) => {
                    println!("  read error: {e}");
                    continue;
                }
            };
            let segs: Vec<String> = s
                .segments
                .iter()
                .map(|g| format!("{}:{}", g.name, g.len()))
                .collect();
            match prepare(&s, &cfg) {
                Ok(p) => println!(
                    "{} {} {} px [{}] valid px {} patches {} (valid {}) scale {:.4e} ({:?})",
                    s.source,
                    s.survey,
                    s.len(),
                    segs.join(" "),
                    p.valid_pixels,
                    p.n_patches(),
                    p.n_valid_patches(),
                    p.scale,
                    p.scale_rule
                ),
                Err(e) => println!(
                    "{} {} {} px [{}] {e}",
                    s.source,
                    s.survey,
                    s.len(),
                    segs.join(" ")
                ),
            }
        }
    }
}
