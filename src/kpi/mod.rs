//! The KPI engine: pure functions from normalised [`Facts`] and an `as_of` day to the rows of every
//! KPI stream (kpis.md §3–§6). No I/O happens here; the same facts always give the same rows.
//!
//! [`Model`] precomputes what several streams share (the counted executions, each project's
//! active-day intervals); each stream is then one function `fn(&Model) -> Vec<Value>`.

pub mod active;
pub mod calendar;
pub mod facts;
pub mod usage;

use serde_json::Value;

use crate::normalize::{Execution, Facts, FastSet, Project};
use calendar::{DAY_MS, day_of};

/// The North Star window: a qualifying day d makes a project active on d..=d+28.
pub const ACTIVE_WINDOW_DAYS: i64 = 28;
/// A project must be this many days old (by calendar date) for a day to qualify.
pub const MIN_AGE_DAYS: i64 = 7;

/// Per-project data the streams share.
#[derive(Debug, Clone)]
pub struct ProjectActivity<'a> {
    pub project: &'a Project,
    pub first_day: i64,
    /// Merged, sorted, inclusive intervals of active days over the whole series (also after as_of).
    pub intervals: Vec<(i64, i64)>,
    /// Executions started on or before as_of, in time order.
    pub executions: Vec<&'a Execution>,
}

impl ProjectActivity<'_> {
    /// Active on `day`.
    pub fn is_active(&self, day: i64) -> bool {
        let i = self.intervals.partition_point(|(start, _)| *start <= day);
        i > 0 && self.intervals[i - 1].1 >= day
    }
    /// First active day ever (the added day).
    pub fn added_day(&self) -> Option<i64> {
        self.intervals.first().map(|(s, _)| *s)
    }
    /// `day` is a churn day: active and not active the next day.
    pub fn is_churn_day(&self, day: i64) -> bool {
        self.intervals.iter().any(|(_, e)| *e == day)
    }
}

/// Merge the windows `[d, d + window]` of sorted days into inclusive intervals.
pub fn windows_to_intervals(days: impl IntoIterator<Item = i64>, window: i64) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for d in days {
        match out.last_mut() {
            Some((_, end)) if d <= *end + 1 => *end = (*end).max(d + window),
            _ => out.push((d, d + window)),
        }
    }
    out
}

/// Shared precomputation over the facts for one `as_of` day.
#[derive(Debug)]
pub struct Model<'a> {
    pub facts: &'a Facts,
    /// Day number of as_of.
    pub as_of: i64,
    /// Executions started on or before as_of, in time order.
    pub counted: Vec<&'a Execution>,
    /// Projects with at least one counted execution, by project id.
    pub projects: Vec<ProjectActivity<'a>>,
    /// First day of the day series (earliest first event of those projects).
    pub first_day: Option<i64>,
    /// When set, the per-project streams build only the rows this scope keeps.
    pub project_scope: Option<ProjectScope>,
    /// What projects left out of the facts (dormant ones an incremental run did not unpack) add to
    /// the rows it can re-emit.
    pub dormant: Option<DormantFleet>,
    /// Segments of the project months `monthly_kpis` and `project_monthly_segments` read, made once
    /// by whichever of them comes first ([`Model::segments`]).
    segments: std::sync::OnceLock<Vec<usage::Segment<'a>>>,
    /// When set ([`Model::limit_executions`]), the per-execution streams yield only these counted
    /// executions (an incremental run re-emits only what new events touched, and need not build the
    /// rest).
    scoped: Option<Vec<&'a Execution>>,
}

/// Per cohort month: its projects, and per month those active and those active with more than one
/// exec execution.
pub type Cohort = (
    u64,
    std::collections::BTreeMap<i64, u64>,
    std::collections::BTreeMap<i64, u64>,
);

