//! A sync, end to end: sources are read and decoded, events normalised, the KPI engine run, and every
//! selected stream written as Singer messages, ending with STATE.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::catalog::{self, Selections};
use crate::changes::Changes;
use crate::compact;
use crate::config::Config;
use crate::decode::{Problem, Reason};
use crate::health::alarm;
use crate::kpi::DormantFleet;
use crate::kpi::calendar::DAY_MS;
use crate::kpi::{self, calendar};
use crate::normalize::{self, NormalizeStats};
use crate::normalize::{Carry, Text};
use crate::read::{self, Mark, Resume};
use crate::singer::{self, Record, SingerWriter};
use crate::source::{self, Input, SourceError};
use crate::state::{
    Dormant, DormantOut, DormantPart, EncodedState, History, HistoryOut, InputBookmark,
    LedgerEntry, Settled, SettledOut, StateError, StateFields, TapState,
};
use crate::streams::{Records, STREAMS};

/// Errors that stop a sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write Singer output: {0}")]
    Output(#[from] std::io::Error),
    #[error("strict mode: {count} bad input item(s); first: {first}")]
    Strict { count: usize, first: String },
    #[error("fail_on_alarm: {0} health alarm(s) within alert_max_age_days of as_of")]
    Alarms(usize),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A STATE line larger than this gets a warning: half of what Meltano accepts by default.
pub const STATE_WARN_BYTES: usize = 25 << 20;

/// What a sync did, for the end-of-run report and the tests.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub inputs: usize,
    pub bytes: u64,
    pub lines: u64,
    pub events: u64,
    pub problems_by_reason: BTreeMap<&'static str, u64>,
    pub records: BTreeMap<String, u64>,
    pub normalize: NormalizeStats,
    pub as_of: String,
    /// Alarms raised for periods within `alert_max_age_days` of as_of.
    pub recent_alarms: usize,
    /// Inputs with nothing new since the state's bookmarks (not read).
    pub unchanged_inputs: usize,
    /// Whether the run resumed from a state (and re-emitted only changed rows).
    pub incremental: bool,
    /// Dormant projects of the state whose history this run unpacked (its events named them), and
    /// those it left packed.
    pub dormant_unpacked: usize,
    pub dormant_left_packed: usize,
}

impl Reason {
    /// Whether the reason is a defect of the input (strict mode fails on these); duplicates and
    /// unattributable state changes are normal traffic that is set aside, not damage.
    pub fn is_defect(self) -> bool {
        !matches!(
            self,
            Reason::DuplicateEvent | Reason::LateEvent | Reason::UnattributedStateChange
        )
    }
}

/// Progress on stderr, at most every few seconds.
struct Progress {
    started: Instant,
    last: Instant,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(5);
    fn tick(&mut self, bytes: u64, events: u64) {
        if self.last.elapsed() >= Self::EVERY {
            self.last = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                "progress: {:.1} MB read, {} events ({:.1} MB/s, {:.0} events/s)",
                bytes as f64 / 1e6,
                events,
                bytes as f64 / 1e6 / secs,
                events as f64 / secs
            );
        }
    }
}

/// Read and decode every input, handing each event to `push`; returns the decode problems.
pub fn read_inputs(
    inputs: &[Input],
    resumes: &[Resume],
    report: &mut SyncReport,
    mut push: impl FnMut(crate::event::Event),
) -> Result<(Vec<Problem>, Vec<Mark>), SyncError> {
    let mut problems = Vec::new();
    let mut progress = Progress {
        started: Instant::now(),
        last: Instant::now(),
    };
    let threads = cores();
    let ends = read::read_parallel(inputs, resumes, threads, |d| {
        report.lines += d.lines;
        report.bytes += d.bytes;
        report.events += d.events.len() as u64;
        for e in d.events {
            push(e);
        }
        problems.extend(d.problems);
        progress.tick(report.bytes, report.events);
    })?;
    report.inputs = inputs.len();
    Ok((problems, ends))
}

/// The normaliser of a run and what the earlier state hands it.
struct Resumed {
    normalizer: normalize::Normalizer,
    previous_as_of: Option<i64>,
    previous_projects: BTreeMap<String, (String, i64)>,
    previous_cut: Option<i64>,
    health_carries: BTreeMap<String, crate::health::RuleCarry>,
    /// The earlier state's summarised history, which may be written again as it was read.
    earlier_history: Option<History>,
    /// The settled part of the earlier state's ledger, carried on while it holds.
    earlier_settled: Option<Settled>,
    /// The earlier state's dormant projects: this run unpacks those its events name, or all of
    /// them when `unpack_all`.
    dormant: Option<Dormant>,
    /// The dormant projects not read as executions, found while the new input is still read.
    dormant_candidates: DormantCandidates,
    unpack_all: bool,
    incremental: bool,
}

/// The dormant projects a run may leave packed or unpack, worked out before it knows which projects
/// its events name: each entry not also read as an execution of the ledger or the history (a run
/// since the dormant part was written unpacked it, and that copy is the one that counts), with its
/// first event time as the project list knows it, and what those the project list knows add to the
/// fleet's rows if all stay packed.
#[derive(Default)]
struct DormantCandidates {
    entries: Vec<(usize, Option<i64>)>,
    fleet: DormantFleet,
}

impl DormantCandidates {
    fn of(
        dormant: &Dormant,
        earlier: &crate::normalize::FastSet<Text>,
        known: &BTreeMap<String, (String, i64)>,
    ) -> Self {
        let mut candidates = DormantCandidates::default();
        let firsts = firsts_of(&dormant.entries, known);
        for (i, (entry, first)) in dormant.entries.iter().zip(firsts).enumerate() {
            if earlier.contains(entry.project_id.as_str()) {
                continue;
            }
            if let Some(first_ms) = first {
                let day = calendar::day_of(first_ms);
                candidates.fleet.add(day, &entry.months, entry.multi);
            }
            candidates.entries.push((i, first));
        }
        candidates
    }
}

