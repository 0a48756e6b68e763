//! Summarising old history in the incremental state, so that it grows with projects and pipelines,
//! not with days.
//!
//! Executions that finished before a cut day can no longer change (events older than the late-event
//! horizon are not applied) and the daily and monthly rows they feed are final. What later rows still
//! need from them is per project: lifetime counts, the first and last execution, the execution that set
//! the project's source, its CI and IP facts, the first qualifying days and the last one (for added and
//! last-active dates), each pipeline's first and last run and counts, and the months with activity (for
//! cohorts). Each project's old executions are therefore grouped by what counts distinguish (command,
//! success, pipeline, CI, source); each group keeps its earliest execution, weighted by the group's size;
//! the other extremes are kept with weight 0; the months are kept as a list. Every kept execution is a
//! real one, so nothing it implies (an active window, a first event) is invented.

use std::collections::{BTreeMap, BTreeSet};

use crate::kpi::MIN_AGE_DAYS;
use crate::kpi::calendar::{DAY_MS, day_of, month_of};
use crate::normalize::{ExecParts, Execution, TextSet};

/// Summarise the executions that finished before `cut_ms`; later ones are kept as they are. Parts
/// without a project id that finished before the cut are dropped (they can never get one).
///
/// `summarised_before_ms` is the cut of the state the executions came from: a project none of whose
/// old executions finished after it is already summarised (summarising is idempotent), and is passed
/// through.
pub fn compact(
    executions: &[Execution],
    orphans: Vec<ExecParts>,
    cut_ms: i64,
    summarised_before_ms: Option<i64>,
) -> Compacted<'_> {
    let orphans = orphans
        .into_iter()
        .filter(|p| p.finished_ms >= cut_ms)
        .collect();
    let (recent, mut old): (Vec<&Execution>, Vec<&Execution>) =
        executions.iter().partition(|x| x.finished_ms >= cut_ms);
    let mut summaries = Vec::new();
    let mut project_history = Vec::new();
    if summarised_before_ms == Some(cut_ms) {
        // the cut has not moved: every old execution is already summarised history
        return Compacted {
            recent,
            passed: old,
            summaries,
            project_history,
            orphans,
        };
    }
    let mut passed = Vec::new();
    // each project's old executions together, in time order
    old.sort_unstable_by(|a, b| {
        (&a.project_id, a.started_ms, &a.execution_id).cmp(&(
            &b.project_id,
            b.started_ms,
            &b.execution_id,
        ))
    });
    for xs in old.chunk_by(|a, b| a.project_id == b.project_id) {
        if summarised_before_ms.is_some_and(|before| xs.iter().all(|x| x.finished_ms < before)) {
            passed.extend(xs);
            continue;
        }
        summarise_project(xs, &mut summaries, &mut project_history);
    }
    Compacted {
        recent,
        passed,
        summaries,
        project_history,
        orphans,
    }
}

/// What the next state holds after [`compact`].
pub struct Compacted<'a> {
    /// Executions that finished on or after the cut, kept as they are.
    pub recent: Vec<&'a Execution>,
    /// Summarised history of an earlier state, passed through as it is.
    pub passed: Vec<&'a Execution>,
    /// The executions that stand for summarised history (weighted, see the module docs).
    pub summaries: Vec<Summary<'a>>,
    /// What the first summary of each summarised project carries for the whole project.
    pub project_history: Vec<ProjectHistory>,
    /// Parts without a project id that may still get one.
    pub orphans: Vec<ExecParts>,
}

/// A real execution standing for a group of summarised history: what it counts for is its group's,
/// not its own. It borrows the execution rather than copying it (16 bytes).
#[derive(Debug, Clone, Copy)]
pub struct Summary<'a> {
    pub execution: &'a Execution,
    pub weight: u32,
    /// Index into [`Compacted::project_history`] for the project's first summary, else `NO_HISTORY`.
    pub history: u32,
}

const NO_HISTORY: u32 = u32::MAX;

/// A summarised project's months with activity and its IP hashes.
#[derive(Debug, Clone, Default)]
pub struct ProjectHistory {
    pub presence_months: Vec<i64>,
    pub ip_hashes: TextSet,
}

static NO_PROJECT_HISTORY: ProjectHistory = ProjectHistory {
    presence_months: Vec::new(),
    ip_hashes: TextSet::new(),
};

/// An execution as the next state holds it: the execution, with the weight it stands for and, when
/// it carries them, its project's months and IP hashes in place of its own.
#[derive(Debug, Clone, Copy)]
pub struct Kept<'a> {
    pub execution: &'a Execution,
    pub weight: u32,
    pub history: Option<&'a ProjectHistory>,
}

impl<'a> Kept<'a> {
    /// An execution standing for itself.
    pub fn whole(execution: &'a Execution) -> Self {
        Kept {
            execution,
            weight: execution.weight,
            history: None,
        }
    }

