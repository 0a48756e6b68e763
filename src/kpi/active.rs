//! Active projects, the North Star (kpis.md §5), and the day and month series built on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Value, json};

use super::calendar::DAY_MS;
use super::calendar::{
    Month, day_of, fmt_day, fmt_month, is_complete, month_first_day, month_last_day, month_of,
    push_day,
};
use super::{
    ACTIVE_WINDOW_DAYS, JsonIter, Model, ProjectActivity, RecordIter, ratio, windows_to_intervals,
};
use crate::normalize::{EXEC_COMMANDS, Execution};

/// Month flags of one project in one complete month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MonthFlags {
    pub active_at_start: bool,
    pub active_at_end: bool,
    pub active_unchanged: bool,
    pub inactive_unchanged: bool,
    pub churned: bool,
    pub added: bool,
    pub reactivated: bool,
}

/// Flags of project `pa` in month `m` (meaningful only when `m` is complete and `pa` was active in it).
pub fn month_flags(pa: &ProjectActivity, m: Month) -> MonthFlags {
    let (first, last) = (month_first_day(m), month_last_day(m));
    let start = pa.is_active(first) && pa.added_day() != Some(first);
    let end = pa.is_active(last) && !pa.is_churn_day(last);
    let added_in_month = pa.added_day().is_some_and(|d| month_of(d) == m);
    MonthFlags {
        active_at_start: start,
        active_at_end: end,
        active_unchanged: start && end,
        inactive_unchanged: !start && !end,
        churned: start && !end,
        added: !start && end && added_in_month,
        reactivated: !start && end && !added_in_month,
    }
}

/// Months in which `pa` has an active day on or before as_of.
fn active_months(pa: &ProjectActivity, as_of: i64) -> BTreeSet<Month> {
    let mut months = BTreeSet::new();
    for &(s, e) in &pa.intervals {
        if s > as_of {
            break;
        }
        months.extend(month_of(s)..=month_of(e.min(as_of)));
    }
    months
}

/// One `daily_active_projects` row, typed so that the largest stream is written without a JSON tree
/// per row. The fields are declared in the order a JSON object's keys are written (alphabetical), so
/// both ways of writing a row give the same text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveDay<'m> {
    #[serde(serialize_with = "serialize_day")]
    pub date: i64,
    pub eom_active_unchanged: Option<bool>,
    pub eom_added: Option<bool>,
    pub eom_churned: Option<bool>,
    pub eom_inactive_unchanged: Option<bool>,
    pub eom_reactivated: Option<bool>,
    pub is_active_month_end: Option<bool>,
    pub is_active_month_start: Option<bool>,
    pub is_added: bool,
    pub is_churn_day: bool,
    pub is_reactivated: bool,
    pub project_id: &'m str,
}

fn serialize_day<S: serde::Serializer>(day: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_day(*day))
}

