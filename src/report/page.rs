//! The HTML page: a headline row, the charts, the alarms, and the data drawn, all in one file with
//! inline styles and SVG, so it opens offline and prints.

use serde_json::Value;

use super::charts::{self, Band, LineChart, Series, XAxis};
use super::{ReportData, ReportError, Row, field, text};
use crate::kpi::calendar::day_number;

/// Day number of a normalised `YYYY-MM-DD` field.
fn day(row: &Row, name: &str) -> Option<i64> {
    chrono::NaiveDate::parse_from_str(text(row, name), "%Y-%m-%d")
        .ok()
        .map(day_number)
}

fn series(label: &str, rows: &[&Row], period: &str, name: &str) -> Series {
    Series {
        label: label.to_string(),
        points: rows
            .iter()
            .filter_map(|r| Some((day(r, period)?, field(r, name)?)))
            .collect(),
    }
}

/// The expected range and the alarms of the health rules watching `kpi`.
fn health_of(data: &ReportData, kpi: &str) -> (Band, Vec<(i64, f64)>) {
    let mut band = Band::new();
    let mut alarms = Vec::new();
    for r in data.kpi_health.iter().filter(|r| text(r, "kpi") == kpi) {
        let Some(d) = day(r, "period") else { continue };
        match text(r, "status") {
            "insufficient_history" => continue,
            "low" | "high" => alarms.extend(field(r, "value").map(|v| (d, v))),
            _ => {}
        }
        band.push((d, field(r, "low"), field(r, "high")));
    }
    band.sort_by_key(|b| b.0);
    (band, alarms)
}

