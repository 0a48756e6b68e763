//! A Singer state as it was read: its JSON text, held once. Most of a large state is a few base64
//! texts (the history, the dormant part, the ledger) that a run decodes and often writes back as it
//! read them, so they are cut out of the text where they lie instead of being copied into a JSON
//! tree: reading a state is one pass over its text, and the memory it takes is the text's own.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::StateError;

/// The tap's keys whose values are large texts, kept as [`StateSlice`]s rather than parsed.
const LARGE_TEXTS: [&str; 5] = [
    "dormant",
    "history",
    "history_returned",
    "ledger",
    "ledger_settled",
];

/// The JSON text of a Singer state.
#[derive(Debug, Clone)]
pub struct StateText(Arc<Storage>);

/// Where a state's text lies: in memory of its own, or mapped from its file, which saves copying a
/// large state and faulting in fresh memory for it before anything else can start.
#[derive(Debug)]
enum Storage {
    Text(String),
    /// A mapped file, checked to be UTF-8 when it was mapped.
    Mapped(memmap2::Mmap),
}

impl Default for Storage {
    fn default() -> Storage {
        Storage::Text(String::new())
    }
}

impl std::ops::Deref for Storage {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Storage::Text(text) => text,
            // SAFETY: the bytes were checked to be UTF-8 when they were mapped, and the mapping is
            // read-only (see `StateText::read` for the file staying as it is).
            Storage::Mapped(map) => unsafe { std::str::from_utf8_unchecked(map) },
        }
    }
}

/// A text within a state: a range of the state's text when it needed no unescaping, or a text of
/// its own. The next state writes it back as it is.
#[derive(Debug, Clone, Default)]
pub struct StateSlice {
    all: Arc<Storage>,
    range: Range<usize>,
    /// Cut from between the quotes of a JSON string that had no escapes: it goes back between
    /// quotes as it is.
    verbatim: bool,
}

impl StateSlice {
    /// A text of its own (a part encoded by this run, or one that had escapes in the state).
    pub fn owned(text: String) -> StateSlice {
        let range = 0..text.len();
        StateSlice {
            all: Arc::new(Storage::Text(text)),
            range,
            verbatim: false,
        }
    }

    /// Whether the text was cut from between the quotes of a JSON string without escapes, and so may
    /// be written back between quotes as it is (a JSON string holds no raw quote or control
    /// character, which reading it checked).
    pub fn is_verbatim(&self) -> bool {
        self.verbatim
    }

    pub fn as_str(&self) -> &str {
        &self.all[self.range.clone()]
    }
}

impl From<&str> for StateSlice {
    fn from(text: &str) -> StateSlice {
        StateSlice::owned(text.to_string())
    }
}

impl std::ops::Deref for StateSlice {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// The keys of the tap's part of a state, each with its JSON text as it lies in the state: what a run
/// needs first (the bookmarks, the alarms sent) is read from here without reading the rest.
#[derive(Debug)]
pub struct StateFields<'a> {
    text: &'a StateText,
    tap: Option<BTreeMap<String, &'a str>>,
}

/// The top level of a state: only the tap's part is read (other keys are passed over).
#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow, default)]
    tap_kpis: Option<BTreeMap<String, &'a RawValue>>,
}

impl StateText {
    /// A state from its JSON text (checked to be JSON when its fields are read).
    pub fn new(text: String) -> StateText {
        StateText(Arc::new(Storage::Text(text)))
    }

    /// A state from its file, mapped into memory when the file can be (read otherwise). A state
    /// file is written whole before the tap starts and read only while it runs, which is what
    /// mapping it asks for: the file is not changed or cut short while the tap reads it.
    pub fn read(path: &std::path::Path) -> std::io::Result<StateText> {
        let file = std::fs::File::open(path)?;
        // SAFETY: the mapping is read-only, and the state file stays as it is while the tap runs
        // (see above); a file that cannot be mapped (empty, a pipe) is read instead.
        let mapped = unsafe { memmap2::MmapOptions::new().populate().map(&file) };
        match mapped {
            Ok(map) if !map.is_empty() => {
                std::str::from_utf8(&map)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                Ok(StateText(Arc::new(Storage::Mapped(map))))
            }
            _ => Ok(StateText::new(std::io::read_to_string(file)?)),
        }
    }

    /// A state from a JSON value (tests and tools).
    pub fn from_value(value: &Value) -> StateText {
        StateText::new(value.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0[..]
    }

    /// Read the text's structure in one pass: the tap's keys and where their values are.
    pub fn fields(&self) -> Result<StateFields<'_>, serde_json::Error> {
        let tap = match super::skeleton::members_of(self.as_str(), "tap_kpis") {
            Some(tap) => tap,
            // not what a state usually is: `serde_json` reads it, and says what is wrong, if anything
            None => {
                let top: Top<'_> = serde_json::from_str(self.as_str())?;
                top.tap_kpis
                    .map(|m| m.into_iter().map(|(k, v)| (k, v.get())).collect())
            }
        };
        Ok(StateFields { text: self, tap })
    }