impl ActiveDay<'_> {
    /// The row as JSON text, the text its `Serialize` gives, written field by field: the stream
    /// has a row per project and active day, and a serializer costs several times more per row.
    pub fn to_json(&self) -> String {
        let flag = |v: Option<bool>| match v {
            Some(true) => "true",
            Some(false) => "false",
            None => "null",
        };
        let mut out = String::with_capacity(384);
        out.push_str(r#"{"date":""#);
        push_day(&mut out, self.date);
        for (key, value) in [
            (
                r#"","eom_active_unchanged":"#,
                flag(self.eom_active_unchanged),
            ),
            (r#","eom_added":"#, flag(self.eom_added)),
            (r#","eom_churned":"#, flag(self.eom_churned)),
            (
                r#","eom_inactive_unchanged":"#,
                flag(self.eom_inactive_unchanged),
            ),
            (r#","eom_reactivated":"#, flag(self.eom_reactivated)),
            (r#","is_active_month_end":"#, flag(self.is_active_month_end)),
            (
                r#","is_active_month_start":"#,
                flag(self.is_active_month_start),
            ),
            (r#","is_added":"#, flag(Some(self.is_added))),
            (r#","is_churn_day":"#, flag(Some(self.is_churn_day))),
            (r#","is_reactivated":"#, flag(Some(self.is_reactivated))),
        ] {
            out.push_str(key);
            out.push_str(value);
        }
        out.push_str(r#","project_id":"#);
        push_json_str(&mut out, self.project_id);
        out.push('}');
        out
    }
}

/// Append `text` as a JSON string. A project id is input text, escaped as JSON requires; most need
/// no escaping and are copied as they are.
fn push_json_str(out: &mut String, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(text).unwrap_or_default());
    }
}

/// The rows of `daily_active_projects`, typed: one per (project, active day ≤ as_of), within the
/// model's project scope.
pub fn active_days<'m>(model: &'m Model) -> impl Iterator<Item = ActiveDay<'m>> + 'm {
    model
        .projects
        .iter()
        .flat_map(move |pa| project_active_days(model, pa))
}

/// `daily_active_projects`: one record per (project, active day ≤ as_of).
pub fn daily_active_projects<'m>(model: &'m Model) -> RecordIter<'m> {
    // a row of strings and booleans always converts
    Box::new(active_days(model).map(|row| serde_json::to_value(row).unwrap_or(Value::Null)))
}

/// `daily_active_projects` as JSON text, one object per row.
pub fn daily_active_projects_json<'m>(model: &'m Model) -> JsonIter<'m> {
    Box::new(active_days(model).map(|row| row.to_json()))
}

/// The active-day rows of one project.
fn project_active_days<'m>(model: &Model, pa: &ProjectActivity<'m>) -> Vec<ActiveDay<'m>> {
    let mut rows = Vec::new();
    let mut flags_cache: HashMap<Month, Option<MonthFlags>> = HashMap::new();
    let scope = model
        .project_scope
        .as_ref()
        .map(|sc| sc.days_of(&pa.project.project_id));
    let first_day = scope.map_or(i64::MIN, |sc| sc.first_day());
    for (i, &(s, e)) in pa.intervals.iter().enumerate() {
        for day in s.max(first_day)..=e.min(model.as_of) {
            if scope.is_some_and(|sc| !sc.keeps(day)) {
                continue;
            }
            let m = month_of(day);
            let flags = *flags_cache
                .entry(m)
                .or_insert_with(|| is_complete(m, model.as_of).then(|| month_flags(pa, m)));
            let f = |get: fn(&MonthFlags) -> bool| flags.as_ref().map(get);
            rows.push(ActiveDay {
                project_id: &pa.project.project_id,
                date: day,
                is_added: i == 0 && day == s,
                is_reactivated: i > 0 && day == s,
                is_churn_day: day == e,
                is_active_month_start: f(|x| x.active_at_start),
                is_active_month_end: f(|x| x.active_at_end),
                eom_active_unchanged: f(|x| x.active_unchanged),
                eom_inactive_unchanged: f(|x| x.inactive_unchanged),
                eom_churned: f(|x| x.churned),
                eom_added: f(|x| x.added),
                eom_reactivated: f(|x| x.reactivated),
            });
        }
    }
    rows
}

/// Per-day counts over a range `[first, last]`, with interval additions by difference array.
struct DaySeries {
    first: i64,
    values: Vec<i64>,
}

impl DaySeries {
    fn new(first: i64, last: i64) -> Self {
        DaySeries {
            first,
            values: vec![0; (last - first + 2).max(1) as usize],
        }
    }
    fn len(&self) -> i64 {
        self.values.len() as i64 - 1
    }
    fn add(&mut self, day: i64) {
        let i = day - self.first;
        if (0..self.len()).contains(&i) {
            self.values[i as usize] += 1;
        }
    }
    /// Add 1 on every day of `[s, e]` (clipped), to be finished with [`DaySeries::prefix_sum`].
    fn add_interval(&mut self, s: i64, e: i64) {
        let (s, e) = (s.max(self.first), e.min(self.first + self.len() - 1));
        if s > e {
            return;
        }
        self.values[(s - self.first) as usize] += 1;
        self.values[(e - self.first + 1) as usize] -= 1;
    }
    fn prefix_sum(mut self) -> Self {
        for i in 1..self.values.len() {
            self.values[i] += self.values[i - 1];
        }
        self
    }
    fn get(&self, day: i64) -> i64 {
        self.values[(day - self.first) as usize]
    }
}

/// Projects counted in the rolling variants: some single day in [D-28, D] meets `hot_day`.
fn rolling(model: &Model, first: i64, hot_days: impl Fn(&[&Execution]) -> Vec<i64>) -> DaySeries {
    let mut series = DaySeries::new(first, model.as_of);
    // only days whose window reaches `first` count
    let from_ms = (first - ACTIVE_WINDOW_DAYS) * DAY_MS;
    for pa in model.projects_fetched_ahead(super::Ahead::Last(8)) {
        let recent = &pa.executions[pa.executions.partition_point(|x| x.started_ms < from_ms)..];
        for (s, e) in windows_to_intervals(hot_days(recent), ACTIVE_WINDOW_DAYS) {
            series.add_interval(s, e);
        }
    }
    series.prefix_sum()
}

