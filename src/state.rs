//! The tap's incremental state, carried in the Singer STATE message so that Meltano's state backend
//! keeps it (runs on ephemeral workers resume too).
//!
//! It holds a bookmark per input (fingerprint, and the byte offset and line number after the last
//! complete line read) and a ledger: every execution as the parts it was folded from, opt-outs and
//! structured-event sightings by project, and the ids of events recent enough to still have copies
//! arrive. The ledger is postcard (a compact binary serde format, strings a fleet repeats written once),
//! zstd-compressed and base64-encoded in one string field. Since version 4 the summarised history
//! (what finished before the cut, see [`crate::compact`]) is a field of its own, written again as it
//! was read while the cut stays where it is, so a run within a month does not encode it anew. Since
//! version 5 the dormant projects' history is a field of its own too ([`Dormant`]): a run unpacks
//! only the projects its events name. Since version 6 the summarised rows of dormant projects that
//! returned are a field of their own (`history_returned`), so the history is still carried as it
//! was read when a project wakes up. Since version 7 the ledger's settled part is a field of its own,
//! carried as read. Since version 8 the dormant part keeps its rows in small chunks packed apart, so
//! that a run decompresses only the chunks of the projects it unpacks. Versions 2 (JSON, gzip), 3
//! (one ledger), 4 (no dormant part), 5 (returned projects in the history), 6 (no settled part) and
//! 7 (the dormant rows packed whole) are still read and are written anew as version 8; a state of
//! another version is rejected with a message, never misread.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::compact::Kept;
use crate::decode::Format;
use crate::normalize::plugins::{PluginInfo, info_from_normalised};
use crate::normalize::{
    Carry, ExecParts, Execution, ExecutionId, FastIndex, FastMap, FastSet, Interner, Plugin, Text,
    TextSet, Variant,
};
use crate::source::Fingerprint;

mod dormant;
mod skeleton;
mod text;
pub use dormant::{Dormant, DormantEntry, DormantOut};
pub use text::{StateFields, StateSlice, StateText};

/// Version of the state layout; a state of any other version is refused.
pub const STATE_VERSION: u64 = 8;

/// State versions this tap resumes from: version 2 wrote every row's strings out in full, version 3
/// kept the summarised history in the one ledger, version 4 kept dormant projects in the history,
/// version 5 wrote the history again whenever a dormant project returned, version 6 wrote every
/// execution of the ledger again in each run, version 7 packed the dormant projects' rows whole (a
/// dormant part of that layout is still read, and carried as it is until it is written anew).
const READS: [u64; 7] = [2, 3, 4, 5, 6, 7, STATE_VERSION];

/// Errors reading a state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state version {found} is not supported by this tap-kpis (it reads versions 1 to {STATE_VERSION}); run once with --full-refresh (no state) to rebuild it"
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
    /// The summarised history as read (version 4 on); `None` when the state had none of its own.
    pub history: Option<History>,
    /// The dormant projects' history as read (version 5 on), see [`Dormant`].
    pub dormant: Option<Dormant>,
    /// The settled part of the ledger as read (version 7 on), see [`Settled`].
    pub settled: Option<Settled>,
}

/// The ledger's executions that finished before late events could reach them when the part was
/// written (`before_ms`): no later event changes them, so while the cut stays put the next state
/// carries their text as it was read rather than encoding them again each run. They are read into
/// the carry with the rest of the ledger.
#[derive(Debug, Clone)]
pub struct Settled {
    pub text: StateSlice,
    pub rows: usize,
    pub before_ms: i64,
}

/// What the next state writes as the settled part of its ledger.
pub enum SettledOut<'a> {
    /// The same executions as were read, unchanged: the text is written as it is.
    Carried(Settled),
    /// These executions, encoded, as finished before this time.
    Rows(Vec<LedgerEntry<'a>>, i64),
}

/// Split the ledger of a state being written (the executions that finished on or after the cut) into
/// its settled part, those that finished before late events reach (`settled_before`), and the rest.
/// The settled part read is carried as it is while it holds exactly the executions read, none of them
/// changed: the cut has not moved (`earlier` is given only then), no new event touched one, and as
/// many finished before its bound as it held.
pub fn settle_ledger<'a>(
    recent: &[&'a Execution],
    earlier: Option<Settled>,
    settled_before: Option<i64>,
    touched: &FastSet<ExecutionId>,
) -> (Option<SettledOut<'a>>, Vec<&'a Execution>) {
    if let Some(earlier) = earlier {
        let (settled, rest): (Vec<&Execution>, Vec<&Execution>) = recent
            .iter()
            .partition(|x| x.finished_ms < earlier.before_ms);
        if settled.len() == earlier.rows
            && settled.iter().all(|x| !touched.contains(&x.execution_id))
        {
            return (Some(SettledOut::Carried(earlier)), rest);
        }
    }
    let Some(before) = settled_before else {
        return (None, recent.to_vec());
    };
    let (settled, rest): (Vec<&Execution>, Vec<&Execution>) =
        recent.iter().partition(|x| x.finished_ms < before);
    let rows = settled
        .into_iter()
        .map(|x| LedgerEntry::Execution(Kept::whole(x)))
        .collect();
    (Some(SettledOut::Rows(rows, before)), rest)
}

/// The summarised history of a state (the executions that finished before its cut, read into the
/// carry with the rest): the base64 text they were read from, which the next state carries as it is
/// while the cut stays put, and how many there were.
///
/// The summarised rows of dormant projects that returned since the dormant part was set apart are
/// kept in a part of their own (`history_returned`), written again each run, so that a project
/// waking up does not make the whole history be written again.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub text: StateSlice,
    pub rows: usize,
    /// The projects of the returned part.
    pub returned: BTreeSet<String>,
}

/// What the next state writes as its dormant projects' history.
pub enum DormantPart<'a> {
    /// Unchanged since it was read: the text is written as it is.
    Carried(Dormant),
    /// These projects, encoded, as dormant since this cut day.
    Rows(Vec<DormantOut<'a>>, Option<i64>),
}

