//! Usage, segments and retention (kpis.md §6).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::normalize::text::FastMap;

use super::calendar::{Month, day_of, fmt_month, month_first_day, month_last_day, month_of};
use super::{Model, ProjectScope, RecordIter, ratio};

/// One project's pipeline volume in one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    pub project_id: &'a str,
    pub month: Month,
    pub executions: u64,
    pub pipeline_runs: u64,
    pub pipeline_runs_active_eom: u64,
    pub segment: &'static str,
}

/// Segment name of a count of counted pipeline runs.
pub fn segment_name(runs: u64) -> &'static str {
    match runs {
        0 => "NO_PIPELINES",
        1..=49 => "GUPPY",
        50..=2000 => "MARLIN",
        _ => "WHALE",
    }
}

/// Segments of every (project, month) with an execution.
pub fn segments<'a>(model: &Model<'a>) -> Vec<Segment<'a>> {
    segments_from(model, |_| i64::MIN)
}

/// Segments of every (project, month) with an execution on or after the project's `from(project)`
/// day (a month's first day: a month's segment depends only on that month's executions). A project's
/// executions are in time order, so each month's are next to each other and are counted in one pass.
pub fn segments_from<'a>(model: &Model<'a>, from: impl Fn(&str) -> i64) -> Vec<Segment<'a>> {
    let mut out = Vec::new();
    for pa in model.projects_fetched_ahead(super::Ahead::Last(8)) {
        let project_id = &pa.project.project_id;
        let segment = |month, (executions, runs, active_eom): (u64, u64, u64)| Segment {
            project_id,
            month,
            executions,
            pipeline_runs: runs,
            pipeline_runs_active_eom: active_eom,
            segment: segment_name(active_eom),
        };
        // the month being counted: executions, pipeline runs, runs of a project active at its end
        let mut counting: Option<(Month, (u64, u64, u64))> = None;
        let from_ms = from(project_id).saturating_mul(super::calendar::DAY_MS);
        let first = pa.executions.partition_point(|x| x.started_ms < from_ms);
        for x in &pa.executions[first..] {
            let day = day_of(x.started_ms);
            let m = month_of(day);
            let counts = match &mut counting {
                Some((month, counts)) if *month == m => counts,
                _ => {
                    if let Some((month, counts)) = counting.take() {
                        out.push(segment(month, counts));
                    }
                    &mut counting.insert((m, (0, 0, 0))).1
                }
            };
            counts.0 += 1;
            if x.pipeline_id.is_some() {
                counts.1 += 1;
                let last = month_last_day(m);
                let counted = if last <= model.as_of {
                    pa.is_active(last)
                } else {
                    pa.is_active(day)
                };
                counts.2 += u64::from(counted);
            }
        }
        if let Some((month, counts)) = counting {
            out.push(segment(month, counts));
        }
    }
    out
}

/// `project_monthly_segments`.
pub fn project_monthly_segments<'m>(model: &'m Model) -> RecordIter<'m> {
    // an incremental run writes only the months its scope keeps
    let scope = model.project_scope.as_ref();
    Box::new(
        model
            .segments()
            .iter()
            .filter(move |s| {
                scope.is_none_or(|sc| sc.keeps_month(s.project_id, month_first_day(s.month)))
            })
            .map(|s| {
                json!({
                    "project_id": s.project_id,
                    "month": fmt_month(s.month),
                    "executions": s.executions,
                    "pipeline_runs": s.pipeline_runs,
                    "pipeline_runs_active_eom": s.pipeline_runs_active_eom,
                    "segment": s.segment,
                })
            }),
    )
}

/// `plugin_usage`: executions and distinct projects per (month, plugin category).
pub fn plugin_usage<'m>(model: &'m Model) -> RecordIter<'m> {
    Box::new(plugin_usage_rows(model).into_iter())
}

fn plugin_usage_rows(model: &Model) -> Vec<Value> {
    // an incremental run re-emits the months from the scope's first day on
    let from_ms = model
        .project_scope
        .as_ref()
        .and_then(ProjectScope::fleet_from)
        .map_or(i64::MIN, |d| d * super::calendar::DAY_MS);
    // categories by number, in the order first seen: a fleet has a handful
    let mut category_numbers: FastMap<&str, u32> = FastMap::default();
    let mut category_names: Vec<&str> = Vec::new();
    // (month, category number) -> (executions, projects)
    let mut usage: FastMap<(Month, u32), (u64, u64)> = FastMap::default();
    // project by project (each is a different project), so that a project is counted once per
    // month and category by remembering only its own
    let mut categories: Vec<u32> = Vec::new();
    let mut counted: Vec<(Month, u32)> = Vec::new();
    for pa in model.projects_fetched_ahead(super::Ahead::Last(8)) {
        counted.clear();
        let first = pa.executions.partition_point(|x| x.started_ms < from_ms);
        for x in &pa.executions[first..] {
            let m = month_of(day_of(x.started_ms));
            categories.clear();
            categories.extend(x.plugins.iter().map(|p| {
                let name = p.plugin_category();
                *category_numbers.entry(name).or_insert_with(|| {
                    category_names.push(name);
                    (category_names.len() - 1) as u32
                })
            }));
            categories.sort_unstable();
            categories.dedup();
            for &c in &categories {
                let e = usage.entry((m, c)).or_default();
                e.0 += 1;
                if !counted.contains(&(m, c)) {
                    counted.push((m, c));
                    e.1 += 1;
                }
            }
        }
    }
    // (month, category, executions, projects), in month then category order
    let mut rows: Vec<(Month, &str, u64, u64)> = usage
        .into_iter()
        .map(|((m, c), (executions, projects))| {
            (m, category_names[c as usize], executions, projects)
        })
        .collect();
    rows.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    rows.into_iter()
        .map(|(m, c, executions, projects)| {
            json!({
                "month": fmt_month(m),
                "plugin_category": c,
                "executions": executions,
                "projects": projects,
            })
        })
        .collect()
}