impl Resumed {
    fn from(
        earlier: Option<TapState>,
        late_days: i64,
        as_of: Option<i64>,
    ) -> Result<Self, StateError> {
        let Some(mut e) = earlier else {
            return Ok(Resumed {
                normalizer: normalize::Normalizer::new().with_late_event_days(late_days),
                previous_as_of: None,
                previous_projects: BTreeMap::new(),
                previous_cut: None,
                health_carries: BTreeMap::new(),
                earlier_history: None,
                earlier_settled: None,
                dormant: None,
                dormant_candidates: DormantCandidates::default(),
                unpack_all: false,
                incremental: false,
            });
        };
        let dormant = e.dormant.take();
        // when the cut moved since the dormant projects were set apart (or as_of went back), every
        // one is unpacked, and the next state sets them apart anew
        let unpack_all = dormant
            .as_ref()
            .is_some_and(|d| !can_leave_packed(d, &e, as_of));
        let late_before = e
            .carry
            .newest_event_ms
            .map(|n| normalize::late_before_day(n, late_days) * DAY_MS);
        // the dormant candidates are worked out on another core while the state's executions are
        // put in time order and indexed
        let earlier = dormant.as_ref().map(|_| e.carry.projects());
        let (normalizer, dormant_candidates) = std::thread::scope(|scope| {
            let candidates = dormant.as_ref().zip(earlier.as_ref()).map(|(d, earlier)| {
                let known = &e.projects;
                scope.spawn(move || DormantCandidates::of(d, earlier, known))
            });
            let normalizer =
                normalize::Normalizer::resume(e.carry, late_before).with_late_event_days(late_days);
            let candidates = candidates.map(|c| {
                c.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            (normalizer, candidates.unwrap_or_default())
        });
        Ok(Resumed {
            // the history's executions are read with the rest; its text may be written again
            earlier_history: e.history.take(),
            earlier_settled: e.settled.take(),
            dormant,
            dormant_candidates,
            unpack_all,
            normalizer,
            previous_as_of: e.as_of,
            previous_projects: e.projects,
            previous_cut: e.cut_day,
            health_carries: e.health,
            incremental: true,
        })
    }

    /// Unpack the dormant projects the new events name into the normaliser, before it folds them;
    /// what the others add to the fleet's rows, and their ids, are returned.
    fn unpack_named(&mut self) -> Result<LeftOut, StateError> {
        let mut left_out = LeftOut::default();
        let Some(dormant) = &self.dormant else {
            return Ok(left_out);
        };
        let mut rows = Carry::default();
        {
            let named = self.normalizer.named_projects();
            let all = self.unpack_all;
            // the candidates are unpacked when named (or all are), or when the project list does
            // not know them; the rest stay packed and count for the fleet as their entry says
            let candidates = std::mem::take(&mut self.dormant_candidates);
            left_out.fleet = candidates.fleet;
            let mut left_first_day: Option<i64> = None;
            let mut picked = Vec::new();
            for (i, first) in candidates.entries {
                let Some(entry) = dormant.entries.get(i) else {
                    continue;
                };
                let id = entry.project_id.as_str();
                match first {
                    Some(first_ms) if !all && !named.contains(id) => {
                        let day = calendar::day_of(first_ms);
                        left_first_day = Some(left_first_day.map_or(day, |d| d.min(day)));
                        left_out.projects.push(id.to_string());
                    }
                    Some(first_ms) => {
                        let day = calendar::day_of(first_ms);
                        left_out.fleet.remove(day, &entry.months, entry.multi);
                        picked.push(entry);
                    }
                    None => picked.push(entry),
                }
            }
            left_out.fleet.first_day = left_first_day;
            let loaded = dormant.load(picked, &mut rows)?;
            left_out.unpacked = loaded.len();
            tracing::debug!(
                "{} of {} dormant project(s) unpacked, {} left packed",
                loaded.len(),
                dormant.entries.len(),
                left_out.projects.len()
            );
            left_out.loaded = loaded;
        }
        self.normalizer.absorb_earlier(rows);
        if self.unpack_all {
            self.dormant = None;
        }
        Ok(left_out)
    }
}

/// Each dormant entry's first event time, as the project list knows it: by one pass over both when
/// the entries are sorted by project (as they are written), else by a lookup each.
fn firsts_of<'k>(
    entries: &'k [crate::state::DormantEntry],
    known: &'k BTreeMap<String, (String, i64)>,
) -> Box<dyn Iterator<Item = Option<i64>> + 'k> {
    if !entries.is_sorted_by(|a, b| a.project_id < b.project_id) {
        return Box::new(
            entries
                .iter()
                .map(|e| known.get(&e.project_id).map(|(_, first)| *first)),
        );
    }
    let ids = entries.iter().map(|e| e.project_id.as_str());
    Box::new(known_in_order(ids, known).map(|p| p.map(|(_, first)| *first)))
}

/// What the project list knows of each of `ids`, given in ascending order: by one walk over both.
fn known_in_order<'i, 'k>(
    ids: impl Iterator<Item = &'i str> + 'k,
    known: &'k BTreeMap<String, (String, i64)>,
) -> impl Iterator<Item = Option<&'k (String, i64)>> + 'k {
    let mut known = known.iter().peekable();
    ids.map(move |id| {
        while known.next_if(|(k, _)| k.as_str() < id).is_some() {}
        known
            .peek()
            .filter(|(k, _)| k.as_str() == id)
            .map(|(_, p)| *p)
    })
}

/// The project list of the next state: the projects of this run's facts (sorted by id), and the
/// dormant projects left packed as the earlier list knows them (those win should an id be in both).
/// Both sides are walked in id order and the map is built from sorted pairs in one pass, rather
/// than by a lookup and an insert per packed project.
fn project_list(
    projects: &[crate::normalize::Project],
    mut left_packed: Vec<String>,
    previous: &BTreeMap<String, (String, i64)>,
) -> BTreeMap<String, (String, i64)> {
    left_packed.sort_unstable();
    let found: Vec<Option<(String, i64)>> =
        known_in_order(left_packed.iter().map(String::as_str), previous)
            .map(|p| p.cloned())
            .collect();
    let packed: Vec<(String, (String, i64))> = left_packed
        .into_iter()
        .zip(found)
        .filter_map(|(id, p)| Some((id, p?)))
        .collect();
    let mut live = projects
        .iter()
        .map(|p| (p.project_id.clone(), (p.source.clone(), p.first_event_ms)))
        .peekable();
    let mut packed = packed.into_iter().peekable();
    let mut list = Vec::with_capacity(projects.len() + packed.len());
    loop {
        let next = match (live.peek(), packed.peek()) {
            (Some(a), Some(b)) if a.0 < b.0 => live.next(),
            (Some(a), Some(b)) if a.0 == b.0 => {
                live.next();
                packed.next()
            }
            (Some(_), None) => live.next(),
            _ => packed.next(),
        };
        match next {
            Some(pair) => list.push(pair),
            None => break,
        }
    }
    list.into_iter().collect()
}

