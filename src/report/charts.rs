//! Charts as inline SVG, drawn with plotters on the server side: line charts over days or months with
//! an optional expected-range band and alarm markers, stacked monthly bars, and a cohort heatmap.

use plotters::coord::Shift;
use plotters::coord::types::{RangedCoordf64, RangedCoordi64};
use plotters::prelude::*;

use super::ReportError;
use crate::kpi::calendar::{date, month_first_day, month_of};

/// Pixel size of one chart; the page scales it to the width of its card.
pub const SIZE: (u32, u32) = (760, 300);

/// Colours of the series, in order.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
const ALARM: RGBColor = RGBColor(214, 39, 40);
const GRID: RGBColor = RGBColor(230, 230, 230);

/// The unit of the x axis: day numbers labelled as dates, or months labelled `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum XAxis {
    Day,
    Month,
}

/// A named series of (day number, value) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(i64, f64)>,
}

/// An expected range per period: (day number, low, high); an open side is drawn to the chart edge.
pub type Band = Vec<(i64, Option<f64>, Option<f64>)>;

/// Whatever a line chart shows.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub axis: XAxis,
    pub series: Vec<Series>,
    pub band: Band,
    pub alarms: Vec<(i64, f64)>,
    /// Values are rates shown as percentages.
    pub percent: bool,
}

fn err(chart: &str) -> impl Fn(String) -> ReportError + '_ {
    move |message| ReportError::Chart {
        chart: chart.to_string(),
        message,
    }
}

fn x_label(axis: XAxis, x: i64) -> String {
    match axis {
        XAxis::Day => date(x).format("%Y-%m-%d").to_string(),
        XAxis::Month => date(x).format("%Y-%m").to_string(),
    }
}

fn y_label(percent: bool, y: f64) -> String {
    if percent {
        format!("{:.0}%", y * 100.0)
    } else if y.abs() >= 10_000.0 {
        format!("{:.0}k", y / 1000.0)
    } else if y.fract() == 0.0 {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

fn x_range(xs: impl Iterator<Item = i64>, axis: XAxis) -> (i64, i64) {
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for x in xs {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if lo > hi {
        return (0, 1);
    }
    match axis {
        XAxis::Day => (lo, hi.max(lo + 1)),
        // a month's bar or point sits inside the month
        XAxis::Month => (lo, month_first_day(month_of(hi) + 1)),
    }
}

fn y_range(values: impl Iterator<Item = f64>, percent: bool) -> (f64, f64) {
    let hi = values.fold(0.0_f64, f64::max);
    if percent {
        return (0.0, hi.max(1.0) * 1.05);
    }
    (0.0, if hi <= 0.0 { 1.0 } else { hi * 1.1 })
}

/// Into an SVG string of [`SIZE`]; `draw` gets the root area.
fn svg(
    chart: &str,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
) -> Result<String, ReportError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(chart)(e.to_string()))?;
        draw(&root).map_err(err(chart))?;
        root.present().map_err(|e| err(chart)(e.to_string()))?;
    }
    Ok(out)
}

type TimeChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordi64, RangedCoordf64>>;

/// Axes and grid over days (or months) and values, labelled as dates and numbers.
fn time_frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    (x0, x1): (i64, i64),
    (y0, y1): (f64, f64),
    axis: XAxis,
    percent: bool,
) -> Result<TimeChart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| x.to_string())?;
    chart
        .configure_mesh()
        .x_labels(7)
        .y_labels(6)
        .label_style(("sans-serif", 13))
        .light_line_style(GRID)
        .bold_line_style(GRID)
        .x_label_formatter(&|x| x_label(axis, *x))
        .y_label_formatter(&|y| y_label(percent, *y))
        .draw()
        .map_err(|x| x.to_string())?;
    Ok(chart)
}

/// The legend of the labelled series, top left.
fn legend<'a, 'b: 'a>(chart: &mut TimeChart<'a, 'b>) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(GRID)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|x| x.to_string())
}

