//! The KPI report: one self-contained HTML page of the North Star and the health metrics, drawn from
//! the KPI tables wherever Meltano loaded them.
//!
//! A loader ([`load`]) reads [`Tables`] (rows by stream) from Singer output, DuckDB or PostgreSQL;
//! [`ReportData::from_tables`] picks the series the page shows, normalised so that every source gives
//! the same data; [`page::render`] draws the charts as inline SVG ([`charts`]) and embeds the data it
//! drew as JSON, so the page needs no network and its numbers can be checked against the records.

pub mod charts;
pub mod load;
pub mod page;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value};

/// The streams a report reads.
pub const REPORT_STREAMS: [&str; 5] = [
    "active_projects_daily",
    "monthly_kpis",
    "cohort_retention",
    "plugin_usage",
    "kpi_health",
];

/// Errors of the report command.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Read(String),
    #[error("no KPI rows found in {0}: run the tap into it first")]
    Empty(String),
    #[error("cannot draw chart {chart}: {message}")]
    Chart { chart: String, message: String },
}

/// KPI rows by stream name, as a loader found them.
#[derive(Debug, Default)]
pub struct Tables {
    /// Where the rows came from, for the page footer.
    pub source: String,
    pub rows: BTreeMap<String, Vec<Map<String, Value>>>,
}

/// One row of a series: the period and the fields the page uses, normalised.
pub type Row = BTreeMap<String, Value>;

/// A headline figure: the latest value of a KPI and its change against the previous period.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Headline {
    pub label: String,
    pub kpi: String,
    pub period: String,
    pub value: Option<f64>,
    pub previous_period: Option<String>,
    pub previous_value: Option<f64>,
    /// Percent change against the previous period, when both exist and the previous is not zero.
    pub change_pct: Option<f64>,
    /// Rates are shown as percentages.
    pub is_rate: bool,
}

/// Everything the page shows, exactly as drawn.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReportData {
    pub source: String,
    pub headline: Vec<Headline>,
    pub daily: Vec<Row>,
    pub monthly: Vec<Row>,
    pub cohort_retention: Vec<Row>,
    pub plugin_usage: Vec<Row>,
    pub kpi_health: Vec<Row>,
}

const DAILY_FIELDS: [&str; 9] = [
    "active_projects",
    "added",
    "reactivated",
    "churned",
    "pipeline_runs",
    "successful_pipeline_runs",
    "pipeline_success_rate",
    "unique_pipelines",
    "new_projects_acquired",
];
const MONTHLY_FIELDS: [&str; 12] = [
    "is_complete",
    "monthly_active_projects",
    "active_projects_any_day",
    "pipeline_runs",
    "successful_pipeline_runs",
    "pipeline_success_rate",
    "unique_pipelines",
    "new_projects_acquired",
    "guppy_projects",
    "marlin_projects",
    "whale_projects",
    "no_pipelines_projects",
];
const COHORT_FIELDS: [&str; 4] = [
    "month_number",
    "cohort_projects",
    "active_projects",
    "retention",
];
const USAGE_FIELDS: [&str; 3] = ["plugin_category", "executions", "projects"];
const HEALTH_FIELDS: [&str; 7] = [
    "rule",
    "kpi",
    "period_type",
    "value",
    "low",
    "high",
    "status",
];

/// A date or timestamp as `YYYY-MM-DD` (targets store dates as dates or timestamps).
pub fn norm_date(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    let d = s.get(..10)?;
    chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()?;
    Some(d.to_string())
}

/// A number as stored by any target (JSON number, numeric text), rounded to 9 decimals so that float
/// and numeric columns read the same.
pub fn norm_number(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    Some((x * 1e9).round() / 1e9)
}

fn norm_value(v: &Value) -> Value {
    match v {
        Value::Bool(_) => v.clone(),
        Value::String(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
            Value::Bool(s.eq_ignore_ascii_case("true"))
        }
        Value::Null => Value::Null,
        other => match norm_number(other) {
            Some(x) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
            None => other.clone(),
        },
    }
}