/// Dormant projects an incremental run left packed: what they add to the fleet's rows, and their
/// ids (the next state keeps them).
#[derive(Default)]
struct LeftOut {
    fleet: DormantFleet,
    projects: Vec<String>,
    unpacked: usize,
    /// The dormant projects unpacked.
    loaded: crate::normalize::FastSet<String>,
}

/// Whether a run may leave a state's dormant projects packed: the cut has not moved since they were
/// set apart (so each one's active windows closed before the first period recomputed exactly), and
/// as_of does not go back before the state's.
fn can_leave_packed(dormant: &Dormant, state: &TapState, as_of: Option<i64>) -> bool {
    let Some(previous_as_of) = state.as_of else {
        return false;
    };
    state.cut_day == Some(dormant.cut_day)
        && previous_as_of >= compact::exact_from_day(dormant.cut_day)
        && as_of.is_none_or(|d| d >= previous_as_of)
}

/// Where events go while the state is decoded beside the reading: held until the normaliser that
/// extends the state is ready (a fraction of a second of reading), then folded as they come.
enum EventSink<'s> {
    Waiting {
        decoding: Option<std::thread::ScopedJoinHandle<'s, Result<Resumed, StateError>>>,
        held: Vec<crate::event::Event>,
        late_days: i64,
        as_of: Option<i64>,
    },
    Ready(Box<Resumed>),
    Failed(StateError),
}

impl EventSink<'_> {
    /// Events held at most while the state is decoded (about a kilobyte each): enough that a 1%
    /// run of a 50,000-project fleet reads all its input meanwhile, where reading used to stop and
    /// wait for the last tens of milliseconds of the decoding.
    const HOLD: usize = 1 << 16;

    fn push(&mut self, e: crate::event::Event) {
        match self {
            EventSink::Ready(r) => r.normalizer.push(e),
            EventSink::Failed(_) => {}
            EventSink::Waiting { decoding, held, .. } => {
                held.push(e);
                // past a few batches' worth, reading waits for the state rather than hold more
                if held.len() >= Self::HOLD || decoding.as_ref().is_none_or(|d| d.is_finished()) {
                    self.settle();
                }
            }
        }
    }

    /// Wait for the state and fold the events held so far.
    fn settle(&mut self) {
        let EventSink::Waiting {
            decoding,
            held,
            late_days,
            as_of,
        } = self
        else {
            return;
        };
        let resumed = match decoding.take() {
            Some(d) => d
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            None => Resumed::from(None, *late_days, *as_of),
        };
        *self = match resumed {
            Ok(mut r) => {
                for e in std::mem::take(held) {
                    r.normalizer.push(e);
                }
                EventSink::Ready(Box::new(r))
            }
            Err(e) => EventSink::Failed(e),
        };
    }

    fn finish(mut self) -> Result<Resumed, SyncError> {
        self.settle();
        match self {
            EventSink::Ready(r) => Ok(*r),
            EventSink::Failed(e) => Err(e.into()),
            EventSink::Waiting { .. } => unreachable!("settled above"),
        }
    }
}

/// Where each input resumes, from the state's bookmarks: unchanged inputs (the same size and
/// modification time, as make and rsync judge it) are skipped unopened, appended ones
/// resume after their last complete line, replaced or rotated ones (their first bytes differ) and new
/// ones are read whole. An input no bookmark names that begins with the content a bookmark of a
/// vanished input read (a directory moved or renamed, a source path spelled anew) takes that
/// bookmark over, so its events are not read again as late copies.
fn plan_inputs(
    inputs: &[Input],
    bookmarks: &[InputBookmark],
) -> Result<(Vec<Resume>, Vec<source::Fingerprint>), SyncError> {
    let mut resumes = Vec::with_capacity(inputs.len());
    let mut prints = Vec::with_capacity(inputs.len());
    let mut vanished = Vanished::of(inputs, bookmarks);
    for input in inputs {
        let io = |e| SourceError::Io {
            path: input.name.clone(),
            source: e,
        };
        let mut bookmark = bookmarks.iter().find(|b| b.name == input.name);
        let mut print = None;
        if bookmark.is_none() && !input.not_modified && !vanished.is_empty() {
            let now = source::fingerprint(&input.path).map_err(io)?;
            let moved = vanished.take_continued(&now, &input.path).map_err(io)?;
            print = Some(now);
            if let Some(b) = moved {
                tracing::info!(
                    "{}: read before as {} (its first bytes are the same); resuming where that stopped",
                    input.name,
                    b.name
                );
                bookmark = Some(b);
            }
        }
        if input.not_modified
            && let Some(b) = bookmark
        {
            // the server says the content is what the bookmark read: nothing new
            resumes.push(Resume {
                at: b.mark(),
                skip: true,
            });
            prints.push(b.fingerprint.clone());
            continue;
        }
        if let Some(b) = bookmark
            && source::size_and_mtime(&input.path).map_err(io)?
                == (b.fingerprint.size, b.fingerprint.mtime_ms)
        {
            // the same size and modification time as when it was read: unchanged, not opened
            resumes.push(Resume {
                at: b.mark(),
                skip: true,
            });
            prints.push(b.fingerprint.clone());
            continue;
        }
        let now = match print {
            Some(now) => now,
            None => source::fingerprint(&input.path).map_err(io)?,
        };
        let mut resume = Resume::default();
        if let Some(b) = bookmark {
            let was = &b.fingerprint;
            if now.continues(was, &input.path).map_err(io)? {
                resume = Resume {
                    at: b.mark(),
                    skip: now.size == was.size && now.mtime_ms == was.mtime_ms,
                };
            } else {
                tracing::warn!(
                    "{}: replaced or rotated since the last run (its first bytes or size differ); reading it whole",
                    input.name
                );
            }
        }
        resumes.push(resume);
        prints.push(now);
    }
    Ok((resumes, prints))
}