use super::Cohort;

/// What one project adds to its cohort: the months it was active in, and whether it ran more than
/// one exec execution. Each execution is given as its start, whether it is an exec, its weight and
/// the months of summarised presence it carries. The state counts a dormant project's share with
/// the same rule ([`super::DormantFleet`]).
pub fn cohort_activity<'x>(
    executions: impl Iterator<Item = (i64, bool, u32, &'x [i64])>,
    months: &mut Vec<Month>,
) -> bool {
    months.clear();
    let mut exec_weight = 0u64;
    for (started_ms, is_exec, weight, presence) in executions {
        // executions come mostly in time order: a month already last is not pushed again
        let m = month_of(day_of(started_ms));
        if months.last() != Some(&m) {
            months.push(m);
        }
        months.extend_from_slice(presence);
        if is_exec {
            exec_weight += u64::from(weight);
        }
    }
    if !months.is_sorted() {
        months.sort_unstable();
    }
    months.dedup();
    exec_weight > 1
}

/// `cohort_retention`: per cohort month and month number, projects still executing.
pub fn cohort_retention<'m>(model: &'m Model) -> RecordIter<'m> {
    Box::new(cohort_retention_rows(model).into_iter())
}

fn cohort_retention_rows(model: &Model) -> Vec<Value> {
    let last_month = month_of(model.as_of);
    // cohort -> (projects, active per month, active-and-multi-exec per month)
    let mut cohorts: BTreeMap<Month, Cohort> = BTreeMap::new();
    let mut months = Vec::new();
    for pa in model.projects_fetched_ahead(super::Ahead::First(16)) {
        let cohort = month_of(pa.first_day);
        let multi = cohort_activity(
            pa.executions
                .iter()
                .map(|x| (x.started_ms, x.is_exec(), x.weight, &*x.presence_months)),
            &mut months,
        );
        let entry = cohorts.entry(cohort).or_default();
        entry.0 += 1;
        for &m in &months {
            *entry.1.entry(m).or_default() += 1;
            if multi {
                *entry.2.entry(m).or_default() += 1;
            }
        }
    }
    // projects an incremental run left packed still count in their cohorts
    for (cohort, (size, active, multi)) in model.dormant.iter().flat_map(|d| &d.cohorts) {
        let entry = cohorts.entry(*cohort).or_default();
        entry.0 += size;
        for (m, n) in active {
            *entry.1.entry(*m).or_default() += n;
        }
        for (m, n) in multi {
            *entry.2.entry(*m).or_default() += n;
        }
    }
    let mut rows = Vec::new();
    for (cohort, (size, active, multi)) in cohorts {
        let base = active.get(&cohort).copied().unwrap_or(0);
        let base_multi = multi.get(&cohort).copied().unwrap_or(0);
        for m in cohort..=last_month {
            let a = active.get(&m).copied().unwrap_or(0);
            let am = multi.get(&m).copied().unwrap_or(0);
            rows.push(json!({
                "cohort_month": fmt_month(cohort),
                "month_number": m - cohort,
                "month": fmt_month(m),
                "cohort_projects": size,
                "active_projects": a,
                "active_projects_multi_exec": am,
                "retention": ratio(a, base),
                "retention_multi_exec": ratio(am, base_multi),
            }));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_edges() {
        assert_eq!(segment_name(0), "NO_PIPELINES");
        assert_eq!(segment_name(1), "GUPPY");
        assert_eq!(segment_name(49), "GUPPY");
        assert_eq!(segment_name(50), "MARLIN");
        assert_eq!(segment_name(2000), "MARLIN");
        assert_eq!(segment_name(2001), "WHALE");
    }

    #[test]
    fn cohort_activity_lists_each_month_once_in_order() {
        let at = |month: Month| super::super::calendar::month_first_day(month) * 86_400_000;
        let (jan, feb, mar) = (2024 * 12, 2024 * 12 + 1, 2024 * 12 + 2);
        let mut months = vec![99];
        // out of time order, a month repeated apart, summarised presence of earlier months
        let multi = cohort_activity(
            [
                (at(mar), true, 1, &[][..]),
                (at(jan), false, 1, &[][..]),
                (at(mar), false, 1, &[feb, jan][..]),
            ]
            .into_iter(),
            &mut months,
        );
        assert_eq!(months, [jan, feb, mar]);
        assert!(!multi, "one exec execution");
        let multi = cohort_activity([(at(feb), true, 2, &[][..])].into_iter(), &mut months);
        assert_eq!(months, [feb]);
        assert!(multi, "a summarised execution standing for two");
    }
}
