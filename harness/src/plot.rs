//! SVG charts for experiment reports, drawn with `plotters`.
//!
//! Two kinds of chart cover the experiments: [`line_chart`] (one line per series, with
//! a marker on every point) and [`bar_chart`] (grouped bars, one group per category).
//! Both take any input without panicking: non-finite values are dropped, so are
//! non-positive values on a logarithmic axis (a note at the bottom of the chart says how
//! many), degenerate ranges are widened, and a chart with nothing left to draw still
//! gets its axes, title and a "no data" label so a report never links a missing image.
//!
//! Text is emitted as SVG `<text>` elements (plotters' built-in font estimator, no font
//! files or font rendering involved), so the labels are searchable and scale cleanly.
//! Logarithmic axes are drawn by plotting `log10(v)` on a linear axis with ticks at
//! whole decades (and at 2 and 5 times them on short ranges), labelled with the
//! original values.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One named series of `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Name shown in the legend.
    pub name: String,
    /// The points. For [`line_chart`], `(x, y)`; for [`bar_chart`], `points[i].1` is the
    /// value of category `i` (`points[i].0` is ignored).
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name` with the given points.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
        }
    }
}

/// Title, axis labels and axis scales of a chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Axes {
    /// Chart title (drawn above the plot; empty for none).
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Logarithmic x axis (ignored by [`bar_chart`], whose x axis is categorical).
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
}

impl Axes {
    /// Linear axes with the given title and labels.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Axes {
        Axes {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_x: false,
            log_y: false,
        }
    }

    /// The same axes with the given scales.
    pub fn log(mut self, log_x: bool, log_y: bool) -> Axes {
        self.log_x = log_x;
        self.log_y = log_y;
        self
    }
}

const WIDTH: u32 = 960;
const HEIGHT: u32 = 560;
const FONT: &str = "sans-serif";
/// Font sizes (plotters' units; the SVG gets them divided by 1.24).
const TITLE_SIZE: u32 = 26;
const DESC_SIZE: u32 = 18;
const LABEL_SIZE: u32 = 16;
const NOTE_SIZE: u32 = 14;
/// Approximate width of one character of the label and legend font, in pixels.
const CHAR_PX: u32 = 8;
/// Height of the x label area with horizontal labels, in pixels.
const X_LABEL_AREA: u32 = 60;
/// Width of the y label area, in pixels.
const Y_LABEL_AREA: u32 = 90;
/// Margin around the chart, in pixels.
const MARGIN: u32 = 16;
/// Longest rotated category label, in characters.
const MAX_ROTATED_CHARS: usize = 22;
/// Okabe-Ito colour-blind safe palette (yellow last: it is pale on white).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];
/// Most markers drawn on one line; denser series are drawn as bare lines.
const MAX_MARKERS: usize = 120;

/// The colour of series `i`.
fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One axis after scale transformation: the value range and the ticks, in plot units
/// (`log10(v)` on a log axis).
#[derive(Debug, Clone, PartialEq)]
struct AxisSpec {
    lo: f64,
    hi: f64,
    log: bool,
    /// Labelled ticks.
    bold: Vec<f64>,
    /// Unlabelled grid lines.
    light: Vec<f64>,
    /// Distance between linear ticks (decides how many decimals labels get).
    step: f64,
}

impl AxisSpec {
    /// The axis drawn when there is nothing to plot: no ticks.
    fn empty(log: bool) -> AxisSpec {
        AxisSpec {
            lo: 0.0,
            hi: 1.0,
            log,
            bold: Vec::new(),
            light: Vec::new(),
            step: 1.0,
        }
    }

    /// An axis covering `values` (already filtered and transformed to plot units).
    /// `include_zero` (bar charts) keeps 0 in a linear range and puts the bottom of a
    /// logarithmic one on a decade below the smallest value. `None` when the range
    /// cannot be represented (no values, or overflow when padding).
    fn fit(values: &[f64], log: bool, include_zero: bool) -> Option<AxisSpec> {
        let mut lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() || !hi.is_finite() {
            return None;
        }
        let spec = if log {
            let (dmin, dmax) = (lo, hi);
            let span = dmax - dmin;
            let pad = if span > 1e-9 { span * 0.05 } else { 0.5 };
            hi = dmax + pad;
            lo = if include_zero {
                // Bars start at the bottom: a decade, far enough below the smallest
                // value that its bar shows.
                let d = dmin.floor();
                if dmin - d < 0.3 {
                    d - 1.0
                } else {
                    d
                }
            } else {
                dmin - pad
            };
            let (bold, light) = log_ticks(lo, hi);
            AxisSpec {
                lo,
                hi,
                log,
                bold,
                light,
                step: 1.0,
            }
        } else {
            if include_zero {
                lo = lo.min(0.0);
                hi = hi.max(0.0);
            }
            let magnitude = lo.abs().max(hi.abs());
            if hi - lo <= magnitude * 1e-9 {
                // A single value (or all equal): widen around it.
                let d = if magnitude > 0.0 {
                    magnitude * 0.1
                } else {
                    1.0
                };
                if include_zero && lo == 0.0 && hi == 0.0 {
                    hi = 1.0;
                } else {
                    lo -= d;
                    hi += d;
                }
            } else {
                // Headroom, except below a zero baseline of bars.
                let pad = (hi - lo) * 0.05;
                if !(include_zero && lo == 0.0) {
                    lo -= pad;
                }
                if !(include_zero && hi == 0.0) {
                    hi += pad;
                }
            }
            if !lo.is_finite() || !hi.is_finite() || hi <= lo {
                return None;
            }
            let step = nice_step((hi - lo) / 6.0);
            if !step.is_finite() || step <= 0.0 {
                return None;
            }
            let mut bold = Vec::new();
            let mut t = (lo / step).ceil() * step;
            while t <= hi + step * 1e-9 && bold.len() < 40 {
                // Snap values like 0.30000000000000004 and -0.0.
                let snapped = (t / step).round() * step;
                bold.push(if snapped == 0.0 { 0.0 } else { snapped });
                t += step;
            }
            AxisSpec {
                lo,
                hi,
                log,
                bold,
                light: Vec::new(),
                step,
            }
        };
        (spec.lo.is_finite() && spec.hi.is_finite() && spec.hi > spec.lo).then_some(spec)
    }

    /// The label of tick `v` (plot units).
    fn label(&self, v: f64) -> String {
        if !self.log {
            return format_value(v, self.step);
        }
        let value = 10f64.powf(v);
        let mut e = (v + 1e-9).floor();
        let mut m = value / 10f64.powf(e);
        if m >= 9.9995 {
            m = 1.0;
            e += 1.0;
        }
        if (-3.0..=4.0).contains(&e) {
            trim_zeros(format_value(value, 10f64.powf(e - 2.0)))
        } else {
            let mantissa = trim_zeros(format!("{m:.2}"));
            if mantissa == "1" {
                format!("1e{}", e as i64)
            } else {
                format!("{mantissa}e{}", e as i64)
            }
        }
    }
}

/// The axis as a plotters coordinate: linear over `lo..hi` in plot units, with our
/// own ticks (labels come from the formatters given to the mesh).
impl Ranged for AxisSpec {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        let frac = if span > 0.0 {
            (value - self.lo) / span
        } else {
            0.5
        };
        let frac = if frac.is_nan() {
            0.5
        } else {
            frac.clamp(-10.0, 10.0)
        };
        let px = f64::from(limit.0) + f64::from(limit.1 - limit.0) * frac;
        px.round()
            .clamp(f64::from(i32::MIN / 2), f64::from(i32::MAX / 2)) as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// Ticks of a logarithmic axis over `lo..hi` (plot units): labelled decades (every
/// k-th on long ranges), plus 2x and 5x on short ranges, or, on a range too short to
/// hold two of those, evenly spaced values; unlabelled lines at 2x..9x.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let inside = |v: f64| v >= lo - 1e-9 && v <= hi + 1e-9;
    let first = lo.floor();
    let decades = hi - lo;
    let every = (decades / 8.0).ceil().max(1.0);
    let mut bold = Vec::new();
    let mut light = Vec::new();
    let mut d = first;
    while d <= hi + 1e-9 && bold.len() < 200 {
        let on_grid = ((d - first) / every).round() * every + first == d;
        if inside(d) && on_grid {
            bold.push(d);
        }
        for m in 2..=9 {
            let p = d + f64::from(m).log10();
            if !inside(p) {
                continue;
            }
            if decades <= 2.5 && (m == 2 || m == 5) {
                bold.push(p);
            } else if every <= 1.0 {
                light.push(p);
            }
        }
        d += 1.0;
    }
    if bold.len() < 2 {
        // Less than a decade: evenly spaced values.
        let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
        let step = nice_step((b - a) / 4.0);
        bold.clear();
        light.clear();
        let mut t = (a / step).ceil() * step;
        while t <= b && bold.len() < 10 {
            if t > 0.0 {
                bold.push(t.log10());
            }
            t += step;
        }
    }
    (bold, light)
}

/// Removes trailing zeros after a decimal point (and the point itself).
fn trim_zeros(s: String) -> String {
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let exp = raw.log10().floor();
    let base = 10f64.powf(exp);
    let frac = raw / base;
    let nice = if frac <= 1.0 {
        1.0
    } else if frac <= 2.0 {
        2.0
    } else if frac <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * base
}

/// `v` with as many decimals as a tick spacing of `step` needs; scientific notation
/// for very large or very small magnitudes.
fn format_value(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    let step_ok = step > 0.0 && step.is_finite();
    if !(1e-4..1e7).contains(&a) {
        // Enough mantissa digits to tell ticks `step` apart.
        let digits = if step_ok {
            (a.log10().floor() - step.log10().floor()).clamp(1.0, 6.0) as usize
        } else {
            2
        };
        let sci = format!("{v:.digits$e}");
        return match sci.split_once('e') {
            Some((m, e)) => format!("{}e{e}", trim_zeros(m.to_string())),
            None => sci,
        };
    }
    let decimals = if step_ok {
        (-step.log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        2
    };
    format!("{v:.decimals$}")
}

/// Shortens `s` to at most `max` characters, ending with an ellipsis when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    let mut out: String = s.chars().take(keep).collect();
    out.push('…');
    out
}

/// How many values a chart left out, and why.
#[derive(Debug, Default)]
struct Dropped {
    non_finite: usize,
    non_positive: usize,
}

impl Dropped {
    /// The chart footnote, if anything was dropped.
    fn note(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.non_finite > 0 {
            parts.push(format!("{} non-finite value(s)", self.non_finite));
        }
        if self.non_positive > 0 {
            parts.push(format!("{} value(s) <= 0 on a log axis", self.non_positive));
        }
        (!parts.is_empty()).then(|| format!("not shown: {}", parts.join(", ")))
    }

    /// `v` in plot units, or `None` (counted) when it cannot be drawn.
    fn transform(&mut self, v: f64, log: bool) -> Option<f64> {
        if !v.is_finite() {
            self.non_finite += 1;
            None
        } else if log {
            if v <= 0.0 {
                self.non_positive += 1;
                None
            } else {
                Some(v.log10()).filter(|l| l.is_finite())
            }
        } else {
            Some(v)
        }
    }
}

/// Maps an error of plotters into anyhow.
fn draw_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e}")
}

/// Renders into an SVG string with `draw`, then writes it to `path`.
fn render(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// Splits `root` into the plot area and, when there are series, a legend strip on the
/// right sized for the longest name. Returns the plot area and the legend (if any).
fn split_legend<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    names: &[&str],
) -> (
    DrawingArea<SVGBackend<'a>, Shift>,
    Option<DrawingArea<SVGBackend<'a>, Shift>>,
) {
    if names.is_empty() {
        return (root.clone(), None);
    }
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0) as u32;
    let width = (longest * CHAR_PX + 60).clamp(130, 320);
    let (plot, legend) = root.split_horizontally(WIDTH - width);
    (plot, Some(legend))
}

/// Draws the legend entries (a line with a marker, then the name) top down.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    names: &[&str],
    bars: bool,
) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let max_chars = (w.saturating_sub(50) / CHAR_PX).max(4) as usize;
    let style = TextStyle::from((FONT, LABEL_SIZE).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    for (i, name) in names.iter().enumerate() {
        let y = 60 + 24 * i as i32;
        let c = color(i);
        if bars {
            area.draw(&Rectangle::new([(8, y - 7), (30, y + 7)], c.filled()))
                .map_err(draw_err)?;
        } else {
            area.draw(&PathElement::new(vec![(6, y), (32, y)], c.stroke_width(2)))
                .map_err(draw_err)?;
            area.draw(&Circle::new((19, y), 4, c.filled()))
                .map_err(draw_err)?;
        }
        area.draw(&Text::new(
            truncate(name, max_chars),
            (40, y),
            style.clone(),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

/// A chart context over two prepared axes, with title, mesh, labels and axis titles.
fn build_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    axes: &Axes,
    x: &AxisSpec,
    y: &AxisSpec,
    x_label_of: &dyn Fn(f64) -> String,
    x_label_area: u32,
    bars: bool,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<AxisSpec, AxisSpec>>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(MARGIN)
        .x_label_area_size(x_label_area)
        .y_label_area_size(Y_LABEL_AREA);
    if !axes.title.is_empty() {
        builder.caption(&axes.title, (FONT, TITLE_SIZE));
    }
    let mut chart = builder
        .build_cartesian_2d(x.clone(), y.clone())
        .map_err(draw_err)?;
    let x_fmt = |v: &f64| x_label_of(*v);
    let y_fmt = |v: &f64| y.label(*v);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(axes.x_label.as_str())
        .y_desc(axes.y_label.as_str())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FONT, LABEL_SIZE))
        .axis_desc_style((FONT, DESC_SIZE))
        .bold_line_style(RGBColor(200, 200, 200).stroke_width(1))
        .light_line_style(RGBColor(235, 235, 235).stroke_width(1));
    if bars {
        mesh.disable_x_mesh();
    }
    mesh.draw().map_err(draw_err)?;
    Ok(chart)
}

/// Writes "no data" in the middle of an (empty) chart's plotting area.
fn draw_no_data<X, Y>(
    chart: &ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    x: &AxisSpec,
    y: &AxisSpec,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let area = chart.plotting_area();
    let center = ((x.lo + x.hi) / 2.0, (y.lo + y.hi) / 2.0);
    let style = TextStyle::from((FONT, 24).into_font())
        .color(&RGBColor(120, 120, 120))
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new("no data", center, style))
        .map_err(draw_err)?;
    Ok(())
}

/// Writes a footnote in the bottom-left corner of the whole image.
fn draw_note(root: &DrawingArea<SVGBackend<'_>, Shift>, note: &str) -> Result<()> {
    let style = TextStyle::from((FONT, NOTE_SIZE).into_font())
        .color(&RGBColor(110, 110, 110))
        .pos(Pos::new(HPos::Left, VPos::Bottom));
    root.draw(&Text::new(note.to_string(), (8, HEIGHT as i32 - 4), style))
        .map_err(draw_err)
}

/// Draws a line chart of `series` to the SVG file `path` (its directory is created).
///
/// One line per series, points sorted by x, a marker on every point (up to 120 per
/// series), a legend on the right. Non-finite points and, on logarithmic axes,
/// non-positive coordinates are left out (a footnote counts them). With nothing left
/// to draw, the chart still gets its axes and a "no data" label.
pub fn line_chart(path: &Path, axes: &Axes, series: &[Series]) -> Result<()> {
    let mut dropped = Dropped::default();
    let kept: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            let mut pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter_map(|&(x, y)| {
                    let x = dropped.transform(x, axes.log_x);
                    let y = dropped.transform(y, axes.log_y);
                    x.zip(y)
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            pts
        })
        .collect();
    let xs: Vec<f64> = kept.iter().flatten().map(|p| p.0).collect();
    let ys: Vec<f64> = kept.iter().flatten().map(|p| p.1).collect();
    let (has_data, x, y) = match (
        AxisSpec::fit(&xs, axes.log_x, false),
        AxisSpec::fit(&ys, axes.log_y, false),
    ) {
        (Some(x), Some(y)) => (true, x, y),
        _ => (
            false,
            AxisSpec::empty(axes.log_x),
            AxisSpec::empty(axes.log_y),
        ),
    };
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    render(path, |root| {
        let (plot, legend) = split_legend(root, &names);
        let x_label_of = |v: f64| x.label(v);
        let mut chart = build_chart(&plot, axes, &x, &y, &x_label_of, X_LABEL_AREA, false)?;
        if has_data {
            for (i, pts) in kept.iter().enumerate() {
                let c = color(i);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                    .map_err(draw_err)?;
                if pts.len() <= MAX_MARKERS {
                    chart
                        .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                        .map_err(draw_err)?;
                }
            }
        } else {
            draw_no_data(&chart, &x, &y)?;
        }
        if let Some(legend) = legend {
            draw_legend(&legend, &names, false)?;
        }
        if let Some(note) = dropped.note() {
            draw_note(root, &note)?;
        }
        Ok(())
    })
}

/// Draws a grouped bar chart to the SVG file `path` (its directory is created).
///
/// One group per category (labelled on the x axis), one bar per series in each group,
/// `series[j].points[i].1` being the value of series `j` for category `i` (missing
/// points draw no bar); a legend on the right. Bars start at 0 on a linear y axis and
/// at the bottom of the axis on a logarithmic one, where values <= 0 are left out.
/// With no categories or no drawable value, the chart gets a "no data" label.
pub fn bar_chart(path: &Path, axes: &Axes, categories: &[String], series: &[Series]) -> Result<()> {
    let mut dropped = Dropped::default();
    let n = categories.len();
    let kept: Vec<Vec<Option<f64>>> = series
        .iter()
        .map(|s| {
            (0..n)
                .map(|i| {
                    s.points
                        .get(i)
                        .and_then(|&(_, v)| dropped.transform(v, axes.log_y))
                })
                .collect()
        })
        .collect();
    let values: Vec<f64> = kept.iter().flatten().flatten().copied().collect();
    let y = AxisSpec::fit(&values, axes.log_y, true);
    let has_data = n > 0 && y.is_some();
    let y = y.unwrap_or_else(|| AxisSpec::empty(axes.log_y));
    let x = if n > 0 {
        AxisSpec {
            lo: -0.5,
            hi: n as f64 - 0.5,
            log: false,
            bold: (0..n).map(|i| i as f64).collect(),
            light: Vec::new(),
            step: 1.0,
        }
    } else {
        AxisSpec::empty(false)
    };
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    render(path, |root| {
        let (plot, legend) = split_legend(root, &names);
        // Category labels: horizontal under their group when they fit, otherwise
        // rotated (reading upwards, drawn below), every k-th one if even that is
        // too dense.
        let plot_width = plot
            .dim_in_pixel()
            .0
            .saturating_sub(Y_LABEL_AREA + 2 * MARGIN);
        let slot = f64::from(plot_width) / n.max(1) as f64;
        let longest = categories
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0);
        let horizontal = (longest as f64) * f64::from(CHAR_PX) + 8.0 <= slot;
        let rotated_chars = longest.min(MAX_ROTATED_CHARS);
        let x_label_area = if horizontal {
            X_LABEL_AREA
        } else {
            rotated_chars as u32 * CHAR_PX + 24 + LABEL_SIZE + 16
        };
        let every = if slot > 0.0 {
            (18.0 / slot).ceil().max(1.0) as usize
        } else {
            1
        };
        let x_label_of = |v: f64| {
            let i = v.round();
            if !horizontal || (v - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            categories.get(i as usize).cloned().unwrap_or_default()
        };
        let mut chart = build_chart(&plot, axes, &x, &y, &x_label_of, x_label_area, true)?;
        if !horizontal {
            let style = TextStyle::from((FONT, LABEL_SIZE).into_font())
                .color(&BLACK)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center));
            for (i, c) in categories.iter().enumerate().step_by(every) {
                let (px, py) = chart.backend_coord(&(i as f64, y.lo));
                root.draw(&Text::new(
                    truncate(c, rotated_chars),
                    (px, py + 10),
                    style.clone(),
                ))
                .map_err(draw_err)?;
            }
        }
        if has_data {
            let m = kept.len().max(1) as f64;
            let group = 0.8;
            let width = group / m;
            let base = if axes.log_y { y.lo } else { 0.0 };
            for (j, bars) in kept.iter().enumerate() {
                let c = color(j);
                let rects = bars.iter().enumerate().filter_map(|(i, v)| {
                    let v = (*v)?;
                    let x0 = i as f64 - group / 2.0 + j as f64 * width + width * 0.06;
                    let x1 = x0 + width * 0.88;
                    Some(Rectangle::new([(x0, base), (x1, v)], c.filled()))
                });
                chart.draw_series(rects).map_err(draw_err)?;
            }
        } else {
            draw_no_data(&chart, &x, &y)?;
        }
        if let Some(legend) = legend {
            draw_legend(&legend, &names, true)?;
        }
        if let Some(note) = dropped.note() {
            draw_note(root, &note)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).expect("svg written")
    }

    /// The text content of every `<text>` element.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = t.split_once('>')?.1;
                Some(body.split_once("</text>")?.0.trim().to_string())
            })
            .collect()
    }

    fn check_svg(svg: &str) {
        assert!(
            svg.trim_start().starts_with("<svg"),
            "not an svg: {}",
            &svg[..svg.len().min(80)]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn line_chart_has_labels_and_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/lat.svg");
        let axes = Axes::new("Latency vs size", "message size (B)", "latency (µs)").log(true, true);
        let series = vec![
            Series::new(
                "smr <router>",
                vec![(64.0, 1.5), (4096.0, 3.0), (1048576.0, 120.0)],
            ),
            Series::new(
                "naive",
                vec![(64.0, 2.0), (4096.0, 5.0), (1048576.0, 400.0)],
            ),
        ];
        line_chart(&path, &axes, &series).expect("chart");
        let svg = read(&path);
        check_svg(&svg);
        let t = texts(&svg);
        for want in [
            "Latency vs size",
            "message size (B)",
            "latency (µs)",
            "smr &lt;router&gt;",
            "naive",
        ] {
            assert!(t.iter().any(|s| s == want), "missing {want} in {t:?}");
        }
        // Decade ticks on the log axes.
        assert!(t.iter().any(|s| s == "100"), "{t:?}");
        assert!(
            svg.contains("<polyline") || svg.contains("<path"),
            "no line drawn"
        );
    }

    #[test]
    fn log_axes_drop_zeros_and_nan_without_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("z.svg");
        let axes = Axes::new("t", "x", "y").log(true, true);
        let series = vec![Series::new(
            "s",
            vec![
                (0.0, 1.0),
                (1.0, 0.0),
                (-3.0, -3.0),
                (f64::NAN, 2.0),
                (10.0, f64::INFINITY),
                (100.0, 5.0),
            ],
        )];
        line_chart(&path, &axes, &series).expect("chart");
        let svg = read(&path);
        check_svg(&svg);
        let t = texts(&svg);
        assert!(
            t.iter()
                .any(|s| s.contains("not shown") && s.contains("log axis")),
            "{t:?}"
        );
        // Only zeros: nothing left, "no data".
        let only_zero = vec![Series::new("s", vec![(0.0, 0.0), (0.0, 1.0)])];
        line_chart(&path, &axes, &only_zero).expect("chart");
        assert!(texts(&read(&path)).iter().any(|s| s == "no data"));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d.svg");
        let lin = Axes::new("", "x", "y");
        let cases: Vec<Vec<Series>> = vec![
            vec![],
            vec![Series::new("empty", vec![])],
            vec![Series::new("one", vec![(3.0, 7.0)])],
            vec![Series::new("zero", vec![(0.0, 0.0)])],
            vec![Series::new(
                "flat",
                vec![(1.0, 5.0), (2.0, 5.0), (3.0, 5.0)],
            )],
            vec![Series::new(
                "tiny",
                vec![(1.0, 1.0), (1.0 + 1e-15, 1.0 + 1e-15)],
            )],
            vec![Series::new(
                "huge",
                vec![(-f64::MAX, f64::MAX), (f64::MAX, -f64::MAX)],
            )],
            vec![Series::new(
                "sub",
                vec![(f64::MIN_POSITIVE / 4.0, 1e-300), (1.0, 1e300)],
            )],
        ];
        for series in &cases {
            for axes in [
                lin.clone(),
                lin.clone().log(true, true),
                lin.clone().log(false, true),
            ] {
                line_chart(&path, &axes, series).expect("chart");
                check_svg(&read(&path));
                let cats = vec!["a".to_string(), "b".to_string()];
                bar_chart(&path, &axes, &cats, series).expect("bars");
                check_svg(&read(&path));
                bar_chart(&path, &axes, &[], series).expect("bars");
                check_svg(&read(&path));
            }
        }
        line_chart(&path, &lin, &[]).expect("chart");
        assert!(texts(&read(&path)).iter().any(|s| s == "no data"));
    }

    #[test]
    fn bar_chart_labels_categories_and_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bars.svg");
        let axes = Axes::new("Broadcast time", "Tstores per node", "time (ms)");
        let cats: Vec<String> = ["1", "2", "4"].iter().map(|s| s.to_string()).collect();
        let series = vec![
            Series::new("smr", vec![(0.0, 10.0), (0.0, 11.0), (0.0, 12.5)]),
            Series::new("naive", vec![(0.0, 10.0), (0.0, 21.0)]),
        ];
        bar_chart(&path, &axes, &cats, &series).expect("chart");
        let svg = read(&path);
        check_svg(&svg);
        let t = texts(&svg);
        for want in [
            "Broadcast time",
            "Tstores per node",
            "time (ms)",
            "smr",
            "naive",
            "1",
            "2",
            "4",
        ] {
            assert!(t.iter().any(|s| s == want), "missing {want} in {t:?}");
        }
        // 3 + 2 bars + 2 legend swatches.
        assert!(svg.matches("<rect").count() >= 7);
        let log = axes.clone().log(false, true);
        let neg = vec![Series::new("n", vec![(0.0, -1.0), (0.0, 0.0), (0.0, 3.0)])];
        bar_chart(&path, &log, &cats, &neg).expect("chart");
        assert!(texts(&read(&path)).iter().any(|s| s.contains("not shown")));
        bar_chart(&path, &axes, &cats, &neg).expect("chart");
        check_svg(&read(&path));
    }

    #[test]
    fn tick_helpers() {
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(format_value(0.30000000000000004, 0.1), "0.3");
        assert_eq!(format_value(1500.0, 500.0), "1500");
        assert_eq!(format_value(2.5e9, 1e9), "2.5e9");
        assert_eq!(format_value(3e9, 1e9), "3e9");
        assert_eq!(format_value(1.05e7, 5e5), "1.05e7");
        assert_eq!(format_value(-2e-5, 1e-5), "-2e-5");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        let a = AxisSpec::fit(&[0.5, 2.5], true, false).expect("fits");
        assert!(
            (a.lo - 0.4).abs() < 1e-9 && (a.hi - 2.6).abs() < 1e-9,
            "{a:?}"
        );
        assert_eq!(a.bold.len(), 6, "{a:?}"); // 5, 10, 20, 50, 100, 200
        let bars = AxisSpec::fit(&[-2.0, 0.7], true, true).expect("fits");
        assert_eq!(bars.lo, -3.0);
        let short = AxisSpec::fit(&[300f64.log10(), 400f64.log10()], true, false).expect("fits");
        let labels: Vec<String> = short.bold.iter().map(|&v| short.label(v)).collect();
        assert!(
            labels.len() >= 2 && labels.iter().all(|l| l.len() == 3),
            "{labels:?}"
        );
        assert!(AxisSpec::fit(&[], false, false).is_none());
        let flat = AxisSpec::fit(&[0.0], false, false).expect("fits");
        assert!(flat.hi > flat.lo);
        let log = AxisSpec::fit(&[-6.0, 7.0], true, false).expect("fits");
        let labels: Vec<String> = [
            -6.0,
            -3.0,
            2f64.log10() - 1.0,
            0.0,
            4.0,
            5.0,
            5.0 + 2f64.log10(),
        ]
        .iter()
        .map(|&v| log.label(v))
        .collect();
        assert_eq!(labels, ["1e-6", "0.001", "0.2", "1", "10000", "1e5", "2e5"]);
    }
}
