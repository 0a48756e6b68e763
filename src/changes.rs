//! Which rows an incremental run re-emits: every row the new events (or the move of as_of) can have
//! changed, so that targets upserting by key end with the same rows as a full refresh.
//!
//! New events touch executions, and through them projects and days. A qualifying day changes the
//! active windows from the day before it onwards and the month flags of those months, so daily and
//! monthly rows are re-emitted from the first day of the month before the earliest touched day (or of
//! the previous as_of, which brings new days and newly complete months). Rows keyed by execution,
//! project or pipeline are re-emitted for the touched ones; a project whose source or first event
//! changed is re-emitted whole, and then every global row too, since its whole history moved. A
//! project's daily rows depend on its own executions and on whether their month is complete, so from
//! that month on they are re-emitted for touched projects, for days after the previous as_of, and for
//! months that as_of has just completed.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::kpi::ProjectScope;
use crate::kpi::calendar::{
    day_of, fmt_day, is_complete, month_first_day, month_last_day, month_of, parse_day,
};
use crate::normalize::{ExecutionId, Facts, FastSet, Touched};

/// The row filter of one incremental run.
#[derive(Debug, Default)]
pub struct Changes {
    /// First day (a month's first day, `YYYY-MM-DD`) from which period rows are re-emitted.
    pub from: String,
    /// The previous run's as_of, `YYYY-MM-DD`.
    pub previous_as_of: String,
    pub executions: FastSet<ExecutionId>,
    /// Cohort months (`YYYY-MM-01`) of touched projects.
    pub cohorts: FastSet<String>,
    /// Period rows before this day (`YYYY-MM-DD`) come from summarised history and are never
    /// re-emitted (they are final).
    pub exact_from: Option<String>,
    /// Touched and rewritten projects (a rewritten one gets all its rows, and all global rows too),
    /// and the rule for per-project rows, which the KPI engine also applies as it builds them.
    pub scope: ProjectScope,
}

impl Changes {
    /// The filter for a run over `facts`, given what the new events touched, the previous as_of and
    /// each project's (source, first event) before this run.
    pub fn new(
        facts: &Facts,
        touched: &Touched,
        previous_as_of: i64,
        as_of: i64,
        previous_projects: &BTreeMap<String, (String, i64)>,
    ) -> Changes {
        let earliest = touched.earliest_ms.map(day_of).unwrap_or(previous_as_of);
        let from_day = month_first_day(month_of(earliest.min(previous_as_of) - 1));
        // the last month complete on a day
        let complete_until = |day: i64| {
            let m = month_of(day);
            if is_complete(m, day) { m } else { m - 1 }
        };
        let (was, now) = (complete_until(previous_as_of), complete_until(as_of));
        let mut changes = Changes {
            from: fmt_day(from_day),
            previous_as_of: fmt_day(previous_as_of),
            executions: touched.executions.clone(),
            scope: ProjectScope {
                touched: touched.projects.clone(),
                rewritten: FastSet::default(),
                from: from_day,
                previous_as_of,
                completed: (now > was).then(|| (month_first_day(was + 1), month_last_day(now))),
                exact_from: None,
            },
            ..Default::default()
        };
        for p in &facts.projects {
            if !touched.projects.contains(&p.project_id) {
                continue;
            }
            changes
                .cohorts
                .insert(fmt_day(month_first_day(month_of(day_of(p.first_event_ms)))));
            let now = (p.source.as_str(), p.first_event_ms);
            match previous_projects.get(&p.project_id) {
                Some((source, first)) if (source.as_str(), *first) == now => {}
                Some((_, first)) => {
                    changes.scope.rewritten.insert(p.project_id.clone());
                    changes
                        .cohorts
                        .insert(fmt_day(month_first_day(month_of(day_of(*first)))));
                }
                // a new project: its rows all lie after `from`
                None => {}
            }
        }
        changes
    }

    /// Whether `record` of `stream` is re-emitted.
    pub fn keep(&self, stream: &str, record: &Value) -> bool {
        let s = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or("");
        if let Some(exact) = &self.exact_from {
            let period = match stream {
                "daily_active_projects" | "active_projects_daily" => s("date"),
                "monthly_kpis" | "plugin_usage" | "project_monthly_segments" => s("month"),
                "kpi_health" => s("period"),
                _ => "~",
            };
            if period < exact.as_str() {
                return false;
            }
        }
        let all = !self.scope.rewritten.is_empty();
        let day = |k: &str| parse_day(s(k));
        match stream {
            "cli_executions" | "pipeline_runs" => self.executions.contains(s("execution_id")),
            "pipelines" => self.scope.touched.contains(s("project_id")),
            "projects" => self
                .scope
                .keeps_project(s("project_id"), day("last_active_date")),
            "daily_active_projects" => {
                day("date").is_some_and(|d| self.scope.keeps_day(s("project_id"), d))
            }
            "project_monthly_segments" => {
                day("month").is_some_and(|m| self.scope.keeps_month(s("project_id"), m))
            }
            "active_projects_daily" => all || s("date") >= self.from.as_str(),
            "monthly_kpis" | "plugin_usage" => all || s("month") >= self.from.as_str(),
            "cohort_retention" => {
                all || s("month") >= self.from.as_str() || self.cohorts.contains(s("cohort_month"))
            }
            "kpi_health" => all || s("period") >= self.from.as_str(),
            _ => true,
        }
    }
}
