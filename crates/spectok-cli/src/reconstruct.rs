//! `spectok reconstruct`: decode spectra onto their own or another
//! survey's grid, with a PNG per spectrum.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use plotters::prelude::*;
use spectok_io::embeddings::{ReconstructionFile, ReconstructionRecord, ShardPart};
use spectok_io::Format;
use spectok_train::embed::{reconstruct, EmbedOptions, NativeGrid, Target, GRID_SURVEYS};

use crate::embed::{hint_force, load_model, report, set_threads, Progress};

/// Decode spectra with a trained tokenizer onto their own grid or onto
/// another survey's native grid, and plot them.
///
/// Each spectrum of the inputs is encoded and decoded onto:
///   (default)        its own wavelength grid (one value per input pixel);
///   --onto SURVEY    that survey's standard grid: sdss (log-λ 1e-4 dex,
///                    3600–10400 Å), desi (B/R/Z arms, linear 0.8 Å),
///                    apogee (3 chips, log-λ 6e-6 dex), galah (4 CCDs, air),
///                    lamost (log-λ 1e-4 dex, 3700–9100 Å);
///   --onto FILE      the grid of the first spectrum of FILE (write ./NAME
///                    for a file named like a survey).
/// Arms of the target grid are decoded separately, never across a gap.
///
/// The HDF5 output holds per spectrum the input (wavelength, flux, ivar,
/// valid pixels) and the reconstruction on the target grid in the input's
/// flux units, with the target's arms (layout: README, "Reconstruction
/// file"). With --plot, one PNG per spectrum shows the input and the
/// reconstruction (in --plot-dir, default OUTPUT's name + "-plots").
///
/// Example:
///   spectok reconstruct sdss/spec-0266-51602-0013.fits --checkpoint runs/demo -o recon.h5 --plot
///   spectok reconstruct sdss/spec-0266-51602-0013.fits --checkpoint runs/demo --onto desi \
///       -o sdss-on-desi.h5 --plot
///   spectok reconstruct data/galah --checkpoint runs/demo --onto lamost/spec-55859-F5902_sp01-001.fits.gz -o g.h5
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Files, directories (walked recursively) or glob patterns.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// The run directory (its best checkpoint, else its newest) or one
    /// checkpoint directory.
    #[arg(long, value_name = "RUN_DIR")]
    checkpoint: PathBuf,
    /// The HDF5 file to write.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Decode onto this survey's grid (sdss, desi, apogee, galah, lamost)
    /// or onto the grid of this file's first spectrum.
    #[arg(long, value_name = "SURVEY|FILE")]
    onto: Option<String>,
    /// Draw one PNG per spectrum.
    #[arg(long)]
    plot: bool,
    /// Where the PNGs go (default: OUTPUT's name + "-plots").
    #[arg(long, value_name = "DIR")]
    plot_dir: Option<PathBuf>,
    /// Spectra per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weight dtype: f32, bf16 or f16 (default: f32 on CPU, bf16 on GPU).
    #[arg(long)]
    dtype: Option<String>,
    /// Compute threads (rayon and candle; default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Read every input as this format instead of detecting it.
    #[arg(long, value_parser = crate::parse_format)]
    format: Option<Format>,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    force: bool,
}

/// The target of `--onto`.
fn target(onto: Option<&str>, format: Option<Format>) -> Result<Target> {
    let Some(onto) = onto else {
        return Ok(Target::Own);
    };
    if let Some(g) = NativeGrid::survey(onto) {
        return Ok(Target::Grid(g));
    }
    let path = Path::new(onto);
    if !path.exists() {
        anyhow::bail!(
            "--onto {onto}: neither a survey ({}) nor an existing file",
            GRID_SURVEYS.join(", ")
        );
    }
    let g = NativeGrid::from_file(path, format)
        .with_context(|| format!("--onto {onto}: cannot take a grid from it"))?;
    Ok(Target::Grid(g))
}

pub fn run(args: Args) -> Result<ExitCode> {
    set_threads(args.threads)?;
    let target = target(args.onto.as_deref(), args.format)?;
    let m = load_model(&args.checkpoint, &args.device, args.dtype.as_deref())?;
    let opts = EmbedOptions {
        format: args.format,
        batch_size: args.batch_size,
        part: ShardPart::WHOLE,
        overwrite: args.force,
        ..EmbedOptions::default()
    };
    let mut progress = Progress::new("reconstruct");
    let result = reconstruct(
        &m,
        &args.inputs,
        &target,
        &args.output,
        &opts,
        &mut progress,
    );
    progress.finish();
    let summary = result.map_err(hint_force)?;
    let code = report(&summary, "reconstructed");
    if args.plot {
        let dir = args
            .plot_dir
            .clone()
            .unwrap_or_else(|| default_plot_dir(&args.output));
        for p in draw_all(&args.output, &dir)? {
            println!("{}", p.display());
        }
    }
    Ok(code)
}

