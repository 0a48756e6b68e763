//! The decoded telemetry event: what every decoder produces and the normaliser consumes.
//!
//! It keeps only what the KPI definitions need, already typed, so that later stages never look at
//! Snowplow encodings again.

use serde_json::Value;
use serde_json::value::RawValue;

/// Where an event or a bad line came from, so that every problem can be traced back to its input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    /// Index of the source in the run's list of inputs.
    pub source: u32,
    /// 1-based line number in the decompressed input.
    pub line: u64,
    /// Byte offset of the line start in the decompressed input.
    pub offset: u64,
    /// Index of the event inside the line's batch.
    pub index: u32,
}

/// What happened, per Meltano's self-describing event schemas (or a legacy structured event).
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// `cli_event`: started, inflight, completed, skipped, failed, aborted.
    Cli,
    /// `block_event`: a block of `meltano run`; its plugins give plugin first-seen times.
    Block,
    /// `exit_event`: the process exit code (`None` when null or not an integer).
    Exit { exit_code: Option<i64> },
    /// `telemetry_state_change_event`: feeds opt-outs, never executions.
    StateChange {
        setting_name: Option<String>,
        changed_to: Option<String>,
    },
    /// Legacy structured event (`e=se`): `se_ca` like `meltano elt`, `se_la` = project id.
    Structured {
        category: Option<String>,
        label: Option<String>,
    },
}

/// The Meltano project context of an event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectContext {
    /// `context_uuid`: one per Meltano process, the execution id.
    pub context_uuid: Option<String>,
    pub project_uuid: Option<String>,
    pub project_uuid_source: Option<String>,
    pub environment_name_hash: Option<String>,
}

/// The fields of the environment context the KPIs use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvironmentContext {
    pub meltano_version: Option<String>,
    pub python_version: Option<String>,
    pub is_ci: Option<bool>,
}

/// One decoded telemetry event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: Option<String>,
    pub kind: EventKind,
    /// Device created time (`dtm` / `dvce_created_tstamp`), epoch ms.
    pub created_ms: Option<i64>,
    /// Device sent time (`stm` / `dvce_sent_tstamp`), epoch ms.
    pub sent_ms: Option<i64>,
    /// Snowplow `derived_tstamp` (enriched input only), epoch ms.
    pub derived_ms: Option<i64>,
    /// Collector receive time, epoch ms.
    pub collector_ms: Option<i64>,
    /// Hash of the client IP (enriched input only; the raw address is never kept).
    pub ip_hash: Option<String>,
    pub project: Option<ProjectContext>,
    pub environment: Option<EnvironmentContext>,
    /// Command resolved from the cli contexts of this event.
    pub command: Option<String>,
    pub sub_command: Option<String>,
    /// Plugin dicts of every plugins context of this event, in order.
    pub plugins: Vec<RawDict>,
    /// True when the event carried a contexts envelope (distinguishes pre-2.0 structured events).
    pub has_contexts: bool,
    pub position: Position,
}

impl Event {
    /// Event time per the KPI spec: `derived_tstamp`, else device created, else collector time.
    pub fn time_ms(&self) -> Option<i64> {
        self.derived_ms.or(self.created_ms).or(self.collector_ms)
    }

    /// Time used to pick the surviving copy among duplicates: derived, else sent, else created.
    pub fn dedup_ms(&self) -> Option<i64> {
        self.derived_ms.or(self.sent_ms).or(self.created_ms)
    }
}

/// A plugin dict as the JSON object text it was sent as: decoding does not build it into a tree, the
/// normaliser interns it by its text. Equal when the JSON values are equal.
#[derive(Debug, Clone)]
pub struct RawDict(pub Box<RawValue>);

impl RawDict {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawDict {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
            || serde_json::from_str::<Value>(self.get()).ok()
                == serde_json::from_str::<Value>(other.get()).ok()
    }
}