/// What dormant projects, left out of the facts, add to the fleet: their cohorts' counts and the
/// first day of the day series. Nothing else of a row an incremental run re-emits depends on them
/// (their active windows closed before the first period it recomputes).
#[derive(Debug, Clone, Default)]
pub struct DormantFleet {
    pub cohorts: std::collections::BTreeMap<i64, Cohort>,
    pub first_day: Option<i64>,
}

impl DormantFleet {
    /// Count a project first seen on `first_day`, active in `months`, with more than one exec
    /// execution when `multi`.
    pub fn add(&mut self, first_day: i64, months: &[i64], multi: bool) {
        self.first_day = Some(self.first_day.map_or(first_day, |d| d.min(first_day)));
        let entry = self
            .cohorts
            .entry(calendar::month_of(first_day))
            .or_default();
        entry.0 += 1;
        for &m in months {
            *entry.1.entry(m).or_default() += 1;
            if multi {
                *entry.2.entry(m).or_default() += 1;
            }
        }
    }

    /// Take back a project [`DormantFleet::add`] counted: what is left is what adding the others
    /// alone gives (counts that fall to zero are removed), apart from `first_day`, which the caller
    /// sets.
    pub fn remove(&mut self, first_day: i64, months: &[i64], multi: bool) {
        use std::collections::btree_map::Entry;
        let cohort = calendar::month_of(first_day);
        let Some(entry) = self.cohorts.get_mut(&cohort) else {
            return;
        };
        entry.0 = entry.0.saturating_sub(1);
        let take_one = |counts: &mut std::collections::BTreeMap<i64, u64>, m: i64| {
            if let Entry::Occupied(mut n) = counts.entry(m) {
                *n.get_mut() = n.get().saturating_sub(1);
                if *n.get() == 0 {
                    n.remove();
                }
            }
        };
        for &m in months {
            take_one(&mut entry.1, m);
            if multi {
                take_one(&mut entry.2, m);
            }
        }
        if entry.0 == 0 && entry.1.is_empty() && entry.2.is_empty() {
            self.cohorts.remove(&cohort);
        }
    }
}

/// The per-project rows an incremental run re-emits (`crate::changes` holds the whole rule): a
/// project's rows depend only on its own executions and on as_of, so an untouched project needs
/// only its rows of new days and of months as_of has just completed, and its project row while it
/// was active at the previous as_of.
#[derive(Debug, Clone, Default)]
pub struct ProjectScope {
    /// Projects that new events touched.
    pub touched: FastSet<String>,
    /// Projects whose source or first event changed: all their rows.
    pub rewritten: FastSet<String>,
    /// First day of the day rows that can be re-emitted.
    pub from: i64,
    /// The previous run's as_of: later days are new.
    pub previous_as_of: i64,
    /// First and last day of the months complete at as_of but not at the previous as_of.
    pub completed: Option<(i64, i64)>,
    /// Period rows before this day come from summarised history and are never re-emitted.
    pub exact_from: Option<i64>,
}

/// The day rows of one project an incremental run re-emits ([`ProjectScope::days_of`]).
#[derive(Debug, Clone, Copy)]
pub struct DayScope {
    every_day: bool,
    /// No earlier day row is re-emitted.
    first: i64,
    touched: bool,
    from: i64,
    previous_as_of: i64,
    completed: Option<(i64, i64)>,
}

impl DayScope {
    /// No earlier day row is re-emitted.
    pub fn first_day(&self) -> i64 {
        self.first
    }

    /// Whether the day row of `day` is re-emitted.
    pub fn keeps(&self, day: i64) -> bool {
        self.every_day
            || (day >= self.from
                && (day > self.previous_as_of
                    || self
                        .completed
                        .is_some_and(|(first, last)| (first..=last).contains(&day))
                    || self.touched))
    }
}

impl ProjectScope {
    /// Whether the project's day row of `day` is re-emitted.
    pub fn keeps_day(&self, project: &str, day: i64) -> bool {
        self.days_of(project).keeps(day)
    }

