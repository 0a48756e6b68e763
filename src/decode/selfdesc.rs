//! Self-describing JSON shared by every input form: the `unstruct_event` envelope (`ue_px` / `ue_pr`,
//! or the enriched `unstruct_event` column) and the `contexts` envelope (`cx` / `co`, or `contexts`).

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use super::Reason;
use super::iglu::{self, MELTANO, SNOWPLOW};
use crate::event::{EnvironmentContext, EventKind, ProjectContext};

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

/// Decode a base64 field holding JSON.
pub fn decode_base64_json(field: &str, text: &str) -> Result<Value, Failure> {
    let bytes = decode_base64(text).map_err(|(r, m)| (r, format!("{field}: {m}")))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        (
            Reason::InvalidEventJson,
            format!("{field}: decoded base64 is not JSON: {e}"),
        )
    })
}

/// Parse a JSON text field (`ue_pr`, `co`, or an enriched column stored as a string).
pub fn parse_json_text(field: &str, text: &str) -> Result<Value, Failure> {
    serde_json::from_str(text)
        .map_err(|e| (Reason::InvalidEventJson, format!("{field}: not JSON: {e}")))
}

/// The event part of an `unstruct_event` envelope.
#[derive(Debug)]
pub struct Unstruct {
    pub kind: EventKind,
    /// A defect that does not skip the event (a non-integer exit code).
    pub kept_defect: Option<Failure>,
}

fn schema_and_data<'a>(v: &'a Value, what: &str) -> Result<(&'a str, &'a Value), Failure> {
    let obj = v.as_object().ok_or_else(|| {
        (
            Reason::UnknownSchema,
            format!("{what} is not a self-describing JSON object"),
        )
    })?;
    let schema = obj
        .get("schema")
        .and_then(Value::as_str)
        .ok_or_else(|| (Reason::UnknownSchema, format!("{what} has no schema")))?;
    let data = obj
        .get("data")
        .ok_or_else(|| (Reason::UnknownSchema, format!("{what} has no data")))?;
    Ok((schema, data))
}

/// Optional string field: absent or null is `None`, a string is kept, any other type is an error.
pub fn opt_str(map: &Map<String, Value>, key: &str, what: &str) -> Result<Option<String>, Failure> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err((
            Reason::InvalidField,
            format!("{what}.{key}: expected a string, got {}", type_name(other)),
        )),
    }
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

