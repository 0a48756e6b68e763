//! A sync, end to end: sources are read and decoded, events normalised, the KPI engine run, and every
//! selected stream written as Singer messages, ending with STATE.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::catalog::{self, Selections};
use crate::config::Config;
use crate::decode::{Problem, Reason};
use crate::health::alarm;
use crate::kpi::{self, calendar};
use crate::normalize::{self, NormalizeStats};
use crate::read;
use crate::singer::SingerWriter;
use crate::source::{self, Input, SourceError};
use crate::streams::{Records, STREAMS};

/// Errors that stop a sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write Singer output: {0}")]
    Output(#[from] std::io::Error),
    #[error("strict mode: {count} bad input item(s); first: {first}")]
    Strict { count: usize, first: String },
    #[error("fail_on_alarm: {0} health alarm(s) within alert_max_age_days of as_of")]
    Alarms(usize),
}

/// What a sync did, for the end-of-run report and the tests.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub inputs: usize,
    pub bytes: u64,
    pub lines: u64,
    pub events: u64,
    pub problems_by_reason: BTreeMap<&'static str, u64>,
    pub records: BTreeMap<String, u64>,
    pub normalize: NormalizeStats,
    pub as_of: String,
    /// Alarms raised for periods within `alert_max_age_days` of as_of.
    pub recent_alarms: usize,
}

impl Reason {
    /// Whether the reason is a defect of the input (strict mode fails on these); duplicates and
    /// unattributable state changes are normal traffic that is set aside, not damage.
    pub fn is_defect(self) -> bool {
        !matches!(
            self,
            Reason::DuplicateEvent | Reason::UnattributedStateChange
        )
    }
}

/// Progress on stderr, at most every few seconds.
struct Progress {
    started: Instant,
    last: Instant,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(5);
    fn tick(&mut self, bytes: u64, events: u64) {
        if self.last.elapsed() >= Self::EVERY {
            self.last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                "progress: {:.1} MB read, {} events ({:.1} MB/s, {:.0} events/s)",
                bytes as f64 / 1e6,
                events,
                bytes as f64 / 1e6 / secs,
                events as f64 / secs
            );
        }
    }
}