    /// Which day rows of the project are re-emitted (looked up once for all its days).
    pub fn days_of(&self, project: &str) -> DayScope {
        DayScope {
            every_day: self.rewritten.contains(project),
            first: self.first_month_day(project),
            touched: self.touched.contains(project),
            from: self.from,
            previous_as_of: self.previous_as_of,
            completed: self.completed,
        }
    }

    /// The first day of the project's day and month rows that can be re-emitted.
    pub fn first_month_day(&self, project: &str) -> i64 {
        let from = if self.rewritten.contains(project) {
            i64::MIN
        } else {
            self.from
        };
        from.max(self.exact_from.unwrap_or(i64::MIN))
    }

    /// The first day of the fleet-wide period rows that can be re-emitted: none before `from`
    /// unless a project was rewritten (then every row), and none before `exact_from`.
    pub fn fleet_from(&self) -> Option<i64> {
        let from = if self.rewritten.is_empty() {
            Some(self.from)
        } else {
            None
        };
        from.max(self.exact_from)
    }

    /// Whether the project's row of the month starting on `month_first_day` is re-emitted.
    pub fn keeps_month(&self, project: &str, month_first_day: i64) -> bool {
        month_first_day >= self.first_month_day(project)
    }

    /// Whether the project's row is re-emitted, given its last active day.
    pub fn keeps_project(&self, project: &str, last_active_day: Option<i64>) -> bool {
        self.touched.contains(project) || last_active_day.is_some_and(|d| d >= self.previous_as_of)
    }
}

impl<'a> Model<'a> {
    /// The day a model of these facts is computed as of: `as_of`, or the day of the newest event.
    /// Known before the model is built, so that the state can be written beside it.
    pub fn as_of_day(facts: &Facts, as_of: Option<i64>) -> i64 {
        as_of.or(facts.newest_event_ms.map(day_of)).unwrap_or(0)
    }

    /// Build the model. `as_of` defaults to the day of the newest event.
    pub fn new(facts: &'a Facts, as_of: Option<i64>) -> Self {
        let as_of = Self::as_of_day(facts, as_of);
        let end_ms = (as_of + 1) * DAY_MS;
        let counted: Vec<&Execution> = facts
            .executions
            .iter()
            .filter(|x| x.started_ms < end_ms)
            .collect();
        let mut qualifying: Vec<Vec<i64>> = vec![Vec::new(); facts.projects.len()];
        // each project's list made once at its size, rather than grown execution by execution
        let mut sizes = vec![0usize; facts.projects.len()];
        for (x, &i) in facts.executions.iter().zip(&facts.project_of) {
            if x.started_ms < end_ms
                && let Some(n) = sizes.get_mut(i as usize)
            {
                *n += 1;
            }
        }
        let mut by_project: Vec<Vec<&Execution>> =
            sizes.into_iter().map(Vec::with_capacity).collect();
        for (x, &i) in facts.executions.iter().zip(&facts.project_of) {
            let i = i as usize;
            let Some(p) = facts.projects.get(i) else {
                continue;
            };
            let day = day_of(x.started_ms);
            if x.is_exec()
                && !x.plugins.is_empty()
                && day - day_of(p.first_event_ms) >= MIN_AGE_DAYS
                && p.source != "random"
            {
                qualifying[i].push(day);
            }
            if x.started_ms < end_ms {
                by_project[i].push(x);
            }
        }
        let mut projects = Vec::new();
        for ((p, executions), mut days) in facts.projects.iter().zip(by_project).zip(qualifying) {
            if executions.is_empty() {
                continue;
            }
            days.sort_unstable();
            days.dedup();
            projects.push(ProjectActivity {
                project: p,
                first_day: day_of(p.first_event_ms),
                intervals: windows_to_intervals(days, ACTIVE_WINDOW_DAYS),
                executions,
            });
        }
        let first_day = projects.iter().map(|p| p.first_day).min();
        Model {
            facts,
            as_of,
            counted,
            projects,
            first_day,
            project_scope: None,
            dormant: None,
            segments: std::sync::OnceLock::new(),
            scoped: None,
        }
    }