/// Escape text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn fmt_value(v: Option<f64>, rate: bool) -> String {
    match v {
        None => "–".into(),
        Some(x) if rate => format!("{:.1}%", x * 100.0),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

struct Figure {
    id: &'static str,
    title: &'static str,
    caption: String,
    svg: String,
}

fn figures(data: &ReportData) -> Result<Vec<Figure>, ReportError> {
    let daily: Vec<&Row> = data.daily.iter().collect();
    let complete: Vec<&Row> = data
        .monthly
        .iter()
        .filter(|r| r.get("is_complete") == Some(&Value::Bool(true)))
        .collect();
    let monthly: Vec<&Row> = data.monthly.iter().collect();
    let mut out = Vec::new();
    let mut line = |id: &'static str,
                    title: &'static str,
                    caption: &str,
                    axis: XAxis,
                    series_list: Vec<Series>,
                    kpi: Option<&str>,
                    percent: bool|
     -> Result<(), ReportError> {
        let (band, alarms) = kpi.map(|k| health_of(data, k)).unwrap_or_default();
        let chart = LineChart {
            axis,
            series: series_list,
            band,
            alarms,
            percent,
        };
        out.push(Figure {
            id,
            title,
            caption: caption.to_string(),
            svg: charts::line_chart(id, &chart)?,
        });
        Ok(())
    };
    line(
        "active_projects",
        "North Star: active projects (28-day window)",
        "Projects with a qualifying pipeline day in the last 29 days; the band is the expected range of its health rule, red dots are alarms.",
        XAxis::Day,
        vec![series("active projects", &daily, "date", "active_projects")],
        Some("active_projects_daily.active_projects"),
        false,
    )?;
    line(
        "project_flow",
        "Added, reactivated and churned projects per day",
        "Projects becoming active for the first time, coming back, or leaving the active set.",
        XAxis::Day,
        vec![
            series("added", &daily, "date", "added"),
            series("reactivated", &daily, "date", "reactivated"),
            series("churned", &daily, "date", "churned"),
        ],
        None,
        false,
    )?;
    line(
        "monthly_active_projects",
        "Monthly active projects",
        "Projects active at the end of each complete month, and active on any day of it.",
        XAxis::Month,
        vec![
            series(
                "active at month end",
                &complete,
                "month",
                "monthly_active_projects",
            ),
            series(
                "active any day",
                &monthly,
                "month",
                "active_projects_any_day",
            ),
        ],
        Some("monthly_kpis.monthly_active_projects"),
        false,
    )?;
    line(
        "pipeline_runs",
        "Pipeline runs per day",
        "Runs of el, elt and run with plugins, all and successful.",
        XAxis::Day,
        vec![
            series("runs", &daily, "date", "pipeline_runs"),
            series("successful", &daily, "date", "successful_pipeline_runs"),
        ],
        Some("active_projects_daily.pipeline_runs"),
        false,
    )?;
    line(
        "pipeline_success_rate",
        "Pipeline success rate per day",
        "Successful runs over all runs.",
        XAxis::Day,
        vec![series(
            "success rate",
            &daily,
            "date",
            "pipeline_success_rate",
        )],
        Some("active_projects_daily.pipeline_success_rate"),
        true,
    )?;
    line(
        "monthly_pipeline_runs",
        "Pipeline runs per month",
        "Complete months; the band is the expected range of its health rule.",
        XAxis::Month,
        vec![series("runs", &complete, "month", "pipeline_runs")],
        Some("monthly_kpis.pipeline_runs"),
        false,
    )?;
    line(
        "unique_pipelines",
        "Unique pipelines",
        "Distinct pipelines run per day and per month.",
        XAxis::Month,
        vec![
            series("per month", &monthly, "month", "unique_pipelines"),
            series("per day", &daily, "date", "unique_pipelines"),
        ],
        Some("monthly_kpis.unique_pipelines"),
        false,
    )?;
    // plugin usage: one line per category, the busiest first
    let mut categories: Vec<(String, f64)> = Vec::new();
    for r in &data.plugin_usage {
        let c = text(r, "plugin_category").to_string();
        let n = field(r, "executions").unwrap_or(0.0);
        match categories.iter_mut().find(|(k, _)| *k == c) {
            Some(e) => e.1 += n,
            None => categories.push((c, n)),
        }
    }
    categories.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let usage: Vec<&Row> = data.plugin_usage.iter().collect();
    let usage_series: Vec<Series> = categories
        .iter()
        .take(charts::PALETTE.len())
        .map(|(c, _)| {
            let rows: Vec<&Row> = usage
                .iter()
                .copied()
                .filter(|r| text(r, "plugin_category") == c)
                .collect();
            series(c, &rows, "month", "executions")
        })
        .collect();
    line(
        "plugin_usage",
        "Plugin usage by category (executions per month)",
        &format!(
            "The {} busiest of {} plugin categories.",
            usage_series.len(),
            categories.len()
        ),
        XAxis::Month,
        usage_series,
        None,
        false,
    )?;
    let segments = vec![
        series("GUPPY (< 50 runs)", &complete, "month", "guppy_projects"),
        series("MARLIN (50–2000)", &complete, "month", "marlin_projects"),
        series("WHALE (> 2000)", &complete, "month", "whale_projects"),
    ];
    out.push(Figure {
        id: "segments",
        title: "Projects by monthly pipeline runs: GUPPY, MARLIN, WHALE",
        caption: "Complete months; runs counted while the project is active.".into(),
        svg: charts::stacked_month_bars("segments", &segments)?,
    });
    let mut cohorts: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    for r in &data.cohort_retention {
        let c = text(r, "cohort_month").to_string();
        let k = field(r, "month_number").unwrap_or(0.0).max(0.0) as usize;
        if cohorts.last().is_none_or(|l| l.0 != c) {
            cohorts.push((c, Vec::new()));
        }
        if let Some(last) = cohorts.last_mut() {
            if last.1.len() <= k {
                last.1.resize(k + 1, None);
            }
            last.1[k] = field(r, "retention");
        }
    }
    out.push(Figure {
        id: "cohort_retention",
        title: "Cohort retention",
        caption:
            "Share of each monthly cohort with an execution k months later (darker is higher)."
                .into(),
        svg: charts::heatmap("cohort_retention", &cohorts)?,
    });
    Ok(out)
}

const STYLE: &str = r#"
:root { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2433; }
body { margin: 0 auto; max-width: 1280px; padding: 16px 24px; background: #f6f7f9; }
h1 { font-size: 1.5rem; margin: 0 0 4px; }
.sub { color: #5b6475; margin: 0 0 16px; font-size: .9rem; }
.headline { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; margin-bottom: 16px; }
.kpi { background: #fff; border-radius: 8px; padding: 12px 14px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.kpi .label { font-size: .8rem; color: #5b6475; }
.kpi .value { font-size: 1.6rem; font-weight: 600; margin: 2px 0; }
.kpi .change { font-size: .8rem; }
.up { color: #1a7f37; } .down { color: #c62828; } .flat { color: #5b6475; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 12px; }
figure { background: #fff; border-radius: 8px; margin: 0; padding: 12px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
figure h2 { font-size: 1rem; margin: 0 0 6px; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { font-size: .8rem; color: #5b6475; margin-top: 4px; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: .85rem; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e6e8ec; }
.low, .high { color: #c62828; font-weight: 600; }
footer { color: #5b6475; font-size: .8rem; margin: 16px 0; }
@media print { body { background: #fff; max-width: none; } .charts { grid-template-columns: 1fr 1fr; }
  figure, .kpi { box-shadow: none; border: 1px solid #ddd; break-inside: avoid; } }
"#;

/// Make plotters' fixed-size SVG scale with its card.
fn responsive(svg: &str) -> String {
    let (w, h) = charts::SIZE;
    let fixed = format!("width=\"{w}\" height=\"{h}\"");
    if svg.contains("viewBox") {
        svg.replacen(&fixed, "", 1)
    } else {
        svg.replacen(&fixed, &format!("viewBox=\"0 0 {w} {h}\""), 1)
    }
}

/// The whole page.
pub fn render(data: &ReportData) -> Result<String, ReportError> {
    let mut html = String::with_capacity(256 * 1024);
    let latest = data
        .daily
        .last()
        .map(|r| text(r, "date").to_string())
        .unwrap_or_default();
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    html.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
    );
    html.push_str("<title>Meltano KPIs</title><style>");
    html.push_str(STYLE);
    html.push_str("</style></head><body>\n");
    html.push_str("<h1>Meltano KPIs</h1>");
    html.push_str(&format!(
        "<p class=\"sub\">Up to {} · from {}</p>\n<section class=\"headline\">",
        escape(&latest),
        escape(&data.source)
    ));
    for h in &data.headline {
        let (class, change) = match h.change_pct {
            Some(c) if c > 0.0 => ("up", format!("▲ {c:.1}%")),
            Some(c) if c < 0.0 => ("down", format!("▼ {:.1}%", -c)),
            Some(_) => ("flat", "= 0.0%".to_string()),
            None => ("flat", "–".to_string()),
        };
        html.push_str(&format!(
            "<div class=\"kpi\" data-kpi=\"{}\" data-value=\"{}\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"change {class}\">{change} <span class=\"flat\">vs {} ({})</span></div><div class=\"label\">{}</div></div>",
            escape(&h.kpi),
            h.value.map(|v| v.to_string()).unwrap_or_default(),
            escape(&h.label),
            fmt_value(h.value, h.is_rate),
            escape(h.previous_period.as_deref().unwrap_or("–")),
            fmt_value(h.previous_value, h.is_rate),
            escape(&h.period),
        ));
    }
    html.push_str("</section>\n<section class=\"charts\">\n");
    for f in figures(data)? {
        html.push_str(&format!(
            "<figure data-chart=\"{}\"><h2>{}</h2>{}<figcaption>{}</figcaption></figure>\n",
            f.id,
            escape(f.title),
            responsive(&f.svg),
            escape(&f.caption)
        ));
    }
    html.push_str("</section>\n<h2>Health alarms</h2>\n");
    let alarms: Vec<&Row> = data
        .kpi_health
        .iter()
        .filter(|r| matches!(text(r, "status"), "low" | "high"))
        .collect();
    if alarms.is_empty() {
        html.push_str("<p class=\"sub\">No KPI left its expected range.</p>\n");
    } else {
        html.push_str("<table class=\"alarms\"><tr><th>Period</th><th>Rule</th><th>Value</th><th>Expected</th><th>Status</th></tr>");
        for r in alarms.iter().rev().take(30) {
            html.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                escape(text(r, "period")),
                escape(text(r, "rule")),
                fmt_value(field(r, "value"), false),
                match (field(r, "low"), field(r, "high")) {
                    (Some(lo), Some(hi)) => format!(
                        "{} – {}",
                        fmt_value(Some(lo), false),
                        fmt_value(Some(hi), false)
                    ),
                    (Some(lo), None) => format!("≥ {}", fmt_value(Some(lo), false)),
                    (None, Some(hi)) => format!("≤ {}", fmt_value(Some(hi), false)),
                    (None, None) => "–".into(),
                },
                escape(text(r, "status")),
                escape(text(r, "status")),
            ));
        }
        html.push_str("</table>\n");
    }
    let json = serde_json::to_string(data).map_err(|e| ReportError::Read(e.to_string()))?;
    html.push_str(&format!(
        "<footer>Generated by tap-kpis {} from {}. Every number drawn is in the embedded data below.</footer>\n",
        env!("CARGO_PKG_VERSION"),
        escape(&data.source)
    ));
    // `<` is written as \u003c inside the JSON, so the data can never close its script element
    html.push_str(&format!(
        "<script type=\"application/json\" id=\"kpi-data\">{}</script>\n</body></html>\n",
        json.replace('<', "\\u003c")
    ));
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_data_is_escaped() {
        assert_eq!(
            escape("<script>\"x\" & 'y'"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;"
        );
    }

    #[test]
    fn data_cannot_close_its_script_element() {
        let mut row = Row::new();
        row.insert("month".into(), Value::String("2024-01-01".into()));
        row.insert(
            "plugin_category".into(),
            Value::String("</script><img src=x>".into()),
        );
        row.insert("executions".into(), serde_json::json!(3.0));
        let mut d = Row::new();
        d.insert("date".into(), Value::String("2024-01-01".into()));
        d.insert("active_projects".into(), serde_json::json!(1.0));
        let data = ReportData {
            source: "test".into(),
            headline: vec![],
            daily: vec![d],
            monthly: vec![],
            cohort_retention: vec![],
            plugin_usage: vec![row],
            kpi_health: vec![],
        };
        let html = render(&data).unwrap();
        assert_eq!(html.matches("</script>").count(), 1);
        assert!(!html.contains("<img"));
    }
}
