//! Normalisation: decoded events become the facts the KPI engine works on. Duplicates are removed,
//! events are grouped into executions (one Meltano process each), executions into projects, and each
//! pipeline run gets its pipeline id (kpis.md §1–§4).

pub mod arena;
mod earlier_index;
mod event_store;
mod execution_id;
mod interned;
pub mod plugins;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::sync::Arc;

/// Hash maps keyed by ids from the input: a fast hash with a per-run random seed.
type HashMap<K, V> = FastMap<K, V>;

use crate::decode::{Problem, Reason, excerpt};

use crate::event::{Event, EventKind, Position};
use crate::kpi::calendar::day_of;
use earlier_index::{Earlier, EarlierIndex};
use event_store::{EventStore, LiteEvent, NO_EVENT, NO_PLUGINS};
pub use execution_id::ExecutionId;
use interned::Interned;
pub use plugins::Plugin;
pub use text::{FastIndex, FastMap, FastSet, Interner, Text, TextSet};

/// Commands that count as executing something (kpis.md §2).
pub const EXEC_COMMANDS: [&str; 5] = ["invoke", "el", "elt", "run", "test"];
/// Commands that make a pipeline run when plugins are present (kpis.md §3).
pub const PIPELINE_COMMANDS: [&str; 3] = ["el", "elt", "run"];

/// What an execution's events say about where it ran: the project and its environment. Most
/// executions of a project say the same, so they share one copy ([`Execution`] derefs to it); what
/// was run varies within a project, so it is a [`CommandLine`] of its own, shared across the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Profile {
    pub project_id: Text,
    pub project_id_source: Option<Text>,
    pub environment_hash: Option<Text>,
    pub meltano_version: Option<Text>,
    pub python_version: Option<Text>,
    pub is_ci: Option<bool>,
}

/// The command an execution ran, as its events say it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CommandLine {
    /// The command: the cli contexts' one, else the legacy structured event's.
    pub command: Option<Text>,
    /// What the cli contexts said (kept apart from `se_command` so that later events fold exactly).
    pub cli_command: Option<Text>,
    /// What the legacy structured events said.
    pub se_command: Option<Text>,
    pub sub_command: Option<Text>,
}

/// One Meltano CLI invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    pub execution_id: ExecutionId,
    pub profile: Arc<Profile>,
    /// What was run: a fleet runs few distinct commands, so executions share these too.
    pub command_line: Arc<CommandLine>,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub exit_code: Option<i64>,
    pub event_count: u32,
    /// Distinct plugins, in pipeline order.
    pub plugins: Box<[Plugin]>,
    /// Set when the execution is a pipeline run.
    pub pipeline_id: Option<Text>,
    /// Shared: a project's executions mostly come from one address.
    pub ip_hashes: Arc<TextSet>,
    /// How many executions this one stands for in lifetime counts: 1, or, in history summarised by
    /// the incremental state, the size of its group (0 for an execution kept only for its time).
    pub weight: u32,
    /// Months (ordinals) of summarised executions of its project, for cohort activity.
    pub presence_months: Box<[i64]>,
}

impl std::ops::Deref for Execution {
    type Target = Profile;
    fn deref(&self) -> &Profile {
        &self.profile
    }
}

impl std::ops::DerefMut for Execution {
    /// A profile to change: the execution's own copy once it differs from the shared one.
    fn deref_mut(&mut self) -> &mut Profile {
        Arc::make_mut(&mut self.profile)
    }
}

/// Hands out the shared profiles, command lines and pipeline ids of the executions being built.
#[derive(Debug, Clone, Default)]
pub struct ExecutionTables {
    /// By a hash of the addresses of their strings: the strings are shared copies, so the same
    /// addresses are the same profile, found without hashing any text (a profile whose equal strings
    /// are separate copies, or whose hash is taken, is merely not shared). The profile held keeps its
    /// strings, so no address is reused while its entry exists.
    profiles: HashMap<u64, Arc<Profile>>,
    /// As `profiles`.
    command_lines: HashMap<u64, Arc<CommandLine>>,
    pipeline_ids: Interner,
    /// Pipeline ids by a hash of the addresses of what they are made of, as `profiles`: a project's
    /// runs of one pipeline share their plugins' and strings' copies, and its id is hashed once.
    pipeline_memo: HashMap<u64, PipelineMemo>,
    /// The profile handed out last: executions read from a state come project by project, most
    /// of a project's with one profile, and comparing with the last one spares a probe of
    /// `profiles` (a cache miss in a table of a hundred thousand) for each.
    last_profile: Option<Arc<Profile>>,
    /// Sets of one or two IP hashes, as `profiles`.
    ip_hashes: HashMap<u64, Arc<TextSet>>,
    /// The empty set, shared.
    no_ip_hashes: Arc<TextSet>,
}

/// A pipeline id, with the shared copies it was made of (held, so that their addresses stay theirs).
#[derive(Debug, Clone)]
struct PipelineMemo {
    plugins: Box<[Arc<plugins::PluginInfo>]>,
    environment_hash: Option<Text>,
    project_id: Text,
    id: Text,
}

impl PipelineMemo {
    fn made_of(
        &self,
        plugins: &[Plugin],
        environment_hash: Option<&Text>,
        project_id: &Text,
    ) -> bool {
        self.plugins.len() == plugins.len()
            && self
                .plugins
                .iter()
                .zip(plugins)
                .all(|(a, b)| Arc::ptr_eq(a, &b.info))
            && address(self.environment_hash.as_ref()) == address(environment_hash)
            && Arc::ptr_eq(&self.project_id, project_id)
    }
}

/// A value made of shared strings, found again by their addresses.
trait ByAddress {
    type Key: PartialEq + std::hash::Hash;
    /// The addresses of its strings (0 for none), with any other field.
    fn address_key(&self) -> Self::Key;
}

/// Where a shared string is held (0 for none).
fn address(t: Option<&Text>) -> usize {
    t.map_or(0, |t| Arc::as_ptr(t) as *const u8 as usize)
}

impl ByAddress for Profile {
    type Key = ([usize; 5], Option<bool>);
    fn address_key(&self) -> Self::Key {
        let addresses = [
            address(Some(&self.project_id)),
            address(self.project_id_source.as_ref()),
            address(self.environment_hash.as_ref()),
            address(self.meltano_version.as_ref()),
            address(self.python_version.as_ref()),
        ];
        (addresses, self.is_ci)
    }
}

impl ByAddress for TextSet {
    /// Exact for sets of at most two, the only ones shared.
    type Key = [usize; 2];
    fn address_key(&self) -> Self::Key {
        let mut at = self.iter();
        [address(at.next()), address(at.next())]
    }
}

impl ByAddress for CommandLine {
    type Key = [usize; 4];
    fn address_key(&self) -> Self::Key {
        [
            address(self.command.as_ref()),
            address(self.cli_command.as_ref()),
            address(self.se_command.as_ref()),
            address(self.sub_command.as_ref()),
        ]
    }
}

/// The shared copy of `value` in `held`.
fn share<T: ByAddress>(held: &mut HashMap<u64, Arc<T>>, value: T) -> Arc<T> {
    let key = value.address_key();
    match held.entry(held.hasher().hash_one(&key)) {
        std::collections::hash_map::Entry::Occupied(slot) => {
            let shared = slot.get();
            if shared.address_key() == key {
                shared.clone()
            } else {
                Arc::new(value)
            }
        }
        std::collections::hash_map::Entry::Vacant(slot) => slot.insert(Arc::new(value)).clone(),
    }
}

impl ExecutionTables {
    /// Take in the tables of executions built apart (on another thread). Their strings are other
    /// copies, so their profiles are kept beside these rather than merged: sharing is only thrift.
    pub fn absorb(&mut self, other: ExecutionTables) {
        for (key, profile) in other.profiles {
            self.profiles.entry(key).or_insert(profile);
        }
        for (key, command_line) in other.command_lines {
            self.command_lines.entry(key).or_insert(command_line);
        }
        for (key, set) in other.ip_hashes {
            self.ip_hashes.entry(key).or_insert(set);
        }
        self.pipeline_ids.absorb(other.pipeline_ids);
        for (key, memo) in other.pipeline_memo {
            self.pipeline_memo.entry(key).or_insert(memo);
        }
    }

    /// The shared pipeline id of a run of these plugins (in pipeline order) in this environment and
    /// project.
    fn pipeline_id(
        &mut self,
        plugins: &[Plugin],
        environment_hash: Option<&Text>,
        project_id: &Text,
    ) -> Text {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut hasher = self.pipeline_memo.hasher().build_hasher();
        for p in plugins {
            (Arc::as_ptr(&p.info) as usize).hash(&mut hasher);
        }
        address(environment_hash).hash(&mut hasher);
        address(Some(project_id)).hash(&mut hasher);
        let key = hasher.finish();
        if let Some(memo) = self.pipeline_memo.get(&key)
            && memo.made_of(plugins, environment_hash, project_id)
        {
            return memo.id.clone();
        }
        let id = self.pipeline_ids.get(&plugins::pipeline_id(
            plugins,
            environment_hash.map(|t| &**t),
            project_id,
        ));
        self.pipeline_memo.insert(
            key,
            PipelineMemo {
                plugins: plugins.iter().map(|p| Arc::clone(&p.info)).collect(),
                environment_hash: environment_hash.cloned(),
                project_id: project_id.clone(),
                id: id.clone(),
            },
        );
        id
    }

    /// The shared copy of `profile`.
    pub fn profile(&mut self, profile: Profile) -> Arc<Profile> {
        if let Some(last) = &self.last_profile
            && last.address_key() == profile.address_key()
        {
            return Arc::clone(last);
        }
        let shared = share(&mut self.profiles, profile);
        self.last_profile = Some(Arc::clone(&shared));
        shared
    }

    /// The shared copy of a set of IP hashes (a set of more than two is not shared).
    pub fn ip_hashes(&mut self, set: TextSet) -> Arc<TextSet> {
        match set.len() {
            0 => Arc::clone(&self.no_ip_hashes),
            1 | 2 => share(&mut self.ip_hashes, set),
            _ => Arc::new(set),
        }
    }

    /// The shared copy of `command_line`.
    pub fn command_line(&mut self, command_line: CommandLine) -> Arc<CommandLine> {
        share(&mut self.command_lines, command_line)
    }
}

impl Execution {
    /// A placeholder for a slot whose execution was taken out.
    fn vacant() -> Self {
        Execution {
            execution_id: ExecutionId::from(""),
            profile: Arc::default(),
            command_line: Arc::default(),
            started_ms: 0,
            finished_ms: 0,
            exit_code: None,
            event_count: 0,
            plugins: Box::default(),
            pipeline_id: None,
            ip_hashes: Arc::default(),
            weight: 0,
            presence_months: Box::default(),
        }
    }