/// What the next state writes as its summarised history.
pub enum HistoryOut<'a> {
    /// Unchanged since it was read: the text is written as it is, and these rows of returned
    /// dormant projects are encoded beside it.
    Carried(History, Vec<LedgerEntry<'a>>),
    /// These executions, encoded.
    Rows(Vec<LedgerEntry<'a>>),
}

/// A version-2 ledger row (JSON): the variant written out in full on every row.
#[derive(Deserialize)]
struct RowV2(
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

/// A version-2 ledger: JSON, gzip-compressed.
#[derive(Deserialize)]
struct LedgerV2 {
    plugins: Vec<BTreeMap<String, Value>>,
    parts: Vec<RowV2>,
    opt_outs: BTreeMap<String, i64>,
    structured: BTreeMap<String, (i64, i64)>,
    /// 24 bytes per event, base64: id (16, big-endian) and event time (8, big-endian).
    ids: String,
    newest: Option<i64>,
    projects: Projects,
}

/// A ledger row: execution id, the variant's strings as indexes into the ledger's `texts` (0: none)
/// in [`variant_texts`] order, is_ci, start, runtime, exit code, IP hashes, plugins (index into
/// `plugins`, first seen), event count, weight, presence months.
#[derive(Serialize, Deserialize)]
struct Row<'a>(
    &'a str,
    [u32; VARIANT_TEXTS],
    Option<bool>,
    i64,
    i64,
    Option<i64>,
    Vec<&'a str>,
    Vec<(u32, Option<i64>)>,
    u32,
    u32,
    Vec<i64>,
);

/// How many strings of a variant a row refers to.
const VARIANT_TEXTS: usize = 8;

/// The strings of a variant a row refers to: project id, source, environment hash, Meltano and
/// Python versions, command, sub-command, structured-event command.
fn variant_texts(v: &Variant) -> [Option<&Text>; VARIANT_TEXTS] {
    [
        v.project_id.as_ref(),
        v.source.as_ref(),
        v.environment_hash.as_ref(),
        v.meltano_version.as_ref(),
        v.python_version.as_ref(),
        v.command.as_ref(),
        v.sub_command.as_ref(),
        v.se_command.as_ref(),
    ]
}

fn variant_from_texts(
    refs: [u32; VARIANT_TEXTS],
    is_ci: Option<bool>,
    mut text: impl FnMut(usize) -> Option<Text>,
) -> Result<Variant, StateError> {
    let mut t = [const { None }; VARIANT_TEXTS];
    for (slot, r) in t.iter_mut().zip(refs) {
        if r > 0 {
            *slot = Some(
                text(r as usize - 1)
                    .ok_or_else(|| StateError::Damaged(format!("text {r} is not in the state")))?,
            );
        }
    }
    let [
        project_id,
        source,
        environment_hash,
        meltano_version,
        python_version,
        command,
        sub_command,
        se_command,
    ] = t;
    Ok(Variant {
        project_id,
        source,
        environment_hash,
        meltano_version,
        python_version,
        is_ci,
        command,
        sub_command,
        se_command,
    })
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// zstd level of the state's packed parts: the fastest. Level 3 writes a state about 1% smaller and
/// costs an incremental run about 8% more CPU.
const ZSTD_LEVEL: i32 = 1;

/// A STATE value whose ledger and history are held compressed: it serialises as the value with their
/// base64 text in `tap_kpis.history` and `tap_kpis.ledger`, made as it is written (they are most of
/// the state).
#[derive(Debug)]
pub struct EncodedState {
    /// The value without the ledger and the history.
    value: Value,
    dormant: Blob,
    history: Blob,
    /// The rows of returned dormant projects, when there are any.
    returned: Option<Blob>,
    ledger: Blob,
    /// The settled part of the ledger, when there is one.
    settled: Option<Blob>,
}

/// A compressed part of the state as its base64 text: made on the core that packed it, or carried
/// as it was read.
#[derive(Debug)]
struct Blob {
    text: StateSlice,
    /// Whether the text may go between JSON quotes as it is: worked out where the blob is made, so
    /// that writing the state does not scan it.
    plain: bool,
}

impl Blob {
    fn packed(bytes: &[u8]) -> Blob {
        Blob::encoded(b64().encode(bytes))
    }

    /// A text this run made of base64 (and the dormant part's separators), which always may go
    /// between quotes as it is.
    fn encoded(text: String) -> Blob {
        debug_assert!(needs_no_escape(text.as_bytes()));
        Blob {
            text: StateSlice::owned(text),
            plain: true,
        }
    }

    /// A text carried as it was read. One cut from the state's text as it was goes back as it is;
    /// another is checked, which costs far less than escaping it byte by byte.
    fn carried(text: StateSlice) -> Blob {
        let plain = text.is_verbatim() || needs_no_escape(text.as_bytes());
        Blob { text, plain }
    }
}

/// Whether `bytes` may go between JSON quotes as they are: printable ASCII other than a quote or a
/// backslash. Checked a chunk at a time without stopping early, which the compiler vectorises.
fn needs_no_escape(bytes: &[u8]) -> bool {
    bytes.chunks(4096).all(|chunk| {
        chunk.iter().fold(true, |plain, &b| {
            plain & (b != b'"') & (b != b'\\') & (0x20..0x7f).contains(&b)
        })
    })
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text.as_str())
    }
}

impl EncodedState {
    /// Replace the health rules' learned history and the alarms sent: they are known only once the
    /// rules have run over the model, and the rest of the state is encoded beside that.
    pub fn set_health(
        &mut self,
        health: &BTreeMap<String, crate::health::RuleCarry>,
        alarms_sent: Value,
    ) -> Result<(), StateError> {
        let Some(tap) = self
            .value
            .get_mut("tap_kpis")
            .and_then(Value::as_object_mut)
        else {
            return Err(StateError::Damaged(
                "no tap_kpis object to set health in".into(),
            ));
        };
        tap.insert("health".into(), Value::String(health_text(health)?));
        tap.insert("alarms_sent".into(), alarms_sent);
        Ok(())
    }

    /// Write the state as JSON, exactly as serialising it would, with the large base64 texts
    /// copied between their quotes instead of scanned for characters to escape.
    pub fn write_json(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let Value::Object(top) = &self.value else {
            return Item::Value(&self.value).write(out);
        };
        let entries = top.iter().map(|(k, v)| match v {
            Value::Object(tap) if k == "tap_kpis" => (k.as_str(), Item::Tap(tap, self.blobs())),
            _ => (k.as_str(), Item::Value(v)),
        });
        write_object(out, entries)
    }

    /// The blobs present, in the order of their keys.
    fn blobs(&self) -> Vec<(&'static str, &Blob)> {
        let mut blobs = vec![("dormant", &self.dormant), ("history", &self.history)];
        blobs.extend(self.returned.as_ref().map(|r| ("history_returned", r)));
        blobs.push(("ledger", &self.ledger));
        blobs.extend(self.settled.as_ref().map(|r| ("ledger_settled", r)));
        blobs
    }
}

/// What [`EncodedState::write_json`] writes: a JSON value, a blob, or the tap's part with its blobs
/// in their sorted places among the other keys.
enum Item<'a> {
    Value(&'a Value),
    Blob(&'a Blob),
    Tap(
        &'a serde_json::Map<String, Value>,
        Vec<(&'static str, &'a Blob)>,
    ),
}

impl Item<'_> {
    fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Item::Value(v) => erased_json::Json::to_writer(*v, out),
            Item::Blob(blob) if blob.plain => {
                out.write_all(b"\"")?;
                out.write_all(blob.text.as_bytes())?;
                out.write_all(b"\"")
            }
            Item::Blob(blob) => erased_json::Json::to_writer(&blob.text.as_str(), out),
            Item::Tap(tap, blobs) => {
                let mut items = Vec::with_capacity(tap.len() + blobs.len());
                let mut blobs = blobs.iter().copied().peekable();
                for (key, v) in tap.iter() {
                    while let Some((name, blob)) = blobs.next_if(|(name, _)| *name < key.as_str()) {
                        items.push((name, Item::Blob(blob)));
                    }
                    items.push((key.as_str(), Item::Value(v)));
                }
                items.extend(blobs.map(|(name, blob)| (name, Item::Blob(blob))));
                write_object(out, items)
            }
        }
    }
}

/// A JSON object of these entries, in this order.
fn write_object<'a>(
    out: &mut dyn Write,
    entries: impl IntoIterator<Item = (&'a str, Item<'a>)>,
) -> std::io::Result<()> {
    out.write_all(b"{")?;
    for (i, (key, item)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        erased_json::Json::to_writer(key, out)?;
        out.write_all(b":")?;
        item.write(out)?;
    }
    out.write_all(b"}")
}

mod erased_json {
    /// serde_json's writer behind a trait object.
    pub trait Json {
        fn to_writer(&self, out: &mut dyn std::io::Write) -> std::io::Result<()>;
    }

    impl<T: serde::Serialize + ?Sized> Json for T {
        fn to_writer(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
            serde_json::to_writer(out, self).map_err(std::io::Error::other)
        }
    }
}

