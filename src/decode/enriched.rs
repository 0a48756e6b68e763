//! Snowplow enriched events, as a Snowplow pipeline archives them: the 131-column TSV (column order of
//! Snowplow's Analytics SDKs) and its JSON form (one object per line, the column names as keys, the
//! `contexts` / `unstruct_event` values as self-describing objects or as strings holding them).

use chrono::{DateTime, NaiveDateTime};
use md5::{Digest, Md5};
use serde_json::{Map, Value};

use super::selfdesc::{self, Failure, type_name};
use super::tp2::check_time;
use super::{LineOutput, Problem, Reason, excerpt};
use crate::event::{Event, EventKind, Position};

/// Number of columns of an enriched TSV line.
pub const TSV_COLUMNS: usize = 131;

/// Index of each column the tap reads, in the Analytics SDK order.
mod col {
    pub const COLLECTOR_TSTAMP: usize = 3;
    pub const DVCE_CREATED_TSTAMP: usize = 4;
    pub const EVENT: usize = 5;
    pub const EVENT_ID: usize = 6;
    pub const USER_IPADDRESS: usize = 13;
    pub const CONTEXTS: usize = 52;
    pub const SE_CATEGORY: usize = 53;
    pub const SE_LABEL: usize = 55;
    pub const UNSTRUCT_EVENT: usize = 58;
    pub const DVCE_SENT_TSTAMP: usize = 119;
    pub const DERIVED_TSTAMP: usize = 124;
}

/// The columns of an enriched event the tap reads, whatever the form.
#[derive(Debug, Default)]
struct Columns<'a> {
    event: Option<&'a str>,
    event_id: Option<&'a str>,
    collector_tstamp: Option<&'a str>,
    dvce_created_tstamp: Option<&'a str>,
    dvce_sent_tstamp: Option<&'a str>,
    derived_tstamp: Option<&'a str>,
    user_ipaddress: Option<&'a str>,
    se_category: Option<&'a str>,
    se_label: Option<&'a str>,
    contexts: Option<Value>,
    unstruct_event: Option<Value>,
}

/// Parse an enriched timestamp: `2024-01-02 03:04:05.678` (TSV) or RFC 3339 (JSON).
pub fn parse_tstamp(name: &str, text: &str) -> Result<i64, Failure> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_millis());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(dt.and_utc().timestamp_millis());
        }
    }
    Err((
        Reason::InvalidField,
        format!("{name}: not a timestamp: {t:?}"),
    ))
}

fn opt_tstamp(name: &str, text: Option<&str>) -> Result<Option<i64>, Failure> {
    text.map(|t| parse_tstamp(name, t)).transpose()
}

/// A self-describing column: a JSON object, or a string holding one.
fn selfdesc_value(name: &str, v: Option<&Value>) -> Result<Option<Value>, Failure> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => selfdesc::parse_json_text(name, s).map(Some),
        Some(obj @ Value::Object(_)) => Ok(Some(obj.clone())),
        Some(other) => Err((
            Reason::InvalidField,
            format!(
                "{name}: expected an object or a JSON string, got {}",
                type_name(other)
            ),
        )),
    }
}

/// Hash of the client IP, as Meltano's analytics do (MD5; `unknown` is no address).
fn ip_hash(ip: Option<&str>) -> Option<String> {
    let ip = ip?.trim();
    (!ip.is_empty() && ip != "unknown").then(|| hex::encode(Md5::digest(ip.as_bytes())))
}

fn build_event(c: Columns, pos: &Position) -> Result<(Event, Option<Failure>), Failure> {
    let derived_ms = opt_tstamp("derived_tstamp", c.derived_tstamp)?;
    let created_ms = opt_tstamp("dvce_created_tstamp", c.dvce_created_tstamp)?;
    let sent_ms = opt_tstamp("dvce_sent_tstamp", c.dvce_sent_tstamp)?;
    let collector_ms = opt_tstamp("collector_tstamp", c.collector_tstamp)?;
    let mut kept = None;
    let kind = match (c.event, &c.unstruct_event) {
        (_, Some(ue)) => {
            let un = selfdesc::parse_unstruct(ue)?;
            kept = un.kept_defect;
            un.kind
        }
        (Some("struct"), None) => EventKind::Structured {
            category: c.se_category.map(str::to_string),
            label: c.se_label.map(str::to_string),
        },
        (other, None) => {
            return Err((
                Reason::UnsupportedEventType,
                format!(
                    "enriched event {:?} is not a Meltano event",
                    other.unwrap_or("")
                ),
            ));
        }
    };
    let ctx = match &c.contexts {
        Some(v) => selfdesc::parse_contexts(v)?,
        None => selfdesc::Contexts::default(),
    };
    let event = Event {
        event_id: c.event_id.map(str::to_string),
        kind,
        created_ms,
        sent_ms,
        derived_ms,
        collector_ms,
        ip_hash: ip_hash(c.user_ipaddress),
        project: ctx.project,
        environment: ctx.environment,
        command: ctx.command,
        sub_command: ctx.sub_command,
        plugins: ctx.plugins,
        has_contexts: c.contexts.is_some(),
        position: pos.clone(),
    };
    check_time(&event)?;
    Ok((event, kept))
}