/// The bookmarks of inputs that are no longer listed, by the digest of the first bytes they read.
struct Vanished<'b> {
    by_head: BTreeMap<(u64, String), Vec<&'b InputBookmark>>,
    /// The lengths digested, ascending (one left here after its last bookmark was taken only costs
    /// a lookup).
    lengths: Vec<u64>,
}

impl<'b> Vanished<'b> {
    fn of(inputs: &[Input], bookmarks: &'b [InputBookmark]) -> Vanished<'b> {
        let listed: std::collections::HashSet<&str> =
            inputs.iter().map(|i| i.name.as_str()).collect();
        let mut by_head: BTreeMap<(u64, String), Vec<&InputBookmark>> = BTreeMap::new();
        // a bookmark of nothing read has nothing to take over
        let vanished = bookmarks
            .iter()
            .filter(|b| b.offset > 0 && !listed.contains(b.name.as_str()));
        for b in vanished {
            let key = (b.fingerprint.head_len, b.fingerprint.head_sha256.clone());
            by_head.entry(key).or_default().push(b);
        }
        let mut lengths: Vec<u64> = by_head.keys().map(|(len, _)| *len).collect();
        lengths.dedup();
        Vanished { by_head, lengths }
    }

    fn is_empty(&self) -> bool {
        self.by_head.is_empty()
    }

    /// The bookmark of a vanished input whose content the file at `path` (fingerprinted `now`)
    /// begins with, taken out so that no other input takes it too. A bookmark of a file read when it
    /// was shorter than the digested head is compared with this file's head cut to that length.
    fn take_continued(
        &mut self,
        now: &source::Fingerprint,
        path: &std::path::Path,
    ) -> std::io::Result<Option<&'b InputBookmark>> {
        let lengths = &self.lengths[..self.lengths.partition_point(|len| *len < now.head_len)];
        let shorter = match lengths.is_empty() {
            true => Vec::new(),
            false => source::head_digests(path, lengths)?,
        };
        // the file's own head first: the usual case (what was read is longer than the head)
        let heads = std::iter::once((now.head_len, now.head_sha256.clone()))
            .chain(lengths.iter().copied().zip(shorter).rev());
        for key in heads {
            let Some(candidates) = self.by_head.get_mut(&key) else {
                continue;
            };
            // the longest content read that the file still holds
            let Some(at) = candidates
                .iter()
                .enumerate()
                .filter(|(_, b)| b.fingerprint.size <= now.size)
                .max_by_key(|(_, b)| b.fingerprint.size)
                .map(|(at, _)| at)
            else {
                continue;
            };
            let taken = candidates.swap_remove(at);
            if candidates.is_empty() {
                self.by_head.remove(&key);
            }
            return Ok(Some(taken));
        }
        Ok(None)
    }
}

/// The quarantine record of a problem.
pub fn problem_record(p: &Problem, inputs: &[Input]) -> Value {
    let source = source_name(p, inputs).unwrap_or_default();
    let id_text = format!(
        "{}|{}|{}|{}|{}|{}",
        source,
        p.position.line,
        p.position.offset,
        if p.is_event {
            p.position.index as i64
        } else {
            -1
        },
        p.reason.as_str(),
        p.message
    );
    json!({
        "error_id": normalize::plugins::md5_hex(&id_text),
        "source": source,
        "line": (p.position.line > 0).then_some(p.position.line),
        "byte_offset": p.position.offset,
        "event_index": p.is_event.then_some(p.position.index),
        "reason": p.reason.as_str(),
        "message": p.message,
        "excerpt": p.excerpt,
        "skipped": p.skipped,
    })
}

