//! Line charts over epochs as PNG and SVG, drawn with plotters and an embedded font.
//!
//! plotters runs without its default features: the bitmap and SVG backends only, text through
//! its pure-Rust `ab_glyph` path with DejaVu Sans embedded (`xtask/assets/fonts/`, see its
//! README for the licence), and PNGs encoded with the `png` crate. Nothing needs fontconfig,
//! freetype or any other system library.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// DejaVu Sans cut down to Latin-1, Greek and a few signs (28 KB).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";
/// Width and height of one panel, in pixels.
const PANEL: (u32, u32) = (760, 480);

/// Colours of the series, in order: Tableau 10, then its lighter shades (Tableau 20's), so that
/// up to 20 series (a study of every method) keep colours of their own.
const PALETTE: [RGBColor; 20] = [
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
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

/// Height of one legend row below a chart, in pixels; legends sit below the chart, in
/// [`LEGEND_COLUMNS`] columns, so they never cover data.
const LEGEND_ROW: u32 = 22;
const LEGEND_COLUMNS: usize = 2;
/// A generous width of one legend character at its 15 px font, in pixels.
const LEGEND_CHAR_WIDTH: usize = 9;
/// The legend's left and right margins: the chart's y-label area.
const LEGEND_MARGIN: usize = 78;

/// The width of one of `columns` legend columns, in pixels.
fn legend_column_width(columns: usize) -> usize {
    (PANEL.0 as usize - 2 * LEGEND_MARGIN) / columns
}

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

    /// Its colour as the `index`-th series of a chart.
    fn color(&self, index: usize) -> RGBColor {
        PALETTE[self.colour.unwrap_or(index) % PALETTE.len()]
    }

    fn line_style(&self, index: usize) -> ShapeStyle {
        ShapeStyle { color: self.color(index).to_rgba(), filled: false, stroke_width: 2 }
    }

    /// Dashed series carry hollow markers, solid ones filled markers, so that overlapping series
    /// stay apart.
    fn marker_style(&self, index: usize) -> ShapeStyle {
        if self.dashed {
            self.line_style(index)
        } else {
            self.color(index).filled()
        }
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

    /// The y ticks in axis coordinates: plotters' own on linear axes; 1, 2 and 5 times powers of
    /// ten on a log axis (decades only where those are too many), or the linear ticks of the log
    /// values where the range holds fewer than two.
    fn ticks(self, y0: f64, y1: f64) -> Vec<f64> {
        let linear = || RangedCoordf64::from(y0..y1).key_points(8usize);
        if self != Self::Log {
            return linear();
        }
        let in_range = |mantissas: &[f64]| -> Vec<f64> {
            let decades = y0.floor() as i64..=y1.ceil() as i64;
            decades
                .flat_map(|k| mantissas.iter().map(move |m| k as f64 + m.log10()))
                .filter(|t| (y0..=y1).contains(t))
                .collect()
        };
        let nice = in_range(&[1.0, 2.0, 5.0]);
        if nice.len() <= 10 && nice.len() >= 2 {
            return nice;
        }
        let decades = in_range(&[1.0]);
        if decades.len() >= 2 {
            let step = decades.len().div_ceil(10);
            return decades.into_iter().step_by(step).collect();
        }
        // A span narrower than 1-2-5 steps (a loss from 1.2 to 2.3): round values, placed on the
        // log axis.
        let round: Vec<f64> = RangedCoordf64::from(10f64.powf(y0)..10f64.powf(y1))
            .key_points(8usize)
            .into_iter()
            .filter(|v| *v > 0.0)
            .map(f64::log10)
            .collect();
        if round.len() >= 2 {
            return round;
        }
        linear()
    }

    /// Tick labels, with the fewest decimals that tell `ticks` apart.
    fn labels(self, ticks: &[f64]) -> Vec<String> {
        match self {
            Self::Linear => shortest(ticks).into_iter().collect(),
            Self::Percent => {
                let percent: Vec<f64> = ticks.iter().map(|t| 100.0 * t).collect();
                shortest(&percent).into_iter().map(|l| format!("{l}%")).collect()
            }
            Self::Log => ticks.iter().map(|&t| significant(10f64.powf(t), 3)).collect(),
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
        }
    }

    /// Columns of the legend below the chart: two, or one where a name would not fit half the
    /// width (long run directory names in a comparison).
    fn legend_columns(&self) -> usize {
        let longest = self.series.iter().map(|s| s.name.chars().count()).max().unwrap_or(0);
        if longest * LEGEND_CHAR_WIDTH + 40 > legend_column_width(LEGEND_COLUMNS) {
            1
        } else {
            LEGEND_COLUMNS
        }
    }

    /// Rows of the legend below the chart.
    fn legend_rows(&self) -> u32 {
        self.series.len().div_ceil(self.legend_columns()) as u32
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

/// A linear f64 axis whose grid and labels sit at given ticks (plotters' `WithKeyPoints` of an
/// f64 range takes no label formatter).
struct TickedAxis {
    range: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.range.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Light grid lines would be unlabelled ticks of plotters' own choosing.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.range()
    }
}

/// `values` with the fewest decimals (at most 6) at which each reads back within a thousandth
/// of the smallest gap between them.
fn shortest(values: &[f64]) -> Vec<String> {
    let gap = values.windows(2).map(|w| (w[1] - w[0]).abs()).filter(|g| *g > 0.0).fold(f64::INFINITY, f64::min);
    let tolerance = if gap.is_finite() { 1e-3 * gap } else { 1e-9 };
    let decimals = (0..=6)
        .find(|&d| {
            values.iter().all(|v| (format!("{v:.d$}").parse::<f64>().unwrap_or(f64::NAN) - v).abs() <= tolerance)
        })
        .unwrap_or(6);
    values.iter().map(|v| format!("{v:.decimals$}")).collect()
}

/// `v` to `digits` significant digits, without trailing zeros; powers of ten beyond 1e-4 and
/// 1e6 in scientific notation (`1e-5`).
pub fn significant(v: f64, digits: usize) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor();
    if !(-4.0..6.0).contains(&magnitude) {
        let text = format!("{v:.prec$e}", prec = digits.saturating_sub(1));
        let (mantissa, exponent) = text.split_once('e').expect("scientific notation");
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exponent}");
    }
    let decimals = (digits as f64 - 1.0 - magnitude).max(0.0) as usize;
    let text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
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
    let (chart_area, legend_area) = area.split_vertically(PANEL.1);
    let scale = panel.y_scale;
    let points: Vec<Vec<(f64, f64)>> = panel.series.iter().map(|s| s.drawn_points(scale)).collect();
    let bands: Vec<Vec<(f64, f64, f64)>> = panel.series.iter().map(|s| s.drawn_band(scale)).collect();
    let (x0, x1) = padded(points.iter().flatten().map(|p| p.0), 1.0, 0.03);
    let band_ys = bands.iter().flatten().flat_map(|b| [b.1, b.2]);
    let (y0, y1) = panel.y_range.unwrap_or_else(|| {
        let (y0, y1) = padded(points.iter().flatten().map(|p| p.1).chain(band_ys), scale.min_span(), 0.08);
        // Accuracies stay within 0% and 100%: no bare strip beyond, no interval past them.
        if scale == YScale::Percent {
            (y0.max(0.0), y1.min(1.0).max(y0.max(0.0) + scale.min_span()))
        } else {
            (y0, y1)
        }
    });
    let ticks = scale.ticks(y0, y1);
    let labels: Vec<(f64, String)> = ticks.iter().copied().zip(scale.labels(&ticks)).collect();
    let mut chart = ChartBuilder::on(&chart_area)
        .caption(&panel.title, (FAMILY, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, TickedAxis { range: RangedCoordf64::from(y0..y1), ticks })
        .map_err(drawing)?;
    let integer_x = panel.series.iter().flat_map(|s| &s.points).all(|p| p.0.fract() == 0.0);
    let x_labels = if integer_x { ((x1 - x0).floor() as usize + 1).min(11) } else { 11 };
    let y_label = |y: &f64| labels.iter().find(|(t, _)| t == y).map_or_else(|| significant(*y, 3), |(_, l)| l.clone());
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .x_labels(x_labels)
        .x_label_formatter(&|x| if integer_x { format!("{x:.0}") } else { format!("{x:.2}") })
        .y_label_formatter(&y_label)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 16))
        .light_line_style(RGBColor(238, 238, 238))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(drawing)?;
    // Bands first, so every line stays on top of every band.
    for (i, (series, band)) in panel.series.iter().zip(&bands).enumerate() {
        if band.len() >= 2 {
            let outline: Vec<(f64, f64)> = band
                .iter()
                .map(|b| (b.0, b.2.clamp(y0, y1)))
                .chain(band.iter().rev().map(|b| (b.0, b.1.clamp(y0, y1))))
                .collect();
            let fill = series.color(i).mix(0.18).filled();
            chart.draw_series(std::iter::once(Polygon::new(outline, fill))).map_err(drawing)?;
        }
    }
    for (i, (series, pts)) in panel.series.iter().zip(&points).enumerate() {
        let style = series.line_style(i);
        if series.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, style)).map_err(drawing)?;
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style)).map_err(drawing)?;
        }
        let marker = series.marker_style(i);
        let radius = if series.dashed { 4 } else { 3 };
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, radius, marker))).map_err(drawing)?;
    }
    draw_legend(&legend_area, &panel.series, panel.legend_columns())
}