    /// The parts this execution was folded from, to fold in events of a later run.
    pub fn into_parts(self) -> ExecParts {
        let mut plugins = self.plugins.into_vec();
        plugins.sort_by(|a, b| a.key().cmp(b.key()));
        let p = Arc::unwrap_or_clone(self.profile);
        let c = Arc::unwrap_or_clone(self.command_line);
        ExecParts {
            execution_id: self.execution_id,
            variant: Variant {
                project_id: Some(p.project_id),
                source: p.project_id_source,
                environment_hash: p.environment_hash,
                meltano_version: p.meltano_version,
                python_version: p.python_version,
                is_ci: p.is_ci,
                command: c.cli_command,
                sub_command: c.sub_command,
                se_command: c.se_command,
            },
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            exit_code: self.exit_code,
            ip_hashes: Arc::unwrap_or_clone(self.ip_hashes),
            plugins,
            event_count: self.event_count,
            position: Position::default(),
            weight: self.weight,
            presence_months: self.presence_months.into_vec().into_iter().collect(),
        }
    }

    /// invoke, el, elt, run or test.
    pub fn is_exec(&self) -> bool {
        self.command_line
            .command
            .as_deref()
            .is_some_and(|c| EXEC_COMMANDS.contains(&c))
    }
    /// Exit code 0; a missing exit code is a failure.
    pub fn is_success(&self) -> bool {
        self.exit_code == Some(0)
    }
    /// el, elt or run with at least one plugin.
    pub fn is_pipeline_run(&self) -> bool {
        self.pipeline_id.is_some()
    }
    /// First-to-last event time.
    pub fn runtime_ms(&self) -> i64 {
        self.finished_ms - self.started_ms
    }
}

/// One Meltano project, with the attributes of kpis.md §4 that do not depend on as_of.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub project_id: String,
    /// explicit, derived, random, persisted_random or UNKNOWN.
    pub source: String,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    pub is_ci_only: bool,
    pub opted_out_ms: Option<i64>,
    pub ip_hash_count: usize,
}

/// Everything the KPI engine needs, derived from the input alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Sorted by start time, then execution id.
    pub executions: Vec<Execution>,
    /// Sorted by project id.
    pub projects: Vec<Project>,
    /// Where each execution's project is in `projects` (one per execution, in the same order):
    /// found once here, so that the KPI engine hashes no project id per execution.
    pub project_of: Vec<u32>,
    /// Newest event time read (any kind), epoch ms.
    pub newest_event_ms: Option<i64>,
}

/// Counters of what normalisation removed, for the end-of-run report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NormalizeStats {
    pub events_in: u64,
    pub duplicates: u64,
    pub executions_without_project: u64,
    pub orphan_structured_events: u64,
}

/// What normalisation carries from one run to the next besides the executions themselves: the parts of
/// executions no event has named a project for yet, opt-outs and structured-event sightings by
/// project, and the ids of recent events (to recognise their copies). Read back from a state,
/// `executions` holds every execution the state kept, built with `tables`.
#[derive(Debug, Clone, Default)]
pub struct Carry {
    pub parts: Vec<ExecParts>,
    pub executions: Vec<Execution>,
    /// The shared profiles and pipeline ids of `executions`, for the rest to share.
    pub tables: ExecutionTables,
    /// Earliest opt-out per project.
    pub opt_outs: BTreeMap<String, i64>,
    /// Earliest and latest structured event per project.
    pub structured: BTreeMap<String, (i64, i64)>,
    /// Event ids already counted, with their event time.
    pub event_ids: Vec<(u128, i64)>,
    pub newest_event_ms: Option<i64>,
    /// The shared copies of the parts' strings, for the next run's events to share.
    pub texts: Interner,
}

impl Carry {
    /// Take in the executions and parts of a carry read apart (the state's history, decoded on
    /// another thread). Their order is of no account (executions are sorted once all are built), so
    /// the vector with the more room takes in the other and a million-row vector is not copied.
    pub fn absorb_rows(&mut self, mut other: Carry) {
        if other.executions.capacity() > self.executions.capacity() {
            std::mem::swap(&mut self.executions, &mut other.executions);
        }
        self.append_rows(other);
    }

    /// Take in the executions and parts of a carry read apart, after these and in their order (as
    /// if read after these on the same core).
    pub fn append_rows(&mut self, mut other: Carry) {
        self.executions.append(&mut other.executions);
        self.parts.append(&mut other.parts);
        self.tables.absorb(other.tables);
        self.texts.absorb(other.texts);
    }

    /// The projects of its executions and parts. A project's rows are read one after the other and
    /// share its id's one copy, so an id at the same address as the last one is not hashed again
    /// (worked out before the executions are put in time order, which scatters them).
    pub fn projects(&self) -> FastSet<Text> {
        let mut projects = FastSet::default();
        let mut last: Option<&Text> = None;
        for id in self
            .parts
            .iter()
            .filter_map(|p| p.variant.project_id.as_ref())
            .chain(self.executions.iter().map(|x| &x.project_id))
        {
            if last.is_some_and(|l| Arc::ptr_eq(l, id)) {
                continue;
            }
            last = Some(id);
            if !projects.contains(id) {
                projects.insert(id.clone());
            }
        }
        projects
    }
}

/// What the events read in this run changed (the sets are left empty in a run that extends no earlier
/// one: everything is new).
#[derive(Debug, Clone, Default)]
pub struct Touched {
    pub executions: FastSet<ExecutionId>,
    pub projects: FastSet<String>,
    /// Earliest start among the touched executions and time of any other touched event.
    pub earliest_ms: Option<i64>,
}

/// The result of normalisation.
#[derive(Debug, Default)]
pub struct Normalized {
    pub facts: Facts,
    pub problems: Vec<Problem>,
    pub stats: NormalizeStats,
    /// To hand to the next run.
    pub carry: Carry,
    pub touched: Touched,
}

fn problem(position: &Position, reason: Reason, message: String, raw: String) -> Problem {
    Problem {
        position: position.clone(),
        is_event: true,
        reason,
        message,
        excerpt: excerpt(&raw),
        skipped: true,
    }
}

fn event_summary(e: &Event) -> String {
    format!(
        "eid={} kind={:?} dtm={:?} stm={:?}",
        e.event_id.as_deref().unwrap_or("-"),
        e.kind,
        e.created_ms,
        e.sent_ms
    )
}

/// Milliseconds per day.
const DAY_MS: i64 = 86_400_000;

/// Exact key of an event id: a UUID as its 128 bits, anything else as its MD5 digest; and whether
/// the id is the canonical spelling of its key.
fn event_key(id: &str) -> (u128, bool) {
    match uuid::Uuid::try_parse(id) {
        Ok(u) => (u.as_u128(), is_canonical_uuid(id)),
        Err(_) => (digest_key(id), false),
    }
}

/// The 128 bits of an id that is not taken as a UUID: the MD5 digest of its text.
fn digest_key(id: &str) -> u128 {
    use md5::{Digest, Md5};
    u128::from_be_bytes(Md5::digest(id.as_bytes()).into())
}

/// Where a counted event lives, so that a winning copy read later can retire it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Home {
    /// Index into the normaliser's event arena.
    Execution(u32),
    StateChange(u32),
    Structured(u32),
}

impl Home {
    const KIND_SHIFT: u32 = 62;

    /// The home in 8 bytes (kind in the top two bits): the dedup list holds one per event.
    fn pack(self) -> u64 {
        match self {
            Home::Execution(i) => u64::from(i),
            Home::StateChange(i) => (1 << Self::KIND_SHIFT) | u64::from(i),
            Home::Structured(i) => (2 << Self::KIND_SHIFT) | u64::from(i),
        }
    }

    fn unpack(bits: u64) -> Home {
        let low = bits as u32;
        match bits >> Self::KIND_SHIFT {
            0 => Home::Execution(low),
            1 => Home::StateChange(low),
            _ => Home::Structured(low),
        }
    }
}

/// An event id as the dedup list keys it: two words, so that an entry needs no 16-byte alignment.
type SlotKey = (u64, u64);

fn slot_key(key: u128) -> SlotKey {
    ((key >> 64) as u64, key as u64)
}

fn event_key_of(key: SlotKey) -> u128 {
    (u128::from(key.0) << 64) | u128::from(key.1)
}

/// One event with an id, in reading order: duplicates are found once everything is read, by sorting
/// these 24-byte entries, instead of keeping a hash index of every event while reading.
#[derive(Debug, Clone, Copy)]
struct Sighting {
    key: SlotKey,
    home: u64,
}

/// Buckets the sightings are spread over by a hash of their id: each bucket is sorted in place on
/// its own, so that finding duplicates never needs a second copy of every sighting.
const SIGHTING_BUCKETS: usize = 256;

/// The bucket of an id (its bits mixed, so that ids that share leading bits, such as time-ordered
/// UUIDs, still spread).
fn bucket_of(key: SlotKey) -> usize {
    ((key.0 ^ key.1.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize
}

/// Whether `id` is a UUID spelled the way it prints (lowercase, hyphenated): its text need not be
/// kept to name it in a problem report.
fn is_canonical_uuid(id: &str) -> bool {
    id.len() == 36 && !id.bytes().any(|b| b.is_ascii_uppercase())
}

/// What an execution's events say about it; identical on most events, so stored once per execution.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Variant {
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<Text>,
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Text>,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub environment_hash: Option<Text>,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub meltano_version: Option<Text>,
    #[serde(rename = "y", default, skip_serializing_if = "Option::is_none")]
    pub python_version: Option<Text>,
    #[serde(rename = "ci", default, skip_serializing_if = "Option::is_none")]
    pub is_ci: Option<bool>,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Text>,
    #[serde(rename = "sc", default, skip_serializing_if = "Option::is_none")]
    pub sub_command: Option<Text>,
    #[serde(rename = "se", default, skip_serializing_if = "Option::is_none")]
    pub se_command: Option<Text>,
}

impl Variant {
    /// Replace every string by its shared copy.
    pub fn share_texts(&mut self, texts: &mut Interner) {
        for t in [
            &mut self.project_id,
            &mut self.source,
            &mut self.environment_hash,
            &mut self.meltano_version,
            &mut self.python_version,
            &mut self.command,
            &mut self.sub_command,
            &mut self.se_command,
        ]
        .into_iter()
        .flatten()
        {
            texts.share(t);
        }
    }

    /// Keep the maximum of every field, as squared does where events of one execution disagree.
    fn max_with(&mut self, x: &Variant) {
        keep_max(&mut self.project_id, x.project_id.as_ref());
        keep_max(&mut self.source, x.source.as_ref());
        keep_max(&mut self.environment_hash, x.environment_hash.as_ref());
        keep_max(&mut self.meltano_version, x.meltano_version.as_ref());
        keep_max(&mut self.python_version, x.python_version.as_ref());
        keep_max(&mut self.is_ci, x.is_ci.as_ref());
        keep_max(&mut self.command, x.command.as_ref());
        keep_max(&mut self.sub_command, x.sub_command.as_ref());
        keep_max(&mut self.se_command, x.se_command.as_ref());
    }
}

/// Everything an execution's events say, folded with min / max / union / sum, so that the events of
/// one execution read in several runs fold to the same parts as when read in one. The incremental
/// state keeps these; [`ExecParts::into_execution`] makes the [`Execution`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExecParts {
    pub execution_id: ExecutionId,
    pub variant: Variant,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub exit_code: Option<i64>,
    pub ip_hashes: TextSet,
    /// Plugins sorted by key, with their earliest block-event time.
    pub plugins: Vec<Plugin>,
    pub event_count: u32,
    /// Position of the first event, for problem reports (default for parts from a state).
    pub position: Position,
    /// See [`Execution::weight`].
    pub weight: u32,
    /// See [`Execution::presence_months`].
    pub presence_months: BTreeSet<i64>,
}

