//! Snowplow tracker protocol 2 (tp2) payloads, as a collector stores them: one JSON document per line,
//! either the POST body (`payload_data`), a capture envelope whose `body` is that POST body (or whose
//! `query` holds one `GET /i` event), or a bare event object.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::selfdesc::{self, Failure, raw_str, raw_type_name};
use super::{LineOutput, Problem, Reason, excerpt, iglu};
use crate::event::{Event, EventKind, Position};

/// Events this far after their reference time (collector time, else device sent time) are rejected.
pub const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;
/// Events before this instant (2018-01-01T00:00:00Z, before Meltano telemetry existed) are rejected.
pub const MIN_PLAUSIBLE_MS: i64 = 1_514_764_800_000;

/// The top level of a line: a capture envelope, a payload, or a bare event (fields left raw).
#[derive(Deserialize)]
struct LineDoc<'a> {
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
    #[serde(borrow, default)]
    query: Option<&'a RawValue>,
    #[serde(borrow, default)]
    received_at: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<&'a RawValue>,
    #[serde(borrow, default)]
    headers: Option<&'a RawValue>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    e: Option<&'a RawValue>,
}

/// A tp2 payload: `{"schema": ".../payload_data/...", "data": [event, ...]}`.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// The usual line, a capture envelope whose body is a payload object, read in one pass down to the
/// events; any other shape takes the general path through [`LineDoc`].
#[derive(Deserialize)]
struct CaptureLine<'a> {
    #[serde(borrow)]
    body: CaptureBody<'a>,
    #[serde(borrow, default)]
    received_at: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CaptureBody<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Vec<TrackerEvent<'a>>,
}

/// The tracker fields the tap reads (every value a string on the wire).
#[derive(Deserialize)]
pub struct TrackerEvent<'a> {
    #[serde(borrow, default)]
    e: Option<&'a RawValue>,
    #[serde(borrow, default)]
    eid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dtm: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stm: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ue_px: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ue_pr: Option<&'a RawValue>,
    #[serde(borrow, default)]
    cx: Option<&'a RawValue>,
    #[serde(borrow, default)]
    co: Option<&'a RawValue>,
    #[serde(borrow, default)]
    se_ca: Option<&'a RawValue>,
    #[serde(borrow, default)]
    se_la: Option<&'a RawValue>,
}

