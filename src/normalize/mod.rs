//! Normalisation: decoded events become the facts the KPI engine works on. Duplicates are removed,
//! events are grouped into executions (one Meltano process each), executions into projects, and each
//! pipeline run gets its pipeline id (kpis.md §1–§4).

pub mod plugins;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::decode::{Problem, Reason, excerpt};
use crate::event::{Event, EventKind, Position};
pub use plugins::Plugin;

/// Commands that count as executing something (kpis.md §2).
pub const EXEC_COMMANDS: [&str; 5] = ["invoke", "el", "elt", "run", "test"];
/// Commands that make a pipeline run when plugins are present (kpis.md §3).
pub const PIPELINE_COMMANDS: [&str; 3] = ["el", "elt", "run"];

/// One Meltano CLI invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub execution_id: String,
    pub project_id: String,
    pub project_id_source: Option<String>,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub command: Option<String>,
    pub sub_command: Option<String>,
    pub environment_hash: Option<String>,
    pub exit_code: Option<i64>,
    pub meltano_version: Option<String>,
    pub python_version: Option<String>,
    pub is_ci: Option<bool>,
    pub event_count: u32,
    /// Distinct plugins, in pipeline order.
    pub plugins: Vec<Plugin>,
    /// Set when the execution is a pipeline run.
    pub pipeline_id: Option<String>,
    pub ip_hashes: BTreeSet<String>,
}

impl Execution {
    /// invoke, el, elt, run or test.
    pub fn is_exec(&self) -> bool {
        self.command
            .as_deref()
            .is_some_and(|c| EXEC_COMMANDS.contains(&c))
    }
    /// Exit code 0; a missing exit code is a failure.
    pub fn is_success(&self) -> bool {
        self.exit_code == Some(0)
    }
    /// el, elt or run with at least one plugin.
    pub fn is_pipeline_run(&self) -> bool {
        self.pipeline_id.is_some()
    }
    /// First-to-last event time.
    pub fn runtime_ms(&self) -> i64 {
        self.finished_ms - self.started_ms
    }
}

/// One Meltano project, with the attributes of kpis.md §4 that do not depend on as_of.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub project_id: String,
    /// explicit, derived, random, persisted_random or UNKNOWN.
    pub source: String,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    pub is_ci_only: bool,
    pub opted_out_ms: Option<i64>,
    pub ip_hash_count: usize,
}

/// Everything the KPI engine needs, derived from the input alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Sorted by start time, then execution id.
    pub executions: Vec<Execution>,
    /// Sorted by project id.
    pub projects: Vec<Project>,
    /// Newest event time read (any kind), epoch ms.
    pub newest_event_ms: Option<i64>,
}

/// Counters of what normalisation removed, for the end-of-run report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NormalizeStats {
    pub events_in: u64,
    pub duplicates: u64,
    pub executions_without_project: u64,
    pub orphan_structured_events: u64,
}

/// The result of normalisation.
#[derive(Debug, Default)]
pub struct Normalized {
    pub facts: Facts,
    pub problems: Vec<Problem>,
    pub stats: NormalizeStats,
}

fn problem(position: &Position, reason: Reason, message: String, raw: String) -> Problem {
    Problem {
        position: position.clone(),
        is_event: true,
        reason,
        message,
        excerpt: excerpt(&raw),
        skipped: true,
    }
}

fn event_summary(e: &Event) -> String {
    format!(
        "eid={} kind={:?} dtm={:?} stm={:?}",
        e.event_id.as_deref().unwrap_or("-"),
        e.kind,
        e.created_ms,
        e.sent_ms
    )
}

/// Keep one event per event id: the latest dedup time wins, ties keep the first read.
pub fn dedup(events: Vec<Event>, problems: &mut Vec<Problem>) -> (Vec<Event>, u64) {
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<Option<Event>> = Vec::with_capacity(events.len());
    let mut duplicates = 0;
    for event in events {
        let Some(id) = event.event_id.clone() else {
            kept.push(Some(event));
            continue;
        };
        match by_id.get(&id) {
            None => {
                by_id.insert(id, kept.len());
                kept.push(Some(event));
            }
            Some(&slot) => {
                duplicates += 1;
                let current = kept[slot].as_ref().and_then(Event::dedup_ms);
                let dropped = if event.dedup_ms() > current {
                    kept[slot].replace(event)
                } else {
                    Some(event)
                };
                if let Some(d) = dropped {
                    let msg = format!(
                        "duplicate of event id {id}: a copy with a later or equal sent time is kept"
                    );
                    problems.push(problem(
                        &d.position,
                        Reason::DuplicateEvent,
                        msg,
                        event_summary(&d),
                    ));
                }
            }
        }
    }
    (kept.into_iter().flatten().collect(), duplicates)
}

