//! Shared text: project ids, environment hashes, versions and commands repeat on every event of a
//! fleet, so each distinct string is kept once and shared by every execution that carries it.

use std::sync::Arc;

/// A shared, immutable string; cloning it copies a pointer.
pub type Text = Arc<str>;

/// A hash set with a fast, non-cryptographic hasher (foldhash, seeded afresh in every process): the
/// sets of touched executions and projects are probed for every row an incremental run considers.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// A hash map with the same hasher: the normaliser's, the KPI engine's and the state's indexes are
/// probed once or more per event, execution or row.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// An insertion-ordered set with the same hasher: numbers each distinct value in order of first use.
pub type FastIndex<T> = indexmap::IndexSet<T, foldhash::fast::RandomState>;

/// Hands out one shared copy of each distinct string, and a number for it.
#[derive(Debug, Clone, Default)]
pub struct Interner {
    texts: indexmap::IndexSet<Text, foldhash::fast::RandomState>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn get(&mut self, s: &str) -> Text {
        if let Some(t) = self.texts.get(s) {
            return t.clone();
        }
        let t: Text = Arc::from(s);
        self.texts.insert(t.clone());
        t
    }

    /// The number of `s`, from 1 (0 stands for no string): 4 bytes where a shared copy takes 16.
    pub fn id(&mut self, s: &str) -> u32 {
        let index = match self.texts.get_index_of(s) {
            Some(i) => i,
            None => self.texts.insert_full(Arc::from(s)).0,
        };
        index as u32 + 1
    }

    /// The number of an optional string, 0 for none.
    pub fn opt_id(&mut self, s: Option<&str>) -> u32 {
        s.map_or(0, |s| self.id(s))
    }

    /// The string numbered `id` by [`Interner::id`]; `None` for 0.
    pub fn text(&self, id: u32) -> Option<&Text> {
        id.checked_sub(1)
            .and_then(|i| self.texts.get_index(i as usize))
    }

    /// The shared copy of an optional string.
    pub fn opt(&mut self, s: Option<&str>) -> Option<Text> {
        s.map(|s| self.get(s))
    }

    /// Take in the strings of an interner filled apart (on another thread): a string both hold keeps
    /// this one's copy, so what was handed out from either stays valid and equal by value.
    pub fn absorb(&mut self, other: Interner) {
        self.texts.reserve(other.texts.len());
        // an equal string already held stays (inserting keeps the first)
        self.texts.extend(other.texts);
    }

    /// Replace `t` by its shared copy (for text read from a state, allocated one by one).
    pub fn share(&mut self, t: &mut Text) {
        *t = self.get(t);
    }
}

/// A small set of shared strings, kept as a sorted vector: an execution has one or two IP hashes, and
/// a tree node per execution would cost more than the strings themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextSet(Vec<Text>);

impl TextSet {
    /// An empty set.
    pub const fn new() -> Self {
        TextSet(Vec::new())
    }

    /// Add `t` unless an equal string is in the set.
    pub fn insert(&mut self, t: Text) {
        if let Err(at) = self.0.binary_search(&t) {
            self.0.insert(at, t);
        }
    }

    /// The strings in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Text> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Give back the room kept for more strings (a finished execution gets no more).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl Extend<Text> for TextSet {
    fn extend<I: IntoIterator<Item = Text>>(&mut self, items: I) {
        for t in items {
            self.insert(t);
        }
    }
}

impl FromIterator<Text> for TextSet {
    fn from_iter<I: IntoIterator<Item = Text>>(items: I) -> Self {
        let mut v: Vec<Text> = items.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        TextSet(v)
    }
}

impl IntoIterator for TextSet {
    type Item = Text;
    type IntoIter = std::vec::IntoIter<Text>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a TextSet {
    type Item = &'a Text;
    type IntoIter = std::slice::Iter<'a, Text>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let mut i = Interner::default();
        let a = i.get("project-1");
        let b = i.get(&String::from("project-1"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &i.get("project-2")));
        let mut c: Text = Arc::from("project-1");
        i.share(&mut c);
        assert!(Arc::ptr_eq(&a, &c));
        let n = i.id("project-1");
        assert_eq!(i.text(n).map(|t| &**t), Some("project-1"));
        assert_eq!(i.opt_id(None), 0);
        assert_eq!(i.text(0), None);
        assert_ne!(i.id("project-3"), n);
    }

    #[test]
    fn text_set_is_sorted_and_distinct() {
        let mut s: TextSet = ["b", "a", "b"].into_iter().map(Text::from).collect();
        s.insert(Text::from("c"));
        s.insert(Text::from("a"));
        s.extend([Text::from("0"), Text::from("c")]);
        let got: Vec<&str> = s.iter().map(|t| &**t).collect();
        assert_eq!(got, ["0", "a", "b", "c"]);
        assert_eq!(s.len(), 4);
        assert!(!s.is_empty() && TextSet::new().is_empty());
    }
}