impl ExecParts {
    /// Fold in the parts of the same execution read in another run.
    pub fn merge(&mut self, other: ExecParts) {
        self.variant.max_with(&other.variant);
        if other.started_ms < self.started_ms {
            self.position = other.position;
        }
        self.started_ms = self.started_ms.min(other.started_ms);
        self.finished_ms = self.finished_ms.max(other.finished_ms);
        keep_max(&mut self.exit_code, other.exit_code.as_ref());
        self.ip_hashes.extend(other.ip_hashes);
        for p in other.plugins {
            self.see_plugin(&p.info, p.first_seen_ms);
        }
        self.event_count += other.event_count;
    }

    /// Add a plugin of the execution, seen in a block event at `block_ms` if any: its first-seen
    /// time is the earliest such time.
    fn see_plugin(&mut self, info: &std::sync::Arc<plugins::PluginInfo>, block_ms: Option<i64>) {
        let at = match self
            .plugins
            .binary_search_by(|p| p.key().cmp(info.key.as_str()))
        {
            Ok(at) => at,
            Err(at) => {
                self.plugins.insert(
                    at,
                    Plugin {
                        info: info.clone(),
                        first_seen_ms: None,
                    },
                );
                at
            }
        };
        let entry = &mut self.plugins[at];
        if let Some(t) = block_ms {
            entry.first_seen_ms = Some(entry.first_seen_ms.map_or(t, |f| f.min(t)));
        }
    }

    /// The execution, or the parts themselves while no event has named its project.
    pub fn into_execution(self, tables: &mut ExecutionTables) -> Result<Execution, Box<ExecParts>> {
        let v = &self.variant;
        let Some(project_id) = v.project_id.clone() else {
            return Err(Box::new(self));
        };
        let command = v.command.clone().or_else(|| v.se_command.clone());
        let mut plugins = self.plugins;
        plugins::pipeline_order(&mut plugins);
        let is_pipeline = command
            .as_deref()
            .is_some_and(|c| PIPELINE_COMMANDS.contains(&c))
            && !plugins.is_empty();
        let pipeline_id = is_pipeline
            .then(|| tables.pipeline_id(&plugins, v.environment_hash.as_ref(), &project_id));
        let ip_hashes = tables.ip_hashes(self.ip_hashes);
        let v = self.variant;
        Ok(Execution {
            execution_id: self.execution_id,
            profile: tables.profile(Profile {
                project_id,
                project_id_source: v.source,
                environment_hash: v.environment_hash,
                meltano_version: v.meltano_version,
                python_version: v.python_version,
                is_ci: v.is_ci,
            }),
            command_line: tables.command_line(CommandLine {
                command,
                cli_command: v.command,
                se_command: v.se_command,
                sub_command: v.sub_command,
            }),
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            exit_code: self.exit_code,
            event_count: self.event_count,
            plugins: plugins.into_boxed_slice(),
            pipeline_id,
            ip_hashes,
            weight: self.weight,
            presence_months: self.presence_months.into_iter().collect(),
        })
    }
}

/// What one event says about its execution, as text ids (0 for none): events of an execution say
/// the same, so each distinct value is stored once, in 44 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EventVariant {
    texts: [u32; 9],
    is_ci: Option<bool>,
}

impl EventVariant {
    const PROJECT: usize = 0;
    const SOURCE: usize = 1;
    const ENVIRONMENT: usize = 2;
    const MELTANO: usize = 3;
    const PYTHON: usize = 4;
    const COMMAND: usize = 5;
    const SUB_COMMAND: usize = 6;
    const SE_COMMAND: usize = 7;
    const IP: usize = 8;

    fn of(e: &Event, texts: &mut Interner) -> EventVariant {
        let se_command = match &e.kind {
            EventKind::Structured {
                category: Some(ca), ..
            } => ca.split_whitespace().nth(1),
            _ => None,
        };
        let p = e.project.as_ref();
        let env = e.environment.as_ref();
        let mut ids = [0; 9];
        ids[Self::PROJECT] = texts.opt_id(p.and_then(|p| p.project_uuid.as_deref()));
        ids[Self::SOURCE] = texts.opt_id(p.and_then(|p| p.project_uuid_source.as_deref()));
        ids[Self::ENVIRONMENT] = texts.opt_id(p.and_then(|p| p.environment_name_hash.as_deref()));
        ids[Self::MELTANO] = texts.opt_id(env.and_then(|e| e.meltano_version.as_deref()));
        ids[Self::PYTHON] = texts.opt_id(env.and_then(|e| e.python_version.as_deref()));
        ids[Self::COMMAND] = texts.opt_id(e.command.as_deref());
        ids[Self::SUB_COMMAND] = texts.opt_id(e.sub_command.as_deref());
        ids[Self::SE_COMMAND] = texts.opt_id(se_command);
        ids[Self::IP] = texts.opt_id(e.ip_hash.as_deref());
        EventVariant {
            texts: ids,
            is_ci: env.and_then(|e| e.is_ci),
        }
    }
}

impl Variant {
    /// Keep the maximum of every field and what `x` says, as [`Variant::max_with`] does.
    fn max_with_event(&mut self, x: &EventVariant, texts: &Interner) {
        let t = |i: usize| texts.text(x.texts[i]);
        keep_max(&mut self.project_id, t(EventVariant::PROJECT));
        keep_max(&mut self.source, t(EventVariant::SOURCE));
        keep_max(&mut self.environment_hash, t(EventVariant::ENVIRONMENT));
        keep_max(&mut self.meltano_version, t(EventVariant::MELTANO));
        keep_max(&mut self.python_version, t(EventVariant::PYTHON));
        keep_max(&mut self.is_ci, x.is_ci.as_ref());
        keep_max(&mut self.command, t(EventVariant::COMMAND));
        keep_max(&mut self.sub_command, t(EventVariant::SUB_COMMAND));
        keep_max(&mut self.se_command, t(EventVariant::SE_COMMAND));
    }
}

fn dedup_bits(dedup_ms: Option<i64>) -> i64 {
    dedup_ms.unwrap_or(i64::MIN)
}

/// An execution while the input is read: its id's key (see [`execution_key`]) and its first and
/// latest event in the store, each event chained to the one before.
struct ExecutionBuilder {
    key: SlotKey,
    first: u32,
    last: u32,
}

/// Exact key of an execution id: a UUID spelled as it prints, as its 128 bits (its text is made
/// again from them once the execution is folded, so that reading holds no string per execution);
/// any other id as the MD5 digest of its text, the text kept apart. Unlike [`event_key`], two
/// spellings of one UUID stay two executions.
fn execution_key(id: &str) -> (SlotKey, bool) {
    if is_canonical_uuid(id)
        && let Ok(u) = uuid::Uuid::try_parse(id)
    {
        return (slot_key(u.as_u128()), true);
    }
    (slot_key(digest_key(id)), false)
}

fn keep_max<T: Ord + Clone>(slot: &mut Option<T>, value: Option<&T>) {
    if let Some(v) = value
        && slot.as_ref().is_none_or(|cur| v > cur)
    {
        *slot = Some(v.clone());
    }
}

/// The tables events are folded against.
#[derive(Default)]
struct Shared {
    texts: Interner,
    variants: Interned<EventVariant>,
    plugin_lists: Interned<Vec<u32>>,
    plugins: plugins::PluginTable,
}

impl Shared {
    /// The stored form of one execution event.
    fn lite(&mut self, e: &Event, time: i64, prev: u32) -> LiteEvent {
        let variant = self.variants.intern(EventVariant::of(e, &mut self.texts));
        let plugins = if e.plugins.is_empty() {
            NO_PLUGINS
        } else {
            let ids: Vec<u32> = e
                .plugins
                .iter()
                .map(|p| self.plugins.intern(&p.0))
                .collect();
            self.plugin_lists.intern(ids)
        };
        LiteEvent {
            time,
            dedup_ms: e.dedup_ms(),
            exit_code: match e.kind {
                EventKind::Exit { exit_code } => exit_code,
                _ => None,
            },
            variant,
            plugins,
            prev,
            is_block: e.kind == EventKind::Block,
            alive: true,
        }
    }
}

impl ExecutionBuilder {
    /// The folded parts of the execution's live events; `None` when every event moved elsewhere.
    fn fold(&self, id: &ExecutionId, events: &EventStore, shared: &Shared) -> Option<ExecParts> {
        let mut parts: Option<ExecParts> = None;
        let mut at = self.last;
        let mut first_read = at;
        while let Some(e) = events.get(at) {
            let this = at;
            at = e.prev;
            if !e.alive {
                continue;
            }
            let parts = parts.get_or_insert_with(|| ExecParts {
                execution_id: id.clone(),
                variant: Variant::default(),
                started_ms: e.time,
                finished_ms: e.time,
                exit_code: None,
                ip_hashes: TextSet::new(),
                plugins: Vec::new(),
                event_count: 0,
                position: Position::default(),
                weight: 1,
                presence_months: BTreeSet::new(),
            });
            // the chain runs newest first: the last one visited is the first read
            first_read = this;
            parts.event_count += 1;
            parts.started_ms = parts.started_ms.min(e.time);
            parts.finished_ms = parts.finished_ms.max(e.time);
            keep_max(&mut parts.exit_code, e.exit_code.as_ref());
            if let Some(x) = shared.variants.get(e.variant) {
                parts.variant.max_with_event(x, &shared.texts);
                if let Some(ip) = shared.texts.text(x.texts[EventVariant::IP]) {
                    parts.ip_hashes.insert(ip.clone());
                }
            }
            if e.plugins != NO_PLUGINS {
                for &id in shared.plugin_lists.get(e.plugins).into_iter().flatten() {
                    parts.see_plugin(shared.plugins.get(id), e.is_block.then_some(e.time));
                }
            }
        }
        if let Some(parts) = &mut parts {
            parts.position = events.position(first_read).unwrap_or_default();
        }
        parts
    }
}

