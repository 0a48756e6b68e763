//! The HTML report of a generated fleet: the data embedded in the page equals the KPI records it was
//! drawn from, the headline shows the latest values, and every chart is drawn.

mod common;

use std::process::Command;

use chrono::NaiveDate;
use serde_json::{Value, json};
use tap_kpis::generate::{GenerateArgs, Outage, Profile, generate};

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-8,
        _ => a == b || (a.is_null() && b.is_null()),
    }
}

/// The `kpi-data` JSON of a page.
fn page_data(html: &str) -> Value {
    let start_tag = "<script type=\"application/json\" id=\"kpi-data\">";
    let start = html.find(start_tag).expect("data block") + start_tag.len();
    let end = start + html[start..].find("</script>").expect("end of data");
    serde_json::from_str(&html[start..end]).expect("data is JSON")
}

/// Every record of `stream` has a row in `rows` (matched on `keys`) with the same value in each field.
fn assert_rows_match(
    stream: &str,
    records: &[Value],
    rows: &Value,
    keys: &[&str],
    fields: &[&str],
) {
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), records.len(), "{stream}: one row per record");
    for r in records {
        let row = rows
            .iter()
            .find(|row| keys.iter().all(|k| close(&row[*k], &r[*k])))
            .unwrap_or_else(|| panic!("{stream}: no row for {r}"));
        for f in fields {
            assert!(
                close(&row[*f], &r[*f]),
                "{stream} {}: {f} is {} in the page, {} in the record",
                keys.iter()
                    .map(|k| r[*k].to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
                row[*f],
                r[*f]
            );
        }
    }
}

#[test]
fn the_page_shows_exactly_the_records_it_was_drawn_from() {
    let dir = common::temp_dir("report");
    let telemetry = dir.join("telemetry");
    generate(&GenerateArgs {
        projects: 150,
        days: 150,
        seed: 11,
        out: telemetry.clone(),
        start: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap(),
        no_gzip: false,
        outage: Some(Outage {
            first_day: 120,
            days: 5,
            fraction: 0.6,
        }),
        ramp_days: Some(20),
        profile: Profile::Steady,
        activity: 1.0,
    })
    .unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        json!({
            "sources": [telemetry.display().to_string()],
            "health_metrics": [
                {"name": "North Star", "kpi": "active_projects_daily.active_projects", "method": "stddev", "direction": "low"},
                {"name": "daily runs", "kpi": "active_projects_daily.pipeline_runs", "method": "stddev",
                 "k": 3, "periods": 28, "min_periods": 14, "direction": "low"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_tap-kpis");
    let sync = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let singer = dir.join("out.jsonl");
    std::fs::write(&singer, &sync.stdout).unwrap();
    let out = common::parse(&sync.stdout);

    let html_path = dir.join("report.html");
    let report = Command::new(bin)
        .args(["report", "--singer"])
        .arg(&singer)
        .arg("--out")
        .arg(&html_path)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let html = std::fs::read_to_string(&html_path).unwrap();
    let data = page_data(&html);

    let daily = out.records("active_projects_daily");
    assert!(daily.len() > 100);
    assert_rows_match(
        "active_projects_daily",
        daily,
        &data["daily"],
        &["date"],
        &[
            "active_projects",
            "added",
            "reactivated",
            "churned",
            "pipeline_runs",
            "pipeline_success_rate",
            "unique_pipelines",
        ],
    );
    assert_rows_match(
        "monthly_kpis",
        out.records("monthly_kpis"),
        &data["monthly"],
        &["month"],
        &[
            "monthly_active_projects",
            "pipeline_runs",
            "unique_pipelines",
            "guppy_projects",
            "marlin_projects",
            "whale_projects",
        ],
    );
    assert_rows_match(
        "cohort_retention",
        out.records("cohort_retention"),
        &data["cohort_retention"],
        &["cohort_month", "month_number"],
        &["retention", "active_projects"],
    );
    assert_rows_match(
        "plugin_usage",
        out.records("plugin_usage"),
        &data["plugin_usage"],
        &["month", "plugin_category"],
        &["executions", "projects"],
    );
    assert_rows_match(
        "kpi_health",
        out.records("kpi_health"),
        &data["kpi_health"],
        &["rule", "period"],
        &["value", "low", "high", "status"],
    );

    // the headline: the latest day's North Star and the last complete month's runs, as shown
    let latest = daily
        .iter()
        .max_by_key(|r| r["date"].as_str().unwrap().to_string())
        .unwrap();
    let shown = format!(
        "data-kpi=\"active_projects_daily.active_projects\" data-value=\"{}\"",
        latest["active_projects"].as_f64().unwrap()
    );
    assert!(html.contains(&shown), "headline North Star: {shown}");
    let last_complete = out
        .records("monthly_kpis")
        .iter()
        .filter(|r| r["is_complete"] == true)
        .max_by_key(|r| r["month"].as_str().unwrap().to_string())
        .unwrap();
    let shown = format!(
        "data-kpi=\"monthly_kpis.pipeline_runs\" data-value=\"{}\"",
        last_complete["pipeline_runs"].as_f64().unwrap()
    );
    assert!(html.contains(&shown), "headline monthly runs: {shown}");

    // every chart is drawn: lines, bars or cells inside each figure
    let figures: Vec<&str> = html.split("<figure ").skip(1).collect();
    assert_eq!(figures.len(), 10);
    for f in figures {
        let name = f.split('"').nth(1).unwrap_or("?");
        assert!(
            f.contains("<polyline") || f.matches("<rect").count() > 5,
            "chart {name} has nothing drawn"
        );
    }
    // the outage raised alarms, and they are marked on the North Star chart
    let alarms = out
        .records("kpi_health")
        .iter()
        .filter(|r| r["status"] == "low" || r["status"] == "high")
        .count();
    assert!(alarms > 0, "the outage raises an alarm");
    assert!(html.contains("class=\"alarms\""));
    let runs_chart = html
        .split("<figure data-chart=\"pipeline_runs\"")
        .nth(1)
        .unwrap();
    let runs_chart = &runs_chart[..runs_chart.find("</figure>").unwrap()];
    assert!(
        runs_chart.contains("<circle"),
        "alarms are marked on their series"
    );
    assert!(
        runs_chart.contains("<polygon"),
        "the expected range is drawn"
    );
    // nothing is fetched when the page is viewed
    for needle in ["http://", "https://", "src=", "<link", "@import"] {
        let outside_svg_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!outside_svg_ns.contains(needle), "page refers to {needle}");
    }
}

#[test]
fn a_missing_input_is_a_one_line_error() {
    let bin = env!("CARGO_BIN_EXE_tap-kpis");
    let out = Command::new(bin)
        .args([
            "report",
            "--singer",
            "/nonexistent/out.jsonl",
            "--out",
            "/tmp/never.html",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/out.jsonl"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