/// Read and decode every input, folding the events into `normalizer`; returns the decode problems.
pub fn read_inputs(
    inputs: &[Input],
    normalizer: &mut normalize::Normalizer,
    report: &mut SyncReport,
) -> Result<Vec<Problem>, SyncError> {
    let mut problems = Vec::new();
    let mut progress = Progress {
        started: Instant::now(),
        last: Instant::now(),
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    read::read_parallel(inputs, threads, |d| {
        report.lines += d.lines;
        report.bytes += d.bytes;
        report.events += d.events.len() as u64;
        for e in d.events {
            normalizer.push(e);
        }
        problems.extend(d.problems);
        progress.tick(report.bytes, report.events);
    })?;
    report.inputs = inputs.len();
    Ok(problems)
}

/// The quarantine record of a problem.
pub fn problem_record(p: &Problem, inputs: &[Input]) -> Value {
    let source = inputs
        .get(p.position.source as usize)
        .map(|i| i.name.clone())
        .unwrap_or_default();
    let id_text = format!(
        "{}|{}|{}|{}|{}|{}",
        source,
        p.position.line,
        p.position.offset,
        if p.is_event {
            p.position.index as i64
        } else {
            -1
        },
        p.reason.as_str(),
        p.message
    );
    json!({
        "error_id": normalize::plugins::md5_hex(&id_text),
        "source": source,
        "line": (p.position.line > 0).then_some(p.position.line),
        "byte_offset": p.position.offset,
        "event_index": p.is_event.then_some(p.position.index),
        "reason": p.reason.as_str(),
        "message": p.message,
        "excerpt": p.excerpt,
        "skipped": p.skipped,
    })
}

/// Run a sync and write it to `out`.
pub fn run<W: Write>(
    config: &Config,
    selections: &Selections,
    state: Option<&Value>,
    out: W,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let mut report = SyncReport::default();
    let inputs = source::resolve(&config.sources, &config.http_options())?;
    tracing::info!("reading {} input file(s)", inputs.len());
    let mut normalizer = normalize::Normalizer::new();
    let mut problems = read_inputs(&inputs, &mut normalizer, &mut report)?;
    tracing::debug!("read done at {:.2}s", started.elapsed().as_secs_f64());
    let normalized = normalizer.finish();
    tracing::debug!("normalised at {:.2}s", started.elapsed().as_secs_f64());
    problems.extend(normalized.problems);
    problems.sort_by(|a, b| {
        (
            a.position.source,
            a.position.line,
            a.position.index,
            a.reason,
        )
            .cmp(&(
                b.position.source,
                b.position.line,
                b.position.index,
                b.reason,
            ))
    });
    report.normalize = normalized.stats;
    let facts = normalized.facts;
    let as_of = config.as_of.map(calendar::day_number);
    let model = kpi::Model::new(&facts, as_of);
    tracing::debug!("model built at {:.2}s", started.elapsed().as_secs_f64());
    report.as_of = calendar::fmt_day(model.as_of);
    tracing::info!(
        "read {} events in {:.2}s: {} executions, {} projects, as_of {}",
        report.events,
        started.elapsed().as_secs_f64(),
        facts.executions.len(),
        facts.projects.len(),
        report.as_of
    );

    let time_extracted = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let mut writer = SingerWriter::new(out, time_extracted);
    let mut cache: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut records_of = |name: &str| -> Vec<Value> {
        // only the few series health rules watch go through here
        match crate::streams::find(name) {
            Some(def) => match def.records {
                Records::Kpi(f) => cache
                    .entry(def.name)
                    .or_insert_with(|| f(&model).collect())
                    .clone(),
                _ => Vec::new(),
            },
            None => Vec::new(),
        }
    };
    let health = alarm::run(
        &config.health_rules(),
        &mut records_of,
        model.as_of,
        config.alert_max_age_days,
        &alarm::sent_from_state(state),
        config.webhook().as_ref(),
    );
    report.recent_alarms = health.recent_alarms;
    for def in STREAMS {
        let Some(selection) = selections.get(def.name) else {
            continue;
        };
        let schema = catalog::selected_schema(def, selection);
        writer.schema(def.name, &schema, &selection.key_properties)?;
        let records: Box<dyn Iterator<Item = Value>> = match def.records {
            // the health pass cached the series it watched; other streams are produced here, once
            Records::Kpi(f) => match cache.remove(def.name) {
                Some(rows) => Box::new(rows.into_iter()),
                None => f(&model),
            },
            Records::Health => Box::new(health.records.iter().cloned()),
            Records::Quarantine => Box::new(problems.iter().map(|p| problem_record(p, &inputs))),
        };
        let full = selection.properties.len() == catalog::property_count(def);
        for r in records {
            if full {
                writer.record(def.name, &r)?;
            } else {
                writer.record(def.name, &catalog::project_record(&r, selection))?;
            }
        }
        writer.metric_stream_done(def.name);
        tracing::debug!(
            "stream {} written at {:.2}s",
            def.name,
            started.elapsed().as_secs_f64()
        );
        report
            .records
            .insert(def.name.to_string(), writer.count(def.name));
    }
    for p in &problems {
        *report
            .problems_by_reason
            .entry(p.reason.as_str())
            .or_default() += 1;
    }
    let state = json!({
        "bookmarks": {},
        "tap_kpis": {"version": 1, "as_of": report.as_of, "events": report.events, "inputs": inputs.len(),
            "alarms_sent": health.alarms_sent},
    });
    writer.state(&state)?;
    writer.finish("succeeded")?;
    for (reason, n) in &report.problems_by_reason {
        tracing::warn!("skipped or flagged input: {reason}: {n}");
    }
    if report.normalize.duplicates > 0 {
        tracing::info!("duplicate events removed: {}", report.normalize.duplicates);
    }
    if config.strict {
        let defects: Vec<&Problem> = problems.iter().filter(|p| p.reason.is_defect()).collect();
        if let Some(first) = defects.first() {
            let src = inputs
                .get(first.position.source as usize)
                .map(|i| i.name.as_str())
                .unwrap_or("?");
            return Err(SyncError::Strict {
                count: defects.len(),
                first: format!(
                    "{src}:{}: {}: {}",
                    first.position.line,
                    first.reason.as_str(),
                    first.message
                ),
            });
        }
    }
    if config.fail_on_alarm && report.recent_alarms > 0 {
        return Err(SyncError::Alarms(report.recent_alarms));
    }
    Ok(report)
}
