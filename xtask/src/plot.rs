//! Line charts over epochs as PNG and SVG, drawn with plotters and an embedded font.
//!
//! plotters runs without its default features: the bitmap and SVG backends only, text through
//! its pure-Rust `ab_glyph` path with DejaVu Sans embedded (`xtask/assets/fonts/`, see its
//! README for the licence), and PNGs encoded with the `png` crate. Nothing needs fontconfig,
//! freetype or any other system library.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

pub use plotters::chart::SeriesLabelPosition as Legend;

/// DejaVu Sans cut down to Latin-1, Greek and a few signs (28 KB).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";
/// Width and height of one panel, in pixels.
const PANEL: (u32, u32) = (760, 480);

/// Colours of the series, in order (Tableau 10, readable on white).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Values beyond this magnitude are drawn at the edge of the chart: plot ranges stay finite and
/// bounded whatever a run recorded (a coefficient can reach 1e300).
const MAX_MAGNITUDE: f64 = 1e12;

/// One line: `(x, y)` points; non-finite `y` values are left out.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed with hollow markers (e.g. a second view of the same quantity).
    pub dashed: bool,
    /// Palette index; by default the series' position.
    pub colour: Option<usize>,
    /// A shaded band `(x, low, high)` around the line (e.g. a 95% confidence interval).
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), points, dashed: false, colour: None, band: Vec::new() }
    }

    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }

    pub fn band(mut self, band: Vec<(f64, f64, f64)>) -> Self {
        self.band = band;
        self
    }

    /// Shares a colour with another series (e.g. the same modality).
    pub fn colour(mut self, index: usize) -> Self {
        self.colour = Some(index);
        self
    }

    /// The points the chart draws, in its y scale; what it cannot draw is left out.
    fn drawn_points(&self, scale: YScale) -> Vec<(f64, f64)> {
        self.points.iter().filter_map(|&(x, y)| Some((bounded(x)?, scale.to_axis(y)?))).collect()
    }

    fn drawn_band(&self, scale: YScale) -> Vec<(f64, f64, f64)> {
        self.band
            .iter()
            .filter_map(|&(x, lo, hi)| Some((bounded(x)?, scale.to_axis(lo)?, scale.to_axis(hi)?)))
            .collect()
    }
}

/// A finite value clamped to ±[`MAX_MAGNITUDE`].
fn bounded(v: f64) -> Option<f64> {
    v.is_finite().then(|| v.clamp(-MAX_MAGNITUDE, MAX_MAGNITUDE))
}

/// How values map to the y axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YScale {
    Linear,
    /// Fractions shown as percentages (0.5 is labelled 50%).
    Percent,
    /// Base-10 logarithmic; values <= 0 are left out.
    Log,
}

impl YScale {
    /// The axis coordinate of a value (log10 on a log axis).
    fn to_axis(self, v: f64) -> Option<f64> {
        match self {
            Self::Log => (v > 0.0).then(|| v.log10()).and_then(bounded),
            _ => bounded(v),
        }
    }

    fn label(self, y: f64) -> String {
        match self {
            Self::Linear => format!("{y:.3}"),
            Self::Percent => format!("{:.1}%", 100.0 * y),
            Self::Log => format!("{:.3}", 10f64.powf(y)),
        }
    }

    /// The smallest y span a chart shows (flat series stay readable).
    fn min_span(self) -> f64 {
        match self {
            Self::Log => 0.1,
            _ => 0.02,
        }
    }
}

/// One chart: a title, axis names and its series.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range; `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    pub y_scale: YScale,
    pub legend: Legend,
}

impl Panel {
    pub fn new(title: impl Into<String>, y_label: impl Into<String>, series: Vec<Series>) -> Self {
        Self {
            title: title.into(),
            x_label: "epoch".into(),
            y_label: y_label.into(),
            series,
            y_range: None,
            y_scale: YScale::Linear,
            legend: Legend::LowerRight,
        }
    }

    pub fn legend(mut self, at: Legend) -> Self {
        self.legend = at;
        self
    }

