//! The tap's incremental state, carried in the Singer STATE message so that Meltano's state backend
//! keeps it (runs on ephemeral workers resume too).
//!
//! It holds a bookmark per input (fingerprint, and the byte offset and line number after the last
//! complete line read) and the normaliser's [`Carry`]: every execution folded to its parts, opt-outs and
//! structured-event sightings by project, and the ids of events recent enough to still have copies
//! arrive. The carry is compact JSON, gzip-compressed and base64-encoded in one string field. A state of
//! another version is rejected with a message, never misread.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::decode::Format;
use crate::normalize::plugins::{PluginInfo, info_from_normalised};
use crate::normalize::{Carry, ExecParts, Plugin, Variant};
use crate::source::Fingerprint;

/// Version of the state layout; a state of any other version is refused.
pub const STATE_VERSION: u64 = 2;

/// Errors reading a state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state version {found} is not supported by this tap-kpis (it reads version {STATE_VERSION}); run once with --full-refresh (no state) to rebuild it"
    )]
    Version { found: String },
    #[error("state is damaged: {0}; run once with --full-refresh (no state) to rebuild it")]
    Damaged(String),
}

/// Where reading an input stopped, and how to recognise the same content next time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputBookmark {
    /// Path or URL, as in the settings' sources.
    pub name: String,
    #[serde(flatten)]
    pub fingerprint: Fingerprint,
    /// Bytes (uncompressed) and lines read, up to the last complete line.
    pub offset: u64,
    pub lines: u64,
    #[serde(default)]
    pub format: Option<Format>,
    /// For a URL: the server's `ETag` / `Last-Modified` of what was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::source::Validators>,
}

impl InputBookmark {
    /// Where the next run resumes this input.
    pub fn mark(&self) -> crate::read::Mark {
        crate::read::Mark {
            offset: self.offset,
            lines: self.lines,
            format: self.format,
        }
    }
}

/// Everything one run hands the next.
#[derive(Debug, Clone, Default)]
pub struct TapState {
    /// as_of day number of the run that wrote the state.
    pub as_of: Option<i64>,
    /// Per project: source and first event time, to notice when new events rewrite a project's history.
    pub projects: BTreeMap<String, (String, i64)>,
    pub inputs: Vec<InputBookmark>,
    pub carry: Carry,
    /// Health alarms already sent (see `health::alarm`).
    pub alarms_sent: Value,
    /// Executions that finished before this day are summarised (see [`crate::compact`]).
    pub cut_day: Option<i64>,
    /// Per health rule, what its evaluation carries into the first period recomputed exactly from
    /// the summarised history ([`crate::compact::exact_from_day`] of `cut_day`).
    pub health: BTreeMap<String, crate::health::RuleCarry>,
}

#[derive(Serialize, Deserialize)]
struct PartsRow(
    String,
    Variant,
    i64,
    i64,
    Option<i64>,
    Vec<String>,
    Vec<(u32, Option<i64>)>,
    u32,
    u32,
    Vec<i64>,
);

#[derive(Serialize, Deserialize)]
struct Ledger {
    plugins: Vec<BTreeMap<String, Value>>,
    parts: Vec<PartsRow>,
    opt_outs: BTreeMap<String, i64>,
    structured: BTreeMap<String, (i64, i64)>,
    /// 24 bytes per event: id (16, big-endian) and event time (8, big-endian).
    ids: String,
    newest: Option<i64>,
    projects: BTreeMap<String, (String, i64)>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A row of the ledger as [`PartsRow`] reads it back, borrowed from the parts it is written from.
#[derive(Serialize)]
struct PartsRowRef<'a>(
    &'a str,
    &'a Variant,
    i64,
    i64,
    Option<i64>,
    Vec<&'a str>,
    Vec<(u32, Option<i64>)>,
    u32,
    u32,
    Vec<i64>,
);

/// The parts, serialised one row at a time (the ledger is never held as rows or as JSON text).
struct Rows<'a> {
    parts: &'a [&'a ExecParts],
    plugin_index: &'a BTreeMap<&'a str, u32>,
}

