//! The dormant part of the summarised history: projects none of whose executions finished after the
//! cut at which the part was written. Their rows are final and they add nothing to any row an
//! incremental run can re-emit, except the size and old months of their cohort. So each one is kept
//! apart, as its own small packed history beside what its cohort needs; a run unpacks only the
//! projects its new events name, and carries the rest as it read it.
//!
//! The part's text is a head (the string and plugin tables, and each project's entry) and, after a
//! `.`, its rows packed in chunks of a few kilobytes, each compressed and made base64 on its own. A
//! run reads the head and decodes only the chunks of the projects it unpacks: most of the part is
//! never decompressed. (A part written before chunks, one base64 text of everything, is still read.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    LedgerEntry, Rows, RowsInto, StateError, StateSlice, Tables, TextTable, ZSTD_LEVEL, b64, pack,
    plugins_of, postcard_seed, unzstd, unzstd_with,
};
use crate::normalize::plugins::PluginInfo;
use crate::normalize::{Carry, FastSet};
use base64::Engine;

/// Raw bytes of rows packed into one chunk: small enough that a run unpacking a few hundred
/// projects decompresses a small share of the rows, large enough to compress about as well as the
/// whole (the rows are mostly execution ids, which only entropy coding shrinks).
const CHUNK_BYTES: usize = 8 * 1024;

/// What separates the head from the chunks (not a base64 character).
const SEPARATOR: char = '.';

/// The head of a chunked part as read: the string and plugin tables of every dormant project's rows
/// (as in the history), the projects sorted by id, and the packed size of each chunk.
#[derive(Deserialize)]
struct Head<'a>(
    #[serde(borrow)] Vec<&'a str>,
    #[serde(borrow)] Vec<&'a str>,
    #[serde(borrow)] Vec<HeadEntry<'a>>,
    Vec<u32>,
);

/// One dormant project in the head: its id, the months with activity and whether it has more than
/// one exec execution (what its cohort counts), and where its rows are: the chunk, and the range
/// within the chunk's unpacked bytes.
#[derive(Serialize, Deserialize)]
struct HeadEntry<'a>(&'a str, Vec<i64>, bool, u32, u32, u32);

/// A part written before chunks: the tables, then each project with its rows packed apart.
#[derive(Deserialize)]
struct Whole<'a>(
    #[serde(borrow)] Vec<&'a str>,
    #[serde(borrow)] Vec<&'a str>,
    #[serde(borrow)] Vec<WholeRow<'a>>,
);

/// One dormant project of a part written before chunks, with its rows.
#[derive(Deserialize)]
struct WholeRow<'a>(&'a str, Vec<i64>, bool, #[serde(borrow)] &'a [u8]);

/// What a dormant project's cohort counts, and where its rows are.
#[derive(Debug, Clone)]
pub struct DormantEntry {
    pub project_id: String,
    /// Months (ordinals) with an execution, or summarised presence.
    pub months: Vec<i64>,
    /// More than one exec execution in its life.
    pub multi: bool,
    chunk: u32,
    rows: std::ops::Range<usize>,
}

/// Where a part's rows are.
#[derive(Debug, Clone)]
enum RowStore {
    /// Unpacked, all of them (a part written before chunks).
    Whole(Vec<u8>),
    /// In the part's text: chunk `i` is the base64 text from `starts[i]` to `starts[i + 1]`.
    Chunked { starts: Vec<usize> },
}

/// The dormant part of a state as read: its text (to write again as it is), the cut it was written
/// at, and each project's entry; rows stay packed until [`Dormant::load`].
#[derive(Debug, Clone)]
pub struct Dormant {
    pub text: StateSlice,
    pub cut_day: i64,
    pub entries: Vec<DormantEntry>,
    texts: Vec<String>,
    plugins: Vec<String>,
    rows: RowStore,
}

fn damaged(what: &str, e: &dyn std::fmt::Display) -> StateError {
    StateError::Damaged(format!("dormant history {what}: {e}"))
}

/// What went wrong writing a part (a size beyond the layout's, a failing compressor).
fn failed(e: &dyn std::fmt::Display) -> StateError {
    StateError::Damaged(e.to_string())
}

/// The length of the base64 text (padded) of this many bytes.
fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

impl Dormant {
    /// Read the dormant part's text: its head only, when its rows are in chunks.
    pub fn read(text: StateSlice, cut_day: i64) -> Result<Dormant, StateError> {
        match text.split_once(SEPARATOR) {
            Some((head, _)) => Dormant::read_chunked(head.len() + 1, text, cut_day),
            None => Dormant::read_whole(text, cut_day),
        }
    }

