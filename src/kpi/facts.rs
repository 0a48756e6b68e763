//! Fact streams: executions, pipeline runs, pipelines and projects (kpis.md §2–§4).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::calendar::{day_of, fmt_day, fmt_ms, runtime_bin};
use super::{JsonIter, Model, RecordIter};
use crate::normalize::{Execution, Plugin};

/// How many executions a set stands for (summarised history carries weights).
pub fn weight<'a>(xs: impl Iterator<Item = &'a Execution>) -> u64 {
    xs.map(|x| u64::from(x.weight)).sum()
}

/// A plugin of a `cli_executions` row. The fields of the rows are declared in sorted order, the
/// order a JSON object of the same properties prints in, so that the row's own text and its JSON
/// value print alike.
#[derive(Serialize)]
struct PluginRow<'a> {
    category: Option<&'a str>,
    command: Option<&'a str>,
    first_seen_at: Option<String>,
    is_test_plugin: bool,
    name_hash: Option<&'a str>,
    parent_name_hash: Option<&'a str>,
    plugin_category: &'a str,
    plugin_key: &'a str,
}

impl<'a> PluginRow<'a> {
    fn of(p: &'a Plugin) -> Self {
        PluginRow {
            category: p.field("category"),
            command: p.field("command"),
            first_seen_at: p.first_seen_ms.map(fmt_ms),
            is_test_plugin: p.is_test(),
            name_hash: p.field("name_hash"),
            parent_name_hash: p.field("parent_name_hash"),
            plugin_category: p.plugin_category(),
            plugin_key: p.key(),
        }
    }
}

/// A `cli_executions` row, borrowed from its execution: the stream has a row per execution, and
/// serialising it straight to text builds no JSON tree.
#[derive(Serialize)]
struct ExecutionRow<'a> {
    command: Option<&'a str>,
    environment_hash: Option<&'a str>,
    event_count: u32,
    event_date: String,
    execution_id: &'a str,
    exit_code: Option<i64>,
    finished_at: String,
    is_ci: Option<bool>,
    is_exec: bool,
    is_pipeline_run: bool,
    is_success: bool,
    meltano_version: Option<&'a str>,
    pipeline_id: Option<&'a str>,
    plugin_count: usize,
    plugins: Vec<PluginRow<'a>>,
    project_id: &'a str,
    project_id_source: Option<&'a str>,
    python_version: Option<&'a str>,
    runtime_bin: &'static str,
    runtime_ms: i64,
    started_at: String,
    sub_command: Option<&'a str>,
}

impl<'a> ExecutionRow<'a> {
    fn of(x: &'a Execution) -> Self {
        ExecutionRow {
            command: x.command_line.command.as_deref(),
            environment_hash: x.environment_hash.as_deref(),
            event_count: x.event_count,
            event_date: fmt_day(day_of(x.started_ms)),
            execution_id: &x.execution_id,
            exit_code: x.exit_code,
            finished_at: fmt_ms(x.finished_ms),
            is_ci: x.is_ci,
            is_exec: x.is_exec(),
            is_pipeline_run: x.is_pipeline_run(),
            is_success: x.is_success(),
            meltano_version: x.meltano_version.as_deref(),
            pipeline_id: x.pipeline_id.as_deref(),
            plugin_count: x.plugins.len(),
            plugins: x.plugins.iter().map(PluginRow::of).collect(),
            project_id: &x.project_id,
            project_id_source: x.project_id_source.as_deref(),
            python_version: x.python_version.as_deref(),
            runtime_bin: runtime_bin(Some(x.runtime_ms())),
            runtime_ms: x.runtime_ms(),
            started_at: fmt_ms(x.started_ms),
            sub_command: x.command_line.sub_command.as_deref(),
        }
    }
}

/// `cli_executions`: one record per execution started on or before as_of.
pub fn cli_executions<'m>(model: &'m Model) -> RecordIter<'m> {
    Box::new(
        model
            .scoped_executions()
            .map(|x| serde_json::to_value(ExecutionRow::of(x)).unwrap_or(Value::Null)),
    )
}

/// `cli_executions` as JSON text, the same rows as [`cli_executions`].
pub fn cli_executions_json<'m>(model: &'m Model) -> JsonIter<'m> {
    Box::new(
        model
            .scoped_executions()
            .map(|x| serde_json::to_string(&ExecutionRow::of(x)).unwrap_or_default()),
    )
}

/// `pipeline_runs`: one record per pipeline run started on or before as_of.
pub fn pipeline_runs<'m>(model: &'m Model) -> RecordIter<'m> {
    Box::new(model.scoped_executions().filter_map(|x| {
        let pipeline_id = x.pipeline_id.as_ref()?;
        Some(json!({
            "execution_id": x.execution_id,
            "pipeline_id": pipeline_id,
            "project_id": x.project_id,
            "command": x.command_line.command,
            "started_at": fmt_ms(x.started_ms),
            "run_date": fmt_day(day_of(x.started_ms)),
            "runtime_ms": x.runtime_ms(),
            "runtime_bin": runtime_bin(Some(x.runtime_ms())),
            "exit_code": x.exit_code,
            "is_success": x.is_success(),
        }))
    }))
}