    /// The segments of every project month either segment-reading stream needs: from the first
    /// month `monthly_kpis` reads and each project's first month `project_monthly_segments` keeps,
    /// whichever is earlier (a month's segment depends only on that month, so each stream takes
    /// its own months from the same list).
    pub fn segments(&self) -> &[usage::Segment<'a>] {
        self.segments.get_or_init(|| {
            let monthly = active::monthly_first_day(self).unwrap_or(i64::MAX);
            let scope = self.project_scope.as_ref();
            usage::segments_from(self, |project| {
                monthly.min(scope.map_or(i64::MIN, |sc| sc.first_month_day(project)))
            })
        })
    }

    /// The projects in order, the next one's executions (those `ahead` names) fetched into cache as
    /// each is handed out, for the passes that go project by project over executions.
    pub(crate) fn projects_fetched_ahead(
        &self,
        ahead: Ahead,
    ) -> impl Iterator<Item = &ProjectActivity<'a>> {
        self.projects.iter().enumerate().map(move |(n, pa)| {
            if let Some(next) = self.projects.get(n + 1) {
                prefetch(&next.executions, ahead);
            }
            pa
        })
    }

    /// The first day of the fleet-wide series anything reads in an incremental run: rows before it
    /// come from summarised history, are never re-emitted, and health resumes after them from its
    /// carried state. `None`: every day from the first.
    pub fn series_from(&self) -> Option<i64> {
        self.project_scope.as_ref().and_then(|s| s.exact_from)
    }

    /// Limit the per-execution streams to the counted executions whose ids are in `scope`, none of
    /// which starts before `earliest_ms` (when known: the executions before it are not looked up).
    pub fn limit_executions(
        &mut self,
        scope: &FastSet<crate::normalize::ExecutionId>,
        earliest_ms: Option<i64>,
    ) {
        let first = earliest_ms.map_or(0, |ms| self.counted.partition_point(|x| x.started_ms < ms));
        let scoped = self.counted[first..]
            .iter()
            .filter(|x| scope.contains(&x.execution_id));
        self.scoped = Some(scoped.copied().collect());
    }

    /// Counted executions within the limit set by [`Model::limit_executions`], in time order.
    pub fn scoped_executions(&self) -> impl Iterator<Item = &&'a Execution> {
        match &self.scoped {
            Some(scoped) => scoped.iter(),
            None => self.counted.iter(),
        }
    }
}

/// Records of a stream, produced one at a time so that a large stream is never held whole.
pub type RecordIter<'m> = Box<dyn Iterator<Item = Value> + 'm>;

/// A KPI stream's record function.
pub type RecordsFn = for<'m, 'f> fn(&'m Model<'f>) -> RecordIter<'m>;

/// Records of a stream as JSON text, one object each, for streams too large to build a JSON tree
/// per row.
pub type JsonIter<'m> = Box<dyn Iterator<Item = String> + 'm>;

/// A KPI stream's record function yielding JSON text.
pub type JsonRecordsFn = for<'m, 'f> fn(&'m Model<'f>) -> JsonIter<'m>;

/// Divide, `None` when the denominator is zero.
pub fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Which of a project's executions a pass reads first, and so which to fetch ahead.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ahead {
    /// The first n: a pass over every execution.
    First(usize),
    /// The last n: a pass over recent months only, which starts there.
    Last(usize),
}