/// Run a sync and write it to `out`.
pub fn run<W: Write>(
    config: &Config,
    selections: &Selections,
    state: Option<StateFields<'_>>,
    out: W,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let mut report = SyncReport::default();
    let bookmarks = state.as_ref().and_then(TapState::bookmarks_of);
    let alarms_sent = alarm::sent_from_state(
        state
            .as_ref()
            .and_then(|s| s.get::<Value>("alarms_sent"))
            .as_ref(),
    );
    let inputs = source::resolve_since(&config.sources, &config.http_options(), |url| {
        bookmarks
            .iter()
            .flatten()
            .find(|b| b.name == url)
            .and_then(|b| b.http.clone())
    })?;
    let (resumes, prints) = plan_inputs(&inputs, bookmarks.as_deref().unwrap_or(&[]))?;
    tracing::debug!(
        "{} input(s) resolved and planned at {:.2}s",
        inputs.len(),
        started.elapsed().as_secs_f64()
    );
    report.unchanged_inputs = resumes.iter().filter(|r| r.skip).count();
    let new_bytes: u64 = resumes
        .iter()
        .zip(&prints)
        .filter(|(r, _)| !r.skip)
        .map(|(r, p)| p.size.saturating_sub(r.at.offset))
        .sum();
    let short_run = state.is_some() && new_bytes <= crate::memory::SHORT_RUN_INPUT_BYTES;
    if short_run {
        // a short incremental run: reusing freed pages beats having the kernel zero new ones
        crate::memory::keep_freed_memory();
    } else {
        // a long one keeps its peak low
        crate::memory::hand_back_freed_memory();
    }
    let same_inputs = bookmarks.as_ref().is_some_and(|b| {
        b.len() == inputs.len() && inputs.iter().all(|i| b.iter().any(|x| x.name == i.name))
    });
    if let (Some(state), true) = (
        &state,
        same_inputs && report.unchanged_inputs == inputs.len(),
    ) {
        // nothing new: the state stands as it is
        tracing::info!(
            "no new input in {} file(s) since the last run: nothing to emit",
            inputs.len()
        );
        let mut writer = SingerWriter::new(out, String::new());
        let text = state.text();
        match text.one_line() {
            Some(line) => writer.state_with(|out| out.write_all(line.as_bytes()))?,
            None => writer.state(
                &text
                    .to_value()
                    .map_err(|e| StateError::Damaged(e.to_string()))?,
            )?,
        };
        writer.finish("succeeded")?;
        report.incremental = true;
        return Ok(report);
    }
    let late_days = config.late_event_days.max(0);
    tracing::info!(
        "reading {} input file(s){}",
        inputs.len() - report.unchanged_inputs,
        if bookmarks.is_some() {
            format!(
                " ({} unchanged since the last run)",
                report.unchanged_inputs
            )
        } else {
            String::new()
        }
    );
    // the state is decoded on another core while the new input is read (and its large strings
    // are moved into what is decoded, not copied)
    let resuming = state.is_some();
    let (resumed, mut problems, ends) = std::thread::scope(|scope| {
        let as_of = config.as_of.map(calendar::day_number);
        // the normaliser that extends the state is made on the decoding core too
        let decoding = state.map(|v| {
            scope.spawn(move || {
                let decoded = TapState::from_fields(v);
                tracing::debug!(
                    "state decoded at {:.2}s ({})",
                    started.elapsed().as_secs_f64(),
                    rss()
                );
                decoded.and_then(|earlier| Resumed::from(earlier, late_days, as_of))
            })
        });
        let mut sink = EventSink::Waiting {
            decoding,
            // reserved at once (pages are touched only as events come): growing it copied the
            // events held so far into fresh pages, on the core that reads
            held: if resuming {
                Vec::with_capacity(EventSink::HOLD)
            } else {
                Vec::new()
            },
            late_days,
            as_of,
        };
        if !resuming {
            sink.settle();
        }
        let (problems, ends) = read_inputs(&inputs, &resumes, &mut report, |e| sink.push(e))?;
        Ok::<_, SyncError>((sink.finish()?, problems, ends))
    })?;
    let mut resumed = resumed;
    tracing::debug!("input read at {:.2}s", started.elapsed().as_secs_f64());
    let left_out = resumed.unpack_named()?;
    report.dormant_unpacked = left_out.unpacked;
    report.dormant_left_packed = left_out.projects.len();
    let Resumed {
        normalizer,
        previous_as_of,
        previous_projects,
        previous_cut,
        health_carries,
        earlier_history,
        earlier_settled,
        dormant,
        incremental,
        ..
    } = resumed;
    report.incremental = incremental;
    // rows of periods before this day are recomputed from summarised history: not exact
    let exact_from = previous_cut.map(compact::exact_from_day);
    tracing::debug!(
        "read done at {:.2}s ({})",
        started.elapsed().as_secs_f64(),
        rss()
    );
    let normalized = normalizer.finish();
    if !short_run {
        crate::memory::collect();
    }
    tracing::debug!(
        "normalised at {:.2}s ({})",
        started.elapsed().as_secs_f64(),
        rss()
    );
    problems.extend(normalized.problems);
    problems.sort_by(|a, b| {
        (
            a.position.source,
            a.position.line,
            a.position.index,
            a.reason,
        )
            .cmp(&(
                b.position.source,
                b.position.line,
                b.position.index,
                b.reason,
            ))
    });
    report.normalize = normalized.stats;
    let mut carry = normalized.carry;
    let touched = normalized.touched;
    let facts = normalized.facts;
    let as_of = config.as_of.map(calendar::day_number);
    let as_of_day = kpi::Model::as_of_day(&facts, as_of);
    // executions that finished before `cut` are summarised in the next state; rows from
    // `exact_from` on are recomputed exactly, and health carries its learned history across
    let late_before = carry
        .newest_event_ms
        .map(|n| normalize::late_before_day(n, late_days));
    let cut = late_before
        .map(|l| compact::cut_day(l).max(previous_cut.unwrap_or(i64::MIN)))
        .or(previous_cut);
    let time_extracted = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let mut writer = SingerWriter::new(out, time_extracted);
    let projects = &facts.projects;
    let executions = &facts.executions;
    let inputs_ref = &inputs;
    let touched_executions = &touched.executions;
    let left_packed = left_out.projects;
    let unpacked = left_out.loaded;
    let previous_projects = &previous_projects;
    let has_dormant = dormant.is_some();
    let (state, model, changes) = std::thread::scope(|scope| {
        // a short run summarises and encodes the next state on the other core while the model is
        // built, the health rules run and the records are written; a long one once the records are
        // written and the model is freed, so that their memory and the state's do not add up
        let encode_next_state = move || -> Result<EncodedState, StateError> {
            let mut compacted = compact::compact(
                executions,
                std::mem::take(&mut carry.parts),
                cut.map_or(i64::MIN, |c| c * DAY_MS),
                previous_cut.map(|c| c * DAY_MS),
            );
            carry.parts = std::mem::take(&mut compacted.orphans);
            tracing::debug!(
                "state summarised at {:.2}s ({})",
                started.elapsed().as_secs_f64(),
                rss()
            );
            // the dormant projects left packed are still known as they were
            let known = project_list(projects, left_packed, previous_projects);
            let next = TapState {
                as_of: Some(as_of_day),
                projects: known,
                inputs: inputs_ref
                    .iter()
                    .zip(prints)
                    .zip(&ends)
                    .map(|((input, fingerprint), end)| InputBookmark {
                        name: input.name.clone(),
                        fingerprint,
                        offset: end.offset,
                        lines: end.lines,
                        format: end.format,
                        http: input.validators.clone(),
                    })
                    .collect(),
                carry,
                // set once the health rules have run
                alarms_sent: Value::Null,
                cut_day: cut,
                health: BTreeMap::new(),
                history: None,
                dormant: None,
                settled: None,
            };
            let (history, dormant) = match dormant {
                // the dormant part is written as it was read; what was unpacked of it is written
                // with the rest of the history (the next run reads that copy)
                Some(d) => {
                    // while the cut stays put, the history read is the history to write: what
                    // finished before the cut can no longer change (a new event for it would make
                    // it finish later)
                    let all_rows = || compacted.history().map(LedgerEntry::Execution).collect();
                    let history = match earlier_history {
                        Some(history)
                            if cut == previous_cut
                                && compacted
                                    .passed
                                    .iter()
                                    .all(|x| !touched_executions.contains(&x.execution_id)) =>
                        {
                            // the rows of dormant projects that returned (now or in an earlier
                            // run since the dormant part was set apart) are written apart
                            let (returned, kept): (Vec<_>, Vec<_>) =
                                compacted.history().partition(|k| {
                                    let project = &*k.execution.project_id;
                                    unpacked.contains(project) || history.returned.contains(project)
                                });
                            if kept.len() == history.rows {
                                let returned = returned.into_iter().map(LedgerEntry::Execution);
                                HistoryOut::Carried(history, returned.collect())
                            } else {
                                HistoryOut::Rows(all_rows())
                            }
                        }
                        _ => HistoryOut::Rows(all_rows()),
                    };
                    (history, DormantPart::Carried(d))
                }
                None => {
                    let (live, dormant) = set_dormant_apart(&compacted, as_of_day, cut);
                    (HistoryOut::Rows(live), DormantPart::Rows(dormant, cut))
                }
            };
            let (settled, ledger) = crate::state::settle_ledger(
                &compacted.recent,
                earlier_settled.filter(|_| cut == previous_cut),
                late_before.map(|d| d * DAY_MS),
                touched_executions,
            );
            tracing::debug!(
                "ledger: {} execution(s) written, the settled part {}",
                ledger.len(),
                match &settled {
                    Some(SettledOut::Carried(s)) => format!("carried ({} execution(s))", s.rows),
                    Some(SettledOut::Rows(rows, _)) =>
                        format!("written ({} execution(s))", rows.len()),
                    None => "empty".to_string(),
                }
            );
            let value = next.encode(
                ledger
                    .into_iter()
                    .map(|x| LedgerEntry::Execution(compact::Kept::whole(x))),
                settled,
                history,
                dormant,
            );
            tracing::debug!(
                "state encoded at {:.2}s ({})",
                started.elapsed().as_secs_f64(),
                rss()
            );
            value
        };
        // being encoded, or to encode once the records are out
        let next_state = match short_run {
            true => Ok(scope.spawn(encode_next_state)),
            false => Err(encode_next_state),
        };
        let mut model = kpi::Model::new(&facts, as_of);
        if has_dormant {
            model.first_day = match (model.first_day, left_out.fleet.first_day) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            model.dormant = Some(left_out.fleet);
        }
        tracing::debug!(
            "model built at {:.2}s ({})",
            started.elapsed().as_secs_f64(),
            rss()
        );
        report.as_of = calendar::fmt_day(model.as_of);
        let changes = previous_as_of.map(|p| {
            let mut c = Changes::new(&facts, &touched, p, model.as_of, previous_projects);
            c.exact_from = exact_from.map(calendar::fmt_day);
            c.scope.exact_from = exact_from;
            tracing::debug!(
                "re-emitting rows from {}: {} touched and {} rewritten project(s), {} touched execution(s){}",
                c.from,
                c.scope.touched.len(),
                c.scope.rewritten.len(),
                c.executions.len(),
                c.exact_from
                    .as_ref()
                    .map_or(String::new(), |e| format!(", none before {e}"))
            );
            c
        });
        if let Some(c) = &changes {
            model.limit_executions(&c.executions, touched.earliest_ms);
        }
        model.project_scope = changes.as_ref().map(|c| c.scope.clone());
        tracing::info!(
            "read {} events in {:.2}s: {} executions, {} projects, as_of {}",
            report.events,
            started.elapsed().as_secs_f64(),
            facts.executions.len(),
            facts.projects.len(),
            report.as_of
        );

        // the series health rules watch are made once, by the rules or by their stream, whichever
        // comes first; the rules run beside the streams, and only the health stream waits for them
        let rules = config.health_rules();
        let watched: BTreeMap<&str, OnceLock<Vec<Value>>> = rules
            .iter()
            .filter_map(|r| r.series())
            .filter_map(|(stream, _)| crate::streams::find(stream))
            .filter(|def| def.records.kpi().is_some())
            .map(|def| (def.name, OnceLock::new()))
            .collect();
        let series_of = |name: &str, f: kpi::RecordsFn| -> Vec<Value> {
            match watched.get(name) {
                Some(cell) => cell.get_or_init(|| f(&model).collect()).clone(),
                None => f(&model).collect(),
            }
        };
        let health_done: OnceLock<alarm::HealthOutcome> = OnceLock::new();
        let run_rules = || {
            let mut records_of = |name: &str| -> Vec<Value> {
                match crate::streams::find(name).and_then(|def| def.records.kpi()) {
                    Some(f) => series_of(name, f),
                    None => Vec::new(),
                }
            };
            alarm::run(
                &rules,
                &mut records_of,
                model.as_of,
                config.alert_max_age_days,
                &alarms_sent,
                config.webhook().as_ref(),
                &alarm::Resume {
                    from: exact_from,
                    carries: Some(&health_carries),
                    snapshot_at: cut.map(compact::exact_from_day),
                },
            )
        };
        // the selected streams are made on the cores there are and written in stream order
        let mut selected = Vec::new();
        let mut makers = Vec::new();
        for def in STREAMS {
            let Some(selection) = selections.get(def.name) else {
                continue;
            };
            let watches = watched.contains_key(def.name);
            let (model, health, problems, inputs, changes, series_of) = (
                &model,
                &health_done,
                &problems,
                &inputs,
                &changes,
                &series_of,
            );
            let full = selection.properties.len() == catalog::property_count(def);
            makers.push((def.name, move || -> Box<dyn Iterator<Item = Record>> {
                if let (Records::KpiJson(_, text), true, false) = (def.records, full, watches) {
                    // every property selected and no rule watching: the rows as text (the KPI
                    // engine builds them within the run's scopes already)
                    return Box::new(text(model).map(Record::Json));
                }
                let records: Box<dyn Iterator<Item = Value>> = match def.records {
                    Records::Kpi(f) | Records::KpiJson(f, _) if watches => {
                        Box::new(series_of(def.name, f).into_iter())
                    }
                    Records::Kpi(f) | Records::KpiJson(f, _) => f(model),
                    Records::Health => Box::new(health.wait().records.iter().cloned()),
                    Records::Quarantine => {
                        Box::new(problems.iter().map(|p| problem_record(p, inputs)))
                    }
                };
                Box::new(
                    records
                        .filter(move |r| changes.as_ref().is_none_or(|c| c.keep(def.name, r)))
                        .map(move |r| {
                            Record::Value(if full {
                                r
                            } else {
                                catalog::project_record(&r, selection)
                            })
                        }),
                )
            }));
            selected.push((def, selection));
        }
        let join_state = |handle: std::thread::ScopedJoinHandle<'_, _>| {
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        };
        // a long run keeps its peak low: the rules run before the streams are made; a short one
        // makes them all side by side
        if !short_run {
            let _ = health_done.set(run_rules());
        }
        let workers = cores();
        // a short run's streams are made further ahead of the writer, so that both cores keep making
        // records while the largest stream is written
        let ahead = if short_run {
            singer::CHUNKS_AHEAD_SHORT_RUN
        } else {
            singer::CHUNKS_AHEAD
        };
        // the streams' own threads end here, before the model they read is handed out
        std::thread::scope(|streams| -> Result<(), SyncError> {
            if health_done.get().is_none() {
                streams.spawn(|| {
                    // the health stream waits for this: it is set even if the rules fail, and the
                    // failure is raised when the thread is joined
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run_rules)) {
                        Ok(outcome) => {
                            let _ = health_done.set(outcome);
                        }
                        Err(panic) => {
                            let _ = health_done.set(alarm::HealthOutcome::default());
                            std::panic::resume_unwind(panic)
                        }
                    }
                    tracing::debug!(
                        "health rules run at {:.2}s ({})",
                        started.elapsed().as_secs_f64(),
                        rss()
                    );
                });
            }
            let formatted =
                singer::format_streams(streams, workers, ahead, writer.time_extracted(), makers);
            let lanes = selected
                .into_iter()
                .zip(formatted)
                .map(|((def, selection), lines)| (def, selection, lines));
            for (def, selection, lines) in lanes {
                let schema = catalog::selected_schema(def, selection);
                writer.schema(def.name, &schema, &selection.key_properties)?;
                for chunk in lines {
                    let chunk = chunk?;
                    writer.record_lines(def.name, &chunk.lines, chunk.count)?;
                }
                writer.metric_stream_done(def.name);
                tracing::debug!(
                    "stream {} written at {:.2}s ({})",
                    def.name,
                    started.elapsed().as_secs_f64(),
                    rss()
                );
                report
                    .records
                    .insert(def.name.to_string(), writer.count(def.name));
            }
            Ok(())
        })?;
        let health = health_done.into_inner().unwrap_or_default();
        report.recent_alarms = health.recent_alarms;
        let (mut state, model) = match next_state {
            Ok(encoding) => (join_state(encoding)?, Some(model)),
            Err(encode) => {
                drop(watched);
                drop(model);
                crate::memory::collect();
                (encode()?, None)
            }
        };
        state.set_health(&health.carries, json!(health.alarms_sent))?;
        Ok::<_, SyncError>((state, model, changes))
    })?;

    let state_bytes = writer.state_with(|out| state.write_json(out))?;
    if state_bytes > STATE_WARN_BYTES {
        tracing::warn!(
            "the STATE message is {:.1} MiB: Meltano refuses lines longer than half its elt.buffer_size \
             (default 100 MiB, so 50 MiB); raise elt.buffer_size before the state outgrows it",
            state_bytes as f64 / 1_048_576.0
        );
    }
    // per reason, how many and the first (problems are in input order: where a user starts looking)
    let mut by_reason: BTreeMap<&'static str, (u64, &Problem)> = BTreeMap::new();
    for p in &problems {
        by_reason.entry(p.reason.as_str()).or_insert((0, p)).0 += 1;
    }
    report.problems_by_reason = by_reason.iter().map(|(r, (n, _))| (*r, *n)).collect();
    writer.finish("succeeded")?;
    tracing::debug!("state written at {:.2}s", started.elapsed().as_secs_f64());
    drop(model);
    crate::memory::free_aside((facts, touched, changes, state));
    for (reason, (n, first)) in &by_reason {
        tracing::warn!(
            "skipped or flagged input: {reason}: {n} (first: {}: {})",
            located(first, &inputs),
            first.message
        );
    }
    if report.normalize.duplicates > 0 {
        tracing::info!("duplicate events removed: {}", report.normalize.duplicates);
    }
    if config.strict {
        let defects: Vec<&Problem> = problems.iter().filter(|p| p.reason.is_defect()).collect();
        if let Some(first) = defects.first() {
            return Err(SyncError::Strict {
                count: defects.len(),
                first: format!(
                    "{}: {}: {}",
                    located(first, &inputs),
                    first.reason.as_str(),
                    first.message
                ),
            });
        }
    }
    if config.fail_on_alarm && report.recent_alarms > 0 {
        return Err(SyncError::Alarms(report.recent_alarms));
    }
    Ok(report)
}

