//! Health metrics (kpis.md §7): KPI series watched against an expected range, fixed or learned from
//! their own history. Evaluation is pure; raising alarms (stderr, webhook) is the caller's job.

pub mod alarm;
pub mod webhook;

use serde::Deserialize;
use serde_json::{Value, json};

/// How a rule's expected range is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `min` / `max` as configured.
    Fixed,
    /// Trailing mean ± k standard deviations of the previous `periods` values.
    Stddev,
    /// Percentage change against the previous period.
    Change,
}

/// One health rule, as configured in `health_metrics`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Rule {
    /// Name of the rule; defaults to the KPI name.
    #[serde(default)]
    pub name: Option<String>,
    /// `<stream>.<field>`, e.g. `active_projects_daily.active_projects`.
    pub kpi: String,
    pub method: Method,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default = "default_k")]
    pub k: f64,
    #[serde(default = "default_periods")]
    pub periods: usize,
    #[serde(default = "default_min_periods")]
    pub min_periods: usize,
    #[serde(default)]
    pub max_drop_pct: Option<f64>,
    #[serde(default)]
    pub max_rise_pct: Option<f64>,
    /// Which side of the range raises alarms: `low`, `high` or `both` (default).
    #[serde(default)]
    pub direction: Direction,
}

/// The side of an expected range that matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Low,
    High,
    #[default]
    Both,
}

fn default_k() -> f64 {
    3.0
}
fn default_periods() -> usize {
    28
}
fn default_min_periods() -> usize {
    14
}

impl Rule {
    /// The rule's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.kpi)
    }
    /// The stream and field of the watched series.
    pub fn series(&self) -> Option<(&str, &str)> {
        self.kpi.split_once('.')
    }
}

/// The rules used when `health_metrics` is not set: the North Star, the pipeline success rate, and the
/// monthly pipeline runs and monthly active projects.
pub fn default_rules() -> Vec<Rule> {
    let rule = |kpi: &str, method| Rule {
        name: None,
        kpi: kpi.into(),
        method,
        min: None,
        max: None,
        k: default_k(),
        periods: default_periods(),
        min_periods: default_min_periods(),
        max_drop_pct: None,
        max_rise_pct: None,
        direction: Direction::Both,
    };
    vec![
        Rule {
            direction: Direction::Low,
            ..rule("active_projects_daily.active_projects", Method::Stddev)
        },
        Rule {
            min: Some(0.5),
            ..rule("active_projects_daily.pipeline_success_rate", Method::Fixed)
        },
        Rule {
            max_drop_pct: Some(50.0),
            ..rule("monthly_kpis.pipeline_runs", Method::Change)
        },
        Rule {
            max_drop_pct: Some(25.0),
            ..rule("monthly_kpis.monthly_active_projects", Method::Change)
        },
    ]
}

/// Outcome of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Low,
    High,
    InsufficientHistory,
}

impl Status {
    /// The status code in records and alarms.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Low => "low",
            Status::High => "high",
            Status::InsufficientHistory => "insufficient_history",
        }
    }
    /// Whether the value is out of range.
    pub fn is_alarm(self) -> bool {
        matches!(self, Status::Low | Status::High)
    }
}

/// One evaluated period.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub period: String,
    pub value: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub status: Status,
}

fn classify(value: f64, low: Option<f64>, high: Option<f64>) -> Status {
    classify_in(Direction::Both, value, low, high)
}

fn classify_in(direction: Direction, value: f64, low: Option<f64>, high: Option<f64>) -> Status {
    let (low, high) = match direction {
        Direction::Low => (low, None),
        Direction::High => (None, high),
        Direction::Both => (low, high),
    };
    if low.is_some_and(|l| value < l) {
        Status::Low
    } else if high.is_some_and(|h| value > h) {
        Status::High
    } else {
        Status::Ok
    }
}

/// Evaluate a rule over a series of (period, value) in period order; periods without a value are
/// skipped and do not count as history.
pub fn evaluate(rule: &Rule, series: &[(String, Option<f64>)]) -> Vec<Evaluation> {
    evaluate_from(rule, series, None, None).0
}

/// What a rule's evaluation carries from one period to the next: the learned history and the last
/// value. The incremental state keeps it at the first period it can still recompute exactly.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RuleCarry {
    pub learned: Vec<f64>,
    pub last: Option<f64>,
}