/// The rows of a stream with the period normalised and only `fields` kept, sorted by period then the
/// remaining fields.
fn pick(tables: &Tables, stream: &str, period: &str, fields: &[&str]) -> Vec<Row> {
    let mut out: Vec<Row> = tables
        .rows
        .get(stream)
        .map(|rows| {
            rows.iter()
                .filter_map(|r| {
                    let mut row = Row::new();
                    row.insert(
                        period.to_string(),
                        Value::String(norm_date(r.get(period)?)?),
                    );
                    for f in fields {
                        let v = r.get(*f).map(norm_value).unwrap_or(Value::Null);
                        row.insert(f.to_string(), v);
                    }
                    Some(row)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| {
        let key = |r: &Row| {
            let mut k = vec![r[period].to_string()];
            k.extend(fields.iter().map(|f| r[*f].to_string()));
            k
        };
        key(a).cmp(&key(b))
    });
    out
}

/// Number of a field in a row.
pub fn field(row: &Row, name: &str) -> Option<f64> {
    row.get(name).and_then(Value::as_f64)
}

/// Text of a field in a row.
pub fn text<'r>(row: &'r Row, name: &str) -> &'r str {
    row.get(name).and_then(Value::as_str).unwrap_or("")
}

fn headline(
    label: &str,
    kpi: &str,
    rows: &[&Row],
    period: &str,
    name: &str,
    is_rate: bool,
) -> Option<Headline> {
    let last = rows.last()?;
    let previous = rows.len().checked_sub(2).map(|i| rows[i]);
    let value = field(last, name);
    let previous_value = previous.and_then(|p| field(p, name));
    let change_pct = match (value, previous_value) {
        (Some(v), Some(p)) if p != 0.0 => Some(((v - p) / p * 1000.0).round() / 10.0),
        _ => None,
    };
    Some(Headline {
        label: label.into(),
        kpi: kpi.into(),
        period: text(last, period).to_string(),
        value,
        previous_period: previous.map(|p| text(p, period).to_string()),
        previous_value,
        change_pct,
        is_rate,
    })
}

impl ReportData {
    /// Pick and normalise the series the page shows.
    pub fn from_tables(tables: &Tables) -> Result<ReportData, ReportError> {
        let daily = pick(tables, "active_projects_daily", "date", &DAILY_FIELDS);
        let monthly = pick(tables, "monthly_kpis", "month", &MONTHLY_FIELDS);
        if daily.is_empty() && monthly.is_empty() {
            return Err(ReportError::Empty(tables.source.clone()));
        }
        let complete: Vec<&Row> = monthly
            .iter()
            .filter(|r| r.get("is_complete") == Some(&Value::Bool(true)))
            .collect();
        let daily_refs: Vec<&Row> = daily.iter().collect();
        let mut headline_rows = Vec::new();
        let d = |label, name, rate| {
            headline(
                label,
                &format!("active_projects_daily.{name}"),
                &daily_refs,
                "date",
                name,
                rate,
            )
        };
        let m = |label, name, rate| {
            headline(
                label,
                &format!("monthly_kpis.{name}"),
                &complete,
                "month",
                name,
                rate,
            )
        };
        headline_rows.extend(d("Active projects (28 days)", "active_projects", false));
        headline_rows.extend(m(
            "Monthly active projects",
            "monthly_active_projects",
            false,
        ));
        headline_rows.extend(m("Pipeline runs (month)", "pipeline_runs", false));
        headline_rows.extend(m(
            "Pipeline success rate (month)",
            "pipeline_success_rate",
            true,
        ));
        headline_rows.extend(m("Unique pipelines (month)", "unique_pipelines", false));
        headline_rows.extend(m("New projects (month)", "new_projects_acquired", false));
        Ok(ReportData {
            source: tables.source.clone(),
            headline: headline_rows,
            daily,
            monthly,
            cohort_retention: pick(tables, "cohort_retention", "cohort_month", &COHORT_FIELDS),
            plugin_usage: pick(tables, "plugin_usage", "month", &USAGE_FIELDS),
            kpi_health: pick(tables, "kpi_health", "period", &HEALTH_FIELDS),
        })
    }
}

/// Where `tap-kpis report` reads the KPI tables and where it writes the page.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("from").required(true)))]
pub struct ReportArgs {
    /// The HTML file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Read the tap's own Singer output from a file (`-` for stdin).
    #[arg(long, value_name = "FILE", group = "from")]
    pub singer: Option<PathBuf>,
    /// Read the tables target-duckdb wrote into this DuckDB file.
    #[arg(long, value_name = "FILE", group = "from")]
    pub duckdb: Option<PathBuf>,
    /// Read the tables target-postgres wrote, e.g. `host=127.0.0.1 user=postgres dbname=test`
    /// (the password from PGPASSWORD; it is never printed).
    #[arg(long, value_name = "CONNINFO", group = "from")]
    pub postgres: Option<String>,
    /// Schema of the KPI tables in DuckDB or PostgreSQL.
    #[arg(long, default_value = "tap_kpis")]
    pub schema: String,
    /// DuckDB command-line client used to read `--duckdb` (default: .venv/bin/duckdb, else duckdb).
    #[arg(long, value_name = "PATH")]
    pub duckdb_cli: Option<PathBuf>,
}

/// What a report holds, for the command's closing line.
#[derive(Debug)]
pub struct ReportSummary {
    pub days: usize,
    pub months: usize,
    pub alarms: usize,
    pub bytes: usize,
}

/// Load the tables, draw the page, write it.
pub fn run(args: &ReportArgs) -> Result<ReportSummary, ReportError> {
    let tables = if let Some(path) = &args.singer {
        if path.as_os_str() == "-" {
            load::from_singer(std::io::stdin().lock(), "stdin")?
        } else {
            let file = std::fs::File::open(path)
                .map_err(|e| ReportError::Read(format!("{}: {e}", path.display())))?;
            load::from_singer(BufReader::new(file), &path.display().to_string())?
        }
    } else if let Some(path) = &args.duckdb {
        let cli = args
            .duckdb_cli
            .clone()
            .unwrap_or_else(load::default_duckdb_cli);
        load::from_duckdb(path, &args.schema, &cli)?
    } else if let Some(conninfo) = &args.postgres {
        load::from_postgres(conninfo, &args.schema)?
    } else {
        return Err(ReportError::Read(
            "no source: give --singer, --duckdb or --postgres".into(),
        ));
    };
    let data = ReportData::from_tables(&tables)?;
    let html = page::render(&data)?;
    std::fs::write(&args.out, &html)
        .map_err(|e| ReportError::Read(format!("cannot write {}: {e}", args.out.display())))?;
    Ok(ReportSummary {
        days: data.daily.len(),
        months: data.monthly.len(),
        alarms: data
            .kpi_health
            .iter()
            .filter(|r| matches!(text(r, "status"), "low" | "high"))
            .count(),
        bytes: html.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tables(rows: Vec<(&str, Value)>) -> Tables {
        let mut t = Tables {
            source: "test".into(),
            ..Default::default()
        };
        for (s, r) in rows {
            t.rows
                .entry(s.to_string())
                .or_default()
                .push(r.as_object().cloned().unwrap_or_default());
        }
        t
    }

    #[test]
    fn dates_and_numbers_read_the_same_from_every_target() {
        assert_eq!(norm_date(&json!("2024-03-01")), Some("2024-03-01".into()));
        assert_eq!(
            norm_date(&json!("2024-03-01 00:00:00")),
            Some("2024-03-01".into())
        );
        assert_eq!(
            norm_date(&json!("2024-03-01T00:00:00+00:00")),
            Some("2024-03-01".into())
        );
        assert_eq!(norm_date(&json!("yesterday")), None);
        assert_eq!(norm_number(&json!("0.5")), Some(0.5));
        assert_eq!(
            norm_number(&json!(0.8571428571428571)),
            norm_number(&json!("0.857142857142857"))
        );
    }

    #[test]
    fn headline_compares_the_last_two_complete_months() {
        let t = tables(vec![
            (
                "monthly_kpis",
                json!({"month": "2024-01-01", "is_complete": true, "pipeline_runs": 100}),
            ),
            (
                "monthly_kpis",
                json!({"month": "2024-03-01", "is_complete": false, "pipeline_runs": 5}),
            ),
            (
                "monthly_kpis",
                json!({"month": "2024-02-01", "is_complete": true, "pipeline_runs": 150}),
            ),
        ]);
        let data = ReportData::from_tables(&t).unwrap();
        let h = data
            .headline
            .iter()
            .find(|h| h.kpi == "monthly_kpis.pipeline_runs")
            .unwrap();
        assert_eq!(h.period, "2024-02-01");
        assert_eq!(h.value, Some(150.0));
        assert_eq!(h.previous_value, Some(100.0));
        assert_eq!(h.change_pct, Some(50.0));
    }

    #[test]
    fn no_rows_is_an_error_naming_the_source() {
        let e = ReportData::from_tables(&tables(vec![])).unwrap_err();
        assert!(e.to_string().contains("test"));
    }
}
