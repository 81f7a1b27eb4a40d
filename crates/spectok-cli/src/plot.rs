//! `spectok plot`: PNG plots of a pretraining run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use spectok_train::{
    read_metrics, Example, Reconstructions, Record, METRICS_FILE, RECONSTRUCTIONS_FILE,
};

/// Draw a run's loss curves and example reconstructions as PNG files.
///
/// Reads RUN_DIR/metrics.jsonl and RUN_DIR/reconstructions.json (both
/// written while training, so a run in progress can be plotted) and writes
/// into RUN_DIR/plots (or --out):
///   loss.png                      training loss and per-survey validation
///                                 loss against step (log scale)
///   reconstruction-SURVEY-N.png   an example validation spectrum per
///                                 survey: observed flux with its ±σ band,
///                                 the model's reconstruction, invalid
///                                 pixels shaded grey and pixels hidden from
///                                 the encoder shaded orange, on the
///                                 survey's native wavelength axis (one
///                                 panel per group of arms/CCDs)
///
/// Text is drawn with a TTF font found on the system (DejaVu Sans from the
/// Debian package fonts-dejavu-core, or the file named by SPECTOK_FONT);
/// without one the plots are drawn without text and a warning says so.
///
/// Example:
///   spectok plot runs/demo
///   spectok plot runs/paper --out figures/paper
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The run directory (the `out_dir` of the training config).
    run_dir: PathBuf,
    /// Where to write the PNG files (default: RUN_DIR/plots).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let out = args.out.unwrap_or_else(|| args.run_dir.join("plots"));
    let written = render(&args.run_dir, &out)?;
    for p in &written {
        println!("{}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Font files tried in order after `$SPECTOK_FONT`.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a system font as `sans-serif` once per process; whether one
/// was found.
pub(crate) fn fonts_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var_os("SPECTOK_FONT").map(PathBuf::from);
        let candidates = env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        false
    })
}

/// Draws every plot of `run_dir` into `out`; returns the files written.
pub fn render(run_dir: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let text = fonts_available();
    if !text {
        eprintln!(
            "warning: no TTF font found (install fonts-dejavu-core or set SPECTOK_FONT): plots are drawn without text"
        );
    }
    render_with(run_dir, out, text)
}