/// [`evaluate`], starting from `start` (what came before the series), and returning what the rule
/// carries into the first period at or after `snapshot_at` (or past the end).
pub fn evaluate_from(
    rule: &Rule,
    series: &[(String, Option<f64>)],
    start: Option<&RuleCarry>,
    snapshot_at: Option<&str>,
) -> (Vec<Evaluation>, RuleCarry) {
    let values: Vec<(&String, f64)> = series
        .iter()
        .filter_map(|(p, v)| v.map(|v| (p, v)))
        .collect();
    let mut out = Vec::with_capacity(values.len());
    // the history a learned range is computed from: out-of-range values are left out, so that an
    // anomaly does not widen the range it is judged by (a week-long outage stays low all week)
    let mut learned: Vec<f64> = start.map(|c| c.learned.clone()).unwrap_or_default();
    let mut last = start.and_then(|c| c.last);
    let mut snapshot: Option<RuleCarry> = None;
    let tail = |learned: &[f64]| learned[learned.len().saturating_sub(rule.periods)..].to_vec();
    for &(period, value) in &values {
        if snapshot.is_none() && snapshot_at.is_some_and(|s| period.as_str() >= s) {
            snapshot = Some(RuleCarry {
                learned: tail(&learned),
                last,
            });
        }
        let (low, high, status) = match rule.method {
            Method::Fixed => (rule.min, rule.max, classify(value, rule.min, rule.max)),
            Method::Stddev => {
                let history = &learned[learned.len().saturating_sub(rule.periods)..];
                if history.len() < rule.min_periods.max(2) {
                    (None, None, Status::InsufficientHistory)
                } else {
                    let n = history.len() as f64;
                    let mean = history.iter().sum::<f64>() / n;
                    let var = history.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
                    let (low, high) = (mean - rule.k * var.sqrt(), mean + rule.k * var.sqrt());
                    (
                        Some(low),
                        Some(high),
                        classify(value, Some(low), Some(high)),
                    )
                }
            }
            Method::Change => match last {
                None => (None, None, Status::InsufficientHistory),
                Some(prev) => {
                    let low = rule.max_drop_pct.map(|p| prev * (1.0 - p / 100.0));
                    let high = rule.max_rise_pct.map(|p| prev * (1.0 + p / 100.0));
                    (low, high, classify(value, low, high))
                }
            },
        };
        let status = if status.is_alarm() {
            classify_in(rule.direction, value, low, high)
        } else {
            status
        };
        if !status.is_alarm() {
            learned.push(value);
        }
        last = Some(value);
        out.push(Evaluation {
            period: period.clone(),
            value,
            low,
            high,
            status,
        });
    }
    let carry = snapshot.unwrap_or_else(|| RuleCarry {
        learned: tail(&learned),
        last,
    });
    (out, carry)
}

/// The period column of a KPI stream, and its period name.
pub fn period_of(stream: &str) -> Option<(&'static str, &'static str)> {
    match stream {
        "active_projects_daily" => Some(("date", "day")),
        "monthly_kpis" => Some(("month", "month")),
        _ => None,
    }
}

/// The series a rule watches, from the records of its stream. Incomplete months are left out.
pub fn series(rule: &Rule, records: &[Value]) -> Vec<(String, Option<f64>)> {
    let Some((stream, field)) = rule.series() else {
        return Vec::new();
    };
    let Some((period_field, _)) = period_of(stream) else {
        return Vec::new();
    };
    records
        .iter()
        .filter(|r| r.get("is_complete").is_none_or(|c| c == true))
        .filter_map(|r| {
            Some((
                r.get(period_field)?.as_str()?.to_string(),
                r.get(field)?.as_f64(),
            ))
        })
        .collect()
}