impl Serialize for Rows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.parts.iter().map(|p| {
            PartsRowRef(
                &p.execution_id,
                &p.variant,
                p.started_ms,
                p.finished_ms - p.started_ms,
                p.exit_code,
                p.ip_hashes.iter().map(String::as_str).collect(),
                p.plugins
                    .values()
                    .map(|plugin| (self.plugin_index[plugin.key()], plugin.first_seen_ms))
                    .collect(),
                p.event_count,
                p.weight,
                p.presence_months.iter().copied().collect(),
            )
        }))
    }
}

/// [`Ledger`] as written: borrowed from the carry.
#[derive(Serialize)]
struct LedgerRef<'a> {
    plugins: Vec<&'a BTreeMap<String, Value>>,
    parts: Rows<'a>,
    opt_outs: &'a BTreeMap<String, i64>,
    structured: &'a BTreeMap<String, (i64, i64)>,
    ids: String,
    newest: Option<i64>,
    projects: &'a BTreeMap<String, (String, i64)>,
}

fn encode_carry(
    carry: &Carry,
    projects: &BTreeMap<String, (String, i64)>,
) -> Result<String, StateError> {
    // a fixed order: the same history always gives the same state, and a project's rows sit together,
    // which compresses better
    let mut order: Vec<&ExecParts> = carry.parts.iter().collect();
    order.sort_unstable_by(|a, b| {
        (&a.variant.project_id, a.started_ms, &a.execution_id).cmp(&(
            &b.variant.project_id,
            b.started_ms,
            &b.execution_id,
        ))
    });
    // plugins are numbered in order of first use
    let mut plugin_index: BTreeMap<&str, u32> = BTreeMap::new();
    let mut plugins = Vec::new();
    for plugin in order.iter().flat_map(|p| p.plugins.values()) {
        if !plugin_index.contains_key(plugin.key()) {
            plugin_index.insert(plugin.key(), plugins.len() as u32);
            plugins.push(&plugin.info.dict);
        }
    }
    let mut ids = Vec::with_capacity(carry.event_ids.len() * 24);
    let mut sorted = carry.event_ids.clone();
    sorted.sort_unstable();
    for (key, time) in sorted {
        ids.extend_from_slice(&key.to_be_bytes());
        ids.extend_from_slice(&time.to_be_bytes());
    }
    let ledger = LedgerRef {
        plugins,
        parts: Rows {
            parts: &order,
            plugin_index: &plugin_index,
        },
        opt_outs: &carry.opt_outs,
        structured: &carry.structured,
        ids: b64().encode(ids),
        newest: carry.newest_event_ms,
        projects,
    };
    let damaged = |e: &dyn std::fmt::Display| StateError::Damaged(e.to_string());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    let mut json = std::io::BufWriter::new(&mut gz);
    serde_json::to_writer(&mut json, &ledger).map_err(|e| damaged(&e))?;
    json.flush().map_err(|e| damaged(&e))?;
    drop(json);
    gz.finish()
        .map(|bytes| b64().encode(bytes))
        .map_err(|e| damaged(&e))
}

type Projects = BTreeMap<String, (String, i64)>;