    fn read_chunked(rows_at: usize, text: StateSlice, cut_day: i64) -> Result<Dormant, StateError> {
        let packed = b64()
            .decode(&text[..rows_at - 1])
            .map_err(|e| damaged("head is not base64", &e))?;
        let bytes = unzstd(&packed).map_err(|e| damaged("head is not zstd", &e))?;
        let Head(texts, plugins, heads, chunks) =
            postcard::from_bytes(&bytes).map_err(|e| damaged("head layout", &e))?;
        let mut starts = Vec::with_capacity(chunks.len() + 1);
        let mut at = rows_at;
        starts.push(at);
        for &n in &chunks {
            at += base64_len(n as usize);
            starts.push(at);
        }
        if at != text.len() {
            return Err(damaged(
                "rows",
                &format_args!("{} characters where the head counts {}", text.len(), at),
            ));
        }
        let entries = heads
            .into_iter()
            .map(|HeadEntry(id, months, multi, chunk, start, len)| {
                let start = start as usize;
                DormantEntry {
                    project_id: id.to_string(),
                    months,
                    multi,
                    chunk,
                    rows: start..start + len as usize,
                }
            })
            .collect();
        Ok(Dormant {
            text,
            cut_day,
            entries,
            texts: texts.into_iter().map(str::to_string).collect(),
            plugins: plugins.into_iter().map(str::to_string).collect(),
            rows: RowStore::Chunked { starts },
        })
    }

    fn read_whole(text: StateSlice, cut_day: i64) -> Result<Dormant, StateError> {
        let packed = b64()
            .decode(text.as_str())
            .map_err(|e| damaged("is not base64", &e))?;
        let bytes = unzstd(&packed).map_err(|e| damaged("is not zstd", &e))?;
        let Whole(texts, plugins, rows) =
            postcard::from_bytes(&bytes).map_err(|e| damaged("layout", &e))?;
        let base = bytes.as_ptr() as usize;
        let entries = rows
            .into_iter()
            .map(|WholeRow(id, months, multi, rows)| {
                let start = rows.as_ptr() as usize - base;
                DormantEntry {
                    project_id: id.to_string(),
                    months,
                    multi,
                    chunk: 0,
                    rows: start..start + rows.len(),
                }
            })
            .collect();
        let texts = texts.into_iter().map(str::to_string).collect();
        let plugins = plugins.into_iter().map(str::to_string).collect();
        Ok(Dormant {
            text,
            cut_day,
            entries,
            texts,
            plugins,
            rows: RowStore::Whole(bytes),
        })
    }