/// The `kpi_health` record of an evaluation.
pub fn record(rule: &Rule, e: &Evaluation) -> Value {
    let stream = rule.series().map(|(s, _)| s).unwrap_or("");
    json!({
        "rule": rule.name(),
        "kpi": rule.kpi,
        "period": e.period,
        "period_type": period_of(stream).map(|(_, p)| p),
        "value": e.value,
        "low": e.low,
        "high": e.high,
        "status": e.status.as_str(),
        "method": match rule.method { Method::Fixed => "fixed", Method::Stddev => "stddev", Method::Change => "change" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: Method) -> Rule {
        Rule {
            method,
            direction: Direction::Both,
            ..default_rules()[0].clone()
        }
    }

    fn s(values: &[Option<f64>]) -> Vec<(String, Option<f64>)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("p{i:02}"), *v))
            .collect()
    }

    #[test]
    fn fixed_range() {
        let r = Rule {
            min: Some(1.0),
            max: Some(3.0),
            ..rule(Method::Fixed)
        };
        let st: Vec<_> = evaluate(&r, &s(&[Some(0.0), Some(1.0), Some(3.0), Some(3.5), None]))
            .into_iter()
            .map(|e| e.status)
            .collect();
        assert_eq!(st, [Status::Low, Status::Ok, Status::Ok, Status::High]);
    }

    #[test]
    fn stddev_needs_history_and_flags_outliers() {
        let r = Rule {
            periods: 4,
            min_periods: 3,
            k: 2.0,
            ..rule(Method::Stddev)
        };
        let e = evaluate(
            &r,
            &s(&[
                Some(10.0),
                Some(12.0),
                Some(8.0),
                Some(10.0),
                Some(0.0),
                Some(30.0),
            ]),
        );
        assert_eq!(e[0].status, Status::InsufficientHistory);
        assert_eq!(
            e[2].status,
            Status::InsufficientHistory,
            "two values are too few"
        );
        assert_eq!(e[3].status, Status::Ok);
        assert_eq!(e[3].low, Some(10.0 - 2.0 * 2.0));
        assert_eq!(e[4].status, Status::Low);
        assert_eq!(
            e[5].status,
            Status::High,
            "history 12, 8, 10, 0: mean 7.5, high 18"
        );
    }

    #[test]
    fn an_outage_stays_low_while_it_lasts() {
        let r = Rule {
            periods: 10,
            min_periods: 5,
            k: 3.0,
            ..rule(Method::Stddev)
        };
        let mut v: Vec<Option<f64>> = [100.0, 104.0, 98.0, 101.0, 99.0, 103.0, 97.0, 100.0]
            .iter()
            .map(|x| Some(*x))
            .collect();
        v.extend([Some(50.0), Some(52.0), Some(49.0), Some(51.0)]);
        v.extend([Some(101.0), Some(99.0)]);
        let st: Vec<Status> = evaluate(&r, &s(&v)).into_iter().map(|e| e.status).collect();
        assert_eq!(&st[8..12], [Status::Low; 4], "every outage period is low");
        assert_eq!(&st[12..], [Status::Ok; 2], "recovery is ok");
    }

    #[test]
    fn zero_variance_makes_any_change_an_alarm() {
        let r = Rule {
            periods: 5,
            min_periods: 3,
            ..rule(Method::Stddev)
        };
        let e = evaluate(
            &r,
            &s(&[Some(5.0), Some(5.0), Some(5.0), Some(5.0), Some(6.0)]),
        );
        assert_eq!(
            (e[3].low, e[3].high, e[3].status),
            (Some(5.0), Some(5.0), Status::Ok)
        );
        assert_eq!(e[4].status, Status::High);
    }

    #[test]
    fn direction_low_ignores_rises() {
        let r = Rule {
            min: Some(1.0),
            max: Some(3.0),
            direction: Direction::Low,
            ..rule(Method::Fixed)
        };
        let st: Vec<_> = evaluate(&r, &s(&[Some(0.0), Some(9.0)]))
            .into_iter()
            .map(|e| e.status)
            .collect();
        assert_eq!(st, [Status::Low, Status::Ok]);
    }

    #[test]
    fn change_against_previous_period() {
        let r = Rule {
            max_drop_pct: Some(20.0),
            max_rise_pct: Some(50.0),
            ..rule(Method::Change)
        };
        let e = evaluate(
            &r,
            &s(&[Some(100.0), Some(80.0), Some(63.0), None, Some(95.0)]),
        );
        let st: Vec<_> = e.iter().map(|e| e.status).collect();
        assert_eq!(
            st,
            [
                Status::InsufficientHistory,
                Status::Ok,
                Status::Low,
                Status::High
            ]
        );
        assert_eq!(e[1].low, Some(80.0));
    }
}