/// The name of the input a problem was found in.
fn source_name<'i>(problem: &Problem, inputs: &'i [Input]) -> Option<&'i str> {
    inputs
        .get(problem.position.source as usize)
        .map(|i| i.name.as_str())
}

/// Where a problem is, as `file:line`, and for an event of a batch its place in the line (`event N`,
/// from 0, as `telemetry_errors.event_index` counts); a problem of a whole file names the file.
fn located(problem: &Problem, inputs: &[Input]) -> String {
    let src = source_name(problem, inputs).unwrap_or("?");
    match (problem.position.line, problem.is_event) {
        // a problem of the file as a whole (it ends early): no line to name
        (0, _) => src.to_string(),
        (line, true) => format!("{src}:{line}, event {}", problem.position.index),
        (line, false) => format!("{src}:{line}"),
    }
}

/// Split the summarised history of a state being written into what stays with the live projects and
/// the dormant projects: those with no execution on or after the cut (and none after as_of), each
/// with what its cohort counts.
fn set_dormant_apart<'a>(
    compacted: &'a compact::Compacted<'a>,
    as_of: i64,
    cut: Option<i64>,
) -> (Vec<LedgerEntry<'a>>, Vec<DormantOut<'a>>) {
    let history = compacted.history().map(LedgerEntry::Execution);
    let Some(cut) = cut.filter(|c| *c <= as_of) else {
        return (history.collect(), Vec::new());
    };
    let live: crate::normalize::FastSet<&str> = compacted
        .recent()
        .map(|k| &*k.execution.project_id)
        .collect();
    let end_ms = (as_of + 1) * DAY_MS;
    let mut by_project: BTreeMap<&str, Vec<crate::compact::Kept<'a>>> = BTreeMap::new();
    let mut kept = Vec::new();
    for k in compacted.history() {
        let id = &*k.execution.project_id;
        if live.contains(id) || k.execution.finished_ms >= cut * DAY_MS {
            kept.push(LedgerEntry::Execution(k));
        } else {
            by_project.entry(id).or_default().push(k);
        }
    }
    let mut dormant = Vec::with_capacity(by_project.len());
    for (project_id, rows) in by_project {
        if rows.iter().any(|k| k.execution.started_ms >= end_ms) {
            kept.extend(rows.into_iter().map(LedgerEntry::Execution));
            continue;
        }
        let mut months = Vec::new();
        let multi = crate::kpi::usage::cohort_activity(
            rows.iter().map(|k| {
                let x = k.execution;
                (x.started_ms, x.is_exec(), k.weight, k.presence_months())
            }),
            &mut months,
        );
        dormant.push(DormantOut {
            project_id,
            months,
            multi,
            rows: rows.into_iter().map(LedgerEntry::Execution).collect(),
        });
    }
    (kept, dormant)
}