struct StateChange {
    project: Option<String>,
    time: i64,
    dedup_ms: i64,
    opts_out: bool,
    alive: bool,
    summary: String,
    position: Position,
}

struct StructuredSeen {
    project: Option<String>,
    time: i64,
    dedup_ms: i64,
    alive: bool,
    position: Position,
}

/// Streaming normaliser: events are folded in as they are decoded, keeping per event only what the
/// execution needs (memory grows with executions, not with the size of the raw events).
#[derive(Default)]
pub struct Normalizer {
    /// Every event with an id, in reading order, for the dedup pass.
    /// Sightings by [`bucket_of`] their id (empty until the first), in chunks: a bucket that grew
    /// by doubling held up to twice its entries (nearly so for every bucket of a million events).
    sightings: Vec<arena::Arena<Sighting>>,
    /// Texts of the ids that are not canonical UUIDs (the others print from their key).
    odd_ids: HashMap<SlotKey, Box<str>>,
    /// Ids counted by earlier runs, with their event time: their copies are always dropped.
    earlier_ids: HashMap<SlotKey, i64>,
    events: EventStore,
    /// In chunks, freed as the executions are folded.
    builders: arena::Arena<ExecutionBuilder, { arena::LARGE_CHUNKS }>,
    /// The builders by their key's hash (the key itself is the builder's): four bytes an entry
    /// rather than the key's sixteen again.
    by_execution: hashbrown::HashTable<u32>,
    /// Seeded afresh in every process, like the maps' hasher: ids come from the input.
    by_execution_hasher: foldhash::fast::RandomState,
    /// Texts of the execution ids that are not canonical UUIDs, by builder.
    odd_execution_ids: HashMap<u32, ExecutionId>,
    state_changes: Vec<StateChange>,
    structured: Vec<StructuredSeen>,
    problems: Vec<Problem>,
    stats: NormalizeStats,
    shared: Shared,
    /// Parts read from the state (executions without a project yet), taken out when new events
    /// merge into them.
    earlier_parts: Vec<Option<ExecParts>>,
    /// Executions read from the state.
    earlier_executions: Vec<Execution>,
    /// The executions read from the state while they are moved into time order on another core
    /// (see [`Normalizer::earlier_executions`]).
    placing: Option<std::thread::JoinHandle<Vec<Execution>>>,
    /// Where each execution id read from the state is.
    earlier_index: EarlierIndex,
    tables: ExecutionTables,
    earlier_opt_outs: BTreeMap<String, i64>,
    earlier_structured: BTreeMap<String, (i64, i64)>,
    earlier_newest_ms: Option<i64>,
    late_before_ms: Option<i64>,
    /// Set by [`Normalizer::with_late_event_days`]; without it every event id is carried.
    late_event_days: Option<i64>,
    /// Whether this extends earlier runs: only then is what the events touched worth recording.
    resumed: bool,
    /// Projects the events of a resumed run name (their dormant history is needed).
    named: FastSet<Text>,
}

impl Normalizer {
    /// A normaliser with nothing in it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A normaliser that extends what earlier runs carried; events before `late_before_ms` are too
    /// late to apply and are set aside as `late_event`.
    pub fn resume(carry: Carry, late_before_ms: Option<i64>) -> Self {
        // in time order from here on, so that the run's executions are put in order by merging
        // rather than sorting; indexed at the places they are moved to, but before they move, while
        // they (and their ids) are still in the order they were read and allocated
        let sorted = carry.executions.is_sorted_by(|a, b| !starts_before(b, a));
        let order = (!sorted).then(|| time_order(&carry.executions));
        let mut place: Vec<u32> = (0..carry.executions.len() as u32).collect();
        if let Some(order) = &order {
            for (at, &(_, from)) in order.iter().enumerate() {
                place[from as usize] = at as u32;
            }
        }
        let mut n = Self::new();
        n.earlier_ids = carry
            .event_ids
            .into_iter()
            .map(|(key, time)| (slot_key(key), time))
            .collect();
        n.shared.texts = carry.texts;
        let parts = carry.parts.iter().enumerate();
        let executions = carry.executions.iter().enumerate();
        // room for the executions of the dormant projects a run unpacks: an index that grows
        // rehashes every entry it holds
        let held = carry.parts.len() + carry.executions.len();
        n.earlier_index = EarlierIndex::with_capacity(held + held / 4 + 4096);
        for (i, p) in parts {
            n.earlier_index
                .insert(&p.execution_id, Earlier::Part(i as u32));
        }
        for (i, x) in executions {
            n.earlier_index
                .insert(&x.execution_id, Earlier::Execution(place[i]));
        }
        n.earlier_parts = carry.parts.into_iter().map(Some).collect();
        match order {
            // moved into place on another core while the run's first events are taken in: only
            // folding needs them, and it asks for them first
            Some(order) => {
                let mut executions = carry.executions;
                n.placing = Some(std::thread::spawn(move || {
                    apply_order(&mut executions, &order);
                    executions
                }));
            }
            None => n.earlier_executions = carry.executions,
        }
        n.tables = carry.tables;
        n.earlier_opt_outs = carry.opt_outs;
        n.earlier_structured = carry.structured;
        n.earlier_newest_ms = carry.newest_event_ms;
        n.late_before_ms = late_before_ms;
        n.resumed = true;
        n
    }

    /// How many days before the newest event the next run still accepts events (`late_event_days`):
    /// the ids of older events need not be carried to recognise their copies.
    pub fn with_late_event_days(mut self, days: i64) -> Self {
        self.late_event_days = Some(days.max(0));
        self
    }

    /// Mark a counted event as removed; its position and time, for the problem report.
    fn retire(&mut self, home: Home) -> Option<(Position, i64)> {
        match home {
            Home::Execution(i) => {
                let time = self.events.get(i)?.time;
                self.events.retire(i);
                Some((self.events.position(i)?, time))
            }
            Home::StateChange(i) => {
                let s = &mut self.state_changes[i as usize];
                s.alive = false;
                Some((s.position.clone(), s.time))
            }
            Home::Structured(i) => {
                self.structured[i as usize].alive = false;
                None
            }
        }
    }

    /// The dedup time and event time of a counted event.
    fn times(&self, home: Home) -> (i64, i64) {
        match home {
            Home::Execution(i) => self
                .events
                .get(i)
                .map_or((i64::MIN, i64::MIN), |e| (dedup_bits(e.dedup_ms), e.time)),
            Home::StateChange(i) => {
                let s = &self.state_changes[i as usize];
                (s.dedup_ms, s.time)
            }
            Home::Structured(i) => {
                let s = &self.structured[i as usize];
                (s.dedup_ms, s.time)
            }
        }
    }

    fn id_text(&self, key: SlotKey) -> String {
        match self.odd_ids.get(&key) {
            Some(t) => t.to_string(),
            None => uuid::Uuid::from_u128(event_key_of(key))
                .hyphenated()
                .to_string(),
        }
    }

    /// Projects the events pushed so far name (by context, state change or structured event), in a
    /// resumed run.
    pub fn named_projects(&self) -> &FastSet<Text> {
        &self.named
    }

    /// The executions read from the state, in time order (once they are in place).
    fn earlier_executions(&mut self) -> &mut Vec<Execution> {
        if let Some(placing) = self.placing.take() {
            self.earlier_executions = placing
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        }
        &mut self.earlier_executions
    }

    /// Take in executions read from the state after it was resumed (a dormant project's history):
    /// new events fold into them as into the others.
    pub fn absorb_earlier(&mut self, carry: Carry) {
        // appended after the others, once those are in place
        self.earlier_executions();
        for x in carry.executions {
            let i = self.earlier_executions.len() as u32;
            self.earlier_index
                .insert(&x.execution_id, Earlier::Execution(i));
            self.earlier_executions.push(x);
        }
        for p in carry.parts {
            let i = self.earlier_parts.len() as u32;
            self.earlier_index.insert(&p.execution_id, Earlier::Part(i));
            self.earlier_parts.push(Some(p));
        }
        self.tables.absorb(carry.tables);
        self.shared.texts.absorb(carry.texts);
    }