fn decode_carry(text: &str) -> Result<(Carry, Projects), StateError> {
    let damaged =
        |what: &str, e: &dyn std::fmt::Display| StateError::Damaged(format!("{what}: {e}"));
    let gz = b64()
        .decode(text)
        .map_err(|e| damaged("ledger is not base64", &e))?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut json)
        .map_err(|e| damaged("ledger is not gzip", &e))?;
    let ledger: Ledger = serde_json::from_slice(&json).map_err(|e| damaged("ledger layout", &e))?;
    let infos: Vec<Arc<PluginInfo>> = ledger
        .plugins
        .into_iter()
        .map(info_from_normalised)
        .collect();
    let mut parts = Vec::with_capacity(ledger.parts.len());
    for PartsRow(
        execution_id,
        variant,
        started,
        runtime,
        exit_code,
        ips,
        refs,
        events,
        weight,
        months,
    ) in ledger.parts
    {
        let mut plugins = BTreeMap::new();
        for (id, first_seen_ms) in refs {
            let info = infos
                .get(id as usize)
                .ok_or_else(|| StateError::Damaged(format!("plugin {id} is not in the state")))?;
            plugins.insert(
                info.key.clone(),
                Plugin {
                    info: info.clone(),
                    first_seen_ms,
                },
            );
        }
        parts.push(ExecParts {
            execution_id,
            variant,
            started_ms: started,
            finished_ms: started + runtime,
            exit_code,
            ip_hashes: ips.into_iter().collect(),
            plugins,
            event_count: events,
            position: Default::default(),
            weight,
            presence_months: months.into_iter().collect(),
        });
    }
    let ids = b64()
        .decode(&ledger.ids)
        .map_err(|e| damaged("event ids", &e))?;
    if ids.len() % 24 != 0 {
        return Err(StateError::Damaged("event ids are cut short".into()));
    }
    let event_ids = ids
        .chunks_exact(24)
        .map(|c| {
            let mut key = [0u8; 16];
            let mut time = [0u8; 8];
            key.copy_from_slice(&c[..16]);
            time.copy_from_slice(&c[16..]);
            (u128::from_be_bytes(key), i64::from_be_bytes(time))
        })
        .collect();
    Ok((
        Carry {
            parts,
            opt_outs: ledger.opt_outs,
            structured: ledger.structured,
            event_ids,
            newest_event_ms: ledger.newest,
        },
        ledger.projects,
    ))
}

impl TapState {
    /// Only the input bookmarks of a state (cheap: the ledger is not decoded), to find out whether
    /// anything is new before paying for the rest.
    pub fn bookmarks_of(state: &Value) -> Option<Vec<InputBookmark>> {
        let tap = state.get("tap_kpis")?;
        if tap.get("version").and_then(Value::as_u64) != Some(STATE_VERSION) {
            return None;
        }
        serde_json::from_value(tap.get("inputs")?.clone()).ok()
    }

