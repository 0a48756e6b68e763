//! Decoders: turn raw input lines into [`Event`]s, and every line or event they cannot use into a
//! [`Problem`] with a reason code. Decoders know the Snowplow and Meltano formats and nothing of KPIs.

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Snowplow tracker payloads: POST bodies or capture envelopes, one JSON document per line.
    Tp2,
}

/// Decode one line of a source in the given format.
pub fn decode_line(format: Format, line: &str, position: &Position) -> LineOutput {
    match format {
        Format::Tp2 => tp2::decode_line(line, position),
    }
}