    pub fn presence_months(&self) -> &'a [i64] {
        match self.history {
            Some(h) => &h.presence_months,
            None => &self.execution.presence_months,
        }
    }

    pub fn ip_hashes(&self) -> &'a TextSet {
        match self.history {
            Some(h) => &h.ip_hashes,
            None => &self.execution.ip_hashes,
        }
    }

    /// The execution with what it stands for in place of its own counts.
    pub fn to_execution(&self) -> Execution {
        let mut x = self.execution.clone();
        x.weight = self.weight;
        x.presence_months = self.presence_months().into();
        x.ip_hashes = std::sync::Arc::new(self.ip_hashes().clone());
        x
    }
}

impl Compacted<'_> {
    /// Every execution of the next state.
    pub fn executions(&self) -> impl Iterator<Item = Kept<'_>> {
        self.recent().chain(self.history())
    }

    /// The executions that finished on or after the cut.
    pub fn recent(&self) -> impl Iterator<Item = Kept<'_>> {
        self.recent.iter().map(|&x| Kept::whole(x))
    }

    /// The summarised history: what finished before the cut.
    pub fn history(&self) -> impl Iterator<Item = Kept<'_>> {
        let passed = self.passed.iter().map(|&x| Kept::whole(x));
        let summaries = self.summaries.iter().map(|s| Kept {
            execution: s.execution,
            weight: s.weight,
            // a summary that carries no history carries none of its own either
            history: Some(
                self.project_history
                    .get(s.history as usize)
                    .unwrap_or(&NO_PROJECT_HISTORY),
            ),
        });
        passed.chain(summaries)
    }

    /// How many executions [`Compacted::history`] yields.
    pub fn history_len(&self) -> usize {
        self.passed.len() + self.summaries.len()
    }
}

type GroupKey<'a> = (
    Option<&'a str>,
    bool,
    Option<&'a str>,
    Option<bool>,
    Option<&'a str>,
);

fn summarise_project<'a>(
    xs: &[&'a Execution],
    out: &mut Vec<Summary<'a>>,
    history: &mut Vec<ProjectHistory>,
) {
    // index of the kept execution -> its weight
    let mut kept: BTreeMap<usize, u32> = BTreeMap::new();
    let mut groups: BTreeMap<GroupKey, usize> = BTreeMap::new();
    let mut months: BTreeSet<i64> = BTreeSet::new();
    let mut ips = TextSet::new();
    let mut last_run: BTreeMap<&str, usize> = BTreeMap::new();
    let first_day = xs.first().map_or(0, |x| day_of(x.started_ms));
    let mut first_qualifying: Option<usize> = None;
    let mut last_candidate: Option<usize> = None;
    for (i, x) in xs.iter().enumerate() {
        let key = (
            x.command_line.command.as_deref(),
            x.is_success(),
            x.pipeline_id.as_deref(),
            x.is_ci,
            x.project_id_source.as_deref(),
        );
        let rep = *groups.entry(key).or_insert(i);
        *kept.entry(rep).or_insert(0) += x.weight;
        months.insert(month_of(day_of(x.started_ms)));
        months.extend(x.presence_months.iter().copied());
        ips.extend(x.ip_hashes.iter().cloned());
        if let Some(id) = &x.pipeline_id {
            last_run.insert(id, i);
        }
        if x.is_exec() && !x.plugins.is_empty() {
            let day = day_of(x.started_ms);
            // the first week's candidates decide the first qualifying day whatever the project's
            // first event turns out to be; after that the first one of age is enough
            if day < first_day + MIN_AGE_DAYS + 1 {
                kept.entry(i).or_insert(0);
            } else if first_qualifying.is_none() {
                first_qualifying = Some(i);
            }
            last_candidate = Some(i);
        }
    }
    let extremes = [Some(xs.len() - 1), first_qualifying, last_candidate];
    for i in extremes.into_iter().flatten().chain(last_run.into_values()) {
        kept.entry(i).or_insert(0);
    }
    for (n, (i, weight)) in kept.into_iter().enumerate() {
        let mut s = Summary {
            execution: xs[i],
            weight,
            history: NO_HISTORY,
        };
        if n == 0 {
            // the earliest kept execution carries the project's months and IP hashes
            s.history = history.len() as u32;
            history.push(ProjectHistory {
                presence_months: months.iter().copied().collect(),
                ip_hashes: std::mem::take(&mut ips),
            });
        }
        out.push(s);
    }
}

/// The first day whose executions an incremental state may summarise, for a run whose events can
/// no longer be older than `late_before_day`: far enough back that every row a later run can re-emit
/// (from the month before the horizon on, with its 28-day windows) is computed from whole executions.
pub fn cut_day(late_before_day: i64) -> i64 {
    let month_start = crate::kpi::calendar::month_first_day(month_of(late_before_day - 3));
    month_start - crate::kpi::ACTIVE_WINDOW_DAYS - 2
}

