//! Snowplow tracker protocol 2 (tp2) payloads, as a collector stores them: one JSON document per line,
//! either the POST body (`payload_data`), a capture envelope whose `body` is that POST body (or whose
//! `query` holds one `GET /i` event), or a bare event object.

use chrono::DateTime;
use serde_json::{Map, Value};

use super::selfdesc::{self, Failure, type_name};
use super::{LineOutput, Problem, Reason, excerpt, iglu};
use crate::event::{Event, EventKind, Position};

/// Events this far after their reference time (collector time, else device sent time) are rejected.
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;
/// Events before this instant (2018-01-01T00:00:00Z, before Meltano telemetry existed) are rejected.
pub const MIN_PLAUSIBLE_MS: i64 = 1_514_764_800_000;

/// Decode one line.
pub fn decode_line(line: &str, position: &Position) -> LineOutput {
    let mut out = LineOutput::default();
    let text = line.trim();
    if text.is_empty() {
        return out;
    }
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            out.line_problem(
                position,
                Reason::InvalidJson,
                format!("line is not JSON: {e}"),
                text,
            );
            return out;
        }
    };
    let Value::Object(obj) = doc else {
        out.line_problem(
            position,
            Reason::InvalidEnvelope,
            "line is not a JSON object".into(),
            text,
        );
        return out;
    };
    let is_envelope = ["body", "query", "received_at", "method", "headers"]
        .iter()
        .any(|k| obj.contains_key(*k));
    if is_envelope {
        decode_envelope(&obj, text, position, &mut out);
    } else if obj.contains_key("schema") {
        decode_payload(&Value::Object(obj.clone()), None, text, position, &mut out);
    } else if obj.contains_key("e") {
        decode_one(&obj, None, text, position, &mut out);
    } else {
        out.line_problem(
            position,
            Reason::InvalidEnvelope,
            "neither a capture envelope, a tp2 payload nor an event".into(),
            text,
        );
    }
    out
}

fn decode_envelope(obj: &Map<String, Value>, raw: &str, position: &Position, out: &mut LineOutput) {
    let collector_ms = match obj.get("received_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(e) => {
                out.line_problem(
                    position,
                    Reason::InvalidEnvelope,
                    format!("received_at: {e}"),
                    raw,
                );
                return;
            }
        },
        Some(other) => {
            let msg = format!("received_at: expected a string, got {}", type_name(other));
            out.line_problem(position, Reason::InvalidEnvelope, msg, raw);
            return;
        }
    };
    match obj.get("body") {
        Some(Value::Object(_)) => {
            let body = obj.get("body").cloned().unwrap_or(Value::Null);
            decode_payload(&body, collector_ms, raw, position, out);
            return;
        }
        Some(Value::String(s)) if !s.trim().is_empty() => {
            match serde_json::from_str::<Value>(s) {
                Ok(body) => decode_payload(&body, collector_ms, raw, position, out),
                Err(e) => out.line_problem(
                    position,
                    Reason::InvalidJson,
                    format!("body is not JSON: {e}"),
                    raw,
                ),
            }
            return;
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(other) => {
            let msg = format!("body: expected an object, got {}", type_name(other));
            out.line_problem(position, Reason::InvalidEnvelope, msg, raw);
            return;
        }
    }
    match obj.get("query") {
        Some(Value::Object(q)) if q.contains_key("e") => {
            decode_one(q, collector_ms, raw, position, out)
        }
        _ => out.line_problem(
            position,
            Reason::InvalidEnvelope,
            "capture has neither a body nor a query event".into(),
            raw,
        ),
    }
}