/// Days on which a project ran at least two executions of invoke/el/elt/run/test/ui. The executions
/// are in time order, so each day's are next to each other and are counted in one pass.
fn busy_days(executions: &[&Execution]) -> Vec<i64> {
    let mut days = Vec::new();
    let mut today: Option<(i64, u32)> = None;
    for x in executions {
        let counts = x
            .command_line
            .command
            .as_deref()
            .is_some_and(|c| c == "ui" || EXEC_COMMANDS.contains(&c));
        if !counts {
            continue;
        }
        let day = day_of(x.started_ms);
        match &mut today {
            Some((d, n)) if *d == day => {
                *n += 1;
                if *n == 2 {
                    days.push(day);
                }
            }
            _ => today = Some((day, 1)),
        }
    }
    days
}

/// Days on which a project ran at least two distinct pipelines: a day's first pipeline, and then any
/// other one (the executions are in time order, as for [`busy_days`]).
fn multi_pipeline_days(executions: &[&Execution]) -> Vec<i64> {
    let mut days = Vec::new();
    let mut today: Option<(i64, &str, bool)> = None;
    for x in executions {
        let Some(id) = x.pipeline_id.as_deref() else {
            continue;
        };
        let day = day_of(x.started_ms);
        match &mut today {
            Some((d, first, seen_other)) if *d == day => {
                if !*seen_other && *first != id {
                    *seen_other = true;
                    days.push(day);
                }
            }
            _ => today = Some((day, id, false)),
        }
    }
    days
}

/// `active_projects_daily`: one record per day from the first event to as_of.
pub fn active_projects_daily<'m>(model: &'m Model) -> RecordIter<'m> {
    Box::new(active_projects_daily_rows(model).into_iter())
}

fn active_projects_daily_rows(model: &Model) -> Vec<Value> {
    let Some(first) = model.first_day.filter(|f| *f <= model.as_of) else {
        return Vec::new();
    };
    // an incremental run reads no day before the summarised history's end again
    let first = first.max(model.series_from().unwrap_or(i64::MIN));
    if first > model.as_of {
        return Vec::new();
    }
    let as_of = model.as_of;
    let mut active = DaySeries::new(first, as_of);
    let (mut added, mut reactivated, mut churned) = (
        DaySeries::new(first, as_of),
        DaySeries::new(first, as_of),
        DaySeries::new(first, as_of),
    );
    let mut acquired = DaySeries::new(first, as_of);
    for pa in &model.projects {
        acquired.add(pa.first_day);
        for (i, &(s, e)) in pa.intervals.iter().enumerate() {
            active.add_interval(s, e);
            if i == 0 {
                added.add(s)
            } else {
                reactivated.add(s)
            }
            churned.add(e);
        }
    }
    let active = active.prefix_sum();
    let busy = rolling(model, first, busy_days);
    let multi = rolling(model, first, multi_pipeline_days);
    let (mut executions, mut exec, mut runs, mut ok_runs) = (
        DaySeries::new(first, as_of),
        DaySeries::new(first, as_of),
        DaySeries::new(first, as_of),
        DaySeries::new(first, as_of),
    );
    let mut pipelines_per_day: BTreeSet<(i64, &str)> = BTreeSet::new();
    let from = model
        .counted
        .partition_point(|x| x.started_ms < first * DAY_MS);
    for x in &model.counted[from..] {
        let day = day_of(x.started_ms);
        executions.add(day);
        if x.is_exec() {
            exec.add(day);
        }
        if let Some(id) = &x.pipeline_id {
            runs.add(day);
            if x.is_success() {
                ok_runs.add(day);
            }
            pipelines_per_day.insert((day, id));
        }
    }
    let mut unique = DaySeries::new(first, as_of);
    for (day, _) in &pipelines_per_day {
        unique.add(*day);
    }
    (first..=as_of)
        .map(|d| {
            json!({
                "date": fmt_day(d),
                "active_projects": active.get(d),
                "added": added.get(d),
                "reactivated": reactivated.get(d),
                "churned": churned.get(d),
                "exec_greater_1": busy.get(d),
                "unique_pipe_greater_1": multi.get(d),
                "executions": executions.get(d),
                "exec_executions": exec.get(d),
                "pipeline_runs": runs.get(d),
                "successful_pipeline_runs": ok_runs.get(d),
                "pipeline_success_rate": ratio(ok_runs.get(d) as u64, runs.get(d) as u64),
                "unique_pipelines": unique.get(d),
                "new_projects_acquired": acquired.get(d),
                "new_projects_activated": added.get(d),
            })
        })
        .collect()
}

