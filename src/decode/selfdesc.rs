//! Self-describing JSON shared by every input form: the `unstruct_event` envelope (`ue_px` / `ue_pr`,
//! or the enriched `unstruct_event` column) and the `contexts` envelope (`cx` / `co`, or `contexts`).
//!
//! Parsing is typed and borrowed: only the fields the KPIs use are read, everything else is skipped
//! without building JSON trees.

use std::borrow::Cow;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::Reason;
use super::iglu::{self, MELTANO, SNOWPLOW};
use crate::event::{EnvironmentContext, EventKind, ProjectContext, RawDict};

/// A decoding failure: the reason code and a one-line detail.
pub type Failure = (Reason, String);

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

/// Decode base64 in either alphabet, padded or not.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, Failure> {
    let trimmed = text.trim();
    URL_SAFE
        .decode(trimmed)
        .or_else(|_| STANDARD.decode(trimmed))
        .map_err(|e| (Reason::InvalidBase64, format!("invalid base64: {e}")))
}

/// Decode a base64 field holding JSON text.
pub fn decode_base64_text(field: &str, text: &str) -> Result<String, Failure> {
    let bytes = decode_base64(text).map_err(|(r, m)| (r, format!("{field}: {m}")))?;
    String::from_utf8(bytes).map_err(|_| {
        (
            Reason::InvalidEventJson,
            format!("{field}: decoded base64 is not UTF-8"),
        )
    })
}

/// JSON type name for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// JSON type name of raw JSON text, from its first character.
pub fn raw_type_name(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "boolean",
        Some(b'"') => "string",
        Some(b'[') => "array",
        Some(b'{') => "object",
        _ => "number",
    }
}

/// A raw field as an optional string: null is `None`, any type other than string is an error.
pub fn raw_str<'a>(raw: Option<&'a RawValue>, what: &str) -> Result<Option<Cow<'a, str>>, Failure> {
    match raw {
        None => Ok(None),
        Some(r) if r.get() == "null" => Ok(None),
        Some(r) => serde_json::from_str::<Cow<'a, str>>(r.get())
            .map(Some)
            .map_err(|_| {
                (
                    Reason::InvalidField,
                    format!("{what}: expected a string, got {}", raw_type_name(r)),
                )
            }),
    }
}

fn owned(v: Result<Option<Cow<'_, str>>, Failure>) -> Result<Option<String>, Failure> {
    v.map(|o| o.map(Cow::into_owned))
}

/// `{"schema": ..., "data": ...}` with both parts left raw.
#[derive(Deserialize)]
struct SelfDesc<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

fn self_desc<'a>(text: &'a str, what: &str) -> Result<(Cow<'a, str>, &'a RawValue), Failure> {
    let sd: SelfDesc = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            (
                Reason::UnknownSchema,
                format!("{what} is not a self-describing JSON object"),
            )
        } else {
            (Reason::InvalidEventJson, format!("{what}: not JSON: {e}"))
        }
    })?;
    let schema = match sd.schema.map(|r| serde_json::from_str::<Cow<str>>(r.get())) {
        Some(Ok(s)) => s,
        _ => return Err((Reason::UnknownSchema, format!("{what} has no schema"))),
    };
    let data = sd
        .data
        .ok_or_else(|| (Reason::UnknownSchema, format!("{what} has no data")))?;
    Ok((schema, data))
}

/// The event part of an `unstruct_event` envelope.
#[derive(Debug)]
pub struct Unstruct {
    pub kind: EventKind,
    /// A defect that does not skip the event (a non-integer exit code).
    pub kept_defect: Option<Failure>,
}

#[derive(Deserialize)]
struct ExitData<'a> {
    #[serde(borrow, default)]
    exit_code: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StateChangeData<'a> {
    #[serde(borrow, default)]
    setting_name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    changed_to: Option<&'a RawValue>,
}

fn data_object<'a, T: Deserialize<'a>>(raw: &'a RawValue, what: &str) -> Result<T, Failure> {
    if !raw.get().starts_with('{') {
        return Err((
            Reason::InvalidField,
            format!("{what}: data is not an object"),
        ));
    }
    serde_json::from_str(raw.get()).map_err(|e| (Reason::InvalidField, format!("{what}: {e}")))
}