fn decode_payload(
    body: &Value,
    collector_ms: Option<i64>,
    raw: &str,
    position: &Position,
    out: &mut LineOutput,
) {
    let schema = body.get("schema").and_then(Value::as_str).unwrap_or("");
    match iglu::parse(schema) {
        Some(s) if s.vendor == iglu::SNOWPLOW && s.name == "payload_data" => {}
        _ => {
            let msg = format!("not a payload_data body (schema {schema:?})");
            out.line_problem(position, Reason::UnknownSchema, msg, raw);
            return;
        }
    }
    let Some(events) = body.get("data").and_then(Value::as_array) else {
        out.line_problem(
            position,
            Reason::InvalidPayload,
            "payload data is not an array".into(),
            raw,
        );
        return;
    };
    for (index, item) in events.iter().enumerate() {
        let pos = Position {
            index: index as u32,
            ..position.clone()
        };
        match item {
            Value::Object(ev) => decode_one(ev, collector_ms, raw, &pos, out),
            other => {
                let text = other.to_string();
                push_event_problem(
                    out,
                    &pos,
                    (Reason::InvalidEvent, "event is not an object".into()),
                    &text,
                    true,
                );
            }
        }
    }
}

fn push_event_problem(
    out: &mut LineOutput,
    pos: &Position,
    failure: Failure,
    raw: &str,
    skipped: bool,
) {
    out.problems.push(Problem {
        position: pos.clone(),
        is_event: true,
        reason: failure.0,
        message: failure.1,
        excerpt: excerpt(raw),
        skipped,
    });
}

fn decode_one(
    ev: &Map<String, Value>,
    collector_ms: Option<i64>,
    raw: &str,
    pos: &Position,
    out: &mut LineOutput,
) {
    match decode_event(ev, collector_ms, pos) {
        Ok((event, kept)) => {
            if let Some(defect) = kept {
                let text = Value::Object(ev.clone()).to_string();
                push_event_problem(out, pos, defect, &text, false);
            }
            out.events.push(event);
        }
        Err(failure) => {
            let text = if ev.is_empty() {
                raw.to_string()
            } else {
                Value::Object(ev.clone()).to_string()
            };
            push_event_problem(out, pos, failure, &text, true);
        }
    }
}

fn field<'a>(ev: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, Failure> {
    match ev.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err((
            Reason::InvalidField,
            format!("{key}: expected a string, got {}", type_name(other)),
        )),
    }
}

fn epoch_ms(ev: &Map<String, Value>, key: &str) -> Result<Option<i64>, Failure> {
    match field(ev, key)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => s.trim().parse::<i64>().map(Some).map_err(|_| {
            (
                Reason::InvalidField,
                format!("{key}: not an epoch-millisecond integer: {s:?}"),
            )
        }),
    }
}

/// Decode one tracker event map (all values strings).
pub fn decode_event(
    ev: &Map<String, Value>,
    collector_ms: Option<i64>,
    pos: &Position,
) -> Result<(Event, Option<Failure>), Failure> {
    let e = field(ev, "e")?.ok_or((Reason::InvalidEvent, "event has no `e`".to_string()))?;
    let event_id = field(ev, "eid")?.map(str::to_string);
    let created_ms = epoch_ms(ev, "dtm")?;
    let sent_ms = epoch_ms(ev, "stm")?;
    let contexts = match (field(ev, "cx")?, field(ev, "co")?) {
        (Some(cx), _) => Some(selfdesc::decode_base64_json("cx", cx)?),
        (None, Some(co)) => Some(selfdesc::parse_json_text("co", co)?),
        (None, None) => None,
    };
    let mut kept = None;
    let kind = match e {
        "ue" => {
            let envelope = match (field(ev, "ue_px")?, field(ev, "ue_pr")?) {
                (Some(px), _) => selfdesc::decode_base64_json("ue_px", px)?,
                (None, Some(pr)) => selfdesc::parse_json_text("ue_pr", pr)?,
                (None, None) => {
                    return Err((
                        Reason::InvalidEvent,
                        "ue event without ue_px or ue_pr".into(),
                    ));
                }
            };
            let un = selfdesc::parse_unstruct(&envelope)?;
            kept = un.kept_defect;
            un.kind
        }
        "se" => EventKind::Structured {
            category: field(ev, "se_ca")?.map(str::to_string),
            label: field(ev, "se_la")?.map(str::to_string),
        },
        other => {
            return Err((
                Reason::UnsupportedEventType,
                format!("event type e={other:?} is not a Meltano event"),
            ));
        }
    };
    let has_contexts = contexts.is_some();
    let ctx = match &contexts {
        Some(v) => selfdesc::parse_contexts(v)?,
        None => selfdesc::Contexts::default(),
    };
    let event = Event {
        event_id,
        kind,
        created_ms,
        sent_ms,
        derived_ms: None,
        collector_ms,
        ip_hash: None,
        project: ctx.project,
        environment: ctx.environment,
        command: ctx.command,
        sub_command: ctx.sub_command,
        plugins: ctx.plugins,
        has_contexts,
        position: pos.clone(),
    };
    check_time(&event)?;
    Ok((event, kept))
}