    /// The unpacked bytes of chunk `i` (all the rows, for a part written before chunks).
    fn chunk(
        &self,
        i: u32,
        unzip: &mut zstd::bulk::Decompressor<'_>,
    ) -> Result<std::borrow::Cow<'_, [u8]>, StateError> {
        match &self.rows {
            RowStore::Whole(bytes) => Ok(std::borrow::Cow::Borrowed(bytes)),
            RowStore::Chunked { starts } => {
                let i = i as usize;
                let (Some(&from), Some(&to)) = (starts.get(i), starts.get(i + 1)) else {
                    return Err(damaged("rows", &format_args!("no chunk {i}")));
                };
                let packed = b64()
                    .decode(&self.text[from..to])
                    .map_err(|e| damaged("rows are not base64", &e))?;
                let bytes =
                    unzstd_with(unzip, &packed).map_err(|e| damaged("rows are not zstd", &e))?;
                Ok(std::borrow::Cow::Owned(bytes))
            }
        }
    }

    /// Add the rows of these entries (of this part) to `carry`; returns the ids of the projects
    /// loaded. Each chunk they lie in is unpacked once; from [`Dormant::SPLIT_FROM`] entries on, the
    /// later half of the chunks is unpacked and read on another core (this runs while the other
    /// core has nothing to do), and its rows follow the earlier half's in `carry`, as they would
    /// have if read on one.
    pub fn load(
        &self,
        mut picked: Vec<&DormantEntry>,
        carry: &mut Carry,
    ) -> Result<FastSet<String>, StateError> {
        if picked.is_empty() {
            return Ok(FastSet::default());
        }
        let infos = plugins_of(self.plugins.iter().map(String::as_str))?;
        // rows are read in chunk order, and each project's rows as they were written
        picked.sort_by_key(|e| (e.chunk, e.rows.start));
        let split = if picked.len() >= Self::SPLIT_FROM {
            chunk_boundary_from(&picked, picked.len() / 2)
        } else {
            picked.len()
        };
        let (earlier, later) = picked.split_at(split);
        let (loaded, chunks_read) = std::thread::scope(|scope| {
            let later = (!later.is_empty()).then(|| {
                scope.spawn(|| {
                    let mut rows = Carry::default();
                    self.load_sorted(later, &infos, &mut rows)
                        .map(|loaded| (loaded, rows))
                })
            });
            let (mut loaded, mut chunks_read) = self.load_sorted(earlier, &infos, carry)?;
            if let Some(later) = later {
                let ((more, more_chunks), rows) = later
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                loaded.extend(more);
                chunks_read += more_chunks;
                carry.append_rows(rows);
            }
            Ok::<_, StateError>((loaded, chunks_read))
        })?;
        if let RowStore::Chunked { starts } = &self.rows {
            tracing::debug!(
                "{chunks_read} of {} dormant chunk(s) decompressed",
                starts.len().saturating_sub(1)
            );
        }
        Ok(loaded)
    }

    /// Entries unpacked from which the work is shared by two cores (a thread costs tens of
    /// microseconds; a few entries take about as much to read).
    const SPLIT_FROM: usize = 32;

    /// [`Dormant::load`] of entries in chunk order, on one core: the ids loaded and the number of
    /// chunks unpacked.
    fn load_sorted(
        &self,
        picked: &[&DormantEntry],
        infos: &[Arc<PluginInfo>],
        carry: &mut Carry,
    ) -> Result<(FastSet<String>, usize), StateError> {
        let mut loaded = FastSet::default();
        let mut interned = vec![None; self.texts.len()];
        let (mut current, mut bytes) = (None, std::borrow::Cow::Borrowed(&[][..]));
        let mut unzip =
            zstd::bulk::Decompressor::new().map_err(|e| damaged("rows are not zstd", &e))?;
        let mut chunks_read = 0;
        for e in picked {
            if current != Some(e.chunk) {
                bytes = self.chunk(e.chunk, &mut unzip)?;
                current = Some(e.chunk);
                chunks_read += 1;
            }
            let rows = bytes
                .get(e.rows.clone())
                .ok_or_else(|| StateError::Damaged("dormant history is cut short".into()))?;
            let mut failure = None;
            let seed = RowsInto {
                table: TextTable::Lazy {
                    texts: &self.texts,
                    interned: &mut interned,
                },
                infos,
                carry,
                failure: &mut failure,
            };
            postcard_seed(seed, rows).map_err(|err| {
                failure.unwrap_or_else(|| {
                    StateError::Damaged(format!("dormant history of {}: {err}", e.project_id))
                })
            })?;
            loaded.insert(e.project_id.clone());
        }
        Ok((loaded, chunks_read))
    }
}

/// The first place from `at` on where a new chunk starts in entries sorted by chunk (their end if
/// none does), so that no chunk is unpacked by both halves.
fn chunk_boundary_from(sorted: &[&DormantEntry], at: usize) -> usize {
    let Some(chunk) = at
        .checked_sub(1)
        .and_then(|i| sorted.get(i))
        .map(|e| e.chunk)
    else {
        return at.min(sorted.len());
    };
    at + sorted[at..].iter().take_while(|e| e.chunk == chunk).count()
}

/// One project to write into a new dormant part: its id, its cohort's counts and its rows.
pub struct DormantOut<'a> {
    pub project_id: &'a str,
    pub months: Vec<i64>,
    pub multi: bool,
    pub rows: Vec<LedgerEntry<'a>>,
}