/// Parse the `unstruct_event` envelope into a Meltano event kind.
pub fn parse_unstruct(envelope: &Value) -> Result<Unstruct, Failure> {
    let (outer, inner) = schema_and_data(envelope, "unstruct_event")?;
    match iglu::parse(outer) {
        Some(s) if s.vendor == SNOWPLOW && s.name == "unstruct_event" => {}
        _ => {
            return Err((
                Reason::UnknownSchema,
                format!("not an unstruct_event envelope: {outer}"),
            ));
        }
    }
    let (uri, data) = schema_and_data(inner, "unstruct_event data")?;
    let schema = iglu::parse(uri)
        .ok_or_else(|| (Reason::UnknownSchema, format!("invalid schema URI: {uri}")))?;
    if schema.vendor != MELTANO {
        return Err((Reason::UnknownSchema, format!("not a Meltano event: {uri}")));
    }
    let known = matches!(
        schema.name,
        "cli_event" | "block_event" | "exit_event" | "telemetry_state_change_event"
    );
    if !known {
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
    let data = data.as_object().ok_or_else(|| {
        (
            Reason::InvalidField,
            format!("{}: data is not an object", schema.name),
        )
    })?;
    let mut kept_defect = None;
    let kind = match schema.name {
        "cli_event" => EventKind::Cli,
        "block_event" => EventKind::Block,
        "exit_event" => {
            let exit_code = match data.get("exit_code") {
                None | Some(Value::Null) => None,
                Some(v) => match v.as_i64() {
                    Some(code) => Some(code),
                    None => {
                        kept_defect = Some((
                            Reason::InvalidExitCode,
                            format!(
                                "exit_event.exit_code is not an integer ({v}); counted as missing"
                            ),
                        ));
                        None
                    }
                },
            };
            EventKind::Exit { exit_code }
        }
        _ => {
            let changed_to = match data.get("changed_to") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                Some(other) => {
                    return Err((
                        Reason::InvalidField,
                        format!(
                            "telemetry_state_change_event.changed_to: unexpected {}",
                            type_name(other)
                        ),
                    ));
                }
            };
            EventKind::StateChange {
                setting_name: opt_str(data, "setting_name", "telemetry_state_change_event")?,
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
    pub plugins: Vec<Map<String, Value>>,
}

fn max_opt(slot: &mut Option<String>, value: Option<String>) {
    if let Some(v) = value
        && slot.as_ref().is_none_or(|cur| v > *cur)
    {
        *slot = Some(v);
    }
}

fn parse_bool_lenient(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Parse the `contexts` envelope. Contexts of other vendors or unknown Meltano contexts are ignored.
pub fn parse_contexts(envelope: &Value) -> Result<Contexts, Failure> {
    let (outer, data) = schema_and_data(envelope, "contexts")?;
    match iglu::parse(outer) {
        Some(s) if s.vendor == SNOWPLOW && s.name == "contexts" => {}
        _ => {
            return Err((
                Reason::UnknownSchema,
                format!("not a contexts envelope: {outer}"),
            ));
        }
    }
    let items = data.as_array().ok_or_else(|| {
        (
            Reason::InvalidField,
            "contexts data is not an array".to_string(),
        )
    })?;
    let mut out = Contexts::default();
    for item in items {
        let Ok((uri, data)) = schema_and_data(item, "context") else {
            continue;
        };
        let Some(schema) = iglu::parse(uri) else {
            continue;
        };
        if schema.vendor != MELTANO || schema.major != 1 {
            continue;
        }
        let Some(data) = data.as_object() else {
            return Err((
                Reason::InvalidField,
                format!("{}: data is not an object", schema.name),
            ));
        };
        match schema.name {
            "project_context" => {
                let what = "project_context";
                out.project = Some(ProjectContext {
                    context_uuid: opt_str(data, "context_uuid", what)?,
                    project_uuid: opt_str(data, "project_uuid", what)?,
                    project_uuid_source: opt_str(data, "project_uuid_source", what)?,
                    environment_name_hash: opt_str(data, "environment_name_hash", what)?,
                });
            }
            "environment_context" => {
                let what = "environment_context";
                out.environment = Some(EnvironmentContext {
                    meltano_version: opt_str(data, "meltano_version", what)?,
                    python_version: opt_str(data, "python_version", what)?,
                    is_ci: parse_bool_lenient(data.get("is_ci_environment")),
                });
            }
            "cli_context" => {
                let what = "cli_context";
                let command = opt_str(data, "command", what)?;
                if data.contains_key("parent_command_hint") || schema.minor >= 1 {
                    let parent = opt_str(data, "parent_command_hint", what)?;
                    if let Some(cmd) = command.filter(|c| c != "cli") {
                        if parent.as_deref().is_none_or(|p| p == "cli") {
                            max_opt(&mut out.command, Some(cmd));
                        } else {
                            max_opt(&mut out.sub_command, Some(cmd));
                        }
                    }
                } else {
                    max_opt(&mut out.command, command.filter(|c| c != "cli"));
                    max_opt(&mut out.sub_command, opt_str(data, "sub_command", what)?);
                }
            }
            "plugins_context" => match data.get("plugins") {
                None | Some(Value::Null) => {}
                Some(Value::Array(plugins)) => {
                    for p in plugins {
                        match p {
                            Value::Object(m) => out.plugins.push(m.clone()),
                            other => {
                                return Err((
                                    Reason::InvalidField,
                                    format!(
                                        "plugins_context.plugins: item is {}",
                                        type_name(other)
                                    ),
                                ));
                            }
                        }
                    }
                }
                Some(other) => {
                    return Err((
                        Reason::InvalidField,
                        format!(
                            "plugins_context.plugins: expected an array, got {}",
                            type_name(other)
                        ),
                    ));
                }
            },
            _ => {}
        }
    }
    Ok(out)
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

    fn ue(uri: &str, data: Value) -> Value {
        json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
               "data": {"schema": uri, "data": data}})
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

    fn cx(items: Value) -> Value {
        json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1", "data": items})
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
}