#[derive(Default)]
struct ExecutionBuilder {
    first_position: Position,
    project_id: Option<String>,
    source: Option<String>,
    environment_hash: Option<String>,
    command: Option<String>,
    se_command: Option<String>,
    sub_command: Option<String>,
    exit_code: Option<i64>,
    meltano_version: Option<String>,
    python_version: Option<String>,
    is_ci: Option<bool>,
    started: i64,
    finished: i64,
    events: u32,
    plugins: BTreeMap<String, Plugin>,
    ip_hashes: BTreeSet<String>,
}

fn keep_max<T: Ord + Clone>(slot: &mut Option<T>, value: Option<&T>) {
    if let Some(v) = value
        && slot.as_ref().is_none_or(|cur| v > cur)
    {
        *slot = Some(v.clone());
    }
}

impl ExecutionBuilder {
    fn add(&mut self, e: &Event, time: i64) {
        if self.events == 0 {
            self.first_position = e.position.clone();
            self.started = time;
            self.finished = time;
        }
        self.events += 1;
        self.started = self.started.min(time);
        self.finished = self.finished.max(time);
        if let Some(p) = &e.project {
            keep_max(&mut self.project_id, p.project_uuid.as_ref());
            keep_max(&mut self.source, p.project_uuid_source.as_ref());
            keep_max(&mut self.environment_hash, p.environment_name_hash.as_ref());
        }
        if let Some(env) = &e.environment {
            keep_max(&mut self.meltano_version, env.meltano_version.as_ref());
            keep_max(&mut self.python_version, env.python_version.as_ref());
            keep_max(&mut self.is_ci, env.is_ci.as_ref());
        }
        keep_max(&mut self.command, e.command.as_ref());
        keep_max(&mut self.sub_command, e.sub_command.as_ref());
        match &e.kind {
            EventKind::Exit { exit_code } => keep_max(&mut self.exit_code, exit_code.as_ref()),
            EventKind::Structured {
                category: Some(ca), ..
            } => {
                let second = ca.split_whitespace().nth(1).map(str::to_string);
                keep_max(&mut self.se_command, second.as_ref());
            }
            _ => {}
        }
        if let Some(ip) = &e.ip_hash {
            self.ip_hashes.insert(ip.clone());
        }
        let is_block = e.kind == EventKind::Block;
        for raw in &e.plugins {
            let plugin = plugins::plugin_from_dict(raw);
            let entry = self.plugins.entry(plugin.key.clone()).or_insert(plugin);
            if is_block {
                entry.first_seen_ms = Some(entry.first_seen_ms.map_or(time, |t| t.min(time)));
            }
        }
    }

    fn build(self, execution_id: String) -> Result<Execution, (Position, u32)> {
        let Some(project_id) = self.project_id else {
            return Err((self.first_position, self.events));
        };
        let command = self.command.or(self.se_command);
        let mut plugins: Vec<Plugin> = self.plugins.into_values().collect();
        plugins::pipeline_order(&mut plugins);
        let is_pipeline = command
            .as_deref()
            .is_some_and(|c| PIPELINE_COMMANDS.contains(&c))
            && !plugins.is_empty();
        let pipeline_id = is_pipeline
            .then(|| plugins::pipeline_id(&plugins, self.environment_hash.as_deref(), &project_id));
        Ok(Execution {
            execution_id,
            project_id,
            project_id_source: self.source,
            started_ms: self.started,
            finished_ms: self.finished,
            command,
            sub_command: self.sub_command,
            environment_hash: self.environment_hash,
            exit_code: self.exit_code,
            meltano_version: self.meltano_version,
            python_version: self.python_version,
            is_ci: self.is_ci,
            event_count: self.events,
            plugins,
            pipeline_id,
            ip_hashes: self.ip_hashes,
        })
    }
}

const DAY_MS: i64 = 86_400_000;