/// [`render`] with text on or off.
fn render_with(run_dir: &Path, out: &Path, text: bool) -> Result<Vec<PathBuf>> {
    let metrics_path = run_dir.join(METRICS_FILE);
    let recon_path = run_dir.join(RECONSTRUCTIONS_FILE);
    if !metrics_path.is_file() && !recon_path.is_file() {
        bail!(
            "{}: not a run directory (no {METRICS_FILE} or {RECONSTRUCTIONS_FILE})",
            run_dir.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let mut written = Vec::new();
    if metrics_path.is_file() {
        let records = read_metrics(&metrics_path)?;
        let path = out.join("loss.png");
        if draw_losses(&records, &path, text)? {
            written.push(path);
        }
    }
    if recon_path.is_file() {
        let recon = Reconstructions::read(&recon_path)?;
        let mut count = std::collections::BTreeMap::<String, usize>::new();
        for ex in &recon.examples {
            let n = count.entry(ex.survey.name().to_string()).or_default();
            *n += 1;
            let path = out.join(format!("reconstruction-{}-{}.png", ex.survey.name(), n));
            draw_example(ex, &recon, &path, text)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Colours of the per-survey curves.
fn palette(i: usize) -> RGBColor {
    const P: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    P[i % P.len()]
}

/// A loss tick label with about three significant digits.
fn loss_label(y: f64) -> String {
    let a = y.abs();
    if a >= 100.0 {
        format!("{y:.0}")
    } else if a >= 1.0 {
        format!("{y:.2}")
    } else if a >= 0.01 {
        format!("{y:.3}")
    } else {
        format!("{y:.1e}")
    }
}

/// Training and per-survey validation loss against step. Returns false
/// when there is nothing to draw.
fn draw_losses(records: &[Record], path: &Path, text: bool) -> Result<bool> {
    let train: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Train { step, loss, .. } => Some((*step as f64, *loss)),
            _ => None,
        })
        .filter(|(_, l)| l.is_finite() && *l > 0.0)
        .collect();
    let mut val: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for r in records {
        if let Record::Val { step, loss, .. } = r {
            for (survey, l) in loss {
                if l.is_finite() && *l > 0.0 {
                    val.entry(survey.clone())
                        .or_default()
                        .push((*step as f64, *l));
                }
            }
        }
    }
    let all: Vec<(f64, f64)> = train
        .iter()
        .chain(val.values().flatten())
        .copied()
        .collect();
    if all.is_empty() {
        return Ok(false);
    }
    let x_max = all.iter().map(|p| p.0).fold(1.0f64, f64::max);
    let y_min = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = all.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let (y_lo, y_hi) = (y_min / 1.5, (y_max * 1.5).max(y_min * 2.0));

    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption("Training and validation loss", ("sans-serif", 28))
            .x_label_area_size(50)
            .y_label_area_size(80);
    }
    let mut chart = builder.build_cartesian_2d(0.0..x_max, (y_lo..y_hi).log_scale())?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(TRANSPARENT)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| loss_label(*y));
    if text {
        mesh.x_desc("step")
            .y_desc("loss (noise-weighted, per pixel)")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let grey = RGBColor(90, 90, 90);
    let s = chart.draw_series(LineSeries::new(train.iter().copied(), grey.stroke_width(2)))?;
    if text {
        s.label("train").legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
        });
    }
    for (i, (survey, pts)) in val.iter().enumerate() {
        let c = palette(i);
        let s = chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(3)))?;
        if text {
            s.label(format!("validation {survey}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
        }
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(true)
}

/// Contiguous pixel runs of an example: a run breaks where the wavelength
/// goes back (the next arm) or jumps by more than 5 steps (a chip gap).
fn runs(w: &[f64]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_step = None::<f64>;
    for i in 1..w.len() {
        let d = w[i] - w[i - 1];
        let jump = d <= 0.0 || prev_step.is_some_and(|p| d > 5.0 * p);
        if jump {
            out.push((start, i));
            start = i;
            prev_step = None;
        } else {
            prev_step = Some(d);
        }
    }
    if start < w.len() {
        out.push((start, w.len()));
    }
    out
}

/// Groups runs into panels: runs that overlap or sit within 10 % of the
/// whole span of each other share a panel.
fn panels(w: &[f64], runs: &[(usize, usize)]) -> Vec<Vec<(usize, usize)>> {
    let span = |r: &(usize, usize)| (w[r.0], w[r.1 - 1]);
    let lo = runs.iter().map(|r| span(r).0).fold(f64::INFINITY, f64::min);
    let hi = runs
        .iter()
        .map(|r| span(r).1)
        .fold(f64::NEG_INFINITY, f64::max);
    let tol = 0.1 * (hi - lo);
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| span(a).0.total_cmp(&span(b).0));
    let mut out: Vec<(f64, Vec<(usize, usize)>)> = Vec::new();
    for r in sorted {
        let (a, b) = span(&r);
        match out.last_mut() {
            Some((end, group)) if a - *end <= tol => {
                *end = end.max(b);
                group.push(r);
            }
            _ => out.push((b, vec![r])),
        }
    }
    out.into_iter().map(|(_, g)| g).collect()
}

/// The `q`-quantile of `v` (sorted copy).
fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    s.get(i).copied()
}

/// Half-widths of pixel `i` on each side (for shading single pixels).
fn pixel_extent(w: &[f64], i: usize, run: (usize, usize)) -> (f64, f64) {
    let left = if i > run.0 {
        (w[i] - w[i - 1]) / 2.0
    } else {
        0.0
    };
    let right = if i + 1 < run.1 {
        (w[i + 1] - w[i]) / 2.0
    } else {
        0.0
    };
    let l = if left > 0.0 { left } else { right };
    let r = if right > 0.0 { right } else { l };
    (w[i] - l, w[i] + r)
}

/// Spans `[from, to]` in wavelength of consecutive pixels of a run for
/// which `pick` holds.
fn shaded_spans(w: &[f64], run: (usize, usize), pick: impl Fn(usize) -> bool) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut i = run.0;
    while i < run.1 {
        if !pick(i) {
            i += 1;
            continue;
        }
        let j0 = i;
        while i < run.1 && pick(i) {
            i += 1;
        }
        out.push((pixel_extent(w, j0, run).0, pixel_extent(w, i - 1, run).1));
    }
    out
}