/// `DIR/NAME.h5` → `DIR/NAME-plots`.
fn default_plot_dir(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "reconstruct".into());
    output.with_file_name(format!("{stem}-plots"))
}

/// A file-name-safe version of an object id.
fn safe_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// Draws every reconstruction of `file` into `dir`; returns the PNGs.
pub fn draw_all(file: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let f = ReconstructionFile::open(file)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let text = crate::plot::fonts_available();
    if !text {
        eprintln!(
            "warning: no TTF font found (install fonts-dejavu-core or set SPECTOK_FONT): plots are drawn without text"
        );
    }
    let mut written = Vec::with_capacity(f.len());
    for i in 0..f.len() {
        let r = f.read(i)?;
        let path = dir.join(format!(
            "{i:04}-{}-{}.png",
            r.survey.name(),
            safe_name(&r.object_id)
        ));
        draw(&r, f.target(), &path, text)
            .with_context(|| format!("cannot draw {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Pieces of a curve: runs of consecutive points whose wavelength
/// increases and that `keep` accepts.
fn pieces(w: &[f64], v: &[f32], keep: impl Fn(usize) -> bool) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    let mut last = f64::NEG_INFINITY;
    for (i, (&x, &y)) in w.iter().zip(v).enumerate() {
        let ok = keep(i) && x.is_finite() && y.is_finite();
        if !ok || x <= last {
            if cur.len() > 1 {
                out.push(std::mem::take(&mut cur));
            }
            cur.clear();
        }
        if ok {
            cur.push((x, y as f64));
        }
        last = x;
    }
    if cur.len() > 1 {
        out.push(cur);
    }
    out
}

/// The `q` quantile of finite values.
fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v.get(i).copied()
}

/// Input flux (grey) and reconstruction on the target grid (blue) of one
/// spectrum.
fn draw(r: &ReconstructionRecord, target: &str, path: &Path, text: bool) -> Result<()> {
    let input = pieces(&r.input_wavelength, &r.input_flux, |i| {
        r.input_valid.get(i).copied().unwrap_or(false)
    });
    let mut output = Vec::new();
    for s in &r.output_segments {
        let (Some(w), Some(v)) = (
            r.output_wavelength.get(s.start..s.end),
            r.output_flux.get(s.start..s.end),
        ) else {
            continue;
        };
        output.extend(pieces(w, v, |_| true));
    }
    let mut ys: Vec<f64> = input.iter().chain(&output).flatten().map(|p| p.1).collect();
    let mut xs: Vec<f64> = input.iter().chain(&output).flatten().map(|p| p.0).collect();
    let (lo, hi) = (quantile(&mut ys, 0.005), quantile(&mut ys, 0.995));
    let (y0, y1) = match (lo, hi) {
        (Some(a), Some(b)) if b > a => (a - 0.1 * (b - a), b + 0.1 * (b - a)),
        (Some(a), _) => (a - 1.0, a + 1.0),
        _ => (-1.0, 1.0),
    };
    let (x0, x1) = match (quantile(&mut xs, 0.0), quantile(&mut xs, 1.0)) {
        (Some(a), Some(b)) if b > a => (a, b),
        _ => (0.0, 1.0),
    };

    let root = BitMapBackend::new(path, (1400, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        let onto = if target == "own" {
            "its own grid".to_string()
        } else {
            format!("the {target} grid")
        };
        builder
            .caption(
                format!("{} ({}) reconstructed on {onto}", r.object_id, r.survey),
                ("sans-serif", 22),
            )
            .x_label_area_size(45)
            .y_label_area_size(80);
    }
    let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("wavelength (Å)")
            .y_desc("flux (file units)")
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let grey = RGBColor(140, 140, 140);
    let blue = RGBColor(31, 119, 180);
    for (k, piece) in input.into_iter().enumerate() {
        let s = chart.draw_series(LineSeries::new(piece, grey.stroke_width(1)))?;
        if text && k == 0 {
            s.label(format!("input ({})", r.survey))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
                });
        }
    }
    for (k, piece) in output.into_iter().enumerate() {
        let s = chart.draw_series(LineSeries::new(piece, blue.stroke_width(1)))?;
        if text && k == 0 {
            s.label("reconstruction").legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_break_at_gaps_and_arm_restarts() {
        let w = [1.0, 2.0, 3.0, 2.5, 3.5, 4.5, 5.0];
        let v = [1.0, 2.0, f32::NAN, 4.0, 5.0, 6.0, 7.0];
        let p = pieces(&w, &v, |i| i != 5);
        assert_eq!(
            p,
            vec![vec![(1.0, 1.0), (2.0, 2.0)], vec![(2.5, 4.0), (3.5, 5.0)]]
        );
        assert_eq!(safe_name("2M00452143+1634446"), "2M00452143+1634446");
        assert_eq!(safe_name("a/b c"), "a_b_c");
        assert_eq!(
            default_plot_dir(Path::new("out/recon.h5")),
            PathBuf::from("out/recon-plots")
        );
    }
}