impl Serialize for EncodedState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        /// The tap's part, with the blobs in their sorted places among the other keys.
        struct Tap<'a>(&'a serde_json::Map<String, Value>, Vec<(&'a str, &'a Blob)>);
        impl Serialize for Tap<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(self.0.len() + self.1.len()))?;
                let mut blobs = self.1.iter().peekable();
                for (k, v) in self.0 {
                    while let Some((name, blob)) = blobs.next_if(|(name, _)| *name < k.as_str()) {
                        map.serialize_entry(name, blob)?;
                    }
                    map.serialize_entry(k, v)?;
                }
                for (name, blob) in blobs {
                    map.serialize_entry(name, blob)?;
                }
                map.end()
            }
        }
        let Value::Object(top) = &self.value else {
            return self.value.serialize(serializer);
        };
        let mut map = serializer.serialize_map(Some(top.len()))?;
        for (k, v) in top {
            match v {
                Value::Object(tap) if k == "tap_kpis" => {
                    map.serialize_entry(k, &Tap(tap, self.blobs()))?
                }
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

/// One execution as the ledger writes it: a folded part, or a finished execution (which holds
/// everything its parts did).
#[derive(Clone, Copy)]
pub enum LedgerEntry<'a> {
    Part(&'a ExecParts),
    Execution(Kept<'a>),
}

impl<'a> LedgerEntry<'a> {
    fn sort_key(&self) -> (Option<&'a str>, i64, &'a str) {
        match self {
            LedgerEntry::Part(p) => (
                p.variant.project_id.as_deref(),
                p.started_ms,
                &p.execution_id,
            ),
            LedgerEntry::Execution(k) => {
                let x = k.execution;
                (Some(&x.project_id), x.started_ms, &x.execution_id)
            }
        }
    }
    fn plugins(&self) -> &'a [Plugin] {
        match *self {
            LedgerEntry::Part(p) => &p.plugins,
            LedgerEntry::Execution(k) => &k.execution.plugins,
        }
    }
    fn texts(&self) -> [Option<&'a Text>; VARIANT_TEXTS] {
        match *self {
            LedgerEntry::Part(p) => variant_texts(&p.variant),
            LedgerEntry::Execution(Kept { execution: x, .. }) => [
                Some(&x.project_id),
                x.project_id_source.as_ref(),
                x.environment_hash.as_ref(),
                x.meltano_version.as_ref(),
                x.python_version.as_ref(),
                x.command_line.cli_command.as_ref(),
                x.command_line.sub_command.as_ref(),
                x.command_line.se_command.as_ref(),
            ],
        }
    }
}

struct Rows<'a> {
    entries: &'a [LedgerEntry<'a>],
    plugin_index: &'a FastMap<&'a str, u32>,
    text_index: &'a FastIndex<&'a str>,
}

impl Serialize for Rows<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.entries.iter().map(|e| {
            let texts = e.texts().map(|t| {
                t.and_then(|t| self.text_index.get_index_of(&**t))
                    .map_or(0, |i| i as u32 + 1)
            });
            let mut plugins: Vec<(u32, Option<i64>)> = e
                .plugins()
                .iter()
                .map(|p| (self.plugin_index[p.key()], p.first_seen_ms))
                .collect();
            plugins.sort_unstable();
            match e {
                LedgerEntry::Part(p) => Row(
                    &p.execution_id,
                    texts,
                    p.variant.is_ci,
                    p.started_ms,
                    p.finished_ms - p.started_ms,
                    p.exit_code,
                    p.ip_hashes.iter().map(|t| &**t).collect(),
                    plugins,
                    p.event_count,
                    p.weight,
                    p.presence_months.iter().copied().collect(),
                ),
                LedgerEntry::Execution(k) => {
                    let x = k.execution;
                    Row(
                        &x.execution_id,
                        texts,
                        x.is_ci,
                        x.started_ms,
                        x.finished_ms - x.started_ms,
                        x.exit_code,
                        k.ip_hashes().iter().map(|t| &**t).collect(),
                        plugins,
                        x.event_count,
                        k.weight,
                        k.presence_months().to_vec(),
                    )
                }
            }
        }))
    }
}

/// The ledger since version 3: postcard (a compact binary serde format), zstd-compressed, in this
/// field order (read back by [`LedgerInto`]). Strings a fleet repeats (project ids, versions,
/// commands) are written once, in `texts`; `plugins` are the normalised plugin dicts as JSON text.
#[derive(Serialize)]
struct LedgerRef<'a> {
    texts: &'a [&'a str],
    plugins: &'a [String],
    parts: Rows<'a>,
    opt_outs: &'a BTreeMap<String, i64>,
    structured: &'a BTreeMap<String, (i64, i64)>,
    ids: Vec<(u128, i64)>,
    newest: Option<i64>,
    projects: &'a Projects,
}

/// The summarised history since version 4: rows and the tables they refer to, as in [`LedgerRef`]
/// (read back by [`HistoryInto`]).
#[derive(Serialize)]
struct HistoryRef<'a> {
    texts: &'a [&'a str],
    plugins: &'a [String],
    parts: Rows<'a>,
}

/// Rows in their written order with the string and plugin tables they refer to.
struct Tables<'a> {
    order: Vec<LedgerEntry<'a>>,
    plugin_index: FastMap<&'a str, u32>,
    plugins: Vec<String>,
    text_index: FastIndex<&'a str>,
    texts: Vec<&'a str>,
}

impl<'a> Tables<'a> {
    /// Sort the rows (by project, start, id: the same rows are always written alike) and number the
    /// strings and plugins they refer to in order of first use.
    fn of(mut order: Vec<LedgerEntry<'a>>) -> Result<Self, StateError> {
        order.sort_unstable_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let mut plugin_index: FastMap<&str, u32> = FastMap::default();
        let mut plugins = Vec::new();
        let mut text_index: FastIndex<&str> = FastIndex::default();
        for entry in &order {
            for plugin in entry.plugins() {
                if !plugin_index.contains_key(plugin.key()) {
                    plugin_index.insert(plugin.key(), plugins.len() as u32);
                    plugins.push(
                        serde_json::to_string(&plugin.info.dict)
                            .map_err(|e| StateError::Damaged(e.to_string()))?,
                    );
                }
            }
            for t in entry.texts().into_iter().flatten() {
                text_index.insert(t);
            }
        }
        let texts = text_index.iter().copied().collect();
        Ok(Tables {
            order,
            plugin_index,
            plugins,
            text_index,
            texts,
        })
    }

    fn rows(&self) -> Rows<'_> {
        Rows {
            entries: &self.order,
            plugin_index: &self.plugin_index,
            text_index: &self.text_index,
        }
    }
}

/// postcard, zstd-compressed. The rows are serialised into one buffer and compressed from it:
/// postcard writes byte by byte, which into a buffered writer costs several times a push into a
/// vector.
/// `rows` executions and `other_bytes` of other parts (a guess on the high side) are serialised and
/// compressed.
fn pack(value: &impl Serialize, rows: usize, other_bytes: usize) -> Result<Vec<u8>, StateError> {
    let damaged = |e: &dyn std::fmt::Display| StateError::Damaged(e.to_string());
    // reserved generously (pages never filled are never touched), so that the buffer is not
    // reallocated and copied into fresh pages as it fills
    let raw = postcard::to_extend(
        value,
        Vec::with_capacity(64 * 1024 + rows * 128 + other_bytes),
    )
    .map_err(|e| damaged(&e))?;
    // in one call over the whole buffer: faster than a stream, and the frame records its size
    zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(|e| damaged(&e))
}

fn encode_carry<'a>(
    carry: &'a Carry,
    executions: impl IntoIterator<Item = LedgerEntry<'a>>,
    projects: &Projects,
) -> Result<(Vec<u8>, usize), StateError> {
    let order: Vec<LedgerEntry> = carry
        .parts
        .iter()
        .map(LedgerEntry::Part)
        .chain(executions)
        .collect();
    let tables = Tables::of(order)?;
    let mut ids = carry.event_ids.clone();
    ids.sort_unstable();
    let ledger = LedgerRef {
        texts: &tables.texts,
        plugins: &tables.plugins,
        parts: tables.rows(),
        opt_outs: &carry.opt_outs,
        structured: &carry.structured,
        ids,
        newest: carry.newest_event_ms,
        projects,
    };
    // a project list entry (id, source, first seen) and an event id take under 64 bytes each
    let other_bytes = (projects.len() + ledger.ids.len()) * 64;
    Ok((
        pack(&ledger, tables.order.len(), other_bytes)?,
        tables.order.len(),
    ))
}

fn encode_history(rows: Vec<LedgerEntry<'_>>) -> Result<Vec<u8>, StateError> {
    let tables = Tables::of(rows)?;
    let history = HistoryRef {
        texts: &tables.texts,
        plugins: &tables.plugins,
        parts: tables.rows(),
    };
    pack(&history, tables.order.len(), 0)
}

type Projects = BTreeMap<String, (String, i64)>;

/// Health carries as JSON text: Singer targets read numbers in STATE as decimals they cannot
/// write back.
fn health_text(health: &BTreeMap<String, crate::health::RuleCarry>) -> Result<String, StateError> {
    serde_json::to_string(health).map_err(|e| StateError::Damaged(e.to_string()))
}

