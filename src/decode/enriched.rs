//! Snowplow enriched events, as a Snowplow pipeline archives them: the 131-column TSV (column order of
//! Snowplow's Analytics SDKs) and its JSON form (one object per line, the column names as keys, the
//! `contexts` / `unstruct_event` values as self-describing objects or as strings holding them).

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime};
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::selfdesc::{self, Failure, raw_str, raw_type_name};
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
    event: Option<Cow<'a, str>>,
    event_id: Option<Cow<'a, str>>,
    collector_tstamp: Option<Cow<'a, str>>,
    dvce_created_tstamp: Option<Cow<'a, str>>,
    dvce_sent_tstamp: Option<Cow<'a, str>>,
    derived_tstamp: Option<Cow<'a, str>>,
    user_ipaddress: Option<Cow<'a, str>>,
    se_category: Option<Cow<'a, str>>,
    se_label: Option<Cow<'a, str>>,
    /// JSON text of the contexts envelope.
    contexts: Option<Cow<'a, str>>,
    /// JSON text of the unstruct_event envelope.
    unstruct_event: Option<Cow<'a, str>>,
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

/// A self-describing column: a JSON object, or a string holding one; returned as JSON text.
fn selfdesc_text<'a>(name: &str, v: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, Failure> {
    match v {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) if r.get().starts_with('{') => Ok(Some(Cow::Borrowed(r.get()))),
        Some(r) if r.get().starts_with('"') => {
            Ok(raw_str(Some(r), name)?.filter(|t| !t.trim().is_empty()))
        }
        Some(r) => Err((
            Reason::InvalidField,
            format!(
                "{name}: expected an object or a JSON string, got {}",
                raw_type_name(r)
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
    let derived_ms = opt_tstamp("derived_tstamp", c.derived_tstamp.as_deref())?;
    let created_ms = opt_tstamp("dvce_created_tstamp", c.dvce_created_tstamp.as_deref())?;
    let sent_ms = opt_tstamp("dvce_sent_tstamp", c.dvce_sent_tstamp.as_deref())?;
    let collector_ms = opt_tstamp("collector_tstamp", c.collector_tstamp.as_deref())?;
    let mut kept = None;
    let kind = match (c.event.as_deref(), &c.unstruct_event) {
        (_, Some(ue)) => {
            let un = selfdesc::parse_unstruct(ue)?;
            kept = un.kept_defect;
            un.kind
        }
        (Some("struct"), None) => EventKind::Structured {
            category: c.se_category.map(Cow::into_owned),
            label: c.se_label.map(Cow::into_owned),
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
        event_id: c.event_id.map(Cow::into_owned),
        kind,
        created_ms,
        sent_ms,
        derived_ms,
        collector_ms,
        ip_hash: ip_hash(c.user_ipaddress.as_deref()),
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
    let get = |i: usize| Some(Cow::Borrowed(fields[i])).filter(|f| !f.is_empty());
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
        contexts: get(col::CONTEXTS),
        unstruct_event: get(col::UNSTRUCT_EVENT),
    };
    let result = build_event(c, pos);
    finish(result, line, pos)
}

/// The enriched columns the tap reads, left raw.
#[derive(Deserialize)]
struct EnrichedDoc<'a> {
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    collector_tstamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dvce_created_tstamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dvce_sent_tstamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    derived_tstamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_ipaddress: Option<&'a RawValue>,
    #[serde(borrow, default)]
    se_category: Option<&'a RawValue>,
    #[serde(borrow, default)]
    se_label: Option<&'a RawValue>,
    #[serde(borrow, default)]
    contexts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unstruct_event: Option<&'a RawValue>,
}

fn str_col<'a>(raw: Option<&'a RawValue>, key: &str) -> Result<Option<Cow<'a, str>>, Failure> {
    Ok(raw_str(raw, key)?.filter(|s| !s.is_empty()))
}

/// Decode one enriched JSON line.
pub fn decode_json_line(line: &str, pos: &Position) -> LineOutput {
    let text = line.trim();
    if text.is_empty() {
        return LineOutput::default();
    }
    let doc: EnrichedDoc = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(e) => {
            let mut out = LineOutput::default();
            let (reason, msg) = if e.is_data() {
                (
                    Reason::InvalidEnvelope,
                    format!("line is not an enriched event object: {e}"),
                )
            } else {
                (Reason::InvalidJson, format!("line is not JSON: {e}"))
            };
            out.line_problem(pos, reason, msg, text);
            return out;
        }
    };
    let result = (|| {
        let c = Columns {
            event: str_col(doc.event, "event")?,
            event_id: str_col(doc.event_id, "event_id")?,
            collector_tstamp: str_col(doc.collector_tstamp, "collector_tstamp")?,
            dvce_created_tstamp: str_col(doc.dvce_created_tstamp, "dvce_created_tstamp")?,
            dvce_sent_tstamp: str_col(doc.dvce_sent_tstamp, "dvce_sent_tstamp")?,
            derived_tstamp: str_col(doc.derived_tstamp, "derived_tstamp")?,
            user_ipaddress: str_col(doc.user_ipaddress, "user_ipaddress")?,
            se_category: str_col(doc.se_category, "se_category")?,
            se_label: str_col(doc.se_label, "se_label")?,
            contexts: selfdesc_text("contexts", doc.contexts)?,
            unstruct_event: selfdesc_text("unstruct_event", doc.unstruct_event)?,
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