/// Parse the `unstruct_event` envelope (JSON text) into a Meltano event kind.
pub fn parse_unstruct(text: &str) -> Result<Unstruct, Failure> {
    let (outer, inner) = self_desc(text, "unstruct_event")?;
    match iglu::parse(&outer) {
        Some(s) if s.vendor == SNOWPLOW && s.name == "unstruct_event" => {}
        _ => {
            return Err((
                Reason::UnknownSchema,
                format!("not an unstruct_event envelope: {outer}"),
            ));
        }
    }
    let (uri, data) = self_desc(inner.get(), "unstruct_event data")?;
    let schema = iglu::parse(&uri)
        .ok_or_else(|| (Reason::UnknownSchema, format!("invalid schema URI: {uri}")))?;
    if schema.vendor != MELTANO {
        return Err((Reason::UnknownSchema, format!("not a Meltano event: {uri}")));
    }
    if !matches!(
        schema.name,
        "cli_event" | "block_event" | "exit_event" | "telemetry_state_change_event"
    ) {
        return Err((
            Reason::UnknownEvent,
            format!("unknown Meltano event: {uri}"),
        ));
    }
    if schema.major != 1 {
        return Err((
            Reason::UnsupportedSchemaVersion,
            format!("unsupported version: {uri}"),
        ));
    }
    let mut kept_defect = None;
    let kind = match schema.name {
        "cli_event" | "block_event" => {
            if !data.get().starts_with('{') {
                return Err((
                    Reason::InvalidField,
                    format!("{}: data is not an object", schema.name),
                ));
            }
            if schema.name == "cli_event" {
                EventKind::Cli
            } else {
                EventKind::Block
            }
        }
        "exit_event" => {
            let d: ExitData = data_object(data, "exit_event")?;
            let exit_code = match d.exit_code {
                None => None,
                Some(r) if r.get() == "null" => None,
                Some(r) => match r.get().parse::<i64>() {
                    Ok(code) => Some(code),
                    Err(_) => {
                        kept_defect = Some((
                            Reason::InvalidExitCode,
                            format!(
                                "exit_event.exit_code is not an integer ({}); counted as missing",
                                r.get()
                            ),
                        ));
                        None
                    }
                },
            };
            EventKind::Exit { exit_code }
        }
        _ => {
            let what = "telemetry_state_change_event";
            let d: StateChangeData = data_object(data, what)?;
            let changed_to = match d.changed_to.map(RawValue::get) {
                None | Some("null") => None,
                Some(t @ ("true" | "false")) => Some(t.to_string()),
                Some(_) => owned(raw_str(d.changed_to, &format!("{what}.changed_to")))?,
            };
            EventKind::StateChange {
                setting_name: owned(raw_str(d.setting_name, &format!("{what}.setting_name")))?,
                changed_to,
            }
        }
    };
    Ok(Unstruct { kind, kept_defect })
}

/// What the contexts of one event give.
#[derive(Debug, Default)]
pub struct Contexts {
    pub project: Option<ProjectContext>,
    pub environment: Option<EnvironmentContext>,
    pub command: Option<String>,
    pub sub_command: Option<String>,
    /// Each plugin dict as its raw JSON object text (the normaliser interns them).
    pub plugins: Vec<RawDict>,
}

fn max_opt(slot: &mut Option<String>, value: Option<Cow<'_, str>>) {
    if let Some(v) = value
        && slot.as_deref().is_none_or(|cur| *v > *cur)
    {
        *slot = Some(v.into_owned());
    }
}

#[derive(Deserialize)]
struct ProjectData<'a> {
    #[serde(borrow, default)]
    context_uuid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    project_uuid: Option<&'a RawValue>,
    #[serde(borrow, default)]
    project_uuid_source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    environment_name_hash: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct EnvironmentData<'a> {
    #[serde(borrow, default)]
    meltano_version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    python_version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_ci_environment: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CliData<'a> {
    #[serde(borrow, default)]
    command: Option<&'a RawValue>,
    #[serde(borrow, default)]
    parent_command_hint: Option<&'a RawValue>,
    #[serde(borrow, default)]
    sub_command: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PluginsData<'a> {
    #[serde(borrow, default)]
    plugins: Option<&'a RawValue>,
}