/// `pipelines`: one record per pipeline id with runs on or before as_of.
pub fn pipelines<'m>(model: &'m Model) -> RecordIter<'m> {
    let mut runs: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
    let mut add = |x: &'m Execution| {
        if let Some(id) = &x.pipeline_id {
            runs.entry(id).or_default().push(x);
        }
    };
    match &model.project_scope {
        // an incremental run re-emits the pipelines of touched projects only; a pipeline id is
        // digested from its project's id, so all its runs are that project's
        Some(scope) => model
            .projects
            .iter()
            .filter(|pa| scope.touched.contains(&pa.project.project_id))
            .flat_map(|pa| pa.executions.iter().copied())
            .for_each(&mut add),
        None => model.counted.iter().copied().for_each(&mut add),
    }
    Box::new(runs.into_iter().map(|(id, xs)| {
        let first = xs[0];
        json!({
            "pipeline_id": id,
            "project_id": first.project_id,
            "environment_hash": first.environment_hash,
            "plugin_keys": first.plugins.iter().map(|p| p.key()).collect::<Vec<_>>(),
            "plugin_count": first.plugins.len(),
            "is_test_pipeline": first.plugins.iter().any(|p| p.is_test()),
            "first_run_at": fmt_ms(xs.iter().map(|x| x.started_ms).min().unwrap_or_default()),
            "last_run_at": fmt_ms(xs.iter().map(|x| x.started_ms).max().unwrap_or_default()),
            "runs": weight(xs.iter().copied()),
            "successful_runs": weight(xs.iter().copied().filter(|x| x.is_success())),
        })
    }))
}

/// `projects`: one record per project with an execution on or before as_of.
pub fn projects<'m>(model: &'m Model) -> RecordIter<'m> {
    Box::new(project_rows(model).map(|row| serde_json::to_value(row).unwrap_or(Value::Null)))
}

/// `projects` as JSON text, the same rows as [`projects`].
pub fn projects_json<'m>(model: &'m Model) -> JsonIter<'m> {
    Box::new(project_rows(model).map(|row| serde_json::to_string(&row).unwrap_or_default()))
}

/// A `projects` row, its fields in sorted order (see [`PluginRow`]).
#[derive(Serialize)]
struct ProjectRow<'a> {
    cohort_month: String,
    exec_executions: u64,
    exec_executions_successful: u64,
    executions: u64,
    first_active_date: Option<String>,
    first_event_at: String,
    has_opted_out: bool,
    ip_hash_count: usize,
    is_ci_only: bool,
    last_active_date: Option<String>,
    last_event_at: String,
    lifespan_days: i64,
    opted_out_at: Option<String>,
    pipeline_runs: u64,
    pipeline_runs_successful: u64,
    project_id: &'a str,
    project_id_source: &'a str,
    unique_pipelines: usize,
}

fn project_rows<'m>(model: &'m Model) -> impl Iterator<Item = ProjectRow<'m>> {
    model.projects.iter().filter_map(|pa| {
        let p = pa.project;
        let xs = &pa.executions;
        let first_active = pa.added_day().filter(|d| *d <= model.as_of);
        let last_active = first_active.and_then(|_| {
            pa.intervals
                .iter()
                .filter(|(s, _)| *s <= model.as_of)
                .map(|(_, e)| (*e).min(model.as_of))
                .max()
        });
        if let Some(scope) = &model.project_scope
            && !scope.keeps_project(&p.project_id, last_active)
        {
            return None;
        }
        let (mut all, mut exec, mut exec_ok, mut runs, mut runs_ok) = (0, 0, 0, 0, 0);
        let mut unique: Vec<&str> = Vec::new();
        for x in xs {
            let w = u64::from(x.weight);
            all += w;
            if x.is_exec() {
                exec += w;
                exec_ok += if x.is_success() { w } else { 0 };
            }
            if x.is_pipeline_run() {
                runs += w;
                runs_ok += if x.is_success() { w } else { 0 };
                unique.extend(x.pipeline_id.as_deref());
            }
        }
        unique.sort_unstable();
        unique.dedup();
        Some(ProjectRow {
            cohort_month: super::calendar::fmt_month(super::calendar::month_of(pa.first_day)),
            exec_executions: exec,
            exec_executions_successful: exec_ok,
            executions: all,
            first_active_date: first_active.map(fmt_day),
            first_event_at: fmt_ms(p.first_event_ms),
            has_opted_out: p.opted_out_ms.is_some(),
            ip_hash_count: p.ip_hash_count,
            is_ci_only: p.is_ci_only,
            last_active_date: last_active.map(fmt_day),
            last_event_at: fmt_ms(p.last_event_ms),
            lifespan_days: day_of(p.last_event_ms) - day_of(p.first_event_ms),
            opted_out_at: p.opted_out_ms.map(fmt_ms),
            pipeline_runs: runs,
            pipeline_runs_successful: runs_ok,
            project_id: &p.project_id,
            project_id_source: &p.source,
            unique_pipelines: unique.len(),
        })
    })
}