/// The text of a dormant part holding these projects: its head, then its rows in chunks. Each
/// project's rows are packed as the part is written, one at a time, so that no unpacked copy of them
/// all is held.
pub fn encode(mut projects: Vec<DormantOut<'_>>) -> Result<String, StateError> {
    projects.sort_unstable_by(|a, b| a.project_id.cmp(b.project_id));
    let counts: Vec<usize> = projects.iter().map(|p| p.rows.len()).collect();
    let mut heads = Vec::with_capacity(projects.len());
    let mut all = Vec::with_capacity(counts.iter().sum());
    for p in projects {
        heads.push((p.project_id, p.months, p.multi));
        all.extend(p.rows);
    }
    // rows sort by project first, so each project's rows stay together, in project order
    let tables = Tables::of(all)?;
    let mut entries = Vec::with_capacity(heads.len());
    let mut chunks: Vec<u32> = Vec::new();
    // room for the whole part, head included (about 70 bytes a row on generated fleets; pages never
    // filled are never touched), so that it is neither copied as it grows nor copied again whole
    // behind its head
    let mut rows_text = String::with_capacity(64 * 1024 + tables.order.len() * TEXT_BYTES_PER_ROW);
    let mut raw: Vec<u8> = Vec::with_capacity(2 * CHUNK_BYTES);
    let mut at = 0;
    for ((id, months, multi), &n) in heads.into_iter().zip(&counts) {
        let rows = Rows {
            entries: &tables.order[at..at + n],
            plugin_index: &tables.plugin_index,
            text_index: &tables.text_index,
        };
        at += n;
        let start = raw.len();
        raw = postcard::to_extend(&rows, raw).map_err(|e| failed(&e))?;
        let number = |n: usize| u32::try_from(n).map_err(|e| failed(&e));
        entries.push(HeadEntry(
            id,
            months,
            multi,
            number(chunks.len())?,
            number(start)?,
            number(raw.len() - start)?,
        ));
        if raw.len() >= CHUNK_BYTES {
            close_chunk(&mut raw, &mut chunks, &mut rows_text)?;
        }
    }
    if !raw.is_empty() {
        close_chunk(&mut raw, &mut chunks, &mut rows_text)?;
    }
    let plugins: Vec<&str> = tables.plugins.iter().map(String::as_str).collect();
    let head = pack(
        &(&tables.texts, plugins, entries, chunks),
        tables.order.len(),
        0,
    )?;
    let mut front = b64().encode(head);
    front.push(SEPARATOR);
    rows_text.insert_str(0, &front);
    Ok(rows_text)
}

/// Room reserved per row for the part's text: its rows take about 55 bytes each and the head about 15
/// more on generated fleets; reserved beyond what is written costs no memory until it is written.
const TEXT_BYTES_PER_ROW: usize = 96;