    /// The state as a JSON value.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }

    /// The text, when it may be written as it is within one line of Singer output.
    pub fn one_line(&self) -> Option<&str> {
        let text = self.as_str();
        (!text.contains(['\n', '\r'])).then_some(text)
    }
}

impl<'a> StateFields<'a> {
    /// The state these fields are of.
    pub fn text(&self) -> &'a StateText {
        self.text
    }

    /// Whether the state has a part of this tap's.
    pub fn has_tap(&self) -> bool {
        self.tap.is_some()
    }

    /// A small value of the tap's part, parsed; `None` when absent or not of that type.
    pub fn get<T: Deserialize<'a>>(&self, key: &str) -> Option<T> {
        let raw = self.tap.as_ref()?.get(key)?;
        serde_json::from_str(raw).ok()
    }

    /// The tap's part without its large texts, as a JSON object.
    pub fn small_values(&self) -> serde_json::Map<String, Value> {
        self.tap
            .iter()
            .flatten()
            .filter(|(k, _)| !LARGE_TEXTS.contains(&k.as_str()))
            .filter_map(|(k, raw)| Some((k.clone(), serde_json::from_str(raw).ok()?)))
            .collect()
    }

    /// One of the large texts of the tap's part, cut out of the state's text (copied only when it
    /// had escapes); `None` when absent or not a string.
    pub fn large_text(&self, key: &str) -> Result<Option<StateSlice>, StateError> {
        let Some(raw) = self.tap.as_ref().and_then(|t| t.get(key)) else {
            return Ok(None);
        };
        let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) else {
            return Ok(None);
        };
        if memchr::memchr(b'\\', inner.as_bytes()).is_some() {
            // escapes: the text is what they stand for
            let text: String = serde_json::from_str(raw)
                .map_err(|e| StateError::Damaged(format!("{key}: {e}")))?;
            return Ok(Some(StateSlice::owned(text)));
        }
        // a JSON string (checked as such when the fields were read) without a backslash is its text
        let all = &self.text.0;
        let start = inner.as_ptr() as usize - all.as_ptr() as usize;
        Ok(Some(StateSlice {
            all: Arc::clone(all),
            range: start..start + inner.len(),
            verbatim: true,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn large_texts_are_cut_out_of_the_state_text_and_small_values_parsed() {
        let state = StateText::from_value(&json!({
            "other": {"x": [1, 2]},
            "tap_kpis": {"version": 7, "ledger": "QUJD", "history": "a\"b", "as_of": "2025-01-02"}
        }));
        let fields = state.fields().unwrap();
        let ledger = fields.large_text("ledger").unwrap().unwrap();
        assert_eq!(ledger.as_str(), "QUJD");
        // borrowed: the slice lies within the state's own text, and goes back as it is
        assert!(Arc::ptr_eq(&ledger.all, &state.0));
        assert!(ledger.is_verbatim());
        // a text with escapes is unescaped into a text of its own
        let history = fields.large_text("history").unwrap().unwrap();
        assert_eq!(history.as_str(), "a\"b");
        assert!(!Arc::ptr_eq(&history.all, &state.0));
        assert!(!history.is_verbatim());
        assert!(fields.large_text("dormant").unwrap().is_none());
        assert_eq!(fields.get::<u64>("version"), Some(7));
        let small = fields.small_values();
        assert_eq!(
            small.keys().collect::<Vec<_>>(),
            ["as_of", "version"],
            "large texts are left out of the small values"
        );
    }

    #[test]
    fn a_state_without_the_tap_part_has_no_fields() {
        let state = StateText::from_value(&json!({"bookmarks": {}}));
        let fields = state.fields().unwrap();
        assert!(!fields.has_tap());
        assert!(fields.large_text("ledger").unwrap().is_none());
        assert!(StateText::new("{".into()).fields().is_err());
    }

    #[test]
    fn a_state_file_is_read_mapped_checked_as_utf8_and_an_empty_one_is_no_json() {
        let dir = std::env::temp_dir().join(format!("tap-kpis-state-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        std::fs::write(&path, r#"{"tap_kpis": {"version": 7, "ledger": "QUJD"}}"#).unwrap();
        let state = StateText::read(&path).unwrap();
        assert!(matches!(*state.0, Storage::Mapped(_)));
        let fields = state.fields().unwrap();
        assert_eq!(
            fields.large_text("ledger").unwrap().unwrap().as_str(),
            "QUJD"
        );
        std::fs::write(&path, b"{\"a\": \"\xff\"}").unwrap();
        assert!(StateText::read(&path).is_err(), "not UTF-8");
        std::fs::write(&path, b"").unwrap();
        let empty = StateText::read(&path).unwrap();
        assert_eq!(empty.as_str(), "");
        assert!(empty.fields().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_text_without_line_breaks_is_written_as_it_is() {
        assert!(StateText::new("{\"a\": 1}".into()).one_line().is_some());
        assert!(StateText::new("{\n\"a\": 1}".into()).one_line().is_none());
    }
}