    /// Add one decoded event.
    pub fn push(&mut self, e: Event) {
        self.stats.events_in += 1;
        if self.resumed {
            self.name_project(&e);
        }
        let Some(time) = e.time_ms() else {
            let summary = event_summary(&e);
            self.problems.push(problem(
                &e.position,
                Reason::MissingTimestamp,
                "event has no usable time".into(),
                summary,
            ));
            return;
        };
        if let Some(cut) = self.late_before_ms
            && time < cut
        {
            let summary = event_summary(&e);
            self.problems.push(problem(
                &e.position,
                Reason::LateEvent,
                format!(
                    "event time is before {}, the oldest the state can still change (late_event_days)",
                    crate::kpi::calendar::fmt_ms(cut)
                ),
                summary,
            ));
            return;
        }
        let key = e.event_id.as_deref().map(|id| {
            let (key, canonical) = event_key(id);
            let key = slot_key(key);
            if !canonical {
                self.odd_ids.entry(key).or_insert_with(|| id.into());
            }
            key
        });
        if let Some(k) = key
            && self.earlier_ids.contains_key(&k)
        {
            self.stats.duplicates += 1;
            let id = e.event_id.as_deref().unwrap_or_default();
            let msg = format!("duplicate of event id {id}, counted in an earlier run");
            let summary = event_summary(&e);
            self.problems
                .push(problem(&e.position, Reason::DuplicateEvent, msg, summary));
            return;
        }
        let dedup_ms = dedup_bits(e.dedup_ms());
        let home = match &e.kind {
            EventKind::StateChange {
                setting_name,
                changed_to,
            } => {
                let opts_out = setting_name.as_deref() == Some("send_anonymous_usage_stats")
                    && changed_to
                        .as_deref()
                        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
                self.state_changes.push(StateChange {
                    project: e.project.as_ref().and_then(|p| p.project_uuid.clone()),
                    time,
                    dedup_ms,
                    opts_out,
                    alive: true,
                    summary: event_summary(&e),
                    position: e.position.clone(),
                });
                Home::StateChange((self.state_changes.len() - 1) as u32)
            }
            EventKind::Structured { label, .. } if !e.has_contexts => {
                self.structured.push(StructuredSeen {
                    project: label.clone(),
                    time,
                    dedup_ms,
                    alive: true,
                    position: e.position.clone(),
                });
                Home::Structured((self.structured.len() - 1) as u32)
            }
            _ => {
                let Some(exec_id) = e.project.as_ref().and_then(|p| p.context_uuid.as_deref())
                else {
                    let summary = event_summary(&e);
                    let msg = "event has no project context (no execution id)".to_string();
                    self.problems.push(problem(
                        &e.position,
                        Reason::MissingProjectContext,
                        msg,
                        summary,
                    ));
                    return;
                };
                let index = self.events.len() as u32;
                let (exec_key, canonical) = execution_key(exec_id);
                let hash = self.by_execution_hasher.hash_one(exec_key);
                let builders = &self.builders;
                let found = self.by_execution.find(hash, |&b| {
                    builders.get(b).is_some_and(|x| x.key == exec_key)
                });
                let builder = match found {
                    Some(&b) => b,
                    None => {
                        let b = self.builders.push(ExecutionBuilder {
                            key: exec_key,
                            first: index,
                            last: NO_EVENT,
                        });
                        if !canonical {
                            self.odd_execution_ids.insert(b, ExecutionId::from(exec_id));
                        }
                        let (builders, hasher) = (&self.builders, &self.by_execution_hasher);
                        self.by_execution.insert_unique(hash, b, |&m| {
                            builders.get(m).map_or(0, |x| hasher.hash_one(x.key))
                        });
                        b
                    }
                };
                let Some(builder) = self.builders.get_mut(builder) else {
                    return;
                };
                let lite = self.shared.lite(&e, time, builder.last);
                builder.last = index;
                self.events.push(lite, &e.position);
                Home::Execution(index)
            }
        };
        if let Some(key) = key {
            if self.sightings.is_empty() {
                self.sightings
                    .resize_with(SIGHTING_BUCKETS, Default::default);
            }
            self.sightings[bucket_of(key)].push(Sighting {
                key,
                home: home.pack(),
            });
        }
    }

    fn name_project(&mut self, e: &Event) {
        let named = match &e.kind {
            EventKind::Structured { label, .. } if !e.has_contexts => label.as_deref(),
            _ => e.project.as_ref().and_then(|p| p.project_uuid.as_deref()),
        };
        if let Some(p) = named
            && !self.named.contains(p)
        {
            self.named.insert(Text::from(p));
        }
    }

    /// Where a counted event was read: copies of one id are told apart in reading order.
    fn read_at(&self, home: Home) -> (u32, u64, u32) {
        let p = match home {
            Home::Execution(i) => match self.events.position(i) {
                Some(p) => p,
                None => return (u32::MAX, u64::MAX, u32::MAX),
            },
            Home::StateChange(i) => self.state_changes[i as usize].position.clone(),
            Home::Structured(i) => self.structured[i as usize].position.clone(),
        };
        (p.source, p.offset, p.index)
    }

    /// Keep the latest-sent copy of every event id read more than once (the first read among equal
    /// sent times) and report the others; returns the kept copy of each id, bucket by bucket, each
    /// bucket sorted by id.
    fn remove_duplicates(&mut self) -> Vec<arena::Arena<Sighting>> {
        let mut buckets = std::mem::take(&mut self.sightings);
        // each bucket is sorted in one list as long as the longest and written back into its own
        // chunks: a copy at each bucket's size took fresh pages while the pages of the chunks freed
        // for it waited to be handed back
        let longest = buckets.iter().map(arena::Arena::len).max().unwrap_or(0);
        let mut scratch = Vec::with_capacity(longest);
        for bucket in &mut buckets {
            scratch.clear();
            scratch.extend(bucket.iter().copied());
            self.keep_latest_copies(&mut scratch);
            bucket.overwrite(&scratch);
        }
        buckets
    }

    /// Sort one bucket of sightings by id and keep one copy of each id (see
    /// [`Normalizer::remove_duplicates`]).
    fn keep_latest_copies(&mut self, sightings: &mut Vec<Sighting>) {
        sightings.sort_unstable_by_key(|s| s.key);
        // each id's kept copy is written over the front of the list as the groups are passed
        let mut kept = 0;
        let mut start = 0;
        while start < sightings.len() {
            let key = sightings[start].key;
            let end = start
                + sightings[start..]
                    .iter()
                    .take_while(|s| s.key == key)
                    .count();
            if end - start == 1 {
                sightings[kept] = sightings[start];
                kept += 1;
                start = end;
                continue;
            }
            let copies = &sightings[start..end];
            let mut homes: Vec<Home> = copies.iter().map(|s| Home::unpack(s.home)).collect();
            // reading order: the position read, then the order within a kind of event
            homes.sort_by_key(|&h| (self.read_at(h), h.pack()));
            let mut winner = 0;
            let mut best = self.times(homes[0]).0;
            for (i, &h) in homes.iter().enumerate().skip(1) {
                let d = self.times(h).0;
                if d > best {
                    best = d;
                    winner = i;
                }
            }
            sightings[kept] = Sighting {
                key,
                home: homes[winner].pack(),
            };
            kept += 1;
            start = end;
            let id = self.id_text(key);
            let msg =
                format!("duplicate of event id {id}: the copy with the latest sent time is kept");
            for (i, &h) in homes.iter().enumerate() {
                if i == winner {
                    continue;
                }
                self.stats.duplicates += 1;
                if let Some((pos, t)) = self.retire(h) {
                    self.problems.push(problem(
                        &pos,
                        Reason::DuplicateEvent,
                        msg.clone(),
                        format!("eid={id} time={t}"),
                    ));
                }
            }
        }
        sightings.truncate(kept);
    }

    /// Finish: build executions and projects, and what the next run needs.
    pub fn finish(mut self) -> Normalized {
        let sightings = self.remove_duplicates();
        self.odd_ids = HashMap::default();
        self.by_execution = hashbrown::HashTable::new();
        let mut out = Normalized {
            problems: std::mem::take(&mut self.problems),
            stats: std::mem::take(&mut self.stats),
            ..Default::default()
        };
        let mut newest: Option<i64> = self.earlier_newest_ms;
        let mut see = |t: i64| newest = Some(newest.map_or(t, |n| n.max(t)));
        for t in self.events.live_times() {
            see(t);
        }
        for s in self.state_changes.iter().filter(|s| s.alive) {
            see(s.time);
        }
        for s in self.structured.iter().filter(|s| s.alive) {
            see(s.time);
        }
        // copies of events older than the next run accepts are late anyway: their ids need not be kept
        let keep_ids_from = match (newest, self.late_event_days) {
            (Some(n), Some(days)) => late_before_day(n, days) * DAY_MS,
            _ => i64::MIN,
        };
        let mut event_ids: Vec<(u128, i64)> = std::mem::take(&mut self.earlier_ids)
            .into_iter()
            .filter(|&(_, t)| t >= keep_ids_from)
            .map(|(k, t)| (event_key_of(k), t))
            .collect();
        for s in sightings.iter().flat_map(arena::Arena::iter) {
            let time = self.times(Home::unpack(s.home)).1;
            if time >= keep_ids_from {
                event_ids.push((event_key_of(s.key), time));
            }
        }
        drop(sightings);
        let mut touched = Touched::default();
        let track = self.resumed;
        let touch = |t: i64, earliest: &mut Option<i64>| {
            *earliest = Some(earliest.map_or(t, |e| e.min(t)));
        };
        let mut opt_outs = std::mem::take(&mut self.earlier_opt_outs);
        for s in self.state_changes.iter().filter(|s| s.alive) {
            match &s.project {
                Some(p) if s.opts_out => {
                    let t = opt_outs.entry(p.clone()).or_insert(s.time);
                    *t = (*t).min(s.time);
                    if track {
                        touched.projects.insert(p.clone());
                    }
                    touch(s.time, &mut touched.earliest_ms);
                }
                Some(_) => {}
                None => out.problems.push(problem(
                    &s.position,
                    Reason::UnattributedStateChange,
                    "telemetry state change without a project id: it belongs to no project".into(),
                    s.summary.clone(),
                )),
            }
        }
        let mut structured = std::mem::take(&mut self.earlier_structured);
        for s in self.structured.iter().filter(|s| s.alive) {
            match &s.project {
                Some(p) => {
                    let e = structured.entry(p.clone()).or_insert((s.time, s.time));
                    e.0 = e.0.min(s.time);
                    e.1 = e.1.max(s.time);
                    if track {
                        touched.projects.insert(p.clone());
                    }
                    touch(s.time, &mut touched.earliest_ms);
                }
                None => out.stats.orphan_structured_events += 1,
            }
        }
        // the executions read from the state stay where they are; those new events fold into are
        // taken out, folded and built again
        let mut executions = std::mem::take(self.earlier_executions());
        let mut refolded: Vec<u32> = Vec::new();
        executions.reserve_exact(self.builders.len() + self.earlier_parts.len());
        // parts without a project id yet: carried, in case later events name it
        let mut orphans = Vec::new();
        let mut tables = std::mem::take(&mut self.tables);
        let mut finish_part =
            |p: ExecParts, executions: &mut Vec<Execution>, touched: &mut Touched, is_new: bool| {
                match p.into_execution(&mut tables) {
                    Ok(x) => {
                        if is_new {
                            // one allocation per project, not per execution
                            if track && !touched.projects.contains(&*x.project_id) {
                                touched.projects.insert(x.project_id.to_string());
                            }
                            touch(x.started_ms, &mut touched.earliest_ms);
                        }
                        executions.push(x)
                    }
                    Err(p) => {
                        if is_new {
                            let id = &p.execution_id;
                            out.stats.executions_without_project += 1;
                            out.problems.push(problem(
                                &p.position,
                                Reason::MissingProjectId,
                                format!(
                                    "execution {id} ({} events) has no project id and is dropped",
                                    p.event_count
                                ),
                                format!("execution_id={id}"),
                            ));
                        }
                        orphans.push(*p);
                    }
                }
            };
        let mut earlier = std::mem::take(&mut self.earlier_parts);
        let mut events = std::mem::take(&mut self.events);
        let mut builders = std::mem::take(&mut self.builders);
        let odd_execution_ids = std::mem::take(&mut self.odd_execution_ids);
        let mut uuid_text = uuid::Uuid::encode_buffer();
        for n in 0..builders.len() as u32 {
            let Some(b) = builders.get(n) else {
                continue;
            };
            let id = match odd_execution_ids.get(&n) {
                Some(t) => t.clone(),
                None => ExecutionId::from(
                    &*uuid::Uuid::from_u128(event_key_of(b.key))
                        .hyphenated()
                        .encode_lower(&mut uuid_text),
                ),
            };
            let folded = b.fold(&id, &events, &self.shared);
            // later executions start later in the arena: what lies before the next one's first
            // event is read for the last time
            if let Some(next) = builders.get(n + 1) {
                events.free_before(next.first);
            }
            builders.free_before(n);
            let Some(new) = folded else {
                continue;
            };
            if track {
                touched.executions.insert(new.execution_id.clone());
            }
            let mut slot = None;
            let found = self.earlier_index.get(&new.execution_id, |at| match at {
                Earlier::Part(i) => earlier.get(i as usize)?.as_ref().map(|p| &*p.execution_id),
                Earlier::Execution(i) => executions.get(i as usize).map(|x| &*x.execution_id),
            });
            let earlier_part = match found {
                Some(Earlier::Part(i)) => earlier[i as usize].take(),
                Some(Earlier::Execution(i)) => {
                    slot = Some(i as usize);
                    let x = std::mem::replace(&mut executions[i as usize], Execution::vacant());
                    Some(x.into_parts())
                }
                None => None,
            };
            let merged = match earlier_part {
                Some(mut p) => {
                    p.merge(new);
                    p
                }
                None => new,
            };
            let held = executions.len();
            finish_part(merged, &mut executions, &mut touched, true);
            match slot {
                // built again in its own slot: the executions read from the state stay in order
                Some(i) if executions.len() > held => drop(executions.swap_remove(i)),
                Some(i) => refolded.push(i as u32),
                None => {}
            }
        }
        drop(events);
        // the fold tables are done with
        self.shared.variants = Interned::default();
        self.shared.plugin_lists = Interned::default();
        for p in earlier.into_iter().flatten() {
            finish_part(p, &mut executions, &mut touched, false);
        }
        // the slots of refolded executions not built again above
        refolded.sort_unstable();
        for i in refolded.into_iter().rev() {
            executions.swap_remove(i as usize);
        }
        // what is left (the index of the state's executions, the shared tables) is freed beside
        // the work below
        let texts = std::mem::take(&mut self.shared.texts);
        crate::memory::free_aside((self, tables));
        sort_by_start(&mut executions);
        let structured_seen: Vec<(String, i64)> = structured
            .iter()
            .flat_map(|(p, (lo, hi))| [(p.clone(), *lo), (p.clone(), *hi)])
            .collect();
        (out.facts.projects, out.facts.project_of) =
            build_projects(&executions, &opt_outs, &structured_seen, &mut out.stats);
        out.facts.executions = executions;
        out.facts.newest_event_ms = newest;
        out.carry = Carry {
            parts: orphans,
            executions: Vec::new(),
            tables: ExecutionTables::default(),
            opt_outs,
            structured,
            event_ids,
            newest_event_ms: newest,
            texts,
        };
        out.touched = touched;
        out
    }
}