/// Everything in a ledger but its rows.
struct Head {
    plugins: Vec<BTreeMap<String, Value>>,
    opt_outs: BTreeMap<String, i64>,
    structured: BTreeMap<String, (i64, i64)>,
    ids: Vec<(u128, i64)>,
    newest: Option<i64>,
    projects: Projects,
}

/// The parts of one ledger row, whatever the layout of its version.
struct RowParts {
    execution_id: ExecutionId,
    variant: Variant,
    started: i64,
    runtime: i64,
    exit_code: Option<i64>,
    ips: TextSet,
    refs: Vec<(u32, Option<i64>)>,
    events: u32,
    weight: u32,
    months: BTreeSet<i64>,
}

fn decode_carry(text: &str, version: u64) -> Result<(Carry, Projects), StateError> {
    let damaged =
        |what: &str, e: &dyn std::fmt::Display| StateError::Damaged(format!("{what}: {e}"));
    let packed = b64()
        .decode(text)
        .map_err(|e| damaged("ledger is not base64", &e))?;
    let mut texts = Interner::default();
    if version == 2 {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(packed.as_slice())
            .read_to_end(&mut json)
            .map_err(|e| damaged("ledger is not gzip", &e))?;
        let ledger: LedgerV2 =
            serde_json::from_slice(&json).map_err(|e| damaged("ledger layout", &e))?;
        let rows = ledger.parts.into_iter().map(|r| {
            let RowV2(
                id,
                mut variant,
                started,
                runtime,
                exit_code,
                ips,
                refs,
                events,
                weight,
                months,
            ) = r;
            variant.share_texts(&mut texts);
            RowParts {
                execution_id: ExecutionId::from(id),
                variant,
                started,
                runtime,
                exit_code,
                ips: ips.iter().map(|t| texts.get(t)).collect(),
                refs,
                events,
                weight,
                months: months.into_iter().collect(),
            }
        });
        let rows: Vec<RowParts> = rows.collect();
        let ids = b64()
            .decode(&ledger.ids)
            .map_err(|e| damaged("event ids", &e))?;
        if ids.len() % 24 != 0 {
            return Err(StateError::Damaged("event ids are cut short".into()));
        }
        let ids = ids
            .chunks_exact(24)
            .map(|c| {
                let mut key = [0u8; 16];
                let mut time = [0u8; 8];
                key.copy_from_slice(&c[..16]);
                time.copy_from_slice(&c[16..]);
                (u128::from_be_bytes(key), i64::from_be_bytes(time))
            })
            .collect();
        let head = Head {
            plugins: ledger.plugins,
            opt_outs: ledger.opt_outs,
            structured: ledger.structured,
            ids,
            newest: ledger.newest,
            projects: ledger.projects,
        };
        return carry_from(head, rows, texts);
    }
    let bytes = unzstd(&packed).map_err(|e| damaged("ledger is not zstd", &e))?;
    drop(packed);
    let mut carry = Carry {
        texts,
        ..Carry::default()
    };
    let mut failure = None;
    let projects = postcard_seed(LedgerInto(&mut carry, &mut failure), &bytes)
        .map_err(|e| failure.unwrap_or_else(|| damaged("ledger layout", &e)))?;
    Ok((carry, projects))
}

/// Decompress a packed part into a buffer reserved at once: room for four times the packed size
/// (about twice what it unpacks to) costs only the pages written, where growing by doubling would
/// copy it again and again.
fn unzstd(packed: &[u8]) -> std::io::Result<Vec<u8>> {
    unzstd_with(&mut zstd::bulk::Decompressor::new()?, packed)
}

/// [`unzstd`] with a decompressor made once for many small frames (making one each time costs more
/// than a small frame's decompression).
fn unzstd_with(
    unzip: &mut zstd::bulk::Decompressor<'_>,
    packed: &[u8],
) -> std::io::Result<Vec<u8>> {
    // a frame that records its size (as `pack` writes them) is unpacked in one call, unless the size
    // it claims is beyond what any state compresses to
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(packed) {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size <= packed.len().saturating_mul(64).saturating_add(1 << 20) {
            return unzip.decompress(packed, size);
        }
    }
    let mut bytes = Vec::with_capacity(packed.len() * 4 + 4096);
    zstd::stream::copy_decode(packed, &mut bytes)?;
    Ok(bytes)
}

/// The bytes of a version-4 history, unpacked from its text.
fn unpack_history(text: &str) -> Result<Vec<u8>, StateError> {
    unpack_rows(text, "history")
}

/// The bytes of the settled part of a ledger (written as a history is), unpacked from its text.
fn unpack_settled(text: &str) -> Result<Vec<u8>, StateError> {
    unpack_rows(text, "settled ledger")
}

fn unpack_rows(text: &str, what: &str) -> Result<Vec<u8>, StateError> {
    let damaged = |e: &dyn std::fmt::Display, how: &str| {
        StateError::Damaged(format!("{what} is not {how}: {e}"))
    };
    let packed = b64().decode(text).map_err(|e| damaged(&e, "base64"))?;
    unzstd(&packed).map_err(|e| damaged(&e, "zstd"))
}

/// Add the rows of an unpacked version-4 history to `carry`; returns how many there were.
fn decode_history(bytes: &[u8], carry: &mut Carry) -> Result<usize, StateError> {
    let mut failure = None;
    postcard_seed(HistoryInto(carry, &mut failure), bytes)
        .map_err(|e| failure.unwrap_or_else(|| StateError::Damaged(format!("history layout: {e}"))))
}

/// Add a decoded row to `carry`: an execution with a project is built at once (its parts are not
/// kept), the others stay parts until an event names their project.
fn keep(part: ExecParts, carry: &mut Carry) {
    match part.into_execution(&mut carry.tables) {
        Ok(x) => carry.executions.push(x),
        Err(p) => carry.parts.push(*p),
    }
}

/// postcard's `from_bytes`, for a seed.
fn postcard_seed<'de, S: serde::de::DeserializeSeed<'de>>(
    seed: S,
    bytes: &'de [u8],
) -> postcard::Result<S::Value> {
    seed.deserialize(&mut postcard::Deserializer::from_bytes(bytes))
}

/// Reads a [`LedgerRef`] into a carry row by row (no row is held): returns its projects.
struct LedgerInto<'c>(&'c mut Carry, &'c mut Option<StateError>);

/// Reads a [`HistoryRef`] into a carry row by row: returns how many rows it had.
struct HistoryInto<'c>(&'c mut Carry, &'c mut Option<StateError>);

/// Reads a sequence of rows, whose strings and plugins are in these tables, into a carry.
struct RowsInto<'c> {
    table: TextTable<'c>,
    infos: &'c [Arc<PluginInfo>],
    carry: &'c mut Carry,
    /// What was wrong with a row (postcard's errors carry no message of their own).
    failure: &'c mut Option<StateError>,
}

/// The string table rows refer to: interned up front when every row is read (a ledger, a history),
/// or as rows ask for them when only a few are (a dormant part's named projects), so that a run
/// does not intern the strings of every project it leaves packed.
enum TextTable<'c> {
    Interned(&'c [Text]),
    Lazy {
        texts: &'c [String],
        interned: &'c mut Vec<Option<Text>>,
    },
}

impl RowsInto<'_> {
    /// The `i`th string of the table, interned in the carry.
    fn text(table: &mut TextTable<'_>, carry: &mut Carry, i: usize) -> Option<Text> {
        match table {
            TextTable::Interned(texts) => texts.get(i).cloned(),
            TextTable::Lazy { texts, interned } => {
                let slot = interned.get_mut(i)?;
                if slot.is_none() {
                    *slot = Some(carry.texts.get(texts.get(i)?));
                }
                slot.clone()
            }
        }
    }
}

/// Keep the state's own message of what is damaged, and stop the decoder.
fn fail<E: serde::de::Error>(slot: &mut Option<StateError>, e: StateError) -> E {
    let error = E::custom(&e);
    slot.get_or_insert(e);
    error
}