/// Compress the rows gathered for a chunk, append its base64 text to the part's rows and its packed
/// size to the head's, and start the next chunk.
fn close_chunk(
    raw: &mut Vec<u8>,
    chunks: &mut Vec<u32>,
    rows_text: &mut String,
) -> Result<(), StateError> {
    let packed = zstd::bulk::compress(raw, ZSTD_LEVEL).map_err(|e| failed(&e))?;
    b64().encode_string(&packed, rows_text);
    chunks.push(u32::try_from(packed.len()).map_err(|e| failed(&e))?);
    raw.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::Kept;
    use crate::normalize::Execution;

    /// Executions of `projects` dormant projects, two each.
    fn asleep(projects: usize) -> Vec<Execution> {
        (0..projects * 2)
            .map(|i| {
                let project = format!("p{:04}", i / 2);
                super::super::tests::part(&format!("x{i:05}-{}", "0".repeat(30)), Some(&project))
                    .into_execution(&mut Default::default())
                    .unwrap()
            })
            .collect()
    }

    fn part_of(executions: &[Execution]) -> Vec<DormantOut<'_>> {
        executions
            .chunks(2)
            .map(|pair| DormantOut {
                project_id: &pair[0].project_id,
                months: vec![24_300],
                multi: true,
                rows: pair
                    .iter()
                    .map(|x| LedgerEntry::Execution(Kept::whole(x)))
                    .collect(),
            })
            .collect()
    }

    /// The execution ids loaded for these projects.
    fn loaded(part: &Dormant, ids: &[&str]) -> Vec<String> {
        let picked = part
            .entries
            .iter()
            .filter(|e| ids.contains(&e.project_id.as_str()))
            .collect();
        let mut carry = Carry::default();
        let projects = part.load(picked, &mut carry).unwrap();
        assert_eq!(projects.len(), ids.len());
        let mut ids: Vec<String> = carry
            .executions
            .iter()
            .map(|x| x.execution_id.to_string())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn rows_are_unpacked_only_from_the_chunks_of_the_projects_asked_for() {
        let executions = asleep(600);
        let text = encode(part_of(&executions)).unwrap();
        let part = Dormant::read(StateSlice::owned(text), 19_600).unwrap();
        let RowStore::Chunked { starts } = &part.rows else {
            panic!("a part is written in chunks");
        };
        assert!(starts.len() > 3, "{} chunk(s)", starts.len() - 1);
        assert_eq!(part.entries.len(), 600);
        assert!(part.entries.iter().all(|e| e.months == [24_300] && e.multi));
        // projects of the first, a middle and the last chunk
        let ids = ["p0000", "p0301", "p0599"];
        let first_chunks: Vec<u32> = part
            .entries
            .iter()
            .filter(|e| ids.contains(&e.project_id.as_str()))
            .map(|e| e.chunk)
            .collect();
        assert_eq!(first_chunks[0], 0);
        assert_eq!(first_chunks[2] as usize, starts.len() - 2);
        let want: Vec<String> = executions
            .iter()
            .filter(|x| ids.contains(&&*x.project_id))
            .map(|x| x.execution_id.to_string())
            .collect();
        assert_eq!(loaded(&part, &ids), want);
    }

    #[test]
    fn many_projects_are_read_on_two_cores_in_the_order_one_would_read_them() {
        let executions = asleep(600);
        let text = encode(part_of(&executions)).unwrap();
        let part = Dormant::read(StateSlice::owned(text), 19_600).unwrap();
        // every third project, out of order: more than enough to share the work
        let mut picked: Vec<&DormantEntry> = part.entries.iter().step_by(3).collect();
        picked.reverse();
        assert!(picked.len() >= Dormant::SPLIT_FROM);
        let mut carry = Carry::default();
        let projects = part.load(picked.clone(), &mut carry).unwrap();
        assert_eq!(projects.len(), 200);
        // read on one core, in chunk order
        picked.sort_by_key(|e| (e.chunk, e.rows.start));
        let infos = plugins_of(part.plugins.iter().map(String::as_str)).unwrap();
        let mut one = Carry::default();
        let (alone, chunks) = part.load_sorted(&picked, &infos, &mut one).unwrap();
        assert_eq!(alone, projects);
        assert!(chunks > 1);
        let ids = |c: &Carry| -> Vec<String> {
            c.executions
                .iter()
                .map(|x| x.execution_id.to_string())
                .collect()
        };
        assert_eq!(ids(&carry), ids(&one));
        assert_eq!(carry.executions, one.executions);
    }

    #[test]
    fn the_halves_meet_where_a_chunk_starts() {
        let entry = |chunk: u32| DormantEntry {
            project_id: String::new(),
            months: Vec::new(),
            multi: false,
            chunk,
            rows: 0..0,
        };
        let entries: Vec<DormantEntry> = [0, 0, 1, 1, 1, 2].into_iter().map(entry).collect();
        let sorted: Vec<&DormantEntry> = entries.iter().collect();
        assert_eq!(chunk_boundary_from(&sorted, 0), 0);
        assert_eq!(chunk_boundary_from(&sorted, 2), 2);
        assert_eq!(chunk_boundary_from(&sorted, 3), 5);
        assert_eq!(chunk_boundary_from(&sorted, 4), 5);
        assert_eq!(chunk_boundary_from(&sorted, 6), 6);
    }

    #[test]
    fn a_part_written_before_chunks_is_still_read() {
        let executions = asleep(40);
        let chunked =
            Dormant::read(StateSlice::owned(encode(part_of(&executions)).unwrap()), 7).unwrap();
        // the same projects, rows and tables, in the layout of a version-7 state
        let mut unzip = zstd::bulk::Decompressor::new().unwrap();
        let chunks: Vec<Vec<u8>> = (0..)
            .map_while(|i| chunked.chunk(i, &mut unzip).ok().map(|c| c.into_owned()))
            .collect();
        let rows: Vec<(&str, Vec<i64>, bool, &[u8])> = chunked
            .entries
            .iter()
            .map(|e| {
                let bytes = &chunks[e.chunk as usize][e.rows.clone()];
                (e.project_id.as_str(), e.months.clone(), e.multi, bytes)
            })
            .collect();
        let texts: Vec<&str> = chunked.texts.iter().map(String::as_str).collect();
        let plugins: Vec<&str> = chunked.plugins.iter().map(String::as_str).collect();
        let whole = b64().encode(pack(&(texts, plugins, rows), 80, 0).unwrap());
        assert!(!whole.contains(SEPARATOR));
        let old = Dormant::read(StateSlice::owned(whole), 7).unwrap();
        assert!(matches!(old.rows, RowStore::Whole(_)));
        let ids = ["p0000", "p0017", "p0039"];
        assert_eq!(loaded(&old, &ids), loaded(&chunked, &ids));
        assert_eq!(loaded(&old, &ids).len(), 6);
    }

    #[test]
    fn a_part_whose_chunks_do_not_add_up_is_refused() {
        let text = encode(part_of(&asleep(10))).unwrap();
        let cut_short = StateSlice::owned(text[..text.len() - 4].to_string());
        let e = Dormant::read(cut_short, 7).unwrap_err();
        assert!(e.to_string().contains("dormant history rows"), "{e}");
    }
}