    /// Read the tap's part of a Singer state. `Ok(None)`: no tap state in it (a first run); a state of
    /// version 1 (from before incremental runs) only carries alarms sent and is read as such.
    pub fn from_value(state: &Value) -> Result<Option<TapState>, StateError> {
        let Some(tap) = state.get("tap_kpis") else {
            return Ok(None);
        };
        let alarms_sent = tap.get("alarms_sent").cloned().unwrap_or(Value::Null);
        match tap.get("version").and_then(Value::as_u64) {
            // before incremental runs: nothing to resume from (alarms sent are read from the raw state)
            Some(1) => return Ok(None),
            Some(STATE_VERSION) => {}
            other => {
                return Err(StateError::Version {
                    found: other.map_or_else(|| tap["version"].to_string(), |v| v.to_string()),
                });
            }
        }
        let inputs: Vec<InputBookmark> =
            serde_json::from_value(tap.get("inputs").cloned().unwrap_or(Value::Array(vec![])))
                .map_err(|e| StateError::Damaged(format!("inputs: {e}")))?;
        let (carry, projects) = match tap.get("ledger").and_then(Value::as_str) {
            Some(text) => decode_carry(text)?,
            None => return Err(StateError::Damaged("no ledger".into())),
        };
        let as_of = tap
            .get("as_of")
            .and_then(Value::as_str)
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            .map(crate::kpi::calendar::day_number);
        // kept as JSON text: Singer targets read numbers in STATE as decimals they cannot write back
        let health = match tap.get("health").and_then(Value::as_str) {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| StateError::Damaged(format!("health: {e}")))?,
            None => BTreeMap::new(),
        };
        Ok(Some(TapState {
            as_of,
            projects,
            inputs,
            carry,
            alarms_sent,
            cut_day: tap.get("cut_day").and_then(Value::as_i64),
            health,
        }))
    }

    /// The Singer state value.
    pub fn to_value(&self) -> Result<Value, StateError> {
        Ok(json!({
            "bookmarks": {},
            "tap_kpis": {
                "version": STATE_VERSION,
                "as_of": self.as_of.map(crate::kpi::calendar::fmt_day),
                "inputs": self.inputs,
                "executions": self.carry.parts.len(),
                "ledger": encode_carry(&self.carry, &self.projects)?,
                "cut_day": self.cut_day,
                "health": serde_json::to_string(&self.health)
                    .map_err(|e| StateError::Damaged(e.to_string()))?,
                "alarms_sent": self.alarms_sent,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carry() -> Carry {
        let info = info_from_normalised(
            [
                ("name_hash".to_string(), json!("abc")),
                ("category".to_string(), json!("extractors")),
            ]
            .into_iter()
            .collect(),
        );
        let mut plugins = BTreeMap::new();
        plugins.insert(
            info.key.clone(),
            Plugin {
                info,
                first_seen_ms: Some(1_700_000_000_500),
            },
        );
        Carry {
            parts: vec![ExecParts {
                execution_id: "x1".into(),
                variant: Variant {
                    project_id: Some("p1".into()),
                    command: Some("run".into()),
                    is_ci: Some(false),
                    ..Default::default()
                },
                started_ms: 1_700_000_000_000,
                finished_ms: 1_700_000_009_000,
                exit_code: Some(0),
                ip_hashes: ["h".to_string()].into_iter().collect(),
                plugins,
                event_count: 4,
                position: Default::default(),
                weight: 3,
                presence_months: [24_300, 24_301].into_iter().collect(),
            }],
            opt_outs: [("p1".to_string(), 5)].into_iter().collect(),
            structured: [("p2".to_string(), (1, 9))].into_iter().collect(),
            event_ids: vec![(u128::MAX - 3, -7), (42, 1_700_000_000_000)],
            newest_event_ms: Some(1_700_000_009_000),
        }
    }

    #[test]
    fn a_state_reads_back_as_written() {
        let state = TapState {
            as_of: Some(19_700),
            projects: [("p1".to_string(), ("explicit".to_string(), 3))]
                .into_iter()
                .collect(),
            inputs: vec![],
            carry: carry(),
            alarms_sent: json!([]),
            cut_day: Some(19_600),
            health: [(
                "r|k".to_string(),
                crate::health::RuleCarry {
                    learned: vec![1.0, 2.5],
                    last: Some(2.5),
                },
            )]
            .into_iter()
            .collect(),
        };
        let value = state.to_value().unwrap();
        fn no_floats(v: &Value) -> bool {
            match v {
                Value::Number(n) => n.is_i64() || n.is_u64(),
                Value::Array(a) => a.iter().all(no_floats),
                Value::Object(o) => o.values().all(no_floats),
                _ => true,
            }
        }
        // targets read STATE numbers as decimals they cannot serialise again
        assert!(no_floats(&value), "{value}");
        let back = TapState::from_value(&value).unwrap().unwrap();
        assert_eq!(back.as_of, Some(19_700));
        assert_eq!(back.projects, state.projects);
        assert_eq!(back.cut_day, state.cut_day);
        assert_eq!(back.health, state.health);
        assert_eq!(back.carry.parts, state.carry.parts);
        assert_eq!(back.carry.opt_outs, state.carry.opt_outs);
        assert_eq!(back.carry.structured, state.carry.structured);
        let mut ids = state.carry.event_ids.clone();
        ids.sort_unstable();
        assert_eq!(back.carry.event_ids, ids);
        assert_eq!(back.carry.newest_event_ms, state.carry.newest_event_ms);
    }

    #[test]
    fn other_versions_and_damage_are_refused_with_a_message() {
        let e = TapState::from_value(&json!({"tap_kpis": {"version": 99}})).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
        let e =
            TapState::from_value(&json!({"tap_kpis": {"version": 2, "ledger": "!!"}})).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        assert!(
            TapState::from_value(&json!({"bookmarks": {}}))
                .unwrap()
                .is_none()
        );
        assert!(
            TapState::from_value(&json!({"tap_kpis": {"version": 1, "alarms_sent": []}}))
                .unwrap()
                .is_none()
        );
    }
}