/// The rows that open a ledger or history, with the string and plugin tables before them (shared
/// through the carry's interner), added to the carry; returns how many rows there were.
fn rows_of<'de, A: serde::de::SeqAccess<'de>>(
    seq: &mut A,
    carry: &mut Carry,
    failure: &mut Option<StateError>,
) -> Result<usize, A::Error> {
    use serde::de::Error;
    let missing = || A::Error::custom("cut short");
    let texts: Vec<&str> = seq.next_element()?.ok_or_else(missing)?;
    let table: Vec<Text> = texts.iter().map(|t| carry.texts.get(t)).collect();
    let plugins: Vec<&str> = seq.next_element()?.ok_or_else(missing)?;
    let infos = match plugins_of(plugins) {
        Ok(infos) => infos,
        Err(e) => return Err(fail(failure, e)),
    };
    let rows = RowsInto {
        table: TextTable::Interned(&table),
        infos: &infos,
        carry,
        failure,
    };
    seq.next_element_seed(rows)?.ok_or_else(missing)
}

impl<'de> serde::de::DeserializeSeed<'de> for RowsInto<'_> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowsInto<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("ledger rows")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        if let Some(n) = seq.size_hint() {
            self.carry.executions.reserve_exact(n);
        }
        let mut n = 0;
        while let Some(row) = seq.next_element::<Row>()? {
            let Row(
                id,
                refs,
                is_ci,
                started,
                runtime,
                exit_code,
                ips,
                plugins,
                events,
                weight,
                months,
            ) = row;
            let (table, carry) = (&mut self.table, &mut *self.carry);
            let variant = match variant_from_texts(refs, is_ci, |i| Self::text(table, carry, i)) {
                Ok(v) => v,
                Err(e) => return Err(fail(self.failure, e)),
            };
            let part = part_of(
                RowParts {
                    execution_id: ExecutionId::from(id),
                    variant,
                    started,
                    runtime,
                    exit_code,
                    ips: ips.into_iter().map(|t| self.carry.texts.get(t)).collect(),
                    refs: plugins,
                    events,
                    weight,
                    months: months.into_iter().collect(),
                },
                self.infos,
            );
            match part {
                Ok(part) => keep(part, self.carry),
                Err(e) => return Err(fail(self.failure, e)),
            }
            n += 1;
        }
        Ok(n)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for HistoryInto<'_> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_tuple(3, self)
    }
}

impl<'de> serde::de::Visitor<'de> for HistoryInto<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a summarised history")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        rows_of(&mut seq, self.0, self.1)
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for LedgerInto<'_> {
    type Value = Projects;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Projects, D::Error> {
        d.deserialize_tuple(8, self)
    }
}

impl<'de> serde::de::Visitor<'de> for LedgerInto<'_> {
    type Value = Projects;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a ledger")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Projects, A::Error> {
        use serde::de::Error;
        let missing = || A::Error::custom("cut short");
        let LedgerInto(carry, failure) = self;
        rows_of(&mut seq, carry, failure)?;
        carry.opt_outs = seq.next_element()?.ok_or_else(missing)?;
        carry.structured = seq.next_element()?.ok_or_else(missing)?;
        carry.event_ids = seq.next_element()?.ok_or_else(missing)?;
        carry.newest_event_ms = seq.next_element()?.ok_or_else(missing)?;
        // the project list is written in key order: read as the pairs it is made of (the same
        // bytes) and built in one pass, rather than inserted one id at a time
        let projects: Vec<(String, (String, i64))> = seq.next_element()?.ok_or_else(missing)?;
        Ok(projects.into_iter().collect())
    }
}

/// The plugins of a table written as their dicts' JSON text.
fn plugins_of<'t>(
    texts: impl IntoIterator<Item = &'t str>,
) -> Result<Vec<Arc<PluginInfo>>, StateError> {
    let mut dicts: Vec<BTreeMap<String, Value>> = Vec::new();
    for text in texts {
        let dict =
            serde_json::from_str(text).map_err(|e| StateError::Damaged(format!("plugin: {e}")))?;
        dicts.push(dict);
    }
    Ok(plugin_infos(dicts))
}

fn plugin_infos(dicts: Vec<BTreeMap<String, Value>>) -> Vec<Arc<PluginInfo>> {
    dicts.into_iter().map(info_from_normalised).collect()
}

/// The folded parts of one row.
fn part_of(r: RowParts, infos: &[Arc<PluginInfo>]) -> Result<ExecParts, StateError> {
    let mut plugins = Vec::with_capacity(r.refs.len());
    for (id, first_seen_ms) in r.refs {
        let info = infos
            .get(id as usize)
            .ok_or_else(|| StateError::Damaged(format!("plugin {id} is not in the state")))?;
        plugins.push(Plugin {
            info: info.clone(),
            first_seen_ms,
        });
    }
    plugins.sort_by(|a, b| a.key().cmp(b.key()));
    plugins.dedup_by(|a, b| a.key() == b.key());
    Ok(ExecParts {
        execution_id: r.execution_id,
        variant: r.variant,
        started_ms: r.started,
        finished_ms: r.started + r.runtime,
        exit_code: r.exit_code,
        ip_hashes: r.ips,
        plugins,
        event_count: r.events,
        position: Default::default(),
        weight: r.weight,
        presence_months: r.months,
    })
}

fn carry_from(
    head: Head,
    rows: Vec<RowParts>,
    texts: Interner,
) -> Result<(Carry, Projects), StateError> {
    let infos = plugin_infos(head.plugins);
    let mut carry = Carry {
        opt_outs: head.opt_outs,
        structured: head.structured,
        event_ids: head.ids,
        newest_event_ms: head.newest,
        texts,
        ..Carry::default()
    };
    for r in rows {
        keep(part_of(r, &infos)?, &mut carry);
    }
    Ok((carry, head.projects))
}

/// What the state's history holds, read on a core of its own: its rows, how many the carried text
/// held and the projects of the returned part, and the dormant part.
type HistoryRead = (Carry, (usize, BTreeSet<String>), Option<Dormant>);

impl TapState {
    /// Only the input bookmarks of a state (cheap: the ledger is not decoded), to find out whether
    /// anything is new before paying for the rest.
    pub fn bookmarks_of(state: &StateFields<'_>) -> Option<Vec<InputBookmark>> {
        if !state
            .get::<u64>("version")
            .is_some_and(|v| READS.contains(&v))
        {
            return None;
        }
        state.get("inputs")
    }

    /// [`TapState::from_fields`] of a state given as a JSON value (tests and tools).
    pub fn from_value(state: Value) -> Result<Option<TapState>, StateError> {
        let text = StateText::from_value(&state);
        let fields = text
            .fields()
            .map_err(|e| StateError::Damaged(e.to_string()))?;
        TapState::from_fields(fields)
    }

