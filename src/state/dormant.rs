//! The dormant part of the summarised history: projects none of whose executions finished after the
//! cut at which the part was written. Their rows are final and they add nothing to any row an
//! incremental run can re-emit, except the size and old months of their cohort. So each one is kept
//! apart, as its own small packed history beside what its cohort needs; a run unpacks only the
//! projects its new events name, and carries the rest as it read it.

use serde::{Deserialize, Serialize};

use super::{
    LedgerEntry, Rows, RowsInto, StateError, StateSlice, Tables, TextTable, b64, pack, plugins_of,
    postcard_seed, unzstd,
};
use crate::normalize::{Carry, FastSet};
use base64::Engine;

/// The dormant part as read: the string and plugin tables of every dormant project's rows (as in
/// the history), then the projects, sorted by id ([`encode`] writes the same layout).
#[derive(Deserialize)]
struct Section<'a>(
    #[serde(borrow)] Vec<&'a str>,
    #[serde(borrow)] Vec<&'a str>,
    #[serde(borrow)] Vec<DormantRow<'a>>,
);

/// One dormant project, as written: its id, the months with activity and whether it has more than
/// one exec execution (what its cohort counts), and its rows, packed apart so that they are read
/// only if the project is wanted.
#[derive(Serialize, Deserialize)]
struct DormantRow<'a>(&'a str, Vec<i64>, bool, #[serde(borrow)] Bytes<'a>);

/// Bytes written as one postcard byte string (not a sequence of numbers).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(d).map(Bytes)
    }
}

/// What a dormant project's cohort counts, and where its rows are.
#[derive(Debug, Clone)]
pub struct DormantEntry {
    pub project_id: String,
    /// Months (ordinals) with an execution, or summarised presence.
    pub months: Vec<i64>,
    /// More than one exec execution in its life.
    pub multi: bool,
    rows: std::ops::Range<usize>,
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
    bytes: Vec<u8>,
}

impl Dormant {
    /// Unpack the dormant part's text.
    pub fn read(text: StateSlice, cut_day: i64) -> Result<Dormant, StateError> {
        let damaged = |what: &str, e: &dyn std::fmt::Display| {
            StateError::Damaged(format!("dormant history {what}: {e}"))
        };
        let packed = b64()
            .decode(text.as_str())
            .map_err(|e| damaged("is not base64", &e))?;
        let bytes = unzstd(&packed).map_err(|e| damaged("is not zstd", &e))?;
        let Section(texts, plugins, rows) =
            postcard::from_bytes(&bytes).map_err(|e| damaged("layout", &e))?;
        let base = bytes.as_ptr() as usize;
        let entries = rows
            .into_iter()
            .map(|DormantRow(id, months, multi, Bytes(rows))| {
                let start = rows.as_ptr() as usize - base;
                DormantEntry {
                    project_id: id.to_string(),
                    months,
                    multi,
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
            bytes,
        })
    }

    /// Add the rows of these entries (of this part) to `carry`; returns the ids of the projects
    /// loaded.
    pub fn load(
        &self,
        picked: Vec<&DormantEntry>,
        carry: &mut Carry,
    ) -> Result<FastSet<String>, StateError> {
        let mut loaded = FastSet::default();
        if picked.is_empty() {
            return Ok(loaded);
        }
        let mut interned = vec![None; self.texts.len()];
        let infos = plugins_of(self.plugins.iter().map(String::as_str))?;
        for e in picked {
            let rows = self
                .bytes
                .get(e.rows.clone())
                .ok_or_else(|| StateError::Damaged("dormant history is cut short".into()))?;
            let mut failure = None;
            let seed = RowsInto {
                table: TextTable::Lazy {
                    texts: &self.texts,
                    interned: &mut interned,
                },
                infos: &infos,
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
        Ok(loaded)
    }
}

/// One project to write into a new dormant part: its id, its cohort's counts and its rows.
pub struct DormantOut<'a> {
    pub project_id: &'a str,
    pub months: Vec<i64>,
    pub multi: bool,
    pub rows: Vec<LedgerEntry<'a>>,
}

/// Pack projects into the bytes of a dormant part. Each project's rows are packed as the part is
/// written, one at a time, so that no unpacked copy of them all is held.
pub fn encode(mut projects: Vec<DormantOut<'_>>) -> Result<Vec<u8>, StateError> {
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
    let plugins: Vec<&str> = tables.plugins.iter().map(String::as_str).collect();
    let projects = Packed {
        heads: &heads,
        counts: &counts,
        tables: &tables,
    };
    let rows = tables.order.len();
    pack(&(&tables.texts, plugins, projects), rows)
}

/// The projects of a dormant part, written as [`DormantRow`]s.
struct Packed<'a> {
    heads: &'a [(&'a str, Vec<i64>, bool)],
    counts: &'a [usize],
    tables: &'a Tables<'a>,
}

impl Serialize for Packed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(Some(self.heads.len()))?;
        let mut at = 0;
        for ((id, months, multi), &n) in self.heads.iter().zip(self.counts) {
            let rows = Rows {
                entries: &self.tables.order[at..at + n],
                plugin_index: &self.tables.plugin_index,
                text_index: &self.tables.text_index,
            };
            at += n;
            let bytes = postcard::to_allocvec(&rows).map_err(S::Error::custom)?;
            seq.serialize_element(&DormantRow(id, months.clone(), *multi, Bytes(&bytes)))?;
        }
        seq.end()
    }
}