/// [`cut_day`] in epoch milliseconds.
pub fn cut_ms(late_before_day: i64) -> i64 {
    cut_day(late_before_day) * DAY_MS
}

/// The first day whose daily rows are exact when history before `cut_day` is summarised.
pub fn exact_from_day(cut_day: i64) -> i64 {
    cut_day + crate::kpi::ACTIVE_WINDOW_DAYS + 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{Variant, plugins};
    use std::collections::BTreeSet;

    fn execution(id: &str, day: i64, command: &str, exit: i64, plugin: bool) -> Execution {
        let mut plugins = Vec::new();
        if plugin {
            plugins.push(plugins::plugin_from_dict(
                serde_json::json!({"category": "extractors", "name_hash": "h"})
                    .as_object()
                    .unwrap(),
            ));
        }
        let start = day * DAY_MS + 1000;
        ExecParts {
            execution_id: id.into(),
            variant: Variant {
                project_id: Some("p".into()),
                source: Some("explicit".into()),
                command: Some(command.into()),
                is_ci: Some(false),
                ..Default::default()
            },
            started_ms: start,
            finished_ms: start + 10,
            exit_code: Some(exit),
            ip_hashes: TextSet::new(),
            plugins,
            event_count: 3,
            position: Default::default(),
            weight: 1,
            presence_months: BTreeSet::new(),
        }
        .into_execution(&mut Default::default())
        .unwrap()
    }

    fn owned(c: Compacted) -> Vec<Execution> {
        c.executions().map(|k| k.to_execution()).collect()
    }

    #[test]
    fn groups_keep_counts_extremes_and_months() {
        let mut xs = Vec::new();
        for d in 0..100 {
            xs.push(execution(
                &format!("r{d:03}"),
                20_000 + d,
                "run",
                i64::from(d % 10 == 0),
                true,
            ));
        }
        xs.push(execution("late", 20_200, "run", 0, true));
        let out = owned(compact(&xs, Vec::new(), 20_150 * DAY_MS, None));
        // summarising is idempotent: a summarised project passes through a later cut unchanged
        let key = |x: &Execution| (x.execution_id.clone(), x.weight, x.presence_months.clone());
        let mut again: Vec<_> = owned(compact(&out, Vec::new(), 20_150 * DAY_MS, None))
            .iter()
            .map(key)
            .collect();
        let mut once: Vec<_> = out.iter().map(key).collect();
        again.sort();
        once.sort();
        assert_eq!(again, once);
        let passed = compact(&out, Vec::new(), 20_160 * DAY_MS, Some(20_150 * DAY_MS));
        assert_eq!(passed.recent.len() + passed.passed.len(), out.len());
        assert!(passed.summaries.is_empty());
        assert_eq!(passed.history_len(), out.len() - 1);
        // with the cut where it was, the old executions pass through without being grouped again
        let same = compact(&out, Vec::new(), 20_150 * DAY_MS, Some(20_150 * DAY_MS));
        assert_eq!((same.recent.len(), same.passed.len()), (1, out.len() - 1));
        assert!(same.summaries.is_empty());
        let old: Vec<&Execution> = out.iter().filter(|x| &*x.execution_id != "late").collect();
        // two groups (success, failure) weighted by their sizes; the total is kept
        assert_eq!(old.iter().map(|x| x.weight).sum::<u32>(), 100);
        // the first week's candidates, the first of age, the last run and the group heads are kept
        assert!(old.len() < 15, "{}", old.len());
        assert!(
            old.iter().any(|x| &*x.execution_id == "r099"),
            "last execution kept"
        );
        assert!(
            old.iter().any(|x| &*x.execution_id == "r008"),
            "first qualifying day kept"
        );
        let months: BTreeSet<i64> = old
            .iter()
            .flat_map(|x| x.presence_months.iter().copied())
            .collect();
        assert_eq!(months.len(), 4, "every month with activity");
        // the execution after the cut is untouched
        assert_eq!(out.iter().filter(|x| &*x.execution_id == "late").count(), 1);
    }

    #[test]
    fn orphans_before_the_cut_are_dropped() {
        let orphan = |id: &str, day: i64| {
            let mut x = execution(id, day, "run", 0, false);
            x.project_id = "".into();
            ExecParts {
                execution_id: x.execution_id,
                variant: Variant::default(),
                started_ms: x.started_ms,
                finished_ms: x.finished_ms,
                exit_code: None,
                ip_hashes: TextSet::new(),
                plugins: Vec::new(),
                event_count: 1,
                position: Default::default(),
                weight: 1,
                presence_months: BTreeSet::new(),
            }
        };
        let orphans = vec![orphan("old", 20_000), orphan("new", 20_200)];
        let kept = compact(&[], orphans, 20_150 * DAY_MS, None).orphans;
        let ids: Vec<&str> = kept.iter().map(|p| &*p.execution_id).collect();
        assert_eq!(ids, ["new"]);
    }
}