/// The legend below a chart: each series' dash and marker, then its name, in columns.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    series: &[Series],
    columns: usize,
) -> anyhow::Result<()> {
    let column_width = legend_column_width(columns) as i32;
    for (i, s) in series.iter().enumerate() {
        let (row, column) = ((i / columns) as i32, (i % columns) as i32);
        let x = LEGEND_MARGIN as i32 + column * column_width;
        let y = (LEGEND_ROW as i32) * row + LEGEND_ROW as i32 / 2;
        let (style, marker) = (s.line_style(i), s.marker_style(i));
        // Dashed series show a gap in their sample line and a hollow marker.
        let (gap_start, gap_end) = if s.dashed { (8, 16) } else { (12, 12) };
        area.draw(&PathElement::new(vec![(x, y), (x + gap_start, y)], style)).map_err(drawing)?;
        area.draw(&PathElement::new(vec![(x + gap_end, y), (x + 24, y)], style)).map_err(drawing)?;
        area.draw(&Circle::new((x + 12, y), 4, marker)).map_err(drawing)?;
        let font = (FAMILY, 15).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(s.name.clone(), (x + 32, y), font)).map_err(drawing)?;
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

/// Panels side by side, each as tall as the chart plus the longest legend below it.
fn size(panels: &[Panel]) -> (u32, u32) {
    let rows = panels.iter().map(Panel::legend_rows).max().unwrap_or(0);
    let legend = if rows > 0 { rows * LEGEND_ROW + 8 } else { 0 };
    (PANEL.0 * panels.len().max(1) as u32, PANEL.1 + legend)
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

    #[test]
    fn the_legend_sits_below_the_chart_and_grows_with_the_series() {
        let series = |n: usize| -> Vec<Series> {
            (0..n).map(|i| Series::new(format!("series {i}"), vec![(1.0, i as f64), (2.0, 1.0)])).collect()
        };
        assert_eq!(size(&[Panel::new("none", "y", vec![])]), (PANEL.0, PANEL.1));
        assert_eq!(size(&[Panel::new("three", "y", series(3))]), (PANEL.0, PANEL.1 + 2 * LEGEND_ROW + 8));
        // Side by side, panels share the tallest legend.
        let panels = [Panel::new("a", "y", series(1)), Panel::new("b", "y", series(5))];
        assert_eq!(size(&panels), (2 * PANEL.0, PANEL.1 + 3 * LEGEND_ROW + 8));
        // The legend's texts are drawn below the chart area.
        let svg = svg_string(&[Panel::new("three", "y", series(3))]).unwrap();
        let label = svg
            .split("<text")
            .find(|t| t.find('>').zip(t.find("</text>")).is_some_and(|(a, b)| t[a + 1..b].trim() == "series 2"))
            .expect("the legend names series 2");
        let y: f64 = label.split(" y=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
        assert!(y > PANEL.1 as f64, "series 2's label at y = {y}");
        // Names too long for half the width (default run directory names) take one column.
        let long = Series::new("av-digits-late-agm-seed0-20261208-034948 (validation)", vec![(1.0, 0.5)]);
        let panel = Panel::new("long", "y", vec![long.clone(), long]);
        assert_eq!((panel.legend_columns(), size(&[panel])), (1, (PANEL.0, PANEL.1 + 2 * LEGEND_ROW + 8)));
        // Twenty series keep twenty colours.
        let colours: std::collections::BTreeSet<_> = (0..20).map(|i| Series::new("", vec![]).color(i).rgb()).collect();
        assert_eq!(colours.len(), 20);
    }

    #[test]
    fn ticks_are_round_and_labelled_with_the_digits_they_need() {
        for (v, want) in [(1e-5, "1e-5"), (0.000_123_45, "0.000123"), (2.0, "2"), (1_234_567.0, "1.23e6"), (0.9, "0.9")]
        {
            assert_eq!(significant(v, 3), want);
        }
        assert_eq!(significant(-0.0251, 2), "-0.025");
        assert_eq!(shortest(&[0.0, 0.5, 1.0, 1.5]), ["0.0", "0.5", "1.0", "1.5"]);
        assert_eq!(shortest(&[0.9, 1.0, 1.1]), ["0.9", "1.0", "1.1"]);
        assert_eq!(shortest(&[2.0, 4.0]), ["2", "4"]);
        // A log axis from 0.005 to 2.3: 1, 2 and 5 times powers of ten.
        let ticks = YScale::Log.ticks(0.005f64.log10(), 2.3f64.log10());
        assert_eq!(YScale::Log.labels(&ticks), ["0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"]);
        // Over many decades, decades only; within one narrow span, plain ticks of the log values.
        let ticks = YScale::Log.ticks(-12.0, 2.0);
        assert!(ticks.iter().all(|t| t.fract() == 0.0) && ticks.len() <= 10, "{ticks:?}");
        assert!(YScale::Log.ticks(0.1, 0.2).len() >= 2);
        // A loss from 1.2 to 2.3 (a short run): round values, not round logarithms.
        let ticks = YScale::Log.ticks(1.2f64.log10(), 2.3f64.log10());
        let labels = YScale::Log.labels(&ticks);
        assert!(labels.len() >= 3 && labels.iter().all(|l| l.len() <= 3), "{labels:?}");
        assert_eq!(YScale::Percent.labels(&[0.5, 0.75, 1.0]), ["50%", "75%", "100%"]);
    }
}