    pub fn y_scale(mut self, scale: YScale) -> Self {
        self.y_scale = scale;
        self
    }
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for family in [FAMILY, "serif", "monospace"] {
            let ok = plotters::style::register_font(family, FontStyle::Normal, FONT).is_ok();
            assert!(ok, "the embedded font does not parse");
        }
    });
}

fn drawing<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e}")
}

/// The range of the data with some room around it, never empty, always finite.
fn padded(values: impl Iterator<Item = f64>, min_span: f64, pad: f64) -> (f64, f64) {
    let (lo, hi) =
        values.filter_map(bounded).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    // Relative to the values too: a span below the float resolution draws no ticks.
    let span = (hi - lo).max(min_span).max(1e-9 * lo.abs().max(hi.abs()));
    let mid = 0.5 * (lo + hi);
    (mid - 0.5 * span - pad * span, mid + 0.5 * span + pad * span)
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> anyhow::Result<()> {
    let scale = panel.y_scale;
    let points: Vec<Vec<(f64, f64)>> = panel.series.iter().map(|s| s.drawn_points(scale)).collect();
    let bands: Vec<Vec<(f64, f64, f64)>> = panel.series.iter().map(|s| s.drawn_band(scale)).collect();
    let (x0, x1) = padded(points.iter().flatten().map(|p| p.0), 1.0, 0.03);
    let band_ys = bands.iter().flatten().flat_map(|b| [b.1, b.2]);
    let (y0, y1) = panel
        .y_range
        .unwrap_or_else(|| padded(points.iter().flatten().map(|p| p.1).chain(band_ys), scale.min_span(), 0.08));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(drawing)?;
    let integer_x = panel.series.iter().flat_map(|s| &s.points).all(|p| p.0.fract() == 0.0);
    let x_labels = if integer_x { ((x1 - x0).floor() as usize + 1).min(11) } else { 11 };
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .x_labels(x_labels)
        .y_labels(8)
        .x_label_formatter(&|x| if integer_x { format!("{x:.0}") } else { format!("{x:.2}") })
        .y_label_formatter(&|y| scale.label(*y))
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(drawing)?;
    // Bands first, so every line stays on top of every band.
    for (i, (series, band)) in panel.series.iter().zip(&bands).enumerate() {
        if band.len() >= 2 {
            let color = PALETTE[series.colour.unwrap_or(i) % PALETTE.len()];
            let outline: Vec<(f64, f64)> =
                band.iter().map(|b| (b.0, b.2)).chain(band.iter().rev().map(|b| (b.0, b.1))).collect();
            chart.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18).filled()))).map_err(drawing)?;
        }
    }
    for (i, (series, pts)) in panel.series.iter().zip(&points).enumerate() {
        let color = PALETTE[series.colour.unwrap_or(i) % PALETTE.len()];
        let style = ShapeStyle { color: color.to_rgba(), filled: false, stroke_width: 2 };
        let dashed = series.dashed;
        let drawn = if dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style)).map_err(drawing)?
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(drawing)?
        };
        // The legend shows the line's dash and its marker, so overlapping series stay apart.
        // Dashed series carry hollow markers, solid ones filled markers; the legend shows both, so
        // overlapping series stay apart. Coordinates after `EmptyElement::at` are relative.
        let marker = if dashed { style } else { color.filled() };
        let (gap_start, gap_end) = if dashed { (8, 16) } else { (12, 12) };
        drawn.label(series.name.as_str()).legend(move |at| {
            EmptyElement::at(at)
                + PathElement::new(vec![(0, 0), (gap_start, 0)], style)
                + PathElement::new(vec![(gap_end, 0), (24, 0)], style)
                + Circle::new((12, 0), 4, marker)
        });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, if dashed { 4 } else { 3 }, marker))).map_err(drawing)?;
    }
    if !panel.series.is_empty() {
        chart
            .configure_series_labels()
            .position(panel.legend.clone())
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .label_font((FAMILY, 15))
            .draw()
            .map_err(drawing)?;
    }
    Ok(())
}

fn draw_all<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, panels: &[Panel]) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(drawing)?;
    for (area, panel) in root.split_evenly((1, panels.len().max(1))).iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(drawing)
}

fn size(panels: &[Panel]) -> (u32, u32) {
    (PANEL.0 * panels.len().max(1) as u32, PANEL.1)
}

