//! The stream registry: each stream is declared as a Meltano SDK stream is, with a name, its schema
//! file, its key properties and the one pure function that yields its records.

use serde_json::Value;

use crate::kpi::{JsonRecordsFn, RecordsFn, active, facts, usage};

/// Where a stream's records come from.
#[derive(Clone, Copy)]
pub enum Records {
    /// A KPI engine function over the normalised facts.
    Kpi(RecordsFn),
    /// A KPI engine function, and the same rows as JSON text (written when every property is
    /// selected: a large stream then builds no JSON tree per row).
    KpiJson(RecordsFn, JsonRecordsFn),
    /// The quarantine of bad input, gathered by the decoders and the normaliser.
    Quarantine,
    /// Health evaluations of KPI series against the configured rules.
    Health,
}

/// A stream declaration.
#[derive(Clone, Copy)]
pub struct StreamDef {
    pub name: &'static str,
    /// The JSON Schema text from `schemas/<name>.json`.
    pub schema: &'static str,
    pub key_properties: &'static [&'static str],
    pub records: Records,
}

impl StreamDef {
    /// The parsed schema.
    pub fn schema_value(&self) -> Value {
        serde_json::from_str(self.schema).unwrap_or(Value::Null)
    }
}

macro_rules! stream {
    ($name:literal, [$($key:literal),*], $records:expr) => {
        StreamDef {
            name: $name,
            schema: include_str!(concat!("../schemas/", $name, ".json")),
            key_properties: &[$($key),*],
            records: $records,
        }
    };
}

/// Every stream, in emission order: facts first, then the KPIs built on them, then the quarantine.
pub const STREAMS: &[StreamDef] = &[
    stream!(
        "cli_executions",
        ["execution_id"],
        Records::KpiJson(facts::cli_executions, facts::cli_executions_json)
    ),
    stream!(
        "projects",
        ["project_id"],
        Records::KpiJson(facts::projects, facts::projects_json)
    ),
    stream!("pipelines", ["pipeline_id"], Records::Kpi(facts::pipelines)),
    stream!(
        "pipeline_runs",
        ["execution_id"],
        Records::Kpi(facts::pipeline_runs)
    ),
    stream!(
        "daily_active_projects",
        ["project_id", "date"],
        Records::KpiJson(
            active::daily_active_projects,
            active::daily_active_projects_json
        )
    ),
    stream!(
        "active_projects_daily",
        ["date"],
        Records::Kpi(active::active_projects_daily)
    ),
    stream!(
        "monthly_kpis",
        ["month"],
        Records::Kpi(active::monthly_kpis)
    ),
    stream!(
        "project_monthly_segments",
        ["project_id", "month"],
        Records::Kpi(usage::project_monthly_segments)
    ),
    stream!(
        "plugin_usage",
        ["month", "plugin_category"],
        Records::Kpi(usage::plugin_usage)
    ),
    stream!(
        "cohort_retention",
        ["cohort_month", "month_number"],
        Records::Kpi(usage::cohort_retention)
    ),
    stream!("kpi_health", ["rule", "period"], Records::Health),
    stream!("telemetry_errors", ["error_id"], Records::Quarantine),
];

impl Records {
    /// The KPI engine function of a KPI stream.
    pub fn kpi(&self) -> Option<RecordsFn> {
        match self {
            Records::Kpi(f) | Records::KpiJson(f, _) => Some(*f),
            Records::Quarantine | Records::Health => None,
        }
    }
}

/// Look a stream up by name.
pub fn find(name: &str) -> Option<&'static StreamDef> {
    STREAMS.iter().find(|s| s.name == name)
}