fn finish(
    result: Result<(Event, Option<Failure>), Failure>,
    raw: &str,
    pos: &Position,
) -> LineOutput {
    let mut out = LineOutput::default();
    let mut push = |f: Failure, skipped: bool| {
        out.problems.push(Problem {
            position: pos.clone(),
            is_event: false,
            reason: f.0,
            message: f.1,
            excerpt: excerpt(raw),
            skipped,
        })
    };
    match result {
        Ok((event, kept)) => {
            if let Some(defect) = kept {
                push(defect, false);
            }
            out.events.push(event);
        }
        Err(f) => push(f, true),
    }
    out
}

/// Decode one enriched TSV line.
pub fn decode_tsv_line(line: &str, pos: &Position) -> LineOutput {
    if line.trim().is_empty() {
        return LineOutput::default();
    }
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != TSV_COLUMNS {
        let mut out = LineOutput::default();
        let msg = format!(
            "expected {TSV_COLUMNS} tab-separated columns, found {}",
            fields.len()
        );
        out.line_problem(pos, Reason::InvalidEnvelope, msg, line);
        return out;
    }
    let get = |i: usize| Some(fields[i]).filter(|f| !f.is_empty());
    let result = (|| {
        let c = Columns {
            event: get(col::EVENT),
            event_id: get(col::EVENT_ID),
            collector_tstamp: get(col::COLLECTOR_TSTAMP),
            dvce_created_tstamp: get(col::DVCE_CREATED_TSTAMP),
            dvce_sent_tstamp: get(col::DVCE_SENT_TSTAMP),
            derived_tstamp: get(col::DERIVED_TSTAMP),
            user_ipaddress: get(col::USER_IPADDRESS),
            se_category: get(col::SE_CATEGORY),
            se_label: get(col::SE_LABEL),
            contexts: get(col::CONTEXTS)
                .map(|t| selfdesc::parse_json_text("contexts", t))
                .transpose()?,
            unstruct_event: get(col::UNSTRUCT_EVENT)
                .map(|t| selfdesc::parse_json_text("unstruct_event", t))
                .transpose()?,
        };
        build_event(c, pos)
    })();
    finish(result, line, pos)
}

fn str_col<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Failure> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err((
            Reason::InvalidField,
            format!("{key}: expected a string, got {}", type_name(other)),
        )),
    }
}

/// Decode one enriched JSON line.
pub fn decode_json_line(line: &str, pos: &Position) -> LineOutput {
    let text = line.trim();
    if text.is_empty() {
        return LineOutput::default();
    }
    let obj: Map<String, Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            let mut out = LineOutput::default();
            out.line_problem(
                pos,
                Reason::InvalidEnvelope,
                "line is not a JSON object".into(),
                text,
            );
            return out;
        }
        Err(e) => {
            let mut out = LineOutput::default();
            out.line_problem(
                pos,
                Reason::InvalidJson,
                format!("line is not JSON: {e}"),
                text,
            );
            return out;
        }
    };
    let result = (|| {
        let c = Columns {
            event: str_col(&obj, "event")?,
            event_id: str_col(&obj, "event_id")?,
            collector_tstamp: str_col(&obj, "collector_tstamp")?,
            dvce_created_tstamp: str_col(&obj, "dvce_created_tstamp")?,
            dvce_sent_tstamp: str_col(&obj, "dvce_sent_tstamp")?,
            derived_tstamp: str_col(&obj, "derived_tstamp")?,
            user_ipaddress: str_col(&obj, "user_ipaddress")?,
            se_category: str_col(&obj, "se_category")?,
            se_label: str_col(&obj, "se_label")?,
            contexts: selfdesc_value("contexts", obj.get("contexts"))?,
            unstruct_event: selfdesc_value("unstruct_event", obj.get("unstruct_event"))?,
        };
        build_event(c, pos)
    })();
    finish(result, text, pos)
}

/// Whether a JSON object looks like an enriched event (rather than a tp2 payload or envelope).
pub fn looks_enriched_json(obj: &Map<String, Value>) -> bool {
    obj.contains_key("event_id")
        || obj.contains_key("collector_tstamp")
        || obj.contains_key("unstruct_event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_both_forms() {
        assert_eq!(
            parse_tstamp("t", "2024-01-02 03:04:05.678").unwrap(),
            1_704_164_645_678
        );
        assert_eq!(
            parse_tstamp("t", "2024-01-02T03:04:05.678Z").unwrap(),
            1_704_164_645_678
        );
        assert_eq!(
            parse_tstamp("t", "2024-01-02 03:04:05").unwrap(),
            1_704_164_645_000
        );
        assert!(parse_tstamp("t", "yesterday").is_err());
    }

    #[test]
    fn wrong_column_count_is_reported() {
        let out = decode_tsv_line("a\tb\tc", &Position::default());
        assert_eq!(out.problems[0].reason, Reason::InvalidEnvelope);
    }

    #[test]
    fn ip_is_hashed_never_kept() {
        let h = ip_hash(Some("10.0.0.1")).unwrap();
        assert_eq!(h.len(), 32);
        assert!(!h.contains("10.0"));
        assert_eq!(ip_hash(Some("unknown")), None);
    }
}
