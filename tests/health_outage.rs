//! Health metrics on a generated fleet with an injected outage (a week where half the projects stop):
//! exactly the outage days and the outage month come out low, nothing else raises an alarm.

mod common;

use chrono::NaiveDate;
use serde_json::json;
use tap_kpis::generate::{GenerateArgs, Outage, Profile, generate};

#[test]
fn an_outage_week_is_low_and_nothing_else_is() {
    let dir = common::temp_dir("outage");
    let start = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    let args = GenerateArgs {
        projects: 300,
        days: 240,
        seed: 2,
        out: dir.clone(),
        start,
        no_gzip: false,
        // days 190..197 = 2025-07-10 ..= 2025-07-16
        outage: Some(Outage {
            first_day: 190,
            days: 7,
            fraction: 0.5,
        }),
        ramp_days: Some(30),
        profile: Profile::Steady,
        activity: 1.0,
    };
    generate(&args).unwrap();
    let out = common::sync(json!({
        "sources": [dir.display().to_string()],
        "as_of": "2025-08-28",
        "health_metrics": [
            {"name": "daily runs", "kpi": "active_projects_daily.pipeline_runs", "method": "stddev",
             "k": 3, "periods": 28, "min_periods": 14, "direction": "low"},
            {"name": "monthly runs", "kpi": "monthly_kpis.pipeline_runs", "method": "change",
             "max_drop_pct": 5, "direction": "low"}
        ]
    }));
    let health = out.records("kpi_health");
    let evaluated_days = health
        .iter()
        .filter(|r| r["rule"] == "daily runs" && r["status"] != "insufficient_history")
        .count();
    assert!(evaluated_days > 200, "{evaluated_days}");
    let mut alarms: Vec<(String, String)> = health
        .iter()
        .filter(|r| r["status"] != "ok" && r["status"] != "insufficient_history")
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_string(),
                r["period"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    alarms.sort();
    let mut expected: Vec<(String, String)> = (10..=16)
        .map(|d| ("daily runs".to_string(), format!("2025-07-{d}")))
        .collect();
    expected.push(("monthly runs".to_string(), "2025-07-01".to_string()));
    expected.sort();
    assert_eq!(alarms, expected);
    assert!(
        health
            .iter()
            .filter(|r| r["status"] == "low")
            .all(|r| r["value"].as_f64() < r["low"].as_f64())
    );
    let _ = std::fs::remove_dir_all(&dir);
}