/// The PNG file (RGB, 8 bits) of the panels side by side.
pub fn png_bytes(panels: &[Panel]) -> anyhow::Result<Vec<u8>> {
    register_font();
    let (w, h) = size(panels);
    let mut pixels = vec![255u8; (w * h * 3) as usize];
    draw_all(BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area(), panels)?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

/// The SVG document of the panels side by side (text stays text).
pub fn svg_string(panels: &[Panel]) -> anyhow::Result<String> {
    register_font();
    let mut out = String::new();
    draw_all(SVGBackend::with_string(&mut out, size(panels)).into_drawing_area(), panels)?;
    Ok(out)
}

/// Writes `<stem>.png` and `<stem>.svg`; returns both paths.
pub fn render(stem: &Path, panels: &[Panel]) -> anyhow::Result<[PathBuf; 2]> {
    let png_path = stem.with_extension("png");
    let svg_path = stem.with_extension("svg");
    agm_train::checkpoint::write_atomic(&png_path, &png_bytes(panels)?)?;
    agm_train::checkpoint::write_atomic(&svg_path, svg_string(panels)?.as_bytes())?;
    Ok([png_path, svg_path])
}

/// Test helpers shared by the report and study tests.
#[cfg(test)]
pub mod check {
    use std::path::Path;

    /// Decodes a PNG into its RGB pixels.
    pub fn rgb_pixels(path: &Path) -> Vec<[u8; 3]> {
        let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("a sane size")];
        let info = reader.next_frame(&mut buf).expect("one frame");
        assert!(info.width >= 100 && info.height >= 100, "{}: {}x{}", path.display(), info.width, info.height);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        let channels = info.color_type.samples();
        assert!(channels >= 3, "{}: not RGB", path.display());
        buf[..info.buffer_size()].chunks(channels).map(|px| [px[0], px[1], px[2]]).collect()
    }

    /// Pixels that are not the white background (axes, text, lines).
    pub fn non_background_pixels(path: &Path) -> usize {
        rgb_pixels(path).iter().filter(|px| px.iter().any(|&c| c < 250)).count()
    }

    /// Pixels of a clear colour (not white, grey or black): the series' lines and markers.
    pub fn coloured_pixels(path: &Path) -> usize {
        rgb_pixels(path).iter().filter(|px| px.iter().max().unwrap().abs_diff(*px.iter().min().unwrap()) > 60).count()
    }

    /// The text elements of an SVG, trimmed and unescaped.
    pub fn svg_texts(path: &Path) -> Vec<String> {
        let svg = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(svg.starts_with("<svg"), "{} is not an SVG", path.display());
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..t.find("</text>")?];
                Some(
                    body.trim()
                        .replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&quot;", "\"")
                        .replace("&apos;", "'")
                        .replace("&amp;", "&"),
                )
            })
            .collect()
    }

    /// Panics unless the SVG holds every name as a text element of its own.
    pub fn svg_names(path: &Path, names: &[&str]) {
        let texts = svg_texts(path);
        for name in names {
            assert!(texts.iter().any(|t| t == name), "{} does not name `{name}`; its texts: {texts:?}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_lines_and_text_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let panel = Panel::new(
            "Accuracy",
            "accuracy",
            vec![
                Series::new("validation accuracy", vec![(1.0, 0.5), (2.0, 0.7), (3.0, 0.8)]),
                Series::new("one point", vec![(2.0, 0.6)]).dashed(),
                Series::new("nothing finite", vec![(1.0, f64::NAN)]),
            ],
        );
        let [png_path, svg_path] = render(&dir.path().join("acc"), &[panel.clone(), panel]).unwrap();
        // Axes, text and lines together cover well over a thousand pixels.
        assert!(check::non_background_pixels(&png_path) > 1000);
        assert!(check::coloured_pixels(&png_path) > 200);
        check::svg_names(&svg_path, &["validation accuracy", "one point", "Accuracy", "epoch"]);
        // An empty panel still renders (axes only).
        let empty = Panel::new("Nothing yet", "value", vec![]);
        assert!(png_bytes(&[empty]).unwrap().len() > 100);
    }
}