/// Normalise a batch of events (see [`Normalizer`]).
pub fn normalize(events: Vec<Event>) -> Normalized {
    let mut n = Normalizer::new();
    for e in events {
        n.push(e);
    }
    n.finish()
}

impl Facts {
    /// Facts from already-built executions (no opt-outs, no structured events): for tests and tools.
    pub fn from_executions(mut executions: Vec<Execution>) -> Facts {
        sort_by_start(&mut executions);
        let (projects, project_of) = build_projects(
            &executions,
            &BTreeMap::new(),
            &[],
            &mut NormalizeStats::default(),
        );
        let newest_event_ms = executions.iter().map(|x| x.finished_ms).max();
        Facts {
            executions,
            projects,
            project_of,
            newest_event_ms,
        }
    }
}

/// Whether `a` comes before `b` in time order (start, then id: ids are unique, so the order is
/// total).
fn starts_before(a: &Execution, b: &Execution) -> bool {
    (a.started_ms, &a.execution_id) < (b.started_ms, &b.execution_id)
}

/// Put executions in time order. A run extending a state holds the state's executions in order,
/// then the few the run added: those are sorted apart and merged in from the back, each execution
/// moved at most once and in order.
fn sort_by_start(executions: &mut Vec<Execution>) {
    let in_order = executions
        .windows(2)
        .take_while(|w| !starts_before(&w[1], &w[0]))
        .count()
        + 1;
    if in_order >= executions.len() {
        return;
    }
    if in_order < executions.len() / 2 {
        return sort_keyed(executions);
    }
    let mut added = executions.split_off(in_order);
    sort_keyed(&mut added);
    let mut from = executions.len();
    executions.resize_with(from + added.len(), Execution::vacant);
    // the slots between `from` and `to` are vacant: each step fills the last of them
    let mut to = executions.len();
    while let Some(next) = added.last() {
        to -= 1;
        if from > 0 && starts_before(next, &executions[from - 1]) {
            from -= 1;
            executions.swap(from, to);
        } else if let Some(x) = added.pop() {
            executions[to] = x;
        }
    }
}

/// Sort executions by time: a 16-byte key per execution is sorted and the executions are then moved
/// once each into place, so that the sort moves keys rather than whole executions, compares ids only
/// between equal starts, and holds no second copy of the executions.
fn sort_keyed(executions: &mut [Execution]) {
    let order = time_order(executions);
    apply_order(executions, &order);
}

/// Where each execution goes to put them in time order: the `i`th in time order is the one at
/// `order[i].1` now.
fn time_order(executions: &[Execution]) -> Vec<(i64, u32)> {
    let mut order: Vec<(i64, u32)> = executions
        .iter()
        .enumerate()
        .map(|(i, x)| (x.started_ms, i as u32))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| {
            executions[a.1 as usize]
                .execution_id
                .cmp(&executions[b.1 as usize].execution_id)
        })
    });
    order
}

/// Move the executions into the order [`time_order`] found.
fn apply_order(executions: &mut [Execution], order: &[(i64, u32)]) {
    // position i takes the execution at order[i].1: follow each cycle of that permutation
    let mut placed = vec![false; order.len()];
    for start in 0..order.len() {
        if placed[start] {
            continue;
        }
        let mut at = start;
        loop {
            placed[at] = true;
            let from = order[at].1 as usize;
            if from == start {
                break;
            }
            executions.swap(at, from);
            at = from;
        }
    }
}

/// The first day the next run still accepts events on, given the newest event seen and
/// `late_event_days`: older events are set aside as late, so what finished before it is final.
pub fn late_before_day(newest_ms: i64, late_event_days: i64) -> i64 {
    day_of(newest_ms) - late_event_days
}

/// Executions from which a run gathers its projects in two halves, one on each core; 4 in unit
/// tests, so that small inputs are gathered in halves too.
#[cfg(not(test))]
const PARALLEL_PROJECTS_FROM: usize = 1 << 16;
#[cfg(test)]
const PARALLEL_PROJECTS_FROM: usize = 4;

/// What a project's executions say of it, gathered in time order.
struct ProjectAcc<'a> {
    id: &'a str,
    first: i64,
    last: i64,
    source: Option<&'a str>,
    ci_only: bool,
    /// Every IP hash seen, repeats and all; only how many distinct there are counts.
    ips: Vec<&'a str>,
}

/// The projects of a run of executions in time order, and each execution's project among them.
struct ProjectAccs<'a> {
    accs: Vec<ProjectAcc<'a>>,
    index: HashMap<&'a str, u32>,
    acc_of: Vec<u32>,
}

impl<'a> ProjectAccs<'a> {
    fn of(executions: &'a [Execution]) -> Self {
        // a project's executions share its id's copy: most are found by that copy's address, without
        // hashing the text (an id held in several copies is found by its text once per copy)
        let mut by_address: HashMap<usize, u32> = HashMap::default();
        let mut index: HashMap<&str, u32> = HashMap::default();
        let mut accs: Vec<ProjectAcc> = Vec::new();
        let mut acc_of: Vec<u32> = Vec::with_capacity(executions.len());
        // Executions are in time order, so the first non-null source of a non-init execution wins.
        for x in executions {
            let address = address(Some(&x.project_id));
            let i = match by_address.get(&address) {
                Some(&i) => i,
                None => {
                    let i = *index.entry(&*x.project_id).or_insert_with(|| {
                        accs.push(ProjectAcc {
                            id: &x.project_id,
                            first: x.started_ms,
                            last: x.started_ms,
                            source: None,
                            ci_only: true,
                            ips: Vec::new(),
                        });
                        (accs.len() - 1) as u32
                    });
                    by_address.insert(address, i);
                    i
                }
            };
            acc_of.push(i);
            let a = &mut accs[i as usize];
            a.first = a.first.min(x.started_ms);
            a.last = a.last.max(x.started_ms);
            if a.source.is_none() && x.command_line.command.as_deref() != Some("init") {
                a.source = x.project_id_source.as_deref();
            }
            a.ci_only &= x.is_ci == Some(true);
            for ip in x.ip_hashes.iter() {
                // a project's executions mostly share one copy of the same IP hash: a repeat of
                // the last one seen is not listed again
                if a.ips.last().is_none_or(|last| !std::ptr::eq(*last, &**ip)) {
                    a.ips.push(ip);
                }
            }
        }
        ProjectAccs {
            accs,
            index,
            acc_of,
        }
    }

    /// Fold in what the executions right after these say.
    fn append(&mut self, later: ProjectAccs<'a>) {
        let mut place = Vec::with_capacity(later.accs.len());
        for acc in later.accs {
            let i = match self.index.get(acc.id) {
                Some(&i) => {
                    let a = &mut self.accs[i as usize];
                    a.first = a.first.min(acc.first);
                    a.last = a.last.max(acc.last);
                    // the earlier executions' source, when they had one, came first
                    a.source = a.source.or(acc.source);
                    a.ci_only &= acc.ci_only;
                    a.ips.extend(acc.ips);
                    i
                }
                None => {
                    let i = self.accs.len() as u32;
                    self.index.insert(acc.id, i);
                    self.accs.push(acc);
                    i
                }
            };
            place.push(i);
        }
        self.acc_of
            .extend(later.acc_of.into_iter().map(|i| place[i as usize]));
    }
}