/// Reject events without a usable time, or with a time no real client could have sent.
pub fn check_time(event: &Event) -> Result<(), Failure> {
    let Some(t) = event.time_ms() else {
        return Err((Reason::MissingTimestamp, "event has no usable time".into()));
    };
    if t < MIN_PLAUSIBLE_MS {
        return Err((
            Reason::ImplausibleTimestamp,
            format!("event time {t} ms is before 2018"),
        ));
    }
    if let Some(reference) = event.collector_ms.or(event.sent_ms)
        && t > reference + MAX_FUTURE_MS
    {
        return Err((
            Reason::FutureTimestamp,
            format!(
                "event time {t} ms is more than 24 h after its collector/sent time {reference} ms"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = include_str!("../../../shared/data/meltano-real/captures.ndjson");

    #[test]
    fn decodes_every_real_capture_line() {
        let mut events = 0;
        for (i, line) in REAL.lines().enumerate() {
            let out = decode_line(
                line,
                &Position {
                    line: i as u64 + 1,
                    ..Default::default()
                },
            );
            assert!(
                out.problems.is_empty(),
                "line {}: {:?}",
                i + 1,
                out.problems
            );
            events += out.events.len();
        }
        assert_eq!(events, 88);
    }

    #[test]
    fn bad_lines_get_reasons() {
        let pos = Position::default();
        let cases = [
            ("{not json", Reason::InvalidJson),
            ("[1,2]", Reason::InvalidEnvelope),
            (
                r#"{"schema":"iglu:x/y/jsonschema/1-0-0","data":[]}"#,
                Reason::UnknownSchema,
            ),
            (
                r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":{}}"#,
                Reason::InvalidPayload,
            ),
            (
                r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"e":"ue","ue_px":"@@","dtm":"1700000000000"}]}"#,
                Reason::InvalidBase64,
            ),
            (
                r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"e":"pv","dtm":"1700000000000"}]}"#,
                Reason::UnsupportedEventType,
            ),
            (
                r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"e":"se","dtm":17}]}"#,
                Reason::InvalidField,
            ),
            (
                r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"e":"se"}]}"#,
                Reason::MissingTimestamp,
            ),
            (
                r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"e":"se","dtm":"1000"}]}"#,
                Reason::ImplausibleTimestamp,
            ),
            (
                r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"e":"se","dtm":"1900000000000","stm":"1700000000000"}]}"#,
                Reason::FutureTimestamp,
            ),
        ];
        for (line, reason) in cases {
            let out = decode_line(line, &pos);
            assert!(out.events.is_empty(), "{line}");
            assert_eq!(out.problems.len(), 1, "{line}");
            assert_eq!(out.problems[0].reason, reason, "{line}");
        }
    }

    #[test]
    fn plain_json_forms_are_accepted() {
        let ue = r#"{\"schema\":\"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0\",\"data\":{\"schema\":\"iglu:com.meltano/cli_event/jsonschema/1-0-1\",\"data\":{\"event\":\"started\"}}}"#;
        let line = format!(
            r#"{{"e":"ue","ue_pr":"{ue}","co":"{{\"schema\":\"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1\",\"data\":[]}}","dtm":"1700000000000","eid":"x"}}"#
        );
        let out = decode_line(&line, &Position::default());
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].kind, EventKind::Cli);
        assert!(out.events[0].has_contexts);
    }
}
