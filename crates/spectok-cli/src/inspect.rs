//! `spectok inspect`: what a file holds, per spectrum.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;
use spectok_io::{plan_inputs, read_unit, Format, Spectrum};

/// Show the format, count and per-spectrum summary of survey files.
///
/// For each input: the detected format and number of spectra, then per
/// spectrum its id, survey, pixels, wavelength range, valid-pixel fraction
/// and labels. Files that cannot be read (or none of whose spectra can) are
/// reported on one line each and make the exit code 1; single spectra that
/// cannot be read are skipped, counted and summarised.
///
/// Example:
///   spectok inspect data/demo/sdss/*.fits
///   spectok inspect --json data/demo > demo.json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Files, directories (walked recursively) or glob patterns.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Read every input as this format instead of detecting it.
    #[arg(long, value_parser = crate::parse_format)]
    format: Option<Format>,
    /// Print one JSON object per spectrum (JSON lines) instead of a table.
    #[arg(long)]
    json: bool,
}

fn labels_text(s: &Spectrum) -> String {
    let l = &s.labels;
    let mut parts = Vec::new();
    if let Some(c) = &l.class {
        parts.push(format!("class={c}"));
    }
    if let Some(z) = l.redshift {
        parts.push(format!("z={z}"));
    }
    for (k, v) in [
        ("teff", l.teff),
        ("logg", l.logg),
        ("fe_h", l.fe_h),
        ("alpha_m", l.alpha_m),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    }
    parts.join(" ")
}

fn spectrum_json(s: &Spectrum, format: Format) -> serde_json::Value {
    let (lo, hi) = s.wavelength_range();
    json!({
        "id": s.id,
        "survey": s.survey.name(),
        "format": format.name(),
        "file": s.source.file,
        "hdu": s.source.hdu,
        "row": s.source.row,
        "pixels": s.len(),
        "segments": s.segments.iter().map(|g| json!({"name": g.name, "pixels": g.len()})).collect::<Vec<_>>(),
        "wavelength_min": lo,
        "wavelength_max": hi,
        "medium": s.medium.name(),
        "valid_fraction": s.valid_fraction(),
        "labels": s.labels,
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    let plan = plan_inputs(&args.inputs, args.format);
    let mut file_errors = plan.problems.len();
    for p in &plan.problems {
        eprintln!("error: {p}");
    }
    let mut n_ok = 0usize;
    let mut n_skipped = 0usize;
    for unit in &plan.units {
        let stream = match read_unit(unit) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                file_errors += 1;
                continue;
            }
        };
        let files: Vec<String> = unit.files.iter().map(|f| f.display().to_string()).collect();
        let mut rows = Vec::new();
        let mut skipped = Vec::new();
        for item in stream {
            match item {
                Ok(s) => rows.push(s),
                Err(e) => skipped.push(e),
            }
        }
        n_ok += rows.len();
        n_skipped += skipped.len();
        // A file none of whose spectra can be read is an unreadable input.
        if rows.is_empty() && !skipped.is_empty() {
            file_errors += 1;
        }
        if args.json {
            for s in &rows {
                println!("{}", spectrum_json(s, unit.format));
            }
        } else {
            println!(
                "{}  format={}  spectra={}",
                files.join(" + "),
                unit.format,
                rows.len()
            );
            for s in &rows {
                let (lo, hi) = s.wavelength_range();
                let segs = if s.segments.len() > 1 {
                    let v: Vec<String> = s.segments.iter().map(|g| g.len().to_string()).collect();
                    format!(" ({})", v.join("+"))
                } else {
                    String::new()
                };
                println!(
                    "  {:<24} {:<9} {:>6} px{segs}  {:.1}-{:.1} Å {}  valid={:.3}  {}",
                    s.id,
                    s.survey,
                    s.len(),
                    lo,
                    hi,
                    s.medium.name(),
                    s.valid_fraction(),
                    labels_text(s)
                );
            }
        }
        for e in &skipped {
            eprintln!("skipped: {e}");
        }
    }
    eprintln!(
        "{} spectra read, {} skipped, {} input(s) unreadable",
        n_ok, n_skipped, file_errors
    );
    Ok(if file_errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