/// Group deduplicated events into executions and projects.
pub fn normalize(events: Vec<Event>) -> Normalized {
    let mut out = Normalized::default();
    out.stats.events_in = events.len() as u64;
    let (events, duplicates) = dedup(events, &mut out.problems);
    out.stats.duplicates = duplicates;

    let mut builders: HashMap<String, ExecutionBuilder> = HashMap::new();
    let mut opt_outs: HashMap<String, i64> = HashMap::new();
    let mut structured_seen: Vec<(String, i64)> = Vec::new();
    for e in &events {
        let Some(time) = e.time_ms() else { continue };
        out.facts.newest_event_ms = Some(out.facts.newest_event_ms.map_or(time, |n| n.max(time)));
        match &e.kind {
            EventKind::StateChange {
                setting_name,
                changed_to,
            } => {
                let project = e.project.as_ref().and_then(|p| p.project_uuid.clone());
                match project {
                    Some(p) => {
                        let opts_out = setting_name.as_deref()
                            == Some("send_anonymous_usage_stats")
                            && changed_to
                                .as_deref()
                                .is_some_and(|v| v.eq_ignore_ascii_case("false"));
                        if opts_out {
                            let t = opt_outs.entry(p).or_insert(time);
                            *t = (*t).min(time);
                        }
                    }
                    None => out.problems.push(problem(
                        &e.position,
                        Reason::UnattributedStateChange,
                        "telemetry state change without a project id: it belongs to no project"
                            .into(),
                        event_summary(e),
                    )),
                }
                continue;
            }
            EventKind::Structured { label, .. } if !e.has_contexts => {
                match label {
                    Some(project) => structured_seen.push((project.clone(), time)),
                    None => out.stats.orphan_structured_events += 1,
                }
                continue;
            }
            _ => {}
        }
        let Some(exec_id) = e.project.as_ref().and_then(|p| p.context_uuid.clone()) else {
            out.problems.push(problem(
                &e.position,
                Reason::MissingProjectContext,
                "event has no project context (no execution id)".into(),
                event_summary(e),
            ));
            continue;
        };
        builders.entry(exec_id).or_default().add(e, time);
    }

    let mut executions = Vec::with_capacity(builders.len());
    for (id, b) in builders {
        match b.build(id.clone()) {
            Ok(x) => executions.push(x),
            Err((position, events)) => {
                out.stats.executions_without_project += 1;
                out.problems.push(problem(
                    &position,
                    Reason::MissingProjectId,
                    format!("execution {id} ({events} events) has no project id and is dropped"),
                    format!("execution_id={id}"),
                ));
            }
        }
    }
    executions
        .sort_by(|a, b| (a.started_ms, &a.execution_id).cmp(&(b.started_ms, &b.execution_id)));
    out.facts.projects = build_projects(&executions, &opt_outs, &structured_seen, &mut out.stats);
    out.facts.executions = executions;
    out
}

impl Facts {
    /// Facts from already-built executions (no opt-outs, no structured events): for tests and tools.
    pub fn from_executions(mut executions: Vec<Execution>) -> Facts {
        executions
            .sort_by(|a, b| (a.started_ms, &a.execution_id).cmp(&(b.started_ms, &b.execution_id)));
        let projects = build_projects(
            &executions,
            &HashMap::new(),
            &[],
            &mut NormalizeStats::default(),
        );
        let newest_event_ms = executions.iter().map(|x| x.finished_ms).max();
        Facts {
            executions,
            projects,
            newest_event_ms,
        }
    }
}

fn build_projects(
    executions: &[Execution],
    opt_outs: &HashMap<String, i64>,
    structured_seen: &[(String, i64)],
    stats: &mut NormalizeStats,
) -> Vec<Project> {
    struct Acc<'a> {
        first: i64,
        last: i64,
        source: Option<&'a str>,
        ci_only: bool,
        ips: BTreeSet<&'a str>,
    }
    let mut acc: BTreeMap<&str, Acc> = BTreeMap::new();
    // Executions are in time order, so the first non-null source of a non-init execution wins.
    for x in executions {
        let a = acc.entry(x.project_id.as_str()).or_insert(Acc {
            first: x.started_ms,
            last: x.started_ms,
            source: None,
            ci_only: true,
            ips: BTreeSet::new(),
        });
        a.first = a.first.min(x.started_ms);
        a.last = a.last.max(x.started_ms);
        if a.source.is_none() && x.command.as_deref() != Some("init") {
            a.source = x.project_id_source.as_deref();
        }
        a.ci_only &= x.is_ci == Some(true);
        a.ips.extend(x.ip_hashes.iter().map(String::as_str));
    }
    for (project, time) in structured_seen {
        match acc.get_mut(project.as_str()) {
            Some(a) => {
                a.first = a.first.min(*time);
                a.last = a.last.max(*time);
            }
            None => stats.orphan_structured_events += 1,
        }
    }
    acc.into_iter()
        .map(|(id, a)| {
            let lifespan_days = a.last.div_euclid(DAY_MS) - a.first.div_euclid(DAY_MS);
            let source = match a.source {
                Some("random") if a.ips.len() > 1 && lifespan_days > 7 => {
                    "persisted_random".to_string()
                }
                Some(s) => s.to_string(),
                None => "UNKNOWN".to_string(),
            };
            Project {
                project_id: id.to_string(),
                source,
                first_event_ms: a.first,
                last_event_ms: a.last,
                is_ci_only: a.ci_only,
                opted_out_ms: opt_outs.get(id).copied(),
                ip_hash_count: a.ips.len(),
            }
        })
        .collect()
}
