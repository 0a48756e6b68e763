//! Raising alarms: evaluate every rule, warn on stderr, post new alarms to the webhook, and remember
//! which alarms were posted so that a later run does not post them again.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::webhook::Webhook;
use super::{Rule, RuleCarry, evaluate_from, period_of, record, series};
use crate::kpi::calendar::{fmt_day, month_first_day, month_of};

/// What a health pass produced.
#[derive(Debug, Default)]
pub struct HealthOutcome {
    /// `kpi_health` records.
    pub records: Vec<Value>,
    /// Alarm keys already posted, to carry in the state.
    pub alarms_sent: BTreeSet<String>,
    /// Alarms whose period is within the alert age limit.
    pub recent_alarms: usize,
    /// Alarms posted in this run.
    pub posted: usize,
    /// Alarms that could not be posted (retried next run).
    pub failed: usize,
    /// Per rule, what its evaluation carries into the snapshot period (see [`Resume`]).
    pub carries: BTreeMap<String, RuleCarry>,
}

/// Where evaluation resumes in an incremental run: periods before `from` (`YYYY-MM-DD`) are not
/// evaluated again; each rule starts from its carry; carries are taken again at `snapshot_at`.
#[derive(Debug, Default)]
pub struct Resume<'a> {
    /// Day number of the first period evaluated (a month series starts at the first whole month).
    pub from: Option<i64>,
    pub carries: Option<&'a BTreeMap<String, RuleCarry>>,
    /// Day number at which carries are taken (for a month series, the first whole month).
    pub snapshot_at: Option<i64>,
}

/// The key of a rule's carry in the state.
pub fn carry_key(rule: &Rule) -> String {
    format!("{}|{}", rule.name(), rule.kpi)
}

/// The key of an alarm in the state.
pub fn alarm_key(rule: &Rule, period: &str) -> String {
    format!("{}|{}", rule.name(), period)
}

/// Evaluate `rules` over the records of their streams (`records_of(stream)`), as of day `as_of`.
pub fn run(
    rules: &[Rule],
    records_of: &mut dyn FnMut(&str) -> Vec<Value>,
    as_of: i64,
    max_age_days: i64,
    previously_sent: &BTreeSet<String>,
    webhook: Option<&Webhook>,
    resume: &Resume,
) -> HealthOutcome {
    let oldest = fmt_day(as_of - max_age_days);
    let mut out = HealthOutcome {
        alarms_sent: previously_sent
            .iter()
            .filter(|k| k.rsplit('|').next().is_some_and(|p| *p >= *oldest))
            .cloned()
            .collect(),
        ..Default::default()
    };
    for rule in rules {
        let Some((stream, _)) = rule.series() else {
            continue;
        };
        let recs = records_of(stream);
        let mut points = series(rule, &recs);
        let month = period_of(stream).is_some_and(|(_, p)| p == "month");
        let boundary = |d: &i64| {
            if month {
                fmt_day(month_first_day(month_of(d - 1) + 1))
            } else {
                fmt_day(*d)
            }
        };
        if let Some(from) = resume.from.as_ref().map(boundary) {
            points.retain(|(p, _)| *p >= from);
        }
        let start = resume.carries.and_then(|c| c.get(&carry_key(rule)));
        let snapshot = resume.snapshot_at.as_ref().map(boundary);
        let (evaluations, carry) = evaluate_from(rule, &points, start, snapshot.as_deref());
        out.carries.insert(carry_key(rule), carry);
        for e in evaluations {
            out.records.push(record(rule, &e));
            if !e.status.is_alarm() || e.period < oldest {
                continue;
            }
            out.recent_alarms += 1;
            let key = alarm_key(rule, &e.period);
            if out.alarms_sent.contains(&key) {
                continue;
            }
            let range = format!(
                "[{}, {}]",
                e.low.map_or("-".to_string(), |v| format!("{v:.4}")),
                e.high.map_or("-".to_string(), |v| format!("{v:.4}"))
            );
            tracing::warn!(
                "health alarm: {} {} = {} is {} (expected {range}, {})",
                rule.kpi,
                e.period,
                e.value,
                e.status.as_str(),
                rule.name()
            );
            let Some(hook) = webhook else { continue };
            let body = json!({
                "text": format!(":rotating_light: tap-kpis: {} for {} is {} ({}), expected {range}", rule.kpi, e.period, e.status.as_str(), e.value),
                "rule": rule.name(),
                "kpi": rule.kpi,
                "period": e.period,
                "value": e.value,
                "low": e.low,
                "high": e.high,
                "status": e.status.as_str(),
            });
            match hook.post(&body) {
                Ok(()) => {
                    out.posted += 1;
                    out.alarms_sent.insert(key);
                }
                Err(err) => {
                    out.failed += 1;
                    tracing::warn!("{err}; the alarm is kept and posted again next run");
                }
            }
        }
    }
    out
}

/// Alarm keys from a previous state's `tap_kpis.alarms_sent` value.
pub fn sent_from_state(sent: Option<&Value>) -> BTreeSet<String> {
    sent.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