/// A line chart (one line per series) with the band and alarms of a health rule.
pub fn line_chart(name: &str, c: &LineChart) -> Result<String, ReportError> {
    let xs = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(c.band.iter().map(|b| b.0));
    let (x0, x1) = x_range(xs, XAxis::Day);
    let ys = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(c.band.iter().filter_map(|b| b.2))
        .chain(c.alarms.iter().map(|a| a.1));
    let (y0, y1) = y_range(ys, c.percent);
    svg(name, |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut chart = time_frame(root, (x0, x1), (y0, y1), c.axis, c.percent)?;
        // the expected range, one polygon per run of consecutive evaluated periods
        let mut runs: Vec<Vec<(i64, f64, f64)>> = Vec::new();
        for &(x, lo, hi) in &c.band {
            let (lo, hi) = (lo.unwrap_or(y0).max(y0), hi.unwrap_or(y1).min(y1));
            match runs.last_mut() {
                Some(run) if run.last().is_some_and(|p| x - p.0 <= 31) => run.push((x, lo, hi)),
                _ => runs.push(vec![(x, lo, hi)]),
            }
        }
        for run in runs {
            let mut poly: Vec<(i64, f64)> = run.iter().map(|p| (p.0, p.1)).collect();
            poly.extend(run.iter().rev().map(|p| (p.0, p.2)));
            chart
                .draw_series(std::iter::once(Polygon::new(poly, PALETTE[1].mix(0.15))))
                .map_err(|x| e(&x))?;
        }
        for (i, s) in c.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|x| e(&x))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(3))
                });
        }
        if !c.alarms.is_empty() {
            chart
                .draw_series(
                    c.alarms
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 4, ALARM.filled())),
                )
                .map_err(|x| e(&x))?
                .label("alarm")
                .legend(|(x, y)| Circle::new((x + 8, y), 4, ALARM.filled()));
        }
        legend(&mut chart)
    })
}

/// Stacked bars per month, one layer per series (series share the months).
pub fn stacked_month_bars(name: &str, series: &[Series]) -> Result<String, ReportError> {
    let months: std::collections::BTreeSet<i64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let (x0, x1) = x_range(months.iter().copied(), XAxis::Month);
    let total = |m: i64| -> f64 {
        series
            .iter()
            .flat_map(|s| s.points.iter().filter(move |p| p.0 == m).map(|p| p.1))
            .sum()
    };
    let (y0, y1) = y_range(months.iter().map(|&m| total(m)), false);
    svg(name, |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut chart = time_frame(root, (x0, x1), (y0, y1), XAxis::Month, false)?;
        let mut base: std::collections::BTreeMap<i64, f64> =
            months.iter().map(|&m| (m, 0.0)).collect();
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let bars: Vec<Rectangle<(i64, f64)>> = s
                .points
                .iter()
                .map(|&(m, v)| {
                    let b = base.entry(m).or_insert(0.0);
                    let end = month_first_day(month_of(m) + 1);
                    let r = Rectangle::new([(m + 2, *b), (end - 2, *b + v)], color.filled());
                    *b += v;
                    r
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|x| e(&x))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        legend(&mut chart)
    })
}

/// A heatmap of retention: one row per cohort, one column per month since the cohort started.
pub fn heatmap(name: &str, rows: &[(String, Vec<Option<f64>>)]) -> Result<String, ReportError> {
    let width = rows.iter().map(|r| r.1.len()).max().unwrap_or(1).max(1) as i64;
    let height = rows.len().max(1) as i64;
    svg(name, |root| {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut chart = ChartBuilder::on(root)
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(64)
            .build_cartesian_2d(0..width, 0..height)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .label_style(("sans-serif", 13))
            .x_labels(width.min(13) as usize)
            .y_labels(height.min(14) as usize)
            .x_label_formatter(&|x| format!("+{x}"))
            .y_label_formatter(&|y| {
                rows.get((height - 1 - *y) as usize)
                    .map(|r| r.0.get(..7).unwrap_or(&r.0).to_string())
                    .unwrap_or_default()
            })
            .draw()
            .map_err(|x| e(&x))?;
        let cells = rows.iter().enumerate().flat_map(|(i, (_, values))| {
            let y = height - 1 - i as i64;
            values.iter().enumerate().filter_map(move |(k, v)| {
                let v = (*v)?.clamp(0.0, 1.0);
                // white at 0 to deep blue at 1
                let shade = |full: u8| (255.0 - (255.0 - f64::from(full)) * v) as u8;
                let color = RGBColor(shade(8), shade(81), shade(156));
                Some(Rectangle::new(
                    [(k as i64, y), (k as i64 + 1, y + 1)],
                    color.filled(),
                ))
            })
        });
        chart.draw_series(cells).map_err(|x| e(&x))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_draws_its_line_band_and_alarms() {
        let c = LineChart {
            axis: XAxis::Day,
            series: vec![Series {
                label: "active".into(),
                points: (0..30).map(|d| (19_700 + d, d as f64)).collect(),
            }],
            band: (10..30)
                .map(|d| (19_700 + d, Some(5.0), Some(25.0)))
                .collect(),
            alarms: vec![(19_729, 29.0)],
            percent: false,
        };
        let svg = line_chart("test", &c).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("<polyline"), "no line drawn");
        assert!(svg.contains("<polygon"), "no band drawn");
        assert!(svg.contains("<circle"), "no alarm drawn");
        assert!(svg.contains("2023-12-"), "dates label the x axis");
    }

    #[test]
    fn empty_inputs_still_draw_axes() {
        let svg = stacked_month_bars("empty", &[]).unwrap();
        assert!(svg.contains("<svg"));
        let svg = heatmap("empty", &[]).unwrap();
        assert!(svg.contains("<svg"));
    }
}