#[derive(Default)]
struct MonthAcc<'a> {
    any_day: u64,
    flags: [u64; 6],
    acquired: u64,
    activated: u64,
    executions: u64,
    runs: u64,
    ok_runs: u64,
    pipelines: BTreeSet<&'a str>,
    segments: BTreeMap<&'static str, u64>,
}

/// `monthly_kpis`: one record per month from the first event to the month of as_of.
pub fn monthly_kpis<'m>(model: &'m Model) -> RecordIter<'m> {
    Box::new(monthly_kpis_rows(model).into_iter())
}

/// The first day `monthly_kpis` reads, `None` when it has no month to write.
pub(super) fn monthly_first_day(model: &Model) -> Option<i64> {
    let first = model.first_day.filter(|f| *f <= model.as_of)?;
    // an incremental run reads no month before the summarised history's end again
    let first = match model.series_from() {
        Some(from) if from > first => month_first_day(month_of(from)),
        _ => first,
    };
    (first <= model.as_of).then_some(first)
}

fn monthly_kpis_rows(model: &Model) -> Vec<Value> {
    let Some(first) = monthly_first_day(model) else {
        return Vec::new();
    };
    let as_of = model.as_of;
    let mut months: BTreeMap<Month, MonthAcc> = (month_of(first)..=month_of(as_of))
        .map(|m| (m, MonthAcc::default()))
        .collect();
    for pa in &model.projects {
        if let Some(acc) = months.get_mut(&month_of(pa.first_day)) {
            acc.acquired += 1;
        }
        if let Some(d) = pa.added_day().filter(|d| *d <= as_of)
            && let Some(acc) = months.get_mut(&month_of(d))
        {
            acc.activated += 1;
        }
        for m in active_months(pa, as_of) {
            let Some(acc) = months.get_mut(&m) else {
                continue;
            };
            acc.any_day += 1;
            if is_complete(m, as_of) {
                let f = month_flags(pa, m);
                for (i, on) in [
                    f.active_at_end,
                    f.added,
                    f.reactivated,
                    f.churned,
                    f.active_unchanged,
                    f.inactive_unchanged,
                ]
                .into_iter()
                .enumerate()
                {
                    acc.flags[i] += u64::from(on);
                }
            }
        }
    }
    let from = model
        .counted
        .partition_point(|x| x.started_ms < first * DAY_MS);
    for x in &model.counted[from..] {
        let Some(acc) = months.get_mut(&month_of(day_of(x.started_ms))) else {
            continue;
        };
        acc.executions += 1;
        if let Some(id) = &x.pipeline_id {
            acc.runs += 1;
            acc.ok_runs += u64::from(x.is_success());
            acc.pipelines.insert(id);
        }
    }
    for s in model.segments() {
        if let Some(acc) = months.get_mut(&s.month) {
            *acc.segments.entry(s.segment).or_default() += 1;
        }
    }
    months
        .into_iter()
        .map(|(m, a)| {
            let complete = is_complete(m, as_of);
            let flag = |i: usize| complete.then_some(a.flags[i]);
            let seg = |name: &str| a.segments.get(name).copied().unwrap_or(0);
            json!({
                "month": fmt_month(m),
                "is_complete": complete,
                "monthly_active_projects": flag(0),
                "active_projects_any_day": a.any_day,
                "added": flag(1),
                "reactivated": flag(2),
                "churned": flag(3),
                "active_unchanged": flag(4),
                "inactive_unchanged": flag(5),
                "new_projects_acquired": a.acquired,
                "new_projects_activated": a.activated,
                "executions": a.executions,
                "pipeline_runs": a.runs,
                "successful_pipeline_runs": a.ok_runs,
                "pipeline_success_rate": ratio(a.ok_runs, a.runs),
                "unique_pipelines": a.pipelines.len(),
                "guppy_projects": seg("GUPPY"),
                "marlin_projects": seg("MARLIN"),
                "whale_projects": seg("WHALE"),
                "no_pipelines_projects": seg("NO_PIPELINES"),
            })
        })
        .collect()
}