/// The cores there are to read and to make streams on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Resident and peak memory for the debug timings (Linux; empty elsewhere).
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or(String::new(), |v| v.trim().to_string())
    };
    format!("rss {}, peak {}", field("VmRSS:"), field("VmHWM:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &std::path::Path, name: &str) -> Input {
        Input {
            name: dir.join(name).display().to_string(),
            path: dir.join(name),
            format: crate::config::SourceFormat::Auto,
            temporary: false,
            validators: None,
            not_modified: false,
        }
    }

    fn bookmark(input: &Input, lines: u64) -> InputBookmark {
        let fingerprint = source::fingerprint(&input.path).expect("fingerprint");
        InputBookmark {
            name: input.name.clone(),
            offset: fingerprint.size,
            fingerprint,
            lines,
            format: None,
            http: None,
        }
    }

    #[test]
    fn an_input_under_a_new_name_takes_over_the_bookmark_of_the_content_it_begins_with() {
        let dir = std::env::temp_dir().join(format!("tap-kpis-plan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        // a short file (digested whole when read), and one longer than the digested head
        let long = "x".repeat(source::HEAD_BYTES as usize + 10);
        std::fs::write(dir.join("short"), "a\nb\n").expect("write");
        std::fs::write(dir.join("long"), &long).expect("write");
        std::fs::write(dir.join("other"), "c\n").expect("write");
        let inputs =
            |names: &[&str]| -> Vec<Input> { names.iter().map(|n| local(&dir, n)).collect() };
        let read = inputs(&["short", "long", "other"]);
        let bookmarks: Vec<InputBookmark> = read.iter().map(|i| bookmark(i, 2)).collect();
        // renamed: the short one grew, the long one is as it was and has a copy, the other was
        // replaced
        std::fs::rename(dir.join("short"), dir.join("short2")).expect("rename");
        std::fs::write(dir.join("short2"), "a\nb\nc\n").expect("append");
        std::fs::rename(dir.join("long"), dir.join("long2")).expect("rename");
        std::fs::write(dir.join("long3"), &long).expect("copy");
        std::fs::write(dir.join("other2"), "d\n").expect("write");
        let now = inputs(&["short2", "long2", "long3", "other2"]);
        let (resumes, _) = plan_inputs(&now, &bookmarks).expect("planned");
        // the grown one resumes after what was read, the unchanged one is skipped
        assert_eq!((resumes[0].at.offset, resumes[0].skip), (4, false));
        assert_eq!((resumes[1].at.lines, resumes[1].skip), (2, true));
        // a bookmark is taken over once: the copy and the replaced file are read whole
        assert_eq!(resumes[2], Resume::default());
        assert_eq!(resumes[3], Resume::default());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_project_list_is_the_live_projects_and_the_packed_ones_as_known_before() {
        let project = |id: &str, source: &str, first: i64| crate::normalize::Project {
            project_id: id.to_string(),
            source: source.to_string(),
            first_event_ms: first,
            last_event_ms: first,
            is_ci_only: false,
            opted_out_ms: None,
            ip_hash_count: 0,
        };
        let live = [project("b", "explicit", 2), project("d", "random", 4)];
        let previous: BTreeMap<String, (String, i64)> = [
            ("a", "derived", 1),
            ("b", "derived", 1),
            ("c", "explicit", 3),
            ("e", "random", 5),
        ]
        .into_iter()
        .map(|(id, source, first)| (id.to_string(), (source.to_string(), first)))
        .collect();
        // out of order, one the earlier list does not know, one that is also live
        let packed = ["e", "a", "z", "b"].map(String::from).to_vec();
        // what inserting one at a time gives
        let mut expected: BTreeMap<String, (String, i64)> = live
            .iter()
            .map(|p| (p.project_id.clone(), (p.source.clone(), p.first_event_ms)))
            .collect();
        for id in &packed {
            if let Some(p) = previous.get(id) {
                expected.insert(id.clone(), p.clone());
            }
        }
        assert_eq!(project_list(&live, packed, &previous), expected);
        assert_eq!(project_list(&live, Vec::new(), &previous).len(), live.len());
    }
}