fn lenient_bool(raw: Option<&RawValue>) -> Option<bool> {
    let t = raw?.get();
    match t {
        "true" => Some(true),
        "false" => Some(false),
        _ => match serde_json::from_str::<Cow<str>>(t)
            .ok()?
            .to_ascii_lowercase()
            .as_str()
        {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
    }
}

/// The usual `contexts` envelope, read in one pass down to each context's data: a valid schema
/// string and data on every context (the contexts text is most of an event's bytes, and each pass
/// over it costs).
#[derive(Deserialize)]
struct ContextsDoc<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    data: Vec<ContextItem<'a>>,
}

#[derive(Deserialize)]
struct ContextItem<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn check_contexts_schema(outer: &str) -> Result<(), Failure> {
    match iglu::parse(outer) {
        Some(s) if s.vendor == SNOWPLOW && s.name == "contexts" => Ok(()),
        _ => Err((
            Reason::UnknownSchema,
            format!("not a contexts envelope: {outer}"),
        )),
    }
}

/// Parse the `contexts` envelope (JSON text). Contexts of other vendors or unknown Meltano contexts
/// are ignored, and so are items that are not self-describing.
pub fn parse_contexts(text: &str) -> Result<Contexts, Failure> {
    let mut out = Contexts::default();
    if let Ok(doc) = serde_json::from_str::<ContextsDoc>(text) {
        check_contexts_schema(&doc.schema)?;
        for item in &doc.data {
            add_context(&mut out, &item.schema, item.data)?;
        }
        return Ok(out);
    }
    // anything else: part by part, naming what is wrong
    let (outer, data) = self_desc(text, "contexts")?;
    check_contexts_schema(&outer)?;
    let items: Vec<&RawValue> = serde_json::from_str(data.get()).map_err(|_| {
        (
            Reason::InvalidField,
            "contexts data is not an array".to_string(),
        )
    })?;
    for item in items {
        let Ok((uri, data)) = self_desc(item.get(), "context") else {
            continue;
        };
        add_context(&mut out, &uri, data)?;
    }
    Ok(out)
}