/// Decode one line.
pub fn decode_line(line: &str, position: &Position) -> LineOutput {
    let mut out = LineOutput::default();
    let text = line.trim();
    if text.is_empty() {
        return out;
    }
    if let Ok(capture) = serde_json::from_str::<CaptureLine>(text)
        && let Ok(collector_ms) = collector_time(capture.received_at)
        && is_payload_schema(capture.body.schema)
        && decode_clean_events(&capture.body.data, collector_ms, position, &mut out)
    {
        return out;
    }
    // a defect is reported with the text of the event it is in: the line is read again, part by part
    out.events.clear();
    let doc: LineDoc = match serde_json::from_str(text) {
        Ok(d) => d,
        Err(e) if e.is_data() => {
            out.line_problem(
                position,
                Reason::InvalidEnvelope,
                format!("line is not a JSON object: {e}"),
                text,
            );
            return out;
        }
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
    let is_envelope = doc.body.is_some()
        || doc.query.is_some()
        || doc.received_at.is_some()
        || doc.method.is_some()
        || doc.headers.is_some();
    if is_envelope {
        decode_envelope(&doc, text, position, &mut out);
    } else if doc.schema.is_some() {
        decode_payload(text, None, text, position, &mut out);
    } else if doc.e.is_some() {
        decode_raw_event(text, None, position, &mut out);
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

/// The collector time of a capture: RFC 3339, a naive UTC date-time, or epoch seconds / milliseconds.
fn collector_time(raw: Option<&RawValue>) -> Result<Option<i64>, String> {
    let Some(r) = raw.filter(|r| r.get() != "null") else {
        return Ok(None);
    };
    if let Ok(n) = r.get().parse::<f64>() {
        let ms = if n.abs() > 1e11 { n } else { n * 1000.0 };
        return Ok(Some(ms as i64));
    }
    let text = raw_str(Some(r), "received_at")
        .map_err(|(_, m)| m)?
        .unwrap_or_default();
    super::enriched::parse_tstamp("received_at", &text)
        .map(Some)
        .map_err(|(_, m)| m)
}

fn decode_envelope(doc: &LineDoc, raw: &str, position: &Position, out: &mut LineOutput) {
    let collector_ms = match collector_time(doc.received_at) {
        Ok(t) => t,
        Err(msg) => {
            out.line_problem(position, Reason::InvalidEnvelope, msg, raw);
            return;
        }
    };
    match doc.body {
        Some(b) if b.get().starts_with('{') => {
            decode_payload(b.get(), collector_ms, raw, position, out);
            return;
        }
        Some(b) if b.get().starts_with('"') => {
            if let Ok(Some(text)) = raw_str(Some(b), "body")
                && !text.trim().is_empty()
            {
                decode_payload(&text, collector_ms, raw, position, out);
                return;
            }
        }
        None => {}
        Some(b) if b.get() == "null" => {}
        Some(b) => {
            let msg = format!("body: expected an object, got {}", raw_type_name(b));
            out.line_problem(position, Reason::InvalidEnvelope, msg, raw);
            return;
        }
    }
    match doc.query {
        Some(q) if q.get().starts_with('{') => {
            decode_raw_event(q.get(), collector_ms, position, out)
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
    body: &str,
    collector_ms: Option<i64>,
    raw: &str,
    position: &Position,
    out: &mut LineOutput,
) {
    let payload: Payload = match serde_json::from_str(body) {
        Ok(p) => p,
        Err(e) if e.is_data() => {
            out.line_problem(
                position,
                Reason::InvalidEnvelope,
                format!("body is not a JSON object: {e}"),
                raw,
            );
            return;
        }
        Err(e) => {
            out.line_problem(
                position,
                Reason::InvalidJson,
                format!("body is not JSON: {e}"),
                raw,
            );
            return;
        }
    };
    if !is_payload_schema(payload.schema) {
        let schema = raw_str(payload.schema, "schema")
            .ok()
            .flatten()
            .unwrap_or_default();
        let msg = format!("not a payload_data body (schema {schema:?})");
        out.line_problem(position, Reason::UnknownSchema, msg, raw);
        return;
    }
    let events: Vec<&RawValue> = match payload.data.map(|d| serde_json::from_str(d.get())) {
        Some(Ok(v)) => v,
        _ => {
            out.line_problem(
                position,
                Reason::InvalidPayload,
                "payload data is not an array".into(),
                raw,
            );
            return;
        }
    };
    decode_events(&events, collector_ms, position, out);
}

/// Whether a payload's schema is Snowplow's `payload_data`.
fn is_payload_schema(schema: Option<&RawValue>) -> bool {
    let schema = raw_str(schema, "schema").ok().flatten().unwrap_or_default();
    iglu::parse(&schema).is_some_and(|s| s.vendor == iglu::SNOWPLOW && s.name == "payload_data")
}

fn decode_events(
    events: &[&RawValue],
    collector_ms: Option<i64>,
    position: &Position,
    out: &mut LineOutput,
) {
    for (index, item) in events.iter().enumerate() {
        let pos = Position {
            index: index as u32,
            ..position.clone()
        };
        decode_raw_event(item.get(), collector_ms, &pos, out);
    }
}

/// Decode the events of the usual line, read in one pass: true when every one decoded without a
/// defect (otherwise what was decoded is to be dropped, and the line read part by part).
fn decode_clean_events(
    events: &[TrackerEvent],
    collector_ms: Option<i64>,
    position: &Position,
    out: &mut LineOutput,
) -> bool {
    for (index, ev) in events.iter().enumerate() {
        let pos = Position {
            index: index as u32,
            ..position.clone()
        };
        match decode_event(ev, collector_ms, &pos) {
            Ok((event, None)) => out.events.push(event),
            _ => return false,
        }
    }
    true
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

fn decode_raw_event(raw: &str, collector_ms: Option<i64>, pos: &Position, out: &mut LineOutput) {
    let parsed = if raw.starts_with('{') {
        serde_json::from_str::<TrackerEvent>(raw)
            .map_err(|e| (Reason::InvalidEvent, format!("event: {e}")))
    } else {
        Err((Reason::InvalidEvent, "event is not an object".to_string()))
    };
    match parsed.and_then(|ev| decode_event(&ev, collector_ms, pos)) {
        Ok((event, kept)) => {
            if let Some(defect) = kept {
                push_event_problem(out, pos, defect, raw, false);
            }
            out.events.push(event);
        }
        Err(failure) => push_event_problem(out, pos, failure, raw, true),
    }
}

/// A tracker field: a string, or a one-string list (query parameters as some capture tools store them).
fn tracker_str<'a>(raw: Option<&'a RawValue>, key: &str) -> Result<Option<Cow<'a, str>>, Failure> {
    match raw {
        Some(r) if r.get().starts_with('[') => {
            match serde_json::from_str::<Vec<Cow<'a, str>>>(r.get()) {
                Ok(mut items) if items.len() == 1 => Ok(items.pop()),
                _ => Err((
                    Reason::InvalidField,
                    format!("{key}: expected a string, got array"),
                )),
            }
        }
        other => raw_str(other, key),
    }
}

fn epoch_ms(raw: Option<&RawValue>, key: &str) -> Result<Option<i64>, Failure> {
    match tracker_str(raw, key)? {
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

/// Decode one tracker event.
pub fn decode_event(
    ev: &TrackerEvent,
    collector_ms: Option<i64>,
    pos: &Position,
) -> Result<(Event, Option<Failure>), Failure> {
    let e =
        tracker_str(ev.e, "e")?.ok_or((Reason::InvalidEvent, "event has no `e`".to_string()))?;
    let event_id = tracker_str(ev.eid, "eid")?.map(Cow::into_owned);
    let created_ms = epoch_ms(ev.dtm, "dtm")?;
    let sent_ms = epoch_ms(ev.stm, "stm")?;
    let contexts_text = match (tracker_str(ev.cx, "cx")?, tracker_str(ev.co, "co")?) {
        (Some(cx), _) => Some(Cow::Owned(selfdesc::decode_base64_text("cx", &cx)?)),
        (None, Some(co)) => Some(co),
        (None, None) => None,
    };
    let mut kept = None;
    let kind = match e.as_ref() {
        "ue" => {
            let text = match (
                tracker_str(ev.ue_px, "ue_px")?,
                tracker_str(ev.ue_pr, "ue_pr")?,
            ) {
                (Some(px), _) => Cow::Owned(selfdesc::decode_base64_text("ue_px", &px)?),
                (None, Some(pr)) => pr,
                (None, None) => {
                    return Err((
                        Reason::InvalidEvent,
                        "ue event without ue_px or ue_pr".into(),
                    ));
                }
            };
            let un = selfdesc::parse_unstruct(&text)?;
            kept = un.kept_defect;
            un.kind
        }
        "se" => EventKind::Structured {
            category: tracker_str(ev.se_ca, "se_ca")?.map(Cow::into_owned),
            label: tracker_str(ev.se_la, "se_la")?.map(Cow::into_owned),
        },
        other => {
            return Err((
                Reason::UnsupportedEventType,
                format!("event type e={other:?} is not a Meltano event"),
            ));
        }
    };
    let ctx = match &contexts_text {
        Some(text) => selfdesc::parse_contexts(text)?,
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
        has_contexts: contexts_text.is_some(),
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
    fn a_bad_event_in_a_capture_is_reported_with_its_text_and_the_others_kept() {
        let mut line: serde_json::Value =
            serde_json::from_str(REAL.lines().next().unwrap()).unwrap();
        let good = line["body"]["data"][0].clone();
        let mut bad = good.clone();
        bad["dtm"] = "soon".into();
        bad["aid"] = "bad-one".into();
        line["body"]["data"] = serde_json::json!([good, bad, good]);
        let out = decode_line(&line.to_string(), &Position::default());
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.problems.len(), 1);
        let p = &out.problems[0];
        assert_eq!((p.reason, p.position.index), (Reason::InvalidField, 1));
        assert!(p.excerpt.contains("bad-one"), "{}", p.excerpt);
        // the events kept are those the clean line gives
        line["body"]["data"] = serde_json::json!([good]);
        let clean = decode_line(&line.to_string(), &Position::default());
        assert_eq!(clean.events[0], out.events[0]);
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
    fn lenient_collector_times_and_query_lists() {
        let line: &str = REAL.lines().next().unwrap();
        let mut cap: serde_json::Value = serde_json::from_str(line).unwrap();
        for received in [
            serde_json::json!("2026-11-25 03:02:35.862880"),
            serde_json::json!(1795575755862i64),
            serde_json::json!(1795575755.862),
        ] {
            cap["received_at"] = received.clone();
            let out = decode_line(&cap.to_string(), &Position::default());
            assert!(out.problems.is_empty(), "{received}: {:?}", out.problems);
            assert_eq!(
                out.events[0].collector_ms,
                Some(1_795_575_755_862),
                "{received}"
            );
        }
        // a GET capture whose query values are one-element lists
        let ev = cap["body"]["data"][0].clone();
        let query: serde_json::Map<String, serde_json::Value> = ev
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!([v])))
            .collect();
        let get = serde_json::json!({"received_at": "2026-11-25T03:02:35+00:00", "method": "GET", "path": "/i", "query": query});
        let out = decode_line(&get.to_string(), &Position::default());
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.events.len(), 1);
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