/// Asks the processor to bring these executions into cache: a project's executions lie apart in
/// memory (they are stored in time order), so a pass project by project waits on memory unless the
/// next ones are fetched while the current ones are counted.
fn prefetch(executions: &[&Execution], ahead: Ahead) {
    let wanted = match ahead {
        Ahead::First(n) => &executions[..n.min(executions.len())],
        Ahead::Last(n) => &executions[executions.len().saturating_sub(n)..],
    };
    #[cfg(target_arch = "x86_64")]
    for x in wanted {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: SSE is part of every x86_64 processor, and a prefetch only hints: it reads
        // nothing the program sees and faults on no address
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref::<Execution>(x).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = wanted;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dormant_project_taken_back_leaves_what_the_others_alone_add() {
        let projects: [(i64, &[i64], bool); 4] = [
            (20_100, &[660, 661, 663], true),
            (20_105, &[660], false),
            (20_140, &[661, 662], true),
            (20_300, &[666], false),
        ];
        for taken in 0..projects.len() {
            let mut all = DormantFleet::default();
            let mut others = DormantFleet::default();
            for (i, &(day, months, multi)) in projects.iter().enumerate() {
                all.add(day, months, multi);
                if i != taken {
                    others.add(day, months, multi);
                }
            }
            let (day, months, multi) = projects[taken];
            all.remove(day, months, multi);
            assert_eq!(all.cohorts, others.cohorts, "project {taken} taken back");
        }
    }

    #[test]
    fn project_scope_keeps_new_days_completed_months_and_touched_projects() {
        let scope = ProjectScope {
            touched: ["t".to_string()].into_iter().collect(),
            rewritten: ["r".to_string()].into_iter().collect(),
            from: 100,
            previous_as_of: 140,
            completed: Some((120, 130)),
            exact_from: None,
        };
        // an untouched project: only days after the previous as_of and those of completed months
        assert!(!scope.keeps_day("u", 119));
        assert!(scope.keeps_day("u", 120) && scope.keeps_day("u", 130));
        assert!(!scope.keeps_day("u", 131) && !scope.keeps_day("u", 140));
        assert!(scope.keeps_day("u", 141));
        // a touched one: every day from `from`; a rewritten one: every day
        assert!(!scope.keeps_day("t", 99) && scope.keeps_day("t", 100));
        assert!(scope.keeps_day("r", 1));
        // month rows: from the month of `from` on, every one of a rewritten project
        assert!(!scope.keeps_month("t", 99) && scope.keeps_month("u", 100));
        assert!(scope.keeps_month("r", 0));
        // project rows: touched, or active on or after the previous as_of
        assert!(scope.keeps_project("t", None));
        assert!(!scope.keeps_project("u", Some(139)) && scope.keeps_project("u", Some(140)));
        assert!(!scope.keeps_project("u", None));
        // first days of what is built: from `from`, a rewritten project's from the start
        assert_eq!(scope.first_month_day("u"), 100);
        assert_eq!(scope.first_month_day("r"), i64::MIN);
        assert_eq!(scope.days_of("r").first_day(), i64::MIN);
        // fleet rows: every one when a project was rewritten
        assert_eq!(scope.fleet_from(), None);
        let untouched = ProjectScope {
            rewritten: FastSet::default(),
            ..scope.clone()
        };
        assert_eq!(untouched.fleet_from(), Some(100));
        // none before exact_from, whatever else holds
        let exact = ProjectScope {
            exact_from: Some(110),
            ..scope
        };
        assert_eq!(exact.fleet_from(), Some(110));
        assert_eq!(exact.first_month_day("r"), 110);
        assert_eq!(exact.days_of("r").first_day(), 110);
        assert_eq!(exact.days_of("u").first_day(), 110);
    }

    #[test]
    fn windows_merge_when_touching() {
        assert_eq!(windows_to_intervals([0, 10], 28), vec![(0, 38)]);
        assert_eq!(windows_to_intervals([0, 29], 28), vec![(0, 57)]);
        assert_eq!(windows_to_intervals([0, 30], 28), vec![(0, 28), (30, 58)]);
    }
}

#[cfg(test)]
mod boundaries;