/// Take what the KPIs use from one context.
fn add_context(out: &mut Contexts, uri: &str, data: &RawValue) -> Result<(), Failure> {
    let Some(schema) = iglu::parse(uri) else {
        return Ok(());
    };
    if schema.vendor != MELTANO || schema.major != 1 {
        return Ok(());
    }
    match schema.name {
        "project_context" => {
            let what = "project_context";
            let d: ProjectData = data_object(data, what)?;
            out.project = Some(ProjectContext {
                context_uuid: owned(raw_str(d.context_uuid, "project_context.context_uuid"))?,
                project_uuid: owned(raw_str(d.project_uuid, "project_context.project_uuid"))?,
                project_uuid_source: owned(raw_str(
                    d.project_uuid_source,
                    "project_context.project_uuid_source",
                ))?,
                environment_name_hash: owned(raw_str(
                    d.environment_name_hash,
                    "project_context.environment_name_hash",
                ))?,
            });
        }
        "environment_context" => {
            let d: EnvironmentData = data_object(data, "environment_context")?;
            out.environment = Some(EnvironmentContext {
                meltano_version: owned(raw_str(
                    d.meltano_version,
                    "environment_context.meltano_version",
                ))?,
                python_version: owned(raw_str(
                    d.python_version,
                    "environment_context.python_version",
                ))?,
                is_ci: lenient_bool(d.is_ci_environment),
            });
        }
        "cli_context" => {
            let d: CliData = data_object(data, "cli_context")?;
            let command = raw_str(d.command, "cli_context.command")?;
            if d.parent_command_hint.is_some() || schema.minor >= 1 {
                let parent = raw_str(d.parent_command_hint, "cli_context.parent_command_hint")?;
                if let Some(cmd) = command.filter(|c| c != "cli") {
                    if parent.as_deref().is_none_or(|p| p == "cli") {
                        max_opt(&mut out.command, Some(cmd));
                    } else {
                        max_opt(&mut out.sub_command, Some(cmd));
                    }
                }
            } else {
                max_opt(&mut out.command, command.filter(|c| c != "cli"));
                max_opt(
                    &mut out.sub_command,
                    raw_str(d.sub_command, "cli_context.sub_command")?,
                );
            }
        }
        "plugins_context" => {
            let d: PluginsData = data_object(data, "plugins_context")?;
            match d.plugins {
                None => {}
                Some(r) if r.get() == "null" => {}
                Some(r) => {
                    let items: Vec<&RawValue> = serde_json::from_str(r.get()).map_err(|_| {
                        (
                            Reason::InvalidField,
                            format!(
                                "plugins_context.plugins: expected an array, got {}",
                                raw_type_name(r)
                            ),
                        )
                    })?;
                    for p in items {
                        if !p.get().starts_with('{') {
                            return Err((
                                Reason::InvalidField,
                                format!("plugins_context.plugins: item is {}", raw_type_name(p)),
                            ));
                        }
                        out.plugins.push(RawDict(p.to_owned()));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_any_alphabet_and_padding() {
        let json = br#"{"a":"??>>"}"#;
        let url = base64::engine::general_purpose::URL_SAFE.encode(json);
        let std = base64::engine::general_purpose::STANDARD.encode(json);
        let nopad = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        assert_ne!(url, std);
        for text in [url, std, nopad] {
            assert_eq!(decode_base64(&text).unwrap(), json.to_vec(), "{text}");
        }
        assert_eq!(decode_base64("@@@").unwrap_err().0, Reason::InvalidBase64);
    }

    fn ue(uri: &str, data: Value) -> String {
        json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
               "data": {"schema": uri, "data": data}})
        .to_string()
    }

    #[test]
    fn exit_code_string_is_kept_as_missing() {
        let u = parse_unstruct(&ue(
            "iglu:com.meltano/exit_event/jsonschema/1-0-1",
            json!({"exit_code": "0"}),
        ))
        .unwrap();
        assert_eq!(u.kind, EventKind::Exit { exit_code: None });
        assert_eq!(u.kept_defect.unwrap().0, Reason::InvalidExitCode);
        let u = parse_unstruct(&ue(
            "iglu:com.meltano/exit_event/jsonschema/1-0-1",
            json!({"exit_code": 2}),
        ))
        .unwrap();
        assert_eq!(u.kind, EventKind::Exit { exit_code: Some(2) });
        assert!(u.kept_defect.is_none());
    }

    #[test]
    fn state_change_values() {
        let uri = "iglu:com.meltano/telemetry_state_change_event/jsonschema/1-0-0";
        for (v, want) in [
            (json!(false), Some("false")),
            (json!("false"), Some("false")),
            (json!(null), None),
        ] {
            let u = parse_unstruct(&ue(
                uri,
                json!({"setting_name": "send_anonymous_usage_stats", "changed_to": v}),
            ))
            .unwrap();
            let EventKind::StateChange { changed_to, .. } = u.kind else {
                panic!()
            };
            assert_eq!(changed_to.as_deref(), want);
        }
        let bad = parse_unstruct(&ue(uri, json!({"setting_name": 3})));
        assert_eq!(bad.unwrap_err().0, Reason::InvalidField);
    }

    #[test]
    fn later_minor_versions_accepted_other_majors_rejected() {
        let ok = parse_unstruct(&ue(
            "iglu:com.meltano/cli_event/jsonschema/1-4-7",
            json!({"event": "started"}),
        ));
        assert_eq!(ok.unwrap().kind, EventKind::Cli);
        let bad = parse_unstruct(&ue(
            "iglu:com.meltano/cli_event/jsonschema/2-0-0",
            json!({}),
        ));
        assert_eq!(bad.unwrap_err().0, Reason::UnsupportedSchemaVersion);
        let unknown = parse_unstruct(&ue(
            "iglu:com.meltano/other_event/jsonschema/1-0-0",
            json!({}),
        ));
        assert_eq!(unknown.unwrap_err().0, Reason::UnknownEvent);
        let vendor = parse_unstruct(&ue("iglu:com.acme/cli_event/jsonschema/1-0-0", json!({})));
        assert_eq!(vendor.unwrap_err().0, Reason::UnknownSchema);
    }

    fn cx(items: Value) -> String {
        json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1", "data": items}).to_string()
    }

    #[test]
    fn cli_context_new_and_legacy() {
        let new = parse_contexts(&cx(json!([
            {"schema": "iglu:com.meltano/cli_context/jsonschema/1-1-0", "data": {"command": "cli", "parent_command_hint": null, "options": {}}},
            {"schema": "iglu:com.meltano/cli_context/jsonschema/1-1-0", "data": {"command": "state", "parent_command_hint": "cli", "options": {}}},
            {"schema": "iglu:com.meltano/cli_context/jsonschema/1-1-0", "data": {"command": "list", "parent_command_hint": "state", "options": {}}}
        ])))
        .unwrap();
        assert_eq!(
            (new.command.as_deref(), new.sub_command.as_deref()),
            (Some("state"), Some("list"))
        );
        let old = parse_contexts(&cx(json!([
            {"schema": "iglu:com.meltano/cli_context/jsonschema/1-0-0", "data": {"command": "elt", "sub_command": null, "option_keys": []}}
        ])))
        .unwrap();
        assert_eq!(
            (old.command.as_deref(), old.sub_command),
            (Some("elt"), None)
        );
    }

    #[test]
    fn is_ci_accepts_strings() {
        let c = parse_contexts(&cx(json!([
            {"schema": "iglu:com.meltano/environment_context/jsonschema/1-0-0", "data": {"is_ci_environment": "True"}}
        ])))
        .unwrap();
        assert_eq!(c.environment.unwrap().is_ci, Some(true));
    }

    #[test]
    fn wrong_type_project_field_is_invalid() {
        let err = parse_contexts(&cx(json!([
            {"schema": "iglu:com.meltano/project_context/jsonschema/1-1-0", "data": {"context_uuid": 5}}
        ])))
        .unwrap_err();
        assert_eq!(err.0, Reason::InvalidField);
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let c = parse_contexts(&cx(json!([
            {"schema": "iglu:com.meltano/project_context/jsonschema/1-1-0", "data": {"project_uuid": "a\"b\u{e9}"}}
        ])))
        .unwrap();
        assert_eq!(
            c.project.unwrap().project_uuid.as_deref(),
            Some("a\"b\u{e9}")
        );
    }

    #[test]
    fn contexts_that_are_not_self_describing_are_passed_over() {
        let project = json!({"schema": "iglu:com.meltano/project_context/jsonschema/1-1-0", "data": {"project_uuid": "p", "context_uuid": "x"}});
        let env = json!({"schema": "iglu:com.meltano/environment_context/jsonschema/1-0-0", "data": {"meltano_version": "4.4.1"}});
        let clean = parse_contexts(&cx(json!([project, env]))).unwrap();
        // items without a schema string or data are skipped, the others read as before
        for odd in [
            json!(7),
            json!({"data": {}}),
            json!({"schema": null, "data": {}}),
            json!({"schema": "iglu:com.meltano/cli_context/jsonschema/1-1-0"}),
        ] {
            let c = parse_contexts(&cx(json!([project, odd, env]))).unwrap();
            assert_eq!(c.project, clean.project, "{odd}");
            assert_eq!(c.environment, clean.environment, "{odd}");
        }
        assert_eq!(clean.project.unwrap().context_uuid.as_deref(), Some("x"));
        // and an envelope that is not one of contexts says so either way
        let other = json!({"schema": "iglu:com.acme/other/jsonschema/1-0-0", "data": [project]})
            .to_string();
        assert_eq!(parse_contexts(&other).unwrap_err().0, Reason::UnknownSchema);
        let no_array = json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1", "data": {}}).to_string();
        assert_eq!(
            parse_contexts(&no_array).unwrap_err().0,
            Reason::InvalidField
        );
    }
}