fn draw_example(ex: &Example, recon: &Reconstructions, path: &Path, text: bool) -> Result<()> {
    let w = &ex.wavelength;
    let n = w.len();
    if n == 0 || ex.flux.len() != n || ex.reconstruction.len() != n || ex.sigma.len() != n {
        bail!(
            "{}: example {} has inconsistent arrays",
            path.display(),
            ex.id
        );
    }
    let valid = |i: usize| ex.valid.get(i).copied().unwrap_or(false);
    let hidden = |i: usize| ex.hidden.get(i).copied().unwrap_or(false);
    let runs = runs(w);
    let groups = panels(w, &runs);

    // A robust y range over observed and reconstructed flux.
    let obs: Vec<f64> = (0..n)
        .filter(|&i| valid(i))
        .map(|i| ex.flux[i] as f64)
        .collect();
    let rec: Vec<f64> = ex.reconstruction.iter().map(|&r| r as f64).collect();
    let both: Vec<f64> = obs.iter().chain(&rec).copied().collect();
    let lo = quantile(&both, 0.005).unwrap_or(0.0);
    let hi = quantile(&both, 0.995).unwrap_or(1.0);
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let (y0, y1) = (lo - pad, hi + pad);

    let width = 1500u32;
    let height = 560u32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = if text {
        let medium = ex.medium.name();
        let units = if recon.transform == spectok_data::Transform::Arcsinh {
            "asinh(flux / scale)"
        } else {
            "flux / scale"
        };
        let title = format!(
            "{} {}  —  step {}  —  {units}, scale 10^{:.2}, wavelengths {medium}",
            ex.survey.name(),
            ex.id,
            recon.step,
            ex.log_scale
        );
        root.titled(&title, ("sans-serif", 22))?
    } else {
        root.clone()
    };
    let areas = body.split_evenly((1, groups.len().max(1)));
    let observed = RGBColor(31, 119, 180);
    let model = RGBColor(214, 39, 40);
    let band = RGBColor(31, 119, 180).mix(0.25);
    let invalid_shade = RGBColor(160, 160, 160).mix(0.35);
    let hidden_shade = RGBColor(255, 165, 0).mix(0.25);

    for (k, (area, group)) in areas.iter().zip(&groups).enumerate() {
        let x0 = group.iter().map(|r| w[r.0]).fold(f64::INFINITY, f64::min);
        let x1 = group
            .iter()
            .map(|r| w[r.1 - 1])
            .fold(f64::NEG_INFINITY, f64::max);
        let (x0, x1) = if x1 > x0 {
            (x0, x1)
        } else {
            (x0 - 1.0, x0 + 1.0)
        };
        let mut builder = ChartBuilder::on(area);
        builder.margin(10);
        if text {
            builder
                .x_label_area_size(45)
                .y_label_area_size(if k == 0 { 60 } else { 40 });
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(if groups.len() > 2 { 3 } else { 6 })
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"));
        if text {
            mesh.label_style(("sans-serif", 14));
            if k == 0 {
                mesh.y_desc("normalised flux")
                    .axis_desc_style(("sans-serif", 16));
            }
            mesh.x_desc("wavelength [Å]");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;

        for &run in group {
            for (a, b) in shaded_spans(w, run, |i| !valid(i)) {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(a, y0), (b, y1)],
                    invalid_shade.filled(),
                )))?;
            }
            for (a, b) in shaded_spans(w, run, hidden) {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(a, y0), (b, y1)],
                    hidden_shade.filled(),
                )))?;
            }
        }
        let mut labelled = false;
        for &run in group {
            // Observed flux and its σ band, broken at invalid pixels.
            let mut i = run.0;
            while i < run.1 {
                if !valid(i) {
                    i += 1;
                    continue;
                }
                let j0 = i;
                while i < run.1 && valid(i) {
                    i += 1;
                }
                let seg = j0..i;
                let clamp = |v: f64| v.clamp(y0, y1);
                let mut poly: Vec<(f64, f64)> = seg
                    .clone()
                    .map(|j| (w[j], clamp(ex.flux[j] as f64 + ex.sigma[j] as f64)))
                    .collect();
                poly.extend(
                    seg.clone()
                        .rev()
                        .map(|j| (w[j], clamp(ex.flux[j] as f64 - ex.sigma[j] as f64))),
                );
                chart.draw_series(std::iter::once(Polygon::new(poly, band.filled())))?;
                let s = chart.draw_series(LineSeries::new(
                    seg.map(|j| (w[j], clamp(ex.flux[j] as f64))),
                    observed.stroke_width(1),
                ))?;
                if text && k == 0 && !labelled {
                    s.label("observed ± σ").legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], observed.stroke_width(2))
                    });
                    labelled = true;
                }
            }
        }
        for (r, &run) in group.iter().enumerate() {
            let s = chart.draw_series(LineSeries::new(
                (run.0..run.1).map(|j| (w[j], (ex.reconstruction[j] as f64).clamp(y0, y1))),
                model.mix(0.8).stroke_width(1),
            ))?;
            if text && k == 0 && r == 0 {
                s.label("reconstruction").legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], model.stroke_width(2))
                });
            }
        }
        if text && k == 0 {
            // Legend entries for the shadings.
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
                .label("invalid pixels")
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], invalid_shade.filled())
                });
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
                .label("hidden from encoder")
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], hidden_shade.filled())
                });
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 13))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_break_at_arm_restarts_and_gaps() {
        let w = [1.0, 2.0, 3.0, 2.5, 3.5, 4.5, 40.0, 41.0];
        assert_eq!(runs(&w), vec![(0, 3), (3, 6), (6, 8)]);
        let p = panels(&w, &runs(&w));
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], vec![(0, 3), (3, 6)]);
    }

    #[test]
    fn plots_are_written_with_and_without_text() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        std::fs::write(
            run.join(METRICS_FILE),
            concat!(
                r#"{"kind":"val","step":0,"mean":50.0,"loss":{"sdss":40.0,"galah":60.0},"spectra":{"sdss":2,"galah":1},"best":true}"#,
                "\n",
                r#"{"kind":"train","step":5,"loss":30.0,"last_loss":25.0,"steps":5,"lr":0.001,"grad_norm":1.0,"spectra_per_s":10.0,"tokens_per_s":100.0,"elapsed_s":1.0}"#,
                "\n",
                r#"{"kind":"val","step":10,"mean":5.0,"loss":{"sdss":4.0,"galah":6.0},"spectra":{"sdss":2,"galah":1},"best":true}"#,
                "\n"
            ),
        )
        .unwrap();
        // Two CCDs far apart, with an invalid stretch and a hidden patch.
        let mut w: Vec<f64> = (0..200).map(|i| 4700.0 + 0.05 * i as f64).collect();
        w.extend((0..200).map(|i| 5650.0 + 0.05 * i as f64));
        let n = w.len();
        let ex = Example {
            id: "210115000101001".into(),
            survey: spectok_io::Survey::Galah,
            medium: spectok_io::Medium::Air,
            log_scale: 2.5,
            flux: (0..n)
                .map(|i| 1.0 + 0.1 * ((i as f32) * 0.3).sin())
                .collect(),
            sigma: vec![0.05; n],
            reconstruction: (0..n)
                .map(|i| 1.0 + 0.08 * ((i as f32) * 0.3).sin())
                .collect(),
            valid: (0..n).map(|i| !(50..60).contains(&i)).collect(),
            hidden: (0..n).map(|i| (100..116).contains(&i)).collect(),
            wavelength: w,
        };
        let recon = Reconstructions {
            step: 10,
            transform: spectok_data::Transform::None,
            examples: vec![ex],
        };
        recon.write(&run.join(RECONSTRUCTIONS_FILE)).unwrap();
        for text in [false, true] {
            if text && !fonts_available() {
                eprintln!("skipping the text variant: no font on this system");
                continue;
            }
            let out = run.join(format!("plots-{text}"));
            let files = render_with(run, &out, text).unwrap();
            let names: Vec<String> = files
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["loss.png", "reconstruction-galah-1.png"]);
            for f in &files {
                let bytes = std::fs::read(f).unwrap();
                assert_eq!(&bytes[1..4], b"PNG", "{}", f.display());
            }
        }
        assert!(render_with(&run.join("nothing"), &run.join("x"), false).is_err());
    }
}