/// The projects of `executions` (sorted by id), and where each execution's project is among them.
fn build_projects(
    executions: &[Execution],
    opt_outs: &BTreeMap<String, i64>,
    structured_seen: &[(String, i64)],
    stats: &mut NormalizeStats,
) -> (Vec<Project>, Vec<u32>) {
    // a large run's executions are gathered in two halves, one on each core, the later half then
    // folded into the earlier one
    let mut gathered = if executions.len() >= PARALLEL_PROJECTS_FROM {
        let (earlier, later) = executions.split_at(executions.len() / 2);
        std::thread::scope(|scope| {
            let later = scope.spawn(|| ProjectAccs::of(later));
            let mut gathered = ProjectAccs::of(earlier);
            gathered.append(
                later
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
            gathered
        })
    } else {
        ProjectAccs::of(executions)
    };
    for (project, time) in structured_seen {
        match gathered
            .index
            .get(project.as_str())
            .map(|&i| &mut gathered.accs[i as usize])
        {
            Some(a) => {
                a.first = a.first.min(*time);
                a.last = a.last.max(*time);
            }
            None => stats.orphan_structured_events += 1,
        }
    }
    let ProjectAccs { accs, acc_of, .. } = gathered;
    // the projects are listed by id: each one's place in that order
    let mut accs: Vec<(usize, ProjectAcc)> = accs.into_iter().enumerate().collect();
    accs.sort_unstable_by(|a, b| a.1.id.cmp(b.1.id));
    let mut place = vec![0u32; accs.len()];
    for (at, (i, _)) in accs.iter().enumerate() {
        place[*i] = at as u32;
    }
    let project_of = acc_of.into_iter().map(|i| place[i as usize]).collect();
    let projects = accs
        .into_iter()
        .map(|(_, mut a)| {
            a.ips.sort_unstable();
            a.ips.dedup();
            let id = a.id;
            let lifespan_days = a.last.div_euclid(DAY_MS) - a.first.div_euclid(DAY_MS);
            let source = match a.source {
                Some("random") if a.ips.len() > 1 && lifespan_days > 7 => {
                    "persisted_random".to_string()
                }
                Some(s) => s.to_string(),
                None => "UNKNOWN".to_string(),
            };
            Project {
                project_id: id.to_string(),
                source,
                first_event_ms: a.first,
                last_event_ms: a.last,
                is_ci_only: a.ci_only,
                opted_out_ms: opt_outs.get(id).copied(),
                ip_hash_count: a.ips.len(),
            }
        })
        .collect();
    (projects, project_of)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ProjectContext;

    fn ev(eid: Option<&str>, exec: &str, kind: EventKind, dtm: i64, stm: i64) -> Event {
        Event {
            event_id: eid.map(str::to_string),
            kind,
            created_ms: Some(dtm),
            sent_ms: Some(stm),
            derived_ms: None,
            collector_ms: None,
            ip_hash: None,
            project: Some(ProjectContext {
                context_uuid: Some(exec.into()),
                project_uuid: Some("p".into()),
                project_uuid_source: Some("explicit".into()),
                environment_name_hash: None,
            }),
            environment: None,
            command: Some("run".into()),
            sub_command: None,
            plugins: Vec::new(),
            has_contexts: true,
            position: Position::default(),
        }
    }

    fn exit(code: i64) -> EventKind {
        EventKind::Exit {
            exit_code: Some(code),
        }
    }

    #[test]
    fn sets_of_ip_hashes_made_of_the_same_strings_are_one_copy() {
        let mut tables = ExecutionTables::default();
        let (a, b, c) = (Text::from("a"), Text::from("b"), Text::from("c"));
        let set = |texts: &[&Text]| texts.iter().map(|&t| t.clone()).collect::<TextSet>();
        let one = tables.ip_hashes(set(&[&a]));
        assert!(Arc::ptr_eq(&one, &tables.ip_hashes(set(&[&a]))));
        let two = tables.ip_hashes(set(&[&b, &a]));
        assert!(Arc::ptr_eq(&two, &tables.ip_hashes(set(&[&a, &b]))));
        assert!(!Arc::ptr_eq(&one, &two));
        assert_eq!(two.iter().map(|t| &**t).collect::<Vec<_>>(), ["a", "b"]);
        // an equal string held elsewhere is another set, equal by value
        let other = tables.ip_hashes(set(&[&Text::from("a")]));
        assert!(!Arc::ptr_eq(&one, &other));
        assert_eq!(one, other);
        let none = tables.ip_hashes(TextSet::new());
        assert!(none.is_empty() && Arc::ptr_eq(&none, &tables.ip_hashes(TextSet::new())));
        let three = tables.ip_hashes(set(&[&a, &b, &c]));
        assert_eq!(three.len(), 3);
        assert!(!Arc::ptr_eq(&three, &tables.ip_hashes(set(&[&a, &b, &c]))));
    }

    #[test]
    fn execution_ids_come_back_exactly_as_read_whatever_their_spelling() {
        let t0 = 1_600_000_000_000;
        let lower = "0a1b2c3d-0000-4000-8000-abcdef000001";
        let upper = "0A1B2C3D-0000-4000-8000-ABCDEF000001";
        let ids = [lower, upper, "run 7", "0a1b2c3d00004000800abcdef000001", ""];
        let mut events = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            for j in 0..2 {
                let mut e = ev(None, id, exit(k as i64), t0 + k as i64 * 10 + j, t0);
                e.position = Position {
                    source: 1,
                    line: 5 + k as u64,
                    offset: 700 + k as u64,
                    index: j as u32,
                };
                events.push(e);
            }
        }
        let n = normalize(events);
        let mut read: Vec<(&str, u32, i64)> = n
            .facts
            .executions
            .iter()
            .map(|x| (&*x.execution_id, x.event_count, x.started_ms))
            .collect();
        read.sort();
        let mut want: Vec<(&str, u32, i64)> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| (*id, 2, t0 + k as i64 * 10))
            .collect();
        want.sort();
        assert_eq!(read, want, "two spellings of one UUID are two executions");
    }

    #[test]
    fn an_execution_without_a_project_is_named_where_its_first_event_was_read() {
        let t0 = 1_600_000_000_000;
        let mut events = Vec::new();
        for (line, index) in [(9, 2), (3, 1), (12, 0)] {
            let mut e = ev(None, "orphan", EventKind::Cli, t0 + line as i64, t0);
            e.project.as_mut().unwrap().project_uuid = None;
            e.position = Position {
                source: 2,
                line,
                offset: line * 100,
                index,
            };
            events.push(e);
        }
        let n = normalize(events);
        let p = n
            .problems
            .iter()
            .find(|p| p.reason == Reason::MissingProjectId)
            .expect("the execution is reported");
        assert_eq!(
            (p.position.line, p.position.offset, p.position.index),
            (9, 900, 2)
        );
    }

    #[test]
    fn copies_across_many_executions_keep_the_latest_sent_and_name_the_id() {
        // enough events to span several arena chunks, with copies read far from their originals
        let t0 = 1_600_000_000_000;
        let mut events = Vec::new();
        for x in 0..30 {
            for k in 0..3 {
                let id = format!("{x:08}-0000-4000-8000-abcdef{k:06}");
                events.push(ev(Some(&id), &format!("x{x}"), exit(1), t0 + x, t0 + 10));
            }
        }
        for x in 0..30 {
            // a later-sent copy of each execution's first event, exit code 0 instead of 1
            let id = format!("{x:08}-0000-4000-8000-abcdef{:06}", 0);
            events.push(ev(Some(&id), &format!("x{x}"), exit(0), t0 + x, t0 + 20));
        }
        // an earlier-sent copy of one event, spelled in capitals: it loses, and is named as read
        events.push(ev(
            Some("00000007-0000-4000-8000-ABCDEF000001"),
            "x7",
            exit(5),
            t0 + 7,
            t0,
        ));
        let n = normalize(events);
        assert_eq!(n.stats.duplicates, 31);
        assert_eq!(n.facts.executions.len(), 30);
        for x in &n.facts.executions {
            assert_eq!(x.event_count, 3, "{}", x.execution_id);
            assert_eq!(x.exit_code, Some(1), "the max over the kept copies");
        }
        let named: Vec<&str> = n.problems.iter().map(|p| p.message.as_str()).collect();
        assert!(
            named
                .iter()
                .any(|m| m.contains("00000007-0000-4000-8000-ABCDEF000001")),
            "{named:?}"
        );
        assert!(
            named
                .iter()
                .any(|m| m.contains("00000000-0000-4000-8000-abcdef000000"))
        );
        assert_eq!(n.carry.event_ids.len(), 90);
    }

    #[test]
    fn pipeline_ids_are_the_same_whatever_copies_they_are_made_of() {
        let mut tables = ExecutionTables::default();
        let plugin = |name: &str| {
            plugins::plugin_from_dict(
                serde_json::json!({"category": "extractors", "name_hash": name})
                    .as_object()
                    .unwrap(),
            )
        };
        let (tap, target) = (plugin("tap"), plugin("target"));
        let mut build = |project: &Text, plugins: Vec<Plugin>, environment: Option<&Text>| {
            let mut ordered = plugins.clone();
            plugins::pipeline_order(&mut ordered);
            let expected = plugins::pipeline_id(&ordered, environment.map(|e| &**e), project);
            let x = ExecParts {
                execution_id: "x".into(),
                variant: Variant {
                    project_id: Some(project.clone()),
                    command: Some("run".into()),
                    environment_hash: environment.cloned(),
                    ..Default::default()
                },
                started_ms: 0,
                finished_ms: 1,
                exit_code: Some(0),
                ip_hashes: TextSet::new(),
                plugins,
                event_count: 1,
                position: Position::default(),
                weight: 1,
                presence_months: BTreeSet::new(),
            }
            .into_execution(&mut tables)
            .unwrap();
            let id = x.pipeline_id.expect("a pipeline run");
            assert_eq!(*id, expected);
            id
        };
        let (p, other_p, q) = (Text::from("p"), Text::from("p"), Text::from("q"));
        let dev = Text::from("dev");
        let both = || vec![tap.clone(), target.clone()];
        let first = build(&p, both(), None);
        // the same copies again, and equal text in other copies: one id
        assert!(Arc::ptr_eq(&first, &build(&p, both(), None)));
        assert_eq!(
            first,
            build(&other_p, vec![plugin("tap"), plugin("target")], None)
        );
        // another project, environment or plugin list: another id
        assert_ne!(first, build(&q, both(), None));
        assert_ne!(first, build(&p, both(), Some(&dev)));
        assert_ne!(first, build(&p, vec![tap.clone()], None));
        assert_eq!(build(&p, both(), Some(&dev)), build(&p, both(), Some(&dev)));
    }

    #[test]
    fn executions_share_their_profile_and_command_line() {
        let mut texts = Interner::default();
        let mut tables = ExecutionTables::default();
        let mut build = |id: &str, command: &str, environment: Option<&str>| {
            let variant = Variant {
                project_id: Some(texts.get("p")),
                command: Some(texts.get(command)),
                environment_hash: environment.map(|e| texts.get(e)),
                is_ci: Some(false),
                ..Default::default()
            };
            ExecParts {
                execution_id: id.into(),
                variant,
                started_ms: 0,
                finished_ms: 1,
                exit_code: Some(0),
                ip_hashes: TextSet::new(),
                plugins: Vec::new(),
                event_count: 1,
                position: Position::default(),
                weight: 1,
                presence_months: BTreeSet::new(),
            }
            .into_execution(&mut tables)
            .unwrap()
        };
        let (a, b, c) = (
            build("a", "run", None),
            build("b", "elt", None),
            build("c", "elt", Some("dev")),
        );
        assert!(Arc::ptr_eq(&a.profile, &b.profile));
        assert!(!Arc::ptr_eq(&a.profile, &c.profile));
        assert_eq!(a.command_line.command.as_deref(), Some("run"));
        assert_eq!(b.command_line.command.as_deref(), Some("elt"));
        assert!(Arc::ptr_eq(&b.command_line, &c.command_line));
        assert!(!Arc::ptr_eq(&a.command_line, &b.command_line));
    }

    #[test]
    fn the_last_profile_is_handed_out_again_and_an_earlier_one_from_the_table() {
        let mut texts = Interner::default();
        let mut tables = ExecutionTables::default();
        let mut profile = |project: &str, version: &str| {
            tables.profile(Profile {
                project_id: texts.get(project),
                meltano_version: Some(texts.get(version)),
                ..Profile::default()
            })
        };
        let a = profile("p", "3.5");
        let again = profile("p", "3.5");
        let newer = profile("p", "3.6");
        let other = profile("q", "3.5");
        let back = profile("p", "3.5");
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &newer) && !Arc::ptr_eq(&a, &other));
        assert!(!Arc::ptr_eq(&newer, &other));
        assert!(Arc::ptr_eq(&a, &back));
        assert_eq!(&*newer.meltano_version.clone().unwrap(), "3.6");
        // the same text in another copy is another profile, as the table would have it
        let copy = tables.profile(Profile {
            project_id: Text::from("p"),
            meltano_version: Some(Text::from("3.5")),
            ..Profile::default()
        });
        assert!(!Arc::ptr_eq(&a, &copy));
        assert_eq!(*a, *copy);
    }

    #[test]
    fn a_carry_knows_its_projects_whatever_the_addresses_of_their_ids() {
        let t0 = 1_600_000_000_000;
        let out = normalize(vec![ev(Some("e1"), "a", exit(0), t0, t0)]);
        let x = out.facts.executions[0].clone();
        let with_project = |id: &Text| {
            let mut y = x.clone();
            y.project_id = id.clone();
            y
        };
        let (p, q, other_q) = (Text::from("p"), Text::from("q"), Text::from("q"));
        // runs of one copy, a copy seen again after another, and an equal id in a copy of its own
        let executions = [&p, &p, &q, &p, &other_q].map(with_project).to_vec();
        let mut part = x.clone().into_parts();
        part.variant.project_id = Some(Text::from("r"));
        let mut orphan = x.clone().into_parts();
        orphan.variant.project_id = None;
        let carry = Carry {
            executions,
            parts: vec![part, orphan],
            ..Carry::default()
        };
        let known = carry.projects();
        let mut projects: Vec<&str> = known.iter().map(|t| &**t).collect();
        projects.sort_unstable();
        assert_eq!(projects, ["p", "q", "r"]);
    }

    #[test]
    fn events_fold_into_the_right_execution_of_a_state_read_out_of_time_order() {
        let t0 = 1_600_000_000_000;
        let first = normalize(vec![
            ev(Some("e1"), "a", EventKind::Cli, t0, t0),
            ev(Some("e2"), "b", EventKind::Cli, t0 + 10, t0 + 10),
            ev(Some("e3"), "c", EventKind::Cli, t0 + 20, t0 + 20),
        ]);
        let mut executions = first.facts.executions;
        // read grouped some other way than by time, as a state's rows are
        executions.reverse();
        let carry = Carry {
            executions,
            ..first.carry
        };
        let mut n = Normalizer::resume(carry, Some(t0 - 1));
        n.push(ev(Some("e4"), "a", exit(1), t0 + 100, t0 + 100));
        n.push(ev(Some("e5"), "c", exit(3), t0 + 300, t0 + 300));
        let out = n.finish();
        let ends: Vec<(&str, i64, Option<i64>, u32)> = out
            .facts
            .executions
            .iter()
            .map(|x| {
                (
                    &*x.execution_id,
                    x.finished_ms - t0,
                    x.exit_code,
                    x.event_count,
                )
            })
            .collect();
        assert_eq!(
            ends,
            [
                ("a", 100, Some(1), 2),
                ("b", 10, None, 1),
                ("c", 300, Some(3), 2)
            ]
        );
    }

    #[test]
    fn events_of_a_later_run_fold_into_the_executions_read_from_the_state() {
        let t0 = 1_600_000_000_000;
        let first = normalize(vec![
            ev(Some("e1"), "a", EventKind::Cli, t0, t0),
            ev(Some("e2"), "b", exit(0), t0 + 5, t0 + 5),
        ]);
        let carry = Carry {
            executions: first.facts.executions,
            ..first.carry
        };
        let mut n = Normalizer::resume(carry, Some(t0 - 1));
        // the rest of execution a, and a new execution c
        n.push(ev(Some("e3"), "a", exit(2), t0 + 60_000, t0 + 60_000));
        n.push(ev(Some("e4"), "c", exit(0), t0 + 70_000, t0 + 70_000));
        let out = n.finish();
        let by_id = |id: &str| {
            out.facts
                .executions
                .iter()
                .find(|x| &*x.execution_id == id)
                .unwrap_or_else(|| panic!("execution {id}"))
        };
        assert_eq!(out.facts.executions.len(), 3);
        let a = by_id("a");
        assert_eq!((a.event_count, a.exit_code), (2, Some(2)));
        assert_eq!((a.started_ms, a.finished_ms), (t0, t0 + 60_000));
        let b = by_id("b");
        assert_eq!((b.event_count, b.exit_code), (1, Some(0)));
        let mut touched: Vec<&str> = out.touched.executions.iter().map(|t| &**t).collect();
        touched.sort_unstable();
        assert_eq!(touched, ["a", "c"]);
        assert_eq!(out.facts.projects.len(), 1);
    }

    #[test]
    fn latest_sent_copy_wins_even_when_it_differs() {
        let n = normalize(vec![
            ev(
                Some("e1"),
                "x",
                exit(1),
                1_600_000_000_000,
                1_600_000_001_000,
            ),
            ev(
                Some("e1"),
                "x",
                exit(0),
                1_600_000_000_000,
                1_600_000_002_000,
            ),
        ]);
        assert_eq!(n.stats.duplicates, 1);
        assert_eq!(n.facts.executions[0].exit_code, Some(0));
        assert_eq!(n.facts.executions[0].event_count, 1);
        assert_eq!(n.problems.len(), 1);
        assert_eq!(n.problems[0].reason, Reason::DuplicateEvent);
    }

    #[test]
    fn ties_keep_the_first_read_and_events_without_id_never_merge() {
        let n = normalize(vec![
            ev(
                Some("e1"),
                "x",
                exit(3),
                1_600_000_000_000,
                1_600_000_001_000,
            ),
            ev(
                Some("e1"),
                "x",
                exit(0),
                1_600_000_000_000,
                1_600_000_001_000,
            ),
            ev(
                None,
                "x",
                EventKind::Cli,
                1_600_000_000_500,
                1_600_000_001_000,
            ),
            ev(
                None,
                "x",
                EventKind::Cli,
                1_600_000_000_500,
                1_600_000_001_000,
            ),
        ]);
        assert_eq!(n.facts.executions[0].exit_code, Some(3));
        assert_eq!(n.facts.executions[0].event_count, 3);
    }

    #[test]
    fn a_duplicate_in_another_execution_moves_the_event() {
        let n = normalize(vec![
            ev(
                Some("e1"),
                "x",
                EventKind::Cli,
                1_600_000_000_000,
                1_600_000_001_000,
            ),
            ev(
                Some("e2"),
                "x",
                EventKind::Cli,
                1_600_000_000_000,
                1_600_000_001_000,
            ),
            ev(
                Some("e1"),
                "y",
                EventKind::Cli,
                1_600_000_000_000,
                1_600_000_009_000,
            ),
        ]);
        let ids: Vec<(&str, u32)> = n
            .facts
            .executions
            .iter()
            .map(|x| (&*x.execution_id, x.event_count))
            .collect();
        assert_eq!(ids, [("x", 1), ("y", 1)]);
    }

    #[test]
    fn an_execution_whose_events_all_moved_disappears() {
        let n = normalize(vec![
            ev(
                Some("e1"),
                "x",
                EventKind::Cli,
                1_600_000_000_000,
                1_600_000_001_000,
            ),
            ev(
                Some("e1"),
                "y",
                EventKind::Cli,
                1_600_000_000_000,
                1_600_000_009_000,
            ),
        ]);
        assert_eq!(n.facts.executions.len(), 1);
        assert_eq!(&*n.facts.executions[0].execution_id, "y");
    }

    #[test]
    fn sorting_by_start_orders_by_start_then_id_whatever_the_input_order() {
        // a fixed pseudo-random walk over starts with many ties, so that ids decide often
        let mut seed = 7u64;
        let executions: Vec<Execution> = (0..2000)
            .map(|i| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mut x = Execution::vacant();
                x.started_ms = (seed >> 40) as i64 % 97;
                x.execution_id = ExecutionId::from(format!("{:08x}-{i}", seed >> 20));
                x
            })
            .collect();
        // sorted, then compared with the (start, id) pairs sorted as plain values
        let check = |mut executions: Vec<Execution>, what: &str| -> Vec<Execution> {
            let pairs = |xs: &[Execution]| -> Vec<(i64, String)> {
                xs.iter()
                    .map(|x| (x.started_ms, x.execution_id.to_string()))
                    .collect()
            };
            let mut expected = pairs(&executions);
            expected.sort();
            sort_by_start(&mut executions);
            assert_eq!(pairs(&executions), expected, "{what}");
            executions
        };
        let executions = check(executions, "in no order");
        // executions in order followed by a few added ones, some of which go before all of them, some
        // between, some after, some on equal starts: merged in, the order is the same
        for added in [1usize, 7, 300, 999] {
            let mut extended = executions.clone();
            for k in 0..added {
                let mut x = Execution::vacant();
                x.started_ms = [-5, 0, 48, 96, 200][k % 5];
                x.execution_id = ExecutionId::from(format!("added-{k:04}"));
                extended.push(x);
            }
            check(extended, &format!("{added} added"));
        }
    }
}
