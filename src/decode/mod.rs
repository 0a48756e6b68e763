//! Decoders: turn raw input lines into [`Event`]s, and every line or event they cannot use into a
//! [`Problem`] with a reason code. Decoders know the Snowplow and Meltano formats and nothing of KPIs.

pub mod enriched;
pub mod iglu;
pub mod selfdesc;
pub mod tp2;

use crate::event::{Event, Position};

/// Why an input line or event was skipped (or kept with a defect). The codes are stable: they are the
/// `reason` column of the `telemetry_errors` stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidUtf8,
    InvalidJson,
    InvalidEnvelope,
    InvalidPayload,
    InvalidEvent,
    UnsupportedEventType,
    InvalidBase64,
    InvalidEventJson,
    UnknownSchema,
    UnknownEvent,
    UnsupportedSchemaVersion,
    InvalidField,
    InvalidExitCode,
    MissingTimestamp,
    FutureTimestamp,
    ImplausibleTimestamp,
    MissingProjectContext,
    MissingProjectId,
    DuplicateEvent,
    LateEvent,
    UnattributedStateChange,
    LineTooLong,
    TruncatedInput,
}

impl Reason {
    /// The stable reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidEnvelope => "invalid_envelope",
            Reason::InvalidPayload => "invalid_payload",
            Reason::InvalidEvent => "invalid_event",
            Reason::UnsupportedEventType => "unsupported_event_type",
            Reason::InvalidBase64 => "invalid_base64",
            Reason::InvalidEventJson => "invalid_event_json",
            Reason::UnknownSchema => "unknown_schema",
            Reason::UnknownEvent => "unknown_event",
            Reason::UnsupportedSchemaVersion => "unsupported_schema_version",
            Reason::InvalidField => "invalid_field",
            Reason::InvalidExitCode => "invalid_exit_code",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::FutureTimestamp => "future_timestamp",
            Reason::ImplausibleTimestamp => "implausible_timestamp",
            Reason::MissingProjectContext => "missing_project_context",
            Reason::MissingProjectId => "missing_project_id",
            Reason::LateEvent => "late_event",
            Reason::DuplicateEvent => "duplicate_event",
            Reason::UnattributedStateChange => "unattributed_state_change",
            Reason::LineTooLong => "line_too_long",
            Reason::TruncatedInput => "truncated_input",
        }
    }
}

/// A defect found in the input: a skipped line or event, or an event kept with a defect.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub position: Position,
    /// Whether the problem concerns one event of a batch (else the whole line).
    pub is_event: bool,
    pub reason: Reason,
    pub message: String,
    /// Bounded excerpt of the raw input.
    pub excerpt: String,
    /// False when the event was still used (e.g. a non-integer exit code counts as missing).
    pub skipped: bool,
}

/// Maximum bytes of raw input kept in a problem's excerpt.
pub const EXCERPT_BYTES: usize = 512;

/// Cut `raw` to at most [`EXCERPT_BYTES`] bytes on a character boundary.
pub fn excerpt(raw: &str) -> String {
    if raw.len() <= EXCERPT_BYTES {
        return raw.to_string();
    }
    let mut end = EXCERPT_BYTES;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    raw[..end].to_string()
}

/// What decoding one line yields.
#[derive(Debug, Default)]
pub struct LineOutput {
    pub events: Vec<Event>,
    pub problems: Vec<Problem>,
}

impl LineOutput {
    /// Record a problem for the whole line.
    pub fn line_problem(
        &mut self,
        position: &Position,
        reason: Reason,
        message: String,
        raw: &str,
    ) {
        self.problems.push(Problem {
            position: position.clone(),
            is_event: false,
            reason,
            message,
            excerpt: excerpt(raw),
            skipped: true,
        });
    }
}

/// The input formats the tap reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Snowplow tracker payloads: POST bodies or capture envelopes, one JSON document per line.
    Tp2,
    /// Snowplow enriched events, 131 tab-separated columns.
    EnrichedTsv,
    /// Snowplow enriched events, one JSON object per line.
    EnrichedJson,
}

/// Guess the format of a file from its first non-empty line: many tabs mean enriched TSV, a JSON
/// object with enriched column names means enriched JSON, anything else is read as tp2.
pub fn detect_format(first_line: &str) -> Format {
    let t = first_line.trim_start();
    if t.starts_with('{') {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(t)
            && !m.contains_key("body")
            && !m.contains_key("e")
            && !m.contains_key("schema")
            && enriched::looks_enriched_json(&m)
        {
            return Format::EnrichedJson;
        }
        return Format::Tp2;
    }
    if first_line.matches('\t').count() >= 100 {
        return Format::EnrichedTsv;
    }
    Format::Tp2
}

/// Decode one line of a source in the given format.
pub fn decode_line(format: Format, line: &str, position: &Position) -> LineOutput {
    match format {
        Format::Tp2 => tp2::decode_line(line, position),
        Format::EnrichedTsv => enriched::decode_tsv_line(line, position),
        Format::EnrichedJson => enriched::decode_json_line(line, position),
    }
}