    /// Read the tap's part of a Singer state. `Ok(None)`: no tap state in it (a first run); a state of
    /// version 1 (from before incremental runs) only carries alarms sent and is read as such.
    pub fn from_fields(fields: StateFields<'_>) -> Result<Option<TapState>, StateError> {
        if !fields.has_tap() {
            return Ok(None);
        }
        // the history and the dormant part (most of a large state) are cut out of the state's text,
        // not copied: a state carries them on as they were read
        let (history_text, dormant_text) =
            (fields.large_text("history")?, fields.large_text("dormant")?);
        let settled_text = fields.large_text("ledger_settled")?;
        let returned_text = fields.large_text("history_returned")?;
        let ledger_text = fields.large_text("ledger")?;
        let tap = &Value::Object(fields.small_values());
        let alarms_sent = tap.get("alarms_sent").cloned().unwrap_or(Value::Null);
        let version = match tap.get("version").and_then(Value::as_u64) {
            // before incremental runs: nothing to resume from (alarms sent are read from the raw state)
            Some(1) => return Ok(None),
            Some(v) if READS.contains(&v) => v,
            other => {
                return Err(StateError::Version {
                    found: other.map_or_else(|| tap["version"].to_string(), |v| v.to_string()),
                });
            }
        };
        let inputs: Vec<InputBookmark> =
            serde_json::from_value(tap.get("inputs").cloned().unwrap_or(Value::Array(vec![])))
                .map_err(|e| StateError::Damaged(format!("inputs: {e}")))?;
        // the history (and the dormant part's entries) are unpacked and read on another core while
        // the ledger is read
        let (carry, projects, history, dormant, settled) = std::thread::scope(|scope| {
            let unpacking = match history_text.as_deref() {
                _ if version < 4 => None,
                Some(history) => Some(scope.spawn(move || -> Result<HistoryRead, StateError> {
                    let bytes = unpack_history(history)?;
                    // room for every execution the state holds and the new ones of a run
                    let total = tap.get("executions").and_then(Value::as_u64).unwrap_or(0);
                    let total = usize::try_from(total).unwrap_or(0).min(bytes.len() / 8);
                    let mut rows = Carry {
                        executions: Vec::with_capacity(total + total / 16 + 4096),
                        ..Carry::default()
                    };
                    let n = decode_history(&bytes, &mut rows)?;
                    drop(bytes);
                    let returned = match returned_text.as_deref() {
                        Some(text) => {
                            let (executions, parts) = (rows.executions.len(), rows.parts.len());
                            decode_history(&unpack_history(text)?, &mut rows)?;
                            let of_parts = rows.parts[parts..]
                                .iter()
                                .filter_map(|p| p.variant.project_id.as_deref());
                            rows.executions[executions..]
                                .iter()
                                .map(|x| &*x.project_id)
                                .chain(of_parts)
                                .map(str::to_string)
                                .collect()
                        }
                        None => BTreeSet::new(),
                    };
                    let dormant = match (dormant_text, tap.get("dormant_cut")) {
                        _ if version < 5 => None,
                        (Some(text), Some(cut)) => {
                            Some(Dormant::read(text, cut.as_i64().unwrap_or(i64::MIN))?)
                        }
                        _ => return Err(StateError::Damaged("no dormant history".into())),
                    };
                    Ok((rows, (n, returned), dormant))
                })),
                _ => return Err(StateError::Damaged("no history".into())),
            };
            let (mut carry, projects) = match ledger_text.as_deref() {
                Some(text) => decode_carry(text, version)?,
                None => return Err(StateError::Damaged("no ledger".into())),
            };
            let settled = match (
                settled_text,
                tap.get("settled_before").and_then(Value::as_i64),
            ) {
                (Some(text), Some(before_ms)) => {
                    let rows = decode_history(&unpack_settled(&text)?, &mut carry)?;
                    Some(Settled {
                        text,
                        rows,
                        before_ms,
                    })
                }
                (None, _) => None,
                (Some(_), None) => {
                    return Err(StateError::Damaged(
                        "settled ledger without its bound".into(),
                    ));
                }
            };
            let (history_rows, dormant) = match unpacking {
                Some(unpacking) => {
                    let (rows, n, dormant) = unpacking
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                    carry.absorb_rows(rows);
                    (Some(n), dormant)
                }
                None => (None, None),
            };
            Ok((carry, projects, history_rows, dormant, settled))
        })?;
        let history = history
            .zip(history_text)
            .map(|((rows, returned), text)| History {
                text,
                rows,
                returned,
            });
        let as_of = tap
            .get("as_of")
            .and_then(Value::as_str)
            .and_then(crate::kpi::calendar::parse_day);
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
            history,
            dormant,
            settled,
        }))
    }

    /// The STATE value with these executions in its ledger and this history.
    pub fn to_value<'a>(
        &'a self,
        executions: impl IntoIterator<Item = LedgerEntry<'a>>,
        history: HistoryOut<'a>,
        dormant: DormantPart<'a>,
    ) -> Result<Value, StateError> {
        serde_json::to_value(self.encode(executions, None, history, dormant)?)
            .map_err(|e| StateError::Damaged(e.to_string()))
    }

    /// The STATE value with these executions in its ledger (besides the carry's parts) and this
    /// history, ready to write: both are held compressed and made base64 as they are written.
    pub fn encode<'a>(
        &'a self,
        executions: impl IntoIterator<Item = LedgerEntry<'a>>,
        settled: Option<SettledOut<'a>>,
        history: HistoryOut<'a>,
        dormant: DormantPart<'a>,
    ) -> Result<EncodedState, StateError> {
        // the history, the dormant part and the settled ledger are encoded on another core while the
        // rest of the ledger is
        let parts = || -> Result<_, StateError> {
            let settled = match settled {
                None => None,
                Some(SettledOut::Carried(s)) => Some((Blob::carried(s.text), s.rows, s.before_ms)),
                Some(SettledOut::Rows(rows, before_ms)) => {
                    let n = rows.len();
                    Some((Blob::packed(&encode_history(rows)?), n, before_ms))
                }
            };
            let dormant = match dormant {
                DormantPart::Carried(d) => {
                    (Blob::carried(d.text), Some(d.cut_day), d.entries.len())
                }
                DormantPart::Rows(projects, cut) => {
                    let n = projects.len();
                    (Blob::encoded(dormant::encode(projects)?), cut, n)
                }
            };
            let history = match history {
                HistoryOut::Carried(History { text, rows, .. }, returned) => {
                    let n = returned.len();
                    let returned = match returned.is_empty() {
                        true => None,
                        false => Some(Blob::packed(&encode_history(returned)?)),
                    };
                    (Blob::carried(text), rows + n, returned)
                }
                HistoryOut::Rows(rows) => {
                    let n = rows.len();
                    (Blob::packed(&encode_history(rows)?), n, None)
                }
            };
            Ok((dormant, history, settled))
        };
        // one part after the other: the cores are busy making records meanwhile, and the buffers of
        // one part are freed before the next is encoded
        let ledger = encode_carry(&self.carry, executions, &self.projects);
        let parts = parts();
        let ((dormant, dormant_cut, dormant_projects), (history, history_rows, returned), settled) =
            parts?;
        let (ledger, rows) = ledger?;
        let settled_rows = settled.as_ref().map_or(0, |s| s.1);
        let settled_before = settled.as_ref().map(|s| s.2);
        let value = json!({
            "bookmarks": {},
            "tap_kpis": {
                "version": STATE_VERSION,
                "as_of": self.as_of.map(crate::kpi::calendar::fmt_day),
                "inputs": self.inputs,
                "projects": self.projects.len(),
                "executions": rows + settled_rows + history_rows,
                "settled_before": settled_before,
                "dormant_projects": dormant_projects,
                "dormant_cut": dormant_cut,
                "cut_day": self.cut_day,
                "health": health_text(&self.health)?,
                "alarms_sent": self.alarms_sent,
            }
        });
        Ok(EncodedState {
            value,
            dormant,
            history,
            returned,
            ledger: Blob::packed(&ledger),
            settled: settled.map(|s| s.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn part(id: &str, project: Option<&str>) -> ExecParts {
        let info = info_from_normalised(
            [
                ("name_hash".to_string(), json!("abc")),
                ("category".to_string(), json!("extractors")),
            ]
            .into_iter()
            .collect(),
        );
        ExecParts {
            execution_id: id.into(),
            variant: Variant {
                project_id: project.map(Text::from),
                command: Some("run".into()),
                se_command: Some("elt".into()),
                is_ci: Some(false),
                ..Default::default()
            },
            started_ms: 1_700_000_000_000,
            finished_ms: 1_700_000_009_000,
            exit_code: Some(0),
            ip_hashes: [Text::from("h")].into_iter().collect(),
            plugins: vec![Plugin {
                info,
                first_seen_ms: Some(1_700_000_000_500),
            }],
            event_count: 4,
            position: Default::default(),
            weight: 3,
            presence_months: [24_300, 24_301].into_iter().collect(),
        }
    }

    fn carry() -> Carry {
        Carry {
            parts: vec![part("x0", None)],
            opt_outs: [("p1".to_string(), 5)].into_iter().collect(),
            structured: [("p2".to_string(), (1, 9))].into_iter().collect(),
            event_ids: vec![(u128::MAX - 3, -7), (42, 1_700_000_000_000)],
            newest_event_ms: Some(1_700_000_009_000),
            ..Carry::default()
        }
    }

    fn ledger_text(ledger: &Value) -> String {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        gz.write_all(ledger.to_string().as_bytes()).unwrap();
        b64().encode(gz.finish().unwrap())
    }

    #[test]
    fn a_version_2_state_is_read() {
        let ledger = json!({
            "plugins": [],
            "parts": [["x1", {"p": "p1", "s": "explicit", "c": "run"}, 100, 5, 0, [], [], 2, 1, []]],
            "opt_outs": {},
            "structured": {},
            "ids": "",
            "newest": 105,
            "projects": {"p1": ["explicit", 100]}
        });
        let state =
            json!({"tap_kpis": {"version": 2, "inputs": [], "ledger": ledger_text(&ledger)}});
        let text = StateText::from_value(&state);
        assert_eq!(
            TapState::bookmarks_of(&text.fields().unwrap()),
            Some(vec![])
        );
        let back = TapState::from_value(state.clone()).unwrap().unwrap();
        let x = &back.carry.executions[0];
        assert_eq!(&*x.execution_id, "x1");
        assert_eq!(&*x.project_id, "p1");
        assert_eq!(x.project_id_source.as_deref(), Some("explicit"));
        assert_eq!((x.started_ms, x.finished_ms, x.event_count), (100, 105, 2));
    }

    /// A version-3 ledger, in [`LedgerRef`]'s layout, from rows written out by hand.
    #[derive(Serialize)]
    struct Ledger<'a> {
        texts: Vec<&'a str>,
        plugins: Vec<&'a str>,
        parts: Vec<Row<'a>>,
        opt_outs: BTreeMap<String, i64>,
        structured: BTreeMap<String, (i64, i64)>,
        ids: Vec<(u128, i64)>,
        newest: Option<i64>,
        projects: Projects,
    }

    #[test]
    fn a_row_referring_to_a_missing_text_is_damage() {
        let row = |text: u32| {
            Row(
                "x1",
                [1, text, 0, 0, 0, 0, 0, 0],
                None,
                100,
                5,
                Some(0),
                vec![],
                vec![],
                2,
                1,
                vec![],
            )
        };
        let ledger = |text: u32| {
            let bytes = postcard::to_stdvec(&Ledger {
                texts: vec!["p1", "explicit"],
                plugins: vec![],
                parts: vec![row(text)],
                opt_outs: BTreeMap::new(),
                structured: BTreeMap::new(),
                ids: vec![],
                newest: Some(105),
                projects: BTreeMap::new(),
            })
            .unwrap();
            let packed = zstd::encode_all(bytes.as_slice(), ZSTD_LEVEL).unwrap();
            json!({"tap_kpis": {"version": 3, "inputs": [], "ledger": b64().encode(packed)}})
        };
        let good = TapState::from_value(ledger(2)).unwrap().unwrap();
        assert_eq!(
            good.carry.executions[0].project_id_source.as_deref(),
            Some("explicit")
        );
        let e = TapState::from_value(ledger(7)).unwrap_err();
        assert!(e.to_string().contains("text 7"), "{e}");
    }

    #[test]
    fn a_blob_that_is_not_plain_base64_is_escaped_when_written() {
        let encoded = EncodedState {
            value: json!({"tap_kpis": {"version": STATE_VERSION}}),
            dormant: Blob::carried("a\"b\\c\n".into()),
            history: Blob::carried("QUJD".into()),
            returned: None,
            ledger: Blob::carried("é".into()),
            settled: Some(Blob::carried("QUJE".into())),
        };
        assert!(!encoded.dormant.plain && encoded.history.plain && !encoded.ledger.plain);
        let mut written = Vec::new();
        encoded.write_json(&mut written).unwrap();
        let text = String::from_utf8(written).unwrap();
        assert_eq!(text, serde_json::to_string(&encoded).unwrap());
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["tap_kpis"]["dormant"], "a\"b\\c\n");
        assert_eq!(back["tap_kpis"]["ledger"], "é");
        assert_eq!(back["tap_kpis"]["ledger_settled"], "QUJE");
    }

    #[test]
    fn the_settled_ledger_reads_back_and_is_carried_while_it_holds() {
        let execution = |id: &str, later_ms: i64| {
            let mut p = part(id, Some("p1"));
            p.finished_ms += later_ms;
            p.into_execution(&mut Default::default()).unwrap()
        };
        let (old, open) = (execution("x3", 0), execution("x1", 60_000));
        let before = old.finished_ms + 1;
        let state = TapState {
            carry: carry(),
            ..Default::default()
        };
        let encode = |state: &TapState, settled| {
            let entry = LedgerEntry::Execution(Kept::whole(&open));
            let encoded = state
                .encode(
                    [entry],
                    settled,
                    HistoryOut::Rows(vec![]),
                    DormantPart::Rows(vec![], None),
                )
                .unwrap();
            serde_json::to_value(&encoded).unwrap()
        };
        let rows = vec![LedgerEntry::Execution(Kept::whole(&old))];
        let value = encode(&state, Some(SettledOut::Rows(rows, before)));
        assert!(value["tap_kpis"]["ledger_settled"].is_string(), "{value}");
        assert_eq!(value["tap_kpis"]["settled_before"], before);
        let back = TapState::from_value(value.clone()).unwrap().unwrap();
        let ids: Vec<&str> = back
            .carry
            .executions
            .iter()
            .map(|x| &*x.execution_id)
            .collect();
        assert_eq!(ids, ["x1", "x3"]);
        let settled = back.settled.clone().unwrap();
        assert_eq!((settled.rows, settled.before_ms), (1, before));
        // carried, the text is written as it was read
        let again = encode(&back, Some(SettledOut::Carried(settled.clone())));
        assert_eq!(
            again["tap_kpis"]["ledger_settled"],
            value["tap_kpis"]["ledger_settled"]
        );
        // it holds while no new event touched its executions and as many finished before its bound
        let untouched = FastSet::default();
        let recent = [&open, &old];
        let split = |earlier: Option<Settled>, touched: &FastSet<ExecutionId>| {
            let (out, rest) = settle_ledger(&recent, earlier, Some(before + 5), touched);
            let rest: Vec<&str> = rest.iter().map(|x| &*x.execution_id).collect();
            match out {
                Some(SettledOut::Carried(_)) => ("carried", rest),
                Some(SettledOut::Rows(rows, at)) => {
                    assert_eq!(at, before + 5);
                    assert_eq!(rows.len() + rest.len(), 2);
                    ("written", rest)
                }
                None => ("none", rest),
            }
        };
        assert_eq!(
            split(Some(settled.clone()), &untouched),
            ("carried", vec!["x1"])
        );
        let touched: FastSet<ExecutionId> = [ExecutionId::from("x3")].into_iter().collect();
        assert_eq!(split(Some(settled.clone()), &touched).0, "written");
        let more = Settled {
            rows: 2,
            ..settled.clone()
        };
        assert_eq!(split(Some(more), &untouched).0, "written");
        assert_eq!(split(None, &untouched).0, "written");
        // a settled part without its bound is refused
        let mut damaged = value.clone();
        damaged["tap_kpis"]
            .as_object_mut()
            .unwrap()
            .remove("settled_before");
        let e = TapState::from_value(damaged).unwrap_err();
        assert!(e.to_string().contains("settled"), "{e}");
    }

    #[test]
    fn rows_that_say_the_same_share_one_profile_and_the_others_read_back_as_they_were() {
        let with = |id: &str, change: &dyn Fn(&mut Variant)| {
            let mut p = part(id, Some("p1"));
            change(&mut p.variant);
            p.into_execution(&mut Default::default()).unwrap()
        };
        let written = [
            with("x1", &|_| {}),
            with("x2", &|v| v.is_ci = Some(true)),
            with("x3", &|v| v.command = Some("elt".into())),
            with("x4", &|_| {}),
            with("x5", &|v| v.meltano_version = Some("3.5.0".into())),
        ];
        let state = TapState {
            as_of: Some(19_700),
            projects: BTreeMap::new(),
            inputs: vec![],
            carry: Carry::default(),
            alarms_sent: json!([]),
            cut_day: Some(19_600),
            history: None,
            dormant: None,
            settled: None,
            health: BTreeMap::new(),
        };
        let value = state
            .to_value(
                written
                    .iter()
                    .map(|x| LedgerEntry::Execution(Kept::whole(x))),
                HistoryOut::Rows(vec![]),
                DormantPart::Rows(vec![], None),
            )
            .unwrap();
        let back = TapState::from_value(value).unwrap().unwrap();
        let mut read: Vec<&Execution> = back.carry.executions.iter().collect();
        read.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
        assert_eq!(read.len(), written.len());
        for (r, w) in read.iter().zip(&written) {
            assert_eq!((*r).clone().into_parts(), w.clone().into_parts());
            assert_eq!(r.pipeline_id, w.pipeline_id);
        }
        // x1 and x4 say the same: one shared copy; the others differ in one field each
        assert!(Arc::ptr_eq(&read[0].profile, &read[3].profile));
        assert!(Arc::ptr_eq(&read[0].command_line, &read[3].command_line));
        assert!(!Arc::ptr_eq(&read[0].profile, &read[1].profile));
        assert!(!Arc::ptr_eq(&read[0].command_line, &read[2].command_line));
        assert!(!Arc::ptr_eq(&read[0].profile, &read[4].profile));
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
            history: None,
            dormant: None,
            settled: None,
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
        // an execution is written as the parts it was folded from
        let execution = part("x1", Some("p1"))
            .into_execution(&mut Default::default())
            .unwrap();
        let old = part("x2", Some("p1"))
            .into_execution(&mut Default::default())
            .unwrap();
        let history = || HistoryOut::Rows(vec![LedgerEntry::Execution(Kept::whole(&old))]);
        let asleep = part("x9", Some("p9"))
            .into_execution(&mut Default::default())
            .unwrap();
        let dormant = || {
            DormantPart::Rows(
                vec![DormantOut {
                    project_id: "p9",
                    months: vec![24_300, 24_301],
                    multi: true,
                    rows: vec![LedgerEntry::Execution(Kept::whole(&asleep))],
                }],
                Some(19_600),
            )
        };
        let value = state
            .to_value(
                [LedgerEntry::Execution(Kept::whole(&execution))],
                history(),
                dormant(),
            )
            .unwrap();
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
        // written as it streams, the message is the plain JSON of the same value, keys in order
        let entry = LedgerEntry::Execution(Kept::whole(&execution));
        let encoded = state.encode([entry], None, history(), dormant()).unwrap();
        let streamed = serde_json::to_string(&encoded).unwrap();
        assert_eq!(streamed, value.to_string());
        // and written by hand, with the blobs copied between their quotes, it is the same text
        let mut written = Vec::new();
        encoded.write_json(&mut written).unwrap();
        assert_eq!(String::from_utf8(written).unwrap(), streamed);
        let at = |key: &str| streamed.find(&format!("\"{key}\":")).unwrap();
        assert!(at("dormant") < at("health"));
        assert!(at("health") < at("history") && at("history") < at("inputs"));
        assert!(at("inputs") < at("ledger") && at("ledger") < at("projects"));
        assert_eq!(value["tap_kpis"]["executions"], 3);
        let back = TapState::from_value(value.clone()).unwrap().unwrap();
        assert_eq!(back.as_of, Some(19_700));
        assert_eq!(back.projects, state.projects);
        assert_eq!(back.cut_day, state.cut_day);
        assert_eq!(back.health, state.health);
        assert_eq!(back.carry.parts, vec![part("x0", None)]);
        let carried = back.history.clone().unwrap();
        assert_eq!(carried.rows, 1);
        // the dormant project is read as its cohort's counts; its rows only when asked for
        let asleep_back = back.dormant.clone().unwrap();
        assert_eq!(asleep_back.cut_day, 19_600);
        let [entry] = &asleep_back.entries[..] else {
            panic!("{:?}", asleep_back.entries)
        };
        assert_eq!(entry.project_id, "p9");
        assert_eq!(
            (entry.months.as_slice(), entry.multi),
            (&[24_300, 24_301][..], true)
        );
        let mut unpacked = Carry::default();
        assert!(asleep_back.load(vec![], &mut unpacked).unwrap().is_empty());
        assert!(unpacked.executions.is_empty());
        let p9 = asleep_back.entries.iter().filter(|e| e.project_id == "p9");
        let loaded = asleep_back.load(p9.collect(), &mut unpacked).unwrap();
        assert!(loaded.contains("p9"));
        let [x9] = &unpacked.executions[..] else {
            panic!("{:?}", unpacked.executions)
        };
        assert_eq!(x9.clone().into_parts(), part("x9", Some("p9")));
        // rows with a project are read as executions, the ledger's and the history's (in no set order)
        let mut read: Vec<&Execution> = back.carry.executions.iter().collect();
        read.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
        let [x1, x2] = read[..] else {
            panic!("{:?}", back.carry.executions)
        };
        assert_eq!(x1.clone().into_parts(), part("x1", Some("p1")));
        assert_eq!(x2.clone().into_parts(), part("x2", Some("p1")));
        // the history read is written again as it was: the same as encoding its rows anew
        let again = back
            .to_value(
                [LedgerEntry::Execution(Kept::whole(x1))],
                HistoryOut::Carried(carried.clone(), vec![]),
                DormantPart::Carried(asleep_back.clone()),
            )
            .unwrap();
        let anew = back
            .to_value(
                [LedgerEntry::Execution(Kept::whole(x1))],
                HistoryOut::Rows(vec![LedgerEntry::Execution(Kept::whole(x2))]),
                DormantPart::Rows(
                    vec![DormantOut {
                        project_id: "p9",
                        months: vec![24_300, 24_301],
                        multi: true,
                        rows: vec![LedgerEntry::Execution(Kept::whole(x9))],
                    }],
                    Some(19_600),
                ),
            )
            .unwrap();
        assert_eq!(again, anew);
        // the rows of a dormant project that returned are written beside the carried history and
        // read back with it, their project named
        let with_returned = back
            .to_value(
                [LedgerEntry::Execution(Kept::whole(x1))],
                HistoryOut::Carried(
                    carried.clone(),
                    vec![LedgerEntry::Execution(Kept::whole(x9))],
                ),
                DormantPart::Carried(asleep_back.clone()),
            )
            .unwrap();
        assert_eq!(
            with_returned["tap_kpis"]["history"],
            value["tap_kpis"]["history"]
        );
        assert_eq!(with_returned["tap_kpis"]["executions"], 4);
        let read = TapState::from_value(with_returned).unwrap().unwrap();
        let history = read.history.unwrap();
        assert_eq!(history.rows, 1);
        assert_eq!(history.returned, BTreeSet::from(["p9".to_string()]));
        let mut ids: Vec<&str> = read
            .carry
            .executions
            .iter()
            .map(|x| &*x.execution_id)
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, ["x1", "x2", "x9"]);
        // a damaged or missing history is named as such
        let mut damaged = value.clone();
        damaged["tap_kpis"]["history"] = json!("AAAA");
        let e = TapState::from_value(damaged.clone()).unwrap_err();
        assert!(e.to_string().contains("history"), "{e}");
        damaged["tap_kpis"]
            .as_object_mut()
            .unwrap()
            .remove("history");
        let e = TapState::from_value(damaged.clone()).unwrap_err();
        assert!(e.to_string().contains("no history"), "{e}");
        assert_eq!(again["tap_kpis"]["history"], value["tap_kpis"]["history"]);
        assert_eq!(back.carry.opt_outs, state.carry.opt_outs);
        assert_eq!(back.carry.structured, state.carry.structured);
        let mut ids = state.carry.event_ids.clone();
        ids.sort_unstable();
        assert_eq!(back.carry.event_ids, ids);
        assert_eq!(back.carry.newest_event_ms, state.carry.newest_event_ms);
    }

    #[test]
    fn other_versions_and_damage_are_refused_with_a_message() {
        let e = TapState::from_value(json!({"tap_kpis": {"version": 99}})).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
        let e =
            TapState::from_value(json!({"tap_kpis": {"version": 2, "ledger": "!!"}})).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        assert!(
            TapState::from_value(json!({"bookmarks": {}}))
                .unwrap()
                .is_none()
        );
        assert!(
            TapState::from_value(json!({"tap_kpis": {"version": 1, "alarms_sent": []}}))
                .unwrap()
                .is_none()
        );
    }
}
